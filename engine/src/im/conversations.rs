//! Conversations: stamping (per-conversation `seq`, dedup on the client's `cid`), the stored log,
//! history pages, delivery cursors, missed messages at CONNECT, receipts, and the roster.
//!
//! A direct conversation is `person:A|person:B` (ids in order); a group's is `group:G`, stored
//! once for the group whatever its size, with a cursor per member.

use std::collections::HashMap;
use std::sync::MutexGuard;

use serde_json::{Value, json};

use super::envelope::{Fields, envelope_from_stored, message_envelope, notice, stored_form};
use super::log::MessageLog;
use super::{Effect, Im, ImError, ImResult, key};
use crate::graph::{DirectCheck, Role};
use crate::store::{Batch, Space, Store, StoreError};

pub fn conv_direct(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut conv = String::with_capacity(x.len() + y.len() + 15);
    conv.push_str("person:");
    conv.push_str(x);
    conv.push_str("|person:");
    conv.push_str(y);
    conv
}

pub fn conv_group(group: &str) -> String {
    format!("group:{group}")
}

/// The people of a conversation id, as the id names them.
enum Parties<'a> {
    Direct(&'a str, &'a str),
    Group(&'a str),
}

fn parties(conv: &str) -> Option<Parties<'_>> {
    if let Some(group) = conv.strip_prefix("group:") {
        return Some(Parties::Group(group));
    }
    let (a, b) = conv.split_once('|')?;
    Some(Parties::Direct(
        a.strip_prefix("person:")?,
        b.strip_prefix("person:")?,
    ))
}

/// A stamped, stored message.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub conv: String,
    pub seq: u64,
    /// The JSON envelope, as stored and delivered.
    pub envelope: Vec<u8>,
    /// The same `cid` from the same sender was stored before: this is that message, not a new one.
    pub duplicate: bool,
}

/// Messages of one conversation an account missed.
#[derive(Debug, Clone)]
pub struct Missed {
    pub conv: String,
    pub messages: Vec<(u64, Vec<u8>)>,
    /// More are stored after the last one given: the client pages with `history` from here.
    pub more_after: Option<u64>,
}

/// Each person's direct conversations, from the conversation ids in the log (a direct id names
/// both parties). Kept in memory: `conversations_of` reads it at every CONNECT.
pub(super) fn direct_conversations(log: &MessageLog) -> HashMap<String, Vec<String>> {
    let mut by_person: HashMap<String, Vec<String>> = HashMap::new();
    for conv in log.conversations() {
        if let Some(Parties::Direct(a, b)) = parties(&conv) {
            for party in [a, b] {
                by_person
                    .entry(party.to_owned())
                    .or_default()
                    .push(conv.clone());
            }
        }
    }
    by_person
}

/// Messages stored by versions before the message log (in `Space::Messages`, keyed
/// `conv \0 seq`) are appended to the log, which is synced, and only then removed from the store.
/// Their dedup entries are dropped (a retry of one of them is stored again), and so are the
/// store's conversation listings (`Conversations`, `Inboxes`): the log's ids stand for them.
pub(super) fn move_stored_messages(store: &dyn Store, log: &MessageLog) -> Result<(), StoreError> {
    let stored = store.scan_prefix(Space::Messages, b"")?;
    if stored.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    let mut moved = 0u64;
    for (k, envelope) in stored {
        let split = k.len().saturating_sub(9);
        let (conv, seq) = (&k[..split], read_u64(&k[split + 1..]));
        let conv = String::from_utf8_lossy(conv);
        if seq == log.last_seq(&conv) + 1 {
            log.append(&conv, seq, None, &envelope)?;
            moved += 1;
        } else if seq > log.last_seq(&conv) {
            tracing::warn!(%conv, seq, "stored message out of sequence, left in the store");
            continue;
        }
        batch.remove(Space::Messages, k);
    }
    log.sync()?;
    // The dedup entries, and the conversation listings the log now stands for.
    for space in [Space::Dedup, Space::Conversations, Space::Inboxes] {
        for (k, _) in store.scan_prefix(space, b"")? {
            batch.remove(space, k);
        }
    }
    store.apply(batch)?;
    store.flush()?;
    tracing::info!(moved, "stored messages moved to the message log");
    Ok(())
}

fn read_u64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Im {
    /// Hold while stamping, storing and fanning out a message of `conv`.
    pub fn lock_conv(&self, conv: &str) -> MutexGuard<'_, ()> {
        let hash = conv
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        self.conv_locks[(hash % self.conv_locks.len() as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_seq(&self, conv: &str) -> ImResult<u64> {
        Ok(self.log.last_seq(conv))
    }

    /// May `from` send a direct message to `to`?
    pub fn authorize_direct(&self, from: &str, to: &str) -> ImResult<()> {
        match self.graph().direct_check(from, to) {
            DirectCheck::Allowed => Ok(()),
            DirectCheck::NoSuchAccount => Err(ImError::NotFound(format!("no person {to}"))),
            DirectCheck::Refused => Err(ImError::NotAuthorized(format!("{to} is not a friend"))),
        }
    }

    /// May `from` send to `group`?
    pub fn authorize_group(&self, from: &str, group: &str) -> ImResult<()> {
        if self.group(group).is_none() {
            return Err(ImError::NotFound(format!("no group {group}")));
        }
        if self.graph().role(from, group).is_none() {
            return Err(ImError::NotAuthorized(format!("not a member of {group}")));
        }
        Ok(())
    }

    /// Is `account` a party to `conv` (one of the two persons, or a member of the group)?
    pub fn is_party(&self, account: &str, conv: &str) -> bool {
        match parties(conv) {
            Some(Parties::Direct(a, b)) => account == a || account == b,
            Some(Parties::Group(group)) => self.graph().role(account, group).is_some(),
            None => false,
        }
    }

    /// Stamp and store one message (hold `lock_conv(conv)`). `to` is the peer or the group;
    /// `body` is the text of a JSON object (see [`super::parse_body`]), copied into the envelope as
    /// it is. `chain` is the chain it continues (id and hop), if not its own.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        conv: &str,
        from: &str,
        to: &str,
        body: &[u8],
        cid: Option<&str>,
        chain: Option<(&str, u32)>,
        now: u64,
    ) -> ImResult<Stamped> {
        let cid = cid.filter(|cid| !cid.is_empty());
        if let Some(cid) = cid
            && let Some(seq) = self.log.find_dedup(conv, from, cid)
            && let Some(envelope) = self.envelope(conv, seq)?
        {
            return Ok(Stamped {
                conv: conv.to_owned(),
                seq,
                envelope,
                duplicate: true,
            });
        }
        let seq = self.log.last_seq(conv) + 1;
        let fields = Fields {
            from,
            to,
            ts: now,
            body,
            cid,
            chain: chain.map(|(id, _)| id),
            hop: chain.map_or(0, |(_, hop)| hop),
        };
        let bytes = message_envelope(conv, seq, &fields);
        let stored = stored_form(&fields);
        self.log
            .append(
                conv,
                seq,
                cid.map(|cid| (from, cid)),
                stored.as_deref().unwrap_or(&bytes),
            )
            .map_err(StoreError::from)?;
        if seq == 1
            && let Some(Parties::Direct(a, b)) = parties(conv)
        {
            // A new conversation: listed for its parties (rebuilt from the log at start).
            let mut direct = self.direct_convs();
            for party in [a, b] {
                direct
                    .entry(party.to_owned())
                    .or_default()
                    .push(conv.to_owned());
            }
        }
        Ok(Stamped {
            conv: conv.to_owned(),
            seq,
            envelope: bytes,
            duplicate: false,
        })
    }

    /// The `seq` of the message `from` stored in `conv` under `cid`, if it is remembered.
    pub fn find_cid(&self, conv: &str, from: &str, cid: &str) -> Option<u64> {
        self.log.find_dedup(conv, from, cid)
    }

    /// Messages of `conv` from the log (see [`MessageLog::read`]), as envelopes.
    fn read_envelopes(
        &self,
        conv: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.log
            .read(conv, from, to, limit, newest_first)?
            .into_iter()
            .map(|(seq, stored)| {
                envelope_from_stored(conv, seq, stored)
                    .map(|envelope| (seq, envelope))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("message {conv}#{seq} is unreadable"))
                    })
            })
            .collect()
    }

    /// One message of `conv` as its envelope.
    fn envelope(&self, conv: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .read_envelopes(conv, seq, seq, 1, false)?
            .pop()
            .map(|(_, e)| e))
    }

    /// A page of `conv` for `account`: after `after` (ascending), before `before` (the newest
    /// before it), or the newest page. Returns the envelopes in ascending `seq`.
    pub fn history(
        &self,
        account: &str,
        conv: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> ImResult<Vec<Value>> {
        if !self.is_party(account, conv) {
            return Err(ImError::NotAuthorized(format!("not a party to {conv}")));
        }
        let limit = limit.clamp(1, self.config.history_max);
        let pairs = match (after, before) {
            (Some(after), before) => {
                let end = before.map_or(u64::MAX, |b| b.saturating_sub(1));
                self.read_envelopes(conv, after.saturating_add(1), end, limit, false)
            }
            (None, before) => {
                let end = before.map_or(u64::MAX, |b| b.saturating_sub(1));
                let mut newest = self.read_envelopes(conv, 1, end, limit, true);
                if let Ok(newest) = &mut newest {
                    newest.reverse();
                }
                newest
            }
        }?;
        Ok(pairs
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// The conversations `account` takes part in: its direct ones and its groups'.
    pub fn conversations_of(&self, account: &str) -> ImResult<Vec<String>> {
        let mut convs = self
            .direct_convs()
            .get(account)
            .cloned()
            .unwrap_or_default();
        convs.extend(
            self.graph()
                .groups_of(account)
                .into_iter()
                .map(|(g, _)| conv_group(&g)),
        );
        Ok(convs)
    }

    /// The delivery cursor of a device (client id), else of the account.
    pub fn cursor(&self, client: &str, account: &str, conv: &str) -> ImResult<Option<u64>> {
        if let Some(v) = self.store.get(Space::Cursors, &key(&["c", client, conv]))? {
            return Ok(Some(read_u64(&v)));
        }
        Ok(self
            .store
            .get(Space::Cursors, &key(&["a", account, conv]))?
            .map(|v| read_u64(&v)))
    }

    /// What `client` (a device of `account`) has not received, oldest first, at most
    /// `sync_max_per_conv` per conversation. A device and account never seen get everything stored.
    pub fn missed(&self, client: &str, account: &str) -> ImResult<Vec<Missed>> {
        let mut out = Vec::new();
        for conv in self.conversations_of(account)? {
            let last = self.last_seq(&conv)?;
            let cursor = self.cursor(client, account, &conv)?.unwrap_or(0);
            if last <= cursor {
                continue;
            }
            let max = self.config.sync_max_per_conv;
            let messages = self.read_envelopes(&conv, cursor + 1, u64::MAX, max, false)?;
            let given = messages.last().map_or(cursor, |(seq, _)| *seq);
            let more_after = (given < last).then_some(given);
            out.push(Missed {
                conv,
                messages,
                more_after,
            });
        }
        Ok(out)
    }

    /// Remember what a device has received (at DISCONNECT); the account's cursor follows it.
    pub fn save_cursors(
        &self,
        client: &str,
        account: &str,
        cursors: &[(String, u64)],
    ) -> ImResult<()> {
        let mut batch = Batch::new();
        for (conv, seq) in cursors {
            batch.put(
                Space::Cursors,
                key(&["c", client, conv]),
                seq.to_be_bytes().to_vec(),
            );
            batch.put(
                Space::Cursors,
                key(&["a", account, conv]),
                seq.to_be_bytes().to_vec(),
            );
        }
        self.store.apply(batch)?;
        Ok(())
    }

    fn read_cursor(&self, account: &str, conv: &str) -> ImResult<u64> {
        Ok(self
            .store
            .get(Space::Cursors, &key(&["r", account, conv]))?
            .map(|v| read_u64(&v))
            .unwrap_or(0))
    }

    /// `account` has received or read `conv` up to `seq`; the other side(s) are told.
    pub fn receipt(
        &self,
        account: &str,
        conv: &str,
        seq: u64,
        kind: &str,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        if kind != "delivered" && kind != "read" {
            return Err(ImError::Invalid("kind must be delivered or read".into()));
        }
        if !self.is_party(account, conv) {
            return Err(ImError::NotAuthorized(format!("not a party to {conv}")));
        }
        if seq == 0 || seq > self.last_seq(conv)? {
            return Err(ImError::NotFound(format!("no message {seq} in {conv}")));
        }
        if kind == "read" && seq > self.read_cursor(account, conv)? {
            let mut batch = Batch::new();
            batch.put(
                Space::Cursors,
                key(&["r", account, conv]),
                seq.to_be_bytes().to_vec(),
            );
            self.store.apply(batch)?;
        }
        let envelope = notice(
            "receipt",
            now,
            json!({ "conv": conv, "seq": seq, "kind": kind, "by": account }),
        );
        let to: Vec<String> = match parties(conv) {
            Some(Parties::Direct(a, b)) => vec![if account == a { b } else { a }.to_owned()],
            Some(Parties::Group(_)) => {
                // In a group the sender of that message is told.
                let stored = self.envelope(conv, seq)?;
                stored
                    .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
                    .and_then(|v| v.get("from").and_then(Value::as_str).map(str::to_owned))
                    .filter(|from| from != account)
                    .into_iter()
                    .collect()
            }
            None => Vec::new(),
        };
        Ok(to
            .into_iter()
            .map(|to| Effect::Notify {
                to,
                envelope: envelope.clone(),
            })
            .collect())
    }

    /// The `sync` envelope: friends with presence, requests both ways, groups with role and unread
    /// count, blocked persons, the recycle bin.
    pub fn roster(
        &self,
        account: &str,
        now: u64,
        presence: impl Fn(&str) -> Value,
    ) -> ImResult<Value> {
        let graph = self.graph();
        let friends: Vec<Value> = graph
            .friends(account)
            .into_iter()
            .map(|f| {
                let mut entry = presence(&f);
                entry["id"] = json!(f);
                entry
            })
            .collect();
        let incoming = graph.requests_in(account);
        let outgoing = graph.requests_out(account);
        let blocked = graph.blocked_by(account);
        let memberships = graph.groups_of(account);
        drop(graph);
        let mut groups = Vec::new();
        for (group, role) in memberships {
            let conv = conv_group(&group);
            let last = self.last_seq(&conv)?;
            let seen = self
                .cursor(account, account, &conv)?
                .unwrap_or(0)
                .max(self.read_cursor(account, &conv)?);
            let name = self
                .group(&group)
                .map(|g| g.name)
                .unwrap_or_else(|| group.clone());
            let join_requests = if role >= Role::Admin {
                self.graph().join_requests(&group)
            } else {
                Vec::new()
            };
            groups.push(json!({
                "id": group, "name": name, "role": role.as_str(), "last_seq": last,
                "unread": last.saturating_sub(seen), "join_requests": join_requests,
            }));
        }
        let recycle: Vec<Value> = self
            .recycle_list(account, now)?
            .iter()
            .map(|e| e.to_json())
            .collect();
        Ok(notice(
            "sync",
            now,
            json!({
                "account": account, "friends": friends,
                "requests": { "incoming": incoming, "outgoing": outgoing },
                "groups": groups, "blocked": blocked, "recycle": recycle,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::envelope::parse_body;
    use super::super::testing::im_with;
    use super::*;

    fn friends(im: &Im, a: &str, b: &str) {
        im.friend_request(a, b, 1).unwrap();
        im.friend_accept(b, a, 1).unwrap();
    }

    #[test]
    fn stamping_dedup_history_and_missed() {
        let (_dir, im) = im_with(&["a", "b", "c"]);
        friends(&im, "a", "b");
        assert!(im.authorize_direct("a", "c").is_err());
        im.authorize_direct("a", "b").unwrap();
        let conv = conv_direct("b", "a");
        assert_eq!(conv, "person:a|person:b");
        for i in 0..5 {
            let text = format!("m{i}");
            let body = parse_body(text.as_bytes(), 1000).unwrap();
            let s = im
                .append(
                    &conv,
                    "a",
                    "b",
                    &body.json,
                    Some(&format!("c{i}")),
                    None,
                    10,
                )
                .unwrap();
            assert_eq!(s.seq, i + 1);
        }
        let again = im
            .append(&conv, "a", "b", br#"{"text":"m0"}"#, Some("c0"), None, 11)
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.seq, 1);
        assert_eq!(im.last_seq(&conv).unwrap(), 5);

        let page = im.history("b", &conv, None, Some(1), 2).unwrap();
        assert_eq!(
            page.iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let page = im.history("b", &conv, Some(5), None, 2).unwrap();
        assert_eq!(
            page.iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [3, 4]
        );
        assert!(im.history("c", &conv, None, None, 10).is_err());

        let missed = im.missed("b", "b").unwrap();
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].messages.len(), 5);
        im.save_cursors("b", "b", &[(conv.clone(), 3)]).unwrap();
        let missed = im.missed("b:phone", "b").unwrap();
        assert_eq!(
            missed[0]
                .messages
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [4, 5]
        );

        let effects = im.receipt("b", &conv, 5, "read", 12).unwrap();
        assert!(matches!(&effects[0], Effect::Notify { to, .. } if to == "a"));
    }

    /// Open the store in `dir` again: sled's I/O threads may hold the file lock of the last
    /// handle for a moment after it is dropped.
    fn open_store(dir: &std::path::Path) -> crate::SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match crate::SledStore::open(dir) {
                Ok(store) => return store,
                Err(err) if std::time::Instant::now() > deadline => panic!("{err}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Reopen the IM world over the same folder, as a restart after a crash would.
    fn reopen(dir: &std::path::Path) -> Im {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(open_store(dir));
        let log = std::sync::Arc::new(MessageLog::open(&dir.join("messages")).unwrap());
        Im::open(store, log, crate::im::ImConfig::default()).unwrap()
    }

    #[test]
    fn messages_and_their_cids_outlive_a_restart() {
        let (dir, im) = im_with(&["a", "b"]);
        friends(&im, "a", "b");
        let conv = conv_direct("a", "b");
        for i in 1..=3 {
            im.append(
                &conv,
                "a",
                "b",
                br#"{"text":"x"}"#,
                Some(&format!("c{i}")),
                None,
                5,
            )
            .unwrap();
        }
        im.log().sync().unwrap();
        drop(im);
        let im = reopen(dir.path());
        assert_eq!(im.conversations_of("a").unwrap(), [conv.as_str()]);
        assert_eq!(im.last_seq(&conv).unwrap(), 3);
        let again = im
            .append(&conv, "a", "b", br#"{"text":"x"}"#, Some("c2"), None, 6)
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.seq, 2);
        let next = im
            .append(&conv, "a", "b", br#"{"text":"y"}"#, Some("c4"), None, 6)
            .unwrap();
        assert_eq!((next.seq, next.duplicate), (4, false));
        assert_eq!(im.conversations_of("b").unwrap(), [conv.as_str()]);
    }

    #[test]
    fn messages_an_older_version_stored_move_to_the_log() {
        let (dir, im) = im_with(&["a", "b"]);
        friends(&im, "a", "b");
        drop(im);
        // What a version before the message log wrote: the messages and a dedup entry in the
        // store.
        let conv = conv_direct("a", "b");
        {
            let store = open_store(dir.path());
            let mut batch = Batch::new();
            for seq in 1..=3u64 {
                let mut k = conv.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&seq.to_be_bytes());
                let envelope = message_envelope(
                    &conv,
                    seq,
                    &Fields {
                        from: "a",
                        to: "b",
                        ts: 1,
                        body: b"{}",
                        cid: None,
                        chain: None,
                        hop: 0,
                    },
                );
                batch.put(Space::Messages, k, envelope);
            }
            batch.put(
                Space::Dedup,
                key(&[&conv, "a", "c1"]),
                1u64.to_be_bytes().to_vec(),
            );
            batch.put(Space::Inboxes, key(&["a", &conv]), Vec::new());
            batch.put(Space::Inboxes, key(&["b", &conv]), Vec::new());
            store.apply(batch).unwrap();
            store.flush().unwrap();
        }
        let im = reopen(dir.path());
        assert_eq!(im.last_seq(&conv).unwrap(), 3);
        let page = im.history("b", &conv, None, None, 10).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[2]["seq"], 3);
        assert!(
            im.store
                .scan_prefix(Space::Messages, b"")
                .unwrap()
                .is_empty()
        );
        assert!(im.store.scan_prefix(Space::Dedup, b"").unwrap().is_empty());
        // The sequence goes on, and a second start moves nothing twice.
        im.append(&conv, "b", "a", b"{}", None, None, 2).unwrap();
        drop(im);
        let im = reopen(dir.path());
        assert_eq!(im.last_seq(&conv).unwrap(), 4);
    }

    #[test]
    fn what_is_read_back_is_what_was_delivered() {
        let (_dir, im) = im_with(&["a", "b"]);
        friends(&im, "a", "b");
        let conv = conv_direct("a", "b");
        let sent = im
            .append(
                &conv,
                "a",
                "b",
                br#"{"text":"x"}"#,
                Some("k"),
                Some(("r#1", 0)),
                5,
            )
            .unwrap();
        let again = im
            .append(&conv, "a", "b", br#"{"text":"x"}"#, Some("k"), None, 6)
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.envelope, sent.envelope);
        let missed = im.missed("b", "b").unwrap();
        assert_eq!(missed[0].messages, [(1, sent.envelope.clone())]);
    }
}
