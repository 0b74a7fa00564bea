//! The project, its IAM policy, API credentials, and first-start bootstrap.

use runnel_model::iam::{Member, Policy, WirePolicy};
use runnel_model::{names, service_account};
use runnel_policy::iam::Principal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{CredentialRecord, credential_key, new_secret};
use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, PROJECT_KEY, PROJECT_POLICY_KEY, Project, Target, get, new_uid, now, put, scan};

/// What the daemon knows at first start.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub project_id: String,
    /// The operator, e.g. `user:owner@runnel.local`; holds `roles/owner` on the project.
    pub owner: String,
    /// The owner's credential secret, already written to its file by the daemon.
    pub owner_secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentialRequest {
    pub member: String,
    #[serde(default)]
    pub description: String,
}

/// Opens or creates the project: on first start, the project with a fresh 12-digit number, the
/// owner's binding, the default compute service account (which holds no role) and the owner's
/// credential. Later starts only make sure the owner's credential is registered.
pub fn bootstrap(
    store: std::sync::Arc<dyn runnel_store::Store>,
    boot: &Bootstrap,
    settings: crate::plane::Settings,
) -> ApiResult<ControlPlane> {
    names::project_id(&boot.project_id)?;
    let owner = match Member::parse(&boot.owner)? {
        m @ Member::User(_) => m,
        _ => return Err(ApiError::invalid(format!("the owner `{}` must be a `user:EMAIL` principal", boot.owner))),
    };
    let existing: Option<Project> = {
        let r = store.read()?;
        get(r.as_ref(), PROJECT_KEY)?
    };
    let project = match existing {
        Some(p) => {
            if p.project_id != boot.project_id {
                return Err(ApiError::failed_precondition(format!(
                    "this RUNNEL_HOME holds project `{}`, not `{}`; start with `--project-id={}` or use another RUNNEL_HOME",
                    p.project_id, boot.project_id, p.project_id
                )));
            }
            p
        }
        None => {
            use rand::Rng;
            Project {
                project_id: boot.project_id.clone(),
                project_number: rand::rng().random_range(100_000_000_000u64..1_000_000_000_000u64).to_string(),
                create_time: now(),
            }
        }
    };
    let cp = ControlPlane::new(store, project.clone(), settings);
    cp.write(|w| {
        if get::<Project>(w, PROJECT_KEY)?.is_none() {
            put(w, PROJECT_KEY, &project)?;
            let mut policy = Policy::default();
            policy.add("roles/owner", &owner);
            policy.version = 1;
            put(w, PROJECT_POLICY_KEY, &policy)?;
            let email = service_account::default_compute_email(&project.project_number);
            cp.insert_account(w, &email, "Default compute service account", "")?;
        }
        let key = credential_key(&boot.owner_secret);
        if get::<CredentialRecord>(w, &key)?.is_none() {
            let record = CredentialRecord {
                name: format!("projects/{}/credentials/owner-{}", project.project_id, &new_uid()[..8]),
                member: owner.to_string(),
                create_time: now(),
                description: "the operator's credential, created at first start".into(),
            };
            put(w, &key, &record)?;
        }
        Ok(())
    })?;
    Ok(cp)
}

impl ControlPlane {
    pub fn get_project(&self, caller: &Principal, project: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            self.authorize(r, caller, "resourcemanager.projects.get", &Target { name: &name, policy_key: None })?;
            Ok(json!({
                "projectId": self.project.project_id,
                "projectNumber": self.project.project_number,
                "name": self.project.project_id,
                "createTime": self.project.create_time,
                "lifecycleState": "ACTIVE",
            }))
        })
    }

    pub fn get_project_policy(&self, caller: &Principal, project: &str) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            self.authorize(
                r,
                caller,
                "resourcemanager.projects.getIamPolicy",
                &Target { name: &name, policy_key: None },
            )?;
            self.read_policy(r, PROJECT_POLICY_KEY)
        })
    }

    /// Replaces the project's policy. A policy that leaves no `user:` owner is refused: nobody
    /// could manage the project any more.
    pub fn set_project_policy(&self, caller: &Principal, project: &str, policy: &WirePolicy) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        let name = self.project_name();
        self.write(|w| {
            self.authorize(w, caller, "resourcemanager.projects.setIamPolicy", &Target { name: &name, policy_key: None })?;
            self.write_policy(w, PROJECT_POLICY_KEY, policy, |next| {
                let has_owner = next.bindings.iter().any(|b| b.role == "roles/owner" && b.members.iter().any(|m| m.starts_with("user:")));
                if has_owner {
                    Ok(())
                } else {
                    Err(ApiError::failed_precondition(
                        "the policy leaves the project without a `user:` owner, so nobody could manage it; keep at least one `roles/owner` binding to a user",
                    ))
                }
            })
        })
    }

    pub fn test_project_permissions(&self, caller: &Principal, project: &str, asked: &[String]) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            let held = self.held_permissions(r, caller, asked, &Target { name: &name, policy_key: None })?;
            Ok(json!({ "permissions": held }))
        })
    }

    // ---- credentials ----------------------------------------------------------------------

    /// Issues a credential for a `user:` principal. The secret is returned once and only its
    /// digest is stored.
    pub fn create_credential(
        &self,
        caller: &Principal,
        project: &str,
        req: CreateCredentialRequest,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let member = match Member::parse(&req.member)? {
            m @ Member::User(_) => m,
            _ => {
                return Err(ApiError::invalid(format!(
                    "credentials are issued to `user:EMAIL` principals, not `{}`; service accounts get tokens from the metadata server",
                    req.member
                )));
            }
        };
        let name = self.project_name();
        self.write(|w| {
            self.authorize(w, caller, "runnel.credentials.create", &Target { name: &name, policy_key: None })?;
            let secret = new_secret();
            let record = CredentialRecord {
                name: format!("projects/{}/credentials/{}", self.project.project_id, &new_uid()[..8]),
                member: member.to_string(),
                create_time: now(),
                description: req.description.clone(),
            };
            put(w, &credential_key(&secret), &record)?;
            let mut out = serde_json::to_value(&record).map_err(ApiError::internal)?;
            if let Value::Object(map) = &mut out {
                map.insert("secret".into(), Value::String(secret));
            }
            Ok(out)
        })
    }

    pub fn list_credentials(&self, caller: &Principal, project: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            self.authorize(r, caller, "runnel.credentials.list", &Target { name: &name, policy_key: None })?;
            let creds: Vec<CredentialRecord> = scan(r, "credentials/")?;
            Ok(json!({ "credentials": creds }))
        })
    }

    pub fn delete_credential(&self, caller: &Principal, project: &str, id: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        let full = format!("projects/{}/credentials/{id}", self.project.project_id);
        self.write(|w| {
            self.authorize(w, caller, "runnel.credentials.delete", &Target { name: &name, policy_key: None })?;
            let found = w
                .scan("credentials/")?
                .into_iter()
                .find(|(_, v)| serde_json::from_slice::<CredentialRecord>(v).is_ok_and(|c| c.name == full));
            let (k, _) = found.ok_or_else(|| {
                ApiError::not_found(format!(
                    "credential `{id}` does not exist; list credentials with `runnel auth credentials list`"
                ))
            })?;
            w.delete(&k)?;
            Ok(json!({}))
        })
    }
}
