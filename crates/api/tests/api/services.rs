//! Cloud Run services and revisions: defaults, revisions on template changes, etags,
//! validation.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Api, Refusal, members, service, service_body, services, short};

const RECEIVER: &str = "projects/test-project/locations/local1/services/receiver";

/// `receiver-00001-abc`: the service, a five-digit sequence number and three random characters.
#[track_caller]
fn assert_revision(name: &Value, service: &str, seq: u32) {
    let full = name.as_str().unwrap_or_default();
    let prefix = format!("projects/test-project/locations/local1/services/{service}/revisions/{service}-{seq:05}-");
    let suffix = full.strip_prefix(&prefix).unwrap_or_else(|| panic!("`{full}` does not start with `{prefix}`"));
    assert!(
        suffix.len() == 3 && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "`{full}` does not end in three random characters"
    );
}

#[tokio::test]
async fn creating_a_service_answers_a_done_operation_with_cloud_run_defaults() {
    let api = Api::new().await;
    let op = api.create_service(&api.owner, "local1", "receiver", &service_body(json!({}))).await.ok();
    assert_eq!(op["done"], json!(true));
    let op_name = op["name"].as_str().unwrap();
    assert!(op_name.starts_with("projects/test-project/locations/local1/operations/"), "{op_name}");
    let s = &op["response"];
    assert_eq!(s["@type"], json!("type.googleapis.com/google.cloud.run.v2.Service"));
    assert_eq!(s["name"], json!(RECEIVER));
    let uri = format!("http://receiver-{}.local1.run.localhost:7781", api.number);
    assert_eq!(s["uri"], json!(uri));
    assert_eq!(s["urls"], json!([uri]));
    assert_revision(&s["latestReadyRevision"], "receiver", 1);
    assert_eq!(s["latestCreatedRevision"], s["latestReadyRevision"]);
    assert_eq!(s["generation"], json!("1"));
    assert_eq!(s["observedGeneration"], json!("1"));
    assert_eq!(s["ingress"], json!("INGRESS_TRAFFIC_ALL"));
    assert_eq!(s["creator"], json!("owner@example.com"));
    assert_eq!(s["lastModifier"], json!("owner@example.com"));
    assert_eq!(s["terminalCondition"]["state"], json!("CONDITION_SUCCEEDED"));
    assert_eq!(s["traffic"], json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]));
    assert_eq!(
        s["trafficStatuses"],
        json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": short(&s["latestReadyRevision"]), "percent": 100}])
    );
    let t = &s["template"];
    assert_eq!(t["containers"][0]["ports"], json!([{"name": "http1", "containerPort": 8080}]));
    assert_eq!(t["containers"][0]["command"], json!(["python3"]));
    assert_eq!(t["containers"][0]["args"], json!(["app.py"]));
    assert_eq!(t["maxInstanceRequestConcurrency"], json!(80));
    assert_eq!(t["timeout"], json!("300s"));
    assert_eq!(t["serviceAccount"], json!(api.default_sa()));
    assert!(!s["etag"].as_str().unwrap_or_default().is_empty(), "{s}");

    // GET returns the same service.
    let got = api.get(&api.owner, &service("local1", "receiver")).await.ok();
    let mut want = s.clone();
    want.as_object_mut().unwrap().remove("@type");
    assert_eq!(got, want);

    // The revision records the template it was made from.
    let rev_path = format!("{}/revisions/{}", service("local1", "receiver"), short(&s["latestReadyRevision"]));
    let rev = api.get(&api.owner, &rev_path).await.ok();
    assert_eq!(rev["name"], s["latestReadyRevision"]);
    assert_eq!(rev["service"], json!(RECEIVER));
    assert_eq!(rev["serviceAccount"], json!(api.default_sa()));
    assert_eq!(rev["maxInstanceRequestConcurrency"], json!(80));
    assert_eq!(rev["timeout"], json!("300s"));
    assert_eq!(rev["containers"], t["containers"]);

    // The project number is accepted in place of the id, as on Google Cloud.
    let by_number = format!("/v2/projects/{}/locations/local1/services/receiver", api.number);
    assert_eq!(api.get(&api.owner, &by_number).await.ok()["uri"], json!(uri));
}

#[tokio::test]
async fn only_template_changes_make_revisions() {
    let api = Api::new().await;
    let first = api.deploy("local1", "receiver", json!({})).await;
    let path = service("local1", "receiver");
    let rev1 = first["latestReadyRevision"].clone();

    // Service-level change: ingress. Same revision, next generation.
    let internal = service_body(json!({"ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY", "etag": first["etag"]}));
    let s = api.patch(&api.owner, &path, &internal).await.ok()["response"].clone();
    assert_eq!(s["ingress"], json!("INGRESS_TRAFFIC_INTERNAL_ONLY"));
    assert_eq!(s["latestReadyRevision"], rev1);
    assert_eq!(s["generation"], json!("2"));
    assert_ne!(s["etag"], first["etag"]);

    // Writing back exactly what GET returned (output fields and all) changes nothing of the template.
    let mut round_trip = api.get(&api.owner, &path).await.ok();
    round_trip["labels"] = json!({"team": "edge"});
    let s = api.patch(&api.owner, &path, &round_trip).await.ok()["response"].clone();
    assert_eq!(s["latestReadyRevision"], rev1);
    assert_eq!(s["labels"], json!({"team": "edge"}));

    // Template change: a new revision, numbered 00002.
    let changed = service_body(json!({"template": {"containers": [{"command": ["python3"], "args": ["v2.py"]}]}}));
    let s = api.patch(&api.owner, &path, &changed).await.ok()["response"].clone();
    assert_revision(&s["latestReadyRevision"], "receiver", 2);
    assert_eq!(s["latestCreatedRevision"], s["latestReadyRevision"]);
    assert_eq!(s["trafficStatuses"][0]["revision"], json!(short(&s["latestReadyRevision"])));
    let rev2 = s["latestReadyRevision"].clone();

    // A PATCH replaces the service: fields left out go back to their defaults.
    assert_eq!(s["ingress"], json!("INGRESS_TRAFFIC_ALL"));

    // Revisions are listed newest first; the old one is unchanged.
    let list = api.get(&api.owner, &format!("{path}/revisions")).await.ok();
    let names: Vec<&Value> = list["revisions"].as_array().unwrap().iter().map(|r| &r["name"]).collect();
    assert_eq!(names, [&rev2, &rev1]);
    let old = api.get(&api.owner, &format!("{path}/revisions/{}", short(&rev1))).await.ok();
    assert_eq!(old["containers"][0]["args"], json!(["app.py"]));
    api.get(&api.owner, &format!("{path}/revisions/receiver-00009-zzz")).await.refused(
        404,
        "NOT_FOUND",
        "revision `receiver-00009-zzz` of service `receiver` does not exist",
    );

    // A stale etag (from the first read) is refused and changes nothing.
    let stale = service_body(json!({"etag": first["etag"], "description": "late"}));
    api.patch(&api.owner, &path, &stale).await.refused(409, "ABORTED", "service `receiver` changed since it was read");
    let now = api.get(&api.owner, &path).await.ok();
    assert_eq!(now["generation"], json!("4"));
    assert_eq!(now["description"], json!(null));
    // The current etag is accepted.
    let fresh = service_body(json!({"etag": now["etag"], "description": "fresh"}));
    assert_eq!(api.patch(&api.owner, &path, &fresh).await.ok()["response"]["description"], json!("fresh"));

    // A named revision is kept as named; reusing a name is refused.
    let named = service_body(
        json!({"template": {"revision": "receiver-blue", "containers": [{"command": ["python3"], "args": ["blue.py"]}]}}),
    );
    let s = api.patch(&api.owner, &path, &named).await.ok()["response"].clone();
    assert_eq!(short(&s["latestReadyRevision"]), "receiver-blue");
    let again = service_body(
        json!({"template": {"revision": "receiver-blue", "containers": [{"command": ["python3"], "args": ["green.py"]}]}}),
    );
    api.patch(&api.owner, &path, &again).await.refused(
        409,
        "ALREADY_EXISTS",
        "revision `receiver-blue` already exists",
    );
}

#[tokio::test]
async fn patch_of_a_missing_service_needs_allow_missing() {
    let api = Api::new().await;
    let path = service("local1", "later");
    api.patch(&api.owner, &path, &service_body(json!({}))).await.refused(
        404,
        "NOT_FOUND",
        "service `later` does not exist in region `local1`",
    );
    let op = api.patch(&api.owner, &format!("{path}?allowMissing=true"), &service_body(json!({}))).await.ok();
    assert_revision(&op["response"]["latestReadyRevision"], "later", 1);
}

#[tokio::test]
async fn invalid_services_are_refused_naming_the_field() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    let create = |id: &str| format!("{}?serviceId={id}", services("local1"));
    let bad = |what, id: &str, patch: Value| Refusal::new(what, Method::POST, create(id), Some(service_body(patch)));
    let invalid = "INVALID_ARGUMENT";
    let cases = vec![
        bad("name with capitals and underscore", "Bad_Name", json!({})).expect(
            400,
            invalid,
            "name: service name `Bad_Name` has a character that is not allowed",
        ),
        bad("name starting with a digit", "1svc", json!({})).expect(
            400,
            invalid,
            "name: service name `1svc` does not start with a letter",
        ),
        bad("name of 50 characters", &"a".repeat(50), json!({})).expect(400, invalid, "has 50 characters"),
        Refusal::new("no serviceId", Method::POST, services("local1"), Some(service_body(json!({})))).expect(
            400,
            invalid,
            "the request has no `serviceId` query parameter",
        ),
        bad("concurrency 1001", "svc", json!({"template": {"maxInstanceRequestConcurrency": 1001}})).expect(
            400,
            invalid,
            "template.maxInstanceRequestConcurrency: concurrency `1001` is not between 1 and 1000",
        ),
        bad("timeout 4000s", "svc", json!({"template": {"timeout": "4000s"}})).expect(
            400,
            invalid,
            "template.timeout: timeout `4000s` is not between 1s and 3600s",
        ),
        bad("timeout 0s", "svc", json!({"template": {"timeout": "0s"}})).expect(
            400,
            invalid,
            "template.timeout: timeout `0s` is not between 1s and 3600s",
        ),
        bad("timeout in minutes", "svc", json!({"template": {"timeout": "5m"}})).expect(
            400,
            invalid,
            "template.timeout: `5m` is not a duration",
        ),
        bad("no command", "svc", json!({"template": {"containers": [{"args": ["app.py"]}]}})).expect(
            400,
            invalid,
            "template.containers[0].command: the container has no command",
        ),
        bad("two containers", "svc", json!({"template": {"containers": [{"command": ["a"]}, {"command": ["b"]}]}}))
            .expect(400, invalid, "template.containers: the template has 2 containers"),
        bad(
            "PORT in env",
            "svc",
            json!({"template": {"containers": [{"command": ["a"], "env": [{"name": "PORT", "value": "1"}]}]}}),
        )
        .expect(400, invalid, "template.containers[0].env[0].name: `PORT` is set by runnel"),
        bad(
            "port 70000",
            "svc",
            json!({"template": {"containers": [{"command": ["a"], "ports": [{"containerPort": 70000}]}]}}),
        )
        .expect(
            400,
            invalid,
            "template.containers[0].ports[0].containerPort: port `70000` is not between 1 and 65535",
        ),
        bad("max instances 0", "svc", json!({"template": {"scaling": {"maxInstanceCount": 0}}})).expect(
            400,
            invalid,
            "template.scaling.maxInstanceCount: max instances `0` is not between 1 and 100",
        ),
        bad("min above max", "svc", json!({"template": {"scaling": {"minInstanceCount": 5, "maxInstanceCount": 2}}}))
            .expect(
                400,
                invalid,
                "template.scaling.minInstanceCount: min instances `5` is greater than max instances `2`",
            ),
        bad(
            "traffic split",
            "svc",
            json!({"traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 50}]}),
        )
        .expect(400, invalid, "traffic: runnel sends 100% of traffic to the latest ready revision"),
        bad("custom audience with a space", "svc", json!({"customAudiences": ["https://a b"]})).expect(
            400,
            invalid,
            "customAudiences[0]: custom audience `https://a b` must be non-empty, without spaces",
        ),
        bad("unknown ingress", "svc", json!({"ingress": "INTERNAL"})).expect(
            400,
            invalid,
            "the request body is not valid JSON for this method: unknown variant `INTERNAL`",
        ),
        bad("bad label", "svc", json!({"labels": {"Team": "x"}})).expect(400, invalid, "labels: label key `Team`"),
        bad("revision not named after the service", "svc", json!({"template": {"revision": "other-v1"}})).expect(
            400,
            invalid,
            "revision name `other-v1` must start with the service name and a hyphen",
        ),
        bad(
            "connector and network interfaces",
            "svc",
            json!({"template": {"vpcAccess": {"connector": "c", "networkInterfaces": [{"network": "n"}]}}}),
        )
        .expect(400, invalid, "template.vpcAccess: the template sets both a connector and network interfaces"),
        Refusal::new(
            "bad region",
            Method::POST,
            format!("{}?serviceId=svc", services("Local_1")),
            Some(service_body(json!({}))),
        )
        .expect(400, invalid, "location: region name `Local_1` has a character that is not allowed"),
        bad("duplicate", "receiver", json!({})).expect(
            409,
            "ALREADY_EXISTS",
            "service `receiver` already exists in region `local1`",
        ),
    ];
    api.check_refusals(&api.owner, &cases).await;

    // None of them created or changed anything.
    let list = api.get(&api.owner, &services("-")).await.ok();
    let names: Vec<&Value> = list["services"].as_array().unwrap().iter().map(|s| &s["name"]).collect();
    assert_eq!(names, [&json!(RECEIVER)]);
    assert_eq!(api.get(&api.owner, &service("local1", "receiver")).await.ok()["generation"], json!("1"));
}

/// Cloud Run v2 reads an unset (zero) `maxInstanceRequestConcurrency` as "the default", 80:
/// proto3 JSON cannot tell 0 from absent.
#[tokio::test]
async fn concurrency_zero_means_the_default() {
    let api = Api::new().await;
    let s = api.deploy("local1", "zero", json!({"template": {"maxInstanceRequestConcurrency": 0}})).await;
    assert_eq!(s["template"]["maxInstanceRequestConcurrency"], json!(80));
}

#[tokio::test]
async fn a_huge_timeout_is_invalid_not_internal() {
    let api = Api::new().await;
    let body = service_body(json!({"template": {"timeout": "18446744073709551615.5s"}}));
    api.create_service(&api.owner, "local1", "svc", &body).await.refused(400, "INVALID_ARGUMENT", "template.timeout");
}

#[tokio::test]
async fn services_are_listed_per_region_or_everywhere_and_deleted() {
    let api = Api::new().await;
    api.deploy("local1", "a", json!({})).await;
    api.deploy("local2", "b", json!({})).await;
    let names = |v: Value| -> Vec<String> {
        v["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(
        names(api.get(&api.owner, &services("local1")).await.ok()),
        ["projects/test-project/locations/local1/services/a"]
    );
    assert_eq!(
        names(api.get(&api.owner, &services("local2")).await.ok()),
        ["projects/test-project/locations/local2/services/b"]
    );
    assert_eq!(names(api.get(&api.owner, &services("-")).await.ok()).len(), 2);
    let b = api.get(&api.owner, &service("local2", "b")).await.ok();
    assert_eq!(b["uri"], json!(format!("http://b-{}.local2.run.localhost:7781", api.number)));

    let op = api.delete(&api.owner, &service("local1", "a")).await.ok();
    assert_eq!(op["done"], json!(true));
    assert_eq!(op["response"]["name"], json!("projects/test-project/locations/local1/services/a"));
    api.get(&api.owner, &service("local1", "a")).await.refused(
        404,
        "NOT_FOUND",
        "service `a` does not exist in region `local1`",
    );
    api.get(&api.owner, &format!("{}/revisions", service("local1", "a"))).await.refused(
        404,
        "NOT_FOUND",
        "service `a`",
    );
    api.delete(&api.owner, &service("local1", "a")).await.refused(404, "NOT_FOUND", "service `a` does not exist");
    // Re-created, it starts again at revision 00001.
    let again = api.deploy("local1", "a", json!({})).await;
    assert_revision(&again["latestReadyRevision"], "a", 1);
}

#[tokio::test]
async fn invalid_service_policies_are_refused() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    let set = format!("{}:setIamPolicy", service("local1", "receiver"));
    let policy = |what, p: Value| Refusal::new(what, Method::POST, set.clone(), Some(json!({ "policy": p })));
    let invoker = |member: &str| json!({"bindings": [{"role": "roles/run.invoker", "members": [member]}]});
    let ghost = format!("serviceAccount:{}", crate::harness::email("ghost"));
    let until_2030 = json!({"expression": "request.time < timestamp('2030-01-01T00:00:00Z')"});
    let invalid = "INVALID_ARGUMENT";
    let cases = vec![
        policy(
            "condition",
            json!({"bindings": [{"role": "roles/run.invoker", "members": ["allUsers"], "condition": until_2030}]}),
        )
        .expect(400, invalid, "policy.bindings.condition: the binding for `roles/run.invoker` has a condition"),
        policy("unknown role", json!({"bindings": [{"role": "roles/run.invokers", "members": ["allUsers"]}]})).expect(
            400,
            invalid,
            "role `roles/run.invokers` is not supported; runnel supports roles/run.invoker",
        ),
        policy("unknown member type", invoker("robot:r2@example.com")).expect(
            400,
            invalid,
            "bindings.members: member type `robot` in `robot:r2@example.com` is unknown",
        ),
        policy("unsupported member type", invoker("domain:example.com")).expect(
            400,
            invalid,
            "member type `domain` is not supported by runnel yet",
        ),
        policy("member without type", invoker("alice@example.com")).expect(
            400,
            invalid,
            "member `alice@example.com` has no type",
        ),
        policy("bad email", invoker("user:alice")).expect(
            400,
            invalid,
            "member `user:alice` does not contain a valid email address",
        ),
        policy("missing account", invoker(&ghost)).expect(
            400,
            invalid,
            "service account `ghost@test-project.iam.gserviceaccount.com` does not exist",
        ),
        policy("empty role", json!({"bindings": [{"role": "", "members": ["allUsers"]}]})).expect(
            400,
            invalid,
            "policy.bindings.role: a binding has no role",
        ),
        policy("version 2", json!({"version": 2, "bindings": []})).expect(
            400,
            invalid,
            "policy.version: policy version `2` is not valid",
        ),
        policy("audit configs", json!({"auditConfigs": [], "bindings": []})).expect(
            400,
            invalid,
            "policy.auditConfigs: audit configs are not supported",
        ),
    ];
    api.check_refusals(&api.owner, &cases).await;
    let now = api.post(&api.owner, &format!("{}:getIamPolicy", service("local1", "receiver")), &json!({})).await.ok();
    assert_eq!(members(&now, "roles/run.invoker"), Vec::<String>::new(), "{now}");
}
