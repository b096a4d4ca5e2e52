//! The VMs of one host and their lifecycle. Each VM has a directory holding its record
//! (`vm.json`), its copy-on-write disk, its sockets, console log and, when suspended, its saved
//! memory. The record is written before every action, so an agent killed at any point finds
//! on restart what it was doing, re-attaches to QEMU processes that still run, and settles
//! transitions that were cut short.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::types::Name;
use corral_api::{Accel, ApiError, ConsoleChunk, ExecRequest, ExecResult, VmAction, VmState, VmUsage};

mod migrate;

use crate::qemu::{self, VmPaths};
use crate::qmp::Monitor;
use crate::templates::Template;
use crate::{guest, hostinfo, qmp};

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

/// What the agent remembers of a VM across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub def: VmDefinition,
    pub state: VmState,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// The live migration this copy takes part in.
    #[serde(default)]
    pub migration: Option<migrate::Role>,
}

/// A QEMU process's CPU counters at one instant: used time (clock ticks) and used plus
/// run-queue waiting time of all its threads (ns), for the demand of the next sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    ticks: u64,
    wanted_ns: Option<u64>,
    at: Instant,
}

#[derive(Debug)]
struct Entry {
    paths: VmPaths,
    /// Held for the whole of a lifecycle operation (or a live migration): one at a time per VM.
    op: Arc<tokio::sync::Mutex<()>>,
    rec: Mutex<VmRecord>,
    usage: Mutex<(VmUsage, Option<CpuMark>)>,
    /// Figures of the outgoing migration, while it runs and after it ended.
    outgoing: Mutex<Option<corral_api::migration::OutgoingStatus>>,
    /// Set to ask the running outgoing migration to stop.
    cancel: std::sync::atomic::AtomicBool,
}

/// What [`Manager::register`] found.
enum Registered {
    New(Arc<Entry>),
    Existing(Arc<Entry>),
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

/// The name under which a VM's saved-state file is handed to QEMU (`getfd`, then `fd:NAME`).
const STATE_FD: &str = "corral-state";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Hands `file` to the QEMU behind the QMP socket `qmp` (`getfd`) and runs `command`
/// (`migrate` or `migrate-incoming`) on it as `fd:NAME`: the saved state moves through an
/// open file, never a path in a shell command.
async fn migrate_fd(qmp: &Path, file: &std::fs::File, command: &str) -> Result<(), ApiError> {
    let mut c = qmp::QmpClient::connect(qmp).await.map_err(internal)?;
    c.send_fd(STATE_FD, std::os::fd::AsFd::as_fd(file)).await.map_err(internal)?;
    c.execute(command, Some(json!({ "uri": format!("fd:{STATE_FD}") }))).await.map_err(internal)?;
    Ok(())
}

/// How long saving a VM's memory to disk (suspend) may take before it is called off.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// A console log is rotated once it is larger than this (QEMU appends to it).
const CONSOLE_MAX: u64 = 1 << 20;

/// Keeps a console log bounded, whatever the guest prints: once it passes `max` bytes its
/// contents move to `console.log.1` (replacing the previous one) and the log is emptied in
/// place. QEMU opened it for appending, so it goes on writing at the new end. (What the
/// guest prints between the copy and the truncation is lost, as with logrotate's
/// copytruncate.)
fn rotate_console(log: &Path, max: u64) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(log) else { return Ok(false) };
    if meta.len() <= max {
        return Ok(false);
    }
    let old = log.with_extension("log.1");
    std::fs::copy(log, &old)?;
    std::fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
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
    fn snapshot(&self) -> VmRecord {
        lock(&self.rec).clone()
    }
    /// Changes the record and writes it to disk before returning.
    fn update(&self, f: impl FnOnce(&mut VmRecord)) -> Result<VmRecord, ApiError> {
        let mut r = lock(&self.rec);
        f(&mut r);
        let bytes = serde_json::to_vec_pretty(&*r).map_err(internal)?;
        write_atomic(&self.paths.record(), &bytes).map_err(|e| internal(format!("cannot write VM record: {e}")))?;
        Ok(r.clone())
    }
    fn status(&self) -> VmStatus {
        let r = self.snapshot();
        VmStatus {
            name: r.def.name.to_string(),
            uuid: r.def.uuid,
            state: r.state,
            error: r.error.clone(),
            ended: None,
            boot_ms: r.boot_ms,
            disk: self.paths.disk().display().to_string(),
            pid: r.pid,
            usage: lock(&self.usage).0.clone(),
        }
    }
    /// The VM's QEMU process, if one runs: the recorded PID, or the one in QEMU's PID file.
    fn live_pid(&self) -> Option<u32> {
        let r = self.snapshot();
        let from_file = || std::fs::read_to_string(self.paths.pidfile()).ok()?.trim().parse::<u32>().ok();
        r.pid
            .filter(|p| qemu::is_ours(*p, &r.def.uuid))
            .or_else(|| from_file().filter(|p| qemu::is_ours(*p, &r.def.uuid)))
    }
    /// The last lines of the console (read from the last 8 KiB of the log only).
    fn console_tail(&self) -> String {
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

impl Manager {
    /// Loads the VM records under the data directory and re-attaches to running QEMU processes.
    pub async fn open(s: Settings, templates: Vec<Template>) -> anyhow::Result<Arc<Self>> {
        let vm_dir = s.data_dir.join("vms");
        crate::private::dir(&vm_dir)?;
        let filter = crate::filter::Filter::load(&s.data_dir);
        let m = Arc::new(Self { s, templates: Mutex::new(templates), vms: Mutex::new(BTreeMap::new()), filter });
        for e in std::fs::read_dir(&vm_dir)?.flatten() {
            let paths = VmPaths::new(e.path());
            let rec: VmRecord = match std::fs::read(paths.record())
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
            {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!("skipping {}: unreadable VM record: {err}", e.path().display());
                    continue;
                }
            };
            // Directories and files an earlier version left readable by others are tightened.
            let _ = crate::private::dir(&paths.dir);
            for f in [paths.record(), paths.disk(), paths.saved_state(), paths.console_log(), paths.qemu_log()] {
                if f.exists() {
                    let _ = crate::private::restrict(&f);
                }
            }
            let name = rec.def.name.clone();
            let entry = Arc::new(Entry {
                paths,
                op: Default::default(),
                rec: Mutex::new(rec),
                usage: Mutex::new((VmUsage::default(), None)),
                outgoing: Mutex::new(None),
                cancel: Default::default(),
            });
            lock(&m.vms).insert(name, entry.clone());
            if let Err(err) = m.reattach(&entry).await {
                tracing::warn!("re-attaching {}: {err}", entry.snapshot().def.name);
            }
        }
        Ok(m)
    }

    /// Settles a VM found on disk at start-up.
    async fn reattach(self: &Arc<Self>, e: &Arc<Entry>) -> Result<(), ApiError> {
        // QEMU may have been started by an agent killed before it recorded the PID: the PID
        // file QEMU writes itself tells.
        if let Some(pid) = e.live_pid().filter(|p| e.snapshot().pid != Some(*p)) {
            e.update(|r| r.pid = Some(pid))?;
        }
        let r = e.snapshot();
        let alive = r.pid.is_some_and(|p| qemu::is_ours(p, &r.def.uuid));
        tracing::info!("found VM {} ({}, QEMU {})", r.def.name, r.state, if alive { "running" } else { "not running" });
        if r.state == VmState::Deleting {
            if let Some(p) = r.pid {
                qemu::kill(p, &r.def.uuid).await;
            }
            let _ = std::fs::remove_dir_all(&e.paths.dir);
            lock(&self.vms).remove(&r.def.name);
            return Ok(());
        }
        if !alive && matches!(r.migration, Some(migrate::Role::In { .. })) {
            // An arriving copy without its QEMU holds nothing worth keeping.
            tracing::info!("VM {}: incoming migration ended while the agent was away; removing the copy", r.def.name);
            let _ = std::fs::remove_dir_all(&e.paths.dir);
            lock(&self.vms).remove(&r.def.name);
            return Ok(());
        }
        if !alive {
            let saved = e.paths.saved_state().exists();
            let (state, error) = match r.state {
                VmState::Suspended | VmState::Resuming if saved => (VmState::Suspended, None),
                VmState::Inactive | VmState::Stopping => (VmState::Inactive, None),
                VmState::Error => (VmState::Error, r.error.clone()),
                VmState::Migrated => (VmState::Migrated, None),
                other if saved => {
                    (VmState::Suspended, Some(format!("agent restarted during {other}; saved state kept")))
                }
                _ => (
                    VmState::Inactive,
                    Some(
                        crate::watchdog::take_fenced_note(&e.paths.dir)
                            .unwrap_or_else(|| "QEMU was not running when the agent restarted".to_string()),
                    ),
                ),
            };
            e.update(|r| {
                r.state = state;
                r.error = error;
                r.pid = None;
            })?;
            return Ok(());
        }
        if r.state == VmState::Migrated {
            // Handed over; its stopped QEMU stays until the controller deletes this copy.
            return Ok(());
        }
        if let Some(role) = r.migration.clone().filter(|_| r.state == VmState::Migrating) {
            return self.reattach_migration(e, role).await;
        }
        let pid = r.pid.unwrap_or_default();
        let status = qmp::status(&e.paths.qmp()).await.map_err(internal)?;
        match (r.state, status.as_str()) {
            (VmState::Suspending, "postmigrate") | (VmState::Suspending, "paused") => {
                // The state may or may not have been fully written: write it again.
                let me = self.clone();
                let e2 = e.clone();
                tokio::spawn(async move {
                    let _g = e2.op.lock().await;
                    if let Err(err) = me.save_and_quit(&e2, pid).await {
                        let _ = e2.update(|r| {
                            r.state = VmState::Error;
                            r.error = Some(err.message.clone());
                        });
                    }
                });
            }
            (_, "running") => {
                e.update(|r| {
                    r.state = VmState::Running;
                    r.error = None;
                })?;
            }
            (_, "paused") | (_, "postmigrate") => {
                e.update(|r| r.state = VmState::Paused)?;
            }
            (_, "inmigrate") => {
                // Resume from a saved state was cut short: the saved file is intact, start over.
                qemu::kill(pid, &r.def.uuid).await;
                e.update(|r| {
                    r.state = VmState::Suspended;
                    r.pid = None;
                })?;
            }
            (_, other) => {
                tracing::warn!("VM {} QEMU in state {other}; stopping it", r.def.name);
                qemu::kill(pid, &r.def.uuid).await;
                e.update(|r| {
                    r.state = VmState::Inactive;
                    r.pid = None;
                })?;
            }
        }
        Ok(())
    }

    pub fn templates(&self) -> Vec<Template> {
        lock(&self.templates).clone()
    }

    pub fn set_templates(&self, t: Vec<Template>) {
        *lock(&self.templates) = t;
    }

    fn template(&self, name: &str) -> Result<Template, ApiError> {
        lock(&self.templates)
            .iter()
            .find(|t| t.info.name == name)
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("this host has no template {name:?}")))
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, ApiError> {
        lock(&self.vms)
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?} on this host")))
    }

    /// Status of every VM.
    pub fn list(&self) -> Vec<VmStatus> {
        lock(&self.vms).values().map(|e| e.status()).collect()
    }

    pub fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        Ok(self.entry(name)?.status())
    }

    /// vCPUs and memory held by VMs that have a process.
    pub fn allocated(&self) -> (u32, u64) {
        lock(&self.vms)
            .values()
            .map(|e| e.snapshot())
            .filter(|r| r.state.holds_resources())
            .fold((0, 0), |(v, m), r| (v + r.def.vcpus, m + r.def.memory_mib))
    }

    /// Adds a VM to the host's table in `state` (its record is written by the caller). The same
    /// VM again (same UUID, a retried request) is returned as it is; another VM of that name is
    /// a conflict.
    fn register(&self, def: &VmDefinition, state: VmState) -> Result<Registered, ApiError> {
        let mut vms = lock(&self.vms);
        if let Some(existing) = vms.get(&def.name) {
            let r = existing.snapshot();
            if r.def.uuid == def.uuid && r.state != VmState::Deleting {
                return Ok(Registered::Existing(existing.clone()));
            }
            return Err(ApiError::conflict(format!("a VM named {:?} already exists on this host", def.name)));
        }
        let rec = VmRecord { def: def.clone(), state, error: None, pid: None, boot_ms: None, migration: None };
        let e = Arc::new(Entry {
            paths: VmPaths::new(self.s.data_dir.join("vms").join(&def.name)),
            op: Default::default(),
            rec: Mutex::new(rec),
            usage: Mutex::new((VmUsage::default(), None)),
            outgoing: Mutex::new(None),
            cancel: Default::default(),
        });
        vms.insert(def.name.clone(), e.clone());
        Ok(Registered::New(e))
    }

    /// Defines a VM: writes its record and creates its overlay disk; starts it if asked.
    pub async fn create(self: &Arc<Self>, def: VmDefinition, start: bool) -> Result<VmStatus, ApiError> {
        corral_api::names::validate_name("VM", &def.name).map_err(ApiError::bad_request)?;
        let t = self.template(&def.template)?;
        let entry = match self.register(&def, VmState::Inactive)? {
            Registered::New(e) => e,
            Registered::Existing(e) => return Ok(e.status()),
        };
        let paths = entry.paths.clone();
        let guard = entry.op.lock().await;
        let made = async {
            crate::private::dir(&paths.dir).map_err(internal)?;
            entry.update(|_| {})?;
            if def.storage == corral_api::Storage::Shared {
                self.shared_disk(&def, &t.disk, &paths.disk()).await?;
            } else if !paths.disk().exists() {
                let tmp = paths.dir.join("disk.qcow2.partial");
                qemu::create_overlay(&t.disk, &tmp, def.disk_mib).await.map_err(ApiError::internal)?;
                crate::private::restrict(&tmp).map_err(internal)?;
                std::fs::rename(&tmp, paths.disk()).map_err(internal)?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(err) = made {
            let _ = std::fs::remove_dir_all(&paths.dir);
            lock(&self.vms).remove(&def.name);
            return Err(err);
        }
        drop(guard);
        if start {
            return self.action(&def.name, VmAction::Start).await;
        }
        Ok(entry.status())
    }

    /// A VM on shared storage: its overlay lives in the pool as `vms/<name>-<uuid>.qcow2`, on
    /// the pool's copy of its template (so its backing path is the same from every host), and
    /// the VM directory points at it. An overlay already there is the VM's disk as it was
    /// (a restart after its host failed): it is used as is. QEMU locks the file, so a second
    /// QEMU on it fails to start.
    async fn shared_disk(&self, def: &VmDefinition, template: &Path, link: &Path) -> Result<(), ApiError> {
        let Some(pool) = &self.s.shared_dir else {
            return Err(ApiError::bad_request(format!(
                "VM {:?} has its disk on shared storage but this host mounts none: start the agent with --shared-dir",
                def.name
            )));
        };
        let tpl_dir = pool.join("templates");
        let vm_dir = pool.join("vms");
        std::fs::create_dir_all(&tpl_dir).map_err(internal)?;
        std::fs::create_dir_all(&vm_dir).map_err(internal)?;
        let shared_tpl = tpl_dir.join(template.file_name().unwrap_or_default());
        if !shared_tpl.exists() {
            let tmp = tpl_dir.join(format!(".{}.{}", def.template, uuid::Uuid::new_v4().simple()));
            if std::fs::hard_link(template, &tmp).is_err() {
                std::fs::copy(template, &tmp).map_err(internal)?;
            }
            // Another host may have put it there meanwhile: the same bytes either way.
            std::fs::rename(&tmp, &shared_tpl).map_err(internal)?;
        }
        let disk = vm_dir.join(format!("{}-{}.qcow2", def.name, def.uuid));
        if !disk.exists() {
            let tmp = vm_dir.join(format!(".{}-{}.partial", def.name, def.uuid));
            qemu::create_overlay(&shared_tpl, &tmp, def.disk_mib).await.map_err(ApiError::internal)?;
            crate::private::restrict(&tmp).map_err(internal)?;
            std::fs::rename(&tmp, &disk).map_err(internal)?;
        } else {
            tracing::info!("VM {}: using its disk on shared storage as it was ({})", def.name, disk.display());
        }
        if std::fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(&disk, link).map_err(internal)?;
        }
        Ok(())
    }

    /// Takes the VM's operation lock. The monitor holds it only for an instant, so a short wait
    /// tells that apart from a lifecycle operation in progress, which is refused.
    async fn claim<'a>(e: &'a Entry, name: &str) -> Result<tokio::sync::MutexGuard<'a, ()>, ApiError> {
        tokio::time::timeout(Duration::from_secs(2), e.op.lock()).await.map_err(|_| {
            ApiError::conflict(format!(
                "VM {name:?} is busy ({}): wait for the current operation to finish",
                e.snapshot().state
            ))
        })
    }

    /// Applies a lifecycle action and returns when it has finished.
    pub async fn action(self: &Arc<Self>, name: &str, action: VmAction) -> Result<VmStatus, ApiError> {
        let e = self.entry(name)?;
        let _g = Self::claim(&e, name).await?;
        let state = e.snapshot().state;
        action.check(state).map_err(ApiError::conflict)?;
        let res = match action {
            VmAction::Start => self.start(&e, false).await,
            VmAction::Stop => self.stop(&e).await,
            VmAction::Pause => self.pause(&e).await,
            VmAction::Resume if state == VmState::Suspended => self.start(&e, true).await,
            VmAction::Resume => self.cont(&e).await,
            VmAction::Suspend => self.suspend(&e).await,
        };
        if let Err(err) = &res {
            let r = e.snapshot();
            let alive = r.pid.is_some_and(|p| qemu::is_ours(p, &r.def.uuid));
            let _ = e.update(|r| {
                r.error = Some(err.message.clone());
                if !alive {
                    r.pid = None;
                    r.state = if e.paths.saved_state().exists() { VmState::Suspended } else { VmState::Error };
                } else if r.state.has_process() && !matches!(r.state, VmState::Running | VmState::Paused) {
                    r.state = VmState::Error;
                }
            });
        }
        self.refresh_filter().await;
        res.map(|_| e.status())
    }

    /// Taps of the VMs running here on network `vni`.
    pub fn taps_on(&self, vni: u32) -> Vec<String> {
        lock(&self.vms)
            .values()
            .map(|e| e.snapshot())
            .filter(|r| r.pid.is_some() && r.def.network.is_some_and(|n| n.vni == vni))
            .map(|r| qemu::tap_name(&r.def))
            .collect()
    }

    /// Rewrites the guest filter for the NICs of the VMs that run here (a failure is logged:
    /// taps without rules stay closed, see [`crate::filter`]).
    pub async fn refresh_filter(&self) {
        if let Err(e) = self.install_filter().await {
            tracing::warn!("{e}");
        }
    }

    /// Installs the guest filter for the NICs of the VMs that run here now.
    async fn install_filter(&self) -> Result<(), crate::filter::FilterError> {
        if self.s.net.is_none() {
            return Ok(());
        }
        self.filter
            .apply(|| {
                lock(&self.vms)
                    .values()
                    .map(|e| e.snapshot())
                    .filter(|r| r.state.has_process() && r.def.network.is_some())
                    .filter_map(|r| {
                        let ip = r.def.ip?.addr();
                        Some(crate::filter::Nic { tap: qemu::tap_name(&r.def), mac: r.def.mac, ip })
                    })
                    .collect()
            })
            .await
    }

    /// The peers of overlay network `vni` changed (None: it is gone from this host): VXLAN
    /// traffic is accepted from them only.
    pub async fn set_network_peers(&self, vni: u32, peers: Option<Vec<std::net::Ipv4Addr>>) {
        self.filter.set_peers(vni, peers);
        self.refresh_filter().await;
    }

    /// Starts QEMU (fresh, or restoring the saved state) and waits for the guest to be up.
    async fn start(&self, e: &Entry, restore: bool) -> Result<(), ApiError> {
        let r = e.snapshot();
        let t = self.template(&r.def.template)?;
        e.update(|r| {
            r.state = if restore { VmState::Resuming } else { VmState::Starting };
            r.error = None;
        })?;
        if !restore {
            let _ = std::fs::remove_file(e.paths.console_log());
            let _ = std::fs::remove_file(e.paths.console_log().with_extension("log.1"));
        }
        let started = Instant::now();
        let pid = self.spawn_qemu(e, &t, restore).await?;
        // Fail closed: a VM whose filter cannot be installed does not run (its tap passes
        // nothing meanwhile).
        if let Err(err) = self.install_filter().await {
            qemu::kill(pid, &r.def.uuid).await;
            e.update(|r| r.pid = None)?;
            return Err(ApiError::internal(format!("{err}; the VM was not started")));
        }
        if restore {
            // The saved state goes to QEMU as an open file (QMP getfd), never as a path in a
            // shell command.
            let saved = std::fs::File::open(e.paths.saved_state()).map_err(internal)?;
            migrate_fd(&e.paths.qmp(), &saved, "migrate-incoming").await?;
            let deadline = Instant::now() + self.s.boot_timeout;
            loop {
                let st = qmp::status(&e.paths.qmp()).await.map_err(internal)?;
                match st.as_str() {
                    "inmigrate" if Instant::now() >= deadline => {
                        qemu::kill(pid, &r.def.uuid).await;
                        e.update(|r| r.pid = None)?;
                        return Err(ApiError::internal(format!(
                            "restoring the saved state took longer than {} s; the saved state is kept, try resume again",
                            self.s.boot_timeout.as_secs()
                        )));
                    }
                    "inmigrate" => tokio::time::sleep(Duration::from_millis(50)).await,
                    "running" => break,
                    "paused" | "postmigrate" | "prelaunch" => {
                        qmp::run(&e.paths.qmp(), "cont", None).await.map_err(internal)?;
                        break;
                    }
                    other => return Err(ApiError::internal(format!("restoring saved state failed: QEMU is {other}"))),
                }
            }
            let _ = std::fs::remove_file(e.paths.saved_state());
        }
        self.wait_ready(e, pid, started).await
    }

    /// Starts the VM's QEMU (`incoming`: waiting for a saved or migrated state), records its
    /// PID and puts its NIC on its network.
    async fn spawn_qemu(&self, e: &Entry, t: &Template, incoming: bool) -> Result<u32, ApiError> {
        let def = e.snapshot().def;
        let args = qemu::command_line(&def, t, &e.paths, self.s.accel, incoming);
        // QEMU appends to the console log; made here, it is 0600.
        crate::private::touch(&e.paths.console_log()).map_err(internal)?;
        guest::forget(&e.paths.guest());
        let pid = qemu::spawn(&self.s.qemu, &args, &e.paths).await.map_err(ApiError::internal)?;
        e.update(|r| r.pid = Some(pid))?;
        if let (Some(n), Some(net)) = (def.network, &self.s.net) {
            net.attach(&qemu::tap_name(&def), n.vni, n.mtu).await.map_err(|err| internal(err.to_string()))?;
        }
        Ok(pid)
    }

    async fn wait_ready(&self, e: &Entry, pid: u32, started: Instant) -> Result<(), ApiError> {
        let uuid = e.snapshot().def.uuid;
        let deadline = started + self.s.boot_timeout;
        loop {
            if !qemu::is_ours(pid, &uuid) {
                return Err(ApiError::internal(format!(
                    "QEMU exited before the guest was ready; console: {}",
                    e.console_tail()
                )));
            }
            if guest::ping(&e.paths.guest(), Duration::from_secs(1)).await.is_ok() {
                let ms = started.elapsed().as_millis() as u64;
                e.update(|r| {
                    r.state = VmState::Running;
                    r.boot_ms = Some(ms);
                })?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                qemu::kill(pid, &uuid).await;
                e.update(|r| r.pid = None)?;
                return Err(ApiError::internal(format!(
                    "the guest did not report ready within {} s; console: {}",
                    self.s.boot_timeout.as_secs(),
                    e.console_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Graceful stop: ACPI power button, then forced after the timeout. A suspended VM drops
    /// its saved memory.
    async fn stop(&self, e: &Entry) -> Result<(), ApiError> {
        let r = e.snapshot();
        e.update(|r| r.state = VmState::Stopping)?;
        if let Some(pid) = r.pid.filter(|p| qemu::is_ours(*p, &r.def.uuid)) {
            if r.state == VmState::Paused {
                let _ = qmp::run(&e.paths.qmp(), "cont", None).await;
            }
            let graceful = qmp::run(&e.paths.qmp(), "system_powerdown", None).await.is_ok()
                && qemu::wait_exit(pid, &r.def.uuid, self.s.stop_timeout).await;
            if !graceful {
                tracing::warn!("VM {} did not power off within {:?}; forcing", r.def.name, self.s.stop_timeout);
                let _ = qmp::run(&e.paths.qmp(), "quit", None).await;
                if !qemu::wait_exit(pid, &r.def.uuid, Duration::from_secs(5)).await {
                    qemu::kill(pid, &r.def.uuid).await;
                }
            }
        }
        let _ = std::fs::remove_file(e.paths.saved_state());
        e.update(|r| {
            r.state = VmState::Inactive;
            r.pid = None;
            r.error = None;
        })?;
        Ok(())
    }

    async fn pause(&self, e: &Entry) -> Result<(), ApiError> {
        e.update(|r| r.state = VmState::Pausing)?;
        qmp::run(&e.paths.qmp(), "stop", None).await.map_err(internal)?;
        e.update(|r| r.state = VmState::Paused)?;
        Ok(())
    }

    async fn cont(&self, e: &Entry) -> Result<(), ApiError> {
        qmp::run(&e.paths.qmp(), "cont", None).await.map_err(internal)?;
        e.update(|r| r.state = VmState::Running)?;
        Ok(())
    }

    /// Saves memory and device state to disk and ends the QEMU process.
    async fn suspend(&self, e: &Entry) -> Result<(), ApiError> {
        let pid = e.snapshot().pid.ok_or_else(|| ApiError::internal("no QEMU process"))?;
        e.update(|r| r.state = VmState::Suspending)?;
        self.save_and_quit(e, pid).await
    }

    async fn save_and_quit(&self, e: &Entry, pid: u32) -> Result<(), ApiError> {
        let q = e.paths.qmp();
        let uuid = e.snapshot().def.uuid;
        qmp::run(&q, "stop", None).await.map_err(internal)?;
        let tmp = e.paths.saved_state().with_extension("partial");
        // QEMU writes into a file the agent opened (0600) and hands over with QMP getfd: no
        // path goes through a shell.
        migrate_fd(&q, &crate::private::create(&tmp).map_err(internal)?, "migrate").await?;
        let deadline = Instant::now() + SAVE_TIMEOUT;
        loop {
            let st = qmp::run(&q, "query-migrate", None).await.map_err(internal)?;
            match st.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                _ if Instant::now() >= deadline => {
                    let _ = qmp::run(&q, "migrate_cancel", None).await;
                    let _ = qmp::run(&q, "cont", None).await;
                    let _ = std::fs::remove_file(&tmp);
                    e.update(|r| r.state = VmState::Running)?;
                    return Err(ApiError::internal(format!(
                        "saving the VM's memory took longer than {} s; it keeps running",
                        SAVE_TIMEOUT.as_secs()
                    )));
                }
                "failed" | "cancelled" => {
                    let why = st.get("error-desc").and_then(|s| s.as_str()).unwrap_or("unknown");
                    let _ = qmp::run(&q, "cont", None).await;
                    e.update(|r| r.state = VmState::Running)?;
                    return Err(ApiError::internal(format!("saving the VM's memory failed: {why}; it keeps running")));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(internal)?;
        std::fs::rename(&tmp, e.paths.saved_state()).map_err(internal)?;
        let _ = qmp::run(&q, "quit", None).await;
        if !qemu::wait_exit(pid, &uuid, Duration::from_secs(10)).await {
            qemu::kill(pid, &uuid).await;
        }
        e.update(|r| {
            r.state = VmState::Suspended;
            r.pid = None;
        })?;
        Ok(())
    }

    /// Deletes a VM: ends its process and removes its directory (disk, saved state, sockets).
    /// Deletes a VM from this host. Its disk on shared storage goes too, unless `keep_shared`
    /// (this host's copy is an orphan: the VM runs elsewhere on that disk).
    pub async fn delete(&self, name: &str, uuid: Option<uuid::Uuid>, keep_shared: bool) -> Result<(), ApiError> {
        let e = self.entry(name)?;
        if uuid.is_some_and(|u| u != e.snapshot().def.uuid) {
            return Err(ApiError::conflict(format!("VM {name:?} on this host is another VM than the one to delete")));
        }
        let _g = Self::claim(&e, name).await?;
        let r = e.update(|r| r.state = VmState::Deleting)?;
        if let Some(pid) = e.live_pid() {
            qemu::kill(pid, &r.def.uuid).await;
        }
        if r.def.storage == corral_api::Storage::Shared && !keep_shared {
            if let Ok(target) = std::fs::read_link(e.paths.disk()) {
                let _ = std::fs::remove_file(target);
            }
        }
        std::fs::remove_dir_all(&e.paths.dir)
            .map_err(|err| internal(format!("cannot remove {}: {err}", e.paths.dir.display())))?;
        lock(&self.vms).remove(name);
        self.refresh_filter().await;
        Ok(())
    }

    /// The file of a VM that another host may fetch (`disk` or `state`): only while no QEMU
    /// process uses it.
    pub fn file(&self, name: &str, part: &str) -> Result<PathBuf, ApiError> {
        let e = self.entry(name)?;
        let state = e.snapshot().state;
        if !matches!(state, VmState::Suspended | VmState::Inactive) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is {state}: its files can be copied only while it is suspended or inactive"
            )));
        }
        let p = match part {
            "disk" => e.paths.disk(),
            "state" => e.paths.saved_state(),
            _ => return Err(ApiError::not_found(format!("no VM file {part:?}: use disk or state"))),
        };
        if !p.exists() {
            return Err(ApiError::not_found(format!("VM {name:?} has no {part} file")));
        }
        Ok(p)
    }

    /// Takes over a VM from another host: fetches its disk (and saved memory, if suspended)
    /// from `source` (that host's agent), points the disk at this host's copy of the template
    /// and records it here. The VM keeps its identity.
    pub async fn import(
        &self,
        def: VmDefinition,
        source: &str,
        http: &reqwest::Client,
        token: Option<&str>,
    ) -> Result<VmStatus, ApiError> {
        let t = self.template(&def.template)?;
        let entry = match self.register(&def, VmState::Resuming)? {
            Registered::New(e) => e,
            Registered::Existing(e) => return Ok(e.status()),
        };
        let paths = entry.paths.clone();
        let _g = entry.op.lock().await;
        let base = format!("{}/v1/vms/{}/files", source.trim_end_matches('/'), def.name);
        let fetched = async {
            crate::private::dir(&paths.dir).map_err(internal)?;
            entry.update(|_| {})?;
            crate::fetch::download(http, &format!("{base}/disk"), token, &paths.disk())
                .await
                .map_err(ApiError::unavailable)?;
            let has_state =
                match crate::fetch::download(http, &format!("{base}/state"), token, &paths.saved_state()).await {
                    Ok(_) => true,
                    Err(e) if e.contains("404") => false,
                    Err(e) => return Err(ApiError::unavailable(e)),
                };
            qemu::rebase(&paths.disk(), &t.disk).await.map_err(ApiError::internal)?;
            crate::private::restrict(&paths.disk()).map_err(internal)?;
            if has_state {
                crate::private::restrict(&paths.saved_state()).map_err(internal)?;
            }
            entry.update(|r| r.state = if has_state { VmState::Suspended } else { VmState::Inactive })?;
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(err) = fetched {
            let _ = std::fs::remove_dir_all(&paths.dir);
            lock(&self.vms).remove(&def.name);
            return Err(err);
        }
        tracing::info!("VM {} imported from {source}", def.name);
        Ok(entry.status())
    }

    /// Runs a command in a running guest.
    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        let e = self.entry(name)?;
        let state = e.snapshot().state;
        // A VM being migrated out runs here until the switch-over.
        if !matches!(state, VmState::Running | VmState::Migrating) {
            return Err(ApiError::conflict(format!("cannot exec in VM {name:?}: it is {state}, not running")));
        }
        if req.argv.is_empty() {
            return Err(ApiError::bad_request("exec needs a command: corral vm exec NAME -- COMMAND [ARGS...]"));
        }
        guest::exec(&e.paths.guest(), &req.argv, req.stdin.as_deref(), req.timeout_ms)
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))
    }

    /// Reads the serial console log from `offset` (at most 64 KiB).
    pub fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        use std::io::{Read, Seek, SeekFrom};
        let e = self.entry(name)?;
        let mut data = Vec::new();
        if let Ok(mut f) = std::fs::File::open(e.paths.console_log()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let offset = offset.min(len);
            f.seek(SeekFrom::Start(offset)).map_err(internal)?;
            f.take(64 * 1024).read_to_end(&mut data).map_err(internal)?;
            let next = offset + data.len() as u64;
            return Ok(ConsoleChunk { offset, next, data: String::from_utf8_lossy(&data).into_owned() });
        }
        Ok(ConsoleChunk { offset: 0, next: 0, data: String::new() })
    }

    /// Stops the VMs `which` selects at once (SIGKILL to every one, as a power cut would, then
    /// a wait for all): the host is isolated, or was declared failed and these VMs run
    /// elsewhere now. Does not wait for operations in flight; they find their QEMU gone.
    pub async fn fence(&self, which: impl Fn(&VmRecord) -> bool, why: &str) -> usize {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        let victims: Vec<(Arc<Entry>, u32, uuid::Uuid)> = entries
            .into_iter()
            .filter(|e| which(&e.snapshot()))
            .filter_map(|e| {
                let pid = e.live_pid()?;
                let uuid = e.snapshot().def.uuid;
                Some((e, pid, uuid))
            })
            .collect();
        if victims.is_empty() {
            return 0;
        }
        qemu::kill_all(&victims.iter().map(|(_, pid, uuid)| (*pid, *uuid)).collect::<Vec<_>>()).await;
        for (e, pid, _) in &victims {
            tracing::warn!("VM {} (QEMU {pid}): {why}", e.snapshot().def.name);
            let _ = e.update(|r| {
                r.state = VmState::Inactive;
                r.pid = None;
                r.error = Some(why.to_string());
            });
        }
        self.refresh_filter().await;
        victims.len()
    }

    /// One pass of the monitor: notices QEMU processes that ended on their own and samples usage.
    pub async fn monitor_once(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        let mut ended = false;
        let hz = hostinfo::clock_ticks() as f64;
        for e in entries {
            let r = {
                let Ok(_g) = e.op.try_lock() else { continue };
                let r = e.snapshot();
                if let Some(pid) = r.pid.filter(|p| !qemu::is_ours(*p, &r.def.uuid)) {
                    let said = std::fs::read_to_string(e.paths.qemu_log()).unwrap_or_default();
                    let said = said.lines().last().map(|l| format!(": {l}")).unwrap_or_default();
                    // The watchdog may have fenced it: then that is the reason, not a crash.
                    let why = crate::watchdog::take_fenced_note(&e.paths.dir)
                        .unwrap_or_else(|| format!("QEMU exited: the guest powered off or crashed{said}"));
                    tracing::info!("VM {}: QEMU process {pid} ended: {why}", r.def.name);
                    let _ = e.update(|r| {
                        r.state = VmState::Inactive;
                        r.pid = None;
                        r.error = Some(why);
                    });
                    ended = true;
                    continue;
                }
                r
            };
            let Some(pid) = r.pid else {
                lock(&e.usage).0 = VmUsage { disk_bytes: qemu::allocated_bytes(&e.paths.disk()), ..Default::default() };
                continue;
            };
            let mut u = VmUsage { disk_bytes: qemu::allocated_bytes(&e.paths.disk()), ..Default::default() };
            if let Some((ticks, rss_kib)) = hostinfo::proc_stat(pid) {
                u.rss_mib = rss_kib / 1024;
                let mark = CpuMark { ticks, wanted_ns: hostinfo::wanted_cpu_ns(pid), at: Instant::now() };
                let prev = lock(&e.usage).1;
                if let Some(p) = prev {
                    let dt = mark.at.duration_since(p.at).as_secs_f64();
                    if dt > 0.0 {
                        u.cpu_pct = 100.0 * (ticks.saturating_sub(p.ticks) as f64 / hz) / dt;
                        u.cpu_demand_pct = match (mark.wanted_ns, p.wanted_ns) {
                            (Some(w1), Some(w0)) => (100.0 * w1.saturating_sub(w0) as f64 / 1e9 / dt).max(u.cpu_pct),
                            _ => u.cpu_pct,
                        };
                    }
                }
                lock(&e.usage).1 = Some(mark);
            }
            if r.state == VmState::Running {
                u.guest_mem_used_mib = guest::mem_used_mib(&e.paths.guest()).await;
            }
            lock(&e.usage).0 = u;
            if let Err(err) = rotate_console(&e.paths.console_log(), CONSOLE_MAX) {
                tracing::warn!("VM {}: cannot rotate its console log: {err}", r.def.name);
            }
        }
        if ended {
            self.refresh_filter().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_log_that_grows_is_rotated_and_stays_bounded() {
        use std::io::Write;
        let d = tempfile::tempdir().expect("temporary directory");
        let log = d.path().join("console.log");
        // A writer that appends, as QEMU does, and keeps its file open across rotations.
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open");
        for round in 0..20 {
            w.write_all(&vec![b'a' + (round % 26) as u8; 300 * 1024]).expect("write");
            rotate_console(&log, 1 << 20).expect("rotate");
            let len = std::fs::metadata(&log).expect("log").len();
            assert!(len <= 1 << 20, "the log stays bounded: {len} bytes after round {round}");
        }
        let kept = std::fs::metadata(d.path().join("console.log.1")).expect("rotated copy").len();
        assert!(kept <= (1 << 20) + 300 * 1024, "one rotated copy, bounded too: {kept}");
        // Appends go on at the (new) end, not at the old offset.
        w.write_all(b"after").expect("write");
        let now = std::fs::read(&log).expect("read");
        assert!(now.ends_with(b"after") && now.len() <= 1 << 20);
    }
}
