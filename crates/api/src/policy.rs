//! Reading and writing IAM policies, shared by projects, services and service accounts.
//!
//! Stored policies count their versions; the etag users see is that count, encoded. A write
//! with an etag that is not the current one is refused with ABORTED, and the whole
//! read-check-write runs in one store transaction, so no concurrent edit is ever lost.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runnel_model::iam::{Policy, WireBinding, WirePolicy};
use runnel_policy::roles;
use runnel_store::{Read, Write};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, get, put};

pub(crate) fn etag(version: u64) -> String {
    STANDARD.encode(version.to_be_bytes())
}

/// The body of `:setIamPolicy`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetIamPolicyRequest {
    pub policy: WirePolicy,
    /// Accepted as gcloud sends it; runnel models only `bindings` and `etag`, so the whole
    /// policy is always what is set.
    #[serde(default, rename = "updateMask")]
    _update_mask: Option<serde_json::Value>,
}

/// The body of `:testIamPermissions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestIamPermissionsRequest {
    #[serde(default)]
    pub permissions: Vec<String>,
}

impl ControlPlane {
    /// A stored policy as users see it: members bound to accounts that no longer exist (or
    /// were re-created) are shown as `deleted:…`.
    pub(crate) fn show_policy(&self, r: &(impl Read + ?Sized), stored: &Policy) -> WirePolicy {
        let bindings = stored
            .parsed_bindings()
            .map(|(role, members)| WireBinding {
                role: role.to_string(),
                members: members.iter().map(|m| m.shown(|email| self.current_uid(r, email))).collect(),
                condition: None,
            })
            .filter(|b| !b.members.is_empty())
            .collect();
        WirePolicy { version: 1, bindings, etag: Some(etag(stored.version)), audit_configs: None }
    }

    pub(crate) fn read_policy(&self, r: &(impl Read + ?Sized), key: &str) -> ApiResult<WirePolicy> {
        let stored: Policy = get(r, key)?.unwrap_or_default();
        Ok(self.show_policy(r, &stored))
    }

    /// Replaces the policy at `key` with `wire`, checking the etag, the roles and the members.
    /// `check` sees the new policy before it is written (the project uses it to keep an owner).
    pub(crate) fn write_policy(
        &self,
        w: &mut (impl Write + ?Sized),
        key: &str,
        wire: &WirePolicy,
        check: impl FnOnce(&Policy) -> ApiResult<()>,
    ) -> ApiResult<WirePolicy> {
        let parsed = wire.parse()?;
        let current: Policy = get(w, key)?.unwrap_or_default();
        if let Some(tag) = &wire.etag
            && tag != &etag(current.version)
        {
            return Err(ApiError::aborted(
                "the policy changed since it was read (its etag is stale); read it again, apply your change, and retry",
            ));
        }
        let mut next = Policy { version: current.version + 1, bindings: Vec::new() };
        for (role, members) in parsed {
            if !roles::is_role(&role) {
                let known: Vec<&str> = roles::role_names().collect();
                return Err(ApiError::invalid(format!(
                    "role `{role}` is not supported; runnel supports {}",
                    known.join(", ")
                )));
            }
            for m in members {
                let m = self.resolve_member(w, m)?;
                next.add(&role, &m);
            }
        }
        check(&next)?;
        put(w, key, &next)?;
        Ok(self.show_policy(w, &next))
    }
}
