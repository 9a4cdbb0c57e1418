//! Metrics of an endpoint in the OpenMetrics / Prometheus text format, with
//! the [`prometheus_client`] crate ([`Endpoint::register_metrics`]).
//!
//! # Why it is built this way
//!
//! * **Read at scrape time, from the core's own counters.** kwik-core
//!   already keeps everything worth exporting: [`EndpointStats`] for the
//!   door (attempts, Retry, refusals, bans, closes by reason),
//!   [`SessionStats`] per session and a [`PathInfo`] per path. A
//!   [`Collector`] registered with the application's [`Registry`] locks the
//!   endpoint once per scrape, copies those figures out, and encodes them
//!   after the lock is released. Nothing is counted twice, no background
//!   task runs, and an endpoint nobody scrapes pays nothing. kwik-core stays
//!   free of any metrics crate (and deterministic); only this adapter crate
//!   depends on `prometheus-client`.
//! * **Cardinality is bounded, because sessions are a client's choice.** A
//!   server with 10 000 sessions must not answer a scrape with 10 000 × N
//!   series, nor let whoever opens sessions decide how large the metrics
//!   database grows. Endpoint-level series (the door's counters, and
//!   aggregates over every session: sessions by role, open streams,
//!   buffered bytes, paths by state) are always present and their number is
//!   fixed. Series per session and per path are optional and capped
//!   ([`MetricsOptions`]): the sessions with the lowest handles (the oldest)
//!   are listed, each with at most a fixed number of paths, and two gauges
//!   say how many sessions and paths were left out, so a truncated view is
//!   never mistaken for the whole.
//! * **The session label is the local handle**, the number kwik's logs
//!   (`session = N` in tracing spans) use too; the session id the primary
//!   mints is meant to be unguessable and has no place in a metrics store.
//! * **A scrape costs O(sessions) under the lock**: one pass reads every
//!   session's counters and path states for the aggregates (copying each
//!   path's record); per-session series are built from the capped subset
//!   only, after the lock is released.
//!
//! # Metrics
//!
//! Counters end in `_total`, units are part of the names (`_bytes`,
//! `_seconds`).
//!
//! Endpoint, always present (see [`EndpointStats`]):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `kwik_endpoint_sessions` | gauge: server sessions held | |
//! | `kwik_endpoint_half_open` | gauge: handshakes under way | |
//! | `kwik_endpoint_incoming_total` | counter: connection attempts | |
//! | `kwik_endpoint_handshakes_accepted_total` | counter | |
//! | `kwik_endpoint_handshakes_timed_out_total` | counter | |
//! | `kwik_endpoint_retries_sent_total` | counter | |
//! | `kwik_endpoint_refused_total` | counter | `reason` = `banned` \| `limit` |
//! | `kwik_endpoint_bans_active` | gauge | |
//! | `kwik_endpoint_bans_total` | counter | |
//! | `kwik_endpoint_sessions_closed_total` | counter | `reason` = a [`DisconnectKind`](kwik_core::DisconnectKind) label |
//! | `kwik_sessions` | gauge: sessions held, either side | `role` |
//! | `kwik_streams_open` | gauge: logical streams, all sessions | |
//! | `kwik_buffered_bytes` | gauge: bytes buffered for the application | |
//! | `kwik_paths` | gauge: paths of all sessions | `state` |
//! | `kwik_metrics_sessions_omitted` | gauge: sessions without per-session series | |
//! | `kwik_metrics_paths_omitted` | gauge: paths without per-path series | |
//!
//! Per session (labels `session`, `role`), see [`SessionStats`]:
//! `kwik_session_sent_bytes_total`, `kwik_session_received_bytes_total`,
//! `kwik_session_streams_open`, `kwik_session_buffered_bytes`,
//! `kwik_session_lanes_opened_total`, `kwik_session_rtt_seconds`,
//! `kwik_session_cwnd_bytes`, `kwik_session_lost_packets_total`,
//! `kwik_session_datagrams_sent_total` (the last four of the primary
//! connection).
//!
//! Per path (labels `session`, `path`, `address`, `primary`), see
//! [`PathInfo`]: `kwik_path_rtt_seconds`, `kwik_path_sent_bytes_total`,
//! `kwik_path_received_bytes_total`, `kwik_path_lost_packets_total`,
//! `kwik_path_delegated_bytes_total`, `kwik_path_outstanding_bytes` and
//! `kwik_path_delegations_outstanding` (a primary's delegated ranges the
//! client has not acknowledged), `kwik_path_throughput_bytes_per_second`
//! and `kwik_path_cwnd_bytes`, `kwik_path_state` (1, with the path's
//! current state as label `state`) and `kwik_path_health` (1, with its
//! [`PathHealth`](kwik_core::PathHealth) grade as label `health`). On a secondary server a session's one
//! path is its connection to the client, listed as it is in kwik-core's
//! [`PathInfo`]: path 0 with `primary="true"`, whatever path id the primary
//! gave it ([`Session::joined_path`](crate::Session::joined_path)).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};

use kwik_core::{
    EndpointStats, KwikEndpoint, PathFilter, PathId, PathInfo, PathState, Role, SessionHandle,
    SessionStats,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::endpoint::Endpoint;
use crate::runtime::Adapter;
use crate::shared::Shared;

/// What [`Endpoint::register_metrics`] exports beyond the endpoint-level
/// series, which are always present.
///
/// A scrape lists at most `max_sessions` sessions (those with the lowest
/// handles) with nine series each, and for each of them at most
/// `max_paths_per_session` paths with eleven series each: with the
/// defaults, at most 100 × (9 + 8 × 11) = 9 700 series however many sessions the
/// endpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsOptions {
    /// Export series per session and per path (`kwik_session_*`,
    /// `kwik_path_*`). Default: true.
    pub per_session: bool,
    /// Most sessions with series of their own; the others are only counted
    /// (`kwik_metrics_sessions_omitted`). Default: 100.
    pub max_sessions: usize,
    /// Most paths with series of their own in each listed session: those
    /// that have not ended first, then in id order; the others are only
    /// counted (`kwik_metrics_paths_omitted`). Default: 8.
    pub max_paths_per_session: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            per_session: true,
            max_sessions: 100,
            max_paths_per_session: 8,
        }
    }
}

impl MetricsOptions {
    /// Endpoint-level series only: no series per session or path.
    pub fn endpoint_only() -> Self {
        Self {
            per_session: false,
            ..Self::default()
        }
    }
}

impl<A: Adapter> Endpoint<A> {
    /// Registers this endpoint's metrics with `registry`: endpoint counters
    /// and aggregates always, series per session and per path as `options`
    /// allow (see [`MetricsOptions`] and the [module docs](crate::metrics)
    /// for the names).
    ///
    /// Values are read from the endpoint each time the registry is encoded
    /// (e.g. with [`prometheus_client::encoding::text::encode`]), with one
    /// short hold of the endpoint's lock. The registry does not keep the
    /// endpoint alive: once the endpoint and its sessions are gone, it
    /// reports none of its series. Registering one endpoint twice in one
    /// registry repeats every family; give each endpoint its own registry
    /// or a sub-registry with a distinguishing label
    /// ([`Registry::sub_registry_with_label`]).
    ///
    /// ```no_run
    /// # fn demo<A: kwik_async::Adapter>(endpoint: &kwik_async::Endpoint<A>) {
    /// use kwik_async::metrics::MetricsOptions;
    /// use prometheus_client::{encoding::text::encode, registry::Registry};
    ///
    /// let mut registry = Registry::default();
    /// let mut options = MetricsOptions::default();
    /// options.max_sessions = 20;
    /// endpoint.register_metrics(&mut registry, options);
    /// let mut text = String::new();
    /// encode(&mut text, &registry).expect("writing to a String");
    /// assert!(text.ends_with("# EOF\n"));
    /// # }
    /// ```
    pub fn register_metrics(&self, registry: &mut Registry, options: MetricsOptions) {
        registry.register_collector(Box::new(EndpointCollector {
            shared: Arc::downgrade(self.shared()),
            options,
        }));
    }
}

/// The collector [`Endpoint::register_metrics`] registers.
struct EndpointCollector {
    shared: Weak<Shared>,
    options: MetricsOptions,
}

impl fmt::Debug for EndpointCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCollector")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Collector for EndpointCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let snapshot = {
            // A poisoned lock means a panic elsewhere left the endpoint in
            // an unknown state: report nothing rather than panic the scrape.
            let Some(mut state) = shared.lock_unless_poisoned() else {
                return Ok(());
            };
            Snapshot::take(&mut state.endpoint, &self.options)
        };
        snapshot.encode(encoder)
    }
}

/// One session's figures, for per-session and per-path series.
#[derive(Debug)]
struct SessionSample {
    handle: SessionHandle,
    role: Role,
    stats: SessionStats,
    /// The paths listed (capped), in the order they are reported.
    paths: Vec<PathInfo>,
    /// Primary: unacknowledged delegated (ranges, bytes), by path.
    outstanding: BTreeMap<PathId, (u64, u64)>,
}

/// Everything a scrape reports, copied out of the endpoint under its lock.
#[derive(Debug, Default)]
struct Snapshot {
    endpoint: EndpointStats,
    /// Sessions by role, in [`ROLES`] order.
    roles: [u64; ROLES.len()],
    streams_open: u64,
    buffered: u64,
    /// Paths by state, in [`STATES`] order.
    path_states: [u64; STATES.len()],
    sessions: Vec<SessionSample>,
    sessions_omitted: u64,
    paths_omitted: u64,
}

const ROLES: [Role; 4] = [
    Role::Client,
    Role::Primary,
    Role::Secondary,
    Role::Undecided,
];

const STATES: [PathState; 8] = PathState::ALL;

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Primary => "primary",
        Role::Secondary => "secondary",
        Role::Undecided => "undecided",
    }
}

fn state_label(state: PathState) -> &'static str {
    match state {
        PathState::Initializing => "initializing",
        PathState::Handshaking => "handshaking",
        PathState::Active => "active",
        PathState::Degraded => "degraded",
        PathState::Closing => "closing",
        PathState::Dead => "dead",
        PathState::Closed => "closed",
        PathState::Failed => "failed",
    }
}

fn bump<T: PartialEq, const N: usize>(counts: &mut [u64; N], keys: &[T; N], key: &T) {
    if let Some(i) = keys.iter().position(|k| k == key) {
        counts[i] += 1;
    }
}

impl Snapshot {
    /// Reads the endpoint: every session for the aggregates, the first
    /// `max_sessions` (by handle) in detail.
    fn take(endpoint: &mut KwikEndpoint, options: &MetricsOptions) -> Self {
        let mut snap = Snapshot {
            endpoint: endpoint.stats(),
            ..Snapshot::default()
        };
        let detailed = if options.per_session {
            options.max_sessions
        } else {
            0
        };
        let handles: Vec<SessionHandle> = endpoint.sessions().collect();
        for (rank, handle) in handles.into_iter().enumerate() {
            let Some(mut view) = endpoint.session(handle) else {
                continue;
            };
            let role = view.role();
            let stats = view.stats();
            let mut paths = view.paths(PathFilter::All);
            bump(&mut snap.roles, &ROLES, &role);
            snap.streams_open += stats.open_streams;
            snap.buffered += stats.buffered;
            for path in &paths {
                bump(&mut snap.path_states, &STATES, &path.state);
            }
            if rank >= detailed {
                snap.sessions_omitted += 1;
                snap.paths_omitted += paths.len() as u64;
                continue;
            }
            // Paths still in use first, then ended ones; each by id.
            paths.sort_by_key(|p| (p.state.is_final(), p.id));
            let keep = options.max_paths_per_session.min(paths.len());
            snap.paths_omitted += (paths.len() - keep) as u64;
            paths.truncate(keep);
            let mut outstanding = BTreeMap::<PathId, (u64, u64)>::new();
            for delegation in view.outstanding() {
                let entry = outstanding.entry(delegation.path).or_default();
                entry.0 += 1;
                entry.1 += delegation.range.end.saturating_sub(delegation.range.start);
            }
            snap.sessions.push(SessionSample {
                handle,
                role,
                stats,
                paths,
                outstanding,
            });
        }
        snap
    }

    /// Every family of the scrape, in a fixed order.
    fn families(&self) -> Vec<Family> {
        use MetricType::{Counter, Gauge};
        let e = &self.endpoint;
        let one = |name, help, kind, value| Family::new(name, help, None, kind).with(vec![], value);
        let mut out = vec![
            one(
                "kwik_endpoint_sessions",
                "Server sessions held (any phase, until drained).",
                Gauge,
                e.sessions,
            ),
            one(
                "kwik_endpoint_half_open",
                "Handshakes under way (attempts pending and sessions not established).",
                Gauge,
                e.half_open,
            ),
            one(
                "kwik_endpoint_incoming",
                "Connection attempts seen.",
                Counter,
                e.incoming,
            ),
            one(
                "kwik_endpoint_handshakes_accepted",
                "Connection attempts accepted.",
                Counter,
                e.handshakes_accepted,
            ),
            one(
                "kwik_endpoint_handshakes_timed_out",
                "Server sessions closed for not completing the kwik handshake in time.",
                Counter,
                e.handshakes_timed_out,
            ),
            one(
                "kwik_endpoint_retries_sent",
                "QUIC Retry packets sent.",
                Counter,
                e.retries_sent,
            ),
            Family::new(
                "kwik_endpoint_refused",
                "Connection attempts refused, by reason.",
                None,
                Counter,
            )
            .with(vec![("reason", "banned".into())], e.refused_banned)
            .with(vec![("reason", "limit".into())], e.refused_limit),
            one(
                "kwik_endpoint_bans_active",
                "IPs banned now.",
                Gauge,
                e.bans_active,
            ),
            one("kwik_endpoint_bans", "Bans imposed.", Counter, e.bans_total),
        ];
        let mut closed = Family::new(
            "kwik_endpoint_sessions_closed",
            "Sessions (either side) closed, by kind of reason.",
            None,
            Counter,
        );
        for (kind, count) in e.sessions_closed.iter() {
            closed = closed.with(vec![("reason", kind.as_str().into())], count);
        }
        out.push(closed);

        // ----- aggregates over every session -----
        let mut roles = Family::new(
            "kwik_sessions",
            "Sessions held (either side, until drained), by role.",
            None,
            Gauge,
        );
        for (role, count) in ROLES.iter().zip(self.roles) {
            roles = roles.with(vec![("role", role_label(*role).into())], count);
        }
        out.push(roles);
        out.push(one(
            "kwik_streams_open",
            "Live logical streams of all sessions.",
            Gauge,
            self.streams_open,
        ));
        out.push(
            Family::new(
                "kwik_buffered",
                "Payload bytes buffered for the application, all sessions.",
                Some(Unit::Bytes),
                Gauge,
            )
            .with(vec![], self.buffered),
        );
        let mut states = Family::new(
            "kwik_paths",
            "Paths of all sessions, by state.",
            None,
            Gauge,
        );
        for (state, count) in STATES.iter().zip(self.path_states) {
            states = states.with(vec![("state", state_label(*state).into())], count);
        }
        out.push(states);
        out.push(one(
            "kwik_metrics_sessions_omitted",
            "Sessions without per-session series in this scrape (see MetricsOptions).",
            Gauge,
            self.sessions_omitted,
        ));
        out.push(one(
            "kwik_metrics_paths_omitted",
            "Paths without per-path series in this scrape (see MetricsOptions).",
            Gauge,
            self.paths_omitted,
        ));

        // ----- per session (capped) -----
        let session = |name, help, unit, kind, value: fn(&SessionStats) -> Num| {
            let mut family = Family::new(name, help, unit, kind);
            for s in &self.sessions {
                family = family.sample(session_labels(s), value(&s.stats));
            }
            family
        };
        out.extend([
            session(
                "kwik_session_sent",
                "Logical-stream payload bytes written by the application.",
                Some(Unit::Bytes),
                Counter,
                |s| Num::U(s.bytes_sent),
            ),
            session(
                "kwik_session_received",
                "Logical-stream payload bytes received, from every path.",
                Some(Unit::Bytes),
                Counter,
                |s| Num::U(s.bytes_received),
            ),
            session(
                "kwik_session_streams_open",
                "Live logical streams.",
                None,
                Gauge,
                |s| Num::U(s.open_streams),
            ),
            session(
                "kwik_session_buffered",
                "Payload bytes buffered for the application.",
                Some(Unit::Bytes),
                Gauge,
                |s| Num::U(s.buffered),
            ),
            session(
                "kwik_session_lanes_opened",
                "Lanes (real QUIC streams) opened on the sending connection.",
                None,
                Counter,
                |s| Num::U(s.lanes_opened),
            ),
            session(
                "kwik_session_rtt",
                "Smoothed RTT of the primary connection.",
                Some(Unit::Seconds),
                Gauge,
                |s| Num::F(s.rtt_us as f64 / 1e6),
            ),
            session(
                "kwik_session_cwnd",
                "Congestion window of the primary connection.",
                Some(Unit::Bytes),
                Gauge,
                |s| Num::U(s.cwnd),
            ),
            session(
                "kwik_session_lost_packets",
                "Packets of the primary connection declared lost.",
                None,
                Counter,
                |s| Num::U(s.lost_packets),
            ),
            session(
                "kwik_session_datagrams_sent",
                "UDP datagrams sent on the primary connection.",
                None,
                Counter,
                |s| Num::U(s.datagrams_sent),
            ),
        ]);

        // ----- per path (capped) -----
        let path = |name, help, unit, kind, value: fn(&SessionSample, &PathInfo) -> Num| {
            let mut family = Family::new(name, help, unit, kind);
            for s in &self.sessions {
                for p in &s.paths {
                    family = family.sample(path_labels(s, p), value(s, p));
                }
            }
            family
        };
        out.extend([
            path(
                "kwik_path_rtt",
                "Smoothed round-trip time.",
                Some(Unit::Seconds),
                Gauge,
                |_, p| Num::F(p.rtt.as_secs_f64()),
            ),
            path(
                "kwik_path_sent",
                "UDP payload bytes sent on the path.",
                Some(Unit::Bytes),
                Counter,
                |_, p| Num::U(p.bytes_sent),
            ),
            path(
                "kwik_path_received",
                "UDP payload bytes received on the path.",
                Some(Unit::Bytes),
                Counter,
                |_, p| Num::U(p.bytes_received),
            ),
            path(
                "kwik_path_lost_packets",
                "Packets declared lost.",
                None,
                Counter,
                |_, p| Num::U(p.lost_packets),
            ),
            path(
                "kwik_path_delegated",
                "Stream bytes delegated to the path's server (re-delegations included).",
                Some(Unit::Bytes),
                Counter,
                |_, p| Num::U(p.delegated_bytes),
            ),
            path(
                "kwik_path_outstanding",
                "Primary: delegated bytes the client has not acknowledged yet.",
                Some(Unit::Bytes),
                Gauge,
                |s, p| Num::U(s.outstanding.get(&p.id).map_or(0, |o| o.1)),
            ),
            path(
                "kwik_path_delegations_outstanding",
                "Primary: delegated ranges the client has not acknowledged yet.",
                None,
                Gauge,
                |s, p| Num::U(s.outstanding.get(&p.id).map_or(0, |o| o.0)),
            ),
            path(
                "kwik_path_throughput",
                "Bytes per second the path carried lately, both directions (EWMA).",
                Some(Unit::Other("bytes_per_second".into())),
                Gauge,
                |_, p| Num::U(p.throughput),
            ),
            path(
                "kwik_path_cwnd",
                "Congestion window of the path's connection (0 where not held here).",
                Some(Unit::Bytes),
                Gauge,
                |_, p| Num::U(p.cwnd),
            ),
        ]);
        let mut state = Family::new(
            "kwik_path_state",
            "1 for each path, labelled with its current state.",
            None,
            Gauge,
        );
        for s in &self.sessions {
            for p in &s.paths {
                let mut labels = path_labels(s, p);
                labels.push(("state", state_label(p.state).into()));
                state = state.with(labels, 1);
            }
        }
        out.push(state);
        let mut health = Family::new(
            "kwik_path_health",
            "1 for each path, labelled with its health grade.",
            None,
            Gauge,
        );
        for s in &self.sessions {
            for p in &s.paths {
                let mut labels = path_labels(s, p);
                labels.push(("health", p.health.as_str().into()));
                health = health.with(labels, 1);
            }
        }
        out.push(health);
        out
    }

    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

type Labels = Vec<(&'static str, String)>;

fn session_labels(s: &SessionSample) -> Labels {
    vec![
        ("session", s.handle.0.to_string()),
        ("role", role_label(s.role).into()),
    ]
}

fn path_labels(s: &SessionSample, p: &PathInfo) -> Labels {
    vec![
        ("session", s.handle.0.to_string()),
        ("path", p.id.0.to_string()),
        ("address", p.address.to_string()),
        ("primary", if p.primary { "true" } else { "false" }.into()),
    ]
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    F(f64),
}

/// One metric family and its samples, ready to encode.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Num)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: MetricType) -> Self {
        Self {
            name,
            help,
            unit,
            kind,
            samples: Vec::new(),
        }
    }

    fn with(self, labels: Labels, value: u64) -> Self {
        self.sample(labels, Num::U(value))
    }

    fn sample(mut self, labels: Labels, value: Num) -> Self {
        self.samples.push((labels, value));
        self
    }

    /// Writes the descriptor and every sample; a family without samples
    /// (per-session series of an endpoint without sessions) is left out.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                write_value(&mut metric, self.kind, *value)?;
            } else {
                write_value(&mut metric.encode_family(labels)?, self.kind, *value)?;
            }
        }
        Ok(())
    }
}

fn write_value(metric: &mut MetricEncoder<'_>, kind: MetricType, value: Num) -> fmt::Result {
    match (kind, value) {
        (MetricType::Counter, Num::U(v)) => metric.encode_counter::<NoLabelSet, u64, u64>(&v, None),
        (MetricType::Counter, Num::F(v)) => metric.encode_counter::<NoLabelSet, f64, f64>(&v, None),
        (_, Num::U(v)) => metric.encode_gauge(&v),
        (_, Num::F(v)) => metric.encode_gauge(&v),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use kwik_core::EndpointConfig;
    use prometheus_client::encoding::text::encode;

    use super::*;

    /// A sans-IO endpoint holding `n` client sessions (handshakes never
    /// answered: nothing is sent anywhere).
    fn endpoint_with_sessions(n: usize) -> KwikEndpoint {
        let (_, client) = crate::dev::self_signed(["localhost"]);
        let mut endpoint = KwikEndpoint::new(EndpointConfig::new([7; 32]), None, Instant::now());
        let server: SocketAddr = "127.0.0.1:4433".parse().expect("an address");
        let now = endpoint.now();
        for _ in 0..n {
            endpoint
                .connect(now, server, "localhost", &client)
                .expect("connect");
        }
        endpoint
    }

    /// Encodes a fixed snapshot through a registry, as a scrape would.
    #[derive(Debug)]
    struct Fixed(Snapshot);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
            self.0.encode(encoder)
        }
    }

    fn scrape(endpoint: &mut KwikEndpoint, options: &MetricsOptions) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(Snapshot::take(endpoint, options))));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding to a String");
        text
    }

    /// `(name, labels, value)` of every sample line.
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = value.parse().expect("a number");
                (name.to_string(), labels.to_string(), value)
            })
            .collect()
    }

    fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2)
    }

    /// The distinct `session` labels of the per-session series.
    fn listed_sessions(samples: &[(String, String, f64)]) -> Vec<String> {
        let mut listed: Vec<String> = samples
            .iter()
            .filter(|(n, _, _)| n.starts_with("kwik_session_"))
            .filter_map(|(_, l, _)| {
                let rest = l.strip_prefix("session=\"")?;
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect();
        listed.sort_by_key(|s| s.parse::<u64>().unwrap_or(u64::MAX));
        listed.dedup();
        listed
    }

    #[test]
    fn per_session_series_are_capped_and_the_rest_counted() {
        let options = MetricsOptions {
            max_sessions: 4,
            ..MetricsOptions::default()
        };
        let mut endpoint = endpoint_with_sessions(30);
        let text = scrape(&mut endpoint, &options);
        assert!(text.ends_with("# EOF\n"));
        let s = samples(&text);

        // The oldest sessions (lowest handles) are listed, the others counted.
        let handles: Vec<String> = endpoint.sessions().map(|h| h.0.to_string()).collect();
        assert_eq!(listed_sessions(&s), handles[..4]);
        assert_eq!(value(&s, "kwik_metrics_sessions_omitted", ""), Some(26.0));
        // One path each (the primary connection); the omitted sessions' too.
        assert_eq!(value(&s, "kwik_metrics_paths_omitted", ""), Some(26.0));
        let path_sessions = s.iter().filter(|(n, _, _)| n == "kwik_path_state").count();
        assert_eq!(path_sessions, 4);
        // The aggregates still cover every session.
        assert_eq!(value(&s, "kwik_sessions", "role=\"client\""), Some(30.0));
        assert_eq!(value(&s, "kwik_paths", "state=\"handshaking\""), Some(30.0));

        // The number of series does not grow with the number of sessions.
        let mut more = endpoint_with_sessions(60);
        let s60 = samples(&scrape(&mut more, &options));
        assert_eq!(s60.len(), s.len());
        assert_eq!(value(&s60, "kwik_metrics_sessions_omitted", ""), Some(56.0));
    }

    #[test]
    fn endpoint_only_and_path_caps_leave_out_what_they_say() {
        let mut endpoint = endpoint_with_sessions(5);
        let s = samples(&scrape(&mut endpoint, &MetricsOptions::endpoint_only()));
        assert!(
            !s.iter()
                .any(|(n, _, _)| n.starts_with("kwik_session_") || n.starts_with("kwik_path_")),
            "no per-session series: {s:?}"
        );
        assert_eq!(value(&s, "kwik_metrics_sessions_omitted", ""), Some(5.0));
        assert_eq!(value(&s, "kwik_sessions", "role=\"client\""), Some(5.0));
        // Every endpoint family is there, with its fixed label sets.
        for reason in close_labels() {
            let labels = format!("reason=\"{reason}\"");
            assert_eq!(
                value(&s, "kwik_endpoint_sessions_closed_total", &labels),
                Some(0.0)
            );
        }

        let options = MetricsOptions {
            max_paths_per_session: 0,
            ..MetricsOptions::default()
        };
        let s = samples(&scrape(&mut endpoint, &options));
        assert_eq!(listed_sessions(&s).len(), 5);
        assert!(!s.iter().any(|(n, _, _)| n.starts_with("kwik_path_")));
        assert_eq!(value(&s, "kwik_metrics_sessions_omitted", ""), Some(0.0));
        assert_eq!(value(&s, "kwik_metrics_paths_omitted", ""), Some(5.0));
    }

    fn close_labels() -> Vec<&'static str> {
        kwik_core::DisconnectKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect()
    }
}
