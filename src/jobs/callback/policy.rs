//! Which callback URLs courier may call: the defence against server-side request forgery.
//!
//! A client names the URL, courier makes the request from inside the network. Without a
//! policy, `http://169.254.169.254/…` reads cloud credentials and `http://127.0.0.1:6379`
//! talks to Redis. So a URL must be absolute `http`/`https` without credentials, and *every*
//! address its host resolves to must be publicly routable: one private answer among public
//! ones is enough to refuse, since the connector might pick it. Internal receivers are
//! allowed explicitly by host name or CIDR in `COURIER_CALLBACK_ALLOW`.
//!
//! The check returns a [`Target`]: the URL plus the addresses that passed, so delivery can
//! connect to exactly those and not to whatever a second DNS lookup says (DNS rebinding).
//! Which addresses count as special-use is decided in the `ranges` module.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

pub use super::ranges::SpecialUse;
use super::ranges::{embedded_v4, special_use, strip_brackets, Cidr};

/// The variable that holds the allow-list.
pub const ALLOW_ENV: &str = "COURIER_CALLBACK_ALLOW";
/// The longest callback URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// How long resolving a callback host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What kind of refusal it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not an absolute http(s) URL, too long, or with credentials.
    Invalid,
    /// The host did not resolve (possibly transient).
    Unresolvable,
    /// The host is or resolves to a special-use address that is not allowed.
    Forbidden(SpecialUse),
}

impl RefusalKind {
    /// A label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Invalid => "invalid",
            RefusalKind::Unresolvable => "unresolvable",
            RefusalKind::Forbidden(_) => "forbidden",
        }
    }
}

/// A callback URL the policy refuses, with a message fit for a 400 answer: it names the host
/// and, for IP literals, the address, never the path, query or anything resolved from a name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    kind: RefusalKind,
    message: String,
    address: Option<IpAddr>,
}

impl Refused {
    fn invalid(message: impl Into<String>) -> Refused {
        Refused { kind: RefusalKind::Invalid, message: message.into(), address: None }
    }

    /// What kind of refusal it is.
    pub fn kind(&self) -> RefusalKind {
        self.kind
    }

    /// The address that was refused, for operators' logs (a host's DNS answer is not shown to
    /// clients).
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }
}

/// A URL that passed the policy and the addresses it was checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub(super) url: Url,
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) ip_literal: bool,
}

impl Target {
    /// The validated URL (fragment removed).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Every address the host resolved to; all of them passed.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// The callback URL policy: special-use addresses are refused unless allowed by host name or
/// CIDR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    hosts: Vec<String>,
    blocks: Vec<Cidr>,
}

impl CallbackPolicy {
    /// Parses `COURIER_CALLBACK_ALLOW`: comma-separated host names, IP addresses and CIDRs
    /// (`127.0.0.1, 10.0.0.0/8, hooks.internal, ::1`). An empty string allows nothing
    /// special. Every bad entry is reported, separated by `; `.
    pub fn parse(allow: &str) -> Result<CallbackPolicy, String> {
        let mut policy = CallbackPolicy::default();
        let mut errors = Vec::new();
        for entry in allow.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_entry(entry) {
                Ok(Entry::Block(block)) => policy.blocks.push(block),
                Ok(Entry::Host(host)) => policy.hosts.push(host),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Checks `url` and resolves its host: `Ok` with what delivery may connect to, or why not.
    pub async fn check(&self, url: &str) -> Result<Target, Refused> {
        let url = parse_url(url)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let (addrs, name) = match url.host() {
            Some(Host::Ipv4(ip)) => (vec![SocketAddr::new(IpAddr::V4(ip), port)], None),
            Some(Host::Ipv6(ip)) => (vec![SocketAddr::new(IpAddr::V6(ip), port)], None),
            Some(Host::Domain(domain)) => (resolve(domain, port).await?, Some(domain)),
            None => return Err(Refused::invalid("callback_url must have a host")),
        };
        let ip_literal = name.is_none();
        let host_allowed = name.is_some_and(|n| self.hosts.iter().any(|h| h == n.trim_end_matches('.')));
        if !host_allowed {
            for addr in &addrs {
                let ip = addr.ip();
                let Some(kind) = special_use(ip).filter(|_| !self.allows(ip)) else { continue };
                let message = match name {
                    None => format!("callback_url resolves to {ip}, {}; allow it with {ALLOW_ENV}", kind.describe()),
                    Some(name) => format!(
                        "callback_url host {name} resolves to {}; allow the host or its address with {ALLOW_ENV}",
                        kind.describe()
                    ),
                };
                return Err(Refused { kind: RefusalKind::Forbidden(kind), message, address: Some(ip) });
            }
        }
        Ok(Target { url, addrs, ip_literal })
    }

    /// Whether an allow-list block contains `ip` (or the IPv4 address it embeds).
    fn allows(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.blocks.iter().any(|b| b.contains(ip) || embedded.is_some_and(|e| b.contains(e)))
    }
}

impl fmt::Display for CallbackPolicy {
    /// The allow-list in canonical form, for the startup log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let blocks = self.blocks.iter().map(|b| format!("{}/{}", b.addr, b.prefix));
        let entries: Vec<String> = self.hosts.iter().cloned().chain(blocks).collect();
        f.write_str(&entries.join(","))
    }
}

enum Entry {
    Host(String),
    Block(Cidr),
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    if entry.contains('/') {
        return Cidr::parse(entry).map(Entry::Block);
    }
    if let Ok(ip) = strip_brackets(entry).parse::<IpAddr>() {
        return Ok(Entry::Block(Cidr::host(ip)));
    }
    if entry.contains('*') {
        return Err(format!("`{entry}`: wildcards are not supported, list each host"));
    }
    // The URL host parser normalises exactly as callback URLs are normalised (case, IDNA,
    // numeric IPv4 forms such as 0x7f.1), so an entry matches the URLs it names.
    match Host::parse(entry) {
        Ok(Host::Domain(name)) => {
            // One trailing dot (the root) is fine; an empty label (`a..b`, `127..`) is not a
            // host name, and trimming it away would name another host (`127` is an address).
            let name = name.strip_suffix('.').unwrap_or(&name);
            if name.contains('*') {
                // Spelled with percent escapes (`%2A.internal`) it passed the check above.
                return Err(format!("`{entry}`: wildcards are not supported, list each host"));
            }
            // An empty label, or a comma spelled `%2C` (the list's separator: the entry would not
            // read back as itself from the printed list).
            if name.split('.').any(str::is_empty) || name.contains(',') {
                return Err(format!("`{entry}` is not a host name, IP address or CIDR"));
            }
            Ok(Entry::Host(name.to_owned()))
        }
        Ok(Host::Ipv4(ip)) => Ok(Entry::Block(Cidr::host(IpAddr::V4(ip)))),
        Ok(Host::Ipv6(ip)) => Ok(Entry::Block(Cidr::host(IpAddr::V6(ip)))),
        Err(_) => Err(format!("`{entry}` is not a host name, IP address or CIDR")),
    }
}

fn parse_url(text: &str) -> Result<Url, Refused> {
    if text.len() > MAX_URL_LEN {
        return Err(Refused::invalid(format!("callback_url is longer than {MAX_URL_LEN} characters")));
    }
    let mut url =
        Url::parse(text).map_err(|_| Refused::invalid("callback_url must be an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::invalid(format!("callback_url must use http or https, not {}", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::invalid("callback_url must not contain credentials"));
    }
    url.set_fragment(None);
    Ok(url)
}

async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
    let unresolvable = |why: &str| Refused {
        kind: RefusalKind::Unresolvable,
        message: format!("callback_url host {name} {why}"),
        address: None,
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| unresolvable("could not be resolved in time"))?
        .map_err(|_| unresolvable("could not be resolved"))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(unresolvable("has no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
