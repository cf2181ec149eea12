//! The actors: each owns one piece of mutable state that must change in one place.
//!
//! | actor | owns |
//! |---|---|
//! | [`TokenManager`] | the upstream token, its expiry and generation, the one refresh in flight |
//! | [`Dispatcher`] | one per worker: that worker's awc client and token copy |
//! | [`Breaker`] | the circuit state (closed / open / half-open), its probe slots, the forced mode |
//! | [`Prober`] | nothing but its own awc client: it sends the Breaker's background probes |
//! | [`budget::Budget`] | the upstream rate budget's wait queue, fairness, learned pauses |

pub mod breaker;
pub mod budget;
pub mod dispatcher;
pub mod prober;
pub mod retry;
pub mod retry_budget;
pub mod token;

pub use breaker::{
    Breaker, BreakerCell, BreakerSnapshot, Force, Gate, GetSnapshot, InvalidBreaker, Mode, Outcomes, Permit, ProbeDone,
    Rejected, Ticket,
};
pub use dispatcher::{Dispatch, Dispatcher, DispatcherHandle, DispatcherSettings, Patience};
pub use prober::Prober;
pub use retry::{DispatchError, Dispatched, RetryPolicy};
pub use token::{
    GetToken, SetClientSecret, Token, TokenCell, TokenHealth, TokenManager, TokenSettings, TokenTrouble,
    TokenUnavailable,
};
