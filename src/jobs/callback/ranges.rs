//! Special-use address blocks (IANA's IPv4 and IPv6 special-purpose registries) and the small
//! CIDR type the allow-list shares with them.
//!
//! Only blocks a gateway must never reach by accident are listed: anything not globally
//! routable or whose meaning is "this host / this network / someone else's private network".
//! IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4) reach that IPv4 host, so they
//! are judged by it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address block: an address and a prefix length, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cidr {
    pub(super) addr: IpAddr,
    pub(super) prefix: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix }
    }

    const fn v6(segments: [u16; 3], prefix: u8) -> Cidr {
        let [a, b, c] = segments;
        Cidr { addr: IpAddr::V6(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)), prefix }
    }

    /// The whole address (a /32 or /128).
    pub(super) fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    /// Parses `addr/prefix`, refusing host bits so a typo cannot silently widen the block.
    pub(super) fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text.split_once('/').ok_or_else(|| format!("`{text}` is not a CIDR"))?;
        let addr: IpAddr =
            strip_brackets(addr).parse().map_err(|_| format!("`{text}`: `{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{text}`: the prefix length must be a number from 0 to {max}"))?;
        let block = Cidr { addr: network(addr, prefix), prefix };
        if block.addr != addr {
            return Err(format!("`{text}` has host bits set (did you mean {}/{prefix}?)", block.addr));
        }
        Ok(block)
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => network(ip, self.prefix) == self.addr,
            _ => false,
        }
    }
}

/// `ip` with every bit after the first `prefix` cleared.
fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

pub(super) fn strip_brackets(text: &str) -> &str {
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text)
}

/// Why an address is not publicly routable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialUse {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fec0::/10, 64:ff9b:1::/48.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 100.64/10, carrier-grade NAT.
    SharedNat,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// Other blocks reserved by IANA (240/4, 192.0.0/24, 100::/64, 2001::/23, ...).
    Reserved,
}

impl SpecialUse {
    /// A label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialUse::Loopback => "loopback",
            SpecialUse::Private => "private",
            SpecialUse::LinkLocal => "link_local",
            SpecialUse::UniqueLocal => "unique_local",
            SpecialUse::Unspecified => "unspecified",
            SpecialUse::Multicast => "multicast",
            SpecialUse::Broadcast => "broadcast",
            SpecialUse::SharedNat => "shared_nat",
            SpecialUse::Documentation => "documentation",
            SpecialUse::Benchmarking => "benchmarking",
            SpecialUse::Reserved => "reserved",
        }
    }

    /// How a refusal message names it.
    pub(super) fn describe(self) -> &'static str {
        match self {
            SpecialUse::Loopback => "a loopback address",
            SpecialUse::Private => "a private address",
            SpecialUse::LinkLocal => "a link-local address",
            SpecialUse::UniqueLocal => "a unique-local address",
            SpecialUse::Unspecified => "an unspecified address",
            SpecialUse::Multicast => "a multicast address",
            SpecialUse::Broadcast => "the broadcast address",
            SpecialUse::SharedNat => "a shared (carrier-grade NAT) address",
            SpecialUse::Documentation => "a documentation address",
            SpecialUse::Benchmarking => "a benchmarking address",
            SpecialUse::Reserved => "a reserved address",
        }
    }
}

const V4_SPECIAL: &[(Cidr, SpecialUse)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), SpecialUse::Unspecified),
    (Cidr::v4(10, 0, 0, 0, 8), SpecialUse::Private),
    (Cidr::v4(100, 64, 0, 0, 10), SpecialUse::SharedNat),
    (Cidr::v4(127, 0, 0, 0, 8), SpecialUse::Loopback),
    (Cidr::v4(169, 254, 0, 0, 16), SpecialUse::LinkLocal),
    (Cidr::v4(172, 16, 0, 0, 12), SpecialUse::Private),
    (Cidr::v4(192, 0, 0, 0, 24), SpecialUse::Reserved),
    (Cidr::v4(192, 0, 2, 0, 24), SpecialUse::Documentation),
    (Cidr::v4(192, 88, 99, 0, 24), SpecialUse::Reserved),
    (Cidr::v4(192, 168, 0, 0, 16), SpecialUse::Private),
    (Cidr::v4(198, 18, 0, 0, 15), SpecialUse::Benchmarking),
    (Cidr::v4(198, 51, 100, 0, 24), SpecialUse::Documentation),
    (Cidr::v4(203, 0, 113, 0, 24), SpecialUse::Documentation),
    (Cidr::v4(224, 0, 0, 0, 4), SpecialUse::Multicast),
    (Cidr::v4(255, 255, 255, 255, 32), SpecialUse::Broadcast),
    (Cidr::v4(240, 0, 0, 0, 4), SpecialUse::Reserved),
];

const V6_SPECIAL: &[(Cidr, SpecialUse)] = &[
    // IPv4-compatible (deprecated); :: and ::1 are matched before this table.
    (Cidr::v6([0, 0, 0], 96), SpecialUse::Reserved),
    (Cidr::v6([0x64, 0xff9b, 1], 48), SpecialUse::Private),
    (Cidr::v6([0x100, 0, 0], 64), SpecialUse::Reserved),
    (Cidr::v6([0x2001, 2, 0], 48), SpecialUse::Benchmarking),
    (Cidr::v6([0x2001, 0, 0], 23), SpecialUse::Reserved),
    (Cidr::v6([0x2001, 0xdb8, 0], 32), SpecialUse::Documentation),
    (Cidr::v6([0x3fff, 0, 0], 20), SpecialUse::Documentation),
    (Cidr::v6([0xfc00, 0, 0], 7), SpecialUse::UniqueLocal),
    (Cidr::v6([0xfe80, 0, 0], 10), SpecialUse::LinkLocal),
    (Cidr::v6([0xfec0, 0, 0], 10), SpecialUse::Private),
    (Cidr::v6([0xff00, 0, 0], 8), SpecialUse::Multicast),
];

/// Why `ip` must not be called without an allow-list entry, or `None` when it is public.
pub(super) fn special_use(ip: IpAddr) -> Option<SpecialUse> {
    let table = match ip {
        IpAddr::V4(_) => V4_SPECIAL,
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return special_use(IpAddr::V4(v4));
            }
            if v6.is_unspecified() {
                return Some(SpecialUse::Unspecified);
            }
            if v6.is_loopback() {
                return Some(SpecialUse::Loopback);
            }
            V6_SPECIAL
        }
    };
    table.iter().find(|(block, _)| block.contains(ip)).map(|(_, kind)| *kind)
}

/// The IPv4 address an IPv6 address stands for: mapped (::ffff:0:0/96), NAT64
/// (64:ff9b::/96) and 6to4 (2002::/16) forms reach that IPv4 host.
pub(super) fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = v6.to_bits();
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}
