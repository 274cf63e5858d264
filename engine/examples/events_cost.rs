//! What the event seam costs per message: `Events::emit_with` when no consumer wants the kind
//! (the daemon's case until rules run), and when one consumer wants every event and the event
//! is built as the broker builds a plain PUBLISH's (topic and user properties copied, the payload
//! shared, a chain id formatted). Run: `cargo run --release -p mqtter-engine --example events_cost`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use mqtter_engine::events::{
    Actor, Chain, Event, EventData, EventKind, EventSink, Events, Interest, PublishEvent,
};

struct Counter(AtomicU64);

impl EventSink for Counter {
    fn interest(&self) -> Interest {
        Interest::ALL
    }
    fn on_event(&self, event: &Arc<Event>) {
        if let EventData::Publish(p) = &event.data {
            self.0.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
        }
    }
}

fn publish_event(n: u64, payload: &Bytes) -> Event {
    Event {
        actor: Actor::person("alice"),
        at: n,
        chain: Chain::start(format!("mqtt:alice:phone#{n}")),
        data: EventData::Publish(PublishEvent {
            topic: String::from("home/kitchen/temperature"),
            payload: payload.clone(),
            qos: 1,
            retain: false,
            user_properties: Vec::new(),
        }),
    }
}

fn per_message(events: &Events, rounds: u64, payload: &Bytes) -> f64 {
    let start = Instant::now();
    for n in 0..rounds {
        events.emit_with(EventKind::Publish, || publish_event(n, payload));
    }
    black_box(events);
    start.elapsed().as_nanos() as f64 / rounds as f64
}

fn main() {
    let payload = Bytes::from(vec![7u8; 64]);
    let rounds = 10_000_000;
    let events = Events::default();
    for _ in 0..3 {
        println!(
            "nobody wants publishes: {:.2} ns per message",
            per_message(&events, rounds, &payload)
        );
    }
    let counter = Arc::new(Counter(AtomicU64::new(0)));
    events.add_sink(counter.clone());
    for _ in 0..3 {
        println!(
            "one consumer of every event: {:.1} ns per message",
            per_message(&events, rounds / 10, &payload)
        );
    }
    black_box(counter.0.load(Ordering::Relaxed));
}
