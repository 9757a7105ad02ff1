//! Users registered through the backend API, and what a test does with their sessions.

use std::net::SocketAddr;

use haberci_wire::{GroupId, UserId};
use serde_json::{Value, json};

use crate::api;

/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A registered user and the tokens of its first login session.
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

/// Registers `{prefix}_<random>` (see [`crate::unique::name`]) through the API at `api`.
pub async fn register(api: SocketAddr, prefix: &str) -> User {
    let username = crate::unique::name(prefix);
    let (status, body) = api::post(
        api,
        "/v1/auth/register",
        json!({
            "username": username,
            "email": format!("{username}@example.com"),
            "password": PASSWORD,
            "displayName": username,
        }),
        None,
    )
    .await;
    assert_eq!(status, 201, "register: {body}");
    let uuid: uuid::Uuid = text(&body["user"]["id"]).parse().unwrap();
    User {
        id: UserId::new(uuid).expect("not nil"),
        username,
        token: text(&body["tokens"]["accessToken"]),
        refresh_token: text(&body["tokens"]["refreshToken"]),
    }
}

/// Spends `user`'s refresh token: a new access token for the same login session.
pub async fn refresh(api: SocketAddr, user: &User) -> String {
    let (status, body) = api::post(
        api,
        "/v1/auth/refresh",
        json!({ "refreshToken": user.refresh_token }),
        None,
    )
    .await;
    assert_eq!(status, 200, "refresh: {body}");
    text(&body["accessToken"])
}

/// Logs `user` in again: a new login session, so an access token with another session id.
pub async fn login(api: SocketAddr, user: &User) -> String {
    let (status, body) = api::post(
        api,
        "/v1/auth/login",
        json!({ "usernameOrEmail": user.username, "password": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(status, 200, "login: {body}");
    text(&body["accessToken"])
}

/// `POST /v1/auth/logout`: revokes the login session `token` belongs to (the backend
/// announces the revocation to the gateways).
pub async fn logout(api: SocketAddr, token: &str) {
    let (status, body) = api::post(api, "/v1/auth/logout", Value::Null, Some(token)).await;
    assert_eq!(status, 204, "logout: {body}");
}

/// `POST /v1/groups` as `owner`, with `members` besides the owner.
pub async fn create_group(api: SocketAddr, owner: &User, members: &[&User]) -> GroupId {
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let (status, body) = api::post(
        api,
        "/v1/groups",
        json!({ "name": format!("group of {}", owner.username), "memberIds": ids }),
        Some(&owner.token),
    )
    .await;
    assert_eq!(status, 201, "create group: {body}");
    let uuid: uuid::Uuid = text(&body["id"]).parse().unwrap();
    GroupId::new(uuid).expect("not nil")
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
        .to_owned()
}
