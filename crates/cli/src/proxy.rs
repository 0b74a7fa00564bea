//! `runnel run services proxy SERVICE --port=P [--network=NET]`.
//!
//! Without `--network`, like `gcloud run services proxy`: this process listens on
//! `127.0.0.1:P` and forwards every request, streaming and with any method, to the service
//! through the frontend, adding the active principal's ID token for the service's URL (fetched
//! like `print-identity-token`, kept until five minutes before it expires). The token travels in
//! `X-Serverless-Authorization`, which the frontend prefers to `Authorization`, so the client's
//! own `Authorization` reaches the app unchanged — as Google's cloud-run-proxy (which gcloud runs)
//! does since it switched to that header; whether every gcloud release bundles that version is
//! unconfirmed. These requests come from the internet, as gcloud's do, so an internal-only
//! service refuses them.
//!
//! With `--network`, the daemon opens the listener instead (its requests enter the network as an
//! operator proxy for the principal; see the API's `operator` module) and this process only
//! holds the API request that keeps it open: when this process ends, the listener closes.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Result, anyhow};
use base64::Engine;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::cli::ProxyArgs;
use crate::client::Client;
use crate::output::s;

const X_SERVERLESS_AUTHORIZATION: HeaderName = HeaderName::from_static("x-serverless-authorization");

/// A cached token is fetched again when fewer than this many seconds are left.
const RENEW_BEFORE: u64 = 300;

type Body = Either<Incoming, Full<Bytes>>;

pub async fn proxy(client: &Client, region: &str, args: ProxyArgs) -> Result<()> {
    let service = client.get(&format!("{}/services/{}", client.run_parent(region), args.service)).await?;
    let url = s(&service["uri"]);
    eprintln!("Proxying to Cloud Run service [{}] in project [{}] region [{region}]", args.service, client.project);
    match args.network {
        Some(network) => through_network(client, region, &args.service, args.port, &network).await,
        None => from_here(client, url, args.port).await,
    }
}

// ---- the plain proxy: this process forwards --------------------------------------------------

/// The active principal's ID token for one audience, renewed before it expires.
struct IdTokens<'c> {
    client: &'c Client,
    audience: String,
    cached: Mutex<Option<(String, u64)>>,
}

impl IdTokens<'_> {
    async fn get(&self) -> Result<String> {
        let now = unix_now();
        if let Some((token, exp)) = self.cached.lock().unwrap_or_else(PoisonError::into_inner).clone()
            && exp > now + RENEW_BEFORE
        {
            return Ok(token);
        }
        let v = self
            .client
            .post(
                &format!("/runnel/v1/projects/{}/idToken", self.client.project),
                &json!({ "audience": self.audience }),
            )
            .await?;
        let token = s(&v["token"]);
        let exp = expiry(&token).unwrap_or(now + RENEW_BEFORE + 60);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some((token.clone(), exp));
        Ok(token)
    }
}

/// `exp` of a JWT, read without checking the signature (only to know when to renew it).
fn expiry(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow!("port {port} on 127.0.0.1 is already in use (another proxy, or another program); choose another with `--port`")
        }
        _ => anyhow!("cannot listen on 127.0.0.1:{port}: {e}"),
    })
}

async fn from_here(client: &Client, url: String, port: u16) -> Result<()> {
    let authority = url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string();
    // The frontend is where the daemon says; without daemon.json, the URL's own host and port.
    let frontend = client.frontend().unwrap_or_else(|| authority.clone());
    let host = HeaderValue::from_str(&authority).map_err(|_| anyhow!("the service URL `{url}` is not a valid host"))?;
    let listener = bind(port).await?;
    let local = listener.local_addr()?;
    let tokens = IdTokens { client, audience: url.clone(), cached: Mutex::new(None) };
    // Fail now, not on the first request, if no token can be had.
    let current = Arc::new(Mutex::new(bearer(&tokens.get().await?)?));
    eprintln!("http://{local} proxies to {url}");
    let shared = Arc::new(Forwarder { frontend, host, token: current.clone() });
    let mut renew = tokio::time::interval(std::time::Duration::from_secs(60));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(shared.clone().serve(stream));
                    while connections.try_join_next().is_some() {}
                }
                // One failed accept (a client gone, too many open files) ends no proxy.
                Err(e) => tracing::warn!(error = %e, "cannot accept a connection; the proxy goes on"),
            },
            // The forwarding tasks read the current token; this loop keeps it fresh.
            _ = renew.tick() => match tokens.get().await.and_then(|t| bearer(&t)) {
                Ok(b) => *current.lock().unwrap_or_else(PoisonError::into_inner) = b,
                Err(e) => tracing::warn!(error = %e, "cannot renew the ID token; requests keep the old one until it expires"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The header a token travels in; a token that cannot be one is an error, never a request
/// silently sent without it.
fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the ID token runnel returned is not a valid header value; the daemon and this CLI may be of different versions"))
}

struct Forwarder {
    frontend: String,
    host: HeaderValue,
    /// `Bearer <ID token>`, renewed by the accept loop.
    token: Arc<Mutex<HeaderValue>>,
}

impl Forwarder {
    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            let token = this.token.lock().unwrap_or_else(PoisonError::into_inner).clone();
            async move { Ok::<_, std::convert::Infallible>(this.forward(req, token).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    }

    async fn forward(&self, mut req: Request<Incoming>, token: HeaderValue) -> Response<Body> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
        req.headers_mut().insert(HOST, self.host.clone());
        // `insert` replaces whatever the client sent in that header.
        req.headers_mut().insert(X_SERVERLESS_AUTHORIZATION, token);
        match self.send(req).await {
            Ok(response) => response.map(Either::Left),
            Err(e) => {
                let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
                    "runnel's proxy cannot reach the frontend at {}: {e}\n",
                    self.frontend
                )))));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r
            }
        }
    }

    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>> {
        let stream = tokio::net::TcpStream::connect(&self.frontend).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }
}

// ---- through a network: the daemon forwards -------------------------------------------------

async fn through_network(client: &Client, region: &str, service: &str, port: u16, network: &str) -> Result<()> {
    let path = format!("/runnel/v1/projects/{}/locations/{region}/services/{service}:proxy", client.project);
    let mut response = client.open_stream(&path, &json!({ "network": network, "port": port })).await?;
    let mut buffer = Vec::new();
    let hello: Value = loop {
        match response.chunk().await? {
            Some(chunk) => buffer.extend_from_slice(&chunk),
            None => return Err(anyhow!("the daemon closed the proxy before it said where it listens")),
        }
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            break serde_json::from_slice(&buffer[..end])?;
        }
    };
    eprintln!(
        "http://{} proxies to {} through network [{}] as an operator proxy for [{}]; every request is logged",
        s(&hello["address"]),
        s(&hello["url"]),
        s(&hello["network"]),
        s(&hello["principal"])
    );
    loop {
        tokio::select! {
            chunk = response.chunk() => match chunk {
                Ok(Some(_)) => {}
                Ok(None) => return Err(anyhow!("the daemon closed the proxy (it is stopping); start it again when the daemon is back")),
                Err(e) => return Err(anyhow!("the connection to the daemon broke, so the proxy is closed: {e}")),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
