//! Direct channels between two friends' devices (docs/CLIENT.md, "Direct channels"): negotiated
//! through the server (`direct.open`), then a TCP connection between the two devices that the
//! server never sees, authenticated both ways with the channel's token; what is said over it is
//! kept as pending-upload and later stored by the server (`direct.upload`) in the order it was
//! said, once, with a `seq`, for every other device of both persons.
//!
//! # Layout
//! - `p2p.rs`: [`Direct`], the channels of one device: open, accept an offer, send, close,
//!   upload; the listener; the hooks the core calls.
//! - `wire.rs`: the channel's frames (length-prefixed JSON) and the keyed MAC.
//! - `handshake.rs`: the listener's and the dialer's halves of the token check; [`Offer`].
//! - `channel.rs`: an open channel: messages out and in, acknowledgements, its end and the
//!   fallback to the server path.
//! - `pending.rs`: what was said and the server does not have yet, in the device's cache.

mod channel;
mod handshake;
pub mod pending;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cache::Cache;
use crate::client::Sent;
use crate::core::{Cmd, Input};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::types::{ConvId, Event, Message};

use channel::Out;
pub use handshake::Offer;
use handshake::{Expect, Link};
pub use pending::Said;

/// How many messages one `direct.upload` carries.
const UPLOAD_CHUNK: usize = 100;

/// What the core tells the direct channels.
pub(crate) enum Hook {
    /// A `direct.offer` came on the inbox.
    Offer(Value),
    /// A sync with the server ended: a moment to upload what is pending.
    Synced,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// An open channel, as the handles see it.
struct Chan {
    channel: String,
    out: mpsc::UnboundedSender<Out>,
    task: JoinHandle<()>,
}

pub(crate) struct Inner {
    account: String,
    client_id: String,
    listen: String,
    advertise: Option<String>,
    auto_accept: bool,
    request_timeout: Duration,
    cache: Cache,
    input: mpsc::UnboundedSender<Input>,
    events: mpsc::UnboundedSender<Event>,
    listener: tokio::sync::Mutex<Option<SocketAddr>>,
    expects: Mutex<HashMap<String, Expect>>,
    /// Told when a channel is added to `expects`.
    registered: tokio::sync::Notify,
    /// By peer: one open channel per friend.
    channels: Mutex<HashMap<String, Chan>>,
    /// The listener's task and the hooks' task.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One upload at a time, so that two never interleave one conversation.
    uploading: tokio::sync::Mutex<()>,
    next_cid: AtomicU64,
    run: u32,
}

/// The direct channels of one device ([`crate::Client::direct`]).
pub struct Direct {
    inner: Arc<Inner>,
}

impl Drop for Direct {
    fn drop(&mut self) {
        for task in self.inner.tasks().drain(..) {
            task.abort();
        }
        for (_, chan) in self.inner.chans().drain() {
            chan.task.abort();
        }
    }
}

impl Inner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chans(&self) -> std::sync::MutexGuard<'_, HashMap<String, Chan>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A `$im/req` request through the core, answered by its `res`.
    async fn request(&self, op: &str, mut args: Value) -> Result<Value> {
        args["op"] = json!(op);
        let (reply, answer) = oneshot::channel();
        self.input
            .send(Input::Cmd(Cmd::Request {
                topic: "$im/req",
                request: args,
                reply,
            }))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The channel `channel` to `peer` ended: no longer the open one.
    fn forget_channel(&self, peer: &str, channel: &str) {
        let mut chans = self.chans();
        if chans.get(peer).is_some_and(|c| c.channel == channel) {
            chans.remove(peer);
        }
    }

    /// Hand a message to the core for the server path; the future resolves at its PUBACK.
    fn queue_message(
        &self,
        friend: &str,
        body: Value,
        cid: String,
    ) -> impl Future<Output = Result<Sent>> + Send + 'static {
        let conv = ConvId::direct(&self.account, friend);
        let (reply, answer) = oneshot::channel();
        let queued = self.input.send(Input::Cmd(Cmd::Message {
            conv: conv.clone(),
            to: friend.to_owned(),
            body,
            cid: cid.clone(),
            reply,
        }));
        async move {
            queued.map_err(|_| Error::Closed)?;
            answer.await.map_err(|_| Error::Closed)??;
            Ok(Sent { cid, conv })
        }
    }

    /// Bind the listener (once) and serve it: every connection is a handshake.
    async fn listen(self: &Arc<Self>) -> Result<SocketAddr> {
        let mut bound = self.listener.lock().await;
        if let Some(addr) = *bound {
            return Ok(addr);
        }
        let listener = TcpListener::bind(&self.listen)
            .await
            .map_err(|e| Error::Direct(format!("cannot listen on {}: {e}", self.listen)))?;
        let addr = listener.local_addr()?;
        let inner = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    match handshake::answer(
                        stream,
                        &inner.client_id,
                        &inner.expects,
                        &inner.registered,
                    )
                    .await
                    {
                        Ok((link, Some(done))) => {
                            if let Err(link) = done.send(link) {
                                debug!(channel = link.channel, "nobody waits for the channel");
                            }
                        }
                        Ok((link, None)) => debug!(channel = link.channel, "a channel twice"),
                        Err(err) => debug!(%from, %err, "a peer was not accepted"),
                    }
                });
            }
        });
        self.tasks().push(task);
        *bound = Some(addr);
        Ok(addr)
    }

    /// An authenticated link: the open channel to its peer (an older one to the same peer is
    /// closed).
    fn start(self: &Arc<Self>, link: Link) {
        let peer = link.peer.clone();
        let (out, rx) = mpsc::unbounded_channel();
        let channel = link.channel.clone();
        let task = tokio::spawn(channel::run(self.clone(), link, rx));
        if let Some(old) = self
            .chans()
            .insert(peer.clone(), Chan { channel, out, task })
        {
            let _ = old.out.send(Out::Close);
        }
        self.emit(Event::DirectOpened { peer });
    }

    async fn accept(self: &Arc<Self>, offer: &Offer) -> Result<()> {
        let link = handshake::dial(offer, &self.client_id).await?;
        self.start(link);
        Ok(())
    }

    /// Upload what is pending in `conv`, in the order it was said; what the server has leaves
    /// the pending table for the history cache.
    async fn upload_conv(&self, conv: &ConvId) -> Result<()> {
        let _one = self.uploading.lock().await;
        self.upload_locked(conv).await
    }

    /// As `upload_conv`, holding `uploading`.
    async fn upload_locked(&self, conv: &ConvId) -> Result<()> {
        let Some(peer) = conv.peer_of(&self.account).map(str::to_owned) else {
            return Ok(());
        };
        loop {
            let said = pending::list(&self.cache, conv)?;
            if said.is_empty() {
                return Ok(());
            }
            let chunk: Vec<Value> = said
                .iter()
                .take(UPLOAD_CHUNK)
                .map(|s| {
                    json!({ "from": s.from, "cid": s.cid, "body": s.body,
                            "channel": s.channel, "mac": s.mac })
                })
                .collect();
            let res = self
                .request("direct.upload", json!({ "peer": peer, "messages": chunk }))
                .await?;
            let stored: Vec<(String, String, u64)> = res["messages"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| {
                            Some((
                                m["from"].as_str()?.to_owned(),
                                m["cid"].as_str()?.to_owned(),
                                m["seq"].as_u64()?,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if stored.is_empty() {
                return Err(Error::Protocol(format!("direct.upload answered {res}")));
            }
            pending::settle(&self.cache, conv, &stored)?;
        }
    }

    /// Upload every conversation with something pending and no open channel.
    async fn upload_all(&self) -> Result<usize> {
        let mut n = 0;
        for conv in pending::conversations(&self.cache)? {
            let open = conv
                .peer_of(&self.account)
                .is_some_and(|peer| self.chans().contains_key(peer));
            if !open {
                n += pending::list(&self.cache, &conv)?.len();
                self.upload_conv(&conv).await?;
            }
        }
        Ok(n)
    }

    async fn on_hook(self: &Arc<Self>, hook: Hook) {
        match hook {
            Hook::Offer(json) => {
                let offer = match Offer::from_json(&json) {
                    Ok(offer) => offer,
                    Err(err) => return warn!(%err, "a direct.offer of another shape"),
                };
                if !self.auto_accept || offer.device != self.client_id {
                    return;
                }
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = inner.accept(&offer).await {
                        inner.emit(Event::DirectClosed {
                            peer: offer.from.clone(),
                            reason: format!("not opened: {err}"),
                        });
                    }
                });
            }
            Hook::Synced => {
                if let Err(err) = self.upload_all().await {
                    warn!(%err, "direct messages not uploaded yet");
                }
            }
        }
    }
}

impl Direct {
    pub(crate) fn new(
        opts: &Options,
        cache: Cache,
        input: mpsc::UnboundedSender<Input>,
        events: mpsc::UnboundedSender<Event>,
        mut hooks: mpsc::UnboundedReceiver<Hook>,
    ) -> Result<Direct> {
        pending::init(&cache)?;
        let inner = Arc::new(Inner {
            account: opts.account.clone(),
            client_id: opts.client_id(),
            listen: opts.direct_listen.clone(),
            advertise: opts.direct_advertise.clone(),
            auto_accept: opts.direct_auto_accept,
            request_timeout: opts.request_timeout,
            cache,
            input,
            events,
            listener: tokio::sync::Mutex::new(None),
            expects: Mutex::new(HashMap::new()),
            registered: tokio::sync::Notify::new(),
            channels: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            uploading: tokio::sync::Mutex::new(()),
            next_cid: AtomicU64::new(1),
            run: rand::random(),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            while let Some(hook) = hooks.recv().await {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.on_hook(hook).await;
            }
        });
        inner.tasks().push(task);
        Ok(Direct { inner })
    }

    /// Open a direct channel to `friend` (their most recently connected device): ask the
    /// server, listen, and wait until the friend's device has dialled and both tokens checked
    /// (at most the token's lifetime). Refused by the server when not friends, blocked or
    /// offline ([`Error::Refused`]). A channel already open to them is kept.
    pub async fn open(&self, friend: &str) -> Result<()> {
        self.open_to(friend, None).await
    }

    /// As [`Direct::open`], to one device of the friend (its name or client id).
    pub async fn open_to(&self, friend: &str, device: Option<&str>) -> Result<()> {
        let inner = &self.inner;
        if device.is_none() && self.is_open(friend) {
            return Ok(());
        }
        let bound = inner.listen().await?;
        let addr = inner.advertise.clone().unwrap_or_else(|| bound.to_string());
        let mut args = json!({ "peer": friend, "addr": addr });
        if let Some(device) = device {
            args["device"] = json!(device);
        }
        let res = inner.request("direct.open", args).await?;
        let field = |name: &str| {
            res[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Protocol(format!("direct.open answered {res}")))
        };
        let channel = field("channel")?;
        let token = wire::unhex(&field("token")?)
            .ok_or_else(|| Error::Protocol("a token that is not hex".into()))?;
        let key = wire::unhex(&field("key")?)
            .ok_or_else(|| Error::Protocol("a key that is not hex".into()))?;
        let lifetime = Duration::from_millis(res["lifetime_ms"].as_u64().unwrap_or(0));
        let (done, link) = oneshot::channel();
        {
            let mut expects = inner.expects.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            expects.retain(|_, e| e.deadline + Duration::from_secs(60) > now);
            expects.insert(
                channel.clone(),
                Expect {
                    token,
                    peer: friend.to_owned(),
                    peer_device: field("peer_device")?,
                    key,
                    deadline: now + lifetime,
                    used: false,
                    done: Some(done),
                },
            );
        }
        inner.registered.notify_waiters();
        // The handshake may begin just before the deadline: give it its own time after it.
        match tokio::time::timeout(lifetime + Duration::from_secs(10), link).await {
            Ok(Ok(link)) => {
                inner.start(link);
                Ok(())
            }
            _ => {
                if let Some(e) = inner
                    .expects
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&channel)
                {
                    e.done = None;
                }
                Err(Error::Direct(format!(
                    "{friend} did not connect within the token's lifetime ({lifetime:?})"
                )))
            }
        }
    }

    /// Dial the device that offered a channel (what a `direct.offer` notice says), for a client
    /// whose options turn `direct_auto_accept` off. The offerer checks the token (once, and
    /// not after its lifetime); this side checks the offerer's proof of it.
    pub async fn accept(&self, offer: &Offer) -> Result<()> {
        self.inner.accept(offer).await
    }

    /// Whether a channel to `friend` is open.
    pub fn is_open(&self, friend: &str) -> bool {
        self.inner.chans().contains_key(friend)
    }

    /// The friends with an open channel.
    pub fn open_peers(&self) -> Vec<String> {
        self.inner.chans().keys().cloned().collect()
    }

    /// A new `cid` for a direct message of this device.
    pub fn new_cid(&self) -> String {
        let n = self.inner.next_cid.fetch_add(1, Ordering::Relaxed);
        format!("{}-d{:08x}-{n}", self.inner.client_id, self.inner.run)
    }

    /// Send to `friend` over the open channel (returns once the friend's device has it), else
    /// through the server. If the channel ends before the friend acknowledged it, the message
    /// goes to the server with the channel's upload: no loss, and the server stores it once.
    pub async fn send(&self, friend: &str, body: Value) -> Result<Sent> {
        self.send_with_cid(friend, body, self.new_cid()).await
    }

    /// As [`Direct::send`] with a `cid` of the caller's choosing.
    pub async fn send_with_cid(&self, friend: &str, body: Value, cid: String) -> Result<Sent> {
        if !body.is_object() {
            return Err(Error::Protocol("a message body is a JSON object".into()));
        }
        let out = self.inner.chans().get(friend).map(|c| c.out.clone());
        if let Some(out) = out {
            let (reply, answer) = oneshot::channel();
            let sent = Out::Send {
                cid: cid.clone(),
                body: body.to_string(),
                reply,
            };
            if out.send(sent).is_ok() {
                return answer.await.map_err(|_| Error::Closed)?;
            }
        }
        // After an upload in progress (a channel that just ended), so that the server gets
        // the conversation in order.
        let queued = {
            let _order = self.inner.uploading.lock().await;
            self.inner.queue_message(friend, body, cid)
        };
        queued.await
    }

    /// Close the channel to `friend` (a `bye`), and upload what it said.
    pub async fn close(&self, friend: &str) {
        let chan = self.inner.chans().remove(friend);
        if let Some(chan) = chan {
            let _ = chan.out.send(Out::Close);
            let _ = chan.task.await;
        }
    }

    /// Close every channel (each uploads what it said, if the server is there).
    pub async fn close_all(&self) {
        let chans: Vec<Chan> = self.inner.chans().drain().map(|(_, c)| c).collect();
        for chan in chans {
            let _ = chan.out.send(Out::Close);
            let deadline = self.inner.request_timeout.min(Duration::from_secs(10));
            let _ = tokio::time::timeout(deadline, chan.task).await;
        }
    }

    /// Upload now what every conversation without an open channel has pending; how many
    /// messages were. Also done when a channel ends and after each sync with the server.
    pub async fn upload(&self) -> Result<usize> {
        self.inner.upload_all().await
    }

    /// What was said with `friend` over direct channels and the server does not have yet, in
    /// the order it was said (`seq` 0).
    pub fn pending(&self, friend: &str) -> Result<Vec<Message>> {
        let conv = ConvId::direct(&self.inner.account, friend);
        Ok(pending::list(&self.inner.cache, &conv)?
            .iter()
            .map(|s| s.message(&conv))
            .collect())
    }

    /// The address the listener is bound to (bound now if it is not yet).
    pub async fn listen_addr(&self) -> Result<SocketAddr> {
        self.inner.listen().await
    }
}

/// Was this message, which the server now delivers stamped, already had over a direct channel?
/// Then it leaves the pending table (the core caches it with its `seq` and does not yield it
/// again).
pub(crate) fn seen_directly(cache: &Cache, m: &Message) -> bool {
    let (Some(cid), None) = (&m.cid, m.conv.group_id()) else {
        return false;
    };
    match pending::take(cache, &m.conv, &m.from, cid) {
        Ok(found) => found.is_some(),
        Err(err) => {
            warn!(%err, "the pending direct messages could not be read");
            false
        }
    }
}
