//! Every method checks one named permission; roles grant exactly what they should.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{
    ALICE, Api, Refusal, account, accounts, connectors, credentials, email, members, networks, project, service,
    service_body, services, short, subnets,
};

const ALICE_MEMBER: &str = "`user:alice@example.com`";

/// The owner's world for permission tests: service `receiver` (with one revision), account
/// `caller`, network `vpc`, subnet `sub`, connector `conn`; and alice with no role at all.
async fn world() -> (Api, String, String, String) {
    let api = Api::new().await;
    let svc = api.deploy("local1", "receiver", json!({})).await;
    api.create_account("caller").await;
    api.network_setup().await;
    let (alice, alice_id) = api.credential(ALICE).await;
    (api, alice, alice_id, short(&svc["latestReadyRevision"]))
}

fn denied(permission: &str, resource: &str) -> String {
    format!("permission `{permission}` denied on `{resource}` for {ALICE_MEMBER}")
}

#[tokio::test]
async fn a_principal_without_roles_is_refused_every_method() {
    let (api, alice, alice_id, rev) = world().await;
    let svc = service("local1", "receiver");
    let svc_name = "projects/test-project/locations/local1/services/receiver";
    let caller = account(&email("caller"));
    let caller_name = format!("projects/test-project/serviceAccounts/{}", email("caller"));
    let policy = json!({"policy": {"bindings": [{"role": "roles/run.invoker", "members": ["allUsers"]}]}});
    let owner_policy = json!({"policy": {"bindings": [{"role": "roles/owner", "members": [ALICE]}]}});
    let r = |what, method, path: String, body: Option<Value>, permission: &str, resource: &str| {
        Refusal::new(what, method, path, body).expect(403, "PERMISSION_DENIED", denied(permission, resource))
    };
    let cases = vec![
        // Cloud Run services and revisions.
        r(
            "create service",
            Method::POST,
            format!("{}?serviceId=other", services("local1")),
            Some(service_body(json!({}))),
            "run.services.create",
            "projects/test-project/locations/local1/services/other",
        ),
        r("get service", Method::GET, svc.clone(), None, "run.services.get", svc_name),
        r(
            "list services",
            Method::GET,
            services("local1"),
            None,
            "run.services.list",
            "projects/test-project/locations/local1",
        ),
        r(
            "update service",
            Method::PATCH,
            svc.clone(),
            Some(service_body(json!({"ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY"}))),
            "run.services.update",
            svc_name,
        ),
        r("delete service", Method::DELETE, svc.clone(), None, "run.services.delete", svc_name),
        r(
            "get service policy (GET)",
            Method::GET,
            format!("{svc}:getIamPolicy"),
            None,
            "run.services.getIamPolicy",
            svc_name,
        ),
        r(
            "get service policy (POST)",
            Method::POST,
            format!("{svc}:getIamPolicy"),
            Some(json!({})),
            "run.services.getIamPolicy",
            svc_name,
        ),
        r(
            "set service policy",
            Method::POST,
            format!("{svc}:setIamPolicy"),
            Some(policy.clone()),
            "run.services.setIamPolicy",
            svc_name,
        ),
        r("list revisions", Method::GET, format!("{svc}/revisions"), None, "run.revisions.list", svc_name),
        r(
            "list revisions of every service",
            Method::GET,
            format!("{}/-/revisions", services("local1")),
            None,
            "run.revisions.list",
            "projects/test-project/locations/local1",
        ),
        r("get revision", Method::GET, format!("{svc}/revisions/{rev}"), None, "run.revisions.get", svc_name),
        // IAM service accounts.
        r(
            "create account",
            Method::POST,
            accounts(),
            Some(json!({"accountId": "another"})),
            "iam.serviceAccounts.create",
            &format!("projects/test-project/serviceAccounts/{}", email("another")),
        ),
        r("list accounts", Method::GET, accounts(), None, "iam.serviceAccounts.list", "projects/test-project"),
        r("get account", Method::GET, caller.clone(), None, "iam.serviceAccounts.get", &caller_name),
        r(
            "update account",
            Method::PATCH,
            caller.clone(),
            Some(json!({"serviceAccount": {"displayName": "mine"}})),
            "iam.serviceAccounts.update",
            &caller_name,
        ),
        r("delete account", Method::DELETE, caller.clone(), None, "iam.serviceAccounts.delete", &caller_name),
        r(
            "disable account",
            Method::POST,
            format!("{caller}:disable"),
            Some(json!({})),
            "iam.serviceAccounts.disable",
            &caller_name,
        ),
        r(
            "enable account",
            Method::POST,
            format!("{caller}:enable"),
            Some(json!({})),
            "iam.serviceAccounts.enable",
            &caller_name,
        ),
        r(
            "get account policy",
            Method::POST,
            format!("{caller}:getIamPolicy"),
            Some(json!({})),
            "iam.serviceAccounts.getIamPolicy",
            &caller_name,
        ),
        r(
            "set account policy",
            Method::POST,
            format!("{caller}:setIamPolicy"),
            Some(json!({"policy": {"bindings": [{"role": "roles/iam.serviceAccountUser", "members": [ALICE]}]}})),
            "iam.serviceAccounts.setIamPolicy",
            &caller_name,
        ),
        // The project and its policy.
        r("get project", Method::GET, project(), None, "resourcemanager.projects.get", "projects/test-project"),
        r(
            "get project policy",
            Method::POST,
            format!("{}:getIamPolicy", project()),
            Some(json!({})),
            "resourcemanager.projects.getIamPolicy",
            "projects/test-project",
        ),
        r(
            "set project policy",
            Method::POST,
            format!("{}:setIamPolicy", project()),
            Some(owner_policy),
            "resourcemanager.projects.setIamPolicy",
            "projects/test-project",
        ),
        // Serverless VPC Access connectors.
        r(
            "create connector",
            Method::POST,
            format!("{}?connectorId=conn2", connectors("local1")),
            Some(json!({"network": "vpc", "ipCidrRange": "10.9.0.0/28"})),
            "vpcaccess.connectors.create",
            "projects/test-project/locations/local1/connectors/conn2",
        ),
        r(
            "list connectors",
            Method::GET,
            connectors("local1"),
            None,
            "vpcaccess.connectors.list",
            "projects/test-project/locations/local1",
        ),
        r(
            "get connector",
            Method::GET,
            format!("{}/conn", connectors("local1")),
            None,
            "vpcaccess.connectors.get",
            "projects/test-project/locations/local1/connectors/conn",
        ),
        r(
            "delete connector",
            Method::DELETE,
            format!("{}/conn", connectors("local1")),
            None,
            "vpcaccess.connectors.delete",
            "projects/test-project/locations/local1/connectors/conn",
        ),
        // Compute networks and subnets.
        r(
            "create network",
            Method::POST,
            networks(),
            Some(json!({"name": "vpc2"})),
            "compute.networks.create",
            "projects/test-project/global/networks/vpc2",
        ),
        r(
            "list networks",
            Method::GET,
            networks(),
            None,
            "compute.networks.list",
            "projects/test-project/global/networks",
        ),
        r(
            "get network",
            Method::GET,
            format!("{}/vpc", networks()),
            None,
            "compute.networks.get",
            "projects/test-project/global/networks/vpc",
        ),
        r(
            "delete network",
            Method::DELETE,
            format!("{}/vpc", networks()),
            None,
            "compute.networks.delete",
            "projects/test-project/global/networks/vpc",
        ),
        r(
            "create subnet",
            Method::POST,
            subnets("local1"),
            Some(json!({"name": "sub2", "network": "vpc", "ipCidrRange": "10.1.0.0/24"})),
            "compute.subnetworks.create",
            "projects/test-project/regions/local1/subnetworks/sub2",
        ),
        r(
            "list subnets",
            Method::GET,
            subnets("local1"),
            None,
            "compute.subnetworks.list",
            "projects/test-project/regions/local1/subnetworks",
        ),
        r(
            "get subnet",
            Method::GET,
            format!("{}/sub", subnets("local1")),
            None,
            "compute.subnetworks.get",
            "projects/test-project/regions/local1/subnetworks/sub",
        ),
        r(
            "delete subnet",
            Method::DELETE,
            format!("{}/sub", subnets("local1")),
            None,
            "compute.subnetworks.delete",
            "projects/test-project/regions/local1/subnetworks/sub",
        ),
        // runnel's own credentials.
        r(
            "create credential",
            Method::POST,
            credentials(),
            Some(json!({"member": "user:mallory@example.com"})),
            "runnel.credentials.create",
            "projects/test-project",
        ),
        r("list credentials", Method::GET, credentials(), None, "runnel.credentials.list", "projects/test-project"),
        r(
            "delete credential",
            Method::DELETE,
            format!("{}/{alice_id}", credentials()),
            None,
            "runnel.credentials.delete",
            "projects/test-project",
        ),
    ];
    api.check_refusals(&alice, &cases).await;

    // A refusal must also not reveal whether the resource exists.
    let ghost = Refusal::new("get missing service", Method::GET, service("local1", "ghost"), None).expect(
        403,
        "PERMISSION_DENIED",
        denied("run.services.get", "projects/test-project/locations/local1/services/ghost"),
    );
    let ghost_acct = Refusal::new("get missing account", Method::GET, account(&email("ghosty")), None).expect(
        403,
        "PERMISSION_DENIED",
        denied("iam.serviceAccounts.get", &format!("projects/test-project/serviceAccounts/{}", email("ghosty"))),
    );
    api.check_refusals(&alice, &[ghost, ghost_acct]).await;

    // Nothing the refused requests asked for happened.
    let o = &api.owner;
    let svc_now = api.get(o, &svc).await.ok();
    assert_eq!(svc_now["ingress"], json!("INGRESS_TRAFFIC_ALL"));
    assert_eq!(svc_now["generation"], json!("1"));
    assert!(
        members(&api.post(o, &format!("{svc}:getIamPolicy"), &json!({})).await.ok(), "roles/run.invoker").is_empty()
    );
    assert_eq!(api.get(o, &caller).await.ok()["disabled"], json!(false));
    assert_eq!(api.get(o, &accounts()).await.ok()["accounts"].as_array().map(Vec::len), Some(2));
    assert_eq!(api.get(o, &connectors("local1")).await.ok()["connectors"].as_array().map(Vec::len), Some(1));
    assert_eq!(api.get(o, &networks()).await.ok()["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(api.get(o, &subnets("local1")).await.ok()["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(api.get(o, &credentials()).await.ok()["credentials"].as_array().map(Vec::len), Some(2));
    let policy = api.post(o, &format!("{}:getIamPolicy", project()), &json!({})).await.ok();
    assert_eq!(members(&policy, "roles/owner"), ["user:owner@example.com"]);
    // testIamPermissions needs no permission and answers with nothing held.
    let asked = json!({"permissions": ["run.services.get", "run.services.create", "run.routes.invoke"]});
    assert_eq!(api.post(&alice, &format!("{svc}:testIamPermissions"), &asked).await.ok(), json!({"permissions": []}));
}

#[tokio::test]
async fn a_run_viewer_reads_services_but_changes_nothing() {
    let (api, alice, _, rev) = world().await;
    api.grant(&project(), ALICE, "roles/run.viewer").await;
    let svc = service("local1", "receiver");
    assert_eq!(
        api.get(&alice, &svc).await.ok()["name"],
        json!("projects/test-project/locations/local1/services/receiver")
    );
    let list = api.get(&alice, &services("local1")).await.ok();
    assert_eq!(list["services"].as_array().map(Vec::len), Some(1), "{list}");
    api.get(&alice, &format!("{svc}/revisions")).await.ok();
    api.get(&alice, &format!("{svc}/revisions/{rev}")).await.ok();
    api.post(&alice, &format!("{svc}:getIamPolicy"), &json!({})).await.ok();

    let s = "projects/test-project/locations/local1/services";
    let cases = vec![
        Refusal::new(
            "create",
            Method::POST,
            format!("{}?serviceId=mine", services("local1")),
            Some(service_body(json!({}))),
        )
        .expect(
            403,
            "PERMISSION_DENIED",
            format!(
                "{} (or it may not exist). A role that holds it is `roles/run.developer`",
                denied("run.services.create", &format!("{s}/mine"))
            ),
        ),
        Refusal::new("update", Method::PATCH, svc.clone(), Some(service_body(json!({"description": "x"})))).expect(
            403,
            "PERMISSION_DENIED",
            denied("run.services.update", &format!("{s}/receiver")),
        ),
        Refusal::new("delete", Method::DELETE, svc.clone(), None).expect(
            403,
            "PERMISSION_DENIED",
            denied("run.services.delete", &format!("{s}/receiver")),
        ),
        Refusal::new(
            "set policy",
            Method::POST,
            format!("{svc}:setIamPolicy"),
            Some(json!({"policy": {"bindings": [{"role": "roles/run.invoker", "members": [ALICE]}]}})),
        )
        .expect(
            403,
            "PERMISSION_DENIED",
            format!(
                "{} (or it may not exist). A role that holds it is `roles/run.admin`",
                denied("run.services.setIamPolicy", &format!("{s}/receiver"))
            ),
        ),
        Refusal::new("list accounts", Method::GET, accounts(), None).expect(
            403,
            "PERMISSION_DENIED",
            denied("iam.serviceAccounts.list", "projects/test-project"),
        ),
    ];
    api.check_refusals(&alice, &cases).await;
}

#[tokio::test]
async fn a_grant_on_one_service_reaches_that_service_only() {
    let (api, alice, _, _) = world().await;
    api.deploy("local1", "other", json!({})).await;
    api.grant(&service("local1", "receiver"), ALICE, "roles/run.admin").await;
    api.get(&alice, &service("local1", "receiver")).await.ok();
    api.grant_as(&alice, &service("local1", "receiver"), "allUsers", "roles/run.invoker").await;
    api.get(&alice, &service("local1", "other")).await.refused(
        403,
        "PERMISSION_DENIED",
        denied("run.services.get", "projects/test-project/locations/local1/services/other"),
    );
    // Listing is a project-level permission; a grant on one service does not give it.
    api.get(&alice, &services("local1")).await.refused(
        403,
        "PERMISSION_DENIED",
        denied("run.services.list", "projects/test-project/locations/local1"),
    );
    // And the grant goes with the service: a service re-created under the same name starts bare.
    api.delete(&api.owner, &service("local1", "receiver")).await.ok();
    api.deploy("local1", "receiver", json!({})).await;
    api.get(&alice, &service("local1", "receiver")).await.refused(403, "PERMISSION_DENIED", "run.services.get");
    let policy = api.post(&api.owner, &format!("{}:getIamPolicy", service("local1", "receiver")), &json!({})).await;
    assert_eq!(members(&policy.ok(), "roles/run.invoker"), Vec::<String>::new());
}

#[tokio::test]
async fn a_developer_deploys_only_as_accounts_and_connectors_she_may_use() {
    let (api, alice, _, _) = world().await;
    api.grant(&project(), ALICE, "roles/run.developer").await;
    let caller = email("caller");
    let caller_name = format!("projects/test-project/serviceAccounts/{caller}");
    let as_caller = service_body(json!({"template": {"serviceAccount": caller}}));
    let conn = "projects/test-project/locations/local1/connectors/conn";
    let with_conn = service_body(
        json!({"template": {"serviceAccount": caller, "vpcAccess": {"connector": "conn", "egress": "ALL_TRAFFIC"}}}),
    );
    let default_name = format!("projects/test-project/serviceAccounts/{}", api.default_sa());

    let act_as = |resource: &str| {
        format!(
            "{} (or it may not exist). A role that holds it is `roles/iam.serviceAccountUser`",
            denied("iam.serviceAccounts.actAs", resource)
        )
    };
    api.create_service(&alice, "local1", "as-caller", &as_caller).await.refused(
        403,
        "PERMISSION_DENIED",
        act_as(&caller_name),
    );
    // As on Cloud Run, running as the default compute account needs actAs on it too.
    api.create_service(&alice, "local1", "as-default", &service_body(json!({}))).await.refused(
        403,
        "PERMISSION_DENIED",
        act_as(&default_name),
    );

    // roles/iam.serviceAccountUser on the account's own policy lets her act as that account only.
    api.grant(&account(&caller), ALICE, "roles/iam.serviceAccountUser").await;
    let op = api.create_service(&alice, "local1", "as-caller", &as_caller).await.ok();
    assert_eq!(op["response"]["template"]["serviceAccount"], json!(caller));
    assert_eq!(op["response"]["creator"], json!("alice@example.com"));
    api.create_service(&alice, "local1", "as-default", &service_body(json!({}))).await.refused(
        403,
        "PERMISSION_DENIED",
        act_as(&default_name),
    );
    // Changing her service's template re-checks actAs, and passes.
    let changed = service_body(
        json!({"template": {"serviceAccount": caller, "containers": [{"command": ["python3"], "args": ["v2.py"]}]}}),
    );
    let op = api.patch(&alice, &service("local1", "as-caller"), &changed).await.ok();
    assert!(short(&op["response"]["latestReadyRevision"]).starts_with("as-caller-00002-"), "{op}");

    // A connector needs vpcaccess.connectors.use.
    api.create_service(&alice, "local1", "with-conn", &with_conn).await.refused(
        403,
        "PERMISSION_DENIED",
        format!(
            "{} (or it may not exist). A role that holds it is `roles/vpcaccess.user`",
            denied("vpcaccess.connectors.use", conn)
        ),
    );
    api.grant(&project(), ALICE, "roles/vpcaccess.user").await;
    let op = api.create_service(&alice, "local1", "with-conn", &with_conn).await.ok();
    assert_eq!(op["response"]["template"]["vpcAccess"], json!({"connector": conn, "egress": "ALL_TRAFFIC"}));

    // Direct VPC egress needs compute.subnetworks.use.
    let interfaces = json!({"networkInterfaces": [{"network": "vpc", "subnetwork": "sub"}]});
    let direct = service_body(json!({"template": {"serviceAccount": caller, "vpcAccess": interfaces}}));
    api.create_service(&alice, "local1", "direct", &direct).await.refused(
        403,
        "PERMISSION_DENIED",
        denied("compute.subnetworks.use", "projects/test-project/regions/local1/subnetworks/sub"),
    );
    api.grant(&project(), ALICE, "roles/compute.networkUser").await;
    api.create_service(&alice, "local1", "direct", &direct).await.ok();

    // A developer still cannot hand out access.
    api.post(&alice, &format!("{}:setIamPolicy", service("local1", "as-caller")), &json!({"policy": {}}))
        .await
        .refused(403, "PERMISSION_DENIED", "run.services.setIamPolicy");
}

#[tokio::test]
async fn basic_roles_keep_policy_and_credentials_for_owners() {
    let (api, alice, alice_id, _) = world().await;
    api.grant(&project(), ALICE, "roles/editor").await;
    // An editor may do everything else, including acting as any account of the project.
    api.create_service(
        &alice,
        "local1",
        "edited",
        &service_body(json!({"template": {"serviceAccount": email("caller")}})),
    )
    .await
    .ok();
    let cases =
        vec![
            Refusal::new(
                "set project policy",
                Method::POST,
                format!("{}:setIamPolicy", project()),
                Some(json!({"policy": {}})),
            )
            .expect(403, "PERMISSION_DENIED", "A role that holds it is `roles/owner`"),
            Refusal::new(
                "set service policy",
                Method::POST,
                format!("{}:setIamPolicy", service("local1", "edited")),
                Some(json!({"policy": {}})),
            )
            .expect(403, "PERMISSION_DENIED", "run.services.setIamPolicy"),
            Refusal::new("list credentials", Method::GET, credentials(), None).expect(
                403,
                "PERMISSION_DENIED",
                denied("runnel.credentials.list", "projects/test-project"),
            ),
            Refusal::new("revoke own credential", Method::DELETE, format!("{}/{alice_id}", credentials()), None)
                .expect(403, "PERMISSION_DENIED", "runnel.credentials.delete"),
        ];
    api.check_refusals(&alice, &cases).await;
}

/// The refusal's advice names the narrowest predefined role holding the permission, so owners
/// are not steered into over-granting.
#[tokio::test]
async fn refusals_suggest_the_narrowest_role() {
    let (api, alice, _, _) = world().await;
    let cases: &[(Method, String, Option<Value>, &str)] = &[
        (Method::GET, service("local1", "receiver"), None, "roles/run.viewer"),
        (Method::DELETE, service("local1", "receiver"), None, "roles/run.developer"),
        (Method::GET, account(&email("caller")), None, "roles/iam.serviceAccountUser"),
        (Method::DELETE, account(&email("caller")), None, "roles/iam.serviceAccountAdmin"),
        (Method::GET, format!("{}/conn", connectors("local1")), None, "roles/vpcaccess.user"),
        (Method::DELETE, format!("{}/conn", connectors("local1")), None, "roles/vpcaccess.admin"),
        (Method::GET, project(), None, "roles/viewer"),
        (Method::GET, credentials(), None, "roles/owner"),
    ];
    for (method, path, body, role) in cases {
        let reply = api.call(&alice, method.clone(), path, body.as_ref()).await;
        let advice = format!(
            "A role that holds it is `{role}`; an owner can grant it with \
             `runnel projects add-iam-policy-binding test-project --member=user:alice@example.com --role={role}`"
        );
        reply.refused(403, "PERMISSION_DENIED", advice);
    }
}

#[tokio::test]
async fn refusals_suggest_network_user_for_network_reads_and_use() {
    let (api, alice, _, _) = world().await;
    api.grant(&project(), ALICE, "roles/run.developer").await;
    api.grant(&project(), ALICE, "roles/iam.serviceAccountUser").await;
    let direct = service_body(
        json!({"template": {"vpcAccess": {"networkInterfaces": [{"network": "vpc", "subnetwork": "sub"}]}}}),
    );
    let want = "A role that holds it is `roles/compute.networkUser`";
    api.get(&alice, &format!("{}/vpc", networks())).await.refused(403, "PERMISSION_DENIED", want);
    api.get(&alice, &networks()).await.refused(403, "PERMISSION_DENIED", want);
    api.create_service(&alice, "local1", "direct", &direct).await.refused(403, "PERMISSION_DENIED", want);
}

#[tokio::test]
async fn members_match_by_kind() {
    let (api, alice, _, _) = world().await;
    let svc = service("local1", "receiver");
    // Groups have no directory in runnel, so a group grant reaches nobody.
    api.grant(&project(), "group:everyone@example.com", "roles/run.viewer").await;
    api.get(&alice, &svc).await.refused(403, "PERMISSION_DENIED", "run.services.get");
    // User emails are case-insensitive.
    api.grant(&project(), "user:Alice@Example.COM", "roles/run.viewer").await;
    api.get(&alice, &svc).await.ok();
    let policy = api.post(&api.owner, &format!("{}:getIamPolicy", project()), &json!({})).await.ok();
    assert!(members(&policy, "roles/run.viewer").contains(&ALICE.to_string()), "{policy}");
    // allAuthenticatedUsers reaches every holder of a credential.
    let (bob, _) = api.credential("user:bob@example.com").await;
    api.get(&bob, &svc).await.refused(403, "PERMISSION_DENIED", "`user:bob@example.com`");
    api.grant(&svc, "allAuthenticatedUsers", "roles/run.viewer").await;
    api.get(&bob, &svc).await.ok();
    api.get(&bob, &service("local1", "other")).await.refused(403, "PERMISSION_DENIED", "run.services.get");
}
