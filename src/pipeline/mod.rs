//! The pipeline: the one way a request goes through courier, used by the sync handler
//! (`http/`) and the job runner (`jobs/`) alike. A validated [`Request`] goes in; an answer, or
//! an [`Error`] that knows nothing of HTTP, comes out ([`Served`]).
//!
//! The stages, in the order they run; each is a module of its own, and each stage's logic a
//! plain function or struct with its own tests. The actors own the state; the stages ask them.
//!
//! 1. **cache** ([`cache`]): a fresh answer is served; a miss is loaded once per key while
//!    identical requests wait on that load (`cache::ResponseCache`, moka's loader).
//! 2. **breaker** ([`circuit`]): may this attempt go? Read from the Breaker's published state;
//!    only a half-open circuit asks the actor.
//! 3. **budget**: a permit, lock-free when one is free, else from the Budget actor's fair,
//!    deadline-aware queue (`actors::budget`).
//! 4. **token** ([`credentials`]): this thread's copy of the token the TokenManager
//!    published, and of the API key.
//! 5. **attempt** ([`attempts`]): one awc call, timed out (`upstream::send_attempt`).
//! 6. **classify and retry** ([`retry`]): the attempt's class decides (backoff with jitter,
//!    `Retry-After`, the deadline, the retry budget of [`retry_budget`]).
//! 7. **report**: the verdict to the Breaker (batched, [`circuit`]), the rate headers to the
//!    Budget.
//!
//! Stages 2 to 7 run per attempt, in [`attempts::run`], on the calling thread's [`lane`]: its
//! awc client and the parts above. Nothing on the way hops to another thread unless it must
//! wait (a permit in the queue, a token being fetched): see ARCHITECTURE.md, "the hot path".
//! The Breaker's background probes ([`probe`]) go through stages 3 to 7 on a lane of their own.

pub mod attempts;
pub mod cache;
pub mod circuit;
pub mod credentials;
mod error;
pub mod lane;
pub mod latency;
pub mod probe;
pub mod retry;
pub mod retry_budget;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use error::Error;
pub use lane::{Lane, LaneSettings};
pub use probe::Prober;
pub use retry::RetryPolicy;

use crate::actors::budget::Class;
use crate::cache::{CacheStatus, Entry, ResponseCache};
use crate::key::Key;
use crate::request_id::RequestId;
use crate::trace::{Parent, Tracing};

/// What the caller asked of the cache (`Cache-Control` on a sync request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache; fetch and refresh the entry.
    pub no_cache: bool,
    /// `no-store`: do not store this answer.
    pub no_store: bool,
}

/// A validated request on its way through the pipeline.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its id, sent upstream as `X-Request-Id`.
    pub request_id: RequestId,
    /// The upstream body (`{"data": .., "options": ..}`).
    pub body: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// The client (index in the clients file; 0 in open mode), for fair sharing.
    pub client: usize,
    /// Its cache key, when the cache is on.
    pub key: Option<Key>,
    /// Its cache directives.
    pub directives: Directives,
    /// Its budget class: sync requests are interactive, async jobs background.
    pub class: Class,
    /// The span its stages' spans go under (`Parent::NONE` when tracing is off).
    pub trace: Parent,
}

/// The answer for a request, with what the cache did and the upstream attempts it took.
#[derive(Debug)]
pub struct Served {
    /// The answer, or why there is none.
    pub result: Result<Arc<Entry>, Error>,
    /// What the cache did.
    pub status: CacheStatus,
    /// Upstream attempts made by this request (0 for hits and coalesced waiters).
    pub attempts: u32,
}

/// The pipeline of one thread: its lane to the upstream and the shared cache. Cheap to clone
/// (the lane is shared by reference count), and only used on the thread it was built on.
#[derive(Clone)]
pub struct Pipeline {
    lane: Rc<Lane>,
    cache: Arc<ResponseCache>,
    /// The deadline of a background refresh (stale-while-revalidate).
    refresh_deadline: Duration,
}

impl Pipeline {
    /// A pipeline for the calling thread, with the task that flushes its breaker reports.
    /// Call inside an actix System (an actix-web worker or an arbiter).
    pub fn start_here(settings: LaneSettings, cache: Arc<ResponseCache>, refresh_deadline: Duration) -> Pipeline {
        let lane = Rc::new(Lane::new(settings));
        let flushed = Rc::downgrade(&lane);
        actix_rt::spawn(async move {
            let mut every = actix_rt::time::interval(circuit::FLUSH_EVERY);
            loop {
                every.tick().await;
                match flushed.upgrade() {
                    Some(lane) => lane.flush_reports(),
                    None => break,
                }
            }
        });
        Pipeline { lane, cache, refresh_deadline }
    }

    /// Takes `request` through every stage; see the module documentation.
    pub async fn serve(&self, request: Request) -> Served {
        cache::serve(self, request).await
    }

    /// Traces.
    pub fn tracing(&self) -> &Tracing {
        &self.lane.tracing
    }

    /// The cache stage's shared cache.
    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }
}
