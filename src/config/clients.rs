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
pub(super) const EXPECTED: &str =
    "a TOML file of [[client]] tables with name = \"...\", key_sha256 = \"<64 hex>\", weight = 1";

/// One client identity.
#[derive(Clone)]
pub struct ClientEntry {
    /// The client's name, used in logs and metrics (interned: see [`intern`]).
    pub name: &'static str,
    /// Its share of the upstream budget, relative to the other clients.
    pub weight: u32,
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
}

fn default_weight() -> u32 {
    1
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
            entries.push(ClientEntry { name: intern(&entry.name), weight: entry.weight, key_sha256: Some(key_sha256) });
        }
        Ok(Clients { entries })
    }

    /// The list to use after a reload read `next`: every client keeps the position it has
    /// here, clients missing from `next` stay as tombstones, new ones go at the end (see the
    /// module doc).
    pub fn merged(&self, next: Clients) -> Clients {
        let mut entries: Vec<ClientEntry> = self
            .entries
            .iter()
            .map(|old| ClientEntry { name: old.name, weight: old.weight, key_sha256: None })
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
    /// weights (nothing for a reload to change).
    pub fn same_as(&self, other: &Clients) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.name == b.name && a.weight == b.weight && a.key_sha256 == b.key_sha256)
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
