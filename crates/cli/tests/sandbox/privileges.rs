//! What the workload may do: nothing a capability or a mount would allow, in its own namespaces
//! or in nested ones it creates; on the host it is `nobody` when the daemon is root.

use std::time::{Duration, Instant};

use crate::harness::{BIN, NOBODY, PYTHON, World, host_ids, is_root, processes_with, unique};

/// Python that reports each attempt as `name: ok` or `name: ERRNO`.
const PRELUDE: &str = r#"import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, r):
    print(f"{name}: {'ok' if r == 0 else errno.errorcode[ctypes.get_errno()]}", flush=True)
def attempt(name, f):
    try:
        f()
        print(f"{name}: ok", flush=True)
    except OSError as e:
        print(f"{name}: {errno.errorcode[e.errno]}", flush=True)
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
def read(path):
    with open(path) as f:
        return f.read()
MS_REMOUNT, MS_BIND, MNT_DETACH = 0x20, 0x1000, 2
CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
home = sys.argv[1].encode()
"#;

fn python(world: &World, body: &str) -> crate::harness::Outcome {
    let home = world.home();
    world.python("a", &format!("{PRELUDE}{body}")).arg(home.to_str().unwrap()).run()
}

#[test]
fn every_capability_is_dropped_and_no_new_privs_is_set() {
    let world = World::new();
    let out = world.sh("a", "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status").run();
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n"
    );
}

#[test]
fn mounts_and_privileged_operations_are_refused() {
    let world = World::new();
    let body = r#"
call("mount tmpfs", libc.mount(b"x", b"/tmp", b"tmpfs", 0, None))
call("umount the hidden home", libc.umount2(home, 0))
call("detach the hidden home", libc.umount2(home, MNT_DETACH))
call("remount /usr read-write", libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None))
call("remount the channels read-write", libc.mount(None, b"/run/runnel", None, MS_REMOUNT | MS_BIND, None))
call("new mount namespace", libc.unshare(CLONE_NEWNS))
call("chroot", libc.chroot(b"/tmp"))
call("sethostname", libc.sethostname(b"evil", 4))
attempt("write a net sysctl", lambda: write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"))
attempt("write core_pattern", lambda: write("/proc/sys/kernel/core_pattern", "|/tmp/x"))
attempt("read the hidden secret", lambda: read(sys.argv[1] + "/secret"))
"#;
    let out = python(&world, body);
    out.assert_code(0);
    assert_eq!(
        out.lines(),
        [
            "mount tmpfs: EPERM",
            "umount the hidden home: ENOENT",
            "detach the hidden home: ENOENT",
            "remount /usr read-write: EPERM",
            "remount the channels read-write: EPERM",
            "new mount namespace: EPERM",
            "chroot: EPERM",
            "sethostname: EPERM",
            "write a net sysctl: EACCES",
            "write core_pattern: EACCES",
            "read the hidden secret: ENOENT",
        ]
    );
}

/// `no_new_privs` does not forbid a new user namespace, in which the workload holds every
/// capability again. The mounts it inherits there come from a more privileged namespace, so the
/// kernel locks them: they cannot be unmounted (to reveal what they cover) nor made writable.
#[test]
fn a_nested_user_namespace_cannot_unmount_or_unlock_anything() {
    let world = World::new();
    let body = r#"
call("unshare user+mount", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
eff = [l for l in read("/proc/self/status").splitlines() if l.startswith("CapEff:")][0]
print("capabilities in the nested namespace:", "all" if int(eff.split()[1], 16) >= 0x1ffffffffff else eff, flush=True)
call("umount the hidden home", libc.umount2(home, 0))
call("detach the hidden home", libc.umount2(home, MNT_DETACH))
call("detach the channels", libc.umount2(b"/run/runnel", MNT_DETACH))
call("detach /etc/hosts", libc.umount2(b"/etc/hosts", MNT_DETACH))
call("detach /proc", libc.umount2(b"/proc", MNT_DETACH))
call("remount /usr read-write", libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None))
call("remount the channels read-write", libc.mount(None, b"/run/runnel", None, MS_REMOUNT | MS_BIND, None))
attempt("read the hidden secret", lambda: read(sys.argv[1] + "/secret"))
attempt("list the hidden home", lambda: print(os.listdir(sys.argv[1])))
"#;
    let out = python(&world, body);
    out.assert_code(0);
    assert_eq!(
        out.lines(),
        [
            "unshare user+mount: ok",
            "capabilities in the nested namespace: all",
            "umount the hidden home: ENOENT",
            "detach the hidden home: ENOENT",
            "detach the channels: EINVAL",
            "detach /etc/hosts: EINVAL",
            "detach /proc: EINVAL",
            "remount /usr read-write: EPERM",
            "remount the channels read-write: EPERM",
            "read the hidden secret: ENOENT",
            "list the hidden home: ENOENT",
        ]
    );
    assert!(!out.stdout.contains(&world.home_secret_text));
}

/// `unshare -r` maps root of a nested namespace; the kernel refuses that to a process that
/// lacked `CAP_SETFCAP` when it unshared.
#[test]
fn unshare_map_root_is_refused() {
    let world = World::new();
    let out = world
        .sh("a", r#"unshare -rm sh -c 'umount "$1"; cat "$1/secret"' x "$1""#)
        .arg(world.home().to_str().unwrap())
        .run();
    out.assert_code(1);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "unshare: write failed /proc/self/uid_map: Operation not permitted\n");
}

#[test]
fn pid_1_cannot_be_inspected_or_traced() {
    let world = World::new();
    let body = r#"
attempt("readlink /proc/1/root", lambda: os.readlink("/proc/1/root"))
attempt("read /proc/1/environ", lambda: read("/proc/1/environ"))
attempt("list /proc/1/fd", lambda: os.listdir("/proc/1/fd"))
attempt("readlink /proc/1/fd/0", lambda: os.readlink("/proc/1/fd/0"))
attempt("open /proc/1/fd/0", lambda: os.open("/proc/1/fd/0", os.O_RDONLY))
attempt("open /proc/1/mem", lambda: os.open("/proc/1/mem", os.O_RDONLY))
attempt("read /proc/1/maps", lambda: read("/proc/1/maps"))
call("ptrace attach 1", libc.ptrace(16, 1, None, None))
"#;
    let out = python(&world, body);
    out.assert_code(0);
    assert_eq!(
        out.lines(),
        [
            "readlink /proc/1/root: EACCES",
            "read /proc/1/environ: EACCES",
            // PID 1's descriptor numbers are listed (the directory belongs to the namespace's
            // root), but none can be followed or opened.
            "list /proc/1/fd: ok",
            "readlink /proc/1/fd/0: EACCES",
            "open /proc/1/fd/0: EACCES",
            "open /proc/1/mem: EACCES",
            "read /proc/1/maps: EACCES",
            "ptrace attach 1: EPERM",
        ]
    );
}

#[test]
fn the_workload_is_nobody_on_the_host() {
    let world = World::new();
    let marker = unique("uid-marker");
    let mut sandbox = world.sh("a", "echo ready; sleep 5; :").arg(&marker).start();
    sandbox.wait_for("ready");
    let deadline = Instant::now() + Duration::from_secs(3);
    let workload = loop {
        let found = processes_with(&marker);
        if let Some(p) = found.iter().find(|p| p.argv.first().is_some_and(|a| a == "/bin/sh")) {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "the workload was not found by its marker: {found:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ids = host_ids(workload.pid).expect("the workload's status");
    let own = world.uid("a");
    let expected = if is_root() { own } else { host_ids(std::process::id()).unwrap().uid[0] };
    assert_eq!(ids.uid, [expected; 4], "host uids of the workload");
    if is_root() {
        assert_ne!(own, NOBODY, "a root daemon gives each instance a uid of its own, not nobody's");
        assert_eq!(ids.gid, [own; 4], "host gids of the workload");
        assert_eq!(ids.groups, Vec::<u32>::new(), "supplementary groups of the workload");
        let stage1 = host_ids(sandbox.pid()).unwrap();
        assert_eq!(stage1.uid, [own; 4], "host uids of stage 1");
    }
}

/// The sandbox never leaves the daemon's session, so the daemon's controlling terminal is the
/// workload's: `/dev/tty` (bound into the sandbox) opens it, and TIOCSTI pushes input into it
/// that the operator's shell runs once `runnel up` exits or is put in the background
/// (CVE-2017-5226 in bubblewrap; fixed there with `setsid`).
#[test]
fn the_daemons_terminal_is_out_of_reach() {
    let world = World::new();
    let workload = r#"import errno, fcntl, os, termios
try:
    fd = os.open("/dev/tty", os.O_RDWR)
except OSError as e:
    print("open /dev/tty:", errno.errorcode[e.errno], flush=True)
    raise SystemExit(0)
try:
    for c in b"echo INJECTED\n":
        fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
    print("injected", flush=True)
except OSError as e:
    print("TIOCSTI:", errno.errorcode[e.errno], flush=True)
"#;
    // A terminal session like an operator's: the pty is the session's controlling terminal,
    // `runnel __sandbox` runs in it, then the "shell" reads whatever input is waiting.
    let terminal = r#"import os, pty, select, subprocess, sys
pid, master = pty.fork()
if pid == 0:
    r = subprocess.run(sys.argv[1:3], stdin=open(sys.argv[3]))
    print(f"sandbox exit: {r.returncode}", flush=True)
    ready, _, _ = select.select([0], [], [], 0.5)
    print("terminal input:", repr(os.read(0, 200)) if ready else "none", flush=True)
    os._exit(0)
out = b""
while True:
    r, _, _ = select.select([master], [], [], 8)
    if not r:
        break
    try:
        d = os.read(master, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace").replace("\r\n", "\n"))
"#;
    let spec = world.python("a", workload);
    let mut cmd = std::process::Command::new(PYTHON);
    cmd.arg("-c").arg(terminal).arg(BIN).arg("__sandbox").arg(spec.spec_file());
    let out = crate::harness::run(cmd);
    assert!(out.stdout.contains("sandbox exit: 0"), "{out:#?}");
    assert!(out.stdout.contains("open /dev/tty: ENXIO"), "the workload opened the daemon's terminal: {out:#?}");
    assert!(out.stdout.contains("terminal input: none"), "input was injected into the daemon's terminal: {out:#?}");
}

#[cfg(target_arch = "x86_64")]
const KEY_SYSCALLS: Option<(u32, u32)> = Some((248, 250));
#[cfg(target_arch = "aarch64")]
const KEY_SYSCALLS: Option<(u32, u32)> = Some((217, 219));
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KEY_SYSCALLS: Option<(u32, u32)> = None;

/// The sandbox keeps the daemon's session keyring, and possession of a keyring grants its
/// possessor permissions whatever the uid or user namespace: every instance can read the keys
/// of a daemon that has a session keyring (`pam_keyinit` in a login, systemd's default
/// `KeyringMode=private` for a service), and instances can pass data to each other through it,
/// outside every channel.
#[test]
fn the_daemons_session_keyring_is_not_shared_with_instances() {
    let Some((add_key, keyctl)) = KEY_SYSCALLS else { return };
    let world = World::new();
    let secret = unique("daemon-key-payload");
    let keys = format!(
        r#"import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SESSION = ctypes.c_long(-3)
def read(desc):
    kid = libc.syscall({keyctl}, 10, SESSION, b"user", desc.encode(), 0)
    if kid < 0:
        return errno.errorcode[ctypes.get_errno()]
    buf = ctypes.create_string_buffer(256)
    n = libc.syscall({keyctl}, 11, ctypes.c_long(kid), buf, 256)
    return buf.raw[:n].decode() if n >= 0 else errno.errorcode[ctypes.get_errno()]
def add(desc, payload):
    r = libc.syscall({add_key}, b"user", desc.encode(), payload, len(payload), SESSION)
    return "ok" if r > 0 else errno.errorcode[ctypes.get_errno()]
"#
    );
    let a = world.python("a", &format!("{keys}print('daemon key:', read('runnel-daemon-key'))\nprint('left a key:', add('left-by-a', b'note from a'))"));
    let b = world.python("b", &format!("{keys}print(\"a's key:\", read('left-by-a'))"));
    // The daemon: a session keyring of its own holding a key, then two instances in turn.
    let daemon = format!(
        r#"{keys}
assert libc.syscall({keyctl}, 1, None) > 0
assert add("runnel-daemon-key", sys.argv[1].encode()) == "ok"
import subprocess
for spec in sys.argv[3:]:
    subprocess.run([sys.argv[2], "__sandbox"], input=spec.encode())
"#
    );
    let mut cmd = std::process::Command::new(PYTHON);
    cmd.arg("-c").arg(daemon).arg(&secret).arg(BIN).arg(a.json()).arg(b.json());
    let out = crate::harness::run(cmd);
    assert!(!out.timed_out && out.code() == Some(0), "{out:#?}");
    assert!(!out.stdout.contains(&secret), "an instance read the daemon's key: {out:#?}");
    assert!(!out.stdout.contains("note from a"), "instance b read a key instance a left: {out:#?}");
    assert_eq!(out.lines(), ["daemon key: ENOKEY", "left a key: ok", "a's key: ENOKEY"]);
}
