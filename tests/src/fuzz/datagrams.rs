//! `endpoint_datagrams`: a server endpoint fed arbitrary datagrams, alone
//! and interleaved with a genuine client's handshake.
//!
//! Anyone can send a server a UDP datagram, with any source address, before
//! any authentication. The server must not panic, must not let junk,
//! replays or bit-flipped copies of the genuine client's packets stop that
//! client from getting its session, and must keep what junk makes it hold
//! within its configured limits.
//!
//! The two endpoints are driven by hand here (no simulator): each step
//! delivers queued datagrams or fires timers, so the input decides exactly
//! where the junk lands in the handshake.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use kwik_core::{ClientConfig, Event, KwikEndpoint, Output, ServerConfig, SessionHandle};

use super::{Input, Output as Writer, Seed};
use crate::setup::{SERVER_NAME, addr, configs, dev_cert};

/// Most operations run from one input.
const MAX_OPS: usize = 256;

/// Most virtual time the operations may skip (below the handshake timeout,
/// so the genuine client is never legitimately timed out).
const MAX_SKIP: Duration = Duration::from_secs(4);

/// One thing that happens to the server.
#[derive(Debug, Clone)]
pub enum DatagramOp {
    /// A datagram of these bytes from host `10.0.1.<host>` (never the client).
    Junk {
        /// Source host byte.
        host: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A genuine client datagram captured earlier, one byte XORed, from the
    /// client's own address.
    Flip {
        /// Which captured datagram (modulo how many there are).
        index: u64,
        /// Which byte (modulo its length).
        at: u64,
        /// XOR mask (0 becomes 1).
        mask: u8,
    },
    /// A genuine client datagram replayed, from the client's address (even
    /// `host`) or another one.
    Replay {
        /// Which captured datagram.
        index: u64,
        /// Source selector.
        host: u8,
    },
    /// Lets up to this many genuine datagrams through, each way.
    Deliver(u8),
    /// Advances virtual time (capped in total by [`MAX_SKIP`]).
    Skip {
        /// Milliseconds.
        ms: u16,
    },
}

/// A run of [`DatagramOp`]s.
#[derive(Debug, Clone, Default)]
pub struct DatagramScript {
    /// The operations, in order.
    pub ops: Vec<DatagramOp>,
}

impl DatagramScript {
    /// The input bytes that parse back to this script.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for op in &self.ops {
            match op {
                DatagramOp::Junk { host, bytes } => w.byte(0).byte(*host).bytes(bytes),
                DatagramOp::Flip { index, at, mask } => {
                    w.byte(1).varint(*index).varint(*at).byte(*mask)
                }
                DatagramOp::Replay { index, host } => w.byte(2).varint(*index).byte(*host),
                DatagramOp::Deliver(n) => w.byte(3).byte(*n),
                DatagramOp::Skip { ms } => w.byte(4).varint(u64::from(*ms)),
            };
        }
        w.0
    }
}

impl<'a> Arbitrary<'a> for DatagramScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut inp = Input::new(u);
        let mut ops = Vec::new();
        while !inp.is_empty() && ops.len() < MAX_OPS {
            ops.push(match inp.byte() % 5 {
                0 => DatagramOp::Junk {
                    host: inp.byte(),
                    bytes: inp.bytes(1500),
                },
                1 => DatagramOp::Flip {
                    index: inp.varint(),
                    at: inp.varint(),
                    mask: inp.byte(),
                },
                2 => DatagramOp::Replay {
                    index: inp.varint(),
                    host: inp.byte(),
                },
                3 => DatagramOp::Deliver(inp.byte()),
                _ => DatagramOp::Skip {
                    ms: inp.upto(u64::from(u16::MAX)) as u16,
                },
            });
        }
        Ok(Self { ops })
    }
}

/// One side of the pair: an endpoint, what it queued for the other side and
/// its next deadline.
struct Side {
    ep: KwikEndpoint,
    addr: SocketAddr,
    deadline: Option<Instant>,
    established: Option<SessionHandle>,
}

impl Side {
    /// Drains the endpoint: transmits to `out` (split into datagrams),
    /// events noted.
    fn drain(&mut self, out: &mut VecDeque<(SocketAddr, Vec<u8>)>) {
        let mut buf = Vec::new();
        loop {
            match self.ep.poll_output(&mut buf) {
                Output::Transmit(t) => {
                    let seg = t.segment_size.unwrap_or(t.size).max(1);
                    for d in buf[..t.size].chunks(seg) {
                        out.push_back((t.destination, d.to_vec()));
                    }
                    buf.clear();
                }
                Output::Event(Event::SessionEstablished { session, .. }) => {
                    self.established = Some(session);
                }
                Output::Event(_) => {}
                Output::Timeout(d) => {
                    self.deadline = d;
                    return;
                }
            }
        }
    }
}

fn cached_configs() -> &'static (ClientConfig, ServerConfig) {
    static CONFIGS: OnceLock<(ClientConfig, ServerConfig)> = OnceLock::new();
    CONFIGS.get_or_init(|| configs(&dev_cert(7)))
}

/// The genuine pair and the junk's bookkeeping.
struct Pair {
    now: Instant,
    skipped: Duration,
    client: Side,
    server: Side,
    to_server: VecDeque<(SocketAddr, Vec<u8>)>,
    to_client: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Genuine client datagrams seen so far (for flips and replays).
    captured: Vec<Vec<u8>>,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let (client_cfg, server_cfg) = cached_configs().clone();
        let server_addr = addr(1);
        let mut client = Side {
            ep: crate::setup::endpoint(11, None, now),
            addr: addr(100),
            deadline: None,
            established: None,
        };
        client
            .ep
            .connect(now, server_addr, SERVER_NAME, &client_cfg)
            .expect("connect");
        let server = Side {
            ep: crate::setup::endpoint(12, Some(server_cfg), now),
            addr: server_addr,
            deadline: None,
            established: None,
        };
        let mut pair = Pair {
            now,
            skipped: Duration::ZERO,
            client,
            server,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            captured: Vec::new(),
        };
        pair.drain();
        pair
    }

    fn drain(&mut self) {
        self.client.drain(&mut self.to_server);
        self.server.drain(&mut self.to_client);
        self.check_bounded();
    }

    fn check_bounded(&self) {
        let stats = self.server.ep.stats();
        let cfg = &cached_configs().1;
        assert!(stats.sessions as usize <= cfg.max_sessions, "{stats:?}");
        assert!(stats.half_open as usize <= cfg.max_half_open, "{stats:?}");
        // Junk cannot complete a QUIC handshake: the genuine client's is
        // the only session the server may hold.
        assert!(stats.sessions <= 1, "junk created a session: {stats:?}");
    }

    fn feed_server(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.server
            .ep
            .handle_datagram(self.now, from, None, None, BytesMut::from(bytes));
        self.drain();
    }

    /// Lets up to `n` queued genuine datagrams through each way.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some((_, d)) = self.to_server.pop_front() else {
                break;
            };
            self.captured.push(d.clone());
            let from = self.client.addr;
            self.feed_server(from, &d);
        }
        for _ in 0..n {
            let Some((_, d)) = self.to_client.pop_front() else {
                break;
            };
            let from = self.server.addr;
            self.client
                .ep
                .handle_datagram(self.now, from, None, None, BytesMut::from(&d[..]));
            self.drain();
        }
    }

    /// Moves the clock to `to` and fires due timers.
    fn advance(&mut self, to: Instant) {
        self.now = self.now.max(to);
        for side in [&mut self.client, &mut self.server] {
            if side.deadline.is_some_and(|d| d <= self.now) {
                side.ep.handle_timeout(self.now);
            }
        }
        self.drain();
    }

    fn captured(&self, index: u64) -> Option<Vec<u8>> {
        if self.captured.is_empty() {
            return None;
        }
        Some(self.captured[(index % self.captured.len() as u64) as usize].clone())
    }
}

/// Runs the `endpoint_datagrams` target.
pub fn run(script: &DatagramScript) {
    let mut pair = Pair::new();
    for op in &script.ops {
        match op {
            DatagramOp::Junk { host, bytes } => {
                let from = SocketAddr::from(([10, 0, 1, *host], 5000 + u16::from(*host)));
                pair.feed_server(from, bytes);
            }
            DatagramOp::Flip { index, at, mask } => {
                if let Some(mut d) = pair.captured(*index) {
                    let i = (*at % d.len().max(1) as u64) as usize;
                    if let Some(b) = d.get_mut(i) {
                        *b ^= (*mask).max(1);
                    }
                    let from = pair.client.addr;
                    pair.feed_server(from, &d);
                }
            }
            DatagramOp::Replay { index, host } => {
                if let Some(d) = pair.captured(*index) {
                    let from = if host % 2 == 0 {
                        pair.client.addr
                    } else {
                        SocketAddr::from(([10, 0, 1, *host], 4433))
                    };
                    pair.feed_server(from, &d);
                }
            }
            DatagramOp::Deliver(n) => pair.deliver(usize::from(*n)),
            DatagramOp::Skip { ms } => {
                let d = Duration::from_millis(u64::from(*ms)).min(MAX_SKIP - pair.skipped);
                pair.skipped += d;
                let to = pair.now + d;
                pair.advance(to);
            }
        }
    }
    // The genuine handshake must still complete.
    let limit = pair.now + Duration::from_secs(30);
    let mut steps = 0u32;
    while pair.client.established.is_none() || pair.server.established.is_none() {
        steps += 1;
        assert!(steps < 10_000, "handshake livelocked");
        if !pair.to_server.is_empty() || !pair.to_client.is_empty() {
            pair.deliver(64);
            continue;
        }
        let next = [pair.client.deadline, pair.server.deadline]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= limit => pair.advance(t),
            _ => panic!(
                "the genuine session did not complete after the junk: client {:?}, server {:?}",
                pair.client.established, pair.server.established
            ),
        }
    }
}

/// Seeds: the genuine handshake alone, with its datagrams flipped and
/// replayed, with junk shaped like QUIC long and short headers.
pub fn seeds() -> Vec<Seed> {
    use DatagramOp::*;
    let initial_like = {
        let mut d = vec![0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
        d.resize(1200, 0);
        d
    };
    let scripts = [
        ("genuine", vec![Deliver(255)]),
        (
            "junk-before",
            vec![
                Junk {
                    host: 1,
                    bytes: initial_like.clone(),
                },
                Junk {
                    host: 2,
                    bytes: vec![0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                },
                Deliver(255),
            ],
        ),
        (
            "flip-and-replay",
            vec![
                Deliver(1),
                Flip {
                    index: 0,
                    at: 30,
                    mask: 0x80,
                },
                Replay { index: 0, host: 0 },
                Replay { index: 0, host: 3 },
                Deliver(2),
                Flip {
                    index: 1,
                    at: 0,
                    mask: 0x01,
                },
                Deliver(255),
            ],
        ),
        (
            "slow",
            vec![
                Deliver(1),
                Skip { ms: 300 },
                Deliver(1),
                Skip { ms: 1200 },
                Deliver(255),
            ],
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, ops)| Seed::new(name, DatagramScript { ops }.encode()))
        .collect()
}
