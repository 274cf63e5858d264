//! The daemon as a library call: [`Daemon::bind`] opens the store, binds the listeners (port 0
//! picks a free one) and starts the rules engine (which applies the definitions of `rules_dir`);
//! [`Daemon::run`] serves until its shutdown future resolves, stopping the rules engine first.
//!
//! `mqtter serve` is `bind` then `run` on a runtime of its own; `mqtter sim` starts one on a
//! temporary data folder, on the virtual clock, inside its own process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::automation::Automation;
use crate::broker::Broker;
use crate::config::Config;
use crate::server::Listeners;

/// A daemon whose listeners are bound and whose rules engine runs; not serving yet.
pub struct Daemon {
    broker: Arc<Broker>,
    listeners: Listeners,
    automation: Option<Automation>,
    /// Where it listens: MQTT over TCP, over WebSocket, the Prometheus endpoint.
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

async fn bind(address: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = address
        .parse()
        .with_context(|| format!("{what} address {address:?}"))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn bind_optional(
    address: &str,
    what: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if address.is_empty() {
        return Ok(None);
    }
    bind(address, what).await.map(Some)
}

impl Daemon {
    /// Open the store of `config.data`, bind the listeners and start the rules engine (with
    /// the definitions of `rules_dir`). Runs inside a tokio runtime.
    pub async fn bind(config: Config) -> anyhow::Result<Daemon> {
        config.check()?;
        let store = config
            .store
            .open(&config.data)
            .with_context(|| format!("cannot open the store in {}", config.data.display()))?;
        let tcp = bind(&config.listen, "listen").await?;
        let ws = bind_optional(&config.ws_listen, "ws_listen").await?;
        let metrics = bind_optional(&config.metrics_listen, "metrics_listen").await?;
        let mqtt = tcp.local_addr()?;
        let ws_local = ws.as_ref().map(|l| l.local_addr()).transpose()?;
        let metrics_local = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
        let broker = Broker::open(config, store).context("cannot restore the store")?;
        // The rules engine, which applies the folder's definitions (accounts, groups,
        // relations) as it loads; stopped when the stop begins, so that no action comes after
        // the last flush.
        let automation = Automation::start(&broker)?;
        Ok(Daemon {
            broker,
            listeners: Listeners { tcp, ws, metrics },
            automation,
            mqtt,
            ws: ws_local,
            metrics: metrics_local,
        })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The rules engine, when `rules_dir` names a folder.
    pub fn rules(&self) -> Option<&Arc<mqtter_rules::Rules>> {
        self.automation.as_ref().map(Automation::rules)
    }

    /// The line `mqtter serve` prints on stdout, which scripts and tests read to find the ports.
    pub fn listening_line(&self) -> String {
        let config = &self.broker.config;
        let ws = self
            .ws
            .map(|ws| format!(" ws={ws}{}", config.ws_path))
            .unwrap_or_default();
        let metrics = self
            .metrics
            .map(|m| format!(" metrics={m}/metrics"))
            .unwrap_or_default();
        format!("mqtter listening mqtt={}{ws}{metrics}", self.mqtt)
    }

    /// Serve until `shutdown` resolves; the rules engine stops as the stop begins, then the
    /// clients are asked to go and the store is flushed (`server::run`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Daemon {
            broker,
            listeners,
            automation,
            ..
        } = self;
        let config = &broker.config;
        tracing::info!(mqtt = %listeners.tcp.local_addr()?, data = %config.data.display(), durability = ?config.durability, anonymous = config.allow_anonymous, "serving");
        let shutdown = async move {
            shutdown.await;
            if let Some(mut automation) = automation {
                let _ = tokio::task::spawn_blocking(move || automation.stop()).await;
            }
        };
        crate::server::run(broker, listeners, shutdown).await?;
        Ok(())
    }
}
