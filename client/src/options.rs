//! How a client connects: the server, the person and device, the cache folder, reconnects.

use std::path::PathBuf;
use std::time::Duration;

/// The options of [`crate::Client::connect`].
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// The person's account id.
    pub account: String,
    pub password: String,
    /// This device's name: the client id is `account:device`. The server counts what a device
    /// missed per client id, so keep it stable across runs.
    pub device: String,
    /// The folder of the local history cache (one file per device); `None` keeps history in
    /// memory only.
    pub cache_dir: Option<PathBuf>,
    pub keep_alive: Duration,
    /// How long the server keeps this device's MQTT session while it is away (unacknowledged
    /// messages in both directions are resent from it).
    pub session_expiry: Duration,
    /// Waits between reconnect attempts: doubling from `min` up to `max`.
    pub backoff: Backoff,
    /// How long a request or a message waits for its answer (across reconnects) before the call
    /// gives up with [`crate::Error::Timeout`].
    pub request_timeout: Duration,
    /// The address this device's direct channels listen on (`/p2p`); port 0 picks one.
    pub direct_listen: String,
    /// The address the peer is told to dial, when it is not the listener's own (a port
    /// forwarded on a router, a proxy); `None`: the listener's address.
    pub direct_advertise: Option<String>,
    /// Dial at once the device that offers a channel (`direct.offer`); off, the offer is only
    /// an [`crate::Event::Notice`] and [`crate::p2p::Direct::accept`] dials.
    pub direct_auto_accept: bool,
    /// Whether to take part in the CONNECT sync (roster, missed messages). A script that only
    /// makes requests may turn it off (`im-sync: false`).
    pub sync: bool,
}

impl Options {
    /// Options for `account:device` at `host:port`, with the defaults for the rest.
    pub fn new(host: &str, port: u16, account: &str, password: &str, device: &str) -> Options {
        Options {
            host: host.to_owned(),
            port,
            account: account.to_owned(),
            password: password.to_owned(),
            device: device.to_owned(),
            cache_dir: None,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(24 * 3600),
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(60),
            direct_listen: "127.0.0.1:0".to_owned(),
            direct_advertise: None,
            direct_auto_accept: true,
            sync: true,
        }
    }

    /// Keep the history cache in `dir`.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Options {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The MQTT client id: `account:device`.
    pub fn client_id(&self) -> String {
        format!("{}:{}", self.account, self.device)
    }
}

/// Reconnect waits: `min`, doubling each failed attempt, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0 for the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}
