//! The TokenManager's answer to [`GetToken`]: the token held when valid, else a wait for the
//! one refresh in flight (started here if none is), or why no token can be had now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::info;
use tokio::sync::oneshot;

use super::{GetToken, Token, TokenManager, TokenTrouble, TokenUnavailable, MAX_WAITERS};

impl Handler<GetToken> for TokenManager {
    type Result = ResponseFuture<Result<Arc<Token>, TokenUnavailable>>;

    fn handle(&mut self, msg: GetToken, ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        if let Some(rejected) = msg.rejected {
            let current = self.cell.load().map(|t| t.generation);
            if current == Some(rejected) {
                self.cell.withdraw();
                if let Some(held) = self.held.as_mut().filter(|held| held.generation == rejected) {
                    held.rejected = true;
                }
                info!(self.log, "token_rejected"; "generation" => rejected);
                let reason = format!("the upstream rejected token generation {rejected}");
                if self.lifecycle.on_rejected(now) {
                    self.cell.report_trouble(TokenTrouble { reason, retry_at: Some(now) });
                    self.start_refresh(&msg.trace, ctx);
                } else if let Some(wait) = self.lifecycle.blocked_for(now) {
                    self.cell.report_trouble(TokenTrouble { reason, retry_at: Some(now + wait) });
                    self.schedule_refresh(wait, ctx);
                    self.schedule_look(ctx);
                }
            }
        }
        if let Some(token) = self.current_valid(now) {
            return Box::pin(async move { Ok(token) });
        }
        if !self.refreshing {
            if let Some(wait) = self.lifecycle.blocked_for(now) {
                let unavailable = TokenUnavailable {
                    retry_after: wait,
                    reason: "token endpoint backing off".into(),
                    tls: self.failed_on_tls,
                    refresh: None,
                };
                return Box::pin(async move { Err(unavailable) });
            }
        }
        if self.waiters.len() >= MAX_WAITERS {
            let unavailable = TokenUnavailable {
                retry_after: Duration::from_secs(1),
                reason: "too many waiting".into(),
                tls: false,
                refresh: None,
            };
            return Box::pin(async move { Err(unavailable) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.start_refresh(&msg.trace, ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(TokenUnavailable {
                    retry_after: Duration::from_secs(1),
                    reason: "token manager stopped".into(),
                    tls: false,
                    refresh: None,
                })
            })
        })
    }
}
