//! `runnel up`: the daemon in the foreground.
//!
//! It owns `$RUNNEL_HOME` (mode 0700): the store, the owner's credential (0600) and
//! `daemon.json`, which tells clients where it listens. It is the store's only writer; redb's
//! file lock refuses a second daemon on the same home.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use runnel_api::{Bootstrap, Settings};
use runnel_store::RedbStore;

use crate::cli::Up;
use crate::home::{self, DaemonInfo};

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

pub async fn up(home_dir: &Path, args: Up) -> Result<()> {
    let shutdown = Shutdown::register()?;
    home::prepare(home_dir)?;
    let port = frontend_port(&args.frontend_address)?;
    let owner_secret = home::owner_credential(home_dir)?;
    let store_path = home_dir.join(home::STATE_FILE);
    let store = RedbStore::open(&store_path).map_err(|e| anyhow!("{e}"))?;
    std::fs::set_permissions(&store_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (mode 0600)", store_path.display()))?;
    let url_suffix = if port == 80 { args.domain.clone() } else { format!("{}:{port}", args.domain) };
    let settings = Settings { url_suffix, default_region: args.default_region.clone() };
    let boot = Bootstrap { project_id: args.project_id.clone(), owner: args.owner.clone(), owner_secret };
    let cp = runnel_api::bootstrap(Arc::new(store), &boot, settings).map_err(|e| anyhow!("{}", e.message))?;
    let project = cp.project().clone();

    let api = bind(&args.api_address, "--api-address").await?;
    let api_addr = api.local_addr()?;
    let info = DaemonInfo {
        api: format!("http://{api_addr}"),
        project: project.project_id.clone(),
        region: args.default_region.clone(),
        pid: std::process::id(),
    };
    home::write_private(&home_dir.join(home::DAEMON_FILE), serde_json::to_string_pretty(&info)?.as_bytes())?;

    println!("runnel is up for project {} (number {})", project.project_id, project.project_number);
    println!("  api:        http://{api_addr}");
    println!(
        "  service URLs: http://SERVICE-{}.REGION.{}:{port} (the frontend that serves them is not part of this build yet)",
        project.project_number, args.domain
    );
    println!("  state:      {}", home_dir.display());
    println!("  credential: {} (owner {})", home_dir.join(home::OWNER_CREDENTIAL).display(), args.owner);
    println!("Press Ctrl-C to stop.");

    let app = runnel_api::app(Arc::new(cp));
    axum::serve(api, app).with_graceful_shutdown(shutdown.wait()).await.context("the API server failed")?;
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
