//! The sandbox as a process: its exit status is the workload's, signals reach the workload, and
//! no process outlives it, whichever way it ends.

use std::time::Duration;

use crate::harness::{World, processes_with, unique, wait_until_gone};

#[test]
fn exit_status_of_the_workload_is_the_sandboxes() {
    let world = World::new();
    let out = world.sh("a", "echo out; echo err >&2; exit 7").run();
    out.assert_code(7);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn a_workload_killed_by_a_signal_ends_with_128_plus_the_signal() {
    let world = World::new();
    world.sh("a", "kill -KILL $$").run().assert_code(137);
}

#[test]
fn a_command_that_cannot_start_fails_with_125_and_says_why() {
    let world = World::new();
    let out = world.spec("a", "/nonexistent/app", &[]).run();
    out.assert_code(125);
    assert_eq!(out.stderr, "runnel sandbox: start `/nonexistent/app` in /: No such file or directory (os error 2)\n");
}

#[test]
fn sigterm_to_stage_1_reaches_the_workload() {
    let world = World::new();
    let mut sandbox =
        world.sh("a", "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done").start();
    sandbox.wait_for("ready");
    sandbox.signal("TERM");
    let out = sandbox.wait();
    out.assert_code(3);
    assert_eq!(out.lines(), ["ready", "got TERM"]);
}

/// The grandchild leaves the workload's session and process group, as a daemonizing program
/// does; only the end of the PID namespace can take it down. `ready` waits for the grandchild
/// itself: the pattern names the marker, which only the grandchild's command line holds
/// expanded (the workload's own holds this script, whose text says "grandchild" too).
const DAEMONIZE: &str = r#"setsid sh -c 'sleep 1000; :' "$1-grandchild" </dev/null >/dev/null 2>&1 &
until grep -qs -- "$1-grandchil[d]" /proc/[0-9]*/cmdline; do sleep 0.02; done
echo ready"#;

#[test]
fn sigkill_to_stage_1_leaves_no_process_behind() {
    let world = World::new();
    let marker = unique("kill-marker");
    let script = format!("{DAEMONIZE}\nwhile :; do sleep 1; done");
    let mut sandbox = world.sh("a", &script).arg(&marker).start();
    sandbox.wait_for("ready");

    let before = processes_with(&marker);
    let stage1 = sandbox.pid();
    // The spec (and so the marker) reaches the stages on standard input, not their command
    // line: stage 1 is known by its pid, stage 2 as its child.
    assert!(std::path::Path::new(&format!("/proc/{stage1}")).exists(), "stage 1 is not running");
    let stage2 = child_of(stage1).expect("stage 2, the child of stage 1");
    assert!(before.iter().any(|p| p.argv.iter().any(|a| a.ends_with("-grandchild"))), "no grandchild: {before:#?}");
    assert!(before.len() >= 2, "expected the workload and its grandchild: {before:#?}");

    sandbox.kill();
    let left = wait_until_gone(&marker, Duration::from_secs(10));
    assert!(left.is_empty(), "processes outlived a SIGKILLed sandbox: {left:#?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{stage2}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!std::path::Path::new(&format!("/proc/{stage2}")).exists(), "stage 2 outlived stage 1");
}

#[test]
fn a_daemonized_grandchild_dies_when_the_workload_exits() {
    let world = World::new();
    let marker = unique("grandchild-marker");
    let out = world.sh("a", &format!("{DAEMONIZE}\nexit 0")).arg(&marker).run();
    out.assert_code(0);
    assert_eq!(out.stdout, "ready\n");
    let left = wait_until_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "a daemonized grandchild outlived its sandbox: {left:#?}");
}

/// Stage 2 asks for `PR_SET_PDEATHSIG` only once it runs: if stage 1 dies between forking it
/// and that call (a few milliseconds of exec and loading), stage 2 is orphaned, builds the
/// sandbox and runs the workload anyway, with nobody left to stop it. The same window exists
/// between the daemon and stage 1.
#[test]
fn killing_stage_1_during_startup_leaves_nothing_behind() {
    let world = World::new();
    let marker = unique("startup-race");
    // The marker is an argument of the workload, so an orphaned sandbox shows it.
    let spec = world.sh("a", "sleep 30").arg(&marker);
    for attempt in 0..60u64 {
        let mut child = spec.command().spawn().unwrap();
        // Spread the kills over stage 1's first milliseconds.
        std::thread::sleep(Duration::from_micros((attempt * 97) % 6000));
        let _ = child.kill();
        let _ = child.wait();
    }
    let left = wait_until_gone(&marker, Duration::from_secs(1));
    for p in &left {
        crate::harness::send_signal(p.pid, "KILL");
    }
    assert!(left.is_empty(), "{} sandboxes outlived their killed stage 1: {left:#?}", left.len());
}

/// The pid of a child of `parent`, read from `/proc/*/stat`.
fn child_of(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command may hold spaces and parentheses: the fields after the last `)` are fixed.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            return Some(pid);
        }
    }
    None
}
