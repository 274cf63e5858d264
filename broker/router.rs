//! The subscription table: a trie of topic filters, each level a node, with shared
//! subscriptions (`$share/GROUP/FILTER`) kept beside plain ones in the same nodes.
//!
//! Matching a topic walks the trie once and returns each matching session **once**, with the
//! highest QoS and every subscription identifier of its matching subscriptions (so overlapping
//! subscriptions give one copy [MQTT-3.3.4-2], [MQTT-3.3.4-3]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::session::{Session, SubOpts};

#[derive(Debug, Clone)]
struct Entry {
    session: Arc<Session>,
    opts: SubOpts,
    /// For a shared subscription: the group and the filter, which together name the group.
    group: Option<Arc<str>>,
}

fn share_key(group: Option<&str>, filter: &str) -> Option<String> {
    group.map(|g| format!("{g}\u{0}{filter}"))
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscriptions whose filter ends at this node.
    here: Vec<Entry>,
    /// Subscriptions whose filter is this node's path followed by `/#`.
    hash: Vec<Entry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }
}

/// One session a message goes to, with what its matching subscriptions make of it.
#[derive(Debug, Clone)]
pub struct Target {
    pub session: Arc<Session>,
    /// Highest QoS over the matching subscriptions.
    pub qos: u8,
    /// Retain-as-published on any matching subscription.
    pub retain_as_published: bool,
    /// No-local on every matching subscription (then the publisher does not get it).
    pub no_local: bool,
    pub sub_ids: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    count: usize,
    shared_turn: AtomicUsize,
}

fn same(a: &Entry, session: &Session, group: Option<&str>) -> bool {
    *a.session.client_id == *session.client_id && a.group.as_deref() == group
}

impl Router {
    /// Number of subscriptions in the table.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add or replace a subscription. Returns true when it replaced an existing one.
    pub fn subscribe(
        &mut self,
        filter: &str,
        group: Option<&str>,
        session: &Arc<Session>,
        opts: SubOpts,
    ) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let mut is_hash = false;
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                is_hash = true;
                break;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let list = if is_hash {
            &mut node.hash
        } else {
            &mut node.here
        };
        let key = share_key(group, filter);
        let entry = Entry {
            session: session.clone(),
            opts,
            group: key.as_deref().map(Arc::from),
        };
        if let Some(existing) = list.iter_mut().find(|e| same(e, session, key.as_deref())) {
            *existing = entry;
            true
        } else {
            list.push(entry);
            self.count += 1;
            false
        }
    }

    /// Remove a subscription. Returns true when it existed.
    pub fn unsubscribe(&mut self, filter: &str, group: Option<&str>, session: &Session) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let key = share_key(group, filter);
        let removed = remove(&mut self.root, &levels, key.as_deref(), session);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Every session the topic goes to.
    pub fn matches(&self, topic: &str) -> Vec<Target> {
        let mut hits: Vec<&Entry> = Vec::new();
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut lists = 0;
        collect(&self.root, &levels, 0, dollar, &mut hits, &mut lists);
        self.aggregate(hits, lists)
    }

    /// `lists`: how many subscription lists (matching filters) the hits come from.
    fn aggregate(&self, hits: Vec<&Entry>, lists: usize) -> Vec<Target> {
        // One matching filter and no shared subscription (the common case, and every fan-out):
        // a list holds a session once per group, so there is nothing to merge or choose.
        if lists <= 1 && hits.iter().all(|e| e.group.is_none()) {
            return hits
                .into_iter()
                .map(|entry| Target {
                    session: entry.session.clone(),
                    qos: entry.opts.qos,
                    retain_as_published: entry.opts.retain_as_published,
                    no_local: entry.opts.no_local,
                    sub_ids: entry.opts.sub_id.into_iter().collect(),
                })
                .collect();
        }
        let mut targets: Vec<Target> = Vec::with_capacity(hits.len());
        let mut index: HashMap<*const Session, usize> = HashMap::new();
        let mut groups: HashMap<&str, Vec<&Entry>> = HashMap::new();
        let mut add = |entry: &Entry, targets: &mut Vec<Target>| {
            let key = Arc::as_ptr(&entry.session);
            if let Some(i) = index.get(&key) {
                let t: &mut Target = &mut targets[*i];
                t.qos = t.qos.max(entry.opts.qos);
                t.retain_as_published |= entry.opts.retain_as_published;
                t.no_local &= entry.opts.no_local;
                t.sub_ids.extend(entry.opts.sub_id);
            } else {
                index.insert(key, targets.len());
                targets.push(Target {
                    session: entry.session.clone(),
                    qos: entry.opts.qos,
                    retain_as_published: entry.opts.retain_as_published,
                    no_local: entry.opts.no_local,
                    sub_ids: entry.opts.sub_id.into_iter().collect(),
                });
            }
        };
        for entry in hits {
            match &entry.group {
                None => add(entry, &mut targets),
                Some(group) => groups.entry(group).or_default().push(entry),
            }
        }
        for (_, members) in groups {
            let online: Vec<&&Entry> = members.iter().filter(|e| e.session.is_online()).collect();
            let turn = self.shared_turn.fetch_add(1, Ordering::Relaxed);
            let chosen = if online.is_empty() {
                members[turn % members.len()]
            } else {
                online[turn % online.len()]
            };
            add(chosen, &mut targets);
        }
        targets
    }
}

fn collect<'a>(
    node: &'a Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    hits: &mut Vec<&'a Entry>,
    lists: &mut usize,
) {
    let wildcards_allowed = !(dollar && depth == 0);
    if wildcards_allowed && !node.hash.is_empty() {
        hits.extend(node.hash.iter());
        *lists += 1;
    }
    let Some((level, rest)) = levels.split_first() else {
        if !node.here.is_empty() {
            hits.extend(node.here.iter());
            *lists += 1;
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, depth + 1, dollar, hits, lists);
    }
    if wildcards_allowed && let Some(plus) = &node.plus {
        collect(plus, rest, depth + 1, dollar, hits, lists);
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, session: &Session) -> bool {
    match levels {
        [] => {
            let before = node.here.len();
            node.here.retain(|e| !same(e, session, group));
            before != node.here.len()
        }
        ["#"] => {
            let before = node.hash.len();
            node.hash.retain(|e| !same(e, session, group));
            before != node.hash.len()
        }
        [level, rest @ ..] => {
            if *level == "+" {
                let Some(plus) = node.plus.as_mut() else {
                    return false;
                };
                let removed = remove(plus, rest, group, session);
                if plus.is_empty() {
                    node.plus = None;
                }
                removed
            } else {
                let Some(child) = node.children.get_mut(*level) else {
                    return false;
                };
                let removed = remove(child, rest, group, session);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8, sub_id: Option<u32>) -> SubOpts {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            sub_id,
        }
    }

    fn names(targets: &[Target]) -> Vec<String> {
        let mut v: Vec<String> = targets
            .iter()
            .map(|t| t.session.client_id.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let a = Arc::new(Session::new(Arc::from("a")));
        let b = Arc::new(Session::new(Arc::from("b")));
        let mut router = Router::default();
        router.subscribe("sport/#", None, &a, opts(0, None));
        router.subscribe("sport/+/player1", None, &b, opts(1, None));
        router.subscribe("#", None, &b, opts(0, None));
        assert_eq!(names(&router.matches("sport")), ["a", "b"]);
        assert_eq!(names(&router.matches("sport/tennis/player1")), ["a", "b"]);
        assert_eq!(names(&router.matches("$SYS/x")), Vec::<String>::new());
        assert_eq!(router.len(), 3);
        assert!(router.unsubscribe("sport/#", None, &a));
        assert!(!router.unsubscribe("sport/#", None, &a));
        assert_eq!(names(&router.matches("sport")), ["b"]);
    }

    #[test]
    fn overlapping_subscriptions_give_one_target_at_the_highest_qos() {
        let a = Arc::new(Session::new(Arc::from("a")));
        let mut router = Router::default();
        router.subscribe("t/#", None, &a, opts(0, Some(1)));
        router.subscribe("t/x", None, &a, opts(2, Some(2)));
        let targets = router.matches("t/x");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].qos, 2);
        let mut ids = targets[0].sub_ids.clone();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn a_shared_group_gets_one_copy() {
        let a = Arc::new(Session::new(Arc::from("a")));
        let b = Arc::new(Session::new(Arc::from("b")));
        let mut router = Router::default();
        router.subscribe("job/+", Some("g"), &a, opts(1, None));
        router.subscribe("job/+", Some("g"), &b, opts(1, None));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let targets = router.matches("job/1");
            assert_eq!(targets.len(), 1);
            seen.push(targets[0].session.client_id.to_string());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 2, "round robin reaches both members");
    }
}
