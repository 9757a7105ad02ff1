//! Domain value types: UUID id newtypes, [`Seq`] and [`Timestamp`].
//!
//! Parse, don't validate: each type can only hold a valid value, so code that takes a
//! `ConversationId` or a `Seq` never re-checks it.
//!
//! With the `sqlx` feature (the backend only) the id newtypes are also Postgres `uuid` values
//! (`sqlx::Type`, `Encode`, `Decode`); decoding a nil UUID is an error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{InvalidField, Problem};

/// Bytes of a UUID on the wire.
pub const UUID_LEN: usize = 16;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Invariant: never the nil UUID. On the wire: 16 raw bytes; in JSON: the lowercase
        /// hyphenated string.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps `uuid`; `None` for the nil UUID.
            pub const fn new(uuid: Uuid) -> Option<Self> {
                if uuid.is_nil() { None } else { Some(Self(uuid)) }
            }

            /// The id as a UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The 16 bytes that go on the wire.
            pub const fn as_bytes(&self) -> &[u8; UUID_LEN] {
                self.0.as_bytes()
            }

            /// Parses the wire form (16 bytes, not nil). `field` names the proto field in
            /// the error.
            pub fn from_wire(field: &'static str, bytes: &[u8]) -> Result<Self, InvalidField> {
                let uuid = Uuid::from_slice(bytes).map_err(|_| {
                    InvalidField::new(field, Problem::WrongLength { expected: UUID_LEN, actual: bytes.len() })
                })?;
                Self::new(uuid).ok_or(InvalidField::new(field, Problem::NilId))
            }

            pub(crate) fn to_wire(self) -> bytes::Bytes {
                bytes::Bytes::copy_from_slice(self.0.as_bytes())
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = InvalidField;
            fn try_from(uuid: Uuid) -> Result<Self, InvalidField> {
                Self::new(uuid).ok_or(InvalidField::new(stringify!($name), Problem::NilId))
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = InvalidField;
            fn from_str(s: &str) -> Result<Self, InvalidField> {
                let uuid = Uuid::parse_str(s)
                    .map_err(|_| InvalidField::new(stringify!($name), Problem::NotAUuid))?;
                uuid.try_into()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.hyphenated().serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let uuid = Uuid::deserialize(d)?;
                Self::new(uuid).ok_or_else(|| serde::de::Error::custom("nil UUID is not a valid id"))
            }
        }

        // Postgres: a `uuid` column, the same bytes as `Uuid`'s own encoding.
        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <Uuid as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <Uuid as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <Uuid as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <Uuid as sqlx::Encode<'_, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
            }

            fn size_hint(&self) -> usize {
                <Uuid as sqlx::Encode<'_, sqlx::Postgres>>::size_hint(&self.0)
            }
        }

        /// Invariant kept on the way in: a nil UUID read from the database is a decode
        /// error (a corrupt row), never a panic and never a value of this type.
        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let uuid = <Uuid as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Self::new(uuid)
                    .ok_or_else(|| Box::new(InvalidField::new(stringify!($name), Problem::NilId)) as _)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A group (a conversation with many members).
    GroupId
);
uuid_id!(
    /// A conversation: the scope of [`Seq`] numbering, receipts and resume positions.
    ConversationId
);
uuid_id!(
    /// A stored message, assigned by the server.
    MessageId
);
uuid_id!(
    /// The client's idempotency key for a `Send`: a retry with the same id never stores twice.
    ClientMsgId
);
uuid_id!(
    /// One realtime session (one connection), for logs and support.
    SessionId
);
uuid_id!(
    /// Media uploaded through the HTTP API.
    MediaId
);
uuid_id!(
    /// A stored notification (the social half: a follow, a like, …).
    NotificationId
);
uuid_id!(
    /// A post (the social half).
    PostId
);
uuid_id!(
    /// A comment on a post (the social half).
    CommentId
);
uuid_id!(
    /// Whom a stored message was addressed to: a [`UserId`] (direct message) or a
    /// [`GroupId`]. User and group ids share one UUID space, so the id alone is unambiguous
    /// to the server; a client tells them apart by the conversation (or: a direct message
    /// to you carries your own user id).
    RecipientId
);

impl From<UserId> for RecipientId {
    fn from(id: UserId) -> Self {
        Self(id.0)
    }
}

impl From<GroupId> for RecipientId {
    fn from(id: GroupId) -> Self {
        Self(id.0)
    }
}

/// A position in a conversation: the n-th stored message has seq n.
///
/// Invariant: `1 <= seq <= MAX`, where `MAX = 2^53 - 1` so that the value survives JSON and
/// JavaScript numbers unchanged. On the wire, `0` means "none" in the fields that allow it
/// (`Option<Seq>` here) and is rejected elsewhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// The first message of every conversation.
    pub const FIRST: Seq = Seq(1);
    /// The largest seq: `2^53 - 1` (JavaScript's `Number.MAX_SAFE_INTEGER`).
    pub const MAX: Seq = Seq((1 << 53) - 1);

    /// `None` unless `1 <= value <= Seq::MAX`.
    pub const fn new(value: u64) -> Option<Seq> {
        if value >= 1 && value <= Self::MAX.0 {
            Some(Seq(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The following seq; `None` past [`Seq::MAX`].
    pub const fn next(self) -> Option<Seq> {
        Seq::new(self.0 + 1)
    }

    pub(crate) fn from_wire(field: &'static str, value: u64) -> Result<Seq, InvalidField> {
        Seq::new(value).ok_or(InvalidField::new(field, Problem::SeqOutOfRange(value)))
    }

    /// For fields where 0 means "none".
    pub(crate) fn from_wire_optional(
        field: &'static str,
        value: u64,
    ) -> Result<Option<Seq>, InvalidField> {
        if value == 0 {
            Ok(None)
        } else {
            Seq::from_wire(field, value).map(Some)
        }
    }

    pub(crate) fn to_wire_optional(seq: Option<Seq>) -> u64 {
        seq.map_or(0, Seq::get)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(d)?;
        Seq::new(value).ok_or_else(|| {
            serde::de::Error::custom(format_args!("seq {value} is outside 1..=2^53-1"))
        })
    }
}

/// A point in time with millisecond precision, UTC.
///
/// On the wire: `int64` Unix milliseconds. In JSON: RFC 3339 with exactly three fraction
/// digits and `Z`, e.g. `2026-11-25T10:00:00.000Z`.
///
/// Invariant: between [`Timestamp::MIN`] (`0000-01-01T00:00:00.000Z`) and
/// [`Timestamp::MAX`] (`9999-12-31T23:59:59.999Z`), the range RFC 3339 can write.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);
    /// 1970-01-01T00:00:00.000Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// `None` outside `MIN..=MAX`.
    pub const fn from_unix_millis(ms: i64) -> Option<Timestamp> {
        if ms >= Self::MIN.0 && ms <= Self::MAX.0 {
            Some(Timestamp(ms))
        } else {
            None
        }
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Converts a date-time, dropping precision below a millisecond (rounding toward the
    /// past). `None` outside `MIN..=MAX`.
    pub fn from_datetime(dt: OffsetDateTime) -> Option<Timestamp> {
        let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(ms).ok().and_then(Timestamp::from_unix_millis)
    }

    /// The same instant as a UTC date-time.
    pub fn to_datetime(self) -> OffsetDateTime {
        // Invariant: MIN..=MAX lies inside the range `time` represents, so this cannot fail;
        // the fallback is unreachable but keeps the function total without a panic.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub(crate) fn from_wire(field: &'static str, ms: i64) -> Result<Timestamp, InvalidField> {
        Timestamp::from_unix_millis(ms)
            .ok_or(InvalidField::new(field, Problem::TimestampOutOfRange(ms)))
    }

    /// For fields where 0 means "unknown".
    pub(crate) fn from_wire_optional(
        field: &'static str,
        ms: i64,
    ) -> Result<Option<Timestamp>, InvalidField> {
        if ms == 0 {
            Ok(None)
        } else {
            Timestamp::from_wire(field, ms).map(Some)
        }
    }

    /// Parses RFC 3339 (any offset; normalised to UTC). Rejects sub-millisecond digits
    /// rather than silently dropping them, and instants outside `MIN..=MAX`.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, InvalidField> {
        let problem = || InvalidField::new("timestamp", Problem::NotRfc3339);
        let dt = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| problem())?;
        if dt.nanosecond() % 1_000_000 != 0 {
            return Err(problem());
        }
        Timestamp::from_datetime(dt).ok_or_else(problem)
    }
}

// Hand-written rather than through `time`'s formatter: fixed width, always `Z`, and
// infallible for every value the invariant allows.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.to_datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = InvalidField;
    fn from_str(s: &str) -> Result<Self, InvalidField> {
        Timestamp::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
