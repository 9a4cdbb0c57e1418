//! Application operations on a session, called through the views: streams,
//! and the read-only path and counter queries.

use super::*;

impl Session {
    pub(crate) fn open(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        if let Some(reason) = self.closed_error() {
            return Err(OpenError::SessionClosed(reason));
        }
        if self.phase != Phase::Active || self.role == Role::Secondary {
            return Err(OpenError::NotEstablished);
        }
        self.streams.open(dir).ok_or(OpenError::Blocked)
    }

    /// Opens a stream the application declares idempotent: before the
    /// Welcome, while the session is in 0-RTT, its data rides in 0-RTT
    /// within the limits remembered from the server's last Welcome
    /// (§12.4). Once established, the same as [`Session::open`].
    pub(crate) fn open_idempotent(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        if self.phase == Phase::Active {
            return self.open(dir);
        }
        if let Some(reason) = self.closed_error() {
            return Err(OpenError::SessionClosed(reason));
        }
        if !self.early_data_open() || !self.streams.peer_limits_known() {
            return Err(OpenError::NotEstablished);
        }
        self.streams.open(dir).ok_or(OpenError::Blocked)
    }

    pub(crate) fn write(
        &mut self,
        stream: StreamId,
        data: &mut Bytes,
    ) -> Result<usize, WriteError> {
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(self.closed_write_error(stream));
        };
        let offset = send.offset;
        let written = self.write_range(stream, offset, data, false, false)?;
        if let Some(send) = self.streams.send_mut(stream) {
            send.offset = offset + written as u64;
        }
        Ok(written)
    }

    pub(super) fn closed_write_error(&self, stream: StreamId) -> WriteError {
        match self.closed_error() {
            Some(reason) => WriteError::SessionClosed(reason),
            None if self.streams.was_rejected(stream) => WriteError::ZeroRttRejected,
            None => WriteError::ClosedStream,
        }
    }

    /// Writes `data` at logical `offset` of `stream` as far as credit and
    /// the lane allow; `fin` ends the stream after the last byte of `data`.
    /// `urgent` writes go on the urgent lane, ahead of queued data.
    pub(crate) fn write_range(
        &mut self,
        stream: StreamId,
        offset: u64,
        data: &mut Bytes,
        fin: bool,
        urgent: bool,
    ) -> Result<usize, WriteError> {
        if let Some(reason) = self.closed_error() {
            return Err(WriteError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(WriteError::ZeroRttRejected);
        }
        // Before the Welcome only the idempotent streams of a session in
        // 0-RTT exist on this side; they may send within the remembered
        // limits (§12.4).
        if self.phase != Phase::Active && !self.early_data_open() {
            return Err(WriteError::Blocked);
        }
        let frame_limit = self.send_frame_limit;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end < crate::wire::OFFSET_LIMIT)
            .ok_or(WriteError::OutOfRange)?;
        let secondary = self.role == Role::Secondary;
        if secondary
            && !self
                .serving
                .get(&stream)
                .is_some_and(|grant| grant.permits(offset, end, fin))
        {
            return Err(WriteError::NotDelegated);
        }
        let send = self
            .streams
            .send_mut(stream)
            .ok_or(WriteError::ClosedStream)?;
        match send.state {
            SendState::Open => {}
            SendState::Stopped(code) => {
                self.streams.free_send(stream);
                self.serving.remove(&stream);
                return Err(WriteError::Stopped(code));
            }
            SendState::FinPending | SendState::Finished => return Err(WriteError::ClosedStream),
        }
        if send
            .final_size
            .is_some_and(|f| end > f || (fin && end != f))
        {
            return Err(WriteError::OutOfRange);
        }
        if data.is_empty() && !fin {
            return Ok(0);
        }
        let conn = self
            .conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session");
        let urgent_lane = if urgent {
            conn.lanes.urgent_lane(&mut conn.quic)
        } else {
            None
        };
        let lane = match urgent_lane.or(send.lane) {
            Some(lane) => lane,
            None => match conn.lanes.assign(&mut conn.quic, stream, send.priority) {
                Some(lane) => {
                    send.lane = Some(lane);
                    lane
                }
                None => {
                    send.want_writable = true;
                    return Err(WriteError::Blocked);
                }
            },
        };
        let mut written = 0;
        let mut offset = offset;
        let mut fin_sent = false;
        loop {
            let room = send.credit.saturating_sub(offset);
            if (room == 0 && !data.is_empty()) || !conn.lanes.ready(lane, stream) {
                break;
            }
            let n = (data.len() as u64).min(room).min(frame_limit) as usize;
            let last = n == data.len();
            let header = encode_data_header(stream, offset, n as u64, fin && last);
            let payload = data.slice(..n);
            match conn
                .lanes
                .write_record(&mut conn.quic, lane, stream, header, payload)
            {
                Ok(()) => {
                    bytes::Buf::advance(data, n);
                    offset += n as u64;
                    written += n;
                    if last {
                        fin_sent = fin;
                        break;
                    }
                }
                Err(LaneBlocked::Full) => break,
                Err(LaneBlocked::Broken) => {
                    if written > 0 {
                        break;
                    }
                    return Err(WriteError::ClosedStream);
                }
            }
        }
        self.stats.bytes_sent += written as u64;
        send.high = send.high.max(offset);
        if fin_sent {
            send.final_size = Some(offset);
        }
        if written == 0 && !fin_sent {
            send.want_writable = true;
            return Err(WriteError::Blocked);
        }
        if secondary {
            self.wrote_delegated(stream, offset - written as u64..offset, fin_sent);
        }
        Ok(written)
    }

    pub(crate) fn finish(&mut self, stream: StreamId) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(StreamError::ZeroRttRejected);
        }
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(StreamError::ClosedStream);
        };
        match send.state {
            SendState::Open => send.state = SendState::FinPending,
            SendState::Stopped(code) => {
                // As in QUIC, a stop that lost nothing is no failure of the
                // finish: every byte written had reached the reader.
                let delivered = send.stop_delivered;
                self.streams.free_send(stream);
                return if delivered {
                    Ok(())
                } else {
                    Err(StreamError::Stopped(code))
                };
            }
            SendState::FinPending | SendState::Finished => return Err(StreamError::ClosedStream),
        }
        self.try_send_fin(stream);
        Ok(())
    }

    pub(super) fn try_send_fin(&mut self, stream: StreamId) {
        let Some(send) = self.streams.send_mut(stream) else {
            return;
        };
        let conn = self
            .conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session");
        let lane = match send.lane {
            Some(lane) => lane,
            None => match conn.lanes.assign(&mut conn.quic, stream, send.priority) {
                Some(lane) => {
                    send.lane = Some(lane);
                    lane
                }
                None => return,
            },
        };
        if !conn.lanes.ready(lane, stream) {
            return;
        }
        let header = encode_data_header(stream, send.offset, 0, true);
        if conn
            .lanes
            .write_record(&mut conn.quic, lane, stream, header, Bytes::new())
            .is_ok()
        {
            let released = self.streams.fin_written(stream);
            if let Some(lane) = released.lane {
                self.main_conn().lanes.release(lane);
            }
        }
    }

    /// The sending priority of `stream`.
    pub(crate) fn priority(&self, stream: StreamId) -> Result<i32, StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(StreamError::ZeroRttRejected);
        }
        self.streams
            .priority(stream)
            .ok_or(StreamError::ClosedStream)
    }

    /// Sets the sending priority of `stream` (clamped to
    /// [`MAX_STREAM_PRIORITY`](crate::MAX_STREAM_PRIORITY)).
    pub(crate) fn set_priority(
        &mut self,
        stream: StreamId,
        priority: i32,
    ) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(StreamError::ZeroRttRejected);
        }
        if self.streams.send_mut(stream).is_none() {
            return Err(StreamError::ClosedStream);
        }
        self.reprioritize(stream, priority);
        Ok(())
    }

    /// Gives `stream` (which has a sending half) the priority `priority`:
    /// its queued jobs move in the queue, and if it holds a lane of another
    /// priority it leaves it, taking a lane of the new priority with its
    /// next record (the record it started stays whole on the old lane; see
    /// [`crate::lanes`]). A stream that waited to write is woken to write
    /// there.
    pub(super) fn reprioritize(&mut self, stream: StreamId, priority: i32) {
        let priority = clamp_priority(priority);
        let Some(send) = self.streams.send_mut(stream) else {
            return;
        };
        if send.priority == priority {
            return;
        }
        send.priority = priority;
        let moves = matches!(send.state, SendState::Open | SendState::FinPending);
        let wake = send.want_writable || send.state == SendState::FinPending;
        let old = send.lane.filter(|_| moves);
        if old.is_some() {
            send.lane = None;
        }
        let mut touched = false;
        for job in self.jobs.iter_mut().filter(|j| j.stream == stream) {
            job.priority = priority;
            touched = true;
        }
        if touched {
            self.sort_jobs();
        }
        let lanes = &mut self.main_conn().lanes;
        if let Some(lane) = old {
            lanes.release(lane);
        }
        // A blocked writer may find room at its new priority (a lane of it
        // exists, or it left a full one): it is told so either way.
        if wake && moves {
            lanes.wake_soon(stream);
        }
    }

    pub(crate) fn reset(&mut self, stream: StreamId, code: u64) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(StreamError::ZeroRttRejected);
        }
        let result = self.streams.reset(stream, code);
        if self.role == Role::Secondary {
            // The delegation is given back (§10.4): nothing of it is
            // written from here on, and the client has the primary
            // re-assign what did not arrive.
            self.serving.remove(&stream);
            self.jobs.retain(|j| j.stream != stream);
        }
        let released = result?;
        self.ledger.forget(stream);
        if let Some(lane) = released.lane {
            self.main_conn().lanes.release(lane);
        }
        Ok(())
    }

    pub(crate) fn read(
        &mut self,
        stream: StreamId,
        max: usize,
    ) -> Result<Option<Bytes>, ReadError> {
        if let Some(reason) = self.closed_error() {
            return Err(ReadError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(ReadError::ZeroRttRejected);
        }
        self.streams.read(stream, max)
    }

    pub(crate) fn stop(&mut self, stream: StreamId, code: u64) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.streams.was_rejected(stream) {
            return Err(StreamError::ZeroRttRejected);
        }
        // Every source of the stream is told: they are listed before the
        // receiving half goes, as the grants that name them are swept with
        // it (§10.4).
        let writers = self.writers_of(stream);
        let Some(stop) = self.streams.stop(stream, code)? else {
            return Ok(());
        };
        for path in writers {
            if let Some(conn) = self.conns.get_mut(&path)
                && conn.joined
                && !conn.closed
            {
                conn.send(stop.clone());
            }
        }
        self.main_conn().send(stop);
        Ok(())
    }

    // ----- multi-server operations -----

    pub(super) fn path_usable(&self, path: PathId) -> Result<(), PathError> {
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        let info = self.paths.get(&path).ok_or(PathError::NotFound(path))?;
        match info.state {
            PathState::Active | PathState::Degraded => Ok(()),
            PathState::Initializing | PathState::Handshaking => Err(PathError::NotReady(path)),
            // Being removed: it only drains what it holds.
            PathState::Closing => Err(PathError::Dead(path)),
            PathState::Dead | PathState::Closed | PathState::Failed => Err(PathError::Dead(path)),
        }
    }

    /// Paths known to this side, refreshed from the live connections.
    pub(crate) fn paths(&mut self) -> Vec<PathInfo> {
        let paths: Vec<PathId> = self.conns.keys().copied().collect();
        for path in paths {
            self.refresh_path_info(path);
        }
        self.paths.values().cloned().collect()
    }

    /// Copies `path`'s connection figures into its [`PathInfo`]; done again
    /// just before the connection goes, so that a dead or removed path keeps
    /// what it carried.
    pub(super) fn refresh_path_info(&mut self, path: PathId) {
        let (Some(conn), Some(info)) = (self.conns.get(&path), self.paths.get_mut(&path)) else {
            return;
        };
        let stats = conn.quic.stats();
        info.rtt = conn.quic.rtt();
        info.bytes_sent = stats.udp_tx.bytes;
        info.bytes_received = stats.udp_rx.bytes;
        info.lost_packets = stats.path.lost_packets;
        info.cwnd = stats.path.cwnd;
        info.throughput = conn.health.throughput();
        info.last_active = info.last_active.max(conn.last_rx);
    }

    /// The peer's address on the primary connection.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.conns[&PathId::PRIMARY].quic.remote_address()
    }

    /// Secondary: the path id the primary assigned to this connection.
    pub(crate) fn joined_path(&self) -> Option<PathId> {
        (self.role == Role::Secondary).then_some(self.joined_path)
    }

    pub(crate) fn stats(&self) -> SessionStats {
        let conn = &self.conns[&PathId::PRIMARY];
        let q = conn.quic.stats();
        SessionStats {
            buffered: self.streams.buffered(),
            open_streams: self.streams.len() as u64,
            lanes_opened: conn.lanes.count() as u64,
            rtt_us: conn.quic.rtt().as_micros() as u64,
            datagrams_sent: q.udp_tx.datagrams,
            lost_packets: q.path.lost_packets,
            cwnd: q.path.cwnd,
            ..self.stats
        }
    }
}
