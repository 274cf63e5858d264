//! Accounts (persons and things): ids, kinds and argon2 password hashes, kept in the store.
//! The secret itself is never stored.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use serde::{Deserialize, Serialize};

use crate::store::{Batch, Space, Store, StoreError};

/// The two kinds of account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Person,
    Thing,
}

/// An account id: `[A-Za-z0-9_.-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(id: &str) -> Result<Self, AuthError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(AuthError::BadId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An account as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub kind: AccountKind,
    /// The argon2 PHC string; the secret itself is never stored.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid account id {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    BadId(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("no account {0}")]
    Missing(String),
    #[error("the password may not be empty")]
    EmptyPassword,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored account {0} is unreadable")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The account registry, over the store.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| AuthError::Hash(err.to_string()))
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn get(&self, id: &str) -> Result<Option<AccountRecord>, AuthError> {
        let Some(bytes) = self.store.get(Space::Accounts, id.as_bytes())? else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|_| AuthError::Corrupt(id.to_owned()))
    }

    fn put(&self, id: &AccountId, record: &AccountRecord) -> Result<(), AuthError> {
        let bytes = postcard::to_allocvec(record).map_err(|e| AuthError::Hash(e.to_string()))?;
        let mut batch = Batch::new();
        batch.put(Space::Accounts, id.as_str().as_bytes(), bytes);
        self.store.apply(batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// A new account, created at `now` (ms since the epoch).
    pub fn add(
        &self,
        id: &str,
        kind: AccountKind,
        password: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let id = AccountId::parse(id)?;
        if self.get(id.as_str())?.is_some() {
            return Err(AuthError::Exists(id.0));
        }
        let record = AccountRecord {
            kind,
            password_hash: hash_password(password)?,
            created_ms: now,
        };
        self.put(&id, &record)
    }

    pub fn set_password(&self, id: &str, password: &str) -> Result<(), AuthError> {
        let id = AccountId::parse(id)?;
        let mut record = self
            .get(id.as_str())?
            .ok_or_else(|| AuthError::Missing(id.0.clone()))?;
        record.password_hash = hash_password(password)?;
        self.put(&id, &record)
    }

    /// Create (at `now`) or update an account from a definitions file, with a ready argon2 hash.
    pub fn define(
        &self,
        id: &str,
        kind: AccountKind,
        password_hash: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let id = AccountId::parse(id)?;
        if PasswordHash::new(password_hash).is_err() {
            return Err(AuthError::Hash(format!(
                "{} has no valid argon2 hash",
                id.as_str()
            )));
        }
        let created_ms = self.get(id.as_str())?.map_or(now, |r| r.created_ms);
        let record = AccountRecord {
            kind,
            password_hash: password_hash.to_owned(),
            created_ms,
        };
        self.put(&id, &record)
    }

    /// An account that cannot log in (no secret: a rule's account, say), created at `now`, or
    /// an existing one made so.
    pub fn define_without_login(
        &self,
        id: &str,
        kind: AccountKind,
        now: u64,
    ) -> Result<(), AuthError> {
        let id = AccountId::parse(id)?;
        let created_ms = self.get(id.as_str())?.map_or(now, |r| r.created_ms);
        let record = AccountRecord {
            kind,
            password_hash: NO_LOGIN.to_owned(),
            created_ms,
        };
        self.put(&id, &record)
    }

    /// Create an account (at `now`) from a definitions file with a plain password, or reset the
    /// stored hash if the password no longer matches it.
    pub fn define_with_password(
        &self,
        id: &str,
        kind: AccountKind,
        password: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        match self.verify(id, password.as_bytes())? {
            Some(true) => Ok(()),
            Some(false) => self.set_password(id, password),
            None => self.add(id, kind, password, now),
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), AuthError> {
        if self.get(id)?.is_none() {
            return Err(AuthError::Missing(id.to_owned()));
        }
        let mut batch = Batch::new();
        batch.remove(Space::Accounts, id.as_bytes());
        self.store.apply(batch)?;
        self.store.flush()?;
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<(String, AccountRecord)>, AuthError> {
        self.store
            .scan_prefix(Space::Accounts, b"")?
            .into_iter()
            .map(|(key, value)| {
                let id = String::from_utf8_lossy(&key).into_owned();
                postcard::from_bytes(&value)
                    .map(|r| (id.clone(), r))
                    .map_err(|_| AuthError::Corrupt(id))
            })
            .collect()
    }

    /// Check `password` for `id`. `Ok(None)`: no such account. Slow on purpose (argon2): call it
    /// off the network threads.
    pub fn verify(&self, id: &str, password: &[u8]) -> Result<Option<bool>, AuthError> {
        let Some(record) = self.get(id)? else {
            return Ok(None);
        };
        if record.password_hash == NO_LOGIN {
            return Ok(Some(false));
        }
        let Ok(hash) = PasswordHash::new(&record.password_hash) else {
            return Err(AuthError::Corrupt(id.to_owned()));
        };
        Ok(Some(
            Argon2::default().verify_password(password, &hash).is_ok(),
        ))
    }
}

impl std::str::FromStr for AccountKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "person" => Ok(AccountKind::Person),
            "thing" => Ok(AccountKind::Thing),
            other => Err(format!(
                "account kind must be person or thing, not {other:?}"
            )),
        }
    }
}

/// The stored hash of an account that cannot log in: no password matches it.
const NO_LOGIN: &str = "";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_without_a_login_exists_and_no_password_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::SledStore::open(dir.path()).unwrap());
        let accounts = Accounts::new(store);
        accounts
            .define_without_login("bot", AccountKind::Person, 1)
            .unwrap();
        assert!(accounts.get("bot").unwrap().is_some());
        for password in [&b""[..], b"x", b"bot"] {
            assert_eq!(accounts.verify("bot", password).unwrap(), Some(false));
        }
    }

    #[test]
    fn account_ids_are_checked() {
        assert!(AccountId::parse("alice.b-1_x").is_ok());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("a/b").is_err());
        assert!(AccountId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn accounts_hash_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::SledStore::open(dir.path()).unwrap());
        let accounts = Accounts::new(store);
        accounts
            .add("alice", AccountKind::Person, "secret", 1)
            .unwrap();
        assert!(matches!(
            accounts.add("alice", AccountKind::Person, "x", 2),
            Err(AuthError::Exists(_))
        ));
        assert_eq!(accounts.verify("alice", b"secret").unwrap(), Some(true));
        assert_eq!(accounts.verify("alice", b"wrong").unwrap(), Some(false));
        assert_eq!(accounts.verify("bob", b"secret").unwrap(), None);
        let stored = accounts.get("alice").unwrap().unwrap();
        assert!(stored.password_hash.starts_with("$argon2id$"));
        accounts.set_password("alice", "new").unwrap();
        assert_eq!(accounts.verify("alice", b"new").unwrap(), Some(true));
        assert_eq!(accounts.list().unwrap().len(), 1);
        accounts.remove("alice").unwrap();
        assert!(accounts.list().unwrap().is_empty());
    }
}
