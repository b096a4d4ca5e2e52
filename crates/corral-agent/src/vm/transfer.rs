//! Moving a stopped VM between hosts: the files another host may fetch (export), and taking a
//! VM over from another host (import).

use std::path::PathBuf;

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::{ApiError, VmState};

use super::{internal, lock, Manager, Registered};
use crate::qemu;

impl Manager {
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
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            let has_state =
                match crate::fetch::download(http, &format!("{base}/state"), token, &paths.saved_state()).await {
                    Ok(_) => true,
                    Err(crate::fetch::FetchError::NotFound(_)) => false,
                    Err(e) => return Err(ApiError::unavailable(e.to_string())),
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
}
