//! `kwik-sim`: a deterministic discrete-event network simulator in virtual time.
//!
//! kwik-core is sans-IO: it never reads a clock or opens a socket, time and
//! datagrams are inputs and transmits and deadlines are outputs. That lets a
//! test run whole multi-server scenarios without real networking, thousands
//! of times faster than wall time and with exactly reproducible results: the
//! same seed produces the same event trace, so a failure found once can be
//! replayed and debugged.
//!
//! The crate is split by concern:
//!
//! * [`alloc`] — a counting global allocator with per-node meters, for
//!   memory bounds;
//! * [`node`] — the [`Node`] trait every simulated endpoint implements;
//! * [`link`] — the per-direction link model (latency, rate, buffer, loss,
//!   jitter, duplication, outages) and its counters;
//! * [`trace`] — the deterministic event trace and its digest;
//! * [`sim`] — the event loop ([`Sim`]) tying nodes and links together;
//! * [`certs`] — throw-away TLS certificates and rustls / quinn configs;
//! * [`seeding`] — quinn-proto configs with every random source seeded;
//! * [`quic_driver`] — the quinn-proto endpoint plumbing shared by the
//!   bare-quinn nodes ([`quinn_node`], [`hostile`]);
//! * [`chaos`] — seeded random multi-server scenarios (loss, reordering,
//!   duplication, corruption, outages, deaths), a runner and a judge;
//! * [`quinn_node`] — a bare quinn-proto bulk-transfer pair, used to validate
//!   the simulator and as the baseline contender in benchmarks;
//! * [`wire`] — the kwik wire written out by hand, for the hostile nodes;
//! * [`hostile`], [`hostile_secondary`], [`hostile_primary`] — scripted
//!   misbehaving peers of each role (client, secondary server, primary
//!   server) built on bare quinn-proto;
//! * [`spoof`] — an off-path attacker replaying captured datagrams under a
//!   forged source address;
//! * [`abuse`] — resource-exhaustion attacks on one kwik endpoint with its
//!   heap use and CPU time metered, shared by the trust tests and the
//!   `abuse` benchmark;
//! * [`fuzz`] — the fuzz harnesses and their invariants, shared by `fuzz/`
//!   and the property tests;
//! * [`handshakes`] — load on a server's door: forged client Initials, mute
//!   clients, and a client that only connects;
//! * [`resume`] — 0-RTT resumption: a server answering requests and clients
//!   that resume with or without 0-RTT, measuring the first byte.

pub mod abuse;
pub mod alloc;
pub mod apps;
pub mod certs;
pub mod chaos;
pub mod fuzz;
pub mod handshakes;
pub mod hostile;
pub mod hostile_primary;
pub mod hostile_secondary;
pub mod kwik_node;
pub mod link;
pub mod multi;
pub mod node;
pub mod pair;
pub mod quic_driver;
pub mod quinn_node;
pub mod resume;
pub mod seeding;
pub mod setup;
pub mod sim;
pub mod spoof;
pub mod states;
pub mod trace;
pub mod wire;

pub use apps::{BulkClient, BulkServer, Payload, Received};
pub use certs::DevCert;
pub use kwik_node::{App, KwikNode};
pub use link::{LinkConfig, LinkStats};
pub use node::{Node, Transmit};
pub use quinn_node::{Congestion, QuinnBulkNode, StreamChecksum, sim_transport_config};
pub use seeding::{
    SeededCidGenerator, seeded_client_config, seeded_endpoint_config, seeded_server_config,
};
pub use sim::{NodeId, Sim, StallReason, Stalled};
pub use trace::{Trace, TraceLine};
