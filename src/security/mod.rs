//! Suspicious activity, seen and slowed down: sources that keep presenting wrong client keys
//! are locked out ([`Lockout`]), and each client's upstream spending is compared with its own
//! recent past ([`spend`]).
//!
//! What is counted where: failed authentications by reason and class of network, lockouts and
//! lifts, refusals per client and error code, and each client's attempts, spending ratio and
//! baseline are metrics (`metrics::security` says why no address is a label value); the
//! sources themselves are in `/admin/state` and in log lines (`auth_failed` once per source and
//! window, `auth_lockout` and `auth_lockout_lifted` for every lockout and lift, both audit lines).

mod lockout;
mod source;
pub mod spend;
pub mod table;

pub use lockout::{Lifted, Lockout};
pub use source::{Source, SourceClass};
