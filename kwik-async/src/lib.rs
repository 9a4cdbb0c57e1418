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
//! [`Session`] → [`SendStream`] / [`RecvStream`].
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
//!   core and none while the socket is not writable; writers wait on the
//!   core's flow control, never on an unbounded queue here.
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
mod runtime;
mod session;
mod shared;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{client_config, client_config_trusting, dev, server_config};
pub use endpoint::{Connecting, Endpoint, Incoming};
pub use error::{
    ConnectError, ConnectionError, ReadError, ReadToEndError, StoppedError, StreamError, WriteError,
};
pub use runtime::{Adapter, AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};
pub use session::Session;
pub use stream::{RecvStream, SendStream};

pub use bytes::Bytes;
pub use kwik_core::{
    ALPN, ClientConfig, CloseError, CloseReason, ConfigError, CongestionControl, Dir, ErrorCode,
    ServerConfig, SessionHandle, SessionId, SessionStats, StreamId, TransportConfig,
};
pub use rustls;
