//! Naming rules for every kind of resource, after the rules of the Google API each kind comes from.

use crate::Invalid;

fn is_lower_alnum_hyphen(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The shape every rule below shares: lowercase letters, digits and hyphens, starting with a
/// letter and not ending with a hyphen, with a length window.
fn check_dns_label(field: &str, kind: &str, value: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let fix = format!(
        "a {kind} name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has {min} to {max} characters"
    );
    if value.len() < min || value.len() > max {
        return Err(Invalid::new(field, format!("{kind} name `{value}` has {} characters; {fix}", value.len())));
    }
    if !is_lower_alnum_hyphen(value) {
        return Err(Invalid::new(field, format!("{kind} name `{value}` has a character that is not allowed; {fix}")));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Invalid::new(field, format!("{kind} name `{value}` does not start with a letter; {fix}")));
    }
    if value.ends_with('-') {
        return Err(Invalid::new(field, format!("{kind} name `{value}` ends with a hyphen; {fix}")));
    }
    Ok(())
}

/// Cloud Run service names: at most 49 characters (the service name and the revision suffix
/// must fit in a 63-character DNS label).
pub fn service(value: &str) -> Result<(), Invalid> {
    check_dns_label("name", "service", value, 1, 49)
}

/// Service account ids, the part of the email before `@`: 6 to 30 characters.
pub fn account_id(value: &str) -> Result<(), Invalid> {
    check_dns_label("accountId", "service account", value, 6, 30)
}

/// Project ids: 6 to 30 characters.
pub fn project_id(value: &str) -> Result<(), Invalid> {
    check_dns_label("projectId", "project", value, 6, 30)
}

/// Compute Engine resource names (networks, subnets, endpoints): RFC 1035 labels of at most 63.
pub fn compute(kind: &str, value: &str) -> Result<(), Invalid> {
    check_dns_label("name", kind, value, 1, 63)
}

/// Serverless VPC Access connector names: Compute Engine naming, fewer than 21 characters.
pub fn connector(value: &str) -> Result<(), Invalid> {
    check_dns_label("name", "connector", value, 1, 20)
}

/// Region names such as `local1` or `europe-west1`.
pub fn region(value: &str) -> Result<(), Invalid> {
    check_dns_label("location", "region", value, 2, 40)
}

/// Revision names are service names with a suffix; the same label rule, up to 63 characters.
pub fn revision(value: &str) -> Result<(), Invalid> {
    check_dns_label("template.revision", "revision", value, 1, 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("receiver", None),
            ("a", None),
            ("svc-2", None),
            (&"a".repeat(49), None),
            (
                &"a".repeat(50),
                Some(
                    "name: service name `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa` has 50 characters; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
            (
                "",
                Some(
                    "name: service name `` has 0 characters; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
            (
                "Receiver",
                Some(
                    "name: service name `Receiver` has a character that is not allowed; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
            (
                "my_svc",
                Some(
                    "name: service name `my_svc` has a character that is not allowed; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
            (
                "1svc",
                Some(
                    "name: service name `1svc` does not start with a letter; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
            (
                "svc-",
                Some(
                    "name: service name `svc-` ends with a hyphen; a service name uses lowercase letters, digits and hyphens, starts with a letter, does not end with a hyphen and has 1 to 49 characters",
                ),
            ),
        ];
        for (name, want) in cases {
            let got = service(name).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *want, "service name {name:?}");
        }
    }

    #[test]
    fn account_ids() {
        for ok in ["caller", "caller-sa", "a12345", &"a".repeat(30)] {
            assert_eq!(account_id(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("short", "has 5 characters"),
            (&"a".repeat(31) as &str, "has 31 characters"),
            ("9caller", "does not start with a letter"),
            ("caller-", "ends with a hyphen"),
            ("caller.sa", "character that is not allowed"),
        ] {
            let err = account_id(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("accountId: service account name"), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn connector_names_are_shorter_than_21() {
        assert_eq!(connector(&"c".repeat(20)), Ok(()));
        let err = connector(&"c".repeat(21)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("has 21 characters") && err.contains("1 to 20 characters"), "{err}");
        assert!(connector("Conn").is_err());
    }
}
