//! Driving a session: digesting what quinn-proto reported, reading the
//! control stream and the lanes, dispatching control messages by role,
//! firing kwik's timers, flushing what is due, and closing on violations.

use super::*;

impl Session {
    /// Digests everything quinn-proto reported, fires timers, sends what is due.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) {
        self.clock = ctx.now;
        for conn in self.conns.values_mut() {
            conn.apply_close(ctx.now);
        }
        for (path, reason) in std::mem::take(&mut self.dial_failures) {
            let failure = PathFailure {
                code: ErrorCode::PathDead,
                reason,
            };
            self.set_path_state(path, PathState::Failed, Some(failure), ctx);
        }
        for i in 0..self.conns.len() {
            let Some(&path) = self.conns.keys().nth(i) else {
                break;
            };
            let _span =
                tracing::debug_span!(target: crate::log::SPANS, "kwik_path", %path).entered();
            while let Some(event) = self.conns.get_mut(&path).and_then(|c| c.quic.poll()) {
                if let Err(v) = self.on_quinn_event(path, event, ctx) {
                    self.fail_path(path, v, ctx);
                }
            }
        }
        // Writers whose lanes took more, that waited for a lane and may take
        // one now, or left their lane for another priority: all at once, so
        // that the highest priorities hear of it first.
        let woken: Vec<StreamId> = self
            .conns
            .values_mut()
            .flat_map(|c| c.lanes.take_wakes())
            .collect();
        self.wake_writers(woken, ctx);
        self.on_timers(ctx);
        self.run_transfers(ctx);
        self.pump_jobs();
        self.flush(ctx);
        // The endpoint refreshes the deadline once it settled the
        // connections' endpoint events.
    }

    /// Recomputes the next deadline after the connections changed.
    pub(crate) fn refresh_deadline(&mut self) {
        self.update_deadline();
    }

    pub(super) fn update_deadline(&mut self) {
        let quic = self
            .conns
            .values_mut()
            .filter_map(|c| c.quic.poll_timeout())
            .min();
        let kwik = self.kwik_deadline();
        self.deadline = match (quic, kwik) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The earliest of kwik's own timers.
    pub(super) fn kwik_deadline(&self) -> Option<Instant> {
        let closes = self.conns.values().filter_map(|c| c.close_due()).min();
        if self.phase == Phase::Closed {
            return closes;
        }
        let mut next = closes
            .into_iter()
            .chain(self.ack_due)
            .chain(self.acks_apply_at)
            .min();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for d in self.add_deadlines.values() {
            consider(*d);
        }
        if let Some(t) = self.liveness_deadline(self.clock) {
            consider(t);
        }
        if let Some(t) = self.next_retry() {
            consider(t);
        }
        if self.role == Role::Primary
            && self.phase == Phase::Active
            && let Some(t) = self.scaler.as_ref().and_then(|s| s.deadline())
        {
            consider(t);
        }
        for (path, cp) in &self.client_paths {
            if let Some(t) = cp.closing {
                consider(t);
            }
            if self.conns.get(path).is_some_and(|c| !c.joined && !c.closed) {
                consider(cp.join_by);
            }
        }
        next
    }

    pub(super) fn on_quinn_event(
        &mut self,
        path: PathId,
        event: quinn_proto::Event,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        use quinn_proto::Event as E;
        match event {
            E::Connected => self.on_connected(path, ctx)?,
            E::ConnectionLost { reason } => {
                self.on_conn_lost(path, CloseReason::from_quinn(reason), ctx)
            }
            // A closing session reads nothing more.
            E::Stream(_) if self.phase == Phase::Closed => {}
            E::Stream(ev) => self.on_stream_event(path, ev, ctx)?,
            E::HandshakeDataReady | E::DatagramReceived | E::DatagramsUnblocked => {}
        }
        Ok(())
    }

    pub(super) fn lanes_readable(&self, path: PathId) -> bool {
        self.phase == Phase::Active && self.conns.get(&path).is_some_and(|c| c.joined)
    }

    pub(super) fn on_stream_event(
        &mut self,
        path: PathId,
        ev: StreamEvent,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let conn = self.conns.get_mut(&path).expect("event source");
        match ev {
            StreamEvent::Opened { .. } => {
                let new_control = conn.accept_streams(self.side == Side::Server)?;
                if new_control {
                    self.read_control(path, ctx)?;
                }
                self.read_all_lanes(path, ctx)?;
            }
            StreamEvent::Readable { id } => {
                if conn.is_control(id) {
                    self.read_control(path, ctx)?;
                } else if conn.is_lane(id) && self.lanes_readable(path) {
                    self.read_lane(path, id, ctx)?;
                }
            }
            StreamEvent::Writable { id } => {
                if conn.is_control(id) {
                    conn.flush_control();
                } else {
                    // Woken once every event is digested, all lanes' writers
                    // together, by priority (see `drive`).
                    conn.lanes.on_writable(&mut conn.quic, id);
                }
            }
            StreamEvent::Available { dir: QDir::Uni } => {
                conn.lanes.on_lane_available();
            }
            StreamEvent::Stopped { id, .. } => {
                return Err(violation(format!("peer stopped QUIC stream {id}")));
            }
            StreamEvent::Finished { .. } | StreamEvent::Available { dir: QDir::Bi } => {}
        }
        Ok(())
    }

    pub(super) fn read_all_lanes(
        &mut self,
        path: PathId,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        if !self.lanes_readable(path) {
            return Ok(());
        }
        let lanes = self
            .conns
            .get(&path)
            .map(|c| c.lane_ids())
            .unwrap_or_default();
        for lane in lanes {
            self.read_lane(path, lane, ctx)?;
        }
        Ok(())
    }

    pub(super) fn read_lane(
        &mut self,
        path: PathId,
        lane: QStreamId,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let max_payload = self.transport.max_frame_payload;
        let role = self.role;
        let Self {
            conns,
            streams,
            stats,
            client_paths,
            ..
        } = self;
        let Some(conn) = conns.get_mut(&path) else {
            return Ok(());
        };
        let events = &mut *ctx.events;
        let mut pieces = 0usize;
        let result = conn.read_lane(lane, max_payload, &mut |piece| {
            pieces += 1;
            let _span = tracing::trace_span!(target: crate::log::SPANS, "kwik_stream", stream = %piece.stream).entered();
            if role == Role::Secondary {
                return Err(violation("a client sends a secondary no data"));
            }
            // A secondary is trusted for its delegations only.
            if path != PathId::PRIMARY
                && !client_paths::check_grant(client_paths, streams, path, &piece)?
            {
                return Ok(());
            }
            stats.bytes_received += piece.data.len() as u64;
            streams.on_data(piece, events)
        });
        if pieces > 0 {
            conn.last_data = ctx.now;
        }
        result?;
        if self.ack_due.is_none() && self.streams.acks_pending() {
            self.ack_due = Some(ctx.now + ACK_DELAY);
        }
        Ok(())
    }

    /// Logical streams that waited on a lane: finish pending FINs, announce
    /// writability to the rest — higher priorities first (in the order they
    /// waited among equals), so that the application hears of them, and
    /// writes them, first.
    pub(super) fn wake_writers(&mut self, mut woken: Vec<StreamId>, ctx: &mut Ctx<'_>) {
        if woken.len() > 1 {
            let streams = &self.streams;
            woken.sort_by_key(|s| std::cmp::Reverse(streams.priority(*s).unwrap_or(0)));
        }
        for stream in woken {
            let Some(send) = self.streams.send_mut(stream) else {
                continue;
            };
            match send.state {
                SendState::FinPending => self.try_send_fin(stream),
                SendState::Open if send.want_writable => {
                    send.want_writable = false;
                    ctx.events.push_back(Event::StreamWritable {
                        session: self.handle,
                        stream,
                    });
                }
                _ => {}
            }
        }
    }

    pub(super) fn read_control(
        &mut self,
        path: PathId,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        while self.phase != Phase::Closed {
            let Some(conn) = self.conns.get_mut(&path) else {
                break;
            };
            let Some(body) = conn.next_control()? else {
                break;
            };
            self.on_control(path, body, ctx)?;
        }
        Ok(())
    }

    pub(super) fn on_control(
        &mut self,
        path: PathId,
        body: Body,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        match self.role {
            Role::Undecided => self.on_first(body, ctx),
            Role::Client if path != PathId::PRIMARY => match body {
                Body::Joined(m) if !self.conns[&path].joined => self.on_joined(path, m, ctx),
                Body::ResetStream(m) if self.conns[&path].joined => self.on_returned(path, m),
                _ => Err(violation("unexpected message from a secondary server")),
            },
            Role::Client if self.phase == Phase::Handshaking => match body {
                Body::Welcome(welcome) => self.on_welcome(welcome, ctx),
                _ => Err(violation("control message before the handshake completed")),
            },
            Role::Client => match body {
                Body::AddPath(m) => self.on_add_path(m, ctx),
                Body::RemovePath(m) => {
                    self.begin_remove(PathId(m.path_id), ctx.now, ctx.events);
                    Ok(())
                }
                Body::Delegate(m) => self.forward_delegate(m, ctx),
                Body::ProposalAnswer(m) => self.on_proposal_answer(m, ctx),
                Body::RawRelay(m) => {
                    self.relay_raw(PathId(m.path_id), m.payload, ctx);
                    Ok(())
                }
                body => self.stream_control(body, ctx),
            },
            Role::Primary => match body {
                Body::PathStatus(m) => {
                    self.on_path_status(m, ctx);
                    Ok(())
                }
                Body::ProposePath(m) => self.on_propose_path(m, ctx),
                Body::Ack(mut m) => {
                    let stream = StreamId(m.stream_id);
                    // Acks are only for streams this primary delegated or
                    // serves (§10.6); a late one for a stream that completed
                    // since is ignored.
                    if !self.streams.opened_locally(stream) {
                        return Err(violation(format!("Ack for {stream}, never opened here")));
                    }
                    if self.streams.send_mut(stream).is_some() && !self.ledger.tracks(stream) {
                        return Err(violation(format!(
                            "Ack for {stream}, which was never delegated"
                        )));
                    }
                    // What arrived counts before what was given back.
                    let returned = std::mem::take(&mut m.returned_by);
                    self.stash_ack(stream, m, ctx.now);
                    self.note_returns(stream, &returned, ctx);
                    if self.stashed_acks.is_empty() {
                        self.settle_returns(ctx);
                    }
                    Ok(())
                }
                body => self.stream_control(body, ctx),
            },
            Role::Secondary => match body {
                Body::Delegate(m) => self.on_delegated(m, ctx),
                Body::Raw(m) => {
                    ctx.events.push_back(Event::RawReceived {
                        session: self.handle,
                        payload: m.payload,
                    });
                    Ok(())
                }
                // What else a client may send a secondary (§10.10).
                body @ (Body::StreamCredit(_) | Body::StopSending(_)) => {
                    self.stream_control(body, ctx)
                }
                _ => Err(violation("a client sends a secondary no such message")),
            },
        }
    }

    pub(super) fn stream_control(
        &mut self,
        body: Body,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let completed = match &body {
            Body::StreamComplete(m) if self.role == Role::Primary => Some(StreamId(m.stream_id)),
            _ => None,
        };
        let stopped = match &body {
            Body::StopSending(m) if self.role == Role::Primary => Some(StreamId(m.stream_id)),
            _ => None,
        };
        let mut released = Vec::new();
        self.streams.on_control(body, ctx.events, &mut released)?;
        let conn = self.main_conn();
        for lane in released {
            conn.lanes.release(lane);
        }
        if let Some(stream) = completed
            && self.streams.send_mut(stream).is_none()
        {
            // The client has every byte: nothing delegated on it is owed.
            self.ledger.forget(stream);
        }
        if let Some(stream) = stopped {
            // The client stopped reading: what its sources still owed is
            // owed no more, and is never reported lost.
            self.ledger.forget(stream);
            self.jobs.retain(|j| j.stream != stream);
        }
        Ok(())
    }

    pub(super) fn on_timers(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed {
            return;
        }
        let now = ctx.now;
        if self.acks_apply_at.is_some_and(|t| t <= now) {
            self.apply_acks(now);
            self.settle_returns(ctx);
        }
        if self.ack_due.is_some_and(|t| t <= now) {
            self.send_acks();
        }
        // Primary: AddPath requests the client never answered.
        let expired: Vec<PathId> = self
            .add_deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for path in expired {
            self.add_deadlines.remove(&path);
            let failure = PathFailure {
                code: ErrorCode::PathDead,
                reason: "the client did not answer AddPath in time".into(),
            };
            self.set_path_state(path, PathState::Failed, Some(failure), ctx);
            // The client may still be trying: have it give up, so that a
            // retry to the same server is not refused as a duplicate.
            self.send_path_message(Body::RemovePath(msg::RemovePath { path_id: path.0 }));
        }
        self.retry_targets(ctx);
        self.check_liveness(ctx);
        self.check_health(ctx);
        self.autoscale(ctx);
        if self.role != Role::Client || self.phase == Phase::Closed {
            return;
        }
        // Client: graceful removals.
        let paths: Vec<PathId> = self.client_paths.keys().copied().collect();
        for path in paths {
            let Some(conn) = self.conns.get(&path) else {
                continue;
            };
            if conn.closed {
                continue;
            }
            let cp = &self.client_paths[&path];
            if !conn.joined && cp.join_by <= now {
                let failure = PathFailure {
                    code: ErrorCode::PathDead,
                    reason: format!(
                        "did not join within {} ms",
                        self.policy.join_timeout.as_millis()
                    ),
                };
                self.set_path_state(path, PathState::Failed, Some(failure), ctx);
                continue;
            }
            if let Some(deadline) = cp.closing {
                let streams = &self.streams;
                let drained = cp.grants.iter().all(|(stream, grant)| {
                    grant.returned || grant.ranges.iter().all(|r| streams.received(*stream, r))
                });
                if drained || deadline <= now {
                    self.set_path_state(path, PathState::Closed, None, ctx);
                    continue;
                }
            }
        }
    }

    /// Encodes what the stream table wants sent, routes it, and pushes every
    /// connection's control queue into its control stream.
    pub(super) fn flush(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Active {
            let mut out = Vec::new();
            self.streams.drain_control(&mut out);
            for (route, body) in out {
                if let Some(stream) = route {
                    for source in self.writers_of(stream) {
                        if let Some(conn) = self.conns.get_mut(&source)
                            && conn.joined
                            && !conn.closed
                        {
                            conn.send(body.clone());
                        }
                    }
                }
                self.main_conn().send(body);
            }
        }
        let limit = control_backlog_limit(&self.transport);
        let mut stuck = Vec::new();
        for (path, conn) in &mut self.conns {
            if !conn.closed {
                conn.flush_control();
                if conn.control_backlog() > limit {
                    stuck.push(*path);
                }
            }
        }
        for path in stuck {
            let v = Violation::new(
                ErrorCode::ResourceLimit,
                format!("the peer leaves more than {limit} control bytes unread"),
            );
            self.fail_path(path, v, ctx);
        }
    }

    /// Closes the session on a protocol violation detected on `path`. A
    /// client closes only a misbehaving secondary path (except for
    /// conflicting bytes, which poison the session).
    pub(crate) fn fail_path(&mut self, path: PathId, v: Violation, ctx: &mut Ctx<'_>) {
        if self.role == Role::Client
            && path != PathId::PRIMARY
            && v.code != ErrorCode::OffsetMismatch
        {
            tracing::debug!(target: crate::log::CONTROL, session = %self.handle, %path, code = %v.code, reason = %v.reason, "violation: closing the path");
            let joined = self.conns.get(&path).is_some_and(|c| c.joined);
            let state = if joined {
                PathState::Dead
            } else {
                PathState::Failed
            };
            let failure = PathFailure {
                code: v.code,
                reason: v.reason,
            };
            self.set_path_state(path, state, Some(failure), ctx);
            return;
        }
        self.fail(v, ctx);
    }

    /// Closes the whole session on a protocol violation.
    pub(crate) fn fail(&mut self, v: Violation, ctx: &mut Ctx<'_>) {
        if self.close_reason.is_some() {
            return;
        }
        tracing::debug!(target: crate::log::CONTROL, session = %self.handle, code = %v.code, reason = %v.reason, "violation: closing the session");
        let reason = CloseReason::Protocol {
            code: v.code,
            reason: v.reason.clone(),
            by_peer: false,
        };
        self.close_reason = Some(reason.clone());
        ctx.events.push_back(Event::SessionClosed {
            session: self.handle,
            reason,
        });
        self.shut_down(v.code.wire(), v.reason.as_bytes(), ctx);
    }

    /// Closes every connection with `code` and marks every path closed.
    pub(super) fn shut_down(&mut self, code: u64, reason: &[u8], ctx: &mut Ctx<'_>) {
        self.phase = Phase::Closed;
        let code = VarInt::from_u64(code).expect("small");
        let reason = truncate(&String::from_utf8_lossy(reason));
        for conn in self.conns.values_mut() {
            conn.close_soon(ctx.now, code, reason.clone());
        }
        self.set_state(SessionState::Closing, ctx.now, ctx.events);
        self.close_paths(ctx.now, ctx.events);
        self.client_paths.clear();
        self.add_deadlines.clear();
    }

    /// Closes the session at the application's request.
    pub(crate) fn close(
        &mut self,
        now: Instant,
        code: VarInt,
        reason: &[u8],
        events: &mut VecDeque<Event>,
    ) {
        if self.close_reason.is_some() {
            return;
        }
        self.close_reason = Some(CloseReason::LocallyClosed);
        tracing::debug!(target: crate::log::CONTROL, session = %self.handle, code = code.into_inner(), "session closed by the application");
        events.push_back(Event::SessionClosed {
            session: self.handle,
            reason: CloseReason::LocallyClosed,
        });
        self.phase = Phase::Closed;
        let reason = Bytes::copy_from_slice(reason);
        for conn in self.conns.values_mut() {
            conn.close_soon(now, code, reason.clone());
        }
        self.set_state(SessionState::Closing, now, events);
        self.close_paths(now, events);
    }
}

/// Most control bytes one connection may hold unsent before its peer counts
/// as not reading them (answers to its requests, relayed messages).
fn control_backlog_limit(transport: &TransportConfig) -> usize {
    let sixteen_messages = transport.max_control_message.saturating_mul(16);
    usize::try_from(sixteen_messages.max(1 << 20)).unwrap_or(usize::MAX)
}
