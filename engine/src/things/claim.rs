//! Claim codes: a thing asks for a one-time code with a ttl; a person binds with it and becomes
//! the thing's owner. A wrong or an expired code binds nothing and says which.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{Effect, ThingError, ThingResult, Things, decode, encode, lock};
use crate::graph::{Origin, Relation};
use crate::im::key;
use crate::store::{Batch, Space};

/// A claim code as the thing gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub code: String,
    pub thing: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimRecord {
    thing: String,
    expires_at: u64,
}

/// Crockford's base32 alphabet: no I, L, O, U to misread.
const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_LEN: usize = 10;

fn new_code() -> String {
    let mut bytes = [0u8; CODE_LEN];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// A code as a person typed it: case and separators (`-`, spaces) do not matter.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Claim codes are kept this long past their expiry, so a late try hears "expired", not "wrong".
const EXPIRED_CODES_KEPT_MS: u64 = 24 * 3600 * 1000;

pub(super) fn purge_claims(things: &Things, now: u64) -> ThingResult<usize> {
    let mut batch = Batch::new();
    for (k, v) in things.store.scan_prefix(Space::Things, b"claim\0")? {
        let gone = decode::<ClaimRecord>(&v)
            .is_none_or(|c| c.expires_at.saturating_add(EXPIRED_CODES_KEPT_MS) <= now);
        if gone {
            batch.remove(Space::Things, k);
        }
    }
    let purged = batch.len();
    things.store.apply(batch)?;
    Ok(purged)
}

impl Things {
    /// `thing` asks for a one-time claim code, valid `ttl_secs` (default and cap from the
    /// configuration). A new code replaces the thing's older one.
    pub fn claim_code(&self, thing: &str, ttl_secs: Option<u64>, now: u64) -> ThingResult<Claim> {
        let _guard = lock(&self.relations);
        self.require_thing(thing)?;
        if let Some(owner) = self.graph().owner_of(thing) {
            return Err(ThingError::Conflict(format!(
                "{thing} is bound to {owner}; the owner unbinds it first"
            )));
        }
        let ttl = ttl_secs
            .unwrap_or(self.config.claim_ttl_default_secs)
            .min(self.config.claim_ttl_max_secs);
        let mut batch = Batch::new();
        let of = key(&["claimof", thing]);
        if let Some(old) = self.store.get(Space::Things, &of)? {
            batch.remove(Space::Things, [b"claim\0".as_slice(), &old].concat());
        }
        let code = new_code();
        let expires_at = now + ttl * 1000;
        let record = ClaimRecord {
            thing: thing.to_owned(),
            expires_at,
        };
        batch.put(Space::Things, key(&["claim", &code]), encode(&record));
        batch.put(Space::Things, of, code.as_bytes().to_vec());
        self.store.apply(batch)?;
        Ok(Claim {
            code,
            thing: thing.to_owned(),
            expires_at,
        })
    }

    /// `person` binds the thing whose claim code this is and becomes its owner. A code works once;
    /// a wrong or an expired one binds nothing and says which.
    pub fn bind(&self, person: &str, code: &str, now: u64) -> ThingResult<(String, Vec<Effect>)> {
        let _guard = lock(&self.relations);
        self.require_person(person)?;
        let code = normalise(code);
        let k = key(&["claim", &code]);
        let record = match self.store.get(Space::Things, &k)? {
            Some(v) if !code.is_empty() => {
                decode::<ClaimRecord>(&v).ok_or(ThingError::WrongCode)?
            }
            _ => return Err(ThingError::WrongCode),
        };
        if record.expires_at <= now {
            return Err(ThingError::CodeExpired {
                at: record.expires_at,
            });
        }
        let thing = record.thing;
        self.require_thing(&thing)?;
        if let Some(owner) = self.graph().owner_of(&thing) {
            return Err(ThingError::Conflict(format!("{thing} is bound to {owner}")));
        }
        let mut batch = Batch::new();
        batch.remove(Space::Things, k);
        batch.remove(Space::Things, key(&["claimof", &thing]));
        let relation = Relation::Owner {
            since: now,
            origin: Origin::Runtime,
        };
        let effects = self.set_owner(&mut batch, person, &thing, relation, false, now);
        self.store.apply(batch)?;
        Ok((thing, effects))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{sent_to, world};
    use super::*;
    use crate::graph::Access;

    #[test]
    fn a_claim_code_binds_once_and_a_wrong_or_expired_one_says_why() {
        let w = world(&["alice", "bob"], &["door"]);
        let t = &w.things;
        let code = t.claim_code("door", Some(60), 1_000).unwrap();
        assert_eq!(code.code.len(), CODE_LEN);
        assert_eq!(code.expires_at, 61_000);
        assert!(matches!(
            t.bind("alice", "NOPE", 2_000),
            Err(ThingError::WrongCode)
        ));
        // Typed loosely: lower case, with a dash.
        let typed = format!("{}-{}", &code.code[..5], &code.code[5..]).to_lowercase();
        let (thing, effects) = t.bind("alice", &typed, 2_000).unwrap();
        assert_eq!(thing, "door");
        assert_eq!(sent_to(&effects, "alice"), ["thing.bound"]);
        assert_eq!(sent_to(&effects, "door"), ["thing.bound"]);
        assert_eq!(t.access("alice", "door"), Some(Access::Owner));
        // One time only.
        assert!(matches!(
            t.bind("bob", &code.code, 3_000),
            Err(ThingError::WrongCode)
        ));
        // An owned thing gets no code.
        assert!(matches!(
            t.claim_code("door", None, 3_000),
            Err(ThingError::Conflict(_))
        ));

        let w = world(&["alice"], &["lamp"]);
        let code = w.things.claim_code("lamp", Some(1), 1_000).unwrap();
        let err = w.things.bind("alice", &code.code, 2_000).unwrap_err();
        assert!(
            matches!(err, ThingError::CodeExpired { at: 2_000 }),
            "{err}"
        );
        assert_eq!(err.code(), "code_expired");
        assert_eq!(w.things.access("alice", "lamp"), None);
        // A newer code replaces the older one; the cap holds.
        let first = w.things.claim_code("lamp", None, 3_000).unwrap();
        let second = w.things.claim_code("lamp", Some(999_999), 3_000).unwrap();
        assert_eq!(second.expires_at, 3_000 + 3_600_000);
        assert!(matches!(
            w.things.bind("alice", &first.code, 4_000),
            Err(ThingError::WrongCode)
        ));
        w.things.bind("alice", &second.code, 4_000).unwrap();
        // Only things ask for codes; only persons bind.
        assert!(w.things.claim_code("alice", None, 5_000).is_err());
    }
}
