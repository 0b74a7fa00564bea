//! The daemon's side of operator proxies (`runnel run services proxy --network`) and of access
//! tokens for people.
//!
//! The control plane decides whether a principal may open a proxy into a network and makes the
//! VPC origin; this module only binds the loopback listener and hands it to the frontend, with a
//! token source that mints the principal's own ID token for the service (cached by the minter,
//! so a long-lived proxy gets a fresh one before the old expires).

use std::sync::Arc;

use runnel_api::{AccessTokenHolder, ApiError, ApiResult, OpenedProxy, OperatorProxies, OperatorProxyGrant};
use runnel_gateway::{Frontend, OperatorProxy};
use runnel_identity::{Account, Format, Minter};

/// People's access tokens are filed in the minter under this prefix and their member, so they
/// can never be taken for a service account's (whose unique ids are digits).
const USER_KEY_PREFIX: &str = "user:";

/// The minter's account for an access token's holder.
pub fn minter_account(holder: &AccessTokenHolder) -> Account {
    match holder {
        AccessTokenHolder::ServiceAccount { unique_id, email } => {
            Account { unique_id: unique_id.clone(), email: email.clone() }
        }
        AccessTokenHolder::User { email } => {
            Account { unique_id: format!("{USER_KEY_PREFIX}{email}"), email: email.clone() }
        }
    }
}

/// The holder of an access token the minter filed under `unique_id`.
pub fn holder_of(unique_id: &str, email: String) -> AccessTokenHolder {
    if unique_id.starts_with(USER_KEY_PREFIX) {
        AccessTokenHolder::User { email }
    } else {
        AccessTokenHolder::ServiceAccount { unique_id: unique_id.to_string(), email }
    }
}

/// Opens operator proxies' listeners on this node's frontend.
pub struct ProxyHost {
    /// Weak: the control plane owns this host, and a strong reference back would be a cycle.
    pub cp: std::sync::Weak<runnel_api::ControlPlane>,
    pub frontend: Arc<Frontend>,
    pub minter: Arc<Minter>,
    /// Turns true when the daemon stops.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl ProxyHost {
    fn bind(port: u16) -> ApiResult<tokio::net::TcpListener> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => ApiError::failed_precondition(format!(
                "port {port} on 127.0.0.1 is already in use on the daemon's machine; choose another with `--port`"
            )),
            _ => ApiError::failed_precondition(format!("the daemon cannot listen on 127.0.0.1:{port}: {e}")),
        })?;
        listener.set_nonblocking(true).map_err(ApiError::internal)?;
        tokio::net::TcpListener::from_std(listener).map_err(ApiError::internal)
    }
}

impl OperatorProxies for ProxyHost {
    fn open(&self, grant: OperatorProxyGrant) -> ApiResult<OpenedProxy> {
        let listener = Self::bind(grant.port)?;
        let address = listener.local_addr().map_err(ApiError::internal)?;
        let authority = hyper::header::HeaderValue::from_str(&grant.authority).map_err(ApiError::internal)?;
        let minter = self.minter.clone();
        let account = Account { unique_id: grant.subject.clone(), email: grant.email.clone() };
        let audience = grant.url.clone();
        let principal = grant.principal.member();
        let target = format!("{}/{}", grant.region, grant.service);
        tracing::info!(
            principal = principal.as_str(),
            target = target.as_str(),
            network = grant.network.as_str(),
            %address,
            "operator proxy opened"
        );
        let (cp, caller, network) = (self.cp.clone(), grant.principal.clone(), grant.network.clone());
        let proxy = OperatorProxy {
            origin: Arc::new(move || {
                let cp = cp.upgrade().ok_or_else(|| "runnel is stopping".to_string())?;
                cp.operator_proxy_origin(&caller, &network).map_err(|e| e.message)
            }),
            authority,
            principal,
            target,
            token: Arc::new(move || {
                minter
                    .id_token(&account, &audience, Format::Standard, runnel_identity::unix_now())
                    .map(|t| t.token.to_string())
                    .map_err(|e| e.to_string())
            }),
        };
        // Dropping the sender (the guard) or the daemon stopping closes the listener.
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let mut stop = self.stop.clone();
        let frontend = self.frontend.clone();
        tokio::spawn(frontend.serve_operator_proxy(listener, proxy, async move {
            tokio::select! {
                _ = closed => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }));
        Ok(OpenedProxy { address, guard: Box::new(close), stop: self.stop.clone() })
    }
}
