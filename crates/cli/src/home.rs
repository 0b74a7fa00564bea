//! `$RUNNEL_HOME`: where the daemon keeps its state and how the CLI finds the daemon.
//!
//! The directory is mode 0700; the owner's credential is 0600. The daemon writes
//! `daemon.json` (its listeners) once it is serving, so `RUNNEL_HOME=dir runnel …` in another
//! terminal reaches it without flags.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const OWNER_CREDENTIAL: &str = "owner.credential";
pub const DAEMON_FILE: &str = "daemon.json";
pub const STATE_FILE: &str = "state.redb";

/// The home directory: `$RUNNEL_HOME`, else `$XDG_DATA_HOME/runnel`, else `~/.local/share/runnel`.
pub fn resolve(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("RUNNEL_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join("runnel"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/runnel")),
        None => bail!("cannot tell where runnel's state lives: set RUNNEL_HOME (or HOME)"),
    }
}

/// Creates the home (mode 0700) or tightens an existing one, since it holds credentials.
pub fn prepare(home: &Path) -> Result<()> {
    fs::create_dir_all(home).with_context(|| format!("cannot create RUNNEL_HOME {}", home.display()))?;
    let mode = fs::metadata(home)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        fs::set_permissions(home, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", home.display()))?;
    }
    Ok(())
}

/// Writes a file readable only by its owner, durably, replacing any previous one atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The owner's credential: read it, or create it on first start.
pub fn owner_credential(home: &Path) -> Result<String> {
    let path = home.join(OWNER_CREDENTIAL);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            }
            Ok(s.trim().to_string())
        }
        _ => {
            let secret = runnel_api::new_secret();
            write_private(&path, format!("{secret}\n").as_bytes())?;
            Ok(secret)
        }
    }
}

/// What a running daemon tells its clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub api: String,
    /// The frontend's address, when this daemon runs instances.
    #[serde(default)]
    pub frontend: Option<String>,
    pub project: String,
    pub region: String,
    pub pid: u32,
}

pub fn read_daemon(home: &Path) -> Option<DaemonInfo> {
    let text = fs::read_to_string(home.join(DAEMON_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
