//! `EngineWorld` over a real engine (store, message log, IM world, things world): what a script's
//! queries answer.

use std::sync::Arc;

use mqtter_engine::accounts::AccountKind;
use mqtter_engine::im::{Im, ImConfig, MessageLog};
use mqtter_engine::things::{Things, ThingsConfig};
use mqtter_engine::{SledStore, Store};
use mqtter_rules::world::{EngineWorld, World};

struct Engine {
    im: Arc<Im>,
    things: Things,
}

#[test]
fn queries_answer_from_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let log = Arc::new(MessageLog::open(&dir.path().join("messages")).unwrap());
    let im = Arc::new(Im::open(store.clone(), log, ImConfig::default()).unwrap());
    for (id, kind) in [
        ("alice", AccountKind::Person),
        ("bob", AccountKind::Person),
        ("door", AccountKind::Thing),
        ("lamp", AccountKind::Thing),
    ] {
        im.account_added(id, kind);
    }
    im.define_friends("alice", "bob", 1).unwrap();
    im.define_group("family", "alice", &["bob".into()], None, false, 1)
        .unwrap();
    let things = Things::open(store, im.clone(), ThingsConfig::default()).unwrap();
    things.define_owner("door", "alice", 1).unwrap();
    things.define_link("door", "lamp", 1).unwrap();
    let engine = Arc::new(Engine { im, things });
    let world = EngineWorld::new(
        Arc::downgrade(&engine),
        |e| &e.im,
        Some(|e: &Engine| &e.things),
        |_, account| {
            if account == "alice" {
                "online".into()
            } else {
                "offline".into()
            }
        },
    );
    assert!(world.account_exists("bob") && !world.account_exists("carol"));
    assert!(world.is_thing("door") && !world.is_thing("alice"));
    assert!(world.group_exists("family"));
    assert_eq!(world.owner_of("door").as_deref(), Some("alice"));
    assert_eq!(world.bound_to("alice"), ["door"]);
    assert_eq!(world.linked("door"), ["lamp"]);
    assert_eq!(world.friends("alice"), ["bob"]);
    let mut members = world.members("family");
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    assert_eq!(world.presence("alice"), "online");
    assert_eq!(world.state("door"), None);
    drop(engine);
    assert!(world.friends("alice").is_empty());
    assert_eq!(world.presence("alice"), "offline");
}
