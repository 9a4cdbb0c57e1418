//! The primary's side of paths: minting AddPath requests, learning path
//! states from the client, delegating ranges and re-assigning what a dead
//! path owed.

use super::*;

impl Session {
    pub(super) fn on_path_status(&mut self, m: msg::PathStatus, ctx: &mut Ctx<'_>) {
        let path = PathId(m.path_id);
        let state = match msg::PathState::try_from(m.state) {
            Ok(msg::PathState::Connecting) => PathState::Connecting,
            Ok(msg::PathState::Active) => PathState::Active,
            Ok(msg::PathState::Degraded) => PathState::Degraded,
            Ok(msg::PathState::Dead) => PathState::Dead,
            Ok(msg::PathState::Closed) => PathState::Closed,
            Ok(msg::PathState::Failed) => PathState::Failed,
            _ => return,
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
        if state == PathState::Active {
            self.add_deadlines.remove(&path);
        }
        self.set_path_state(path, state, failure, ctx);
    }

    /// Primary: hands lost delegations to the live secondary paths in turn
    /// (ranges of running transfers are re-assigned by their scheduler).
    pub(super) fn reassign(&mut self, lost: Vec<Delegation>) {
        let live: Vec<PathId> = self
            .paths
            .values()
            .filter(|p| !p.primary && p.state == PathState::Active)
            .map(|p| p.id)
            .collect();
        let transfer_streams: Vec<StreamId> = self.transfers.values().map(|t| t.stream).collect();
        let mut next = live.iter().cycle();
        for d in lost {
            if transfer_streams.contains(&d.stream) {
                continue;
            }
            let Some(&path) = next.next() else { return };
            let _ = self.delegate(path, d.stream, d.range, d.fin, d.descriptor, true);
        }
    }

    /// Primary: asks the client to join `address` as a new path.
    pub(crate) fn add_path(
        &mut self,
        now: Instant,
        unix_now: Duration,
        address: SocketAddr,
        server_name: &str,
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
        self.main_conn().send(Body::AddPath(msg::AddPath {
            path_id: path.0,
            expiry_unix: claims.expiry_unix,
            address: claims.address,
            server_name: claims.server_name,
            token: Bytes::from(mac),
        }));
        Ok(path)
    }

    /// Primary asks the client to drop `path` gracefully; a client drops it
    /// itself (and tells the primary).
    pub(crate) fn remove_path(&mut self, path: PathId, now: Instant) -> Result<(), PathError> {
        if path == PathId::PRIMARY {
            return Err(PathError::WrongRole);
        }
        self.path_usable(path).or_else(|e| match e {
            PathError::NotReady(_) => Ok(()),
            e => Err(e),
        })?;
        match self.role {
            Role::Primary => {
                self.main_conn()
                    .send(Body::RemovePath(msg::RemovePath { path_id: path.0 }));
                Ok(())
            }
            Role::Client => {
                self.begin_remove(path, now);
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
        if fin {
            // The client may now report the stream complete (§5.3).
            send.final_size = Some(range.end);
        }
        let d = self
            .ledger
            .add(path, stream, range.clone(), fin, descriptor.clone(), urgent);
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
        let limit = (self.peer_max_control as usize).saturating_sub(RELAY_OVERHEAD);
        if payload.len() > limit {
            return Err(PathError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        match self.role {
            Role::Primary => {
                self.main_conn().send(Body::RawRelay(msg::RawRelay {
                    path_id: path.0,
                    payload,
                }));
                Ok(())
            }
            Role::Client => {
                self.forward_raw(path, payload);
                Ok(())
            }
            _ => Err(PathError::WrongRole),
        }
    }
}
