//! Growing a VM's root disk: online through QMP `block_resize` while its QEMU runs (the
//! guest sees the new size at once), or with `qemu-img resize` while it is stopped. The new
//! size is kept in the VM's definition, so a fresh disk made for it later (a restart
//! elsewhere) has it too.

use std::path::Path;

use serde_json::json;

use corral_api::agent::VmStatus;
use corral_api::{ApiError, ResizeDisk, VmState};

use super::{internal, Manager};
use crate::qemu::DISK_ID;
use crate::qmp;

/// The virtual size of a qcow2 file, MiB (read even while QEMU holds it).
async fn virtual_mib(disk: &Path) -> Result<u64, ApiError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(disk)
        .output()
        .await
        .map_err(|e| internal(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(internal(format!("qemu-img info: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(internal)?;
    let bytes = v["virtual-size"].as_u64().ok_or_else(|| internal("qemu-img info gave no virtual size"))?;
    Ok(bytes.div_ceil(1 << 20))
}

impl Manager {
    /// Grows the VM's root disk as asked.
    pub async fn resize_disk(&self, name: &str, req: &ResizeDisk) -> Result<VmStatus, ApiError> {
        let e = self.entry(name)?;
        let _g = Self::claim(&e, name).await?;
        let r = e.snapshot();
        let disk = e.paths.disk();
        let current = virtual_mib(&disk).await?;
        let new = req.target(current).map_err(ApiError::bad_request)?;
        if new > current {
            let bytes = new << 20;
            match r.state {
                VmState::Running | VmState::Paused => {
                    qmp::run(&e.paths.qmp(), "block_resize", Some(json!({"device": DISK_ID, "size": bytes})))
                        .await
                        .map_err(|err| internal(format!("growing the disk online failed: {err}")))?;
                }
                VmState::Inactive | VmState::Error => {
                    let out = tokio::process::Command::new("qemu-img")
                        .args(["resize", "-q", "-f", "qcow2"])
                        .arg(&disk)
                        .arg(bytes.to_string())
                        .output()
                        .await
                        .map_err(|err| internal(format!("cannot run qemu-img: {err}")))?;
                    if !out.status.success() {
                        return Err(internal(format!(
                            "qemu-img resize: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        )));
                    }
                }
                s => {
                    return Err(ApiError::conflict(format!(
                        "VM {name:?} is {s}: grow its disk while it runs or is stopped"
                    )))
                }
            }
        }
        e.update(|r| r.def.disk_mib = Some(new))?;
        Ok(e.status())
    }
}
