//! What the router hands to sessions, and the outbox it hands it through.
//!
//! The router never touches a socket. Each session gives it a [`Sink`];
//! the router pushes [`Event`]s into it without ever blocking. The adapters'
//! sink is a per-client outbox, bounded in events and in bytes, sent by the
//! writer pool (`adapters::writers`) through the client's encoder, which
//! turns events into its protocol's bytes. Room messages and notices are
//! shared (`Arc`) between all recipients and each protocol's rendering is
//! cached on them, so a message is formatted once per protocol, not once
//! per recipient.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::ChatError;

/// Identifies a session inside this process. Allocated by adapters with
/// [`SessionId::next`], owned by the router once registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn next() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Which front door a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Http,
}

/// Which transport carries a sink's events, for metrics by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Sse,
    WebSocket,
}

/// Per-protocol cache of an event's wire bytes, filled on first use.
#[derive(Debug, Default)]
pub struct Rendered {
    tcp: OnceLock<Box<[u8]>>,
    sse: OnceLock<Box<[u8]>>,
    ws: OnceLock<Box<[u8]>>,
}

/// The wire formats an event is rendered into.
#[derive(Debug, Clone, Copy)]
pub enum Wire {
    Tcp,
    Sse,
    WebSocket,
}

impl Rendered {
    /// Returns the cached bytes for `wire`, rendering them the first time.
    pub fn get_or_render(&self, wire: Wire, render: impl FnOnce() -> Vec<u8>) -> &[u8] {
        let slot = match wire {
            Wire::Tcp => &self.tcp,
            Wire::Sse => &self.sse,
            Wire::WebSocket => &self.ws,
        };
        slot.get_or_init(|| render().into_boxed_slice())
    }
}

/// A committed room message, as stored, delivered, and sent to other
/// instances (serialized without its rendering cache).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// Store-assigned id; increases with commit order within a room.
    pub id: i64,
    /// Position in the room, 1, 2, 3… without gaps: the delivery order.
    pub seq: i64,
    pub room_id: i64,
    pub room: String,
    pub user_id: i64,
    pub nickname: String,
    pub content: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When the text was last edited (milliseconds), if it was.
    #[serde(default)]
    pub edited_at_ms: Option<i64>,
    /// Deleted: the text is erased and no client is shown the message. The
    /// row keeps its place in the room's sequence (the order gate reads it).
    #[serde(default)]
    pub deleted: bool,
    /// An action (`/me waves`), shown as `[room] * nick waves`.
    #[serde(default)]
    pub action: bool,
    #[serde(skip)]
    pub rendered: Rendered,
}

impl ChatMessage {
    /// The text form every user sees: `[room] nick: text`,
    /// `[room] nick (edited): text` once edited, or `[room] * nick text`
    /// for an action.
    pub fn line(&self) -> String {
        let edited = if self.edited_at_ms.is_some() { " (edited)" } else { "" };
        if self.action {
            format!("[{}] * {}{edited} {}", self.room, self.nickname, self.content)
        } else {
            format!("[{}] {}{edited}: {}", self.room, self.nickname, self.content)
        }
    }

    /// A new copy of this message with `change` applied (the ring buffer
    /// replaces its entry: a rendered message is shared and never mutated).
    pub fn changed(&self, change: &MessageChange) -> ChatMessage {
        let (content, edited_at_ms, deleted) = match &change.content {
            Some(text) => (text.clone(), Some(change.at_ms), false),
            None => (String::new(), self.edited_at_ms, true),
        };
        ChatMessage {
            id: self.id,
            seq: self.seq,
            room_id: self.room_id,
            room: self.room.clone(),
            user_id: self.user_id,
            nickname: self.nickname.clone(),
            content,
            created_at_ms: self.created_at_ms,
            edited_at_ms,
            deleted,
            action: self.action,
            rendered: Default::default(),
        }
    }
}

/// An edit or a deletion of a committed room message, as committed,
/// delivered (the `edit` and `delete` events) and sent to other instances.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MessageChange {
    /// Store id of the change; increases with commit order within a room.
    pub change_id: i64,
    /// The message changed.
    pub id: i64,
    pub room_id: i64,
    pub room: String,
    /// The room position the change happened after (the room's last `seq`
    /// when it was committed): it is delivered after that message.
    pub after_seq: i64,
    /// The message's author, as stored with it.
    pub nickname: String,
    /// Who made the change (the author, or the room's owner for a delete).
    pub by: String,
    /// The new text of an edit; `None` for a delete.
    pub content: Option<String>,
    /// When the change was made (milliseconds): an edit's `editedAt`.
    pub at_ms: i64,
    #[serde(skip)]
    pub rendered: Rendered,
}

impl MessageChange {
    pub fn is_delete(&self) -> bool {
        self.content.is_none()
    }

    /// The text form TCP users see.
    pub fn line(&self) -> String {
        match &self.content {
            Some(text) => format!("[{}] {} (edited): {}", self.room, self.nickname, text),
            None => format!("[system] {} deleted a message", self.by),
        }
    }
}

/// A user's presence: online, away, or gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Online,
    Away,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

/// A user's presence changed (event `presence`; never shown on TCP).
#[derive(Debug)]
pub struct Presence {
    pub user: String,
    pub status: Status,
    /// The away message, if any.
    pub message: Option<String>,
    pub rendered: Rendered,
}

/// Someone is typing in a room (event `typing`; never shown on TCP, never
/// stored). One is shared by every recipient of a room's fan-out.
#[derive(Debug)]
pub struct Typing {
    pub room: String,
    pub user: String,
    pub rendered: Rendered,
}

/// A `[system]` line: joins, leaves, nick changes, disconnects.
#[derive(Debug)]
pub struct Notice {
    /// The room it concerns; `None` for a notice to one session only.
    pub room: Option<String>,
    pub text: String,
    pub at_ms: i64,
    pub rendered: Rendered,
}

/// A private message between two users.
#[derive(Debug)]
pub struct DirectMessage {
    pub from: String,
    pub to: String,
    pub text: String,
    pub at_ms: i64,
}

/// Why a session's output ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The user asked (`/quit`, `POST /api/disconnect`) or went away.
    Normal,
    /// The outbox overflowed: the client does not read fast enough.
    TooSlow,
    /// The server is stopping.
    Shutdown,
    /// A newer stream took over this session (SSE).
    Replaced,
    /// The session was idle too long (HTTP).
    Expired,
    /// Missed messages could not be read back from the store (SSE resume).
    ReplayFailed,
    /// The client sent more than a message may hold (WebSocket frames).
    TooLarge,
    /// The client answered no keep-alive for too long (WebSocket).
    Unresponsive,
    /// The client broke the framing protocol (WebSocket).
    ProtocolError,
}

impl CloseReason {
    /// What the client is told as the stream ends, if anything.
    pub fn explanation(self) -> Option<&'static str> {
        match self {
            CloseReason::TooSlow => Some("you are not reading messages fast enough, so you were disconnected."),
            CloseReason::Replaced => Some("a newer stream took over this session."),
            CloseReason::ReplayFailed => Some(
                "the message store is unavailable, so missed messages cannot be replayed. Reconnect shortly.",
            ),
            CloseReason::TooLarge => Some("the frame is larger than the server accepts."),
            CloseReason::Unresponsive => Some("no frame and no answer to pings for too long."),
            CloseReason::ProtocolError => Some("the frame broke the WebSocket protocol."),
            CloseReason::Normal | CloseReason::Shutdown | CloseReason::Expired => None,
        }
    }
}

/// Something a session should see.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Arc<ChatMessage>),
    /// A room message was edited or deleted.
    Changed(Arc<MessageChange>),
    Notice(Arc<Notice>),
    /// A DM; `outgoing` is true in the sender's own copy.
    Dm { dm: Arc<DirectMessage>, outgoing: bool },
    /// Text shown as is, without a line ending (the nickname prompt).
    Prompt(std::borrow::Cow<'static, str>),
    /// Keep-alive for event streams (`: ping`); nothing on TCP.
    Ping,
    /// The reply to this session's own command, as the text a TCP user sees.
    Reply(String),
    /// A refusal of this session's own input.
    Error(ChatError),
    /// The session's room changed; carries the new room's recent messages.
    RoomChanged { room: Option<String>, history: Vec<Arc<ChatMessage>> },
    /// The answer to a client request that named itself (a WebSocket
    /// frame's `ref`), in order with the session's other events.
    Ack(Arc<Ack>),
    /// The answer to a client's keep-alive ping (WebSocket), with its payload.
    Pong(Arc<[u8]>),
    /// A user's presence changed (SSE and WebSocket only).
    Presence(Arc<Presence>),
    /// A user is typing in the room (SSE and WebSocket only).
    Typing(Arc<Typing>),
}

/// The outcome of one client request, for transports that answer requests
/// in their event stream (WebSocket).
#[derive(Debug)]
pub struct Ack {
    /// The client's own reference for the request, echoed as it came.
    pub reference: Option<serde_json::Value>,
    /// The answer's fields, or why the request was refused.
    pub outcome: Result<serde_json::Map<String, serde_json::Value>, String>,
}

impl Event {
    /// About how many bytes the event takes on the wire, for queues bounded
    /// in bytes (`SENDQ_BYTES`): its text plus a fixed allowance for the
    /// framing. Cheap: nothing is rendered.
    pub fn weight(&self) -> usize {
        const FRAMING: usize = 96;
        FRAMING
            + match self {
                Event::Message(m) => m.content.len() + m.nickname.len() + m.room.len(),
                Event::Changed(c) => c.content.as_ref().map_or(0, String::len) + c.nickname.len() + c.by.len() + c.room.len(),
                Event::Notice(n) => n.text.len(),
                Event::Dm { dm, .. } => dm.text.len() + dm.from.len() + dm.to.len(),
                Event::Prompt(text) => text.len(),
                Event::Ping => 0,
                Event::Reply(text) => text.len(),
                Event::Error(_) => 64,
                Event::RoomChanged { history, .. } => history.iter().map(|m| FRAMING + m.content.len()).sum(),
                Event::Ack(ack) => match &ack.outcome {
                    Ok(fields) => fields.len() * 32,
                    Err(error) => error.len(),
                },
                Event::Pong(payload) => payload.len(),
                Event::Presence(p) => p.user.len() + p.message.as_ref().map_or(0, String::len),
                Event::Typing(t) => t.room.len() + t.user.len(),
            }
    }
}

/// The session queue is full; the session must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Where the router delivers a session's events. Implementations never block.
pub trait Sink: Send + Sync {
    /// Queues an event. `Err(Overflow)` means the client is too slow: the
    /// router then drops the session and calls [`Sink::close`].
    fn deliver(&self, event: Event) -> Result<(), Overflow>;
    /// Ends the session's output; later deliveries are ignored.
    fn close(&self, reason: CloseReason);
    /// Queues an event read back from the store for a resuming stream,
    /// whatever the queue's bounds: the router paces a replay itself by
    /// [`Sink::backlog`], one store page at a time.
    fn replay(&self, event: Event) {
        let _ = self.deliver(event);
    }
    /// About how many bytes are queued and not yet taken by the client.
    fn backlog(&self) -> usize {
        0
    }
    /// The transport the events go out on, if the sink knows it.
    fn transport(&self) -> Option<Transport> {
        None
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with second precision, e.g. `2026-01-01T12:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_767_268_800_000), "2026-01-01T12:00:00Z");
    }
}
