//! Where the demo lives on the host: one fresh directory that it owns and removes at the end.
//!
//! ```text
//! /var/tmp/runnel-demo-PID-RAND/   0755  the demo's own directory
//!   bin/runnel                     0755  the executable of the sandboxes and instances
//!   home/                          0700  RUNNEL_HOME: store, credential, keys, logs
//! ```
//!
//! Why a copy of the executable, and why there: instances run as an unprivileged uid of their
//! own, see the host's files read-only, get a private `/tmp`, and do not see `$RUNNEL_HOME`; the
//! sandbox's own later stage is started as that uid too. The `runnel` being run may sit where
//! such a uid cannot read it (a checkout under a 0700 home), so the demo's daemon runs its
//! sandboxes, and the sandboxes the apps (`__demo-app …`), from an executable placed where every
//! uid can read it: not under `/tmp` (each sandbox
//! has its own) and not under `$RUNNEL_HOME` (hidden). `/var/tmp` is the system's
//! world-traversable directory for files that outlive one process, and the demo deletes its
//! directory when it stops. A hard link is used when it is enough (same filesystem, an
//! executable everyone may read), else a copy.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The parent of every demo directory.
const BASE: &str = "/var/tmp";

/// Mode bits that let every uid read and run a file.
const READ_AND_RUN_BY_ALL: u32 = 0o005;

pub struct DemoDir {
    pub root: PathBuf,
    /// `RUNNEL_HOME` of the demo's daemon.
    pub home: PathBuf,
    /// The executable the demo's sandboxes and instances run.
    pub app_exe: PathBuf,
}

impl DemoDir {
    pub fn create() -> Result<DemoDir> {
        let base = Path::new(BASE);
        if !base.is_dir() {
            bail!(
                "{BASE} does not exist; the demo places the executable its instances run there, where every user may read it. Create it (mode 1777) and try again"
            );
        }
        let root = base.join(format!("runnel-demo-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let make = |dir: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .with_context(|| format!("cannot create the demo's directory {}", dir.display()))?;
            // The process umask may have narrowed the mode.
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))
        };
        make(&root, 0o755)?;
        let dir = DemoDir { home: root.join("home"), app_exe: root.join("bin").join("runnel"), root };
        make(&dir.root.join("bin"), 0o755)?;
        make(&dir.home, 0o700)?;
        place_executable(&dir.app_exe)?;
        Ok(dir)
    }

    /// Removes the directory and everything in it; says so if it cannot.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("could not remove the demo's directory {}: {e}; remove it by hand", self.root.display());
        }
    }
}

/// This very executable at `dest`, readable and runnable by every uid.
fn place_executable(dest: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the runnel executable to give the demo's instances")?;
    if fs::hard_link(&exe, dest).is_ok() {
        let mode = fs::metadata(dest).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & READ_AND_RUN_BY_ALL == READ_AND_RUN_BY_ALL {
            return Ok(());
        }
        // Same inode as the original: changing its mode would change the user's file.
        fs::remove_file(dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    fs::copy(&exe, dest)
        .with_context(|| format!("cannot copy {} to {} for the demo's instances", exe.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} readable by the instances", dest.display()))
}
