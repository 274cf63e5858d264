//! The worlds a topic belongs to, which the connection layer dispatches by: plain MQTT (the
//! router), the IM world (the gate: `person/`, `group/`, `$im/`), and `$SYS` (the broker's own
//! values: read through the router like plain topics, never written by a client). The things
//! world joins here.

/// Where a topic name or filter belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Plain,
    Im,
    Sys,
}

impl World {
    pub fn of(topic: &str) -> World {
        if crate::im::is_im_topic(topic) {
            World::Im
        } else if topic.starts_with("$SYS") {
            World::Sys
        } else {
            World::Plain
        }
    }
}
