//! Page cursors of the social API: opaque to clients, checked on the way back in. A cursor is
//! its position (a UUIDv7, or a time and an id) in hex plus the first 4 bytes of the
//! position's SHA-256, so a cursor that was edited or truncated is refused with 422 `cursor`
//! instead of silently paging from somewhere else.

use time::OffsetDateTime;
use uuid::Uuid;

use super::ApiError;
use crate::social::store::TimeCursor;

fn check(payload: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, payload.as_bytes());
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn seal(payload: String) -> String {
    let sum = check(&payload);
    format!("{payload}.{sum}")
}

fn open(text: &str) -> Result<&str, ApiError> {
    let bad = || ApiError::invalid("cursor", "cursor must be a nextCursor from a previous page");
    let (payload, sum) = text.rsplit_once('.').ok_or_else(bad)?;
    if check(payload) != sum {
        return Err(bad());
    }
    Ok(payload)
}

fn bad() -> ApiError {
    ApiError::invalid("cursor", "cursor must be a nextCursor from a previous page")
}

/// A cursor after (or before) a post, comment or notification id.
pub fn encode_id(id: Uuid) -> String {
    seal(id.simple().to_string())
}

pub fn decode_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(open(text)?).map_err(|_| bad())
}

/// A cursor in a list ordered by (time, id).
pub fn encode_time(cursor: TimeCursor) -> String {
    let micros = cursor.at.unix_timestamp_nanos() / 1_000;
    seal(format!("{micros}_{}", cursor.id.simple()))
}

pub fn decode_time(text: &str) -> Result<TimeCursor, ApiError> {
    let (micros, id) = open(text)?.split_once('_').ok_or_else(bad)?;
    let micros: i128 = micros.parse().map_err(|_| bad())?;
    let at = micros
        .checked_mul(1_000)
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .ok_or_else(bad)?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok(TimeCursor { at, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_edits() {
        let id = Uuid::now_v7();
        let text = encode_id(id);
        assert_eq!(decode_id(&text).ok(), Some(id));
        let mut edited = text.clone().into_bytes();
        edited[3] = if edited[3] == b'0' { b'1' } else { b'0' };
        assert!(decode_id(&String::from_utf8(edited).unwrap_or_default()).is_err());
        assert!(decode_id(&text[..text.len() - 1]).is_err());
        assert!(decode_id("").is_err());
        assert!(decode_id(&id.to_string()).is_err());

        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let cursor = TimeCursor { at, id };
        assert_eq!(decode_time(&encode_time(cursor)).ok(), Some(cursor));
        assert!(decode_time(&encode_id(id)).is_err());
    }
}
