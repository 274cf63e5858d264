//! Things driven through the client library: a world of persons and things, a thing's device
//! connected with [`ThingClient`], and waits on an event stream for the things envelopes.

use mqtter_client::{
    Command, CommandAck, CommandTimeout, Event, ThingClient, ThingEntry, ThingEvent, ThingState,
};

use super::person::{Events, options};

/// Definitions with these persons (password `<id>-pw`), things (secret `<id>-pw`) and
/// relation lines.
pub fn world_yaml(people: &[&str], things: &[&str], relations: &[&str]) -> String {
    let mut yaml = super::im::persons(people);
    yaml.push_str("things:\n");
    for t in things {
        yaml.push_str(&format!("  - {{ id: {t}, secret: {t}-pw }}\n"));
    }
    if !relations.is_empty() {
        yaml.push_str("relations:\n");
        for r in relations {
            yaml.push_str(&format!("  - {r}\n"));
        }
    }
    yaml
}

/// Connect the thing `id` (device `dev`); what it was owed at CONNECT arrives on the stream.
pub async fn thing(port: u16, id: &str) -> (ThingClient, Events) {
    let (thing, stream) = ThingClient::connect(options(port, id, "dev"))
        .await
        .expect("a thing connects");
    // A request answered: the CONNECT's hand-over (queued commands, the feed) came before it.
    thing
        .client()
        .feed(None, Some(1))
        .await
        .expect("thing.feed");
    (thing, Events::new(stream))
}

impl Events {
    pub async fn command(&mut self) -> Command {
        self.next("a command", |e| match e {
            Event::Command(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    pub async fn ack(&mut self) -> CommandAck {
        self.next("a cmd.ack", |e| match e {
            Event::CommandAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    pub async fn timeout(&mut self) -> CommandTimeout {
        self.next("a cmd.timeout", |e| match e {
            Event::CommandTimeout(t) => Some(t.clone()),
            _ => None,
        })
        .await
    }

    /// The next state document of `thing`.
    pub async fn state(&mut self, thing: &str) -> ThingState {
        self.next(&format!("{thing}'s state"), |e| match e {
            Event::ThingState(s) if s.thing == thing => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// The next event of `thing`.
    pub async fn thing_event(&mut self, thing: &str) -> ThingEvent {
        self.next(&format!("an event of {thing}"), |e| match e {
            Event::ThingEvent(ev) if ev.thing == thing => Some(ev.clone()),
            _ => None,
        })
        .await
    }

    /// The `things` envelope after a sync.
    pub async fn things(&mut self) -> Vec<ThingEntry> {
        self.next("the things list", |e| match e {
            Event::Things(t) => Some(t.clone()),
            _ => None,
        })
        .await
    }

    /// The end of the feed's catch-up after CONNECT.
    pub async fn feed_done(&mut self) -> u64 {
        self.next("feed.done", |e| match e {
            Event::FeedDone { last } => Some(*last),
            _ => None,
        })
        .await
    }

    /// Every command seen so far.
    pub fn all_commands(&self) -> Vec<Command> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Event::Command(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}
