//! What each request does to the chat state. Every handler starts with the
//! grammar it serves; the replies are the exact texts of the line protocol
//! (`docs/protocol.md`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::{PendingSend, Reply, Responder, RoomSummary, Completion, RouterState, StoreDone};
use crate::command::{help_text, Command};
use crate::error::ChatError;
use crate::event::{now_ms, ChatMessage, CloseReason, DirectMessage, Event, Protocol, SessionId};
use crate::names::{clean_message, name_key, normalize_room, validate_nickname};
use crate::store::{AppendResult, NewMessage, StoreError};

/// At most this many missed DMs are shown at login (the rest stay unread,
/// in the conversation's history).
const MISSED_DMS_MAX: usize = 500;

impl RouterState {
    /// First nickname of a session: reserve it, record the user in the
    /// store, and answer once it is stored.
    pub(super) fn login(&mut self, id: SessionId, nickname: String, reply: Responder) {
        let named = self.sessions.get(&id).is_some_and(|s| s.nickname.is_some() || s.pending_nickname.is_some());
        if named {
            return self.respond_to(Some(id), reply, Err(ChatError::AlreadyNamed));
        }
        if let Err(e) = self.reserve_nickname(id, &nickname) {
            return self.refuse_nickname(id, e, reply);
        }
        self.claim_then_record(id, nickname, false, reply);
    }

    /// With a bus, claims the nickname service-wide before recording it.
    fn claim_then_record(&mut self, id: SessionId, nickname: String, rename: bool, reply: Responder) {
        if self.claim_nickname(id, &nickname) {
            self.pending_claims.insert(id, super::PendingClaim { rename, reply });
        } else {
            self.record_user(id, nickname, rename, reply);
        }
    }

    /// Refuses a nickname. One taken on another instance may be an
    /// account's: the store says, and the answer names the right reason.
    pub(super) fn refuse_nickname(&mut self, id: SessionId, error: ChatError, reply: Responder) {
        let ChatError::NicknameTaken(nickname) = error else {
            return self.respond_to(Some(id), reply, Err(error));
        };
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let registered = matches!(store.account(&nickname), Ok(Some(_)));
            let _ = inbox.send(Completion::StoreDone(StoreDone::TakenChecked { session: id, nickname, registered, reply }));
        });
    }

    /// Frees a nickname reserved by `id` that it did not end up using.
    pub(super) fn unreserve_nickname(&mut self, id: SessionId, nickname: &str) {
        let key = name_key(nickname);
        let Some(session) = self.sessions.get_mut(&id) else { return };
        session.pending_nickname = None;
        let in_use = session.nickname.as_deref().map(name_key) == Some(key.clone());
        if !in_use && self.nicknames.get(&key) == Some(&id) {
            self.nicknames.remove(&key);
        }
    }

    /// Checks a nickname and reserves it for `id`.
    fn reserve_nickname(&mut self, id: SessionId, nickname: &str) -> Result<(), ChatError> {
        validate_nickname(nickname)?;
        let key = name_key(nickname);
        let holder = self.nicknames.get(&key).filter(|owner| **owner != id).and_then(|owner| self.sessions.get(owner));
        if holder.is_some_and(|h| h.registered) {
            return Err(ChatError::NicknameRegistered(nickname.to_string()));
        }
        if holder.is_some() || self.remote_instance_of(nickname).is_some() {
            return Err(ChatError::NicknameTaken(nickname.to_string()));
        }
        self.nicknames.insert(key, id);
        if let Some(session) = self.sessions.get_mut(&id) {
            session.pending_nickname = Some(nickname.to_string());
        }
        Ok(())
    }

    pub(super) fn record_user(&mut self, session: SessionId, nickname: String, rename: bool, reply: Responder) {
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.upsert_guest(&nickname, now_ms());
            let done = StoreDone::UserRecorded { session, nickname, rename, result, reply };
            let _ = inbox.send(Completion::StoreDone(done));
        });
    }

    pub(super) fn store_done(&mut self, done: StoreDone) {
        match done {
            StoreDone::UserRecorded { session, nickname, rename, result, reply } => {
                self.user_recorded(session, nickname, rename, result, reply)
            }
            StoreDone::RoomCreated { session, name, private, result, reply } => {
                self.room_created(session, name, private, result, reply)
            }
            StoreDone::AccessChanged { session, room, nick, change, result, reply } => {
                self.access_changed(session, room, nick, change, result, reply)
            }
            StoreDone::Registered { session, result, reply } => self.registered(session, result, reply),
            StoreDone::TakenChecked { session, nickname, registered, reply } => {
                let error =
                    if registered { ChatError::NicknameRegistered(nickname) } else { ChatError::NicknameTaken(nickname) };
                self.respond_to(Some(session), reply, Err(error));
            }
            StoreDone::DmStored { session, to, text, result, reply } => self.dm_stored(session, to, text, result, reply),
            StoreDone::MessageChanged { session, target, delete, result, reply } => {
                self.message_changed(session, target, delete, result, reply)
            }
            StoreDone::MarkedOnJoin { session, room, result } => self.marked_on_join(session, room, result),
            StoreDone::Searched { session, result, reply } => self.searched(session, result, reply),
            StoreDone::MissedDms { session, result, answer, reply } => self.missed_dms(session, result, answer, reply),
        }
    }

    /// Logs a session in to an account whose password the adapter checked.
    /// The account's sessions share its nickname; no service-wide claim is
    /// needed, since the store says who owns a registered name.
    pub(super) fn login_account(&mut self, id: SessionId, user_id: i64, nickname: String, missed: bool, reply: Responder) {
        let session = &self.sessions[&id];
        if session.pending_nickname.is_some() {
            return self.respond_to(Some(id), reply, Err(ChatError::Usage("/login <nick> <password> (one change at a time)")));
        }
        if session.registered && session.user_id == user_id {
            return self.respond_to(Some(id), reply, Ok(Reply::LoggedIn { session: id, user_id, nickname, missed_dms: None }));
        }
        let key = name_key(&nickname);
        if let Some(holder) = self.nicknames.get(&key).and_then(|h| self.sessions.get(h)) {
            if holder.id != id && !(holder.registered && holder.user_id == user_id) {
                // A guest took the name before it was registered (only
                // possible while instances could not see each other).
                return self.respond_to(Some(id), reply, Err(ChatError::NicknameTaken(nickname)));
            }
        }
        let old = self.sessions[&id].nickname.clone();
        if let Some(old) = &old {
            self.release_nickname(id, old);
        }
        let session = self.sessions.get_mut(&id).expect("resolved");
        session.nickname = Some(nickname.clone());
        session.user_id = user_id;
        session.registered = true;
        session.opened = Instant::now();
        self.nicknames.entry(key).or_insert(id);
        self.account_sessions.entry(user_id).or_default().push(id);
        self.inherit_status(id);
        self.announce_presence(id);
        log::info!("session {} logged in as {nickname}", id.0);
        let answer = match old {
            None => Reply::LoggedIn { session: id, user_id, nickname, missed_dms: None },
            Some(old) => {
                if let Some(room) = self.sessions[&id].room.clone() {
                    self.announce(&room, format!("{old} is now known as {nickname}"), Some(id));
                }
                Reply::Welcomed { user_id, nickname, missed_dms: None }
            }
        };
        if !missed {
            self.greet(id, &answer);
            return self.respond_to(Some(id), reply, Ok(answer));
        }
        // The storage thread answers in the order it is asked: a DM whose
        // insert was queued before this read is in the block, and its
        // `DmStored` reaches the router before `MissedDms` does, so it is
        // kept from the session's live stream (never both); one queued
        // after is not in the block and is delivered live. Everything else
        // the session is sent meanwhile waits for the welcome.
        self.sessions.get_mut(&id).expect("resolved").held = Some(Default::default());
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.unread_dms(user_id, MISSED_DMS_MAX).and_then(|dms| {
                let ids: Vec<i64> = dms.iter().map(|d| d.id).collect();
                if !ids.is_empty() {
                    store.mark_dms_read(user_id, &ids, now_ms())?;
                }
                Ok(dms)
            });
            let _ = inbox.send(Completion::StoreDone(StoreDone::MissedDms { session: id, result, answer, reply }));
        });
    }

    /// The DMs a login waited for: the block shown after the welcome,
    /// oldest first (none if they cannot be read: they stay unread).
    fn missed_dms(&mut self, id: SessionId, result: Result<Vec<crate::store::DmRecord>, StoreError>, answer: Reply, reply: Responder) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let held = session.held.take().map(|held| held.into_inner()).unwrap_or_default();
        let dms = result.unwrap_or_else(|e| {
            log::warn!("cannot read missed DMs: {e}");
            Vec::new()
        });
        let block = (!dms.is_empty()).then(|| {
            let mut block = String::from("--- Direct messages while you were away ---");
            for dm in dms {
                block.push_str(&format!("\n[DM from {}] {}", dm.sender, dm.content));
            }
            block.push_str("\n---");
            block
        });
        let answer = match answer {
            Reply::LoggedIn { session, user_id, nickname, .. } => Reply::LoggedIn { session, user_id, nickname, missed_dms: block },
            Reply::Welcomed { user_id, nickname, .. } => Reply::Welcomed { user_id, nickname, missed_dms: block },
            other => other,
        };
        self.greet(id, &answer);
        for event in held {
            self.deliver_to(id, event);
        }
        self.respond_to(Some(id), reply, Ok(answer));
    }

    /// A TCP session that has just chosen its first nickname is welcomed in
    /// its own stream, so nothing sent to the new name can come before it.
    fn greet(&mut self, id: SessionId, answer: &Reply) {
        let Reply::LoggedIn { nickname, missed_dms, .. } = answer else { return };
        let Some(session) = self.sessions.get(&id) else { return };
        if session.protocol != Protocol::Tcp {
            return;
        }
        let greeting = if session.registered { "Welcome back" } else { "Welcome" };
        let mut text = format!("{greeting}, {nickname}!\nType /help for available commands.");
        if let Some(block) = missed_dms {
            text.push('\n');
            text.push_str(block);
        }
        self.deliver_to(id, Event::Reply(text));
    }

    /// Frees the nickname a session is leaving (for another one).
    fn release_nickname(&mut self, id: SessionId, nick: &str) {
        let (registered, user_id) = (self.sessions[&id].registered, self.sessions[&id].user_id);
        let others = if registered { self.leave_account(id, user_id) } else { None };
        let key = name_key(nick);
        if self.nicknames.get(&key) == Some(&id) {
            match others {
                Some(other) => self.nicknames.insert(key, other),
                None => self.nicknames.remove(&key),
            };
        }
        if others.is_none() {
            self.announce_gone(nick);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.registered = false;
        }
    }

    /// Takes a session out of its account's list; returns another session
    /// of the account still logged in here, if any.
    pub(super) fn leave_account(&mut self, id: SessionId, user_id: i64) -> Option<SessionId> {
        let list = self.account_sessions.get_mut(&user_id)?;
        list.retain(|s| *s != id);
        let other = list.first().copied();
        if list.is_empty() {
            self.account_sessions.remove(&user_id);
        }
        other
    }

    /// `/register`, once the adapter hashed the password: stored first.
    pub(super) fn register(&mut self, id: SessionId, password_hash: String, reply: Responder) {
        let session = &self.sessions[&id];
        let Some(nick) = session.nickname.clone() else {
            return self.respond_to(Some(id), reply, Err(ChatError::NoNickname));
        };
        if session.registered {
            return self.respond_to(Some(id), reply, Err(ChatError::AlreadyRegistered(nick)));
        }
        let user_id = session.user_id;
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.register(user_id, &password_hash, now_ms());
            let _ = inbox.send(Completion::StoreDone(StoreDone::Registered { session: id, result, reply }));
        });
    }

    fn registered(&mut self, id: SessionId, result: Result<bool, StoreError>, reply: Responder) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let nick = session.nick().to_string();
        let outcome = match result {
            Ok(true) => {
                session.registered = true;
                session.opened = Instant::now();
                let user_id = session.user_id;
                self.account_sessions.entry(user_id).or_default().push(id);
                log::info!("{nick} registered");
                Ok(Reply::Text(format!("Registered {nick}. From now on, log in as {nick} with your password.")))
            }
            Ok(false) => Err(ChatError::AlreadyRegistered(nick)),
            Err(e) => {
                log::warn!("could not register {nick}: {e}");
                Err(ChatError::StoreUnavailable)
            }
        };
        self.respond_to(Some(id), reply, outcome);
    }

    fn user_recorded(
        &mut self,
        id: SessionId,
        nickname: String,
        rename: bool,
        result: Result<Option<i64>, StoreError>,
        reply: Responder,
    ) {
        if !self.sessions.contains_key(&id) {
            // Gone meanwhile; end_session freed the reservation.
            if let Some(bus) = &self.bus {
                bus.release(&nickname);
            }
            return;
        }
        let user_id = match result {
            Ok(Some(user_id)) => user_id,
            Ok(None) => {
                self.unreserve_nickname(id, &nickname);
                if let Some(bus) = &self.bus {
                    bus.release(&nickname);
                }
                return self.respond_to(Some(id), reply, Err(ChatError::NicknameRegistered(nickname)));
            }
            Err(e) => {
                log::warn!("could not record user {nickname}: {e}");
                self.unreserve_nickname(id, &nickname);
                if let Some(bus) = &self.bus {
                    bus.release(&nickname);
                }
                return self.respond_to(Some(id), reply, Err(ChatError::StoreUnavailable));
            }
        };
        let session = self.sessions.get_mut(&id).expect("checked above");
        session.pending_nickname = None;
        let old = session.nickname.replace(nickname.clone());
        session.user_id = user_id;
        if !rename {
            self.announce_presence(id);
            let answer = Reply::LoggedIn { session: id, user_id, nickname, missed_dms: None };
            self.greet(id, &answer);
            return self.respond_to(Some(id), reply, Ok(answer));
        }
        let old = old.unwrap_or_default();
        if name_key(&old) != name_key(&nickname) {
            if self.nicknames.get(&name_key(&old)) == Some(&id) {
                self.nicknames.remove(&name_key(&old));
            }
            self.announce_gone(&old);
        }
        self.announce_presence(id);
        if let Some(room) = self.sessions[&id].room.clone() {
            self.announce(&room, format!("{old} is now known as {nickname}"), Some(id));
        }
        self.respond_to(Some(id), reply, Ok(Reply::Text(format!("You are now known as {nickname}"))));
    }

    /// Runs a slash command for a named session.
    pub(super) fn command(&mut self, id: SessionId, command: Command, reply: Responder) {
        if self.sessions.get(&id).is_none_or(|s| s.nickname.is_none()) {
            return self.respond_to(Some(id), reply, Err(ChatError::NoNickname));
        }
        let outcome = match command {
            Command::Help => Ok(Reply::Text(help_text())),
            Command::Nick(nick) => return self.change_nick(id, nick, reply),
            Command::List => Ok(Reply::Text(self.list(id))),
            Command::Quit => {
                self.respond_to(Some(id), reply, Ok(Reply::Text("Goodbye!".into())));
                return self.end_session(id, CloseReason::Normal);
            }
            Command::Create(name) => return self.create_room(id, name, false, reply),
            Command::CreatePrivate(name) => return self.create_private_room(id, name, reply),
            Command::Invite(nick) => return self.change_access(id, nick, super::private::AccessChange::Invite, reply),
            Command::Kick(nick) => return self.change_access(id, nick, super::private::AccessChange::Kick, reply),
            Command::Join(name) => self.join(id, &name, "Joined room"),
            Command::Rooms => Ok(Reply::Text(self.rooms_text(id))),
            Command::Leave => self.leave(id),
            Command::Dm { to, text } => return self.dm(id, to, text, reply),
            Command::Edit(text) => return self.change_message(id, super::edits::Target::LastOwn, Some(text), reply),
            Command::Delete => return self.change_message(id, super::edits::Target::LastOwn, None, reply),
            Command::Search(words) => return self.search(id, words, reply),
            // Password work happens outside the router (crate::accounts).
            Command::Register(_) => Err(ChatError::Usage("/register <password>")),
            Command::Password { .. } => Err(ChatError::Usage("/password <old> <new>")),
            Command::Login { .. } => Err(ChatError::Usage("/login <nick> <password>")),
            Command::Me(text) => return self.say(id, text, None, None, true, reply),
            Command::Away(message) => self.set_status(id, crate::event::Status::Away, message),
            Command::Back => self.set_status(id, crate::event::Status::Online, None),
        };
        self.respond_to(Some(id), reply, outcome);
    }

    /// `/nick <name>`
    fn change_nick(&mut self, id: SessionId, nickname: String, reply: Responder) {
        let session = &self.sessions[&id];
        if session.pending_nickname.is_some() {
            return self.respond_to(Some(id), reply, Err(ChatError::Usage("/nick <name> (one change at a time)")));
        }
        if session.nickname.as_deref() == Some(nickname.as_str()) {
            return self.respond_to(Some(id), reply, Ok(Reply::Text(format!("You are already known as {nickname}"))));
        }
        if session.registered {
            let own = session.nick().to_string();
            return self.respond_to(Some(id), reply, Err(ChatError::AccountNickname(own)));
        }
        if let Err(e) = self.reserve_nickname(id, &nickname) {
            return self.refuse_nickname(id, e, reply);
        }
        self.claim_then_record(id, nickname, true, reply);
    }

    /// `/list`
    fn list(&self, id: SessionId) -> String {
        match &self.sessions[&id].room {
            Some(room) => {
                let members = self.member_statuses(room).unwrap_or_default();
                let labels: Vec<String> = members.iter().map(|m| m.label()).collect();
                format!("Users in {room} ({}): {}", labels.len(), labels.join(", "))
            }
            None => {
                let users: Vec<String> = self.online_statuses().iter().map(|m| m.label()).collect();
                format!("Online users ({}): {}", users.len(), users.join(", "))
            }
        }
    }

    /// `/rooms`
    fn rooms_text(&self, id: SessionId) -> String {
        let rooms = self.room_list(Some(id));
        if rooms.is_empty() {
            return "No rooms yet. Use /create <room> to create one.".into();
        }
        let mut text = format!("Rooms ({}):", rooms.len());
        for RoomSummary { name, members: n, .. } in rooms {
            text.push_str(&format!("\n  {name} ({n} {})", if n == 1 { "member" } else { "members" }));
        }
        text
    }

    /// `/create <room>`: stored first, joined once stored.
    pub(super) fn create_room(&mut self, id: SessionId, name: String, private: bool, reply: Responder) {
        let name = match normalize_room(&name) {
            Ok(name) => name,
            Err(e) => return self.respond_to(Some(id), reply, Err(e)),
        };
        if self.rooms.contains_key(&name) || self.creating.contains(&name) {
            return self.respond_to(Some(id), reply, Err(ChatError::RoomExists(name)));
        }
        self.creating.insert(name.clone());
        let owner_id = self.sessions[&id].user_id;
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = if private {
                store.create_private_room(&name, owner_id, now_ms())
            } else {
                store.create_room(&name, now_ms())
            };
            let _ = inbox.send(Completion::StoreDone(StoreDone::RoomCreated { session: id, name, private, result, reply }));
        });
    }

    fn room_created(
        &mut self,
        id: SessionId,
        name: String,
        private: bool,
        result: Result<crate::store::RoomRecord, StoreError>,
        reply: Responder,
    ) {
        self.creating.remove(&name);
        let outcome = match result {
            Ok(record) => {
                log::info!("room {} created", record.name);
                self.broadcast(crate::bus::BusEvent::RoomCreated {
                    from: self.instance.clone(),
                    id: record.id,
                    name: record.name.clone(),
                    created_at_ms: record.created_at_ms,
                });
                self.rooms.insert(name.clone(), super::Room::new(record.id, record.name, record.created_at_ms));
                // New and empty: up to date already; listen to it from now on.
                self.listen_to_new_room(&name);
                if private {
                    self.private_room_created(id, &name);
                }
                let outcome = if self.sessions.contains_key(&id) {
                    self.join(id, &name, "Created and joined room")
                } else {
                    Ok(Reply::Done)
                };
                self.cool(&name);
                outcome
            }
            Err(StoreError::Conflict) => {
                // Created by another instance whose news has not reached us.
                self.reload_rooms();
                Err(ChatError::RoomExists(name))
            }
            Err(e) => {
                log::warn!("could not create room {name}: {e}");
                Err(ChatError::StoreUnavailable)
            }
        };
        self.respond_to(Some(id), reply, outcome);
    }

    /// `/join <room>` (and the second half of `/create`): leaves the current
    /// room, joins, and answers with the room's recent messages.
    pub(super) fn join(&mut self, id: SessionId, name: &str, verb: &str) -> Result<Reply, ChatError> {
        let name = normalize_room(name)?;
        if !self.rooms.contains_key(&name) || !self.can_see(&name, Some(id)) {
            return Err(ChatError::NoSuchRoom(name));
        }
        if self.sessions[&id].room.as_deref() == Some(name.as_str()) {
            return Err(ChatError::AlreadyInRoom(name));
        }
        self.enter_room(id, &name, None);
        let room = &self.rooms[&name];
        let mut text = format!("{verb}: {name}\n--- Recent Messages ---\n");
        if room.history.iter().all(|m| m.deleted) {
            text.push_str("No recent messages\n");
        }
        for message in room.history.iter().filter(|m| !m.deleted) {
            text.push_str(&message.line());
            text.push('\n');
        }
        text.push_str("---");
        self.marker_on_join(id, &name);
        Ok(Reply::Text(text))
    }

    /// Moves a session into a room: leave notices, join notice, membership,
    /// the stream's `RoomChanged` with the room's history.
    /// `history` replaces the ring buffer for a stream that resumes.
    pub(super) fn enter_room(&mut self, id: SessionId, name: &str, history: Option<Vec<Arc<ChatMessage>>>) {
        self.leave_room(id, |nick, room| format!("{nick} left {room}"));
        let session = self.sessions.get_mut(&id).expect("caller checked");
        session.room = Some(name.to_string());
        let (nick, user_id) = (session.nick().to_string(), session.user_id);
        let room = self.rooms.get_mut(name).expect("caller checked");
        room.members.insert(id);
        let room_id = room.id;
        let history = history.unwrap_or_else(|| room.history.iter().filter(|m| !m.deleted).cloned().collect());
        if self.announces(name) {
            self.announce(name, format!("{nick} joined {name}"), Some(id));
        }
        self.deliver_to(id, Event::RoomChanged { room: Some(name.to_string()), history });
        self.announce_presence(id);
        self.store.run(move |store| {
            if let Err(e) = store.record_join(room_id, user_id, now_ms()) {
                log::debug!("could not record a join: {e}");
            }
        });
    }

    /// `/leave`
    fn leave(&mut self, id: SessionId) -> Result<Reply, ChatError> {
        let room = self.sessions[&id].room.clone().ok_or(ChatError::NotInRoom)?;
        self.leave_room(id, |nick, room| format!("{nick} left {room}"));
        self.announce_presence(id);
        self.deliver_to(id, Event::RoomChanged { room: None, history: Vec::new() });
        Ok(Reply::Text(format!("Left room: {room}")))
    }

    /// `/dm <user> <message>`: shown to both ends as a DM event.
    /// The recipient may be on this instance or, through the bus, another.
    fn dm(&mut self, id: SessionId, to: String, text: String, reply: Responder) {
        let outcome = self.check_dm(id, &to, &text);
        let (text, store) = match outcome {
            Ok(checked) => checked,
            Err(e) => return self.respond_to(Some(id), reply, Err(e)),
        };
        if !store {
            let outcome = self.live_dm(id, &to, text);
            return self.respond_to(Some(id), reply, outcome);
        }
        // Between registered users the store comes first: the sender's
        // echo means the DM is committed, and an offline recipient finds
        // it at the next login.
        let (sender_id, sender) = (self.sessions[&id].user_id, self.sessions[&id].nick().to_string());
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let result = store.insert_dm(sender_id, &sender, &to, &text, now_ms());
            let _ = inbox.send(Completion::StoreDone(StoreDone::DmStored { session: id, to, text, result, reply }));
        });
    }

    /// Checks a DM and takes a rate token; answers the cleaned text and
    /// whether it goes through the store (a registered sender, and a
    /// recipient who may be an account: not a guest online here).
    fn check_dm(&mut self, id: SessionId, to: &str, text: &str) -> Result<(String, bool), ChatError> {
        let local = self.local_target(to);
        let sender = &self.sessions[&id];
        if local.is_some_and(|t| self.sessions_of(t).contains(&id)) || (sender.registered && name_key(to) == name_key(sender.nick())) {
            return Err(ChatError::DmToSelf);
        }
        let store = sender.registered && local.is_none_or(|t| self.sessions[&t].registered);
        if !store && local.is_none() && self.remote_instance_of(to).is_none() {
            return Err(ChatError::UserNotOnline(to.to_string()));
        }
        if store && crate::names::validate_nickname(to).is_err() {
            return Err(ChatError::UserNotOnline(to.to_string()));
        }
        let text = clean_message(text, self.settings.max_message_chars)?;
        self.take_rate_token(id)?;
        Ok((text, store))
    }

    /// The named session here that a DM to `to` goes to, if any.
    fn local_target(&self, to: &str) -> Option<SessionId> {
        self.nicknames.get(&name_key(to)).copied().filter(|t| self.sessions.get(t).is_some_and(|s| s.nickname.is_some()))
    }

    /// A DM that is not stored: to an online user here or elsewhere.
    fn live_dm(&mut self, id: SessionId, to: &str, text: String) -> Result<Reply, ChatError> {
        let local = self.local_target(to);
        let remote = if local.is_none() { self.remote_instance_of(to) } else { None };
        let recipient = match (local, &remote) {
            (Some(target), _) => self.sessions[&target].nick().to_string(),
            (None, Some((_, nick))) => nick.clone(),
            (None, None) => return Err(ChatError::UserNotOnline(to.to_string())),
        };
        let dm = Arc::new(DirectMessage { from: self.sessions[&id].nick().to_string(), to: recipient, text, at_ms: now_ms() });
        match (local, remote) {
            (Some(target), _) => {
                for session in self.sessions_of(target) {
                    self.deliver_to(session, Event::Dm { dm: dm.clone(), outgoing: false });
                }
            }
            (None, Some((instance, _))) => self.remote_dm(&instance, &dm.from, &dm.to, &dm.text, dm.at_ms),
            (None, None) => {}
        }
        let shown = format!("[DM to {}] {}", dm.to, dm.text);
        self.deliver_to(id, Event::Dm { dm, outgoing: true });
        Ok(Reply::Shown(shown))
    }

    /// A DM between registered users was stored (or the recipient turned
    /// out not to be an account): deliver it to every session of the
    /// recipient, here and on every other instance.
    pub(super) fn dm_stored(
        &mut self,
        id: SessionId,
        to: String,
        text: String,
        result: Result<Option<crate::store::DmRecord>, StoreError>,
        reply: Responder,
    ) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        let record = match result {
            Ok(Some(record)) => record,
            Ok(None) => {
                let outcome = self.live_dm(id, &to, text);
                return self.respond_to(Some(id), reply, outcome);
            }
            Err(e) => {
                log::warn!("could not store a DM: {e}");
                return self.respond_to(Some(id), reply, Err(ChatError::StoreUnavailable));
            }
        };
        let dm = Arc::new(DirectMessage {
            from: record.sender.clone(),
            to: record.recipient.clone(),
            text: record.content.clone(),
            at_ms: record.created_at_ms,
        });
        let local = self.account_sessions.get(&record.recipient_id).cloned().unwrap_or_default();
        for session in &local {
            if !self.sessions.get(session).is_some_and(|s| s.held.is_some()) {
                self.deliver_to(*session, Event::Dm { dm: dm.clone(), outgoing: false });
            }
        }
        let remote = self.remote_instance_of(&record.recipient).is_some();
        if remote {
            // Every instance delivers it to the recipient's sessions there.
            self.broadcast(crate::bus::BusEvent::Dm {
                from: self.instance.clone(),
                sender: dm.from.clone(),
                recipient: dm.to.clone(),
                text: dm.text.clone(),
                at_ms: dm.at_ms,
            });
        }
        if local.is_empty() && !remote {
            let line = format!("[DM to {}] {} ({} is offline; they will see it when they log in)", dm.to, dm.text, dm.to);
            return self.respond_to(Some(id), reply, Ok(Reply::Text(line)));
        }
        let (recipient, dm_id) = (record.recipient_id, record.id);
        self.store.run(move |store| {
            if let Err(e) = store.mark_dms_read(recipient, &[dm_id], now_ms()) {
                log::debug!("could not mark a DM read: {e}");
            }
        });
        let shown = format!("[DM to {}] {}", dm.to, dm.text);
        self.deliver_to(id, Event::Dm { dm, outgoing: true });
        self.respond_to(Some(id), reply, Ok(Reply::Shown(shown)));
    }

    /// Every session of the user that `id` is: all of an account's, or `id`.
    pub(super) fn sessions_of(&self, id: SessionId) -> Vec<SessionId> {
        match self.sessions.get(&id) {
            Some(s) if s.registered => self.account_sessions.get(&s.user_id).cloned().unwrap_or_else(|| vec![id]),
            _ => vec![id],
        }
    }

    pub(super) fn take_rate_token(&mut self, id: SessionId) -> Result<(), ChatError> {
        let per_second = self.settings.msg_rate;
        let session = self.sessions.get_mut(&id).expect("caller checked");
        if session.rate.try_take(Instant::now()) {
            Ok(())
        } else {
            Err(ChatError::RateLimited { per_second })
        }
    }

    /// Plain text: checked here, committed by the storage thread, delivered
    /// in [`committed`](Self::committed).
    pub(super) fn say(
        &mut self,
        id: SessionId,
        text: String,
        room: Option<String>,
        client_msg_id: Option<Uuid>,
        action: bool,
        reply: Responder,
    ) {
        // A retry of a message still being committed gets its answer.
        if let Some(pending) = client_msg_id
            .and_then(|c| self.pending_client_ids.get(&c))
            .and_then(|ticket| self.pending_sends.get_mut(ticket))
        {
            pending.retries.push((id, reply));
            return;
        }
        let outcome = self.accept_message(id, &text, room);
        match outcome {
            Ok(mut message) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                message.client_msg_id = client_msg_id;
                message.action = action;
                if let Some(client_id) = client_msg_id {
                    self.pending_client_ids.insert(client_id, ticket);
                }
                let pending =
                    PendingSend { session: id, reply, accepted: Instant::now(), client_msg_id, retries: Vec::new() };
                self.pending_sends.insert(ticket, pending);
                self.store.append(ticket, message);
            }
            Err(e) => self.respond_to(Some(id), reply, Err(e)),
        }
    }

    fn accept_message(&mut self, id: SessionId, text: &str, room: Option<String>) -> Result<NewMessage, ChatError> {
        let session = &self.sessions[&id];
        let nickname = session.nickname.clone().ok_or(ChatError::NoNickname)?;
        let current = session.room.clone().ok_or(ChatError::NotInRoom)?;
        if let Some(requested) = room {
            if normalize_room(&requested).ok().as_deref() != Some(current.as_str()) {
                return Err(ChatError::WrongRoom { current, requested });
            }
        }
        let content = clean_message(text, self.settings.max_message_chars)?;
        if self.pending_sends.len() >= self.settings.store_queue_max {
            return Err(ChatError::Busy);
        }
        self.take_rate_token(id)?;
        let session = &self.sessions[&id];
        Ok(NewMessage {
            room_id: self.rooms[&current].id,
            room: current,
            user_id: session.user_id,
            nickname,
            content,
            created_at_ms: now_ms(),
            client_msg_id: None,
            action: false,
        })
    }

    /// A group commit finished: remember and deliver what was stored, in
    /// order; refuse what was not.
    pub(super) fn committed(&mut self, results: Vec<AppendResult>) {
        for AppendResult { ticket, result, duplicate } in results {
            let Some(pending) = self.pending_sends.remove(&ticket) else { continue };
            if let Some(client_id) = pending.client_msg_id {
                self.pending_client_ids.remove(&client_id);
            }
            let answer = match &result {
                Ok(m) => Ok(Reply::Sent { id: m.id, room: m.room.clone(), created_at_ms: m.created_at_ms }),
                Err(_) => Err(ChatError::StoreUnavailable),
            };
            for (session, reply) in pending.retries {
                self.respond_to(Some(session), reply, answer.clone());
            }
            match result {
                // Stored before under the same client id: answered again, not posted.
                Ok(_) if duplicate => self.respond_to(Some(pending.session), pending.reply, answer),
                Ok(message) => {
                    self.metrics.messages.fetch_add(1, Relaxed);
                    let sent = Reply::Sent { id: message.id, room: message.room.clone(), created_at_ms: message.created_at_ms };
                    self.publish_committed(&message);
                    self.admit(message);
                    self.metrics.delivery_latency.observe(pending.accepted.elapsed());
                    self.respond_to(Some(pending.session), pending.reply, Ok(sent));
                }
                Err(e) => {
                    self.metrics.store_failures.fetch_add(1, Relaxed);
                    log::debug!("message from {:?} refused: {e}", pending.session);
                    self.respond_to(Some(pending.session), pending.reply, Err(ChatError::StoreUnavailable));
                }
            }
        }
    }

    /// Puts a committed message in its room's ring buffer and fans it out
    /// (called by the order gate, in sequence order).
    pub(super) fn publish(&mut self, message: Arc<ChatMessage>) {
        let Some(room) = self.rooms.get_mut(&message.room) else { return };
        room.remember(message.clone(), self.settings.history_size);
        if message.deleted {
            // Read back from the store by the order gate after its deletion:
            // it keeps its place, and nobody is shown it.
            return;
        }
        let name = message.room.clone();
        // Typing signals waiting in the room ride along with the message.
        let typing = self.take_typing(&name);
        if typing.is_empty() {
            self.deliver_to_room(&name, &Event::Message(message), None);
        } else {
            self.deliver_with_typing(&name, typing, Some(&Event::Message(message)));
        }
    }
}
