//! Meeting the peer: the listener's side (`answer`) and the dialer's (`dial`). Each side proves
//! it holds the channel's token with a MAC over the other's fresh nonce, bound to the channel and
//! both client ids, so the token never crosses the wire and a recorded handshake cannot be
//! replayed. The listener accepts a token once, from the device it was given for, and not after
//! its lifetime; a wrong proof does not use it up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::wire::{self, Frame, hex, mac, same, unhex};
use crate::error::{Error, Result};

const NO_SUCH_CHANNEL: &str = "no such channel";

/// How long a handshake may take once the TCP connection is there.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A `direct.offer` as the peer's device received it (docs/PROTOCOL.md 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub channel: String,
    /// The person who offers, and their device (the listener).
    pub from: String,
    pub from_device: String,
    /// The device the offer is for (this one).
    pub device: String,
    pub addr: String,
    /// The channel's token (hex).
    pub token: String,
    pub lifetime_ms: u64,
    /// This side's channel key (hex).
    pub key: String,
}

impl Offer {
    /// From the notice's envelope.
    pub fn from_json(json: &Value) -> Result<Offer> {
        let s = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::Protocol(format!("a direct.offer without {name:?}")))
        };
        Ok(Offer {
            channel: s("channel")?,
            from: s("from")?,
            from_device: s("from_device")?,
            device: s("device")?,
            addr: s("addr")?,
            token: s("token")?,
            lifetime_ms: json.get("lifetime_ms").and_then(Value::as_u64).unwrap_or(0),
            key: s("key")?,
        })
    }
}

/// A channel the listener waits for: what `direct.open` answered.
pub(crate) struct Expect {
    pub token: Vec<u8>,
    pub peer: String,
    pub peer_device: String,
    pub key: Vec<u8>,
    /// The token's lifetime, counted from the answer's arrival.
    pub deadline: Instant,
    pub used: bool,
    /// Told the open channel.
    pub done: Option<oneshot::Sender<Link>>,
}

/// An authenticated connection to the peer.
pub(crate) struct Link {
    pub channel: String,
    pub peer: String,
    pub key: Vec<u8>,
    pub stream: TcpStream,
}

fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn proof(
    token: &[u8],
    role: &str,
    channel: &str,
    prover: &str,
    verifier: &str,
    nonce: &str,
) -> String {
    mac(
        token,
        &[
            b"mqtter-direct-auth",
            role.as_bytes(),
            channel.as_bytes(),
            prover.as_bytes(),
            verifier.as_bytes(),
            nonce.as_bytes(),
        ],
    )
}

async fn refuse(stream: &mut TcpStream, reason: &str) -> Error {
    let _ = wire::write(
        stream,
        &Frame::Refused {
            reason: reason.to_owned(),
        },
    )
    .await;
    Error::Direct(format!("refused the peer: {reason}"))
}

async fn next(stream: &mut TcpStream) -> Result<Frame> {
    match tokio::time::timeout(HANDSHAKE, wire::read(stream)).await {
        Ok(Ok(Some(frame))) => Ok(frame),
        Ok(Ok(None)) => Err(Error::Direct("the peer closed the connection".into())),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::Direct("the peer's handshake took too long".into())),
    }
}

/// The listener's side: who dials, for which channel, and do they hold its token? The open
/// link, with whoever waits for it.
pub(crate) async fn answer(
    mut stream: TcpStream,
    me_device: &str,
    expects: &Mutex<HashMap<String, Expect>>,
    registered: &Notify,
) -> Result<(Link, Option<oneshot::Sender<Link>>)> {
    let Frame::Hello {
        channel,
        device,
        nonce: their_nonce,
    } = next(&mut stream).await?
    else {
        return Err(refuse(&mut stream, "a channel begins with hello").await);
    };
    let check = |expects: &HashMap<String, Expect>| -> std::result::Result<Vec<u8>, &'static str> {
        let expect = expects.get(&channel).ok_or(NO_SUCH_CHANNEL)?;
        if expect.used {
            return Err("the token was used already");
        }
        if Instant::now() > expect.deadline {
            return Err("the token expired");
        }
        if expect.peer_device != device {
            return Err("the token is for another device");
        }
        Ok(expect.token.clone())
    };
    // The offer reaches the peer as the answer reaches this side, which registers the channel
    // after it: a dialer may come first, and is given a moment.
    let deadline = Instant::now() + HANDSHAKE / 2;
    let checked = loop {
        let notified = registered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let checked = check(&expects.lock().unwrap_or_else(|e| e.into_inner()));
        match checked {
            Err(NO_SUCH_CHANNEL) if Instant::now() < deadline => {
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
            checked => break checked,
        }
    };
    let token = match checked {
        Ok(token) => token,
        Err(reason) => return Err(refuse(&mut stream, reason).await),
    };
    let my_nonce = nonce();
    let challenge = Frame::Challenge {
        proof: proof(
            &token,
            "listener",
            &channel,
            me_device,
            &device,
            &their_nonce,
        ),
        nonce: my_nonce.clone(),
    };
    wire::write(&mut stream, &challenge).await?;
    let Frame::Auth { proof: given } = next(&mut stream).await? else {
        return Err(refuse(&mut stream, "expected auth").await);
    };
    let wanted = proof(&token, "dialer", &channel, &device, me_device, &my_nonce);
    if !same(&given, &wanted) {
        return Err(refuse(&mut stream, "wrong token").await);
    }
    let taken = {
        let mut expects = expects.lock().unwrap_or_else(|e| e.into_inner());
        match check(&expects) {
            Ok(_) => {
                let expect = expects.get_mut(&channel).expect("checked");
                expect.used = true;
                Ok((expect.peer.clone(), expect.key.clone(), expect.done.take()))
            }
            Err(reason) => Err(reason),
        }
    };
    let (peer, key, done) = match taken {
        Ok(t) => t,
        Err(reason) => return Err(refuse(&mut stream, reason).await),
    };
    wire::write(&mut stream, &Frame::Open).await?;
    let link = Link {
        channel,
        peer,
        key,
        stream,
    };
    Ok((link, done))
}

/// The dialer's side: connect to the offer's address, prove the token, check the listener's.
pub(crate) async fn dial(offer: &Offer, me_device: &str) -> Result<Link> {
    let token = unhex(&offer.token)
        .ok_or_else(|| Error::Protocol("a direct.offer whose token is not hex".into()))?;
    let key = unhex(&offer.key)
        .ok_or_else(|| Error::Protocol("a direct.offer whose key is not hex".into()))?;
    let mut stream = match tokio::time::timeout(HANDSHAKE, TcpStream::connect(&offer.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(Error::Direct(format!("cannot reach {}: {err}", offer.addr))),
        Err(_) => {
            return Err(Error::Direct(format!(
                "cannot reach {} in time",
                offer.addr
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let my_nonce = nonce();
    let hello = Frame::Hello {
        channel: offer.channel.clone(),
        device: me_device.to_owned(),
        nonce: my_nonce.clone(),
    };
    wire::write(&mut stream, &hello).await?;
    let (given, their_nonce) = match next(&mut stream).await? {
        Frame::Challenge { proof, nonce } => (proof, nonce),
        Frame::Refused { reason } => {
            return Err(Error::Direct(format!(
                "refused by {}: {reason}",
                offer.from
            )));
        }
        _ => return Err(refuse(&mut stream, "expected a challenge").await),
    };
    let wanted = proof(
        &token,
        "listener",
        &offer.channel,
        &offer.from_device,
        me_device,
        &my_nonce,
    );
    if !same(&given, &wanted) {
        return Err(refuse(&mut stream, "the listener does not hold the token").await);
    }
    let auth = Frame::Auth {
        proof: proof(
            &token,
            "dialer",
            &offer.channel,
            me_device,
            &offer.from_device,
            &their_nonce,
        ),
    };
    wire::write(&mut stream, &auth).await?;
    match next(&mut stream).await? {
        Frame::Open => Ok(Link {
            channel: offer.channel.clone(),
            peer: offer.from.clone(),
            key,
            stream,
        }),
        Frame::Refused { reason } => Err(Error::Direct(format!(
            "refused by {}: {reason}",
            offer.from
        ))),
        _ => Err(refuse(&mut stream, "expected open").await),
    }
}
