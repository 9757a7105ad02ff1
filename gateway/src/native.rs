//! The native QUIC path (ALPN `haberci/1`). Sessions arrive with the wire protocol (#4) and the
//! session machine (#6); until then a native connection is accepted — proving the ALPN
//! dispatch — and closed at once with [`CLOSE_NOT_YET_SERVED`].

use quinn::VarInt;

/// QUIC application close code: the native session protocol is not served by this build.
pub const CLOSE_NOT_YET_SERVED: u32 = 0x4f1;

pub async fn serve_connection(connection: quinn::Connection) {
    tracing::debug!(peer = %connection.remote_address(), "native connection");
    connection.close(
        VarInt::from_u32(CLOSE_NOT_YET_SERVED),
        b"haberci/1 sessions are not served by this build",
    );
}
