//! The node role of the daemon: it runs what the control plane recorded.
//!
//! A reconciler wakes on every committed change and on every runtime event. It keeps one
//! instance pool per revision that should run (the serving one, and the newest while it starts),
//! reports readiness and failures back to the control plane, and publishes the frontend's route
//! table, which only ever points at a revision that passed its startup probe. So traffic moves
//! to a new revision only when it is ready, and the old one drains before it stops.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel_api::{ControlPlane, Desired, Outcome};
use runnel_gateway::{Backend, Lease, LeaseFuture, RequestLog, RequestRecord, Route, Router, Unavailable};
use runnel_model::name_map::{NameMap, NameSet};
use runnel_model::service::{DEFAULT_MAX_INSTANCES, Revision, parse_duration_seconds};
use runnel_runtime::launch::{Launch, RevisionKey};
use runnel_runtime::logs::{Kind, LogStore};
use runnel_runtime::pool::{Event, Host, OutputSink, Pool, Stream};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// The frontend's view: host → route, swapped whole on every change.
#[derive(Default)]
pub struct Routes {
    /// By service host; `NameMap`: the hosts are deployed services', a client's `Host` is only
    /// looked up.
    table: RwLock<Arc<NameMap<String, Arc<Route>>>>,
}

impl Router for Routes {
    fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.table.read().ok().and_then(|t| t.get(host).cloned())
    }
}

struct PoolBackend(Arc<Pool>);

impl Backend for PoolBackend {
    fn acquire(&self) -> LeaseFuture<'_> {
        Box::pin(async move {
            let slot = self.0.acquire().await.map_err(|e| match e {
                runnel_runtime::pool::Unavailable::Busy => Unavailable::Busy,
                runnel_runtime::pool::Unavailable::NoInstance => Unavailable::NoInstance,
                runnel_runtime::pool::Unavailable::Retired => Unavailable::Retired,
            })?;
            Ok(Lease(Box::new(HeldSlot(slot))))
        })
    }
}

/// A pool's slot as the frontend holds it.
struct HeldSlot(runnel_runtime::pool::Slot);

impl runnel_gateway::Held for HeldSlot {
    fn instance(&self) -> &str {
        &self.0.instance.id
    }

    fn channel_dir(&self) -> &Arc<std::path::Path> {
        self.0.instance.channel_dir()
    }
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Instance output and request records go to the service's log files; refusals go to the
/// daemon's refusal log and its counters.
pub struct Logs {
    pub store: Arc<LogStore>,
    refusals: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), u64>>,
}

impl Logs {
    pub fn new(store: Arc<LogStore>) -> Self {
        Self { store, refusals: std::sync::Mutex::new(std::collections::BTreeMap::new()) }
    }

    /// The refusal counters in Prometheus's text format.
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP runnel_refusals_total Requests refused before reaching an instance, by stage and reason.\n# TYPE runnel_refusals_total counter\n",
        );
        if let Ok(map) = self.refusals.lock() {
            for ((stage, reason), n) in map.iter() {
                out.push_str(&format!("runnel_refusals_total{{stage=\"{stage}\",reason=\"{reason}\"}} {n}\n"));
            }
        }
        out
    }
}

impl OutputSink for Logs {
    fn line(&self, key: &RevisionKey, instance: &str, stream: Stream, text: &str) {
        let record = json!({
            "timestamp": timestamp(),
            "revision": key.revision,
            "instance": instance,
            "stream": match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" },
            "textPayload": text,
        });
        self.store.append(&key.region, &key.service, Kind::Instances, &record);
    }
}

impl RequestLog for Logs {
    fn record(&self, record: RequestRecord) {
        self.store.append_line(&record.region, &record.service, Kind::Requests, |out| record.write_json_line(out));
    }

    fn refused(&self, refusal: runnel_gateway::Refusal) {
        if let Ok(mut map) = self.refusals.lock() {
            *map.entry((refusal.stage, refusal.reason.clone())).or_insert(0) += 1;
        }
        self.store.append_record("-", "-", Kind::Denied, &refusal);
    }
}

impl runnel_api::LogReader for Logs {
    fn read(&self, region: &str, service: &str, kind: &str, limit: usize) -> Vec<serde_json::Value> {
        let kind = match kind {
            "requests" => Kind::Requests,
            "denied" => Kind::Denied,
            _ => Kind::Instances,
        };
        self.store.read(region, service, kind, limit)
    }
}

/// How a revision's instances are started, from its recorded template.
fn launch(region: &str, service: &str, rev: &Revision, startup: Duration) -> Option<Launch> {
    let c = rev.containers.first()?;
    let (command, first_args) = c.command.split_first()?;
    let mut args = first_args.to_vec();
    args.extend(c.args.iter().cloned());
    let timeout = Duration::from_secs(parse_duration_seconds("timeout", &rev.timeout).ok()?);
    Some(Launch {
        key: RevisionKey {
            region: region.into(),
            service: service.into(),
            revision: rev.name.rsplit('/').next()?.to_string(),
        },
        command: command.clone(),
        args,
        env: c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
        working_dir: if c.working_dir.is_empty() { PathBuf::from("/") } else { PathBuf::from(&c.working_dir) },
        port: u16::try_from(c.ports.first().map(|p| p.container_port).unwrap_or(8080)).ok()?,
        concurrency: rev.max_instance_request_concurrency.max(1),
        min_instances: rev.scaling.min_instance_count.unwrap_or(0),
        max_instances: rev.scaling.max_instance_count.unwrap_or(DEFAULT_MAX_INSTANCES),
        timeout,
        startup_deadline: startup,
    })
}

pub struct Node {
    pub invoker: Arc<dyn runnel_gateway::Invoker>,
    pub cp: Arc<ControlPlane>,
    pub host: Arc<Host>,
    pub routes: Arc<Routes>,
    pub startup_deadline: Duration,
    pub logs: Arc<LogStore>,
    /// Turns true once the route table reflects the store: the daemon announces itself only
    /// then, so a service that existed before a restart answers its very first request.
    pub routes_loaded: watch::Sender<bool>,
}

impl Node {
    /// Runs until `shutdown` turns true, then stops every instance (SIGTERM, then SIGKILL).
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<Event>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.cp.subscribe();
        let mut pools: HashMap<RevisionKey, Arc<Pool>> = HashMap::new();
        let mut reported_ready: HashSet<RevisionKey> = HashSet::new();
        let mut services: HashSet<(String, String)> = HashSet::new();
        loop {
            let cp = self.cp.clone();
            match tokio::task::spawn_blocking(move || cp.desired()).await {
                Ok(Ok(desired)) => {
                    self.converge(&desired, &mut pools, &mut services);
                    self.routes_loaded.send_replace(true);
                }
                Ok(Err(e)) => tracing::error!(error = %e.message, "cannot read the desired state"),
                Err(e) => tracing::error!(error = %e, "reconciler task failed"),
            }
            tokio::select! {
                _ = changes.changed() => {}
                Some(event) = events.recv() => self.handle(event, &mut reported_ready).await,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            }
        }
        if let Ok(mut t) = self.routes.table.write() {
            *t = Arc::new(NameMap::default());
        }
        let stops: Vec<_> = pools.into_values().map(|p| tokio::spawn(async move { p.stop().await })).collect();
        for s in stops {
            let _ = s.await;
        }
    }

    async fn handle(&self, event: Event, reported_ready: &mut HashSet<RevisionKey>) {
        let (key, outcome) = match event {
            Event::Ready(key) => {
                if !reported_ready.insert(key.clone()) {
                    return;
                }
                (key, Outcome::Ready)
            }
            Event::Failed(key, msg) => (key, Outcome::Failed(msg)),
            Event::Crashed(key, msg) => {
                reported_ready.remove(&key);
                (key, Outcome::Crashed(msg))
            }
        };
        let cp = self.cp.clone();
        let result =
            tokio::task::spawn_blocking(move || cp.report(&key.region, &key.service, &key.revision, &outcome)).await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e.message, "cannot record a revision's status");
        }
    }

    fn converge(
        &self,
        desired: &[Desired],
        pools: &mut HashMap<RevisionKey, Arc<Pool>>,
        services: &mut HashSet<(String, String)>,
    ) {
        let mut want: HashMap<RevisionKey, Launch> = HashMap::new();
        let mut table: NameMap<String, Arc<Route>> = NameMap::default();
        let mut now_services = HashSet::new();
        for d in desired {
            let name = d.service.name.rsplit('/').next().unwrap_or_default().to_string();
            now_services.insert((d.region.clone(), name.clone()));
            for rev in [&d.serving, &d.starting].into_iter().flatten() {
                if let Some(l) = launch(&d.region, &name, rev, self.startup_deadline) {
                    want.insert(l.key.clone(), l);
                }
            }
        }
        // Start what should run; what should no longer run stops once the new table is
        // published, so that no request is routed to a pool that has begun to drain (one that
        // was routed just before still gets `Retired` and is routed again).
        let mut retired = Vec::new();
        pools.retain(|key, pool| {
            let keep = want.get(key).is_some_and(|l| *l == pool.launch);
            if !keep {
                retired.push(pool.clone());
            }
            keep
        });
        for (key, l) in want {
            pools.entry(key).or_insert_with(|| Pool::start(l, self.host.clone()));
        }
        for d in desired {
            let name = d.service.name.rsplit('/').next().unwrap_or_default().to_string();
            let Some(serving) = &d.serving else { continue };
            let Some(l) = launch(&d.region, &name, serving, self.startup_deadline) else { continue };
            let Some(pool) = pools.get(&l.key) else { continue };
            let route = Route {
                project: self.cp.project().project_id.clone(),
                project_number: self.cp.project().project_number.clone(),
                region: d.region.clone(),
                service: name.clone(),
                revision: l.key.revision.clone(),
                timeout: l.timeout,
                backend: Arc::new(PoolBackend(pool.clone())),
                ingress: d.service.ingress,
                default_uri_disabled: d.service.default_uri_disabled,
                invoker: self.invoker.clone(),
            };
            table.insert(self.cp.service_host(&d.region, &name), Arc::new(route));
        }
        if let Ok(mut t) = self.routes.table.write() {
            *t = Arc::new(table);
        }
        for pool in retired {
            tokio::spawn(async move { pool.stop().await });
        }
        for (region, service) in services.difference(&now_services) {
            self.logs.forget(region, service);
        }
        *services = now_services;
    }
}

/// The daemon's ends of every instance's outbound channels. Today: the egress proxy. Each
/// instance gets its own socket, so whatever arrives on it is that instance's request.
pub struct NodeChannels {
    pub metadata: MetadataChannel,
    pub log: Arc<Logs>,
    pub cp: Arc<ControlPlane>,
    pub frontend: Arc<runnel_gateway::Frontend>,
    pub routes: Arc<Routes>,
    /// runnel's own listener addresses: never a destination.
    pub own_listeners: Vec<std::net::IpAddr>,
}

/// One instance's egress decisions.
pub(crate) struct InstancePlanner {
    pub(crate) log: Arc<Logs>,
    pub(crate) cp: Arc<ControlPlane>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) own_listeners: Vec<std::net::IpAddr>,
    pub(crate) key: RevisionKey,
    pub(crate) instance: String,
}

/// An egress decision with what it was made about: the destination as classified after
/// resolution and, for anything but a service URL, the address a tunnel would connect to.
pub(crate) struct EgressDecision {
    pub(crate) route: runnel_policy::egress::Route,
    pub(crate) destination: runnel_policy::egress::Destination,
    pub(crate) target: Option<std::net::SocketAddr>,
}

impl InstancePlanner {
    /// What the destination is, after resolution: runnel resolves names itself, so instances
    /// need no DNS and a name can never be made to point at something it should not.
    fn classify(&self, host: &str, port: u16) -> (runnel_policy::egress::Destination, Option<std::net::SocketAddr>) {
        use runnel_policy::egress::Destination;
        if self.routes.route(host).is_some() {
            return (Destination::ServiceUrl { host: host.to_string() }, None);
        }
        let endpoints = self.cp.endpoints().unwrap_or_default();
        let ip: Option<std::net::IpAddr> = host.parse().ok();
        for e in &endpoints {
            let Ok(address) = e.address.parse::<std::net::SocketAddr>() else { continue };
            let named = e.hostname == host;
            let addressed = ip.is_some_and(|ip| ip.to_canonical() == address.ip());
            if (named || addressed) && address.port() == port {
                let target = e.target.parse().ok();
                return (Destination::VpcEndpoint { network: e.network.clone(), address: address.ip() }, target);
            }
        }
        match ip {
            Some(ip) => (Destination::Ip(ip), Some(std::net::SocketAddr::new(ip, port))),
            None => (Destination::Unresolvable(host.to_string()), None),
        }
    }
}

impl InstancePlanner {
    /// The egress route for a call to `host:port`, as the proxy decides it; the troubleshooter
    /// asks the same question through here. `Err` when the calling revision is gone.
    pub(crate) fn decide(&self, host: &str, port: u16) -> Result<EgressDecision, String> {
        let (caller, vpc) = self
            .cp
            .egress_context(&self.key.region, &self.key.service, &self.key.revision)
            .map_err(|e| format!("the calling revision is gone: {}", e.message))?;
        let (destination, target) = self.classify(host, port);
        let route = runnel_policy::egress::route(&caller, vpc.as_ref(), &destination, &self.own_listeners);
        Ok(EgressDecision { route, destination, target })
    }
}

impl runnel_gateway::EgressPlanner for InstancePlanner {
    fn plan(&self, host: &str, port: u16) -> runnel_gateway::Plan {
        use runnel_gateway::Plan;
        use runnel_policy::egress::Destination;
        let EgressDecision { route, destination: dest, target } = match self.decide(host, port) {
            Ok(d) => d,
            Err(message) => return Plan::Refuse { reason: runnel_policy::Reason::EgressUnresolvable, message },
        };
        let reason = route.reason();
        let (decision, origin) = route.into_parts();
        let Some(origin) = origin else {
            let message = decision.trace.last().cloned().unwrap_or_default();
            return Plan::Refuse { reason, message };
        };
        match dest {
            Destination::ServiceUrl { .. } => {
                // What the receiver sees in X-Forwarded-For: for a VPC call, an address of the
                // connector's network, as on Cloud Run; otherwise this machine's loopback.
                let client_ip = if origin.is_vpc() {
                    std::net::IpAddr::from([10, 8, 0, 2])
                } else {
                    std::net::IpAddr::from([127, 0, 0, 1])
                };
                Plan::Service { origin, client_ip }
            }
            _ => match target {
                Some(addr) => Plan::Connect { addr },
                None => Plan::Refuse {
                    reason: runnel_policy::Reason::EgressUnresolvable,
                    message: format!(
                        "nothing listens at {host}:{port}; create an endpoint with `runnel compute networks endpoints create`"
                    ),
                },
            },
        }
    }

    fn refused(&self, request_id: &str, host: &str, port: u16, reason: runnel_policy::Reason) {
        tracing::info!(
            request_id,
            caller_service = self.key.service.as_str(),
            caller_revision = self.key.revision.as_str(),
            caller_instance = self.instance.as_str(),
            target = %format!("{host}:{port}"),
            %reason,
            "egress refused"
        );
        self.log.refused(runnel_gateway::Refusal {
            timestamp: timestamp(),
            request_id: request_id.to_string(),
            stage: "egress",
            reason: reason.to_string(),
            target: format!("{host}:{port}"),
            origin: format!("instance {} of {}", self.instance, self.key),
            caller: Some(
                runnel_policy::origin::Caller::new(&self.key.service, &self.key.revision, &self.key.region).to_string(),
            ),
            // Refusals are rare, so the decision is made again here for its trace (the proxy
            // keeps only the reason on its path).
            trace: self.decide(host, port).map(|d| d.route.decision().trace.clone()).unwrap_or_default(),
        });
    }
}

impl runnel_runtime::pool::ChannelProvider for NodeChannels {
    fn open(
        &self,
        key: &RevisionKey,
        instance: &str,
        channel_dir: &std::path::Path,
        uid: Option<u32>,
    ) -> std::io::Result<Box<dyn Send + Sync>> {
        use std::os::unix::fs::PermissionsExt;
        let path = channel_dir.join(runnel_runtime::sandbox::Channels::EGRESS);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid))?;
        }
        let planner = Arc::new(IssuerKeys {
            planner: InstancePlanner {
                log: self.log.clone(),
                cp: self.cp.clone(),
                routes: self.routes.clone(),
                own_listeners: self.own_listeners.clone(),
                key: key.clone(),
                instance: instance.to_string(),
            },
            minter: self.metadata.minter.clone(),
        });
        let egress = tokio::spawn(self.frontend.clone().serve_egress(listener, planner));
        let metadata = self.metadata.open(key, instance, channel_dir, uid)?;
        Ok(Box::new((AbortOnDrop(egress), AbortOnDrop(metadata))))
    }
}

/// An instance's egress planner that also serves runnel's key publication at the issuer's
/// address, as Cloud Run services fetch Google's certificates: a service that verifies tokens
/// itself needs the keys, but the API listener that publishes them is no destination (every
/// other request to it stays refused with `egress.forbidden_destination`).
struct IssuerKeys {
    planner: InstancePlanner,
    minter: Arc<runnel_identity::Minter>,
}

impl IssuerKeys {
    /// `host:port` is the issuer's, as tokens name it (`http://ADDRESS:PORT`).
    fn is_issuer(&self, host: &str, port: u16) -> bool {
        let Some(authority) = self.minter.issuer().strip_prefix("http://") else { return false };
        let Ok(issuer) = authority.trim_end_matches('/').parse::<std::net::SocketAddr>() else { return false };
        let asked = host.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical());
        asked == Ok(issuer.ip().to_canonical()) && port == issuer.port()
    }
}

impl runnel_gateway::EgressPlanner for IssuerKeys {
    fn plan(&self, host: &str, port: u16) -> runnel_gateway::Plan {
        self.planner.plan(host, port)
    }

    fn published(&self, host: &str, port: u16, path: &str) -> Option<runnel_gateway::Published> {
        if !self.is_issuer(host, port) {
            return None;
        }
        let json = runnel_identity::publish::document(self.minter.keys(), self.minter.issuer(), path)?;
        Some(runnel_gateway::Published { json, max_age_seconds: runnel_identity::keys::CERTS_MAX_AGE })
    }

    fn refused(&self, request_id: &str, host: &str, port: u16, reason: runnel_policy::Reason) {
        self.planner.refused(request_id, host, port, reason);
    }
}

/// Stops a channel's server when the instance's run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The frontend's invoker check: the ID token, the account behind it, and `run.routes.invoke`
/// on the service's policy and the project's, evaluated on every request against current state.
pub struct InvokerGate {
    pub cp: Arc<ControlPlane>,
    pub keys: Arc<runnel_identity::Keys>,
    pub cache: Arc<runnel_identity::VerifyCache>,
    pub issuer: String,
    pub state: StateCache,
}

/// A service's invoker facts with what derives from them, worked out once per snapshot rather
/// than on every request: whether `allUsers` may invoke it, and the audiences its tokens may have.
struct ServiceAccess {
    facts: runnel_api::InvokerFacts,
    /// `allUsers` holds `run.routes.invoke` (the same pure IAM check, run once).
    public: bool,
    /// The service's URL as `http://` and `https://`, with and without a trailing `/`, then its
    /// custom audiences.
    audiences: Vec<String>,
    /// Principals the pure IAM check admitted for `run.routes.invoke` under these policies, by
    /// service account unique id and by person's email: the check is run once per principal
    /// and snapshot, not per request. Only admissions are kept; a refusal is evaluated again,
    /// for its trace.
    admitted: std::sync::Mutex<Admitted>,
}

#[derive(Default)]
struct Admitted {
    accounts: NameSet<String>,
    people: NameSet<String>,
}

/// Bounds the admissions kept per snapshot (principals with valid tokens: accounts and people).
const MAX_ADMITTED: usize = 4096;

impl ServiceAccess {
    fn new(cp: &ControlPlane, region: &str, service: &str, facts: runnel_api::InvokerFacts) -> Self {
        use runnel_policy::iam::{self, Principal, Scope};
        let public = {
            let scopes = [
                Scope { resource: &facts.service_name, policy: &facts.service_policy },
                Scope { resource: &facts.project_name, policy: &facts.project_policy },
            ];
            iam::check(&Principal::Anonymous, "run.routes.invoke", &scopes).allowed
        };
        let url = cp.service_url(region, service);
        let https = url.replacen("http://", "https://", 1);
        let mut audiences = vec![format!("{url}/"), format!("{https}/"), url, https];
        audiences.extend(facts.custom_audiences.iter().cloned());
        Self { facts, public, audiences, admitted: std::sync::Mutex::new(Admitted::default()) }
    }

    /// `run.routes.invoke` for `principal`: a kept admission, else the pure IAM check (whose
    /// admission is then kept for this snapshot). `key` picks the principal's set and entry.
    fn invoke(
        &self,
        key: (bool, &str),
        principal: impl FnOnce() -> runnel_policy::iam::Principal,
    ) -> Result<(), runnel_policy::Decision> {
        use runnel_policy::iam::{self, Scope};
        let (is_account, id) = key;
        let set = |a: &Admitted| if is_account { a.accounts.contains(id) } else { a.people.contains(id) };
        if self.admitted.lock().is_ok_and(|a| set(&a)) {
            return Ok(());
        }
        let scopes = [
            Scope { resource: &self.facts.service_name, policy: &self.facts.service_policy },
            Scope { resource: &self.facts.project_name, policy: &self.facts.project_policy },
        ];
        let decision = iam::check(&principal(), "run.routes.invoke", &scopes);
        if !decision.allowed {
            return Err(decision);
        }
        if let Ok(mut a) = self.admitted.lock()
            && a.accounts.len() + a.people.len() < MAX_ADMITTED
        {
            if is_account {
                a.accounts.insert(id.to_string())
            } else {
                a.people.insert(id.to_string())
            };
        }
        Ok(())
    }
}

/// What the invoker check reads from the store, kept between requests until the next commit.
///
/// Every committed write bumps the control plane's change counter before the API acknowledges
/// it, and an entry is only used while the counter is where it was when the entry was read. So
/// a change a client was told about (a removed binding, a disabled account) takes effect on the
/// very next request, and requests in between skip the store.
#[derive(Default)]
pub struct StateCache {
    inner: std::sync::Mutex<Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    version: u64,
    /// By region, then service: looked up with borrowed names, without building a key.
    facts: NameMap<String, NameMap<String, Option<Arc<ServiceAccess>>>>,
    /// Accounts by unique id. The keys of these maps are names of deployed services and the
    /// subjects of tokens runnel signed, never a client's choice (`runnel_model::name_map`).
    accounts: NameMap<String, Option<Arc<runnel_model::service_account::ServiceAccount>>>,
    /// People by email: whether they still hold a credential.
    people: NameMap<String, bool>,
}

impl StateCache {
    /// The snapshot for the current version, emptied when the store changed.
    fn current(&self, cp: &ControlPlane) -> Option<std::sync::MutexGuard<'_, Snapshot>> {
        let version = cp.version();
        let mut snap = self.inner.lock().ok()?;
        if snap.version != version {
            *snap = Snapshot { version, ..Snapshot::default() };
        }
        Some(snap)
    }

    fn facts(&self, cp: &ControlPlane, region: &str, service: &str) -> Option<Arc<ServiceAccess>> {
        if let Some(hit) = self.current(cp).and_then(|s| s.facts.get(region).and_then(|r| r.get(service)).cloned()) {
            return hit;
        }
        let version = cp.version();
        let read = cp
            .invoker_facts(region, service)
            .ok()?
            .map(|facts| Arc::new(ServiceAccess::new(cp, region, service, facts)));
        if let Some(mut snap) = self.current(cp)
            && snap.version == version
        {
            snap.facts.entry(region.to_string()).or_default().insert(service.to_string(), read.clone());
        }
        read
    }

    /// Whether the person still holds a credential (`None` when the store cannot say).
    fn person(&self, cp: &ControlPlane, email: &str) -> Option<bool> {
        if let Some(hit) = self.current(cp).and_then(|s| s.people.get(email).copied()) {
            return Some(hit);
        }
        let version = cp.version();
        let read = cp.person_has_credential(email).ok()?;
        if let Some(mut snap) = self.current(cp)
            && snap.version == version
        {
            snap.people.insert(email.to_string(), read);
        }
        Some(read)
    }

    fn account(
        &self,
        cp: &ControlPlane,
        unique_id: &str,
    ) -> Option<Arc<runnel_model::service_account::ServiceAccount>> {
        if let Some(hit) = self.current(cp).and_then(|s| s.accounts.get(unique_id).cloned()) {
            return hit;
        }
        let version = cp.version();
        let read = cp.account_by_unique_id(unique_id).ok()?.map(Arc::new);
        if let Some(mut snap) = self.current(cp)
            && snap.version == version
        {
            snap.accounts.insert(unique_id.to_string(), read.clone());
        }
        read
    }
}

const SKEW: u64 = 300;

fn deny(status: u16, reason: runnel_policy::Reason, trace: Vec<String>) -> runnel_gateway::InvokerCheck {
    runnel_gateway::InvokerCheck::Deny { status, decision: runnel_policy::Decision::deny(reason, trace) }
}

impl runnel_gateway::Invoker for InvokerGate {
    fn check(&self, route: &Route, headers: &hyper::HeaderMap) -> runnel_gateway::InvokerCheck {
        use runnel_gateway::InvokerCheck;
        use runnel_policy::Reason;
        use runnel_policy::iam::Principal;
        let access = match self.state.facts(&self.cp, &route.region, &route.service) {
            Some(a) => a,
            // The service vanished or the store failed: refuse rather than guess.
            _ => return deny(403, Reason::IamNoBinding, vec!["the service's policy could not be read".into()]),
        };
        let facts = &access.facts;
        if facts.invoker_iam_disabled {
            return InvokerCheck::Allow { reason: Reason::InvokerCheckDisabled, rewrite: None };
        }
        if access.public {
            return InvokerCheck::Allow { reason: Reason::InvokerAllUsers, rewrite: None };
        }
        // X-Serverless-Authorization wins over Authorization, as on Cloud Run; exactly one.
        const SERVERLESS: hyper::header::HeaderName =
            hyper::header::HeaderName::from_static("x-serverless-authorization");
        let serverless = headers.get_all(&SERVERLESS);
        let (name, values) = if serverless.iter().next().is_none() {
            (hyper::header::AUTHORIZATION, headers.get_all(hyper::header::AUTHORIZATION))
        } else {
            (SERVERLESS, serverless)
        };
        let mut values = values.iter();
        let value = match (values.next(), values.next()) {
            (None, _) => {
                return deny(403, Reason::TokenMissing, vec![
                    "the request carries no ID token; send `Authorization: Bearer TOKEN` with a token for the service's URL (fetch_id_token, getIdTokenClient, `runnel auth print-identity-token`)".into(),
                ]);
            }
            (Some(one), None) => one,
            _ => {
                return deny(
                    401,
                    Reason::TokenMultiple,
                    vec![format!("`{name}` appears more than once; send exactly one token")],
                );
            }
        };
        // Bytes, not text: a token found in the cache was text when it verified, and only a
        // miss scans the kilobyte for UTF-8 (a token with bytes other than base64url and dots
        // is refused by the check either way).
        let bytes = value.as_bytes();
        let Some(token) = bytes.strip_prefix(b"Bearer ").or_else(|| bytes.strip_prefix(b"bearer ")) else {
            return deny(401, Reason::TokenMalformed, vec![format!("`{name}` is not `Bearer TOKEN`")]);
        };
        let token = token.trim_ascii();
        let now = runnel_identity::unix_now();
        let verified = self
            .keys
            .with_key_set(|keys| self.cache.verify_bytes(token, keys, &self.issuer, &access.audiences, now, SKEW));
        let verified = match verified {
            Ok(v) => v,
            Err(refusal) => return deny(401, refusal.reason, vec![refusal.detail]),
        };
        let claims = &verified.claims;
        // A person's token (`runnel auth print-identity-token`): its subject is the user's email,
        // where a service account's is its numeric unique id.
        if claims.sub.as_bytes().contains(&b'@') {
            if claims.email.as_deref() != Some(claims.sub.as_str()) {
                return deny(401, Reason::TokenMalformed, vec!["a user token's subject and email differ".into()]);
            }
            // A person's token lives as long as one of their credentials does, as with service
            // accounts, whose tokens die with the account.
            let holds_credential = self.state.person(&self.cp, &claims.sub) == Some(true);
            if let Some(refusal) = runnel_policy::principal::refuses_person(&claims.sub, holds_credential) {
                return deny(403, refusal.reason, refusal.trace);
            }
            if let Err(decision) = access.invoke((false, &claims.sub), || Principal::User { email: claims.sub.clone() })
            {
                let mut trace = decision.trace;
                trace.push(format!(
                    "fix: `runnel run services add-iam-policy-binding {} --region={} --member=user:{} --role=roles/run.invoker`",
                    route.service, route.region, claims.sub
                ));
                return deny(403, decision.reason, trace);
            }
            return admitted(name, verified);
        }
        // Tokens name their account by unique id; the account found under it must still be
        // that account, with the token's email, and enabled.
        use runnel_policy::principal;
        let issued = principal::IssuedTo { unique_id: &claims.sub, email: claims.email.as_deref() };
        let Some(account) = self.state.account(&self.cp, &claims.sub) else {
            let refusal = principal::service_account(issued, None);
            return deny(403, refusal.reason, refusal.trace);
        };
        if let Some(refusal) = principal::refuses_service_account(issued, Some(principal::Account::from(&*account))) {
            return deny(403, refusal.reason, refusal.trace);
        }
        let principal =
            || Principal::ServiceAccount { email: account.email.clone(), unique_id: account.unique_id.clone() };
        if let Err(decision) = access.invoke((true, &account.unique_id), principal) {
            let mut trace = decision.trace;
            trace.push(format!(
                "fix: `runnel run services add-iam-policy-binding {} --region={} --member=serviceAccount:{} --role=roles/run.invoker`",
                route.service, route.region, account.email
            ));
            return deny(403, decision.reason, trace);
        }
        admitted(name, verified)
    }
}

/// Admits a request whose token was checked. The instance gets that token minus its signature
/// (`SIGNATURE_REMOVED_BY_GOOGLE`, as on Cloud Run), so it cannot be replayed from its logs; the
/// value was made once, when the token was first verified. A token that cannot be forwarded
/// without its signature is refused rather than passed whole.
fn admitted(name: hyper::header::HeaderName, verified: runnel_identity::Verified) -> runnel_gateway::InvokerCheck {
    match verified.forwarded {
        Some(value) => runnel_gateway::InvokerCheck::Allow {
            reason: runnel_policy::Reason::IamGranted,
            rewrite: Some((name, value)),
        },
        None => deny(
            401,
            runnel_policy::Reason::TokenMalformed,
            vec![format!(
                "`{name}` cannot be forwarded with its signature removed; send a token of visible ASCII characters"
            )],
        ),
    }
}

/// The metadata server of one instance, served on its `metadata.sock`.
pub struct MetadataChannel {
    pub cp: Arc<ControlPlane>,
    pub minter: Arc<runnel_identity::Minter>,
}

impl MetadataChannel {
    fn open(
        &self,
        key: &RevisionKey,
        instance: &str,
        channel_dir: &std::path::Path,
        uid: Option<u32>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use std::os::unix::fs::PermissionsExt;
        let rev = self.cp.revision(&key.region, &key.service, &key.revision).ok().flatten();
        let email = rev.map(|r| r.service_account).unwrap_or_default();
        // The account's unique id even if it is disabled now: enabled again, it gets tokens
        // without a restart of the instance.
        let unique_id = self.cp.account_by_email(&email).ok().flatten().map(|a| a.unique_id).unwrap_or_default();
        let project = self.cp.project();
        let info = runnel_identity::Instance {
            project_id: project.project_id.clone(),
            project_number: project.project_number.parse().unwrap_or(0),
            region: key.region.clone(),
            instance_id: u64::from_str_radix(instance, 16).unwrap_or(0).to_string(),
            instance_name: instance.to_string(),
            created: runnel_identity::unix_now(),
            service_account: runnel_identity::Account { unique_id, email },
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
            extra_hosts: Vec::new(),
        };
        let cp = self.cp.clone();
        let accounts = Arc::new(move |email: &str| cp.account_by_email(email).ok().flatten());
        let router = runnel_identity::MetadataServer::new(info, self.minter.clone(), accounts).router();
        let path = channel_dir.join(runnel_runtime::sandbox::Channels::METADATA);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid))?;
        }
        Ok(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }))
    }
}

/// The API's `generateIdToken`, backed by the same minter as the metadata servers.
pub struct Tokens(pub Arc<runnel_identity::Minter>);

impl runnel_api::TokenIssuer for Tokens {
    fn id_token(&self, subject: &str, email: &str, audience: &str) -> Result<String, String> {
        let account = runnel_identity::Account { unique_id: subject.to_string(), email: email.to_string() };
        self.0
            .id_token(&account, audience, runnel_identity::Format::Standard, runnel_identity::unix_now())
            .map(|t| t.token.to_string())
            .map_err(|e| e.to_string())
    }

    fn access_token(&self, holder: &runnel_api::AccessTokenHolder, scopes: &[String]) -> Result<(String, u64), String> {
        let now = runnel_identity::unix_now();
        let token =
            self.0.access_token(&crate::operator::minter_account(holder), scopes, now).map_err(|e| e.to_string())?;
        Ok((token.token.to_string(), now + token.expires_in))
    }

    fn access_token_holder(&self, token: &str) -> Option<runnel_api::AccessTokenHolder> {
        let info = self.0.access_token_principal(token, runnel_identity::unix_now())?;
        Some(crate::operator::holder_of(&info.unique_id, info.email))
    }
}
