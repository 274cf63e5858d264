//! The pump: the task that polls rumqttc's event loop and hands every event to the core, in
//! order, waiting with backoff after a failure.

use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{ConnectionError, Event as MqttEvent, EventLoop};
use tokio::sync::mpsc;

use super::Input;
use crate::options::Options;

/// The pump: polls rumqttc's event loop, hands every event to the core, waits with backoff
/// after a failure. A refused first CONNECT ends it (bad credentials do not get better).
pub(crate) fn spawn_pump(
    mut el: EventLoop,
    opts: &Options,
    to_core: mpsc::UnboundedSender<Input>,
) -> tokio::task::JoinHandle<()> {
    let backoff = opts.backoff;
    tokio::spawn(async move {
        let mut failures = 0u32;
        let mut connected_once = false;
        loop {
            match el.poll().await {
                Ok(event) => {
                    if matches!(event, MqttEvent::Incoming(Packet::ConnAck(_))) {
                        failures = 0;
                        connected_once = true;
                    }
                    let bye = matches!(event, MqttEvent::Outgoing(Outgoing::Disconnect));
                    if to_core.send(Input::Mqtt(Box::new(event))).is_err() || bye {
                        return;
                    }
                }
                Err(err) => {
                    let refused = matches!(err, ConnectionError::ConnectionRefused(_));
                    let retry_in = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    let reason = describe(&err);
                    if to_core
                        .send(Input::Lost {
                            reason,
                            retry_in: if refused && !connected_once {
                                Duration::ZERO
                            } else {
                                retry_in
                            },
                        })
                        .is_err()
                        || (refused && !connected_once)
                    {
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    })
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => "bad user name or password".into(),
            ConnectReturnCode::NotAuthorized => "not authorized".into(),
            other => format!("refused: {other:?}"),
        },
        other => other.to_string(),
    }
}
