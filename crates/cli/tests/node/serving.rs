//! A deployed service runs and answers at its URL with Cloud Run's container contract; two
//! services listen on the same port at once, each in its own sandbox; without sandboxes
//! (`--isolation=none`) a service still serves, and the daemon says it is insecure.

use serde_json::{Value, json};

use std::time::Duration;

use crate::harness::{REGION, Start, World, eventually, processes_with, uid, unique};
use crate::http;

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions}"))
}

/// `SERVICE-00001-abc`: the service name, a five-digit sequence number and three lowercase
/// letters or digits.
#[track_caller]
fn assert_revision_name(service: &str, revision: &str, sequence: u32) {
    let prefix = format!("{service}-{sequence:05}-");
    let suffix = revision.strip_prefix(&prefix).unwrap_or_else(|| panic!("{revision:?} does not start {prefix:?}"));
    assert!(
        suffix.len() == 3 && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "revision {revision:?} does not end in three lowercase letters or digits"
    );
}

#[test]
fn a_deployed_service_is_ready_and_answers_at_its_url_with_the_container_contract() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let marker = unique("hello");
    let out = world.deploy("hello", &marker, &[]);

    let svc = world.service("hello");
    let rev = svc.revision.clone();
    assert_revision_name("hello", &rev, 1);
    let port = daemon.frontend.port();
    let number = svc
        .host
        .strip_prefix("hello-")
        .and_then(|rest| rest.strip_suffix(&format!(".{REGION}.run.localhost")))
        .unwrap_or_else(|| panic!("unexpected service host {:?}", svc.host));
    assert!(number.len() == 12 && number.bytes().all(|b| b.is_ascii_digit()), "project number {number:?}");
    assert_eq!(svc.uri, format!("http://hello-{number}.{REGION}.run.localhost:{port}"));
    assert_eq!(
        out.stdout,
        format!(
            "Service [hello] revision [{rev}] has been deployed and is serving 100 percent of traffic.\n\
             Service URL: {}\n",
            svc.uri
        ),
        "{out}"
    );
    assert_eq!(
        out.stderr.lines().next(),
        Some("Deploying to Cloud Run service [hello] in project [runnel-local] region [local1]"),
        "{out}"
    );

    // The instance gets the contract's variables, the Host the client named, and the client's
    // address as the frontend saw it, not what the client claimed.
    let reply =
        http::try_request(daemon.frontend, &svc.authority, "GET", "/", &[("X-Forwarded-For", "203.0.113.7")], &[])
            .expect("GET /");
    let body = reply.ok_json();
    assert_eq!(
        body,
        json!({
            "service": "hello",
            "revision": rev,
            "configuration": "hello",
            "port": "8080",
            "version": null,
            "host": svc.authority,
            "forwardedFor": ["127.0.0.1"],
            "boot": body["boot"],
            "marker": marker,
        })
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-runnel-request-id").map(str::len), Some(32), "{reply}");

    // The port in Host does not matter for routing, and the instance sees the Host as sent.
    let bare = http::get(daemon.frontend, &svc.host, "/").ok_json();
    assert_eq!(bare["host"], svc.host);
    assert_eq!(bare["boot"], body["boot"], "one instance serves both requests");

    // A host no service has is refused by the frontend itself.
    let unknown = http::get(daemon.frontend, &format!("nothing-{number}.{REGION}.run.localhost:{port}"), "/");
    assert_eq!(unknown.status, 404, "{unknown}");
    assert!(unknown.text().contains("<title>404 Page not found</title>"), "{unknown}");

    let described = world.describe("hello");
    let full = format!("projects/runnel-local/locations/{REGION}/services/hello/revisions/{rev}");
    assert_eq!(described["latestReadyRevision"], full);
    assert_eq!(described["latestCreatedRevision"], full);
    assert_eq!(described["reconciling"], false);
    assert_eq!(described["terminalCondition"]["type"], "Ready");
    assert_eq!(described["terminalCondition"]["state"], "CONDITION_SUCCEEDED");
    for kind in ["RoutesReady", "ConfigurationsReady"] {
        assert_eq!(condition(&described["conditions"], kind)["state"], "CONDITION_SUCCEEDED", "{described}");
    }
    assert_eq!(
        described["trafficStatuses"],
        json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": rev, "percent": 100}])
    );

    let revision = world.describe_revision(&rev);
    assert_eq!(revision["name"], full);
    for kind in ["Ready", "ContainerHealthy"] {
        let c = condition(&revision["conditions"], kind);
        assert_eq!(c["state"], "CONDITION_SUCCEEDED", "{revision}");
        assert!(c.get("message").is_none(), "a healthy condition carries no message: {revision}");
    }
}

#[test]
fn two_services_listen_on_8080_at_once_and_each_answers_with_its_own_name() {
    let world = World::new();
    let daemon = world.start(&Start::default());
    let markers = [unique("alpha"), unique("beta")];
    // Deployed at the same time: neither waits for the other.
    let pending: Vec<_> = [("alpha", &markers[0]), ("beta", &markers[1])]
        .into_iter()
        .map(|(name, marker)| world.spawn_deploy(name, marker, &[]))
        .collect();
    for p in pending {
        p.finish().ok();
    }
    let alpha = world.service("alpha");
    let beta = world.service("beta");

    for _ in 0..3 {
        for (svc, name, marker) in [(&alpha, "alpha", &markers[0]), (&beta, "beta", &markers[1])] {
            let body = http::get(daemon.frontend, &svc.authority, "/").ok_json();
            assert_eq!(body["service"], name);
            assert_eq!(body["revision"], svc.revision.as_str());
            assert_eq!(body["port"], "8080");
            assert_eq!(body["marker"], marker.as_str());
        }
    }

    // Both are live at once, each as its own unprivileged user when the daemon is root.
    let a = processes_with(&markers[0]);
    let b = processes_with(&markers[1]);
    assert_eq!((a.len(), b.len()), (1, 1), "one instance each: {a:?} {b:?}");
    let (ua, ub) = (uid(a[0].pid), uid(b[0].pid));
    assert!(ua.is_some_and(|u| u != 0) && ub.is_some_and(|u| u != 0), "instances run as root: {ua:?} {ub:?}");
    if uid(std::process::id()) == Some(0) {
        assert_ne!(ua, ub, "two instances share a uid");
    }
}

/// `--isolation=none`, for machines without namespaces: the daemon says at start that nothing
/// separates instances, and a service still deploys and answers with Cloud Run's contract (on a
/// free loopback port as `PORT`: bare instances cannot each have 8080), with none of the
/// daemon's environment, and ends with the daemon.
#[test]
fn without_isolation_the_daemon_warns_and_a_service_still_serves_with_the_contract() {
    let world = World::new();
    let secret = unique("daemon-secret");
    let mut daemon = world.start(&Start {
        args: &["--isolation=none"],
        env: &[("RUNNEL_SECRET_MARKER", &secret)],
        ..Start::default()
    });
    let logs = daemon.logs();
    assert!(
        logs.contains("WARNING: --isolation=none: instances run WITHOUT a sandbox")
            && logs.contains("Never run untrusted code this way."),
        "{logs}"
    );
    let marker = unique("bare");
    let out = world.deploy("bare", &marker, &[]);
    let svc = world.service("bare");
    assert!(out.stdout.starts_with(&format!("Service [bare] revision [{}] has been deployed", svc.revision)), "{out}");

    let body = http::get(daemon.frontend, &svc.authority, "/").ok_json();
    assert_eq!(
        (&body["service"], &body["revision"], &body["marker"]),
        (&json!("bare"), &json!(svc.revision), &json!(marker))
    );
    let port: u16 = body["port"].as_str().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("PORT {body}"));
    assert!(port > 0, "{body}");

    let seen =
        http::try_request(daemon.frontend, &svc.authority, "POST", "/check", &[], br#"{"ports": [], "paths": []}"#)
            .expect("POST /check")
            .ok_json();
    let env = seen["env"].as_object().expect("the instance's environment");
    assert!(
        !env.values().any(|v| v.as_str().is_some_and(|v| v.contains(&secret))),
        "the daemon's environment leaked: {seen}"
    );
    assert_eq!(env.get("K_SERVICE"), Some(&json!("bare")));

    assert_eq!(processes_with(&marker).len(), 1, "one instance process runs the app");
    let (status, _, _) = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.logs());
    eventually("the instance to end with the daemon", Duration::from_secs(5), || {
        processes_with(&marker).is_empty().then_some(())
    });
}
