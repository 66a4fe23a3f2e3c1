//! Every JSON body the API accepts, through the same checks as a request:
//! never a panic; a refusal is a client error (400/404) whose sentence is
//! clean text.
//!
//! Input: one byte choosing the endpoint, then the body.
#![no_main]

use baby_discord::adapters::http::fuzzing::{parse_body, BODIES};
use baby_discord::names::is_invisible_format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    if let Err((status, sentence)) = parse_body(which as usize % BODIES.len(), body) {
        assert!(matches!(status, 400 | 404), "{status} {sentence}");
        assert!(!sentence.is_empty());
        assert!(!sentence.chars().any(|c| c.is_control() || is_invisible_format(c)), "{sentence:?}");
    }
});
