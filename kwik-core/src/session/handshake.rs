//! The kwik handshakes of a session: Hello/Welcome on the primary
//! connection, Join/Joined on a secondary path, and the checks of the
//! limits each side announces — including the 0-RTT variant (PROTOCOL.md
//! §12), where the client's Hello rides in 0-RTT and the server answers it
//! before the QUIC handshake completes.

use super::*;

impl Session {
    fn hello(&self) -> Body {
        Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            features: SUPPORTED_FEATURES,
            required_features: self.transport.required_features,
            limits: Some(self.limits()),
        })
    }

    /// Client: sends the Hello now, in 0-RTT, if the primary connection has
    /// 0-RTT keys (TLS resumed a session whose ticket allows early data)
    /// and the QUIC handshake has not completed yet. With the limits the
    /// server's last Welcome announced, streams opened with
    /// `open_idempotent` may then send in 0-RTT too (§12.4). Returns whether
    /// the session is in 0-RTT (true again if it already was).
    pub(crate) fn start_0rtt(&mut self) -> bool {
        if self.zero_rtt == ZeroRtt::Pending {
            return true;
        }
        let conn = &self.conns[&PathId::PRIMARY];
        if self.side != Side::Client
            || self.phase != Phase::Handshaking
            || self.close_reason.is_some()
            || self.zero_rtt != ZeroRtt::Off
            || !conn.quic.is_handshaking()
            || !conn.quic.has_0rtt()
            || conn.has_control()
        {
            return false;
        }
        let hello = self.hello();
        let conn = self.main_conn();
        if conn.open_control().is_err() {
            return false;
        }
        conn.send(hello);
        self.zero_rtt = ZeroRtt::Pending;
        let server_name = &self.paths[&PathId::PRIMARY].server_name;
        if let Some(limits) = self.remembered.as_ref().and_then(|r| r.recall(server_name)) {
            // Until the Welcome says otherwise, the server takes what it
            // took last time (`wire::limits` checked these when they came).
            self.send_frame_limit = self
                .transport
                .max_frame_payload
                .min(limits.max_frame_payload);
            self.streams.set_peer_limits(
                limits.stream_window,
                limits.max_bidi_streams,
                limits.max_uni_streams,
            );
        }
        true
    }

    /// True while a client may send data of its idempotent streams before
    /// the Welcome: the Hello went out in 0-RTT and the server did not
    /// refuse it.
    pub(super) fn early_data_open(&self) -> bool {
        self.side == Side::Client
            && self.phase == Phase::Handshaking
            && matches!(self.zero_rtt, ZeroRtt::Pending | ZeroRtt::Accepted)
    }

    /// The QUIC handshake of `path` completed. Client: learns the fate of
    /// its 0-RTT data, and sends the Hello or Join (again) unless 0-RTT
    /// carried it. Server: a session that began in 0-RTT is confirmed —
    /// nothing it received was a replay — and what waited for that goes.
    pub(super) fn on_connected(
        &mut self,
        path: PathId,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        if self.side == Side::Server {
            return self.on_confirmed(ctx);
        }
        if path == PathId::PRIMARY {
            self.confirmed = true;
        }
        if path == PathId::PRIMARY && self.zero_rtt == ZeroRtt::Pending {
            let accepted = self.main_conn().quic.accepted_0rtt();
            ctx.events.push_back(Event::ZeroRttSettled {
                session: self.handle,
                accepted,
            });
            if accepted {
                self.zero_rtt = ZeroRtt::Accepted;
                return Ok(());
            }
            // The server saw nothing of it, and quinn-proto forgot every
            // stream opened in 0-RTT: so do we, and start over in 1-RTT.
            self.zero_rtt = ZeroRtt::Rejected;
            self.main_conn().forget_streams();
            self.streams.zero_rtt_rejected();
            self.send_frame_limit = self.transport.max_frame_payload;
        }
        let first = if path == PathId::PRIMARY {
            self.hello()
        } else {
            let Some(ticket) = self.client_paths.get(&path) else {
                return Ok(());
            };
            Body::Join(msg::Join {
                session_id: Bytes::copy_from_slice(&self.id.expect("active").0),
                path_id: path.0,
                expiry_unix: ticket.expiry_unix,
                token: ticket.token.clone(),
                limits: Some(self.limits()),
                address: ticket.address.clone(),
                server_name: ticket.server_name.clone(),
            })
        };
        let conn = self.conns.get_mut(&path).expect("event source");
        conn.open_control()?;
        conn.send(first);
        Ok(())
    }

    /// Server: the QUIC handshake completed.
    fn on_confirmed(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        self.confirmed = true;
        if self.zero_rtt == ZeroRtt::Pending {
            self.zero_rtt = ZeroRtt::Accepted;
            ctx.events.push_back(Event::ZeroRttSettled {
                session: self.handle,
                accepted: true,
            });
        }
        for body in std::mem::take(&mut self.held) {
            // The client's time to answer runs from when the AddPath
            // leaves, not from when it was held.
            let added = match &body {
                Body::AddPath(m) => Some(PathId(m.path_id)),
                _ => None,
            };
            if let Some(path) = added
                && let Some(deadline) = self.add_deadlines.get_mut(&path)
            {
                *deadline = ctx.now + self.primary.add_path_timeout;
            }
            self.main_conn().send(body);
            if let Some(path) = added
                && self
                    .paths
                    .get(&path)
                    .is_some_and(|p| p.state == PathState::Initializing)
            {
                self.set_path_state(path, PathState::Handshaking, None, ctx);
            }
        }
        match self.held_join.take() {
            Some(join) if self.phase == Phase::Handshaking => self.on_join(*join, ctx),
            _ => Ok(()),
        }
    }

    /// Server: the client's first message. A Join is acted on only once the
    /// QUIC handshake completed (§12.3): one that came in 0-RTT waits.
    pub(super) fn on_first(&mut self, body: Body, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        if self.held_join.is_some() {
            return Err(violation("control message before the handshake completed"));
        }
        match body {
            Body::Hello(hello) => self.on_hello(hello, ctx),
            Body::Join(join) if !self.confirmed => {
                self.held_join = Some(Box::new(join));
                Ok(())
            }
            Body::Join(join) => self.on_join(join, ctx),
            _ => Err(violation("control message before the handshake completed")),
        }
    }

    pub(super) fn on_hello(&mut self, hello: Hello, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let limits = negotiate(&hello, self.server_features)?;
        // quinn-proto drops 1-RTT packets until the handshake completed: a
        // Hello read before then came in 0-RTT.
        if !self.confirmed {
            self.zero_rtt = ZeroRtt::Pending;
        }
        let id = (ctx.mint_id)();
        let welcome = Body::Welcome(Welcome {
            session_id: Bytes::copy_from_slice(&id.0),
            version: PROTOCOL_VERSION,
            features: hello.features & self.server_features,
            limits: Some(self.limits()),
        });
        self.main_conn().send(welcome);
        self.role = Role::Primary;
        self.activate(id, limits, ctx)
    }

    pub(super) fn on_welcome(
        &mut self,
        welcome: Welcome,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        if welcome.version != PROTOCOL_VERSION {
            return Err(Violation::new(
                ErrorCode::VersionMismatch,
                "server answered another version",
            ));
        }
        let id = SessionId::from_slice(&welcome.session_id)
            .ok_or_else(|| violation("session id is not 16 bytes"))?;
        let limits = welcome
            .limits
            .ok_or_else(|| violation("welcome without limits"))?;
        if let Some(remembered) = &self.remembered {
            remembered.remember(&self.paths[&PathId::PRIMARY].server_name, limits);
        }
        self.activate(id, limits, ctx)
    }

    pub(super) fn on_join(&mut self, join: msg::Join, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let auth = |reason: String| Violation::new(ErrorCode::AuthFailed, reason);
        let Some(server) = ctx.server.filter(|s| !s.trusted_keys.is_empty()) else {
            return Err(auth("this server accepts no paths".into()));
        };
        let session_id = SessionId::from_slice(&join.session_id)
            .ok_or_else(|| auth("session id is not 16 bytes".into()))?;
        // Reject a malformed Join before the token is spent on it.
        let limits = join
            .limits
            .ok_or_else(|| violation("join without limits"))?;
        // The token must name us: checked first, so that a token for
        // another secondary does not use up its single use here.
        if !names_this_server(server, &join.address, &join.server_name) {
            return Err(auth(format!(
                "path token names another secondary ({} at {})",
                join.server_name, join.address
            )));
        }
        let claims = TokenClaims {
            session_id,
            path_id: join.path_id,
            expiry_unix: join.expiry_unix,
            address: join.address,
            server_name: join.server_name,
        };
        ctx.tokens
            .verify(&server.trusted_keys, &claims, &join.token, ctx.unix_now)
            .map_err(|r| auth(r.reason().into()))?;
        self.role = Role::Secondary;
        self.joined_path = PathId(join.path_id);
        self.streams.set_secondary();
        let joined = Body::Joined(msg::Joined {
            limits: Some(self.limits()),
        });
        self.main_conn().send(joined);
        self.activate(session_id, limits, ctx)?;
        ctx.events.push_back(Event::PathJoined {
            session: self.handle,
            id: session_id,
            path: self.joined_path,
        });
        Ok(())
    }

    pub(super) fn activate(
        &mut self,
        id: SessionId,
        peer: Limits,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        // `peer` passed `wire::limits` when its message was decoded.
        self.send_frame_limit = self.transport.max_frame_payload.min(peer.max_frame_payload);
        self.peer_max_control = peer.max_control_message;
        self.streams.set_peer_limits(
            peer.stream_window,
            peer.max_bidi_streams,
            peer.max_uni_streams,
        );
        self.id = Some(id);
        self.phase = Phase::Active;
        tracing::debug!(target: crate::log::CONTROL, session = %self.handle, %id, role = ?self.role, "session active");
        let (lanes, window) = (self.transport.max_lanes, self.transport.receive_window);
        let (server, primary) = (self.side == Side::Server, self.role == Role::Primary);
        let conn = self.main_conn();
        conn.joined = true;
        if server {
            // The peer is authenticated now: the real window, and — a
            // primary's client sends data, a secondary's never does — its
            // lanes.
            if primary {
                conn.allow_lanes(lanes);
            }
            conn.quic.set_receive_window(
                VarInt::from_u64(window.min(VarInt::MAX.into_inner())).expect("clamped"),
            );
        }
        self.set_state(SessionState::Active, ctx.now, ctx.events);
        self.set_path_state(PathId::PRIMARY, PathState::Active, None, ctx);
        if self.role != Role::Secondary {
            ctx.events.push_back(Event::SessionEstablished {
                session: self.handle,
                id,
            });
        }
        self.read_all_lanes(PathId::PRIMARY, ctx)
    }

    /// Client: a secondary accepted the token.
    pub(super) fn on_joined(
        &mut self,
        path: PathId,
        joined: msg::Joined,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        // `wire::check` bounded the limits when the message was decoded.
        let limits = joined
            .limits
            .ok_or_else(|| violation("joined without limits"))?;
        if let Some(cp) = self.client_paths.get_mut(&path) {
            cp.peer_max_control = limits.max_control_message;
        }
        self.conns.get_mut(&path).expect("event source").joined = true;
        // A removal read in the same batch (the primary's RemovePath, the
        // AddPath's deadline) may have made the path Closing already: it
        // joins only to drain and close, never to become Active again.
        if self
            .paths
            .get(&path)
            .is_some_and(|p| p.state == PathState::Handshaking)
        {
            self.set_path_state(path, PathState::Active, None, ctx);
        }
        self.read_all_lanes(path, ctx)
    }
}

/// True if a token naming `address` and `server_name` was minted for this
/// server (per its configured identity; unconfigured parts are not checked).
fn names_this_server(server: &ServerConfig, address: &str, server_name: &str) -> bool {
    let name_ok = server
        .path_server_name
        .as_ref()
        .is_none_or(|ours| ours == server_name);
    let address_ok = server.path_addresses.is_empty()
        || address.parse::<SocketAddr>().is_ok_and(|claimed| {
            server.path_addresses.iter().any(|ours| {
                ours.port() == claimed.port()
                    && (ours.ip().is_unspecified() || ours.ip() == claimed.ip())
            })
        });
    name_ok && address_ok
}

/// Checks a client's Hello against what this server supports; returns the
/// client's limits or the refusal.
pub(super) fn negotiate(hello: &Hello, server_features: u64) -> Result<Limits, Violation> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Violation::new(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks version {}, server speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    let missing = hello.required_features & !server_features;
    if missing != 0 {
        return Err(Violation::new(
            ErrorCode::FeatureMismatch,
            format!("server lacks required features {missing:#x}"),
        ));
    }
    let limits = hello
        .limits
        .ok_or_else(|| violation("hello without limits"))?;
    crate::wire::limits(&limits)?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, required: u64) -> Hello {
        Hello {
            version,
            features: 0,
            required_features: required,
            limits: Some(Limits {
                max_frame_payload: 1,
                max_control_message: crate::wire::MIN_CONTROL_MESSAGE,
                ..Limits::default()
            }),
        }
    }

    #[test]
    fn negotiation_refuses_other_versions_and_missing_features() {
        assert!(negotiate(&hello(PROTOCOL_VERSION, 0), 0).is_ok());
        assert_eq!(
            negotiate(&hello(PROTOCOL_VERSION + 1, 0), 0)
                .unwrap_err()
                .code,
            ErrorCode::VersionMismatch
        );
        assert_eq!(
            negotiate(&hello(PROTOCOL_VERSION, 0b100), 0b011)
                .unwrap_err()
                .code,
            ErrorCode::FeatureMismatch
        );
        assert!(negotiate(&hello(PROTOCOL_VERSION, 0b01), 0b011).is_ok());
    }
}
