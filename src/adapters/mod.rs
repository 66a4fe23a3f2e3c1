//! Adapters translate bytes into router requests and events into bytes.
//! They hold no chat state of their own.
//!
//! - [`tcp`]: the netcat line protocol (a reader thread per client) and its
//!   encoder.
//! - [`writers`]: the delivery layer, a small pool of threads that send
//!   every client's output through its transport's encoder (TCP lines, SSE
//!   events, WebSocket frames), with queues bounded in events and bytes.
//! - [`lines`]: bounded line reading shared by the TCP adapter.
//! - [`http`]: the JSON API, Server-Sent Events, the WebSocket and the web page.

pub mod http;
pub mod lines;
pub mod tcp;
pub mod writers;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many finished handshakes the kernel may hold for a listener before
/// it is accepted (capped by `net.core.somaxconn`). The standard library
/// asks for 128: in a storm of thousands of clients connecting at once the
/// queue overflows, and since our servers speak first (the nickname
/// prompt), a client whose handshake the kernel dropped waits forever for
/// a greeting that never comes.
const LISTEN_BACKLOG: i32 = 65_535;

/// Binds `addr` and listens with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind(addr)?;
    // Calling listen(2) again on a listening socket only changes its backlog.
    // SAFETY: a plain system call on a descriptor `listener` owns.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

/// Counts open client connections across both adapters (`MAX_CONNECTIONS`).
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

/// One counted connection; dropping it frees the place.
pub struct ConnectionSlot {
    limit: Arc<ConnectionLimit>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit { open: AtomicUsize::new(0), max })
    }

    /// Takes a place, or `None` when the server is full.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if open >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(ConnectionSlot { limit: self.clone() }),
                Err(now) => open = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
    }
}
