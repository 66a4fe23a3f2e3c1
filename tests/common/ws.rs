//! A WebSocket test client: `tungstenite`'s client (not the server's
//! code) with the few helpers the tests share.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::PATIENCE;

/// A WebSocket client.
pub struct Ws {
    pub socket: WebSocket<TcpStream>,
}

/// Opens `GET /api/ws?{query}` with extra `headers`; why it failed: the HTTP status.
pub fn handshake(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}/api/ws?{query}").into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(Ws { socket })
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

impl Ws {
    /// Opens `GET /api/ws?{query}`, which must upgrade.
    pub fn connect(addr: SocketAddr, query: &str) -> Ws {
        handshake(addr, query, &[]).expect("upgraded")
    }

    pub fn send(&mut self, frame: Value) {
        self.socket.send(Message::text(frame.to_string())).unwrap();
    }

    /// The next JSON frame (pings answered and skipped), or `None` if the
    /// connection closed; panics after `within`.
    pub fn next_within(&mut self, within: Duration) -> Result<Value, Option<CloseCode>> {
        self.socket.get_mut().set_read_timeout(Some(within)).unwrap();
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => return Ok(serde_json::from_str(text.as_str()).unwrap()),
                Ok(Message::Close(frame)) => return Err(frame.map(|f| f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("no frame within {within:?}")
                }
                Err(_) => return Err(None),
            }
        }
    }

    pub fn next(&mut self) -> Value {
        self.next_within(PATIENCE).unwrap_or_else(|code| panic!("closed ({code:?}) while waiting for a frame"))
    }

    /// The next frame, which must be of `kind`.
    pub fn expect(&mut self, kind: &str) -> Value {
        let frame = self.next();
        assert_eq!(frame["type"], kind, "expected a {kind} frame: {frame}");
        frame
    }

    /// Frames until one of `kind` (others skipped).
    pub fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next();
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads until the server closes; the close code.
    pub fn expect_closed(&mut self, within: Duration) -> Option<CloseCode> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the server did not close the connection");
            match self.next_within(left) {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// The next frame that is not a `system` line.
    pub fn next_not_system(&mut self) -> Value {
        loop {
            let frame = self.next();
            if frame["type"] != "system" {
                return frame;
            }
        }
    }

    /// Sends a frame with `ref` and returns the answer to it.
    pub fn call(&mut self, mut frame: Value, reference: &str) -> Value {
        frame["ref"] = json!(reference);
        self.send(frame);
        loop {
            let answer = self.next();
            if answer["ref"] == reference {
                return answer;
            }
        }
    }
}
