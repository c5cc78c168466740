//! The HTTP side of the exporter: `/metrics` and `/healthz` over HTTP/1.1 (hyper), on the
//! trace's own single-threaded runtime. Scrapes are served from the bytes encoded at the
//! last interval, so a request costs a copy of a reference; connections are capped
//! ([`MAX_CONNECTIONS`], the excess closed at once) and each gets [`HEADER_TIMEOUT`] to send
//! its request and [`CONNECTION_LIFETIME`] in all, so slow or vanished scrapers and floods
//! cannot hold the exporter or grow its memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::exposition::{wants_openmetrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use super::Shared;

/// Enough that a few hundred idle connections do not lock Prometheus out (each costs a few
/// KiB of buffers: at most a few MiB in all).
pub const MAX_CONNECTIONS: usize = 512;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What a request gets: status, content type and body (pure, tested without sockets).
pub fn answer(
    method: &Method,
    path: &str,
    accept: &str,
    shared: &Shared,
) -> (StatusCode, &'static str, Bytes) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            Bytes::from_static(b"only GET and HEAD\n"),
        );
    }
    match path {
        "/metrics" => {
            let e = shared.encoded();
            if wants_openmetrics(accept) {
                (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, e.openmetrics)
            } else {
                (StatusCode::OK, TEXT_CONTENT_TYPE, e.text)
            }
        }
        "/healthz" => match shared.health() {
            Ok(()) => {
                let e = shared.encoded();
                let body = format!("ok: {} series, {} bytes\n", e.series, e.text.len());
                (StatusCode::OK, PLAIN, Bytes::from(body))
            }
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                Bytes::from(why + "\n"),
            ),
        },
        "/" => (
            StatusCode::OK,
            PLAIN,
            Bytes::from_static(b"netwatch exporter: /metrics, /healthz\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            PLAIN,
            Bytes::from_static(b"not found: try /metrics or /healthz\n"),
        ),
    }
}

fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (status, content_type, body) = answer(req.method(), req.uri().path(), accept, shared);
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Accepts connections until the runtime stops (the trace ended).
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, most likely: let the open connections finish.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&req, &shared);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that went away mid-response is an error of its connection only.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let shared = Shared::new(Duration::from_secs(1));
        let (s, t, _) = answer(&Method::GET, "/metrics", "", &shared);
        assert_eq!((s, t), (StatusCode::OK, TEXT_CONTENT_TYPE));
        let (s, t, _) = answer(
            &Method::GET,
            "/metrics",
            "application/openmetrics-text; version=1.0.0",
            &shared,
        );
        assert_eq!((s, t), (StatusCode::OK, OPENMETRICS_CONTENT_TYPE));
        assert_eq!(
            answer(&Method::POST, "/metrics", "", &shared).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&Method::GET, "/x", "", &shared).0,
            StatusCode::NOT_FOUND
        );
        // Nothing published yet: not healthy.
        let (s, _, body) = answer(&Method::GET, "/healthz", "", &shared);
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
        shared.publish(Default::default());
        assert_eq!(
            answer(&Method::GET, "/healthz", "", &shared).0,
            StatusCode::OK
        );
    }
}
