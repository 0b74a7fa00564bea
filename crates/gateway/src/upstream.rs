//! Connections to instances: a small stack of idle HTTP/1.1 connections per instance.
//!
//! Every request is forwarded on one connection to the instance its lease names. Connections
//! are kept per instance (by its id and channel directory, so a reused id with a new channel
//! directory never gets its predecessor's connections) as a LIFO stack of idle connections
//! (`h1.rs`): a request takes the most recently used one that is still open, or opens a new one
//! through the instance's `port.sock`; the response body hands it back when its exchange has
//! ended cleanly (`body.rs`). This replaced hyper-util's pooled client, whose generic pool
//! (authority keys, SipHash map, a spawned task per response to wait for the connection to be
//! ready again) cost about a tenth of the frontend's instructions per request.
//!
//! An idle connection the instance has closed is dropped when a request finds it, or by a
//! reaper task that also drops connections idle past the idle timeout and instances unused for
//! [`FORGET_AFTER`]. A close that arrives as the request is sent is not an error the client
//! sees when the request can safely be sent again (`h1::Failed`), as hyper-util retried it.
//! The map is read on every request and written only when an instance is first seen, so it
//! sits behind a `RwLock`; each instance's stack has its own `Mutex`, held for a push or a pop.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use runnel_model::name_map::NameMap;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SocketType, recvmsg,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::body::RequestBody;
use crate::contract::Lease;
use crate::h1::{self, Conn};

/// The socket in an instance's channel directory that leads to its workload's port.
const PORT_SOCKET: &str = "port.sock";
/// The channel's first byte when the workload's stream follows on the channel itself.
const PORT_CONNECTED: u8 = 1;
/// The channel's first and only byte when it passes the workload's connected socket.
const PORT_PASSED: u8 = 2;
/// The channel's first and only byte when nothing listens on the workload's port.
const PORT_REFUSED: u8 = 0;
/// Above this many known instances, ones unused for [`FORGET_AFTER`] are dropped when a new
/// one is added (the reaper drops them too).
const PRUNE_ABOVE: usize = 1024;
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often the reaper looks for idle connections past the idle timeout.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// How connections to instances are opened and kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolConfig {
    /// Bound on opening a connection (socket plus the channel's answer).
    pub(crate) connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub(crate) idle_timeout: Duration,
    /// The most idle connections kept per instance.
    pub(crate) max_idle: usize,
}

/// An idle connection and when it became idle.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One instance the frontend has had a lease on: where to connect, and its idle connections.
pub(crate) struct Known {
    channel_dir: Arc<Path>,
    /// Seconds since [`Instances::epoch`] when a lease last named this instance.
    last_used: AtomicU64,
    /// Oldest first: connections are pushed and popped at the end.
    idle: Mutex<Vec<Idle>>,
}

impl Known {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this entry is for an instance with this channel directory. The paths are
    /// compared as bytes (`Path`'s `==` walks components); both come from the same daemon
    /// code, so equal directories are spelled the same.
    fn is_at(&self, channel_dir: &Path) -> bool {
        self.channel_dir.as_os_str() == channel_dir.as_os_str()
    }

    /// The most recently used idle connection that is still open; closed ones are dropped.
    /// The check runs outside the lock: it may be a system call.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let idle = self.idle().pop()?;
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
    }
}

/// Where a connection lent to one request goes back to: its instance's stack.
pub(crate) struct Home {
    known: Arc<Known>,
    max_idle: usize,
}

impl Home {
    /// Returns a connection for the next request, unless the stack is full. Only a connection
    /// whose exchange ended cleanly comes here ([`h1::Body::take_reusable`]). `now` is when
    /// the exchange ended: the request's record reads the same clock.
    pub(crate) fn give_back(self, conn: Conn, now: Instant) {
        let mut idle = self.known.idle();
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since: now });
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing listens, or the instance is gone.
    Connect(io::Error),
    /// The exchange failed after the request was handed to a connection.
    Exchange(h1::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("could not connect to the instance"),
            SendError::Exchange(_) => f.write_str("the instance's connection failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Exchange(e) => Some(e),
        }
    }
}

/// A response head from an instance, its body, and where its connection goes back to.
pub(crate) type Sent = (hyper::http::response::Parts, h1::Body<RequestBody>, Home);

/// The instances the frontend has been given leases on, with their idle connections.
pub(crate) struct Instances {
    /// By instance id (runnel's own names: `runnel_model::name_map`).
    known: RwLock<NameMap<String, Arc<Known>>>,
    epoch: Instant,
    config: PoolConfig,
    reaper: AtomicBool,
}

impl Instances {
    pub(crate) fn new(config: PoolConfig) -> Instances {
        Instances { known: RwLock::default(), epoch: Instant::now(), config, reaper: AtomicBool::new(false) }
    }

    /// The lease's instance, registering it if it is new or its channel directory changed
    /// (a reused id: the old entry and its connections are dropped).
    pub(crate) fn instance(&self, lease: &Lease, now: Instant) -> Arc<Known> {
        let tick = now.saturating_duration_since(self.epoch).as_secs();
        {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(known) = known.get(lease.instance())
                && known.is_at(lease.channel_dir())
            {
                known.last_used.store(tick, Ordering::Relaxed);
                return known.clone();
            }
        }
        let mut map = self.known.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have registered the same lease meanwhile; use its entry.
        if let Some(known) = map.get(lease.instance())
            && known.is_at(lease.channel_dir())
        {
            return known.clone();
        }
        if map.len() >= PRUNE_ABOVE {
            let stale = tick.saturating_sub(FORGET_AFTER.as_secs());
            map.retain(|_, known| known.last_used.load(Ordering::Relaxed) > stale);
        }
        let known = Arc::new(Known {
            channel_dir: lease.channel_dir().clone(),
            last_used: AtomicU64::new(tick),
            idle: Mutex::new(Vec::new()),
        });
        map.insert(lease.instance().to_string(), known.clone());
        known
    }

    /// Forgets an instance, closing its idle connections. Only tests call it: a stopped
    /// instance's connections fail and are dropped on use, and the reaper closes idle ones and
    /// forgets instances unused for a while.
    #[cfg(test)]
    pub(crate) fn forget(&self, instance: &str) {
        self.known.write().unwrap_or_else(PoisonError::into_inner).remove(instance);
    }

    /// Sends `request` to the instance on an idle connection, or on a new one. A request that
    /// found an idle connection closed by the instance (nothing came back) is sent again on the
    /// next one when it is safe to ([`h1::Failed`]); a new connection's failure is final. When
    /// no new connection can be opened after such a failure, the instance most likely died
    /// with the request, and that first failure is the answer (502, not 503).
    pub(crate) async fn send(
        self: &Arc<Self>,
        known: &Arc<Known>,
        mut request: h1::Request<RequestBody>,
    ) -> Result<Sent, SendError> {
        let mut lost = None;
        while let Some(conn) = known.take_idle() {
            match h1::exchange(conn, request, true).await {
                Ok((parts, body)) => return Ok((parts, body, self.home(known))),
                Err(failed) => match failed.replay {
                    Some(again) => {
                        tracing::debug!(error = %failed.error, "an idle connection to the instance failed; sending again");
                        lost = Some(failed.error);
                        request = again;
                    }
                    None => return Err(SendError::Exchange(failed.error)),
                },
            }
        }
        let connected = match tokio::time::timeout(self.config.connect_timeout, connect_port(&known.channel_dir)).await
        {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the instance's port channel did not answer")),
        };
        let io = match (connected, lost) {
            (Ok(io), _) => io,
            (Err(_), Some(lost)) => return Err(SendError::Exchange(lost)),
            (Err(e), None) => return Err(SendError::Connect(e)),
        };
        self.start_reaper();
        match h1::exchange(Conn::new(io), request, false).await {
            Ok((parts, body)) => Ok((parts, body, self.home(known))),
            Err(failed) => Err(SendError::Exchange(failed.error)),
        }
    }

    fn home(&self, known: &Arc<Known>) -> Home {
        Home { known: known.clone(), max_idle: self.config.max_idle }
    }

    /// Starts, once, the task that drops idle connections past the idle timeout and instances
    /// long unused. It holds the map weakly and ends with the frontend.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let instances = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(instances) = Weak::upgrade(&instances) else { return };
                instances.reap(Instant::now());
            }
        });
    }

    fn reap(&self, now: Instant) {
        let tick = now.saturating_duration_since(self.epoch).as_secs();
        let idle_timeout = self.config.idle_timeout;
        let mut map = self.known.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, known| {
            // Closed connections go too.
            known.idle().retain(|idle| now.saturating_duration_since(idle.since) < idle_timeout && idle.conn.is_open());
            tick.saturating_sub(known.last_used.load(Ordering::Relaxed)) < FORGET_AFTER.as_secs()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.read().unwrap_or_else(PoisonError::into_inner).len()
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
            Ok(InstanceStream::Tcp(socket))
        }
        Answer::Relayed => Ok(InstanceStream::Channel(channel)),
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

/// A connection to a workload: its own TCP socket, or a channel that relays its stream.
pub(crate) enum InstanceStream {
    Tcp(TcpStream),
    Channel(UnixStream),
}

impl InstanceStream {
    /// A read that never waits: `WouldBlock` at once, without a system call, while epoll has
    /// reported nothing since the last read drained the socket.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            InstanceStream::Tcp(s) => s.try_read(buf),
            InstanceStream::Channel(s) => s.try_read(buf),
        }
    }
}

impl AsyncRead for InstanceStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            InstanceStream::Channel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InstanceStream {
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

    struct Held(String, Arc<Path>);

    impl crate::contract::Held for Held {
        fn instance(&self) -> &str {
            &self.0
        }

        fn channel_dir(&self) -> &Arc<Path> {
            &self.1
        }
    }

    fn lease(instance: &str, dir: &str) -> Lease {
        Lease(Box::new(Held(instance.into(), Path::new(dir).into())))
    }

    fn config() -> PoolConfig {
        PoolConfig { connect_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(30), max_idle: 4 }
    }

    #[test]
    fn an_instance_keeps_its_entry_and_a_new_channel_dir_gets_a_new_one() {
        let instances = Instances::new(config());
        let now = Instant::now();
        let a = instances.instance(&lease("a", "/run/a"), now);
        assert!(Arc::ptr_eq(&instances.instance(&lease("a", "/run/a"), now), &a));
        let b = instances.instance(&lease("b", "/run/b"), now);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(&*a.channel_dir, Path::new("/run/a"));

        // The id was reused by a new instance: it gets a fresh entry, without the old
        // connections.
        let a2 = instances.instance(&lease("a", "/run/a2"), now);
        assert!(!Arc::ptr_eq(&a, &a2));
        assert_eq!(&*a2.channel_dir, Path::new("/run/a2"));
        assert_eq!(instances.len(), 2);

        instances.forget("a");
        assert_eq!(instances.len(), 1);
    }

    #[test]
    fn stale_instances_are_pruned_when_many_are_known() {
        let instances = Instances::new(config());
        let start = Instant::now();
        for i in 0..PRUNE_ABOVE {
            instances.instance(&lease(&format!("old-{i}"), "/run/old"), start);
        }
        let later = start + FORGET_AFTER + Duration::from_secs(5);
        instances.instance(&lease("fresh", "/run/fresh"), later);
        assert_eq!(instances.len(), 1);
    }

    #[test]
    fn the_reaper_forgets_instances_long_unused() {
        let instances = Instances::new(config());
        let start = Instant::now();
        instances.instance(&lease("old", "/run/old"), start);
        instances.reap(start + Duration::from_secs(1));
        assert_eq!(instances.len(), 1);
        instances.instance(&lease("fresh", "/run/fresh"), start + FORGET_AFTER);
        instances.reap(start + FORGET_AFTER + Duration::from_secs(5));
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
}
