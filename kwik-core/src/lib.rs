//! kwik-core: the sans-IO heart of kwik.
//!
//! A kwik **session** looks like one QUIC connection to the application —
//! logical streams that are opened, written, finished, reset and stopped —
//! while its bytes travel as length-delimited records over a pool of real
//! QUIC streams, with per-logical-stream credit so that streams sharing a
//! real stream never block each other.
//!
//! A session can be served by several servers at once. The **primary** (the
//! server the client dialled) asks the client to join **secondary** servers
//! ([`SessionView::add_path`]), authorised by single-use HMAC path tokens
//! ([`TokenKey`]); it then delegates byte ranges of its streams to them
//! ([`SessionView::delegate`]) or lets the multi-source scheduler do it
//! ([`SessionView::serve`]). Secondaries write at logical offsets
//! ([`SessionView::write_at`]); the client reassembles one ordered stream,
//! acknowledges what arrived, and reports dead paths so that their missing
//! ranges are re-assigned: no byte is lost, none is delivered twice.
//!
//! A client may also propose a server it found itself
//! ([`SessionView::propose_path`]); the primary approves it only if its
//! [`ProposalPolicy`] does (by default none, [`RefuseAll`]) and answers with
//! an ordinary AddPath and token, or a refusal (PROTOCOL.md §13).
//!
//! A client that talked to a server before resumes its TLS session, and may
//! send its Hello and the streams it declares idempotent in 0-RTT
//! ([`SessionView::start_0rtt`], [`SessionView::open_idempotent`]); a server
//! configured for it ([`ServerConfig::early_data`]) answers before the
//! handshake completes, a round trip sooner — within the replay rules of
//! PROTOCOL.md §12 ([`ZeroRtt`]).
//!
//! [`KwikEndpoint`] is a pure state machine: it reads no clock, opens no
//! socket and spawns nothing. Time and datagrams go in; transmits, events and
//! the next deadline come out of [`KwikEndpoint::poll_output`]. The same seed
//! and inputs give the same outputs, which is what lets kwik be tested in a
//! deterministic network simulator.
//!
//! ```no_run
//! use std::time::Instant;
//! use kwik_core::{EndpointConfig, KwikEndpoint, Output};
//!
//! let mut endpoint = KwikEndpoint::new(EndpointConfig::new([7; 32]), None, Instant::now());
//! let mut buf = Vec::new();
//! loop {
//!     match endpoint.poll_output(&mut buf) {
//!         Output::Transmit(t) => { /* send buf[..t.size] to t.destination */ }
//!         Output::Event(event) => { /* act on it through endpoint.session(..) */ }
//!         Output::Timeout(_deadline) => break, // wait for a datagram or the deadline
//!     }
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod assembler;
mod candidate;
mod codec;
mod config;
mod conn;
mod defence;
mod delegation;
mod endpoint;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod ids;
mod lanes;
pub mod log;
mod paths;
mod probe_gate;
mod proposal;
pub mod proto;
#[cfg(feature = "qlog")]
mod qlog;
mod ranges;
pub mod scaling;
mod seeded;
mod session;
mod state;
mod streams;
mod token;
mod transfer;
mod view;
mod wire;
mod zero_rtt;

pub use candidate::{Candidate, normalize_candidates, undialable};
pub use config::{
    ALPN, ClientConfig, ConfigError, CongestionControl, EndpointConfig, LossDetection,
    MAX_TIME_THRESHOLD, PRE_HANDSHAKE_WINDOW, PROTOCOL_VERSION, RetryPolicy, SUPPORTED_FEATURES,
    ServerConfig, TransportConfig,
};
pub use defence::{EndpointStats, SessionsClosed};
pub use delegation::{Delegation, DelegationId};
pub use endpoint::{KwikEndpoint, RetryError, UnknownIncoming};
pub use error::{
    CloseError, CloseReason, ConnectError, DisconnectKind, ErrorCode, KWIK_CODE_BASE, OpenError,
    ReadError, StreamError, WriteError,
};
pub use event::{Event, Output, Transmit};
pub use health::PathHealth;
pub use ids::{Dir, IncomingId, SessionHandle, SessionId, Side, StreamId};
pub use lanes::MAX_STREAM_PRIORITY;
pub use paths::{
    MAX_FINAL_PATHS, PathError, PathFailure, PathFilter, PathId, PathInfo, PathPolicy, PathRetry,
    PathState, PathTarget,
};
pub use proposal::{
    ApproveListed, MAX_OUTSTANDING_PROPOSALS, MAX_PENDING_PROPOSED_PATHS, PROPOSAL_BURST,
    PROPOSAL_RATE, ProposalContext, ProposalDecision, ProposalId, ProposalPolicy, RefuseAll,
};
#[cfg(feature = "qlog")]
pub use qlog::{QlogSink, QlogTarget};
pub use ranges::RangeSet;
pub use session::{Role, SessionStats};
pub use state::{MAX_HISTORY, SessionInfo, SessionState};
pub use streams::SendState;
pub use token::TokenKey;
pub use transfer::{Resource, SharedResource, TransferConfig, TransferId};
pub use view::{SessionView, StreamView};
pub use zero_rtt::ZeroRtt;
