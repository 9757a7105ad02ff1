//! The Rust SDK as a peer of the Python interop scenario (`tests/python/interop.py --peer-cmd`):
//! one JSON object per line on stdin, one answer per line on stdout, frames in the JSON form of
//! docs/PROTOCOL.md. The contract is in interop.py's module docs; in short:
//!
//! ```text
//! {"id":1,"op":"connect","transport":"websocket|quic|webtransport","host":"localhost","tcpPort":8443,
//!  "udpPort":4433,"ca":"…/ca.pem","token":"<jwt>","resume":[…]}   → {"id":1,"ok":true,"frame":{welcome}}
//! {"id":2,"op":"send","frame":{"kind":"send",…}}                   → {"id":2,"ok":true}
//! {"id":3,"op":"expect","match":[{…}],"timeoutMs":10000}           → {"id":3,"ok":true,"frame":{…}}
//! {"id":4,"op":"close"}                                            → {"id":4,"ok":true,"anomalies":[],"duplicates":[]}
//! ```
//!
//! A `Send` is handed to [`Client::send`]; its answer (`Sent`, or `Error` naming it) joins the
//! received frames, as it would arrive on the wire. Auto-ack is off: the scenario acks itself.

use std::collections::VecDeque;
use std::time::Duration;

use haberci_client::{
    Client, ClientConfig, ConnectError, Event, Events, Roots, SendError, Transport,
};
use haberci_wire::{ClientFrame, ErrorCode, ErrorFrame, Pong, ResumePosition, ServerFrame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Peer {
    client: Option<Client>,
    events: Option<Events>,
    transport: String,
    /// Frames received and not yet taken by an `expect`, in arrival order.
    queue: VecDeque<Value>,
    answers_tx: mpsc::UnboundedSender<Value>,
    answers: mpsc::UnboundedReceiver<Value>,
    closed: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    haberci_kit::crypto::install_crypto_provider();
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let mut peer = Peer {
        client: None,
        events: None,
        transport: String::new(),
        queue: VecDeque::new(),
        answers_tx,
        answers,
        closed: None,
    };
    while let Some(line) = lines.recv().await {
        let request: Value = match serde_json::from_str(&line) {
            Ok(value) => value,
            Err(err) => {
                println!(
                    "{}",
                    json!({"ok": false, "error": format!("bad request: {err}")})
                );
                continue;
            }
        };
        let mut reply = peer.handle(&request).await;
        reply["id"] = request["id"].clone();
        println!("{reply}");
    }
}

impl Peer {
    async fn handle(&mut self, request: &Value) -> Value {
        match request["op"].as_str() {
            Some("connect") => self.connect(request).await,
            Some("send") => self.send(&request["frame"]),
            Some("expect") => {
                let timeout =
                    Duration::from_millis(request["timeoutMs"].as_u64().unwrap_or(10_000));
                let patterns = request["match"].as_array().cloned().unwrap_or_default();
                self.expect(&patterns, timeout).await
            }
            Some("close") => {
                if let Some(client) = self.client.take() {
                    client.close().await;
                }
                // The SDK drops duplicates and holds seqs above a gap, so none reach here.
                json!({"ok": true, "anomalies": [], "duplicates": []})
            }
            other => json!({"ok": false, "error": format!("unknown op {other:?}")}),
        }
    }

    async fn connect(&mut self, request: &Value) -> Value {
        let host = request["host"].as_str().unwrap_or("localhost");
        let transport = request["transport"].as_str().unwrap_or_default().to_owned();
        let target = match transport.as_str() {
            "websocket" => Transport::WebSocket {
                url: format!("wss://{host}:{}/v1/ws", request["tcpPort"]),
            },
            "quic" => Transport::Quic {
                addr: format!("{host}:{}", request["udpPort"]),
            },
            "webtransport" => Transport::WebTransport {
                url: format!("https://{host}:{}/v1/rt", request["udpPort"]),
            },
            other => {
                return json!({"ok": false, "error": format!("transport {other} is not offered by this peer")});
            }
        };
        let ca = request["ca"].as_str().unwrap_or(".dev/certs/ca.pem");
        let token = request["token"].as_str().unwrap_or_default();
        let mut config = ClientConfig::new(target, Roots::PemFile(ca.into()), token);
        config.auto_ack = false;
        config.client_name = "haberci-rust-interop-peer".into();
        config.resume = serde_json::from_value::<Vec<ResumePosition>>(request["resume"].clone())
            .unwrap_or_default();
        self.transport = transport;
        match Client::connect(config).await {
            Ok((client, events)) => {
                let welcome = ServerFrame::Welcome(client.welcome().clone());
                self.client = Some(client);
                self.events = Some(events);
                self.queue.clear();
                self.closed = None;
                json!({"ok": true, "frame": welcome})
            }
            Err(ConnectError::Closed {
                code,
                reason,
                retry_after,
                supported_versions,
            }) => {
                let closing = json!({
                    "kind": "closing", "code": code, "reason": reason,
                    "retryAfterMs": retry_after.map(|d| d.as_millis()),
                    "supportedVersions": supported_versions,
                });
                json!({"ok": false, "error": format!("closed: {}", code.name()), "closing": closing, "close": self.close_of(code)})
            }
            Err(err) => {
                json!({"ok": false, "error": err.to_string(), "closing": null, "close": null})
            }
        }
    }

    /// The transport close a code comes with.
    fn close_of(&self, code: ErrorCode) -> Value {
        if self.transport == "websocket" {
            json!({"kind": "websocket", "code": code.websocket_close_code(), "reason": code.name()})
        } else {
            json!({"kind": "quic-app", "code": code.quic_code(), "reason": code.name()})
        }
    }

    fn send(&mut self, frame: &Value) -> Value {
        let Some(client) = self.client.clone() else {
            return json!({"ok": false, "error": "not connected"});
        };
        let frame: ClientFrame = match serde_json::from_value(frame.clone()) {
            Ok(frame) => frame,
            Err(err) => return json!({"ok": false, "error": format!("bad frame: {err}")}),
        };
        let done = match frame {
            ClientFrame::Send(send) => {
                let answers = self.answers_tx.clone();
                tokio::spawn(async move {
                    let id = send.client_msg_id;
                    let frame = match client.send(send).await {
                        Ok(sent) => ServerFrame::Sent(sent),
                        Err(SendError::Refused { code, message }) => {
                            ServerFrame::Error(ErrorFrame {
                                code,
                                message,
                                client_msg_id: Some(id),
                            })
                        }
                        Err(other) => {
                            let _ = answers
                                .send(json!({"kind": "peer-error", "error": other.to_string()}));
                            return;
                        }
                    };
                    let _ = answers.send(serde_json::to_value(frame).unwrap_or_default());
                });
                Ok(())
            }
            ClientFrame::Ack(ack) => client.ack(ack.conversation_id, ack.seq),
            ClientFrame::Read(read) => client.read(read.conversation_id, read.seq),
            ClientFrame::Typing(typing) => client.typing(typing.conversation_id, typing.state),
            ClientFrame::PresenceWatch(watch) => client.presence_watch(watch.user_ids),
            ClientFrame::RefreshAuth(refresh) => client.refresh_auth(refresh.access_token),
            ClientFrame::Ping(ping) => {
                // The SDK pings on its own; answer as the server would so `expect pong` holds.
                let answers = self.answers_tx.clone();
                tokio::spawn(async move {
                    if client.ping().await.is_ok() {
                        let pong = ServerFrame::Pong(Pong { nonce: ping.nonce });
                        let _ = answers.send(serde_json::to_value(pong).unwrap_or_default());
                    }
                });
                Ok(())
            }
            ClientFrame::Hello(_) => {
                return json!({"ok": false, "error": "Hello is sent by connect"});
            }
        };
        match done {
            Ok(()) => json!({"ok": true}),
            Err(err) => json!({"ok": false, "error": err.to_string()}),
        }
    }

    async fn expect(&mut self, patterns: &[Value], timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self
                .queue
                .iter()
                .position(|frame| patterns.iter().any(|p| matches(p, frame)))
            {
                let frame = self.queue.remove(at);
                return json!({"ok": true, "frame": frame});
            }
            if let Some(why) = &self.closed {
                return json!({"ok": false, "error": format!("closed: {why}"), "closing": null, "close": null});
            }
            let event = async {
                match self.events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return json!({"ok": false, "error": format!("timeout after {timeout:?}")});
                }
                answer = self.answers.recv() => {
                    if let Some(answer) = answer {
                        self.queue.push_back(answer);
                    }
                }
                event = event => match event {
                    Some(event) => {
                        if let Some(frame) = frame_of(&event) {
                            self.queue.push_back(serde_json::to_value(frame).unwrap_or_default());
                        }
                        if let Event::Disconnected(reason) = event {
                            self.closed = Some(format!("{reason:?}"));
                        }
                    }
                    None => self.closed = Some("events ended".into()),
                },
            }
        }
    }
}

/// The frame an event came from, as it was on the wire.
fn frame_of(event: &Event) -> Option<ServerFrame> {
    Some(match event {
        Event::Message(m) => ServerFrame::Message(m.clone()),
        Event::Status(s) => ServerFrame::Status(*s),
        Event::Typing(t) => ServerFrame::Typing(*t),
        Event::Presence(p) => ServerFrame::Presence(*p),
        Event::Notification(n) => ServerFrame::Notification(n.clone()),
        Event::Error(e) => ServerFrame::Error(e.clone()),
        Event::Closing(c) => ServerFrame::Closing(c.clone()),
        _ => return None,
    })
}

/// A pattern matches when each of its keys equals the frame's, recursively.
fn matches(pattern: &Value, frame: &Value) -> bool {
    match (pattern, frame) {
        (Value::Object(p), Value::Object(f)) => p
            .iter()
            .all(|(key, want)| f.get(key).is_some_and(|have| matches(want, have))),
        _ => pattern == frame,
    }
}
