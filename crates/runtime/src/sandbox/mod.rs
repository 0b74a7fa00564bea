//! The sandbox every instance runs in, built by runnel itself from Linux namespaces.
//!
//! Why runnel's own code rather than bubblewrap: the sandbox must also carry the instance's
//! channels (listeners inside its network namespace bridged to Unix sockets the daemon owns),
//! and runnel must run with nothing else installed. The setup is short and written to the same
//! rules bubblewrap follows: an unprivileged user namespace (a root daemon first drops to
//! `nobody`, so the instance never maps to host root), `MS_PRIVATE` propagation, a fresh tmpfs
//! root with read-only binds of the host, `pivot_root` and a detached old root, all
//! capabilities dropped and `no_new_privs` before the workload runs.
//!
//! The process tree is:
//!
//! ```text
//! daemon ─► runnel __sandbox (stage 1: unshares the namespaces, maps ids, sets up loopback)
//!              └─► runnel __sandbox-init (stage 2: PID 1; mounts, pivot_root, channels)
//!                     └─► the revision's command
//! ```
//!
//! Stage 1 exists because a new PID namespace applies to the children of the process that
//! creates it. Both stages die with their parent (`PR_SET_PDEATHSIG`), and when stage 2, PID 1,
//! exits the kernel kills everything left in the namespace: no process outlives its instance.

mod bare;
mod channels;
mod init;
mod mounts;
mod netlink;
mod reaper;
mod spec;

pub use bare::bare_main;
pub use init::{stage1_main, stage2_main};
pub use spec::{
    CHANNEL_DIR, Channels, EGRESS_PROXY, METADATA_ADDR, PORT_CONNECTED, PORT_PASSED, PORT_REFUSED, SandboxSpec,
};

use std::path::Path;
use std::process::{Command, Stdio};

/// The hidden subcommands the `runnel` binary dispatches to before anything else runs
/// (namespaces can only be entered by a single-threaded process).
pub const STAGE1_ARG: &str = "__sandbox";
pub const STAGE2_ARG: &str = "__sandbox-init";
/// `--isolation=none`: the workload as a plain process (see `bare.rs`).
pub const BARE_ARG: &str = "__bare";

/// How instances are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each instance in its own sandbox (the default).
    Sandbox,
    /// No sandbox: insecure, for machines without user namespaces.
    None,
}

/// Starts an instance in a new sandbox. `exe` is the runnel binary; the spec goes on the
/// child's standard input (never its command line, which other host users can read); stdout
/// and stderr of the workload come out of the returned child's pipes. Dropping the child kills
/// the sandbox: stage 1 dies, and with it, through `PR_SET_PDEATHSIG`, everything inside.
pub async fn spawn(exe: &Path, spec: &SandboxSpec, isolation: Isolation) -> std::io::Result<tokio::process::Child> {
    use tokio::io::AsyncWriteExt;
    let json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut child = tokio::process::Command::new(exe)
        .arg(match isolation {
            Isolation::Sandbox => STAGE1_ARG,
            Isolation::None => BARE_ARG,
        })
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(json.as_bytes()).await?;
    }
    Ok(child)
}

/// Whether this kernel lets runnel build sandboxes: tries a throwaway user + network namespace
/// in a child process, so the daemon can refuse to start (or fall back only when told to)
/// before any instance is at stake.
pub fn probe(exe: &Path) -> Result<(), String> {
    let out = Command::new(exe)
        .arg(STAGE1_ARG)
        .arg("probe")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}

/// Whether an instance's workload accepts connections, asked through its `port.sock` channel
/// as the frontend connects (the startup probe). Any socket the channel passes is closed at
/// once: the probe only needs to know that the workload took the connection.
pub async fn port_accepts(channel_dir: &Path) -> std::io::Result<bool> {
    let stream = tokio::net::UnixStream::connect(channel_dir.join(Channels::PORT)).await?;
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || first_byte(&stream)) {
            Ok(byte) => return Ok(matches!(byte, Some(PORT_CONNECTED | PORT_PASSED))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives the channel's first byte; the descriptors that may come with it are dropped
/// (closed) with the ancillary buffer.
fn first_byte(stream: &tokio::net::UnixStream) -> std::io::Result<Option<u8>> {
    use rustix::net::{RecvAncillaryBuffer, RecvFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(stream, &mut [std::io::IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    control.drain().for_each(drop);
    Ok((received.bytes == 1).then_some(byte[0]))
}
