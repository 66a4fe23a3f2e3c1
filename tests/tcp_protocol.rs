//! The netcat line protocol (`docs/protocol.md`) and its limits, over real
//! sockets against the real binary, on every store.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

/// The reply to `/create` or `/join` for a room without history.
fn empty_history(verb: &str, room: &str) -> String {
    format!("{verb}: {room}\n--- Recent Messages ---\nNo recent messages\n---")
}

for_each_store! {
    fn greeting_and_first_room_match_the_spec(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.send("/create general");
        alice.expect_lines(&empty_history("Created and joined room", "general"));
        alice.send("Hello world!");
        alice.expect("[general] alice: Hello world!");
    }

    fn two_users_chat_and_see_joins_and_leaves(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.send("/create general");
        alice.expect_lines(&empty_history("Created and joined room", "general"));
        alice.send("Hello world!");
        alice.expect("[general] alice: Hello world!");

        let mut bob = server.login("bob");
        bob.send("/join general");
        bob.expect_lines("Joined room: general\n--- Recent Messages ---\n[general] alice: Hello world!\n---");
        alice.expect("[system] bob joined general");

        bob.send("hi alice");
        bob.expect("[general] bob: hi alice");
        alice.expect("[general] bob: hi alice");

        bob.send("/list");
        bob.expect("Users in general (2): alice, bob");
        bob.send("/rooms");
        bob.expect_lines("Rooms (1):\n  general (2 members)");

        bob.send("/leave");
        bob.expect("Left room: general");
        alice.expect("[system] bob left general");
        bob.send("/list");
        bob.expect("Online users (2): alice, bob");

        bob.send("/quit");
        bob.expect("Goodbye!");
        assert!(bob.expect_closed().is_empty());
        alice.send("/list");
        alice.expect("Users in general (1): alice");
    }

    fn every_command_and_error_path(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        let help = alice.ask("/help", |l| l.starts_with("  /dm"));
        assert_eq!(help[0], "Available commands:");
        for command in ["/help", "/nick", "/list", "/quit", "/create", "/join", "/rooms", "/leave", "/dm"] {
            assert!(help.iter().any(|l| l.trim_start().starts_with(command)), "/help lacks {command}");
        }
        alice.send("/rooms");
        alice.expect("No rooms yet. Use /create <room> to create one.");
        alice.send("hello?");
        alice.expect("Error: you are not in a room. Use /join <room> or /create <room> first.");
        alice.send("/join nowhere");
        alice.expect("Error: room 'nowhere' does not exist. Use /create nowhere to create it.");
        alice.send("/leave");
        alice.expect("Error: you are not in a room. Use /join <room> or /create <room> first.");
        alice.send("/dance");
        alice.expect("Error: unknown command '/dance'. Type /help for available commands.");
        for (command, usage) in [
            ("/join", "/join <room>"),
            ("/create", "/create <room> [private]"),
            ("/nick", "/nick <name>"),
            ("/dm", "/dm <user> <message>"),
            ("/dm bob", "/dm <user> <message>"),
            ("/list everyone", "/list"),
        ] {
            alice.send(command);
            alice.expect(&format!("Error: usage: {usage}"));
        }
        alice.send("/create bad/name");
        alice.expect("Error: invalid room name: 'bad/name' contains '/'; use only letters, digits, '_' or '-'.");
        alice.send("/create General");
        alice.expect_lines(&empty_history("Created and joined room", "general"));
        alice.send("/create general");
        alice.expect("Error: room 'general' already exists. Use /join general to join it.");
        alice.send("/join GENERAL");
        alice.expect("Error: you are already in room 'general'.");
        alice.send("/dm bob hi");
        alice.expect("Error: user 'bob' is not online. Use /list to see who is.");
        alice.send("/dm alice hi");
        alice.expect("Error: you cannot send a direct message to yourself.");

        let mut bob = server.login("bob");
        bob.send("/nick Alice");
        bob.expect("Error: nickname 'Alice' is already taken. Choose another one.");
        bob.send("/nick b@d");
        bob.expect("Error: invalid nickname: 'b@d' contains '@'; use only letters, digits, '_' or '-'.");
        bob.join("general");
        alice.expect("[system] bob joined general");
        bob.send("/nick robert");
        bob.expect("You are now known as robert");
        alice.expect("[system] bob is now known as robert");
        alice.send("/list");
        alice.expect("Users in general (2): alice, robert");

        alice.send("/dm Robert psst");
        alice.expect("[DM to robert] psst");
        bob.expect("[DM from alice] psst");

        alice.send("/create random");
        alice.expect_lines(&empty_history("Created and joined room", "random"));
        bob.expect("[system] alice left general");
        alice.send("/rooms");
        alice.expect_lines("Rooms (2):\n  general (1 member)\n  random (1 member)");
    }

    fn nicknames_are_unique_ignoring_case_and_checked(store) {
        let server = TestServer::start(store);
        let _alice = server.login("alice");
        let mut other = server.connect();
        other.expect("Welcome to Baby Discord!");
        other.expect_prompt();
        other.send("ALICE");
        other.expect("Error: nickname 'ALICE' is already taken. Choose another one.");
        other.expect_prompt();
        other.send("no spaces");
        other.expect("Error: invalid nickname: 'no spaces' contains ' '; use only letters, digits, '_' or '-'.");
        other.expect_prompt();
        other.send(&"x".repeat(33));
        other.expect(&format!("Error: invalid nickname: '{}' is longer than 32 characters.", "x".repeat(33)));
        other.expect_prompt();
        other.send(&"x".repeat(32));
        other.expect(&format!("Welcome, {}!", "x".repeat(32)));
    }

    fn history_on_join_is_exactly_the_last_ten_oldest_first(store) {
        let server = TestServer::builder(store).env("MSG_RATE", 0).start();
        let mut alice = server.login("alice");
        alice.create("busy");
        for i in 1..=25 {
            alice.send(&format!("message {i}"));
            alice.expect(&format!("[busy] alice: message {i}"));
        }
        let mut bob = server.login("bob");
        let reply = bob.ask("/join busy", |l| l == "---");
        let expected: Vec<String> = ["Joined room: busy".to_string(), "--- Recent Messages ---".to_string()]
            .into_iter()
            .chain((16..=25).map(|i| format!("[busy] alice: message {i}")))
            .chain(["---".to_string()])
            .collect();
        assert_eq!(reply, expected);
    }

    fn rooms_and_history_survive_a_restart(store) {
        let mut server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.create("keep");
        alice.create("empty");
        alice.join("keep");
        alice.send("still here");
        alice.expect("[keep] alice: still here");
        drop(alice);
        assert!(server.terminate().success());
        server.restart();
        let mut bob = server.login("bob");
        bob.send("/rooms");
        bob.expect_lines("Rooms (2):\n  empty (0 members)\n  keep (0 members)");
        let reply = bob.ask("/join keep", |l| l == "---");
        assert_eq!(reply[2], "[keep] alice: still here");
    }

    fn a_message_echoed_before_kill_9_is_there_after_restart(store) {
        let mut server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.create("durable");
        alice.send("acknowledged");
        alice.expect("[durable] alice: acknowledged");
        server.kill9();
        server.restart();
        let mut bob = server.login("bob");
        let reply = bob.ask("/join durable", |l| l == "---");
        assert_eq!(reply[2], "[durable] alice: acknowledged");
    }

    fn a_stalled_reader_delays_nobody_and_is_disconnected(store) {
        let server = TestServer::builder(store)
            .env("MSG_RATE", 0)
            .env("OUTBOX_CAPACITY", 64)
            .env("WRITE_TIMEOUT_SECS", 1)
            .start();
        let mut flooder = server.login("flooder");
        flooder.create("flood");
        let mut stalled = server.login("stalled");
        stalled.join("flood");
        let mut reader = server.login("reader");
        reader.join("flood");
        flooder.expect("[system] stalled joined flood");
        flooder.expect("[system] reader joined flood");

        // Flood with big messages; `stalled` never reads, `reader` does.
        let text = "x".repeat(1900);
        let started = Instant::now();
        // Enough to fill the kernel's socket buffers (several MB on loopback)
        // and then the 64-event outbox.
        let total = 8000;
        let mut worst = Duration::ZERO;
        let mut dropped_notices = 0;
        for i in 0..total {
            let sent = Instant::now();
            flooder.send(&format!("{i} {text}"));
            let echo = format!("[flood] flooder: {i} {text}");
            for client in [&mut flooder, &mut reader] {
                loop {
                    let line = client.line();
                    if line == "[system] stalled disconnected" {
                        dropped_notices += 1;
                        continue;
                    }
                    assert_eq!(line, echo);
                    break;
                }
            }
            worst = worst.max(sent.elapsed());
        }
        assert!(worst < Duration::from_secs(2), "a reader was delayed {worst:?}");
        assert!(started.elapsed() < Duration::from_secs(90));
        // The stalled client was dropped and both others saw it go.
        assert_eq!(dropped_notices, 2, "the stalled client was not dropped");
        // Its socket was full, so the final error line could not get through;
        // what it still reads ends early and then the connection is closed.
        let lines = stalled.expect_closed();
        assert!(lines.len() < total, "the stalled client got everything: not dropped");
    }

    fn a_queue_overflow_ends_with_an_error_line(store) {
        // A burst larger than the outbox: the client reads, but not as fast
        // as the router queues, so it is dropped while its socket has room
        // for the final line.
        let server = TestServer::builder(store).env("MSG_RATE", 0).env("OUTBOX_CAPACITY", 8).start();
        let mut victim = server.login("victim");
        victim.create("burst");
        let burst: String = (0..500).map(|i| format!("burst {i}\n")).collect();
        victim.send_raw(burst.as_bytes());
        let lines = victim.expect_closed();
        assert_eq!(
            lines.last().map(String::as_str),
            Some("Error: you are not reading messages fast enough, so you were disconnected.")
        );
        assert!(lines.len() < 500);
    }

    fn a_one_megabyte_line_is_refused_and_the_connection_stays_usable(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.send_raw(&vec![b'a'; 1 << 20]);
        alice.expect("Error: line too long: at most 4096 bytes. The line was discarded.");
        alice.send_raw(b"still the same line\n");
        alice.send("/rooms");
        alice.expect("No rooms yet. Use /create <room> to create one.");
    }

    fn invalid_utf8_is_refused_and_nothing_is_delivered(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.create("bytes");
        alice.send_raw(b"caf\xe9 \xff\xfe\n");
        alice.expect("Error: invalid UTF-8: send text encoded as UTF-8. The line was discarded.");
        alice.send("café");
        alice.expect("[bytes] alice: café");
    }

    fn control_characters_are_removed_and_long_messages_refused(store) {
        let server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.create("clean");
        alice.send("red\x1b[31m alert\x07\x08!");
        alice.expect("[clean] alice: red[31m alert!");
        alice.send(&"é".repeat(2001));
        alice.expect("Error: message too long: at most 2000 characters. Nothing was sent.");
        alice.send(&"é".repeat(2000));
        alice.expect(&format!("[clean] alice: {}", "é".repeat(2000)));
    }

    fn the_rate_limit_refuses_excess_messages(store) {
        let server = TestServer::builder(store).env("MSG_RATE", 1).env("MSG_BURST", 3).start();
        let mut alice = server.login("alice");
        alice.create("fast");
        for i in 0..5 {
            alice.send(&format!("m{i}"));
        }
        // Refusals are immediate while echoes wait for their commit, so the
        // two kinds may interleave; each kind keeps its order.
        let lines: Vec<String> = (0..5).map(|_| alice.line()).collect();
        let refused = "Error: slow down: at most 1 messages per second. The message was not sent.";
        let echoes: Vec<&String> = lines.iter().filter(|l| *l != refused).collect();
        assert_eq!(echoes, ["[fast] alice: m0", "[fast] alice: m1", "[fast] alice: m2"]);
        assert_eq!(lines.iter().filter(|l| *l == refused).count(), 2);
        std::thread::sleep(Duration::from_millis(1100));
        alice.send("later");
        alice.expect("[fast] alice: later");
    }

    fn no_nickname_within_the_timeout_closes_the_connection(store) {
        let server = TestServer::builder(store).env("NICK_TIMEOUT_SECS", 1).start();
        let mut idle = server.connect();
        idle.expect("Welcome to Baby Discord!");
        idle.expect_prompt();
        let started = Instant::now();
        let rest = idle.expect_closed();
        assert_eq!(rest, ["", "Error: no nickname given within 1 seconds; closing the connection."]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn a_nickname_typed_one_byte_at_a_time_cannot_outlive_the_timeout(store) {
        let server = TestServer::builder(store).env("NICK_TIMEOUT_SECS", 1).start();
        let mut slow = server.connect();
        slow.expect("Welcome to Baby Discord!");
        slow.expect_prompt();
        let started = Instant::now();
        // A byte every 300 ms, for up to 3 s: each read is quick, the
        // whole prompt is not.
        for byte in b"alice-the-very-patient".iter() {
            if !slow.try_send_raw(&[*byte]) || started.elapsed() > Duration::from_secs(3) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let rest = slow.expect_closed();
        assert_eq!(rest.last().unwrap(), "Error: no nickname given within 1 seconds; closing the connection.");
        assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    }

    fn connections_beyond_the_limit_are_told_the_server_is_full(store) {
        let server = TestServer::builder(store).env("MAX_CONNECTIONS", 2).start();
        let _a = server.login("a");
        let _b = server.login("b");
        let mut c = server.connect();
        assert_eq!(c.expect_closed(), ["Error: server full, try again later."]);
    }

    fn big_rooms_do_not_announce_joins(store) {
        let server = TestServer::builder(store).env("ANNOUNCE_LIMIT", 2).start();
        let mut a = server.login("a");
        a.create("crowd");
        let mut b = server.login("b");
        b.join("crowd");
        a.expect("[system] b joined crowd");
        let mut c = server.login("c");
        c.join("crowd");
        // Three members now: over the limit, so no announcement.
        a.send("/list");
        a.expect("Users in crowd (3): a, b, c");
    }

    fn sigterm_tells_clients_flushes_and_exits_zero(store) {
        let mut server = TestServer::start(store);
        let mut alice = server.login("alice");
        alice.create("last");
        alice.send("final words");
        alice.expect("[last] alice: final words");
        let status = server.terminate();
        assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
        assert_eq!(alice.expect_closed(), ["[system] Server is shutting down. Goodbye!"]);
        server.restart();
        let mut bob = server.login("bob");
        let reply = bob.ask("/join last", |l| l == "---");
        assert_eq!(reply[2], "[last] alice: final words");
    }
}

#[test]
fn a_bad_setting_is_a_start_up_error_naming_the_variable() {
    for (name, value) in [("TCP_PORT", "99999"), ("MSG_RATE", "fast"), ("HISTORY_SIZE", "0"), ("BIND_ADDR", "nowhere")] {
        let (status, output) = common::run_to_exit(&[(name, value)]);
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(output.contains(name), "{name}={value}: output does not name it: {output}");
    }
}
