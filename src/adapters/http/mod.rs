//! The HTTP API, Server-Sent Events and the web page (the wire formats
//! are written up in `docs/protocol.md`).
//!
//! tiny_http parses requests; everything else is ours:
//! - a fixed pool of **worker** threads (`HTTP_WORKERS`) takes requests from
//!   tiny_http's queue, checks the request limits, routes them ([`routes`])
//!   and answers with JSON ([`response`]);
//! - each SSE stream gets its own **stream** thread ([`sse`]) that attaches
//!   it to its session and lives as long as it; the stream's bytes are sent
//!   by the shared writer pool ([`crate::adapters::writers`]);
//! - each WebSocket ([`ws`]) gets one thread that reads its frames; its
//!   output goes through the writer pool like a stream's;
//! - the web page is compiled into the binary ([`assets`]).
//!
//! Chat state is only ever changed by the router: handlers send it
//! [`RouterMsg`](crate::router::RouterMsg)s and read it through typed
//! queries ([`RouterHandle::rooms`] and the like). Request bodies and URLs
//! are decoded in [`request`].
//!
//! Threads: besides ours, tiny_http runs one accept thread and one thread
//! per open keep-alive connection (its pool grows with the connections and
//! shrinks 5 s after they close). An event-stream request is the last on
//! its connection (a patch in `vendor/`), so tiny_http's thread lets go of
//! it: an open SSE stream costs one thread, its own.

mod assets;
mod request;
mod response;
mod routes;
pub(crate) mod sse;
pub(crate) mod ws;

pub use routes::route_table;

/// Entry points for the fuzz targets in `fuzz/`: the production parsers,
/// reachable without a socket. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The endpoints that take a JSON body, in the order `parse_body` numbers them.
    pub const BODIES: &[&str] = super::routes::BODIES;

    /// Parses `body` as the JSON body of `BODIES[endpoint]` exactly as a
    /// request's would be; a refusal comes back as its status and sentence.
    pub fn parse_body(endpoint: usize, body: &[u8]) -> Result<(), (u16, String)> {
        super::routes::decode_body(endpoint, body).map_err(|r| (r.status, r.message))
    }
}

use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::writers::Writers;
use super::ConnectionLimit;
use crate::bus::BusHealth;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::router::RouterHandle;
use crate::store::StoreHandle;

/// Stack of each worker thread: serde_json and the handlers need more than
/// a client thread's, and there are only a few workers.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// What every HTTP worker and stream thread needs.
#[derive(Clone)]
pub struct HttpContext {
    pub router: RouterHandle,
    pub store: StoreHandle,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Shared with the TCP adapter: each SSE stream holds one place.
    pub connections: Arc<ConnectionLimit>,
    pub instance_id: String,
    pub started: Instant,
    /// Health of the Redis bus for `/api/health`; `None` while this
    /// instance runs without Redis (reported as `"redis": null`).
    pub redis: Option<Arc<BusHealth>>,
    pub stats: Arc<HttpStats>,
    /// Sends every stream (shared with the TCP adapter).
    pub writers: Arc<Writers>,
    /// Password checks and lasting sessions (shared with the TCP adapter).
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
}

impl HttpContext {
    pub fn new(
        router: RouterHandle,
        store: StoreHandle,
        limits: Limits,
        metrics: Arc<Metrics>,
        connections: Arc<ConnectionLimit>,
        instance_id: String,
        writers: Arc<Writers>,
    ) -> HttpContext {
        HttpContext {
            router,
            store,
            limits,
            metrics,
            connections,
            instance_id,
            started: Instant::now(),
            redis: None,
            stats: Arc::new(HttpStats::default()),
            writers,
            accounts: None,
        }
    }
}

/// Answered requests by status class, for `/metrics`.
#[derive(Default)]
pub struct HttpStats {
    classes: [AtomicU64; 5],
}

impl HttpStats {
    fn record(&self, status: u16) {
        if let Some(counter) = self.classes.get((status / 100) as usize - 1) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text for the counters.
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "baby_discord_http_requests_total";
        let _ = writeln!(out, "# HELP {name} HTTP requests answered, by status class.\n# TYPE {name} counter");
        for (i, counter) in self.classes.iter().enumerate() {
            let _ = writeln!(out, "{name}{{class=\"{}xx\"}} {}", i + 1, counter.load(Ordering::Relaxed));
        }
    }
}

/// The running HTTP side: tiny_http's server and our workers.
pub struct HttpServer {
    front: Arc<Front>,
    workers: Vec<JoinHandle<()>>,
}

/// tiny_http's server, replaceable: its accept thread ends for good on the
/// first failed `accept` (e.g. out of file descriptors), so the workers
/// start a new server on the same listening socket when that happens.
struct Front {
    /// Our own descriptor of the listening socket, kept open so a new
    /// tiny_http server can take over from a failed one.
    listener: TcpListener,
    /// What every connection may cost (deadlines, head size, admission).
    limits: tiny_http::Limits,
    current: Mutex<Arc<tiny_http::Server>>,
    /// Set by [`HttpServer::stop`]; workers end instead of waiting again.
    stopping: AtomicBool,
    workers: usize,
}

impl HttpServer {
    /// Serves HTTP on `listener` until [`stop`](Self::stop).
    pub fn start(listener: TcpListener, workers: usize, ctx: HttpContext) -> Result<HttpServer, String> {
        let limits = connection_limits(&ctx);
        let server = Front::serve(&listener, &limits).map_err(|e| format!("cannot start HTTP: {e}"))?;
        let front = Arc::new(Front {
            listener,
            limits,
            current: Mutex::new(Arc::new(server)),
            stopping: AtomicBool::new(false),
            workers,
        });
        let mut threads = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (front, ctx) = (front.clone(), ctx.clone());
            let thread = std::thread::Builder::new()
                .name("http-worker".into())
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || work(&front, &ctx))
                .map_err(|e| format!("cannot start HTTP worker threads: {e}"))?;
            threads.push(thread);
        }
        Ok(HttpServer { front, workers: threads })
    }

    /// Stops taking requests: each worker finishes the request in hand and
    /// ends; tiny_http's listener closes. Open streams end when the router
    /// closes their sessions at shutdown.
    pub fn stop(self) {
        self.front.stopping.store(true, Ordering::Release);
        let server = self.front.server();
        // Each `unblock` wakes exactly one worker blocked in `recv`.
        for _ in &self.workers {
            server.unblock();
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        // Dropping the last reference stops tiny_http's accept thread.
        drop(server);
        drop(self.front);
        log::info!("HTTP listener stopped");
    }
}

impl Front {
    fn serve(listener: &TcpListener, limits: &tiny_http::Limits) -> Result<tiny_http::Server, String> {
        let listener = listener.try_clone().map_err(|e| e.to_string())?;
        tiny_http::Server::from_listener_with_limits(listener, limits.clone()).map_err(|e| e.to_string())
    }

    fn server(&self) -> Arc<tiny_http::Server> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces `failed` (whose accept thread has ended) with a new server,
    /// retrying with backoff while descriptors are short; then wakes the
    /// workers still waiting on the old one.
    fn restart(&self, failed: &Arc<tiny_http::Server>, error: std::io::Error) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        log::error!("HTTP accept failed ({error}); restarting the HTTP listener");
        let mut delay = Duration::from_millis(50);
        while !self.stopping.load(Ordering::Acquire) {
            std::thread::sleep(delay);
            match Front::serve(&self.listener, &self.limits) {
                Ok(server) => {
                    *current = Arc::new(server);
                    break;
                }
                Err(e) => {
                    log::warn!("cannot restart the HTTP listener yet: {e}");
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
        drop(current);
        for _ in 0..self.workers {
            failed.unblock();
        }
    }
}

/// The longest a stream waits for the router to attach it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Attaches `sink` as the event stream of the session `token` names (SSE
/// and WebSocket alike), joining `room` if given and replaying after
/// `after`; waits for the router's answer.
fn attach_stream(
    ctx: &HttpContext,
    token: uuid::Uuid,
    room: Option<String>,
    sink: Arc<dyn crate::event::Sink>,
    after: Option<i64>,
) -> Result<crate::event::SessionId, crate::error::ChatError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ctx.router.send(crate::router::RouterMsg::AttachStream {
        session: crate::router::SessionRef::Token(token),
        room,
        sink,
        after,
        reply: tx,
    });
    // Until it answers, the router may queue events, which wait unsent.
    rx.recv_timeout(ATTACH_TIMEOUT).unwrap_or(Err(crate::error::ChatError::ShuttingDown))
}

/// Hands `request` to a new thread named `name` (an SSE stream or a
/// WebSocket, one thread each) that runs `serve`. The request travels
/// through a channel so that it can still be answered (503) here if the
/// thread cannot be started.
fn spawn_connection(
    name: &str,
    request: tiny_http::Request,
    ctx: &HttpContext,
    serve: impl FnOnce(tiny_http::Request, &HttpContext) + Send + 'static,
) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(request);
    let (thread_rx, thread_ctx) = (rx.clone(), ctx.clone());
    let spawned = std::thread::Builder::new().name(name.into()).stack_size(ctx.limits.client_stack_bytes).spawn(
        move || {
            if let Ok(request) = thread_rx.recv() {
                serve(request, &thread_ctx);
            }
        },
    );
    if let Err(e) = spawned {
        log::error!("cannot start a {name} thread: {e}");
        if let Ok(request) = rx.try_recv() {
            response::send(request, response::Refusal::from(crate::error::ChatError::ServerFull).into(), ctx);
        }
    }
}

/// The limits tiny_http enforces on every connection, before any request
/// reaches a worker: a slow or endless client costs its own connection
/// thread and at most `MAX_HEADER_BYTES` + `MAX_BODY_BYTES` of memory, for
/// at most `HTTP_READ_TIMEOUT_SECS`, and never holds a worker.
fn connection_limits(ctx: &HttpContext) -> tiny_http::Limits {
    tiny_http::Limits {
        max_head_bytes: ctx.limits.max_header_bytes,
        read_timeout: Some(ctx.limits.http_read_timeout),
        idle_timeout: Some(ctx.limits.http_idle),
        preload_body_bytes: ctx.limits.max_body_bytes,
        gate: Some(Arc::new(Admissions { limit: ctx.connections.clone(), metrics: ctx.metrics.clone() })),
    }
}

/// Admits HTTP connections against `MAX_CONNECTIONS`, which TCP clients
/// share: every open HTTP connection (idle keep-alive and event streams
/// included) holds one place until its socket closes.
struct Admissions {
    limit: Arc<ConnectionLimit>,
    metrics: Arc<Metrics>,
}

/// One admitted HTTP connection's place.
struct Admission {
    _slot: super::ConnectionSlot,
    metrics: Arc<Metrics>,
}

impl tiny_http::Gate for Admissions {
    fn admit(&self) -> Option<Box<dyn Send>> {
        let Some(slot) = self.limit.try_acquire() else {
            self.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.metrics.http_connections.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(Admission { _slot: slot, metrics: self.metrics.clone() }))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds `addr` for HTTP; the error names the variables to fix.
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = super::listen(addr)
        .map_err(|e| format!("cannot listen on HTTP_PORT {} at BIND_ADDR {}: {e}", addr.port(), addr.ip()))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, local))
}

/// A worker: answers requests until [`HttpServer::stop`].
fn work(front: &Front, ctx: &HttpContext) {
    while !front.stopping.load(Ordering::Acquire) {
        let server = front.server();
        let request = match server.recv() {
            Ok(request) => request,
            // Woken by `unblock`: stopping, or another worker restarted tiny_http.
            Err(e) if e.raw_os_error().is_none() => continue,
            // tiny_http's accept thread failed and has ended.
            Err(e) => {
                front.restart(&server, e);
                continue;
            }
        };
        // A bug in one handler must not take a worker down with it; the
        // request, dropped unanswered, is answered 500 by tiny_http (with
        // fixed bytes, so that answering cannot panic again) and its
        // connection closed.
        if catch_unwind(AssertUnwindSafe(|| routes::handle(request, ctx))).is_err() {
            log::error!("an HTTP handler panicked; the request was answered 500");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::Duration;

    /// A handler that panics while holding its request: the client still
    /// gets a 500 (written by the request's destructor during unwinding),
    /// and the process lives on.
    #[test]
    fn a_panicking_handler_answers_500() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tiny_http::Server::from_listener_with_limits(listener, tiny_http::Limits::default()).unwrap();
        let worker = std::thread::spawn(move || {
            let request = server.recv().unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(move || {
                let _held = request;
                panic!("a bug in a handler");
            }));
            assert!(outcome.is_err());
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
        assert!(answer.ends_with("{\"success\":false,\"error\":\"internal error; try again.\"}"), "{answer}");
        worker.join().unwrap();
    }
}
