use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Read, Result, Store, StoreError, Write, migrate};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");

/// The embedded store: one redb file.
pub struct RedbStore {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (creating if needed) and migrates the store at `path`. redb locks the file, so a
    /// second daemon on the same state fails here instead of corrupting it.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: shown.clone() },
            e => StoreError::Open { path: shown.clone(), source: Box::new(e) },
        })?;
        let store = Self { db };
        store.ensure_table()?;
        migrate(&store, &shown)?;
        Ok(store)
    }

    /// A store that lives in memory, for tests of the layers above.
    pub fn in_memory() -> Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open { path: "memory".into(), source: Box::new(e) })?;
        let store = Self { db };
        store.ensure_table()?;
        migrate(&store, "memory")?;
        Ok(store)
    }

    fn ensure_table(&self) -> Result<()> {
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(DOCS).map_err(backend)?;
        txn.commit().map_err(backend)
    }
}

struct ReadTxn(redb::ReadTransaction);

fn get_in(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn scan_in(table: &impl ReadableTable<&'static str, &'static [u8]>, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in table.range(prefix..).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

impl Read for ReadTxn {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        get_in(&self.0.open_table(DOCS).map_err(backend)?, key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        scan_in(&self.0.open_table(DOCS).map_err(backend)?, prefix)
    }
}

struct WriteTxn(redb::WriteTransaction);

impl Read for WriteTxn {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        get_in(&self.0.open_table(DOCS).map_err(backend)?, key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        scan_in(&self.0.open_table(DOCS).map_err(backend)?, prefix)
    }
}

impl Write for WriteTxn {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.0.open_table(DOCS).map_err(backend)?.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        Ok(self.0.open_table(DOCS).map_err(backend)?.remove(key).map_err(backend)?.is_some())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().map_err(backend)
    }
}

impl Store for RedbStore {
    fn read(&self) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(ReadTxn(self.db.begin_read().map_err(backend)?)))
    }

    fn write(&self) -> Result<Box<dyn Write + '_>> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        // Nothing is acknowledged before it is on disk.
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        Ok(Box::new(WriteTxn(txn)))
    }
}
