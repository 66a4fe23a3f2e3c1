//! The netcat line protocol (written up in `docs/protocol.md`).
//!
//! Each client costs one thread with a small stack (`CLIENT_STACK_KB`), its
//! **reader**: it reads the socket, runs the nickname prompt, then turns
//! each line into a router request. Output goes through the client's
//! outbox, sent by the shared writer pool ([`super::writers`]) through this
//! adapter's [`LineEncoder`]. The socket is one descriptor, shared (`Arc`)
//! by the reader and the outbox; the writer pool shuts it when the output
//! ends, which is how the reader learns to stop.
//!
//! The router only ever queues into the outbox, so a client that stops
//! reading delays nobody: its outbox fills and the router drops it. A socket
//! that stays full longer than `WRITE_TIMEOUT_SECS` ends the connection too.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::lines::{LineEvent, LineReader};
use super::writers::{Conn, Encoder, Writers};
use super::{ConnectionLimit, ConnectionSlot};
use crate::accounts::{Accounts, Secret};
use crate::command::{parse_input, Command, Input};
use crate::config::Limits;
use crate::error::ChatError;
use crate::event::{CloseReason, Event, Protocol, SessionId, Sink, Transport, Wire};

/// How TCP output looks on the wire: one line per event (the prompt
/// without its line ending); the last words of a dropped client are an
/// `Error:` line.
pub struct LineEncoder;

impl Encoder for LineEncoder {
    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        render(event, out);
    }

    fn last_words(&mut self, reason: CloseReason, out: &mut Vec<u8>) {
        if let Some(why) = reason.explanation() {
            out.extend_from_slice(format!("Error: {why}\n").as_bytes());
        }
    }
}
use crate::metrics::Metrics;
use crate::router::{Reply, RouterHandle, RouterMsg, SessionRef};

const GREETING: &str = "Welcome to Baby Discord!\n";
const PROMPT: &str = "Enter your nickname: ";

/// What every TCP connection thread needs.
#[derive(Clone)]
pub struct TcpContext {
    pub router: RouterHandle,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionLimit>,
    /// Sends every client's output.
    pub writers: Arc<Writers>,
    /// Set at shutdown; the accept loop stops taking connections.
    pub stopping: Arc<AtomicBool>,
    /// Password checks and account commands.
    pub accounts: Arc<Accounts>,
}

/// Accepts connections until `ctx.stopping` is set (then one more connect
/// wakes the blocked `accept`).
pub fn spawn_listener(listener: TcpListener, ctx: TcpContext) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("tcp-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if ctx.stopping.load(Ordering::Acquire) {
                    break;
                }
                match stream {
                    Ok(stream) => accept(stream, &ctx),
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        log::warn!("TCP accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
            log::info!("TCP listener stopped");
        })
        .expect("spawn TCP accept thread")
}

fn accept(mut stream: TcpStream, ctx: &TcpContext) {
    let Some(slot) = ctx.connections.try_acquire() else {
        ctx.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = writeln!(stream, "Error: {}", ChatError::ServerFull);
        return;
    };
    let _ = stream.set_nodelay(true);
    let thread_ctx = ctx.clone();
    let spawned = std::thread::Builder::new()
        .name("tcp-client".into())
        .stack_size(ctx.limits.client_stack_bytes)
        .spawn(move || serve(stream, thread_ctx, slot));
    if let Err(e) = spawned {
        log::error!("cannot start a thread for a TCP client: {e}");
    }
}

/// Runs one client's connection on its reader thread.
fn serve(stream: TcpStream, ctx: TcpContext, _slot: ConnectionSlot) {
    let peer_addr = stream.peer_addr().ok();
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    let stream = Arc::new(stream);
    let outbox = ctx.writers.outbox(Box::new(LineEncoder), ctx.limits.queue_limits());
    outbox.start(Conn::new(stream.clone()));
    let sink: Arc<dyn Sink> = outbox;
    let id = SessionId::next();
    ctx.metrics.tcp_connections.fetch_add(1, Ordering::Relaxed);
    log::debug!("TCP client {peer} connected as session {}", id.0);
    ctx.router.send(RouterMsg::Open { session: id, protocol: Protocol::Tcp, token: None, sink: Some(sink.clone()) });

    let input = ClientInput { stream: &stream, until: Cell::new(None) };
    let mut lines = LineReader::new(input, ctx.limits.max_line_bytes);
    let ip = peer_addr.map(|a| a.ip());
    if choose_nickname(&mut lines, sink.as_ref(), id, &ctx, ip) {
        chat(&mut lines, id, &ctx, ip);
    }

    ctx.router.send(RouterMsg::Close { session: SessionRef::Id(id) });
    // The router closes the outbox when it ends the session; if it has
    // already stopped, close it here so the last lines still go out.
    sink.close(CloseReason::Normal);
    ctx.metrics.tcp_connections.fetch_sub(1, Ordering::Relaxed);
    log::debug!("TCP client {peer} (session {}) disconnected", id.0);
}

/// A client's socket as its line reader sees it: while `until` is set,
/// every read waits at most until then, so a deadline covers everything
/// read before it, however the client splits its bytes (a nickname typed
/// one byte at a time cannot outlive `NICK_TIMEOUT_SECS`).
struct ClientInput<'a> {
    stream: &'a TcpStream,
    until: Cell<Option<Instant>>,
}

impl Read for ClientInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.until.get() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        (&*self.stream).read(buf)
    }
}

/// The nickname prompt. Returns true once the session has a nickname.
fn choose_nickname(
    lines: &mut LineReader<ClientInput<'_>>,
    outbox: &dyn Sink,
    id: SessionId,
    ctx: &TcpContext,
    ip: Option<std::net::IpAddr>,
) -> bool {
    lines.get_ref().until.set(Some(Instant::now() + ctx.limits.nick_timeout));
    let say = |event: Event| {
        let _ = outbox.deliver(event);
    };
    say(Event::Reply(GREETING.trim_end().into()));
    say(Event::Prompt(PROMPT.into()));
    loop {
        let nickname = match lines.next_line() {
            Ok(Some(LineEvent::Line(line))) => line.trim().to_string(),
            Ok(Some(LineEvent::TooLong)) => {
                say(Event::Error(ChatError::LineTooLong { max: ctx.limits.max_line_bytes }));
                say(Event::Prompt(PROMPT.into()));
                continue;
            }
            Ok(Some(LineEvent::InvalidUtf8)) => {
                say(Event::Error(ChatError::InvalidUtf8));
                say(Event::Prompt(PROMPT.into()));
                continue;
            }
            Ok(None) => return false,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return nickname_timeout(outbox, ctx);
            }
            Err(_) => return false,
        };
        if nickname.is_empty() {
            say(Event::Prompt(PROMPT.into()));
            continue;
        }
        if nickname.eq_ignore_ascii_case("/quit") {
            say(Event::Reply("Goodbye!".into()));
            return false;
        }
        let mut outcome = ctx.router.call(|reply| RouterMsg::Login { session: SessionRef::Id(id), nickname, reply });
        if let Err(ChatError::NicknameRegistered(nick)) = &outcome {
            // An account: its password, then back here if it is wrong.
            let nick = nick.clone();
            say(Event::Prompt(format!("Password for {nick}: ").into()));
            let password = match lines.next_line() {
                Ok(Some(LineEvent::Line(line))) => line.trim().to_string(),
                Ok(Some(LineEvent::TooLong)) => String::new(),
                Ok(Some(LineEvent::InvalidUtf8)) => String::new(),
                Ok(None) => return false,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return nickname_timeout(outbox, ctx);
                }
                Err(_) => return false,
            };
            outcome = ctx.accounts.login(SessionRef::Id(id), &nick, &Secret::new(&password), ip, true).map_err(|e| match e {
                ChatError::NoAccount(nick) => ChatError::WrongPassword(nick),
                e => e,
            });
        }
        match outcome {
            // The router has queued the welcome (and any DMs missed while
            // away) ahead of everything else sent to the new name.
            Ok(Reply::LoggedIn { .. }) => {
                let input = lines.get_ref();
                input.until.set(None);
                let _ = input.stream.set_read_timeout(None);
                return true;
            }
            Ok(_) => return false,
            Err(ChatError::ShuttingDown) => return false,
            Err(e) => {
                say(Event::Error(e));
                say(Event::Prompt(PROMPT.into()));
            }
        }
    }
}

fn nickname_timeout(outbox: &dyn Sink, ctx: &TcpContext) -> bool {
    let secs = ctx.limits.nick_timeout.as_secs();
    let _ = outbox.deliver(Event::Reply(format!(
        "\nError: no nickname given within {secs} seconds; closing the connection."
    )));
    false
}

/// The chat loop: every line becomes a router request.
fn chat(lines: &mut LineReader<ClientInput<'_>>, id: SessionId, ctx: &TcpContext, ip: Option<std::net::IpAddr>) {
    let session = SessionRef::Id(id);
    let reply = || crate::router::Responder::Session;
    loop {
        let msg = match lines.next_line() {
            Ok(Some(LineEvent::Line(line))) if line.trim().is_empty() => continue,
            Ok(Some(LineEvent::Line(line))) => match parse_input(&line) {
                Ok(Input::Message(text)) => {
                    RouterMsg::Say { session, text, room: None, client_msg_id: None, action: false, reply: reply() }
                }
                Ok(Input::Command(command)) => match account_command(&command, session, ctx, ip) {
                    Some(outcome) => RouterMsg::Answer { session: id, outcome },
                    None => RouterMsg::Command { session, command, reply: reply() },
                },
                Err(error) => RouterMsg::Refuse { session: id, error },
            },
            Ok(Some(LineEvent::TooLong)) => {
                RouterMsg::Refuse { session: id, error: ChatError::LineTooLong { max: ctx.limits.max_line_bytes } }
            }
            Ok(Some(LineEvent::InvalidUtf8)) => RouterMsg::Refuse { session: id, error: ChatError::InvalidUtf8 },
            Ok(None) | Err(_) => return,
        };
        ctx.router.send(msg);
    }
}

/// Runs an account command (password work, outside the router); `None`
/// for every other command.
pub fn account_command(
    command: &Command,
    session: SessionRef,
    ctx: &TcpContext,
    ip: Option<std::net::IpAddr>,
) -> Option<crate::router::Outcome> {
    let accounts = &ctx.accounts;
    Some(match command {
        Command::Register(password) => accounts.register(session, password),
        Command::Password { old, new } => accounts.change_password(session, old, new, ip),
        Command::Login { nick, password } => accounts.login_command(session, nick, password, ip),
        _ => return None,
    })
}

/// Appends an event's TCP form to `out`.
pub fn render(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Message(message) => out.extend_from_slice(message.rendered.get_or_render(Wire::Tcp, || {
            let mut line = message.line().into_bytes();
            line.push(b'\n');
            line
        })),
        Event::Notice(notice) => out.extend_from_slice(
            notice.rendered.get_or_render(Wire::Tcp, || format!("[system] {}\n", notice.text).into_bytes()),
        ),
        Event::Changed(change) => out.extend_from_slice(change.rendered.get_or_render(Wire::Tcp, || {
            let mut line = change.line().into_bytes();
            line.push(b'\n');
            line
        })),
        Event::Dm { dm, outgoing: true } => out.extend_from_slice(format!("[DM to {}] {}\n", dm.to, dm.text).as_bytes()),
        Event::Dm { dm, outgoing: false } => {
            out.extend_from_slice(format!("[DM from {}] {}\n", dm.from, dm.text).as_bytes())
        }
        Event::Reply(text) => {
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        Event::Error(error) => out.extend_from_slice(format!("Error: {error}\n").as_bytes()),
        Event::Prompt(prompt) => out.extend_from_slice(prompt.as_bytes()),
        // Netcat users see no presence or typing lines (the router does not
        // even queue them for TCP sessions).
        Event::RoomChanged { .. } | Event::Ping | Event::Ack(_) | Event::Pong(_) | Event::Presence(_) | Event::Typing(_) => {}
    }
}
