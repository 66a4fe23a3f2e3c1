//! Search words → the FTS5 query: never panics, and every query built is
//! accepted by a real (in-memory) SQLite FTS5 table, so no user text can be
//! a syntax error or an FTS5 operator. The PostgreSQL text is the same
//! words, each free of whitespace; the limit check agrees with the builder.
#![no_main]

use baby_discord::store::search::{check_search, fts5_query, search_words, tsquery_text, QueryError, SearchLimits};
use baby_discord::store::sqlite::fts5_accepts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let words = search_words(text);
    match fts5_query(text) {
        Ok(query) => {
            if let Err(e) = fts5_accepts(&query) {
                panic!("FTS5 refused {query:?} built from {text:?}: {e}");
            }
            assert!(!words.is_empty());
            assert!(words.iter().all(|w| {
                !w.contains(|c: char| c.is_whitespace() || c.is_control()) && w.chars().any(char::is_alphanumeric)
            }));
            assert_eq!(tsquery_text(text).expect("the same words"), words.join(" "));
        }
        Err(error) => {
            assert_eq!(error, QueryError::Empty);
            assert!(words.is_empty() && tsquery_text(text).is_err());
        }
    }
    let limits = SearchLimits::default();
    match check_search(text, limits) {
        Ok(()) => assert!(text.len() <= limits.max_bytes && (1..=limits.max_words).contains(&words.len())),
        Err(QueryError::Empty) => assert!(words.is_empty()),
        Err(QueryError::TooLong(_)) => assert!(text.len() > limits.max_bytes || words.len() > limits.max_words),
    }
});
