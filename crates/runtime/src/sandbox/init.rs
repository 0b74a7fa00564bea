//! Stage 1 and stage 2 of the sandbox: the code that runs inside the new process tree.
//!
//! Both run before any thread exists (the binary dispatches to them first), report failures on
//! stderr as one line starting with `runnel sandbox:`, and exit non-zero, so the daemon can put
//! the reason in the revision's conditions.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use caps::CapSet;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid, getgid, getuid, setgroups, sethostname, setresgid, setresuid};

use super::spec::SandboxSpec;
use super::{STAGE2_ARG, mounts, netlink};

/// The host identity an instance gets when the daemon runs as root: never root itself.
const NOBODY: u32 = 65534;

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("runnel sandbox: {what}: {e}");
    ExitCode::from(125)
}

pub(super) fn exit_code(status: WaitStatus) -> ExitCode {
    match status {
        WaitStatus::Exited(_, code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        WaitStatus::Signaled(_, sig, _) => ExitCode::from(128u8.saturating_add(u8::try_from(sig as i32).unwrap_or(0))),
        _ => ExitCode::from(1),
    }
}

/// Enters new user, mount, PID, network, IPC and UTS namespaces with ids mapped to an
/// unprivileged host user.
fn enter_namespaces() -> Result<(), String> {
    let (mut uid, mut gid) = (getuid().as_raw(), getgid().as_raw());
    if uid == 0 {
        // Root maps the instance to nobody: inside it is "root" of nothing that matters, outside
        // it owns no file.
        setgroups(&[]).map_err(|e| format!("drop groups: {e}"))?;
        setresgid(Gid::from_raw(NOBODY), Gid::from_raw(NOBODY), Gid::from_raw(NOBODY))
            .map_err(|e| format!("become nobody (gid): {e}"))?;
        setresuid(Uid::from_raw(NOBODY), Uid::from_raw(NOBODY), Uid::from_raw(NOBODY))
            .map_err(|e| format!("become nobody (uid): {e}"))?;
        (uid, gid) = (NOBODY, NOBODY);
        // Changing uid made /proc/self root's; the id maps below are written through it.
        nix::sys::prctl::set_dumpable(true).map_err(|e| format!("dumpable: {e}"))?;
    }
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| format!("cannot create namespaces ({e}); this kernel does not allow unprivileged user namespaces (check `sysctl kernel.unprivileged_userns_clone` and `user.max_user_namespaces`), or run with `--isolation=none`, which is insecure"))?;
    fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups deny: {e}"))?;
    fs::write("/proc/self/uid_map", format!("0 {uid} 1")).map_err(|e| format!("uid_map: {e}"))?;
    fs::write("/proc/self/gid_map", format!("0 {gid} 1")).map_err(|e| format!("gid_map: {e}"))?;
    Ok(())
}

/// Where a root daemon's instance directory appears for the sandbox's stages. The sandbox
/// replaces `/run` with its own, so nothing of the host's `/run` is lost inside.
const EXPOSED_DIR: &str = "/run";

fn expose_instance_dir(dir: &Path) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("make mounts private: {e}"))?;
    mount(Some(dir), EXPOSED_DIR, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind {} on {EXPOSED_DIR}: {e}", dir.display()))
}

/// Stage 1: namespaces, hostname, loopback; then runs stage 2 as PID 1 and relays signals.
pub fn stage1_main(spec_json: &str, exe: &Path) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with the daemon", e);
    }
    if spec_json == "probe" {
        return match enter_namespaces().and_then(|()| netlink::setup_loopback(Ipv4Addr::new(169, 254, 169, 254))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("probe", e),
        };
    }
    let mut spec: SandboxSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => return fail("bad spec", e),
    };
    if getuid().is_root() {
        // The instance's directory sits in `$RUNNEL_HOME` (mode 0700), which `nobody` cannot
        // traverse. While still root, give it a path `nobody` can reach, in a mount namespace of
        // this process only; the namespaces below inherit it, locked.
        if let Err(e) = expose_instance_dir(&spec.dir) {
            return fail("instance directory", e);
        }
        spec.dir = std::path::PathBuf::from(EXPOSED_DIR);
    }
    let spec_json = match serde_json::to_string(&spec) {
        Ok(j) => j,
        Err(e) => return fail("spec", e),
    };
    if let Err(e) = enter_namespaces() {
        return fail("namespaces", e);
    }
    if let Err(e) = sethostname(&spec.hostname) {
        return fail("hostname", e);
    }
    if let Err(e) = netlink::setup_loopback(Ipv4Addr::new(169, 254, 169, 254)) {
        return fail("loopback", e);
    }
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        return fail("block signals", e);
    }
    let child = match Command::new(exe).arg(STAGE2_ARG).arg(&spec_json).env_clear().stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => return fail("start stage 2", e),
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => continue,
                Ok(status) => return exit_code(status),
            },
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
            Err(e) => return fail("wait for signals", e),
        }
    }
}

/// Drops every capability and forbids gaining any back, so the workload cannot undo a mount.
fn drop_privileges() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("drop bounding {cap}: {e}"))?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("clear capabilities: {e}"))?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    Ok(())
}

/// Stage 2, PID 1 of the sandbox: builds the filesystem, opens the channels, runs the
/// workload, reaps orphans, and exits with the workload's status.
pub fn stage2_main(spec_json: &str) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with stage 1", e);
    }
    // Stage 1 blocks the signals it relays, and a blocked mask survives exec; PID 1 needs them.
    if let Err(e) = SigSet::all().thread_unblock() {
        return fail("unblock signals", e);
    }
    let spec: SandboxSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => return fail("bad spec", e),
    };
    if let Err(e) = mounts::build_root(&spec) {
        return fail("filesystem", e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail("runtime", e),
    };
    runtime.block_on(async move {
        // Signal handlers first, so a workload that exits at once is still noticed.
        let reaper = match super::reaper::Reaper::new() {
            Ok(r) => r,
            Err(e) => return fail("signals", e),
        };
        let channels = match super::channels::open(&spec).await {
            Ok(c) => c,
            Err(e) => return fail("channels", e),
        };
        if let Err(e) = drop_privileges() {
            return fail("privileges", e);
        }
        let cwd = if spec.working_dir.as_os_str().is_empty() {
            Path::new("/").to_path_buf()
        } else {
            spec.working_dir.clone()
        };
        let workload = Command::new(&spec.command)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .spawn();
        let workload = match workload {
            Ok(c) => c,
            Err(e) => {
                return fail(&format!("start `{}` in {}", spec.command, cwd.display()), e);
            }
        };
        let pid = Pid::from_raw(i32::try_from(workload.id()).unwrap_or(0));
        tokio::spawn(channels.serve());
        reaper.run(pid).await
    })
}
