//! Live migration, both ends, driven over QMP.
//!
//! The destination ([`Manager::incoming`]) makes an empty overlay on its own copy of the
//! template, starts QEMU waiting for an incoming migration, exports the disk over NBD and
//! listens for the memory stream, both on the underlay address. The source
//! ([`Manager::outgoing`]) mirrors the overlay's own data (`sync=top`: never the template)
//! into that export, then migrates memory with `pause-before-switchover`, so that at the
//! switch-over, with the guest stopped, it completes the mirror, checks that the destination
//! agent still answers, and only then lets QEMU hand over. The convergence policy
//! ([`corral_sched::converge`]) watches every round. Until the hand-over the VM runs at the
//! source and a failure or cancel leaves it there; after it, it runs at the destination.
//!
//! The role of each copy is written in its record before acting, so an agent restarted
//! mid-migration settles it: an outgoing pre-copy is cancelled (the VM keeps running here), an
//! outgoing post-copy is left to finish, a completed one is marked `migrated`, and an incoming
//! copy whose QEMU is gone is removed.
//!
//! This file holds what both ends share and that settling; [`incoming`] is the destination's
//! part and [`outgoing`] the source's.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use corral_api::migration::{MigrationFigures, MigrationPhase, MigrationState, OutgoingStatus};
use corral_api::{ApiError, VmState};

use super::{internal, lock, Entry, Manager};
use crate::qmp::{MigrationStatus, QmpClient};

/// This copy's part in a live migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "role")]
pub enum Role {
    /// The VM runs here and is being sent away; `last` holds the outcome once it ended.
    Out {
        id: String,
        #[serde(default)]
        last: Option<Box<OutgoingStatus>>,
    },
    /// The VM is being received here.
    In { id: String },
}

/// How often the source looks at QEMU's figures.
const TICK: Duration = Duration::from_millis(100);

fn job_id(id: &str) -> String {
    format!("mig-{id}")
}

/// A free TCP port on `ip` (the kernel picks one; QEMU binds it right after).
fn free_port(ip: std::net::Ipv4Addr) -> Result<u16, ApiError> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| internal(format!("no free port on {ip}: {e}")))?;
    Ok(l.local_addr().map_err(internal)?.port())
}

fn caps(list: &[(&str, bool)]) -> Value {
    Value::Array(list.iter().map(|(c, on)| json!({"capability": c, "state": on})).collect())
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)).unwrap_or(0)
}
mod incoming;
mod outgoing;

use outgoing::back_to_running;

impl Manager {
    /// Settles an outgoing or incoming copy found at start-up with its QEMU alive.
    pub(super) async fn reattach_migration(self: &Arc<Self>, e: &Arc<Entry>, role: Role) -> Result<(), ApiError> {
        let r = e.snapshot();
        if let Role::In { .. } = role {
            // The controller finishes or removes it.
            e.update(|r| r.state = VmState::Migrating)?;
            return Ok(());
        }
        let Role::Out { id, last } = role else { return Ok(()) };
        if last.is_some() {
            e.update(|r| r.state = VmState::Running)?;
            return Ok(());
        }
        let m = crate::qmp::run(&e.paths.qmp(), "query-migrate", None).await.map_err(internal)?;
        let status = MigrationStatus::of(&m);
        let figures = |phase: MigrationPhase, error: Option<String>| MigrationFigures {
            phase,
            rounds: u(&m, &["ram", "dirty-sync-count"]),
            bytes: u(&m, &["ram", "transferred"]),
            memory_bytes: u(&m, &["ram", "total"]),
            total_ms: u(&m, &["total-time"]),
            downtime_ms: m["downtime"].as_u64(),
            error,
            ..Default::default()
        };
        match status {
            MigrationStatus::Completed => {
                self.conclude(e, &id, Ok(figures(MigrationPhase::Completed, None))).await;
            }
            s if s.is_postcopy() => {
                // The guest runs at the destination and pulls pages from this QEMU: let it finish.
                let me = self.clone();
                let e2 = e.clone();
                e.update(|r| r.state = VmState::Migrating)?;
                tokio::spawn(async move {
                    let _g = e2.op.lock().await;
                    let res = loop {
                        let m = crate::qmp::run(&e2.paths.qmp(), "query-migrate", None).await;
                        match m.as_ref().ok().map(MigrationStatus::of) {
                            Some(MigrationStatus::Completed) => {
                                break Ok(MigrationFigures { phase: MigrationPhase::Completed, ..Default::default() })
                            }
                            Some(s) if s.is_postcopy() => tokio::time::sleep(TICK).await,
                            other => {
                                break Err((
                                    MigrationState::Failed,
                                    MigrationFigures {
                                        error: Some(format!("post-copy ended as {other:?}")),
                                        ..Default::default()
                                    },
                                ))
                            }
                        }
                    };
                    me.conclude(&e2, &id, res).await;
                });
            }
            _ => {
                // Pre-copy or switch-over cut short by the restart: stay here.
                let mut q = QmpClient::connect(&e.paths.qmp()).await.map_err(internal)?;
                back_to_running(&mut q, &job_id(&id)).await;
                let why = "the source agent restarted during the migration; cancelled, the VM keeps running here";
                self.conclude(e, &id, Err((MigrationState::Failed, figures(MigrationPhase::Failed, Some(why.into())))))
                    .await;
                tracing::info!("VM {}: migration {id} cancelled after restart", r.def.name);
            }
        }
        Ok(())
    }
}
