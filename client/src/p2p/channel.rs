//! One open channel: messages out (each kept as pending-upload before it goes, acknowledged by
//! the peer), messages in (kept, yielded as message events, acknowledged), and its end: a `bye`,
//! or a failure of the connection, after which everything said over it, the unacknowledged
//! messages among it, goes to the server with `direct.upload` (the server path, in the order it
//! was said, stored once whatever the peer already had).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::handshake::Link;
use super::pending::{self, Said};
use super::wire::{self, Frame, message_mac};
use super::{Inner, now_ms};
use crate::client::Sent;
use crate::error::{Error, Result};
use crate::types::{ConvId, Event};

/// What the handles ask of a channel.
pub(crate) enum Out {
    Send {
        cid: String,
        body: String,
        reply: oneshot::Sender<Result<Sent>>,
    },
    Close,
}

/// A message sent and not yet acknowledged by the peer.
struct Unacked {
    cid: String,
    reply: oneshot::Sender<Result<Sent>>,
}

/// Run the channel until it ends, then hand what it said to the server.
pub(crate) async fn run(inner: Arc<Inner>, link: Link, mut out: mpsc::UnboundedReceiver<Out>) {
    let Link {
        channel,
        peer,
        key,
        stream,
    } = link;
    let conv = ConvId::direct(&inner.account, &peer);
    let (mut rd, mut wr) = stream.into_split();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let frame = wire::read(&mut rd).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).is_err() || end {
                return;
            }
        }
    });
    let mut unacked: Vec<Unacked> = Vec::new();
    let reason: String = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(Some(Frame::Msg { cid, ts, body, mac }))) => {
                    if !serde_json::from_str::<Value>(&body).is_ok_and(|b| b.is_object()) {
                        break format!("{peer} sent a body that is not a JSON object");
                    }
                    let said = Said {
                        channel: channel.clone(),
                        from: peer.clone(),
                        to: inner.account.clone(),
                        cid: cid.clone(),
                        ts,
                        body,
                        mac,
                    };
                    match pending::add(&inner.cache, &conv, &said) {
                        Ok(true) => inner.emit(Event::Message(said.message(&conv))),
                        Ok(false) => {}
                        Err(err) => {
                            // Not kept: not acknowledged, so the sender sends it through the
                            // server.
                            break format!("cannot keep a message: {err}");
                        }
                    }
                    if let Err(err) = wire::write(&mut wr, &Frame::Ack { cid }).await {
                        break format!("the connection failed: {err}");
                    }
                }
                Some(Ok(Some(Frame::Ack { cid }))) => {
                    if let Some(i) = unacked.iter().position(|u| u.cid == cid) {
                        let u = unacked.remove(i);
                        let _ = u.reply.send(Ok(Sent { cid: u.cid, conv: conv.clone() }));
                    }
                }
                Some(Ok(Some(Frame::Bye))) => break format!("closed by {peer}"),
                Some(Ok(Some(other))) => break format!("{peer} sent {other:?} on an open channel"),
                Some(Ok(None)) => break format!("{peer} closed the connection"),
                Some(Err(err)) => break format!("the connection failed: {err}"),
                None => break "the connection failed".to_owned(),
            },
            cmd = out.recv() => match cmd {
                Some(Out::Send { cid, body, reply }) => {
                    let said = Said {
                        channel: channel.clone(),
                        from: inner.account.clone(),
                        to: peer.clone(),
                        cid: cid.clone(),
                        ts: now_ms(),
                        mac: message_mac(&key, &channel, &cid, &body),
                        body,
                    };
                    if let Err(err) = pending::add(&inner.cache, &conv, &said) {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                    unacked.push(Unacked { cid: cid.clone(), reply });
                    let frame = Frame::Msg { cid, ts: said.ts, body: said.body, mac: said.mac };
                    if let Err(err) = wire::write(&mut wr, &frame).await {
                        break format!("the connection failed: {err}");
                    }
                }
                Some(Out::Close) | None => {
                    let _ = wire::write(&mut wr, &Frame::Bye).await;
                    break "closed".to_owned();
                }
            },
        }
    };
    reader.abort();
    // Until the upload below is queued, every other message to this friend waits (the
    // server-path sends take the same lock): the server gets the conversation in order.
    let order = inner.uploading.lock().await;
    inner.forget_channel(&peer, &channel);
    out.close();
    let mut later = Vec::new();
    while let Some(cmd) = out.recv().await {
        if let Out::Send { cid, body, reply } = cmd {
            later.push((cid, body, reply));
        }
    }
    debug!(%peer, %channel, %reason, unacked = unacked.len(), "direct channel ended");
    inner.emit(Event::DirectClosed {
        peer: peer.clone(),
        reason,
    });
    let uploaded = inner.upload_locked(&conv).await;
    if let Err(err) = &uploaded {
        warn!(%err, %conv, "direct messages not uploaded yet (kept for the next time online)");
    }
    for u in unacked {
        let result = match &uploaded {
            Ok(()) => Ok(Sent {
                cid: u.cid,
                conv: conv.clone(),
            }),
            Err(err) => Err(Error::Direct(format!(
                "the channel ended before the peer had it and the server could not be told yet \
                 ({err}); it is kept and uploaded when online"
            ))),
        };
        let _ = u.reply.send(result);
    }
    // What came after the end never went over the channel: the server path, in order.
    for (cid, body, reply) in later {
        let body = serde_json::from_str(&body).unwrap_or_default();
        let queued = inner.queue_message(&peer, body, cid);
        tokio::spawn(async move {
            let _ = reply.send(queued.await);
        });
    }
    drop(order);
}
