//! Identifiers: local handles, the server-assigned session id, and logical
//! stream ids.
//!
//! Local handles are plain counters that are never reused, so an application
//! holding a stale handle gets `None` instead of another session. Logical
//! stream ids follow QUIC's layout (initiator and direction in the two low
//! bits) so that either side can open streams without coordination.

use std::fmt;

/// Which end of a session this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The side that dialled.
    Client,
    /// The side that accepted.
    Server,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// Direction of a logical stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// Both sides send and receive.
    Bi,
    /// Only the opener sends.
    Uni,
}

/// Local handle of a session on one [`KwikEndpoint`](crate::KwikEndpoint).
///
/// Handles are never reused during the endpoint's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle(pub u64);

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session#{}", self.0)
    }
}

/// Local handle of a connection attempt waiting for the server application's
/// accept or refuse decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncomingId(pub u64);

/// Server-assigned, unguessable (128-bit random) identity of a session,
/// shared by both ends once the session is established.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// Length of a session id on the wire.
    pub const LEN: usize = 16;

    /// Parses the wire form; `None` unless exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Identity of a logical stream within a session.
///
/// Bit 0 names the initiator (0 client, 1 server), bit 1 the direction
/// (0 bidirectional, 1 unidirectional); the rest is a per-kind index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// Builds the id of the `index`-th stream of a kind.
    pub fn new(initiator: Side, dir: Dir, index: u64) -> Self {
        let side_bit = matches!(initiator, Side::Server) as u64;
        let dir_bit = matches!(dir, Dir::Uni) as u64;
        StreamId(index << 2 | dir_bit << 1 | side_bit)
    }
    /// Which side opened the stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }
    /// Direction of the stream.
    pub fn dir(self) -> Dir {
        if self.0 & 2 == 0 { Dir::Bi } else { Dir::Uni }
    }
    /// Index among the streams of its initiator and direction.
    pub fn index(self) -> u64 {
        self.0 >> 2
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.initiator() {
            Side::Client => "c",
            Side::Server => "s",
        };
        let dir = match self.dir() {
            Dir::Bi => "bi",
            Dir::Uni => "uni",
        };
        write!(f, "{who}{dir}{}", self.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_layout_matches_quic() {
        for side in [Side::Client, Side::Server] {
            for dir in [Dir::Bi, Dir::Uni] {
                let id = StreamId::new(side, dir, 77);
                assert_eq!((id.initiator(), id.dir(), id.index()), (side, dir, 77));
            }
        }
        assert_eq!(StreamId::new(Side::Server, Dir::Uni, 1).0, 7);
    }
}
