//! Persons driven through the client library (`mqtter-client`): connect one, and wait on its
//! event stream for what a test expects, bounded by `WAIT`.

use std::path::Path;

use mqtter_client::{Client, Event, EventStream, Message, Notice, Options, Roster};

use super::WAIT;
use super::im::password;

/// Options for `account:device` at `127.0.0.1:port` (password `<account>-pw`), reconnecting
/// quickly.
pub fn options(port: u16, account: &str, device: &str) -> Options {
    let mut opts = Options::new("127.0.0.1", port, account, &password(account), device);
    opts.backoff.min = std::time::Duration::from_millis(50);
    opts.backoff.max = std::time::Duration::from_millis(500);
    opts
}

/// Connect and wait for the end of the first sync.
pub async fn connect(opts: Options) -> (Client, Events) {
    let (client, stream) = Client::connect(opts).await.expect("connect");
    let mut events = Events::new(stream);
    events.synced().await;
    (client, events)
}

/// Connect `account:device` with its cache in `cache` and wait for the sync.
pub async fn person(port: u16, account: &str, device: &str, cache: &Path) -> (Client, Events) {
    connect(options(port, account, device).cache_dir(cache)).await
}

/// A client's event stream, with what has been seen.
pub struct Events {
    stream: EventStream,
    /// Every event so far.
    pub seen: Vec<Event>,
    /// How many of `seen` a `next_*` wait has passed.
    cursor: usize,
}

impl Events {
    pub fn new(stream: EventStream) -> Events {
        Events {
            stream,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    /// The next event (from where the last wait stopped) that `pick` accepts; the events
    /// before it are passed over.
    pub async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while self.cursor < self.seen.len() {
                let event = &self.seen[self.cursor];
                self.cursor += 1;
                if let Some(t) = pick(event) {
                    return t;
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(event)) => self.seen.push(event),
                Ok(None) => panic!("the stream ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; seen: {:#?}",
                    &self.seen[self.seen.len().saturating_sub(10)..]
                ),
            }
        }
    }

    /// Wait for the next `Connected` and the `Synced` after it: the roster.
    pub async fn synced(&mut self) -> Roster {
        let roster = self
            .next("a sync", |e| match e {
                Event::Connected(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        self.next("the end of a sync", |e| {
            matches!(e, Event::Synced).then_some(())
        })
        .await;
        roster
    }

    pub async fn message(&mut self) -> Message {
        self.next("a message", |e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    pub async fn messages(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.message().await);
        }
        out
    }

    pub async fn notice(&mut self, kind: &str) -> Notice {
        self.next(&format!("a {kind} notice"), |e| match e {
            Event::Notice(n) if n.kind == kind => Some(n.clone()),
            _ => None,
        })
        .await
    }

    /// Every message seen so far, in order.
    pub fn all_messages(&self) -> Vec<Message> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}
