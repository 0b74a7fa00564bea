//! The workload's environment is the spec's and nothing else, whatever the daemon's holds.

use std::collections::BTreeSet;

use crate::harness::{World, is_root, unique};

/// What a daemon's environment typically holds and must never reach an instance.
const DAEMON_ENV: &[(&str, &str)] = &[
    ("RUNNEL_HOME", "/var/lib/runnel"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/root/.config/gcloud/application_default_credentials.json"),
    ("NO_PROXY", "localhost,127.0.0.1"),
    ("HTTP_PROXY", "http://proxy.internal:3128"),
    ("AWS_SECRET_ACCESS_KEY", "daemon-secret"),
    ("LD_PRELOAD", ""),
    ("RUNNEL_LOG", "debug"),
];

#[test]
fn the_environment_is_exactly_the_specs() {
    let world = World::new();
    let env = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("PORT", "8080"),
        ("K_SERVICE", "hello"),
        ("K_REVISION", "hello-00001-abc"),
        ("WITH_SPACES", "a b=c"),
    ];
    let mut cmd = world.spec("a", "/usr/bin/env", &[]).env(&env).command();
    cmd.envs(DAEMON_ENV.iter().copied());
    let out = crate::harness::run(cmd);
    out.assert_code(0);
    let got: BTreeSet<&str> = out.stdout.lines().collect();
    let want: BTreeSet<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<BTreeSet<_>>());
    assert_eq!(out.stdout.lines().count(), env.len(), "duplicate variables: {}", out.stdout);
}

#[test]
fn an_empty_spec_env_means_an_empty_environment() {
    let world = World::new();
    let mut cmd = world.spec("a", "/usr/bin/env", &[]).env(&[]).command();
    cmd.envs(DAEMON_ENV.iter().copied());
    let out = crate::harness::run(cmd);
    out.assert_code(0);
    assert_eq!(out.stdout, "");
}

#[test]
fn working_dir_and_hostname_are_the_specs() {
    let world = World::new();
    let mut spec = world.sh("a", "pwd; hostname; cat /proc/sys/kernel/hostname").hostname("hello-00001-abc-instance");
    spec.working_dir = "/tmp".into();
    let out = spec.run();
    out.assert_code(0);
    assert_eq!(out.stdout, "/tmp\nhello-00001-abc-instance\nhello-00001-abc-instance\n");
}

/// The spec travels as stage 1's and stage 2's command line, which every local user can read
/// in `/proc/<pid>/cmdline` (`ps`): the revision's environment variables, secrets included, are
/// public on the host for as long as the instance runs.
#[test]
fn the_revisions_environment_is_not_readable_by_other_host_users() {
    if !is_root() {
        return;
    }
    let world = World::new();
    let secret = unique("sk-live");
    let mut sandbox = world
        .sh("a", "echo ready; sleep 5; :")
        .env(&[("PATH", "/usr/bin:/bin"), ("STRIPE_API_KEY", secret.as_str())])
        .start();
    sandbox.wait_for("ready");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=4242", "--regid=4242", "--clear-groups", "cat"]).arg(format!("/proc/{}/cmdline", sandbox.pid()));
    let out = crate::harness::run(cmd);
    sandbox.kill();
    assert!(!out.stdout.contains(&secret), "another host user read the revision's secret from stage 1's argv");
}
