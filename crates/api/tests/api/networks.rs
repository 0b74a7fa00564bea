//! Networks, subnets and Serverless VPC Access connectors: range rules, regions, and
//! resources in use.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Api, Refusal, connectors, networks, service, service_body, subnets};

const CONN: &str = "projects/test-project/locations/local1/connectors/conn";

#[tokio::test]
async fn a_network_subnet_and_connector_with_defaults() {
    let api = Api::new().await;
    let op = api.post(&api.owner, &networks(), &json!({"name": "vpc"})).await.ok();
    assert_eq!(op["kind"], json!("compute#operation"));
    assert_eq!(op["status"], json!("DONE"));
    assert_eq!(op["operationType"], json!("insert"));
    assert_eq!(op["targetLink"], json!("projects/test-project/global/networks/vpc"));

    let sub = json!({"name": "sub", "network": "vpc", "ipCidrRange": "10.0.0.0/24"});
    let op = api.post(&api.owner, &subnets("local1"), &sub).await.ok();
    assert_eq!(op["targetLink"], json!("projects/test-project/regions/local1/subnetworks/sub"));
    assert_eq!(op["region"], json!("projects/test-project/regions/local1"));
    let got = api.get(&api.owner, &format!("{}/sub", subnets("local1"))).await.ok();
    assert_eq!(got["network"], json!("projects/test-project/global/networks/vpc"));
    assert_eq!(got["ipCidrRange"], json!("10.0.0.0/24"));
    assert_eq!(got["region"], json!("projects/test-project/regions/local1"));
    let net = api.get(&api.owner, &format!("{}/vpc", networks())).await.ok();
    assert_eq!(net["subnetworks"], json!(["projects/test-project/regions/local1/subnetworks/sub"]));
    assert_eq!(net["autoCreateSubnetworks"], json!(false));

    let conn = json!({"network": "vpc", "ipCidrRange": "10.8.0.0/28"});
    let op = api.post(&api.owner, &format!("{}?connectorId=conn", connectors("local1")), &conn).await.ok();
    assert_eq!(op["done"], json!(true));
    let c = &op["response"];
    assert_eq!(c["@type"], json!("type.googleapis.com/google.cloud.vpcaccess.v1.Connector"));
    let want = json!({
        "name": CONN,
        "network": "vpc",
        "ipCidrRange": "10.8.0.0/28",
        "state": "READY",
        "minThroughput": 200,
        "maxThroughput": 1000,
        "minInstances": 2,
        "maxInstances": 10,
        "machineType": "e2-micro",
        "connectedProjects": ["test-project"],
    });
    let mut got = c.clone();
    got.as_object_mut().unwrap().remove("@type");
    assert_eq!(got, want);
    assert_eq!(api.get(&api.owner, &format!("{}/conn", connectors("local1"))).await.ok(), want);
    assert_eq!(api.get(&api.owner, &connectors("local1")).await.ok(), json!({"connectors": [want]}));
    assert_eq!(api.get(&api.owner, &connectors("local2")).await.ok(), json!({"connectors": []}));
}

#[tokio::test]
async fn connectors_that_break_the_rules_are_refused() {
    let api = Api::new().await;
    api.network_setup().await;
    let create = |what, id: &str, body: Value| {
        Refusal::new(what, Method::POST, format!("{}?connectorId={id}", connectors("local1")), Some(body))
    };
    let range = |r: &str| json!({"network": "vpc", "ipCidrRange": r});
    let sized = |patch: Value| crate::harness::merge(json!({"network": "vpc", "ipCidrRange": "10.9.0.0/28"}), patch);
    let invalid = "INVALID_ARGUMENT";
    let cases = vec![
        create("overlaps the subnet", "c2", range("10.0.0.16/28")).expect(
            400,
            invalid,
            "ipCidrRange: `10.0.0.16/28` overlaps `10.0.0.0/24` of subnet `sub` in network `vpc`",
        ),
        create("overlaps another connector", "c2", range("10.8.0.0/28")).expect(
            400,
            invalid,
            "ipCidrRange: `10.8.0.0/28` overlaps `10.8.0.0/28` of connector `conn` in network `vpc`",
        ),
        create("a /24", "c2", range("10.9.0.0/24")).expect(
            400,
            invalid,
            "ipCidrRange: `10.9.0.0/24` is a /24; a connector's range must be a /28",
        ),
        create("a public range", "c2", range("8.8.8.0/28")).expect(
            400,
            invalid,
            "ipCidrRange: `8.8.8.0/28` is not inside private space",
        ),
        create("not the start of its range", "c2", range("10.9.0.1/28")).expect(
            400,
            invalid,
            "`10.9.0.1/28` is not the start of its range; use `10.9.0.0/28`",
        ),
        create("not a range", "c2", range("10.9.0.0")).expect(400, invalid, "`10.9.0.0` is not an IPv4 range"),
        create("min 1", "c2", sized(json!({"minInstances": 1}))).expect(
            400,
            invalid,
            "minInstances: min instances `1` is not between 2 and 9",
        ),
        create("max 11", "c2", sized(json!({"maxInstances": 11}))).expect(
            400,
            invalid,
            "maxInstances: max instances `11` is not between 3 and 10",
        ),
        create("max equal to min", "c2", sized(json!({"minInstances": 5, "maxInstances": 5}))).expect(
            400,
            invalid,
            "maxInstances: max instances `5` must be greater than min instances `5`",
        ),
        create("max below min", "c2", sized(json!({"minInstances": 6, "maxInstances": 4}))).expect(
            400,
            invalid,
            "max instances `4` must be greater than min instances `6`",
        ),
        create("bad machine type", "c2", sized(json!({"machineType": "n1-standard-1"}))).expect(
            400,
            invalid,
            "machineType: machine type `n1-standard-1` is not one of `e2-micro`, `f1-micro`, `e2-standard-4`",
        ),
        create("name of 21 characters", &"c".repeat(21), sized(json!({}))).expect(
            400,
            invalid,
            "name: connector name `ccccccccccccccccccccc` has 21 characters",
        ),
        create("name with capitals", "Conn2", sized(json!({}))).expect(
            400,
            invalid,
            "connector name `Conn2` has a character",
        ),
        create("missing network", "c2", json!({"network": "nope", "ipCidrRange": "10.9.0.0/28"})).expect(
            400,
            invalid,
            "network `nope` does not exist; create it with `runnel compute networks create nope`",
        ),
        create("no range or subnet", "c2", json!({"network": "vpc"})).expect(
            400,
            invalid,
            "ipCidrRange: the connector has neither an IP range nor a subnet",
        ),
        create("subnet that is not a /28", "c2", json!({"subnet": {"name": "sub"}})).expect(
            400,
            invalid,
            "subnet `sub` is a /24; a connector needs a /28 subnet",
        ),
        create("duplicate", "conn", range("10.9.0.0/28")).expect(
            409,
            "ALREADY_EXISTS",
            "connector `conn` already exists in region `local1`",
        ),
        Refusal::new("no connectorId", Method::POST, connectors("local1"), Some(range("10.9.0.0/28"))).expect(
            400,
            invalid,
            "the request has no `connectorId` query parameter",
        ),
    ];
    api.check_refusals(&api.owner, &cases).await;
    let list = api.get(&api.owner, &connectors("-")).await.ok();
    assert_eq!(list["connectors"].as_array().map(Vec::len), Some(1), "only `conn`: {list}");

    // The rule that passes: a free /28 with explicit sizes.
    let ok = sized(json!({"minInstances": 3, "maxInstances": 4, "machineType": "e2-standard-4"}));
    let c = api.post(&api.owner, &format!("{}?connectorId=c2", connectors("local1")), &ok).await.ok();
    assert_eq!((&c["response"]["minThroughput"], &c["response"]["maxThroughput"]), (&json!(4800), &json!(6400)));
}

#[tokio::test]
async fn a_huge_instance_count_is_invalid_not_internal() {
    let api = Api::new().await;
    api.network_setup().await;
    let body = json!({"network": "vpc", "ipCidrRange": "10.9.0.0/28", "minInstances": 50_000_000});
    let reply = api.post(&api.owner, &format!("{}?connectorId=c2", connectors("local1")), &body).await;
    reply.refused(400, "INVALID_ARGUMENT", "minInstances: min instances `50000000` is not between 2 and 9");
}

#[tokio::test]
async fn subnet_ranges_never_overlap_within_a_network() {
    let api = Api::new().await;
    api.network_setup().await;
    let create = |what, region: &str, body: Value| Refusal::new(what, Method::POST, subnets(region), Some(body));
    let sub = |name: &str, network: &str, range: &str| json!({"name": name, "network": network, "ipCidrRange": range});
    let invalid = "INVALID_ARGUMENT";
    let cases = vec![
        create("inside the subnet", "local1", sub("sub2", "vpc", "10.0.0.128/25")).expect(
            400,
            invalid,
            "ipCidrRange: `10.0.0.128/25` overlaps `10.0.0.0/24` of subnet `sub` in network `vpc`",
        ),
        create("around the subnet, in another region", "local2", sub("sub3", "vpc", "10.0.0.0/16")).expect(
            400,
            invalid,
            "`10.0.0.0/16` overlaps `10.0.0.0/24` of subnet `sub` in network `vpc`",
        ),
        create("over the connector", "local1", sub("sub4", "vpc", "10.8.0.0/24")).expect(
            400,
            invalid,
            "`10.8.0.0/24` overlaps `10.8.0.0/28` of connector `conn` in network `vpc`",
        ),
        create("a public range", "local1", sub("sub5", "vpc", "11.0.0.0/24")).expect(
            400,
            invalid,
            "is not inside private space",
        ),
        create("a /30", "local1", sub("sub6", "vpc", "10.1.0.0/30")).expect(
            400,
            invalid,
            "a subnet's range is between /8 and /29",
        ),
        create("missing network", "local1", sub("sub7", "nope", "10.1.0.0/24")).expect(
            400,
            invalid,
            "network `nope` does not exist",
        ),
        create("no network", "local1", json!({"name": "sub8", "ipCidrRange": "10.1.0.0/24"})).expect(
            400,
            invalid,
            "the subnet names no network",
        ),
        create("duplicate name", "local1", sub("sub", "vpc", "10.1.0.0/24")).expect(
            409,
            "ALREADY_EXISTS",
            "subnet `sub` already exists in region `local1`",
        ),
        create("bad name", "local1", sub("Sub_9", "vpc", "10.1.0.0/24")).expect(
            400,
            invalid,
            "name: subnet name `Sub_9`",
        ),
    ];
    api.check_refusals(&api.owner, &cases).await;
    assert_eq!(api.get(&api.owner, &subnets("-")).await.ok()["items"].as_array().map(Vec::len), Some(1));

    // Another network may reuse the range; the same name in another region is another subnet.
    api.post(&api.owner, &networks(), &json!({"name": "vpc-b"})).await.ok();
    api.post(&api.owner, &subnets("local1"), &sub("sub-b", "vpc-b", "10.0.0.0/24")).await.ok();
    api.post(&api.owner, &subnets("local2"), &sub("sub", "vpc", "10.2.0.0/24")).await.ok();
    assert_eq!(api.get(&api.owner, &subnets("-")).await.ok()["items"].as_array().map(Vec::len), Some(3));
    api.post(&api.owner, &networks(), &json!({"name": "vpc-b"})).await.refused(
        409,
        "ALREADY_EXISTS",
        "network `vpc-b` already exists",
    );
    api.post(&api.owner, &networks(), &json!({"name": "auto", "autoCreateSubnetworks": true})).await.refused(
        400,
        "INVALID_ARGUMENT",
        "autoCreateSubnetworks: auto mode networks are not supported",
    );
}

#[tokio::test]
async fn a_service_uses_only_a_connector_of_its_own_region() {
    let api = Api::new().await;
    api.network_setup().await;
    let with = |connector: &str| {
        service_body(json!({"template": {"vpcAccess": {"connector": connector, "egress": "ALL_TRAFFIC"}}}))
    };
    let both_regions = "connector `conn` is in region `local1`, but the service is in region `local2`";
    api.create_service(&api.owner, "local2", "far", &with("conn")).await.refused(400, "INVALID_ARGUMENT", both_regions);
    api.create_service(&api.owner, "local2", "far", &with(CONN)).await.refused(400, "INVALID_ARGUMENT", both_regions);
    api.create_service(&api.owner, "local1", "near", &with("ghost")).await.refused(
        400,
        "INVALID_ARGUMENT",
        "connector `ghost` does not exist in region `local1`",
    );
    api.create_service(&api.owner, "local1", "near", &with("a/b")).await.refused(
        400,
        "INVALID_ARGUMENT",
        "connector `a/b` is neither a name nor `projects/PROJECT/locations/REGION/connectors/NAME`",
    );
    api.get(&api.owner, &service("local2", "far")).await.refused(404, "NOT_FOUND", "service `far` does not exist");

    // In its own region, by short or full name, the connector is stored by its full name.
    for (id, reference) in [("near", "conn"), ("near-full", CONN)] {
        let op = api.create_service(&api.owner, "local1", id, &with(reference)).await.ok();
        assert_eq!(op["response"]["template"]["vpcAccess"], json!({"connector": CONN, "egress": "ALL_TRAFFIC"}));
    }
}

#[tokio::test]
async fn direct_vpc_egress_uses_a_subnet_of_the_service_region() {
    let api = Api::new().await;
    api.network_setup().await;
    let direct = |ni: Value| service_body(json!({"template": {"vpcAccess": {"networkInterfaces": [ni]}}}));
    let invalid = "INVALID_ARGUMENT";
    api.create_service(&api.owner, "local2", "far", &direct(json!({"network": "vpc", "subnetwork": "sub"})))
        .await
        .refused(400, invalid, "subnet `sub` is in region `local1`, but the service is in region `local2`");
    api.post(&api.owner, &networks(), &json!({"name": "other"})).await.ok();
    api.create_service(&api.owner, "local1", "near", &direct(json!({"network": "other", "subnetwork": "sub"})))
        .await
        .refused(400, invalid, "subnet `sub` belongs to network `vpc`, not `other`");
    let op =
        api.create_service(&api.owner, "local1", "near", &direct(json!({"network": "vpc", "subnetwork": "sub"}))).await;
    let op = op.ok();
    assert_eq!(
        op["response"]["template"]["vpcAccess"]["networkInterfaces"],
        json!([{"network": "vpc", "subnetwork": "sub"}])
    );
    // A subnet in use by a revision stays.
    api.delete(&api.owner, &format!("{}/sub", subnets("local1"))).await.refused(
        400,
        "FAILED_PRECONDITION",
        "subnet `sub` is in use by service `near` in `local1`",
    );
}

#[tokio::test]
async fn resources_in_use_are_not_deleted() {
    let api = Api::new().await;
    api.network_setup().await;
    let with_conn = json!({"template": {"vpcAccess": {"connector": "conn", "egress": "ALL_TRAFFIC"}}});
    api.deploy("local1", "egress", with_conn).await;
    let conn = format!("{}/conn", connectors("local1"));
    api.delete(&api.owner, &conn).await.refused(
        400,
        "FAILED_PRECONDITION",
        "connector `conn` is in use by service `egress` in `local1` (revision `egress-00001-",
    );
    let vpc = format!("{}/vpc", networks());
    api.delete(&api.owner, &vpc).await.refused(
        400,
        "FAILED_PRECONDITION",
        "network `vpc` is in use by subnet `sub` in `local1`, connector `conn`; delete those first",
    );
    api.get(&api.owner, &conn).await.ok();
    api.get(&api.owner, &vpc).await.ok();

    // Free them in order: the service's new revision drops the connector, then each goes.
    api.patch(&api.owner, &service("local1", "egress"), &service_body(json!({}))).await.ok();
    let op = api.delete(&api.owner, &conn).await.ok();
    assert_eq!(op["response"]["name"], json!(CONN));
    api.delete(&api.owner, &vpc).await.refused(
        400,
        "FAILED_PRECONDITION",
        "network `vpc` is in use by subnet `sub` in `local1`;",
    );
    let op = api.delete(&api.owner, &format!("{}/sub", subnets("local1"))).await.ok();
    assert_eq!(op["operationType"], json!("delete"));
    api.delete(&api.owner, &vpc).await.ok();
    api.get(&api.owner, &vpc).await.refused(404, "NOT_FOUND", "network `vpc` does not exist");
    api.get(&api.owner, &conn).await.refused(404, "NOT_FOUND", "connector `conn` does not exist in region `local1`");
    api.delete(&api.owner, &vpc).await.refused(404, "NOT_FOUND", "network `vpc` does not exist");
}

#[tokio::test]
async fn a_connector_on_its_own_28_subnet() {
    let api = Api::new().await;
    api.network_setup().await;
    let sub = json!({"name": "conn-sub", "network": "vpc", "ipCidrRange": "10.8.1.0/28"});
    api.post(&api.owner, &subnets("local1"), &sub).await.ok();
    api.post(
        &api.owner,
        &subnets("local2"),
        &json!({"name": "far-sub", "network": "vpc", "ipCidrRange": "10.8.2.0/28"}),
    )
    .await
    .ok();
    let create = |id: &str| format!("{}?connectorId={id}", connectors("local1"));
    let op = api.post(&api.owner, &create("c3"), &json!({"subnet": {"name": "conn-sub"}})).await.ok();
    let c = &op["response"];
    assert_eq!(c["subnet"], json!({"name": "conn-sub", "projectId": "test-project"}));
    assert_eq!(c["network"], json!("vpc"));
    assert_eq!(c["ipCidrRange"], json!(null));

    let cases =
        vec![
            Refusal::new("subnet taken", Method::POST, create("c4"), Some(json!({"subnet": {"name": "conn-sub"}})))
                .expect(400, "FAILED_PRECONDITION", "subnet `conn-sub` is already used by connector `c3`"),
            Refusal::new(
                "subnet in another region",
                Method::POST,
                create("c4"),
                Some(json!({"subnet": {"name": "far-sub"}})),
            )
            .expect(400, "INVALID_ARGUMENT", "subnet `far-sub` does not exist in region `local1`"),
            Refusal::new(
                "subnet and range",
                Method::POST,
                create("c4"),
                Some(json!({"subnet": {"name": "conn-sub"}, "ipCidrRange": "10.9.0.0/28"})),
            )
            .expect(400, "INVALID_ARGUMENT", "subnet: the connector names both a subnet and an IP range"),
            Refusal::new("delete the subnet", Method::DELETE, format!("{}/conn-sub", subnets("local1")), None).expect(
                400,
                "FAILED_PRECONDITION",
                "subnet `conn-sub` is in use by connector `c3`",
            ),
        ];
    api.check_refusals(&api.owner, &cases).await;
    api.delete(&api.owner, &format!("{}/c3", connectors("local1"))).await.ok();
    api.delete(&api.owner, &format!("{}/conn-sub", subnets("local1"))).await.ok();
}
