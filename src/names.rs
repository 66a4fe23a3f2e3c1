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
        return Err(format!("'{name}' is longer than {MAX_NAME_CHARS} characters."));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!(
            "'{}' contains {:?}; use only letters, digits, '_' or '-'.",
            strip_controls(name),
            bad
        ));
    }
    Ok(())
}

/// Removes control characters (C0, DEL, C1) so no user can send terminal
/// escape sequences to another. Tabs become spaces.
pub fn strip_controls(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Cleans a chat message and checks its length: the text that will be stored
/// and delivered.
pub fn clean_message(text: &str, max_chars: usize) -> Result<String, ChatError> {
    let cleaned = strip_controls(text);
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        return Err(ChatError::EmptyMessage);
    }
    if trimmed.chars().count() > max_chars {
        return Err(ChatError::MessageTooLong { max: max_chars });
    }
    Ok(trimmed.to_string())
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
        assert_eq!(strip_controls("hi\x1b[31mred\x07\u{9b}"), "hi[31mred");
        assert_eq!(clean_message("  a\tb  ", 10).unwrap(), "a b");
        assert_eq!(clean_message("\x1b\x1b", 10), Err(ChatError::EmptyMessage));
        assert_eq!(clean_message("héllo", 5).unwrap(), "héllo");
        assert_eq!(clean_message("héllo!", 5), Err(ChatError::MessageTooLong { max: 5 }));
    }
}
