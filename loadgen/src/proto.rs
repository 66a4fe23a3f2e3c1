//! Pure, incremental parsers: TCP lines, HTTP/1.1 responses (content-length,
//! chunked or close-delimited bodies), Server-Sent Events, and the load
//! payload. All of them accept input split at arbitrary byte boundaries and
//! never panic on odd input.

/// Longest line (TCP or SSE) kept; longer ones are dropped and counted.
pub const MAX_LINE: usize = 64 * 1024;

fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    hay.iter().position(|&x| x == b)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

// ---------------------------------------------------------------- lines --

/// Splits a byte stream into `\n`-terminated lines (a trailing `\r` is
/// removed). Push bytes in, pull whole lines out; the unterminated rest is
/// visible through [`LineBuf::partial`] (used for the nickname prompt, which
/// has no newline).
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
    start: usize,
    discarding: bool,
    /// Lines longer than [`MAX_LINE`] that were dropped.
    pub overlong: u64,
}

impl LineBuf {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start > 4096) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Copies the next complete line into `out` (without the line end).
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            let hay = &self.buf[self.start..];
            match find_byte(hay, b'\n') {
                Some(p) => {
                    let was_discarding = self.discarding;
                    self.discarding = false;
                    if !was_discarding {
                        out.clear();
                        out.extend_from_slice(strip_cr(&hay[..p]));
                    }
                    self.start += p + 1;
                    if !was_discarding {
                        return true;
                    }
                }
                None => {
                    if hay.len() > MAX_LINE {
                        if !self.discarding {
                            self.overlong += 1;
                        }
                        self.discarding = true;
                        self.buf.clear();
                        self.start = 0;
                    }
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return false;
                }
            }
        }
    }

    /// The bytes after the last complete line.
    pub fn partial(&self) -> &[u8] {
        if self.discarding {
            &[]
        } else {
            &self.buf[self.start..]
        }
    }

    pub fn clear_partial(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

// ----------------------------------------------------------------- http --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HState {
    Head,
    Len(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Incremental HTTP/1.1 response parser. Body bytes (de-chunked) are
/// appended to the caller's buffer as they arrive, so an endless SSE body
/// can be consumed piecewise.
#[derive(Debug)]
pub struct HttpResp {
    state: HState,
    head: Vec<u8>,
    line: Vec<u8>,
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
    pub chunked: bool,
    pub content_type: String,
    head_done: bool,
}

impl Default for HttpResp {
    fn default() -> Self {
        HttpResp {
            state: HState::Head,
            head: Vec::new(),
            line: Vec::new(),
            status: 0,
            close: false,
            chunked: false,
            content_type: String::new(),
            head_done: false,
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;

impl HttpResp {
    pub fn reset(&mut self) {
        let mut head = std::mem::take(&mut self.head);
        head.clear();
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        *self = HttpResp { head, line, ..Default::default() };
    }

    pub fn head_done(&self) -> bool {
        self.head_done
    }

    /// Whether the parser has started on a response (any byte seen).
    pub fn started(&self) -> bool {
        self.head_done || !self.head.is_empty()
    }

    /// Feeds bytes; returns (bytes consumed, response complete). Bytes after
    /// a complete response are not consumed (they belong to the next one).
    pub fn feed(&mut self, data: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), String> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                HState::Done => return Ok((i, true)),
                HState::Head => {
                    let b = data[i];
                    i += 1;
                    self.head.push(b);
                    if self.head.len() > MAX_HEAD {
                        return Err("response head too large".into());
                    }
                    if b == b'\n' && (self.head.ends_with(b"\n\n") || self.head.ends_with(b"\n\r\n")) {
                        // leading empty lines before the status line are tolerated
                        if self.head.iter().all(|&c| c == b'\r' || c == b'\n') {
                            self.head.clear();
                            continue;
                        }
                        self.parse_head()?;
                    }
                }
                HState::Len(rem) | HState::ChunkData(rem) => {
                    let n = (rem.min((data.len() - i) as u64)) as usize;
                    body.extend_from_slice(&data[i..i + n]);
                    i += n;
                    let left = rem - n as u64;
                    self.state = match (self.state, left) {
                        (HState::Len(_), 0) => HState::Done,
                        (HState::Len(_), l) => HState::Len(l),
                        (_, 0) => HState::ChunkEnd,
                        (_, l) => HState::ChunkData(l),
                    };
                }
                HState::UntilClose => {
                    body.extend_from_slice(&data[i..]);
                    i = data.len();
                }
                HState::ChunkSize | HState::ChunkEnd | HState::Trailers => {
                    let rest = &data[i..];
                    match find_byte(rest, b'\n') {
                        None => {
                            self.line.extend_from_slice(rest);
                            i = data.len();
                            if self.line.len() > 4096 {
                                return Err("chunk framing line too long".into());
                            }
                        }
                        Some(p) => {
                            self.line.extend_from_slice(&rest[..p]);
                            i += p + 1;
                            let line = std::mem::take(&mut self.line);
                            let l = strip_cr(&line);
                            match self.state {
                                HState::ChunkSize => {
                                    let hex = l.split(|&c| c == b';').next().unwrap_or(b"");
                                    let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                                    let n = u64::from_str_radix(hex, 16)
                                        .map_err(|_| format!("bad chunk size '{}'", String::from_utf8_lossy(l)))?;
                                    self.state = if n == 0 { HState::Trailers } else { HState::ChunkData(n) };
                                }
                                HState::ChunkEnd => {
                                    if !l.is_empty() {
                                        return Err("missing CRLF after chunk".into());
                                    }
                                    self.state = HState::ChunkSize;
                                }
                                _ => {
                                    if l.is_empty() {
                                        self.state = HState::Done;
                                    }
                                }
                            }
                            self.line = line;
                            self.line.clear();
                        }
                    }
                }
            }
        }
        Ok((i, self.state == HState::Done))
    }

    /// The peer closed the connection: returns true if that completes the
    /// response (close-delimited body).
    pub fn eof(&mut self) -> bool {
        if self.state == HState::UntilClose {
            self.state = HState::Done;
        }
        self.state == HState::Done
    }

    fn parse_head(&mut self) -> Result<(), String> {
        let text = String::from_utf8_lossy(&self.head).into_owned();
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/") {
            return Err(format!("bad status line '{}'", truncate(status_line, 80)));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line '{}'", truncate(status_line, 80)))?;
        let mut close = version == "HTTP/1.0";
        let mut chunked = false;
        let mut length: Option<u64> = None;
        let mut ctype = String::new();
        for l in lines {
            let Some((k, v)) = l.split_once(':') else { continue };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = v.to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
                "content-type" => ctype = v.to_string(),
                _ => {}
            }
        }
        self.head.clear();
        if (100..200).contains(&status) {
            return Ok(()); // interim response: parse the next head
        }
        self.status = status;
        self.chunked = chunked;
        self.content_type = ctype;
        self.head_done = true;
        self.state = if status == 204 || status == 304 {
            HState::Done
        } else if chunked {
            HState::ChunkSize
        } else if let Some(n) = length {
            if n == 0 {
                HState::Done
            } else {
                HState::Len(n)
            }
        } else {
            close = true;
            HState::UntilClose
        };
        self.close = close;
        Ok(())
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// ------------------------------------------------------------------ sse --

/// One dispatched SSE item: an event (with type and data) or a comment.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub comment: bool,
    pub kind: Vec<u8>,
    pub data: Vec<u8>,
}

/// Incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub struct SseParser {
    lines: LineBuf,
    line: Vec<u8>,
    kind: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, body: &[u8]) {
        self.lines.push(body);
    }

    pub fn overlong(&self) -> u64 {
        self.lines.overlong
    }

    /// Fills `ev` with the next complete event or comment.
    pub fn next_event(&mut self, ev: &mut SseEvent) -> bool {
        while self.lines.next_line(&mut self.line) {
            let line = &self.line[..];
            if line.is_empty() {
                if !self.has_data && self.kind.is_empty() {
                    continue;
                }
                ev.comment = false;
                ev.kind.clear();
                if self.kind.is_empty() {
                    ev.kind.extend_from_slice(b"message");
                } else {
                    ev.kind.extend_from_slice(&self.kind);
                }
                std::mem::swap(&mut ev.data, &mut self.data);
                self.data.clear();
                self.kind.clear();
                self.has_data = false;
                return true;
            }
            if line[0] == b':' {
                ev.comment = true;
                ev.kind.clear();
                ev.data.clear();
                ev.data.extend_from_slice(&line[1..]);
                return true;
            }
            let (field, value) = match find_byte(line, b':') {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => {
                    self.kind.clear();
                    self.kind.extend_from_slice(value);
                }
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                _ => {} // id, retry, unknown fields
            }
        }
        false
    }
}

// ------------------------------------------------------------- payloads --

/// Finds the string value of `"key":"..."` in flat JSON (no unescaping; the
/// value ends at the next `"`).
///
/// Runs once or twice per delivery (a million times a second at the top
/// rate), so it hops from quote to quote instead of comparing the key at
/// every position, and allocates nothing.
pub fn json_str_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let key = key.as_bytes();
    let mut from = 0;
    loop {
        let quote = from + find_byte(&json[from..], b'"')?;
        from = quote + 1;
        let end = from + key.len();
        if json.get(end) != Some(&b'"') || &json[from..end] != key {
            continue;
        }
        let mut i = end + 1;
        while i < json.len() && json[i].is_ascii_whitespace() {
            i += 1;
        }
        if json.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while i < json.len() && json[i].is_ascii_whitespace() {
            i += 1;
        }
        if json.get(i) != Some(&b'"') {
            continue;
        }
        i += 1;
        let len = find_byte(&json[i..], b'"')?;
        return Some(&json[i..i + len]);
    }
}

/// A load message: "lg <sender> <seq> <send_time_ns>".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub sender: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

pub fn format_payload(sender: usize, seq: u32, sent_ns: u64) -> String {
    format!("lg {sender} {seq} {sent_ns}")
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

pub fn parse_payload(text: &[u8]) -> Option<Payload> {
    let rest = text.strip_prefix(b"lg ")?;
    let mut it = rest.split(|&c| c == b' ');
    let sender = parse_u64(it.next()?)?;
    let seq = parse_u64(it.next()?)?;
    let sent_ns = parse_u64(it.next()?)?;
    if it.next().is_some() || sender > u32::MAX as u64 || seq > u32::MAX as u64 {
        return None;
    }
    Some(Payload { sender: sender as u32, seq: seq as u32, sent_ns })
}

/// What a TCP server line is.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Room { room: &'a [u8], nick: &'a [u8], text: &'a [u8] },
    System,
    Dm,
    Error,
    Other,
}

pub fn classify(line: &[u8]) -> Line<'_> {
    if line.starts_with(b"Error:") {
        return Line::Error;
    }
    if line.starts_with(b"[system]") {
        return Line::System;
    }
    if line.starts_with(b"[DM ") {
        return Line::Dm;
    }
    if let Some(rest) = line.strip_prefix(b"[") {
        if let Some(close) = find_byte(rest, b']') {
            let room = &rest[..close];
            if let Some(after) = rest[close + 1..].strip_prefix(b" ") {
                if let Some(colon) = after.windows(2).position(|w| w == b": ") {
                    return Line::Room { room, nick: &after[..colon], text: &after[colon + 2..] };
                }
            }
        }
    }
    Line::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(lb: &mut LineBuf) -> Vec<String> {
        let mut out = Vec::new();
        let mut l = Vec::new();
        while lb.next_line(&mut l) {
            out.push(String::from_utf8_lossy(&l).into_owned());
        }
        out
    }

    #[test]
    fn lines_across_chunks() {
        let input = b"Welcome to Baby Discord!\r\nEnter your nickname: ";
        // every split point gives the same result
        for split in 0..=input.len() {
            let mut lb = LineBuf::default();
            lb.push(&input[..split]);
            let mut got = all_lines(&mut lb);
            lb.push(&input[split..]);
            got.extend(all_lines(&mut lb));
            assert_eq!(got, vec!["Welcome to Baby Discord!"]);
            assert_eq!(lb.partial(), b"Enter your nickname: ");
        }
        let mut lb = LineBuf::default();
        for b in b"a\nbc\n\nd" {
            lb.push(&[*b]);
        }
        assert_eq!(all_lines(&mut lb), vec!["a", "bc", ""]);
        assert_eq!(lb.partial(), b"d");
        lb.clear_partial();
        assert_eq!(lb.partial(), b"");
    }

    #[test]
    fn overlong_line_dropped() {
        let mut lb = LineBuf::default();
        lb.push(b"ok\n");
        assert_eq!(all_lines(&mut lb), vec!["ok"]);
        let big = vec![b'x'; MAX_LINE / 3];
        for _ in 0..5 {
            lb.push(&big);
            assert!(all_lines(&mut lb).is_empty());
        }
        lb.push(b"tail\nnext\n");
        assert_eq!(all_lines(&mut lb), vec!["next"]);
        assert_eq!(lb.overlong, 1);
    }

    fn feed_all(r: &mut HttpResp, input: &[u8], step: usize) -> (Vec<u8>, bool, usize) {
        let mut body = Vec::new();
        let mut used_total = 0;
        let mut done = false;
        for chunk in input.chunks(step.max(1)) {
            let (used, d) = r.feed(chunk, &mut body).unwrap();
            used_total += used;
            if d {
                done = true;
                break;
            }
        }
        (body, done, used_total)
    }

    #[test]
    fn http_content_length() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhelloEXTRA";
        for step in 1..resp.len() {
            let mut r = HttpResp::default();
            let (body, done, used) = feed_all(&mut r, resp, step);
            assert!(done);
            assert_eq!(body, b"hello");
            assert_eq!(r.status, 200);
            assert!(!r.close);
            assert_eq!(r.content_type, "application/json");
            assert!(used <= resp.len() - 5 + step);
        }
        let mut r = HttpResp::default();
        let (used, done) = r.feed(resp, &mut Vec::new()).unwrap();
        assert!(done);
        assert_eq!(&resp[used..], b"EXTRA");
    }

    #[test]
    fn http_chunked_and_close() {
        let resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;x=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..resp.len() {
            let mut r = HttpResp::default();
            let (body, done, _) = feed_all(&mut r, resp, step);
            assert!(done, "step {step}");
            assert_eq!(body, b"hello0123456789");
            assert!(r.close && r.chunked);
        }
        // close-delimited
        let mut r = HttpResp::default();
        let mut body = Vec::new();
        let (_, done) = r.feed(b"HTTP/1.0 200 OK\nContent-Type: text/event-stream\n\nabc", &mut body).unwrap();
        assert!(!done);
        r.feed(b"def", &mut body).unwrap();
        assert!(r.eof());
        assert_eq!(body, b"abcdef");
        assert!(r.close);
        // garbage
        let mut r = HttpResp::default();
        assert!(r.feed(b"SSH-2.0-OpenSSH\r\n\r\n", &mut Vec::new()).is_err());
        let mut r = HttpResp::default();
        assert!(r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &mut Vec::new()).is_err());
        // 204 has no body; reset reuses the parser
        let mut r = HttpResp::default();
        assert!(r.feed(b"HTTP/1.1 204 No Content\r\n\r\n", &mut Vec::new()).unwrap().1);
        r.reset();
        assert!(!r.started());
        assert!(r.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", &mut Vec::new()).unwrap().1);
        assert_eq!(r.status, 404);
    }

    #[test]
    fn sse_across_chunks() {
        let stream = b"event: connected\ndata: {\"room\":\"load\"}\n\n: ping\n\nid: 42\r\nevent: message\r\ndata: {\"id\":42,\"room\":\"load\",\"user\":\"a\",\"content\":\"lg 1 2 3\",\"timestamp\":\"t\"}\r\n\r\ndata: a\ndata: b\n\n";
        for step in 1..stream.len() {
            let mut p = SseParser::default();
            let mut ev = SseEvent::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                p.push(chunk);
                while p.next_event(&mut ev) {
                    got.push((
                        ev.comment,
                        String::from_utf8_lossy(&ev.kind).into_owned(),
                        String::from_utf8_lossy(&ev.data).into_owned(),
                    ));
                }
            }
            assert_eq!(got.len(), 4, "step {step}");
            assert_eq!(got[0], (false, "connected".into(), "{\"room\":\"load\"}".into()));
            assert_eq!(got[1], (true, "".into(), " ping".into()));
            assert_eq!(got[2].1, "message");
            let content = json_str_field(got[2].2.as_bytes(), "content").unwrap();
            assert_eq!(parse_payload(content), Some(Payload { sender: 1, seq: 2, sent_ns: 3 }));
            assert_eq!(got[3], (false, "message".into(), "a\nb".into()));
        }
    }

    #[test]
    fn json_fields() {
        let j = br#"{"success":true,"data":{"sessionId" : "abc-1","userId":3,"nickname":"x"}}"#;
        assert_eq!(json_str_field(j, "sessionId"), Some(&b"abc-1"[..]));
        assert_eq!(json_str_field(j, "userId"), None);
        assert_eq!(json_str_field(j, "nope"), None);
        assert_eq!(json_str_field(br#"{"content":"#, "content"), None);
        assert_eq!(json_str_field(br#"{"content":"unterminated"#, "content"), None);
        // The key's name as another field's value, or as a prefix, is skipped.
        let j = br#"{"type":"content","contents":"no","content" :  "lg 1 2 3"}"#;
        assert_eq!(json_str_field(j, "content"), Some(&b"lg 1 2 3"[..]));
        assert_eq!(json_str_field(j, "type"), Some(&b"content"[..]));
        assert_eq!(json_str_field(br#"{"x":"a\"","y":"b"}"#, "y"), Some(&b"b"[..]));
    }

    #[test]
    fn payloads_and_lines() {
        assert_eq!(
            parse_payload(format_payload(3, 17, 123456789).as_bytes()),
            Some(Payload { sender: 3, seq: 17, sent_ns: 123456789 })
        );
        for bad in [
            &b"lg 1 2"[..],
            b"lg 1 2 3 4",
            b"lg a 2 3",
            b"xx 1 2 3",
            b"lg 1 2 99999999999999999999999",
            b"lg  1 2 3",
            b"",
        ] {
            assert_eq!(parse_payload(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            classify(b"[load] lg_s1: lg 1 2 3"),
            Line::Room { room: b"load", nick: b"lg_s1", text: b"lg 1 2 3" }
        );
        assert_eq!(classify(b"[load] bob: a: b"), Line::Room { room: b"load", nick: b"bob", text: b"a: b" });
        assert_eq!(classify(b"[system] bob joined load"), Line::System);
        assert_eq!(classify(b"[DM from a] hi"), Line::Dm);
        assert_eq!(classify(b"Error: slow down"), Line::Error);
        assert_eq!(classify(b"[load]"), Line::Other);
        assert_eq!(classify(b"[unterminated"), Line::Other);
        assert_eq!(classify(b"---"), Line::Other);
        assert_eq!(truncate("héllo", 2), "h…");
    }
}
