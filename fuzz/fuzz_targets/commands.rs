//! Slash-command parsing: never panics; a parsed command written back out
//! parses to the same command; refusals are the command errors, clean.
#![no_main]

use baby_discord::command::{parse_input, Command, Input};
use baby_discord::error::ChatError;
use baby_discord::names::is_invisible_format;
use libfuzzer_sys::fuzz_target;

/// The command as a user would type it; `None` for the account commands,
/// whose passwords are kept opaque by the parser.
fn write_back(command: &Command) -> Option<String> {
    Some(match command {
        Command::Help => "/help".into(),
        Command::Nick(name) => format!("/nick {name}"),
        Command::List => "/list".into(),
        Command::Quit => "/quit".into(),
        // Written the IRC way (`#room`), which parses to the same room.
        Command::Create(room) => format!("/create #{room}"),
        Command::Join(room) => format!("/join #{room}"),
        Command::Rooms => "/rooms".into(),
        Command::Leave => "/leave".into(),
        Command::Dm { to, text } => format!("/dm {to} {text}"),
        Command::CreatePrivate(room) => format!("/create #{room} private"),
        Command::Invite(nick) => format!("/invite {nick}"),
        Command::Kick(nick) => format!("/kick {nick}"),
        Command::Edit(text) => format!("/edit {text}"),
        Command::Delete => "/delete".into(),
        Command::Search(words) => format!("/search {words}"),
        Command::Me(text) => format!("/me {text}"),
        Command::Away(None) => "/away".into(),
        Command::Away(Some(message)) => format!("/away {message}"),
        Command::Back => "/back".into(),
        Command::Register(_) | Command::Password { .. } | Command::Login { .. } => return None,
    })
}

fn one_word(arg: &str) {
    assert!(!arg.is_empty() && !arg.contains(char::is_whitespace), "{arg:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    match parse_input(line) {
        Ok(Input::Message(text)) => {
            assert_eq!(text, line);
            assert!(!line.trim_start().starts_with('/'));
        }
        Ok(Input::Command(command)) => {
            match &command {
                Command::Nick(arg) | Command::Create(arg) | Command::Join(arg) => one_word(arg),
                Command::Search(words) => assert!(!words.is_empty() && words.trim() == words, "{words:?}"),
                Command::Dm { to, text } => {
                    one_word(to);
                    assert!(!text.is_empty() && text.trim() == text, "{text:?}");
                }
                Command::Edit(text) => assert!(!text.is_empty() && text.trim() == text, "{text:?}"),
                Command::Me(text) | Command::Away(Some(text)) => {
                    assert!(!text.is_empty() && text.trim() == text, "{text:?}");
                }
                _ => {}
            }
            if let Some(again) = write_back(&command) {
                assert_eq!(parse_input(&again), Ok(Input::Command(command)), "{again:?}");
            }
        }
        Err(error) => {
            assert!(matches!(error, ChatError::UnknownCommand(_) | ChatError::Usage(_)), "{error:?}");
            let text = error.to_string();
            assert!(!text.chars().any(|c| c.is_control() || is_invisible_format(c)), "{text:?}");
        }
    }
});
