//! Issue #5, end to end: `runnel run services proxy` (plain and `--network`) and access tokens
//! with the real binary against a real daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, Daemon};

/// A `runnel run services proxy` process; killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Daemon {
    /// Starts a proxy and waits until it says it listens.
    fn proxy(&self, args: &[&str]) -> Proxy {
        let mut child = Command::new(BIN)
            .args(["run", "services", "proxy"])
            .args(args)
            .env("RUNNEL_HOME", &self.home)
            .env_remove("RUNNEL_CREDENTIAL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "the proxy ended: {said}");
            said.push_str(&line);
            if line.contains(" proxies to ") {
                break;
            }
        }
        assert!(said.contains("Proxying to Cloud Run service ["), "{said}");
        Proxy(child)
    }
}

/// A GET on a local port: status and request id.
fn get(port: u16) -> (u16, Option<String>) {
    let (status, id, _) = get_text(port);
    (status, id)
}

/// A GET on a local port: status, request id and the whole response text.
fn get_text(port: u16) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let id = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-runnel-request-id: ").map(|v| v.trim().to_string()));
    (status, id, text)
}

#[test]
fn an_internal_service_is_reachable_through_an_operator_proxy_into_its_network_only() {
    let d = Daemon::start("proxy");
    d.ok(&["compute", "networks", "create", "vpc"]);
    d.ok(&[
        "run",
        "deploy",
        "internal",
        "--command=python3",
        "--args=app.py",
        "--ingress=internal",
        "--no-allow-unauthenticated",
    ]);

    // Like gcloud's proxy: the requests come from the internet, so internal ingress refuses them.
    let plain = free_port();
    let proxy = d.proxy(&["internal", &format!("--port={plain}")]);
    let (status, id) = get(plain);
    assert_eq!(status, 404);
    assert_eq!(d.reason_for(&id.unwrap()), "ingress.internal_only.from_internet");
    // The port is taken now: a second proxy says so.
    let (ok, _, err) = d.cli(&["run", "services", "proxy", "internal", &format!("--port={plain}")]);
    assert!(!ok && err.contains(&format!("port {plain} on 127.0.0.1 is already in use")), "{err}");
    drop(proxy);

    // Through the network, as an operator proxy for the owner: admitted, with the owner's token.
    let inside = free_port();
    let proxy = d.proxy(&["internal", &format!("--port={inside}"), "--network=vpc"]);
    let (status, id) = get(inside);
    assert_eq!(status, 200);
    let id = id.unwrap();
    let log = std::fs::read_to_string(&d.log).unwrap();
    let line = log.lines().find(|l| l.contains("operator proxy request") && l.contains(&id)).unwrap();
    assert!(line.contains("user:owner@") && line.contains("status=200"), "{line}");
    // The listener closes when the CLI ends.
    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", inside)).is_ok() {
        assert!(Instant::now() < deadline, "the operator proxy still listens after the CLI ended");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A person without compute.networks.use is refused, naming it.
    let alice = d.apps.parent().unwrap().join("alice.credential");
    d.ok(&[
        "auth",
        "credentials",
        "create",
        "--member=user:alice@example.com",
        &format!("--output-file={}", alice.display()),
    ]);
    // She may see the service (the CLI looks it up first), but not enter the network.
    d.ok(&[
        "projects",
        "add-iam-policy-binding",
        "runnel-local",
        "--member=user:alice@example.com",
        "--role=roles/run.viewer",
    ]);
    let (ok, _, err) = d.cli(&[
        "--credential-file",
        alice.to_str().unwrap(),
        "run",
        "services",
        "proxy",
        "internal",
        &format!("--port={}", free_port()),
        "--network=vpc",
    ]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("compute.networks.use"), "{err}");

    // Granted, she enters; the grant removed, her proxy still open stops entering the network
    // on the very next request (the origin is decided per request, against current policy).
    let grant = |verb: &str, role: &str| {
        d.ok(&["projects", verb, "runnel-local", "--member=user:alice@example.com", &format!("--role={role}")]);
    };
    grant("add-iam-policy-binding", "roles/compute.networkUser");
    grant("add-iam-policy-binding", "roles/run.invoker");
    let port = free_port();
    let credential = format!("--credential-file={}", alice.display());
    let _proxy = d.proxy(&["internal", &format!("--port={port}"), "--network=vpc", &credential]);
    assert_eq!(get(port).0, 200);
    grant("remove-iam-policy-binding", "roles/compute.networkUser");
    let (status, id, text) = get_text(port);
    assert_eq!((status, id), (403, None), "refused before reaching the frontend: {text}");
    assert!(
        text.contains("does not hold `compute.networks.use`") && text.contains("roles/compute.networkUser"),
        "{text}"
    );
}

#[test]
fn a_service_accounts_access_token_is_an_api_credential_but_not_an_id_token() {
    let d = Daemon::start("access");
    d.ok(&["run", "deploy", "receiver", "--command=python3", "--args=app.py", "--no-allow-unauthenticated"]);
    d.ok(&["iam", "service-accounts", "create", "viewer"]);
    let sa = "viewer@runnel-local.iam.gserviceaccount.com";
    d.ok(&[
        "projects",
        "add-iam-policy-binding",
        "runnel-local",
        &format!("--member=serviceAccount:{sa}"),
        "--role=roles/run.viewer",
    ]);
    let token = d.ok(&["auth", "print-access-token", &format!("--impersonate-service-account={sa}")]);
    let token = token.trim();
    assert!(token.starts_with("ya29."), "{token}");
    let as_sa = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(&d.apps)
            .env("RUNNEL_HOME", &d.home)
            .env("RUNNEL_CREDENTIAL", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = as_sa(&["run", "services", "list"]);
    assert!(ok && out.contains("receiver"), "{out}{err}");
    let (ok, _, err) = as_sa(&["run", "deploy", "other", "--command=python3", "--args=app.py"]);
    assert!(!ok && err.contains("PERMISSION_DENIED") && err.contains("run.services.create"), "{err}");

    // The frontend never takes it for an ID token.
    let mut s = TcpStream::connect(&d.frontend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        d.host("receiver")
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-runnel-request-id: ").map(|v| v.trim().to_string()));
    assert_eq!(d.reason_for(&id.unwrap()), "token.access_token_not_id_token");

    // Disabled: the token is refused at once with 401.
    d.ok(&["iam", "service-accounts", "disable", sa]);
    let (ok, _, err) = as_sa(&["run", "services", "list"]);
    assert!(!ok && err.contains("UNAUTHENTICATED") && err.contains("disabled"), "{err}");
}
