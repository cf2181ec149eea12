//! The actors: each owns one piece of mutable state that must change in one place.
//!
//! | actor | owns |
//! |---|---|
//! | [`TokenManager`] | the upstream token, its expiry and generation, the one refresh in flight |
//! | [`Breaker`] | the circuit state (closed / open / half-open), its probe slots, the forced mode |
//! | [`budget::Budget`] | the upstream rate budget's wait queue, fairness, learned pauses |
//!
//! The request's way through them is the pipeline (`crate::pipeline`), which runs in place on
//! each worker's thread and asks these actors only when it must wait for them; the Breaker's
//! background probes are sent by the pipeline's `Prober`.

pub mod breaker;
pub mod budget;
pub mod quota;
pub mod token;

pub use breaker::{
    Breaker, BreakerCell, BreakerSnapshot, Force, Gate, GetSnapshot, InvalidBreaker, Mode, Outcomes, Permit, ProbeDone,
    Rejected, Ticket,
};
pub use token::{
    GetToken, SetClientSecret, Token, TokenCell, TokenHealth, TokenManager, TokenSettings, TokenTrouble,
    TokenUnavailable,
};
