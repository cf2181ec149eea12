//! The callback URL policy: the allow-list parser and the URL check never panic, an allow-list
//! prints back to itself, and with nothing allowed no URL naming a loopback, private,
//! link-local or unspecified address passes (checked by std's own address predicates, not
//! courier's range table). URLs naming a host are skipped: checking them means DNS.
//!
//! Input: the allow-list, a newline, the URL.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use courier::jobs::callback::{CallbackPolicy, MAX_URL_LEN};
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (allow, url) = text.split_once('\n').unwrap_or(("", text));
    let Ok(policy) = CallbackPolicy::parse(allow) else { return };
    let printed = policy.to_string();
    assert_eq!(CallbackPolicy::parse(&printed).as_ref(), Ok(&policy), "{allow:?} printed as {printed:?}");

    if matches!(Url::parse(url).ok().as_ref().and_then(Url::host), Some(Host::Domain(_))) {
        return;
    }
    let checked = policy.check(url).now_or_never().expect("an IP literal is checked without waiting");
    let Ok(target) = checked else { return };
    let accepted = target.url();
    assert!(matches!(accepted.scheme(), "http" | "https"), "{url:?}");
    assert!(accepted.username().is_empty() && accepted.password().is_none(), "{url:?}");
    assert!(url.len() <= MAX_URL_LEN);
    if policy == CallbackPolicy::default() {
        for addr in target.addrs() {
            assert!(!internal(addr.ip()), "{url:?} reaches {addr} with nothing allowed");
        }
    }
});

/// Addresses that reach the host itself or the inside of a network.
fn internal(ip: IpAddr) -> bool {
    let v4 = |v4: Ipv4Addr| v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified();
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (ip.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || ip.to_ipv4_mapped().is_some_and(v4)
        }
    }
}
