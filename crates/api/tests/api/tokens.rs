//! Access tokens at the API (issue #5): a service account's token acts with exactly that
//! account's permissions, and stops working when the account is disabled, deleted or re-created;
//! ID tokens and unknown tokens are refused. And who may open an operator proxy into a network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use runnel_api::{AccessTokenHolder, ApiError, ApiResult, OpenedProxy, OperatorProxies, OperatorProxyGrant};
use runnel_policy::Reason;
use runnel_policy::origin::Via;
use serde_json::json;

use crate::harness::*;

/// Mints `ya29.N` tokens and remembers their holders, as the daemon's minter does.
#[derive(Default)]
struct FakeIssuer {
    tokens: Mutex<HashMap<String, AccessTokenHolder>>,
}

impl runnel_api::TokenIssuer for FakeIssuer {
    fn id_token(&self, _subject: &str, _email: &str, _audience: &str) -> Result<String, String> {
        Ok("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".into())
    }

    fn access_token(&self, holder: &AccessTokenHolder, _scopes: &[String]) -> Result<(String, u64), String> {
        let mut tokens = self.tokens.lock().unwrap();
        let token = format!("ya29.{}", tokens.len());
        tokens.insert(token.clone(), holder.clone());
        Ok((token, 4_000_000_000))
    }

    fn access_token_holder(&self, token: &str) -> Option<AccessTokenHolder> {
        self.tokens.lock().unwrap().get(token).cloned()
    }
}

/// Records the grants it is asked to open and refuses, so the API answers at once.
#[derive(Default)]
struct FakeProxies {
    grants: Mutex<Vec<OperatorProxyGrant>>,
}

impl OperatorProxies for FakeProxies {
    fn open(&self, grant: OperatorProxyGrant) -> ApiResult<OpenedProxy> {
        self.grants.lock().unwrap().push(grant);
        Err(ApiError::failed_precondition("the fake daemon opens no listener"))
    }
}

async fn api_with_tokens() -> (Api, Arc<FakeProxies>) {
    let proxies = Arc::new(FakeProxies::default());
    let p = proxies.clone();
    let api = Api::with_plane(move |cp| {
        let cp = cp.with_tokens(Arc::new(FakeIssuer::default()));
        cp.set_operator_proxies(p);
        cp
    })
    .await;
    (api, proxies)
}

fn generate(email: &str) -> String {
    format!("/v1/projects/-/serviceAccounts/{email}:generateAccessToken")
}

#[tokio::test]
async fn a_service_accounts_access_token_acts_with_exactly_its_permissions() {
    let (api, _) = api_with_tokens().await;
    api.create_account("viewer").await;
    let sa = email("viewer");
    api.grant(&project(), &format!("serviceAccount:{sa}"), "roles/run.viewer").await;
    let minted = api
        .post(&api.owner, &generate(&sa), &json!({ "scope": ["https://www.googleapis.com/auth/cloud-platform"] }))
        .await
        .ok();
    let token = minted["accessToken"].as_str().unwrap().to_string();
    assert!(token.starts_with("ya29."), "{minted}");
    assert!(minted["expireTime"].as_str().unwrap().ends_with('Z'), "{minted}");

    // It may read services (roles/run.viewer), but not deploy: the refusal names the permission.
    api.get(&token, &services("local1")).await.ok();
    api.create_service(&token, "local1", "nope", &service_body(json!({}))).await.refused(
        403,
        "PERMISSION_DENIED",
        format!("permission `run.services.create` denied on `projects/{PROJECT}/locations/local1/services/nope` for `serviceAccount:{sa}`"),
    );

    // Disabled: refused with 401 on the next call, and no new token; enabled again: it works.
    api.post(&api.owner, &format!("{}:disable", account(&sa)), &json!({})).await.ok();
    api.get(&token, &services("local1")).await.refused_for(401, "UNAUTHENTICATED", Reason::PrincipalDisabled);
    api.post(&api.owner, &generate(&sa), &json!({})).await.refused(
        400,
        "FAILED_PRECONDITION",
        "is disabled, so it gets no tokens",
    );
    api.post(&api.owner, &format!("{}:enable", account(&sa)), &json!({})).await.ok();
    api.get(&token, &services("local1")).await.ok();

    // Deleted, then re-created under the same email: the old token is not the new account's.
    api.delete(&api.owner, &account(&sa)).await.ok();
    api.get(&token, &services("local1")).await.refused_for(401, "UNAUTHENTICATED", Reason::PrincipalDeleted);
    api.create_account("viewer").await;
    let recreated = api.get(&token, &services("local1")).await;
    recreated.refused_for(401, "UNAUTHENTICATED", Reason::PrincipalDeleted);
    recreated.refused(401, "UNAUTHENTICATED", "was deleted and re-created");
}

#[tokio::test]
async fn id_tokens_and_unknown_tokens_are_not_api_credentials() {
    let (api, _) = api_with_tokens().await;
    let id_token = api
        .post(&api.owner, &format!("/runnel/v1/projects/{PROJECT}/idToken"), &json!({"audience": "http://x"}))
        .await
        .ok();
    let id_token = id_token["token"].as_str().unwrap().to_string();
    api.get(&id_token, &services("local1")).await.refused(401, "UNAUTHENTICATED", "the bearer token is an ID token");
    api.get("ya29.not-issued-here", &services("local1")).await.refused(
        401,
        "UNAUTHENTICATED",
        "the access token is not valid",
    );
    api.get("garbage", &services("local1")).await.refused(401, "UNAUTHENTICATED", "the credential is not valid");
}

#[tokio::test]
async fn generating_an_access_token_needs_get_access_token_on_the_account() {
    let (api, _) = api_with_tokens().await;
    api.create_account("deployer").await;
    let sa = email("deployer");
    let (alice, _) = api.credential(ALICE).await;
    api.post(&alice, &generate(&sa), &json!({})).await.refused(
        403,
        "PERMISSION_DENIED",
        "iam.serviceAccounts.getAccessToken",
    );
    api.grant(&account(&sa), ALICE, "roles/iam.serviceAccountTokenCreator").await;
    api.post(&alice, &generate(&sa), &json!({})).await.ok();
    api.post(&alice, &generate(&sa), &json!({"lifetime": "7200s"})).await.refused(
        400,
        "INVALID_ARGUMENT",
        "at most 3600s",
    );
}

#[tokio::test]
async fn a_persons_access_token_acts_as_them_until_their_credentials_are_revoked() {
    let (api, _) = api_with_tokens().await;
    let (alice, id) = api.credential(ALICE).await;
    let minted = api.post(&alice, &format!("/runnel/v1/projects/{PROJECT}/accessToken"), &json!({})).await.ok();
    let token = minted["accessToken"].as_str().unwrap().to_string();
    // Alice holds no role: the token is refused exactly as she is.
    api.get(&token, &services("local1")).await.refused(403, "PERMISSION_DENIED", "for `user:alice@example.com`");
    api.grant(&project(), ALICE, "roles/run.viewer").await;
    api.get(&token, &services("local1")).await.ok();
    api.delete(&api.owner, &format!("{}/{id}", credentials())).await.ok();
    api.get(&token, &services("local1")).await.refused_for(401, "UNAUTHENTICATED", Reason::PrincipalDeleted);
}

#[tokio::test]
async fn an_operator_proxy_needs_compute_networks_use_on_the_network() {
    let (api, proxies) = api_with_tokens().await;
    api.network_setup().await;
    api.deploy("local1", "internal", json!({"ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY"})).await;
    let path = format!("/runnel/v1/projects/{PROJECT}/locations/local1/services/internal:proxy");
    let (alice, _) = api.credential(ALICE).await;
    // Cloud Run Admin is not enough: entering a network is compute.networks.use.
    api.grant(&project(), ALICE, "roles/run.admin").await;
    api.post(&alice, &path, &json!({"network": "vpc"})).await.refused(
        403,
        "PERMISSION_DENIED",
        format!("permission `compute.networks.use` denied on `projects/{PROJECT}/global/networks/vpc`"),
    );
    assert!(proxies.grants.lock().unwrap().is_empty());
    api.post(&api.owner, &path, &json!({"network": "elsewhere"})).await.refused(
        404,
        "NOT_FOUND",
        "network `elsewhere` does not exist",
    );
    api.post(
        &api.owner,
        &format!("/runnel/v1/projects/{PROJECT}/locations/local1/services/ghost:proxy"),
        &json!({"network": "vpc"}),
    )
    .await
    .refused(404, "NOT_FOUND", "service `ghost` does not exist");
    // A full name must be this project's network, not one of the same short name elsewhere.
    api.post(&api.owner, &path, &json!({"network": "projects/other/global/networks/vpc"})).await.refused(
        400,
        "INVALID_ARGUMENT",
        format!("network `projects/other/global/networks/vpc` is in project `other`, but this runnel serves project `{PROJECT}`"),
    );
    assert!(proxies.grants.lock().unwrap().is_empty());

    api.grant(&project(), ALICE, "roles/compute.networkUser").await;
    api.post(&alice, &path, &json!({"network": "vpc", "port": 0})).await.refused(
        400,
        "FAILED_PRECONDITION",
        "the fake daemon",
    );
    let grants = proxies.grants.lock().unwrap();
    let [grant] = grants.as_slice() else { panic!("one grant expected, got {}", grants.len()) };
    assert_eq!(grant.principal.member(), ALICE);
    assert_eq!(grant.network, format!("projects/{PROJECT}/global/networks/vpc"));
    assert_eq!(grant.url, format!("http://internal-{}.local1.run.localhost:7781", api.number));
    assert_eq!(grant.authority, format!("internal-{}.local1.run.localhost:7781", api.number));
    match &grant.origin {
        runnel_policy::origin::Origin::Vpc { project, via: Via::OperatorProxy { principal }, caller: None, .. } => {
            assert_eq!(project, PROJECT);
            assert_eq!(principal, ALICE);
        }
        other => panic!("not an operator proxy's VPC origin: {other:?}"),
    }
}
