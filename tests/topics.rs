//! Topic matching end to end: the `+` and `#` wildcards as the spec's examples use them, `$`
//! topics kept from filters that start with a wildcard, and shared subscriptions
//! (`$share/GROUP/FILTER`) for v5 and v3.1.1 clients.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clients::{QUIET, v3, v5};
use crate::common::Daemon;

/// Subscribe to `filter`, publish every topic of `topics` and then `marker` (which the filter must
/// match), and return the topics received before the marker, in order.
async fn received_through(
    daemon: &Daemon,
    id: &str,
    filter: &str,
    topics: &[&str],
    marker: &str,
) -> Vec<String> {
    use v3::QoS;
    let mut sub = v3::connect(v3::options(daemon, &format!("{id}-sub"))).await;
    sub.subscribe(filter, QoS::AtLeastOnce).await;
    let mut publisher = v3::connect(v3::options(daemon, &format!("{id}-pub"))).await;
    for topic in topics {
        publisher.publish(topic, QoS::AtLeastOnce, false, "x").await;
    }
    publisher
        .publish(marker, QoS::AtLeastOnce, false, "marker")
        .await;
    let mut got = Vec::new();
    loop {
        let p = sub.next_publish().await;
        if &p.payload[..] == b"marker" {
            assert_eq!(p.topic, marker);
            return got;
        }
        got.push(p.topic);
    }
}

/// [MQTT-4.7.1-3] and the examples of section 4.7.1.3: `+` matches exactly one level, an empty
/// one included, and can stand at any level.
#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level() {
    let daemon = Daemon::start();
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        (
            "sport/tennis/+",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis",
                "sport/tennis/player2",
            ],
            &["sport/tennis/player1", "sport/tennis/player2"],
            "sport/tennis/end",
        ),
        (
            "sport/+",
            &["sport", "sport/", "sport/x/y"],
            &["sport/"],
            "sport/end",
        ),
        ("+/+", &["/finance", "a", "a/b/c"], &["/finance"], "end/end"),
        ("/+", &["/finance", "finance/x"], &["/finance"], "/end"),
        ("+", &["/finance", "a/b", "finance"], &["finance"], "end"),
        (
            "sport/+/player1",
            &[
                "sport/tennis/player1",
                "sport/a/b/player1",
                "sport//player1",
            ],
            &["sport/tennis/player1", "sport//player1"],
            "sport/end/player1",
        ),
    ];
    for (i, (filter, published, expected, marker)) in cases.iter().enumerate() {
        let got = received_through(&daemon, &format!("plus{i}"), filter, published, marker).await;
        assert_eq!(&got, expected, "filter {filter:?}");
    }
}

/// [MQTT-4.7.1-2] and the examples of section 4.7.1.2: `#` matches the parent level and any number
/// of child levels; `#` alone matches every topic not starting with `$`.
#[tokio::test]
async fn multi_level_wildcard_matches_the_parent_and_every_child() {
    let daemon = Daemon::start();
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        (
            "sport/tennis/player1/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
                "sport/tennis/player2",
                "sport/tennis/player12",
            ],
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
            "sport/tennis/player1/end",
        ),
        (
            "sport/#",
            &["sport", "sport/", "sports", "sport/a/b/c"],
            &["sport", "sport/", "sport/a/b/c"],
            "sport/end",
        ),
        ("#", &["a", "/", "a/b/c"], &["a", "/", "a/b/c"], "end"),
    ];
    for (i, (filter, published, expected, marker)) in cases.iter().enumerate() {
        let got = received_through(&daemon, &format!("hash{i}"), filter, published, marker).await;
        assert_eq!(&got, expected, "filter {filter:?}");
    }
}

/// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topics starting with `$`: the
/// broker's own retained `$SYS/...` messages and a client's `$app/...` ones reach only filters
/// that name the `$` level.
#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    use v3::QoS;
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));

    let mut sys = v3::connect(v3::options(&daemon, "dollar-sys")).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let got = sys.next_publish().await;
    assert!(got.topic.starts_with("$SYS/broker/"), "{}", got.topic);

    let mut everything = v3::connect(v3::options(&daemon, "dollar-all")).await;
    everything.subscribe("#", QoS::AtLeastOnce).await;
    let mut plus = v3::connect(v3::options(&daemon, "dollar-plus")).await;
    plus.subscribe("+/broker/#", QoS::AtLeastOnce).await;
    let mut app = v3::connect(v3::options(&daemon, "dollar-app")).await;
    app.subscribe("$app/#", QoS::AtLeastOnce).await;

    let mut publisher = v3::connect(v3::options(&daemon, "dollar-pub")).await;
    publisher
        .publish("$app/x", QoS::AtLeastOnce, false, "dollar")
        .await;
    // A $SYS round comes every second; let one go by before the markers.
    tokio::time::sleep(QUIET + QUIET).await;
    publisher
        .publish("x/broker/marker", QoS::AtLeastOnce, false, "marker")
        .await;

    let got = app.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("$app/x", &b"dollar"[..])
    );
    for (name, sub) in [("#", &mut everything), ("+/broker/#", &mut plus)] {
        let got = sub.next_publish().await;
        assert_eq!(got.topic, "x/broker/marker", "{name} matched a $ topic");
    }
}

/// Collect `total` messages over the members of a shared subscription, checking none comes
/// twice or beyond `total`; how many each member got. `next(member, wait)` is a member's next
/// payload within `wait`.
async fn split_over_members<F>(members: usize, total: usize, mut next: F) -> BTreeMap<usize, usize>
where
    F: AsyncFnMut(usize, Duration) -> Option<String>,
{
    let mut seen = std::collections::BTreeSet::new();
    let mut per_member = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    while seen.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} messages reached the group",
            seen.len()
        );
        for member in 0..members {
            if let Some(payload) = next(member, Duration::from_millis(50)).await {
                assert!(seen.insert(payload.clone()), "{payload} delivered twice");
                *per_member.entry(member).or_insert(0) += 1;
            }
        }
    }
    for member in 0..members {
        assert!(
            next(member, QUIET).await.is_none(),
            "member {member} got a message beyond the {total} published"
        );
    }
    per_member
}

/// v5 section 4.8.2: a shared subscription `$share/GROUP/FILTER` delivers each message to one
/// member of the group; with two members online both get some. A plain subscription to the same
/// filter still gets every message.
#[tokio::test]
async fn v5_shared_subscription_gives_each_message_to_one_member() {
    use v5::QoS;
    const TOTAL: usize = 20;
    let daemon = Daemon::start();
    let mut members = Vec::new();
    for i in 0..2 {
        let mut member = v5::connect(v5::options(&daemon, &format!("share5-{i}"))).await;
        assert_eq!(
            member
                .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
                .await,
            v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        members.push(member);
    }
    let mut plain = v5::connect(v5::options(&daemon, "share5-plain")).await;
    plain.subscribe("jobs/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(&daemon, "share5-pub")).await;
    for i in 0..TOTAL {
        publisher
            .publish(
                &format!("jobs/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("job{i}"),
            )
            .await;
    }
    for i in 0..TOTAL {
        assert_eq!(
            String::from_utf8_lossy(&plain.next_publish().await.payload),
            format!("job{i}")
        );
    }
    let counts = split_over_members(2, TOTAL, async |m, wait| {
        members[m]
            .publish_within(wait)
            .await
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
    })
    .await;
    assert_eq!(counts.len(), 2, "both members get some: {counts:?}");
}

/// The same for v3.1.1 clients, which use `$share/GROUP/FILTER` as Mosquitto allows.
#[tokio::test]
async fn v311_shared_subscription_gives_each_message_to_one_member() {
    use v3::QoS;
    const TOTAL: usize = 20;
    let daemon = Daemon::start();
    let mut members = Vec::new();
    for i in 0..2 {
        let mut member = v3::connect(v3::options(&daemon, &format!("share3-{i}"))).await;
        member
            .subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
            .await;
        members.push(member);
    }
    let mut publisher = v3::connect(v3::options(&daemon, "share3-pub")).await;
    for i in 0..TOTAL {
        publisher
            .publish(
                &format!("jobs/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("job{i}"),
            )
            .await;
    }
    let counts = split_over_members(2, TOTAL, async |m, wait| {
        members[m]
            .publish_within(wait)
            .await
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
    })
    .await;
    assert_eq!(counts.len(), 2, "both members get some: {counts:?}");
}
