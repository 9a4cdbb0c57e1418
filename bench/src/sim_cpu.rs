//! `sim-cpu`: how much CPU kwik's session layer costs over bare QUIC.
//!
//! Both contenders upload the same amount (256 MiB by default) on ONE stream
//! — kwik one logical uni stream in one session, quinn-proto one uni stream
//! of one connection — over an unshaped simulated link (no rate limit, no
//! loss, 1 ms one-way latency). Nothing but the CPU limits the transfer
//! then, so wall-clock throughput of the simulation measures the cost of
//! everything both endpoints do per byte: TLS/AES-GCM, QUIC framing, ACKs,
//! and for kwik its record framing, credit and reassembly.
//!
//! Both use Cubic and the same QUIC windows (kwik's at least as large as
//! quinn's: 16 MiB per stream, 32 MiB send window) and 256 KiB writes of
//! zero-copy `Bytes`. Contenders alternate (kwik, quinn, kwik, quinn, …) so
//! slow drifts of the machine hit both alike; the medians are compared.
//! Wall time covers `run_until_done` only (handshakes included, set-up such
//! as certificate generation excluded).
//!
//! Both receivers do the same work per byte: quinn-proto's bulk server keeps
//! a [`StreamChecksum`] of what it reads, and so does kwik's ([`CpuServer`]);
//! after the run each checksum and byte count is compared with what the
//! sender sent, so a missing, duplicated or corrupt byte fails the run.
//! `--exact` additionally has kwik's server compare every byte with the
//! payload as it arrives (counting corrupt bytes) — extra work only kwik
//! does, so the ratio it yields is a lower bound.

use std::time::{Duration, Instant};

use kwik_core::{Event, KwikEndpoint, ReadError, SessionHandle, StreamId};
use kwik_sim::{App, LinkConfig, Payload, StreamChecksum, Trace};

use crate::harness::{Cc, KwikPair, MIB, QuinnPair, bulk_transport, mib_per_s, quinn_chunk, run};
use crate::report::{Line, median};

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Payload size in MiB.
    pub mib: u64,
    /// Repetitions of each contender (odd).
    pub reps: usize,
    /// Base seed.
    pub seed: u64,
    /// Override of kwik's largest data-record payload (bytes).
    pub max_frame: Option<u64>,
    /// kwik's server also compares every byte with the payload.
    pub exact: bool,
    /// Run only this contender (`"kwik"` or `"quinn-proto"`), for profiling;
    /// no summary line then.
    pub only: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mib: 256,
            reps: 5,
            seed: 1,
            max_frame: None,
            exact: false,
            only: None,
        }
    }
}

/// Virtual-time limit of one run (the link is unshaped: seconds suffice).
const LIMIT: Duration = Duration::from_secs(600);

fn link() -> LinkConfig {
    LinkConfig::new().latency(Duration::from_millis(1))
}

/// kwik's receiver in this scenario: drains the one uni stream the client
/// opens, keeping the same checksum as quinn-proto's bulk server.
struct CpuServer {
    payload: Payload,
    exact: bool,
    stream: Option<StreamId>,
    checksum: StreamChecksum,
    corrupt: u64,
    fin: bool,
    failure: Option<String>,
}

impl CpuServer {
    fn new(payload: Payload, exact: bool) -> Self {
        Self {
            payload,
            exact,
            stream: None,
            checksum: StreamChecksum::new(),
            corrupt: 0,
            fin: false,
            failure: None,
        }
    }

    fn drain(&mut self, endpoint: &mut KwikEndpoint, session: SessionHandle, id: StreamId) {
        if self.stream != Some(id) {
            return;
        }
        let Some(mut stream) = endpoint.stream(session, id) else {
            return;
        };
        loop {
            match stream.read(usize::MAX) {
                Ok(Some(data)) => {
                    if self.exact && !self.payload.verify(id, self.checksum.len(), &data) {
                        self.corrupt += data.len() as u64;
                    }
                    self.checksum.update(&data);
                }
                Ok(None) => {
                    self.fin = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(e) => {
                    self.failure = Some(format!("read on {id}: {e:?}"));
                    break;
                }
            }
        }
    }
}

impl App for CpuServer {
    fn on_event(
        &mut self,
        endpoint: &mut KwikEndpoint,
        _now: Instant,
        event: &Event,
        _trace: &mut Trace,
    ) {
        match *event {
            Event::Incoming { incoming, .. } => {
                let _ = endpoint.accept(incoming);
            }
            Event::StreamOpened { session, dir } => {
                let mut opened = Vec::new();
                if let Some(mut view) = endpoint.session(session) {
                    while let Some(id) = view.accept(dir) {
                        opened.push(id);
                    }
                }
                for id in opened {
                    if self.stream.is_some() {
                        self.failure = Some(format!("unexpected second stream {id}"));
                        continue;
                    }
                    self.stream = Some(id);
                    self.drain(endpoint, session, id);
                }
            }
            Event::StreamReadable { session, stream } => self.drain(endpoint, session, stream),
            Event::SessionClosed { ref reason, .. } if !self.fin => {
                self.failure = Some(format!("session closed: {reason:?}"));
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.fin || self.failure.is_some()
    }
}

/// Checksum of the first `total` bytes of `stream` of `payload`.
fn payload_checksum(payload: &Payload, stream: StreamId, total: u64) -> StreamChecksum {
    let mut checksum = StreamChecksum::new();
    while checksum.len() < total {
        let want = (total - checksum.len()).min(1 << 20) as usize;
        checksum.update(&payload.chunk(stream, checksum.len(), want));
    }
    checksum
}

fn kwik_once(opts: &Options) -> Result<Duration, String> {
    let total = opts.mib * MIB;
    let mut payload = None;
    let mut pair = KwikPair::new(
        opts.seed,
        &link(),
        &bulk_transport(Cc::Cubic, opts.max_frame),
        &[total],
        |p| {
            payload = Some(p.clone());
            CpuServer::new(p, opts.exact)
        },
    );
    let wall = run(&mut pair.sim, LIMIT)?;
    let server = pair.server_app::<CpuServer>();
    if let Some(failure) = &server.failure {
        return Err(format!("kwik: {failure}"));
    }
    if server.corrupt != 0 {
        return Err(format!("kwik: {} corrupt bytes", server.corrupt));
    }
    let (Some(id), Some(payload)) = (server.stream, payload) else {
        return Err("kwik: no stream arrived".to_string());
    };
    if !server.fin || server.checksum.len() != total {
        return Err(format!(
            "kwik: server read {} of {total} bytes",
            server.checksum.len()
        ));
    }
    if server.checksum.value() != payload_checksum(&payload, id, total).value() {
        return Err("kwik: checksum mismatch (corrupt or misordered bytes)".to_string());
    }
    Ok(wall)
}

fn quinn_once(opts: &Options) -> Result<Duration, String> {
    let total = opts.mib * MIB;
    let mut pair = QuinnPair::new(opts.seed, &link(), Cc::Cubic, total, quinn_chunk(opts.seed));
    let wall = run(&mut pair.sim, LIMIT)?;
    pair.check()?;
    Ok(wall)
}

/// Runs the scenario; the last line printed is the summary.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let total = opts.mib * MIB;
    eprintln!(
        "sim-cpu: {} MiB on one stream over an unshaped 1 ms link, Cubic, {} alternating reps each; \
         receivers verify by checksum{}",
        opts.mib,
        opts.reps,
        if opts.exact {
            " (kwik also compares every byte)"
        } else {
            ""
        }
    );
    let mut kwik = Vec::with_capacity(opts.reps);
    let mut quinn = Vec::with_capacity(opts.reps);
    for rep in 1..=opts.reps {
        for stack in ["kwik", "quinn-proto"] {
            if opts.only.as_deref().is_some_and(|only| only != stack) {
                continue;
            }
            let wall = if stack == "kwik" {
                kwik_once(opts)?
            } else {
                quinn_once(opts)?
            };
            let rate = mib_per_s(total, wall);
            eprintln!(
                "  rep {rep}/{} {stack:<11} {:7.3} s wall  {rate:7.1} MiB/s",
                opts.reps,
                wall.as_secs_f64()
            );
            Line::new("sim-cpu")
                .int("rep", rep as u64)
                .str("stack", stack)
                .int("mib", opts.mib)
                .num("wall_s", wall.as_secs_f64(), 4)
                .num("mib_s", rate, 2)
                .emit();
            if stack == "kwik" {
                kwik.push(rate);
            } else {
                quinn.push(rate);
            }
        }
    }
    if opts.only.is_some() {
        return Ok(());
    }
    let (k, q) = (median(&kwik), median(&quinn));
    let ratio = k / q;
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "sim-cpu: median kwik {k:.1} MiB/s, quinn-proto {q:.1} MiB/s, ratio {ratio:.3} \
         (requirement 0.90, goal 0.95); scenario wall {wall:.1} s"
    );
    Line::new("sim-cpu")
        .int("mib", opts.mib)
        .int("reps", opts.reps as u64)
        .num("kwik_mib_s", k, 2)
        .num("quinn_proto_mib_s", q, 2)
        .num("ratio", ratio, 4)
        .str("cc", Cc::Cubic.name())
        .str(
            "verify",
            if opts.exact {
                "checksum+exact"
            } else {
                "checksum"
            },
        )
        .num("scenario_wall_s", wall, 1)
        .emit();
    Ok(())
}
