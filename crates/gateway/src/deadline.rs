//! Deadlines on a client connection without a timer registration per request.
//!
//! Every request on a keep-alive connection has two deadlines: hyper's header-read timeout while
//! its head arrives, and the revision's request timeout while it waits for a slot and for the
//! response head. A tokio timer for each (armed when the wait first blocks, removed when it
//! ends) was ≈ 5% of the frontend's instructions per request under callgrind: a lock on the
//! timer wheel twice, and for hyper's an allocation too. Yet requests almost never time out.
//!
//! So a connection has one [`Watch`]. A wait that blocks writes its deadline there (an atomic
//! store) and, each time it is polled, compares the clock with it; the connection's task runs a
//! [`Watcher`] after polling the connection, which keeps one tokio timer armed at or before the
//! latest deadline written. Deadlines on a connection mostly only move later, so that timer
//! fires early (at an older deadline), finds a later one, and is armed again: about one timer
//! operation per timeout period per connection instead of two per request. When it fires at a
//! deadline that has passed, the task has just been woken and the connection polled, so the wait
//! concerned saw the clock pass its deadline and ended itself (504 for a request, hyper's
//! header timeout for a head). HTTP/1.1 serves one request at a time per connection, so one
//! slot per kind of wait is enough.
//!
//! Waits outside a watched connection (the egress proxy's per-request peers) keep tokio's timer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// No deadline wanted.
const NONE: u64 = u64::MAX;

/// What a wait on the connection asks to be woken for.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// hyper's header-read timeout.
    Head = 0,
    /// The request timeout.
    Request = 1,
}

/// The deadlines wanted on one connection, as nanoseconds since `base`.
pub(crate) struct Watch {
    base: Instant,
    wanted: [AtomicU64; 2],
}

impl Watch {
    pub(crate) fn new() -> Arc<Watch> {
        Arc::new(Watch { base: Instant::now(), wanted: [AtomicU64::new(NONE), AtomicU64::new(NONE)] })
    }

    fn want(&self, slot: Slot, deadline: Instant) {
        let nanos = u64::try_from(deadline.saturating_duration_since(self.base).as_nanos()).unwrap_or(NONE - 1);
        self.wanted[slot as usize].store(nanos, Ordering::Relaxed);
    }

    /// The earliest deadline wanted that is later than `passed`, or [`NONE`].
    fn earliest_after(&self, passed: u64) -> u64 {
        self.wanted.iter().map(|slot| slot.load(Ordering::Relaxed)).filter(|&at| at > passed).min().unwrap_or(NONE)
    }
}

/// Keeps the connection's task woken for the deadlines its waits want; polled by the
/// connection's task right after the connection itself, and never ready.
pub(crate) struct Watcher {
    watch: Arc<Watch>,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the timer is armed for (nanoseconds since the watch's base), if it is.
    armed: Option<u64>,
    /// The armed timer has been polled since it was last set, so it holds this task's waker.
    /// Polling it again would only swap the waker for the same one (four atomic operations,
    /// twice per request); until it has elapsed it is left alone.
    registered: bool,
    /// The last deadline the timer fired for. Deadlines up to it have passed, so the waits that
    /// wanted them have ended themselves (a wait writes only a deadline still ahead), and
    /// those left in the slots are stale.
    fired: u64,
}

impl Watcher {
    pub(crate) fn new(watch: Arc<Watch>) -> Watcher {
        Watcher { watch, timer: None, armed: None, registered: false, fired: 0 }
    }

    pub(crate) fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Infallible> {
        loop {
            let wanted = self.watch.earliest_after(self.fired);
            let arm = wanted != NONE && self.armed.is_none_or(|armed| wanted < armed);
            if arm {
                let at = self.watch.base + Duration::from_nanos(wanted);
                match &mut self.timer {
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                self.armed = Some(wanted);
                self.registered = false;
            }
            let (Some(armed), Some(timer)) = (self.armed, self.timer.as_mut()) else { return Poll::Pending };
            // The watcher only ever runs in its connection's task, so the waker it registered
            // is still the one to wake.
            if self.registered && !timer.is_elapsed() {
                return Poll::Pending;
            }
            if timer.as_mut().poll(cx).is_pending() {
                self.registered = true;
                return Poll::Pending;
            }
            self.registered = false;
            // Fired: the connection was polled just before, on this wake-up, so a wait whose
            // deadline this was has ended itself. A later deadline arms the timer again.
            self.armed = None;
            self.fired = armed;
        }
    }
}

/// The result of a wait that ran out of time.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// Runs `future` until `deadline`: on `watch`'s connection if given, with tokio's timer if not.
pub(crate) async fn until<F: Future>(
    deadline: Instant,
    watch: Option<&Watch>,
    slot: Slot,
    future: F,
) -> Result<F::Output, Elapsed> {
    match watch {
        Some(watch) => Until { future: std::pin::pin!(future), deadline, watch, slot, told: false }.await,
        None => tokio::time::timeout_at(deadline, future).await.map_err(|_| Elapsed),
    }
}

struct Until<'a, F> {
    future: Pin<&'a mut F>,
    deadline: Instant,
    watch: &'a Watch,
    slot: Slot,
    told: bool,
}

impl<F: Future> Future for Until<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = this.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if Instant::now() >= this.deadline {
            return Poll::Ready(Err(Elapsed));
        }
        if !this.told {
            this.watch.want(this.slot, this.deadline);
            this.told = true;
        }
        Poll::Pending
    }
}

/// hyper's timer for a watched connection: its sleeps (the header-read timeout) are deadlines
/// on the watch, not tokio timers.
#[derive(Clone)]
pub(crate) struct WatchTimer(pub(crate) Arc<Watch>);

struct WatchSleep {
    watch: Arc<Watch>,
    deadline: Instant,
    told: bool,
}

impl Future for WatchSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        if !this.told {
            this.watch.want(Slot::Head, this.deadline);
            this.told = true;
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for WatchSleep {}

impl hyper::rt::Timer for WatchTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until((Instant::now() + duration).into_std())
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(WatchSleep { watch: self.0.clone(), deadline: Instant::from_std(deadline), told: false })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<WatchSleep>() {
            Some(mut watched) => {
                watched.deadline = Instant::from_std(new_deadline);
                watched.told = false;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}
