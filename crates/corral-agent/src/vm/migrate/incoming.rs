//! The destination of a live migration: the copy waiting for the VM (disk, QEMU listening,
//! NBD export), its switch-over and its take-over once the VM has arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use corral_api::agent::VmStatus;
use corral_api::migration::{Incoming, IncomingReady};
use corral_api::{ApiError, VmState};

use super::{caps, free_port, Role};
use crate::qemu::{self, DISK_ID};
use crate::qmp::{Monitor, QmpClient, RunState};
use crate::vm::{internal, lock, Manager, Registered};

impl Manager {
    /// Prepares to receive a VM: disk, QEMU waiting for the migration, NBD export. Answers
    /// where the source is to send.
    pub async fn incoming(
        self: &Arc<Self>,
        req: Incoming,
        listen: std::net::Ipv4Addr,
    ) -> Result<IncomingReady, ApiError> {
        let def = req.def.clone();
        corral_api::names::validate_name("VM", &def.name).map_err(ApiError::bad_request)?;
        let t = self.template(&def.template)?;
        let e = match self.register(&def, VmState::Migrating)? {
            Registered::New(e) => e,
            Registered::Existing(_) => {
                return Err(ApiError::conflict(format!(
                    "VM {:?} is already on this host: it cannot be migrated here",
                    def.name
                )))
            }
        };
        let _g = e.op.lock().await;
        let made = async {
            crate::private::dir(&e.paths.dir).map_err(internal)?;
            e.update(|r| r.migration = Some(Role::In { id: req.id.clone() }))?;
            let tmp = e.paths.dir.join("disk.qcow2.partial");
            qemu::create_overlay(&t.disk, &tmp, def.disk_mib).await.map_err(ApiError::internal)?;
            crate::private::restrict(&tmp).map_err(internal)?;
            std::fs::rename(&tmp, e.paths.disk()).map_err(internal)?;
            self.spawn_qemu(&e, &t, true).await?;
            let mut q = QmpClient::connect(&e.paths.qmp()).await.map_err(internal)?;
            let nbd_port = free_port(listen)?;
            q.execute(
                "nbd-server-start",
                Some(json!({"addr": {"type": "inet", "data": {"host": listen.to_string(), "port": nbd_port.to_string()}}})),
            )
            .await
            .map_err(internal)?;
            q.execute("nbd-server-add", Some(json!({"device": DISK_ID, "writable": true}))).await.map_err(internal)?;
            q.execute("migrate-set-capabilities", Some(json!({"capabilities": caps(&[("postcopy-ram", req.postcopy)])})))
                .await
                .map_err(internal)?;
            let mig_port = free_port(listen)?;
            q.execute("migrate-incoming", Some(json!({"uri": format!("tcp:{listen}:{mig_port}")})))
                .await
                .map_err(internal)?;
            Ok::<_, ApiError>(IncomingReady {
                nbd: std::net::SocketAddrV4::new(listen, nbd_port),
                migration: std::net::SocketAddrV4::new(listen, mig_port),
            })
        }
        .await;
        match made {
            Ok(ready) => {
                drop(_g);
                self.refresh_filter().await;
                tracing::info!("VM {} will arrive here (migration {})", def.name, req.id);
                Ok(ready)
            }
            Err(err) => {
                if let Some(pid) = e.snapshot().pid {
                    qemu::kill(pid, &def.uuid).await;
                }
                let _ = std::fs::remove_dir_all(&e.paths.dir);
                lock(&self.vms).remove(&def.name);
                Err(err)
            }
        }
    }

    /// Takes over a VM that has arrived: its QEMU runs here now. Ends the NBD export and
    /// makes the copy an ordinary running VM.
    pub async fn finish_incoming(self: &Arc<Self>, name: &str) -> Result<VmStatus, ApiError> {
        let e = self.entry(name)?;
        let r = e.snapshot();
        if r.state == VmState::Running && r.migration.is_none() {
            return Ok(e.status());
        }
        if !matches!(r.migration, Some(Role::In { .. })) {
            return Err(ApiError::conflict(format!("VM {name:?} is not arriving here by migration")));
        }
        let _g = Manager::claim(&e, name).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = crate::qmp::status(&e.paths.qmp()).await.map_err(internal)?;
            match st {
                RunState::Running => break,
                RunState::Paused | RunState::Postmigrate => {
                    crate::qmp::run(&e.paths.qmp(), "cont", None).await.map_err(internal)?;
                    break;
                }
                _ if Instant::now() >= deadline => {
                    return Err(ApiError::internal(format!("the arrived VM does not run: QEMU is {st}")))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = crate::qmp::run(&e.paths.qmp(), "nbd-server-stop", None).await;
        e.update(|r| {
            r.state = VmState::Running;
            r.migration = None;
            r.error = None;
            r.ended = None;
        })?;
        drop(_g);
        self.refresh_filter().await;
        tracing::info!("VM {name} arrived and runs here");
        Ok(e.status())
    }

    /// At the switch-over, with the guest stopped at the source and the disk mirror complete:
    /// confirms this host still expects the VM and ends the NBD export, so that the arriving
    /// QEMU gets its disk to itself when it starts.
    pub async fn switchover_incoming(&self, name: &str, uuid: uuid::Uuid) -> Result<VmStatus, ApiError> {
        let e = self.entry(name)?;
        let r = e.snapshot();
        if r.def.uuid != uuid || r.state != VmState::Migrating || !matches!(r.migration, Some(Role::In { .. })) {
            return Err(ApiError::conflict(format!("VM {name:?} is not arriving here ({})", r.state)));
        }
        crate::qmp::run(&e.paths.qmp(), "nbd-server-stop", None).await.map_err(internal)?;
        Ok(e.status())
    }
}
