//! `--isolation=none`: an instance as an ordinary process of the daemon's user, for machines
//! that cannot make namespaces. It keeps the instance's contract (an empty environment but the
//! allowlist, its own session, dies with the daemon, reached only through `port.sock` by the
//! frontend) but none of the walls: it shares the host's network, files and processes, so the
//! daemon announces it as insecure at every start. The workload gets a free loopback port as
//! `PORT`, since instances can no longer each have their own 8080.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::process::{Command, ExitCode, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::channels::listen_port;
use super::init::{close_inherited, fail, read_spec};

pub fn bare_main() -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail("die with the daemon", e);
    }
    close_inherited(None);
    if let Err(e) = nix::unistd::setsid() {
        return fail("new session", e);
    }
    let spec = match read_spec() {
        Ok(s) => s,
        Err(e) => return fail("spec", e),
    };
    let port = match StdListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return fail("pick a port", e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail("runtime", e),
    };
    runtime.block_on(async move {
        let reaper = match super::reaper::Reaper::new() {
            Ok(r) => r,
            Err(e) => return fail("signals", e),
        };
        let listener = match listen_port(&spec.dir.join("run")) {
            Ok(l) => l,
            Err(e) => return fail("open the daemon's channel", e),
        };
        let env = spec.env.iter().filter(|(k, _)| k != "PORT").map(|(k, v)| (k.clone(), v.clone()));
        let cwd = if spec.working_dir.as_os_str().is_empty() {
            std::path::PathBuf::from("/")
        } else {
            spec.working_dir.clone()
        };
        let workload = Command::new(&spec.command)
            .args(&spec.args)
            .env_clear()
            .envs(env)
            .env("PORT", port.to_string())
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .spawn();
        let workload = match workload {
            Ok(c) => c,
            Err(e) => return fail(&format!("start `{}` in {}", spec.command, cwd.display()), e),
        };
        let pid = Pid::from_raw(i32::try_from(workload.id()).unwrap_or(0));
        tokio::spawn(super::channels::bridge_port(listener, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        reaper.run(pid).await
    })
}
