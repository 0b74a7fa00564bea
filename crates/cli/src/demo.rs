//! `runnel demo`: the guide end to end, in one command, on a throwaway daemon.
//!
//! It starts the daemon in-process (exactly what `runnel up` runs) on a fresh `RUNNEL_HOME` and
//! free loopback ports, so neither the user's own state nor a running `runnel up` is touched.
//! Then it walks the guide one step at a time: it prints the `runnel` commands a user would
//! type, runs them as the CLI (the same executable, the same API), has the caller call the
//! receiver, and prints what the call got and why — the reason read back from the daemon's
//! refusal log by the request id the refused response carried.
//!
//! The two apps ship inside this binary (`demo/apps.rs`) and run as real instances in their
//! sandboxes; `demo/place.rs` says where their executable is put and why. The demo keeps running
//! for the user to explore until Ctrl-C (or SIGTERM), which stops every instance and the daemon
//! and removes the demo's directory; `--exit` stops after the last step.

mod apps;
mod place;
mod script;

pub use apps::{DemoAppArgs, app};

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use clap::{Args, FromArgMatches};

use crate::cli::Up;
use place::DemoDir;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  runnel demo\n  runnel demo --exit\n\n\
The demo never uses RUNNEL_HOME: it makes a fresh one and deletes it when it stops.")]
pub struct DemoArgs {
    /// Where the demo's API listens; port 0 picks a free one, so a running `runnel up` is no
    /// obstacle.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub api_address: String,
    /// Where the demo's frontend serves the services; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub frontend_address: String,
    /// Stop after the last step instead of waiting for Ctrl-C (for scripts and CI).
    #[arg(long)]
    pub exit: bool,
    /// Write the daemon's log to stderr instead of the demo's log file.
    #[arg(short, long)]
    pub verbose: bool,
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    // First of all, so that a Ctrl-C at any moment ends in a clean stop.
    let mut stop_request = StopRequest::register()?;
    let dir = DemoDir::create()?;
    let log = start_logging(&dir.home, args.verbose)?;
    let up = up_args(&args)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The sandboxes run the placed executable too: their stages start as the instance's uid.
    let daemon = crate::up::serve(
        &dir.home,
        up,
        dir.app_exe.clone(),
        async move {
            let _ = stop_rx.await;
        },
        false,
    );
    tokio::pin!(daemon);
    let mut daemon_result = None;

    let mut walk = std::pin::pin!(script::walk(&dir, log.as_deref()));
    let walked = tokio::select! {
        r = &mut daemon => {
            daemon_result = Some(r);
            Err(anyhow!("the demo's daemon stopped before the demo ended"))
        }
        r = &mut walk => r,
        _ = stop_request.wait() => Ok(script::Ending::Interrupted),
    };
    if matches!(walked, Ok(script::Ending::Walked)) && !args.exit {
        println!("Press Ctrl-C to stop (it stops every instance and the daemon, and deletes {}).", dir.root.display());
        tokio::select! {
            r = &mut daemon => daemon_result = Some(r),
            _ = stop_request.wait() => {}
        }
    }

    // `daemon.json` exists while the daemon serves.
    let served = crate::home::read_daemon(&dir.home).is_some();
    if served {
        println!("Stopping the demo: its instances, then the daemon...");
    }
    let _ = stop_tx.send(());
    let daemon_result = match daemon_result {
        Some(r) => r,
        None => daemon.await,
    };
    // A walk that went wrong on a daemon that ran: its log says why, so it stays.
    let keep = daemon_result.is_ok() && !matches!(walked, Ok(script::Ending::Walked | script::Ending::Interrupted));
    match &log {
        Some(log) if keep => println!("The demo's directory is kept for its log: {}", log.display()),
        _ => {
            dir.remove();
            if served {
                println!("Stopped; nothing of the demo is left running, and {} is deleted.", dir.root.display());
            }
        }
    }
    daemon_result.map_err(|e| anyhow!("the demo's runnel could not run: {e:#}"))?;
    match walked? {
        script::Ending::Unexpected => Err(anyhow!(
            "some steps did not get the answer the guide leads to (marked UNEXPECTED above); that is a bug in runnel, please report it"
        )),
        _ => Ok(()),
    }
}

/// The daemon's settings: `runnel up`'s own defaults, with the demo's listeners.
fn up_args(args: &DemoArgs) -> Result<Up> {
    let command = Up::augment_args(clap::Command::new("up"));
    let matches = command
        .try_get_matches_from([
            "up".to_string(),
            format!("--api-address={}", args.api_address),
            format!("--frontend-address={}", args.frontend_address),
        ])
        .map_err(|e| anyhow!("cannot configure the demo's daemon: {e}"))?;
    Up::from_arg_matches(&matches).map_err(|e| anyhow!("cannot configure the demo's daemon: {e}"))
}

/// The daemon's log goes to a file in the demo's home, so the demo's own output stays readable;
/// `-v` sends it to stderr. Returns the file, if there is one.
fn start_logging(home: &Path, verbose: bool) -> Result<Option<std::path::PathBuf>> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| "info".into());
    if verbose {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        return Ok(None);
    }
    let path = home.join("daemon.log");
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create the log {}", path.display()))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
    Ok(Some(path))
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed): each stops the demo cleanly.
struct StopRequest {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopRequest {
    fn register() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}
