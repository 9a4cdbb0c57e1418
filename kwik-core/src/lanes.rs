//! The pool of real QUIC streams ("lanes") that carries logical streams.
//!
//! A sender multiplexes up to `streams_per_lane` logical streams onto each of
//! its unidirectional QUIC streams. Records are never interleaved mid-record:
//! when quinn-proto accepts only part of a record, the rest waits in the
//! lane's `tail` and nothing else is written to that lane until it is out.
//! The receiver always drains every lane completely (per-logical-stream credit
//! bounds what it buffers), so a slow reader of one logical stream can never
//! hold up another that shares its lane.
//!
//! **Priorities.** Every lane has one priority, and a logical stream only
//! shares a lane with streams of its own priority: quinn-proto sends the
//! QUIC stream of higher priority first, so a high-priority record never
//! waits behind a lower one's bytes in a shared lane or in its tail. A lane
//! whose users all left may be re-tuned to another priority, but only when
//! the peer allows no new lane: bytes of its old users may still wait in
//! quinn-proto, and would go first. Only when the peer allows no new lane
//! and none is idle does a stream share the lane of the nearest priority
//! (an inversion bounded by that lane's queue, where waiting could
//! deadlock an application). A stream whose priority changes leaves
//! its lane and takes one of the new priority for its next record; the
//! record it had started finishes on the old lane (records are whole on
//! one lane, and the receiver orders a stream's records by offset).

use std::collections::VecDeque;

use bytes::Bytes;
use quinn_proto::{
    Connection, Dir as QDir, StreamId as QStreamId, VarInt, WriteError as QWriteError,
};

use crate::ids::StreamId;

/// Priority of the control stream: the top of quinn-proto's range, so
/// credit and control messages never queue behind data of any priority.
pub(crate) const CONTROL_PRIORITY: i32 = i32::MAX;

/// Priority of the urgent lane: below the control stream and above every
/// logical stream's priority, so that an overdue range (lost elsewhere, or
/// hedged) does not wait behind queued work.
const URGENT_PRIORITY: i32 = i32::MAX - 1;

/// Highest priority a logical stream may have
/// ([`StreamView::set_priority`](crate::StreamView::set_priority) clamps to
/// it): the two values above are kwik's own, for the control stream and the
/// urgent lane.
pub const MAX_STREAM_PRIORITY: i32 = i32::MAX - 2;

/// A logical stream's priority as kwik uses it: clamped below kwik's own
/// streams (PROTOCOL.md §14).
pub(crate) fn clamp_priority(priority: i32) -> i32 {
    priority.min(MAX_STREAM_PRIORITY)
}

#[derive(Debug)]
pub(crate) struct SendLane {
    pub id: QStreamId,
    /// The priority of every logical stream on it (and of its QUIC stream).
    priority: i32,
    /// Remainder of a partially accepted record.
    tail: VecDeque<Bytes>,
    /// Logical streams currently assigned.
    users: usize,
    /// Logical streams waiting for the tail to drain.
    waiters: Vec<StreamId>,
}

impl SendLane {
    fn new(id: QStreamId, priority: i32) -> Self {
        Self {
            id,
            priority,
            tail: VecDeque::new(),
            users: 0,
            waiters: Vec::new(),
        }
    }
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

/// Where a logical stream of some priority goes when no lane of its
/// priority has room and no new lane can be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// The least used lane of its priority, beyond `streams_per_lane`.
    Crowd(usize),
    /// An idle lane of another priority, re-tuned to this one.
    Retune(usize),
    /// The busy lane of the nearest priority, shared: a bounded priority
    /// inversion, rather than a stream that waits until streams of other
    /// priorities finish (an application may finish them only after this
    /// one's answer).
    Share(usize),
    /// No lane at all yet: wait for one.
    Wait,
}

#[derive(Debug, Default)]
pub(crate) struct Lanes {
    send: Vec<SendLane>,
    /// Index of the urgent lane, once opened.
    urgent: Option<usize>,
    per_lane: usize,
    /// Logical streams waiting for any lane to exist.
    waiting_for_lane: Vec<StreamId>,
    /// Logical streams to wake on the next drive: their lane took more, a
    /// lane was allowed or fell idle, or they left their lane for another
    /// priority.
    wake: Vec<StreamId>,
}

impl Lanes {
    pub(crate) fn new(per_lane: usize) -> Self {
        Self {
            send: Vec::new(),
            urgent: None,
            per_lane: per_lane.max(1),
            waiting_for_lane: Vec::new(),
            wake: Vec::new(),
        }
    }

    /// The lane overdue ranges of any logical stream take: opened on first
    /// use, with a priority above every logical stream's. No logical stream
    /// is assigned to it. `None` while the peer allows no new lane.
    pub(crate) fn urgent_lane(&mut self, conn: &mut Connection) -> Option<usize> {
        if self.urgent.is_none() {
            let id = conn.streams().open(QDir::Uni)?;
            let _ = conn.send_stream(id).set_priority(URGENT_PRIORITY);
            self.send.push(SendLane::new(id, URGENT_PRIORITY));
            self.urgent = Some(self.send.len() - 1);
        }
        self.urgent
    }

    /// The least used lane of `priority` (lowest index among equals), with
    /// room for one more logical stream if `with_room`.
    fn least_used(&self, priority: i32, with_room: bool) -> Option<usize> {
        (0..self.send.len())
            .filter(|&i| Some(i) != self.urgent && self.send[i].priority == priority)
            .filter(|&i| !with_room || self.send[i].users < self.per_lane)
            .min_by_key(|&i| self.send[i].users)
    }

    /// Where a stream of `priority` goes when the peer allows no new lane.
    fn fallback(&self, priority: i32) -> Fallback {
        if let Some(i) = self.least_used(priority, false) {
            return Fallback::Crowd(i);
        }
        let bulk = || (0..self.send.len()).filter(|&i| Some(i) != self.urgent);
        if let Some(i) = bulk().find(|&i| self.send[i].users == 0) {
            return Fallback::Retune(i);
        }
        bulk()
            .min_by_key(|&i| {
                let distance = (i64::from(self.send[i].priority) - i64::from(priority)).abs();
                (distance, self.send[i].users)
            })
            .map_or(Fallback::Wait, Fallback::Share)
    }

    /// Picks a lane of `priority` for a logical stream: the least used lane
    /// of that priority with room, else a new lane, else the least used lane
    /// of that priority, else an idle lane re-tuned to it, else the lane of
    /// the nearest priority. `None` (the stream waits for a lane) while no
    /// lane exists at all.
    pub(crate) fn assign(
        &mut self,
        conn: &mut Connection,
        stream: StreamId,
        priority: i32,
    ) -> Option<usize> {
        let chosen = match self.least_used(priority, true) {
            Some(i) => Some(i),
            None => match conn.streams().open(QDir::Uni) {
                Some(id) => {
                    let _ = conn.send_stream(id).set_priority(priority);
                    self.send.push(SendLane::new(id, priority));
                    Some(self.send.len() - 1)
                }
                None => match self.fallback(priority) {
                    Fallback::Crowd(i) | Fallback::Share(i) => Some(i),
                    Fallback::Retune(i) => {
                        let lane = &mut self.send[i];
                        lane.priority = priority;
                        let _ = conn.send_stream(lane.id).set_priority(priority);
                        Some(i)
                    }
                    Fallback::Wait => None,
                },
            },
        };
        match chosen {
            Some(i) => self.send[i].users += 1,
            None => {
                if !self.waiting_for_lane.contains(&stream) {
                    self.waiting_for_lane.push(stream);
                }
            }
        }
        chosen
    }

    /// A logical stream stopped using `lane`. A lane falling idle may be
    /// re-tuned for the streams that wait for one: they are woken.
    pub(crate) fn release(&mut self, lane: usize) {
        if let Some(l) = self.send.get_mut(lane) {
            l.users = l.users.saturating_sub(1);
            if l.users == 0 && !self.waiting_for_lane.is_empty() {
                self.wake.append(&mut self.waiting_for_lane);
            }
        }
    }

    /// Wakes `stream` on the next drive (it left its lane for another
    /// priority while it waited to write).
    pub(crate) fn wake_soon(&mut self, stream: StreamId) {
        self.wake.push(stream);
    }

    /// The logical streams to wake now, all lanes' together, so that the
    /// session wakes them by priority (a stream may be listed twice; waking
    /// is idempotent).
    pub(crate) fn take_wakes(&mut self) -> Vec<StreamId> {
        std::mem::take(&mut self.wake)
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

    /// quinn-proto says `id` can take more: pushes out its tail. If the lane
    /// is free again, the logical streams that waited on it are to be
    /// woken ([`Lanes::take_wakes`]).
    pub(crate) fn on_writable(&mut self, conn: &mut Connection, id: QStreamId) {
        let Some(l) = self.send.iter_mut().find(|l| l.id == id) else {
            return;
        };
        flush_tail(conn, l);
        if l.tail.is_empty() {
            self.wake.append(&mut l.waiters);
        }
    }

    /// A new lane may be opened: the streams that waited for one are to be
    /// woken ([`Lanes::take_wakes`]).
    pub(crate) fn on_lane_available(&mut self) {
        self.wake.append(&mut self.waiting_for_lane);
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
        self.wake.clear();
    }

    /// Forgets every lane (quinn-proto forgot the streams: 0-RTT was
    /// rejected). The logical streams on them are forgotten by the session.
    pub(crate) fn forget(&mut self) {
        self.send.clear();
        self.urgent = None;
        self.waiting_for_lane.clear();
        self.wake.clear();
    }

    /// Number of lanes opened by this side.
    pub(crate) fn count(&self) -> usize {
        self.send.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool with lanes of the given (priority, users), as if opened.
    fn pool(per_lane: usize, lanes: &[(i32, usize)]) -> Lanes {
        let mut l = Lanes::new(per_lane);
        for (i, &(priority, users)) in lanes.iter().enumerate() {
            let id = QStreamId::new(quinn_proto::Side::Client, QDir::Uni, i as u64);
            let mut lane = SendLane::new(id, priority);
            lane.users = users;
            l.send.push(lane);
        }
        l
    }

    #[test]
    fn a_stream_only_joins_a_lane_of_its_own_priority() {
        let l = pool(4, &[(0, 1), (5, 3), (0, 0), (5, 1)]);
        // Least used lane of the priority, lowest index among equals.
        assert_eq!(l.least_used(0, true), Some(2));
        assert_eq!(l.least_used(5, true), Some(3));
        // No lane of priority 7: a new one is opened (or the fallback).
        assert_eq!(l.least_used(7, true), None);
        // Full lanes of the priority are not picked while a new lane may be.
        let full = pool(2, &[(1, 2), (0, 0)]);
        assert_eq!(full.least_used(1, true), None);
    }

    #[test]
    fn without_new_lanes_a_stream_crowds_its_priority_then_retunes_an_idle_lane() {
        // A lane of its priority, full: crowded rather than mixed.
        let l = pool(1, &[(0, 0), (3, 1), (3, 2)]);
        assert_eq!(l.fallback(3), Fallback::Crowd(1));
        // None of its priority: the first idle lane is re-tuned.
        assert_eq!(l.fallback(9), Fallback::Retune(0));
        // Nothing idle: it shares the lane of the nearest priority rather
        // than wait for other streams to finish.
        let busy = pool(1, &[(0, 1), (3, 1), (12, 4)]);
        assert_eq!(busy.fallback(9), Fallback::Share(2));
        assert_eq!(busy.fallback(1), Fallback::Share(0));
        // No lane at all: it waits for one.
        assert_eq!(pool(1, &[]).fallback(0), Fallback::Wait);
    }

    #[test]
    fn the_urgent_lane_is_never_assigned_and_idle_lanes_wake_waiters() {
        let mut l = pool(4, &[(URGENT_PRIORITY, 0), (0, 1)]);
        l.urgent = Some(0);
        assert_eq!(l.least_used(URGENT_PRIORITY, false), None);
        assert_eq!(l.fallback(2), Fallback::Share(1), "never the urgent lane");
        let waiting = StreamId(8);
        l.waiting_for_lane.push(waiting);
        l.release(1);
        assert_eq!(l.take_wakes(), vec![waiting]);
        assert_eq!(l.fallback(2), Fallback::Retune(1));
    }

    #[test]
    fn priorities_are_clamped_below_kwiks_own_streams() {
        assert_eq!(clamp_priority(i32::MAX), MAX_STREAM_PRIORITY);
        assert_eq!(clamp_priority(-7), -7);
        const { assert!(MAX_STREAM_PRIORITY < URGENT_PRIORITY && URGENT_PRIORITY < CONTROL_PRIORITY) };
    }
}
