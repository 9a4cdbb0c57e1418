//! Log targets, one per concern, so that `RUST_LOG=kwik::paths=debug`
//! shows exactly the paths and nothing else.
//!
//! Every kwik event is emitted under one of these targets with the ids
//! that place it (`session`, `path`, `stream`), so a filtered log still
//! says where each line belongs. The spans that nest those lines
//! (endpoint → session → path → stream) have their own target,
//! [`SPANS`]: enable it beside a component to see the nesting.
//!
//! Levels: `debug` for every state change and every violation (each once,
//! with its kwik code), `trace` for per-message and per-range detail.
//! Nothing a peer sends is logged above `debug`, so a hostile peer cannot
//! flood the logs of an application that keeps the default `info`.

/// Session handshakes, control messages, session states and protocol
/// violations.
pub const CONTROL: &str = "kwik::control";
/// Logical streams and their lanes: opened, finished, reset, stopped.
pub const DATA: &str = "kwik::data";
/// Paths: added, joined, state and health changes, liveness verdicts.
pub const PATHS: &str = "kwik::paths";
/// Delegated ranges: handed out, forwarded, taken, lost, re-assigned,
/// given back.
pub const DELEGATION: &str = "kwik::delegation";
/// Endpoint defences: refusals, Retry, bans, handshake deadlines.
pub const ENDPOINT: &str = "kwik::endpoint";
/// The async driver: sockets, tasks, queues (kwik-async).
pub const DRIVER: &str = "kwik::driver";
/// Spans: `kwik_endpoint`, `kwik_session`, `kwik_path`, `kwik_stream`.
pub const SPANS: &str = "kwik::spans";
