//! What every client test starts from: a relaying stack in this process (see
//! [`haberci_testkit::stack`]) and users registered on it.

use haberci_client::{Event, Events};
use haberci_testkit::{Stack, TIMEOUT, User, users};

/// The backend API, a worker and a gateway relaying to it.
pub async fn start() -> Stack {
    Stack::builder().relay().start().await
}

/// Registers a fresh user through the stack's API.
pub async fn register(stack: &Stack) -> User {
    users::register(stack.backend, "cl").await
}

/// The next event, within the test timeout.
pub async fn next_event(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("an event in time")
}
