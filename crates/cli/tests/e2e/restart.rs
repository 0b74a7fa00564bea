//! A clean stop and start: everything is still there, the project keeps its number, and the
//! home stays private.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{FRONTEND, PROJECT, Sandbox, guide_setup, mode};

/// Everything the CLI can list, as JSON, to compare before and after a restart.
fn snapshot(sb: &Sandbox) -> Vec<(String, String)> {
    let commands: &[&[&str]] = &[
        &["run", "services", "list"],
        &["run", "services", "describe", "caller"],
        &["run", "revisions", "list"],
        &["run", "services", "get-iam-policy", "receiver"],
        &["iam", "service-accounts", "list"],
        &["iam", "service-accounts", "get-iam-policy", "caller"],
        &["compute", "networks", "list"],
        &["compute", "networks", "subnets", "list"],
        &["compute", "networks", "vpc-access", "connectors", "list"],
        &["projects", "get-iam-policy", PROJECT],
        &["auth", "credentials", "list"],
    ];
    commands
        .iter()
        .map(|c| {
            let mut args = c.to_vec();
            args.push("--format=json");
            let out = sb.cli(&args).ok();
            assert!(out.stdout.len() > 10, "{out}");
            (c.join(" "), out.stdout)
        })
        .collect()
}

#[track_caller]
fn assert_private(sb: &Sandbox) {
    let home = sb.home();
    assert_eq!(mode(&home), 0o700, "RUNNEL_HOME");
    assert_eq!(mode(&home.join("owner.credential")), 0o600, "owner.credential");
    assert_eq!(mode(&home.join("state.redb")), 0o600, "state.redb");
}

#[test]
fn state_survives_a_clean_restart_and_the_home_stays_private() {
    let sb = Sandbox::new();
    let home = sb.home();
    let daemon = sb.start();
    let number = daemon.project_number();
    let port = daemon.api.rsplit(':').next().unwrap_or_default().to_string();
    let banner = daemon.banner();
    let lines: Vec<&str> = banner.lines().collect();
    assert_eq!(lines.first().copied(), Some(format!("runnel is up for project {PROJECT} (number {number})").as_str()));
    assert_eq!(lines.last().copied(), Some("Press Ctrl-C to stop."));
    for expected in [
        format!("  api:          http://127.0.0.1:{port}"),
        format!("  state:        {}", home.display()),
        format!("  credential:   {}/owner.credential (owner user:owner@runnel.localhost)", home.display()),
    ] {
        assert!(lines.contains(&expected.as_str()), "no line {expected:?} in the banner:\n{banner}");
    }
    assert!(
        banner.contains(&format!(" http://SERVICE-{number}.REGION.run.localhost:7781")),
        "the banner does not show the service URL pattern:\n{banner}"
    );
    assert_private(&sb);

    guide_setup(&sb);
    let alice = sb.path("alice.credential");
    sb.cli(&[
        "auth",
        "credentials",
        "create",
        "--member=user:alice@example.com",
        &format!("--output-file={}", alice.display()),
    ])
    .ok();
    sb.cli(&[
        "projects",
        "add-iam-policy-binding",
        PROJECT,
        "--member=user:alice@example.com",
        "--role=roles/run.viewer",
    ])
    .ok();
    let before = snapshot(&sb);
    let owner = daemon.owner_credential();

    let (status, stdout) = daemon.stop();
    assert_eq!(status.code(), Some(0), "a SIGTERM stop is a clean exit");
    assert!(stdout.ends_with("Press Ctrl-C to stop.\nrunnel stopped.\n"), "{stdout}");
    let mut left: Vec<String> = std::fs::read_dir(&home)
        .expect("read RUNNEL_HOME")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    left.sort();
    assert_eq!(left, ["owner.credential", "state.redb"], "daemon.json (or a temporary file) was left behind");
    assert_private(&sb);

    // Someone loosened the modes while it was down; the next start makes them private again.
    for (path, m) in [(home.clone(), 0o755), (home.join("owner.credential"), 0o644), (home.join("state.redb"), 0o644)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
    }

    let daemon = sb.start();
    assert_eq!(daemon.project_number(), number, "the project number changed across a restart");
    assert_private(&sb);
    assert_eq!(daemon.owner_credential(), owner, "the owner's credential changed across a restart");
    let after = snapshot(&sb);
    for ((command, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(is, was, "`runnel {command} --format=json` differs after the restart");
    }

    // The restarted daemon keeps working: alice's credential, and a new revision numbered on.
    let as_alice = format!("--credential-file={}", alice.display());
    sb.cli(&["run", "services", "list", &as_alice]).ok();
    let out = sb.cli(&["run", "deploy", "receiver", "--args=app2.py"]).ok();
    assert!(out.stdout.starts_with("Service [receiver] revision [receiver-00002-"), "{out}");
    assert!(
        out.stdout.ends_with(&format!("Service URL: http://receiver-{number}.local1.run.localhost:7781\n")),
        "{out}"
    );

    let (status, _) = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!home.join("daemon.json").exists());
}

#[test]
fn a_home_of_another_project_is_refused() {
    let sb = Sandbox::new();
    let (status, _) = sb.start().stop();
    assert!(status.success());

    let out = sb.cli(&[
        "up",
        "--role=control-plane",
        "--api-address=127.0.0.1:0",
        &format!("--frontend-address={FRONTEND}"),
        "--project-id=other-project",
    ]);
    let msg = out.error("up");
    assert!(msg.starts_with(&format!("this RUNNEL_HOME holds project `{PROJECT}`, not `other-project`; ")), "{out}");
    assert!(!sb.home().join("daemon.json").exists());
}

#[test]
fn the_advice_for_another_projects_home_works() {
    let sb = Sandbox::new();
    let (status, _) = sb.start().stop();
    assert!(status.success());

    let out = sb.cli(&[
        "up",
        "--role=control-plane",
        "--api-address=127.0.0.1:0",
        &format!("--frontend-address={FRONTEND}"),
        "--project-id=other-project",
    ]);
    let msg = out.error("up");
    let advice = msg
        .split_once("start with `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(flag, _)| flag.to_string())
        .unwrap_or_else(|| panic!("no `start with` advice in {msg:?}"));
    // Following the advice (instead of `--project-id`) starts the daemon on its project.
    let daemon = sb.start_with(&[advice.as_str()]);
    assert_eq!(daemon.project, PROJECT);
}

#[test]
fn sigterm_as_soon_as_daemon_json_appears_stops_cleanly() {
    let sb = Sandbox::new();
    let project = format!("--project-id={PROJECT}");
    for attempt in 0..10 {
        let daemon = sb.spawn_daemon(&[project.as_str()]);
        let (status, _) = daemon.stop();
        assert_eq!(status.code(), Some(0), "attempt {attempt}: the daemon ended with {status}");
        assert!(!sb.home().join("daemon.json").exists(), "attempt {attempt}: daemon.json was left behind");
    }
}
