//! Who a client id and its session belong to: the namespace of an account (`ACCOUNT` and
//! `ACCOUNT:*`) belongs to that account, and a session to the identity that made it.
//!
//! - A client id whose part before the first `:` is an account's id may be used only by a
//!   client authenticated as that account, whatever `allow_anonymous` says (checked in the
//!   handshake, against the relationship graph, which knows every account).
//! - Any other client id is open to anyone, but a session is kept for the identity that made
//!   it: another identity (anonymous or an account) connecting with that id is refused, so it
//!   can neither take over the connection, nor resume, nor end the session.
//! - An account's own namespace wins over a session someone else made there before the account
//!   existed (an account created by a definitions file): that session is ended, not resumed, when
//!   the account connects with its id. `mqtter account add` refuses a name whose namespace holds
//!   stored sessions of anyone else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The identity a session belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Holder {
    /// A client that did not authenticate.
    #[default]
    Anonymous,
    Account(Arc<str>),
    /// A session stored by a version that did not record its holder: the next identity allowed
    /// to use its client id claims it.
    Unknown,
}

impl Holder {
    pub fn of(account: Option<&str>) -> Holder {
        account.map_or(Holder::Anonymous, |a| Holder::Account(Arc::from(a)))
    }
}

/// The holder as stored in a session record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum StoredHolder {
    #[default]
    Anonymous,
    Account(String),
    Unknown,
}

impl From<&Holder> for StoredHolder {
    fn from(holder: &Holder) -> Self {
        match holder {
            Holder::Anonymous => StoredHolder::Anonymous,
            Holder::Account(a) => StoredHolder::Account(a.to_string()),
            Holder::Unknown => StoredHolder::Unknown,
        }
    }
}

impl From<StoredHolder> for Holder {
    fn from(holder: StoredHolder) -> Self {
        match holder {
            StoredHolder::Anonymous => Holder::Anonymous,
            StoredHolder::Account(a) => Holder::Account(Arc::from(a)),
            StoredHolder::Unknown => Holder::Unknown,
        }
    }
}

/// The account id a client id would belong to: its part before the first `:`.
pub fn namespace(client_id: &str) -> &str {
    client_id.split(':').next().unwrap_or_default()
}

/// What a connecting identity may do with an existing session of `holder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Its own (or one of unknown holder): take over, resume or end it as MQTT says.
    Own,
    /// Someone else's, in the connecting account's own namespace: ended, never resumed.
    Reclaim,
    /// Someone else's: refused.
    Foreign,
}

pub fn claim(holder: &Holder, account: Option<&str>, client_id: &str) -> Claim {
    match holder {
        Holder::Unknown => Claim::Own,
        Holder::Anonymous if account.is_none() => Claim::Own,
        Holder::Account(held) if Some(&**held) == account => Claim::Own,
        _ if account.is_some_and(|a| a == namespace(client_id)) => Claim::Reclaim,
        _ => Claim::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_holders() {
        let bob = Holder::of(Some("bob"));
        assert_eq!(namespace("bob:phone"), "bob");
        assert_eq!(namespace("bob"), "bob");
        assert_eq!(namespace(":x"), "");
        assert_eq!(claim(&bob, Some("bob"), "bob:phone"), Claim::Own);
        assert_eq!(claim(&bob, None, "bob:phone"), Claim::Foreign);
        assert_eq!(claim(&bob, Some("eve"), "device-7"), Claim::Foreign);
        assert_eq!(claim(&Holder::Anonymous, None, "device-7"), Claim::Own);
        assert_eq!(
            claim(&Holder::Anonymous, Some("eve"), "device-7"),
            Claim::Foreign
        );
        assert_eq!(
            claim(&Holder::Anonymous, Some("bob"), "bob:old"),
            Claim::Reclaim
        );
        assert_eq!(claim(&Holder::Unknown, None, "x"), Claim::Own);
    }
}
