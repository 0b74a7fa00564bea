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

pub(super) fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
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
/// unprivileged host user: the daemon's own, or, for a root daemon, `host_uid` (never root).
fn enter_namespaces(host_uid: Option<u32>) -> Result<(), String> {
    let (mut uid, mut gid) = (getuid().as_raw(), getgid().as_raw());
    if uid == 0 {
        let target = host_uid.filter(|u| *u != 0).unwrap_or(NOBODY);
        setgroups(&[]).map_err(|e| format!("drop groups: {e}"))?;
        setresgid(Gid::from_raw(target), Gid::from_raw(target), Gid::from_raw(target))
            .map_err(|e| format!("become uid {target} (gid): {e}"))?;
        setresuid(Uid::from_raw(target), Uid::from_raw(target), Uid::from_raw(target))
            .map_err(|e| format!("become uid {target}: {e}"))?;
        (uid, gid) = (target, target);
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

/// Closes every descriptor above stderr that this process inherited, except `keep`: whatever
/// the daemon (or a test harness) left open must not reach the workload.
pub(super) fn close_inherited(keep: Option<i32>) {
    let fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect(),
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|fd| *fd > 2 && Some(*fd) != keep) {
        let _ = nix::unistd::close(fd);
    }
}

/// Gives this process a new, empty session keyring, so neither the daemon's keys nor keys
/// another instance leaves behind are reachable from the workload.
#[allow(unsafe_code, reason = "keyctl has no safe wrapper in the crates runnel uses")]
fn join_new_session_keyring() -> Result<(), String> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a null name reads no memory of ours; it only
    // replaces this process's session keyring with a new anonymous one.
    let r =
        unsafe { libc::syscall(libc::SYS_keyctl, libc::KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) };
    if r < 0 { Err(format!("join a new session keyring: {}", nix::errno::Errno::last())) } else { Ok(()) }
}

/// Reads the spec from standard input: never from the command line, which every host user can
/// read in `/proc/PID/cmdline`.
pub(super) fn read_spec() -> Result<SandboxSpec, String> {
    let mut json = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut json).map_err(|e| format!("read spec: {e}"))?;
    serde_json::from_str(&json).map_err(|e| format!("bad spec: {e}"))
}

/// Canonical forms of the paths to hide, so a symlink on the way cannot lead the hiding mount
/// astray (both the path as given and where it really is are hidden).
fn resolve_hidden(hide: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for p in hide {
        out.push(p.clone());
        if let Ok(real) = fs::canonicalize(p)
            && !out.contains(&real)
        {
            out.push(real);
        }
    }
    out
}

/// Stage 1: namespaces, hostname, loopback; then runs stage 2 as PID 1 and relays signals.
/// `mode` is `Some("probe")` to only test that namespaces can be made; otherwise the spec
/// comes on standard input.
pub fn stage1_main(mode: Option<&str>, exe: &Path) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with the daemon", e);
    }
    close_inherited(None);
    // A session of its own: no controlling terminal, so the workload cannot type into the
    // operator's (TIOCSTI).
    if let Err(e) = nix::unistd::setsid() {
        return fail("new session", e);
    }
    if let Err(e) = join_new_session_keyring() {
        return fail("keyring", e);
    }
    if mode == Some("probe") {
        return match enter_namespaces(None).and_then(|()| netlink::setup_loopback(Ipv4Addr::new(169, 254, 169, 254))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("probe", e),
        };
    }
    let mut spec = match read_spec() {
        Ok(s) => s,
        Err(e) => return fail("spec", e),
    };
    // The daemon may have died before this process asked to die with it.
    if let Some(ppid) = spec.parent_pid
        && u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(ppid)
    {
        return fail("parent", "the daemon that started this sandbox is gone");
    }
    spec.hide = resolve_hidden(&spec.hide);
    if getuid().is_root() {
        // The instance's directory sits in `$RUNNEL_HOME` (mode 0700), which the instance's
        // uid cannot traverse. While still root, give it a path that uid can reach, in a mount
        // namespace of this process only; the namespaces below inherit it, locked.
        if let Err(e) = expose_instance_dir(&spec.dir) {
            return fail("instance directory", e);
        }
        spec.dir = std::path::PathBuf::from(EXPOSED_DIR);
    }
    if let Err(e) = enter_namespaces(spec.host_uid) {
        return fail("namespaces", e);
    }
    // Changing uid cancels the death signal (prctl(2)): ask again, then make sure the daemon did
    // not die in between.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with the daemon", e);
    }
    if let Some(ppid) = spec.parent_pid
        && u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(ppid)
    {
        return fail("parent", "the daemon that started this sandbox is gone");
    }
    if let Err(e) = sethostname(&spec.hostname) {
        return fail("hostname", e);
    }
    if let Err(e) = netlink::setup_loopback(Ipv4Addr::new(169, 254, 169, 254)) {
        return fail("loopback", e);
    }
    // The lifeline: stage 2 inherits the read end; this process alone holds the write end.
    let (lifeline_read, lifeline_write) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail("lifeline", e),
    };
    if let Err(e) = nix::fcntl::fcntl(&lifeline_write, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)) {
        return fail("lifeline", e);
    }
    spec.lifeline = Some(std::os::fd::AsRawFd::as_raw_fd(&lifeline_read));
    let spec_json = match serde_json::to_string(&spec) {
        Ok(j) => j,
        Err(e) => return fail("spec", e),
    };
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        return fail("block signals", e);
    }
    let mut child = match Command::new(exe).arg(STAGE2_ARG).env_clear().stdin(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return fail("start stage 2", e),
    };
    drop(lifeline_read);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, spec_json.as_bytes());
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => continue,
                Ok(status) => {
                    drop(lifeline_write);
                    return exit_code(status);
                }
            },
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
            Err(e) => return fail("wait for signals", e),
        }
    }
}

/// Whether stage 1 still holds the lifeline's write end: a read that would block means yes,
/// end-of-file means it is gone.
fn stage1_alive(lifeline: i32) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let pipe =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(format!("/proc/self/fd/{lifeline}"));
    match pipe {
        Ok(mut p) => {
            let mut b = [0u8; 1];
            !matches!(std::io::Read::read(&mut p, &mut b), Ok(0))
        }
        Err(_) => false,
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
pub fn stage2_main() -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with stage 1", e);
    }
    // Stage 1 blocks the signals it relays, and a blocked mask survives exec; PID 1 needs them.
    if let Err(e) = SigSet::all().thread_unblock() {
        return fail("unblock signals", e);
    }
    let spec = match read_spec() {
        Ok(s) => s,
        Err(e) => return fail("spec", e),
    };
    // Stage 1 may have died before the line above took effect; then nobody would stop us.
    if let Some(fd) = spec.lifeline
        && !stage1_alive(fd)
    {
        return fail("parent", "stage 1 is gone");
    }
    close_inherited(None);
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
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // The usual cause: a project under a private home (/root is 0700), which the
                // instance's own uid may not enter or read.
                return fail(
                    &format!("start `{}` in {}", spec.command, cwd.display()),
                    format!(
                        "{e}. The instance runs as a user of its own, which must be able to enter the working \
                         directory and read the command and its files: deploy from a directory every user can \
                         read (not under /root or another private home), or make it readable"
                    ),
                );
            }
            Err(e) => {
                return fail(&format!("start `{}` in {}", spec.command, cwd.display()), e);
            }
        };
        let pid = Pid::from_raw(i32::try_from(workload.id()).unwrap_or(0));
        tokio::spawn(channels.serve());
        reaper.run(pid).await
    })
}
