//! Edits and deletions of room messages (`/edit`, `/delete`,
//! `PATCH`/`DELETE /api/messages/:id`).
//!
//! A change goes the way a message goes: the router checks the request,
//! the storage thread commits it (checking, in the same transaction, whose
//! message it is and who owns the room, and recording the room position it
//! happened after: the room's last `seq`), and only then is it delivered.
//! It belongs in the room's order right after that position, so it passes
//! the same gate as `[system]` lines from other instances (`cluster.rs`): a
//! change that follows a message this instance has not delivered yet waits
//! for it. On delivery the ring buffer's copy of the message is replaced
//! (history on join shows the current text, and never a deleted message),
//! the change is logged for streams that resume, and every member is sent
//! an `edit` or `delete` event; other instances get it on the room's
//! channel.
//!
//! **Resume.** A stream resuming after message N is sent, in the room's
//! order with the messages it missed, the changes made at room positions
//! from N's on to messages up to N (later messages are sent as they are
//! now, and deleted ones not at all). They come from the room's change log
//! when it reaches back that far, else from the store with the replay's
//! pages (`streams.rs`). A change at N's own position may have been seen
//! already: a client applies edits and deletions by message id, so seeing
//! one twice changes nothing.

use std::sync::Arc;

use super::state::RoomSub;
use super::{Completion, Reply, Responder, RouterState, StoreDone};
use crate::error::ChatError;
use crate::event::{now_ms, ChatMessage, Event, MessageChange, SessionId};
use crate::names::clean_message;
use crate::store::{ChangeOutcome, ChangeRequest, ChangeTarget, StoreError};

/// What an edit or delete request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The message with this id (`PATCH`/`DELETE /api/messages/:id`).
    Id(i64),
    /// The session's last message in its current room (`/edit`, `/delete`):
    /// answered with the text a TCP user sees.
    LastOwn,
}

impl RouterState {
    /// Checks an edit (`content`) or delete (`None`) and hands it to the
    /// storage thread; answered in [`Self::message_changed`].
    pub(super) fn change_message(&mut self, id: SessionId, target: Target, content: Option<String>, reply: Responder) {
        let outcome = self.accept_change(id, target, content);
        match outcome {
            Ok(request) => {
                let inbox = self.inbox.clone();
                let delete = request.content.is_none();
                self.store.run(move |store| {
                    let result = store.change_message(&request);
                    let done = StoreDone::MessageChanged { session: id, target, delete, result, reply };
                    let _ = inbox.send(Completion::StoreDone(done));
                });
            }
            Err(e) => self.respond_to(Some(id), reply, Err(e)),
        }
    }

    fn accept_change(&mut self, id: SessionId, target: Target, content: Option<String>) -> Result<ChangeRequest, ChatError> {
        let session = &self.sessions[&id];
        let by = session.nickname.clone().ok_or(ChatError::NoNickname)?;
        let target = match target {
            Target::Id(message) => ChangeTarget::Id(message),
            Target::LastOwn => {
                let room = session.room.as_ref().ok_or(ChatError::NotInRoom)?;
                ChangeTarget::LastOwn { room_id: self.rooms[room].id }
            }
        };
        let content = content.map(|text| clean_message(&text, self.settings.max_message_chars)).transpose()?;
        if self.pending_sends.len() >= self.settings.store_queue_max {
            return Err(ChatError::Busy);
        }
        self.take_rate_token(id)?;
        let user_id = self.sessions[&id].user_id;
        Ok(ChangeRequest { target, user_id, by, content, at_ms: now_ms() })
    }

    /// The store's answer to an edit or delete: deliver what was committed
    /// (here and, through the bus, everywhere), answer the one who asked.
    pub(super) fn message_changed(
        &mut self,
        id: SessionId,
        target: Target,
        delete: bool,
        result: Result<ChangeOutcome, StoreError>,
        reply: Responder,
    ) {
        let verb = if delete { "delete" } else { "edit" };
        let outcome = match result {
            Ok(ChangeOutcome::Done(change)) => {
                let change = Arc::new(change);
                let answer = match target {
                    // The TCP user sees the change itself, as every member does.
                    Target::LastOwn => Reply::Shown(change.line()),
                    Target::Id(_) => Reply::Changed {
                        id: change.id,
                        room: change.room.clone(),
                        edited_at_ms: change.content.as_ref().map(|_| change.at_ms),
                    },
                };
                if let Some(bus) = &self.bus {
                    // Serialized without a copy of the text.
                    bus.to_room(&change.room, &ChangeEvent { kind: "changed", from: &self.instance, change: &change });
                }
                self.admit_change(change);
                Ok(answer)
            }
            Ok(ChangeOutcome::NotFound) => Err(match target {
                Target::LastOwn => ChatError::NoMessageToChange(verb),
                Target::Id(message) => ChatError::NoSuchMessage(message),
            }),
            Ok(ChangeOutcome::NotYours) => Err(ChatError::NotYourMessage(verb)),
            Err(e) => {
                log::warn!("could not {verb} a message: {e}");
                Err(ChatError::ChangeNotStored)
            }
        };
        self.respond_to(Some(id), reply, outcome);
    }

    /// A committed change, from here or another instance: delivered once
    /// the room's messages up to its position have been (see `cluster.rs`).
    pub(super) fn admit_change(&mut self, change: Arc<MessageChange>) {
        let Some(room) = self.rooms.get_mut(&change.room) else {
            return log::debug!("change for room {}, unknown here", change.room);
        };
        if room.sub == RoomSub::Cold {
            // Nobody here; the ring buffer is read again on the next join.
            return;
        }
        let before = change.after_seq + 1;
        if before <= room.next_seq && room.held_notices.is_empty() {
            return self.release_change(change);
        }
        let name = room.name.clone();
        room.held_notices.push_back((before, Event::Changed(change)));
        let next = room.next_seq;
        self.release_notices(&name, next);
        self.update_gap(&name);
    }

    /// Delivers a change in its place: ring buffer, change log, members.
    pub(super) fn release_change(&mut self, change: Arc<MessageChange>) {
        let Some(room) = self.rooms.get_mut(&change.room) else { return };
        room.apply_change(&change, self.settings.change_log_size);
        let name = room.name.clone();
        self.deliver_to_room(&name, &Event::Changed(change), None);
    }

    /// What a stream resuming after message `after` missed, from the ring
    /// buffer and the change log, in the room's order; `None` if they do
    /// not reach back that far (the store must be read).
    pub(super) fn resume_from_memory(&self, room: &str, after: i64) -> Option<Vec<Event>> {
        let room = self.rooms.get(room)?;
        let messages = room.history_after(after)?;
        let changes: Vec<Arc<MessageChange>> = if after == 0 {
            Vec::new()
        } else {
            let from = room.history.iter().find(|m| m.id == after)?.seq;
            if from < room.changes_from {
                return None;
            }
            room.changes.iter().map(|(_, c)| c).filter(|c| c.after_seq >= from && c.id <= after).cloned().collect()
        };
        Some(in_room_order(messages, changes))
    }
}

/// Messages (deleted ones left out) and changes, in the room's order: a
/// change after the message of its position, before the next one.
pub(super) fn in_room_order(messages: Vec<Arc<ChatMessage>>, changes: Vec<Arc<MessageChange>>) -> Vec<Event> {
    let mut events = Vec::with_capacity(messages.len() + changes.len());
    let mut changes = changes.into_iter().peekable();
    for message in messages {
        while let Some(change) = changes.next_if(|c| c.after_seq < message.seq) {
            events.push(Event::Changed(change));
        }
        if !message.deleted {
            events.push(Event::Message(message));
        }
    }
    events.extend(changes.map(Event::Changed));
    events
}

/// [`crate::bus::BusEvent::Changed`] as it goes out, borrowing the change.
#[derive(serde::Serialize)]
struct ChangeEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    change: &'a MessageChange,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusEvent;

    fn message(id: i64, seq: i64, deleted: bool) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id,
            seq,
            room_id: 1,
            room: "r".into(),
            user_id: 1,
            nickname: "a".into(),
            content: if deleted { String::new() } else { format!("m{id}") },
            created_at_ms: 0,
            edited_at_ms: None,
            deleted,
            action: false,
            rendered: Default::default(),
        })
    }

    fn change(id: i64, after_seq: i64) -> Arc<MessageChange> {
        Arc::new(MessageChange {
            change_id: 0,
            id,
            room_id: 1,
            room: "r".into(),
            after_seq,
            nickname: "a".into(),
            by: "a".into(),
            content: None,
            at_ms: 0,
            rendered: Default::default(),
        })
    }

    #[test]
    fn changes_go_after_the_message_of_their_position() {
        let events = in_room_order(
            vec![message(11, 11, false), message(12, 12, true), message(13, 13, false)],
            vec![change(1, 10), change(2, 11), change(3, 13)],
        );
        let order: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Message(m) => format!("m{}", m.id),
                Event::Changed(c) => format!("c{}", c.id),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(order, ["c1", "m11", "c2", "m13", "c3"]);
    }

    #[test]
    fn a_changed_bus_event_reads_back() {
        let c = change(5, 4);
        let text = serde_json::to_string(&ChangeEvent { kind: "changed", from: "1", change: &c }).unwrap();
        match serde_json::from_str::<BusEvent>(&text).unwrap() {
            BusEvent::Changed { from, change } => assert_eq!((from.as_str(), change.id, change.after_seq), ("1", 5, 4)),
            other => panic!("{other:?}"),
        }
    }
}
