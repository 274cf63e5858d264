//! The JSON envelopes of the IM world: notices (the small objects the server sends to inboxes),
//! message bodies as a client sends them, message envelopes as devices receive them, and the
//! compact form a message takes in the log.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::{ImError, ImResult};

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

/// The `res` envelope answering request `id` (IM and things requests alike): the result's
/// fields with `ok: true`, or `ok: false` with the error's `code` and message.
pub fn res(id: &Value, result: Result<Value, (&str, String)>, now: u64) -> Value {
    match result {
        Ok(mut fields) => {
            fields["id"] = id.clone();
            fields["ok"] = json!(true);
            notice("res", now, fields)
        }
        Err((code, message)) => notice(
            "res",
            now,
            json!({ "id": id, "ok": false, "error": { "code": code, "message": message } }),
        ),
    }
}

/// A message body: the text of one JSON object, and the `cid` (client message id) it carried,
/// taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body<'a> {
    pub json: Cow<'a, [u8]>,
    pub cid: Option<String>,
}

/// A message body from a PUBLISH payload: a JSON object as it is (byte for byte, unless it has a
/// `cid` member, which is taken out); other UTF-8 text becomes `{"text": ...}`.
pub fn parse_body(payload: &[u8], max: usize) -> ImResult<Body<'_>> {
    if payload.len() > max {
        return Err(ImError::TooLarge(format!(
            "message body is {} bytes; the limit is {max}",
            payload.len()
        )));
    }
    match scan_object(payload) {
        Some(false) => {
            return Ok(Body {
                json: Cow::Borrowed(payload),
                cid: None,
            });
        }
        Some(true) => {
            // Rare: the object again without its `cid`, in the sender's order.
            if let Some(body) = without_cid(payload) {
                return Ok(body);
            }
        }
        None => {}
    }
    match std::str::from_utf8(payload) {
        Ok(text) => {
            let mut json = Vec::with_capacity(text.len() + 12);
            json.extend_from_slice(br#"{"text":"#);
            write_json_str(&mut json, text);
            json.push(b'}');
            Ok(Body {
                json: Cow::Owned(json),
                cid: None,
            })
        }
        Err(_) => Err(ImError::Invalid(
            "the body must be a JSON object or UTF-8 text".into(),
        )),
    }
}

/// The object `payload` without its top-level string members `cid` (the last one is the
/// message's `cid`): every other member is written back in the sender's order, each value byte
/// for byte; only the spacing between members goes. A `cid` that is not a string stays (then
/// the object stays as it is).
fn without_cid(payload: &[u8]) -> Option<Body<'_>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    type Members<'de> = Vec<(Cow<'de, str>, &'de RawValue)>;
    struct InOrder;
    impl<'de> Visitor<'de> for InOrder {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
            let mut members = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                members.push((key, map.next_value::<&'de RawValue>()?));
            }
            Ok(members)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(payload);
    let members = (&mut de).deserialize_map(InOrder).ok()?;
    de.end().ok()?;
    let is_cid =
        |(key, value): &(Cow<'_, str>, &RawValue)| key == "cid" && value.get().starts_with('"');
    let Some((_, cid)) = members.iter().rev().find(|m| is_cid(m)) else {
        return Some(Body {
            json: Cow::Borrowed(payload),
            cid: None,
        });
    };
    let cid: String = serde_json::from_str(cid.get()).ok()?;
    let mut json = Vec::with_capacity(payload.len());
    json.push(b'{');
    for (key, value) in members.iter().filter(|m| !is_cid(m)) {
        if json.len() > 1 {
            json.push(b',');
        }
        write_json_str(&mut json, key);
        json.push(b':');
        json.extend_from_slice(value.get().as_bytes());
    }
    json.push(b'}');
    Some(Body {
        json: Cow::Owned(json),
        cid: Some(cid),
    })
}

/// Is `payload` one JSON object (and nothing else)? `Some(true)` when it has a string member
/// `cid`. Validates in one pass without building a value.
fn scan_object(payload: &[u8]) -> Option<bool> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct ObjectScan;
    impl<'de> Visitor<'de> for ObjectScan {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut has_cid = false;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                has_cid |= key == "cid";
            }
            Ok(has_cid)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(payload);
    let has_cid = (&mut de).deserialize_map(ObjectScan).ok()?;
    de.end().ok()?;
    Some(has_cid)
}

/// Append `s` as a JSON string (quoted, escaped).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Ids are almost always plain: copied as they are unless a byte needs an escape.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// What a message says, besides where it stands (its conversation and `seq`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fields<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub ts: u64,
    /// The text of a JSON object.
    pub body: &'a [u8],
    pub cid: Option<&'a str>,
    /// The chain this message continues, if not its own.
    pub chain: Option<&'a str>,
    /// Its hop in the chain: 0 for what a person sends, one more for each rule's action.
    pub hop: u32,
}

/// The envelope of a message, written field by field (the body is copied as it is).
pub(super) fn message_envelope(conv: &str, seq: u64, f: &Fields<'_>) -> Vec<u8> {
    let (from, to, body, cid) = (f.from, f.to, f.body, f.cid);
    let mut out = Vec::with_capacity(body.len() + 3 * conv.len() + from.len() + to.len() + 160);
    let mut digits = itoa::Buffer::new();
    let seq_text = digits.format(seq);
    out.extend_from_slice(br#"{"type":"msg","id":"#);
    let id_start = out.len();
    write_json_str(&mut out, conv);
    // `conv#seq`, inside the quotes just written.
    out.pop();
    out.push(b'#');
    out.extend_from_slice(seq_text.as_bytes());
    out.push(b'"');
    let id = id_start..out.len();
    out.extend_from_slice(br#","conv":"#);
    write_json_str(&mut out, conv);
    out.extend_from_slice(br#","seq":"#);
    out.extend_from_slice(seq_text.as_bytes());
    out.extend_from_slice(br#","from":"#);
    write_json_str(&mut out, from);
    out.extend_from_slice(br#","to":"#);
    write_json_str(&mut out, to);
    out.extend_from_slice(br#","ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(f.ts).as_bytes());
    out.extend_from_slice(br#","body":"#);
    out.extend_from_slice(body);
    out.extend_from_slice(br#","chain":{"id":"#);
    match f.chain {
        Some(chain_id) => write_json_str(&mut out, chain_id),
        None => out.extend_from_within(id),
    }
    out.extend_from_slice(br#","hop":"#);
    out.extend_from_slice(itoa::Buffer::new().format(f.hop).as_bytes());
    out.push(b'}');
    if let Some(cid) = cid {
        out.extend_from_slice(br#","cid":"#);
        write_json_str(&mut out, cid);
    }
    out.push(b'}');
    out
}

/// The form a message takes in the log: only what the envelope does not repeat (the log record
/// already names the conversation and `seq`), about half the envelope's bytes. Read back, the
/// envelope is rebuilt byte for byte by [`message_envelope`].
///
/// `[1][ts u64 LE][from][to][cid][chain]` (each a u16 LE length and the bytes; an empty `cid` or
/// `chain` is none) then the body; a message past hop 0 of its chain starts with `[2]` and has
/// its hop (u32 LE) after `ts`. A record that starts with `{` is a whole envelope (moved from an
/// older version's store).
const STORED_COMPACT: u8 = 1;
const STORED_WITH_HOP: u8 = 2;

pub(super) fn stored_form(f: &Fields<'_>) -> Option<Vec<u8>> {
    let fields = [f.from, f.to, f.cid.unwrap_or(""), f.chain.unwrap_or("")];
    let (now, body) = (f.ts, f.body);
    let mut out =
        Vec::with_capacity(13 + fields.iter().map(|f| f.len() + 2).sum::<usize>() + body.len());
    if f.hop == 0 {
        out.push(STORED_COMPACT);
        out.extend_from_slice(&now.to_le_bytes());
    } else {
        out.push(STORED_WITH_HOP);
        out.extend_from_slice(&now.to_le_bytes());
        out.extend_from_slice(&f.hop.to_le_bytes());
    }
    for field in fields {
        out.extend_from_slice(&u16::try_from(field.len()).ok()?.to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(body);
    Some(out)
}

/// The envelope of a message as the log holds it (see [`stored_form`]).
pub(super) fn envelope_from_stored(conv: &str, seq: u64, stored: Vec<u8>) -> Option<Vec<u8>> {
    let (hop, mut at) = match stored.first() {
        Some(&STORED_COMPACT) => (0, 9),
        Some(&STORED_WITH_HOP) => (u32::from_le_bytes(stored.get(9..13)?.try_into().ok()?), 13),
        Some(b'{') => return Some(stored),
        _ => return None,
    };
    let ts = u64::from_le_bytes(stored.get(1..9)?.try_into().ok()?);
    let mut fields = [""; 4];
    for field in &mut fields {
        let len = usize::from(u16::from_le_bytes(stored.get(at..at + 2)?.try_into().ok()?));
        *field = std::str::from_utf8(stored.get(at + 2..at + 2 + len)?).ok()?;
        at += 2 + len;
    }
    let [from, to, cid, chain] = fields;
    Some(message_envelope(
        conv,
        seq,
        &Fields {
            from,
            to,
            ts,
            body: stored.get(at..)?,
            cid: (!cid.is_empty()).then_some(cid),
            chain: (!chain.is_empty()).then_some(chain),
            hop,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_gives_back_the_envelope_byte_for_byte() {
        /// to, cid, chain, hop, body
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, u32, &'a [u8]);
        let cases: [Case<'_>; 5] = [
            ("b", None, None, 0, br#"{"text":"hi"}"#),
            ("b", Some("c-1"), None, 0, br#"{"x":[1,2], "y":"\u00e9"}"#),
            ("g\"q", Some("c\"2"), Some("group:g#7"), 0, b"{}"),
            (
                "b",
                None,
                Some("x"),
                0,
                "{\"t\":\"\u{e9}t\u{e9}\"}".as_bytes(),
            ),
            ("b", Some("c"), Some("x#1"), 3, br#"{"n":1}"#),
        ];
        for (to, cid, chain, hop, body) in cases {
            let fields = Fields {
                from: "a",
                to,
                ts: 77,
                body,
                cid,
                chain,
                hop,
            };
            let envelope = message_envelope("person:a|person:b", 9, &fields);
            let stored = stored_form(&fields).unwrap();
            assert!(stored.len() < envelope.len());
            assert_eq!(
                envelope_from_stored("person:a|person:b", 9, stored).unwrap(),
                envelope
            );
        }
        // An older version's whole envelope is read as it is; anything else is unreadable.
        assert_eq!(
            envelope_from_stored("c", 1, br#"{"type":"msg"}"#.to_vec()).unwrap(),
            br#"{"type":"msg"}"#
        );
        assert_eq!(envelope_from_stored("c", 1, vec![1, 2]), None);
        assert_eq!(envelope_from_stored("c", 1, vec![7]), None);
    }

    #[test]
    fn bodies() {
        fn body(p: &[u8]) -> Body<'_> {
            parse_body(p, 100).unwrap()
        }
        assert_eq!(&*body(b"hi").json, br#"{"text":"hi"}"#);
        assert_eq!(&*body(b"say \"hi\"\n").json, br#"{"text":"say \"hi\"\n"}"#);
        // An object is kept byte for byte, key order and spacing included.
        assert_eq!(&*body(br#"{"z":1, "a":[2]}"#).json, br#"{"z":1, "a":[2]}"#);
        assert_eq!(body(br#"{"z":1}"#).cid, None);
        // A `cid` member is taken out of the body.
        let with_cid = body(br#"{"text":"x","cid":"c-1"}"#);
        assert_eq!(with_cid.cid.as_deref(), Some("c-1"));
        assert_eq!(&*with_cid.json, br#"{"text":"x"}"#);
        // The rest of the object keeps the sender's order, each value byte for byte.
        let ordered = body(br#"{"b":2, "cid":"x", "a":[1, 2]}"#);
        assert_eq!(ordered.cid.as_deref(), Some("x"));
        assert_eq!(&*ordered.json, br#"{"b":2,"a":[1, 2]}"#);
        let escaped = body(br#"{"k\"ey":{"z":0,"y":1},"cid":"c"}"#);
        assert_eq!(&*escaped.json, br#"{"k\"ey":{"z":0,"y":1}}"#);
        // A `cid` that is not a string is part of the body.
        let number = body(br#"{"cid":5, "b":1}"#);
        assert_eq!(
            (number.cid, &*number.json),
            (None, &br#"{"cid":5, "b":1}"#[..])
        );
        // Not one object: text.
        assert_eq!(&*body(b"42").json, br#"{"text":"42"}"#);
        assert_eq!(&*body(br#"{"a":1} x"#).json, br#"{"text":"{\"a\":1} x"}"#);
        assert_eq!(&*body(br#"{"a":"#).json, br#"{"text":"{\"a\":"}"#);
        assert_eq!(
            parse_body(b"0123456789x", 10).unwrap_err().code(),
            "too_large"
        );
        assert_eq!(parse_body(&[0xff, 0xfe], 10).unwrap_err().code(), "invalid");
    }

    #[test]
    fn envelopes_are_json_with_every_field() {
        let bytes = message_envelope(
            "person:a|person:b",
            7,
            &Fields {
                from: "a",
                to: "b",
                ts: 99,
                body: br#"{"text":"hi"}"#,
                cid: Some("c\"1"),
                chain: None,
                hop: 0,
            },
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"type": "msg", "id": "person:a|person:b#7", "conv": "person:a|person:b",
                   "seq": 7, "from": "a", "to": "b", "ts": 99, "body": {"text": "hi"},
                   "chain": {"id": "person:a|person:b#7", "hop": 0}, "cid": "c\"1"})
        );
        let chained = message_envelope(
            "group:g",
            1,
            &Fields {
                from: "a",
                to: "g",
                ts: 1,
                body: b"{}",
                cid: None,
                chain: Some("x#3"),
                hop: 2,
            },
        );
        let v: Value = serde_json::from_slice(&chained).unwrap();
        assert_eq!(v["chain"]["id"], "x#3");
        assert_eq!(v["chain"]["hop"], 2);
        assert!(v.get("cid").is_none());
    }
}
