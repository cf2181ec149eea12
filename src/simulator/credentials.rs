//! The credentials the simulator accepts, replaceable at run time to rehearse a rotation.
//!
//! A real provider rotates in overlapping steps: it starts accepting the new secret (or API
//! key) while the old one still works, the client switches, then the old one is revoked. So
//! each credential is a list of accepted values, replaced whole through
//! `POST /_sim/credentials` or [`Simulator::set_credentials`](super::Simulator::set_credentials),
//! and each accepted value counts its uses, so a test can tell which one a client sent
//! without the simulator ever showing a value. The request path reads the lists through one
//! `ArcSwap` load and bumps one atomic counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::tokens::constant_time_eq;

/// One accepted value and how often it was presented.
struct Slot {
    value: String,
    uses: AtomicU64,
}

/// The accepted values of each credential.
struct Accepted {
    client_secrets: Vec<Slot>,
    api_keys: Vec<Slot>,
}

/// A change of the accepted credentials; a missing list keeps the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsPatch {
    /// OAuth client secrets the token endpoint accepts (replaces the list; counts restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secrets: Option<Vec<String>>,
    /// `X-API-Key` values `/v2/process` accepts (replaces the list; counts restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
}

impl CredentialsPatch {
    /// Refuses lists that would lock every client out (empty, or holding an empty value).
    pub fn validate(&self) -> Result<(), String> {
        for (name, list) in [("client_secrets", &self.client_secrets), ("api_keys", &self.api_keys)] {
            if let Some(list) = list {
                if list.is_empty() || list.iter().any(String::is_empty) {
                    return Err(format!("{name} must list at least one value, none empty"));
                }
            }
        }
        Ok(())
    }
}

/// Uses of each accepted value, by position in its list (`GET /_sim/credentials`). Values
/// are never shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUses {
    /// Successful presentations of each accepted client secret (token requests).
    pub client_secrets: Vec<u64>,
    /// Presentations of each accepted API key (`/v2/process` requests).
    pub api_keys: Vec<u64>,
}

/// The accepted credentials, shared by every worker.
pub(crate) struct Credentials(ArcSwap<Accepted>);

fn slots(values: &[String]) -> Vec<Slot> {
    values.iter().map(|value| Slot { value: value.clone(), uses: AtomicU64::new(0) }).collect()
}

/// Finds `given` among `slots` (comparing with every one, in constant time) and counts it.
fn present(slots: &[Slot], given: &[u8]) -> bool {
    let mut found = None;
    for slot in slots {
        if constant_time_eq(given, slot.value.as_bytes()) {
            found = Some(slot);
        }
    }
    found.map(|slot| slot.uses.fetch_add(1, Relaxed)).is_some()
}

impl Credentials {
    /// Accepts exactly `client_secret` and `api_key`.
    pub(crate) fn new(client_secret: &str, api_key: &str) -> Self {
        let accepted =
            Accepted { client_secrets: slots(&[client_secret.to_owned()]), api_keys: slots(&[api_key.to_owned()]) };
        Credentials(ArcSwap::from_pointee(accepted))
    }

    /// Whether `given` is an accepted client secret; counts its use.
    pub(crate) fn client_secret(&self, given: &[u8]) -> bool {
        present(&self.0.load().client_secrets, given)
    }

    /// Whether `given` is an accepted API key; counts its use.
    pub(crate) fn api_key(&self, given: &[u8]) -> bool {
        present(&self.0.load().api_keys, given)
    }

    /// Replaces the lists the patch names (call [`CredentialsPatch::validate`] first).
    pub(crate) fn apply(&self, patch: &CredentialsPatch) {
        let current = self.0.load();
        let keep = |list: &[Slot]| -> Vec<Slot> {
            list.iter().map(|s| Slot { value: s.value.clone(), uses: AtomicU64::new(s.uses.load(Relaxed)) }).collect()
        };
        let next = Accepted {
            client_secrets: patch.client_secrets.as_deref().map_or_else(|| keep(&current.client_secrets), slots),
            api_keys: patch.api_keys.as_deref().map_or_else(|| keep(&current.api_keys), slots),
        };
        self.0.store(Arc::new(next));
    }

    /// Uses of each accepted value.
    pub(crate) fn uses(&self) -> CredentialUses {
        let current = self.0.load();
        let counts = |list: &[Slot]| list.iter().map(|s| s.uses.load(Relaxed)).collect();
        CredentialUses { client_secrets: counts(&current.client_secrets), api_keys: counts(&current.api_keys) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_listed_value_and_counts_each() {
        let creds = Credentials::new("old-secret", "old-key");
        assert!(creds.client_secret(b"old-secret"));
        let patch = CredentialsPatch {
            client_secrets: Some(vec!["old-secret".into(), "new-secret".into()]),
            ..CredentialsPatch::default()
        };
        creds.apply(&patch);
        assert!(creds.client_secret(b"new-secret"));
        assert!(creds.client_secret(b"new-secret"));
        assert!(creds.client_secret(b"old-secret"));
        assert!(!creds.client_secret(b"other"));
        assert!(creds.api_key(b"old-key"), "the key list was kept");
        assert_eq!(creds.uses(), CredentialUses { client_secrets: vec![1, 2], api_keys: vec![1] });
    }

    #[test]
    fn refuses_lists_that_lock_everyone_out() {
        let empty = CredentialsPatch { api_keys: Some(vec![]), ..CredentialsPatch::default() };
        assert!(empty.validate().is_err());
        let blank = CredentialsPatch { client_secrets: Some(vec![String::new()]), ..CredentialsPatch::default() };
        assert!(blank.validate().is_err());
        assert!(CredentialsPatch::default().validate().is_ok());
    }
}
