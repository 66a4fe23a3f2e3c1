//! The TCP line reader over a reader that hands out the input in
//! fuzzer-chosen pieces, with interruptions and timeouts in between: it
//! yields exactly the lines a simple model of the protocol expects, never a
//! line over the limit, and always makes progress.
//!
//! Input: one byte for the limit (1-64 bytes), then up to 8 bytes of read
//! schedule (0 = `Interrupted`, 1 = `WouldBlock`, n = a read of at most
//! n - 1 bytes), then the bytes on the wire.
#![no_main]

use std::io::{self, Read};

use baby_discord::adapters::lines::{LineEvent, LineReader};
use libfuzzer_sys::fuzz_target;

struct Pieces<'a> {
    wire: &'a [u8],
    schedule: Vec<u8>,
    step: usize,
    would_block: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let plan = self.schedule[self.step % self.schedule.len()];
        self.step += 1;
        match plan {
            0 => Err(io::ErrorKind::Interrupted.into()),
            1 => {
                self.would_block += 1;
                Err(io::ErrorKind::WouldBlock.into())
            }
            n => {
                let take = (n as usize - 1).min(buf.len()).min(self.wire.len());
                buf[..take].copy_from_slice(&self.wire[..take]);
                self.wire = &self.wire[take..];
                Ok(take)
            }
        }
    }
}

/// What the reader must produce: split at `\n`, one `\r` before it
/// dropped, over-long lines reported once, a last line without `\n` kept.
fn model(wire: &[u8], max: usize) -> Vec<LineEvent> {
    let mut events = Vec::new();
    let mut parts: Vec<&[u8]> = wire.split(|b| *b == b'\n').collect();
    let last = parts.pop().unwrap_or_default();
    let judge = |line: &[u8]| {
        if line.len() > max {
            LineEvent::TooLong
        } else {
            match String::from_utf8(line.to_vec()) {
                Ok(text) => LineEvent::Line(text),
                Err(_) => LineEvent::InvalidUtf8,
            }
        }
    };
    for line in parts {
        events.push(judge(line.strip_suffix(b"\r").unwrap_or(line)));
    }
    if !last.is_empty() {
        events.push(judge(last));
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else { return };
    let max = 1 + limit as usize % 64;
    let (schedule, wire) = rest.split_at(rest.len().min(8));
    let mut schedule = schedule.to_vec();
    if !schedule.iter().any(|&n| n > 1) {
        schedule.push(u8::MAX);
    }
    let mut reader = LineReader::new(Pieces { wire, schedule, step: 0, would_block: 0 }, max);

    let expected = model(wire, max);
    let mut events = Vec::new();
    let mut errors = 0;
    // Each event uses at least one byte of the wire or ends it; each error
    // is one injected timeout.
    let mut budget = wire.len() + 2;
    loop {
        match reader.next_line() {
            Ok(Some(event)) => {
                if let LineEvent::Line(line) = &event {
                    assert!(line.len() <= max && !line.contains('\n'), "{line:?}");
                }
                events.push(event);
                assert!(events.len() <= expected.len(), "more events than lines: {events:?}");
            }
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                errors += 1;
                budget += 1;
            }
        }
        budget = budget.checked_sub(1).expect("the reader made no progress");
    }
    assert_eq!(events, expected);
    assert_eq!(errors, reader.get_ref().would_block);
    assert!(reader.get_ref().wire.is_empty());
});
