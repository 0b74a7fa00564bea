//! Bounded log files per service: instance output and request records, as JSON lines.
//!
//! Each service has `logs/REGION/SERVICE/{instances,requests}.jsonl` under `$RUNNEL_HOME`; a file
//! that grows past its limit is renamed to `.1` (replacing the previous one) and started anew,
//! so a chatty instance costs at most twice the limit on disk.
//!
//! Replacing `.1` at once would free its whole limit's worth of pages in one system call: 8 MiB
//! took the kernel 2–8 ms, a few times a second under the benchmark's load, on whichever core
//! the writer ran, and that burst cost the frontend about a tenth of its throughput and raised
//! its p99 (`docs/performance.md`). So the replaced generation is unlinked while an open handle
//! keeps its storage, and the writer truncates it a step at a time (at least twice the bytes it
//! writes, so it is gone before the new file is half full) until it can be closed cheaply.
//!
//! Appending is on the frontend's request path, once per request, so it must cost little more
//! than serialising the record: a line is serialised straight into its file's pending buffer
//! under one lock (files are found by region and service without building a path), and a
//! writer thread writes the pending lines in batches at least every [`FLUSH_EVERY`], as nginx's
//! `access_log … buffer= flush=` does. Reading a log, forgetting a service and dropping the
//! store write what is pending first, and the daemon calls [`LogStore::flush`] before it exits,
//! so no line is lost to the batching; a crash loses at most the last [`FLUSH_EVERY`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use runnel_model::name_map::NameMap;

/// The longest a line waits in memory before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Pending bytes of one file that wake the writer before its time, so a burst is bounded in
/// memory, and beyond which the appender writes them itself (the writer thread is stuck).
const WAKE_AT: usize = 256 * 1024;
const WRITE_INLINE_AT: usize = 8 * 1024 * 1024;
/// The least of a replaced generation's storage released per batch (or per idle tick of the
/// writer): 128 pages, a fraction of a millisecond of the kernel's time.
const RELEASE_STEP: u64 = 512 * 1024;
/// How many times a log read starts again when a rotation unlinked what it was reading.
const READ_ATTEMPTS: usize = 3;

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

    fn index(self) -> usize {
        match self {
            Kind::Instances => 0,
            Kind::Requests => 1,
            Kind::Denied => 2,
        }
    }
}

/// One log file: its open handle and the lines not yet written to it.
struct Open {
    path: PathBuf,
    /// `None` until the first write opens it (or after a failed open, to retry next time).
    file: Option<File>,
    /// Bytes in the file, as far as this store knows.
    written: u64,
    pending: Vec<u8>,
    /// The buffer of the batch last written, cleared, which `pending` swaps with at the next
    /// flush. Under steady load lines arrive while a batch is being written, so without it
    /// every batch would start from an empty buffer and grow by doubling: reallocation,
    /// copying and fresh pages on the frontend's thread, about once per request's worth of
    /// bytes (`docs/performance.md`).
    spare: Vec<u8>,
    /// Whether the writer thread was woken for the lines pending now: it is woken once per
    /// batch. Waking it on every line past the mark cost a futex call per request (about a
    /// thousand a second under load) until the writer got a CPU to take the batch.
    woken: bool,
    /// The generation the last rotation replaced, while its storage is being released.
    replaced: Option<Replaced>,
}

/// A replaced `.1`: unlinked, its storage still held by this handle and released a step at a
/// time, so that no single system call frees the whole file.
struct Replaced {
    file: File,
    size: u64,
}

impl Replaced {
    /// Releases up to `step` bytes of storage; `None` once nothing is left.
    fn release(mut self, step: u64) -> Option<Replaced> {
        if self.size <= step {
            // Closing frees what is left, at most one step.
            return None;
        }
        self.size -= step;
        // On failure the handle is closed, which frees the rest at once: only slower.
        self.file.set_len(self.size).ok()?;
        Some(self)
    }
}

/// What the writer thread is asked for.
#[derive(Default)]
struct Wake {
    /// Write the pending lines now.
    asked: bool,
    /// Write them and return.
    stop: bool,
}

/// What an appended line asks for, decided under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    /// The pending lines passed [`WAKE_AT`]: wake the writer thread (once per batch).
    Writer,
    /// They passed [`WRITE_INLINE_AT`]: the writer thread is stuck; write them here.
    Inline,
}

impl Open {
    /// What the lines now pending ask of the writer (a wake at most once per batch).
    fn need(&mut self) -> Need {
        let pending = self.pending.len();
        if pending >= WRITE_INLINE_AT {
            Need::Inline
        } else if pending >= WAKE_AT && !std::mem::replace(&mut self.woken, true) {
            Need::Writer
        } else {
            Need::Nothing
        }
    }
}

/// A file's lines on their way to the disk, with what the store knows of the file.
struct Batch {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    replaced: Option<Replaced>,
    lines: Vec<u8>,
}

/// kind → region → service → file: looked up with borrowed strings, so appending allocates
/// nothing once a service's file is known.
type Files = [Names<Names<Open>>; 3];

/// A map keyed by region or service names (`runnel_model::name_map`: hashed cheaply, since the
/// names are deployed services and configured regions, not anything a client sends).
type Names<V> = NameMap<String, V>;

struct Shared {
    root: PathBuf,
    limit: u64,
    files: Mutex<Files>,
    /// Serialises writing to disk, so batches of one file land in order even when the
    /// writer thread and a reader both flush. Always taken before `files`.
    writing: Mutex<()>,
    /// Wakes the writer thread early, or asks it to stop.
    wake: (Mutex<Wake>, Condvar),
}

pub struct LogStore {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves at worst a partial line pending; logging goes on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogStore {
    /// A store under `root` whose files rotate past `limit` bytes; starts its writer thread.
    pub fn new(root: PathBuf, limit: u64) -> Self {
        let shared = Arc::new(Shared {
            root,
            limit,
            files: Mutex::new(Default::default()),
            writing: Mutex::new(()),
            wake: (Mutex::new(Wake::default()), Condvar::new()),
        });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new().name("runnel-logs".into()).spawn(move || writer.run_writer());
        if let Err(e) = spawned {
            // Lines are then written when read, when they pile up, and at exit.
            tracing::warn!(error = %e, "cannot start the log writer thread; request logs are written in larger batches");
        }
        Self { shared }
    }

    /// Appends one JSON line. Logging must never take the daemon down, so failures are
    /// reported through tracing and the line is dropped.
    pub fn append(&self, region: &str, service: &str, kind: Kind, record: &serde_json::Value) {
        self.append_record(region, service, kind, record);
    }

    /// Appends any serialisable record as one JSON line, serialised straight into the file's
    /// pending buffer; it reaches the disk within [`FLUSH_EVERY`].
    pub fn append_record<T: serde::Serialize>(&self, region: &str, service: &str, kind: Kind, record: &T) {
        let pending = {
            let mut files = lock(&self.shared.files);
            let Some(open) = self.shared.entry(&mut files, region, service, kind) else { return };
            let start = open.pending.len();
            if serde_json::to_writer(&mut open.pending, record).is_err() {
                open.pending.truncate(start);
                return;
            }
            open.pending.push(b'\n');
            open.need()
        };
        self.wake_if_full(pending);
    }

    /// Appends the line `write` puts at the end of the buffer it is given (newline included);
    /// for records that write their JSON themselves, the cheapest way in.
    pub fn append_line(&self, region: &str, service: &str, kind: Kind, write: impl FnOnce(&mut Vec<u8>)) {
        let pending = {
            let mut files = lock(&self.shared.files);
            let Some(open) = self.shared.entry(&mut files, region, service, kind) else { return };
            write(&mut open.pending);
            open.need()
        };
        self.wake_if_full(pending);
    }

    fn wake_if_full(&self, need: Need) {
        match need {
            Need::Nothing => {}
            Need::Writer => self.shared.wake_writer(false),
            Need::Inline => self.flush(),
        }
    }

    /// Writes every pending line now.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// The last `limit` records of a service's log, oldest first (the rotated file too), as of
    /// the call: every line appended before it, none of those after.
    ///
    /// The two generations are opened together, with what is pending written first and the
    /// writer held off, so a rotation cannot fall between them (which would drop or repeat a
    /// generation's worth). They are read after the writer is let go, from the end back and only
    /// as far as `limit` lines, so reading a large log holds up neither the writer nor the
    /// frontend behind it. A rotation while they are read can still unlink one of them, whose
    /// storage the writer then releases from the end: a snapshot that lost a name is read again,
    /// and the last attempt is read with the writer held off.
    pub fn read(&self, region: &str, service: &str, kind: Kind, limit: usize) -> Vec<serde_json::Value> {
        let path = self.shared.path(region, service, kind);
        let mut attempt = 1;
        loop {
            let writing = lock(&self.shared.writing);
            self.shared.flush_locked();
            let generations = [path.with_extension("jsonl.1"), path.clone()].map(|p| Generation::open(&p));
            let last = attempt == READ_ATTEMPTS;
            if !last {
                // Read with the writer free. (Moved into an `if` expression instead, the guard
                // would stay held to the end of the iteration whenever it was not moved.)
                drop(writing);
            }
            let records = read_tail(&generations, limit);
            if last || generations.iter().flatten().all(Generation::still_named) {
                return records;
            }
            attempt += 1;
        }
    }

    /// Removes a deleted service's logs, pending lines included.
    pub fn forget(&self, region: &str, service: &str) {
        let _writing = lock(&self.shared.writing);
        {
            let mut files = lock(&self.shared.files);
            for by_region in files.iter_mut() {
                if let Some(services) = by_region.get_mut(region) {
                    services.remove(service);
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.shared.root.join(region).join(service));
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.shared.wake_writer(true);
        self.shared.flush();
    }
}

impl Shared {
    fn path(&self, region: &str, service: &str, kind: Kind) -> PathBuf {
        if kind == Kind::Denied {
            return self.root.join(kind.file());
        }
        self.root.join(region).join(service).join(kind.file())
    }

    fn entry<'a>(&self, files: &'a mut Files, region: &str, service: &str, kind: Kind) -> Option<&'a mut Open> {
        // The refusal log is one file whatever the service.
        let (region, service) = if kind == Kind::Denied { ("-", "-") } else { (region, service) };
        let by_region = &mut files[kind.index()];
        if !by_region.contains_key(region) {
            by_region.insert(region.to_owned(), Names::default());
        }
        let services = by_region.get_mut(region)?;
        if !services.contains_key(service) {
            let path = self.path(region, service, kind);
            services.insert(
                service.to_owned(),
                Open {
                    path,
                    file: None,
                    written: 0,
                    pending: Vec::new(),
                    spare: Vec::new(),
                    woken: false,
                    replaced: None,
                },
            );
        }
        services.get_mut(service)
    }

    fn wake_writer(&self, stop: bool) {
        let (flag, cond) = &self.wake;
        {
            let mut wake = lock(flag);
            wake.asked = true;
            wake.stop |= stop;
        }
        cond.notify_one();
    }

    /// The writer thread: writes pending lines every [`FLUSH_EVERY`], or sooner when woken,
    /// until the store is dropped.
    fn run_writer(&self) {
        let (flag, cond) = &self.wake;
        loop {
            let stop = {
                // A request made while the last batch was being written is seen here, not lost:
                // appenders ask once per batch.
                let guard = lock(flag);
                let (mut guard, _) = cond
                    .wait_timeout_while(guard, FLUSH_EVERY, |wake| !wake.asked && !wake.stop)
                    .unwrap_or_else(PoisonError::into_inner);
                guard.asked = false;
                guard.stop
            };
            self.flush();
            if stop {
                return;
            }
        }
    }

    /// Takes every file's pending lines under the lock and writes them outside it, so
    /// appenders (the frontend) never wait for the disk.
    fn flush(&self) {
        let _writing = lock(&self.writing);
        self.flush_locked();
    }

    /// [`Shared::flush`] for a caller that holds `writing`.
    fn flush_locked(&self) {
        let batches = self.take_pending();
        if batches.is_empty() {
            return;
        }
        let done = batches.into_iter().map(|batch| self.write_pending(batch)).collect();
        self.give_back(done);
    }

    /// Every file's pending lines, with its handle; each file's spare buffer takes their place.
    /// A file with no pending lines comes too while a replaced generation of it is released.
    fn take_pending(&self) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut files = lock(&self.files);
        for services in files.iter_mut().flat_map(|by_region| by_region.values_mut()) {
            for open in services.values_mut() {
                if !open.pending.is_empty() || open.replaced.is_some() {
                    let lines = if open.pending.is_empty() {
                        Vec::new()
                    } else {
                        std::mem::replace(&mut open.pending, std::mem::take(&mut open.spare))
                    };
                    open.woken = false;
                    batches.push(Batch {
                        path: open.path.clone(),
                        file: open.file.take(),
                        written: open.written,
                        replaced: open.replaced.take(),
                        lines,
                    });
                }
            }
        }
        batches
    }

    fn write_pending(&self, batch: Batch) -> Batch {
        let Batch { path, mut file, mut written, mut replaced, lines } = batch;
        if !lines.is_empty() {
            (file, written) = match self.write_batch(&path, file, written, &mut replaced, &lines) {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write log lines; they are dropped");
                    (None, 0)
                }
            };
        }
        // Twice what was written, so a replaced generation is gone before the file that took
        // its place is half full: with it, the two names never hold more than twice the limit.
        let step = RELEASE_STEP.max(2 * lines.len() as u64);
        let replaced = replaced.and_then(|r| r.release(step));
        Batch { path, file, written, replaced, lines }
    }

    /// Gives the files back, and their buffers to reuse their capacity, unless the service was
    /// forgotten meanwhile.
    fn give_back(&self, done: Vec<Batch>) {
        let mut files = lock(&self.files);
        for Batch { path, file, written, replaced, mut lines } in done {
            let found = files
                .iter_mut()
                .flat_map(|by_region| by_region.values_mut())
                .flat_map(|services| services.values_mut())
                .find(|open| open.path == path && open.file.is_none());
            if let Some(open) = found {
                open.file = file;
                open.written = written;
                open.replaced = replaced;
                // The larger of the two buffers is the one to keep filling; a burst's buffer is
                // not kept beyond what wakes the writer early.
                lines.clear();
                if lines.capacity() > 2 * WAKE_AT {
                    lines.shrink_to(2 * WAKE_AT);
                }
                if open.pending.is_empty() && open.pending.capacity() < lines.capacity() {
                    std::mem::swap(&mut open.pending, &mut lines);
                }
                open.spare = lines;
            }
        }
    }

    /// Appends `lines` to the file at `path`, rotating it at line boundaries whenever the
    /// next line would take it past the limit. Returns the open file and its size.
    fn write_batch(
        &self,
        path: &Path,
        file: Option<File>,
        written: u64,
        replaced: &mut Option<Replaced>,
        lines: &[u8],
    ) -> std::io::Result<(Option<File>, u64)> {
        let (mut file, mut written) = match file {
            Some(f) => (f, written),
            None => open_file(path)?,
        };
        let mut rest = lines;
        while !rest.is_empty() {
            let room = self.limit.saturating_sub(written);
            let take = if rest.len() as u64 <= room { rest.len() } else { fitting_lines(rest, room) };
            if take == 0 && written > 0 {
                drop(file);
                rotate(path, replaced)?;
                (file, written) = open_file(path)?;
                continue;
            }
            // A single line longer than the limit still goes into a file of its own.
            let take = if take == 0 { line_len(rest) } else { take };
            file.write_all(&rest[..take])?;
            written += take as u64;
            rest = &rest[take..];
        }
        Ok((Some(file), written))
    }
}

/// Renames the file at `path` to `.1`. The generation `.1` held is unlinked first but kept open
/// in `replaced`, so its storage is released later a step at a time, not by this rename; and
/// the rename then has no file to replace, which also spares ext4's flush of a file renamed
/// over another (`auto_da_alloc`). A generation still being released is closed now, so at
/// most one is held.
fn rotate(path: &Path, replaced: &mut Option<Replaced>) -> std::io::Result<()> {
    *replaced = None;
    let previous = path.with_extension("jsonl.1");
    match OpenOptions::new().write(true).open(&previous) {
        Ok(file) => {
            let size = file.metadata()?.len();
            std::fs::remove_file(&previous)?;
            *replaced = Some(Replaced { file, size });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::rename(path, previous)
}

/// One generation of a log as a reader found it: its open file and its size then.
struct Generation {
    file: File,
    size: u64,
}

impl Generation {
    /// The file at `path`, or `None` when there is none (or it cannot be read: a log read is
    /// best-effort, and a missing generation only means fewer lines).
    fn open(path: &Path) -> Option<Generation> {
        let file = File::open(path).ok()?;
        let size = file.metadata().ok()?.len();
        Some(Generation { file, size })
    }

    /// Whether the file still has a name: a generation a rotation unlinked is being truncated
    /// by the writer, so what was read of it may lack lines.
    fn still_named(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.nlink() > 0)
    }
}

/// The last `limit` records of `generations` (oldest first), each read backwards from the size
/// it had when opened. A line that is not JSON (one cut short by a crash) is skipped.
fn read_tail(generations: &[Option<Generation>], limit: usize) -> Vec<serde_json::Value> {
    let mut newest_first = Vec::new();
    for generation in generations.iter().rev().flatten() {
        if newest_first.len() >= limit {
            break;
        }
        // A read that fails (the file shrank: a rotation unlinked it and the writer is releasing
        // it) ends this generation early; `read` sees it unlinked and reads again.
        let _ = lines_backwards(generation, |line| {
            if let Ok(record) = serde_json::from_slice(line) {
                newest_first.push(record);
            }
            newest_first.len() < limit
        });
    }
    newest_first.reverse();
    newest_first
}

/// The first chunk read from a file's end; it doubles while no line fits, so a very long line
/// costs a few reads, not one per chunk.
const READ_CHUNK: usize = 64 * 1024;

/// Calls `each` with the lines of `generation` (without their newlines), last first, until it
/// returns false or the start of the file is reached.
fn lines_backwards(generation: &Generation, mut each: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut pos = generation.size;
    // Bytes from `pos` up to the last line not yet given: the end of a line whose start is not
    // read yet.
    let mut rest: Vec<u8> = Vec::new();
    let mut chunk = READ_CHUNK;
    while pos > 0 {
        let n = chunk.min(pos as usize);
        pos -= n as u64;
        let mut buf = vec![0; n + rest.len()];
        generation.file.read_exact_at(&mut buf[..n], pos)?;
        buf[n..].copy_from_slice(&rest);
        rest = buf;
        let mut end = rest.len();
        // Every newline with bytes after it closes a line; the last line of a file ends in one.
        while let Some(i) = rest[..end].iter().rposition(|&b| b == b'\n') {
            if i + 1 < end && !each(&rest[i + 1..end]) {
                return Ok(());
            }
            end = i;
        }
        if end == rest.len() {
            chunk = chunk.saturating_mul(2);
        }
        rest.truncate(end);
    }
    if !rest.is_empty() {
        each(&rest);
    }
    Ok(())
}

fn open_file(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// The length of the first line of `lines`, its newline included.
fn line_len(lines: &[u8]) -> usize {
    lines.iter().position(|&b| b == b'\n').map_or(lines.len(), |i| i + 1)
}

/// How many bytes of whole lines from the start of `lines` fit in `room`.
fn fitting_lines(lines: &[u8], room: u64) -> usize {
    let mut end = 0;
    while end < lines.len() {
        let next = end + line_len(&lines[end..]);
        if next as u64 > room {
            break;
        }
        end = next;
    }
    end
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

    #[test]
    fn lines_reach_the_file_within_the_flush_interval_and_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("local1/svc/requests.jsonl");
        let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20);
        logs.append("local1", "svc", Kind::Requests, &json!({ "n": 1 }));
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 20;
        while std::fs::read_to_string(&file).unwrap_or_default().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line was not written in time");
            std::thread::sleep(Duration::from_millis(10));
        }
        logs.append("local1", "svc", Kind::Requests, &json!({ "n": 2 }));
        drop(logs);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
    }

    #[test]
    fn lines_that_arrive_while_a_batch_is_written_fill_a_buffer_with_room() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20);
        let append = || {
            logs.append_line("local1", "svc", Kind::Requests, |buf| {
                buf.extend_from_slice(&[b'x'; 999]);
                buf.push(b'\n');
            })
        };
        let capacity = || {
            let mut files = lock(&logs.shared.files);
            logs.shared.entry(&mut files, "local1", "svc", Kind::Requests).unwrap().pending.capacity()
        };
        // A batch of 100 lines is written while the frontend appends one more, as under load
        // (the writer thread is held off by taking `writing`).
        let shared = &logs.shared;
        let writing = lock(&shared.writing);
        for _ in 0..100 {
            append();
        }
        let batches = shared.take_pending();
        append();
        let written = batches.into_iter().map(|b| shared.write_pending(b)).collect();
        shared.give_back(written);
        drop(writing);
        // The next batch is taken; the lines after it go into the first batch's buffer.
        logs.flush();
        let room = capacity();
        assert!(room >= 100 * 1000, "the buffer of 100 lines was kept for the next ones, got {room}");
        for _ in 0..100 {
            append();
        }
        assert_eq!(capacity(), room, "100 more lines fit without growing the buffer");
        logs.flush();
        let file = dir.path().join("local1/svc/requests.jsonl");
        assert_eq!(std::fs::read(&file).unwrap().len(), 201 * 1000);
    }

    #[test]
    fn a_burst_wakes_the_writer_once_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 64 << 20);
        let shared = &logs.shared;
        // The writer thread cannot take a batch while this is held, as when it has no CPU.
        let writing = lock(&shared.writing);
        let append = || {
            let mut files = lock(&shared.files);
            let open = shared.entry(&mut files, "local1", "svc", Kind::Requests).unwrap();
            open.pending.extend_from_slice(&[b'x'; 1023]);
            open.pending.push(b'\n');
            open.need()
        };
        let asks = |needs: &[Need]| {
            needs.iter().enumerate().filter(|(_, n)| **n == Need::Writer).map(|(i, _)| i).collect::<Vec<_>>()
        };
        let first: Vec<Need> = (0..1000).map(|_| append()).collect();
        assert_eq!(asks(&first), [WAKE_AT / 1024 - 1], "one wake, at the line that reached the mark");
        // The writer takes the batch; the next one past the mark asks again, once.
        let _ = shared.take_pending();
        let second: Vec<Need> = (0..1000).map(|_| append()).collect();
        assert_eq!(asks(&second), [WAKE_AT / 1024 - 1]);
        // Past the inline mark the appender writes the lines itself.
        let mut third = Vec::new();
        while third.last() != Some(&Need::Inline) {
            third.push(append());
            assert!(third.len() <= WRITE_INLINE_AT / 1024, "no inline write past {WRITE_INLINE_AT} bytes");
        }
        drop(writing);
    }

    /// Sizes of the files under `dir` this process holds open after their name was removed.
    fn held_unlinked(dir: &Path) -> Vec<u64> {
        let dir = dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| {
                let fd = fd.ok()?.path();
                let target = std::fs::read_link(&fd).ok()?.to_string_lossy().into_owned();
                let held = target.starts_with(&dir) && target.ends_with(" (deleted)");
                // The link is followed: this is the unlinked file's own size.
                held.then(|| std::fs::metadata(&fd).map(|m| m.len()).ok())?
            })
            .collect()
    }

    #[test]
    fn a_replaced_generation_is_released_in_steps_and_the_disk_stays_within_twice_the_limit() {
        const LIMIT: u64 = 4 << 20;
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), LIMIT);
        let shared = &logs.shared;
        let base = dir.path().join("local1/svc/requests.jsonl");
        let previous = base.with_extension("jsonl.1");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        // Batches are written here, one at a time, with the writer thread held off.
        let writing = lock(&shared.writing);
        let flush = || {
            let done = shared.take_pending().into_iter().map(|b| shared.write_pending(b)).collect();
            shared.give_back(done);
        };
        let mut first_held = None;
        // Three generations' worth, in batches of 100 KiB: two rotations.
        for batch in 0..(3 * LIMIT / (100 << 10)) {
            for _ in 0..100 {
                logs.append_line("local1", "svc", Kind::Requests, |buf| {
                    // A 1 KiB JSON line.
                    buf.extend_from_slice(b"{\"p\":\"");
                    buf.extend_from_slice(&[b'x'; 1015]);
                    buf.extend_from_slice(b"\"}\n");
                });
            }
            flush();
            let held = held_unlinked(dir.path());
            assert!(held.len() <= 1, "at most one replaced generation is held, got {held:?}");
            let total = size(&base) + size(&previous) + held.iter().sum::<u64>();
            assert!(total <= 2 * LIMIT, "batch {batch}: {total} bytes on disk, more than twice the limit");
            if first_held.is_none() && !held.is_empty() {
                first_held = Some(held[0]);
            }
        }
        let first = first_held.expect("the second rotation replaced a generation, kept open to release it");
        assert!((LIMIT - 2 * RELEASE_STEP..LIMIT).contains(&first), "one step released at the rotation, left {first}");
        // Without new lines each flush (the writer's idle tick) releases a step, then closes it.
        for _ in 0..=LIMIT / RELEASE_STEP {
            flush();
        }
        assert_eq!(held_unlinked(dir.path()), Vec::<u64>::new(), "the replaced generation was closed");
        drop(writing);
        // Readers see the two named generations whole, nothing of the replaced one.
        assert!((LIMIT - 1023..=LIMIT).contains(&size(&previous)), "`.1` is a full generation");
        let named = (size(&base) + size(&previous)) / 1024;
        assert_eq!(logs.read("local1", "svc", Kind::Requests, usize::MAX).len() as u64, named);
    }

    #[test]
    fn a_read_while_lines_arrive_and_files_rotate_sees_every_line_once_and_in_order() {
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        // About 60 lines a generation: a rotation every few batches.
        let logs = LogStore::new(dir.path().to_path_buf(), 1000);
        let acknowledged = AtomicI64::new(-1);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    logs.append("local1", "svc", Kind::Instances, &json!({ "n": n }));
                    acknowledged.store(n, Ordering::Release);
                    n += 1;
                    if n % 7 == 0 {
                        logs.flush();
                    }
                }
            });
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            let mut reads = 0;
            while std::time::Instant::now() < deadline {
                let before = acknowledged.load(Ordering::Acquire);
                let ns: Vec<i64> = logs
                    .read("local1", "svc", Kind::Instances, usize::MAX)
                    .iter()
                    .map(|v| v["n"].as_i64().unwrap())
                    .collect();
                if let (Some(first), Some(last)) = (ns.first(), ns.last()) {
                    let expected: Vec<i64> = (*first..=*last).collect();
                    assert_eq!(ns, expected, "read {reads}: the two generations hold consecutive lines, each once");
                    assert!(
                        *last >= before,
                        "read {reads}: line {before} was appended before the read, the last read is {last}"
                    );
                }
                reads += 1;
            }
            stop.store(true, Ordering::Relaxed);
            assert!(reads > 100, "only {reads} reads were made");
        });
    }

    #[test]
    fn lines_are_read_backwards_whatever_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "y".repeat(3 * READ_CHUNK + 17);
        let cases: [&[&str]; 4] =
            [&[], &["a"], &["a", "", "bc", &long, "d"], &[&long, &long, "e", &"z".repeat(READ_CHUNK - 1)]];
        for lines in cases {
            for trailing_newline in [true, false] {
                let mut text = lines.join("\n");
                if trailing_newline && !lines.is_empty() {
                    text.push('\n');
                }
                std::fs::write(&path, &text).unwrap();
                let generation = Generation::open(&path).unwrap();
                let mut got = Vec::new();
                lines_backwards(&generation, |line| {
                    got.push(String::from_utf8(line.to_vec()).unwrap());
                    true
                })
                .unwrap();
                let expected: Vec<String> =
                    lines.iter().rev().filter(|l| !l.is_empty()).map(|l| l.to_string()).collect();
                assert_eq!(got, expected, "{} lines, trailing newline {trailing_newline}", lines.len());
                // Stopping early reads no further.
                let mut first = Vec::new();
                lines_backwards(&generation, |line| {
                    first.push(line.len());
                    false
                })
                .unwrap();
                assert_eq!(first, expected.iter().take(1).map(String::len).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_read_takes_the_newest_records_and_skips_lines_that_are_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("local1/svc/requests.jsonl");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        std::fs::write(base.with_extension("jsonl.1"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        // A line cut short by a crash, then the lines written after the restart.
        std::fs::write(&base, "{\"n\":3}\n{\"n\":4,\"cut\n{\"n\":5}\n{\"n\":6}\n").unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20);
        let ns = |limit| -> Vec<i64> {
            logs.read("local1", "svc", Kind::Requests, limit).iter().map(|v| v["n"].as_i64().unwrap()).collect()
        };
        assert_eq!(ns(2), [5, 6]);
        assert_eq!(ns(4), [2, 3, 5, 6], "the rotated generation supplies the older records");
        assert_eq!(ns(100), [1, 2, 3, 5, 6]);
    }

    #[test]
    fn refusals_share_one_file_whatever_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 1 << 20);
        logs.append("local1", "a", Kind::Denied, &json!({ "n": 1 }));
        logs.append("-", "-", Kind::Denied, &json!({ "n": 2 }));
        logs.flush();
        assert_eq!(std::fs::read_to_string(dir.path().join("denied.jsonl")).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
    }
}
