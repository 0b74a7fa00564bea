//! The instances of one revision: starting them in sandboxes, probing readiness, handing out
//! request slots, restarting crashed ones, and draining them when the revision stops serving.
//!
//! Slots follow Cloud Run: an instance takes at most `concurrency` requests at once; a request
//! that finds every ready instance full waits in a bounded queue (and a new instance starts if
//! `max_instances` allows), then gets `Busy` (429); a request that finds no ready instance at
//! all waits up to the startup deadline (bounded by the request timeout), then gets
//! `NoInstance` (503). Nothing waits without a bound. A request that waits on a pool whose
//! revision stops serving gets `Retired` at once, to be routed again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};

use crate::launch::{Launch, RevisionKey};
use crate::sandbox;

/// How long a queued request waits for a busy revision before it is refused.
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// Lines of output kept per instance for failure messages.
const LAST_LINES: usize = 20;
/// SIGTERM, then SIGKILL after this, as on Cloud Run.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// An instance that ran this long before crashing restarts without backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives every line an instance prints.
pub trait OutputSink: Send + Sync + 'static {
    fn line(&self, key: &RevisionKey, instance: &str, stream: Stream, text: &str);
}

/// What a pool reports to the daemon, which records it in the revision's conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An instance passed its startup probe.
    Ready(RevisionKey),
    /// The revision never became ready: the deploy fails with this message.
    Failed(RevisionKey, String),
    /// A ready instance exited; it restarts after a backoff.
    Crashed(RevisionKey, String),
}

/// The daemon's ends of an instance's outbound channels (`metadata.sock`, `egress.sock`).
///
/// Called before each start of an instance, with the instance's channel directory: bind the
/// sockets there, let `uid` (the instance's host uid, when the daemon is root) connect, and serve
/// them knowing exactly which instance and revision is on the other end, until the returned
/// guard is dropped.
pub trait ChannelProvider: Send + Sync + 'static {
    fn open(
        &self,
        key: &RevisionKey,
        instance: &str,
        channel_dir: &std::path::Path,
        uid: Option<u32>,
    ) -> std::io::Result<Box<dyn Send + Sync>>;
}

/// What every pool of the daemon shares.
pub struct Host {
    pub exe: PathBuf,
    /// Where instance directories live (under `$RUNNEL_HOME`).
    pub instances_dir: PathBuf,
    /// Host paths no instance may see.
    pub hide: Vec<PathBuf>,
    pub output: Arc<dyn OutputSink>,
    pub events: mpsc::UnboundedSender<Event>,
    pub isolation: sandbox::Isolation,
    /// Serves the instances' outbound channels; without it they lead nowhere.
    pub channels: Option<Arc<dyn ChannelProvider>>,
}

/// One instance of a revision.
pub struct Instance {
    /// Shared, as every request's lease names it.
    pub id: Arc<str>,
    pub dir: PathBuf,
    /// `dir/run`, made once: every request's lease carries it.
    channel_dir: Arc<Path>,
    /// The host uid the instance runs as when the daemon is root: its own (see [`instance_uid`]).
    pub host_uid: Option<u32>,
    in_flight: AtomicU32,
    ready: AtomicBool,
    last_lines: Mutex<VecDeque<String>>,
    /// Its pool's, woken when one of its slots is released.
    waiters: Arc<Waiters>,
}

impl Instance {
    /// The directory of the instance's channels (`port.sock`, `metadata.sock`, `egress.sock`),
    /// shared: a lease clones it rather than building the path per request.
    pub fn channel_dir(&self) -> &Arc<Path> {
        &self.channel_dir
    }

    fn remember(&self, line: &str) {
        if let Ok(mut l) = self.last_lines.lock() {
            if l.len() == LAST_LINES {
                l.pop_front();
            }
            l.push_back(line.to_string());
        }
    }

    fn last_output(&self) -> String {
        self.last_lines.lock().map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

/// Why no slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    Busy,
    NoInstance,
    /// The pool is stopping: its revision no longer serves, and no slot of it will free up
    /// for a new request. The caller routes the request to whatever serves now.
    Retired,
}

/// A request slot on an instance; released on drop.
pub struct Slot {
    pub instance: Arc<Instance>,
}

/// How requests waiting for a slot are woken; shared by a pool and its instances, so that a
/// slot reaches it through its instance (one reference per request, not two).
struct Waiters {
    /// Notified when a slot frees up or an instance becomes ready or goes.
    changed: Notify,
    /// Requests waiting for `changed` (queued, or for a first ready instance); a released slot
    /// notifies only when there are any.
    sleepers: AtomicUsize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Sequentially consistent with the waiter's side (`Pool::acquire`): either this sees a
        // sleeper and wakes it, or the sleeper's next look at the slots sees this one free.
        // Nobody waiting is the usual case, and waking nobody still took a lock.
        self.instance.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.instance.waiters.sleepers.load(Ordering::SeqCst) > 0 {
            self.instance.waiters.changed.notify_waiters();
        }
    }
}

/// Counts one in an atomic counter while it lives: a waiting request that is given up (its
/// deadline passed, its client left) is uncounted too.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Pool {
    pub launch: Launch,
    host: Arc<Host>,
    instances: Mutex<Vec<Arc<Instance>>>,
    waiters: Arc<Waiters>,
    /// Requests in the queue for a busy revision (bounded; beyond it, `Busy`).
    waiting: AtomicUsize,
    stopping: watch::Sender<bool>,
    ever_ready: AtomicBool,
}

/// The first uid a root daemon gives its instances. Each instance gets its own uid above it,
/// so no host process and no other instance shares its identity; the range must be free of
/// host users (it is far above the ones distributions and subuid ranges hand out).
pub const INSTANCE_UID_BASE: u32 = 0x6000_0000;
const INSTANCE_UID_SPAN: u32 = 0x0100_0000;

fn instance_uid() -> u32 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start at a different place in each daemon so a restart does not reuse the uids of
    // instances a crashed daemon may have left.
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| (std::process::id().wrapping_mul(2_654_435_761)) % INSTANCE_UID_SPAN);
    INSTANCE_UID_BASE + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % INSTANCE_UID_SPAN
}

fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.write_usize(std::process::id() as usize);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

impl Pool {
    /// Starts a revision's pool with its minimum number of instances (at least one while it
    /// serves, so the first request does not wait for a cold start).
    pub fn start(launch: Launch, host: Arc<Host>) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            launch,
            host,
            instances: Mutex::new(Vec::new()),
            waiters: Arc::new(Waiters { changed: Notify::new(), sleepers: AtomicUsize::new(0) }),
            waiting: AtomicUsize::new(0),
            stopping: watch::channel(false).0,
            ever_ready: AtomicBool::new(false),
        });
        for _ in 0..pool.launch.min_instances.max(1) {
            pool.spawn_instance();
        }
        pool
    }

    pub fn key(&self) -> &RevisionKey {
        &self.launch.key
    }

    /// Live instances and how many of them are ready.
    pub fn counts(&self) -> (usize, usize) {
        let list = self.instances.lock().map(|l| l.clone()).unwrap_or_default();
        (list.len(), list.iter().filter(|i| i.ready.load(Ordering::Acquire)).count())
    }

    fn spawn_instance(self: &Arc<Self>) {
        let id = new_id();
        let dir = self.host.instances_dir.join(&id);
        let instance = Arc::new(Instance {
            host_uid: (nix::unistd::getuid().is_root() && self.host.isolation == sandbox::Isolation::Sandbox)
                .then(instance_uid),
            channel_dir: dir.join("run").into(),
            dir,
            id: id.into(),
            in_flight: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            last_lines: Mutex::new(VecDeque::new()),
            waiters: self.waiters.clone(),
        });
        if let Ok(mut list) = self.instances.lock() {
            list.push(instance.clone());
        }
        tokio::spawn(supervise(self.clone(), instance));
    }

    /// Takes the least loaded ready instance with a free slot, if any; starts another instance
    /// when all are full and the revision may grow.
    fn try_take(self: &Arc<Self>) -> Result<Option<Slot>, ()> {
        let concurrency = self.launch.concurrency;
        // The list is scanned under its lock (every request comes here; copying it out cost an
        // allocation each time); starting an instance takes the lock itself, so it waits.
        let grow = {
            let list = self.instances.lock().map_err(|_| ())?;
            let mut best: Option<&Arc<Instance>> = None;
            for inst in list.iter().filter(|i| i.ready.load(Ordering::Acquire)) {
                if inst.in_flight.load(Ordering::SeqCst) < concurrency
                    && best.is_none_or(|b| inst.in_flight.load(Ordering::SeqCst) < b.in_flight.load(Ordering::SeqCst))
                {
                    best = Some(inst);
                }
            }
            if let Some(inst) = best {
                // Claim the slot; another request may have taken it in between.
                let prev = inst.in_flight.fetch_add(1, Ordering::SeqCst);
                if prev < concurrency {
                    return Ok(Some(Slot { instance: inst.clone() }));
                }
                inst.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Ok(None);
            }
            let starting = list.iter().filter(|i| !i.ready.load(Ordering::Acquire)).count();
            let max = self.launch.max_instances.max(1) as usize;
            starting == 0 && list.len() < max
        };
        if grow && !*self.stopping.borrow() {
            self.spawn_instance();
        }
        Ok(None)
    }

    /// A request slot, waiting within the bounds described at the top of this module.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Unavailable> {
        // A free slot needs no waiting, so no registration with `changed` (a lock to enter its
        // list and another to leave it).
        match self.try_take() {
            Ok(Some(slot)) => return Ok(slot),
            Ok(None) => {}
            Err(()) => return Err(Unavailable::NoInstance),
        }
        let start = Instant::now();
        let busy_bound = BUSY_WAIT.min(self.launch.timeout);
        let cold_bound = self.launch.startup_deadline.min(self.launch.timeout);
        let queue_limit = (self.launch.concurrency as usize).max(10);
        // Counted before the first look at the slots below, so that a slot released after that
        // look sees a sleeper and notifies.
        let _sleeping = Counted::new(&self.waiters.sleepers);
        let mut queued = None;
        loop {
            let notified = self.waiters.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                Ok(Some(slot)) => return Ok(slot),
                Ok(None) => {}
                Err(()) => return Err(Unavailable::NoInstance),
            }
            // Checked after `notified` is enabled: `stop` notifies once it has set the flag,
            // so a request waiting here sees it, rather than waiting out the cold-start bound
            // on instances that will only drain.
            if *self.stopping.borrow() {
                return Err(Unavailable::Retired);
            }
            let any_ready = self.counts().1 > 0;
            let bound = if any_ready { busy_bound } else { cold_bound };
            if any_ready && queued.is_none() {
                if self.waiting.load(Ordering::Acquire) >= queue_limit {
                    return Err(Unavailable::Busy);
                }
                queued = Some(Counted::new(&self.waiting));
            }
            let Some(left) = bound.checked_sub(start.elapsed()) else {
                return Err(if any_ready { Unavailable::Busy } else { Unavailable::NoInstance });
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
            }
        }
    }

    /// Stops serving: each instance finishes its in-flight requests (bounded by the request
    /// timeout), gets SIGTERM, and SIGKILL after 10 s. Returns when all are gone.
    pub async fn stop(&self) {
        let _ = self.stopping.send(true);
        self.waiters.changed.notify_waiters();
        let deadline = Instant::now() + self.launch.timeout + STOP_GRACE + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.instances.lock().map(|l| l.is_empty()).unwrap_or(true) {
                return;
            }
            let notified = self.waiters.changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn remove(&self, instance: &Arc<Instance>) {
        if let Ok(mut list) = self.instances.lock() {
            list.retain(|i| !Arc::ptr_eq(i, instance));
        }
        self.waiters.changed.notify_waiters();
    }

    fn report(&self, event: Event) {
        let _ = self.host.events.send(event);
    }
}

/// Lays out the instance's directory: `root/` (the sandbox's mount point), `run/` (its
/// channels, owned by the identity the sandbox maps to) and `hosts`.
fn prepare_dir(instance: &Instance) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(&instance.dir);
    std::fs::create_dir_all(instance.dir.join("root"))?;
    std::fs::create_dir_all(instance.channel_dir())?;
    std::fs::set_permissions(&instance.dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(instance.channel_dir(), std::fs::Permissions::from_mode(0o700))?;
    if let Some(uid) = instance.host_uid {
        // The instance creates its sockets here, as its own uid; nobody else may.
        std::os::unix::fs::chown(instance.channel_dir(), Some(uid), Some(uid))?;
    }
    std::fs::write(
        instance.dir.join("hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost\n169.254.169.254\tmetadata.google.internal metadata\n",
    )?;
    let sock = instance.channel_dir().join(sandbox::Channels::PORT);
    if sock.as_os_str().len() > 100 {
        return Err(std::io::Error::other(format!(
            "the instance's socket path {} is too long for a Unix socket; use a shorter RUNNEL_HOME",
            sock.display()
        )));
    }
    Ok(())
}

fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pool: Arc<Pool>,
    instance: Arc<Instance>,
    reader: R,
    stream: Stream,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            instance.remember(&line);
            pool.host.output.line(&pool.launch.key, &instance.id, stream, &line);
        }
    });
}

/// The egress proxy, announced the way HTTP clients look for it; the metadata server is reached
/// directly. The revision's own values win (they lead nowhere else: the sandbox has no network).
fn announce_proxy(env: &mut Vec<(String, String)>) {
    let proxy = format!("http://{}", sandbox::EGRESS_PROXY);
    // Not `localhost`: clients match NO_PROXY entries as name suffixes, and service hosts end in
    // `.run.localhost`.
    let no_proxy = "127.0.0.1,::1,169.254.169.254,metadata.google.internal,metadata".to_string();
    let metadata = sandbox::METADATA_ADDR.to_string();
    for (name, value) in [
        ("HTTP_PROXY", &proxy),
        ("HTTPS_PROXY", &proxy),
        ("http_proxy", &proxy),
        ("https_proxy", &proxy),
        ("NO_PROXY", &no_proxy),
        ("no_proxy", &no_proxy),
        // The metadata server, for clients that read these instead of trying 169.254.169.254.
        ("GCE_METADATA_HOST", &metadata),
        ("GCE_METADATA_IP", &metadata),
    ] {
        if !env.iter().any(|(k, _)| k == name) {
            env.push((name.to_string(), value.clone()));
        }
    }
}

/// Resolves once the pool is told to stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

enum Probe {
    Ready,
    Exited(String),
    TimedOut,
    Stopped,
}

async fn probe(pool: &Pool, instance: &Instance, child: &mut tokio::process::Child) -> Probe {
    let deadline = Instant::now() + pool.launch.startup_deadline;
    let mut stopping = pool.stopping.subscribe();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Probe::Exited(status.to_string());
        }
        if let Ok(true) = sandbox::port_accepts(instance.channel_dir()).await {
            return Probe::Ready;
        }
        if Instant::now() >= deadline {
            return Probe::TimedOut;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(&mut stopping) => return Probe::Stopped,
        }
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Terminates the sandbox: SIGTERM through stage 1 (which relays it to the workload), then
/// SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn supervise(pool: Arc<Pool>, instance: Arc<Instance>) {
    let key = pool.launch.key.clone();
    let port = pool.launch.port;
    let mut failures: u32 = 0;
    let mut stopping = pool.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            break;
        }
        let mut spec = pool.launch.sandbox_spec(&instance.dir, &pool.host.hide, |k| std::env::var(k).ok());
        spec.host_uid = instance.host_uid;
        if pool.host.isolation == sandbox::Isolation::Sandbox {
            announce_proxy(&mut spec.env);
        }
        // The daemon's ends of the outbound channels live as long as this run of the instance.
        let mut channels: Option<Box<dyn Send + Sync>> = None;
        let spawned = match prepare_dir(&instance) {
            Ok(()) => match &pool.host.channels {
                Some(provider) => {
                    provider.open(&key, &instance.id, instance.channel_dir(), instance.host_uid).map(|g| {
                        channels = Some(g);
                    })
                }
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        let spawned = match spawned {
            Ok(()) => sandbox::spawn(&pool.host.exe, &spec, pool.host.isolation).await,
            Err(e) => Err(e),
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                pool.report(Event::Failed(key.clone(), format!("cannot start an instance: {e}")));
                break;
            }
        };
        if let Some(out) = child.stdout.take() {
            pump(pool.clone(), instance.clone(), out, Stream::Stdout);
        }
        if let Some(err) = child.stderr.take() {
            pump(pool.clone(), instance.clone(), err, Stream::Stderr);
        }
        let started = Instant::now();
        let failure = match probe(&pool, &instance, &mut child).await {
            Probe::Ready => {
                instance.ready.store(true, Ordering::Release);
                pool.ever_ready.store(true, Ordering::Release);
                pool.waiters.changed.notify_waiters();
                pool.report(Event::Ready(key.clone()));
                tokio::select! {
                    status = child.wait() => {
                        instance.ready.store(false, Ordering::Release);
                        pool.waiters.changed.notify_waiters();
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        Some(format!("instance {} of revision `{}` exited ({status})", instance.id, key.revision))
                    }
                    _ = stopped(&mut stopping) => {
                        instance.ready.store(false, Ordering::Release);
                        // Drain: no new requests reach it; wait for the ones in flight.
                        let drain_until = Instant::now() + pool.launch.timeout;
                        while instance.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_until {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        terminate(&mut child).await;
                        None
                    }
                }
            }
            Probe::Exited(status) => {
                Some(format!("the instance exited ({status}) before anything listened on port {port}"))
            }
            Probe::TimedOut => {
                let _ = child.kill().await;
                Some(format!(
                    "nothing listened on port {port} within {}s (the startup deadline); the process must listen on $PORT",
                    pool.launch.startup_deadline.as_secs()
                ))
            }
            Probe::Stopped => {
                terminate(&mut child).await;
                None
            }
        };
        drop(channels);
        let Some(message) = failure else { break };
        // Give the output pumps a moment to collect the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last = instance.last_output();
        let message = if last.is_empty() { message } else { format!("{message}. Last output:\n{last}") };
        if !pool.ever_ready.load(Ordering::Acquire) {
            pool.report(Event::Failed(key.clone(), message));
            break;
        }
        pool.report(Event::Crashed(key.clone(), message));
        failures = if started.elapsed() > HEALTHY_RUN { 0 } else { failures.saturating_add(1) };
        let backoff = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(10))).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stopping) => break,
        }
    }
    let _ = std::fs::remove_dir_all(&instance.dir);
    pool.remove(&instance);
}
