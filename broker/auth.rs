//! What clients may do on plain topics: ACL rules from the configuration, with Mosquitto's
//! acl_file semantics. (Accounts themselves live in `mqtter_engine::accounts`.)

pub use mqtter_engine::accounts::{AccountId, AccountKind, AccountRecord, Accounts, AuthError};

use crate::config::{Access, AclRule};
use crate::topic;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// The ACL: with no rules everything is allowed; otherwise a matching deny wins, then a matching
/// allow, and the rest is denied.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// May `username` (client `client_id`) publish to the topic name, or subscribe to the filter?
    pub fn allows(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let mut allowed = false;
        for rule in &self.rules {
            let applies = rule.account == "*" || Some(rule.account.as_str()) == username;
            if !applies {
                continue;
            }
            let pattern = expand(&rule.topic, username, client_id);
            let hit = match action {
                Action::Publish => topic::matches(&pattern, topic),
                Action::Subscribe => topic::covers(&pattern, topic),
            };
            if !hit {
                continue;
            }
            match (rule.access, action) {
                (Access::Deny, _) => return false,
                (Access::Readwrite, _)
                | (Access::Write, Action::Publish)
                | (Access::Read, Action::Subscribe) => allowed = true,
                _ => {}
            }
        }
        allowed
    }
}

fn expand(pattern: &str, username: Option<&str>, client_id: &str) -> String {
    if !pattern.contains('%') {
        return pattern.to_owned();
    }
    // A placeholder that cannot be filled (anonymous %u) must match nothing: use a level no topic has.
    pattern
        .replace("%u", username.unwrap_or("\u{0}"))
        .replace("%c", client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(account: &str, topic: &str, access: Access) -> AclRule {
        AclRule {
            account: account.into(),
            topic: topic.into(),
            access,
        }
    }

    #[test]
    fn acl_follows_mosquitto_semantics() {
        let acl = Acl::new(vec![
            rule("*", "#", Access::Readwrite),
            rule("*", "test/nosubscribe", Access::Deny),
            rule("*", "devices/%u/#", Access::Readwrite),
        ]);
        assert!(acl.allows(None, "c", Action::Subscribe, "a/b"));
        assert!(!acl.allows(None, "c", Action::Subscribe, "test/nosubscribe"));
        assert!(!acl.allows(None, "c", Action::Publish, "test/nosubscribe"));

        let acl = Acl::new(vec![
            rule("*", "devices/%u/#", Access::Readwrite),
            rule("alice", "reports/+", Access::Read),
        ]);
        assert!(acl.allows(Some("bob"), "c", Action::Publish, "devices/bob/x"));
        assert!(!acl.allows(Some("bob"), "c", Action::Publish, "devices/alice/x"));
        assert!(!acl.allows(None, "c", Action::Publish, "devices//x"));
        assert!(acl.allows(Some("alice"), "c", Action::Subscribe, "reports/+"));
        assert!(!acl.allows(Some("alice"), "c", Action::Publish, "reports/x"));
        assert!(!acl.allows(Some("alice"), "c", Action::Subscribe, "reports/#"));
        assert!(Acl::default().allows(None, "c", Action::Publish, "anything"));
    }
}
