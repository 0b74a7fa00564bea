//! Who is calling the API: bearer credentials issued to `user:` principals.
//!
//! A credential is a random secret; the store keeps only its SHA-256, so neither the state file
//! nor a log line can give one away. The owner's credential is written by the daemon into
//! `$RUNNEL_HOME` (mode 0600) at first start; the owner issues and revokes others.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use runnel_policy::iam::Principal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::plane::{ControlPlane, get};

/// A stored credential: who it speaks for. The secret itself is not stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRecord {
    pub name: String,
    pub member: String,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

pub(crate) fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn credential_key(secret: &str) -> String {
    format!("credentials/{}", digest(secret))
}

/// A new credential secret: 32 random bytes, recognisable by its prefix.
pub fn new_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    format!("rnl_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The authenticated caller of an API method.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &Arc<ControlPlane>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated(
                "the request has no credential; send `Authorization: Bearer CREDENTIAL`. The runnel CLI does this for you with the credential in RUNNEL_HOME (owner.credential) or RUNNEL_CREDENTIAL",
            )
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header is not `Bearer CREDENTIAL`"))?;
        // Access tokens (and ID tokens, refused with a hint) are told apart by their shape.
        if let Some(principal) = cp.token_caller(secret) {
            return principal.map(Caller);
        }
        let key = credential_key(secret);
        let record: Option<CredentialRecord> = cp.read(|r| get(r, &key))?;
        let record = record.ok_or_else(|| {
            ApiError::unauthenticated("the credential is not valid: it was revoked, or it belongs to another runnel home; ask the owner for a new one")
        })?;
        match runnel_model::iam::Member::parse(&record.member) {
            Ok(runnel_model::iam::Member::User(email)) => Ok(Caller(Principal::User { email })),
            _ => Err(ApiError::internal(format!("credential {} names an unusable member", record.name))),
        }
    }
}
