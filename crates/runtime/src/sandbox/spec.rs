use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the instance's channel directory appears inside the sandbox.
pub const CHANNEL_DIR: &str = "/run/runnel";

/// The metadata server's address inside every sandbox, as on Google Cloud.
pub const METADATA_ADDR: &str = "169.254.169.254:80";

/// The egress proxy's fixed loopback address inside every sandbox.
pub const EGRESS_PROXY: &str = "127.0.0.1:3128";

/// The first byte of a `port.sock` connection whose other end relays the workload's stream
/// itself: what follows on the Unix socket is the workload's stream. runnel's sandbox does not
/// answer this way (it sends [`PORT_PASSED`]); the daemon still accepts it, as it is no more
/// than a byte stream either way.
pub const PORT_CONNECTED: u8 = 1;
/// The first and only byte of a `port.sock` connection when the workload accepted the
/// connection: it comes with the connected TCP socket itself, passed with `SCM_RIGHTS`, so the
/// daemon talks to the workload directly and nothing in the sandbox copies bytes.
pub const PORT_PASSED: u8 = 2;
/// The first and only byte when nothing listens on the workload's port (yet).
pub const PORT_REFUSED: u8 = 0;

/// The Unix sockets of one instance, as file names in its channel directory.
#[derive(Debug, Clone)]
pub struct Channels;

impl Channels {
    /// Listened on by the sandbox; connects to the workload's port. The daemon's only way in.
    pub const PORT: &'static str = "port.sock";
    /// Listened on by the daemon; the sandbox's metadata listener forwards here.
    pub const METADATA: &'static str = "metadata.sock";
    /// Listened on by the daemon; the sandbox's egress proxy listener forwards here.
    pub const EGRESS: &'static str = "egress.sock";
}

/// Everything stage 1 and 2 need, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The instance's own directory on the host (under `$RUNNEL_HOME`), holding `root/` (the
    /// mount point of the new root), `run/` (its channels) and `hosts`.
    pub dir: PathBuf,
    /// Host paths that must not exist inside: `$RUNNEL_HOME` and the daemon user's credential
    /// directories.
    pub hide: Vec<PathBuf>,
    pub command: String,
    pub args: Vec<String>,
    /// The whole environment of the workload; nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// Inside the sandbox; `/` when empty.
    pub working_dir: PathBuf,
    /// The workload's port, reached through the `port.sock` channel.
    pub port: u16,
    pub hostname: String,
    /// Size limit of the in-memory `/tmp`, in MiB.
    pub tmp_mib: u32,
    /// The host uid (and gid) the instance runs as, when the daemon is root: one of its own,
    /// so no other host process, and no other instance, shares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uid: Option<u32>,
    /// The daemon's pid: stage 1 exits if its parent is already gone when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_pid: Option<u32>,
    /// Set by stage 1 for stage 2: the read end of a pipe whose write end stage 1 holds, so
    /// stage 2 can tell whether stage 1 died before stage 2 could ask to die with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifeline: Option<i32>,
}

impl SandboxSpec {
    pub fn metadata_addr() -> SocketAddr {
        SocketAddr::from(([169, 254, 169, 254], 80))
    }

    pub fn egress_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 3128))
    }
}
