//! Stage 4's inputs: this thread's copies of the upstream token and the API key.
//!
//! Why copies: the TokenManager publishes each new token, and a reload publishes each new API
//! key, in a shared cell ([`TokenCell`], [`Published`]). Reading the shared value on every
//! attempt would touch a reference count that every worker touches; instead each thread keeps
//! its own copy and compares the cell's version, one atomic load per attempt, and copies again
//! only after a change. An attempt keeps the token and key it was sent with.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use actix_web::http::header::HeaderValue;

use crate::actors::{GetToken, Token, TokenCell, TokenUnavailable};
use crate::published::Published;
use crate::trace::{Parent, Span, Tracing};
use opentelemetry::trace::SpanKind;

/// This thread's token and API key.
pub struct Credentials {
    token_cell: Arc<TokenCell>,
    /// The TokenManager, asked when the copy will not do.
    token_manager: Recipient<GetToken>,
    /// The token copy and the cell version it was taken at (`u64::MAX`: none yet).
    token: RefCell<(u64, Option<Token>)>,
    api_key_cell: Arc<Published<HeaderValue>>,
    /// The key copy and the version it was published under.
    api_key: RefCell<(u64, Rc<HeaderValue>)>,
}

impl Credentials {
    /// Copies of what the cells hold now.
    pub fn new(
        token_cell: Arc<TokenCell>,
        token_manager: Recipient<GetToken>,
        api_key_cell: Arc<Published<HeaderValue>>,
    ) -> Credentials {
        let api_key = RefCell::new((api_key_cell.version(), local_copy(&api_key_cell.load())));
        Credentials { token_cell, token_manager, token: RefCell::new((u64::MAX, None)), api_key_cell, api_key }
    }

    /// A valid token and its generation: this thread's copy when current, else from the
    /// TokenManager. With `rejected`, the upstream refused that generation and a new token is
    /// needed. Only asking the TokenManager makes a `courier.token` span under `trace`, linked
    /// to the refresh that obtained the token (or failed).
    pub async fn token(
        &self,
        rejected: Option<u64>,
        tracing: &Tracing,
        trace: &Parent,
    ) -> Result<(HeaderValue, u64), TokenUnavailable> {
        if rejected.is_none() {
            if let Some(found) = self.local_token(Instant::now()) {
                return Ok(found);
            }
        }
        let mut span = tracing.child(trace, "courier.token", SpanKind::Internal);
        let ask = GetToken { rejected, trace: span.as_ref().map_or(Parent::NONE, Span::parent) };
        let answer = self.token_manager.send(ask).await.map_err(|_| TokenUnavailable {
            retry_after: Duration::from_secs(1),
            reason: "token manager busy".into(),
            tls: false,
            refresh: None,
        });
        let answer = answer.and_then(|answer| answer);
        if let Some(span) = span.as_mut() {
            let refresh = match &answer {
                Ok(token) => token.refresh.clone(),
                Err(unavailable) => unavailable.refresh.clone(),
            };
            if let Some(refresh) = refresh {
                span.link(refresh, "token_from");
            }
            if answer.is_err() {
                span.fail("upstream_auth_unavailable");
            }
        }
        let token = answer?;
        Ok((token.authorization.clone(), token.generation))
    }

    /// This thread's copy of the published token, renewed when the cell changed, if it is
    /// still valid at `now`.
    pub fn local_token(&self, now: Instant) -> Option<(HeaderValue, u64)> {
        let mut local = self.token.borrow_mut();
        let version = self.token_cell.version();
        if local.0 != version {
            *local = (version, self.token_cell.load().map(|t| t.local_copy()));
        }
        local.1.as_ref().filter(|t| t.is_valid_at(now)).map(|t| (t.authorization.clone(), t.generation))
    }

    /// The `X-API-Key` value: this thread's copy, renewed only after a reload.
    pub fn api_key(&self) -> Rc<HeaderValue> {
        let mut local = self.api_key.borrow_mut();
        let version = self.api_key_cell.version();
        if local.0 != version {
            *local = (version, local_copy(&self.api_key_cell.load()));
        }
        local.1.clone()
    }
}

/// A copy of a sensitive header whose bytes belong to this thread, so cloning it per request
/// touches no reference count that other threads also touch.
fn local_copy(value: &HeaderValue) -> Rc<HeaderValue> {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("a valid header stays valid");
    copy.set_sensitive(true);
    Rc::new(copy)
}

#[cfg(test)]
mod tests {
    use actix::{Actor, Context, Handler};

    use super::*;

    /// Stands in for the TokenManager: these tests never need to ask it.
    struct NoManager;

    impl Actor for NoManager {
        type Context = Context<Self>;
    }

    impl Handler<GetToken> for NoManager {
        type Result = Result<Arc<Token>, TokenUnavailable>;

        fn handle(&mut self, _: GetToken, _: &mut Context<Self>) -> Self::Result {
            Err(TokenUnavailable {
                retry_after: Duration::from_secs(1),
                reason: "none".into(),
                tls: false,
                refresh: None,
            })
        }
    }

    fn token(value: &str, generation: u64, valid_for: Duration) -> Arc<Token> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {value}")).unwrap();
        authorization.set_sensitive(true);
        Arc::new(Token { authorization, generation, expires_at: Instant::now() + valid_for, refresh: None })
    }

    #[actix_rt::test]
    async fn copies_follow_what_is_published_and_never_hand_out_an_expired_token() {
        let cell = Arc::new(TokenCell::default());
        let key = Arc::new(Published::new(HeaderValue::from_static("key-1")));
        let credentials = Credentials::new(cell.clone(), NoManager.start().recipient(), key.clone());

        assert_eq!(credentials.local_token(Instant::now()), None, "nothing published yet");
        assert!(
            credentials.token(None, &Tracing::off(), &Parent::NONE).await.is_err(),
            "without a copy the manager is asked"
        );
        cell.publish(token("one", 1, Duration::from_secs(60)));
        let (authorization, generation) = credentials.local_token(Instant::now()).unwrap();
        assert_eq!((authorization.to_str().unwrap(), generation), ("Bearer one", 1));
        assert!(authorization.is_sensitive());
        cell.publish(token("two", 2, Duration::from_secs(60)));
        assert_eq!(
            credentials.token(None, &Tracing::off(), &Parent::NONE).await.unwrap().1,
            2,
            "a new version is copied"
        );
        assert!(
            credentials.token(Some(2), &Tracing::off(), &Parent::NONE).await.is_err(),
            "a rejected generation is not served from the copy"
        );
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(credentials.local_token(later), None, "past its expiry the copy is not used");

        assert_eq!(credentials.api_key().to_str().unwrap(), "key-1");
        key.publish(HeaderValue::from_static("key-2"));
        let renewed = credentials.api_key();
        assert_eq!(renewed.to_str().unwrap(), "key-2");
        assert!(renewed.is_sensitive());
    }
}
