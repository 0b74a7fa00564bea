//! IAM policies, bindings and members, as stored and as shown.
//!
//! A binding names a service account by email but means the account that had that email when
//! the binding was made: runnel stores `serviceAccount:EMAIL?uid=UNIQUE_ID`. When the account is
//! deleted and a new one created under the same email, the old binding no longer matches and is
//! shown as `deleted:serviceAccount:EMAIL?uid=UNIQUE_ID`, as Google IAM does.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// One member of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    AllUsers,
    AllAuthenticatedUsers,
    User(String),
    Group(String),
    /// A service account as it was when bound. `uid` is `None` only while a policy sent by a
    /// user is being resolved; stored policies always carry it.
    ServiceAccount {
        email: String,
        uid: Option<String>,
    },
    /// A principal that was deleted; kept so a policy can round-trip, never matches anyone.
    Deleted {
        kind: String,
        email: String,
        uid: String,
    },
}

impl Member {
    /// Parses a member as a user writes it.
    pub fn parse(value: &str) -> Result<Member, Invalid> {
        let field = "bindings.members";
        let hint =
            "members are `allUsers`, `allAuthenticatedUsers`, `user:EMAIL`, `group:EMAIL` or `serviceAccount:EMAIL`";
        match value {
            "allUsers" => return Ok(Member::AllUsers),
            "allAuthenticatedUsers" => return Ok(Member::AllAuthenticatedUsers),
            _ => {}
        }
        let Some((kind, rest)) = value.split_once(':') else {
            return Err(Invalid::new(field, format!("member `{value}` has no type; {hint}")));
        };
        if kind == "deleted" {
            let (inner_kind, inner) = rest.split_once(':').ok_or_else(|| {
                Invalid::new(
                    field,
                    format!(
                        "member `{value}` is not a deleted principal of the form `deleted:serviceAccount:EMAIL?uid=ID`"
                    ),
                )
            })?;
            let (email, uid) = inner
                .split_once("?uid=")
                .ok_or_else(|| Invalid::new(field, format!("member `{value}` is missing its `?uid=` part")))?;
            check_email(field, value, email)?;
            if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Invalid::new(field, format!("member `{value}` has a uid that is not a number")));
            }
            return Ok(Member::Deleted {
                kind: inner_kind.to_string(),
                email: email.to_ascii_lowercase(),
                uid: uid.to_string(),
            });
        }
        match kind {
            "user" | "group" | "serviceAccount" => {}
            "domain" | "principal" | "principalSet" => {
                return Err(Invalid::new(
                    field,
                    format!("member type `{kind}` is not supported by runnel yet; {hint}"),
                ));
            }
            _ => {
                return Err(Invalid::new(field, format!("member type `{kind}` in `{value}` is unknown; {hint}")));
            }
        }
        let (email, uid) = match rest.split_once("?uid=") {
            Some((e, u)) => (e, Some(u.to_string())),
            None => (rest, None),
        };
        check_email(field, value, email)?;
        let email = email.to_ascii_lowercase();
        match (kind, uid) {
            ("user", None) => Ok(Member::User(email)),
            ("group", None) => Ok(Member::Group(email)),
            ("serviceAccount", uid) => Ok(Member::ServiceAccount { email, uid }),
            _ => Err(Invalid::new(field, format!("member `{value}`: only service accounts carry a `?uid=`"))),
        }
    }

    /// The stored form: service accounts always carry their uid.
    pub fn stored(&self) -> String {
        match self {
            Member::ServiceAccount { email, uid: Some(uid) } => format!("serviceAccount:{email}?uid={uid}"),
            other => other.to_string(),
        }
    }

    /// The form shown to users, given the uid the account with this email has now (if any).
    pub fn shown(&self, current_uid: impl Fn(&str) -> Option<String>) -> String {
        match self {
            Member::ServiceAccount { email, uid: Some(uid) } if current_uid(email).as_deref() != Some(uid.as_str()) => {
                format!("deleted:serviceAccount:{email}?uid={uid}")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::AllUsers => write!(f, "allUsers"),
            Member::AllAuthenticatedUsers => write!(f, "allAuthenticatedUsers"),
            Member::User(e) => write!(f, "user:{e}"),
            Member::Group(e) => write!(f, "group:{e}"),
            Member::ServiceAccount { email, .. } => write!(f, "serviceAccount:{email}"),
            Member::Deleted { kind, email, uid } => write!(f, "deleted:{kind}:{email}?uid={uid}"),
        }
    }
}

fn check_email(field: &str, member: &str, email: &str) -> Result<(), Invalid> {
    let ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && email.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b':' && b != b'/')
                && email.matches('@').count() == 1
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(field, format!("member `{member}` does not contain a valid email address")))
    }
}

/// A binding as stored: a role and its members in stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Binding {
    pub role: String,
    pub members: Vec<String>,
}

/// A policy as stored. `version` counts every change; the etag shown to users derives from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Policy {
    pub version: u64,
    pub bindings: Vec<Binding>,
}

impl Policy {
    /// Parsed members of every binding, skipping (never matching) any that fails to parse.
    pub fn parsed_bindings(&self) -> impl Iterator<Item = (&str, Vec<Member>)> {
        self.bindings
            .iter()
            .map(|b| (b.role.as_str(), b.members.iter().filter_map(|m| Member::parse(m).ok()).collect()))
    }

    /// Adds a member to a role, keeping bindings sorted and free of duplicates.
    pub fn add(&mut self, role: &str, member: &Member) {
        let stored = member.stored();
        match self.bindings.iter_mut().find(|b| b.role == role) {
            Some(b) => {
                if !b.members.contains(&stored) {
                    b.members.push(stored);
                    b.members.sort();
                }
            }
            None => {
                self.bindings.push(Binding { role: role.to_string(), members: vec![stored] });
                self.bindings.sort_by(|a, b| a.role.cmp(&b.role));
            }
        }
    }

    /// Removes a member (matched by what is shown to the user) from a role; returns whether it
    /// was there.
    pub fn remove(&mut self, role: &str, shown_member: &str, shown: impl Fn(&str) -> String) -> bool {
        let mut removed = false;
        for b in self.bindings.iter_mut().filter(|b| b.role == role) {
            let before = b.members.len();
            b.members.retain(|m| shown(m) != shown_member && m != shown_member);
            removed |= b.members.len() != before;
        }
        self.bindings.retain(|b| !b.members.is_empty());
        removed
    }
}

/// A policy as sent and received on the wire (IAM v1 `Policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WirePolicy {
    #[serde(default)]
    pub version: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<WireBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_configs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireBinding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
}

impl WirePolicy {
    /// Checks what can be checked without knowing the project: versions, conditions, roles
    /// being non-empty, members parsing. Returns the parsed members per binding.
    pub fn parse(&self) -> Result<Vec<(String, Vec<Member>)>, Invalid> {
        if ![0, 1, 3].contains(&self.version) {
            return Err(Invalid::new(
                "policy.version",
                format!("policy version `{}` is not valid; use 1 or 3", self.version),
            ));
        }
        if self.audit_configs.is_some() {
            return Err(Invalid::new(
                "policy.auditConfigs",
                "audit configs are not supported by runnel; remove the `auditConfigs` field",
            ));
        }
        let mut out = Vec::with_capacity(self.bindings.len());
        for b in &self.bindings {
            if b.condition.is_some() {
                return Err(Invalid::new(
                    "policy.bindings.condition",
                    format!(
                        "the binding for `{}` has a condition; runnel does not support IAM conditions yet, so it refuses the policy rather than grant more than you meant; remove the condition",
                        b.role
                    ),
                ));
            }
            if b.role.is_empty() {
                return Err(Invalid::new(
                    "policy.bindings.role",
                    "a binding has no role; name one, such as `roles/run.invoker`",
                ));
            }
            let members = b.members.iter().map(|m| Member::parse(m)).collect::<Result<Vec<_>, _>>()?;
            out.push((b.role.clone(), members));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        let ok: &[(&str, Member)] = &[
            ("allUsers", Member::AllUsers),
            ("allAuthenticatedUsers", Member::AllAuthenticatedUsers),
            ("user:Alice@Example.com", Member::User("alice@example.com".into())),
            ("group:devs@example.com", Member::Group("devs@example.com".into())),
            (
                "serviceAccount:caller@p.iam.gserviceaccount.com",
                Member::ServiceAccount { email: "caller@p.iam.gserviceaccount.com".into(), uid: None },
            ),
            (
                "deleted:serviceAccount:caller@p.iam.gserviceaccount.com?uid=123",
                Member::Deleted {
                    kind: "serviceAccount".into(),
                    email: "caller@p.iam.gserviceaccount.com".into(),
                    uid: "123".into(),
                },
            ),
        ];
        for (text, want) in ok {
            assert_eq!(Member::parse(text).as_ref(), Ok(want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "alice@example.com",
                "bindings.members: member `alice@example.com` has no type; members are `allUsers`, `allAuthenticatedUsers`, `user:EMAIL`, `group:EMAIL` or `serviceAccount:EMAIL`",
            ),
            ("user:alice", "bindings.members: member `user:alice` does not contain a valid email address"),
            (
                "robot:x@y.com",
                "bindings.members: member type `robot` in `robot:x@y.com` is unknown; members are `allUsers`, `allAuthenticatedUsers`, `user:EMAIL`, `group:EMAIL` or `serviceAccount:EMAIL`",
            ),
            (
                "domain:example.com",
                "bindings.members: member type `domain` is not supported by runnel yet; members are `allUsers`, `allAuthenticatedUsers`, `user:EMAIL`, `group:EMAIL` or `serviceAccount:EMAIL`",
            ),
            (
                "deleted:serviceAccount:a@b.com",
                "bindings.members: member `deleted:serviceAccount:a@b.com` is missing its `?uid=` part",
            ),
            (
                "user:a@b.com?uid=1",
                "bindings.members: member `user:a@b.com?uid=1`: only service accounts carry a `?uid=`",
            ),
        ];
        for (text, want) in bad {
            assert_eq!(Member::parse(text).err().map(|e| e.to_string()).as_deref(), Some(*want), "{text}");
        }
    }

    #[test]
    fn recreated_account_shows_as_deleted() {
        let m = Member::ServiceAccount { email: "a@p.iam.gserviceaccount.com".into(), uid: Some("111".into()) };
        assert_eq!(m.stored(), "serviceAccount:a@p.iam.gserviceaccount.com?uid=111");
        assert_eq!(m.shown(|_| Some("111".into())), "serviceAccount:a@p.iam.gserviceaccount.com");
        assert_eq!(m.shown(|_| Some("222".into())), "deleted:serviceAccount:a@p.iam.gserviceaccount.com?uid=111");
        assert_eq!(m.shown(|_| None), "deleted:serviceAccount:a@p.iam.gserviceaccount.com?uid=111");
    }

    #[test]
    fn conditions_are_refused() {
        let p: WirePolicy = serde_json::from_value(serde_json::json!({
            "version": 3,
            "bindings": [{"role": "roles/run.invoker", "members": ["allUsers"], "condition": {"expression": "true"}}]
        }))
        .unwrap_or_default();
        let err = p.parse().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("policy.bindings.condition: the binding for `roles/run.invoker` has a condition"),
            "{err}"
        );
    }

    #[test]
    fn add_and_remove_keep_policy_tidy() {
        let mut p = Policy::default();
        let alice = Member::User("alice@example.com".into());
        p.add("roles/run.invoker", &alice);
        p.add("roles/run.invoker", &alice);
        p.add("roles/owner", &alice);
        assert_eq!(p.bindings.len(), 2);
        assert_eq!(p.bindings[0].role, "roles/owner");
        assert_eq!(p.bindings[1].members, vec!["user:alice@example.com".to_string()]);
        assert!(p.remove("roles/run.invoker", "user:alice@example.com", |m| m.to_string()));
        assert!(!p.remove("roles/run.invoker", "user:alice@example.com", |m| m.to_string()));
        assert_eq!(p.bindings.len(), 1);
    }
}
