//! Who may call at all: bearer credentials, and what happens once one is revoked.

use axum::http::Method;
use serde_json::json;

use crate::harness::{ALICE, Api, credentials, service_body, services};

#[tokio::test]
async fn requests_without_a_valid_credential_are_unauthenticated() {
    let api = Api::new().await;
    let (alice, alice_id) = api.credential(ALICE).await;
    // Before revocation the credential authenticates: alice is known, merely without roles.
    api.get(&alice, &services("local1")).await.refused(403, "PERMISSION_DENIED", "`user:alice@example.com`");
    api.delete(&api.owner, &format!("{}/{alice_id}", credentials())).await.ok();

    let revoked = format!("Bearer {alice}");
    let unknown = format!("Bearer {}", runnel_api::new_secret());
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("no header", None, "the request has no credential; send `Authorization: Bearer CREDENTIAL`"),
        ("unknown secret", Some(unknown.as_str()), "the credential is not valid"),
        ("garbage secret", Some("Bearer not-a-credential"), "the credential is not valid"),
        ("revoked", Some(revoked.as_str()), "the credential is not valid: it was revoked"),
        ("another scheme", Some("Basic b3duZXI6cHc="), "the Authorization header is not `Bearer CREDENTIAL`"),
        ("empty bearer", Some("Bearer "), "the Authorization header is not `Bearer CREDENTIAL`"),
        ("bare secret", Some(alice.as_str()), "the Authorization header is not `Bearer CREDENTIAL`"),
    ];
    let create = service_body(json!({})).to_string();
    let create_path = format!("{}?serviceId=receiver", services("local1"));
    for (what, authorization, fragment) in cases {
        let reply = api.send(*authorization, Method::GET, &services("local1"), None).await;
        let reply = crate::harness::Reply { request: format!("[{what}] {}", reply.request), ..reply };
        reply.refused(401, "UNAUTHENTICATED", fragment);
        // Authentication comes before the body is read, so a write is refused the same way.
        let reply = api.send(*authorization, Method::POST, &create_path, Some(&create)).await;
        let reply = crate::harness::Reply { request: format!("[{what}] {}", reply.request), ..reply };
        reply.refused(401, "UNAUTHENTICATED", fragment);
    }
    // Nothing was created by any of them.
    assert_eq!(api.get(&api.owner, &services("local1")).await.ok(), json!({"services": []}));
}

#[tokio::test]
async fn credentials_are_listed_without_secrets_and_revoked_by_id() {
    let api = Api::new().await;
    let (alice, alice_id) = api.credential(ALICE).await;
    assert!(alice.starts_with("rnl_"), "{alice}");
    let list = api.get(&api.owner, &credentials()).await.ok();
    let creds = list["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2, "the owner's and alice's: {list}");
    assert!(!list.to_string().contains(&alice), "a listing must not reveal secrets: {list}");
    assert!(creds.iter().any(|c| c["name"] == json!(format!("projects/test-project/credentials/{alice_id}"))));

    // Only `user:` principals get credentials.
    let sa = json!({"member": "serviceAccount:caller@test-project.iam.gserviceaccount.com"});
    api.post(&api.owner, &credentials(), &sa).await.refused(
        400,
        "INVALID_ARGUMENT",
        "credentials are issued to `user:EMAIL` principals, not `serviceAccount:caller@test-project.iam.gserviceaccount.com`",
    );
    api.delete(&api.owner, &format!("{}/nosuchid", credentials())).await.refused(
        404,
        "NOT_FOUND",
        "credential `nosuchid` does not exist",
    );

    api.delete(&api.owner, &format!("{}/{alice_id}", credentials())).await.ok();
    api.get(&alice, &services("local1")).await.refused(401, "UNAUTHENTICATED", "it was revoked");
    // Revoking twice finds nothing, and the owner's own credential still works.
    api.delete(&api.owner, &format!("{}/{alice_id}", credentials())).await.refused(404, "NOT_FOUND", alice_id.as_str());
    assert_eq!(api.get(&api.owner, &credentials()).await.ok()["credentials"].as_array().map(Vec::len), Some(1));
}
