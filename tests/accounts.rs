//! Accounts (`docs/protocol.md`, "Accounts"): registered nicknames with a
//! password on TCP and HTTP, login limits, lasting sessions by cookie, and a
//! database made by the previous release upgrading in place. Real sockets,
//! the real binary, both stores.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Client, Store, TestServer, PATIENCE};
use serde_json::{json, Value};

const PW: &str = "hunter22hunter";

/// An HTTP answer: status, headers, JSON body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `bd_session` value the answer sets.
    fn cookie(&self) -> String {
        let set = self.header("Set-Cookie").unwrap_or_else(|| panic!("no Set-Cookie in {}", self.body));
        set.split(';').next().unwrap().trim().strip_prefix("bd_session=").expect("the bd_session cookie").to_string()
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
}

fn request(server: &TestServer, method: &str, path: &str, cookie: Option<&str>, body: Option<&Value>) -> Response {
    let mut stream = TcpStream::connect(server.http.unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: theme=dark; bd_session={cookie}\r\n"));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Response { status, headers, body: body.to_string() }
}

fn post(server: &TestServer, path: &str, body: Value) -> Response {
    request(server, "POST", path, None, Some(&body))
}

fn post_with(server: &TestServer, path: &str, cookie: &str, body: Value) -> Response {
    request(server, "POST", path, Some(cookie), Some(&body))
}

/// A TCP guest that registers its nickname.
fn registered(server: &TestServer, nick: &str) -> Client {
    let mut client = server.login(nick);
    client.send(&format!("/register {PW}"));
    client.expect(&format!("Registered {nick}. From now on, log in as {nick} with your password."));
    client
}

/// Logs in to an account at the TCP prompt.
fn log_in(server: &TestServer, nick: &str, password: &str) -> Client {
    let mut client = server.connect();
    client.expect("Welcome to Baby Discord!");
    client.expect_prompt();
    client.send(nick);
    client.expect_text(&format!("Password for {nick}: "));
    client.send(password);
    client.expect(&format!("Welcome back, {nick}!"));
    client.expect("Type /help for available commands.");
    client
}

for_each_store! {
    fn a_registered_nickname_asks_for_its_password(store) {
        let mut server = TestServer::start(store);
        let mut alice = registered(&server, "alice");
        alice.send("/quit");
        alice.expect("Goodbye!");

        // A wrong password sends the user back to the nickname prompt.
        let mut c = server.connect();
        c.expect("Welcome to Baby Discord!");
        c.expect_prompt();
        c.send("ALICE");
        c.expect_text("Password for ALICE: ");
        c.send("not-the-password");
        c.expect("Error: wrong password for alice.");
        c.expect_prompt();
        c.send("alice");
        c.expect_text("Password for alice: ");
        c.send(PW);
        c.expect("Welcome back, alice!");
        c.expect("Type /help for available commands.");
        c.send("/quit");
        c.expect("Goodbye!");

        // The account outlives the process.
        server.kill9();
        server.restart();
        let mut alice = log_in(&server, "alice", PW);
        alice.send("/list");
        alice.expect("Online users (1): alice");
    }

    fn guests_cannot_take_a_registered_nickname(store) {
        let server = TestServer::start(store);
        let mut alice = registered(&server, "alice");
        let mut bob = server.login("bob");
        bob.send("/nick Alice");
        bob.expect("Error: nickname 'Alice' is registered. Log in with its password or choose another.");
        alice.send("/quit");
        alice.expect("Goodbye!");
        // Offline too.
        std::thread::sleep(Duration::from_millis(200));
        bob.send("/nick alice");
        bob.expect("Error: nickname 'alice' is registered. Log in with its password or choose another.");
        let r = post(&server, "/api/connect", json!({ "nickname": "alice" }));
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.error(), "nickname 'alice' is registered. Log in with its password or choose another.");
        // A registered user keeps its name.
        let mut alice = log_in(&server, "alice", PW);
        alice.send("/nick alicia");
        alice.expect("Error: you are logged in as alice, a registered nickname, so it cannot change. Use /login <nick> <password> to switch accounts.");
    }

    fn an_account_may_be_online_several_times(store) {
        let server = TestServer::start(store);
        let mut first = registered(&server, "alice");
        let mut second = log_in(&server, "alice", PW);
        let r = post(&server, "/api/connect", json!({ "nickname": "alice", "password": PW }));
        assert_eq!(r.status, 200, "{}", r.body);
        let mut bob = server.login("bob");
        bob.send("/list");
        bob.expect("Online users (2): alice, bob");
        bob.send("/dm alice psst");
        bob.expect("[DM to alice] psst");
        first.expect("[DM from bob] psst");
        second.expect("[DM from bob] psst");
        // One session leaving leaves the others, and the name stays taken.
        first.send("/quit");
        first.expect("Goodbye!");
        std::thread::sleep(Duration::from_millis(200));
        bob.send("/dm alice still there?");
        bob.expect("[DM to alice] still there?");
        second.expect("[DM from bob] still there?");
        bob.send("/nick alice");
        bob.expect("Error: nickname 'alice' is registered. Log in with its password or choose another.");
    }

    fn register_password_and_login_commands(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.send("/register short");
        alice.expect("Error: invalid password: it must be at least 8 characters long.");
        alice.send(&format!("/register {}", "x".repeat(129)));
        alice.expect("Error: invalid password: it must be at most 128 characters long.");
        alice.send("/register abc\u{7}defghij");
        alice.expect("Error: invalid password: it must not contain control or invisible characters.");
        alice.send("/password old12345 new12345");
        alice.expect("Error: only registered users have a password. Use /register <password> first.");
        alice.send(&format!("/register {PW}"));
        alice.expect("Registered alice. From now on, log in as alice with your password.");
        alice.send(&format!("/register {PW}"));
        alice.expect("Error: nickname 'alice' is already registered. Log in with /login alice <password>.");
        alice.send("/password wrong-old-password new-password-1");
        alice.expect("Error: wrong password for alice.");
        alice.send(&format!("/password {PW} new-password-1"));
        alice.expect("Password changed.");

        // /login turns a guest connection into the account.
        let mut guest = server.login("guest1");
        guest.send("/login alice hunter22hunter");
        guest.expect("Error: wrong password for alice.");
        guest.send("/login nobody whatever-pw");
        guest.expect("Error: there is no account named 'nobody'. Use /register <password> to register your nickname.");
        guest.send("/login alice new-password-1");
        guest.expect("Welcome back, alice!");
        guest.send("/list");
        guest.expect("Online users (1): alice");
        // No password ever shows in the log.
        assert!(!server.log().contains(PW) && !server.log().contains("new-password-1"), "{}", server.log());
    }

    fn http_register_connect_password_logout(store) {
        let server = TestServer::start(store);
        let r = post(&server, "/api/register", json!({ "nickname": "carol", "password": "tiny" }));
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error(), "invalid password: it must be at least 8 characters long.");
        let r = post(&server, "/api/register", json!({ "nickname": "carol", "password": PW }));
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["data"]["nickname"], "carol");
        let set = r.header("Set-Cookie").unwrap().to_string();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
        let cookie = r.cookie();
        assert_eq!(cookie, r.json()["data"]["sessionId"].as_str().unwrap());
        let r = post(&server, "/api/register", json!({ "nickname": "Carol", "password": PW }));
        assert_eq!(r.status, 409, "{}", r.body);

        // The cookie names the session everywhere a sessionId does.
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/list" }));
        assert_eq!(r.json()["message"], "Online users (1): carol", "{}", r.body);

        for (body, status) in [
            (json!({ "nickname": "carol" }), 401),
            (json!({ "nickname": "carol", "password": "wrong-password" }), 401),
        ] {
            let r = post(&server, "/api/connect", body);
            assert_eq!(r.status, status, "{}", r.body);
        }
        let r = post(&server, "/api/connect", json!({ "nickname": "carol", "password": PW }));
        assert_eq!(r.status, 200, "{}", r.body);
        let second = r.cookie();

        let r = post_with(&server, "/api/password", &second, json!({ "old": "wrong-password", "new": "another-password" }));
        assert_eq!(r.status, 401, "{}", r.body);
        let r = post_with(&server, "/api/password", &second, json!({ "old": PW, "new": "x" }));
        assert_eq!(r.status, 400, "{}", r.body);
        let r = post_with(&server, "/api/password", &second, json!({ "old": PW, "new": "another-password" }));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("another-password"));

        let r = post_with(&server, "/api/logout", &second, json!({}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("Set-Cookie").unwrap().contains("Max-Age=0"));
        let r = post_with(&server, "/api/command", &second, json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
        // The other session is untouched; a forged cookie is 401.
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/list" }));
        assert_eq!(r.status, 200, "{}", r.body);
        let r = post_with(&server, "/api/command", "5f0d3c3e-1111-4222-8333-944445555666", json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
        let r = post_with(&server, "/api/command", "not-a-token", json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
        let r = post(&server, "/api/connect", json!({ "nickname": "carol", "password": "another-password" }));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!server.log().contains("another-password"));
    }

    fn a_registered_session_survives_a_restart(store) {
        let mut server = TestServer::start(store);
        let r = post(&server, "/api/register", json!({ "nickname": "dana", "password": PW }));
        let cookie = r.cookie();
        let guest = post(&server, "/api/connect", json!({ "nickname": "visitor" })).cookie();
        server.kill9();
        server.restart();
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/list" }));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["message"], "Online users (1): dana");
        // A guest's session ends with the process.
        let r = post_with(&server, "/api/command", &guest, json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
        // Logged out, it is over after a restart too.
        assert_eq!(post_with(&server, "/api/logout", &cookie, json!({})).status, 200);
        server.kill9();
        server.restart();
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
    }

    fn login_attempts_are_limited(store) {
        let server = TestServer::builder(store).env("LOGIN_ATTEMPTS", 2).start();
        drop(registered(&server, "erin"));
        let mut c = server.connect();
        c.expect("Welcome to Baby Discord!");
        for _ in 0..2 {
            c.expect_prompt();
            c.send("erin");
            c.expect_text("Password for erin: ");
            c.send("bad-password");
            c.expect("Error: wrong password for erin.");
        }
        c.expect_prompt();
        c.send("erin");
        c.expect_text("Password for erin: ");
        c.send(PW);
        let line = c.line();
        let secs: u64 = line
            .strip_prefix("Error: too many login attempts; try again in ")
            .and_then(|rest| rest.strip_suffix(" seconds."))
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        assert!((1..=60).contains(&secs), "{line}");
        let r = post(&server, "/api/connect", json!({ "nickname": "erin", "password": PW }));
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(r.error().starts_with("too many login attempts; try again in "), "{}", r.body);
    }

    fn a_database_of_the_previous_release_upgrades_in_place(store) {
        let dir = tempfile::tempdir().unwrap();
        let (env, _db) = old_database(store, dir.path());
        let mut builder = TestServer::builder(store);
        for (k, v) in &env {
            builder = builder.env(k, v);
        }
        let server = builder.start();
        assert!(server.log().contains("applying migration 0004_accounts"), "{}", server.log());
        // The old user is a guest; the old room keeps its history.
        let mut olga = server.login("olga");
        olga.send("/join lobby");
        olga.expect("Joined room: lobby");
        olga.expect("--- Recent Messages ---");
        olga.expect("[lobby] Olga: from before");
        olga.expect("---");
        olga.send(&format!("/register {PW}"));
        olga.expect("Registered olga. From now on, log in as olga with your password.");
        olga.send("after");
        olga.expect("[lobby] olga: after");
    }

    fn dms_sent_while_the_recipient_logs_in_are_shown_exactly_once(store) {
        // Each DM is either in a "while you were away" block or live, never
        // both and never neither, however it races the logins: bob logs in
        // and out over and over while alice keeps sending.
        let server = TestServer::builder(store).env("MSG_RATE", 0).start();
        let mut alice = registered(&server, "alice");
        let mut bob = registered(&server, "bob");
        bob.send("/quit");
        bob.expect("Goodbye!");
        const COUNT: usize = 300;
        let sender = std::thread::spawn(move || {
            for i in 0..COUNT {
                alice.send(&format!("/dm bob n{i}"));
                let line = alice.line();
                assert!(line.starts_with(&format!("[DM to bob] n{i}")), "{line}");
            }
        });
        let mut seen = vec![0; COUNT];
        let mut count = |line: &str| {
            if let Some(n) = line.strip_prefix("[DM from alice] n") {
                seen[n.parse::<usize>().unwrap()] += 1;
            }
        };
        while !sender.is_finished() {
            let mut bob = log_in(&server, "bob", PW);
            bob.send("/quit");
            loop {
                let line = bob.line();
                if line == "Goodbye!" {
                    break;
                }
                count(&line);
            }
        }
        sender.join().unwrap();
        // Whatever reached nobody live is waiting for the next login, and
        // everything bob gets arrives before the answer to a command.
        let mut bob = log_in(&server, "bob", PW);
        bob.send("/rooms");
        loop {
            let line = bob.line();
            if line.starts_with("Rooms (") || line.starts_with("No rooms yet.") {
                break;
            }
            count(&line);
        }
        let wrong: Vec<(usize, i32)> = seen.iter().copied().enumerate().filter(|&(_, count)| count != 1).collect();
        assert!(wrong.is_empty(), "DMs seen other than once (number, times): {wrong:?}");
    }

    fn dms_between_registered_users_are_stored_and_shown_at_login(store) {
        let mut server = TestServer::start(store);
        let mut alice = registered(&server, "alice");
        let mut bob = registered(&server, "bob");
        bob.send("/quit");
        bob.expect("Goodbye!");
        std::thread::sleep(Duration::from_millis(200));
        alice.send("/dm bob are you there?");
        alice.expect("[DM to bob] are you there? (bob is offline; they will see it when they log in)");
        alice.send("/dm BOB second one");
        alice.expect("[DM to bob] second one (bob is offline; they will see it when they log in)");
        alice.send("/dm nobody hello");
        alice.expect("Error: user 'nobody' is not online. Use /list to see who is.");
        alice.send("/dm alice me");
        alice.expect("Error: you cannot send a direct message to yourself.");
        // Acknowledged means committed: it survives kill -9.
        server.kill9();
        server.restart();
        let mut bob = log_in(&server, "bob", PW);
        bob.expect("--- Direct messages while you were away ---");
        bob.expect("[DM from alice] are you there?");
        bob.expect("[DM from alice] second one");
        bob.expect("---");
        bob.send("/quit");
        bob.expect("Goodbye!");
        // Shown once.
        let mut bob = log_in(&server, "bob", PW);
        bob.send("/list");
        bob.expect("Online users (1): bob");

        // Live DMs are stored too, and reach every session of the account.
        let mut alice = log_in(&server, "alice", PW);
        let r = post(&server, "/api/connect", json!({ "nickname": "bob", "password": PW }));
        let cookie = r.cookie();
        alice.send("/dm bob live one");
        alice.expect("[DM to bob] live one");
        bob.expect("[DM from alice] live one");
        let r = request(&server, "GET", "/api/dms", Some(&cookie), None);
        assert_eq!(r.status, 200, "{}", r.body);
        let list = &r.json()["data"]["conversations"];
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list[0]["with"], "alice");
        assert_eq!(list[0]["unread"], 0);
        let r = request(&server, "GET", "/api/dms/alice/history?limit=2", Some(&cookie), None);
        assert_eq!(r.status, 200, "{}", r.body);
        let messages = r.json()["data"]["messages"].clone();
        let texts: Vec<&str> = messages.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
        assert_eq!(texts, ["second one", "live one"]);
        let before = messages[0]["id"].as_i64().unwrap();
        let r = request(&server, "GET", &format!("/api/dms/alice/history?before={before}"), Some(&cookie), None);
        assert_eq!(r.json()["data"]["messages"][0]["content"], "are you there?");
        assert_eq!(r.json()["data"]["messages"].as_array().unwrap().len(), 1);
        // HTTP sends are stored before the answer.
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/dm alice from the web" }));
        assert_eq!(r.json()["message"], "[DM to alice] from the web", "{}", r.body);
        alice.expect("[DM from bob] from the web");
        // Guests have no stored DMs; DMs with guests stay live-only.
        let guest = post(&server, "/api/connect", json!({ "nickname": "guest" })).cookie();
        assert_eq!(request(&server, "GET", "/api/dms", Some(&guest), None).status, 403);
        let r = request(&server, "GET", "/api/dms/nobody/history", Some(&cookie), None);
        assert_eq!(r.status, 404, "{}", r.body);
        let r = request(&server, "GET", "/api/dms/alice/history?limit=0", Some(&cookie), None);
        assert_eq!(r.status, 400, "{}", r.body);
        alice.send("/dm guest hi guest");
        alice.expect("[DM to guest] hi guest");
        alice.send("/dm ghost hi");
        alice.expect("Error: user 'ghost' is not online. Use /list to see who is.");
    }

    fn private_rooms_exist_only_for_their_members(store) {
        let mut server = TestServer::start(store);
        let mut guest = server.login("guest");
        guest.send("/create secret private");
        guest.expect("Error: only registered users can create private rooms. Use /register <password> first.");
        let mut alice = registered(&server, "alice");
        alice.send("/create secret private");
        alice.expect("Created and joined room: secret");
        alice.wait_for(|l| l == "---");
        alice.send("the plan");
        alice.expect("[secret] alice: the plan");
        let mut bob = registered(&server, "bob");
        let mut carol = registered(&server, "carol");

        // Outsiders cannot tell it from a room that does not exist.
        for outsider in [&mut guest, &mut bob] {
            outsider.send("/rooms");
            outsider.expect("No rooms yet. Use /create <room> to create one.");
            outsider.send("/join secret");
            outsider.expect("Error: room 'secret' does not exist. Use /create secret to create it.");
        }
        let bob_cookie = post(&server, "/api/connect", json!({ "nickname": "bob", "password": PW })).cookie();
        let outsider_views = |cookie: Option<&str>| {
            let rooms = request(&server, "GET", "/api/rooms", cookie, None);
            assert_eq!(rooms.json()["data"]["rooms"], json!([]), "{}", rooms.body);
            for path in ["/api/rooms/secret/members", "/api/rooms/secret/history", "/api/rooms/nothere/history"] {
                let r = request(&server, "GET", path, cookie, None);
                assert_eq!(r.status, 404, "{path}: {}", r.body);
                assert_eq!(r.error(), format!("room '{}' does not exist. Use /create {} to create it.", path.split('/').nth(3).unwrap(), path.split('/').nth(3).unwrap()));
            }
            let r = request(&server, "GET", "/api/messages/secret", cookie, None);
            assert_eq!(r.status, if cookie.is_some() { 404 } else { 400 }, "{}", r.body);
        };
        outsider_views(None);
        outsider_views(Some(&bob_cookie));

        // Owner rules.
        carol.send("/invite bob");
        carol.expect("Error: you are not in a room. Use /join <room> or /create <room> first.");
        carol.send("/create open");
        carol.wait_for(|l| l == "---");
        carol.send("/invite bob");
        carol.expect("Error: room 'open' is not private: everyone can join it. Join a private room you own first.");
        alice.send("/invite nobody");
        alice.expect("Error: 'nobody' is not a registered user; only registered users can be invited.");
        alice.send("/invite guest");
        alice.expect("Error: 'guest' is not a registered user; only registered users can be invited.");
        alice.send("/kick bob");
        alice.expect("Error: bob is not a member of 'secret'.");
        alice.send("/invite Bob");
        alice.expect("Invited bob to secret.");
        bob.expect("[system] alice invited you to secret. Type /join secret to enter.");
        alice.send("/invite bob");
        alice.expect("Error: bob can already enter 'secret'.");
        bob.send("/rooms");
        bob.expect("Rooms (2):");
        bob.expect("  open (1 member)");
        bob.expect("  secret (1 member)");
        let rooms = request(&server, "GET", "/api/rooms", Some(&bob_cookie), None);
        assert_eq!(rooms.json()["data"]["rooms"].as_array().unwrap().len(), 2, "{}", rooms.body);
        bob.send("/join secret");
        bob.expect("Joined room: secret");
        bob.expect("--- Recent Messages ---");
        bob.expect("[secret] alice: the plan");
        bob.expect("---");
        alice.expect("[system] bob joined secret");
        bob.send("/invite carol");
        bob.expect("Error: only the owner of 'secret' can invite or remove members.");
        bob.send("/kick alice");
        bob.expect("Error: only the owner of 'secret' can invite or remove members.");
        alice.send("/kick alice");
        alice.expect("Error: the owner cannot be removed from their room.");

        // Access is kept in the store.
        server.kill9();
        server.restart();
        let mut alice = log_in(&server, "alice", PW);
        let mut bob = log_in(&server, "bob", PW);
        let mut guest = server.login("guest");
        guest.send("/join secret");
        guest.expect("Error: room 'secret' does not exist. Use /create secret to create it.");
        bob.send("/join secret");
        bob.wait_for(|l| l == "---");
        let joined = alice.ask("/join secret", |l| l == "---" || l.starts_with("Error"));
        assert_eq!(joined.last().unwrap(), "---", "{joined:?}");
        bob.expect("[system] alice joined secret");
        alice.send("/kick bob");
        alice.expect("[system] bob left secret");
        alice.expect("Removed bob from secret.");
        bob.expect("[system] alice removed you from secret.");
        bob.send("/rooms");
        bob.expect("Rooms (1):");
        bob.expect("  open (0 members)");
        bob.send("hello?");
        bob.expect("Error: you are not in a room. Use /join <room> or /create <room> first.");
        bob.send("/join secret");
        bob.expect("Error: room 'secret' does not exist. Use /create secret to create it.");
        let r = request(&server, "GET", "/api/rooms/secret/history", Some(&bob_cookie), None);
        assert_eq!(r.status, 404, "{}", r.body);
    }

    fn an_expired_session_is_refused(store) {
        let server = TestServer::start(store);
        let cookie = post(&server, "/api/register", json!({ "nickname": "gina", "password": PW })).cookie();
        assert_eq!(post_with(&server, "/api/disconnect", &cookie, json!({})).status, 200);
        // Its time runs out (as after SESSION_TTL_DAYS).
        let sql = "UPDATE auth_sessions SET expires_at = created_at";
        match &server.database {
            Some(db) => {
                let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
                client.batch_execute(sql).unwrap();
            }
            None => {
                let conn = rusqlite::Connection::open(server.data_dir.path().join("baby-discord.db")).unwrap();
                conn.execute_batch(sql).unwrap();
            }
        }
        let r = post_with(&server, "/api/command", &cookie, json!({ "command": "/list" }));
        assert_eq!(r.status, 401, "{}", r.body);
        // Nothing secret is ever in the metrics or the log.
        let metrics = request(&server, "GET", "/metrics", None, None).body;
        assert!(!metrics.contains(PW) && !metrics.contains("argon2"));
        assert!(!server.log().contains(PW) && !server.log().contains("$argon2"));
    }
}

/// Opens the store of `store` at the schema of the previous release (the
/// first two migrations) with a user, a room and a message in it; returns
/// the environment a server needs to use it.
fn old_database(store: Store, dir: &std::path::Path) -> (Vec<(String, String)>, Option<common::TestDatabase>) {
    let schema = [
        include_str!("../sql/sqlite/0001_initial.sql"),
        include_str!("../sql/sqlite/0002_room_sequence.sql"),
    ];
    let data = "INSERT INTO users (id, nickname, nickname_key, created_at, last_seen_at) VALUES (1, 'Olga', 'olga', 1, 1);
                INSERT INTO rooms (id, name, created_at) VALUES (1, 'lobby', 1);
                INSERT INTO messages (room_id, user_id, nickname, content, created_at, seq) VALUES (1, 1, 'Olga', 'from before', 1, 1);";
    match store {
        Store::Sqlite => {
            let conn = rusqlite::Connection::open(dir.join("baby-discord.db")).unwrap();
            conn.execute_batch("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL);").unwrap();
            for (sql, version) in schema.iter().zip(["0001_initial", "0002_room_sequence"]) {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations VALUES (?1, 1)", [version]).unwrap();
            }
            conn.execute_batch(data).unwrap();
            (vec![("DATA_DIR".into(), dir.display().to_string())], None)
        }
        Store::Postgres => {
            let db = common::TestDatabase::create();
            let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
            client
                .batch_execute("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());")
                .unwrap();
            let schema = [
                include_str!("../sql/postgres/0001_initial.sql"),
                include_str!("../sql/postgres/0002_room_sequence.sql"),
            ];
            for (sql, version) in schema.iter().zip(["0001_initial", "0002_room_sequence"]) {
                client.batch_execute(sql).unwrap();
                client.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).unwrap();
            }
            client
                .batch_execute(
                    "INSERT INTO users (id, nickname, nickname_key, created_at, last_seen_at) VALUES (1, 'Olga', 'olga', now(), now());
                     INSERT INTO rooms (id, name, created_at) VALUES (1, 'lobby', now());
                     INSERT INTO messages (room_id, user_id, nickname, content, created_at, seq) VALUES (1, 1, 'Olga', 'from before', now(), 1);",
                )
                .unwrap();
            client.batch_execute("SELECT setval(pg_get_serial_sequence('users', 'id'), 10); SELECT setval(pg_get_serial_sequence('rooms', 'id'), 10);").unwrap();
            (vec![("DATABASE_URL".into(), db.url.clone())], Some(db))
        }
    }
}


/// Asks `command` until its answer satisfies `pred` (news between
/// instances travels through Redis).
fn eventually(client: &mut Client, command: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        client.send(command);
        let line = client.line();
        if pred(&line) {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "{command}: still {line:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn accounts_are_service_wide_on_several_instances() {
    let cluster = common::Cluster::start(2);
    let (one, two) = (&cluster.servers[0], &cluster.servers[1]);
    let mut alice = registered(one, "alice");
    let mut carol = registered(one, "carol");
    // A guest on the other instance cannot take the name, online or not.
    let mut guest = two.login("guest");
    guest.send("/nick alice");
    guest.expect("Error: nickname 'alice' is registered. Log in with its password or choose another.");
    let r = post(two, "/api/connect", json!({ "nickname": "alice" }));
    assert_eq!(r.status, 401, "{}", r.body);
    // The account logs in on the other instance while online on the first.
    eventually(&mut guest, "/list", |l| l.contains("alice"));
    let mut alice_two = log_in(two, "alice", PW);
    // The login is complete once a command is answered (the stored-DM
    // lookup that follows the welcome has run). A DM committed inside that
    // window is shown in the "while you were away" block: see the note on
    // issue 11.
    alice_two.send("/rooms");
    alice_two.wait_for(|l| l.starts_with("Rooms (") || l.starts_with("No rooms yet."));
    // A DM reaches its sessions on both instances.
    carol.send("/dm alice hello both");
    carol.expect("[DM to alice] hello both");
    alice.expect("[DM from carol] hello both");
    alice_two.expect("[DM from carol] hello both");
    // Registering the same name from two instances at once: exactly one wins.
    let mut d1 = one.login("dave");
    d1.send("/quit");
    d1.expect("Goodbye!");
    std::thread::sleep(Duration::from_millis(300));
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let a = scope.spawn(|| post(one, "/api/register", json!({ "nickname": "erin", "password": PW })).status);
        let b = scope.spawn(|| post(two, "/api/register", json!({ "nickname": "erin", "password": PW })).status);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted[0], 201, "{answers:?}");
    assert_ne!(sorted[1], 201, "{answers:?}");
}

#[test]
fn private_rooms_are_private_on_every_instance() {
    let cluster = common::Cluster::start(2);
    let (one, two) = (&cluster.servers[0], &cluster.servers[1]);
    let mut alice = registered(one, "alice");
    let mut bob = registered(two, "bob");
    let mut outsider = registered(two, "eve");
    alice.send("/create secret private");
    alice.wait_for(|l| l == "---");
    alice.send("/create open");
    alice.wait_for(|l| l == "---");
    // The other instance learns of both rooms; the private one stays hidden.
    eventually(&mut outsider, "/rooms", |l| l == "Rooms (1):");
    outsider.expect("  open (1 member)");
    std::thread::sleep(Duration::from_millis(300));
    outsider.send("/rooms");
    outsider.expect("Rooms (1):");
    outsider.expect("  open (1 member)");
    outsider.send("/join secret");
    outsider.expect("Error: room 'secret' does not exist. Use /create secret to create it.");
    let r = request(two, "GET", "/api/rooms/secret/history", None, None);
    assert_eq!(r.status, 404, "{}", r.body);

    alice.send("/join secret");
    alice.wait_for(|l| l == "---");
    alice.send("/invite bob");
    alice.expect("Invited bob to secret.");
    bob.expect("[system] alice invited you to secret. Type /join secret to enter.");
    bob.send("/join secret");
    bob.wait_for(|l| l == "---");
    bob.send("across instances");
    bob.expect("[secret] bob: across instances");
    // [system] lines cross instances now: alice sees bob come in first.
    alice.expect("[system] bob joined secret");
    alice.expect("[secret] bob: across instances");
    outsider.send("/join secret");
    outsider.expect("Error: room 'secret' does not exist. Use /create secret to create it.");

    alice.send("/kick bob");
    alice.wait_for(|l| l == "Removed bob from secret.");
    bob.expect("[system] alice removed you from secret.");
    bob.send("/join secret");
    bob.expect("Error: room 'secret' does not exist. Use /create secret to create it.");
}

#[test]
fn logging_out_ends_the_session_on_every_instance() {
    let cluster = common::Cluster::start(2);
    let (one, two) = (&cluster.servers[0], &cluster.servers[1]);
    let cookie = post(one, "/api/register", json!({ "nickname": "frank", "password": PW })).cookie();
    // The same cookie brings the session to life on the other instance.
    let r = post_with(two, "/api/command", &cookie, json!({ "command": "/list" }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(post_with(one, "/api/logout", &cookie, json!({})).status, 200);
    // The other instance finds out from the store within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = post_with(two, "/api/command", &cookie, json!({ "command": "/list" }));
        if r.status == 401 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(std::time::Instant::now() < deadline, "still logged in on the other instance");
        std::thread::sleep(Duration::from_millis(500));
    }
}
