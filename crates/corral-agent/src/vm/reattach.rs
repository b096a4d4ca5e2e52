//! Start-up: loading the VM records under the data directory and settling each VM found,
//! re-attaching to QEMU processes that still run and finishing transitions cut short.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use corral_api::{ApiError, VmState, VmUsage};

use super::{internal, lock, migrate, Entry, Manager, Settings, VmRecord};
use crate::qemu::{self, VmPaths};
use crate::qmp::{self, RunState};
use crate::templates::Template;

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
                facts_at: Default::default(),
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
            let mut fenced = false;
            let (state, error) = match r.state {
                VmState::Suspended | VmState::Resuming if saved => (VmState::Suspended, None),
                VmState::Inactive | VmState::Stopping => (VmState::Inactive, None),
                VmState::Error => (VmState::Error, r.error.clone()),
                VmState::Migrated => (VmState::Migrated, None),
                other if saved => {
                    (VmState::Suspended, Some(format!("agent restarted during {other}; saved state kept")))
                }
                _ => match crate::watchdog::take_fenced_note(&e.paths.dir) {
                    Some(note) => {
                        fenced = true;
                        (VmState::Inactive, Some(note))
                    }
                    None => (VmState::Inactive, Some("QEMU was not running when the agent restarted".to_string())),
                },
            };
            e.update(|r| {
                r.state = state;
                r.error = error;
                r.pid = None;
                if fenced {
                    r.ended = Some(corral_api::agent::Ended::Fenced);
                }
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
        match (r.state, status) {
            (VmState::Suspending, RunState::Postmigrate) | (VmState::Suspending, RunState::Paused) => {
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
            (_, RunState::Running) => {
                e.update(|r| {
                    r.state = VmState::Running;
                    r.error = None;
                    r.ended = None;
                })?;
            }
            (_, RunState::Paused) | (_, RunState::Postmigrate) => {
                e.update(|r| r.state = VmState::Paused)?;
            }
            (_, RunState::Inmigrate) => {
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
}
