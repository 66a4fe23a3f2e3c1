//! Rules for names and message text, shared by every adapter and the router.

use crate::error::ChatError;

/// Longest nickname or room name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Checks a nickname: 1–32 letters, digits, `_` or `-`. Case is kept for
/// display; uniqueness ignores case (see [`name_key`]).
pub fn validate_nickname(nick: &str) -> Result<(), ChatError> {
    check_name(nick).map_err(ChatError::InvalidNickname)
}

/// Checks a room name and returns its stored (lower-case) form.
pub fn normalize_room(name: &str) -> Result<String, ChatError> {
    check_name(name).map_err(ChatError::InvalidRoomName)?;
    Ok(name.to_ascii_lowercase())
}

/// The case-insensitive key under which a nickname is unique.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty; use 1-32 letters, digits, '_' or '-'.".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("'{}' is longer than {MAX_NAME_CHARS} characters.", clean_text(name)));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!(
            "'{}' contains {:?}; use only letters, digits, '_' or '-'.",
            clean_text(name),
            bad
        ));
    }
    Ok(())
}

/// Removes what could let one user change how text looks on another's
/// screen: control characters (C0, DEL, C1), so no terminal escape
/// sequences, and Unicode bidirectional controls and invisible formatting
/// characters ([`is_invisible_format`]), so no reversed or hidden text.
/// Tabs become spaces. Used on every delivered message and on every piece
/// of user text echoed back in an error.
pub fn clean_text(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() || is_invisible_format(c) => None,
            c => Some(c),
        })
        .collect()
}

/// Unicode bidirectional controls and invisible formatting characters:
/// zero-width space, joiners and marks (U+200B–U+200F), the embeddings and
/// overrides (U+202A–U+202E), word joiner and invisible operators
/// (U+2060–U+2064), the isolates (U+2066–U+2069), the byte order mark
/// (U+FEFF), and the Arabic letter mark (U+061C), the one bidi control
/// outside those blocks.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Cleans a chat message and checks its length: the text that will be stored
/// and delivered.
pub fn clean_message(text: &str, max_chars: usize) -> Result<String, ChatError> {
    let cleaned = clean_text(text);
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        return Err(ChatError::EmptyMessage);
    }
    if trimmed.chars().count() > max_chars {
        return Err(ChatError::MessageTooLong { max: max_chars });
    }
    Ok(trimmed.to_string())
}

/// The nicknames a message mentions as `@nick`, as their case-insensitive
/// keys ([`name_key`]), each once, in order of first mention. A mention is
/// `@` not preceded by a nickname character (so `a@b` is not one), followed
/// by 1–32 nickname characters that the next character does not continue
/// (`@alice's` mentions alice; `@alice_` mentions `alice_`).
pub fn mentioned_keys(text: &str) -> Vec<String> {
    let is_nick = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut keys: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '@' && !previous.is_some_and(is_nick) {
            let start = at + 1;
            let end = text[start..].find(|c: char| !is_nick(c)).map_or(text.len(), |n| start + n);
            let nick = &text[start..end];
            if !nick.is_empty() && nick.len() <= MAX_NAME_CHARS {
                let key = name_key(nick);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            while chars.peek().is_some_and(|(i, _)| *i < end) {
                chars.next();
            }
            previous = text[..end].chars().next_back();
            continue;
        }
        previous = Some(c);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames() {
        assert!(validate_nickname("alice").is_ok());
        assert!(validate_nickname("A_b-9").is_ok());
        assert!(validate_nickname(&"x".repeat(32)).is_ok());
        assert!(validate_nickname(&"x".repeat(33)).is_err());
        assert!(validate_nickname("").is_err());
        assert!(validate_nickname("al ice").is_err());
        assert!(validate_nickname("élan").is_err());
        assert_eq!(name_key("Alice"), name_key("aLICE"));
    }

    #[test]
    fn rooms_are_lower_case() {
        assert_eq!(normalize_room("General").unwrap(), "general");
        assert!(normalize_room("a/b").is_err());
    }

    #[test]
    fn control_characters_are_removed() {
        assert_eq!(clean_text("hi\x1b[31mred\x07\u{9b}"), "hi[31mred");
        assert_eq!(clean_message("  a\tb  ", 10).unwrap(), "a b");
        assert_eq!(clean_message("\x1b\x1b", 10), Err(ChatError::EmptyMessage));
        assert_eq!(clean_message("héllo", 5).unwrap(), "héllo");
        assert_eq!(clean_message("héllo!", 5), Err(ChatError::MessageTooLong { max: 5 }));
    }

    const INVISIBLE: &[char] = &[
        '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}',
        '\u{202D}', '\u{202E}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}', '\u{2064}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{FEFF}',
    ];

    #[test]
    fn bidi_and_invisible_characters_are_removed_from_messages() {
        for &c in INVISIBLE {
            assert!(is_invisible_format(c), "{c:?}");
            assert_eq!(clean_message(&format!("a{c}b"), 10).unwrap(), "ab", "{c:?}");
            assert_eq!(clean_message(&c.to_string(), 10), Err(ChatError::EmptyMessage), "{c:?}");
        }
        assert_eq!(clean_message("\u{202E}gnp.exe\u{202C}", 20).unwrap(), "gnp.exe");
        // Neighbours of the ranges are ordinary text.
        for c in ['\u{200A}', '\u{2010}', '\u{2029}', '\u{2065}', '\u{206A}', '\u{FEFE}', 'é', '🙂'] {
            assert!(!is_invisible_format(c), "{c:?}");
        }
    }

    #[test]
    fn bidi_and_invisible_characters_are_refused_in_names() {
        for &c in INVISIBLE {
            let name = format!("ali{c}ce");
            let err = validate_nickname(&name).unwrap_err().to_string();
            assert!(!err.contains(c), "{err:?}");
            assert!(normalize_room(&name).is_err(), "{c:?}");
            assert!(normalize_room(&c.to_string()).is_err(), "{c:?}");
        }
    }

    #[test]
    fn refusals_never_echo_control_or_invisible_characters() {
        let hostile = format!("\x1b[2J\u{202E}{}\x07", "x".repeat(40));
        for err in [
            validate_nickname(&hostile).unwrap_err(),
            normalize_room(&hostile).unwrap_err(),
            validate_nickname("a\x1b[31mb").unwrap_err(),
            ChatError::UserNotOnline(hostile.clone()),
            ChatError::NoSuchRoom(hostile.clone()),
            ChatError::UnknownCommand(hostile.clone()),
            ChatError::WrongRoom { current: "a".into(), requested: hostile.clone() },
        ] {
            let text = err.to_string();
            assert_eq!(text, clean_text(&text), "{text:?}");
            assert!(text.contains("[2J") || text.contains("[31m"), "{text:?}");
        }
    }

    #[test]
    fn mentions_are_whole_nicknames_after_an_at_sign() {
        assert_eq!(mentioned_keys("hi @Alice, and @bob's cat"), vec!["alice", "bob"]);
        assert_eq!(mentioned_keys("@alice @ALICE @alice"), vec!["alice"]);
        assert_eq!(mentioned_keys("mail me at x@alice.com or @@carol"), vec!["carol"]);
        assert_eq!(mentioned_keys("(@dave) @é @ @-x_"), vec!["dave", "-x_"]);
        assert!(mentioned_keys(&format!("@{}", "x".repeat(33))).is_empty());
        assert_eq!(mentioned_keys(&format!("@{}", "x".repeat(32))), vec!["x".repeat(32)]);
        assert_eq!(mentioned_keys("héllo@bob 🙂@eve"), vec!["eve"]);
    }
}
