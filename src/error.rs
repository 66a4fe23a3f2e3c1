//! Every refusal a user can see, as one enum.
//!
//! The router and the adapters return these; each adapter renders them in
//! one place (a TCP `Error: …` line, an HTTP status with a JSON `error`).
//! The `Display` text is the sentence after `Error: `: it says what was
//! wrong and what to do. Many variants carry text the user sent (a name, a
//! command); `Display` cleans it like a delivered message, so no refusal
//! can echo an escape sequence or a bidi control back to a terminal.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    InvalidNickname(String),
    NicknameTaken(String),
    InvalidRoomName(String),
    NoSuchRoom(String),
    RoomExists(String),
    AlreadyInRoom(String),
    NotInRoom,
    /// The message names a room other than the one the session is in.
    WrongRoom { current: String, requested: String },
    UserNotOnline(String),
    DmToSelf,
    EmptyMessage,
    MessageTooLong { max: usize },
    LineTooLong { max: usize },
    InvalidUtf8,
    UnknownCommand(String),
    Usage(&'static str),
    NoNickname,
    AlreadyNamed,
    RateLimited { per_second: u32 },
    UnknownSession,
    /// The store could not commit; nothing was delivered.
    StoreUnavailable,
    /// Too much is waiting for the store; try again shortly.
    Busy,
    ServerFull,
    ShuttingDown,
    /// A guest asked for a nickname that an account owns.
    NicknameRegistered(String),
    /// The password given for an account is not its password.
    WrongPassword(String),
    /// `/login` (or a password) for a nickname that is not registered.
    NoAccount(String),
    TooManyLoginAttempts { secs: u64 },
    /// A new password breaks the rules; the text says which.
    InvalidPassword(&'static str),
    /// `/register` of a nickname that is registered already.
    AlreadyRegistered(String),
    /// An account-only action (`/password`) by a guest.
    NotRegistered,
    /// `/nick` by a registered user: the name is the account.
    AccountNickname(String),
    /// Too many password checks are waiting; try again shortly.
    AuthBusy,
    /// `/create <room> private` by a guest.
    PrivateNeedsAccount,
    /// `/invite` or `/kick` outside a private room.
    NotPrivate(String),
    /// `/invite` or `/kick` by someone other than the room's owner.
    NotOwner(String),
    /// `/invite` of a nickname that is not registered.
    NotAnAccount(String),
    AlreadyInvited { nick: String, room: String },
    NotAMember { nick: String, room: String },
    /// `/kick` of the owner.
    KickOwner,
    /// `/edit` or `/delete` (the verb) with no message of the user's in the room.
    NoMessageToChange(&'static str),
    /// An edit or delete of a message id that does not exist (or is deleted,
    /// or in a private room the user may not enter).
    NoSuchMessage(i64),
    /// An edit or delete (the verb) of someone else's message.
    NotYourMessage(&'static str),
    /// The store could not commit an edit or delete; nothing changed.
    ChangeNotStored,
    /// `/search` outside a room.
    SearchNeedsRoom,
    /// Search words that cannot be searched for; the text says why.
    BadSearch(String),
    /// The store could not run a search or move a read marker.
    StoreReadUnavailable,
    /// A read marker asked for by a guest.
    MarkersNeedAccount,
}

impl ChatError {
    /// The HTTP status this error maps to (see `docs/protocol.md`).
    pub fn http_status(&self) -> u16 {
        use ChatError::*;
        match self {
            NicknameTaken(_) | RoomExists(_) | AlreadyRegistered(_) => 409,
            NicknameRegistered(_) | WrongPassword(_) | NoAccount(_) => 401,
            NotRegistered | PrivateNeedsAccount | NotOwner(_) | NotYourMessage(_) | MarkersNeedAccount => 403,
            NoMessageToChange(_) | NoSuchMessage(_) => 404,
            StoreReadUnavailable => 503,
            NotAnAccount(_) | NotAMember { .. } => 404,
            AlreadyInvited { .. } => 409,
            TooManyLoginAttempts { .. } => 429,
            AuthBusy => 503,
            NoSuchRoom(_) | UnknownSession | UserNotOnline(_) => 404,
            RateLimited { .. } => 429,
            StoreUnavailable | Busy | ServerFull | ShuttingDown | ChangeNotStored => 503,
            MessageTooLong { .. } | LineTooLong { .. } => 400,
            _ => 400,
        }
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.describe(&mut text)?;
        f.write_str(&crate::names::clean_text(&text))
    }
}

impl ChatError {
    /// The sentence as written, before user text in it is cleaned.
    fn describe(&self, f: &mut impl fmt::Write) -> fmt::Result {
        use ChatError::*;
        match self {
            InvalidNickname(why) => write!(f, "invalid nickname: {why}"),
            NicknameTaken(nick) => {
                write!(f, "nickname '{nick}' is already taken. Choose another one.")
            }
            InvalidRoomName(why) => write!(f, "invalid room name: {why}"),
            NoSuchRoom(room) => {
                write!(f, "room '{room}' does not exist. Use /create {room} to create it.")
            }
            RoomExists(room) => {
                write!(f, "room '{room}' already exists. Use /join {room} to join it.")
            }
            AlreadyInRoom(room) => write!(f, "you are already in room '{room}'."),
            NotInRoom => {
                write!(f, "you are not in a room. Use /join <room> or /create <room> first.")
            }
            WrongRoom { current, requested } => write!(
                f,
                "you are in room '{current}', not '{requested}'. Use /join {requested} first."
            ),
            UserNotOnline(nick) => write!(f, "user '{nick}' is not online. Use /list to see who is."),
            DmToSelf => write!(f, "you cannot send a direct message to yourself."),
            EmptyMessage => write!(f, "the message is empty."),
            MessageTooLong { max } => {
                write!(f, "message too long: at most {max} characters. Nothing was sent.")
            }
            LineTooLong { max } => {
                write!(f, "line too long: at most {max} bytes. The line was discarded.")
            }
            InvalidUtf8 => write!(f, "invalid UTF-8: send text encoded as UTF-8. The line was discarded."),
            UnknownCommand(name) => {
                write!(f, "unknown command '{name}'. Type /help for available commands.")
            }
            Usage(usage) => write!(f, "usage: {usage}"),
            NoNickname => write!(f, "choose a nickname first."),
            AlreadyNamed => write!(f, "this session already has a nickname. Use /nick <name> to change it."),
            RateLimited { per_second } => write!(
                f,
                "slow down: at most {per_second} messages per second. The message was not sent."
            ),
            UnknownSession => {
                write!(f, "unknown or expired session. Connect again with POST /api/connect.")
            }
            StoreUnavailable => write!(
                f,
                "the message store is unavailable, so the message was not sent. Try again shortly."
            ),
            Busy => write!(f, "the server is busy, so the message was not sent. Try again shortly."),
            ServerFull => write!(f, "server full, try again later."),
            ShuttingDown => write!(f, "the server is shutting down."),
            NicknameRegistered(nick) => write!(
                f,
                "nickname '{nick}' is registered. Log in with its password or choose another."
            ),
            WrongPassword(nick) => write!(f, "wrong password for {nick}."),
            NoAccount(nick) => write!(f, "there is no account named '{nick}'. Use /register <password> to register your nickname."),
            TooManyLoginAttempts { secs } => write!(f, "too many login attempts; try again in {secs} seconds."),
            InvalidPassword(why) => write!(f, "invalid password: {why}"),
            AlreadyRegistered(nick) => write!(f, "nickname '{nick}' is already registered. Log in with /login {nick} <password>."),
            NotRegistered => write!(f, "only registered users have a password. Use /register <password> first."),
            AccountNickname(nick) => write!(
                f,
                "you are logged in as {nick}, a registered nickname, so it cannot change. Use /login <nick> <password> to switch accounts."
            ),
            AuthBusy => write!(f, "the server is busy checking passwords. Try again shortly."),
            PrivateNeedsAccount => write!(f, "only registered users can create private rooms. Use /register <password> first."),
            NotPrivate(room) => write!(f, "room '{room}' is not private: everyone can join it. Join a private room you own first."),
            NotOwner(room) => write!(f, "only the owner of '{room}' can invite or remove members."),
            NotAnAccount(nick) => write!(f, "'{nick}' is not a registered user; only registered users can be invited."),
            AlreadyInvited { nick, room } => write!(f, "{nick} can already enter '{room}'."),
            NotAMember { nick, room } => write!(f, "{nick} is not a member of '{room}'."),
            KickOwner => write!(f, "the owner cannot be removed from their room."),
            NoMessageToChange(verb) => write!(f, "you have no message in this room to {verb}."),
            NoSuchMessage(id) => write!(f, "message {id} does not exist."),
            NotYourMessage("delete") => {
                write!(f, "you can only delete your own messages (or any message in a private room you own).")
            }
            NotYourMessage(verb) => write!(f, "you can only {verb} your own messages."),
            ChangeNotStored => {
                write!(f, "the message store is unavailable, so nothing was changed. Try again shortly.")
            }
            SearchNeedsRoom => write!(f, "you are not in a room; /search looks through your current room. Use /join <room> first."),
            BadSearch(why) => write!(f, "cannot search: {why}"),
            StoreReadUnavailable => write!(f, "the message store is unavailable. Try again shortly."),
            MarkersNeedAccount => write!(
                f,
                "only registered users have read markers and unread counts. Use /register <password> first."
            ),
        }
    }
}

impl std::error::Error for ChatError {}
