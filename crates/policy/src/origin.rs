//! Where a request comes from, as the receiving service's ingress setting sees it.
//!
//! An origin is a fact about the **path** a request took, never about what it says:
//! - the frontend listener sets [`Origin::Internet`] with no caller for everything that arrives on
//!   it, whatever its headers (`X-Forwarded-For`, `Forwarded`, anything runnel-specific) claim;
//! - an instance's egress proxy hands a call to another service to the frontend in-process, with
//!   the origin that [`crate::egress::route`] decided: [`Origin::Internet`] with the caller when
//!   the call left directly, or [`Origin::Vpc`] when it went through the caller's VPC network.
//!
//! **Only the egress path may construct [`Origin::Vpc`]**, with one audited exception: an
//! operator proxy (`runnel run services proxy --network=NET`), made by [`Origin::operator_proxy`]
//! only after the principal's `compute.networks.use` check on that network passed — the same
//! permission that lets someone attach a workload to the network on Google Cloud. A VPC origin
//! is what `--ingress=internal` admits, so anything else that could make one (a header parser, a
//! config file, a deserializer) would be a way around internal-only ingress. The type enforces
//! this: `Origin::Vpc` carries a [`Sealed`] field that only this crate can make, and only
//! `egress::route` and `Origin::operator_proxy` make it; `Origin` implements `Serialize` for logs
//! but deliberately not `Deserialize`.
//!
//! This module must never read a request, a header or a socket: it only describes an origin.

use std::fmt;

use serde::Serialize;

use crate::iam::{self, Principal, Scope};
use crate::{Decision, Reason};

/// The permission a principal needs on a network to have its requests enter it through an
/// operator proxy.
pub const NETWORK_USE: &str = "compute.networks.use";

/// The instance whose egress proxy handled the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The calling service's name (not its full resource name), as in `K_SERVICE`.
    pub service: String,
    /// The calling revision's name, as in `K_REVISION`.
    pub revision: String,
    pub region: String,
    /// How the caller's egress proxy routed the call (`EgressDirect`, `EgressVpc`,
    /// `EgressPrivateRangesOnlyServiceUrlLeftDirectly`), so that a refusal at the receiver can
    /// name the caller's setting that caused it. `None` until [`crate::egress::route`] sets it.
    pub egress: Option<Reason>,
}

impl Caller {
    /// A caller whose call has not been routed yet.
    pub fn new(service: impl Into<String>, revision: impl Into<String>, region: impl Into<String>) -> Self {
        Self { service: service.into(), revision: revision.into(), region: region.into(), egress: None }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service `{}` (revision `{}`, region `{}`)", self.service, self.revision, self.region)
    }
}

/// How a caller reaches its VPC network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Via {
    /// A Serverless VPC Access connector, by full name
    /// (`projects/P/locations/R/connectors/C`).
    Connector(String),
    /// Direct VPC egress on a subnet, by full name (`projects/P/regions/R/subnetworks/S`).
    Subnet(String),
    /// An operator proxy that the daemon opened for a principal holding `compute.networks.use`
    /// on the network (`runnel run services proxy --network`); the member, e.g. `user:…`.
    OperatorProxy { principal: String },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Connector(name) => write!(f, "connector `{name}`"),
            Via::Subnet(name) => write!(f, "Direct VPC egress on subnet `{name}`"),
            Via::OperatorProxy { principal } => {
                write!(f, "an operator proxy for `{principal}` (`runnel run services proxy --network`)")
            }
        }
    }
}

/// Proof that an [`Origin::Vpc`] was made by the egress path. It has no public constructor, so
/// code outside this crate can match a VPC origin (with `..`) but never build one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sealed(());

impl Sealed {
    /// Only [`crate::egress::route`], [`Origin::operator_proxy`] (and this crate's tests) may
    /// call this.
    pub(crate) fn by_egress() -> Self {
        Sealed(())
    }
}

/// Where a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Origin {
    /// From the internet: it arrived on the frontend listener (`caller: None`), or an instance's
    /// egress proxy let it leave directly (`caller: Some`, with `caller.egress` saying why).
    Internet { caller: Option<Caller> },
    /// Through a VPC network: an instance's egress proxy routed it through the caller's connector
    /// or Direct VPC egress, or an operator proxy let it in. Only [`crate::egress::route`] and
    /// [`Origin::operator_proxy`] make one (see the module docs).
    Vpc {
        /// The project that owns `network`; internal ingress compares it with the receiving
        /// service's project.
        project: String,
        /// The network's full name (`projects/P/global/networks/N`).
        network: String,
        via: Via,
        /// The calling instance; `None` for an operator proxy, where a person (or a service
        /// account outside runnel) is the caller, named in `via`.
        caller: Option<Caller>,
        #[serde(skip_serializing)]
        sealed: Sealed,
    },
}

impl Origin {
    /// The origin the frontend listener gives every request that arrives on it.
    pub fn internet() -> Self {
        Origin::Internet { caller: None }
    }

    /// The origin of requests on an operator proxy that `principal` opened into `network`
    /// (`projects/P/global/networks/N`, owned by `project`): made only if `principal` holds
    /// [`NETWORK_USE`] through `scopes` (the network's and its project's policies); otherwise the
    /// refusing decision. The one way besides [`crate::egress::route`] to make a VPC origin.
    pub fn operator_proxy(
        principal: &Principal,
        project: &str,
        network: &str,
        scopes: &[Scope<'_>],
    ) -> Result<Origin, Decision> {
        let decision = iam::check(principal, NETWORK_USE, scopes);
        if !decision.allowed {
            return Err(decision);
        }
        Ok(Origin::Vpc {
            project: project.to_string(),
            network: network.to_string(),
            via: Via::OperatorProxy { principal: principal.member() },
            caller: None,
            sealed: Sealed::by_egress(),
        })
    }

    pub fn is_vpc(&self) -> bool {
        matches!(self, Origin::Vpc { .. })
    }

    /// The instance whose egress proxy handled the request, if one did.
    pub fn caller(&self) -> Option<&Caller> {
        match self {
            Origin::Internet { caller } => caller.as_ref(),
            Origin::Vpc { caller, .. } => caller.as_ref(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Internet { caller: None } => f.write_str("the internet (it arrived on runnel's frontend listener)"),
            Origin::Internet { caller: Some(c) } => {
                write!(f, "the internet (it left {c} directly, not through a VPC network)")
            }
            Origin::Vpc { project, network, via, caller: Some(caller), .. } => {
                write!(f, "network `{network}` of project `{project}`, through {via}, from {caller}")
            }
            Origin::Vpc { project, network, via, caller: None, .. } => {
                write!(f, "network `{network}` of project `{project}`, through {via}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_origin() {
        assert_eq!(Origin::internet().to_string(), "the internet (it arrived on runnel's frontend listener)");
        let mut c = Caller::new("front", "front-00001-abc", "local1");
        c.egress = Some(Reason::EgressDirect);
        let direct = Origin::Internet { caller: Some(c.clone()) };
        assert!(direct.to_string().contains("left service `front` (revision `front-00001-abc`"));
        assert!(!direct.is_vpc());
        let vpc = Origin::Vpc {
            project: "p".into(),
            network: "projects/p/global/networks/default".into(),
            via: Via::Connector("projects/p/locations/local1/connectors/conn".into()),
            caller: Some(c),
            sealed: Sealed::by_egress(),
        };
        assert!(vpc.is_vpc());
        assert_eq!(vpc.caller().map(|c| c.service.as_str()), Some("front"));
        assert!(vpc.to_string().contains("through connector `projects/p/locations/local1/connectors/conn`"));
    }

    #[test]
    fn an_operator_proxy_origin_needs_network_use() {
        use runnel_model::iam::{Binding, Policy};
        let alice = Principal::User { email: "alice@example.com".into() };
        let network = "projects/p/global/networks/vpc";
        let granted = |role: &str| Policy {
            version: 1,
            bindings: vec![Binding { role: role.into(), members: vec!["user:alice@example.com".into()] }],
        };
        for (role, allowed) in [
            ("roles/compute.networkUser", true),
            ("roles/owner", true),
            ("roles/editor", true),
            ("roles/run.admin", false),
            ("roles/viewer", false),
        ] {
            let policy = granted(role);
            let scopes = [Scope { resource: "projects/p", policy: &policy }];
            match Origin::operator_proxy(&alice, "p", network, &scopes) {
                Ok(origin) => {
                    assert!(allowed, "{role} must not open an operator proxy");
                    assert!(origin.is_vpc());
                    assert_eq!(origin.caller(), None);
                    assert_eq!(
                        origin.to_string(),
                        "network `projects/p/global/networks/vpc` of project `p`, through an operator proxy for \
                         `user:alice@example.com` (`runnel run services proxy --network`)"
                    );
                }
                Err(decision) => {
                    assert!(!allowed, "{role} holds compute.networks.use");
                    assert_eq!(decision.reason, Reason::IamNoBinding, "{role}");
                }
            }
        }
    }
}
