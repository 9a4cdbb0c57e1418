//! The interface between the simulator and a simulated endpoint.
//!
//! A node is a sans-IO state machine plus the bit of application logic that
//! drives it. The simulator owns the clock and the network: it hands the node
//! datagrams and timeouts, asks it for datagrams to send and for its next
//! deadline, and lets the application react after every input through
//! [`Node::step`]. The shape mirrors quinn-proto's own endpoint API
//! (`handle` / `handle_timeout` / `poll_transmit` / `poll_timeout`) so both
//! kwik's endpoint and bare quinn endpoints adapt to it with little glue.
//!
//! The trait is object safe and has [`Any`](std::any::Any) as a supertrait so
//! the simulator can store heterogeneous nodes as `Box<dyn Node>` while tests
//! still get their concrete type back (`Sim::node::<T>`).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;

use crate::trace::Trace;

/// A simulated endpoint: a sans-IO state machine driven by the simulator.
pub trait Node: std::any::Any {
    /// A datagram arrived at local address `local` from `remote`.
    fn receive(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, datagram: BytesMut);

    /// The deadline returned by [`poll_timeout`](Node::poll_timeout) has passed.
    fn handle_timeout(&mut self, now: Instant);

    /// Next datagram(s) to send: bytes written into `buf` (empty on entry,
    /// may hold a GSO batch described by [`Transmit::segment_size`]).
    ///
    /// The simulator calls this repeatedly after every input until it
    /// returns `None`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit>;

    /// Earliest deadline the node wants to be woken at.
    ///
    /// A deadline at or before the current time fires at the current time.
    fn poll_timeout(&mut self) -> Option<Instant>;

    /// Application logic run after every input at the current time: drain
    /// events, act, record trace lines.
    fn step(&mut self, now: Instant, trace: &mut Trace) {
        let _ = (now, trace);
    }

    /// True once the node's application has finished its job (used by the
    /// `run_until_done` helpers). Nodes without a job are always done.
    fn done(&self) -> bool {
        true
    }
}

/// Metadata of the datagram(s) a node wrote into the buffer passed to
/// [`Node::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Local address the datagrams leave from (must be one of the node's).
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// GSO: `buf` holds several datagrams of this size (last may be
    /// shorter). `None` means `buf` is one datagram.
    pub segment_size: Option<usize>,
}
