//! Servers a primary could add as secondary paths.
//!
//! Where candidates come from — a static list, DNS SRV records, mDNS, a
//! client's proposal — is the business of the layers above (kwik-discovery,
//! the application); kwik-core only needs their common shape, so that the
//! automatic-scaling policy and the approval of client-proposed paths can
//! choose among them without doing any I/O.

use std::net::{IpAddr, SocketAddr};

/// One server that could serve a session as a secondary path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    /// Where its kwik endpoint listens.
    pub address: SocketAddr,
    /// The name its certificate must be valid for.
    pub server_name: String,
    /// Preference class as in DNS SRV: lower is tried first (0 by default).
    pub priority: u16,
    /// Relative share among candidates of the same priority, as in DNS SRV
    /// (0: no preference).
    pub weight: u16,
    /// Where it runs, if known (a free-form label such as `eu-west`).
    pub region: Option<String>,
}

impl Candidate {
    /// A candidate with no preference and no region.
    pub fn new(address: SocketAddr, server_name: impl Into<String>) -> Self {
        Self {
            address,
            server_name: server_name.into(),
            priority: 0,
            weight: 0,
            region: None,
        }
    }

    /// The same candidate with an SRV-style priority and weight.
    pub fn with_preference(mut self, priority: u16, weight: u16) -> Self {
        self.priority = priority;
        self.weight = weight;
        self
    }

    /// The same candidate with a region label.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}

/// Puts `candidates` in SRV-style preference order — lower priority first,
/// then heavier weight, then address, server name and region, so that the
/// order never depends on the input's — after dropping those no client can
/// dial ([`undialable`]); keeps the first candidate of each address and at
/// most `max` of them.
///
/// One rule for every list of servers: what a discovery source returns and
/// the pool automatic scaling chooses from.
pub fn normalize_candidates(candidates: &mut Vec<Candidate>, max: usize) {
    candidates.retain(|c| undialable(c.address).is_none());
    candidates.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.weight.cmp(&a.weight))
            .then(a.address.cmp(&b.address))
            .then(a.server_name.cmp(&b.server_name))
            .then(a.region.cmp(&b.region))
    });
    let mut seen = std::collections::BTreeSet::new();
    candidates.retain(|c| seen.insert(c.address));
    candidates.truncate(max);
}

/// Why `address` cannot be a path's server: no client can dial it (port 0,
/// the unspecified address) or it would reach more than one machine
/// (multicast, broadcast) — IPv4-mapped IPv6 forms judged as their IPv4
/// address. `None` if it can be.
///
/// Every number that names a server is checked with it: a client's
/// proposal, an AddPath's address, what discovery returns.
pub fn undialable(address: SocketAddr) -> Option<&'static str> {
    if address.port() == 0 {
        return Some("port 0");
    }
    let ip = match address.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Some("the broadcast address");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undialable_addresses_are_named_in_every_form() {
        for bad in [
            "10.0.0.7:0",
            "0.0.0.0:4433",
            "[::]:4433",
            "224.0.0.1:4433",
            "[ff02::1]:4433",
            "255.255.255.255:4433",
            "[::ffff:0.0.0.0]:4433",
            "[::ffff:224.0.0.1]:4433",
            "[::ffff:255.255.255.255]:4433",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            assert!(undialable(a).is_some(), "{bad}");
        }
        for good in ["10.0.0.7:4433", "[::1]:4433", "[::ffff:10.0.0.7]:4433"] {
            assert_eq!(undialable(good.parse().unwrap()), None, "{good}");
        }
    }
}
