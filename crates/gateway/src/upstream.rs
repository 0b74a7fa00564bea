//! Connections to instances: how hyper's pooled client reaches an instance's port channel.
//!
//! hyper's client pools connections by URI authority, so each known instance gets a made-up
//! authority (`instance-<n>`) and the connector maps it back to the instance's channel
//! directory. The authority is derived from a counter, not from the instance id, so it is
//! always a valid host and a reused instance id with a new channel directory never shares a
//! pool with its predecessor. The map is filled from leases and read on every request, so it
//! sits behind a `RwLock` that is only written when an instance is first seen.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::http::Uri;
use hyper::http::uri::Authority;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SocketType, recvmsg,
};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use crate::contract::Lease;

/// The socket in an instance's channel directory that leads to its workload's port.
const PORT_SOCKET: &str = "port.sock";
/// The channel's first byte when the workload's stream follows on the channel itself.
const PORT_CONNECTED: u8 = 1;
/// The channel's first and only byte when it passes the workload's connected socket.
const PORT_PASSED: u8 = 2;
/// The channel's first and only byte when nothing listens on the workload's port.
const PORT_REFUSED: u8 = 0;
const AUTHORITY_PREFIX: &str = "instance-";
/// Above this many known instances, ones unused for [`FORGET_AFTER`] are dropped when a new
/// one is added; by then their pooled connections have long expired.
const PRUNE_ABOVE: usize = 1024;
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct Known {
    channel_dir: PathBuf,
    key: u64,
    authority: Authority,
    /// Seconds since [`Instances::epoch`] when a lease last named this instance.
    last_used: AtomicU64,
}

#[derive(Default)]
struct Maps {
    by_instance: HashMap<String, Known>,
    by_key: HashMap<u64, PathBuf>,
}

/// The instances the frontend has been given leases on, by id and by pool key.
pub(crate) struct Instances {
    maps: RwLock<Maps>,
    next_key: AtomicU64,
    epoch: Instant,
}

impl Instances {
    pub(crate) fn new() -> Instances {
        Instances { maps: RwLock::default(), next_key: AtomicU64::new(1), epoch: Instant::now() }
    }

    /// The pool authority for the lease's instance, registering it if it is new or its
    /// channel directory changed.
    pub(crate) fn authority_for(&self, lease: &Lease, now: Instant) -> Result<Authority, InvalidKey> {
        let tick = now.saturating_duration_since(self.epoch).as_secs();
        {
            let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(known) = maps.by_instance.get(&lease.instance)
                && known.channel_dir == lease.channel_dir
            {
                known.last_used.store(tick, Ordering::Relaxed);
                return Ok(known.authority.clone());
            }
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let authority =
            Authority::from_maybe_shared(Bytes::from(format!("{AUTHORITY_PREFIX}{key}"))).map_err(|_| InvalidKey)?;
        let mut maps = self.maps.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have registered the same lease meanwhile; use its key.
        if let Some(known) = maps.by_instance.get(&lease.instance)
            && known.channel_dir == lease.channel_dir
        {
            return Ok(known.authority.clone());
        }
        if maps.by_instance.len() >= PRUNE_ABOVE {
            let stale = tick.saturating_sub(FORGET_AFTER.as_secs());
            let Maps { by_instance, by_key } = &mut *maps;
            by_instance.retain(|_, known| {
                let keep = known.last_used.load(Ordering::Relaxed) > stale;
                if !keep {
                    by_key.remove(&known.key);
                }
                keep
            });
        }
        let known = Known {
            channel_dir: lease.channel_dir.clone(),
            key,
            authority: authority.clone(),
            last_used: AtomicU64::new(tick),
        };
        if let Some(old) = maps.by_instance.insert(lease.instance.clone(), known) {
            maps.by_key.remove(&old.key);
        }
        maps.by_key.insert(key, lease.channel_dir.clone());
        Ok(authority)
    }

    /// Forgets an instance that has stopped.
    pub(crate) fn forget(&self, instance: &str) {
        let mut maps = self.maps.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = maps.by_instance.remove(instance) {
            maps.by_key.remove(&known.key);
        }
    }

    fn channel_dir(&self, uri: &Uri) -> Option<PathBuf> {
        let key = uri.host()?.strip_prefix(AUTHORITY_PREFIX)?.parse::<u64>().ok()?;
        let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
        maps.by_key.get(&key).cloned()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.maps.read().unwrap_or_else(PoisonError::into_inner).by_instance.len()
    }
}

/// A pool key could not be made into an authority (cannot happen for `instance-<n>`).
#[derive(Debug)]
pub(crate) struct InvalidKey;

/// hyper's connector: opens a connection to the instance a pool authority stands for.
#[derive(Clone)]
pub(crate) struct InstanceConnector {
    pub(crate) instances: Arc<Instances>,
    /// Connecting runs outside the request's deadline when hyper finishes a connection for
    /// the pool in the background, so it carries its own bound.
    pub(crate) connect_timeout: Duration,
}

impl tower::Service<Uri> for InstanceConnector {
    type Response = InstanceStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<InstanceStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dir = self.instances.channel_dir(&uri);
        let limit = self.connect_timeout;
        Box::pin(async move {
            let dir = dir.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the instance is no longer known"))?;
            match tokio::time::timeout(limit, connect_port(&dir)).await {
                Ok(stream) => stream,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the instance's port channel did not answer")),
            }
        })
    }
}

/// Connects to the workload through the instance's `port.sock` channel. The channel answers
/// one byte: [`PORT_PASSED`] with the workload's connected TCP socket attached (runnel's
/// sandbox), [`PORT_CONNECTED`] when the workload's stream follows on the channel itself (a
/// relay), or 0 or nothing when nothing listens on the workload's port.
async fn connect_port(channel_dir: &Path) -> io::Result<InstanceStream> {
    let channel = UnixStream::connect(channel_dir.join(PORT_SOCKET)).await?;
    let answer = loop {
        channel.readable().await?;
        match channel.try_io(Interest::READABLE, || receive_answer(&channel)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            answer => break answer?,
        }
    };
    match answer {
        Answer::Passed(socket) => {
            let socket = TcpStream::from_std(socket)?;
            // Responses are small and whole; Nagle would only delay them.
            let _ = socket.set_nodelay(true);
            Ok(InstanceStream::Tcp(TokioIo::new(socket)))
        }
        Answer::Relayed => Ok(InstanceStream::Channel(TokioIo::new(channel))),
        Answer::Refused => {
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, "nothing listens on the instance's port"))
        }
    }
}

/// What an instance's channel answered.
#[derive(Debug)]
enum Answer {
    Passed(std::net::TcpStream),
    Relayed,
    Refused,
}

/// Receives the channel's answer. The descriptor comes from the sandbox, i.e. from untrusted
/// code, so it is taken only if it is exactly one stream socket of the internet families, and
/// then used only as a byte stream; anything else closes the channel (every descriptor that
/// came closes with the ancillary buffer) and counts as a failed connection.
fn receive_answer(channel: &UnixStream) -> io::Result<Answer> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // CMSG_CLOEXEC: a descriptor must never leak into a process the daemon starts.
    let received = recvmsg(channel, &mut [IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut passed = None;
    let mut count = 0usize;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                count += 1;
                passed.get_or_insert(fd);
            }
        }
    }
    let truncated = received.flags.contains(ReturnFlags::CTRUNC);
    match (received.bytes, byte[0], passed) {
        (1, PORT_PASSED, Some(fd)) if count == 1 && !truncated => Ok(Answer::Passed(workload_socket(fd)?)),
        (1, PORT_CONNECTED, None) if !truncated => Ok(Answer::Relayed),
        (0, _, None) | (1, PORT_REFUSED, None) => Ok(Answer::Refused),
        _ => Err(untrusted("the instance's channel answered something other than one connection")),
    }
}

/// Checks that a descriptor passed by an instance is a TCP-like stream socket and makes it
/// non-blocking for the runtime.
fn workload_socket(fd: OwnedFd) -> io::Result<std::net::TcpStream> {
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(untrusted("the instance passed a descriptor that is not a socket"));
    }
    if rustix::net::sockopt::socket_type(&fd)? != SocketType::STREAM {
        return Err(untrusted("the instance passed a socket that is not a stream socket"));
    }
    let family = rustix::net::sockopt::socket_domain(&fd)?;
    if family != AddressFamily::INET && family != AddressFamily::INET6 {
        return Err(untrusted("the instance passed a socket that is not a TCP socket"));
    }
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(std::net::TcpStream::from(fd))
}

fn untrusted(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A connection to a workload, as hyper's pool wants it: its own TCP socket, or a channel
/// that relays its stream.
pub(crate) enum InstanceStream {
    Tcp(TokioIo<TcpStream>),
    Channel(TokioIo<UnixStream>),
}

impl Connection for InstanceStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for InstanceStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            InstanceStream::Channel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for InstanceStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            InstanceStream::Channel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            InstanceStream::Channel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            InstanceStream::Channel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            InstanceStream::Tcp(s) => s.is_write_vectored(),
            InstanceStream::Channel(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            InstanceStream::Channel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(instance: &str, dir: &str) -> Lease {
        Lease { instance: instance.into(), channel_dir: dir.into(), guard: Box::new(()) }
    }

    #[test]
    fn an_instance_keeps_its_authority_and_a_new_channel_dir_gets_a_new_one() {
        let instances = Instances::new();
        let now = Instant::now();
        let a = instances.authority_for(&lease("a", "/run/a"), now).unwrap();
        assert_eq!(instances.authority_for(&lease("a", "/run/a"), now).unwrap(), a);
        let b = instances.authority_for(&lease("b", "/run/b"), now).unwrap();
        assert_ne!(a, b);
        let uri = |auth: &Authority| format!("http://{auth}/x").parse::<Uri>().unwrap();
        assert_eq!(instances.channel_dir(&uri(&a)), Some(PathBuf::from("/run/a")));

        // The id was reused by a new instance: the old pool key no longer resolves.
        let a2 = instances.authority_for(&lease("a", "/run/a2"), now).unwrap();
        assert_ne!(a, a2);
        assert_eq!(instances.channel_dir(&uri(&a)), None);
        assert_eq!(instances.channel_dir(&uri(&a2)), Some(PathBuf::from("/run/a2")));

        instances.forget("a");
        assert_eq!(instances.channel_dir(&uri(&a2)), None);
        assert_eq!(instances.len(), 1);
    }

    #[test]
    fn stale_instances_are_pruned_when_many_are_known() {
        let instances = Instances::new();
        let start = Instant::now();
        for i in 0..PRUNE_ABOVE {
            instances.authority_for(&lease(&format!("old-{i}"), "/run/old"), start).unwrap();
        }
        let later = start + FORGET_AFTER + Duration::from_secs(5);
        instances.authority_for(&lease("fresh", "/run/fresh"), later).unwrap();
        assert_eq!(instances.len(), 1);
    }

    /// Sends `byte` with `fds` attached, as a sandbox (honest or not) would.
    fn answer(channel: &std::os::unix::net::UnixStream, byte: u8, fds: &[std::os::fd::BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        sendmsg(channel, &[io::IoSlice::new(&[byte])], &mut control, SendFlags::empty()).unwrap();
    }

    fn received(byte: u8, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<Answer> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        answer(&theirs, byte, fds);
        ours.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { receive_answer(&UnixStream::from_std(ours).unwrap()) })
    }

    #[test]
    fn a_passed_tcp_socket_becomes_the_connection_to_the_workload() {
        use std::io::{Read as _, Write as _};
        use std::os::fd::AsFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let Answer::Passed(mut passed) = received(PORT_PASSED, &[client.as_fd()]).unwrap() else {
            panic!("a TCP socket should be taken")
        };
        drop(client);
        passed.set_nonblocking(false).unwrap();
        passed.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn anything_but_one_stream_socket_is_refused() {
        use std::os::fd::AsFd;
        let file = tempfile::tempfile().unwrap();
        let (unix_a, unix_b) = std::os::unix::net::UnixStream::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let cases: [(&str, u8, Vec<std::os::fd::BorrowedFd<'_>>); 6] = [
            ("a file", PORT_PASSED, vec![file.as_fd()]),
            ("a Unix socket", PORT_PASSED, vec![unix_a.as_fd()]),
            ("a UDP socket", PORT_PASSED, vec![udp.as_fd()]),
            ("two sockets", PORT_PASSED, vec![tcp.as_fd(), tcp.as_fd()]),
            ("no socket", PORT_PASSED, vec![]),
            ("a socket with the relay's byte", PORT_CONNECTED, vec![tcp.as_fd()]),
        ];
        for (what, byte, fds) in cases {
            let err = received(byte, &fds).expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        }
        drop(unix_b);
    }

    #[test]
    fn the_relay_byte_and_the_refusal_byte_keep_their_meaning() {
        assert!(matches!(received(PORT_CONNECTED, &[]).unwrap(), Answer::Relayed));
        assert!(matches!(received(PORT_REFUSED, &[]).unwrap(), Answer::Refused));
    }

    #[test]
    fn foreign_authorities_resolve_to_nothing() {
        let instances = Instances::new();
        for uri in ["http://example.com/", "http://instance-x/", "http://instance-99/"] {
            assert_eq!(instances.channel_dir(&uri.parse().unwrap()), None, "{uri}");
        }
    }
}
