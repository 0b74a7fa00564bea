//! The troubleshooter's API: "what would a call from this service to that URL get, and why?"
//! and "why was this request refused?".
//!
//! The answer must be the one the data path would give, so the control plane does not evaluate
//! anything itself: it authenticates the caller, checks its permission, finds the refusal record
//! and hands the question to the daemon's [`Troubleshooter`], which runs the very objects that
//! serve requests (the egress planner, the frontend's routes, the ingress check, the invoker
//! check) on a token minted exactly as the metadata server would mint it. A troubleshooter that
//! reimplemented the checks would drift from them, and its answers would be worse than none.
//!
//! Answers never contain a token: only the claims that matter (audience, email) and decisions.

use runnel_policy::iam::Principal;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, Target};

/// Which credential the calling service sends, to reproduce a mistake as well as the right way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenChoice {
    /// An ID token from the metadata server's `identity` endpoint (what the guide's code sends).
    #[default]
    Id,
    /// An access token from the metadata server's `token` endpoint (a common mistake).
    Access,
    /// No token at all.
    None,
}

/// A call to evaluate: from a deployed service, to a URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallQuestion {
    /// The calling service's name, in the request's region.
    pub from: String,
    /// The receiver's URL (`http://…`), or a service name in the same region.
    pub to: String,
    /// Evaluate as if the caller ran as this service account instead of its revision's.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The path of the call; default: the URL's own path, else `/`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub token: TokenChoice,
    /// The audience the caller asks the metadata server for; default: the `to` URL, as the
    /// guide's `fetch_id_token(request, url)` does.
    #[serde(default)]
    pub audience: Option<String>,
}

/// Evaluates calls with the daemon's own data-path objects; the daemon provides it.
pub trait Troubleshooter: Send + Sync + 'static {
    /// The trace of a call, step by step, with the verdict and the commands that change it.
    fn call(&self, region: &str, question: &CallQuestion) -> ApiResult<Value>;
    /// An explanation of one refusal record, with a fresh evaluation where the caller is known.
    fn request(&self, refusal: &Value) -> ApiResult<Value>;
}

/// How many refusals `troubleshoot request` searches: the refusal log's readable window.
const REFUSALS_SEARCHED: usize = 10_000;

impl ControlPlane {
    /// Installs the daemon's troubleshooter. Set once, after the node's objects exist (they
    /// need the control plane themselves, so they cannot be given to [`ControlPlane::new`]).
    pub fn set_troubleshooter(&self, t: std::sync::Arc<dyn Troubleshooter>) {
        let _ = self.troubleshooter.set(t);
    }

    fn troubleshooter(&self) -> ApiResult<&dyn Troubleshooter> {
        self.troubleshooter.get().map(|t| t.as_ref()).ok_or_else(|| {
            ApiError::failed_precondition(
                "this runnel runs no frontend (--role=control-plane), so there is no data path to troubleshoot; ask the node's API instead",
            )
        })
    }

    /// Reading IAM policies is what a troubleshooter reveals, so it takes the permission to
    /// read them, on the project (as Policy Troubleshooter does).
    fn authorize_troubleshooting(&self, caller: &Principal, permission: &str) -> ApiResult<()> {
        let name = self.project_name();
        self.read(|r| self.authorize(r, caller, permission, &Target { name: &name, policy_key: None }))
    }

    /// `runnel troubleshoot call`.
    pub fn troubleshoot_call(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        question: &CallQuestion,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        self.authorize_troubleshooting(caller, "run.services.getIamPolicy")?;
        if question.from.trim().is_empty() || question.to.trim().is_empty() {
            return Err(ApiError::invalid(
                "a call needs `from` (the calling service) and `to` (the receiver's URL or service name)",
            ));
        }
        self.troubleshooter()?.call(region, question)
    }

    /// `runnel troubleshoot request REQUEST_ID`: the refusal with that id, explained.
    pub fn troubleshoot_request(&self, caller: &Principal, project: &str, request_id: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        self.authorize_troubleshooting(caller, "logging.logEntries.list")?;
        let troubleshooter = self.troubleshooter()?;
        let refusals = match &self.logs {
            Some(l) => l.read("-", "-", "denied", REFUSALS_SEARCHED),
            None => Vec::new(),
        };
        let wanted = request_id.trim();
        let Some(refusal) = refusals.iter().rev().find(|r| r["requestId"].as_str() == Some(wanted)) else {
            return Err(ApiError::not_found(format!(
                "no refused request has id `{wanted}` in the refusal log; the id is in the refused response's \
                 `X-Runnel-Request-Id` header and in `runnel logs --denied`. Requests that reached an instance are \
                 in `runnel run services logs read SERVICE --requests`"
            )));
        };
        troubleshooter.request(refusal)
    }
}
