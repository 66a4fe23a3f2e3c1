//! The chat state the router owns: sessions and rooms.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use crate::event::{ChatMessage, Event, MessageChange, Overflow, Protocol, SessionId, Sink};

/// One connected user (or a connection still choosing a nickname).
pub struct Session {
    pub id: SessionId,
    pub protocol: Protocol,
    /// The HTTP `sessionId`; `None` for TCP.
    pub token: Option<Uuid>,
    /// `None` until the nickname is chosen (and stored).
    pub nickname: Option<String>,
    /// Store id of the user; 0 until logged in.
    pub user_id: i64,
    /// Logged in to a registered account (the nickname is the account's).
    pub registered: bool,
    /// A nickname reserved while the store records it (login or `/nick`).
    pub pending_nickname: Option<String>,
    pub room: Option<String>,
    /// Where events go; `None` for an HTTP session with no open stream.
    pub sink: Option<Arc<dyn Sink>>,
    pub rate: RateLimiter,
    /// Last request or stream activity, for HTTP idle expiry.
    pub last_active: Instant,
    /// When the session was opened (lasting sessions are checked against
    /// the store only once they have had time to be stored).
    pub opened: Instant,
    /// Set while a login waits for the DMs the account missed offline:
    /// what the session is sent meanwhile waits here, to follow the
    /// welcome and that block (a stored DM that arrives meanwhile is in the
    /// block, so it is not sent live at all).
    pub held: Option<RefCell<Vec<Event>>>,
    /// Online or away (shared by every session of an account).
    pub status: crate::event::Status,
    /// The away message, if any.
    pub away_message: Option<String>,
    /// When a typing signal of this session was last passed on.
    pub last_typing: Option<Instant>,
}

impl Session {
    pub fn new(id: SessionId, protocol: Protocol, token: Option<Uuid>, sink: Option<Arc<dyn Sink>>, rate: RateLimiter) -> Self {
        Session {
            id,
            protocol,
            token,
            nickname: None,
            user_id: 0,
            registered: false,
            pending_nickname: None,
            room: None,
            sink,
            rate,
            last_active: Instant::now(),
            opened: Instant::now(),
            held: None,
            status: crate::event::Status::Online,
            away_message: None,
            last_typing: None,
        }
    }

    /// Queues an event for this session; sessions without a sink drop it.
    pub fn deliver(&self, event: Event) -> Result<(), Overflow> {
        if let Some(held) = &self.held {
            let mut held = held.borrow_mut();
            if held.len() >= HELD_MAX {
                return Err(Overflow);
            }
            held.push(event);
            return Ok(());
        }
        match &self.sink {
            Some(sink) => sink.deliver(event),
            None => Ok(()),
        }
    }

    pub fn nick(&self) -> &str {
        self.nickname.as_deref().unwrap_or("?")
    }
}

/// The most events held for a session while its login completes (more
/// means it is flooded: dropped like any slow consumer).
const HELD_MAX: usize = 10_000;

/// A room: its members here and its most recent messages.
pub struct Room {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
    pub members: HashSet<SessionId>,
    /// The last `HISTORY_SIZE` messages, oldest first.
    pub history: VecDeque<Arc<ChatMessage>>,
    /// Id of the newest message pushed out of `history` (0: none yet), so a
    /// replay knows whether `history` alone covers what a client missed.
    pub evicted_up_to: i64,
    /// The order gate (see `cluster.rs`): the next sequence number to deliver,
    pub next_seq: i64,
    /// messages that arrived before their predecessors,
    pub waiting: BTreeMap<i64, Arc<ChatMessage>>,
    /// since when a gap has been open,
    pub gap_since: Option<Instant>,
    /// and whether the store is being asked for the missing messages.
    pub fetching: bool,
    /// `[system]` lines from other instances, and edits and deletions
    /// (`Event::Changed`), waiting for the messages they follow: (the first
    /// `seq` they come before, the event), in arrival order.
    pub held_notices: VecDeque<(i64, Event)>,
    /// The edits and deletions delivered lately, oldest first, each with
    /// its number in delivery order (`changes_released`): a resuming stream
    /// is sent from here what it missed (see `edits.rs`).
    pub changes: VecDeque<(u64, Arc<MessageChange>)>,
    /// How many changes have been delivered in this room.
    pub changes_released: u64,
    /// `changes` holds every change delivered here made at room positions
    /// from this `seq` on (older ones may have happened before this
    /// instance read the room, or been pushed out).
    pub changes_from: i64,
    /// Whether this instance hears the room's channel (see `cluster.rs`).
    pub sub: RoomSub,
    /// Typing signals waiting to go out with the room's next message (or
    /// at the next tick), each with the typer's own sessions here, and
    /// since when the oldest has waited (see `presence.rs`).
    pub typing: Vec<(Arc<crate::event::Typing>, Vec<SessionId>)>,
    pub typing_since: Option<Instant>,
}

/// Whether an instance listens to a room's bus channel. Without a bus every
/// room is `Warm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomSub {
    /// Not subscribed: no local member; the ring buffer may be stale.
    Cold,
    /// Subscribing, then reading the room's recent messages from the store;
    /// requests that need the room wait. `loading`: the read has started.
    Warming { since: Instant, loading: bool },
    /// Subscribed and up to date.
    Warm,
}

impl Room {
    pub fn new(id: i64, name: String, created_at_ms: i64) -> Room {
        Room {
            id,
            name,
            created_at_ms,
            members: HashSet::new(),
            history: VecDeque::new(),
            evicted_up_to: 0,
            next_seq: 1,
            waiting: BTreeMap::new(),
            gap_since: None,
            fetching: false,
            held_notices: VecDeque::new(),
            changes: VecDeque::new(),
            changes_released: 0,
            changes_from: 1,
            sub: RoomSub::Warm,
            typing: Vec::new(),
            typing_since: None,
        }
    }

    /// Appends a committed message to the ring buffer.
    pub fn remember(&mut self, message: Arc<ChatMessage>, capacity: usize) {
        while self.history.len() >= capacity {
            if let Some(old) = self.history.pop_front() {
                self.evicted_up_to = self.evicted_up_to.max(old.id);
            }
        }
        self.history.push_back(message);
    }

    /// Records a delivered change: the ring buffer's copy of its message is
    /// replaced (never mutated: its rendering is shared), and the change is
    /// logged for streams that resume.
    /// `changes` keeps the last `log_size` of them.
    pub fn apply_change(&mut self, change: &Arc<MessageChange>, log_size: usize) {
        if let Some(slot) = self.history.iter_mut().find(|m| m.id == change.id) {
            *slot = Arc::new(slot.changed(change));
        }
        self.changes_released += 1;
        self.changes.push_back((self.changes_released, change.clone()));
        while self.changes.len() > log_size {
            if let Some((_, old)) = self.changes.pop_front() {
                self.changes_from = self.changes_from.max(old.after_seq + 1);
            }
        }
    }

    /// Forgets the logged changes (the ring buffer was read again): only
    /// changes after the room's current position are known from now on.
    pub fn reset_changes(&mut self) {
        self.changes.clear();
        self.changes_from = self.next_seq;
    }

    /// Messages after `after_id`, if the ring buffer still holds all of them.
    pub fn history_after(&self, after_id: i64) -> Option<Vec<Arc<ChatMessage>>> {
        (after_id >= self.evicted_up_to)
            .then(|| self.history.iter().filter(|m| m.id > after_id).cloned().collect())
    }
}

/// Token bucket: `rate` messages per second, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `rate` 0 disables the limit.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter { rate: rate as f64, burst: burst as f64, tokens: burst as f64, updated: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(5, 10);
        assert!((0..10).all(|_| limiter.try_take(start)));
        assert!(!limiter.try_take(start));
        assert!(limiter.try_take(start + Duration::from_millis(200)));
        assert!(!limiter.try_take(start + Duration::from_millis(200)));
        let mut off = RateLimiter::new(0, 1);
        assert!((0..1000).all(|_| off.try_take(start)));
    }
}
