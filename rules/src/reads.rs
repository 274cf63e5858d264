//! Which of the event's fields a rule's scripts read, and under which name (`event.topic`, `msg.payload.x`), found
//! once at load so that a run builds only those: the event map is built for every run, and a
//! payload parsed for a script that never looks at it is most of a small rule's cost.

use rhai::{AST, ASTNode, Expr, Stmt};

/// The names a script can read the event by.
const EVENT_NAMES: [&str; 2] = ["event", "msg"];

/// The event fields a rule reads: `All` when a script uses the event in any way other than
/// reading a named field (passes it on, iterates it, indexes it by a computed key, `eval`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    All,
    /// Sorted, without repeats.
    Only(Vec<Box<str>>),
}

impl Reads {
    /// Whether the field `name` is read.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Reads::All => true,
            Reads::Only(names) => names.binary_search_by(|n| (**n).cmp(name)).is_ok(),
        }
    }

    /// The fields either reads (what one event map serves both).
    pub fn union(&self, other: &Reads) -> Reads {
        match (self, other) {
            (Reads::Only(a), Reads::Only(b)) => {
                let mut names: Vec<Box<str>> = a.iter().chain(b).cloned().collect();
                names.sort_unstable();
                names.dedup();
                Reads::Only(names)
            }
            _ => Reads::All,
        }
    }
}

/// How a rule's scripts use the event: which fields they read, and whether by the name `msg`
/// (only then is `msg` set for a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventUse {
    pub fields: Reads,
    pub as_msg: bool,
}

/// How `asts` use the event, under either of its names (one walk of each, at load).
pub fn event_use<'a>(asts: impl IntoIterator<Item = &'a AST>) -> EventUse {
    let mut names: Vec<Box<str>> = Vec::new();
    let (mut all, mut as_msg) = (false, false);
    for ast in asts {
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Expr(Expr::Variable(var, ..)))
                    if EVENT_NAMES.contains(&var.1.as_str()) =>
                {
                    as_msg |= var.1 == "msg";
                    let parent = path.len().checked_sub(2).and_then(|i| path.get(i));
                    match parent.and_then(|p| field_read(p, path.last())) {
                        Some(name) => names.push(name.into()),
                        None => all = true,
                    }
                }
                // A script evaluated at run time can read anything.
                Some(
                    ASTNode::Expr(Expr::FnCall(call, ..) | Expr::MethodCall(call, ..))
                    | ASTNode::Stmt(Stmt::FnCall(call, ..)),
                ) if call.name == "eval" => {
                    all = true;
                }
                _ => {}
            }
            true
        });
    }
    let fields = if all {
        Reads::All
    } else {
        names.sort_unstable();
        names.dedup();
        Reads::Only(names)
    };
    EventUse { fields, as_msg }
}

/// The field `parent` reads of the variable `var` when it is `var.field...` or
/// `var["field"]...`; `None` for any other use.
fn field_read<'a>(parent: &'a ASTNode<'_>, var: Option<&ASTNode<'_>>) -> Option<&'a str> {
    let ASTNode::Expr(Expr::Dot(x, ..) | Expr::Index(x, ..)) = parent else {
        return None;
    };
    // The variable must be what is read from, not the index or the property.
    let is_lhs = matches!((var, &x.lhs), (Some(ASTNode::Expr(v)), lhs) if std::ptr::eq(*v, lhs));
    if !is_lhs {
        return None;
    }
    // `a.b.c` is `a.(b.c)`: the field read of `a` is the first of the right-hand side.
    let first = match &x.rhs {
        Expr::Dot(inner, ..) | Expr::Index(inner, ..) => &inner.lhs,
        rhs => rhs,
    };
    match (parent, first) {
        (ASTNode::Expr(Expr::Dot(..)), Expr::Property(p, ..)) => Some(p.2.as_str()),
        (ASTNode::Expr(Expr::Index(..)), Expr::StringConstant(name, ..)) => Some(name.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(script: &str) -> Reads {
        let ast = rhai::Engine::new().compile(script).expect("compiles");
        event_use([&ast]).fields
    }

    fn only(names: &[&str]) -> Reads {
        Reads::Only(names.iter().map(|n| (*n).into()).collect())
    }

    #[test]
    fn named_fields_are_found_under_both_names() {
        assert_eq!(reads("let t = event.topic;"), only(&["topic"]));
        assert_eq!(
            reads("if msg.payload.on { publish(event.topic, event.chain.id) }"),
            only(&["chain", "payload", "topic"])
        );
        assert_eq!(
            reads(r#"event["text"].len() + event.by.len()"#),
            only(&["by", "text"])
        );
        assert_eq!(reads("event.state.temp > 20"), only(&["state"]));
        assert_eq!(reads("log(\"hi\")"), only(&[]));
        assert_eq!(reads("fn f(e) { e.x } f(1)"), only(&[]));
    }

    #[test]
    fn msg_is_set_only_for_scripts_that_name_it() {
        let ast = |s: &str| rhai::Engine::new().compile(s).expect("compiles");
        let (event, msg) = (ast("event.topic"), ast("log(msg)"));
        assert!(!event_use([&event]).as_msg);
        assert!(event_use([&event, &msg]).as_msg);
        assert_eq!(event_use([&event, &msg]).fields, Reads::All);
    }

    #[test]
    fn any_other_use_reads_everything() {
        assert_eq!(reads("let e = event; e.topic"), Reads::All);
        assert_eq!(reads("log(event)"), Reads::All);
        assert_eq!(reads("for k in event.keys() { log(k) }"), Reads::All);
        assert_eq!(reads("let k = \"topic\"; event[k]"), Reads::All);
        assert_eq!(reads("eval(\"event.topic\")"), Reads::All);
        assert_eq!(reads("let f = || event.topic; f.call()"), Reads::All);
    }

    #[test]
    fn a_union_serves_both() {
        let (a, b) = (only(&["a", "c"]), only(&["b", "c"]));
        assert_eq!(a.union(&b), only(&["a", "b", "c"]));
        assert!(a.union(&b).has("b") && !a.has("b"));
        assert_eq!(a.union(&Reads::All), Reads::All);
    }
}
