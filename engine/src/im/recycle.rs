//! The recycle bin: a removed friendship, group membership or thing binding stays restorable, as it was, until
//! its retention ends; then it is purged for good (also across restarts: expiry is a stored time).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Im, ImError, ImResult, decode, encode, key};
use crate::graph::Relation;
use crate::store::{Batch, Space};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecycleKind {
    Friend,
    Group,
    /// A thing's ownership or a share of it (`crate::things`).
    Binding,
}

impl RecycleKind {
    fn as_str(self) -> &'static str {
        match self {
            RecycleKind::Friend => "friend",
            RecycleKind::Group => "group",
            RecycleKind::Binding => "binding",
        }
    }
}

/// One removed relation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecycleEntry {
    pub kind: RecycleKind,
    /// The friend's or the group's id.
    pub peer: String,
    /// The relation as it was, restored unchanged.
    pub relation: Relation,
    pub removed_at: u64,
    pub expires_at: u64,
}

impl RecycleEntry {
    pub fn to_json(&self) -> Value {
        json!({ "kind": self.kind, "peer": self.peer, "removed_at": self.removed_at, "expires_at": self.expires_at })
    }
}

impl Im {
    /// The retention granted for a request of `asked` seconds (default when none, capped).
    pub fn retention_secs(&self, asked: Option<u64>) -> u64 {
        asked
            .unwrap_or(self.config.recycle_default_secs)
            .min(self.config.recycle_max_secs)
    }

    /// Put a removed relation into `owner`'s bin for `retain_secs` (default and cap from the
    /// configuration).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bin_put(
        &self,
        batch: &mut Batch,
        owner: &str,
        kind: RecycleKind,
        peer: &str,
        relation: Relation,
        retain_secs: Option<u64>,
        now: u64,
    ) {
        let entry = RecycleEntry {
            kind,
            peer: peer.to_owned(),
            relation,
            removed_at: now,
            expires_at: now + self.retention_secs(retain_secs) * 1000,
        };
        batch.put(
            Space::Recycle,
            key(&[owner, kind.as_str(), peer]),
            encode(&entry),
        );
    }

    /// Take an entry out of the bin if it is there and not expired.
    pub(crate) fn bin_take(
        &self,
        batch: &mut Batch,
        owner: &str,
        kind: RecycleKind,
        peer: &str,
        now: u64,
    ) -> ImResult<Option<RecycleEntry>> {
        let k = key(&[owner, kind.as_str(), peer]);
        let Some(value) = self.store.get(Space::Recycle, &k)? else {
            return Ok(None);
        };
        batch.remove(Space::Recycle, k);
        match decode::<RecycleEntry>(&value) {
            Some(entry) if entry.expires_at > now => Ok(Some(entry)),
            _ => Ok(None),
        }
    }

    /// What is in `owner`'s bin and not yet expired.
    pub fn recycle_list(&self, owner: &str, now: u64) -> ImResult<Vec<RecycleEntry>> {
        let mut prefix = owner.as_bytes().to_vec();
        prefix.push(0);
        Ok(self
            .store
            .scan_prefix(Space::Recycle, &prefix)?
            .into_iter()
            .filter_map(|(_, v)| decode::<RecycleEntry>(&v))
            .filter(|e| e.expires_at > now)
            .collect())
    }

    /// Delete every expired entry for good. Returns how many went.
    pub fn purge(&self, now: u64) -> ImResult<usize> {
        let mut batch = Batch::new();
        for (k, v) in self.store.scan_prefix(Space::Recycle, b"")? {
            let expired = decode::<RecycleEntry>(&v).is_none_or(|e| e.expires_at <= now);
            if expired {
                batch.remove(Space::Recycle, k);
            }
        }
        let purged = batch.len();
        self.store.apply(batch)?;
        Ok(purged)
    }

    pub(super) fn expired_or_missing(what: &str) -> ImError {
        ImError::NotFound(format!(
            "{what} is not in the recycle bin (never removed, or its retention has ended)"
        ))
    }
}
