//! IAM v1 service accounts, with their own IAM policies.
//!
//! A service account's `uniqueId` is 21 digits and never reused, even after deletion: bindings
//! and (later) ID tokens refer to it, so a re-created account with the same email starts with
//! no grants.

use runnel_model::iam::WirePolicy;
use runnel_model::service_account::{self, ServiceAccount};
use runnel_policy::iam::Principal;
use runnel_store::{Read, Write};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, Target, etag_of, get, put, scan};

pub(crate) fn key(email: &str) -> String {
    format!("accounts/{}", email.to_ascii_lowercase())
}

pub(crate) fn policy_key(email: &str) -> String {
    format!("policies/accounts/{}", email.to_ascii_lowercase())
}

const NEXT_UID_KEY: &str = "meta/next_account_seq";
const UID_BASE_KEY: &str = "meta/account_uid_base";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    pub account_id: String,
    #[serde(default)]
    pub service_account: Option<CreateDetails>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDetails {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    pub service_account: CreateDetails,
    #[serde(default)]
    pub update_mask: String,
}

/// A fresh 21-digit unique id. The sequence lives in the store, in the same transaction as
/// the account, so an id is never handed out twice.
fn next_unique_id(w: &mut (impl Write + ?Sized)) -> ApiResult<String> {
    let base: u64 = match get::<u64>(w, UID_BASE_KEY)? {
        Some(b) => b,
        None => {
            use rand::Rng;
            let b = rand::rng().random_range(0..10_000_000_000_000_000_000u64 / 2);
            put(w, UID_BASE_KEY, &b)?;
            b
        }
    };
    let seq: u64 = get(w, NEXT_UID_KEY)?.unwrap_or(0);
    put(w, NEXT_UID_KEY, &(seq + 1))?;
    Ok(format!("1{:020}", base + seq))
}

impl ControlPlane {
    fn account_name(&self, email: &str) -> String {
        format!("projects/{}/serviceAccounts/{email}", self.project.project_id)
    }

    /// Creates an account in a transaction that is already open (used by bootstrap too).
    pub(crate) fn insert_account(
        &self,
        w: &mut (impl Write + ?Sized),
        email: &str,
        display_name: &str,
        description: &str,
    ) -> ApiResult<ServiceAccount> {
        let unique_id = next_unique_id(w)?;
        let mut acct = ServiceAccount {
            name: self.account_name(email),
            project_id: self.project.project_id.clone(),
            oauth2_client_id: unique_id.clone(),
            unique_id,
            email: email.to_string(),
            display_name: display_name.to_string(),
            description: description.to_string(),
            etag: String::new(),
            disabled: false,
        };
        acct.etag = etag_of(&acct);
        put(w, &key(email), &acct)?;
        Ok(acct)
    }

    /// Finds an account by email or unique id (both are accepted in paths, as in IAM v1).
    pub(crate) fn find_account(&self, r: &(impl Read + ?Sized), id: &str) -> ApiResult<Option<ServiceAccount>> {
        if id.contains('@') {
            return get(r, &key(id));
        }
        Ok(scan::<ServiceAccount>(r, "accounts/")?.into_iter().find(|a| a.unique_id == id))
    }

    fn account_target_name(&self, id: &str) -> String {
        self.account_name(id)
    }

    pub fn create_account(&self, caller: &Principal, project: &str, req: CreateRequest) -> ApiResult<ServiceAccount> {
        self.check_project(project)?;
        let details = req.service_account.unwrap_or_default();
        service_account::validate_create(&req.account_id, &details.display_name, &details.description)?;
        let email = service_account::email(&req.account_id, &self.project.project_id);
        let name = self.account_name(&email);
        self.write(|w| {
            self.authorize(w, caller, "iam.serviceAccounts.create", &Target { name: &name, policy_key: None })?;
            if get::<ServiceAccount>(w, &key(&email))?.is_some() {
                return Err(ApiError::already_exists(format!(
                    "service account `{email}` already exists; pick another account id, or use the existing account"
                )));
            }
            self.insert_account(w, &email, &details.display_name, &details.description)
        })
    }

    pub fn list_accounts(&self, caller: &Principal, project: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            self.authorize(r, caller, "iam.serviceAccounts.list", &Target { name: &name, policy_key: None })?;
            let accounts: Vec<ServiceAccount> = scan(r, "accounts/")?;
            Ok(json!({ "accounts": accounts }))
        })
    }

    /// Authorizes `permission` on the account named by `id` and returns it; the refusal comes
    /// before the existence check, so a caller without access learns nothing.
    pub(crate) fn account_for(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        id: &str,
        permission: &str,
    ) -> ApiResult<ServiceAccount> {
        let found = self.find_account(r, id)?;
        let email = found.as_ref().map(|a| a.email.clone()).unwrap_or_else(|| id.to_string());
        let name = self.account_target_name(&email);
        let pkey = policy_key(&email);
        self.authorize(r, caller, permission, &Target { name: &name, policy_key: Some(&pkey) })?;
        found.ok_or_else(|| {
            ApiError::not_found(format!(
                "service account `{id}` does not exist; list accounts with `runnel iam service-accounts list`"
            ))
        })
    }

    pub fn get_account(&self, caller: &Principal, project: &str, id: &str) -> ApiResult<ServiceAccount> {
        self.check_project(project)?;
        self.read(|r| self.account_for(r, caller, id, "iam.serviceAccounts.get"))
    }

    pub fn patch_account(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        req: PatchRequest,
    ) -> ApiResult<ServiceAccount> {
        self.check_project(project)?;
        self.write(|w| {
            let mut acct = self.account_for(w, caller, id, "iam.serviceAccounts.update")?;
            let mask: Vec<&str> = req.update_mask.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let all = mask.is_empty();
            if all || mask.contains(&"display_name") || mask.contains(&"displayName") {
                acct.display_name = req.service_account.display_name.clone();
            }
            if all || mask.contains(&"description") {
                acct.description = req.service_account.description.clone();
            }
            service_account::validate_details(&acct.display_name, &acct.description)?;
            acct.etag = String::new();
            acct.etag = etag_of(&acct);
            put(w, &key(&acct.email), &acct)?;
            Ok(acct)
        })
    }

    pub fn set_account_disabled(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        disabled: bool,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let permission = if disabled { "iam.serviceAccounts.disable" } else { "iam.serviceAccounts.enable" };
        self.write(|w| {
            let mut acct = self.account_for(w, caller, id, permission)?;
            acct.disabled = disabled;
            acct.etag = String::new();
            acct.etag = etag_of(&acct);
            put(w, &key(&acct.email), &acct)?;
            Ok(json!({}))
        })
    }

    pub fn delete_account(&self, caller: &Principal, project: &str, id: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        self.write(|w| {
            let acct = self.account_for(w, caller, id, "iam.serviceAccounts.delete")?;
            let users = self.revisions_using(w, |rev| rev.service_account.eq_ignore_ascii_case(&acct.email))?;
            if !users.is_empty() {
                return Err(ApiError::failed_precondition(format!(
                    "service account `{}` is in use by {}; deploy those services with another `--service-account` (or delete them) first",
                    acct.email,
                    users.join(", ")
                )));
            }
            w.delete(&key(&acct.email))?;
            w.delete(&policy_key(&acct.email))?;
            Ok(json!({}))
        })
    }

    pub fn get_account_policy(&self, caller: &Principal, project: &str, id: &str) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        self.read(|r| {
            let acct = self.account_for(r, caller, id, "iam.serviceAccounts.getIamPolicy")?;
            self.read_policy(r, &policy_key(&acct.email))
        })
    }

    pub fn set_account_policy(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        policy: &WirePolicy,
    ) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        self.write(|w| {
            let acct = self.account_for(w, caller, id, "iam.serviceAccounts.setIamPolicy")?;
            self.write_policy(w, &policy_key(&acct.email), policy, |_| Ok(()))
        })
    }

    pub fn test_account_permissions(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        asked: &[String],
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        self.read(|r| {
            let email = self.find_account(r, id)?.map(|a| a.email).unwrap_or_else(|| id.to_string());
            let name = self.account_target_name(&email);
            let pkey = policy_key(&email);
            let held = self.held_permissions(r, caller, asked, &Target { name: &name, policy_key: Some(&pkey) })?;
            Ok(json!({ "permissions": held }))
        })
    }

    /// An ID token for a service account, for a caller holding `iam.serviceAccounts.getOpenIdToken`
    /// on it (IAM Credentials' `generateIdToken`).
    pub fn generate_account_id_token(
        &self,
        caller: &Principal,
        project: &str,
        id: &str,
        audience: &str,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let acct = self.read(|r| self.account_for(r, caller, id, "iam.serviceAccounts.getOpenIdToken"))?;
        if acct.disabled {
            return Err(ApiError::failed_precondition(format!(
                "service account `{}` is disabled, so it gets no tokens; enable it with `runnel iam service-accounts enable {}`",
                acct.email, acct.email
            )));
        }
        self.mint(&acct.unique_id, &acct.email, audience)
    }

    /// An ID token for the caller itself (`runnel auth print-identity-token`): for a person,
    /// `sub` and `email` are the user's email; for a service account calling with its access
    /// token, its unique id and email, as the metadata server would mint.
    pub fn generate_user_id_token(&self, caller: &Principal, project: &str, audience: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        match Self::id_token_subject(caller) {
            Some((subject, email)) => self.mint(&subject, &email, audience),
            None => Err(ApiError::unauthenticated("only an authenticated caller gets its own ID token")),
        }
    }

    fn mint(&self, subject: &str, email: &str, audience: &str) -> ApiResult<Value> {
        if audience.trim().is_empty() {
            return Err(ApiError::invalid(
                "the token needs an audience: the URL of the service to call, such as `--audiences=http://SERVICE-NUMBER.REGION.run.localhost:7781`",
            ));
        }
        let issuer = self.tokens.as_ref().ok_or_else(|| {
            ApiError::failed_precondition(
                "this daemon runs only the control plane (`--role=control-plane`) and mints no tokens",
            )
        })?;
        let token = issuer.id_token(subject, email, audience).map_err(ApiError::internal)?;
        Ok(json!({ "token": token }))
    }
}
