//! The TCP writer pool: a few threads that send every TCP client's output.
//!
//! Each client's reader thread blocks in `read`; writing needs no thread of
//! its own. The router queues events into a client's [`TcpOutbox`] (never
//! blocking); the first event queued on an idle client puts it on its
//! writer's ready list. A writer takes each ready client's whole queue,
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

use super::tcp::render;
use crate::event::{CloseReason, Event, Overflow, Sink};

/// The line a client gets when it is dropped for not reading.
const TOO_SLOW: &[u8] = b"Error: you are not reading messages fast enough, so you were disconnected.\n";
const WAKER: Token = Token(usize::MAX);

/// A pool of writer threads.
pub struct TcpWriters {
    workers: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

/// What a writer thread shares with the outboxes it serves.
struct Shared {
    /// Outboxes with something to send.
    ready: Sender<Arc<TcpOutbox>>,
    /// Outboxes to start watching.
    added: Sender<Arc<TcpOutbox>>,
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

/// One client's output queue, as the router's [`Sink`] for it.
pub struct TcpOutbox {
    token: Token,
    stream: TcpStream,
    capacity: usize,
    writer: Arc<Shared>,
    state: Mutex<OutboxState>,
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
}

impl TcpWriters {
    /// Starts `threads` writer threads.
    pub fn start(threads: usize, write_timeout: Duration) -> io::Result<TcpWriters> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (ready, ready_rx) = crossbeam_channel::unbounded();
            let (added, added_rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Shared { ready, added, waker, sleeping: AtomicBool::new(false) });
            let worker = Worker { poll, ready: ready_rx, added: added_rx, shared: shared.clone(), conns: HashMap::new(), write_timeout };
            std::thread::Builder::new().name(format!("tcp-writer-{i}")).spawn(move || worker.run())?;
            workers.push(shared);
        }
        Ok(TcpWriters { workers, next: AtomicUsize::new(0) })
    }

    /// Creates the outbox for a new client, served by one of the writers.
    pub fn outbox(&self, stream: &TcpStream, capacity: usize) -> io::Result<Arc<TcpOutbox>> {
        static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0);
        let writer = self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()].clone();
        let outbox = Arc::new(TcpOutbox {
            token: Token(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)),
            stream: stream.try_clone()?,
            capacity,
            writer: writer.clone(),
            state: Mutex::new(OutboxState::default()),
        });
        let _ = writer.added.send(outbox.clone());
        writer.wake_always();
        Ok(outbox)
    }
}

impl Shared {
    fn wake_always(&self) {
        self.sleeping.store(false, Ordering::Release);
        let _ = self.waker.wake();
    }
}

impl TcpOutbox {
    /// Puts the outbox on its writer's ready list if it is not there yet.
    fn schedule(self: &Arc<Self>, state: &mut OutboxState) {
        if !state.scheduled && state.blocked_since.is_none() {
            state.scheduled = true;
            let _ = self.writer.ready.send(self.clone());
            self.writer.wake();
        }
    }

    /// Whether the client is gone and everything is over.
    pub fn is_finished(&self) -> bool {
        self.state.lock().unwrap().finished
    }
}

/// The router holds outboxes as `Arc<dyn Sink>`; scheduling needs the
/// `Arc`, so the sink is implemented on a thin wrapper.
pub struct TcpSink(pub Arc<TcpOutbox>);

impl Sink for TcpSink {
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
            // A blocked client dropped for being slow will not unblock: end it now.
            if reason == CloseReason::TooSlow {
                state.blocked_since = None;
            }
            self.0.schedule(&mut state);
        }
    }
}

struct Worker {
    poll: Poll,
    ready: Receiver<Arc<TcpOutbox>>,
    added: Receiver<Arc<TcpOutbox>>,
    shared: Arc<Shared>,
    conns: HashMap<Token, Arc<TcpOutbox>>,
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
    fn flush(&mut self, outbox: &Arc<TcpOutbox>, batch: &mut Vec<Event>) {
        loop {
            let mut state = outbox.state.lock().unwrap();
            state.scheduled = false;
            if state.finished || state.blocked_since.is_some() {
                return;
            }
            if state.closing == Some(CloseReason::TooSlow) {
                // What is queued is hopeless; say why if the socket still takes it.
                state.events.clear();
                state.unsent.clear();
                state.unsent.extend_from_slice(TOO_SLOW);
            } else {
                batch.extend(state.events.drain(..));
            }
            let closing = state.closing;
            let mut unsent = std::mem::take(&mut state.unsent);
            drop(state);

            // Render and send without holding the lock the router delivers under.
            for event in batch.drain(..) {
                render(&event, &mut unsent);
            }
            let sent = send_nonblocking(&outbox.stream, &unsent);

            let mut state = outbox.state.lock().unwrap();
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
                        state.finished = true;
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
                    state.finished = true;
                    drop(state);
                    return self.finish(outbox);
                }
            }
        }
    }

    /// Shuts the socket (the reader thread sees the end) and stops watching it.
    fn finish(&mut self, outbox: &Arc<TcpOutbox>) {
        let _ = outbox.stream.shutdown(Shutdown::Both);
        let fd = outbox.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.conns.remove(&outbox.token);
    }

    /// Disconnects clients whose socket has been full for too long.
    fn give_up_on_stalled(&mut self) {
        let now = Instant::now();
        let stalled: Vec<Arc<TcpOutbox>> = self
            .conns
            .values()
            .filter(|o| {
                let state = o.state.lock().unwrap();
                state.blocked_since.is_some_and(|since| now.duration_since(since) > self.write_timeout)
            })
            .cloned()
            .collect();
        for outbox in stalled {
            log::info!("a TCP client has not read for {:?}; disconnecting it", self.write_timeout);
            outbox.state.lock().unwrap().finished = true;
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
