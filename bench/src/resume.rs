//! `resume`: how much sooner the first byte of an answer arrives when a
//! client resumes with 0-RTT (PROTOCOL.md §12).
//!
//! One server with 0-RTT enabled, links of 50 ms round trip and 100 Mbit/s,
//! in the simulator. A warm-up session leaves the client configuration a
//! ticket and the server's limits. Then, in the same network, three
//! contenders each dial, send a small request on a bidirectional stream and
//! time the first byte of the 4 KiB answer from the moment they dial:
//!
//! * `full` — a client with no ticket: the QUIC handshake, then the Hello,
//!   then (after the Welcome) the request: three round trips;
//! * `0rtt` — the warm client: Hello and request (declared idempotent) in
//!   0-RTT, the answer in 0.5-RTT: one round trip;
//! * `hello_0rtt` — the warm client, Hello in 0-RTT but the request (not
//!   idempotent) after the Welcome: two round trips.
//!
//! Each repetition is a fresh network (its own seed); the contenders take
//! turns in alternating order, and the medians are reported. Every answer is
//! checked byte for byte, every 0-RTT session must be accepted, and the
//! full-handshake one must not be in 0-RTT, or the run fails.

use std::time::Duration;

use kwik_sim::resume::{Mode, ResumeNet};

use crate::report::{Line, median};

/// Round trip of every link.
const RTT_MS: u64 = 50;
/// How long a client keeps its session after its answer, for the server's
/// session tickets to arrive.
const LINGER: Duration = Duration::from_millis(300);

/// Options of the `resume` scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions (each contender once per repetition).
    pub reps: usize,
    /// Seed of the first repetition.
    pub seed: u64,
}

/// The first byte of one contender's answer, in milliseconds.
fn run(net: &mut ResumeNet, mode: Mode, warm: bool, rep: usize) -> Result<f64, String> {
    let config = if warm {
        net.client.clone()
    } else {
        net.fresh_client()
    };
    let request = format!("GET /resource/{rep}/{mode:?}");
    let id = net.exchange(&config, mode, request.as_bytes(), LINGER);
    let r = net.requester(id);
    if !r.response_ok() {
        return Err(format!("{mode:?}: the answer is missing or wrong"));
    }
    let expect_0rtt = mode != Mode::Full;
    if r.in_0rtt != expect_0rtt || (expect_0rtt && r.settled != Some(true)) {
        return Err(format!(
            "{mode:?}: 0-RTT expected {expect_0rtt}, got in_0rtt={} settled={:?}",
            r.in_0rtt, r.settled
        ));
    }
    let t = r.first_byte().ok_or("no first byte")?;
    Ok(t.as_secs_f64() * 1e3)
}

/// Runs the scenario and prints its JSON line.
pub fn main(opts: &Options) -> Result<(), String> {
    let rtt = Duration::from_millis(RTT_MS);
    let (mut full, mut early, mut hello) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..opts.reps {
        let mut net = ResumeNet::new(opts.seed + rep as u64, rtt, |_| {});
        let warm = net.client.clone();
        let id = net.exchange(&warm, Mode::Full, b"GET /warm-up", LINGER);
        if !net.requester(id).response_ok() {
            return Err("the warm-up exchange failed".to_string());
        }
        let mut order = [Mode::Full, Mode::ZeroRtt, Mode::HelloOnly];
        if rep % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            let ms = run(&mut net, mode, mode != Mode::Full, rep)?;
            match mode {
                Mode::Full => full.push(ms),
                Mode::ZeroRtt => early.push(ms),
                Mode::HelloOnly => hello.push(ms),
            }
        }
        eprintln!(
            "resume: rep {rep}: first byte full {:.1} ms, 0-RTT {:.1} ms, 0-RTT Hello only {:.1} ms",
            full[rep], early[rep], hello[rep]
        );
    }
    let (full, early, hello) = (median(&full), median(&early), median(&hello));
    Line::new("resume")
        .int("rtt_ms", RTT_MS)
        .num("first_byte_ms_full", full, 1)
        .num("first_byte_ms_0rtt", early, 1)
        .num("first_byte_ms_hello_0rtt", hello, 1)
        .num("rtts_saved", (full - early) / RTT_MS as f64, 2)
        .int("reps", opts.reps as u64)
        .emit();
    Ok(())
}
