//! The account API through the gateway: the same requests over HTTP/1.1, HTTP/2 and HTTP/3 get
//! the same answers, and every response carries the security headers.

use bytes::Bytes;
use haberci_testkit::{Backend, Stack};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::{self, ALL_VERSIONS, Reply, Version};

const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

fn assert_hardened(reply: &Reply, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            reply.headers.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name} on {what} ({})",
            reply.status
        );
    }
}

fn post(path: &str, content_type: &str, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("https://localhost{path}"))
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn post_json(path: &str, body: Value) -> http::Request<Full<Bytes>> {
    post(path, "application/json", body.to_string())
}

fn with_token(mut request: http::Request<Full<Bytes>>, token: &str) -> http::Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn text(reply: &Reply, pointer: &str) -> String {
    reply
        .json()
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What must be equal across HTTP versions: the status, and the error code or the shape.
fn answer(reply: &Reply) -> (u16, String) {
    let shape = if reply.body.is_empty() {
        String::new()
    } else {
        let json = reply.json();
        match json["error"]["code"].as_str() {
            Some(code) => format!("error:{code}:{}", json["error"]["field"]),
            None => match json.as_object() {
                Some(object) => object.keys().cloned().collect::<Vec<_>>().join(","),
                None => format!("array of {}", json.as_array().map_or(0, Vec::len)),
            },
        }
    };
    (reply.status.as_u16(), shape)
}

/// Runs the lifecycle on one HTTP version; returns each step's answer.
async fn lifecycle(stack: &Stack, version: Version) -> Vec<(String, (u16, String))> {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let username = format!("gw_{}", &random[..16]);
    let password = "correct horse battery staple";
    let mut steps = Vec::new();
    let mut step = |name: &str, reply: &Reply| {
        assert_hardened(reply, &format!("{name} over {version:?}"));
        steps.push((name.to_owned(), answer(reply)));
    };
    let send = |request| support::request(stack, version, request);

    let registered = send(post_json(
        "/v1/auth/register",
        json!({ "username": username, "email": format!("{username}@example.com"), "password": password, "displayName": "Gateway" }),
    ))
    .await;
    step("register", &registered);
    assert_eq!(registered.status, 201, "{version:?}: {}", registered.json());
    let register_access = text(&registered, "/tokens/accessToken");

    let login = send(post_json(
        "/v1/auth/login",
        json!({ "usernameOrEmail": username, "password": password }),
    ))
    .await;
    step("login", &login);
    assert_eq!(login.status, 200, "{version:?}");
    let access = text(&login, "/accessToken");
    let refresh = text(&login, "/refreshToken");

    let me = send(with_token(support::get("/v1/me"), &access)).await;
    step("me", &me);
    assert_eq!(text(&me, "/username"), username, "{version:?}");

    let rotated = send(post_json(
        "/v1/auth/refresh",
        json!({ "refreshToken": refresh }),
    ))
    .await;
    step("refresh", &rotated);
    assert_eq!(rotated.status, 200, "{version:?}");

    let reused = send(post_json(
        "/v1/auth/refresh",
        json!({ "refreshToken": refresh }),
    ))
    .await;
    step("refresh again", &reused);
    let revoked = send(with_token(support::get("/v1/me"), &access)).await;
    step("me after reuse", &revoked);

    let sessions = send(with_token(
        support::get("/v1/auth/sessions"),
        &register_access,
    ))
    .await;
    step("sessions", &sessions);
    let listed = sessions.json();
    let ip = listed[0]["ip"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        ip, "127.0.0.1",
        "{version:?}: the gateway's client IP reached the backend"
    );

    step(
        "malformed",
        &send(post("/v1/auth/login", "application/json", "{\"password\":")).await,
    );
    step(
        "form",
        &send(post(
            "/v1/auth/login",
            "application/x-www-form-urlencoded",
            "a=b",
        ))
        .await,
    );
    step(
        "bad username",
        &send(post_json(
            "/v1/auth/register",
            json!({ "username": "x", "email": "x@example.com", "password": password, "displayName": "X" }),
        ))
        .await,
    );
    step("no token", &send(support::get("/v1/me")).await);
    step("jwks", &send(support::get("/v1/auth/jwks")).await);
    let openapi = send(support::get("/v1/openapi.json")).await;
    assert_eq!(text(&openapi, "/openapi"), "3.1.0", "{version:?}");
    step("openapi", &openapi);
    steps
}

#[tokio::test]
async fn the_account_lifecycle_gets_the_same_answers_on_every_http_version() {
    let stack = Stack::start(Backend::Api).await;
    let mut runs = Vec::new();
    for version in ALL_VERSIONS {
        runs.push((version, lifecycle(&stack, version).await));
    }
    let (_, first) = &runs[0];
    let expected: Vec<(&str, u16, &str)> = vec![
        ("register", 201, "tokens,user"),
        (
            "login",
            200,
            "accessToken,expiresIn,refreshExpiresAt,refreshToken,sessionId,tokenType",
        ),
        (
            "me",
            200,
            "avatarMediaId,avatarRef,avatarThumbUrl,avatarUrl,bio,createdAt,displayName,email,followersCount,followingCount,groupAdds,id,postsCount,private,showPresence,updatedAt,username",
        ),
        (
            "refresh",
            200,
            "accessToken,expiresIn,refreshExpiresAt,refreshToken,sessionId,tokenType",
        ),
        ("refresh again", 401, "error:refresh_token_reused:null"),
        ("me after reuse", 401, "error:session_revoked:null"),
        ("sessions", 200, "array of 1"),
        ("malformed", 400, "error:malformed_json:null"),
        ("form", 415, "error:unsupported_media_type:null"),
        ("bad username", 422, "error:invalid_field:\"username\""),
        ("no token", 401, "error:unauthenticated:null"),
        ("jwks", 200, "keys"),
        ("openapi", 200, "components,info,openapi,paths,tags"),
    ];
    let want: Vec<(String, (u16, String))> = expected
        .into_iter()
        .map(|(name, status, shape)| (name.to_owned(), (status, shape.to_owned())))
        .collect();
    assert_eq!(first, &want);
    for (version, steps) in &runs[1..] {
        assert_eq!(
            steps, first,
            "{version:?} answers differently from HTTP/1.1"
        );
    }
}

#[tokio::test]
async fn gateway_answers_of_its_own_carry_the_security_headers() {
    let stack = Stack::start(Backend::Api).await;
    let big = Bytes::from(vec![
        b'x';
        haberci_gateway::config::DEFAULT_MAX_BODY_BYTES + 1
    ]);
    for version in ALL_VERSIONS {
        for path in ["/healthz", "/readyz", "/nope"] {
            let reply = support::request(&stack, version, support::get(path)).await;
            assert_hardened(&reply, &format!("{path} over {version:?}"));
        }
        let reply = support::request(
            &stack,
            version,
            post("/v1/auth/login", "application/json", big.clone()),
        )
        .await;
        assert_eq!(reply.status, 413, "{version:?}");
        assert_hardened(&reply, &format!("413 over {version:?}"));
    }
    let down = Stack::start(Backend::Down).await;
    let reply = support::request(&down, Version::Http2, support::get("/v1/version")).await;
    assert_eq!(reply.status, 502);
    assert_hardened(&reply, "502");
}

#[tokio::test]
async fn cors_preflights_are_answered_for_listed_origins_only() {
    let stack = Stack::builder()
        .configure(|config| {
            config.http.cors =
                haberci_kit::http::CorsOrigins::list(&["https://app.example"]).unwrap();
        })
        .start()
        .await;
    let preflight = |origin: &str| {
        http::Request::options("https://localhost/v1/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for version in ALL_VERSIONS {
        let allowed = support::request(&stack, version, preflight("https://app.example")).await;
        assert_eq!(allowed.status, 200, "{version:?}");
        assert_eq!(
            allowed.headers["access-control-allow-origin"], "https://app.example",
            "{version:?}"
        );
        assert_eq!(
            allowed.headers["access-control-allow-credentials"], "true",
            "{version:?}"
        );
        assert_hardened(&allowed, &format!("preflight over {version:?}"));
        let refused = support::request(&stack, version, preflight("https://evil.example")).await;
        assert!(
            refused.headers.get("access-control-allow-origin").is_none(),
            "{version:?}"
        );
    }
}
