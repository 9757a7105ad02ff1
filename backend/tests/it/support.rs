//! Driving the API router like a gateway would: each request carries the peer address of the
//! connection (`ConnectInfo`) and, from a trusted (loopback) peer, the client's IP in
//! `x-haberci-client-ip` with the internal secret that makes the API believe it. Every test uses its own random client IP and usernames, so tests
//! running in parallel (nextest: one process each) never share a rate-limit bucket or a name.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use haberci_backend::api::{self, AppState};
use haberci_backend::auth::keys::KeyStore;
use haberci_backend::config::{ApiSettings, InternalToken, Rate, RateLimits};

use crate::env;

/// Bounds every wait on an event.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A peer address the default settings trust (a gateway on loopback).
pub const GATEWAY: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40_000);

/// An address in fd00::/8 that no other test uses.
pub fn unique_ip() -> IpAddr {
    let random = uuid::Uuid::new_v4().as_u128();
    IpAddr::V6(Ipv6Addr::from((0xfd << 120) | (random >> 8)))
}

/// A valid username no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &random[..16])
}

/// The internal API's shared secret in tests.
pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789abcdef";

/// Settings whose limits never get in a test's way (and with the internal API enabled).
pub fn roomy_settings() -> ApiSettings {
    let mut settings = ApiSettings::default();
    settings.auth.limits = RateLimits::uniform(Rate::new(10_000, Duration::from_secs(60)));
    settings.internal_token = Some(InternalToken::new(INTERNAL_TOKEN).unwrap());
    settings
}

pub fn state(settings: ApiSettings) -> AppState {
    AppState::new(
        haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap(),
        haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap(),
        settings,
        haberci_token::KeySet::generate("test-key").unwrap(),
    )
}

/// State on the test database, with Redis at `redis_url` and the given keys.
pub fn state_with(settings: ApiSettings, redis_url: &str, keys: Arc<KeyStore>) -> AppState {
    AppState::with_keys(
        haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap(),
        haberci_backend::redis::connect(redis_url).unwrap(),
        settings,
        keys,
    )
}

/// A `redis://` URL where nothing listens: a port bound, then released.
pub fn dead_redis_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("redis://{addr}")
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One API instance ("a backend process") and the client IP its requests come from.
pub struct Api {
    pub state: AppState,
    pub router: Router,
    pub client_ip: IpAddr,
    pub peer: SocketAddr,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Reply {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    pub fn field(&self) -> Option<&str> {
        self.json["error"]["field"].as_str()
    }

    pub fn str(&self, pointer: &str) -> String {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at {pointer} in {}", self.json))
            .to_owned()
    }
}

impl Api {
    pub fn new() -> Api {
        Api::with_settings(roomy_settings())
    }

    pub fn with_settings(settings: ApiSettings) -> Api {
        Api::from_state(state(settings))
    }

    pub fn from_state(state: AppState) -> Api {
        Api {
            router: api::app(state.clone()),
            state,
            client_ip: unique_ip(),
            peer: GATEWAY,
        }
    }

    /// Another instance on the same Postgres and Redis, as a second process would be.
    pub fn second_process(&self, settings: ApiSettings) -> Api {
        Api {
            client_ip: self.client_ip,
            ..Api::with_settings(settings)
        }
    }

    pub async fn send(&self, mut request: Request<Body>) -> Reply {
        self.as_gateway(&mut request);
        self.dispatch(request).await
    }

    /// What the gateway's proxy adds: the peer, the client's address and the secret.
    fn as_gateway(&self, request: &mut Request<Body>) {
        request.headers_mut().insert(
            "x-haberci-client-ip",
            self.client_ip.to_string().parse().unwrap(),
        );
        request
            .headers_mut()
            .insert("x-haberci-internal", INTERNAL_TOKEN.parse().unwrap());
    }

    async fn dispatch(&self, mut request: Request<Body>) -> Reply {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|err| {
                panic!("not JSON ({err}): {}", String::from_utf8_lossy(&body))
            })
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    /// Sends `request` and returns the answer's raw bytes (downloads, HEAD, 204s).
    pub async fn send_raw(&self, mut request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        self.as_gateway(&mut request);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body.to_vec())
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    pub async fn call(&self, method: &str, path: &str, body: Value, token: Option<&str>) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, body, None).await
    }

    /// A request to the internal API with `token` in `x-haberci-internal` (`None`: no header).
    pub async fn internal(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("x-haberci-internal", token);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        // The secret exactly as the test gives it (or none).
        self.dispatch(request.body(body).unwrap()).await
    }

    /// Registers a fresh user; returns their id and access token.
    pub async fn user(&self) -> User {
        let (account, reply) = self.register().await;
        User {
            id: reply.str("/user/id").parse().unwrap(),
            token: reply.str("/tokens/accessToken"),
            username: account.username,
        }
    }

    /// Registers a fresh user; returns it with its password.
    pub async fn register(&self) -> (Account, Reply) {
        let username = unique_name("user");
        let account = Account {
            email: format!("{username}@example.com"),
            username,
            password: "correct horse battery staple".into(),
        };
        let reply = self
            .post(
                "/v1/auth/register",
                json!({
                    "username": account.username,
                    "email": account.email,
                    "password": account.password,
                    "displayName": "Test User",
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
        (account, reply)
    }

    pub async fn login(&self, account: &Account) -> Reply {
        self.post(
            "/v1/auth/login",
            json!({ "usernameOrEmail": account.username, "password": account.password }),
        )
        .await
    }
}

pub struct Account {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// A registered user, ready to call the API.
pub struct User {
    pub id: uuid::Uuid,
    pub token: String,
    pub username: String,
}

/// Stores one text message per sender, numbered as the worker would (the conversation's
/// `last_seq` moves with them); returns their seqs. Stands in for the worker, which is tested
/// on its own.
pub async fn store_messages(
    db: &sqlx::PgPool,
    conversation: uuid::Uuid,
    senders: &[uuid::Uuid],
) -> Vec<i64> {
    let mut tx = db.begin().await.unwrap();
    let mut seqs = Vec::new();
    for &sender in senders {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        )
        .bind(conversation)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content)
             VALUES ($1, $2, $3, $4, $5, 'text', $6)",
        )
        .bind(conversation)
        .bind(seq)
        .bind(uuid::Uuid::now_v7())
        .bind(sender)
        .bind(uuid::Uuid::new_v4())
        .bind(format!("message {seq}"))
        .execute(&mut *tx)
        .await
        .unwrap();
        seqs.push(seq);
    }
    tx.commit().await.unwrap();
    seqs
}

/// Sets a member's receipt watermarks, as the worker would on `Ack` and `Read`.
pub async fn set_watermarks(
    db: &sqlx::PgPool,
    conversation: uuid::Uuid,
    user: uuid::Uuid,
    delivered: i64,
    read: i64,
) {
    let updated = sqlx::query(
        "UPDATE members SET delivered_seq = $3, read_seq = $4
         WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .bind(delivered)
    .bind(read)
    .execute(db)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1, "{user} is not a member");
}

/// Creates the direct conversation of `a` and `b` with both as members, as the worker does on
/// their first message; returns its id.
pub async fn direct_conversation(db: &sqlx::PgPool, a: uuid::Uuid, b: uuid::Uuid) -> uuid::Uuid {
    use haberci_wire::UserId;
    let id = haberci_seam::streams::direct_conversation(
        UserId::new(a).unwrap(),
        UserId::new(b).unwrap(),
    )
    .as_uuid();
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    sqlx::query(
        "INSERT INTO conversations (id, kind, user_low, user_high) VALUES ($1, 'direct', $2, $3)",
    )
    .bind(id)
    .bind(low)
    .bind(high)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, role)
         VALUES ($1, $2, 'member'), ($1, $3, 'member')",
    )
    .bind(id)
    .bind(low)
    .bind(high)
    .execute(db)
    .await
    .unwrap();
    id
}

/// Listens on a user's relay channel (`SSUBSCRIBE u:{user}`) before the test acts.
pub struct UserChannel {
    client: fred::clients::Client,
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl UserChannel {
    pub async fn open(user: uuid::Uuid) -> UserChannel {
        use fred::prelude::*;
        let client = haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap();
        client.wait_for_connect().await.unwrap();
        let messages = client.message_rx();
        let channel = haberci_seam::streams::user_channel(haberci_wire::UserId::new(user).unwrap());
        client.ssubscribe(channel).await.unwrap();
        UserChannel { client, messages }
    }

    /// The next event, within [`TIMEOUT`].
    pub async fn next(&mut self) -> haberci_seam::streams::Event {
        let message = tokio::time::timeout(TIMEOUT, self.messages.recv())
            .await
            .expect("an event within the timeout")
            .unwrap();
        let text: String = message.value.convert().unwrap();
        haberci_seam::streams::Event::from_json(text.as_bytes()).unwrap()
    }

    pub async fn close(self) {
        use fred::prelude::*;
        let _ = self.client.quit().await;
    }
}
