//! PID 1's duties: pass termination signals to the workload, reap every orphan, and end the
//! sandbox with the workload's exit status.

use std::process::ExitCode;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

pub(super) struct Reaper {
    child: Stream,
    term: Stream,
    int: Stream,
}

impl Reaper {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Self {
            child: signal(SignalKind::child())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reaps whatever has exited; returns the workload's status once it has.
    fn reap(workload: Pid) -> Option<WaitStatus> {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(status) if status.pid() == Some(workload) => return Some(status),
                Ok(_) => continue,
            }
        }
    }

    pub(super) async fn run(mut self, workload: Pid) -> ExitCode {
        loop {
            if let Some(status) = Self::reap(workload) {
                return super::init::exit_code(status);
            }
            tokio::select! {
                _ = self.child.recv() => {}
                _ = self.term.recv() => { let _ = kill(workload, Signal::SIGTERM); }
                _ = self.int.recv() => { let _ = kill(workload, Signal::SIGINT); }
            }
        }
    }
}
