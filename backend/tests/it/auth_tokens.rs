//! The access-token attack table, through the API: each forged or stale token presented to
//! `GET /v1/me` is refused with 401, one case each. (haberci-token's unit tests run the same
//! table against the verifier alone.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use ring::hmac;
use serde_json::json;
use uuid::Uuid;

use haberci_token::{Claims, KeySet};

use crate::support::Api;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    haberci_backend::auth::unix_now()
}

#[tokio::test]
async fn forged_expired_and_tampered_tokens_are_refused() {
    let api = Api::new();
    let (_, registered) = api.register().await;
    let user: Uuid = registered.str("/user/id").parse().unwrap();
    let session: Uuid = registered.str("/tokens/sessionId").parse().unwrap();
    let valid = registered.str("/tokens/accessToken");
    let keys = api.state.auth.keys.current();
    let keys = &keys.set;
    let kid = keys.signing_kid().to_string();
    let claims = json!({ "sub": user, "sid": session, "iat": now(), "exp": now() + 900 });
    let unsigned = |header: serde_json::Value| {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    };
    let jwks = api.get("/v1/auth/jwks", None).await;
    let public_key = URL_SAFE_NO_PAD.decode(jwks.str("/keys/0/x")).unwrap();

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("the real token", Some(valid.clone()), "ok"),
        ("no Authorization header", None, "unauthenticated"),
        (
            "alg none, empty signature",
            Some(format!(
                "{}.",
                unsigned(json!({"alg": "none", "typ": "JWT", "kid": kid}))
            )),
            "invalid_token",
        ),
        (
            "HS256 keyed with the public key",
            Some({
                let data = unsigned(json!({"alg": "HS256", "typ": "JWT", "kid": kid}));
                let tag = hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &public_key),
                    data.as_bytes(),
                );
                format!("{data}.{}", b64(tag.as_ref()))
            }),
            "invalid_token",
        ),
        (
            "expired",
            Some(keys.sign(&Claims::new(user, session, now() - 7200, 900))),
            "invalid_token",
        ),
        (
            "not yet valid (iat in the future)",
            Some(keys.sign(&Claims::new(user, session, now() + 3600, 900))),
            "invalid_token",
        ),
        (
            "unknown kid",
            Some(
                KeySet::generate("someone-elses")
                    .unwrap()
                    .sign(&Claims::new(user, session, now(), 900)),
            ),
            "invalid_token",
        ),
        (
            "our kid, another key",
            Some(
                KeySet::generate(&kid)
                    .unwrap()
                    .sign(&Claims::new(user, session, now(), 900)),
            ),
            "invalid_token",
        ),
        (
            "tampered payload (sub swapped)",
            Some({
                let parts: Vec<&str> = valid.split('.').collect();
                let forged = json!({ "sub": Uuid::now_v7(), "sid": session, "iat": now(), "exp": now() + 900 });
                format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(forged.to_string().as_bytes()),
                    parts[2]
                )
            }),
            "invalid_token",
        ),
        (
            "tampered signature",
            Some({
                let (data, signature) = valid.rsplit_once('.').unwrap();
                let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
                signature[0] ^= 0x80;
                format!("{data}.{}", b64(&signature))
            }),
            "invalid_token",
        ),
        ("garbage", Some("not.a.jwt".into()), "invalid_token"),
        (
            "valid signature, unknown session",
            Some(keys.sign(&Claims::new(user, Uuid::now_v7(), now(), 900))),
            "session_revoked",
        ),
    ];
    for (name, token, want) in cases {
        let reply = api.get("/v1/me", token.as_deref()).await;
        if want == "ok" {
            assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.json);
        } else {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
            assert_eq!(reply.code(), want, "{name}");
        }
    }

    let basic = api
        .send(
            http::Request::get("/v1/me")
                .header("authorization", "Basic dXNlcjpwYXNz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(basic.code(), "unauthenticated");
}

#[tokio::test]
async fn the_jwks_publishes_the_signing_key_and_its_tokens_verify_with_it_alone() {
    let api = Api::new();
    let (_, registered) = api.register().await;
    let jwks = api.get("/v1/auth/jwks", None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.str("/keys/0/kty"), "OKP");
    assert_eq!(jwks.str("/keys/0/crv"), "Ed25519");
    assert_eq!(jwks.str("/keys/0/alg"), "EdDSA");
    // What a gateway does: build a verifier from the published document only.
    let document: haberci_token::Jwks = serde_json::from_value(jwks.json.clone()).unwrap();
    let verifier = haberci_token::Verifier::from_jwks(&document).unwrap();
    let claims = verifier
        .verify(&registered.str("/tokens/accessToken"), now())
        .unwrap();
    assert_eq!(claims.sub.to_string(), registered.str("/user/id"));
    assert_eq!(claims.sid.to_string(), registered.str("/tokens/sessionId"));
    assert_eq!(claims.exp - claims.iat, 900);
}
