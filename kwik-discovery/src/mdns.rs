//! Candidates announced with multicast DNS on the local link.
//!
//! Secondaries on one LAN register a service of type `_kwik._udp.local.`
//! (DNS-SD, RFC 6763) and the primary browses for it: nothing to configure,
//! which suits a lab, a rack or a home network, and nothing beyond the
//! link, which is why DNS SRV exists for everything else.
//!
//! A browse has no natural end (announcements keep coming), so it lasts a
//! fixed time and returns what was resolved by then; services withdrawn
//! during the browse are dropped. Each resolved service gives one candidate
//! per address, at the service's port. The name its certificate must be
//! valid for is the TXT property `server_name` when present, else the
//! service's host name without `.local.`; the TXT property `region`, if
//! any, becomes the region. Anyone on the link can announce anything, so the
//! number of services kept and of candidates returned is bounded (services
//! beyond the limit that arrive later are ignored), and what is returned is
//! only a candidate: the client still verifies the secondary's certificate
//! and applies its own path policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mdns_sd::{ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent};

use crate::{
    Candidate, DEFAULT_MAX_CANDIDATES, DiscoverFuture, Discovery, DiscoveryError, normalize,
};

/// The service type kwik secondaries announce by default.
pub const DEFAULT_MDNS_SERVICE: &str = "_kwik._udp.local.";
/// Default duration of one browse.
pub const DEFAULT_BROWSE_TIME: Duration = Duration::from_secs(2);
/// The standard mDNS port.
const MDNS_PORT: u16 = 5353;
/// Longest TXT value used (server name or region).
const MAX_TXT_VALUE: usize = 253;

/// How many more services than it returns a browse holds before choosing.
const GATHER_FACTOR: usize = 4;

/// Candidates from an mDNS browse of one service type.
///
/// Every [`discover`](Discovery::discover) starts an mDNS daemon (a thread
/// of the mdns-sd crate), browses for the configured time and stops it.
/// Needs a tokio runtime with timers.
#[derive(Debug, Clone)]
pub struct Mdns {
    service_type: String,
    browse_for: Duration,
    max: usize,
    port: u16,
}

impl Mdns {
    /// Browse for `service_type`, which must end with `._udp.local.` or
    /// `._tcp.local.` (the final dot may be left out), for
    /// [`DEFAULT_BROWSE_TIME`], keeping at most [`DEFAULT_MAX_CANDIDATES`].
    pub fn new(service_type: &str) -> Result<Self, DiscoveryError> {
        Ok(Self {
            service_type: service_type_fqdn(service_type)?,
            browse_for: DEFAULT_BROWSE_TIME,
            max: DEFAULT_MAX_CANDIDATES,
            port: MDNS_PORT,
        })
    }

    /// How long one browse lasts.
    pub fn browse_for(mut self, duration: Duration) -> Self {
        self.browse_for = duration;
        self
    }

    /// Keeps at most `max` services and returns at most `max` candidates.
    pub fn max_candidates(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Uses this UDP port instead of mDNS's 5353 (announcer and browser
    /// must agree; for tests and private deployments).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The service type browsed for, with its final dot.
    pub fn service_type(&self) -> &str {
        &self.service_type
    }

    async fn browse(&self) -> Result<Vec<Candidate>, DiscoveryError> {
        let unavailable = |e: mdns_sd::Error| DiscoveryError::MdnsUnavailable {
            message: e.to_string(),
        };
        let daemon = ServiceDaemon::new_with_port(self.port).map_err(unavailable)?;
        let result = self.collect(&daemon).await;
        // The daemon's thread ends on its own once told; nothing to wait for.
        let _ = daemon.shutdown();
        result
    }

    async fn collect(&self, daemon: &ServiceDaemon) -> Result<Vec<Candidate>, DiscoveryError> {
        let events =
            daemon
                .browse(&self.service_type)
                .map_err(|e| DiscoveryError::MdnsUnavailable {
                    message: e.to_string(),
                })?;
        // Full name → its candidates; ordered, so the result does not depend
        // on the order of announcements.
        let mut services: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + self.browse_for;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.recv_async()).await {
                Ok(Ok(event)) => event,
                // The daemon stopped sending: nothing more will come.
                Ok(Err(_)) => break,
                Err(_) => break,
            };
            match event {
                ServiceEvent::ServiceResolved(service) => {
                    // Gather beyond `max` (still bounded) before choosing, so
                    // that whoever announces first does not decide the list.
                    let room = self.max.saturating_mul(GATHER_FACTOR);
                    if services.len() >= room && !services.contains_key(&service.fullname) {
                        continue;
                    }
                    let candidates = self.candidates(&service);
                    services.insert(service.fullname.clone(), candidates);
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    services.remove(&fullname);
                }
                _ => {}
            }
        }
        let _ = daemon.stop_browse(&self.service_type);
        let mut candidates: Vec<Candidate> = services.into_values().flatten().collect();
        normalize(&mut candidates, self.max);
        Ok(candidates)
    }

    /// One candidate per address of `service` (at most `max`).
    fn candidates(&self, service: &ResolvedService) -> Vec<Candidate> {
        if service.port == 0 {
            return Vec::new();
        }
        let txt = |key: &str| {
            service
                .get_property_val_str(key)
                .filter(|v| !v.is_empty() && v.len() <= MAX_TXT_VALUE)
                .filter(|v| v.chars().all(|c| c.is_ascii_graphic()))
                .map(str::to_string)
        };
        let server_name = txt("server_name").unwrap_or_else(|| host_name(&service.host));
        if server_name.is_empty() {
            return Vec::new();
        }
        let region = txt("region");
        let mut addresses: Vec<SocketAddr> = service
            .addresses
            .iter()
            .map(|ip| socket_addr(ip, service.port))
            .collect();
        addresses.sort();
        addresses.truncate(self.max);
        addresses
            .into_iter()
            .map(|address| {
                let candidate = Candidate::new(address, server_name.clone());
                match &region {
                    Some(region) => candidate.with_region(region.clone()),
                    None => candidate,
                }
            })
            .collect()
    }
}

impl Discovery for Mdns {
    fn discover(&self) -> DiscoverFuture<'_> {
        Box::pin(self.browse())
    }

    fn describe(&self) -> String {
        format!("mdns:{}", self.service_type)
    }
}

/// `service_type` with its final dot, checked to be a DNS-SD service type
/// on `.local.`.
fn service_type_fqdn(service_type: &str) -> Result<String, DiscoveryError> {
    let mut fqdn = service_type.to_string();
    if !fqdn.ends_with('.') {
        fqdn.push('.');
    }
    let suffix_ok = fqdn.ends_with("._udp.local.") || fqdn.ends_with("._tcp.local.");
    let labels_ok = fqdn
        .trim_end_matches('.')
        .split('.')
        .all(|label| !label.is_empty() && label.len() <= 63);
    if !suffix_ok || !labels_ok || !fqdn.starts_with('_') || fqdn.len() > 253 {
        return Err(DiscoveryError::BadName {
            name: service_type.to_string(),
            message: "expected an mDNS service type such as _kwik._udp.local.".into(),
        });
    }
    Ok(fqdn)
}

/// `host.local.` → `host`.
fn host_name(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.strip_suffix(".local").unwrap_or(host).to_string()
}

/// An address of a service; IPv6 link-local addresses keep their interface.
fn socket_addr(ip: &ScopedIp, port: u16) -> SocketAddr {
    match (ip, ip.to_ip_addr()) {
        (ScopedIp::V6(v6), IpAddr::V6(addr)) if addr.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(addr, port, 0, v6.scope_id().index))
        }
        (_, addr) => SocketAddr::new(addr, port),
    }
}
