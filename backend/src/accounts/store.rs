//! Queries on `users` and `credentials`. Every value written comes from a parsed type in
//! [`super::names`], so what is read back is valid too.

use haberci_wire::{MediaId, UserId};
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

use super::names::{AvatarRef, Bio, DisplayName, Email, LoginName, Username};

/// A user as stored (and as the profile cache keeps it, in JSON).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub bio: String,
    pub avatar_ref: Option<String>,
    /// An image upload of this user's, shown to anyone (`GET /v1/media/{id}` needs no token
    /// for it). Cached profiles written before it existed read as `None`.
    #[serde(default)]
    pub avatar_media_id: Option<MediaId>,
    pub is_private: bool,
    /// Whether people with a relationship see my online state and last seen.
    pub show_presence: bool,
    /// Who may add me to a group: `everyone`, `following`, `nobody`.
    pub group_adds: String,
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const USER_COLUMNS: &str = "id, username::text AS username, email::text AS email, display_name, bio, avatar_ref, avatar_media_id, is_private, show_presence, group_adds, is_admin, suspended_at, followers_count, following_count, posts_count, created_at, updated_at";

/// What registration stores.
pub struct NewUser<'a> {
    pub id: UserId,
    pub username: &'a Username,
    pub email: &'a Email,
    pub display_name: &'a DisplayName,
    pub password_hash: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// A unique constraint said no; the field it guards.
    #[error("{0} is taken")]
    Taken(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts the user and their credential (call inside a transaction).
pub async fn insert_user(
    tx: &mut sqlx::PgConnection,
    new: &NewUser<'_>,
) -> Result<UserRecord, InsertError> {
    let user = sqlx::query_as::<_, UserRecord>(&format!(
        "INSERT INTO users (id, username, email, display_name) VALUES ($1, $2, $3, $4)
         RETURNING {USER_COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.username.as_str())
    .bind(new.email.as_str())
    .bind(new.display_name.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(taken)?;
    sqlx::query("INSERT INTO credentials (user_id, password_hash) VALUES ($1, $2)")
        .bind(new.id)
        .bind(new.password_hash)
        .execute(&mut *tx)
        .await?;
    Ok(user)
}

fn taken(err: sqlx::Error) -> InsertError {
    if let sqlx::Error::Database(db) = &err {
        match db.constraint() {
            Some("users_username_key") => return InsertError::Taken("username"),
            Some("users_email_key") => return InsertError::Taken("email"),
            _ => {}
        }
    }
    InsertError::Db(err)
}

/// The user id and password hash for a login name, if such a user exists and is not
/// suspended (a suspended account cannot sign in).
pub async fn credentials(
    db: &PgPool,
    login: &LoginName,
) -> Result<Option<(UserId, String)>, sqlx::Error> {
    let column = match login {
        LoginName::Username(_) => "u.username",
        LoginName::Email(_) => "u.email",
    };
    sqlx::query_as::<_, (UserId, String)>(&format!(
        "SELECT u.id, c.password_hash FROM users u JOIN credentials c ON c.user_id = u.id
         WHERE {column} = $1::citext AND u.suspended_at IS NULL"
    ))
    .bind(login.as_str())
    .fetch_optional(db)
    .await
}

pub async fn by_id(db: impl PgExecutor<'_>, id: UserId) -> Result<Option<UserRecord>, sqlx::Error> {
    sqlx::query_as::<_, UserRecord>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn by_username(
    db: &PgPool,
    username: &Username,
) -> Result<Option<UserRecord>, sqlx::Error> {
    sqlx::query_as::<_, UserRecord>(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = $1::citext"
    ))
    .bind(username.as_str())
    .fetch_optional(db)
    .await
}

/// A profile change; `None` leaves a field as it is. `avatar_ref: Some(None)` clears it.
#[derive(Debug, Default)]
pub struct ProfileUpdate {
    pub display_name: Option<DisplayName>,
    pub bio: Option<Bio>,
    pub avatar_ref: Option<Option<AvatarRef>>,
    /// Checked by the caller: an image upload of this user's.
    pub avatar_media_id: Option<Option<MediaId>>,
    pub private: Option<bool>,
    pub show_presence: Option<bool>,
    pub group_adds: Option<GroupAdds>,
}

/// Who may add a user to a group (`users.group_adds`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GroupAdds {
    /// Anyone (the default).
    Everyone,
    /// People I follow.
    Following,
    /// Nobody: I create my groups myself.
    Nobody,
}

impl GroupAdds {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupAdds::Everyone => "everyone",
            GroupAdds::Following => "following",
            GroupAdds::Nobody => "nobody",
        }
    }
}

pub async fn update_profile(
    db: &PgPool,
    id: UserId,
    update: &ProfileUpdate,
) -> Result<Option<UserRecord>, sqlx::Error> {
    let (set_avatar, avatar) = match &update.avatar_ref {
        None => (false, None),
        Some(value) => (true, value.as_ref().map(|a| a.as_str().to_owned())),
    };
    sqlx::query_as::<_, UserRecord>(&format!(
        "UPDATE users SET
            display_name = COALESCE($2, display_name),
            bio = COALESCE($3, bio),
            avatar_ref = CASE WHEN $4 THEN $5 ELSE avatar_ref END,
            is_private = COALESCE($6, is_private),
            avatar_media_id = CASE WHEN $7 THEN $8 ELSE avatar_media_id END,
            show_presence = COALESCE($9, show_presence),
            group_adds = COALESCE($10, group_adds),
            updated_at = now()
         WHERE id = $1
         RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(update.display_name.as_ref().map(|d| d.as_str().to_owned()))
    .bind(update.bio.as_ref().map(|b| b.as_str().to_owned()))
    .bind(set_avatar)
    .bind(avatar)
    .bind(update.private)
    .bind(update.avatar_media_id.is_some())
    .bind(update.avatar_media_id.flatten())
    .bind(update.show_presence)
    .bind(update.group_adds.map(GroupAdds::as_str))
    .fetch_optional(db)
    .await
}
