//! What runnel refuses, and that each refusal is one line saying what happened and what to do,
//! with exit code 1 and nothing changed.

use std::net::TcpListener;

use serde_json::json;

use crate::harness::{FRONTEND, PROJECT, Sandbox, account_email, guide_setup, mode, read_daemon_json, table};

fn short_revision(sb: &Sandbox, service: &str) -> String {
    let s = sb.cli(&["run", "services", "describe", service, "--format=json"]).json();
    s["latestReadyRevision"].as_str().and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_string()
}

#[test]
fn a_connector_in_another_region_is_refused_naming_both_regions() {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    guide_setup(&sb);

    let out = sb.cli(&["run", "deploy", "x", "--command=a", "--vpc-connector=conn", "--region=local2"]);
    let msg = out.api_error("run deploy", "INVALID_ARGUMENT");
    assert_eq!(
        msg,
        "connector `conn` is in region `local1`, but the service is in region `local2`; a connector serves only \
         services in its own region, so create one in `local2` or deploy the service to `local1`"
    );
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.lines().next(),
        Some(format!("Deploying to Cloud Run service [x] in project [{PROJECT}] region [local2]").as_str())
    );
    assert_eq!(out.stderr.lines().count(), 2, "{out}");

    // Naming the connector in full does not get around the check.
    let full = format!("--vpc-connector=projects/{PROJECT}/locations/local1/connectors/conn");
    let out = sb.cli(&["run", "deploy", "x", "--command=a", &full, "--region=local2"]);
    assert_eq!(
        out.api_error("run deploy", "INVALID_ARGUMENT"),
        "connector `conn` is in region `local1`, but the service is in region `local2`; a connector serves only \
         services in its own region, so create one in `local2` or deploy the service to `local1`"
    );

    let listed = sb.cli(&["run", "services", "list", "--region=-", "--format=json"]).json();
    let names: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            format!("projects/{PROJECT}/locations/local1/services/caller"),
            format!("projects/{PROJECT}/locations/local1/services/receiver")
        ]
    );
}

#[test]
fn a_connector_in_use_cannot_be_deleted_until_the_service_lets_go() {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    guide_setup(&sb);
    let rev = short_revision(&sb, "caller");

    let out = sb.cli(&["compute", "networks", "vpc-access", "connectors", "delete", "conn"]);
    assert_eq!(
        out.api_error("compute networks vpc-access connectors delete", "FAILED_PRECONDITION"),
        format!(
            "connector `conn` is in use by service `caller` in `local1` (revision `{rev}`); deploy those services \
             with `--clear-vpc-connector` (or delete them) first"
        )
    );
    assert_eq!((out.stdout.as_str(), out.stderr.lines().count()), ("", 1), "{out}");
    let listed = sb.cli(&["compute", "networks", "vpc-access", "connectors", "list", "--format=json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    // Doing what the message says works.
    sb.cli(&["run", "deploy", "caller", "--clear-vpc-connector", "--vpc-egress=private-ranges-only"]).ok();
    let out = sb.cli(&["compute", "networks", "vpc-access", "connectors", "delete", "conn"]).ok();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "Deleted connector [conn].\n"), "{out}");
}

#[test]
fn a_service_account_in_use_cannot_be_deleted_until_the_service_is_gone() {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    guide_setup(&sb);
    let rev = short_revision(&sb, "caller");
    let email = account_email("caller");

    let out = sb.cli(&["iam", "service-accounts", "delete", "caller"]);
    assert_eq!(
        out.api_error("iam service-accounts delete", "FAILED_PRECONDITION"),
        format!(
            "service account `{email}` is in use by service `caller` in `local1` (revision `{rev}`); deploy those \
             services with another `--service-account` (or delete them) first"
        )
    );
    assert_eq!((out.stdout.as_str(), out.stderr.lines().count()), ("", 1), "{out}");
    let account = sb.cli(&["iam", "service-accounts", "describe", "caller", "--format=json"]).json();
    assert_eq!(account["email"], email.as_str());

    let out = sb.cli(&["run", "services", "delete", "caller"]).ok();
    assert_eq!(out.stderr, "Deleted service [caller].\n", "{out}");
    let out = sb.cli(&["iam", "service-accounts", "delete", "caller"]).ok();
    assert_eq!(out.stderr, "deleted service account [caller]\n", "{out}");

    // The receiver's binding now shows the account as deleted, with the unique id it had.
    let policy = sb.cli(&["run", "services", "get-iam-policy", "receiver", "--format=json"]).json();
    let uid = account["uniqueId"].as_str().unwrap_or_default();
    assert_eq!(
        policy["bindings"],
        json!([{ "role": "roles/run.invoker", "members": [format!("deleted:serviceAccount:{email}?uid={uid}")] }])
    );
}

#[test]
fn a_new_service_needs_a_command_and_an_update_needs_a_service() {
    let sb = Sandbox::new();
    let _daemon = sb.start();

    let out = sb.cli(&["run", "deploy", "newsvc", "--args=app.py"]);
    assert_eq!(
        out.error("run deploy"),
        "service `newsvc` does not exist yet, so `--command` is required: runnel runs a program, for example \
         `--command=python3 --args=app.py`"
    );
    assert_eq!((out.stdout.as_str(), out.stderr.lines().count()), ("", 1), "{out}");

    let out = sb.cli(&["run", "services", "update", "newsvc", "--args=app.py"]);
    assert_eq!(
        out.error("run services update"),
        "service `newsvc` does not exist in region `local1`; create it with `runnel run deploy newsvc`"
    );

    let out = sb.cli(&["run", "services", "list"]).ok();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "Listed 0 items.\n"), "{out}");
}

#[test]
fn a_non_owner_is_refused_until_granted_and_after_revocation() {
    let sb = Sandbox::new();
    let _daemon = sb.start();
    sb.cli(&["run", "deploy", "receiver", "--command=python3", "--args=app.py", "--ingress=internal"]).ok();

    let file = sb.path("alice.credential");
    let file_arg = format!("--output-file={}", file.display());
    let out = sb.cli(&["auth", "credentials", "create", "--member=user:alice@example.com", &file_arg]).ok();
    assert_eq!(out.stdout, "", "the secret must not be printed when it goes to a file:\n{out}");
    let id = out
        .stderr
        .strip_prefix("Created credential [")
        .and_then(|rest| rest.split_once("] for user:alice@example.com; the secret is in "))
        .map(|(id, rest)| {
            assert_eq!(rest, format!("{} (mode 0600).\n", file.display()));
            id.to_string()
        })
        .unwrap_or_else(|| panic!("unexpected output:\n{out}"));
    assert_eq!(mode(&file), 0o600);
    let secret = std::fs::read_to_string(&file).expect("the credential file");
    assert!(secret.starts_with("rnl_") && secret.ends_with('\n') && secret.trim().len() > 40, "{secret:?}");

    let listed = sb.cli(&["auth", "credentials", "list"]).ok();
    let rows = table(&listed, &["ID", "MEMBER", "CREATED", "DESCRIPTION"]);
    assert!(rows.iter().any(|r| r["ID"] == id && r["MEMBER"] == "user:alice@example.com"), "{listed}");
    assert!(!listed.stdout.contains(secret.trim()), "a secret is listed:\n{listed}");

    let as_alice = format!("--credential-file={}", file.display());
    let out = sb.cli(&["run", "services", "list", &as_alice]);
    assert_eq!(
        out.api_error("run services list", "PERMISSION_DENIED"),
        format!(
            "permission `run.services.list` denied on `projects/{PROJECT}/locations/local1` for \
             `user:alice@example.com` (or it may not exist). A role that holds it is `roles/run.viewer`; an owner can \
             grant it with `runnel projects add-iam-policy-binding {PROJECT} --member=user:alice@example.com \
             --role=roles/run.viewer`"
        )
    );
    assert_eq!(out.stdout, "");

    // Alice cannot grant herself anything.
    let out = sb.cli(&[
        "projects",
        "add-iam-policy-binding",
        PROJECT,
        "--member=user:alice@example.com",
        "--role=roles/owner",
        &as_alice,
    ]);
    let msg = out.api_error("projects add-iam-policy-binding", "PERMISSION_DENIED");
    assert!(msg.starts_with("permission `resourcemanager.projects.getIamPolicy` denied on"), "{msg}");

    let out = sb
        .cli(&[
            "projects",
            "add-iam-policy-binding",
            PROJECT,
            "--member=user:alice@example.com",
            "--role=roles/run.viewer",
        ])
        .ok();
    assert_eq!(out.stderr, format!("Updated IAM policy for project [{PROJECT}].\n"));
    assert!(
        out.yaml()["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b == &json!({ "role": "roles/run.viewer", "members": ["user:alice@example.com"] }))
    );

    let out = sb.cli(&["run", "services", "list", &as_alice]).ok();
    let rows = table(&out, &["SERVICE", "REGION", "URL", "INGRESS", "LAST DEPLOYED BY", "LAST DEPLOYED AT"]);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["SERVICE"], "receiver");
    // RUNNEL_CREDENTIAL works as well as the flag.
    let via_env =
        sb.cli_env(&["run", "services", "list", "--format=json"], &[("RUNNEL_CREDENTIAL", secret.trim())]).json();
    assert_eq!(via_env.as_array().map(Vec::len), Some(1));

    let out = sb.cli(&["run", "deploy", "sneaky", "--command=true", &as_alice]);
    assert_eq!(
        out.api_error("run deploy", "PERMISSION_DENIED"),
        format!(
            "permission `run.services.create` denied on `projects/{PROJECT}/locations/local1/services/sneaky` for \
             `user:alice@example.com` (or it may not exist). A role that holds it is `roles/run.developer`; an owner \
             can grant it with `runnel projects add-iam-policy-binding {PROJECT} --member=user:alice@example.com \
             --role=roles/run.developer`"
        )
    );
    let out = sb.cli(&["run", "services", "describe", "sneaky", &as_alice]);
    assert!(out.api_error("run services describe", "NOT_FOUND").starts_with("service `sneaky` does not exist"));

    let out = sb.cli(&["auth", "credentials", "revoke", &id]).ok();
    assert_eq!((out.stdout.as_str(), out.stderr.clone()), ("", format!("Revoked credential [{id}].\n")));

    let out = sb.cli(&["run", "services", "list", &as_alice]);
    assert_eq!(
        out.api_error("run services list", "UNAUTHENTICATED"),
        "the credential is not valid: it was revoked, or it belongs to another runnel home; ask the owner for a new one"
    );
    let out = sb.cli_env(&["run", "services", "list"], &[("RUNNEL_CREDENTIAL", secret.trim())]);
    out.api_error("run services list", "UNAUTHENTICATED");
}

#[test]
fn without_a_daemon_the_cli_says_to_run_runnel_up() {
    let sb = Sandbox::new();
    let home = sb.home();

    let out = sb.cli(&["run", "services", "list"]);
    assert_eq!(
        out.error("run services list"),
        format!(
            "no runnel daemon is running for RUNNEL_HOME {}: start one with `runnel up` (same RUNNEL_HOME), or pass \
             `--api-url`",
            home.display()
        )
    );
    assert_eq!((out.stdout.as_str(), out.stderr.lines().count()), ("", 1), "{out}");
    assert!(!home.exists(), "a client must not create RUNNEL_HOME");

    // A daemon that died without cleaning up leaves daemon.json behind; the CLI says so too.
    let mut daemon = sb.start();
    let api = daemon.api.clone();
    daemon.kill9();
    assert!(read_daemon_json(&home).is_some(), "SIGKILL cannot remove daemon.json");
    let out = sb.cli(&["iam", "service-accounts", "list"]);
    assert_eq!(
        out.error("iam service-accounts list"),
        format!("cannot reach the runnel daemon at {api}: is `runnel up` running for RUNNEL_HOME {}?", home.display())
    );

    let _daemon = sb.start();
    sb.cli(&["iam", "service-accounts", "list"]).ok();
}

#[test]
fn a_second_daemon_on_the_same_home_is_refused() {
    let sb = Sandbox::new();
    let first = sb.start();

    let out = sb.cli(&[
        "up",
        "--role=control-plane",
        "--api-address=127.0.0.1:0",
        &format!("--frontend-address={FRONTEND}"),
        &format!("--project-id={PROJECT}"),
    ]);
    let msg = out.error("up");
    let state = sb.home().join("state.redb");
    assert_eq!(
        msg,
        format!(
            "another runnel daemon is already using the state store at {}; stop it first (its address is in daemon.json beside it), or start this one with another RUNNEL_HOME",
            state.display()
        ),
        "{out}"
    );
    assert_eq!(out.stdout, "", "a refused daemon must not print the banner:\n{out}");

    // The first daemon is untouched and still serves.
    assert_eq!(read_daemon_json(&sb.home()).and_then(|d| d["pid"].as_u64()), Some(u64::from(first.pid)));
    sb.cli(&["run", "services", "list"]).ok();
}

#[test]
fn a_taken_api_port_is_named_with_its_flag() {
    let sb = Sandbox::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = taken.local_addr().expect("its address").port();

    let out = sb.cli(&[
        "up",
        "--role=control-plane",
        &format!("--api-address=127.0.0.1:{port}"),
        &format!("--project-id={PROJECT}"),
    ]);
    assert_eq!(
        out.error("up"),
        format!(
            "port {port} on 127.0.0.1 is already in use (another runnel, or another program); stop it or choose \
             another port with `--api-address=HOST:PORT`"
        )
    );
    assert_eq!(out.stdout, "", "{out}");
    assert!(read_daemon_json(&sb.home()).is_none(), "a daemon that cannot listen must not advertise itself");

    let out = sb.cli(&["up", "--role=control-plane", "--api-address=localhost", &format!("--project-id={PROJECT}")]);
    assert_eq!(out.error("up"), "`localhost` is not an address such as 127.0.0.1:7780 (flag `--api-address`)");
    drop(taken);
}
