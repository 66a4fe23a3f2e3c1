//! Reads `\n`- or `\r\n`-terminated lines with a length limit.
//!
//! An over-long line is reported once and then skipped up to its newline,
//! without ever buffering more than the limit, so a 1 MB line costs the
//! server no more memory than a short one and the connection stays usable.

use std::io::{self, Read};

/// What one call to [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    Line(String),
    /// A line longer than the limit; the rest of it up to its newline is skipped.
    TooLong,
    /// A line that is not valid UTF-8; it was discarded.
    InvalidUtf8,
}

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
    /// Inside an over-long line that was already reported.
    discarding: bool,
}

/// Bytes read at a time; small, because every idle client keeps its buffer.
const READ_CHUNK: usize = 1024;

impl<R: Read> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> LineReader<R> {
        LineReader { inner, buf: Vec::new(), scanned: 0, max: max_line_bytes, discarding: false }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next line, or `Ok(None)` at end of input. Read errors (including
    /// timeouts) are returned as they are; the reader stays usable.
    pub fn next_line(&mut self) -> io::Result<Option<LineEvent>> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                return Ok(Some(self.finish(line)));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max + 1 {
                // +1: a line of exactly `max` bytes may still be followed by '\r'.
                self.buf.clear();
                self.scanned = 0;
                if !std::mem::replace(&mut self.discarding, true) {
                    return Ok(Some(LineEvent::TooLong));
                }
            }
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK, 0);
            let read = self.inner.read(&mut self.buf[len..]);
            self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    // End of input: a last line without newline still counts.
                    let rest = std::mem::take(&mut self.buf);
                    self.scanned = 0;
                    if rest.is_empty() || std::mem::take(&mut self.discarding) {
                        return Ok(None);
                    }
                    return Ok(Some(self.finish(rest)));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.buf.capacity() > 4 * (self.max + READ_CHUNK) {
                self.buf.shrink_to(self.max + READ_CHUNK);
            }
        }
    }

    fn finish(&self, line: Vec<u8>) -> LineEvent {
        if line.len() > self.max {
            return LineEvent::TooLong;
        }
        match String::from_utf8(line) {
            Ok(text) => LineEvent::Line(text),
            Err(_) => LineEvent::InvalidUtf8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8], max: usize) -> Vec<LineEvent> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(event) = reader.next_line().unwrap() {
            out.push(event);
        }
        out
    }

    fn line(s: &str) -> LineEvent {
        LineEvent::Line(s.into())
    }

    #[test]
    fn splits_lines_with_either_ending() {
        assert_eq!(events(b"a\nb\r\nc", 10), vec![line("a"), line("b"), line("c")]);
        assert_eq!(events(b"\n", 10), vec![line("")]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped() {
        let mut input = vec![b'x'; 1_000_000];
        input.extend_from_slice(b"\nnext\n");
        assert_eq!(events(&input, 4096), vec![LineEvent::TooLong, line("next")]);
        let exact = format!("{}\r\n", "y".repeat(4096));
        assert_eq!(events(exact.as_bytes(), 4096), vec![line(&"y".repeat(4096))]);
        let over = format!("{}\nok\n", "y".repeat(4097));
        assert_eq!(events(over.as_bytes(), 4096), vec![LineEvent::TooLong, line("ok")]);
    }

    #[test]
    fn invalid_utf8_is_reported_and_the_stream_goes_on() {
        assert_eq!(events(b"\xff\xfe\nfine\n", 100), vec![LineEvent::InvalidUtf8, line("fine")]);
    }
}
