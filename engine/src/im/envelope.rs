//! Notice envelopes: the small JSON objects the server sends to inboxes.

use serde_json::{Map, Value, json};

/// `{"type": kind, "ts": now, ...fields}`.
pub fn notice(kind: &str, now: u64, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), json!(kind));
    object.insert("ts".into(), json!(now));
    if let Value::Object(extra) = fields {
        object.extend(extra);
    }
    Value::Object(object)
}
