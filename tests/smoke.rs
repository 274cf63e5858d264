//! The smallest end-to-end check: a v3.1.1 and a v5 client exchange a message through the daemon.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::common::{Daemon, WAIT};

#[tokio::test]
async fn v311_publish_reaches_subscriber() {
    let daemon = Daemon::start();
    let mut opts = MqttOptions::new("smoke-sub", "127.0.0.1", daemon.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = AsyncClient::new(opts, 10);
    sub.subscribe("smoke/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = AsyncClient::new(
        MqttOptions::new("smoke-pub", "127.0.0.1", daemon.port()),
        10,
    );
    let (pub_client, mut pub_loop) = publisher;
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });

    let received = tokio::time::timeout(WAIT, async {
        loop {
            match sub_loop.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    pub_client
                        .publish("smoke/a", QoS::AtLeastOnce, false, "hello")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message within the wait");
    assert_eq!(received.topic, "smoke/a");
    assert_eq!(&received.payload[..], b"hello");
    assert_eq!(received.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn v5_publish_reaches_subscriber() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let daemon = Daemon::start();
    let (sub, mut sub_loop) =
        Client5::new(Options5::new("smoke5-sub", "127.0.0.1", daemon.port()), 10);
    sub.subscribe("smoke5/#", QoS5::ExactlyOnce).await.unwrap();
    let (publisher, mut pub_loop) =
        Client5::new(Options5::new("smoke5-pub", "127.0.0.1", daemon.port()), 10);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });

    let received = tokio::time::timeout(WAIT, async {
        loop {
            match sub_loop.poll().await.unwrap() {
                Event5::Incoming(Packet5::SubAck(_)) => {
                    publisher
                        .publish("smoke5/a", QoS5::ExactlyOnce, false, "hi")
                        .await
                        .unwrap();
                }
                Event5::Incoming(Packet5::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message within the wait");
    assert_eq!(&received.topic[..], b"smoke5/a");
    assert_eq!(&received.payload[..], b"hi");
}
