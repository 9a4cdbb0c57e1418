//! A sending-rate cap for an endpoint's socket: a token bucket between the
//! driver and the runtime's UDP socket.
//!
//! It exists for demonstrations and benchmarks on loopback, where every
//! server would otherwise send as fast as the CPU allows: with each server
//! capped, what a multi-server session aggregates becomes visible. It is
//! not protocol logic: the cap only delays sends (the socket looks "not
//! writable" while the bucket is empty), so the driver leaves the data in
//! the core's bounded buffers, congestion control sees a slower link, and
//! nothing is dropped.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::{AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};

/// The bucket holds this much sending time at the cap: bursts stay short,
/// yet a timer firing a millisecond late costs no throughput.
const BURST: Duration = Duration::from_millis(4);
/// Smallest bucket: one full GSO batch must always fit.
const MIN_BURST_BYTES: f64 = 64.0 * 1024.0;

/// `runtime`, except that the sockets of endpoints started on it send at
/// most `bits_per_second` of UDP payload each (a token bucket of a few
/// milliseconds' worth). Use with
/// [`Endpoint::with_runtime`](crate::Endpoint::with_runtime).
///
/// # Panics
/// If `bits_per_second` is 0.
pub fn rate_limited(runtime: Arc<dyn Runtime>, bits_per_second: u64) -> Arc<dyn Runtime> {
    assert!(bits_per_second > 0, "a rate limit of 0 would never send");
    Arc::new(RateLimited {
        inner: runtime,
        bytes_per_second: bits_per_second as f64 / 8.0,
    })
}

struct RateLimited {
    inner: Arc<dyn Runtime>,
    bytes_per_second: f64,
}

impl fmt::Debug for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .field("bits_per_second", &(self.bytes_per_second * 8.0))
            .finish()
    }
}

impl Runtime for RateLimited {
    fn new_timer(&self, deadline: Instant) -> Box<dyn AsyncTimer> {
        self.inner.new_timer(deadline)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.inner.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn AsyncUdpSocket>> {
        let now = self.inner.now();
        let burst = (self.bytes_per_second * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
        Ok(Box::new(LimitedSocket {
            socket: self.inner.wrap_udp_socket(socket)?,
            runtime: self.inner.clone(),
            timer: self.inner.new_timer(now),
            rate: self.bytes_per_second,
            burst,
            tokens: burst,
            refilled: now,
        }))
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }
}

struct LimitedSocket {
    socket: Box<dyn AsyncUdpSocket>,
    runtime: Arc<dyn Runtime>,
    timer: Box<dyn AsyncTimer>,
    /// Bytes per second.
    rate: f64,
    burst: f64,
    /// May go negative: a send is allowed while positive and then charged
    /// in full, so the average rate is exact whatever the datagram sizes.
    tokens: f64,
    refilled: Instant,
}

impl fmt::Debug for LimitedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedSocket")
            .field("socket", &self.socket)
            .field("bytes_per_second", &self.rate)
            .finish_non_exhaustive()
    }
}

impl LimitedSocket {
    fn refill(&mut self) {
        let now = self.runtime.now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }
}

impl AsyncUdpSocket for LimitedSocket {
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        op: &mut dyn FnMut(UdpSockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if interest == Interest::Readable {
            return self.socket.poll_io(cx, interest, op);
        }
        loop {
            self.refill();
            if self.tokens > 0.0 {
                break;
            }
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            self.timer.reset(self.refilled + wait);
            if self.timer.poll_elapsed(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let result = self.socket.poll_io(cx, interest, op);
        if let Poll::Ready(Ok(sent)) = &result {
            self.tokens -= *sent as f64;
        }
        result
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
