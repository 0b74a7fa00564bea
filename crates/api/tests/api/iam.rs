//! IAM policies: etags, concurrent read-modify-write, testIamPermissions, and the project's
//! last owner.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{ALICE, Api, account, add_member, email, members, project, service, subnets};

#[tokio::test]
async fn a_stale_etag_is_refused_on_every_kind_of_policy() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    api.create_account("caller").await;
    for base in [project(), service("local1", "receiver"), account(&email("caller"))] {
        let read = api.post(&api.owner, &format!("{base}:getIamPolicy"), &json!({})).await.ok();
        let etag = read["etag"].clone();
        assert!(etag.is_string(), "{base}: {read}");
        let mut first = read.clone();
        add_member(&mut first, "roles/viewer", ALICE);
        let written = api.post(&api.owner, &format!("{base}:setIamPolicy"), &json!({ "policy": first })).await.ok();
        assert_ne!(written["etag"], etag, "{base}: a write changes the etag");

        // Another writer still holding the first etag is refused, and its change is not applied.
        let mut second = read.clone();
        add_member(&mut second, "roles/viewer", "user:bob@example.com");
        let reply = api.post(&api.owner, &format!("{base}:setIamPolicy"), &json!({ "policy": second })).await;
        reply.refused(409, "ABORTED", "the policy changed since it was read (its etag is stale); read it again");
        let now = api.post(&api.owner, &format!("{base}:getIamPolicy"), &json!({})).await.ok();
        assert_eq!(members(&now, "roles/viewer"), [ALICE], "{base}");
        assert_eq!(now["etag"], written["etag"], "{base}");
    }
}

/// Sixteen writers each add themselves by read-modify-write with the etag, retrying on ABORTED;
/// no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_lose_no_update() {
    let api = Arc::new(Api::new().await);
    api.deploy("local1", "receiver", json!({})).await;
    let base = service("local1", "receiver");
    let mut tasks = Vec::new();
    for n in 0..16 {
        let api = Arc::clone(&api);
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let member = format!("user:u{n}@example.com");
            let mut aborted = 0;
            loop {
                let mut policy = api.post(&api.owner, &format!("{base}:getIamPolicy"), &json!({})).await.ok();
                add_member(&mut policy, "roles/run.invoker", &member);
                let reply = api.post(&api.owner, &format!("{base}:setIamPolicy"), &json!({ "policy": policy })).await;
                if reply.code.as_u16() == 409 {
                    reply.refused(409, "ABORTED", "its etag is stale");
                    aborted += 1;
                    assert!(aborted < 1000, "{member} never got through");
                    continue;
                }
                reply.ok();
                return aborted;
            }
        }));
    }
    let mut aborted = 0;
    for t in tasks {
        aborted += t.await.unwrap();
    }
    let policy = api.post(&api.owner, &format!("{base}:getIamPolicy"), &json!({})).await.ok();
    let mut got = members(&policy, "roles/run.invoker");
    got.sort();
    let mut want: Vec<String> = (0..16).map(|n| format!("user:u{n}@example.com")).collect();
    want.sort();
    assert_eq!(got, want, "after {aborted} aborted attempts");
}

/// Writers that race to create the same resource or overlapping ranges: one wins, the others
/// see the winner, because every check runs in the transaction that writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_have_one_winner() {
    let api = Arc::new(Api::new().await);
    api.post(&api.owner, &crate::harness::networks(), &json!({"name": "vpc"})).await.ok();
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let api = Arc::clone(&api);
        tasks.push(tokio::spawn(async move {
            let svc = api.create_service(&api.owner, "local1", "racer", &crate::harness::service_body(json!({}))).await;
            // Eight different names, eight ranges that all overlap 10.0.0.0/16.
            let body = json!({"name": format!("sub{n}"), "network": "vpc", "ipCidrRange": format!("10.0.{n}.0/24")});
            let body =
                if n == 0 { json!({"name": "sub0", "network": "vpc", "ipCidrRange": "10.0.0.0/16"}) } else { body };
            let sub = api.post(&api.owner, &subnets("local1"), &body).await;
            (svc, sub)
        }));
    }
    let (mut services, mut subs) = (0, 0);
    for t in tasks {
        let (svc, sub) = t.await.unwrap();
        match svc.code.as_u16() {
            200 => services += 1,
            _ => svc.refused(409, "ALREADY_EXISTS", "service `racer` already exists"),
        }
        match sub.code.as_u16() {
            200 => subs += 1,
            _ => sub.refused(400, "INVALID_ARGUMENT", "overlaps"),
        }
    }
    assert_eq!(services, 1);
    // Either the /16 won alone, or some of the disjoint /24s won and the /16 lost.
    let listed = api.get(&api.owner, &subnets("local1")).await.ok();
    let ranges: Vec<&str> =
        listed["items"].as_array().unwrap().iter().filter_map(|s| s["ipCidrRange"].as_str()).collect();
    assert_eq!(ranges.len(), subs);
    assert!(
        ranges == ["10.0.0.0/16"] || !ranges.contains(&"10.0.0.0/16"),
        "overlapping subnets were both created: {ranges:?}"
    );
}

#[tokio::test]
async fn test_iam_permissions_answers_only_what_is_held() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    api.create_account("caller").await;
    let (alice, _) = api.credential(ALICE).await;
    api.grant(&project(), ALICE, "roles/run.viewer").await;
    let svc = service("local1", "receiver");
    let asked = json!({"permissions": [
        "run.services.get", "run.services.create", "run.routes.invoke", "run.services.setIamPolicy", "no.such.permission"
    ]});
    let test = |path: String, body: Value| {
        let api = &api;
        let alice = alice.clone();
        async move { api.post(&alice, &format!("{path}:testIamPermissions"), &body).await.ok() }
    };
    assert_eq!(test(svc.clone(), asked.clone()).await, json!({"permissions": ["run.services.get"]}));
    // A grant on the service's own policy adds to what the project gives.
    api.grant(&svc, ALICE, "roles/run.invoker").await;
    assert_eq!(
        test(svc.clone(), asked.clone()).await,
        json!({"permissions": ["run.services.get", "run.routes.invoke"]})
    );
    assert_eq!(test(service("local1", "other"), asked.clone()).await, json!({"permissions": ["run.services.get"]}));
    // On the project, and on an account.
    let project_asked = json!({"permissions": ["resourcemanager.projects.getIamPolicy", "run.services.list"]});
    assert_eq!(test(project(), project_asked).await, json!({"permissions": ["run.services.list"]}));
    api.grant(&account(&email("caller")), ALICE, "roles/iam.serviceAccountUser").await;
    let acct_asked = json!({"permissions": ["iam.serviceAccounts.actAs", "iam.serviceAccounts.delete"]});
    assert_eq!(
        test(account(&email("caller")), acct_asked.clone()).await,
        json!({"permissions": ["iam.serviceAccounts.actAs"]})
    );
    assert_eq!(test(account(&api.default_sa()), acct_asked).await, json!({"permissions": []}));
    // The owner holds everything runnel knows, and nothing it does not.
    let owner = api.post(&api.owner, &format!("{svc}:testIamPermissions"), &asked).await.ok();
    assert_eq!(
        owner,
        json!({"permissions": ["run.services.get", "run.services.create", "run.routes.invoke", "run.services.setIamPolicy"]})
    );
}

#[tokio::test]
async fn the_project_keeps_a_user_owner() {
    let api = Api::new().await;
    api.create_account("caller").await;
    let read = api.post(&api.owner, &format!("{}:getIamPolicy", project()), &json!({})).await.ok();
    assert_eq!(members(&read, "roles/owner"), ["user:owner@example.com"]);
    let with_owners = |owners: Value| {
        json!({"policy": {"etag": read["etag"], "bindings": [
            {"role": "roles/owner", "members": owners},
            {"role": "roles/viewer", "members": [ALICE]},
        ]}})
    };
    let no_owner = "the policy leaves the project without a `user:` owner, so nobody could manage it";
    let set = format!("{}:setIamPolicy", project());
    for (what, owners) in [
        ("no bindings at all", Value::Null),
        ("no owner members", json!([])),
        ("only a group owns", json!(["group:admins@example.com"])),
        ("only an account owns", json!([format!("serviceAccount:{}", email("caller"))])),
        ("only everyone owns", json!(["allAuthenticatedUsers"])),
    ] {
        let body = if owners.is_null() { json!({"policy": {"etag": read["etag"]}}) } else { with_owners(owners) };
        let reply = api.post(&api.owner, &set, &body).await;
        let reply = crate::harness::Reply { request: format!("[{what}] {}", reply.request), ..reply };
        reply.refused(400, "FAILED_PRECONDITION", no_owner);
    }
    let now = api.post(&api.owner, &format!("{}:getIamPolicy", project()), &json!({})).await.ok();
    assert_eq!(now, read, "refused policies change nothing");

    // Handing ownership to another user is fine; the old owner then has no access at all.
    api.post(&api.owner, &set, &with_owners(json!([ALICE]))).await.ok();
    api.get(&api.owner, &project()).await.refused(403, "PERMISSION_DENIED", "resourcemanager.projects.get");
}
