//! WebSocket: `GET /api/ws?sessionId=…` (the protocol is written up in
//! `docs/protocol.md`, section "WebSocket").
//!
//! The third transport on the delivery layer, beside TCP lines and SSE:
//! - the writer pool sends the session's events through [`WsEncoder`], one
//!   JSON text frame per event (framed by `tungstenite`), and the answers to
//!   the client's own frames ([`Event::Ack`]) in order with them;
//! - the handshake (checks, attaching the stream, the 101 answer) runs on
//!   the HTTP worker; then one thread per connection (`ws`,
//!   `CLIENT_STACK_KB` stack) reads the client's frames with `tungstenite`
//!   and turns them into the router requests every other adapter uses
//!   (`Say`, `Command`, `AttachStream`).
//!   It also keeps the connection honest: a ping every `SSE_PING_SECS`, and
//!   a client silent for three intervals is closed.
//!
//! The stream is attached to its HTTP session like an SSE stream (the router
//! replays what a client resuming with `lastEventId` missed before live
//! traffic), and detached when the connection ends; the session stays until
//! it idles out, so a client that reconnects keeps its nickname and room.
//!
//! A message frame is acknowledged only once the message is committed (the
//! reader waits for the router's answer, as `POST /api/message` does), so a
//! connection has at most one message in flight.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tiny_http::{Header, ReadWrite, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::error::ProtocolError;
use tungstenite::{Message, WebSocket};
use uuid::Uuid;

use super::request::{header, query_param, split_url};
use super::response::{send, Refusal};
use super::HttpContext;
use crate::adapters::writers::{Conn, Encoder, Outbox};
use crate::command::{parse_input, Input};
use crate::event::{rfc3339, Ack, ChatMessage, CloseReason, Event, Sink, Transport, Wire};
use crate::router::{Reply, RouterMsg, SessionRef};

/// A client that sends nothing (not even a pong) for this many ping
/// intervals is closed.
const SILENT_INTERVALS: u32 = 3;
/// How long a closing connection waits for its last frames to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the upgrade request asked for.
struct WsRequest {
    token: Uuid,
    room: Option<String>,
    after: Option<i64>,
    key: String,
}

/// Checks an upgrade request (on a worker thread) and hands it to a new
/// connection thread.
pub fn open(request: Request, ctx: &HttpContext) {
    let wanted = match check(&request, ctx) {
        Ok(wanted) => wanted,
        Err(refusal) => return send(request, refusal.into(), ctx),
    };
    // The connection's thread starts first, so that a refusal (503) can
    // still be answered here. The handshake (attaching the stream, the 101
    // answer) then runs on this worker: the connection's thread only reads
    // frames, and holds none of the handshake's leftovers in its memory
    // for the connection's whole life.
    let (tx, rx) = crossbeam_channel::bounded::<Upgraded>(1);
    let thread_ctx = ctx.clone();
    let spawned = std::thread::Builder::new().name("ws".into()).stack_size(ctx.limits.client_stack_bytes).spawn(
        move || {
            if let Ok(upgraded) = rx.recv() {
                live(upgraded, &thread_ctx);
            }
        },
    );
    if let Err(e) = spawned {
        log::error!("cannot start a ws thread: {e}");
        return send(request, Refusal::from(crate::error::ChatError::ServerFull).into(), ctx);
    }
    if let Some(upgraded) = handshake(request, wanted, ctx) {
        let _ = tx.send(upgraded);
    }
}

fn check(request: &Request, ctx: &HttpContext) -> Result<WsRequest, Refusal> {
    let upgrade = header(request, "Upgrade").is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
    let connection = header(request, "Connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    if !upgrade || !connection {
        let mut refusal =
            Refusal::new(426, "GET /api/ws is a WebSocket: send 'Connection: Upgrade' and 'Upgrade: websocket'.");
        refusal.allow = None;
        return Err(refusal);
    }
    if header(request, "Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(Refusal::new(426, "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)."));
    }
    let key = header(request, "Sec-WebSocket-Key")
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Refusal::bad("missing Sec-WebSocket-Key header."))?;
    if let Some(origin) = header(request, "Origin") {
        if !origin_allowed(origin, header(request, "Host"), &ctx.limits.allowed_origins) {
            return Err(Refusal::new(
                403,
                format!("origin {origin} may not open a WebSocket here; add it to ALLOWED_ORIGINS."),
            ));
        }
    }
    let (_, query) = split_url(request.url());
    let param = |name| query_param(query, name).filter(|v| !v.is_empty());
    let given = param("sessionId");
    let from = super::routes::Caller { cookie: super::routes::cookie_token(request), peer: None };
    if given.is_none() && from.cookie.is_none() {
        return Err(Refusal::bad(
            "missing sessionId: use GET /api/ws?sessionId=<id>, or connect first to get the bd_session cookie.",
        ));
    }
    let token = super::routes::resolve_session(given.as_deref(), &from, ctx)?;
    let after = match param("lastEventId") {
        None => None,
        Some(id) => Some(parse_event_id(&Value::String(id)).map_err(Refusal::bad)?),
    };
    Ok(WsRequest { token, room: param("room"), after, key })
}

/// Whether a page from `origin` may open a WebSocket: the server's own
/// (the `Host` the request came to) or one of `ALLOWED_ORIGINS`.
/// Clients that are not browsers send no `Origin` and are not asked.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let own = origin.split_once("://").map(|(_, authority)| authority);
    if own.is_some() && own == host.map(|h| h.trim().to_ascii_lowercase()).as_deref() {
        return true;
    }
    allowed.contains(&origin)
}

/// A `lastEventId`: a message id, as a number or a string of digits.
fn parse_event_id(value: &Value) -> Result<i64, String> {
    let id = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.filter(|id| *id >= 0).ok_or_else(|| "lastEventId must be a message id (a whole number).".to_string())
}

/// A connection that has been answered 101 and attached to its session.
struct Upgraded {
    socket: WebSocket<WsInput>,
    outbox: Arc<Outbox>,
    sink: Arc<dyn Sink>,
    session: crate::event::SessionId,
    token: Uuid,
}

/// Attaches the stream to its session and answers 101 (on the worker), or
/// answers the refusal.
fn handshake(request: Request, wanted: WsRequest, ctx: &HttpContext) -> Option<Upgraded> {
    let (Some(fd), Some(deadline)) = (request.raw_fd(), request.read_deadline()) else {
        send(request, Refusal::new(500, "this connection cannot carry a WebSocket.").into(), ctx);
        return None;
    };
    let outbox = ctx.writers.outbox(Box::<WsEncoder>::default(), ctx.limits.queue_limits());
    let sink: Arc<dyn Sink> = outbox.clone();
    let session = match super::attach_stream(ctx, wanted.token, wanted.room, sink.clone(), wanted.after) {
        Ok(session) => session,
        Err(e) => {
            send(request, Refusal::from(e).into(), ctx);
            return None;
        }
    };
    ctx.stats.record(101);
    let accept = tungstenite::handshake::derive_accept_key(wanted.key.as_bytes());
    let response = Response::empty(101)
        .with_header(Header::from_bytes(&b"Sec-WebSocket-Accept"[..], accept.as_bytes()).expect("base64 is ASCII"));
    let stream = Arc::new(Mutex::new(request.upgrade("websocket", response)));
    // SAFETY: `fd` is the connection's socket (`Request::raw_fd`), which the
    // upgraded stream keeps open until it is dropped; the `Conn` owns a
    // share of the stream and never writes through it.
    ctx.metrics.ws_connections.fetch_add(1, Relaxed);
    outbox.start(unsafe { Conn::kept_open_by(fd, stream.clone()) });
    log::debug!("WebSocket for session {} opened", session.0);

    // Client frames are small; a bigger one grows the buffer as it comes.
    let config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_frame_size(Some(ctx.limits.max_body_bytes))
        .max_message_size(Some(ctx.limits.max_body_bytes));
    let socket = WebSocket::from_raw_socket(WsInput { stream, deadline }, Role::Server, Some(config));
    Some(Upgraded { socket, outbox, sink, session, token: wanted.token })
}

/// The life of one connection, on its own thread.
fn live(upgraded: Upgraded, ctx: &HttpContext) {
    let Upgraded { socket, outbox, sink, session, token } = upgraded;
    let mut connection = Connection { socket, outbox: outbox.clone(), sink: sink.clone(), token, ctx };
    let reason = connection.run();
    sink.close(reason);
    outbox.wait_finished(CLOSE_GRACE);
    ctx.router.send(RouterMsg::DetachStream { session, sink });
    ctx.metrics.ws_connections.fetch_sub(1, Relaxed);
    log::debug!("WebSocket for session {} ended ({reason:?})", session.0);
}

/// The read side of the upgraded connection as `tungstenite` sees it. Every
/// write goes through the writer pool, so what `tungstenite` would write by
/// itself (its automatic pongs and close replies) is dropped here; the
/// reader queues those answers as events instead.
struct WsInput {
    stream: Arc<Mutex<Box<dyn ReadWrite + Send>>>,
    deadline: tiny_http::ReadDeadline,
}

impl Read for WsInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).read(buf)
    }
}

impl Write for WsInput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection's reader.
struct Connection<'a> {
    socket: WebSocket<WsInput>,
    /// The same outbox as `sink`, to see when the writer pool is done with it.
    outbox: Arc<Outbox>,
    sink: Arc<dyn Sink>,
    token: Uuid,
    ctx: &'a HttpContext,
}

impl Connection<'_> {
    /// Reads frames until the connection ends; returns why it ends.
    fn run(&mut self) -> CloseReason {
        let interval = self.ctx.limits.sse_ping;
        let mut heard = Instant::now();
        let mut next_ping = Instant::now() + interval;
        loop {
            let now = Instant::now();
            if now >= next_ping {
                if now.duration_since(heard) >= interval * SILENT_INTERVALS {
                    return CloseReason::Unresponsive;
                }
                // A full queue means the router is about to drop the session.
                let _ = self.sink.deliver(Event::Ping);
                next_ping = now + interval;
            }
            self.socket.get_ref().deadline.set(Some(next_ping.saturating_duration_since(now)));
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) =>
                {
                    continue
                }
                Err(tungstenite::Error::Capacity(_)) => return CloseReason::TooLarge,
                Err(tungstenite::Error::Utf8(_)) => {
                    heard = Instant::now();
                    self.refuse(None, "a text frame must be valid UTF-8.");
                    continue;
                }
                Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return CloseReason::Normal
                }
                Err(tungstenite::Error::Protocol(e)) => {
                    log::debug!("WebSocket protocol error: {e}");
                    return CloseReason::ProtocolError;
                }
                Err(_) => return CloseReason::Normal,
            };
            heard = Instant::now();
            match message {
                Message::Text(text) => self.frame(text.as_str()),
                Message::Binary(_) => self.refuse(None, "binary frames are not supported; send JSON text frames."),
                Message::Ping(payload) => {
                    let _ = self.sink.deliver(Event::Pong(Arc::from(&payload[..])));
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => return CloseReason::Normal,
            }
            if self.outbox.is_finished() {
                return CloseReason::Normal;
            }
        }
    }

    /// Answers one client frame.
    fn frame(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => return self.refuse(None, &format!("malformed JSON: {e}")),
        };
        let Value::Object(fields) = value else {
            return self.refuse(None, "a frame must be a JSON object with a \"type\".");
        };
        let reference = fields.get("ref").filter(|r| !r.is_null()).cloned();
        let outcome = match fields.get("type").and_then(Value::as_str) {
            Some("message") => self.message(&fields),
            Some("command") => self.command(&fields),
            Some("join") => self.join(&fields),
            Some("read") => self.read(&fields),
            Some("typing") => self.typing(),
            Some(other) => Err(format!(
                "unknown frame type '{}'; use message, command, join, typing or read.",
                crate::names::clean_text(other)
            )),
            None => Err("a frame must have a \"type\" (message, command, join, typing or read).".to_string()),
        };
        match outcome {
            // A message without `ref` is acknowledged by its own echo.
            Ok(None) => {}
            // Nor is a message, a read marker or a typing signal sent
            // without `ref` answered.
            Ok(Some(_))
                if reference.is_none()
                    && matches!(fields.get("type").and_then(Value::as_str), Some("message" | "read" | "typing")) => {}
            Ok(Some(answer)) => self.answer(Ack { reference, outcome: Ok(answer) }),
            Err(error) => self.answer(Ack { reference, outcome: Err(error) }),
        }
    }

    fn refuse(&mut self, reference: Option<Value>, error: &str) {
        self.answer(Ack { reference, outcome: Err(error.to_string()) });
    }

    fn answer(&mut self, ack: Ack) {
        if self.sink.deliver(Event::Ack(Arc::new(ack))).is_err() {
            // The client reads too slowly even for its own answers.
            self.sink.close(CloseReason::TooSlow);
        }
    }

    /// `{"type":"message","content","clientMsgId"?}`: answered once committed.
    fn message(&mut self, fields: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        let text = string_field(fields, "content")?.to_string();
        let session = SessionRef::Token(self.token);
        let room = fields.get("room").and_then(Value::as_str).map(str::to_string);
        let client_msg_id = match fields.get("clientMsgId").filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(id)) => super::routes::client_msg_id(Some(id))?,
            Some(_) => return Err("clientMsgId must be a UUID.".into()),
        };
        let action = match fields.get("action").filter(|v| !v.is_null()) {
            None => false,
            Some(Value::Bool(action)) => *action,
            Some(_) => return Err("action must be true or false.".into()),
        };
        match self.ctx.router.call(|reply| RouterMsg::Say { session, text, room, client_msg_id, action, reply }) {
            Ok(Reply::Sent { id, room, created_at_ms }) => Ok(Some(object(json!({
                "id": id,
                "room": room,
                "createdAt": rfc3339(created_at_ms),
            })))),
            Ok(_) => Err("unexpected answer from the router.".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `{"type":"command","command":"/join general"}`: the text a TCP user
    /// would see, as `message`.
    fn command(&mut self, fields: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        let line = string_field(fields, "command")?;
        let command = match parse_input(line).map_err(|e| e.to_string())? {
            Input::Command(command) => command,
            Input::Message(_) => return Err("commands start with /; send chat as a message frame.".into()),
        };
        let session = SessionRef::Token(self.token);
        match self.ctx.router.call(|reply| RouterMsg::Command { session, command, reply }) {
            Ok(Reply::Text(text) | Reply::Shown(text)) => Ok(Some(object(json!({ "message": text })))),
            Ok(_) => Ok(Some(object(json!({ "message": "" })))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `{"type":"typing"}`: the session is typing in its room (passed on at
    /// most once per `TYPING_INTERVAL_MS`; acknowledged only with a `ref`).
    fn typing(&mut self) -> Result<Option<Map<String, Value>>, String> {
        let session = SessionRef::Token(self.token);
        match self.ctx.router.call(|reply| RouterMsg::Typing { session, reply }) {
            Ok(_) => Ok(Some(Map::new())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `{"type":"join","room","lastEventId"?}`: moves this connection's
    /// session to `room`; with `lastEventId`, what it missed there is
    /// replayed first.
    fn join(&mut self, fields: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        let room = string_field(fields, "room")?.to_string();
        let after = match fields.get("lastEventId").filter(|v| !v.is_null()) {
            Some(value) => Some(parse_event_id(value)?),
            None => None,
        };
        match super::attach_stream(self.ctx, self.token, Some(room.clone()), self.sink.clone(), after) {
            Ok(_) => Ok(Some(object(json!({ "room": crate::names::normalize_room(&room).unwrap_or(room) })))),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Connection<'_> {
    /// `{"type":"read","room","id"}`: moves this session's read marker in
    /// `room` forward to message `id`, as `POST /api/rooms/:room/read`;
    /// acknowledged with where the marker is.
    fn read(&mut self, fields: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        let room = string_field(fields, "room")?.to_string();
        let id = super::routes::marker_id(fields.get("id")).map_err(|r| r.message)?;
        let marked = super::routes::mark_read(self.ctx, SessionRef::Token(self.token), &room, id).map_err(|r| r.message)?;
        let room = crate::names::normalize_room(&room).unwrap_or(room);
        Ok(Some(object(json!({ "room": room, "id": marked.at_id }))))
    }
}

fn string_field<'f>(fields: &'f Map<String, Value>, name: &str) -> Result<&'f str, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(format!("missing field '{name}'.")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field '{name}' must be a string.")),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// How a WebSocket looks on the wire: one JSON text frame per event (with
/// the fields of the SSE event's `data` and a `"type"`), pings and pongs,
/// and a close frame with a fitting code as last words.
#[derive(Default)]
pub struct WsEncoder;

impl Encoder for WsEncoder {
    fn transport(&self) -> Transport {
        Transport::WebSocket
    }

    fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        match event {
            Event::Message(message) => render_message(message, out),
            Event::Notice(notice) => out.extend_from_slice(notice.rendered.get_or_render(Wire::WebSocket, || {
                text_frame(&json!({
                    "type": "system",
                    "room": notice.room,
                    "content": notice.text,
                    "timestamp": rfc3339(notice.at_ms),
                }))
            })),
            Event::Changed(change) => out.extend_from_slice(change.rendered.get_or_render(Wire::WebSocket, || {
                let (kind, mut data) = super::sse::change_event(change);
                data["type"] = json!(kind);
                text_frame(&data)
            })),
            Event::Dm { dm, .. } => out.extend_from_slice(&text_frame(&json!({
                "type": "dm",
                "from": dm.from,
                "to": dm.to,
                "content": dm.text,
                "timestamp": rfc3339(dm.at_ms),
            }))),
            Event::RoomChanged { room, history } => {
                out.extend_from_slice(&text_frame(&json!({ "type": "connected", "room": room })));
                for message in history {
                    render_message(message, out);
                }
            }
            Event::Ack(ack) => {
                let mut fields = Map::new();
                match &ack.outcome {
                    Ok(answer) => {
                        fields.insert("type".into(), "ack".into());
                        if let Some(reference) = &ack.reference {
                            fields.insert("ref".into(), reference.clone());
                        }
                        fields.extend(answer.clone());
                    }
                    Err(error) => {
                        fields.insert("type".into(), "error".into());
                        if let Some(reference) = &ack.reference {
                            fields.insert("ref".into(), reference.clone());
                        }
                        fields.insert("error".into(), error.clone().into());
                    }
                }
                out.extend_from_slice(&text_frame(&Value::Object(fields)));
            }
            Event::Reply(text) => out.extend_from_slice(&text_frame(&json!({ "type": "reply", "message": text }))),
            Event::Error(error) => out.extend_from_slice(&text_frame(&json!({ "type": "error", "error": error.to_string() }))),
            Event::Ping => format(Frame::ping(Vec::new()), out),
            Event::Pong(payload) => format(Frame::pong(payload.to_vec()), out),
            Event::Presence(presence) => out.extend_from_slice(presence.rendered.get_or_render(Wire::WebSocket, || {
                text_frame(&json!({
                    "type": "presence",
                    "user": presence.user,
                    "status": presence.status.as_str(),
                    "message": presence.message,
                }))
            })),
            Event::Typing(typing) => out.extend_from_slice(typing.rendered.get_or_render(Wire::WebSocket, || {
                text_frame(&json!({ "type": "typing", "room": typing.room, "user": typing.user }))
            })),
            Event::Prompt(_) => {}
        }
    }

    fn last_words(&mut self, reason: CloseReason, out: &mut Vec<u8>) {
        if let Some(why) = reason.explanation() {
            out.extend_from_slice(&text_frame(&json!({ "type": "error", "error": why })));
        }
        let code = match reason {
            CloseReason::Normal | CloseReason::Expired => CloseCode::Normal,
            CloseReason::Shutdown => CloseCode::Away,
            CloseReason::Replaced => CloseCode::Library(4000),
            CloseReason::TooSlow => CloseCode::Again,
            CloseReason::TooLarge => CloseCode::Size,
            CloseReason::Unresponsive => CloseCode::Policy,
            CloseReason::ProtocolError => CloseCode::Protocol,
            CloseReason::ReplayFailed => CloseCode::Error,
        };
        // A close frame's reason holds at most 123 bytes.
        let mut why = reason.explanation().unwrap_or("").to_string();
        while why.len() > 123 {
            why.pop();
        }
        format(Frame::close(Some(CloseFrame { code, reason: why.into() })), out);
    }
}

/// A message as a text frame, formatted once for every WebSocket.
fn render_message(message: &ChatMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(message.rendered.get_or_render(Wire::WebSocket, || {
        let mut data = json!({
            "type": "message",
            "id": message.id,
            "room": message.room,
            "user": message.nickname,
            "content": message.content,
            "timestamp": rfc3339(message.created_at_ms),
            "action": message.action,
        });
        if let Some(at) = message.edited_at_ms {
            data["editedAt"] = json!(rfc3339(at));
        }
        text_frame(&data)
    }));
}

/// `value` as one unmasked (server-to-client) text frame.
fn text_frame(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    format(Frame::message(value.to_string(), tungstenite::protocol::frame::coding::OpCode::Data(
        tungstenite::protocol::frame::coding::Data::Text,
    ), true), &mut out);
    out
}

fn format(frame: Frame, out: &mut Vec<u8>) {
    // Writing into a `Vec` cannot fail.
    let _ = frame.format(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_the_servers_own_or_allowed() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed("http://localhost:3001", Some("localhost:3001"), &[]));
        assert!(origin_allowed("https://app.example", Some("localhost:3001"), &allowed));
        assert!(origin_allowed("HTTPS://APP.EXAMPLE/", Some("x"), &allowed));
        assert!(!origin_allowed("https://evil.example", Some("localhost:3001"), &allowed));
        assert!(!origin_allowed("null", Some("localhost:3001"), &allowed));
        assert!(!origin_allowed("http://localhost:3002", Some("localhost:3001"), &[]));
    }

    #[test]
    fn event_ids_are_whole_numbers() {
        assert_eq!(parse_event_id(&json!(42)), Ok(42));
        assert_eq!(parse_event_id(&json!("42")), Ok(42));
        assert!(parse_event_id(&json!(-1)).is_err());
        assert!(parse_event_id(&json!("x")).is_err());
    }
}
