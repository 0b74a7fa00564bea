//! Cloud Run Admin API v2 services and revisions.
//!
//! Every write of a service goes through [`ControlPlane::apply_service`]: it validates the
//! service, checks every resource the template refers to (service account, connector, network,
//! subnet) exists in the right region and that the caller may use it, and makes a new immutable
//! revision when the template changed.

use runnel_model::iam::WirePolicy;
use runnel_model::network::{Connector, Network, Subnetwork};
use runnel_model::service::{Condition, Revision, RevisionTemplate, Service, TrafficTarget, VpcAccess};
use runnel_model::service_account::{self, ServiceAccount};
use runnel_model::{Invalid, names};
use runnel_policy::iam::Principal;
use runnel_store::{Read, Write};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::plane::{ControlPlane, Target, etag_of, get, new_uid, now, put, random_suffix, scan};
use crate::{accounts, networks};

pub(crate) fn key(region: &str, name: &str) -> String {
    format!("services/{region}/{name}")
}

fn revision_prefix(region: &str, service: &str) -> String {
    format!("revisions/{region}/{service}/")
}

fn revision_key(region: &str, service: &str, revision: &str) -> String {
    format!("revisions/{region}/{service}/{revision}")
}

pub(crate) fn policy_key(region: &str, name: &str) -> String {
    format!("policies/services/{region}/{name}")
}

const SERVICE_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Service";
const LATEST: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST";

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn ready(time: &str) -> Condition {
    Condition {
        kind: "Ready".into(),
        state: "CONDITION_SUCCEEDED".into(),
        last_transition_time: time.to_string(),
        ..Default::default()
    }
}

fn reconciling(time: &str) -> Condition {
    Condition {
        kind: "Ready".into(),
        state: "CONDITION_RECONCILING".into(),
        last_transition_time: time.to_string(),
        message: "Starting instances and waiting for the startup probe.".into(),
        ..Default::default()
    }
}

impl ControlPlane {
    pub(crate) fn service_name(&self, region: &str, name: &str) -> String {
        format!("projects/{}/locations/{region}/services/{name}", self.project.project_id)
    }

    /// The host a service answers on: stable, from its name, the project number and region.
    pub fn service_host(&self, region: &str, name: &str) -> String {
        let suffix = self.settings.url_suffix.split(':').next().unwrap_or_default();
        format!("{name}-{}.{region}.{suffix}", self.project.project_number)
    }

    /// The service's URL, as shown in `uri` and accepted as an ID token audience.
    pub fn service_url(&self, region: &str, name: &str) -> String {
        format!("http://{name}-{}.{region}.{}", self.project.project_number, self.settings.url_suffix)
    }

    /// Fills the fields derived at read time.
    fn present(&self, mut s: Service) -> Service {
        let region = s.name.split('/').nth(3).unwrap_or_default().to_string();
        let short = last_segment(&s.name).to_string();
        s.uri = self.service_url(&region, &short);
        s.urls = vec![s.uri.clone()];
        s
    }

    /// Checks that `caller` holds `permission` on the service, then loads it. Refusal comes
    /// first, so a caller without access cannot probe which services exist.
    fn service_for(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        region: &str,
        name: &str,
        permission: &str,
    ) -> ApiResult<Service> {
        let full = self.service_name(region, name);
        let pkey = policy_key(region, name);
        self.authorize(r, caller, permission, &Target { name: &full, policy_key: Some(&pkey) })?;
        get(r, &key(region, name))?.ok_or_else(|| {
            ApiError::not_found(format!(
                "service `{name}` does not exist in region `{region}`; list services with `runnel run services list`"
            ))
        })
    }

    /// Every service whose serving or latest revision satisfies `pred`, as `service `s` (revision `r`)`.
    pub(crate) fn revisions_using(
        &self,
        r: &(impl Read + ?Sized),
        pred: impl Fn(&Revision) -> bool,
    ) -> ApiResult<Vec<String>> {
        let mut users = Vec::new();
        for s in scan::<Service>(r, "services/")? {
            let mut names = vec![s.latest_created_revision.clone()];
            if s.latest_ready_revision != s.latest_created_revision {
                names.push(s.latest_ready_revision.clone());
            }
            for full in names.iter().filter(|n| !n.is_empty()) {
                let parts: Vec<&str> = full.split('/').collect();
                if let [_, _, _, region, _, service, _, rev] = parts.as_slice()
                    && let Some(revision) = get::<Revision>(r, &revision_key(region, service, rev))?
                    && pred(&revision)
                {
                    users.push(format!("service `{service}` in `{region}` (revision `{rev}`)"));
                }
            }
        }
        users.dedup();
        Ok(users)
    }

    /// Checks the template's references and the caller's right to use each; returns the
    /// template with references in their canonical form.
    fn check_references(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        region: &str,
        mut t: RevisionTemplate,
    ) -> ApiResult<RevisionTemplate> {
        // Service account: exists, enabled, and the caller may act as it.
        if t.service_account.is_empty() {
            t.service_account = service_account::default_compute_email(&self.project.project_number);
        }
        t.service_account = t.service_account.to_ascii_lowercase();
        let email = t.service_account.clone();
        let acct_name = format!("projects/{}/serviceAccounts/{email}", self.project.project_id);
        let acct_policy = accounts::policy_key(&email);
        self.authorize(
            r,
            caller,
            "iam.serviceAccounts.actAs",
            &Target { name: &acct_name, policy_key: Some(&acct_policy) },
        )?;
        let acct: ServiceAccount = get(r, &accounts::key(&email))?.ok_or_else(|| {
            ApiError::invalid(format!(
                "service account `{email}` does not exist; create it with `runnel iam service-accounts create {}` or pass another `--service-account`",
                email.split('@').next().unwrap_or_default()
            ))
        })?;
        if acct.disabled {
            return Err(ApiError::failed_precondition(format!(
                "service account `{email}` is disabled; enable it with `runnel iam service-accounts enable {email}` or pass another `--service-account`"
            )));
        }

        if let Some(v) = t.vpc_access.as_mut() {
            if !v.connector.is_empty() {
                v.connector = self.check_connector(r, caller, region, &v.connector)?;
            }
            if let Some(ni) = v.network_interfaces.first_mut() {
                let (network, subnet) = self.check_direct_vpc(r, caller, region, &ni.network, &ni.subnetwork)?;
                ni.network = network;
                ni.subnetwork = subnet;
            }
        }
        Ok(t)
    }

    /// A connector reference (`conn` or `projects/P/locations/R/connectors/conn`) must name a
    /// connector in the service's own region that the caller may use.
    fn check_connector(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        region: &str,
        reference: &str,
    ) -> ApiResult<String> {
        let parts: Vec<&str> = reference.split('/').collect();
        let (conn_region, id) = match parts.as_slice() {
            [id] => (region, *id),
            ["projects", p, "locations", l, "connectors", id] => {
                self.check_project(p)?;
                (*l, *id)
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "connector `{reference}` is neither a name nor `projects/PROJECT/locations/REGION/connectors/NAME`"
                )));
            }
        };
        let full = format!("projects/{}/locations/{conn_region}/connectors/{id}", self.project.project_id);
        self.authorize(r, caller, "vpcaccess.connectors.use", &Target { name: &full, policy_key: None })?;
        let found: Option<Connector> = get(r, &networks::connector_key(conn_region, id))?;
        if found.is_none() {
            let elsewhere: Vec<String> = scan::<Connector>(r, "connectors/")?
                .into_iter()
                .filter(|c| last_segment(&c.name) == id)
                .map(|c| c.name.split('/').nth(3).unwrap_or_default().to_string())
                .collect();
            return Err(if elsewhere.is_empty() {
                ApiError::invalid(format!(
                    "connector `{id}` does not exist in region `{conn_region}`; create it with `runnel compute networks vpc-access connectors create {id} --region={region} --network=NETWORK --range=10.8.0.0/28`"
                ))
            } else {
                ApiError::invalid(format!(
                    "connector `{id}` is in region `{}`, but the service is in region `{region}`; a connector serves only services in its own region, so create one in `{region}` or deploy the service to `{}`",
                    elsewhere.join("`, `"),
                    elsewhere[0]
                ))
            });
        }
        if conn_region != region {
            return Err(ApiError::invalid(format!(
                "connector `{id}` is in region `{conn_region}`, but the service is in region `{region}`; a connector serves only services in its own region, so create one in `{region}` or deploy the service to `{conn_region}`"
            )));
        }
        Ok(full)
    }

    /// Direct VPC egress: the subnet must exist in the service's region and belong to the
    /// network. With only a network, the subnet of the same name is used, as on Cloud Run.
    fn check_direct_vpc(
        &self,
        r: &(impl Read + ?Sized),
        caller: &Principal,
        region: &str,
        network: &str,
        subnet: &str,
    ) -> ApiResult<(String, String)> {
        let subnet_id = if subnet.is_empty() { last_segment(network) } else { last_segment(subnet) };
        let subnet_full = format!("projects/{}/regions/{region}/subnetworks/{subnet_id}", self.project.project_id);
        self.authorize(r, caller, "compute.subnetworks.use", &Target { name: &subnet_full, policy_key: None })?;
        let found: Option<Subnetwork> = get(r, &networks::subnet_key(region, subnet_id))?;
        let Some(s) = found else {
            let elsewhere: Vec<String> = scan::<Subnetwork>(r, "subnets/")?
                .into_iter()
                .filter(|s| s.name == subnet_id)
                .map(|s| last_segment(&s.region).to_string())
                .collect();
            return Err(ApiError::invalid(if elsewhere.is_empty() {
                format!(
                    "subnet `{subnet_id}` does not exist in region `{region}`; create it with `runnel compute networks subnets create {subnet_id} --network=NETWORK --region={region} --range=10.0.0.0/24`"
                )
            } else {
                format!(
                    "subnet `{subnet_id}` is in region `{}`, but the service is in region `{region}`; Direct VPC egress uses a subnet in the service's own region",
                    elsewhere.join("`, `")
                )
            }));
        };
        let subnet_network = last_segment(&s.network).to_string();
        if !network.is_empty() && last_segment(network) != subnet_network {
            return Err(ApiError::invalid(format!(
                "subnet `{subnet_id}` belongs to network `{subnet_network}`, not `{}`; pass `--network={subnet_network}` or another subnet",
                last_segment(network)
            )));
        }
        let net: Option<Network> = get(r, &networks::network_key(&subnet_network))?;
        if net.is_none() {
            return Err(ApiError::invalid(format!(
                "network `{subnet_network}` does not exist; create it with `runnel compute networks create {subnet_network}`"
            )));
        }
        Ok((subnet_network, subnet_id.to_string()))
    }

    /// Creates or replaces a service inside an open transaction.
    fn apply_service(
        &self,
        w: &mut (impl Write + ?Sized),
        caller: &Principal,
        region: &str,
        name: &str,
        existing: Option<Service>,
        incoming: Service,
    ) -> ApiResult<Service> {
        names::region(region)?;
        names::service(name)?;
        let mut incoming = incoming;
        incoming.template = incoming.template.with_defaults();
        incoming.validate()?;
        let traffic_ok = incoming.traffic.is_empty()
            || (incoming.traffic.len() == 1
                && incoming.traffic[0].percent == 100
                && (incoming.traffic[0].kind == LATEST || incoming.traffic[0].kind.is_empty()));
        if !traffic_ok {
            return Err(Invalid::new(
                "traffic",
                "runnel sends 100% of traffic to the latest ready revision; traffic splitting is not supported yet",
            )
            .into());
        }
        if let Some(e) = &existing
            && !incoming.etag.is_empty()
            && incoming.etag != e.etag
        {
            return Err(ApiError::aborted(format!(
                "service `{name}` changed since it was read (its etag is stale); read it again, apply your change, and retry"
            )));
        }
        let template = self.check_references(w, caller, region, incoming.template.clone())?;
        let time = now();
        let full = self.service_name(region, name);

        let mut s = Service {
            name: full.clone(),
            labels: incoming.labels,
            description: incoming.description,
            ingress: incoming.ingress,
            default_uri_disabled: incoming.default_uri_disabled,
            custom_audiences: incoming.custom_audiences,
            invoker_iam_disabled: incoming.invoker_iam_disabled,
            traffic: vec![TrafficTarget { kind: LATEST.into(), revision: String::new(), percent: 100 }],
            update_time: time.clone(),
            last_modifier: caller
                .member()
                .trim_start_matches("user:")
                .trim_start_matches("serviceAccount:")
                .to_string(),
            ..Default::default()
        };
        let mut make_revision = true;
        match &existing {
            Some(e) => {
                s.uid = e.uid.clone();
                s.create_time = e.create_time.clone();
                s.creator = e.creator.clone();
                s.generation = e.generation + 1;
                s.latest_created_revision = e.latest_created_revision.clone();
                s.latest_ready_revision = e.latest_ready_revision.clone();
                let renamed = !template.revision.is_empty() && template.revision != e.template.revision;
                make_revision = renamed || !template.same_revision_as(&e.template);
            }
            None => {
                s.uid = new_uid();
                s.create_time = time.clone();
                s.creator = s.last_modifier.clone();
                s.generation = 1;
            }
        }
        s.template = template;
        if make_revision {
            let rev = self.insert_revision(w, region, name, &s)?;
            s.latest_created_revision = rev.clone();
            if !self.runtime {
                // Without a runtime (a control plane alone), a revision is ready once recorded.
                s.latest_ready_revision = rev;
            }
        }
        s.observed_generation = s.generation;
        let pending = s.latest_ready_revision != s.latest_created_revision;
        let state = if pending { reconciling(&time) } else { ready(&time) };
        s.reconciling = pending;
        s.terminal_condition = Some(state.clone());
        s.conditions = vec![
            Condition { kind: "RoutesReady".into(), ..state.clone() },
            Condition { kind: "ConfigurationsReady".into(), ..state },
        ];
        s.traffic_statuses = vec![TrafficTarget {
            kind: LATEST.into(),
            revision: last_segment(&s.latest_ready_revision).to_string(),
            percent: 100,
        }];
        s.etag = String::new();
        s.etag = etag_of(&s);
        put(w, &key(region, name), &s)?;
        Ok(s)
    }

    fn insert_revision(
        &self,
        w: &mut (impl Write + ?Sized),
        region: &str,
        service: &str,
        s: &Service,
    ) -> ApiResult<String> {
        let existing = w.scan(&revision_prefix(region, service))?.len();
        let short = if s.template.revision.is_empty() {
            format!("{service}-{:05}-{}", existing + 1, random_suffix(3))
        } else {
            if !s.template.revision.starts_with(&format!("{service}-")) {
                return Err(ApiError::invalid(format!(
                    "revision name `{}` must start with the service name and a hyphen, such as `{service}-v2`",
                    s.template.revision
                )));
            }
            s.template.revision.clone()
        };
        if w.get(&revision_key(region, service, &short))?.is_some() {
            return Err(ApiError::already_exists(format!(
                "revision `{short}` already exists; choose another revision name or leave it out"
            )));
        }
        let t = &s.template;
        let time = now();
        let mut rev = Revision {
            name: format!("{}/revisions/{short}", s.name),
            uid: new_uid(),
            generation: 1,
            labels: t.labels.clone(),
            create_time: time.clone(),
            service: s.name.clone(),
            scaling: t.scaling.clone(),
            vpc_access: t.vpc_access.clone(),
            max_instance_request_concurrency: t.max_instance_request_concurrency,
            timeout: t.timeout.clone(),
            service_account: t.service_account.clone(),
            containers: t.containers.clone(),
            conditions: vec![if self.runtime { reconciling(&time) } else { ready(&time) }],
            observed_generation: 1,
            etag: String::new(),
        };
        rev.etag = etag_of(&rev);
        put(w, &revision_key(region, service, &short), &rev)?;
        Ok(rev.name)
    }

    pub fn create_service(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        service_id: &str,
        body: Service,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        if service_id.is_empty() {
            return Err(ApiError::invalid("the request has no `serviceId` query parameter; name the service"));
        }
        let full = self.service_name(region, service_id);
        let s = self.write(|w| {
            self.authorize(w, caller, "run.services.create", &Target { name: &full, policy_key: None })?;
            if get::<Service>(w, &key(region, service_id))?.is_some() {
                return Err(ApiError::already_exists(format!(
                    "service `{service_id}` already exists in region `{region}`; deploy a new revision with `runnel run deploy {service_id}` or pick another name"
                )));
            }
            self.apply_service(w, caller, region, service_id, None, body)
        })?;
        Ok(crate::ops::done(&self.project.project_id, region, SERVICE_TYPE, &self.present(s)))
    }

    /// `PATCH`: replaces the service; with `allow_missing`, creates it when absent.
    pub fn update_service(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        name: &str,
        body: Service,
        allow_missing: bool,
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let full = self.service_name(region, name);
        let pkey = policy_key(region, name);
        let s = self.write(|w| {
            let existing: Option<Service> = get(w, &key(region, name))?;
            match existing {
                Some(e) => {
                    self.authorize(w, caller, "run.services.update", &Target { name: &full, policy_key: Some(&pkey) })?;
                    self.apply_service(w, caller, region, name, Some(e), body)
                }
                None if allow_missing => {
                    self.authorize(w, caller, "run.services.create", &Target { name: &full, policy_key: None })?;
                    self.apply_service(w, caller, region, name, None, body)
                }
                None => {
                    self.authorize(w, caller, "run.services.update", &Target { name: &full, policy_key: Some(&pkey) })?;
                    Err(ApiError::not_found(format!("service `{name}` does not exist in region `{region}`; create it with `runnel run deploy {name}`")))
                }
            }
        })?;
        Ok(crate::ops::done(&self.project.project_id, region, SERVICE_TYPE, &self.present(s)))
    }

    pub fn get_service(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Service> {
        self.check_project(project)?;
        self.read(|r| self.service_for(r, caller, region, name, "run.services.get")).map(|s| self.present(s))
    }

    /// Lists services in a region, or in every region with `-`.
    pub fn list_services(&self, caller: &Principal, project: &str, region: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let parent = format!("projects/{}/locations/{region}", self.project.project_id);
        self.read(|r| {
            self.authorize(r, caller, "run.services.list", &Target { name: &parent, policy_key: None })?;
            let prefix = if region == "-" { "services/".to_string() } else { format!("services/{region}/") };
            let services: Vec<Service> = scan::<Service>(r, &prefix)?.into_iter().map(|s| self.present(s)).collect();
            Ok(json!({ "services": services }))
        })
    }

    pub fn delete_service(&self, caller: &Principal, project: &str, region: &str, name: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        let s = self.write(|w| {
            let s = self.service_for(w, caller, region, name, "run.services.delete")?;
            for (k, _) in w.scan(&revision_prefix(region, name))? {
                w.delete(&k)?;
            }
            w.delete(&key(region, name))?;
            w.delete(&policy_key(region, name))?;
            Ok(s)
        })?;
        Ok(crate::ops::done(&self.project.project_id, region, SERVICE_TYPE, &self.present(s)))
    }

    pub fn list_revisions(&self, caller: &Principal, project: &str, region: &str, service: &str) -> ApiResult<Value> {
        self.check_project(project)?;
        self.read(|r| {
            let prefix = if service == "-" {
                let parent = format!("projects/{}/locations/{region}", self.project.project_id);
                self.authorize(r, caller, "run.revisions.list", &Target { name: &parent, policy_key: None })?;
                format!("revisions/{region}/")
            } else {
                self.service_for(r, caller, region, service, "run.revisions.list")?;
                revision_prefix(region, service)
            };
            let mut revisions: Vec<Revision> = scan(r, &prefix)?;
            revisions.sort_by(|a, b| b.create_time.cmp(&a.create_time).then(b.name.cmp(&a.name)));
            Ok(json!({ "revisions": revisions }))
        })
    }

    pub fn get_revision(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        service: &str,
        revision: &str,
    ) -> ApiResult<Revision> {
        self.check_project(project)?;
        self.read(|r| {
            self.service_for(r, caller, region, service, "run.revisions.get")?;
            get(r, &revision_key(region, service, revision))?.ok_or_else(|| {
                ApiError::not_found(format!("revision `{revision}` of service `{service}` does not exist; list them with `runnel run revisions list --service={service}`"))
            })
        })
    }

    pub fn get_service_policy(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        name: &str,
    ) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        self.read(|r| {
            self.service_for(r, caller, region, name, "run.services.getIamPolicy")?;
            self.read_policy(r, &policy_key(region, name))
        })
    }

    pub fn set_service_policy(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        name: &str,
        policy: &WirePolicy,
    ) -> ApiResult<WirePolicy> {
        self.check_project(project)?;
        self.write(|w| {
            self.service_for(w, caller, region, name, "run.services.setIamPolicy")?;
            self.write_policy(w, &policy_key(region, name), policy, |_| Ok(()))
        })
    }

    pub fn test_service_permissions(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        name: &str,
        asked: &[String],
    ) -> ApiResult<Value> {
        self.check_project(project)?;
        let full = self.service_name(region, name);
        let pkey = policy_key(region, name);
        self.read(|r| {
            let held = self.held_permissions(r, caller, asked, &Target { name: &full, policy_key: Some(&pkey) })?;
            Ok(json!({ "permissions": held }))
        })
    }
}

/// Whether a template uses this connector (full name).
pub(crate) fn uses_connector(rev: &Revision, connector: &str) -> bool {
    rev.vpc_access.as_ref().is_some_and(|v: &VpcAccess| v.connector == connector)
}
