//! `GET /api/openapi.json` is true to the running server: every route of
//! the server's table is in the document with the same methods and no
//! other; and for every operation, a request built from the document's own
//! examples is answered with a documented status, a success with the
//! documented required fields, and a bad request (an unknown room, an empty
//! body) with a documented status too.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Store, TestServer, PATIENCE};
use serde_json::{json, Map, Value};

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// One request over a fresh connection. Streams (an event stream, a
/// WebSocket) are read only up to the end of their head.
fn request(server: &TestServer, method: &str, target: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(server.http.unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", server.http.unwrap());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Connection")) {
        head.push_str("Connection: close\r\n");
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream.write_all(head.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {target}: the connection closed before the head ended");
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim()))
        .unwrap_or("")
        .to_string();
    let streaming = status == 101 || content_type.starts_with("text/event-stream");
    if !streaming {
        stream.read_to_end(&mut bytes).unwrap();
    }
    Answer { status, content_type, body: bytes[head_end..].to_vec() }
}

fn post_json(server: &TestServer, path: &str, body: Value) -> Value {
    let answer = request(server, "POST", path, &[], Some(&body.to_string()));
    assert_eq!(answer.status, 200, "{path}: {}", String::from_utf8_lossy(&answer.body));
    serde_json::from_slice(&answer.body).unwrap()
}

/// Resolves a local `$ref`.
/// The password of the accounts the test registers.
const PASSWORD: &str = "probe password";

/// Registers `nickname` (201) and answers with the connect answer.
fn register(server: &TestServer, nickname: &str) -> Value {
    let body = json!({ "nickname": nickname, "password": PASSWORD }).to_string();
    let answer = request(server, "POST", "/api/register", &[], Some(&body));
    assert_eq!(answer.status, 201, "register {nickname}: {}", String::from_utf8_lossy(&answer.body));
    serde_json::from_slice(&answer.body).unwrap()
}

fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> &'d Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {reference}"))
        }
        None => schema,
    }
}

/// Checks that `value` has every field `schema` requires, all the way down.
fn check_required(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let (Some(required), Some(object)) = (schema.get("required").and_then(Value::as_array), value.as_object()) {
        for field in required {
            let field = field.as_str().unwrap();
            assert!(object.contains_key(field), "{at}: the documented field '{field}' is missing from {value}");
        }
    }
    if let (Some(properties), Some(object)) = (schema.get("properties").and_then(Value::as_object), value.as_object()) {
        for (name, property) in properties {
            if let Some(inner) = object.get(name).filter(|v| !v.is_null()) {
                check_required(doc, property, inner, &format!("{at}.{name}"));
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check_required(doc, items, item, &format!("{at}[{i}]"));
        }
    }
}

/// The request an operation's examples describe, with `room` in the path.
struct Built {
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
}

fn build(path: &str, operation: &Value, room: &str, fill: &dyn Fn(&str) -> String) -> Built {
    // The `{room}` segment: its example (a message id, for PATCH and
    // DELETE /api/messages/{room}) when asked rightly, else `room`.
    let wrongly = room != "general";
    let mut target = path.to_string();
    let mut query = Vec::new();
    let mut headers = Vec::new();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let (name, place) = (parameter["name"].as_str().unwrap(), parameter["in"].as_str().unwrap());
        let example = parameter.get("example").map(|e| match e {
            Value::String(s) => fill(s),
            other => other.to_string(),
        });
        match (place, example) {
            ("path", Some(value)) if name != "room" || !wrongly => {
                target = target.replace(&format!("{{{name}}}"), &value)
            }
            ("query", Some(value)) => query.push(format!("{name}={value}")),
            ("query", None) => assert!(parameter["required"] != true, "{path}: required '{name}' has no example"),
            _ => {}
        }
    }
    target = target.replace("{room}", room);
    if !query.is_empty() {
        target = format!("{target}?{}", query.join("&"));
    }
    if operation["responses"].get("101").is_some() {
        headers.push(("Connection", "Upgrade".to_string()));
        headers.push(("Upgrade", "websocket".to_string()));
        headers.push(("Sec-WebSocket-Version", "13".to_string()));
        headers.push(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()));
    }
    let body = operation.pointer("/requestBody/content/application~1json/example").map(|example| {
        let text = example.to_string();
        fill(&text)
    });
    Built { target, headers, body }
}

fn documented(operation: &Value, status: u16) -> bool {
    operation["responses"].get(status.to_string()).is_some()
}

#[test]
fn the_openapi_document_matches_the_routes_and_the_answers() {
    let server = TestServer::builder(Store::Sqlite).env("MSG_RATE", 0).start();
    let answer = request(&server, "GET", "/api/openapi.json", &[], None);
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("application/json"), "{}", answer.content_type);
    let doc: Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: &Map<String, Value> = doc["paths"].as_object().unwrap();

    // The route table and the document name the same routes and methods.
    let table = baby_discord::adapters::http::route_table();
    let verbs = ["get", "post", "put", "patch", "delete"];
    for (path, allow) in &table {
        let served: Vec<String> = allow
            .split(", ")
            .map(str::to_ascii_lowercase)
            .filter(|m| verbs.contains(&m.as_str()))
            .collect();
        let item = paths.get(*path).unwrap_or_else(|| panic!("the route {path} is not in the OpenAPI document"));
        let described: Vec<String> = item.as_object().unwrap().keys().filter(|m| verbs.contains(&m.as_str())).cloned().collect();
        let (mut served, mut described) = (served, described);
        served.sort();
        described.sort();
        assert_eq!(served, described, "methods of {path}");
    }
    for path in paths.keys() {
        assert!(table.iter().any(|(p, _)| p == path), "the document describes {path}, which the server does not route");
    }

    // Every operation, asked as its examples say, and asked wrongly. The
    // sessions are registered accounts (password PASSWORD in the examples),
    // so the account endpoints answer them too.
    let owner = register(&server, "owner")["data"]["sessionId"].clone();
    post_json(&server, "/api/command", json!({ "sessionId": owner, "command": "/create general" }));
    let mut probes = 0;
    for (n, (path, item)) in paths.iter().enumerate() {
        for (method, operation) in item.as_object().unwrap().iter().filter(|(m, _)| verbs.contains(&m.as_str())) {
            let method = method.to_ascii_uppercase();
            // A fresh session in the room for each operation (one of them ends it).
            let nick = format!("probe{n}{}", method.len());
            let session = register(&server, &nick)["data"]["sessionId"]
                .as_str()
                .unwrap()
                .to_string();
            post_json(&server, "/api/command", json!({ "sessionId": session, "command": "/join general" }));
            // A message of the session's own, for the operations on one.
            let message_id = if ["PATCH", "DELETE"].contains(&method.as_str()) {
                let sent = post_json(&server, "/api/message", json!({ "sessionId": session, "content": "probe" }));
                sent["data"]["id"].to_string()
            } else {
                String::new()
            };
            let fill = |text: &str| {
                text.replace("SESSION", &session)
                    .replace("PASSWORD", PASSWORD)
                    .replace("NICK", &format!("new{n}"))
                    .replace("CLIENT_MSG_ID", &uuid::Uuid::new_v4().to_string())
                    .replace("MESSAGE_ID", &message_id)
            };

            let good = build(path, operation, "general", &fill);
            let headers: Vec<(&str, &str)> = good.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let answer = request(&server, &method, &good.target, &headers, good.body.as_deref());
            let text = String::from_utf8_lossy(&answer.body).to_string();
            assert!(documented(operation, answer.status), "{method} {path}: status {} is not documented: {text}", answer.status);
            assert!(answer.status < 300, "{method} {path} as its examples say: {} {text}", answer.status);
            let schema = operation.pointer(&format!("/responses/{}/content/application~1json/schema", answer.status));
            if let Some(schema) = schema {
                let value: Value = serde_json::from_slice(&answer.body)
                    .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
                check_required(&doc, schema, &value, &format!("{method} {path}"));
            }
            probes += 1;

            // Wrongly: an unknown room, or an empty JSON object.
            let bad = if path.contains("{room}") {
                Some(build(path, operation, "no-such-room", &fill))
            } else if good.body.is_some() {
                Some(Built { body: Some("{}".into()), ..good })
            } else {
                None
            };
            if let Some(bad) = bad {
                let headers: Vec<(&str, &str)> = bad.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let answer = request(&server, &method, &bad.target, &headers, bad.body.as_deref());
                let text = String::from_utf8_lossy(&answer.body);
                assert!(answer.status >= 400, "{method} {} was accepted: {text}", bad.target);
                assert!(documented(operation, answer.status), "{method} {path}: status {} is not documented: {text}", answer.status);
                let value: Value = serde_json::from_slice(&answer.body).unwrap();
                check_required(&doc, &json!({ "$ref": "#/components/schemas/Error" }), &value, &format!("{method} {path}"));
            }
        }
    }
    assert!(probes >= 16, "only {probes} operations were probed");

    // Optional fields the examples cannot show are documented too: a
    // registered session's room list carries lastMessageId, unread and mentions.
    let rooms = request(&server, "GET", &format!("/api/rooms?sessionId={}", owner.as_str().unwrap()), &[], None);
    let rooms: Value = serde_json::from_slice(&rooms.body).unwrap();
    let item = rooms["data"]["rooms"][0].as_object().unwrap().clone();
    let documented_fields = doc
        .pointer("/components/schemas/RoomsResponse/properties/data/properties/rooms/items/properties")
        .and_then(Value::as_object)
        .unwrap();
    for field in ["lastMessageId", "unread", "mentions"] {
        assert!(item.contains_key(field), "a registered session's room lacks {field}: {item:?}");
    }
    for field in item.keys() {
        assert!(documented_fields.contains_key(field), "the room field {field} is not documented");
    }
}
