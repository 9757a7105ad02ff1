//! Values a user types, as types that can only hold valid, normalized values (parse, don't
//! validate). Each parses from a `String` (serde goes through [`TryFrom<String>`], so a JSON body
//! with a bad value is refused at deserialization, naming the field) and serializes as a string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a value was refused; the text is shown to the client as the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(value: String) -> Result<Self, Invalid> {
                $name::parse(&value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// 3–32 characters `a-z 0-9 _`, starting with a letter. Normalized: surrounding whitespace
/// trimmed, lowercased. Invariant: `as_str()` is already lowercase, so it is the canonical form
/// (Postgres' citext uniqueness agrees with it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 32;
    /// The same rule as [`Username::parse`], for the OpenAPI schema.
    pub const PATTERN: &'static str = "^[A-Za-z][A-Za-z0-9_]{2,31}$";

    pub fn parse(text: &str) -> Result<Username, Invalid> {
        let name = text.trim().to_ascii_lowercase();
        if name.len() < Self::MIN {
            return Err(Invalid("username must be at least 3 characters"));
        }
        if name.len() > Self::MAX {
            return Err(Invalid("username must be at most 32 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Invalid("username may only hold letters a-z, digits and _"));
        }
        if !name.as_bytes()[0].is_ascii_lowercase() {
            return Err(Invalid("username must start with a letter"));
        }
        Ok(Username(name))
    }
}
string_newtype!(Username);

/// An email address: ASCII, `local@domain`, at most 254 characters, the local part at most 64,
/// the domain at least two dot-separated labels of `a-z 0-9 -`. Normalized: trimmed, domain
/// lowercased (the local part keeps its case; uniqueness ignores case through citext).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX: usize = 254;

    pub fn parse(text: &str) -> Result<Email, Invalid> {
        let text = text.trim();
        if text.len() > Self::MAX {
            return Err(Invalid("email must be at most 254 characters"));
        }
        let (local, domain) = text
            .rsplit_once('@')
            .ok_or(Invalid("email must look like name@example.com"))?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
        if !local_ok {
            return Err(Invalid("email has an invalid part before the @"));
        }
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_lowercase()));
        if !domain_ok {
            return Err(Invalid("email has an invalid domain"));
        }
        Ok(Email(format!("{local}@{domain}")))
    }
}
string_newtype!(Email);

/// A password as chosen at registration: 8–128 characters (OWASP: at least 8, allow long
/// passphrases, any characters, no composition rules). Not trimmed: every character counts.
/// Never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN: usize = 8;
    pub const MAX: usize = 128;

    pub fn parse(text: &str) -> Result<Password, Invalid> {
        let chars = text.chars().count();
        if chars < Self::MIN {
            return Err(Invalid("password must be at least 8 characters"));
        }
        if chars > Self::MAX {
            return Err(Invalid("password must be at most 128 characters"));
        }
        Ok(Password(text.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Password::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn has_control(text: &str, allow_newline: bool) -> bool {
    text.chars()
        .any(|c| c.is_control() && !(allow_newline && c == '\n'))
}

/// Whether `c` lets one name pose as another: a bidirectional control (U+202E turns
/// "gnp.exe" around; marks and isolates reorder what follows too), or a character that shows
/// nothing (zero-width space, word joiner, soft hyphen, Hangul fillers, tags…). The joiners
/// U+200C/U+200D are judged by [`deceptive_char`], which knows their neighbours.
fn invisible_or_bidi(c: char) -> bool {
    matches!(c,
        // Bidirectional controls: Arabic letter mark, LRM, RLM, embeddings and overrides,
        // isolates.
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        // Invisible: soft hyphen, combining grapheme joiner, Hangul fillers, Khmer inherent
        // vowels, Mongolian selectors and vowel separator, zero-width space, word joiner and
        // invisible operators, deprecated format characters, line and paragraph separators,
        // BOM, musical format controls, tags and variation selectors supplement.
        | '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2064}' | '\u{206A}'..='\u{206F}' | '\u{3164}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The first character of `text` that lets a name pose as another ([`deceptive_at`]).
pub fn deceptive_char(text: &str) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len())
        .find(|&i| deceptive_at(&chars, i))
        .map(|i| chars[i])
}

/// `text` with every character that lets a name pose as another replaced by `with` (for
/// names that are kept rather than refused, such as an upload's file name).
pub fn replace_deceptive(text: &str, with: char) -> String {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len())
        .map(|i| {
            if deceptive_at(&chars, i) {
                with
            } else {
                chars[i]
            }
        })
        .collect()
}

/// Whether `chars[i]` lets a name pose as another ([`invisible_or_bidi`]). The zero-width
/// non-joiner and joiner are kept where scripts (Persian, Indic) and emoji sequences need
/// them: between two characters that are neither ASCII, spaces nor joiners.
fn deceptive_at(chars: &[char], i: usize) -> bool {
    let is_joiner = |c: char| matches!(c, '\u{200C}' | '\u{200D}');
    let joins =
        |n: Option<&char>| n.is_some_and(|&n| !n.is_ascii() && !n.is_whitespace() && !is_joiner(n));
    match chars[i] {
        c if is_joiner(c) => {
            !(joins(i.checked_sub(1).and_then(|p| chars.get(p))) && joins(chars.get(i + 1)))
        }
        c => invisible_or_bidi(c),
    }
}

/// 1–64 characters, no control, bidirectional or invisible characters ([`deceptive_char`]);
/// surrounding whitespace trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX: usize = 64;

    pub fn parse(text: &str) -> Result<DisplayName, Invalid> {
        let name = text.trim();
        if name.is_empty() {
            return Err(Invalid("display name must not be empty"));
        }
        if name.chars().count() > Self::MAX {
            return Err(Invalid("display name must be at most 64 characters"));
        }
        if has_control(name, false) {
            return Err(Invalid("display name must not hold control characters"));
        }
        if deceptive_char(name).is_some() {
            return Err(Invalid(
                "display name must not hold bidirectional controls or invisible characters",
            ));
        }
        Ok(DisplayName(name.to_owned()))
    }
}
string_newtype!(DisplayName);

/// At most 500 characters; newlines allowed, other control characters not; surrounding
/// whitespace trimmed. May be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    pub const MAX: usize = 500;

    pub fn parse(text: &str) -> Result<Bio, Invalid> {
        let bio = text.trim();
        if bio.chars().count() > Self::MAX {
            return Err(Invalid("bio must be at most 500 characters"));
        }
        if has_control(bio, true) {
            return Err(Invalid("bio must not hold control characters"));
        }
        Ok(Bio(bio.to_owned()))
    }
}
string_newtype!(Bio);

/// A reference to an uploaded picture (the media service defines it): 1–256 characters of
/// `A-Z a-z 0-9 . _ : / -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarRef(String);

impl AvatarRef {
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:/-]{1,256}$";

    pub fn parse(text: &str) -> Result<AvatarRef, Invalid> {
        let ok = !text.is_empty()
            && text.len() <= 256
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
        if ok {
            Ok(AvatarRef(text.to_owned()))
        } else {
            Err(Invalid(
                "avatar_ref must be 1-256 characters of A-Z a-z 0-9 . _ : / -",
            ))
        }
    }
}
string_newtype!(AvatarRef);

/// What a user logs in with: a username or an email (anything with an `@`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginName {
    Username(Username),
    Email(Email),
}

impl LoginName {
    pub fn parse(text: &str) -> Result<LoginName, Invalid> {
        if text.contains('@') {
            Email::parse(text).map(LoginName::Email)
        } else {
            Username::parse(text).map(LoginName::Username)
        }
    }

    /// The normalized text (a rate-limit key and a log field).
    pub fn as_str(&self) -> &str {
        match self {
            LoginName::Username(u) => u.as_str(),
            LoginName::Email(e) => e.as_str(),
        }
    }
}

impl<'de> Deserialize<'de> for LoginName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        LoginName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A refresh-token family (`sessions.family_id`). The backend's own: no other tier sees it.
/// (Users and sessions are `haberci_wire::UserId` / `SessionId`, one type on both sides of
/// every seam.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct FamilyId(pub Uuid);

impl FamilyId {
    /// A new time-ordered id (UUIDv7).
    pub fn generate() -> Self {
        FamilyId(Uuid::now_v7())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let ok = [("Alice_1", "alice_1"), ("  bob ", "bob"), ("abc", "abc")];
        for (input, want) in ok {
            assert_eq!(
                Username::parse(input).map(|u| u.0),
                Ok(want.to_owned()),
                "{input:?}"
            );
        }
        for bad in [
            "ab",
            "1abc",
            "_abc",
            "al ice",
            "álice",
            "a-b-c",
            &"a".repeat(33),
            "",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        let ok = [
            ("Alice@Example.COM", "Alice@example.com"),
            (" a.b+c@mail.example.org ", "a.b+c@mail.example.org"),
        ];
        for (input, want) in ok {
            assert_eq!(
                Email::parse(input).map(|e| e.0),
                Ok(want.to_owned()),
                "{input:?}"
            );
        }
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@-b.com",
            "a..b@example.com",
            "a b@example.com",
            "a@example.c0m",
            "ä@example.com",
            "<a>@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_count_characters_and_never_print() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("çççççççç").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("hunter2hunter2").ok()),
            "Some(Password(***))"
        );
    }

    #[test]
    fn display_names_bios_avatars() {
        assert_eq!(
            DisplayName::parse("  Ada L. ").map(|d| d.0),
            Ok("Ada L.".into())
        );
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse("a\u{7}b").is_err());
        assert!(Bio::parse("line one\nline two").is_ok());
        assert!(Bio::parse("tab\there").is_err());
        assert!(AvatarRef::parse("media:01J/abc.png").is_ok());
        assert!(AvatarRef::parse("javascript:alert(1)").is_err());
    }

    /// One user must not be able to look like another: every bidi control and invisible
    /// character is refused, the joiners only where no script or emoji needs them.
    #[test]
    fn names_refuse_bidi_controls_and_invisible_characters() {
        let cases: &[(&str, bool)] = &[
            ("Ada Lovelace", true),
            ("Ayşe Gül Öztürk", true),
            ("محمد", true),
            ("می\u{200C}خواهم", true), // Persian: ZWNJ between letters
            ("👨\u{200D}👩\u{200D}👧 family", true), // an emoji sequence
            ("❤\u{FE0F}", true),       // a variation selector
            ("admin\u{202E}nimda", false), // right-to-left override
            ("\u{2067}Bob\u{2069}", false), // isolates
            ("Bob\u{200F}", false),    // RLM
            ("\u{061C}Ali", false),    // Arabic letter mark
            ("Bo\u{200B}b", false),    // zero-width space
            ("Bob\u{2060}", false),    // word joiner
            ("\u{FEFF}Bob", false),    // BOM
            ("Bo\u{00AD}b", false),    // soft hyphen
            ("\u{3164}", false),       // Hangul filler: looks empty
            ("Bob\u{E0041}", false),   // a tag character
            ("Bo\u{200D}b", false),    // a joiner between ASCII letters
            ("Bob\u{200C}", false),    // a joiner at the edge
            ("\u{200D}👩", false),
        ];
        for &(name, ok) in cases {
            assert_eq!(DisplayName::parse(name).is_ok(), ok, "{name:?}");
            assert_eq!(deceptive_char(name).is_none(), ok, "{name:?}");
        }
    }

    #[test]
    fn login_names() {
        assert!(matches!(
            LoginName::parse("Bob"),
            Ok(LoginName::Username(_))
        ));
        assert!(matches!(
            LoginName::parse("b@example.com"),
            Ok(LoginName::Email(_))
        ));
        assert_eq!(
            LoginName::parse("BOB").map(|l| l.as_str().to_owned()),
            Ok("bob".into())
        );
    }
}
