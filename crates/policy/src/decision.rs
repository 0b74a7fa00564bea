use std::fmt;

use serde::Serialize;

/// Why a decision came out the way it did. The code (`Display`) is stable: it appears in logs,
/// metrics, the troubleshooter and the docs, and tests assert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    /// A binding on the resource or its project grants the permission to the principal.
    IamGranted,
    /// No binding grants the permission to the principal.
    IamNoBinding,
    /// The permission is not one runnel knows; nobody holds it.
    IamUnknownPermission,
    /// Ingress `all` admits every origin.
    IngressAll,
    /// An internal-only service admits a request that came through a VPC network of its project.
    IngressInternalFromVpc,
    /// An internal-only service refuses a request that came from the internet (or left a caller directly).
    IngressInternalOnlyFromInternet,
    /// An internal-only service refuses a request from a VPC network of another project.
    IngressInternalOnlyOtherProject,
    /// `internal-and-cloud-load-balancing` refuses internet traffic; runnel has no load balancers yet, so it admits what `internal` admits.
    IngressInternalLbFromInternet,
    /// The service's default URL is disabled: it answers 404 to everyone.
    IngressDefaultUrlDisabled,
    /// The request leaves the caller directly and arrives as internet traffic.
    EgressDirect,
    /// The request goes through the caller's VPC network and arrives as internal traffic.
    EgressVpc,
    /// With `private-ranges-only`, a call to a service URL (a public name) leaves directly, not through the connector, and arrives as internet traffic.
    EgressPrivateRangesOnlyServiceUrlLeftDirectly,
    /// The call to a service URL goes through the VPC, but the subnet it leaves from has no Private Google Access.
    EgressNoPrivateGoogleAccess,
    /// A private destination is reachable only through a connector or Direct VPC egress, and the caller has neither.
    EgressNoVpcAccessPrivateDestination,
    /// The private destination is in a VPC network the caller is not attached to.
    EgressOtherNetwork,
    /// The destination is loopback, link-local, unspecified, reserved, multicast, a NAT64 form that hides its target, or one of runnel's own listeners.
    EgressForbiddenDestination,
    /// The destination name is neither a service URL nor a name registered in a VPC network, and runnel does not resolve other names.
    EgressUnresolvable,
    /// `allUsers` holds `run.routes.invoke`: no token is needed.
    InvokerAllUsers,
    /// The service's invoker IAM check is disabled: no token is needed.
    InvokerCheckDisabled,
    /// The ID token is valid for this service.
    TokenValid,
    /// No ID token was sent.
    TokenMissing,
    /// More than one token was sent.
    TokenMultiple,
    /// The token is not a well-formed JWT.
    TokenMalformed,
    /// The token's signature does not verify with runnel's key.
    TokenBadSignature,
    /// The token names a key runnel does not publish.
    TokenUnknownKey,
    /// The token has expired.
    TokenExpired,
    /// The token is not valid yet.
    TokenNotYetValid,
    /// The token was not issued by this runnel.
    TokenWrongIssuer,
    /// The token's audience is not one of the service's URLs or custom audiences.
    TokenAudienceMismatch,
    /// An access token was sent where an ID token is needed.
    TokenAccessTokenNotIdToken,
    /// The principal a credential was issued to still exists and is enabled.
    PrincipalActive,
    /// The token's service account is disabled.
    PrincipalDisabled,
    /// The token's service account no longer exists (or was re-created with another unique id).
    PrincipalDeleted,
}

impl Reason {
    /// Every reason, for docs and exhaustive tests.
    pub const ALL: &'static [Reason] = &[
        Reason::IamGranted,
        Reason::IamNoBinding,
        Reason::IamUnknownPermission,
        Reason::IngressAll,
        Reason::IngressInternalFromVpc,
        Reason::IngressInternalOnlyFromInternet,
        Reason::IngressInternalOnlyOtherProject,
        Reason::IngressInternalLbFromInternet,
        Reason::IngressDefaultUrlDisabled,
        Reason::EgressDirect,
        Reason::EgressVpc,
        Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly,
        Reason::EgressNoPrivateGoogleAccess,
        Reason::EgressNoVpcAccessPrivateDestination,
        Reason::EgressOtherNetwork,
        Reason::EgressForbiddenDestination,
        Reason::EgressUnresolvable,
        Reason::InvokerAllUsers,
        Reason::InvokerCheckDisabled,
        Reason::TokenValid,
        Reason::TokenMissing,
        Reason::TokenMultiple,
        Reason::TokenMalformed,
        Reason::TokenBadSignature,
        Reason::TokenUnknownKey,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenWrongIssuer,
        Reason::TokenAudienceMismatch,
        Reason::TokenAccessTokenNotIdToken,
        Reason::PrincipalActive,
        Reason::PrincipalDisabled,
        Reason::PrincipalDeleted,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::IamGranted => "iam.granted",
            Reason::IamNoBinding => "iam.no_binding",
            Reason::IamUnknownPermission => "iam.unknown_permission",
            Reason::IngressAll => "ingress.all",
            Reason::IngressInternalFromVpc => "ingress.internal.from_vpc",
            Reason::IngressInternalOnlyFromInternet => "ingress.internal_only.from_internet",
            Reason::IngressInternalOnlyOtherProject => "ingress.internal_only.other_project",
            Reason::IngressInternalLbFromInternet => "ingress.internal_and_cloud_load_balancing.from_internet",
            Reason::IngressDefaultUrlDisabled => "ingress.default_url_disabled",
            Reason::EgressDirect => "egress.direct",
            Reason::EgressVpc => "egress.vpc",
            Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly => {
                "egress.private_ranges_only.service_url_left_directly"
            }
            Reason::EgressNoPrivateGoogleAccess => "egress.no_private_google_access",
            Reason::EgressNoVpcAccessPrivateDestination => "egress.no_vpc_access.private_destination",
            Reason::EgressOtherNetwork => "egress.other_network",
            Reason::EgressForbiddenDestination => "egress.forbidden_destination",
            Reason::EgressUnresolvable => "egress.unresolvable",
            Reason::InvokerAllUsers => "invoker.all_users",
            Reason::InvokerCheckDisabled => "invoker.check_disabled",
            Reason::TokenValid => "token.valid",
            Reason::TokenMissing => "token.missing",
            Reason::TokenMultiple => "token.multiple",
            Reason::TokenMalformed => "token.malformed",
            Reason::TokenBadSignature => "token.bad_signature",
            Reason::TokenUnknownKey => "token.unknown_key",
            Reason::TokenExpired => "token.expired",
            Reason::TokenNotYetValid => "token.not_yet_valid",
            Reason::TokenWrongIssuer => "token.wrong_issuer",
            Reason::TokenAudienceMismatch => "token.audience_mismatch",
            Reason::TokenAccessTokenNotIdToken => "token.access_token_not_id_token",
            Reason::PrincipalActive => "principal.active",
            Reason::PrincipalDisabled => "principal.disabled",
            Reason::PrincipalDeleted => "principal.deleted",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A verdict with its reason and the steps that led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// One line per fact considered, in order, for people.
    pub trace: Vec<String>,
}

impl Decision {
    pub fn allow(reason: Reason, trace: Vec<String>) -> Self {
        Self { allowed: true, reason, trace }
    }

    pub fn deny(reason: Reason, trace: Vec<String>) -> Self {
        Self { allowed: false, reason, trace }
    }
}
