//! What the frontend needs from the rest of the daemon, as traits, so it can be tested with
//! fakes and the daemon can change how instances are run without touching the request path.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Where requests for one service go, as decided by the daemon from the store.
pub struct Route {
    /// The project id that owns the service: an internal-only service admits VPC origins of
    /// this project only.
    pub project: String,
    pub project_number: String,
    pub region: String,
    pub service: String,
    /// The serving revision (short name).
    pub revision: String,
    /// The revision's request timeout; a request still running after it gets 504.
    pub timeout: Duration,
    pub backend: Arc<dyn Backend>,
    /// The service's ingress setting, checked before any instance is involved.
    pub ingress: runnel_model::service::Ingress,
    /// `--no-default-url`: the URL answers 404 to everyone.
    pub default_uri_disabled: bool,
    /// The invoker check (ID token and `run.routes.invoke`), run after ingress.
    pub invoker: Arc<dyn Invoker>,
}

/// The outcome of the invoker check for one request.
pub enum InvokerCheck {
    /// Admitted. `rewrite` replaces the header the token came in, with its signature removed,
    /// so the token cannot be replayed from the instance's logs.
    Allow { reason: runnel_policy::Reason, rewrite: Option<(hyper::header::HeaderName, hyper::header::HeaderValue)> },
    /// Refused: 401 for a bad token, 403 for a missing one or a principal without the
    /// permission, as on Cloud Run.
    Deny { status: u16, decision: runnel_policy::Decision },
}

/// Checks that the caller may invoke the route's service. Implementations must be pure
/// functions of the request's headers and current policy: no decision may be cached across
/// policy changes (a removed binding takes effect on the very next request).
pub trait Invoker: Send + Sync + 'static {
    fn check(&self, route: &Route, headers: &hyper::HeaderMap) -> InvokerCheck;
}

/// Finds the route for a request's host. The host is already normalised: lowercase, without
/// port and without a trailing dot.
pub trait Router: Send + Sync + 'static {
    fn route(&self, host: &str) -> Option<Arc<Route>>;
}

/// Why no instance slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every instance is at its concurrency and the queue is full or the wait ran out: 429.
    Busy,
    /// No instance became ready within the wait bound: 503.
    NoInstance,
    /// The revision stopped serving (a deploy moved the service's traffic on) before a slot
    /// was had; the frontend routes the request again.
    Retired,
}

/// A slot on one instance, and which instance it is on: held while the request is in flight,
/// released when dropped.
pub trait Held: Send + Sync {
    /// Unique among the daemon's live instances; the frontend pools connections by it.
    fn instance(&self) -> &str;
    /// The instance's channel directory; its `port.sock` leads to the workload.
    fn channel_dir(&self) -> &Arc<Path>;
}

/// A slot on one instance, dropped when the request (including its response body) is done.
/// What the slot knows about its instance is read through it, not copied into the lease: a
/// copy of a shared name is an atomic operation to make and another to drop, per request.
pub struct Lease(pub Box<dyn Held>);

impl Lease {
    pub fn instance(&self) -> &str {
        self.0.instance()
    }

    pub fn channel_dir(&self) -> &Arc<Path> {
        self.0.channel_dir()
    }
}

pub type LeaseFuture<'a> = Pin<Box<dyn Future<Output = Result<Lease, Unavailable>> + Send + 'a>>;

/// Hands out instance slots of one revision.
pub trait Backend: Send + Sync + 'static {
    fn acquire(&self) -> LeaseFuture<'_>;
}

/// One structured record per request the frontend handled for a service, shaped like Cloud
/// Logging's `httpRequest`. The frontend makes one per request and the log only writes it out,
/// so its text borrows from the request where it can (`Cow`): a record that owned a dozen
/// `String`s cost a dozen allocations per request. [`RequestRecord::into_owned`] keeps one.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord<'a> {
    pub timestamp: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub service: Cow<'a, str>,
    pub revision: Cow<'a, str>,
    pub instance: Cow<'a, str>,
    pub http_request: HttpRequest<'a>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest<'a> {
    pub request_method: Cow<'a, str>,
    pub request_url: Cow<'a, str>,
    pub request_size: Cow<'a, str>,
    pub status: u16,
    pub response_size: Cow<'a, str>,
    pub user_agent: Cow<'a, str>,
    pub remote_ip: Cow<'a, str>,
    /// Seconds with an `s`, as Cloud Logging writes durations: `0.012s`.
    pub latency: Cow<'a, str>,
    pub protocol: Cow<'a, str>,
}

impl RequestRecord<'_> {
    /// The record with its text copied, to keep beyond the call it was given to.
    pub fn into_owned(self) -> RequestRecord<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        let h = self.http_request;
        RequestRecord {
            timestamp: own(self.timestamp),
            request_id: own(self.request_id),
            region: own(self.region),
            service: own(self.service),
            revision: own(self.revision),
            instance: own(self.instance),
            http_request: HttpRequest {
                request_method: own(h.request_method),
                request_url: own(h.request_url),
                request_size: own(h.request_size),
                status: h.status,
                response_size: own(h.response_size),
                user_agent: own(h.user_agent),
                remote_ip: own(h.remote_ip),
                latency: own(h.latency),
                protocol: own(h.protocol),
            },
        }
    }
}

/// Receives request records; the daemon writes them to the service's request log.
pub trait RequestLog: Send + Sync + 'static {
    fn record(&self, record: RequestRecord<'_>);
    /// A request refused before it reached an instance (ingress, egress; later tokens and
    /// IAM): the platform's refusal log and the refusal counters. Never a token or a secret.
    fn refused(&self, refusal: Refusal);
}

/// One refused request, for operators: who asked for what, from where, and why not.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub timestamp: String,
    pub request_id: String,
    /// `ingress`, `egress`, …: which check refused it.
    pub stage: &'static str,
    /// The machine-readable reason, as in docs and metrics.
    pub reason: String,
    /// The target: the service (region/name) or `host:port` for egress.
    pub target: String,
    /// The origin, in words.
    pub origin: String,
    /// The calling service and revision, when an instance made the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// How the decision was reached, with the fix.
    pub trace: Vec<String>,
}

/// Where an instance's outbound request goes, as decided by the daemon from the calling
/// revision's VPC settings and the destination (see `runnel_policy::egress::route`).
pub enum Plan {
    /// Another service: handled by the frontend in-process, with this origin. `client_ip` is
    /// what the receiver sees in `X-Forwarded-For` (an address of the connector's range for a
    /// VPC origin).
    Service { origin: runnel_policy::origin::Origin, client_ip: std::net::IpAddr },
    /// An internal endpoint's target, or a public address: connect there.
    Connect { addr: std::net::SocketAddr },
    /// Refused, with the reason and a sentence with the fix.
    Refuse { reason: runnel_policy::Reason, message: String },
}

/// A document the daemon publishes itself (its ID token keys, its discovery document), answered
/// by the egress proxy in-process: instances may read it, but never reach the listener that
/// serves it elsewhere.
pub struct Published {
    /// The JSON body.
    pub json: String,
    /// How long verifiers may cache it (`Cache-Control: public, max-age=…`).
    pub max_age_seconds: u64,
}

/// Decides, for one instance, where each outbound request goes.
pub trait EgressPlanner: Send + Sync + 'static {
    /// `host` is the authority's host as the instance wrote it (lowercased, no port).
    fn plan(&self, host: &str, port: u16) -> Plan;
    /// The document the daemon publishes at `http://host:port/path`, if that is one, answered
    /// for a `GET` before any plan is made; every other request is planned (and a request to the
    /// daemon's own listeners refused) as usual.
    fn published(&self, _host: &str, _port: u16, _path: &str) -> Option<Published> {
        None
    }
    /// Records a refused request (the refusal log), without secrets.
    fn refused(&self, request_id: &str, host: &str, port: u16, reason: runnel_policy::Reason);
}
