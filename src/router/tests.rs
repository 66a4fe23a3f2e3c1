//! The router driven through its channel, without sockets: each session's
//! sink is a [`TestSink`] whose events the test reads, the store is a real
//! SQLite file in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::event::Overflow;
use crossbeam_channel::Receiver;
use std::sync::atomic::AtomicBool;

/// A session's sink for tests: a bounded queue the test reads.
struct TestSink {
    events: crossbeam_channel::Sender<Event>,
    capacity: usize,
    closed: Mutex<Option<CloseReason>>,
    is_closed: AtomicBool,
    /// What the sink reports as its unsent bytes (a client not reading).
    backlog: std::sync::atomic::AtomicUsize,
}

impl Sink for TestSink {
    fn deliver(&self, event: Event) -> Result<(), Overflow> {
        if self.is_closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if self.events.len() >= self.capacity {
            return Err(Overflow);
        }
        let _ = self.events.send(event);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        self.is_closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.closed.lock().unwrap().get_or_insert(reason);
    }

    fn backlog(&self) -> usize {
        self.backlog.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn test_sink(capacity: usize) -> (Arc<TestSink>, Receiver<Event>) {
    let (tx, events) = crossbeam_channel::unbounded();
    let sink = Arc::new(TestSink {
        events: tx,
        capacity,
        closed: Mutex::new(None),
        is_closed: AtomicBool::new(false),
        backlog: Default::default(),
    });
    (sink, events)
}

use std::sync::Mutex;
use crate::store::{sqlite::SqliteStore, worker};

struct Harness {
    router: RouterHandle,
    /// The router's completion inbox, to play another instance's bus events.
    completions: crossbeam_channel::Sender<Completion>,
    _dir: tempfile::TempDir,
}

struct TestSession {
    id: SessionId,
    sink: Arc<TestSink>,
    events: Receiver<Event>,
}

fn settings() -> RouterSettings {
    RouterSettings::from_config(&Config::for_tests(std::path::PathBuf::from("unused")))
}

fn start(settings: RouterSettings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Box::new(SqliteStore::open(dir.path()).unwrap());
    let metrics = Arc::new(Metrics::default());
    let inboxes = Router::inboxes();
    let committed = inboxes.completions();
    let completions = inboxes.completions();
    let (store, _thread) = worker::spawn(store, 64, metrics.clone(), move |results| {
        let _ = committed.send(Completion::Committed(results));
    });
    let router = Router::new(settings, store, metrics, Vec::new(), inboxes, None);
    let handle = router.handle();
    router.spawn();
    Harness { router: handle, completions, _dir: dir }
}

impl Harness {
    fn session(&self, nick: &str, capacity: usize) -> TestSession {
        let id = SessionId::next();
        let (test_sink, events) = test_sink(capacity);
        let sink: Arc<dyn Sink> = test_sink.clone();
        self.router.send(RouterMsg::Open { session: id, protocol: Protocol::Tcp, token: None, sink: Some(sink) });
        let reply = self.router.call(|reply| RouterMsg::Login { session: SessionRef::Id(id), nickname: nick.into(), reply });
        assert!(matches!(reply, Ok(Reply::LoggedIn { .. })), "{reply:?}");
        // A TCP session is welcomed in its own stream first.
        let welcome = events.recv_timeout(Duration::from_secs(5)).expect("the welcome");
        assert!(matches!(&welcome, Event::Reply(text) if text.starts_with(&format!("Welcome, {nick}!"))), "{welcome:?}");
        TestSession { id, sink: test_sink, events }
    }

    fn command(&self, session: &TestSession, command: Command) -> Outcome {
        self.router.call(|reply| RouterMsg::Command { session: SessionRef::Id(session.id), command, reply })
    }

    fn say(&self, session: &TestSession, text: &str) -> Outcome {
        self.router.call(|reply| RouterMsg::Say { session: SessionRef::Id(session.id), text: text.into(), room: None, client_msg_id: None, action: false, reply })
    }
}

impl TestSession {
    /// The next event.
    fn next(&self) -> Event {
        self.events.recv_timeout(Duration::from_secs(5)).expect("an event")
    }

    fn next_message(&self) -> String {
        loop {
            match self.next() {
                Event::Message(m) => return m.line(),
                Event::RoomChanged { .. } | Event::Notice(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }
}

#[test]
fn messages_are_committed_then_fanned_out_to_every_member() {
    let h = start(settings());
    let alice = h.session("alice", 100);
    let bob = h.session("bob", 100);
    let created = h.command(&alice, Command::Create("general".into())).unwrap();
    assert_eq!(created, Reply::Text("Created and joined room: general\n--- Recent Messages ---\nNo recent messages\n---".into()));
    h.command(&bob, Command::Join("general".into())).unwrap();
    match h.say(&alice, "hi").unwrap() {
        Reply::Sent { id, room, .. } => assert!(id > 0 && room == "general"),
        other => panic!("{other:?}"),
    }
    assert_eq!(alice.next_message(), "[general] alice: hi");
    assert_eq!(bob.next_message(), "[general] alice: hi");
}

#[test]
fn nicknames_are_unique_ignoring_case() {
    let h = start(settings());
    let _alice = h.session("alice", 10);
    let id = SessionId::next();
    h.router.send(RouterMsg::Open { session: id, protocol: Protocol::Tcp, token: None, sink: None });
    let reply = h.router.call(|reply| RouterMsg::Login { session: SessionRef::Id(id), nickname: "ALICE".into(), reply });
    assert_eq!(reply, Err(ChatError::NicknameTaken("ALICE".into())));
}

#[test]
fn a_session_whose_outbox_overflows_is_dropped_and_closed() {
    let h = start(RouterSettings { msg_rate: 0, ..settings() });
    let sender = h.session("sender", 1000);
    let slow = h.session("slow", 8);
    h.command(&sender, Command::Create("room".into())).unwrap();
    h.command(&slow, Command::Join("room".into())).unwrap();
    for i in 0..20 {
        h.say(&sender, &format!("m{i}")).unwrap();
    }
    assert_eq!(*slow.sink.closed.lock().unwrap(), Some(CloseReason::TooSlow), "the slow session was not closed");
    let members: Vec<String> = h.router.members("room").unwrap().unwrap().into_iter().map(|m| m.nickname).collect();
    assert_eq!(members, ["sender"]);
}

#[test]
fn direct_messages_reach_both_ends() {
    let h = start(settings());
    let alice = h.session("alice", 10);
    let bob = h.session("bob", 10);
    let reply = h.command(&alice, Command::Dm { to: "BOB".into(), text: "psst".into() });
    assert_eq!(reply, Ok(Reply::Shown("[DM to bob] psst".into())));
    assert!(matches!(bob.next(), Event::Dm { outgoing: false, dm } if dm.from == "alice" && dm.text == "psst"));
    assert!(matches!(alice.next(), Event::Dm { outgoing: true, dm } if dm.to == "bob"));
}

#[test]
fn the_ring_buffer_keeps_the_last_history_size_messages() {
    let h = start(RouterSettings { msg_rate: 0, history_size: 3, ..settings() });
    let alice = h.session("alice", 100);
    h.command(&alice, Command::Create("r".into())).unwrap();
    for i in 1..=5 {
        h.say(&alice, &format!("m{i}")).unwrap();
    }
    let bob = h.session("bob", 100);
    let Reply::Text(text) = h.command(&bob, Command::Join("r".into())).unwrap() else { panic!() };
    assert_eq!(text, "Joined room: r\n--- Recent Messages ---\n[r] alice: m3\n[r] alice: m4\n[r] alice: m5\n---");
}

#[test]
fn closing_a_session_frees_its_nickname_and_tells_the_room() {
    let h = start(settings());
    let alice = h.session("alice", 10);
    let bob = h.session("bob", 10);
    h.command(&alice, Command::Create("r".into())).unwrap();
    h.command(&bob, Command::Join("r".into())).unwrap();
    h.router.send(RouterMsg::Close { session: SessionRef::Id(bob.id) });
    loop {
        if let Event::Notice(n) = alice.next() {
            if n.text == "bob disconnected" {
                break;
            }
        }
    }
    let _bob_again = h.session("Bob", 10);
}

/// An HTTP session (no stream yet), logged in as `nick`.
fn http_session(h: &Harness, nick: &str) -> uuid::Uuid {
    let token = uuid::Uuid::new_v4();
    h.router.send(RouterMsg::Open { session: SessionId::next(), protocol: Protocol::Http, token: Some(token), sink: None });
    let reply = h.router.call(|reply| RouterMsg::Login { session: SessionRef::Token(token), nickname: nick.into(), reply });
    assert!(matches!(reply, Ok(Reply::LoggedIn { .. })), "{reply:?}");
    token
}

fn attach(h: &Harness, token: uuid::Uuid, sink: Arc<TestSink>, after: Option<i64>) -> Result<SessionId, ChatError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    h.router.send(RouterMsg::AttachStream { session: SessionRef::Token(token), room: Some("r".into()), sink, after, reply: tx });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// Message contents from the next events, skipping notices.
fn contents(events: &Receiver<Event>, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match events.recv_timeout(Duration::from_secs(5)).expect("an event") {
            Event::Message(m) => seen.push(m.content.clone()),
            Event::Notice(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    seen
}

#[test]
fn a_resuming_stream_is_replayed_from_the_store_then_attached() {
    let h = start(RouterSettings { msg_rate: 0, history_size: 3, ..settings() });
    let alice = h.session("alice", 1000);
    h.command(&alice, Command::Create("r".into())).unwrap();
    let ids: Vec<i64> = (1..=8)
        .map(|i| match h.say(&alice, &format!("m{i}")).unwrap() {
            Reply::Sent { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let bob = http_session(&h, "bob");
    let (sink, events) = test_sink(1000);
    attach(&h, bob, sink, Some(ids[1])).unwrap();
    // The ring buffer holds only m6..m8: m3..m5 come from the store first.
    assert!(matches!(events.recv_timeout(Duration::from_secs(5)).unwrap(),
        Event::RoomChanged { room: Some(r), history } if r == "r" && history.is_empty()));
    assert_eq!(contents(&events, 6), ["m3", "m4", "m5", "m6", "m7", "m8"]);
    h.say(&alice, "live").unwrap();
    assert_eq!(contents(&events, 1), ["live"]);
}

#[test]
fn a_replay_waits_for_its_reader_and_gives_way_to_a_newer_stream() {
    let h = start(RouterSettings { msg_rate: 0, history_size: 2, ..settings() });
    let alice = h.session("alice", 1000);
    h.command(&alice, Command::Create("r".into())).unwrap();
    for i in 1..=5 {
        h.say(&alice, &format!("m{i}")).unwrap();
    }
    let bob = http_session(&h, "bob");
    let (older, older_events) = test_sink(1000);
    // A client that has not read what it was sent: the replay waits.
    older.backlog.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    attach(&h, bob, older.clone(), Some(0)).unwrap();
    assert!(matches!(older_events.recv_timeout(Duration::from_secs(5)).unwrap(), Event::RoomChanged { .. }));
    assert!(older_events.recv_timeout(Duration::from_millis(300)).is_err(), "no page while the backlog is full");
    // It reads: the replay goes on at the next tick.
    older.backlog.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(contents(&older_events, 5), ["m1", "m2", "m3", "m4", "m5"]);

    // Replaying again, stalled; a newer stream takes the session over.
    let (again, _again_events) = test_sink(1000);
    again.backlog.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    attach(&h, bob, again.clone(), Some(0)).unwrap();
    let (newer, newer_events) = test_sink(1000);
    attach(&h, bob, newer, None).unwrap();
    assert_eq!(*again.closed.lock().unwrap(), Some(CloseReason::Replaced));
    assert!(matches!(newer_events.recv_timeout(Duration::from_secs(5)).unwrap(),
        Event::RoomChanged { history, .. } if history.len() == 2));
    // The stalled replay, released, never takes the session back.
    again.backlog.store(0, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    h.say(&alice, "live").unwrap();
    assert_eq!(contents(&newer_events, 1), ["live"]);
    assert_eq!(*older.closed.lock().unwrap(), Some(CloseReason::Replaced));
}

#[test]
fn ping_tells_a_router_that_answers_from_one_that_does_not() {
    let h = start(settings());
    assert!(h.router.ping(Duration::from_secs(2)));
    // A handle whose router never reads its inbox (stuck, or gone).
    let (tx, _inbox) = crossbeam_channel::bounded(16);
    let stuck = RouterHandle { tx };
    let started = std::time::Instant::now();
    assert!(!stuck.ping(Duration::from_millis(200)));
    assert!(started.elapsed() < Duration::from_secs(1), "the deadline bounds the wait");
}

#[test]
fn a_notice_from_another_instance_waits_for_the_messages_it_follows() {
    use crate::bus::{subscriber::Incoming, BusEvent};
    let h = start(settings());
    let alice = h.session("alice", 100);
    h.command(&alice, Command::Create("r".into())).unwrap();
    let room_id = h.router.room("r").unwrap().unwrap().id;
    let bus = |event| h.completions.send(Completion::Bus(Incoming::Event(event))).unwrap();
    // Instance 2 saw message 1 of the room, then bob joined there.
    bus(BusEvent::Notice { from: "2".into(), room: "r".into(), after_seq: 2, text: "bob joined r".into(), at_ms: 0 });
    // A notice that follows nothing new passes at once, but not before the held one.
    bus(BusEvent::Notice { from: "2".into(), room: "r".into(), after_seq: 1, text: "bob left r".into(), at_ms: 0 });
    let message = ChatMessage {
        id: 1000,
        seq: 1,
        room_id,
        room: "r".into(),
        user_id: 9,
        nickname: "carol".into(),
        content: "first".into(),
        created_at_ms: 0,
        edited_at_ms: None,
        deleted: false,
        action: false,
        rendered: Default::default(),
    };
    bus(BusEvent::Message { from: "3".into(), message });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match alice.next() {
            Event::Message(m) => seen.push(m.line()),
            Event::Notice(n) => seen.push(format!("[system] {}", n.text)),
            _ => {}
        }
    }
    assert_eq!(seen, ["[r] carol: first", "[system] bob joined r", "[system] bob left r"]);
}

#[test]
fn an_edit_from_another_instance_waits_for_its_message_and_replaces_the_ring_entry() {
    use crate::bus::{subscriber::Incoming, BusEvent};
    use crate::event::MessageChange;
    let h = start(settings());
    let alice = h.session("alice", 100);
    h.command(&alice, Command::Create("r".into())).unwrap();
    let room_id = h.router.room("r").unwrap().unwrap().id;
    let bus = |event| h.completions.send(Completion::Bus(Incoming::Event(event))).unwrap();
    let change = |content: Option<&str>, after_seq| MessageChange {
        change_id: after_seq,
        id: 1000,
        room_id,
        room: "r".into(),
        after_seq,
        nickname: "carol".into(),
        by: "carol".into(),
        content: content.map(str::to_string),
        at_ms: 5,
        rendered: Default::default(),
    };
    // Instance 3 committed message 1, then edited it; the edit overtakes it.
    bus(BusEvent::Changed { from: "3".into(), change: change(Some("first, edited"), 1) });
    let message = ChatMessage {
        id: 1000,
        seq: 1,
        room_id,
        room: "r".into(),
        user_id: 9,
        nickname: "carol".into(),
        content: "first".into(),
        created_at_ms: 0,
        edited_at_ms: None,
        deleted: false,
        action: false,
        rendered: Default::default(),
    };
    bus(BusEvent::Message { from: "3".into(), message });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match alice.next() {
            Event::Message(m) => seen.push(m.line()),
            Event::Changed(c) => seen.push(c.line()),
            _ => {}
        }
    }
    assert_eq!(seen, ["[r] carol: first", "[r] carol (edited): first, edited"]);
    // History on join shows the current text; after a delete, nothing.
    let bob = h.session("bob", 100);
    let Reply::Text(text) = h.command(&bob, Command::Join("r".into())).unwrap() else { panic!() };
    assert!(text.contains("[r] carol (edited): first, edited"), "{text}");
    bus(BusEvent::Changed { from: "3".into(), change: change(None, 1) });
    loop {
        if let Event::Changed(c) = alice.next() {
            assert_eq!(c.line(), "[system] carol deleted a message");
            break;
        }
    }
    let carol = h.session("carol2", 100);
    let Reply::Text(text) = h.command(&carol, Command::Join("r".into())).unwrap() else { panic!() };
    assert!(text.contains("No recent messages"), "{text}");
}

#[test]
fn a_gap_filled_from_the_store_keeps_a_deleted_message_in_place_and_shows_it_to_nobody() {
    use crate::bus::{subscriber::Incoming, BusEvent};
    use crate::store::{ChangeOutcome, ChangeRequest, ChangeTarget, NewMessage, Store};
    let h = start(settings());
    let alice = h.session("alice", 100);
    h.command(&alice, Command::Create("r".into())).unwrap();
    let room_id = h.router.room("r").unwrap().unwrap().id;
    assert!(matches!(h.say(&alice, "one"), Ok(Reply::Sent { .. })));
    assert_eq!(alice.next_message(), "[r] alice: one");
    // Another instance commits two messages (seq 2 and 3) to the shared
    // store and deletes the first; only the second reaches us on the bus.
    let mut other = crate::store::sqlite::SqliteStore::open(h._dir.path()).unwrap();
    let user_id = other.upsert_user("carol", 0).unwrap();
    let new = |content: &str| NewMessage {
        room_id,
        room: "r".into(),
        user_id,
        nickname: "carol".into(),
        content: content.into(),
        created_at_ms: 0,
        action: false,
        client_msg_id: None,
    };
    let stored = other.insert_messages(&[new("two"), new("three")]).unwrap();
    let request = ChangeRequest { target: ChangeTarget::Id(stored[0].id), user_id, by: "carol".into(), content: None, at_ms: 1 };
    assert!(matches!(other.change_message(&request), Ok(ChangeOutcome::Done(_))));
    let three = new("three").committed(stored[1].id, stored[1].seq);
    h.completions.send(Completion::Bus(Incoming::Event(BusEvent::Message { from: "3".into(), message: three }))).unwrap();
    // The gap (seq 2) is read from the store: deleted, it is passed over.
    assert_eq!(alice.next_message(), "[r] carol: three");
    let bob = h.session("bob", 100);
    let Reply::Text(text) = h.command(&bob, Command::Join("r".into())).unwrap() else { panic!() };
    assert!(text.ends_with("[r] alice: one\n[r] carol: three\n---"), "{text}");
}

#[test]
fn a_change_delivered_while_a_stream_replays_reaches_it_after_the_messages() {
    use crate::bus::{subscriber::Incoming, BusEvent};
    use crate::event::MessageChange;
    let h = start(RouterSettings { msg_rate: 0, history_size: 2, ..settings() });
    let alice = h.session("alice", 1000);
    h.command(&alice, Command::Create("r".into())).unwrap();
    let room_id = h.router.room("r").unwrap().unwrap().id;
    let ids: Vec<i64> = (1..=4)
        .map(|i| match h.say(&alice, &format!("m{i}")).unwrap() {
            Reply::Sent { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let bob = http_session(&h, "bob");
    let (sink, events) = test_sink(1000);
    // The ring buffer holds m3 and m4: m2.. is read from the store.
    attach(&h, bob, sink, Some(ids[0])).unwrap();
    // Meanwhile another instance's edit of m2 is delivered here: whether
    // the replay is still reading or done, the stream gets it, in its place.
    let change = MessageChange {
        change_id: 1_000_000,
        id: ids[1],
        room_id,
        room: "r".into(),
        after_seq: 4,
        nickname: "alice".into(),
        by: "alice".into(),
        content: Some("m2, edited".into()),
        at_ms: 5,
        rendered: Default::default(),
    };
    h.completions.send(Completion::Bus(Incoming::Event(BusEvent::Changed { from: "3".into(), change }))).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.recv_timeout(Duration::from_secs(5)).expect("an event") {
            Event::Message(m) => seen.push(m.content.clone()),
            Event::Changed(c) => seen.push(format!("edit {}", c.content.as_deref().unwrap_or("-"))),
            _ => {}
        }
    }
    assert_eq!(seen, ["m2", "m3", "m4", "edit m2, edited"]);
}
