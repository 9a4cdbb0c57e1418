//! Candidates from DNS SRV records.
//!
//! The convention is `_kwik._udp.<domain>` (RFC 2782 naming: kwik runs over
//! QUIC, over UDP). Each SRV record names a target host, a port, a priority
//! and a weight; each address of the target becomes one candidate whose
//! server name is the target (the name its certificate must be valid for).
//! Operators already know how to run DNS, it carries preferences, and a
//! zone edit changes the fleet without touching the primaries.
//!
//! Addresses come from the answer's additional section when the server
//! put them there (saving a round trip), otherwise from A and AAAA lookups
//! of the target. A name that does not exist, or has no SRV records, gives
//! an empty list: "no secondaries" is a valid answer. Everything else — a
//! server failure, no name server reachable, the deadline passing — is an
//! error, including in a target's address lookup, because a half-answered
//! discovery would silently shrink the fleet.
//!
//! The answer is written by whoever controls the zone or the path to the
//! name server, so the work it can cause is bounded: at most
//! `max_candidates` distinct targets are looked up (the best by priority
//! and weight), at most `max_candidates` candidates are returned, and the
//! whole discovery, every lookup included, has one deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, Resolver, TokioResolver};

use crate::{
    Candidate, DEFAULT_MAX_CANDIDATES, DiscoverFuture, Discovery, DiscoveryError, normalize,
};

/// Default deadline of one SRV discovery, every lookup included.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Candidates from the SRV records of one name, such as
/// `_kwik._udp.example.com`.
///
/// A new resolver is built for every [`discover`](Discovery::discover), so
/// each call sees the zone as it is then (no cache between calls). Needs a
/// tokio runtime with timers.
#[derive(Debug, Clone)]
pub struct DnsSrv {
    name: Name,
    name_server: Option<SocketAddr>,
    timeout: Duration,
    max: usize,
}

impl DnsSrv {
    /// SRV discovery of `name`, through the system's resolver configuration
    /// (`/etc/resolv.conf`), with a [`DEFAULT_DNS_TIMEOUT`] deadline and at
    /// most [`DEFAULT_MAX_CANDIDATES`] candidates. `name` is taken as fully
    /// qualified (no search domains are appended), with or without the
    /// final dot.
    pub fn new(name: &str) -> Result<Self, DiscoveryError> {
        let bad = |message: String| DiscoveryError::BadName {
            name: name.to_string(),
            message,
        };
        if name.is_empty() || name == "." {
            return Err(bad("empty name".into()));
        }
        let mut parsed = Name::from_ascii(name).map_err(|e| bad(e.to_string()))?;
        parsed.set_fqdn(true);
        Ok(Self {
            name: parsed,
            name_server: None,
            timeout: DEFAULT_DNS_TIMEOUT,
            max: DEFAULT_MAX_CANDIDATES,
        })
    }

    /// Asks this name server (plain DNS: UDP, and TCP when an answer is
    /// truncated) instead of the system's, and ignores the hosts file.
    pub fn name_server(mut self, addr: SocketAddr) -> Self {
        self.name_server = Some(addr);
        self
    }

    /// The deadline of one discovery, every lookup included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Returns at most `max` candidates, and looks up at most `max` targets.
    pub fn max_candidates(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The name whose SRV records are looked up, without the final dot.
    pub fn name(&self) -> String {
        display(&self.name)
    }

    fn resolver(&self) -> Result<TokioResolver, DiscoveryError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = match self.name_server {
            Some(addr) => {
                let mut config = ResolverConfig::new();
                // UDP, and TCP for answers too large for a datagram.
                for protocol in [Protocol::Udp, Protocol::Tcp] {
                    config.add_name_server(NameServerConfig::new(addr, protocol));
                }
                let mut builder = Resolver::builder_with_config(config, provider);
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => Resolver::builder(provider).map_err(|e| DiscoveryError::Dns {
                name: self.name(),
                message: format!("no usable system resolver configuration: {e}"),
            })?,
        };
        let options = builder.options_mut();
        // Two tries per query within the deadline, so one lost datagram
        // does not fail the discovery; the deadline itself is enforced
        // around the whole lookup.
        options.timeout = (self.timeout / 2).max(Duration::from_millis(50));
        options.attempts = 2;
        options.edns0 = true;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(builder.build())
    }

    async fn lookup(&self) -> Result<Vec<Candidate>, DiscoveryError> {
        let resolver = self.resolver()?;
        let answer = match resolver.srv_lookup(self.name.clone()).await {
            Ok(answer) => answer,
            Err(e) => return self.absent_or_error(&self.name, e),
        };
        // (priority, weight, port, target): usable records only — port 0 or
        // the root target (".") mean "no service here" (RFC 2782).
        let mut records: Vec<(u16, u16, u16, Name)> = answer
            .iter()
            .filter(|srv| srv.port() != 0 && !srv.target().is_root())
            .map(|srv| {
                (
                    srv.priority(),
                    srv.weight(),
                    srv.port(),
                    srv.target().clone(),
                )
            })
            .collect();
        records.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.1), a.2, key(&a.3)).cmp(&(
                b.0,
                std::cmp::Reverse(b.1),
                b.2,
                key(&b.3),
            ))
        });
        // The best `max` distinct targets, and what the answer already says
        // of their addresses.
        let mut targets: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        records.retain(|record| {
            let k = key(&record.3);
            if targets.contains_key(&k) {
                return true;
            }
            if targets.len() == self.max {
                return false;
            }
            targets.insert(k, Vec::new());
            true
        });
        for record in answer.as_lookup().records() {
            let ip = match record.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            if let Some(ips) = targets.get_mut(&key(record.name())) {
                if ips.len() < self.max && !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        for record in &records {
            let k = key(&record.3);
            if targets.get(&k).is_some_and(|ips| ips.is_empty()) {
                let ips = self.addresses(&resolver, &record.3).await?;
                targets.insert(k, ips);
            }
        }
        let mut seen = BTreeSet::new();
        let mut candidates = Vec::new();
        'records: for (priority, weight, port, target) in &records {
            for ip in &targets[&key(target)] {
                let address = SocketAddr::new(*ip, *port);
                if !seen.insert(address) {
                    continue;
                }
                if candidates.len() == self.max {
                    break 'records;
                }
                candidates.push(
                    Candidate::new(address, display(target)).with_preference(*priority, *weight),
                );
            }
        }
        normalize(&mut candidates, self.max);
        Ok(candidates)
    }

    /// A and AAAA addresses of `target`, at most `max`, sorted; none if the
    /// target has none.
    async fn addresses(
        &self,
        resolver: &TokioResolver,
        target: &Name,
    ) -> Result<Vec<IpAddr>, DiscoveryError> {
        match resolver.lookup_ip(target.clone()).await {
            Ok(found) => {
                let mut ips: Vec<IpAddr> = found.iter().take(self.max).collect();
                ips.sort();
                ips.dedup();
                Ok(ips)
            }
            Err(e) => self.absent_or_error(target, e),
        }
    }

    /// An empty answer for "no such name" and "no such records", the typed
    /// error otherwise.
    fn absent_or_error<T: Default>(
        &self,
        name: &Name,
        e: ResolveError,
    ) -> Result<T, DiscoveryError> {
        let name = display(name);
        match e.proto().map(|p| p.kind()) {
            Some(ProtoErrorKind::NoRecordsFound { response_code, .. })
                if matches!(
                    *response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Ok(T::default())
            }
            Some(ProtoErrorKind::Timeout) => Err(DiscoveryError::Timeout {
                name,
                after: self.timeout,
            }),
            _ => Err(DiscoveryError::Dns {
                name,
                message: e.to_string(),
            }),
        }
    }
}

impl Discovery for DnsSrv {
    fn discover(&self) -> DiscoverFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.lookup()).await {
                Ok(result) => result,
                Err(_) => Err(DiscoveryError::Timeout {
                    name: self.name(),
                    after: self.timeout,
                }),
            }
        })
    }

    fn describe(&self) -> String {
        match self.name_server {
            Some(server) => format!("srv:{} (name server {server})", self.name()),
            None => format!("srv:{}", self.name()),
        }
    }
}

/// A name as text, ASCII (so usable as a TLS server name), no final dot.
fn display(name: &Name) -> String {
    let text = name.to_ascii();
    match text.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => stripped.to_string(),
        _ => text,
    }
}

/// DNS names compare without regard to ASCII case.
fn key(name: &Name) -> String {
    display(name).to_ascii_lowercase()
}
