//! Instances over time: a crashed one is restarted while requests wait a bounded time, a
//! restarted daemon brings its services back without a deploy, and no instance outlives the
//! daemon, however it ends.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Daemon, Start, World, eventually, parent, processes_with, unique, wait_for_processes, wait_until_dead,
};
use crate::http;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn container_healthy(revision: &Value) -> Value {
    revision["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == "ContainerHealthy"))
        .cloned()
        .unwrap_or_else(|| panic!("no ContainerHealthy condition: {revision}"))
}

#[test]
fn a_crashed_instance_is_restarted_and_requests_meanwhile_wait_a_bounded_time() {
    let world = World::new();
    let daemon = world.start(&Start { startup_deadline: Some(3), ..Start::default() });
    let marker = unique("phoenix");
    world.deploy("phoenix", &marker, &["--max-instances=1"]);
    let svc = world.service("phoenix");
    let first = http::get(daemon.frontend, &svc.authority, "/").ok_json();
    let first_pid = wait_for_processes(&marker, 1, secs(5))[0].pid;
    let ids: Vec<String> = fs::read_dir(world.home().join("i"))
        .expect("the instances directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // The restarted instance will not listen until the hold file goes, so the test sees the
    // wait for it end.
    fs::write(world.hold_path(), b"").expect("create the hold file");
    let crash = http::get(daemon.frontend, &svc.authority, "/crash");
    assert_eq!(crash.status, 502, "the request that crashed the instance: {crash}");
    assert!(crash.text().contains("closed the connection before sending a complete response"), "{crash}");

    // The revision says so, naming the instance, the exit and the app's last words.
    let healthy = eventually("ContainerHealthy reports the crash", secs(3), || {
        let c = container_healthy(&world.describe_revision(&svc.revision));
        (c["state"] == "CONDITION_FAILED").then_some(c)
    });
    let message = healthy["message"].as_str().unwrap_or_default();
    let head = format!("instance {} of revision `{}` exited (exit status: 1). Last output:\n", ids[0], svc.revision);
    assert!(message.starts_with(&head), "{message:?} does not start with {head:?}");
    let tail = format!("\n{marker} crashing on request; restarting with backoff");
    assert!(message.ends_with(&tail), "{message:?} does not end with {tail:?}");

    // While no instance is ready, a request waits for one up to the startup deadline (3 s),
    // then gets 503.
    let waited = http::get(daemon.frontend, &svc.authority, "/");
    assert_eq!(waited.status, 503, "{waited}");
    assert!(waited.text().contains("no instance became ready in time"), "{waited}");
    assert!(
        waited.elapsed >= Duration::from_millis(2500) && waited.elapsed < secs(10),
        "the 503 came after {:?}, not at the 3 s startup deadline",
        waited.elapsed
    );

    // Once the app can start again, requests succeed, served by a new process.
    fs::remove_file(world.hold_path()).expect("remove the hold file");
    let started = Instant::now();
    let back = eventually("the restarted instance answers", secs(20), || {
        let r = http::get(daemon.frontend, &svc.authority, "/");
        assert!(r.status == 200 || r.status == 503, "while restarting: {r}");
        assert!(r.elapsed < secs(10), "a request waited {:?}", r.elapsed);
        (r.status == 200).then(|| r.json())
    });
    assert!(started.elapsed() < secs(20));
    assert_ne!(back["boot"], first["boot"], "the same process answered");
    for _ in 0..3 {
        assert_eq!(http::get(daemon.frontend, &svc.authority, "/").ok_json()["boot"], back["boot"]);
    }
    let now = wait_for_processes(&marker, 1, secs(5));
    assert_ne!(now[0].pid, first_pid);
    // Healthy again: the condition reports the instance as it is now.
    let healthy = eventually("ContainerHealthy recovers", secs(5), || {
        let c = container_healthy(&world.describe_revision(&svc.revision));
        (c["state"] == "CONDITION_SUCCEEDED").then_some(c)
    });
    assert!(healthy.get("message").is_none(), "{healthy}");
}

#[test]
fn a_restarted_daemon_serves_its_services_again_without_a_deploy() {
    let world = World::new();
    let mut daemon = world.start(&Start::default());
    let marker = unique("durable");
    world.deploy("durable", &marker, &[]);
    let svc = world.service("durable");
    let first = http::get(daemon.frontend, &svc.authority, "/").ok_json();
    let pid = wait_for_processes(&marker, 1, secs(5))[0].pid;
    let frontend = daemon.frontend;

    let (status, stdout, _) = daemon.stop();
    assert!(status.success(), "the daemon stopped with {status}");
    assert!(stdout.ends_with("runnel stopped.\n"), "{stdout}");
    assert_eq!(wait_until_dead(&[pid], secs(5)), Vec::<u32>::new(), "the instance outlived the daemon");
    assert!(http::try_request(frontend, &svc.authority, "GET", "/", &[], &[]).is_err(), "nothing should listen");

    // Same home, same frontend address: the very first request is answered, by a new
    // instance of the same revision, at the same URL.
    let daemon = world.start(&Start { frontend: Some(frontend), ..Start::default() });
    let reply = http::get(daemon.frontend, &svc.authority, "/");
    let body = reply.ok_json();
    assert_eq!(body["revision"], svc.revision.as_str());
    assert_ne!(body["boot"], first["boot"]);
    let again = world.service("durable");
    assert_eq!((again.uri, again.revision), (svc.uri, svc.revision));
    assert_eq!(world.describe("durable")["terminalCondition"]["state"], "CONDITION_SUCCEEDED");
}

/// Every process of the sandboxes behind instances with these markers: the app, and above
/// it the sandbox's two stages, up to (not including) the daemon.
fn instance_trees(daemon: &Daemon, markers: &[(&str, usize)]) -> Vec<u32> {
    let mut pids = Vec::new();
    for (marker, n) in markers {
        for p in wait_for_processes(marker, *n, secs(5)) {
            let mut chain = vec![p.pid];
            let mut at = p.pid;
            while let Some(up) = parent(at) {
                if up == daemon.pid || up <= 1 {
                    break;
                }
                chain.push(up);
                at = up;
            }
            assert_eq!(parent(at), Some(daemon.pid), "{p:?} is not a descendant of the daemon: {chain:?}");
            assert_eq!(chain.len(), 3, "expected app, sandbox init and stage 1: {chain:?}");
            pids.extend(chain);
        }
    }
    pids
}

/// Deploys two services (one with two instances) and returns the daemon, the world and every
/// process of their sandboxes.
fn running_instances(markers: &[String; 2]) -> (World, Daemon, Vec<u32>) {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let a = world.spawn_deploy("pair", &markers[0], &["--min-instances=2"]);
    let b = world.spawn_deploy("single", &markers[1], &[]);
    a.finish().ok();
    b.finish().ok();
    let pids = instance_trees(&daemon, &[(&markers[0], 2), (&markers[1], 1)]);
    (world, daemon, pids)
}

#[test]
fn no_instance_outlives_a_daemon_stopped_with_sigterm() {
    let markers = [unique("term-pair"), unique("term-single")];
    let (_world, mut daemon, pids) = running_instances(&markers);
    let (status, _, took) = daemon.stop();
    assert!(status.success(), "the daemon stopped with {status}");
    assert!(took < secs(5), "apps that exit on SIGTERM should not hold the daemon for {took:?}");
    assert_eq!(wait_until_dead(&pids, secs(5)), Vec::<u32>::new(), "sandbox processes outlived the daemon");
    for m in &markers {
        assert_eq!(processes_with(m), vec![], "an instance outlived the daemon");
    }
}

/// Found by this test: stage 1 asks for SIGKILL on its parent's death first
/// (`crates/runtime/src/sandbox/init.rs`, `stage1_main`) and then, for a root daemon, changes
/// its uid and gid to the instance's (`enter_namespaces`: `setresgid`/`setresuid`). The kernel
/// clears the parent-death signal on any change of the effective uid or gid (prctl(2),
/// `PR_SET_PDEATHSIG`), so when a root daemon is killed, every stage 1 survives, is reparented
/// to init, and keeps its sandbox and app running for good; a restarted daemon deletes their
/// directories (`up.rs` removes `HOME/i`) and never stops them.
#[test]
fn no_instance_outlives_a_daemon_killed_with_sigkill() {
    let markers = [unique("kill-pair"), unique("kill-single")];
    let (_world, mut daemon, pids) = running_instances(&markers);
    daemon.kill9();
    assert_eq!(wait_until_dead(&pids, secs(5)), Vec::<u32>::new(), "sandbox processes outlived the daemon");
    for m in &markers {
        assert_eq!(processes_with(m), vec![], "an instance outlived the daemon");
    }
}

#[test]
fn an_app_that_ignores_sigterm_is_killed_ten_seconds_later() {
    let world = World::new();
    let mut daemon = world.start(&Start::default());
    let marker = unique("stubborn");
    world.deploy("stubborn", &format!("{marker},stubborn"), &[]);
    let pids = instance_trees(&daemon, &[(&marker, 1)]);

    let (status, _, took) = daemon.stop();
    assert!(status.success(), "the daemon stopped with {status}");
    assert!(took >= secs(10) && took < secs(15), "SIGKILL should follow SIGTERM after 10 s, not {took:?}");
    assert_eq!(wait_until_dead(&pids, secs(5)), Vec::<u32>::new(), "sandbox processes outlived the daemon");
    // It was asked first.
    let log = fs::read_to_string(world.home().join("logs/local1/stubborn/instances.jsonl")).expect("the log");
    assert!(log.contains(&format!("{marker} ignores SIGTERM")), "{log}");
}
