//! The whole life of an account: register → login → /me → refresh → the old refresh token
//! reused → its family revoked (and announced on Redis) → that session's access token refused.

use fred::prelude::*;
use http::StatusCode;
use serde_json::json;

use crate::env;
use crate::support::{Api, TIMEOUT};

#[tokio::test]
async fn register_login_refresh_reuse_revokes_the_family() {
    let api = Api::new();
    let (account, registered) = api.register().await;
    assert_eq!(registered.str("/user/username"), account.username);
    assert_eq!(registered.str("/tokens/tokenType"), "Bearer");
    assert_eq!(registered.json["tokens"]["expiresIn"], 900);
    let register_access = registered.str("/tokens/accessToken");

    // Log in with the email, in another case: emails are unique case-insensitively.
    let login = api
        .post(
            "/v1/auth/login",
            json!({ "usernameOrEmail": account.email.to_uppercase(), "password": account.password }),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.json);
    assert_eq!(login.headers["cache-control"], "no-store");
    let access = login.str("/accessToken");
    let first_refresh = login.str("/refreshToken");
    let session = login.str("/sessionId");
    assert_ne!(
        session,
        registered.str("/tokens/sessionId"),
        "a login is a new session"
    );

    let me = api.get("/v1/me", Some(&access)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.json);
    assert_eq!(me.str("/username"), account.username);
    assert_eq!(me.str("/email"), account.email);

    let refreshed = api
        .post("/v1/auth/refresh", json!({ "refreshToken": first_refresh }))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.json);
    assert_eq!(
        refreshed.str("/sessionId"),
        session,
        "rotation keeps the session"
    );
    let second_refresh = refreshed.str("/refreshToken");
    let second_access = refreshed.str("/accessToken");
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        api.get("/v1/me", Some(&second_access)).await.status,
        StatusCode::OK
    );

    // Listen for the revocation before causing it.
    let subscriber = haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap();
    subscriber.wait_for_connect().await.unwrap();
    let mut messages = subscriber.message_rx();
    subscriber
        .subscribe(haberci_seam::revocation::CHANNEL)
        .await
        .unwrap();

    // The spent token again: theft detected, the family (this session) is revoked.
    let reused = api
        .post("/v1/auth/refresh", json!({ "refreshToken": first_refresh }))
        .await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.code(), "refresh_token_reused");

    let announced = tokio::time::timeout(TIMEOUT, async {
        loop {
            let message = messages.recv().await.unwrap();
            let text: String = message.value.convert().unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["session_id"] == session.as_str() {
                return value;
            }
        }
    })
    .await
    .expect("revocation published");
    assert_eq!(announced["user_id"], registered.json["user"]["id"]);
    assert_eq!(announced["reason"], "refresh_reuse");

    // Every token of the revoked session is now refused…
    for token in [&access, &second_access] {
        let me = api.get("/v1/me", Some(token)).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED);
        assert_eq!(me.code(), "session_revoked");
        assert!(
            me.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
    let next = api
        .post(
            "/v1/auth/refresh",
            json!({ "refreshToken": second_refresh }),
        )
        .await;
    assert_eq!(next.status, StatusCode::UNAUTHORIZED);
    assert_eq!(next.code(), "invalid_refresh_token");

    // …while the registration's session, another family, lives on.
    assert_eq!(
        api.get("/v1/me", Some(&register_access)).await.status,
        StatusCode::OK
    );
    let _ = subscriber.quit().await;
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let api = Api::new();
    let (account, _) = api.register().await;
    let wrong = api
        .post(
            "/v1/auth/login",
            json!({ "usernameOrEmail": account.username, "password": "not the password" }),
        )
        .await;
    let unknown = api
        .post(
            "/v1/auth/login",
            json!({ "usernameOrEmail": crate::support::unique_name("ghost"), "password": "not the password" }),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.code(), "invalid_credentials");
    assert_eq!((unknown.status, &unknown.json), (wrong.status, &wrong.json));
}

#[tokio::test]
async fn usernames_and_emails_are_unique_whatever_their_case() {
    let api = Api::new();
    let (account, _) = api.register().await;
    let cases = [
        (
            account.username.to_uppercase(),
            "someone-else@example.com".to_owned(),
            "username",
        ),
        (
            crate::support::unique_name("other"),
            account.email.to_uppercase(),
            "email",
        ),
    ];
    for (username, email, field) in cases {
        let reply = api
            .post(
                "/v1/auth/register",
                json!({ "username": username, "email": email, "password": "long enough pass", "displayName": "X" }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.json);
        assert_eq!(reply.code(), "conflict");
        assert_eq!(reply.field(), Some(field));
    }
}

#[tokio::test]
async fn profiles_are_edited_and_looked_up() {
    let api = Api::new();
    let (account, registered) = api.register().await;
    let token = registered.str("/tokens/accessToken");

    let edited = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "displayName": "  Ada  ", "bio": "hello\nworld", "avatarRef": "media:01/a.png" }),
            Some(&token),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.json);
    assert_eq!(edited.str("/displayName"), "Ada");
    assert_eq!(edited.str("/bio"), "hello\nworld");
    assert_eq!(edited.str("/avatarRef"), "media:01/a.png");

    // Absent fields stay; null clears the avatar.
    let cleared = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "avatarRef": null }),
            Some(&token),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(cleared.str("/displayName"), "Ada");
    assert!(cleared.json["avatarRef"].is_null());

    let bad = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "avatarRef": "<script>" }),
            Some(&token),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code(), bad.field()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("avatarRef")
        )
    );

    let path = format!("/v1/users/{}", account.username.to_uppercase());
    let profile = api.get(&path, Some(&token)).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.json);
    assert_eq!(profile.str("/username"), account.username);
    assert_eq!(
        profile.str("/id"),
        registered.str("/user/id"),
        "the id messages go to"
    );
    assert_eq!(profile.str("/displayName"), "Ada");
    assert!(
        profile.json.get("email").is_none(),
        "a public profile shows no email"
    );

    for missing in [
        "/v1/users/nobody_by_this_name",
        "/v1/users/not%20a%20name",
        "/v1/users/%FF",
    ] {
        let reply = api.get(missing, Some(&token)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{missing}"
        );
    }
    assert_eq!(api.get(&path, None).await.code(), "unauthenticated");
}

#[tokio::test]
async fn two_concurrent_refreshes_with_one_token_one_rotates_and_the_family_is_revoked() {
    let api = Api::new();
    let (_, registered) = api.register().await;
    let body = json!({ "refreshToken": registered.str("/tokens/refreshToken") });
    let (a, b) = tokio::join!(
        api.post("/v1/auth/refresh", body.clone()),
        api.post("/v1/auth/refresh", body)
    );
    let (winner, loser) = if a.status == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    // Exactly one succeeds: the token row is locked while it is spent, so the other use sees it
    // spent, which is a reuse.
    assert_eq!(winner.status, StatusCode::OK, "{}", winner.json);
    assert_eq!(
        (loser.status, loser.code()),
        (StatusCode::UNAUTHORIZED, "refresh_token_reused"),
        "{}",
        loser.json
    );
    // The reuse revoked the family, the winner's fresh tokens included.
    let next = api
        .post(
            "/v1/auth/refresh",
            json!({ "refreshToken": winner.str("/refreshToken") }),
        )
        .await;
    assert_eq!(
        (next.status, next.code()),
        (StatusCode::UNAUTHORIZED, "invalid_refresh_token")
    );
    let me = api.get("/v1/me", Some(&winner.str("/accessToken"))).await;
    assert_eq!(
        (me.status, me.code()),
        (StatusCode::UNAUTHORIZED, "session_revoked")
    );
}
