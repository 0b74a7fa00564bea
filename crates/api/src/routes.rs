//! HTTP routing: paths to control-plane methods.
//!
//! Google APIs put custom methods after a colon in the last path segment
//! (`services/NAME:getIamPolicy`); the router captures the whole segment and [`split_verb`]
//! separates the name from the method.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::plane::ControlPlane;
use crate::policy::{SetIamPolicyRequest, TestIamPermissionsRequest};
use runnel_policy::iam::Principal;

type Cp = State<Arc<ControlPlane>>;
type Q = Query<HashMap<String, String>>;

/// The control-plane API as a router, so tests can drive it without a socket.
pub fn app(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v2/projects/{p}/locations/{l}/services", get(list_services).post(create_service))
        .route(
            "/v2/projects/{p}/locations/{l}/services/{s}",
            get(service_get).patch(service_patch).delete(service_delete).post(service_post),
        )
        .route("/v2/projects/{p}/locations/{l}/services/{s}/revisions", get(list_revisions))
        .route("/v2/projects/{p}/locations/{l}/services/{s}/revisions/{r}", get(get_revision))
        .route("/v1/projects/{p}", get(project_get).post(project_post))
        .route("/v1/projects/{p}/serviceAccounts", get(list_accounts).post(create_account))
        .route(
            "/v1/projects/{p}/serviceAccounts/{a}",
            get(account_get).patch(account_patch).delete(account_delete).post(account_post),
        )
        .route("/v1/projects/{p}/locations/{l}/connectors", get(list_connectors).post(create_connector))
        .route("/v1/projects/{p}/locations/{l}/connectors/{c}", get(get_connector).delete(delete_connector))
        .route("/compute/v1/projects/{p}/global/networks", get(list_networks).post(create_network))
        .route("/compute/v1/projects/{p}/global/networks/{n}", get(get_network).delete(delete_network))
        .route("/compute/v1/projects/{p}/regions/{r}/subnetworks", get(list_subnets).post(create_subnet))
        .route("/compute/v1/projects/{p}/regions/{r}/subnetworks/{s}", get(get_subnet).delete(delete_subnet))
        .route("/compute/v1/projects/{p}/regions/{r}/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/compute/v1/projects/{p}/regions/{r}/endpoints/{e}", get(get_endpoint).delete(delete_endpoint))
        .route("/runnel/v1/projects/{p}/locations/{l}/services/{s}/logs", get(read_logs))
        .route("/runnel/v1/projects/{p}/refusals", get(read_refusals))
        .route("/runnel/v1/projects/{p}/locations/{l}/troubleshoot/call", axum::routing::post(troubleshoot_call))
        .route("/runnel/v1/projects/{p}/troubleshoot/requests/{id}", get(troubleshoot_request))
        .route("/runnel/v1/projects/{p}/idToken", axum::routing::post(user_id_token))
        .route("/runnel/v1/projects/{p}/accessToken", axum::routing::post(crate::tokens::own_access_token))
        .route("/runnel/v1/projects/{p}/locations/{l}/services/{s}", axum::routing::post(crate::operator::proxy))
        .route("/runnel/v1/projects/{p}/credentials", get(list_credentials).post(create_credential))
        .route("/runnel/v1/projects/{p}/credentials/{c}", axum::routing::delete(delete_credential))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::not_found(format!(
                "there is no API method at {method} {}; the runnel CLI lists what it can do with `runnel --help`",
                uri.path()
            ))
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::from_status(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not accept {method}; see docs/api.md for the methods of each path", uri.path()),
            )
        })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(cp)
}

/// Some refusals come from axum itself before a handler runs (an undecodable path, a body over
/// the size limit); they are rewritten into the API's JSON error shape like every other error.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    ApiError::from_status(status, message).into_response()
}

/// Runs a control-plane method off the async threads: store commits wait for the disk.
pub(crate) async fn run<T: Send + 'static>(
    cp: Arc<ControlPlane>,
    f: impl FnOnce(&ControlPlane) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || f(&cp)).await.map_err(ApiError::internal)?
}

pub(crate) fn json<T: Serialize>(r: ApiResult<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses a JSON body; an empty body reads as the type's default where one makes sense.
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON for this method: {e}")))
}

/// `name:verb` → (`name`, `verb`).
fn split_verb(segment: &str) -> (&str, Option<&str>) {
    match segment.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (segment, None),
    }
}

pub(crate) fn unknown_verb(verb: &str) -> ApiError {
    if verb.is_empty() {
        return ApiError::not_found("this path needs a method after a colon, such as `:getIamPolicy`");
    }
    ApiError::not_found(format!("`:{verb}` is not a method runnel offers here"))
}

/// A resource that carries an IAM policy.
enum IamResource {
    Project { project: String },
    Service { project: String, region: String, name: String },
    Account { project: String, account: String },
}

/// The three IAM methods every resource with a policy offers, in one place.
async fn iam_verb(cp: Arc<ControlPlane>, who: Principal, target: IamResource, verb: &str, b: &Bytes) -> Response {
    match verb {
        "getIamPolicy" => json(
            run(cp, move |cp| match &target {
                IamResource::Project { project } => cp.get_project_policy(&who, project),
                IamResource::Service { project, region, name } => cp.get_service_policy(&who, project, region, name),
                IamResource::Account { project, account } => cp.get_account_policy(&who, project, account),
            })
            .await,
        ),
        "setIamPolicy" => json(
            async {
                let req: SetIamPolicyRequest = body(b)?;
                run(cp, move |cp| match &target {
                    IamResource::Project { project } => cp.set_project_policy(&who, project, &req.policy),
                    IamResource::Service { project, region, name } => {
                        cp.set_service_policy(&who, project, region, name, &req.policy)
                    }
                    IamResource::Account { project, account } => {
                        cp.set_account_policy(&who, project, account, &req.policy)
                    }
                })
                .await
            }
            .await,
        ),
        "testIamPermissions" => json(
            async {
                let req: TestIamPermissionsRequest = body(b)?;
                run(cp, move |cp| match &target {
                    IamResource::Project { project } => cp.test_project_permissions(&who, project, &req.permissions),
                    IamResource::Service { project, region, name } => {
                        cp.test_service_permissions(&who, project, region, name, &req.permissions)
                    }
                    IamResource::Account { project, account } => {
                        cp.test_account_permissions(&who, project, account, &req.permissions)
                    }
                })
                .await
            }
            .await,
        ),
        other => unknown_verb(other).into_response(),
    }
}

// ---- Cloud Run services ---------------------------------------------------------------------

async fn list_services(State(cp): Cp, Caller(who): Caller, Path((p, l)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.list_services(&who, &p, &l)).await)
}

async fn create_service(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l)): Path<(String, String)>,
    Query(q): Q,
    b: Bytes,
) -> Response {
    json(
        async {
            let svc = body(&b)?;
            let id = q.get("serviceId").cloned().unwrap_or_default();
            run(cp, move |cp| cp.create_service(&who, &p, &l, &id, svc)).await
        }
        .await,
    )
}

async fn service_get(State(cp): Cp, Caller(who): Caller, Path((p, l, s)): Path<(String, String, String)>) -> Response {
    match split_verb(&s) {
        (name, None) => {
            let name = name.to_string();
            json(run(cp, move |cp| cp.get_service(&who, &p, &l, &name)).await)
        }
        (name, Some("getIamPolicy")) => {
            let name = name.to_string();
            json(run(cp, move |cp| cp.get_service_policy(&who, &p, &l, &name)).await)
        }
        (_, Some(v)) => unknown_verb(v).into_response(),
    }
}

async fn service_patch(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s)): Path<(String, String, String)>,
    Query(q): Q,
    b: Bytes,
) -> Response {
    json(
        async {
            let svc = body(&b)?;
            let allow_missing = q.get("allowMissing").is_some_and(|v| v == "true");
            run(cp, move |cp| cp.update_service(&who, &p, &l, &s, svc, allow_missing)).await
        }
        .await,
    )
}

async fn service_delete(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.delete_service(&who, &p, &l, &s)).await)
}

async fn service_post(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s)): Path<(String, String, String)>,
    b: Bytes,
) -> Response {
    let (name, verb) = split_verb(&s);
    let target = IamResource::Service { project: p.clone(), region: l.clone(), name: name.to_string() };
    match verb {
        Some(v) => iam_verb(cp, who, target, v, &b).await,
        None => ApiError::not_found(
            "POST on a service needs a method such as `:setIamPolicy`; to change a service use PATCH",
        )
        .into_response(),
    }
}

async fn list_revisions(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.list_revisions(&who, &p, &l, &s)).await)
}

async fn get_revision(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s, r)): Path<(String, String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.get_revision(&who, &p, &l, &s, &r)).await)
}

// ---- projects ---------------------------------------------------------------------------------

async fn project_get(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>) -> Response {
    match split_verb(&p) {
        (p, None) => {
            let p = p.to_string();
            json(run(cp, move |cp| cp.get_project(&who, &p)).await)
        }
        (_, Some(v)) => unknown_verb(v).into_response(),
    }
}

async fn project_post(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, b: Bytes) -> Response {
    let (p, verb) = split_verb(&p);
    let target = IamResource::Project { project: p.to_string() };
    iam_verb(cp, who, target, verb.unwrap_or_default(), &b).await
}

// ---- service accounts -----------------------------------------------------------------------

async fn list_accounts(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>) -> Response {
    json(run(cp, move |cp| cp.list_accounts(&who, &p)).await)
}

async fn create_account(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, b: Bytes) -> Response {
    json(
        async {
            let req = body(&b)?;
            run(cp, move |cp| cp.create_account(&who, &p, req)).await
        }
        .await,
    )
}

async fn account_get(State(cp): Cp, Caller(who): Caller, Path((p, a)): Path<(String, String)>) -> Response {
    match split_verb(&a) {
        (a, None) => {
            let a = a.to_string();
            json(run(cp, move |cp| cp.get_account(&who, &p, &a)).await)
        }
        (_, Some(v)) => unknown_verb(v).into_response(),
    }
}

async fn account_patch(State(cp): Cp, Caller(who): Caller, Path((p, a)): Path<(String, String)>, b: Bytes) -> Response {
    json(
        async {
            let req = body(&b)?;
            run(cp, move |cp| cp.patch_account(&who, &p, &a, req)).await
        }
        .await,
    )
}

async fn account_delete(State(cp): Cp, Caller(who): Caller, Path((p, a)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.delete_account(&who, &p, &a)).await)
}

async fn account_post(State(cp): Cp, Caller(who): Caller, Path((p, a)): Path<(String, String)>, b: Bytes) -> Response {
    let (a, verb) = split_verb(&a);
    let a = a.to_string();
    match verb {
        Some("disable") => json(run(cp, move |cp| cp.set_account_disabled(&who, &p, &a, true)).await),
        Some("generateIdToken") => json(
            async {
                let req: IdTokenRequest = body(&b)?;
                run(cp, move |cp| cp.generate_account_id_token(&who, &p, &a, &req.audience)).await
            }
            .await,
        ),
        Some("enable") => json(run(cp, move |cp| cp.set_account_disabled(&who, &p, &a, false)).await),
        Some("generateAccessToken") => crate::tokens::account_access_token(cp, who, p, a, b).await,
        verb => iam_verb(cp, who, IamResource::Account { project: p, account: a }, verb.unwrap_or_default(), &b).await,
    }
}

// ---- connectors -------------------------------------------------------------------------------

async fn list_connectors(State(cp): Cp, Caller(who): Caller, Path((p, l)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.list_connectors(&who, &p, &l)).await)
}

async fn create_connector(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l)): Path<(String, String)>,
    Query(q): Q,
    b: Bytes,
) -> Response {
    json(
        async {
            let c = body(&b)?;
            let id = q.get("connectorId").cloned().unwrap_or_default();
            run(cp, move |cp| cp.create_connector(&who, &p, &l, &id, c)).await
        }
        .await,
    )
}

async fn get_connector(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, c)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.get_connector(&who, &p, &l, &c)).await)
}

async fn delete_connector(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, c)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.delete_connector(&who, &p, &l, &c)).await)
}

// ---- networks and subnets ---------------------------------------------------------------------

async fn list_networks(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>) -> Response {
    json(run(cp, move |cp| cp.list_networks(&who, &p)).await)
}

async fn create_network(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, b: Bytes) -> Response {
    json(
        async {
            let n = body(&b)?;
            run(cp, move |cp| cp.create_network(&who, &p, n)).await
        }
        .await,
    )
}

async fn get_network(State(cp): Cp, Caller(who): Caller, Path((p, n)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.get_network(&who, &p, &n)).await)
}

async fn delete_network(State(cp): Cp, Caller(who): Caller, Path((p, n)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.delete_network(&who, &p, &n)).await)
}

async fn list_subnets(State(cp): Cp, Caller(who): Caller, Path((p, r)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.list_subnets(&who, &p, &r)).await)
}

async fn create_subnet(State(cp): Cp, Caller(who): Caller, Path((p, r)): Path<(String, String)>, b: Bytes) -> Response {
    json(
        async {
            let s = body(&b)?;
            run(cp, move |cp| cp.create_subnet(&who, &p, &r, s)).await
        }
        .await,
    )
}

async fn get_subnet(State(cp): Cp, Caller(who): Caller, Path((p, r, s)): Path<(String, String, String)>) -> Response {
    json(run(cp, move |cp| cp.get_subnet(&who, &p, &r, &s)).await)
}

async fn delete_subnet(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, r, s)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.delete_subnet(&who, &p, &r, &s)).await)
}

/// The body of `generateIdToken`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdTokenRequest {
    #[serde(default)]
    audience: String,
    #[serde(default, rename = "includeEmail")]
    _include_email: Option<bool>,
}

async fn user_id_token(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, b: Bytes) -> Response {
    json(
        async {
            let req: IdTokenRequest = body(&b)?;
            run(cp, move |cp| cp.generate_user_id_token(&who, &p, &req.audience)).await
        }
        .await,
    )
}

async fn read_refusals(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, Query(q): Q) -> Response {
    let limit = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
    json(run(cp, move |cp| cp.read_refusals(&who, &p, limit)).await)
}

async fn troubleshoot_call(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let question: crate::CallQuestion = match body(&bytes) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    json(run(cp, move |cp| cp.troubleshoot_call(&who, &p, &l, &question)).await)
}

async fn troubleshoot_request(State(cp): Cp, Caller(who): Caller, Path((p, id)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.troubleshoot_request(&who, &p, &id)).await)
}

async fn read_logs(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, l, s)): Path<(String, String, String)>,
    Query(q): Q,
) -> Response {
    let kind = q.get("kind").cloned().unwrap_or_else(|| "instances".into());
    let limit = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
    json(run(cp, move |cp| cp.read_logs(&who, &p, &l, &s, &kind, limit)).await)
}

async fn list_endpoints(State(cp): Cp, Caller(who): Caller, Path((p, r)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.list_endpoints(&who, &p, &r)).await)
}

async fn create_endpoint(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, r)): Path<(String, String)>,
    b: Bytes,
) -> Response {
    json(
        async {
            let e = body(&b)?;
            run(cp, move |cp| cp.create_endpoint(&who, &p, &r, e)).await
        }
        .await,
    )
}

async fn get_endpoint(State(cp): Cp, Caller(who): Caller, Path((p, r, e)): Path<(String, String, String)>) -> Response {
    json(run(cp, move |cp| cp.get_endpoint(&who, &p, &r, &e)).await)
}

async fn delete_endpoint(
    State(cp): Cp,
    Caller(who): Caller,
    Path((p, r, e)): Path<(String, String, String)>,
) -> Response {
    json(run(cp, move |cp| cp.delete_endpoint(&who, &p, &r, &e)).await)
}

// ---- credentials ----------------------------------------------------------------------------

async fn list_credentials(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>) -> Response {
    json(run(cp, move |cp| cp.list_credentials(&who, &p)).await)
}

async fn create_credential(State(cp): Cp, Caller(who): Caller, Path(p): Path<String>, b: Bytes) -> Response {
    json(
        async {
            let req = body(&b)?;
            run(cp, move |cp| cp.create_credential(&who, &p, req)).await
        }
        .await,
    )
}

async fn delete_credential(State(cp): Cp, Caller(who): Caller, Path((p, c)): Path<(String, String)>) -> Response {
    json(run(cp, move |cp| cp.delete_credential(&who, &p, &c)).await)
}
