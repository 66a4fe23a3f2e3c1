//! `loadgen` — load generator for baby-discord.
//!
//! One process, one thread, one mio event loop for every client socket (no
//! thread per client), so the generator itself costs little CPU even with
//! 10,000 clients. It:
//!
//! 1. opens N receiving clients — TCP clients speaking the line protocol
//!    (`--tcp`) and/or SSE clients over HTTP/1.1 (`--sse`) — plus S senders
//!    (`--senders`; TCP clients, or HTTP sessions posting to `/api/message`
//!    with `--sender-http`), at most `--connect-rate` new connections per
//!    second, and joins them all to one room (the first client on each
//!    target runs `/create`, falling back to `/join` if the room exists);
//! 2. once everyone has joined (or `--setup-timeout` passed), the senders
//!    send `--rate` messages per second in total for `--duration` seconds,
//!    evenly spread over senders and time; each message is
//!    `lg <sender> <seq> <send_time_ns>` (nanoseconds since loadgen start);
//! 3. waits `--drain` seconds (or less, once everything has arrived) for the
//!    last deliveries, then reports: clients connected/joined, connect+join
//!    time, messages sent/failed, deliveries expected/received/lost/
//!    duplicated, delivery rate, latency percentiles, server RSS per
//!    connection (`--server-pid`), and the server's `Error:` lines;
//! 4. closes everything and POSTs `/api/disconnect` for HTTP sessions so
//!    their nicknames are freed at once.
//!
//! Every receiver is expected to get every message once; senders' own
//! copies are not counted (a TCP sender's own echo is its acknowledgement).
//!
//! Running it (the server with rate limiting off):
//!
//! ```text
//! DATA_DIR=$(mktemp -d) MSG_RATE=0 target/release/baby-discord &
//! cargo build --release -p loadgen
//! target/release/loadgen --tcp 200 --senders 5 --rate 100 --duration 5 --server-pid $!
//! target/release/loadgen --tcp 5000 --sse 5000 --senders 10 --rate 50 --sender-http --json
//! target/release/loadgen --targets 127.0.0.1:9001:3001,127.0.0.1:9002:3002 --tcp 1000
//! ```
//!
//! Exit status: 0 when all clients joined and losses are within
//! `--max-loss` (default 0), 1 otherwise, 2 for bad arguments.
//! `loadgen --help` lists every option.

mod args;
mod client;
mod hist;
mod proto;
mod report;

use std::collections::VecDeque;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use args::{Args, Parsed};
use client::{Conn, Ctx, Role, Scratch};
use report::{Report, Stats, Tracker};

/// How long cleanup (closing, HTTP disconnects) may take at most.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);
/// How long other clients wait for the room creators at most.
const CREATOR_WAIT: Duration = Duration::from_secs(10);

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{}", args::HELP);
            return;
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    }
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
#[cfg(target_os = "linux")]
fn raise_nofile_limit() -> Option<u64> {
    // A tiny FFI shim instead of the libc crate: struct rlimit is two
    // rlim_t (u64 on Linux), RLIMIT_NOFILE is 7 on the usual architectures.
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    const RLIMIT_NOFILE: i32 = 7;
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls with a valid, properly laid-out struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.cur < r.max {
            let want = Rlimit { cur: r.max, max: r.max };
            if setrlimit(RLIMIT_NOFILE, &want) == 0 {
                r.cur = r.max;
            }
        }
    }
    Some(r.cur)
}

#[cfg(not(target_os = "linux"))]
fn raise_nofile_limit() -> Option<u64> {
    None
}

/// Summed VmRSS (KiB) of the given processes, from /proc/PID/status.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    let mut sum = 0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
        sum += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// Summed CPU time (user + system, in clock ticks of 1/100 s) the given
/// processes have used, from /proc/PID/stat.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    let mut sum = 0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces) in parentheses.
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line.
        sum += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// A short per-run tag (4 base-36 chars) so nicknames of back-to-back runs
/// do not collide with HTTP sessions the server still holds.
fn run_tag() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut x = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 20);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58476d1ce4e5b9);
    x ^= x >> 32;
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..4).map(|i| digits[((x >> (i * 8)) % 36) as usize] as char).collect()
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Stage {
    Setup,
    Run,
    Drain,
}

fn run(args: &Args) -> Result<i32, String> {
    let nofile = raise_nofile_limit();
    let start = Instant::now();

    let mut addrs = Vec::new();
    for t in &args.targets {
        let resolve = |port: u16| {
            (t.host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {}: {e}", t.host))?
                .next()
                .ok_or_else(|| format!("cannot resolve {}", t.host))
        };
        let host = if t.host.contains(':') { format!("[{}]", t.host) } else { t.host.clone() };
        addrs.push((resolve(t.tcp_port)?, resolve(t.http_port)?, format!("{host}:{}", t.http_port)));
    }

    let total_clients = args.tcp + args.sse + args.ws + args.senders + args.typers;
    if let Some(limit) = nofile {
        if (total_clients as u64) + 64 > limit {
            eprintln!("loadgen: warning: {total_clients} clients but the open-files limit is {limit}");
        }
    }

    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let registry = poll.registry().try_clone().map_err(|e| format!("poll: {e}"))?;

    let mut stats = Stats {
        rss_before_kib: if args.server_pids.is_empty() { None } else { rss_kib(&args.server_pids) },
        ..Stats::default()
    };
    if !args.server_pids.is_empty() && stats.rss_before_kib.is_none() {
        eprintln!("loadgen: warning: cannot read VmRSS of pid(s) {:?}", args.server_pids);
    }
    stats.tcp.requested = args.tcp as u64;
    stats.sse.requested = args.sse as u64;
    stats.ws.requested = args.ws as u64;
    stats.senders.requested = args.senders as u64;

    let ntargets = args.targets.len();
    let mut ctx = Ctx {
        registry,
        start,
        addrs,
        room: args.room.clone(),
        stats,
        tracker: Tracker::new(args.senders, args.tcp + args.sse + args.ws),
        timers: Vec::new(),
        creator_done: vec![true; ntargets],
        settled: 0,
        sending: false,
    };

    // Build all clients: senders first, then TCP and SSE receivers; each
    // kind spread round-robin over the targets.
    let tag = run_tag();
    let p = &args.nick_prefix;
    let mut conns: Vec<Conn> = Vec::with_capacity(total_clients);
    let (sender_role, sender_letter) = if args.sender_http {
        (Role::HttpSender, 'h')
    } else if args.sender_ws {
        (Role::WsSender, 'w')
    } else {
        (Role::TcpSender, 's')
    };
    for i in 0..args.senders {
        let id = conns.len();
        conns.push(Conn::new(id, sender_role, i, i % ntargets, format!("{p}{tag}_{sender_letter}{i}")));
    }
    for i in 0..args.tcp {
        let id = conns.len();
        let mut c = Conn::new(id, Role::TcpRecv, i, i % ntargets, format!("{p}{tag}_t{i}"));
        c.slot = i;
        conns.push(c);
    }
    for i in 0..args.sse {
        let id = conns.len();
        let mut c = Conn::new(id, Role::SseRecv, i, i % ntargets, format!("{p}{tag}_e{i}"));
        c.slot = args.tcp + i;
        conns.push(c);
    }
    for i in 0..args.ws {
        let id = conns.len();
        let mut c = Conn::new(id, Role::WsRecv, i, i % ntargets, format!("{p}{tag}_v{i}"));
        c.slot = args.tcp + args.sse + i;
        conns.push(c);
    }
    let main_clients = conns.len();
    let sender_ids: Vec<usize> = (0..args.senders).collect();

    // One room creator per target, preferring TCP clients.
    let pref = |r: Role| match r {
        Role::TcpSender => 0,
        Role::TcpRecv => 1,
        Role::HttpSender => 2,
        _ => 3,
    };
    let mut creators = Vec::new();
    for t in 0..ntargets {
        if let Some(c) = conns.iter().filter(|c| c.target == t).min_by_key(|c| (pref(c.role), c.id)) {
            creators.push(c.id);
        }
    }
    for &id in &creators {
        conns[id].creator = true;
        ctx.creator_done[conns[id].target] = false;
    }
    let mut to_start: VecDeque<usize> = (0..main_clients).filter(|id| !conns[*id].creator).collect();

    let mut scratch = Scratch::default();
    let mut events = Events::with_capacity(4096);

    // ---- setup: connect and join at a bounded rate ----
    for &id in &creators {
        client::start(&mut conns[id], &mut ctx);
    }
    let setup_deadline = start + args.setup_timeout;
    let mut gate_open: Option<Instant> = None;
    let mut started_after_gate = 0u64;

    let mut stage = Stage::Setup;
    let mut send_start = start;
    let total_msgs = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let mut next_msg = 0u64;
    let mut drain_deadline = start;
    let mut last_progress = start;
    // `--typers`: (connection that signals, when it next does).
    let mut typers: Vec<(usize, Instant)> = Vec::new();

    loop {
        let now = Instant::now();
        let mut timeout = Duration::from_millis(50);

        // fire due join retries
        if !ctx.timers.is_empty() {
            let mut due = Vec::new();
            ctx.timers.retain(|&(at, id)| {
                if at <= now {
                    due.push(id);
                    false
                } else {
                    true
                }
            });
            for id in due {
                client::on_timer(&mut conns[id], &mut ctx);
            }
            if let Some(&(at, _)) = ctx.timers.iter().min_by_key(|(at, _)| *at) {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
        }

        match stage {
            Stage::Setup => {
                if gate_open.is_none() && (ctx.creator_done.iter().all(|d| *d) || now >= start + CREATOR_WAIT) {
                    gate_open = Some(now);
                }
                if let Some(g) = gate_open {
                    let allowed = (args.connect_rate * now.duration_since(g).as_secs_f64()) as u64 + 1;
                    let mut budget = allowed.saturating_sub(started_after_gate).min(1000);
                    while budget > 0 {
                        let Some(id) = to_start.pop_front() else { break };
                        client::start(&mut conns[id], &mut ctx);
                        started_after_gate += 1;
                        budget -= 1;
                    }
                    if !to_start.is_empty() {
                        timeout = timeout.min(Duration::from_millis(1));
                    }
                }
                if now.duration_since(last_progress) >= Duration::from_secs(5) {
                    last_progress = now;
                    eprintln!(
                        "loadgen: setup {:.0}s: {} of {} clients joined, {} failed",
                        now.duration_since(start).as_secs_f64(),
                        ctx.stats.tcp.joined + ctx.stats.sse.joined + ctx.stats.ws.joined + ctx.stats.senders.joined,
                        main_clients,
                        ctx.stats.tcp.failed + ctx.stats.sse.failed + ctx.stats.ws.failed + ctx.stats.senders.failed
                    );
                }
                let all_settled = to_start.is_empty() && ctx.settled >= main_clients;
                if all_settled || now >= setup_deadline {
                    ctx.stats.setup_timed_out = !all_settled;
                    ctx.stats.setup_ns = now.duration_since(start).as_nanos() as u64;
                    let mut receivers = 0;
                    for c in conns.iter().filter(|c| !c.joined && c.alive()) {
                        ctx.stats.failures.record(&c.stuck_reason());
                    }
                    for c in conns.iter_mut() {
                        if c.role.is_receiver() && c.joined && c.alive() {
                            c.counted = true;
                            receivers += 1;
                        }
                    }
                    ctx.tracker.receivers = receivers;
                    ctx.sending = true;
                    send_start = Instant::now();
                    ctx.stats.cpu_before_ticks = cpu_ticks(&args.server_pids);
                    // Typers: SSE receivers get a connection of their own
                    // for their POSTs; WebSocket receivers send frames on
                    // theirs. Their signals are spread evenly over the interval.
                    let chosen: Vec<usize> = conns
                        .iter()
                        .filter(|c| c.joined && c.alive() && matches!(c.role, Role::SseRecv))
                        .chain(conns.iter().filter(|c| c.joined && c.alive() && matches!(c.role, Role::WsRecv)))
                        .map(|c| c.id)
                        .take(args.typers)
                        .collect();
                    let spacing = args.typing_every.as_secs_f64() / chosen.len().max(1) as f64;
                    for (i, id) in chosen.into_iter().enumerate() {
                        let signaller = if conns[id].role == Role::SseRecv {
                            let typer = conns.len();
                            let (target, session) = (conns[id].target, conns[id].session.clone());
                            let mut c = Conn::new(typer, Role::Typer, i, target, String::new());
                            c.session = session;
                            client::start(&mut c, &mut ctx);
                            conns.push(c);
                            typer
                        } else {
                            id
                        };
                        typers.push((signaller, send_start + Duration::from_secs_f64(spacing * i as f64)));
                    }
                    if receivers == 0 || sender_ids.iter().all(|&id| !conns[id].joined) {
                        eprintln!("loadgen: no receiver or no sender joined; not sending");
                        break;
                    }
                    stage = Stage::Run;
                    continue;
                }
            }
            Stage::Run => {
                let elapsed = now.duration_since(send_start).as_secs_f64();
                let due = ((elapsed * args.rate) as u64 + 1).min(total_msgs);
                while next_msg < due {
                    let s = (next_msg % args.senders as u64) as usize;
                    client::send_message(&mut conns[sender_ids[s]], &mut ctx);
                    next_msg += 1;
                }
                for (id, next) in typers.iter_mut() {
                    if *next <= now {
                        client::send_typing(&mut conns[*id], &mut ctx);
                        *next += args.typing_every;
                    }
                    timeout = timeout.min(next.saturating_duration_since(now));
                }
                if next_msg >= total_msgs && elapsed >= args.duration.as_secs_f64() {
                    ctx.stats.send_window_ns = now.duration_since(send_start).as_nanos() as u64;
                    stage = Stage::Drain;
                    drain_deadline = now + args.drain;
                    continue;
                }
                let next_at = if next_msg < total_msgs {
                    send_start + Duration::from_secs_f64(next_msg as f64 / args.rate)
                } else {
                    send_start + args.duration
                };
                timeout = timeout.min(next_at.saturating_duration_since(now));
            }
            Stage::Drain => {
                let t = &ctx.tracker;
                let complete = t.unique >= t.expected()
                    && ctx.stats.acked + t.failed >= t.sent
                    && sender_ids.iter().all(|&id| conns[id].idle() || !conns[id].alive());
                if complete || now >= drain_deadline {
                    break;
                }
                timeout = timeout.min(drain_deadline.saturating_duration_since(now)).min(Duration::from_millis(10));
            }
        }

        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        for ev in events.iter() {
            let id = ev.token().0;
            if id < conns.len() {
                client::on_event(&mut conns[id], &mut ctx, &mut scratch, ev.is_read_closed() || ev.is_error());
            }
        }
    }
    let end = Instant::now();
    ctx.stats.run_ns = end.duration_since(send_start).as_nanos() as u64;
    if !args.server_pids.is_empty() {
        ctx.stats.rss_after_kib = rss_kib(&args.server_pids);
        ctx.stats.cpu_after_ticks = cpu_ticks(&args.server_pids);
    }

    // ---- report ----
    let report = Report { args, stats: &ctx.stats, t: &ctx.tracker };
    let mut out = String::from("loadgen report\n");
    out.push_str(&report.text());
    if args.json {
        out.push_str(&report.json());
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();

    let lost = ctx.tracker.lost();
    let all_joined =
        ctx.stats.tcp.joined + ctx.stats.sse.joined + ctx.stats.ws.joined + ctx.stats.senders.joined == main_clients as u64;
    let code = if lost > args.max_loss.unwrap_or(0) || !all_joined { 1 } else { 0 };

    // ---- cleanup: close everything, end HTTP sessions ----
    let sessions: Vec<(usize, String)> = conns
        .iter()
        .filter(|c| c.role.is_http() && c.role != Role::Typer && !c.session.is_empty())
        .map(|c| (c.target, c.session.clone()))
        .collect();
    for c in conns.iter_mut() {
        client::close(c, &mut ctx);
    }
    if args.cleanup && !sessions.is_empty() {
        let first = conns.len();
        for (target, session) in sessions {
            let id = conns.len();
            let mut c = Conn::new(id, Role::Oneshot, 0, target, String::new());
            c.session = session;
            conns.push(c);
        }
        let cleanup_start = Instant::now();
        let mut next = first;
        while Instant::now() < cleanup_start + CLEANUP_LIMIT {
            let now = Instant::now();
            let allowed = first + (args.connect_rate * now.duration_since(cleanup_start).as_secs_f64()) as usize + 1;
            // keep at most a few hundred requests in flight
            let in_flight = conns[first..next].iter().filter(|c| c.alive()).count();
            let mut budget = allowed.saturating_sub(next).min(500usize.saturating_sub(in_flight));
            while budget > 0 && next < conns.len() {
                client::start(&mut conns[next], &mut ctx);
                next += 1;
                budget -= 1;
            }
            if next >= conns.len() && conns[first..].iter().all(|c| !c.alive()) {
                break;
            }
            if poll.poll(&mut events, Some(Duration::from_millis(2))).is_err() {
                continue;
            }
            for ev in events.iter() {
                let id = ev.token().0;
                if id < conns.len() {
                    client::on_event(&mut conns[id], &mut ctx, &mut scratch, ev.is_read_closed() || ev.is_error());
                }
            }
        }
        let n = conns.len() - first;
        eprintln!(
            "loadgen: cleanup: {} of {} HTTP sessions disconnected{}",
            ctx.stats.cleanup_ok,
            n,
            if ctx.stats.cleanup_ok < n as u64 { " (the rest expire on the server by themselves)" } else { "" }
        );
    }
    Ok(code)
}
