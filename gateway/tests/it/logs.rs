//! What the logs carry: an id the gateway gives each HTTP request, in the span of every line
//! the gateway and the API write while serving it and in the answer (a client's own
//! `x-request-id` is replaced); never a password or a token.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use haberci_client::Client;
use haberci_testkit::{Stack, TransportKind, users};
use http_body_util::Full;

use crate::support::{self, Version};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_request_id_follows_a_request_through_gateway_and_api_and_no_secret_is_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    // What production ships (HABERCI_LOG_FORMAT=json). Each test runs in its own process under
    // nextest, so this subscriber sees only this test (testkit's own init then does nothing).
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .with_env_filter("info")
        .init();
    let stack = Stack::start(haberci_testkit::Backend::Api).await;
    let user = users::register(stack.backend, "logs").await;

    // A failed login through the gateway, carrying a client's own request id.
    let password = "not the right password";
    let login = http::Request::post("https://localhost/v1/auth/login")
        .header("content-type", "application/json")
        .header("x-request-id", "forged-by-the-client")
        .body(Full::new(Bytes::from(
            serde_json::json!({"usernameOrEmail": user.username, "password": password}).to_string(),
        )))
        .unwrap();
    let reply = support::request(&stack, Version::Http2, login).await;
    assert_eq!(reply.status, 401);
    let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "forged-by-the-client", "the gateway makes its own id");
    assert_eq!(id.len(), 32, "{id}");

    // A realtime session with the user's token.
    let (client, _events) =
        Client::connect(stack.client_config(TransportKind::WebSocket, &user.token))
            .await
            .unwrap();
    client.ping().await.unwrap();
    client.close().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    // The API's fail2ban line was written inside the request's span, with the gateway's id.
    let failed = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("haberci-auth: login failed"))
        })
        .unwrap_or_else(|| panic!("no failed-login line in\n{log}"));
    assert_eq!(failed["span"]["name"], "request", "{failed}");
    assert_eq!(failed["span"]["id"], id.as_str(), "{failed}");
    assert!(!log.contains("forged-by-the-client"), "{log}");
    // Never a password or a token, in any line.
    for secret in [password, users::PASSWORD, &user.token, &user.refresh_token] {
        assert!(!log.contains(secret), "a secret is in the log:\n{log}");
    }
}
