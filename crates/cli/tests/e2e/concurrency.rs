//! Concurrent IAM edits: the etag makes a lost update impossible, and the CLI's
//! read-modify-write retries so that every concurrent `add-iam-policy-binding` lands.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::Sandbox;

fn invokers(policy: &Value) -> BTreeSet<String> {
    policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == "roles/run.invoker")
        .flat_map(|b| b["members"].as_array().into_iter().flatten())
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

/// Starts `writers` CLI processes at once, each granting one user `roles/run.invoker` on
/// `receiver`, and checks every one succeeded and the final policy holds every member.
fn concurrent_bindings(writers: usize) {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    sb.cli(&["run", "deploy", "receiver", "--command=true", "--ingress=internal"]).ok();

    let members: Vec<String> = (0..writers).map(|n| format!("user:u{n}@example.com")).collect();
    let pending: Vec<_> = members
        .iter()
        .map(|m| {
            sb.spawn_cli(
                &[
                    "run",
                    "services",
                    "add-iam-policy-binding",
                    "receiver",
                    &format!("--member={m}"),
                    "--role=roles/run.invoker",
                ],
                &[],
            )
        })
        .collect();
    let outs: Vec<_> = pending.into_iter().map(|p| p.finish()).collect();
    let failed: Vec<String> = outs.iter().filter(|o| o.code != Some(0)).map(ToString::to_string).collect();
    assert!(failed.is_empty(), "{} of {writers} concurrent edits failed:\n{}", failed.len(), failed.join("\n"));
    for out in &outs {
        assert_eq!(out.stderr, "Updated IAM policy for service [receiver].\n", "{out}");
    }

    let policy = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).json();
    let expected: BTreeSet<String> = members.into_iter().collect();
    assert_eq!(invokers(&policy), expected);
}

/// With N writers, one writer's edit can be overtaken at most N-1 times, so the CLI's eight
/// retries always suffice for nine concurrent writers.
#[test]
fn nine_concurrent_binding_edits_all_land() {
    concurrent_bindings(9);
}

#[test]
fn twelve_concurrent_binding_edits_all_land() {
    concurrent_bindings(12);
}

#[test]
fn a_stale_etag_is_refused_and_changes_nothing() {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    sb.cli(&["run", "deploy", "receiver", "--command=true", "--ingress=internal"]).ok();

    // Read the policy, let someone else change it, then write back what was read.
    let stale = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).ok();
    let file = sb.path("stale-policy.json");
    let mut edited: Value = serde_json::from_str(&stale.stdout).expect("policy JSON");
    edited["bindings"] = serde_json::json!([{ "role": "roles/run.invoker", "members": ["allUsers"] }]);
    std::fs::write(&file, serde_json::to_string(&edited).expect("JSON")).expect("write the policy file");
    sb.cli(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        "--member=user:bob@example.com",
        "--role=roles/run.invoker",
    ])
    .ok();
    let before = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).json();

    let out = sb.cli(&["run", "services", "set-iam-policy", "receiver", &file.display().to_string()]);
    assert_eq!(
        out.api_error("run services set-iam-policy", "ABORTED"),
        "the policy changed since it was read (its etag is stale); read it again, apply your change, and retry"
    );
    let after = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).json();
    assert_eq!(after, before);
    assert_eq!(invokers(&after), BTreeSet::from(["user:bob@example.com".to_string()]));

    // Without an etag the write is unconditional, as in Google's API.
    let mut fresh = edited.clone();
    if let Some(o) = fresh.as_object_mut() {
        o.remove("etag");
    }
    std::fs::write(&file, serde_json::to_string(&fresh).expect("JSON")).expect("write the policy file");
    let out = sb.cli(&["run", "services", "set-iam-policy", "receiver", &file.display().to_string(), "--format=json"]);
    assert_eq!(out.stderr, "Updated IAM policy for service [receiver].\n", "{out}");
    assert_eq!(invokers(&out.json()), BTreeSet::from(["allUsers".to_string()]));
}

/// With twelve concurrent writers, one writer's edit can legitimately be overtaken by each of
/// the eleven others. A fake API plays that out deterministically: eleven ABORTED answers, then
/// success. The CLI should keep going and land the edit.
#[test]
fn an_edit_overtaken_by_eleven_concurrent_writers_still_lands() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    use serde_json::json;

    const OVERTAKEN: usize = 11;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sets = Arc::new(AtomicUsize::new(0));
    let counter = sets.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let counter = counter.clone();
        async move {
            let policy = json!({ "version": 1, "etag": "AAAAAAAAAAE=", "bindings": [] });
            if uri.path().ends_with(":getIamPolicy") {
                return axum::Json(policy).into_response();
            }
            if counter.fetch_add(1, Ordering::SeqCst) < OVERTAKEN {
                let error = json!({ "error": { "code": 409, "status": "ABORTED", "message": "the policy changed" } });
                return (StatusCode::CONFLICT, axum::Json(error)).into_response();
            }
            axum::Json(policy).into_response()
        }
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("address");
    runtime.spawn(async move { axum::serve(listener, app).await });

    let sb = Sandbox::new();
    let out = sb.cli_env(
        &[
            "run",
            "services",
            "add-iam-policy-binding",
            "receiver",
            "--member=user:late@example.com",
            "--role=roles/run.invoker",
            &format!("--api-url=http://{addr}"),
            "--project=e2e-project",
        ],
        &[("RUNNEL_CREDENTIAL", "rnl_fake")],
    );
    let attempts = sets.load(Ordering::SeqCst);
    assert_eq!(out.code, Some(0), "the CLI gave up after {attempts} attempts:\n{out}");
    assert_eq!(attempts, OVERTAKEN + 1);
}
