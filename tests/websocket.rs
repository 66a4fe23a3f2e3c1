//! The WebSocket transport (`GET /api/ws`, `docs/protocol.md`), over real
//! sockets with a real client library (`tungstenite`'s client, not the
//! server's code), against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::Ws;
use common::{Store, TestServer, PATIENCE};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Why a handshake failed: the HTTP status.
fn handshake(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    common::ws::handshake(server.http.unwrap(), query, headers)
}

impl Ws {
    fn open(server: &TestServer, session: &str) -> Ws {
        Ws::connect(server.http.unwrap(), &format!("sessionId={session}"))
    }
}

fn http(server: &TestServer, method: &str, path: &str, body: &Value) -> (u16, Value) {
    common::http_json(server.http.unwrap(), method, path, Some(body))
}

fn connect(server: &TestServer, nick: &str) -> String {
    let (status, body) = http(server, "POST", "/api/connect", &json!({ "nickname": nick }));
    assert_eq!(status, 200, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

fn command(server: &TestServer, session: &str, line: &str) -> String {
    let (status, body) = http(server, "POST", "/api/command", &json!({ "sessionId": session, "command": line }));
    assert_eq!(status, 200, "{line}: {body}");
    body["message"].as_str().unwrap().to_string()
}

fn say(server: &TestServer, session: &str, content: &str) -> i64 {
    let (status, body) = http(server, "POST", "/api/message", &json!({ "sessionId": session, "content": content }));
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_i64().unwrap()
}

fn metric(server: &TestServer, line_start: &str) -> u64 {
    let (_, text) = common::http_get(server.http.unwrap(), "/metrics");
    let line = text.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn unlimited(store: Store) -> TestServer {
    TestServer::builder(store).env("MSG_RATE", 0).start()
}

for_each_store! {
    /// Chat and commands in; every event type out; acks only after commit.
    fn chat_commands_events_and_acks(store) {
        let server = unlimited(store);
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        let mut ws = Ws::open(&server, &alice);
        // In no room yet: the stream says so.
        assert_eq!(ws.expect("connected")["room"], Value::Null);

        // The room change comes first, then the answer to the command.
        ws.send(json!({ "type": "command", "command": "/create general", "ref": "c1" }));
        assert_eq!(ws.expect("connected")["room"], "general");
        let created = ws.expect("ack");
        assert_eq!(created["ref"], "c1");
        assert!(created["message"].as_str().unwrap().contains("general"), "{created}");

        command(&server, &bob, "/join general");
        let joined = ws.wait_for("system");
        assert_eq!(joined["room"], "general");
        assert!(joined["content"].as_str().unwrap().contains("bob joined"), "{joined}");
        assert!(joined["timestamp"].is_string());

        // A message with `ref`: the echo and an ack carrying the committed id.
        ws.send(json!({ "type": "message", "content": "hello", "ref": 7 }));
        let echo = ws.expect("message");
        assert_eq!((echo["user"].as_str(), echo["content"].as_str()), (Some("alice"), Some("hello")));
        assert_eq!(echo["room"], "general");
        let ack = ws.expect("ack");
        assert_eq!(ack["ref"], 7);
        assert_eq!(ack["id"], echo["id"]);
        assert_eq!(ack["room"], "general");
        // Acknowledged means stored: history has it.
        let (_, history) = common::http_get(server.http.unwrap(), "/api/rooms/general/history");
        let history: Value = serde_json::from_str(&history).unwrap();
        assert!(history["data"]["messages"].as_array().unwrap().iter().any(|m| m["id"] == ack["id"]));

        // Someone else's message, a DM, and a refused frame with its ref.
        let id = say(&server, &bob, "hi alice");
        let message = ws.expect("message");
        assert_eq!((message["id"].as_i64(), message["user"].as_str()), (Some(id), Some("bob")));
        command(&server, &bob, "/dm alice psst");
        let dm = ws.expect("dm");
        assert_eq!((dm["from"].as_str(), dm["to"].as_str(), dm["content"].as_str()), (Some("bob"), Some("alice"), Some("psst")));
        let refused = ws.call(json!({ "type": "command", "command": "/join nowhere" }), "c2");
        assert_eq!(refused["type"], "error");
        assert!(refused["error"].as_str().unwrap().contains("does not exist"), "{refused}");
        let refused = ws.call(json!({ "type": "message", "content": "" }), "m2");
        assert_eq!(refused["type"], "error", "{refused}");
        let typed = ws.call(json!({ "type": "typing" }), "t1");
        assert_eq!(typed["type"], "ack", "{typed}");

        // The stream follows the session: a `/join` by HTTP moves it.
        command(&server, &bob, "/create other");
        command(&server, &alice, "/join other");
        assert_eq!(ws.wait_for("connected")["room"], "other");
    }

    /// `?lastEventId=` and the join frame's `lastEventId` replay what was
    /// missed (past the ring buffer too), before live traffic.
    fn resume_with_last_event_id(store) {
        let server = unlimited(store);
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        command(&server, &alice, "/create general");
        command(&server, &bob, "/join general");
        let ids: Vec<i64> = (1..=15).map(|i| say(&server, &bob, &format!("m{i}"))).collect();

        let mut ws = handshake(&server, &format!("sessionId={alice}&lastEventId={}", ids[2]), &[]).unwrap();
        assert_eq!(ws.expect("connected")["room"], "general");
        for i in 4..=15 {
            assert_eq!(ws.expect("message")["content"], format!("m{i}"));
        }
        say(&server, &bob, "live");
        assert_eq!(ws.expect("message")["content"], "live");
        drop(ws);

        let mut ws = Ws::open(&server, &alice);
        ws.expect("connected");
        for _ in 0..10 {
            ws.expect("message"); // the recent history
        }
        // The replay comes first, then the answer to the join.
        ws.send(json!({ "type": "join", "room": "general", "lastEventId": ids[12], "ref": "j" }));
        assert_eq!(ws.expect("connected")["room"], "general");
        for content in ["m14", "m15", "live"] {
            assert_eq!(ws.expect("message")["content"], content);
        }
        let ack = ws.expect("ack");
        assert_eq!((ack["ref"].as_str(), ack["room"].as_str()), (Some("j"), Some("general")));
    }
}

#[test]
fn bad_frames_get_an_error_and_the_connection_stays() {
    let server = unlimited(Store::Sqlite);
    let alice = connect(&server, "alice");
    command(&server, &alice, "/create general");
    let mut ws = Ws::open(&server, &alice);
    ws.expect("connected");
    ws.socket.send(Message::text("{not json")).unwrap();
    assert!(ws.wait_for("error")["error"].as_str().unwrap().contains("malformed JSON"));
    ws.socket.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert!(ws.wait_for("error")["error"].as_str().unwrap().contains("binary"));
    ws.send(json!({ "type": "dance" }));
    assert!(ws.wait_for("error")["error"].as_str().unwrap().contains("unknown frame type"));
    ws.send(json!({ "type": "message" }));
    assert!(ws.wait_for("error")["error"].as_str().unwrap().contains("content"));
    let ack = ws.call(json!({ "type": "message", "content": "still here" }), "x");
    assert_eq!(ack["type"], "ack");
    assert!(ack["id"].as_i64().unwrap() > 0);
}

#[test]
fn an_oversized_frame_closes_with_1009() {
    let server = TestServer::builder(Store::Sqlite).env("MAX_BODY_BYTES", 1024).start();
    let alice = connect(&server, "alice");
    let mut ws = Ws::open(&server, &alice);
    ws.expect("connected");
    ws.send(json!({ "type": "message", "content": "x".repeat(2000) }));
    assert_eq!(ws.expect_closed(PATIENCE), Some(CloseCode::Size));
}

#[test]
fn pings_come_every_interval_and_a_silent_client_is_closed() {
    let server = TestServer::builder(Store::Sqlite).env("SSE_PING_SECS", 1).start();
    let alice = connect(&server, "alice");
    let mut ws = Ws::open(&server, &alice);
    ws.expect("connected");
    // A ping from the server within the interval.
    ws.socket.get_mut().set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    loop {
        match ws.socket.read().unwrap() {
            Message::Ping(_) => break,
            other => assert!(other.is_text(), "{other:?}"),
        }
    }
    // A ping from the client is answered with its payload.
    ws.socket.send(Message::Ping(b"are you there".to_vec().into())).unwrap();
    loop {
        match ws.socket.read().unwrap() {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            _ => continue,
        }
    }
    // A client that answers (tungstenite pongs as it reads) stays open...
    let started = Instant::now();
    ws.socket.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while started.elapsed() < Duration::from_secs(5) {
        match ws.socket.read() {
            Ok(message) => assert!(!message.is_close(), "closed a live client"),
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // ...one that goes silent (no pongs, nothing) is closed after three,
    // with a close frame (code 1008) after the pings it did not answer.
    std::thread::sleep(Duration::from_secs(5));
    let raw = ws.socket.get_mut();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    let _ = raw.read_to_end(&mut bytes);
    let close = bytes.windows(4).any(|w| w[0] == 0x88 && w[2..] == 1008u16.to_be_bytes());
    assert!(close, "no close frame with 1008 in {bytes:?}");
}

#[test]
fn origins_other_than_the_servers_own_or_allowed_get_403() {
    let server = TestServer::builder(Store::Sqlite).env("ALLOWED_ORIGINS", "https://app.example").start();
    let alice = connect(&server, "alice");
    let query = format!("sessionId={alice}");
    assert_eq!(handshake(&server, &query, &[("Origin", "https://evil.example")]).err(), Some(403));
    let own = format!("http://{}", server.http.unwrap());
    drop(handshake(&server, &query, &[("Origin", &own)]).expect("the server's own origin"));
    drop(handshake(&server, &query, &[("Origin", "https://app.example")]).expect("an allowed origin"));
    // Unknown session: 404; plain GET without the upgrade: 426.
    assert_eq!(handshake(&server, &format!("sessionId={}", uuid::Uuid::new_v4()), &[]).err(), Some(404));
    assert_eq!(common::http_get(server.http.unwrap(), &format!("/api/ws?{query}")).0, 426);
}

#[test]
fn a_slow_consumer_is_closed_with_1013_and_counted() {
    let server = TestServer::builder(Store::Sqlite)
        .env("MSG_RATE", 0)
        .env("WRITE_TIMEOUT_SECS", 30)
        .start();
    let slow = connect(&server, "slow");
    command(&server, &slow, "/create general");
    let mut ws = Ws::open(&server, &slow);
    ws.expect("connected");
    assert_eq!(metric(&server, "baby_discord_connections{protocol=\"ws\"}"), 1);

    // A netcat user floods the room; its own echoes are read away.
    let mut nc = TcpStream::connect(server.tcp).unwrap();
    nc.write_all(b"fast\n/join general\n").unwrap();
    let mut drain = nc.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    let line = format!("{}\n", "y".repeat(1800));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server, "baby_discord_dropped_slow_consumers_by_protocol_total{protocol=\"ws\"}") == 0 {
        assert!(Instant::now() < deadline, "the slow WebSocket was never dropped");
        for _ in 0..500 {
            nc.write_all(line.as_bytes()).unwrap_or_else(|e| panic!("{e}; server log:\n{}", server.log()));
        }
    }
    // Once it reads again, it finds the close frame after what was sent.
    assert_eq!(ws.expect_closed(Duration::from_secs(30)), Some(CloseCode::Again));
}

#[test]
fn netcat_sse_and_websocket_users_see_each_other() {
    let server = unlimited(Store::Sqlite);
    let mut nc = server.login("nelly");
    nc.create("general");
    let sam = connect(&server, "sam");
    let wes = connect(&server, "wes");
    command(&server, &wes, "/join general");

    // Sam on SSE, raw.
    let mut sse = TcpStream::connect(server.http.unwrap()).unwrap();
    sse.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(sse, "GET /api/messages/general?sessionId={sam} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut sse_seen = String::new();
    let mut sse_wait = |what: &str| {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        while !sse_seen.contains(what) {
            assert!(Instant::now() < deadline, "SSE never saw {what}: {sse_seen}");
            let n = sse.read(&mut buf).unwrap();
            sse_seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    sse_wait("event: connected");

    let mut ws = Ws::open(&server, &wes);
    assert_eq!(ws.expect("connected")["room"], "general");

    nc.send("from netcat");
    sse_wait("\"content\":\"from netcat\"");
    assert_eq!(ws.wait_for("message")["content"], "from netcat");

    say(&server, &sam, "from sse");
    nc.wait_for(|l| l == "[general] sam: from sse");
    assert_eq!(ws.wait_for("message")["content"], "from sse");

    ws.send(json!({ "type": "message", "content": "from websocket" }));
    nc.wait_for(|l| l == "[general] wes: from websocket");
    sse_wait("\"content\":\"from websocket\"");
}

/// `POST /api/message` with a `clientMsgId`: the status and the body.
fn say_once(server: &TestServer, session: &str, content: &str, client_id: &str) -> (u16, Value) {
    let body = json!({ "sessionId": session, "content": content, "clientMsgId": client_id });
    http(server, "POST", "/api/message", &body)
}

fn history_contents(server: &TestServer, room: &str) -> Vec<String> {
    let (_, body) = common::http_get(server.http.unwrap(), &format!("/api/rooms/{room}/history"));
    let body: Value = serde_json::from_str(&body).unwrap();
    body["data"]["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

mod idempotent {
use super::*;
for_each_store! {
    /// A retry with the same `clientMsgId` (HTTP or WebSocket, also after a
    /// restart) returns the first message's id and posts nothing new.
    fn idempotent_sends_survive_retries_and_restarts(store) {
        let mut server = unlimited(store);
        let alice = connect(&server, "alice");
        command(&server, &alice, "/create general");
        let client_id = uuid::Uuid::new_v4().to_string();
        let (status, first) = say_once(&server, &alice, "once", &client_id);
        assert_eq!(status, 200, "{first}");
        let id = first["data"]["id"].as_i64().unwrap();
        let (status, again) = say_once(&server, &alice, "once", &client_id);
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["data"]["id"].as_i64(), Some(id));
        assert_eq!(again["data"]["createdAt"], first["data"]["createdAt"]);

        // The same id over a WebSocket: acked with the first id, no echo.
        let mut ws = Ws::open(&server, &alice);
        ws.expect("connected");
        for _ in history_contents(&server, "general") {
            ws.expect("message");
        }
        let ack = ws.call(json!({ "type": "message", "content": "once", "clientMsgId": client_id }), "r");
        assert_eq!((ack["type"].as_str(), ack["id"].as_i64()), (Some("ack"), Some(id)), "{ack}");
        let bad = ws.call(json!({ "type": "message", "content": "x", "clientMsgId": "not-a-uuid" }), "b");
        assert_eq!(bad["type"], "error");
        let (status, _) = say_once(&server, &alice, "x", "not-a-uuid");
        assert_eq!(status, 400);
        // A new id over the WebSocket posts once too.
        let ws_id = uuid::Uuid::new_v4().to_string();
        ws.send(json!({ "type": "message", "content": "via ws", "clientMsgId": ws_id, "ref": "w1" }));
        assert_eq!(ws.expect("message")["content"], "via ws");
        let ack = ws.expect("ack");
        // The retry: its ack, and no second echo before it.
        ws.send(json!({ "type": "message", "content": "via ws", "clientMsgId": ws_id, "ref": "w2" }));
        let again = ws.expect("ack");
        assert_eq!((again["ref"].as_str(), &again["id"]), (Some("w2"), &ack["id"]));
        drop(ws);
        assert_eq!(history_contents(&server, "general"), ["once", "via ws"]);

        // After a restart (the guest session is gone: connect again).
        server.terminate();
        server.restart();
        let alice = connect(&server, "alice");
        command(&server, &alice, "/join general");
        let (status, after) = say_once(&server, &alice, "once", &client_id);
        assert_eq!(status, 200, "{after}");
        assert_eq!(after["data"]["id"].as_i64(), Some(id));
        assert_eq!(history_contents(&server, "general"), ["once", "via ws"]);
    }
}
}

/// Two instances on one PostgreSQL database: a retry on the other instance
/// (concurrent ones too) posts nothing new.
#[test]
fn idempotent_sends_hold_across_instances() {
    let cluster = common::Cluster::start_with(2, |b| b.env("MSG_RATE", 0));
    let (one, two) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = connect(one, "alice");
    command(one, &alice, "/create general");
    let bob = connect(two, "bob");
    let deadline = Instant::now() + PATIENCE;
    while http(two, "POST", "/api/command", &json!({ "sessionId": bob, "command": "/join general" })).0 != 200 {
        assert!(Instant::now() < deadline, "the room never reached instance 2");
        std::thread::sleep(Duration::from_millis(100));
    }
    for round in 0..5 {
        let client_id = uuid::Uuid::new_v4().to_string();
        let ids: Vec<i64> = std::thread::scope(|scope| {
            let a = scope.spawn(|| say_once(one, &alice, &format!("r{round}"), &client_id));
            let b = scope.spawn(|| say_once(two, &bob, &format!("r{round}"), &client_id));
            [a.join().unwrap(), b.join().unwrap()]
                .iter()
                .map(|(status, body)| {
                    assert_eq!(*status, 200, "{body}");
                    body["data"]["id"].as_i64().unwrap()
                })
                .collect()
        });
        assert_eq!(ids[0], ids[1], "round {round}");
    }
    assert_eq!(history_contents(one, "general"), (0..5).map(|r| format!("r{r}")).collect::<Vec<_>>());
}

/// A WebSocket costs one thread, its reader: tiny_http's connection thread
/// lets go of an upgraded connection.
#[test]
fn an_open_websocket_costs_one_thread() {
    let server = unlimited(Store::Sqlite);
    let threads = || std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap().count();
    let before = threads();
    let sockets: Vec<Ws> = (0..20)
        .map(|i| {
            let session = connect(&server, &format!("user{i}"));
            let mut ws = Ws::open(&server, &session);
            ws.expect("connected");
            ws
        })
        .collect();
    // tiny_http's idle connection threads end 5 s after their last request.
    let deadline = Instant::now() + Duration::from_secs(15);
    // A few threads of slack for tiny_http's pool under a loaded machine;
    // two threads per WebSocket would be 20 over.
    while threads() > before + sockets.len() + 6 {
        assert!(Instant::now() < deadline, "{} threads for {} WebSockets (from {before})", threads(), sockets.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A WebSocket costs the server one descriptor, as an event stream does:
/// the upgraded connection's reader shares the socket with its writer
/// instead of holding a duplicate (two per WebSocket would have put 10,000
/// WebSockets over the 20,000 descriptors a process may open).
#[test]
fn an_open_websocket_costs_one_descriptor() {
    let server = unlimited(Store::Sqlite);
    let descriptors = || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
    let sessions: Vec<String> = (0..20).map(|i| connect(&server, &format!("user{i}"))).collect();
    let before = descriptors();
    let sockets: Vec<Ws> = sessions
        .iter()
        .map(|session| {
            let mut ws = Ws::open(&server, session);
            ws.expect("connected");
            ws
        })
        .collect();
    // Slack for the connections `connect` used, which close as their
    // threads notice; two descriptors per WebSocket would be 20 over.
    let deadline = Instant::now() + Duration::from_secs(15);
    while descriptors() > before + sockets.len() + 5 {
        assert!(
            Instant::now() < deadline,
            "{} descriptors for {} WebSockets (from {before})",
            descriptors(),
            sockets.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Frames a client sends in the same packet as its upgrade request are
/// read, not lost with the buffer that read the request head.
#[test]
fn frames_sent_right_behind_the_upgrade_request_are_read() {
    let server = unlimited(Store::Sqlite);
    let session = connect(&server, "early");
    command(&server, &session, "/create general");
    let addr = server.http.unwrap();

    // The frames are made by tungstenite's client side (masked, as a
    // client must), written into memory first.
    let mut framer = WebSocket::from_raw_socket(std::io::Cursor::new(Vec::new()), tungstenite::protocol::Role::Client, None);
    for (n, content) in ["first", "second"].iter().enumerate() {
        let frame = json!({ "type": "message", "content": content, "ref": n });
        framer.send(Message::text(frame.to_string())).unwrap();
    }
    let frames = framer.get_ref().get_ref().clone();
    let mut packet = format!(
        "GET /api/ws?sessionId={session} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    packet.extend_from_slice(&frames);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(&packet).unwrap();

    // The 101 head, byte by byte so that no frame is read past it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let mut ws = Ws { socket: WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None) };
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let frame = ws.next();
        if frame["type"] == "ack" {
            acked.push(frame["ref"].as_i64().unwrap());
        }
    }
    assert_eq!(acked, vec![0, 1]);
    assert_eq!(history_contents(&server, "general"), vec!["first", "second"]);
}

/// Private rooms (issue 11) hold over a WebSocket too: someone else's
/// private room cannot be attached to, as if it did not exist.
#[test]
fn a_private_room_cannot_be_attached_to_by_others() {
    let server = unlimited(Store::Sqlite);
    let (status, body) =
        http(&server, "POST", "/api/register", &json!({ "nickname": "olivia", "password": "correct horse battery" }));
    assert_eq!(status, 201, "{body}");
    let owner = body["data"]["sessionId"].as_str().unwrap().to_string();
    command(&server, &owner, "/create secret private");
    let outsider = connect(&server, "mallory");
    assert_eq!(handshake(&server, &format!("sessionId={outsider}&room=secret"), &[]).err(), Some(404));
    assert!(handshake(&server, &format!("sessionId={owner}&room=secret"), &[]).is_ok());
}
