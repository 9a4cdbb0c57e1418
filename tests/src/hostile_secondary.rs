//! A secondary server built directly on quinn-proto that joins a kwik
//! client's path and then writes what it was not given.
//!
//! A secondary may be a third party's machine: the client must trust it only
//! for the byte ranges the primary delegated to its path (PROTOCOL.md
//! §10.10). [`HostileSecondary`] tests that boundary from the outside. It
//! accepts the first QUIC connection (ALPN [`kwik_core::ALPN`], one
//! bidirectional stream allowed: the control stream), reads the client's
//! `Join` (the token is not checked: the node is hostile, not careful),
//! answers `Joined` with kwik's default limits and waits for a `Delegate`.
//! On the first one with a non-empty range it misbehaves once, as built:
//!
//! * [`past_credit`](HostileSecondary::past_credit): one record past the
//!   stream's flow-control credit, placed as the [`Overshoot`] says;
//! * [`injecting`](HostileSecondary::injecting): an [`Injection`] — bytes in
//!   a stream or a range it was not delegated, a FIN it has no right to,
//!   garbage on its control stream, a `ResetStream` of its delegation (with
//!   any final offset) or of another stream, or (as a positive control)
//!   exactly the delegated range.
//!
//! Everything else the client sends (credit updates, further delegations,
//! raw messages) is recorded and ignored.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{Delegate, Join, Joined, ResetStream, StreamCredit};
use kwik_core::{ALPN, SharedResource, StreamId as KStreamId};
use quinn_proto::{
    ConnectionError, Dir, Endpoint, Event, StreamEvent, StreamId, TransportConfig, VarInt,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::quic_driver::{Incoming, QuicDriver};
use crate::seeding::{seeded_endpoint_config, seeded_server_config};
use crate::trace::Trace;
use crate::wire::{
    RecordBuffer, SendQueue, control_record, data_header, decode_control, default_limits,
    garbage_record, push_data_record,
};

/// Where a [`HostileSecondary`] puts its record past the credit.
#[derive(Clone)]
pub enum Overshoot {
    /// `len` bytes of [`PAST_CREDIT_FILL`] at offset `max(c, a + window)`
    /// (see [`HostileSecondary::past_credit`]): past the credit the client
    /// granted when it forwarded the delegation *and* past any credit it can
    /// have granted by the time the record arrives, however far its reader
    /// got.
    Far {
        /// Payload length.
        len: u64,
    },
    /// A record of `len` bytes ending exactly one byte past the credit `c`:
    /// bytes `[c + 1 - len, c)` copied from `source` (the genuine bytes, so
    /// within the credit they are harmless duplicates) and one byte of
    /// [`PAST_CREDIT_FILL`] at offset `c`. Only certain to be refused when
    /// the client's credit cannot have grown since it forwarded the
    /// delegation, i.e. while its reader is paused.
    OneByte {
        /// Payload length (at least 1).
        len: u64,
        /// The genuine bytes of the stream.
        source: SharedResource,
    },
}

impl fmt::Debug for Overshoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overshoot::Far { len } => write!(f, "Far {{ len: {len} }}"),
            Overshoot::OneByte { len, .. } => write!(f, "OneByte {{ len: {len} }}"),
        }
    }
}

/// The record a [`HostileSecondary`] wrote past the client's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastCreditRecord {
    /// The logical stream it names.
    pub stream: KStreamId,
    /// The delegated range it answered.
    pub delegated: (u64, u64),
    /// The credit the client passed along with the delegation.
    pub credit: u64,
    /// The client's stream window (from its `Join`).
    pub window: u64,
    /// First logical offset of the record.
    pub offset: u64,
    /// Its payload length.
    pub len: u64,
    /// Offset of its first [`PAST_CREDIT_FILL`] byte (every byte from there
    /// to its end is one).
    pub fill_from: u64,
    /// When it was written.
    pub at: Instant,
}

impl PastCreditRecord {
    /// One past the record's last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Byte the made-up payload of a hostile secondary's records is made of (a
/// delivered run of it would fail the tests' payload verification).
pub const PAST_CREDIT_FILL: u8 = 0xee;

/// What a [`HostileSecondary`] built with
/// [`injecting`](HostileSecondary::injecting) does when the first non-empty
/// delegation `[a, b)` of stream `s` arrives.
#[derive(Clone)]
pub enum Injection {
    /// `len` bytes of [`PAST_CREDIT_FILL`] at `offset` of `stream`, whatever
    /// was delegated (another server stream, one never opened, one of the
    /// client's own streams).
    Write {
        /// The logical stream written into.
        stream: KStreamId,
        /// First offset.
        offset: u64,
        /// Payload length.
        len: u64,
    },
    /// `len` bytes of [`PAST_CREDIT_FILL`] at `b`, just past the delegated
    /// range of `s`.
    PastRange {
        /// Payload length.
        len: u64,
    },
    /// A zero-length record with `fin` at `offset` of `s` (a FIN the
    /// delegation does not carry).
    BareFin {
        /// Where the stream would end.
        offset: u64,
    },
    /// Exactly the delegated range `[a, b)` of `s` with the genuine bytes
    /// from `source`, in records no larger than the client's frame limit,
    /// the last one with `fin` if (and only if) the delegation has it: the
    /// positive control, which the client must accept.
    Honest {
        /// The genuine bytes of the stream.
        source: SharedResource,
    },
    /// A control record that is no protobuf on the path's control stream.
    GarbageOnControl,
    /// These bytes on the path's control stream (whole control records,
    /// see [`crate::wire::control_record`]).
    Control(bytes::Bytes),
    /// One-byte records of the genuine bytes (from `source`) at every other
    /// offset of the delegated range `[a, b)` — `a + 1`, `a + 3`, … —: every
    /// byte inside the delegation and right, but no two adjacent, so the
    /// client cannot coalesce them.
    GappedTiny {
        /// The genuine bytes of the stream.
        source: SharedResource,
    },
    /// The first `len` genuine bytes (from `source`) of the delegated range,
    /// `[a, a + len)`, then a `ResetStream` of `s` with `final_offset` (which
    /// may lie inside what it wrote): the path gives its delegation back.
    PartThenReset {
        /// The genuine bytes of the stream.
        source: SharedResource,
        /// Bytes written before the reset (at most one record's worth).
        len: u64,
        /// The final offset the reset names.
        final_offset: u64,
    },
    /// A `ResetStream` of `stream`, which is not the delegated one, on the
    /// control stream.
    ResetOther {
        /// The stream it names.
        stream: KStreamId,
    },
    /// Closes its connection with application code `code` and a reason
    /// phrase of `reason_len` ASCII bytes (QUIC carries up to about a
    /// datagram's worth).
    Close {
        /// The application error code (a kwik code or any other).
        code: u64,
        /// Length of the reason phrase.
        reason_len: usize,
    },
}

impl fmt::Debug for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Injection::Write {
                stream,
                offset,
                len,
            } => write!(f, "Write {{ {stream} at {offset}, {len} bytes }}"),
            Injection::PastRange { len } => write!(f, "PastRange {{ {len} bytes }}"),
            Injection::BareFin { offset } => write!(f, "BareFin {{ at {offset} }}"),
            Injection::Honest { .. } => f.write_str("Honest"),
            Injection::GarbageOnControl => f.write_str("GarbageOnControl"),
            Injection::Control(b) => write!(f, "Control({} bytes)", b.len()),
            Injection::GappedTiny { .. } => f.write_str("GappedTiny"),
            Injection::PartThenReset {
                len, final_offset, ..
            } => write!(
                f,
                "PartThenReset {{ {len} bytes, reset at {final_offset} }}"
            ),
            Injection::ResetOther { stream } => write!(f, "ResetOther {{ {stream} }}"),
            Injection::Close { code, reason_len } => {
                write!(f, "Close {{ code {code:#x}, {reason_len}-byte reason }}")
            }
        }
    }
}

/// What a [`HostileSecondary`] built with
/// [`injecting`](HostileSecondary::injecting) put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedRecord {
    /// The logical stream written into (the delegated one for
    /// [`Injection::GarbageOnControl`]).
    pub stream: KStreamId,
    /// First offset written (for [`Injection::Honest`], of the first
    /// record).
    pub offset: u64,
    /// Payload bytes written in all.
    pub len: u64,
    /// Whether the (last) record carried a FIN.
    pub fin: bool,
    /// The delegation that triggered it: stream, range and FIN.
    pub delegated: (KStreamId, u64, u64, bool),
    /// When it was queued.
    pub at: Instant,
}

impl InjectedRecord {
    /// One past the last byte written.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

enum Behaviour {
    PastCredit(Overshoot),
    Inject(Injection),
}

/// A hostile secondary server. See the [module docs](self).
///
/// Why [`Overshoot::Far`] is refused whatever the timing: the client's
/// credit for a stream never exceeds what its application read plus one
/// window, and its application cannot read past `a` before somebody writes
/// `[a, b)`, which only this node was asked to do. So `a + window` lies past
/// the credit the client granted when it forwarded the delegation
/// (`c ≤ a + window`) and past any it may have granted since.
pub struct HostileSecondary {
    behaviour: Behaviour,
    quic: QuicDriver,
    control: Option<StreamId>,
    lane: Option<StreamId>,
    outgoing: SendQueue,
    inbox: RecordBuffer,
    join: Option<Join>,
    /// The limits its `Joined` announces (kwik's defaults unless changed).
    joined_limits: Option<kwik_core::proto::common::Limits>,
    joined_at: Option<Instant>,
    delegates: Vec<Delegate>,
    credits: Vec<StreamCredit>,
    received: Vec<Body>,
    wire_errors: Vec<String>,
    record: Option<PastCreditRecord>,
    injected: Option<InjectedRecord>,
    refused_connections: u64,
    ended_at: Option<Instant>,
    had_connection: bool,
    vanished: bool,
    error: Option<ConnectionError>,
}

impl fmt::Debug for HostileSecondary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let behaviour = match &self.behaviour {
            Behaviour::PastCredit(o) => format!("past credit, {o:?}"),
            Behaviour::Inject(i) => format!("{i:?}"),
        };
        f.debug_struct("HostileSecondary")
            .field("addr", &self.quic.addr())
            .field("behaviour", &behaviour)
            .field("joined", &self.joined_at.is_some())
            .field("delegates", &self.delegates.len())
            .field("record", &self.record)
            .field("injected", &self.injected)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl HostileSecondary {
    fn new(addr: SocketAddr, seed: u64, cert: &DevCert, behaviour: Behaviour) -> Self {
        let mut transport = TransportConfig::default();
        // PROTOCOL.md §1: exactly one bidirectional stream, the control stream.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
        transport.max_concurrent_uni_streams(VarInt::from_u32(16));
        let crypto = Arc::new(cert.quic_server_config(&[ALPN]));
        let server = seeded_server_config(seed, crypto, Arc::new(transport));
        let endpoint = Endpoint::new(
            Arc::new(seeded_endpoint_config(seed)),
            Some(Arc::new(server)),
            true,
            None,
        );
        HostileSecondary {
            behaviour,
            quic: QuicDriver::new(addr, endpoint),
            control: None,
            lane: None,
            outgoing: SendQueue::default(),
            inbox: RecordBuffer::default(),
            join: None,
            joined_limits: Some(default_limits()),
            joined_at: None,
            delegates: Vec::new(),
            credits: Vec::new(),
            received: Vec::new(),
            wire_errors: Vec::new(),
            record: None,
            injected: None,
            refused_connections: 0,
            ended_at: None,
            had_connection: false,
            vanished: false,
            error: None,
        }
    }

    /// A hostile secondary at `addr` presenting `cert` that answers its
    /// first delegation with a record past the credit, placed as
    /// `overshoot` says (its length clamped to the client's frame limit).
    /// Every quinn random choice derives from `seed`.
    pub fn past_credit(addr: SocketAddr, seed: u64, cert: &DevCert, overshoot: Overshoot) -> Self {
        Self::new(addr, seed, cert, Behaviour::PastCredit(overshoot))
    }

    /// Announces `limits` in its `Joined` (`None`: a `Joined` without
    /// limits) instead of kwik's defaults.
    pub fn joined_limits(mut self, limits: Option<kwik_core::proto::common::Limits>) -> Self {
        self.joined_limits = limits;
        self
    }

    /// A hostile secondary at `addr` presenting `cert` that answers its
    /// first delegation as `injection` says. Every quinn random choice
    /// derives from `seed`.
    pub fn injecting(addr: SocketAddr, seed: u64, cert: &DevCert, injection: Injection) -> Self {
        Self::new(addr, seed, cert, Behaviour::Inject(injection))
    }

    /// The client's `Join`, once read.
    pub fn join_received(&self) -> Option<&Join> {
        self.join.as_ref()
    }

    /// When `Joined` was sent.
    pub fn joined_at(&self) -> Option<Instant> {
        self.joined_at
    }

    /// Every `Delegate` the client forwarded, in order.
    pub fn delegates(&self) -> &[Delegate] {
        &self.delegates
    }

    /// Every `StreamCredit` the client sent this source, in order.
    pub fn credits(&self) -> &[StreamCredit] {
        &self.credits
    }

    /// Other control messages received, in order.
    pub fn received(&self) -> &[Body] {
        &self.received
    }

    /// Bytes from the client this node could not parse (must stay empty).
    pub fn wire_errors(&self) -> &[String] {
        &self.wire_errors
    }

    /// The record past the credit, once written
    /// ([`past_credit`](Self::past_credit) nodes).
    pub fn record(&self) -> Option<&PastCreditRecord> {
        self.record.as_ref()
    }

    /// What was injected, once queued ([`injecting`](Self::injecting)
    /// nodes).
    pub fn injected(&self) -> Option<&InjectedRecord> {
        self.injected.as_ref()
    }

    /// Connections after the first (ignored).
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections
    }

    /// When the connection was lost (or [vanished](Self::vanished)).
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// True if the connection disappeared without this node seeing why (it
    /// drained inside one datagram's processing, e.g. on a stateless reset,
    /// and the driver dropped it before its `ConnectionLost` was polled).
    pub fn vanished(&self) -> bool {
        self.vanished
    }

    /// How the connection ended, if it did.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The code of the client's application close, if the connection ended
    /// with one.
    pub fn close_code(&self) -> Option<u64> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }

    /// The reason text of the client's application close.
    pub fn close_reason(&self) -> Option<String> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            _ => None,
        }
    }

    fn accept_streams(&mut self, now: Instant, trace: &mut Trace) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        while let Some(id) = conn.streams().accept(Dir::Bi) {
            if self.control.is_none() {
                self.control = Some(id);
            } else {
                trace.record(now, format_args!("hostile-secondary: extra bi stream {id}"));
            }
        }
        while let Some(id) = conn.streams().accept(Dir::Uni) {
            trace.record(now, format_args!("hostile-secondary: client lane {id}"));
            discard_stream(conn, id);
        }
    }

    fn read_control(&mut self, now: Instant, trace: &mut Trace) {
        let (Some(conn), Some(id)) = (self.quic.connection_mut(), self.control) else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            // End, reset or nothing more for now: whatever arrived is parsed.
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                self.inbox.push(&chunk.bytes);
            }
            let _ = chunks.finalize();
        }
        loop {
            let record = match self.inbox.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.wire_errors.push(e);
                    self.inbox.clear();
                    break;
                }
            };
            match decode_control(record) {
                Ok(Body::Join(join)) if self.join.is_none() => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile-secondary: join of path {} (window {:?})",
                            join.path_id,
                            join.limits.map(|l| l.stream_window)
                        ),
                    );
                    self.join = Some(join);
                    let joined = Joined {
                        limits: self.joined_limits,
                    };
                    self.outgoing.push(id, control_record(Body::Joined(joined)));
                    self.joined_at = Some(now);
                }
                Ok(Body::Delegate(d)) => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile-secondary: delegated {}..{} of stream {} (credit {}, fin {})",
                            d.offset,
                            d.offset.saturating_add(d.length),
                            d.stream_id,
                            d.credit,
                            d.fin
                        ),
                    );
                    self.delegates.push(d.clone());
                    match &self.behaviour {
                        Behaviour::PastCredit(_) => self.overshoot_credit(d, now, trace),
                        Behaviour::Inject(_) => self.inject(d, now, trace),
                    }
                }
                Ok(Body::StreamCredit(c)) => self.credits.push(c),
                Ok(body) => self.received.push(body),
                Err(e) => {
                    trace.record(now, format_args!("hostile-secondary: bad record: {e}"));
                    self.wire_errors.push(e);
                }
            }
        }
    }

    /// The lane this node writes records on, opened on first use.
    fn lane(&mut self) -> Option<StreamId> {
        if self.lane.is_none() {
            self.lane = self.quic.connection_mut()?.streams().open(Dir::Uni);
        }
        self.lane
    }

    /// On the first non-empty delegation: the record past the credit.
    fn overshoot_credit(&mut self, d: Delegate, now: Instant, trace: &mut Trace) {
        if self.record.is_some() || d.length == 0 {
            return;
        }
        let Behaviour::PastCredit(overshoot) = &self.behaviour else {
            return;
        };
        let overshoot = overshoot.clone();
        let Some(limits) = self.join.as_ref().and_then(|j| j.limits) else {
            return;
        };
        let Some(lane) = self.lane() else {
            trace.record(now, "hostile-secondary: the client allows no lane");
            return;
        };
        let window = limits.stream_window;
        let max_len = limits.max_frame_payload.max(1);
        let (offset, fill_from, payload) = match &overshoot {
            Overshoot::Far { len } => {
                let offset = d.credit.max(d.offset + window);
                let len = (*len).clamp(1, max_len);
                (offset, offset, vec![PAST_CREDIT_FILL; len as usize])
            }
            Overshoot::OneByte { len, source } => {
                let genuine = (*len).clamp(1, max_len).min(d.credit + 1) - 1;
                let offset = d.credit - genuine;
                let mut payload = source.read(offset, genuine as usize).to_vec();
                payload.resize(genuine as usize, PAST_CREDIT_FILL);
                payload.push(PAST_CREDIT_FILL);
                (offset, d.credit, payload)
            }
        };
        let len = payload.len() as u64;
        self.outgoing.push(
            lane,
            data_header(KStreamId(d.stream_id), offset, len, false),
        );
        self.outgoing.push(lane, payload);
        let record = PastCreditRecord {
            stream: KStreamId(d.stream_id),
            delegated: (d.offset, d.offset + d.length),
            credit: d.credit,
            window,
            offset,
            len,
            fill_from,
            at: now,
        };
        trace.record(
            now,
            format_args!(
                "hostile-secondary: writing {}..{} past credit {}",
                record.offset,
                record.end(),
                record.credit
            ),
        );
        self.record = Some(record);
    }

    /// On the first non-empty delegation: the scripted injection.
    fn inject(&mut self, d: Delegate, now: Instant, trace: &mut Trace) {
        if self.injected.is_some() || d.length == 0 {
            return;
        }
        let Behaviour::Inject(injection) = &self.behaviour else {
            return;
        };
        let injection = injection.clone();
        let stream = KStreamId(d.stream_id);
        let (a, b) = (d.offset, d.offset.saturating_add(d.length));
        let delegated = (stream, a, b, d.fin);
        if let Injection::GarbageOnControl | Injection::Control(_) = injection {
            let Some(control) = self.control else { return };
            let bytes = match injection {
                Injection::Control(bytes) => bytes,
                _ => garbage_record().into(),
            };
            self.outgoing.push(control, bytes);
            trace.record(now, "hostile-secondary: garbage on the control stream");
            self.injected = Some(InjectedRecord {
                stream,
                offset: 0,
                len: 0,
                fin: false,
                delegated,
                at: now,
            });
            return;
        }
        if let Injection::ResetOther { stream: other } = injection {
            let Some(control) = self.control else { return };
            let reset = ResetStream {
                stream_id: other.0,
                error_code: 3,
                final_offset: 0,
            };
            self.outgoing
                .push(control, control_record(Body::ResetStream(reset)));
            trace.record(now, format_args!("hostile-secondary: resetting {other}"));
            self.injected = Some(InjectedRecord {
                stream: other,
                offset: 0,
                len: 0,
                fin: false,
                delegated,
                at: now,
            });
            return;
        }
        if let Injection::Close { code, reason_len } = injection {
            let Some(conn) = self.quic.connection_mut() else {
                return;
            };
            conn.close(
                now,
                VarInt::from_u64(code).expect("a varint"),
                bytes::Bytes::from(vec![b'r'; reason_len]),
            );
            trace.record(
                now,
                format_args!("hostile-secondary: closing with {code:#x}, {reason_len}-byte reason"),
            );
            self.injected = Some(InjectedRecord {
                stream,
                offset: 0,
                len: 0,
                fin: false,
                delegated,
                at: now,
            });
            return;
        }
        let max_len = self
            .join
            .as_ref()
            .and_then(|j| j.limits)
            .map_or(1 << 16, |l| l.max_frame_payload.max(1));
        let Some(lane) = self.lane() else {
            trace.record(now, "hostile-secondary: the client allows no lane");
            return;
        };
        let mut out = BytesMut::new();
        let record = match injection {
            Injection::Write {
                stream,
                offset,
                len,
            } => {
                let fill = vec![PAST_CREDIT_FILL; len.min(max_len) as usize];
                push_data_record(&mut out, stream, offset, &fill, false);
                InjectedRecord {
                    stream,
                    offset,
                    len: fill.len() as u64,
                    fin: false,
                    delegated,
                    at: now,
                }
            }
            Injection::PastRange { len } => {
                let fill = vec![PAST_CREDIT_FILL; len.min(max_len) as usize];
                push_data_record(&mut out, stream, b, &fill, false);
                InjectedRecord {
                    stream,
                    offset: b,
                    len: fill.len() as u64,
                    fin: false,
                    delegated,
                    at: now,
                }
            }
            Injection::BareFin { offset } => {
                push_data_record(&mut out, stream, offset, &[], true);
                InjectedRecord {
                    stream,
                    offset,
                    len: 0,
                    fin: true,
                    delegated,
                    at: now,
                }
            }
            Injection::Honest { source } => {
                let mut at = a;
                loop {
                    let n = (b - at).min(max_len);
                    let chunk = source.read(at, n as usize);
                    assert_eq!(chunk.len() as u64, n, "the source covers the delegation");
                    let last = at + n == b;
                    push_data_record(&mut out, stream, at, &chunk, d.fin && last);
                    at += n;
                    if last {
                        break;
                    }
                }
                InjectedRecord {
                    stream,
                    offset: a,
                    len: b - a,
                    fin: d.fin,
                    delegated,
                    at: now,
                }
            }
            Injection::GappedTiny { source } => {
                let mut at = a + 1;
                let mut written = 0;
                while at < b {
                    let byte = source.read(at, 1);
                    push_data_record(&mut out, stream, at, &byte, false);
                    at += 2;
                    written += 1;
                }
                InjectedRecord {
                    stream,
                    offset: a + 1,
                    len: written,
                    fin: false,
                    delegated,
                    at: now,
                }
            }
            Injection::PartThenReset {
                source,
                len,
                final_offset,
            } => {
                let n = len.min(b - a).min(max_len);
                let chunk = source.read(a, n as usize);
                push_data_record(&mut out, stream, a, &chunk, false);
                // The reset goes on the control stream, after the lane's
                // record is queued (it may still overtake it on the wire).
                let Some(control) = self.control else { return };
                let reset = ResetStream {
                    stream_id: stream.0,
                    error_code: 3,
                    final_offset,
                };
                self.outgoing
                    .push(control, control_record(Body::ResetStream(reset)));
                InjectedRecord {
                    stream,
                    offset: a,
                    len: n,
                    fin: false,
                    delegated,
                    at: now,
                }
            }
            Injection::GarbageOnControl
            | Injection::Control(_)
            | Injection::Close { .. }
            | Injection::ResetOther { .. } => {
                unreachable!("handled above")
            }
        };
        trace.record(
            now,
            format_args!(
                "hostile-secondary: writing {}..{} of {} (fin {}) after delegation {}..{} (fin {})",
                record.offset,
                record.end(),
                record.stream,
                record.fin,
                a,
                b,
                d.fin
            ),
        );
        self.outgoing.push(lane, out.freeze());
        self.injected = Some(record);
    }
}

/// Reads and drops whatever `id` holds.
fn discard_stream(conn: &mut quinn_proto::Connection, id: StreamId) {
    let mut recv = conn.recv_stream(id);
    if let Ok(mut chunks) = recv.read(true) {
        while let Ok(Some(_)) = chunks.next(usize::MAX) {}
        let _ = chunks.finalize();
    }
}

impl Node for HostileSecondary {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        // Only the first connection is served.
        let accept = self.quic.is_empty() && self.ended_at.is_none();
        match self.quic.receive(now, remote, data, accept) {
            Incoming::Ignored | Incoming::Failed(_) => self.refused_connections += 1,
            Incoming::Accepted(_) => self.had_connection = true,
            Incoming::None => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.quic.poll_timeout()
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        while let Some(ev) = self.quic.connection_mut().and_then(|c| c.poll()) {
            match ev {
                Event::Connected => trace.record(now, "hostile-secondary: connected"),
                Event::ConnectionLost { reason } => {
                    trace.record(
                        now,
                        format_args!("hostile-secondary: connection lost: {reason}"),
                    );
                    self.ended_at = Some(now);
                    self.error = Some(reason);
                }
                Event::Stream(StreamEvent::Opened { .. }) => {
                    self.accept_streams(now, trace);
                    self.read_control(now, trace);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == self.control {
                        self.read_control(now, trace);
                    } else if let Some(conn) = self.quic.connection_mut() {
                        discard_stream(conn, id);
                    }
                }
                _ => {}
            }
        }
        if self.had_connection && self.ended_at.is_none() && self.quic.is_empty() {
            trace.record(
                now,
                "hostile-secondary: connection vanished (drained unseen)",
            );
            self.vanished = true;
            self.ended_at = Some(now);
        }
        if let Some(conn) = self.quic.connection_mut() {
            self.outgoing.pump(conn, now, trace);
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        self.error.is_some() || self.vanished || self.record.is_some() || self.injected.is_some()
    }
}
