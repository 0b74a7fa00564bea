//! Ingress: does the receiving service's ingress setting admit a request from this origin?
//!
//! As on Cloud Run: `all` admits everyone; `internal` admits only requests that came through a
//! VPC network of the service's own project; `internal-and-cloud-load-balancing` also admits
//! load balancers, which runnel does not have yet, so it admits exactly what `internal` admits.
//! A disabled default URL answers 404 to everyone, before any of that. A refusal becomes a 404
//! and the instance never sees the request.
//!
//! The most common refusal is a caller with `--vpc-egress=private-ranges-only` calling an
//! internal service by its URL: the URL is a public name, so the call leaves directly and
//! arrives as internet traffic. The egress route records that in the origin's caller, and the
//! refusal names it (`egress.private_ranges_only.service_url_left_directly`) rather than a
//! generic "from the internet".
//!
//! This module must never look at the request itself (headers, client address): only the
//! origin, which the path the request took decided (see [`crate::origin`]).

use runnel_model::service::Ingress;

use crate::origin::{Caller, Origin};
use crate::{Decision, Reason};

/// Whether a service with this ingress setting admits every request whatever its origin, as
/// [`check`] would decide (`all`, default URL enabled). The frontend asks this first on every
/// request: [`check`] writes its trace, which only a refusal or an explanation needs.
pub fn admits_everyone(ingress: Ingress, default_uri_disabled: bool) -> bool {
    ingress == Ingress::All && !default_uri_disabled
}

/// Decides whether a service with this ingress setting admits a request from `origin`.
/// `service_project` is the receiving service's project, in the same form (id) as the origin's.
pub fn check(ingress: Ingress, default_uri_disabled: bool, service_project: &str, origin: &Origin) -> Decision {
    let mut trace = vec![format!("the request comes from {origin}")];
    if default_uri_disabled {
        trace.push(
            "the service's default URL is disabled, so it answers 404 to every request on it, whatever its origin; \
             fix: deploy it with `--default-url`"
                .to_string(),
        );
        return Decision::deny(Reason::IngressDefaultUrlDisabled, trace);
    }
    match ingress {
        Ingress::All => {
            trace.push("ingress `all` admits requests from the internet and from VPC networks alike".to_string());
            Decision::allow(Reason::IngressAll, trace)
        }
        Ingress::InternalOnly | Ingress::InternalLoadBalancer => internal(ingress, service_project, origin, trace),
    }
}

fn internal(ingress: Ingress, service_project: &str, origin: &Origin, mut trace: Vec<String>) -> Decision {
    let flag = ingress.flag();
    if ingress == Ingress::InternalLoadBalancer {
        trace.push(format!(
            "runnel has no load balancers yet, so ingress `{flag}` admits exactly what `internal` admits: \
             requests that came through a VPC network of the service's project"
        ));
    }
    match origin {
        Origin::Vpc { project, network, .. } if project == service_project => {
            trace.push(format!(
                "network `{network}` belongs to project `{project}`, the service's own project, so ingress `{flag}` admits the request"
            ));
            Decision::allow(Reason::IngressInternalFromVpc, trace)
        }
        Origin::Vpc { project, network, .. } => {
            trace.push(format!(
                "network `{network}` belongs to project `{project}`, but the service is in project `{service_project}`; \
                 ingress `{flag}` admits only VPC networks of the service's own project, so it refuses the request with 404"
            ));
            trace.push(format!(
                "fix: call it from a service whose VPC network is in project `{service_project}`, \
                 or deploy this service with `--ingress=all`"
            ));
            Decision::deny(Reason::IngressInternalOnlyOtherProject, trace)
        }
        Origin::Internet { caller } => {
            let left_directly = caller
                .as_ref()
                .is_some_and(|c| c.egress == Some(Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly));
            let reason = if left_directly {
                Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly
            } else if ingress == Ingress::InternalLoadBalancer {
                Reason::IngressInternalLbFromInternet
            } else {
                Reason::IngressInternalOnlyFromInternet
            };
            trace.push(format!(
                "ingress `{flag}` refuses internet traffic with 404; the service never sees the request"
            ));
            match caller {
                None => trace.push(format!(
                    "fix: call it from a runnel service whose egress goes through a VPC network of project \
                     `{service_project}` (`--vpc-egress=all-traffic`), or deploy this service with `--ingress=all` \
                     to admit internet traffic"
                )),
                Some(c) => explain_caller(c, &mut trace),
            }
            Decision::deny(reason, trace)
        }
    }
}

/// Why a call from another service arrived as internet traffic, and how to make it internal.
fn explain_caller(caller: &Caller, trace: &mut Vec<String>) {
    match caller.egress {
        Some(Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly) => {
            trace.push(format!(
                "{caller} has `--vpc-egress=private-ranges-only`: only calls to private addresses go through its \
                 VPC network, and this service's URL is a public name, so the call left directly and arrived as \
                 internet traffic"
            ));
            trace.push(
                "fix: deploy the caller with `--vpc-egress=all-traffic` (its connector's or Direct VPC egress \
                 subnet needs Private Google Access), or deploy this service with `--ingress=all`"
                    .to_string(),
            );
        }
        Some(Reason::EgressDirect) => {
            trace.push(format!(
                "{caller} has no connector and no Direct VPC egress, so its call left directly and arrived as \
                 internet traffic"
            ));
            trace.push(
                "fix: deploy the caller with a connector (`--vpc-connector=CONNECTOR`) or Direct VPC egress \
                 (`--network=NETWORK --subnet=SUBNET`) and `--vpc-egress=all-traffic`, or deploy this service \
                 with `--ingress=all`"
                    .to_string(),
            );
        }
        _ => {
            trace.push(format!("the call from {caller} left it directly and arrived as internet traffic"));
            trace.push(
                "fix: deploy the caller with VPC access and `--vpc-egress=all-traffic`, or deploy this service \
                 with `--ingress=all`"
                    .to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{Sealed, Via};

    fn caller(egress: Option<Reason>) -> Caller {
        Caller { egress, ..Caller::new("front", "front-00001-abc", "local1") }
    }

    fn from_caller(egress: Reason) -> Origin {
        Origin::Internet { caller: Some(caller(Some(egress))) }
    }

    fn vpc(project: &str) -> Origin {
        Origin::Vpc {
            project: project.into(),
            network: format!("projects/{project}/global/networks/default"),
            via: Via::Connector(format!("projects/{project}/locations/local1/connectors/conn")),
            caller: Some(caller(Some(Reason::EgressVpc))),
            sealed: Sealed::by_egress(),
        }
    }

    #[test]
    fn table() {
        use Ingress::{All, InternalLoadBalancer as Lb, InternalOnly as Internal};
        use Reason::*;
        let internet = Origin::internet();
        let pro = from_caller(EgressPrivateRangesOnlyServiceUrlLeftDirectly);
        let direct = from_caller(EgressDirect);
        let same = vpc("p");
        let other = vpc("q");
        #[rustfmt::skip]
        let cases: Vec<(Ingress, bool, &Origin, bool, Reason, &str)> = vec![
            (All, false, &internet, true, IngressAll, "admits requests from the internet and from VPC networks"),
            (All, false, &pro, true, IngressAll, "ingress `all`"),
            (All, false, &direct, true, IngressAll, "ingress `all`"),
            (All, false, &same, true, IngressAll, "ingress `all`"),
            (All, false, &other, true, IngressAll, "ingress `all`"),
            (Internal, false, &internet, false, IngressInternalOnlyFromInternet, "or deploy this service with `--ingress=all`"),
            (Internal, false, &pro, false, EgressPrivateRangesOnlyServiceUrlLeftDirectly, "deploy the caller with `--vpc-egress=all-traffic`"),
            (Internal, false, &direct, false, IngressInternalOnlyFromInternet, "has no connector and no Direct VPC egress"),
            (Internal, false, &same, true, IngressInternalFromVpc, "the service's own project"),
            (Internal, false, &other, false, IngressInternalOnlyOtherProject, "but the service is in project `p`"),
            (Lb, false, &internet, false, IngressInternalLbFromInternet, "runnel has no load balancers yet"),
            (Lb, false, &pro, false, EgressPrivateRangesOnlyServiceUrlLeftDirectly, "left directly and arrived as internet traffic"),
            (Lb, false, &direct, false, IngressInternalLbFromInternet, "`--vpc-connector=CONNECTOR`"),
            (Lb, false, &same, true, IngressInternalFromVpc, "admits exactly what `internal` admits"),
            (Lb, false, &other, false, IngressInternalOnlyOtherProject, "admits only VPC networks of the service's own project"),
        ];
        for (ingress, disabled, origin, allowed, reason, trace_has) in cases {
            let d = check(ingress, disabled, "p", origin);
            assert_eq!((d.allowed, d.reason), (allowed, reason), "{ingress:?} from {origin}: {:?}", d.trace);
            assert!(
                d.trace.iter().any(|t| t.contains(trace_has)),
                "{ingress:?} from {origin}: {:?} lacks {trace_has:?}",
                d.trace
            );
        }
    }

    #[test]
    fn a_disabled_default_url_refuses_everyone_first() {
        for ingress in [Ingress::All, Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
            for origin in [Origin::internet(), from_caller(Reason::EgressDirect), vpc("p"), vpc("q")] {
                let d = check(ingress, true, "p", &origin);
                assert_eq!((d.allowed, d.reason), (false, Reason::IngressDefaultUrlDisabled), "{ingress:?} {origin}");
                assert!(d.trace.iter().any(|t| t.contains("`--default-url`")), "{:?}", d.trace);
            }
        }
    }

    #[test]
    fn internal_admits_nothing_but_a_vpc_of_its_project() {
        for ingress in [Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
            for egress in [
                None,
                Some(Reason::EgressDirect),
                Some(Reason::EgressVpc),
                Some(Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly),
            ] {
                let origin = Origin::Internet { caller: Some(caller(egress)) };
                assert!(!check(ingress, false, "p", &origin).allowed, "{ingress:?} {origin}");
            }
            assert!(!check(ingress, false, "p", &vpc("q")).allowed);
            assert!(check(ingress, false, "p", &vpc("p")).allowed);
        }
    }

    #[test]
    fn admits_everyone_agrees_with_check() {
        for ingress in [Ingress::All, Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
            for disabled in [false, true] {
                let everyone = admits_everyone(ingress, disabled);
                let internet = check(ingress, disabled, "p", &Origin::internet());
                assert_eq!(everyone, internet.allowed, "{ingress:?} disabled={disabled}");
                if everyone {
                    assert_eq!(internet.reason, Reason::IngressAll);
                }
            }
        }
    }
}
