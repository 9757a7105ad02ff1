//! The authorization matrix of the social API: every social endpoint × {anonymous, owner,
//! follower, stranger, blocked, admin} × {public, private account} → the status each gets,
//! written as one table. The table must name every route of the OpenAPI document under the
//! social tags: a new endpoint without a row fails `every_social_endpoint_has_a_row`.
//!
//! "Owner" is the account the request addresses (its username, its post, its comment);
//! "follower" follows it, "blocked" is blocked by it, "admin" is a moderator with no relation,
//! "stranger" has none. Each row runs in a world of its own; destructive rows act on a fresh
//! post or comment per call.

use http::StatusCode;
use serde_json::{Value, json};

use crate::social::{act, follow, make_admin, ok, say};
use crate::support::{Api, User};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Anonymous,
    Owner,
    Follower,
    Stranger,
    Blocked,
    Admin,
}

const ROLES: [Role; 6] = [
    Role::Anonymous,
    Role::Owner,
    Role::Follower,
    Role::Stranger,
    Role::Blocked,
    Role::Admin,
];

/// What the path's `{id}` / `{commentId}` name for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The world's post (and its comment).
    Shared,
    /// A new post (and comment) of the owner's, made for this call.
    Fresh,
}

struct Row {
    method: &'static str,
    /// The OpenAPI path template.
    path: &'static str,
    body: Option<fn() -> Value>,
    target: Target,
    /// Statuses for the roles in [`ROLES`] order, public account then private account.
    public: [u16; 6],
    private: [u16; 6],
}

const fn row(method: &'static str, path: &'static str, public: [u16; 6], private: [u16; 6]) -> Row {
    Row {
        method,
        path,
        body: None,
        target: Target::Shared,
        public,
        private,
    }
}

fn post_body() -> Value {
    json!({ "content": "from the matrix" })
}
fn edit_body() -> Value {
    json!({ "content": "edited by the matrix" })
}
fn read_body() -> Value {
    json!({})
}

fn report_body_marker() -> Value {
    // The post id is filled in at run time (see `body_for`).
    json!({ "postId": "{id}", "reason": "matrix" })
}

//                                                anon owner foll strg blkd admin
const SEE: [u16; 6] = [401, 200, 200, 200, 404, 200];
const SEE_PRIVATE: [u16; 6] = [401, 200, 200, 404, 404, 404];
const ALL: [u16; 6] = [401, 200, 200, 200, 200, 200];

fn table() -> Vec<Row> {
    vec![
        row("GET", "/v1/users/{username}", SEE, SEE),
        row(
            "POST",
            "/v1/users/{username}/follow",
            [401, 403, 200, 200, 404, 200],
            [401, 403, 200, 200, 404, 200],
        ),
        row(
            "DELETE",
            "/v1/users/{username}/follow",
            [401, 204, 204, 204, 404, 204],
            [401, 204, 204, 204, 404, 204],
        ),
        row(
            "GET",
            "/v1/users/{username}/followers",
            SEE,
            [401, 200, 200, 403, 404, 403],
        ),
        row(
            "GET",
            "/v1/users/{username}/following",
            SEE,
            [401, 200, 200, 403, 404, 403],
        ),
        row("GET", "/v1/users/{username}/posts", SEE, SEE),
        row("GET", "/v1/me/follow-requests", ALL, ALL),
        row(
            "POST",
            "/v1/me/follow-requests/{username}/approve",
            [401, 404, 404, 404, 404, 404],
            [401, 404, 404, 404, 404, 404],
        ),
        row(
            "POST",
            "/v1/me/follow-requests/{username}/deny",
            [401, 404, 404, 404, 404, 404],
            [401, 404, 404, 404, 404, 404],
        ),
        row(
            "POST",
            "/v1/users/{username}/block",
            [401, 403, 204, 204, 204, 204],
            [401, 403, 204, 204, 204, 204],
        ),
        row(
            "DELETE",
            "/v1/users/{username}/block",
            [401, 204, 204, 204, 204, 204],
            [401, 204, 204, 204, 204, 204],
        ),
        row(
            "POST",
            "/v1/users/{username}/mute",
            [401, 403, 204, 204, 404, 204],
            [401, 403, 204, 204, 404, 204],
        ),
        row(
            "DELETE",
            "/v1/users/{username}/mute",
            [401, 204, 204, 204, 404, 204],
            [401, 204, 204, 204, 404, 204],
        ),
        row("GET", "/v1/me/blocks", ALL, ALL),
        row("GET", "/v1/me/mutes", ALL, ALL),
        Row {
            body: Some(post_body),
            ..row(
                "POST",
                "/v1/posts",
                [401, 201, 201, 201, 201, 201],
                [401, 201, 201, 201, 201, 201],
            )
        },
        row("GET", "/v1/posts/{id}", SEE, SEE_PRIVATE),
        Row {
            body: Some(edit_body),
            ..row(
                "PATCH",
                "/v1/posts/{id}",
                [401, 200, 403, 403, 404, 403],
                [401, 200, 403, 404, 404, 404],
            )
        },
        Row {
            target: Target::Fresh,
            ..row(
                "DELETE",
                "/v1/posts/{id}",
                [401, 204, 403, 403, 404, 204],
                [401, 204, 403, 404, 404, 204],
            )
        },
        row("GET", "/v1/posts/{id}/edits", SEE, SEE_PRIVATE),
        row("POST", "/v1/posts/{id}/like", SEE, SEE_PRIVATE),
        row("DELETE", "/v1/posts/{id}/like", SEE, SEE_PRIVATE),
        row("GET", "/v1/posts/{id}/likes", SEE, SEE_PRIVATE),
        row(
            "POST",
            "/v1/posts/{id}/repost",
            SEE,
            [401, 403, 403, 404, 404, 404],
        ),
        row("DELETE", "/v1/posts/{id}/repost", SEE, SEE_PRIVATE),
        Row {
            body: Some(|| json!({ "content": "a comment" })),
            ..row(
                "POST",
                "/v1/posts/{id}/comments",
                [401, 201, 201, 201, 404, 201],
                [401, 201, 201, 404, 404, 404],
            )
        },
        Row {
            target: Target::Fresh,
            ..row(
                "DELETE",
                "/v1/posts/{id}/comments/{commentId}",
                [401, 204, 403, 403, 404, 204],
                [401, 204, 403, 404, 404, 404],
            )
        },
        row("GET", "/v1/posts/{id}/thread", SEE, SEE_PRIVATE),
        row("GET", "/v1/feed/home", ALL, ALL),
        row("GET", "/v1/tags/{tag}/posts", ALL, ALL),
        row("GET", "/v1/search/posts", ALL, ALL),
        row("GET", "/v1/search/users", ALL, ALL),
        row("GET", "/v1/notifications", ALL, ALL),
        row("GET", "/v1/notifications/unread-count", ALL, ALL),
        Row {
            body: Some(read_body),
            ..row("POST", "/v1/notifications/read", ALL, ALL)
        },
        Row {
            body: Some(report_body_marker),
            ..row(
                "POST",
                "/v1/reports",
                [401, 201, 201, 201, 404, 201],
                [401, 201, 201, 404, 404, 404],
            )
        },
        row(
            "POST",
            "/v1/admin/users/{username}/suspend",
            [401, 403, 403, 403, 403, 204],
            [401, 403, 403, 403, 403, 204],
        ),
    ]
}

/// The tags whose routes the matrix must cover (plus `GET /v1/users/{username}`).
const SOCIAL_TAGS: [&str; 5] = [
    "social",
    "posts",
    "timelines",
    "notifications",
    "moderation",
];

/// A row that changes relations (follows, blocks, mutes, suspension) runs in a world of its
/// own; the others share one world per account kind, in table order.
fn changes_relations(row: &Row) -> bool {
    row.method != "GET"
        && matches!(
            row.path,
            "/v1/users/{username}/follow"
                | "/v1/users/{username}/block"
                | "/v1/users/{username}/mute"
                | "/v1/admin/users/{username}/suspend"
        )
}

struct World {
    owner: User,
    follower: User,
    stranger: User,
    blocked: User,
    admin: User,
    post: String,
    comment: String,
}

impl World {
    async fn new(api: &Api, private: bool) -> World {
        // One at a time: password hashing is a bounded pool that sheds load past its queue.
        let owner = api.user().await;
        let follower = api.user().await;
        let stranger = api.user().await;
        let blocked = api.user().await;
        let admin = api.user().await;
        make_admin(api, &admin).await;
        ok(&follow(api, &follower, &owner).await);
        ok(&act(
            api,
            "POST",
            &format!("/v1/users/{}/block", blocked.username),
            &owner,
        )
        .await);
        let post = say(api, &owner, "the matrix #matrixtag").await.to_string();
        let comment = comment_on(api, &owner, &post).await;
        if private {
            ok(&api
                .call(
                    "PATCH",
                    "/v1/me",
                    json!({ "private": true }),
                    Some(&owner.token),
                )
                .await);
        }
        World {
            owner,
            follower,
            stranger,
            blocked,
            admin,
            post,
            comment,
        }
    }

    fn user(&self, role: Role) -> Option<&User> {
        match role {
            Role::Anonymous => None,
            Role::Owner => Some(&self.owner),
            Role::Follower => Some(&self.follower),
            Role::Stranger => Some(&self.stranger),
            Role::Blocked => Some(&self.blocked),
            Role::Admin => Some(&self.admin),
        }
    }
}

async fn comment_on(api: &Api, by: &User, post: &str) -> String {
    let reply = api
        .call(
            "POST",
            &format!("/v1/posts/{post}/comments"),
            json!({ "content": "owner's comment" }),
            Some(&by.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.str("/id")
}

async fn run_row(api: &Api, world: &World, row: &Row, private: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let want = if private { row.private } else { row.public };
    for (role, want) in ROLES.into_iter().zip(want) {
        let (post, comment) = match row.target {
            Target::Shared => (world.post.clone(), world.comment.clone()),
            Target::Fresh => {
                // Made public-visible, then hidden by the account's privacy like the shared one.
                let post = say(api, &world.owner, "fresh #matrixtag").await.to_string();
                let comment = comment_on(api, &world.owner, &post).await;
                (post, comment)
            }
        };
        let mut path = row
            .path
            .replace("{username}", &world.owner.username)
            .replace("{id}", &post)
            .replace("{commentId}", &comment)
            .replace("{tag}", "matrixtag");
        if path.starts_with("/v1/search/") {
            path.push_str("?q=matrix");
        }
        let body = row.body.map_or(Value::Null, |make| {
            let text = make().to_string().replace("{id}", &post);
            serde_json::from_str(&text).unwrap()
        });
        let token = world.user(role).map(|u| u.token.as_str());
        let reply = api.call(row.method, &path, body, token).await;
        if reply.status.as_u16() != want {
            failures.push(format!(
                "{} {} as {role:?} ({}): got {}, want {want}: {}",
                row.method,
                row.path,
                if private { "private" } else { "public" },
                reply.status.as_u16(),
                reply.json
            ));
        }
    }
    failures
}

#[tokio::test]
async fn every_social_endpoint_answers_each_role_as_the_table_says() {
    let api = Api::new();
    let rows = table();
    let kinds = [false, true].map(|private| {
        let (api, rows) = (&api, &rows);
        async move {
            let mut failures = Vec::new();
            let shared = World::new(api, private).await;
            for row in rows {
                let own;
                let world = if changes_relations(row) {
                    own = World::new(api, private).await;
                    &own
                } else {
                    &shared
                };
                failures.extend(run_row(api, world, row, private).await);
            }
            failures
        }
    });
    let failures: Vec<String> = futures::future::join_all(kinds)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn every_social_endpoint_has_a_row() {
    let document = serde_json::to_value(haberci_backend::api::openapi_document()).unwrap();
    let rows = table();
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let tagged = operation["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| SOCIAL_TAGS.contains(&t.as_str().unwrap_or("")));
            let profile = path == "/v1/users/{username}";
            if !(tagged || profile) {
                continue;
            }
            let method = method.to_uppercase();
            if !rows.iter().any(|r| r.method == method && r.path == path) {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "no row in the matrix for: {missing:?}");
    // And no row names a route that does not exist.
    for row in &rows {
        let method = row.method.to_lowercase();
        assert!(
            document["paths"][row.path][&method].is_object(),
            "{} {} is not in the OpenAPI document",
            row.method,
            row.path
        );
    }
}
