//! The frontend listener: accept, route by host, take an instance slot, forward, account.
//!
//! Order of work for a request, cheapest refusal first: CONNECT and hosts that cannot be
//! routed are answered without touching any service (and without a request-log record, as
//! Cloud Run does not log requests for no service); a routed request gets a deadline from the
//! revision's timeout, a slot from the backend, and one HTTP/1.1 connection to that slot's
//! instance, idle from an earlier request or new (`upstream.rs`). The deadline bounds everything that waits on the upstream: the slot, the
//! response head, and the response body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, REFERRER_POLICY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::body::{RequestBody, ResponseBody};
use crate::contract::{Lease, RequestLog, Router, Unavailable};
use crate::deadline::{Elapsed, Slot, Watch, WatchTimer, Watcher, until};
use crate::headers::{self, Peer, X_RUNNEL_REQUEST_ID};
use crate::host::{self, MAX_HOST};
use runnel_policy::ingress;
use runnel_policy::origin::Origin;

use crate::contract::{InvokerCheck, Refusal};
use crate::h1;
use crate::io::ClientIo;
use crate::pages::{self, Page};
use crate::record::{Exchange, RequestId};
use crate::upstream::{InstanceStream, Instances, PoolConfig, SendError};

/// Tuning of the frontend; the defaults suit a single machine.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// How long a client may take to send a request head; also how long an idle keep-alive
    /// connection is kept open (hyper starts this clock when it waits for the next head).
    pub header_read_timeout: Duration,
    /// How long a client may leave a response unread before its connection is closed, which
    /// frees the instance slot the response held.
    pub client_stall_timeout: Duration,
    /// How long opening a connection to an instance (socket plus handshake byte) may take.
    pub connect_timeout: Duration,
    /// How long an idle connection to an instance stays in the pool.
    pub pool_idle_timeout: Duration,
    /// The most idle connections kept per instance.
    pub pool_max_idle_per_instance: usize,
    /// How long [`Frontend::serve`] lets in-flight requests finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

impl Default for FrontendConfig {
    fn default() -> FrontendConfig {
        FrontendConfig {
            header_read_timeout: Duration::from_secs(30),
            client_stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_instance: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// runnel's frontend: one per daemon, shared by all its connections.
pub struct Frontend {
    router: Arc<dyn Router>,
    log: Arc<dyn RequestLog>,
    config: FrontendConfig,
    instances: Arc<Instances>,
    http: http1::Builder,
}

/// Longest request timeout honoured, so that deadline arithmetic cannot overflow.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);
/// How many times one request follows its service's traffic to a newer revision (see
/// `Frontend::acquire_rerouted`); deploys do not come faster than a request waits.
const MAX_REROUTES: usize = 3;

impl Frontend {
    pub fn new(router: Arc<dyn Router>, log: Arc<dyn RequestLog>, config: FrontendConfig) -> Frontend {
        let instances = Arc::new(Instances::new(PoolConfig {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle_per_instance,
        }));
        let mut http = http1::Builder::new();
        // Each connection gets its own timer (`deadline.rs`); this one serves nothing.
        http.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout).keep_alive(true);
        Frontend { router, log, config, instances, http }
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// lets in-flight requests finish for up to [`FrontendConfig::shutdown_grace`] (idle
    /// keep-alive connections close at once) and drops what is left.
    ///
    /// WebSocket tunnels run detached from their connection and end at their request deadline.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let stop = Arc::new(Stop::default());
        let mut connections = JoinSet::new();
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        connections.spawn(self.clone().serve_connection(stream, remote, stop.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors or an aborted handshake: back off instead of
                        // spinning on an error that will repeat.
                        tracing::warn!(error = %e, "frontend could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(listener);
        stop.stop();
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = connections.len(),
                "frontend shutdown grace ran out; closing connections with requests still in flight"
            );
            connections.shutdown().await;
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, remote: SocketAddr, stop: Arc<Stop>) {
        // Responses are written whole by hyper; Nagle would only delay their last segment.
        let _ = stream.set_nodelay(true);
        let watch = Watch::new();
        let mut watcher = Watcher::new(watch.clone());
        let io = ClientIo::new(stream, self.config.client_stall_timeout);
        let mut http = self.http.clone();
        http.timer(WatchTimer(watch.clone()));
        // One reference per request for the frontend and the peer together: each clone of an
        // `Arc` is an atomic operation, and so is each drop.
        let client = Arc::new((self.clone(), Peer::watched(remote.ip(), watch)));
        let service = service_fn(move |req| {
            let client = client.clone();
            async move {
                let (frontend, peer) = &*client;
                Ok::<_, Infallible>(frontend.handle(req, peer, &Origin::internet()).await)
            }
        });
        let mut connection = pin!(http.serve_connection(io, service).with_upgrades());
        let _registered = stop.register().await;
        // The watcher is polled after the connection, so that it sees the deadlines the
        // connection's waits wrote on this poll.
        let result = tokio::select! {
            biased;
            result = connection.as_mut() => result,
            () = std::future::poll_fn(|_| stop.poll_stopped()) => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    result = connection.as_mut() => result,
                    never = std::future::poll_fn(|cx| watcher.poll_watch(cx)) => match never {},
                }
            }
            never = std::future::poll_fn(|cx| watcher.poll_watch(cx)) => match never {},
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, %remote, "frontend connection ended with an error");
        }
    }

    /// Handles one request for a service. `origin` is where it came from: the internet for the
    /// frontend's listener, or what the egress path decided for a call from an instance.
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
        origin: &Origin,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let id = RequestId::random();
        let id_header = id.header_value();

        if req.method() == Method::CONNECT {
            return page_response(pages::CONNECT_REFUSED, &id_header, None);
        }
        let authority = match host::requested_authority(req.uri(), req.headers()) {
            Ok(authority) => authority,
            Err(why) => {
                tracing::debug!(reason = ?why, request_id = id.as_str(), "request without a routable host");
                return page_response(pages::BAD_HOST, &id_header, None);
            }
        };
        let mut buf = [0u8; MAX_HOST];
        let host = match host::normalise_host(authority, &mut buf) {
            Ok(host) => host,
            Err(why) => {
                tracing::debug!(reason = ?why, request_id = id.as_str(), "request without a routable host");
                return page_response(pages::BAD_HOST, &id_header, None);
            }
        };
        let Some(route) = self.router.route(host) else {
            return page_response(pages::NOT_FOUND, &id_header, None);
        };
        // Ingress decides before any instance is involved; a refusal is a bare 404, as on Cloud
        // Run, and is not in the service's request log.
        // `all` admits everyone: the full check, which writes its trace, runs only for the rest.
        let ingress = (!ingress::admits_everyone(route.ingress, route.default_uri_disabled))
            .then(|| ingress::check(route.ingress, route.default_uri_disabled, &route.project, origin));
        if let Some(ingress) = ingress.filter(|decision| !decision.allowed) {
            tracing::info!(
                request_id = id.as_str(),
                service = route.service.as_str(),
                region = route.region.as_str(),
                origin = %origin,
                caller = ?origin.caller(),
                reason = %ingress.reason,
                trace = ?ingress.trace,
                "request refused"
            );
            self.log.refused(Refusal {
                timestamp: crate::record::timestamp(),
                request_id: id.as_str().to_string(),
                stage: "ingress",
                reason: ingress.reason.to_string(),
                target: format!("{}/{}", route.region, route.service),
                origin: origin.to_string(),
                caller: origin.caller().map(ToString::to_string),
                trace: ingress.trace,
            });
            return page_response(pages::NOT_FOUND, &id_header, None);
        }

        // The invoker check: the ID token and `run.routes.invoke`, against current policy. These
        // refusals are in the service's request log, as on Cloud Run.
        let invoker = route.invoker.check(&route, req.headers());
        let deadline = tokio::time::Instant::from_std(started + route.timeout.min(FAR_FUTURE));
        let mut exchange = Exchange::new(self.log.clone(), route.clone(), started, id, &req, authority, peer);
        match invoker {
            InvokerCheck::Allow { rewrite, .. } => {
                if let Some((name, value)) = rewrite {
                    req.headers_mut().insert(name, value);
                }
            }
            InvokerCheck::Deny { status, decision } => {
                let path = req.uri().path().to_string();
                tracing::info!(
                    request_id = exchange.id.as_str(),
                    service = route.service.as_str(),
                    reason = %decision.reason,
                    trace = ?decision.trace,
                    "request refused"
                );
                self.log.refused(Refusal {
                    timestamp: crate::record::timestamp(),
                    request_id: exchange.id.as_str().to_string(),
                    stage: "invoker",
                    reason: decision.reason.to_string(),
                    target: format!("{}/{}", route.region, route.service),
                    origin: origin.to_string(),
                    caller: origin.caller().map(ToString::to_string),
                    trace: decision.trace,
                });
                let (code, body) = if status == 401 {
                    (StatusCode::UNAUTHORIZED, pages::unauthorized(&path))
                } else {
                    (StatusCode::FORBIDDEN, pages::forbidden(&path))
                };
                exchange.status = code.as_u16();
                let mut response = Response::new(ResponseBody::text_recorded(body, exchange));
                *response.status_mut() = code;
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=UTF-8"));
                response.headers_mut().insert(X_RUNNEL_REQUEST_ID, id_header.clone());
                return response;
            }
        }

        let acquired = match until(deadline, peer.watch(), Slot::Request, route.backend.acquire()).await {
            Ok(Err(Unavailable::Retired)) => self.acquire_rerouted(host, &mut exchange, deadline, peer).await,
            acquired => acquired,
        };
        let lease = match acquired {
            Ok(Ok(lease)) => lease,
            Ok(Err(Unavailable::Busy)) => return page_response(pages::RATE_EXCEEDED, &id_header, Some(exchange)),
            Ok(Err(Unavailable::NoInstance)) => return page_response(pages::NO_INSTANCE, &id_header, Some(exchange)),
            Ok(Err(Unavailable::Retired)) => {
                tracing::info!(
                    request_id = exchange.id.as_str(),
                    service = exchange.route().service,
                    revision = exchange.route().revision.as_str(),
                    "the revision stopped serving while the request waited, and nothing newer serves the service"
                );
                return page_response(pages::REVISION_STOPPED, &id_header, Some(exchange));
            }
            Err(_) => return self.timed_out(exchange, &id_header, "waiting for an instance slot"),
        };
        let instance = self.instances.instance(&lease, started);
        exchange.lease = Some(lease);

        let websocket = headers::wants_websocket(req.method(), req.version(), req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let (body, read) = RequestBody::new(body);
        exchange.request_body = read;
        let forwarding =
            headers::prepare_request(&mut parts.headers, exchange.authority(), peer, &id_header, websocket);
        // Only the path and query travel from the client's target (origin form), and the
        // instance connection is HTTP/1.1 whatever the client spoke, so it can be reused.
        let request = h1::Request::new(&parts, forwarding.fields(), body);

        // Boxed: the exchange's state (the connection, its buffers, the request; about a
        // kilobyte) would otherwise be part of this future, which hyper and the deadline move as
        // it is built; on the heap it is written once (−400 instructions per request).
        let sent = Box::pin(self.instances.send(&instance, request));
        let (parts, body, home) = match until(deadline, peer.watch(), Slot::Request, sent).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => return self.upstream_failed(exchange, &id_header, &e),
            Err(_) => return self.timed_out(exchange, &id_header, "waiting for the response head"),
        };

        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return match (client_upgrade, body.into_upgrade()) {
                (Some(client_upgrade), Some(instance)) => {
                    tunnel(exchange, id_header, client_upgrade, parts, instance, deadline)
                }
                _ => {
                    tracing::warn!(
                        request_id = id.as_str(),
                        instance = exchange.instance(),
                        "instance switched protocols on a request that did not ask for an upgrade"
                    );
                    page_response(pages::CLOSED_EARLY, &id_header, Some(exchange))
                }
            };
        }
        let mut parts = parts;
        headers::prepare_response(&mut parts.headers, id_header, false);
        exchange.status = parts.status.as_u16();
        exchange.response_head = response_head_size(&parts.status, &parts.headers);
        Response::from_parts(parts, ResponseBody::upstream(body, deadline, exchange, home))
    }

    /// A slot for a request whose revision stopped serving between its routing and its
    /// acquire: a deploy moved the service's traffic on. The request was admitted under the
    /// settings in force when it arrived, so it goes where the service's traffic goes now, as it
    /// would have had it come a moment earlier and been served by the old revision. Bounded:
    /// each step needs the route table to have moved on again.
    async fn acquire_rerouted(
        &self,
        host: &str,
        exchange: &mut Exchange,
        deadline: tokio::time::Instant,
        peer: &Peer,
    ) -> Result<Result<Lease, Unavailable>, Elapsed> {
        let mut retired = exchange.route().backend.clone();
        for _ in 0..MAX_REROUTES {
            let Some(next) = self.router.route(host).filter(|next| !Arc::ptr_eq(&next.backend, &retired)) else {
                break;
            };
            tracing::debug!(
                request_id = exchange.id.as_str(),
                from = exchange.route().revision.as_str(),
                to = next.revision.as_str(),
                "the revision stopped serving while the request waited; routed again"
            );
            let backend = next.backend.clone();
            exchange.reroute(next);
            match until(deadline, peer.watch(), Slot::Request, backend.acquire()).await {
                Ok(Err(Unavailable::Retired)) => retired = backend,
                acquired => return acquired,
            }
        }
        Ok(Err(Unavailable::Retired))
    }

    fn timed_out(&self, exchange: Exchange, id: &HeaderValue, waiting_for: &str) -> Response<ResponseBody> {
        tracing::info!(
            request_id = exchange.id.as_str(),
            service = exchange.route().service,
            instance = exchange.instance(),
            timeout = ?exchange.route().timeout,
            "request timeout reached {waiting_for}"
        );
        page_response(pages::TIMEOUT, id, Some(exchange))
    }

    /// Attributes an upstream failure: nothing listening is 503 (try again), a client that
    /// broke its own body is 400, anything else after the connection was made is the
    /// instance's fault, 502.
    fn upstream_failed(&self, exchange: Exchange, id: &HeaderValue, e: &SendError) -> Response<ResponseBody> {
        let page = match e {
            SendError::Connect(_) => pages::NOT_LISTENING,
            SendError::Exchange(h1::Error::ClientBody(_)) => pages::BODY_UNREADABLE,
            SendError::Exchange(_) => pages::CLOSED_EARLY,
        };
        tracing::warn!(
            request_id = exchange.id.as_str(),
            service = exchange.route().service,
            instance = exchange.instance(),
            status = page.status.as_u16(),
            error = %ErrorChain(e),
            "request could not be forwarded to the instance"
        );
        page_response(page, id, Some(exchange))
    }
}

/// Tells the listener's connections that the frontend is shutting down.
///
/// A connection's task checks the flag each time it is polled (a plain load) and is woken once
/// when it turns. A `watch` channel did the same, but its future takes a lock to re-register
/// the task's waker every time the task is polled: twice per request.
#[derive(Default)]
struct Stop {
    stopping: AtomicBool,
    /// The connections to wake, by a number each gets when it registers.
    wakers: Mutex<HashMap<u64, Waker>>,
    next: AtomicU64,
}

/// A connection's place in [`Stop::wakers`], given up when the connection ends.
struct Registered<'a> {
    stop: &'a Stop,
    id: u64,
}

impl Stop {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        wakers.into_values().for_each(Waker::wake);
    }

    /// Registers the calling task to be woken by [`Stop::stop`].
    async fn register(&self) -> Registered<'_> {
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner).insert(id, waker);
        Registered { stop: self, id }
    }

    /// Ready once the frontend is stopping. The flag is read after the task registered, and
    /// [`Stop::stop`] sets it before it takes the wakers, so a stop is never missed.
    fn poll_stopped(&self) -> Poll<()> {
        if self.stopping.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.stop.wakers.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// Displays an error with its causes, which hyper's errors need to say anything useful.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn response_head_size(status: &StatusCode, headers: &hyper::HeaderMap) -> u64 {
    // `HTTP/1.1 200 OK`
    let reason = status.canonical_reason().map_or(0, str::len);
    headers::head_size(13 + reason, headers)
}

/// A response the frontend writes itself.
fn page_response(page: Page, id: &HeaderValue, exchange: Option<Exchange>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::page(page.body, None));
    *response.status_mut() = page.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_RUNNEL_REQUEST_ID, id.clone());
    if page.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        // A CONNECT client may already be sending tunnel bytes; they must not be read as
        // the next request.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(mut exchange) = exchange {
        exchange.status = page.status.as_u16();
        exchange.response_head = response_head_size(&page.status, response.headers());
        *response.body_mut() = ResponseBody::page(page.body, Some(exchange));
    }
    response
}

/// Completes a WebSocket upgrade: the client gets the instance's 101, and once the client's
/// side has switched, bytes are copied both ways (first those the instance sent right after its
/// 101) until either side closes or the request deadline passes. The slot is held by the tunnel
/// task until then.
fn tunnel(
    mut exchange: Exchange,
    id: HeaderValue,
    client: hyper::upgrade::OnUpgrade,
    mut parts: hyper::http::response::Parts,
    (mut instance, early): (InstanceStream, bytes::Bytes),
    deadline: tokio::time::Instant,
) -> Response<ResponseBody> {
    headers::prepare_response(&mut parts.headers, id, true);
    exchange.status = parts.status.as_u16();
    exchange.response_head = response_head_size(&parts.status, &parts.headers);
    tokio::spawn(async move {
        let mut copied = (0, 0);
        let outcome = timeout_at(deadline, async {
            let mut client = TokioIo::new(client.await?);
            client.write_all(&early).await?;
            copied = tokio::io::copy_bidirectional(&mut client, &mut instance).await?;
            copied.1 += early.len() as u64;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(request_id = exchange.id.as_str(), error = %e, "websocket tunnel failed"),
            Err(_) => tracing::debug!(request_id = exchange.id.as_str(), "request timeout ended a websocket tunnel"),
        }
        exchange.finish(copied.0, copied.1);
    });
    Response::from_parts(parts, ResponseBody::empty())
}
