//! Where a request comes from, as the lockout and the failure counts see it.
//!
//! A source is the peer address of the TCP connection: an IPv4 address, or the /64 prefix of an
//! IPv6 address (one host, or one customer of a provider, is normally given a whole /64, so
//! counting single IPv6 addresses would let a guesser step to the next address for free). An
//! IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, a dual-stack listener's form) is the IPv4
//! address. courier trusts no `X-Forwarded-For` or `Forwarded` header anywhere: behind a proxy or
//! a load balancer that ends the TCP connection every caller has the proxy's address (see
//! docs/security.md, "Behind a proxy").

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A source of requests: an IPv4 address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The source an operator names: an IP address (any address of an IPv6 /64 names the /64),
    /// or an IPv6 prefix written as `<address>/64`.
    pub fn parse(text: &str) -> Option<Source> {
        let address = text.strip_suffix("/64").filter(|a| a.contains(':')).unwrap_or(text);
        address.parse::<IpAddr>().ok().map(Source::of)
    }

    /// Its class, the `source_class` label of `courier_auth_failures_total`.
    pub fn class(self) -> SourceClass {
        match self {
            Source::V4(v4) if v4.is_loopback() => SourceClass::Loopback,
            Source::V4(v4) => {
                let [a, b, ..] = v4.octets();
                // RFC 1918, link-local, and the shared address space of carrier-grade NAT.
                let shared = a == 100 && (64..128).contains(&b);
                match v4.is_private() || v4.is_link_local() || shared {
                    true => SourceClass::Private,
                    false => SourceClass::Public,
                }
            }
            Source::V6(prefix) => {
                let first = (prefix >> 48) as u16;
                // ::1 is the /64 `::` (as is `::` itself, never a peer).
                if prefix == 0 {
                    SourceClass::Loopback
                } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80 {
                    // Unique local (fc00::/7) and link-local (fe80::/10).
                    SourceClass::Private
                } else {
                    SourceClass::Public
                }
            }
        }
    }

    /// The wider bucket a source falls in when sources are counted together: its IPv4 /24, or
    /// its IPv6 /48 (one site). A guesser that walks its addresses stays in one bucket.
    pub fn bucket(self) -> String {
        match self {
            Source::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                format!("{a}.{b}.{c}.0/24")
            }
            Source::V6(prefix) => format!("{}/48", Ipv6Addr::from(u128::from(prefix >> 16 << 16) << 64)),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// The kind of network a source is on: the label values of `courier_auth_failures_total`,
/// known in advance (a source's own address is never a label value: see [`crate::security`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, carrier-grade NAT (100.64.0.0/10), link-local, IPv6 unique local.
    Private,
    /// Anything else.
    Public,
}

impl SourceClass {
    /// Every class, in label order.
    pub const ALL: [SourceClass; 3] = [SourceClass::Loopback, SourceClass::Private, SourceClass::Public];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceClass::Loopback => "loopback",
            SourceClass::Private => "private",
            SourceClass::Public => "public",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn ipv4_is_the_address_and_ipv6_the_64_prefix() {
        assert_eq!(source("127.0.0.2").to_string(), "127.0.0.2");
        assert_ne!(source("127.0.0.1"), source("127.0.0.2"));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(source("::ffff:10.1.2.3"), source("10.1.2.3"), "an IPv4-mapped address is IPv4");
    }

    #[test]
    fn an_operator_names_a_source_by_any_of_its_addresses_or_its_prefix() {
        assert_eq!(Source::parse("10.1.2.3"), Some(source("10.1.2.3")));
        assert_eq!(Source::parse("2001:db8:1:2::/64"), Some(source("2001:db8:1:2::77")));
        assert_eq!(Source::parse("2001:db8:1:2::77"), Some(source("2001:db8:1:2::1")));
        for bad in ["", "10.1.2", "10.1.2.3/24", "10.1.2.3/64", "host.example", "2001:db8::/48"] {
            assert_eq!(Source::parse(bad), None, "{bad}");
        }
        let shown = source("2001:db8:1:2::1").to_string();
        assert_eq!(Source::parse(&shown), Some(source("2001:db8:1:2::1")), "what /admin/state shows parses back");
    }

    #[test]
    fn classes_and_buckets() {
        let class = |text| source(text).class();
        assert_eq!(class("127.0.0.9"), SourceClass::Loopback);
        assert_eq!(class("::1"), SourceClass::Loopback);
        for private in ["10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "169.254.1.1", "fd00::1", "fe80::1"] {
            assert_eq!(class(private), SourceClass::Private, "{private}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "2001:db8::1"] {
            assert_eq!(class(public), SourceClass::Public, "{public}");
        }
        assert_eq!(source("203.0.113.77").bucket(), "203.0.113.0/24");
        assert_eq!(source("2001:db8:1:2::1").bucket(), "2001:db8:1::/48");
        assert_eq!(source("2001:db8:1:ffff::1").bucket(), "2001:db8:1::/48");
    }
}
