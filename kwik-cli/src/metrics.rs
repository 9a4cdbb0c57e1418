//! `kwik serve --metrics ADDR`: the endpoint's metrics at
//! `http://ADDR/metrics`, in the OpenMetrics text format.
//!
//! The metrics themselves are kwik's ([`Endpoint::register_metrics`], read
//! from the endpoint at each scrape); this module only answers HTTP/1.1 with
//! hyper. It is a small door of its own, so it keeps to small bounds: at
//! most [`MAX_CONNECTIONS`] connections at once, one request per connection
//! (no keep-alive), request headers within [`HEADER_TIMEOUT`], and every
//! connection over after [`CONNECTION_TIMEOUT`]. `GET` or `HEAD` of
//! `/metrics` is answered; other paths get 404, other methods 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kwik_tokio::prometheus_client::encoding::text::encode;
use kwik_tokio::prometheus_client::registry::Registry;
use kwik_tokio::{Endpoint, MetricsOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Fail;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most HTTP connections served at once; further ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct MetricsSetup {
    /// The TCP address to listen on.
    pub addr: SocketAddr,
    /// What the scrape lists beyond the endpoint-level series.
    pub options: MetricsOptions,
}

/// Registers `endpoint`'s metrics and serves them at `setup.addr` from a
/// background task; returns the address bound.
pub async fn serve(setup: &MetricsSetup, endpoint: &Endpoint) -> Result<SocketAddr, Fail> {
    let listener = TcpListener::bind(setup.addr)
        .await
        .map_err(|e| Fail(format!("cannot serve metrics on {}: {e}", setup.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Fail(format!("cannot serve metrics on {}: {e}", setup.addr)))?;
    let mut registry = Registry::default();
    endpoint.register_metrics(&mut registry, setup.options.clone());
    tokio::spawn(accept_loop(listener, Arc::new(registry)));
    Ok(local)
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset while queued:
                // keep serving, without spinning.
                eprintln!("kwik: metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&request, &registry)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A client that vanished or timed out concerns nobody else.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

/// The answer to one request.
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut text = String::new();
    if encode(&mut text, registry).is_err() {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
