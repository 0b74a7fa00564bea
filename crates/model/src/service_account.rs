//! IAM service accounts (IAM v1 shape).

use serde::{Deserialize, Serialize};

use crate::{Invalid, names};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccount {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub project_id: String,
    /// 21 digits, never reused: what bindings and tokens really refer to.
    #[serde(default)]
    pub unique_id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub etag: String,
    #[serde(default)]
    pub oauth2_client_id: String,
    #[serde(default)]
    pub disabled: bool,
}

/// The email of a user-created service account.
pub fn email(account_id: &str, project_id: &str) -> String {
    format!("{account_id}@{project_id}.iam.gserviceaccount.com")
}

/// The email of the project's default compute service account, which revisions run as when
/// they name none. It holds no role unless one is granted.
pub fn default_compute_email(project_number: &str) -> String {
    format!("{project_number}-compute@developer.gserviceaccount.com")
}

/// Checks a create request's display name and description (IAM's limits).
pub fn validate_create(account_id: &str, display_name: &str, description: &str) -> Result<(), Invalid> {
    names::account_id(account_id)?;
    validate_details(display_name, description)
}

/// Checks a display name and description (IAM's limits).
pub fn validate_details(display_name: &str, description: &str) -> Result<(), Invalid> {
    if display_name.chars().count() > 100 {
        return Err(Invalid::new("serviceAccount.displayName", "the display name is longer than 100 characters"));
    }
    if description.chars().count() > 256 {
        return Err(Invalid::new("serviceAccount.description", "the description is longer than 256 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email("caller", "my-project"), "caller@my-project.iam.gserviceaccount.com");
        assert_eq!(default_compute_email("123456789012"), "123456789012-compute@developer.gserviceaccount.com");
    }

    #[test]
    fn create_rules() {
        assert!(validate_create("caller", "Caller", "").is_ok());
        assert!(validate_create("caller", &"x".repeat(101), "").is_err());
        assert!(
            validate_create("cal", "", "")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("has 3 characters")
        );
    }
}
