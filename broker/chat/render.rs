//! What `mqtter chat` prints: one line per thing that happened, in a few shapes a script can
//! rely on (`<bob> hi`, `[family] <bob> hi`, `-> bob: hi`, `* notice`, `! error`, `  listing`),
//! coloured only when asked (stdout a terminal, no `--no-color`, no `NO_COLOR`).

use std::io::Write;

const RESET: &str = "\x1b[0m";
const NAME: &str = "\x1b[1;36m";
const SENT: &str = "\x1b[32m";
const NOTICE: &str = "\x1b[33m";
const ERROR: &str = "\x1b[1;31m";
const DIM: &str = "\x1b[2m";

/// Where lines go, coloured or plain. Each line is written whole and flushed.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub color: bool,
}

impl Out {
    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn write(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A message someone sent: `<bob> hi`, or `[family] <bob> hi` when `place` is given.
    pub fn message(&self, place: Option<&str>, from: &str, text: &str, note: Option<&str>) {
        let mut line = String::new();
        if let Some(place) = place {
            line.push_str(&self.paint(DIM, &format!("[{}] ", clean(place))));
        }
        line.push_str(&self.paint(NAME, &format!("<{}>", clean(from))));
        line.push(' ');
        line.push_str(&clean(text));
        if let Some(note) = note {
            line.push_str(&self.paint(DIM, &format!(" ({note})")));
        }
        self.write(&line);
    }

    /// A message this client sent, once the server (or the peer) has it: `-> bob: hi`.
    pub fn sent(&self, to: &str, text: &str, note: Option<&str>) {
        let mut line = self.paint(SENT, &format!("-> {}:", clean(to)));
        line.push(' ');
        line.push_str(&clean(text));
        if let Some(note) = note {
            line.push_str(&self.paint(DIM, &format!(" ({note})")));
        }
        self.write(&line);
    }

    /// Something that happened: `* bob is online`.
    pub fn notice(&self, text: &str) {
        self.write(&self.paint(NOTICE, &format!("* {}", clean(text))));
    }

    /// Something that went wrong; the client goes on: `! unknown command /x (try /help)`.
    pub fn error(&self, text: &str) {
        self.write(&self.paint(ERROR, &format!("! {}", clean(text))));
    }

    /// A line of a listing (`/friends`, `/history`, `/help`): indented.
    pub fn item(&self, text: &str) {
        self.write(&format!("  {}", clean(text)));
    }

    /// A history line: `  #3 2026-12-03 13:40Z <alice> hi`.
    pub fn history(&self, seq: u64, ts: u64, from: &str, text: &str) {
        let when = chrono::DateTime::from_timestamp_millis(i64::try_from(ts).unwrap_or(0))
            .map(|t| t.format("%Y-%m-%d %H:%MZ").to_string())
            .unwrap_or_default();
        let seq = if seq == 0 {
            "#-".to_owned()
        } else {
            format!("#{seq}")
        };
        self.write(&format!(
            "  {} {} {}",
            self.paint(DIM, &format!("{seq} {when}")),
            self.paint(NAME, &format!("<{}>", clean(from))),
            clean(text)
        ));
    }
}

/// What others wrote, safe on a terminal and on one line: a newline is shown as `\n`, other
/// control characters (an escape sequence's ESC) as U+FFFD.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A message body as a line: its `text`, else its JSON.
pub fn body_text(body: &serde_json::Value) -> String {
    match body.get("text").and_then(serde_json::Value::as_str) {
        Some(text) => text.to_owned(),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_text_stays_on_one_line_without_escapes() {
        assert_eq!(clean("hi\nthere\x1b[31m"), "hi\\nthere\u{fffd}[31m");
        assert_eq!(body_text(&serde_json::json!({"text": "hi"})), "hi");
        assert_eq!(body_text(&serde_json::json!({"n": 1})), "{\"n\":1}");
    }
}
