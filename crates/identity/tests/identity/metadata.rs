//! The metadata server, driven with `oneshot`, line by line of shared/METADATA.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use runnel_identity::metadata::{AccountSource, MISSING_FLAVOR_BODY};
use runnel_identity::{Account, Instance, MetadataServer, Minter, verify_id_token};
use runnel_model::service_account::ServiceAccount;
use runnel_policy::Reason;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;

const EMAIL: &str = "caller@my-project.iam.gserviceaccount.com";
const UNIQUE_ID: &str = "112233445566778899001";
const V1: &str = "/computeMetadata/v1";

/// What the daemon's store says about the account; tests change it.
#[derive(Clone)]
struct Store(Arc<Mutex<Option<ServiceAccount>>>);

impl AccountSource for Store {
    fn lookup(&self, email: &str) -> Option<ServiceAccount> {
        self.0.lock().unwrap().clone().filter(|sa| sa.email == email)
    }
}

fn stored_account() -> ServiceAccount {
    ServiceAccount {
        name: format!("projects/my-project/serviceAccounts/{EMAIL}"),
        project_id: "my-project".into(),
        unique_id: UNIQUE_ID.into(),
        email: EMAIL.into(),
        ..Default::default()
    }
}

struct Server {
    _fixture: Fixture,
    app: Router,
    clock: Arc<AtomicU64>,
    store: Store,
    keys: Arc<runnel_identity::Keys>,
    minter: Arc<Minter>,
}

fn server() -> Server {
    let fixture = fixture();
    let keys = fixture.keys.clone();
    let minter = Arc::new(Minter::new(keys.clone(), ISSUER));
    let store = Store(Arc::new(Mutex::new(Some(stored_account()))));
    let clock = Arc::new(AtomicU64::new(NOW));
    let instance = Instance {
        project_id: "my-project".into(),
        project_number: 123456789012,
        region: "us-central1".into(),
        instance_id: "0069c7a98e5f4bd2a9f0".into(),
        instance_name: "hello-00001-xyz".into(),
        created: NOW - 60,
        service_account: Account { unique_id: UNIQUE_ID.into(), email: EMAIL.into() },
        scopes: vec![],
        extra_hosts: vec!["127.0.0.1:8169".into()],
    };
    let c = clock.clone();
    let app = MetadataServer::new(instance, minter.clone(), Arc::new(store.clone()))
        .with_clock(Arc::new(move || c.load(Ordering::SeqCst)))
        .router();
    Server { _fixture: fixture, app, clock, store, keys, minter }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers.get("content-type").map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    fn json(&self) -> Value {
        assert_eq!(self.content_type(), "application/json", "{}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }
}

impl Server {
    async fn request(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        // Every response, errors included, says it is Google's metadata server.
        assert_eq!(headers.get("metadata-flavor").map(|v| v.to_str().unwrap()), Some("Google"), "{uri}: {status}");
        if status == StatusCode::OK {
            assert!(headers.contains_key("content-type"), "{uri}: every 200 has a Content-Type");
        }
        Answer { status, headers, body }
    }

    /// A request as Google's client libraries send it.
    async fn get(&self, uri: &str) -> Answer {
        self.request("GET", uri, &[("host", "metadata.google.internal"), ("metadata-flavor", "Google")]).await
    }

    async fn ok(&self, uri: &str) -> Answer {
        let answer = self.get(uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
        answer
    }

    fn verify(&self, token: &str, audience: &str) -> runnel_identity::Claims {
        let now = self.clock.load(Ordering::SeqCst);
        verify_id_token(token, &self.keys.key_set(), ISSUER, &[audience.to_string()], now, SKEW).unwrap()
    }
}

#[tokio::test]
async fn the_ping_answers_without_the_flavor_header() {
    let s = server();
    let a = s.request("GET", "/", &[("host", "169.254.169.254")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type().starts_with("text/plain"));
    let a = s.request("GET", "/", &[("host", "169.254.169.254"), ("metadata-flavor", "Google")]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn everything_else_requires_the_flavor_header() {
    let s = server();
    for path in [
        "/computeMetadata/v1/project/project-id",
        "/computeMetadata/v1/instance",
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "/computeMetadata/",
        "/computeMetadata/v1/nothing-here",
    ] {
        for headers in [
            &[("host", "metadata.google.internal")][..],
            &[("host", "metadata.google.internal"), ("metadata-flavor", "google")][..],
            &[("host", "metadata.google.internal"), ("metadata-flavor", "Googl")][..],
            &[("host", "metadata.google.internal"), ("x-google-metadata-request", "True")][..],
        ] {
            let a = s.request("GET", path, headers).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert_eq!(a.body, MISSING_FLAVOR_BODY);
        }
    }
    assert_eq!(MISSING_FLAVOR_BODY, r#"Missing required header "Metadata-Flavor": "Google""#);
}

#[tokio::test]
async fn a_request_relayed_by_a_proxy_is_refused() {
    let s = server();
    for path in
        ["/", "/computeMetadata/v1/project/project-id", "/computeMetadata/v1/instance/service-accounts/default/token"]
    {
        for header in ["x-forwarded-for", "forwarded"] {
            let a = s
                .request(
                    "GET",
                    path,
                    &[("host", "metadata.google.internal"), ("metadata-flavor", "Google"), (header, "10.0.0.1")],
                )
                .await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} {header}");
            assert!(a.body.contains("X-Forwarded-For"));
        }
    }
}

#[tokio::test]
async fn only_the_metadata_servers_own_host_names_are_answered() {
    let s = server();
    let path = "/computeMetadata/v1/project/project-id";
    for host in [
        "169.254.169.254",
        "169.254.169.254:80",
        "metadata.google.internal",
        "METADATA.Google.Internal",
        "metadata.google.internal:80",
        "metadata.google.internal.",
        "metadata",
        "Metadata:80",
        "127.0.0.1:8169",
    ] {
        let a = s.request("GET", path, &[("host", host), ("metadata-flavor", "Google")]).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
        assert_eq!(a.body, "my-project");
    }
    for host in [
        "evil.example",
        "evil.example:80",
        "metadata.google.internal:8080",
        "169.254.169.254:8080",
        "127.0.0.1",
        "127.0.0.1:8170",
        "metadata.google.internal.evil.example",
        "user@metadata.google.internal",
        "",
    ] {
        let a = s.request("GET", path, &[("host", host), ("metadata-flavor", "Google")]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{host:?}");
        // Refused before anything else, the ping included.
        let a = s.request("GET", "/", &[("host", host)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{host:?}");
    }
    // No Host at all, and an absolute-form URI naming another host.
    assert_eq!(s.request("GET", path, &[("metadata-flavor", "Google")]).await.status, StatusCode::FORBIDDEN);
    let a = s
        .request(
            "GET",
            "http://evil.example/computeMetadata/v1/project/project-id",
            &[("host", "metadata"), ("metadata-flavor", "Google")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = s
        .request(
            "GET",
            "http://metadata.google.internal/computeMetadata/v1/project/project-id",
            &[("metadata-flavor", "Google")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn project_and_instance_values() {
    let s = server();
    let cases = [
        ("project/project-id", "my-project"),
        ("project/numeric-project-id", "123456789012"),
        ("instance/id", "0069c7a98e5f4bd2a9f0"),
        ("instance/zone", "projects/123456789012/zones/us-central1-1"),
        ("instance/region", "projects/123456789012/regions/us-central1"),
        ("instance/service-accounts/default/email", EMAIL),
        (&format!("instance/service-accounts/{EMAIL}/email"), EMAIL),
        ("instance/service-accounts/default/aliases", "default\n"),
        ("instance/service-accounts/default/scopes", "https://www.googleapis.com/auth/cloud-platform\n"),
        ("universe/universe-domain", "googleapis.com"),
    ];
    for (path, expected) in cases {
        let a = s.ok(&format!("{V1}/{path}")).await;
        assert_eq!(a.body, expected, "{path}");
        assert!(a.content_type().starts_with("text/plain"), "{path}");
    }
    // The email may come percent-encoded.
    let a = s.ok(&format!("{V1}/instance/service-accounts/{}/email", EMAIL.replace('@', "%40"))).await;
    assert_eq!(a.body, EMAIL);
}

#[tokio::test]
async fn alt_json_answers_json() {
    let s = server();
    assert_eq!(s.ok(&format!("{V1}/project/project-id?alt=json")).await.json(), json!("my-project"));
    assert_eq!(s.ok(&format!("{V1}/project/numeric-project-id?alt=json")).await.json(), json!(123456789012u64));
    assert_eq!(
        s.ok(&format!("{V1}/instance/service-accounts/default/scopes?alt=json")).await.json(),
        json!(["https://www.googleapis.com/auth/cloud-platform"])
    );
    assert_eq!(s.ok(&format!("{V1}/project/?alt=json")).await.json(), json!(["numeric-project-id", "project-id"]));
    assert_eq!(s.ok(&format!("{V1}/project/project-id?alt=text")).await.body, "my-project");
    assert_eq!(s.get(&format!("{V1}/project/project-id?alt=xml")).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn directories_answer_with_and_without_the_trailing_slash() {
    let s = server();
    let listings = [
        ("", "instance/\nproject/\nuniverse/\n"),
        ("/instance", "id\nregion\nservice-accounts/\nzone\n"),
        ("/project", "numeric-project-id\nproject-id\n"),
        ("/universe", "universe-domain\n"),
        ("/instance/service-accounts", &format!("default/\n{EMAIL}/\n")),
        ("/instance/service-accounts/default", "aliases\nemail\nidentity\nscopes\ntoken\n"),
        (&format!("/instance/service-accounts/{EMAIL}"), "aliases\nemail\nidentity\nscopes\ntoken\n"),
    ];
    for (dir, expected) in listings {
        for path in [format!("{V1}{dir}"), format!("{V1}{dir}/")] {
            let a = s.ok(&path).await;
            assert_eq!(a.body, expected, "{path}");
            assert!(a.content_type().starts_with("text/plain"));
        }
    }
    assert_eq!(s.ok("/computeMetadata/").await.body, "v1/\n");
    assert_eq!(s.ok("/computeMetadata").await.body, "v1/\n");
}

#[tokio::test]
async fn node_detection_gets_a_2xx_for_instance_without_slash() {
    let s = server();
    let a = s
        .request("GET", "/computeMetadata/v1/instance", &[("host", "169.254.169.254"), ("metadata-flavor", "Google")])
        .await;
    assert!(a.status.is_success());
}

#[tokio::test]
async fn service_accounts_recursive_is_json_aliases_email_scopes() {
    let s = server();
    let expected =
        json!({ "aliases": ["default"], "email": EMAIL, "scopes": ["https://www.googleapis.com/auth/cloud-platform"] });
    for path in [
        format!("{V1}/instance/service-accounts/default/?recursive=true"),
        format!("{V1}/instance/service-accounts/default?recursive=true"),
        format!("{V1}/instance/service-accounts/{EMAIL}/?recursive=true"),
        format!("{V1}/instance/service-accounts/default/?recursive=True&alt=json"),
    ] {
        assert_eq!(s.ok(&path).await.json(), expected, "{path}");
    }
    let all = s.ok(&format!("{V1}/instance/service-accounts/?recursive=true")).await.json();
    assert_eq!(all, json!({ "default": expected, EMAIL: expected }));
}

#[tokio::test]
async fn recursive_directories_use_camel_case_keys_but_keep_account_names() {
    let s = server();
    let instance = s.ok(&format!("{V1}/instance/?recursive=true")).await.json();
    assert_eq!(instance["zone"], "projects/123456789012/zones/us-central1-1");
    assert_eq!(instance["serviceAccounts"][EMAIL]["email"], EMAIL);
    assert!(instance["serviceAccounts"]["default"].get("token").is_none());
    let project = s.ok(&format!("{V1}/project/?recursive=true")).await.json();
    assert_eq!(project, json!({ "numericProjectId": 123456789012u64, "projectId": "my-project" }));
    let root = s.ok(&format!("{V1}/?recursive=true")).await.json();
    assert_eq!(root["universe"]["universeDomain"], "googleapis.com");
    let text = s.ok(&format!("{V1}/project/?recursive=true&alt=text")).await;
    assert_eq!(text.body, "numeric-project-id 123456789012\nproject-id my-project\n");
}

#[tokio::test]
async fn identity_needs_an_audience() {
    let s = server();
    for path in [
        format!("{V1}/instance/service-accounts/default/identity"),
        format!("{V1}/instance/service-accounts/default/identity?audience="),
        format!("{V1}/instance/service-accounts/default/identity?format=full"),
    ] {
        let a = s.get(&path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(a.body.contains("audience"));
    }
    let bad_format = s.get(&format!("{V1}/instance/service-accounts/default/identity?audience=x&format=huge")).await;
    assert_eq!(bad_format.status, StatusCode::BAD_REQUEST);
    let bad_licenses =
        s.get(&format!("{V1}/instance/service-accounts/default/identity?audience=x&format=full&licenses=maybe")).await;
    assert_eq!(bad_licenses.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn identity_is_a_bare_jwt_in_text() {
    let s = server();
    let a = s.ok(&format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}")).await;
    assert!(a.content_type().starts_with("text/plain"));
    assert_ne!(a.content_type(), "application/json");
    assert_eq!(a.body.split('.').count(), 3);
    assert!(!a.body.ends_with('\n'));
    let claims = s.verify(&a.body, AUDIENCE);
    assert_eq!(claims.sub, UNIQUE_ID);
    assert_eq!(claims.azp.as_deref(), Some(UNIQUE_ID));
    assert_eq!(claims.email.as_deref(), Some(EMAIL));
    assert!(claims.email_verified);
    assert_eq!(claims.exp, claims.iat + 3600);
    assert!(claims.google.is_none());
}

#[tokio::test]
async fn percent_encoded_and_raw_audiences_give_the_same_aud() {
    let s = server();
    let audience = "https://hello-123456789012.us-central1.run.app/path";
    let encoded = "https%3A%2F%2Fhello-123456789012.us-central1.run.app%2Fpath";
    // Python encodes; Node sends it raw.
    let python = s.ok(&format!("{V1}/instance/service-accounts/default/identity?audience={encoded}&format=full")).await;
    let node = s.ok(&format!("{V1}/instance/service-accounts/{EMAIL}/identity?format=full&audience={audience}")).await;
    assert_eq!(payload_of(&python.body)["aud"], audience);
    assert_eq!(payload_of(&node.body)["aud"], audience);
    s.verify(&python.body, audience);
    s.verify(&node.body, audience);
}

#[tokio::test]
async fn format_full_adds_the_google_claim() {
    let s = server();
    let standard =
        s.ok(&format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}&format=standard")).await;
    assert!(payload_of(&standard.body).get("google").is_none());
    let full = s.ok(&format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}&format=full")).await;
    assert_eq!(
        payload_of(&full.body)["google"],
        json!({ "compute_engine": {
            "instance_creation_timestamp": NOW - 60, "instance_id": "0069c7a98e5f4bd2a9f0",
            "instance_name": "hello-00001-xyz", "project_id": "my-project",
            "project_number": 123456789012u64, "zone": "us-central1-1",
        }})
    );
    let licensed = s
        .ok(&format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}&format=full&licenses=TRUE"))
        .await;
    assert_eq!(payload_of(&licensed.body)["google"]["compute_engine"]["license_id"], json!([]));
    let unlicensed = s
        .ok(&format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}&format=full&licenses=FALSE"))
        .await;
    assert!(payload_of(&unlicensed.body)["google"]["compute_engine"].get("license_id").is_none());
}

#[tokio::test]
async fn identity_tokens_are_cached_until_close_to_expiry() {
    let s = server();
    let path = format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}");
    let first = s.ok(&path).await.body;
    s.clock.store(NOW + 1000, Ordering::SeqCst);
    assert_eq!(s.ok(&path).await.body, first);
    s.clock.store(NOW + 3600 - 200, Ordering::SeqCst);
    let renewed = s.ok(&path).await.body;
    assert_ne!(renewed, first);
    assert_eq!(payload_of(&renewed)["iat"], NOW + 3600 - 200);
}

#[tokio::test]
async fn token_answers_an_access_token_in_json() {
    let s = server();
    let a = s.ok(&format!("{V1}/instance/service-accounts/default/token")).await;
    let body = a.json();
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(fields, vec!["access_token", "expires_in", "token_type"]);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    assert!(token.starts_with("ya29."));
    let info = s.minter.access_token_principal(token, NOW).unwrap();
    assert_eq!(info.unique_id, UNIQUE_ID);
    assert_eq!(info.scopes, vec!["https://www.googleapis.com/auth/cloud-platform"]);

    s.clock.store(NOW + 100, Ordering::SeqCst);
    let again = s.ok(&format!("{V1}/instance/service-accounts/{EMAIL}/token")).await.json();
    assert_eq!(again["access_token"], token);
    assert_eq!(again["expires_in"], 3500, "expires_in counts down");

    let scoped = s
        .ok(&format!(
            "{V1}/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/userinfo.email,openid"
        ))
        .await
        .json();
    let info = s.minter.access_token_principal(scoped["access_token"].as_str().unwrap(), NOW + 100).unwrap();
    assert_eq!(info.scopes, vec!["https://www.googleapis.com/auth/userinfo.email", "openid"]);
    // The access token is refused where an ID token is needed.
    let r = verify_id_token(token, &s.keys.key_set(), ISSUER, &audiences(), NOW, SKEW).unwrap_err();
    assert_eq!(r.reason, Reason::TokenAccessTokenNotIdToken);
}

#[tokio::test]
async fn another_account_in_the_path_is_not_found() {
    let s = server();
    for path in [
        "instance/service-accounts/other@my-project.iam.gserviceaccount.com/identity?audience=x",
        "instance/service-accounts/other@my-project.iam.gserviceaccount.com/token",
        "instance/service-accounts/other@my-project.iam.gserviceaccount.com/",
        "instance/service-accounts/123456789012-compute@developer.gserviceaccount.com/email",
    ] {
        let a = s.get(&format!("{V1}/{path}")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.body.contains(EMAIL), "{}", a.body);
    }
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let s = server();
    for path in [
        "/nothing",
        "/computeMetadataX/v1/project/project-id",
        "/computeMetadata/v2/project/project-id",
        "/computeMetadata/v1/project/project-id/more",
        "/computeMetadata/v1/instance/hostname",
        "/computeMetadata/v1/instance/service-accounts/default/identity/?audience=x",
        "/computeMetadata/v1/instance/service-accounts/default/unknown",
    ] {
        let a = s.get(path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.content_type().starts_with("text/plain"));
    }
}

#[tokio::test]
async fn a_disabled_account_gets_403_and_a_deleted_one_404() {
    let s = server();
    let identity = format!("{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}");
    let token = format!("{V1}/instance/service-accounts/default/token");
    s.ok(&identity).await;
    s.ok(&token).await;

    s.store.0.lock().unwrap().as_mut().unwrap().disabled = true;
    for path in [&identity, &token] {
        let a = s.get(path).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            a.body.contains("disabled") && a.body.contains("principal.disabled") && a.body.contains(EMAIL),
            "{}",
            a.body
        );
    }
    // Static facts stay readable.
    assert_eq!(s.ok(&format!("{V1}/instance/service-accounts/default/email")).await.body, EMAIL);

    *s.store.0.lock().unwrap() = None;
    for path in [&identity, &token] {
        let a = s.get(path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.body.contains("principal.deleted"), "{}", a.body);
    }
    // Deleted and re-created under the same email: another unique id, another principal.
    let mut recreated = stored_account();
    recreated.unique_id = "999999999999999999999".into();
    *s.store.0.lock().unwrap() = Some(recreated);
    assert_eq!(s.get(&identity).await.status, StatusCode::NOT_FOUND);

    *s.store.0.lock().unwrap() = Some(stored_account());
    s.ok(&identity).await;
}

#[tokio::test]
async fn only_get_is_answered() {
    let s = server();
    let a = s
        .request(
            "POST",
            &format!("{V1}/instance/service-accounts/default/token"),
            &[("host", "metadata"), ("metadata-flavor", "Google")],
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = s
        .request("HEAD", &format!("{V1}/project/project-id"), &[("host", "metadata"), ("metadata-flavor", "Google")])
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn python_fetch_id_token_flow() {
    // google.oauth2.id_token.fetch_id_token → compute_engine.IDTokenCredentials, step by step.
    let s = server();
    let ping = s.request("GET", "/", &[("host", "169.254.169.254"), ("metadata-flavor", "Google")]).await;
    assert_eq!(ping.status, StatusCode::OK);
    let info = s.ok(&format!("{V1}/instance/service-accounts/default/?recursive=true")).await.json();
    let email = info["email"].as_str().unwrap();
    assert_eq!(email, EMAIL);
    let url = format!(
        "{V1}/instance/service-accounts/default/identity?audience={}&format=full",
        AUDIENCE.replace(':', "%3A").replace('/', "%2F")
    );
    let token = s.ok(&url).await;
    assert!(token.content_type() != "application/json");
    let claims = s.verify(&token.body, AUDIENCE);
    assert_eq!(claims.email.as_deref(), Some(email));
}
