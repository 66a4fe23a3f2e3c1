//! The subscriber thread on a Redis Cluster.
//!
//! Room channels use sharded pub/sub: a room's channel lives on the master
//! that owns its slot, and this thread keeps one pub/sub connection per
//! master it needs (`SSUBSCRIBE` there), plus one connection for the
//! service and instance channels (plain `SUBSCRIBE`, which a cluster
//! delivers from every node). It reads the cluster's slot map
//! (`CLUSTER SLOTS`) from the configured nodes when it connects.
//!
//! Any failure — a master dying (its replica takes over), the cluster
//! going away, a slot moving (`MOVED`, or Redis ending a sharded
//! subscription) — drops every connection: the thread reports `Down`, waits
//! with backoff, reads the slot map again, subscribes again to everything
//! and reports `Up`, and the router catches up from the store, as with one
//! Redis.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::Value;

use super::publisher::RoomRequest;
use super::subscriber::Incoming;
use super::{next_backoff, BusEvent, BusHealth, Names};
use crate::metrics::Metrics;

/// How long one read of one connection waits before the next is looked at.
const POLL: Duration = Duration::from_millis(2);
/// How long a subscription's confirmation may take.
const CONFIRM: Duration = Duration::from_secs(2);
/// How often every connection is pinged, so a node that stops answering
/// (a paused or partitioned cluster sends no error) is noticed,
const PING_EVERY: Duration = Duration::from_secs(2);
/// and how long a connection may stay silent despite the pings.
const SILENCE: Duration = Duration::from_secs(5);

pub(super) fn spawn(
    seeds: Vec<String>,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<Metrics>,
    requests: Receiver<RoomRequest>,
    deliver: impl Fn(Incoming) + Send + 'static,
) {
    let subscriber = Sharded { seeds, names, health, metrics, requests, rooms: BTreeSet::new() };
    crate::vital::spawn("redis-subscriber", None, move || subscriber.run(deliver))
        .expect("spawn Redis subscriber thread");
}

struct Sharded {
    /// `redis://host:port` of the configured nodes.
    seeds: Vec<String>,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<Metrics>,
    requests: Receiver<RoomRequest>,
    /// Rooms the router wants to hear, subscribed or not yet.
    rooms: BTreeSet<String>,
}

/// Slot ranges and the `host:port` of the master serving each.
type SlotMap = Vec<(u16, u16, String)>;

/// The connections of one subscription.
struct Links {
    slots: SlotMap,
    /// The service and instance channels.
    shared: Link,
    /// Sharded subscriptions, by master.
    shards: HashMap<String, Link>,
}

/// A command connection to one node (for `CLUSTER SLOTS`).
fn connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(if addr.contains("://") { addr.to_string() } else { format!("redis://{addr}") })?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(connection)
}

/// A pub/sub connection to one node. Its own socket and parser: the
/// `redis` crate's blocking connection has no sharded pub/sub, and its
/// reads after a timeout skip a reply.
struct Link {
    stream: std::net::TcpStream,
    /// Keeps a partly read reply across read timeouts.
    parser: redis::Parser,
    /// When the node last sent anything.
    heard: Instant,
}

impl Link {
    fn open(addr: &str) -> redis::RedisResult<Link> {
        let addr = addr.trim_start_matches("redis://").trim_end_matches('/');
        let mut last = None;
        for resolved in std::net::ToSocketAddrs::to_socket_addrs(addr)? {
            match std::net::TcpStream::connect_timeout(&resolved, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
                    return Ok(Link { stream, parser: redis::Parser::new(), heard: Instant::now() });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(Into::into).unwrap_or_else(|| (redis::ErrorKind::IoError, "no address for a cluster node").into()))
    }

    fn send(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<()> {
        std::io::Write::write_all(&mut self.stream, &cmd.get_packed_command())?;
        Ok(())
    }

    /// One reply or push, or `None` if none came within `timeout`.
    fn read(&mut self, timeout: Duration) -> redis::RedisResult<Option<Value>> {
        self.stream.set_read_timeout(Some(timeout))?;
        match self.parser.parse_value(&mut self.stream) {
            Ok(value) => {
                self.heard = Instant::now();
                Ok(Some(value))
            }
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Parses a `CLUSTER SLOTS` answer.
fn slot_map(value: &Value) -> Option<SlotMap> {
    let Value::Array(ranges) = value else { return None };
    let mut map = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else { return None };
        let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else { return None };
        let (host, port) = (text(master.first()?)?, int(master.get(1)?)?);
        map.push((start as u16, end as u16, format!("{host}:{port}")));
    }
    Some(map)
}

/// A pub/sub push, split into its kind, channel and payload.
fn push(value: Value) -> Option<(String, String, Option<String>)> {
    let Value::Array(items) = value else { return None };
    let kind = text(items.first()?)?;
    let channel = text(items.get(1)?)?;
    let payload = items.get(2).and_then(text);
    Some((kind, channel, payload))
}

impl Sharded {
    fn run(mut self, deliver: impl Fn(Incoming)) {
        let mut backoff = Duration::ZERO;
        loop {
            match self.listen(&deliver) {
                Ok(()) => backoff = Duration::ZERO,
                Err(e) => {
                    backoff = next_backoff(backoff);
                    log::warn!("Redis Cluster subscription lost: {e}; reconnecting in {backoff:?}");
                }
            }
            self.metrics.bus.subscriptions.store(0, Relaxed);
            let deadline = Instant::now() + backoff;
            while let Ok(request) = self.requests.recv_deadline(deadline) {
                self.note(request);
            }
        }
    }

    fn note(&mut self, request: RoomRequest) {
        match request {
            RoomRequest::Subscribe(room) => self.rooms.insert(room),
            RoomRequest::Unsubscribe(room) => self.rooms.remove(&room),
        };
    }

    /// The slot map, from the first configured node that answers.
    fn topology(&self) -> redis::RedisResult<SlotMap> {
        let mut last = None;
        for seed in &self.seeds {
            match connect(seed).and_then(|mut c| redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(&mut c)) {
                Ok(value) => match slot_map(&value) {
                    Some(map) if !map.is_empty() => return Ok(map),
                    _ => last = Some(redis::RedisError::from((redis::ErrorKind::ClientError, "no slot map"))),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::ClientError, "no cluster node configured").into()))
    }

    fn listen(&mut self, deliver: &impl Fn(Incoming)) -> redis::RedisResult<()> {
        for request in self.requests.try_iter().collect::<Vec<_>>() {
            self.note(request);
        }
        let slots = self.topology()?;
        let names = self.names.clone();
        let shared_channels = [names.events(), names.instance_channel(&names.instance)];
        let mut shared = Link::open(&slots[0].2)?;
        // Named, so an operator (or a test) can find this instance's subscription.
        shared.send(redis::cmd("CLIENT").arg("SETNAME").arg(format!("{}-{}-subscriber", names.prefix, names.instance)))?;
        shared.read(CONFIRM)?;
        let mut links = Links { slots, shared, shards: HashMap::new() };
        for channel in &shared_channels {
            self.subscribe(&mut links, None, "SUBSCRIBE", channel, deliver)?;
        }
        for room in self.rooms.clone() {
            let channel = names.room_channel(&room);
            let master = self.master_of(&links, &channel);
            self.subscribe(&mut links, Some(master), "SSUBSCRIBE", &channel, deliver)?;
        }
        self.metrics.bus.subscriptions.store(2 + self.rooms.len() as u64, Relaxed);
        log::info!("subscribed on the Redis Cluster to {} and {} room channels", shared_channels.join(", "), self.rooms.len());
        self.health.set_subscribed(true);
        deliver(Incoming::Up);
        let outcome = self.serve(&mut links, deliver);
        self.health.set_subscribed(false);
        deliver(Incoming::Down);
        outcome
    }

    fn serve(&mut self, links: &mut Links, deliver: &impl Fn(Incoming)) -> redis::RedisResult<()> {
        let mut pinged = Instant::now();
        loop {
            if pinged.elapsed() >= PING_EVERY {
                pinged = Instant::now();
                for link in std::iter::once(&mut links.shared).chain(links.shards.values_mut()) {
                    if link.heard.elapsed() >= SILENCE {
                        return Err((redis::ErrorKind::IoError, "a cluster node stopped answering").into());
                    }
                    link.send(&redis::cmd("PING"))?;
                }
            }
            let requests: Vec<RoomRequest> = self.requests.try_iter().collect();
            for request in requests {
                match request {
                    RoomRequest::Subscribe(room) => {
                        if !self.rooms.contains(&room) {
                            let channel = self.names.room_channel(&room);
                            let master = self.master_of(links, &channel);
                            self.subscribe(links, Some(master), "SSUBSCRIBE", &channel, deliver)?;
                            self.rooms.insert(room.clone());
                        }
                        deliver(Incoming::Subscribed(room));
                    }
                    RoomRequest::Unsubscribe(room) => {
                        if self.rooms.remove(&room) {
                            let channel = self.names.room_channel(&room);
                            let master = self.master_of(links, &channel);
                            self.subscribe(links, Some(master), "SUNSUBSCRIBE", &channel, deliver)?;
                        }
                    }
                }
                self.metrics.bus.subscriptions.store(2 + self.rooms.len() as u64, Relaxed);
            }
            if let Some(value) = links.shared.read(POLL)? {
                self.handle(value, deliver)?;
            }
            for link in links.shards.values_mut() {
                while let Some(value) = link.read(POLL)? {
                    self.handle(value, deliver)?;
                }
            }
        }
    }

    /// The master serving a channel's slot.
    fn master_of(&self, links: &Links, channel: &str) -> String {
        let slot = redis::cluster_routing::get_slot(channel.as_bytes());
        links
            .slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, master)| master.clone())
            .unwrap_or_else(|| links.slots[0].2.clone())
    }

    /// Sends a (un)subscription and waits for its confirmation, handing on
    /// the messages that arrive meanwhile.
    fn subscribe(
        &self,
        links: &mut Links,
        master: Option<String>,
        verb: &str,
        channel: &str,
        deliver: &impl Fn(Incoming),
    ) -> redis::RedisResult<()> {
        let link = match &master {
            None => &mut links.shared,
            Some(master) => {
                if !links.shards.contains_key(master) {
                    links.shards.insert(master.clone(), Link::open(master)?);
                }
                links.shards.get_mut(master).expect("inserted above")
            }
        };
        link.send(redis::cmd(verb).arg(channel))?;
        let confirmation = verb.to_ascii_lowercase();
        let deadline = Instant::now() + CONFIRM;
        loop {
            let Some(value) = link.read(CONFIRM)? else {
                return Err((redis::ErrorKind::IoError, "no confirmation of a subscription").into());
            };
            match push(value.clone()) {
                Some((kind, ch, _)) if kind == confirmation && ch == channel => return Ok(()),
                _ => self.handle(value, deliver)?,
            }
            if Instant::now() > deadline {
                return Err((redis::ErrorKind::IoError, "no confirmation of a subscription").into());
            }
        }
    }

    /// One push from a connection: a message for the router, or the end of
    /// a sharded subscription Redis decided (its slot moved: resubscribe).
    fn handle(&self, value: Value, deliver: &impl Fn(Incoming)) -> redis::RedisResult<()> {
        match push(value) {
            Some((kind, _, Some(payload))) if kind == "message" || kind == "smessage" => {
                self.metrics.bus.received(payload.len());
                match serde_json::from_str::<BusEvent>(&payload) {
                    Ok(event) if event.sender() != self.names.instance => deliver(Incoming::Event(event)),
                    Ok(_) => {}
                    Err(e) => log::warn!("ignoring a malformed bus event: {e}"),
                }
                Ok(())
            }
            Some((kind, channel, _)) if kind == "sunsubscribe" => {
                let room = channel.strip_prefix(&format!("{}:room:", self.names.prefix)).unwrap_or(&channel);
                if self.rooms.contains(room) {
                    Err((redis::ErrorKind::IoError, "Redis ended a sharded subscription (slot moved)").into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_slots_answer_maps_slots_to_masters() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.as_bytes().to_vec()), Value::Int(port), Value::BulkString(b"id".to_vec())])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("127.0.0.1", 7001), node("127.0.0.1", 7004)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("127.0.0.1", 7002)]),
        ]);
        assert_eq!(
            slot_map(&answer).unwrap(),
            [(0, 5460, "127.0.0.1:7001".to_string()), (5461, 16383, "127.0.0.1:7002".to_string())]
        );
    }
}
