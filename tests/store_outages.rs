//! PostgreSQL going away or refusing writes under a running server: clear errors,
//! nothing delivered that is not stored, recovery without a restart.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{Store, TestDatabase, TestServer};

fn via_proxy(database: &TestDatabase) -> (Proxy, String) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = format!("postgres://postgres@{}/{}", proxy.addr, database.name);
    (proxy, url)
}

#[test]
fn a_database_outage_refuses_sends_clearly_and_heals_by_itself() {
    let database = TestDatabase::create();
    let (proxy, url) = via_proxy(&database);
    let server = TestServer::builder(Store::Postgres).env("DATABASE_URL", &url).env("MSG_RATE", 0).start();
    let mut alice = server.login("alice");
    alice.create("outage");
    let mut bob = server.login("bob");
    bob.join("outage");
    alice.send("before");
    alice.expect("[system] bob joined outage");
    alice.expect("[outage] alice: before");
    bob.expect("[outage] alice: before");

    proxy.cut();
    alice.send("during");
    alice.expect("Error: the message store is unavailable, so the message was not sent. Try again shortly.");
    // Nothing that was not stored reaches anyone.
    bob.expect_silence(Duration::from_millis(500));

    proxy.restore();
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        alice.send(&format!("after {n}"));
        let line = alice.line();
        if line == format!("[outage] alice: after {n}") {
            break;
        }
        assert!(line.starts_with("Error: the message store is unavailable"), "{line}");
        assert!(started.elapsed() < Duration::from_secs(20), "the store did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    bob.expect(&format!("[outage] alice: after {n}"));
    println!("recovered after {:?}", started.elapsed());
}

#[test]
fn terminated_database_sessions_lose_no_acknowledged_message() {
    let server = TestServer::builder(Store::Postgres).env("MSG_RATE", 0).start();
    let database = server.database.as_ref().unwrap();
    let mut alice = server.login("alice");
    alice.create("term");
    let mut acknowledged = Vec::new();
    for n in 0..30 {
        if n % 10 == 5 {
            database.admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                database.name
            ));
        }
        alice.send(&format!("m{n}"));
        let line = alice.line();
        if line == format!("[term] alice: m{n}") {
            acknowledged.push(line);
        } else {
            assert!(line.starts_with("Error: the message store is unavailable"), "{line}");
        }
    }
    assert!(acknowledged.len() >= 20, "the server did not recover: {acknowledged:?}");
    // Everything acknowledged is in the store: page through it over TCP history.
    let mut bob = server.login("bob");
    let history = bob.ask("/join term", |l| l == "---");
    let shown: Vec<&String> = history[2..history.len() - 1].iter().collect();
    let last_ten: Vec<&String> = acknowledged[acknowledged.len() - 10..].iter().collect();
    assert_eq!(shown, last_ten);
    let count = {
        let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
        client.query_one("SELECT count(*) FROM messages", &[]).unwrap().get::<_, i64>(0)
    };
    assert!(count as usize >= acknowledged.len());
}

#[test]
fn an_unreachable_database_at_start_up_fails_fast_naming_database_url() {
    let started = Instant::now();
    let (status, output) = common::run_to_exit(&[("DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/nothing")]);
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{output}");
    assert!(errors[0].contains("DATABASE_URL") && !errors[0].contains("secret"), "{output}");
}

/// A database that answers but refuses every write (its disk is full): the
/// sender is told, and `/api/health` says `degraded` with `"db": false` for
/// as long as writes fail, though pings still succeed; a commit that
/// succeeds clears it.
#[test]
fn health_reports_a_store_that_refuses_every_write() {
    let server = TestServer::builder(Store::Postgres).env("MSG_RATE", 0).start();
    let database = server.database.as_ref().unwrap();
    let health = || {
        let (status, body) = common::http_get(server.http.unwrap(), "/api/health");
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    let mut alice = server.login("alice");
    alice.create("full");
    alice.send("before");
    alice.expect("[full] alice: before");
    let (status, body) = health();
    assert_eq!((status, &body["status"], &body["db"]), (200, &"healthy".into(), &true.into()), "{body}");

    let mut db = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    db.batch_execute(
        "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
         CREATE TRIGGER disk_full BEFORE INSERT ON messages FOR EACH STATEMENT EXECUTE FUNCTION refuse_writes();",
    )
    .unwrap();
    alice.send("during");
    alice.expect("Error: the message store is unavailable, so the message was not sent. Try again shortly.");
    // Longer than the storage thread's idle ping: a store that answers
    // pings but takes no write is still not healthy.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let (status, body) = health();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["db"], false, "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    db.batch_execute("DROP TRIGGER disk_full ON messages").unwrap();
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        alice.send(&format!("after {n}"));
        if alice.line() == format!("[full] alice: after {n}") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "writes did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = health();
    assert_eq!((status, &body["status"], &body["db"]), (200, &"healthy".into(), &true.into()), "{body}");
}
