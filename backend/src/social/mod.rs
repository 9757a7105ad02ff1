//! The social half: follows, blocks and mutes, posts (and reposts), comments, likes, the home
//! feed and notifications. docs/SOCIAL.md is the model; this module is its code.
//!
//! - [`text`]: mentions and hashtags read from a post's text; Turkish case folding (pure).
//! - [`store`]: the SQL. Visibility has one definition, [`store::visible`] (SQL written inline
//!   into every read of a post).
//! - [`feed`]: the home timeline: capped Redis sorted sets filled by fan-out on write, merged
//!   at read time with the posts of large accounts, rebuilt from Postgres when missing.
//! - [`fanout`]: the worker's loop over the fan-out outbox.
//! - [`notify`]: storing notifications, and announcing them to the user's sessions.

pub mod fanout;
pub mod feed;
pub mod live;
pub mod notify;
pub mod store;
pub mod text;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The longest post or comment, in Unicode scalar values (what Postgres' `char_length` counts).
pub const MAX_POST_CHARS: usize = 1000;
/// The most media a post carries.
pub const MAX_POST_MEDIA: usize = 4;

/// Who may see a post (besides its author).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Everyone (only followers when the author's account is private).
    Public,
    /// The author's followers.
    Followers,
    /// Only the users the post mentions.
    Mentioned,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Followers => "followers",
            Visibility::Mentioned => "mentioned",
        }
    }
}

impl TryFrom<String> for Visibility {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "public" => Ok(Visibility::Public),
            "followers" => Ok(Visibility::Followers),
            "mentioned" => Ok(Visibility::Mentioned),
            _ => Err(format!("unknown visibility {text:?}")),
        }
    }
}

/// The text of a post or comment: 1–[`MAX_POST_CHARS`] scalar values after trimming, no
/// control characters other than newlines and tabs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostText(String);

impl PostText {
    pub fn parse(text: &str) -> Result<PostText, &'static str> {
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty");
        }
        if text.chars().count() > MAX_POST_CHARS {
            return Err("must be at most 1000 characters (Unicode scalar values)");
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("must not contain control characters");
        }
        Ok(PostText(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PostText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PostText::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The score of a post in a timeline: its UUIDv7 milliseconds. Members with one score sort by
/// their text, which for hyphenated lowercase UUIDv7s is id order too, so a timeline's order
/// is exactly id order.
pub fn score(post: Uuid) -> u64 {
    let bytes = post.as_bytes();
    bytes[..6]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_text_counts_scalar_values() {
        assert!(PostText::parse(&"ğ".repeat(MAX_POST_CHARS)).is_ok());
        assert!(PostText::parse(&"ğ".repeat(MAX_POST_CHARS + 1)).is_err());
        assert!(PostText::parse(&"😀".repeat(MAX_POST_CHARS)).is_ok());
        assert!(PostText::parse("   ").is_err());
        assert!(PostText::parse("a\u{0}b").is_err());
        assert_eq!(
            PostText::parse(" a\nb ").map(|t| t.0),
            Ok("a\nb".to_owned())
        );
    }

    #[test]
    fn scores_are_uuid_v7_milliseconds() {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 123_000_000);
        let id = Uuid::new_v7(ts);
        assert_eq!(score(id), 1_700_000_000_123);
    }
}
