//! Client identities from `COURIER_CLIENTS_FILE`.
//!
//! The file holds only SHA-256 hashes of the keys, so it is not itself a secret store. A
//! presented key is hashed once and compared against every entry in constant time, so the
//! time taken does not reveal how much of a hash matched.
//!
//! The file can be reloaded while courier runs ([`Clients::merged`]). A client is identified
//! by its position in the list (fair sharing and the budget's lanes use it), so a reload keeps
//! every name at the position it first had: a changed key or weight replaces the entry in its
//! place, a removed client stays as a tombstone that no key matches, and a new one is added
//! at the end. A position handed out once therefore means the same client for the life of the
//! process, even to a request that began before the reload.
//!
//! A client may also be identified by its TLS client certificate (`tls_names`, see
//! [`super::tls_names`]), instead of or beside a key: an entry needs at least one of the two.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::tls_names::{PeerNames, TlsName};

/// The expected form of the clients file, for error lines.
pub(super) const EXPECTED: &str = "a TOML file of [[client]] tables with name = \"...\", key_sha256 = \"<64 hex>\" \
                                   and/or tls_names = [\"spiffe://...\", \"host.example\", \"CN=...\"], \
                                   weight = 1, quota_max = 1.0, quota_reserved = 0.0";

/// One client identity.
#[derive(Clone)]
pub struct ClientEntry {
    /// The client's name, used in logs and metrics (interned: see [`intern`]).
    pub name: &'static str,
    /// Its share of the upstream budget, relative to the other clients.
    pub weight: u32,
    /// The most it may use of each quota window, as a fraction of the window's limit.
    pub quota_max: f64,
    /// The fraction of each quota window held for it, which other clients cannot take while it
    /// may still need it (0 for a removed client).
    pub quota_reserved: f64,
    /// The key's hash; `None` for a client identified by certificate only, and once a reload
    /// removed the client (no key matches it).
    key_sha256: Option<[u8; 32]>,
    /// The names a client certificate identifying it may carry (none once removed).
    tls_names: Vec<TlsName>,
    /// Whether the client is in the current file (false: a tombstone left by a reload).
    active: bool,
}

impl ClientEntry {
    /// Whether the client is in the current file (false: removed by a reload).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The names a client certificate identifying this client may carry.
    pub fn tls_names(&self) -> &[TlsName] {
        &self.tls_names
    }
}

impl fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("quota_max", &self.quota_max)
            .field("quota_reserved", &self.quota_reserved)
            .field("key_sha256", &"[REDACTED]")
            .field("tls_names", &self.tls_names)
            .field("active", &self.is_active())
            .finish()
    }
}

/// The one `&'static str` of a client name. Requests carry their client's name through
/// logs, metrics and job ownership while a reload may replace the list, so the name must
/// outlive any list; interning gives it that lifetime at no cost per request. Each distinct
/// name is kept once for the life of the process; names come only from the operator's
/// clients file (at most 64 bytes each), so what is kept stays small.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(kept);
    kept
}

/// The known clients; a client is identified by its position in the list.
#[derive(Clone, Debug)]
pub struct Clients {
    entries: Vec<ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    client: Vec<EntryForm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    name: String,
    key_sha256: Option<String>,
    #[serde(default)]
    tls_names: Vec<String>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default = "default_quota_max")]
    quota_max: f64,
    #[serde(default)]
    quota_reserved: f64,
}

fn default_weight() -> u32 {
    1
}

fn default_quota_max() -> f64 {
    1.0
}

/// Whether a quota fraction is one: finite, from 0 to 1 (NaN fails both comparisons).
fn fraction(value: f64) -> bool {
    (0.0..=1.0).contains(&value)
}

impl Clients {
    /// Loads and validates the clients file; the error says what is wrong, never a key.
    pub fn load(path: &Path) -> Result<Clients, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    /// Parses the clients file's text.
    pub fn parse(text: &str) -> Result<Clients, String> {
        let form: FileForm = toml::from_str(text).map_err(|e| format!("not a valid clients file: {}", e.message()))?;
        if form.client.is_empty() {
            return Err("lists no [[client]]".into());
        }
        let mut entries = Vec::with_capacity(form.client.len());
        for (i, entry) in form.client.into_iter().enumerate() {
            let valid_name = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_name {
                return Err(format!("client #{} has an invalid name (1-64 of A-Z a-z 0-9 - _ .)", i + 1));
            }
            if entries.iter().any(|e: &ClientEntry| e.name == entry.name) {
                return Err(format!("client {:?} is listed twice", entry.name));
            }
            let key_sha256 = match &entry.key_sha256 {
                Some(hex) => {
                    let mut key_sha256 = [0u8; 32];
                    if hex::decode_to_slice(hex.trim(), &mut key_sha256).is_err() {
                        return Err(format!("client {:?} has a key_sha256 that is not 64 hex digits", entry.name));
                    }
                    Some(key_sha256)
                }
                None if entry.tls_names.is_empty() => {
                    return Err(format!("client {:?} has neither key_sha256 nor tls_names", entry.name));
                }
                None => None,
            };
            let tls_names = entry
                .tls_names
                .iter()
                .map(|name| TlsName::parse(name).map_err(|e| format!("client {:?} has a bad {e}", entry.name)))
                .collect::<Result<Vec<_>, _>>()?;
            for name in &tls_names {
                if let Some(other) = entries.iter().find(|e: &&ClientEntry| e.tls_names.contains(name)) {
                    return Err(format!("clients {:?} and {:?} both list tls_name {name:?}", other.name, entry.name));
                }
            }
            if !(1..=1000).contains(&entry.weight) {
                return Err(format!("client {:?} has weight {} (1..=1000)", entry.name, entry.weight));
            }
            for (field, value) in [("quota_max", entry.quota_max), ("quota_reserved", entry.quota_reserved)] {
                if !fraction(value) {
                    return Err(format!("client {:?} has {field} {value} (0.0..=1.0)", entry.name));
                }
            }
            if entry.quota_reserved > entry.quota_max {
                return Err(format!(
                    "client {:?} has quota_reserved {} above its quota_max {}",
                    entry.name, entry.quota_reserved, entry.quota_max
                ));
            }
            entries.push(ClientEntry {
                name: intern(&entry.name),
                weight: entry.weight,
                quota_max: entry.quota_max,
                quota_reserved: entry.quota_reserved,
                key_sha256,
                tls_names,
                active: true,
            });
        }
        let clients = Clients { entries };
        clients.check_reserved()?;
        Ok(clients)
    }

    /// Whether the active clients' `quota_reserved` add up to at most 1.0: reservations above the
    /// whole window could not all be honoured. [`Clients::parse`] checks it; a reload may check
    /// the merged list again.
    pub fn check_reserved(&self) -> Result<(), String> {
        let total = self.reserved_total();
        // A small tolerance: ten clients of 0.1 add up to 1.0000000000000002 in binary.
        if total > 1.0 + 1e-9 {
            return Err(format!("the clients' quota_reserved add up to {} (at most 1.0)", round(total)));
        }
        Ok(())
    }

    /// The sum of the active clients' `quota_reserved` (removed clients hold nothing).
    pub fn reserved_total(&self) -> f64 {
        self.entries.iter().filter(|e| e.is_active()).map(|e| e.quota_reserved).sum()
    }

    /// The list to use after a reload read `next`: every client keeps the position it has
    /// here, clients missing from `next` stay as tombstones, new ones go at the end (see the
    /// module doc). A tombstone reserves no quota, so the merged list's reservations are exactly
    /// those of `next`, which [`Clients::parse`] checked.
    pub fn merged(&self, next: Clients) -> Clients {
        let mut entries: Vec<ClientEntry> = self
            .entries
            .iter()
            .map(|old| ClientEntry {
                name: old.name,
                weight: old.weight,
                quota_max: old.quota_max,
                quota_reserved: 0.0,
                key_sha256: None,
                tls_names: Vec::new(),
                active: false,
            })
            .collect();
        for new in next.entries {
            match entries.iter_mut().find(|e| e.name == new.name) {
                Some(slot) => *slot = new,
                None => entries.push(new),
            }
        }
        Clients { entries }
    }

    /// The names of the clients (removed ones' included), for their metric series.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries().iter().map(|client| client.name).collect()
    }

    /// All clients by position, in file order (with tombstones of removed ones after a reload).
    pub fn entries(&self) -> &[ClientEntry] {
        &self.entries
    }

    /// Whether `other` lists the same clients at the same positions, with the same keys and
    /// weights and quota fractions (nothing for a reload to change).
    pub fn same_as(&self, other: &Clients) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.name == b.name
                    && a.weight == b.weight
                    && a.quota_max.to_bits() == b.quota_max.to_bits()
                    && a.quota_reserved.to_bits() == b.quota_reserved.to_bits()
                    && a.key_sha256 == b.key_sha256
                    && a.tls_names == b.tls_names
                    && a.active == b.active
            })
    }

    /// The position and name of the client whose key this is, compared by hash in constant
    /// time (every entry is compared, whichever matches).
    pub fn authenticate(&self, presented_key: &[u8]) -> Option<(usize, &'static str)> {
        let hash: [u8; 32] = Sha256::digest(presented_key).into();
        let mut found = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if let Some(key) = &entry.key_sha256 {
                if bool::from(key.ct_eq(&hash)) {
                    found = Some((i, entry.name));
                }
            }
        }
        found
    }

    /// The position and name of the one client whose `tls_names` the verified client
    /// certificate with `peer`'s names carries; `None` when it is no client's, or more than one's.
    pub fn by_certificate(&self, peer: &PeerNames) -> Option<(usize, &'static str)> {
        let mut matching =
            self.entries.iter().enumerate().filter(|(_, entry)| entry.tls_names.iter().any(|name| name.matches(peer)));
        let (i, entry) = matching.next()?;
        matching.next().is_none().then_some((i, entry.name))
    }

    /// Whether any client can be identified by a certificate.
    pub fn any_tls_names(&self) -> bool {
        self.entries.iter().any(|entry| !entry.tls_names.is_empty())
    }
}

/// A sum for an error line, without binary noise (1.2, not 1.2000000000000002).
fn round(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// The hex SHA-256 of a key, as written in the clients file.
pub fn key_sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
#[path = "clients_tests.rs"]
mod tests;
