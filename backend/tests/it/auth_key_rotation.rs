//! Signing keys rotate without a restart: a key added to the key directory is published in the
//! JWKS and signs new tokens after a reload, while tokens signed by the old key still verify;
//! an invalid directory keeps the current keys; a removed key stops verifying.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;

use haberci_backend::auth::keys::KeyStore;
use haberci_token::keys::write_new_key;

use crate::env;
use crate::support::{Api, Reply, TempDir, roomy_settings, state_with};

const OLD: &str = "20260101T000000Z";
const NEW: &str = "20270101T000000Z";

/// The `kid` in an access token's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn published(jwks: &Reply) -> Vec<String> {
    jwks.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_key_added_to_the_directory_is_published_and_signs_after_a_reload() {
    let dir = TempDir::new("haberci-keys");
    write_new_key(&dir.0, OLD).unwrap();
    let keys = Arc::new(KeyStore::load_dir(&dir.0, None).unwrap());
    let api = Api::from_state(state_with(
        roomy_settings(),
        &env("HABERCI_TEST_REDIS_URL"),
        keys.clone(),
    ));
    let (account, registered) = api.register().await;
    let old_token = registered.str("/tokens/accessToken");
    assert_eq!(kid(&old_token), OLD);
    assert!(!keys.reload_if_changed(), "nothing changed yet");

    // What the poller does when the directory changes (SIGHUP calls `reload` directly).
    write_new_key(&dir.0, NEW).unwrap();
    assert!(keys.reload_if_changed());
    let jwks = api.get("/v1/auth/jwks", None).await;
    assert_eq!(published(&jwks), [OLD, NEW]);
    let login = api.login(&account).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.json);
    let new_token = login.str("/accessToken");
    assert_eq!(kid(&new_token), NEW, "the later-sorting key signs");
    for token in [&old_token, &new_token] {
        let me = api.get("/v1/me", Some(token)).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.json);
    }

    // A bad key file: the reload fails and the current keys stay.
    let broken = dir.0.join("broken.pem");
    std::fs::write(&broken, "not a key").unwrap();
    assert!(keys.reload().is_err());
    assert!(
        !keys.reload_if_changed(),
        "a failure is not retried until the directory changes"
    );
    assert_eq!(published(&api.get("/v1/auth/jwks", None).await), [OLD, NEW]);
    assert_eq!(kid(&api.login(&account).await.str("/accessToken")), NEW);

    // Removing the old key (and the broken file) retires it: its tokens stop verifying.
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(dir.0.join(format!("{OLD}.pem"))).unwrap();
    assert_eq!(keys.reload().unwrap(), [NEW]);
    assert_eq!(published(&api.get("/v1/auth/jwks", None).await), [NEW]);
    let me = api.get("/v1/me", Some(&old_token)).await;
    assert_eq!(
        (me.status, me.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    assert_eq!(
        api.get("/v1/me", Some(&new_token)).await.status,
        StatusCode::OK
    );
}
