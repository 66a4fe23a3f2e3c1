//! Read markers, unread counts, mentions and full-text search
//! (`docs/protocol.md`, "Read markers, unread counts, mentions and
//! search"): real sockets, the real binary, both stores, and three
//! instances on real Redis.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{unique_name, Client, Redis, Store, TestServer, PATIENCE};
use serde_json::{json, Value};

const PW: &str = "hunter22hunter";

fn http(server: &TestServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    common::http_json(server.http.unwrap(), method, path, body)
}

fn get(server: &TestServer, path: &str) -> (u16, Value) {
    http(server, "GET", path, None)
}

fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    http(server, "POST", path, Some(&body))
}

/// A guest HTTP session.
fn guest(server: &TestServer, nick: &str) -> String {
    let (status, body) = post(server, "/api/connect", json!({ "nickname": nick }));
    assert_eq!(status, 200, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

/// A registered account's HTTP session (registering it if `register`).
fn account(server: &TestServer, nick: &str, register: bool) -> String {
    let (path, expected) = if register { ("/api/register", 201) } else { ("/api/connect", 200) };
    let (status, body) = post(server, path, json!({ "nickname": nick, "password": PW }));
    assert_eq!(status, expected, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

fn command(server: &TestServer, session: &str, line: &str) -> String {
    let (status, body) = post(server, "/api/command", json!({ "sessionId": session, "command": line }));
    assert_eq!(status, 200, "{line}: {body}");
    body["message"].as_str().unwrap().to_string()
}

fn say(server: &TestServer, session: &str, content: &str) -> i64 {
    let (status, body) = post(server, "/api/message", json!({ "sessionId": session, "content": content }));
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_i64().unwrap()
}

/// The `/api/rooms` item of `room` as `query` sees it.
fn room_item(server: &TestServer, query: &str, room: &str) -> Option<Value> {
    let (status, body) = get(server, &format!("/api/rooms{query}"));
    assert_eq!(status, 200, "{body}");
    body["data"]["rooms"].as_array().unwrap().iter().find(|r| r["name"] == room).cloned()
}

fn read(server: &TestServer, session: &str, room: &str, id: Value) -> (u16, Value) {
    post(server, &format!("/api/rooms/{room}/read"), json!({ "sessionId": session, "id": id }))
}

fn search(server: &TestServer, room: &str, query: &str) -> (u16, Value) {
    get(server, &format!("/api/rooms/{room}/search?{query}"))
}

/// The contents of a search answer, in order.
fn contents(body: &Value) -> Vec<String> {
    body["data"]["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

/// Runs SQL against the server's own store (as edits and deletions do).
fn store_sql(server: &TestServer, sql: &str) {
    match &server.database {
        Some(db) => {
            let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
            client.batch_execute(sql).unwrap();
        }
        None => {
            let conn = rusqlite::Connection::open(server.data_dir.path().join("baby-discord.db")).unwrap();
            conn.busy_timeout(PATIENCE).unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }
}

/// Polls `check` until it holds (news between instances travels through Redis).
fn eventually<T: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (done, seen) = check();
        if done {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: still {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Logs in to an account at the TCP prompt.
fn tcp_log_in(server: &TestServer, nick: &str) -> Client {
    let mut client = server.connect();
    client.expect("Welcome to Baby Discord!");
    client.expect_prompt();
    client.send(nick);
    client.expect_text(&format!("Password for {nick}: "));
    client.send(PW);
    client.expect(&format!("Welcome back, {nick}!"));
    client.expect("Type /help for available commands.");
    client
}

/// A TCP guest that registers its nickname.
fn tcp_registered(server: &TestServer, nick: &str) -> Client {
    let mut client = server.login(nick);
    client.send(&format!("/register {PW}"));
    client.expect(&format!("Registered {nick}. From now on, log in as {nick} with your password."));
    client
}

/// `/join`, returning the line that follows the history block once every
/// store job the join queued has run: a search for a word nobody wrote is
/// answered after them (the storage thread works in order).
fn join_then_next(client: &mut Client, room: &str) -> String {
    client.join(room);
    client.send("/search zzzznothing");
    client.line()
}

fn unlimited(store: Store) -> TestServer {
    TestServer::builder(store).env("MSG_RATE", 0).start()
}

for_each_store! {
    /// `/api/rooms`: `lastMessageId` for everyone, `unread` and `mentions`
    /// for a registered session only; markers move forward only.
    fn unread_and_mentions_are_listed_for_registered_users_only(store) {
        let server = unlimited(store);
        let room: String = unique_name("r").chars().take(32).collect();
        let bob = guest(&server, "bob");
        command(&server, &bob, &format!("/create {room}"));
        let alice = account(&server, "alice", true);
        // Before any message: no last message, nothing unread.
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!((item["lastMessageId"].clone(), item["unread"].clone(), item["mentions"].clone()), (Value::Null, json!(0), json!(0)));
        let ids: Vec<i64> = ["hello", "hi @alice!", "@ALICE again", "mail x@alice.com", "@alicea is someone else"]
            .iter()
            .map(|text| say(&server, &bob, text))
            .collect();
        let last = *ids.last().unwrap();
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!(item["lastMessageId"], last, "{item}");
        assert_eq!(item["unread"], 5, "{item}");
        assert_eq!(item["mentions"], 2, "{item}");
        assert!(item["memberCount"].is_number() && item["createdAt"].is_string(), "{item}");
        // Guests and anonymous callers get the last message id only.
        for query in [String::new(), format!("?sessionId={bob}")] {
            let item = room_item(&server, &query, &room).unwrap();
            assert_eq!(item["lastMessageId"], last, "{item}");
            assert!(item.get("unread").is_none() && item.get("mentions").is_none(), "{item}");
        }
        // The marker moves forward to the message named.
        let (status, body) = read(&server, &alice, &room, json!(ids[1]));
        assert_eq!((status, body.clone()), (200, json!({ "success": true })), "{body}");
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!((item["unread"].clone(), item["mentions"].clone()), (json!(3), json!(1)), "{item}");
        // Never back.
        let (status, _) = read(&server, &alice, &room, json!(ids[0]));
        assert_eq!(status, 200);
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!((item["unread"].clone(), item["mentions"].clone()), (json!(3), json!(1)), "{item}");
        // An id beyond the last is clamped to the last.
        let (status, _) = read(&server, &alice, &room, json!(last + 1_000_000));
        assert_eq!(status, 200);
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!((item["unread"].clone(), item["mentions"].clone()), (json!(0), json!(0)), "{item}");
        let newer = say(&server, &bob, "@alice one more");
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!((item["lastMessageId"].clone(), item["unread"].clone(), item["mentions"].clone()), (json!(newer), json!(1), json!(1)));
        // A deleted message mentions nobody any more.
        store_sql(&server, &format!("UPDATE messages SET content = '' WHERE id = {newer}"));
        let item = room_item(&server, &format!("?sessionId={alice}"), &room).unwrap();
        assert_eq!(item["mentions"], 0, "{item}");

        // Refusals.
        let (status, body) = read(&server, &bob, &room, json!(ids[0]));
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("only registered users have read markers"), "{body}");
        let (status, body) = read(&server, &alice, "nowhere", json!(ids[0]));
        assert_eq!(status, 404, "{body}");
        for bad in [json!(0), json!(-3), json!("7"), json!(1.5), Value::Null] {
            let (status, body) = read(&server, &alice, &room, bad.clone());
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(body["error"].as_str().unwrap().contains("'id' must be a message id"), "{body}");
        }
        let (status, _) = read(&server, "00000000-0000-0000-0000-000000000000", &room, json!(1));
        assert_eq!(status, 404);
    }

    /// A registered TCP user's marker follows them: on `/join` they hear
    /// how much they missed since their last visit.
    fn search_follows_edits_and_deletions(store) {
        // The index follows /edit and /delete: the new words are found,
        // the old ones and a deleted message's are not.
        let server = TestServer::builder(store).env("MSG_RATE", 0).start();
        let mut alice = server.login("alice");
        alice.create("kitchen");
        alice.send("apple pie");
        alice.expect("[kitchen] alice: apple pie");
        alice.send("/edit banana split");
        alice.expect("[kitchen] alice (edited): banana split");
        alice.send("/search banana");
        let found = alice.line();
        assert!(found.starts_with("[kitchen #") && found.ends_with("] alice: banana split"), "{found}");
        alice.send("/search apple");
        alice.expect("No messages match.");
        alice.send("cherry tart");
        alice.expect("[kitchen] alice: cherry tart");
        alice.send("/delete");
        alice.expect("[system] alice deleted a message");
        alice.send("/search cherry");
        alice.expect("No messages match.");
        let (status, body) = search(&server, "kitchen", "q=cherry");
        assert_eq!((status, contents(&body)), (200, Vec::<String>::new()), "{body}");
    }

    fn a_tcp_user_hears_what_they_missed_since_their_last_visit(store) {
        let server = unlimited(store);
        let room = "lounge";
        let mut bob = server.login("bob");
        bob.create(room);
        bob.send("one");
        bob.expect("[lounge] bob: one");
        let mut alice = tcp_registered(&server, "alice");
        // A first visit has no "last visit".
        assert_eq!(join_then_next(&mut alice, room), "No messages match.");
        alice.send("/leave");
        alice.expect("Left room: lounge");
        bob.wait_for(|l| l == "[system] alice left lounge");
        for text in ["two", "three"] {
            bob.send(text);
            bob.wait_for(|l| l == format!("[lounge] bob: {text}"));
        }
        assert_eq!(join_then_next(&mut alice, room), "(2 unread since your last visit)");
        alice.expect("No messages match.");
        // Live messages seen in the room are read when leaving by disconnecting.
        bob.send("four");
        alice.wait_for(|l| l == "[lounge] bob: four");
        alice.send("/quit");
        alice.expect("Goodbye!");
        bob.wait_for(|l| l == "[system] alice disconnected");
        let mut alice = tcp_log_in(&server, "alice");
        assert_eq!(join_then_next(&mut alice, room), "No messages match.");
        // Switching rooms leaves the old one read too.
        alice.create("other");
        bob.send("five");
        bob.wait_for(|l| l == "[lounge] bob: five");
        assert_eq!(join_then_next(&mut alice, room), "(1 unread since your last visit)");
        // The same markers show in /api/rooms.
        let session = account(&server, "alice", false);
        let item = room_item(&server, &format!("?sessionId={session}"), room).unwrap();
        assert_eq!(item["unread"], 0, "{item}");
        // Guests have no markers and never see the line.
        let mut carol = server.login("carol");
        assert_eq!(join_then_next(&mut carol, room), "No messages match.");
    }

    /// `/search` and `GET /api/rooms/:room/search`: every word, newest first,
    /// limits, deleted and edited messages, private rooms.
    fn search_finds_the_newest_matches_on_tcp_and_http(store) {
        let server = unlimited(store);
        let mut bob = server.login("bob");
        bob.send("/search fox");
        bob.expect("Error: you are not in a room; /search looks through your current room. Use /join <room> first.");
        bob.create("den");
        for text in ["the quick brown fox", "a lazy dog", "Quick thinking, fox!", "unrelated"] {
            bob.send(text);
            bob.expect(&format!("[den] bob: {text}"));
        }
        let lines = bob.ask("/search QUICK fox", |l| l.ends_with("the quick brown fox"));
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (line, text) in lines.iter().zip(["Quick thinking, fox!", "the quick brown fox"]) {
            let (head, rest) = line.split_once("] ").unwrap();
            assert_eq!(rest, format!("bob: {text}"));
            let parts: Vec<&str> = head.trim_start_matches('[').split(' ').collect();
            assert_eq!(parts[0], "den", "{line}");
            assert!(parts[1].starts_with('#') && parts[1][1..].parse::<i64>().is_ok(), "{line}");
            assert!(parts[2].len() == 10 && parts[3].len() == 5 && parts[3].as_bytes()[2] == b':', "{line}");
        }
        bob.send("/search nothing-like-it");
        bob.expect("No messages match.");
        // FTS syntax in the words is only words.
        bob.send(r#"/search "fox" OR NEAR(dog) *"#);
        bob.expect("No messages match.");
        bob.send("/search !!! ---");
        bob.expect("Error: cannot search: give at least one word to search for (letters or digits).");

        // Over HTTP: newest first, as history items.
        let (status, body) = search(&server, "den", "q=quick");
        assert_eq!(status, 200, "{body}");
        assert_eq!(contents(&body), ["Quick thinking, fox!", "the quick brown fox"]);
        let item = &body["data"]["messages"][0];
        assert!(item["id"].is_i64() && item["roomId"].is_i64() && item["userId"].is_i64(), "{item}");
        assert_eq!((item["nickname"].as_str(), item["createdAt"].is_string()), (Some("bob"), true));
        let (_, body) = search(&server, "den", "q=fox&limit=1");
        assert_eq!(contents(&body), ["Quick thinking, fox!"]);
        let (_, body) = search(&server, "DEN", "q=lazy+dog");
        assert_eq!(contents(&body), ["a lazy dog"]);
        let (_, body) = search(&server, "den", "q=zebra");
        assert_eq!(contents(&body), Vec::<String>::new());
        for (query, reason) in [
            ("q=", "'q'"),
            ("", "'q'"),
            ("q=%21%21", "'q'"),
            (&format!("q={}", "x".repeat(300)) as &str, "too long"),
            ("q=fox&limit=0", "'limit'"),
            ("q=fox&limit=101", "'limit'"),
            ("q=fox&limit=ten", "'limit'"),
        ] {
            let (status, body) = search(&server, "den", query);
            assert_eq!(status, 400, "{query}: {body}");
            assert!(body["error"].as_str().unwrap().contains(reason), "{query}: {body}");
        }
        let (status, _) = search(&server, "nowhere", "q=fox");
        assert_eq!(status, 404);

        // Deleted (content erased) is never found; edited is found by its new words.
        let (_, body) = search(&server, "den", "q=brown");
        let brown = body["data"]["messages"][0]["id"].as_i64().unwrap();
        let (_, body) = search(&server, "den", "q=lazy");
        let lazy = body["data"]["messages"][0]["id"].as_i64().unwrap();
        store_sql(&server, &format!("UPDATE messages SET content = '' WHERE id = {brown}"));
        store_sql(&server, &format!("UPDATE messages SET content = 'completely rewritten words' WHERE id = {lazy}"));
        let (_, body) = search(&server, "den", "q=quick");
        assert_eq!(contents(&body), ["Quick thinking, fox!"]);
        let (_, body) = search(&server, "den", "q=lazy");
        assert_eq!(contents(&body), Vec::<String>::new());
        let (_, body) = search(&server, "den", "q=rewritten");
        assert_eq!(contents(&body), ["completely rewritten words"]);
        bob.send("/search brown");
        bob.expect("No messages match.");

        // At most 10 on TCP, newest first; the limit over HTTP.
        for n in 1..=12 {
            bob.send(&format!("bulk {n}"));
            bob.expect(&format!("[den] bob: bulk {n}"));
        }
        let lines = bob.ask("/search bulk", |l| l.ends_with("bob: bulk 3"));
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert!(lines[0].ends_with("bob: bulk 12"), "{lines:?}");
        bob.send("/search zzzznothing");
        bob.expect("No messages match.");
        let (_, body) = search(&server, "den", "q=bulk");
        assert_eq!(contents(&body).len(), 10);
        let (_, body) = search(&server, "den", "q=bulk&limit=100");
        assert_eq!(contents(&body).len(), 12);

        // A private room answers as a room that does not exist to non-members.
        let mut alice = tcp_registered(&server, "alice");
        alice.send("/create vault private");
        alice.wait_for(|l| l == "---");
        alice.send("secret plans");
        alice.expect("[vault] alice: secret plans");
        alice.send("/search plans");
        alice.wait_for(|l| l.ends_with("alice: secret plans"));
        let (missing_status, missing) = search(&server, "nowhere", "q=plans");
        let bob_session = guest(&server, "bobby");
        for query in ["q=plans".to_string(), format!("q=plans&sessionId={bob_session}")] {
            let (status, body) = search(&server, "vault", &query);
            assert_eq!(status, missing_status, "{body}");
            assert_eq!(body["error"].as_str().unwrap().replace("vault", "nowhere"), missing["error"].as_str().unwrap());
        }
        let owner = account(&server, "alice", false);
        let (status, body) = search(&server, "vault", &format!("q=plans&sessionId={owner}"));
        assert_eq!((status, contents(&body)), (200, vec!["secret plans".to_string()]));
    }

    /// The WebSocket `read` frame moves the marker like the endpoint.
    fn a_websocket_read_frame_moves_the_marker(store) {
        let server = unlimited(store);
        let bob = guest(&server, "bob");
        command(&server, &bob, "/create hall");
        let first = say(&server, &bob, "first");
        say(&server, &bob, "second");
        let alice = account(&server, "alice", true);
        let addr = server.http.unwrap();
        let open = |session: &str| {
            let request = format!("ws://{addr}/api/ws?sessionId={session}");
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            tungstenite::client(request, stream).expect("upgraded").0
        };
        let answer = |ws: &mut tungstenite::WebSocket<TcpStream>, reference: &str| loop {
            if let tungstenite::Message::Text(text) = ws.read().unwrap() {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["ref"] == reference {
                    return frame;
                }
            }
        };
        let mut ws = open(&alice);
        ws.send(tungstenite::Message::text(json!({ "type": "read", "room": "hall", "id": first, "ref": "r1" }).to_string()))
            .unwrap();
        let ack = answer(&mut ws, "r1");
        assert_eq!(ack, json!({ "type": "ack", "ref": "r1", "room": "hall", "id": first }));
        let item = room_item(&server, &format!("?sessionId={alice}"), "hall").unwrap();
        assert_eq!(item["unread"], 1, "{item}");
        ws.send(tungstenite::Message::text(json!({ "type": "read", "room": "hall", "id": 0, "ref": "r2" }).to_string())).unwrap();
        assert_eq!(answer(&mut ws, "r2")["type"], "error");
        let mut guest_ws = open(&bob);
        guest_ws
            .send(tungstenite::Message::text(json!({ "type": "read", "room": "hall", "id": first, "ref": "g" }).to_string()))
            .unwrap();
        let refused = answer(&mut guest_ws, "g");
        assert_eq!(refused["type"], "error");
        assert!(refused["error"].as_str().unwrap().contains("only registered users have read markers"), "{refused}");
    }
}

/// Three instances: a message sent on one counts as unread for a registered
/// user asking another, and a marker set on a third is seen there too.
fn unread_counts_and_markers_are_service_wide(redis: Redis) {
    let cluster = common::Cluster::start_on(redis, 3, |b| b.env("MSG_RATE", 0));
    let (one, two, three) = (&cluster.servers[0], &cluster.servers[1], &cluster.servers[2]);
    let room = "plaza";
    let alice_three = account(three, "alice", true);
    let alice_two = account(two, "alice", false);
    let bob = guest(one, "bob");
    command(one, &bob, &format!("/create {room}"));
    let ids: Vec<i64> = ["m1 @alice", "m2", "m3"].iter().map(|t| say(one, &bob, t)).collect();
    let query = format!("?sessionId={alice_three}");
    let item = eventually("instance 3 counts the unread messages", || {
        let item = room_item(three, &query, room);
        (item.as_ref().is_some_and(|i| i["unread"] == 3), item)
    });
    let item = item.unwrap();
    assert_eq!((item["mentions"].clone(), item["lastMessageId"].clone()), (json!(1), json!(ids[2])), "{item}");
    // Instance 2 marks the first two read.
    eventually("instance 2 knows the room", || {
        let (status, body) = read(two, &alice_two, room, json!(ids[1]));
        (status == 200, body)
    });
    let item = room_item(three, &query, room).unwrap();
    assert_eq!((item["unread"].clone(), item["mentions"].clone()), (json!(1), json!(0)), "{item}");
    // Search on instance 3 finds instance 1's message.
    let (status, body) = search(three, room, &format!("q=m2&sessionId={alice_three}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(contents(&body), ["m2"]);
}

for_each_redis!(unread_counts_and_markers_are_service_wide);
