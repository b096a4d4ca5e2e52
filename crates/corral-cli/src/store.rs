//! `corral store`: the controller's state store, copied from one backend (the embedded redb
//! file or etcd) to another.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Copy every table from one state store to another, e.g. from the embedded file to etcd:
    /// `corral store migrate --from redb:/var/lib/corral/controller/state.redb --to
    /// etcd:10.0.0.1:2379,10.0.0.2:2379/corral/`. Stop the controller first.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

/// Opens a store named `redb:PATH` or `etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]`.
fn open_store(spec: &str) -> Result<Box<dyn corral_store::Store>> {
    if let Some(path) = spec.strip_prefix("redb:") {
        if !Path::new(path).exists() {
            bail!("no redb store at {path}: give the controller's <data>/state.redb");
        }
        return Ok(Box::new(corral_store::RedbStore::open(Path::new(path))?));
    }
    if let Some(rest) = spec.strip_prefix("etcd:") {
        let (eps, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/corral/"),
        };
        let eps: Vec<String> = eps.split(',').filter(|e| !e.is_empty()).map(String::from).collect();
        if eps.is_empty() {
            bail!("{spec:?} names no etcd endpoint: write etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]");
        }
        return Ok(Box::new(corral_store::EtcdStore::connect(&eps, prefix)?));
    }
    bail!("unknown store {spec:?}: write redb:PATH or etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]")
}

pub fn store(cmd: StoreCmd) -> Result<()> {
    match cmd {
        StoreCmd::Migrate { from, to } => {
            let (src, dst) = (open_store(&from)?, open_store(&to)?);
            let (tables, entries) = corral_store::copy(src.as_ref(), dst.as_ref(), 100)
                .with_context(|| format!("copying the state from {from} to {to}"))?;
            eprintln!("store migrate: {entries} entries in {tables} tables copied from {from} to {to}");
        }
    }
    Ok(())
}
