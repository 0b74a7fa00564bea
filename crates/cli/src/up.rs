//! `runnel up`: the daemon in the foreground.
//!
//! It owns `$RUNNEL_HOME` (mode 0700): the store, the owner's credential (0600) and
//! `daemon.json`, which tells clients where it listens. It is the store's only writer; redb's
//! file lock refuses a second daemon on the same home.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use runnel_api::{Bootstrap, Settings};
use runnel_gateway::{Frontend, FrontendConfig};
use runnel_runtime::logs::LogStore;
use runnel_runtime::pool::Host;
use runnel_runtime::sandbox::Isolation;
use runnel_store::RedbStore;

use crate::cli::{IsolationFlag, Role, Up};
use crate::home::{self, DaemonInfo};
use crate::node::{InvokerGate, Logs, MetadataChannel, Node, NodeChannels, Routes};

/// Binds a listener, or says which port is taken and which flag moves it.
async fn bind(addr: &str, flag: &str) -> Result<tokio::net::TcpListener> {
    let parsed: SocketAddr =
        addr.parse().map_err(|_| anyhow!("`{addr}` is not an address such as 127.0.0.1:7780 (flag `{flag}`)"))?;
    tokio::net::TcpListener::bind(parsed).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!(
            "port {} on {} is already in use (another runnel, or another program); stop it or choose another port with `{flag}=HOST:PORT`",
            parsed.port(),
            parsed.ip()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("not allowed to listen on {parsed}; ports below 1024 need privileges, choose another with `{flag}`")
        }
        _ => anyhow!("cannot listen on {parsed} (`{flag}`): {e}"),
    })
}

fn frontend_port(addr: &str) -> Result<u16> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow!("`{addr}` is not an address such as 127.0.0.1:7781 (flag `--frontend-address`)"))?;
    Ok(parsed.port())
}

/// Paths of the daemon user that no instance may see, besides `$RUNNEL_HOME`: where Google,
/// cloud and SSH credentials usually live.
fn hidden_paths(home_dir: &Path) -> Vec<PathBuf> {
    let mut hide = vec![home_dir.to_path_buf()];
    if let Some(user_home) = std::env::var_os("HOME").map(PathBuf::from) {
        for p in
            [".config/gcloud", ".ssh", ".aws", ".azure", ".docker", ".kube", ".netrc", ".git-credentials", ".gnupg"]
        {
            hide.push(user_home.join(p));
        }
    }
    if let Some(adc) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from) {
        hide.push(adc);
    }
    hide
}

/// The frontend listens on loopback unless told otherwise: without TLS, another address
/// exposes every service (and later its tokens) on the network.
fn check_frontend_address(addr: &str, allow_insecure: bool) -> Result<()> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow!("`{addr}` is not an address such as 127.0.0.1:7781 (flag `--frontend-address`)"))?;
    if !parsed.ip().is_loopback() && !allow_insecure {
        return Err(anyhow!(
            "the frontend would listen on {parsed}, which is not loopback, without TLS; runnel does not serve TLS yet, so pass `--allow-insecure-frontend` if you accept plain HTTP on that network, or use a loopback address"
        ));
    }
    Ok(())
}

pub async fn up(home_dir: &Path, args: Up) -> Result<()> {
    let shutdown = Shutdown::register()?;
    let own = std::env::current_exe().context("cannot find the runnel binary to run sandboxes with")?;
    let exe = if args.role == Role::All && args.isolation == IsolationFlag::Sandbox {
        crate::exe::for_sandboxes(&own)?
    } else {
        own.clone()
    };
    if exe != own {
        println!("{} is not readable by instances' users; sandboxes run a copy at {}", own.display(), exe.display());
    }
    serve(home_dir, args, exe, shutdown.wait(), true).await
}

/// The daemon until `stop` resolves, running sandboxes with `exe` (a runnel executable that
/// instances' uids may read). `runnel demo` runs it in-process with its own executable, stop
/// and words to the user (`announce: false`).
pub async fn serve(
    home_dir: &Path,
    args: Up,
    exe: PathBuf,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    announce: bool,
) -> Result<()> {
    home::prepare(home_dir)?;
    let node = args.role == Role::All;
    if node {
        check_frontend_address(&args.frontend_address, args.allow_insecure_frontend)?;
        if args.isolation == IsolationFlag::Sandbox {
            runnel_runtime::sandbox::probe(&exe).map_err(|e| {
                anyhow!(
                    "runnel cannot build sandboxes for instances on this machine: {e}. Instances are untrusted code: fix the kernel settings, or, knowing that nothing then separates instances from each other and from this machine, start with `--isolation=none`"
                )
            })?;
        }
    }
    // The frontend is bound first: service URLs carry its real port (port 0 picks one).
    let frontend = if node { Some(bind(&args.frontend_address, "--frontend-address").await?) } else { None };
    let port = match &frontend {
        Some(l) => l.local_addr()?.port(),
        None => frontend_port(&args.frontend_address)?,
    };
    let owner_secret = home::owner_credential(home_dir)?;
    let store_path = home_dir.join(home::STATE_FILE);
    let store = RedbStore::open(&store_path).map_err(|e| anyhow!("{e}"))?;
    std::fs::set_permissions(&store_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (mode 0600)", store_path.display()))?;
    let url_suffix = if port == 80 { args.domain.clone() } else { format!("{}:{port}", args.domain) };
    let settings = Settings { url_suffix, default_region: args.default_region.clone() };
    let boot = Bootstrap { project_id: args.project_id.clone(), owner: args.owner.clone(), owner_secret };
    let mut cp = runnel_api::bootstrap(Arc::new(store), &boot, settings).map_err(|e| anyhow!("{}", e.message))?;
    let logs = Arc::new(LogStore::new(home_dir.join("logs"), 8 * 1024 * 1024));
    let sink = Arc::new(Logs::new(logs.clone()));
    let api = bind(&args.api_address, "--api-address").await?;
    let api_addr = api.local_addr()?;

    // Identity, on a node: signing keys (0600, rotated), the minter behind every metadata server
    // and the API's generateIdToken, and the keys' publication. The issuer is this API.
    let issuer = format!("http://{api_addr}");
    let mut identity = None;
    if node {
        let keys_dir = home_dir.join("keys");
        let keys = Arc::new(
            runnel_identity::Keys::open(&keys_dir, runnel_identity::KeyPolicy::default(), runnel_identity::unix_now())
                .map_err(|e| anyhow!("cannot open the signing keys in {}: {e}", keys_dir.display()))?,
        );
        let minter = Arc::new(runnel_identity::Minter::new(keys.clone(), issuer.clone()));
        cp = cp.with_runtime(sink.clone()).with_tokens(Arc::new(crate::node::Tokens(minter.clone())));
        identity = Some((keys, minter));
    }
    let cp = Arc::new(cp);
    let project = cp.project().clone();

    // The node: instances and the frontend.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Turns true as soon as the daemon starts stopping: operator proxies' held-open API
    // responses end then, or the API's graceful shutdown would wait for them forever.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut node_task = None;
    let mut first_routes = None;
    let mut frontend_task = None;
    let mut frontend_addr = None;
    let mut published = None;
    if let (Some(listener), Some((keys, minter))) = (frontend, identity) {
        let rotating = keys.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                let k = rotating.clone();
                let rotated = tokio::task::spawn_blocking(move || k.rotate_if_due(runnel_identity::unix_now())).await;
                if let Ok(Err(e)) = rotated {
                    tracing::error!(error = %e, "signing key rotation failed; the current key keeps signing");
                }
            }
        });
        published = Some(runnel_identity::publish::router(keys.clone(), &issuer));
        let invoker: Arc<dyn runnel_gateway::Invoker> = Arc::new(InvokerGate {
            cp: cp.clone(),
            keys: keys.clone(),
            cache: Arc::new(runnel_identity::VerifyCache::default()),
            issuer: issuer.clone(),
            state: crate::node::StateCache::default(),
        });
        frontend_addr = Some(listener.local_addr()?);
        let instances_dir = home_dir.join("i");
        let _ = std::fs::remove_dir_all(&instances_dir);
        std::fs::create_dir_all(&instances_dir)?;
        std::fs::set_permissions(&instances_dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let isolation = match args.isolation {
            IsolationFlag::Sandbox => Isolation::Sandbox,
            IsolationFlag::None => Isolation::None,
        };
        let routes = Arc::new(Routes::default());
        let front = Arc::new(Frontend::new(routes.clone(), sink.clone(), FrontendConfig::default()));
        cp.set_operator_proxies(Arc::new(crate::operator::ProxyHost {
            cp: Arc::downgrade(&cp),
            frontend: front.clone(),
            minter: minter.clone(),
            stop: closing_rx.clone(),
        }));
        // Without a sandbox there is no egress channel to serve: instances use the host's network.
        let channels: Option<Arc<dyn runnel_runtime::pool::ChannelProvider>> = match isolation {
            Isolation::Sandbox => Some(Arc::new(NodeChannels {
                metadata: MetadataChannel { cp: cp.clone(), minter: minter.clone() },
                log: sink.clone(),
                cp: cp.clone(),
                frontend: front.clone(),
                routes: routes.clone(),
                own_listeners: vec![api_addr.ip(), listener.local_addr()?.ip()],
            })),
            Isolation::None => None,
        };
        // The troubleshooter asks the same objects as the data path: these routes, this log,
        // this minter, the same listeners that no instance may reach.
        cp.set_troubleshooter(Arc::new(crate::explain::Explainer {
            cp: Arc::downgrade(&cp),
            routes: routes.clone(),
            log: sink.clone(),
            minter: minter.clone(),
            own_listeners: vec![api_addr.ip(), listener.local_addr()?.ip()],
        }));
        let host = Arc::new(Host {
            exe,
            instances_dir,
            hide: hidden_paths(home_dir),
            output: sink.clone(),
            events: events_tx,
            isolation,
            channels,
        });
        let (routes_loaded, loaded) = tokio::sync::watch::channel(false);
        first_routes = Some(loaded);
        let node = Node {
            invoker,
            cp: cp.clone(),
            host,
            routes: routes.clone(),
            startup_deadline: Duration::from_secs(args.startup_deadline),
            logs: logs.clone(),
            routes_loaded,
        };
        node_task = Some(tokio::spawn(node.run(events_rx, stop_rx.clone())));
        let mut stop = stop_rx.clone();
        let wait = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        frontend_task = Some(match args.frontend_threads {
            Some(n) => {
                // A runtime of its own, so the frontend's thread count is exactly what was asked.
                let rt = runnel_gateway::build_runtime(Some(n)).context("cannot start the frontend's threads")?;
                let std_listener = listener.into_std()?;
                tokio::task::spawn_blocking(move || {
                    rt.block_on(async move {
                        if let Ok(l) = tokio::net::TcpListener::from_std(std_listener) {
                            front.serve(l, wait).await;
                        }
                    })
                })
            }
            None => tokio::spawn(front.serve(listener, wait)),
        });
    }

    // Services of an earlier run are routed before the daemon says it is up (their instances
    // start behind the routes, and a request meanwhile waits for one, as after a crash).
    if let Some(mut loaded) = first_routes
        && tokio::time::timeout(Duration::from_secs(30), loaded.wait_for(|l| *l)).await.is_err()
    {
        tracing::warn!("the route table was not loaded within 30 s; services answer 404 until it is");
    }
    let info = DaemonInfo {
        api: format!("http://{api_addr}"),
        frontend: frontend_addr.map(|a| format!("http://{a}")),
        project: project.project_id.clone(),
        region: args.default_region.clone(),
        pid: std::process::id(),
    };
    home::write_private(&home_dir.join(home::DAEMON_FILE), serde_json::to_string_pretty(&info)?.as_bytes())?;

    if node && args.isolation == IsolationFlag::None {
        let warning = "WARNING: --isolation=none: instances run WITHOUT a sandbox, as ordinary processes of this user; they can reach each other, this machine's network and files, and the daemon. Never run untrusted code this way.";
        println!("{warning}");
        tracing::warn!("{warning}");
    }
    if announce {
        println!("runnel is up for project {} (number {})", project.project_id, project.project_number);
        println!("  api:          http://{api_addr}");
        match frontend_addr {
            Some(a) => println!(
                "  frontend:     http://{a}  (services at http://SERVICE-{}.REGION.{}:{port})",
                project.project_number, args.domain
            ),
            None => println!(
                "  frontend:     none (--role=control-plane); service URLs are http://SERVICE-{}.REGION.{}:{port}",
                project.project_number, args.domain
            ),
        }
        println!("  state:        {}", home_dir.display());
        println!("  credential:   {} (owner {})", home_dir.join(home::OWNER_CREDENTIAL).display(), args.owner);
        println!("Press Ctrl-C to stop.");
    }

    // Refusal counters for Prometheus: reason codes only, nothing secret, so no credential.
    let metrics_source = sink.clone();
    let mut app = runnel_api::app(cp.clone());
    if let Some(published) = published {
        // The keys that verify runnel's ID tokens, for services that verify them themselves.
        app = app.merge(published);
    }
    let app = app.route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics_source.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.metrics()) }
        }),
    );
    let stopping = async move {
        stop.await;
        let _ = closing_tx.send(true);
    };
    axum::serve(api, app).with_graceful_shutdown(stopping).await.context("the API server failed")?;
    // Stop instances (SIGTERM, then SIGKILL after 10 s) and the frontend before saying so.
    let _ = stop_tx.send(true);
    if let Some(t) = node_task {
        let _ = t.await;
    }
    if let Some(t) = frontend_task {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    // Request and instance log lines are written in batches: the last ones go out now.
    logs.flush();
    let _ = std::fs::remove_file(home_dir.join(home::DAEMON_FILE));
    println!("runnel stopped.");
    Ok(())
}

/// SIGINT and SIGTERM, registered before the daemon announces itself, so a stop request that
/// comes at once still ends in a clean shutdown.
struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn register() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
