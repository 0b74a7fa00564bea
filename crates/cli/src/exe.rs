//! The runnel executable that sandboxes run.
//!
//! A daemon started as root runs each instance as an unprivileged uid of its own, and the
//! sandbox's second stage is this same executable, started as that uid. If the executable sits
//! where such a uid cannot reach it — the usual case for `cargo run` in a checkout under
//! `/root`, mode 0700 — every deploy would fail with "start stage 2: Permission denied". So the
//! daemon finds out at start and, when needed, runs its sandboxes from a copy every uid can read.
//!
//! The copy lives in `/var/tmp/runnel-bin-UID/`, not under `/tmp` (each sandbox has a private
//! one) nor under `$RUNNEL_HOME` (hidden from instances). `/var/tmp` is writable by everyone, and
//! the daemon runs this file as root, so the directory is trusted only if it is a real directory
//! owned by the daemon's user and writable by nobody else; the copy is written under a temporary
//! name and renamed into place, and reused only if it is a regular file of that same owner with
//! the same size. Copies are named after the executable's size and modification time, so one
//! build is copied once, however often the daemon restarts. Old copies are not removed: a
//! daemon still running may start sandboxes from one at any time.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const BASE: &str = "/var/tmp";

/// Whether a uid with no relation to the file's owner can run `exe`: every directory on its
/// path searchable by others, and the file readable and executable by others.
pub fn readable_by_any_user(exe: &Path) -> bool {
    let Ok(meta) = fs::metadata(exe) else { return false };
    if meta.mode() & 0o005 != 0o005 {
        return false;
    }
    exe.ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0))
}

/// `exe` itself if every uid can run it, else a copy that every uid can run (see the module).
pub fn for_sandboxes(exe: &Path) -> Result<PathBuf> {
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).context("cannot tell which user runnel runs as")?;
    // Without root, sandboxes run as the daemon's own user, who can read what it runs.
    if euid != 0 || readable_by_any_user(exe) {
        return Ok(exe.to_path_buf());
    }
    let dir = Path::new(BASE).join(format!("runnel-bin-{euid}"));
    trusted_dir(&dir, euid)?;
    let meta = fs::metadata(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let copy = dir.join(format!("runnel-{:x}-{:x}", meta.len(), meta.mtime()));
    if let Ok(existing) = fs::symlink_metadata(&copy)
        && existing.is_file()
        && existing.uid() == euid
        && existing.mode() & 0o022 == 0
        && existing.len() == meta.len()
    {
        return Ok(copy);
    }
    let partial = dir.join(format!(".partial-{}", std::process::id()));
    let _ = fs::remove_file(&partial);
    fs::copy(exe, &partial).with_context(|| format!("cannot copy {} to {}", exe.display(), partial.display()))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))?;
    fs::rename(&partial, &copy).with_context(|| format!("cannot move the copy into place at {}", copy.display()))?;
    Ok(copy)
}

/// Creates `dir` (0755) or accepts it only if it is a directory of `euid` that nobody else may
/// write to: a directory someone else made in `/var/tmp` could hold an executable of theirs.
fn trusted_dir(dir: &Path, euid: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {
            // The umask may have narrowed the mode; instances need to search it.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let m = fs::symlink_metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !m.is_dir() || m.uid() != euid || m.mode() & 0o022 != 0 || m.mode() & 0o005 != 0o005 {
        bail!(
            "{} exists but is not a directory of this user that only it may write and everyone may read; \
             runnel will not run sandboxes from it. Remove it, or install runnel where every user can read it \
             (e.g. `cargo install --path crates/cli --root /usr/local`)",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_makes_the_executable_unreadable_to_others() {
        let base = std::env::temp_dir().join(format!("runnel-exe-test-{}", std::process::id()));
        let private = base.join("private");
        fs::create_dir_all(&private).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let exe = private.join("runnel");
        fs::write(&exe, b"#!/bin/true\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(readable_by_any_user(&exe), "a path of 0755 directories under {} is readable", base.display());
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!readable_by_any_user(&exe), "a 0700 directory on the path hides it");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!readable_by_any_user(&exe), "a 0700 file is not runnable by others");
        let _ = fs::remove_dir_all(&base);
    }
}
