//! The guide's private networking, end to end: a real daemon, real instances in sandboxes, and
//! calls made by an ordinary HTTP client inside the caller (Python's urllib honouring
//! `HTTP_PROXY`). Every refusal is asserted by status and by the reason the daemon logged for
//! the request id the response carries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod clients;
mod conformance;
mod proxy;

const BIN: &str = env!("CARGO_BIN_EXE_runnel");

/// A daemon with its own home; killed (and so its instances) when dropped.
struct Daemon {
    child: Child,
    home: PathBuf,
    log: PathBuf,
    apps: PathBuf,
    frontend: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn world_readable(p: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("a+rX").arg(p).status();
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        Self::start_with(name, BIN)
    }

    /// A daemon of the runnel executable at `bin`.
    fn start_with(name: &str, bin: &str) -> Daemon {
        let base = test_base();
        let root = base.join(format!("net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = root.join("h");
        let apps = root.join("apps");
        std::fs::create_dir_all(&apps).unwrap();
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/networking/caller.py"), apps.join("app.py")).unwrap();
        // Every path component down to the apps must be traversable by an instance's uid.
        let mut p = apps.clone();
        while p.pop() && p.starts_with(&base) {
            let _ = Command::new("chmod").arg("a+x").arg(&p).status();
        }
        let _ = Command::new("chmod").arg("a+x").arg(&base).status();
        world_readable(&apps);
        let log = root.join("daemon.log");
        let child = Command::new(bin)
            .args(["up", "--api-address=127.0.0.1:0", "--frontend-address=127.0.0.1:0", "--startup-deadline=20"])
            .env("RUNNEL_HOME", &home)
            .env("NO_COLOR", "1")
            .env("RUNNEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(root.join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let frontend = loop {
            if let Ok(text) = std::fs::read_to_string(home.join("daemon.json")) {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(f) = v["frontend"].as_str() {
                    break f.trim_start_matches("http://").to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Daemon { child, home, log, apps, frontend }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(&self.apps)
            .env("RUNNEL_HOME", &self.home)
            .env_remove("RUNNEL_CREDENTIAL")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "`runnel {}` failed: {err}", args.join(" "));
        out
    }

    /// The guide's receiver: the test app, internal-only, without public access.
    fn internal_receiver(&self) {
        self.ok(&[
            "run",
            "deploy",
            "receiver",
            "--command=python3",
            "--args=app.py",
            "--ingress=internal",
            "--no-allow-unauthenticated",
        ]);
    }

    /// The guide's network: `vpc`, with the connector `conn` (10.8.0.0/28) in the default region.
    fn vpc_with_connector(&self) {
        self.ok(&["compute", "networks", "create", "vpc"]);
        self.ok(&[
            "compute",
            "networks",
            "vpc-access",
            "connectors",
            "create",
            "conn",
            "--network=vpc",
            "--range=10.8.0.0/28",
        ]);
    }

    /// The service's host (no scheme, no port).
    fn host(&self, service: &str) -> String {
        let v: Value =
            serde_json::from_str(&self.ok(&["run", "services", "describe", service, "--format=json"])).unwrap();
        v["uri"].as_str().unwrap().trim_start_matches("http://").split(':').next().unwrap().to_string()
    }

    fn url(&self, service: &str) -> String {
        let v: Value =
            serde_json::from_str(&self.ok(&["run", "services", "describe", service, "--format=json"])).unwrap();
        v["uri"].as_str().unwrap().to_string()
    }

    /// A request from the host to the frontend: status, request id and body.
    fn get(&self, host: &str, path: &str) -> (u16, Option<String>, String) {
        let mut s = TcpStream::connect(&self.frontend).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let id = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-runnel-request-id: ").map(|v| v.trim().to_string()));
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, id, body)
    }

    /// Asks the caller to make a call; returns what its HTTP client saw.
    fn call_from(&self, caller: &str, query: &str) -> Value {
        let host = self.host(caller);
        let (status, _, body) = self.get(&host, &format!("/?{query}"));
        assert_eq!(status, 200, "the caller itself did not answer: {body}");
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
    }

    /// The reason the daemon logged for a refused request.
    #[track_caller]
    fn reason_for(&self, request_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(request_id) && l.contains("reason=")) {
                return line.split("reason=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no refusal logged for request {request_id}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn q(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_guide_internal_only_receiver_and_the_egress_settings() {
    let d = Daemon::start("guide");
    d.ok(&[
        "run",
        "deploy",
        "receiver",
        "--command=python3",
        "--args=app.py",
        "--ingress=internal",
        "--allow-unauthenticated",
    ]);
    let receiver = d.url("receiver");
    d.ok(&["run", "deploy", "caller", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);

    // From the host: 404, refused by ingress, and the instance never saw it.
    let (status, id, body) = d.get(&d.host("receiver"), "/");
    assert_eq!(status, 404, "{body}");
    assert_eq!(d.reason_for(&id.unwrap()), "ingress.internal_only.from_internet");

    // From a caller without VPC access: the call leaves directly and is refused the same way.
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(d.reason_for(r["request_id"].as_str().unwrap()), "ingress.internal_only.from_internet");

    // Through a connector with private-ranges-only: a service URL is a public name, so it still
    // leaves directly; the refusal names the caller's egress setting.
    d.vpc_with_connector();
    d.ok(&["run", "deploy", "caller", "--vpc-connector=conn", "--vpc-egress=private-ranges-only"]);
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(d.reason_for(r["request_id"].as_str().unwrap()), "egress.private_ranges_only.service_url_left_directly");

    // With all-traffic the call goes through the VPC and is internal: it reaches the receiver,
    // which sees an address of the connector's network.
    d.ok(&["run", "deploy", "caller", "--vpc-egress=all-traffic"]);
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 200, "{r}");
    let seen: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["service"], "receiver");
    assert_eq!(seen["xff"], "10.8.0.2");

    // The same receiver from the host is still refused; with ingress all it is reachable.
    assert_eq!(d.get(&d.host("receiver"), "/").0, 404);
    d.ok(&["run", "services", "update", "receiver", "--ingress=all"]);
    assert_eq!(d.get(&d.host("receiver"), "/").0, 200);

    // --no-default-url: 404 for everyone, the caller included.
    d.ok(&["run", "services", "update", "receiver", "--no-default-url"]);
    let (status, id, _) = d.get(&d.host("receiver"), "/");
    assert_eq!(status, 404);
    assert_eq!(d.reason_for(&id.unwrap()), "ingress.default_url_disabled");
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 404, "{r}");
    let last_id = r["request_id"].as_str().unwrap().to_string();
    assert_eq!(d.reason_for(&last_id), "ingress.default_url_disabled");

    // The refusal log has each refused request by id, with the caller when there is one.
    let denied: Value = serde_json::from_str(&d.ok(&["logs", "--denied", "--format=json"])).unwrap();
    let entry =
        denied.as_array().unwrap().iter().find(|e| e["requestId"] == last_id.as_str()).expect("the refusal is logged");
    assert_eq!(entry["stage"], "ingress");
    assert_eq!(entry["reason"], "ingress.default_url_disabled");
    assert_eq!(entry["target"], "local1/receiver");
    assert!(entry["caller"].as_str().unwrap().contains("service `caller`"), "{entry}");
    let reasons: Vec<&str> = denied.as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"egress.private_ranges_only.service_url_left_directly"), "{reasons:?}");

    // And the counters by reason.
    let api: Value = serde_json::from_str(&std::fs::read_to_string(d.home.join("daemon.json")).unwrap()).unwrap();
    let addr = api["api"].as_str().unwrap().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains(r#"runnel_refusals_total{stage="ingress",reason="ingress.internal_only.from_internet"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"runnel_refusals_total{stage="ingress",reason="egress.private_ranges_only.service_url_left_directly"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_private_endpoint_is_reachable_only_through_the_vpc() {
    let d = Daemon::start("endpoint");
    // The "database": a plain HTTP server on the host's loopback, never reachable directly.
    let db = TcpListener::bind("127.0.0.1:0").unwrap();
    let db_addr = db.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in db.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ndb ok");
        }
    });
    d.ok(&["compute", "networks", "create", "vpc"]);
    d.ok(&["compute", "networks", "subnets", "create", "sub", "--network=vpc", "--range=10.0.0.0/24"]);
    d.ok(&[
        "compute",
        "networks",
        "endpoints",
        "create",
        "db",
        "--subnet=sub",
        "--address=10.0.0.5:5432",
        &format!("--target={db_addr}"),
    ]);
    d.ok(&[
        "compute",
        "networks",
        "vpc-access",
        "connectors",
        "create",
        "conn",
        "--network=vpc",
        "--range=10.8.0.0/28",
    ]);
    d.ok(&["run", "deploy", "caller", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);

    // Without VPC access the proxy refuses a private destination, naming why.
    let r = d.call_from("caller", &format!("url={}", q("http://10.0.0.5:5432/")));
    assert_eq!(r["status"], 403, "{r}");
    assert!(r["body"].as_str().unwrap().contains("egress.no_vpc_access.private_destination"), "{r}");

    // With the connector (either egress setting) it is reached, by address and by name.
    d.ok(&["run", "deploy", "caller", "--vpc-connector=conn", "--vpc-egress=private-ranges-only"]);
    let r = d.call_from("caller", &format!("url={}", q("http://10.0.0.5:5432/")));
    assert_eq!((r["status"].as_u64(), r["body"].as_str()), (Some(200), Some("db ok")), "{r}");
}

#[test]
fn an_instance_cannot_use_the_proxy_to_reach_runnel_or_other_hosts() {
    let d = Daemon::start("attacks");
    d.ok(&["run", "deploy", "receiver", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    d.ok(&["run", "deploy", "other", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    d.ok(&["run", "deploy", "caller", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    let api = std::fs::read_to_string(d.home.join("daemon.json")).unwrap();
    let api: Value = serde_json::from_str(&api).unwrap();
    let api_port = api["api"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    let frontend_port = d.frontend.rsplit(':').next().unwrap().to_string();

    for url in [
        format!("http://127.0.0.1:{api_port}/healthz"),
        format!("http://127.0.0.1:{frontend_port}/"),
        format!("http://[::ffff:127.0.0.1]:{api_port}/healthz"),
        "http://169.254.169.254/computeMetadata/v1/".to_string(),
        format!("http://0.0.0.0:{api_port}/"),
    ] {
        // Through the proxy: refused by name.
        let r = d.call_from("caller", &format!("proxy=1&url={}", q(&url)));
        assert_eq!(r["status"], 403, "{url}: {r}");
        assert!(r["body"].as_str().unwrap().contains("egress.forbidden_destination"), "{url}: {r}");
        // Directly: the sandbox's loopback has nothing of runnel's on it.
        let r = d.call_from("caller", &format!("url={}", q(&url)));
        assert_ne!(r["status"], 200, "{url} reached directly: {r}");
    }
    // Straight to the proxy with Proxy-Authorization: the service is reached, the credential not.
    let r = d.call_from("caller", &format!("proxy=1&url={}", q(&d.url("receiver"))));
    assert_eq!(r["status"], 200, "{r}");
    let seen: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["proxy_authorization"], Value::Null, "{seen}");

    // A name runnel does not know resolves to nothing.
    let r = d.call_from("caller", &format!("url={}", q("http://localhost:1/")));
    assert_eq!(r["status"], 403, "{r}");
    assert!(r["body"].as_str().unwrap().contains("egress.unresolvable"), "{r}");

    // A CONNECT tunnel opened to one service cannot be used to reach another.
    let receiver = d.host("receiver");
    let other = d.host("other");
    let r = d.call_from("caller", &format!("tunnel={}&inner={}", q(&format!("{receiver}:80")), q(&receiver)));
    assert_eq!(r["connect"], "HTTP/1.1 200 OK", "{r}");
    assert_eq!(r["inner"].as_str().unwrap().split(' ').nth(1), Some("200"), "{r}");
    let r = d.call_from("caller", &format!("tunnel={}&inner={}", q(&format!("{receiver}:80")), q(&other)));
    assert_eq!(r["inner"].as_str().unwrap().split(' ').nth(1), Some("421"), "{r}");
}

#[test]
fn the_guide_service_account_invoker_binding_and_id_tokens() {
    let d = Daemon::start("identity");
    d.internal_receiver();
    let receiver = d.url("receiver");
    d.vpc_with_connector();
    d.ok(&[
        "run",
        "deploy",
        "caller",
        "--command=python3",
        "--args=app.py",
        "--allow-unauthenticated",
        "--vpc-connector=conn",
        "--vpc-egress=all-traffic",
    ]);
    let invoke = |token: &str, aud: Option<&str>| {
        let mut query = format!("invoke={}&token={token}", q(&receiver));
        if let Some(aud) = aud {
            query.push_str(&format!("&aud={}", q(aud)));
        }
        d.call_from("caller", &query)
    };
    let refused = |r: &Value, status: u64, reason: &str| {
        assert_eq!(r["status"].as_u64(), Some(status), "{r}");
        assert_eq!(d.reason_for(r["request_id"].as_str().unwrap()), reason, "{r}");
    };

    // The default compute account holds no role: 403.
    refused(&invoke("id", None), 403, "iam.no_binding");
    // No token: 403; an access token: 401; a token for another audience: 401.
    refused(&invoke("none", None), 403, "token.missing");
    refused(&invoke("access", None), 401, "token.access_token_not_id_token");
    refused(&invoke("id", Some(&format!("{receiver}/path"))), 401, "token.audience_mismatch");

    // A service account of its own, granted Cloud Run Invoker on the receiver: 200. The
    // receiver gets the token without its signature.
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
    let member = "serviceAccount:caller-sa@runnel-local.iam.gserviceaccount.com";
    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        &format!("--member={member}"),
        "--role=roles/run.invoker",
    ]);
    d.ok(&["run", "deploy", "caller", "--service-account=caller-sa"]);
    let r = invoke("id", None);
    assert_eq!(r["status"], 200, "{r}");
    // The URL with a trailing slash is an accepted audience too.
    assert_eq!(invoke("id", Some(&format!("{receiver}/")))["status"], 200);

    // The binding removed: refused on the very next request.
    d.ok(&[
        "run",
        "services",
        "remove-iam-policy-binding",
        "receiver",
        &format!("--member={member}"),
        "--role=roles/run.invoker",
    ]);
    refused(&invoke("id", None), 403, "iam.no_binding");

    // Granted again, then the account disabled: its cached token is refused at the frontend, and
    // the metadata server issues no new one.
    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        &format!("--member={member}"),
        "--role=roles/run.invoker",
    ]);
    assert_eq!(invoke("id", None)["status"], 200);
    d.ok(&["iam", "service-accounts", "disable", "caller-sa@runnel-local.iam.gserviceaccount.com"]);
    let r = invoke("id", None);
    assert_eq!(r["metadata_status"], 403, "{r}");
    assert!(r["body"].as_str().unwrap().contains("principal.disabled"), "{r}");

    // Enabled again: the same instance gets tokens again and its calls go through, at once.
    d.ok(&["iam", "service-accounts", "enable", "caller-sa@runnel-local.iam.gserviceaccount.com"]);
    let r = invoke("id", None);
    assert_eq!(r["status"], 200, "{r}");
}

#[test]
fn direct_vpc_egress_follows_the_subnets_private_google_access() {
    let d = Daemon::start("direct");
    d.ok(&[
        "run",
        "deploy",
        "receiver",
        "--command=python3",
        "--args=app.py",
        "--ingress=internal",
        "--allow-unauthenticated",
    ]);
    let receiver = d.url("receiver");
    d.ok(&["compute", "networks", "create", "vpc"]);
    d.ok(&["compute", "networks", "subnets", "create", "closed", "--network=vpc", "--range=10.1.0.0/24"]);
    d.ok(&[
        "compute",
        "networks",
        "subnets",
        "create",
        "open",
        "--network=vpc",
        "--range=10.2.0.0/24",
        "--enable-private-ip-google-access",
    ]);

    // all-traffic from a subnet without Private Google Access: the proxy refuses, saying why.
    d.ok(&[
        "run",
        "deploy",
        "caller",
        "--command=python3",
        "--args=app.py",
        "--allow-unauthenticated",
        "--network=vpc",
        "--subnet=closed",
        "--vpc-egress=all-traffic",
    ]);
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 403, "{r}");
    assert!(r["body"].as_str().unwrap().contains("egress.no_private_google_access"), "{r}");

    // From a subnet with it, the call is internal; the change is a deploy of the caller only.
    d.ok(&["run", "deploy", "caller", "--subnet=open"]);
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 200, "{r}");

    // Back to no VPC access: the receiver refuses it again.
    d.ok(&["run", "deploy", "caller", "--clear-network"]);
    let r = d.call_from("caller", &format!("url={}", q(&receiver)));
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(d.reason_for(r["request_id"].as_str().unwrap()), "ingress.internal_only.from_internet");
}

/// Where test directories live. Not under `/tmp`, which every sandbox replaces with its own:
/// when the target directory is there (a clone in `/tmp`, `CARGO_TARGET_DIR=/tmp/…`), tests use
/// `/var/tmp/runnel-tests` instead, so instances can still reach their apps.
fn test_base() -> std::path::PathBuf {
    let target = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if target.starts_with("/tmp") { std::path::PathBuf::from("/var/tmp/runnel-tests") } else { target }
}

/// Where scripts/install-deps puts google-auth and requests for instances to read.
const PYDEPS: &str = "/var/lib/runnel-test-python";

#[test]
fn the_guides_python_code_runs_unmodified_in_a_calling_service() {
    let d = Daemon::start("guide-python");
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/internal-only/python"));
    for f in ["guide.py", "server.py"] {
        std::fs::copy(example.join(f), d.apps.join(f)).unwrap();
    }
    world_readable(&d.apps);
    assert!(
        Path::new(PYDEPS).join("google/oauth2/id_token.py").exists(),
        "google-auth is not installed in {PYDEPS}; run scripts/install-deps"
    );

    // The guide's setup: an internal receiver without public access, a connector, a service
    // account granted Cloud Run Invoker, and the caller running as it with all-traffic egress.
    d.internal_receiver();
    let receiver = d.url("receiver");
    d.vpc_with_connector();
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
    let env = format!("RECEIVING_SERVICE_URL={receiver},PYTHONPATH={PYDEPS}");
    d.ok(&[
        "run",
        "deploy",
        "caller",
        "--command=python3",
        "--args=server.py",
        &format!("--set-env-vars={env}"),
        "--allow-unauthenticated",
        "--vpc-connector=conn",
        "--vpc-egress=all-traffic",
        "--service-account=caller-sa",
    ]);
    let caller = d.host("caller");

    // Without the binding, the guide's function gets 403 and returns None.
    let (status, _, body) = d.get(&caller, "/");
    assert_eq!(status, 502, "{body}");

    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        "--member=serviceAccount:caller-sa@runnel-local.iam.gserviceaccount.com",
        "--role=roles/run.invoker",
    ]);
    let (status, _, body) = d.get(&caller, "/");
    assert_eq!(status, 200, "{body}");
    let answer: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("the receiver's answer is not JSON: {body}"));
    assert_eq!(answer["service"], "receiver", "{answer}");
    assert_eq!(answer["xff"], "10.8.0.2", "the call went through the connector: {answer}");
}

#[test]
fn people_call_private_services_with_print_identity_token() {
    let d = Daemon::start("people");
    d.ok(&["run", "deploy", "receiver", "--command=python3", "--args=app.py", "--no-allow-unauthenticated"]);
    let url = d.url("receiver");
    let host = d.host("receiver");
    let call = |token: Option<&str>| {
        let mut s = TcpStream::connect(&d.frontend).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let id = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-runnel-request-id: ").map(|v| v.trim().to_string()));
        (status, id)
    };

    // No token: 403; the owner's token for the service: 200; for another audience: 401.
    let (status, id) = call(None);
    assert_eq!(status, 403);
    assert_eq!(d.reason_for(&id.unwrap()), "token.missing");
    let owner = d.ok(&["auth", "print-identity-token", &format!("--audiences={url}")]);
    assert_eq!(call(Some(owner.trim())).0, 200);
    let elsewhere = d.ok(&["auth", "print-identity-token", "--audiences=http://other.example"]);
    let (status, id) = call(Some(elsewhere.trim()));
    assert_eq!(status, 401);
    assert_eq!(d.reason_for(&id.unwrap()), "token.audience_mismatch");

    // A person without a role is refused; impersonating a service account needs permission.
    let alice_file = d.apps.parent().unwrap().join("alice.credential");
    d.ok(&[
        "auth",
        "credentials",
        "create",
        "--member=user:alice@example.com",
        &format!("--output-file={}", alice_file.display()),
    ]);
    let alice = |args: &[&str]| {
        let mut all = vec!["--credential-file", alice_file.to_str().unwrap()];
        all.extend_from_slice(args);
        d.cli(&all)
    };
    let (ok, token, _) = alice(&["auth", "print-identity-token", &format!("--audiences={url}")]);
    assert!(ok);
    let (status, id) = call(Some(token.trim()));
    assert_eq!(status, 403);
    let id = id.unwrap();
    assert_eq!(d.reason_for(&id), "iam.no_binding");
    // The refusal says how to grant it.
    let why: Value = serde_json::from_str(&d.ok(&["troubleshoot", "request", &id, "--format=json"])).unwrap();
    let fixes = why["fixes"].to_string();
    assert!(fixes.contains("--member=user:alice@example.com --role=roles/run.invoker"), "{why}");
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
    let sa = "caller-sa@runnel-local.iam.gserviceaccount.com";
    let (ok, _, err) = alice(&[
        "auth",
        "print-identity-token",
        &format!("--audiences={url}"),
        &format!("--impersonate-service-account={sa}"),
    ]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("iam.serviceAccounts.getOpenIdToken"), "{err}");

    // The owner impersonates the account: refused until it holds Cloud Run Invoker.
    let sa_token = d.ok(&[
        "auth",
        "print-identity-token",
        &format!("--audiences={url}"),
        &format!("--impersonate-service-account={sa}"),
    ]);
    let (status, id) = call(Some(sa_token.trim()));
    assert_eq!(status, 403);
    assert_eq!(d.reason_for(&id.unwrap()), "iam.no_binding");
    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        &format!("--member=serviceAccount:{sa}"),
        "--role=roles/run.invoker",
    ]);
    assert_eq!(call(Some(sa_token.trim())).0, 200);
    // Disabled: the token it already has is refused on the next request.
    d.ok(&["iam", "service-accounts", "disable", sa]);
    let (status, id) = call(Some(sa_token.trim()));
    assert_eq!(status, 403);
    assert_eq!(d.reason_for(&id.unwrap()), "principal.disabled");

    // A person's token dies with their last credential: granted, alice gets in; revoked, not.
    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        "--member=user:alice@example.com",
        "--role=roles/run.invoker",
    ]);
    assert_eq!(call(Some(token.trim())).0, 200);
    let creds: Value = serde_json::from_str(&d.ok(&["auth", "credentials", "list", "--format=json"])).unwrap();
    let alices = creds.as_array().unwrap().iter().find(|c| c["member"] == "user:alice@example.com").unwrap();
    let name = alices["name"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    d.ok(&["auth", "credentials", "revoke", &name]);
    let (status, id) = call(Some(token.trim()));
    assert_eq!(status, 403);
    assert_eq!(d.reason_for(&id.unwrap()), "principal.deleted");
    // The owner keeps theirs.
    assert_eq!(call(Some(owner.trim())).0, 200);
}
