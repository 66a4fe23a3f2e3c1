//! The subscriber thread: listens on the service channel, this instance's
//! channel and the channels of the rooms the router asks for, and hands
//! every event to the router.
//!
//! The router changes the room channels through [`RoomRequest`]s; the
//! thread applies them between reads (a short read timeout keeps it
//! responsive) and answers each subscription with
//! [`Incoming::Subscribed`] once Redis has confirmed it, so the router reads
//! from the store only what was committed before it could hear the rest.
//!
//! The `redis` crate does not reconnect a pub/sub connection, so this loop
//! does: on any error it reports `Down`, waits with backoff, connects,
//! subscribes again (to every room still wanted) and reports `Up` — the
//! router then catches up on what it missed from the store and re-syncs
//! presence.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::publisher::RoomRequest;
use super::{next_backoff, BusEvent, BusHealth, Names};
use crate::metrics::Metrics;

/// What the subscriber hands the router.
#[derive(Debug)]
pub enum Incoming {
    Event(BusEvent),
    /// Subscribed (again), to the service channels and every wanted room:
    /// whatever was published meanwhile was missed.
    Up,
    /// The subscription is lost.
    Down,
    /// Now listening to this room's channel.
    Subscribed(String),
}

/// How long one read waits before room requests are looked at again.
const POLL: Duration = Duration::from_millis(20);

pub(super) fn spawn(
    client: redis::Client,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<Metrics>,
    requests: Receiver<RoomRequest>,
    deliver: impl Fn(Incoming) + Send + 'static,
) {
    let subscriber = Subscriber { client, names, health, metrics, requests, rooms: BTreeSet::new() };
    crate::vital::spawn("redis-subscriber", None, move || subscriber.run(deliver))
        .expect("spawn Redis subscriber thread");
}

struct Subscriber {
    client: redis::Client,
    names: Names,
    health: Arc<BusHealth>,
    metrics: Arc<Metrics>,
    requests: Receiver<RoomRequest>,
    /// Rooms the router wants to hear, subscribed or not yet.
    rooms: BTreeSet<String>,
}

impl Subscriber {
    fn run(mut self, deliver: impl Fn(Incoming)) {
        let mut backoff = Duration::ZERO;
        loop {
            match self.listen(&deliver) {
                Ok(()) => backoff = Duration::ZERO,
                Err(e) => {
                    backoff = next_backoff(backoff);
                    log::warn!("Redis subscription lost: {e}; reconnecting in {backoff:?}");
                }
            }
            self.metrics.bus.subscriptions.store(0, Relaxed);
            // Requests made while down only change what to subscribe to next.
            let deadline = std::time::Instant::now() + backoff;
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

    /// One subscription: connect, subscribe, forward until the connection fails.
    fn listen(&mut self, deliver: &impl Fn(Incoming)) -> redis::RedisResult<()> {
        let names = self.names.clone();
        let base = [names.events(), names.instance_channel(&names.instance)];
        let mut connection = self.client.get_connection_with_timeout(Duration::from_secs(2))?;
        // Named, so an operator (or a test) can find this instance's subscription.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("{}-{}-subscriber", names.prefix, names.instance))
            .query::<()>(&mut connection)?;
        let mut pubsub = connection.as_pubsub();
        pubsub.set_read_timeout(Some(Duration::from_secs(2)))?;
        for request in self.requests.try_iter().collect::<Vec<_>>() {
            self.note(request);
        }
        for channel in &base {
            pubsub.subscribe(channel)?;
        }
        for room in &self.rooms {
            pubsub.subscribe(names.room_channel(room))?;
        }
        let metrics = self.metrics.clone();
        let stats = &metrics.bus;
        stats.subscriptions.store((base.len() + self.rooms.len()) as u64, Relaxed);
        log::info!("subscribed to {} and {} room channels", base.join(", "), self.rooms.len());
        // A read timeout keeps the loop responsive; it is not an error.
        pubsub.set_read_timeout(Some(POLL))?;
        self.health.set_subscribed(true);
        deliver(Incoming::Up);
        let outcome = loop {
            // Room changes first, so a join never waits behind a quiet channel.
            if let Err(e) = self.apply_requests(&mut pubsub, deliver) {
                break Err(e);
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload: String = match msg.get_payload() {
                        Ok(payload) => payload,
                        Err(e) => {
                            log::warn!("unreadable bus payload: {e}");
                            continue;
                        }
                    };
                    stats.received(payload.len());
                    match serde_json::from_str::<BusEvent>(&payload) {
                        Ok(event) if event.sender() != names.instance => deliver(Incoming::Event(event)),
                        Ok(_) => {}
                        Err(e) => log::warn!("ignoring a malformed bus event: {e}"),
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => break Err(e),
            }
        };
        self.health.set_subscribed(false);
        deliver(Incoming::Down);
        outcome
    }

    /// Subscribes to and unsubscribes from room channels as the router asked.
    fn apply_requests(&mut self, pubsub: &mut redis::PubSub<'_>, deliver: &impl Fn(Incoming)) -> redis::RedisResult<()> {
        let requests: Vec<RoomRequest> = self.requests.try_iter().collect();
        if requests.is_empty() {
            return Ok(());
        }
        // Confirmations may take longer than a poll.
        pubsub.set_read_timeout(Some(Duration::from_secs(2)))?;
        for request in requests {
            match request {
                RoomRequest::Subscribe(room) => {
                    if !self.rooms.contains(&room) {
                        pubsub.subscribe(self.names.room_channel(&room))?;
                        self.rooms.insert(room.clone());
                    }
                    deliver(Incoming::Subscribed(room));
                }
                RoomRequest::Unsubscribe(room) => {
                    if self.rooms.remove(&room) {
                        pubsub.unsubscribe(self.names.room_channel(&room))?;
                    }
                }
            }
        }
        self.metrics.bus.subscriptions.store(2 + self.rooms.len() as u64, Relaxed);
        pubsub.set_read_timeout(Some(POLL))
    }
}
