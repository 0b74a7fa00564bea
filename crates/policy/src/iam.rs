//! IAM evaluation: does a principal hold a permission on a resource?
//!
//! The caller passes every policy that applies (the resource's own, then its project's); the
//! permission is held when any binding in any of them names a role that holds it and a member
//! that matches the principal. Service-account members match only the account with the unique
//! id they were bound to, so a deleted and re-created account does not inherit old grants.
//! Groups have no directory in runnel yet, so a `group:` member never matches; the trace says so.

use runnel_model::iam::{Member, Policy};

use crate::{Decision, Reason, roles};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential at all.
    Anonymous,
    User {
        email: String,
    },
    ServiceAccount {
        email: String,
        unique_id: String,
    },
}

impl Principal {
    /// The member string that names this principal in a binding (`user:…`, `serviceAccount:…`).
    pub fn member(&self) -> String {
        match self {
            Principal::Anonymous => "allUsers".to_string(),
            Principal::User { email } => format!("user:{email}"),
            Principal::ServiceAccount { email, .. } => format!("serviceAccount:{email}"),
        }
    }
}

/// One policy that applies to the request, with the resource it is attached to.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub resource: &'a str,
    pub policy: &'a Policy,
}

/// How one member relates to the principal.
enum Match {
    Yes,
    No,
    /// Names the principal's email but means another account (deleted and re-created).
    StaleAccount {
        bound_uid: String,
    },
    /// A group: runnel cannot resolve membership.
    Group,
}

fn matches(member: &Member, principal: &Principal) -> Match {
    match (member, principal) {
        (Member::AllUsers, _) => Match::Yes,
        (Member::AllAuthenticatedUsers, Principal::Anonymous) => Match::No,
        (Member::AllAuthenticatedUsers, _) => Match::Yes,
        (Member::User(e), Principal::User { email }) if e.eq_ignore_ascii_case(email) => Match::Yes,
        (Member::ServiceAccount { email: e, uid }, Principal::ServiceAccount { email, unique_id })
            if e.eq_ignore_ascii_case(email) =>
        {
            match uid {
                Some(uid) if uid == unique_id => Match::Yes,
                Some(uid) => Match::StaleAccount { bound_uid: uid.clone() },
                // A stored binding always carries a uid; without one it cannot be trusted.
                None => Match::StaleAccount { bound_uid: String::from("unknown") },
            }
        }
        (Member::Deleted { email: e, uid, .. }, Principal::ServiceAccount { email, .. })
            if e.eq_ignore_ascii_case(email) =>
        {
            Match::StaleAccount { bound_uid: uid.clone() }
        }
        (Member::Group(_), _) => Match::Group,
        _ => Match::No,
    }
}

/// Decides whether `principal` holds `permission`, given the policies that apply.
pub fn check(principal: &Principal, permission: &str, scopes: &[Scope<'_>]) -> Decision {
    let who = principal.member();
    let mut trace = Vec::new();
    if !roles::is_permission(permission) {
        trace.push(format!("`{permission}` is not a permission runnel knows, so no role holds it"));
        return Decision::deny(Reason::IamUnknownPermission, trace);
    }
    for scope in scopes {
        let mut holding_roles = 0;
        for (role, members) in scope.policy.parsed_bindings() {
            if !roles::role_grants(role, permission) {
                continue;
            }
            holding_roles += 1;
            for member in &members {
                match matches(member, principal) {
                    Match::Yes => {
                        trace.push(format!("{} grants {role} to {member}, which holds {permission} and includes {who}", scope.resource));
                        return Decision::allow(Reason::IamGranted, trace);
                    }
                    Match::StaleAccount { bound_uid } => trace.push(format!(
                        "{} grants {role} to {member} with unique id {bound_uid}, an account since deleted; it does not apply to the current {who}",
                        scope.resource
                    )),
                    Match::Group => trace.push(format!(
                        "{} grants {role} to {member}; runnel does not resolve group membership, so it does not apply",
                        scope.resource
                    )),
                    Match::No => {}
                }
            }
            trace.push(format!(
                "{} grants {role} (which holds {permission}) to {} member(s), none of them {who}",
                scope.resource,
                members.len()
            ));
        }
        if holding_roles == 0 {
            trace.push(format!("{} has no binding with a role that holds {permission}", scope.resource));
        }
    }
    Decision::deny(Reason::IamNoBinding, trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use runnel_model::iam::Binding;

    const SA: &str = "caller@p.iam.gserviceaccount.com";

    fn sa(uid: &str) -> Principal {
        Principal::ServiceAccount { email: SA.into(), unique_id: uid.into() }
    }

    fn alice() -> Principal {
        Principal::User { email: "alice@example.com".into() }
    }

    fn policy(bindings: &[(&str, &[&str])]) -> Policy {
        Policy {
            version: 1,
            bindings: bindings
                .iter()
                .map(|(r, m)| Binding { role: r.to_string(), members: m.iter().map(|s| s.to_string()).collect() })
                .collect(),
        }
    }

    #[test]
    fn table() {
        let sa_bound = format!("serviceAccount:{SA}?uid=100000000000000000001");
        let sa_deleted = format!("deleted:serviceAccount:{SA}?uid=100000000000000000001");
        struct Case<'a> {
            what: &'a str,
            principal: Principal,
            permission: &'a str,
            service: Policy,
            project: Policy,
            allowed: bool,
            reason: Reason,
            trace_has: &'a str,
        }
        let cases = vec![
            Case {
                what: "invoker on service",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &[&sa_bound])]),
                project: policy(&[]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "grants roles/run.invoker",
            },
            Case {
                what: "invoker on project",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[]),
                project: policy(&[("roles/run.invoker", &[&sa_bound])]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "projects/p grants",
            },
            Case {
                what: "no binding",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "has no binding with a role that holds run.routes.invoke",
            },
            Case {
                what: "wrong role",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.viewer", &[&sa_bound])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "no binding with a role",
            },
            Case {
                what: "recreated account",
                principal: sa("100000000000000000002"),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &[&sa_bound])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "an account since deleted",
            },
            Case {
                what: "deleted member",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &[&sa_deleted])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "an account since deleted",
            },
            Case {
                what: "allUsers admits anonymous",
                principal: Principal::Anonymous,
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &["allUsers"])]),
                project: policy(&[]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "allUsers",
            },
            Case {
                what: "allAuthenticatedUsers refuses anonymous",
                principal: Principal::Anonymous,
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &["allAuthenticatedUsers"])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "none of them allUsers",
            },
            Case {
                what: "allAuthenticatedUsers admits a user",
                principal: alice(),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &["allAuthenticatedUsers"])]),
                project: policy(&[]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "allAuthenticatedUsers",
            },
            Case {
                what: "user by email, any case",
                principal: alice(),
                permission: "run.services.get",
                service: policy(&[]),
                project: policy(&[("roles/viewer", &["user:Alice@Example.com"])]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "roles/viewer",
            },
            Case {
                what: "group never resolves",
                principal: alice(),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &["group:devs@example.com"])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "does not resolve group membership",
            },
            Case {
                what: "owner holds invoke",
                principal: alice(),
                permission: "run.routes.invoke",
                service: policy(&[]),
                project: policy(&[("roles/owner", &["user:alice@example.com"])]),
                allowed: true,
                reason: Reason::IamGranted,
                trace_has: "roles/owner",
            },
            Case {
                what: "editor cannot set policy",
                principal: alice(),
                permission: "run.services.setIamPolicy",
                service: policy(&[]),
                project: policy(&[("roles/editor", &["user:alice@example.com"])]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "no binding",
            },
            Case {
                what: "unknown permission",
                principal: alice(),
                permission: "run.routes.teleport",
                service: policy(&[]),
                project: policy(&[("roles/owner", &["user:alice@example.com"])]),
                allowed: false,
                reason: Reason::IamUnknownPermission,
                trace_has: "not a permission runnel knows",
            },
            Case {
                what: "sa email as user does not match",
                principal: Principal::User { email: SA.into() },
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &[&sa_bound])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "none of them user:",
            },
            Case {
                what: "unbound uid never matches",
                principal: sa("100000000000000000001"),
                permission: "run.routes.invoke",
                service: policy(&[("roles/run.invoker", &[&format!("serviceAccount:{SA}")])]),
                project: policy(&[]),
                allowed: false,
                reason: Reason::IamNoBinding,
                trace_has: "unknown",
            },
        ];
        for c in cases {
            let scopes = [
                Scope { resource: "projects/p/locations/l/services/receiver", policy: &c.service },
                Scope { resource: "projects/p", policy: &c.project },
            ];
            let d = check(&c.principal, c.permission, &scopes);
            assert_eq!((d.allowed, d.reason), (c.allowed, c.reason), "{}: {:?}", c.what, d.trace);
            assert!(
                d.trace.iter().any(|t| t.contains(c.trace_has)),
                "{}: trace {:?} lacks {:?}",
                c.what,
                d.trace,
                c.trace_has
            );
        }
    }

    fn arb_member() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("allUsers".to_string()),
            Just("allAuthenticatedUsers".to_string()),
            Just("user:alice@example.com".to_string()),
            Just("user:bob@example.com".to_string()),
            Just("group:devs@example.com".to_string()),
            Just(format!("serviceAccount:{SA}?uid=1")),
            Just(format!("serviceAccount:{SA}?uid=2")),
            Just(format!("deleted:serviceAccount:{SA}?uid=1")),
        ]
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        let role = proptest::sample::select(roles::role_names().collect::<Vec<_>>());
        proptest::collection::vec((role, proptest::collection::vec(arb_member(), 0..4)), 0..5).prop_map(|bs| Policy {
            version: 1,
            bindings: bs.into_iter().map(|(r, m)| Binding { role: r.to_string(), members: m }).collect(),
        })
    }

    fn arb_principal() -> impl Strategy<Value = Principal> {
        prop_oneof![Just(Principal::Anonymous), Just(alice()), Just(sa("1")), Just(sa("2"))]
    }

    fn arb_permission() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(roles::PERMISSIONS.to_vec())
    }

    proptest! {
        /// The verdict agrees with a direct reading of the policies: some binding whose role
        /// holds the permission has a member that is exactly this principal, or a public one.
        #[test]
        fn agrees_with_a_naive_model(p in arb_principal(), perm in arb_permission(), a in arb_policy(), b in arb_policy()) {
            let scopes = [Scope { resource: "r", policy: &a }, Scope { resource: "projects/p", policy: &b }];
            let d = check(&p, perm, &scopes);
            let naive = [&a, &b].iter().any(|pol| pol.bindings.iter().any(|bd| roles::role_grants(&bd.role, perm) && bd.members.iter().any(|m| match (m.as_str(), &p) {
                ("allUsers", _) => true,
                ("allAuthenticatedUsers", Principal::Anonymous) => false,
                ("allAuthenticatedUsers", _) => true,
                (m, Principal::User { email }) => m == format!("user:{email}"),
                (m, Principal::ServiceAccount { email, unique_id }) => m == format!("serviceAccount:{email}?uid={unique_id}"),
                _ => false,
            })));
            prop_assert_eq!(d.allowed, naive);
            prop_assert_eq!(d.reason, if naive { Reason::IamGranted } else { Reason::IamNoBinding });
        }

        /// Adding a binding never takes a permission away.
        #[test]
        fn adding_bindings_is_monotonic(p in arb_principal(), perm in arb_permission(), a in arb_policy(), extra in arb_policy()) {
            let before = check(&p, perm, &[Scope { resource: "r", policy: &a }]).allowed;
            let mut more = a.clone();
            more.bindings.extend(extra.bindings);
            let after = check(&p, perm, &[Scope { resource: "r", policy: &more }]).allowed;
            prop_assert!(!before || after);
        }

        /// Which policy is attached where does not change the verdict.
        #[test]
        fn scope_order_does_not_matter(p in arb_principal(), perm in arb_permission(), a in arb_policy(), b in arb_policy()) {
            let ab = check(&p, perm, &[Scope { resource: "a", policy: &a }, Scope { resource: "b", policy: &b }]);
            let ba = check(&p, perm, &[Scope { resource: "b", policy: &b }, Scope { resource: "a", policy: &a }]);
            prop_assert_eq!(ab.allowed, ba.allowed);
        }

        /// Anonymous callers get in only through `allUsers`.
        #[test]
        fn anonymous_needs_all_users(perm in arb_permission(), a in arb_policy()) {
            let d = check(&Principal::Anonymous, perm, &[Scope { resource: "r", policy: &a }]);
            let via_all_users = a.bindings.iter().any(|b| roles::role_grants(&b.role, perm) && b.members.iter().any(|m| m == "allUsers"));
            prop_assert_eq!(d.allowed, via_all_users);
        }
    }
}
