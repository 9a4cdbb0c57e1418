//! HTTP/1.1 over kwik streams with hyper: the server's service and the
//! client's request function, shared by the `http` example and the
//! `kwik-tokio/tests/http.rs` test.
//!
//! # The application contract
//!
//! * **One HTTP/1.1 connection per bidirectional kwik stream**, opened by
//!   the client. The client writes its request on the stream's sending
//!   half; the server answers on its own sending half of the same stream.
//!   Other streams are not used. A client opens one stream per request it
//!   wants in flight, so requests run concurrently without head-of-line
//!   blocking (each stream has its own flow control).
//! * **Ending a connection.** When the client has read its response and
//!   has no more requests for the stream, it drops it: its sending half is
//!   finished (the server reads end of stream) and its receiving half is
//!   stopped with code 0 (the server's response was read in full, so kwik
//!   reports the server's `shutdown` as successful, as QUIC does: PROTOCOL.md
//!   §5.3). The server, on end of stream, ends the connection; nothing is an
//!   error on either side. A stop that arrives before the whole response
//!   was delivered is an error for the server (`Stopped(code)`).
//! * **Resources served here.** `GET /bytes/N` answers `N` bytes of
//!   [`pattern`] (at most [`MAX_BODY`]); `POST /echo` answers the request
//!   body (at most [`MAX_BODY`]); anything else is 404.
#![allow(dead_code)] // the example and the test each use a subset

use std::convert::Infallible;
use std::error::Error;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kwik_tokio::{Endpoint, RecvStream, SendStream, Session, dev};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Errors of the client side, sendable across tasks.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Largest body either side produces or accepts.
pub const MAX_BODY: usize = 64 << 20;

/// `len` bytes of a fixed pattern (position-dependent, so that a misplaced
/// or repeated chunk is detected).
pub fn pattern(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push((x >> 24) as u8);
    }
    Bytes::from(out)
}

/// Serves every bidirectional stream of `session` as one HTTP/1.1
/// connection, each on its own task, until the session ends; reports how
/// each connection ended on `ended`, as it ends.
pub async fn serve_session(session: Session, ended: UnboundedSender<Result<(), hyper::Error>>) {
    while let Ok((send, recv)) = session.accept_bi().await {
        let ended = ended.clone();
        tokio::spawn(async move {
            let _ = ended.send(serve_stream(send, recv).await);
        });
    }
}

/// One HTTP/1.1 connection over one kwik stream.
pub async fn serve_stream(send: SendStream, recv: RecvStream) -> Result<(), hyper::Error> {
    let io = TokioIo::new(tokio::io::join(recv, send));
    hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service_fn(handle))
        .await
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        Ok(response)
    };
    match (req.method(), path.strip_prefix("/bytes/")) {
        (&Method::GET, Some(n)) => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => reply(StatusCode::OK, pattern(n)),
            _ => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad size\n")),
        },
        (&Method::POST, None) if path == "/echo" => {
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => reply(StatusCode::OK, body.to_bytes()),
                Err(_) => reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::new()),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    }
}

/// Sends `req` on a new stream of `session` and returns the response's
/// status and body. The connection is ended as the contract says, and its
/// own end is checked: any error on the client's side is returned.
pub async fn request(
    session: &Session,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let (send, recv) = session.open_bi().await?;
    let io = TokioIo::new(tokio::io::join(recv, send));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(req).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await?
        .to_bytes();
    // No more requests: the connection finishes our half and ends.
    drop(sender);
    connection.await??;
    Ok((status, body))
}

/// `GET /bytes/{len}`.
pub fn get_bytes(len: usize) -> Request<Full<Bytes>> {
    Request::get(format!("/bytes/{len}"))
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// `POST /echo` with `body`.
pub fn post_echo(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/echo")
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(body))
        .expect("a valid request")
}

/// What [`demo`] did.
#[derive(Debug)]
pub struct Report {
    /// Responses received, every body checked.
    pub responses: usize,
    /// Body bytes received.
    pub bytes: u64,
    /// How each server-side connection ended.
    pub server: Vec<Result<(), hyper::Error>>,
    /// From the first request to the last response.
    pub elapsed: Duration,
}

/// Runs a server and a client on 127.0.0.1 with a throw-away self-signed
/// certificate: over one session, `gets` concurrent `GET /bytes/{size}`
/// and one `POST /echo` of `size` bytes, every body checked byte for byte.
/// The session is closed once the server has seen every connection end,
/// and the endpoints are drained before this returns.
///
/// # Errors
/// Any client-side failure, or a body that differs from what was expected.
pub async fn demo(gets: usize, size: usize) -> Result<Report, BoxError> {
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let (ended, mut endings) = unbounded_channel();
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                if let Ok(session) = incoming.accept().await {
                    serve_session(session, ended).await;
                }
            });
        }
    });

    let client = Endpoint::client("127.0.0.1:0".parse()?)?;
    let session = client
        .connect(server.local_addr(), "localhost", &client_config)?
        .await?;
    let start = Instant::now();
    let expected = pattern(size);
    let mut tasks = Vec::new();
    for _ in 0..gets {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            request(&session, get_bytes(size)).await
        }));
    }
    // Other bytes than the GETs' (the pattern's next `size`).
    let upload = pattern(2 * size).slice(size..);
    let posted = {
        let (session, upload) = (session.clone(), upload.clone());
        tokio::spawn(async move { request(&session, post_echo(upload)).await })
    };
    let mut bytes = 0u64;
    for task in tasks {
        let (status, body) = task.await??;
        check(status, &body, &expected, "GET")?;
        bytes += body.len() as u64;
    }
    let (status, body) = posted.await??;
    check(status, &body, &upload, "POST echo")?;
    bytes += body.len() as u64;
    let elapsed = start.elapsed();

    let mut server_results = Vec::new();
    while server_results.len() < gets + 1 {
        match endings.recv().await {
            Some(result) => server_results.push(result),
            None => break,
        }
    }
    session.close(0, b"done")?;
    client.wait_idle().await;
    server.close(0, b"bye");
    server.wait_idle().await;
    Ok(Report {
        responses: gets + 1,
        bytes,
        server: server_results,
        elapsed,
    })
}

fn check(status: StatusCode, body: &[u8], expected: &[u8], what: &str) -> Result<(), BoxError> {
    if status != StatusCode::OK {
        return Err(format!("{what}: status {status}").into());
    }
    if body != expected {
        let at = body.iter().zip(expected).position(|(a, b)| a != b);
        return Err(format!(
            "{what}: {} bytes received, {} expected, first difference at {at:?}",
            body.len(),
            expected.len()
        )
        .into());
    }
    Ok(())
}
