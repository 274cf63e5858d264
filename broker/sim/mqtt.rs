//! One plain MQTT 5 connection of the simulator (rumqttc): a thing actor's, a person's for
//! plain topics, the observer of plain topics. Publishes wait for their PUBACK, so a step is
//! done when the broker has taken it, and a refusal (its reason code) fails the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{Mutex, Notify, oneshot};

/// Where and as whom a connection logs in.
#[derive(Clone, Debug)]
pub struct Login {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Username and password; `None`: anonymous.
    pub credentials: Option<(String, String)>,
    /// Ask for no IM or things sync at CONNECT (`im-sync: false`).
    pub no_sync: bool,
}

/// A message the connection received.
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub user_properties: Vec<(String, String)>,
    /// The retain flag: a retained message a SUBSCRIBE sent (or one published retained).
    pub retain: bool,
}

type Handler = Box<dyn Fn(Incoming) + Send + Sync>;

/// A connected client; dropping it ends the connection's task.
pub struct Conn {
    client: AsyncClient,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// PUBACKs (and SUBACKs) seen, and the reason code of the last PUBACK.
    acks: Arc<Acks>,
    /// One publish in flight at a time: its PUBACK is the next one.
    one: Mutex<()>,
}

#[derive(Default)]
struct Acks {
    pubacks: AtomicU64,
    last_code: AtomicU64,
    subacks: AtomicU64,
    last_sub_code: AtomicU64,
    changed: Notify,
}

/// How long a CONNECT, PUBLISH or SUBSCRIBE may take before the step fails (real time).
pub const PATIENCE: Duration = Duration::from_secs(20);

impl Conn {
    /// Connect and wait for a successful CONNACK; `on_publish` sees every message received.
    pub async fn connect(
        login: &Login,
        on_publish: impl Fn(Incoming) + Send + Sync + 'static,
    ) -> anyhow::Result<Conn> {
        let mut opts = MqttOptions::new(login.client_id.clone(), login.host.clone(), login.port);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_clean_start(true);
        if let Some((user, password)) = &login.credentials {
            opts.set_credentials(user.clone(), password.clone());
        }
        if login.no_sync {
            opts.set_user_properties(vec![("im-sync".into(), "false".into())]);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let acks = Arc::new(Acks::default());
        let (connected, connack) = oneshot::channel::<Result<(), String>>();
        let handler: Handler = Box::new(on_publish);
        let seen = acks.clone();
        let task = tokio::spawn(async move {
            let mut connected = Some(connected);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let result = if ack.code == ConnectReturnCode::Success {
                            Ok(())
                        } else {
                            Err(format!("CONNACK {:?}", ack.code))
                        };
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(result);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let user_properties = p
                            .properties
                            .as_ref()
                            .map(|props| props.user_properties.clone())
                            .unwrap_or_default();
                        handler(Incoming {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                            user_properties,
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        seen.last_code
                            .store(reason_code(&ack.reason), Ordering::Release);
                        seen.pubacks.fetch_add(1, Ordering::AcqRel);
                        seen.changed.notify_waiters();
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused = ack
                            .return_codes
                            .first()
                            .is_some_and(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                        let code = if refused { 0x80 } else { 0 };
                        seen.last_sub_code.store(code, Ordering::Release);
                        seen.subacks.fetch_add(1, Ordering::AcqRel);
                        seen.changed.notify_waiters();
                    }
                    // Our DISCONNECT is written: the connection is over.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(err) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Err(err.to_string()));
                            return;
                        }
                        // Connected once: the connection was lost (or closed by us); rumqttc
                        // connects again on the next poll, after a moment.
                        tracing::debug!(cause = %err, "simulator connection lost");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let conn = Conn {
            client,
            task: std::sync::Mutex::new(Some(task)),
            acks,
            one: Mutex::new(()),
        };
        match tokio::time::timeout(PATIENCE, connack).await {
            Ok(Ok(Ok(()))) => Ok(conn),
            Ok(Ok(Err(reason))) => bail!("{} cannot connect: {reason}", login.client_id),
            Ok(Err(_)) => bail!("{} cannot connect", login.client_id),
            Err(_) => bail!("{} got no CONNACK in {PATIENCE:?}", login.client_id),
        }
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK; a reason code of 0x80 or more is an error.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let _one = self.one.lock().await;
        let before = self.acks.pubacks.load(Ordering::Acquire);
        let props = PublishProperties {
            user_properties,
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, props)
            .await
            .map_err(|err| anyhow!("cannot publish on {topic}: {err}"))?;
        self.wait(|acks| acks.pubacks.load(Ordering::Acquire) > before)
            .await
            .with_context(|| format!("no PUBACK for {topic}"))?;
        let code = self.acks.last_code.load(Ordering::Acquire);
        if code >= 0x80 {
            bail!("the broker refused the PUBLISH on {topic}: reason code 0x{code:02x}");
        }
        Ok(())
    }

    /// SUBSCRIBE one filter at QoS 1 and wait for its SUBACK; a refusal is an error.
    pub async fn subscribe(&self, filter: &str) -> anyhow::Result<()> {
        let _one = self.one.lock().await;
        let before = self.acks.subacks.load(Ordering::Acquire);
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|err| anyhow!("cannot subscribe to {filter}: {err}"))?;
        self.wait(|acks| acks.subacks.load(Ordering::Acquire) > before)
            .await
            .with_context(|| format!("no SUBACK for {filter}"))?;
        let code = self.acks.last_sub_code.load(Ordering::Acquire);
        if code >= 0x80 {
            bail!("the broker refused the SUBSCRIBE to {filter}: reason code 0x{code:02x}");
        }
        Ok(())
    }

    async fn wait(&self, done: impl Fn(&Acks) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.acks.changed.notified();
            if done(&self.acks) {
                return Ok(());
            }
            // Looked at again now and then: a notification may come between the check and
            // the wait.
            let wake = tokio::time::Instant::now() + Duration::from_millis(50);
            if tokio::time::Instant::now() >= deadline {
                bail!("the broker did not answer in {PATIENCE:?}");
            }
            let _ = tokio::time::timeout_at(wake.min(deadline), changed).await;
        }
    }

    /// DISCONNECT, and wait (bounded) until it is written and the connection's task ended.
    pub async fn close(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(task) = task else { return };
        if self.client.disconnect().await.is_ok() {
            let abort = task.abort_handle();
            if tokio::time::timeout(PATIENCE, task).await.is_err() {
                abort.abort();
            }
        } else {
            task.abort();
        }
    }
}

/// A PUBACK's reason code as on the wire (rumqttc's enum counts from 0 in its own order).
fn reason_code(reason: &PubAckReason) -> u64 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}
