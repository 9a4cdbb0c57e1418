//! The primary's side of paths: minting AddPath requests, learning path
//! states from the client, delegating ranges and re-assigning what a dead
//! path owed.

use super::*;

impl Session {
    pub(super) fn on_path_status(&mut self, m: msg::PathStatus, ctx: &mut Ctx<'_>) {
        let path = PathId(m.path_id);
        if path == PathId::PRIMARY {
            // A PathStatus names a secondary path (§10.8): the primary
            // connection's state is this side's to judge, first-hand. A
            // client's word must not mark it Dead (which re-sent the
            // primary's own outstanding ranges) or overwrite its RTT.
            return;
        }
        // The client's word is routed through the legal transitions
        // (PROTOCOL.md §15.3): a report that skips states passes through
        // them; one the table cannot lead to (back from an end, back to
        // the start) changes no state.
        let Some(target) = state_of_wire(m.state) else {
            return; // unspecified, or a state this version does not know
        };
        let Some(route) = self.paths.get(&path).and_then(|p| p.state.route_to(target)) else {
            return;
        };
        let failure = (m.error_code != 0).then(|| PathFailure {
            code: ErrorCode::from_wire(m.error_code).unwrap_or(ErrorCode::Internal),
            reason: m.reason.clone(),
        });
        if let Some(info) = self.paths.get_mut(&path) {
            info.rtt = Duration::from_micros(m.rtt_us);
            info.bytes_received = m.bytes_received;
            info.last_active = ctx.now;
        }
        if matches!(target, PathState::Active | PathState::Degraded) {
            self.add_deadlines.remove(&path);
        }
        for step in route {
            let failure = if step == target {
                failure.clone()
            } else {
                None
            };
            self.set_path_state(path, step, failure, ctx);
        }
        self.on_reported_health(&m, ctx);
    }

    /// Primary: hands lost delegations to the live secondary paths in turn,
    /// never back to the path that lost them (ranges of running transfers
    /// are re-assigned by their scheduler).
    pub(super) fn reassign(&mut self, lost: Vec<Delegation>) {
        let live: Vec<PathId> = self
            .paths
            .values()
            .filter(|p| p.takes_new_ranges())
            .map(|p| p.id)
            .collect();
        let transfer_streams: Vec<StreamId> = self.transfers.values().map(|t| t.stream).collect();
        let mut turn = 0;
        for d in lost {
            if transfer_streams.contains(&d.stream) {
                continue;
            }
            let Some(path) = (0..live.len())
                .map(|i| live[(turn + i) % live.len()])
                .find(|p| *p != d.path)
            else {
                continue;
            };
            turn += 1;
            let _ = self.delegate(path, d.stream, d.range, d.fin, d.descriptor, true);
        }
    }

    /// Primary: an Ack names paths that gave `stream` back. Kept until the
    /// Ack is applied, and only for a stream the ledger tracks and for
    /// secondary paths this primary added: other ids name nothing it keeps
    /// and are ignored. The set is bounded: once it holds
    /// [`MAX_PENDING_RETURNS`] pairs the Acks are applied and the returns
    /// settled at once.
    pub(super) fn note_returns(&mut self, stream: StreamId, paths: &[u64], ctx: &mut Ctx<'_>) {
        if paths.is_empty() || !self.ledger.tracks(stream) {
            return;
        }
        for &path in paths {
            let path = PathId(path);
            if self.paths.get(&path).is_some_and(|p| !p.primary) {
                self.returns.insert((stream, path));
            }
        }
        if self.returns.len() >= MAX_PENDING_RETURNS {
            self.apply_acks(ctx.now);
            self.settle_returns(ctx);
        }
    }

    /// Primary: what the paths that gave streams back still owed is lost
    /// like a dead path's ranges, for those streams only (the paths stay
    /// up): transfers re-assign it elsewhere, other delegations are
    /// reported ([`Event::RangesLost`]) and, with `auto_reassign`,
    /// re-delegated. Called once the reporting Acks are applied, so that
    /// what arrived counts first; one pass over the ledger whatever the
    /// number of returns.
    pub(super) fn settle_returns(&mut self, ctx: &mut Ctx<'_>) {
        if self.returns.is_empty() {
            return;
        }
        let returns = std::mem::take(&mut self.returns);
        for t in self.transfers.values_mut() {
            let from = (t.stream, PathId::PRIMARY);
            let to = (t.stream, PathId(u64::MAX));
            let received = self.ledger.received(t.stream).cloned().unwrap_or_default();
            for (_, path) in returns.range(from..=to) {
                t.path_returned(*path, &received);
            }
        }
        let lost = self.ledger.take_returned(&returns);
        if lost.is_empty() {
            return;
        }
        let mut by_path: BTreeMap<PathId, Vec<Delegation>> = BTreeMap::new();
        for d in &lost {
            by_path.entry(d.path).or_default().push(d.clone());
        }
        for (path, ranges) in by_path {
            tracing::debug!(target: crate::log::DELEGATION, session = %self.handle, %path, ranges = ranges.len(), "ranges given back");
            ctx.events.push_back(Event::RangesLost {
                session: self.handle,
                path,
                ranges,
            });
        }
        if self.primary.auto_reassign {
            self.reassign(lost);
        }
    }

    /// Primary: asks the client to join `address` as a new path, and keeps
    /// re-adding it if it fails or dies (per `ServerConfig::path_retry`).
    pub(crate) fn add_path(
        &mut self,
        now: Instant,
        unix_now: Duration,
        address: SocketAddr,
        server_name: &str,
        events: &mut VecDeque<Event>,
    ) -> Result<PathId, PathError> {
        let path = self.send_add_path(now, unix_now, address, server_name, events)?;
        self.targets.retain(|t| t.address != address);
        self.targets.push(Target {
            address,
            server_name: server_name.to_string(),
            current: path,
            attempt: 0,
            due: None,
        });
        Ok(path)
    }

    /// Primary: mints a token for a new path to `address` and sends the
    /// AddPath.
    pub(super) fn send_add_path(
        &mut self,
        now: Instant,
        unix_now: Duration,
        address: SocketAddr,
        server_name: &str,
        events: &mut VecDeque<Event>,
    ) -> Result<PathId, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        let key = self
            .primary
            .token_key
            .clone()
            .ok_or(PathError::NoTokenKey)?;
        if let Some(why) = crate::candidate::undialable(address) {
            return Err(PathError::InvalidCandidate(format!(
                "{address} cannot be a path: {why}"
            )));
        }
        if server_name.len() > MAX_SERVER_NAME {
            return Err(PathError::TooLarge {
                size: server_name.len(),
                limit: MAX_SERVER_NAME,
            });
        }
        let path = PathId(self.next_path);
        self.next_path += 1;
        let claims = TokenClaims {
            session_id: self.id.expect("active"),
            path_id: path.0,
            expiry_unix: (unix_now + self.primary.token_lifetime).as_secs(),
            address: address.to_string(),
            server_name: server_name.to_string(),
        };
        let mac = token::mint(&key, &claims);
        self.paths
            .insert(path, PathInfo::new(path, address, server_name, now));
        self.add_deadlines
            .insert(path, now + self.primary.add_path_timeout);
        self.send_path_message(Body::AddPath(msg::AddPath {
            path_id: path.0,
            expiry_unix: claims.expiry_unix,
            address: claims.address,
            server_name: claims.server_name,
            token: Bytes::from(mac),
        }));
        if self.confirmed {
            // Sent: the client dials it now (a held one goes, and starts
            // handshaking, when the handshake completes).
            self.set_path_state_at(path, PathState::Handshaking, None, now, events);
        }
        Ok(path)
    }

    /// Primary: sends a path message (AddPath, RemovePath) — or, while the
    /// handshake of a session that began in 0-RTT has not completed, holds
    /// it until it has (§12.3): no path token leaves for a client that has
    /// not proven it is live, so a replayed first flight commits no
    /// secondary. Held messages keep their order.
    pub(super) fn send_path_message(&mut self, body: Body) {
        if !self.confirmed {
            self.held.push(body);
        } else {
            self.main_conn().send(body);
        }
    }

    /// Primary asks the client to drop `path` gracefully; a client drops it
    /// itself (and tells the primary). Either way the path is Closing from
    /// now on: it takes no new work. Removing a path already Closing does
    /// nothing more.
    pub(crate) fn remove_path(
        &mut self,
        path: PathId,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> Result<(), PathError> {
        if path == PathId::PRIMARY {
            return Err(PathError::WrongRole);
        }
        if self.phase == Phase::Active
            && self
                .paths
                .get(&path)
                .is_some_and(|p| p.state == PathState::Closing)
        {
            return Ok(());
        }
        self.path_usable(path).or_else(|e| match e {
            PathError::NotReady(_) => Ok(()),
            e => Err(e),
        })?;
        match self.role {
            Role::Primary => {
                // Removed on purpose: not to be re-added.
                self.targets.retain(|t| t.current != path);
                self.send_path_message(Body::RemovePath(msg::RemovePath { path_id: path.0 }));
                if self
                    .paths
                    .get(&path)
                    .is_some_and(|p| p.state.may_become(PathState::Closing))
                {
                    self.set_path_state_at(path, PathState::Closing, None, now, events);
                }
                Ok(())
            }
            Role::Client => {
                self.begin_remove(path, now, events);
                Ok(())
            }
            _ => Err(PathError::WrongRole),
        }
    }

    /// Primary: hands `[range)` of `stream` to `path`; `urgent` asks the
    /// path to write it ahead of its other queued work.
    pub(crate) fn delegate(
        &mut self,
        path: PathId,
        stream: StreamId,
        range: Range<u64>,
        fin: bool,
        descriptor: Bytes,
        urgent: bool,
    ) -> Result<Delegation, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if path == PathId::PRIMARY {
            return Err(PathError::NotFound(path));
        }
        self.path_usable(path)?;
        if range.start > range.end || range.end >= crate::wire::OFFSET_LIMIT {
            return Err(PathError::OutOfRange);
        }
        let limit = self.transport.max_delegations;
        if self.ledger.len() >= limit {
            return Err(PathError::LimitReached { limit });
        }
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(PathError::WrongRole);
        };
        if stream.initiator() != Side::Server {
            return Err(PathError::WrongRole);
        }
        if let SendState::Stopped(code) = send.state {
            return Err(PathError::Stopped(code));
        }
        if fin {
            // The client may now report the stream complete (§5.3).
            send.final_size = Some(range.end);
        }
        let priority = send.priority;
        if let Some(info) = self.paths.get_mut(&path) {
            info.delegated_bytes += range.end - range.start;
        }
        let d = self.ledger.add(|id| Delegation {
            id,
            path,
            stream,
            range: range.clone(),
            fin,
            descriptor: descriptor.clone(),
            urgent,
            priority,
        });
        tracing::trace!(target: crate::log::DELEGATION, session = %self.handle, %path, %stream, ?range, fin, urgent, priority, "delegate");
        self.main_conn().send(Body::Delegate(msg::Delegate {
            path_id: path.0,
            delegation_id: d.id.0,
            stream_id: stream.0,
            offset: range.start,
            length: range.end - range.start,
            fin,
            descriptor,
            credit: 0,
            urgent,
            priority,
        }));
        Ok(d)
    }

    /// Primary: delegated ranges the client has not acknowledged.
    pub(crate) fn outstanding(&self) -> Vec<Delegation> {
        self.ledger.outstanding()
    }

    /// Primary: relays `payload` to `path`'s server through the client;
    /// client: sends it to `path`'s server directly.
    pub(crate) fn send_raw(&mut self, path: PathId, payload: Bytes) -> Result<(), PathError> {
        if path == PathId::PRIMARY {
            return Err(PathError::NotFound(path));
        }
        self.path_usable(path)?;
        match self.role {
            Role::Primary => {
                let relay = Body::RawRelay(msg::RawRelay {
                    path_id: path.0,
                    payload,
                });
                fits(&relay, self.peer_max_control)?;
                self.main_conn().send(relay);
                Ok(())
            }
            Role::Client => self.forward_raw(path, payload),
            _ => Err(PathError::WrongRole),
        }
    }

    /// Primary: a path reached `state`: schedules a retry of its target if
    /// it failed or died for a reason worth retrying, resets the backoff if
    /// it became active, forgets the target if it was removed.
    pub(super) fn follow_target(&mut self, path: PathId, state: PathState, now: Instant) {
        let Some(policy) = self.primary.path_retry.clone() else {
            self.targets
                .retain(|t| t.current != path || !state.is_final());
            return;
        };
        let failure = self.paths.get(&path).and_then(|p| p.failure.clone());
        let session_id = self.id;
        let Some(i) = self.targets.iter().position(|t| t.current == path) else {
            return;
        };
        let target = &mut self.targets[i];
        match state {
            PathState::Active => target.attempt = 0,
            PathState::Dead | PathState::Failed
                if failure.as_ref().is_none_or(|f| PathRetry::retries(f.code))
                    && (policy.max_attempts == 0 || target.attempt < policy.max_attempts) =>
            {
                target.attempt += 1;
                let jitter = jitter(session_id, path.0);
                target.due = Some(now + policy.delay(target.attempt, jitter));
            }
            state if state.is_final() => {
                self.targets.remove(i);
            }
            _ => {}
        }
    }

    /// Primary: re-adds the targets whose retry is due.
    pub(super) fn retry_targets(&mut self, ctx: &mut Ctx<'_>) {
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].due.is_some_and(|t| t <= ctx.now))
            .collect();
        for i in due {
            let (address, name, old, attempt) = {
                let t = &mut self.targets[i];
                t.due = None;
                (t.address, t.server_name.clone(), t.current, t.attempt)
            };
            match self.send_add_path(ctx.now, ctx.unix_now, address, &name, ctx.events) {
                Ok(path) => {
                    self.targets[i].current = path;
                    if let Some(info) = self.paths.get_mut(&path) {
                        info.retry_of = Some(old);
                        info.attempt = attempt;
                    }
                }
                Err(_) => return, // the session is going away
            }
        }
    }

    /// Primary: the next retry due.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.targets.iter().filter_map(|t| t.due).min()
    }

    /// Primary: takes a client's Ack. An Ack is a snapshot of what arrived,
    /// so a newer one supersedes an older one; they are applied to the
    /// ledger at most every [`ACK_APPLY_INTERVAL`], which keeps a client
    /// that floods Acks from making this side do the ledger work for each.
    pub(super) fn stash_ack(&mut self, stream: StreamId, ack: msg::Ack, now: Instant) {
        self.stashed_acks.insert(stream, ack);
        let due = self
            .acks_applied
            .map_or(now, |t| (t + ACK_APPLY_INTERVAL).max(now));
        if due <= now {
            self.apply_acks(now);
        } else {
            self.acks_apply_at.get_or_insert(due);
        }
    }

    /// Primary: applies the stashed Acks to the ledger.
    pub(super) fn apply_acks(&mut self, now: Instant) {
        self.acks_apply_at = None;
        if self.stashed_acks.is_empty() {
            return;
        }
        self.acks_applied = Some(now);
        for (stream, ack) in std::mem::take(&mut self.stashed_acks) {
            let ranges = ack.ranges.iter().map(|r| r.start..r.end);
            self.ledger.on_ack(stream, ack.contiguous, ranges);
        }
    }
}

/// Most (stream, path) returns a primary holds until the Acks that named
/// them are applied.
const MAX_PENDING_RETURNS: usize = 256;

/// Shortest interval between two applications of the client's Acks.
const ACK_APPLY_INTERVAL: Duration = Duration::from_millis(2);

/// A deterministic draw in [0, 1) for the retry of `path` (from the session
/// id, so that a primary's sessions do not retry in step).
fn jitter(session: Option<SessionId>, path: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let id = session.map_or([0; 16], |s| s.0);
    for b in id.iter().chain(&path.to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}
