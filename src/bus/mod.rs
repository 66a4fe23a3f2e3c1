//! The cross-instance bus: several instances as one service over Redis
//! pub/sub (only when `REDIS_URL` is set).
//!
//! Two threads, each with its own Redis connection, both reconnecting with
//! backoff by themselves:
//! - the **publisher** ([`publisher`]) takes [`BusEvent`]s and nickname
//!   claims from the router through a channel and sends them, pipelined;
//! - the **subscriber** ([`subscriber`]) listens on the service channel,
//!   this instance's own channel and the channels of the rooms the router
//!   asks for, and hands every event to the router.
//!
//! Channels and keys, all under `REDIS_PREFIX` (`p`):
//! - `p:events`: what every instance must see, small and sized to the
//!   change (rooms created, presence changes with the user's status,
//!   heartbeats, hellos);
//! - `p:room:<room>`: one room's committed messages, edits, deletions,
//!   `[system]` lines and typing signals,
//!   heard only by instances with a local member in the room (the router
//!   subscribes on a room's first local join and unsubscribes on its last
//!   leave, reading from the store what it missed meanwhile);
//! - `p:instance:<id>`: what only one instance must see (DMs to its users;
//!   the presence snapshot answering a hello goes on `p:events` instead, in
//!   order with the sender's presence changes);
//! - `p:nick:<lower-case nickname>`: who holds a nickname, `SET NX` with a
//!   TTL the owner keeps refreshing, so an instance that dies frees its
//!   nicknames by itself.
//!
//! The bus carries no state of its own: the router keeps the view of the
//! other instances' users, and the store stays the source of truth for
//! messages (a message missed while Redis was away is read back from it).

pub mod publisher;
mod sharded;
pub mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{ChatMessage, MessageChange};

/// Names of this service's Redis channels and keys.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub instance: String,
}

impl Names {
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    pub fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{}", self.prefix, room)
    }

    pub fn instance_channel(&self, instance: &str) -> String {
        format!("{}:instance:{}", self.prefix, instance)
    }

    /// The key holding a nickname's claim: case-insensitive, like nicknames.
    pub fn nick_key(&self, nick: &str) -> String {
        format!("{}:nick:{}", self.prefix, crate::names::name_key(nick))
    }
}

/// One user of an instance, for presence: where it is and its status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub nick: String,
    pub room: Option<String>,
    /// Online or away (an instance that sends none means online).
    #[serde(default)]
    pub status: crate::event::Status,
    /// The away message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What instances tell each other. Every event names its sender; an
/// instance ignores its own.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEvent {
    /// A committed room message.
    Message { from: String, message: ChatMessage },
    /// A room was created (and stored).
    RoomCreated { from: String, id: i64, name: String, created_at_ms: i64 },
    /// A user of `from` is online, in `member.room`.
    Presence { from: String, member: Member },
    /// A user of `from` went offline (or renamed: `Gone` the old name).
    Gone { from: String, nick: String },
    /// Everyone on `from`, replacing what was known of it: sent when `from`
    /// (re)joins the bus, and when another instance says hello.
    Snapshot { from: String, members: Vec<Member> },
    /// `from` has just (re)joined the bus: everyone answers with a snapshot
    /// (on the service channel, in order with their presence changes).
    Hello { from: String },
    /// `from` is alive.
    Heartbeat { from: String },
    /// A direct message to a user on the receiving instance.
    Dm { from: String, sender: String, recipient: String, text: String, at_ms: i64 },
    /// A `[system]` line for a room's members on every instance (a join,
    /// leave, rename or disconnect on `from`). It belongs after the room's
    /// messages before `after_seq`: receivers hold it until they have
    /// delivered those.
    Notice { from: String, room: String, after_seq: i64, text: String, at_ms: i64 },
    /// A committed edit or deletion of a room message, on the room's
    /// channel: receivers deliver it after the room's message
    /// `change.after_seq`, like a notice.
    Changed { from: String, change: MessageChange },
    /// `user` (on `from`) is typing in `room`: on the room's channel, not stored.
    Typing { from: String, room: String, user: String },
}

impl BusEvent {
    /// The instance that sent the event.
    pub fn sender(&self) -> &str {
        match self {
            BusEvent::Message { from, .. }
            | BusEvent::RoomCreated { from, .. }
            | BusEvent::Presence { from, .. }
            | BusEvent::Gone { from, .. }
            | BusEvent::Snapshot { from, .. }
            | BusEvent::Hello { from }
            | BusEvent::Heartbeat { from }
            | BusEvent::Dm { from, .. }
            | BusEvent::Notice { from, .. }
            | BusEvent::Changed { from, .. }
            | BusEvent::Typing { from, .. } => from,
        }
    }
}

/// Whether both bus connections are up, for `/api/health`.
#[derive(Default)]
pub struct BusHealth {
    subscribed: AtomicBool,
    publishing: AtomicBool,
}

impl BusHealth {
    pub fn is_healthy(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.publishing.load(Ordering::Relaxed)
    }

    pub(crate) fn set_subscribed(&self, up: bool) {
        self.subscribed.store(up, Ordering::Relaxed);
    }

    pub(crate) fn set_publishing(&self, up: bool) {
        self.publishing.store(up, Ordering::Relaxed);
    }
}

pub use publisher::BusHandle;

/// Bus traffic counters for `/metrics`.
#[derive(Default)]
pub struct BusStats {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Channels this instance is subscribed to now.
    pub subscriptions: AtomicU64,
}

impl BusStats {
    pub(crate) fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The Prometheus text of the bus counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP baby_discord_bus_messages_total Redis bus messages by direction.\n# TYPE baby_discord_bus_messages_total counter"
        );
        let _ = writeln!(out, "baby_discord_bus_messages_total{{direction=\"in\"}} {}", load(&self.messages_in));
        let _ = writeln!(out, "baby_discord_bus_messages_total{{direction=\"out\"}} {}", load(&self.messages_out));
        let _ = writeln!(
            out,
            "# HELP baby_discord_bus_bytes_total Redis bus payload bytes by direction.\n# TYPE baby_discord_bus_bytes_total counter"
        );
        let _ = writeln!(out, "baby_discord_bus_bytes_total{{direction=\"in\"}} {}", load(&self.bytes_in));
        let _ = writeln!(out, "baby_discord_bus_bytes_total{{direction=\"out\"}} {}", load(&self.bytes_out));
        let _ = writeln!(
            out,
            "# HELP baby_discord_bus_subscriptions Redis channels subscribed to.\n# TYPE baby_discord_bus_subscriptions gauge\nbaby_discord_bus_subscriptions {}",
            load(&self.subscriptions)
        );
    }
}

/// Backoff between reconnect attempts: 100 ms doubling to 5 s.
pub(crate) fn next_backoff(current: std::time::Duration) -> std::time::Duration {
    (current * 2).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(5))
}

/// Where the bus connects: one Redis, or a Redis Cluster
/// (`redis+cluster://host:port,host:port,…`), whose room channels use
/// sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
#[derive(Clone)]
pub(crate) enum Backend {
    Single(redis::Client),
    Cluster { client: redis::cluster::ClusterClient, nodes: Vec<String> },
}

/// The URL prefix naming a Redis Cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

impl Backend {
    pub(crate) fn open(url: &str) -> Result<Backend, String> {
        match url.strip_prefix(CLUSTER_SCHEME) {
            Some(rest) => {
                let nodes: Vec<String> =
                    rest.trim_end_matches('/').split(',').filter(|n| !n.is_empty()).map(|n| format!("redis://{n}")).collect();
                if nodes.is_empty() {
                    return Err("invalid REDIS_URL: a redis+cluster:// URL names no node".into());
                }
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(std::time::Duration::from_secs(2))
                    .response_timeout(std::time::Duration::from_secs(2))
                    .build()
                    .map_err(|e| format!("invalid REDIS_URL: {e}"))?;
                Ok(Backend::Cluster { client, nodes })
            }
            None => redis::Client::open(url).map(Backend::Single).map_err(|e| format!("invalid REDIS_URL: {e}")),
        }
    }

    /// A command connection (to the whole cluster, for a cluster).
    pub(crate) fn connect(&self) -> redis::RedisResult<Conn> {
        let timeout = Some(std::time::Duration::from_secs(2));
        match self {
            Backend::Single(client) => {
                let connection = client.get_connection_with_timeout(std::time::Duration::from_secs(2))?;
                connection.set_write_timeout(timeout)?;
                connection.set_read_timeout(timeout)?;
                Ok(Conn::Single(connection))
            }
            Backend::Cluster { client, .. } => Ok(Conn::Cluster(client.get_connection()?)),
        }
    }
}

/// A command connection to one Redis or a cluster.
pub(crate) enum Conn {
    Single(redis::Connection),
    Cluster(redis::cluster::ClusterConnection),
}

impl Conn {
    pub(crate) fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c),
        }
    }

    /// Publishes (channel, payload, sharded) in one pipelined round trip
    /// (one per shard on a cluster).
    pub(crate) fn publish_all(&mut self, batch: &[(String, String, bool)]) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for (channel, payload, _) in batch {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                pipe.query(c)
            }
            Conn::Cluster(c) => {
                // A cluster pipeline takes SPUBLISH (routed by channel) but
                // not PUBLISH, which goes on its own.
                let mut pipe = redis::cluster::cluster_pipe();
                for (channel, payload, sharded) in batch {
                    if *sharded {
                        pipe.cmd("SPUBLISH").arg(channel).arg(payload).ignore();
                    } else {
                        redis::cmd("PUBLISH").arg(channel).arg(payload).query::<()>(c)?;
                    }
                }
                pipe.query(c)
            }
        }
    }

    /// Runs scripts (pipelined on one Redis); their integer answers in order.
    pub(crate) fn evals(&mut self, evals: &[redis::Cmd]) -> redis::RedisResult<Vec<i64>> {
        match self {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for eval in evals {
                    pipe.add_command(eval.clone());
                }
                pipe.query(c)
            }
            Conn::Cluster(c) => evals.iter().map(|eval| eval.query(c)).collect(),
        }
    }
}

/// Whether the Redis (or Redis Cluster) `url` names answers a PING.
pub fn ping(url: &str) -> Result<(), String> {
    let mut connection = Backend::open(url)?.connect().map_err(|e| e.to_string())?;
    connection.query::<String>(&redis::cmd("PING")).map(|_| ()).map_err(|e| e.to_string())
}

/// Starts both bus threads. `deliver` receives every event from other
/// instances and the subscriber's up/down changes.
pub fn start(
    url: &str,
    names: Names,
    metrics: Arc<crate::metrics::Metrics>,
    deliver: impl Fn(subscriber::Incoming) + Send + 'static,
    claims_done: impl Fn(publisher::ClaimResult) + Send + 'static,
) -> Result<(BusHandle, Arc<BusHealth>), String> {
    let backend = Backend::open(url)?;
    let health = Arc::new(BusHealth::default());
    // Fail fast at start-up if Redis is not there at all.
    backend.connect().map_err(|e| format!("cannot reach Redis at REDIS_URL: {e}"))?;
    let (rooms, room_requests) = crossbeam_channel::unbounded();
    let handle = publisher::spawn(backend.clone(), names.clone(), health.clone(), metrics.clone(), rooms, claims_done);
    match backend {
        Backend::Single(client) => subscriber::spawn(client, names, health.clone(), metrics, room_requests, deliver),
        Backend::Cluster { nodes, .. } => sharded::spawn(nodes, names, health.clone(), metrics, room_requests, deliver),
    }
    Ok((handle, health))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nickname_claims_ignore_case() {
        let names = Names { prefix: "p".into(), instance: "1".into() };
        assert_eq!(names.nick_key("ALICE"), names.nick_key("alice"));
        assert_eq!(names.nick_key("Bob"), "p:nick:bob");
    }
}
