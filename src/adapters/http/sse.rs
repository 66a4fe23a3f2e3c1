//! Server-Sent Events: `GET /api/messages/:room?sessionId=…` (the wire
//! format is written up in `docs/protocol.md`).
//!
//! Each stream has its own thread (`sse`, `CLIENT_STACK_KB` stack) that
//! owns the stream's life: it asks the router to attach a new outbox to the
//! session (joining the room if needed; for a client resuming with
//! `Last-Event-ID` the router first replays what it missed, from its ring
//! buffer or from the store, so no replay can overtake a newer stream),
//! hands the connection's socket to the outbox, and then only sends a
//! `: ping` every `SSE_PING_SECS` until the outbox is finished. The writer
//! pool ([`crate::adapters::writers`]) sends the response head and every
//! event through [`SseEncoder`], one batch per wake-up (a thread woken per
//! stream per message would cost more than the writes themselves); a write
//! that fails is how a closed client is noticed. The thread then detaches
//! the stream from its session and ends (the session itself stays until it
//! idles out, so a reconnecting browser keeps its nickname and room).
//!
//! The stream is written on the socket of tiny_http's response writer with
//! headers of our own: tiny_http's chunked `Response` holds small events
//! back in an 8 KiB buffer. To be able to *end* a stream on a keep-alive
//! connection (the session was replaced, closed, dropped as too slow, or
//! the server is stopping) it is framed in chunks of our own, one per
//! batch, and ended with the last chunk before the socket is shut. A
//! request that says `Connection: close` (or is HTTP/1.0) gets a plain
//! stream instead, which ends when the connection closes.
//!
//! Event ids are message ids: a client that reconnects with
//! `Last-Event-ID` (or `?lastEventId=`) gets every message of the room after
//! that id, in order, then the live ones. No message is sent twice or out
//! of order.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;
use tiny_http::Request;
use uuid::Uuid;

use super::request::{header, query_param, split_url};
use super::response::{send, Refusal};
use super::HttpContext;
use crate::adapters::writers::{Conn, Encoder};
use crate::event::{rfc3339, ChatMessage, CloseReason, Event, MessageChange, Sink, Transport, Wire};
use crate::names::normalize_room;
use crate::router::RouterMsg;


/// What a stream request asked for.
struct StreamRequest {
    token: Uuid,
    room: String,
    /// Resume after this message id (`Last-Event-ID`).
    after: Option<i64>,
    framing: Framing,
}

/// How the stream's bytes are delimited on the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Our own chunked transfer coding: one chunk per batch, and a last
    /// chunk that ends the response.
    Chunked,
    /// Bytes as they are; the stream ends when the connection closes.
    Plain,
}

/// Starts a stream (on a worker thread): checks the request and hands it
/// to a new stream thread. The connection already holds its place under
/// `MAX_CONNECTIONS` (see `connection_limits` in the parent module).
pub fn open(request: Request, room: String, ctx: &HttpContext) {
    let wanted = match check(&request, &room, ctx) {
        Ok(wanted) => wanted,
        Err(refusal) => return send(request, refusal.into(), ctx),
    };
    super::spawn_connection("sse", request, ctx, move |request, ctx| serve(request, wanted, ctx));
}

/// The life of one stream, on its own thread.
fn serve(request: Request, wanted: StreamRequest, ctx: &HttpContext) {
    let Some(fd) = request.raw_fd() else {
        return send(request, Refusal::new(500, "this connection cannot carry an event stream.").into(), ctx);
    };
    let encoder = SseEncoder::new(wanted.framing == Framing::Chunked);
    let outbox = ctx.writers.outbox(Box::new(encoder), ctx.limits.queue_limits());
    let sink: Arc<dyn Sink> = outbox.clone();
    let session = match super::attach_stream(ctx, wanted.token, Some(wanted.room), sink.clone(), wanted.after) {
        Ok(session) => session,
        Err(e) => return send(request, Refusal::from(e).into(), ctx),
    };
    ctx.stats.record(200);
    ctx.metrics.http_streams.fetch_add(1, Relaxed);
    log::debug!("SSE stream for session {} opened", session.0);
    let writer = request.into_writer();
    // SAFETY: `fd` is the socket `writer` writes to (`Request::raw_fd`);
    // tiny_http keeps it open until `writer` is dropped, and the `Conn`
    // owns `writer` (and never writes through it).
    outbox.start(unsafe { Conn::kept_open_by(fd, writer) });
    while !outbox.wait_finished(ctx.limits.sse_ping) {
        // A full queue means the router is about to drop the session.
        let _ = sink.deliver(Event::Ping);
    }
    ctx.router.send(RouterMsg::DetachStream { session, sink });
    ctx.metrics.http_streams.fetch_sub(1, Relaxed);
    log::debug!("SSE stream for session {} ended", session.0);
}

fn check(request: &Request, room: &str, ctx: &HttpContext) -> Result<StreamRequest, Refusal> {
    let (_, query) = split_url(request.url());
    let room = normalize_room(room)?;
    let given = query_param(query, "sessionId").filter(|id| !id.is_empty());
    let from = super::routes::Caller { cookie: super::routes::cookie_token(request), peer: None };
    if given.is_none() && from.cookie.is_none() {
        return Err(Refusal::bad(
            "missing sessionId: use GET /api/messages/<room>?sessionId=<id>, or connect first to get the bd_session cookie.",
        ));
    }
    let token = super::routes::resolve_session(given.as_deref(), &from, ctx)?;
    // The header wins: a browser resending it knows the newest id, while
    // the query still says where the page first started.
    let last = header(request, "Last-Event-ID")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| query_param(query, "lastEventId").filter(|v| !v.is_empty()));
    let after = match last {
        None => None,
        Some(id) => Some(
            id.parse::<i64>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| Refusal::bad("Last-Event-ID must be a message id (a whole number)."))?,
        ),
    };
    let version = request.http_version();
    let close = (version.0, version.1) < (1, 1)
        || header(request, "Connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"));
    let framing = if close { Framing::Plain } else { Framing::Chunked };
    Ok(StreamRequest { token, room, after, framing })
}

/// How an event stream looks on the wire: the response head before the
/// first bytes, `event:`/`data:` blocks, an `error` event as last words,
/// and, when chunked, one HTTP chunk per batch and the last chunk at the end.
pub struct SseEncoder {
    chunked: bool,
    head_sent: bool,
}

impl SseEncoder {
    pub fn new(chunked: bool) -> SseEncoder {
        SseEncoder { chunked, head_sent: false }
    }

    fn head(&self) -> String {
        let framing = if self.chunked {
            "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n{framing}\r\n"
        )
    }
}

impl Encoder for SseEncoder {
    fn transport(&self) -> Transport {
        Transport::Sse
    }

    fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        render(event, out);
    }

    fn last_words(&mut self, reason: CloseReason, out: &mut Vec<u8>) {
        if let Some(why) = reason.explanation() {
            out.extend_from_slice(&error_event(why));
        }
    }

    fn frame(&mut self, batch: &[u8], last: bool, out: &mut Vec<u8>) {
        if !self.head_sent {
            self.head_sent = true;
            out.extend_from_slice(self.head().as_bytes());
        }
        if self.chunked {
            frame_chunk(batch, out);
            if last {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            out.extend_from_slice(batch);
        }
    }
}

/// Appends an event's SSE form to `out`.
pub(crate) fn render(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Message(message) => render_message(message, out),
        Event::Notice(notice) => out.extend_from_slice(notice.rendered.get_or_render(Wire::Sse, || {
            let data = json!({ "room": notice.room, "content": notice.text, "timestamp": rfc3339(notice.at_ms) });
            format!("event: system\ndata: {data}\n\n").into_bytes()
        })),
        Event::Changed(change) => out.extend_from_slice(change.rendered.get_or_render(Wire::Sse, || {
            // No `id:`: event ids are message ids, where a stream resumes.
            let (kind, data) = change_event(change);
            format!("event: {kind}\ndata: {data}\n\n").into_bytes()
        })),
        Event::Dm { dm, .. } => {
            let data = json!({ "from": dm.from, "to": dm.to, "content": dm.text, "timestamp": rfc3339(dm.at_ms) });
            out.extend_from_slice(format!("event: dm\ndata: {data}\n\n").as_bytes());
        }
        Event::RoomChanged { room, history } => {
            out.extend_from_slice(&connected_event(room.as_deref()));
            for message in history {
                render_message(message, out);
            }
        }
        Event::Ping => out.extend_from_slice(b": ping\n\n"),
        Event::Presence(presence) => out.extend_from_slice(presence.rendered.get_or_render(Wire::Sse, || {
            let data = json!({ "user": presence.user, "status": presence.status.as_str(), "message": presence.message });
            format!("event: presence\ndata: {data}\n\n").into_bytes()
        })),
        Event::Typing(typing) => out.extend_from_slice(typing.rendered.get_or_render(Wire::Sse, || {
            let data = json!({ "room": typing.room, "user": typing.user });
            format!("event: typing\ndata: {data}\n\n").into_bytes()
        })),
        // Command replies and refusals go back in the HTTP answers.
        Event::Reply(_) | Event::Error(_) | Event::Prompt(_) | Event::Ack(_) | Event::Pong(_) => {}
    }
}

/// Appends `bytes` as one HTTP chunk (nothing for no bytes: an empty chunk
/// would end the response).
fn frame_chunk(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `id:` + `event: message`, formatted once per message for every stream.
fn render_message(message: &ChatMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(message.rendered.get_or_render(Wire::Sse, || {
        let mut data = json!({
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
        format!("id: {}\nevent: message\ndata: {data}\n\n", message.id).into_bytes()
    }));
}

/// An edit's or a deletion's event name and fields (the same on WebSocket).
pub(crate) fn change_event(change: &MessageChange) -> (&'static str, serde_json::Value) {
    match &change.content {
        Some(text) => (
            "edit",
            json!({ "id": change.id, "room": change.room, "content": text, "editedAt": rfc3339(change.at_ms) }),
        ),
        None => ("delete", json!({ "id": change.id, "room": change.room })),
    }
}

fn connected_event(room: Option<&str>) -> Vec<u8> {
    format!("event: connected\ndata: {}\n\n", json!({ "room": room })).into_bytes()
}

fn error_event(why: &str) -> Vec<u8> {
    format!("event: error\ndata: {}\n\n", json!({ "error": why })).into_bytes()
}
