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

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The expected form of the clients file, for error lines.
pub(super) const EXPECTED: &str = "a TOML file of [[client]] tables with name = \"...\", key_sha256 = \"<64 hex>\", \
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
    /// The key's hash; `None` once a reload removed the client (no key matches it).
    key_sha256: Option<[u8; 32]>,
}

impl ClientEntry {
    /// Whether the client is in the current file (false: removed by a reload).
    pub fn is_active(&self) -> bool {
        self.key_sha256.is_some()
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
    key_sha256: String,
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
            let mut key_sha256 = [0u8; 32];
            if hex::decode_to_slice(entry.key_sha256.trim(), &mut key_sha256).is_err() {
                return Err(format!("client {:?} has a key_sha256 that is not 64 hex digits", entry.name));
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
                key_sha256: Some(key_sha256),
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
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, u32)]) -> String {
        entries
            .iter()
            .map(|(name, key, weight)| {
                format!("[[client]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nweight = {weight}\n", key_sha256_hex(key))
            })
            .collect()
    }

    #[test]
    fn authenticates_by_key_hash() {
        let clients = Clients::parse(&file(&[("billing", "k-billing", 3), ("search", "k-search", 1)])).unwrap();
        assert_eq!(clients.authenticate(b"k-search"), Some((1, "search")));
        assert_eq!(clients.authenticate(b"k-billing"), Some((0, "billing")));
        assert_eq!(clients.authenticate(b"k-other"), None);
        assert_eq!(clients.entries()[0].weight, 3);
    }

    #[test]
    fn rejects_bad_files_without_quoting_keys() {
        assert!(Clients::parse("").unwrap_err().contains("not a valid"));
        assert!(Clients::parse("client = []").unwrap_err().contains("no [[client]]"));
        let short = "[[client]]\nname = \"a\"\nkey_sha256 = \"abcd\"\n";
        assert!(Clients::parse(short).unwrap_err().contains("64 hex"));
        let twice = file(&[("a", "k1", 1), ("a", "k2", 1)]);
        assert!(Clients::parse(&twice).unwrap_err().contains("twice"));
        let zero = file(&[("a", "k1", 0)]);
        assert!(Clients::parse(&zero).unwrap_err().contains("weight 0"));
    }

    #[test]
    fn a_reload_keeps_positions_tombstones_removed_clients_and_appends_new_ones() {
        let before = Clients::parse(&file(&[("billing", "k-billing", 3), ("search", "k-search", 1)])).unwrap();
        // search is removed, billing gets a new key and weight, reports is new, in another order.
        let next = Clients::parse(&file(&[("reports", "k-reports", 2), ("billing", "k-billing-2", 5)])).unwrap();
        let after = before.merged(next);
        let names: Vec<&str> = after.entries().iter().map(|e| e.name).collect();
        assert_eq!(names, ["billing", "search", "reports"]);
        assert_eq!(after.authenticate(b"k-billing-2"), Some((0, "billing")));
        assert_eq!(after.entries()[0].weight, 5);
        assert_eq!(after.authenticate(b"k-billing"), None, "the old key of a rotated client");
        assert_eq!(after.authenticate(b"k-search"), None, "a removed client");
        assert!(!after.entries()[1].is_active());
        assert_eq!(after.authenticate(b"k-reports"), Some((2, "reports")));
        // Adding a removed client back gives it its old position.
        let again = after.merged(Clients::parse(&file(&[("search", "k-search-3", 1)])).unwrap());
        assert_eq!(again.authenticate(b"k-search-3"), Some((1, "search")));
        assert_eq!(again.authenticate(b"k-reports"), None);
        assert_eq!(again.entries().len(), 3);
    }

    #[test]
    fn the_same_file_again_changes_nothing() {
        let text = file(&[("billing", "k-billing", 3), ("search", "k-search", 1)]);
        let before = Clients::parse(&text).unwrap();
        let after = before.merged(Clients::parse(&text).unwrap());
        assert!(after.same_as(&before));
        let rotated = before.merged(Clients::parse(&file(&[("billing", "k2", 3), ("search", "k-search", 1)])).unwrap());
        assert!(!rotated.same_as(&before));
    }

    /// A client with these quota lines (TOML values as written, e.g. "0.3" or "nan").
    fn quota_client(name: &str, lines: &str) -> String {
        format!("[[client]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{lines}\n", key_sha256_hex(name))
    }

    #[test]
    fn quota_fractions_are_checked() {
        let plain = Clients::parse(&file(&[("billing", "k-billing", 1)])).unwrap();
        let billing = &plain.entries()[0];
        assert_eq!((billing.quota_max, billing.quota_reserved), (1.0, 0.0), "the defaults");
        assert_eq!(plain.reserved_total(), 0.0);

        let set =
            quota_client("billing", "quota_max = 0.3\nquota_reserved = 0.2") + &quota_client("search", "quota_max = 0");
        let set = Clients::parse(&set).unwrap();
        assert_eq!((set.entries()[0].quota_max, set.entries()[0].quota_reserved), (0.3, 0.2));
        assert_eq!(set.entries()[1].quota_max, 0.0, "a cache-only client");

        let refused = |text: String| Clients::parse(&text).map(|_| ()).unwrap_err();
        assert_eq!(
            refused(quota_client("search", "quota_max = 1.5")),
            r#"client "search" has quota_max 1.5 (0.0..=1.0)"#
        );
        assert_eq!(
            refused(quota_client("search", "quota_max = nan")),
            r#"client "search" has quota_max NaN (0.0..=1.0)"#
        );
        assert_eq!(
            refused(quota_client("search", "quota_reserved = -0.1")),
            r#"client "search" has quota_reserved -0.1 (0.0..=1.0)"#
        );
        assert_eq!(
            refused(quota_client("billing", "quota_max = 0.3\nquota_reserved = 0.5")),
            r#"client "billing" has quota_reserved 0.5 above its quota_max 0.3"#
        );
        let over = quota_client("a", "quota_reserved = 0.6") + &quota_client("b", "quota_reserved = 0.6");
        assert_eq!(refused(over), "the clients' quota_reserved add up to 1.2 (at most 1.0)");
        // Ten tenths are 1.0 to the operator, though not quite in binary.
        let tenths: String = (0..10).map(|i| quota_client(&format!("c{i}"), "quota_reserved = 0.1")).collect();
        assert!(Clients::parse(&tenths).is_ok());
    }

    #[test]
    fn a_reload_frees_removed_clients_reservations_and_sees_changed_fractions() {
        let before = quota_client("billing", "quota_reserved = 0.6") + &quota_client("search", "quota_reserved = 0.4");
        let before = Clients::parse(&before).unwrap();
        // billing is removed; search and the new reports take up what it held.
        let next = quota_client("search", "quota_reserved = 0.5") + &quota_client("reports", "quota_reserved = 0.5");
        let after = before.merged(Clients::parse(&next).unwrap());
        let reserved: Vec<f64> = after.entries().iter().map(|e| e.quota_reserved).collect();
        assert_eq!(reserved, [0.0, 0.5, 0.5], "the tombstone of billing holds nothing");
        assert_eq!(after.reserved_total(), 1.0);
        assert_eq!(after.check_reserved(), Ok(()));

        let text = quota_client("billing", "quota_max = 0.5") + &quota_client("search", "");
        let current = Clients::parse(&text).unwrap();
        assert!(current.merged(Clients::parse(&text).unwrap()).same_as(&current));
        let capped = quota_client("billing", "quota_max = 0.4") + &quota_client("search", "");
        assert!(!current.merged(Clients::parse(&capped).unwrap()).same_as(&current), "a changed quota_max");
        let held = quota_client("billing", "quota_max = 0.5") + &quota_client("search", "quota_reserved = 0.1");
        assert!(!current.merged(Clients::parse(&held).unwrap()).same_as(&current), "a changed quota_reserved");
    }

    #[test]
    fn names_are_interned_once() {
        let a = intern("interned-name");
        let b = intern(&String::from("interned-name"));
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn debug_redacts_hashes() {
        let clients = Clients::parse(&file(&[("a", "k1", 1)])).unwrap();
        let shown = format!("{clients:?}");
        assert!(!shown.contains(&key_sha256_hex("k1")));
        assert!(shown.contains("REDACTED"));
    }
}
