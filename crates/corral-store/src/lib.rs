//! Corral's state store. The controller keeps its desired state (VMs, hosts, and later clusters,
//! profiles and address pools) in a key-value [`Store`]: tables of string keys and JSON values.
//! The trait is the seam between the controller and a backend; [`RedbStore`] keeps state in one
//! embedded file (the default), [`EtcdStore`] in an etcd cluster (replicated), and [`copy`]
//! moves everything from one to the other (`corral store migrate`).
//!
//! Every write is durable when the call returns, so the controller writes its intent first
//! and acts on it afterwards: a crash in between loses nothing.

mod etcd_store;
pub mod local_etcd;
mod redb_store;
mod table;

pub use etcd_store::{EtcdStore, WriteGuard};
pub use local_etcd::LocalEtcd;
pub use redb_store::RedbStore;
pub use table::Table;

use serde::{de::DeserializeOwned, Serialize};

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store at {path}: {message}")]
    Open { path: String, message: String },
    /// The store cannot answer now (down, no quorum, too slow): worth trying again.
    #[error("state store: {0}")]
    Backend(String),
    /// The store refused the request as such (too large, malformed): trying again will not
    /// help.
    #[error("state store refused the request: {0}")]
    Refused(String),
    /// The lease named does not exist (it expired or was revoked).
    #[error("state store: the lease is gone ({0})")]
    LeaseGone(String),
    /// A write of a controller that does not lead (any more) was refused, in the same
    /// transaction as the write: nothing of it landed.
    #[error("state store: this controller no longer leads; the write was refused ({0})")]
    NotLeader(String),
    #[error("state store: value of {table}/{key} is not valid JSON for its type: {message}")]
    Decode { table: String, key: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put { table: String, key: String, value: Vec<u8> },
    Delete { table: String, key: String },
}

/// A key-value store of named tables. Implementations must make each call atomic and durable.
pub trait Store: Send + Sync + 'static {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// All entries of a table whose key starts with `prefix`, in key order.
    fn scan(&self, table: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Applies every op of the batch atomically.
    fn apply(&self, ops: Vec<Op>) -> Result<()>;
    /// Sets `key` to `new` only if its current value equals `expected` (None = absent).
    /// Returns false, writing nothing, when it does not.
    fn compare_and_swap(&self, table: &str, key: &str, expected: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool>;
    /// The names of the tables that hold entries, in order.
    fn tables(&self) -> Result<Vec<String>>;
}

/// Copies every entry of `from` into `to`, table by table in batches of `batch` writes (each
/// batch atomic); returns (tables, entries) copied. Entries `to` has that `from` lacks stay.
pub fn copy(from: &dyn Store, to: &dyn Store, batch: usize) -> Result<(usize, usize)> {
    let tables = from.tables()?;
    let mut n = 0;
    for t in &tables {
        let entries = from.scan(t, "")?;
        for chunk in entries.chunks(batch.max(1)) {
            let ops =
                chunk.iter().map(|(k, v)| Op::Put { table: t.clone(), key: k.clone(), value: v.clone() }).collect();
            to.apply(ops)?;
            n += chunk.len();
        }
    }
    Ok((tables.len(), n))
}

/// Typed helpers over any [`Store`], storing values as JSON.
pub trait StoreExt: Store {
    fn get_json<T: DeserializeOwned>(&self, table: &str, key: &str) -> Result<Option<T>> {
        match self.get(table, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Decode {
                table: table.into(),
                key: key.into(),
                message: e.to_string(),
            }),
        }
    }
    fn put_json<T: Serialize>(&self, table: &str, key: &str, value: &T) -> Result<()> {
        let value = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.apply(vec![Op::Put { table: table.into(), key: key.into(), value }])
    }
    fn delete(&self, table: &str, key: &str) -> Result<()> {
        self.apply(vec![Op::Delete { table: table.into(), key: key.into() }])
    }
    fn list_json<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>> {
        self.scan(table, "")?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Decode {
                    table: table.into(),
                    key,
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
