//! Sessions: listing and revoking devices, logout, logout-all, and the Redis session cache
//! (filled on use, overwritten on revoke, and not needed for correctness: with the entry gone,
//! Postgres answers).

use fred::prelude::*;
use http::StatusCode;

use haberci_backend::auth::sessions::cache_key;
use haberci_wire::SessionId;

use crate::support::Api;

fn session_key(reply_session: &str) -> String {
    cache_key(reply_session.parse::<SessionId>().unwrap())
}

#[tokio::test]
async fn the_session_cache_is_a_cache_postgres_answers_without_it() {
    let api = Api::new();
    let redis = api.state.redis.clone();
    redis.wait_for_connect().await.unwrap();
    let (_, registered) = api.register().await;
    let token = registered.str("/tokens/accessToken");
    let key = session_key(&registered.str("/tokens/sessionId"));

    assert_eq!(api.get("/v1/me", Some(&token)).await.status, StatusCode::OK);
    let cached: Option<String> = redis.get(&key).await.unwrap();
    let cached: serde_json::Value = serde_json::from_str(&cached.expect("filled on use")).unwrap();
    assert_eq!(cached["revoked"], false);
    assert_eq!(cached["user_id"], registered.json["user"]["id"]);
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0, "cache entries expire: {ttl}");

    // As after a FLUSHALL: the entry is gone, the answer is the same, the entry comes back.
    let _: i64 = redis.del(&key).await.unwrap();
    assert_eq!(api.get("/v1/me", Some(&token)).await.status, StatusCode::OK);
    assert!(redis.exists::<i64, _>(&key).await.unwrap() == 1);

    // Revoking overwrites the entry…
    let logout = api
        .call(
            "POST",
            "/v1/auth/logout",
            serde_json::Value::Null,
            Some(&token),
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.json);
    let cached: Option<String> = redis.get(&key).await.unwrap();
    let cached: serde_json::Value = serde_json::from_str(&cached.unwrap()).unwrap();
    assert_eq!(cached["revoked"], true);
    assert_eq!(
        api.get("/v1/me", Some(&token)).await.code(),
        "session_revoked"
    );

    // …and with the entry flushed, Postgres still says revoked.
    let _: i64 = redis.del(&key).await.unwrap();
    let me = api.get("/v1/me", Some(&token)).await;
    assert_eq!(
        (me.status, me.code()),
        (StatusCode::UNAUTHORIZED, "session_revoked")
    );
}

#[tokio::test]
async fn devices_are_listed_and_revoked_one_by_one_or_all_at_once() {
    let api = Api::new();
    let (account, registered) = api.register().await;
    let first = registered.str("/tokens/accessToken");
    let second = api.login(&account).await;
    let third = api.login(&account).await;
    let second_token = second.str("/accessToken");
    let third_token = third.str("/accessToken");

    let listed = api.get("/v1/auth/sessions", Some(&first)).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    let sessions = listed.json.as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    let current: Vec<_> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], registered.json["tokens"]["sessionId"]);
    assert!(
        sessions
            .iter()
            .all(|s| s["ip"] == api.client_ip.to_string())
    );

    // Revoke the second device from the first.
    let path = format!("/v1/auth/sessions/{}", second.str("/sessionId"));
    let revoked = api
        .call("DELETE", &path, serde_json::Value::Null, Some(&first))
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/v1/me", Some(&second_token)).await.code(),
        "session_revoked"
    );
    let again = api
        .call("DELETE", &path, serde_json::Value::Null, Some(&first))
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    for bad in [
        "/v1/auth/sessions/not-a-uuid",
        "/v1/auth/sessions/0190c6a0-0000-7000-8000-000000000000",
    ] {
        let reply = api
            .call("DELETE", bad, serde_json::Value::Null, Some(&first))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{bad}");
    }

    // Someone else cannot revoke my sessions, nor learn that they exist.
    let (_, stranger) = api.register().await;
    let path = format!("/v1/auth/sessions/{}", third.str("/sessionId"));
    let theirs = api
        .call(
            "DELETE",
            &path,
            serde_json::Value::Null,
            Some(&stranger.str("/tokens/accessToken")),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/me", Some(&third_token)).await.status,
        StatusCode::OK
    );

    // Log out everywhere.
    let all = api
        .call(
            "POST",
            "/v1/auth/logout-all",
            serde_json::Value::Null,
            Some(&third_token),
        )
        .await;
    assert_eq!(all.status, StatusCode::NO_CONTENT);
    for token in [&first, &third_token] {
        assert_eq!(
            api.get("/v1/me", Some(token)).await.code(),
            "session_revoked"
        );
    }
    let refresh = api
        .post(
            "/v1/auth/refresh",
            serde_json::json!({ "refreshToken": third.str("/refreshToken") }),
        )
        .await;
    assert_eq!(refresh.code(), "invalid_refresh_token");
}
