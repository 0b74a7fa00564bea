//! The instance's channels, as seen from inside: listeners in the sandbox's network namespace
//! bridged to Unix sockets in its channel directory (and, inbound, the workload's own
//! connections handed over on one), which is the same directory the daemon
//! sees under `$RUNNEL_HOME`. Each directory belongs to one instance, so the daemon knows who is
//! calling from the socket a connection arrives on, whatever the request says.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::spec::{CHANNEL_DIR, Channels, PORT_PASSED, PORT_REFUSED, SandboxSpec};

pub(super) struct Open {
    port_listener: UnixListener,
    metadata: TcpListener,
    egress: TcpListener,
    workload: SocketAddr,
}

fn path(name: &str) -> PathBuf {
    Path::new(CHANNEL_DIR).join(name)
}

/// Listens on `port.sock` in `dir`, inside a sandbox or without one. The socket is bound under
/// another name and renamed once it listens, so `port.sock` exists only when a connection to it
/// can succeed: between `bind` and `listen` a client that saw the file got "connection
/// refused", which means "nothing listens" to everyone reading it.
pub(super) fn listen_port(dir: &Path) -> Result<UnixListener, String> {
    let (port_path, binding) = (dir.join(Channels::PORT), dir.join(".port.sock.binding"));
    let _ = std::fs::remove_file(&binding);
    let listener = UnixListener::bind(&binding).map_err(|e| format!("listen on {}: {e}", binding.display()))?;
    std::fs::rename(&binding, &port_path).map_err(|e| format!("publish {}: {e}", port_path.display()))?;
    Ok(listener)
}

/// Binds every listener (the metadata one needs port 80, so this runs before privileges are
/// dropped), then makes the channel directory read-only so the workload cannot replace them.
pub(super) async fn open(spec: &SandboxSpec) -> Result<Open, String> {
    let port_listener = listen_port(Path::new(CHANNEL_DIR))?;
    let metadata = TcpListener::bind(SandboxSpec::metadata_addr())
        .await
        .map_err(|e| format!("listen on the metadata address: {e}"))?;
    let egress = TcpListener::bind(SandboxSpec::egress_addr())
        .await
        .map_err(|e| format!("listen on the egress proxy address: {e}"))?;
    let dir = Path::new(CHANNEL_DIR);
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind channels: {e}"))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("seal channels: {e}"))?;
    Ok(Open { port_listener, metadata, egress, workload: SocketAddr::from(([127, 0, 0, 1], spec.port)) })
}

async fn splice<A, B>(mut a: A, mut b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// Serves the `port.sock` channel: for each connection, connects to the workload's port here,
/// in the sandbox's network namespace, and hands the connected socket to the daemon with
/// `SCM_RIGHTS` (a TCP socket keeps working in the namespace it was made in, whoever holds
/// it). The daemon then talks to the workload directly: no process of the sandbox sits on the
/// request path and no byte is copied here. One byte tells the daemon whether the workload took
/// the connection, so a readiness probe through this channel means what a TCP probe means.
pub(super) async fn bridge_port(port_listener: UnixListener, workload: SocketAddr) {
    while let Ok((mut conn, _)) = port_listener.accept().await {
        tokio::spawn(async move {
            match TcpStream::connect(workload).await {
                Ok(app) => {
                    let _ = app.set_nodelay(true);
                    // Our copy of the socket closes when `app` drops; the daemon's stays open.
                    let _ = pass_socket(&conn, &app).await;
                }
                Err(_) => {
                    let _ = conn.write_all(&[PORT_REFUSED]).await;
                }
            }
        });
    }
}

/// Sends [`PORT_PASSED`] with `app`'s descriptor attached.
async fn pass_socket(conn: &UnixStream, app: &TcpStream) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    use std::os::fd::AsFd;
    loop {
        conn.writable().await?;
        let sent = conn.try_io(Interest::WRITABLE, || {
            let fds = [app.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("no room for the descriptor in the ancillary buffer"));
            }
            Ok(sendmsg(conn, &[IoSlice::new(&[PORT_PASSED])], &mut control, SendFlags::NOSIGNAL)?)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Open {
    /// Serves every channel until the sandbox ends. A connection whose other end is not
    /// there (the workload not yet listening, the daemon's socket gone) is closed at once,
    /// which the caller sees as a refused connection.
    pub(super) async fn serve(self) {
        let Open { port_listener, metadata, egress, workload } = self;
        let inbound = bridge_port(port_listener, workload);
        let outbound = |listener: TcpListener, name: &'static str| async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(daemon) = UnixStream::connect(path(name)).await {
                        splice(conn, daemon).await;
                    }
                });
            }
        };
        tokio::join!(inbound, outbound(metadata, Channels::METADATA), outbound(egress, Channels::EGRESS));
    }
}
