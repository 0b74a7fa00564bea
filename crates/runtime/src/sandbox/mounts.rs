//! The sandbox's filesystem: a tmpfs root holding read-only binds of the host, fresh `/proc`,
//! a minimal `/dev`, an in-memory `/tmp`, the instance's channel directory, and nothing of the
//! paths it must hide.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root};

use super::spec::{CHANNEL_DIR, SandboxSpec};

type R = Result<(), String>;

fn m(src: Option<&Path>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> R {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!("mount {} on {}: {e}", src.map(|p| p.display().to_string()).unwrap_or_default(), target.display())
    })
}

/// Top-level host entries never bound into the sandbox: they are replaced by fresh ones.
const REPLACED: &[&str] = &["proc", "sys", "dev", "tmp", "run"];

/// The flags a bind remount must keep: a user namespace may not clear the ones the host set.
fn locked_flags(options: &str) -> MsFlags {
    let mut f = MsFlags::empty();
    for o in options.split(',') {
        f |= match o {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    f
}

/// Unescapes the octal escapes (`\040` for a space) of `/proc/self/mountinfo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remounts every mount below `root` read-only, keeping the flags the host locked. Mountinfo
/// names mounts by their real path (`real_root`); they are reached through `root`, which may be
/// a `/proc/self/fd` link.
fn remount_read_only_below(root: &Path, real_root: &Path) -> R {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {e}"))?;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 6 {
            continue;
        }
        let real = PathBuf::from(unescape(fields[4]));
        let Ok(rel) = real.strip_prefix(real_root) else { continue };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let point = root.join(rel);
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(fields[5]);
        // A mount the host hid from this namespace (locked) or a vanished one can refuse;
        // read-only is the point, so a refusal for a mount that is already read-only is fine.
        // A mount under a hidden path is covered and unreachable (ENOENT): nothing to do.
        if let Err(e) = m(None, &point, None, flags, None)
            && !fields[5].split(',').any(|o| o == "ro")
            && point.exists()
        {
            return Err(e);
        }
    }
    Ok(())
}

fn touch(p: &Path) -> R {
    fs::write(p, b"").map_err(|e| format!("create {}: {e}", p.display()))
}

fn mkdir(p: &Path) -> R {
    fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))
}

/// Makes each hidden path not exist inside: its parent directory is replaced by a tmpfs that
/// holds every other entry of the host's directory (bound back, with their own mounts), and
/// nothing of the hidden one. A path under another hidden path, or one the sandbox could not
/// see anyway (an unreadable parent, a replaced top-level directory), needs nothing.
fn hide(root: &Path, hidden: &[PathBuf]) -> R {
    use std::collections::{BTreeMap, BTreeSet};
    let mut parents: BTreeMap<PathBuf, BTreeSet<std::ffi::OsString>> = BTreeMap::new();
    for h in hidden {
        let (Some(parent), Some(name)) = (h.parent(), h.file_name()) else { continue };
        if parent == Path::new("/") || hidden.iter().any(|other| other != h && h.starts_with(other)) {
            continue; // top-level names are left out of the root; nested ones go with their ancestor
        }
        if fs::symlink_metadata(h).is_err() {
            continue;
        }
        parents.entry(parent.to_path_buf()).or_default().insert(name.to_os_string());
    }
    for (parent, names) in parents {
        let Ok(rel) = parent.strip_prefix("/") else { continue };
        let inside = root.join(rel);
        let Ok(entries) = fs::read_dir(&parent) else { continue };
        if !inside.is_dir() {
            continue;
        }
        let entries: Vec<_> = entries.flatten().collect();
        m(Some(Path::new("tmpfs")), &inside, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
        for entry in entries {
            let name = entry.file_name();
            if names.contains(&name) {
                continue;
            }
            let host = parent.join(&name);
            let target = inside.join(&name);
            let Ok(meta) = fs::symlink_metadata(&host) else { continue };
            if meta.file_type().is_symlink() {
                if let Ok(to) = fs::read_link(&host) {
                    symlink(&to, &target).map_err(|e| format!("symlink {}: {e}", target.display()))?;
                }
            } else if meta.is_dir() {
                mkdir(&target)?;
                m(Some(&host), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            } else {
                touch(&target)?;
                m(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
            }
        }
    }
    Ok(())
}

/// Builds the new root under `spec.dir/root` and pivots into it. Runs in stage 2, PID 1 of
/// the new PID namespace, with full capabilities over the new user namespace.
pub fn build_root(spec: &SandboxSpec) -> R {
    let root = spec.dir.join("root");
    // `spec.dir` may be a `/proc/self/fd` link; mountinfo names mounts by their real path.
    let real_root = fs::read_link(&spec.dir).map(|d| d.join("root")).unwrap_or_else(|_| root.clone());
    // Nothing done here may propagate back to the host.
    m(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    m(Some(Path::new("tmpfs")), &root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;

    // The host, read-only: each top-level directory bound as it is, symlinks recreated.
    let entries = fs::read_dir("/").map_err(|e| format!("read /: {e}"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else { continue };
        if REPLACED.contains(&name_str) || spec.hide.iter().any(|h| h == &Path::new("/").join(&name)) {
            continue;
        }
        let host = Path::new("/").join(&name);
        let inside = root.join(&name);
        let meta = match fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = fs::read_link(&host) {
                symlink(&target, &inside).map_err(|e| format!("symlink {}: {e}", inside.display()))?;
            }
        } else if meta.is_dir() {
            mkdir(&inside)?;
            m(Some(&host), &inside, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        }
    }
    hide(&root, &spec.hide)?;
    remount_read_only_below(&root, &real_root)?;

    // Fresh /proc for the new PID namespace.
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    m(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;

    // A minimal /dev: the harmless character devices, bound from the host.
    let dev = root.join("dev");
    mkdir(&dev)?;
    m(Some(Path::new("tmpfs")), &dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=0755"))?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let inside = dev.join(node);
        touch(&inside)?;
        m(Some(&Path::new("/dev").join(node)), &inside, None, MsFlags::MS_BIND, None)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| format!("symlink /dev/{name}: {e}"))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    m(Some(Path::new("tmpfs")), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;

    // An in-memory /tmp of its own, as on Cloud Run.
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    let size = format!("mode=1777,size={}m", spec.tmp_mib);
    m(Some(Path::new("tmpfs")), &tmp, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&size))?;

    // /run holds the instance's channels and nothing else of the host's /run.
    let run = root.join("run");
    mkdir(&run)?;
    m(
        Some(Path::new("tmpfs")),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    let channels = root.join(CHANNEL_DIR.trim_start_matches('/'));
    mkdir(&channels)?;
    m(Some(&spec.dir.join("run")), &channels, None, MsFlags::MS_BIND, None)?;

    // Names for the metadata server, in the sandbox's own hosts file.
    let hosts = spec.dir.join("hosts");
    if hosts.exists() && root.join("etc/hosts").exists() {
        m(Some(&hosts), &root.join("etc/hosts"), None, MsFlags::MS_BIND, None)?;
        m(None, &root.join("etc/hosts"), None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)?;
    }

    // The root itself becomes read-only, then replaces the old one, which is detached.
    m(None, &root, None, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None)?;
    chdir(&root).map_err(|e| format!("chdir to new root: {e}"))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn locked_flags_are_kept() {
        let f = locked_flags("rw,nosuid,nodev,relatime");
        assert!(f.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME));
        assert!(!f.contains(MsFlags::MS_NOEXEC));
    }
}
