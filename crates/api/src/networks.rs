//! VPC networks and subnets (Compute v1) and Serverless VPC Access connectors (VPC Access v1).
//!
//! Ranges in one network never overlap: every subnet and connector range is checked against
//! all the others of its network, across regions, inside the transaction that writes it.

use runnel_model::names;
use runnel_model::network::{self, Connector, Endpoint, Network, PlacedRange, Subnetwork};
use runnel_policy::iam::Principal;
use runnel_store::Read;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, Target, get, now, put, scan};
use crate::services;

pub(crate) fn network_key(name: &str) -> String {
    format!("networks/{name}")
}

pub(crate) fn subnet_key(region: &str, name: &str) -> String {
    format!("subnets/{region}/{name}")
}

pub(crate) fn endpoint_key(region: &str, name: &str) -> String {
    format!("endpoints/{region}/{name}")
}

pub(crate) fn connector_key(region: &str, name: &str) -> String {
    format!("connectors/{region}/{name}")
}

const CONNECTOR_TYPE: &str = "type.googleapis.com/google.cloud.vpcaccess.v1.Connector";

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A numeric id as Compute Engine gives every resource.
fn numeric_id() -> String {
    use rand::Rng;
    format!("{}", rand::rng().random_range(1_000_000_000_000_000_000u64..9_000_000_000_000_000_000u64))
}

impl ControlPlane {
    fn network_link(&self, name: &str) -> String {
        format!("projects/{}/global/networks/{name}", self.project.project_id)
    }

    fn subnet_link(&self, region: &str, name: &str) -> String {
        format!("projects/{}/regions/{region}/subnetworks/{name}", self.project.project_id)
    }

    fn connector_name(&self, region: &str, name: &str) -> String {
        format!("projects/{}/locations/{region}/connectors/{name}", self.project.project_id)
    }

    fn project_target(
        &self,
        permission: &str,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        name: &str,
    ) -> ApiResult<()> {
        self.authorize(r, caller, permission, &Target { name, policy_key: None })
    }

    /// Every range already placed in `network`, with its holder, for overlap checks.
    fn placed_ranges(&self, r: &(impl Read + ?Sized), network: &str) -> ApiResult<Vec<PlacedRange>> {
        let mut placed = Vec::new();
        for s in scan::<Subnetwork>(r, "subnets/")? {
            if last_segment(&s.network) == network
                && let Ok(range) = s.ip_cidr_range.parse()
            {
                placed.push(PlacedRange { holder: format!("subnet `{}`", s.name), range });
            }
        }
        for c in scan::<Connector>(r, "connectors/")? {
            if c.network == network
                && c.subnet.is_none()
                && let Ok(range) = c.ip_cidr_range.parse()
            {
                placed.push(PlacedRange { holder: format!("connector `{}`", last_segment(&c.name)), range });
            }
        }
        Ok(placed)
    }

    fn present_network(&self, r: &(impl Read + ?Sized), mut n: Network) -> ApiResult<Network> {
        n.subnetworks = scan::<Subnetwork>(r, "subnets/")?
            .into_iter()
            .filter(|s| last_segment(&s.network) == n.name)
            .map(|s| s.self_link)
            .collect();
        Ok(n)
    }

    // ---- networks -------------------------------------------------------------------------

    pub fn create_network(&self, caller: &Principal, project: &str, body: Network) -> ApiResult<Value> {
        self.check_project(project)?;
        body.validate()?;
        let link = self.network_link(&body.name);
        let n = self.write(|w| {
            self.project_target("compute.networks.create", w, caller, &link)?;
            if get::<Network>(w, &network_key(&body.name))?.is_some() {
                return Err(ApiError::already_exists(format!(
                    "network `{}` already exists; pick another name",
                    body.name
                )));
            }
            let n = Network {
                kind: "compute#network".into(),
                id: numeric_id(),
                creation_timestamp: now(),
                name: body.name.clone(),
                description: body.description.clone(),
                self_link: link.clone(),
                auto_create_subnetworks: false,
                subnetworks: Vec::new(),
            };
            put(w, &network_key(&n.name), &n)?;
            Ok(n)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "insert", &n.self_link, &n.id, None))
    }

    pub fn list_networks(&self, caller: &Principal, project: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let parent = format!("projects/{}/global/networks", self.project.project_id);
        self.read(|r| {
            self.project_target("compute.networks.list", r, caller, &parent)?;
            let items = scan::<Network>(r, "networks/")?
                .into_iter()
                .map(|n| self.present_network(r, n))
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(json!({ "kind": "compute#networkList", "id": parent, "items": items, "selfLink": parent }))
        })
    }

    pub fn get_network(&self, caller: &Principal, project: &str, name: &str) -> ApiResult<Network> {
        self.check_project(project)?;
        let link = self.network_link(name);
        self.read(|r| {
            self.project_target("compute.networks.get", r, caller, &link)?;
            let n: Network = get(r, &network_key(name))?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "network `{name}` does not exist; list networks with `runnel compute networks list`"
                ))
            })?;
            self.present_network(r, n)
        })
    }

    pub fn delete_network(&self, caller: &Principal, project: &str, name: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let link = self.network_link(name);
        let n = self.write(|w| {
            self.project_target("compute.networks.delete", w, caller, &link)?;
            let n: Network = get(w, &network_key(name))?
                .ok_or_else(|| ApiError::not_found(format!("network `{name}` does not exist")))?;
            let subnets: Vec<String> = scan::<Subnetwork>(w, "subnets/")?
                .into_iter()
                .filter(|s| last_segment(&s.network) == name)
                .map(|s| format!("subnet `{}` in `{}`", s.name, last_segment(&s.region)))
                .collect();
            let connectors: Vec<String> = scan::<Connector>(w, "connectors/")?
                .into_iter()
                .filter(|c| c.network == name)
                .map(|c| format!("connector `{}`", last_segment(&c.name)))
                .collect();
            let users: Vec<String> = subnets.into_iter().chain(connectors).collect();
            if !users.is_empty() {
                return Err(ApiError::failed_precondition(format!(
                    "network `{name}` is in use by {}; delete those first",
                    users.join(", ")
                )));
            }
            w.delete(&network_key(name))?;
            Ok(n)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "delete", &n.self_link, &n.id, None))
    }

    // ---- subnets --------------------------------------------------------------------------

    pub fn create_subnet(&self, caller: &Principal, project: &str, region: &str, body: Subnetwork) -> ApiResult<Value> {
        self.check_project(project)?;
        names::region(region)?;
        let network = last_segment(&body.network).to_string();
        if network.is_empty() {
            return Err(ApiError::invalid("the subnet names no network; pass `--network`"));
        }
        let link = self.subnet_link(region, &body.name);
        let s = self.write(|w| {
            self.project_target("compute.subnetworks.create", w, caller, &link)?;
            if get::<Network>(w, &network_key(&network))?.is_none() {
                return Err(ApiError::invalid(format!(
                    "network `{network}` does not exist; create it with `runnel compute networks create {network}`"
                )));
            }
            if get::<Subnetwork>(w, &subnet_key(region, &body.name))?.is_some() {
                return Err(ApiError::already_exists(format!(
                    "subnet `{}` already exists in region `{region}`; pick another name",
                    body.name
                )));
            }
            let placed = self.placed_ranges(w, &network)?;
            body.validate(&network, &placed)?;
            let s = Subnetwork {
                kind: "compute#subnetwork".into(),
                id: numeric_id(),
                creation_timestamp: now(),
                name: body.name.clone(),
                description: body.description.clone(),
                network: self.network_link(&network),
                ip_cidr_range: body.ip_cidr_range.clone(),
                region: format!("projects/{}/regions/{region}", self.project.project_id),
                private_ip_google_access: body.private_ip_google_access,
                self_link: link.clone(),
            };
            put(w, &subnet_key(region, &s.name), &s)?;
            Ok(s)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "insert", &s.self_link, &s.id, Some(region)))
    }

    /// Subnets of one region, or of every region with `-`.
    pub fn list_subnets(&self, caller: &Principal, project: &str, region: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let parent = format!("projects/{}/regions/{region}/subnetworks", self.project.project_id);
        self.read(|r| {
            self.project_target("compute.subnetworks.list", r, caller, &parent)?;
            let prefix = if region == "-" { "subnets/".to_string() } else { format!("subnets/{region}/") };
            let items: Vec<Subnetwork> = scan(r, &prefix)?;
            Ok(json!({ "kind": "compute#subnetworkList", "id": parent, "items": items, "selfLink": parent }))
        })
    }

    pub fn get_subnet(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Subnetwork> {
        self.check_project(project)?;
        let link = self.subnet_link(region, name);
        self.read(|r| {
            self.project_target("compute.subnetworks.get", r, caller, &link)?;
            get(r, &subnet_key(region, name))?.ok_or_else(|| {
                ApiError::not_found(format!("subnet `{name}` does not exist in region `{region}`; list subnets with `runnel compute networks subnets list`"))
            })
        })
    }

    pub fn delete_subnet(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let link = self.subnet_link(region, name);
        let s = self.write(|w| {
            self.project_target("compute.subnetworks.delete", w, caller, &link)?;
            let s: Subnetwork = get(w, &subnet_key(region, name))?
                .ok_or_else(|| ApiError::not_found(format!("subnet `{name}` does not exist in region `{region}`")))?;
            let mut users: Vec<String> = scan::<Connector>(w, &format!("connectors/{region}/"))?
                .into_iter()
                .filter(|c| c.subnet.as_ref().is_some_and(|cs| cs.name == name))
                .map(|c| format!("connector `{}`", last_segment(&c.name)))
                .collect();
            users.extend(
                scan::<Endpoint>(w, &format!("endpoints/{region}/"))?
                    .into_iter()
                    .filter(|e| last_segment(&e.subnetwork) == name)
                    .map(|e| format!("endpoint `{}`", e.name)),
            );
            users.extend(self.revisions_using(w, |rev| {
                rev.vpc_access.as_ref().is_some_and(|v| v.network_interfaces.iter().any(|ni| ni.subnetwork == name))
                    && rev.name.split('/').nth(3) == Some(region)
            })?);
            if !users.is_empty() {
                return Err(ApiError::failed_precondition(format!(
                    "subnet `{name}` is in use by {}; remove those first",
                    users.join(", ")
                )));
            }
            w.delete(&subnet_key(region, name))?;
            Ok(s)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "delete", &s.self_link, &s.id, Some(region)))
    }

    // ---- connectors -----------------------------------------------------------------------

    pub fn create_connector(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        id: &str,
        body: Connector,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        names::region(region)?;
        if id.is_empty() {
            return Err(ApiError::invalid("the request has no `connectorId` query parameter; name the connector"));
        }
        let mut c = body.with_defaults();
        c.network = last_segment(&c.network).to_string();
        c.validate(id)?;
        let full = self.connector_name(region, id);
        let c = self.write(|w| {
            self.project_target("vpcaccess.connectors.create", w, caller, &full)?;
            if get::<Connector>(w, &connector_key(region, id))?.is_some() {
                return Err(ApiError::already_exists(format!("connector `{id}` already exists in region `{region}`; pick another name")));
            }
            match c.subnet.clone() {
                Some(cs) => {
                    let subnet: Subnetwork = get(w, &subnet_key(region, &cs.name))?.ok_or_else(|| {
                        ApiError::invalid(format!(
                            "subnet `{}` does not exist in region `{region}`; a connector uses a /28 subnet of its own region",
                            cs.name
                        ))
                    })?;
                    network::check_connector_subnet(&subnet)?;
                    let subnet_network = last_segment(&subnet.network).to_string();
                    if !c.network.is_empty() && c.network != subnet_network {
                        return Err(ApiError::invalid(format!("subnet `{}` belongs to network `{subnet_network}`, not `{}`", cs.name, c.network)));
                    }
                    if let Some(other) = scan::<Connector>(w, &format!("connectors/{region}/"))?
                        .into_iter()
                        .find(|o| o.subnet.as_ref().is_some_and(|os| os.name == cs.name))
                    {
                        return Err(ApiError::failed_precondition(format!(
                            "subnet `{}` is already used by connector `{}`; each connector needs a subnet of its own",
                            cs.name,
                            last_segment(&other.name)
                        )));
                    }
                    c.network = subnet_network;
                    c.ip_cidr_range = String::new();
                    c.subnet = Some(runnel_model::network::ConnectorSubnet { name: cs.name, project_id: self.project.project_id.clone() });
                }
                None => {
                    if get::<Network>(w, &network_key(&c.network))?.is_none() {
                        return Err(ApiError::invalid(format!(
                            "network `{}` does not exist; create it with `runnel compute networks create {}`",
                            c.network, c.network
                        )));
                    }
                    let placed = self.placed_ranges(w, &c.network)?;
                    c.validate_range(&placed)?;
                }
            }
            c.name = full.clone();
            c.state = "READY".into();
            c.connected_projects = vec![self.project.project_id.clone()];
            put(w, &connector_key(region, id), &c)?;
            Ok(c)
        })?;
        Ok(crate::ops::done(&self.project.project_id, region, CONNECTOR_TYPE, &c))
    }

    pub fn list_connectors(&self, caller: &Principal, project: &str, region: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let parent = format!("projects/{}/locations/{region}", self.project.project_id);
        self.read(|r| {
            self.project_target("vpcaccess.connectors.list", r, caller, &parent)?;
            let prefix = if region == "-" { "connectors/".to_string() } else { format!("connectors/{region}/") };
            let connectors: Vec<Connector> = scan(r, &prefix)?;
            Ok(json!({ "connectors": connectors }))
        })
    }

    pub fn get_connector(&self, caller: &Principal, project: &str, region: &str, id: &str) -> ApiResult<Connector> {
        self.check_project(project)?;
        let full = self.connector_name(region, id);
        self.read(|r| {
            self.project_target("vpcaccess.connectors.get", r, caller, &full)?;
            get(r, &connector_key(region, id))?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "connector `{id}` does not exist in region `{region}`; list connectors with `runnel compute networks vpc-access connectors list --region={region}`"
                ))
            })
        })
    }

    pub fn delete_connector(&self, caller: &Principal, project: &str, region: &str, id: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let full = self.connector_name(region, id);
        let c = self.write(|w| {
            self.project_target("vpcaccess.connectors.delete", w, caller, &full)?;
            let c: Connector = get(w, &connector_key(region, id))?
                .ok_or_else(|| ApiError::not_found(format!("connector `{id}` does not exist in region `{region}`")))?;
            let users = self.revisions_using(w, |rev| services::uses_connector(rev, &full))?;
            if !users.is_empty() {
                return Err(ApiError::failed_precondition(format!(
                    "connector `{id}` is in use by {}; deploy those services with `--clear-vpc-connector` (or delete them) first",
                    users.join(", ")
                )));
            }
            w.delete(&connector_key(region, id))?;
            Ok(c)
        })?;
        Ok(crate::ops::done(&self.project.project_id, region, CONNECTOR_TYPE, &c))
    }

    // ---- internal endpoints -------------------------------------------------------------------

    fn endpoint_link(&self, region: &str, name: &str) -> String {
        format!("projects/{}/regions/{region}/endpoints/{name}", self.project.project_id)
    }

    /// Places a name and an address in a subnet, and records where the service really listens.
    pub fn create_endpoint(&self, caller: &Principal, project: &str, region: &str, body: Endpoint) -> ApiResult<Value> {
        self.check_project(project)?;
        names::region(region)?;
        let link = self.endpoint_link(region, &body.name);
        let subnet_name = last_segment(&body.subnetwork).to_string();
        if subnet_name.is_empty() {
            return Err(ApiError::invalid("the endpoint names no subnet; pass `--subnet`"));
        }
        let e = self.write(|w| {
            self.project_target("compute.endpoints.create", w, caller, &link)?;
            let subnet: Subnetwork = get(w, &subnet_key(region, &subnet_name))?.ok_or_else(|| {
                ApiError::invalid(format!(
                    "subnet `{subnet_name}` does not exist in region `{region}`; create it with `runnel compute networks subnets create {subnet_name} --network=NETWORK --region={region} --range=10.0.0.0/24`"
                ))
            })?;
            let network = last_segment(&subnet.network).to_string();
            if !body.network.is_empty() && last_segment(&body.network) != network {
                return Err(ApiError::invalid(format!(
                    "subnet `{subnet_name}` belongs to network `{network}`, not `{}`; pass `--network={network}` or another subnet",
                    last_segment(&body.network)
                )));
            }
            let range = subnet.ip_cidr_range.parse().map_err(ApiError::internal)?;
            let (address, _) = body.validate(&range)?;
            if get::<Endpoint>(w, &endpoint_key(region, &body.name))?.is_some() {
                return Err(ApiError::already_exists(format!("endpoint `{}` already exists in region `{region}`; pick another name", body.name)));
            }
            let hostname = format!("{}.{network}.internal", body.name);
            for other in scan::<Endpoint>(w, "endpoints/")? {
                if last_segment(&other.network) == network && other.address == address.to_string() {
                    return Err(ApiError::already_exists(format!(
                        "address `{address}` in network `{network}` is already endpoint `{}`; pick another address",
                        other.name
                    )));
                }
                if other.hostname == hostname {
                    return Err(ApiError::already_exists(format!(
                        "the name `{hostname}` is already endpoint `{}` in another region; pick another name",
                        other.name
                    )));
                }
            }
            let e = Endpoint {
                kind: "runnel#endpoint".into(),
                id: numeric_id(),
                creation_timestamp: now(),
                name: body.name.clone(),
                description: body.description.clone(),
                network: self.network_link(&network),
                subnetwork: subnet.self_link.clone(),
                address: address.to_string(),
                target: body.target.clone(),
                hostname,
                region: format!("projects/{}/regions/{region}", self.project.project_id),
                self_link: link.clone(),
            };
            put(w, &endpoint_key(region, &e.name), &e)?;
            Ok(e)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "insert", &e.self_link, &e.id, Some(region)))
    }

    pub fn list_endpoints(&self, caller: &Principal, project: &str, region: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let parent = format!("projects/{}/regions/{region}/endpoints", self.project.project_id);
        self.read(|r| {
            self.project_target("compute.endpoints.list", r, caller, &parent)?;
            let prefix = if region == "-" { "endpoints/".to_string() } else { format!("endpoints/{region}/") };
            let items: Vec<Endpoint> = scan(r, &prefix)?;
            Ok(json!({ "kind": "runnel#endpointList", "id": parent, "items": items, "selfLink": parent }))
        })
    }

    pub fn get_endpoint(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Endpoint> {
        self.check_project(project)?;
        let link = self.endpoint_link(region, name);
        self.read(|r| {
            self.project_target("compute.endpoints.get", r, caller, &link)?;
            get(r, &endpoint_key(region, name))?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "endpoint `{name}` does not exist in region `{region}`; list endpoints with `runnel compute networks endpoints list`"
                ))
            })
        })
    }

    pub fn delete_endpoint(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let link = self.endpoint_link(region, name);
        let e = self.write(|w| {
            self.project_target("compute.endpoints.delete", w, caller, &link)?;
            let e: Endpoint = get(w, &endpoint_key(region, name))?
                .ok_or_else(|| ApiError::not_found(format!("endpoint `{name}` does not exist in region `{region}`")))?;
            w.delete(&endpoint_key(region, name))?;
            Ok(e)
        })?;
        Ok(crate::ops::compute_done(&self.project.project_id, "delete", &e.self_link, &e.id, Some(region)))
    }

    /// Every internal endpoint, for the egress path.
    /// Every internal endpoint, as of the last commit (read once per commit: each egress
    /// proxy asks on every outbound call).
    pub fn endpoints(&self) -> ApiResult<Vec<Endpoint>> {
        self.endpoint_list.get(self, (), || self.read(|r| scan(r, "endpoints/")))
    }
}
