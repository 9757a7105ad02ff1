//! The fleet's ticket keys against a real Redis: gateways agree on them, a Redis that lost one
//! gets it back from the gateways that hold it, and a bad value for one epoch spoils only that
//! one. The clock is set centuries ahead, so these keys never meet a running gateway's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::interfaces::KeysInterface;
use haberci_gateway::edge::tickets::{Epoch, FleetTickets, ROTATE, RefreshError};
use haberci_testkit::env;

async fn redis() -> fred::clients::Client {
    use fred::prelude::*;
    let config = Config::from_url(&env::redis_url()).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    client
}

/// A time in an epoch of this test's own, far ahead of any real clock.
fn far_ahead() -> (SystemTime, Epoch) {
    let offset = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let epoch = 100_000_000 + offset;
    (
        UNIX_EPOCH + Duration::from_secs(epoch * ROTATE.as_secs() + 60),
        epoch,
    )
}

#[tokio::test]
async fn gateways_agree_on_the_keys_and_restore_one_redis_lost() {
    let redis = redis().await;
    let (now, epoch) = far_ahead();
    let (a, b) = (FleetTickets::new(), FleetTickets::new());
    a.refresh(&redis, now).await.unwrap();
    b.refresh(&redis, now).await.unwrap();
    assert_eq!(a.epochs(), vec![epoch - 1, epoch, epoch + 1]);
    assert_eq!(a.epochs(), b.epochs());
    let sealed = a.seal(b"state", now).expect("sealed");
    assert_eq!(b.open(&sealed, now).as_deref(), Some(&b"state"[..]));

    // Redis loses the current key (a flush, a failover): the next gateway to refresh offers
    // the key it holds back, so one that starts afterwards gets the same.
    let name = haberci_seam::streams::ticket_key(epoch);
    let _: i64 = redis.del(&name).await.unwrap();
    b.refresh(&redis, now).await.unwrap();
    let c = FleetTickets::new();
    c.refresh(&redis, now).await.unwrap();
    assert_eq!(c.open(&sealed, now).as_deref(), Some(&b"state"[..]));
    for e in epoch - 1..=epoch + 1 {
        let _: i64 = redis
            .del(haberci_seam::streams::ticket_key(e))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_bad_value_spoils_its_epoch_only() {
    let redis = redis().await;
    let (now, epoch) = far_ahead();
    let previous = haberci_seam::streams::ticket_key(epoch - 1);
    let _: () = redis
        .set(
            &previous,
            "short",
            Some(fred::types::Expiration::EX(600)),
            None,
            false,
        )
        .await
        .unwrap();
    let tickets = FleetTickets::new();
    let err = tickets.refresh(&redis, now).await.unwrap_err();
    assert!(
        matches!(err, RefreshError::NotAKey { ref key } if *key == previous),
        "{err}"
    );
    assert_eq!(tickets.epochs(), vec![epoch, epoch + 1]);
    // The current key seals and opens all the same.
    let sealed = tickets.seal(b"state", now).expect("sealed");
    assert_eq!(&sealed[..8], &epoch.to_be_bytes());
    assert!(tickets.open(&sealed, now).is_some());
    for e in epoch - 1..=epoch + 1 {
        let _: i64 = redis
            .del(haberci_seam::streams::ticket_key(e))
            .await
            .unwrap();
    }
}
