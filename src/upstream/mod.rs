//! Talking to the upstream: the pooled awc client, the wire types of the spec, one attempt
//! and its classification, and the backoff between attempts.
//!
//! Results are classified once, here ([`Attempt`]): whether an answer is a success, the
//! client's fault, an auth problem, a rate signal or an upstream failure, whether it is worth
//! retrying and whether it counts against the upstream's health. The retry loop, the breaker
//! and the budget act on that classification and never look at status codes themselves.

mod backoff;
mod call;
mod classify;
mod client;
mod policy;
mod wire;

pub use backoff::{Backoff, InvalidBackoff};
pub use call::{read_success, send_attempt, AttemptRequest};
pub use classify::{tls_failure, Attempt, Outcome, RateSignal};
pub use client::{build_client, tls_config, tls_config_with, ClientSettings};
pub use policy::{Policies, QuotaSignal};
pub use wire::{fetch_token, upstream_error_message, FetchedToken, SuccessBody, TokenError};
