//! The audit: per thing, who commanded what, when, through which chain, and what came of it
//! (pending, acked with the result, timed out, refused), pageable by the owner, newest first.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::commands::{Command, body_value};
use super::{Chain, ThingResult, Things, decode, encode, seq_key};
use crate::store::{Batch, Space};

/// What came of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Queued (`delivered: false`) or handed over, not answered yet.
    Pending { delivered: bool },
    /// Answered; `result` is the thing's JSON result as text.
    Acked { at: u64, ok: bool, result: String },
    /// Its ttl passed unanswered.
    Timeout { at: u64, delivered: bool },
    /// The sender had no right to command the thing; nothing was delivered.
    Refused { reason: String },
}

/// One line of a thing's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub thing: String,
    /// The command id (none for a refused command).
    pub id: Option<String>,
    pub from: String,
    pub ts: u64,
    pub chain: Option<Chain>,
    pub cid: Option<String>,
    /// The command body as compact JSON text (not kept for a refused command).
    pub body: Option<String>,
    pub ttl: Option<u64>,
    pub outcome: Outcome,
}

impl AuditEntry {
    pub(super) fn of_command(cmd: &Command) -> Self {
        Self {
            seq: cmd.seq,
            thing: cmd.thing.clone(),
            id: Some(cmd.id.clone()),
            from: cmd.from.clone(),
            ts: cmd.ts,
            chain: Some(cmd.chain.clone()),
            cid: cmd.cid.clone(),
            body: Some(cmd.body.clone()),
            ttl: Some(cmd.ttl),
            outcome: Outcome::Pending {
                delivered: cmd.delivered,
            },
        }
    }

    /// As docs/THINGS.md section 4 shows it.
    pub fn to_json(&self) -> Value {
        let result = match &self.outcome {
            Outcome::Pending { delivered } => json!({ "kind": "pending", "delivered": delivered }),
            Outcome::Acked { at, ok, result } => {
                json!({ "kind": "acked", "at": at, "ok": ok, "result": body_value(result) })
            }
            Outcome::Timeout { at, delivered } => {
                json!({ "kind": "timeout", "at": at, "delivered": delivered })
            }
            Outcome::Refused { reason } => json!({ "kind": "refused", "reason": reason }),
        };
        json!({
            "seq": self.seq, "id": self.id, "from": self.from, "ts": self.ts,
            "chain": self.chain.as_ref().map(Chain::to_json), "cid": self.cid,
            "body": self.body.as_deref().map(body_value), "ttl": self.ttl, "result": result,
        })
    }
}

/// A page of the audit, newest first; `next_before` asks for the page after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_before: Option<u64>,
}

fn audit_key(thing: &str, seq: u64) -> Vec<u8> {
    seq_key(&[thing], seq)
}

impl Things {
    /// Write `entry` into `batch`, letting the oldest entry past `audit_max` go.
    pub(super) fn audit_put(&self, batch: &mut Batch, entry: &AuditEntry) {
        batch.put(
            Space::Audit,
            audit_key(&entry.thing, entry.seq),
            encode(entry),
        );
        if entry.seq > self.config.audit_max {
            batch.remove(
                Space::Audit,
                audit_key(&entry.thing, entry.seq - self.config.audit_max),
            );
        }
    }

    /// Change a stored entry (gone past `audit_max`: nothing to change).
    pub(super) fn audit_update(
        &self,
        batch: &mut Batch,
        thing: &str,
        seq: u64,
        change: impl FnOnce(&mut AuditEntry),
    ) -> ThingResult<()> {
        let k = audit_key(thing, seq);
        if let Some(mut entry) = self
            .store
            .get(Space::Audit, &k)?
            .and_then(|v| decode::<AuditEntry>(&v))
        {
            change(&mut entry);
            batch.put(Space::Audit, k, encode(&entry));
        }
        Ok(())
    }

    /// Write down a refused command (the caller holds the thing's lock).
    pub(super) fn audit_refused(
        &self,
        thing: &str,
        from: &str,
        reason: &str,
        now: u64,
    ) -> ThingResult<()> {
        let mut batch = Batch::new();
        let seq = self.next_seq(&mut batch, thing)?;
        let entry = AuditEntry {
            seq,
            thing: thing.to_owned(),
            id: None,
            from: from.to_owned(),
            ts: now,
            chain: None,
            cid: None,
            body: None,
            ttl: None,
            outcome: Outcome::Refused {
                reason: reason.to_owned(),
            },
        };
        self.audit_put(&mut batch, &entry);
        self.store.apply(batch)?;
        Ok(())
    }

    /// The chain of command `id` of `thing`, from its audit entry (for what follows from it).
    pub fn chain_of_command(&self, thing: &str, id: &str) -> Option<Chain> {
        let seq = id
            .strip_prefix("thing:")?
            .strip_prefix(thing)?
            .strip_prefix('#')?
            .parse::<u64>()
            .ok()?;
        let value = self
            .store
            .get(Space::Audit, &audit_key(thing, seq))
            .ok()??;
        decode::<AuditEntry>(&value)?.chain
    }

    /// The owner reads `thing`'s audit: up to `limit` entries (capped) older than `before`,
    /// newest first.
    pub fn audit(
        &self,
        owner: &str,
        thing: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> ThingResult<AuditPage> {
        self.require_owner(owner, thing)?;
        let limit = limit
            .unwrap_or(self.config.audit_page_max)
            .clamp(1, self.config.audit_page_max);
        let pairs = self.store.scan_range(
            Space::Audit,
            &audit_key(thing, 0),
            &audit_key(thing, before.unwrap_or(u64::MAX)),
            limit + 1,
            true,
        )?;
        let mut entries: Vec<AuditEntry> = pairs
            .into_iter()
            .filter_map(|(_, v)| decode::<AuditEntry>(&v))
            .collect();
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_before = if more {
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{claim, world};
    use super::super::{AckRequest, CommandRequest};
    use super::*;

    #[test]
    fn the_audit_lists_every_command_and_what_came_of_it() {
        let w = world(&["alice", "bob"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        let req = |from: &str, body: &str| {
            CommandRequest::from_payload(from, "door", body.as_bytes(), 1000).unwrap()
        };
        t.command(req("alice", r#"{"n":1,"ttl":1}"#), 10).unwrap();
        assert!(t.command(req("bob", r#"{"n":2}"#), 20).is_err());
        t.connected("door", 30).unwrap();
        let (sent, _) = t.command(req("alice", r#"{"n":3,"cid":"x"}"#), 40).unwrap();
        let ack = AckRequest {
            id: sent.id().to_owned(),
            ok: false,
            result: json!({"jammed": true}),
        };
        t.ack("door", ack, 50).unwrap();
        t.command(req("alice", r#"{"n":4}"#), 60).unwrap();
        t.sweep(5_000).unwrap();
        assert!(
            t.audit("bob", "door", None, None).is_err(),
            "the owner's only"
        );
        let page = t.audit("alice", "door", None, None).unwrap();
        let kinds: Vec<_> = page
            .entries
            .iter()
            .map(|e| e.to_json()["result"]["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["pending", "acked", "refused", "timeout"]);
        let acked = page.entries[1].to_json();
        assert_eq!(acked["from"], "alice");
        assert_eq!(acked["ts"], 40);
        assert_eq!(acked["cid"], "x");
        assert_eq!(acked["body"], json!({"n": 3}));
        assert_eq!(acked["result"]["result"], json!({"jammed": true}));
        assert_eq!(acked["result"]["ok"], false);
        assert_eq!(acked["chain"]["id"], sent.id());
        assert_eq!(page.entries[2].from, "bob");
        assert_eq!(page.entries[2].body, None);
        assert_eq!(page.next_before, None);
        // Paged: two at a time, newest first.
        let first = t.audit("alice", "door", None, Some(2)).unwrap();
        assert_eq!(
            first.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 3]
        );
        let second = t
            .audit("alice", "door", first.next_before, Some(2))
            .unwrap();
        assert_eq!(
            second.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(second.next_before, None);
        assert_eq!(t.chain_of_command("door", sent.id()).unwrap().id, sent.id());
    }
}
