//! A new revision takes traffic only once it is ready: one that fails to start takes none and
//! the deploy says why, and a good one replaces the old without a failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    REGION, Start, Svc, World, eventually, last, processes_with, unique, wait_for_processes, wait_until_dead,
};
use crate::http::{self, Conn};

fn full_revision(service: &str, revision: &str) -> String {
    format!("projects/runnel-local/locations/{REGION}/services/{service}/revisions/{revision}")
}

fn ready_condition(revision: &Value) -> &Value {
    revision["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition: {revision}"))
}

/// Deploys v1 of `shop`, then a v2 that never becomes ready; asserts the deploy's failure
/// (exit 1, exactly one error naming the revision, `reason` and the app's last output), that
/// v1 still serves every request, and what `describe` says.
fn a_failed_v2_leaves_v1_serving(startup_deadline: u64, mode: &str, reason: &str, last_line: &str) {
    let world = World::new();
    let daemon = world.start(&Start { startup_deadline: Some(startup_deadline), ..Start::default() });
    let v1_marker = unique("shop-v1");
    world.deploy("shop", &v1_marker, &["--set-env-vars=APP_VERSION=v1"]);
    let v1 = world.service("shop");

    let v2_marker = unique("shop-v2");
    let started = Instant::now();
    let out = world.spawn_deploy("shop", &format!("{v2_marker},{mode}"), &["--set-env-vars=APP_VERSION=v2"]).finish();
    let took = started.elapsed();
    let described = world.describe("shop");
    let v2 = last(&described["latestCreatedRevision"]);
    assert_ne!(v2, v1.revision, "no new revision was created: {described}");

    let last_line = last_line.replace("MARKER", &v2_marker);
    let sentence = reason
        .chars()
        .next()
        .map(|c| c.to_uppercase().chain(reason.chars().skip(1)).collect::<String>())
        .unwrap_or_default();
    let message =
        format!("Revision '{v2}' is not ready and cannot serve traffic. {sentence}. Last output:\n{last_line}");
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert!(
        out.stderr.ends_with(&format!("\nERROR: (runnel run deploy) {message}\n")),
        "the deploy did not end with the expected error:\n{out}"
    );
    assert_eq!(out.stderr.matches("ERROR:").count(), 1, "{out}");
    assert!(took < Duration::from_secs(startup_deadline + 10), "the failed deploy took {took:?}");
    if mode == "hang" {
        assert!(took >= Duration::from_secs(startup_deadline), "the deploy failed before the deadline: {took:?}");
    }

    // v1 keeps every request.
    for _ in 0..5 {
        let body = http::get(daemon.frontend, &v1.authority, "/").ok_json();
        assert_eq!((body["revision"].as_str(), body["version"].as_str()), (Some(v1.revision.as_str()), Some("v1")));
    }

    assert_eq!(described["latestReadyRevision"], full_revision("shop", &v1.revision), "{described}");
    assert_eq!(described["latestCreatedRevision"], full_revision("shop", &v2), "{described}");
    assert_eq!(
        described["terminalCondition"],
        json!({
            "type": "Ready",
            "state": "CONDITION_FAILED",
            "message": message,
            "lastTransitionTime": described["terminalCondition"]["lastTransitionTime"],
        }),
        "{described}"
    );
    assert_eq!(
        described["trafficStatuses"],
        json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": v1.revision, "percent": 100}]),
        "{described}"
    );
    let revision = world.describe_revision(&v2);
    let ready = ready_condition(&revision);
    assert_eq!(ready["state"], "CONDITION_FAILED", "{revision}");
    assert_eq!(ready["message"], format!("{reason}. Last output:\n{last_line}"), "{revision}");

    // Nothing of v2 keeps running.
    let left = wait_until_dead(&processes_with(&v2_marker).iter().map(|p| p.pid).collect::<Vec<_>>(), secs(5));
    assert_eq!(left, Vec::<u32>::new(), "v2's instance outlived its failure");

    // A good v3 still deploys and takes over.
    let v3_marker = unique("shop-v3");
    world.deploy("shop", &v3_marker, &["--set-env-vars=APP_VERSION=v3"]);
    let v3 = world.service("shop");
    let body = http::get(daemon.frontend, &v3.authority, "/").ok_json();
    assert_eq!((body["revision"].as_str(), body["version"].as_str()), (Some(v3.revision.as_str()), Some("v3")));
    assert_eq!(world.describe("shop")["terminalCondition"]["state"], "CONDITION_SUCCEEDED");
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_revision_that_exits_at_start_takes_no_traffic_and_the_deploy_says_why() {
    a_failed_v2_leaves_v1_serving(
        5,
        "exit",
        "the instance exited (exit status: 3) before anything listened on port 8080",
        "fatal: MARKER cannot start: no configuration",
    );
}

#[test]
fn a_revision_that_never_listens_fails_at_the_startup_deadline_and_is_stopped() {
    a_failed_v2_leaves_v1_serving(
        3,
        "hang",
        "nothing listened on port 8080 within 3s (the startup deadline); the process must listen on $PORT",
        "MARKER is thinking about listening",
    );
}

/// What one client saw: the version that answered, or why the request failed.
type Seen = Vec<Result<String, String>>;

/// Sends requests until `stop`: on a fresh connection each time, or on one kept-alive
/// connection (reopened only after an error, which is recorded).
fn client_loop(frontend: std::net::SocketAddr, svc: Svc, keep_alive: bool, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Vec::new();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let reply = if keep_alive {
            let c = match conn.take() {
                Some(c) => Ok(c),
                None => Conn::open(frontend, &svc.authority),
            };
            c.and_then(|mut c| {
                let r = c.request("GET", "/", &[], &[]);
                conn = Some(c);
                r
            })
        } else {
            http::try_request(frontend, &svc.authority, "GET", "/", &[], &[])
        };
        seen.push(match reply {
            Ok(r) if r.status == 200 => Ok(r.json()["version"].as_str().unwrap_or_default().to_string()),
            Ok(r) => Err(format!("{r}")),
            Err(e) => {
                conn = None;
                Err(e.to_string())
            }
        });
    }
    seen
}

#[test]
fn a_good_revision_replaces_the_old_one_without_a_failed_request() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let v1_marker = unique("steady-v1");
    world.deploy("steady", &v1_marker, &["--set-env-vars=APP_VERSION=v1"]);
    let svc = world.service("steady");
    let v1_pid = wait_for_processes(&v1_marker, 1, secs(5))[0].pid;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [false, true]
        .into_iter()
        .map(|keep_alive| {
            let (svc, stop) = (svc.clone(), stop.clone());
            let frontend = daemon.frontend;
            thread::spawn(move || client_loop(frontend, svc, keep_alive, stop))
        })
        .collect();
    // Both clients are answered by v1 before the deploy starts.
    thread::sleep(Duration::from_millis(300));

    let v2_marker = unique("steady-v2");
    world.deploy("steady", &v2_marker, &["--set-env-vars=APP_VERSION=v2"]);
    // Keep the load on while v1 drains and stops, and a little after.
    let left = wait_until_dead(&[v1_pid], secs(15));
    assert_eq!(left, Vec::<u32>::new(), "v1's instance was not stopped after v2 took over");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    for (n, client) in clients.into_iter().enumerate() {
        let seen = client.join().expect("a client thread");
        let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "client {n}: {} of {} requests failed: {failed:?}", failed.len(), seen.len());
        let versions: Vec<&str> = seen.iter().filter_map(|r| r.as_deref().ok()).collect();
        assert!(versions.len() >= 20, "client {n} sent only {} requests", versions.len());
        let switch = versions.iter().position(|v| *v == "v2").unwrap_or_else(|| panic!("client {n}: no v2"));
        assert!(switch > 0, "client {n} never saw v1");
        assert!(
            versions[..switch].iter().all(|v| *v == "v1") && versions[switch..].iter().all(|v| *v == "v2"),
            "client {n} did not switch once from v1 to v2: {versions:?}"
        );
    }
}

/// A request that waits on a revision for an instance (here: one restarting after a crash, held
/// from listening) is served by the revision that replaces it, as soon as that one is ready: the
/// old revision's pool refuses it the moment it stops, and the frontend routes it again. It
/// used to wait out the startup deadline on a pool that would only drain, then get 503.
#[test]
fn a_request_waiting_on_a_replaced_revision_is_served_by_the_new_one() {
    const STARTUP: u64 = 25;
    let world = World::new();
    let daemon = world.start(&Start { startup_deadline: Some(STARTUP), ..Start::default() });
    let v1_marker = unique("relay-v1");
    world.deploy("relay", &v1_marker, &["--max-instances=1", "--set-env-vars=APP_VERSION=v1"]);
    let svc = world.service("relay");
    assert_eq!(http::get(daemon.frontend, &svc.authority, "/").ok_json()["version"], "v1");

    // v1's only instance crashes and its restart is held: it will not listen again.
    std::fs::write(world.hold_path(), b"").expect("create the hold file");
    assert_eq!(http::get(daemon.frontend, &svc.authority, "/crash").status, 502);
    wait_for_crash_report(&world, &svc.revision);
    let frontend = daemon.frontend;
    let authority = svc.authority.clone();
    let waiting = thread::spawn(move || http::get(frontend, &authority, "/"));
    // Only v1 exists while this request arrives, so it can only be waiting on v1's pool.
    thread::sleep(Duration::from_secs(1));

    // v2 does not look at the hold file, starts and takes the traffic; v1 stops.
    let v2_marker = unique("relay-v2");
    let deployed = Instant::now();
    world.deploy("relay", &v2_marker, &["--max-instances=1", "--set-env-vars=APP_VERSION=v2,APP_HOLD=no-hold"]);
    let reply = waiting.join().expect("the waiting request's thread");
    std::fs::remove_file(world.hold_path()).expect("remove the hold file");
    assert_eq!(reply.status, 200, "the request that waited on v1: {reply}");
    assert_eq!(reply.json()["version"], "v2", "{reply}");
    assert!(
        deployed.elapsed() < Duration::from_secs(STARTUP - 5),
        "the waiting request was answered {:?} after v2's deploy began, near v1's startup deadline ({STARTUP} s)",
        deployed.elapsed()
    );
}

/// The service is deleted while a request waits for an instance of its only revision: the
/// request is answered 503 as the revision stops, saying so, instead of waiting out the startup
/// deadline for a page that blames a failing start.
#[test]
fn a_request_waiting_on_a_deleted_service_gets_503_when_its_revision_stops() {
    const STARTUP: u64 = 25;
    let world = World::new();
    let daemon = world.start(&Start { startup_deadline: Some(STARTUP), ..Start::default() });
    world.deploy("doomed", &unique("doomed"), &["--max-instances=1"]);
    let svc = world.service("doomed");
    assert_eq!(http::get(daemon.frontend, &svc.authority, "/").status, 200);

    // The only instance crashes and its restart is held, so the next request waits.
    std::fs::write(world.hold_path(), b"").expect("create the hold file");
    assert_eq!(http::get(daemon.frontend, &svc.authority, "/crash").status, 502);
    wait_for_crash_report(&world, &svc.revision);
    let (frontend, authority) = (daemon.frontend, svc.authority.clone());
    let waiting = thread::spawn(move || http::get(frontend, &authority, "/"));
    thread::sleep(Duration::from_secs(1));

    let deleted = Instant::now();
    world.cli(&["run", "services", "delete", "doomed"]).ok();
    let reply = waiting.join().expect("the waiting request's thread");
    std::fs::remove_file(world.hold_path()).expect("remove the hold file");
    assert_eq!(reply.status, 503, "{reply}");
    assert!(reply.text().contains("stopped serving while the request waited"), "{reply}");
    assert!(reply.text().contains("gets 404 if the service no longer exists"), "{reply}");
    assert!(
        deleted.elapsed() < Duration::from_secs(STARTUP - 5),
        "the waiting request was answered {:?} after the delete began, near the startup deadline ({STARTUP} s)",
        deleted.elapsed()
    );
    // Gone for good: the host is not routed any more.
    assert_eq!(http::get(daemon.frontend, &svc.authority, "/").status, 404);
}

/// Waits until `revision` reports its instance's crash (`ContainerHealthy` failed): from then on
/// a request waits for a new instance instead of reaching the dying one.
fn wait_for_crash_report(world: &World, revision: &str) {
    eventually("the revision reports the crash", Duration::from_secs(5), || {
        let described = world.describe_revision(revision);
        let conditions = described["conditions"].as_array().cloned().unwrap_or_default();
        conditions.iter().any(|c| c["type"] == "ContainerHealthy" && c["state"] == "CONDITION_FAILED").then_some(())
    });
}
