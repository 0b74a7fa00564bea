//! Cloud Run services and revisions (Admin API v2 shapes).
//!
//! Ingress, URLs, audiences and the invoker check belong to the service; the service account,
//! VPC access, containers and scaling belong to the revision template, and every change to the
//! template makes a new immutable revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Invalid, names};

/// Ingress setting (`--ingress=all|internal|internal-and-cloud-load-balancing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Ingress {
    #[default]
    #[serde(rename = "INGRESS_TRAFFIC_ALL")]
    All,
    #[serde(rename = "INGRESS_TRAFFIC_INTERNAL_ONLY")]
    InternalOnly,
    /// Internal plus external Application Load Balancers. runnel has no load balancers yet, so
    /// this admits exactly what `InternalOnly` admits.
    #[serde(rename = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER")]
    InternalLoadBalancer,
}

impl Ingress {
    /// The gcloud flag value.
    pub fn flag(self) -> &'static str {
        match self {
            Ingress::All => "all",
            Ingress::InternalOnly => "internal",
            Ingress::InternalLoadBalancer => "internal-and-cloud-load-balancing",
        }
    }

    pub fn from_flag(value: &str) -> Result<Self, Invalid> {
        match value {
            "all" => Ok(Ingress::All),
            "internal" => Ok(Ingress::InternalOnly),
            "internal-and-cloud-load-balancing" => Ok(Ingress::InternalLoadBalancer),
            _ => Err(Invalid::new(
                "ingress",
                format!("ingress `{value}` is not one of `all`, `internal`, `internal-and-cloud-load-balancing`"),
            )),
        }
    }
}

/// VPC egress setting (`--vpc-egress=private-ranges-only|all-traffic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VpcEgress {
    #[default]
    #[serde(rename = "PRIVATE_RANGES_ONLY")]
    PrivateRangesOnly,
    #[serde(rename = "ALL_TRAFFIC")]
    AllTraffic,
}

impl VpcEgress {
    pub fn flag(self) -> &'static str {
        match self {
            VpcEgress::PrivateRangesOnly => "private-ranges-only",
            VpcEgress::AllTraffic => "all-traffic",
        }
    }

    pub fn from_flag(value: &str) -> Result<Self, Invalid> {
        match value {
            "private-ranges-only" => Ok(VpcEgress::PrivateRangesOnly),
            "all-traffic" | "all" => Ok(VpcEgress::AllTraffic),
            _ => Err(Invalid::new(
                "vpcAccess.egress",
                format!("egress `{value}` is not one of `private-ranges-only`, `all-traffic`"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnetwork: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcAccess {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub connector: String,
    #[serde(default)]
    pub egress: VpcEgress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default)]
    pub container_port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A label only: runnel runs `command` on the host's files, it pulls no image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instance_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_count: Option<u32>,
}

/// The revision template: everything that, when changed, makes a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionTemplate {
    /// Requested revision name; generated when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_access: Option<VpcAccess>,
    /// A duration such as `300s`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub max_instance_request_concurrency: u32,
}

pub const DEFAULT_PORT: u32 = 8080;
/// Ports the sandbox itself listens on inside every instance: an instance binding `0.0.0.0`
/// on one of them would collide with the metadata server or the egress proxy.
pub const RESERVED_PORTS: [u32; 2] = [80, 3128];
/// Instances a revision may grow to when it sets no maximum (runnel runs on one machine).
pub const DEFAULT_MAX_INSTANCES: u32 = 10;
pub const DEFAULT_CONCURRENCY: u32 = 80;
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// runnel runs instances on one machine; this bounds what one revision may ask for.
pub const MAX_INSTANCES_LIMIT: u32 = 100;

/// Parses a protobuf `Duration` in JSON form (`"300s"`, `"1.5s"`) into whole seconds, rounding up.
pub fn parse_duration_seconds(field: &str, value: &str) -> Result<u64, Invalid> {
    let bad = || Invalid::new(field, format!("`{value}` is not a duration; write seconds with an `s`, such as `300s`"));
    let number = value.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let round_up = frac.bytes().any(|b| b != b'0');
    secs.checked_add(u64::from(round_up)).ok_or_else(bad)
}

impl RevisionTemplate {
    /// Fills Cloud Run's defaults so stored templates are explicit and comparable.
    pub fn with_defaults(mut self) -> Self {
        if self.containers.is_empty() {
            self.containers.push(Container::default());
        }
        for c in &mut self.containers {
            if c.ports.is_empty() {
                c.ports.push(ContainerPort { name: "http1".into(), container_port: DEFAULT_PORT });
            }
            for p in &mut c.ports {
                if p.container_port == 0 {
                    p.container_port = DEFAULT_PORT;
                }
                if p.name.is_empty() {
                    p.name = "http1".into();
                }
            }
        }
        if self.max_instance_request_concurrency == 0 {
            self.max_instance_request_concurrency = DEFAULT_CONCURRENCY;
        }
        if self.timeout.is_empty() {
            self.timeout = format!("{DEFAULT_TIMEOUT_SECONDS}s");
        }
        if let Some(v) = &self.vpc_access
            && v.connector.is_empty()
            && v.network_interfaces.is_empty()
        {
            self.vpc_access = None;
        }
        self
    }

    /// The rules that need nothing but the template itself.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.revision.is_empty() {
            names::revision(&self.revision)?;
        }
        match self.containers.len() {
            0 => {
                return Err(Invalid::new(
                    "template.containers",
                    "the template has no container; give the command to run, such as `--command=python3 --args=app.py`",
                ));
            }
            1 => {}
            n => {
                return Err(Invalid::new(
                    "template.containers",
                    format!("the template has {n} containers; runnel runs one container per instance"),
                ));
            }
        }
        let c = &self.containers[0];
        if c.command.first().is_none_or(|s| s.is_empty()) {
            return Err(Invalid::new(
                "template.containers[0].command",
                "the container has no command; runnel runs processes rather than images, so give the program to run, such as `--command=python3 --args=app.py`",
            ));
        }
        for (i, e) in c.env.iter().enumerate() {
            let ok_name = !e.name.is_empty()
                && !e.name.contains('=')
                && !e.name.contains('\0')
                && !e.name.starts_with(|ch: char| ch.is_ascii_digit());
            if !ok_name {
                return Err(Invalid::new(
                    format!("template.containers[0].env[{i}].name"),
                    format!("`{}` is not a valid environment variable name", e.name),
                ));
            }
            if e.value.contains('\0') {
                return Err(Invalid::new(
                    format!("template.containers[0].env[{i}].value"),
                    format!("the value of `{}` contains a NUL byte", e.name),
                ));
            }
            if ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"].contains(&e.name.as_str()) {
                return Err(Invalid::new(
                    format!("template.containers[0].env[{i}].name"),
                    format!(
                        "`{}` is set by runnel as on Cloud Run and cannot be overridden; set the port with `--port`",
                        e.name
                    ),
                ));
            }
            if c.env[..i].iter().any(|prev| prev.name == e.name) {
                return Err(Invalid::new(
                    format!("template.containers[0].env[{i}].name"),
                    format!("`{}` is set twice", e.name),
                ));
            }
        }
        match c.ports.as_slice() {
            [] => {}
            [p] if RESERVED_PORTS.contains(&p.container_port) => {
                return Err(Invalid::new(
                    "template.containers[0].ports[0].containerPort",
                    format!(
                        "port `{}` is taken inside runnel's sandbox (80 by the metadata server at 169.254.169.254, 3128 by the egress proxy); make the program listen on $PORT and deploy with another `--port`, such as 8080",
                        p.container_port
                    ),
                ));
            }
            [p] if (1..=65535).contains(&p.container_port) => {}
            [p] => {
                return Err(Invalid::new(
                    "template.containers[0].ports[0].containerPort",
                    format!("port `{}` is not between 1 and 65535", p.container_port),
                ));
            }
            _ => {
                return Err(Invalid::new(
                    "template.containers[0].ports",
                    "a container exposes at most one port, the one requests are sent to",
                ));
            }
        }
        if !(1..=1000).contains(&self.max_instance_request_concurrency) {
            return Err(Invalid::new(
                "template.maxInstanceRequestConcurrency",
                format!("concurrency `{}` is not between 1 and 1000", self.max_instance_request_concurrency),
            ));
        }
        let timeout = parse_duration_seconds("template.timeout", &self.timeout)?;
        if timeout == 0 || timeout > MAX_TIMEOUT_SECONDS {
            return Err(Invalid::new(
                "template.timeout",
                format!("timeout `{}` is not between 1s and {MAX_TIMEOUT_SECONDS}s", self.timeout),
            ));
        }
        let min = self.scaling.min_instance_count.unwrap_or(0);
        if let Some(max) = self.scaling.max_instance_count {
            if max == 0 || max > MAX_INSTANCES_LIMIT {
                return Err(Invalid::new(
                    "template.scaling.maxInstanceCount",
                    format!("max instances `{max}` is not between 1 and {MAX_INSTANCES_LIMIT}"),
                ));
            }
            if min > max {
                return Err(Invalid::new(
                    "template.scaling.minInstanceCount",
                    format!(
                        "min instances `{min}` is greater than max instances `{max}`; lower `--min-instances` or raise `--max-instances`"
                    ),
                ));
            }
        }
        if min > MAX_INSTANCES_LIMIT {
            return Err(Invalid::new(
                "template.scaling.minInstanceCount",
                format!("min instances `{min}` is more than {MAX_INSTANCES_LIMIT}"),
            ));
        }
        if let Some(v) = &self.vpc_access {
            if !v.connector.is_empty() && !v.network_interfaces.is_empty() {
                return Err(Invalid::new(
                    "template.vpcAccess",
                    "the template sets both a connector and network interfaces (Direct VPC egress); use one: `--vpc-connector` or `--network`/`--subnet`",
                ));
            }
            if v.network_interfaces.len() > 1 {
                return Err(Invalid::new(
                    "template.vpcAccess.networkInterfaces",
                    "at most one network interface is supported",
                ));
            }
            if let Some(ni) = v.network_interfaces.first()
                && ni.network.is_empty()
                && ni.subnetwork.is_empty()
            {
                return Err(Invalid::new(
                    "template.vpcAccess.networkInterfaces[0]",
                    "a network interface names a network, a subnet or both",
                ));
            }
        }
        Ok(())
    }

    /// The part of the template that decides whether a change makes a new revision: everything
    /// except the requested revision name.
    pub fn same_revision_as(&self, other: &RevisionTemplate) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        a.revision.clear();
        b.revision.clear();
        a == b
    }
}

/// A status condition (`Ready`, `RoutesReady`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub severity: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTarget {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    pub percent: u32,
}

/// A service: stored and returned in this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default, with = "int64_string")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub create_time: String,
    #[serde(default)]
    pub update_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_modifier: String,
    #[serde(default)]
    pub ingress: Ingress,
    #[serde(default)]
    pub default_uri_disabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_audiences: Vec<String>,
    #[serde(default)]
    pub invoker_iam_disabled: bool,
    #[serde(default)]
    pub template: RevisionTemplate,
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    #[serde(default, with = "int64_string")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_condition: Option<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_ready_revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_created_revision: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_statuses: Vec<TrafficTarget>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default)]
    pub reconciling: bool,
    #[serde(default)]
    pub etag: String,
}

impl Service {
    /// The service-level rules (the template is checked by [`RevisionTemplate::validate`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, aud) in self.custom_audiences.iter().enumerate() {
            if aud.is_empty() || aud.len() > 2048 || aud.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Invalid::new(
                    format!("customAudiences[{i}]"),
                    format!("custom audience `{aud}` must be non-empty, without spaces, and at most 2048 characters"),
                ));
            }
        }
        check_labels("labels", &self.labels)?;
        check_labels("template.labels", &self.template.labels)?;
        self.template.validate()
    }
}

/// Label keys and values as on Google Cloud: lowercase letters, digits, `_` and `-`; keys start
/// with a letter; at most 63 characters each.
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || !k.chars().all(ok_char) || !k.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Invalid::new(
                field,
                format!(
                    "label key `{k}` must start with a lowercase letter and use only lowercase letters, digits, `_` and `-` (at most 63)"
                ),
            ));
        }
        if v.len() > 63 || !v.chars().all(ok_char) {
            return Err(Invalid::new(
                field,
                format!("label value `{v}` of `{k}` may use only lowercase letters, digits, `_` and `-` (at most 63)"),
            ));
        }
    }
    Ok(())
}

/// An immutable revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revision {
    pub name: String,
    pub uid: String,
    #[serde(default, with = "int64_string")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub create_time: String,
    pub service: String,
    pub scaling: Scaling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_access: Option<VpcAccess>,
    pub max_instance_request_concurrency: u32,
    pub timeout: String,
    pub service_account: String,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, with = "int64_string")]
    pub observed_generation: i64,
    #[serde(default)]
    pub etag: String,
}

/// proto3 JSON writes int64 as a string; accept both on input.
mod int64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(i64),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::S(s) if s.is_empty() => Ok(0),
            Either::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> RevisionTemplate {
        RevisionTemplate {
            containers: vec![Container { command: vec!["python3".into()], ..Default::default() }],
            ..Default::default()
        }
        .with_defaults()
    }

    #[test]
    fn defaults_follow_cloud_run() {
        let t = template();
        assert_eq!(t.containers[0].ports[0].container_port, 8080);
        assert_eq!(t.max_instance_request_concurrency, 80);
        assert_eq!(t.timeout, "300s");
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn template_rules() {
        type Edit = fn(&mut RevisionTemplate);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "no command",
                |t| t.containers[0].command.clear(),
                "template.containers[0].command: the container has no command",
            ),
            (
                "concurrency 0",
                |t| t.max_instance_request_concurrency = 0,
                "template.maxInstanceRequestConcurrency: concurrency `0` is not between 1 and 1000",
            ),
            (
                "concurrency 1001",
                |t| t.max_instance_request_concurrency = 1001,
                "template.maxInstanceRequestConcurrency: concurrency `1001` is not between 1 and 1000",
            ),
            (
                "timeout 3601",
                |t| t.timeout = "3601s".into(),
                "template.timeout: timeout `3601s` is not between 1s and 3600s",
            ),
            (
                "timeout words",
                |t| t.timeout = "five minutes".into(),
                "template.timeout: `five minutes` is not a duration",
            ),
            (
                "port 0",
                |t| t.containers[0].ports[0].container_port = 70000,
                "template.containers[0].ports[0].containerPort: port `70000` is not between 1 and 65535",
            ),
            (
                "port 80",
                |t| t.containers[0].ports[0].container_port = 80,
                "template.containers[0].ports[0].containerPort: port `80` is taken inside runnel's sandbox",
            ),
            (
                "port 3128",
                |t| t.containers[0].ports[0].container_port = 3128,
                "template.containers[0].ports[0].containerPort: port `3128` is taken inside runnel's sandbox",
            ),
            (
                "min > max",
                |t| {
                    t.scaling.min_instance_count = Some(3);
                    t.scaling.max_instance_count = Some(2)
                },
                "template.scaling.minInstanceCount: min instances `3` is greater than max instances `2`",
            ),
            (
                "PORT env",
                |t| t.containers[0].env.push(EnvVar { name: "PORT".into(), value: "1".into() }),
                "template.containers[0].env[0].name: `PORT` is set by runnel",
            ),
            (
                "bad env",
                |t| t.containers[0].env.push(EnvVar { name: "A=B".into(), value: "1".into() }),
                "template.containers[0].env[0].name: `A=B` is not a valid environment variable name",
            ),
            (
                "both vpc",
                |t| {
                    t.vpc_access = Some(VpcAccess {
                        connector: "c".into(),
                        network_interfaces: vec![NetworkInterface { network: "n".into(), ..Default::default() }],
                        ..Default::default()
                    })
                },
                "template.vpcAccess: the template sets both a connector and network interfaces",
            ),
            ("bad revision", |t| t.revision = "Rev".into(), "template.revision: revision name `Rev` has a character"),
        ];
        for (what, edit, want) in cases {
            let mut t = template();
            edit(&mut t);
            let got = t.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(got.starts_with(want), "{what}: got {got:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_seconds("t", "300s"), Ok(300));
        assert_eq!(parse_duration_seconds("t", "1.5s"), Ok(2));
        assert_eq!(parse_duration_seconds("t", "2.000s"), Ok(2));
        assert!(parse_duration_seconds("t", "300").is_err());
        assert!(parse_duration_seconds("t", "-1s").is_err());
        assert!(parse_duration_seconds("t", "s").is_err());
    }

    #[test]
    fn wire_shape_is_cloud_run_v2() {
        let s = Service { generation: 3, ingress: Ingress::InternalOnly, template: template(), ..Default::default() };
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(v["generation"], "3");
        assert_eq!(v["ingress"], "INGRESS_TRAFFIC_INTERNAL_ONLY");
        assert_eq!(v["template"]["maxInstanceRequestConcurrency"], 80);
        assert_eq!(v["template"]["containers"][0]["ports"][0]["containerPort"], 8080);
        let back: Service = serde_json::from_value(
            serde_json::json!({"generation": 4, "ingress": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"}),
        )
        .unwrap_or_default();
        assert_eq!(back.generation, 4);
        assert_eq!(back.ingress, Ingress::InternalLoadBalancer);
    }

    #[test]
    fn a_new_revision_only_when_the_template_changes() {
        let a = template();
        let mut b = a.clone();
        b.revision = "named".into();
        assert!(a.same_revision_as(&b));
        b.max_instance_request_concurrency = 5;
        assert!(!a.same_revision_as(&b));
    }
}
