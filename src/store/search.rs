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

/// Longest search text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most words one search may hold.
pub const MAX_QUERY_WORDS: usize = 16;

/// Why a search text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// No word with a letter or digit in it.
    Empty,
    /// Over [`MAX_QUERY_BYTES`] or [`MAX_QUERY_WORDS`].
    TooLong,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Empty => write!(f, "give at least one word to search for (letters or digits)."),
            QueryError::TooLong => {
                write!(f, "the search is too long; use at most {MAX_QUERY_WORDS} words and {MAX_QUERY_BYTES} bytes.")
            }
        }
    }
}

/// The words of a search text: split on whitespace, those with at least one
/// letter or digit, each once.
pub fn search_words(text: &str) -> Result<Vec<&str>, QueryError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    let mut words: Vec<&str> = Vec::new();
    for word in text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)) {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    match words.len() {
        0 => Err(QueryError::Empty),
        n if n > MAX_QUERY_WORDS => Err(QueryError::TooLong),
        _ => Ok(words),
    }
}

/// The FTS5 `MATCH` expression for a search text: each word a quoted phrase.
pub fn fts5_query(text: &str) -> Result<String, QueryError> {
    let words = search_words(text)?;
    let phrases: Vec<String> = words.iter().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect();
    Ok(phrases.join(" "))
}

/// The text handed to PostgreSQL's `plainto_tsquery('simple', …)`: the
/// checked words, space-separated.
pub fn tsquery_text(text: &str) -> Result<String, QueryError> {
    Ok(search_words(text)?.join(" "))
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
        assert_eq!(fts5_query(&"x".repeat(MAX_QUERY_BYTES + 1)), Err(QueryError::TooLong));
        let many: Vec<String> = (0..=MAX_QUERY_WORDS).map(|i| format!("w{i}")).collect();
        assert_eq!(fts5_query(&many.join(" ")), Err(QueryError::TooLong));
    }

    #[test]
    fn built_queries_are_accepted_by_fts5() {
        for text in ["hello", r#"""" "a"#, "NEAR(a b) OR c AND NOT d", "x* ^y {a b}: c", "héllo wörld 🙂x", "'; DROP TABLE x; --"] {
            let query = fts5_query(text).unwrap();
            crate::store::sqlite::fts5_accepts(&query).unwrap_or_else(|e| panic!("{text:?} → {query:?}: {e}"));
        }
    }
}
