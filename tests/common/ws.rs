//! A hand-made WebSocket client over a plain `TcpStream`: the HTTP upgrade, then masked
//! client frames carrying exactly the MQTT bytes a test builds, so framing can be checked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{WAIT, raw};

/// A hand-made WebSocket client: the HTTP upgrade, then masked client frames.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    mqtt: Vec<u8>,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455's example: the accept value for `KEY`.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl RawWs {
    /// Send the upgrade request for `path` and return the connection and the response head.
    pub fn upgrade(addr: SocketAddr, path: &str, protocols: Option<&str>) -> (RawWs, String) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(protocols) = protocols {
            request.push_str(&format!("Sec-WebSocket-Protocol: {protocols}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
            mqtt: Vec::new(),
        };
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
                ws.buf.drain(..end + 4);
                break head;
            }
            if !ws.fill() {
                break String::from_utf8_lossy(&ws.buf).into_owned();
            }
        };
        (ws, head)
    }

    /// Read more; `false` once the server closed.
    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("nothing from the server within {WAIT:?}")
            }
            Err(_) => false,
        }
    }

    /// Send one masked frame with `opcode` (0x1 text, 0x2 binary).
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x80 | opcode];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend((payload.len() as u16).to_be_bytes());
        }
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next frame from the server: (opcode, payload); `None` when the connection closed.
    pub fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => {
                        let mut bytes = [0u8; 8];
                        bytes.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(bytes) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next MQTT packet carried in binary frames.
    pub fn recv_mqtt(&mut self) -> raw::Packet {
        self.next_mqtt()
            .expect("the connection closed while an MQTT packet was expected")
    }

    /// The next MQTT packet carried in binary frames; `None` once the server closed (a close
    /// frame, or the end of the stream).
    pub fn next_mqtt(&mut self) -> Option<raw::Packet> {
        loop {
            if let Some(packet) = raw::take_packet(&mut self.mqtt) {
                return Some(packet);
            }
            match self.recv_frame() {
                Some((0x2, payload)) => self.mqtt.extend(payload),
                Some((0x8, _)) | None => return None,
                Some((opcode, payload)) => {
                    panic!("expected a binary frame, got opcode {opcode}: {payload:?}")
                }
            }
        }
    }
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
