//! The two halves of a logical stream.
//!
//! Every operation is a `poll_*` method doing one short critical section:
//! try the core, and if it would block, register this half's waker under the
//! stream's key in that same section, so the core's readable or writable
//! event cannot be missed. The `async` methods and the runtime adapters'
//! `AsyncRead`/`AsyncWrite` impls are built on these.
//!
//! Dropping a half cleans up like quinn: an unfinished `SendStream` is
//! finished, a `RecvStream` not read to its end is stopped with code 0.
//!
//! A half opened in 0-RTT remembers it: if the server rejects 0-RTT, the
//! core forgets the stream and hands its id out again, so from then on the
//! handle answers every call with `ZeroRttRejected` without asking the core
//! (which could name a newer stream by the same id), as quinn's streams do.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kwik_core::{StreamId, StreamView};

use crate::error::{ReadError, ReadToEndError, StoppedError, StreamError, WriteError};
use crate::session::SessionRef;
use crate::shared::{Locked, SendOutcome, register};

/// Where this handle's sending half stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Open,
    Finished,
    Reset,
    /// A call reported the peer's stop; the core has forgotten the half.
    Stopped,
}

/// The sending half of a logical stream.
pub struct SendStream {
    session: Arc<SessionRef>,
    id: StreamId,
    state: SendState,
    /// Opened in 0-RTT: dead if the server rejects it.
    early: bool,
}

impl fmt::Debug for SendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStream")
            .field("session", &self.session.handle)
            .field("id", &self.id)
            .field("state", &self.state)
            .finish()
    }
}

impl SendStream {
    pub(crate) fn new(session: Arc<SessionRef>, id: StreamId, early: bool) -> Self {
        Self {
            session,
            id,
            state: SendState::Open,
            early,
        }
    }

    /// Whether the stream was opened in 0-RTT (its data may have been sent
    /// before the handshake completed).
    pub fn is_0rtt(&self) -> bool {
        self.early
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    pub(crate) fn session(&self) -> &SessionRef {
        &self.session
    }

    /// Gives up this handle without finishing or resetting the stream, for
    /// a stream whose bytes — and end — are written range by range with
    /// [`Session::delegate`](crate::Session::delegate) and
    /// [`Session::write_at`](crate::Session::write_at) instead (the range
    /// that ends the stream carries the FIN). Returns the stream's id.
    pub fn hand_off(mut self) -> StreamId {
        self.hand_over();
        self.id
    }

    /// The transfer helper writes and finishes the stream from now on:
    /// dropping this handle must not finish it.
    pub(crate) fn hand_over(&mut self) {
        self.state = SendState::Finished;
    }

    /// Writes some of `buf` (at least one byte unless `buf` is empty),
    /// waiting for flow-control credit; returns how many bytes were taken.
    ///
    /// # Errors
    /// If the peer stopped the stream, it was finished or reset, or the
    /// session ended.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write(cx, buf)).await
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Writes all of `chunk` without copying it.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), WriteError> {
        while !chunk.is_empty() {
            poll_fn(|cx| self.poll_write_with(cx, |view| view.write_chunk(&mut chunk))).await?;
        }
        Ok(())
    }

    /// [`write`](Self::write) as a poll function, for `AsyncWrite` impls.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        self.poll_write_with(cx, |view| view.write(buf))
    }

    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut StreamView<'_>) -> Result<usize, kwik_core::WriteError>,
    ) -> Poll<Result<usize, WriteError>> {
        let handle = self.session.handle;
        let mut state = self.session.shared.lock();
        if let Some(reason) = state.session_closed(handle) {
            return Poll::Ready(Err(WriteError::SessionClosed(reason)));
        }
        if self.early && state.zero_rtt_rejected(handle) {
            return Poll::Ready(Err(WriteError::ZeroRttRejected));
        }
        let result = match state.endpoint.stream(handle, self.id) {
            Some(mut view) => write(&mut view),
            None => Err(kwik_core::WriteError::ClosedStream),
        };
        let key = (handle, self.id);
        let result = match result {
            Ok(n) => Ok(n),
            Err(kwik_core::WriteError::Blocked) => {
                if let Some(slot) = state.streams.get_mut(&key) {
                    register(&mut slot.write, cx.waker());
                }
                return Poll::Pending;
            }
            Err(kwik_core::WriteError::Stopped(code)) => {
                self.state = SendState::Stopped;
                Err(WriteError::Stopped(code))
            }
            Err(kwik_core::WriteError::SessionClosed(reason)) => {
                Err(WriteError::SessionClosed(reason))
            }
            Err(kwik_core::WriteError::ZeroRttRejected) => Err(WriteError::ZeroRttRejected),
            Err(_) => Err(match stopped_code(&state, key) {
                Some(code) => WriteError::Stopped(code),
                None => WriteError::ClosedStream,
            }),
        };
        state.kick();
        Poll::Ready(result)
    }

    /// Ends the stream: the peer reads everything written, then its end.
    /// Completes at once; [`stopped`](Self::stopped) tells when the peer has
    /// received it all. As with QUIC, a peer that stopped the stream after
    /// receiving every byte written lost nothing: finishing then succeeds.
    ///
    /// # Errors
    /// If the peer stopped the stream before receiving everything written
    /// ([`StreamError::Stopped`]), it was already finished or reset, or the
    /// session ended.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        let result = self.stream_call(|view| view.finish());
        self.state = match &result {
            Ok(()) => SendState::Finished,
            Err(StreamError::Stopped(_)) => SendState::Stopped,
            Err(_) => self.state,
        };
        result
    }

    /// [`finish`](Self::finish) unless this handle already finished the
    /// stream: the `shutdown` of `AsyncWrite`, which may be repeated.
    ///
    /// # Errors
    /// As [`finish`](Self::finish).
    pub fn ensure_finished(&mut self) -> Result<(), StreamError> {
        match self.state {
            SendState::Finished => Ok(()),
            _ => self.finish(),
        }
    }

    /// Abandons the stream; the peer's reads fail with `code`.
    ///
    /// # Errors
    /// As [`finish`](Self::finish).
    pub fn reset(&mut self, code: u64) -> Result<(), StreamError> {
        let result = self.stream_call(|view| view.reset(code));
        self.state = match &result {
            Ok(()) => SendState::Reset,
            Err(StreamError::Stopped(_)) => SendState::Stopped,
            Err(_) => self.state,
        };
        result
    }

    /// Sets the stream's sending priority: among the session's streams,
    /// data of higher priority is sent first; equal priorities share
    /// fairly; the default is 0 (as quinn's `SendStream::set_priority`).
    /// Values above [`MAX_STREAM_PRIORITY`](crate::MAX_STREAM_PRIORITY) are
    /// clamped to it.
    /// The stream moves to a real QUIC stream of its new priority with its
    /// next record, and [`Session::serve`](crate::Session::serve) and the
    /// delegations of the stream honour it too (see
    /// [`StreamView::set_priority`]). A hint to the sender only: what the
    /// peer reads is the same whatever the priority.
    ///
    /// # Errors
    /// If the stream was finished and has been released, was stopped and
    /// released, or the session ended.
    pub fn set_priority(&self, priority: i32) -> Result<(), StreamError> {
        self.stream_call(|view| view.set_priority(priority))
    }

    /// The stream's sending priority (0 unless
    /// [`set_priority`](Self::set_priority) changed it).
    ///
    /// # Errors
    /// As [`set_priority`](Self::set_priority).
    pub fn priority(&self) -> Result<i32, StreamError> {
        let mut priority = 0;
        self.stream_call(|view| {
            priority = view.priority()?;
            Ok(())
        })?;
        Ok(priority)
    }

    fn stream_call(
        &self,
        call: impl FnOnce(&mut StreamView<'_>) -> Result<(), kwik_core::StreamError>,
    ) -> Result<(), StreamError> {
        let handle = self.session.handle;
        let mut state = self.session.shared.lock();
        if let Some(reason) = state.session_closed(handle) {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.early && state.zero_rtt_rejected(handle) {
            return Err(StreamError::ZeroRttRejected);
        }
        let result = match state.endpoint.stream(handle, self.id) {
            Some(mut view) => call(&mut view).map_err(StreamError::from),
            None => Err(StreamError::ClosedStream),
        };
        state.kick();
        match result {
            Err(StreamError::ClosedStream) => match stopped_code(&state, (handle, self.id)) {
                Some(code) => Err(StreamError::Stopped(code)),
                None => Err(StreamError::ClosedStream),
            },
            other => other,
        }
    }

    /// Completes when the stream's fate is known: `Some(code)` if the peer
    /// stopped it, `None` once the peer received everything up to the end
    /// (after [`finish`](Self::finish)) or if this side reset it.
    ///
    /// # Errors
    /// If the session ended first.
    pub async fn stopped(&self) -> Result<Option<u64>, StoppedError> {
        poll_fn(|cx| self.poll_stopped(cx)).await
    }

    /// [`stopped`](Self::stopped) as a poll function.
    ///
    /// # Errors
    /// As [`stopped`](Self::stopped).
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<Result<Option<u64>, StoppedError>> {
        let handle = self.session.handle;
        let mut state = self.session.shared.lock();
        if self.early && state.zero_rtt_rejected(handle) {
            return Poll::Ready(Err(StoppedError::ZeroRttRejected));
        }
        let key = (handle, self.id);
        match state.streams.get(&key).and_then(|slot| slot.outcome) {
            Some(SendOutcome::Stopped(code)) => return Poll::Ready(Ok(Some(code))),
            Some(SendOutcome::Finished) => return Poll::Ready(Ok(None)),
            None if self.state == SendState::Reset => return Poll::Ready(Ok(None)),
            None => {}
        }
        if let Some(reason) = state.session_closed(handle) {
            return Poll::Ready(Err(StoppedError::SessionClosed(reason)));
        }
        if let Some(slot) = state.streams.get_mut(&key) {
            slot.stopped.register(cx.waker());
        }
        Poll::Pending
    }
}

/// The code the peer stopped a stream with, if it did.
fn stopped_code(state: &Locked<'_>, key: (kwik_core::SessionHandle, StreamId)) -> Option<u64> {
    match state.streams.get(&key)?.outcome? {
        SendOutcome::Stopped(code) => Some(code),
        SendOutcome::Finished => None,
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let Some(mut state) = self.session.shared.lock_for_drop() else {
            return;
        };
        let handle = self.session.handle;
        if self.early && state.zero_rtt_rejected(handle) {
            // The core forgot the stream; its id may name another now.
            return;
        }
        if self.state == SendState::Open
            && let Some(mut view) = state.endpoint.stream(handle, self.id)
        {
            // Finishing a stream the peer stopped frees it in the core.
            let _ = view.finish();
        }
        state.release_stream(handle, self.id, true);
        state.kick();
    }
}

/// The receiving half of a logical stream.
pub struct RecvStream {
    session: Arc<SessionRef>,
    id: StreamId,
    /// Read to its end, reset, or stopped: the core has forgotten this half.
    done: bool,
    /// Opened in 0-RTT: dead if the server rejects it.
    early: bool,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream")
            .field("session", &self.session.handle)
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl RecvStream {
    pub(crate) fn new(session: Arc<SessionRef>, id: StreamId, early: bool) -> Self {
        Self {
            session,
            id,
            done: false,
            early,
        }
    }

    /// Whether the stream was opened in 0-RTT (by this side, as the
    /// receiving half of a bidirectional stream).
    pub fn is_0rtt(&self) -> bool {
        self.early
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Reads the next bytes into `buf`; `Ok(None)` at the end of the stream.
    ///
    /// # Errors
    /// If the peer reset the stream, it was stopped or read to its end
    /// already, or the session ended.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Reads the next chunk of at most `max` bytes without copying;
    /// `Ok(None)` at the end of the stream.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        poll_fn(|cx| self.poll_read_chunk(cx, max)).await
    }

    /// Reads the whole stream, failing if it holds more than `limit` bytes.
    ///
    /// # Errors
    /// As [`read`](Self::read), or [`ReadToEndError::TooLong`].
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, ReadToEndError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read_chunk(usize::MAX).await? {
            if out.len() + chunk.len() > limit {
                return Err(ReadToEndError::TooLong);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// [`read`](Self::read) as a poll function, for `AsyncRead` impls.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Option<usize>, ReadError>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(Some(0)));
        }
        self.poll_read_with(cx, |view| view.read_into(buf))
    }

    /// [`read_chunk`](Self::read_chunk) as a poll function.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        self.poll_read_with(cx, |view| view.read(max))
    }

    fn poll_read_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut StreamView<'_>) -> Result<Option<T>, kwik_core::ReadError>,
    ) -> Poll<Result<Option<T>, ReadError>> {
        let handle = self.session.handle;
        let mut state = self.session.shared.lock();
        if let Some(reason) = state.session_closed(handle) {
            return Poll::Ready(Err(ReadError::SessionClosed(reason)));
        }
        if self.early && state.zero_rtt_rejected(handle) {
            return Poll::Ready(Err(ReadError::ZeroRttRejected));
        }
        let result = match state.endpoint.stream(handle, self.id) {
            Some(mut view) => read(&mut view),
            None => Err(kwik_core::ReadError::ClosedStream),
        };
        let result = match result {
            Ok(Some(data)) => Ok(Some(data)),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(kwik_core::ReadError::Blocked) => {
                if let Some(slot) = state.streams.get_mut(&(handle, self.id)) {
                    register(&mut slot.read, cx.waker());
                }
                return Poll::Pending;
            }
            Err(kwik_core::ReadError::Reset(code)) => {
                self.done = true;
                Err(ReadError::Reset(code))
            }
            Err(kwik_core::ReadError::SessionClosed(reason)) => {
                Err(ReadError::SessionClosed(reason))
            }
            Err(kwik_core::ReadError::ZeroRttRejected) => Err(ReadError::ZeroRttRejected),
            Err(_) => {
                self.done = true;
                Err(ReadError::ClosedStream)
            }
        };
        // Reading may return credit to the peer.
        state.kick();
        Poll::Ready(result)
    }

    /// Discards the rest of the stream and asks the peer to stop sending
    /// with `code`.
    ///
    /// # Errors
    /// If the stream was already read to its end, reset or stopped, or the
    /// session ended.
    pub fn stop(&mut self, code: u64) -> Result<(), StreamError> {
        let handle = self.session.handle;
        let mut state = self.session.shared.lock();
        if let Some(reason) = state.session_closed(handle) {
            return Err(StreamError::SessionClosed(reason));
        }
        if self.early && state.zero_rtt_rejected(handle) {
            return Err(StreamError::ZeroRttRejected);
        }
        let result = match state.endpoint.stream(handle, self.id) {
            Some(mut view) => view.stop(code).map_err(StreamError::from),
            None => Err(StreamError::ClosedStream),
        };
        self.done = true;
        state.kick();
        result
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let Some(mut state) = self.session.shared.lock_for_drop() else {
            return;
        };
        let handle = self.session.handle;
        if self.early && state.zero_rtt_rejected(handle) {
            // The core forgot the stream; its id may name another now.
            return;
        }
        if !self.done
            && let Some(mut view) = state.endpoint.stream(handle, self.id)
        {
            let _ = view.stop(0);
        }
        state.release_stream(handle, self.id, false);
        state.kick();
    }
}

/// Defines an adapter's `SendStream` and `RecvStream`: newtypes over this
/// crate's halves, so the adapter crate can implement its runtime's
/// `AsyncWrite`/`AsyncRead` on them.
///
/// They dereference to [`SendStream`] and [`RecvStream`], and repeat the
/// methods whose names the runtimes' I/O extension traits also use (`write`,
/// `write_all`, `read`, `read_to_end`), so kwik's typed versions win even
/// with those traits in scope.
#[macro_export]
macro_rules! adapter_streams {
    () => {
        /// The sending half of a logical stream; dereferences to
        /// [`kwik_async::SendStream`], which documents its methods.
        #[derive(Debug)]
        pub struct SendStream($crate::SendStream);

        /// The receiving half of a logical stream; dereferences to
        /// [`kwik_async::RecvStream`], which documents its methods.
        #[derive(Debug)]
        pub struct RecvStream($crate::RecvStream);

        impl ::core::convert::From<$crate::SendStream> for SendStream {
            fn from(inner: $crate::SendStream) -> Self {
                Self(inner)
            }
        }

        impl ::core::convert::From<SendStream> for $crate::SendStream {
            fn from(outer: SendStream) -> Self {
                outer.0
            }
        }

        impl ::core::convert::From<$crate::RecvStream> for RecvStream {
            fn from(inner: $crate::RecvStream) -> Self {
                Self(inner)
            }
        }

        impl ::core::ops::Deref for SendStream {
            type Target = $crate::SendStream;
            fn deref(&self) -> &$crate::SendStream {
                &self.0
            }
        }

        impl ::core::ops::DerefMut for SendStream {
            fn deref_mut(&mut self) -> &mut $crate::SendStream {
                &mut self.0
            }
        }

        impl ::core::ops::Deref for RecvStream {
            type Target = $crate::RecvStream;
            fn deref(&self) -> &$crate::RecvStream {
                &self.0
            }
        }

        impl ::core::ops::DerefMut for RecvStream {
            fn deref_mut(&mut self) -> &mut $crate::RecvStream {
                &mut self.0
            }
        }

        impl SendStream {
            /// Writes some of `buf`; see [`kwik_async::SendStream::write`].
            ///
            /// # Errors
            /// If the peer stopped the stream, it was finished or reset, or
            /// the session ended.
            pub async fn write(
                &mut self,
                buf: &[u8],
            ) -> ::core::result::Result<usize, $crate::WriteError> {
                self.0.write(buf).await
            }

            /// Writes all of `buf`.
            ///
            /// # Errors
            /// As [`write`](Self::write).
            pub async fn write_all(
                &mut self,
                buf: &[u8],
            ) -> ::core::result::Result<(), $crate::WriteError> {
                self.0.write_all(buf).await
            }

            /// The runtime-independent half.
            pub fn into_inner(self) -> $crate::SendStream {
                self.0
            }

            /// Gives up the handle without finishing the stream; see
            /// [`kwik_async::SendStream::hand_off`].
            pub fn hand_off(self) -> $crate::StreamId {
                self.0.hand_off()
            }
        }

        impl RecvStream {
            /// Reads into `buf`; `Ok(None)` at the end. See
            /// [`kwik_async::RecvStream::read`].
            ///
            /// # Errors
            /// If the peer reset the stream, it was stopped or read to its
            /// end already, or the session ended.
            pub async fn read(
                &mut self,
                buf: &mut [u8],
            ) -> ::core::result::Result<Option<usize>, $crate::ReadError> {
                self.0.read(buf).await
            }

            /// Reads the whole stream, failing past `limit` bytes.
            ///
            /// # Errors
            /// As [`read`](Self::read), or if the stream is too long.
            pub async fn read_to_end(
                &mut self,
                limit: usize,
            ) -> ::core::result::Result<Vec<u8>, $crate::ReadToEndError> {
                self.0.read_to_end(limit).await
            }

            /// The runtime-independent half.
            pub fn into_inner(self) -> $crate::RecvStream {
                self.0
            }
        }
    };
}
