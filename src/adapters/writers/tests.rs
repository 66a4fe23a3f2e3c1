//! The pool driven over Unix socket pairs, with an encoder of its own: no
//! router, no protocol.

use std::io::Read;
use std::os::unix::net::UnixStream;

use super::*;

/// Lines of text; `Reply` events carry them. Last words are `BYE <reason>`;
/// with `framed`, each batch is wrapped in `<` `>` and the last one ends `.`.
struct Lines {
    framed: bool,
}

impl Encoder for Lines {
    fn transport(&self) -> crate::event::Transport {
        crate::event::Transport::Tcp
    }

    fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        if let Event::Reply(text) = event {
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
    }

    fn last_words(&mut self, reason: CloseReason, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("BYE {reason:?}\n").as_bytes());
    }

    fn frame(&mut self, batch: &[u8], last: bool, out: &mut Vec<u8>) {
        if !self.framed {
            return out.extend_from_slice(batch);
        }
        out.push(b'<');
        out.extend_from_slice(batch);
        out.push(b'>');
        if last {
            out.push(b'.');
        }
    }
}

fn pool() -> Writers {
    Writers::start(1, Duration::from_secs(5)).unwrap()
}

const ROOMY: QueueLimits = QueueLimits { events: 1_000_000, bytes: 1 << 30 };

/// An outbox started on one end of a socket pair; the other end is the client.
fn client(writers: &Writers, limits: QueueLimits, encoder: Lines) -> (Arc<Outbox>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let outbox = writers.outbox(Box::new(encoder), limits);
    outbox.start(Conn::new(ours));
    (outbox, theirs)
}

/// Waits (as a stream's thread does) until the writer is done with the outbox.
fn finishes(outbox: &Outbox) -> bool {
    outbox.wait_finished(Duration::from_secs(5))
}

fn plain() -> Lines {
    Lines { framed: false }
}

/// Reads until the pool shuts the socket.
fn read_to_end(peer: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    peer.read_to_end(&mut all).unwrap();
    all
}

#[test]
fn events_go_out_in_order_and_close_ends_the_stream() {
    let writers = pool();
    let (outbox, mut peer) = client(&writers, ROOMY, Lines { framed: true });
    for i in 0..3 {
        outbox.deliver(Event::Reply(format!("line {i}"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    outbox.close(CloseReason::Normal);
    let text = String::from_utf8(read_to_end(&mut peer)).unwrap();
    // However the events were batched, each batch is framed and the last
    // one carries the last words.
    let unframed: String = text.chars().filter(|c| !matches!(c, '<' | '>' | '.')).collect();
    assert_eq!(unframed, "line 0\nline 1\nline 2\nBYE Normal\n");
    assert!(text.starts_with('<') && text.ends_with("BYE Normal\n>."), "{text:?}");
    assert!(finishes(&outbox));
}

#[test]
fn nothing_is_sent_before_start_and_queued_events_follow_it() {
    let writers = pool();
    let outbox = writers.outbox(Box::new(plain()), ROOMY);
    outbox.deliver(Event::Reply("early".into())).unwrap();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    outbox.start(Conn::new(ours));
    outbox.close(CloseReason::Normal);
    assert_eq!(read_to_end(&mut peer), b"early\nBYE Normal\n");
}

#[test]
fn a_full_socket_parks_the_client_and_partial_writes_resume_when_it_reads() {
    let writers = pool();
    let (outbox, mut peer) = client(&writers, ROOMY, plain());
    // Far more than a socket buffer holds.
    let line = "x".repeat(10_000);
    let mut expected = Vec::new();
    for i in 0..200 {
        let text = format!("{i:03} {line}");
        expected.extend_from_slice(text.as_bytes());
        expected.push(b'\n');
        outbox.deliver(Event::Reply(text)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    {
        let state = outbox.state.lock().unwrap();
        assert!(state.blocked_since.is_some(), "the writer parks a client whose socket is full");
        assert!(!state.unsent.is_empty(), "the rest of a partial write is kept");
    }
    assert!(outbox.backlog() > 1_000_000, "queued and unsent bytes count: {}", outbox.backlog());
    outbox.close(CloseReason::Normal);
    // The client reads at last: everything arrives, whole and in order.
    let all = read_to_end(&mut peer);
    assert_eq!(all.len(), expected.len() + b"BYE Normal\n".len());
    assert!(all.starts_with(&expected));
    assert!(finishes(&outbox));
}

#[test]
fn a_peer_that_closes_finishes_the_outbox() {
    let writers = pool();
    let (outbox, peer) = client(&writers, ROOMY, plain());
    drop(peer);
    // The first write meets the closed peer.
    let _ = outbox.deliver(Event::Reply("anyone there?".into()));
    assert!(finishes(&outbox), "the writer notices the peer is gone");
    // Later deliveries are ignored, not errors.
    assert_eq!(outbox.deliver(Event::Reply("late".into())), Ok(()));
}

#[test]
fn queues_are_bounded_in_events() {
    let writers = pool();
    let outbox = writers.outbox(Box::new(plain()), QueueLimits { events: 4, bytes: 1 << 20 });
    for _ in 0..4 {
        outbox.deliver(Event::Reply("hi".into())).unwrap();
    }
    assert_eq!(outbox.deliver(Event::Reply("one too many".into())), Err(Overflow));
    // A replay is paced by the router, not refused.
    outbox.replay(Event::Reply("replayed".into()));
    assert_eq!(outbox.state.lock().unwrap().events.len(), 5);
}

#[test]
fn a_slow_consumer_overflows_the_byte_bound_and_gets_its_last_words() {
    let writers = pool();
    let limits = QueueLimits { events: 1_000_000, bytes: 256 * 1024 };
    let (outbox, mut peer) = client(&writers, limits, plain());
    let line = "y".repeat(4_000);
    let mut accepted = 0usize;
    let overflowed = loop {
        match outbox.deliver(Event::Reply(line.clone())) {
            Ok(()) => accepted += 1,
            Err(Overflow) => break true,
        }
        if accepted > 10_000 {
            break false;
        }
        // Let the writer fill the socket, as a client that stops reading would.
        if accepted.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(overflowed, "a client that never reads overflows");
    // Socket buffer plus the byte bound, not the event bound, stopped it.
    assert!(accepted * 4_000 < 4 * 1024 * 1024, "accepted {accepted} events");
    // The router's answer to an overflow: drop it as too slow.
    outbox.close(CloseReason::TooSlow);
    let all = read_to_end(&mut peer);
    assert!(all.ends_with(b"BYE TooSlow\n"), "{:?}", String::from_utf8_lossy(&all[all.len().saturating_sub(40)..]));
    assert!(finishes(&outbox));
}
