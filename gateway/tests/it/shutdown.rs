//! Explicit shutdown: a request in flight when the gateway is told to stop still gets its
//! answer, on TCP and on HTTP/3.

use std::sync::Arc;

use haberci_testkit::{Backend, Stack, TIMEOUT};
use tokio::sync::Notify;

use crate::support::{self, ALL_VERSIONS, get};

#[tokio::test]
async fn requests_in_flight_finish_after_shutdown_begins() {
    for version in ALL_VERSIONS {
        let arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let backend = {
            let (arrived, release) = (arrived.clone(), release.clone());
            // Only this path is slow: the gateway's own calls (its JWKS fetch) must not count.
            let slow = axum::routing::get(move || {
                let (arrived, release) = (arrived.clone(), release.clone());
                async move {
                    arrived.notify_one();
                    release.notified().await;
                    "finished"
                }
            });
            support::serve_router(axum::Router::new().route("/v1/slow", slow)).await
        };
        let stack = Arc::new(Stack::start(Backend::At(backend)).await);
        let pending = {
            let stack = stack.clone();
            tokio::spawn(async move { support::request(&stack, version, get("/v1/slow")).await })
        };
        tokio::time::timeout(TIMEOUT, arrived.notified())
            .await
            .expect("the request reaches the backend");
        stack.begin_shutdown();
        release.notify_one();
        let reply = tokio::time::timeout(TIMEOUT, pending)
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(reply.status, 200, "{version:?}");
        assert_eq!(&reply.body[..], b"finished", "{version:?}");
    }
}
