//! Optional qlog traces, one per QUIC connection (feature `qlog`).
//!
//! quinn-proto can stream a connection's packets, frames, loss and
//! congestion events as a qlog `JSON-SEQ` trace that tools such as qvis
//! display. kwik asks the application's [`QlogSink`] for a writer whenever
//! it creates a connection — a primary connection, a secondary path, an
//! accepted client — so each path of a session can be inspected on its
//! own. kwik-core itself opens nothing: the sink decides where the bytes go
//! (a file per connection, a buffer, nowhere).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::ids::Side;

/// The connection a qlog trace is wanted for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QlogTarget {
    /// This side of the connection.
    pub side: Side,
    /// The peer's address.
    pub remote: SocketAddr,
    /// A number unique among this endpoint's connections, for file names.
    pub connection: u64,
}

type OpenWriter = dyn Fn(&QlogTarget) -> Option<Box<dyn io::Write + Send + Sync>> + Send + Sync;

/// Where the qlog traces of an endpoint's connections go: called once per
/// new connection; `None` leaves that connection untraced.
#[derive(Clone)]
pub struct QlogSink(Arc<OpenWriter>);

impl QlogSink {
    /// A sink that opens writers with `open`.
    pub fn new(
        open: impl Fn(&QlogTarget) -> Option<Box<dyn io::Write + Send + Sync>> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(open))
    }

    /// quinn-proto's stream for one connection, if the sink gives a writer.
    pub(crate) fn stream(
        &self,
        target: &QlogTarget,
        now: Instant,
    ) -> Option<quinn_proto::QlogStream> {
        let writer = (self.0)(target)?;
        let mut config = quinn_proto::QlogConfig::default();
        config
            .writer(writer)
            .title(Some(format!(
                "kwik {} {}",
                match target.side {
                    Side::Client => "client",
                    Side::Server => "server",
                },
                target.remote
            )))
            .start_time(now);
        config.into_stream()
    }
}

impl fmt::Debug for QlogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QlogSink(..)")
    }
}
