//! An operator proxy's listener: `runnel run services proxy SERVICE --network=NET`.
//!
//! The daemon opens it on loopback for one principal and one service, after the control plane
//! checked that the principal may use the network. Every request on it goes to that service
//! only (whatever `Host` or target it names), carries the principal's own ID token in
//! `X-Serverless-Authorization`, and is handed to the frontend with the VPC origin the control
//! plane made for the principal — so ingress and the invoker check decide exactly as they do
//! for any request, and the request log has it like any other. Each request is also logged with
//! the principal, because it entered a VPC network on a person's authority.
//!
//! The client's own `Authorization` header travels unchanged, as with `gcloud run services
//! proxy`, so an app's own authentication keeps working through the proxy.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use runnel_policy::origin::Origin;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::body::ResponseBody;
use crate::frontend::Frontend;
use crate::headers::{Peer, X_RUNNEL_REQUEST_ID};

const X_SERVERLESS_AUTHORIZATION: HeaderName = HeaderName::from_static("x-serverless-authorization");

/// Mints the principal's ID token for the service (cached by the minter), or says why not.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The VPC origin of the next request, decided against current policy (the principal may have
/// lost the permission to use the network since the proxy opened), or why there is none.
pub type OriginSource = Arc<dyn Fn() -> Result<Origin, String> + Send + Sync>;

/// One operator proxy: where its requests go, with which origin and whose token.
pub struct OperatorProxy {
    /// The VPC origin the control plane makes for the principal, on every request.
    pub origin: OriginSource,
    /// The service's host and frontend port: the `Host` of every forwarded request.
    pub authority: HeaderValue,
    /// The principal's member (`user:…`), for the log line of every request.
    pub principal: String,
    /// `region/service`, for logs.
    pub target: String,
    pub token: TokenSource,
}

impl Frontend {
    /// Serves an operator proxy's listener until `closed` completes; connections still open
    /// then are ended with it.
    pub async fn serve_operator_proxy(
        self: Arc<Self>,
        listener: TcpListener,
        proxy: OperatorProxy,
        closed: impl Future<Output = ()>,
    ) {
        let proxy = Arc::new(proxy);
        let mut connections = JoinSet::new();
        let mut closed = pin!(closed);
        loop {
            tokio::select! {
                () = &mut closed => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        connections.spawn(self.clone().serve_operator_connection(stream, remote, proxy.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "operator proxy could not accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                },
            }
        }
        connections.abort_all();
    }

    async fn serve_operator_connection(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        proxy: Arc<OperatorProxy>,
    ) {
        let _ = stream.set_nodelay(true);
        let peer = Arc::new(Peer::new(remote.ip()));
        let service = service_fn(move |req| {
            let frontend = self.clone();
            let peer = peer.clone();
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(frontend.operator_request(req, &peer, &proxy).await) }
        });
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
    }

    async fn operator_request(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
        proxy: &OperatorProxy,
    ) -> Response<ResponseBody> {
        let origin = match (proxy.origin)() {
            Ok(origin) => origin,
            Err(why) => {
                tracing::warn!(principal = proxy.principal.as_str(), target = proxy.target.as_str(), error = %why, "operator proxy refused a request");
                let mut r = Response::new(ResponseBody::text(format!("runnel's operator proxy: {why}\n")));
                *r.status_mut() = StatusCode::FORBIDDEN;
                return r;
            }
        };
        let token = match (proxy.token)() {
            Ok(token) => token,
            Err(why) => {
                tracing::warn!(principal = proxy.principal.as_str(), target = proxy.target.as_str(), error = %why, "operator proxy could not mint the principal's ID token");
                let mut r = Response::new(ResponseBody::text(format!(
                    "runnel's operator proxy could not get an ID token for {}: {why}\n",
                    proxy.principal
                )));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            let mut r = Response::new(ResponseBody::text("the minted ID token is not a header value\n".into()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        };
        pin_to_service(&mut req, &proxy.authority);
        req.headers_mut().insert(X_SERVERLESS_AUTHORIZATION, bearer);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let response = self.handle(req, peer, &origin).await;
        tracing::info!(
            principal = proxy.principal.as_str(),
            target = proxy.target.as_str(),
            origin = %origin,
            method = %method,
            path = path.as_str(),
            status = response.status().as_u16(),
            request_id = response.headers().get(X_RUNNEL_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
            "operator proxy request"
        );
        response
    }
}

/// Points a request at the proxy's service whatever it named: origin-form target, one `Host`.
fn pin_to_service(req: &mut Request<Incoming>, authority: &HeaderValue) {
    let path = req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    req.headers_mut().remove(HOST);
    req.headers_mut().insert(HOST, authority.clone());
    // Only the proxy's token decides who calls; a client-sent one must not compete with it.
    req.headers_mut().remove(X_SERVERLESS_AUTHORIZATION);
}
