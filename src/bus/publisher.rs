//! The publisher thread: sends bus events and holds this instance's
//! nickname claims in Redis.
//!
//! It never blocks the router: the router queues jobs into an unbounded
//! channel. While Redis is unreachable, events are dropped (the store and
//! the reconnect snapshot make up for them), and claims are answered
//! `Unavailable` so the router can fall back to a local check.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{next_backoff, BusEvent, BusHealth, Names};
use crate::event::SessionId;

/// How long a nickname claim lives unless refreshed.
const CLAIM_TTL_SECS: u64 = 30;
/// How often held claims are refreshed.
const CLAIM_REFRESH: Duration = Duration::from_secs(10);

/// Sets the key to this instance if it is free or already ours.
const CLAIM_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0";

/// Deletes the key only if this instance holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

enum Job {
    /// `sharded`: a room channel, published with `SPUBLISH` on a cluster.
    Publish { channel: String, payload: String, sharded: bool },
    Claim { session: SessionId, nick: String },
    Release { nick: String },
}

/// The answer to a nickname claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted,
    /// Another instance holds it.
    Taken,
    /// Redis could not be asked.
    Unavailable,
}

#[derive(Debug)]
pub struct ClaimResult {
    pub session: SessionId,
    pub nick: String,
    pub outcome: ClaimOutcome,
}

/// The router's way onto the bus.
#[derive(Clone)]
pub struct BusHandle {
    jobs: Sender<Job>,
    /// To the subscriber thread: which room channels to listen to.
    rooms: Sender<RoomRequest>,
    pub names: Names,
}

/// A change to the room channels the subscriber listens to.
#[derive(Debug)]
pub enum RoomRequest {
    /// Listen to a room; the subscriber answers `Incoming::Subscribed` once
    /// Redis has confirmed it.
    Subscribe(String),
    Unsubscribe(String),
}

impl BusHandle {
    /// Sends an event to every instance.
    pub fn broadcast(&self, event: &BusEvent) {
        self.publish(self.names.events(), event);
    }

    /// Sends an event to the instances with a member in `room`.
    pub fn to_room(&self, room: &str, event: &impl serde::Serialize) {
        match serde_json::to_string(event) {
            Ok(payload) => {
                let _ = self.jobs.send(Job::Publish { channel: self.names.room_channel(room), payload, sharded: true });
            }
            Err(e) => log::error!("cannot encode a bus event: {e}"),
        }
    }

    /// Starts listening to a room's channel.
    pub fn subscribe(&self, room: &str) {
        let _ = self.rooms.send(RoomRequest::Subscribe(room.to_string()));
    }

    /// Stops listening to a room's channel.
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.rooms.send(RoomRequest::Unsubscribe(room.to_string()));
    }

    /// Sends a committed message to the instances with a member in its
    /// room, serialized from the shared message itself (the same JSON as
    /// [`BusEvent::Message`]).
    pub fn broadcast_message(&self, from: &str, message: &crate::event::ChatMessage) {
        #[derive(serde::Serialize)]
        struct MessageEvent<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            from: &'a str,
            message: &'a crate::event::ChatMessage,
        }
        match serde_json::to_string(&MessageEvent { kind: "message", from, message }) {
            Ok(payload) => {
                let _ = self.jobs.send(Job::Publish { channel: self.names.room_channel(&message.room), payload, sharded: true });
            }
            Err(e) => log::error!("cannot encode a bus message: {e}"),
        }
    }

    /// Sends an event to one instance.
    pub fn send_to(&self, instance: &str, event: &BusEvent) {
        self.publish(self.names.instance_channel(instance), event);
    }

    fn publish(&self, channel: String, event: &BusEvent) {
        match serde_json::to_string(event) {
            Ok(payload) => {
                let _ = self.jobs.send(Job::Publish { channel, payload, sharded: false });
            }
            Err(e) => log::error!("cannot encode a bus event: {e}"),
        }
    }

    /// Asks Redis for a nickname; the answer comes back as a [`ClaimResult`].
    pub fn claim(&self, session: SessionId, nick: &str) {
        let _ = self.jobs.send(Job::Claim { session, nick: nick.to_string() });
    }

    /// Gives a nickname back.
    pub fn release(&self, nick: &str) {
        let _ = self.jobs.send(Job::Release { nick: nick.to_string() });
    }

}

pub(super) fn spawn(
    client: super::Backend,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<crate::metrics::Metrics>,
    rooms: Sender<RoomRequest>,
    claims_done: impl Fn(ClaimResult) + Send + 'static,
) -> BusHandle {
    let (jobs, rx) = crossbeam_channel::unbounded();
    let publisher = Publisher {
        client,
        names: names.clone(),
        health,
        metrics,
        connection: None,
        retry_at: Instant::now(),
        backoff: Duration::ZERO,
        held: HashSet::new(),
    };
    crate::vital::spawn("redis-publisher", None, move || publisher.run(rx, claims_done))
        .expect("spawn Redis publisher thread");
    BusHandle { jobs, rooms, names }
}

struct Publisher {
    client: super::Backend,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<crate::metrics::Metrics>,
    connection: Option<super::Conn>,
    /// No reconnect attempt before this.
    retry_at: Instant,
    backoff: Duration,
    /// Nickname keys this instance holds.
    held: HashSet<String>,
}

impl Publisher {
    fn run(mut self, rx: Receiver<Job>, claims_done: impl Fn(ClaimResult)) {
        let mut last_refresh = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut publishes = Vec::new();
            for job in first.into_iter().chain(rx.try_iter()) {
                match job {
                    Job::Publish { channel, payload, sharded } => publishes.push((channel, payload, sharded)),
                    Job::Claim { session, nick } => {
                        self.flush(&mut publishes);
                        let outcome = self.claim(&nick);
                        claims_done(ClaimResult { session, nick, outcome });
                    }
                    Job::Release { nick } => {
                        self.flush(&mut publishes);
                        self.release(&nick);
                    }
                }
            }
            self.flush(&mut publishes);
            if last_refresh.elapsed() >= CLAIM_REFRESH {
                last_refresh = Instant::now();
                self.refresh_claims();
            }
            if self.connection.is_none() {
                self.connect();
            }
        }
    }

    /// The connection, reconnecting if it is time to try again.
    fn connect(&mut self) -> Option<&mut super::Conn> {
        if self.connection.is_none() && Instant::now() >= self.retry_at {
            match self.client.connect() {
                Ok(connection) => {
                    log::info!("Redis publisher connected");
                    self.connection = Some(connection);
                    self.backoff = Duration::ZERO;
                    self.health.set_publishing(true);
                    // Claims may have expired while Redis was away.
                    self.refresh_claims();
                }
                Err(e) => {
                    self.backoff = next_backoff(self.backoff);
                    self.retry_at = Instant::now() + self.backoff;
                    log::debug!("Redis publisher cannot connect: {e}; next try in {:?}", self.backoff);
                }
            }
        }
        self.connection.as_mut()
    }

    fn failed(&mut self, e: redis::RedisError) {
        log::warn!("Redis publisher lost its connection: {e}");
        self.connection = None;
        self.health.set_publishing(false);
        self.backoff = next_backoff(self.backoff);
        self.retry_at = Instant::now() + self.backoff;
    }

    /// Publishes everything queued in one pipelined round trip.
    fn flush(&mut self, publishes: &mut Vec<(String, String, bool)>) {
        if publishes.is_empty() {
            return;
        }
        let (count, bytes) = (publishes.len(), publishes.iter().map(|(_, p, _)| p.len()).sum::<usize>());
        let batch: Vec<(String, String, bool)> = publishes.drain(..).collect();
        let Some(connection) = self.connect() else { return };
        match connection.publish_all(&batch) {
            Ok(()) => {
                let stats = &self.metrics.bus;
                stats.messages_out.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
                stats.bytes_out.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => self.failed(e),
        }
    }

    fn claim(&mut self, nick: &str) -> ClaimOutcome {
        let key = self.names.nick_key(nick);
        let mut eval = redis::cmd("EVAL");
        eval.arg(CLAIM_SCRIPT).arg(1).arg(&key).arg(&self.names.instance).arg(CLAIM_TTL_SECS);
        let Some(connection) = self.connect() else { return ClaimOutcome::Unavailable };
        match connection.query::<i64>(&eval) {
            Ok(1) => {
                self.held.insert(key);
                ClaimOutcome::Granted
            }
            Ok(_) => ClaimOutcome::Taken,
            Err(e) => {
                self.failed(e);
                ClaimOutcome::Unavailable
            }
        }
    }

    fn release(&mut self, nick: &str) {
        let key = self.names.nick_key(nick);
        self.held.remove(&key);
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE_SCRIPT).arg(1).arg(&key).arg(&self.names.instance);
        let Some(connection) = self.connect() else { return };
        if let Err(e) = connection.query::<i64>(&eval) {
            self.failed(e);
        }
    }

    /// Keeps every held claim alive (and re-creates any lost with Redis).
    fn refresh_claims(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let keys: Vec<String> = self.held.iter().cloned().collect();
        for chunk in keys.chunks(500) {
            let evals: Vec<redis::Cmd> = chunk
                .iter()
                .map(|key| {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(CLAIM_SCRIPT).arg(1).arg(key).arg(&self.names.instance).arg(CLAIM_TTL_SECS);
                    eval
                })
                .collect();
            let Some(connection) = self.connect() else { return };
            match connection.evals(&evals) {
                Ok(results) => {
                    for (key, ok) in chunk.iter().zip(results) {
                        if ok != 1 {
                            log::warn!("nickname claim {key} is now held by another instance");
                        }
                    }
                }
                Err(e) => return self.failed(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ChatMessage;

    #[test]
    fn a_broadcast_message_reads_back_as_a_message_event() {
        let (jobs, rx) = crossbeam_channel::unbounded();
        let (rooms, _) = crossbeam_channel::unbounded();
        let bus = BusHandle { jobs, rooms, names: Names { prefix: "p".into(), instance: "1".into() } };
        let message = ChatMessage {
            id: 7,
            seq: 3,
            room_id: 2,
            room: "general".into(),
            user_id: 5,
            nickname: "alice".into(),
            content: "hi \"there\"".into(),
            created_at_ms: 1_767_268_800_000,
            edited_at_ms: None,
            deleted: false,
            action: true,
            rendered: Default::default(),
        };
        bus.broadcast_message("1", &message);
        let Ok(Job::Publish { channel, payload, sharded: true }) = rx.try_recv() else { panic!("nothing published") };
        assert_eq!(channel, "p:room:general");
        match serde_json::from_str::<BusEvent>(&payload).unwrap() {
            BusEvent::Message { from, message: back } => {
                assert_eq!(from, "1");
                assert_eq!((back.id, back.seq, back.room.as_str(), back.content.as_str()), (7, 3, "general", "hi \"there\""));
                assert!(back.action, "the action flag crosses instances");
            }
            other => panic!("{other:?}"),
        }
    }
}
