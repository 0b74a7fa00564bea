//! The harness: a private directory per test laid out as a daemon lays out `$RUNNEL_HOME`
//! (a secret at its top, one directory per instance, another instance's secret), the sandbox's
//! stage 1 started exactly as the daemon starts it, and every process bounded by a deadline.
//!
//! The directory lives under Cargo's target tmpdir rather than `/tmp`: the sandbox replaces
//! `/tmp`, so a home under it would be invisible inside whatever `hide` says, and the hiding
//! tests would prove nothing. Under the target directory it is part of the read-only host view,
//! so only `hide` can make it disappear.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

pub const BIN: &str = env!("CARGO_BIN_EXE_runnel");
/// The interpreter readable by `nobody` (a user-local Python is not).
pub const PYTHON: &str = "/usr/bin/python3";
/// The identity an instance has on the host when stage 1 starts as root.
pub const NOBODY: u32 = 65534;
/// Every sandbox the harness runs is killed after this long.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The environment the tests give workloads unless they say otherwise.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A string no other process on the machine has in its command line.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}-{:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), rand::random::<u32>())
}

/// Whether this test process runs as root, the mode in which instances become `nobody`.
pub fn is_root() -> bool {
    host_ids(std::process::id()).is_some_and(|ids| ids.uid.first() == Some(&0))
}

/// The ids of a host process, from its `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIds {
    pub uid: Vec<u32>,
    pub gid: Vec<u32>,
    pub groups: Vec<u32>,
}

pub fn host_ids(pid: u32) -> Option<HostIds> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    Some(HostIds { uid: field("Uid:"), gid: field("Gid:"), groups: field("Groups:") })
}

/// A live (not zombie) host process whose command line contains a marker.
#[derive(Debug, Clone)]
pub struct HostProcess {
    pub pid: u32,
    pub argv: Vec<String>,
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
        if !argv.iter().any(|a| a.contains(marker)) {
            continue;
        }
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if !zombie {
            found.push(HostProcess { pid, argv });
        }
    }
    found
}

/// Waits until no live process carries `marker`; returns those still there at the deadline.
pub fn wait_until_gone(marker: &str, within: Duration) -> Vec<HostProcess> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a host process the test started, by pid.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// One test's world: a fake `$RUNNEL_HOME` with a secret and instance directories, plus a
/// scratch directory that is deliberately visible (read-only) inside every sandbox.
pub struct World {
    dir: tempfile::TempDir,
    pub home_secret_text: String,
    pub other_secret_text: String,
}

impl World {
    pub fn new() -> World {
        let base = test_base();
        let base = base.as_path();
        fs::create_dir_all(base).expect("target tmpdir");
        let dir = tempfile::Builder::new().prefix("runnel-sandbox-").tempdir_in(base).expect("a temporary directory");
        chmod(dir.path(), 0o755);
        for ancestor in dir.path().ancestors() {
            let mode = fs::metadata(ancestor).map(|m| m.permissions().mode()).unwrap_or(0);
            assert!(
                mode & 0o001 != 0,
                "{} is not traversable by others (mode {mode:o}); sandboxes started as root run as \
                 nobody and must reach their instance directory",
                ancestor.display()
            );
        }
        let world =
            World { dir, home_secret_text: unique("home-secret"), other_secret_text: unique("other-instance-secret") };
        for d in [world.home(), world.home().join("instances"), world.scratch()] {
            fs::create_dir_all(&d).expect("create dir");
            chmod(&d, 0o755);
        }
        fs::write(world.home_secret(), &world.home_secret_text).expect("write home secret");
        chmod(&world.home_secret(), 0o644);
        let other = world.home().join("instances/other");
        fs::create_dir_all(&other).expect("other instance dir");
        chmod(&other, 0o755);
        fs::write(world.other_secret(), &world.other_secret_text).expect("write other secret");
        chmod(&world.other_secret(), 0o644);
        fs::write(world.scratch().join("visible"), "visible from inside").expect("write visible");
        chmod(&world.scratch().join("visible"), 0o644);
        world
    }

    /// The fake `$RUNNEL_HOME`, hidden in every spec the harness builds.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A world-readable file directly in the home: only `hide` keeps it from the workload.
    pub fn home_secret(&self) -> PathBuf {
        self.home().join("secret")
    }

    /// A world-readable file in another instance's directory.
    pub fn other_secret(&self) -> PathBuf {
        self.home().join("instances/other/secret")
    }

    /// A directory outside the home: visible, read-only, inside every sandbox.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// Creates an instance directory as the daemon does: `root/`, `run/` owned by the identity
    /// the instance maps to, and a hosts file naming the metadata server.
    pub fn instance(&self, name: &str) -> PathBuf {
        let dir = self.home().join("instances").join(name);
        fs::create_dir_all(dir.join("root")).expect("instance root");
        fs::create_dir_all(dir.join("run")).expect("instance run");
        chmod(&dir, 0o755);
        chmod(&dir.join("root"), 0o755);
        chmod(&dir.join("run"), 0o755);
        if is_root() {
            let uid = instance_uid(&dir);
            std::os::unix::fs::chown(dir.join("run"), Some(uid), Some(uid)).expect("chown run");
        }
        fs::write(dir.join("hosts"), HOSTS).expect("write hosts");
        chmod(&dir.join("hosts"), 0o644);
        dir
    }

    /// A spec for instance `name` running `sh -c script`; arguments added with [`Spec::arg`]
    /// are `$1`, `$2`, … (a marker there puts it in the workload's host command line).
    pub fn sh(&self, name: &str, script: &str) -> Spec {
        self.spec(name, "/bin/sh", &["-c", script, "sandbox-sh"])
    }

    /// A spec for instance `name` running `python3 -c code`.
    pub fn python(&self, name: &str, code: &str) -> Spec {
        self.spec(name, PYTHON, &["-c", code])
    }

    pub fn spec(&self, name: &str, command: &str, args: &[&str]) -> Spec {
        Spec {
            dir: self.instance(name),
            hide: vec![self.home()],
            command: command.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("PATH".into(), PATH.into()), ("HOME".into(), "/tmp".into())],
            working_dir: PathBuf::from("/"),
            port: 8080,
            hostname: "localhost".into(),
            tmp_mib: 64,
        }
    }

    /// The host uid the instance `name` runs as when the tests run as root.
    pub fn uid(&self, name: &str) -> u32 {
        instance_uid(&self.home().join("instances").join(name))
    }
}

/// The host uid a root daemon gives the instance in `dir`: its own, as runnel's pool does
/// (from a range far above ordinary users), derived from the directory so tests can predict it.
pub fn instance_uid(dir: &std::path::Path) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    0x6200_0000 + (h.finish() % 0x00ff_ffff) as u32
}

/// The hosts file the daemon writes for every instance.
pub const HOSTS: &str = "127.0.0.1\tlocalhost\n169.254.169.254\tmetadata.google.internal metadata\n";

/// The sandbox spec, as `runnel_runtime::sandbox::SandboxSpec` serialises it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    pub hide: Vec<PathBuf>,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    pub port: u16,
    pub hostname: String,
    pub tmp_mib: u32,
}

impl Spec {
    pub fn json(&self) -> String {
        json!({
            "dir": self.dir,
            "hide": self.hide,
            "command": self.command,
            "args": self.args,
            "env": self.env,
            "working_dir": self.working_dir,
            "port": self.port,
            "hostname": self.hostname,
            "tmp_mib": self.tmp_mib,
            "host_uid": if is_root() { Some(instance_uid(&self.dir)) } else { None },
        })
        .to_string()
    }

    /// The spec as a file, for stage 1's standard input (where the daemon writes it).
    pub fn stdin(&self) -> Stdio {
        Stdio::from(fs::File::open(self.spec_file()).expect("open the spec"))
    }

    /// Writes the spec to a file beside the instance directory and returns its path.
    pub fn spec_file(&self) -> PathBuf {
        let path = self.dir.with_extension("spec.json");
        fs::write(&path, self.json()).expect("write the spec");
        path
    }

    /// The instance's channel directory as the daemon sees it.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Adds an argument after the script (`$1`, `$2`, … for `sh -c`, `sys.argv` for Python):
    /// markers go here so the workload's host command line carries them.
    pub fn arg(mut self, a: &str) -> Spec {
        self.args.push(a.to_string());
        self
    }

    pub fn port(mut self, port: u16) -> Spec {
        self.port = port;
        self
    }

    pub fn hostname(mut self, name: &str) -> Spec {
        self.hostname = name.to_string();
        self
    }

    pub fn env(mut self, env: &[(&str, &str)]) -> Spec {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self
    }

    pub fn hide(mut self, path: PathBuf) -> Spec {
        self.hide.push(path);
        self
    }

    /// Stage 1 exactly as the daemon starts it, as the test's own user.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("__sandbox").stdin(self.stdin());
        c
    }

    /// Stage 1 started by `nobody` (or by the test's user when it is not root): the daemon run
    /// without privileges.
    pub fn command_unprivileged(&self) -> Command {
        if !is_root() {
            return self.command();
        }
        // Started by nobody, the sandbox runs as nobody and creates its sockets as nobody.
        std::os::unix::fs::chown(self.run_dir(), Some(NOBODY), Some(NOBODY)).expect("chown run");
        let mut c = Command::new("setpriv");
        c.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()]);
        c.arg(BIN).arg("__sandbox").stdin(self.stdin());
        c
    }

    pub fn run(&self) -> Outcome {
        run(self.command())
    }

    pub fn start(&self) -> Running {
        start(self.command())
    }
}

/// How a sandbox (or any bounded command) ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Asserts the workload ended with `code` and shows everything it said when it did not.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Outcome {
        assert!(!self.timed_out, "the sandbox ran past its deadline: {self:#?}");
        assert_eq!(self.code(), Some(code), "unexpected exit: {self:#?}");
        self
    }

    /// Stdout as trimmed lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().map(str::trim_end).collect()
    }
}

type Buffer = Arc<Mutex<Vec<u8>>>;

fn drain(mut from: impl Read + Send + 'static) -> (Buffer, JoinHandle<()>) {
    let buf: Buffer = Arc::default();
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().expect("output buffer").extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

fn text(buf: &Buffer) -> String {
    String::from_utf8_lossy(&buf.lock().expect("output buffer")).into_owned()
}

/// A started sandbox (or wrapper command). Dropping it kills stage 1, which takes the whole
/// sandbox with it.
pub struct Running {
    child: Child,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

pub fn start(mut command: Command) -> Running {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the sandbox");
    let (stdout, out_reader) = drain(child.stdout.take().expect("stdout pipe"));
    let (stderr, err_reader) = drain(child.stderr.take().expect("stderr pipe"));
    Running { child, stdout, stderr, readers: vec![out_reader, err_reader], started: Instant::now() }
}

/// Runs `command` to its end, killing it at the deadline.
pub fn run(command: Command) -> Outcome {
    start(command).wait()
}

impl Running {
    /// The host pid of stage 1.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Waits until stdout contains `needle`; panics with everything said so far otherwise.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.stdout().contains(needle) {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                // Give the readers a moment to collect the last words.
                std::thread::sleep(Duration::from_millis(50));
                if self.stdout().contains(needle) {
                    return;
                }
                panic!(
                    "the sandbox never printed {needle:?} (exit: {exited:?})\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// SIGKILL to stage 1.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the end (killing at the deadline), then for the output pipes to close.
    pub fn wait(mut self) -> Outcome {
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if self.started.elapsed() < DEADLINE => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        // Whatever still holds the pipes (a process that outlived its sandbox) must not hang
        // the test: give the readers a bounded time to see the end of the output.
        let readers = std::mem::take(&mut self.readers);
        let until = Instant::now() + Duration::from_secs(2);
        for r in readers {
            while !r.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        Outcome { status, stdout: self.stdout(), stderr: self.stderr(), timed_out }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free loopback port on the host (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Writes a file the workload can read (and only read) through the host view.
pub fn world_readable(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write file");
    chmod(path, 0o644);
}

/// Where test directories live. Not under `/tmp`, which every sandbox replaces with its own:
/// when the target directory is there (a clone in `/tmp`, `CARGO_TARGET_DIR=/tmp/…`), tests use
/// `/var/tmp/runnel-tests` instead, so instances can still reach their apps.
pub fn test_base() -> std::path::PathBuf {
    let target = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if target.starts_with("/tmp") { std::path::PathBuf::from("/var/tmp/runnel-tests") } else { target }
}
