//! The router's side of multi-instance operation: the view of other
//! instances' users, bus events in and out, and the per-room order gate.
//!
//! **One order per room.** The store gives every message a per-room
//! sequence number without gaps (`seq`), assigned under a per-room lock at
//! commit. Every instance delivers a room's messages strictly in `seq`
//! order: a message that arrives early (from the bus or a local commit)
//! waits in the room's gate until its predecessors arrive; a gap that does
//! not close within [`GAP_WAIT`] is filled from the store. So every member
//! on every instance sees the same order, the ring buffers (history on
//! join) are identical, and after a Redis outage a catch-up read from the
//! store delivers exactly what was missed. Without Redis, local commits
//! arrive in `seq` order already and pass straight through.
//!
//! **Only the rooms it serves.** An instance listens to a room's bus
//! channel only while the room has a local member. The first local entry
//! (a `/join`, a stream attaching) waits while the room warms up: the
//! subscriber confirms the subscription, then the room's recent messages
//! are read from the store into the ring buffer; whatever is committed
//! after that read arrives on the channel, and the `seq` gate drops what
//! both delivered. The last local member leaving unsubscribes. A room just
//! created here is empty, so it is listened to at once and read back only
//! from its first `seq` once the subscription is confirmed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Completion, RouterMsg, RouterState};
use super::state::RoomSub;
use crate::command::Command;
use crate::names::normalize_room;
use crate::bus::publisher::{ClaimOutcome, ClaimResult};
use crate::bus::subscriber::Incoming;
use crate::bus::{BusEvent, Member};
use crate::error::ChatError;
use crate::event::{ChatMessage, DirectMessage, Event, Notice, SessionId};
use crate::names::name_key;
use crate::store::RoomRecord;

/// How long a gap in a room's sequence may stay open before the missing
/// messages are read from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(200);
/// How often this instance says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// An instance not heard from for this long is gone, with its users.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages read from the store per catch-up step.
const CATCH_UP_BATCH: usize = 1000;
/// How long a room may wait for its subscription before it is read back
/// from the store anyway (Redis is slow or away: serve from the store).
const WARM_WAIT: Duration = Duration::from_secs(2);

/// What this instance knows of another one.
pub struct RemoteInstance {
    pub last_heard: Instant,
    /// Its users by lower-case nickname.
    pub members: HashMap<String, Member>,
}

impl RouterState {
    /// Delivers committed messages of one room in sequence order (see the
    /// module doc). Duplicates are ignored.
    pub(super) fn admit(&mut self, message: Arc<ChatMessage>) {
        let Some(room) = self.rooms.get_mut(&message.room) else {
            log::warn!("message {} for unknown room {}", message.id, message.room);
            return;
        };
        if message.seq < room.next_seq || room.sub == RoomSub::Cold {
            return;
        }
        room.waiting.insert(message.seq, message);
        let mut ready = Vec::new();
        while let Some(next) = room.waiting.remove(&room.next_seq) {
            room.next_seq += 1;
            ready.push(next);
        }
        let name = room.name.clone();
        self.update_gap(&name);
        for message in ready {
            let seq = message.seq;
            self.release_notices(&name, seq);
            self.publish(message);
        }
        if let Some(next) = self.rooms.get(&name).map(|r| r.next_seq) {
            self.release_notices(&name, next);
        }
    }

    /// Whether a room waits for messages (early ones, or ones a held notice
    /// follows), and since when.
    pub(super) fn update_gap(&mut self, room: &str) {
        let Some(room) = self.rooms.get_mut(room) else { return };
        let behind = !room.waiting.is_empty() || room.held_notices.iter().any(|(after, _)| *after > room.next_seq);
        room.gap_since = if behind { room.gap_since.or(Some(Instant::now())) } else { None };
    }

    /// Delivers the held notices that come before message `seq`.
    pub(super) fn release_notices(&mut self, room: &str, seq: i64) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        if state.held_notices.is_empty() {
            return;
        }
        // In arrival order: a notice never overtakes one held before it.
        let mut ready = Vec::new();
        while state.held_notices.front().is_some_and(|(after, _)| *after <= seq) {
            ready.extend(state.held_notices.pop_front().map(|(_, event)| event));
        }
        for event in ready {
            match event {
                Event::Changed(change) => self.release_change(change),
                event => self.deliver_to_room(room, &event, None),
            }
        }
    }

    /// A `[system]` line from another instance: delivered once this
    /// instance has delivered the room's messages before `after_seq`.
    fn remote_notice(&mut self, room: String, after_seq: i64, text: String, at_ms: i64) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return log::debug!("notice for room {room}, unknown here");
        };
        if state.members.is_empty() {
            return;
        }
        let notice = Arc::new(Notice { room: Some(room.clone()), text, at_ms, rendered: Default::default() });
        if after_seq <= state.next_seq && state.held_notices.is_empty() {
            return self.deliver_to_room(&room, &Event::Notice(notice), None);
        }
        state.held_notices.push_back((after_seq, Event::Notice(notice)));
        let next = state.next_seq;
        self.release_notices(&room, next);
        self.update_gap(&room);
    }

    /// Tells the other instances about a `[system]` line in a room.
    pub(super) fn publish_notice(&self, room: &str, after_seq: i64, text: &str, at_ms: i64) {
        if let Some(bus) = &self.bus {
            let event = BusEvent::Notice {
                from: self.instance.clone(),
                room: room.to_string(),
                after_seq,
                text: text.to_string(),
                at_ms,
            };
            bus.to_room(room, &event);
        }
    }

    /// Reads the messages of gaps that stayed open too long from the store.
    pub(super) fn fill_gaps(&mut self, now: Instant) {
        let mut wanted = Vec::new();
        for room in self.rooms.values_mut() {
            let Some(since) = room.gap_since else { continue };
            if room.sub != RoomSub::Warm || room.fetching || now.duration_since(since) < GAP_WAIT {
                continue;
            }
            // Up to the first early message, or else the furthest held notice.
            let first_waiting = room
                .waiting
                .keys()
                .next()
                .copied()
                .or_else(|| room.held_notices.iter().map(|(after, _)| *after).max())
                .unwrap_or(room.next_seq);
            if first_waiting <= room.next_seq {
                room.gap_since = None;
                continue;
            }
            room.fetching = true;
            // A long gap (a room learned late) is read in steps, not at once.
            let missing = ((first_waiting - room.next_seq) as usize).min(CATCH_UP_BATCH);
            wanted.push((room.name.clone(), room.id, room.next_seq, missing));
        }
        for (name, room_id, from_seq, count) in wanted {
            log::debug!("reading {count} messages of {name} from seq {from_seq} from the store");
            self.fetch_from_seq(name, room_id, from_seq, count);
        }
    }

    fn fetch_from_seq(&mut self, room: String, room_id: i64, from_seq: i64, limit: usize) {
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let messages = store.messages_from_seq(room_id, from_seq, limit).unwrap_or_else(|e| {
                log::warn!("cannot read missed messages of {room}: {e}");
                Vec::new()
            });
            let _ = inbox.send(Completion::Fetched { room, messages, limit });
        });
    }

    /// Messages read back from the store (gap fill or catch-up).
    pub(super) fn fetched(&mut self, room: String, messages: Vec<ChatMessage>, limit: usize) {
        let complete = messages.len() < limit;
        for message in messages {
            self.admit(Arc::new(message));
        }
        let Some(state) = self.rooms.get_mut(&room) else { return };
        state.fetching = false;
        if state.sub != RoomSub::Warm {
            return;
        }
        if !complete {
            let (id, next) = (state.id, state.next_seq);
            state.fetching = true;
            self.fetch_from_seq(room, id, next, limit);
        } else if state.gap_since.is_some() {
            // Still a gap (the store was unavailable): try again later.
            state.gap_since = Some(Instant::now());
        }
    }

    /// Catch-up after (re)subscribing: everything after what each room has seen.
    fn catch_up(&mut self) {
        let rooms: Vec<(String, i64, i64, RoomSub)> =
            self.rooms.values().map(|r| (r.name.clone(), r.id, r.next_seq, r.sub)).collect();
        for (name, id, next, sub) in rooms {
            match sub {
                RoomSub::Warm => self.fetch_from_seq(name, id, next, CATCH_UP_BATCH),
                RoomSub::Warming { loading: false, .. } => self.load_room(&name),
                _ => {}
            }
        }
        self.reload_rooms();
    }

    /// The room a request would enter, if this instance does not listen to
    /// it yet (so the request must wait until it does).
    pub(super) fn room_to_warm(&self, msg: &RouterMsg) -> Option<String> {
        self.bus.as_ref()?;
        let name = match msg {
            RouterMsg::Command { command: Command::Join(name), .. } => normalize_room(name).ok()?,
            RouterMsg::AttachStream { room: Some(room), .. } => normalize_room(room).ok()?,
            _ => return None,
        };
        (self.rooms.get(&name)?.sub != RoomSub::Warm).then_some(name)
    }

    /// Starts listening to a room (see the module doc).
    pub(super) fn warm_up(&mut self, room: &str) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        if state.sub != RoomSub::Cold {
            return;
        }
        state.sub = RoomSub::Warming { since: Instant::now(), loading: false };
        if let Some(bus) = &self.bus {
            bus.subscribe(room);
        }
        if !self.bus_up {
            // Nothing to wait for: serve from the store until Redis is back.
            self.load_room(room);
        }
    }

    /// A room created here: listened to from now on.
    pub(super) fn listen_to_new_room(&mut self, room: &str) {
        if let Some(bus) = &self.bus {
            bus.subscribe(room);
        }
    }

    /// Reads a warming room's recent messages from the store.
    fn load_room(&mut self, room: &str) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        let RoomSub::Warming { since, .. } = state.sub else { return };
        state.sub = RoomSub::Warming { since, loading: true };
        let (room, room_id, limit) = (room.to_string(), state.id, self.settings.history_size);
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let messages = store.messages_before(room_id, None, limit);
            let _ = inbox.send(Completion::Warmed { room, messages });
        });
    }

    /// Rooms whose subscription is overdue are read from the store anyway.
    pub(super) fn warm_overdue(&mut self, now: Instant) {
        let overdue: Vec<String> = self
            .rooms
            .values()
            .filter(|r| matches!(r.sub, RoomSub::Warming { since, loading: false } if now.duration_since(since) >= WARM_WAIT))
            .map(|r| r.name.clone())
            .collect();
        for room in overdue {
            log::warn!("no subscription to room {room} yet: reading it from the store");
            self.load_room(&room);
        }
    }

    /// The subscriber listens to a room now.
    fn subscribed(&mut self, room: String) {
        let Some(state) = self.rooms.get(&room) else { return };
        match state.sub {
            RoomSub::Warming { loading: false, .. } => self.load_room(&room),
            // Created here: read back whatever beat the subscription.
            RoomSub::Warm => {
                let (id, next) = (state.id, state.next_seq);
                self.fetch_from_seq(room, id, next, CATCH_UP_BATCH);
            }
            _ => {}
        }
    }

    /// A warming room's recent messages: the ring buffer is now up to date,
    /// and the requests waiting for the room go on.
    pub(super) fn warmed(&mut self, room: String, messages: Result<Vec<ChatMessage>, crate::store::StoreError>) {
        let history_size = self.settings.history_size;
        let Some(state) = self.rooms.get_mut(&room) else { return };
        if !matches!(state.sub, RoomSub::Warming { .. }) {
            return;
        }
        state.sub = RoomSub::Warm;
        let stale = match messages {
            Ok(messages) => {
                if messages.len() >= history_size {
                    state.evicted_up_to = state.evicted_up_to.max(messages[0].id - 1);
                }
                state.history.clear();
                for message in messages {
                    state.next_seq = state.next_seq.max(message.seq + 1);
                    state.remember(Arc::new(message), history_size);
                }
                state.reset_changes();
                false
            }
            Err(e) => {
                log::warn!("cannot read room {room} back from the store ({e}); catching up from its last known message");
                true
            }
        };
        let next = state.next_seq;
        let id = state.id;
        let early = std::mem::take(&mut state.waiting);
        state.gap_since = None;
        for message in early.into_values().filter(|m| m.seq >= next) {
            self.admit(message);
        }
        // Edits and deletions heard while warming, now that the ring buffer
        // holds what they follow (one the read already shows changes nothing).
        if let Some(next) = self.rooms.get(&room).map(|r| r.next_seq) {
            self.release_notices(&room, next);
        }
        if stale {
            self.fetch_from_seq(room.clone(), id, next, CATCH_UP_BATCH);
        }
        let parked = self.parked.remove(&room).unwrap_or_default();
        self.parked_sessions.retain(|_, waiting_for| *waiting_for != room);
        for msg in parked {
            self.handle(msg);
        }
        self.cool(&room);
    }

    /// Stops listening to a room with no local member left.
    pub(super) fn cool(&mut self, room: &str) {
        let Some(bus) = &self.bus else { return };
        let Some(state) = self.rooms.get_mut(room) else { return };
        if state.sub != RoomSub::Warm || !state.members.is_empty() || self.parked.contains_key(room) {
            return;
        }
        state.sub = RoomSub::Cold;
        state.waiting.clear();
        state.held_notices.clear();
        state.gap_since = None;
        bus.unsubscribe(room);
    }

    /// Reads every room from the store, to learn of rooms created elsewhere.
    pub(super) fn reload_rooms(&mut self) {
        let inbox = self.inbox.clone();
        self.store.run(move |store| match store.rooms() {
            Ok(rooms) => {
                let _ = inbox.send(Completion::RoomsLoaded(rooms));
            }
            Err(e) => log::warn!("cannot reload rooms: {e}"),
        });
    }

    /// Rooms read from the store; adds those created elsewhere.
    pub(super) fn rooms_loaded(&mut self, rooms: Vec<RoomRecord>) {
        for record in rooms {
            self.add_room(record);
        }
    }

    /// Adds a room this instance did not know yet.
    pub(super) fn add_room(&mut self, record: RoomRecord) {
        if !self.rooms.contains_key(&record.name) {
            log::info!("room {} (created elsewhere) is now known here", record.name);
            let name = record.name.clone();
            let mut room = super::Room::new(record.id, record.name, record.created_at_ms);
            if self.bus.is_some() {
                room.sub = RoomSub::Cold;
            }
            self.rooms.insert(name.clone(), room);
            // It may be private: hidden until the store says.
            self.hide_until_known(&name);
        }
    }

    /// Everything from the subscriber thread.
    pub(super) fn bus_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Up => {
                log::info!("on the bus: announcing ourselves and catching up from the store");
                self.bus_up = true;
                self.broadcast(BusEvent::Hello { from: self.instance.clone() });
                self.broadcast(self.snapshot());
                self.catch_up();
            }
            Incoming::Down => {
                self.bus_up = false;
                log::warn!("off the bus: serving local clients only until Redis is back");
            }
            Incoming::Subscribed(room) => self.subscribed(room),
            Incoming::Event(event) => self.bus_event(event),
        }
    }

    fn bus_event(&mut self, event: BusEvent) {
        let from = event.sender().to_string();
        let remote = self
            .remote
            .entry(from.clone())
            .or_insert_with(|| RemoteInstance { last_heard: Instant::now(), members: HashMap::new() });
        remote.last_heard = Instant::now();
        match event {
            BusEvent::Message { message, .. } => {
                if !self.rooms.contains_key(&message.room) {
                    self.add_room(RoomRecord { id: message.room_id, name: message.room.clone(), created_at_ms: message.created_at_ms });
                }
                self.admit(Arc::new(message));
            }
            BusEvent::RoomCreated { id, name, created_at_ms, .. } => {
                if self.private.contains_key(&name) {
                    // News of a private room: who may enter it changed.
                    self.reload_private_rooms();
                }
                self.add_room(RoomRecord { id, name, created_at_ms })
            }
            BusEvent::Presence { member, .. } => {
                let before = self.known_status(&member.nick);
                // Only a change of status on that instance (not a room move,
                // nor a login there, which took the account's status) is
                // adopted by the account's sessions here.
                let key = name_key(&member.nick);
                let changed = self.remote[&from].members.get(&key).is_some_and(|old| (old.status, &old.message) != (member.status, &member.message));
                if changed {
                    self.adopt_status(&member.nick, member.status, &member.message);
                }
                let (nick, room) = (member.nick.clone(), member.room.clone());
                if let Some(remote) = self.remote.get_mut(&from) {
                    remote.members.insert(name_key(&member.nick), member);
                }
                self.presence_changed(vec![(nick, before, room)]);
            }
            BusEvent::Gone { nick, .. } => {
                let before = self.known_status(&nick);
                let gone = self.remote.get_mut(&from).and_then(|r| r.members.remove(&name_key(&nick)));
                self.presence_changed(vec![(nick, before, gone.and_then(|m| m.room))]);
            }
            BusEvent::Snapshot { members, .. } => {
                let fresh: HashMap<String, Member> = members.into_iter().map(|m| (name_key(&m.nick), m)).collect();
                // Who may have changed: everyone in either list (a snapshot
                // comes only when an instance joins the bus).
                let mut changes: Vec<(String, Option<String>)> =
                    remote.members.values().chain(fresh.values()).map(|m| (m.nick.clone(), m.room.clone())).collect();
                changes.sort();
                changes.dedup_by(|a, b| name_key(&a.0) == name_key(&b.0));
                let before: Vec<_> = changes.into_iter().map(|(nick, room)| (self.known_status(&nick), nick, room)).collect();
                if let Some(remote) = self.remote.get_mut(&from) {
                    remote.members = fresh;
                }
                self.presence_changed(before.into_iter().map(|(known, nick, room)| (nick, known, room)).collect());
            }
            BusEvent::Typing { room, user, .. } => self.remote_typing(room, user),
            BusEvent::Hello { .. } => {
                // On the service channel, not the newcomer's own: in order
                // with this instance's presence changes, so a snapshot taken
                // before a change can never land after it (on a Redis
                // Cluster the two channels live on different nodes) and
                // overwrite it. Only when an instance joins, never per change.
                self.broadcast(self.snapshot());
            }
            BusEvent::Heartbeat { .. } => {}
            BusEvent::Notice { room, after_seq, text, at_ms, .. } => self.remote_notice(room, after_seq, text, at_ms),
            BusEvent::Changed { change, .. } => self.admit_change(Arc::new(change)),
            BusEvent::Dm { sender, recipient, text, at_ms, .. } => {
                let target = self.nicknames.get(&name_key(&recipient)).copied();
                let Some(target) = target.filter(|t| self.sessions.get(t).is_some_and(|s| s.nickname.is_some())) else {
                    return log::debug!("DM for {recipient}, who is not here");
                };
                let to = self.sessions[&target].nick().to_string();
                let dm = Arc::new(DirectMessage { from: sender, to, text, at_ms });
                for session in self.sessions_of(target) {
                    self.deliver_to(session, Event::Dm { dm: dm.clone(), outgoing: false });
                }
            }
        }
    }

    /// Once a second with a bus: heartbeat, and forget silent instances.
    pub(super) fn bus_tick(&mut self, now: Instant) {
        if self.bus.is_none() {
            return;
        }
        if now.duration_since(self.last_heartbeat) >= HEARTBEAT_EVERY {
            self.last_heartbeat = now;
            self.broadcast(BusEvent::Heartbeat { from: self.instance.clone() });
        }
        let silent: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, remote)| now.duration_since(remote.last_heard) >= PRESENCE_TIMEOUT)
            .map(|(instance, _)| instance.clone())
            .collect();
        for instance in silent {
            let before: Vec<_> = self.remote[&instance]
                .members
                .values()
                .map(|m| (m.nick.clone(), self.known_status(&m.nick), m.room.clone()))
                .collect();
            if let Some(remote) = self.remote.remove(&instance) {
                log::warn!("instance {instance} is silent; its {} users are gone", remote.members.len());
            }
            self.presence_changed(before);
        }
    }

    pub(super) fn broadcast(&self, event: BusEvent) {
        if let Some(bus) = &self.bus {
            bus.broadcast(&event);
        }
    }

    /// Everyone on this instance, for an instance that has just joined.
    fn snapshot(&self) -> BusEvent {
        let members = self
            .sessions
            .values()
            .filter_map(|s| {
                Some(Member { nick: s.nickname.clone()?, room: s.room.clone(), status: s.status, message: s.away_message.clone() })
            })
            .collect();
        BusEvent::Snapshot { from: self.instance.clone(), members }
    }

    /// Tells the other instances where a local user is now.
    pub(super) fn announce_presence(&self, id: SessionId) {
        if let Some(session) = self.sessions.get(&id) {
            if let Some(nick) = &session.nickname {
                let member = Member {
                    nick: nick.clone(),
                    room: session.room.clone(),
                    status: session.status,
                    message: session.away_message.clone(),
                };
                self.broadcast(BusEvent::Presence { from: self.instance.clone(), member });
            }
        }
    }

    /// Tells the other instances a local user is gone and frees the name.
    pub(super) fn announce_gone(&self, nick: &str) {
        self.broadcast(BusEvent::Gone { from: self.instance.clone(), nick: nick.to_string() });
        if let Some(bus) = &self.bus {
            bus.release(nick);
        }
    }

    pub(super) fn publish_committed(&self, message: &ChatMessage) {
        if let Some(bus) = &self.bus {
            // Serialized straight from the shared message, without a copy.
            bus.broadcast_message(&self.instance, message);
        }
    }

    /// The instance a user of another instance is on.
    pub(super) fn remote_instance_of(&self, nick: &str) -> Option<(String, String)> {
        let key = name_key(nick);
        self.remote.iter().find_map(|(instance, remote)| {
            remote.members.get(&key).map(|m| (instance.clone(), m.nick.clone()))
        })
    }

    /// Sends a DM to a user on another instance.
    pub(super) fn remote_dm(&self, instance: &str, sender: &str, recipient: &str, text: &str, at_ms: i64) {
        if let Some(bus) = &self.bus {
            let event = BusEvent::Dm {
                from: self.instance.clone(),
                sender: sender.to_string(),
                recipient: recipient.to_string(),
                text: text.to_string(),
                at_ms,
            };
            bus.send_to(instance, &event);
        }
    }

    /// Users of other instances in a room (or, with `None`, all of them).
    pub fn remote_members<'a>(&'a self, room: Option<&'a str>) -> impl Iterator<Item = &'a Member> + 'a {
        self.remote
            .values()
            .flat_map(|r| r.members.values())
            .filter(move |m| room.is_none() || m.room.as_deref() == room)
    }

    /// Starts the service-wide nickname claim, when there is a bus.
    /// Returns false when there is none and the caller can go on at once.
    pub(super) fn claim_nickname(&mut self, id: SessionId, nickname: &str) -> bool {
        match &self.bus {
            Some(bus) => {
                bus.claim(id, nickname);
                true
            }
            None => false,
        }
    }

    /// The answer to a nickname claim.
    pub(super) fn claimed(&mut self, result: ClaimResult) {
        let Some(pending) = self.pending_claims.remove(&result.session) else { return };
        match result.outcome {
            ClaimOutcome::Granted => {}
            ClaimOutcome::Unavailable => {
                log::warn!("Redis unavailable: nickname {} checked on this instance only", result.nick);
            }
            ClaimOutcome::Taken => {
                self.unreserve_nickname(result.session, &result.nick);
                return self.refuse_nickname(result.session, ChatError::NicknameTaken(result.nick), pending.reply);
            }
        }
        self.record_user(result.session, result.nick, pending.rename, pending.reply);
    }
}
