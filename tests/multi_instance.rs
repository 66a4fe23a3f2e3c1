//! Several instances as one service (one Redis, one PostgreSQL): real
//! processes sharing one PostgreSQL database and one Redis, each cluster
//! under its own Redis prefix and database so tests run in parallel. Most
//! tests run twice: on the single Redis and on the local Redis Cluster.

mod common;

for_each_redis!(
    users_on_three_instances_chat_in_one_room,
    concurrent_senders_on_three_instances_are_seen_in_one_order,
    a_nickname_online_on_one_instance_is_refused_on_another,
    a_direct_message_crosses_instances,
    a_killed_instance_leaves_everyones_list_within_30_seconds,
    system_lines_reach_members_on_every_instance,
    instances_subscribe_only_to_rooms_with_a_local_member,
);

use std::time::{Duration, Instant};

use common::tcp::eventually;
use common::{Client, Cluster, Redis};

/// Room messages only (joins and other notices interleave freely).
fn room_lines(client: &mut Client, room: &str, count: usize) -> Vec<String> {
    let prefix = format!("[{room}] ");
    (0..count).map(|_| client.wait_for(|l| l.starts_with(&prefix))).collect()
}

/// `/join room`: its reply up to the end of the history, or the one-line
/// error (the room not known here yet).
fn join(client: &mut Client, room: &str) -> Vec<String> {
    client.ask(&format!("/join {room}"), |l| l == "---" || l.starts_with("Error: "))
}

fn users_on_three_instances_chat_in_one_room(redis: Redis) {
    let cluster = Cluster::start_on(redis, 3, |b| b);
    let mut alice = cluster.servers[0].login("alice");
    alice.create("general");
    let mut bob = cluster.servers[1].login("bob");
    let mut carol = cluster.servers[2].login("carol");
    // The room was created on instance 1; the others learn of it over the bus.
    eventually(&mut bob, "/rooms", Duration::from_secs(5), |l| l == "Rooms (1):");
    bob.line();
    join(&mut bob, "general");
    join(&mut carol, "general");

    alice.send("hello from 1");
    bob.send("hello from 2");
    for client in [&mut alice, &mut bob, &mut carol] {
        let lines = room_lines(client, "general", 2);
        assert!(lines.contains(&"[general] alice: hello from 1".to_string()), "{lines:?}");
        assert!(lines.contains(&"[general] bob: hello from 2".to_string()), "{lines:?}");
    }
    let list = eventually(&mut carol, "/list", Duration::from_secs(5), |l| l.contains("(3)"));
    assert_eq!(list, "Users in general (3): alice, bob, carol");
    // Presence news travels on its own: the count is right once it lands.
    let started = Instant::now();
    loop {
        let rooms = alice.ask("/rooms", |l| l.starts_with("  general"));
        if rooms[rooms.len() - 1] == "  general (3 members)" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{rooms:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn concurrent_senders_on_three_instances_are_seen_in_one_order(redis: Redis) {
    let cluster = Cluster::start_on(redis, 3, |b| b.env("MSG_RATE", 0));
    let mut members = Vec::new();
    let mut senders = Vec::new();
    for (i, server) in cluster.servers.iter().enumerate() {
        let mut member = server.login(&format!("member{i}"));
        let sender = server.login(&format!("sender{i}"));
        if i == 0 {
            member.create("race");
        }
        members.push(member);
        senders.push(sender);
    }
    for (i, client) in members.iter_mut().chain(senders.iter_mut()).enumerate() {
        if i != 0 {
            let started = Instant::now();
            while join(client, "race")[0] != "Joined room: race" {
                assert!(started.elapsed() < Duration::from_secs(5), "room never reached this instance");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let per_sender = 40;
    std::thread::scope(|scope| {
        for (i, sender) in senders.iter_mut().enumerate() {
            scope.spawn(move || {
                for n in 0..per_sender {
                    sender.send(&format!("s{i} #{n}"));
                }
            });
        }
    });
    let orders: Vec<Vec<String>> = members.iter_mut().map(|m| room_lines(m, "race", 3 * per_sender)).collect();
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "two members saw different orders");
    }
    // And each sender's own messages keep their order.
    for i in 0..3 {
        let own: Vec<&String> = orders[0].iter().filter(|l| l.contains(&format!("s{i} #"))).collect();
        let expected: Vec<String> = (0..per_sender).map(|n| format!("[race] sender{i}: s{i} #{n}")).collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>());
    }
    // History on join is the same on every instance.
    let histories: Vec<Vec<String>> = cluster
        .servers
        .iter()
        .enumerate()
        .map(|(i, server)| join(&mut server.login(&format!("late{i}")), "race"))
        .collect();
    assert_eq!(histories[0][2..12], orders[0][orders[0].len() - 10..]);
    assert!(histories.iter().all(|h| h == &histories[0]), "{histories:?}");
}

fn a_nickname_online_on_one_instance_is_refused_on_another(redis: Redis) {
    let cluster = Cluster::start_on(redis, 2, |b| b);
    let _alice = cluster.servers[0].login("alice");
    // The claim in Redis decides at once, before any presence news arrives.
    let key = format!("{}:nick:alice", cluster.prefix);
    assert_eq!(redis.cli(&["GET", &key]).trim(), "i1");
    let mut other = cluster.servers[1].connect();
    other.expect("Welcome to Baby Discord!");
    other.expect_prompt();
    other.send("ALICE");
    other.expect("Error: nickname 'ALICE' is already taken. Choose another one.");
}

fn a_direct_message_crosses_instances(redis: Redis) {
    let cluster = Cluster::start_on(redis, 2, |b| b);
    let mut alice = cluster.servers[0].login("alice");
    let mut bob = cluster.servers[1].login("bob");
    let started = Instant::now();
    loop {
        alice.send("/dm bob psst");
        let line = alice.line();
        if line == "[DM to bob] psst" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{line}");
        std::thread::sleep(Duration::from_millis(100));
    }
    bob.expect("[DM from alice] psst");
    bob.send("/dm ALICE hi back");
    bob.expect("[DM to alice] hi back");
    alice.expect("[DM from bob] hi back");
}

fn a_killed_instance_leaves_everyones_list_within_30_seconds(redis: Redis) {
    let mut cluster = Cluster::start_on(redis, 2, |b| b);
    let mut alice = cluster.servers[0].login("alice");
    alice.create("r");
    let mut doomed = cluster.servers[1].login("doomed");
    eventually(&mut doomed, "/join r", Duration::from_secs(5), |l| l == "Joined room: r");
    doomed.wait_for(|l| l == "---");
    eventually(&mut alice, "/list", Duration::from_secs(5), |l| l == "Users in r (2): alice, doomed");
    cluster.servers[1].kill9();
    let killed = Instant::now();
    eventually(&mut alice, "/list", Duration::from_secs(30), |l| l == "Users in r (1): alice");
    println!("gone from /list after {:?}", killed.elapsed());
}

#[test]
fn killing_the_subscriptions_mid_chat_loses_no_committed_message() {
    let cluster = Cluster::start_with(3, |b| b.env("MSG_RATE", 0));
    let mut sender = cluster.servers[0].login("sender");
    sender.create("heal");
    let mut readers: Vec<Client> = (1..3).map(|i| cluster.servers[i].login(&format!("reader{i}"))).collect();
    for reader in &mut readers {
        eventually(reader, "/join heal", Duration::from_secs(5), |l| l == "Joined room: heal");
        reader.wait_for(|l| l == "---");
    }
    let total = 60;
    let mut echoed = Vec::new();
    for n in 0..total {
        if n == total / 3 {
            assert_eq!(cluster.kill_subscriptions(), 3, "each instance has one named subscription");
        }
        sender.send(&format!("m{n}"));
        echoed.push(sender.wait_for(|l| l.starts_with("[heal] ")));
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected: Vec<String> = (0..total).map(|n| format!("[heal] sender: m{n}")).collect();
    assert_eq!(echoed, expected);
    for reader in &mut readers {
        assert_eq!(room_lines(reader, "heal", total), expected, "a reader missed or reordered messages");
    }
}

#[test]
fn while_redis_is_away_instances_serve_their_own_users_and_catch_up_after() {
    use common::proxy::Proxy;
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap());
    let redis_url = format!("redis://{}", proxy.addr);
    let cluster = Cluster::start_with(2, |b| b.env("REDIS_URL", &redis_url).env("MSG_RATE", 0));
    let mut alice = cluster.servers[0].login("alice");
    alice.create("weather");
    let mut bob = cluster.servers[1].login("bob");
    eventually(&mut bob, "/join weather", Duration::from_secs(5), |l| l == "Joined room: weather");
    bob.wait_for(|l| l == "---");
    alice.send("before");
    assert_eq!(room_lines(&mut alice, "weather", 1), ["[weather] alice: before"]);
    assert_eq!(room_lines(&mut bob, "weather", 1), ["[weather] alice: before"]);

    proxy.cut();
    let health = |server: &common::TestServer| common::http_get(server.http.unwrap(), "/api/health");
    let started = Instant::now();
    loop {
        let (status, body) = health(&cluster.servers[0]);
        if body.contains("\"redis\":false") {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"status\":\"degraded\""), "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "health never reported Redis down: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each instance keeps serving its own users.
    alice.send("during the outage");
    assert_eq!(room_lines(&mut alice, "weather", 1), ["[weather] alice: during the outage"]);

    proxy.restore();
    // After the reconnect, bob gets what he missed, in order, once.
    alice.send("after");
    assert_eq!(
        room_lines(&mut bob, "weather", 2),
        ["[weather] alice: during the outage", "[weather] alice: after"]
    );
    let started = Instant::now();
    while !health(&cluster.servers[1]).1.contains("\"redis\":true") {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis never came back in health");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines up to and including the first one `pred` accepts.
fn lines_until(client: &mut Client, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = client.line();
        let done = pred(&line);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// `[system]` lines of every kind reach members on every instance, and
/// after the room messages that preceded them where they happened.
fn system_lines_reach_members_on_every_instance(redis: Redis) {
    let cluster = Cluster::start_on(redis, 3, |b| b.env("MSG_RATE", 0));
    let mut alice = cluster.servers[0].login("alice");
    alice.create("hall");
    let mut bob = cluster.servers[1].login("bob");
    let mut carol = cluster.servers[2].login("carol");
    eventually(&mut bob, "/join hall", Duration::from_secs(5), |l| l == "Joined room: hall");
    bob.wait_for(|l| l == "---");
    alice.wait_for(|l| l == "[system] bob joined hall");
    eventually(&mut carol, "/join hall", Duration::from_secs(5), |l| l == "Joined room: hall");
    carol.wait_for(|l| l == "---");
    alice.wait_for(|l| l == "[system] carol joined hall");
    bob.wait_for(|l| l == "[system] carol joined hall");

    // A rename right after a message: everyone sees the message first.
    alice.send("m1");
    carol.wait_for(|l| l == "[hall] alice: m1");
    carol.send("/nick carla");
    carol.expect("You are now known as carla");
    for client in [&mut alice, &mut bob] {
        let lines = lines_until(client, |l| l == "[system] carol is now known as carla");
        assert!(lines.contains(&"[hall] alice: m1".to_string()), "{lines:?}");
    }

    carol.send("/leave");
    carol.wait_for(|l| l == "Left room: hall");
    alice.wait_for(|l| l == "[system] carla left hall");
    bob.wait_for(|l| l == "[system] carla left hall");

    carol.send("/join hall");
    carol.wait_for(|l| l == "---");
    alice.wait_for(|l| l == "[system] carla joined hall");
    bob.wait_for(|l| l == "[system] carla joined hall");
    drop(carol);
    alice.wait_for(|l| l == "[system] carla disconnected");
    bob.wait_for(|l| l == "[system] carla disconnected");

    // And from instance 1 outwards too.
    alice.send("/quit");
    bob.wait_for(|l| l == "[system] alice disconnected");
}

/// Instances sharing one database migrate quietly: no PostgreSQL NOTICE
/// (`relation "schema_migrations" already exists`) at info level.
#[test]
fn instances_sharing_a_database_start_without_notices() {
    let mut cluster = Cluster::start(2);
    cluster.servers[1].terminate();
    cluster.servers[1].restart();
    for server in &cluster.servers {
        let log = server.log();
        assert!(!log.contains("NOTICE"), "{log}");
    }
}

fn wait_until(what: &str, deadline: Duration, pred: impl Fn() -> bool) {
    let started = Instant::now();
    while !pred() {
        assert!(started.elapsed() < deadline, "{what}: not after {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bus counter from `/metrics`.
fn metric(server: &common::TestServer, name: &str) -> u64 {
    let (_, body) = common::http_get(server.http.unwrap(), "/metrics");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// An instance hears a room only while it has a member there, and reads
/// what it missed from the store when it subscribes again.
fn instances_subscribe_only_to_rooms_with_a_local_member(redis: Redis) {
    let cluster = Cluster::start_on(redis, 2, |b| b.env("MSG_RATE", 0));
    let channel = format!("{}:room:quiet", cluster.prefix);
    let mut alice = cluster.servers[0].login("alice");
    alice.create("quiet");
    wait_until("the creator's instance listens", Duration::from_secs(5), || redis.subscribers(&channel) == 1);
    for n in 1..=3 {
        alice.send(&format!("before {n}"));
    }
    room_lines(&mut alice, "quiet", 3);
    // Instance 2 has no member in the room: it is not subscribed to the
    // room's channel, so none of its traffic reaches it. (Its bus counter
    // also counts presence and heartbeats on its own channel, which arrive
    // at any moment, so the subscription is what is checked.)
    alice.send("unheard");
    room_lines(&mut alice, "quiet", 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(redis.subscribers(&channel), 1);

    // Joining subscribes, and the history is read back from the store.
    let mut bob = cluster.servers[1].login("bob");
    let joined = eventually(&mut bob, "/join quiet", Duration::from_secs(5), |l| l == "Joined room: quiet");
    assert_eq!(joined, "Joined room: quiet");
    let history = lines_until(&mut bob, |l| l == "---");
    assert_eq!(
        history,
        ["--- Recent Messages ---", "[quiet] alice: before 1", "[quiet] alice: before 2", "[quiet] alice: before 3", "[quiet] alice: unheard", "---"]
    );
    assert_eq!(redis.subscribers(&channel), 2);
    assert_eq!(metric(&cluster.servers[1], "baby_discord_bus_subscriptions"), 3);
    alice.send("live");
    assert_eq!(room_lines(&mut bob, "quiet", 1), ["[quiet] alice: live"]);

    // The last local member leaving unsubscribes; rejoining catches up.
    bob.send("/leave");
    bob.wait_for(|l| l == "Left room: quiet");
    wait_until("instance 2 stops listening", Duration::from_secs(5), || redis.subscribers(&channel) == 1);
    alice.send("while away");
    room_lines(&mut alice, "quiet", 2);
    bob.send("/join quiet");
    let history = lines_until(&mut bob, |l| l == "---");
    assert_eq!(history[history.len() - 3..], ["[quiet] alice: live", "[quiet] alice: while away", "---"]);
    alice.send("after");
    assert_eq!(room_lines(&mut bob, "quiet", 1), ["[quiet] alice: after"]);
    assert!(metric(&cluster.servers[1], "baby_discord_bus_bytes_total{direction=\"in\"}") > 0);
    assert!(metric(&cluster.servers[0], "baby_discord_bus_bytes_total{direction=\"out\"}") > 0);
}

/// On a Redis Cluster of the test's own: the master serving the room's
/// channel is killed mid-chat. Its replica takes over; the instances
/// rediscover the topology, resubscribe and catch up from the store, so
/// every member gets every committed message, in order.
#[test]
fn a_cluster_master_killed_mid_chat_loses_no_committed_message() {
    let mut redis = common::OwnRedisCluster::start();
    let url = redis.url();
    let cluster = Cluster::start_with(3, |b| b.env("REDIS_URL", &url).env("MSG_RATE", 0));
    let mut sender = cluster.servers[0].login("sender");
    sender.create("failover");
    let mut readers: Vec<Client> = (1..3).map(|i| cluster.servers[i].login(&format!("reader{i}"))).collect();
    for reader in &mut readers {
        eventually(reader, "/join failover", Duration::from_secs(5), |l| l == "Joined room: failover");
        reader.wait_for(|l| l == "---");
    }
    let channel = format!("{}:room:failover", cluster.prefix);
    let total = 60;
    let mut echoed = Vec::new();
    for n in 0..total {
        if n == total / 3 {
            let master = redis.master_of(&channel);
            redis.kill(master);
        }
        sender.send(&format!("m{n}"));
        echoed.push(sender.wait_for(|l| l.starts_with("[failover] ")));
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected: Vec<String> = (0..total).map(|n| format!("[failover] sender: m{n}")).collect();
    assert_eq!(echoed, expected);
    redis.wait_ok();
    // Once the replica serves the slot, the next message shows the gap.
    sender.send("last");
    let mut expected = expected;
    expected.push("[failover] sender: last".to_string());
    for reader in &mut readers {
        assert_eq!(room_lines(reader, "failover", total + 1), expected, "a reader missed or reordered messages");
    }
}

/// On a Redis Cluster of the test's own: the whole cluster stops answering
/// for a while. Instances report degraded, keep serving their own users,
/// and once it is back resubscribe and deliver what was missed, in order.
#[test]
fn while_the_whole_cluster_is_stopped_instances_serve_their_own_users_and_catch_up_after() {
    let mut redis = common::OwnRedisCluster::start();
    let url = redis.url();
    let cluster = Cluster::start_with(2, |b| b.env("REDIS_URL", &url).env("MSG_RATE", 0));
    let mut alice = cluster.servers[0].login("alice");
    alice.create("storm");
    let mut bob = cluster.servers[1].login("bob");
    eventually(&mut bob, "/join storm", Duration::from_secs(5), |l| l == "Joined room: storm");
    bob.wait_for(|l| l == "---");
    alice.send("before");
    assert_eq!(room_lines(&mut bob, "storm", 1), ["[storm] alice: before"]);

    redis.pause_all(true);
    let health = |server: &common::TestServer| common::http_get(server.http.unwrap(), "/api/health");
    for server in &cluster.servers {
        let started = Instant::now();
        loop {
            let (status, body) = health(server);
            if body.contains("\"redis\":false") {
                assert_eq!(status, 200, "{body}");
                assert!(body.contains("\"status\":\"degraded\""), "{body}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "health never reported Redis down: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    alice.send("during the outage");
    assert_eq!(room_lines(&mut alice, "storm", 2), ["[storm] alice: before", "[storm] alice: during the outage"]);

    redis.pause_all(false);
    redis.wait_ok();
    for server in &cluster.servers {
        let started = Instant::now();
        while !health(server).1.contains("\"redis\":true") {
            assert!(started.elapsed() < Duration::from_secs(20), "Redis never came back in health");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    alice.send("after");
    assert_eq!(room_lines(&mut bob, "storm", 2), ["[storm] alice: during the outage", "[storm] alice: after"]);
}
