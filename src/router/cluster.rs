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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Completion, RouterState};
use crate::bus::publisher::{ClaimOutcome, ClaimResult};
use crate::bus::subscriber::Incoming;
use crate::bus::{BusEvent, Member};
use crate::error::ChatError;
use crate::event::{ChatMessage, DirectMessage, Event, SessionId};
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
        if message.seq < room.next_seq {
            return;
        }
        room.waiting.insert(message.seq, message);
        let mut ready = Vec::new();
        while let Some(next) = room.waiting.remove(&room.next_seq) {
            room.next_seq += 1;
            ready.push(next);
        }
        room.gap_since = if room.waiting.is_empty() { None } else { room.gap_since.or(Some(Instant::now())) };
        for message in ready {
            self.publish(message);
        }
    }

    /// Reads the messages of gaps that stayed open too long from the store.
    pub(super) fn fill_gaps(&mut self, now: Instant) {
        let mut wanted = Vec::new();
        for room in self.rooms.values_mut() {
            let Some(since) = room.gap_since else { continue };
            if room.fetching || now.duration_since(since) < GAP_WAIT {
                continue;
            }
            let first_waiting = *room.waiting.keys().next().expect("a gap has a waiting message");
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
        let rooms: Vec<(String, i64, i64)> = self.rooms.values().map(|r| (r.name.clone(), r.id, r.next_seq)).collect();
        for (name, id, next) in rooms {
            self.fetch_from_seq(name, id, next, CATCH_UP_BATCH);
        }
        self.reload_rooms();
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
            self.rooms.insert(name.clone(), super::Room::new(record.id, record.name, record.created_at_ms));
            // It may be private: hidden until the store says.
            self.hide_until_known(&name);
        }
    }

    /// Everything from the subscriber thread.
    pub(super) fn bus_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Up => {
                log::info!("on the bus: announcing ourselves and catching up from the store");
                self.broadcast(BusEvent::Hello { from: self.instance.clone() });
                self.broadcast_snapshot();
                self.catch_up();
            }
            Incoming::Down => log::warn!("off the bus: serving local clients only until Redis is back"),
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
                remote.members.insert(name_key(&member.nick), member);
            }
            BusEvent::Gone { nick, .. } => {
                remote.members.remove(&name_key(&nick));
            }
            BusEvent::Snapshot { members, .. } => {
                remote.members = members.into_iter().map(|m| (name_key(&m.nick), m)).collect();
            }
            BusEvent::Hello { .. } => self.broadcast_snapshot(),
            BusEvent::Heartbeat { .. } => {}
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
        self.remote.retain(|instance, remote| {
            let alive = now.duration_since(remote.last_heard) < PRESENCE_TIMEOUT;
            if !alive {
                log::warn!("instance {instance} is silent; its {} users are gone", remote.members.len());
            }
            alive
        });
    }

    pub(super) fn broadcast(&self, event: BusEvent) {
        if let Some(bus) = &self.bus {
            bus.broadcast(&event);
        }
    }

    fn broadcast_snapshot(&self) {
        let members = self
            .sessions
            .values()
            .filter_map(|s| Some(Member { nick: s.nickname.clone()?, room: s.room.clone() }))
            .collect();
        self.broadcast(BusEvent::Snapshot { from: self.instance.clone(), members });
    }

    /// Tells the other instances where a local user is now.
    pub(super) fn announce_presence(&self, id: SessionId) {
        if let Some(session) = self.sessions.get(&id) {
            if let Some(nick) = &session.nickname {
                let member = Member { nick: nick.clone(), room: session.room.clone() };
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
