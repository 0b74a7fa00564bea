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
use std::io;
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
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::contract::Lease;

/// The socket in an instance's channel directory that leads to its workload's port.
const PORT_SOCKET: &str = "port.sock";
/// The first byte the channel sends once it has connected to the workload.
const PORT_CONNECTED: u8 = 1;
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
    type Response = ChannelStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ChannelStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dir = self.instances.channel_dir(&uri);
        let limit = self.connect_timeout;
        Box::pin(async move {
            let dir = dir.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the instance is no longer known"))?;
            match tokio::time::timeout(limit, connect_port(&dir)).await {
                Ok(stream) => Ok(ChannelStream(TokioIo::new(stream?))),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the instance's port channel did not answer")),
            }
        })
    }
}

/// Connects to the workload through the channel: the channel answers one byte, 1 when it
/// reached the workload's port (the workload's stream follows), 0 or nothing when nothing
/// listens there.
async fn connect_port(channel_dir: &Path) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(channel_dir.join(PORT_SOCKET)).await?;
    let mut first = [0u8; 1];
    match stream.read(&mut first).await? {
        1 if first[0] == PORT_CONNECTED => Ok(stream),
        _ => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "nothing listens on the instance's port")),
    }
}

/// A connection to a workload, as hyper's pool wants it.
pub(crate) struct ChannelStream(TokioIo<UnixStream>);

impl Connection for ChannelStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for ChannelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for ChannelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
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

    #[test]
    fn foreign_authorities_resolve_to_nothing() {
        let instances = Instances::new();
        for uri in ["http://example.com/", "http://instance-x/", "http://instance-99/"] {
            assert_eq!(instances.channel_dir(&uri.parse().unwrap()), None, "{uri}");
        }
    }
}
