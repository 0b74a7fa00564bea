//! The runtime the frontend may run on, sized for the machine.
//!
//! The request path is short and CPU-bound between two sockets, so one worker per available
//! core is the default; the daemon can pass fewer to leave room for instances. A multi-thread
//! runtime is used even for one worker because the daemon spawns onto it from other threads,
//! which a current-thread runtime would only run while someone blocks on it.

use std::io;
use std::num::NonZeroUsize;

/// The machine's available parallelism, or 1 when it cannot be known.
pub fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Builds a tokio runtime for the frontend with `workers` worker threads (default:
/// [`default_workers`]), with I/O and timers enabled.
pub fn build_runtime(workers: Option<NonZeroUsize>) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.unwrap_or_else(default_workers).get())
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
}
