//! What the endpoint tells its driver: [`Output`] from
//! [`KwikEndpoint::poll_output`](crate::KwikEndpoint::poll_output), and the
//! application-facing [`Event`]s inside it.
//!
//! Events are edge-triggered and name exactly one session or stream, so an
//! async adapter can wake precisely the task that can make progress.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::candidate::Candidate;
use crate::delegation::Delegation;
use crate::error::CloseReason;
use crate::health::PathHealth;
use crate::ids::{Dir, IncomingId, SessionHandle, SessionId, StreamId};
use crate::paths::{PathFailure, PathId, PathState};
use crate::proposal::ProposalId;
use crate::state::SessionState;
use crate::transfer::TransferId;

/// One step of output; drain until [`Output::Timeout`].
#[derive(Debug)]
pub enum Output {
    /// Send the datagram(s) now in the caller's buffer.
    Transmit(Transmit),
    /// Something happened that the application may act on.
    Event(Event),
    /// Nothing more to do until new input or this deadline (`None`: no timer).
    Timeout(Option<Instant>),
}

/// Where and how to send the bytes `poll_output` wrote into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub destination: SocketAddr,
    /// Total bytes in the buffer.
    pub size: usize,
    /// If set, the buffer holds several datagrams of this size (the last may
    /// be shorter), to be sent with GSO or split by the caller.
    pub segment_size: Option<usize>,
    /// ECN codepoint to set, as the IP header's two ECN bits.
    pub ecn: Option<u8>,
    /// Source IP to send from, if the endpoint must answer from a specific one.
    pub src_ip: Option<std::net::IpAddr>,
}

/// Application-visible happenings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A client is connecting; answer with
    /// [`KwikEndpoint::accept`](crate::KwikEndpoint::accept),
    /// [`KwikEndpoint::refuse`](crate::KwikEndpoint::refuse) or
    /// [`KwikEndpoint::retry`](crate::KwikEndpoint::retry). Attempts that
    /// the ban list, the Retry policy or the limits of the
    /// [`ServerConfig`](crate::ServerConfig) turned away never surface.
    Incoming {
        /// The pending attempt.
        incoming: IncomingId,
        /// Where it comes from.
        remote: SocketAddr,
        /// True if the client proved it receives at `remote` (it came back
        /// with the token of a Retry); false if `remote` may be forged.
        address_validated: bool,
    },
    /// The kwik handshake completed; the session is active.
    SessionEstablished {
        /// The session.
        session: SessionHandle,
        /// Its server-assigned id.
        id: SessionId,
    },
    /// The fate of a session's 0-RTT data is known (PROTOCOL.md §12).
    ///
    /// Client, when its handshake completes: the server took the Hello and
    /// the early streams (`accepted`), or refused them all and saw none of
    /// them — the Hello has been sent again, and the streams opened for
    /// 0-RTT now fail with `ZeroRttRejected`. Server, when the handshake of
    /// a session whose Hello came in 0-RTT completes (always `accepted`):
    /// the client is live, and nothing the session received was a replay.
    ZeroRttSettled {
        /// The session.
        session: SessionHandle,
        /// Whether the server took the 0-RTT data.
        accepted: bool,
    },
    /// The session ended; no further events name it except `SessionDrained`
    /// and the state transitions of the session and its paths to their
    /// end ([`Event::SessionState`], [`Event::PathState`]).
    SessionClosed {
        /// The session.
        session: SessionHandle,
        /// Why it ended.
        reason: CloseReason,
    },
    /// The session's connection state is gone; its handle is dead.
    SessionDrained {
        /// The session.
        session: SessionHandle,
        /// Its counters as they stood at the end.
        stats: crate::SessionStats,
    },
    /// The peer opened logical streams of this direction; take them with
    /// `accept`.
    StreamOpened {
        /// The session.
        session: SessionHandle,
        /// Direction of the new stream(s).
        dir: Dir,
    },
    /// More streams of this direction may be opened.
    StreamsAvailable {
        /// The session.
        session: SessionHandle,
        /// Direction.
        dir: Dir,
    },
    /// Data, end of stream or a reset can be read.
    StreamReadable {
        /// The session.
        session: SessionHandle,
        /// The stream.
        stream: StreamId,
    },
    /// A write that was blocked may now succeed.
    StreamWritable {
        /// The session.
        session: SessionHandle,
        /// The stream.
        stream: StreamId,
    },
    /// The peer received every byte of the stream up to its end.
    StreamFinished {
        /// The session.
        session: SessionHandle,
        /// The stream.
        stream: StreamId,
    },
    /// The peer abandoned its sending half of the stream.
    StreamReset {
        /// The session.
        session: SessionHandle,
        /// The stream.
        stream: StreamId,
        /// The peer's code.
        code: u64,
    },
    /// The peer asked this side to stop sending; the stream has been reset.
    StreamStopped {
        /// The session.
        session: SessionHandle,
        /// The stream.
        stream: StreamId,
        /// The peer's code.
        code: u64,
    },
    /// The session moved from one state to another (every role; PROTOCOL.md
    /// §15.1). Emitted exactly once per transition, beside the specific
    /// events (`SessionEstablished`, `SessionClosed`, `SessionDrained`):
    /// each `from` is the previous event's `to`, the first `from` is
    /// [`SessionState::Initializing`] and the last `to`
    /// [`SessionState::Closed`], just before `SessionDrained`.
    SessionState {
        /// The session.
        session: SessionHandle,
        /// The state it left.
        from: SessionState,
        /// The state it entered.
        to: SessionState,
    },
    /// A path moved from one state to another (client and primary for every
    /// path, secondary for its connection to the client, path 0;
    /// PROTOCOL.md §15.2). Emitted exactly once per transition, beside the
    /// specific events (`PathAdded`, `PathFailed`, `PathDead`,
    /// `PathClosed`): each `from` is the previous event's `to` for that
    /// path, the first `from` is [`PathState::Initializing`].
    PathState {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
        /// The state it left.
        from: PathState,
        /// The state it entered.
        to: PathState,
    },
    /// A secondary path joined (client and primary).
    PathAdded {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
    },
    /// A path never became active (client and primary).
    PathFailed {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
        /// Why.
        failure: PathFailure,
    },
    /// An active path was declared dead (client and primary).
    PathDead {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
        /// Why.
        failure: PathFailure,
    },
    /// A path's health grade changed (every role; a primary learns a
    /// secondary path's from the client).
    PathHealth {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
        /// The new grade.
        health: PathHealth,
    },
    /// Primary: automatic scaling ([`ServerConfig::autoscale`](crate::ServerConfig::autoscale))
    /// decided to add `path` (`added`; [`Event::PathAdded`] or
    /// [`Event::PathFailed`] follows) or to remove it (`!added`;
    /// [`Event::PathClosed`] follows).
    PathScaled {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
        /// Added (true) or removed (false).
        added: bool,
    },
    /// A path was removed gracefully (client and primary).
    PathClosed {
        /// The session.
        session: SessionHandle,
        /// The path.
        path: PathId,
    },
    /// Primary: a path ended, or gave a stream back (its server reset it),
    /// while these delegated ranges were not yet acknowledged; they must be
    /// written by someone else (with `auto_reassign`, kwik re-delegates
    /// them to another live path, never to the one that lost them).
    RangesLost {
        /// The session.
        session: SessionHandle,
        /// The path that ended or gave the ranges back.
        path: PathId,
        /// The missing ranges, each with its original delegation.
        ranges: Vec<Delegation>,
    },
    /// Secondary: a client joined this server as path `path` of session `id`.
    PathJoined {
        /// The local handle of the secondary session.
        session: SessionHandle,
        /// The session id the primary assigned.
        id: SessionId,
        /// The path id the primary assigned.
        path: PathId,
    },
    /// Secondary: write `delegation.range` of `delegation.stream` with
    /// `write_at`.
    Delegated {
        /// The secondary session.
        session: SessionHandle,
        /// What to write.
        delegation: Delegation,
    },
    /// Secondary: a raw message relayed by the client.
    RawReceived {
        /// The secondary session.
        session: SessionHandle,
        /// The message, boundaries kept.
        payload: Bytes,
    },
    /// Client: the primary answered a path this client proposed with
    /// [`SessionView::propose_path`](crate::SessionView::propose_path)
    /// (PROTOCOL.md §13). Approved, the path is announced by the primary's
    /// AddPath, and follows as [`Event::PathAdded`] or [`Event::PathFailed`]
    /// like any other (the client's own path policy judges it); refused,
    /// the failure carries the primary's code (`KWIK_PROPOSAL_REFUSED`,
    /// `KWIK_RESOURCE_LIMIT`, …) and reason. A proposal outstanding when
    /// the session ends is never answered.
    PathProposalAnswered {
        /// The session.
        session: SessionHandle,
        /// The proposal, as `propose_path` returned it.
        proposal: ProposalId,
        /// The path the primary added for it, or why it refused.
        outcome: Result<PathId, PathFailure>,
    },
    /// Primary: a client proposed a server as a path, and was answered
    /// (PROTOCOL.md §13): approved by the
    /// [`ProposalPolicy`](crate::ProposalPolicy) and added as `Ok(path)`
    /// (its [`Event::PathAdded`] or [`Event::PathFailed`] follows), or
    /// refused with the code and reason the client was given. Proposals
    /// whose address does not parse are refused without this event.
    PathProposed {
        /// The session.
        session: SessionHandle,
        /// The client's number for the proposal.
        proposal: ProposalId,
        /// The server proposed (no preference, no region).
        candidate: Candidate,
        /// The path added for it, or the refusal.
        outcome: Result<PathId, PathFailure>,
    },
    /// Primary: the client acknowledged every byte of a transfer.
    TransferComplete {
        /// The session.
        session: SessionHandle,
        /// The transfer.
        transfer: TransferId,
        /// Its stream.
        stream: StreamId,
    },
}
