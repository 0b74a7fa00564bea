//! VPC networks, subnets (Compute Engine v1 shapes) and Serverless VPC Access connectors
//! (VPC Access v1 shape).
//!
//! Ranges in one network never overlap: a subnet or connector range is checked against every
//! subnet and connector range of its network, in every region.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{Invalid, names, ranges};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    #[serde(default = "kind_network")]
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub creation_timestamp: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub self_link: String,
    #[serde(default)]
    pub auto_create_subnetworks: bool,
    #[serde(default)]
    pub subnetworks: Vec<String>,
}

fn kind_network() -> String {
    "compute#network".into()
}

fn kind_subnetwork() -> String {
    "compute#subnetwork".into()
}

impl Network {
    pub fn validate(&self) -> Result<(), Invalid> {
        names::compute("network", &self.name)?;
        if self.auto_create_subnetworks {
            return Err(Invalid::new(
                "autoCreateSubnetworks",
                "auto mode networks are not supported; create a custom mode network (`--subnet-mode=custom`) and add subnets with `runnel compute networks subnets create`",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnetwork {
    #[serde(default = "kind_subnetwork")]
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub creation_timestamp: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The network's self link, or its name on input.
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub ip_cidr_range: String,
    /// The region's self link, or its name on input.
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub private_ip_google_access: bool,
    #[serde(default)]
    pub self_link: String,
}

/// A range already placed in a network, with who holds it, for overlap messages.
#[derive(Debug, Clone)]
pub struct PlacedRange {
    pub holder: String,
    pub range: Ipv4Net,
}

/// Refuses `range` when it overlaps a range already placed in the same network.
pub fn check_no_overlap(field: &str, range: &Ipv4Net, network: &str, placed: &[PlacedRange]) -> Result<(), Invalid> {
    match placed.iter().find(|p| ranges::overlaps(range, &p.range)) {
        Some(p) => Err(Invalid::new(
            field,
            format!(
                "`{range}` overlaps `{}` of {} in network `{network}`; ranges in one network must not overlap, pick a free range",
                p.range, p.holder
            ),
        )),
        None => Ok(()),
    }
}

impl Subnetwork {
    /// Checks the subnet alone and against the ranges already in its network.
    pub fn validate(&self, network: &str, placed: &[PlacedRange]) -> Result<Ipv4Net, Invalid> {
        names::compute("subnet", &self.name)?;
        let range = ranges::subnet_range(&self.ip_cidr_range)?;
        check_no_overlap("ipCidrRange", &range, network, placed)?;
        Ok(range)
    }
}

/// Connector machine types Serverless VPC Access offers.
pub const MACHINE_TYPES: [&str; 3] = ["e2-micro", "f1-micro", "e2-standard-4"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorSubnet {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connector {
    #[serde(default)]
    pub name: String,
    /// The network's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip_cidr_range: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub min_throughput: u32,
    #[serde(default)]
    pub max_throughput: u32,
    #[serde(default)]
    pub min_instances: u32,
    #[serde(default)]
    pub max_instances: u32,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ConnectorSubnet>,
    #[serde(default)]
    pub connected_projects: Vec<String>,
}

impl Connector {
    /// Fills the defaults `gcloud compute networks vpc-access connectors create` uses.
    pub fn with_defaults(mut self) -> Self {
        if self.min_instances == 0 {
            self.min_instances = 2;
        }
        if self.max_instances == 0 {
            self.max_instances = 10;
        }
        if self.machine_type.is_empty() {
            self.machine_type = "e2-micro".into();
        }
        // Throughput in Mbps follows the instance counts, 100 per e2-micro instance as on
        // Google Cloud; it is informational in runnel.
        let per = match self.machine_type.as_str() {
            "e2-standard-4" => 1600,
            _ => 100,
        };
        self.min_throughput = self.min_instances.saturating_mul(per);
        self.max_throughput = self.max_instances.saturating_mul(per);
        self
    }

    /// The rules that need nothing but the connector: name, sizes, machine type, and that it
    /// has exactly one of a range or a subnet. The range itself is checked with
    /// [`Connector::validate_range`] once the network's other ranges are known.
    pub fn validate(&self, id: &str) -> Result<(), Invalid> {
        names::connector(id)?;
        if !(2..=9).contains(&self.min_instances) {
            return Err(Invalid::new(
                "minInstances",
                format!("min instances `{}` is not between 2 and 9", self.min_instances),
            ));
        }
        if !(3..=10).contains(&self.max_instances) {
            return Err(Invalid::new(
                "maxInstances",
                format!("max instances `{}` is not between 3 and 10", self.max_instances),
            ));
        }
        if self.max_instances <= self.min_instances {
            return Err(Invalid::new(
                "maxInstances",
                format!(
                    "max instances `{}` must be greater than min instances `{}`",
                    self.max_instances, self.min_instances
                ),
            ));
        }
        if !MACHINE_TYPES.contains(&self.machine_type.as_str()) {
            return Err(Invalid::new(
                "machineType",
                format!("machine type `{}` is not one of `e2-micro`, `f1-micro`, `e2-standard-4`", self.machine_type),
            ));
        }
        match (&self.subnet, self.ip_cidr_range.is_empty()) {
            (Some(_), false) => Err(Invalid::new(
                "subnet",
                "the connector names both a subnet and an IP range; give `--subnet` for an existing /28 subnet, or `--network` with `--range`",
            )),
            (None, true) => Err(Invalid::new(
                "ipCidrRange",
                "the connector has neither an IP range nor a subnet; give `--network` with `--range=10.8.0.0/28`, or `--subnet` for an existing /28 subnet",
            )),
            (None, false) if self.network.is_empty() => {
                Err(Invalid::new("network", "a connector created with an IP range needs a network; give `--network`"))
            }
            _ => Ok(()),
        }
    }

    /// Checks the connector's own range against the ranges already placed in its network.
    pub fn validate_range(&self, placed: &[PlacedRange]) -> Result<Ipv4Net, Invalid> {
        let range = ranges::connector_range(&self.ip_cidr_range)?;
        check_no_overlap("ipCidrRange", &range, &self.network, placed)?;
        Ok(range)
    }
}

/// An internal endpoint: a name and an address inside a subnet of a VPC network, and where the
/// service behind it really listens. It is how a service reaches a database or another private
/// host through its connector, as Cloud Run users reach Cloud SQL or Memorystore by private IP.
/// Inside instances it answers to its address and to `NAME.NETWORK.internal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default = "kind_endpoint")]
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub creation_timestamp: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The network's self link, or its name on input.
    #[serde(default)]
    pub network: String,
    /// The subnet's self link, or its name on input.
    #[serde(default)]
    pub subnetwork: String,
    /// `IP:PORT` inside the subnet's range, as callers in the VPC address it.
    #[serde(default)]
    pub address: String,
    /// `IP:PORT` where the service really listens, reached by the daemon on the host.
    #[serde(default)]
    pub target: String,
    /// `NAME.NETWORK.internal`, the name callers may use instead of the address.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub self_link: String,
}

fn kind_endpoint() -> String {
    "runnel#endpoint".into()
}

impl Endpoint {
    /// Checks the endpoint against its subnet's range; returns the address and target.
    pub fn validate(&self, subnet_range: &Ipv4Net) -> Result<(std::net::SocketAddrV4, std::net::SocketAddr), Invalid> {
        names::compute("endpoint", &self.name)?;
        let address: std::net::SocketAddrV4 = self.address.parse().map_err(|_| {
            Invalid::new("address", format!("`{}` is not IP:PORT, such as `10.0.0.5:5432`", self.address))
        })?;
        if !subnet_range.contains(address.ip()) {
            return Err(Invalid::new(
                "address",
                format!("`{}` is not inside the subnet's range `{subnet_range}`; pick an address in it", address.ip()),
            ));
        }
        if *address.ip() == subnet_range.network() || *address.ip() == subnet_range.broadcast() {
            return Err(Invalid::new(
                "address",
                format!("`{}` is the network or broadcast address of `{subnet_range}`; pick another", address.ip()),
            ));
        }
        if address.port() == 0 {
            return Err(Invalid::new("address", "the port must not be 0"));
        }
        let target: std::net::SocketAddr = self.target.parse().map_err(|_| {
            Invalid::new("target", format!("`{}` is not IP:PORT, such as `127.0.0.1:5432`", self.target))
        })?;
        if target.port() == 0 || target.ip().is_unspecified() {
            return Err(Invalid::new("target", format!("`{}` is not an address a service can listen on", self.target)));
        }
        Ok((address, target))
    }
}

/// A subnet a connector is placed on must be a /28.
pub fn check_connector_subnet(subnet: &Subnetwork) -> Result<(), Invalid> {
    let range = ranges::parse_cidr("subnet", &subnet.ip_cidr_range)?;
    if range.prefix_len() != 28 {
        return Err(Invalid::new(
            "subnet",
            format!(
                "subnet `{}` is a /{}; a connector needs a /28 subnet, or an unused /28 given with `--range`",
                subnet.name,
                range.prefix_len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector() -> Connector {
        Connector { network: "default".into(), ip_cidr_range: "10.8.0.0/28".into(), ..Default::default() }
            .with_defaults()
    }

    #[test]
    fn connector_defaults() {
        let c = connector();
        assert_eq!((c.min_instances, c.max_instances, c.machine_type.as_str()), (2, 10, "e2-micro"));
        assert_eq!((c.min_throughput, c.max_throughput), (200, 1000));
        assert_eq!(c.validate("conn"), Ok(()));
    }

    #[test]
    fn connector_rules() {
        type Edit = fn(&mut Connector);
        let cases: &[(&str, Edit, &str)] = &[
            ("min 1", |c| c.min_instances = 1, "minInstances: min instances `1` is not between 2 and 9"),
            ("min 10", |c| c.min_instances = 10, "minInstances: min instances `10` is not between 2 and 9"),
            ("max 2", |c| c.max_instances = 2, "maxInstances: max instances `2` is not between 3 and 10"),
            ("max 11", |c| c.max_instances = 11, "maxInstances: max instances `11` is not between 3 and 10"),
            (
                "max = min",
                |c| {
                    c.min_instances = 5;
                    c.max_instances = 5
                },
                "maxInstances: max instances `5` must be greater than min instances `5`",
            ),
            (
                "machine",
                |c| c.machine_type = "n1-standard-1".into(),
                "machineType: machine type `n1-standard-1` is not one of `e2-micro`, `f1-micro`, `e2-standard-4`",
            ),
            (
                "both",
                |c| c.subnet = Some(ConnectorSubnet { name: "s".into(), ..Default::default() }),
                "subnet: the connector names both a subnet and an IP range",
            ),
            ("neither", |c| c.ip_cidr_range.clear(), "ipCidrRange: the connector has neither an IP range nor a subnet"),
            ("no network", |c| c.network.clear(), "network: a connector created with an IP range needs a network"),
        ];
        for (what, edit, want) in cases {
            let mut c = connector();
            edit(&mut c);
            let got = c.validate("conn").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(got.starts_with(want), "{what}: {got}");
        }
        let got = connector().validate("a-connector-name-too-long").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(got.contains("has 25 characters"), "{got}");
    }

    #[test]
    fn ranges_in_a_network_do_not_overlap() {
        let placed =
            vec![PlacedRange { holder: "subnet `s1`".into(), range: "10.8.0.0/24".parse().unwrap_or_default() }];
        let got = connector().validate_range(&placed).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            got,
            "ipCidrRange: `10.8.0.0/28` overlaps `10.8.0.0/24` of subnet `s1` in network `default`; ranges in one network must not overlap, pick a free range"
        );
        let mut c = connector();
        c.ip_cidr_range = "10.9.0.0/28".into();
        assert!(c.validate_range(&placed).is_ok());
    }

    #[test]
    fn subnets() {
        let s = Subnetwork { name: "s1".into(), ip_cidr_range: "10.0.0.0/24".into(), ..Default::default() };
        assert!(s.validate("n", &[]).is_ok());
        let placed =
            vec![PlacedRange { holder: "connector `c`".into(), range: "10.0.0.16/28".parse().unwrap_or_default() }];
        assert!(s.validate("n", &placed).is_err());
        let n = Network { name: "n".into(), auto_create_subnetworks: true, ..Default::default() };
        assert!(
            n.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("auto mode networks are not supported")
        );
    }
}
