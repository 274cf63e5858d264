//! What arrives for `mqtter chat`, printed as it comes: messages, receipts, presence changes,
//! friend and group notices, things' answers, events, state and presence, direct channels,
//! lost connections; and the overview once the first sync is over.

use std::sync::{Arc, Mutex};

use mqtter_client::{Client, ConvId, Error, Event, Notice, Roster, ThingEntry};

use super::render::{Out, body_text};
use super::state::State;

/// Prints the stream's events; `ready` is told when the first sync is over.
pub struct Printer {
    pub client: Client,
    pub state: Arc<Mutex<State>>,
    pub out: Out,
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Printer {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn handle(&mut self, event: Event) {
        let out = self.out;
        match event {
            Event::Connected(roster) => self.connected(&roster),
            Event::Synced => {
                self.state().live = true;
                self.maybe_ready();
            }
            Event::FeedDone { .. } => {
                self.state().feed_done = true;
                self.maybe_ready();
            }
            Event::Message(m) => {
                let mut state = self.state();
                let live = state.live;
                let group = m.conv.group_id().map(str::to_owned);
                if m.from != state.me && (live || group.is_none()) {
                    // A group's unread count before the first sync's end is the roster's.
                    *state.unread.entry(m.conv.clone()).or_default() += 1;
                }
                if !live {
                    return;
                }
                let note = (m.seq == 0).then_some("direct");
                let text = body_text(&m.body);
                if m.from == state.me {
                    // From another device of this account: `[bob] <alice> hi`,
                    // `[family] <alice> hi`.
                    let place = group.clone().unwrap_or_else(|| state.label(&m.conv));
                    drop(state);
                    out.message(Some(&place), &m.from, &text, note);
                } else {
                    drop(state);
                    out.message(group.as_deref(), &m.from, &text, note);
                }
            }
            Event::Presence(p) => {
                let mut state = self.state();
                if p.id == state.me {
                    return;
                }
                let now = (p.presence.clone(), p.text.clone());
                // Before the overview, which lists it, a presence is not news.
                if state.presence.get(&p.id) == Some(&now) || !state.synced {
                    state.presence.insert(p.id.clone(), now);
                    return;
                }
                state.presence.insert(p.id.clone(), now);
                drop(state);
                match &p.text {
                    Some(text) if !text.is_empty() => {
                        out.notice(&format!("{} is {}: {text}", p.id, p.presence))
                    }
                    _ => out.notice(&format!("{} is {}", p.id, p.presence)),
                }
            }
            Event::Receipt(r) => {
                let state = self.state();
                if r.by == state.me {
                    return;
                }
                let what = if r.kind == "read" { "read" } else { "received" };
                let line = match r.conv.group_id() {
                    Some(group) => format!("[{group}] {} {what} #{}", r.by, r.seq),
                    None => format!("{} {what} #{}", r.by, r.seq),
                };
                drop(state);
                out.notice(&line);
            }
            Event::CommandAck(ack) => {
                if ack
                    .cid
                    .as_ref()
                    .is_some_and(|c| self.state().commands.contains(c))
                {
                    return;
                }
                out.notice(&super::exec::answer_line(&ack));
            }
            Event::CommandTimeout(t) => {
                if t.cid
                    .as_ref()
                    .is_some_and(|c| self.state().commands.contains(c))
                {
                    return;
                }
                out.error(&super::exec::timeout_line(&t.thing, t.delivered));
            }
            Event::ThingState(s) => {
                // The document itself comes at a watch; only changes are news.
                if s.id.is_some() {
                    out.notice(&format!("{} state: {}", s.thing, s.state));
                }
            }
            Event::ThingEvent(e) => out.notice(&format!("{} event: {}", e.thing, e.body)),
            Event::ThingPresence(p) => {
                let key = format!("thing:{}", p.id);
                let now = (p.presence.clone(), None);
                let mut state = self.state();
                if state.presence.get(&key) == Some(&now) || !state.synced {
                    state.presence.insert(key, now);
                    return;
                }
                state.presence.insert(key, now);
                drop(state);
                out.notice(&format!("{} is {}", p.id, p.presence));
            }
            Event::Things(things) => self.things(things),
            Event::Refused(n) => out.error(&format!(
                "refused: {}",
                n.field("message").unwrap_or("by the server")
            )),
            Event::Notice(n) => notice(&out, &n),
            Event::DirectOpened { peer } => out.notice(&format!(
                "direct channel with {peer} open: messages to {peer} go peer to peer"
            )),
            Event::DirectClosed { peer, reason } => out.notice(&format!(
                "direct channel with {peer} closed ({reason}): messages go through the server"
            )),
            Event::Disconnected { reason, retry_in } => out.error(&format!(
                "connection lost ({reason}); reconnecting in {} ms",
                retry_in.as_millis()
            )),
            Event::Command(_) => {}
        }
    }

    /// Whether the overview was printed (commands run).
    pub fn is_ready(&self) -> bool {
        self.state().synced
    }

    /// After the first sync of both worlds: the overview, and the commands may run.
    fn maybe_ready(&mut self) {
        let state = self.state();
        if state.synced || !state.live || !state.feed_done {
            return;
        }
        drop(state);
        self.overview();
        self.state().synced = true;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }

    fn connected(&mut self, roster: &Roster) {
        let mut state = self.state();
        for friend in &roster.friends {
            state.presence.insert(
                friend.id.clone(),
                (friend.presence.clone(), friend.text.clone()),
            );
        }
        if state.live {
            drop(state);
            self.out.notice("reconnected");
            return;
        }
        for group in &roster.groups {
            if group.unread > 0 {
                state.unread.insert(ConvId::group(&group.id), group.unread);
            }
        }
    }

    /// Friends and their presence, requests, groups, unread conversations.
    fn overview(&self) {
        let roster = self.client.roster();
        let state = self.state();
        let out = self.out;
        if roster.friends.is_empty() {
            out.notice("no friends yet: /add NAME asks someone");
        } else {
            let friends: Vec<String> = roster
                .friends
                .iter()
                .map(|f| format!("{} ({})", f.id, f.presence))
                .collect();
            out.notice(&format!("friends: {}", friends.join(", ")));
        }
        for from in &roster.requests.incoming {
            out.notice(&format!(
                "friend request from {from} (/accept {from} or /reject {from})"
            ));
        }
        if !roster.requests.outgoing.is_empty() {
            out.notice(&format!(
                "waiting for an answer from: {}",
                roster.requests.outgoing.join(", ")
            ));
        }
        if !roster.groups.is_empty() {
            let groups: Vec<String> = roster
                .groups
                .iter()
                .map(|g| format!("{} ({})", g.id, g.role))
                .collect();
            out.notice(&format!("groups: {}", groups.join(", ")));
        }
        let unread: Vec<String> = state
            .unread
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(conv, n)| format!("{} {n}", state.label(conv)))
            .collect();
        if unread.is_empty() {
            out.notice("no unread messages");
        } else {
            out.notice(&format!(
                "unread: {} (/history NAME shows them, /read NAME marks them read)",
                unread.join(", ")
            ));
        }
        drop(state);
        if !roster.things.is_empty() {
            out.notice(&things_line(&roster.things));
            self.state().things_listed = true;
        }
        out.notice(&format!(
            "ready as {}: /help lists the commands",
            self.state().me
        ));
    }

    /// A person's things (after each sync): listed once after the overview, and watched for
    /// their state and presence.
    fn things(&self, things: Vec<ThingEntry>) {
        let mut state = self.state();
        for thing in &things {
            state.presence.insert(
                format!("thing:{}", thing.id),
                (thing.presence.clone(), None),
            );
        }
        let list = state.synced && !state.things_listed && !things.is_empty();
        state.things_listed |= list;
        drop(state);
        if list {
            self.out.notice(&things_line(&things));
        }
        for thing in things {
            let client = self.client.clone();
            let out = self.out;
            tokio::spawn(async move {
                match client.watch(&thing.id).await {
                    // The chat is ending.
                    Ok(_) | Err(Error::Closed) => {}
                    Err(err) => out.error(&format!("cannot watch {}: {err}", thing.id)),
                }
            });
        }
    }
}

fn things_line(things: &[ThingEntry]) -> String {
    let list: Vec<String> = things.iter().map(super::exec::thing_summary).collect();
    format!("things: {}", list.join(", "))
}

/// A friend or group notice, as a line.
fn notice(out: &Out, n: &Notice) {
    let f = |name: &str| n.field(name).unwrap_or("?").to_owned();
    match n.kind.as_str() {
        "friend.request" => {
            let from = f("from");
            out.notice(&format!(
                "friend request from {from} (/accept {from} or /reject {from})"
            ))
        }
        "friend.added" => out.notice(&format!("{} is now your friend", f("peer"))),
        "friend.rejected" => out.notice(&format!("friend request with {} declined", f("peer"))),
        "friend.removed" => out.notice(&format!("{} is no longer your friend", f("peer"))),
        "friend.withdrawn" => out.notice(&format!("{} withdrew the friend request", f("peer"))),
        "group.joined" => out.notice(&format!("[{}] {} joined", f("group"), f("member"))),
        "group.left" => out.notice(&format!("[{}] {} left", f("group"), f("member"))),
        "group.kicked" => out.notice(&format!("[{}] {} was removed", f("group"), f("member"))),
        "group.invited" => {
            let group = f("group");
            out.notice(&format!("invited to group {group} (/join {group})"))
        }
        "group.join_request" => {
            out.notice(&format!("{} asks to join group {}", f("from"), f("group")))
        }
        "group.dissolved" => out.notice(&format!("group {} was dissolved", f("group"))),
        // Answered by the command that caused them, or handled by the library.
        "friend.pending" | "group.pending" | "direct.offer" => {}
        other => out.notice(&format!("{other}: {}", n.body)),
    }
}
