//! The delivery layer: a few writer threads that send every client's
//! output, whatever its protocol.
//!
//! The pool knows sockets, queues and back-pressure, and nothing about any
//! protocol. A transport is an [`Encoder`]: how an event becomes bytes, with
//! its own per-stream state (the TCP adapter's lines, the SSE adapter's
//! event stream and its chunked framing). The router queues events into a
//! client's [`Outbox`] (never blocking); the first event queued on an idle
//! client puts it on its writer's ready list. A writer takes the client's
//! whole queue, encodes it into one buffer and sends it with one
//! non-blocking `send`, so under load each client costs one `send` per
//! batch, not one per message, and a few threads serve thousands of clients.
//!
//! Back-pressure: a queue holds at most `OUTBOX_CAPACITY` events and
//! `SENDQ_BYTES` bytes (queued plus encoded-but-unsent); a delivery beyond
//! either is refused with [`Overflow`], and the router drops the client as
//! too slow (its last words, from its encoder, are still tried). A client
//! whose socket is full is parked until epoll says it is writable again; one
//! parked longer than `WRITE_TIMEOUT_SECS` is disconnected. So a stalled
//! client costs its own queue and nothing else.
//!
//! A write that fails is how a client that has gone away is noticed; the
//! outbox is then finished, and whoever waits on it
//! ([`Outbox::wait_finished`]) is woken.
//!
//! Who owns what: an [`Outbox`] is shared (`Arc`) by the router (as the
//! session's [`Sink`]), the writer thread serving it, and whoever started
//! it. It owns its socket through a [`Conn`], so the descriptor stays open
//! until the last of them lets go; the writer thread alone writes to it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::event::{CloseReason, Event, Overflow, Sink, Transport};

/// How one transport turns events into bytes. One encoder per stream, used
/// only by the writer thread serving it.
pub trait Encoder: Send {
    /// The transport this encoder writes, for metrics by protocol.
    fn transport(&self) -> Transport;
    /// Appends the bytes of `event` to `out`.
    fn encode(&mut self, event: &Event, out: &mut Vec<u8>);
    /// Appends what the client is told as its output ends for `reason`.
    fn last_words(&mut self, reason: CloseReason, out: &mut Vec<u8>);
    /// Appends one batch of encoded bytes as it goes on the wire (`last`:
    /// nothing follows it). By default the bytes go as they are.
    fn frame(&mut self, batch: &[u8], last: bool, out: &mut Vec<u8>) {
        let _ = last;
        out.extend_from_slice(batch);
    }
}

/// A socket the pool writes to, with whatever keeps its descriptor open.
///
/// The descriptor stays valid for as long as the `Conn` lives; the writer
/// thread serving the outbox is the only one that writes through it (the
/// owner may still read from its own handle, as a TCP client's reader does).
pub struct Conn {
    fd: RawFd,
    /// Owns the descriptor (and anything that must live as long); never
    /// used, only dropped. The mutex makes the `Conn` shareable.
    _owner: Mutex<Box<dyn Send>>,
}

impl Conn {
    /// A socket the `Conn` owns (or shares, e.g. an `Arc<TcpStream>`).
    pub fn new<S: AsRawFd + Send + 'static>(socket: S) -> Conn {
        Conn { fd: socket.as_raw_fd(), _owner: Mutex::new(Box::new(socket)) }
    }

    /// A socket whose descriptor `owner` keeps open, for a library that
    /// gives out its socket's number but not the socket (tiny_http).
    ///
    /// # Safety
    /// `fd` must stay open for as long as `owner` is alive, and nothing
    /// else may close it.
    pub unsafe fn kept_open_by(fd: RawFd, owner: impl Send + 'static) -> Conn {
        Conn { fd, _owner: Mutex::new(Box::new(owner)) }
    }

    /// `send` without blocking and without SIGPIPE; how much was taken.
    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < bytes.len() {
            let rest = &bytes[sent..];
            // SAFETY: `self.fd` is open while `self` lives; the pointer and
            // length describe `rest`, which outlives the call.
            let n = unsafe {
                libc::send(self.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                sent += n as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => return Ok(sent),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(error),
            }
        }
        Ok(sent)
    }

    /// Turns Nagle's algorithm off (`TCP_NODELAY`): the pool already sends
    /// whole batches, and Nagle would hold a batch back until the peer
    /// acknowledges the one before, up to its delayed-ACK timer (40 ms).
    /// Not a TCP socket (a test's Unix socket): nothing to do.
    fn no_delay(&self) {
        let on: libc::c_int = 1;
        // SAFETY: `self.fd` is open while `self` lives; the option value is
        // a live `c_int` of the size given.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }

    /// Shuts both directions: the peer sees the end, and so does a thread
    /// of ours reading the same socket.
    fn shutdown(&self) {
        // SAFETY: `self.fd` is open while `self` lives.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

/// Bounds of one client's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Events queued (`OUTBOX_CAPACITY`).
    pub events: usize,
    /// Bytes queued or encoded and not yet sent (`SENDQ_BYTES`).
    pub bytes: usize,
}

const WAKER: Token = Token(usize::MAX);

/// A pool of writer threads.
pub struct Writers {
    workers: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

/// What a writer thread shares with the outboxes it serves.
struct Shared {
    /// Outboxes with something to send; sent by outboxes, received by the writer.
    ready: Sender<Arc<Outbox>>,
    /// Outboxes that were just started, for the writer to watch.
    added: Sender<Arc<Outbox>>,
    waker: Waker,
    /// Set while the writer waits in `poll`: only then is a wake-up needed.
    sleeping: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    fn wake_always(&self) {
        self.sleeping.store(false, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// One client's output queue. The router holds it as the session's
/// [`Sink`]; nothing is sent before [`Outbox::start`] gives it a socket.
pub struct Outbox {
    token: Token,
    transport: Transport,
    this: Weak<Outbox>,
    limits: QueueLimits,
    writer: Arc<Shared>,
    state: Mutex<OutboxState>,
    /// Set once, by `start`.
    conn: OnceLock<Conn>,
    /// Locked only by the writer thread serving the outbox.
    encoder: Mutex<Box<dyn Encoder>>,
    /// The thread waiting in [`Outbox::wait_finished`], woken at the end.
    waiter: Mutex<Option<std::thread::Thread>>,
}

struct OutboxState {
    events: VecDeque<Event>,
    /// Sum of the queued events' [`Event::weight`].
    queued_bytes: usize,
    /// Encoded bytes the socket has not taken yet.
    unsent: Vec<u8>,
    closing: Option<CloseReason>,
    /// The last words are encoded (in `unsent` until the socket takes them).
    said_last_words: bool,
    /// Has a socket: the writer may send.
    started: bool,
    /// On the writer's ready list already.
    scheduled: bool,
    /// The socket was full; waiting for epoll to say it is writable.
    blocked_since: Option<Instant>,
    /// Everything is sent (or the client is gone) and the socket shut.
    finished: bool,
}

impl Writers {
    /// Starts `threads` writer threads. Clients parked longer than
    /// `write_timeout` are disconnected.
    pub fn start(threads: usize, write_timeout: Duration) -> io::Result<Writers> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (ready, ready_rx) = crossbeam_channel::unbounded();
            let (added, added_rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Shared { ready, added, waker, sleeping: AtomicBool::new(false) });
            let worker = Worker {
                poll,
                ready: ready_rx,
                added: added_rx,
                shared: shared.clone(),
                conns: HashMap::new(),
                write_timeout,
                batch: Vec::new(),
                encoded: Vec::new(),
                wire: Vec::new(),
            };
            crate::vital::spawn(&format!("writer-{i}"), None, move || worker.run())?;
            workers.push(shared);
        }
        Ok(Writers { workers, next: AtomicUsize::new(0) })
    }

    /// A new client's outbox, served by one of the writers. It queues from
    /// now on and sends once [`Outbox::start`]ed.
    pub fn outbox(&self, encoder: Box<dyn Encoder>, limits: QueueLimits) -> Arc<Outbox> {
        static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0);
        let writer = self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()].clone();
        Arc::new_cyclic(|this| Outbox {
            token: Token(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)),
            transport: encoder.transport(),
            this: this.clone(),
            limits,
            writer,
            state: Mutex::new(OutboxState {
                events: VecDeque::new(),
                queued_bytes: 0,
                unsent: Vec::new(),
                closing: None,
                said_last_words: false,
                started: false,
                scheduled: false,
                blocked_since: None,
                finished: false,
            }),
            conn: OnceLock::new(),
            encoder: Mutex::new(encoder),
            waiter: Mutex::new(None),
        })
    }
}

impl Outbox {
    /// Gives the outbox its socket and starts sending what is queued.
    /// A second call is ignored.
    pub fn start(&self, conn: Conn) {
        conn.no_delay();
        if self.conn.set(conn).is_err() {
            return;
        }
        let Some(this) = self.this.upgrade() else { return };
        let _ = self.writer.added.send(this);
        self.writer.wake_always();
        let mut state = self.state.lock().unwrap();
        state.started = true;
        if !state.events.is_empty() || state.closing.is_some() {
            self.schedule(&mut state);
        }
    }

    /// Whether everything is over: all sent and the socket shut, or the client gone.
    pub fn is_finished(&self) -> bool {
        self.state.lock().unwrap().finished
    }

    /// Parks the calling thread until the outbox is finished or `timeout`
    /// passes; returns whether it is finished. One thread waits at a time.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        *self.waiter.lock().unwrap() = Some(std::thread::current());
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_finished() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Puts the outbox on its writer's ready list if it is not there yet.
    fn schedule(&self, state: &mut OutboxState) {
        if state.scheduled || !state.started || state.blocked_since.is_some() || state.finished {
            return;
        }
        if let Some(this) = self.this.upgrade() {
            state.scheduled = true;
            let _ = self.writer.ready.send(this);
            self.writer.wake();
        }
    }

    fn push(&self, event: Event, bounded: bool) -> Result<(), Overflow> {
        let mut state = self.state.lock().unwrap();
        if state.closing.is_some() || state.finished {
            return Ok(());
        }
        let weight = event.weight();
        if bounded
            && (state.events.len() >= self.limits.events
                || state.queued_bytes + state.unsent.len() + weight > self.limits.bytes)
        {
            return Err(Overflow);
        }
        state.events.push_back(event);
        state.queued_bytes += weight;
        self.schedule(&mut state);
        Ok(())
    }
}

impl Sink for Outbox {
    fn deliver(&self, event: Event) -> Result<(), Overflow> {
        self.push(event, true)
    }

    fn replay(&self, event: Event) {
        let _ = self.push(event, false);
    }

    fn backlog(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.queued_bytes + state.unsent.len()
    }

    fn transport(&self) -> Option<Transport> {
        Some(self.transport)
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock().unwrap();
        if state.closing.is_none() {
            state.closing = Some(reason);
            // A blocked client dropped for being slow will not unblock: try
            // its last words now (the stall sweep ends it if they don't fit).
            if reason == CloseReason::TooSlow {
                state.blocked_since = None;
            }
            self.schedule(&mut state);
        }
    }
}

struct Worker {
    poll: Poll,
    ready: Receiver<Arc<Outbox>>,
    added: Receiver<Arc<Outbox>>,
    shared: Arc<Shared>,
    conns: HashMap<Token, Arc<Outbox>>,
    write_timeout: Duration,
    /// Reused buffers: the events taken from a queue, their bytes, and
    /// those bytes framed for the wire.
    batch: Vec<Event>,
    encoded: Vec<u8>,
    wire: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            for outbox in self.added.try_iter() {
                let fd = outbox.conn.get().expect("started outboxes have a socket").fd;
                if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), outbox.token, Interest::WRITABLE) {
                    log::warn!("cannot watch a client's socket for writing: {e}");
                }
                self.conns.insert(outbox.token, outbox);
            }
            let mut worked = false;
            while let Ok(outbox) = self.ready.try_recv() {
                worked = true;
                self.flush(&outbox);
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                self.sweep();
            }
            if worked {
                continue;
            }
            // Announce the nap, then look once more so no wake-up is lost.
            self.shared.sleeping.store(true, Ordering::Release);
            if !self.ready.is_empty() || !self.added.is_empty() {
                self.shared.sleeping.store(false, Ordering::Release);
                continue;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("writer poll failed: {e}");
                }
            }
            self.shared.sleeping.store(false, Ordering::Release);
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                if let Some(outbox) = self.conns.get(&event.token()).cloned() {
                    outbox.state.lock().unwrap().blocked_since = None;
                    self.flush(&outbox);
                }
            }
        }
    }

    /// Sends everything the client has queued, as far as its socket takes it.
    fn flush(&mut self, outbox: &Arc<Outbox>) {
        let Some(conn) = outbox.conn.get() else { return };
        loop {
            let mut state = outbox.state.lock().unwrap();
            state.scheduled = false;
            if state.finished || state.blocked_since.is_some() {
                return;
            }
            if state.closing == Some(CloseReason::TooSlow) && !state.said_last_words {
                // What is queued is hopeless; only the last words go out,
                // after the bytes already encoded (a frame may be half
                // sent: cutting it would garble the stream's framing).
                state.events.clear();
            } else {
                self.batch.extend(state.events.drain(..));
            }
            if state.events.capacity() > 64 {
                // A burst's queue is not kept for an idle client.
                state.events = VecDeque::new();
            }
            state.queued_bytes = 0;
            let closing = state.closing;
            let last_words = closing.filter(|_| !state.said_last_words);
            state.said_last_words |= closing.is_some();
            // Bytes a full socket left over go first; with none (the usual
            // case) the batch is framed in the writer's own buffer, so an
            // idle client holds no send buffer at all.
            let leftover = std::mem::take(&mut state.unsent);
            drop(state);

            // Encode and send without holding the lock the router delivers under.
            let mut wire = if leftover.is_empty() { std::mem::take(&mut self.wire) } else { leftover };
            {
                let mut encoder = outbox.encoder.lock().unwrap();
                self.encoded.clear();
                for event in self.batch.drain(..) {
                    encoder.encode(&event, &mut self.encoded);
                }
                if let Some(reason) = last_words {
                    encoder.last_words(reason, &mut self.encoded);
                }
                if !self.encoded.is_empty() || last_words.is_some() {
                    encoder.frame(&self.encoded, last_words.is_some(), &mut wire);
                }
            }
            if self.encoded.capacity() > 256 * 1024 {
                self.encoded = Vec::new();
            }
            let sent = conn.send(&wire);
            // What the socket did not take stays with the client; the
            // writer's buffer goes back to the writer.
            let unsent = match sent {
                Ok(n) if n < wire.len() => wire[n..].to_vec(),
                _ => Vec::new(),
            };
            wire.clear();
            if wire.capacity() <= 256 * 1024 && wire.capacity() >= self.wire.capacity() {
                self.wire = wire;
            }

            let mut state = outbox.state.lock().unwrap();
            match sent {
                Ok(_) if unsent.is_empty() => {
                    if !state.events.is_empty() || state.closing != closing {
                        continue; // more arrived while the lock was free
                    }
                    if closing.is_some() {
                        drop(state);
                        self.finish(outbox);
                    }
                    return;
                }
                Ok(_) => {
                    state.unsent = unsent;
                    state.blocked_since = Some(Instant::now());
                    return;
                }
                Err(_) => {
                    drop(state);
                    return self.finish(outbox);
                }
            }
        }
    }

    /// Shuts the socket (a reader of ours sees the end), stops watching it
    /// and wakes whoever waits for the end.
    fn finish(&mut self, outbox: &Arc<Outbox>) {
        if let Some(conn) = outbox.conn.get() {
            conn.shutdown();
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.fd));
        }
        self.conns.remove(&outbox.token);
        {
            let mut state = outbox.state.lock().unwrap();
            state.finished = true;
            state.events.clear();
            state.unsent = Vec::new();
        }
        if let Some(waiter) = outbox.waiter.lock().unwrap().as_ref() {
            waiter.unpark();
        }
    }

    /// Once a second: disconnects clients whose socket has been full for too long.
    fn sweep(&mut self) {
        let now = Instant::now();
        let stalled: Vec<Arc<Outbox>> = self
            .conns
            .values()
            .filter(|o| {
                let state = o.state.lock().unwrap();
                state.blocked_since.is_some_and(|since| now.duration_since(since) > self.write_timeout)
            })
            .cloned()
            .collect();
        for outbox in stalled {
            log::info!("a client has not read for {:?}; disconnecting it", self.write_timeout);
            self.finish(&outbox);
        }
    }
}

#[cfg(test)]
mod tests;
