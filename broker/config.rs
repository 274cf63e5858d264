//! The daemon's configuration: a TOML file whose every key has a default, overridden by CLI flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented default configuration, printed by `mqtter config --print-default`.
/// A test keeps it equal to `Config::default()`.
pub const DEFAULT_TOML: &str = r#"# MQTTER configuration. Every key is optional; these are the defaults.
# CLI flags (--listen, --ws-listen, --data, --allow-anonymous) override the file.

# TCP listener for MQTT 3.1.1 and 5.0.
listen = "0.0.0.0:1883"
# MQTT over WebSocket listener (path below, subprotocol "mqtt"). Empty string: no WebSocket.
ws_listen = "0.0.0.0:8083"
ws_path = "/mqtt"

# Data folder: the store (sessions, queued messages, retained messages, accounts, relations;
# its engine is chosen in [store]) and, in messages/, the IM message log.
data = "./data"

# Accept clients that send no username (and usernames that are no account). Off by default.
allow_anonymous = false

# Answer v5 clients that the ACL refuses (SUBACK, PUBACK, PUBREC) with 0x80 "Unspecified error"
# rather than 0x87 "Not authorized", not revealing why (MQTT 5.0 allows either).
hide_denial_reason = false

# Threads that run the connections. 0: one per CPU core. 1: a single event loop that handles
# packets in the order they arrive, across all connections (as Mosquitto does); with more
# threads, packets that arrive together on different connections are handled in any order.
worker_threads = 0

# "sync": a QoS 1/2 PUBLISH is acknowledged only once durable (group commit).
# "async": acknowledged from memory, flushed every `flush_interval_ms` (faster, may lose the
# last moments of messages on a crash).
durability = "sync"
flush_interval_ms = 1000
# In "sync", the shortest time between the starts of two group-commit flushes, in
# microseconds. Under load more acknowledgements then share one fsync (each costs about
# 0.1 ms of CPU on a virtual disk); a writer alone waits at most this long. 0: flush at once.
flush_gap_us = 1000
# When the store cannot write (a full disk): "degrade" keeps serving what needs no disk and
# refuses (closes without acknowledging) what must be stored, until a restart; "stop" stops the
# daemon (exit status 1) so that a supervisor restarts it, which is how it recovers once there
# is room again (the store keeps its error until it is reopened).
on_store_failure = "degrade"

# Prometheus text endpoint: GET /metrics on this address (HTTP/1.1). Empty string: none.
metrics_listen = ""

# Seconds between $SYS/broker/... updates. 0 turns them off.
sys_interval = 10

# The rules folder: YAML files declaring persons, things, groups, relations (docs/DEFINITIONS.md)
# and rules, and the rules' .rhai scripts (docs/RULES.md). Watched: a change reloads it. Empty:
# none, and no rules engine.
rules_dir = ""

[limits]
# Concurrent connections; more are refused (v5 CONNACK 0x97 Quota exceeded, v3 0x03).
max_connections = 100000
# Largest packet accepted, in bytes (also sent to v5 clients as Maximum Packet Size).
max_packet_size = 16777216
# Unacknowledged QoS 1/2 messages the broker sends to one client at once (capped by the
# client's own Receive Maximum).
max_inflight = 100
# The Receive Maximum the broker announces: QoS 1/2 PUBLISHes a client may have unacknowledged.
# A v5 client sending more is disconnected with 0x93.
receive_maximum = 1024
# Messages held per session while its client is offline or slow (QoS 0 included while online).
max_queued = 1000
# What happens when a session's queue is full: "drop_new" (the new message is dropped for that
# session), "drop_oldest" (the oldest queued message is dropped), or "disconnect" (an online
# client that cannot keep up is disconnected; offline sessions drop new messages).
queue_overflow = "drop_new"
# Queue QoS 0 messages for offline persistent sessions (Mosquitto's queue_qos0_messages).
queue_qos0_offline = false
# When an online subscriber's queue is full, slow the publisher instead of dropping: stop
# reading from it and hold its PUBACK/PUBREC until the queue is half empty (docs/PROTOCOL.md,
# "Slow subscribers"). false: queue_overflow applies to online sessions too.
backpressure = true
# Seconds a publisher may wait for one subscriber's queue; then that subscriber is "slow".
slow_subscriber_timeout = 10
# What a slow subscriber gets: "disconnect" (DISCONNECT 0x97; a persistent session keeps its
# queue for its return) or "drop" (queue_overflow applies to it until its queue is half empty).
slow_subscriber = "disconnect"
# The largest keepalive granted, in seconds; a v5 client asking for more is told this one
# (Server Keep Alive). 0 keepalive from a client is kept as 0.
max_keepalive = 65535
# The largest session expiry granted to v5 clients, in seconds.
max_session_expiry = 4294967295
# Topic aliases a v5 client may use towards the broker (Topic Alias Maximum).
max_topic_alias = 65535
# Seconds a new connection has to send its CONNECT.
connect_timeout = 10
# Password checks (argon2, about 19 MiB each) that run at once. 0: one per CPU core.
password_checks = 0
# CONNECTs that may wait for a password check; more are refused as Server busy (v5 CONNACK
# 0x89, v3 0x03 Server unavailable).
password_queue = 64

[store]
# The store's engine: "redb" (a copy-on-write B-tree), "fjall" (an LSM tree with a journal) or
# "sled" (the engine of older versions; known to deadlock under load). A data folder keeps the
# engine that created it (its store-engine file): opening it with another is refused. A folder
# of an older version (sled, no store-engine file) is migrated to this engine at start.
engine = "redb"
# A store call running longer than this (milliseconds) is logged with what it was doing.
slow_call_ms = 1000
# At a stop, how long to wait for the last flush (milliseconds). A store stuck longer is left
# behind (logged): what was acknowledged was durable already; the rest may be lost.
stop_flush_timeout_ms = 10000
# FOR TESTS ONLY: while this file exists, every store call blocks (a stuck store on demand).
# Empty: off.
test_hang_while = ""
# Free space the data folder's filesystem must keep, as RabbitMQ's disk_free_limit: a size
# ("100MiB", "2GB", bytes) or a share of the filesystem ("5%"); "0" turns it off. Below it the
# broker refuses new durable work (a QoS 1/2 PUBLISH that would be stored: v5 PUBACK/PUBREC
# 0x97, v3 a closed connection without acknowledgement; IM messages and requests), says so in
# $SYS/broker/store/disk_low and the log, and accepts again by itself once there is room.
disk_free_limit = "100MiB"
# Milliseconds between two looks at the free space.
disk_check_interval_ms = 1000

[rules]
# The rules engine (docs/RULES.md), running the rules of `rules_dir`.
# The account a rule acts as when it names none (`as:`); it must exist to act.
account = "rules"
# The time zone of cron schedules and of hour(), minute(), weekday(): an IANA name.
time_zone = "UTC"
# A rule does not run on an event this many hops into its chain (a chain is stopped, reported).
max_hops = 16
# A rule does not run more than this many times in one chain (a loop between rules stops).
max_repeats = 8
# Threads that run rules (never the network's).
workers = 2
# Events waiting for a worker, at most; when full, an event's rules are not run (counted in
# $SYS/mqtter/rules/status as queue_full, and per rule as dropped).
queue = 10000
# Per run: Rhai operations, call depth, the largest string, array or map, and the wall-clock
# budget in milliseconds. A run over any of them is stopped and traced.
max_operations = 1000000
max_call_levels = 32
max_size = 65536
budget_ms = 250
# Traces kept per rule ($SYS/mqtter/rules/RULE/traces, `mqtter rules trace RULE`).
traces = 20
# Milliseconds between two publications of the counters and traces on $SYS/mqtter/rules/...
# (only what changed is published; the status is also published at every reload).
publish_interval_ms = 1000

[im]
# The IM world (person/, group/, $im/ topics; docs/PROTOCOL.md).
# Recycle bin retention when a client names none, and the most a client may ask for (seconds).
recycle_default_secs = 604800
recycle_max_secs = 2592000
# Largest message body in bytes (larger: error "too_large").
max_body_bytes = 65536
# Missed messages replayed per conversation after CONNECT; the rest is paged with `history`.
sync_max_per_conv = 1000
# Largest `history` page.
history_max = 100
# Seconds of pings only (no other packet) before a person is shown "away".
away_after = 300
# Seconds between sweeps of the recycle bin (expired entries are purged for good).
purge_interval = 60
# How long the token of a direct channel (`direct.open`) stays good, in milliseconds: the peer
# must dial within it. A token opens one connection.
direct_token_ms = 30000

[things]
# The things world (thing/, $things/ topics; docs/PROTOCOL.md section 8).
# A command's ttl when its sender gives none, and the most a sender may ask for (seconds).
cmd_ttl_default = 30
cmd_ttl_max = 3600
# A claim code's ttl when the thing asks for none, and the most it may ask for (seconds).
claim_ttl_default = 600
claim_ttl_max = 3600
# Open commands (queued or delivered, unanswered) per thing; more are refused ("queue_full").
max_queued_cmds = 1000
# Largest command or event body, and largest state document, in bytes.
max_body_bytes = 65536
max_state_bytes = 65536
# The highest chain hop accepted (a loop of things commanding each other ends there).
max_hops = 16
# Feed entries (cmd.ack, cmd.timeout, event) kept per account; replayed to a new device at sync.
feed_max = 1000
sync_max_feed = 100
# Audit entries kept per thing; largest audit page.
audit_max = 10000
audit_page_max = 100
# Milliseconds between two looks for commands whose ttl has passed (cmd.timeout).
sweep_interval_ms = 500

# Topic access rules for plain topics, as in Mosquitto's acl_file. With no rules every account
# may publish and subscribe anywhere. With rules, what no rule allows is denied, and a "deny"
# rule wins over any allow. `account` names one account, or "*" for everyone (anonymous too);
# `topic` may use + and #, and %u (username) and %c (client id) placeholders.
# access: "read" (subscribe/receive), "write" (publish), "readwrite", or "deny".
# [[acl]]
# account = "*"
# topic = "devices/%u/#"
# access = "readwrite"
"#;

/// What `durability` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Sync,
    Async,
}

/// What `on_store_failure` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFailure {
    Degrade,
    Stop,
}

/// What `queue_overflow` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    DropNew,
    DropOldest,
    Disconnect,
}

/// What `slow_subscriber` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    Disconnect,
    Drop,
}

/// What an ACL rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Readwrite,
    Deny,
}

/// One ACL rule (see the commented default file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    #[serde(default = "any_account")]
    pub account: String,
    pub topic: String,
    pub access: Access,
}

fn any_account() -> String {
    "*".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub receive_maximum: u16,
    pub max_queued: usize,
    pub queue_overflow: Overflow,
    pub queue_qos0_offline: bool,
    pub backpressure: bool,
    pub slow_subscriber_timeout: u64,
    pub slow_subscriber: SlowSubscriber,
    pub max_keepalive: u16,
    pub max_session_expiry: u32,
    pub max_topic_alias: u16,
    pub connect_timeout: u64,
    pub password_checks: usize,
    pub password_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_packet_size: 16 * 1024 * 1024,
            max_inflight: 100,
            receive_maximum: 1024,
            max_queued: 1000,
            queue_overflow: Overflow::DropNew,
            queue_qos0_offline: false,
            backpressure: true,
            slow_subscriber_timeout: 10,
            slow_subscriber: SlowSubscriber::Disconnect,
            max_keepalive: 65535,
            max_session_expiry: u32::MAX,
            max_topic_alias: 65535,
            connect_timeout: 10,
            password_checks: 0,
            password_queue: 64,
        }
    }
}

/// The `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub engine: mqtter_engine::Engine,
    pub slow_call_ms: u64,
    pub stop_flush_timeout_ms: u64,
    pub test_hang_while: PathBuf,
    pub disk_free_limit: String,
    pub disk_check_interval_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            engine: mqtter_engine::Engine::default(),
            slow_call_ms: 1000,
            stop_flush_timeout_ms: 10_000,
            test_hang_while: PathBuf::new(),
            disk_free_limit: "100MiB".into(),
            disk_check_interval_ms: 1000,
        }
    }
}

impl StoreSection {
    /// Open the store of `data` as this section says (engine, migration, the test-only hang).
    pub fn open(
        &self,
        data: &Path,
    ) -> Result<std::sync::Arc<dyn mqtter_engine::Store>, mqtter_engine::StoreError> {
        let store = mqtter_engine::open::open(data, self.engine)?;
        if self.test_hang_while.as_os_str().is_empty() {
            return Ok(store);
        }
        tracing::warn!(marker = %self.test_hang_while.display(), "test_hang_while is set: the store blocks while this file exists (for tests only)");
        Ok(std::sync::Arc::new(mqtter_engine::hang::HangWhile::new(
            store,
            self.test_hang_while.clone(),
        )))
    }
}

/// The `[rules]` section: the rules engine's settings (`mqtter_rules::Config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesSection {
    pub account: String,
    pub time_zone: String,
    pub max_hops: u32,
    pub max_repeats: u32,
    pub workers: usize,
    pub queue: usize,
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_size: usize,
    pub budget_ms: u64,
    pub traces: usize,
    pub publish_interval_ms: u64,
}

impl Default for RulesSection {
    fn default() -> Self {
        let engine = mqtter_rules::Config::default();
        Self {
            account: engine.account,
            time_zone: engine.time_zone.name().to_owned(),
            max_hops: engine.max_hops,
            max_repeats: engine.max_repeats,
            workers: engine.workers,
            queue: engine.queue,
            max_operations: engine.max_operations,
            max_call_levels: engine.max_call_levels,
            max_size: engine.max_size,
            budget_ms: u64::try_from(engine.budget.as_millis()).unwrap_or(u64::MAX),
            traces: engine.traces,
            publish_interval_ms: 1000,
        }
    }
}

/// The `[things]` section (seconds unless named otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThingsSection {
    pub cmd_ttl_default: u64,
    pub cmd_ttl_max: u64,
    pub claim_ttl_default: u64,
    pub claim_ttl_max: u64,
    pub max_queued_cmds: usize,
    pub max_body_bytes: usize,
    pub max_state_bytes: usize,
    pub max_hops: u32,
    pub feed_max: u64,
    pub sync_max_feed: usize,
    pub audit_max: u64,
    pub audit_page_max: usize,
    pub sweep_interval_ms: u64,
}

impl Default for ThingsSection {
    fn default() -> Self {
        let e = mqtter_engine::things::ThingsConfig::default();
        Self {
            cmd_ttl_default: e.cmd_ttl_default_secs,
            cmd_ttl_max: e.cmd_ttl_max_secs,
            claim_ttl_default: e.claim_ttl_default_secs,
            claim_ttl_max: e.claim_ttl_max_secs,
            max_queued_cmds: e.max_queued_cmds,
            max_body_bytes: e.max_body_bytes,
            max_state_bytes: e.max_state_bytes,
            max_hops: e.max_hops,
            feed_max: e.feed_max,
            sync_max_feed: e.sync_max_feed,
            audit_max: e.audit_max,
            audit_page_max: e.audit_page_max,
            sweep_interval_ms: 500,
        }
    }
}

impl RulesSection {
    /// The engine's settings; an unknown time zone is an error.
    pub fn engine(&self) -> Result<mqtter_rules::Config, ConfigError> {
        let time_zone = self
            .time_zone
            .parse::<mqtter_rules::TimeZone>()
            .map_err(|err| ConfigError::Invalid {
                key: "rules.time_zone",
                value: self.time_zone.clone(),
                reason: err.to_string(),
            })?;
        Ok(mqtter_rules::Config {
            account: self.account.clone(),
            time_zone,
            max_hops: self.max_hops,
            max_repeats: self.max_repeats,
            workers: self.workers,
            queue: self.queue,
            max_operations: self.max_operations,
            max_call_levels: self.max_call_levels,
            max_size: self.max_size,
            budget: std::time::Duration::from_millis(self.budget_ms),
            traces: self.traces,
        })
    }
}

impl ThingsSection {
    /// The part the engine's things domain reads.
    pub fn engine(&self) -> mqtter_engine::things::ThingsConfig {
        mqtter_engine::things::ThingsConfig {
            cmd_ttl_default_secs: self.cmd_ttl_default,
            cmd_ttl_max_secs: self.cmd_ttl_max,
            claim_ttl_default_secs: self.claim_ttl_default,
            claim_ttl_max_secs: self.claim_ttl_max,
            max_queued_cmds: self.max_queued_cmds,
            max_body_bytes: self.max_body_bytes,
            max_state_bytes: self.max_state_bytes,
            max_hops: self.max_hops,
            feed_max: self.feed_max,
            sync_max_feed: self.sync_max_feed,
            audit_max: self.audit_max,
            audit_page_max: self.audit_page_max,
        }
    }
}

/// The `[im]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImSection {
    pub recycle_default_secs: u64,
    pub recycle_max_secs: u64,
    pub max_body_bytes: usize,
    pub sync_max_per_conv: usize,
    pub history_max: usize,
    pub away_after: u64,
    pub purge_interval: u64,
    /// The lifetime of a direct channel's token, in ms.
    pub direct_token_ms: u64,
}

impl Default for ImSection {
    fn default() -> Self {
        let engine = mqtter_engine::im::ImConfig::default();
        Self {
            recycle_default_secs: engine.recycle_default_secs,
            recycle_max_secs: engine.recycle_max_secs,
            max_body_bytes: engine.max_body_bytes,
            sync_max_per_conv: engine.sync_max_per_conv,
            history_max: engine.history_max,
            away_after: 300,
            purge_interval: 60,
            direct_token_ms: 30_000,
        }
    }
}

impl ImSection {
    /// The part the engine's IM domain reads.
    pub fn engine(&self) -> mqtter_engine::im::ImConfig {
        mqtter_engine::im::ImConfig {
            recycle_default_secs: self.recycle_default_secs,
            recycle_max_secs: self.recycle_max_secs,
            max_body_bytes: self.max_body_bytes,
            sync_max_per_conv: self.sync_max_per_conv,
            history_max: self.history_max,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub ws_listen: String,
    pub ws_path: String,
    pub data: PathBuf,
    pub allow_anonymous: bool,
    pub hide_denial_reason: bool,
    pub worker_threads: usize,
    pub durability: Durability,
    pub flush_interval_ms: u64,
    pub flush_gap_us: u64,
    pub on_store_failure: StoreFailure,
    pub metrics_listen: String,
    pub sys_interval: u64,
    pub rules_dir: PathBuf,
    pub limits: Limits,
    pub store: StoreSection,
    pub rules: RulesSection,
    pub im: ImSection,
    pub things: ThingsSection,
    pub acl: Vec<AclRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1883".into(),
            ws_listen: "0.0.0.0:8083".into(),
            ws_path: "/mqtt".into(),
            data: PathBuf::from("./data"),
            allow_anonymous: false,
            hide_denial_reason: false,
            worker_threads: 0,
            durability: Durability::Sync,
            flush_interval_ms: 1000,
            flush_gap_us: 1000,
            on_store_failure: StoreFailure::Degrade,
            metrics_listen: String::new(),
            sys_interval: 10,
            rules_dir: PathBuf::new(),
            limits: Limits::default(),
            store: StoreSection::default(),
            rules: RulesSection::default(),
            im: ImSection::default(),
            things: ThingsSection::default(),
            acl: Vec::new(),
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Check what serde cannot: addresses parse, topics in the ACL are valid filters.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("listen", &self.listen),
            ("ws_listen", &self.ws_listen),
            ("metrics_listen", &self.metrics_listen),
        ] {
            if !(value.is_empty() && key != "listen") {
                value
                    .parse::<SocketAddr>()
                    .map_err(|err| ConfigError::Invalid {
                        key,
                        value: value.clone(),
                        reason: err.to_string(),
                    })?;
            }
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::Invalid {
                key: "ws_path",
                value: self.ws_path.clone(),
                reason: "must start with '/'".into(),
            });
        }
        for rule in &self.acl {
            crate::topic::validate_filter(&rule.topic).map_err(|err| ConfigError::Invalid {
                key: "acl.topic",
                value: rule.topic.clone(),
                reason: err.to_string(),
            })?;
        }
        if let Err(reason) = crate::disk::FreeLimit::parse(&self.store.disk_free_limit) {
            return Err(ConfigError::Invalid {
                key: "store.disk_free_limit",
                value: self.store.disk_free_limit.clone(),
                reason,
            });
        }
        self.rules.engine()?;
        if self.limits.max_inflight == 0 || self.limits.receive_maximum == 0 {
            return Err(ConfigError::Invalid {
                key: "limits",
                value: "0".into(),
                reason: "max_inflight and receive_maximum must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.check().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let config: Config = toml::from_str("listen = \"nowhere\"").unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let config: Config =
            toml::from_str("[[acl]]\ntopic = \"a/#/b\"\naccess = \"read\"").unwrap();
        assert!(config.check().is_err());
        let config: Config = toml::from_str("[rules]\ntime_zone = \"Mars/Olympus\"").unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("rules.time_zone"), "{err}");
        let config: Config = toml::from_str("[store]\ndisk_free_limit = \"much\"").unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("disk_free_limit"), "{err}");
    }
}
