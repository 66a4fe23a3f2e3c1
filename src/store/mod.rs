//! Persistence: the [`Store`] interface, its two implementations, and the
//! storage thread that owns the one open store.
//!
//! - [`sqlite`]: the embedded store (default), a file under `DATA_DIR`.
//! - [`postgres`]: chosen when `DATABASE_URL` is set.
//! - [`worker`]: the storage thread. It takes jobs from a channel, commits
//!   appended messages in batches (group commit) and reports each batch back
//!   to the router, which delivers only what was committed.
//!
//! - [`search`]: search words turned into a safe query for each backend.
//! - [`seed`]: `baby-discord seed-unread`, a large history for measurements.
//!
//! Schemas are migration files under `sql/<backend>/`, compiled into the
//! binary and applied in order at start-up, each once.

pub mod postgres;
pub mod search;
pub mod seed;
pub mod sqlite;
pub mod worker;

use std::fmt;

use crate::config::Config;
use crate::event::ChatMessage;

pub use worker::{AppendResult, StoreHandle};

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
}

/// A registered user as stored: the nickname it owns and its password hash
/// (an Argon2id PHC string; never logged or shown).
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: i64,
    pub nickname: String,
    pub password_hash: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account").field("user_id", &self.user_id).field("nickname", &self.nickname).finish_non_exhaustive()
    }
}

/// A private room's owner and who may enter it (the owner included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateRoomRecord {
    pub room_id: i64,
    pub name: String,
    pub owner_id: i64,
    pub owner: String,
    pub allowed: Vec<i64>,
}

/// A stored direct message between two registered users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmRecord {
    pub id: i64,
    pub sender_id: i64,
    pub sender: String,
    pub recipient_id: i64,
    pub recipient: String,
    pub content: String,
    pub created_at_ms: i64,
}

/// One DM conversation of a user, as listed by `GET /api/dms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmConversation {
    /// The other user's nickname.
    pub with: String,
    pub last_id: i64,
    pub last_at_ms: i64,
    /// Messages to this user in the conversation not yet seen.
    pub unread: i64,
}

/// What `/api/rooms` shows of one room's messages, for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomActivity {
    pub room_id: i64,
    /// The room's newest message, if it has any.
    pub last_id: Option<i64>,
    /// Messages after the viewer's read marker (all of them without one).
    pub unread: i64,
    /// `@mentions` of the viewer after their read marker.
    pub mentions: i64,
}

/// How far a read marker moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkedRead {
    /// Whether the user had a marker in the room before.
    pub had_marker: bool,
    /// How many messages it moved over (0: it stayed where it was).
    pub moved: i64,
    /// The message it is at now (`None`: no marker, the room is empty).
    pub at_id: Option<i64>,
}

/// A message accepted by the router and waiting to be committed.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: i64,
    pub room: String,
    pub user_id: i64,
    pub nickname: String,
    pub content: String,
    pub created_at_ms: i64,
    /// The client's own id for the message (`clientMsgId`): if a message
    /// was stored under it before, that one stands and nothing is posted.
    pub client_msg_id: Option<uuid::Uuid>,
    /// An action (`/me`), not plain text.
    pub action: bool,
}

/// Where one message of a batch ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub seq: i64,
    /// `Some(created_at_ms)` of the message stored before under the same
    /// `client_msg_id`: the batch's message was not posted again.
    pub earlier: Option<i64>,
}

impl Stored {
    pub fn new(id: i64, seq: i64) -> Stored {
        Stored { id, seq, earlier: None }
    }
}

impl NewMessage {
    /// The message as committed under `id` at position `seq` of its room.
    pub fn committed(self, id: i64, seq: i64) -> ChatMessage {
        ChatMessage {
            id,
            seq,
            room_id: self.room_id,
            room: self.room,
            user_id: self.user_id,
            nickname: self.nickname,
            content: self.content,
            created_at_ms: self.created_at_ms,
            edited_at_ms: None,
            deleted: false,
            action: self.action,
            rendered: Default::default(),
        }
    }
}

/// Which message an edit or delete is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeTarget {
    /// The message with this id, in whatever room.
    Id(i64),
    /// The user's last message (not deleted) in this room (`/edit`, `/delete`).
    LastOwn { room_id: i64 },
}

/// An edit (`Some(new text)`) or a delete (`None`) asked of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRequest {
    pub target: ChangeTarget,
    /// Who asks: the author may edit and delete; a room's owner may delete.
    pub user_id: i64,
    /// Their nickname, carried into the change (`by`).
    pub by: String,
    pub content: Option<String>,
    pub at_ms: i64,
}

/// What became of a [`ChangeRequest`].
#[derive(Debug)]
pub enum ChangeOutcome {
    Done(crate::event::MessageChange),
    /// No such message (or deleted already), or in a private room the user
    /// may not enter; for `LastOwn`, the user has no message there.
    NotFound,
    /// Someone else's message (and, for a delete, not the room's owner).
    NotYours,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached or dropped the connection.
    Unavailable(String),
    /// A unique name is already taken (e.g. creating a room twice).
    Conflict,
    /// Anything else the database refused.
    Failed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            StoreError::Conflict => write!(f, "already exists"),
            StoreError::Failed(why) => write!(f, "store error: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Everything the server keeps. One implementation per database; the
/// storage thread owns the only instance, so methods take `&mut self`.
pub trait Store: Send {
    /// Names the backend for logs (never includes a password).
    fn describe(&self) -> String;
    /// Every room, oldest first.
    fn rooms(&mut self) -> Result<Vec<RoomRecord>, StoreError>;
    /// Creates a room; `Err(Conflict)` if the name exists.
    fn create_room(&mut self, name: &str, at_ms: i64) -> Result<RoomRecord, StoreError>;
    /// Records a user by nickname (case-insensitively), returning its id.
    fn upsert_user(&mut self, nickname: &str, at_ms: i64) -> Result<i64, StoreError>;
    /// Records a guest by nickname like [`upsert_user`](Self::upsert_user),
    /// unless the nickname is registered: then `Ok(None)` and nothing changes.
    fn upsert_guest(&mut self, nickname: &str, at_ms: i64) -> Result<Option<i64>, StoreError>;
    /// The account that owns a nickname (ignoring case), if it is registered.
    fn account(&mut self, nickname: &str) -> Result<Option<Account>, StoreError>;
    /// The account of a user id, if that user is registered.
    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError>;
    /// Registers a guest user with a password hash; `Ok(false)` (nothing
    /// changed) if it is registered already, so of two racing registrations
    /// exactly one wins.
    fn register(&mut self, user_id: i64, password_hash: &str, at_ms: i64) -> Result<bool, StoreError>;
    /// Replaces a registered user's password hash.
    fn set_password(&mut self, user_id: i64, password_hash: &str) -> Result<(), StoreError>;
    /// Stores a lasting session by the hash of its token.
    fn save_session(&mut self, token_hash: &str, user_id: i64, at_ms: i64, expires_ms: i64) -> Result<(), StoreError>;
    /// The account of a stored session that has not expired at `now_ms`.
    fn session_account(&mut self, token_hash: &str, now_ms: i64) -> Result<Option<Account>, StoreError>;
    /// Of these stored sessions (token hashes), the ones still valid at `now_ms`.
    fn valid_sessions(&mut self, token_hashes: &[String], now_ms: i64) -> Result<Vec<String>, StoreError>;
    /// Forgets a stored session (and any expired ones).
    fn delete_session(&mut self, token_hash: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Stores a DM from a registered user to the account named `recipient`
    /// (ignoring case), committed before it returns; `Ok(None)` if that
    /// nickname is not registered (nothing is stored).
    fn insert_dm(&mut self, sender_id: i64, sender: &str, recipient: &str, content: &str, at_ms: i64)
        -> Result<Option<DmRecord>, StoreError>;
    /// Marks DMs to `recipient_id` as seen.
    fn mark_dms_read(&mut self, recipient_id: i64, ids: &[i64], at_ms: i64) -> Result<(), StoreError>;
    /// DMs to a user not seen yet, oldest first (at most `limit`).
    fn unread_dms(&mut self, recipient_id: i64, limit: usize) -> Result<Vec<DmRecord>, StoreError>;
    /// A user's DM conversations, the most recent first.
    fn dm_conversations(&mut self, user_id: i64) -> Result<Vec<DmConversation>, StoreError>;
    /// Up to `limit` DMs between two users with ids below `before`, oldest first.
    fn dm_history(&mut self, user_id: i64, other_id: i64, before: Option<i64>, limit: usize)
        -> Result<Vec<DmRecord>, StoreError>;
    /// Creates a private room owned by `owner_id` (who may enter it);
    /// `Err(Conflict)` if the name exists.
    fn create_private_room(&mut self, name: &str, owner_id: i64, at_ms: i64) -> Result<RoomRecord, StoreError>;
    /// Every private room with who may enter it.
    fn private_rooms(&mut self) -> Result<Vec<PrivateRoomRecord>, StoreError>;
    /// Lets a user into a private room; `Ok(false)` if they were already.
    fn grant_room(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<bool, StoreError>;
    /// Takes a user's access to a private room away; `Ok(false)` if they had none.
    fn revoke_room(&mut self, room_id: i64, user_id: i64) -> Result<bool, StoreError>;
    /// Records that a user joined a room.
    fn record_join(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<(), StoreError>;
    /// Commits a batch of messages in one transaction, all or nothing, and
    /// returns where each went, in batch order. `seq` numbers each room's
    /// messages 1, 2, 3… without gaps, in commit order across every
    /// instance sharing the store. A message whose `client_msg_id` was
    /// stored before is not inserted: its [`Stored`] is the earlier one's.
    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError>;
    /// Up to `limit` messages of a room with ids below `before` (or the
    /// newest, when `before` is `None`), oldest first, deleted ones included
    /// (flagged, text erased): the ring buffer keeps every position.
    fn messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Up to `limit` messages of a room with ids below `before` (or the
    /// newest), oldest first, leaving deleted ones out: history pages.
    fn visible_messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Edits or deletes a message in one transaction, after checking who
    /// asks: the change is recorded with the room position it happened
    /// after (the room's last `seq`, read under the same per-room order as
    /// commits). A delete erases the text (`content = ''`).
    fn change_message(&mut self, request: &ChangeRequest) -> Result<ChangeOutcome, StoreError>;
    /// The changes of a room a resuming stream missed, in commit order (at
    /// most `limit`): those to messages with ids up to `through_id`, made at
    /// room positions from the `seq` of message `resume_id` on (and before
    /// `before_seq`, if given), with ids above `after_change`. An edit
    /// carries the message's current text; edits of messages deleted since
    /// are left out (their delete follows).
    fn changes_since(&mut self, room_id: i64, query: &ChangesQuery) -> Result<Vec<crate::event::MessageChange>, StoreError>;
    /// Up to `limit` messages of a room with ids above `after`, oldest
    /// first, leaving deleted ones out (stream replays).
    fn messages_after(&mut self, room_id: i64, after: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError>;
    /// Up to `limit` messages of a room from sequence number `from_seq` on,
    /// in order, deleted ones included (flagged, text erased): the order
    /// gate needs every position.
    fn messages_from_seq(&mut self, room_id: i64, from_seq: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError>;
    /// Checks the connection, reconnecting if it was lost.
    fn ping(&mut self) -> Result<(), StoreError>;
    /// For each room (in the order given): its newest message id and, for
    /// `user_id` (a registered user; 0 for nobody), the messages and
    /// `@mentions` after their read marker. Cheap at any history size:
    /// unread is the room's last `seq` minus the marker's.
    fn room_activity(&mut self, user_id: i64, room_ids: &[i64]) -> Result<Vec<RoomActivity>, StoreError>;
    /// Moves a user's read marker in a room forward to the newest message
    /// with an id at or below `up_to_id` (an id beyond the room's last is
    /// clamped to it); a marker never moves back.
    fn mark_read(&mut self, user_id: i64, room_id: i64, up_to_id: i64, at_ms: i64) -> Result<MarkedRead, StoreError>;
    /// Up to `limit` messages of a room whose content has every word of
    /// `words` (see [`search`]), newest first; never an erased (deleted) one.
    fn search(&mut self, room_id: i64, words: &str, limit: usize) -> Result<Vec<ChatMessage>, StoreError>;
}

/// Which changes [`Store::changes_since`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangesQuery {
    pub resume_id: i64,
    pub through_id: i64,
    pub after_change: i64,
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// Opens the store the configuration selects and applies its migrations.
pub fn open(config: &Config) -> Result<Box<dyn Store>, String> {
    match &config.database_url {
        Some(url) => postgres::PostgresStore::open(url)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(|e| format!("cannot use the PostgreSQL database in DATABASE_URL: {e}")),
        None => sqlite::SqliteStore::open(&config.data_dir)
            .map(|s| Box::new(s) as Box<dyn Store>)
            .map_err(|e| format!("cannot open the embedded store in DATA_DIR ({}): {e}", config.data_dir.display())),
    }
}
