//! Private rooms: invite-only rooms owned by a registered user.
//!
//! A private room exists only for the users it lets in (its owner, whom the
//! owner invited, its members): to everyone else it is absent from room
//! lists, members, history and stream attach, and `/join` answers exactly
//! as for a room that does not exist. Who may enter is kept in the store
//! (the authority) and mirrored here, by user id, so every session of an
//! account sees the same rooms.
//!
//! Across instances: a room this instance learns of from elsewhere (the bus,
//! a reload) stays hidden from everyone until its access list has been read
//! from the store; after an invitation or a removal the owner's instance
//! sends the room's news again (`RoomCreated`), and every instance that
//! knows the room as private reads its access list again, telling its own
//! sessions of the users let in or removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Completion, Reply, Responder, RouterState, StoreDone};
use crate::error::ChatError;
use crate::event::{now_ms, Event, Notice, SessionId};
use crate::store::{Account, PrivateRoomRecord, StoreError};

/// Who may enter a private room.
#[derive(Debug, Clone)]
pub struct PrivateRoom {
    pub owner_id: i64,
    pub owner: String,
    pub allowed: HashSet<i64>,
    /// False while the access list is being read from the store: hidden
    /// from everyone meanwhile.
    pub known: bool,
}

impl PrivateRoom {
    fn from_record(record: &PrivateRoomRecord) -> PrivateRoom {
        PrivateRoom {
            owner_id: record.owner_id,
            owner: record.owner.clone(),
            allowed: record.allowed.iter().copied().collect(),
            known: true,
        }
    }
}

/// What `/invite` or `/kick` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChange {
    Invite,
    Kick,
}

impl RouterState {
    /// The private rooms as stored, at start-up.
    pub(super) fn load_private_rooms(&mut self, records: Vec<PrivateRoomRecord>) {
        for record in records {
            self.private.insert(record.name.clone(), PrivateRoom::from_record(&record));
        }
    }

    /// Whether a session (or an anonymous reader, `None`) may know of a room.
    pub(super) fn can_see(&self, room: &str, viewer: Option<SessionId>) -> bool {
        let Some(private) = self.private.get(room) else { return true };
        let Some(session) = viewer.and_then(|id| self.sessions.get(&id)) else { return false };
        private.known && session.registered && private.allowed.contains(&session.user_id)
    }

    /// A room learned from elsewhere: hidden until the store says whether
    /// it is private.
    pub(super) fn hide_until_known(&mut self, room: &str) {
        self.private.insert(
            room.to_string(),
            PrivateRoom { owner_id: 0, owner: String::new(), allowed: HashSet::new(), known: false },
        );
        self.reload_private_rooms();
    }

    pub(super) fn reload_private_rooms(&mut self) {
        let inbox = self.inbox.clone();
        self.store.run(move |store| match store.private_rooms() {
            Ok(rooms) => {
                let _ = inbox.send(Completion::PrivateRoomsLoaded(rooms));
            }
            Err(e) => log::warn!("cannot read private rooms: {e}"),
        });
    }

    /// The access lists read from the store: placeholders become public or
    /// private rooms; changes are told to the sessions here they concern.
    pub(super) fn private_rooms_loaded(&mut self, records: Vec<PrivateRoomRecord>) {
        let stored: HashMap<String, PrivateRoomRecord> = records.into_iter().map(|r| (r.name.clone(), r)).collect();
        let names: Vec<String> = self.private.keys().cloned().collect();
        for name in names {
            if !stored.contains_key(&name) && !self.private[&name].known {
                self.private.remove(&name); // a public room after all
            }
        }
        for (name, record) in stored {
            if !self.rooms.contains_key(&name) {
                continue;
            }
            let fresh = PrivateRoom::from_record(&record);
            let old = self.private.insert(name.clone(), fresh.clone());
            let Some(old) = old.filter(|o| o.known) else { continue };
            for user in fresh.allowed.difference(&old.allowed) {
                self.tell_invited(*user, &fresh.owner, &name);
            }
            for user in old.allowed.difference(&fresh.allowed) {
                self.remove_from_room(*user, &fresh.owner, &name);
            }
        }
    }

    /// `/create <room> private`: registered users only.
    pub(super) fn create_private_room(&mut self, id: SessionId, name: String, reply: Responder) {
        if !self.sessions[&id].registered {
            return self.respond_to(Some(id), reply, Err(ChatError::PrivateNeedsAccount));
        }
        self.create_room(id, name, true, reply);
    }

    /// A private room was stored: its owner may enter it.
    pub(super) fn private_room_created(&mut self, id: SessionId, name: &str) {
        let Some(session) = self.sessions.get(&id) else { return };
        let private = PrivateRoom {
            owner_id: session.user_id,
            owner: session.nick().to_string(),
            allowed: HashSet::from([session.user_id]),
            known: true,
        };
        self.private.insert(name.to_string(), private);
    }

    /// `/invite <nick>` and `/kick <nick>`: the owner, in their private room.
    pub(super) fn change_access(&mut self, id: SessionId, nick: String, change: AccessChange, reply: Responder) {
        let outcome = self.check_owner(id);
        let (room, room_id) = match outcome {
            Ok(found) => found,
            Err(e) => return self.respond_to(Some(id), reply, Err(e)),
        };
        if let Err(e) = crate::names::validate_nickname(&nick) {
            return self.respond_to(Some(id), reply, Err(e));
        }
        let owner = self.private.get(&room).map(|p| crate::names::name_key(&p.owner)).unwrap_or_default();
        if change == AccessChange::Kick && crate::names::name_key(&nick) == owner {
            return self.respond_to(Some(id), reply, Err(ChatError::KickOwner));
        }
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.account(&nick).and_then(|account| {
                let Some(account) = account else { return Ok(None) };
                let changed = match change {
                    AccessChange::Invite => store.grant_room(room_id, account.user_id, now_ms())?,
                    AccessChange::Kick => store.revoke_room(room_id, account.user_id)?,
                };
                Ok(Some((account, changed)))
            });
            let done = StoreDone::AccessChanged { session: id, room, nick, change, result, reply };
            let _ = inbox.send(Completion::StoreDone(done));
        });
    }

    /// The session's current room, if it is private and the session owns it.
    fn check_owner(&self, id: SessionId) -> Result<(String, i64), ChatError> {
        let session = &self.sessions[&id];
        let room = session.room.clone().ok_or(ChatError::NotInRoom)?;
        let private = self.private.get(&room).ok_or_else(|| ChatError::NotPrivate(room.clone()))?;
        if !(session.registered && private.owner_id == session.user_id) {
            return Err(ChatError::NotOwner(room));
        }
        Ok((room.clone(), self.rooms[&room].id))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn access_changed(
        &mut self,
        id: SessionId,
        room: String,
        nick: String,
        change: AccessChange,
        result: Result<Option<(Account, bool)>, StoreError>,
        reply: Responder,
    ) {
        let outcome = match result {
            Err(e) => {
                log::warn!("could not change who may enter {room}: {e}");
                Err(ChatError::StoreUnavailable)
            }
            Ok(None) if change == AccessChange::Invite => Err(ChatError::NotAnAccount(nick)),
            Ok(None) => Err(ChatError::NotAMember { nick, room: room.clone() }),
            Ok(Some((account, changed))) => self.apply_access(id, &room, account, change, changed),
        };
        self.respond_to(Some(id), reply, outcome);
    }

    fn apply_access(
        &mut self,
        id: SessionId,
        room: &str,
        account: Account,
        change: AccessChange,
        changed: bool,
    ) -> Result<Reply, ChatError> {
        let owner = self.sessions.get(&id).map(|s| s.nick().to_string()).unwrap_or_default();
        let nick = account.nickname.clone();
        match change {
            AccessChange::Invite if !changed => Err(ChatError::AlreadyInvited { nick, room: room.to_string() }),
            AccessChange::Kick if !changed => Err(ChatError::NotAMember { nick, room: room.to_string() }),
            AccessChange::Invite => {
                if let Some(private) = self.private.get_mut(room) {
                    private.allowed.insert(account.user_id);
                }
                self.tell_invited(account.user_id, &owner, room);
                self.room_news(room);
                Ok(Reply::Text(format!("Invited {nick} to {room}.")))
            }
            AccessChange::Kick => {
                if let Some(private) = self.private.get_mut(room) {
                    private.allowed.remove(&account.user_id);
                }
                self.remove_from_room(account.user_id, &owner, room);
                self.room_news(room);
                Ok(Reply::Text(format!("Removed {nick} from {room}.")))
            }
        }
    }

    /// Tells the other instances to read the room's access list again.
    fn room_news(&self, room: &str) {
        if let Some(record) = self.rooms.get(room) {
            self.broadcast(crate::bus::BusEvent::RoomCreated {
                from: self.instance.clone(),
                id: record.id,
                name: record.name.clone(),
                created_at_ms: record.created_at_ms,
            });
        }
    }

    fn sessions_of_user(&self, user_id: i64) -> Vec<SessionId> {
        self.account_sessions.get(&user_id).cloned().unwrap_or_default()
    }

    fn tell_invited(&mut self, user_id: i64, owner: &str, room: &str) {
        let text = format!("{owner} invited you to {room}. Type /join {room} to enter.");
        for session in self.sessions_of_user(user_id) {
            self.deliver_to(session, notice(text.clone()));
        }
    }

    /// Moves a removed user's sessions out of the room and tells them.
    fn remove_from_room(&mut self, user_id: i64, owner: &str, room: &str) {
        let text = format!("{owner} removed you from {room}.");
        for session in self.sessions_of_user(user_id) {
            if self.sessions.get(&session).and_then(|s| s.room.as_deref()) == Some(room) {
                self.leave_room(session, |nick, room| format!("{nick} left {room}"));
                self.announce_presence(session);
                self.deliver_to(session, Event::RoomChanged { room: None, history: Vec::new() });
            }
            self.deliver_to(session, notice(text.clone()));
        }
    }
}

fn notice(text: String) -> Event {
    Event::Notice(Arc::new(Notice { room: None, text, at_ms: now_ms(), rendered: Default::default() }))
}
