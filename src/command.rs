//! Slash commands: one enum, one table, one parser.
//!
//! Adapters turn a line of user input into an [`Input`]: either a chat
//! message or a [`Command`]. The table below is also the text of `/help`, so
//! the two cannot drift apart. Argument checks happen here, once; the router
//! only sees well-formed commands.

use crate::accounts::Secret;
use crate::error::ChatError;

/// A parsed slash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/help`
    Help,
    /// `/nick <name>`
    Nick(String),
    /// `/list`
    List,
    /// `/quit`
    Quit,
    /// `/create <room>`
    Create(String),
    /// `/create <room> private`
    CreatePrivate(String),
    /// `/invite <nick>`
    Invite(String),
    /// `/kick <nick>`
    Kick(String),
    /// `/join <room>`
    Join(String),
    /// `/rooms`
    Rooms,
    /// `/leave`
    Leave,
    /// `/dm <user> <message>`
    Dm { to: String, text: String },
    /// `/register <password>`
    Register(Secret),
    /// `/password <old> <new>`
    Password { old: Secret, new: Secret },
    /// `/login <nick> <password>`
    Login { nick: String, password: Secret },
    /// `/edit <new text>`: edits the user's last message in the room.
    Edit(String),
    /// `/delete`: deletes the user's last message in the room.
    Delete,
    /// `/search <words>`: the current room's messages with every word.
    Search(String),
    /// `/me <action>`: an action message in the current room.
    Me(String),
    /// `/away [message]`
    Away(Option<String>),
    /// `/back`
    Back,
}

/// One line of user input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Command(Command),
    /// Plain text for the current room.
    Message(String),
}

/// How a command is written and what it does; drives parsing and `/help`.
struct CommandSpec {
    name: &'static str,
    usage: &'static str,
    summary: &'static str,
    parse: fn(&str) -> Option<Command>,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec { name: "help", usage: "/help", summary: "list the commands", parse: |a| a.is_empty().then_some(Command::Help) },
    CommandSpec {
        name: "nick",
        usage: "/nick <name>",
        summary: "change your nickname",
        parse: |args| one_arg(args).map(Command::Nick),
    },
    CommandSpec {
        name: "list",
        usage: "/list",
        summary: "users in your room (everyone online when in no room)",
        parse: |a| a.is_empty().then_some(Command::List),
    },
    CommandSpec { name: "quit", usage: "/quit", summary: "say goodbye and disconnect", parse: |a| a.is_empty().then_some(Command::Quit) },
    CommandSpec {
        name: "create",
        usage: "/create <room> [private]",
        summary: "create a room and join it (private: invite-only, registered users)",
        parse: |args| match args.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name] => Some(Command::Create(irc_room(name))),
            [name, kind] if kind.eq_ignore_ascii_case("private") => Some(Command::CreatePrivate(irc_room(name))),
            _ => None,
        },
    },
    CommandSpec {
        name: "invite",
        usage: "/invite <nick>",
        summary: "let a registered user into your private room",
        parse: |args| one_arg(args).map(Command::Invite),
    },
    CommandSpec {
        name: "kick",
        usage: "/kick <nick>",
        summary: "remove a member from your private room",
        parse: |args| one_arg(args).map(Command::Kick),
    },
    CommandSpec {
        name: "join",
        usage: "/join <room>",
        summary: "join a room and see its recent messages (#room works too)",
        parse: |args| one_arg(args).map(|name| Command::Join(irc_room(&name))),
    },
    CommandSpec { name: "rooms", usage: "/rooms", summary: "every room with its member count", parse: |a| a.is_empty().then_some(Command::Rooms) },
    CommandSpec { name: "leave", usage: "/leave", summary: "leave the current room", parse: |a| a.is_empty().then_some(Command::Leave) },
    CommandSpec {
        name: "register",
        usage: "/register <password>",
        summary: "register your nickname (password of 8 to 128 characters)",
        parse: |args| (!args.is_empty()).then(|| Command::Register(Secret::new(args))),
    },
    CommandSpec {
        name: "password",
        usage: "/password <old> <new>",
        summary: "change your password",
        parse: |args| {
            let (old, new) = args.split_once(char::is_whitespace)?;
            let new = new.trim();
            (!new.is_empty()).then(|| Command::Password { old: Secret::new(old), new: Secret::new(new) })
        },
    },
    CommandSpec {
        name: "login",
        usage: "/login <nick> <password>",
        summary: "log in to a registered nickname in this connection",
        parse: |args| {
            let (nick, password) = args.split_once(char::is_whitespace)?;
            let password = password.trim();
            (!password.is_empty()).then(|| Command::Login { nick: nick.to_string(), password: Secret::new(password) })
        },
    },
    CommandSpec {
        name: "edit",
        usage: "/edit <new text>",
        summary: "replace the text of your last message in this room",
        parse: |args| (!args.is_empty()).then(|| Command::Edit(args.to_string())),
    },
    CommandSpec {
        name: "delete",
        usage: "/delete",
        summary: "delete your last message in this room",
        parse: |a| a.is_empty().then_some(Command::Delete),
    },
    CommandSpec {
        name: "search",
        usage: "/search <words>",
        summary: "the newest 10 messages of your room with all these words",
        parse: |args| (!args.is_empty()).then(|| Command::Search(args.to_string())),
    },
    CommandSpec {
        name: "me",
        usage: "/me <action>",
        summary: "say what you do: [room] * you <action>",
        parse: |args| (!args.is_empty()).then(|| Command::Me(args.to_string())),
    },
    CommandSpec {
        name: "away",
        usage: "/away [message]",
        summary: "mark yourself away, with an optional message",
        parse: |args| Some(Command::Away((!args.is_empty()).then(|| args.to_string()))),
    },
    CommandSpec { name: "back", usage: "/back", summary: "mark yourself back (online)", parse: |a| a.is_empty().then_some(Command::Back) },
    // IRC habits: the same commands under the names IRC users type.
    CommandSpec {
        name: "msg",
        usage: "/msg <user> <message>",
        summary: "send a private message (the IRC name of dm)",
        parse: |args| {
            let (to, text) = args.split_once(char::is_whitespace)?;
            let text = text.trim();
            (!text.is_empty()).then(|| Command::Dm { to: to.to_string(), text: text.to_string() })
        },
    },
    CommandSpec { name: "part", usage: "/part", summary: "same as /leave", parse: |a| a.is_empty().then_some(Command::Leave) },
    CommandSpec { name: "who", usage: "/who", summary: "same as /list", parse: |a| a.is_empty().then_some(Command::List) },
    CommandSpec {
        name: "dm",
        usage: "/dm <user> <message>",
        summary: "send a private message to an online user",
        parse: |args| {
            let (to, text) = args.split_once(char::is_whitespace)?;
            let text = text.trim();
            (!text.is_empty()).then(|| Command::Dm { to: to.to_string(), text: text.to_string() })
        },
    },
];

/// A room name as IRC users write it: `#general` is `general`.
fn irc_room(name: &str) -> String {
    name.strip_prefix('#').filter(|rest| !rest.is_empty()).unwrap_or(name).to_string()
}

fn one_arg(args: &str) -> Option<String> {
    (!args.is_empty() && !args.contains(char::is_whitespace)).then(|| args.to_string())
}

/// Parses one line of user input (without its line ending).
pub fn parse_input(line: &str) -> Result<Input, ChatError> {
    let Some(rest) = line.trim_start().strip_prefix('/') else {
        return Ok(Input::Message(line.to_string()));
    };
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((name, args)) => (name, args.trim()),
        None => (rest, ""),
    };
    let lower = name.to_ascii_lowercase();
    let spec = COMMANDS
        .iter()
        .find(|spec| spec.name == lower)
        .ok_or_else(|| ChatError::UnknownCommand(format!("/{}", crate::names::clean_text(name))))?;
    (spec.parse)(args).map(Input::Command).ok_or(ChatError::Usage(spec.usage))
}

/// The text of `/help`: every command with a one-line description.
pub fn help_text() -> String {
    let width = COMMANDS.iter().map(|c| c.usage.len()).max().unwrap_or(0);
    let mut text = String::from("Available commands:");
    for spec in COMMANDS {
        text.push_str(&format!("\n  {:<width$}  {}", spec.usage, spec.summary));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        match parse_input(line) {
            Ok(Input::Command(c)) => c,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(cmd("/help"), Command::Help);
        assert_eq!(cmd("/nick bob"), Command::Nick("bob".into()));
        assert_eq!(cmd("/list"), Command::List);
        assert_eq!(cmd("/quit"), Command::Quit);
        assert_eq!(cmd("/create general"), Command::Create("general".into()));
        assert_eq!(cmd("/create secret Private"), Command::CreatePrivate("secret".into()));
        assert_eq!(cmd("/invite bob"), Command::Invite("bob".into()));
        assert_eq!(cmd("/kick bob"), Command::Kick("bob".into()));
        assert_eq!(parse_input("/create a b"), Err(ChatError::Usage("/create <room> [private]")));
        assert_eq!(cmd("/join  general "), Command::Join("general".into()));
        assert_eq!(cmd("/rooms"), Command::Rooms);
        assert_eq!(cmd("/leave"), Command::Leave);
        assert_eq!(cmd("/dm bob hi there"), Command::Dm { to: "bob".into(), text: "hi there".into() });
        assert_eq!(cmd("/JOIN x"), Command::Join("x".into()));
        assert_eq!(cmd("/register hunter22hunter"), Command::Register(Secret::new("hunter22hunter")));
        assert_eq!(
            cmd("/password old12345 new 12345"),
            Command::Password { old: Secret::new("old12345"), new: Secret::new("new 12345") }
        );
        assert_eq!(cmd("/search  hello  world "), Command::Search("hello  world".into()));
        assert_eq!(parse_input("/search"), Err(ChatError::Usage("/search <words>")));
        assert_eq!(cmd("/login alice pw pw pw"), Command::Login { nick: "alice".into(), password: Secret::new("pw pw pw") });
        assert_eq!(format!("{:?}", cmd("/register hunter22hunter")), "Register(Secret(\"***\"))");
        assert_eq!(cmd("/edit  new  text "), Command::Edit("new  text".into()));
        assert_eq!(cmd("/delete"), Command::Delete);
        assert_eq!(parse_input("/edit"), Err(ChatError::Usage("/edit <new text>")));
        assert_eq!(parse_input("/delete it"), Err(ChatError::Usage("/delete")));
        assert_eq!(cmd("/me waves  hello"), Command::Me("waves  hello".into()));
        assert_eq!(cmd("/away"), Command::Away(None));
        assert_eq!(cmd("/away out for lunch"), Command::Away(Some("out for lunch".into())));
        assert_eq!(cmd("/back"), Command::Back);
    }

    #[test]
    fn irc_aliases_are_the_same_commands() {
        assert_eq!(cmd("/msg bob hi there"), cmd("/dm bob hi there"));
        assert_eq!(cmd("/part"), Command::Leave);
        assert_eq!(cmd("/who"), Command::List);
        assert_eq!(cmd("/join #general"), Command::Join("general".into()));
        assert_eq!(cmd("/create #general"), Command::Create("general".into()));
        assert_eq!(cmd("/create #secret private"), Command::CreatePrivate("secret".into()));
        assert_eq!(cmd("/join #"), Command::Join("#".into()));
        assert_eq!(parse_input("/msg bob"), Err(ChatError::Usage("/msg <user> <message>")));
        assert_eq!(parse_input("/me"), Err(ChatError::Usage("/me <action>")));
        assert_eq!(parse_input("/back now"), Err(ChatError::Usage("/back")));
    }

    #[test]
    fn plain_text_is_a_message() {
        assert_eq!(parse_input("hello /join").unwrap(), Input::Message("hello /join".into()));
    }

    #[test]
    fn missing_or_extra_arguments_give_the_usage() {
        assert_eq!(parse_input("/join"), Err(ChatError::Usage("/join <room>")));
        assert_eq!(parse_input("/join a b"), Err(ChatError::Usage("/join <room>")));
        assert_eq!(parse_input("/dm bob"), Err(ChatError::Usage("/dm <user> <message>")));
        assert_eq!(parse_input("/help me"), Err(ChatError::Usage("/help")));
        assert_eq!(parse_input("/nick"), Err(ChatError::Usage("/nick <name>")));
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(parse_input("/dance now"), Err(ChatError::UnknownCommand("/dance".into())));
        assert_eq!(parse_input("/"), Err(ChatError::UnknownCommand("/".into())));
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for spec in COMMANDS {
            assert!(help.contains(spec.usage), "{} missing from help", spec.usage);
        }
    }
}
