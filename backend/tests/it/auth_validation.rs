//! The validation table: each bad request gets its 4xx and error code (and field), never a 500.

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::support::{Api, unique_name};

fn register_body(overrides: Value) -> Value {
    let mut body = json!({
        "username": unique_name("v"),
        "email": format!("{}@example.com", unique_name("v")),
        "password": "a fine password",
        "displayName": "Val",
    });
    if let (Some(body), Some(overrides)) = (body.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            if value == "<absent>" {
                body.remove(key);
            } else {
                body.insert(key.clone(), value.clone());
            }
        }
    }
    body
}

fn raw(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(path);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

#[tokio::test]
async fn bad_registrations_get_their_4xx_and_code() {
    let api = Api::new();
    let json_cases: Vec<(&str, Value, StatusCode, &str, Option<&str>)> = vec![
        (
            "username too short",
            json!({"username": "ab"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "username starts with a digit",
            json!({"username": "1abc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "username with a space",
            json!({"username": "ab cd"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "username not ASCII",
            json!({"username": "çağrı"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "username too long",
            json!({"username": "a".repeat(33)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "username not a string",
            json!({"username": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            "email without @",
            json!({"email": "not-an-email"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("email"),
        ),
        (
            "email without a dot in the domain",
            json!({"email": "a@b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("email"),
        ),
        (
            "email with a space",
            json!({"email": "a b@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("email"),
        ),
        (
            "password too short",
            json!({"password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            "password too long",
            json!({"password": "p".repeat(129)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            "display name blank",
            json!({"displayName": "   "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("displayName"),
        ),
        (
            "display name with a control character",
            json!({"displayName": "a\u{0}b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("displayName"),
        ),
        (
            "password missing",
            json!({"password": "<absent>"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            "unknown field",
            json!({"is_admin": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("is_admin"),
        ),
    ];
    for (name, overrides, status, code, field) in json_cases {
        let reply = api
            .post("/v1/auth/register", register_body(overrides))
            .await;
        assert_eq!(reply.status, status, "{name}: {}", reply.json);
        assert_eq!(reply.code(), code, "{name}");
        assert_eq!(reply.field(), field, "{name}");
        assert!(reply.json["error"]["message"].is_string(), "{name}");
    }

    let oversized = format!(
        r#"{{"username":"abc","email":"a@example.com","password":"{}","displayName":"x"}}"#,
        "p".repeat(haberci_backend::config::DEFAULT_API_MAX_BODY_BYTES)
    );
    let raw_cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            raw(
                "/v1/auth/register",
                Some("application/json"),
                "{\"username\":",
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "trailing garbage",
            raw(
                "/v1/auth/register",
                Some("application/json"),
                format!("{} {{}}", register_body(json!({}))),
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "empty body",
            raw("/v1/auth/register", Some("application/json"), ""),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not an object",
            raw("/v1/auth/register", Some("application/json"), "[1,2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "text/plain",
            raw("/v1/auth/register", Some("text/plain"), "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "a form",
            raw(
                "/v1/auth/login",
                Some("application/x-www-form-urlencoded"),
                "a=b",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "no content type",
            raw("/v1/auth/login", None, "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversized",
            raw("/v1/auth/register", Some("application/json"), oversized),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "not UTF-8",
            raw(
                "/v1/auth/login",
                Some("application/json"),
                vec![b'{', 0xff, b'}'],
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ];
    for (name, request, status, code) in raw_cases {
        let reply = api.send(request).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.json);
        assert_eq!(reply.code(), code, "{name}");
    }
}

#[tokio::test]
async fn bad_logins_and_refreshes_get_their_4xx_and_code() {
    let api = Api::new();
    // (name, path, body, status, code, field)
    type Case<'a> = (
        &'a str,
        &'a str,
        Value,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "login name too short",
            "/v1/auth/login",
            json!({"usernameOrEmail": "x", "password": "whatever"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("usernameOrEmail"),
        ),
        (
            "login email malformed",
            "/v1/auth/login",
            json!({"usernameOrEmail": "x@", "password": "whatever"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("usernameOrEmail"),
        ),
        (
            "empty password",
            "/v1/auth/login",
            json!({"usernameOrEmail": "someone", "password": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            "login without password",
            "/v1/auth/login",
            json!({"usernameOrEmail": "someone"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            "refresh token of the wrong shape",
            "/v1/auth/refresh",
            json!({"refreshToken": "abc"}),
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            None,
        ),
        (
            "unknown refresh token",
            "/v1/auth/refresh",
            json!({"refreshToken": "A".repeat(43)}),
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            None,
        ),
        (
            "refresh token not a string",
            "/v1/auth/refresh",
            json!({"refreshToken": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("refreshToken"),
        ),
    ];
    for (name, path, body, status, code, field) in cases {
        let reply = api.post(path, body).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.json);
        assert_eq!(reply.code(), code, "{name}");
        assert_eq!(reply.field(), field, "{name}");
    }
}
