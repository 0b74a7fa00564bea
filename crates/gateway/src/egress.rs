//! The egress proxy of one instance: the only way out of its sandbox.
//!
//! Inside the sandbox, `127.0.0.1:3128` (announced as `HTTP_PROXY`/`HTTPS_PROXY`) is bridged to
//! this instance's own `egress.sock`, so everything that arrives here comes from that instance
//! and nobody else. For each request the daemon's [`EgressPlanner`] decides, from the calling
//! revision's VPC settings and the destination, where it goes: to another service, handed to the
//! frontend in-process with the origin the route decided (the only way a VPC origin is ever
//! made); to an internal endpoint's real address; or nowhere, with a reason.
//!
//! It speaks the forward-proxy forms only: absolute-form requests (`GET http://host/path`) and
//! `CONNECT host:port`. A tunnel to a service is served by the frontend too, pinned to that host:
//! a request inside it for another host gets 421. `Proxy-Authorization` never travels further.
//! The one thing it answers itself is a `GET` for a document the daemon publishes (its ID token
//! keys, at the issuer's address): instances fetch them as they would Google's, while the
//! listener behind that address stays out of reach.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use runnel_policy::origin::Origin;
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::body::ResponseBody;
use crate::contract::{EgressPlanner, Plan, Published};
use crate::frontend::Frontend;
use crate::headers::{Peer, X_RUNNEL_REQUEST_ID};
use crate::record::RequestId;

fn text(status: StatusCode, id: &HeaderValue, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::text(body));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(X_RUNNEL_REQUEST_ID, id.clone());
    r
}

fn published_response(published: Published, id: &HeaderValue) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::text(published.json));
    let headers = r.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", published.max_age_seconds)) {
        headers.insert(hyper::header::CACHE_CONTROL, v);
    }
    headers.insert(X_RUNNEL_REQUEST_ID, id.clone());
    r
}

/// Splits `host[:port]` of a request target, with the scheme's default port.
fn host_port(authority: &hyper::http::uri::Authority, default_port: u16) -> (String, u16) {
    let host =
        authority.host().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    (host, authority.port_u16().unwrap_or(default_port))
}

impl Frontend {
    /// Serves one instance's egress channel until the listener is dropped.
    pub async fn serve_egress(self: Arc<Self>, listener: UnixListener, planner: Arc<dyn EgressPlanner>) {
        while let Ok((stream, _)) = listener.accept().await {
            let frontend = self.clone();
            let planner = planner.clone();
            tokio::spawn(async move { frontend.serve_egress_connection(stream, planner).await });
        }
    }

    async fn serve_egress_connection(self: Arc<Self>, stream: UnixStream, planner: Arc<dyn EgressPlanner>) {
        let frontend = self.clone();
        let service = service_fn(move |req| {
            let frontend = frontend.clone();
            let planner = planner.clone();
            async move { Ok::<_, Infallible>(frontend.egress_request(req, planner).await) }
        });
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
    }

    async fn egress_request(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        planner: Arc<dyn EgressPlanner>,
    ) -> Response<ResponseBody> {
        let id = RequestId::random();
        let id_header = id.header_value();
        let connect = req.method() == Method::CONNECT;
        let Some(authority) = req.uri().authority().cloned() else {
            return text(
                StatusCode::BAD_REQUEST,
                &id_header,
                "this is runnel's egress proxy: send absolute-form requests (http://host/path) or CONNECT host:port\n"
                    .into(),
            );
        };
        let default_port = if connect { 443 } else { 80 };
        let (host, port) = host_port(&authority, default_port);
        // The proxy's own credentials stop here.
        req.headers_mut().remove(hyper::header::PROXY_AUTHORIZATION);
        req.headers_mut().remove("proxy-connection");
        // runnel's key publication, as verifiers fetch Google's: answered here, since the
        // listener that serves it is no destination.
        if req.method() == Method::GET
            && let Some(published) = planner.published(&host, port, req.uri().path())
        {
            return published_response(published, &id_header);
        }
        match planner.plan(&host, port) {
            Plan::Refuse { reason, message } => {
                planner.refused(id.as_str(), &host, port, reason);
                text(
                    StatusCode::FORBIDDEN,
                    &id_header,
                    format!("runnel egress proxy refused {host}:{port}: {reason}: {message}\n"),
                )
            }
            Plan::Service { origin, client_ip } if connect => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let frontend = self.clone();
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        frontend.serve_tunnel(upgraded, host, origin, client_ip).await;
                    }
                });
                Response::new(ResponseBody::empty())
            }
            Plan::Service { origin, client_ip } => {
                // The frontend routes by the target's authority, exactly as for any request.
                let peer = Peer::new(client_ip);
                self.handle(req, &peer, &origin).await
            }
            Plan::Connect { addr } if connect => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                match TcpStream::connect(addr).await {
                    Ok(mut target) => {
                        tokio::spawn(async move {
                            if let Ok(upgraded) = on_upgrade.await {
                                let mut client = TokioIo::new(upgraded);
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
                            }
                        });
                        Response::new(ResponseBody::empty())
                    }
                    Err(e) => text(StatusCode::BAD_GATEWAY, &id_header, format!("cannot reach {host}:{port}: {e}\n")),
                }
            }
            Plan::Connect { addr } => match forward(req, addr).await {
                Ok(response) => response.map(ResponseBody::passthrough),
                Err(e) => text(StatusCode::BAD_GATEWAY, &id_header, format!("cannot reach {host}:{port}: {e}\n")),
            },
        }
    }

    /// A CONNECT tunnel to a service: HTTP inside, served by the frontend with the origin the
    /// route decided, and only for the host the tunnel was opened to.
    async fn serve_tunnel<I>(self: Arc<Self>, io: I, pinned: String, origin: Origin, client_ip: IpAddr)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let frontend = self.clone();
        let origin = Arc::new(origin);
        let peer = Arc::new(Peer::new(client_ip));
        let service = service_fn(move |req: Request<Incoming>| {
            let frontend = frontend.clone();
            let origin = origin.clone();
            let peer = peer.clone();
            let pinned = pinned.clone();
            async move {
                let asked =
                    req.headers().get(HOST).and_then(|h| h.to_str().ok()).map(|h| {
                        h.rsplit_once(':').map_or(h, |(name, _)| name).trim_end_matches('.').to_ascii_lowercase()
                    });
                if asked.as_deref() != Some(pinned.as_str()) {
                    let id = RequestId::random();
                    return Ok::<_, Infallible>(text(
                        StatusCode::MISDIRECTED_REQUEST,
                        &id.header_value(),
                        format!("this tunnel was opened to {pinned}; open another for a different host\n"),
                    ));
                }
                Ok(frontend.handle(req, &peer, &origin).await)
            }
        });
        let _ = http1::Builder::new().serve_connection(io, service).await;
    }
}

/// Sends one absolute-form request to an internal endpoint's real address.
async fn forward(mut req: Request<Incoming>, addr: std::net::SocketAddr) -> Result<Response<Incoming>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    *req.uri_mut() = path.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}
