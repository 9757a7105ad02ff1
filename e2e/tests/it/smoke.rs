//! The harness itself: a deployment comes up and serves a registration.

use crate::support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starts_and_registers_users() {
    let cluster = Cluster::start(1, 1).await;
    let user = cluster.register("smoke").await;
    let (status, me) = cluster
        .api(
            http::Method::GET,
            "/v1/me",
            Some(&user.token),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], user.id.to_string());
}
