//! The `/metrics` endpoint: Prometheus' scrape over HTTP/1.1 (hyper 1).
//!
//! Role: accept on `[metrics] listen`, answer `GET /metrics` with [`Metrics::render`]'s
//! OpenMetrics text, `/` with a pointer to it, anything else 404 (405 for other methods).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] scrapes at once (others wait in the backlog); a
//! request's head must arrive within [`HEAD_TIMEOUT`] and a connection lives at most
//! [`CONNECTION_LIFETIME`], so a client that opens and stalls costs a socket for seconds.
//! Request bodies are never read.
//!
//! Must not: serve anything but metrics (no authentication here: bind it to loopback, or put
//! it behind something that authenticates).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Live;
use crate::state::Shared;

/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 8;
/// Time for a request's head to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a scrape connection is kept, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The OpenMetrics text format prometheus-client writes (Prometheus negotiates it).
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown`. `live` reads the gauges at each scrape.
pub async fn serve<F>(
    listener: TcpListener,
    shared: Arc<Shared>,
    live: F,
    shutdown: CancellationToken,
) where
    F: Fn() -> Live + Send + Sync + 'static,
{
    let live = Arc::new(live);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let acquired = tokio::select! {
            () = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = acquired else {
            return;
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                // A failed accept (EMFILE, a reset before accept) must not end the endpoint.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let live = live.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let body = respond(&req, || shared.telemetry.metrics().render(&live()));
                async move { Ok::<_, Infallible>(body) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
            }
            drop(permit);
        });
    }
}

/// The response to one request (`render` is called only for a scrape).
fn respond(req: &Request<Incoming>, render: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE_OPENMETRICS, render())
        }
        (&Method::GET | &Method::HEAD, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "Portcullis: metrics at /metrics\n".to_owned(),
        ),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}
