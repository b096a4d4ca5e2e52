//! The embedded backend: every table is a redb table in one file.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle};

use crate::{Op, Result, Store, StoreError};

/// A [`Store`] in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn def(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("{e} (is another controller using this data directory?)"),
        })?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let txn = self.db.begin_write().map_err(backend)?;
        for op in &ops {
            match op {
                Op::Put { table, key, value } => {
                    let mut t = txn.open_table(def(table)).map_err(backend)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                }
                Op::Delete { table, key } => {
                    let mut t = txn.open_table(def(table)).map_err(backend)?;
                    t.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)
    }

    fn compare_and_swap(&self, table: &str, key: &str, expected: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut t = txn.open_table(def(table)).map_err(backend)?;
            let current = t.get(key).map_err(backend)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => {
                    t.insert(key, v.as_slice()).map_err(backend)?;
                }
                None => {
                    t.remove(key).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)?;
        Ok(true)
    }

    fn tables(&self) -> Result<Vec<String>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let mut names: Vec<String> = txn.list_tables().map_err(backend)?.map(|t| t.name().to_string()).collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreExt;

    #[test]
    fn survives_reopen_and_scans_by_prefix() -> Result<()> {
        let dir = tempfile::tempdir().map_err(backend)?;
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path)?;
            s.put_json("vms", "web1", &1u32)?;
            s.put_json("vms", "web2", &2u32)?;
            s.put_json("vms", "db1", &3u32)?;
            s.delete("vms", "web2")?;
        }
        let s = RedbStore::open(&path)?;
        assert_eq!(s.get_json::<u32>("vms", "web1")?, Some(1));
        assert_eq!(s.get_json::<u32>("vms", "web2")?, None);
        assert_eq!(s.scan("vms", "web")?.len(), 1);
        assert_eq!(s.list_json::<u32>("vms")?, vec![3, 1]);
        assert_eq!(s.get("nothing", "x")?, None);
        Ok(())
    }

    #[test]
    fn compare_and_swap_refuses_stale_writes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(backend)?;
        let s = RedbStore::open(&dir.path().join("s.redb"))?;
        assert!(s.compare_and_swap("ipam", "a", None, Some(b"1".to_vec()))?);
        assert!(!s.compare_and_swap("ipam", "a", None, Some(b"2".to_vec()))?);
        assert!(s.compare_and_swap("ipam", "a", Some(b"1"), None)?);
        assert_eq!(s.get("ipam", "a")?, None);
        Ok(())
    }
}
