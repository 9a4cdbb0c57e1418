//! Liveness probes that a full congestion window cannot hold back.
//!
//! quinn-proto 0.11 decides whether a datagram may leave by what is queued
//! in its packet space: with stream data queued and the congestion window
//! full, not even an ACK or a PING leaves before the next probe timeout.
//! After an outage both ends are in exactly that state: a window full of
//! packets lost in the outage, and probe timeouts backed off to many
//! seconds. Each end's next probe then reaches a peer that cannot answer
//! it, and the connection stays mute until the idle timeout although the
//! link is back.
//!
//! RFC 9002 §7.5 exempts probe packets from the congestion window; kwik
//! does the same for its own liveness probes. Every connection's controller
//! is wrapped in a [`Gated`] one sharing a [`ProbeGate`] with the
//! connection. When a kwik probe is due and quinn-proto sends nothing on
//! its own, the connection is polled for a single datagram with the gate
//! open, i.e. with the window reported as unlimited (which also disables
//! pacing). That datagram carries the PING and the pending ACKs; the peer's
//! answer resets the backoff and loss detection takes over from there.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// The switch a connection shares with its congestion controller: open,
/// the controller reports an unlimited window.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeGate(Arc<AtomicBool>);

impl ProbeGate {
    /// Runs `send` with the window opened, and closes it again.
    pub(crate) fn bypass<T>(&self, send: impl FnOnce() -> T) -> T {
        self.0.store(true, Ordering::Relaxed);
        let out = send();
        self.0.store(false, Ordering::Relaxed);
        out
    }

    fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds the configured controller, wrapped so that `gate` can open it.
pub(crate) struct GatedFactory {
    pub(crate) inner: Arc<dyn ControllerFactory + Send + Sync>,
    pub(crate) gate: ProbeGate,
}

impl ControllerFactory for GatedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Gated {
            inner: self.inner.clone().build(now, current_mtu),
            gate: self.gate.clone(),
        })
    }
}

/// A congestion controller whose window a [`ProbeGate`] can open; it
/// defers everything else to the wrapped one.
pub(crate) struct Gated {
    inner: Box<dyn Controller>,
    gate: ProbeGate,
}

impl Controller for Gated {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.gate.is_open() {
            u64::MAX
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            gate: self.gate.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.inner.into_any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::congestion::NewRenoConfig;

    #[test]
    fn the_gate_opens_the_window_only_while_it_is_held_open() {
        let gate = ProbeGate::default();
        let factory = Arc::new(GatedFactory {
            inner: Arc::new(NewRenoConfig::default()),
            gate: gate.clone(),
        });
        let now = Instant::now();
        let controller = factory.build(now, 1200);
        let normal = controller.window();
        assert!(normal < u64::from(u32::MAX));
        assert_eq!(gate.bypass(|| controller.window()), u64::MAX);
        assert_eq!(controller.window(), normal);
        assert_eq!(controller.metrics().congestion_window, normal);
    }
}
