//! runnel's durable state, behind a small key-value trait.
//!
//! The control plane is the single writer. It keeps every resource as a JSON document under a
//! path-like key (`services/local1/receiver`) and changes them inside write transactions: a
//! transaction either commits whole and is on disk (fsync) before `commit` returns, or leaves no
//! trace. That is all a resource API with etags needs, and it is what an existing distributed
//! store (etcd's transactions, a PostgreSQL table) offers too, so a second backend can replace
//! the embedded one without touching the control plane.
//!
//! The embedded backend is redb: pure Rust, crash-safe copy-on-write B-trees, `Durability::Immediate`
//! commits. This crate must never interpret the documents it stores.

mod redb_store;

pub use redb_store::RedbStore;

/// What went wrong in the store. Messages say what to do, since they reach operators.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the state store at {path}: {source}; check that no other runnel daemon uses this RUNNEL_HOME and that the file is readable"
    )]
    Open { path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(
        "the state store at {path} was written by a newer runnel (schema {found}, this runnel knows up to {known}); run a newer runnel or use another RUNNEL_HOME"
    )]
    NewerSchema { path: String, found: u64, known: u64 },
    #[error(
        "another runnel daemon is already using the state store at {path}; stop it first (its address is in daemon.json beside it), or start this one with another RUNNEL_HOME"
    )]
    Locked { path: String },
    #[error("state store failure: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A consistent snapshot to read from.
pub trait Read {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every key starting with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
}

/// A write transaction. Dropping it without [`Write::commit`] discards every change.
pub trait Write: Read {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<()>;
    /// Removes a key; returns whether it was there.
    fn delete(&mut self, key: &str) -> Result<bool>;
    /// Makes every change durable, then returns.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A store: snapshots to read, one write transaction at a time.
pub trait Store: Send + Sync {
    fn read(&self) -> Result<Box<dyn Read + '_>>;
    /// Blocks until no other write transaction is open.
    fn write(&self) -> Result<Box<dyn Write + '_>>;
}

/// The schema version this runnel writes. Each migration moves the store up by one.
pub const SCHEMA_VERSION: u64 = 1;

/// Migrations, in order: `MIGRATIONS[i]` moves a store from version `i` to `i + 1`.
/// Version 0 is an empty file.
type Migration = fn(&mut dyn Write) -> Result<()>;
const MIGRATIONS: &[Migration] = &[|_| Ok(())];

const SCHEMA_KEY: &str = "meta/schema_version";

/// Brings a store to [`SCHEMA_VERSION`], one committed step at a time, and refuses a store
/// from a newer runnel.
pub fn migrate(store: &dyn Store, path: &str) -> Result<u64> {
    loop {
        let mut txn = store.write()?;
        let found = match txn.get(SCHEMA_KEY)? {
            Some(v) => String::from_utf8_lossy(&v)
                .parse::<u64>()
                .map_err(|_| StoreError::Backend(format!("the schema version in {path} is unreadable")))?,
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path: path.to_string(), found, known: SCHEMA_VERSION });
        }
        if found == SCHEMA_VERSION {
            return Ok(found);
        }
        let step = usize::try_from(found)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| StoreError::Backend(format!("no migration from schema {found}")))?;
        step(txn.as_mut())?;
        txn.put(SCHEMA_KEY, (found + 1).to_string().as_bytes())?;
        txn.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_scan_delete_and_abort() {
        let store = RedbStore::in_memory().unwrap_or_else(|e| panic!("{e}"));
        let mut w = store.write().unwrap_or_else(|e| panic!("{e}"));
        w.put("services/local1/a", b"1").unwrap_or_else(|e| panic!("{e}"));
        w.put("services/local1/b", b"2").unwrap_or_else(|e| panic!("{e}"));
        w.put("services/local2/c", b"3").unwrap_or_else(|e| panic!("{e}"));
        w.put("servicesx", b"4").unwrap_or_else(|e| panic!("{e}"));
        w.commit().unwrap_or_else(|e| panic!("{e}"));

        let r = store.read().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.get("services/local1/a").ok().flatten(), Some(b"1".to_vec()));
        let keys: Vec<String> = r.scan("services/local1/").unwrap_or_default().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["services/local1/a", "services/local1/b"]);
        assert_eq!(r.scan("services/").unwrap_or_default().len(), 3);
        drop(r);

        let mut w = store.write().unwrap_or_else(|e| panic!("{e}"));
        assert!(w.delete("services/local1/a").unwrap_or(false));
        w.put("services/local1/z", b"9").unwrap_or_else(|e| panic!("{e}"));
        drop(w); // aborted
        let r = store.read().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.get("services/local1/a").ok().flatten().is_some());
        assert!(r.get("services/local1/z").ok().flatten().is_none());
    }

    #[test]
    fn committed_writes_survive_reopen_and_schema_is_recorded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut w = store.write().unwrap_or_else(|e| panic!("{e}"));
            w.put("k", b"v").unwrap_or_else(|e| panic!("{e}"));
            w.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = RedbStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = store.read().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.get("k").ok().flatten(), Some(b"v".to_vec()));
        assert_eq!(r.get(SCHEMA_KEY).ok().flatten(), Some(SCHEMA_VERSION.to_string().into_bytes()));
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut w = store.write().unwrap_or_else(|e| panic!("{e}"));
            w.put(SCHEMA_KEY, b"99").unwrap_or_else(|e| panic!("{e}"));
            w.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        let err = RedbStore::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("written by a newer runnel (schema 99") && err.contains("use another RUNNEL_HOME"),
            "{err}"
        );
    }
}
