//! Carrying out the lines of `mqtter chat`, one at a time in the order they were typed (each
//! waits for its answer: a message for the server's acknowledgement, `/cmd` for the thing's
//! answer or its timeout). A refusal or a bad line prints a `!` line and the next one runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtter_client::{
    Client, CommandAck, CommandOptions, Error, FriendState, Outcome, Range, ReceiptKind, ThingEntry,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::commands::{Conv, HELP, Line, parse};
use super::render::{Out, body_text};
use super::state::{State, target};

/// How long a `/cmd` gives its thing to answer.
pub const COMMAND_TTL: Duration = Duration::from_secs(30);

/// How many messages `/history` shows.
pub const HISTORY_PAGE: usize = 20;

pub struct Runner {
    pub client: Client,
    pub state: Arc<Mutex<State>>,
    pub out: Out,
}

impl Runner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Once `ready` (the first sync is over), each line in turn, until `/quit` or the end of
    /// the input.
    pub async fn run(
        self,
        mut lines: mpsc::UnboundedReceiver<std::io::Result<String>>,
        ready: oneshot::Receiver<()>,
    ) {
        // Lines typed before the overview wait for it; a `/quit` with nothing before it ends
        // at once (a script's `/quit` after other lines waits for them).
        let mut early = Vec::new();
        let mut ended = false;
        tokio::pin!(ready);
        loop {
            tokio::select! {
                synced = &mut ready => match synced {
                    Ok(()) => break,
                    Err(_) => return,
                },
                line = lines.recv(), if !ended => match line {
                    Some(Ok(line)) if early.is_empty() && parse(&line) == Ok(Line::Quit) => {
                        return;
                    }
                    Some(line) => early.push(line),
                    None => ended = true,
                },
            }
        }
        let mut early = std::collections::VecDeque::from(early);
        loop {
            let line = match early.pop_front() {
                Some(line) => line,
                None if ended => return,
                None => match lines.recv().await {
                    Some(line) => line,
                    None => return,
                },
            };
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    self.out.error(&format!("cannot read the input: {err}"));
                    return;
                }
            };
            match parse(&line) {
                Err(why) => self.out.error(&why),
                Ok(Line::Quit) => return,
                Ok(line) => self.exec(line).await,
            }
        }
    }

    async fn exec(&self, line: Line) {
        let out = self.out;
        let client = &self.client;
        match line {
            Line::Nothing | Line::Quit => {}
            Line::Help => HELP.iter().for_each(|h| out.item(h)),
            Line::Add(peer) => {
                let was_friend = self.known(&Conv::Person(peer.clone())).is_ok();
                self.add(&peer, was_friend).await
            }
            Line::Accept(peer) => match client.friend_accept(&peer).await {
                Ok(()) => out.notice(&format!("accepted {peer}'s friend request")),
                Err(err) => out.error(&format!("cannot accept {peer}: {}", explain(&err))),
            },
            Line::Reject(peer) => match client.friend_reject(&peer).await {
                Ok(()) => out.notice(&format!("rejected {peer}'s friend request")),
                Err(err) => out.error(&format!("cannot reject {peer}: {}", explain(&err))),
            },
            Line::Friends => self.friends(),
            Line::Groups => self.groups(),
            Line::Things => match client.things().await {
                Ok(things) if things.is_empty() => out.item("(no things)"),
                Ok(things) => things.iter().for_each(|t| out.item(&thing_summary(t))),
                Err(err) => out.error(&format!("cannot list the things: {}", explain(&err))),
            },
            Line::Msg(to, text) => self.say(&Conv::Person(to), &text).await,
            Line::Group(to, text) => self.say(&Conv::Group(to), &text).await,
            Line::Say(text) => {
                let current = self.state().current.clone();
                match current {
                    Some(conv) => self.say(&conv, &text).await,
                    None => out.error(
                        "no conversation chosen: /to NAME or /to group GROUP first, or /msg NAME TEXT",
                    ),
                }
            }
            Line::To(conv) => {
                if let Err(why) = self.known(&conv) {
                    out.error(&why);
                } else {
                    out.notice(&format!("plain lines now go to {}", conv.show()));
                    self.state().current = Some(conv);
                }
            }
            Line::Join(group) => match client.group_join(&group).await {
                Ok(()) => out.notice(&format!("asked to join group {group}")),
                Err(err) => out.error(&format!("cannot join {group}: {}", explain(&err))),
            },
            Line::Cmd(thing, body) => self.command(&thing, body).await,
            Line::P2p(friend) => {
                if let Err(why) = self.known(&Conv::Person(friend.clone())) {
                    return out.error(&why);
                }
                // Success is the `DirectOpened` event's line.
                if let Err(err) = client.open_direct(&friend).await {
                    out.error(&format!(
                        "no direct channel to {friend}: {}; messages go through the server",
                        explain(&err)
                    ));
                }
            }
            Line::History(conv) => self.history(&conv).await,
            Line::Read(conv) => self.read(&conv).await,
        }
    }

    async fn add(&self, peer: &str, was_friend: bool) {
        match self.client.friend_request(peer).await {
            Ok(FriendState::Friends) if was_friend => {
                self.out.notice(&format!("{peer} is already your friend"))
            }
            // Friends at once (they had asked, or accept everyone): the `friend.added` notice
            // says so.
            Ok(FriendState::Friends) => {}
            Ok(FriendState::Pending) => self.out.notice(&format!("friend request sent to {peer}")),
            Err(err) => self
                .out
                .error(&format!("cannot add {peer}: {}", explain(&err))),
        }
    }

    /// Whether `conv` is a friend or a group of this account (as the roster says).
    fn known(&self, conv: &Conv) -> Result<(), String> {
        let roster = self.client.roster();
        match conv {
            Conv::Person(p) if roster.friends.iter().any(|f| &f.id == p) => Ok(()),
            Conv::Person(p) => Err(format!("{p} is not your friend (/add {p} asks them)")),
            Conv::Group(g) if roster.groups.iter().any(|x| &x.id == g) => Ok(()),
            Conv::Group(g) => Err(format!("you are not in a group {g} (/groups lists yours)")),
        }
    }

    async fn say(&self, conv: &Conv, text: &str) {
        if let Err(why) = self.known(conv) {
            return self.out.error(&why);
        }
        let direct = matches!(conv, Conv::Person(p) if self.client.direct().is_open(p));
        match self.client.send_text(&target(conv), text).await {
            Ok(_) => self
                .out
                .sent(&conv.show(), text, direct.then_some("direct")),
            Err(err) => self
                .out
                .error(&format!("not sent to {}: {}", conv.show(), explain(&err))),
        }
    }

    fn friends(&self) {
        let roster = self.client.roster();
        let state = self.state();
        let out = self.out;
        if roster.friends.is_empty() {
            out.item("(no friends yet: /add NAME)");
        }
        for friend in &roster.friends {
            // The presence events are newer than the roster's sync.
            let presence = state
                .presence
                .get(&friend.id)
                .map_or(friend.presence.as_str(), |(p, _)| p.as_str());
            let mut line = format!("{} {presence}", friend.id);
            let unread = state
                .unread
                .get(&state.conv_id(&Conv::Person(friend.id.clone())));
            if let Some(n) = unread.filter(|n| **n > 0) {
                line.push_str(&format!(", {n} unread"));
            }
            let text = state
                .presence
                .get(&friend.id)
                .map_or(friend.text.as_ref(), |(_, t)| t.as_ref());
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                line.push_str(&format!(": {text}"));
            }
            out.item(&line);
        }
        for from in &roster.requests.incoming {
            out.item(&format!("request from {from} (/accept {from})"));
        }
        for to in &roster.requests.outgoing {
            out.item(&format!("asked {to}, waiting for an answer"));
        }
    }

    fn groups(&self) {
        let roster = self.client.roster();
        let state = self.state();
        if roster.groups.is_empty() {
            self.out.item("(no groups)");
        }
        for group in &roster.groups {
            let mut line = format!("{} ({})", group.id, group.role);
            if !group.name.is_empty() {
                line = format!("{} \"{}\" ({})", group.id, group.name, group.role);
            }
            let unread = state
                .unread
                .get(&state.conv_id(&Conv::Group(group.id.clone())));
            if let Some(n) = unread.filter(|n| **n > 0) {
                line.push_str(&format!(", {n} unread"));
            }
            self.out.item(&line);
        }
    }

    async fn command(&self, thing: &str, body: Value) {
        let cid = self.client.new_cid();
        self.state().commands.insert(cid.clone());
        let opts = CommandOptions {
            ttl: Some(COMMAND_TTL),
            cid: Some(cid),
            ..CommandOptions::default()
        };
        match self.client.command_wait(thing, body, opts).await {
            Ok(Outcome::Acked(ack)) if ack.ok => self.out.notice(&answer_line(&ack)),
            Ok(Outcome::Acked(ack)) => self.out.error(&answer_line(&ack)),
            Ok(Outcome::TimedOut(t)) => self.out.error(&timeout_line(thing, t.delivered)),
            Err(Error::Rejected(_)) => self.out.error(&format!(
                "{thing}: command refused (no such thing, or you may not command it)"
            )),
            Err(err) => self
                .out
                .error(&format!("cannot command {thing}: {}", explain(&err))),
        }
    }

    async fn history(&self, conv: &Conv) {
        let id = self.state().conv_id(conv);
        let (messages, note) = match self.client.history(&id, Range::Newest, HISTORY_PAGE).await {
            Ok(page) => (page.messages, None),
            Err(err @ Error::Refused { .. }) => {
                return self.out.error(&format!(
                    "no history with {}: {}",
                    conv.show(),
                    explain(&err)
                ));
            }
            Err(err) => match self.client.cached_history(&id, Range::Newest, HISTORY_PAGE) {
                Ok(messages) => (messages, Some(format!("from the local cache: {err}"))),
                Err(cache) => {
                    return self
                        .out
                        .error(&format!("no history with {}: {err}; {cache}", conv.show()));
                }
            },
        };
        // Said over a direct channel, not uploaded yet: after what the server has.
        let pending = match conv {
            Conv::Person(friend) => self.client.direct().pending(friend).unwrap_or_default(),
            Conv::Group(_) => Vec::new(),
        };
        let mut messages = messages;
        let waiting = pending.len();
        messages.extend(pending);
        let note = match (note, waiting) {
            (note, 0) => note,
            (None, n) => Some(format!("{n} said directly, not uploaded yet")),
            (Some(note), n) => Some(format!("{note}; {n} said directly, not uploaded yet")),
        };
        let count = match messages.len() {
            1 => "1 message".to_owned(),
            n => format!("{n} messages"),
        };
        let mut heading = format!("history with {} ({count}", conv.show());
        if let Some(note) = note {
            heading.push_str(&format!(", {note}"));
        }
        heading.push(')');
        self.out.notice(&heading);
        for m in &messages {
            self.out.history(m.seq, m.ts, &m.from, &body_text(&m.body));
        }
    }

    async fn read(&self, conv: &Conv) {
        let id = self.state().conv_id(conv);
        let last = match self.client.history(&id, Range::Newest, 1).await {
            Ok(page) => page.last_seq,
            Err(err) => {
                return self.out.error(&format!(
                    "cannot mark {} read: {}",
                    conv.show(),
                    explain(&err)
                ));
            }
        };
        if last == 0 {
            return self
                .out
                .notice(&format!("nothing to read with {}", conv.show()));
        }
        match self.client.receipt(&id, last, ReceiptKind::Read).await {
            Ok(()) => {
                self.state().unread.remove(&id);
                self.out
                    .notice(&format!("marked {} read up to #{last}", conv.show()));
            }
            Err(err) => self.out.error(&format!(
                "cannot mark {} read: {}",
                conv.show(),
                explain(&err)
            )),
        }
    }
}

/// A refusal in words.
pub fn explain(err: &Error) -> String {
    match err {
        Error::Rejected(0x87) => {
            "refused by the server (not friends, blocked, or not a member)".into()
        }
        Error::Refused { code, message } => format!("{message} ({code})"),
        other => other.to_string(),
    }
}

/// `lamp answered ok: {"on":true}`, `lamp answered error: jammed`.
pub fn answer_line(ack: &CommandAck) -> String {
    let result = if ack.result.is_null() {
        String::new()
    } else if !ack.ok
        && let Some(message) = ack.result.get("error").and_then(Value::as_str)
    {
        format!(": {message}")
    } else {
        format!(": {}", ack.result)
    };
    let ok = if ack.ok { "ok" } else { "error" };
    format!("{} answered {ok}{result}", ack.thing)
}

pub fn timeout_line(thing: &str, delivered: bool) -> String {
    if delivered {
        format!("{thing} did not answer in time (it had the command)")
    } else {
        format!("{thing} did not answer in time (it was offline)")
    }
}

/// `lamp (owner, online) {"on":false}`.
pub fn thing_summary(thing: &ThingEntry) -> String {
    let access = match thing.access {
        mqtter_client::Access::Owner => "owner",
        mqtter_client::Access::Control => "control",
        mqtter_client::Access::View => "view",
    };
    let presence = if thing.presence.is_empty() {
        "offline"
    } else {
        &thing.presence
    };
    let mut line = format!("{} ({access}, {presence})", thing.id);
    if !thing.state.is_null() && thing.state != Value::Object(Default::default()) {
        line.push_str(&format!(" {}", thing.state));
    }
    line
}
