//! The runtime the frontend may run on, sized for the machine.
//!
//! The request path is short and CPU-bound between two sockets, so one worker per available
//! core is the default; the daemon can pass fewer to leave room for instances. With one worker
//! the runtime is a current-thread one: the thread that blocks on it accepts and serves every
//! connection itself, with no hand-off between threads and no work-stealing bookkeeping (a
//! minimal hyper proxy serves ~15% more requests so, see DESIGN.md). Only tasks spawned from
//! within the runtime run on it, which is all the frontend does: its owner must block on it.

use std::io;
use std::num::NonZeroUsize;

/// The machine's available parallelism, or 1 when it cannot be known.
pub fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Builds a tokio runtime for the frontend with `workers` worker threads (default:
/// [`default_workers`]), with I/O and timers enabled.
pub fn build_runtime(workers: Option<NonZeroUsize>) -> io::Result<tokio::runtime::Runtime> {
    let workers = workers.unwrap_or_else(default_workers);
    if workers.get() == 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.get())
        .thread_name("runnel-frontend")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_runs_tasks_on_the_requested_workers() {
        let runtime = build_runtime(NonZeroUsize::new(2)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 2);
        assert_eq!(runtime.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }

    #[test]
    fn one_worker_is_the_thread_that_blocks_on_the_runtime() {
        let runtime = build_runtime(NonZeroUsize::new(1)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
        let here = std::thread::current().id();
        let there = runtime.block_on(async { tokio::spawn(async { std::thread::current().id() }).await.unwrap() });
        assert_eq!(there, here);
    }
}
