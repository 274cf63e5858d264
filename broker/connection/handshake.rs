//! The CONNECT handshake: protocol detection, authentication, client id, keepalive, will,
//! session attach and the CONNACK; then the client joins the worlds its account lives in (the
//! IM world's sync starts there).

use super::*;
use crate::identity;
use crate::logins::Verdict;

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Read up to the CONNECT; `None` when the peer went away or spoke something else.
    pub(super) async fn read_connect(
        &mut self,
    ) -> std::io::Result<Option<(wire::Wire, Box<ConnectIn>)>> {
        let proto = loop {
            match wire::detect(&self.buf) {
                Detected::Proto(proto) => break proto,
                Detected::NeedMore => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Detected::Unsupported { level: Some(level) } => {
                    // [MQTT-3.1.2-2]: answer an unknown protocol level (v5 0x84, v3 0x01, as
                    // the CONNECT is shaped) and close.
                    let max = self.broker.config.limits.max_packet_size;
                    let answer = loop {
                        match wire::unsupported_answer(&self.buf, level, max) {
                            Some(proto) => break proto,
                            None if self.fill().await? => {}
                            None => return Ok(None),
                        }
                    };
                    tracing::debug!(level, ?answer, "unsupported protocol level");
                    let mut w = wire::Wire::new(answer, 0);
                    w.connack(false, reason::UNSUPPORTED_PROTOCOL, ConnackProps::default());
                    self.flush(&mut w).await?;
                    return Ok(None);
                }
                Detected::Unsupported { level: None } => return Ok(None),
            }
        };
        let mut wire = wire::Wire::new(proto, self.broker.config.limits.max_packet_size);
        loop {
            match wire.decode(&mut self.buf) {
                Ok(Some(Inbound::Connect(connect))) => return Ok(Some((wire, connect))),
                Ok(Some(_)) => return Ok(None),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(err) => {
                    tracing::debug!(?err, "malformed CONNECT");
                    let code = match err {
                        DecodeError::MaxSizeExceeded { .. } => reason::PACKET_TOO_LARGE,
                        DecodeError::InvalidClientId => reason::CLIENT_ID_NOT_VALID,
                        _ => reason::MALFORMED,
                    };
                    wire.connack(false, code, ConnackProps::default());
                    self.flush(&mut wire).await?;
                    return Ok(None);
                }
            }
        }
    }
}

impl Conn {
    /// Check the CONNECT, answer it (into `wire`: `serve` writes it), and attach the session.
    /// `None`: refused.
    pub(super) async fn accept(
        broker: &Arc<Broker>,
        wire: &mut wire::Wire,
        connect: ConnectIn,
        peer: SocketAddr,
        websocket: bool,
    ) -> Option<Conn> {
        let proto = wire.proto();
        let limits = &broker.config.limits;
        let refuse = |wire: &mut wire::Wire, code: u8, why: &str| {
            tracing::info!(%peer, client_id = %connect.client_id, code, why, "connection refused");
            wire.connack(false, code, ConnackProps::default());
            None
        };
        if broker.metrics.clients_connected.load(Ordering::Relaxed) as usize
            >= limits.max_connections
        {
            return refuse(wire, reason::QUOTA_EXCEEDED, "too many connections");
        }
        if connect.auth_method.is_some() {
            return refuse(
                wire,
                reason::BAD_AUTH_METHOD,
                "enhanced authentication is not supported",
            );
        }

        // Who is it?
        let username = match &connect.username {
            Some(name) => {
                let password = connect.password.clone().unwrap_or_default().to_vec();
                let verdict = broker
                    .logins
                    .check(&broker.accounts, peer.ip(), name, password)
                    .await;
                match verdict {
                    Verdict::Good => Some(name.to_string()),
                    Verdict::Bad => {
                        return refuse(wire, reason::BAD_USER_OR_PASSWORD, "bad password");
                    }
                    Verdict::NoAccount if broker.config.allow_anonymous => None,
                    Verdict::NoAccount => {
                        return refuse(wire, reason::BAD_USER_OR_PASSWORD, "no such account");
                    }
                    // v3 has no busy: its nearest is 0x03 Server unavailable (`wire::connack`).
                    Verdict::Busy => {
                        return refuse(wire, reason::SERVER_BUSY, "too many password checks");
                    }
                    Verdict::Failed(err) => {
                        tracing::error!(cause = %err, "account lookup failed");
                        return refuse(wire, reason::SERVER_UNAVAILABLE, "account store failed");
                    }
                    Verdict::Lost => {
                        return refuse(wire, reason::SERVER_UNAVAILABLE, "account check failed");
                    }
                }
            }
            None if broker.config.allow_anonymous => None,
            None => return refuse(wire, reason::NOT_AUTHORIZED, "anonymous access is off"),
        };

        // Which session?
        let mut props = ConnackProps {
            receive_max: limits.receive_maximum,
            max_packet_size: limits.max_packet_size,
            topic_alias_max: if proto == Proto::V5 {
                limits.max_topic_alias
            } else {
                0
            },
            ..Default::default()
        };
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if proto == Proto::V3 && !connect.clean_start {
                // [MQTT-3.1.3-8]
                return refuse(
                    wire,
                    reason::CLIENT_ID_NOT_VALID,
                    "empty client id needs a clean session",
                );
            }
            let assigned = format!("mqtter-{:016x}", rand::random::<u64>());
            props.assigned_client_id = Some(ByteString::from(assigned.as_str()));
            Arc::from(assigned)
        } else {
            Arc::from(&*connect.client_id)
        };
        let expiry = match proto {
            Proto::V3 => connect.session_expiry,
            Proto::V5 => {
                let granted = connect.session_expiry.min(limits.max_session_expiry);
                if granted != connect.session_expiry {
                    props.session_expiry = Some(granted);
                }
                granted
            }
        };
        let mut keep_alive = connect.keep_alive;
        if proto == Proto::V5 && keep_alive > limits.max_keepalive {
            keep_alive = limits.max_keepalive;
            props.server_keepalive = Some(keep_alive);
        }

        if let Some(will) = &connect.will {
            if topic::validate_name(&will.msg.topic).is_err() {
                return refuse(wire, reason::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if !broker.acl.allows(
                username.as_deref(),
                &client_id,
                Action::Publish,
                &will.msg.topic,
            ) {
                return refuse(wire, reason::NOT_AUTHORIZED, "will topic not allowed");
            }
        }

        // `<account>` and `<account>:<device>` belong to that account: anyone else, anonymous
        // or not, is refused such a client id (see `identity`).
        let named = identity::namespace(&client_id);
        if username.as_deref() != Some(named)
            && broker
                .gate
                .im
                .with_graph(|g| g.account_kind(named).is_some())
        {
            return refuse(
                wire,
                reason::CLIENT_ID_NOT_VALID,
                "client id names another account",
            );
        }

        // The place is taken here, atomically, after every other check (the early check above
        // only spares refused clients the password hash); `serve` gives it back.
        if !broker.metrics.try_connect(limits.max_connections) {
            return refuse(wire, reason::QUOTA_EXCEEDED, "too many connections");
        }
        let owner = broker.next_token();
        let Some((session, present)) = broker.attach(
            &client_id,
            username.as_deref(),
            connect.clean_start,
            expiry,
            owner,
        ) else {
            broker.metrics.disconnected();
            return refuse(
                wire,
                reason::CLIENT_ID_NOT_VALID,
                "client id in use by another identity",
            );
        };
        // The session's copy: one allocation for the id, however many hold it.
        let client_id = session.client_id.clone();
        if websocket {
            broker.metrics.ws_connected.fetch_add(1, Ordering::Relaxed);
        }
        // The CONNACK is bound by the client's Maximum Packet Size too [MQTT-3.1.2-24].
        wire.set_client_limits(connect.max_packet_size, connect.topic_alias_max, &client_id);
        wire.connack(present, reason::SUCCESS, props);
        let mut will = connect.will;
        if let Some(will) = will.as_mut() {
            will.msg.publisher = Some(client_id.clone());
            will.account = username.as_deref().map(std::sync::Arc::from);
        }
        broker.remember_will(&client_id, owner, will.as_ref());
        tracing::debug!(%peer, %client_id, ?proto, present, expiry, keep_alive, "client connected");
        let extra = (username.is_some() || will.is_some()).then(|| {
            Box::new(Extra {
                username,
                will,
                ..Extra::default()
            })
        });
        let mut conn = Conn {
            broker: broker.clone(),
            session,
            owner,
            keep_alive_ms: u32::from(keep_alive) * 1500,
            connect_expiry: expiry,
            window: connect.receive_max.min(limits.max_inflight).max(1),
            proto,
            redrain: false,
            websocket,
            extra,
            flow: None,
        };
        if present {
            // [MQTT-4.4.0-1]: resend what was in flight, with the original ids, within the
            // client's Receive Maximum [MQTT-4.9.0-2].
            let mut out = Vec::new();
            conn.session.lock().resend_all(conn.window(), &mut out);
            conn.send(wire, out);
        }
        // After CONNACK: each world the client belongs to queues its sync (the IM world: the
        // roster, every missed message, `sync.done`).
        let joining = Joining {
            token: owner,
            account: conn.username(),
            client_id: &client_id,
            session: &conn.session,
            v5: proto == Proto::V5,
            user_properties: &connect.user_properties,
        };
        let now = now_ms();
        let mut members = Members::default();
        for (at, world) in broker.worlds.iter().enumerate() {
            if let Some(member) = world.clone().join(&joining, now) {
                members.push(at, member);
            }
        }
        if !members.is_empty() {
            conn.extra_mut().members = members;
        }
        // The CONNACK and what follows it are written by `serve`: awaiting here, with the new
        // `Conn` alive, would size every connection's task for this state.
        Some(conn)
    }
}
