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
        if ctx.trusted.is_empty() {
            return Err(Violation::new(
                ErrorCode::AuthFailed,
                "this server accepts no paths",
            ));
        }
        let session_id = SessionId::from_slice(&join.session_id)
            .ok_or_else(|| Violation::new(ErrorCode::AuthFailed, "session id is not 16 bytes"))?;
        // Reject a malformed Join before the token is spent on it.
        let limits = join
            .limits
            .ok_or_else(|| violation("join without limits"))?;
        check_limits(&limits)?;
        let claims = TokenClaims {
            session_id,
            path_id: join.path_id,
            expiry_unix: join.expiry_unix,
        };
        ctx.tokens
            .verify(ctx.trusted, &claims, &join.token, ctx.unix_now)
            .map_err(|r| Violation::new(ErrorCode::AuthFailed, r.reason()))?;
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
        check_limits(&peer)?;
        self.send_frame_limit = self.transport.max_frame_payload.min(peer.max_frame_payload);
        self.peer_max_control = peer.max_control_message;
        self.streams.set_peer_limits(
            peer.stream_window,
            peer.max_bidi_streams,
            peer.max_uni_streams,
        );
        self.id = Some(id);
        self.phase = Phase::Active;
        self.main_conn().joined = true;
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
    pub(super) fn on_joined(&mut self, path: PathId, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        self.conns.get_mut(&path).expect("event source").joined = true;
        self.set_path_state(path, PathState::Active, None, ctx);
        self.read_all_lanes(path, ctx)
    }
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
    hello
        .limits
        .ok_or_else(|| violation("hello without limits"))
}

/// A peer's limits must leave room for data and control messages.
fn check_limits(limits: &Limits) -> Result<(), Violation> {
    if limits.max_frame_payload == 0 || limits.max_control_message < 64 {
        return Err(violation("unusable limits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, required: u64) -> Hello {
        Hello {
            version,
            features: 0,
            required_features: required,
            limits: Some(Limits::default()),
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
