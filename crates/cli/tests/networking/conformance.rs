//! The conformance table (README, docs/troubleshooting.md): the guide's steps and the mistakes
//! users make most, each run through the CLI against a real daemon with a real calling service,
//! and asserted by status **and** reason. For every row, `runnel troubleshoot` must give the
//! verdict and reason the live request got: `troubleshoot request` for the refused request's id,
//! and `troubleshoot call` for the same call evaluated without being made.

use serde_json::Value;

use super::{Daemon, q};

/// What a call from `caller` to the receiver got: status, and the reason from the refusal log
/// (`None` when admitted).
struct Live {
    status: u64,
    reason: Option<String>,
}

struct Table<'a> {
    d: &'a Daemon,
    receiver: String,
}

impl Table<'_> {
    /// The caller calls the receiver with a token of `kind` (`id`, `access`, `none`) for
    /// `audience`; `cached` keeps the caller's ID token between calls, as client libraries do.
    fn call(&self, kind: &str, audience: Option<&str>, cached: bool) -> Live {
        let mut query = format!("invoke={}&token={kind}", q(&self.receiver));
        if let Some(aud) = audience {
            query.push_str(&format!("&aud={}", q(aud)));
        }
        if cached {
            query.push_str("&cache=1");
        }
        let r = self.d.call_from("caller", &query);
        let status = r["status"].as_u64().unwrap_or_else(|| panic!("no status: {r}"));
        assert_ne!(status, 0, "the call failed before reaching runnel: {r}");
        let reason = (status != 200).then(|| {
            let id = r["request_id"].as_str().unwrap_or_else(|| panic!("a refusal without a request id: {r}"));
            self.explained(id, status)
        });
        Live { status, reason }
    }

    /// `runnel troubleshoot request ID`: the reason it names must be the refusal log's, and
    /// the status it implies the one the caller saw.
    #[track_caller]
    fn explained(&self, id: &str, status: u64) -> String {
        let logged = self.d.reason_for(id);
        let answer: Value =
            serde_json::from_str(&self.d.ok(&["troubleshoot", "request", id, "--format=json"])).unwrap();
        assert_eq!(answer["refusal"]["requestId"], id, "{answer}");
        assert_eq!(
            answer["refusal"]["reason"],
            logged.as_str(),
            "troubleshoot request disagrees with the log: {answer}"
        );
        let stage = answer["refusal"]["stage"].as_str().unwrap();
        let implied = match stage {
            "ingress" => 404,
            "invoker"
                if ["token.missing", "iam.no_binding", "principal.disabled", "principal.deleted"]
                    .contains(&logged.as_str()) =>
            {
                403
            }
            "invoker" => 401,
            other => panic!("unexpected stage {other}: {answer}"),
        };
        assert_eq!(implied, status, "{answer}");
        assert!(!answer["refusal"]["trace"].as_array().unwrap().is_empty(), "a refusal without a trace: {answer}");
        logged
    }

    /// `runnel troubleshoot call` for the same call, without making it.
    fn evaluated(&self, extra: &[&str]) -> (u64, String) {
        let mut args = vec!["troubleshoot", "call", "--from=caller", "--format=json"];
        let to = format!("--to={}", self.receiver);
        args.push(&to);
        args.extend_from_slice(extra);
        let answer: Value = serde_json::from_str(&self.d.ok(&args)).unwrap();
        let text = answer.to_string();
        assert!(!text.contains(".SIGNATURE") && !text.contains("eyJ"), "the answer must carry no token: {text}");
        let verdict = &answer["verdict"];
        (verdict["status"].as_u64().unwrap_or(0), verdict["reason"].as_str().unwrap().to_string())
    }

    /// One row: the live call and the evaluated one agree, and both are what the table says.
    #[track_caller]
    fn row(&self, situation: &str, live: Live, extra: &[&str], status: u64, reason: &str) {
        assert_eq!(live.status, status, "{situation}: live status");
        if status != 200 {
            assert_eq!(live.reason.as_deref(), Some(reason), "{situation}: live reason");
        }
        let (e_status, e_reason) = self.evaluated(extra);
        assert_eq!((e_status, e_reason.as_str()), (status, reason), "{situation}: troubleshoot call");
    }
}

#[test]
fn every_row_of_the_conformance_table_live_and_troubleshot() {
    let d = Daemon::start("conformance");
    d.internal_receiver();
    d.ok(&["run", "deploy", "caller", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    let t = Table { d: &d, receiver: d.url("receiver") };

    // Internal receiver called from the host: 404, and troubleshoot request agrees.
    let (status, id, _) = d.get(&d.host("receiver"), "/");
    assert_eq!(status, 404);
    assert_eq!(t.explained(&id.unwrap(), 404), "ingress.internal_only.from_internet");

    // A caller without VPC access.
    t.row("caller without VPC access", t.call("id", None, false), &[], 404, "ingress.internal_only.from_internet");

    // A connector with private-ranges-only: the service URL is a public name, so the call leaves directly.
    d.vpc_with_connector();
    d.ok(&["run", "services", "update", "caller", "--vpc-connector=conn", "--vpc-egress=private-ranges-only"]);
    t.row(
        "connector + private-ranges-only",
        t.call("id", None, false),
        &[],
        404,
        "egress.private_ranges_only.service_url_left_directly",
    );

    // all-traffic: internal now, but the default compute account holds no invoker role.
    d.ok(&["run", "services", "update", "caller", "--vpc-egress=all-traffic"]);
    t.row("all-traffic, default compute account", t.call("id", None, false), &[], 403, "iam.no_binding");
    t.row("no token sent", t.call("none", None, false), &["--token=none"], 403, "token.missing");
    t.row(
        "access token instead of an ID token",
        t.call("access", None, false),
        &["--token=access"],
        401,
        "token.access_token_not_id_token",
    );
    let with_path = format!("{}/api", t.receiver);
    t.row(
        "audience with a path",
        t.call("id", Some(&with_path), false),
        &[&format!("--audience={with_path}")],
        401,
        "token.audience_mismatch",
    );
    let other = d.url("caller");
    t.row(
        "another service's URL as audience",
        t.call("id", Some(&other), false),
        &[&format!("--audience={other}")],
        401,
        "token.audience_mismatch",
    );

    // The guide's fix: a service account of its own with Cloud Run Invoker on the receiver.
    let described: Value =
        serde_json::from_str(&d.ok(&["run", "services", "describe", "caller", "--format=json"])).unwrap();
    let default_account = described["template"]["serviceAccount"].as_str().unwrap().to_string();
    assert!(default_account.ends_with("-compute@developer.gserviceaccount.com"), "{default_account}");
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
    let member = "--member=serviceAccount:caller-sa@runnel-local.iam.gserviceaccount.com";
    d.ok(&["run", "services", "add-iam-policy-binding", "receiver", member, "--role=roles/run.invoker"]);
    d.ok(&["run", "services", "update", "caller", "--service-account=caller-sa"]);
    t.row("binding granted", t.call("id", None, false), &[], 200, "iam.granted");
    // --as evaluates another account: the default compute account is still refused.
    let (status, reason) = t.evaluated(&[&format!("--as={default_account}")]);
    assert_eq!((status, reason.as_str()), (403, "iam.no_binding"), "--as the default compute account");
    d.ok(&["run", "services", "remove-iam-policy-binding", "receiver", member, "--role=roles/run.invoker"]);
    t.row("binding removed", t.call("id", None, false), &[], 403, "iam.no_binding");

    // Disabled: a token the caller fetched before is refused at the receiver.
    d.ok(&["run", "services", "add-iam-policy-binding", "receiver", member, "--role=roles/run.invoker"]);
    assert_eq!(t.call("id", None, true).status, 200);
    d.ok(&["iam", "service-accounts", "disable", "caller-sa@runnel-local.iam.gserviceaccount.com"]);
    t.row("caller's account disabled", t.call("id", None, true), &[], 403, "principal.disabled");
    d.ok(&["iam", "service-accounts", "enable", "caller-sa@runnel-local.iam.gserviceaccount.com"]);

    // A receiver with allUsers as invoker needs no token.
    d.ok(&["run", "services", "add-iam-policy-binding", "receiver", "--member=allUsers", "--role=roles/run.invoker"]);
    t.row("receiver with allUsers invoker", t.call("none", None, false), &["--token=none"], 200, "invoker.all_users");

    // --no-default-url: 404 for everyone.
    d.ok(&["run", "services", "update", "receiver", "--no-default-url"]);
    t.row("--no-default-url", t.call("id", None, false), &[], 404, "ingress.default_url_disabled");

    // A connector in another region: the deploy is refused and names the region.
    d.ok(&[
        "compute",
        "networks",
        "vpc-access",
        "connectors",
        "create",
        "far",
        "--network=vpc",
        "--range=10.9.0.0/28",
        "--region=local2",
    ]);
    let (ok, _, err) = d.cli(&[
        "run",
        "services",
        "update",
        "caller",
        "--vpc-connector=projects/runnel-local/locations/local2/connectors/far",
    ]);
    assert!(!ok, "a connector of another region was accepted");
    assert!(err.contains("local2") && err.contains("local1"), "{err}");

    // Deleting a connector in use is refused and names the user.
    let (ok, _, err) = d.cli(&["compute", "networks", "vpc-access", "connectors", "delete", "conn"]);
    assert!(!ok, "a connector in use was deleted");
    assert!(err.contains("in use by service `caller`"), "{err}");
}

#[test]
fn troubleshoot_says_what_it_cannot_answer() {
    let d = Daemon::start("troubleshoot-errors");
    d.ok(&["run", "deploy", "caller", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    let (ok, _, err) = d.cli(&["troubleshoot", "call", "--from=nobody", "--to=caller"]);
    assert!(!ok && err.contains("service `nobody` does not exist"), "{err}");
    let (ok, _, err) = d.cli(&["troubleshoot", "request", "0123456789abcdef"]);
    assert!(!ok && err.contains("no refused request has id `0123456789abcdef`"), "{err}");
    let (ok, _, err) = d.cli(&["troubleshoot", "call", "--from=caller", "--to=ftp://x"]);
    assert!(!ok && err.contains("scheme `ftp`"), "{err}");

    // The table output: steps, verdict and the command that changes it.
    d.ok(&["run", "deploy", "receiver", "--command=python3", "--args=app.py", "--ingress=internal"]);
    let out = d.ok(&["troubleshoot", "call", "--from=caller", "--to=receiver"]);
    assert!(out.contains("2. egress"), "{out}");
    assert!(out.contains("FAIL  ingress.internal_only.from_internet"), "{out}");
    assert!(out.contains("Verdict: 404 ingress.internal_only.from_internet"), "{out}");
    assert!(out.contains("--vpc-egress=all-traffic"), "{out}");

    // A user without permission to read policies is refused, by permission name.
    let (ok, out, err) = d.cli(&["auth", "credentials", "create", "--member=user:eve@example.com"]);
    assert!(ok, "{err}");
    let secret = out.trim().to_string();
    assert!(secret.starts_with("rnl_"), "not a credential: {out}");
    let out = std::process::Command::new(super::BIN)
        .args(["troubleshoot", "call", "--from=caller", "--to=receiver"])
        .env("RUNNEL_HOME", &d.home)
        .env("RUNNEL_CREDENTIAL", secret)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("run.services.getIamPolicy"), "{err}");
}

/// `examples/internal-only/setup.sh`, the setup as a script of runnel commands, run as a user
/// would run it: the caller it deploys runs the guide's code and gets the receiver's answer.
#[test]
fn the_example_setup_script_builds_the_guides_setup() {
    let d = Daemon::start("setup-script");
    let example = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/internal-only"));
    let app_dir = d.apps.join("python");
    std::fs::create_dir_all(&app_dir).unwrap();
    for f in ["guide.py", "server.py"] {
        std::fs::copy(example.join("python").join(f), app_dir.join(f)).unwrap();
    }
    super::world_readable(&d.apps);
    let out = std::process::Command::new(example.join("setup.sh"))
        .env("RUNNEL", super::BIN)
        .env("RUNNEL_HOME", &d.home)
        .env("APP_DIR", &app_dir)
        .env("PYDEPS", super::PYDEPS)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "setup.sh failed: {stderr}");
    assert!(stderr.contains("+ runnel run deploy caller"), "the script shows each command: {stderr}");
    assert!(stdout.contains("curl http://caller-"), "{stdout}");

    // The caller runs make_internal_request(): the receiver (python's http.server in the app
    // directory) answers with its listing.
    let (status, _, body) = d.get(&d.host("caller"), "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("guide.py"), "not the receiver's answer: {body}");
    // And the receiver stays unreachable from the host.
    let (status, id, _) = d.get(&d.host("receiver"), "/");
    assert_eq!(status, 404);
    assert_eq!(d.reason_for(&id.unwrap()), "ingress.internal_only.from_internet");
}

/// `cargo run -- up` in a checkout under a 0700 home: instances' uids cannot read the
/// executable there, so the daemon runs its sandboxes from a copy they can read, and says so.
#[test]
fn a_daemon_in_a_private_directory_runs_sandboxes_from_a_readable_copy() {
    use std::os::unix::fs::PermissionsExt;
    let root = super::test_base().join(format!("private-exe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let private = root.join("home-0700");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let exe = private.join("runnel");
    std::fs::copy(super::BIN, &exe).unwrap();
    let d = Daemon::start_with("private-exe", exe.to_str().unwrap());
    let out = std::fs::read_to_string(d.home.parent().unwrap().join("daemon.out")).unwrap();
    assert!(out.contains("is not readable by instances' users; sandboxes run a copy at /var/tmp/runnel-bin-"), "{out}");
    d.ok(&["run", "deploy", "hello", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    let (status, _, body) = d.get(&d.host("hello"), "/");
    assert_eq!(status, 200, "{body}");
    drop(d);
    // The copy is this test's alone (named after the size and time of the file it copied).
    let copy = out.split("sandboxes run a copy at ").nth(1).unwrap().lines().next().unwrap().trim();
    let _ = std::fs::remove_file(copy);
    let _ = std::fs::remove_dir_all(&root);
}

/// A project in a private directory: a root daemon's instances run as users of their own, so
/// the deploy fails and says why and what to do.
#[test]
fn a_deploy_from_a_private_directory_says_why_it_cannot_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Daemon::start("private-project");
    let project = d.apps.join("private");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::copy(d.apps.join("app.py"), project.join("app.py")).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = format!("--working-dir={}", project.display());
    let (ok, _, err) = d.cli(&["run", "deploy", "private", "--command=python3", "--args=app.py", &dir]);
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        assert!(!ok, "an instance of its own uid entered a 0700 directory of root's");
        assert!(
            err.contains("Permission denied") && err.contains("deploy from a directory every user can read"),
            "{err}"
        );
    } else {
        // Without root the instance runs as the daemon's own user, who may enter it.
        assert!(ok, "{err}");
    }
}
