//! Raw bytes through a real `ClientConnection`, for fuzz targets (patched
//! for baby-discord; see vendor/README.md). Not an API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::client::ClientConnection;
use crate::connection::Connection;
use crate::util::RefinedTcpStream;
use crate::{Limits, Response, StatusCode};

/// How long one connection may take before [`serve`] calls it stuck.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What one connection did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests the connection yielded.
    pub requests: usize,
    /// Body bytes read from them, in all.
    pub body_bytes: usize,
    /// Everything the server wrote back.
    pub answer: Vec<u8>,
}

/// The connection did not finish within [`DEADLINE`]; its thread is left
/// behind.
#[derive(Debug)]
pub struct Stuck;

/// Serves `input`, sent by a client that then half-closes, on one
/// connection over a socket pair, the way the server's connection threads
/// do: each request's body is read (at most `max_body` bytes) and answered
/// with `Response::from_string`, or through `upgrade` when the request asks
/// for it or declares a body over `max_body`. Socket reads and writes time
/// out, and a separate thread drains the answers, so only a hang inside
/// tiny_http itself can make this return `Stuck`.
///
/// Input that declares a body over 1 GiB anywhere is not served (the
/// outcome is empty): a dropped request makes tiny_http allocate its
/// declared length to read the body away, so the server never drops such a
/// request (it answers through `upgrade` and leaks the stream, which would
/// leak a thread and two descriptors per run here).
pub fn serve(input: &[u8], max_body: u64) -> Result<Outcome, Stuck> {
    if declares_huge_body(input) {
        return Ok(Outcome::default());
    }
    let (server, client) = UnixStream::pair().expect("socket pair");
    for socket in [&server, &client] {
        socket.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        socket.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    }
    let mut sender = client.try_clone().expect("clone socket");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = sender.write_all(&input);
        let _ = sender.shutdown(std::net::Shutdown::Write);
    });
    let mut receiver = client;
    let drain = thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = receiver.read_to_end(&mut answer);
        answer
    });

    let (done, outcome) = mpsc::channel();
    thread::spawn(move || {
        let (read, write) = RefinedTcpStream::new(Connection::from(server));
        // The server's limits (a short read deadline: the client half-closes,
        // so reads end at once unless tiny_http waits for nothing).
        let limits = Limits {
            max_head_bytes: 8 * 1024,
            read_timeout: Some(Duration::from_secs(2)),
            idle_timeout: Some(Duration::from_secs(2)),
            preload_body_bytes: max_body as usize,
            gate: None,
        };
        let mut outcome = Outcome::default();
        for mut request in ClientConnection::new(write, read, limits) {
            outcome.requests += 1;
            let mut body = Vec::new();
            let _ = request.as_reader().take(max_body).read_to_end(&mut body);
            outcome.body_bytes += body.len();
            let upgrade = request.headers().iter().any(|h| {
                h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("upgrade")
            }) || request.body_length().map_or(false, |n| n as u64 > max_body);
            const STATUSES: [u16; 6] = [200, 204, 304, 404, 100, 500];
            let status = StatusCode(STATUSES[request.url().len() % STATUSES.len()]);
            let response = Response::from_string(request.url().to_string()).with_status_code(status);
            if upgrade {
                let mut stream = request.upgrade("fuzz", response);
                let _ = stream.write_all(b"upgraded");
                let _ = stream.flush();
            } else {
                let _ = request.respond(response);
            }
        }
        let _ = done.send(outcome);
    });

    let mut outcome = outcome.recv_timeout(DEADLINE).map_err(|_| Stuck)?;
    let _ = writer.join();
    outcome.answer = drain.join().unwrap_or_default();
    Ok(outcome)
}

/// Whether any line of `input` is a `Content-Length` header over 1 GiB.
fn declares_huge_body(input: &[u8]) -> bool {
    input.split(|b| *b == b'\n').any(|line| {
        let Ok(line) = std::str::from_utf8(line) else { return false };
        let Some((name, value)) = line.split_once(':') else { return false };
        name.trim().eq_ignore_ascii_case("content-length")
            && value.trim().parse::<u128>().map_or(false, |n| n > 1 << 30)
    })
}
