//! The runtime seam: the three things the shared driver needs from an async
//! runtime — a UDP socket it can wait on, a timer, and a way to spawn.
//!
//! Everything else (routing datagrams, timers of the sans-IO core, waking
//! application futures) is runtime-independent and lives once in this crate,
//! so `kwik-tokio` and `kwik-smol` stay a few dozen lines each. The traits are
//! object-safe: the driver holds `Box<dyn ..>` values and is compiled once.
//!
//! [`Adapter`] is the one generic piece: it names the runtime and the stream
//! types an adapter hands out. The stream types are the adapter's own
//! newtypes (see [`adapter_streams!`](crate::adapter_streams)), because only
//! the adapter crate may implement its runtime's I/O traits on them.

use std::fmt::Debug;
use std::future::Future;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use quinn_udp::UdpSockRef;

use crate::stream::{RecvStream, SendStream};

/// An async runtime the driver can run on.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// A timer that first fires at `deadline`.
    fn new_timer(&self, deadline: Instant) -> Box<dyn AsyncTimer>;

    /// Runs `future` to completion in the background.
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>);

    /// Registers a bound, non-blocking socket with the runtime's reactor.
    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn AsyncUdpSocket>>;

    /// The current time on the runtime's clock.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A resettable one-shot timer.
pub trait AsyncTimer: Send + Debug {
    /// Makes the timer fire at `deadline` instead (even if it already fired).
    fn reset(&mut self, deadline: Instant);

    /// Ready once the deadline has passed; registers `cx` otherwise.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// What a socket operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Datagrams to receive.
    Readable,
    /// Room in the send buffer.
    Writable,
}

/// A UDP socket registered with a runtime's reactor.
///
/// The driver performs the actual `sendmsg`/`recvmsg` calls itself through
/// quinn-udp (for GSO, GRO and ECN); the runtime only tracks readiness.
pub trait AsyncUdpSocket: Send + Debug + 'static {
    /// Runs the non-blocking operation `op` on the socket. If it fails with
    /// [`io::ErrorKind::WouldBlock`], waits for `interest` readiness
    /// (registering `cx`) and tries again; `Pending` means `cx` will be woken
    /// once the socket is ready. Any other outcome is returned as is.
    ///
    /// A sending `op` returns the bytes it sent (UDP payload), a receiving
    /// one the number of datagram buffers it filled.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        op: &mut dyn FnMut(UdpSockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>>;

    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Binds the runtime-generic API to one runtime crate: which runtime the
/// endpoints run on and which stream types sessions hand out.
///
/// `kwik-tokio` and `kwik-smol` each implement it on a marker type and alias
/// `Endpoint = kwik_async::Endpoint<Marker>` (and so on), so both crates
/// expose the same API implemented once here. The stream types dereference
/// to this crate's halves, so runtime-generic code can use them too.
pub trait Adapter: Send + Sync + 'static {
    /// The sending half handed out by sessions (a newtype implementing the
    /// runtime's write trait); converts back for
    /// [`Session::serve`](crate::Session::serve).
    type SendStream: From<SendStream>
        + Into<SendStream>
        + DerefMut<Target = SendStream>
        + Send
        + 'static;
    /// The receiving half handed out by sessions.
    type RecvStream: From<RecvStream> + DerefMut<Target = RecvStream> + Send + 'static;

    /// The runtime to run a new endpoint on (usually the ambient one).
    ///
    /// # Errors
    /// If no runtime is available in this context.
    fn runtime() -> io::Result<Arc<dyn Runtime>>;
}

/// `now + d`, saturating a century ahead: a policy may say "no cap" with
/// `Duration::MAX`, and `Instant + Duration` panics on overflow.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// Sleeps `duration` on `runtime`'s timer.
pub(crate) async fn sleep(runtime: &Arc<dyn Runtime>, duration: Duration) {
    let mut timer = runtime.new_timer(later(runtime.now(), duration));
    poll_fn(|cx| timer.poll_elapsed(cx)).await;
}
