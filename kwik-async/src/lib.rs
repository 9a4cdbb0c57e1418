//! kwik-async: the runtime-independent half of kwik's async adapters.
//!
//! [`kwik_core`] is a sans-IO state machine; something has to own a UDP
//! socket, a clock and the application's futures. This crate does that once
//! for every runtime: one **driver task per endpoint** moves datagrams
//! between the socket and the core, sleeps until the core's next deadline,
//! and wakes exactly the futures an event lets progress. A runtime adapter
//! (`kwik-tokio`, `kwik-smol`) only supplies a socket that can wait for
//! readiness, a timer and `spawn` ([`Runtime`]), plus stream newtypes that
//! implement its I/O traits ([`Adapter`], [`adapter_streams!`]).
//!
//! The API is shaped like quinn's: [`Endpoint`] → [`Connecting`] →
//! [`Session`] → [`SendStream`] / [`RecvStream`]. A client that talked to a
//! server before resumes its TLS session, and may send its Hello and
//! idempotent requests in 0-RTT with [`Connecting::into_0rtt`] (see
//! [`ZeroRttAccepted`]; PROTOCOL.md §12).
//!
//! Multi-server sessions use the same handles. A primary's [`Session`] adds
//! secondary servers as paths ([`Session::add_path`], which resolves to the
//! path once the client joined it, or to the client's report of why not),
//! removes them ([`Session::remove_path`]), lists them ([`Session::paths`])
//! and follows them ([`Session::path_event`]); it serves a resource from
//! every path at once with the multi-source transfer helper
//! ([`Session::serve`] → [`Transfer::finished`]), or hands ranges out by
//! hand ([`Session::delegate`], [`Session::outstanding`]) and relays raw
//! messages ([`Session::send_raw`]). On a secondary server, accepting a
//! joining client yields a [`Session`] too (established by the join): its
//! application takes delegations ([`Session::delegated`]) and raw messages
//! ([`Session::recv_raw`]) and writes ranges with [`Session::write_at`] —
//! or lets the endpoint serve a known resource by itself
//! ([`Endpoint::serve_resource`]). [`rate_limited`] caps an endpoint's
//! sending rate, for demonstrations of aggregation on loopback.
//!
//! [`Endpoint::register_metrics`] exports an endpoint's counters (the
//! door's, and per session and path, capped) to a
//! [`prometheus_client`] registry, read at scrape time; see [`metrics`].
//!
//! # Design
//! * **Locking.** The core sits behind one mutex per endpoint with the
//!   wakers beside it. Critical sections are a core call or a drained batch
//!   of output; socket calls and waking happen outside, and nothing awaits
//!   while holding it.
//! * **Waking.** Futures register under the key of what they wait for (a
//!   stream's read or write side, a session's accept/open of one direction,
//!   the endpoint's accept), in the same critical section in which the core
//!   said "blocked", so an event can never fall between the two.
//! * **Backpressure.** The driver takes a bounded batch of transmits from the
//!   core and none while its sender task is behind; writers wait on the
//!   core's flow control, never on an unbounded queue here. What the core
//!   reports unasked (path events, delegations, raw messages) is queued per
//!   session with a bound (see [`Session::path_event`] and
//!   [`Session::delegated`]).
//! * **Randomness.** Each endpoint's seed comes from the OS RNG.
//!
//! Sockets go through quinn-udp: GSO on send, GRO on receive, ECN where the
//! platform has it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod driver;
mod endpoint;
mod error;
pub mod metrics;
mod multi;
mod reconnect;
mod runtime;
mod session;
mod shared;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
mod throttle;

pub use config::{client_config, client_config_trusting, dev, server_config};
pub use endpoint::{Connecting, Endpoint, Incoming};
pub use error::{
    ConnectError, ConnectionError, ReadError, ReadToEndError, RetryError, StoppedError,
    StreamError, WriteError,
};
pub use metrics::MetricsOptions;
pub use multi::{PathError, PathEvent, Transfer};
pub use reconnect::{ReconnectError, ReconnectPolicy, Reconnector};
pub use runtime::{Adapter, AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};
pub use session::{Session, ZeroRttAccepted};
pub use stream::{RecvStream, SendStream};
pub use throttle::rate_limited;

pub use bytes::Bytes;
pub use kwik_core::Side;
pub use kwik_core::scaling;
pub use kwik_core::{
    ALPN, ApproveListed, Candidate, ClientConfig, CloseError, CloseReason, ConfigError,
    CongestionControl, Delegation, DelegationId, Dir, DisconnectKind, EndpointStats, ErrorCode,
    MAX_STREAM_PRIORITY, PathFailure, PathFilter, PathHealth, PathId, PathInfo, PathPolicy,
    PathState, PathTarget, ProposalContext, ProposalDecision, ProposalId, ProposalPolicy,
    RefuseAll, Resource, RetryPolicy, Role, ServerConfig, SessionHandle, SessionId, SessionStats,
    SessionsClosed, SharedResource, StreamId, TokenKey, TransferConfig, TransferId,
    TransportConfig, ZeroRtt,
};
#[cfg(feature = "qlog")]
pub use kwik_core::{QlogSink, QlogTarget};
pub use prometheus_client;
pub use rustls;
