//! Presence (online, away, offline), typing signals, `/me` actions and the
//! IRC aliases, over real sockets (netcat-style TCP, SSE, WebSocket)
//! against the real binary; across three instances on real Redis (single
//! and cluster) too.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::tcp::eventually;
use common::ws::Ws;
use common::{Client, Cluster, Redis, Store, TestServer, PATIENCE};
use serde_json::{json, Value};

for_each_redis!(presence_typing_and_actions_reach_members_on_every_instance);

// ------------------------------------------------------------- clients --

/// One HTTP request over a fresh connection: the status and the JSON body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    common::http_json(addr, method, path, Some(body))
}

fn connect(addr: SocketAddr, nick: &str) -> String {
    let (status, body) = http(addr, "POST", "/api/connect", &json!({ "nickname": nick }));
    assert_eq!(status, 200, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

fn command(addr: SocketAddr, session: &str, line: &str) -> String {
    let (status, body) = http(addr, "POST", "/api/command", &json!({ "sessionId": session, "command": line }));
    assert_eq!(status, 200, "{line}: {body}");
    body["message"].as_str().unwrap().to_string()
}

fn post_ok(addr: SocketAddr, path: &str, body: Value) -> Value {
    let (status, answer) = http(addr, "POST", path, &body);
    assert_eq!(status, 200, "{path} {body}: {answer}");
    answer
}

fn members(addr: SocketAddr, room: &str) -> Value {
    let (status, body) = http(addr, "GET", &format!("/api/rooms/{room}/members"), &Value::Null);
    assert_eq!(status, 200, "{body}");
    body["data"]["members"].clone()
}

/// An open SSE stream (`Connection: close`: plain, not chunked).
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    /// Opens the stream; `None` if it is refused (the room is not known there yet).
    fn try_open(addr: SocketAddr, room: &str, session: &str) -> Option<Sse> {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET /api/messages/{room}?sessionId={session} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        if status.split_whitespace().nth(1) != Some("200") {
            return None;
        }
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Some(Sse { reader })
    }

    fn open(addr: SocketAddr, room: &str, session: &str) -> Sse {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(sse) = Sse::try_open(addr, room, session) {
                return sse;
            }
            assert!(Instant::now() < deadline, "no stream to {room}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The next event (comments skipped): its name and data.
    fn next(&mut self) -> (String, Value) {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("an event in time");
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !event.is_empty() {
                    return (event, serde_json::from_str(&data).unwrap());
                }
            } else if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(text) = line.strip_prefix("data: ") {
                data = text.to_string();
            }
        }
    }

    /// Events until one named `kind`; its data.
    fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let (event, data) = self.next();
            if event == kind {
                return data;
            }
        }
    }

    /// The next event that is not a `[system]` line.
    fn next_not_system(&mut self) -> (String, Value) {
        loop {
            let (event, data) = self.next();
            if event != "system" {
                return (event, data);
            }
        }
    }
}

impl Ws {
    /// Opens a WebSocket joined to `room`, retrying while the room is not known there yet.
    fn joined(addr: SocketAddr, room: &str, session: &str) -> Ws {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut ws = Ws::connect(addr, &format!("sessionId={session}"));
            ws.expect("connected");
            let answer = ws.call(json!({ "type": "join", "room": room }), "join");
            if answer["type"] == "ack" {
                return ws;
            }
            assert!(Instant::now() < deadline, "cannot join {room}: {answer}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sends a command and reads up to its answer (the line `pred` accepts);
/// every line before it must be a room line or a `[system]` line: no
/// presence or typing ever shows on TCP.
fn answer_after_room_traffic(client: &mut Client, command: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut lines = client.ask(command, pred);
    let answer = lines.pop().unwrap();
    for line in lines {
        assert!(line.starts_with("[system] ") || line.starts_with("[general] "), "unexpected TCP line {line:?}");
    }
    answer
}

/// The next `presence` event about `user` on a stream.
fn sse_presence(sse: &mut Sse, user: &str) -> Value {
    loop {
        let data = sse.wait_for("presence");
        if data["user"] == user {
            return data;
        }
    }
}

fn ws_presence(ws: &mut Ws, user: &str) -> Value {
    loop {
        let frame = ws.wait_for("presence");
        if frame["user"] == user {
            return frame;
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what} did not happen within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --------------------------------------------------------------- tests --

#[test]
fn irc_aliases_are_the_commands_they_stand_for() {
    let server = TestServer::start(Store::Sqlite);
    let mut alice = server.login("alice");
    alice.send("/create #general");
    alice.expect("Created and joined room: general");
    alice.wait_for(|l| l == "---");
    let mut bob = server.login("bob");
    bob.send("/join #General");
    bob.expect("Joined room: general");
    bob.wait_for(|l| l == "---");
    alice.expect("[system] bob joined general");

    bob.send("/who");
    bob.expect("Users in general (2): alice, bob");
    bob.send("/msg alice psst");
    bob.expect("[DM to alice] psst");
    alice.expect("[DM from bob] psst");
    bob.send("/msg alice");
    bob.expect("Error: usage: /msg <user> <message>");
    bob.send("/part");
    bob.expect("Left room: general");
    alice.expect("[system] bob left general");
    bob.send("/who");
    bob.expect("Online users (2): alice, bob");

    let help = alice.ask("/help", |l| l.trim_start().starts_with("/who"));
    for usage in ["/msg <user> <message>", "/part", "/who", "/me <action>", "/away [message]", "/back"] {
        assert!(help.iter().any(|l| l.trim_start().starts_with(usage)), "{usage} missing from /help: {help:?}");
    }
}

for_each_store! {
    /// `/me` is a message with the action flag: shown as `* nick text` on
    /// TCP, `"action": true` on SSE, WebSocket and in history, from TCP,
    /// `POST /api/message`, `POST /api/command` and WebSocket frames, and
    /// kept through the store (history on join after a restart).
    fn actions_are_flagged_everywhere_and_stored(store) {
        let mut server = TestServer::builder(store).env("MSG_RATE", 0).start();
        let http_addr = server.http.unwrap();
        let mut alice = server.login("alice");
        alice.create("general");
        let carol = connect(http_addr, "carol");
        let mut sse = Sse::open(http_addr, "general", &carol);
        sse.wait_for("connected");
        let dave = connect(http_addr, "dave");
        let mut ws = Ws::joined(http_addr, "general", &dave);

        alice.send("/me waves");
        alice.wait_for(|l| l == "[general] * alice waves");
        let message = sse.wait_for("message");
        assert_eq!((message["user"].as_str(), message["content"].as_str(), &message["action"]), (Some("alice"), Some("waves"), &json!(true)));
        let frame = ws.wait_for("message");
        assert_eq!((frame["content"].as_str(), &frame["action"]), (Some("waves"), &json!(true)));

        // Plain text stays plain, and says so.
        alice.send("hello");
        alice.wait_for(|l| l == "[general] alice: hello");
        assert_eq!(sse.wait_for("message")["action"], json!(false));
        assert_eq!(ws.wait_for("message")["action"], json!(false));

        // Over HTTP: a message with "action": true, and /me as a command.
        let sent = post_ok(http_addr, "/api/message", json!({ "sessionId": carol, "content": "dances", "action": true }));
        assert!(sent["data"]["id"].as_i64().unwrap() > 0);
        alice.wait_for(|l| l == "[general] * carol dances");
        assert_eq!(command(http_addr, &carol, "/me bows"), "");
        alice.wait_for(|l| l == "[general] * carol bows");
        let (status, refused) = http(http_addr, "POST", "/api/message", &json!({ "sessionId": carol, "content": "x", "action": "yes" }));
        assert_eq!(status, 400, "{refused}");
        let (status, _) = http(http_addr, "POST", "/api/command", &json!({ "sessionId": carol, "command": "/me" }));
        assert_eq!(status, 400);

        // Over WebSocket: a command frame and a message frame.
        let answer = ws.call(json!({ "type": "command", "command": "/me nods" }), "c");
        assert_eq!(answer["type"], "ack", "{answer}");
        alice.wait_for(|l| l == "[general] * dave nods");
        let answer = ws.call(json!({ "type": "message", "content": "claps", "action": true }), "m");
        assert_eq!(answer["type"], "ack", "{answer}");
        alice.wait_for(|l| l == "[general] * dave claps");

        // History (store) carries the flag.
        let (_, history) = http(http_addr, "GET", "/api/rooms/general/history", &Value::Null);
        let items: Vec<(String, bool)> = history["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["content"].as_str().unwrap().to_string(), m["action"].as_bool().unwrap()))
            .collect();
        let expected = [("waves", true), ("hello", false), ("dances", true), ("bows", true), ("nods", true), ("claps", true)];
        assert_eq!(items, expected.map(|(c, a)| (c.to_string(), a)));

        // The ring buffer (history on join), and after a restart the store.
        let mut erin = server.login("erin");
        let joined = erin.ask("/join general", |l| l == "---");
        assert!(joined.contains(&"[general] * alice waves".to_string()), "{joined:?}");
        drop((alice, erin, sse, ws));
        server.terminate();
        server.restart();
        let mut frank = server.login("frank");
        let joined = frank.ask("/join general", |l| l == "---");
        assert!(joined.contains(&"[general] * alice waves".to_string()), "{joined:?}");
        assert!(joined.contains(&"[general] alice: hello".to_string()), "{joined:?}");
        let frank_http = connect(server.http.unwrap(), "frankweb");
        let mut sse = Sse::open(server.http.unwrap(), "general", &frank_http);
        sse.wait_for("connected");
        let first = sse.wait_for("message");
        assert_eq!((first["content"].as_str(), &first["action"]), (Some("waves"), &json!(true)));
    }
}

/// `/away`, `/back`, and the status in `/list` (both forms) and the
/// members endpoint; TCP users see no presence lines.
#[test]
fn away_and_back_show_in_list_and_members() {
    let server = TestServer::start(Store::Sqlite);
    let http_addr = server.http.unwrap();
    let mut alice = server.login("alice");
    alice.create("general");
    let mut bob = server.login("bob");
    bob.join("general");
    alice.expect("[system] bob joined general");

    bob.send("/away out for lunch");
    bob.expect("You are marked as away.");
    alice.send("/list");
    alice.expect("Users in general (2): alice, bob (away: out for lunch)");
    assert_eq!(
        members(http_addr, "general"),
        json!([
            { "nickname": "alice", "status": "online", "message": null },
            { "nickname": "bob", "status": "away", "message": "out for lunch" },
        ])
    );
    bob.send("/away");
    bob.expect("You are marked as away.");
    alice.send("/who");
    alice.expect("Users in general (2): alice, bob (away)");
    alice.send("/leave");
    alice.expect("Left room: general");
    alice.send("/list");
    alice.expect("Online users (2): alice, bob (away)");
    bob.expect("[system] alice left general");
    bob.send("/back");
    bob.expect("You are back.");
    alice.send("/list");
    alice.expect("Online users (2): alice, bob");
    assert_eq!(members(http_addr, "general")[0], json!({ "nickname": "bob", "status": "online", "message": null }));

    // Bad input: an away message over MAX_AWAY_CHARS, a status that is not one.
    bob.send(&format!("/away {}", "x".repeat(201)));
    assert!(bob.line().starts_with("Error: "));
    let session = connect(http_addr, "carol");
    let (status, body) = http(http_addr, "POST", "/api/presence", &json!({ "sessionId": session, "status": "busy" }));
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(http_addr, "POST", "/api/presence", &json!({ "sessionId": session }));
    assert_eq!(status, 400);
    post_ok(http_addr, "/api/presence", json!({ "sessionId": session, "status": "away", "message": "brb" }));
    alice.send("/list");
    alice.expect("Online users (3): alice, bob, carol (away: brb)");
}

/// `presence` events reach the members of the rooms the user is in and
/// the user's own other sessions, on SSE and WebSocket; an account has one
/// status over all its sessions and goes offline with the last one.
#[test]
fn presence_events_reach_room_members_and_the_users_other_sessions() {
    let server = TestServer::start(Store::Sqlite);
    let addr = server.http.unwrap();
    let mut tcp = server.login("tom");
    tcp.create("general");
    let carol = connect(addr, "carol");
    let mut sse = Sse::open(addr, "general", &carol);
    sse.wait_for("connected");
    let dave = connect(addr, "dave");
    let mut ws = Ws::joined(addr, "general", &dave);

    // A guest in the room goes away, comes back, and leaves for good.
    let bob = connect(addr, "bob");
    command(addr, &bob, "/join general");
    post_ok(addr, "/api/presence", json!({ "sessionId": bob, "status": "away", "message": "lunch" }));
    assert_eq!(sse.wait_for("presence"), json!({ "user": "bob", "status": "away", "message": "lunch" }));
    let frame = ws.wait_for("presence");
    assert_eq!((frame["user"].as_str(), frame["status"].as_str(), frame["message"].as_str()), (Some("bob"), Some("away"), Some("lunch")));
    assert_eq!(command(addr, &bob, "/back"), "You are back.");
    assert_eq!(sse.wait_for("presence"), json!({ "user": "bob", "status": "online", "message": null }));
    assert_eq!(ws.wait_for("presence")["status"], "online");
    post_ok(addr, "/api/disconnect", json!({ "sessionId": bob }));
    assert_eq!(sse.wait_for("presence"), json!({ "user": "bob", "status": "offline", "message": null }));
    assert_eq!(ws.wait_for("presence")["status"], "offline");

    // An account logged in twice: one status, offline with the last session.
    let (status, body) = http(addr, "POST", "/api/register", &json!({ "nickname": "erin", "password": "erin password" }));
    assert_eq!(status, 201, "{body}");
    let first = body["data"]["sessionId"].as_str().unwrap().to_string();
    command(addr, &first, "/join general");
    let second = post_ok(addr, "/api/connect", json!({ "nickname": "erin", "password": "erin password" }))["data"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut own = Ws::connect(addr, &format!("sessionId={second}"));
    own.expect("connected");
    assert_eq!(command(addr, &first, "/away"), "You are marked as away.");
    assert_eq!(own.wait_for("presence"), json!({ "type": "presence", "user": "erin", "status": "away", "message": null }));
    assert_eq!(sse.wait_for("presence"), json!({ "user": "erin", "status": "away", "message": null }));
    // The second session is away too, and erin is one member.
    let list = command(addr, &second, "/list");
    assert!(list.ends_with(", erin (away)") || list.contains("erin (away),"), "{list}");
    assert_eq!(list.matches("erin").count(), 1, "{list}");
    let list = answer_after_room_traffic(&mut tcp, "/list", |l| l.starts_with("Users in"));
    assert_eq!(list, "Users in general (4): carol, dave, erin (away), tom");
    // A third login takes the account's status.
    let third = post_ok(addr, "/api/connect", json!({ "nickname": "erin", "password": "erin password" }))["data"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    command(addr, &third, "/join general");
    post_ok(addr, "/api/disconnect", json!({ "sessionId": first }));
    post_ok(addr, "/api/disconnect", json!({ "sessionId": second }));
    assert_eq!(members(addr, "general")[2], json!({ "nickname": "erin", "status": "away", "message": null }));
    post_ok(addr, "/api/presence", json!({ "sessionId": third, "status": "online" }));
    assert_eq!(sse.wait_for("presence"), json!({ "user": "erin", "status": "online", "message": null }));
    post_ok(addr, "/api/disconnect", json!({ "sessionId": third }));
    // Only now is erin offline (no offline event came for the first two).
    assert_eq!(sse.wait_for("presence"), json!({ "user": "erin", "status": "offline", "message": null }));

    // Netcat users saw none of it: their next line is their own answer.
    let list = answer_after_room_traffic(&mut tcp, "/list", |l| l.starts_with("Users in"));
    assert_eq!(list, "Users in general (3): carol, dave, tom");
}

/// Typing signals reach the room's other members on SSE and WebSocket,
/// never TCP users and never the typer; at most one per interval per
/// session is passed on (the rest answered, not forwarded).
#[test]
fn typing_reaches_other_members_throttled_and_never_tcp() {
    let server = TestServer::builder(Store::Sqlite).env("TYPING_INTERVAL_MS", 3000).env("MSG_RATE", 0).start();
    let addr = server.http.unwrap();
    let mut tom = server.login("tom");
    tom.create("general");
    let alice = connect(addr, "alice");
    let mut sse = Sse::open(addr, "general", &alice);
    sse.wait_for("connected");
    let bob = connect(addr, "bob");
    let mut ws = Ws::joined(addr, "general", &bob);
    let carol = connect(addr, "carol");
    let mut own = Sse::open(addr, "general", &carol);
    own.wait_for("connected");

    // Not in a room: refused.
    let nowhere = connect(addr, "nowhere");
    let (status, body) = http(addr, "POST", "/api/typing", &json!({ "sessionId": nowhere }));
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(addr, "POST", "/api/typing", &json!({}));
    assert_eq!(status, 400);

    assert_eq!(post_ok(addr, "/api/typing", json!({ "sessionId": carol })), json!({ "success": true }));
    let started = Instant::now();
    assert_eq!(sse.next_not_system(), ("typing".to_string(), json!({ "room": "general", "user": "carol" })));
    assert_eq!(ws.next_not_system(), json!({ "type": "typing", "room": "general", "user": "carol" }));
    // Again at once: answered, not passed on (the next thing anyone sees is the message).
    assert_eq!(post_ok(addr, "/api/typing", json!({ "sessionId": carol })), json!({ "success": true }));
    post_ok(addr, "/api/message", json!({ "sessionId": carol, "content": "hi" }));
    assert_eq!(sse.next_not_system().1["content"], "hi");
    assert_eq!(ws.next_not_system()["content"], "hi");
    // The typer saw no typing event of its own; the netcat user none at all.
    let (event, data) = own.next_not_system();
    assert_eq!((event.as_str(), data["content"].as_str()), ("message", Some("hi")));
    let list = answer_after_room_traffic(&mut tom, "/who", |l| l.starts_with("Users in"));
    assert_eq!(list, "Users in general (4): alice, bob, carol, tom");

    // Once the interval has passed, the next signal goes through.
    wait_until("a second typing signal passed on", || {
        post_ok(addr, "/api/typing", json!({ "sessionId": carol }));
        post_ok(addr, "/api/message", json!({ "sessionId": carol, "content": "probe" }));
        let (event, _) = sse.next_not_system();
        if event == "message" {
            return false;
        }
        assert_eq!(event, "typing");
        assert_eq!(sse.next_not_system().1["content"], "probe");
        true
    });
    assert!(started.elapsed() >= Duration::from_millis(3000), "passed on after {:?}", started.elapsed());

    // A WebSocket typing frame (no answer without `ref`; an ack with one).
    ws.send(json!({ "type": "typing" }));
    assert_eq!(sse.wait_for("typing"), json!({ "room": "general", "user": "bob" }));
    let answer = ws.call(json!({ "type": "typing" }), "t");
    assert_eq!(answer, json!({ "type": "ack", "ref": "t" }));
}

/// Three instances: `/me`, typing and presence reach members on the
/// others (SSE, WebSocket and TCP there), and `/list` and the members
/// endpoint show the status everywhere.
fn presence_typing_and_actions_reach_members_on_every_instance(redis: Redis) {
    let cluster = Cluster::start_on(redis, 3, |b| b.env("MSG_RATE", 0));
    let [one, two, three] = [&cluster.servers[0], &cluster.servers[1], &cluster.servers[2]];
    let mut alice = one.login("alice");
    alice.create("general");
    // The instances have heard of the room and of each other's users
    // before the others log in.
    let mut probes: Vec<Client> = [two, three].iter().map(|server| server.login(&format!("probe{}", server.tcp.port()))).collect();
    for probe in &mut probes {
        eventually(probe, "/rooms", PATIENCE, |l| l == "Rooms (1):");
        probe.line();
    }
    for probe in &mut probes {
        eventually(probe, "/list", PATIENCE, |l| l.starts_with("Online users (3): alice, probe"));
    }
    drop(probes);
    let bob = connect(two.http.unwrap(), "bob");
    let mut sse = Sse::open(two.http.unwrap(), "general", &bob);
    sse.wait_for("connected");
    let carol = connect(three.http.unwrap(), "carol");
    let mut ws = Ws::joined(three.http.unwrap(), "general", &carol);
    let mut dan = three.login("dan");
    eventually(&mut dan, "/join general", PATIENCE, |l| l == "Joined room: general");
    dan.wait_for(|l| l == "---");
    // Everyone is seen everywhere before the checks start.
    eventually(&mut alice, "/list", PATIENCE, |l| l == "Users in general (4): alice, bob, carol, dan");
    eventually(&mut dan, "/list", PATIENCE, |l| l == "Users in general (4): alice, bob, carol, dan");

    // An action from instance 1.
    alice.send("/me waves");
    let message = sse.wait_for("message");
    assert_eq!((message["content"].as_str(), &message["action"]), (Some("waves"), &json!(true)));
    let frame = ws.wait_for("message");
    assert_eq!((frame["content"].as_str(), &frame["action"]), (Some("waves"), &json!(true)));
    dan.wait_for(|l| l == "[general] * alice waves");

    // Typing on instance 3 reaches the SSE client on instance 2, not the typer nor TCP.
    post_ok(three.http.unwrap(), "/api/typing", json!({ "sessionId": carol }));
    assert_eq!(sse.next_not_system(), ("typing".to_string(), json!({ "room": "general", "user": "carol" })));
    // Within the interval: answered, not passed on.
    ws.send(json!({ "type": "typing" }));
    post_ok(two.http.unwrap(), "/api/typing", json!({ "sessionId": bob }));
    assert_eq!(ws.next_not_system(), json!({ "type": "typing", "room": "general", "user": "bob" }));
    alice.send("after typing");
    dan.wait_for(|l| l == "[general] alice: after typing");
    assert_eq!(ws.next_not_system()["content"], "after typing");
    assert_eq!(sse.next_not_system().1["content"], "after typing");

    // Presence from instance 2 reaches instance 3 (WebSocket) and every /list.
    post_ok(two.http.unwrap(), "/api/presence", json!({ "sessionId": bob, "status": "away", "message": "lunch" }));
    assert_eq!(ws_presence(&mut ws, "bob"), json!({ "type": "presence", "user": "bob", "status": "away", "message": "lunch" }));
    eventually(&mut dan, "/list", PATIENCE, |l| l == "Users in general (4): alice, bob (away: lunch), carol, dan");
    eventually(&mut alice, "/who", PATIENCE, |l| l == "Users in general (4): alice, bob (away: lunch), carol, dan");
    let listed = members(three.http.unwrap(), "general");
    assert_eq!(listed[1], json!({ "nickname": "bob", "status": "away", "message": "lunch" }));
    // Away from instance 1 (TCP) reaches the SSE client on instance 2.
    alice.send("/away");
    alice.wait_for(|l| l == "You are marked as away.");
    assert_eq!(sse_presence(&mut sse, "alice"), json!({ "user": "alice", "status": "away", "message": null }));
    alice.send("/leave");
    alice.wait_for(|l| l == "Left room: general");
    eventually(&mut dan, "/list", PATIENCE, |l| l == "Users in general (3): bob (away: lunch), carol, dan");
    dan.send("/leave");
    dan.wait_for(|l| l == "Left room: general");
    eventually(&mut dan, "/list", PATIENCE, |l| l == "Online users (4): alice (away), bob (away: lunch), carol, dan");

    // Bob leaves for good: offline on instance 3.
    post_ok(two.http.unwrap(), "/api/disconnect", json!({ "sessionId": bob }));
    assert_eq!(ws_presence(&mut ws, "bob"), json!({ "type": "presence", "user": "bob", "status": "offline", "message": null }));
    wait_until("bob gone from the members on instance 1", || {
        members(one.http.unwrap(), "general").as_array().unwrap().iter().all(|m| m["nickname"] != "bob")
    });
}
