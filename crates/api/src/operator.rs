//! Operator proxies: `runnel run services proxy SERVICE --network=NET`.
//!
//! A developer often needs to reach an internal-only service by hand, which Cloud Run's
//! `gcloud run services proxy` cannot do (its requests come from the internet). runnel lets a
//! principal who may use a VPC network (`compute.networks.use`, held by
//! `roles/compute.networkUser`, editor and owner) ask the daemon to open a loopback listener
//! whose requests enter that network: they get the origin *VPC(NET, operator proxy for
//! PRINCIPAL)*, then go through the frontend's normal checks — ingress, then the invoker check
//! with the principal's own ID token — so nothing is admitted that the principal could not
//! invoke from inside the network.
//!
//! The control plane only decides whether the proxy may be opened and with what origin; the
//! daemon ([`OperatorProxies`]) opens the listener, because the control plane must never reach
//! an instance. The listener lives exactly as long as the API request that opened it.

use runnel_model::iam::Policy;
use runnel_model::network::Network;
use runnel_policy::iam::{Principal, Scope};
use runnel_policy::origin::{NETWORK_USE, Origin};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::networks::network_key;
use crate::plane::{ControlPlane, PROJECT_POLICY_KEY, Target, get};

/// What `POST /runnel/v1/projects/P/locations/R/services/S:proxy` asks for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyRequest {
    /// The network, by name or as `projects/P/global/networks/N`.
    pub network: String,
    /// The loopback port to listen on; 0 lets the daemon pick one.
    #[serde(default)]
    pub port: u16,
}

/// Everything the daemon needs to serve an operator proxy, decided by the control plane.
#[derive(Debug, Clone)]
pub struct OperatorProxyGrant {
    /// Who opened it: requests carry this principal's ID token.
    pub principal: Principal,
    /// `sub` and `email` of that ID token.
    pub subject: String,
    pub email: String,
    pub region: String,
    pub service: String,
    /// The service's host and frontend port (`Host` of forwarded requests).
    pub authority: String,
    /// The service's URL: the ID token's audience.
    pub url: String,
    /// The network's full name.
    pub network: String,
    /// The origin every request on the listener gets (a VPC origin for `principal`).
    pub origin: Origin,
    pub port: u16,
}

/// A listener the daemon opened; dropping `guard` closes it.
pub struct OpenedProxy {
    pub address: std::net::SocketAddr,
    pub guard: Box<dyn Send + Sync>,
    /// Turns true when the daemon stops, which ends the held-open response (a graceful
    /// shutdown waits for every response to end).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Opens operator proxies' listeners; the daemon provides it.
pub trait OperatorProxies: Send + Sync + 'static {
    /// Binds `127.0.0.1:grant.port` and serves it until the returned guard is dropped.
    fn open(&self, grant: OperatorProxyGrant) -> ApiResult<OpenedProxy>;
}

impl ControlPlane {
    /// Decides whether `caller` may open an operator proxy to the service through `network`:
    /// it must hold `compute.networks.use` on the network (refused with 403 naming it), and the
    /// network and the service must exist.
    pub fn grant_operator_proxy(
        &self,
        caller: &Principal,
        project: &str,
        region: &str,
        service: &str,
        req: &ProxyRequest,
    ) -> ApiResult<OperatorProxyGrant> {
        self.check_project(project)?;
        // A full name must name this project's network: taking only its last segment would
        // authorise, and enter, a network the caller did not name.
        if let Some(("projects", rest)) = req.network.split_once('/')
            && let Some((named, _)) = rest.split_once('/')
            && named != self.project.project_id
            && named != self.project.project_number
        {
            return Err(ApiError::invalid(format!(
                "network `{}` is in project `{named}`, but this runnel serves project `{}`; name a network of it (`runnel compute networks list`)",
                req.network, self.project.project_id
            )));
        }
        let short = req.network.rsplit('/').next().unwrap_or_default().to_string();
        let network = format!("projects/{}/global/networks/{short}", self.project.project_id);
        let (subject, email) = Self::id_token_subject(caller)
            .ok_or_else(|| ApiError::unauthenticated("only an authenticated caller may open an operator proxy"))?;
        self.read(|r| {
            self.authorize(r, caller, NETWORK_USE, &Target { name: &network, policy_key: None })?;
            if get::<Network>(r, &network_key(&short))?.is_none() {
                return Err(ApiError::not_found(format!(
                    "network `{short}` does not exist; list networks with `runnel compute networks list`"
                )));
            }
            if get::<serde_json::Value>(r, &crate::services::key(region, service))?.is_none() {
                return Err(ApiError::not_found(format!(
                    "service `{service}` does not exist in region `{region}`; list services with `runnel run services list --region={region}`"
                )));
            }
            Ok(())
        })?;
        let origin = self.operator_proxy_origin(caller, &network)?;
        let host = self.service_host(region, service);
        let port = self.settings.url_suffix.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
        Ok(OperatorProxyGrant {
            principal: caller.clone(),
            subject,
            email,
            region: region.to_string(),
            service: service.to_string(),
            authority: format!("{host}:{port}"),
            url: self.service_url(region, service),
            network,
            origin,
            port: req.port,
        })
    }

    /// The origin of a request on `caller`'s operator proxy into `network`, as the policies are
    /// now: the daemon asks on every request, so a revoked `compute.networks.use` closes the
    /// way into the network on the next one. The decision is the pure
    /// [`Origin::operator_proxy`]; a refusal names the permission and how to grant it.
    pub fn operator_proxy_origin(&self, caller: &Principal, network: &str) -> ApiResult<Origin> {
        self.read(|r| {
            let policy: Policy = get(r, PROJECT_POLICY_KEY)?.unwrap_or_default();
            let project_name = self.project_name();
            let scopes = [Scope { resource: &project_name, policy: &policy }];
            Origin::operator_proxy(caller, &self.project.project_id, network, &scopes).map_err(|d| {
                let member = caller.member();
                ApiError::permission_denied(format!(
                    "`{member}` does not hold `{NETWORK_USE}` on network `{network}` ({}), so an operator proxy may not enter it; an owner can grant it with `runnel projects add-iam-policy-binding {} --member={member} --role=roles/compute.networkUser`",
                    d.reason, self.project.project_id
                ))
            })
        })
    }

    /// Opens the listener for a grant, through the daemon.
    pub fn open_operator_proxy(&self, grant: OperatorProxyGrant) -> ApiResult<OpenedProxy> {
        let proxies = self.proxies.get().ok_or_else(|| {
            ApiError::failed_precondition(
                "this daemon runs only the control plane (`--role=control-plane`) and has no frontend to proxy to; run the proxy against a daemon with `--role=all`",
            )
        })?;
        proxies.open(grant)
    }
}

// ---- route --------------------------------------------------------------------------------------

/// How often the held-open response sends a newline: a write to a client that went away fails,
/// which ends the response and so closes the listener, within about this long.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /runnel/v1/projects/P/locations/R/services/S:proxy`: opens the listener and holds the
/// response open for its lifetime. The first line of the (newline-delimited JSON) body says
/// where it listens; blank lines follow as heartbeats. The listener closes when the response
/// ends: the client went away, or the daemon is stopping.
pub(crate) async fn proxy(
    axum::extract::State(cp): axum::extract::State<std::sync::Arc<ControlPlane>>,
    crate::auth::Caller(who): crate::auth::Caller,
    axum::extract::Path((p, l, s)): axum::extract::Path<(String, String, String)>,
    b: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (name, verb) = s.split_once(':').unwrap_or((s.as_str(), ""));
    if verb != "proxy" {
        return crate::routes::unknown_verb(verb).into_response();
    }
    let name = name.to_string();
    let opened = async {
        let req: ProxyRequest = crate::routes::body(&b)?;
        let grant =
            crate::routes::run(cp.clone(), move |cp| cp.grant_operator_proxy(&who, &p, &l, &name, &req)).await?;
        let hello = serde_json::json!({
            "service": format!("{}/{}", grant.region, grant.service),
            "url": grant.url,
            "network": grant.network,
            "principal": grant.principal.member(),
        });
        let opened = cp.open_operator_proxy(grant)?;
        Ok::<_, ApiError>((opened, hello))
    }
    .await;
    let (opened, mut hello) = match opened {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    hello["address"] = serde_json::Value::String(opened.address.to_string());
    let (mut tx, body) = http_body_util::channel::Channel::<axum::body::Bytes, std::convert::Infallible>::new(1);
    let mut stop = opened.stop.clone();
    tokio::spawn(async move {
        let _listener = opened.guard;
        let mut line = hello.to_string();
        line.push('\n');
        if tx.send_data(line.into()).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if tx.send_data(axum::body::Bytes::from_static(b"\n")).await.is_err() {
                break;
            }
        }
        tracing::info!(address = %opened.address, "operator proxy closed");
    });
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::new(body)).into_response()
}
