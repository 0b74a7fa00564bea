//! The bridge between recorded state and running instances: what the daemon should run
//! ([`ControlPlane::desired`]) and what happened when it tried ([`ControlPlane::report`]).
//!
//! The runtime never writes the store itself; it reports, and the control plane records the
//! outcome in the revision's and service's conditions in one transaction, as it does for every
//! other change.

use runnel_model::service::{Condition, Revision, Service, TrafficTarget};
use runnel_policy::iam::Principal;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, etag_of, get, now, put, scan};
use crate::services::{key as service_key, policy_key};

/// One service as the daemon should serve it.
#[derive(Debug, Clone)]
pub struct Desired {
    pub region: String,
    pub service: Service,
    /// The revision taking traffic, if any is ready.
    pub serving: Option<Revision>,
    /// The newest revision, while it is still being brought up (absent once it serves or failed).
    pub starting: Option<Revision>,
}

/// What the runtime observed about a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    /// It never became ready; the deploy fails with this message.
    Failed(String),
    /// A ready instance crashed and is restarting.
    Crashed(String),
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn revision_key(region: &str, service: &str, revision: &str) -> String {
    format!("revisions/{region}/{service}/{revision}")
}

fn condition(kind: &str, state: &str, message: &str, time: &str) -> Condition {
    Condition {
        kind: kind.into(),
        state: state.into(),
        message: message.into(),
        last_transition_time: time.into(),
        ..Default::default()
    }
}

fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    conditions.retain(|x| x.kind != c.kind);
    conditions.push(c);
}

fn is_failed(rev: &Revision) -> bool {
    rev.conditions.iter().any(|c| c.kind == "Ready" && c.state == "CONDITION_FAILED")
}

impl ControlPlane {
    /// Every service with the revisions the daemon should be running for it.
    pub fn desired(&self) -> ApiResult<Vec<Desired>> {
        self.read(|r| {
            let mut out = Vec::new();
            for s in scan::<Service>(r, "services/")? {
                let region = s.name.split('/').nth(3).unwrap_or_default().to_string();
                let svc = short(&s.name).to_string();
                let load = |full: &str| -> ApiResult<Option<Revision>> {
                    if full.is_empty() {
                        return Ok(None);
                    }
                    get(r, &revision_key(&region, &svc, short(full)))
                };
                let serving = load(&s.latest_ready_revision)?;
                let starting = if s.latest_created_revision != s.latest_ready_revision {
                    load(&s.latest_created_revision)?.filter(|rev| !is_failed(rev))
                } else {
                    None
                };
                out.push(Desired { region, service: s, serving, starting });
            }
            Ok(out)
        })
    }

    /// Records what the runtime saw: a revision became ready (and, if it is the newest, takes
    /// traffic), failed to start (the deploy fails), or lost an instance.
    pub fn report(&self, region: &str, service: &str, revision: &str, outcome: &Outcome) -> ApiResult<()> {
        self.write(|w| {
            let Some(mut rev) = get::<Revision>(w, &revision_key(region, service, revision))? else {
                return Ok(()); // deleted meanwhile
            };
            let time = now();
            match outcome {
                Outcome::Ready => {
                    set_condition(&mut rev.conditions, condition("Ready", "CONDITION_SUCCEEDED", "", &time));
                    set_condition(&mut rev.conditions, condition("ContainerHealthy", "CONDITION_SUCCEEDED", "", &time));
                }
                Outcome::Failed(msg) => {
                    set_condition(&mut rev.conditions, condition("Ready", "CONDITION_FAILED", msg, &time));
                }
                Outcome::Crashed(msg) => {
                    let text = format!("{msg}; restarting with backoff");
                    set_condition(&mut rev.conditions, condition("ContainerHealthy", "CONDITION_FAILED", &text, &time));
                }
            }
            rev.etag = String::new();
            rev.etag = etag_of(&rev);
            put(w, &revision_key(region, service, revision), &rev)?;

            let Some(mut s) = get::<Service>(w, &service_key(region, service))? else { return Ok(()) };
            if s.latest_created_revision != rev.name {
                return Ok(()); // an older revision: the service's status is about the newest
            }
            match outcome {
                Outcome::Ready if s.latest_ready_revision != rev.name => {
                    s.latest_ready_revision = rev.name.clone();
                    s.traffic_statuses = vec![TrafficTarget {
                        kind: "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST".into(),
                        revision: revision.to_string(),
                        percent: 100,
                    }];
                    s.reconciling = false;
                    let ok = condition("Ready", "CONDITION_SUCCEEDED", "", &time);
                    s.terminal_condition = Some(ok.clone());
                    s.conditions = vec![
                        Condition { kind: "RoutesReady".into(), ..ok.clone() },
                        Condition { kind: "ConfigurationsReady".into(), ..ok },
                    ];
                }
                Outcome::Failed(msg) => {
                    let mut chars = msg.chars();
                    let sentence: String =
                        chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
                    let text = format!("Revision '{revision}' is not ready and cannot serve traffic. {sentence}");
                    s.reconciling = false;
                    s.terminal_condition = Some(condition("Ready", "CONDITION_FAILED", &text, &time));
                    s.conditions = vec![condition("ConfigurationsReady", "CONDITION_FAILED", &text, &time)];
                }
                _ => return Ok(()),
            }
            s.etag = String::new();
            s.etag = etag_of(&s);
            put(w, &service_key(region, service), &s)
        })
    }

    /// The platform's refusal log: requests refused before reaching an instance, newest last.
    pub fn read_refusals(&self, caller: &Principal, project: &str, limit: usize) -> ApiResult<Value> {
        self.check_project(project)?;
        let name = self.project_name();
        self.read(|r| {
            self.authorize(
                r,
                caller,
                "logging.logEntries.list",
                &crate::plane::Target { name: &name, policy_key: None },
            )
        })?;
        let entries = match &self.logs {
            Some(l) => l.read("-", "-", "denied", limit.clamp(1, 10_000)),
            None => Vec::new(),
        };
        Ok(json!({ "entries": entries }))
    }

    /// A service's instance output or request log, newest last.
    pub fn read_logs(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        service: &str,
        kind: &str,
        limit: usize,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        if kind != "instances" && kind != "requests" {
            return Err(ApiError::invalid(format!("log kind `{kind}` is not `instances` or `requests`")));
        }
        let full = self.service_name(region, service);
        let pkey = policy_key(region, service);
        self.read(|r| {
            self.authorize(
                r,
                caller,
                "logging.logEntries.list",
                &crate::plane::Target { name: &full, policy_key: Some(&pkey) },
            )
        })?;
        let entries = match &self.logs {
            Some(l) => l.read(region, service, kind, limit.clamp(1, 10_000)),
            None => Vec::new(),
        };
        Ok(json!({ "entries": entries }))
    }
}

impl ControlPlane {
    /// What the egress path needs to know about a calling revision: who it is and how it
    /// reaches its VPC network (`None` without VPC access), from the resources as of the last
    /// commit (read once per commit: each egress proxy asks on every outbound call).
    pub fn egress_context(
        &self,
        region: &str,
        service: &str,
        revision: &str,
    ) -> ApiResult<(runnel_policy::origin::Caller, Option<runnel_policy::egress::VpcPath>)> {
        let key = (region.to_string(), service.to_string(), revision.to_string());
        self.egress_contexts.get(self, key, || self.read_egress_context(region, service, revision))
    }

    fn read_egress_context(
        &self,
        region: &str,
        service: &str,
        revision: &str,
    ) -> ApiResult<(runnel_policy::origin::Caller, Option<runnel_policy::egress::VpcPath>)> {
        use runnel_model::network::{Connector, Subnetwork};
        use runnel_policy::egress::{Attachment, VpcPath};
        let caller = runnel_policy::origin::Caller::new(service, revision, region);
        self.read(|r| {
            let rev: Revision = get(r, &revision_key(region, service, revision))?
                .ok_or_else(|| ApiError::not_found(format!("revision `{revision}` does not exist")))?;
            let Some(access) = rev.vpc_access.as_ref() else { return Ok((caller, None)) };
            let subnet_of = |name: &str| -> ApiResult<Option<Subnetwork>> {
                get(r, &crate::networks::subnet_key(region, short(name)))
            };
            let path = if !access.connector.is_empty() {
                let parts: Vec<&str> = access.connector.split('/').collect();
                let (conn_region, id) = match parts.as_slice() {
                    ["projects", _, "locations", l, "connectors", c] => (*l, *c),
                    _ => (region, access.connector.as_str()),
                };
                let Some(connector) = get::<Connector>(r, &crate::networks::connector_key(conn_region, id))? else {
                    return Ok((caller, None));
                };
                let subnet = match &connector.subnet {
                    Some(cs) => subnet_of(&cs.name)?,
                    None => None,
                };
                VpcPath::from_model(access, Attachment::Connector { connector: &connector, subnet: subnet.as_ref() })
            } else if let Some(ni) = access.network_interfaces.first() {
                let Some(subnet) = subnet_of(&ni.subnetwork)? else { return Ok((caller, None)) };
                VpcPath::from_model(access, Attachment::Direct { subnet: &subnet })
            } else {
                return Ok((caller, None));
            };
            // A revision whose attachment no longer fits its resources has no way into the VPC.
            Ok((caller, path.ok()))
        })
    }
}

/// What the invoker check needs about a service, read in one snapshot.
#[derive(Debug, Clone)]
pub struct InvokerFacts {
    pub invoker_iam_disabled: bool,
    pub custom_audiences: Vec<String>,
    pub service_policy: runnel_model::iam::Policy,
    pub project_policy: runnel_model::iam::Policy,
    pub service_name: String,
    pub project_name: String,
}

impl ControlPlane {
    /// The service's invoker settings and the policies that apply to it, as they are now.
    pub fn invoker_facts(&self, region: &str, service: &str) -> ApiResult<Option<InvokerFacts>> {
        self.read(|r| {
            let Some(s) = get::<Service>(r, &service_key(region, service))? else { return Ok(None) };
            Ok(Some(InvokerFacts {
                invoker_iam_disabled: s.invoker_iam_disabled,
                custom_audiences: s.custom_audiences,
                service_policy: get(r, &policy_key(region, service))?.unwrap_or_default(),
                project_policy: get(r, crate::plane::PROJECT_POLICY_KEY)?.unwrap_or_default(),
                service_name: self.service_name(region, service),
                project_name: self.project_name(),
            }))
        })
    }

    /// The service account with this unique id, if it exists.
    pub fn account_by_unique_id(
        &self,
        unique_id: &str,
    ) -> ApiResult<Option<runnel_model::service_account::ServiceAccount>> {
        self.read(|r| self.find_account(r, unique_id))
    }

    /// The account with this email as it is now, enabled or not.
    pub fn account_by_email(&self, email: &str) -> ApiResult<Option<runnel_model::service_account::ServiceAccount>> {
        self.read(|r| get(r, &crate::accounts::key(email)))
    }
}

impl ControlPlane {
    /// One revision, as recorded.
    pub fn revision(&self, region: &str, service: &str, revision: &str) -> ApiResult<Option<Revision>> {
        self.read(|r| get(r, &revision_key(region, service, revision)))
    }
}
