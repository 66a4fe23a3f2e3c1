//! The router thread: the only code that changes chat state.
//!
//! It owns every session, nickname, room, membership and per-room ring
//! buffer; its state is private. Two inboxes reach it:
//! - **requests** ([`RouterMsg`]) from adapters, through a [`RouterHandle`]:
//!   logins, commands, messages, streams, and typed read-only [`Query`]s;
//! - **completions** ([`Completion`]) of work it started or subscribed to:
//!   store commits and reads, Redis bus events and nickname claims.
//!
//! Completions are served first: before it takes the next request, the
//! router serves the completions waiting (up to `COMPLETIONS_PER_TURN` in a
//! row, so a stream of them cannot starve requests either), and a commit is
//! never stuck behind a burst of new messages.
//! A ticker drives timers (gap fills, replays, heartbeats, idle sessions).
//! It answers through each request's [`Responder`] and pushes [`Event`]s
//! into session sinks without ever blocking. It knows nothing about
//! sockets, so the same core serves the TCP and HTTP adapters and is driven
//! directly in unit tests.
//!
//! Messages are persisted before they are delivered, and the path of one
//! message is one way: adapter → router (`Say`) → storage thread → router
//! (`Completion::Committed`) → ring buffer and every member's sink →
//! writer pool, echo to the sender included.
//!
//! Its parts: `commands.rs` (what each request does), `streams.rs` (event
//! streams and their replays), `cluster.rs` (other instances and the
//! per-room order gate), `private.rs` (private rooms), `edits.rs` (edits
//! and deletions of messages, and what a resuming stream missed of them).

mod cluster;
mod commands;
mod edits;
mod presence;
mod private;
mod state;
mod streams;
#[cfg(test)]
mod tests;
mod unread;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use uuid::Uuid;

use crate::bus::publisher::ClaimResult;
use crate::bus::subscriber::Incoming;
use crate::bus::BusHandle;
use crate::command::Command;
use crate::config::Config;
use crate::error::ChatError;
use crate::event::{now_ms, ChatMessage, CloseReason, Event, Notice, Protocol, SessionId, Sink};
use crate::metrics::Metrics;
use crate::store::{AppendResult, RoomRecord, StoreError, StoreHandle};

use state::{RateLimiter, Room, RoomSub, Session};

pub use presence::MemberStatus;

/// How a request names its session: by id (TCP, in-process) or by the HTTP
/// `sessionId` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRef {
    Id(SessionId),
    Token(Uuid),
}

/// A successful answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Text to show the user (a TCP user sees exactly this).
    Text(String),
    /// Text the session has already been shown as an event (a DM's echo);
    /// sent to channel responders, not written to the session again.
    Shown(String),
    /// A session's first nickname (guest or account). `missed_dms`: the
    /// block of DMs that reached the account while it was offline, when
    /// the login asked for it and there were some.
    LoggedIn { session: SessionId, user_id: i64, nickname: String, missed_dms: Option<String> },
    /// A named session logged in to an account (`/login`).
    Welcomed { user_id: i64, nickname: String, missed_dms: Option<String> },
    /// A message was committed under `id`.
    Sent { id: i64, room: String, created_at_ms: i64 },
    /// A message was edited (`edited_at_ms`) or deleted (`None`).
    Changed { id: i64, room: String, edited_at_ms: Option<i64> },
    Done,
}

pub type Outcome = Result<Reply, ChatError>;

/// Where the answer to a request goes.
pub enum Responder {
    /// Into the session's own event stream, in order with everything else it
    /// sees (TCP commands: a reply must not overtake or trail room traffic).
    Session,
    /// Back to a waiting caller (HTTP requests, the TCP nickname prompt).
    Channel(Sender<Outcome>),
}

/// A request from an adapter: everything a client can ask of the router.
pub enum RouterMsg {
    /// A new connection or HTTP session, without a nickname yet.
    Open { session: SessionId, protocol: Protocol, token: Option<Uuid>, sink: Option<Arc<dyn Sink>> },
    /// Choose the session's first nickname, as a guest.
    Login { session: SessionRef, nickname: String, reply: Responder },
    /// Log the session in to an account whose password was checked (by
    /// [`crate::accounts`]): a new session's first name, or `/login`.
    /// With `missed_dms`, the answer waits for the DMs the account missed
    /// while offline (see [`Reply::LoggedIn`]).
    LoginAccount { session: SessionRef, user_id: i64, nickname: String, missed_dms: bool, reply: Responder },
    /// Register the session's guest nickname with this password hash.
    Register { session: SessionRef, password_hash: String, reply: Responder },
    /// An answer worked out outside the router (account commands), shown
    /// in the session's stream in order with everything else.
    Answer { session: SessionId, outcome: Outcome },
    Command { session: SessionRef, command: Command, reply: Responder },
    /// A chat message for the current room (`room`, if given, must match
    /// it). With `client_msg_id`, a message already stored under that id
    /// is answered again instead of posting a new one. `action`: an action
    /// (`/me`), shown as `[room] * nick text`.
    Say { session: SessionRef, text: String, room: Option<String>, client_msg_id: Option<Uuid>, action: bool, reply: Responder },
    /// Edit (`content`) or delete (`None`) a message: by id, or the
    /// session's last one in its room (then answered with the text a TCP
    /// user sees). Answered once the change is committed.
    Change { session: SessionRef, id: Option<i64>, content: Option<String>, reply: Responder },
    /// The session is typing in its current room (answered `Done`; passed
    /// on at most once per `TYPING_INTERVAL_MS`).
    Typing { session: SessionRef, reply: Responder },
    /// Attach an event stream to an HTTP session, joining `room` if needed
    /// (`None`: the session's current room, or none). With `after`, the
    /// stream starts with the room's messages after that id (read back from
    /// the store if need be) instead of the recent history. Answered with
    /// the session once the stream is the session's. Attaching the stream
    /// the session already has (a WebSocket joining a room) moves it
    /// without closing it.
    AttachStream {
        session: SessionRef,
        room: Option<String>,
        sink: Arc<dyn Sink>,
        after: Option<i64>,
        reply: Sender<Result<SessionId, ChatError>>,
    },
    /// An event stream ended; the session stays (HTTP idle expiry applies).
    DetachStream { session: SessionId, sink: Arc<dyn Sink> },
    /// Input the adapter refused (too long, not UTF-8, unknown command),
    /// answered through the session's stream in order with everything else.
    Refuse { session: SessionId, error: ChatError },
    /// The connection is gone (or `POST /api/disconnect`).
    Close { session: SessionRef },
    /// A read-only question about the state, with a typed answer.
    Query(Query),
    /// Stop: finish pending commits, tell everyone, close every session.
    Shutdown,
}

/// The outcome of work the router started (store calls) or listens to (the
/// Redis bus). Served before any waiting request.
pub enum Completion {
    /// Results of a group commit, in commit order.
    Committed(Vec<AppendResult>),
    /// A store call the router started has finished.
    StoreDone(StoreDone),
    /// From the Redis subscriber: another instance's event, or up/down.
    Bus(Incoming),
    /// The answer to a service-wide nickname claim.
    Claimed(ClaimResult),
    /// Messages read back from the store to fill a gap or catch up.
    Fetched { room: String, messages: Vec<ChatMessage>, limit: usize },
    /// Every room, read back from the store (rooms created elsewhere).
    RoomsLoaded(Vec<RoomRecord>),
    /// Of the registered HTTP sessions checked, the token hashes the store
    /// still holds (valid, not logged out, not expired).
    SessionsChecked { checked: Vec<(SessionId, String)>, valid: Vec<String> },
    /// Who may enter each private room, read back from the store.
    PrivateRoomsLoaded(Vec<crate::store::PrivateRoomRecord>),
    /// A page of a stream's replay, read back from the store.
    Replayed { session: SessionId, serial: u64, page: Result<streams::ReplayPage, StoreError> },
    /// A room's recent messages, read once this instance listens to it.
    Warmed { room: String, messages: Result<Vec<ChatMessage>, StoreError> },
}

/// The router's two inboxes, made before the threads that report into
/// them (the storage thread, the bus) and handed to [`Router::new`].
pub struct Inboxes {
    requests: (Sender<RouterMsg>, Receiver<RouterMsg>),
    completions: (Sender<Completion>, Receiver<Completion>),
}

impl Inboxes {
    /// Where the storage thread and the bus report to the router.
    pub fn completions(&self) -> Sender<Completion> {
        self.completions.0.clone()
    }
}

/// A read-only question to the router. Each carries the channel its
/// answer goes to, typed by the question.
pub enum Query {
    /// Proves the router thread is alive and taking requests.
    Ping(Sender<()>),
    /// Every room here with its service-wide member count, sorted by name:
    /// the public ones, and the private ones `viewer` may enter.
    Rooms { viewer: Option<SessionRef>, reply: Sender<Vec<RoomSummary>> },
    /// The members of a room on every instance with their status, sorted;
    /// `None` if the room does not exist (or is private and not `viewer`'s).
    Members { room: String, viewer: Option<SessionRef>, reply: Sender<Option<Vec<MemberStatus>>> },
    /// A room's store id and ring-buffer state; `None` if it does not exist
    /// (or is private and not `viewer`'s).
    Room { room: String, viewer: Option<SessionRef>, reply: Sender<Option<RoomInfo>> },
    /// The session an HTTP `sessionId` names, if any.
    Session { token: Uuid, reply: Sender<Option<SessionId>> },
    /// Who a session is: its user and whether that is an account.
    Identity { session: SessionRef, reply: Sender<Option<Identity>> },
}

/// Who a session is logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub session: SessionId,
    /// 0 while the session has no nickname yet.
    pub user_id: i64,
    /// Empty while the session has no nickname yet.
    pub nickname: String,
    pub registered: bool,
}

/// One line of the room list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    /// The room's id in the store.
    pub id: i64,
    pub name: String,
    /// Members on every instance.
    pub members: usize,
    pub created_at_ms: i64,
}

/// What a caller outside the router may know of one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room's id in the store.
    pub id: i64,
    /// Id of the newest message the ring buffer no longer holds (0: none).
    pub evicted_up_to: i64,
}

/// Completions of store calls the router made for itself.
pub enum StoreDone {
    UserRecorded { session: SessionId, nickname: String, rename: bool, result: Result<Option<i64>, StoreError>, reply: Responder },
    RoomCreated { session: SessionId, name: String, private: bool, result: Result<RoomRecord, StoreError>, reply: Responder },
    /// `/invite` or `/kick` was stored (`None`: no such account).
    AccessChanged {
        session: SessionId,
        room: String,
        nick: String,
        change: private::AccessChange,
        result: Result<Option<(crate::store::Account, bool)>, StoreError>,
        reply: Responder,
    },
    /// A DM between registered users, stored (`None`: the recipient is no account).
    DmStored {
        session: SessionId,
        to: String,
        text: String,
        result: Result<Option<crate::store::DmRecord>, StoreError>,
        reply: Responder,
    },
    /// Whether a nickname taken elsewhere is an account's.
    TakenChecked { session: SessionId, nickname: String, registered: bool, reply: Responder },
    /// `Ok(false)`: the nickname was registered already.
    Registered { session: SessionId, result: Result<bool, StoreError>, reply: Responder },
    /// An edit or delete was committed, or refused.
    MessageChanged {
        session: SessionId,
        target: edits::Target,
        delete: bool,
        result: Result<crate::store::ChangeOutcome, StoreError>,
        reply: Responder,
    },
    /// A registered TCP user's read marker moved as they joined `room`.
    MarkedOnJoin { session: SessionId, room: String, result: Result<crate::store::MarkedRead, StoreError> },
    /// `/search` found these (newest first).
    Searched { session: SessionId, result: Result<Vec<ChatMessage>, StoreError>, reply: Responder },
    /// The DMs an account missed while offline were read (and marked
    /// read), for the login waiting on them: `answer` is its reply.
    MissedDms { session: SessionId, result: Result<Vec<crate::store::DmRecord>, StoreError>, answer: Reply, reply: Responder },
}

/// A cloneable handle for sending requests to the router.
#[derive(Clone)]
pub struct RouterHandle {
    tx: Sender<RouterMsg>,
}

/// The longest a caller waits for the router (it never should this long).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl RouterHandle {
    pub fn send(&self, msg: RouterMsg) {
        let _ = self.tx.send(msg);
    }

    /// Sends a request built around a reply channel and waits for the answer.
    pub fn call(&self, build: impl FnOnce(Responder) -> RouterMsg) -> Outcome {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(build(Responder::Channel(tx)));
        rx.recv_timeout(CALL_TIMEOUT).unwrap_or(Err(ChatError::ShuttingDown))
    }

    /// Asks the router a question and waits at most `timeout` for the
    /// answer; `None` if none came (the router is stopping, or stuck).
    pub fn ask<T>(&self, question: impl FnOnce(Sender<T>) -> Query, timeout: Duration) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(RouterMsg::Query(question(tx)));
        rx.recv_timeout(timeout).ok()
    }

    /// Whether the router answers a request within `deadline`.
    pub fn ping(&self, deadline: Duration) -> bool {
        self.ask(Query::Ping, deadline).is_some()
    }

    /// Every public room with its member count, sorted by name.
    pub fn rooms(&self) -> Result<Vec<RoomSummary>, ChatError> {
        self.rooms_for(None)
    }

    /// Every room `viewer` may know of, with its member count, sorted by name.
    pub fn rooms_for(&self, viewer: Option<SessionRef>) -> Result<Vec<RoomSummary>, ChatError> {
        self.ask(|reply| Query::Rooms { viewer, reply }, CALL_TIMEOUT).ok_or(ChatError::ShuttingDown)
    }

    /// The members of `room` (a normalized name); `None` if there is no such room.
    pub fn members(&self, room: &str) -> Result<Option<Vec<MemberStatus>>, ChatError> {
        self.members_for(room, None)
    }

    /// The members of `room` as `viewer` may know them.
    pub fn members_for(&self, room: &str, viewer: Option<SessionRef>) -> Result<Option<Vec<MemberStatus>>, ChatError> {
        let room = room.to_string();
        self.ask(|reply| Query::Members { room, viewer, reply }, CALL_TIMEOUT).ok_or(ChatError::ShuttingDown)
    }

    /// What is known of `room` (a normalized name); `None` if there is no such room.
    pub fn room(&self, room: &str) -> Result<Option<RoomInfo>, ChatError> {
        self.room_for(room, None)
    }

    /// What `viewer` may know of `room`.
    pub fn room_for(&self, room: &str, viewer: Option<SessionRef>) -> Result<Option<RoomInfo>, ChatError> {
        let room = room.to_string();
        self.ask(|reply| Query::Room { room, viewer, reply }, CALL_TIMEOUT).ok_or(ChatError::ShuttingDown)
    }

    /// Who a session is; `None` if there is no such session.
    pub fn identity(&self, session: SessionRef) -> Result<Option<Identity>, ChatError> {
        self.ask(|reply| Query::Identity { session, reply }, CALL_TIMEOUT).ok_or(ChatError::ShuttingDown)
    }

    /// The session of an HTTP `sessionId`; `None` if there is none.
    pub fn session(&self, token: Uuid) -> Result<Option<SessionId>, ChatError> {
        self.ask(|reply| Query::Session { token, reply }, CALL_TIMEOUT).ok_or(ChatError::ShuttingDown)
    }
}

/// Settings the router needs from [`Config`].
#[derive(Clone)]
pub struct RouterSettings {
    pub instance_id: String,
    pub history_size: usize,
    /// Edits and deletions kept per room for streams that resume.
    pub change_log_size: usize,
    pub announce_limit: usize,
    pub max_message_chars: usize,
    pub msg_rate: u32,
    pub msg_burst: u32,
    pub session_idle: Duration,
    pub store_queue_max: usize,
    /// A stream's backlog (bytes) under which its replay reads on.
    pub replay_backlog: usize,
    /// How much one `/search` may ask for.
    pub search: crate::store::search::SearchLimits,
    /// Longest away message in characters.
    pub max_away_chars: usize,
    /// A session's typing signals are passed on at most this often.
    pub typing_interval: Duration,
}

impl RouterSettings {
    pub fn from_config(config: &Config) -> RouterSettings {
        RouterSettings {
            instance_id: config.instance_id.clone(),
            history_size: config.history_size,
            change_log_size: config.change_log_size,
            announce_limit: config.announce_limit,
            max_message_chars: config.limits.max_message_chars,
            msg_rate: config.limits.msg_rate,
            msg_burst: config.limits.msg_burst,
            session_idle: config.limits.session_idle,
            store_queue_max: config.limits.store_queue_max,
            replay_backlog: config.limits.sendq_bytes / 2,
            search: config.limits.search,
            max_away_chars: config.limits.max_away_chars,
            typing_interval: config.limits.typing_interval,
        }
    }
}

/// A message waiting for its commit.
struct PendingSend {
    session: SessionId,
    reply: Responder,
    /// When the router accepted it, for the delivery latency metric.
    accepted: Instant,
    /// The client's id for the message (`clientMsgId`), if it gave one.
    client_msg_id: Option<Uuid>,
    /// Retries of the same `clientMsgId` that came while this one was
    /// being committed: they get its answer.
    retries: Vec<(SessionId, Responder)>,
}

/// A nickname waiting for its service-wide claim.
struct PendingClaim {
    rename: bool,
    reply: Responder,
}

/// The chat state, owned by the router thread and private to the router:
/// others ask [`Query`]s.
pub struct RouterState {
    settings: RouterSettings,
    sessions: HashMap<SessionId, Session>,
    tokens: HashMap<Uuid, SessionId>,
    /// Lower-case nickname → session, including nicknames reserved while
    /// the store records them.
    nicknames: HashMap<String, SessionId>,
    /// The sessions logged in to each account (user id), several at once.
    account_sessions: HashMap<i64, Vec<SessionId>>,
    /// Rooms by (lower-case) name, sorted for `/rooms`.
    rooms: BTreeMap<String, Room>,
    /// Private rooms by name: who may enter them.
    private: HashMap<String, private::PrivateRoom>,
    /// Room names whose creation is being stored.
    creating: std::collections::HashSet<String>,
    pending_sends: HashMap<u64, PendingSend>,
    /// Client message ids of `pending_sends`, to their tickets.
    pending_client_ids: HashMap<Uuid, u64>,
    next_ticket: u64,
    store: StoreHandle,
    /// The router's completion inbox, for store calls it starts.
    inbox: Sender<Completion>,
    metrics: Arc<Metrics>,
    stopping: Option<Instant>,
    /// This instance's id, as other instances know it.
    instance: String,
    /// The Redis bus; `None` for a single instance.
    bus: Option<BusHandle>,
    /// Other instances and their users, as last heard on the bus.
    remote: HashMap<String, cluster::RemoteInstance>,
    pending_claims: HashMap<SessionId, PendingClaim>,
    /// Requests waiting for their room to be subscribed and read back,
    parked: HashMap<String, Vec<RouterMsg>>,
    /// and the sessions whose requests wait there.
    parked_sessions: HashMap<SessionId, String>,
    /// Whether the bus subscription is up (as last reported).
    bus_up: bool,
    /// Streams catching up from the store, not yet attached.
    replays: HashMap<SessionId, streams::Replay>,
    next_replay: u64,
    last_heartbeat: Instant,
    last_second: Instant,
    last_session_check: Instant,
}

/// The router thread's loop around [`RouterState`].
pub struct Router {
    state: RouterState,
    /// Kept only to make handles before the thread starts; dropped then, so
    /// the loop ends when every handle is gone.
    requests_tx: Option<Sender<RouterMsg>>,
    requests: Receiver<RouterMsg>,
    completions: Receiver<Completion>,
}

/// How often registered users' HTTP sessions are checked against the store
/// (a logout on another instance, an expiry), and how old a session must be
/// to be checked (it is stored just after its login).
const SESSION_CHECK_EVERY: Duration = Duration::from_secs(5);
const SESSION_CHECK_AFTER: Duration = Duration::from_secs(5);

/// How often the router looks at timers (gaps, heartbeats, idle sessions).
const TICK: Duration = Duration::from_millis(100);
/// How long shutdown waits for messages already handed to the store.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most completions served in a row before the next request is looked at,
/// so a stream of completions cannot starve requests.
const COMPLETIONS_PER_TURN: usize = 16;
/// Capacity of the request inbox; adapters wait when it is full.
const INBOX_CAPACITY: usize = 65_536;
/// Capacity of the completion inbox; the storage thread and the bus wait
/// when it is full (never for long: completions are served first). Smaller
/// than the request inbox because a bounded channel allocates every slot
/// up front.
const COMPLETIONS_CAPACITY: usize = 4096;

impl Router {
    /// Builds the router with the rooms and recent history read from the
    /// store at start-up, around `inboxes` (see [`Router::inboxes`]).
    pub fn new(
        settings: RouterSettings,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        rooms: Vec<(RoomRecord, Vec<ChatMessage>)>,
        inboxes: Inboxes,
        bus: Option<BusHandle>,
    ) -> Router {
        let Inboxes { requests: (requests_tx, requests), completions: (inbox, completions) } = inboxes;
        let mut state = RouterState {
            instance: settings.instance_id.clone(),
            bus,
            remote: HashMap::new(),
            pending_claims: HashMap::new(),
            parked: HashMap::new(),
            parked_sessions: HashMap::new(),
            bus_up: false,
            replays: HashMap::new(),
            next_replay: 0,
            last_heartbeat: Instant::now(),
            last_second: Instant::now(),
            last_session_check: Instant::now(),
            settings,
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            nicknames: HashMap::new(),
            account_sessions: HashMap::new(),
            rooms: BTreeMap::new(),
            private: HashMap::new(),
            creating: Default::default(),
            pending_sends: HashMap::new(),
            pending_client_ids: HashMap::new(),
            next_ticket: 1,
            store,
            inbox,
            metrics,
            stopping: None,
        };
        for (record, history) in rooms {
            let mut room = Room::new(record.id, record.name.clone(), record.created_at_ms);
            if state.bus.is_some() {
                room.sub = RoomSub::Cold;
            }
            for message in history {
                room.next_seq = room.next_seq.max(message.seq + 1);
                room.remember(Arc::new(message), state.settings.history_size);
            }
            room.reset_changes();
            state.rooms.insert(record.name, room);
        }
        Router { state, requests_tx: Some(requests_tx), requests, completions }
    }

    /// The router's inboxes; make them before the storage thread and the
    /// bus, which report into [`Inboxes::completions`].
    pub fn inboxes() -> Inboxes {
        Inboxes {
            requests: crossbeam_channel::bounded(INBOX_CAPACITY),
            completions: crossbeam_channel::bounded(COMPLETIONS_CAPACITY),
        }
    }

    /// Who may enter each private room, as stored (before the router runs).
    pub fn set_private_rooms(&mut self, rooms: Vec<crate::store::PrivateRoomRecord>) {
        self.state.load_private_rooms(rooms);
    }

    pub fn handle(&self) -> RouterHandle {
        RouterHandle { tx: self.requests_tx.clone().expect("handles are made before the router runs") }
    }

    pub fn spawn(self) -> JoinHandle<()> {
        crate::vital::spawn("router", None, move || self.run()).expect("spawn router thread")
    }

    /// Handles messages until shutdown has finished (or every handle is gone).
    pub fn run(mut self) {
        self.requests_tx = None;
        let ticker = crossbeam_channel::tick(TICK);
        loop {
            // Completions first: what the store and the bus finished is
            // served before any request waiting behind it (a bounded number:
            // an unbounded drain starved requests during a login storm).
            for done in self.completions.try_iter().take(COMPLETIONS_PER_TURN) {
                self.state.complete(done);
            }
            select! {
                recv(self.completions) -> done => {
                    if let Ok(done) = done {
                        self.state.complete(done);
                    }
                }
                recv(self.requests) -> msg => match msg {
                    Ok(msg) => self.state.handle(msg),
                    Err(_) => break,
                },
                recv(ticker) -> _ => self.state.tick(Instant::now()),
            }
            if let Some(since) = self.state.stopping {
                if self.state.pending_sends.is_empty() || since.elapsed() > SHUTDOWN_GRACE {
                    break;
                }
            }
        }
        self.state.close_everyone();
        log::info!("router stopped");
    }
}

impl RouterState {
    /// Handles one request.
    fn handle(&mut self, msg: RouterMsg) {
        // A request entering a room this instance does not listen to waits
        // until it does and has read the room back from the store.
        // Its session's later requests wait behind it, in order.
        let session = self.session_of(&msg);
        let waiting_room = session.and_then(|id| self.parked_sessions.get(&id).cloned());
        if let Some(room) = waiting_room.or_else(|| self.room_to_warm(&msg)) {
            self.warm_up(&room);
            if let Some(id) = session {
                self.parked_sessions.insert(id, room.clone());
            }
            return self.parked.entry(room).or_default().push(msg);
        }
        match msg {
            RouterMsg::Open { session, protocol, token, sink } => self.open(session, protocol, token, sink),
            RouterMsg::Login { session, nickname, reply } => match self.resolve(session) {
                Ok(id) => self.login(id, nickname, reply),
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::LoginAccount { session, user_id, nickname, missed_dms, reply } => match self.resolve(session) {
                Ok(id) => self.login_account(id, user_id, nickname, missed_dms, reply),
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::Register { session, password_hash, reply } => match self.resolve(session) {
                Ok(id) => self.register(id, password_hash, reply),
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::Answer { session, outcome } => self.respond_to(Some(session), Responder::Session, outcome),
            RouterMsg::Command { session, command, reply } => match self.resolve(session) {
                Ok(id) => self.command(id, command, reply),
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::Say { session, text, room, client_msg_id, action, reply } => match self.resolve(session) {
                Ok(id) => self.say(id, text, room, client_msg_id, action, reply),
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::Typing { session, reply } => match self.resolve(session) {
                Ok(id) => {
                    let outcome = self.typing(id);
                    self.respond_to(Some(id), reply, outcome)
                }
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::Change { session, id, content, reply } => match self.resolve(session) {
                Ok(sid) => {
                    let target = id.map_or(edits::Target::LastOwn, edits::Target::Id);
                    self.change_message(sid, target, content, reply)
                }
                Err(e) => self.respond_to(None, reply, Err(e)),
            },
            RouterMsg::AttachStream { session, room, sink, after, reply } => {
                let outcome = self.resolve(session).and_then(|id| self.attach_stream(id, room.as_deref(), sink, after).map(|()| id));
                let _ = reply.send(outcome);
            }
            RouterMsg::Refuse { session, error } => self.deliver_to(session, Event::Error(error)),
            RouterMsg::DetachStream { session, sink } => self.detach_stream(session, &sink),
            RouterMsg::Close { session } => {
                if let Ok(id) = self.resolve(session) {
                    self.end_session(id, CloseReason::Normal);
                }
            }
            RouterMsg::Query(query) => self.answer(query),
            RouterMsg::Shutdown => {
                log::info!("router shutting down; {} messages still being committed", self.pending_sends.len());
                self.stopping = Some(Instant::now());
            }
        }
    }

    /// The session a request comes from, if it names one that exists.
    fn session_of(&self, msg: &RouterMsg) -> Option<SessionId> {
        let session = match msg {
            RouterMsg::Login { session, .. }
            | RouterMsg::Command { session, .. }
            | RouterMsg::Say { session, .. }
            | RouterMsg::Change { session, .. }
            | RouterMsg::Typing { session, .. }
            | RouterMsg::AttachStream { session, .. }
            | RouterMsg::Close { session } => *session,
            RouterMsg::Refuse { session, .. } | RouterMsg::DetachStream { session, .. } => SessionRef::Id(*session),
            _ => return None,
        };
        match session {
            SessionRef::Id(id) => Some(id),
            SessionRef::Token(token) => self.tokens.get(&token).copied(),
        }
    }

    /// Handles one completion.
    fn complete(&mut self, done: Completion) {
        match done {
            Completion::Committed(results) => self.committed(results),
            Completion::StoreDone(done) => self.store_done(done),
            Completion::Bus(incoming) => self.bus_incoming(incoming),
            Completion::Claimed(result) => self.claimed(result),
            Completion::Fetched { room, messages, limit } => self.fetched(room, messages, limit),
            Completion::RoomsLoaded(rooms) => self.rooms_loaded(rooms),
            Completion::PrivateRoomsLoaded(rooms) => self.private_rooms_loaded(rooms),
            Completion::SessionsChecked { checked, valid } => self.sessions_checked(checked, valid),
            Completion::Replayed { session, serial, page } => self.replayed(session, serial, page),
            Completion::Warmed { room, messages } => self.warmed(room, messages),
        }
    }

    /// Finds a session, refreshing its idle timer.
    fn resolve(&mut self, session: SessionRef) -> Result<SessionId, ChatError> {
        let id = match session {
            SessionRef::Id(id) => id,
            SessionRef::Token(token) => *self.tokens.get(&token).ok_or(ChatError::UnknownSession)?,
        };
        let session = self.sessions.get_mut(&id).ok_or(ChatError::UnknownSession)?;
        session.last_active = Instant::now();
        if self.stopping.is_some() {
            return Err(ChatError::ShuttingDown);
        }
        Ok(id)
    }

    fn open(&mut self, id: SessionId, protocol: Protocol, token: Option<Uuid>, sink: Option<Arc<dyn Sink>>) {
        if self.stopping.is_some() {
            if let Some(sink) = sink {
                sink.close(CloseReason::Shutdown);
            }
            return;
        }
        let rate = RateLimiter::new(self.settings.msg_rate, self.settings.msg_burst);
        if let Some(token) = token {
            self.tokens.insert(token, id);
            self.metrics.http_sessions.fetch_add(1, Relaxed);
        }
        self.sessions.insert(id, Session::new(id, protocol, token, sink, rate));
    }

    /// Sends an outcome where the request asked; `session` is needed only
    /// for [`Responder::Session`].
    fn respond_to(&mut self, session: Option<SessionId>, reply: Responder, outcome: Outcome) {
        match reply {
            Responder::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            Responder::Session => {
                let event = match outcome {
                    Ok(Reply::Text(text)) => Event::Reply(text),
                    Ok(_) => return,
                    Err(error) => Event::Error(error),
                };
                if let Some(id) = session {
                    self.deliver_to(id, event);
                }
            }
        }
    }

    /// Queues an event for one session, dropping the session if it overflows.
    fn deliver_to(&mut self, id: SessionId, event: Event) {
        let overflow = match self.sessions.get(&id) {
            Some(session) => session.deliver(event).is_err(),
            None => false,
        };
        if overflow {
            self.drop_slow(vec![id]);
        }
    }

    /// Queues an event for every member of a room (optionally but one).
    fn deliver_to_room(&mut self, room: &str, event: &Event, except: Option<SessionId>) {
        let Some(members) = self.rooms.get(room).map(|r| &r.members) else { return };
        let mut slow = Vec::new();
        let mut delivered = 0;
        for id in members {
            if Some(*id) == except {
                continue;
            }
            if let Some(session) = self.sessions.get(id) {
                match session.deliver(event.clone()) {
                    Ok(()) => delivered += 1,
                    Err(_) => slow.push(*id),
                }
            }
        }
        self.metrics.deliveries.fetch_add(delivered, Relaxed);
        if !slow.is_empty() {
            self.drop_slow(slow);
        }
    }

    /// Disconnects sessions whose queue overflowed.
    fn drop_slow(&mut self, ids: Vec<SessionId>) {
        for id in ids {
            if self.sessions.contains_key(&id) {
                log::info!("dropping session {:?}: its outbound queue is full", id);
                let transport = self.sessions[&id].sink.as_ref().and_then(|s| s.transport());
                self.metrics.record_slow_drop(transport);
                self.end_session(id, CloseReason::TooSlow);
            }
        }
    }

    /// A `[system]` notice to a room's members, here and on every other
    /// instance (after the room messages delivered here so far).
    fn announce(&mut self, room: &str, text: String, except: Option<SessionId>) {
        let at_ms = now_ms();
        if let Some(after_seq) = self.rooms.get(room).map(|r| r.next_seq) {
            self.publish_notice(room, after_seq, &text, at_ms);
        }
        let notice = Event::Notice(Arc::new(Notice { room: Some(room.to_string()), text, at_ms, rendered: Default::default() }));
        self.deliver_to_room(room, &notice, except);
    }

    /// Whether joins and leaves are announced in this room (ANNOUNCE_LIMIT),
    /// counting its members on every instance.
    fn announces(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| {
            r.members.len() + self.remote_members(Some(room)).count() <= self.settings.announce_limit
        })
    }

    /// Removes a session from its room, telling the others why. Callers
    /// that keep the session tell other instances where it is now.
    fn leave_room(&mut self, id: SessionId, notice: impl FnOnce(&str, &str) -> String) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let Some(room_name) = session.room.take() else { return };
        let nick = session.nick().to_string();
        let announce = self.announces(&room_name);
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.members.remove(&id);
        }
        self.marker_on_leave(id, &room_name);
        if announce {
            self.announce(&room_name, notice(&nick, &room_name), None);
        }
        self.cool(&room_name);
    }

    /// Ends a session: leaves its room, frees its nickname, closes its sink.
    pub(crate) fn end_session(&mut self, id: SessionId, reason: CloseReason) {
        let named = self.sessions.get(&id).is_some_and(|s| s.nickname.is_some());
        let was_in = self.sessions.get(&id).and_then(|s| s.room.clone());
        if named {
            self.leave_room(id, |nick, _| format!("{nick} disconnected"));
        }
        let Some(session) = self.sessions.remove(&id) else { return };
        self.pending_claims.remove(&id);
        self.end_replay(id, reason);
        let others = if session.registered { self.leave_account(id, session.user_id) } else { None };
        if let Some(nick) = &session.nickname {
            if others.is_none() {
                self.announce_gone(nick);
            }
        }
        let offline = session.nickname.clone().filter(|_| others.is_none());
        for nick in session.nickname.iter().chain(session.pending_nickname.iter()) {
            let key = crate::names::name_key(nick);
            if self.nicknames.get(&key) == Some(&id) {
                match others {
                    Some(other) => self.nicknames.insert(key, other),
                    None => self.nicknames.remove(&key),
                };
            }
        }
        if let Some(token) = session.token {
            self.tokens.remove(&token);
            self.metrics.http_sessions.fetch_sub(1, Relaxed);
        }
        if let Some(sink) = session.sink {
            sink.close(reason);
        }
        if let Some(nick) = offline {
            self.went_offline(&nick, was_in);
        }
    }

    /// Every tick: fill gaps; once a second: bus upkeep, expire idle HTTP sessions.
    fn tick(&mut self, now: Instant) {
        self.fill_gaps(now);
        self.flush_typing(now);
        self.warm_overdue(now);
        self.step_replays();
        if now.duration_since(self.last_second) < Duration::from_secs(1) {
            return;
        }
        self.last_second = now;
        self.bus_tick(now);
        if now.duration_since(self.last_session_check) >= SESSION_CHECK_EVERY {
            self.last_session_check = now;
            self.check_lasting_sessions(now);
        }
        let idle = self.settings.session_idle;
        let expired: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.protocol == Protocol::Http && s.sink.is_none() && !self.replays.contains_key(&s.id))
            .filter(|s| now.duration_since(s.last_active) > idle)
            .map(|s| s.id)
            .collect();
        for id in expired {
            log::info!("HTTP session {:?} expired after {:?} idle", id, idle);
            self.end_session(id, CloseReason::Expired);
        }
    }

    /// Asks the store which registered HTTP sessions are still valid.
    fn check_lasting_sessions(&mut self, now: Instant) {
        let checked: Vec<(SessionId, String)> = self
            .sessions
            .values()
            .filter(|s| s.registered && now.duration_since(s.opened) >= SESSION_CHECK_AFTER)
            .filter_map(|s| Some((s.id, crate::accounts::token_hash(&s.token?))))
            .collect();
        if checked.is_empty() {
            return;
        }
        let inbox = self.inbox.clone();
        self.store.run(move |store| {
            let hashes: Vec<String> = checked.iter().map(|(_, h)| h.clone()).collect();
            match store.valid_sessions(&hashes, now_ms()) {
                Ok(valid) => {
                    let _ = inbox.send(Completion::SessionsChecked { checked, valid });
                }
                Err(e) => log::debug!("cannot check lasting sessions: {e}"),
            }
        });
    }

    /// Ends the sessions logged out elsewhere or expired.
    fn sessions_checked(&mut self, checked: Vec<(SessionId, String)>, valid: Vec<String>) {
        let valid: std::collections::HashSet<String> = valid.into_iter().collect();
        for (id, hash) in checked {
            if !valid.contains(&hash) && self.sessions.get(&id).is_some_and(|s| s.registered) {
                log::info!("HTTP session {:?} was logged out or expired", id);
                self.end_session(id, CloseReason::Expired);
            }
        }
    }

    /// Shutdown: tell every session, then close them all.
    fn close_everyone(&mut self) {
        let notice = Event::Notice(Arc::new(Notice {
            room: None,
            text: "Server is shutting down. Goodbye!".into(),
            at_ms: now_ms(),
            rendered: Default::default(),
        }));
        for session in self.sessions.values() {
            let _ = session.deliver(notice.clone());
            if let Some(sink) = &session.sink {
                sink.close(CloseReason::Shutdown);
            }
        }
        for (_, replay) in self.replays.drain() {
            replay.sink.close(CloseReason::Shutdown);
        }
        self.sessions.clear();
    }

    /// Answers a read-only question.
    fn answer(&mut self, query: Query) {
        match query {
            Query::Ping(reply) => {
                let _ = reply.send(());
            }
            Query::Rooms { viewer, reply } => {
                let viewer = viewer.and_then(|v| self.resolve(v).ok());
                let _ = reply.send(self.room_list(viewer));
            }
            Query::Members { room, viewer, reply } => {
                let viewer = viewer.and_then(|v| self.resolve(v).ok());
                let members = if self.can_see(&room, viewer) { self.member_statuses(&room) } else { None };
                let _ = reply.send(members);
            }
            Query::Room { room, viewer, reply } => {
                let viewer = viewer.and_then(|v| self.resolve(v).ok());
                let info = self
                    .rooms
                    .get(&room)
                    .filter(|_| self.can_see(&room, viewer))
                    .map(|r| RoomInfo { id: r.id, evicted_up_to: r.evicted_up_to });
                let _ = reply.send(info);
            }
            Query::Session { token, reply } => {
                let _ = reply.send(self.tokens.get(&token).copied());
            }
            Query::Identity { session, reply } => {
                let identity = self.resolve(session).ok().and_then(|id| self.sessions.get(&id)).map(|s| Identity {
                    session: s.id,
                    user_id: s.user_id,
                    nickname: s.nickname.clone().unwrap_or_default(),
                    registered: s.registered,
                });
                let _ = reply.send(identity);
            }
        }
    }

    /// Room names with service-wide member counts, sorted by name: public
    /// rooms and the private ones `viewer` may enter.
    fn room_list(&self, viewer: Option<SessionId>) -> Vec<RoomSummary> {
        self.rooms
            .values()
            .filter(|r| self.can_see(&r.name, viewer))
            .map(|r| RoomSummary {
                id: r.id,
                name: r.name.clone(),
                members: r.members.len() + self.remote_members(Some(&r.name)).count(),
                created_at_ms: r.created_at_ms,
            })
            .collect()
    }

}
