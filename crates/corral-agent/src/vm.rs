//! The VMs of one host and their lifecycle. Each VM has a directory holding its record
//! (`vm.json`), its copy-on-write disk, its sockets, console log and, when suspended, its saved
//! memory. The record is written before every action, so an agent killed at any point finds
//! on restart what it was doing, re-attaches to QEMU processes that still run, and settles
//! transitions that were cut short.
//!
//! One job per file: `record` (the record and the in-memory entry), `table` (the host's
//! table of VMs and templates), `reattach` (start-up), `define` (create and delete),
//! `lifecycle` (start, stop, pause, resume, suspend, fencing), `network` (taps and the guest
//! filter), `transfer` (export and import), `access` (exec and console), `monitor` (the
//! periodic pass) and `migrate` (live migration).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::types::Name;
use corral_api::{Accel, ApiError};

mod access;
mod define;
mod disk;
mod lifecycle;
mod migrate;
mod monitor;
mod network;
mod reattach;
mod record;
mod table;
mod transfer;

pub use record::VmRecord;
use record::{Entry, Registered};

use crate::templates::Template;

/// Settings of the VM manager.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub qemu: String,
    pub accel: Accel,
    /// How long a guest may take from QEMU start to reporting ready.
    pub boot_timeout: Duration,
    /// How long a graceful stop waits before forcing.
    pub stop_timeout: Duration,
    /// Netlink, for attaching NICs to their networks (None: NICs stay unattached).
    pub net: Option<crate::netdev::Net>,
    /// The shared storage pool every host mounts (`--shared-dir`), if this one does.
    pub shared_dir: Option<PathBuf>,
}

/// The VMs of this host.
#[derive(Debug)]
pub struct Manager {
    s: Settings,
    templates: Mutex<Vec<Template>>,
    vms: Mutex<BTreeMap<Name, Arc<Entry>>>,
    /// The host's guest filter.
    filter: crate::filter::Filter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}
