//! The HTTP front against hostile clients: slow heads and bodies, endless
//! heads, idle and excess connections, request smuggling shapes, malformed
//! heads, and the requests that once crashed or leaked (see
//! vendor/README.md). Raw bytes over real sockets to the real binary.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Store, TestServer, PATIENCE};

fn dial(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.http.unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Sends `request` on a new connection and reads until the server closes
/// it (or `PATIENCE` passes); returns everything it answered.
fn exchange(server: &TestServer, request: &[u8]) -> String {
    let mut stream = dial(server);
    stream.write_all(request).unwrap();
    read_until_closed(&mut stream)
}

fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no end to the answer ({e}); so far: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn status_of(answer: &str) -> u16 {
    let line = answer.lines().next().unwrap_or_else(|| panic!("no answer at all"));
    line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a status line: {line:?}"))
}

/// Asserts `answer` is one response of `status` whose JSON error mentions `reason`.
fn assert_refused(answer: &str, status: u16, reason: &str) {
    assert_eq!(status_of(answer), status, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    assert_eq!(json["success"], false);
    assert!(json["error"].as_str().unwrap().contains(reason), "{answer}");
}

fn health_answers_within(server: &TestServer, within: Duration) {
    let mut stream = dial(server);
    stream.set_read_timeout(Some(within)).unwrap();
    stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap_or_else(|e| panic!("/api/health got no answer within {within:?}: {e}"));
    assert_eq!(&first, b"HTTP/1.1 200");
}

fn threads(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap().count()
}

fn descriptors(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count()
}

/// Resident memory of the server, in KiB.
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_with(vars: &[(&str, &str)]) -> TestServer {
    vars.iter().fold(TestServer::builder(Store::Sqlite), |b, (k, v)| b.env(k, v)).start()
}

/// A `TE` header whose q-values include NaN, in an order that made
/// tiny_http's sort panic ("does not correctly implement a total order").
const NAN_TE: &str = "e0;q=0, e1;q=0, e2;q=0.1, e3;q=NaN, e4;q=0.5, e5;q=0, e6;q=0.5, e7;q=1, e8;q=1, \
    e9;q=NaN, e10;q=0, e11;q=0.9, e12;q=0.5, e13;q=0, e14;q=1, e15;q=0, e16;q=1, e17;q=NaN, e18;q=1, \
    e19;q=NaN, e20;q=1";

#[test]
fn nan_q_values_in_te_are_answered_and_the_server_lives() {
    let server = TestServer::start(Store::Sqlite);
    // A declared 2 GB body: this once aborted the process (a panic while
    // answering, then another in the request's destructor).
    let huge = format!("POST /api/message HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000000\r\nTE: {NAN_TE}\r\n\r\n{{}}");
    assert_refused(&exchange(&server, huge.as_bytes()), 413, "too large");
    // A small body: this once got no answer at all.
    let small = format!(
        "POST /api/message HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTE: {NAN_TE}\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_refused(&exchange(&server, small.as_bytes()), 400, "sessionId");
    let get = format!("GET /api/health HTTP/1.1\r\nHost: t\r\nTE: {NAN_TE}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&exchange(&server, get.as_bytes())), 200);
    health_answers_within(&server, PATIENCE);
}

#[test]
fn http2_request_lines_are_answered_505_and_leak_nothing() {
    let server = TestServer::start(Store::Sqlite);
    health_answers_within(&server, PATIENCE);
    let (threads_before, fds_before) = (threads(&server), descriptors(&server));
    for version in ["2.0", "3.0"].iter().cycle().take(20) {
        let answer = exchange(&server, format!("GET /api/health HTTP/{version}\r\nHost: t\r\n\r\n").as_bytes());
        assert_refused(&answer, 505, "HTTP/1.1");
    }
    // Connection threads linger a few seconds in tiny_http's pool before
    // they end; what matters is that they do end.
    wait_until("threads and descriptors are back where they were", Duration::from_secs(15), || {
        threads(&server) <= threads_before && descriptors(&server) <= fds_before
    });
}

#[test]
fn slow_bodies_hold_no_worker_and_end_in_408() {
    let server = server_with(&[("HTTP_READ_TIMEOUT_SECS", "2"), ("HTTP_WORKERS", "4")]);
    // Many more slow uploads than workers, each declaring 60 KB and
    // sending one byte at a time.
    // Half of them also say `Connection: upgrade`, which once made the
    // body a raw socket for the handler to read, slowly, on a worker.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = dial(&server);
            let upgrade = if i % 2 == 0 { "Connection: upgrade\r\nUpgrade: websocket\r\n" } else { "" };
            let head = format!(
                "POST /api/connect HTTP/1.1\r\nHost: t\r\n{upgrade}Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    for round in 0..3 {
        for s in &mut slow {
            s.write_all(b" ").unwrap();
        }
        health_answers_within(&server, Duration::from_secs(1));
        let body = format!("{{\"nickname\":\"alice{round}\"}}");
        let connect = format!(
            "POST /api/connect HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(&server, connect.as_bytes());
        assert_eq!(status_of(&answer), 200, "{answer}");
        std::thread::sleep(Duration::from_millis(300));
    }
    for s in &mut slow {
        assert_refused(&read_until_closed(s), 408, "too long");
    }
}

#[test]
fn a_head_sent_one_byte_at_a_time_ends_in_408() {
    let server = server_with(&[("HTTP_READ_TIMEOUT_SECS", "1")]);
    let mut stream = dial(&server);
    let started = Instant::now();
    let mut answer = String::new();
    for byte in b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = stream.read(&mut buf) {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        stream.set_nonblocking(false).unwrap();
        if !answer.is_empty() {
            break;
        }
    }
    answer.push_str(&read_until_closed(&mut stream));
    assert!(started.elapsed() < Duration::from_secs(4), "the deadline covers the whole head");
    assert_refused(&answer, 408, "too long");
}

#[test]
fn an_endless_head_is_refused_431_without_holding_it_in_memory() {
    let server = server_with(&[("MAX_HEADER_BYTES", "8192")]);
    health_answers_within(&server, PATIENCE);
    let before = rss_kib(&server);
    let mut stream = dial(&server);
    stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Endless: ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    // 32 MiB of one header line, or until the server stops reading it.
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    while sent < 32 << 20 {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let answer = read_until_closed(&mut stream);
    if !answer.is_empty() {
        assert_refused(&answer, 431, "headers too large");
    }
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(grown < 8 * 1024, "the server grew by {grown} KiB reading an endless head");
    // And it says why when the client does stop to listen.
    let mut head = b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'b', 9000));
    head.extend_from_slice(b"\r\n\r\n");
    assert_refused(&exchange(&server, &head), 431, "headers too large");
    health_answers_within(&server, PATIENCE);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = server_with(&[("HTTP_IDLE_SECS", "1")]);
    let mut stream = dial(&server);
    stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // The rest of that answer, then the close.
    let started = Instant::now();
    read_until_closed(&mut stream);
    let idle = started.elapsed();
    assert!(idle >= Duration::from_millis(500) && idle < Duration::from_secs(5), "closed after {idle:?}");
}

/// An open HTTP connection costs the server one descriptor: its read and
/// write halves share the socket. (They held a duplicate each, so 10,000
/// idle keep-alive connections, within `MAX_CONNECTIONS`, would have
/// needed 20,000 descriptors, the most a process may open.)
#[test]
fn an_idle_keep_alive_connection_costs_one_descriptor() {
    let server = server_with(&[("HTTP_IDLE_SECS", "60")]);
    let before = descriptors(&server);
    let open: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut stream = dial(&server);
            stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut first = [0u8; 12];
            stream.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            stream
        })
        .collect();
    let now = descriptors(&server);
    // Two per connection would be 30 over.
    assert!(now <= before + open.len() + 3, "{now} descriptors for {} connections (from {before})", open.len());
}

#[test]
fn every_http_connection_counts_against_max_connections() {
    let server = server_with(&[("MAX_CONNECTIONS", "5"), ("HTTP_READ_TIMEOUT_SECS", "30")]);
    let threads_before = threads(&server);
    // Connections that never send a byte still hold their place.
    let mut idle: Vec<TcpStream> = (0..5).map(|_| dial(&server)).collect();
    wait_until("the five connections are counted", PATIENCE, || {
        let answer = exchange(&server, b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n");
        status_of(&answer) == 503
    });
    assert_refused(&exchange(&server, b"GET /api/rooms HTTP/1.1\r\nHost: t\r\n\r\n"), 503, "server full");
    // Many more knocking get the same answer and cost no thread each.
    for _ in 0..50 {
        assert_eq!(status_of(&exchange(&server, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")), 503);
    }
    // The five admitted connections' threads, plus slack for pool threads
    // of requests made while the five were being counted (they linger a
    // few seconds); one thread per refused connection would be 50 more.
    assert!(threads(&server) <= threads_before + 5 + 10, "a refused connection costs no thread");
    idle.pop();
    wait_until("a closed connection frees its place", PATIENCE, || {
        status_of(&exchange(&server, b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) == 200
    });
    drop(idle);
}

#[test]
fn request_smuggling_shapes_are_refused_400() {
    let server = TestServer::start(Store::Sqlite);
    let cases: [(&str, &str); 6] = [
        ("Content-Length: 2\r\nContent-Length: 3\r\n", "conflicting Content-Length"),
        ("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "Content-Length together with Transfer-Encoding"),
        ("Transfer-Encoding: gzip, chunked\r\n", "only chunked"),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "only chunked"),
        ("Content-Length: 2, 2\r\n", "invalid Content-Length"),
        ("Content-Length: +2\r\n", "invalid Content-Length"),
    ];
    for (headers, reason) in cases {
        let request = format!("POST /api/connect HTTP/1.1\r\nHost: t\r\n{headers}\r\n{{}}");
        assert_refused(&exchange(&server, request.as_bytes()), 400, reason);
    }
    // The same value twice is one length, not two.
    let twice = "POST /api/connect HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\nContent-Length: 20\r\n\
                 Connection: close\r\n\r\n{\"nickname\":\"alice\"}";
    assert_eq!(status_of(&exchange(&server, twice.as_bytes())), 200);
}

#[test]
fn malformed_heads_are_answered_400_never_a_silent_close() {
    let server = TestServer::start(Store::Sqlite);
    let cases: [(&[u8], &str); 6] = [
        (b"GET /api/health HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n", "malformed request header"),
        (b"GET /api/health HTTP/1.1\r\nX-Name: a\x01b\r\n\r\n", "malformed request header"),
        (b"GET /api/health HTTP/1.1\r\nX-Name: a\rb\r\n\r\n", "malformed request header"),
        (b"GET /api/health HTTP/1.1\r\nno colon here\r\n\r\n", "malformed request header"),
        (b"GET /api/health\r\n\r\n", "malformed request line"),
        (b"GET /api/health HTTP/9.9\r\n\r\n", "malformed request line"),
    ];
    for (request, reason) in cases {
        assert_refused(&exchange(&server, request), 400, reason);
    }
    health_answers_within(&server, PATIENCE);
}

#[test]
fn pipelined_requests_and_expect_continue_still_work() {
    let server = TestServer::start(Store::Sqlite);
    let two = b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\nGET /api/rooms HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let answer = exchange(&server, two);
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert!(answer.contains("\"rooms\""), "answers in order: {answer}");

    let mut stream = dial(&server);
    stream
        .write_all(
            b"POST /api/connect HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 20\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"{\"nickname\":\"alice\"}").unwrap();
    assert_eq!(status_of(&read_until_closed(&mut stream)), 200);
}
