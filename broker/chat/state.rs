//! What `mqtter chat` remembers while it runs: unread counts per conversation, the presence it
//! last printed, the conversation plain lines go to, and the commands it is waiting on (their
//! outcome is printed by the command, not again from the stream).

use std::collections::{BTreeMap, HashMap, HashSet};

use mqtter_client::{ConvId, Target};

use super::commands::Conv;

#[derive(Debug, Default)]
pub struct State {
    pub me: String,
    /// The IM world's first sync is over: messages from now on are printed.
    pub live: bool,
    /// The things world's first catch-up (`feed.done`) is over.
    pub feed_done: bool,
    /// Both are: the overview was printed, commands run.
    pub synced: bool,
    pub unread: BTreeMap<ConvId, u64>,
    /// `(presence, status text)` last known per friend, and per thing under `thing:ID`.
    pub presence: HashMap<String, (String, Option<String>)>,
    /// Where a plain line goes (`/to`).
    pub current: Option<Conv>,
    /// The things were listed (in the overview, or when their list came after it).
    pub things_listed: bool,
    /// The `cid`s of this client's `/cmd`s.
    pub commands: HashSet<String>,
}

impl State {
    pub fn new(me: &str) -> State {
        State {
            me: me.to_owned(),
            ..State::default()
        }
    }

    /// The conversation of `conv` as seen from this account.
    pub fn conv_id(&self, conv: &Conv) -> ConvId {
        target(conv).conv(&self.me)
    }

    /// How a conversation is named to the user: `bob` or `group family`.
    pub fn label(&self, conv: &ConvId) -> String {
        match (conv.group_id(), conv.peer_of(&self.me)) {
            (Some(group), _) => format!("group {group}"),
            (None, Some(peer)) => peer.to_owned(),
            (None, None) => conv.to_string(),
        }
    }
}

/// Where a message to `conv` goes.
pub fn target(conv: &Conv) -> Target {
    match conv {
        Conv::Person(p) => Target::Person(p.clone()),
        Conv::Group(g) => Target::Group(g.clone()),
    }
}
