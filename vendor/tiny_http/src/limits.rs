//! What one connection may cost the server (patched for baby-discord; see
//! vendor/README.md). Upstream tiny_http reads request heads and bodies
//! without any deadline or size bound and never closes an idle keep-alive
//! connection, so a few slow or endless clients can hold every thread and
//! as much memory as they like.
//!
//! - [`Limits`] is the caller's configuration, given to
//!   [`Server::from_listener_with_limits`](crate::Server::from_listener_with_limits).
//! - [`Gate`] admits or refuses each accepted connection (503).
//! - `ConnState` is shared by a connection's head reader and its request
//!   bodies: the current read deadline, and whether the connection must
//!   close because a body was left unread.

use std::io::{self, ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::RefinedTcpStream;

/// Limits every connection of a server obeys.
#[derive(Clone)]
pub struct Limits {
    /// A request line plus headers longer than this is answered 431 and
    /// the connection closed; no more than this is ever buffered.
    pub max_head_bytes: usize,
    /// A request head (from its first byte) and a preloaded body must
    /// arrive within this, else 408 and the connection is closed. It also
    /// bounds how long a handler can block reading a body it was not given
    /// in memory.
    pub read_timeout: Option<Duration>,
    /// A keep-alive connection with no new request for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Bodies up to this size (declared, or chunked) are read into memory
    /// by the connection's own thread, under `read_timeout`, before the
    /// request is handed out: a slow body then holds its own connection
    /// thread only, never a thread of the caller's.
    pub preload_body_bytes: usize,
    /// Admits each accepted connection, or refuses it with 503.
    pub gate: Option<Arc<dyn Gate>>,
}

impl Default for Limits {
    /// Upstream tiny_http's behaviour: no bounds.
    fn default() -> Limits {
        Limits {
            max_head_bytes: usize::MAX,
            read_timeout: None,
            idle_timeout: None,
            preload_body_bytes: 1024,
            gate: None,
        }
    }
}

/// Decides whether a new connection may be served.
pub trait Gate: Send + Sync {
    /// A token held for as long as the connection's socket is open, or
    /// `None` to refuse the connection (it is answered 503 and closed).
    fn admit(&self) -> Option<Box<dyn Send>>;
}

/// The most of an unread request body read away after its response, so
/// the connection can serve another request. Past it, the connection is
/// closed instead (reading on would let the client keep us busy, and
/// skipping would make the rest of the body look like the next request).
pub(crate) const DRAIN_LIMIT: u64 = 64 * 1024;

/// The longest an unread request body is waited for after its response.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// State shared by a connection's reads.
#[derive(Default)]
pub(crate) struct ConnState {
    deadline: Mutex<Option<Instant>>,
    abandoned: AtomicBool,
}

impl ConnState {
    /// Reads from now on fail with `TimedOut` once `after` has passed.
    pub(crate) fn set_deadline(&self, after: Option<Duration>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = after.map(|d| Instant::now() + d);
    }

    /// Brings the read deadline forward to at most `within` from now.
    fn cap_deadline(&self, within: Duration) {
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        let cap = Instant::now() + within;
        *deadline = Some(deadline.map_or(cap, |d| d.min(cap)));
    }

    /// The connection can serve no further request (a body was left
    /// unread, or a response could not be completed): its next read fails.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The read deadline of an upgraded connection, for its new owner
/// (patched for baby-discord): reads of the upgraded stream fail with
/// `TimedOut` once it passes, and nothing else changes it any more.
#[derive(Clone)]
pub struct ReadDeadline(pub(crate) Arc<ConnState>);

impl ReadDeadline {
    /// Reads from now on fail with `TimedOut` once `after` has passed
    /// (`None`: they wait as long as it takes).
    pub fn set(&self, after: Option<Duration>) {
        self.0.set_deadline(after);
    }
}

/// The read side of a connection, obeying its [`ConnState`]: each read
/// waits at most until the deadline (reported as `TimedOut`), and nothing
/// is read once the connection has been abandoned.
pub(crate) struct DeadlineReader {
    inner: RefinedTcpStream,
    state: Arc<ConnState>,
    /// Whether a socket read timeout is currently set.
    timeout_set: bool,
}

impl DeadlineReader {
    pub(crate) fn new(inner: RefinedTcpStream, state: Arc<ConnState>) -> DeadlineReader {
        DeadlineReader { inner, state, timeout_set: false }
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state.abandoned.load(Ordering::Acquire) {
            return Err(io::Error::new(ErrorKind::ConnectionAborted, "connection abandoned"));
        }
        match self.state.deadline() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(ErrorKind::TimedOut, "read deadline passed"));
                }
                // A zero timeout would mean "block forever".
                self.inner.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                self.timeout_set = true;
            }
            None if self.timeout_set => {
                self.inner.set_read_timeout(None)?;
                self.timeout_set = false;
            }
            None => {}
        }
        match self.inner.read(buf) {
            // What an expired socket timeout looks like on Unix.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                Err(io::Error::new(ErrorKind::TimedOut, "read deadline passed"))
            }
            other => other,
        }
    }
}

/// The read side of an upgraded connection (patched for baby-discord).
///
/// An upgrade is the last request on its connection, so its reads need
/// none of the machinery that hands the socket from one request to the
/// next: the bytes already buffered past the request head are kept, and
/// the head's 1 KiB buffer and the hand-over channel are released (~2.5 KiB
/// per WebSocket). Reads go to the socket under the connection's deadline,
/// as before.
pub(crate) struct UpgradedReader {
    buffered: Vec<u8>,
    pos: usize,
    inner: DeadlineReader,
}

impl UpgradedReader {
    /// Replaces `source`, the upgrade request's reader (the one that read
    /// its head); `source` is kept as it is if it does not hold the socket.
    pub(crate) fn detach(
        mut source: crate::util::SequentialReader<io::BufReader<DeadlineReader>>,
    ) -> Box<dyn Read + Send + 'static> {
        match source.take_reader() {
            Some(reader) => Box::new(UpgradedReader {
                buffered: reader.buffer().to_vec(),
                pos: 0,
                inner: reader.into_inner(),
            }),
            None => Box::new(source),
        }
    }
}

impl Read for UpgradedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.buffered.len() {
            let n = buf.len().min(self.buffered.len() - self.pos);
            buf[..n].copy_from_slice(&self.buffered[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.buffered.len() {
                self.buffered = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// A request body that, when dropped unfinished, reads away at most
/// [`DRAIN_LIMIT`] more bytes within [`DRAIN_WAIT`], and otherwise
/// abandons the connection.
pub(crate) struct Drain<R: Read> {
    inner: R,
    state: Option<Arc<ConnState>>,
}

impl<R: Read> Drain<R> {
    pub(crate) fn new(inner: R, state: Option<Arc<ConnState>>) -> Drain<R> {
        Drain { inner, state }
    }
}

impl<R: Read> Read for Drain<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Read> Drop for Drain<R> {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.cap_deadline(DRAIN_WAIT);
        }
        let mut buf = [0u8; 4096];
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            let want = buf.len().min(left as usize);
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return,
                Ok(n) => left -= n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(state) = &self.state {
            state.abandon();
        }
    }
}
