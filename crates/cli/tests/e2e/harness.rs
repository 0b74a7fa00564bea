//! The harness: a sandbox directory per test, the real `runnel up` daemon in it, and the CLI
//! run as a separate process against it, exactly as a user runs them.
//!
//! Every process the harness starts is bounded by a deadline and killed by `Drop`, so a
//! failing or hanging test never leaves a daemon behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_runnel");
pub const PROJECT: &str = "e2e-project";
/// Passed to every daemon: the frontend address only shapes service URLs, nothing binds it.
pub const FRONTEND: &str = "127.0.0.1:7781";

const START_DEADLINE: Duration = Duration::from_secs(10);

/// Environment that would make the CLI talk to something other than the sandbox.
const FOREIGN_ENV: &[&str] =
    &["RUNNEL_HOME", "RUNNEL_CREDENTIAL", "RUNNEL_PROJECT", "RUNNEL_REGION", "RUNNEL_API_URL", "RUNNEL_LOG"];

/// One test's private directory: `home/` is the daemon's `RUNNEL_HOME` (created by the daemon
/// itself, so its mode is the daemon's doing); logs and scratch files sit next to it.
pub struct Sandbox {
    dir: tempfile::TempDir,
    starts: AtomicUsize,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("runnel-e2e-").tempdir().expect("a temporary directory");
        Sandbox { dir, starts: AtomicUsize::new(0) }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A scratch path outside the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `runnel up` on the home with the test project and waits until it serves.
    pub fn start(&self) -> Daemon {
        self.start_with(&[format!("--project-id={PROJECT}").as_str()])
    }

    /// Starts `runnel up` with `extra` flags (after the loopback listener flags) and waits
    /// until it has answered a request.
    pub fn start_with(&self, extra: &[&str]) -> Daemon {
        let daemon = self.spawn_daemon(extra);
        daemon.wait_healthy();
        daemon
    }

    /// Starts `runnel up` and waits only until it has written `daemon.json` naming its own pid.
    pub fn spawn_daemon(&self, extra: &[&str]) -> Daemon {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        let out_path = self.path(&format!("daemon-{n}.out"));
        let err_path = self.path(&format!("daemon-{n}.err"));
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("--role=control-plane")
            .arg("--api-address=127.0.0.1:0")
            .arg(format!("--frontend-address={FRONTEND}"))
            .args(extra);
        scrub(&mut cmd);
        cmd.env("RUNNEL_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("daemon stdout file"))
            .stderr(File::create(&err_path).expect("daemon stderr file"));
        let child = cmd.spawn().expect("spawn `runnel up`");
        let mut daemon = Daemon {
            child: Some(child),
            home: self.home(),
            out_path,
            err_path,
            api: String::new(),
            project: String::new(),
            pid: 0,
        };
        let pid = daemon.child.as_ref().map(Child::id).unwrap_or_default();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(info) = read_daemon_json(&self.home())
                && info["pid"].as_u64() == Some(u64::from(pid))
            {
                daemon.api = info["api"].as_str().unwrap_or_default().to_string();
                daemon.project = info["project"].as_str().unwrap_or_default().to_string();
                daemon.pid = pid;
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

    /// Runs the CLI against the sandbox's home and waits for it.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.spawn_cli(args, &[]).finish()
    }

    /// Runs the CLI with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        self.spawn_cli(args, env).finish()
    }

    /// Starts the CLI without waiting, so several can run at once.
    pub fn spawn_cli(&self, args: &[&str], env: &[(&str, &str)]) -> Pending {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        scrub(&mut cmd);
        cmd.env("RUNNEL_HOME", self.home());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Pending::spawn(cmd, args)
    }
}

fn scrub(cmd: &mut Command) {
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
}

pub fn read_daemon_json(home: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(home.join("daemon.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A running `runnel up`. Dropping it kills the process.
pub struct Daemon {
    child: Option<Child>,
    pub home: PathBuf,
    out_path: PathBuf,
    err_path: PathBuf,
    /// `http://127.0.0.1:PORT`, from `daemon.json`.
    pub api: String,
    pub project: String,
    pub pid: u32,
}

impl Daemon {
    /// The daemon's output so far, for failure messages.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.out_path).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err_path).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- daemon stdout ---\n{out}--- daemon stderr (tail) ---\n{}", tail.join("\n"))
    }

    /// Waits until `GET /healthz` answers 200: the daemon is serving, not only listening.
    pub fn wait_healthy(&self) {
        let addr = self.api.strip_prefix("http://").unwrap_or(&self.api).to_string();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let answer = TcpStream::connect(&addr).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: runnel\r\nConnection: close\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
            if answer.is_ok_and(|t| t.starts_with("HTTP/1.1 200")) {
                return;
            }
            if Instant::now() > deadline {
                panic!("the daemon at {addr} did not answer /healthz within {START_DEADLINE:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stdout banner once complete: `runnel is up for project P (number N)` … `Press Ctrl-C to stop.`
    pub fn banner(&self) -> String {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let out = std::fs::read_to_string(&self.out_path).unwrap_or_default();
            if out.contains("Press Ctrl-C to stop.\n") {
                return out;
            }
            if Instant::now() > deadline {
                panic!("the daemon printed no complete banner\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The project number the banner announces.
    pub fn project_number(&self) -> String {
        let banner = self.banner();
        let first = banner.lines().next().unwrap_or_default();
        let prefix = format!("runnel is up for project {} (number ", self.project);
        let number = first
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected first banner line {first:?}"));
        assert!(
            number.len() == 12 && number.bytes().all(|b| b.is_ascii_digit()),
            "project number {number:?} is not 12 digits"
        );
        number.to_string()
    }

    /// The owner's credential, as clients send it.
    pub fn owner_credential(&self) -> String {
        std::fs::read_to_string(self.home.join("owner.credential")).expect("owner.credential").trim().to_string()
    }

    /// Stops the daemon as an operator does (SIGTERM) and returns its exit status and stdout.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.pid.to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run `kill`");
        assert!(sent.success(), "`kill -TERM {pid}` failed");
        let deadline = Instant::now() + START_DEADLINE;
        let mut child = self.child.take().expect("a running daemon");
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                let out = std::fs::read_to_string(&self.out_path).unwrap_or_default();
                return (status, out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within {START_DEADLINE:?} of SIGTERM\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the daemon: no handler runs, nothing is flushed or cleaned up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[path = "../support/cli_process.rs"]
mod cli_process;
pub use cli_process::{Out, Pending};

impl Out {
    /// stdout parsed as one YAML document (after asserting success).
    #[track_caller]
    pub fn yaml(self) -> Value {
        let out = self.ok();
        serde_yaml_ng::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{out}"))
    }

    /// stdout as lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Asserts the command failed with exit code 1 and that stderr ends with exactly one
    /// `ERROR: (runnel PATH) ` line; returns the rest of that line.
    #[track_caller]
    pub fn error(&self, path: &str) -> String {
        assert_eq!(self.code, Some(1), "expected exit code 1:\n{self}");
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("ERROR:")).collect();
        assert_eq!(errors.len(), 1, "expected exactly one ERROR line:\n{self}");
        assert_eq!(self.stderr.lines().last(), Some(errors[0]), "the ERROR line is not the last line:\n{self}");
        assert!(self.stderr.ends_with('\n'), "stderr does not end with a newline:\n{self}");
        let prefix = format!("ERROR: (runnel {path}) ");
        errors[0]
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("the ERROR line does not start with {prefix:?}:\n{self}"))
            .to_string()
    }

    /// Like [`Out::error`] for an API refusal: the message after `STATUS: `.
    #[track_caller]
    pub fn api_error(&self, path: &str, status: &str) -> String {
        let line = self.error(path);
        line.strip_prefix(&format!("{status}: "))
            .unwrap_or_else(|| panic!("expected status {status}, got {line:?}:\n{self}"))
            .to_string()
    }
}

/// Parses a table printed by `--format=table`: asserts the header is exactly `columns` in
/// order, aligned as printed, and cuts every row at the header's column starts.
#[track_caller]
pub fn table(out: &Out, columns: &[&str]) -> Vec<BTreeMap<String, String>> {
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_else(|| panic!("no table header:\n{out}"));
    let mut starts = Vec::with_capacity(columns.len());
    let mut from = 0;
    for c in columns {
        let at = header[from..].find(c).map(|i| i + from).unwrap_or_else(|| panic!("no column {c:?} in {header:?}"));
        assert!(
            starts.is_empty() || (header[from..at].chars().all(|ch| ch == ' ') && at - from >= 2),
            "column {c:?} is not separated by at least two spaces in {header:?}"
        );
        starts.push(at);
        from = at + c.len();
    }
    assert_eq!(starts.first(), Some(&0), "the header does not start with {:?}: {header:?}", columns[0]);
    assert_eq!(from, header.len(), "the header has more than the expected columns: {header:?}");
    lines
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    let start = starts[n].min(row.len());
                    let end = starts.get(n + 1).copied().unwrap_or(row.len()).min(row.len());
                    if n > 0 && start > 0 && start < row.len() {
                        assert_eq!(
                            &row[start - 1..start],
                            " ",
                            "row {row:?} is not aligned under {header:?} (column {c:?})"
                        );
                    }
                    (c.to_string(), row[start..end].trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// The permission bits of a file or directory.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).permissions().mode() & 0o777
}

/// `ACCOUNT@PROJECT.iam.gserviceaccount.com`.
pub fn account_email(account: &str) -> String {
    format!("{account}@{PROJECT}.iam.gserviceaccount.com")
}

/// Runs the guide's setup through the CLI: an internal receiver, a network, a subnet, a
/// connector, a caller account with `roles/run.invoker` on the receiver, and the caller service
/// behind the connector. Asserts each step succeeds.
pub fn guide_setup(sb: &Sandbox) {
    let steps: &[&[&str]] = &[
        &[
            "run",
            "deploy",
            "receiver",
            "--command=python3",
            "--args=app.py",
            "--ingress=internal",
            "--no-allow-unauthenticated",
        ],
        &["compute", "networks", "create", "vpc"],
        &["compute", "networks", "subnets", "create", "sub", "--network=vpc", "--range=10.0.0.0/24"],
        &["compute", "networks", "vpc-access", "connectors", "create", "conn", "--network=vpc", "--range=10.8.0.0/28"],
        &["iam", "service-accounts", "create", "caller"],
    ];
    for step in steps {
        sb.cli(step).ok();
    }
    let member = format!("--member=serviceAccount:{}", account_email("caller"));
    sb.cli(&["run", "services", "add-iam-policy-binding", "receiver", &member, "--role=roles/run.invoker"]).ok();
    sb.cli(&[
        "run",
        "deploy",
        "caller",
        "--command=python3",
        "--args=caller.py",
        "--vpc-connector=conn",
        "--vpc-egress=all-traffic",
        "--service-account=caller",
    ])
    .ok();
}
