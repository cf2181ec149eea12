//! A reconnecting, multiplexed Redis connection that follows its [`Target`] (the primary the
//! Sentinels name): the `ConnectionManager` of the current node, replaced by one to the new
//! node when the target's generation changes (a failover). It is one kind of
//! [`RedisConn`](super::RedisConn), so the code that uses Redis does not change with the
//! deployment. Errors that may mean the primary moved are reported to the target, which then
//! asks the Sentinels at once instead of at its next periodic check. It authenticates with
//! the credentials it was made with for its whole life (after a rotation, the
//! [`RotatingConn`](super::rotating::RotatingConn) around it replaces it whole).

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::credentials::RedisCredentials;
use super::reopen::Reopened;
use super::sentinel::Target;

/// A connection to wherever the target points now. Clones share it.
#[derive(Clone)]
pub struct FollowedConn(Arc<Inner>);

struct Inner {
    target: Arc<Target>,
    credentials: RedisCredentials,
    config: ConnectionManagerConfig,
    /// The manager of the node the target named when it was made (replaced after a failover).
    current: Reopened<Current>,
}

struct Current {
    generation: u64,
    manager: ConnectionManager,
}

impl FollowedConn {
    /// Connects to the target's current node with `credentials` (the caller bounds the wait).
    pub async fn connect(
        target: Arc<Target>,
        credentials: RedisCredentials,
        config: ConnectionManagerConfig,
    ) -> RedisResult<FollowedConn> {
        let (generation, client) = target.current();
        let manager = ConnectionManager::new_with_config(credentials.client_like(&client)?, config.clone()).await?;
        Ok(FollowedConn(Arc::new(Inner {
            target,
            credentials,
            config,
            current: Reopened::new(Current { generation, manager }),
        })))
    }

    /// The target this connection follows.
    pub fn target(&self) -> &Arc<Target> {
        &self.0.target
    }

    /// The manager of the target's current node, connecting to it first when the target moved.
    async fn manager(&self) -> RedisResult<ConnectionManager> {
        let inner = &self.0;
        let fresh = |current: &Current| current.generation == inner.target.generation();
        let open = || async {
            let (generation, client) = inner.target.current();
            let client = inner.credentials.client_like(&client)?;
            let manager = ConnectionManager::new_with_config(client, inner.config.clone()).await?;
            Ok::<_, redis::RedisError>(Current { generation, manager })
        };
        Ok(inner.current.get(fresh, open).await?.manager.clone())
    }

    fn seen<T>(&self, answer: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &answer {
            self.0.target.saw(e);
        }
        answer
    }
}

impl ConnectionLike for FollowedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let answer = match self.manager().await {
                Ok(mut manager) => manager.req_packed_command(cmd).await,
                Err(e) => Err(e),
            };
            self.seen(answer)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let answer = match self.manager().await {
                Ok(mut manager) => manager.req_packed_commands(cmd, offset, count).await,
                Err(e) => Err(e),
            };
            self.seen(answer)
        })
    }

    fn get_db(&self) -> i64 {
        self.0.current.load().manager.get_db()
    }
}
