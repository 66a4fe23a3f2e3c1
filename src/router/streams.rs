//! Event streams of HTTP sessions: attaching, detaching, and the replay of
//! what a resuming client (`Last-Event-ID`) missed.
//!
//! A session has at most one stream, and the newest one wins: attaching a
//! stream closes the one before it (its last words say why), whether that
//! one was live or still replaying. A resuming stream whose messages are all
//! in the room's ring buffer is attached at once with them. Otherwise it is
//! *not* attached yet: the router reads the missed messages from the store
//! a page at a time (a [`Replay`]), queues each page into the stream, and
//! attaches the stream to the room's live traffic only once the ring buffer
//! covers the rest. Because all of it happens on the router thread, no older
//! replay can overtake a newer stream and no message is sent twice or out
//! of order. A page is asked for only while the stream's backlog is under
//! `SENDQ_BYTES / 2`, so a slow reader paces its own replay and a long one
//! never sits in memory at once.

use std::sync::Arc;
use std::time::Instant;

use super::{Completion, RouterState};
use crate::error::ChatError;
use crate::event::{ChatMessage, CloseReason, Event, SessionId, Sink};
use crate::names::normalize_room;
use crate::store::StoreError;

/// Messages read from the store per step of a replay.
pub(super) const REPLAY_PAGE: usize = 1000;

/// A stream catching up from the store before it is attached.
pub(super) struct Replay {
    /// Tells this replay's pages from those of one it replaced.
    serial: u64,
    pub(super) sink: Arc<dyn Sink>,
    room: String,
    room_id: i64,
    /// The last message id the stream has been given.
    after: i64,
    /// A page is being read.
    reading: bool,
    /// The last page was not full: the ring buffer may now cover the rest.
    drained: bool,
}

fn same_sink(a: &Arc<dyn Sink>, b: &Arc<dyn Sink>) -> bool {
    Arc::as_ptr(a) as *const () == Arc::as_ptr(b) as *const ()
}

impl RouterState {
    /// Attaches a stream to a session, joining `room` if the session is
    /// elsewhere; with `after`, the stream starts with the room's messages
    /// after that id (replayed from the store if need be) instead of the
    /// recent history.
    pub(super) fn attach_stream(
        &mut self,
        id: SessionId,
        room: Option<&str>,
        sink: Arc<dyn Sink>,
        after: Option<i64>,
    ) -> Result<(), ChatError> {
        if self.sessions[&id].nickname.is_none() {
            return Err(ChatError::NoNickname);
        }
        let name = match room {
            Some(room) => normalize_room(room)?,
            None => match self.sessions[&id].room.clone() {
                Some(current) => current,
                None => {
                    // In no room: the stream carries what reaches the
                    // session itself (DMs, its room changing).
                    self.replace_stream(id, &sink);
                    self.sessions.get_mut(&id).expect("resolved").sink = Some(sink);
                    self.deliver_to(id, Event::RoomChanged { room: None, history: Vec::new() });
                    return Ok(());
                }
            },
        };
        if !self.can_see(&name, Some(id)) {
            return Err(ChatError::NoSuchRoom(name));
        }
        let target = self.rooms.get(&name).ok_or_else(|| ChatError::NoSuchRoom(name.clone()))?;
        let room_id = target.id;
        let from_ring = match after {
            None => Some(target.history.iter().cloned().collect()),
            Some(after) => target.history_after(after),
        };
        self.replace_stream(id, &sink);
        let session = self.sessions.get_mut(&id).expect("resolved");
        let joined = session.room.as_deref() == Some(name.as_str());
        match (from_ring, after) {
            (Some(history), _) => {
                session.sink = Some(sink);
                if joined {
                    self.deliver_to(id, Event::RoomChanged { room: Some(name), history });
                } else {
                    self.enter_room(id, &name, Some(history));
                }
            }
            (None, after) => {
                if !joined {
                    // The stream is not attached yet: the join shows it nothing.
                    self.enter_room(id, &name, Some(Vec::new()));
                }
                sink.replay(Event::RoomChanged { room: Some(name.clone()), history: Vec::new() });
                self.next_replay += 1;
                let replay = Replay {
                    serial: self.next_replay,
                    sink,
                    room: name,
                    room_id,
                    after: after.unwrap_or(0),
                    reading: false,
                    drained: false,
                };
                self.replays.insert(id, replay);
                self.replay_step(id);
            }
        }
        Ok(())
    }

    /// Takes the session's stream (live or replaying) away for `new`, closing
    /// it unless it is `new` itself.
    fn replace_stream(&mut self, id: SessionId, new: &Arc<dyn Sink>) {
        let old = self.sessions.get_mut(&id).and_then(|s| s.sink.take());
        let replaying = self.replays.remove(&id).map(|r| r.sink);
        for old in old.into_iter().chain(replaying) {
            if !same_sink(&old, new) {
                old.close(CloseReason::Replaced);
            }
        }
    }

    /// Detaches a stream that ended, if it is still the session's stream.
    pub(crate) fn detach_stream(&mut self, id: SessionId, sink: &Arc<dyn Sink>) {
        if self.replays.get(&id).is_some_and(|r| same_sink(&r.sink, sink)) {
            self.replays.remove(&id);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            if session.sink.as_ref().is_some_and(|s| same_sink(s, sink)) {
                session.sink = None;
                session.last_active = Instant::now();
            }
        }
    }

    /// Moves a replay on: the next page from the store, or, once the store
    /// has given everything, the rest from the ring buffer and the attach.
    /// Waits (the tick calls again) while the stream's backlog is large.
    fn replay_step(&mut self, id: SessionId) {
        let backlog_max = self.settings.replay_backlog;
        let Some(replay) = self.replays.get_mut(&id) else { return };
        if replay.reading || replay.sink.backlog() > backlog_max {
            return;
        }
        if replay.drained {
            match self.rooms.get(&replay.room).and_then(|r| r.history_after(replay.after)) {
                Some(rest) => {
                    let replay = self.replays.remove(&id).expect("present");
                    for message in rest {
                        replay.sink.replay(Event::Message(message));
                    }
                    return self.attach_replayed(id, replay);
                }
                // Messages came faster than the replay: read on.
                None => replay.drained = false,
            }
        }
        replay.reading = true;
        let (serial, room_id, after) = (replay.serial, replay.room_id, replay.after);
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let page = store.messages_after(room_id, after, REPLAY_PAGE);
            let _ = inbox.send(Completion::Replayed { session: id, serial, page });
        });
    }

    /// A page of a replay, read from the store.
    pub(super) fn replayed(&mut self, id: SessionId, serial: u64, page: Result<Vec<ChatMessage>, StoreError>) {
        let evicted = |state: &RouterState, room: &str| state.rooms.get(room).map_or(0, |r| r.evicted_up_to);
        let Some(replay) = self.replays.get(&id).filter(|r| r.serial == serial) else { return };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                log::warn!("cannot replay room {} for session {}: {e}", replay.room, id.0);
                let replay = self.replays.remove(&id).expect("present");
                replay.sink.close(CloseReason::ReplayFailed);
                return;
            }
        };
        let ring_start = evicted(self, &replay.room);
        let replay = self.replays.get_mut(&id).expect("present");
        replay.reading = false;
        if page.is_empty() {
            // The store has nothing newer though the ring buffer says it
            // has moved on: go on from where the ring buffer starts.
            replay.after = replay.after.max(ring_start);
        }
        replay.drained = page.len() < REPLAY_PAGE;
        for message in page {
            replay.after = message.id;
            replay.sink.replay(Event::Message(Arc::new(message)));
        }
        self.replay_step(id);
    }

    /// Every tick: replays that were waiting for their client to read.
    pub(super) fn step_replays(&mut self) {
        let waiting: Vec<SessionId> = self.replays.iter().filter(|(_, r)| !r.reading).map(|(id, _)| *id).collect();
        for id in waiting {
            self.replay_step(id);
        }
    }

    /// A replay has caught up: the stream takes the session's live traffic.
    fn attach_replayed(&mut self, id: SessionId, replay: Replay) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return replay.sink.close(CloseReason::Normal);
        };
        session.sink = Some(replay.sink);
        // The session moved (`/join`, `/leave`) while its stream replayed.
        if session.room.as_deref() != Some(replay.room.as_str()) {
            let room = session.room.clone();
            let history = room.as_ref().and_then(|r| self.rooms.get(r)).map(|r| r.history.iter().cloned().collect());
            self.deliver_to(id, Event::RoomChanged { room, history: history.unwrap_or_default() });
        }
    }

    /// Ends the replay of a session that ends.
    pub(super) fn end_replay(&mut self, id: SessionId, reason: CloseReason) {
        if let Some(replay) = self.replays.remove(&id) {
            replay.sink.close(reason);
        }
    }
}
