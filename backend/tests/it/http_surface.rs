//! Rules every API response follows: security headers, CORS allow-list, JSON errors for unknown
//! routes and methods, and the OpenAPI document.

use axum::body::Body;
use http::{Request, StatusCode};

use crate::support::{Api, roomy_settings};

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

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let api = Api::new();
    let replies = [
        api.get("/healthz", None).await,
        api.get("/v1/version", None).await,
        api.get("/v1/nothing", None).await,
        api.get("/v1/me", None).await,
        api.post("/v1/auth/login", serde_json::json!({})).await,
        api.get("/v1/openapi.json", None).await,
    ];
    for reply in replies {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                reply.headers.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name} on {}",
                reply.status
            );
        }
    }
}

#[tokio::test]
async fn unknown_methods_and_routes_get_json_errors() {
    let api = Api::new();
    let reply = api.get("/v1/auth/login", None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let reply = api.call("PUT", "/v1/me", serde_json::json!({}), None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = api.get("/v1/users", None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

/// Ids in paths are parsed by the extractor (`ApiPath<PostId>`, …): one that is not a UUID,
/// or is the nil UUID, names nothing, and every route answers it exactly like an id that
/// exists nowhere (404 `not_found`), after the token was checked (401 without one).
#[tokio::test]
async fn ids_in_paths_that_do_not_parse_answer_like_unknown_ids() {
    let api = Api::new();
    let me = api.user().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let bad = ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "1234"];
    let body = |json: serde_json::Value| Some(json);
    let member = serde_json::json!({ "userId": me.id });
    // (method, path with `{}` for the id under test and `{u}` for a valid unknown id, body)
    let routes = [
        ("GET", "/v1/groups/{}", None),
        ("POST", "/v1/groups/{}/members", body(member.clone())),
        ("DELETE", "/v1/groups/{}/members/{u}", None),
        ("DELETE", "/v1/groups/{u}/members/{}", None),
        (
            "PATCH",
            "/v1/groups/{}/members/{u}",
            body(serde_json::json!({ "role": "admin" })),
        ),
        ("POST", "/v1/groups/{}/leave", None),
        ("GET", "/v1/conversations/{}/messages", None),
        ("GET", "/v1/posts/{}", None),
        (
            "PATCH",
            "/v1/posts/{}",
            body(serde_json::json!({ "content": "x" })),
        ),
        ("DELETE", "/v1/posts/{}", None),
        ("GET", "/v1/posts/{}/edits", None),
        ("POST", "/v1/posts/{}/like", None),
        ("DELETE", "/v1/posts/{}/like", None),
        ("GET", "/v1/posts/{}/likes", None),
        ("POST", "/v1/posts/{}/repost", None),
        ("DELETE", "/v1/posts/{}/repost", None),
        (
            "POST",
            "/v1/posts/{}/comments",
            body(serde_json::json!({ "content": "x" })),
        ),
        ("DELETE", "/v1/posts/{}/comments/{u}", None),
        ("DELETE", "/v1/posts/{u}/comments/{}", None),
        ("GET", "/v1/posts/{}/thread", None),
        ("DELETE", "/v1/auth/sessions/{}", None),
        ("GET", "/v1/media/{}/info", None),
        ("DELETE", "/v1/media/{}", None),
        ("GET", "/v1/media/{}", None),
        ("GET", "/v1/media/{}/thumb", None),
        ("GET", "/v1/media/{}/preview", None),
    ];
    for (method, template, body) in routes {
        let with = |id: &str| template.replace("{u}", &unknown).replace("{}", id);
        let body = body.unwrap_or(serde_json::json!({}));
        let reply = api
            .call(method, &with(&unknown), body.clone(), Some(&me.token))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {template} with an unknown id"
        );
        for id in bad {
            let reply = api
                .call(method, &with(id), body.clone(), Some(&me.token))
                .await;
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{method} {template} with {id:?}"
            );
        }
        if !template.starts_with("/v1/media/") {
            // Media bytes may be read without a token (avatars, signed links).
            let reply = api.call(method, &with(bad[0]), body, None).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {template} without a token"
            );
        }
    }
}

#[tokio::test]
async fn cors_answers_only_listed_origins_and_never_a_wildcard() {
    let mut settings = roomy_settings();
    settings.cors = haberci_kit::http::CorsOrigins::list(&["https://app.example"]).unwrap();
    let api = Api::with_settings(settings);
    let preflight = |origin: &str| {
        Request::options("/v1/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .body(Body::empty())
            .unwrap()
    };
    let allowed = api.send(preflight("https://app.example")).await;
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(allowed.headers["access-control-allow-credentials"], "true");
    let methods = allowed.headers["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");

    let refused = api.send(preflight("https://evil.example")).await;
    assert!(refused.headers.get("access-control-allow-origin").is_none());

    let simple = api
        .send(
            Request::get("/v1/version")
                .header("origin", "https://app.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        simple.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let other = api
        .send(
            Request::get("/v1/version")
                .header("origin", "https://evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let api = Api::new();
    let reply = api.get("/v1/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.str("/openapi").starts_with("3.1"),
        "{}",
        reply.json["openapi"]
    );
    let paths = reply.json["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/auth/register", "post"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/auth/logout-all", "post"),
        ("/v1/auth/sessions", "get"),
        ("/v1/auth/sessions/{id}", "delete"),
        ("/v1/auth/jwks", "get"),
        ("/v1/me", "get"),
        ("/v1/me", "patch"),
        ("/v1/users/{username}", "get"),
        ("/v1/groups", "post"),
        ("/v1/groups/{id}", "get"),
        ("/v1/groups/{id}/members", "post"),
        ("/v1/groups/{id}/members/{userId}", "delete"),
        ("/v1/groups/{id}/members/{userId}", "patch"),
        ("/v1/groups/{id}/leave", "post"),
        ("/v1/conversations", "get"),
        ("/v1/conversations/{id}/messages", "get"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        assert!(
            operation["responses"]["503"].is_object(),
            "{method} {path}: shared errors"
        );
    }
    assert!(paths["/v1/auth/login"]["post"]["responses"]["429"].is_object());
    assert!(paths["/v1/me"]["get"]["responses"]["401"].is_object());
    assert_eq!(
        reply.json["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Issue #15: one casing for the public API. Every property name in the OpenAPI document's
/// schemas (nested objects and array items included) and every query and path parameter is
/// camelCase (header parameters are named by HTTP and tus); enum values and error codes are values, not names, and are not checked.
#[test]
fn openapi_names_are_camel_case() {
    let document = serde_json::to_value(haberci_backend::api::openapi_document()).unwrap();
    let mut offenders = Vec::new();
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        schema_names(
            &format!("components.schemas.{name}"),
            schema,
            &mut offenders,
        );
    }
    for (path, item) in document["paths"].as_object().unwrap() {
        for segment in path.split('/') {
            if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !is_camel_case(param) {
                    offenders.push(format!("path {path}: {param}"));
                }
            }
        }
        for (method, operation) in item.as_object().unwrap() {
            let Some(params) = operation["parameters"].as_array() else {
                continue;
            };
            // Header names are HTTP's and tus's (`Upload-Offset`), not ours to case.
            for param in params.iter().filter(|p| p["in"] != "header") {
                let name = param["name"].as_str().unwrap();
                if !is_camel_case(name) {
                    offenders.push(format!("{method} {path}: {} parameter {name}", param["in"]));
                }
            }
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                for (kind, media) in response["content"].as_object().into_iter().flatten() {
                    let at = format!("{method} {path} {status} {kind}");
                    schema_names(&at, &media["schema"], &mut offenders);
                }
            }
            for (kind, media) in operation["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let at = format!("{method} {path} request {kind}");
                schema_names(&at, &media["schema"], &mut offenders);
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "names that are not camelCase:\n{}",
        offenders.join("\n")
    );
}

fn is_camel_case(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// Every property name under `schema`: nested objects, array items, additional properties and
/// the branches of `allOf`/`oneOf`/`anyOf`.
fn schema_names(at: &str, schema: &serde_json::Value, offenders: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        return;
    };
    if let Some(properties) = object.get("properties").and_then(|p| p.as_object()) {
        for (name, property) in properties {
            if !is_camel_case(name) {
                offenders.push(format!("{at}: property {name}"));
            }
            schema_names(&format!("{at}.{name}"), property, offenders);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(inner) = object.get(key) {
            schema_names(&format!("{at}[{key}]"), inner, offenders);
        }
    }
    for key in ["allOf", "oneOf", "anyOf", "prefixItems"] {
        for (i, inner) in object
            .get(key)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            schema_names(&format!("{at}.{key}[{i}]"), inner, offenders);
        }
    }
}
