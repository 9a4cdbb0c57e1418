//! Set-up shared by the multi-server scenarios (`aggregate`, `failover`):
//! a [`MultiSetup`] with tracing off, run in slices of virtual time so that
//! per-path progress can be sampled, and the checks on what the client read.

use std::time::{Duration, Instant};

use kwik_core::{PathFilter, PathId, PathInfo, SessionStats, TransferConfig};
use kwik_sim::KwikNode;
use kwik_sim::multi::{
    MultiClient, MultiPrimary, MultiSetup, SecondaryApp, Start, first_server_stream,
};

/// Work a path may owe, in time at its measured rate, in both scenarios
/// (kwik's default is 250 ms). 150 ms shortens the failover stall by about
/// 150 ms (a range re-assigned from a dead path waits behind less queued
/// work) and costs nothing in `aggregate`: slow paths are held up by the
/// 1 MiB floor (`min_backlog`), not by this.
pub const BACKLOG: Duration = Duration::from_millis(150);

/// The scheduler tuning both scenarios use: kwik's defaults except 256 KiB
/// minimum chunks (as `MultiSetup` sets) and `backlog`.
pub fn transfer_config(backlog: Duration) -> TransferConfig {
    let mut t = TransferConfig::default();
    t.min_chunk = 256 << 10;
    t.backlog = backlog;
    t
}

/// Sets up the primary the way both scenarios run it: the given scheduler
/// tuning, and serving from the first byte on (secondaries join as their
/// AddPath handshakes complete, instead of the primary waiting for all).
pub fn primary_setup(backlog: Duration) -> impl FnOnce(&mut MultiPrimary) {
    move |p| {
        p.transfer_config = transfer_config(backlog);
        p.start = Start::Immediately;
    }
}

/// Switches every per-event trace line off: the scenarios move gigabytes
/// and only need the apps' own records.
pub fn quiet(s: &mut MultiSetup) {
    s.sim.trace_mut().set_keep_lines(false);
    s.sim.trace_mut().set_datagrams(false);
    s.client_node().trace_events = false;
    s.primary_node().trace_events = false;
    for id in s.secondaries.clone() {
        s.sim.node_mut::<KwikNode<SecondaryApp>>(id).trace_events = false;
    }
}

/// Every path of the client's session (empty before it exists).
pub fn client_paths(s: &mut MultiSetup) -> Vec<PathInfo> {
    let node = s.client_node();
    let Some(h) = node.app.session else {
        return Vec::new();
    };
    node.endpoint
        .session(h)
        .map_or_else(Vec::new, |mut v| v.paths(PathFilter::All))
}

/// The client session's counters.
pub fn client_stats(s: &mut MultiSetup) -> Option<SessionStats> {
    let node = s.client_node();
    let h = node.app.session?;
    node.endpoint.session(h).map(|v| v.stats())
}

/// Bytes the client application has read so far.
pub fn client_read(client: &MultiClient) -> u64 {
    client
        .read
        .get(&first_server_stream())
        .copied()
        .unwrap_or(0)
}

/// One sample of the client's progress.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Virtual time since the start.
    pub at: Duration,
    /// Bytes the application had read.
    pub read: u64,
    /// QUIC payload received so far, per path.
    pub paths: Vec<(PathId, u64)>,
}

impl Sample {
    fn bytes(&self, path: PathId) -> u64 {
        self.paths
            .iter()
            .find(|(id, _)| *id == path)
            .map_or(0, |(_, b)| *b)
    }
}

/// The client's progress, sampled over time.
#[derive(Debug, Default)]
pub struct Samples {
    /// Samples, oldest first.
    pub points: Vec<Sample>,
}

impl Samples {
    fn take(&mut self, s: &mut MultiSetup) {
        let at = s.sim.elapsed();
        let read = client_read(s.client());
        let paths = client_paths(s)
            .iter()
            .map(|p| (p.id, p.bytes_received))
            .collect();
        self.points.push(Sample { at, read, paths });
    }

    fn per_interval(&self, value: impl Fn(&Sample) -> u64) -> Vec<f64> {
        self.points
            .windows(2)
            .map(|w| {
                let dt = (w[1].at - w[0].at).as_secs_f64();
                value(&w[1]).saturating_sub(value(&w[0])) as f64 * 8.0 / 1e6 / dt
            })
            .collect()
    }

    /// Rate of `path` in Mbit/s between consecutive samples, one value per
    /// interval (0 before the path existed).
    pub fn rates(&self, path: PathId) -> Vec<f64> {
        self.per_interval(|p| p.bytes(path))
    }

    /// Rate at which the application read, Mbit/s, per interval.
    pub fn read_rates(&self) -> Vec<f64> {
        self.per_interval(|p| p.read)
    }
}

/// Runs until every node is done, at most `limit` of virtual time from the
/// start, sampling every `every`. Returns the wall time spent.
pub fn run_sampled(
    s: &mut MultiSetup,
    limit: Duration,
    every: Duration,
    samples: &mut Samples,
) -> Result<Duration, String> {
    let started = Instant::now();
    samples.take(s);
    while !s.sim.all_done() {
        let left = limit.saturating_sub(s.sim.elapsed());
        if left.is_zero() {
            return Err(stalled(s, "virtual-time limit reached"));
        }
        match s.sim.run_while(every.min(left), |sim| !sim.all_done()) {
            Ok(_) => {}
            Err(e) if e.reason == kwik_sim::StallReason::TimeLimit => {}
            Err(e) => return Err(stalled(s, &e.to_string())),
        }
        samples.take(s);
    }
    Ok(started.elapsed())
}

/// A description of a run that did not finish.
pub fn stalled(s: &MultiSetup, why: &str) -> String {
    let c = s.client();
    let p: &MultiPrimary = s.primary();
    format!(
        "{why} at {:.2} s: client read {} bytes (closed {:?}), primary added {:?} failed {:?} \
         dead {:?}; link counters {:?}",
        s.sim.elapsed().as_secs_f64(),
        client_read(c),
        c.closed,
        p.added,
        p.failed,
        p.dead,
        s.sim.total_link_stats()
    )
}

/// Checks that the client read exactly `size` verified bytes and the end of
/// the stream; returns when it read the last byte (since the start).
pub fn check_intact(s: &MultiSetup, size: u64) -> Result<Duration, String> {
    let c = s.client();
    if c.corrupt != 0 {
        return Err(format!("{} corrupt bytes", c.corrupt));
    }
    if let Some(reason) = &c.closed {
        return Err(format!("client session closed: {reason:?}"));
    }
    let read = client_read(c);
    if read != size {
        return Err(format!("client read {read} of {size} bytes"));
    }
    if !c.finished.contains(&first_server_stream()) {
        return Err("end of stream never seen".to_string());
    }
    let last = c.last_byte.ok_or_else(|| "no byte ever read".to_string())?;
    Ok(last.saturating_duration_since(s.sim.start()))
}
