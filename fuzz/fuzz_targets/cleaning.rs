//! Name and message cleaning: nothing that could alter another user's
//! screen survives cleaning, cleaning is idempotent, and the validators
//! accept only the name alphabet.
#![no_main]

use baby_discord::error::ChatError;
use baby_discord::names::{clean_message, clean_text, is_invisible_format, name_key, normalize_room, validate_nickname};
use libfuzzer_sys::fuzz_target;

fn dirty(c: char) -> bool {
    c.is_control() || is_invisible_format(c)
}

fn name_alphabet(name: &str) -> bool {
    (1..=32).contains(&name.chars().count()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, text)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(text);
    let max = if limit == 0 { 2000 } else { limit as usize };

    let cleaned = clean_text(&text);
    assert!(!cleaned.chars().any(dirty), "{cleaned:?}");
    assert_eq!(clean_text(&cleaned), cleaned);

    match clean_message(&text, max) {
        Ok(message) => {
            assert!(!message.chars().any(dirty), "{message:?}");
            assert!(!message.is_empty() && message.trim() == message);
            assert!(message.chars().count() <= max);
            assert_eq!(clean_message(&message, max), Ok(message));
        }
        Err(ChatError::EmptyMessage) => assert!(cleaned.trim().is_empty()),
        Err(ChatError::MessageTooLong { max: m }) => {
            assert_eq!(m, max);
            assert!(cleaned.trim().chars().count() > max);
        }
        Err(other) => panic!("unexpected refusal {other:?}"),
    }

    for candidate in [&*text, cleaned.as_str(), cleaned.trim()] {
        match validate_nickname(candidate) {
            Ok(()) => assert!(name_alphabet(candidate), "{candidate:?}"),
            Err(e) => {
                assert!(matches!(e, ChatError::InvalidNickname(_)));
                assert!(!e.to_string().chars().any(dirty), "{e}");
            }
        }
        match normalize_room(candidate) {
            Ok(room) => {
                assert!(name_alphabet(&room), "{room:?}");
                assert_eq!(room, room.to_ascii_lowercase());
                assert_eq!(normalize_room(&room).as_deref(), Ok(room.as_str()));
            }
            Err(e) => {
                assert!(matches!(e, ChatError::InvalidRoomName(_)));
                assert!(!e.to_string().chars().any(dirty), "{e}");
            }
        }
        let key = name_key(candidate);
        assert_eq!(name_key(&key), key);
    }
});
