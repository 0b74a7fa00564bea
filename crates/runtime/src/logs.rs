//! Bounded log files per service: instance output and request records, as JSON lines.
//!
//! Each service has `logs/REGION/SERVICE/{instances,requests}.jsonl` under `$RUNNEL_HOME`; a file
//! that grows past its limit is renamed to `.1` (replacing the previous one) and started anew,
//! so a chatty instance costs at most twice the limit on disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Which log of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Instances,
    Requests,
    /// The platform's refusal log: one file for the daemon, not per service.
    Denied,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Instances => "instances.jsonl",
            Kind::Requests => "requests.jsonl",
            Kind::Denied => "denied.jsonl",
        }
    }
}

struct Open {
    file: File,
    size: u64,
}

pub struct LogStore {
    root: PathBuf,
    limit: u64,
    open: Mutex<HashMap<PathBuf, Open>>,
}

impl LogStore {
    pub fn new(root: PathBuf, limit: u64) -> Self {
        Self { root, limit, open: Mutex::new(HashMap::new()) }
    }

    fn path(&self, region: &str, service: &str, kind: Kind) -> PathBuf {
        if kind == Kind::Denied {
            return self.root.join(kind.file());
        }
        self.root.join(region).join(service).join(kind.file())
    }

    fn open_file(path: &Path) -> std::io::Result<Open> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let size = file.metadata()?.len();
        Ok(Open { file, size })
    }

    /// Appends one JSON line. Logging must never take the daemon down, so failures are
    /// reported once through tracing and the line is dropped.
    pub fn append(&self, region: &str, service: &str, kind: Kind, record: &serde_json::Value) {
        self.append_record(region, service, kind, record);
    }

    /// Appends any serialisable record as one JSON line, written straight from the value (on the
    /// request path, going through a `serde_json::Value` first costs as much as the request).
    pub fn append_record<T: serde::Serialize>(&self, region: &str, service: &str, kind: Kind, record: &T) {
        let Ok(mut line) = serde_json::to_vec(record) else { return };
        line.push(b'\n');
        let path = self.path(region, service, kind);
        let Ok(mut open) = self.open.lock() else { return };
        let result = (|| -> std::io::Result<()> {
            if !open.contains_key(&path) {
                open.insert(path.clone(), Self::open_file(&path)?);
            }
            let rotate = open.get(&path).is_some_and(|o| o.size + line.len() as u64 > self.limit);
            if rotate {
                open.remove(&path);
                std::fs::rename(&path, path.with_extension("jsonl.1"))?;
                open.insert(path.clone(), Self::open_file(&path)?);
            }
            if let Some(o) = open.get_mut(&path) {
                o.file.write_all(&line)?;
                o.size += line.len() as u64;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write a log line");
        }
    }

    /// The last `limit` records of a service's log, oldest first (the rotated file too).
    pub fn read(&self, region: &str, service: &str, kind: Kind, limit: usize) -> Vec<serde_json::Value> {
        let path = self.path(region, service, kind);
        let mut out = Vec::new();
        for p in [path.with_extension("jsonl.1"), path] {
            if let Ok(f) = File::open(&p) {
                for line in BufReader::new(f).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str(&line) {
                        out.push(v);
                    }
                }
            }
        }
        let skip = out.len().saturating_sub(limit);
        out.split_off(skip)
    }

    /// Removes a deleted service's logs.
    pub fn forget(&self, region: &str, service: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|p, _| !p.starts_with(self.root.join(region).join(service)));
        }
        let _ = std::fs::remove_dir_all(self.root.join(region).join(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appends_reads_the_tail_and_rotates_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 2000);
        for i in 0..200 {
            logs.append("local1", "svc", Kind::Instances, &json!({ "n": i, "text": "x".repeat(20) }));
        }
        let tail = logs.read("local1", "svc", Kind::Instances, 5);
        let ns: Vec<i64> = tail.iter().filter_map(|v| v["n"].as_i64()).collect();
        assert_eq!(ns, vec![195, 196, 197, 198, 199]);
        let base = dir.path().join("local1/svc/instances.jsonl");
        let total =
            std::fs::metadata(&base).unwrap().len() + std::fs::metadata(base.with_extension("jsonl.1")).unwrap().len();
        assert!(total <= 4000, "two files of at most the limit each, got {total}");
        assert!(logs.read("local1", "other", Kind::Requests, 10).is_empty());
        logs.forget("local1", "svc");
        assert!(logs.read("local1", "svc", Kind::Instances, 10).is_empty());
    }
}
