//! The daemon run without privileges builds the same sandbox: a user namespace of its own,
//! the same view of the host, the same network.

use crate::harness::{NOBODY, World, host_ids, is_root, processes_with, unique};

#[test]
fn a_sandbox_started_by_an_unprivileged_user_is_the_same() {
    let world = World::new();
    let marker = unique("unprivileged-marker");
    let script = r#"hostname
id -u
touch /usr/x
tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
cat "$1/secret"
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
exit 5"#;
    let spec = world.sh("a", script).arg(world.home().to_str().unwrap()).arg(&marker).hostname("unprivileged");
    let out = crate::harness::run(spec.command_unprivileged());
    out.assert_code(5);
    assert_eq!(out.stdout, "unprivileged\n0\nlo\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
    assert_eq!(
        out.stderr,
        format!(
            "touch: cannot touch '/usr/x': Read-only file system\ncat: {}/secret: No such file or directory\n",
            world.home().display()
        )
    );
}

#[test]
fn an_unprivileged_sandbox_runs_as_its_starter() {
    if !is_root() {
        return;
    }
    let world = World::new();
    let marker = unique("unprivileged-uid-marker");
    let spec = world.sh("a", "echo ready; sleep 5; :").arg(&marker);
    let mut sandbox = crate::harness::start(spec.command_unprivileged());
    sandbox.wait_for("ready");
    let workload = processes_with(&marker)
        .into_iter()
        .find(|p| p.argv.first().is_some_and(|a| a == "/bin/sh"))
        .expect("the workload by its marker");
    assert_eq!(host_ids(workload.pid).unwrap().uid, [NOBODY; 4]);
}

/// Without privileges the instance maps to the daemon's own uid, so it may read every private
/// file of the daemon's user that the host view shows: `hide` lists nine credential paths
/// (`up.rs` `hidden_paths`), and everything else in the user's home (shell history, `gh`,
/// `npm`, `pypi`, `cargo` tokens, …) is readable. As root the same holds for files of `nobody`.
#[test]
#[ignore = "limitation: without root, an instance runs as the daemon's user and reads what it reads outside `hide`; see docs/security.md"]
fn an_unprivileged_instance_cannot_read_its_starters_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    let private = world.scratch().join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = unique("ghp_token");
    let file = private.join("hosts.yml");
    std::fs::write(&file, &token).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        for p in [&private, &file] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let spec = world.sh("a", r#"cat "$1""#).arg(file.to_str().unwrap());
    let out = crate::harness::run(spec.command_unprivileged());
    assert!(!out.stdout.contains(&token), "the instance read its starter's private file: {out:#?}");
}
