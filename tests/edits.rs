//! Edits and deletions (`/edit`, `/delete`, `PATCH`/`DELETE
//! /api/messages/:id`, the `edit` and `delete` events; `docs/protocol.md`,
//! "Edits and deletions"), over real sockets against the real binary, on
//! both stores and across three instances.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Redis, Store, TestServer, PATIENCE};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// One HTTP request over a fresh connection: the status and the JSON body.
fn http(server: &TestServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.http.unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n{length}\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}")))
}

fn connect(server: &TestServer, nick: &str) -> String {
    let (status, body) = http(server, "POST", "/api/connect", Some(&json!({ "nickname": nick })));
    assert_eq!(status, 200, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

/// Registers a nickname; its session id.
fn register(server: &TestServer, nick: &str) -> String {
    let body = json!({ "nickname": nick, "password": "a fine password" });
    let (status, body) = http(server, "POST", "/api/register", Some(&body));
    assert_eq!(status, 201, "{body}");
    body["data"]["sessionId"].as_str().unwrap().to_string()
}

fn command(server: &TestServer, session: &str, line: &str) -> (u16, Value) {
    http(server, "POST", "/api/command", Some(&json!({ "sessionId": session, "command": line })))
}

fn ok_command(server: &TestServer, session: &str, line: &str) -> String {
    let (status, body) = command(server, session, line);
    assert_eq!(status, 200, "{line}: {body}");
    body["message"].as_str().unwrap().to_string()
}

fn say(server: &TestServer, session: &str, content: &str) -> i64 {
    let (status, body) = http(server, "POST", "/api/message", Some(&json!({ "sessionId": session, "content": content })));
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_i64().unwrap()
}

fn edit(server: &TestServer, session: &str, id: impl std::fmt::Display, content: &str) -> (u16, Value) {
    http(server, "PATCH", &format!("/api/messages/{id}"), Some(&json!({ "sessionId": session, "content": content })))
}

fn delete(server: &TestServer, session: &str, id: impl std::fmt::Display) -> (u16, Value) {
    http(server, "DELETE", &format!("/api/messages/{id}?sessionId={session}"), None)
}

/// The room's history as (id, content, editedAt).
fn history(server: &TestServer, room: &str) -> Vec<(i64, String, Value)> {
    let (status, body) = http(server, "GET", &format!("/api/rooms/{room}/history"), None);
    assert_eq!(status, 200, "{body}");
    body["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_i64().unwrap(), m["content"].as_str().unwrap().to_string(), m["editedAt"].clone()))
        .collect()
}

/// What the database itself holds for a message: (content, deleted).
fn stored(server: &TestServer, id: i64) -> (String, bool) {
    match &server.database {
        Some(db) => {
            let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
            let row = client.query_one("SELECT content, deleted_at IS NOT NULL FROM messages WHERE id = $1", &[&id]).unwrap();
            (row.get(0), row.get(1))
        }
        None => {
            let conn = rusqlite::Connection::open(server.data_dir.path().join("baby-discord.db")).unwrap();
            conn.query_row("SELECT content, deleted_at IS NOT NULL FROM messages WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        }
    }
}

/// How many stored messages hold `text` anywhere in the database.
fn stored_with_text(server: &TestServer, text: &str) -> i64 {
    match &server.database {
        Some(db) => {
            let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
            client.query_one("SELECT count(*) FROM messages WHERE content = $1", &[&text]).unwrap().get(0)
        }
        None => {
            let conn = rusqlite::Connection::open(server.data_dir.path().join("baby-discord.db")).unwrap();
            conn.query_row("SELECT count(*) FROM messages WHERE content = ?1", [text], |r| r.get(0)).unwrap()
        }
    }
}

/// An SSE stream read as plain text (`Connection: close`).
struct Sse {
    stream: TcpStream,
    text: String,
}

/// One event: its name and data.
#[derive(Debug, Clone)]
struct Event {
    id: Option<i64>,
    kind: String,
    data: Value,
}

impl Sse {
    fn open(server: &TestServer, room: &str, session: &str, last_event_id: Option<i64>) -> Sse {
        let mut stream = TcpStream::connect(server.http.unwrap()).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let head = format!(
            "GET /api/messages/{room}?sessionId={session} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{resume}\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut sse = Sse { stream, text: String::new() };
        while !sse.text.contains("\r\n\r\n") {
            sse.fill();
        }
        let (head, rest) = sse.text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        sse.text = rest.to_string();
        sse
    }

    fn fill(&mut self) {
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the stream ended; unread: {:?}", self.text),
            Ok(n) => self.text.push_str(std::str::from_utf8(&chunk[..n]).unwrap()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no event in time; unread: {:?}", self.text)
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The next event, pings and `connected` skipped.
    fn next(&mut self) -> Event {
        loop {
            while !self.text.contains("\n\n") {
                self.fill();
            }
            let (block, rest) = self.text.split_once("\n\n").map(|(b, r)| (b.to_string(), r.to_string())).unwrap();
            self.text = rest;
            let mut event = Event { id: None, kind: String::new(), data: Value::Null };
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    event.id = Some(id.parse().unwrap());
                } else if let Some(kind) = line.strip_prefix("event: ") {
                    event.kind = kind.to_string();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data = serde_json::from_str(data).unwrap();
                }
            }
            if !event.kind.is_empty() && event.kind != "connected" && event.kind != "system" {
                return event;
            }
        }
    }
}

/// A WebSocket client (tungstenite's client).
struct Ws {
    socket: WebSocket<TcpStream>,
}

impl Ws {
    fn open(server: &TestServer, session: &str, last_event_id: Option<i64>) -> Ws {
        let addr = server.http.unwrap();
        let resume = last_event_id.map(|id| format!("&lastEventId={id}")).unwrap_or_default();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let url = format!("ws://{addr}/api/ws?sessionId={session}{resume}");
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("upgraded");
        Ws { socket }
    }

    /// The next frame, `connected`, `system` and answers skipped.
    fn next(&mut self) -> Value {
        loop {
            match self.socket.read().expect("a frame") {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if !["connected", "system", "ack", "reply"].contains(&frame["type"].as_str().unwrap()) {
                        return frame;
                    }
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    fn call(&mut self, frame: Value) -> Value {
        self.socket.send(Message::text(frame.to_string())).unwrap();
        loop {
            if let Message::Text(text) = self.socket.read().expect("an answer") {
                let answer: Value = serde_json::from_str(text.as_str()).unwrap();
                if answer["ref"] == frame["ref"] {
                    return answer;
                }
            }
        }
    }
}

/// A server without the message rate limit (tests send bursts).
fn server(store: Store) -> TestServer {
    TestServer::builder(store).env("MSG_RATE", 0).start()
}

/// bob sees m1..m3 and goes away; m1 is edited, m2 deleted, m4 sent and
/// edited; bob resumes after m3.
fn resume_after_changes(server: TestServer) {
    let alice = connect(&server, "alice");
    let bob = connect(&server, "bob");
    ok_command(&server, &alice, "/create news");
    ok_command(&server, &bob, "/join news");
    let ids: Vec<i64> = (1..=3).map(|n| say(&server, &alice, &format!("m{n}"))).collect();
    let mut stream = Sse::open(&server, "news", &bob, None);
    for id in &ids {
        assert_eq!(stream.next().id, Some(*id));
    }
    drop(stream);

    // While bob is away: m1 edited, m2 deleted, m4 sent, m4 edited.
    assert_eq!(edit(&server, &alice, ids[0], "m1, edited").0, 200);
    assert_eq!(delete(&server, &alice, ids[1]).0, 200);
    let m4 = say(&server, &alice, "m4");
    assert_eq!(edit(&server, &alice, m4, "m4, edited").0, 200);

    let mut stream = Sse::open(&server, "news", &bob, Some(ids[2]));
    let got: Vec<(String, i64, Value)> = (0..3)
        .map(|_| stream.next())
        .map(|e| (e.kind, e.data["id"].as_i64().unwrap(), e.data["content"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("edit".to_string(), ids[0], json!("m1, edited")),
            ("delete".to_string(), ids[1], Value::Null),
            // Messages it missed come as they are now.
            ("message".to_string(), m4, json!("m4, edited")),
        ]
    );
    // Then live traffic.
    let m5 = say(&server, &alice, "m5");
    assert_eq!(stream.next().id, Some(m5));
}

for_each_store! {
    fn tcp_edit_and_delete_reach_every_member_and_history(store) {
        let server = server(store);
        let mut alice = server.login("alice");
        let mut bob = server.login("bob");
        alice.create("general");
        bob.join("general");
        alice.wait_for(|l| l == "[system] bob joined general");

        // Nothing of one's own yet.
        alice.send("/edit too soon");
        alice.expect("Error: you have no message in this room to edit.");
        alice.send("/delete");
        alice.expect("Error: you have no message in this room to delete.");
        alice.send("/edit");
        alice.expect("Error: usage: /edit <new text>");

        alice.send("first words");
        alice.send("a secret I regret");
        for client in [&mut alice, &mut bob] {
            client.expect("[general] alice: first words");
            client.expect("[general] alice: a secret I regret");
        }
        // /edit takes the last message; /delete then the last one left.
        alice.send("/edit   a thought, on reflection ");
        for client in [&mut alice, &mut bob] {
            client.expect("[general] alice (edited): a thought, on reflection");
        }
        bob.send("/edit not mine");
        bob.expect("Error: you have no message in this room to edit.");
        bob.send("/delete");
        bob.expect("Error: you have no message in this room to delete.");
        alice.send("/delete");
        for client in [&mut alice, &mut bob] {
            client.expect("[system] alice deleted a message");
        }
        alice.send("/edit first words, edited");
        for client in [&mut alice, &mut bob] {
            client.expect("[general] alice (edited): first words, edited");
        }
        // An edit is refused like a message would be.
        alice.send("/edit \u{7}");
        alice.expect("Error: the message is empty.");

        // History on join shows the current text, marked, and not the deleted one.
        let mut carol = server.login("carol");
        let lines = carol.ask("/join general", |l| l == "---");
        assert_eq!(
            lines,
            ["Joined room: general", "--- Recent Messages ---", "[general] alice (edited): first words, edited", "---"]
        );
        let items = history(&server, "general");
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].1, "first words, edited");
        assert!(items[0].2.is_string(), "{items:?}");

        // The deleted text is gone from the database itself, the row kept.
        assert_eq!(stored_with_text(&server, "a secret I regret"), 0);
        assert_eq!(stored_with_text(&server, "a thought, on reflection"), 0);
        assert_eq!(stored(&server, items[0].0 + 1), (String::new(), true));

        // A guest is the same user when it comes back under the same
        // nickname: its messages are still its own.
        alice.send("/delete");
        alice.wait_for(|l| l == "[system] alice deleted a message");
        alice.send("/delete");
        alice.expect("Error: you have no message in this room to delete.");
        alice.send("said before leaving");
        alice.expect("[general] alice: said before leaving");
        alice.send("/quit");
        alice.expect_closed();
        let mut alice = server.login("alice");
        alice.join("general");
        alice.send("/edit said after coming back");
        alice.expect("[general] alice (edited): said after coming back");
        bob.wait_for(|l| l == "[general] alice (edited): said after coming back");
    }

    fn http_edit_and_delete_answer_with_their_statuses_and_events(store) {
        let server = server(store);
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        let carol = connect(&server, "carol");
        ok_command(&server, &alice, "/create lounge");
        ok_command(&server, &bob, "/join lounge");
        let mut stream = Sse::open(&server, "lounge", &bob, None);
        let mut ws = Ws::open(&server, &carol, None);
        assert_eq!(ws.call(json!({ "type": "join", "room": "lounge", "ref": "j" }))["type"], "ack");

        let id = say(&server, &alice, "helo");
        assert_eq!(stream.next().data["content"], "helo");
        assert_eq!(ws.next()["content"], "helo");

        // Refusals, and nothing delivered for them.
        assert_eq!(edit(&server, &bob, id, "mine now").0, 403);
        assert_eq!(delete(&server, &bob, id).0, 403);
        let (status, body) = edit(&server, &alice, 999_999_999, "x");
        assert_eq!((status, body["success"].clone()), (404, json!(false)), "{body}");
        assert_eq!(delete(&server, &alice, 999_999_999).0, 404);
        assert_eq!(edit(&server, &alice, "abc", "x").0, 400);
        assert_eq!(edit(&server, &alice, id, "   ").0, 400);
        assert_eq!(edit(&server, &alice, id, &"x".repeat(2001)).0, 400);
        let (status, body) = http(&server, "PATCH", &format!("/api/messages/{id}"), Some(&json!({ "sessionId": alice })));
        assert_eq!(status, 400, "{body}");
        let unknown = uuid::Uuid::new_v4();
        assert_eq!(edit(&server, &unknown.to_string(), id, "x").0, 404);

        // An edit: answered once committed, then every member's event.
        let (status, body) = edit(&server, &alice, id, "hello");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["id"], id);
        assert_eq!(body["data"]["room"], "lounge");
        let edited_at = body["data"]["editedAt"].as_str().unwrap().to_string();
        let event = stream.next();
        assert_eq!(event.kind, "edit");
        assert_eq!(event.id, None, "edits carry no event id: ids are where streams resume");
        assert_eq!(event.data, json!({ "id": id, "room": "lounge", "content": "hello", "editedAt": edited_at }));
        let frame = ws.next();
        assert_eq!(frame, json!({ "type": "edit", "id": id, "room": "lounge", "content": "hello", "editedAt": edited_at }));
        let items = history(&server, "lounge");
        assert_eq!(items, vec![(id, "hello".to_string(), json!(edited_at))]);

        // The TCP forms through /api/command and a WebSocket command frame.
        let second = say(&server, &alice, "second");
        assert_eq!(stream.next().data["id"], second);
        assert_eq!(ws.next()["id"], second);
        assert_eq!(ok_command(&server, &alice, "/edit second, edited"), "[lounge] alice (edited): second, edited");
        assert_eq!(stream.next().data["content"], "second, edited");
        assert_eq!(ws.next()["content"], "second, edited");
        let (status, body) = command(&server, &bob, "/delete");
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "you have no message in this room to delete.");
        let third = ws.call(json!({ "type": "message", "content": "from carol", "ref": "m" }))["id"].as_i64().unwrap();
        assert_eq!(stream.next().data["id"], third);
        let answer = ws.call(json!({ "type": "command", "command": "/edit from carol, edited", "ref": "e" }));
        assert_eq!(answer["message"], "[lounge] carol (edited): from carol, edited");
        // (The WebSocket's own edit event came before the answer.)
        assert_eq!(stream.next().data["content"], "from carol, edited");

        // A delete: `{"success":true}`, a `delete` event, gone from history and the database.
        let (status, body) = delete(&server, &alice, id);
        assert_eq!((status, body), (200, json!({ "success": true })));
        let event = stream.next();
        assert_eq!((event.kind.as_str(), event.data), ("delete", json!({ "id": id, "room": "lounge" })));
        assert_eq!(ws.next(), json!({ "type": "delete", "id": id, "room": "lounge" }));
        assert!(history(&server, "lounge").iter().all(|(i, _, _)| *i != id));
        assert_eq!(stored(&server, id), (String::new(), true));
        assert_eq!(stored_with_text(&server, "hello"), 0);
        // A deleted message is no longer there to change.
        assert_eq!(delete(&server, &alice, id).0, 404);
        assert_eq!(edit(&server, &alice, id, "back").0, 404);
        // The body may name the session instead of the query.
        let (status, _) = http(&server, "DELETE", &format!("/api/messages/{second}"), Some(&json!({ "sessionId": alice })));
        assert_eq!(status, 200);
        assert_eq!(stream.next().kind, "delete");
    }

    fn a_private_rooms_owner_may_delete_any_message_in_it(store) {
        let server = server(store);
        let owner = register(&server, "owner");
        let member = register(&server, "member");
        let outsider = register(&server, "outsider");
        ok_command(&server, &owner, "/create hideout private");
        ok_command(&server, &owner, "/invite member");
        ok_command(&server, &member, "/join hideout");
        let theirs = say(&server, &member, "a member's words");
        let owners = say(&server, &owner, "the owner's words");
        let mut stream = Sse::open(&server, "hideout", &member, Some(owners));

        // Who cannot see the room is told the message does not exist.
        assert_eq!(edit(&server, &outsider, theirs, "x").0, 404);
        assert_eq!(delete(&server, &outsider, theirs).0, 404);
        // The owner may delete, not edit, someone else's message.
        assert_eq!(edit(&server, &owner, theirs, "put in their mouth").0, 403);
        assert_eq!(delete(&server, &member, owners).0, 403);
        assert_eq!(delete(&server, &owner, theirs).0, 200);
        let event = stream.next();
        assert_eq!((event.kind.as_str(), event.data), ("delete", json!({ "id": theirs, "room": "hideout" })));
        assert_eq!(stored(&server, theirs), (String::new(), true));
        // Removed from the room, a member's old messages are out of reach too.
        ok_command(&server, &owner, "/kick member");
        assert_eq!(edit(&server, &member, owners, "x").0, 404);
    }

    fn a_resuming_sse_stream_gets_the_edits_and_deletions_it_missed(store) {
        resume_after_changes(server(store));
    }

    fn a_resume_past_the_change_log_reads_the_changes_from_the_store(store) {
        // A log of one change: those made while bob was away come from the store.
        resume_after_changes(TestServer::builder(store).env("MSG_RATE", 0).env("CHANGE_LOG_SIZE", 1).start());
    }

    fn a_resume_read_from_the_store_gets_the_changes_in_order(store) {
        // A ring buffer of 2: what bob missed is read back from the store.
        let server = TestServer::builder(store).env("MSG_RATE", 0).env("HISTORY_SIZE", 2).start();
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        ok_command(&server, &alice, "/create archive");
        ok_command(&server, &bob, "/join archive");
        let first: Vec<i64> = (1..=3).map(|n| say(&server, &alice, &format!("a{n}"))).collect();
        // bob saw up to a3; then a1 is edited, a4..a6 sent, a2 deleted, a5 deleted.
        assert_eq!(edit(&server, &alice, first[0], "a1, edited").0, 200);
        let later: Vec<i64> = (4..=6).map(|n| say(&server, &alice, &format!("a{n}"))).collect();
        assert_eq!(delete(&server, &alice, first[1]).0, 200);
        assert_eq!(delete(&server, &alice, later[1]).0, 200);

        let mut stream = Sse::open(&server, "archive", &bob, Some(first[2]));
        let got: Vec<String> = (0..4)
            .map(|_| stream.next())
            .map(|e| format!("{} {} {}", e.kind, e.data["id"], e.data["content"].as_str().unwrap_or("-")))
            .collect();
        assert_eq!(
            got,
            [
                format!("edit {} a1, edited", first[0]),
                format!("message {} a4", later[0]),
                format!("message {} a6", later[2]),
                format!("delete {} -", first[1]),
            ]
        );
        // Nothing about a5, which bob never saw; then live traffic.
        let a7 = say(&server, &alice, "a7");
        assert_eq!(stream.next().id, Some(a7));
    }

    fn a_resuming_websocket_gets_the_edits_and_deletions_it_missed(store) {
        let server = server(store);
        let alice = connect(&server, "alice");
        let bob = connect(&server, "bob");
        ok_command(&server, &alice, "/create chat");
        ok_command(&server, &bob, "/join chat");
        let one = say(&server, &alice, "one");
        let two = say(&server, &alice, "two");
        let mut ws = Ws::open(&server, &bob, None);
        assert_eq!(ws.next()["id"], one);
        assert_eq!(ws.next()["id"], two);
        drop(ws);
        assert_eq!(edit(&server, &alice, one, "one, edited").0, 200);
        assert_eq!(delete(&server, &alice, two).0, 200);
        let three = say(&server, &alice, "three");

        let mut ws = Ws::open(&server, &bob, Some(two));
        let frame = ws.next();
        assert_eq!((frame["type"].clone(), frame["id"].clone(), frame["content"].clone()), (json!("edit"), json!(one), json!("one, edited")));
        assert_eq!(ws.next(), json!({ "type": "delete", "id": two, "room": "chat" }));
        assert_eq!(ws.next()["id"], three);
        // History on attach: no deleted message, the edited one as it is now.
        assert_eq!(edit(&server, &alice, three, "three, edited").0, 200);
        assert_eq!(ws.next()["type"], "edit");
        drop(ws);
        assert_eq!(delete(&server, &alice, one).0, 200);
        let mut ws = Ws::open(&server, &bob, None);
        let frame = ws.next();
        assert_eq!((frame["id"].clone(), frame["content"].clone()), (json!(three), json!("three, edited")));
        assert!(frame["editedAt"].is_string(), "{frame}");
    }
}

#[test]
fn changes_while_the_database_is_away_are_refused_and_nothing_is_delivered() {
    let database = common::TestDatabase::create();
    let proxy = common::proxy::Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = format!("postgres://postgres@{}/{}", proxy.addr, database.name);
    let server = TestServer::builder(Store::Postgres).env("DATABASE_URL", &url).env("MSG_RATE", 0).start();
    let alice = connect(&server, "alice");
    ok_command(&server, &alice, "/create outage");
    let mut bob = server.login("bob");
    bob.join("outage");
    let id = say(&server, &alice, "before");
    bob.expect("[outage] alice: before");

    proxy.cut();
    let (status, body) = edit(&server, &alice, id, "during");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "the message store is unavailable, so nothing was changed. Try again shortly.");
    assert_eq!(delete(&server, &alice, id).0, 503);
    assert_eq!(command(&server, &alice, "/edit during").0, 503);
    // Nothing that was not stored reaches anyone.
    bob.expect_silence(Duration::from_millis(500));

    proxy.restore();
    let started = Instant::now();
    loop {
        let (status, body) = edit(&server, &alice, id, "after");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < Duration::from_secs(20), "the store did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    bob.expect("[outage] alice (edited): after");
}

for_each_redis!(edits_and_deletions_reach_every_instance_in_order);

/// The room's lines and events as one comparable text.
fn tcp_line_is_room_traffic(line: &str) -> bool {
    line.starts_with("[hall] ") || line.ends_with("deleted a message")
}

fn edits_and_deletions_reach_every_instance_in_order(redis: Redis) {
    let cluster = Cluster::start_on(redis, 3, |b| b.env("MSG_RATE", 0));
    let [one, two, three] = [&cluster.servers[0], &cluster.servers[1], &cluster.servers[2]];
    let mut alice = one.login("alice");
    alice.create("hall");
    // The room reaches the other instances through the bus.
    let started = Instant::now();
    let mut bob = two.login("bob");
    loop {
        let answer = bob.ask("/join hall", |l| l == "---" || l.starts_with("Error: "));
        if answer.last().unwrap() == "---" {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "{answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut carol = three.login("carol");
    carol.join("hall");
    // An SSE and a WebSocket member on each of the other two instances.
    let mut streams: Vec<Sse> =
        [(two, "dave"), (three, "frank")].into_iter().map(|(s, nick)| Sse::open(s, "hall", &connect(s, nick), None)).collect();
    let mut sockets: Vec<Ws> = [(two, "erin"), (three, "gina")]
        .into_iter()
        .map(|(s, nick)| {
            let mut ws = Ws::open(s, &connect(s, nick), None);
            assert_eq!(ws.call(json!({ "type": "join", "room": "hall", "ref": "j" }))["type"], "ack");
            ws
        })
        .collect();

    alice.send("one");
    alice.send("/edit one, edited");
    alice.send("two");
    alice.send("/delete");
    alice.send("three");
    let expected = [
        "[hall] alice: one",
        "[hall] alice (edited): one, edited",
        "[hall] alice: two",
        "[system] alice deleted a message",
        "[hall] alice: three",
    ];
    for client in [&mut alice, &mut bob, &mut carol] {
        let lines: Vec<String> = (0..expected.len()).map(|_| client.wait_for(tcp_line_is_room_traffic)).collect();
        assert_eq!(lines, expected);
    }
    let in_order = ["message one", "edit one, edited", "message two", "delete -", "message three"];
    for stream in &mut streams {
        let sse: Vec<String> = (0..5)
            .map(|_| stream.next())
            .map(|e| format!("{} {}", e.kind, e.data["content"].as_str().unwrap_or("-")))
            .collect();
        assert_eq!(sse, in_order);
    }
    for ws in &mut sockets {
        let frames: Vec<String> = (0..5)
            .map(|_| ws.next())
            .map(|f| format!("{} {}", f["type"].as_str().unwrap(), f["content"].as_str().unwrap_or("-")))
            .collect();
        assert_eq!(frames, in_order);
    }

    // An edit made on another instance through HTTP, and history everywhere.
    let id = history(three, "hall").iter().find(|(_, c, _)| c == "three").unwrap().0;
    let alice_http = connect(one, "alice2");
    assert_eq!(edit(one, &alice_http, id, "not yours").0, 403);
    for server in [one, two, three] {
        let contents: Vec<String> = history(server, "hall").into_iter().map(|(_, c, _)| c).collect();
        assert_eq!(contents, ["one, edited", "three"]);
    }

    // An instance that starts listening to a room after a deletion reads
    // the room back from the store: the deleted message keeps its place in
    // the order and is shown to nobody.
    alice.create("late");
    alice.send("x");
    alice.send("y");
    alice.send("/delete");
    alice.wait_for(|l| l == "[system] alice deleted a message");
    let started = Instant::now();
    let lines = loop {
        let answer = carol.ask("/join late", |l| l == "---" || l.starts_with("Error: "));
        if answer.last().unwrap() == "---" {
            break answer;
        }
        assert!(started.elapsed() < PATIENCE, "{answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let from = lines.iter().position(|l| l == "Joined room: late").expect("joined");
    assert_eq!(lines[from..], ["Joined room: late", "--- Recent Messages ---", "[late] alice: x", "---"]);
    alice.send("z");
    carol.wait_for(|l| l == "[late] alice: z");
}
