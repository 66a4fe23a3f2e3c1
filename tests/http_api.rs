//! The HTTP API and SSE streams (`docs/protocol.md`): answers, guarantees
//! and limits, over real sockets with
//! hand-written HTTP/1.1, against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{Store, TestServer, PATIENCE};
use serde_json::{json, Value};
use web::{get, post, raw, Sse};

/// How soon a live event must arrive.
const PROMPTLY: Duration = Duration::from_secs(1);

/// A logged-in HTTP user: its session id.
fn connect(server: &TestServer, nick: &str) -> String {
    let r = post(server, "/api/connect", &json!({ "nickname": nick }));
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"];
    assert_eq!(data["nickname"], nick);
    assert!(data["userId"].as_i64().unwrap() > 0);
    data["sessionId"].as_str().unwrap().to_string()
}

fn command(server: &TestServer, session: &str, command: &str) -> web::Response {
    post(server, "/api/command", &json!({ "sessionId": session, "command": command }))
}

/// Runs a command that must succeed; returns its text.
fn ok_command(server: &TestServer, session: &str, line: &str) -> String {
    let r = command(server, session, line);
    assert_eq!(r.status, 200, "{line}: {}", r.text());
    assert_eq!(r.json()["success"], true);
    r.json()["message"].as_str().unwrap().to_string()
}

/// Sends a message that must be stored; returns its id.
fn say(server: &TestServer, session: &str, content: &str) -> i64 {
    let r = post(server, "/api/message", &json!({ "sessionId": session, "content": content }));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]["id"].as_i64().unwrap()
}

fn sse_gauge(server: &TestServer) -> u64 {
    let metrics = get(server, "/metrics").text();
    let line = metrics.lines().find(|l| l.starts_with("baby_discord_connections{protocol=\"sse\"}")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn threads(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap().count()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sqlite() -> TestServer {
    TestServer::start(Store::Sqlite)
}

/// A server without the message rate limit, for tests that send many.
fn unlimited(store: Store) -> TestServer {
    TestServer::builder(store).env("MSG_RATE", 0).start()
}

#[test]
fn every_endpoint_answers_with_its_json_shape() {
    let server = sqlite();
    let alice = connect(&server, "alice");

    let created = ok_command(&server, &alice, "/create general");
    assert_eq!(created, "Created and joined room: general\n--- Recent Messages ---\nNo recent messages\n---");

    let r = post(&server, "/api/message", &json!({ "sessionId": alice, "content": "Hello!", "room": "general" }));
    assert_eq!(r.status, 200);
    let data = &r.json()["data"];
    assert!(data["id"].as_i64().unwrap() > 0);
    assert_eq!(data["room"], "general");
    assert!(data["createdAt"].as_str().unwrap().ends_with('Z'), "RFC 3339: {data}");

    let r = get(&server, "/api/rooms");
    assert_eq!(r.status, 200);
    let rooms = &r.json()["data"]["rooms"];
    assert_eq!(rooms[0]["name"], "general");
    assert_eq!(rooms[0]["memberCount"], 1);
    assert!(rooms[0]["createdAt"].is_string());

    let r = get(&server, "/api/rooms/General/members");
    assert_eq!(
        r.json(),
        json!({ "success": true, "data": { "room": "general", "members": [{ "nickname": "alice", "status": "online", "message": null }] } })
    );

    let r = get(&server, "/api/rooms/general/history");
    let messages = &r.json()["data"]["messages"];
    assert_eq!(messages.as_array().unwrap().len(), 1);
    let m = &messages[0];
    assert_eq!((m["content"].as_str(), m["nickname"].as_str()), (Some("Hello!"), Some("alice")));
    for field in ["id", "roomId", "userId", "createdAt"] {
        assert!(!m[field].is_null(), "history message lacks {field}: {m}");
    }

    // The text a TCP user sees for the same commands.
    let mut bob = server.login("bob");
    let tcp_help = bob.ask("/help", |l| l.contains("/dm")).join("\n");
    assert_eq!(ok_command(&server, &alice, "/help"), tcp_help);
    assert_eq!(ok_command(&server, &alice, "/list"), "Users in general (1): alice");
    assert_eq!(ok_command(&server, &alice, "/rooms"), "Rooms (1):\n  general (1 member)");

    let r = get(&server, "/api/health");
    assert_eq!(r.status, 200);
    let health = r.json();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["db"], true);
    assert!(health["redis"].is_null());
    assert_eq!(health["instanceId"], "1");
    assert!(health["connections"].as_u64().unwrap() >= 1, "the TCP client counts: {health}");
    assert!(health["uptime"].is_u64());

    let r = get(&server, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for needle in [
        "baby_discord_connections{protocol=\"tcp\"} 1",
        "baby_discord_connections{protocol=\"sse\"} 0",
        "baby_discord_messages_total 1",
        "baby_discord_delivery_latency_seconds_bucket",
        "baby_discord_store_batch_size_bucket",
        "baby_discord_http_requests_total{class=\"2xx\"}",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }

    for (path, file, kind) in [
        ("/", "index.html", "text/html"),
        ("/index.html", "index.html", "text/html"),
        ("/style.css", "style.css", "text/css"),
        ("/app.js", "app.js", "application/javascript"),
    ] {
        let r = get(&server, path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("Content-Type").unwrap().starts_with(kind), "{path}");
        let on_disk = std::fs::read(format!("{}/www/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(r.body == on_disk, "{path} is not www/{file}");
    }

    let r = post(&server, "/api/disconnect", &json!({ "sessionId": alice }));
    assert_eq!(r.json(), json!({ "success": true }));
    bob.send("/list");
    bob.expect("Online users (1): bob");
    // The nickname is free again.
    connect(&server, "alice");
}

/// Asserts a JSON refusal: status, `success: false`, and an `error` that
/// contains `reason`.
fn refused(r: &web::Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(reason), "expected {reason:?} in {error:?}");
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");

    let json_post = |path: &str, body: &[u8]| raw(&server, "POST", path, &[("Content-Type", "application/json")], body);
    refused(&json_post("/api/connect", b"{\"nickname\":"), 400, "malformed JSON");
    refused(&json_post("/api/connect", b"{}"), 400, "missing field 'nickname'");
    refused(&json_post("/api/connect", b"{\"nickname\":5}"), 400, "field 'nickname' must be a string");
    refused(&json_post("/api/connect", b"[1]"), 400, "JSON object");
    refused(&json_post("/api/connect", b""), 400, "empty");
    refused(&json_post("/api/connect", b"{\"nickname\":\"\xff\xfe\"}"), 400, "UTF-8");
    refused(
        &json_post("/api/message", format!("{{\"sessionId\":\"{alice}\"}}").as_bytes()),
        400,
        "missing field 'content'",
    );

    refused(&post(&server, "/api/connect", &json!({ "nickname": "ALICE" })), 409, "already taken");
    refused(&post(&server, "/api/connect", &json!({ "nickname": "no spaces" })), 400, "invalid nickname");
    refused(&command(&server, &alice, "/create general"), 409, "already exists");
    refused(&command(&server, &alice, "hello"), 400, "commands start with /");
    refused(&command(&server, &alice, "/dance"), 400, "unknown command '/dance'");
    refused(&command(&server, &alice, "/join"), 400, "usage: /join <room>");
    refused(&command(&server, &alice, "/join nowhere"), 404, "room 'nowhere' does not exist");
    let long = "x".repeat(2001);
    refused(&post(&server, "/api/message", &json!({ "sessionId": alice, "content": long })), 400, "too long");
    refused(
        &post(&server, "/api/message", &json!({ "sessionId": alice, "content": "hi", "room": "other" })),
        400,
        "not 'other'",
    );

    let ghost = "6f1c2a9e-0000-4000-8000-000000000000";
    refused(
        &post(&server, "/api/message", &json!({ "sessionId": ghost, "content": "hi" })),
        404,
        "unknown or expired session",
    );
    refused(&command(&server, ghost, "/rooms"), 404, "session");
    refused(&command(&server, "not-a-uuid", "/rooms"), 404, "session");
    refused(&post(&server, "/api/disconnect", &json!({ "sessionId": ghost })), 404, "session");
    refused(&get(&server, &format!("/api/messages/general?sessionId={ghost}")), 404, "session");
    refused(&get(&server, "/api/messages/general"), 400, "sessionId");
    refused(&get(&server, &format!("/api/messages/nowhere?sessionId={alice}")), 404, "does not exist");
    refused(&get(&server, &format!("/api/messages/general?sessionId={alice}&lastEventId=abc")), 400, "Last-Event-ID");

    refused(&get(&server, "/api/nothing"), 404, "no such endpoint");
    refused(&get(&server, "/api/rooms/nowhere/members"), 404, "does not exist");
    refused(&get(&server, "/api/rooms/nowhere/history"), 404, "does not exist");
    refused(&get(&server, "/api/rooms/general/history?limit=0"), 400, "'limit'");
    refused(&get(&server, "/api/rooms/general/history?limit=101"), 400, "'limit'");
    refused(&get(&server, "/api/rooms/general/history?limit=ten"), 400, "'limit'");
    refused(&get(&server, "/api/rooms/general/history?before=x"), 400, "'before'");

    let r = get(&server, "/api/connect");
    refused(&r, 405, "not allowed");
    assert_eq!(r.header("Allow"), Some("POST, OPTIONS"));
    let r = raw(&server, "DELETE", "/api/rooms", &[], b"");
    refused(&r, 405, "use GET");
    assert_eq!(r.header("Allow"), Some("GET, HEAD, OPTIONS"));
    refused(&raw(&server, "POST", "/api/messages/general", &[], b""), 405, "not allowed");

    // The default sizes: a body over 64 KiB, declared or chunked, and headers over 8 KiB.
    let big = format!("{{\"nickname\":\"{}\"}}", "a".repeat(70_000));
    refused(&json_post("/api/connect", big.as_bytes()), 413, "too large");
    let chunked =
        raw(&server, "POST", "/api/connect", &[("Transfer-Encoding", "chunked")], &web::chunk(big.as_bytes()));
    refused(&chunked, 413, "too large");
    let fat = "b".repeat(9000);
    refused(&raw(&server, "GET", "/api/health", &[("X-Fat", &fat)], b""), 431, "headers too large");
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-H{i}"), "c".repeat(90))).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    refused(&raw(&server, "GET", "/api/health", &many, b""), 431, "headers too large");
    // Just under both limits is fine.
    let ok = format!("{{\"nickname\":\"bob\",\"pad\":\"{}\"}}", " ".repeat(60_000));
    assert_eq!(json_post("/api/connect", ok.as_bytes()).status, 200);
    assert_eq!(raw(&server, "GET", "/api/health", &[("X-Fat", &"d".repeat(7000))], b"").status, 200);
}

#[test]
fn a_huge_declared_body_does_not_take_the_server_down() {
    let server = sqlite();
    // tiny_http would allocate the declared size to read the body away.
    for length in ["1000000000000", "18446744073709551615"] {
        let head = format!("POST /api/connect HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}");
        assert_eq!(web::status_line(&server, head.as_bytes()), "HTTP/1.1 413 Payload Too Large");
    }
    assert_eq!(get(&server, "/api/health").status, 200);
    connect(&server, "still-here");
}

#[test]
fn messages_over_the_rate_are_refused_with_429() {
    let server = TestServer::builder(Store::Sqlite).env("MSG_RATE", 1).env("MSG_BURST", 1).start();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    say(&server, &alice, "one");
    let r = post(&server, "/api/message", &json!({ "sessionId": alice, "content": "two" }));
    refused(&r, 429, "slow down");
    std::thread::sleep(Duration::from_millis(1100));
    say(&server, &alice, "three");
    let contents: Vec<Value> = get(&server, "/api/rooms/general/history").json()["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("one"), json!("three")], "a refused message is not sent");
}

#[test]
fn streams_beyond_max_connections_are_refused_with_503() {
    let server = TestServer::builder(Store::Sqlite).env("MAX_CONNECTIONS", 2).env("SSE_PING_SECS", 1).start();
    let alice = connect(&server, "alice");
    let bob = connect(&server, "bob");
    let carol = connect(&server, "carol");
    ok_command(&server, &alice, "/create general");
    let mut first = Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[]).unwrap();
    let _second = Sse::open(&server, &format!("/api/messages/general?sessionId={bob}"), &[]).unwrap();
    let refusal = Sse::open(&server, &format!("/api/messages/general?sessionId={carol}"), &[]).unwrap_err();
    refused(&refusal, 503, "server full");
    // The limit is shared with TCP.
    let mut tcp = server.connect();
    assert_eq!(tcp.line(), "Error: server full, try again later.");
    // Every open HTTP connection holds a place, not only streams.
    refused(&get(&server, "/api/rooms"), 503, "server full");
    first.expect_event("connected");
    drop(first);
    wait_until("the closed stream frees its place", PATIENCE, || {
        Sse::open(&server, &format!("/api/messages/general?sessionId={carol}"), &[]).is_ok()
    });
}

#[test]
fn sse_events_are_flushed_at_once() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    let bob = connect(&server, "bob");
    ok_command(&server, &alice, "/create general");
    ok_command(&server, &bob, "/join general");
    // A browser's request: keep-alive, so the stream is chunked.
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[]).unwrap();
    assert_eq!(stream.header("Content-Type"), Some("text/event-stream"));
    assert_eq!(stream.header("Cache-Control"), Some("no-cache"));
    assert_eq!(stream.header("X-Accel-Buffering"), Some("no"));
    assert_eq!(stream.header("Transfer-Encoding"), Some("chunked"));

    let connected = stream.next_event(PROMPTLY).expect("the first event comes at once, not buffered");
    assert_eq!((connected.event.as_str(), connected.json()), ("connected", json!({ "room": "general" })));

    let id = say(&server, &bob, "Hello!");
    let event = stream.next_event(PROMPTLY).expect("a message arrives at once");
    assert_eq!(event.event, "message");
    assert_eq!(event.id.as_deref(), Some(id.to_string().as_str()));
    let data = event.json();
    assert_eq!(
        (data["id"].as_i64(), data["room"].as_str(), data["user"].as_str()),
        (Some(id), Some("general"), Some("bob"))
    );
    assert_eq!(data["content"], "Hello!");
    assert!(data["timestamp"].as_str().unwrap().ends_with('Z'));

    ok_command(&server, &bob, "/nick robert");
    let event = stream.next_event(PROMPTLY).expect("a notice arrives at once");
    assert_eq!(event.event, "system");
    assert_eq!(
        (event.json()["room"].as_str(), event.json()["content"].as_str()),
        (Some("general"), Some("bob is now known as robert"))
    );

    ok_command(&server, &bob, "/dm alice psst");
    let event = stream.next_event(PROMPTLY).expect("a DM arrives at once");
    assert_eq!(event.event, "dm");
    let dm = event.json();
    assert_eq!(
        (dm["from"].as_str(), dm["to"].as_str(), dm["content"].as_str()),
        (Some("robert"), Some("alice"), Some("psst"))
    );
    assert!(dm["timestamp"].is_string());
}

#[test]
fn idle_streams_are_pinged() {
    let server = TestServer::builder(Store::Sqlite).env("SSE_PING_SECS", 1).start();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[]).unwrap();
    stream.expect_event("connected");
    assert_eq!(stream.next_block(Duration::from_secs(3)).unwrap(), ": ping");
}

/// Sends `n` messages numbered from 1 and returns their ids.
fn send_numbered(server: &TestServer, session: &str, n: usize) -> Vec<i64> {
    (1..=n).map(|i| say(server, session, &format!("m{i}"))).collect()
}

/// Reads the next `count` events, which must all be messages; returns
/// their contents.
fn read_messages(stream: &mut Sse, count: usize) -> Vec<String> {
    let mut contents = Vec::new();
    while contents.len() < count {
        let event = stream.next_event(PATIENCE).expect("stream ended");
        assert_eq!(event.event, "message", "only messages expected here: {event:?}");
        assert_eq!(event.id, Some(event.json()["id"].to_string()), "every message carries its id");
        contents.push(event.json()["content"].as_str().unwrap().to_string());
    }
    contents
}

fn numbered(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

for_each_store! {
    /// HISTORY_SIZE is 10: resuming after the 3rd of 15 messages needs the store.
    fn last_event_id_replays_missed_messages_in_order(store) {
        let server = unlimited(store);
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        ok_command(&server, &alice, "/create general");
        ok_command(&server, &bob, "/join general");
        let ids = send_numbered(&server, &bob, 15);

        // As a browser reconnects: the header, and the query parameter.
        let path = format!("/api/messages/general?sessionId={alice}");
        let header = ids[2].to_string();
        let mut stream = Sse::open(&server, &path, &[("Last-Event-ID", &header)]).unwrap();
        stream.expect_event("connected");
        assert_eq!(read_messages(&mut stream, 12), numbered(4..=15));
        say(&server, &bob, "live");
        assert_eq!(read_messages(&mut stream, 1), ["live"]);
        // `connected` came once, and nothing else is queued.
        assert_eq!(stream.next_block(Duration::from_millis(300)), None);
        drop(stream);

        let path = format!("/api/messages/general?sessionId={alice}&lastEventId={}", ids[2]);
        let mut stream = Sse::open(&server, &path, &[]).unwrap();
        stream.expect_event("connected");
        let mut expected = numbered(4..=15);
        expected.push("live".into());
        assert_eq!(read_messages(&mut stream, 13), expected);
        drop(stream);

        // Within the ring buffer: no store needed, same result.
        let path = format!("/api/messages/general?sessionId={alice}&lastEventId={}", ids[12]);
        let mut stream = Sse::open(&server, &path, &[]).unwrap();
        stream.expect_event("connected");
        assert_eq!(read_messages(&mut stream, 3), ["m14", "m15", "live"]);
        assert_eq!(stream.next_block(Duration::from_millis(300)), None);
    }
}

#[test]
fn a_stream_without_last_event_id_starts_with_recent_history() {
    let server = unlimited(Store::Sqlite);
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    send_numbered(&server, &alice, 12);
    let bob = connect(&server, "bob");
    // The stream joins the room for a session that is not in it.
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={bob}"), &[]).unwrap();
    stream.expect_event("connected");
    assert_eq!(read_messages(&mut stream, 10), numbered(3..=12));
    assert_eq!(ok_command(&server, &bob, "/list"), "Users in general (2): alice, bob");
}

#[test]
fn history_pages_go_back_in_time() {
    let server = unlimited(Store::Sqlite);
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let ids = send_numbered(&server, &alice, 15);
    let contents = |path: &str| -> Vec<String> {
        let r = get(&server, path);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(contents("/api/rooms/general/history"), numbered(1..=15));
    assert_eq!(contents("/api/rooms/general/history?limit=5"), numbered(11..=15));
    assert_eq!(contents(&format!("/api/rooms/general/history?limit=5&before={}", ids[10])), numbered(6..=10));
    assert_eq!(contents(&format!("/api/rooms/general/history?before={}", ids[0])), Vec::<String>::new());
}

#[test]
fn the_stream_follows_the_session_across_join() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    let bob = connect(&server, "bob");
    ok_command(&server, &bob, "/create b");
    say(&server, &bob, "before");
    ok_command(&server, &alice, "/create a");
    let mut stream = Sse::open(&server, &format!("/api/messages/a?sessionId={alice}"), &[]).unwrap();
    assert_eq!(stream.expect_event("connected").json(), json!({ "room": "a" }));

    let joined = ok_command(&server, &alice, "/join b");
    assert!(joined.starts_with("Joined room: b\n--- Recent Messages ---\n[b] bob: before"), "{joined}");
    assert_eq!(stream.expect_event("connected").json(), json!({ "room": "b" }));
    assert_eq!(read_messages(&mut stream, 1), ["before"], "the new room's history follows");
    say(&server, &bob, "after");
    let event = stream.next_event(PROMPTLY).unwrap();
    assert_eq!((event.event.as_str(), event.json()["room"].as_str()), ("message", Some("b")));
    assert_eq!(event.json()["content"], "after");

    ok_command(&server, &alice, "/leave");
    assert_eq!(stream.expect_event("connected").json(), json!({ "room": null }));
}

#[test]
fn a_closed_stream_frees_its_thread_and_keeps_the_session() {
    let server = TestServer::builder(Store::Sqlite).env("SSE_PING_SECS", 1).start();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    std::thread::sleep(Duration::from_millis(300));
    let before = threads(&server);

    let mut streams = Vec::new();
    for _ in 0..5 {
        let bob = connect(&server, &format!("bob{}", streams.len()));
        let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={bob}"), &[]).unwrap();
        stream.expect_event("connected");
        streams.push((bob, stream));
    }
    assert_eq!(sse_gauge(&server), 5);
    assert!(threads(&server) >= before + 5, "one thread per stream at least");

    let sessions: Vec<String> = streams
        .drain(..)
        .map(|(bob, stream)| {
            drop(stream);
            bob
        })
        .collect();
    // Two pings at most: the first write after the close meets a reset.
    wait_until("every stream thread has noticed its client left", Duration::from_secs(5), || sse_gauge(&server) == 0);
    // tiny_http's connection threads idle for 5 s before they end.
    wait_until("the thread count is back where it was", Duration::from_secs(15), || threads(&server) <= before);
    // The sessions were detached, not ended: they can still talk.
    for bob in &sessions {
        say(&server, bob, "still here");
    }
}

#[test]
fn a_newer_stream_replaces_the_old_one() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let path = format!("/api/messages/general?sessionId={alice}");
    let mut old = Sse::open(&server, &path, &[]).unwrap();
    old.expect_event("connected");
    let mut new = Sse::open(&server, &path, &[]).unwrap();
    new.expect_event("connected");
    let last = old.expect_event("error");
    assert!(last.json()["error"].as_str().unwrap().contains("newer stream"));
    assert!(old.ended(PROMPTLY), "the old stream ends");
    say(&server, &alice, "hi");
    assert_eq!(read_messages(&mut new, 1), ["hi"]);
}

#[test]
fn an_older_stream_still_replaying_cannot_replace_a_newer_one() {
    let server = TestServer::builder(Store::Sqlite)
        .env("MSG_RATE", 0)
        .env("OUTBOX_CAPACITY", 100_000)
        .env("SENDQ_BYTES", 64 << 20)
        .start();
    let alice = connect(&server, "alice");
    let mut bob = server.login("bob");
    bob.ask("/create general", |l| l == "---");
    ok_command(&server, &alice, "/join general");
    bob.expect("[system] alice joined general");
    // More than a client that does not read can have buffered for it.
    const N: usize = 4000;
    let padding = "x".repeat(1990);
    let lines: String = (0..N).map(|i| format!("{i:04} {padding}\n")).collect();
    bob.send_raw(lines.as_bytes());
    for _ in 0..N {
        bob.line();
    }

    // The older stream replays from the store, and stalls.
    let path = format!("/api/messages/general?sessionId={alice}");
    let mut older = Sse::open(&server, &path, &[("Last-Event-ID", "0")]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut newer = Sse::open(&server, &path, &[]).unwrap();
    newer.expect_event("connected");
    assert_eq!(read_messages(&mut newer, 10).len(), 10);

    // Unstalled, the older one gets what its replay had queued, in order,
    // then gives way: it never takes the session back.
    older.expect_event("connected");
    let mut replayed = Vec::new();
    let last = loop {
        let event = older.next_event(PATIENCE).expect("the older stream ends with an error event");
        if event.event != "message" {
            break event;
        }
        replayed.push(event.json()["content"].as_str().unwrap()[..4].to_string());
    };
    assert_eq!(last.event, "error", "{last:?}");
    assert!(last.json()["error"].as_str().unwrap().contains("newer stream"), "{last:?}");
    let expected: Vec<String> = (0..replayed.len()).map(|i| format!("{i:04}")).collect();
    assert_eq!(replayed, expected, "a prefix of the room, in order");
    assert!(!replayed.is_empty() && replayed.len() <= N);
    assert!(older.ended(PROMPTLY));
    say(&server, &alice, "still the newer one");
    assert_eq!(read_messages(&mut newer, 1), ["still the newer one"]);
}

#[test]
fn quit_through_the_api_ends_the_session_and_its_stream() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[]).unwrap();
    stream.expect_event("connected");
    assert_eq!(ok_command(&server, &alice, "/quit"), "Goodbye!");
    assert!(stream.ended(PROMPTLY));
    refused(&command(&server, &alice, "/rooms"), 404, "session");
    connect(&server, "alice");
}

#[test]
fn idle_http_sessions_expire() {
    let server = TestServer::builder(Store::Sqlite).env("SESSION_IDLE_SECS", 1).start();
    let mut bob = server.login("bob");
    bob.ask("/create general", |l| l == "---");
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/join general");
    bob.expect("[system] alice joined general");
    // No stream and no request: the session ends as if it had disconnected.
    bob.expect("[system] alice disconnected");
    refused(&command(&server, &alice, "/rooms"), 404, "session");
    connect(&server, "alice");

    // An open stream keeps a session alive.
    let carol = connect(&server, "carol");
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={carol}"), &[]).unwrap();
    stream.expect_event("connected");
    bob.expect("[system] carol joined general");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ok_command(&server, &carol, "/list"), "Users in general (2): bob, carol");
}

#[test]
fn tcp_and_http_users_see_each_other_at_once() {
    let server = sqlite();
    let mut bob = server.login("bob");
    bob.ask("/create lobby", |l| l == "---");
    let alice = connect(&server, "alice");
    let mut stream = Sse::open(&server, &format!("/api/messages/lobby?sessionId={alice}"), &[]).unwrap();
    stream.expect_event("connected");
    bob.expect("[system] alice joined lobby");

    let started = Instant::now();
    say(&server, &alice, "hi from the browser");
    bob.expect("[lobby] alice: hi from the browser");
    assert!(started.elapsed() < PROMPTLY);
    assert_eq!(read_messages(&mut stream, 1), ["hi from the browser"], "the sender's own stream has it too");

    let started = Instant::now();
    bob.send("hi from netcat");
    bob.expect("[lobby] bob: hi from netcat");
    let event = stream.next_event(PROMPTLY).unwrap();
    assert_eq!(
        (event.json()["user"].as_str(), event.json()["content"].as_str()),
        (Some("bob"), Some("hi from netcat"))
    );
    assert!(started.elapsed() < PROMPTLY);

    bob.send("/dm alice psst");
    bob.expect("[DM to alice] psst");
    let event = stream.next_event(PROMPTLY).unwrap();
    assert_eq!(event.event, "dm");
    assert_eq!((event.json()["from"].as_str(), event.json()["content"].as_str()), (Some("bob"), Some("psst")));

    assert_eq!(ok_command(&server, &alice, "/dm bob yo"), "[DM to bob] yo");
    bob.expect("[DM from alice] yo");
    let event = stream.next_event(PROMPTLY).unwrap();
    assert_eq!((event.event.as_str(), event.json()["to"].as_str()), ("dm", Some("bob")));

    post(&server, "/api/disconnect", &json!({ "sessionId": alice }));
    bob.expect("[system] alice disconnected");
    assert!(stream.ended(PROMPTLY));
}

#[test]
fn an_sse_user_and_a_netcat_user_on_two_instances_chat() {
    let cluster = common::Cluster::start(2);
    let (one, two) = (&cluster.servers[0], &cluster.servers[1]);
    for server in [one, two] {
        // The bus subscribes just after start-up.
        wait_until("/api/health reports the bus up", PATIENCE, || get(server, "/api/health").json()["redis"] == true);
        let health = get(server, "/api/health").json();
        assert_eq!(health["status"], "healthy", "{health}");
    }
    let alice = connect(one, "alice");
    ok_command(one, &alice, "/create lobby");
    // Nicknames are service-wide.
    refused(&post(two, "/api/connect", &json!({ "nickname": "Alice" })), 409, "already taken");
    let mut bob = two.login("bob");
    wait_until("instance 2 knows the room", PATIENCE, || {
        bob.send("/join lobby");
        let reply = bob.line();
        if reply == "Joined room: lobby" {
            bob.wait_for(|l| l == "---");
            return true;
        }
        false
    });
    let mut stream = Sse::open(one, &format!("/api/messages/lobby?sessionId={alice}"), &[]).unwrap();
    stream.expect_event("connected");
    bob.send("hello from instance 2");
    bob.expect("[lobby] bob: hello from instance 2");
    // Presence notices from the other instance may come and go in between.
    let mut next = || loop {
        let event = stream.next_event(PATIENCE).expect("an event");
        if event.event != "system" {
            return event;
        }
    };
    let event = next();
    assert_eq!((event.event.as_str(), event.json()["user"].as_str()), ("message", Some("bob")));
    say(one, &alice, "hello from instance 1");
    bob.wait_for(|l| l == "[lobby] alice: hello from instance 1");
    assert_eq!(next().json()["content"], "hello from instance 1");
    bob.send("/dm alice psst");
    bob.expect("[DM to alice] psst");
    let dm = next();
    assert_eq!(dm.event, "dm");
    assert_eq!((dm.json()["from"].as_str(), dm.json()["content"].as_str()), (Some("bob"), Some("psst")));
}

#[test]
fn shutdown_tells_streams_and_ends_them() {
    let mut server = sqlite();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let mut stream = Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[]).unwrap();
    stream.expect_event("connected");
    assert!(server.terminate().success());
    let event = stream.next_event(PATIENCE).unwrap();
    assert_eq!(event.event, "system");
    assert_eq!(event.json()["content"], "Server is shutting down. Goodbye!");
    assert!(stream.ended(PROMPTLY));
}

#[test]
fn a_stream_asked_with_connection_close_is_plain_and_ends_with_the_connection() {
    let server = sqlite();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create general");
    let mut stream =
        Sse::open(&server, &format!("/api/messages/general?sessionId={alice}"), &[("Connection", "close")]).unwrap();
    assert_eq!(stream.header("Transfer-Encoding"), None);
    stream.expect_event("connected");
    say(&server, &alice, "plain");
    assert_eq!(read_messages(&mut stream, 1), ["plain"]);
    post(&server, "/api/disconnect", &json!({ "sessionId": alice }));
    assert!(stream.ended(PROMPTLY), "the server closes the connection");
}

/// A minimal HTTP/1.1 client for these tests: one request per connection
/// (`Connection: close`), and an SSE reader that decodes our chunks.
mod web {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::common::{TestServer, PATIENCE};

    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl std::fmt::Debug for Response {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "HTTP {} {}", self.status, self.text())
        }
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
        }
    }

    fn dial(server: &TestServer) -> TcpStream {
        let stream = TcpStream::connect(server.http.expect("the server logs its HTTP address")).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    }

    fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        let mut has_length = false;
        for (name, value) in headers {
            has_length |= name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("Transfer-Encoding");
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !has_length && (!body.is_empty() || method == "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        let mut bytes = head.into_bytes();
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Connection")) {
            bytes.extend_from_slice(b"Connection: close\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        bytes
    }

    pub fn raw(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut stream = dial(server);
        stream.write_all(&request_bytes(method, path, headers, body)).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("the server answers and closes");
        parse(&bytes)
    }

    pub fn get(server: &TestServer, path: &str) -> Response {
        raw(server, "GET", path, &[], b"")
    }

    pub fn post(server: &TestServer, path: &str, body: &Value) -> Response {
        raw(server, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
    }

    /// Sends raw bytes; returns the status line of the answer.
    pub fn status_line(server: &TestServer, request: &[u8]) -> String {
        let mut stream = dial(server);
        stream.write_all(request).unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 1024];
        while !bytes.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).expect("an answer");
            assert!(n > 0, "closed without an answer");
            bytes.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&bytes);
        text.split("\r\n").next().unwrap().to_string()
    }

    /// `body` in the chunked transfer coding, in 16 KiB chunks.
    pub fn chunk(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in body.chunks(16 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// Status, headers, and where the body starts.
    type Head = (u16, Vec<(String, String)>, usize);

    fn split_head(bytes: &[u8]) -> Option<Head> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some((status, headers, end + 4))
    }

    fn parse(bytes: &[u8]) -> Response {
        let (status, headers, start) =
            split_head(bytes).unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(bytes)));
        let mut response = Response { status, headers, body: Vec::new() };
        let rest = &bytes[start..];
        response.body = if response.header("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
            let mut decoder = Dechunker::default();
            let mut out = Vec::new();
            decoder.feed(rest, &mut out);
            out
        } else if let Some(n) = response.header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
            rest[..n.min(rest.len())].to_vec()
        } else {
            rest.to_vec()
        };
        response
    }

    /// Incremental decoder of the chunked transfer coding.
    #[derive(Debug, Default)]
    struct Dechunker {
        pending: Vec<u8>,
        /// Bytes left in the current chunk (plus its CRLF), if inside one.
        left: Option<usize>,
        done: bool,
    }

    impl Dechunker {
        fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
            self.pending.extend_from_slice(bytes);
            loop {
                match self.left {
                    None => {
                        let Some(eol) = self.pending.windows(2).position(|w| w == b"\r\n") else { return };
                        let size = usize::from_str_radix(std::str::from_utf8(&self.pending[..eol]).unwrap().trim(), 16)
                            .expect("a chunk size");
                        self.pending.drain(..eol + 2);
                        if size == 0 {
                            self.done = true;
                            return;
                        }
                        self.left = Some(size + 2);
                    }
                    Some(left) => {
                        if self.pending.len() < left {
                            return;
                        }
                        let chunk: Vec<u8> = self.pending.drain(..left).collect();
                        assert_eq!(&chunk[left - 2..], b"\r\n", "a chunk ends with CRLF");
                        out.extend_from_slice(&chunk[..left - 2]);
                        self.left = None;
                    }
                }
            }
        }
    }

    /// One event of a stream.
    #[derive(Debug)]
    pub struct Event {
        pub id: Option<String>,
        pub event: String,
        pub data: String,
    }

    impl Event {
        pub fn json(&self) -> Value {
            serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
        }
    }

    /// An open SSE stream.
    #[derive(Debug)]
    pub struct Sse {
        stream: TcpStream,
        headers: Vec<(String, String)>,
        chunks: Option<Dechunker>,
        /// Decoded stream text not yet returned.
        text: Vec<u8>,
        closed: bool,
    }

    impl Sse {
        /// Opens a stream; a refusal comes back as the error response.
        pub fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Response> {
            let mut stream = dial(server);
            let mut all = vec![("Accept", "text/event-stream")];
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Connection")) {
                all.push(("Connection", "keep-alive"));
            }
            all.extend_from_slice(headers);
            stream.write_all(&request_bytes("GET", path, &all, b"")).unwrap();
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 4096];
            let (status, headers, start) = loop {
                if let Some(head) = split_head(&bytes) {
                    break head;
                }
                let n = stream.read(&mut chunk).expect("a response head");
                assert!(n > 0, "closed before a response head");
                bytes.extend_from_slice(&chunk[..n]);
            };
            if status != 200 {
                // Refusals are ordinary responses with a length.
                let mut response = Response { status, headers, body: Vec::new() };
                let length: usize = response.header("Content-Length").unwrap().parse().unwrap();
                while bytes.len() < start + length {
                    let n = stream.read(&mut chunk).unwrap();
                    assert!(n > 0);
                    bytes.extend_from_slice(&chunk[..n]);
                }
                response.body = bytes[start..start + length].to_vec();
                return Err(response);
            }
            let chunked =
                headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("Transfer-Encoding") && v.contains("chunked"));
            let mut sse =
                Sse { stream, headers, chunks: chunked.then(Dechunker::default), text: Vec::new(), closed: false };
            sse.take(&bytes[start..]);
            Ok(sse)
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn take(&mut self, bytes: &[u8]) {
            match &mut self.chunks {
                Some(decoder) => {
                    decoder.feed(bytes, &mut self.text);
                    self.closed |= decoder.done;
                }
                None => self.text.extend_from_slice(bytes),
            }
        }

        /// Reads more; false at the end of the stream or on timeout.
        fn fill(&mut self, deadline: Instant) -> bool {
            if self.closed {
                return false;
            }
            let Some(wait) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    false
                }
                Ok(n) => {
                    self.take(&chunk[..n]);
                    true
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
                Err(_) => {
                    self.closed = true;
                    false
                }
            }
        }

        /// The next block (an event, or a `: comment`) as text, within `wait`.
        pub fn next_block(&mut self, wait: Duration) -> Option<String> {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(end) = self.text.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.text.drain(..end + 2).collect();
                    return Some(String::from_utf8(block[..end].to_vec()).expect("UTF-8 events"));
                }
                if !self.fill(deadline) {
                    return None;
                }
            }
        }

        /// The next event (comments skipped), within `wait`.
        pub fn next_event(&mut self, wait: Duration) -> Option<Event> {
            let deadline = Instant::now() + wait;
            loop {
                let block = self.next_block(deadline.saturating_duration_since(Instant::now()))?;
                let mut event = Event { id: None, event: "message".into(), data: String::new() };
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    any = true;
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = value.to_string(),
                        "data" => event.data.push_str(value),
                        other => panic!("unexpected field {other:?} in {block:?}"),
                    }
                }
                if any {
                    return Some(event);
                }
            }
        }

        /// The next event, which must be of kind `event`.
        pub fn expect_event(&mut self, kind: &str) -> Event {
            let event = self.next_event(PATIENCE).unwrap_or_else(|| panic!("no {kind} event"));
            assert_eq!(event.event, kind, "{event:?}");
            event
        }

        /// True if the stream ends (last chunk, or the connection closes)
        /// within `wait`, with nothing but pings before the end.
        pub fn ended(&mut self, wait: Duration) -> bool {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(end) = self.text.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.text.drain(..end + 2).collect();
                    assert!(
                        block.starts_with(b":"),
                        "unexpected before the end: {:?}",
                        String::from_utf8_lossy(&block)
                    );
                    continue;
                }
                if self.closed {
                    return true;
                }
                if !self.fill(deadline) && !self.closed {
                    return false;
                }
            }
        }
    }
}

/// tiny_http's thread pool used to queue a burst of new connections behind
/// one idle thread; with the others held by keep-alive connections, the
/// queued ones were accepted but never answered (vendor/README.md).
#[test]
fn a_burst_of_keep_alive_connections_is_served() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let server = sqlite();
    let http = server.http.unwrap();
    // Each round leaves idle pool threads behind for the next one to race.
    for round in 0..8 {
        // Open them all first, so the server accepts them in one burst, and
        // keep every one open, so no pool thread frees up.
        let mut streams: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(http).unwrap()).collect();
        for (i, stream) in streams.iter_mut().enumerate() {
            let body = format!("{{\"nickname\":\"burst{round}x{i}\"}}");
            let request = format!(
                "POST /api/connect HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).unwrap();
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).unwrap_or_else(|e| panic!("round {round}: connection {i} was never answered: {e}"));
            assert_eq!(&head, b"HTTP/1.1 200");
        }
        drop(streams);
        std::thread::sleep(Duration::from_millis(100));
    }
}
