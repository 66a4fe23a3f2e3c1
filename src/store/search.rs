//! Full-text search input: the user's words turned into a query each
//! backend accepts whatever the words contain.
//!
//! - SQLite FTS5: every word becomes a quoted phrase (`"it's"` →
//!   `"it's"` with inner quotes doubled), joined by spaces, which FTS5
//!   reads as AND. Nothing the user types can be FTS5 syntax (`OR`, `NEAR`,
//!   `*`, `^`, column filters, parentheses): it is all inside quotes.
//! - PostgreSQL: the words are passed as a parameter to
//!   `plainto_tsquery('simple', …)`, which takes any text and ANDs its
//!   words; nothing needs escaping there, so only the checks below apply.
//!
//! Both backends ignore punctuation, so words without a letter or digit are
//! dropped here (an FTS5 phrase with no token matches nothing anyway).
//! The store builds the query from any text; [`check_search`] holds a
//! search to the configured [`SearchLimits`] before it gets there.

/// How much one search may ask for (`SEARCH_MAX_BYTES`, `SEARCH_MAX_WORDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// Longest search text, in bytes.
    pub max_bytes: usize,
    /// Most words (with a letter or digit) in one search.
    pub max_words: usize,
}

impl Default for SearchLimits {
    fn default() -> SearchLimits {
        SearchLimits { max_bytes: 256, max_words: 16 }
    }
}

/// Why a search text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// No word with a letter or digit in it.
    Empty,
    /// Over the [`SearchLimits`].
    TooLong(SearchLimits),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Empty => write!(f, "give at least one word to search for (letters or digits)."),
            QueryError::TooLong(limits) => write!(
                f,
                "the search is too long; use at most {} words and {} bytes.",
                limits.max_words, limits.max_bytes
            ),
        }
    }
}

/// The words of a search text: split on whitespace and control characters
/// (stored messages hold none; a NUL would end FTS5's query text early),
/// those with at least one letter or digit, each once.
pub fn search_words(text: &str) -> Vec<&str> {
    let mut words: Vec<&str> = Vec::new();
    let pieces = text.split(|c: char| c.is_whitespace() || c.is_control());
    for word in pieces.filter(|w| w.chars().any(char::is_alphanumeric)) {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// Checks a search text against the limits (what the adapters and the
/// router do before a search reaches the store).
pub fn check_search(text: &str, limits: SearchLimits) -> Result<(), QueryError> {
    if text.len() > limits.max_bytes {
        return Err(QueryError::TooLong(limits));
    }
    match search_words(text).len() {
        0 => Err(QueryError::Empty),
        n if n > limits.max_words => Err(QueryError::TooLong(limits)),
        _ => Ok(()),
    }
}

/// The FTS5 `MATCH` expression for a search text: each word a quoted phrase.
pub fn fts5_query(text: &str) -> Result<String, QueryError> {
    let phrases: Vec<String> = search_words(text).iter().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect();
    if phrases.is_empty() {
        return Err(QueryError::Empty);
    }
    Ok(phrases.join(" "))
}

/// The text handed to PostgreSQL's `plainto_tsquery('simple', …)`: the
/// words, space-separated.
pub fn tsquery_text(text: &str) -> Result<String, QueryError> {
    let words = search_words(text);
    if words.is_empty() {
        return Err(QueryError::Empty);
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_quoted() {
        assert_eq!(fts5_query("hello world").unwrap(), r#""hello" "world""#);
        assert_eq!(fts5_query(r#"say "hi" OR NEAR(x) col:y*"#).unwrap(), r#""say" """hi""" "OR" "NEAR(x)" "col:y*""#);
        assert_eq!(fts5_query("a a  b").unwrap(), r#""a" "b""#);
        assert_eq!(fts5_query("  -- !! "), Err(QueryError::Empty));
        assert_eq!(fts5_query(""), Err(QueryError::Empty));
    }

    #[test]
    fn searches_are_held_to_the_limits() {
        let limits = SearchLimits { max_bytes: 20, max_words: 3 };
        assert_eq!(check_search("a b c", limits), Ok(()));
        assert_eq!(check_search("a b c d", limits), Err(QueryError::TooLong(limits)));
        assert_eq!(check_search("a b c c c !!", limits), Ok(()));
        assert_eq!(check_search(&"x".repeat(21), limits), Err(QueryError::TooLong(limits)));
        assert_eq!(check_search(" ?! ", limits), Err(QueryError::Empty));
    }

    #[test]
    fn built_queries_are_accepted_by_fts5() {
        for text in ["hello", "a\0b \u{1}c\u{7f}", r#"""" "a"#, "NEAR(a b) OR c AND NOT d", "x* ^y {a b}: c", "héllo wörld 🙂x", "'; DROP TABLE x; --"] {
            let query = fts5_query(text).unwrap();
            crate::store::sqlite::fts5_accepts(&query).unwrap_or_else(|e| panic!("{text:?} → {query:?}: {e}"));
        }
    }
}
