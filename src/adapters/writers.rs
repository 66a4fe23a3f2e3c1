//! The writer pool: a few threads that send every client's live output,
//! TCP lines and Server-Sent Events alike.
//!
//! A TCP client's reader thread blocks in `read`, and an SSE stream's thread
//! only opens, replays and pings its stream; neither writes live traffic.
//! The router queues events into the client's [`SocketOutbox`] (never
//! blocking); the first event queued on an idle client puts it on its
//! writer's ready list. Waking a few writers instead of one thread per
//! client is what keeps fan-out to thousands of clients cheap. A writer takes each ready client's whole queue,
//! renders it into one buffer and sends it with a non-blocking `send`. A
//! client whose socket is full is parked until epoll says it is writable
//! again; one parked longer than `WRITE_TIMEOUT_SECS` is disconnected. So a
//! stalled client costs its own queue and nothing else, and under load each
//! client gets one `send` per batch of messages, not one per message.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::event::{CloseReason, Event, Overflow, Sink};

/// The wire format of one client's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Netcat lines.
    Tcp,
    /// An event stream; `chunked` when it is framed in HTTP chunks of ours.
    Sse { chunked: bool },
}

/// The socket an outbox writes to, without a descriptor of its own (file
/// descriptors are the scarcest resource at 10,000 clients).
pub enum Socket {
    /// Shared with the TCP reader thread; closed when both are done.
    Shared(Arc<TcpStream>),
    /// Owned by someone else (tiny_http's connection) who keeps it open
    /// until the outbox is finished.
    Borrowed(std::mem::ManuallyDrop<TcpStream>),
}

impl Socket {
    /// A socket owned elsewhere.
    ///
    /// # Safety
    /// `fd` must stay open until the outbox using it is finished
    /// ([`SocketOutbox::wait_finished`]).
    pub unsafe fn borrowed(fd: std::os::unix::io::RawFd) -> Socket {
        use std::os::unix::io::FromRawFd;
        Socket::Borrowed(std::mem::ManuallyDrop::new(TcpStream::from_raw_fd(fd)))
    }
}

impl std::ops::Deref for Socket {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        match self {
            Socket::Shared(stream) => stream,
            Socket::Borrowed(stream) => stream,
        }
    }
}

/// Why a client is being disconnected, as its last words (if any).
fn last_words(format: Format, reason: CloseReason) -> Vec<u8> {
    const TOO_SLOW: &str = "you are not reading messages fast enough, so you were disconnected.";
    match (format, reason) {
        (Format::Tcp, CloseReason::TooSlow) => format!("Error: {TOO_SLOW}\n").into_bytes(),
        (Format::Tcp, _) => Vec::new(),
        (Format::Sse { .. }, CloseReason::TooSlow) => super::http::sse::error_event(TOO_SLOW),
        (Format::Sse { .. }, CloseReason::Replaced) => {
            super::http::sse::error_event("a newer stream took over this session.")
        }
        (Format::Sse { .. }, _) => Vec::new(),
    }
}
const WAKER: Token = Token(usize::MAX);

/// A pool of writer threads.
pub struct Writers {
    workers: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

/// What a writer thread shares with the outboxes it serves.
struct Shared {
    /// Outboxes with something to send.
    ready: Sender<Arc<SocketOutbox>>,
    /// Outboxes to start watching.
    added: Sender<Arc<SocketOutbox>>,
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
}

/// One client's output queue; [`OutboxSink`] is the router's side of it.
pub struct SocketOutbox {
    token: Token,
    /// The client's socket, used only for writing.
    stream: Socket,
    format: Format,
    capacity: usize,
    writer: Arc<Shared>,
    state: Mutex<OutboxState>,
    /// Woken when the outbox is finished (an SSE stream's thread waits).
    owner: Mutex<Option<std::thread::Thread>>,
}

#[derive(Default)]
struct OutboxState {
    events: VecDeque<Event>,
    closing: Option<CloseReason>,
    /// On the writer's ready list already.
    scheduled: bool,
    /// The socket was full; waiting for epoll to say it is writable.
    blocked_since: Option<Instant>,
    /// Rendered bytes the socket has not taken yet.
    unsent: Vec<u8>,
    /// Everything is sent and the socket shut down.
    finished: bool,
    /// Queued but not sent until released (an SSE stream still replaying).
    held: bool,
    /// The next `RoomChanged` must not announce `connected` (SSE: the
    /// stream's thread already did, before its replay).
    skip_connected: bool,
    /// Never used after all: forget it without touching the socket.
    abandoned: bool,
}

impl Writers {
    /// Starts `threads` writer threads.
    pub fn start(threads: usize, write_timeout: Duration) -> io::Result<Writers> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (ready, ready_rx) = crossbeam_channel::unbounded();
            let (added, added_rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Shared { ready, added, waker, sleeping: AtomicBool::new(false) });
            let worker = Worker { poll, ready: ready_rx, added: added_rx, shared: shared.clone(), conns: HashMap::new(), write_timeout };
            crate::vital::spawn(&format!("writer-{i}"), None, move || worker.run())?;
            workers.push(shared);
        }
        Ok(Writers { workers, next: AtomicUsize::new(0) })
    }

    /// Creates the outbox for a new client, served by one of the writers.
    /// With `held`, nothing is sent until [`SocketOutbox::release`].
    pub fn outbox(&self, stream: Socket, format: Format, capacity: usize, held: bool) -> Arc<SocketOutbox> {
        static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0);
        let writer = self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()].clone();
        let outbox = Arc::new(SocketOutbox {
            token: Token(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)),
            stream,
            format,
            capacity,
            writer: writer.clone(),
            state: Mutex::new(OutboxState { held, ..OutboxState::default() }),
            owner: Mutex::new(None),
        });
        let _ = writer.added.send(outbox.clone());
        writer.wake_always();
        outbox
    }
}

impl Shared {
    fn wake_always(&self) {
        self.sleeping.store(false, Ordering::Release);
        let _ = self.waker.wake();
    }
}

impl SocketOutbox {
    /// Puts the outbox on its writer's ready list if it is not there yet.
    fn schedule(self: &Arc<Self>, state: &mut OutboxState) {
        if !state.scheduled && !state.held && state.blocked_since.is_none() {
            state.scheduled = true;
            let _ = self.writer.ready.send(self.clone());
            self.writer.wake();
        }
    }

    /// Whether the client is gone and everything is over.
    pub fn is_finished(&self) -> bool {
        self.state.lock().unwrap().finished
    }

    /// Starts sending what is queued (see [`Writers::outbox`]).
    pub fn release(self: &Arc<Self>, skip_connected: bool) {
        let mut state = self.state.lock().unwrap();
        state.held = false;
        state.skip_connected = skip_connected;
        if !state.events.is_empty() || state.closing.is_some() {
            self.schedule(&mut state);
        }
    }

    /// Drops a held outbox that was never released, without writing to or
    /// shutting down the socket (its owner answers the request instead),
    /// and waits until the writer has let go of the socket.
    pub fn abandon(self: &Arc<Self>) {
        {
            let mut state = self.state.lock().unwrap();
            state.abandoned = true;
            state.held = false;
            state.closing.get_or_insert(CloseReason::Normal);
            self.schedule(&mut state);
        }
        while !self.wait_finished(Duration::from_secs(1)) {}
    }

    /// Parks the calling thread until the outbox is finished or `timeout`
    /// passes; returns whether it is finished.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        *self.owner.lock().unwrap() = Some(std::thread::current());
        if !self.is_finished() {
            std::thread::park_timeout(timeout);
        }
        self.is_finished()
    }

    fn mark_finished(&self) {
        self.state.lock().unwrap().finished = true;
        if let Some(owner) = self.owner.lock().unwrap().as_ref() {
            owner.unpark();
        }
    }
}

/// The router holds outboxes as `Arc<dyn Sink>`; scheduling needs the
/// `Arc`, so the sink is implemented on a thin wrapper.
pub struct OutboxSink(pub Arc<SocketOutbox>);

impl Sink for OutboxSink {
    fn deliver(&self, event: Event) -> Result<(), Overflow> {
        let mut state = self.0.state.lock().unwrap();
        if state.closing.is_some() || state.finished {
            return Ok(());
        }
        if state.events.len() >= self.0.capacity {
            return Err(Overflow);
        }
        state.events.push_back(event);
        self.0.schedule(&mut state);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.0.state.lock().unwrap();
        if state.closing.is_none() {
            state.closing = Some(reason);
            // A blocked client dropped for being slow will not unblock: try
            // its last words now (the stall sweep ends it if they don't fit).
            if reason == CloseReason::TooSlow {
                state.blocked_since = None;
            }
            self.0.schedule(&mut state);
        }
    }
}

struct Worker {
    poll: Poll,
    ready: Receiver<Arc<SocketOutbox>>,
    added: Receiver<Arc<SocketOutbox>>,
    shared: Arc<Shared>,
    conns: HashMap<Token, Arc<SocketOutbox>>,
    write_timeout: Duration,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut batch = Vec::new();
        let mut last_sweep = Instant::now();
        loop {
            for outbox in self.added.try_iter() {
                let fd = outbox.stream.as_raw_fd();
                if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), outbox.token, Interest::WRITABLE) {
                    log::warn!("cannot watch a TCP client for writing: {e}");
                }
                self.conns.insert(outbox.token, outbox);
            }
            let mut worked = false;
            while let Ok(outbox) = self.ready.try_recv() {
                worked = true;
                self.flush(&outbox, &mut batch);
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                self.give_up_on_stalled();
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
                    log::error!("TCP writer poll failed: {e}");
                }
            }
            self.shared.sleeping.store(false, Ordering::Release);
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                if let Some(outbox) = self.conns.get(&event.token()).cloned() {
                    outbox.state.lock().unwrap().blocked_since = None;
                    self.flush(&outbox, &mut batch);
                }
            }
        }
    }

    /// Sends everything the client has queued, as far as its socket takes it.
    fn flush(&mut self, outbox: &Arc<SocketOutbox>, batch: &mut Vec<Event>) {
        loop {
            let mut state = outbox.state.lock().unwrap();
            state.scheduled = false;
            if state.abandoned && !state.finished {
                drop(state);
                let fd = outbox.stream.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                self.conns.remove(&outbox.token);
                return outbox.mark_finished();
            }
            if state.finished || state.held || state.blocked_since.is_some() {
                return;
            }
            let hopeless = state.closing == Some(CloseReason::TooSlow);
            if hopeless {
                // What is queued is hopeless; only the last words go out.
                state.events.clear();
                state.unsent.clear();
            } else {
                batch.extend(state.events.drain(..));
            }
            let closing = state.closing;
            let mut skip_connected = state.skip_connected;
            let mut unsent = std::mem::take(&mut state.unsent);
            drop(state);

            // Render and send without holding the lock the router delivers under.
            let mut rendered = Vec::new();
            for event in batch.drain(..) {
                match outbox.format {
                    Format::Tcp => super::tcp::render(&event, &mut rendered),
                    Format::Sse { .. } => super::http::sse::render(&event, &mut rendered, &mut skip_connected),
                }
            }
            if let Some(reason) = closing {
                rendered.extend_from_slice(&last_words(outbox.format, reason));
            }
            match outbox.format {
                Format::Sse { chunked: true } => {
                    super::http::sse::frame_chunk(&rendered, &mut unsent);
                    if closing.is_some() {
                        unsent.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                _ => unsent.extend_from_slice(&rendered),
            }
            let sent = send_nonblocking(&outbox.stream, &unsent);

            let mut state = outbox.state.lock().unwrap();
            state.skip_connected = skip_connected;
            match sent {
                Ok(n) if n == unsent.len() => {
                    unsent.clear();
                    if unsent.capacity() > 16 * 1024 {
                        unsent = Vec::new();
                    }
                    state.unsent = unsent;
                    if !state.events.is_empty() || state.closing != closing {
                        continue; // more arrived while the lock was free
                    }
                    if closing.is_some() {
                        drop(state);
                        self.finish(outbox);
                    }
                    return;
                }
                Ok(n) => {
                    unsent.drain(..n);
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

    /// Shuts the socket (the reader thread sees the end) and stops watching it.
    fn finish(&mut self, outbox: &Arc<SocketOutbox>) {
        let _ = outbox.stream.shutdown(Shutdown::Both);
        let fd = outbox.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.conns.remove(&outbox.token);
        // Last: a borrowed socket may be closed by its owner from here on.
        outbox.mark_finished();
    }

    /// Disconnects clients whose socket has been full for too long.
    fn give_up_on_stalled(&mut self) {
        let now = Instant::now();
        let stalled: Vec<Arc<SocketOutbox>> = self
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

/// `send` without blocking and without SIGPIPE; returns how much was taken.
fn send_nonblocking(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: the pointer and length describe `rest`, which outlives the call.
        let n = unsafe {
            libc::send(stream.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
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
