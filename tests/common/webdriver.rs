//! A minimal W3C WebDriver client for browser tests: starts `chromedriver`
//! on a free port, opens one headless Chromium session, and speaks the
//! protocol as hand-written HTTP/1.1 over `std::net::TcpStream` with JSON
//! bodies (serde_json). No WebDriver crate, no async runtime.
//!
//! Every call that waits has a deadline of at most 10 s, so a broken page or
//! a wedged browser fails the test with a message instead of hanging it.
//! Dropping the [`Browser`] deletes the session (which closes Chromium) and
//! then kills chromedriver's whole process group, so nothing outlives a test,
//! including one that panicked.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str =
    "browser tests need headless Chromium and its WebDriver: install them with `apt-get install chromium chromium-driver`";

/// The longest any single WebDriver request may take (starting Chromium is the slowest).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Browser::wait_until`] re-checks its condition.
const POLL: Duration = Duration::from_millis(100);
/// The key under which W3C WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An error answer from chromedriver (`{"value":{"error","message"}}`), or a
/// transport failure (status 0).
#[derive(Debug)]
pub struct WebDriverError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebDriver {} ({}): {}", self.error, self.status, self.message)
    }
}

/// One chromedriver process and the one browser session it drives.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Chromium's `--user-data-dir` and chromedriver's log; removed on drop.
    profile: tempfile::TempDir,
}

/// A reference to an element of the current page. It goes stale when the
/// page replaces the node; wait conditions should look elements up afresh.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a fresh profile.
    /// Panics with an installation hint when either program is missing.
    pub fn start() -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(program).exists(), "{program} not found: {INSTALL_HINT}");
        }
        let profile = tempfile::tempdir().expect("create a temporary browser profile");
        let port = free_port();
        let log = File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Own process group: on drop, one kill reaches chromedriver and the browser it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
        let mut browser = Browser { driver, port, session: String::new(), profile };
        browser.wait_for_driver();
        browser.session = browser.new_session();
        browser
    }

    /// Waits until chromedriver answers `GET /status` with `ready: true`.
    fn wait_for_driver(&mut self) {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(status) = self.driver.try_wait().unwrap() {
                panic!("chromedriver exited at start ({status}); its log:\n{}", self.driver_log());
            }
            if let Ok(value) = self.call("GET", "/status", None) {
                if value["ready"] == json!(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready on port {} within {REQUEST_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.driver_log()
            );
            std::thread::sleep(POLL);
        }
    }

    fn new_session(&self) -> String {
        let user_data_dir = self.profile.path().join("chromium-profile");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,800",
                            format!("--user-data-dir={}", user_data_dir.display()),
                        ],
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                },
            },
        });
        match self.call("POST", "/session", Some(capabilities)) {
            Ok(value) => value["sessionId"].as_str().expect("sessionId in the new-session answer").to_string(),
            Err(e) => panic!("cannot start Chromium through chromedriver: {e}\n{INSTALL_HINT}\nchromedriver log:\n{}", self.driver_log()),
        }
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    // ------------------------------------------------------------ the protocol

    /// One request; returns the answer's `value`, or the WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let transport = |message: String| WebDriverError { status: 0, error: "transport".into(), message };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| transport(e.to_string()))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
             Content-Type: application/json; charset=utf-8\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            port = self.port,
            len = body.len(),
        );
        stream.write_all(request.as_bytes()).map_err(|e| transport(e.to_string()))?;
        let (status, body) = read_response(&mut stream).map_err(|e| transport(format!("{method} {path}: {e}")))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| {
            transport(format!("{method} {path}: HTTP {status}, not JSON ({e}): {}", String::from_utf8_lossy(&body)))
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(WebDriverError {
            status,
            error: value["error"].as_str().unwrap_or("unknown error").to_string(),
            message: value["message"].as_str().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
        })
    }

    /// A session command (`/session/{id}{path}`) that must succeed.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn try_command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    // ------------------------------------------------------------ navigation and elements

    pub fn navigate(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element matching `css`; panics when there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| panic!("no element matches {css:?}; page shows:\n{}", self.page_text()))
    }

    /// The first element matching `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let body = json!({ "using": "css selector", "value": css });
        match self.try_command("POST", "/element", Some(body)) {
            Ok(value) => Some(self.element(&value)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css:?}: {e}"),
        }
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self.command("POST", "/elements", Some(body));
        value.as_array().map(|list| list.iter().map(|v| self.element(v)).collect()).unwrap_or_default()
    }

    fn element(&self, value: &Value) -> Element<'_> {
        let id = value[ELEMENT_KEY].as_str().expect("an element reference").to_string();
        Element { browser: self, id }
    }

    /// The rendered text of the first element matching `css`; `None` when
    /// there is none (or it was replaced while being read).
    pub fn text_of(&self, css: &str) -> Option<String> {
        self.try_find(css)?.try_text().ok()
    }

    /// Runs `script` as a function body (`return …` gives the result) with `args`.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Polls `condition` until it returns `Some`, at most `timeout` (≤ 10 s);
    /// on time-out panics naming `what` and showing what the page displays.
    pub fn wait_until<'b, T>(
        &'b self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&'b Browser) -> Option<T>,
    ) -> T {
        assert!(timeout <= Duration::from_secs(10), "waits are at most 10 s");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(result) = condition(self) {
                return result;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- page text ---\n{}\n--- browser console ---\n{}",
                    self.page_text(),
                    self.console_log().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// What the page shows (`document.body.innerText`), for failure messages.
    pub fn page_text(&self) -> String {
        match self.try_command("POST", "/execute/sync", Some(json!({ "script": "return document.body ? document.body.innerText : ''", "args": [] }))) {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("(cannot read the page: {e})"),
        }
    }

    /// Browser console lines since the last call (chromedriver's log endpoint; best effort).
    pub fn console_log(&self) -> Vec<String> {
        match self.try_command("POST", "/se/log", Some(json!({ "type": "browser" }))) {
            Ok(Value::Array(entries)) => entries
                .iter()
                .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("(no console log: {e})")],
        }
    }

    // ------------------------------------------------------------ window and screenshots

    /// The document's title.
    pub fn title(&self) -> String {
        self.command("GET", "/title", None).as_str().unwrap_or_default().to_string()
    }

    /// Resizes the browser window (outer size, in CSS pixels).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    /// Saves a PNG of the viewport to `path` (creating its directory) and returns the path.
    pub fn screenshot(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref().to_path_buf();
        let encoded = self.command("GET", "/screenshot", None);
        let png = base64_decode(encoded.as_str().expect("a base64 screenshot")).expect("valid base64 from chromedriver");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium cleanly; ignore failure (the kill below still runs).
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        // chromedriver leads its own process group (see `start`): kill it and anything left of Chromium.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    /// Types `text` into the element (WebDriver key codes such as `\u{E007}` = Enter work too).
    pub fn send_keys(&self, text: &str) {
        self.browser.command("POST", &format!("/element/{}/value", self.id), Some(json!({ "text": text })));
    }

    pub fn click(&self) {
        self.browser.command("POST", &format!("/element/{}/click", self.id), Some(json!({})));
    }

    /// The element's rendered text (like `innerText`: empty when hidden).
    pub fn text(&self) -> String {
        self.try_text().unwrap_or_else(|e| panic!("element text: {e}"))
    }

    pub fn try_text(&self) -> Result<String, WebDriverError> {
        let value = self.browser.try_command("GET", &format!("/element/{}/text", self.id), None)?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// The value of a DOM property (`value`, `hidden`, …).
    pub fn property(&self, name: &str) -> Value {
        self.browser.command("GET", &format!("/element/{}/property/{name}", self.id), None)
    }

    /// Clears a text input.
    pub fn clear(&self) {
        self.browser.command("POST", &format!("/element/{}/clear", self.id), Some(json!({})));
    }

    /// Moves the mouse over the element's centre (what a user does to see hover-only buttons).
    pub fn hover(&self) {
        let actions = json!({ "actions": [{
            "type": "pointer",
            "id": "mouse",
            "parameters": { "pointerType": "mouse" },
            "actions": [{ "type": "pointerMove", "duration": 0, "origin": { ELEMENT_KEY: self.id }, "x": 0, "y": 0 }],
        }]});
        self.browser.command("POST", "/actions", Some(actions));
    }

    /// The value of an attribute as written in the DOM (`None` when absent).
    pub fn attribute(&self, name: &str) -> Option<String> {
        let value = self.browser.command("GET", &format!("/element/{}/attribute/{name}", self.id), None);
        value.as_str().map(str::to_string)
    }

    pub fn is_displayed(&self) -> bool {
        self.browser.command("GET", &format!("/element/{}/displayed", self.id), None) == json!(true)
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// Reads one HTTP/1.1 response: status and body (Content-Length, chunked, or to EOF).
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the response headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut body = buf.split_off(head_end + 4);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            content_length = Some(value.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    if chunked {
        while dechunk(&body).is_none() {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, dechunk(&body).ok_or_else(|| bad("truncated chunked body"))?));
    }
    loop {
        if content_length.is_some_and(|len| body.len() >= len) {
            body.truncate(content_length.unwrap());
            return Ok((status, body));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return match content_length {
                Some(_) => Err(bad("connection closed inside the body")),
                None => Ok((status, body)),
            };
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// The payload of a complete chunked body, or `None` if it is not complete yet.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 (RFC 4648, with or without padding; whitespace ignored).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        acc = (acc << 6) | sextet(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
