//! The lifecycle actions of a VM (start, stop, pause, resume, suspend), one at a time per VM,
//! and fencing: stopping many VMs at once, as a power cut would.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use corral_api::agent::VmStatus;
use corral_api::{ApiError, VmAction, VmState};

use super::{internal, lock, Entry, Manager, VmRecord};
use crate::qmp::{self, MigrationStatus, Monitor, RunState};
use crate::templates::Template;
use crate::{boot, qemu, seed};
use corral_api::image::GuestAgentKind;

/// The name under which a VM's saved-state file is handed to QEMU (`getfd`, then `fd:NAME`).
const STATE_FD: &str = "corral-state";

/// Hands `file` to the QEMU behind the QMP socket `qmp` (`getfd`) and runs `command`
/// (`migrate` or `migrate-incoming`) on it as `fd:NAME`: the saved state moves through an
/// open file, never a path in a shell command.
async fn migrate_fd(qmp: &Path, file: &std::fs::File, command: &str) -> Result<(), ApiError> {
    let mut c = qmp::QmpClient::connect(qmp).await.map_err(internal)?;
    if command == "migrate" {
        // A live migration (in or out) leaves its settings in QEMU: postcopy wants a return
        // path, which a file opened for writing cannot give ("Bad file descriptor"), and
        // pause-before-switchover would hold the save forever. A save takes QEMU's defaults.
        let off: Vec<_> = ["postcopy-ram", "pause-before-switchover", "xbzrle", "auto-converge"]
            .iter()
            .map(|cap| json!({"capability": cap, "state": false}))
            .collect();
        c.execute("migrate-set-capabilities", Some(json!({ "capabilities": off }))).await.map_err(internal)?;
        c.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": DEFAULT_MAX_BANDWIDTH })))
            .await
            .map_err(internal)?;
    }
    c.send_fd(STATE_FD, std::os::fd::AsFd::as_fd(file)).await.map_err(internal)?;
    c.execute(command, Some(json!({ "uri": format!("fd:{STATE_FD}") }))).await.map_err(internal)?;
    Ok(())
}

/// QEMU's own migration bandwidth limit (128 MiB/s), which a save goes back to whatever a
/// live migration set.
const DEFAULT_MAX_BANDWIDTH: u64 = 128 << 20;

/// How long saving a VM's memory to disk (suspend) may take before it is called off.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

impl Manager {
    /// Takes the VM's operation lock. The monitor holds it only for an instant, so a short wait
    /// tells that apart from a lifecycle operation in progress, which is refused.
    pub(super) async fn claim<'a>(e: &'a Entry, name: &str) -> Result<tokio::sync::MutexGuard<'a, ()>, ApiError> {
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

    /// Starts QEMU (fresh, or restoring the saved state) and waits for the guest to be up.
    async fn start(&self, e: &Entry, restore: bool) -> Result<(), ApiError> {
        let r = e.snapshot();
        let t = self.template(&r.def.template)?;
        e.update(|r| {
            r.state = if restore { VmState::Resuming } else { VmState::Starting };
            r.error = None;
            r.ended = None;
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
                match st {
                    RunState::Inmigrate if Instant::now() >= deadline => {
                        qemu::kill(pid, &r.def.uuid).await;
                        e.update(|r| r.pid = None)?;
                        return Err(ApiError::internal(format!(
                            "restoring the saved state took longer than {} s; the saved state is kept, try resume again",
                            self.s.boot_timeout.as_secs()
                        )));
                    }
                    RunState::Inmigrate => tokio::time::sleep(Duration::from_millis(50)).await,
                    RunState::Running => break,
                    RunState::Paused | RunState::Postmigrate | RunState::Prelaunch => {
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
    /// PID and puts its NIC on its network. A firmware-booted VM gets its cloud-init seed
    /// first (made anew each time from its definition: the same identity wherever it starts).
    pub(super) async fn spawn_qemu(&self, e: &Entry, t: &Template, incoming: bool) -> Result<u32, ApiError> {
        let def = e.snapshot().def;
        let plan = boot::plan(&def, t, &e.paths).map_err(|err| ApiError::bad_request(err.to_string()))?;
        if plan.firmware() {
            seed::write(&def, &e.paths.seed()).await.map_err(internal)?;
        }
        let agent = t.meta.guest_agent;
        e.update(|r| r.guest_agent = agent)?;
        let args = qemu::command_line(&def, &plan, agent, &e.paths, self.s.accel, incoming);
        // QEMU appends to the console log; made here, it is 0600.
        crate::private::touch(&e.paths.console_log()).map_err(internal)?;
        e.guest().forget();
        let pid = qemu::spawn(&self.s.qemu, &args, &e.paths).await.map_err(ApiError::internal)?;
        e.update(|r| r.pid = Some(pid))?;
        if let (Some(n), Some(net)) = (def.network, &self.s.net) {
            net.attach(&qemu::tap_name(&def), n.vni, n.mtu).await.map_err(|err| internal(err.to_string()))?;
        }
        Ok(pid)
    }

    /// Waits for the guest to be up: its agent answers. Corral's own agent must answer within
    /// the boot timeout or the VM is stopped (that guest is broken); a cloud image's agent may
    /// be late or missing, so the VM then counts as running and its record says so. An image
    /// without an agent is up when QEMU runs.
    async fn wait_ready(&self, e: &Entry, pid: u32, started: Instant) -> Result<(), ApiError> {
        let uuid = e.snapshot().def.uuid;
        let guest = e.guest();
        let deadline = started + self.s.boot_timeout;
        let running = |note: Option<String>| {
            let ms = started.elapsed().as_millis() as u64;
            e.update(|r| {
                r.state = VmState::Running;
                r.boot_ms = Some(ms);
                r.error = note;
            })
            .map(|_| ())
        };
        if guest.kind == GuestAgentKind::None {
            return running(Some("no guest agent in this image: running means QEMU runs".into()));
        }
        loop {
            if !qemu::is_ours(pid, &uuid) {
                return Err(ApiError::internal(format!(
                    "QEMU exited before the guest was ready; console: {}",
                    e.console_tail()
                )));
            }
            if guest.ping(Duration::from_secs(1)).await.is_ok() {
                return running(None);
            }
            if Instant::now() >= deadline && guest.kind == GuestAgentKind::Qemu {
                return running(Some(format!(
                    "the guest agent did not answer within {} s: the VM runs, but exec and guest facts wait for it",
                    self.s.boot_timeout.as_secs()
                )));
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
            // The guest agent's shutdown first (it works where ACPI is ignored), else the power
            // button.
            let asked = e.guest().shutdown().await || qmp::run(&e.paths.qmp(), "system_powerdown", None).await.is_ok();
            let graceful = asked && qemu::wait_exit(pid, &r.def.uuid, self.s.stop_timeout).await;
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

    pub(super) async fn save_and_quit(&self, e: &Entry, pid: u32) -> Result<(), ApiError> {
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
            match MigrationStatus::of(&st) {
                MigrationStatus::Completed => break,
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
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
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
                r.ended = Some(corral_api::agent::Ended::Fenced);
            });
        }
        self.refresh_filter().await;
        victims.len()
    }
}
