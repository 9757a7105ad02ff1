//! A terminal chat over one realtime connection: connect, print every event, and send each
//! line typed on stdin to one user.
//!
//! ```text
//! HABERCI_TOKEN=<access token> cargo run -p haberci-client --example chat -- \
//!     [--quic localhost:4433 | --webtransport https://localhost:4433/v1/rt | --websocket wss://localhost:8443/v1/ws] \
//!     [--ca .dev/certs/ca.pem] [--to <user id>]
//! ```
//!
//! The access token comes from the HTTP API (`POST /v1/auth/login` or `/register`, field
//! `accessToken`): logging in is not the realtime client's job. Without `--to` it only
//! listens. End with Ctrl-D (or Ctrl-C).

use std::path::PathBuf;

use anyhow::{Context, bail};
use haberci_client::{Client, ClientConfig, Event, Roots, SendError, Transport, UserId};

const USAGE: &str = "usage: HABERCI_TOKEN=… chat [--quic HOST:PORT | --webtransport https://HOST:PORT/v1/rt | --websocket wss://HOST:PORT/v1/ws] [--ca PEM] [--to USER_ID]";

struct Args {
    transport: Transport,
    ca: PathBuf,
    to: Option<UserId>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        transport: Transport::Quic {
            addr: "localhost:4433".into(),
        },
        ca: PathBuf::from(".dev/certs/ca.pem"),
        to: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || {
            argv.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--quic" => args.transport = Transport::Quic { addr: value()? },
            "--websocket" => args.transport = Transport::WebSocket { url: value()? },
            "--webtransport" => args.transport = Transport::WebTransport { url: value()? },
            "--ca" => args.ca = value()?.into(),
            "--to" => {
                let id = value()?;
                args.to = Some(id.parse().map_err(|e| anyhow::anyhow!("--to {id}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HABERCI_LOG"))
        .init();
    let args = parse_args()?;
    let token = std::env::var("HABERCI_TOKEN").context("set HABERCI_TOKEN to an access token")?;
    let config = ClientConfig::new(args.transport, Roots::PemFile(args.ca), token);
    let (client, mut events) = Client::connect(config).await?;
    let welcome = client.welcome();
    println!(
        "connected as {} (session {}); idle timeout {} ms",
        welcome.user_id, welcome.session_id, welcome.limits.idle_timeout_ms
    );

    // stdin is blocking: read it on its own thread and hand lines over.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut sends = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Message(m)) => println!("[{} #{}] {}: {}", m.conversation_id, m.seq, m.sender_id, m.content),
                Some(Event::Status(s)) => println!("[{}] {} delivered {:?} read {:?}", s.conversation_id, s.user_id, s.delivered, s.read),
                Some(Event::Typing(t)) => println!("[{}] {} {:?}", t.conversation_id, t.user_id, t.state),
                Some(Event::Presence(p)) => println!("{} online: {}", p.user_id, p.online),
                Some(Event::Error(e)) => println!("error: {} ({})", e.code, e.message),
                Some(Event::Closing(c)) => println!("server closing: {} ({})", c.code, c.reason),
                Some(Event::Disconnected(reason)) => { println!("disconnected: {reason}"); break; }
                Some(other) => println!("{other:?}"),
                None => break,
            },
            line = lines.recv() => {
                let Some(line) = line else {
                    // End of input: let the sends in flight get their answers first.
                    while sends.join_next().await.is_some() {}
                    break;
                };
                let Some(to) = args.to else {
                    println!("(listening only: pass --to USER_ID to send)");
                    continue;
                };
                // Each send waits for its own answer without holding up the events.
                let client = client.clone();
                sends.spawn(async move {
                    match client.send(haberci_client::text_to(to, line)).await {
                        Ok(sent) => println!("sent: [{} #{}]", sent.conversation_id, sent.seq),
                        Err(SendError::Refused { code, message }) => println!("refused: {code} ({message})"),
                        Err(err) => println!("not sent: {err}"),
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    println!("positions to resume from: {:?}", client.positions());
    Ok(())
}
