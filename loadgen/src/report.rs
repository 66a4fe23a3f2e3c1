//! Counters, delivery accounting and the final report (text and JSON).

use crate::args::Args;
use crate::hist::Histogram;
use crate::proto::{truncate, Payload};

/// Per-message delivery counts plus per-(receiver, sender) order tracking.
///
/// Memory: one `u32` per message sent, and one `u32` per receiver × sender
/// pair (order tracking is skipped if that would exceed 64 M entries).
#[derive(Debug)]
pub struct Tracker {
    senders: usize,
    /// Receivers that were joined when sending started; each message is
    /// expected once by each of them.
    pub receivers: u64,
    counts: Vec<Vec<u32>>,
    next_expected: Vec<u32>,
    pub sent: u64,
    pub failed: u64,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Arrivals older than one already seen from the same sender by the same receiver.
    pub reordered: u64,
    /// Payloads that name a sender/seq that was never sent in this run.
    pub unknown: u64,
    pub latency: Histogram,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Tracker {
    pub fn new(senders: usize, receiver_slots: usize) -> Self {
        let pairs = senders.saturating_mul(receiver_slots);
        Tracker {
            senders,
            receivers: 0,
            counts: vec![Vec::new(); senders],
            next_expected: if pairs <= 64 << 20 { vec![0; pairs] } else { Vec::new() },
            sent: 0,
            failed: 0,
            received: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            unknown: 0,
            latency: Histogram::default(),
            first_ns: 0,
            last_ns: 0,
        }
    }

    /// Registers a new message from `sender`; returns its sequence number.
    pub fn on_sent(&mut self, sender: usize) -> u32 {
        let v = &mut self.counts[sender];
        v.push(0);
        self.sent += 1;
        (v.len() - 1) as u32
    }

    /// Records that receiver `slot` got payload `p` at `now_ns`.
    pub fn deliver(&mut self, slot: usize, p: Payload, now_ns: u64) {
        let s = p.sender as usize;
        let Some(count) = self.counts.get_mut(s).and_then(|v| v.get_mut(p.seq as usize)) else {
            self.unknown += 1;
            return;
        };
        *count += 1;
        self.received += 1;
        if *count as u64 <= self.receivers {
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
        if let Some(ne) = self.next_expected.get_mut(slot * self.senders + s) {
            if p.seq < *ne {
                self.reordered += 1;
            } else {
                *ne = p.seq + 1;
            }
        }
        self.latency.record(now_ns.saturating_sub(p.sent_ns));
        if self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        self.last_ns = now_ns;
    }

    /// Whether (sender, seq) is a message sent in this run.
    pub fn is_sent(&self, p: Payload) -> bool {
        self.counts.get(p.sender as usize).is_some_and(|v| (p.seq as usize) < v.len())
    }

    pub fn expected(&self) -> u64 {
        (self.sent - self.failed.min(self.sent)) * self.receivers
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
}

/// Counts per client kind.
#[derive(Debug, Default, Clone)]
pub struct RoleStats {
    pub requested: u64,
    pub connected: u64,
    pub joined: u64,
    /// Never joined (connect refused, protocol error, timeout...).
    pub failed: u64,
    /// Joined, then lost the connection before the end.
    pub disconnects: u64,
}

/// First few distinct messages of one sort, with counts.
#[derive(Debug, Default)]
pub struct Log {
    pub total: u64,
    pub distinct: Vec<(String, u64)>,
}

impl Log {
    const KEEP: usize = 6;
    pub fn record(&mut self, msg: &str) {
        self.total += 1;
        let msg = truncate(msg.trim(), 160);
        if let Some(e) = self.distinct.iter_mut().find(|(m, _)| *m == msg) {
            e.1 += 1;
        } else if self.distinct.len() < Self::KEEP {
            self.distinct.push((msg, 1));
        }
    }
}

/// Line and event kinds received.
#[derive(Debug, Default)]
pub struct Seen {
    pub room_lines: u64,
    pub history_lines: u64,
    pub foreign_room_lines: u64,
    pub system: u64,
    pub dm: u64,
    pub errors: u64,
    pub other: u64,
    pub sse_messages: u64,
    pub sse_pings: u64,
    pub sse_other: u64,
    pub overlong: u64,
    /// `typing` events received (SSE and WebSocket).
    pub typing: u64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub tcp: RoleStats,
    pub sse: RoleStats,
    pub ws: RoleStats,
    pub senders: RoleStats,
    pub setup_ns: u64,
    pub setup_timed_out: bool,
    pub send_window_ns: u64,
    pub run_ns: u64,
    /// Scheduled sends skipped because the sender was not connected.
    pub sender_down: u64,
    /// HTTP sends that waited for the previous request on that connection.
    pub deferred: u64,
    pub acked: u64,
    pub ack_latency: Histogram,
    pub http_reconnects: u64,
    pub seen: Seen,
    /// Server `Error:` lines / error responses.
    pub errors: Log,
    /// Why clients failed or were disconnected (client-side view).
    pub failures: Log,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The servers' CPU time (1/100 s ticks) when sending started and at the end.
    pub cpu_before_ticks: Option<u64>,
    pub cpu_after_ticks: Option<u64>,
    pub cleanup_ok: u64,
    pub cleanup_failed: u64,
    /// Typing signals sent (`--typers`), answered with success, refused.
    pub typing_sent: u64,
    pub typing_ok: u64,
    pub typing_failed: u64,
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt(v: Option<u64>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

pub struct Report<'a> {
    pub args: &'a Args,
    pub stats: &'a Stats,
    pub t: &'a Tracker,
}

impl Report<'_> {
    fn connections(&self) -> u64 {
        let s = self.stats;
        s.tcp.joined + s.sse.joined + s.ws.joined + s.senders.joined
    }

    fn kib_per_conn(&self) -> Option<f64> {
        let (b, a) = (self.stats.rss_before_kib?, self.stats.rss_after_kib?);
        let n = self.connections();
        (n > 0).then(|| (a as f64 - b as f64) / n as f64)
    }

    fn deliveries_per_sec(&self) -> f64 {
        let t = self.t;
        let win = self.stats.send_window_ns.max(t.last_ns.saturating_sub(t.first_ns));
        if win == 0 {
            0.0
        } else {
            t.received as f64 / (win as f64 / 1e9)
        }
    }

    pub fn text(&self) -> String {
        let (a, s, t) = (self.args, self.stats, self.t);
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("  {k:<26} {v}\n"));
        let targets: Vec<String> = a.targets.iter().map(|t| t.label()).collect();
        line("target(s)", targets.join(", "));
        line(
            "load",
            format!(
                "{} msg/s for {:.1} s from {} {} sender(s), room '{}'",
                a.rate,
                a.duration.as_secs_f64(),
                a.senders,
                if a.sender_http { "HTTP" } else if a.sender_ws { "WebSocket" } else { "TCP" },
                a.room
            ),
        );
        let role = |r: &RoleStats| {
            format!(
                "{} requested, {} connected, {} joined, {} failed, {} disconnected",
                r.requested, r.connected, r.joined, r.failed, r.disconnects
            )
        };
        line("TCP clients", role(&s.tcp));
        line("SSE clients", role(&s.sse));
        line("WebSocket clients", role(&s.ws));
        line("senders", role(&s.senders));
        line(
            "connect+join time",
            format!("{:.3} s{}", s.setup_ns as f64 / 1e9, if s.setup_timed_out { " (setup timed out)" } else { "" }),
        );
        line(
            "messages sent",
            format!(
                "{} ({:.1}/s), {} send failures, {} acked, {} skipped (sender down){}",
                t.sent,
                if s.send_window_ns > 0 { t.sent as f64 / (s.send_window_ns as f64 / 1e9) } else { 0.0 },
                t.failed,
                s.acked,
                s.sender_down,
                if a.sender_http { format!(", {} deferred behind in-flight POST", s.deferred) } else { String::new() }
            ),
        );
        line(
            "deliveries",
            format!(
                "{} expected ({} accepted msgs x {} receivers), {} received",
                t.expected(),
                t.sent - t.failed.min(t.sent),
                t.receivers,
                t.received
            ),
        );
        line(
            "lost / duplicates",
            format!(
                "{} lost, {} duplicates, {} reordered, {} unknown payloads",
                t.lost(),
                t.duplicates,
                t.reordered,
                t.unknown
            ),
        );
        line("delivery rate", format!("{:.0} deliveries/s", self.deliveries_per_sec()));
        let h = &t.latency;
        line(
            "latency (send->deliver)",
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {:.2} ms",
                ms(h.percentile(50.0)),
                ms(h.percentile(90.0)),
                ms(h.percentile(99.0)),
                ms(h.max_ns()),
                ms(h.mean_ns())
            ),
        );
        let h = &s.ack_latency;
        line(
            "latency (send->ack)",
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({})",
                ms(h.percentile(50.0)),
                ms(h.percentile(99.0)),
                ms(h.max_ns()),
                if a.sender_http { "HTTP 200" } else if a.sender_ws { "ack frame" } else { "own echo" }
            ),
        );
        if !a.server_pids.is_empty() {
            let pids: Vec<String> = a.server_pids.iter().map(|p| p.to_string()).collect();
            line(
                "server RSS",
                format!(
                    "pid {}: before {} KiB, after {} KiB, {} KiB/connection ({} connections)",
                    pids.join("+"),
                    s.rss_before_kib.map_or("?".into(), |v| v.to_string()),
                    s.rss_after_kib.map_or("?".into(), |v| v.to_string()),
                    self.kib_per_conn().map_or("?".into(), |v| format!("{v:.1}")),
                    self.connections()
                ),
            );
            if let (Some(before), Some(after)) = (s.cpu_before_ticks, s.cpu_after_ticks) {
                line(
                    "server CPU",
                    format!("{:.2} s (user + system) from the start of sending to the end", (after - before) as f64 / 100.0),
                );
            }
        }
        let seen = &s.seen;
        line(
            "lines/events seen",
            format!(
                "{} room, {} history, {} system, {} dm, {} error, {} other; SSE {} message, {} ping, {} other; {} overlong",
                seen.room_lines,
                seen.history_lines,
                seen.system,
                seen.dm,
                seen.errors,
                seen.other,
                seen.sse_messages,
                seen.sse_pings,
                seen.sse_other,
                seen.overlong
            ),
        );
        if a.typers > 0 {
            line(
                "typing",
                format!(
                    "{} typers every {:.1} s: {} signals sent, {} answered ok, {} failed; {} typing events received",
                    a.typers,
                    a.typing_every.as_secs_f64(),
                    s.typing_sent,
                    s.typing_ok,
                    s.typing_failed,
                    seen.typing
                ),
            );
        }
        if s.http_reconnects > 0 {
            line("HTTP reconnects", s.http_reconnects.to_string());
        }
        line("server errors", format!("{}", s.errors.total));
        for (m, n) in &s.errors.distinct {
            line("", format!("{n:>6} x {m}"));
        }
        line("client failures", format!("{}", s.failures.total));
        for (m, n) in &s.failures.distinct {
            line("", format!("{n:>6} x {m}"));
        }
        o
    }

    pub fn json(&self) -> String {
        let (a, s, t) = (self.args, self.stats, self.t);
        let role = |r: &RoleStats| {
            format!(
                "{{\"requested\":{},\"connected\":{},\"joined\":{},\"failed\":{},\"disconnects\":{}}}",
                r.requested, r.connected, r.joined, r.failed, r.disconnects
            )
        };
        let log = |l: &Log| {
            let items: Vec<String> =
                l.distinct.iter().map(|(m, n)| format!("{{\"message\":{},\"count\":{n}}}", json_str(m))).collect();
            format!("{{\"total\":{},\"first\":[{}]}}", l.total, items.join(","))
        };
        let h = &t.latency;
        let targets: Vec<String> = a.targets.iter().map(|t| json_str(&t.label())).collect();
        format!(
            concat!(
                "{{\"targets\":[{}],\"room\":{},\"rate\":{},\"duration_s\":{},\"sender_http\":{},",
                "\"tcp\":{},\"sse\":{},\"ws\":{},\"senders\":{},\"setup_s\":{:.3},\"setup_timed_out\":{},",
                "\"sent\":{},\"send_failures\":{},\"acked\":{},\"sender_down\":{},\"deferred\":{},",
                "\"receivers\":{},\"expected\":{},\"received\":{},\"lost\":{},\"duplicates\":{},\"reordered\":{},\"unknown\":{},",
                "\"deliveries_per_s\":{:.1},",
                "\"latency_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"max\":{:.3},\"mean\":{:.3}}},",
                "\"ack_latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"max\":{:.3}}},",
                "\"rss_before_kib\":{},\"rss_after_kib\":{},\"kib_per_connection\":{},\"server_cpu_s\":{},",
                "\"lines\":{{\"room\":{},\"history\":{},\"system\":{},\"dm\":{},\"error\":{},\"other\":{},\"sse_message\":{},\"sse_ping\":{},\"sse_other\":{},\"overlong\":{}}},",
                "\"http_reconnects\":{},\"errors\":{},\"failures\":{}}}"
            ),
            targets.join(","),
            json_str(&a.room),
            a.rate,
            a.duration.as_secs_f64(),
            a.sender_http,
            role(&s.tcp),
            role(&s.sse),
            role(&s.ws),
            role(&s.senders),
            s.setup_ns as f64 / 1e9,
            s.setup_timed_out,
            t.sent,
            t.failed,
            s.acked,
            s.sender_down,
            s.deferred,
            t.receivers,
            t.expected(),
            t.received,
            t.lost(),
            t.duplicates,
            t.reordered,
            t.unknown,
            self.deliveries_per_sec(),
            ms(h.percentile(50.0)),
            ms(h.percentile(90.0)),
            ms(h.percentile(99.0)),
            ms(h.max_ns()),
            ms(h.mean_ns()),
            ms(s.ack_latency.percentile(50.0)),
            ms(s.ack_latency.percentile(99.0)),
            ms(s.ack_latency.max_ns()),
            opt(s.rss_before_kib),
            opt(s.rss_after_kib),
            self.kib_per_conn().map_or("null".into(), |v| format!("{v:.1}")),
            match (s.cpu_before_ticks, s.cpu_after_ticks) {
                (Some(before), Some(after)) => format!("{:.2}", (after - before) as f64 / 100.0),
                _ => "null".into(),
            },
            s.seen.room_lines,
            s.seen.history_lines,
            s.seen.system,
            s.seen.dm,
            s.seen.errors,
            s.seen.other,
            s.seen.sse_messages,
            s.seen.sse_pings,
            s.seen.sse_other,
            s.seen.overlong,
            s.http_reconnects,
            log(&s.errors),
            log(&s.failures),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sender: u32, seq: u32) -> Payload {
        Payload { sender, seq, sent_ns: 1_000 }
    }

    #[test]
    fn tracker_counts_loss_dups_reorder() {
        let mut t = Tracker::new(2, 3);
        t.receivers = 3;
        for _ in 0..3 {
            t.on_sent(0);
        }
        assert_eq!(t.on_sent(1), 0);
        assert_eq!(t.expected(), 12);
        // receivers 0..3 get everything except receiver 2 misses (0,2)
        for r in 0..3 {
            for seq in 0..3 {
                if !(r == 2 && seq == 2) {
                    t.deliver(r, p(0, seq), 2_000);
                }
            }
            t.deliver(r, p(1, 0), 3_000);
        }
        assert_eq!((t.received, t.unique, t.lost()), (11, 11, 1));
        // duplicate arrival at receiver 0, and an unknown seq
        t.deliver(0, p(0, 1), 4_000);
        t.deliver(0, p(0, 7), 4_000);
        t.deliver(0, p(9, 0), 4_000);
        assert_eq!((t.received, t.duplicates, t.reordered, t.unknown), (12, 1, 1, 2));
        assert!(t.is_sent(p(1, 0)) && !t.is_sent(p(1, 1)));
        t.failed = 1;
        assert_eq!(t.expected(), 9);
        assert_eq!(t.latency.count(), 12);
        assert_eq!((t.first_ns, t.last_ns), (2_000, 4_000));
    }

    #[test]
    fn log_keeps_first_distinct() {
        let mut l = Log::default();
        for i in 0..10 {
            l.record(&format!("Error: {}", i % 8));
        }
        assert_eq!(l.total, 10);
        assert_eq!(l.distinct.len(), Log::KEEP);
        assert_eq!(l.distinct[0], ("Error: 0".to_string(), 2));
    }

    #[test]
    fn json_escape() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
