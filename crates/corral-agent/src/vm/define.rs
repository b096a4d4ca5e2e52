//! Defining a VM (its directory, record and copy-on-write disk, local or on shared storage)
//! and deleting it again.

use std::path::Path;
use std::sync::Arc;

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::{ApiError, VmAction, VmState};

use super::{internal, lock, Manager, Registered};
use crate::qemu;

impl Manager {
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
}
