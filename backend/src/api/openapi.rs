//! The OpenAPI 3.1 document. Paths, bodies and per-endpoint responses come from each handler's
//! `#[utoipa::path]`; [`finish`] adds what every operation shares (the error responses the
//! extractors can produce), so the document lists every status the API can answer with.

use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, ToSchema};

use super::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Haberci API",
        description = "Accounts, auth, profiles, groups, conversations and message history. Errors are always `{\"error\": {\"code\", \"message\", \"field\"}}`.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "auth", description = "Registration, login, token refresh, sessions"),
        (name = "users", description = "Accounts and profiles"),
        (name = "groups", description = "Groups, their members and roles"),
        (name = "conversations", description = "My conversations and their message history"),
    )
)]
struct Base;

pub fn base() -> OpenApi {
    let mut document = Base::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = document.components.get_or_insert_with(Default::default);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".into());
    components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    document
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build(),
    )
}

/// Adds the shared error responses to every operation that lacks them.
pub fn finish(document: &mut OpenApi) {
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let mut shared: Vec<(&str, &str)> = vec![
                (
                    "400",
                    "`malformed_json`: the body or a parameter is not valid",
                ),
                (
                    "503",
                    "`unavailable`: a dependency is down or saturated; retry",
                ),
            ];
            if operation.request_body.is_some() {
                shared.extend([
                    ("413", "`body_too_large`"),
                    ("415", "`unsupported_media_type`: send application/json"),
                    (
                        "422",
                        "`invalid_field`: a field is missing or invalid (`field` names it)",
                    ),
                ]);
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                shared.push((
                    "401",
                    "`unauthenticated`, `invalid_token` or `session_revoked`",
                ));
            }
            for (status, description) in shared {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            }
        }
    }
}
