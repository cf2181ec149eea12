//! Tests of the clients file: keys, reloads, quota fractions, certificate names.

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
    assert_eq!(refused(quota_client("search", "quota_max = 1.5")), r#"client "search" has quota_max 1.5 (0.0..=1.0)"#);
    assert_eq!(refused(quota_client("search", "quota_max = nan")), r#"client "search" has quota_max NaN (0.0..=1.0)"#);
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

fn peer(uris: &[&str], dns: &[&str], cns: &[&str]) -> PeerNames {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    PeerNames { uris: own(uris), dns: own(dns), common_names: own(cns) }
}

#[test]
fn clients_are_identified_by_certificate_names_with_or_without_a_key() {
    let text = format!(
        "[[client]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\ntls_names = [\"spiffe://t/alpha\"]\n\
         [[client]]\nname = \"beta\"\ntls_names = [\"beta.svc\", \"CN=beta\"]\n",
        key_sha256_hex("k-alpha")
    );
    let clients = Clients::parse(&text).unwrap();
    assert_eq!(clients.authenticate(b"k-alpha"), Some((0, "alpha")));
    assert_eq!(clients.by_certificate(&peer(&["spiffe://t/alpha"], &[], &[])), Some((0, "alpha")));
    assert_eq!(clients.by_certificate(&peer(&[], &["BETA.svc"], &[])), Some((1, "beta")));
    assert_eq!(clients.by_certificate(&peer(&[], &[], &["beta"])), Some((1, "beta")));
    assert_eq!(clients.by_certificate(&peer(&[], &["other.svc"], &["alpha"])), None, "no client's names");
    let both = peer(&["spiffe://t/alpha"], &["beta.svc"], &[]);
    assert_eq!(clients.by_certificate(&both), None, "a certificate naming two clients identifies nobody");
    assert!(clients.any_tls_names());
    assert!(format!("{clients:?}").contains("CN=beta"), "names are not secrets: shown");

    // A reload that removes beta leaves a tombstone no certificate matches; one that changes
    // alpha's names is a change.
    let next = format!(
        "[[client]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\ntls_names = [\"spiffe://t/alpha-2\"]\n",
        key_sha256_hex("k-alpha")
    );
    let after = clients.merged(Clients::parse(&next).unwrap());
    assert!(!after.same_as(&clients));
    assert_eq!(after.by_certificate(&peer(&[], &["beta.svc"], &[])), None);
    assert!(!after.entries()[1].is_active());
    assert_eq!(after.by_certificate(&peer(&["spiffe://t/alpha-2"], &[], &[])), Some((0, "alpha")));
}

#[test]
fn certificate_names_are_checked() {
    let refused = |text: &str| Clients::parse(text).map(|_| ()).unwrap_err();
    assert_eq!(refused("[[client]]\nname = \"a\"\n"), r#"client "a" has neither key_sha256 nor tls_names"#);
    assert!(refused("[[client]]\nname = \"a\"\ntls_names = [\"not a name\"]\n").contains(r#"client "a" has a bad"#));
    let twice =
        "[[client]]\nname = \"a\"\ntls_names = [\"x.svc\"]\n[[client]]\nname = \"b\"\ntls_names = [\"X.svc\"]\n";
    assert_eq!(refused(twice), r#"clients "a" and "b" both list tls_name x.svc"#);
}
