//! Tests of the callback URL policy. IP literals need no network; `localhost` resolves from
//! the hosts file.

use super::*;

fn policy(allow: &str) -> CallbackPolicy {
    CallbackPolicy::parse(allow).unwrap()
}

async fn refusal(policy: &CallbackPolicy, url: &str) -> Refused {
    policy.check(url).await.expect_err(url)
}

#[actix_rt::test]
async fn loopback_is_refused_unless_allowed() {
    let url = "http://127.0.0.1:8080/x";
    let refused = refusal(&policy(""), url).await;
    assert_eq!(refused.kind(), RefusalKind::Forbidden(SpecialUse::Loopback));
    assert_eq!(
        refused.to_string(),
        "callback_url resolves to 127.0.0.1, a loopback address; allow it with COURIER_CALLBACK_ALLOW"
    );
    for allow in ["127.0.0.1", "127.0.0.0/8", "10.0.0.0/8, 127.0.0.1/32"] {
        let target = policy(allow).check(url).await.unwrap_or_else(|e| panic!("{allow}: {e}"));
        assert_eq!(target.addrs(), ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
        assert_eq!(target.url().as_str(), url);
    }
    assert!(policy("127.0.0.2, 10.0.0.0/8").check(url).await.is_err());
}

#[actix_rt::test]
async fn special_use_literals_are_refused() {
    let none = policy("");
    for (url, kind) in [
        ("http://10.0.0.1/", SpecialUse::Private),
        ("http://172.16.5.4/", SpecialUse::Private),
        ("http://192.168.1.1/", SpecialUse::Private),
        ("http://169.254.169.254/latest/meta-data/", SpecialUse::LinkLocal),
        ("http://[::1]/", SpecialUse::Loopback),
        ("http://[fd00::1]/", SpecialUse::UniqueLocal),
        ("http://[fe80::1]/", SpecialUse::LinkLocal),
        ("http://100.64.0.1/", SpecialUse::SharedNat),
        ("http://0.0.0.0/", SpecialUse::Unspecified),
        ("http://[::]/", SpecialUse::Unspecified),
        ("http://224.0.0.1/", SpecialUse::Multicast),
        ("http://[ff02::1]/", SpecialUse::Multicast),
        ("http://255.255.255.255/", SpecialUse::Broadcast),
        ("http://240.0.0.1/", SpecialUse::Reserved),
        ("https://203.0.113.10/", SpecialUse::Documentation),
        ("https://192.0.2.1/", SpecialUse::Documentation),
        ("https://198.51.100.7/", SpecialUse::Documentation),
        ("https://[2001:db8::1]/", SpecialUse::Documentation),
        ("http://198.18.0.1/", SpecialUse::Benchmarking),
        ("http://[2001:2::1]/", SpecialUse::Benchmarking),
        // IPv6 forms of IPv4 addresses are judged by the IPv4 address.
        ("http://[::ffff:127.0.0.1]/", SpecialUse::Loopback),
        ("http://[::ffff:169.254.169.254]/", SpecialUse::LinkLocal),
        ("http://[64:ff9b::a00:1]/", SpecialUse::Private),
        ("http://[2002:c0a8:101::1]/", SpecialUse::Private),
        // Numeric IPv4 spellings are normalised by the URL parser before the check.
        ("http://2130706433/", SpecialUse::Loopback),
        ("http://0x7f.1/", SpecialUse::Loopback),
        ("http://017700000001/", SpecialUse::Loopback),
    ] {
        assert_eq!(refusal(&none, url).await.kind(), RefusalKind::Forbidden(kind), "{url}");
    }
}

#[actix_rt::test]
async fn public_literals_pass() {
    let none = policy("");
    for url in ["http://93.184.216.34/hook", "https://93.184.216.34:8443/hook?x=1", "https://[2606:2800:220:1::1]/"] {
        let target = none.check(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(target.addrs().len(), 1, "{url}");
    }
    // The mapped form of a public address is public too; the fragment is never sent.
    let target = none.check("http://[::ffff:93.184.216.34]/a#frag").await.unwrap();
    assert_eq!(target.url().as_str(), "http://[::ffff:5db8:d822]/a");
}

#[actix_rt::test]
async fn localhost_resolves_to_loopback_and_is_refused() {
    let refused = refusal(&policy(""), "http://localhost:9000/cb").await;
    assert_eq!(refused.kind(), RefusalKind::Forbidden(SpecialUse::Loopback));
    assert!(refused.to_string().starts_with("callback_url host localhost resolves to a loopback address;"));
    assert!(refused.address().is_some_and(|ip| ip.is_loopback()));
    // Allowed by name (any case, trailing dot) or by address.
    for allow in ["LocalHost", "localhost.", "127.0.0.0/8, ::1"] {
        let target = policy(allow).check("http://localhost:9000/cb").await.unwrap_or_else(|e| panic!("{allow}: {e}"));
        assert!(target.addrs().iter().all(|a| a.ip().is_loopback() && a.port() == 9000));
    }
}

#[actix_rt::test]
async fn malformed_urls_are_refused() {
    let open = policy("0.0.0.0/0, ::/0");
    let long = format!("http://93.184.216.34/{}", "a".repeat(MAX_URL_LEN));
    for (url, needle) in [
        ("ftp://93.184.216.34/x", "not ftp"),
        ("file:///etc/passwd", "not file"),
        ("/relative/path", "absolute"),
        ("93.184.216.34/x", "absolute"),
        ("", "absolute"),
        ("http://user:pw@93.184.216.34/x", "credentials"),
        ("http://user@93.184.216.34/x", "credentials"),
        ("http://:pw@93.184.216.34/x", "credentials"),
        (long.as_str(), "longer than 2048"),
    ] {
        let refused = refusal(&open, url).await;
        assert_eq!(refused.kind(), RefusalKind::Invalid, "{url}");
        assert!(refused.to_string().contains(needle), "{url}: {refused}");
        assert!(!refused.to_string().contains("pw"), "{url}: {refused}");
    }
}

#[actix_rt::test]
async fn an_unknown_host_is_unresolvable() {
    let refused = refusal(&policy(""), "https://no-such-host.invalid/cb").await;
    assert_eq!(refused.kind(), RefusalKind::Unresolvable);
    assert!(refused.to_string().contains("no-such-host.invalid"));
}

#[test]
fn the_allow_list_parses_hosts_addresses_and_blocks() {
    let p = policy(" 127.0.0.1, 10.0.0.0/8, Hooks.Internal ,::1,[fd00::]/8,, ");
    assert_eq!(p.to_string(), "hooks.internal,127.0.0.1/32,10.0.0.0/8,::1/128,fd00::/8");
    assert_eq!(policy(""), CallbackPolicy::default());
}

#[test]
fn bad_allow_entries_are_all_reported() {
    let err = CallbackPolicy::parse(
        "10.0.0.1/8, 10.0.0.0/33, nope/8, *.internal, a b, ok.internal, a..b, 127.., %2A.x, %2cccr",
    )
    .unwrap_err();
    let parts: Vec<&str> = err.split("; ").collect();
    assert_eq!(parts.len(), 9, "{err}");
    assert!(parts[0].contains("did you mean 10.0.0.0/8"), "{err}");
    assert!(parts[1].contains("0 to 32"), "{err}");
    assert!(parts[2].contains("not an IP address"), "{err}");
    assert!(parts[3].contains("wildcards"), "{err}");
    assert!(parts[4].contains("`a b`"), "{err}");
    // Empty labels (found by the callback_url fuzz target): `127..` trimmed would be `127`,
    // which names an address, not the host the entry seemed to name.
    assert!(parts[5].contains("`a..b` is not a host name"), "{err}");
    assert!(parts[6].contains("`127..` is not a host name"), "{err}");
    assert!(parts[7].contains("`%2A.x`: wildcards"), "{err}");
    // A comma spelled `%2c` decodes into the list separator (found by the fuzz target): the
    // printed list would read back as another host.
    assert!(parts[8].contains("`%2cccr` is not a host name"), "{err}");
}

#[test]
fn classification_covers_the_edges_of_each_block() {
    let kind = |s: &str| special_use(s.parse().unwrap());
    assert_eq!(kind("172.15.255.255"), None);
    assert_eq!(kind("172.31.255.255"), Some(SpecialUse::Private));
    assert_eq!(kind("172.32.0.0"), None);
    assert_eq!(kind("100.63.255.255"), None);
    assert_eq!(kind("100.127.255.255"), Some(SpecialUse::SharedNat));
    assert_eq!(kind("8.8.8.8"), None);
    assert_eq!(kind("2001:4860:4860::8888"), None);
    assert_eq!(kind("64:ff9b::808:808"), None, "NAT64 of a public address");
    assert_eq!(kind("::127.0.0.1"), Some(SpecialUse::Reserved), "IPv4-compatible");
    assert_eq!(kind("fec0::1"), Some(SpecialUse::Private));
}
