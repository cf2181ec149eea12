//! Every Redis failure becomes `StoreError::Unavailable` with a short text naming the
//! operation and the kind of failure: never the URL (it may hold a password), the server's
//! full message or an argument.

use std::future::Future;
use std::time::Duration;

use redis::RedisError;

use crate::jobs::StoreError;

/// Runs `call` for at most `limit`; past it, `Unavailable`.
pub(super) async fn bounded<T>(
    op: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| Err(timed_out(op, limit)))
}

/// The error of a call that took longer than `limit`.
fn timed_out(op: &'static str, limit: Duration) -> StoreError {
    StoreError::Unavailable(format!("redis {op}: no answer within {} ms", limit.as_millis()))
}

/// Maps a Redis error to `Unavailable` with a short text: the operation and the kind of
/// failure, never the URL, the server's full message or any argument.
pub(super) fn fail(op: &'static str) -> impl Fn(RedisError) -> StoreError {
    move |e| StoreError::Unavailable(format!("redis {op}: {}", describe(&e)))
}

fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_connection_dropped() {
        "connection lost".into()
    } else if e.is_io_error() {
        "I/O error".into()
    } else if let Some(code) = e.code() {
        format!("server error {code}")
    } else {
        e.category().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_are_short_and_generic() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(fail("get")(io), StoreError::Unavailable("redis get: connection refused".into()));
        let server = RedisError::from((redis::ErrorKind::ReadOnly, "READONLY", "secret detail".to_string()));
        let StoreError::Unavailable(text) = fail("submit")(server) else { panic!("not Unavailable") };
        assert_eq!(text, "redis submit: server error READONLY");
    }

    #[actix_rt::test]
    async fn a_call_past_its_limit_is_unavailable() {
        let never = std::future::pending::<Result<(), StoreError>>();
        let err = bounded("get", Duration::from_millis(5), never).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable("redis get: no answer within 5 ms".into()));
    }
}
