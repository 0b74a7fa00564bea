//! The guide's calling service in Node and in Rust, with Google's own client libraries, and a
//! receiving service that verifies runnel's ID tokens itself (`examples/internal-only/`).
//!
//! The callers are the examples unmodified: Node's `google-auth-library` (`getIdTokenClient`)
//! and Rust's `google-cloud-auth` (`idtoken::Builder`) find the metadata server, get an ID token
//! for the receiver's URL and call it through the egress proxy. Each answers with what its call
//! got (`{status, body, request_id}`), so a refusal is asserted by the reason the daemon logged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{BIN, Daemon, q, world_readable};

/// Where scripts/install-deps puts google-auth-library for instances to read.
const NODE_MODULES: &str = "/var/lib/runnel-test-node/node_modules";
/// The Rust calling service: a member of the workspace, built next to `runnel` by a
/// workspace-wide test run (its own integration test needs the binary).
const RUST_CALLER: &str = "runnel-example-caller";
const SA: &str = "caller-sa@runnel-local.iam.gserviceaccount.com";

fn example(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/internal-only")).join(name)
}

/// Puts the examples' programs in the daemon's apps directory, where instances can read them.
fn place_examples(d: &Daemon) -> PathBuf {
    assert!(
        Path::new(NODE_MODULES).join("google-auth-library/package.json").exists(),
        "google-auth-library is not installed in {NODE_MODULES}; run scripts/install-deps"
    );
    let built = Path::new(BIN).with_file_name(RUST_CALLER);
    assert!(
        built.exists(),
        "the Rust calling service is not built at {}; run `cargo build -p {RUST_CALLER}` (a workspace-wide test run builds it)",
        built.display()
    );
    let rust = d.apps.join(RUST_CALLER);
    std::fs::copy(&built, &rust).unwrap();
    std::fs::copy(example("node/server.js"), d.apps.join("caller.js")).unwrap();
    std::fs::copy(example("verifying-receiver/server.py"), d.apps.join("verifier.py")).unwrap();
    world_readable(&d.apps);
    rust
}

/// Deploys the guide's network: a VPC with a connector, and the caller's service account.
fn vpc_and_account(d: &Daemon) {
    d.vpc_with_connector();
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
}

/// Deploys a calling service running `command` as the caller's account, through the connector.
fn deploy_caller(d: &Daemon, name: &str, command: &str, args: Option<&str>, env: &str, vpc: bool) {
    let mut flags = vec![
        "run".to_string(),
        "deploy".into(),
        name.into(),
        format!("--command={command}"),
        format!("--set-env-vars={env}"),
        "--allow-unauthenticated".into(),
        format!("--service-account={SA}"),
    ];
    if let Some(args) = args {
        flags.push(format!("--args={args}"));
    }
    if vpc {
        flags.extend(["--vpc-connector=conn".to_string(), "--vpc-egress=all-traffic".to_string()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    d.ok(&flags);
}

/// What a calling service's call got.
fn call(d: &Daemon, caller: &str) -> Value {
    d.call_from(caller, "")
}

#[test]
fn the_guides_calling_service_in_node_and_rust_with_googles_libraries() {
    let d = Daemon::start("clients");
    let rust = place_examples(&d);
    d.internal_receiver();
    let receiver = d.url("receiver");
    vpc_and_account(&d);
    let env = format!("RECEIVING_SERVICE_URL={receiver}");
    deploy_caller(&d, "node-caller", "node", Some("caller.js"), &format!("{env},NODE_PATH={NODE_MODULES}"), true);
    deploy_caller(&d, "rust-caller", rust.to_str().unwrap(), None, &env, true);

    // The caller's account holds no role on the receiver: a valid token, refused by IAM.
    for caller in ["node-caller", "rust-caller"] {
        let r = call(&d, caller);
        assert_eq!(r["status"], 403, "{caller}: {r}");
        assert_eq!(d.reason_for(r["request_id"].as_str().unwrap()), "iam.no_binding", "{caller}: {r}");
    }

    // Granted Cloud Run Invoker: both reach the receiver through the connector.
    d.ok(&[
        "run",
        "services",
        "add-iam-policy-binding",
        "receiver",
        &format!("--member=serviceAccount:{SA}"),
        "--role=roles/run.invoker",
    ]);
    for caller in ["node-caller", "rust-caller"] {
        let r = call(&d, caller);
        assert_eq!(r["status"], 200, "{caller}: {r}");
        let seen: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(seen["service"], "receiver", "{caller}: {seen}");
        assert_eq!(seen["xff"], "10.8.0.2", "{caller} went through the connector: {seen}");
    }
}

/// A request from the host straight to a service, with an `Authorization` header of our choice.
fn get_with(d: &Daemon, host: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(&d.frontend).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not the receiver's JSON: {text}")))
}

/// `token` with its payload's `email` replaced and the original signature kept.
fn forged(token: &str, email: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    claims["email"] = Value::from(email);
    format!("{}.{}.{}", parts[0], b64url_encode(claims.to_string().as_bytes()), parts[2])
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        bits = (bits << 6) | B64URL.iter().position(|&b| b == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let v = chunk.iter().enumerate().fold(0u32, |v, (i, &b)| v | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64URL[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn a_receiver_verifies_runnel_tokens_itself_with_the_keys_from_the_egress_proxy() {
    let d = Daemon::start("verifier");
    let rust = place_examples(&d);
    let daemon: Value = serde_json::from_str(&std::fs::read_to_string(d.home.join("daemon.json")).unwrap()).unwrap();
    let issuer = daemon["api"].as_str().unwrap().to_string();
    let frontend_port = d.frontend.rsplit(':').next().unwrap().to_string();

    // A probe that fetches URLs through its egress proxy; its URL tells the verifier's.
    d.ok(&["run", "deploy", "probe", "--command=python3", "--args=app.py", "--allow-unauthenticated"]);
    let verifier = d.url("probe").replacen("http://probe-", "http://verifier-", 1);

    // The receiver decides itself: the invoker check is off, so Authorization reaches it intact.
    d.ok(&[
        "run",
        "deploy",
        "verifier",
        "--command=python3",
        "--args=verifier.py",
        "--no-invoker-iam-check",
        &format!("--set-env-vars=AUDIENCE={verifier},CERTS_URL={issuer}/oauth2/v1/certs,PYTHONPATH={}", super::PYDEPS),
    ]);
    assert_eq!(d.url("verifier"), verifier);
    d.ok(&["iam", "service-accounts", "create", "caller-sa"]);
    deploy_caller(&d, "rust-caller", rust.to_str().unwrap(), None, &format!("RECEIVING_SERVICE_URL={verifier}"), false);

    // A caller with a token from its metadata server: verified, with the caller's email.
    let r = call(&d, "rust-caller");
    assert_eq!(r["status"], 200, "{r}");
    let seen: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["email"], SA, "{seen}");

    // From the host: no token, a forged one, one for another audience — the receiver's own 401.
    let host = d.host("verifier");
    let (status, answer) = get_with(&d, &host, None);
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().starts_with("no bearer token"), "{answer}");
    let genuine = d.ok(&["auth", "print-identity-token", &format!("--audiences={verifier}")]);
    let genuine = genuine.trim();
    assert_eq!(get_with(&d, &host, Some(&format!("Bearer {genuine}"))).0, 200);
    let (status, answer) = get_with(&d, &host, Some(&format!("Bearer {}", forged(genuine, SA))));
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("does not verify"), "{answer}");
    let elsewhere = d.ok(&["auth", "print-identity-token", "--audiences=http://elsewhere.example"]);
    let (status, answer) = get_with(&d, &host, Some(&format!("Bearer {}", elsewhere.trim())));
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("wrong audience"), "{answer}");

    // Through the egress proxy, the issuer answers exactly its publication paths; every other
    // request to runnel's listeners is refused as before.
    let published = |path: &str| {
        let r = d.call_from("probe", &format!("proxy=1&url={}", q(&format!("{issuer}{path}"))));
        assert_eq!(r["status"], 200, "{path}: {r}");
        serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()
    };
    let pems = published("/oauth2/v1/certs");
    assert!(
        pems.as_object()
            .is_some_and(|m| !m.is_empty()
                && m.values().all(|pem| pem.as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"))),
        "{pems}"
    );
    let jwks = published("/oauth2/v3/certs");
    assert!(jwks["keys"].as_array().is_some_and(|k| k.iter().all(|k| k["kty"] == "RSA") && !k.is_empty()), "{jwks}");
    let discovery = published("/.well-known/openid-configuration");
    assert_eq!(discovery["issuer"], issuer.as_str(), "{discovery}");
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/oauth2/v3/certs"), "{discovery}");
    let port = issuer.rsplit(':').next().unwrap();
    for url in [
        format!("{issuer}/healthz"),
        format!("{issuer}/oauth2/v1/certs/extra"),
        format!("{issuer}/v2/projects/runnel-local/locations/local1/services"),
        format!("http://127.0.0.1:{frontend_port}/oauth2/v1/certs"),
        format!("http://0.0.0.0:{port}/oauth2/v1/certs"),
    ] {
        let r = d.call_from("probe", &format!("proxy=1&url={}", q(&url)));
        assert_eq!(r["status"], 403, "{url}: {r}");
        assert!(r["body"].as_str().unwrap().contains("egress.forbidden_destination"), "{url}: {r}");
    }
}
