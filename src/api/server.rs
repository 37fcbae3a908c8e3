//! The HTTP connection loop, hardened for a public address. `axum::serve` has no header-read
//! timeout and no connection limit, so each listener runs this instead:
//!
//! - at most `api.max_connections` open connections: one more is closed as it is accepted;
//! - a request's header must arrive within `api.header_read_timeout` (hyper's timer), which also
//!   bounds how long a kept-alive connection waits for its next request;
//! - a connection on which no byte moves either way for `api.idle_timeout` is dropped (a client
//!   that stops reading its answer);
//! - a request must be answered within `api.request_timeout` (408), and at most
//!   `api.max_concurrent_requests` are handled at once (503 with `Retry-After`);
//! - every answer carries `Cache-Control: no-store`, `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer` and `X-Content-Type-Options: nosniff`; HTML pages also a
//!   Content-Security-Policy that allows only their own inline style and posting forms to
//!   themselves.
//!
//! HTTP/1.1 only: forewarn is meant to sit behind a TLS-terminating proxy (SECURITY.md).

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The limits of one listener (from `[api]`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
}

impl Limits {
    pub fn from_config(cfg: &super::Config) -> Limits {
        Limits {
            header_read_timeout: cfg.header_read_timeout.std(),
            request_timeout: cfg.request_timeout.std(),
            idle_timeout: cfg.idle_timeout.std(),
            max_connections: cfg.max_connections.max(1),
            max_concurrent_requests: cfg.max_concurrent_requests.max(1),
        }
    }
}

/// The page policy: nothing loads from anywhere; the page's own inline `<style>` applies and its
/// forms post back to itself; no framing.
const HTML_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                        form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A page that states its own policy keeps it (the board loads its own script and style).
    if is_html && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(HTML_CSP),
        );
    }
    resp
}

/// Wraps `router` in the request limits and the security headers.
pub fn harden(router: Router, limits: &Limits) -> Router {
    let permits = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    let timeout = limits.request_timeout;
    router
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let permits = permits.clone();
                async move {
                    // Over the limit the answer is immediate: queueing would let a flood hold
                    // every connection open for as long as it likes.
                    let Ok(_permit) = permits.try_acquire_owned() else {
                        let mut r = ApiError::unavailable("too many requests at once; retry")
                            .into_response();
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        return r;
                    };
                    match tokio::time::timeout(timeout, next.run(req)).await {
                        Ok(r) => r,
                        Err(_) => ApiError::request_timeout(format!(
                            "the request was not completed within {timeout:?}"
                        ))
                        .into_response(),
                    }
                }
            },
        ))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Serves `router` (already [`harden`]ed) on `listener` until `shutdown`; open connections
/// finish their current request, at most `grace` long.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accepting an API connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused_logged.elapsed() > Duration::from_secs(60) {
                refused_logged = Instant::now();
                tracing::warn!(
                    "API connection refused: {} connections are open (api.max_connections)",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, &limits, shutdown).await;
            drop(slot);
        });
    }
    // Every slot back means every connection has finished.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after {grace:?}; dropped");
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        start,
        last: last.clone(),
    });
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("API connection ended: {e}");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let quiet_ms = (start.elapsed().as_millis() as u64)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(quiet_ms) >= idle {
                    tracing::debug!("API connection idle for {idle:?}: closed");
                    return;
                }
            }
        }
    }
}

/// A TCP stream that records when a byte last moved, for the idle timeout.
struct Watched {
    inner: TcpStream,
    start: Instant,
    /// Milliseconds after `start` of the last read or write that moved bytes.
    last: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: String,
    pub source: std::io::Error,
}

/// The API stage with its listeners bound: `api.listen` (every route, the board's pages) and,
/// with `api.public_listen`, the public one.
pub struct Stage {
    private: TcpListener,
    public: Option<TcpListener>,
    limits: Limits,
    /// Where the API listens (the port filled in when the configuration asked for `0`).
    pub addr: std::net::SocketAddr,
    pub public_addr: Option<std::net::SocketAddr>,
}

impl Stage {
    /// Binds the listeners; `prebound`: the API listener a standby already answered on.
    pub async fn bind(
        cfg: &super::Config,
        prebound: Option<std::net::TcpListener>,
    ) -> Result<Stage, ListenError> {
        let err = |addr: &str| {
            let addr = addr.to_string();
            move |source| ListenError { addr, source }
        };
        let private = match prebound {
            Some(l) => TcpListener::from_std(l).map_err(err(&cfg.listen))?,
            None => TcpListener::bind(&cfg.listen)
                .await
                .map_err(err(&cfg.listen))?,
        };
        let addr = private.local_addr().map_err(err(&cfg.listen))?;
        let (public, public_addr) = match &cfg.public_listen {
            Some(a) => {
                let l = TcpListener::bind(a).await.map_err(err(a))?;
                let bound = l.local_addr().map_err(err(a))?;
                (Some(l), Some(bound))
            }
            None => (None, None),
        };
        Ok(Stage {
            private,
            public,
            limits: Limits::from_config(cfg),
            addr,
            public_addr,
        })
    }

    /// Serves `private` and the notifier's routes until `shutdown`, each listener letting its
    /// open connections finish for at most `grace`. With a public listener, the notifier's
    /// public routes (provider callbacks, the self-service page) and a liveness check for the
    /// proxy in front of it are all it serves; without one they join the private routes.
    pub fn spawn(
        self,
        private: Router,
        notify: super::NotifyRoutes,
        shutdown: &CancellationToken,
        grace: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut private = private.merge(notify.private);
        match self.public {
            Some(l) => {
                let public = notify.public.route(
                    "/healthz",
                    axum::routing::get(|| async {
                        axum::Json(serde_json::json!({"status": "ok"}))
                    }),
                );
                tasks.push(tokio::spawn(serve(
                    l,
                    harden(public, &self.limits),
                    self.limits.clone(),
                    shutdown.clone(),
                    grace,
                )));
            }
            None => private = private.merge(notify.public),
        }
        tasks.push(tokio::spawn(serve(
            self.private,
            harden(private, &self.limits),
            self.limits,
            shutdown.clone(),
            grace,
        )));
        tasks
    }
}
