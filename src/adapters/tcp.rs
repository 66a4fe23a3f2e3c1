//! The netcat line protocol (SPEC §3).
//!
//! Each client costs two threads with small stacks (`CLIENT_STACK_KB`):
//! - the **reader** owns the socket's read side: it runs the nickname
//!   prompt, then turns each line into a router request;
//! - the **writer** owns an [`Outbox`]: it waits for events, takes
//!   everything queued at once, renders it and sends it in one write.
//!
//! The router only ever queues into the outbox, so a client that stops
//! reading delays nobody: its outbox fills and the router drops it. A write
//! that blocks longer than `WRITE_TIMEOUT_SECS` ends the connection too.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::lines::{LineEvent, LineReader};
use super::{ConnectionLimit, ConnectionSlot};
use crate::command::{parse_input, Input};
use crate::config::Limits;
use crate::error::ChatError;
use crate::event::{CloseReason, Event, Outbox, OutboxReader, Protocol, SessionId, Sink, Wire};
use crate::metrics::Metrics;
use crate::router::{Reply, RouterHandle, RouterMsg, SessionRef};

const GREETING: &str = "Welcome to Baby Discord!\n";
const PROMPT: &str = "Enter your nickname: ";
/// Most events rendered into one write.
const WRITE_BATCH: usize = 1024;

/// What every TCP connection thread needs.
#[derive(Clone)]
pub struct TcpContext {
    pub router: RouterHandle,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionLimit>,
    /// Set at shutdown; the accept loop stops taking connections.
    pub stopping: Arc<AtomicBool>,
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
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let writer = match start_writer(&stream, &ctx) {
        Ok(writer) => writer,
        Err(e) => {
            log::error!("cannot serve TCP client {peer}: {e}");
            return;
        }
    };
    let Writer { outbox, thread, id } = writer;
    ctx.metrics.tcp_connections.fetch_add(1, Ordering::Relaxed);
    log::debug!("TCP client {peer} connected as session {}", id.0);
    let sink: Arc<dyn Sink> = outbox.clone();
    ctx.router.send(RouterMsg::Open { session: id, protocol: Protocol::Tcp, token: None, sink: Some(sink) });

    let mut lines = LineReader::new(&stream, ctx.limits.max_line_bytes);
    if choose_nickname(&mut lines, &outbox, id, &ctx) {
        chat(&mut lines, id, &ctx);
    }

    ctx.router.send(RouterMsg::Close { session: SessionRef::Id(id) });
    // The router closes the outbox when it ends the session; if it has
    // already stopped, close it here so the writer is never left waiting.
    outbox.close(CloseReason::Normal);
    let _ = thread.join();
    ctx.metrics.tcp_connections.fetch_sub(1, Ordering::Relaxed);
    log::debug!("TCP client {peer} (session {}) disconnected", id.0);
}

struct Writer {
    outbox: Arc<Outbox>,
    thread: JoinHandle<()>,
    id: SessionId,
}

fn start_writer(stream: &TcpStream, ctx: &TcpContext) -> io::Result<Writer> {
    let write_half = stream.try_clone()?;
    write_half.set_write_timeout(Some(ctx.limits.write_timeout))?;
    let (outbox, reader) = Outbox::new(ctx.limits.outbox_capacity);
    let thread = std::thread::Builder::new()
        .name("tcp-writer".into())
        .stack_size(ctx.limits.client_stack_bytes)
        .spawn(move || write_loop(write_half, reader))?;
    Ok(Writer { outbox, thread, id: SessionId::next() })
}

/// The nickname prompt. Returns true once the session has a nickname.
fn choose_nickname(lines: &mut LineReader<&TcpStream>, outbox: &Outbox, id: SessionId, ctx: &TcpContext) -> bool {
    let deadline = Instant::now() + ctx.limits.nick_timeout;
    let say = |event: Event| {
        let _ = outbox.deliver(event);
    };
    say(Event::Reply(GREETING.trim_end().into()));
    say(Event::Prompt(PROMPT));
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || lines.get_ref().set_read_timeout(Some(remaining)).is_err() {
            return nickname_timeout(outbox, ctx);
        }
        let nickname = match lines.next_line() {
            Ok(Some(LineEvent::Line(line))) => line.trim().to_string(),
            Ok(Some(LineEvent::TooLong)) => {
                say(Event::Error(ChatError::LineTooLong { max: ctx.limits.max_line_bytes }));
                say(Event::Prompt(PROMPT));
                continue;
            }
            Ok(Some(LineEvent::InvalidUtf8)) => {
                say(Event::Error(ChatError::InvalidUtf8));
                say(Event::Prompt(PROMPT));
                continue;
            }
            Ok(None) => return false,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return nickname_timeout(outbox, ctx);
            }
            Err(_) => return false,
        };
        if nickname.is_empty() {
            say(Event::Prompt(PROMPT));
            continue;
        }
        if nickname.eq_ignore_ascii_case("/quit") {
            say(Event::Reply("Goodbye!".into()));
            return false;
        }
        let outcome = ctx.router.call(|reply| RouterMsg::Login { session: SessionRef::Id(id), nickname, reply });
        match outcome {
            Ok(Reply::LoggedIn { nickname, .. }) => {
                say(Event::Reply(format!("Welcome, {nickname}!\nType /help for available commands.")));
                let _ = lines.get_ref().set_read_timeout(None);
                return true;
            }
            Ok(_) => return false,
            Err(ChatError::ShuttingDown) => return false,
            Err(e) => {
                say(Event::Error(e));
                say(Event::Prompt(PROMPT));
            }
        }
    }
}

fn nickname_timeout(outbox: &Outbox, ctx: &TcpContext) -> bool {
    let secs = ctx.limits.nick_timeout.as_secs();
    let _ = outbox.deliver(Event::Reply(format!(
        "\nError: no nickname given within {secs} seconds; closing the connection."
    )));
    false
}

/// The chat loop: every line becomes a router request.
fn chat(lines: &mut LineReader<&TcpStream>, id: SessionId, ctx: &TcpContext) {
    let session = SessionRef::Id(id);
    let reply = || crate::router::Responder::Session;
    loop {
        let msg = match lines.next_line() {
            Ok(Some(LineEvent::Line(line))) if line.trim().is_empty() => continue,
            Ok(Some(LineEvent::Line(line))) => match parse_input(&line) {
                Ok(Input::Message(text)) => RouterMsg::Say { session, text, room: None, reply: reply() },
                Ok(Input::Command(command)) => RouterMsg::Command { session, command, reply: reply() },
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

/// The writer thread: renders queued events and sends each batch in one
/// write, until the session is closed or the client stops taking data.
fn write_loop(mut stream: TcpStream, outbox: OutboxReader) {
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    loop {
        batch.clear();
        bytes.clear();
        let closed = outbox.recv_batch(&mut batch, WRITE_BATCH);
        if closed == Some(CloseReason::TooSlow) {
            // Everything queued is hopeless; say why, if the socket still takes it.
            bytes.extend_from_slice(b"Error: you are not reading messages fast enough, so you were disconnected.\n");
        } else {
            for event in &batch {
                render(event, &mut bytes);
            }
        }
        if stream.write_all(&bytes).is_err() || closed.is_some() {
            break;
        }
        if bytes.capacity() > 64 * 1024 {
            bytes = Vec::new();
        }
    }
    // Wakes the reader thread (its read returns 0) if the client is still there.
    let _ = stream.shutdown(Shutdown::Both);
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
        Event::RoomChanged { .. } | Event::Close(_) => {}
    }
}
