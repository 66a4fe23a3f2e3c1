//! Search words → the FTS5 query: never panics, and every query built is
//! accepted by a real (in-memory) SQLite FTS5 table, so no user text can be
//! a syntax error or an FTS5 operator. The PostgreSQL text is the same
//! words, each free of whitespace.
#![no_main]

use baby_discord::store::search::{fts5_query, search_words, tsquery_text, MAX_QUERY_BYTES, MAX_QUERY_WORDS};
use baby_discord::store::sqlite::fts5_accepts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match fts5_query(text) {
        Ok(query) => {
            if let Err(e) = fts5_accepts(&query) {
                panic!("FTS5 refused {query:?} built from {text:?}: {e}");
            }
            let words = search_words(text).expect("the same checks");
            assert!(!words.is_empty() && words.len() <= MAX_QUERY_WORDS);
            assert!(words.iter().all(|w| !w.contains(char::is_whitespace) && w.chars().any(char::is_alphanumeric)));
            assert_eq!(tsquery_text(text).expect("the same checks"), words.join(" "));
        }
        Err(_) => {
            assert!(text.len() > MAX_QUERY_BYTES || search_words(text).is_err());
        }
    }
});
