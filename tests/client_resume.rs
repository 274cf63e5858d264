//! The client library across reconnects: a connection dropped in the middle of a stream, and a
//! daemon restarted under it, lose nothing, duplicate nothing and keep the order; history is
//! read offline from the local cache, and a reconnect fetches only the gap.

use mqtter_client::{Client, ConvId, Message, Range, Target};

use crate::common::im::{World, friends, persons};
use crate::common::person::{Events, connect, options, person};
use crate::common::proxy::Proxy;

fn pair() -> String {
    format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    )
}

fn texts(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.text().unwrap().to_owned()).collect()
}

/// alice sends `n` numbered messages to bob, one after the other, each until stored.
fn stream(alice: &Client, from: usize, n: usize) -> tokio::task::JoinHandle<()> {
    let alice = alice.clone();
    tokio::spawn(async move {
        for i in from..from + n {
            alice
                .send_text(&Target::Person("bob".into()), &format!("m{i}"))
                .await
                .unwrap_or_else(|e| panic!("m{i} not stored: {e}"));
        }
    })
}

/// Wait until bob has `n` messages, then return them.
async fn take(b: &mut Events, n: usize) -> Vec<Message> {
    b.messages(n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_and_a_restart_lose_and_repeat_nothing() {
    let mut world = World::with(&pair(), "");
    let dir = tempfile::tempdir().unwrap();
    let a_proxy = Proxy::start(world.daemon.mqtt).await;
    let b_proxy = Proxy::start(world.daemon.mqtt).await;
    let (alice, _a) =
        connect(options(a_proxy.port(), "alice", "laptop").cache_dir(dir.path())).await;
    let (bob, mut b) = connect(options(b_proxy.port(), "bob", "phone").cache_dir(dir.path())).await;

    let sending = stream(&alice, 0, 300);
    let mut got = take(&mut b, 100).await;
    // bob's connection drops in the middle of the stream.
    b_proxy.cut();
    got.extend(take(&mut b, 100).await);
    // The daemon stops and starts again (on a new port) under both.
    world.daemon.terminate();
    world.daemon.restart();
    a_proxy.retarget(world.daemon.mqtt);
    b_proxy.retarget(world.daemon.mqtt);
    a_proxy.cut();
    b_proxy.cut();
    got.extend(take(&mut b, 100).await);
    sending.await.unwrap();
    // One more: it comes right after the 300, so nothing was repeated before it.
    stream(&alice, 300, 1).await.unwrap();
    got.push(b.message().await);

    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=301).collect::<Vec<u64>>(),
        "no gap, no duplicate, in order"
    );
    let want: Vec<String> = (0..301).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&got), want);
    assert!(bob.stats().connections() >= 3, "bob reconnected twice");
    assert!(alice.stats().connections() >= 2, "alice reconnected");
    let conv = ConvId::direct("alice", "bob");
    assert_eq!(bob.cache().count(&conv).unwrap(), 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_offline_from_the_cache_then_only_the_gap() {
    let world = World::with(&pair(), "");
    let dir = tempfile::tempdir().unwrap();
    let conv = ConvId::direct("alice", "bob");
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    stream(&alice, 0, 20).await.unwrap();
    take(&mut b, 20).await;
    bob.close().await;
    drop((bob, b));

    // Offline: the history is there without a server.
    let opts = options(world.port(), "bob", "phone").cache_dir(dir.path());
    {
        let cache = Client::open_cache(&opts).unwrap();
        let page = cache.history(&conv, Range::Newest, 100).unwrap();
        assert_eq!(page.len(), 20);
        assert_eq!(page[19].text(), Some("m19"));
        assert_eq!(cache.mark(&conv).unwrap(), Some(20));
    }

    // While bob is away, 5 more; back online only those 5 arrive, none fetched again.
    stream(&alice, 20, 5).await.unwrap();
    let (bob, b) = connect(opts).await;
    let synced = b.all_messages();
    assert_eq!(
        synced.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [21, 22, 23, 24, 25]
    );
    assert_eq!(bob.stats().fetched(), 0);
    assert_eq!(bob.stats().duplicates(), 0);
    assert_eq!(
        bob.cached_history(&conv, Range::Newest, 100).unwrap().len(),
        25
    );
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_past_the_sync_limit_is_paged_in_order() {
    let world = World::with(&pair(), "[im]\nsync_max_per_conv = 3\n");
    let dir = tempfile::tempdir().unwrap();
    let conv = ConvId::direct("alice", "bob");
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    stream(&alice, 0, 4).await.unwrap();
    take(&mut b, 4).await;
    bob.close().await;
    drop((bob, b));

    stream(&alice, 4, 150).await.unwrap();
    let (bob, b) = person(world.port(), "bob", "phone", dir.path()).await;
    let synced = b.all_messages();
    assert_eq!(
        synced.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (5..=154).collect::<Vec<u64>>()
    );
    assert_eq!(
        bob.stats().fetched(),
        147,
        "only what the sync did not carry was fetched"
    );
    assert_eq!(bob.stats().duplicates(), 0);
    assert_eq!(bob.cache().count(&conv).unwrap(), 154);
    bob.close().await;
}
