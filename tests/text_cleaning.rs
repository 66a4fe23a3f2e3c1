//! Control characters, Unicode bidi controls and invisible formatting never
//! reach another user, and no refusal echoes them back: over real sockets
//! against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Store, TestServer, PATIENCE};
use serde_json::{json, Value};

/// What must never come back to a screen: control characters, bidi
/// controls and invisible formatting.
fn dirty(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn assert_clean(text: &str) {
    assert!(!text.chars().any(dirty), "{text:?} has a control or invisible character");
}

/// One HTTP request over a fresh connection: status and JSON body.
fn request(server: &TestServer, head: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.http.expect("the server logs its HTTP address")).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = format!("{head}\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
        .into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the server answers and closes");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}")))
}

fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    request(server, &format!("POST {path} HTTP/1.1"), body.to_string().as_bytes())
}

/// The `error` of a refusal, checked clean.
fn refusal(answer: (u16, Value), status: u16) -> String {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["success"], false);
    let error = answer.1["error"].as_str().expect("an error sentence").to_string();
    assert_clean(&error);
    error
}

#[test]
fn bidi_and_invisible_characters_never_reach_another_user() {
    let server = TestServer::start(Store::Sqlite);
    let mut alice = server.login("alice");
    alice.create("spoof");
    let mut bob = server.login("bob");
    bob.join("spoof");
    alice.wait_for(|l| l == "[system] bob joined spoof");

    alice.send("see \u{202E}txt.exe\u{202C} and\u{200B}zero\u{2066}iso\u{2069}\u{FEFF}\x1b[2J");
    let expected = "[spoof] alice: see txt.exe andzeroiso[2J";
    alice.expect(expected);
    bob.expect(expected);

    alice.send("\u{202E}\u{200B}\u{FEFF}");
    alice.expect("Error: the message is empty.");

    alice.send("/dm bob psst\u{202E}lol");
    alice.expect("[DM to bob] psstlol");
    bob.expect("[DM from alice] psstlol");

    // The same through HTTP: stored and shown cleaned.
    let (status, body) = post(&server, "/api/connect", &json!({ "nickname": "carol" }));
    assert_eq!(status, 200, "{body}");
    let session = body["data"]["sessionId"].as_str().unwrap().to_string();
    let (status, body) = post(&server, "/api/command", &json!({ "sessionId": session, "command": "/join spoof" }));
    assert_eq!(status, 200, "{body}");
    bob.wait_for(|l| l == "[system] carol joined spoof");
    let (status, body) =
        post(&server, "/api/message", &json!({ "sessionId": session, "content": "x\u{202E}y\u{2060}z" }));
    assert_eq!(status, 200, "{body}");
    bob.expect("[spoof] carol: xyz");
    let (status, history) = request(&server, "GET /api/rooms/spoof/history HTTP/1.1", b"");
    assert_eq!(status, 200);
    for message in history["data"]["messages"].as_array().unwrap() {
        assert_clean(message["content"].as_str().unwrap());
    }
}

#[test]
fn tcp_refusals_echo_no_control_or_invisible_characters() {
    let server = TestServer::start(Store::Sqlite);
    let long = "x".repeat(40);

    // At the nickname prompt.
    let mut other = server.connect();
    other.expect("Welcome to Baby Discord!");
    other.expect_prompt();
    other.send(&format!("\x1b[2J{long}"));
    other.expect(&format!("Error: invalid nickname: '[2J{long}' is longer than 32 characters."));
    other.expect_prompt();
    other.send("ali\u{202E}ce");
    let line = other.line();
    assert!(line.starts_with("Error: invalid nickname: 'alice' contains "), "{line:?}");
    assert_clean(&line);
    other.expect_prompt();
    other.send("alice");
    other.expect("Welcome, alice!");
    other.expect("Type /help for available commands.");
    let mut alice = other;

    alice.send(&format!("/nick \x1b[2J{long}"));
    alice.expect(&format!("Error: invalid nickname: '[2J{long}' is longer than 32 characters."));
    alice.send("/nick a\u{200B}b");
    let line = alice.line();
    assert!(line.starts_with("Error: invalid nickname: 'ab' contains "), "{line:?}");
    assert_clean(&line);

    alice.send(&format!("/join \x1b]0;pwned\x07{long}"));
    alice.expect(&format!("Error: invalid room name: ']0;pwned{long}' is longer than 32 characters."));
    for verb in ["/create", "/join"] {
        alice.send(&format!("{verb} gen\u{200B}eral"));
        let line = alice.line();
        assert!(line.starts_with("Error: invalid room name: 'general' contains "), "{line:?}");
        assert_clean(&line);
    }
    alice.send("/rooms");
    alice.expect("No rooms yet. Use /create <room> to create one.");

    alice.send("/dm \x1b[2Jbob hi");
    alice.expect("Error: user '[2Jbob' is not online. Use /list to see who is.");
    alice.send("/dm \u{202E}bob hi");
    alice.expect("Error: user 'bob' is not online. Use /list to see who is.");
    alice.send("/\x1b[2Jdance");
    alice.expect("Error: unknown command '/[2Jdance'. Type /help for available commands.");
    alice.send("/da\u{2067}nce");
    alice.expect("Error: unknown command '/dance'. Type /help for available commands.");
}

#[test]
fn http_refusals_echo_no_control_or_invisible_characters() {
    let server = TestServer::start(Store::Sqlite);
    let error = refusal(post(&server, "/api/connect", &json!({ "nickname": "\u{202E}evil" })), 400);
    assert!(error.starts_with("invalid nickname: 'evil' contains"), "{error}");
    let error = refusal(post(&server, "/api/connect", &json!({ "nickname": format!("\x1b[2J{}", "x".repeat(40)) })), 400);
    assert!(error.contains("'[2Jxxx"), "{error}");

    let (status, body) = post(&server, "/api/connect", &json!({ "nickname": "alice" }));
    assert_eq!(status, 200, "{body}");
    let session = body["data"]["sessionId"].as_str().unwrap().to_string();
    let command = |line: &str| post(&server, "/api/command", &json!({ "sessionId": session, "command": line }));
    let error = refusal(command("/dm \x1b[2Jbob hi"), 404);
    assert_eq!(error, "user '[2Jbob' is not online. Use /list to see who is.");
    let error = refusal(command("/\x1b[2Jdance"), 400);
    assert!(error.starts_with("unknown command '/[2Jdance'"), "{error}");
    refusal(command("/join ab\u{200B}cd"), 400);
    refusal(command(&format!("/create \u{1b}[2J{}", "y".repeat(40))), 400);
    let (status, body) = command("/create general");
    assert_eq!(status, 200, "{body}");
    let error = refusal(
        post(&server, "/api/message", &json!({ "sessionId": session, "content": "hi", "room": "\x1b[2Jother\u{202E}" })),
        400,
    );
    assert!(error.contains("not '[2Jother'"), "{error}");

    // The request line itself: a raw escape byte is no valid request line
    // (and is not echoed); a percent-encoded one is echoed as sent.
    let error = refusal(request(&server, "GET /api/\x1b[2Jnope HTTP/1.1", b""), 400);
    assert_eq!(error, "malformed request line.");
    let error = refusal(request(&server, "X\x1b[2J /api/rooms HTTP/1.1", b""), 400);
    assert_eq!(error, "malformed request line.");
    let error = refusal(request(&server, "GET /api/%1B[2Jnope%E2%80%AE HTTP/1.1", b""), 404);
    assert_eq!(error, "no such endpoint: GET /api/%1B[2Jnope%E2%80%AE");
}
