//! The control plane's state and the helpers every method shares: typed documents in the
//! store, the project, time, ids, and the permission check.

use std::sync::Arc;

use runnel_model::iam::{Member, Policy};
use runnel_policy::iam::{self, Principal, Scope};
use runnel_policy::roles;
use runnel_store::{Read, Store, Write};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// The project this daemon serves.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub project_id: String,
    pub project_number: String,
    pub create_time: String,
}

/// Settings the control plane needs from the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host suffix and port under which services get their URLs, e.g. `run.localhost:7781`;
    /// a service's host is `SERVICE-PROJECTNUMBER.REGION.` followed by this suffix.
    pub url_suffix: String,
    pub default_region: String,
}

pub struct ControlPlane {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) project: Project,
    pub(crate) settings: Settings,
    /// Whether instances run: then a revision is ready only when the runtime reports so.
    pub(crate) runtime: bool,
    /// Wakes the daemon's reconciler on every commit; it carries `committed`'s count.
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    /// Counts committed writes. A plain atomic beside the `watch`, because the frontend reads it
    /// on every request and reading a `watch` takes its lock (two atomic operations).
    committed: std::sync::atomic::AtomicU64,
    pub(crate) logs: Option<Arc<dyn LogReader>>,
    pub(crate) tokens: Option<Arc<dyn TokenIssuer>>,
    pub(crate) proxies: std::sync::OnceLock<Arc<dyn crate::operator::OperatorProxies>>,
    pub(crate) troubleshooter: std::sync::OnceLock<Arc<dyn crate::troubleshoot::Troubleshooter>>,
    /// How each revision reaches its VPC network, for its egress proxy (see [`crate::snapshot`]).
    pub(crate) egress_contexts: crate::snapshot::UntilNextCommit<
        (String, String, String),
        (runnel_policy::origin::Caller, Option<runnel_policy::egress::VpcPath>),
    >,
    /// The internal endpoints of every network, for every egress proxy.
    pub(crate) endpoint_list: crate::snapshot::UntilNextCommit<(), Vec<runnel_model::network::Endpoint>>,
}

/// Mints ID tokens for the API's `generateIdToken` methods; the daemon provides it.
pub trait TokenIssuer: Send + Sync + 'static {
    /// An RS256 ID token for `audience`, with `sub` = `subject` and `email` = `email`.
    fn id_token(&self, subject: &str, email: &str, audience: &str) -> Result<String, String>;

    /// An opaque access token for `holder` (see [`crate::AccessTokenHolder`]) with `scopes`,
    /// and when it expires (Unix seconds). Issuers that mint none refuse.
    fn access_token(&self, holder: &crate::AccessTokenHolder, scopes: &[String]) -> Result<(String, u64), String> {
        let _ = (holder, scopes);
        Err("this daemon mints no access tokens".into())
    }

    /// Whom an access token this issuer minted stands for, while it has not expired.
    fn access_token_holder(&self, token: &str) -> Option<crate::AccessTokenHolder> {
        let _ = token;
        None
    }
}

/// Reads a service's logs for the API; the daemon provides it.
pub trait LogReader: Send + Sync + 'static {
    /// The last `limit` records of `kind` (`instances` or `requests`), oldest first.
    fn read(&self, region: &str, service: &str, kind: &str, limit: usize) -> Vec<serde_json::Value>;
}

pub(crate) const PROJECT_KEY: &str = "project";
pub(crate) const PROJECT_POLICY_KEY: &str = "policies/project";

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub(crate) fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())])).collect()
}

pub(crate) fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        (u16::from_be_bytes([b[6], b[7]]) & 0x0fff) | 0x4000,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

/// Reads a JSON document.
pub(crate) fn get<T: DeserializeOwned>(r: &(impl Read + ?Sized), key: &str) -> ApiResult<Option<T>> {
    match r.get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("document {key} is unreadable: {e}"))),
        None => Ok(None),
    }
}

/// Reads every JSON document under a prefix.
pub(crate) fn scan<T: DeserializeOwned>(r: &(impl Read + ?Sized), prefix: &str) -> ApiResult<Vec<T>> {
    r.scan(prefix)?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|e| ApiError::internal(format!("document {k} is unreadable: {e}")))
        })
        .collect()
}

/// Writes a JSON document.
pub(crate) fn put<T: Serialize>(w: &mut (impl Write + ?Sized), key: &str, value: &T) -> ApiResult<()> {
    let bytes = serde_json::to_vec(value).map_err(ApiError::internal)?;
    Ok(w.put(key, &bytes)?)
}

/// An etag over a document's content, so any change gives a new one.
pub(crate) fn etag_of<T: Serialize>(value: &T) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// What a permission is checked against: the resource's full name and, for resources that
/// carry their own IAM policy, where that policy is stored.
pub(crate) struct Target<'a> {
    pub name: &'a str,
    pub policy_key: Option<&'a str>,
}

impl ControlPlane {
    pub fn new(store: Arc<dyn Store>, project: Project, settings: Settings) -> Self {
        Self {
            store,
            project,
            settings,
            runtime: false,
            changes: tokio::sync::watch::channel(0).0,
            committed: std::sync::atomic::AtomicU64::new(0),
            logs: None,
            tokens: None,
            proxies: std::sync::OnceLock::new(),
            troubleshooter: std::sync::OnceLock::new(),
            egress_contexts: Default::default(),
            endpoint_list: Default::default(),
        }
    }

    /// Makes readiness come from running instances (see [`ControlPlane::report`]) and gives
    /// the API the service logs.
    pub fn with_runtime(mut self, logs: Arc<dyn LogReader>) -> Self {
        self.runtime = true;
        self.logs = Some(logs);
        self
    }

    /// Lets the API mint ID tokens (`runnel auth print-identity-token`).
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenIssuer>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Lets the API open operator proxies (`runnel run services proxy --network`); set once,
    /// when the node's frontend exists.
    pub fn set_operator_proxies(&self, proxies: Arc<dyn crate::operator::OperatorProxies>) {
        let _ = self.proxies.set(proxies);
    }

    /// Wakes on every committed change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The change counter: moves on every commit, before the API acknowledges it.
    pub fn version(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    /// The region a command means when it names none.
    pub fn default_region(&self) -> &str {
        &self.settings.default_region
    }

    pub(crate) fn project_name(&self) -> String {
        format!("projects/{}", self.project.project_id)
    }

    /// Accepts the project id or number in a path, as Google APIs do.
    pub(crate) fn check_project(&self, p: &str) -> ApiResult<()> {
        if p == self.project.project_id || p == self.project.project_number {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "project `{p}` is not served by this runnel; it serves project `{}` (number {}). Pass `--project={}` or leave it out",
                self.project.project_id, self.project.project_number, self.project.project_id
            )))
        }
    }

    /// The role to suggest when someone lacks `permission`: the narrowest predefined role
    /// holding it.
    fn suggest_role(permission: &str) -> &'static str {
        roles::role_names()
            .filter(|r| roles::role_grants(r, permission))
            .min_by_key(|r| roles::permissions_of(r).len())
            .unwrap_or("roles/owner")
    }

    /// Checks that `caller` holds `permission` on `target`, through the target's own policy or
    /// the project's. The refusal names the permission, the resource and a role that would do.
    pub(crate) fn authorize(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        permission: &str,
        target: &Target<'_>,
    ) -> ApiResult<()> {
        let project_policy: Policy = get(r, PROJECT_POLICY_KEY)?.unwrap_or_default();
        let own: Option<Policy> = match target.policy_key {
            Some(k) => get(r, k)?,
            None => None,
        };
        let project_name = self.project_name();
        let mut scopes = Vec::with_capacity(2);
        if let Some(p) = &own {
            scopes.push(Scope { resource: target.name, policy: p });
        }
        scopes.push(Scope { resource: &project_name, policy: &project_policy });
        let decision = iam::check(caller, permission, &scopes);
        if decision.allowed {
            return Ok(());
        }
        tracing::info!(principal = %caller.member(), permission, resource = target.name, reason = %decision.reason, "permission denied");
        Err(ApiError::permission_denied(format!(
            "permission `{permission}` denied on `{}` for `{}` (or it may not exist). A role that holds it is `{}`; an owner can grant it with `runnel projects add-iam-policy-binding {} --member={} --role={}`",
            target.name,
            caller.member(),
            Self::suggest_role(permission),
            self.project.project_id,
            caller.member(),
            Self::suggest_role(permission),
        )))
    }

    /// The permissions among `asked` that `caller` holds on `target` (for `testIamPermissions`).
    pub(crate) fn held_permissions(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        asked: &[String],
        target: &Target<'_>,
    ) -> ApiResult<Vec<String>> {
        let mut out = Vec::new();
        for p in asked {
            if self.authorize(r, caller, p, target).is_ok() {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// The unique id the account with this email has now, if any.
    pub(crate) fn current_uid(&self, r: &(impl Read + ?Sized), email: &str) -> Option<String> {
        get::<runnel_model::service_account::ServiceAccount>(r, &crate::accounts::key(email))
            .ok()
            .flatten()
            .map(|a| a.unique_id)
    }

    /// Turns a parsed member from a user into its stored form: a service account is bound to
    /// the unique id it has now, and must exist.
    pub(crate) fn resolve_member(&self, r: &(impl Read + ?Sized), member: Member) -> ApiResult<Member> {
        match member {
            Member::ServiceAccount { email, uid: None } => match self.current_uid(r, &email) {
                Some(uid) => Ok(Member::ServiceAccount { email, uid: Some(uid) }),
                None => Err(ApiError::invalid(format!(
                    "service account `{email}` does not exist; create it with `runnel iam service-accounts create`, or check the email"
                ))),
            },
            other => Ok(other),
        }
    }

    /// Runs `f` in a write transaction and commits only if it succeeds.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut dyn Write) -> ApiResult<T>) -> ApiResult<T> {
        let mut txn = self.store.write()?;
        let out = f(txn.as_mut())?;
        txn.commit()?;
        // The counter first: whoever sees the `watch` move, or is told the write succeeded,
        // then reads the new count.
        let count = self.committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst).wrapping_add(1);
        self.changes.send_replace(count);
        Ok(out)
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&dyn Read) -> ApiResult<T>) -> ApiResult<T> {
        let txn = self.store.read()?;
        f(txn.as_ref())
    }
}
