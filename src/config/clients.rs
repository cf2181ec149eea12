//! Client identities from `COURIER_CLIENTS_FILE`.
//!
//! The file holds only SHA-256 hashes of the keys, so it is not itself a secret store. A
//! presented key is hashed once and compared against every entry in constant time, so the
//! time taken does not reveal how much of a hash matched.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The expected form of the clients file, for error lines.
pub(super) const EXPECTED: &str =
    "a TOML file of [[client]] tables with name = \"...\", key_sha256 = \"<64 hex>\", weight = 1";

/// One client identity.
#[derive(Clone)]
pub struct ClientEntry {
    /// The client's name, used in logs and metrics.
    pub name: Arc<str>,
    /// Its share of the upstream budget, relative to the other clients.
    pub weight: u32,
    key_sha256: [u8; 32],
}

impl fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("key_sha256", &"[REDACTED]")
            .finish()
    }
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
            if entries.iter().any(|e: &ClientEntry| *e.name == *entry.name) {
                return Err(format!("client {:?} is listed twice", entry.name));
            }
            let mut key_sha256 = [0u8; 32];
            if hex::decode_to_slice(entry.key_sha256.trim(), &mut key_sha256).is_err() {
                return Err(format!("client {:?} has a key_sha256 that is not 64 hex digits", entry.name));
            }
            if !(1..=1000).contains(&entry.weight) {
                return Err(format!("client {:?} has weight {} (1..=1000)", entry.name, entry.weight));
            }
            entries.push(ClientEntry { name: entry.name.into(), weight: entry.weight, key_sha256 });
        }
        Ok(Clients { entries })
    }

    /// All clients, in file order.
    pub fn entries(&self) -> &[ClientEntry] {
        &self.entries
    }

    /// The index of the client whose key this is, compared by hash in constant time.
    pub fn authenticate(&self, presented_key: &[u8]) -> Option<usize> {
        let hash: [u8; 32] = Sha256::digest(presented_key).into();
        let mut found = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if bool::from(entry.key_sha256.ct_eq(&hash)) {
                found = Some(i);
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
        assert_eq!(clients.authenticate(b"k-search"), Some(1));
        assert_eq!(clients.authenticate(b"k-billing"), Some(0));
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
    fn debug_redacts_hashes() {
        let clients = Clients::parse(&file(&[("a", "k1", 1)])).unwrap();
        let shown = format!("{clients:?}");
        assert!(!shown.contains(&key_sha256_hex("k1")));
        assert!(shown.contains("REDACTED"));
    }
}
