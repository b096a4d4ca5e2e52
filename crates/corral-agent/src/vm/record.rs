//! What the agent knows of each VM: its record (`vm.json`, written durably before every
//! action) and the in-memory entry around it (paths, operation lock, usage, migration figures).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::{ApiError, VmState, VmUsage};

use super::monitor::CpuMark;
use super::{internal, lock, migrate};
use crate::qemu::{self, VmPaths};

/// What the agent remembers of a VM across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub def: VmDefinition,
    pub state: VmState,
    #[serde(default)]
    pub error: Option<String>,
    /// Why its QEMU ended without an operation asking (crash, fencing); cleared when it
    /// starts again.
    #[serde(default)]
    pub ended: Option<corral_api::agent::Ended>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// The live migration this copy takes part in.
    #[serde(default)]
    pub migration: Option<migrate::Role>,
    /// The agent in its guest (from its image), set each time its QEMU starts.
    #[serde(default)]
    pub guest_agent: corral_api::image::GuestAgentKind,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) paths: VmPaths,
    /// Held for the whole of a lifecycle operation (or a live migration): one at a time per VM.
    pub(super) op: Arc<tokio::sync::Mutex<()>>,
    pub(super) rec: Mutex<VmRecord>,
    pub(super) usage: Mutex<(VmUsage, Option<CpuMark>)>,
    /// Figures of the outgoing migration, while it runs and after it ended.
    pub(super) outgoing: Mutex<Option<corral_api::migration::OutgoingStatus>>,
    /// Set to ask the running outgoing migration to stop.
    pub(super) cancel: std::sync::atomic::AtomicBool,
    /// When the guest last told its facts (OS, addresses).
    pub(super) facts_at: Mutex<Option<std::time::Instant>>,
}

/// What [`Manager::register`](super::Manager::register) found.
pub(super) enum Registered {
    New(Arc<Entry>),
    Existing(Arc<Entry>),
}

/// Writes `bytes` to `path` durably (temp file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = crate::private::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Entry {
    pub(super) fn snapshot(&self) -> VmRecord {
        lock(&self.rec).clone()
    }
    /// The channel to the agent in its guest.
    pub(super) fn guest(&self) -> crate::guest::Guest {
        crate::guest::Guest { kind: lock(&self.rec).guest_agent, sock: self.paths.guest() }
    }
    /// Changes the record and writes it to disk before returning.
    pub(super) fn update(&self, f: impl FnOnce(&mut VmRecord)) -> Result<VmRecord, ApiError> {
        let mut r = lock(&self.rec);
        f(&mut r);
        let bytes = serde_json::to_vec_pretty(&*r).map_err(internal)?;
        write_atomic(&self.paths.record(), &bytes).map_err(|e| internal(format!("cannot write VM record: {e}")))?;
        Ok(r.clone())
    }
    pub(super) fn status(&self) -> VmStatus {
        let r = self.snapshot();
        VmStatus {
            name: r.def.name.to_string(),
            uuid: r.def.uuid,
            state: r.state,
            error: r.error.clone(),
            ended: r.ended,
            boot_ms: r.boot_ms,
            disk: self.paths.disk().display().to_string(),
            disk_mib: r.def.disk_mib,
            pid: r.pid,
            usage: lock(&self.usage).0.clone(),
        }
    }
    /// The VM's QEMU process, if one runs: the recorded PID, or the one in QEMU's PID file.
    pub(super) fn live_pid(&self) -> Option<u32> {
        let r = self.snapshot();
        let from_file = || std::fs::read_to_string(self.paths.pidfile()).ok()?.trim().parse::<u32>().ok();
        r.pid
            .filter(|p| qemu::is_ours(*p, &r.def.uuid))
            .or_else(|| from_file().filter(|p| qemu::is_ours(*p, &r.def.uuid)))
    }
    /// The last lines of the console (read from the last 8 KiB of the log only).
    pub(super) fn console_tail(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = vec![];
        if let Ok(mut f) = std::fs::File::open(self.paths.console_log()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(8 * 1024)));
            let _ = f.take(8 * 1024).read_to_end(&mut bytes);
        }
        let s = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = s.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}
