//! Predefined roles and the permissions they hold.
//!
//! The catalogue lists every permission runnel checks. Roles are written as the rules Google
//! documents for them ("every get and list", "everything except setIamPolicy") and expanded
//! against the catalogue, so adding a permission places it in the basic roles automatically.

/// Every permission some runnel method or the frontend checks.
pub const PERMISSIONS: &[&str] = &[
    "run.services.get",
    "run.services.list",
    "run.services.create",
    "run.services.update",
    "run.services.delete",
    "run.services.getIamPolicy",
    "run.services.setIamPolicy",
    "run.revisions.get",
    "run.revisions.list",
    "run.routes.invoke",
    "iam.serviceAccounts.create",
    "iam.serviceAccounts.get",
    "iam.serviceAccounts.list",
    "iam.serviceAccounts.update",
    "iam.serviceAccounts.delete",
    "iam.serviceAccounts.disable",
    "iam.serviceAccounts.enable",
    "iam.serviceAccounts.actAs",
    "iam.serviceAccounts.getIamPolicy",
    "iam.serviceAccounts.setIamPolicy",
    "iam.serviceAccounts.getAccessToken",
    "iam.serviceAccounts.getOpenIdToken",
    "resourcemanager.projects.get",
    "resourcemanager.projects.getIamPolicy",
    "resourcemanager.projects.setIamPolicy",
    "vpcaccess.connectors.create",
    "vpcaccess.connectors.get",
    "vpcaccess.connectors.list",
    "vpcaccess.connectors.delete",
    "vpcaccess.connectors.use",
    "compute.networks.create",
    "compute.networks.get",
    "compute.networks.list",
    "compute.networks.delete",
    "compute.networks.use",
    "compute.subnetworks.create",
    "compute.subnetworks.get",
    "compute.subnetworks.list",
    "compute.subnetworks.delete",
    "compute.subnetworks.use",
    "compute.endpoints.create",
    "compute.endpoints.get",
    "compute.endpoints.list",
    "compute.endpoints.delete",
    "logging.logEntries.list",
    "runnel.credentials.create",
    "runnel.credentials.list",
    "runnel.credentials.delete",
];

/// Whether runnel knows this permission.
pub fn is_permission(p: &str) -> bool {
    PERMISSIONS.contains(&p)
}

const VIEWER: &[&str] =
    &["run.services.get", "run.services.list", "run.revisions.get", "run.revisions.list", "run.services.getIamPolicy"];
const DEVELOPER_EXTRA: &[&str] = &["run.services.create", "run.services.update", "run.services.delete"];
const ADMIN_EXTRA: &[&str] = &["run.services.setIamPolicy", "run.routes.invoke"];

/// How a role's permissions are defined.
enum Grants {
    /// Exactly these permissions (each list is unioned).
    Exactly(&'static [&'static [&'static str]]),
    /// Every permission in the catalogue whose service prefix matches.
    Prefix(&'static str),
    /// Every permission of a given service prefix, plus the IAM policy methods of that service.
    Viewer,
    Editor,
    Owner,
}

struct Role {
    name: &'static str,
    title: &'static str,
    grants: Grants,
}

const ROLES: &[Role] = &[
    Role { name: "roles/run.invoker", title: "Cloud Run Invoker", grants: Grants::Exactly(&[&["run.routes.invoke"]]) },
    Role { name: "roles/run.viewer", title: "Cloud Run Viewer", grants: Grants::Exactly(&[VIEWER]) },
    Role {
        name: "roles/run.developer",
        title: "Cloud Run Developer",
        grants: Grants::Exactly(&[VIEWER, DEVELOPER_EXTRA]),
    },
    Role {
        name: "roles/run.admin",
        title: "Cloud Run Admin",
        grants: Grants::Exactly(&[VIEWER, DEVELOPER_EXTRA, ADMIN_EXTRA]),
    },
    Role {
        name: "roles/iam.serviceAccountUser",
        title: "Service Account User",
        grants: Grants::Exactly(&[&[
            "iam.serviceAccounts.actAs",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
        ]]),
    },
    Role {
        name: "roles/iam.serviceAccountTokenCreator",
        title: "Service Account Token Creator",
        grants: Grants::Exactly(&[&["iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.getOpenIdToken"]]),
    },
    Role {
        name: "roles/iam.serviceAccountAdmin",
        title: "Service Account Admin",
        grants: Grants::Prefix("iam.serviceAccounts."),
    },
    Role {
        name: "roles/vpcaccess.user",
        title: "Serverless VPC Access User",
        grants: Grants::Exactly(&[&[
            "vpcaccess.connectors.use",
            "vpcaccess.connectors.get",
            "vpcaccess.connectors.list",
        ]]),
    },
    Role {
        name: "roles/vpcaccess.admin",
        title: "Serverless VPC Access Admin",
        grants: Grants::Prefix("vpcaccess.connectors."),
    },
    Role { name: "roles/compute.networkAdmin", title: "Compute Network Admin", grants: Grants::Prefix("compute.") },
    Role {
        name: "roles/compute.networkUser",
        title: "Compute Network User",
        grants: Grants::Exactly(&[&[
            "compute.networks.use",
            "compute.subnetworks.use",
            "compute.networks.get",
            "compute.networks.list",
        ]]),
    },
    Role { name: "roles/viewer", title: "Viewer", grants: Grants::Viewer },
    Role { name: "roles/editor", title: "Editor", grants: Grants::Editor },
    Role { name: "roles/owner", title: "Owner", grants: Grants::Owner },
];

fn method(permission: &str) -> &str {
    permission.rsplit('.').next().unwrap_or(permission)
}

/// Whether `role` holds `permission`. Unknown roles hold nothing.
pub fn role_grants(role: &str, permission: &str) -> bool {
    if !is_permission(permission) {
        return false;
    }
    let Some(r) = ROLES.iter().find(|r| r.name == role) else {
        return false;
    };
    match &r.grants {
        Grants::Exactly(lists) => lists.iter().any(|l| l.contains(&permission)),
        Grants::Prefix(prefix) => permission.starts_with(prefix),
        // Viewer: every get and list, and reading IAM policies; never credentials, which are
        // secrets of other principals.
        Grants::Viewer => {
            !permission.starts_with("runnel.credentials.")
                && matches!(method(permission), "get" | "list" | "getIamPolicy")
        }
        // Editor: everything except changing IAM policies and managing other principals'
        // credentials, which is what makes owner different.
        Grants::Editor => !permission.starts_with("runnel.credentials.") && method(permission) != "setIamPolicy",
        Grants::Owner => true,
    }
}

/// Whether runnel knows the role.
pub fn is_role(role: &str) -> bool {
    ROLES.iter().any(|r| r.name == role)
}

/// Every role name, for messages and docs.
pub fn role_names() -> impl Iterator<Item = &'static str> {
    ROLES.iter().map(|r| r.name)
}

/// A role's title ("Cloud Run Invoker").
pub fn title(role: &str) -> Option<&'static str> {
    ROLES.iter().find(|r| r.name == role).map(|r| r.title)
}

/// The permissions a role holds, in catalogue order.
pub fn permissions_of(role: &str) -> Vec<&'static str> {
    PERMISSIONS.iter().copied().filter(|p| role_grants(role, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_table() {
        let cases: &[(&str, &[&str])] = &[
            ("roles/run.invoker", &["run.routes.invoke"]),
            (
                "roles/run.viewer",
                &[
                    "run.services.get",
                    "run.services.list",
                    "run.services.getIamPolicy",
                    "run.revisions.get",
                    "run.revisions.list",
                ],
            ),
            (
                "roles/run.developer",
                &[
                    "run.services.get",
                    "run.services.list",
                    "run.services.create",
                    "run.services.update",
                    "run.services.delete",
                    "run.services.getIamPolicy",
                    "run.revisions.get",
                    "run.revisions.list",
                ],
            ),
            (
                "roles/run.admin",
                &[
                    "run.services.get",
                    "run.services.list",
                    "run.services.create",
                    "run.services.update",
                    "run.services.delete",
                    "run.services.getIamPolicy",
                    "run.services.setIamPolicy",
                    "run.revisions.get",
                    "run.revisions.list",
                    "run.routes.invoke",
                ],
            ),
            (
                "roles/iam.serviceAccountUser",
                &["iam.serviceAccounts.get", "iam.serviceAccounts.list", "iam.serviceAccounts.actAs"],
            ),
            (
                "roles/iam.serviceAccountTokenCreator",
                &["iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.getOpenIdToken"],
            ),
            (
                "roles/vpcaccess.user",
                &["vpcaccess.connectors.get", "vpcaccess.connectors.list", "vpcaccess.connectors.use"],
            ),
            (
                "roles/vpcaccess.admin",
                &[
                    "vpcaccess.connectors.create",
                    "vpcaccess.connectors.get",
                    "vpcaccess.connectors.list",
                    "vpcaccess.connectors.delete",
                    "vpcaccess.connectors.use",
                ],
            ),
            (
                "roles/compute.networkUser",
                &["compute.networks.get", "compute.networks.list", "compute.networks.use", "compute.subnetworks.use"],
            ),
        ];
        for (role, want) in cases {
            let mut got = permissions_of(role);
            let mut want = want.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{role}");
        }
    }

    #[test]
    fn basic_roles() {
        assert!(role_grants("roles/viewer", "run.services.get"));
        assert!(role_grants("roles/viewer", "compute.subnetworks.list"));
        assert!(!role_grants("roles/viewer", "run.routes.invoke"));
        assert!(!role_grants("roles/viewer", "run.services.create"));
        assert!(role_grants("roles/editor", "run.routes.invoke"));
        assert!(role_grants("roles/editor", "iam.serviceAccounts.actAs"));
        assert!(!role_grants("roles/editor", "run.services.setIamPolicy"));
        assert!(!role_grants("roles/editor", "resourcemanager.projects.setIamPolicy"));
        assert!(!role_grants("roles/editor", "runnel.credentials.create"));
        for p in PERMISSIONS {
            assert!(role_grants("roles/owner", p), "owner lacks {p}");
        }
        assert_eq!(permissions_of("roles/iam.serviceAccountAdmin").len(), 12);
        assert!(permissions_of("roles/compute.networkAdmin").iter().all(|p| p.starts_with("compute.")));
    }

    #[test]
    fn unknown_roles_and_permissions_grant_nothing() {
        assert!(!role_grants("roles/nonexistent", "run.routes.invoke"));
        assert!(!role_grants("roles/owner", "run.routes.teleport"));
        assert!(!is_role("roles/run.invokers"));
    }
}
