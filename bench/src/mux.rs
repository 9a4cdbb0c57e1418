//! `mux`: what sharing real QUIC streams ("lanes") between logical streams
//! costs under loss.
//!
//! 16 logical streams of 4 MiB each are uploaded concurrently over one
//! session on the `sim-link` link (100 Mbit/s, 40 ms RTT, one-BDP buffer)
//! with 2 % random loss on both directions, carried with
//! `streams_per_lane` = 1, 4 and 8 logical streams per lane. QUIC delivers
//! each real stream in order, so a lost packet on a lane holds back every
//! logical stream sharing it (head-of-line blocking); one lane per logical
//! stream avoids that at the price of more QUIC streams.
//!
//! Reported per setting: completion of the whole transfer (virtual time
//! from connect to the server having read the last byte of every stream),
//! the median and the maximum per-stream completion (from connect to that
//! stream's last byte) and the number of lanes the client opened.
//!
//! BBR by default: loss-based controllers (Cubic) read 2 % random loss as
//! congestion and crawl; `--cc cubic` runs them anyway. Transport knobs
//! other than the controller and `streams_per_lane` are kwik's defaults
//! (2 MiB per-stream window, 16 MiB send window: 16 streams together
//! allow far more than the 500 kB BDP).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kwik_core::{Event, KwikEndpoint, SessionHandle, StreamId, TransportConfig};
use kwik_sim::{App, BulkServer, LinkConfig, Payload, Trace};

use crate::harness::{Cc, KwikPair, MIB, check_kwik, run};
use crate::report::{Line, max, median};

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Congestion controller.
    pub cc: Cc,
    /// Seed of the simulations.
    pub seed: u64,
    /// Override of kwik's largest data-record payload (bytes).
    pub max_frame: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cc: Cc::Bbr,
            seed: 1,
            max_frame: None,
        }
    }
}

const STREAMS: usize = 16;
const STREAM_MIB: u64 = 4;
const LOSS: f64 = 0.02;
const RATE_MBIT: u64 = 100;
const SETTINGS: [usize; 3] = [1, 4, 8];
/// Virtual-time limit (Cubic at 2 % loss is slow).
const LIMIT: Duration = Duration::from_secs(7200);

/// A [`BulkServer`] that also records when each stream's last byte was read.
struct TimedServer {
    inner: BulkServer,
    finished_at: BTreeMap<StreamId, Instant>,
}

impl TimedServer {
    fn new(payload: Payload) -> Self {
        Self {
            inner: BulkServer::new(payload, STREAMS),
            finished_at: BTreeMap::new(),
        }
    }

    fn note(&mut self, session: SessionHandle, stream: StreamId, now: Instant) {
        let fin = self
            .inner
            .received
            .get(&session)
            .and_then(|streams| streams.get(&stream))
            .is_some_and(|r| r.fin);
        if fin {
            self.finished_at.entry(stream).or_insert(now);
        }
    }
}

impl App for TimedServer {
    fn on_event(
        &mut self,
        endpoint: &mut KwikEndpoint,
        now: Instant,
        event: &Event,
        trace: &mut Trace,
    ) {
        self.inner.on_event(endpoint, now, event, trace);
        match *event {
            Event::StreamReadable { session, stream } => self.note(session, stream, now),
            Event::StreamOpened { session, .. } => {
                let ids: Vec<StreamId> = self
                    .inner
                    .received
                    .get(&session)
                    .map(|streams| streams.keys().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    self.note(session, id, now);
                }
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.inner.done()
    }
}

struct Outcome {
    completion: Duration,
    per_stream: Vec<f64>,
    lanes: u64,
    wall: Duration,
}

fn run_setting(opts: &Options, streams_per_lane: usize) -> Result<Outcome, String> {
    let link = LinkConfig::new()
        .rate_mbps(RATE_MBIT)
        .latency(Duration::from_millis(20))
        .loss(LOSS);
    let mut transport = TransportConfig::default();
    transport.congestion = opts.cc.kwik();
    transport.streams_per_lane = streams_per_lane;
    if let Some(max) = opts.max_frame {
        transport.max_frame_payload = max;
    }
    let lens = [STREAM_MIB * MIB; STREAMS];
    let mut pair = KwikPair::new(opts.seed, &link, &transport, &lens, TimedServer::new);
    let wall = run(&mut pair.sim, LIMIT)?;
    let server = pair.server_app::<TimedServer>();
    let completion = check_kwik(
        &pair.sim,
        &server.inner,
        STREAM_MIB * MIB * STREAMS as u64,
        STREAMS,
    )?;
    if server.finished_at.len() != STREAMS {
        return Err(format!(
            "mux: finish time recorded for {} of {STREAMS} streams",
            server.finished_at.len()
        ));
    }
    let start = pair.sim.start();
    let per_stream = server
        .finished_at
        .values()
        .map(|t| t.saturating_duration_since(start).as_secs_f64())
        .collect();
    let lanes = pair.client_lanes();
    Ok(Outcome {
        completion,
        per_stream,
        lanes,
        wall,
    })
}

/// Runs the scenario; the last line printed is the summary.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    eprintln!(
        "mux: {STREAMS} logical streams x {STREAM_MIB} MiB concurrently over one session, \
         {RATE_MBIT} Mbit/s, 40 ms RTT, {} % loss, congestion controller {}",
        LOSS * 100.0,
        opts.cc.name()
    );
    let mut summary = Line::new("mux")
        .bool("summary", true)
        .str("cc", opts.cc.name())
        .exact("loss", LOSS)
        .int("streams", STREAMS as u64)
        .int("stream_mib", STREAM_MIB);
    for spl in SETTINGS {
        let o = run_setting(opts, spl)?;
        let (med, worst) = (median(&o.per_stream), max(&o.per_stream));
        let total = STREAM_MIB * MIB * STREAMS as u64;
        let efficiency = total as f64 * 8.0 / 1e6 / o.completion.as_secs_f64() / RATE_MBIT as f64;
        eprintln!(
            "  streams_per_lane {spl}: {} lanes, all done at {:.2} s virtual (efficiency {efficiency:.3}), \
             per stream median {med:.2} s / max {worst:.2} s; {:.1} s wall",
            o.lanes,
            o.completion.as_secs_f64(),
            o.wall.as_secs_f64()
        );
        Line::new("mux")
            .int("streams_per_lane", spl as u64)
            .exact("loss", LOSS)
            .str("cc", opts.cc.name())
            .num("completion_s", o.completion.as_secs_f64(), 3)
            .num("stream_median_s", med, 3)
            .num("stream_max_s", worst, 3)
            .int("lanes", o.lanes)
            .int("streams", STREAMS as u64)
            .int("stream_mib", STREAM_MIB)
            .num("efficiency", efficiency, 4)
            .num("wall_s", o.wall.as_secs_f64(), 2)
            .emit();
        summary = summary.num(
            &format!("completion_s_spl{spl}"),
            o.completion.as_secs_f64(),
            3,
        );
    }
    let wall = started.elapsed().as_secs_f64();
    eprintln!("mux: scenario wall {wall:.1} s");
    summary.num("scenario_wall_s", wall, 1).emit();
    Ok(())
}
