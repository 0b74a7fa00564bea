//! Fakes for the frontend's tests: a router, a backend that counts its leases, a request log
//! that keeps its records, and instances that are HTTP servers behind a `port.sock` channel
//! speaking the same one-byte handshake as the real sandbox.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use runnel_gateway::{
    Backend, Frontend, FrontendConfig, Held, Lease, LeaseFuture, RequestLog, RequestRecord, Route, Router, Unavailable,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, Error>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body fed chunk by chunk from a channel, ending when the sender is dropped.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Error;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

/// `count` chunks of `chunk` bytes, produced on demand so the whole body never exists at once.
pub struct RepeatBody {
    pub chunk: Bytes,
    pub remaining: usize,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Error;
    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        this.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.clone()))))
    }
}

pub fn repeat_body(chunk_size: usize, count: usize) -> TestBody {
    RepeatBody { chunk: Bytes::from(vec![b'x'; chunk_size]), remaining: count }.boxed()
}

/// What the instance saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: hyper::HeaderMap,
}

/// A fake instance: an HTTP/1.1 server behind `<dir>/port.sock`.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub accepted: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Instance {
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the instance saw no request")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An instance whose workload answers with `handler`.
pub fn instance(handler: Handler) -> Instance {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        record.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        handler(req)
    });
    raw_instance(move |mut stream| {
        let handler = handler.clone();
        async move {
            stream.write_all(&[1]).await.unwrap();
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
    .with_seen(seen)
}

impl Instance {
    fn with_seen(mut self, seen: Arc<Mutex<Vec<Seen>>>) -> Instance {
        self.seen = seen;
        self
    }
}

/// An instance whose channel does whatever `conn` does with each accepted connection.
pub fn raw_instance<F, Fut>(conn: F) -> Instance
where
    F: Fn(UnixStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("port.sock")).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(conn(stream));
        }
    });
    Instance { dir, accepted, seen: Arc::default(), task }
}

/// A handler answering `200 hello` to everything.
pub fn hello() -> Handler {
    Arc::new(|_| Box::pin(async { Response::new(full("hello")) }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Busy,
    NoInstance,
    /// The revision stopped serving: every acquire says so, after running `on_acquire`.
    Retired,
}

/// A backend with one instance that counts the leases it has out.
pub struct FakeBackend {
    pub mode: Mutex<Mode>,
    pub instance: String,
    pub channel_dir: PathBuf,
    pub outstanding: Arc<AtomicUsize>,
    pub acquired: AtomicUsize,
    /// Run once, by the next acquire, before it answers: lets a test change the route table
    /// between a request's routing and its acquire.
    pub on_acquire: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl FakeBackend {
    pub fn new(instance: &str, channel_dir: PathBuf) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            mode: Mutex::new(Mode::Serve),
            instance: instance.into(),
            channel_dir,
            outstanding: Arc::default(),
            acquired: AtomicUsize::new(0),
            on_acquire: Mutex::new(None),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Waits (briefly) until every lease has been returned.
    pub async fn wait_idle(&self) {
        for _ in 0..200 {
            if self.outstanding() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} leases still out", self.outstanding());
    }
}

struct LeaseGuard {
    outstanding: Arc<AtomicUsize>,
    instance: String,
    channel_dir: Arc<Path>,
}

impl Held for LeaseGuard {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn channel_dir(&self) -> &Arc<Path> {
        &self.channel_dir
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for FakeBackend {
    fn acquire(&self) -> LeaseFuture<'_> {
        Box::pin(async move {
            self.acquired.fetch_add(1, Ordering::SeqCst);
            let hook = self.on_acquire.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Busy => Err(Unavailable::Busy),
                Mode::NoInstance => Err(Unavailable::NoInstance),
                Mode::Retired => Err(Unavailable::Retired),
                Mode::Serve => {
                    self.outstanding.fetch_add(1, Ordering::SeqCst);
                    Ok(Lease(Box::new(LeaseGuard {
                        outstanding: self.outstanding.clone(),
                        instance: self.instance.clone(),
                        channel_dir: self.channel_dir.as_path().into(),
                    })))
                }
            }
        })
    }
}

/// Host → route; a test may change it while the frontend runs, as the daemon does on a deploy.
pub struct FakeRouter(pub Mutex<HashMap<String, Arc<Route>>>);

impl FakeRouter {
    pub fn set(&self, host: &str, route: Arc<Route>) {
        self.0.lock().unwrap().insert(host.to_string(), route);
    }
}

impl Router for FakeRouter {
    fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.0.lock().unwrap().get(host).cloned()
    }
}

#[derive(Default)]
pub struct RecordingLog(pub Mutex<Vec<RequestRecord<'static>>>, pub Mutex<Vec<runnel_gateway::Refusal>>);

impl RequestLog for RecordingLog {
    fn record(&self, record: RequestRecord<'_>) {
        self.0.lock().unwrap().push(record.into_owned());
    }

    fn refused(&self, refusal: runnel_gateway::Refusal) {
        self.1.lock().unwrap().push(refusal);
    }
}

impl RecordingLog {
    pub fn records(&self) -> Vec<RequestRecord<'static>> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (briefly) for the `n`th record, which is written when a response body ends.
    pub async fn wait_for(&self, n: usize) -> Vec<RequestRecord<'static>> {
        for _ in 0..200 {
            let records = self.records();
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} request records, have {:?}", self.records());
    }
}

pub fn route(service: &str, backend: Arc<FakeBackend>, timeout: Duration) -> Arc<Route> {
    revision_route(service, &format!("{service}-00001-abc"), backend, timeout)
}

/// A route to `revision` of `service`.
pub fn revision_route(service: &str, revision: &str, backend: Arc<FakeBackend>, timeout: Duration) -> Arc<Route> {
    Arc::new(Route {
        project: "test-project".into(),
        project_number: "123456789012".into(),
        region: "europe-west1".into(),
        service: service.into(),
        revision: revision.into(),
        timeout,
        backend,
        ingress: runnel_model::service::Ingress::All,
        default_uri_disabled: false,
        invoker: Arc::new(AllowAll),
    })
}

/// A frontend serving on a loopback port.
pub struct Harness {
    pub addr: SocketAddr,
    pub log: Arc<RecordingLog>,
    pub router: Arc<FakeRouter>,
    shutdown: Option<oneshot::Sender<()>>,
    pub serve: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start(routes: Vec<(&str, Arc<Route>)>, config: FrontendConfig) -> Harness {
        let router = Arc::new(FakeRouter(Mutex::new(routes.into_iter().map(|(h, r)| (h.to_string(), r)).collect())));
        let log = Arc::new(RecordingLog::default());
        let frontend = Arc::new(Frontend::new(router.clone(), log.clone(), config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve = tokio::spawn(frontend.serve(listener, async {
            let _ = rx.await;
        }));
        Harness { addr, log, router, shutdown: Some(tx), serve: Some(serve) }
    }

    /// Asks the frontend to shut down and returns the `serve` task to await.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.serve.take().unwrap()
    }

    /// A new client connection to the frontend.
    pub async fn connect(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
    }

    /// Sends one request on a new connection and reads the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> (hyper::http::response::Parts, Bytes) {
        let mut sender = self.connect().await;
        let response = sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    /// `GET path` with the given `Host`.
    pub async fn get(&self, host: &str, path: &str) -> (hyper::http::response::Parts, Bytes) {
        self.send(Request::get(path).header("host", host).body(empty()).unwrap()).await
    }

    /// Writes `request` as raw bytes and reads until the server closes the connection.
    pub async fn raw(&self, request: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(serve) = &self.serve {
            serve.abort();
        }
    }
}

/// The configuration tests use: short enough bounds that failures show quickly.
pub fn test_config() -> FrontendConfig {
    FrontendConfig {
        header_read_timeout: Duration::from_secs(5),
        client_stall_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        pool_idle_timeout: Duration::from_secs(30),
        pool_max_idle_per_instance: 16,
        shutdown_grace: Duration::from_secs(2),
    }
}

/// One service `svc.example.com` backed by one instance answering with `handler`.
pub struct Setup {
    pub harness: Harness,
    pub backend: Arc<FakeBackend>,
    pub instance: Instance,
}

pub const HOST: &str = "svc.example.com";

pub async fn setup(handler: Handler, timeout: Duration) -> Setup {
    setup_with(instance(handler), timeout, test_config()).await
}

pub async fn setup_with(instance: Instance, timeout: Duration, config: FrontendConfig) -> Setup {
    let backend = FakeBackend::new("svc-00001-abc-x1", instance.dir());
    let harness = Harness::start(vec![(HOST, route("svc", backend.clone(), timeout))], config).await;
    Setup { harness, backend, instance }
}

/// An invoker check that admits everyone (these tests are about forwarding).
pub struct AllowAll;

impl runnel_gateway::Invoker for AllowAll {
    fn check(&self, _route: &Route, _headers: &hyper::HeaderMap) -> runnel_gateway::InvokerCheck {
        runnel_gateway::InvokerCheck::Allow { reason: runnel_policy::Reason::InvokerCheckDisabled, rewrite: None }
    }
}
