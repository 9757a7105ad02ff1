//! When a TCP connection is idle, and for how long it may stay so.
//!
//! A connection is busy while a request is in flight: from its start until its response body
//! has been sent or dropped (a long media download is not idle). Between requests it is idle;
//! one that has asked nothing yet gets the first-request deadline, one that has asked before
//! gets the idle timeout. A WebSocket leaves this accounting when it upgrades: its connection
//! has heartbeats of its own (docs/PROTOCOL.md).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One connection's requests in flight and when the last one ended.
pub struct Activity {
    in_flight: AtomicUsize,
    asked: AtomicBool,
    last: Mutex<Instant>,
    /// A request ended: the deadline moved.
    ended: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            asked: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
            ended: Notify::new(),
        })
    }

    /// A request begins; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.asked.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection, as it is now, has been idle too long; `None` while busy.
    fn deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let limit = if self.asked.load(Ordering::Relaxed) {
            idle
        } else {
            first_request
        };
        Some(*self.last.lock().unwrap_or_else(PoisonError::into_inner) + limit)
    }

    /// Resolves once the connection has been idle past its limit.
    pub async fn idle_past(&self, first_request: Duration, idle: Duration) {
        loop {
            let now = Instant::now();
            let wake = match self.deadline(first_request, idle) {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => deadline,
                // Busy: until a request ends.
                None => now + idle,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.ended.notified() => {}
            }
        }
    }
}

/// A request in flight; its drop marks the request's end.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.ended.notify_one();
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub struct TrackedBody {
    inner: axum::body::Body,
    _request: InFlight,
}

impl TrackedBody {
    pub fn new(inner: axum::body::Body, request: InFlight) -> TrackedBody {
        TrackedBody {
            inner,
            _request: request,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(120);

    #[tokio::test(start_paused = true)]
    async fn the_first_request_deadline_then_the_idle_timeout_and_never_while_busy() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.deadline(FIRST, IDLE), Some(start + FIRST));
        let request = activity.begin();
        assert_eq!(activity.deadline(FIRST, IDLE), None, "busy");
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(
            activity.deadline(FIRST, IDLE),
            None,
            "a long request is not idle"
        );
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.deadline(FIRST, IDLE), Some(ended + IDLE));
        activity.idle_past(FIRST, IDLE).await;
        assert_eq!(Instant::now(), ended + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_keeps_its_request_in_flight_until_dropped() {
        let activity = Activity::new();
        let body = TrackedBody::new(axum::body::Body::from("x"), activity.begin());
        assert_eq!(activity.deadline(FIRST, IDLE), None);
        drop(body);
        assert!(activity.deadline(FIRST, IDLE).is_some());
    }
}
