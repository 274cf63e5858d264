//! The lines `mqtter chat` reads: a slash command or a plain line (a message to the current
//! conversation), parsed into [`Line`]; a bad line is an error that says what was expected.

use serde_json::Value;

/// A person or a group, as commands name them: `bob`, `group family`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conv {
    Person(String),
    Group(String),
}

impl Conv {
    /// `bob` or `group family`, as a user would type it again.
    pub fn show(&self) -> String {
        match self {
            Conv::Person(p) => p.clone(),
            Conv::Group(g) => format!("group {g}"),
        }
    }
}

/// What a line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Nothing (an empty line, a `#` comment).
    Nothing,
    Help,
    Quit,
    Add(String),
    Accept(String),
    Reject(String),
    Friends,
    Groups,
    Things,
    Msg(String, String),
    Group(String, String),
    /// A plain line: to the current conversation.
    Say(String),
    To(Conv),
    Cmd(String, Value),
    P2p(String),
    Join(String),
    History(Conv),
    Read(Conv),
}

/// The help text, one command a line.
pub const HELP: &[&str] = &[
    "/add NAME               ask NAME to be friends",
    "/accept NAME            accept NAME's friend request (/reject NAME refuses it)",
    "/friends                friends, presence, unread counts, requests",
    "/msg NAME TEXT          send TEXT to a friend",
    "/group GROUP TEXT       send TEXT to a group",
    "/groups                 your groups",
    "/join GROUP             join a group (one you were invited to, or an open one)",
    "/to NAME | /to group G  choose the conversation plain lines go to",
    "/history NAME | /history group G   the newest messages of a conversation",
    "/read NAME | /read group G         mark a conversation read (a read receipt)",
    "/things                 your things, their presence and state",
    "/cmd THING JSON         command a thing and wait for its answer, e.g. /cmd lamp {\"on\":true}",
    "/p2p NAME               open a direct channel to a friend (messages to NAME go over it)",
    "/help                   this list",
    "/quit                   leave (also at the end of the input)",
];

/// Parse one input line.
pub fn parse(line: &str) -> Result<Line, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Nothing);
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Ok(Line::Say(trimmed.to_owned()));
    };
    let (name, rest) = split_word(command);
    match name {
        "help" | "?" => none(name, rest, Line::Help),
        "quit" | "exit" => none(name, rest, Line::Quit),
        "friends" => none(name, rest, Line::Friends),
        "groups" => none(name, rest, Line::Groups),
        "things" => none(name, rest, Line::Things),
        "add" => one(name, rest, "NAME").map(Line::Add),
        "accept" => one(name, rest, "NAME").map(Line::Accept),
        "reject" => one(name, rest, "NAME").map(Line::Reject),
        "p2p" => one(name, rest, "NAME").map(Line::P2p),
        "join" => one(name, rest, "GROUP").map(Line::Join),
        "msg" => word_and_text(name, rest, "NAME").map(|(to, text)| Line::Msg(to, text)),
        "group" => word_and_text(name, rest, "GROUP").map(|(to, text)| Line::Group(to, text)),
        "to" => conv(name, rest).map(Line::To),
        "history" => conv(name, rest).map(Line::History),
        "read" => conv(name, rest).map(Line::Read),
        "cmd" => {
            let (thing, json) = split_word(rest);
            if thing.is_empty() || json.is_empty() {
                return Err("usage: /cmd THING JSON, e.g. /cmd lamp {\"on\":true}".into());
            }
            let body: Value = serde_json::from_str(json)
                .map_err(|e| format!("/cmd {thing}: bad JSON ({e}): {json}"))?;
            if !body.is_object() {
                return Err(format!(
                    "/cmd {thing}: a command is a JSON object, e.g. {{\"on\":true}}, not {json}"
                ));
            }
            Ok(Line::Cmd(thing.to_owned(), body))
        }
        "" => Err("a command name after /: try /help".into()),
        other => Err(format!("unknown command /{other} (try /help)")),
    }
}

/// The first word and the rest (trimmed).
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

fn none(name: &str, rest: &str, line: Line) -> Result<Line, String> {
    if rest.is_empty() {
        Ok(line)
    } else {
        Err(format!("/{name} takes nothing after it"))
    }
}

fn one(name: &str, rest: &str, what: &str) -> Result<String, String> {
    let (word, extra) = split_word(rest);
    if word.is_empty() || !extra.is_empty() {
        return Err(format!("usage: /{name} {what}"));
    }
    Ok(word.to_owned())
}

fn word_and_text(name: &str, rest: &str, what: &str) -> Result<(String, String), String> {
    let (word, text) = split_word(rest);
    if word.is_empty() || text.is_empty() {
        return Err(format!("usage: /{name} {what} TEXT"));
    }
    Ok((word.to_owned(), text.to_owned()))
}

/// `NAME` or `group GROUP`.
fn conv(name: &str, rest: &str) -> Result<Conv, String> {
    let usage = || format!("usage: /{name} NAME or /{name} group GROUP");
    match split_word(rest) {
        ("group", group) if !group.is_empty() && !group.contains(char::is_whitespace) => {
            Ok(Conv::Group(group.to_owned()))
        }
        (person, "") if !person.is_empty() => Ok(Conv::Person(person.to_owned())),
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/add bob"), Ok(Line::Add("bob".into())));
        assert_eq!(
            parse("  /accept  alice \n"),
            Ok(Line::Accept("alice".into()))
        );
        assert_eq!(
            parse("/msg bob hi there "),
            Ok(Line::Msg("bob".into(), "hi there".into()))
        );
        assert_eq!(
            parse("/group family hello all"),
            Ok(Line::Group("family".into(), "hello all".into()))
        );
        assert_eq!(
            parse("/cmd lamp {\"on\": true}"),
            Ok(Line::Cmd("lamp".into(), json!({"on": true})))
        );
        assert_eq!(parse("/to bob"), Ok(Line::To(Conv::Person("bob".into()))));
        assert_eq!(
            parse("/history group family"),
            Ok(Line::History(Conv::Group("family".into())))
        );
        assert_eq!(
            parse("/read bob"),
            Ok(Line::Read(Conv::Person("bob".into())))
        );
        assert_eq!(parse("/p2p bob"), Ok(Line::P2p("bob".into())));
        assert_eq!(parse("hello you"), Ok(Line::Say("hello you".into())));
        assert_eq!(parse(""), Ok(Line::Nothing));
        assert_eq!(parse("# a comment"), Ok(Line::Nothing));
        assert_eq!(parse("/quit"), Ok(Line::Quit));
        assert_eq!(parse("/friends"), Ok(Line::Friends));
        assert_eq!(parse("/things"), Ok(Line::Things));
    }

    #[test]
    fn bad_lines_say_why() {
        assert_eq!(
            parse("/frobnicate"),
            Err("unknown command /frobnicate (try /help)".into())
        );
        let err = parse("/cmd lamp {on: true}").unwrap_err();
        assert!(err.starts_with("/cmd lamp: bad JSON ("), "{err}");
        let err = parse("/cmd lamp [1]").unwrap_err();
        assert!(err.contains("a command is a JSON object"), "{err}");
        assert_eq!(
            parse("/cmd lamp"),
            Err("usage: /cmd THING JSON, e.g. /cmd lamp {\"on\":true}".into())
        );
        assert_eq!(parse("/msg bob"), Err("usage: /msg NAME TEXT".into()));
        assert_eq!(parse("/add"), Err("usage: /add NAME".into()));
        assert_eq!(parse("/add bob carol"), Err("usage: /add NAME".into()));
        assert_eq!(
            parse("/history"),
            Err("usage: /history NAME or /history group GROUP".into())
        );
        assert_eq!(
            parse("/friends now"),
            Err("/friends takes nothing after it".into())
        );
        assert_eq!(parse("/"), Err("a command name after /: try /help".into()));
    }
}
