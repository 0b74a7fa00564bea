//! Internal endpoints: a name and an address in a subnet, and where the service really listens.

use serde_json::json;

use crate::harness::{Api, subnets};

fn endpoints(region: &str) -> String {
    format!("/compute/v1/projects/test-project/regions/{region}/endpoints")
}

#[tokio::test]
async fn an_endpoint_is_placed_in_its_subnet_and_named_in_its_network() {
    let api = Api::new().await;
    api.network_setup().await;
    let body = json!({"name": "db", "subnetwork": "sub", "address": "10.0.0.5:5432", "target": "127.0.0.1:5432"});
    let op = api.post(&api.owner, &endpoints("local1"), &body).await.ok();
    assert_eq!(op["status"], json!("DONE"));
    assert_eq!(op["targetLink"], json!("projects/test-project/regions/local1/endpoints/db"));
    let e = api.get(&api.owner, &format!("{}/db", endpoints("local1"))).await.ok();
    assert_eq!(e["kind"], json!("runnel#endpoint"));
    assert_eq!(e["network"], json!("projects/test-project/global/networks/vpc"));
    assert_eq!(e["subnetwork"], json!("projects/test-project/regions/local1/subnetworks/sub"));
    assert_eq!(e["address"], json!("10.0.0.5:5432"));
    assert_eq!(e["target"], json!("127.0.0.1:5432"));
    assert_eq!(e["hostname"], json!("db.vpc.internal"));
    let all = api.get(&api.owner, &endpoints("-")).await.ok();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));

    // The subnet cannot go while the endpoint is in it.
    api.delete(&api.owner, &format!("{}/sub", subnets("local1"))).await.refused(
        400,
        "FAILED_PRECONDITION",
        "subnet `sub` is in use by endpoint `db`",
    );
    api.delete(&api.owner, &format!("{}/db", endpoints("local1"))).await.ok();
    api.get(&api.owner, &format!("{}/db", endpoints("local1"))).await.refused(
        404,
        "NOT_FOUND",
        "endpoint `db` does not exist",
    );
}

#[tokio::test]
async fn endpoint_refusals() {
    let api = Api::new().await;
    api.network_setup().await;
    let ok = json!({"name": "db", "subnetwork": "sub", "address": "10.0.0.5:5432", "target": "127.0.0.1:5432"});
    api.post(&api.owner, &endpoints("local1"), &ok).await.ok();
    let cases = [
        (
            json!({"name": "x", "subnetwork": "sub", "address": "10.9.0.5:5432", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "address: `10.9.0.5` is not inside the subnet's range `10.0.0.0/24`",
        ),
        (
            json!({"name": "x", "subnetwork": "sub", "address": "10.0.0.0:5432", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "is the network or broadcast address",
        ),
        (
            json!({"name": "x", "subnetwork": "sub", "address": "10.0.0.6", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "address: `10.0.0.6` is not IP:PORT",
        ),
        (
            json!({"name": "x", "subnetwork": "sub", "address": "10.0.0.6:1", "target": "0.0.0.0:1"}),
            400,
            "INVALID_ARGUMENT",
            "target: `0.0.0.0:1` is not an address a service can listen on",
        ),
        (
            json!({"name": "x", "subnetwork": "nope", "address": "10.0.0.6:1", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "subnet `nope` does not exist in region `local1`",
        ),
        (
            json!({"name": "x", "network": "other", "subnetwork": "sub", "address": "10.0.0.6:1", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "subnet `sub` belongs to network `vpc`, not `other`",
        ),
        (
            json!({"name": "y", "subnetwork": "sub", "address": "10.0.0.5:5432", "target": "127.0.0.1:1"}),
            409,
            "ALREADY_EXISTS",
            "address `10.0.0.5:5432` in network `vpc` is already endpoint `db`",
        ),
        (
            json!({"name": "db", "subnetwork": "sub", "address": "10.0.0.7:5432", "target": "127.0.0.1:1"}),
            409,
            "ALREADY_EXISTS",
            "endpoint `db` already exists in region `local1`",
        ),
        (
            json!({"name": "Bad_Name", "subnetwork": "sub", "address": "10.0.0.7:1", "target": "127.0.0.1:1"}),
            400,
            "INVALID_ARGUMENT",
            "endpoint name `Bad_Name`",
        ),
    ];
    for (body, code, status, fragment) in cases {
        api.post(&api.owner, &endpoints("local1"), &body).await.refused(code, status, fragment);
    }
    // A principal without compute rights is refused, naming the permission.
    let (alice, _) = api.credential("user:alice@example.com").await;
    api.post(&alice, &endpoints("local1"), &ok).await.refused(
        403,
        "PERMISSION_DENIED",
        "permission `compute.endpoints.create` denied",
    );
    api.get(&alice, &endpoints("local1")).await.refused(
        403,
        "PERMISSION_DENIED",
        "permission `compute.endpoints.list` denied",
    );
}

/// Egress proxies read the endpoints on every outbound call, from a snapshot kept until the next
/// commit: a created or deleted endpoint must be seen by the very next call.
#[tokio::test]
async fn the_egress_path_sees_each_endpoint_change_on_the_next_read() {
    let api = Api::new().await;
    api.network_setup().await;
    assert!(api.cp.endpoints().unwrap().is_empty());
    assert!(api.cp.endpoints().unwrap().is_empty(), "a second read, from the snapshot");
    let body = json!({"name": "db", "subnetwork": "sub", "address": "10.0.0.5:5432", "target": "127.0.0.1:5432"});
    api.post(&api.owner, &endpoints("local1"), &body).await.ok();
    let seen = api.cp.endpoints().unwrap();
    assert_eq!(seen.iter().map(|e| e.hostname.as_str()).collect::<Vec<_>>(), ["db.vpc.internal"]);
    api.delete(&api.owner, &format!("{}/db", endpoints("local1"))).await.ok();
    assert!(api.cp.endpoints().unwrap().is_empty(), "the deletion is seen at once");
}
