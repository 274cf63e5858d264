//! Commands: authorised, stamped (`id`, `from`, `ts`, `chain`), recorded, delivered or queued
//! while the thing is offline until their ttl, handed over, and closed once: answered
//! (`cmd.ack`) or timed out (`cmd.timeout`), into the commander's feed. A `cid` makes a retry
//! a no-op.
//! How a command reaches a device of its thing (the hand-over) is `handover.rs`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::audit::{AuditEntry, Outcome};
use super::handover::EFFECT_HOLDER;
use super::payload::{AckRequest, CommandRequest};
use super::{
    Chain, Effect, ThingError, ThingResult, Things, decode, encode, item_id, lock, notice, seq_key,
};
use crate::im::key;
use crate::store::{Batch, Space};

/// Where the answer to a v5 request goes besides the commander's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

/// An open command as stored (queued, or delivered and unanswered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub thing: String,
    pub seq: u64,
    pub from: String,
    pub ts: u64,
    /// Granted ttl, in seconds.
    pub ttl: u64,
    pub expires: u64,
    pub cid: Option<String>,
    /// The body: a JSON object, as compact text.
    pub body: String,
    pub chain: Chain,
    pub reply: Option<Reply>,
    /// A device of the thing acknowledged it (handed over: never given again).
    pub delivered: bool,
}

impl Command {
    /// The `cmd` envelope the thing receives.
    pub fn envelope(&self) -> Value {
        let mut e = json!({
            "type": "cmd", "id": self.id, "thing": self.thing, "from": self.from, "ts": self.ts,
            "ttl": self.ttl, "expires": self.expires, "body": body_value(&self.body),
            "chain": self.chain.to_json(),
        });
        if let Some(cid) = &self.cid {
            e["cid"] = json!(cid);
        }
        e
    }
}

pub(super) fn body_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the thing's online devices.
    Delivered { id: String },
    /// Queued for the thing's next connection, until `expires`.
    Queued { id: String, expires: u64 },
    /// A retry of `cid`: the first command's id, nothing done again.
    Duplicate { id: String },
}

impl Sent {
    pub fn id(&self) -> &str {
        match self {
            Sent::Delivered { id } | Sent::Queued { id, .. } | Sent::Duplicate { id } => id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DedupRecord {
    id: String,
    until: u64,
}

pub(super) fn open_key(thing: &str, seq: u64) -> Vec<u8> {
    seq_key(&["q", thing], seq)
}

pub(super) fn open_prefix(thing: &str) -> Vec<u8> {
    let mut k = key(&["q", thing]);
    k.push(0);
    k
}

pub(super) fn open_prefix_all() -> Vec<u8> {
    b"q\0".to_vec()
}

pub(super) fn purge_dedup(things: &Things, now: u64) -> ThingResult<usize> {
    let mut batch = Batch::new();
    for (k, v) in things.store.scan_prefix(Space::Commands, b"d\0")? {
        if decode::<DedupRecord>(&v).is_none_or(|d| d.until <= now) {
            batch.remove(Space::Commands, k);
        }
    }
    let purged = batch.len();
    things.store.apply(batch)?;
    Ok(purged)
}

/// The chain of an answer to something on `chain`: one hop further, never refused.
fn answer_chain(chain: &Chain) -> Chain {
    Chain {
        id: chain.id.clone(),
        hop: chain.hop.saturating_add(1),
    }
}

impl Things {
    /// `req.from` commands `req.thing`. Refused (and written in the audit as refused) when the
    /// sender may not command it; never delivered then.
    pub fn command(&self, req: CommandRequest, now: u64) -> ThingResult<(Sent, Vec<Effect>)> {
        let thing = req.thing.as_str();
        self.require_thing(thing)?;
        let _guard = self.thing_lock(thing);
        if !self.may_command(&req.from, thing) {
            let reason = format!("{} may not command {thing}", req.from);
            self.audit_refused(thing, &req.from, &reason, now)?;
            return Err(ThingError::NotAuthorized(reason));
        }
        if req.body.len() > self.config.max_body_bytes {
            return Err(ThingError::TooLarge(format!(
                "a command body of {} bytes is over the limit of {}",
                req.body.len(),
                self.config.max_body_bytes
            )));
        }
        if !serde_json::from_str::<Value>(&req.body).is_ok_and(|v| v.is_object()) {
            return Err(ThingError::Invalid(
                "a command must be a JSON object".into(),
            ));
        }
        if let Some(chain) = &req.chain {
            // Checked before anything is numbered or written.
            self.continue_chain(Some(chain.clone()), "")?;
        }
        let dedup = match &req.cid {
            Some(cid) if cid.contains('\0') => {
                return Err(ThingError::Invalid("a cid may not contain NUL".into()));
            }
            Some(cid) => {
                let k = key(&["d", thing, &req.from, cid]);
                if let Some(record) = self.store.get(Space::Commands, &k)?
                    && let Some(record) = decode::<DedupRecord>(&record)
                    && record.until > now
                {
                    return Ok((Sent::Duplicate { id: record.id }, Vec::new()));
                }
                Some(k)
            }
            None => None,
        };
        let open = self
            .store
            .scan_prefix(Space::Commands, &open_prefix(thing))?
            .len();
        if open >= self.config.max_queued_cmds {
            return Err(ThingError::QueueFull(format!(
                "{thing} has {open} open commands, the most it may have"
            )));
        }
        let mut batch = Batch::new();
        let seq = self.next_seq(&mut batch, thing)?;
        let id = item_id(thing, seq);
        let chain = self.continue_chain(req.chain, &id)?;
        let ttl = req
            .ttl_secs
            .unwrap_or(self.config.cmd_ttl_default_secs)
            .min(self.config.cmd_ttl_max_secs);
        let online = self.is_online(thing);
        let cmd = Command {
            id: id.clone(),
            thing: thing.to_owned(),
            seq,
            from: req.from,
            ts: now,
            ttl,
            expires: now + ttl * 1000,
            cid: req.cid,
            body: req.body,
            chain,
            reply: req.reply,
            delivered: false,
        };
        batch.put(Space::Commands, open_key(thing, seq), encode(&cmd));
        if let Some(k) = dedup {
            let until = now + self.config.cmd_ttl_max_secs * 1000;
            let record = DedupRecord {
                id: id.clone(),
                until,
            };
            batch.put(Space::Commands, k, encode(&record));
        }
        self.audit_put(&mut batch, &AuditEntry::of_command(&cmd));
        self.store.apply(batch)?;
        lock(&self.deadlines).insert((cmd.expires, thing.to_owned(), seq));
        if online {
            // Held for the effect (no CONNECT takes it meanwhile): the broker gives it back.
            self.hold(thing, seq, EFFECT_HOLDER);
            let effects = vec![Effect::Command {
                thing: thing.to_owned(),
                seq,
                envelope: cmd.envelope(),
            }];
            Ok((Sent::Delivered { id }, effects))
        } else {
            Ok((
                Sent::Queued {
                    id,
                    expires: cmd.expires,
                },
                Vec::new(),
            ))
        }
    }

    /// `thing` answers one of its open commands: the commander gets `cmd.ack` in its feed (and
    /// on its v5 Response Topic). The first answer counts.
    pub fn ack(&self, thing: &str, ack: AckRequest, now: u64) -> ThingResult<Vec<Effect>> {
        let not_open = || {
            ThingError::NotFound(format!(
                "no open command {} of {thing}: unknown, already answered or timed out",
                ack.id
            ))
        };
        let seq = ack
            .id
            .strip_prefix("thing:")
            .and_then(|rest| rest.strip_prefix(thing))
            .and_then(|rest| rest.strip_prefix('#'))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(not_open)?;
        let _guard = self.thing_lock(thing);
        let k = open_key(thing, seq);
        let cmd = self
            .store
            .get(Space::Commands, &k)?
            .and_then(|v| decode::<Command>(&v))
            .ok_or_else(not_open)?;
        let result_text = ack.result.to_string();
        let mut batch = Batch::new();
        batch.remove(Space::Commands, k);
        self.audit_update(&mut batch, thing, seq, |e| {
            e.outcome = Outcome::Acked {
                at: now,
                ok: ack.ok,
                result: result_text.clone(),
            };
        })?;
        let mut envelope = notice(
            "cmd.ack",
            now,
            json!({ "id": cmd.id, "thing": thing, "ok": ack.ok, "result": ack.result,
                    "chain": answer_chain(&cmd.chain).to_json() }),
        );
        if let Some(cid) = &cmd.cid {
            envelope["cid"] = json!(cid);
        }
        let effects = self.answer(&mut batch, &cmd, envelope)?;
        self.store.apply(batch)?;
        lock(&self.deadlines).remove(&(cmd.expires, thing.to_owned(), seq));
        self.unhold(thing, seq);
        Ok(effects)
    }

    /// The commander's feed entry (and the v5 response) for an answer or a timeout.
    fn answer(
        &self,
        batch: &mut Batch,
        cmd: &Command,
        envelope: Value,
    ) -> ThingResult<Vec<Effect>> {
        let feed = self.feed_push(batch, &cmd.from, envelope)?;
        let mut effects = Vec::new();
        if let Some(reply) = &cmd.reply
            && let Effect::Feed { envelope, .. } = &feed
        {
            effects.push(Effect::Respond {
                topic: reply.topic.clone(),
                correlation: reply.correlation.clone(),
                envelope: envelope.clone(),
            });
        }
        effects.insert(0, feed);
        Ok(effects)
    }

    pub(super) fn timed_out(
        &self,
        batch: &mut Batch,
        cmd: &Command,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        self.audit_update(batch, &cmd.thing, cmd.seq, |e| {
            e.outcome = Outcome::Timeout {
                at: now,
                delivered: cmd.delivered,
            };
        })?;
        let mut envelope = notice(
            "cmd.timeout",
            now,
            json!({ "id": cmd.id, "thing": cmd.thing, "expires": cmd.expires,
                    "delivered": cmd.delivered, "chain": answer_chain(&cmd.chain).to_json() }),
        );
        if let Some(cid) = &cmd.cid {
            envelope["cid"] = json!(cid);
        }
        self.answer(batch, cmd, envelope)
    }

    /// When the next open command's ttl passes (ms since the epoch), if any is open: what a
    /// timer sleeps until on a virtual clock.
    pub fn next_deadline(&self) -> Option<u64> {
        lock(&self.deadlines)
            .first()
            .map(|(expires, _, _)| *expires)
    }

    /// Close every open command whose ttl has passed at `now`: `cmd.timeout` to its commander.
    /// The broker calls this periodically; a restart loses no deadline (they are stored).
    pub fn sweep(&self, now: u64) -> ThingResult<Vec<Effect>> {
        let due: Vec<(u64, String, u64)> = {
            let mut deadlines = lock(&self.deadlines);
            let later = deadlines.split_off(&(now + 1, String::new(), 0));
            std::mem::replace(&mut *deadlines, later)
                .into_iter()
                .collect()
        };
        let mut effects = Vec::new();
        for (i, (expires, thing, seq)) in due.iter().enumerate() {
            let result = self.sweep_one(thing, *seq, now);
            match result {
                Ok(done) => effects.extend(done),
                Err(err) => {
                    // Try again at the next sweep.
                    let mut deadlines = lock(&self.deadlines);
                    for entry in &due[i..] {
                        deadlines.insert(entry.clone());
                    }
                    tracing::warn!(thing, expires, cause = %err, "command timeout not stored");
                    return Err(err);
                }
            }
        }
        Ok(effects)
    }

    fn sweep_one(&self, thing: &str, seq: u64, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = self.thing_lock(thing);
        let k = open_key(thing, seq);
        let Some(cmd) = self
            .store
            .get(Space::Commands, &k)?
            .and_then(|v| decode::<Command>(&v))
        else {
            return Ok(Vec::new());
        };
        let mut batch = Batch::new();
        batch.remove(Space::Commands, k);
        let effects = self.timed_out(&mut batch, &cmd, now)?;
        self.store.apply(batch)?;
        self.unhold(thing, seq);
        Ok(effects)
    }

    /// The open commands of `thing` (queued or delivered, unanswered), oldest first.
    pub fn open_commands(&self, thing: &str) -> ThingResult<Vec<Command>> {
        Ok(self
            .store
            .scan_prefix(Space::Commands, &open_prefix(thing))?
            .into_iter()
            .filter_map(|(_, v)| decode::<Command>(&v))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{claim, sent_to, world};
    use super::*;
    use crate::graph::Rights;

    fn cmd(from: &str, thing: &str, payload: &str) -> CommandRequest {
        CommandRequest::from_payload(from, thing, payload.as_bytes(), 65536).unwrap()
    }

    #[test]
    fn an_online_thing_gets_the_command_and_its_answer_reaches_the_commander() {
        let w = world(&["alice"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        t.connected("door", 10).unwrap();
        let mut req = cmd("alice", "door", r#"{"open":true,"cid":"c1"}"#);
        req.reply = Some(Reply {
            topic: "app/answers".into(),
            correlation: Some(b"k1".to_vec()),
        });
        let (sent, effects) = t.command(req, 1_000).unwrap();
        assert_eq!(
            sent,
            Sent::Delivered {
                id: "thing:door#1".into()
            }
        );
        let Effect::Command {
            thing,
            seq,
            envelope,
        } = &effects[0]
        else {
            panic!("{effects:?}")
        };
        assert_eq!((thing.as_str(), *seq), ("door", 1));
        assert_eq!(envelope["from"], "alice");
        assert_eq!(envelope["ts"], 1_000);
        assert_eq!(envelope["ttl"], 30);
        assert_eq!(envelope["expires"], 31_000);
        assert_eq!(envelope["body"], json!({"open": true}));
        assert_eq!(envelope["chain"], json!({"id": "thing:door#1", "hop": 0}));
        assert_eq!(envelope["cid"], "c1");
        // A retry of the cid does nothing again.
        let (again, effects) = t
            .command(cmd("alice", "door", r#"{"open":true,"cid":"c1"}"#), 1_100)
            .unwrap();
        assert_eq!(
            again,
            Sent::Duplicate {
                id: "thing:door#1".into()
            }
        );
        assert!(effects.is_empty());
        let ack =
            AckRequest::from_payload(br#"{"id":"thing:door#1","result":"opened"}"#, None).unwrap();
        let effects = t.ack("door", ack.clone(), 2_000).unwrap();
        assert_eq!(sent_to(&effects, "alice"), ["cmd.ack"]);
        let Effect::Feed { envelope, .. } = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!(envelope["result"], "opened");
        assert_eq!(envelope["chain"]["hop"], 1);
        assert!(
            matches!(&effects[1], Effect::Respond { topic, correlation: Some(c), .. }
            if topic == "app/answers" && c == b"k1")
        );
        // The first answer counts; the command is closed.
        assert!(matches!(
            t.ack("door", ack, 2_100),
            Err(ThingError::NotFound(_))
        ));
        assert!(t.sweep(100_000).unwrap().is_empty());
        assert!(t.open_commands("door").unwrap().is_empty());
    }

    #[test]
    fn an_offline_thing_gets_its_queue_at_connect_within_the_ttl() {
        let w = world(&["alice"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        let (first, effects) = t
            .command(cmd("alice", "door", r#"{"n":1,"ttl":10}"#), 1_000)
            .unwrap();
        assert!(matches!(
            first,
            Sent::Queued {
                expires: 11_000,
                ..
            }
        ));
        assert!(effects.is_empty(), "nothing delivered to an offline thing");
        t.command(cmd("alice", "door", r#"{"n":2,"ttl":2}"#), 1_000)
            .unwrap();
        t.command(cmd("alice", "door", r#"{"n":3,"ttl":999999}"#), 1_000)
            .unwrap();
        // At 5 s: the second has expired and times out; the others come, oldest first.
        let (queued, effects) = t.take_queued("door", 7, 5_000).unwrap();
        let bodies: Vec<_> = queued
            .iter()
            .map(|c| c.envelope()["body"]["n"].clone())
            .collect();
        assert_eq!(bodies, [json!(1), json!(3)]);
        assert_eq!(queued[1].ttl, 3600, "capped by the configuration");
        assert_eq!(sent_to(&effects, "alice"), ["cmd.timeout"]);
        let Effect::Feed { envelope, .. } = &effects[0] else {
            panic!()
        };
        assert_eq!(envelope["delivered"], false);
        // Held by that device's connection: another connection gets nothing meanwhile.
        assert!(t.take_queued("door", 8, 6_000).unwrap().0.is_empty());
        // The device acknowledged the first (handed over, once); the third came back
        // unacknowledged (its connection ended): the next CONNECT gets it, the same command.
        assert!(t.handed_over("door", queued[0].seq).unwrap());
        assert!(!t.handed_over("door", queued[0].seq).unwrap(), "once");
        let back = t.handed_back("door", queued[1].seq, 7, 6_000).unwrap();
        assert_eq!(back.map(|c| c.id), Some(queued[1].id.clone()));
        let (again, _) = t.take_queued("door", 8, 6_000).unwrap();
        let ids: Vec<_> = again.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, [queued[1].id.clone()]);
        assert!(t.handed_over("door", again[0].seq).unwrap());
        assert!(
            t.release("door", 8, 7_000).unwrap().is_empty(),
            "nothing left"
        );
        assert!(t.take_queued("door", 9, 7_000).unwrap().0.is_empty());
        // The first times out unanswered, delivered.
        let effects = t.sweep(11_000).unwrap();
        assert_eq!(sent_to(&effects, "alice"), ["cmd.timeout"]);
        let Effect::Feed { envelope, .. } = &effects[0] else {
            panic!()
        };
        assert_eq!(envelope["delivered"], true);
        assert_eq!(envelope["id"], "thing:door#1");
        assert!(t.sweep(12_000).unwrap().is_empty(), "closed once");
        let late = AckRequest {
            id: "thing:door#1".into(),
            ok: true,
            result: Value::Null,
        };
        assert!(t.ack("door", late, 12_000).is_err(), "too late");
    }

    #[test]
    fn no_rights_no_command_and_a_view_share_cannot_command() {
        let w = world(&["alice", "bob", "carol"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        t.connected("door", 1).unwrap();
        t.share("alice", "door", "bob", Rights::View, 2).unwrap();
        for who in ["bob", "carol"] {
            let err = t
                .command(cmd(who, "door", r#"{"open":true}"#), 3)
                .unwrap_err();
            assert_eq!(err.code(), "not_authorized");
        }
        assert!(t.open_commands("door").unwrap().is_empty());
        assert!(matches!(
            t.command(cmd("alice", "nothing", "{}"), 3),
            Err(ThingError::NotFound(_))
        ));
        t.share("alice", "door", "bob", Rights::Control, 4).unwrap();
        assert!(t.command(cmd("bob", "door", r#"{"open":true}"#), 5).is_ok());
    }

    #[test]
    fn the_queue_is_bounded_and_chains_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::ThingsConfig {
            max_queued_cmds: 2,
            ..Default::default()
        };
        let (im, t) = super::super::testing::open_in(dir.path(), config);
        im.account_added("alice", crate::accounts::AccountKind::Person);
        im.account_added("door", crate::accounts::AccountKind::Thing);
        claim(&t, "door", "alice", 1);
        t.command(cmd("alice", "door", "{}"), 1).unwrap();
        t.command(cmd("alice", "door", "{}"), 1).unwrap();
        let err = t.command(cmd("alice", "door", "{}"), 1).unwrap_err();
        assert_eq!(err.code(), "queue_full");
        t.sweep(1_000_000).unwrap();
        let deep = r#"{"chain":{"id":"c","hop":16}}"#;
        assert_eq!(
            t.command(cmd("alice", "door", deep), 2).unwrap_err().code(),
            "chain_too_long"
        );
        let ok = r#"{"chain":{"id":"c","hop":15}}"#;
        let (sent, _) = t.command(cmd("alice", "door", ok), 2).unwrap();
        let open = t.open_commands("door").unwrap();
        assert_eq!(open[0].id, sent.id());
        assert_eq!(
            open[0].chain,
            Chain {
                id: "c".into(),
                hop: 16
            }
        );
    }
}
