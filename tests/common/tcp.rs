//! A netcat-style client: writes lines, reads lines, asserts on exact text.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the TCP port");
        Client { stream, buf: Vec::new() }
    }

    /// Connects and chooses `nick`, checking every line of the exchange.
    pub fn login(addr: SocketAddr, nick: &str) -> Client {
        let mut client = Client::connect(addr);
        client.expect("Welcome to Baby Discord!");
        client.expect_prompt();
        client.send(nick);
        client.expect(&format!("Welcome, {nick}!"));
        client.expect("Type /help for available commands.");
        client
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Writes bytes; false once the server has closed the connection.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads more bytes into the buffer; false at end of stream.
    fn fill(&mut self, deadline: Instant) -> bool {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(remaining)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("timed out waiting for the server; unread: {:?}", String::from_utf8_lossy(&self.buf))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// The next line, without its `\n`; `None` at end of stream.
    pub fn try_line(&mut self) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).expect("server sent UTF-8"));
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    pub fn line(&mut self) -> String {
        self.try_line().expect("server closed the connection")
    }

    pub fn expect(&mut self, expected: &str) {
        assert_eq!(self.line(), expected);
    }

    /// Expects several lines (a multi-line reply) in order.
    pub fn expect_lines(&mut self, expected: &str) {
        for line in expected.lines() {
            self.expect(line);
        }
    }

    /// Expects the nickname prompt, which has no line ending.
    pub fn expect_prompt(&mut self) {
        self.expect_text("Enter your nickname: ");
    }

    /// Expects exactly `text` next, line ending or not (a prompt).
    pub fn expect_text(&mut self, text: &str) {
        let prompt = text.as_bytes();
        let deadline = Instant::now() + PATIENCE;
        while self.buf.len() < prompt.len() {
            assert!(self.fill(deadline), "closed before the prompt");
        }
        let got: Vec<u8> = self.buf.drain(..prompt.len()).collect();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(prompt));
    }

    /// Reads lines until one satisfies `pred`; returns it.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line();
            if pred(&line) {
                return line;
            }
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.buf.is_empty(), "unexpected: {:?}", String::from_utf8_lossy(&self.buf));
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(n) => panic!("unexpected: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads to the end of the stream; returns the remaining lines.
    pub fn expect_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.try_line() {
            lines.push(line);
        }
        lines
    }

    /// `/create room`, then waits for the end of its (empty) history.
    pub fn create(&mut self, room: &str) {
        self.send(&format!("/create {room}"));
        self.wait_for(|l| l == "---");
    }

    /// `/join room`, then waits for the end of its history.
    pub fn join(&mut self, room: &str) {
        self.send(&format!("/join {room}"));
        self.wait_for(|l| l == "---");
    }

    /// Sends a command and returns the reply lines up to and including the
    /// line that satisfies `last`.
    pub fn ask(&mut self, command: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        self.send(command);
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            let done = last(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

/// Polls a command with a one-line answer (`/list`, `/rooms`, …) until the
/// answer satisfies `pred`; panics after `within`.
pub fn eventually(client: &mut Client, command: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        client.send(command);
        let line = client.line();
        if pred(&line) {
            return line;
        }
        assert!(started.elapsed() < within, "still {line:?} after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
