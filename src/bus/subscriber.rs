//! The subscriber thread: listens on the service channel and this
//! instance's channel and hands every event to the router.
//!
//! The `redis` crate does not reconnect a pub/sub connection, so this loop
//! does: on any error it reports `Down`, waits with backoff, connects,
//! subscribes again and reports `Up` — the router then catches up on what
//! it missed from the store and re-syncs presence.

use std::sync::Arc;
use std::time::Duration;

use super::{next_backoff, BusEvent, BusHealth, Names};

/// What the subscriber hands the router.
#[derive(Debug)]
pub enum Incoming {
    Event(BusEvent),
    /// Subscribed (again): whatever was published meanwhile was missed.
    Up,
    /// The subscription is lost.
    Down,
}

pub(super) fn spawn(
    client: redis::Client,
    names: Names,
    health: Arc<BusHealth>,
    deliver: impl Fn(Incoming) + Send + 'static,
) {
    crate::vital::spawn("redis-subscriber", None, move || run(client, names, health, deliver))
        .expect("spawn Redis subscriber thread");
}

fn run(client: redis::Client, names: Names, health: Arc<BusHealth>, deliver: impl Fn(Incoming)) {
    let channels = [names.events(), names.instance_channel(&names.instance)];
    let mut backoff = Duration::ZERO;
    loop {
        match listen(&client, &channels, &names.instance, &health, &deliver) {
            Ok(()) => backoff = Duration::ZERO,
            Err(e) => {
                backoff = next_backoff(backoff);
                log::warn!("Redis subscription lost: {e}; reconnecting in {backoff:?}");
            }
        }
        std::thread::sleep(backoff);
    }
}

/// The service prefix, from the events channel name (`<prefix>:events`).
fn prefix_of(channels: &[String]) -> &str {
    channels[0].strip_suffix(":events").unwrap_or("baby-discord")
}

/// One subscription: connect, subscribe, forward until the connection fails.
fn listen(
    client: &redis::Client,
    channels: &[String],
    instance: &str,
    health: &BusHealth,
    deliver: &impl Fn(Incoming),
) -> redis::RedisResult<()> {
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    // Named, so an operator (or a test) can find this instance's subscription.
    redis::cmd("CLIENT").arg("SETNAME").arg(format!("{}-{}-subscriber", prefix_of(channels), instance)).query::<()>(&mut connection)?;
    let mut pubsub = connection.as_pubsub();
    for channel in channels {
        pubsub.subscribe(channel)?;
    }
    // A read timeout keeps the loop responsive; it is not an error.
    pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
    log::info!("subscribed to {}", channels.join(", "));
    health.set_subscribed(true);
    deliver(Incoming::Up);
    let outcome = loop {
        match pubsub.get_message() {
            Ok(msg) => {
                let payload: String = match msg.get_payload() {
                    Ok(payload) => payload,
                    Err(e) => {
                        log::warn!("unreadable bus payload: {e}");
                        continue;
                    }
                };
                match serde_json::from_str::<BusEvent>(&payload) {
                    Ok(event) if event.sender() != instance => deliver(Incoming::Event(event)),
                    Ok(_) => {}
                    Err(e) => log::warn!("ignoring a malformed bus event: {e}"),
                }
            }
            Err(e) if e.is_timeout() => continue,
            Err(e) => break Err(e),
        }
    };
    health.set_subscribed(false);
    deliver(Incoming::Down);
    outcome
}
