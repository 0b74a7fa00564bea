//! A runnel CLI process started by a test: bounded in time, with what it printed. Shared by
//! the test binaries that drive the CLI (`#[path]`-included, since each test binary is its own
//! crate).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long one CLI command may take before the test kills it and fails.
pub const CLI_DEADLINE: Duration = Duration::from_secs(30);

/// A CLI process that was started and not yet waited for.
pub struct Pending {
    pid: u32,
    shown: String,
    rx: mpsc::Receiver<std::io::Result<std::process::Output>>,
}

impl Pending {
    pub fn spawn(mut cmd: Command, args: &[&str]) -> Pending {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn the runnel CLI");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Pending { pid, shown: format!("runnel {}", args.join(" ")), rx }
    }

    /// Waits (bounded) for the process and collects what it printed.
    pub fn finish(self) -> Out {
        let output = match self.rx.recv_timeout(CLI_DEADLINE) {
            Ok(r) => r.expect("wait for the runnel CLI"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                panic!("`{}` did not finish within {CLI_DEADLINE:?}", self.shown);
            }
        };
        Out {
            command: self.shown,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a finished CLI process printed, and how it ended.
#[derive(Debug)]
pub struct Out {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "expected success:\n{self}");
        self
    }

    /// stdout parsed as JSON (after asserting success).
    #[track_caller]
    pub fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
    }
}
