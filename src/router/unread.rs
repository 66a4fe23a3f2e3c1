//! Read markers that follow TCP users, and `/search`.
//!
//! A registered user's read marker per room lives in the store (markers are
//! service-wide: every instance reads the same rows). Web and API clients
//! move theirs explicitly (`POST /api/rooms/:room/read`, the WebSocket
//! `read` frame). A TCP user sees every live message of the room they are
//! in, so their marker follows them instead: on `/join` it moves to the
//! room's newest message (and they are told how many they had not read
//! since their last visit), and when they leave the room (`/leave`, joining
//! another, `/quit`, a dropped connection, a kick) it moves to the last
//! message they were delivered.
//!
//! `/search` reads on the storage thread, never here; the router only
//! decides which room the session may search (its current one).

use super::{Completion, Reply, Responder, RouterState, StoreDone};
use crate::error::ChatError;
use crate::event::{now_ms, rfc3339, ChatMessage, Event, Protocol, SessionId};
use crate::store::{MarkedRead, StoreError};

/// Matches one `/search` shows.
pub const TCP_SEARCH_LIMIT: usize = 10;

/// `[general #123 2026-01-01 12:00] alice: text` (UTC, to the minute).
pub fn search_line(m: &ChatMessage) -> String {
    let stamp = rfc3339(m.created_at_ms);
    let minute = stamp.get(..16).unwrap_or(&stamp).replacen('T', " ", 1);
    format!("[{} #{} {}] {}: {}", m.room, m.id, minute, m.nickname, m.content)
}

impl RouterState {
    /// The user whose marker follows this session, if it is a registered TCP user.
    fn follows_marker(&self, id: SessionId) -> Option<i64> {
        let s = self.sessions.get(&id)?;
        (s.protocol == Protocol::Tcp && s.registered && s.user_id > 0).then_some(s.user_id)
    }

    /// A registered TCP user joined `room`: their marker moves to the
    /// room's newest message, and the count it moved over, if they had
    /// been here before, is shown after the history.
    pub(super) fn marker_on_join(&mut self, id: SessionId, room: &str) {
        let (Some(user_id), Some(room_id)) = (self.follows_marker(id), self.rooms.get(room).map(|r| r.id)) else {
            return;
        };
        let inbox = self.inbox.clone();
        let room = room.to_string();
        // Up to the newest stored: what was committed before the join and
        // not yet delivered still reaches them, now a member.
        self.store.run(move |store| {
            let result = store.mark_read(user_id, room_id, i64::MAX, now_ms());
            let _ = inbox.send(Completion::StoreDone(StoreDone::MarkedOnJoin { session: id, room, result }));
        });
    }

    pub(super) fn marked_on_join(&mut self, id: SessionId, room: String, result: Result<MarkedRead, StoreError>) {
        match result {
            Ok(MarkedRead { had_marker: true, moved, .. }) if moved > 0 => {
                if self.sessions.get(&id).is_some_and(|s| s.room.as_deref() == Some(room.as_str())) {
                    self.deliver_to(id, Event::Reply(format!("({moved} unread since your last visit)")));
                }
            }
            Ok(_) => {}
            Err(e) => log::debug!("could not move a read marker on join: {e}"),
        }
    }

    /// A registered TCP user is leaving `room`: their marker moves to the
    /// last message delivered there.
    pub(super) fn marker_on_leave(&mut self, id: SessionId, room: &str) {
        let Some(user_id) = self.follows_marker(id) else { return };
        let Some((room_id, last)) = self.rooms.get(room).and_then(|r| Some((r.id, r.history.back()?.id))) else { return };
        self.store.run(move |store| {
            if let Err(e) = store.mark_read(user_id, room_id, last, now_ms()) {
                log::debug!("could not move a read marker on leave: {e}");
            }
        });
    }

    /// `/search <words>`: the current room's newest matches, read on the
    /// storage thread.
    pub(super) fn search(&mut self, id: SessionId, words: String, reply: Responder) {
        let Some(room_id) = self.sessions[&id].room.as_ref().and_then(|r| self.rooms.get(r)).map(|r| r.id) else {
            return self.respond_to(Some(id), reply, Err(ChatError::SearchNeedsRoom));
        };
        if let Err(why) = crate::store::search::check_search(&words, self.settings.search) {
            return self.respond_to(Some(id), reply, Err(ChatError::BadSearch(why.to_string())));
        }
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.search(room_id, &words, TCP_SEARCH_LIMIT);
            let _ = inbox.send(Completion::StoreDone(StoreDone::Searched { session: id, result, reply }));
        });
    }

    pub(super) fn searched(&mut self, id: SessionId, result: Result<Vec<ChatMessage>, StoreError>, reply: Responder) {
        let outcome = match result {
            Ok(found) if found.is_empty() => Ok(Reply::Text("No messages match.".into())),
            Ok(found) => Ok(Reply::Text(found.iter().map(search_line).collect::<Vec<_>>().join("\n"))),
            Err(e) => {
                log::warn!("search failed: {e}");
                Err(ChatError::StoreReadUnavailable)
            }
        };
        self.respond_to(Some(id), reply, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_lines_show_room_id_minute_and_sender() {
        let m = ChatMessage {
            id: 123,
            seq: 7,
            room_id: 1,
            room: "general".into(),
            user_id: 2,
            nickname: "alice".into(),
            content: "text".into(),
            created_at_ms: 1_767_268_845_000,
            edited_at_ms: None,
            deleted: false,
            action: false,
            rendered: Default::default(),
        };
        assert_eq!(search_line(&m), "[general #123 2026-01-01 12:00] alice: text");
    }
}
