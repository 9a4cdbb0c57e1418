//! 0-RTT resumption (PROTOCOL.md §12): what a session knows about it, and
//! what a client remembers of the servers it talked to.
//!
//! A client that resumes a TLS session may send its first flight in 0-RTT:
//! the Hello, and data of the streams its application declared idempotent.
//! The server answers in 0.5-RTT, so the first byte of an answer arrives one
//! round trip after the client started instead of three. The price is that
//! 0-RTT data can be replayed by anyone who captured it, so what may ride in
//! it is restricted to what is harmless when repeated, and a server does
//! nothing before the handshake completes that a replay could abuse (it
//! sends no AddPath, acts on no Join, bans nobody, and keeps the session
//! half-open, under the handshake deadline).
//!
//! Two things must be remembered from one session to the next:
//!
//! * the TLS session ticket, with QUIC's transport parameters in it —
//!   rustls' client session store does this (in memory, per server name;
//!   on by default);
//! * the kwik limits of the server's Welcome (stream window, stream counts,
//!   record size), without which the client cannot know how much early
//!   data the server takes before its Welcome arrives. [`RememberedLimits`]
//!   keeps them beside the ticket store: one per [`ClientConfig`], shared
//!   by its clones, per server name, bounded.
//!
//! [`ClientConfig`]: crate::ClientConfig

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::proto::common::Limits;

/// Where a session stands with 0-RTT (PROTOCOL.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ZeroRtt {
    /// No 0-RTT: not asked for, no usable ticket (client), or the Hello
    /// arrived after the handshake (server).
    #[default]
    Off,
    /// Client: the Hello (and the idempotent streams) went out in 0-RTT;
    /// whether the server takes them is not known yet. Server: the Hello
    /// arrived in 0-RTT and the QUIC handshake has not completed: what the
    /// session received so far may be a replay of an earlier client's first
    /// flight (PROTOCOL.md §12.2).
    Pending,
    /// The server took the 0-RTT data. On the server this is reported once
    /// the handshake has completed: the client is live, and nothing the
    /// session received was a replay.
    Accepted,
    /// Client: the server refused the 0-RTT data and saw none of it. The
    /// Hello was sent again after the handshake; the streams opened for
    /// 0-RTT failed with `ZeroRttRejected` and their ids are free again.
    Rejected,
}

/// Lanes a server that accepts 0-RTT allows before the Hello (QUIC's
/// `initial_max_streams_uni`): a bulk and an urgent lane, enough for any
/// early data. The transport parameters a client remembers are these
/// initial ones, and a server allows no lane before the Hello otherwise, so
/// without them early data could not be sent at all.
pub(crate) const EARLY_LANES: u32 = 2;

/// Server names a [`RememberedLimits`] keeps (as many as rustls' default
/// client session store).
const REMEMBERED_SERVERS: usize = 256;

/// The limits of the latest Welcome of each server, by server name.
#[derive(Debug, Default)]
struct Store {
    limits: BTreeMap<String, (u64, Limits)>,
    /// Insertion counter: the oldest entry goes first when full.
    seq: u64,
}

/// What a client remembers of each server's Welcome, so that early data
/// stays within the server's limits before its next Welcome arrives (as
/// QUIC remembers transport parameters, RFC 9000 §7.4.1). Cloning shares
/// the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct RememberedLimits(Arc<Mutex<Store>>);

impl RememberedLimits {
    /// Records the limits `server_name` announced in its Welcome.
    pub(crate) fn remember(&self, server_name: &str, limits: Limits) {
        let Ok(mut store) = self.0.lock() else { return };
        store.seq += 1;
        let seq = store.seq;
        store.limits.insert(server_name.to_owned(), (seq, limits));
        if store.limits.len() > REMEMBERED_SERVERS {
            let oldest = store
                .limits
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                store.limits.remove(&name);
            }
        }
    }

    /// The limits `server_name` announced last, if remembered.
    pub(crate) fn recall(&self, server_name: &str) -> Option<Limits> {
        let store = self.0.lock().ok()?;
        store.limits.get(server_name).map(|(_, limits)| *limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(window: u64) -> Limits {
        Limits {
            stream_window: window,
            max_bidi_streams: 4,
            max_uni_streams: 4,
            max_frame_payload: 1000,
            max_control_message: 4096,
        }
    }

    #[test]
    fn remembers_the_latest_welcome_per_server_and_forgets_the_oldest() {
        let store = RememberedLimits::default();
        assert_eq!(store.recall("a"), None);
        store.remember("a", limits(1));
        store.remember("a", limits(2));
        assert_eq!(store.recall("a"), Some(limits(2)));
        // Clones share the store.
        let clone = store.clone();
        for i in 0..REMEMBERED_SERVERS as u64 {
            clone.remember(&format!("s{i}"), limits(i));
        }
        // "a" was the oldest: it went to make room.
        assert_eq!(store.recall("a"), None);
        assert_eq!(store.recall("s0"), Some(limits(0)));
        assert_eq!(
            store.0.lock().unwrap().limits.len(),
            REMEMBERED_SERVERS,
            "bounded"
        );
    }
}
