//! `Client`, the handle a program holds (cheap to clone, every call async), and `EventStream`,
//! what the server and the peers send, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::ConnectProperties;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::core::{Cmd, Core, Input, Stats, View, spawn_pump};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::types::{
    ConvId, Event, FriendState, Member, Message, Page, Range, ReceiptKind, RecycleEntry, Role,
    Roster, Target,
};

/// What a sent message became: its `cid` (the server stores it once under it) and its
/// conversation. Its `seq` is given by the server; the sender's other devices receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub cid: String,
    pub conv: ConvId,
}

struct Shared {
    opts: Options,
    input: mpsc::UnboundedSender<Input>,
    cache: Cache,
    view: Arc<View>,
    next_cid: AtomicU64,
    /// A random part of every `cid`, so that two runs of one device never reuse one.
    run: u64,
    pub(crate) direct: crate::p2p::Direct,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Shutdown(None));
    }
}

/// A person's device connected to the server. Clone it freely; the connection ends when the
/// last clone is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// The events of a [`Client`], in the order they happened.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event already there, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The same events, each shown to `look` first (to log what arrived while something else,
    /// a [`crate::Reflex`] say, consumes them). Forwarded by a task on the current tokio
    /// runtime; the new stream ends when this one does.
    pub fn tee(mut self, look: impl Fn(&Event) + Send + 'static) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = self.rx.recv().await {
                look(&event);
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        EventStream { rx }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.shared.opts.client_id())
            .finish()
    }
}

impl Client {
    /// Connect, and return once the server has accepted the CONNECT. The sync that follows
    /// (roster, missed messages) arrives on the stream: [`Event::Connected`], the messages,
    /// then [`Event::Synced`]. After that the client reconnects by itself when the connection
    /// drops, with backoff, and resumes where it was.
    pub async fn connect(opts: Options) -> Result<(Client, EventStream)> {
        let cache = match &opts.cache_dir {
            Some(dir) => Cache::open(dir, &opts.account, &opts.device)?,
            None => Cache::in_memory()?,
        };
        // Before the core starts: the sync's first message already asks the pending table
        // whether it was had over a direct channel.
        crate::p2p::pending::init(&cache)?;
        let mut mqtt = MqttOptions::new(opts.client_id(), opts.host.clone(), opts.port);
        mqtt.set_credentials(opts.account.clone(), opts.password.clone());
        mqtt.set_keep_alive(opts.keep_alive.max(std::time::Duration::from_secs(5)));
        mqtt.set_clean_start(false);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval =
            Some(u32::try_from(opts.session_expiry.as_secs()).unwrap_or(u32::MAX));
        props.max_packet_size = Some(16 << 20);
        if !opts.sync {
            props.user_properties = vec![("im-sync".into(), "false".into())];
        }
        mqtt.set_connect_properties(props);
        mqtt.set_request_channel_capacity(1024);
        mqtt.set_connection_timeout(10);
        let (client, el) = AsyncClient::new(mqtt, 1024);

        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let (hooks_tx, hooks_rx) = mpsc::unbounded_channel();
        let view = Arc::new(View {
            roster: std::sync::Mutex::new(Roster::default()),
            stats: Stats::default(),
        });
        let pump = spawn_pump(el, &opts, input_tx.clone());
        let next_request = Arc::new(AtomicU64::new(1));
        let core = Core::new(
            opts.clone(),
            client,
            cache.clone(),
            view.clone(),
            events_tx.clone(),
            input_rx,
            first_tx,
            pump,
            next_request,
            hooks_tx,
        );
        tokio::spawn(core.run());
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(Error::Closed),
        }
        let direct =
            crate::p2p::Direct::new(&opts, cache.clone(), input_tx.clone(), events_tx, hooks_rx)?;
        let shared = Arc::new(Shared {
            opts,
            input: input_tx,
            cache,
            view,
            next_cid: AtomicU64::new(1),
            run: rand::random::<u32>() as u64,
            direct,
        });
        let client = Client { shared };
        Ok((client, EventStream { rx: events_rx }))
    }

    /// Open a device's cache without connecting: its history, offline.
    pub fn open_cache(opts: &Options) -> Result<Cache> {
        match &opts.cache_dir {
            Some(dir) => Cache::open(dir, &opts.account, &opts.device),
            None => Err(Error::Cache("no cache folder in the options".into())),
        }
    }

    /// The account this client is.
    pub fn account(&self) -> &str {
        &self.shared.opts.account
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// The roster as of the last sync, kept current by the notices since.
    pub fn roster(&self) -> Roster {
        self.shared
            .view
            .roster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counters: messages yielded, duplicates dropped, gap messages fetched, connections.
    pub fn stats(&self) -> &Stats {
        &self.shared.view.stats
    }

    /// The local history cache.
    pub fn cache(&self) -> &Cache {
        &self.shared.cache
    }

    /// End the connection (DISCONNECT) and wait until it is done. Calls still waiting fail
    /// with [`Error::Closed`].
    pub async fn close(&self) {
        // Direct channels first: each uploads what it said while the server is still there.
        self.shared.direct.close_all().await;
        let (tx, rx) = oneshot::channel();
        if self.shared.input.send(Input::Shutdown(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn send_cmd(&self, cmd: Cmd) -> Result<()> {
        self.shared
            .input
            .send(Input::Cmd(cmd))
            .map_err(|_| Error::Closed)
    }

    /// A new `cid` for a message of this device.
    pub fn new_cid(&self) -> String {
        let n = self.shared.next_cid.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:08x}-{n}", self.shared.opts.device, self.shared.run)
    }

    // ---- messages ----

    /// Send a message (a JSON object body) to a friend or a group; returns once the server has
    /// stored it. Resent across reconnects until then, stored once (its `cid`).
    pub async fn send(&self, to: &Target, body: Value) -> Result<Sent> {
        self.send_with_cid(to, body, self.new_cid()).await
    }

    /// As [`Client::send`] with `{"text": text}`.
    pub async fn send_text(&self, to: &Target, text: &str) -> Result<Sent> {
        self.send(to, json!({ "text": text })).await
    }

    /// As [`Client::send`] with a `cid` of the caller's choosing (the same `cid` twice is
    /// stored once).
    pub async fn send_with_cid(&self, to: &Target, body: Value, cid: String) -> Result<Sent> {
        if let Target::Person(friend) = to {
            // Over an open direct channel, else the server path in order after what a channel
            // that just ended uploads (docs/CLIENT.md, "Direct channels").
            return self.shared.direct.send_with_cid(friend, body, cid).await;
        }
        if !body.is_object() {
            return Err(Error::Protocol("a message body is a JSON object".into()));
        }
        let (reply, answer) = oneshot::channel();
        let (conv, peer) = match to {
            Target::Person(p) => (to.conv(self.account()), p.clone()),
            Target::Group(g) => (to.conv(self.account()), g.clone()),
        };
        self.send_cmd(Cmd::Message {
            conv,
            to: peer,
            body,
            cid: cid.clone(),
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)??;
        Ok(Sent {
            cid,
            conv: to.conv(self.account()),
        })
    }

    // ---- requests ----

    /// A `$im/req` request: `op` and its arguments (a JSON object). Returns the `res` envelope
    /// when `ok`, else [`Error::Refused`] with the server's code.
    pub async fn request(&self, op: &str, args: Value) -> Result<Value> {
        self.request_on("$im/req", op, args).await
    }

    /// A request on `topic` (`$im/req` or `$things/req`).
    pub(crate) async fn request_on(
        &self,
        topic: &'static str,
        op: &str,
        args: Value,
    ) -> Result<Value> {
        let mut request = json!({ "op": op });
        if let Value::Object(args) = args {
            request.as_object_mut().expect("an object").extend(args);
        }
        let (reply, answer) = oneshot::channel();
        self.send_cmd(Cmd::Request {
            topic,
            request,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Persons and open groups whose id (or name) contains `q`.
    pub async fn search(&self, q: &str) -> Result<(Vec<String>, Vec<(String, String)>)> {
        let res = self.request("directory.search", json!({ "q": q })).await?;
        let persons = strings(&res["persons"]);
        let groups = res["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| {
                        (
                            g["id"].as_str().unwrap_or_default().to_owned(),
                            g["name"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((persons, groups))
    }

    /// Ask `peer` to be friends (or accept their request).
    pub async fn friend_request(&self, peer: &str) -> Result<FriendState> {
        let res = self
            .request("friend.request", json!({ "peer": peer }))
            .await?;
        match res["state"].as_str() {
            Some("friends") => Ok(FriendState::Friends),
            Some("pending") => Ok(FriendState::Pending),
            _ => Err(Error::Protocol(format!("friend.request answered {res}"))),
        }
    }

    pub async fn friend_accept(&self, peer: &str) -> Result<()> {
        self.peer_op("friend.accept", peer).await
    }

    pub async fn friend_reject(&self, peer: &str) -> Result<()> {
        self.peer_op("friend.reject", peer).await
    }

    /// Unfriend: the friendship goes to the recycle bin for `retain_secs` (else the server's
    /// default).
    pub async fn friend_remove(&self, peer: &str, retain_secs: Option<u64>) -> Result<()> {
        let mut args = json!({ "peer": peer });
        if let Some(secs) = retain_secs {
            args["retain_secs"] = json!(secs);
        }
        self.request("friend.remove", args).await.map(drop)
    }

    pub async fn friend_restore(&self, peer: &str) -> Result<()> {
        self.peer_op("friend.restore", peer).await
    }

    pub async fn block(&self, peer: &str) -> Result<()> {
        self.peer_op("block", peer).await
    }

    pub async fn unblock(&self, peer: &str) -> Result<()> {
        self.peer_op("unblock", peer).await
    }

    async fn peer_op(&self, op: &str, peer: &str) -> Result<()> {
        self.request(op, json!({ "peer": peer })).await.map(drop)
    }

    /// The recycle bin.
    pub async fn recycle_list(&self) -> Result<Vec<RecycleEntry>> {
        let res = self.request("recycle.list", json!({})).await?;
        serde_json::from_value(res["entries"].clone()).map_err(|e| Error::Protocol(e.to_string()))
    }

    // ---- groups ----

    pub async fn group_create(&self, group: &str, name: Option<&str>, open: bool) -> Result<()> {
        let mut args = json!({ "group": group, "open": open });
        if let Some(name) = name {
            args["name"] = json!(name);
        }
        self.request("group.create", args).await.map(drop)
    }

    pub async fn group_invite(&self, group: &str, member: &str) -> Result<()> {
        self.group_op("group.invite", group, Some(member)).await
    }

    pub async fn group_kick(&self, group: &str, member: &str) -> Result<()> {
        self.group_op("group.kick", group, Some(member)).await
    }

    pub async fn group_set_role(&self, group: &str, member: &str, role: Role) -> Result<()> {
        self.request(
            "group.set_role",
            json!({ "group": group, "member": member, "role": role.as_str() }),
        )
        .await
        .map(drop)
    }

    /// Ask to join a group (joined at once when it is open or one was invited).
    pub async fn group_join(&self, group: &str) -> Result<()> {
        // Joining is a SUBSCRIBE in the protocol (section 5.3); there is no request for it.
        match self.subscribe(&format!("group/{group}")).await? {
            code if code < 0x80 => Ok(()),
            code => Err(Error::Rejected(code)),
        }
    }

    pub async fn group_leave(&self, group: &str, retain_secs: Option<u64>) -> Result<()> {
        let mut args = json!({ "group": group });
        if let Some(secs) = retain_secs {
            args["retain_secs"] = json!(secs);
        }
        self.request("group.leave", args).await.map(drop)
    }

    pub async fn group_restore(&self, group: &str) -> Result<()> {
        self.group_op("group.restore", group, None).await
    }

    pub async fn group_dissolve(&self, group: &str) -> Result<()> {
        self.group_op("group.dissolve", group, None).await
    }

    pub async fn group_members(&self, group: &str) -> Result<Vec<Member>> {
        let res = self
            .request("group.members", json!({ "group": group }))
            .await?;
        Ok(res["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some(Member {
                            id: m["id"].as_str()?.to_owned(),
                            role: Role::parse(m["role"].as_str()?)?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn group_op(&self, op: &str, group: &str, member: Option<&str>) -> Result<()> {
        let mut args = json!({ "group": group });
        if let Some(member) = member {
            args["member"] = json!(member);
        }
        self.request(op, args).await.map(drop)
    }

    /// SUBSCRIBE one filter (QoS 1); the SUBACK's reason code.
    pub async fn subscribe(&self, filter: &str) -> Result<u8> {
        let (reply, answer) = oneshot::channel();
        self.send_cmd(Cmd::Subscribe {
            filter: filter.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    // ---- history, receipts, presence ----

    /// A page of history from the server (at most 100), ascending; stored in the cache too.
    pub async fn history(&self, conv: &ConvId, range: Range, limit: usize) -> Result<Page> {
        let mut args = json!({ "conv": conv.as_str(), "limit": limit });
        match range {
            Range::Newest => {}
            Range::Before(seq) => args["before"] = json!(seq),
            Range::After(seq) => args["after"] = json!(seq),
        }
        let res = self.request("history", args).await?;
        let messages: Vec<Message> = serde_json::from_value(res["messages"].clone())
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.shared.cache.put(&messages)?;
        Ok(Page {
            conv: conv.clone(),
            messages,
            last_seq: res["last_seq"].as_u64().unwrap_or(0),
        })
    }

    /// A page of history from the local cache, without the server.
    pub fn cached_history(
        &self,
        conv: &ConvId,
        range: Range,
        limit: usize,
    ) -> Result<Vec<Message>> {
        self.shared.cache.history(conv, range, limit)
    }

    /// Tell the peer (direct) or the sender (group) that `seq` was delivered or read.
    pub async fn receipt(&self, conv: &ConvId, seq: u64, kind: ReceiptKind) -> Result<()> {
        self.request(
            "receipt",
            json!({ "conv": conv.as_str(), "seq": seq, "kind": kind.as_str() }),
        )
        .await
        .map(drop)
    }

    /// Say `away` or `online` (an away chosen stays until online is said).
    pub fn set_presence(&self, presence: &str) -> Result<()> {
        self.status(json!({ "presence": presence }))
    }

    /// Set the status text friends see.
    pub fn set_status_text(&self, text: &str) -> Result<()> {
        self.status(json!({ "text": text }))
    }

    fn status(&self, body: Value) -> Result<()> {
        self.send_cmd(Cmd::Fire {
            topic: format!("person/{}/status", self.account()),
            payload: Bytes::from(body.to_string()),
        })
    }

    /// The direct (peer-to-peer) channels of this device.
    pub fn direct(&self) -> &crate::p2p::Direct {
        &self.shared.direct
    }

    /// Open a direct channel to `friend` (see [`crate::p2p::Direct::open`]); from then on
    /// [`Client::send`] to them goes over it until it ends.
    pub async fn open_direct(&self, friend: &str) -> Result<()> {
        self.shared.direct.open(friend).await
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
