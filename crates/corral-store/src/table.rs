//! Typed table handles: a [`Table<T>`] names a table and the type of its values, so that every
//! read and write of it goes through that type (JSON on disk) and a value of the wrong type
//! cannot be written to it, nor read from it as another. A program declares its tables once,
//! as constants, and uses nothing else.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use crate::{Op, Result, Store, StoreError, StoreExt};

/// A table of the store whose values are `T`, as JSON.
pub struct Table<T> {
    name: &'static str,
    _values: PhantomData<fn() -> T>,
}

impl<T> Table<T> {
    /// The table called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self { name, _values: PhantomData }
    }

    /// Its name in the store.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Table<T> {}

impl<T> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({})", self.name)
    }
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// The value under `key`, if any.
    pub fn get<S: Store + ?Sized>(&self, s: &S, key: &str) -> Result<Option<T>> {
        s.get_json(self.name, key)
    }

    /// Whether `key` holds a value (which is not read).
    pub fn contains<S: Store + ?Sized>(&self, s: &S, key: &str) -> Result<bool> {
        Ok(s.get(self.name, key)?.is_some())
    }

    /// Writes `value` under `key`.
    pub fn put<S: Store + ?Sized>(&self, s: &S, key: &str, value: &T) -> Result<()> {
        s.put_json(self.name, key, value)
    }

    /// Removes `key`.
    pub fn delete<S: Store + ?Sized>(&self, s: &S, key: &str) -> Result<()> {
        s.delete(self.name, key)
    }

    /// Every value, in key order.
    pub fn list<S: Store + ?Sized>(&self, s: &S) -> Result<Vec<T>> {
        s.list_json(self.name)
    }

    /// The keys, in order, of the entries whose key starts with `prefix`.
    pub fn keys<S: Store + ?Sized>(&self, s: &S, prefix: &str) -> Result<Vec<String>> {
        Ok(s.scan(self.name, prefix)?.into_iter().map(|(k, _)| k).collect())
    }

    /// The entries, in key order, whose key starts with `prefix`.
    pub fn entries<S: Store + ?Sized>(&self, s: &S, prefix: &str) -> Result<Vec<(String, T)>> {
        s.scan(self.name, prefix)?
            .into_iter()
            .map(|(k, v)| {
                let t = serde_json::from_slice(&v).map_err(|e| StoreError::Decode {
                    table: self.name.into(),
                    key: k.clone(),
                    message: e.to_string(),
                })?;
                Ok((k, t))
            })
            .collect()
    }

    /// The write of `value` under `key`, for a batch ([`Store::apply`]).
    pub fn put_op(&self, key: &str, value: &T) -> Result<Op> {
        let value = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Op::Put { table: self.name.into(), key: key.into(), value })
    }

    /// The removal of `key`, for a batch.
    pub fn delete_op(&self, key: &str) -> Op {
        Op::Delete { table: self.name.into(), key: key.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedbStore;

    const NUMBERS: Table<u32> = Table::new("numbers");
    const WORDS: Table<String> = Table::new("words");

    #[test]
    fn a_table_reads_and_writes_only_its_own_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("t.redb")).expect("open");
        NUMBERS.put(&s, "b", &2).expect("put");
        s.apply(vec![NUMBERS.put_op("a", &1).expect("op"), WORDS.put_op("a", &"one".to_string()).expect("op")])
            .expect("batch");
        assert_eq!(NUMBERS.list(&s).expect("list"), [1, 2]);
        assert_eq!(NUMBERS.get(&s, "a").expect("get"), Some(1));
        assert_eq!(WORDS.get(&s, "a").expect("get").as_deref(), Some("one"));
        assert!(NUMBERS.contains(&s, "b").expect("contains") && !NUMBERS.contains(&s, "c").expect("contains"));
        assert_eq!(NUMBERS.keys(&s, "").expect("keys"), ["a", "b"]);
        s.apply(vec![NUMBERS.delete_op("a")]).expect("batch");
        NUMBERS.delete(&s, "b").expect("delete");
        assert!(NUMBERS.list(&s).expect("list").is_empty());
        // A value of another type in the table is an error naming the entry, not a panic.
        s.put_json("numbers", "x", &"not a number").expect("put");
        let e = NUMBERS.get(&s, "x").expect_err("refused");
        assert!(matches!(&e, StoreError::Decode { table, key, .. } if table == "numbers" && key == "x"), "{e}");
    }
}
