//! What the broker hands over from a PUBLISH payload: a command to `thing/T/cmd` (a JSON object
//! whose top-level `cid`, `ttl` and `chain` are taken out of the body) and a thing's answer to
//! `thing/T/ack`.

use serde_json::{Map, Value, json};

use super::commands::Reply;
use super::{Chain, ThingError, ThingResult};

/// A command as its sender gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub from: String,
    pub thing: String,
    /// A JSON object, as compact text.
    pub body: String,
    pub ttl_secs: Option<u64>,
    pub cid: Option<String>,
    pub chain: Option<Chain>,
    pub reply: Option<Reply>,
}

/// A JSON object from a payload; with `text`, plain UTF-8 that is not JSON becomes
/// `{"text": ...}`.
pub(super) fn object_of(payload: &[u8], max: usize, text: bool) -> ThingResult<Map<String, Value>> {
    if payload.len() > max {
        return Err(ThingError::TooLarge(format!(
            "{} bytes is over the limit of {max}",
            payload.len()
        )));
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ThingError::Invalid(
            "the payload must be a JSON object".into(),
        )),
        Err(_) if !text => Err(ThingError::Invalid(
            "the payload must be a JSON object".into(),
        )),
        Err(_) => match std::str::from_utf8(payload) {
            Ok(text) => {
                let mut map = Map::new();
                map.insert("text".into(), json!(text));
                Ok(map)
            }
            Err(_) => Err(ThingError::Invalid(
                "the payload is neither JSON nor UTF-8".into(),
            )),
        },
    }
}

impl CommandRequest {
    /// A command from a PUBLISH payload to `thing/T/cmd`: a JSON object whose top-level `cid`,
    /// `ttl` and `chain` are taken out of the body. The broker may then set what v5 user
    /// properties and the Response Topic say.
    pub fn from_payload(
        from: &str,
        thing: &str,
        payload: &[u8],
        max_body: usize,
    ) -> ThingResult<Self> {
        let mut map = object_of(payload, max_body, false)?;
        let cid = match map.remove("cid") {
            None => None,
            Some(Value::String(cid)) => Some(cid),
            Some(_) => return Err(ThingError::Invalid("cid must be a string".into())),
        };
        let ttl_secs = match map.remove("ttl") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| ThingError::Invalid("ttl must be whole seconds".into()))?,
            ),
        };
        let chain = match map.remove("chain") {
            None => None,
            Some(v) => Some(
                Chain::from_json(&v)
                    .ok_or_else(|| ThingError::Invalid("chain must be {id, hop}".into()))?,
            ),
        };
        Ok(Self {
            from: from.to_owned(),
            thing: thing.to_owned(),
            body: Value::Object(map).to_string(),
            ttl_secs,
            cid,
            chain,
            reply: None,
        })
    }
}

/// A thing's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct AckRequest {
    pub id: String,
    pub ok: bool,
    pub result: Value,
}

impl AckRequest {
    /// An answer from a PUBLISH payload to `thing/T/ack`: `{"id", "ok"?, "result"?}`; a v5 device
    /// may leave `id` out and send it as the Correlation Data.
    pub fn from_payload(payload: &[u8], correlation: Option<&[u8]>) -> ThingResult<Self> {
        let map = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ThingError::Invalid(
                    "an answer must be a JSON object".into(),
                ));
            }
        };
        let id = match map.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => correlation
                .and_then(|c| std::str::from_utf8(c).ok())
                .map(str::to_owned)
                .ok_or_else(|| ThingError::Invalid("the answer names no command id".into()))?,
        };
        Ok(Self {
            id,
            ok: map.get("ok").and_then(Value::as_bool).unwrap_or(true),
            result: map.get("result").cloned().unwrap_or(Value::Null),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(from: &str, thing: &str, payload: &str) -> CommandRequest {
        CommandRequest::from_payload(from, thing, payload.as_bytes(), 65536).unwrap()
    }

    #[test]
    fn payloads_give_body_cid_ttl_and_chain() {
        let req = cmd(
            "alice",
            "door",
            r#"{"open":true,"cid":"c1","ttl":5,"chain":{"id":"x","hop":2}}"#,
        );
        assert_eq!(req.body, r#"{"open":true}"#);
        assert_eq!(req.cid.as_deref(), Some("c1"));
        assert_eq!(req.ttl_secs, Some(5));
        assert_eq!(
            req.chain,
            Some(Chain {
                id: "x".into(),
                hop: 2
            })
        );
        assert!(CommandRequest::from_payload("a", "d", b"[1]", 100).is_err());
        assert!(CommandRequest::from_payload("a", "d", b"open", 100).is_err());
        assert!(matches!(
            CommandRequest::from_payload("a", "d", &[b' '; 101], 100),
            Err(ThingError::TooLarge(_))
        ));
        let ack =
            AckRequest::from_payload(br#"{"result":{"open":true}}"#, Some(b"thing:d#1")).unwrap();
        assert_eq!(ack.id, "thing:d#1");
        assert!(ack.ok);
        assert!(AckRequest::from_payload(b"{}", None).is_err());
    }
}
