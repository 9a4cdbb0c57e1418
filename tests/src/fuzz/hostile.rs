//! `hostile_peer`: after a genuine kwik handshake, the peer sends whatever
//! the input says — control messages, data records, raw bytes on either
//! kind of stream.
//!
//! Two pairings: a hostile client against a kwik server, and a hostile
//! primary against a kwik client (a client trusts its primary for content
//! but nothing else). The attacked side must not panic, must keep every
//! stream within its window, and its application may only ever read a byte
//! the peer really sent at that offset of that stream: a forged, shifted or
//! conflicting byte that reaches the application is a trust failure.
//! Runs that send raw lane bytes (which can encode any record) are checked
//! for everything but that last rule.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kwik_core::fuzzing::{encode_control, encode_data_record};
use kwik_core::proto::control::control_message::Body;
use kwik_core::{Dir, Event, KwikEndpoint, RangeSet, ReadError, SessionHandle, Side, StreamId};

use super::control::arb_body;
use super::lanes::content;
use super::{Input, Output as Writer, Seed};
use crate::hostile::{HostileClient, Step};
use crate::hostile_primary::{HostilePrimary, PrimaryStep};
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert};
use crate::sim::Sim;
use crate::trace::Trace;

/// Most operations run from one input.
const MAX_OPS: usize = 48;

/// Per-stream window of the attacked endpoint.
pub const WINDOW: u64 = 64 << 10;

/// Byte a forged record is filled with.
const FILL: u8 = 0xee;

/// Who attacks whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    /// A hostile client against a kwik server.
    ClientAttacksServer,
    /// A hostile primary against a kwik client.
    PrimaryAttacksClient,
}

/// One thing the hostile peer sends.
#[derive(Debug, Clone)]
pub enum HostileOp {
    /// A well-formed control message.
    Control(Body),
    /// Raw bytes on the control stream.
    ControlBytes(Vec<u8>),
    /// A data record of `len` bytes at `offset`: the stream's genuine
    /// content, or [`FILL`] bytes (a forgery).
    Record {
        /// The logical stream.
        stream: StreamId,
        /// First offset.
        offset: u64,
        /// Payload length.
        len: u64,
        /// Ends the stream.
        fin: bool,
        /// Payload of [`FILL`] instead of the genuine content.
        forged: bool,
    },
    /// Raw bytes on the peer's lane.
    LaneBytes(Vec<u8>),
}

/// A hostile peer's script.
#[derive(Debug, Clone)]
pub struct HostileScript {
    /// Who attacks.
    pub pairing: Pairing,
    /// What it sends, in order.
    pub ops: Vec<HostileOp>,
}

impl HostileScript {
    /// The input bytes that parse back to this script (control messages are
    /// written as raw control bytes, which parse to the same wire).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.byte(match self.pairing {
            Pairing::ClientAttacksServer => 0,
            Pairing::PrimaryAttacksClient => 1,
        });
        for op in &self.ops {
            match op {
                HostileOp::Control(body) => w.byte(1).bytes(&encode_control(body.clone())),
                HostileOp::ControlBytes(b) => w.byte(1).bytes(b),
                HostileOp::Record {
                    stream,
                    offset,
                    len,
                    fin,
                    forged,
                } => w
                    .byte(2)
                    .varint(stream.0)
                    .varint(*offset)
                    .varint(*len)
                    .byte(u8::from(*fin) | u8::from(*forged) << 1),
                HostileOp::LaneBytes(b) => w.byte(3).bytes(b),
            };
        }
        w.0
    }
}

impl<'a> Arbitrary<'a> for HostileScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut inp = Input::new(u);
        let pairing = if inp.byte() & 1 == 0 {
            Pairing::ClientAttacksServer
        } else {
            Pairing::PrimaryAttacksClient
        };
        let mut ops = Vec::new();
        while !inp.is_empty() && ops.len() < MAX_OPS {
            ops.push(match inp.byte() % 4 {
                0 => HostileOp::Control(arb_body(&mut inp)),
                1 => HostileOp::ControlBytes(inp.bytes(4096)),
                2 => {
                    let stream = StreamId(inp.varint() % 64);
                    let offset = inp.upto(1 << 20);
                    let len = inp.upto(8192);
                    let flags = inp.byte();
                    HostileOp::Record {
                        stream,
                        offset,
                        len,
                        fin: flags & 1 == 1,
                        forged: flags & 2 == 2,
                    }
                }
                _ => HostileOp::LaneBytes(inp.bytes(4096)),
            });
        }
        Ok(Self { pairing, ops })
    }
}

/// What the peer sent per stream: genuine ranges and forged ranges.
#[derive(Default)]
struct Sent {
    genuine: BTreeMap<StreamId, RangeSet>,
    forged: BTreeMap<StreamId, RangeSet>,
}

impl Sent {
    fn allows(&self, id: StreamId, offset: u64, byte: u8) -> bool {
        let has = |m: &BTreeMap<StreamId, RangeSet>| {
            m.get(&id).is_some_and(|r| r.contains(offset..offset + 1))
        };
        (byte == content(id, offset) && has(&self.genuine)) || (byte == FILL && has(&self.forged))
    }
}

/// The attacked application: connects (client) or accepts, reads every
/// stream as bytes arrive, keeps what it read.
struct Victim {
    client_of: Option<(std::net::SocketAddr, kwik_core::ClientConfig)>,
    session: Option<SessionHandle>,
    read: Rc<RefCell<BTreeMap<StreamId, Vec<u8>>>>,
}

impl Victim {
    fn drain(&mut self, ep: &mut KwikEndpoint, id: StreamId) {
        let Some(h) = self.session else { return };
        let Some(mut s) = ep.stream(h, id) else {
            return;
        };
        let mut read = self.read.borrow_mut();
        let buf = read.entry(id).or_default();
        loop {
            match s.read(usize::MAX) {
                Ok(Some(data)) => buf.extend_from_slice(&data),
                Ok(None) | Err(ReadError::Blocked) | Err(_) => return,
            }
        }
    }
}

impl App for Victim {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::SessionEstablished { session, .. } => self.session = Some(*session),
            Event::StreamOpened { session, dir } => {
                let ids: Vec<StreamId> = ep
                    .session(*session)
                    .map(|mut v| std::iter::from_fn(|| v.accept(*dir)).collect())
                    .unwrap_or_default();
                for id in ids {
                    self.drain(ep, id);
                }
            }
            Event::StreamReadable { stream, .. } => self.drain(ep, *stream),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _: &mut Trace) -> bool {
        if let Some((server, cfg)) = self.client_of.take() {
            self.session = ep.connect(now, server, SERVER_NAME, &cfg).ok();
            return true;
        }
        false
    }
}

/// Runs the `hostile_peer` target; returns how many bytes the attacked
/// application read.
pub fn run(script: &HostileScript) -> u64 {
    let seed = 9;
    let cert = dev_cert(seed);
    let (mut client_cfg, mut server_cfg) = configs(&cert);
    client_cfg.transport.stream_window = WINDOW;
    server_cfg.transport.stream_window = WINDOW;
    let mut sim = Sim::new(seed);
    let (victim_addr, hostile_addr) = (addr(1), addr(2));
    sim.set_path(
        victim_addr,
        hostile_addr,
        LinkConfig::new().latency(Duration::from_millis(5)),
    );
    let mut sent = Sent::default();
    let mut checked = true;
    let ours = match script.pairing {
        Pairing::ClientAttacksServer => Side::Client,
        Pairing::PrimaryAttacksClient => Side::Server,
    };
    let mut control = Vec::new();
    let mut lane = Vec::new();
    for op in &script.ops {
        match op {
            HostileOp::Control(body) => control.push(encode_control(body.clone())),
            HostileOp::ControlBytes(b) => control.push(Bytes::copy_from_slice(b)),
            HostileOp::Record {
                stream,
                offset,
                len,
                fin,
                forged,
            } => {
                // Keep the peer's streams its own most of the time.
                let id = if stream.0 & 32 == 0 {
                    StreamId(stream.0 & !1 | u64::from(ours == Side::Server))
                } else {
                    *stream
                };
                let payload: Vec<u8> = if *forged {
                    vec![FILL; *len as usize]
                } else {
                    (*offset..offset + len).map(|o| content(id, o)).collect()
                };
                let into = if *forged {
                    &mut sent.forged
                } else {
                    &mut sent.genuine
                };
                into.entry(id).or_default().insert(*offset..offset + len);
                lane.push((id, *offset, payload, *fin));
            }
            HostileOp::LaneBytes(b) => {
                checked = false;
                lane.push((StreamId(u64::MAX), 0, b.clone(), false));
            }
        }
    }
    let read: Rc<RefCell<BTreeMap<StreamId, Vec<u8>>>> = Rc::default();
    let now = sim.now();
    let victim = match script.pairing {
        Pairing::ClientAttacksServer => {
            let ep = crate::setup::endpoint(seed, Some(server_cfg), now);
            let app = Victim {
                client_of: None,
                session: None,
                read: read.clone(),
            };
            let v = sim.add_node(
                &[victim_addr],
                Box::new(KwikNode::new(victim_addr, ep, app)),
            );
            let mut steps: Vec<Step> = Vec::new();
            for c in control {
                steps.push(Step::Control(c));
            }
            for (id, offset, payload, fin) in lane {
                steps.push(Step::Lane(record_bytes(id, offset, payload, fin)));
            }
            let hostile = HostileClient::scripted(hostile_addr, victim_addr, seed, &cert, steps);
            sim.add_node(&[hostile_addr], Box::new(hostile));
            v
        }
        Pairing::PrimaryAttacksClient => {
            let ep = crate::setup::endpoint(seed, None, now);
            let app = Victim {
                client_of: Some((hostile_addr, client_cfg)),
                session: None,
                read: read.clone(),
            };
            let v = sim.add_node(
                &[victim_addr],
                Box::new(KwikNode::new(victim_addr, ep, app)),
            );
            let mut steps = Vec::new();
            for c in control {
                steps.push(PrimaryStep::ControlBytes(c));
            }
            for (id, offset, payload, fin) in lane {
                if id.0 == u64::MAX {
                    // Raw lane bytes: a record's worth the primary node can
                    // only send framed, so send them as one stream's payload.
                    steps.push(PrimaryStep::Record {
                        stream: StreamId::new(Side::Server, Dir::Uni, 0),
                        offset,
                        payload: Bytes::from(payload),
                        fin,
                    });
                    continue;
                }
                steps.push(PrimaryStep::Record {
                    stream: id,
                    offset,
                    payload: Bytes::from(payload),
                    fin,
                });
            }
            let hostile = HostilePrimary::new(hostile_addr, seed, &cert, steps);
            sim.add_node(&[hostile_addr], Box::new(hostile));
            v
        }
    };
    for _ in 0..40 {
        sim.run_for(Duration::from_millis(50));
        let node = sim.node_mut::<KwikNode<Victim>>(victim);
        let handles: Vec<SessionHandle> = node.endpoint.sessions().collect();
        for h in handles {
            if let Some(view) = node.endpoint.session(h) {
                let total = view.stats().buffered;
                assert!(total <= WINDOW * 1024, "session holds {total} bytes");
                for id in read.borrow().keys() {
                    let held = view.stream_buffered(*id).unwrap_or(0);
                    assert!(held <= WINDOW, "{id} holds {held} bytes, window {WINDOW}");
                }
            }
        }
        let stats = node.endpoint.stats();
        assert!(stats.sessions <= 1, "{stats:?}");
    }
    if checked {
        for (id, data) in read.borrow().iter() {
            for (o, &b) in data.iter().enumerate() {
                assert!(
                    sent.allows(*id, o as u64, b),
                    "{id}: byte {o} ({b:#x}) was delivered but never sent there"
                );
            }
        }
    }
    read.borrow().values().map(|d| d.len() as u64).sum()
}

/// One data record's bytes (raw lane bytes pass through as they are).
fn record_bytes(id: StreamId, offset: u64, payload: Vec<u8>, fin: bool) -> Bytes {
    if id.0 == u64::MAX {
        return Bytes::from(payload);
    }
    Bytes::from(encode_data_record(id, offset, &payload, fin))
}

/// Seeds: both pairings sending genuine uploads, then typical attacks —
/// forged bytes over genuine ones, credit overruns, bogus control.
pub fn seeds() -> Vec<Seed> {
    use HostileOp::*;
    use kwik_core::proto::control as msg;
    let cuni = StreamId::new(Side::Client, Dir::Uni, 0);
    let suni = StreamId::new(Side::Server, Dir::Uni, 0);
    let rec = |stream, offset, len, fin, forged| Record {
        stream,
        offset,
        len,
        fin,
        forged,
    };
    let scripts = [
        (
            "client-upload",
            Pairing::ClientAttacksServer,
            vec![
                rec(cuni, 0, 4000, false, false),
                rec(cuni, 4000, 1000, true, false),
            ],
        ),
        (
            "client-conflict",
            Pairing::ClientAttacksServer,
            vec![
                rec(cuni, 2000, 2000, false, false),
                rec(cuni, 2500, 100, false, true),
                rec(cuni, 0, 2000, false, false),
            ],
        ),
        (
            "client-control",
            Pairing::ClientAttacksServer,
            vec![
                Control(Body::StreamCredit(msg::StreamCredit {
                    stream_id: 1,
                    max_offset: 1 << 40,
                })),
                Control(Body::ResetStream(msg::ResetStream {
                    stream_id: 2,
                    error_code: 1,
                    final_offset: 10,
                })),
            ],
        ),
        (
            "primary-download",
            Pairing::PrimaryAttacksClient,
            vec![
                rec(suni, 0, 8000, false, false),
                rec(suni, 8000, 0, true, false),
            ],
        ),
        (
            "primary-past-window",
            Pairing::PrimaryAttacksClient,
            vec![rec(suni, WINDOW - 100, 200, false, true)],
        ),
        (
            "primary-add-path",
            Pairing::PrimaryAttacksClient,
            vec![Control(Body::AddPath(msg::AddPath {
                path_id: 1,
                address: "10.0.0.3:4433".into(),
                server_name: SERVER_NAME.into(),
                expiry_unix: 1,
                token: vec![1; 32].into(),
            }))],
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, pairing, ops)| Seed::new(name, HostileScript { pairing, ops }.encode()))
        .collect()
}
