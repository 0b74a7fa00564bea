//! runnel's private networking end to end, as pure functions: a caller's egress route, then the
//! receiver's ingress check on the origin the route produced.
//!
//! The table covers every caller attachment (none, connector made with `--range` or `--subnet`,
//! Direct VPC egress; each egress setting; with and without Private Google Access; a network of
//! another project) against every kind of destination and every ingress setting, and pins the
//! final outcome and the reason that explains it. The properties pin what must hold whatever the
//! configuration: forbidden addresses stay forbidden, and nothing but a VPC route makes a VPC origin.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use runnel_model::network::{Connector, ConnectorSubnet, Subnetwork};
use runnel_model::service::{Ingress, NetworkInterface, VpcAccess, VpcEgress};
use runnel_policy::Reason;
use runnel_policy::egress::{self, Attachment, Destination, Route, VpcPath};
use runnel_policy::ingress;
use runnel_policy::origin::{Caller, Origin, Via};

const PROJECT: &str = "p";
const NETWORK: &str = "projects/p/global/networks/default";
const OTHER_NETWORK: &str = "projects/p/global/networks/other";
const RECEIVER_HOST: &str = "receiver-123456789012.local1.run.app";
const LISTENER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fn caller() -> Caller {
    Caller::new("front", "front-00001-abc", "local1")
}

// ---- caller attachments, built from the model as the shell will build them -------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    None,
    /// A connector created with `--range` (counts as having Private Google Access).
    ConnectorRange,
    /// A connector created with `--subnet`, whose Private Google Access flag is given.
    ConnectorSubnet {
        pga: bool,
    },
    /// Direct VPC egress on a subnet whose flag is given.
    Direct {
        pga: bool,
    },
    /// Direct VPC egress on a subnet of a network of another project (a Shared VPC host).
    OtherProject,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    attach: Attach,
    egress: VpcEgress,
}

fn subnet(project: &str, network: &str, name: &str, pga: bool) -> Subnetwork {
    Subnetwork {
        name: name.into(),
        network: format!("projects/{project}/global/networks/{network}"),
        ip_cidr_range: "10.0.0.0/28".into(),
        region: format!("projects/{project}/regions/local1"),
        private_ip_google_access: pga,
        self_link: format!("projects/{project}/regions/local1/subnetworks/{name}"),
        ..Default::default()
    }
}

fn connector(on_subnet: bool) -> Connector {
    Connector {
        name: "projects/p/locations/local1/connectors/conn".into(),
        network: "default".into(),
        ip_cidr_range: if on_subnet { String::new() } else { "10.8.0.0/28".into() },
        subnet: on_subnet.then(|| ConnectorSubnet { name: "conn-subnet".into(), project_id: PROJECT.into() }),
        ..Default::default()
    }
}

fn access_connector(egress: VpcEgress) -> VpcAccess {
    VpcAccess { connector: "projects/p/locations/local1/connectors/conn".into(), egress, network_interfaces: vec![] }
}

fn access_direct(egress: VpcEgress, network: &str, subnet: &str) -> VpcAccess {
    VpcAccess {
        connector: String::new(),
        egress,
        network_interfaces: vec![NetworkInterface { network: network.into(), subnetwork: subnet.into(), tags: vec![] }],
    }
}

fn vpc_path(c: Config) -> Option<VpcPath> {
    let built = match c.attach {
        Attach::None => return None,
        Attach::ConnectorRange => VpcPath::from_model(
            &access_connector(c.egress),
            Attachment::Connector { connector: &connector(false), subnet: None },
        ),
        Attach::ConnectorSubnet { pga } => VpcPath::from_model(
            &access_connector(c.egress),
            Attachment::Connector {
                connector: &connector(true),
                subnet: Some(&subnet(PROJECT, "default", "conn-subnet", pga)),
            },
        ),
        Attach::Direct { pga } => VpcPath::from_model(
            &access_direct(c.egress, "default", "sub"),
            Attachment::Direct { subnet: &subnet(PROJECT, "default", "sub", pga) },
        ),
        Attach::OtherProject => VpcPath::from_model(
            &access_direct(c.egress, "shared", "shared-sub"),
            Attachment::Direct { subnet: &subnet("host", "shared", "shared-sub", true) },
        ),
    };
    assert_eq!(built.as_ref().err(), None, "{c:?}");
    built.ok()
}

// ---- destinations ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Another runnel service in project `p`, by its URL.
    ServiceUrl,
    /// An endpoint registered in the caller's own network.
    EndpointSameNetwork,
    /// An endpoint registered in a network the caller is not attached to.
    EndpointOtherNetwork,
    /// A private address literal.
    PrivateIp,
    PublicIp,
    /// Loopback, the metadata server's address in a mapped form, and runnel's own listener.
    Forbidden,
    Unresolvable,
}

fn destinations(d: Dest, vpc: Option<&VpcPath>) -> Vec<Destination> {
    let own_network = vpc.map_or(NETWORK.to_string(), |v| v.network.clone());
    match d {
        Dest::ServiceUrl => vec![Destination::ServiceUrl { host: RECEIVER_HOST.into() }],
        Dest::EndpointSameNetwork => {
            vec![Destination::VpcEndpoint { network: own_network, address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)) }]
        }
        Dest::EndpointOtherNetwork => vec![Destination::VpcEndpoint {
            network: OTHER_NETWORK.into(),
            address: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5)),
        }],
        Dest::PrivateIp => vec![
            Destination::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20))),
            Destination::Ip(IpAddr::V4(Ipv4Addr::new(100, 64, 3, 4))),
        ],
        Dest::PublicIp => vec![Destination::Ip(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)))],
        Dest::Forbidden => vec![
            Destination::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Destination::Ip(IpAddr::V6(Ipv4Addr::new(169, 254, 169, 254).to_ipv6_mapped())),
            Destination::Ip(LISTENER),
            Destination::VpcEndpoint { network: own_network, address: IpAddr::V4(Ipv4Addr::LOCALHOST) },
        ],
        Dest::Unresolvable => vec![Destination::Unresolvable("db.internal".into())],
    }
}

// ---- outcomes ----------------------------------------------------------------------------------

/// What happens to the call, at the level a user sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    /// It reaches the receiver (for a service, it goes on to the invoker IAM check); the reason
    /// is the last decision that let it through (ingress for a service, egress otherwise).
    Reached(Reason),
    /// The receiving service's ingress refuses it: 404, the instance never sees it.
    NotFound(Reason),
    /// The caller's egress proxy refuses it; it never leaves.
    EgressRefused(Reason),
}

/// Routes the call and, when it reaches a runnel service, checks the receiver's ingress.
fn call(route: &Route, dest: &Destination, receiver_ingress: Ingress) -> Final {
    let Some(origin) = route.origin() else {
        return Final::EgressRefused(route.reason());
    };
    if !matches!(dest, Destination::ServiceUrl { .. }) {
        return Final::Reached(route.reason());
    }
    let d = ingress::check(receiver_ingress, false, PROJECT, origin);
    if d.allowed { Final::Reached(d.reason) } else { Final::NotFound(d.reason) }
}

/// A caller, a destination, the egress verdict, and the final outcome for each receiver ingress
/// setting (`all`, `internal`, `internal-and-cloud-load-balancing`).
type Row = (Config, Dest, (bool, Reason), [Final; 3]);

#[test]
fn every_caller_attachment_against_every_destination_and_ingress_setting() {
    use Attach::*;
    use Dest::*;
    use Final::*;
    use Reason::*;
    use VpcEgress::{AllTraffic as AT, PrivateRangesOnly as PRO};

    let left = EgressPrivateRangesOnlyServiceUrlLeftDirectly;
    let none = Config { attach: Attach::None, egress: PRO };
    let cfg = |attach, egress| Config { attach, egress };
    let same = |f: Final| [f, f, f];

    // (caller, destination, egress verdict, final outcome for ingress [all, internal, internal-and-cloud-load-balancing])
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        // ---- another service's URL: the receiver's ingress decides ----
        (none, ServiceUrl, (true, EgressDirect), [Reached(IngressAll), NotFound(IngressInternalOnlyFromInternet), NotFound(IngressInternalLbFromInternet)]),
        (cfg(ConnectorRange, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(ConnectorRange, AT), ServiceUrl, (true, EgressVpc), [Reached(IngressAll), Reached(IngressInternalFromVpc), Reached(IngressInternalFromVpc)]),
        (cfg(ConnectorSubnet { pga: true }, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(ConnectorSubnet { pga: false }, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(ConnectorSubnet { pga: true }, AT), ServiceUrl, (true, EgressVpc), [Reached(IngressAll), Reached(IngressInternalFromVpc), Reached(IngressInternalFromVpc)]),
        (cfg(ConnectorSubnet { pga: false }, AT), ServiceUrl, (false, EgressNoPrivateGoogleAccess), same(EgressRefused(EgressNoPrivateGoogleAccess))),
        (cfg(Direct { pga: true }, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(Direct { pga: false }, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(Direct { pga: true }, AT), ServiceUrl, (true, EgressVpc), [Reached(IngressAll), Reached(IngressInternalFromVpc), Reached(IngressInternalFromVpc)]),
        (cfg(Direct { pga: false }, AT), ServiceUrl, (false, EgressNoPrivateGoogleAccess), same(EgressRefused(EgressNoPrivateGoogleAccess))),
        (cfg(OtherProject, PRO), ServiceUrl, (true, left), [Reached(IngressAll), NotFound(left), NotFound(left)]),
        (cfg(OtherProject, AT), ServiceUrl, (true, EgressVpc), [Reached(IngressAll), NotFound(IngressInternalOnlyOtherProject), NotFound(IngressInternalOnlyOtherProject)]),

        // ---- an endpoint registered in the caller's own network ----
        (none, EndpointSameNetwork, (false, EgressNoVpcAccessPrivateDestination), same(EgressRefused(EgressNoVpcAccessPrivateDestination))),
        (cfg(ConnectorRange, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorRange, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: true }, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: false }, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: true }, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: false }, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: true }, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: false }, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: true }, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: false }, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(OtherProject, PRO), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(OtherProject, AT), EndpointSameNetwork, (true, EgressVpc), same(Reached(EgressVpc))),

        // ---- an endpoint registered in a network the caller is not attached to ----
        (none, EndpointOtherNetwork, (false, EgressNoVpcAccessPrivateDestination), same(EgressRefused(EgressNoVpcAccessPrivateDestination))),
        (cfg(ConnectorRange, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(ConnectorRange, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(ConnectorSubnet { pga: true }, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(ConnectorSubnet { pga: false }, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(ConnectorSubnet { pga: true }, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(ConnectorSubnet { pga: false }, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(Direct { pga: true }, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(Direct { pga: false }, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(Direct { pga: true }, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(Direct { pga: false }, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(OtherProject, PRO), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),
        (cfg(OtherProject, AT), EndpointOtherNetwork, (false, EgressOtherNetwork), same(EgressRefused(EgressOtherNetwork))),

        // ---- a private address literal: through the caller's network with either setting ----
        (none, PrivateIp, (false, EgressNoVpcAccessPrivateDestination), same(EgressRefused(EgressNoVpcAccessPrivateDestination))),
        (cfg(ConnectorRange, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorRange, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: true }, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: false }, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: true }, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: false }, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: true }, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: false }, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: true }, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: false }, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(OtherProject, PRO), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(OtherProject, AT), PrivateIp, (true, EgressVpc), same(Reached(EgressVpc))),

        // ---- a public address: directly, unless all traffic goes through the VPC ----
        (none, PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(ConnectorRange, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(ConnectorRange, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: true }, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(ConnectorSubnet { pga: false }, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(ConnectorSubnet { pga: true }, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(ConnectorSubnet { pga: false }, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: true }, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(Direct { pga: false }, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(Direct { pga: true }, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(Direct { pga: false }, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),
        (cfg(OtherProject, PRO), PublicIp, (true, EgressDirect), same(Reached(EgressDirect))),
        (cfg(OtherProject, AT), PublicIp, (true, EgressVpc), same(Reached(EgressVpc))),

        // ---- forbidden addresses: never, whatever the settings ----
        (none, Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorRange, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorRange, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorSubnet { pga: true }, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorSubnet { pga: false }, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorSubnet { pga: true }, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(ConnectorSubnet { pga: false }, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(Direct { pga: true }, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(Direct { pga: false }, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(Direct { pga: true }, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(Direct { pga: false }, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(OtherProject, PRO), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),
        (cfg(OtherProject, AT), Forbidden, (false, EgressForbiddenDestination), same(EgressRefused(EgressForbiddenDestination))),

        // ---- names runnel does not resolve ----
        (none, Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorRange, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorRange, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorSubnet { pga: true }, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorSubnet { pga: false }, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorSubnet { pga: true }, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(ConnectorSubnet { pga: false }, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(Direct { pga: true }, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(Direct { pga: false }, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(Direct { pga: true }, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(Direct { pga: false }, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(OtherProject, PRO), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
        (cfg(OtherProject, AT), Unresolvable, (false, EgressUnresolvable), same(EgressRefused(EgressUnresolvable))),
    ];

    // The table is complete: every attachment, with each egress setting, against every destination.
    let attachments = [
        ConnectorRange,
        ConnectorSubnet { pga: true },
        ConnectorSubnet { pga: false },
        Direct { pga: true },
        Direct { pga: false },
        OtherProject,
    ];
    let dests = [ServiceUrl, EndpointSameNetwork, EndpointOtherNetwork, PrivateIp, PublicIp, Forbidden, Unresolvable];
    for d in dests {
        assert!(table.iter().any(|(c, t, ..)| c.attach == Attach::None && *t == d), "no row for no VPC access, {d:?}");
        for a in attachments {
            for e in [PRO, AT] {
                let rows = table.iter().filter(|(c, t, ..)| c.attach == a && c.egress == e && *t == d).count();
                assert_eq!(rows, 1, "{a:?} {e:?} {d:?}");
            }
        }
    }

    let ingresses = [Ingress::All, Ingress::InternalOnly, Ingress::InternalLoadBalancer];
    for (config, d, (egress_allowed, egress_reason), finals) in &table {
        let vpc = vpc_path(*config);
        for dest in destinations(*d, vpc.as_ref()) {
            let what = format!("{config:?} → {dest}");
            let route = egress::route(&caller(), vpc.as_ref(), &dest, &[LISTENER]);
            assert_eq!(
                (route.allowed(), route.reason()),
                (*egress_allowed, *egress_reason),
                "{what}: {:?}",
                route.decision().trace
            );
            assert_eq!(check_origin(&route, vpc.as_ref()), Ok(()), "{what}");
            if !route.allowed() && route.reason() != Reason::EgressForbiddenDestination {
                assert!(
                    route.decision().trace.iter().any(|t| t.contains("fix:")),
                    "{what}: no fix in {:?}",
                    route.decision().trace
                );
            }
            for (ingress, want) in ingresses.iter().zip(finals) {
                let got = call(&route, &dest, *ingress);
                assert_eq!(got, *want, "{what}, receiver `--ingress={}`", ingress.flag());
                if let (Final::NotFound(_), Some(origin)) = (got, route.origin()) {
                    let d = ingress::check(*ingress, false, PROJECT, origin);
                    assert!(d.trace.iter().any(|t| t.contains("fix:")), "{what}: no fix in {:?}", d.trace);
                }
            }
        }
    }
}

/// The origin agrees with the egress decision: none when refused, a VPC origin exactly for a
/// route through the VPC (naming the caller's network and path), otherwise the internet with
/// the caller and the reason it left directly.
fn check_origin(route: &Route, vpc: Option<&VpcPath>) -> Result<(), String> {
    match (route.origin(), route.reason()) {
        (None, _) if !route.allowed() => Ok(()),
        (Some(Origin::Vpc { project, network, via, caller: Some(caller), .. }), Reason::EgressVpc) => match vpc {
            Some(v)
                if (project, network, via) == (&v.project, &v.network, &v.via)
                    && caller.egress == Some(Reason::EgressVpc)
                    && caller.service == "front"
                    && route.through_vpc() =>
            {
                Ok(())
            }
            _ => Err(format!("VPC origin {:?} does not match the caller's path {vpc:?}", route.origin())),
        },
        (Some(Origin::Internet { caller: Some(c) }), reason)
            if matches!(reason, Reason::EgressDirect | Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly)
                && c.egress == Some(reason)
                && !route.through_vpc() =>
        {
            Ok(())
        }
        (origin, reason) => Err(format!("origin {origin:?} with reason {reason}")),
    }
}

/// Issue scenario, named: the caller with a connector and the default egress setting calls an
/// internal service by its URL; it is refused with 404 and the refusal names the setting.
#[test]
fn private_ranges_only_caller_to_internal_service_url_is_refused_naming_the_egress_setting() {
    let vpc = vpc_path(Config { attach: Attach::ConnectorRange, egress: VpcEgress::PrivateRangesOnly });
    let dest = Destination::ServiceUrl { host: RECEIVER_HOST.into() };
    let route = egress::route(&caller(), vpc.as_ref(), &dest, &[]);
    assert!(route.allowed());
    assert!(route.decision().trace.iter().any(|t| t.contains("deploy the caller with `--vpc-egress=all-traffic`")));
    let Some(origin) = route.origin() else { panic!("the call leaves") };
    let d = ingress::check(Ingress::InternalOnly, false, PROJECT, origin);
    assert_eq!((d.allowed, d.reason.code()), (false, "egress.private_ranges_only.service_url_left_directly"));
    let text = d.trace.join("\n");
    assert!(
        text.contains(
            "service `front` (revision `front-00001-abc`, region `local1`) has `--vpc-egress=private-ranges-only`"
        ),
        "{text}"
    );
    assert!(text.contains("fix: deploy the caller with `--vpc-egress=all-traffic`"), "{text}");
    assert!(text.contains("`--ingress=all`"), "{text}");
}

#[test]
fn a_disabled_default_url_refuses_even_a_vpc_origin() {
    let vpc = vpc_path(Config { attach: Attach::Direct { pga: true }, egress: VpcEgress::AllTraffic });
    let route = egress::route(&caller(), vpc.as_ref(), &Destination::ServiceUrl { host: RECEIVER_HOST.into() }, &[]);
    let Some(origin) = route.origin() else { panic!("the call goes through the VPC") };
    assert!(origin.is_vpc());
    for ingress in [Ingress::All, Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
        let d = ingress::check(ingress, true, PROJECT, origin);
        assert_eq!((d.allowed, d.reason), (false, Reason::IngressDefaultUrlDisabled));
    }
}

/// Client headers never reach these functions, and the frontend's origin is the internet: a
/// request on the frontend listener is refused by every internal setting.
#[test]
fn the_frontend_origin_is_refused_by_internal_ingress() {
    let d = ingress::check(Ingress::InternalOnly, false, PROJECT, &Origin::internet());
    assert_eq!((d.allowed, d.reason), (false, Reason::IngressInternalOnlyFromInternet));
    let d = ingress::check(Ingress::InternalLoadBalancer, false, PROJECT, &Origin::internet());
    assert_eq!((d.allowed, d.reason), (false, Reason::IngressInternalLbFromInternet));
}

// ---- properties ----------------------------------------------------------------------------------

fn arb_vpc() -> impl Strategy<Value = Option<VpcPath>> {
    let via = prop_oneof![
        Just(Via::Connector("projects/p/locations/local1/connectors/conn".into())),
        Just(Via::Subnet("projects/p/regions/local1/subnetworks/sub".into())),
    ];
    let egress = prop_oneof![Just(VpcEgress::PrivateRangesOnly), Just(VpcEgress::AllTraffic)];
    let project = prop_oneof![Just("p".to_string()), Just("host".to_string())];
    proptest::option::of((project, via, egress, any::<bool>()).prop_map(|(project, via, egress, pga)| VpcPath {
        network: format!("projects/{project}/global/networks/default"),
        project,
        via,
        egress,
        private_google_access: pga,
    }))
}

fn arb_forbidden() -> impl Strategy<Value = IpAddr> {
    let v4 = prop_oneof![
        any::<u32>().prop_map(|h| Ipv4Addr::from(0x7f00_0000 | (h & 0x00ff_ffff))),
        any::<u32>().prop_map(|h| Ipv4Addr::from(0xa9fe_0000 | (h & 0x0000_ffff))),
        Just(Ipv4Addr::UNSPECIFIED),
        Just(Ipv4Addr::BROADCAST),
        any::<u32>().prop_map(|h| Ipv4Addr::from(0xe000_0000 | (h & 0x0fff_ffff))),
    ];
    prop_oneof![
        v4.clone().prop_map(IpAddr::V4),
        v4.prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        any::<u128>().prop_map(|h| IpAddr::V6(Ipv6Addr::from((0xfe80u128 << 112) | (h >> 10)))),
        any::<u128>().prop_map(|h| IpAddr::V6(Ipv6Addr::from((0xffu128 << 120) | (h >> 8)))),
        Just(LISTENER),
    ]
}

fn arb_destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        Just(Destination::ServiceUrl { host: RECEIVER_HOST.into() }),
        any::<IpAddr>().prop_map(Destination::Ip),
        (prop_oneof![Just(NETWORK.to_string()), Just(OTHER_NETWORK.to_string())], any::<IpAddr>())
            .prop_map(|(network, address)| Destination::VpcEndpoint { network, address }),
        Just(Destination::Unresolvable("db.internal".into())),
    ]
}

proptest! {
    /// A forbidden address is refused under every VPC configuration, as a literal or as a
    /// registered endpoint of the caller's own network.
    #[test]
    fn forbidden_destinations_are_refused_whatever_the_settings(vpc in arb_vpc(), addr in arb_forbidden(), as_endpoint in any::<bool>()) {
        let dest = if as_endpoint {
            let network = vpc.as_ref().map_or(NETWORK.to_string(), |v| v.network.clone());
            Destination::VpcEndpoint { network, address: addr }
        } else {
            Destination::Ip(addr)
        };
        let route = egress::route(&caller(), vpc.as_ref(), &dest, &[LISTENER]);
        prop_assert_eq!((route.allowed(), route.reason()), (false, Reason::EgressForbiddenDestination));
        prop_assert!(route.origin().is_none());
    }

    /// Without VPC access nothing goes through a VPC, so nothing arrives as internal traffic.
    #[test]
    fn no_vpc_access_never_makes_a_vpc_origin(dest in arb_destination()) {
        let route = egress::route(&caller(), None, &dest, &[LISTENER]);
        prop_assert!(!route.through_vpc());
        prop_assert!(!route.origin().is_some_and(Origin::is_vpc));
        if let Some(origin) = route.origin() {
            for ingress in [Ingress::InternalOnly, Ingress::InternalLoadBalancer] {
                prop_assert!(!ingress::check(ingress, false, PROJECT, origin).allowed);
            }
        }
    }

    /// A route carries an origin exactly when it lets the call go, and a VPC origin exactly when
    /// its reason says it went through the VPC.
    #[test]
    fn the_origin_agrees_with_the_decision(vpc in arb_vpc(), dest in arb_destination()) {
        let route = egress::route(&caller(), vpc.as_ref(), &dest, &[LISTENER]);
        prop_assert_eq!(route.origin().is_some(), route.allowed());
        prop_assert_eq!(route.through_vpc(), route.allowed() && route.reason() == Reason::EgressVpc);
    }

    /// Internal ingress admits a call to a service URL exactly when the caller sends all traffic
    /// through a network of the receiver's project whose subnet has Private Google Access.
    #[test]
    fn internal_ingress_admits_exactly_all_traffic_from_the_same_project(vpc in arb_vpc()) {
        let dest = Destination::ServiceUrl { host: RECEIVER_HOST.into() };
        let route = egress::route(&caller(), vpc.as_ref(), &dest, &[LISTENER]);
        let admitted = route.origin().is_some_and(|o| ingress::check(Ingress::InternalOnly, false, PROJECT, o).allowed);
        let expected = vpc.as_ref().is_some_and(|v| {
            v.egress == VpcEgress::AllTraffic && v.private_google_access && v.project == PROJECT
        });
        prop_assert_eq!(admitted, expected);
    }
}
