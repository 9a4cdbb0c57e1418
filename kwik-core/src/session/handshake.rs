//! The kwik handshakes of a session: Hello/Welcome on the primary
//! connection, Join/Joined on a secondary path, and the checks of the
//! limits each side announces.

use super::*;

impl Session {
    /// Client: the QUIC handshake of `path` completed; open its control stream.
    pub(super) fn on_connected(&mut self, path: PathId) -> Result<(), Violation> {
        let first = if path == PathId::PRIMARY {
            Body::Hello(Hello {
                version: PROTOCOL_VERSION,
                features: SUPPORTED_FEATURES,
                required_features: self.transport.required_features,
                limits: Some(self.limits()),
            })
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

    pub(super) fn on_hello(&mut self, hello: Hello, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let limits = negotiate(&hello, self.server_features)?;
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
        let now = ctx.now;
        if let Some(p) = self.paths.get_mut(&PathId::PRIMARY) {
            p.set_state(PathState::Active, now);
        }
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
        self.set_path_state(path, PathState::Active, None, ctx);
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
