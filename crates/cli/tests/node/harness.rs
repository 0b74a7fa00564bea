//! The harness: a private directory per test holding the daemon's home and the test app, the
//! real `runnel up` (all roles: instances in sandboxes and the frontend) started in it, and the
//! CLI run as separate processes against it, exactly as a user runs them.
//!
//! The directory lives under Cargo's target tmpdir, not under `/tmp`: instances get a private
//! `/tmp`, so an app under the host's `/tmp` would not exist for them. Under the target
//! directory it is part of the read-only host view every sandbox has, and made readable by
//! others, because a root daemon runs each instance as its own unprivileged uid. The home next
//! to it is hidden from instances by the daemon. Its path is kept short: instance sockets live
//! at `HOME/i/<id>/run/port.sock`, which must fit in a Unix socket address.
//!
//! Every process the harness starts is bounded by a deadline and killed by `Drop`, so a failing
//! or hanging test never leaves a daemon behind (its instances die with it).

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_runnel");
/// The interpreter every instance can read (a user-local Python under `/root` is not).
pub const PYTHON: &str = "/usr/bin/python3";
pub const REGION: &str = "local1";
/// The test app, written into every test's directory.
const APP: &str = include_str!("app.py");

const START_DEADLINE: Duration = Duration::from_secs(15);

/// Environment that would make the CLI or the daemon use something other than the test's home.
const FOREIGN_ENV: &[&str] =
    &["RUNNEL_HOME", "RUNNEL_CREDENTIAL", "RUNNEL_PROJECT", "RUNNEL_REGION", "RUNNEL_API_URL", "RUNNEL_LOG"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A string no other process on the machine has in its command line.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}-{:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), rand::random::<u32>())
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// One test's directory: `app/` (the test app, readable by every instance) and `h/` (the
/// daemon's `RUNNEL_HOME`, created by the daemon itself).
pub struct World {
    dir: tempfile::TempDir,
    starts: AtomicUsize,
}

/// How to start a daemon.
#[derive(Default)]
pub struct Start<'a> {
    /// `--startup-deadline`, in seconds; 5 when not given.
    pub startup_deadline: Option<u64>,
    /// Where the frontend listens; a free loopback port when not given.
    pub frontend: Option<SocketAddr>,
    /// Extra environment of the daemon process.
    pub env: &'a [(&'a str, &'a str)],
    /// Variables removed from the daemon's environment.
    pub env_remove: &'a [&'a str],
    /// Extra arguments of `runnel up`.
    pub args: &'a [&'a str],
}

impl World {
    pub fn new() -> World {
        let base = test_base();
        let base = base.as_path();
        fs::create_dir_all(base).expect("the target tmpdir");
        let dir = tempfile::Builder::new().prefix("rn-").tempdir_in(base).expect("a test directory");
        chmod(dir.path(), 0o755);
        for ancestor in dir.path().ancestors() {
            let mode = fs::metadata(ancestor).map(|m| m.permissions().mode()).unwrap_or(0);
            assert!(
                mode & 0o001 != 0,
                "{} is not traversable by others (mode {mode:o}); instances of a root daemon run as \
                 their own unprivileged uid and must reach the test app",
                ancestor.display()
            );
        }
        let world = World { dir, starts: AtomicUsize::new(0) };
        fs::create_dir(world.app_dir()).expect("the app directory");
        chmod(&world.app_dir(), 0o755);
        fs::write(world.app_dir().join("app.py"), APP).expect("write the test app");
        chmod(&world.app_dir().join("app.py"), 0o644);
        world
    }

    /// The daemon's `RUNNEL_HOME`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("h")
    }

    /// Where the test app lives; every service runs in it.
    pub fn app_dir(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// While this file exists, starting instances of the test app wait before they listen.
    pub fn hold_path(&self) -> PathBuf {
        self.app_dir().join("hold")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `runnel up` with instances and a frontend on free loopback ports and waits until
    /// it has written `daemon.json` naming its own pid.
    pub fn start(&self, how: &Start) -> Daemon {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        let out_path = self.path(&format!("daemon-{n}.out"));
        let err_path = self.path(&format!("daemon-{n}.err"));
        let frontend = how.frontend.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("--api-address=127.0.0.1:0")
            .arg(format!("--frontend-address={frontend}"))
            .arg(format!("--startup-deadline={}", how.startup_deadline.unwrap_or(5)));
        cmd.args(how.args);
        scrub(&mut cmd);
        for k in how.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in how.env {
            cmd.env(k, v);
        }
        cmd.env("RUNNEL_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("daemon stdout file"))
            .stderr(File::create(&err_path).expect("daemon stderr file"));
        let child = cmd.spawn().expect("spawn `runnel up`");
        let pid = child.id();
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            out_path,
            err_path,
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            frontend: SocketAddr::from(([127, 0, 0, 1], 0)),
            sandboxes: Vec::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(info) = read_json(&self.home().join("daemon.json"))
                && info["pid"].as_u64() == Some(u64::from(pid))
            {
                let addr = |field: &str| -> SocketAddr {
                    let url = info[field].as_str().unwrap_or_else(|| panic!("daemon.json has no {field}: {info}"));
                    url.trim_start_matches("http://").parse().unwrap_or_else(|e| panic!("{field} {url}: {e}"))
                };
                daemon.api = addr("api");
                daemon.frontend = addr("frontend");
                return daemon;
            }
            if let Some(Some(status)) = daemon.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!("`runnel up` exited with {status} before serving\n{}", daemon.logs());
            }
            if Instant::now() > deadline {
                panic!("`runnel up` did not write daemon.json within {START_DEADLINE:?}\n{}", daemon.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the CLI against the test's home, from the app directory, and waits for it.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.spawn_cli(args).finish()
    }

    /// Starts the CLI without waiting, so several can run at once.
    pub fn spawn_cli(&self, args: &[&str]) -> Pending {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(self.app_dir());
        scrub(&mut cmd);
        cmd.env("RUNNEL_HOME", self.home());
        Pending::spawn(cmd, args)
    }

    /// `runnel run deploy SERVICE` of the test app (`app.py MARKER`), open to everyone, with
    /// `extra` flags; does not wait.
    pub fn spawn_deploy(&self, service: &str, marker: &str, extra: &[&str]) -> Pending {
        let args = format!("--args=app.py,{marker}");
        let dir = format!("--working-dir={}", self.app_dir().display());
        let command = format!("--command={PYTHON}");
        let mut all = vec!["run", "deploy", service, &command, &args, &dir, "--allow-unauthenticated"];
        all.extend_from_slice(extra);
        self.spawn_cli(&all)
    }

    /// Deploys the test app and asserts that the deploy succeeded.
    #[track_caller]
    pub fn deploy(&self, service: &str, marker: &str, extra: &[&str]) -> Out {
        self.spawn_deploy(service, marker, extra).finish().ok()
    }

    /// `run services describe SERVICE --format=json`.
    #[track_caller]
    pub fn describe(&self, service: &str) -> Value {
        self.cli(&["run", "services", "describe", service, "--format=json"]).json()
    }

    /// `run revisions describe REVISION --format=json`.
    #[track_caller]
    pub fn describe_revision(&self, revision: &str) -> Value {
        self.cli(&["run", "revisions", "describe", revision, "--format=json"]).json()
    }

    /// Where a service is reached: its URL and the host requests must name.
    #[track_caller]
    pub fn service(&self, service: &str) -> Svc {
        let v = self.describe(service);
        let uri = v["uri"].as_str().unwrap_or_else(|| panic!("service {service} has no uri: {v}")).to_string();
        let authority = uri.strip_prefix("http://").unwrap_or_else(|| panic!("uri {uri} is not http://")).to_string();
        let host = authority.rsplit_once(':').map_or(authority.clone(), |(h, _)| h.to_string());
        Svc { uri, authority, host, revision: last(&v["latestReadyRevision"]) }
    }
}

/// A deployed service as a client sees it.
#[derive(Debug, Clone)]
pub struct Svc {
    /// `http://SERVICE-NUMBER.REGION.run.localhost:PORT`.
    pub uri: String,
    /// The URL's authority, host and port: what clients put in `Host`.
    pub authority: String,
    /// The URL's host without the port.
    pub host: String,
    /// The short name of the serving revision.
    pub revision: String,
}

/// The last segment of a resource name.
pub fn last(v: &Value) -> String {
    v.as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string()
}

fn scrub(cmd: &mut Command) {
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
}

pub fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// A running `runnel up`. Dropping it kills the process and every sandbox it started.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    out_path: PathBuf,
    err_path: PathBuf,
    pub api: SocketAddr,
    pub frontend: SocketAddr,
    /// The daemon's sandboxes (stage 1 of each) when it was stopped or killed: those still
    /// alive when the test ends are killed, so that no test leaves processes behind, whatever
    /// the daemon did.
    sandboxes: Vec<u32>,
}

impl Daemon {
    /// The daemon's output so far, for failure messages.
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(&self.out_path).unwrap_or_default();
        let err = fs::read_to_string(&self.err_path).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- daemon stdout ---\n{out}--- daemon stderr (tail) ---\n{}", tail.join("\n"))
    }

    /// Stops the daemon as an operator does (SIGTERM); returns its exit status, its stdout
    /// and how long it took to exit.
    pub fn stop(&mut self) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        self.sandboxes.extend(children(self.pid));
        send_signal(self.pid, "TERM");
        let mut child = self.child.take().expect("a running daemon");
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                let out = fs::read_to_string(&self.out_path).unwrap_or_default();
                return (status, out, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within 30 s of SIGTERM\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the daemon: no handler runs, nothing is cleaned up. It is stopped (SIGSTOP)
    /// first, so that the sandboxes it started can be listed without it starting another.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(self.pid, "STOP");
            self.sandboxes.extend(children(self.pid));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in &self.sandboxes {
            // Only a sandbox of this binary: the pid is not reused by something else.
            let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if is_alive(*pid) && argv.starts_with(BIN.as_bytes()) && argv.windows(10).any(|w| w == b"__sandbox\0") {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
}

/// The live children of a process.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|p| parent(*p) == Some(pid) && is_alive(*p))
        .collect()
}

/// Sends a signal to a process the test started, by pid.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

#[path = "../support/cli_process.rs"]
mod cli_process;
pub use cli_process::{Out, Pending};

/// A live (not zombie) host process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProcess {
    pub pid: u32,
    pub argv: Vec<String>,
}

fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string())
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    status_field(pid, "State:").is_some_and(|s| !s.starts_with('Z'))
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// The real uid of a process.
pub fn uid(pid: u32) -> Option<u32> {
    status_field(pid, "Uid:")?.split_whitespace().next()?.parse().ok()
}

/// A process's peak resident set size, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")?.trim_end_matches("kB").trim().parse().ok()
}

/// Every live host process whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<HostProcess> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let argv: Vec<String> =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if argv.iter().any(|a| a.contains(marker)) && is_alive(pid) {
            found.push(HostProcess { pid, argv });
        }
    }
    found
}

/// Waits until `n` live processes carry `marker`, and returns them.
#[track_caller]
pub fn wait_for_processes(marker: &str, n: usize, within: Duration) -> Vec<HostProcess> {
    let deadline = Instant::now() + within;
    loop {
        let found = processes_with(marker);
        if found.len() == n {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("expected {n} processes with {marker:?} within {within:?}, found {found:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until none of `pids` is alive; returns those still alive at the deadline.
pub fn wait_until_dead(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
#[track_caller]
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Where test directories live. Not under `/tmp`, which every sandbox replaces with its own:
/// when the target directory is there (a clone in `/tmp`, `CARGO_TARGET_DIR=/tmp/…`), tests use
/// `/var/tmp/runnel-tests` instead, so instances can still reach their apps.
pub fn test_base() -> std::path::PathBuf {
    let target = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if target.starts_with("/tmp") { std::path::PathBuf::from("/var/tmp/runnel-tests") } else { target }
}
