//! The rules engine on the real daemon: reading what it publishes on `$SYS/mqtter/rules/...`
//! (its status, a rule's counters and traces) and writing rule files into its folder.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::WAIT;
use super::raw::{Client, Connect};

/// A plain client subscribed to some `$SYS/mqtter/rules/...` topics (or any), keeping the last
/// value of each topic it has seen.
pub struct SysWatch {
    client: Client,
    last: std::collections::HashMap<String, Value>,
}

impl SysWatch {
    pub fn new(mqtt: SocketAddr, filters: &[&str]) -> SysWatch {
        let id = format!("sys-watch-{}", rand_suffix());
        let mut client = Client::session(mqtt, &Connect::v3(&id));
        let filters: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 0)).collect();
        assert!(client.subscribe(&filters).iter().all(|c| *c == 0));
        SysWatch {
            client,
            last: Default::default(),
        }
    }

    /// The status topic's watcher.
    pub fn status(mqtt: SocketAddr) -> SysWatch {
        Self::new(mqtt, &["$SYS/mqtter/rules/status"])
    }

    /// Wait (within `WAIT`) until `topic`'s last value satisfies `pred`; that value.
    pub fn until(&mut self, topic: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = self.last.get(topic)
                && pred(value)
            {
                return value.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting on {topic} for {what}; last: {:#?}",
                self.last.get(topic)
            );
            if let Some(publish) = self.client.next_publish_within(left) {
                let value = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                self.last.insert(publish.topic.clone(), value);
            }
        }
    }

    /// Wait until the status satisfies `pred`.
    pub fn status_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.until("$SYS/mqtter/rules/status", what, pred)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

/// Rule `id`'s counters, once `pred` holds for them.
pub fn counters_until(mqtt: SocketAddr, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let topic = format!("$SYS/mqtter/rules/{id}/counters");
    SysWatch::new(mqtt, &[&topic]).until(&topic, &format!("{id}'s counters"), pred)
}

/// Rule `id`'s last traces, once `pred` holds for them.
pub fn traces_until(mqtt: SocketAddr, id: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let topic = format!("$SYS/mqtter/rules/{id}/traces");
    let value = SysWatch::new(mqtt, &[&topic]).until(&topic, &format!("{id}'s traces"), |v| {
        v.as_array().is_some_and(|a| pred(a))
    });
    value.as_array().cloned().unwrap_or_default()
}

/// Every error of the status, as `file:line:column: message` (the file name only).
pub fn errors(status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for file in status["files"].as_array().into_iter().flatten() {
        for e in file["errors"].as_array().into_iter().flatten() {
            let name = Path::new(e["file"].as_str().unwrap_or_default())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(format!(
                "{name}:{}:{}: {}",
                e["line"],
                e["column"],
                e["message"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

/// Write `text` to `path` as an editor's atomic save does: a temporary file, then a rename.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).expect("write the temporary file");
    std::fs::rename(&tmp, path).expect("rename it over the file");
}
