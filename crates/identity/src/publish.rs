//! What verifiers fetch: the key set as JWKS and as a PEM map, and the OIDC discovery document.
//! The daemon mounts [`router`] on its API, whose address is the issuer; instances, which cannot
//! reach the API, get the same documents from their egress proxy through [`document`].

use std::sync::Arc;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::keys::{ALGORITHM, CERTS_MAX_AGE, Keys};

pub const JWKS_PATH: &str = "/oauth2/v3/certs";
pub const PEM_PATH: &str = "/oauth2/v1/certs";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The OIDC discovery document of `issuer` (no authorization endpoint: runnel issues tokens only
/// through metadata servers, as Kubernetes' service account issuer documents itself).
pub fn discovery_document(issuer: &str) -> Value {
    let base = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "google", "iat", "iss", "sub"],
    })
}

/// The body published at `path` (one of [`JWKS_PATH`], [`PEM_PATH`], [`DISCOVERY_PATH`]), or
/// `None` for any other path: the very bytes [`router`] serves, for the egress proxy to answer
/// instances with.
pub fn document(keys: &Keys, issuer: &str, path: &str) -> Option<String> {
    match path {
        JWKS_PATH => Some(keys.key_set().jwks_json().to_string()),
        PEM_PATH => Some(keys.key_set().pem_map_json().to_string()),
        DISCOVERY_PATH => Some(discovery_document(issuer).to_string()),
        _ => None,
    }
}

/// `GET /oauth2/v3/certs`, `/oauth2/v1/certs` and `/.well-known/openid-configuration`, public and
/// cacheable for [`CERTS_MAX_AGE`] seconds.
pub fn router(keys: Arc<Keys>, issuer: &str) -> Router {
    let discovery = discovery_document(issuer).to_string();
    let jwks_keys = keys.clone();
    Router::new()
        .route(JWKS_PATH, get(move || async move { cacheable(jwks_keys.key_set().jwks_json().to_string()) }))
        .route(PEM_PATH, get(move || async move { cacheable(keys.key_set().pem_map_json().to_string()) }))
        .route(DISCOVERY_PATH, get(move || async move { cacheable(discovery) }))
}

fn cacheable(body: String) -> Response {
    (
        [(CONTENT_TYPE, "application/json".to_string()), (CACHE_CONTROL, format!("public, max-age={CERTS_MAX_AGE}"))],
        body,
    )
        .into_response()
}
