//! One client connection (TCP line protocol or HTTP/SSE) as a state machine
//! driven by edge-triggered mio readiness: reads until the socket is drained
//! (a short read or `WouldBlock`), writes from a per-connection outgoing
//! buffer until it is empty or `WouldBlock`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::proto::{
    classify, format_payload, json_str_field, parse_payload, HttpResp, Line, LineBuf, SseEvent, SseParser,
};
use crate::report::{Stats, Tracker};

/// Join retries (room not there yet, or an error reply) before giving up.
const MAX_JOIN_ATTEMPTS: u8 = 20;
const JOIN_RETRY: Duration = Duration::from_millis(250);
/// Nickname retries (taken / rejected).
const MAX_NICK_ATTEMPTS: u8 = 4;
/// Largest non-streaming HTTP response body kept.
const MAX_BODY: usize = 1 << 20;
const PROMPT: &[u8] = b"Enter your nickname:";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    TcpRecv,
    SseRecv,
    /// Receives over a WebSocket (`GET /api/ws`).
    WsRecv,
    TcpSender,
    HttpSender,
    /// Sends message frames over a WebSocket; acked by `ack` frames.
    WsSender,
    /// A one-request connection (POST /api/disconnect during cleanup).
    Oneshot,
    /// POSTs /api/typing for an SSE receiver's session, on a kept-alive
    /// connection of its own (`--typers`).
    Typer,
}

impl Role {
    pub fn is_receiver(self) -> bool {
        matches!(self, Role::TcpRecv | Role::SseRecv | Role::WsRecv)
    }
    pub fn is_http(self) -> bool {
        matches!(self, Role::SseRecv | Role::HttpSender | Role::Oneshot | Role::WsRecv | Role::WsSender | Role::Typer)
    }
    /// Ends up on an open stream (SSE or WebSocket), which joins the room.
    fn streams(self) -> bool {
        matches!(self, Role::SseRecv | Role::WsRecv | Role::WsSender)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Idle,
    TcpPrompt,
    TcpWelcome,
    TcpJoin {
        creating: bool,
    },
    TcpHistory,
    /// HTTP roles before they are joined: driven by the request in flight.
    Http,
    Ready,
    Done,
    Failed,
}

/// The HTTP request whose response is being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Req {
    Connect,
    Command { creating: bool },
    Stream,
    Message { sent_ns: u64 },
    Disconnect,
    Typing,
}

/// Shared state the connection handlers update.
pub struct Ctx {
    pub registry: Registry,
    pub start: Instant,
    /// Per target: (tcp addr, http addr, Host header value).
    pub addrs: Vec<(SocketAddr, SocketAddr, String)>,
    pub room: String,
    pub stats: Stats,
    pub tracker: Tracker,
    /// (when, connection id): join retries.
    pub timers: Vec<(Instant, usize)>,
    /// Per target: has the room creator finished (joined or failed)?
    pub creator_done: Vec<bool>,
    /// Main clients that have joined or failed (setup progress).
    pub settled: usize,
    /// Receivers joined from now on are not counted (sending has started).
    pub sending: bool,
}

impl Ctx {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Reusable scratch buffers for the handlers.
#[derive(Default)]
pub struct Scratch {
    pub rbuf: Vec<u8>,
    pub line: Vec<u8>,
    pub ev: SseEvent,
}

pub struct Conn {
    pub id: usize,
    pub role: Role,
    /// Index within its role (sender index for senders).
    pub idx: usize,
    pub target: usize,
    /// Receiver slot for order tracking (receivers only).
    pub slot: usize,
    pub nick: String,
    pub creator: bool,
    pub sock: Option<TcpStream>,
    pub connected: bool,
    pub ever_connected: bool,
    out: Vec<u8>,
    out_pos: usize,
    pub phase: Phase,
    lines: LineBuf,
    http: HttpResp,
    body: Vec<u8>,
    sse: Option<Box<SseParser>>,
    ws: Option<Box<WsClient>>,
    pub req: Option<Req>,
    pub session: String,
    pub joined: bool,
    /// Counted as a receiver of this run's messages.
    pub counted: bool,
    nick_attempt: u8,
    join_attempt: u8,
    /// HTTP sender: messages due while a request was in flight.
    pub pending: u32,
}

impl Conn {
    pub fn new(id: usize, role: Role, idx: usize, target: usize, nick: String) -> Self {
        Conn {
            id,
            role,
            idx,
            target,
            slot: 0,
            nick,
            creator: false,
            sock: None,
            connected: false,
            ever_connected: false,
            out: Vec::new(),
            out_pos: 0,
            phase: Phase::Idle,
            lines: LineBuf::default(),
            http: HttpResp::default(),
            body: Vec::new(),
            sse: None,
            ws: None,
            req: None,
            session: String::new(),
            joined: false,
            counted: false,
            nick_attempt: 0,
            join_attempt: 0,
            pending: 0,
        }
    }

    pub fn alive(&self) -> bool {
        !matches!(self.phase, Phase::Done | Phase::Failed | Phase::Idle)
    }

    /// Why a client that is still alive has not joined (setup timed out).
    pub fn stuck_reason(&self) -> String {
        let kind = match self.role {
            Role::TcpRecv => "tcp",
            Role::SseRecv => "sse",
            Role::WsRecv => "ws",
            Role::TcpSender | Role::HttpSender | Role::WsSender => "sender",
            Role::Oneshot => "cleanup",
            Role::Typer => "typer",
        };
        let what = if !self.connected {
            "still connecting".to_string()
        } else if let Some(req) = self.req {
            let got = if self.http.head_done() {
                format!("got HTTP {} head", self.http.status)
            } else if self.http.started() {
                "got part of the response head".to_string()
            } else {
                "no response bytes".to_string()
            };
            let unsent = self.out.len() - self.out_pos;
            let req = match req {
                Req::Command { .. } => "Command".to_string(),
                Req::Message { .. } => "Message".to_string(),
                r => format!("{r:?}"),
            };
            format!("waiting for {req} response ({got}, {unsent} request bytes unsent)")
        } else {
            format!("in phase {:?}", self.phase)
        };
        format!("{kind} not joined when setup ended: {what}")
    }

    /// Nothing more to send or await (HTTP sender).
    pub fn idle(&self) -> bool {
        self.req.is_none() && self.pending == 0 && self.out_pos >= self.out.len()
    }
}

fn role_stats(stats: &mut Stats, role: Role) -> Option<&mut crate::report::RoleStats> {
    match role {
        Role::TcpRecv => Some(&mut stats.tcp),
        Role::SseRecv => Some(&mut stats.sse),
        Role::WsRecv => Some(&mut stats.ws),
        Role::TcpSender | Role::HttpSender | Role::WsSender => Some(&mut stats.senders),
        Role::Oneshot | Role::Typer => None,
    }
}

// ------------------------------------------------------------ lifecycle --

/// Starts a client: opens its connection and begins the protocol.
pub fn start(c: &mut Conn, ctx: &mut Ctx) {
    match c.role {
        Role::TcpRecv | Role::TcpSender => {
            c.phase = Phase::TcpPrompt;
            open(c, ctx);
        }
        Role::SseRecv | Role::HttpSender | Role::WsRecv | Role::WsSender => {
            c.phase = Phase::Http;
            let body = format!("{{\"nickname\":\"{}\"}}", c.nick);
            let r = http_request(ctx, c.target, "POST", "/api/connect", Some(&body), false);
            send_request(c, ctx, Req::Connect, r);
        }
        Role::Typer => {
            // Made for a joined receiver once the run starts: ready at once,
            // connecting with its first signal.
            c.phase = Phase::Ready;
            c.joined = true;
        }
        Role::Oneshot => {
            c.phase = Phase::Http;
            let body = format!("{{\"sessionId\":\"{}\"}}", c.session);
            let r = http_request(ctx, c.target, "POST", "/api/disconnect", Some(&body), true);
            send_request(c, ctx, Req::Disconnect, r);
        }
    }
}

fn open(c: &mut Conn, ctx: &mut Ctx) -> bool {
    let (tcp, http, _) = &ctx.addrs[c.target];
    let addr = if c.role.is_http() { *http } else { *tcp };
    let mut sock = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            fail(c, ctx, &format!("connect {addr}: {e}"));
            return false;
        }
    };
    let _ = sock.set_nodelay(true);
    if let Err(e) = ctx.registry.register(&mut sock, Token(c.id), Interest::READABLE | Interest::WRITABLE) {
        fail(c, ctx, &format!("register: {e}"));
        return false;
    }
    c.sock = Some(sock);
    c.connected = false;
    true
}

fn drop_socket(c: &mut Conn, ctx: &mut Ctx) {
    if let Some(mut s) = c.sock.take() {
        let _ = ctx.registry.deregister(&mut s);
    }
    c.connected = false;
    c.out.clear();
    c.out_pos = 0;
    c.lines.clear_partial();
}

/// Closes a connection that has finished normally (end of run).
pub fn close(c: &mut Conn, ctx: &mut Ctx) {
    drop_socket(c, ctx);
    if c.alive() {
        c.phase = Phase::Done;
    }
}

/// Ends a connection because something went wrong, and counts it.
pub fn fail(c: &mut Conn, ctx: &mut Ctx, why: &str) {
    if matches!(c.phase, Phase::Done | Phase::Failed) {
        return;
    }
    drop_socket(c, ctx);
    let was_joined = c.joined;
    c.phase = Phase::Failed;
    if c.role == Role::Oneshot {
        ctx.stats.cleanup_failed += 1;
        return;
    }
    if let Some(rs) = role_stats(&mut ctx.stats, c.role) {
        if was_joined {
            rs.disconnects += 1;
        } else {
            rs.failed += 1;
        }
    }
    if !was_joined {
        ctx.settled += 1;
        if c.creator {
            ctx.creator_done[c.target] = true;
        }
    }
    let kind = match c.role {
        Role::TcpRecv => "tcp",
        Role::SseRecv => "sse",
        Role::WsRecv => "ws",
        Role::TcpSender | Role::HttpSender | Role::WsSender => "sender",
        Role::Oneshot => "cleanup",
        Role::Typer => "typer",
    };
    let when = if was_joined { "disconnected" } else { "failed" };
    ctx.stats.failures.record(&format!("{kind} {when}: {why}"));
}

fn joined(c: &mut Conn, ctx: &mut Ctx) {
    if c.joined {
        return;
    }
    c.joined = true;
    c.join_attempt = 0;
    ctx.settled += 1;
    if c.creator {
        ctx.creator_done[c.target] = true;
    }
    if let Some(rs) = role_stats(&mut ctx.stats, c.role) {
        rs.joined += 1;
    }
}

fn retry_join(c: &mut Conn, ctx: &mut Ctx, why: &str) {
    c.join_attempt += 1;
    if c.join_attempt > MAX_JOIN_ATTEMPTS {
        fail(c, ctx, &format!("could not join room: {why}"));
        return;
    }
    ctx.timers.push((Instant::now() + JOIN_RETRY, c.id));
}

/// A join-retry timer fired.
pub fn on_timer(c: &mut Conn, ctx: &mut Ctx) {
    if c.joined || !c.alive() {
        return;
    }
    match c.phase {
        Phase::TcpJoin { .. } => {
            let cmd = format!("/join {}\n", ctx.room);
            queue(c, ctx, cmd.as_bytes());
        }
        Phase::Http if c.req.is_none() => send_command(c, ctx, false),
        _ => {}
    }
}

// -------------------------------------------------------------- writing --

fn queue(c: &mut Conn, ctx: &mut Ctx, data: &[u8]) {
    c.out.extend_from_slice(data);
    if c.connected {
        flush(c, ctx);
    }
}

fn flush(c: &mut Conn, ctx: &mut Ctx) {
    while c.out_pos < c.out.len() {
        let Some(sock) = c.sock.as_mut() else { return };
        match sock.write(&c.out[c.out_pos..]) {
            Ok(0) => {
                fail(c, ctx, "write returned 0");
                return;
            }
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let why = format!("write: {e}");
                fail(c, ctx, &why);
                return;
            }
        }
    }
    if c.out_pos >= c.out.len() {
        c.out.clear();
        c.out_pos = 0;
    } else if c.out_pos > 64 * 1024 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
}

pub fn http_request(ctx: &Ctx, target: usize, method: &str, path: &str, body: Option<&str>, close: bool) -> Vec<u8> {
    let host = &ctx.addrs[target].2;
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if close {
        r.push_str("Connection: close\r\n");
    }
    match body {
        Some(b) => {
            r.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len()));
            r.push_str(b);
        }
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

fn send_request(c: &mut Conn, ctx: &mut Ctx, req: Req, bytes: Vec<u8>) {
    c.req = Some(req);
    c.http.reset();
    c.body.clear();
    if c.sock.is_none() {
        if c.ever_connected {
            ctx.stats.http_reconnects += 1;
        }
        if !open(c, ctx) {
            return;
        }
    }
    queue(c, ctx, &bytes);
}

fn send_command(c: &mut Conn, ctx: &mut Ctx, creating: bool) {
    let cmd = if creating { "create" } else { "join" };
    let body = format!("{{\"sessionId\":\"{}\",\"command\":\"/{} {}\"}}", c.session, cmd, ctx.room);
    let r = http_request(ctx, c.target, "POST", "/api/command", Some(&body), false);
    send_request(c, ctx, Req::Command { creating }, r);
}

fn send_stream(c: &mut Conn, ctx: &mut Ctx) {
    let path = format!("/api/messages/{}?sessionId={}", ctx.room, c.session);
    let host = &ctx.addrs[c.target].2;
    let r =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n");
    c.sse = Some(Box::default());
    send_request(c, ctx, Req::Stream, r.into_bytes());
}

/// Opens the WebSocket (on the kept-alive HTTP connection); `?room=`
/// joins the room, as an event stream does.
fn send_ws(c: &mut Conn, ctx: &mut Ctx) {
    let path = format!("/api/ws?sessionId={}&room={}", c.session, ctx.room);
    let host = &ctx.addrs[c.target].2;
    let r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    c.ws = Some(Box::new(WsClient::new()));
    c.req = None;
    if c.sock.is_none() && !open(c, ctx) {
        return;
    }
    queue(c, ctx, r.as_bytes());
}

/// Opens the client's stream: SSE or WebSocket.
fn send_open_stream(c: &mut Conn, ctx: &mut Ctx) {
    if c.role == Role::SseRecv {
        send_stream(c, ctx)
    } else {
        send_ws(c, ctx)
    }
}

/// The scheduler asks sender `c` to send its next message now.
pub fn send_message(c: &mut Conn, ctx: &mut Ctx) {
    if !(c.joined && c.phase == Phase::Ready) {
        ctx.stats.sender_down += 1;
        return;
    }
    match c.role {
        Role::TcpSender => {
            let seq = ctx.tracker.on_sent(c.idx);
            let mut line = format_payload(c.idx, seq, ctx.now_ns());
            line.push('\n');
            queue(c, ctx, line.as_bytes());
        }
        Role::WsSender => {
            let seq = ctx.tracker.on_sent(c.idx);
            let sent_ns = ctx.now_ns();
            let frame = format!(
                "{{\"type\":\"message\",\"content\":\"{}\",\"ref\":\"{sent_ns}\"}}",
                format_payload(c.idx, seq, sent_ns)
            );
            let ws = c.ws.as_mut().expect("a joined WebSocket sender has its socket");
            let _ = ws.socket.send(tungstenite::Message::text(frame));
            let out = std::mem::take(&mut ws.socket.get_mut().output);
            queue(c, ctx, &out);
        }
        Role::HttpSender => {
            if c.req.is_some() {
                c.pending += 1;
                ctx.stats.deferred += 1;
            } else {
                http_send(c, ctx);
            }
        }
        _ => {}
    }
}

/// A typer's turn to signal typing: a POST on its own connection (skipped
/// while the last one is unanswered), or a frame on a WebSocket receiver.
pub fn send_typing(c: &mut Conn, ctx: &mut Ctx) {
    if !c.alive() {
        return;
    }
    match c.role {
        Role::Typer if c.req.is_none() => {
            ctx.stats.typing_sent += 1;
            let body = format!("{{\"sessionId\":\"{}\"}}", c.session);
            let r = http_request(ctx, c.target, "POST", "/api/typing", Some(&body), false);
            send_request(c, ctx, Req::Typing, r);
        }
        Role::WsRecv if c.phase == Phase::Ready => {
            let Some(ws) = c.ws.as_mut() else { return };
            ctx.stats.typing_sent += 1;
            let _ = ws.socket.send(tungstenite::Message::text("{\"type\":\"typing\"}"));
            let out = std::mem::take(&mut ws.socket.get_mut().output);
            queue(c, ctx, &out);
        }
        _ => {}
    }
}

fn http_send(c: &mut Conn, ctx: &mut Ctx) {
    let seq = ctx.tracker.on_sent(c.idx);
    let sent_ns = ctx.now_ns();
    let body = format!("{{\"sessionId\":\"{}\",\"content\":\"{}\"}}", c.session, format_payload(c.idx, seq, sent_ns));
    let r = http_request(ctx, c.target, "POST", "/api/message", Some(&body), false);
    send_request(c, ctx, Req::Message { sent_ns }, r);
}

fn message_failed(ctx: &mut Ctx, why: &str) {
    ctx.tracker.failed += 1;
    ctx.stats.errors.record(why);
}

// -------------------------------------------------------------- reading --

/// Handles a readiness event for `c`; `peer_closed`: the event says the
/// peer has shut its side (or the socket failed), so the socket is read to
/// its end whatever the length of the reads.
pub fn on_event(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, peer_closed: bool) {
    if c.sock.is_none() {
        return;
    }
    if !c.connected {
        let sock = c.sock.as_ref().unwrap();
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => {
                fail(c, ctx, &format!("connect: {e}"));
                return;
            }
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => {
                c.connected = true;
                if !c.ever_connected {
                    c.ever_connected = true;
                    if let Some(rs) = role_stats(&mut ctx.stats, c.role) {
                        rs.connected += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => {
                fail(c, ctx, &format!("connect: {e}"));
                return;
            }
        }
    }
    flush(c, ctx);
    read_all(c, ctx, s, peer_closed);
}

fn read_all(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, peer_closed: bool) {
    if s.rbuf.len() < 64 * 1024 {
        s.rbuf.resize(64 * 1024, 0);
    }
    loop {
        let Some(sock) = c.sock.as_mut() else { return };
        match sock.read(&mut s.rbuf) {
            Ok(0) => {
                on_eof(c, ctx, s);
                return;
            }
            Ok(n) => {
                let data = std::mem::take(&mut s.rbuf);
                let now_ns = ctx.now_ns();
                if c.ws.is_some() {
                    ws_data(c, ctx, &data[..n], now_ns);
                } else if c.role.is_http() {
                    http_data(c, ctx, s, &data[..n], now_ns);
                } else {
                    tcp_data(c, ctx, s, &data[..n], now_ns);
                }
                let drained = n < data.len();
                s.rbuf = data;
                // A read shorter than the buffer emptied the socket's
                // receive queue; anything arriving later raises a new
                // edge-triggered event (Linux epoll wakes on every arrival,
                // tokio relies on the same). Skipping the read that would
                // only say `WouldBlock` halves the generator's read calls,
                // and the generator shares the cores with the server. A
                // close that came with this data raises no new event, so
                // then the socket is read on to its end.
                if drained && !peer_closed {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let why = format!("read: {e}");
                fail(c, ctx, &why);
                return;
            }
        }
    }
}

fn on_eof(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch) {
    if c.ws.is_some() {
        fail(c, ctx, "WebSocket closed by server");
        return;
    }
    if !c.role.is_http() {
        fail(c, ctx, "connection closed by server");
        return;
    }
    let Some(req) = c.req else {
        // idle keep-alive connection closed: reconnect on the next request
        drop_socket(c, ctx);
        if c.role == Role::SseRecv {
            fail(c, ctx, "connection closed by server");
        }
        return;
    };
    if c.http.eof() {
        // close-delimited response complete
        c.req = None;
        drop_socket(c, ctx);
        on_response(c, ctx, s, req);
        return;
    }
    drop_socket(c, ctx);
    match req {
        Req::Message { .. } if c.phase == Phase::Ready => {
            c.req = None;
            message_failed(ctx, "POST /api/message: connection closed before response");
            if c.pending > 0 {
                c.pending -= 1;
                http_send(c, ctx);
            }
        }
        Req::Stream if c.phase == Phase::Ready => fail(c, ctx, "event stream closed by server"),
        _ => {
            let started = if c.http.started() { "during" } else { "before" };
            fail(c, ctx, &format!("connection closed {started} response to {req:?}"));
        }
    }
}

fn tcp_data(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, data: &[u8], now_ns: u64) {
    c.lines.push(data);
    let before = c.lines.overlong;
    while c.lines.next_line(&mut s.line) {
        tcp_line(c, ctx, &s.line, now_ns);
        if !c.alive() {
            return;
        }
    }
    ctx.stats.seen.overlong += c.lines.overlong - before;
    if matches!(c.phase, Phase::TcpPrompt | Phase::TcpWelcome) && c.lines.partial().starts_with(PROMPT) {
        c.lines.clear_partial();
        prompt(c, ctx);
    }
}

fn prompt(c: &mut Conn, ctx: &mut Ctx) {
    if c.phase == Phase::TcpWelcome {
        // prompted again: the nickname was refused
        c.nick_attempt += 1;
        if c.nick_attempt > MAX_NICK_ATTEMPTS || c.nick.len() + 2 > 32 {
            fail(c, ctx, "nickname refused");
            return;
        }
        c.nick = format!("{}{}", c.nick, c.nick_attempt);
    }
    c.phase = Phase::TcpWelcome;
    let line = format!("{}\n", c.nick);
    queue(c, ctx, line.as_bytes());
}

fn tcp_line(c: &mut Conn, ctx: &mut Ctx, line: &[u8], now_ns: u64) {
    let kind = classify(line);
    let seen = &mut ctx.stats.seen;
    match kind {
        Line::Room { .. } => {}
        Line::System => seen.system += 1,
        Line::Dm => seen.dm += 1,
        Line::Error => {
            seen.errors += 1;
            ctx.stats.errors.record(&String::from_utf8_lossy(line));
        }
        Line::Other => seen.other += 1,
    }
    match c.phase {
        Phase::TcpPrompt | Phase::TcpWelcome if line.starts_with(PROMPT) => prompt(c, ctx),
        Phase::TcpWelcome if line.starts_with(b"Welcome, ") => {
            let verb = if c.creator { "create" } else { "join" };
            let cmd = format!("/{verb} {}\n", ctx.room);
            c.phase = Phase::TcpJoin { creating: c.creator };
            queue(c, ctx, cmd.as_bytes());
        }
        Phase::TcpJoin { creating } => {
            if line.starts_with(b"Created and joined room:") || line.starts_with(b"Joined room:") {
                c.phase = Phase::TcpHistory;
                joined(c, ctx);
            } else if kind == Line::Error {
                if creating {
                    c.phase = Phase::TcpJoin { creating: false };
                    let cmd = format!("/join {}\n", ctx.room);
                    queue(c, ctx, cmd.as_bytes());
                } else {
                    retry_join(c, ctx, &String::from_utf8_lossy(line));
                }
            }
        }
        Phase::TcpHistory => {
            if line == b"---" {
                c.phase = Phase::Ready;
            } else if let Line::Room { text, .. } = kind {
                // history from earlier runs; a payload of this run means
                // the end marker was missed
                match parse_payload(text) {
                    Some(p) if ctx.sending && ctx.tracker.is_sent(p) => {
                        c.phase = Phase::Ready;
                        room_line(c, ctx, kind, now_ns);
                    }
                    _ => ctx.stats.seen.history_lines += 1,
                }
            }
        }
        Phase::Ready => match kind {
            Line::Room { .. } => room_line(c, ctx, kind, now_ns),
            Line::Error if c.role == Role::TcpSender && contains(line, b"slow down") => ctx.tracker.failed += 1,
            _ => {}
        },
        _ => {}
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn room_line(c: &mut Conn, ctx: &mut Ctx, kind: Line<'_>, now_ns: u64) {
    let Line::Room { nick, text, .. } = kind else { return };
    ctx.stats.seen.room_lines += 1;
    let Some(p) = parse_payload(text) else {
        ctx.stats.seen.foreign_room_lines += 1;
        return;
    };
    match c.role {
        Role::TcpRecv if c.counted => ctx.tracker.deliver(c.slot, p, now_ns),
        Role::TcpSender if nick == c.nick.as_bytes() && p.sender as usize == c.idx => {
            ctx.stats.acked += 1;
            ctx.stats.ack_latency.record(now_ns.saturating_sub(p.sent_ns));
        }
        _ => {}
    }
}

fn http_data(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, mut data: &[u8], now_ns: u64) {
    while !data.is_empty() && c.sock.is_some() {
        let Some(req) = c.req else {
            ctx.stats.seen.other += 1;
            ctx.stats.errors.record("unexpected bytes on idle HTTP connection");
            return;
        };
        let (used, done) = match c.http.feed(data, &mut c.body) {
            Ok(x) => x,
            Err(e) => {
                fail(c, ctx, &format!("bad HTTP response: {e}"));
                return;
            }
        };
        data = &data[used..];
        if req == Req::Stream && c.http.head_done() && c.http.status == 200 {
            sse_body(c, ctx, s, now_ns);
            if !c.alive() {
                return;
            }
        } else if c.body.len() > MAX_BODY {
            fail(c, ctx, "HTTP response body too large");
            return;
        }
        if done {
            c.req = None;
            if c.http.close {
                drop_socket(c, ctx);
            }
            on_response(c, ctx, s, req);
            if c.req.is_none() && c.sock.is_some() && !data.is_empty() {
                ctx.stats.errors.record("unexpected bytes after HTTP response");
                return;
            }
        }
    }
}

fn status_error(c: &Conn, what: &str) -> String {
    format!("{what}: HTTP {} {}", c.http.status, String::from_utf8_lossy(&c.body[..c.body.len().min(200)]))
}

fn command_ok(c: &Conn) -> bool {
    c.http.status == 200
        && !contains(&c.body, b"\"success\":false")
        && !json_str_field(&c.body, "message").is_some_and(|m| m.starts_with(b"Error"))
}

fn on_response(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, req: Req) {
    let status = c.http.status;
    match req {
        Req::Connect => {
            if status == 200 {
                if let Some(sid) = json_str_field(&c.body, "sessionId") {
                    c.session = String::from_utf8_lossy(sid).into_owned();
                    if c.creator {
                        send_command(c, ctx, true);
                    } else if c.role.streams() {
                        send_open_stream(c, ctx);
                    } else {
                        send_command(c, ctx, false);
                    }
                    return;
                }
            }
            let why = status_error(c, "POST /api/connect");
            if status != 200 {
                ctx.stats.errors.record(&why);
            }
            if status == 409 && c.nick_attempt < MAX_NICK_ATTEMPTS && c.nick.len() + 2 <= 32 {
                c.nick_attempt += 1;
                c.nick = format!("{}{}", c.nick, c.nick_attempt);
                start(c, ctx);
                return;
            }
            fail(c, ctx, &why);
        }
        Req::Command { creating } => {
            let ok = command_ok(c);
            if !ok {
                let why = status_error(c, "POST /api/command");
                ctx.stats.errors.record(&why);
            }
            if c.role.streams() {
                // the stream request joins the room by itself
                send_open_stream(c, ctx);
            } else if ok {
                c.phase = Phase::Ready;
                joined(c, ctx);
            } else if creating {
                send_command(c, ctx, false);
            } else {
                let why = status_error(c, "join");
                retry_join(c, ctx, &why);
            }
        }
        Req::Stream => {
            if status != 200 {
                let why = status_error(c, "GET /api/messages");
                ctx.stats.errors.record(&why);
                fail(c, ctx, &why);
            } else {
                sse_body(c, ctx, s, ctx.now_ns());
                fail(c, ctx, "event stream ended");
            }
        }
        Req::Message { sent_ns } => {
            if status == 200 {
                ctx.stats.acked += 1;
                ctx.stats.ack_latency.record(ctx.now_ns().saturating_sub(sent_ns));
            } else {
                let why = status_error(c, "POST /api/message");
                message_failed(ctx, &why);
            }
            if c.pending > 0 && c.alive() {
                c.pending -= 1;
                http_send(c, ctx);
            }
        }
        Req::Typing => {
            if status == 200 {
                ctx.stats.typing_ok += 1;
            } else {
                ctx.stats.typing_failed += 1;
                ctx.stats.errors.record(&status_error(c, "POST /api/typing"));
            }
        }
        Req::Disconnect => {
            if status == 200 {
                ctx.stats.cleanup_ok += 1;
            } else {
                ctx.stats.cleanup_failed += 1;
            }
            close(c, ctx);
        }
    }
}

fn sse_body(c: &mut Conn, ctx: &mut Ctx, s: &mut Scratch, now_ns: u64) {
    let Some(sse) = c.sse.as_mut() else { return };
    sse.push(&c.body);
    c.body.clear();
    let before = sse.overlong();
    while sse.next_event(&mut s.ev) {
        let ev = &s.ev;
        let seen = &mut ctx.stats.seen;
        if ev.comment {
            if ev.data.trim_ascii() == b"ping" {
                seen.sse_pings += 1;
            } else {
                seen.sse_other += 1;
            }
            continue;
        }
        match &ev.kind[..] {
            b"connected" => {
                if c.phase != Phase::Ready {
                    c.phase = Phase::Ready;
                    if !c.joined {
                        c.joined = true;
                        c.join_attempt = 0;
                        ctx.settled += 1;
                        if c.creator {
                            ctx.creator_done[c.target] = true;
                        }
                        ctx.stats.sse.joined += 1;
                    }
                }
            }
            b"message" => {
                seen.sse_messages += 1;
                match json_str_field(&ev.data, "content").and_then(parse_payload) {
                    Some(p) if c.counted => ctx.tracker.deliver(c.slot, p, now_ns),
                    Some(_) => {}
                    None => seen.foreign_room_lines += 1,
                }
            }
            b"system" => seen.system += 1,
            b"dm" => seen.dm += 1,
            b"typing" => seen.typing += 1,
            b"error" => {
                seen.errors += 1;
                ctx.stats.errors.record(&format!("SSE error event: {}", String::from_utf8_lossy(&ev.data)));
            }
            _ => seen.sse_other += 1,
        }
    }
    ctx.stats.seen.overlong += sse.overlong() - before;
}

// ------------------------------------------------------------ websocket --

/// The bytes between a WebSocket and its socket: `tungstenite` reads what
/// the event loop received and writes what is to be queued to the socket.
#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.input.len() {
            self.input.clear();
            self.pos = 0;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A WebSocket client: the upgrade's response head, then frames.
struct WsClient {
    head: Vec<u8>,
    upgraded: bool,
    socket: tungstenite::WebSocket<Pipe>,
}

impl WsClient {
    fn new() -> WsClient {
        let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let socket =
            tungstenite::WebSocket::from_raw_socket(Pipe::default(), tungstenite::protocol::Role::Client, Some(config));
        WsClient { head: Vec::new(), upgraded: false, socket }
    }
}

fn ws_data(c: &mut Conn, ctx: &mut Ctx, data: &[u8], now_ns: u64) {
    let ws = c.ws.as_mut().expect("a WebSocket client");
    if !ws.upgraded {
        ws.head.extend_from_slice(data);
        let Some(end) = ws.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if ws.head.len() > 16 * 1024 {
                fail(c, ctx, "WebSocket handshake: response head too long");
            }
            return;
        };
        let head = String::from_utf8_lossy(&ws.head[..end]).into_owned();
        if head.split_whitespace().nth(1) != Some("101") {
            let why = format!("GET /api/ws: {}", crate::proto::truncate(head.lines().next().unwrap_or(""), 80));
            ctx.stats.errors.record(&why);
            fail(c, ctx, &why);
            return;
        }
        ws.upgraded = true;
        let rest = ws.head.split_off(end + 4);
        ws.head = Vec::new();
        ws.socket.get_mut().input.extend_from_slice(&rest);
    } else {
        ws.socket.get_mut().input.extend_from_slice(data);
    }
    loop {
        let Some(ws) = c.ws.as_mut() else { return };
        let text = match ws.socket.read() {
            Ok(tungstenite::Message::Text(text)) => text,
            Ok(tungstenite::Message::Close(frame)) => {
                let why = format!("WebSocket closed by server: {frame:?}");
                fail(c, ctx, &why);
                return;
            }
            Ok(tungstenite::Message::Ping(_)) => {
                ctx.stats.seen.sse_pings += 1;
                continue;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                fail(c, ctx, &format!("WebSocket: {e}"));
                return;
            }
        };
        ws_frame(c, ctx, text.as_bytes(), now_ns);
    }
    // Pongs tungstenite answered with.
    if let Some(ws) = c.ws.as_mut() {
        let out = std::mem::take(&mut ws.socket.get_mut().output);
        if !out.is_empty() {
            queue(c, ctx, &out);
        }
    }
}

fn ws_frame(c: &mut Conn, ctx: &mut Ctx, frame: &[u8], now_ns: u64) {
    let seen = &mut ctx.stats.seen;
    match json_str_field(frame, "type").unwrap_or(b"") {
        b"connected" => {
            if c.phase != Phase::Ready {
                c.phase = Phase::Ready;
                joined(c, ctx);
            }
        }
        b"message" => {
            seen.sse_messages += 1;
            match json_str_field(frame, "content").and_then(parse_payload) {
                Some(p) if c.counted => ctx.tracker.deliver(c.slot, p, now_ns),
                Some(_) => {}
                None => seen.foreign_room_lines += 1,
            }
        }
        b"ack" => {
            if let Some(sent_ns) = json_str_field(frame, "ref").and_then(|r| std::str::from_utf8(r).ok()?.parse().ok()) {
                ctx.stats.acked += 1;
                ctx.stats.ack_latency.record(now_ns.saturating_sub(sent_ns));
            }
        }
        b"error" => {
            seen.errors += 1;
            let why = format!("WebSocket error frame: {}", String::from_utf8_lossy(frame));
            if json_str_field(frame, "ref").is_some() {
                message_failed(ctx, &why);
            } else {
                ctx.stats.errors.record(&why);
            }
        }
        b"system" => seen.system += 1,
        b"dm" => seen.dm += 1,
        b"typing" => seen.typing += 1,
        _ => seen.sse_other += 1,
    }
}
