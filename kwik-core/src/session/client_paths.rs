//! The client's side of secondary paths: answering AddPath under its own
//! policy, recording and reporting path states, forwarding delegations and
//! raw messages, acknowledging delegated streams, and graceful removal.

use super::*;

impl Session {
    pub(super) fn on_add_path(
        &mut self,
        m: msg::AddPath,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let path = PathId(m.path_id);
        // Path ids only grow (§10.1), so one number remembers every id used
        // however short the kept history is.
        if m.path_id <= self.last_add_path {
            return Err(violation(format!(
                "AddPath names {path}, not above the last one (path{})",
                self.last_add_path
            )));
        }
        self.last_add_path = m.path_id;
        let address: Option<SocketAddr> = m.address.parse().ok();
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        self.paths.insert(
            path,
            PathInfo::new(
                path,
                address.unwrap_or(unspecified),
                &m.server_name,
                ctx.now,
            ),
        );
        let admitted = self.add_budget.admit(
            ctx.now,
            self.policy.add_path_rate,
            self.policy.add_path_burst,
            "AddPath",
        )?;
        let refusal = match address {
            None => Some((
                ErrorCode::InvalidFrame,
                format!("bad address {:?}", m.address),
            )),
            Some(_) if !admitted => Some((
                ErrorCode::Refused,
                format!(
                    "AddPath rate limit ({} per second, burst {}) exceeded",
                    self.policy.add_path_rate, self.policy.add_path_burst
                ),
            )),
            Some(a) => self
                .path_refusal(a, &m.server_name, Some(path))
                .map(|why| (ErrorCode::Refused, why)),
        };
        if let Some((code, reason)) = refusal {
            self.set_path_state(
                path,
                PathState::Failed,
                Some(PathFailure { code, reason }),
                ctx,
            );
            return Ok(());
        }
        self.client_paths.insert(
            path,
            ClientPath {
                expiry_unix: m.expiry_unix,
                token: m.token,
                address: m.address,
                server_name: m.server_name.clone(),
                grants: BTreeMap::new(),
                closing: None,
                join_by: ctx.now + self.policy.join_timeout,
                peer_max_control: crate::wire::MIN_CONTROL_MESSAGE,
            },
        );
        self.requests.push(Request::Dial {
            path,
            address: address.expect("checked"),
            server_name: m.server_name,
        });
        self.set_path_state(path, PathState::Handshaking, None, ctx);
        Ok(())
    }

    /// Client: the endpoint could not start a connection for `path`; the
    /// failure is reported on the next drive.
    pub(crate) fn note_dial_failure(&mut self, path: PathId, reason: String) {
        self.dial_failures.push((path, reason));
    }

    /// Records a path's new state (both roles), tells the primary (client),
    /// emits the events, and settles what the path owed.
    /// Client: why a path to `address` (certificate `server_name`) would be
    /// refused now — not allowed by the policy, the path limit reached, or
    /// the primary or a path that has not ended reaching it already
    /// (`except`: the path being judged) — or `None`. One rule for the
    /// AddPaths this client takes and the proposals it makes (§10.3, §13.1).
    pub(super) fn path_refusal(
        &self,
        address: SocketAddr,
        server_name: &str,
        except: Option<PathId>,
    ) -> Option<String> {
        if !self.policy.permits(address, server_name) {
            return Some(format!(
                "{address} ({server_name}) is not allowed by the client's path policy"
            ));
        }
        let live: Vec<&PathInfo> = self
            .paths
            .values()
            .filter(|p| !p.primary && Some(p.id) != except && !p.state.is_final())
            .collect();
        if live.len() >= self.policy.max_paths {
            return Some(format!("path limit of {} reached", self.policy.max_paths));
        }
        if live.iter().any(|p| p.address == address)
            || self.paths[&PathId::PRIMARY].address == address
        {
            return Some(format!("a path to {address} exists already"));
        }
        None
    }

    pub(super) fn set_path_state(
        &mut self,
        path: PathId,
        state: PathState,
        failure: Option<PathFailure>,
        ctx: &mut Ctx<'_>,
    ) {
        self.set_path_state_at(path, state, failure, ctx.now, ctx.events);
    }

    /// [`set_path_state`](Self::set_path_state) with only what it needs
    /// (application operations have no [`Ctx`]). The state itself changes
    /// in [`PathInfo::set_state`], which checks the transition.
    pub(super) fn set_path_state_at(
        &mut self,
        path: PathId,
        state: PathState,
        failure: Option<PathFailure>,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) {
        let session = self.handle;
        let Some(info) = self.paths.get_mut(&path) else {
            return;
        };
        let from = info.state;
        if !info.set_state(session, state, now, events) {
            return;
        }
        // Path 0 moves with its session, whose own log line tells of it.
        match &failure {
            _ if path == PathId::PRIMARY => {}
            Some(f) => {
                tracing::debug!(target: crate::log::PATHS, session = %self.handle, role = ?self.role, %path, ?state, code = %f.code, reason = %f.reason, "path state")
            }
            None => {
                tracing::debug!(target: crate::log::PATHS, session = %self.handle, role = ?self.role, %path, ?state, "path state")
            }
        }
        if failure.is_some() {
            info.failure = failure.clone();
        }
        let event = match state {
            // Path 0 is the session's own connection: SessionEstablished
            // tells of it.
            PathState::Active if from == PathState::Handshaking && path != PathId::PRIMARY => {
                Some(Event::PathAdded { session, path })
            }
            PathState::Failed => Some(Event::PathFailed {
                session,
                path,
                failure: failure.clone().unwrap_or(PathFailure {
                    code: ErrorCode::PathDead,
                    reason: "failed".into(),
                }),
            }),
            PathState::Dead => Some(Event::PathDead {
                session,
                path,
                failure: failure.clone().unwrap_or(PathFailure {
                    code: ErrorCode::PathDead,
                    reason: "dead".into(),
                }),
            }),
            PathState::Closed => Some(Event::PathClosed { session, path }),
            _ => None,
        };
        events.extend(event);
        if self.role == Role::Client && path != PathId::PRIMARY {
            if state.is_final() {
                // The primary must know what arrived before it learns what is lost.
                self.send_acks();
                self.client_paths.remove(&path);
                if let Some(conn) = self.conns.get_mut(&path)
                    && !conn.closed
                {
                    let code = failure.as_ref().map_or(0, |f| f.code.wire());
                    let reason = failure
                        .as_ref()
                        .map_or("path closed", |f| f.reason.as_str());
                    conn.close_soon(
                        now,
                        VarInt::from_u64(code).expect("small"),
                        truncate(reason),
                    );
                }
            }
            // The primary counts a path as handshaking from its AddPath on
            // (§10.3): only what follows is reported.
            if !matches!(state, PathState::Initializing | PathState::Handshaking) {
                self.report_path(path);
            }
        }
        if self.role == Role::Primary {
            self.follow_target(path, state, now);
        }
        if self.role == Role::Primary && state.is_final() {
            // What the client reported must count before what is lost.
            self.apply_acks(now);
            self.add_deadlines.remove(&path);
            for t in self.transfers.values_mut() {
                let received = self.ledger.received(t.stream).cloned().unwrap_or_default();
                t.path_lost(path, &received);
            }
            let lost = self.ledger.take_path(path);
            if !lost.is_empty() {
                tracing::debug!(target: crate::log::DELEGATION, session = %self.handle, %path, ranges = lost.len(), "ranges lost with the path");
                events.push_back(Event::RangesLost {
                    session,
                    path,
                    ranges: lost.clone(),
                });
                if self.primary.auto_reassign {
                    self.reassign(lost);
                }
            }
        }
        if state.is_final() {
            self.prune_path_history();
        }
    }

    /// Keeps the newest [`MAX_FINAL_PATHS`] paths that ended and forgets
    /// older ones, so that paths added and failed forever (a hostile
    /// primary's refused AddPaths) cannot grow the list.
    fn prune_path_history(&mut self) {
        let ended: Vec<PathId> = self
            .paths
            .values()
            .filter(|p| !p.primary && p.state.is_final())
            .map(|p| p.id)
            .collect();
        let excess = ended.len().saturating_sub(MAX_FINAL_PATHS);
        for id in &ended[..excess] {
            self.paths.remove(id);
        }
    }

    /// Client: tells the primary where `path` stands.
    pub(super) fn report_path(&mut self, path: PathId) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(info) = self.paths.get(&path) else {
            return;
        };
        let (code, reason) = info.failure.as_ref().map_or((0, String::new()), |f| {
            (
                f.code.wire(),
                crate::error::bounded_reason(&f.reason).into(),
            )
        });
        let (rtt, bytes, throughput) = self.conns.get(&path).map_or((0, 0, 0), |c| {
            (
                c.quic.rtt().as_micros() as u64,
                c.quic.stats().udp_rx.bytes,
                c.health.throughput(),
            )
        });
        let status = Body::PathStatus(msg::PathStatus {
            path_id: path.0,
            state: wire_state(info.state) as i32,
            error_code: code,
            reason,
            rtt_us: rtt,
            bytes_received: bytes,
            health: path_health::wire_health(info.health) as i32,
            throughput,
        });
        self.main_conn().send(status);
    }

    pub(super) fn on_conn_lost(&mut self, path: PathId, reason: CloseReason, ctx: &mut Ctx<'_>) {
        if let Some(conn) = self.conns.get_mut(&path) {
            conn.closed = true;
        }
        if path == PathId::PRIMARY || self.role != Role::Client {
            if self.close_reason.is_none() {
                tracing::debug!(target: crate::log::CONTROL, session = %self.handle, %path, %reason, "connection lost: session ends");
                self.close_reason = Some(reason.clone());
                ctx.events.push_back(Event::SessionClosed {
                    session: self.handle,
                    reason,
                });
            }
            self.shut_down(0, b"primary connection lost", ctx);
            return;
        }
        let joined = self.conns.get(&path).is_some_and(|c| c.joined);
        let failure = match reason {
            CloseReason::Protocol { code, reason, .. } => PathFailure { code, reason },
            CloseReason::TimedOut => PathFailure {
                code: ErrorCode::PathDead,
                reason: "idle timeout".into(),
            },
            CloseReason::LocallyClosed => return,
            other => PathFailure {
                code: ErrorCode::PathDead,
                reason: other.to_string(),
            },
        };
        let state = if joined {
            PathState::Dead
        } else {
            PathState::Failed
        };
        self.set_path_state(path, state, Some(failure), ctx);
    }

    /// Client: removal of `path` requested (by the primary or locally):
    /// the path is Closing, takes no new delegation, and closes once what
    /// it was given arrived or a grace period passed.
    pub(super) fn begin_remove(
        &mut self,
        path: PathId,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) {
        let rtt = self
            .conns
            .get(&path)
            .map_or(Duration::ZERO, |c| c.quic.rtt());
        let grace = (self.policy.dead_after(rtt) * 10).max(Duration::from_secs(1));
        let Some(cp) = self.client_paths.get_mut(&path) else {
            return;
        };
        cp.closing.get_or_insert(now + grace);
        if self
            .paths
            .get(&path)
            .is_some_and(|p| p.state.may_become(PathState::Closing))
        {
            self.set_path_state_at(path, PathState::Closing, None, now, events);
        }
    }

    pub(super) fn forward_delegate(
        &mut self,
        mut m: msg::Delegate,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let path = PathId(m.path_id);
        let stream = StreamId(m.stream_id);
        // `wire::check` bounded the range when the message was decoded.
        let range = m.offset..m.offset + m.length;
        let credit = self.streams.delegated(stream, ctx.events)?;
        if self.streams.read_offset(stream).is_none() {
            // Stopped or read to its end here: nothing more is wanted of it
            // (the primary learns so from the StopSending or StreamComplete).
            return Ok(());
        }
        if path == PathId::PRIMARY {
            // The primary serves this range itself; only the acks matter.
            return Ok(());
        }
        let live = self.paths.get(&path).is_some_and(|p| p.state.is_live());
        let usable = self.conns.get(&path).is_some_and(|c| c.joined && !c.closed);
        if !live || !usable || !self.client_paths.contains_key(&path) {
            return Ok(());
        }
        let held = self.sweep_grants();
        if held >= self.transport.max_delegations {
            return Err(Violation::new(
                ErrorCode::ResourceLimit,
                format!(
                    "the primary has more than {} delegated ranges outstanding",
                    self.transport.max_delegations
                ),
            ));
        }
        m.credit = credit;
        tracing::trace!(target: crate::log::DELEGATION, session = %self.handle, %path, stream = m.stream_id, offset = m.offset, length = m.length, fin = m.fin, "forward delegation");
        let (fin, delegate) = (m.fin, Body::Delegate(m));
        if self.send_on_path(path, delegate, ctx) {
            if let Some(info) = self.paths.get_mut(&path) {
                info.delegated_bytes += range.end - range.start;
            }
            let cp = self.client_paths.get_mut(&path).expect("checked");
            cp.grants.entry(stream).or_default().allow(range, fin);
        }
        Ok(())
    }

    /// Client: sends `body` on secondary `path` if it fits what the path's
    /// server accepts; otherwise the path cannot do what it is asked (a
    /// relayed message or a delegation too large for it) and fails with
    /// `KWIK_PACKET_TOO_LARGE`. Returns whether it was sent.
    fn send_on_path(&mut self, path: PathId, body: Body, ctx: &mut Ctx<'_>) -> bool {
        let limit = self
            .client_paths
            .get(&path)
            .map_or(0, |cp| cp.peer_max_control);
        let size = control_size(&body) as u64;
        if size > limit {
            let failure = PathFailure {
                code: ErrorCode::PacketTooLarge,
                reason: format!("a {size}-byte message for a server that accepts {limit}"),
            };
            let state = if self.conns.get(&path).is_some_and(|c| c.joined) {
                PathState::Dead
            } else {
                PathState::Failed
            };
            self.set_path_state(path, state, Some(failure), ctx);
            return false;
        }
        match self.conns.get_mut(&path) {
            Some(conn) if conn.joined && !conn.closed => {
                conn.send(body);
                true
            }
            _ => false,
        }
    }

    /// Client: relays a primary's raw message to `path` (dropped if the
    /// path is not live any more).
    pub(super) fn relay_raw(&mut self, path: PathId, payload: Bytes, ctx: &mut Ctx<'_>) {
        if self.client_paths.contains_key(&path) {
            self.send_on_path(path, Body::Raw(msg::Raw { payload }), ctx);
        }
    }

    /// Client: forgets granted ranges the application already read and the
    /// grants of streams that are gone; returns the ranges still granted.
    fn sweep_grants(&mut self) -> usize {
        let streams = &self.streams;
        let mut held = 0;
        for cp in self.client_paths.values_mut() {
            cp.grants
                .retain(|stream, grant| match streams.read_offset(*stream) {
                    Some(read) => {
                        grant.prune_below(read);
                        held += grant.ranges.range_count();
                        true
                    }
                    None => false,
                });
        }
        held
    }

    /// Paths whose servers write into `stream` (they get its credit and
    /// stop messages too): those it was delegated to and that did not give
    /// it back.
    pub(super) fn writers_of(&self, stream: StreamId) -> Vec<PathId> {
        self.client_paths
            .iter()
            .filter(|(_, cp)| cp.grants.get(&stream).is_some_and(|g| !g.returned))
            .map(|(path, _)| *path)
            .collect()
    }

    /// Client: secondary `path` gives its delegations of a stream back with
    /// a ResetStream — its application reset the stream, or it answers a
    /// StopSending (§10.4). A secondary is trusted for its ranges only, so
    /// this neither ends nor resets the stream (its final offset is
    /// ignored): the client drops the path's records of the stream from
    /// now on and, while the stream is still read, acknowledges it to the
    /// primary at once, naming the path, so that the primary re-assigns
    /// what did not arrive. Once per delegation: repeats cost a lookup.
    pub(super) fn on_returned(
        &mut self,
        path: PathId,
        m: msg::ResetStream,
    ) -> Result<(), Violation> {
        let stream = StreamId(m.stream_id);
        if self.streams.read_offset(stream).is_none() {
            // Stopped, read to its end, released or never opened here:
            // nothing is owed (an answer to our StopSending lands here).
            return Ok(());
        }
        let Some(grant) = self
            .client_paths
            .get_mut(&path)
            .and_then(|cp| cp.grants.get_mut(&stream))
        else {
            return Err(Violation::new(
                ErrorCode::NotDelegated,
                format!("{path} reset {stream}, which was not delegated to it"),
            ));
        };
        if grant.returned {
            return Ok(());
        }
        grant.give_back();
        tracing::debug!(target: crate::log::DELEGATION, session = %self.handle, %path, %stream, code = m.error_code, "path gave a stream back");
        if let Some(mut ack) = self.streams.ack_now(stream) {
            ack.returned_by.push(path.0);
            self.main_conn().send(Body::Ack(ack));
        }
        Ok(())
    }

    /// Client: the application's raw message to `path`'s server.
    pub(super) fn forward_raw(&mut self, path: PathId, payload: Bytes) -> Result<(), PathError> {
        let limit = self
            .client_paths
            .get(&path)
            .map_or(0, |cp| cp.peer_max_control);
        let raw = Body::Raw(msg::Raw { payload });
        fits(&raw, limit)?;
        if let Some(conn) = self.conns.get_mut(&path)
            && conn.joined
            && !conn.closed
        {
            conn.send(raw);
        }
        Ok(())
    }

    pub(super) fn send_acks(&mut self) {
        self.ack_due = None;
        if self.phase != Phase::Active {
            return;
        }
        let mut acks = Vec::new();
        self.streams.take_acks(&mut acks);
        let conn = self.main_conn();
        for ack in acks {
            conn.send(ack);
        }
    }
}

/// Client: may secondary `path` write this piece? Only inside the ranges
/// (and at the final size) delegated to it for the stream (§10.10). The
/// whole record is checked on each of its pieces, so an offending record is
/// refused before any of its bytes is delivered. `Ok(false)`: drop the
/// piece quietly (the stream or the path is gone).
pub(super) fn check_grant(
    client_paths: &mut BTreeMap<PathId, ClientPath>,
    streams: &Streams,
    path: PathId,
    piece: &DataPiece,
) -> Result<bool, Violation> {
    let Some(cp) = client_paths.get_mut(&path) else {
        return Ok(false);
    };
    let not_delegated = |what: String| {
        Violation::new(
            ErrorCode::NotDelegated,
            format!(
                "{path} wrote {what} of {}, not delegated to it",
                piece.stream
            ),
        )
    };
    let Some(grant) = cp.grants.get_mut(&piece.stream) else {
        if streams.was_released(piece.stream) {
            return Ok(false);
        }
        return Err(not_delegated(format!(
            "{}..{}",
            piece.offset, piece.record_end
        )));
    };
    let Some(read) = streams.read_offset(piece.stream) else {
        return Ok(false); // no longer read: on_data drops it
    };
    if grant.returned {
        // Given back: the primary re-assigns what the path owed; late
        // records are dropped (and never delivered twice).
        return Ok(false);
    }
    grant.prune_below(read);
    let from = piece.offset.max(read);
    if !grant.permits(from, piece.record_end, false) {
        return Err(not_delegated(format!("{from}..{}", piece.record_end)));
    }
    if piece.record_fin && !grant.permits(from, piece.record_end, true) {
        return Err(not_delegated(format!("a FIN at {}", piece.record_end)));
    }
    Ok(true)
}
