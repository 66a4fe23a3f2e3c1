//! Counters and histograms for `/metrics`, shared by every thread.
//!
//! Plain atomics: recording is a few relaxed adds, and the HTTP adapter
//! renders a consistent-enough snapshot in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::event::Transport;


/// A histogram with fixed bucket bounds (seconds, or a plain count).
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, non-cumulative; cumulated when rendered.
    counts: Vec<AtomicU64>,
    overflow: AtomicU64,
    /// Sum of observed values, in millionths.
    sum_millionths: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            overflow: AtomicU64::new(0),
            sum_millionths: AtomicU64::new(0),
        }
    }

    /// Records a duration, in seconds.
    pub fn observe(&self, value: Duration) {
        self.observe_value(value.as_secs_f64());
    }

    pub fn observe_value(&self, value: f64) {
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_millionths.fetch_add((value * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_millionths.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

const LATENCY_BOUNDS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

pub struct Metrics {
    pub tcp_connections: AtomicU64,
    pub http_streams: AtomicU64,
    /// Open HTTP connections (those carrying event streams included).
    pub http_connections: AtomicU64,
    pub http_sessions: AtomicU64,
    pub messages: AtomicU64,
    pub deliveries: AtomicU64,
    pub dropped_slow: AtomicU64,
    /// Slow consumers dropped, by transport: TCP, SSE, WebSocket.
    dropped_slow_by: [AtomicU64; 3],
    /// Open WebSocket connections.
    pub ws_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub store_failures: AtomicU64,
    /// Time from a message's arrival at the router to its fan-out.
    pub delivery_latency: Histogram,
    pub commit_latency: Histogram,
    /// Messages per commit.
    batch_sizes: Histogram,
    /// Redis bus traffic (multi-instance only).
    pub bus: crate::bus::BusStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tcp_connections: AtomicU64::new(0),
            http_streams: AtomicU64::new(0),
            http_connections: AtomicU64::new(0),
            http_sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
            dropped_slow_by: Default::default(),
            ws_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            delivery_latency: Histogram::new(LATENCY_BOUNDS),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
            batch_sizes: Histogram::new(BATCH_BOUNDS),
            bus: Default::default(),
        }
    }
}

impl Metrics {
    pub fn record_commit(&self, batch: usize, latency: Duration) {
        self.commit_latency.observe(latency);
        self.batch_sizes.observe_value(batch as f64);
    }

    /// Counts a slow consumer dropped; `transport` is its sink's, if known.
    pub fn record_slow_drop(&self, transport: Option<Transport>) {
        self.dropped_slow.fetch_add(1, Relaxed);
        if let Some(transport) = transport {
            self.dropped_slow_by[transport as usize].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, labels: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP baby_discord_connections Open client connections by protocol.\n# TYPE baby_discord_connections gauge"
        );
        let _ = writeln!(out, "baby_discord_connections{{protocol=\"tcp\"}} {}", self.tcp_connections.load(Relaxed));
        let _ = writeln!(out, "baby_discord_connections{{protocol=\"sse\"}} {}", self.http_streams.load(Relaxed));
        let _ = writeln!(out, "baby_discord_connections{{protocol=\"ws\"}} {}", self.ws_connections.load(Relaxed));
        let _ = writeln!(out, "baby_discord_connections{{protocol=\"http\"}} {}", self.http_connections.load(Relaxed));
        gauge(&mut out, "baby_discord_http_sessions", "Open HTTP sessions.", "gauge", "", self.http_sessions.load(Relaxed));
        gauge(&mut out, "baby_discord_messages_total", "Room messages committed.", "counter", "", self.messages.load(Relaxed));
        gauge(&mut out, "baby_discord_deliveries_total", "Events queued to sessions.", "counter", "", self.deliveries.load(Relaxed));
        gauge(
            &mut out,
            "baby_discord_dropped_slow_consumers_total",
            "Sessions dropped because their queue overflowed.",
            "counter",
            "",
            self.dropped_slow.load(Relaxed),
        );
        let name = "baby_discord_dropped_slow_consumers_by_protocol_total";
        let _ = writeln!(out, "# HELP {name} Slow consumers dropped, by protocol.\n# TYPE {name} counter");
        for (label, counter) in ["tcp", "sse", "ws"].iter().zip(&self.dropped_slow_by) {
            let _ = writeln!(out, "{name}{{protocol=\"{label}\"}} {}", counter.load(Relaxed));
        }
        gauge(
            &mut out,
            "baby_discord_rejected_connections_total",
            "Connections refused at MAX_CONNECTIONS.",
            "counter",
            "",
            self.rejected_connections.load(Relaxed),
        );
        gauge(
            &mut out,
            "baby_discord_store_failures_total",
            "Messages refused because the store failed.",
            "counter",
            "",
            self.store_failures.load(Relaxed),
        );
        self.delivery_latency.render(
            &mut out,
            "baby_discord_delivery_latency_seconds",
            "From a message reaching the router to its fan-out, including the commit.",
        );
        self.commit_latency.render(&mut out, "baby_discord_store_commit_seconds", "Duration of one group commit.");
        self.batch_sizes.render(&mut out, "baby_discord_store_batch_size", "Messages per group commit.");
        self.bus.render(&mut out);
        out
    }
}
