//! Server-Sent Events: `GET /api/messages/:room?sessionId=…` (SPEC §4).
//!
//! Each stream has its own thread (`sse`, `CLIENT_STACK_KB` stack) that owns
//! the connection until the stream ends: it attaches the stream to the
//! session through the router, writes the response head and any replay
//! itself, then hands the live traffic to the shared writer pool
//! ([`crate::adapters::writers`]), which sends each batch of events at once
//! (one thread woken per stream per message would cost more than the writes
//! themselves). The stream's thread then only sends a `: ping` comment every
//! `SSE_PING_SECS`; a write that fails is how a closed client is noticed,
//! and the thread then detaches from the session and ends (the session
//! itself stays until it idles out, so a reconnecting browser keeps its
//! nickname and room).
//!
//! The stream is written through [`Request::into_writer`] with headers of
//! our own: tiny_http's chunked `Response` holds small events back in an
//! 8 KiB buffer. tiny_http gives us no handle on the socket, so we cannot
//! close a keep-alive connection ourselves; to be able to *end* a stream
//! (the session was replaced, closed, dropped as too slow, or the server
//! is stopping) we frame it in chunks of our own, one per flush, and end it
//! with the last chunk. A request that says `Connection: close` (or is
//! HTTP/1.0) gets a plain stream instead: tiny_http lets go of such a
//! connection after the request, so dropping our writer closes it.
//!
//! Event ids are message ids. A client that reconnects with
//! `Last-Event-ID` (or `?lastEventId=`) gets every message of the room after
//! that id, in order, then the live ones: from the router's ring buffer when
//! it still holds them all, otherwise from the store first (see
//! [`Stream::catch_up`]). No message is sent twice or out of order.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tiny_http::Request;
use uuid::Uuid;

use super::request::{header, query_param, session_token, split_url};
use super::response::{send, Refusal};
use super::HttpContext;
use crate::adapters::ConnectionSlot;
use crate::error::ChatError;
use crate::adapters::writers::{Format, OutboxSink, Socket};
use crate::event::{rfc3339, ChatMessage, CloseReason, Event, Sink, Wire};
use crate::names::normalize_room;
use crate::router::{RouterMsg, SessionRef};

/// Messages read from the store per round of a replay.
const REPLAY_PAGE: usize = 1000;

/// What a stream request asked for, checked on the worker thread.
struct StreamRequest {
    token: Uuid,
    room: String,
    /// Resume after this message id (`Last-Event-ID`).
    after: Option<i64>,
    framing: Framing,
    /// This request's place among the session's streams.
    turn: u64,
}

/// Orders the streams of each session by arrival, so the newest always
/// wins: an older stream still replaying from the store must not attach
/// after a newer one has (the router would let it replace the newer one).
/// Every attach is sent to the router under one short lock, after checking
/// that its stream is still the newest of its session.
#[derive(Default)]
pub struct StreamTurns {
    newest: Mutex<HashMap<Uuid, u64>>,
    next: AtomicU64,
}

impl StreamTurns {
    /// The next turn for a stream of `token`, which is now the newest.
    fn take(&self, token: Uuid) -> u64 {
        let turn = self.next.fetch_add(1, Relaxed);
        self.newest.lock().unwrap_or_else(|e| e.into_inner()).insert(token, turn);
        turn
    }

    /// Runs `send` if `turn` is still the newest stream of `token`.
    fn if_newest(&self, token: Uuid, turn: u64, send: impl FnOnce()) -> bool {
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        let current = newest.get(&token) == Some(&turn);
        if current {
            send();
        }
        current
    }

    /// Forgets an ended stream (unless a newer one has taken its place).
    fn release(&self, token: Uuid, turn: u64) {
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if newest.get(&token) == Some(&turn) {
            newest.remove(&token);
        }
    }
}

/// How the stream's bytes are delimited on the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Our own chunked transfer coding: one chunk per flush, and a last
    /// chunk that ends the response while the connection stays open.
    Chunked,
    /// Bytes as they are; the stream ends when the connection closes.
    Plain,
}

/// Starts a stream (on a worker thread): checks the request, takes a
/// connection place and hands the request to a new stream thread.
pub fn open(request: Request, room: String, ctx: &HttpContext) {
    let mut wanted = match check(&request, &room) {
        Ok(wanted) => wanted,
        Err(refusal) => return send(request, refusal.into(), ctx),
    };
    wanted.turn = ctx.streams.take(wanted.token);
    let Some(slot) = ctx.connections.try_acquire() else {
        ctx.metrics.rejected_connections.fetch_add(1, Relaxed);
        return send(request, Refusal::from(ChatError::ServerFull).into(), ctx);
    };
    // The request travels through a channel so that it can be answered
    // here if the thread cannot be started.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(request);
    let (thread_rx, thread_ctx) = (rx.clone(), ctx.clone());
    let spawned =
        std::thread::Builder::new().name("sse".into()).stack_size(ctx.limits.client_stack_bytes).spawn(move || {
            if let Ok(request) = thread_rx.recv() {
                serve(request, wanted, &thread_ctx, slot);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start a thread for an SSE stream: {e}");
        if let Ok(request) = rx.try_recv() {
            send(request, Refusal::from(ChatError::ServerFull).into(), ctx);
        }
    }
}

fn check(request: &Request, room: &str) -> Result<StreamRequest, Refusal> {
    let (_, query) = split_url(request.url());
    let token = match query_param(query, "sessionId").filter(|id| !id.is_empty()) {
        Some(id) => session_token(&id)?,
        None => return Err(Refusal::bad("missing sessionId: use GET /api/messages/<room>?sessionId=<id>.")),
    };
    let room = normalize_room(room)?;
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
    Ok(StreamRequest { token, room, after, framing, turn: 0 })
}

/// How a stream ended.
enum End {
    /// The router closed the session's output.
    Closed(CloseReason),
    /// A write failed: the client has gone.
    ClientGone,
    /// The stream cannot go on; the client is told why.
    Failed(String),
}

/// The life of one stream, on its own thread.
fn serve(request: Request, wanted: StreamRequest, ctx: &HttpContext, _slot: ConnectionSlot) {
    let (token, turn) = (wanted.token, wanted.turn);
    serve_turn(request, wanted, ctx);
    ctx.streams.release(token, turn);
}

fn serve_turn(request: Request, wanted: StreamRequest, ctx: &HttpContext) {
    let StreamRequest { token, room, after, framing, turn } = wanted;
    let session = match ctx.router.session(token) {
        Ok(Some(id)) => id,
        Ok(None) => return send(request, Refusal::from(ChatError::UnknownSession).into(), ctx),
        Err(e) => return send(request, Refusal::from(e).into(), ctx),
    };
    // The live part of the stream is written by the writer pool on the
    // connection's socket, which tiny_http's writer keeps open: this thread
    // holds that writer until the pool is finished with the socket.
    let Some(fd) = request.raw_fd() else {
        return send(request, Refusal::new(500, "this connection cannot carry an event stream.").into(), ctx);
    };
    // SAFETY: every path below waits for `wait_finished` (or closes the
    // outbox before it was ever released) before the request's writer drops.
    let handle = unsafe { Socket::borrowed(fd) };
    let format = Format::Sse { chunked: framing == Framing::Chunked };
    let outbox = ctx.writers.outbox(handle, format, ctx.limits.outbox_capacity, true);
    let sink: Arc<dyn Sink> = Arc::new(OutboxSink(outbox.clone()));
    let attacher = Attacher { ctx, token, turn, room: &room, sink: &sink };
    let attached = match attacher.attach(after) {
        Ok(Attach::Attached) => true,
        Ok(Attach::Replay) => false,
        Ok(Attach::Superseded) => {
            outbox.abandon();
            return send(request, Refusal::new(409, "a newer stream for this session has been opened.").into(), ctx);
        }
        Err(e) => {
            outbox.abandon();
            return send(request, Refusal::from(e).into(), ctx);
        }
    };
    ctx.stats.record(200);
    ctx.metrics.http_streams.fetch_add(1, Relaxed);
    log::debug!("SSE stream for session {} on {room} opened", session.0);

    let mut stream = Stream { writer: request.into_writer(), framing, frame: Vec::new(), skip_connected: false };
    let opened = match stream.start() {
        Err(_) => Err(End::ClientGone),
        Ok(()) if attached => Ok(()),
        Ok(()) => stream.catch_up(&attacher, after.unwrap_or(0)),
    };
    match opened {
        Ok(()) => {
            outbox.release(stream.skip_connected);
            while !outbox.wait_finished(ctx.limits.sse_ping) {
                // A full queue means the router is about to drop the session.
                let _ = sink.deliver(Event::Ping);
            }
        }
        Err(end) => {
            let last_words = match end {
                End::Closed(CloseReason::Replaced) => Some("a newer stream took over this session.".to_string()),
                End::Failed(why) => Some(why),
                End::Closed(_) | End::ClientGone => None,
            };
            if let Some(why) = last_words {
                let _ = stream.write(&error_event(&why));
            }
            // The pool ends the response (last chunk) and closes the socket;
            // the socket must outlive its use there (a stalled client is
            // given up after WRITE_TIMEOUT_SECS).
            sink.close(CloseReason::Normal);
            outbox.release(false);
            while !outbox.wait_finished(Duration::from_secs(1)) {}
        }
    }
    // Whatever happened, this stream no longer takes events.
    ctx.router.send(RouterMsg::DetachStream { session, sink: sink.clone() });
    sink.close(CloseReason::Normal);
    ctx.metrics.http_streams.fetch_sub(1, Relaxed);
    log::debug!("SSE stream for session {} ended", session.0);
}

/// What an attach attempt came to.
enum Attach {
    Attached,
    /// The ring buffer no longer holds every message after `after`;
    /// nothing was attached: replay from the store, then try again.
    Replay,
    /// A newer stream of the session came first; this one must end.
    Superseded,
}

/// Attaches one stream's sink to its session, in turn.
struct Attacher<'a> {
    ctx: &'a HttpContext,
    token: Uuid,
    turn: u64,
    /// Normalized room name.
    room: &'a str,
    sink: &'a Arc<dyn Sink>,
}

impl Attacher<'_> {
    /// Asks the router to attach the sink (joining the room if needed),
    /// starting after message `after` if given.
    fn attach(&self, after: Option<i64>) -> Result<Attach, ChatError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let msg = RouterMsg::AttachStream {
            session: SessionRef::Token(self.token),
            room: self.room.to_string(),
            sink: self.sink.clone(),
            after,
            reply: tx,
        };
        if !self.ctx.streams.if_newest(self.token, self.turn, || self.ctx.router.send(msg)) {
            return Ok(Attach::Superseded);
        }
        match rx.recv_timeout(Duration::from_secs(30)).unwrap_or(Err(ChatError::ShuttingDown))? {
            true => Ok(Attach::Attached),
            false => Ok(Attach::Replay),
        }
    }
}

/// One open stream's connection.
struct Stream {
    writer: Box<dyn Write + Send>,
    framing: Framing,
    /// Reused buffer for a framed write.
    frame: Vec<u8>,
    /// Set when `connected` was written before the router's `RoomChanged`
    /// (a replay from the store), so that one is not announced twice.
    skip_connected: bool,
}

impl Stream {
    /// The response head; no chunk has been written yet.
    fn start(&mut self) -> io::Result<()> {
        let framing = match self.framing {
            Framing::Chunked => "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n",
            Framing::Plain => "Connection: close\r\n",
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n{framing}\r\n"
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.flush()
    }

    /// Writes `bytes` (one chunk, when chunked) and flushes at once.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Plain => self.writer.write_all(bytes)?,
            Framing::Chunked => {
                self.frame.clear();
                frame_chunk(bytes, &mut self.frame);
                self.writer.write_all(&self.frame)?;
                if self.frame.capacity() > 64 * 1024 {
                    self.frame = Vec::new();
                }
            }
        }
        self.writer.flush()
    }

    /// Replays from the store what the ring buffer no longer holds, then
    /// attaches from the last replayed message; repeats while messages
    /// arrive faster than the replay catches up.
    fn catch_up(&mut self, attacher: &Attacher, mut after: i64) -> Result<(), End> {
        let (ctx, room) = (attacher.ctx, attacher.room);
        self.write(&connected_event(Some(room))).map_err(|_| End::ClientGone)?;
        self.skip_connected = true;
        let room_id = ctx
            .router
            .room(room)
            .ok()
            .flatten()
            .ok_or_else(|| End::Failed(ChatError::NoSuchRoom(room.to_string()).to_string()))?
            .id;
        loop {
            let page =
                ctx.store.query(move |store| store.messages_after(room_id, after, REPLAY_PAGE)).map_err(|e| {
                    log::warn!("cannot replay room {room}: {e}");
                    End::Failed(
                        "the message store is unavailable, so missed messages cannot be replayed. Reconnect shortly."
                            .into(),
                    )
                })?;
            if page.is_empty() {
                // The store has nothing newer though the ring buffer says it
                // has moved on: go on from where the ring buffer starts.
                let evicted = ctx.router.room(room).ok().flatten().map(|r| r.evicted_up_to);
                after = after.max(evicted.unwrap_or(after));
            }
            let mut bytes = Vec::new();
            for message in &page {
                render_message(message, &mut bytes);
                after = message.id;
            }
            self.write(&bytes).map_err(|_| End::ClientGone)?;
            if page.len() == REPLAY_PAGE {
                continue;
            }
            match attacher.attach(Some(after)) {
                Ok(Attach::Attached) => return Ok(()),
                Ok(Attach::Replay) => continue,
                Ok(Attach::Superseded) => return Err(End::Closed(CloseReason::Replaced)),
                Err(e) => return Err(End::Failed(e.to_string())),
            }
        }
    }
}

/// Appends an event's SSE form to `out`. `skip_connected` suppresses the
/// `connected` of the next room change once (the stream announced it before
/// replaying from the store).
pub(crate) fn render(event: &Event, out: &mut Vec<u8>, skip_connected: &mut bool) {
    match event {
        Event::Message(message) => render_message(message, out),
        Event::Notice(notice) => out.extend_from_slice(notice.rendered.get_or_render(Wire::Sse, || {
            let data = json!({ "room": notice.room, "content": notice.text, "timestamp": rfc3339(notice.at_ms) });
            format!("event: system\ndata: {data}\n\n").into_bytes()
        })),
        Event::Dm { dm, .. } => {
            let data = json!({ "from": dm.from, "to": dm.to, "content": dm.text, "timestamp": rfc3339(dm.at_ms) });
            out.extend_from_slice(format!("event: dm\ndata: {data}\n\n").as_bytes());
        }
        Event::RoomChanged { room, history } => {
            if !std::mem::take(skip_connected) {
                out.extend_from_slice(&connected_event(room.as_deref()));
            }
            for message in history {
                render_message(message, out);
            }
        }
        Event::Ping => out.extend_from_slice(b": ping\n\n"),
        // Command replies and refusals go back in the HTTP answers.
        Event::Reply(_) | Event::Error(_) | Event::Prompt(_) => {}
    }
}

/// Appends `bytes` as one HTTP chunk (nothing for no bytes: an empty chunk
/// would end the response).
pub(crate) fn frame_chunk(bytes: &[u8], out: &mut Vec<u8>) {
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
        let data = json!({
            "id": message.id,
            "room": message.room,
            "user": message.nickname,
            "content": message.content,
            "timestamp": rfc3339(message.created_at_ms),
        });
        format!("id: {}\nevent: message\ndata: {data}\n\n", message.id).into_bytes()
    }));
}

fn connected_event(room: Option<&str>) -> Vec<u8> {
    format!("event: connected\ndata: {}\n\n", json!({ "room": room })).into_bytes()
}

pub(crate) fn error_event(why: &str) -> Vec<u8> {
    format!("event: error\ndata: {}\n\n", json!({ "error": why })).into_bytes()
}
