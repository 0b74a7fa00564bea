//! The sandbox's view of the filesystem: the host read-only, runnel's state and other instances
//! absent, its own in-memory `/tmp`, fresh `/proc`, a minimal `/dev`, its own hosts file.

use std::fs;
use std::os::unix::fs::symlink;

use crate::harness::{BIN, HOSTS, World, unique, world_readable};

#[test]
fn runnel_home_and_other_instances_do_not_exist_inside() {
    let world = World::new();
    let home = world.home();
    let script = r#"ls -A "$1"; echo "ls home: $?"
cat "$1/secret"; echo "cat secret: $?"
cat "$2"; echo "cat other: $?"
ls "$1/instances"; echo "ls instances: $?"
cat "$3/visible"; echo"#;
    let out = world
        .sh("a", script)
        .arg(home.to_str().unwrap())
        .arg(world.other_secret().to_str().unwrap())
        .arg(world.scratch().to_str().unwrap())
        .run();
    out.assert_code(0);
    // The scratch directory next to the home is visible: the home is gone because it is
    // hidden, not because the host view misses the tempdir.
    assert_eq!(
        out.stdout, "ls home: 2\ncat secret: 1\ncat other: 1\nls instances: 2\nvisible from inside\n",
        "{out:#?}"
    );
    assert_eq!(
        out.stderr,
        format!(
            "ls: cannot access '{h}': No such file or directory\n\
             cat: {h}/secret: No such file or directory\ncat: {o}: No such file or directory\n\
             ls: cannot access '{h}/instances': No such file or directory\n",
            h = home.display(),
            o = world.other_secret().display()
        )
    );
    assert!(!out.stdout.contains(&world.home_secret_text) && !out.stdout.contains(&world.other_secret_text));
}

#[test]
fn a_hidden_file_does_not_exist_and_its_neighbours_stay() {
    let world = World::new();
    let creds = world.scratch().join("credentials.json");
    world_readable(&creds, "{\"private_key\": \"hidden-key\"}");
    let script = r#"cat "$1"; echo "cat: $?"; cat "$2/visible"; echo"#;
    let out = world
        .sh("a", script)
        .arg(creds.to_str().unwrap())
        .arg(world.scratch().to_str().unwrap())
        .hide(creds.clone())
        .run();
    out.assert_code(0);
    assert_eq!(out.stdout, "cat: 1\nvisible from inside\n");
    assert_eq!(out.stderr, format!("cat: {}: No such file or directory\n", creds.display()));
}

#[test]
fn the_host_is_read_only() {
    let world = World::new();
    let scratch = world.scratch();
    let script = r#"for p in /usr/x /etc/x /x /run/runnel/x "$1/x"; do touch "$p"; done
mkdir /var/x
rm "$1/visible"
echo appended >> /etc/hosts"#;
    let out = world.sh("a", script).arg(scratch.to_str().unwrap()).run();
    out.assert_code(2);
    let s = scratch.display();
    assert_eq!(
        out.stderr,
        format!(
            "touch: cannot touch '/usr/x': Read-only file system\n\
             touch: cannot touch '/etc/x': Read-only file system\n\
             touch: cannot touch '/x': Read-only file system\n\
             touch: cannot touch '/run/runnel/x': Read-only file system\n\
             touch: cannot touch '{s}/x': Read-only file system\n\
             mkdir: cannot create directory '/var/x': Read-only file system\n\
             rm: cannot remove '{s}/visible': Read-only file system\n\
             sandbox-sh: 4: cannot create /etc/hosts: Permission denied\n"
        )
    );
    assert!(scratch.join("visible").exists() && !scratch.join("x").exists());
}

#[test]
fn tmp_is_private_writable_and_in_memory() {
    let world = World::new();
    let host_marker = std::path::Path::new("/tmp").join(unique("runnel-host-tmp-marker"));
    fs::write(&host_marker, "host").unwrap();
    let script = r#"test -e "$1" && echo "host file present" || echo "host file absent"
ls -A /tmp | wc -l
echo hello > /tmp/f && cat /tmp/f
stat -f -c '%T %b %S' /tmp"#;
    let out = world.sh("a", script).arg(host_marker.to_str().unwrap()).run();
    let _ = fs::remove_file(&host_marker);
    out.assert_code(0);
    // 64 MiB (`tmp_mib`) in 4 KiB blocks.
    assert_eq!(out.stdout, "host file absent\n0\nhello\ntmpfs 16384 4096\n");
}

#[test]
fn etc_hosts_names_the_metadata_server() {
    let world = World::new();
    let out = world.sh("a", "cat /etc/hosts; getent hosts metadata.google.internal").run();
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{HOSTS}169.254.169.254 metadata.google.internal metadata\n"));
}

#[test]
fn proc_shows_only_the_sandboxes_processes() {
    let world = World::new();
    let script = r#"tr '\0' '\n' < /proc/1/cmdline | head -n 2
ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\n' ' '; echo
test -e "/proc/$1" && echo "host pid visible" || echo "host pid absent""#;
    let own = std::process::id().to_string();
    let out = world.sh("a", script).arg(&own).run();
    out.assert_code(0);
    let lines = out.lines();
    assert_eq!(lines.len(), 4, "{out:#?}");
    assert_eq!(lines[0], BIN, "PID 1 is not runnel: {out:#?}");
    assert_eq!(lines[1], "__sandbox-init");
    let pids: Vec<u32> = lines[2].split_whitespace().map(|p| p.parse().unwrap()).collect();
    // PID 1 (stage 2), the shell, and the few commands it has run so far.
    assert_eq!(pids[..2], [1, 2], "{pids:?}");
    assert!(pids.len() <= 6 && pids.iter().all(|p| *p < 20), "unexpected processes visible: {pids:?}");
    assert_eq!(lines[3], "host pid absent");
}

#[test]
fn dev_holds_only_harmless_devices() {
    let world = World::new();
    let out = world.sh("a", "ls -A /dev | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; ls /dev/sda /dev/mem").run();
    out.assert_code(2);
    assert_eq!(out.stdout, "fd full null random shm stderr stdin stdout tty urandom zero \n4\n");
    assert_eq!(
        out.stderr,
        "ls: cannot access '/dev/sda': No such file or directory\nls: cannot access '/dev/mem': No such file or directory\n"
    );
}

/// `hide` is resolved inside the new root before `pivot_root`, following symlinks: a path
/// through an absolute symlink resolves to the *old* root, the empty tmpfs lands there, and the
/// copy inside the new root stays visible.
#[test]
fn a_hide_path_through_an_absolute_symlink_is_hidden() {
    let world = World::new();
    let real = world.scratch().join("real");
    fs::create_dir_all(real.join("home")).unwrap();
    fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::set_permissions(real.join("home"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    world_readable(&real.join("home/secret"), "reached-through-symlink");
    let link = world.scratch().join("link");
    symlink(&real, &link).unwrap();
    // As a daemon whose RUNNEL_HOME is given through a symlinked path would pass it.
    let hidden = link.join("home");
    let out = world
        .sh("a", r#"cat "$1/secret"; echo " rc=$?"; cat "$2/secret"; echo " rc=$?""#)
        .arg(hidden.to_str().unwrap())
        .arg(real.join("home").to_str().unwrap())
        .hide(hidden.clone())
        .run();
    out.assert_code(0);
    assert!(!out.stdout.contains("reached-through-symlink"), "the hidden directory was readable: {out:#?}");
}

/// Stage 2 execs the workload with every descriptor it inherited without `O_CLOEXEC`: one the
/// daemon (or a library in it) leaks opens the host as the daemon sees it, hidden paths
/// included, past the read-only view.
#[test]
fn file_descriptors_inherited_by_stage_1_do_not_reach_the_workload() {
    let world = World::new();
    let spec = world.sh("a", r#"ls /proc/self/fd | tr '\n' ' '; echo; cat /proc/self/fd/5/secret"#);
    let mut leaky = std::process::Command::new("/bin/sh");
    leaky
        .arg("-c")
        .arg(r#"exec 5<"$1"; shift; exec "$@""#)
        .arg("leaky-daemon")
        .arg(world.home())
        .arg(BIN)
        .arg("__sandbox")
        .stdin(spec.stdin());
    let out = crate::harness::run(leaky);
    assert!(!out.stdout.contains(&world.home_secret_text), "the hidden home was read through fd 5: {out:#?}");
    assert_eq!(out.stderr, "cat: /proc/self/fd/5/secret: No such file or directory\n");
}
