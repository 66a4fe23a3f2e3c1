//! HTTP request heads (and pipelined requests, bodies, upgrades) through
//! the vendored tiny_http's real connection parser over a socket pair:
//! never a panic, never a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The server's body limit.
const MAX_BODY: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    match tiny_http::fuzzing::serve(data, MAX_BODY) {
        Ok(outcome) => {
            assert!(outcome.body_bytes as u64 <= outcome.requests as u64 * MAX_BODY);
            if !outcome.answer.is_empty() {
                assert!(outcome.answer.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&outcome.answer));
            }
        }
        Err(tiny_http::fuzzing::Stuck) => {
            panic!("hang: tiny_http did not finish the connection within {:?}", tiny_http::fuzzing::DEADLINE)
        }
    }
});
