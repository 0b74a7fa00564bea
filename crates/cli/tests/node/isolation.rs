//! The trust boundary, seen from inside a running instance: its own filesystem, processes,
//! network and environment, with nothing of the daemon or of a neighbouring instance in them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::harness::{Daemon, Start, Svc, World, processes_with, uid, unique};
use crate::http;

/// What the platform may announce to an instance about its sandbox, and the value it must
/// have: the egress proxy at its fixed loopback address, the metadata server at its address.
const ANNOUNCED: [(&str, &str); 8] = [
    ("HTTP_PROXY", "http://127.0.0.1:3128"),
    ("HTTPS_PROXY", "http://127.0.0.1:3128"),
    ("http_proxy", "http://127.0.0.1:3128"),
    ("https_proxy", "http://127.0.0.1:3128"),
    ("NO_PROXY", "127.0.0.1,::1,169.254.169.254,metadata.google.internal,metadata"),
    ("no_proxy", "127.0.0.1,::1,169.254.169.254,metadata.google.internal,metadata"),
    ("GCE_METADATA_HOST", "169.254.169.254:80"),
    ("GCE_METADATA_IP", "169.254.169.254:80"),
];

/// A daemon started with credentials in its environment, a neighbour service on port 9091,
/// and what the `probe` service's instance saw when asked to look around.
struct Looked {
    world: World,
    daemon: Daemon,
    probe: Svc,
    probe_marker: String,
    neighbour_marker: String,
    secret: String,
    /// The daemon's own environment beyond the usual: none of it may reach an instance.
    daemon_env: Vec<(String, String)>,
    /// The daemon's home, its files, every instance's directory and port socket.
    home_paths: Vec<String>,
    /// The daemon's credential file (`GOOGLE_APPLICATION_CREDENTIALS`), readable by everyone.
    adc: String,
    /// A file the instance must see: the app itself.
    visible: String,
    seen: Value,
}

fn look_around() -> Looked {
    let world = World::new();
    let adc_path = world.app_dir().parent().expect("the test directory").join("adc.json");
    fs::write(&adc_path, "{\"type\": \"service_account\", \"private_key\": \"secret\"}").expect("write adc.json");
    fs::set_permissions(&adc_path, fs::Permissions::from_mode(0o644)).expect("chmod adc.json");
    let adc = adc_path.display().to_string();
    let secret = unique("daemon-secret");
    let daemon_env = [
        ("RUNNEL_SECRET_MARKER", secret.as_str()),
        ("GOOGLE_APPLICATION_CREDENTIALS", adc.as_str()),
        ("NO_PROXY", "metadata.google.internal,169.254.169.254"),
        ("HTTPS_PROXY", "http://proxy.invalid:3128"),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("PYTHONPATH", "/nonexistent"),
        ("GCE_METADATA_HOST", "metadata.daemon.invalid"),
    ];
    // LC_ALL and TZ are passed on by design when the daemon has them; they are left out so
    // that the expected environment does not depend on the machine.
    let daemon = world.start(&Start { env: &daemon_env, env_remove: &["LC_ALL", "TZ"], ..Start::default() });

    let neighbour_marker = unique("neighbour");
    let probe_marker = unique("probe");
    world.deploy("neighbour", &neighbour_marker, &["--port=9091"]);
    world.deploy("probe", &probe_marker, &["--set-env-vars=FOO=bar,APP_VERSION=probe-1"]);
    let probe = world.service("probe");
    let neighbours = processes_with(&neighbour_marker);
    assert_eq!(neighbours.len(), 1, "the neighbour runs on the host: {neighbours:?}");

    let home = world.home();
    let instance_dirs: Vec<String> = fs::read_dir(home.join("i"))
        .expect("the instances directory")
        .map(|e| e.expect("an entry").path().display().to_string())
        .collect();
    assert_eq!(instance_dirs.len(), 2, "one directory per instance: {instance_dirs:?}");
    let mut home_paths: Vec<String> = ["", "daemon.json", "owner.credential", "i"]
        .iter()
        .map(|p| if p.is_empty() { home.display().to_string() } else { home.join(p).display().to_string() })
        .collect();
    for dir in &instance_dirs {
        home_paths.push(dir.clone());
        home_paths.push(format!("{dir}/run/port.sock"));
    }
    for path in home_paths.iter().chain([&adc]) {
        assert!(fs::symlink_metadata(path).is_ok(), "{path} exists on the host");
    }
    let visible = world.app_dir().join("app.py").display().to_string();
    let mut paths = home_paths.clone();
    paths.push(adc.clone());
    paths.push(visible.clone());

    let ports = [9091, daemon.api.port(), daemon.frontend.port(), 8080];
    let seen = http::post_json(daemon.frontend, &probe.authority, "/check", &json!({"paths": paths, "ports": ports}))
        .ok_json();
    let daemon_env = daemon_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Looked { world, daemon, probe, probe_marker, neighbour_marker, secret, daemon_env, home_paths, adc, visible, seen }
}

#[test]
fn an_instance_sees_nothing_of_the_daemon_or_its_neighbours() {
    let l = look_around();
    let seen = &l.seen;

    // Files: nothing of the daemon's home (its files, every instance's directory) and nothing
    // of the daemon's credential file can be read; the app's own file can.
    let home = l.world.home().display().to_string();
    for path in &l.home_paths {
        let look = &seen["paths"][path];
        if *path == home {
            // The home itself is either absent or an empty directory.
            assert!(
                look["exists"] == false || look["entries"] == json!([]),
                "the daemon's home is readable inside the instance: {look}"
            );
        } else {
            assert_eq!(look["exists"], false, "{path} exists inside the instance: {seen}");
        }
    }
    let adc = &seen["paths"][&l.adc];
    assert!(
        adc["exists"] == false || adc["content"] == "",
        "the daemon's credential file is readable inside the instance: {adc}"
    );
    assert_eq!(seen["paths"][&l.visible]["exists"], true, "the app's own file is missing inside: {seen}");

    // Network: the neighbour's port and the daemon's listeners are not there; its own is.
    let api = l.daemon.api.port().to_string();
    let frontend = l.daemon.frontend.port().to_string();
    assert_eq!(
        seen["ports"],
        json!({"9091": "refused", api: "refused", frontend: "refused", "8080": "connected"}),
        "{seen}"
    );

    // Processes: only the sandbox's init and the app itself.
    let procs = seen["procs"].as_array().expect("procs");
    let pids: BTreeSet<u64> = procs.iter().filter_map(|p| p["pid"].as_u64()).collect();
    let own = seen["pid"].as_u64().expect("pid");
    assert_eq!(pids, BTreeSet::from([1, own]), "other processes are visible inside: {procs:?}");
    for p in procs {
        let argv: Vec<&str> = p["argv"].as_array().expect("argv").iter().filter_map(Value::as_str).collect();
        if p["pid"] == 1 {
            assert_eq!(argv.get(1).copied(), Some("__sandbox-init"), "PID 1 is not the sandbox's init: {p}");
        } else {
            assert!(argv.contains(&l.probe_marker.as_str()), "{p}");
        }
        assert!(!argv.iter().any(|a| a.contains(&l.neighbour_marker)), "the neighbour is visible: {p}");
    }

    // Environment: exactly the allowlist, the contract and the revision's own variables, plus
    // what the platform announces about the sandbox (its egress proxy and metadata server), with
    // the platform's values; nothing of the daemon's.
    let env = seen["env"].as_object().expect("env");
    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let mut expected = BTreeSet::from([
        "PATH",
        "HOME",
        "LANG",
        "PORT",
        "K_SERVICE",
        "K_REVISION",
        "K_CONFIGURATION",
        "FOO",
        "APP_VERSION",
    ]);
    for (k, value) in ANNOUNCED {
        if let Some(v) = env.get(k) {
            expected.insert(k);
            assert_eq!(v, value, "{k} is not the platform's: {seen}");
        }
    }
    assert_eq!(keys, expected, "{seen}");
    for (k, v) in &l.daemon_env {
        assert_ne!(env.get(k).and_then(Value::as_str), Some(v.as_str()), "the daemon's {k} reached the instance");
    }
    assert_eq!(env["FOO"], "bar");
    assert_eq!(env["APP_VERSION"], "probe-1");
    assert_eq!(env["K_SERVICE"], "probe");
    assert_eq!(env["K_CONFIGURATION"], "probe");
    assert_eq!(env["K_REVISION"], l.probe.revision.as_str());
    assert_eq!(env["PORT"], "8080");
    let text = seen["env"].to_string();
    assert!(!text.contains(&l.secret), "a daemon secret reached the instance: {text}");

    // Root only of its own user namespace: on the host it is an unprivileged uid.
    assert_eq!(seen["uid"], 0, "{seen}");
    let host_uid = uid(processes_with(&l.probe_marker)[0].pid);
    assert!(host_uid.is_some_and(|u| u != 0), "the instance runs as host root: {host_uid:?}");
}

/// DESIGN.md ("Trust boundary"): an instance's view of the filesystem is one "in which
/// runnel's state directory and other instances' files do not exist".
#[test]
fn the_daemons_home_and_credential_file_do_not_exist_inside_an_instance() {
    let l = look_around();
    let home = l.world.home().display().to_string();
    for path in [&home, &l.adc] {
        assert_eq!(l.seen["paths"][path]["exists"], false, "{path} exists inside the instance: {}", l.seen);
    }
}
