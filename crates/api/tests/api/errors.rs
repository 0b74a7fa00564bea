//! Every failure comes back as `{"error":{"code","message","status"}}`, whatever went wrong.

use axum::http::Method;
use serde_json::json;

use crate::harness::{Api, account, email, project, service, service_body, services};

/// A request sent as raw text, with or without the owner's credential, and the refusal it must get.
struct Raw {
    what: &'static str,
    authenticated: bool,
    method: Method,
    path: String,
    body: Option<&'static str>,
    want: (u16, &'static str, &'static str),
}

fn raw(what: &'static str, method: Method, path: impl Into<String>, body: Option<&'static str>) -> Raw {
    Raw { what, authenticated: true, method, path: path.into(), body, want: (0, "", "") }
}

impl Raw {
    fn anonymous(self) -> Self {
        Raw { authenticated: false, ..self }
    }

    fn expect(self, code: u16, status: &'static str, fragment: &'static str) -> Self {
        Raw { want: (code, status, fragment), ..self }
    }
}

#[tokio::test]
async fn errors_are_always_google_json() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    let auth = format!("Bearer {}", api.owner);
    let create = format!("{}?serviceId=svc", services("local1"));
    let svc = service("local1", "receiver");
    let not_json = "the request body is not valid JSON for this method";
    let cases = vec![
        raw("unknown path", Method::GET, "/v3/nothing", None).expect(
            404,
            "NOT_FOUND",
            "there is no API method at GET /v3/nothing",
        ),
        raw("unknown path, no credential", Method::POST, "/nothing/here", None).anonymous().expect(
            404,
            "NOT_FOUND",
            "there is no API method at POST /nothing/here",
        ),
        raw("unknown verb", Method::POST, format!("{svc}:frobnicate"), Some("{}")).expect(
            404,
            "NOT_FOUND",
            "`:frobnicate` is not a method runnel offers here",
        ),
        raw("POST without verb", Method::POST, svc.clone(), Some("{}")).expect(
            404,
            "NOT_FOUND",
            "POST on a service needs a method such as `:setIamPolicy`",
        ),
        raw("GET of a POST-only verb", Method::GET, format!("{}:disable", account(&email("caller"))), None).expect(
            404,
            "NOT_FOUND",
            "`:disable` is not a method",
        ),
        raw("malformed JSON", Method::POST, create.clone(), Some("{\"template\": ")).expect(
            400,
            "INVALID_ARGUMENT",
            not_json,
        ),
        raw("JSON of the wrong shape", Method::POST, create.clone(), Some("{\"template\": 5}")).expect(
            400,
            "INVALID_ARGUMENT",
            not_json,
        ),
        raw("not JSON at all", Method::POST, format!("{svc}:setIamPolicy"), Some("policy=1")).expect(
            400,
            "INVALID_ARGUMENT",
            not_json,
        ),
        raw("another project", Method::GET, "/v2/projects/other-project/locations/local1/services", None).expect(
            404,
            "NOT_FOUND",
            "project `other-project` is not served by this runnel; it serves project `test-project`",
        ),
        raw("missing service", Method::GET, service("local1", "ghost"), None).expect(
            404,
            "NOT_FOUND",
            "service `ghost` does not exist in region `local1`",
        ),
        raw("missing credential", Method::GET, project(), None).anonymous().expect(
            401,
            "UNAUTHENTICATED",
            "the request has no credential",
        ),
    ];
    for c in cases {
        let authorization = c.authenticated.then_some(auth.as_str());
        let reply = api.send(authorization, c.method, &c.path, c.body).await;
        let reply = crate::harness::Reply { request: format!("[{}] {}", c.what, reply.request), ..reply };
        let (code, status, fragment) = c.want;
        reply.refused(code, status, fragment);
    }
    // None of the bad bodies created anything.
    assert_eq!(api.get(&api.owner, &services("local1")).await.ok()["services"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_method_the_path_lacks_is_a_json_error() {
    let api = Api::new().await;
    api.deploy("local1", "receiver", json!({})).await;
    let body = service_body(json!({}));
    api.call(&api.owner, Method::PUT, &service("local1", "receiver"), Some(&body)).await.is_json_error(405);
    api.call(&api.owner, Method::DELETE, &project(), None).await.is_json_error(405);
}

#[tokio::test]
async fn extractor_rejections_are_json_errors() {
    let api = Api::new().await;
    api.get(&api.owner, "/v2/projects/%ff/locations/local1/services").await.is_json_error(400);
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let auth = format!("Bearer {}", api.owner);
    let create = format!("{}?serviceId=big", services("local1"));
    api.send(Some(&auth), Method::POST, &create, Some(&huge)).await.is_json_error(413);
}

/// Google APIs refuse a field they do not know (`Invalid JSON payload received. Unknown name`);
/// silently dropping one turns a typo into a different deployment, here a public service.
#[tokio::test]
async fn unknown_fields_are_refused() {
    let api = Api::new().await;
    let typo = service_body(json!({"ingres": "INGRESS_TRAFFIC_INTERNAL_ONLY"}));
    let reply = api.create_service(&api.owner, "local1", "typo", &typo).await;
    reply.refused(400, "INVALID_ARGUMENT", "ingres");
}
