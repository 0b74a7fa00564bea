//! What one revision's instances run, and how an instance's directory is laid out on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::SandboxSpec;

/// Names a revision across the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionKey {
    pub region: String,
    pub service: String,
    pub revision: String,
}

impl std::fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.service, self.revision)
    }
}

/// Everything needed to start instances of one revision and to decide when they are ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub key: RevisionKey,
    pub command: String,
    pub args: Vec<String>,
    /// The revision's own `env`; the platform's variables are added by [`Launch::environment`].
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    pub port: u16,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub timeout: Duration,
    pub startup_deadline: Duration,
}

/// Variables an instance may inherit from the daemon, when the daemon has them.
const INHERITED: &[&str] = &["LANG", "LC_ALL", "TZ"];

/// The `PATH` every instance gets: the standard one, not the daemon's, which may name
/// directories the instance cannot read.
pub const INSTANCE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The instance's home: inside its private in-memory `/tmp`.
pub const INSTANCE_HOME: &str = "/tmp";

impl Launch {
    /// The workload's whole environment: an allowlist, Cloud Run's contract, then the
    /// revision's variables. Nothing else of the daemon's environment reaches the instance.
    pub fn environment(&self, daemon_env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), INSTANCE_PATH.into());
        env.insert("HOME".into(), INSTANCE_HOME.into());
        env.insert("LANG".into(), "C.UTF-8".into());
        for name in INHERITED {
            if let Some(v) = daemon_env(name) {
                env.insert((*name).to_string(), v);
            }
        }
        env.insert("PORT".into(), self.port.to_string());
        env.insert("K_SERVICE".into(), self.key.service.clone());
        env.insert("K_REVISION".into(), self.key.revision.clone());
        env.insert("K_CONFIGURATION".into(), self.key.service.clone());
        for (k, v) in &self.env {
            env.insert(k.clone(), v.clone());
        }
        env.into_iter().collect()
    }

    pub fn sandbox_spec(
        &self,
        dir: &Path,
        hide: &[PathBuf],
        daemon_env: impl Fn(&str) -> Option<String>,
    ) -> SandboxSpec {
        SandboxSpec {
            dir: dir.to_path_buf(),
            hide: hide.to_vec(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.environment(daemon_env),
            working_dir: self.working_dir.clone(),
            port: self.port,
            hostname: "localhost".into(),
            tmp_mib: 512,
            host_uid: None,
            parent_pid: Some(std::process::id()),
            lifeline: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            key: RevisionKey { region: "local1".into(), service: "svc".into(), revision: "svc-00001-abc".into() },
            command: "python3".into(),
            args: vec![],
            env: vec![("FOO".into(), "bar".into()), ("LANG".into(), "de_DE.UTF-8".into())],
            working_dir: PathBuf::from("/"),
            port: 9090,
            concurrency: 80,
            min_instances: 1,
            max_instances: 3,
            timeout: Duration::from_secs(300),
            startup_deadline: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_environment_is_an_allowlist_plus_the_contract() {
        let daemon = |k: &str| match k {
            "TZ" => Some("UTC".to_string()),
            "RUNNEL_HOME" | "GOOGLE_APPLICATION_CREDENTIALS" | "NO_PROXY" => Some("secret".to_string()),
            _ => None,
        };
        let env: BTreeMap<String, String> = launch().environment(daemon).into_iter().collect();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["FOO", "HOME", "K_CONFIGURATION", "K_REVISION", "K_SERVICE", "LANG", "PATH", "PORT", "TZ"]
        );
        assert_eq!(env["PORT"], "9090");
        assert_eq!(env["K_REVISION"], "svc-00001-abc");
        assert_eq!(env["LANG"], "de_DE.UTF-8", "the revision's own value wins");
        assert_eq!(env["PATH"], INSTANCE_PATH);
    }
}
