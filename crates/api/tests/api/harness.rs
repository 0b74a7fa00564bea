//! Drives the control-plane router in memory: one fresh project per test, requests sent with
//! `oneshot`, answers read as JSON, and refusals checked for their code, status and message.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const PROJECT: &str = "test-project";
pub const OWNER: &str = "user:owner@example.com";
pub const ALICE: &str = "user:alice@example.com";

/// A project served from an in-memory store, and its owner's credential.
pub struct Api {
    app: Router,
    /// The control plane behind the router, for what the daemon asks it directly.
    pub cp: Arc<runnel_api::ControlPlane>,
    pub owner: String,
    pub number: String,
}

/// One answer: the status, and the body both as text and (when it parses) as JSON.
#[derive(Debug)]
pub struct Reply {
    pub request: String,
    pub code: StatusCode,
    pub content_type: String,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.code, StatusCode::OK, "{}: expected 200, got {}", self.request, self.text);
        self.body
    }

    /// Asserts a refusal in Google's error shape: the HTTP code, the same code in the body,
    /// the canonical status, and a message containing `fragment`.
    #[track_caller]
    pub fn refused(&self, code: u16, status: &str, fragment: impl AsRef<str>) {
        let fragment = fragment.as_ref();
        let ctx = format!("{} (expected {code} {status} with `{fragment}`)", self.request);
        assert_eq!(self.code.as_u16(), code, "{ctx}: status line; body {}", self.text);
        assert!(self.content_type.starts_with("application/json"), "{ctx}: content type `{}`", self.content_type);
        let error = self.body.get("error").and_then(Value::as_object);
        let Some(error) = error else { panic!("{ctx}: the body is not {{\"error\":{{…}}}}: {}", self.text) };
        let mut keys: Vec<&str> = error.keys().map(String::as_str).filter(|k| *k != "details").collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message", "status"], "{ctx}: error fields");
        assert_eq!(error["code"], json!(code), "{ctx}: error.code");
        assert_eq!(error["status"], json!(status), "{ctx}: error.status; message {}", error["message"]);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{ctx}: error.message is `{message}`");
    }

    /// [`Reply::refused`], and the refusal names its decision's reason in an `ErrorInfo` detail.
    #[track_caller]
    pub fn refused_for(&self, code: u16, status: &str, reason: runnel_policy::Reason) {
        self.refused(code, status, format!("({reason})"));
        let details = &self.body["error"]["details"];
        assert_eq!(
            details,
            &json!([{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason.code(), "domain": "runnel" }]),
            "{}: error.details",
            self.request
        );
    }

    /// Asserts only the shape of an error: the HTTP code, the same code in the body, and a
    /// non-empty status and message, for failures whose canonical status is not settled.
    #[track_caller]
    pub fn is_json_error(&self, code: u16) {
        let ctx = format!("{} (expected a {code} JSON error)", self.request);
        assert_eq!(self.code.as_u16(), code, "{ctx}: status line; body {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "{ctx}: content type `{}`, body `{}`",
            self.content_type,
            self.text
        );
        let error = &self.body["error"];
        assert_eq!(error["code"], json!(code), "{ctx}: {}", self.text);
        assert!(error["status"].as_str().is_some_and(|s| !s.is_empty()), "{ctx}: {}", self.text);
        assert!(error["message"].as_str().is_some_and(|s| !s.is_empty()), "{ctx}: {}", self.text);
    }
}

/// A row of a refusal table: a request and the refusal it must get.
pub struct Refusal {
    pub what: &'static str,
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub code: u16,
    pub status: &'static str,
    pub fragment: String,
}

impl Refusal {
    pub fn new(what: &'static str, method: Method, path: impl Into<String>, body: Option<Value>) -> Self {
        Self { what, method, path: path.into(), body, code: 0, status: "", fragment: String::new() }
    }

    pub fn expect(mut self, code: u16, status: &'static str, fragment: impl Into<String>) -> Self {
        self.code = code;
        self.status = status;
        self.fragment = fragment.into();
        self
    }
}

impl Api {
    pub async fn new() -> Api {
        Self::with_plane(|cp| cp).await
    }

    /// A project whose control plane `daemon` first gives what a daemon would (token issuer,
    /// operator proxies).
    pub async fn with_plane(daemon: impl FnOnce(runnel_api::ControlPlane) -> runnel_api::ControlPlane) -> Api {
        let store = Arc::new(runnel_store::RedbStore::in_memory().unwrap());
        let owner = runnel_api::new_secret();
        let cp = runnel_api::bootstrap(
            store,
            &runnel_api::Bootstrap { project_id: PROJECT.into(), owner: OWNER.into(), owner_secret: owner.clone() },
            runnel_api::Settings { url_suffix: "run.localhost:7781".into(), default_region: "local1".into() },
        )
        .unwrap();
        let cp = Arc::new(daemon(cp));
        let mut api = Api { app: runnel_api::app(cp.clone()), cp, owner, number: String::new() };
        let project = api.get(&api.owner, &format!("/v1/projects/{PROJECT}")).await.ok();
        api.number = project["projectNumber"].as_str().unwrap().to_string();
        assert_eq!(api.number.len(), 12, "project number {project}");
        api
    }

    /// The default compute service account, which revisions run as when they name none.
    pub fn default_sa(&self) -> String {
        format!("{}-compute@developer.gserviceaccount.com", self.number)
    }

    /// Sends a request with exactly this `Authorization` header (or none) and raw body.
    pub async fn send(&self, authorization: Option<&str>, method: Method, path: &str, body: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method.clone()).uri(path);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let code = resp.status();
        let content_type =
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { request: format!("{method} {path}"), code, content_type, text, body }
    }

    /// Sends a request as the holder of credential `secret`.
    pub async fn call(&self, secret: &str, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let text = body.map(Value::to_string);
        self.send(Some(&format!("Bearer {secret}")), method, path, text.as_deref()).await
    }

    pub async fn get(&self, secret: &str, path: &str) -> Reply {
        self.call(secret, Method::GET, path, None).await
    }

    pub async fn post(&self, secret: &str, path: &str, body: &Value) -> Reply {
        self.call(secret, Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, secret: &str, path: &str, body: &Value) -> Reply {
        self.call(secret, Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, secret: &str, path: &str) -> Reply {
        self.call(secret, Method::DELETE, path, None).await
    }

    /// Sends every row of a refusal table as `secret` and checks each answer.
    pub async fn check_refusals(&self, secret: &str, cases: &[Refusal]) {
        for c in cases {
            let reply = self.call(secret, c.method.clone(), &c.path, c.body.as_ref()).await;
            let reply = Reply { request: format!("[{}] {}", c.what, reply.request), ..reply };
            reply.refused(c.code, c.status, &c.fragment);
        }
    }

    // ---- setup shortcuts, all as the owner unless a secret is passed ---------------------------

    /// Issues a credential for `member`; returns its secret and its id (last segment of `name`).
    pub async fn credential(&self, member: &str) -> (String, String) {
        let c = self.post(&self.owner, &credentials(), &json!({ "member": member })).await.ok();
        assert_eq!(c["member"], json!(member), "{c}");
        let secret = c["secret"].as_str().unwrap().to_string();
        let id = c["name"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        (secret, id)
    }

    /// Adds `member` to `role` on the policy of the resource at `base` (a project, service or
    /// service account path), by read-modify-write with the etag.
    pub async fn grant(&self, base: &str, member: &str, role: &str) -> Value {
        self.grant_as(&self.owner, base, member, role).await
    }

    /// [`Api::grant`] as the holder of `secret`.
    pub async fn grant_as(&self, secret: &str, base: &str, member: &str, role: &str) -> Value {
        let mut policy = self.post(secret, &format!("{base}:getIamPolicy"), &json!({})).await.ok();
        add_member(&mut policy, role, member);
        self.post(secret, &format!("{base}:setIamPolicy"), &json!({ "policy": policy })).await.ok()
    }

    /// Creates a service as `secret`.
    pub async fn create_service(&self, secret: &str, region: &str, id: &str, body: &Value) -> Reply {
        self.post(secret, &format!("{}?serviceId={id}", services(region)), body).await
    }

    /// Creates a service as the owner and returns the created service.
    pub async fn deploy(&self, region: &str, id: &str, patch: Value) -> Value {
        let op = self.create_service(&self.owner, region, id, &service_body(patch)).await.ok();
        assert_eq!(op["done"], json!(true), "{op}");
        op["response"].clone()
    }

    pub async fn create_account(&self, id: &str) -> Value {
        let body = json!({"accountId": id, "serviceAccount": {"displayName": format!("The {id} account")}});
        self.post(&self.owner, &accounts(), &body).await.ok()
    }

    /// Network `vpc`, subnet `sub` (10.0.0.0/24 in local1) and connector `conn` (10.8.0.0/28).
    pub async fn network_setup(&self) {
        self.post(&self.owner, &networks(), &json!({"name": "vpc"})).await.ok();
        let sub = json!({"name": "sub", "network": "vpc", "ipCidrRange": "10.0.0.0/24"});
        self.post(&self.owner, &subnets("local1"), &sub).await.ok();
        let conn = json!({"network": "vpc", "ipCidrRange": "10.8.0.0/28"});
        self.post(&self.owner, &format!("{}?connectorId=conn", connectors("local1")), &conn).await.ok();
    }
}

/// Adds `member` to `role` in a policy as read from `:getIamPolicy`.
pub fn add_member(policy: &mut Value, role: &str, member: &str) {
    if policy.get("bindings").is_none() {
        policy["bindings"] = json!([]);
    }
    let bindings = policy["bindings"].as_array_mut().unwrap();
    match bindings.iter_mut().find(|b| b["role"] == json!(role)) {
        Some(b) => b["members"].as_array_mut().unwrap().push(json!(member)),
        None => bindings.push(json!({"role": role, "members": [member]})),
    }
}

/// The members bound to `role` in a policy.
pub fn members(policy: &Value, role: &str) -> Vec<String> {
    policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == json!(role))
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

/// `base` with the objects of `patch` merged in, recursively; other values replace.
pub fn merge(mut base: Value, patch: Value) -> Value {
    match (&mut base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                let old = b.remove(&k).unwrap_or(Value::Null);
                b.insert(k, merge(old, v));
            }
            base
        }
        (_, p) => p,
    }
}

/// A minimal valid service, with `patch` merged in.
pub fn service_body(patch: Value) -> Value {
    merge(json!({"template": {"containers": [{"command": ["python3"], "args": ["app.py"]}]}}), patch)
}

pub fn services(region: &str) -> String {
    format!("/v2/projects/{PROJECT}/locations/{region}/services")
}

pub fn service(region: &str, name: &str) -> String {
    format!("{}/{name}", services(region))
}

pub fn accounts() -> String {
    format!("/v1/projects/{PROJECT}/serviceAccounts")
}

pub fn account(email: &str) -> String {
    format!("{}/{email}", accounts())
}

pub fn email(account_id: &str) -> String {
    format!("{account_id}@{PROJECT}.iam.gserviceaccount.com")
}

pub fn project() -> String {
    format!("/v1/projects/{PROJECT}")
}

pub fn networks() -> String {
    format!("/compute/v1/projects/{PROJECT}/global/networks")
}

pub fn subnets(region: &str) -> String {
    format!("/compute/v1/projects/{PROJECT}/regions/{region}/subnetworks")
}

pub fn connectors(region: &str) -> String {
    format!("/v1/projects/{PROJECT}/locations/{region}/connectors")
}

pub fn credentials() -> String {
    format!("/runnel/v1/projects/{PROJECT}/credentials")
}

/// The last segment of a resource name.
pub fn short(name: &Value) -> String {
    name.as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string()
}
