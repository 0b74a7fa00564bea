//! Access tokens at the control-plane API: the `token` of the metadata server, IAM Credentials'
//! `generateAccessToken`, and `runnel auth print-access-token`.
//!
//! An access token is opaque (`ya29.…`) and short-lived; the daemon's minter keeps, in memory,
//! whom each one stands for. The API accepts it as that principal with exactly that principal's
//! permissions, checked against current policy on every call like any credential. Whether the
//! holder may still act is decided when the token is *used*, not only when it was minted: a
//! service account that was disabled, deleted or deleted and re-created (a new unique id) since
//! then is refused with 401, and so is a person none of whose credentials is left.
//!
//! ID tokens are for calling services through the frontend; the API refuses them with a message
//! that says which token to use instead, so a mixed-up `$(print-identity-token)` is obvious.
//! Nothing here ever logs or returns a token except to the principal it was minted for.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use runnel_model::service_account::ServiceAccount;
use runnel_policy::iam::Principal;
use runnel_policy::principal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, CredentialRecord};
use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, get, scan};
use crate::routes::{body, json, run};

/// How every access token runnel mints starts (Google's start the same way).
pub const ACCESS_TOKEN_PREFIX: &str = "ya29.";

/// The longest lifetime an access token can have, as Google's default maximum.
const MAX_LIFETIME_SECONDS: u64 = 3600;

/// Whom an access token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTokenHolder {
    /// A service account, by the unique id it had when the token was minted.
    ServiceAccount { unique_id: String, email: String },
    /// A person who authenticated to the API with a credential.
    User { email: String },
}

/// IAM Credentials' `generateAccessToken` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenRequest {
    #[serde(default)]
    pub scope: Vec<String>,
    /// Seconds with an `s`, such as `3600s`.
    #[serde(default)]
    pub lifetime: Option<String>,
    #[serde(default)]
    pub delegates: Vec<String>,
}

/// Whether a bearer value is shaped like a JWT (an ID token): three base64url parts.
fn looks_like_jwt(bearer: &str) -> bool {
    bearer.starts_with("eyJ") && bearer.split('.').count() == 3
}

/// Checks a requested `lifetime` (`3600s`): refuses other forms and anything over what runnel
/// issues. A shorter lifetime is accepted but not honoured: every access token lives the
/// minter's one hour, and the answer's `expireTime` says so (unlike Google, which shortens it).
fn parse_lifetime(lifetime: Option<&str>) -> ApiResult<()> {
    let Some(text) = lifetime.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let seconds: f64 = text.strip_suffix('s').and_then(|n| n.parse().ok()).ok_or_else(|| {
        ApiError::invalid(format!("`lifetime` `{text}` is not a duration in seconds such as `3600s`"))
    })?;
    if !(seconds > 0.0 && seconds <= MAX_LIFETIME_SECONDS as f64) {
        return Err(ApiError::invalid(format!(
            "`lifetime` `{text}` is out of range: runnel issues access tokens for at most {MAX_LIFETIME_SECONDS}s; leave it out or ask for less"
        )));
    }
    Ok(())
}

fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

impl ControlPlane {
    /// The principal a bearer value stands for, if it is a token rather than a credential:
    /// `None` for anything else (the caller then looks it up as a credential).
    pub(crate) fn token_caller(&self, bearer: &str) -> Option<ApiResult<Principal>> {
        if bearer.starts_with(ACCESS_TOKEN_PREFIX) {
            return Some(self.access_token_caller(bearer));
        }
        if looks_like_jwt(bearer) {
            return Some(Err(ApiError::unauthenticated(
                "the bearer token is an ID token; ID tokens are for calling services through the frontend, not for this API. Send a runnel credential, or an access token (`runnel auth print-access-token`, or the metadata server's `token`)",
            )));
        }
        None
    }

    fn access_token_caller(&self, token: &str) -> ApiResult<Principal> {
        let holder = self.tokens.as_ref().and_then(|t| t.access_token_holder(token)).ok_or_else(|| {
            ApiError::unauthenticated(
                "the access token is not valid: it expired, the daemon restarted since it was issued (runnel keeps access tokens in memory only), or another runnel issued it; get a new one (`runnel auth print-access-token`, or the metadata server's `token`)",
            )
        })?;
        let (decision, principal) = match holder {
            AccessTokenHolder::ServiceAccount { unique_id, email } => {
                let account: Option<ServiceAccount> = self.read(|r| get(r, &crate::accounts::key(&email)))?;
                let issued = principal::IssuedTo { unique_id: &unique_id, email: Some(&email) };
                let decision = principal::service_account(issued, account.as_ref().map(principal::Account::from));
                (decision, Principal::ServiceAccount { email, unique_id })
            }
            AccessTokenHolder::User { email } => {
                (principal::person(&email, self.person_has_credential(&email)?), Principal::User { email })
            }
        };
        if decision.allowed {
            return Ok(principal);
        }
        Err(ApiError::unauthenticated(format!(
            "the access token no longer works ({}): {}",
            decision.reason,
            decision.trace.join("; ")
        ))
        .because(decision.reason))
    }

    /// Whether a person still holds a credential: the tokens runnel gave them (access tokens
    /// here, ID tokens at the frontend) stop working when the last one is revoked.
    pub fn person_has_credential(&self, email: &str) -> ApiResult<bool> {
        let member = format!("user:{email}");
        let credentials: Vec<CredentialRecord> = self.read(|r| scan(r, "credentials/"))?;
        Ok(credentials.iter().any(|c| c.member == member))
    }

    fn mint_access_token(&self, holder: &AccessTokenHolder, req: &AccessTokenRequest) -> ApiResult<Value> {
        parse_lifetime(req.lifetime.as_deref())?;
        if !req.delegates.is_empty() {
            return Err(ApiError::invalid(
                "delegation chains (`delegates`) are not supported by runnel; grant the caller `roles/iam.serviceAccountTokenCreator` on the account directly",
            ));
        }
        let issuer = self.tokens.as_ref().ok_or_else(|| {
            ApiError::failed_precondition(
                "this daemon runs only the control plane (`--role=control-plane`) and mints no tokens",
            )
        })?;
        let (token, expires_at) = issuer.access_token(holder, &req.scope).map_err(ApiError::internal)?;
        Ok(json!({ "accessToken": token, "expireTime": rfc3339(expires_at) }))
    }

    /// An access token for a service account, for a caller holding
    /// `iam.serviceAccounts.getAccessToken` on it (IAM Credentials' `generateAccessToken`).
    pub fn generate_account_access_token(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        req: &AccessTokenRequest,
    ) -> ApiResult<Value> {
        // IAM Credentials names accounts under the wildcard project `-`.
        if project != "-" {
            self.check_project(project)?;
        }
        let acct = self.read(|r| self.account_for(r, caller, id, "iam.serviceAccounts.getAccessToken"))?;
        if acct.disabled {
            return Err(ApiError::failed_precondition(format!(
                "service account `{}` is disabled, so it gets no tokens; enable it with `runnel iam service-accounts enable {}`",
                acct.email, acct.email
            )));
        }
        self.mint_access_token(&AccessTokenHolder::ServiceAccount { unique_id: acct.unique_id, email: acct.email }, req)
    }

    /// An access token for the caller itself (`runnel auth print-access-token`).
    pub fn generate_own_access_token(
        &self,
        caller: &Principal,
        project: &str,
        req: &AccessTokenRequest,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let holder = match caller {
            Principal::User { email } => AccessTokenHolder::User { email: email.clone() },
            Principal::ServiceAccount { email, unique_id } => {
                AccessTokenHolder::ServiceAccount { unique_id: unique_id.clone(), email: email.clone() }
            }
            Principal::Anonymous => {
                return Err(ApiError::unauthenticated("only an authenticated caller gets an access token"));
            }
        };
        self.mint_access_token(&holder, req)
    }

    /// `sub` and `email` of the caller's own ID tokens: a person's email, or a service
    /// account's unique id and email, as Google's tokens carry them.
    pub(crate) fn id_token_subject(caller: &Principal) -> Option<(String, String)> {
        match caller {
            Principal::User { email } => Some((email.clone(), email.clone())),
            Principal::ServiceAccount { email, unique_id } => Some((unique_id.clone(), email.clone())),
            Principal::Anonymous => None,
        }
    }
}

// ---- routes -------------------------------------------------------------------------------------

/// `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`.
pub(crate) async fn account_access_token(
    cp: Arc<ControlPlane>,
    who: Principal,
    project: String,
    account: String,
    b: Bytes,
) -> Response {
    json(
        async {
            let req: AccessTokenRequest = body(&b)?;
            run(cp, move |cp| cp.generate_account_access_token(&who, &project, &account, &req)).await
        }
        .await,
    )
}

/// `POST /runnel/v1/projects/P/accessToken`: the caller's own access token.
pub(crate) async fn own_access_token(
    State(cp): State<Arc<ControlPlane>>,
    Caller(who): Caller,
    Path(project): Path<String>,
    b: Bytes,
) -> Response {
    json(
        async {
            let req: AccessTokenRequest = body(&b)?;
            run(cp, move |cp| cp.generate_own_access_token(&who, &project, &req)).await
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_runnel_issues() {
        assert!(parse_lifetime(None).is_ok());
        assert!(parse_lifetime(Some("3600s")).is_ok());
        assert!(parse_lifetime(Some("1.5s")).is_ok());
        for bad in ["3601s", "0s", "3600", "an hour", "-5s"] {
            assert!(parse_lifetime(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_tokens_are_recognised_by_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"));
        assert!(!looks_like_jwt("rnl_abc"));
        assert!(!looks_like_jwt("ya29.abc"));
    }
}
