//! Signed callbacks: when an async job is over, courier POSTs its status document to the
//! `callback_url` the client gave.
//!
//! Posting to a URL a client chose is a server-side request forgery hazard: courier sits
//! inside the network and could be made to call the metadata service, an admin port or a
//! database on loopback. So every URL passes a [`CallbackPolicy`] ([`policy`]) at submit time
//! (a refusal is a 400) and again before every delivery attempt, because DNS answers change.
//! Internal receivers are reachable only when an operator lists them in
//! `COURIER_CALLBACK_ALLOW`.
//!
//! Receivers must be able to tell courier's callbacks from forged ones and from replays, so
//! every request carries `X-Courier-Signature: t=<unix time>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` ([`sign()`]); the timestamp lets a receiver refuse old captures
//! ([`sign::verify`] shows how).
//!
//! Delivery ([`deliver`]) retries with backoff, records every attempt in the job's
//! [`CallbackState`](crate::jobs::CallbackState), and for `http` URLs connects to exactly the
//! addresses that passed the policy, closing the DNS-rebinding window between check and
//! connect.

pub mod deliver;
pub mod policy;
mod ranges;
pub mod sign;

pub use deliver::{Delivery, DeliveryOutcome, InvalidDelivery, USER_AGENT};
pub use policy::{CallbackPolicy, RefusalKind, Refused, SpecialUse, Target, ALLOW_ENV, MAX_URL_LEN};
pub use sign::{sign, verify, SIGNATURE_HEADER};
