//! The driver: two tasks per endpoint. The driver proper moves datagrams
//! from the UDP socket into the sans-IO core, takes the core's output and
//! sleeps until its next deadline; the sender performs the `sendmsg` calls
//! (through a second registration of the same socket), so that system calls
//! run beside the core's work instead of between its steps.
//!
//! Each driver step (1) checks room in the outbox, (2) receives what the
//! socket has, (3) under the lock feeds the datagrams and any due timeout to
//! the core and drains `poll_output` (transmits as far as the outbox has
//! room), dispatching events to the waiting futures, (4) hands the
//! transmits to the sender and arms the timer. Socket calls happen outside
//! the lock.
//!
//! Backpressure: at most [`OUTBOX_MAX`] transmits wait for the sender, and
//! the driver takes none from the core while the outbox is full, so a slow
//! socket leaves data in quinn-proto's bounded buffers (and, through them,
//! the writers' futures pending) instead of in an unbounded queue here.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use kwik_core::{EndpointConfig, KwikEndpoint, Output, ServerConfig, Transmit};
use quinn_udp::{EcnCodepoint, RecvMeta, UdpSocketState};

use crate::runtime::{AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};
use crate::shared::{Shared, register};

/// Transmits taken from the core before they are sent.
const OUTBOX_MAX: usize = 16;
/// Receive buffer per datagram slot: the largest UDP payload, which is also
/// the most one GRO batch can hold.
const RECV_SLOT: usize = 64 * 1024;
/// Slots per receive call.
const RECV_SLOTS: usize = if quinn_udp::BATCH_SIZE < 8 {
    quinn_udp::BATCH_SIZE
} else {
    8
};
/// Steps per poll before yielding to other tasks.
const STEPS_PER_POLL: usize = 32;
/// Kernel socket buffers requested (best effort; the OS caps them). Many
/// sessions starting at once burst far beyond the usual default.
const SOCKET_BUFFER: usize = 2 << 20;

/// Binds the core to `socket` and spawns its driver on `runtime`.
pub(crate) fn start(
    runtime: Arc<dyn Runtime>,
    socket: std::net::UdpSocket,
    server: Option<ServerConfig>,
) -> io::Result<Arc<Shared>> {
    socket.set_nonblocking(true)?;
    let udp = UdpSocketState::new((&socket).into())?;
    let _ = udp.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = udp.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    let local_addr = socket.local_addr()?;
    // Sends go through a second registration of the same socket, owned by
    // the sender task.
    let send_socket = runtime.wrap_udp_socket(socket.try_clone()?)?;
    let socket = runtime.wrap_udp_socket(socket)?;
    let udp = Arc::new(udp);

    // Session ids are only as unguessable as this seed is secret.
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(io::Error::other)?;
    let now = runtime.now();
    let mut config = EndpointConfig::new(seed);
    config.max_gso_segments = config.max_gso_segments.min(udp.max_gso_segments()).max(1);
    // The core reads no clock; path tokens expire in wall-clock time.
    config.unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let server = server.map(|config| crate::endpoint::adapt_server_config(config, local_addr));
    let span =
        tracing::info_span!(target: kwik_core::log::SPANS, "kwik_endpoint", local = %local_addr);
    span.in_scope(|| {
        tracing::debug!(target: kwik_core::log::DRIVER,
            gso = udp.max_gso_segments(),
            gro = udp.gro_segments(),
            server = server.is_some(),
            "endpoint started"
        );
    });
    let endpoint = KwikEndpoint::new(config, server, now);
    let shared = Arc::new(Shared::new(endpoint, runtime.clone(), local_addr, span));
    let outbox = Arc::new(Mutex::new(Outbox::default()));
    let sender = Sender {
        outbox: outbox.clone(),
        socket: send_socket,
        udp: udp.clone(),
        batch: VecDeque::with_capacity(OUTBOX_MAX),
        done: Vec::new(),
        span: shared.span.clone(),
    };
    let driver = Driver {
        shared: shared.clone(),
        socket,
        udp,
        timer: runtime.new_timer(now),
        armed: None,
        fired: false,
        recv_buf: vec![0; RECV_SLOT * RECV_SLOTS].into_boxed_slice(),
        meta: [RecvMeta::default(); RECV_SLOTS],
        received: Vec::new(),
        outbox,
        batch: Vec::with_capacity(OUTBOX_MAX),
        spare: Vec::new(),
        wake: Vec::new(),
    };
    runtime.spawn(Box::pin(sender));
    runtime.spawn(Box::pin(driver));
    Ok(shared)
}

struct Datagram {
    remote: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<u8>,
    data: BytesMut,
}

struct Outgoing {
    transmit: Transmit,
    buf: Vec<u8>,
    /// Bytes already sent (when a GSO batch must be split).
    sent: usize,
}

enum Step {
    /// More may be done right away.
    Busy,
    /// Everything waits on a registered waker.
    Idle,
    /// The endpoint is finished.
    Exit,
}

/// Transmits on their way from the driver to the sender task (bounded by
/// [`OUTBOX_MAX`]), and the buffers coming back.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Outgoing>,
    spare: Vec<Vec<u8>>,
    /// The sender, waiting for transmits.
    sender: Option<Waker>,
    /// The driver, waiting for room.
    driver: Option<Waker>,
    /// The driver has ended: send what is queued (nothing if `abort`), then
    /// stop.
    closed: bool,
    abort: bool,
}

struct Driver {
    shared: Arc<Shared>,
    socket: Box<dyn AsyncUdpSocket>,
    udp: Arc<UdpSocketState>,
    timer: Box<dyn AsyncTimer>,
    /// The deadline the timer is set to, if it is in use.
    armed: Option<Instant>,
    fired: bool,
    recv_buf: Box<[u8]>,
    meta: [RecvMeta; RECV_SLOTS],
    received: Vec<Datagram>,
    outbox: Arc<Mutex<Outbox>>,
    /// Transmits taken from the core in this step, for the outbox.
    batch: Vec<Outgoing>,
    spare: Vec<Vec<u8>>,
    wake: Vec<Waker>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.shared.span.clone();
        let _entered = span.enter();
        for _ in 0..STEPS_PER_POLL {
            match this.step(cx) {
                Ok(Step::Busy) => {}
                Ok(Step::Idle) => return Poll::Pending,
                Ok(Step::Exit) => {
                    tracing::debug!(target: kwik_core::log::DRIVER, "endpoint finished");
                    return Poll::Ready(());
                }
                Err(e) => {
                    tracing::error!(target: kwik_core::log::DRIVER, error = %e, "UDP socket failed; endpoint stops");
                    return Poll::Ready(());
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Driver {
    fn step(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        let room = self.outbox_room(cx);
        let flushed = room > 0;
        let received = self.receive(cx)?;
        let now = self.shared.runtime.now();
        let due = self.fired || self.armed.is_some_and(|deadline| deadline <= now);

        let mut state = self.shared.lock();
        if state.aborted {
            if let Ok(mut outbox) = self.outbox.lock() {
                outbox.abort = true;
                outbox.queue.clear();
            }
            return Ok(Step::Exit);
        }
        for d in self.received.drain(..) {
            state
                .endpoint
                .handle_datagram(now, d.remote, d.local_ip, d.ecn, d.data);
        }
        if due {
            // A timer may fire a hair early by the clock; never feed a time
            // before the deadline, or the core would ask for it again.
            let at = self.armed.map_or(now, |deadline| deadline.max(now));
            state.endpoint.handle_timeout(at);
            self.armed = None;
            self.fired = false;
        }
        let mut next = None;
        if flushed {
            while self.batch.len() < room {
                let mut buf = self.spare.pop().unwrap_or_default();
                match state.endpoint.poll_output(&mut buf) {
                    Output::Transmit(transmit) => {
                        buf.truncate(transmit.size);
                        self.batch.push(Outgoing {
                            transmit,
                            buf,
                            sent: 0,
                        });
                    }
                    Output::Event(event) => {
                        self.spare.push(buf);
                        state.dispatch(event, &mut self.wake);
                    }
                    Output::Timeout(deadline) => {
                        self.spare.push(buf);
                        next = Some(deadline);
                        break;
                    }
                }
            }
        }
        let drained = next.is_some();
        if drained {
            // Registered in the same critical section that found nothing
            // left to do, so no application call can slip in between.
            register(&mut state.driver, cx.waker());
        }
        let exit = drained && state.should_exit();
        drop(state);
        self.hand_to_sender();
        for waker in self.wake.drain(..) {
            waker.wake();
        }
        if exit {
            return Ok(Step::Exit);
        }

        let mut busy = received > 0 || (flushed && !drained);
        if let Some(deadline) = next {
            match deadline {
                None => self.armed = None,
                Some(deadline) if self.armed != Some(deadline) => {
                    self.timer.reset(deadline);
                    self.armed = Some(deadline);
                }
                Some(_) => {}
            }
        }
        if self.armed.is_some() && self.timer.poll_elapsed(cx).is_ready() {
            self.fired = true;
            busy = true;
        }
        Ok(if busy { Step::Busy } else { Step::Idle })
    }

    /// How many transmits the outbox can take now, and returns the buffers
    /// the sender is done with. At 0 the driver waits for the sender, which
    /// wakes it once it made room.
    fn outbox_room(&mut self, cx: &mut Context<'_>) -> usize {
        let mut outbox = self.outbox.lock().expect("outbox poisoned");
        self.spare.append(&mut outbox.spare);
        let room = OUTBOX_MAX.saturating_sub(outbox.queue.len());
        if room == 0 {
            register(&mut outbox.driver, cx.waker());
        }
        room
    }

    /// Queues this step's transmits for the sender.
    fn hand_to_sender(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let sender = {
            let mut outbox = self.outbox.lock().expect("outbox poisoned");
            outbox.queue.extend(self.batch.drain(..));
            outbox.sender.take()
        };
        if let Some(sender) = sender {
            sender.wake();
        }
    }

    /// Receives one batch (at most [`RECV_SLOTS`] buffers) so that one
    /// critical section never digests more than that; returns how many
    /// datagrams were queued for the core.
    fn receive(&mut self, cx: &mut Context<'_>) -> io::Result<usize> {
        let mut slots = self.recv_buf.chunks_mut(RECV_SLOT);
        let mut bufs: [IoSliceMut<'_>; RECV_SLOTS] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("one chunk per slot")));
        let udp = &self.udp;
        let meta = &mut self.meta;
        let mut recv = |sock: UdpSockRef<'_>| udp.recv(sock, &mut bufs, meta);
        let n = match self.socket.poll_io(cx, Interest::Readable, &mut recv) {
            Poll::Pending => return Ok(0),
            Poll::Ready(Ok(n)) => n,
            // ICMP errors of earlier sends, reported by some platforms: try
            // again on the next step.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(1),
            Poll::Ready(Err(e)) => return Err(e),
        };
        let mut count = 0;
        for (meta, buf) in self.meta.iter().zip(bufs.iter()).take(n) {
            // One copy into a buffer the core may keep; GRO batches are
            // split without copying again.
            let mut data = BytesMut::from(&buf[..meta.len]);
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            while !data.is_empty() {
                let datagram = data.split_to(stride.min(data.len()));
                self.received.push(Datagram {
                    remote: meta.addr,
                    local_ip: meta.dst_ip,
                    ecn: meta.ecn.map(|e| e as u8),
                    data: datagram,
                });
                count += 1;
            }
        }
        Ok(count)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let sender = self.outbox.lock().ok().and_then(|mut outbox| {
            outbox.closed = true;
            outbox.sender.take()
        });
        if let Some(sender) = sender {
            sender.wake();
        }
        let Some(mut state) = self.shared.lock_for_drop() else {
            return;
        };
        let mut wake = Vec::new();
        state.shut_down(&mut wake);
        drop(state);
        for waker in wake {
            waker.wake();
        }
    }
}

/// The sender task: sends the transmits the driver queued, in order, so
/// that the `sendmsg` calls run beside the driver's work on the core.
/// Backpressure: the driver queues at most [`OUTBOX_MAX`] transmits, and
/// none while the outbox is full.
struct Sender {
    outbox: Arc<Mutex<Outbox>>,
    socket: Box<dyn AsyncUdpSocket>,
    udp: Arc<UdpSocketState>,
    /// Transmits taken from the outbox, being sent.
    batch: VecDeque<Outgoing>,
    /// Buffers sent, to hand back.
    done: Vec<Vec<u8>>,
    span: tracing::Span,
}

impl Future for Sender {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.batch.is_empty() {
                let mut outbox = this.outbox.lock().expect("outbox poisoned");
                outbox.spare.append(&mut this.done);
                let driver = outbox.driver.take();
                if outbox.abort {
                    return Poll::Ready(());
                }
                std::mem::swap(&mut this.batch, &mut outbox.queue);
                if this.batch.is_empty() {
                    let closed = outbox.closed;
                    if !closed {
                        register(&mut outbox.sender, cx.waker());
                    }
                    drop(outbox);
                    if let Some(driver) = driver {
                        driver.wake();
                    }
                    return if closed {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
                drop(outbox);
                // The outbox is empty again: the driver may fill it.
                if let Some(driver) = driver {
                    driver.wake();
                }
            }
            while let Some(out) = this.batch.front_mut() {
                if send(&mut *this.socket, &this.udp, &this.span, cx, out).is_pending() {
                    return Poll::Pending;
                }
                if let Some(mut done) = this.batch.pop_front() {
                    done.buf.clear();
                    this.done.push(done.buf);
                }
            }
        }
    }
}

/// Sends `out` (split if the socket no longer takes its GSO batch);
/// `Pending` while the socket is not writable.
fn send(
    socket: &mut dyn AsyncUdpSocket,
    udp: &UdpSocketState,
    span: &tracing::Span,
    cx: &mut Context<'_>,
    out: &mut Outgoing,
) -> Poll<()> {
    {
        while out.sent < out.buf.len() {
            let t = out.transmit;
            let segment = t.segment_size.unwrap_or(t.size).max(1);
            // quinn-udp may turn GSO off after a send error: split batches
            // the core built for more segments than the socket now takes.
            let split = t.size.div_ceil(segment) > udp.max_gso_segments();
            let end = if split {
                (out.sent + segment).min(out.buf.len())
            } else {
                out.buf.len()
            };
            let contents = &out.buf[out.sent..end];
            let transmit = quinn_udp::Transmit {
                destination: t.destination,
                ecn: t.ecn.and_then(EcnCodepoint::from_bits),
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: t.src_ip,
            };
            // Reports the bytes sent, for runtimes that meter them.
            let mut send =
                |sock: UdpSockRef<'_>| udp.send(sock, &transmit).map(|()| transmit.contents.len());
            match socket.poll_io(cx, Interest::Writable, &mut send) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(_)) => out.sent = end,
                Poll::Ready(Err(e)) => {
                    // quinn-udp reports only WouldBlock, which poll_io
                    // absorbs; anything else loses this datagram, as UDP may.
                    let _entered = span.enter();
                    tracing::debug!(target: kwik_core::log::DRIVER, error = %e, "send failed");
                    out.sent = out.buf.len();
                }
            }
        }
        Poll::Ready(())
    }
}
