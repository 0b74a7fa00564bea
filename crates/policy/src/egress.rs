//! Egress routing: where does a call an instance makes go, and with what origin does it arrive?
//!
//! As on Cloud Run:
//! - a caller without a connector or Direct VPC egress sends everything directly;
//! - with `--vpc-egress=private-ranges-only`, only private destinations (RFC 1918, RFC 6598,
//!   names registered in a VPC network) go through the VPC network; everything else, **including
//!   another service's URL, a public name**, leaves directly and arrives as internet traffic —
//!   the trap users hit most, so the route says so in its reason
//!   (`egress.private_ranges_only.service_url_left_directly`) and the origin carries it to the
//!   receiver's ingress check;
//! - with `--vpc-egress=all-traffic`, everything goes through the VPC network; a service URL is
//!   then reached from inside the network only when the subnet the call leaves from has Private
//!   Google Access.
//!
//! On top of Cloud Run, runnel never lets an instance reach loopback, link-local, unspecified,
//! multicast or reserved addresses, nor runnel's own listeners: the egress proxy runs on the
//! host, so those would reach the host itself.
//!
//! [`route`] is the only code that makes an [`Origin::Vpc`] (see [`crate::origin`]).
//!
//! This module must never resolve a name, open a socket or read a clock: the egress proxy
//! classifies the destination first and passes every fact in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use runnel_model::network::{Connector, Subnetwork};
use runnel_model::ranges;
use runnel_model::service::{VpcAccess, VpcEgress};
use serde::Serialize;

use crate::origin::{Caller, Origin, Sealed, Via};
use crate::{Decision, Reason};

// ---- destinations and addresses ----------------------------------------------------------------

/// A destination after the egress proxy has resolved it. runnel resolves only its own names;
/// it never asks a DNS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Destination {
    /// A runnel service's URL host: a public name, like `*.run.app` on Cloud Run.
    ServiceUrl { host: String },
    /// A name or address registered in a VPC network, with the network's full name
    /// (`projects/P/global/networks/N`).
    VpcEndpoint { network: String, address: IpAddr },
    /// An address literal (or anything else that resolved to an address).
    Ip(IpAddr),
    /// A name that is none of the above.
    Unresolvable(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::ServiceUrl { host } => write!(f, "`{host}`"),
            Destination::VpcEndpoint { network, address } => write!(f, "`{address}` in network `{network}`"),
            Destination::Ip(addr) => write!(f, "`{addr}`"),
            Destination::Unresolvable(name) => write!(f, "`{name}`"),
        }
    }
}

/// What kind of address a destination is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum IpClass {
    /// Never reachable from an instance: see [`classify_ip`].
    Forbidden,
    /// Reachable only through a VPC network.
    Private,
    Public,
}

/// Classifies an address.
///
/// - **Forbidden**: IPv4 `0.0.0.0/8` (unspecified and "this network"), loopback `127.0.0.0/8`,
///   link-local `169.254.0.0/16` (the metadata server answers inside the sandbox, never through
///   the egress proxy), multicast `224.0.0.0/4`, reserved `240.0.0.0/4` with the broadcast
///   address; IPv6 `::`, `::1`, link-local `fe80::/10`, multicast `ff00::/8`, the local-use NAT64
///   prefix `64:ff9b:1::/48` (its IPv4 target depends on a local translator, so it cannot be
///   known); any address in `own_listeners` (every address runnel listens on — when it binds an
///   unspecified address, the shell passes the host's addresses).
/// - **Private**: RFC 1918 and RFC 6598 (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`, the
///   ranges of [`runnel_model::ranges::PRIVATE_RANGES`]), and IPv6 unique local `fc00::/7` and
///   deprecated site-local `fec0::/10`. runnel counts the IPv6 local ranges as private, although
///   Cloud Run's `private-ranges-only` names only IPv4 ranges, because "leaving directly" from
///   runnel means leaving from the host: a local IPv6 address would reach the host's own network.
/// - **Public**: everything else.
///
/// An IPv6 address that carries an IPv4 address — IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:AABB:CCDD::` — is classified as the IPv4 address it carries, so `::ffff:127.0.0.1` and
/// `::ffff:169.254.169.254` are forbidden.
pub fn classify_ip(addr: IpAddr, own_listeners: &[IpAddr]) -> IpClass {
    let addr = canonical(addr);
    if own_listeners.iter().any(|l| canonical(*l) == addr) {
        return IpClass::Forbidden;
    }
    match addr {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms that carry one.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let bits = u128::from(a);
    let low32 = Ipv4Addr::from(bits as u32);
    match s {
        // ::a.b.c.d (IPv4-compatible, which includes :: and ::1) and ::ffff:a.b.c.d (IPv4-mapped).
        [0, 0, 0, 0, 0, 0 | 0xffff, _, _] => Some(low32),
        // ::ffff:0:a.b.c.d (IPv4-translated, RFC 2765).
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low32),
        // 64:ff9b::a.b.c.d (NAT64 well-known prefix, RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        // 2002:AABB:CCDD::/48 (6to4, RFC 3056): the IPv4 address is the next 32 bits.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => embedded_v4(a).map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    (u32::from(a) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(a: Ipv6Addr, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    (u128::from(a) & mask) == (net & mask)
}

/// What makes a forbidden IPv4 address forbidden, for traces; `None` when it is not.
fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    if in_v4(a, [0, 0, 0, 0], 8) {
        Some("an unspecified address (it would reach the host itself)")
    } else if in_v4(a, [127, 0, 0, 0], 8) {
        Some("a loopback address (it would reach the host itself, not the instance)")
    } else if in_v4(a, [169, 254, 0, 0], 16) {
        Some("a link-local address (the metadata server answers inside the sandbox, not through the egress proxy)")
    } else if in_v4(a, [224, 0, 0, 0], 4) {
        Some("a multicast address")
    } else if in_v4(a, [240, 0, 0, 0], 4) {
        Some("a reserved or broadcast address")
    } else {
        None
    }
}

const NAT64_LOCAL_USE: u128 = 0x0064_ff9b_0001 << 80;
const LINK_LOCAL_V6: u128 = 0xfe80 << 112;
const MULTICAST_V6: u128 = 0xff00 << 112;
const UNIQUE_LOCAL_V6: u128 = 0xfc00 << 112;
const SITE_LOCAL_V6: u128 = 0xfec0 << 112;

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    if in_v6(a, LINK_LOCAL_V6, 10) {
        Some("a link-local address")
    } else if in_v6(a, MULTICAST_V6, 8) {
        Some("a multicast address")
    } else if in_v6(a, NAT64_LOCAL_USE, 48) {
        Some("a local-use NAT64 address (the IPv4 address it reaches cannot be known)")
    } else {
        None
    }
}

fn classify_v4(a: Ipv4Addr) -> IpClass {
    if forbidden_v4(a).is_some() {
        IpClass::Forbidden
    } else if ranges::is_private(a) {
        IpClass::Private
    } else {
        IpClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> IpClass {
    if forbidden_v6(a).is_some() {
        IpClass::Forbidden
    } else if in_v6(a, UNIQUE_LOCAL_V6, 7) || in_v6(a, SITE_LOCAL_V6, 10) {
        IpClass::Private
    } else {
        IpClass::Public
    }
}

/// Why `addr` is forbidden, in words, for the trace.
fn why_forbidden(addr: IpAddr, own_listeners: &[IpAddr]) -> &'static str {
    let canon = canonical(addr);
    if own_listeners.iter().any(|l| canonical(*l) == canon) {
        return "one of runnel's own listeners";
    }
    let why = match canon {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => forbidden_v6(a),
    };
    why.unwrap_or("an address instances may not reach")
}

// ---- the caller's VPC attachment ------------------------------------------------------------------

/// How the calling revision is attached to a VPC network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpcPath {
    /// The project that owns `network`.
    pub project: String,
    /// The network's full name (`projects/P/global/networks/N`).
    pub network: String,
    pub via: Via,
    pub egress: VpcEgress,
    /// Whether the subnet calls leave from has Private Google Access, which a call to a service
    /// URL needs to go through the VPC network. See [`VpcPath::from_model`] for how it is found.
    pub private_google_access: bool,
}

/// The resource a revision's `vpcAccess` points at, as the shell looked it up.
#[derive(Debug, Clone, Copy)]
pub enum Attachment<'a> {
    /// `--vpc-connector`: the connector and, when it was created with `--subnet`, that subnet
    /// (`None` when it was created with `--range`).
    Connector { connector: &'a Connector, subnet: Option<&'a Subnetwork> },
    /// Direct VPC egress (`--network`/`--subnet`): the subnet the revision's interface is on.
    Direct { subnet: &'a Subnetwork },
}

/// The revision's `vpcAccess` and the resource given for it do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentError(String);

impl fmt::Display for AttachmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AttachmentError {}

fn mismatch(message: String) -> AttachmentError {
    AttachmentError(message)
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Whether two references name the same resource: equal, or, when one of them is a bare name,
/// the same last segment.
fn same_resource(a: &str, b: &str) -> bool {
    a == b || ((!a.contains('/') || !b.contains('/')) && last_segment(a) == last_segment(b))
}

/// The `projects/…` part of a resource name or self link, when it has the shape
/// `projects/{project}/{kind}/{scope}/{collection}/{name}` (or `projects/{project}/global/…`).
fn resource_path<'a>(value: &'a str, middle: &str, collection: &str) -> Option<(&'a str, &'a str)> {
    let start = value.find("projects/")?;
    let path = &value[start..];
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["projects", project, m, _, c, name]
            if *m == middle && *c == collection && !project.is_empty() && !name.is_empty() =>
        {
            Some((path, project))
        }
        ["projects", project, "global", c, name]
            if middle == "global" && *c == collection && !project.is_empty() && !name.is_empty() =>
        {
            Some((path, project))
        }
        _ => None,
    }
}

/// A network reference (a self link, a full name or a bare name) as a full name, with its project.
fn network_name(value: &str, default_project: &str) -> Option<(String, String)> {
    if let Some((path, project)) = resource_path(value, "global", "networks") {
        return Some((path.to_string(), project.to_string()));
    }
    if value.is_empty() || value.contains('/') || default_project.is_empty() {
        return None;
    }
    Some((format!("projects/{default_project}/global/networks/{value}"), default_project.to_string()))
}

/// A subnet's full name and project, from its self link or from its region and network.
fn subnet_name(subnet: &Subnetwork) -> Option<(String, String)> {
    if let Some((path, project)) = resource_path(&subnet.self_link, "regions", "subnetworks") {
        return Some((path.to_string(), project.to_string()));
    }
    let project = network_name(&subnet.network, "").map(|(_, p)| p)?;
    let region = last_segment(&subnet.region);
    if region.is_empty() || subnet.name.is_empty() {
        return None;
    }
    Some((format!("projects/{project}/regions/{region}/subnetworks/{}", subnet.name), project))
}

impl VpcPath {
    /// Builds the path from the revision's `vpcAccess` and the resource it points at.
    ///
    /// Private Google Access: a connector created with `--subnet` has the flag of that subnet;
    /// Direct VPC egress has the flag of its subnet; **a connector created with `--range` counts
    /// as having Private Google Access**. Its /28 subnet is implicit — the user cannot see it, let
    /// alone set a flag on it — so refusing every `all-traffic` call to a service URL through it
    /// would be a failure the user could not fix. It is runnel's choice, kept in one place here.
    pub fn from_model(access: &VpcAccess, attachment: Attachment<'_>) -> Result<VpcPath, AttachmentError> {
        match attachment {
            Attachment::Connector { connector, subnet } => Self::through_connector(access, connector, subnet),
            Attachment::Direct { subnet } => Self::direct(access, subnet),
        }
    }

    fn through_connector(
        access: &VpcAccess,
        connector: &Connector,
        subnet: Option<&Subnetwork>,
    ) -> Result<VpcPath, AttachmentError> {
        let id = last_segment(&connector.name);
        if access.connector.is_empty() {
            return Err(mismatch(format!("the revision uses no connector, but connector `{id}` was given for it")));
        }
        if !same_resource(&access.connector, &connector.name) {
            return Err(mismatch(format!(
                "the revision uses connector `{}`, but connector `{}` was given for it",
                access.connector, connector.name
            )));
        }
        let parts: Vec<&str> = connector.name.split('/').collect();
        let connector_project = match parts.as_slice() {
            ["projects", p, "locations", _, "connectors", _] if !p.is_empty() => *p,
            _ => {
                return Err(mismatch(format!(
                    "connector name `{}` is not `projects/PROJECT/locations/REGION/connectors/NAME`",
                    connector.name
                )));
            }
        };
        let (network, project, private_google_access) = match (&connector.subnet, subnet) {
            (None, None) => {
                let (network, project) = network_name(&connector.network, connector_project)
                    .ok_or_else(|| mismatch(format!("connector `{id}` names no network it is attached to")))?;
                // See the doc comment: a connector made with `--range` counts as having it.
                (network, project, true)
            }
            (Some(cs), Some(s)) => {
                if last_segment(&cs.name) != s.name {
                    return Err(mismatch(format!(
                        "connector `{id}` was created on subnet `{}`, but subnet `{}` was given for it",
                        cs.name, s.name
                    )));
                }
                let subnet_project = if cs.project_id.is_empty() { connector_project } else { &cs.project_id };
                let (network, project) = network_name(&s.network, subnet_project)
                    .ok_or_else(|| mismatch(format!("subnet `{}` names no network", s.name)))?;
                if !connector.network.is_empty() && !same_resource(&connector.network, &network) {
                    return Err(mismatch(format!(
                        "connector `{id}` is attached to network `{}`, but its subnet `{}` is in network `{network}`",
                        connector.network, s.name
                    )));
                }
                (network, project, s.private_ip_google_access)
            }
            (Some(cs), None) => {
                return Err(mismatch(format!(
                    "connector `{id}` was created on subnet `{}`; that subnet is needed to know whether it has Private Google Access",
                    cs.name
                )));
            }
            (None, Some(s)) => {
                return Err(mismatch(format!(
                    "connector `{id}` was created with an IP range and has no subnet, but subnet `{}` was given for it",
                    s.name
                )));
            }
        };
        Ok(VpcPath {
            project,
            network,
            via: Via::Connector(connector.name.clone()),
            egress: access.egress,
            private_google_access,
        })
    }

    fn direct(access: &VpcAccess, subnet: &Subnetwork) -> Result<VpcPath, AttachmentError> {
        if !access.connector.is_empty() {
            return Err(mismatch(format!(
                "the revision uses connector `{}`, but a subnet was given for Direct VPC egress",
                access.connector
            )));
        }
        let Some(ni) = access.network_interfaces.first() else {
            return Err(mismatch(format!(
                "the revision has no network interface, but subnet `{}` was given for Direct VPC egress",
                subnet.name
            )));
        };
        // With only a network, Cloud Run uses the subnet of the same name.
        let wanted = if ni.subnetwork.is_empty() { last_segment(&ni.network) } else { last_segment(&ni.subnetwork) };
        if wanted != subnet.name {
            return Err(mismatch(format!(
                "the revision's network interface uses subnet `{wanted}`, but subnet `{}` was given for it",
                subnet.name
            )));
        }
        let (via, subnet_project) = subnet_name(subnet).ok_or_else(|| {
            mismatch(format!("subnet `{}` has neither a self link nor a region and network", subnet.name))
        })?;
        let (network, project) = network_name(&subnet.network, &subnet_project)
            .ok_or_else(|| mismatch(format!("subnet `{}` names no network", subnet.name)))?;
        if !ni.network.is_empty() && last_segment(&ni.network) != last_segment(&network) {
            return Err(mismatch(format!(
                "the revision's network interface is on network `{}`, but subnet `{}` is in network `{network}`",
                ni.network, subnet.name
            )));
        }
        Ok(VpcPath {
            project,
            network,
            via: Via::Subnet(via),
            egress: access.egress,
            private_google_access: subnet.private_ip_google_access,
        })
    }
}

// ---- the route ---------------------------------------------------------------------------------

/// The egress decision and, when the call may go, the origin it will have at the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    decision: Decision,
    /// `Some` exactly when `decision.allowed`.
    origin: Option<Origin>,
}

impl Route {
    fn deny(reason: Reason, trace: Vec<String>) -> Self {
        Route { decision: Decision::deny(reason, trace), origin: None }
    }

    fn allow(reason: Reason, trace: Vec<String>, origin: Origin) -> Self {
        Route { decision: Decision::allow(reason, trace), origin: Some(origin) }
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    pub fn allowed(&self) -> bool {
        self.decision.allowed
    }

    pub fn reason(&self) -> Reason {
        self.decision.reason
    }

    /// The origin the request will have at the receiver; `None` when the call may not go.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// Whether the call goes through the caller's VPC network (not directly).
    pub fn through_vpc(&self) -> bool {
        self.origin.as_ref().is_some_and(Origin::is_vpc)
    }

    pub fn into_parts(self) -> (Decision, Option<Origin>) {
        (self.decision, self.origin)
    }
}

fn left_directly(caller: &Caller, reason: Reason) -> Origin {
    Origin::Internet { caller: Some(Caller { egress: Some(reason), ..caller.clone() }) }
}

/// The one place a VPC origin is made.
fn through(caller: &Caller, vpc: &VpcPath) -> Origin {
    Origin::Vpc {
        project: vpc.project.clone(),
        network: vpc.network.clone(),
        via: vpc.via.clone(),
        caller: Some(Caller { egress: Some(Reason::EgressVpc), ..caller.clone() }),
        sealed: Sealed::by_egress(),
    }
}

/// Decides how a call from `caller` to `dest` leaves, given the caller's VPC attachment (`None`
/// without connector or Direct VPC egress) and the addresses runnel itself listens on.
/// `caller.egress` is ignored: the route sets it in the origin it returns.
pub fn route(caller: &Caller, vpc: Option<&VpcPath>, dest: &Destination, own_listeners: &[IpAddr]) -> Route {
    let mut trace = vec![match vpc {
        None => format!("{caller} has no connector and no Direct VPC egress"),
        Some(v) => format!(
            "{caller} reaches network `{}` of project `{}` through {}, with `--vpc-egress={}`; the subnet it leaves from {} Private Google Access",
            v.network,
            v.project,
            v.via,
            v.egress.flag(),
            if v.private_google_access { "has" } else { "has no" }
        ),
    }];
    match dest {
        Destination::Unresolvable(name) => {
            trace.push(format!(
                "`{name}` is neither a service URL nor a name registered in a VPC network, and runnel resolves no other names; \
                 fix: call a service by its URL, or an endpoint by an address or a name registered in the caller's network"
            ));
            Route::deny(Reason::EgressUnresolvable, trace)
        }
        Destination::Ip(addr) => match classify_ip(*addr, own_listeners) {
            IpClass::Forbidden => forbidden(*addr, own_listeners, trace),
            IpClass::Private => private(caller, vpc, dest, None, trace),
            IpClass::Public => public(caller, vpc, dest, trace),
        },
        Destination::VpcEndpoint { network, address } => match classify_ip(*address, own_listeners) {
            IpClass::Forbidden => forbidden(*address, own_listeners, trace),
            IpClass::Private | IpClass::Public => private(caller, vpc, dest, Some(network.as_str()), trace),
        },
        Destination::ServiceUrl { host } => service_url(caller, vpc, host, trace),
    }
}

fn forbidden(addr: IpAddr, own_listeners: &[IpAddr], mut trace: Vec<String>) -> Route {
    trace.push(format!(
        "`{addr}` is {}; runnel never lets an instance reach it, whatever its egress setting",
        why_forbidden(addr, own_listeners)
    ));
    Route::deny(Reason::EgressForbiddenDestination, trace)
}

/// A private address, or an endpoint registered in `network`: reachable only through a VPC.
fn private(
    caller: &Caller,
    vpc: Option<&VpcPath>,
    dest: &Destination,
    network: Option<&str>,
    mut trace: Vec<String>,
) -> Route {
    let what = match network {
        Some(_) => format!("{dest} is an endpoint of a VPC network"),
        None => format!("{dest} is a private address (RFC 1918, RFC 6598 or IPv6 local)"),
    };
    let Some(v) = vpc else {
        trace.push(format!(
            "{what}, reachable only through a VPC network; fix: deploy the caller with a connector \
             (`--vpc-connector=CONNECTOR`) or Direct VPC egress (`--network=NETWORK --subnet=SUBNET`)"
        ));
        return Route::deny(Reason::EgressNoVpcAccessPrivateDestination, trace);
    };
    if let Some(n) = network
        && n != v.network
    {
        trace.push(format!(
            "{what}, but the caller is attached to network `{}`, not `{n}`; fix: deploy the caller with a connector \
             or a subnet in network `{n}`",
            v.network
        ));
        return Route::deny(Reason::EgressOtherNetwork, trace);
    }
    trace.push(format!(
        "{what}; private destinations go through the VPC network with either egress setting, so the call goes \
         through {} into network `{}`",
        v.via, v.network
    ));
    Route::allow(Reason::EgressVpc, trace, through(caller, v))
}

fn public(caller: &Caller, vpc: Option<&VpcPath>, dest: &Destination, mut trace: Vec<String>) -> Route {
    match vpc {
        Some(v) if v.egress == VpcEgress::AllTraffic => {
            trace.push(format!(
                "{dest} is a public address; with `--vpc-egress=all-traffic` every call goes through {} into network `{}`",
                v.via, v.network
            ));
            Route::allow(Reason::EgressVpc, trace, through(caller, v))
        }
        Some(_) => {
            trace.push(format!(
                "{dest} is a public address; with `--vpc-egress=private-ranges-only` only private destinations go \
                 through the VPC network, so the call leaves directly"
            ));
            Route::allow(Reason::EgressDirect, trace, left_directly(caller, Reason::EgressDirect))
        }
        None => {
            trace.push(format!("{dest} is a public address, so the call leaves directly"));
            Route::allow(Reason::EgressDirect, trace, left_directly(caller, Reason::EgressDirect))
        }
    }
}

fn service_url(caller: &Caller, vpc: Option<&VpcPath>, host: &str, mut trace: Vec<String>) -> Route {
    let url = format!("`{host}` is a service URL, a public name (like `*.run.app` on Cloud Run)");
    match vpc {
        None => {
            trace.push(format!(
                "{url}; the call leaves directly and arrives as internet traffic, which a service with \
                 `--ingress=internal` refuses"
            ));
            Route::allow(Reason::EgressDirect, trace, left_directly(caller, Reason::EgressDirect))
        }
        Some(v) if v.egress == VpcEgress::PrivateRangesOnly => {
            trace.push(format!(
                "{url}; with `--vpc-egress=private-ranges-only` only private destinations go through {}, so the call \
                 leaves directly and arrives as internet traffic: a service with `--ingress=internal` refuses it \
                 with 404; to make the call internal, deploy the caller with `--vpc-egress=all-traffic`",
                v.via
            ));
            let reason = Reason::EgressPrivateRangesOnlyServiceUrlLeftDirectly;
            Route::allow(reason, trace, left_directly(caller, reason))
        }
        Some(v) if v.private_google_access => {
            trace.push(format!(
                "{url}; with `--vpc-egress=all-traffic` the call goes through {} into network `{}`, whose subnet has \
                 Private Google Access, so it reaches the service from inside the network and arrives as internal traffic",
                v.via, v.network
            ));
            Route::allow(Reason::EgressVpc, trace, through(caller, v))
        }
        Some(v) => {
            trace.push(format!(
                "{url}; with `--vpc-egress=all-traffic` the call goes through {} into network `{}`, but the subnet it \
                 leaves from has no Private Google Access, so from there it cannot reach the service URL; fix: use a \
                 subnet with Private Google Access (`--enable-private-ip-google-access`), or deploy the caller with \
                 `--vpc-egress=private-ranges-only` (the call then arrives as internet traffic)",
                v.via, v.network
            ));
            Route::deny(Reason::EgressNoPrivateGoogleAccess, trace)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use runnel_model::network::ConnectorSubnet;
    use runnel_model::service::NetworkInterface;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST))
    }

    #[test]
    fn classify_examples() {
        use IpClass::*;
        let own = [ip("203.0.113.7"), ip("2001:db8::7")];
        #[rustfmt::skip]
        let cases = [
            ("127.0.0.1", Forbidden), ("127.255.255.254", Forbidden), ("0.0.0.0", Forbidden), ("0.1.2.3", Forbidden),
            ("169.254.169.254", Forbidden), ("169.254.0.1", Forbidden), ("224.0.0.1", Forbidden),
            ("239.255.255.250", Forbidden), ("255.255.255.255", Forbidden), ("240.0.0.1", Forbidden),
            ("::", Forbidden), ("::1", Forbidden), ("fe80::1", Forbidden), ("febf::1", Forbidden), ("ff02::1", Forbidden),
            ("::ffff:127.0.0.1", Forbidden), ("::ffff:169.254.169.254", Forbidden), ("::ffff:0.0.0.0", Forbidden),
            ("::127.0.0.1", Forbidden), ("::ffff:0:127.0.0.1", Forbidden), ("64:ff9b::127.0.0.1", Forbidden),
            ("64:ff9b::169.254.169.254", Forbidden), ("2002:7f00:1::1", Forbidden), ("2002:a9fe:a9fe::", Forbidden),
            ("64:ff9b:1::8.8.8.8", Forbidden),
            ("203.0.113.7", Forbidden), ("::ffff:203.0.113.7", Forbidden), ("2001:db8::7", Forbidden),
            ("10.0.0.1", Private), ("10.255.255.255", Private), ("172.16.0.1", Private), ("172.31.255.255", Private),
            ("192.168.1.1", Private), ("100.64.0.1", Private), ("100.127.255.255", Private),
            ("::ffff:10.0.0.1", Private), ("::ffff:192.168.0.1", Private), ("64:ff9b::10.1.2.3", Private),
            ("fd00::1", Private), ("fc00::1", Private), ("fec0::1", Private),
            ("8.8.8.8", Public), ("172.32.0.1", Public), ("172.15.255.255", Public), ("100.128.0.1", Public),
            ("100.63.255.255", Public), ("169.253.0.1", Public), ("126.255.255.255", Public), ("128.0.0.1", Public),
            ("203.0.113.8", Public), ("223.255.255.255", Public), ("::ffff:8.8.8.8", Public), ("2001:4860::8888", Public),
            ("64:ff9b::8.8.8.8", Public), ("fe7f::1", Public), ("fec0::1", Private),
        ];
        for (addr, want) in cases {
            assert_eq!(classify_ip(ip(addr), &own), want, "{addr}");
        }
        // A listener written in a mapped form still matches the plain address.
        assert_eq!(classify_ip(ip("198.51.100.1"), &[ip("::ffff:198.51.100.1")]), Forbidden);
    }

    fn range_connector() -> Connector {
        Connector {
            name: "projects/p/locations/local1/connectors/conn".into(),
            network: "default".into(),
            ip_cidr_range: "10.8.0.0/28".into(),
            ..Default::default()
        }
    }

    fn subnet(name: &str, pga: bool) -> Subnetwork {
        Subnetwork {
            name: name.into(),
            network: "projects/p/global/networks/default".into(),
            ip_cidr_range: "10.0.0.0/28".into(),
            region: "projects/p/regions/local1".into(),
            private_ip_google_access: pga,
            self_link: format!("projects/p/regions/local1/subnetworks/{name}"),
            ..Default::default()
        }
    }

    fn connector_access(egress: VpcEgress) -> VpcAccess {
        VpcAccess {
            connector: "projects/p/locations/local1/connectors/conn".into(),
            egress,
            network_interfaces: vec![],
        }
    }

    fn direct_access(network: &str, subnet: &str) -> VpcAccess {
        VpcAccess {
            connector: String::new(),
            egress: VpcEgress::AllTraffic,
            network_interfaces: vec![NetworkInterface {
                network: network.into(),
                subnetwork: subnet.into(),
                tags: vec![],
            }],
        }
    }

    #[test]
    fn a_connector_made_with_a_range_counts_as_having_private_google_access() {
        let path = VpcPath::from_model(
            &connector_access(VpcEgress::AllTraffic),
            Attachment::Connector { connector: &range_connector(), subnet: None },
        );
        assert_eq!(
            path,
            Ok(VpcPath {
                project: "p".into(),
                network: "projects/p/global/networks/default".into(),
                via: Via::Connector("projects/p/locations/local1/connectors/conn".into()),
                egress: VpcEgress::AllTraffic,
                private_google_access: true,
            })
        );
    }

    #[test]
    fn a_connector_made_on_a_subnet_has_the_subnets_flag() {
        let mut c = range_connector();
        c.ip_cidr_range.clear();
        c.subnet = Some(ConnectorSubnet { name: "s28".into(), project_id: "p".into() });
        for pga in [true, false] {
            let s = subnet("s28", pga);
            let path = VpcPath::from_model(
                &connector_access(VpcEgress::PrivateRangesOnly),
                Attachment::Connector { connector: &c, subnet: Some(&s) },
            );
            assert_eq!(path.as_ref().map(|p| p.private_google_access), Ok(pga));
            assert_eq!(path.as_ref().map(|p| p.network.as_str()), Ok("projects/p/global/networks/default"));
        }
        let err = VpcPath::from_model(
            &connector_access(VpcEgress::PrivateRangesOnly),
            Attachment::Connector { connector: &c, subnet: None },
        );
        assert!(err.is_err_and(|e| e.to_string().contains("that subnet is needed")));
        let other = subnet("other", true);
        let err = VpcPath::from_model(
            &connector_access(VpcEgress::PrivateRangesOnly),
            Attachment::Connector { connector: &c, subnet: Some(&other) },
        );
        assert!(err.is_err_and(|e| e.to_string().contains("was created on subnet `s28`")));
    }

    #[test]
    fn direct_vpc_egress_has_its_subnets_flag() {
        for pga in [true, false] {
            let s = subnet("sub", pga);
            for access in [direct_access("default", "sub"), direct_access("", "sub")] {
                let path = VpcPath::from_model(&access, Attachment::Direct { subnet: &s });
                assert_eq!(
                    path,
                    Ok(VpcPath {
                        project: "p".into(),
                        network: "projects/p/global/networks/default".into(),
                        via: Via::Subnet("projects/p/regions/local1/subnetworks/sub".into()),
                        egress: VpcEgress::AllTraffic,
                        private_google_access: pga,
                    })
                );
            }
        }
        // Only a network: the subnet of the same name.
        let s = subnet("default", false);
        assert!(VpcPath::from_model(&direct_access("default", ""), Attachment::Direct { subnet: &s }).is_ok());
        // Without a self link the name is built from the region and the network's project.
        let mut bare = subnet("sub", true);
        bare.self_link.clear();
        let path = VpcPath::from_model(&direct_access("default", "sub"), Attachment::Direct { subnet: &bare });
        assert_eq!(path.map(|p| p.via), Ok(Via::Subnet("projects/p/regions/local1/subnetworks/sub".into())));
    }

    #[test]
    fn mismatched_attachments_are_refused() {
        let s = subnet("sub", true);
        let c = range_connector();
        let cases: Vec<(VpcAccess, Attachment<'_>, &str)> = vec![
            (
                direct_access("default", "sub"),
                Attachment::Connector { connector: &c, subnet: None },
                "uses no connector",
            ),
            (connector_access(VpcEgress::AllTraffic), Attachment::Direct { subnet: &s }, "uses connector"),
            (direct_access("default", "other"), Attachment::Direct { subnet: &s }, "uses subnet `other`"),
            (direct_access("elsewhere", "sub"), Attachment::Direct { subnet: &s }, "is on network `elsewhere`"),
            (
                VpcAccess { connector: "projects/p/locations/local1/connectors/else".into(), ..Default::default() },
                Attachment::Connector { connector: &c, subnet: None },
                "but connector `projects/p/locations/local1/connectors/conn` was given",
            ),
            (
                connector_access(VpcEgress::AllTraffic),
                Attachment::Connector { connector: &c, subnet: Some(&s) },
                "created with an IP range",
            ),
        ];
        for (access, attachment, want) in cases {
            let got = VpcPath::from_model(&access, attachment).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
        // A bare connector name in the revision matches the connector's full name.
        let short = VpcAccess { connector: "conn".into(), ..Default::default() };
        assert!(VpcPath::from_model(&short, Attachment::Connector { connector: &c, subnet: None }).is_ok());
    }

    #[test]
    fn the_forbidden_trace_says_why() {
        let caller = Caller::new("front", "front-00001-abc", "local1");
        let cases = [
            ("127.0.0.1", "a loopback address"),
            ("::ffff:169.254.169.254", "the metadata server answers inside the sandbox"),
            ("203.0.113.7", "one of runnel's own listeners"),
        ];
        for (addr, want) in cases {
            let r = route(&caller, None, &Destination::Ip(ip(addr)), &[ip("203.0.113.7")]);
            assert_eq!(r.reason(), Reason::EgressForbiddenDestination);
            assert!(r.decision().trace.iter().any(|t| t.contains(want)), "{:?}", r.decision().trace);
        }
    }

    fn v4_in(base: [u8; 4], prefix: u32) -> impl Strategy<Value = Ipv4Addr> {
        let host_bits = 32 - prefix;
        let host_max = if host_bits == 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
        (0..=host_max).prop_map(move |h| Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) | h))
    }

    fn forbidden_v4_addr() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![v4_in([127, 0, 0, 0], 8), v4_in([169, 254, 0, 0], 16), Just(Ipv4Addr::UNSPECIFIED)]
    }

    fn private_v4_addr() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            v4_in([10, 0, 0, 0], 8),
            v4_in([172, 16, 0, 0], 12),
            v4_in([192, 168, 0, 0], 16),
            v4_in([100, 64, 0, 0], 10),
        ]
    }

    proptest! {
        /// Loopback, link-local and unspecified addresses are forbidden, plain or IPv4-mapped.
        #[test]
        fn loopback_link_local_and_unspecified_are_forbidden(a in forbidden_v4_addr()) {
            prop_assert_eq!(classify_ip(IpAddr::V4(a), &[]), IpClass::Forbidden);
            prop_assert_eq!(classify_ip(IpAddr::V6(a.to_ipv6_mapped()), &[]), IpClass::Forbidden);
            prop_assert_eq!(classify_ip(IpAddr::V6(a.to_ipv6_compatible()), &[]), IpClass::Forbidden);
        }

        /// Addresses in the private ranges are private, plain or IPv4-mapped.
        #[test]
        fn private_ranges_are_private(a in private_v4_addr()) {
            prop_assert_eq!(classify_ip(IpAddr::V4(a), &[]), IpClass::Private);
            prop_assert_eq!(classify_ip(IpAddr::V6(a.to_ipv6_mapped()), &[]), IpClass::Private);
        }

        /// The classification agrees with the model's list of private ranges for every IPv4
        /// address that is not forbidden, and a mapped form never changes it.
        #[test]
        fn v4_agrees_with_the_model_and_mapping_changes_nothing(raw in any::<u32>()) {
            let a = Ipv4Addr::from(raw);
            let class = classify_ip(IpAddr::V4(a), &[]);
            if class != IpClass::Forbidden {
                prop_assert_eq!(class == IpClass::Private, ranges::is_private(a));
            }
            prop_assert_eq!(classify_ip(IpAddr::V6(a.to_ipv6_mapped()), &[]), class);
        }

        /// Any address runnel listens on is forbidden, whatever it is, in any form.
        #[test]
        fn own_listeners_are_forbidden(raw in any::<u32>(), raw6 in any::<u128>()) {
            let a = IpAddr::V4(Ipv4Addr::from(raw));
            prop_assert_eq!(classify_ip(a, &[a]), IpClass::Forbidden);
            prop_assert_eq!(classify_ip(IpAddr::V6(Ipv4Addr::from(raw).to_ipv6_mapped()), &[a]), IpClass::Forbidden);
            let b = IpAddr::V6(Ipv6Addr::from(raw6));
            prop_assert_eq!(classify_ip(b, &[b]), IpClass::Forbidden);
        }
    }
}
