//! The pool of real QUIC streams ("lanes") that carries logical streams.
//!
//! A sender multiplexes up to `streams_per_lane` logical streams onto each of
//! its unidirectional QUIC streams. Records are never interleaved mid-record:
//! when quinn-proto accepts only part of a record, the rest waits in the
//! lane's `tail` and nothing else is written to that lane until it is out.
//! The receiver always drains every lane completely (per-logical-stream credit
//! bounds what it buffers), so a slow reader of one logical stream can never
//! hold up another that shares its lane.

use std::collections::VecDeque;

use bytes::Bytes;
use quinn_proto::{
    Connection, Dir as QDir, StreamId as QStreamId, VarInt, WriteError as QWriteError,
};

use crate::ids::StreamId;

/// Priority of lanes relative to the control stream (which gets
/// [`CONTROL_PRIORITY`]), so credit and control messages never queue behind
/// bulk data.
pub(crate) const LANE_PRIORITY: i32 = 0;

/// Priority of the urgent lane: above bulk lanes, so that an overdue range
/// (lost elsewhere, or hedged) does not wait behind queued work.
const URGENT_PRIORITY: i32 = 1;

/// Priority of the control stream.
pub(crate) const CONTROL_PRIORITY: i32 = 2;

#[derive(Debug)]
pub(crate) struct SendLane {
    pub id: QStreamId,
    /// Remainder of a partially accepted record.
    tail: VecDeque<Bytes>,
    /// Logical streams currently assigned.
    users: usize,
    /// Logical streams waiting for the tail to drain.
    waiters: Vec<StreamId>,
}

/// Why a record could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneBlocked {
    /// The lane or the connection is full; retry after `Writable`.
    Full,
    /// The lane is unusable (stopped by the peer, connection closing).
    Broken,
}

/// Offers the lane's tail to quinn-proto until it is gone or refused (a
/// refusal arms quinn-proto's `Writable` wake-up for the lane).
fn flush_tail(conn: &mut Connection, lane: &mut SendLane) {
    while !lane.tail.is_empty() {
        match conn
            .send_stream(lane.id)
            .write_chunks(lane.tail.make_contiguous())
        {
            Ok(written) => {
                lane.tail.drain(..written.chunks);
            }
            Err(_) => break,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Lanes {
    send: Vec<SendLane>,
    /// Index of the urgent lane, once opened.
    urgent: Option<usize>,
    per_lane: usize,
    /// Logical streams waiting for any lane to exist.
    waiting_for_lane: Vec<StreamId>,
}

impl Lanes {
    pub(crate) fn new(per_lane: usize) -> Self {
        Self {
            send: Vec::new(),
            urgent: None,
            per_lane: per_lane.max(1),
            waiting_for_lane: Vec::new(),
        }
    }

    /// The lane overdue ranges of any logical stream take: opened on first
    /// use, with a priority above the bulk lanes. No logical stream is
    /// assigned to it. `None` while the peer allows no new lane.
    pub(crate) fn urgent_lane(&mut self, conn: &mut Connection) -> Option<usize> {
        if self.urgent.is_none() {
            let id = conn.streams().open(QDir::Uni)?;
            let _ = conn.send_stream(id).set_priority(URGENT_PRIORITY);
            self.send.push(SendLane {
                id,
                tail: VecDeque::new(),
                users: 0,
                waiters: Vec::new(),
            });
            self.urgent = Some(self.send.len() - 1);
        }
        self.urgent
    }

    /// Picks a lane for a logical stream: the least used lane with room,
    /// else a new lane, else the least used lane of all.
    pub(crate) fn assign(&mut self, conn: &mut Connection, stream: StreamId) -> Option<usize> {
        let urgent = self.urgent;
        let least = (0..self.send.len())
            .filter(|&i| Some(i) != urgent)
            .min_by_key(|&i| self.send[i].users);
        let chosen = match least {
            Some(i) if self.send[i].users < self.per_lane => Some(i),
            _ => match conn.streams().open(QDir::Uni) {
                Some(id) => {
                    let _ = conn.send_stream(id).set_priority(LANE_PRIORITY);
                    self.send.push(SendLane {
                        id,
                        tail: VecDeque::new(),
                        users: 0,
                        waiters: Vec::new(),
                    });
                    Some(self.send.len() - 1)
                }
                None => least,
            },
        };
        match chosen {
            Some(i) => self.send[i].users += 1,
            None => self.waiting_for_lane.push(stream),
        }
        chosen
    }

    /// A logical stream stopped using `lane`.
    pub(crate) fn release(&mut self, lane: usize) {
        if let Some(l) = self.send.get_mut(lane) {
            l.users = l.users.saturating_sub(1);
        }
    }

    /// True if a new record may start on `lane` now; otherwise registers
    /// `stream` to be woken when it can.
    pub(crate) fn ready(&mut self, lane: usize, stream: StreamId) -> bool {
        let l = &mut self.send[lane];
        if l.tail.is_empty() {
            return true;
        }
        if !l.waiters.contains(&stream) {
            l.waiters.push(stream);
        }
        false
    }

    /// Writes one whole record (header + payload). On `Ok`, the record is
    /// committed (part of it may wait in the tail).
    pub(crate) fn write_record(
        &mut self,
        conn: &mut Connection,
        lane: usize,
        stream: StreamId,
        header: Bytes,
        payload: Bytes,
    ) -> Result<(), LaneBlocked> {
        let l = &mut self.send[lane];
        debug_assert!(l.tail.is_empty());
        let mut chunks = [header, payload];
        match conn.send_stream(l.id).write_chunks(&mut chunks) {
            Ok(written) => {
                l.tail.extend(
                    chunks[written.chunks..]
                        .iter()
                        .filter(|c| !c.is_empty())
                        .cloned(),
                );
                if !l.tail.is_empty() {
                    if !l.waiters.contains(&stream) {
                        l.waiters.push(stream);
                    }
                    // A partial write does not arm quinn-proto's wake-up; only
                    // a refused one does, so offer the rest right away.
                    flush_tail(conn, l);
                }
                Ok(())
            }
            Err(QWriteError::Blocked) => {
                if !l.waiters.contains(&stream) {
                    l.waiters.push(stream);
                }
                Err(LaneBlocked::Full)
            }
            Err(_) => Err(LaneBlocked::Broken),
        }
    }

    /// quinn-proto says `id` can take more: pushes out its tail. Returns the
    /// logical streams to wake if the lane is free again.
    pub(crate) fn on_writable(&mut self, conn: &mut Connection, id: QStreamId) -> Vec<StreamId> {
        let Some(l) = self.send.iter_mut().find(|l| l.id == id) else {
            return Vec::new();
        };
        flush_tail(conn, l);
        if l.tail.is_empty() {
            std::mem::take(&mut l.waiters)
        } else {
            Vec::new()
        }
    }

    /// A new lane may be opened: the streams that waited for one.
    pub(crate) fn on_lane_available(&mut self) -> Vec<StreamId> {
        std::mem::take(&mut self.waiting_for_lane)
    }

    /// Resets every lane and forgets what waited to be written on them: the
    /// connection is closing.
    pub(crate) fn reset_all(&mut self, conn: &mut Connection) {
        for lane in &mut self.send {
            lane.tail.clear();
            lane.waiters.clear();
            let _ = conn.send_stream(lane.id).reset(VarInt::from_u32(0));
        }
        self.waiting_for_lane.clear();
    }

    /// Forgets every lane (quinn-proto forgot the streams: 0-RTT was
    /// rejected). The logical streams on them are forgotten by the session.
    pub(crate) fn forget(&mut self) {
        self.send.clear();
        self.urgent = None;
        self.waiting_for_lane.clear();
    }

    /// Number of lanes opened by this side.
    pub(crate) fn count(&self) -> usize {
        self.send.len()
    }
}
