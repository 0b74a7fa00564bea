//! `runnel demo`, as a user runs it: the real binary, run from where cargo builds it, on its
//! own daemon and sandboxes. Each step's status and reason are asserted in what it prints, and
//! after it ends (by itself with `--exit`, or by Ctrl-C) no process of it may remain — the
//! sandboxes and the instances in them included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runnel");

/// A process as `/proc` shows it: pid and start time, so a reused pid is not mistaken for it.
type Proc = (u32, u64);

/// Every process: (pid, start time) → parent pid.
fn processes() -> BTreeMap<Proc, u32> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name is in parentheses and may hold spaces: fields follow the last `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(start)) = (fields.get(1), fields.get(19)) else { continue };
        all.insert((pid, start.parse().unwrap_or(0)), ppid.parse().unwrap_or(0));
    }
    all
}

/// `root` and every process below it.
fn tree(root: u32) -> BTreeSet<Proc> {
    let all = processes();
    let mut found: BTreeSet<Proc> = all.keys().filter(|(pid, _)| *pid == root).copied().collect();
    loop {
        let pids: BTreeSet<u32> = found.iter().map(|(pid, _)| *pid).collect();
        let more: Vec<Proc> =
            all.iter().filter(|(p, ppid)| pids.contains(ppid) && !found.contains(p)).map(|(p, _)| *p).collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The demo, running, with what it printed so far and every process it has had.
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    /// Every process the demo has had, with its command line when first seen.
    seen: BTreeMap<Proc, String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        Demo::start_from(BIN, args)
    }

    fn start_from(exe: &str, args: &[&str]) -> Demo {
        let mut child = Command::new(exe)
            .arg("demo")
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUNNEL_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut t = sink.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Demo { child, out, err, seen: BTreeMap::new() }
    }

    fn output(&self) -> String {
        format!("{}\n--- stderr ---\n{}", self.out.lock().unwrap(), self.err.lock().unwrap())
    }

    /// Watches the demo's process tree until `done` says so, or the demo exits.
    fn watch_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            for p in tree(self.child.id()) {
                self.seen.entry(p).or_insert_with(|| cmdline(p.0));
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if done(&self.out.lock().unwrap()) {
                return None;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{what} did not happen within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The demo's own directory, as it printed it.
    fn root(&self) -> String {
        let out = self.out.lock().unwrap();
        let line =
            out.lines().find(|l| l.trim_start().starts_with("state:")).expect("the demo prints its state directory");
        line.split_whitespace().nth(1).unwrap().trim_end_matches("/home").to_string()
    }

    /// Nothing of the demo is left: none of the processes it ever had, and none that runs
    /// from its directory.
    #[track_caller]
    fn assert_nothing_left(&self, root: &str) {
        // The instances ran, in their sandboxes, from the demo's directory: the check below
        // covers them.
        let instances = self.seen.values().filter(|c| c.contains(root) && c.contains("__demo-app")).count();
        assert!(instances >= 2, "no instance of the demo's apps was seen: {:?}\n{}", self.seen, self.output());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive: Vec<Proc> = processes().keys().filter(|p| self.seen.contains_key(p)).copied().collect();
            let from_root: Vec<u32> =
                processes().keys().map(|(pid, _)| *pid).filter(|pid| cmdline(*pid).contains(root)).collect();
            if alive.is_empty() && from_root.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = alive.iter().map(|(p, _)| format!("{p}: {}", cmdline(*p))).collect();
                panic!("processes of the demo remain: {names:?} {from_root:?}\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines of the output from the first that contains `from`.
fn after<'a>(out: &'a str, from: &str) -> &'a str {
    let at = out.find(from).unwrap_or_else(|| panic!("`{from}` is not in the output:\n{out}"));
    &out[at..]
}

/// Each step, in order: its commands and what the call got, with the reason.
#[track_caller]
fn assert_the_steps(out: &str) {
    assert!(!out.contains("UNEXPECTED"), "{out}");
    let step = |n: usize| after(out, &format!("Step {n} of 5"));
    let s1 = step(1);
    assert!(s1.contains("$ runnel run deploy receiver --command="), "{out}");
    assert!(s1.contains("--args=__demo-app,receiver --allow-unauthenticated"), "{out}");
    assert!(after(s1, "caller → receiver:").lines().nth(1).unwrap().contains("200 OK"), "{out}");
    assert!(s1.contains("called by ") && s1.contains("-compute@developer.gserviceaccount.com"), "{out}");

    let s2 = step(2);
    assert!(s2.contains("$ runnel run services update receiver --ingress=internal"), "{out}");
    let call = after(s2, "caller → receiver:").lines().nth(1).unwrap();
    assert!(call.contains("404 Not Found, reason ingress.internal_only.from_internet"), "{call}\n{out}");

    let s3 = step(3);
    assert!(s3.contains("$ runnel compute networks vpc-access connectors create conn --region=local1 --network=vpc --range=10.8.0.0/28"), "{out}");
    assert!(
        s3.contains("$ runnel run services update caller --vpc-connector=conn --vpc-egress=private-ranges-only"),
        "{out}"
    );
    let call = after(s3, "caller → receiver:").lines().nth(1).unwrap();
    assert!(
        call.contains("404 Not Found, reason egress.private_ranges_only.service_url_left_directly"),
        "{call}\n{out}"
    );

    let s4 = step(4);
    assert!(s4.contains("$ runnel run services update caller --vpc-egress=all-traffic"), "{out}");
    let call = after(s4, "caller → receiver:").lines().nth(1).unwrap();
    assert!(call.contains("403 Forbidden, reason iam.no_binding"), "{call}\n{out}");

    let s5 = step(5);
    assert!(s5.contains("$ runnel iam service-accounts create caller"), "{out}");
    assert!(s5.contains("$ runnel run services add-iam-policy-binding receiver --member=serviceAccount:caller@runnel-local.iam.gserviceaccount.com --role=roles/run.invoker"), "{out}");
    assert!(
        s5.contains(
            "$ runnel run services update caller --service-account=caller@runnel-local.iam.gserviceaccount.com"
        ),
        "{out}"
    );
    let call = after(s5, "caller → receiver:").lines().nth(1).unwrap();
    assert!(
        call.contains("200 OK") && call.contains("called by caller@runnel-local.iam.gserviceaccount.com"),
        "{call}\n{out}"
    );

    let host = after(out, "And from this machine");
    assert!(
        host.lines().nth(2).unwrap().contains("404 Not Found, reason ingress.internal_only.from_internet"),
        "{out}"
    );
    // Every result comes with its reason in words.
    assert_eq!(out.matches("    why: ").count(), 6, "{out}");
}

#[test]
fn the_demo_walks_the_guide_and_exits_leaving_nothing_running() {
    let mut demo = Demo::start(&["--exit"]);
    let status = demo.watch_until("the demo's end", Duration::from_secs(600), |_| false).unwrap();
    let out = demo.output();
    assert!(status.success(), "{out}");
    assert_the_steps(&out);
    assert!(!out.contains("Press Ctrl-C"), "--exit does not wait: {out}");
    let root = demo.root();
    demo.assert_nothing_left(&root);
    assert!(!std::path::Path::new(&root).exists(), "{root} is left behind");
}

#[test]
fn ctrl_c_stops_the_demo_and_everything_it_started() {
    let mut demo = Demo::start(&[]);
    let ended = demo.watch_until("the demo's last step", Duration::from_secs(600), |out| out.contains("Press Ctrl-C"));
    assert!(ended.is_none(), "the demo ended by itself: {}", demo.output());
    assert_the_steps(&demo.output());
    let root = demo.root();
    // While it waits, both apps are running.
    let running = tree(demo.child.id()).iter().filter(|(pid, _)| cmdline(*pid).contains("__demo-app")).count();
    assert!(running >= 2, "the demo's apps are not running:\n{}", demo.output());

    Command::new("kill").arg("-INT").arg(demo.child.id().to_string()).status().unwrap();
    let status = demo.watch_until("the stop after Ctrl-C", Duration::from_secs(60), |_| false).unwrap();
    assert!(status.success(), "{}", demo.output());
    assert!(demo.output().contains("Stopped;"), "{}", demo.output());
    demo.assert_nothing_left(&root);
    assert!(!std::path::Path::new(&root).exists(), "{root} is left behind");
}

#[test]
fn the_demo_runs_from_an_executable_no_instance_may_read() {
    // As from a checkout under a 0700 home: instances' uids cannot read this copy, so the demo
    // must give its sandboxes and apps one they can.
    let private = tempfile::tempdir().unwrap();
    let exe = private.path().join("runnel");
    std::fs::copy(BIN, &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut demo = Demo::start_from(exe.to_str().unwrap(), &["--exit"]);
    let status = demo.watch_until("the demo's end", Duration::from_secs(600), |_| false).unwrap();
    assert!(status.success(), "{}", demo.output());
    assert_the_steps(&demo.output());
    let root = demo.root();
    demo.assert_nothing_left(&root);
}
