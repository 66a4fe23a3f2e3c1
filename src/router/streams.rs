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

use super::edits::in_room_order;
use super::{Completion, RouterState};
use crate::error::ChatError;
use crate::event::{ChatMessage, CloseReason, Event, MessageChange, SessionId, Sink};
use crate::names::normalize_room;
use crate::store::{ChangesQuery, StoreError};

/// Messages read from the store per step of a replay.
pub(super) const REPLAY_PAGE: usize = 1000;

/// One step of a replay, read from the store: the room's messages after
/// the last one given (deleted ones left out), and the edits and deletions
/// the client missed up to the last of them (see `edits.rs`).
pub struct ReplayPage {
    pub messages: Vec<ChatMessage>,
    pub changes: Vec<MessageChange>,
}

/// Reads one [`ReplayPage`] (on the storage thread). Messages first: a
/// change committed meanwhile is in the changes read after them, or in the
/// next page, or in the room's log; never lost between the two.
fn read_page(
    store: &mut dyn crate::store::Store,
    room_id: i64,
    after: i64,
    resume_id: i64,
    after_change: i64,
) -> Result<ReplayPage, StoreError> {
    let messages = store.messages_after(room_id, after, REPLAY_PAGE)?;
    let changes = if resume_id == 0 {
        Vec::new()
    } else {
        let through_id = messages.last().map_or(after, |m| m.id);
        // A full page may be followed by more messages: changes after its
        // last one come with the next page, in their place.
        let before_seq = (messages.len() >= REPLAY_PAGE).then(|| messages.last().map(|m| m.seq)).flatten();
        let query = ChangesQuery { resume_id, through_id, after_change, before_seq, limit: REPLAY_PAGE };
        store.changes_since(room_id, &query)?
    };
    Ok(ReplayPage { messages, changes })
}

/// A stream catching up from the store before it is attached.
pub(super) struct Replay {
    /// Tells this replay's pages from those of one it replaced.
    serial: u64,
    pub(super) sink: Arc<dyn Sink>,
    room: String,
    room_id: i64,
    /// The last message id the stream has been given.
    after: i64,
    /// The message the client resumed after: changes to messages up to it
    /// made from its position on are sent (see `edits.rs`),
    resume_id: i64,
    /// the last change read from the store and given,
    last_change: i64,
    /// and how many changes the room had delivered when the last page was
    /// asked for (those delivered since are sent from the room's log).
    released_mark: u64,
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
        // A resuming stream is sent what it missed (messages, edits and
        // deletions, in order) after the `connected` event.
        let from_ring = match after {
            None => Some((target.history.iter().filter(|m| !m.deleted).cloned().collect(), Vec::new())),
            Some(after) => self.resume_from_memory(&name, after).map(|missed| (Vec::new(), missed)),
        };
        self.replace_stream(id, &sink);
        let session = self.sessions.get_mut(&id).expect("resolved");
        let joined = session.room.as_deref() == Some(name.as_str());
        match (from_ring, after) {
            (Some((history, missed)), _) => {
                session.sink = Some(sink);
                if joined {
                    self.deliver_to(id, Event::RoomChanged { room: Some(name), history });
                } else {
                    self.enter_room(id, &name, Some(history));
                }
                for event in missed {
                    self.deliver_to(id, event);
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
                    resume_id: after.unwrap_or(0),
                    last_change: 0,
                    released_mark: 0,
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
            let room = self.rooms.get(&replay.room);
            match room.and_then(|r| r.history_after(replay.after)) {
                Some(rest) => {
                    let replay = self.replays.remove(&id).expect("present");
                    let (mark, read) = (replay.released_mark, replay.last_change);
                    // Changes delivered while the last page was being read
                    // (within a room, change ids follow commit order: one
                    // at or below the last read was in that read).
                    let changes = room
                        .map(|r| {
                            let missed = r.changes.iter().filter(|(n, c)| *n > mark && c.change_id > read);
                            missed.map(|(_, c)| c.clone()).collect()
                        })
                        .unwrap_or_default();
                    for event in in_room_order(rest, changes) {
                        replay.sink.replay(event);
                    }
                    return self.attach_replayed(id, replay);
                }
                // Messages came faster than the replay: read on.
                None => replay.drained = false,
            }
        }
        replay.reading = true;
        replay.released_mark = self.rooms.get(&replay.room).map_or(0, |r| r.changes_released);
        let (serial, room_id, after) = (replay.serial, replay.room_id, replay.after);
        let (resume_id, after_change) = (replay.resume_id, replay.last_change);
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let page = read_page(store, room_id, after, resume_id, after_change);
            let _ = inbox.send(Completion::Replayed { session: id, serial, page });
        });
    }

    /// A page of a replay, read from the store.
    pub(super) fn replayed(&mut self, id: SessionId, serial: u64, page: Result<ReplayPage, StoreError>) {
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
        let ReplayPage { mut messages, mut changes } = page;
        let changes_full = changes.len() >= REPLAY_PAGE;
        replay.drained = messages.len() < REPLAY_PAGE && !changes_full;
        if let (true, Some(last)) = (changes_full, changes.last()) {
            // More changes than a page: the messages after the last one
            // read come with the rest of them, on the next page.
            let until = last.after_seq;
            messages.retain(|m| m.seq <= until);
        } else if messages.is_empty() {
            // The store has nothing newer though the ring buffer says it
            // has moved on: go on from where the ring buffer starts.
            replay.after = replay.after.max(ring_start);
        }
        if let Some(last) = changes.last() {
            replay.last_change = replay.last_change.max(last.change_id);
        }
        // Changes to this page's messages are read after them (so none is
        // lost in between), but most are shown by the page already: an
        // edit whose text the message has, a deletion of a message the
        // client is not sent at all.
        let given = replay.after;
        changes.retain(|c| {
            if c.id <= given {
                return true;
            }
            match (messages.iter().find(|m| m.id == c.id), &c.content) {
                (None, None) => false,
                (Some(m), Some(text)) => !(m.content == *text && m.edited_at_ms == Some(c.at_ms)),
                _ => true,
            }
        });
        if let Some(last) = messages.last() {
            replay.after = last.id;
        }
        let messages = messages.into_iter().map(Arc::new).collect();
        let changes = changes.into_iter().map(Arc::new).collect();
        for event in in_room_order(messages, changes) {
            replay.sink.replay(event);
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
            let history =
                room.as_ref().and_then(|r| self.rooms.get(r)).map(|r| r.history.iter().filter(|m| !m.deleted).cloned().collect());
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
