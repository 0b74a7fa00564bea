//! Whether a principal a credential was issued to still stands: the one rule behind every place
//! that accepts something minted earlier (an ID token at the frontend, an access token at the
//! API, a token request at the metadata server).
//!
//! A credential names its service account by the unique id the account had when it was
//! minted. The account is looked up again on every use, and the credential stands only if the
//! account found is that same account (same unique id, and the email the credential carries)
//! and is enabled. So a disabled account, a deleted one, and one deleted and re-created under
//! the same email (a new unique id) all stop working at once, for credentials already issued
//! too. A person's credentials stand as long as one of their runnel credentials does.

use runnel_model::service_account::ServiceAccount;

use crate::{Decision, Reason};

/// A service account as the store has it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account<'a> {
    pub unique_id: &'a str,
    pub email: &'a str,
    pub disabled: bool,
}

impl<'a> From<&'a ServiceAccount> for Account<'a> {
    fn from(a: &'a ServiceAccount) -> Self {
        Account { unique_id: &a.unique_id, email: &a.email, disabled: a.disabled }
    }
}

/// The service account a credential was issued to, as the credential names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedTo<'a> {
    pub unique_id: &'a str,
    /// The email the credential carries, when it carries one (an ID token's `email`).
    pub email: Option<&'a str>,
}

/// Whether a credential issued to `issued` may act as that account, given what the store holds
/// now (`current`: the account found under the credential's unique id or email, if any).
pub fn service_account(issued: IssuedTo<'_>, current: Option<Account<'_>>) -> Decision {
    refuses_service_account(issued, current).unwrap_or_else(|| {
        Decision::allow(
            Reason::PrincipalActive,
            vec![format!(
                "service account `{}` (unique id {}) exists and is enabled",
                current.map_or("", |a| a.email),
                issued.unique_id
            )],
        )
    })
}

/// [`service_account`]'s refusal, or `None` when the credential stands: the form for the
/// request path, which builds no trace for a credential that stands.
pub fn refuses_service_account(issued: IssuedTo<'_>, current: Option<Account<'_>>) -> Option<Decision> {
    // Made only for a refusal: this runs on every request that carries a token.
    let label = || issued.email.map_or_else(|| format!("unique id {}", issued.unique_id), |e| format!("`{e}`"));
    let Some(account) = current else {
        let label = label();
        return Some(Decision::deny(
            Reason::PrincipalDeleted,
            vec![format!(
                "service account {label} no longer exists; its credentials stopped working when it was deleted. Use an existing account (`runnel run deploy SERVICE --service-account=ACCOUNT`)"
            )],
        ));
    };
    if account.unique_id != issued.unique_id {
        return Some(Decision::deny(
            Reason::PrincipalDeleted,
            vec![format!(
                "service account `{}` was deleted and re-created: the account under that email now has unique id {}, the credential was issued to unique id {}, and credentials and bindings of the old account do not carry over. Get a new credential, and grant the new account its roles again",
                account.email, account.unique_id, issued.unique_id
            )],
        ));
    }
    // Emails compare without case; the same bytes, the usual case, are found equal at once.
    if issued.email.is_some_and(|e| e != account.email && !e.eq_ignore_ascii_case(account.email)) {
        let label = label();
        return Some(Decision::deny(
            Reason::PrincipalDeleted,
            vec![format!(
                "the credential's email {label} is no longer that of its account (unique id {}, now `{}`); get a new credential",
                account.unique_id, account.email
            )],
        ));
    }
    if account.disabled {
        return Some(Decision::deny(
            Reason::PrincipalDisabled,
            vec![format!(
                "service account `{email}` is disabled, so its credentials do not work until it is enabled again (`runnel iam service-accounts enable {email}`)",
                email = account.email
            )],
        ));
    }
    None
}

/// Whether a credential issued to the person `email` may still act as them: only while they
/// hold a runnel credential.
pub fn person(email: &str, holds_credential: bool) -> Decision {
    refuses_person(email, holds_credential).unwrap_or_else(|| {
        Decision::allow(Reason::PrincipalActive, vec![format!("`user:{email}` holds a runnel credential")])
    })
}

/// [`person`]'s refusal, or `None` when the person's credentials stand.
pub fn refuses_person(email: &str, holds_credential: bool) -> Option<Decision> {
    (!holds_credential).then(|| {
        Decision::deny(Reason::PrincipalDeleted, vec![format!(
            "`user:{email}` holds no runnel credential any more (all were revoked), so the tokens runnel gave them no longer work; an owner can issue a new one (`runnel auth credentials create --member=user:{email}`)"
        )])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "112233445566778899001";

    fn account(unique_id: &'static str, email: &'static str, disabled: bool) -> Option<Account<'static>> {
        Some(Account { unique_id, email, disabled })
    }

    #[test]
    fn a_credential_stands_only_for_the_same_enabled_account() {
        let caller = "caller@p.iam.gserviceaccount.com";
        let with_email = IssuedTo { unique_id: ID, email: Some(caller) };
        let without_email = IssuedTo { unique_id: ID, email: None };
        let cases = [
            ("the same account", with_email, account(ID, caller, false), true, Reason::PrincipalActive),
            (
                "email in another case",
                with_email,
                account(ID, "Caller@p.iam.gserviceaccount.com", false),
                true,
                Reason::PrincipalActive,
            ),
            ("no email to compare", without_email, account(ID, caller, false), true, Reason::PrincipalActive),
            ("disabled", with_email, account(ID, caller, true), false, Reason::PrincipalDisabled),
            ("deleted", with_email, None, false, Reason::PrincipalDeleted),
            ("deleted, no email", without_email, None, false, Reason::PrincipalDeleted),
            (
                "re-created",
                with_email,
                account("998877665544332211009", caller, false),
                false,
                Reason::PrincipalDeleted,
            ),
            (
                "re-created and disabled",
                with_email,
                account("998877665544332211009", caller, true),
                false,
                Reason::PrincipalDeleted,
            ),
            (
                "its email now another's",
                with_email,
                account(ID, "other@p.iam.gserviceaccount.com", false),
                false,
                Reason::PrincipalDeleted,
            ),
        ];
        for (what, issued, current, allowed, reason) in cases {
            let decision = service_account(issued, current);
            assert_eq!((decision.allowed, decision.reason), (allowed, reason), "{what}: {:?}", decision.trace);
            assert!(!decision.trace.is_empty(), "{what}: a decision says why");
            assert_eq!(refuses_service_account(issued, current), (!allowed).then_some(decision), "{what}");
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let caller = "caller@p.iam.gserviceaccount.com";
        let issued = IssuedTo { unique_id: ID, email: Some(caller) };
        let disabled = service_account(issued, account(ID, caller, true));
        assert!(
            disabled.trace[0].contains(&format!("runnel iam service-accounts enable {caller}")),
            "{:?}",
            disabled.trace
        );
        let recreated = service_account(issued, account("998877665544332211009", caller, false));
        assert!(recreated.trace[0].contains("re-created"), "{:?}", recreated.trace);
        let gone = person("ana@example.com", false);
        assert_eq!((gone.allowed, gone.reason), (false, Reason::PrincipalDeleted));
        assert!(gone.trace[0].contains("runnel auth credentials create --member=user:ana@example.com"));
        let here = person("ana@example.com", true);
        assert_eq!((here.allowed, here.reason), (true, Reason::PrincipalActive));
        assert_eq!(refuses_person("ana@example.com", false), Some(gone));
        assert_eq!(refuses_person("ana@example.com", true), None);
    }
}
