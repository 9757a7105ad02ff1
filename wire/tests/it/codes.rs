//! The code table: unique numbers in every column, consistent lookups, and the same table
//! in docs/PROTOCOL.md.

use std::collections::HashSet;

use haberci_wire::*;

#[test]
fn table_rows_are_in_protocol_code_order() {
    for (i, row) in CODE_TABLE.iter().enumerate() {
        assert_eq!(row.protocol as usize, i + 1, "{}", row.name);
        assert_eq!(row.code.info(), row);
        assert_eq!(ErrorCode::ALL[i], row.code);
    }
}

#[test]
fn codes_are_unique_in_every_column() {
    let n = CODE_TABLE.len();
    let unique = |values: Vec<String>| values.into_iter().collect::<HashSet<_>>().len();
    assert_eq!(
        unique(CODE_TABLE.iter().map(|r| r.name.to_string()).collect()),
        n
    );
    assert_eq!(
        unique(CODE_TABLE.iter().map(|r| r.protocol.to_string()).collect()),
        n
    );
    assert_eq!(
        unique(CODE_TABLE.iter().map(|r| r.quic.to_string()).collect()),
        n
    );
    assert_eq!(
        unique(CODE_TABLE.iter().map(|r| r.websocket.to_string()).collect()),
        n
    );
    assert_eq!(
        unique(CODE_TABLE.iter().map(|r| format!("{:?}", r.code)).collect()),
        n
    );
}

#[test]
fn close_codes_stay_in_their_ranges() {
    for row in &CODE_TABLE {
        assert!(
            (4000..=4999).contains(&row.websocket),
            "{}: WebSocket private range",
            row.name
        );
        assert_ne!(
            row.quic, QUIC_NO_ERROR,
            "{}: 0 is the normal close",
            row.name
        );
        assert_ne!(row.protocol, 0, "{}: 0 is proto3's default", row.name);
    }
}

#[test]
fn lookups_invert_the_table() {
    for code in ErrorCode::ALL {
        assert_eq!(
            ErrorCode::from_protocol_code(code.protocol_code()),
            Some(code)
        );
        assert_eq!(ErrorCode::from_quic_code(code.quic_code()), Some(code));
        assert_eq!(
            ErrorCode::from_websocket_close_code(code.websocket_close_code()),
            Some(code)
        );
        assert_eq!(ErrorCode::from_name(code.name()), Some(code));
        assert_eq!(code.to_string(), code.name());
        // The serde name is the table's name.
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            format!("\"{}\"", code.name())
        );
    }
    assert_eq!(ErrorCode::from_protocol_code(0), None);
    assert_eq!(ErrorCode::from_protocol_code(999), None);
    assert_eq!(
        ErrorCode::from_websocket_close_code(WEBSOCKET_NORMAL_CLOSURE),
        None
    );
}

/// The decisions the docs and the gateway rely on.
#[test]
fn severity_of_the_codes_that_matter() {
    use ErrorCode::*;
    let fatal = [
        BadFrame,
        FrameTooLarge,
        UnsupportedVersion,
        Unauthenticated,
        TokenExpired,
        SlowConsumer,
        ServerDraining,
        Internal,
        TextMessageRefused,
        IdleTimeout,
        TooManySessions,
    ];
    let non_fatal = [
        InvalidField,
        UnknownFrameKind,
        Forbidden,
        UnknownRecipient,
        ContentTooLarge,
        RateLimited,
        Unavailable,
        Blocked,
        MediaRefused,
    ];
    assert_eq!(fatal.len() + non_fatal.len(), CODE_TABLE.len());
    assert!(fatal.iter().all(|c| c.is_fatal()));
    assert!(non_fatal.iter().all(|c| !c.is_fatal()));
    assert!(RateLimited.retryable() && ServerDraining.retryable() && TokenExpired.retryable());
    assert!(!BadFrame.retryable() && !Forbidden.retryable());
    assert_eq!(Internal.fault(), Fault::Server);
    assert_eq!(Unavailable.fault(), Fault::Peer);
    assert_eq!(Forbidden.fault(), Fault::Client);
    assert_eq!(Blocked.fault(), Fault::Client);
    assert!(!Blocked.retryable());
    assert_eq!(MediaRefused.fault(), Fault::Client);
    assert!(!MediaRefused.retryable());
}

/// A code added after the first version-1 table reaches only a client that said it knows
/// it (`Hello.max_error_code`); any other client gets a code of the same class it decodes.
#[test]
fn newer_codes_fall_back_for_older_clients() {
    assert_eq!(V1_LAST_CODE, 17);
    assert_eq!(LAST_CODE, ErrorCode::TooManySessions.protocol_code());
    assert_eq!(LAST_CODE, 20);
    for code in ErrorCode::ALL {
        for max_known in [0, 1, V1_LAST_CODE, 18, LAST_CODE, u32::MAX] {
            let sent = code.for_client(max_known);
            assert!(
                sent.protocol_code() <= max_known.max(V1_LAST_CODE),
                "{code} for {max_known}"
            );
            assert_eq!(sent.is_fatal(), code.is_fatal(), "{code}");
            assert_eq!(sent.retryable(), code.retryable(), "{code}");
            assert_eq!(sent.fault(), code.fault(), "{code}");
            if code.protocol_code() <= V1_LAST_CODE {
                assert_eq!(sent, code, "a version-1 code is never replaced");
            }
        }
    }
    assert_eq!(ErrorCode::Blocked.for_client(0), ErrorCode::Forbidden);
    assert_eq!(ErrorCode::Blocked.for_client(17), ErrorCode::Forbidden);
    assert_eq!(ErrorCode::Blocked.for_client(18), ErrorCode::Blocked);
    assert_eq!(
        ErrorCode::MediaRefused.for_client(0),
        ErrorCode::InvalidField
    );
    assert_eq!(
        ErrorCode::MediaRefused.for_client(18),
        ErrorCode::InvalidField
    );
    assert_eq!(
        ErrorCode::MediaRefused.for_client(19),
        ErrorCode::MediaRefused
    );
    assert_eq!(
        ErrorCode::TooManySessions.for_client(19),
        ErrorCode::SlowConsumer
    );
    assert_eq!(
        ErrorCode::TooManySessions.for_client(20),
        ErrorCode::TooManySessions
    );
}

#[test]
fn constants() {
    assert_eq!(ALPN, b"haberci/1");
    assert_eq!(WEBTRANSPORT_PATH, "/v1/rt");
    assert_eq!(WEBSOCKET_PATH, "/v1/ws");
    assert_eq!(WEBSOCKET_SUBPROTOCOL, "haberci.v1");
    assert_eq!(PROTOCOL_VERSION, 1);
    assert!(SUPPORTED_VERSIONS.contains(&PROTOCOL_VERSION));
    assert!(is_supported_version(1));
    assert!(!is_supported_version(0) && !is_supported_version(2));
    assert_eq!(DEFAULT_MAX_FRAME_SIZE, 65_536);
}
