//! MQTT over WebSocket: a WebSocket client (rumqttc) publishes and subscribes, messages cross
//! between WebSocket and TCP clients, and the handshake and framing rules of chapter 6 hold,
//! checked with a hand-made WebSocket client over a plain `TcpStream`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};

use crate::common::raw::{self, CONNACK, Connect, PINGRESP, SUBACK};
use crate::common::ws::{ACCEPT, RawWs, header};
use crate::common::{Daemon, WAIT};

fn ws_options(daemon: &Daemon, client_id: &str) -> MqttOptions {
    let ws = daemon.ws.expect("the daemon serves WebSocket");
    // For WebSocket transports rumqttc takes the whole URL as the host; the port is ignored.
    let url = format!("ws://{ws}{}", daemon.ws_path);
    let mut opts = MqttOptions::new(client_id, url, ws.port());
    opts.set_transport(Transport::Ws);
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

/// Poll until the SUBACK.
async fn until_suback(events: &mut EventLoop) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.expect("poll") {
                return ack;
            }
        }
    })
    .await
    .expect("SUBACK within the wait");
}

/// Poll until the next PUBLISH: (topic, payload).
async fn next_publish(events: &mut EventLoop) -> (String, Vec<u8>) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("poll") {
                return (p.topic, p.payload.to_vec());
            }
        }
    })
    .await
    .expect("PUBLISH within the wait")
}

#[tokio::test]
async fn websocket_client_publishes_and_subscribes() {
    let daemon = Daemon::start();
    let (client, mut events) = AsyncClient::new(ws_options(&daemon, "ws-loop"), 10);
    client.subscribe("ws/echo", QoS::AtLeastOnce).await.unwrap();
    until_suback(&mut events).await;
    client
        .publish("ws/echo", QoS::AtLeastOnce, false, "over websocket")
        .await
        .unwrap();
    let (topic, payload) = next_publish(&mut events).await;
    assert_eq!(topic, "ws/echo");
    assert_eq!(payload, b"over websocket");

    // Retained messages reach WebSocket subscribers too.
    client
        .publish("ws/kept", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    let (late, mut late_events) = AsyncClient::new(ws_options(&daemon, "ws-late"), 10);
    late.subscribe("ws/kept", QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let (topic, payload) = next_publish(&mut late_events).await;
    assert_eq!(topic, "ws/kept");
    assert_eq!(payload, b"kept");
}

#[tokio::test]
async fn messages_cross_between_websocket_and_tcp() {
    let daemon = Daemon::start();
    let (ws, mut ws_events) = AsyncClient::new(ws_options(&daemon, "ws-side"), 10);
    let (tcp, mut tcp_events) =
        AsyncClient::new(MqttOptions::new("tcp-side", "127.0.0.1", daemon.port()), 10);
    ws.subscribe("to/ws", QoS::ExactlyOnce).await.unwrap();
    tcp.subscribe("to/tcp", QoS::ExactlyOnce).await.unwrap();
    until_suback(&mut ws_events).await;
    until_suback(&mut tcp_events).await;

    tcp.publish("to/ws", QoS::ExactlyOnce, false, "from tcp")
        .await
        .unwrap();
    ws.publish("to/tcp", QoS::ExactlyOnce, false, "from ws")
        .await
        .unwrap();
    let (to_ws, to_tcp) = tokio::join!(next_publish(&mut ws_events), next_publish(&mut tcp_events));
    assert_eq!(to_ws, ("to/ws".to_string(), b"from tcp".to_vec()));
    assert_eq!(to_tcp, ("to/tcp".to_string(), b"from ws".to_vec()));
}

/// An idle WebSocket connection parks like a TCP one (it waits without a task of its own) and
/// still gets what is published to it.
#[tokio::test]
async fn a_parked_websocket_connection_still_gets_messages() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let (ws, mut ws_events) = AsyncClient::new(ws_options(&daemon, "ws-parked"), 10);
    ws.subscribe("to/parked", QoS::AtLeastOnce).await.unwrap();
    until_suback(&mut ws_events).await;
    let mqtt = daemon.mqtt;
    tokio::task::spawn_blocking(move || {
        crate::common::wait_parked(mqtt, 1);
        let mut publisher = raw::Client::session(mqtt, &Connect::v3("tcp-to-parked"));
        assert_eq!(publisher.publish("to/parked", 1, false, b"wake up"), 0);
    })
    .await
    .expect("the publisher");
    assert_eq!(
        next_publish(&mut ws_events).await,
        ("to/parked".to_string(), b"wake up".to_vec())
    );
}

/// The handshake selects the `mqtt` subprotocol [MQTT-6.0.0-4] and carries MQTT in binary
/// frames [MQTT-6.0.0-1].
#[test]
fn handshake_selects_the_mqtt_subprotocol() {
    let daemon = Daemon::start();
    let (mut ws, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
    assert_eq!(
        header(&head, "Sec-WebSocket-Protocol"),
        Some("mqtt"),
        "response: {head}"
    );
    assert_eq!(
        header(&head, "Sec-WebSocket-Accept"),
        Some(ACCEPT),
        "response: {head}"
    );

    ws.send_frame(0x2, &Connect::v3("raw-ws").encode());
    let connack = ws.recv_mqtt();
    assert_eq!(connack.kind, CONNACK);
    assert_eq!(connack.code(), 0);
}

/// A request for another path is refused and not upgraded.
#[test]
fn handshake_on_a_wrong_path_is_refused() {
    let daemon = Daemon::start();
    let (_ws, head) = RawWs::upgrade(daemon.ws.unwrap(), "/not-mqtt", Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 404"), "response: {head}");

    // The right path still works afterwards.
    let (_ws, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
}

/// MQTT packets need not align with WebSocket frames [MQTT-6.0.0-2]: a CONNECT split over two
/// frames, then a SUBSCRIBE and a PINGREQ in one frame.
#[test]
fn packets_need_not_align_with_frames() {
    let daemon = Daemon::start();
    let (mut ws, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
    let connect = Connect::v5("split-ws").encode();
    let (first, second) = connect.split_at(5);
    ws.send_frame(0x2, first);
    ws.send_frame(0x2, second);
    let connack = ws.recv_mqtt();
    assert_eq!((connack.kind, connack.code()), (CONNACK, 0));

    let mut both = raw::subscribe(true, 7, &[("split/#", 1)]);
    both.extend([0xC0, 0x00]); // PINGREQ
    ws.send_frame(0x2, &both);
    let suback = ws.recv_mqtt();
    assert_eq!(suback.kind, SUBACK);
    assert_eq!(suback.packet_id(), 7);
    assert_eq!(ws.recv_mqtt().kind, PINGRESP);
}

/// A text frame is not MQTT: the server closes the connection [MQTT-6.0.0-1].
#[test]
fn a_text_frame_closes_the_connection() {
    let daemon = Daemon::start();
    let (mut ws, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
    ws.send_frame(0x2, &Connect::v3("texty").encode());
    assert_eq!(ws.recv_mqtt().kind, CONNACK);
    ws.send_frame(0x1, b"hello");
    // Only a close frame (opcode 8) may come before the connection ends.
    while let Some((opcode, payload)) = ws.recv_frame() {
        assert_eq!(
            opcode, 0x8,
            "expected the connection to close, got {payload:?}"
        );
    }
}
