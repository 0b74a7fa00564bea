//! IAM service accounts: unique ids that are never reused, what deletion does to bindings,
//! disabling, and accounts in use.

use std::collections::HashSet;

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Api, Refusal, account, accounts, email, members, service, service_body};

#[track_caller]
fn unique_id(acct: &Value) -> String {
    let id = acct["uniqueId"].as_str().unwrap_or_default().to_string();
    assert!(id.len() == 21 && id.bytes().all(|b| b.is_ascii_digit()), "uniqueId `{id}` is not 21 digits: {acct}");
    id
}

#[tokio::test]
async fn accounts_are_created_with_a_21_digit_unique_id_and_found_by_email_or_id() {
    let api = Api::new().await;
    let caller = email("caller");
    let acct = api.create_account("caller").await;
    assert_eq!(acct["email"], json!(caller));
    assert_eq!(acct["name"], json!(format!("projects/test-project/serviceAccounts/{caller}")));
    assert_eq!(acct["projectId"], json!("test-project"));
    assert_eq!(acct["displayName"], json!("The caller account"));
    assert_eq!(acct["disabled"], json!(false));
    let uid = unique_id(&acct);
    assert_eq!(acct["oauth2ClientId"], json!(uid));

    assert_eq!(api.get(&api.owner, &account(&caller)).await.ok(), acct);
    assert_eq!(api.get(&api.owner, &account(&uid)).await.ok(), acct);
    // The default compute account exists from the start, with its own unique id.
    let default = api.get(&api.owner, &account(&api.default_sa())).await.ok();
    assert_ne!(unique_id(&default), uid);
    let list = api.get(&api.owner, &accounts()).await.ok();
    let mut emails: Vec<&str> =
        list["accounts"].as_array().unwrap().iter().filter_map(|a| a["email"].as_str()).collect();
    emails.sort_unstable();
    let default_sa = api.default_sa();
    let mut want = vec![default_sa.as_str(), caller.as_str()];
    want.sort_unstable();
    assert_eq!(emails, want);

    let mask =
        json!({"serviceAccount": {"displayName": "Caller", "description": "calls"}, "updateMask": "displayName"});
    let patched = api.patch(&api.owner, &account(&caller), &mask).await.ok();
    assert_eq!(patched["displayName"], json!("Caller"));
    assert_eq!(patched["description"], json!(null), "the mask leaves the description alone");
    assert_eq!(patched["uniqueId"], json!(uid));

    let create = |what, body: Value| Refusal::new(what, Method::POST, accounts(), Some(body));
    let cases = vec![
        create("duplicate", json!({"accountId": "caller"})).expect(
            409,
            "ALREADY_EXISTS",
            "service account `caller@test-project.iam.gserviceaccount.com` already exists",
        ),
        create("too short", json!({"accountId": "cal"})).expect(
            400,
            "INVALID_ARGUMENT",
            "accountId: service account name `cal` has 3 characters",
        ),
        create("capitals", json!({"accountId": "Caller"})).expect(
            400,
            "INVALID_ARGUMENT",
            "service account name `Caller` has a character that is not allowed",
        ),
        create(
            "long display name",
            json!({"accountId": "display", "serviceAccount": {"displayName": "x".repeat(101)}}),
        )
        .expect(
            400,
            "INVALID_ARGUMENT",
            "serviceAccount.displayName: the display name is longer than 100 characters",
        ),
        create("no account id", json!({})).expect(
            400,
            "INVALID_ARGUMENT",
            "the request body is not valid JSON for this method",
        ),
        Refusal::new("missing", Method::GET, account(&email("ghosty")), None).expect(
            404,
            "NOT_FOUND",
            "service account `ghosty@test-project.iam.gserviceaccount.com` does not exist",
        ),
    ];
    api.check_refusals(&api.owner, &cases).await;
}

#[tokio::test]
async fn a_recreated_account_gets_a_new_unique_id_and_none_of_the_old_grants() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    let caller = email("caller");
    let old = unique_id(&api.create_account("caller").await);
    let svc = service("local1", "receiver");
    let bound = api.grant(&svc, &format!("serviceAccount:{caller}"), "roles/run.invoker").await;
    assert_eq!(members(&bound, "roles/run.invoker"), [format!("serviceAccount:{caller}")]);

    api.delete(&api.owner, &account(&caller)).await.ok();
    api.get(&api.owner, &account(&caller)).await.refused(404, "NOT_FOUND", "does not exist");
    api.get(&api.owner, &account(&old)).await.refused(404, "NOT_FOUND", "does not exist");
    let deleted = format!("deleted:serviceAccount:{caller}?uid={old}");
    let policy_path = format!("{svc}:getIamPolicy");
    let policy = api.post(&api.owner, &policy_path, &json!({})).await.ok();
    assert_eq!(members(&policy, "roles/run.invoker"), [deleted.as_str()]);

    let new = unique_id(&api.create_account("caller").await);
    assert_ne!(new, old);
    // The binding still means the old account: the new one does not inherit it.
    let policy = api.post(&api.owner, &policy_path, &json!({})).await.ok();
    assert_eq!(members(&policy, "roles/run.invoker"), [deleted.as_str()]);
    let mut policy = policy;

    // A read-modify-write keeps the deleted member as it is and binds the new account apart.
    crate::harness::add_member(&mut policy, "roles/run.invoker", &format!("serviceAccount:{caller}"));
    let set = api.post(&api.owner, &format!("{svc}:setIamPolicy"), &json!({ "policy": policy })).await.ok();
    let mut got = members(&set, "roles/run.invoker");
    got.sort();
    assert_eq!(got, [deleted, format!("serviceAccount:{caller}")]);
}

#[tokio::test]
async fn unique_ids_are_never_reused() {
    let api = Api::new().await;
    let mut seen = HashSet::new();
    seen.insert(unique_id(&api.get(&api.owner, &account(&api.default_sa())).await.ok()));
    for round in 0..12 {
        for id in ["churner", "churner-two"] {
            let uid = unique_id(&api.create_account(id).await);
            assert!(seen.insert(uid.clone()), "round {round}: uniqueId {uid} of {id} was handed out before");
        }
        for id in ["churner", "churner-two"] {
            api.delete(&api.owner, &account(&email(id))).await.ok();
        }
    }
    assert_eq!(seen.len(), 25);
}

#[tokio::test]
async fn disabled_and_missing_accounts_cannot_be_deployed_as() {
    let api = Api::new().await;
    let caller = email("caller");
    api.create_account("caller").await;
    assert_eq!(api.post(&api.owner, &format!("{}:disable", account(&caller)), &json!({})).await.ok(), json!({}));
    assert_eq!(api.get(&api.owner, &account(&caller)).await.ok()["disabled"], json!(true));

    let as_caller = service_body(json!({"template": {"serviceAccount": caller}}));
    api.create_service(&api.owner, "local1", "svc", &as_caller).await.refused(
        400,
        "FAILED_PRECONDITION",
        "service account `caller@test-project.iam.gserviceaccount.com` is disabled; enable it with `runnel iam service-accounts enable",
    );
    let ghost = service_body(json!({"template": {"serviceAccount": email("ghosty")}}));
    api.create_service(&api.owner, "local1", "svc", &ghost).await.refused(
        400,
        "INVALID_ARGUMENT",
        "service account `ghosty@test-project.iam.gserviceaccount.com` does not exist",
    );
    api.get(&api.owner, &service("local1", "svc")).await.refused(404, "NOT_FOUND", "service `svc` does not exist");

    assert_eq!(api.post(&api.owner, &format!("{}:enable", account(&caller)), &json!({})).await.ok(), json!({}));
    assert_eq!(api.get(&api.owner, &account(&caller)).await.ok()["disabled"], json!(false));
    let op = api.create_service(&api.owner, "local1", "svc", &as_caller).await.ok();
    assert_eq!(op["response"]["template"]["serviceAccount"], json!(caller));

    // Emails are case-insensitive.
    let upper = service_body(json!({"template": {"serviceAccount": caller.to_uppercase()}}));
    let op = api.create_service(&api.owner, "local1", "upper", &upper).await.ok();
    assert_eq!(op["response"]["template"]["serviceAccount"], json!(caller));
}

#[tokio::test]
async fn an_account_in_use_by_a_service_cannot_be_deleted() {
    let api = Api::new().await;
    let caller = email("caller");
    api.create_account("caller").await;
    api.deploy("local1", "uses-caller", json!({"template": {"serviceAccount": caller}})).await;
    let reply = api.delete(&api.owner, &account(&caller)).await;
    reply.refused(
        400,
        "FAILED_PRECONDITION",
        format!(
            "service account `{caller}` is in use by service `uses-caller` in `local1` (revision `uses-caller-00001-"
        ),
    );
    api.get(&api.owner, &account(&caller)).await.ok();
    // The default compute account is in use the same way.
    api.deploy("local1", "other", json!({})).await;
    api.delete(&api.owner, &account(&api.default_sa())).await.refused(400, "FAILED_PRECONDITION", "service `other`");

    // Once the service runs as another account, the account is free.
    api.patch(&api.owner, &service("local1", "uses-caller"), &service_body(json!({}))).await.ok();
    api.delete(&api.owner, &account(&caller)).await.ok();
}

#[tokio::test]
async fn grants_on_an_account_do_not_survive_its_recreation() {
    let api = Api::new().await;
    let caller = email("caller");
    api.create_account("caller").await;
    let (alice, _) = api.credential(crate::harness::ALICE).await;
    api.grant(&crate::harness::project(), crate::harness::ALICE, "roles/run.developer").await;
    api.grant(&account(&caller), crate::harness::ALICE, "roles/iam.serviceAccountUser").await;
    let as_caller = service_body(json!({"template": {"serviceAccount": caller}}));
    api.create_service(&alice, "local1", "first", &as_caller).await.ok();
    api.delete(&api.owner, &service("local1", "first")).await.ok();

    api.delete(&api.owner, &account(&caller)).await.ok();
    api.create_account("caller").await;
    let policy = api.post(&api.owner, &format!("{}:getIamPolicy", account(&caller)), &json!({})).await.ok();
    assert_eq!(members(&policy, "roles/iam.serviceAccountUser"), Vec::<String>::new(), "{policy}");
    api.create_service(&alice, "local1", "second", &as_caller).await.refused(
        403,
        "PERMISSION_DENIED",
        format!("permission `iam.serviceAccounts.actAs` denied on `projects/test-project/serviceAccounts/{caller}`"),
    );
}
