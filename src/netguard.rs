//! Where forewarn may send a request on a customer's behalf. A customer's webhook contact is a URL
//! someone else chose: without a check it could point forewarn at its own network (cloud
//! metadata, the broker's admin port, the API itself). The rule: `https`, no credentials in the
//! URL, and a host whose every address is public — unless the host or its address is on the
//! allow-list (`[notify.webhook] allow`), which also permits plain `http`.
//!
//! Two checks use it: [`AddressPolicy::check_url`] without I/O when a contact is written (API,
//! fleet file), and [`GuardedResolver`] at delivery: reqwest asks it to resolve the host, it
//! drops every address the policy refuses and fails if none is left, and reqwest connects to
//! exactly what it returned — no second lookup a DNS rebinding could answer differently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a URL is not a place forewarn will send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("not an absolute http(s) URL")]
    NotUrl,
    #[error("must be https (plain http only to an allow-listed host)")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("{0} is a private, loopback, link-local or reserved address (not on the allow-list)")]
    Internal(IpAddr),
    #[error("{host} resolves only to internal addresses (not on the allow-list)")]
    OnlyInternal { host: String },
    #[error("cannot resolve {host}")]
    Unresolved { host: String },
    #[error("allow-list entry {0:?} is neither a host name, an address nor a network")]
    BadEntry(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Host(String),
    Net(IpAddr, u8),
}

/// The allow-list and the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Entry>,
}

impl AddressPolicy {
    /// From allow-list entries: host names (`hooks.internal.example`), addresses (`127.0.0.1`,
    /// `::1`) or networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn new(entries: &[String]) -> Result<AddressPolicy, GuardError> {
        let mut allow = Vec::new();
        for e in entries {
            let t = e.trim();
            let bad = || GuardError::BadEntry(e.clone());
            let entry = if let Some((ip, bits)) = t.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let bits: u8 = bits.parse().map_err(|_| bad())?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if bits > max {
                    return Err(bad());
                }
                Entry::Net(ip, bits)
            } else if let Ok(ip) = t.trim_matches(['[', ']']).parse::<IpAddr>() {
                Entry::Net(ip, if ip.is_ipv4() { 32 } else { 128 })
            } else if !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                Entry::Host(t.to_ascii_lowercase())
            } else {
                return Err(bad());
            };
            allow.push(entry);
        }
        Ok(AddressPolicy { allow })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allow
            .iter()
            .any(|e| matches!(e, Entry::Host(h) if *h == host))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|e| match e {
            Entry::Net(net, bits) => in_net(ip, canonical(*net), *bits),
            Entry::Host(_) => false,
        })
    }

    /// Whether forewarn may connect to `ip` for a request to `host`.
    pub fn address_ok(&self, host: &str, ip: IpAddr) -> bool {
        self.host_allowed(host) || self.ip_allowed(ip) || is_public(ip)
    }

    /// The checks that need no lookup: scheme, credentials, a literal internal address.
    /// Returns the host.
    pub fn check_url(&self, url: &str) -> Result<String, GuardError> {
        let u = reqwest::Url::parse(url).map_err(|_| GuardError::NotUrl)?;
        // The URL parser has already normalised the host (IPv4 in any notation becomes dotted
        // decimal, IPv6 is bracketed).
        let host = u
            .host_str()
            .ok_or(GuardError::NotUrl)?
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let literal: Option<IpAddr> = host.parse().ok();
        let allowed = self.host_allowed(&host) || literal.is_some_and(|ip| self.ip_allowed(ip));
        match u.scheme() {
            "https" => {}
            "http" if allowed => {}
            "http" => return Err(GuardError::NotHttps),
            _ => return Err(GuardError::NotUrl),
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(GuardError::Credentials);
        }
        if let Some(ip) = literal {
            if !self.address_ok(&host, ip) {
                return Err(GuardError::Internal(ip));
            }
        }
        // `localhost` and friends name loopback without a lookup.
        if !allowed && (host == "localhost" || host.ends_with(".localhost")) {
            return Err(GuardError::Internal(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        Ok(host)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is an ordinary internet address: not loopback, private, link-local, shared
/// (CGNAT), unspecified, broadcast, multicast, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (maps onto IPv4, possibly internal)
        || (s[0] == 0x2002) // 6to4 (likewise)
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// A reqwest DNS resolver that returns only the addresses the policy allows for the host.
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| GuardError::Unresolved { host: host.clone() })?
                .collect();
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.address_ok(&host, a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(Box::new(GuardError::OnlyInternal { host }) as _);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allow_listed() {
        let p = policy(&[]);
        for bad in [
            "http://hooks.example/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:192.168.0.1]/x",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://localhost/x",
            "https://user:pw@hooks.example/x",
            "ftp://hooks.example/x",
            "not a url",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            p.check_url("https://Hooks.Example:8443/x?y=1").unwrap(),
            "hooks.example"
        );
        assert!(p.check_url("https://93.184.215.14/x").is_ok());
        let p = policy(&["127.0.0.1", "10.0.0.0/8", "hooks.internal"]);
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("https://10.200.0.1/hook").is_ok());
        assert!(p.check_url("http://hooks.internal/hook").is_ok());
        assert!(p.check_url("https://192.168.1.1/hook").is_err());
        assert!(AddressPolicy::new(&["10.0.0.0/40".into()]).is_err());
        assert!(AddressPolicy::new(&["a b".into()]).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver::new(Arc::new(policy(&[])));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(strict.resolve(name).await.is_err());
        let open = GuardedResolver::new(Arc::new(policy(&["127.0.0.0/8", "::1"])));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = open.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
