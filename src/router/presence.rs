//! Presence (online, away, offline) and typing signals.
//!
//! **Presence belongs to the user**, not to a session: every session of an
//! account shares one status, and a user goes offline when its last
//! session on every instance ends. Each instance keeps the status of its
//! own sessions; other instances' users carry theirs in the bus's presence
//! data ([`crate::bus::Member`]: one member per change, the whole list only
//! in the snapshot answering a hello). An instance that sees a user's
//! service-wide status change (here, or in what the bus tells it) delivers
//! a `presence` event to its local members of the rooms the user is in and
//! to the user's own sessions here, so every instance delivers to its own
//! clients and nothing is sent twice. TCP sessions are skipped: the line
//! protocol shows no presence lines.
//!
//! **Typing** is never stored and never shown on TCP. A session's signals
//! closer together than `TYPING_INTERVAL_MS` are answered but not passed
//! on; one that is passed on becomes one shared [`Typing`] event (rendered
//! once per protocol) for the room's other members here, and one small bus
//! event on the room's channel, which only instances with a member in the
//! room hear. Clients drop a typing indicator 5 s after the last signal.
//!
//! Typing must stay cheap next to the room's messages: a signal waits in
//! its room (one per user) and goes out with the room's next message, in
//! the same pass over the members, so it reaches each client in the same
//! writer wake-up and socket write as that message instead of costing a
//! wake-up and a write of its own; in a quiet room it goes out at the next
//! tick once it has waited [`TYPING_HOLD`].

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Reply, RouterState};
use crate::bus::BusEvent;
use crate::error::ChatError;
use crate::event::{Event, Presence, Protocol, SessionId, Status, Typing};
use crate::names::name_key;

/// One member of a room (or one online user) as `/list` and the members
/// endpoint show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub nickname: String,
    /// `Online` or `Away`.
    pub status: Status,
    /// The away message, if any.
    pub message: Option<String>,
}

impl MemberStatus {
    /// `bob`, `bob (away)` or `bob (away: lunch)`, as `/list` shows it.
    pub fn label(&self) -> String {
        match (self.status, &self.message) {
            (Status::Away, Some(message)) => format!("{} (away: {message})", self.nickname),
            (Status::Away, None) => format!("{} (away)", self.nickname),
            _ => self.nickname.clone(),
        }
    }
}

/// A user's service-wide presence: status and away message; `None` offline.
type Known = Option<(Status, Option<String>)>;

/// How long a typing signal may wait for a message of its room to ride
/// along with before it goes out by itself (at the router's next tick).
pub const TYPING_HOLD: Duration = Duration::from_millis(50);

/// Typing signals waiting in a room, each with the typer's sessions here.
type PendingTyping = Vec<(Arc<Typing>, Vec<SessionId>)>;

impl RouterState {
    /// `/away [message]` and `/back` (and `POST /api/presence`): sets the
    /// status of every session of the user here, tells the other
    /// instances, and delivers the `presence` event.
    pub(super) fn set_status(&mut self, id: SessionId, status: Status, message: Option<String>) -> Result<Reply, ChatError> {
        let message = match message {
            Some(text) if status == Status::Away => {
                let text = crate::names::clean_message(&text, self.settings.max_away_chars)?;
                (!text.is_empty()).then_some(text)
            }
            _ => None,
        };
        let nick = self.sessions[&id].nick().to_string();
        let before = self.known_status(&nick);
        for session in self.sessions_of(id) {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.status = status;
                s.away_message = message.clone();
            }
        }
        self.announce_presence(id);
        if before != self.known_status(&nick) {
            self.deliver_presence(&nick, status, message, &[]);
        }
        Ok(Reply::Text(match status {
            Status::Away => "You are marked as away.".to_string(),
            _ => "You are back.".to_string(),
        }))
    }

    /// The status a session logging in to an account takes: the one its
    /// account already has here or on another instance, else online.
    pub(super) fn inherit_status(&mut self, id: SessionId) {
        let nick = self.sessions[&id].nick().to_string();
        let others = self.sessions_of(id).into_iter().filter(|s| *s != id);
        let here = others.filter_map(|s| self.sessions.get(&s)).map(|s| (s.status, s.away_message.clone())).next();
        let known = here.or_else(|| {
            let key = name_key(&nick);
            self.remote.values().find_map(|r| r.members.get(&key)).map(|m| (m.status, m.message.clone()))
        });
        if let (Some((status, message)), Some(session)) = (known, self.sessions.get_mut(&id)) {
            session.status = status;
            session.away_message = message;
        }
    }

    /// A user's status as this instance knows it service-wide: its sessions
    /// here first, then other instances'; `None` when it is offline.
    pub(super) fn known_status(&self, nick: &str) -> Known {
        let key = name_key(nick);
        let local = self.nicknames.get(&key).and_then(|id| self.sessions.get(id)).filter(|s| {
            s.nickname.as_deref().map(name_key).as_deref() == Some(key.as_str())
        });
        if let Some(session) = local {
            return Some((session.status, session.away_message.clone()));
        }
        self.remote.values().find_map(|r| r.members.get(&key)).map(|m| (m.status, m.message.clone()))
    }

    /// Delivers a `presence` event to this instance's members (not on TCP)
    /// of the rooms the user is in (here and, as last heard, elsewhere;
    /// `also`: rooms it has just left) and to the user's own sessions here.
    pub(super) fn deliver_presence(&mut self, nick: &str, status: Status, message: Option<String>, also: &[String]) {
        let key = name_key(nick);
        let own: Vec<SessionId> = match self.nicknames.get(&key) {
            Some(id) if self.sessions.get(id).is_some_and(|s| s.nickname.is_some()) => self.sessions_of(*id),
            _ => Vec::new(),
        };
        let mut rooms: HashSet<String> = also.iter().cloned().collect();
        rooms.extend(own.iter().filter_map(|id| self.sessions.get(id)?.room.clone()));
        rooms.extend(self.remote.values().filter_map(|r| r.members.get(&key)?.room.clone()));
        let mut recipients: HashSet<SessionId> = own.into_iter().collect();
        for room in &rooms {
            if let Some(room) = self.rooms.get(room) {
                recipients.extend(room.members.iter().copied());
            }
        }
        if recipients.is_empty() {
            return;
        }
        let event = Event::Presence(Arc::new(Presence { user: nick.to_string(), status, message, rendered: Default::default() }));
        self.deliver_to_streams(recipients, &event);
    }

    /// A local user whose last session here ended: offline, unless it is
    /// still online on another instance. `room`: the room it was in.
    pub(super) fn went_offline(&mut self, nick: &str, room: Option<String>) {
        if self.known_status(nick).is_some() {
            return;
        }
        let rooms: Vec<String> = room.into_iter().collect();
        self.deliver_presence(nick, Status::Offline, None, &rooms);
    }

    /// After the bus changed what is known of other instances' users: a
    /// `presence` event for each of `nicks` whose service-wide status is
    /// no longer `before`. `rooms`: where each one was (for one gone).
    pub(super) fn presence_changed(&mut self, changes: Vec<(String, Known, Option<String>)>) {
        for (nick, before, room) in changes {
            let after = self.known_status(&nick);
            if after == before {
                continue;
            }
            let (status, message) = after.unwrap_or((Status::Offline, None));
            let rooms: Vec<String> = room.into_iter().collect();
            self.deliver_presence(&nick, status, message, &rooms);
        }
    }

    /// Another instance says an account logged in here too has a new
    /// status: its sessions here take it (one status per user).
    pub(super) fn adopt_status(&mut self, nick: &str, status: Status, message: &Option<String>) {
        let Some(&id) = self.nicknames.get(&name_key(nick)) else { return };
        if !self.sessions.get(&id).is_some_and(|s| s.registered) {
            return;
        }
        for session in self.sessions_of(id) {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.status = status;
                s.away_message = message.clone();
            }
        }
    }

    /// `POST /api/typing`, a WebSocket `typing` frame: passed on to the
    /// room's other members (here and elsewhere) at most once per
    /// `TYPING_INTERVAL_MS`; more often is answered and dropped.
    pub(super) fn typing(&mut self, id: SessionId) -> Result<Reply, ChatError> {
        let interval = self.settings.typing_interval;
        let session = self.sessions.get_mut(&id).ok_or(ChatError::UnknownSession)?;
        let room = session.room.clone().ok_or(ChatError::NotInRoom)?;
        let now = Instant::now();
        if session.last_typing.is_some_and(|last| now.duration_since(last) < interval) {
            return Ok(Reply::Done);
        }
        session.last_typing = Some(now);
        let user = session.nick().to_string();
        if let Some(bus) = &self.bus {
            bus.to_room(&room, &BusEvent::Typing { from: self.instance.clone(), room: room.clone(), user: user.clone() });
        }
        let typer = self.sessions_of(id);
        self.queue_typing(room, user, typer);
        Ok(Reply::Done)
    }

    /// A typing signal from another instance.
    pub(super) fn remote_typing(&mut self, room: String, user: String) {
        let typer = match self.nicknames.get(&name_key(&user)) {
            Some(id) => self.sessions_of(*id),
            None => Vec::new(),
        };
        self.queue_typing(room, user, typer);
    }

    /// Puts a typing signal in its room until the next message or tick
    /// (one per user: a second one in the meantime says nothing new).
    fn queue_typing(&mut self, room: String, user: String, typer: Vec<SessionId>) {
        let Some(state) = self.rooms.get_mut(&room) else { return };
        if state.members.is_empty() || state.typing.iter().any(|(t, _)| t.user == user) {
            return;
        }
        state.typing_since.get_or_insert_with(Instant::now);
        state.typing.push((Arc::new(Typing { room, user, rendered: Default::default() }), typer));
    }

    /// The typing signals waiting in a room, taken out.
    pub(super) fn take_typing(&mut self, room: &str) -> PendingTyping {
        match self.rooms.get_mut(room) {
            Some(state) if !state.typing.is_empty() => {
                state.typing_since = None;
                std::mem::take(&mut state.typing)
            }
            _ => Vec::new(),
        }
    }

    /// At the tick: typing signals that waited `TYPING_HOLD` for a message
    /// go out by themselves.
    pub(super) fn flush_typing(&mut self, now: Instant) {
        let due: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.typing_since.is_some_and(|since| now.duration_since(since) >= TYPING_HOLD))
            .map(|r| r.name.clone())
            .collect();
        for room in due {
            let typing = self.take_typing(&room);
            self.deliver_with_typing(&room, typing, None);
        }
    }

    /// One pass over a room's members: the waiting typing signals (to event
    /// streams, never to the typer's own sessions), then `message` (to
    /// everyone), so both reach a client in one writer wake-up.
    pub(super) fn deliver_with_typing(&mut self, room: &str, typing: PendingTyping, message: Option<&Event>) {
        let Some(members) = self.rooms.get(room).map(|r| &r.members) else { return };
        let typing: Vec<(Event, Vec<SessionId>)> = typing.into_iter().map(|(t, typer)| (Event::Typing(t), typer)).collect();
        let mut slow = Vec::new();
        let mut delivered = 0;
        for id in members {
            let Some(session) = self.sessions.get(id) else { continue };
            let mut ok = true;
            if session.protocol != Protocol::Tcp {
                for (event, typer) in &typing {
                    if ok && !typer.contains(id) {
                        ok = session.deliver(event.clone()).is_ok();
                    }
                }
            }
            if let Some(message) = message.filter(|_| ok) {
                ok = session.deliver(message.clone()).is_ok();
                delivered += u64::from(ok);
            }
            if !ok {
                slow.push(*id);
            }
        }
        self.metrics.deliveries.fetch_add(delivered, Relaxed);
        if !slow.is_empty() {
            self.drop_slow(slow);
        }
    }

    /// Queues an event for these sessions' streams (never a TCP session).
    fn deliver_to_streams(&mut self, recipients: HashSet<SessionId>, event: &Event) {
        let mut slow = Vec::new();
        for id in recipients {
            if let Some(session) = self.sessions.get(&id) {
                if session.protocol != Protocol::Tcp && session.deliver(event.clone()).is_err() {
                    slow.push(id);
                }
            }
        }
        if !slow.is_empty() {
            self.drop_slow(slow);
        }
    }

    /// The members of a room on every instance with their status, sorted;
    /// `None` if the room does not exist.
    pub(super) fn member_statuses(&self, room: &str) -> Option<Vec<MemberStatus>> {
        let local = self.rooms.get(room)?;
        let here = local.members.iter().filter_map(|id| self.sessions.get(id));
        Some(self.statuses(here, Some(room)))
    }

    /// Every online user on every instance with their status, sorted.
    pub(super) fn online_statuses(&self) -> Vec<MemberStatus> {
        self.statuses(self.sessions.values(), None)
    }

    fn statuses<'a>(&'a self, here: impl Iterator<Item = &'a super::Session>, room: Option<&str>) -> Vec<MemberStatus> {
        let mut list: Vec<MemberStatus> = here
            .filter_map(|s| {
                Some(MemberStatus { nickname: s.nickname.clone()?, status: s.status, message: s.away_message.clone() })
            })
            .collect();
        list.extend(self.remote_members(room).map(|m| MemberStatus {
            nickname: m.nick.clone(),
            status: m.status,
            message: m.message.clone(),
        }));
        list.sort_by(|a, b| a.nickname.to_ascii_lowercase().cmp(&b.nickname.to_ascii_lowercase()));
        // An account logged in several times is one user.
        list.dedup_by(|a, b| a.nickname == b.nickname);
        list
    }
}
