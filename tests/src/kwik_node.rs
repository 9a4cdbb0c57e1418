//! A simulated host running one [`KwikEndpoint`] and an application.
//!
//! The node drains `poll_output` after every input, hands each event to the
//! application (which acts on the endpoint directly) and records it in the
//! trace, so that the trace is a faithful, deterministic log of what every
//! application saw. Transmit buffers are handed to the simulator by swapping
//! `Vec`s, never copied.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use kwik_core::{Event, KwikEndpoint, Output};

use crate::node::{Node, Transmit};
use crate::states::StateLog;
use crate::trace::Trace;

/// Application logic running on a [`KwikNode`].
pub trait App: 'static {
    /// Called for every event the endpoint emits, in order.
    fn on_event(
        &mut self,
        endpoint: &mut KwikEndpoint,
        now: Instant,
        event: &Event,
        trace: &mut Trace,
    );

    /// Called after the endpoint is drained; return `true` if the app acted
    /// (the node then drains again).
    fn poll(&mut self, endpoint: &mut KwikEndpoint, now: Instant, trace: &mut Trace) -> bool {
        let _ = (endpoint, now, trace);
        false
    }

    /// True once the application's job is complete.
    fn done(&self) -> bool {
        true
    }
}

/// A host with one kwik endpoint bound to `addr`.
pub struct KwikNode<A: App> {
    /// The endpoint under test.
    pub endpoint: KwikEndpoint,
    /// The application driving it.
    pub app: A,
    addr: SocketAddr,
    outbox: VecDeque<(Transmit, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    deadline: Option<Instant>,
    /// Record every event in the trace (on by default).
    pub trace_events: bool,
    /// Every state transition the endpoint reported (always kept).
    pub states: StateLog,
}

impl<A: App> KwikNode<A> {
    /// Wraps an endpoint bound to `addr`.
    pub fn new(addr: SocketAddr, endpoint: KwikEndpoint, app: A) -> Self {
        Self {
            endpoint,
            app,
            addr,
            outbox: VecDeque::new(),
            spare: Vec::new(),
            deadline: None,
            trace_events: true,
            states: StateLog::default(),
        }
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn drain(&mut self, now: Instant, trace: &mut Trace) {
        loop {
            let mut buf = self.spare.pop().unwrap_or_default();
            match self.endpoint.poll_output(&mut buf) {
                Output::Transmit(t) => {
                    let transmit = Transmit {
                        src: self.addr,
                        dst: t.destination,
                        segment_size: t.segment_size,
                    };
                    buf.truncate(t.size);
                    self.outbox.push_back((transmit, buf));
                }
                Output::Event(event) => {
                    self.spare.push(buf);
                    if self.trace_events {
                        trace.record(now, format_args!("{event:?}"));
                    }
                    self.states.record(&event);
                    self.app.on_event(&mut self.endpoint, now, &event, trace);
                }
                Output::Timeout(deadline) => {
                    self.spare.push(buf);
                    self.deadline = deadline;
                    if !self.app.poll(&mut self.endpoint, now, trace) {
                        return;
                    }
                }
            }
        }
    }
}

impl<A: App> Node for KwikNode<A> {
    fn receive(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        remote: SocketAddr,
        datagram: BytesMut,
    ) {
        self.endpoint
            .handle_datagram(now, remote, None, None, datagram);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (transmit, mut data) = self.outbox.pop_front()?;
        std::mem::swap(buf, &mut data);
        data.clear();
        self.spare.push(data);
        Some(transmit)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.deadline
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        self.drain(now, trace);
    }

    fn done(&self) -> bool {
        self.app.done()
    }
}
