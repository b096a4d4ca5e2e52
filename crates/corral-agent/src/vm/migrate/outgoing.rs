//! The source of a live migration: mirror the disk, send the memory under the convergence
//! policy, switch over only when the destination still answers, and roll back otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use corral_api::agent::VmStatus;
use corral_api::migration::{
    MigrationFigures, MigrationMode, MigrationPhase, MigrationState, Outgoing, OutgoingStatus, AUTO_DOWNTIME_MS,
};
use corral_api::{ApiError, VmState};
use corral_sched::converge::{Convergence, Decision, Mode, Sample};

use super::{internal, lock, Entry, Manager};
use crate::qemu::{self, DISK_ID};
use crate::qmp::{MigrationStatus, Monitor, QmpClient, RunState};

use super::{caps, job_id, u, Role, TICK};

impl Manager {
    /// After a completed pre-copy whose destination copy did not survive: runs this host's
    /// stopped copy again (it holds the VM exactly as it was handed over).
    pub async fn revert_outgoing(&self, name: &str, uuid: uuid::Uuid) -> Result<VmStatus, ApiError> {
        let e = self.entry(name)?;
        let r = e.snapshot();
        if r.def.uuid != uuid || r.state != VmState::Migrated {
            return Err(ApiError::conflict(format!("VM {name:?} here is {}, not a handed-over copy", r.state)));
        }
        let last = match &r.migration {
            Some(Role::Out { last: Some(l), .. }) => l.clone(),
            _ => return Err(ApiError::conflict(format!("VM {name:?} has no completed migration here"))),
        };
        if last.figures.used_mode != Some(corral_api::migration::MemoryMove::Precopy) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} moved by post-copy: the memory here is not complete, it cannot run here again"
            )));
        }
        if !r.pid.is_some_and(|p| qemu::is_ours(p, &r.def.uuid)) {
            return Err(ApiError::conflict(format!("VM {name:?}: the stopped QEMU here is gone")));
        }
        let _g = Manager::claim(&e, name).await?;
        // `cont` re-activates the disk images a completed migration deactivated.
        crate::qmp::run(&e.paths.qmp(), "cont", None).await.map_err(internal)?;
        e.update(|r| {
            r.state = VmState::Running;
            r.migration = None;
        })?;
        drop(_g);
        self.refresh_filter().await;
        tracing::warn!("VM {name} resumed here: its copy at the destination did not survive");
        Ok(e.status())
    }

    /// Starts sending a running VM to the destination described in `req`; returns at once.
    /// Progress and outcome: [`Manager::outgoing_status`].
    pub async fn outgoing(
        self: &Arc<Self>,
        name: &str,
        req: Outgoing,
        http: reqwest::Client,
        token: Option<String>,
    ) -> Result<OutgoingStatus, ApiError> {
        let e = self.entry(name)?;
        let r = e.snapshot();
        if r.def.uuid != req.uuid {
            return Err(ApiError::conflict(format!("VM {name:?} on this host is another VM than the one to migrate")));
        }
        if let Some(Role::Out { id, last: None }) = &r.migration {
            if *id == req.id {
                return self.outgoing_status(name);
            }
        }
        let guard = tokio::time::timeout(Duration::from_secs(2), e.op.clone().lock_owned()).await.map_err(|_| {
            ApiError::conflict(format!("VM {name:?} is busy ({}): wait for the current operation to finish", r.state))
        })?;
        let state = e.snapshot().state;
        if state != VmState::Running {
            return Err(ApiError::conflict(format!("VM {name:?} is {state}: only a running VM can be live-migrated")));
        }
        e.cancel.store(false, Ordering::SeqCst);
        let first = OutgoingStatus {
            id: req.id.clone(),
            state: MigrationState::Running,
            figures: MigrationFigures { phase: MigrationPhase::Mirroring, ..Default::default() },
        };
        *lock(&e.outgoing) = Some(first.clone());
        e.update(|r| {
            r.state = VmState::Migrating;
            r.migration = Some(Role::Out { id: req.id.clone(), last: None });
        })?;
        let me = self.clone();
        tokio::spawn(async move {
            let _g = guard;
            let res = me.send(&e, &req, &http, token.as_deref()).await;
            me.conclude(&e, &req.id, res).await;
        });
        Ok(first)
    }

    /// The outgoing migration's figures (running, or how the last one ended).
    pub fn outgoing_status(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        let e = self.entry(name)?;
        if let Some(s) = lock(&e.outgoing).clone() {
            return Ok(s);
        }
        match e.snapshot().migration {
            Some(Role::Out { last: Some(s), .. }) => Ok(*s),
            _ => Err(ApiError::not_found(format!("VM {name:?} has no outgoing migration on this host"))),
        }
    }

    /// Asks the running outgoing migration to stop. Refused once the VM runs at the destination.
    pub fn cancel_outgoing(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        let e = self.entry(name)?;
        let st = lock(&e.outgoing)
            .clone()
            .filter(|s| s.state == MigrationState::Running)
            .ok_or_else(|| ApiError::conflict(format!("VM {name:?} has no migration in progress")))?;
        if st.figures.phase.handed_over() {
            return Err(ApiError::too_late(format!(
                "too late to cancel: VM {name:?} already runs at the destination ({})",
                st.figures.phase
            )));
        }
        e.cancel.store(true, Ordering::SeqCst);
        Ok(st)
    }

    fn set_figures(e: &Entry, f: &MigrationFigures) {
        if let Some(s) = lock(&e.outgoing).as_mut() {
            s.figures = f.clone();
        }
    }

    /// The whole of the source's side. Ok: the VM runs at the destination now.
    async fn send(
        &self,
        e: &Entry,
        req: &Outgoing,
        http: &reqwest::Client,
        token: Option<&str>,
    ) -> Result<MigrationFigures, (MigrationState, MigrationFigures)> {
        let started = Instant::now();
        let mut f = MigrationFigures { phase: MigrationPhase::Mirroring, ..Default::default() };
        let fail = |f: &MigrationFigures, msg: String| {
            let mut f = f.clone();
            f.error = Some(msg);
            (MigrationState::Failed, f)
        };
        let mut q = match QmpClient::connect(&e.paths.qmp()).await {
            Ok(q) => q,
            Err(err) => return Err(fail(&f, err.to_string())),
        };
        let job = job_id(&req.id);
        let target = format!("nbd:{}:exportname={DISK_ID}", req.to.nbd);
        // 1. Disk: mirror the overlay's own data into the destination's export.
        let mirror = q
            .execute(
                "drive-mirror",
                Some(json!({"device": DISK_ID, "job-id": job, "target": target, "sync": "top",
                             "mode": "existing", "format": "raw"})),
            )
            .await;
        if let Err(err) = mirror {
            return Err(fail(&f, format!("cannot start the disk mirror to {}: {err}", req.to.nbd)));
        }
        loop {
            if e.cancel.load(Ordering::SeqCst) {
                let _ = q.execute("block-job-cancel", Some(json!({"device": job, "force": true}))).await;
                f.error = Some("cancelled by the operator during the disk copy".into());
                return Err((MigrationState::Cancelled, f));
            }
            let jobs = q.execute("query-block-jobs", None).await.unwrap_or(Value::Null);
            let Some(j) = jobs.as_array().and_then(|a| a.iter().find(|j| j["device"] == json!(job))).cloned() else {
                return Err(fail(&f, "the disk mirror stopped (destination unreachable?)".into()));
            };
            f.disk_bytes = u(&j, &["offset"]);
            f.total_ms = started.elapsed().as_millis() as u64;
            Self::set_figures(e, &f);
            if j["ready"].as_bool() == Some(true) {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        // 2. Memory: capabilities and parameters of the mode.
        let auto = req.mode == MigrationMode::Auto;
        let postcopy = req.mode.may_postcopy();
        let set = async {
            q.execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": caps(&[
                    ("pause-before-switchover", true),
                    ("postcopy-ram", postcopy),
                    // XBZRLE (re-sent pages go as deltas against a cache of what was sent) in
                    // `auto` only: `precopy` is QEMU's defaults, the baseline it is measured by.
                    ("xbzrle", auto),
                    ("auto-converge", auto),
                ])})),
            )
            .await?;
            let mut params = serde_json::Map::new();
            let downtime = req.max_downtime_ms.or(auto.then_some(AUTO_DOWNTIME_MS));
            if let Some(d) = downtime {
                params.insert("downtime-limit".into(), json!(d));
            }
            if let Some(b) = req.bandwidth {
                params.insert("max-bandwidth".into(), json!(b));
            }
            if auto {
                // A quarter of guest memory holds a typical dirtying working set; QEMU's
                // default (64 MiB) is too small for large guests and too big for small ones.
                let mem = q.execute("query-memory-size-summary", None).await?;
                let cache = (u(&mem, &["base-memory"]) / 4).max(16 << 20) & !0xfff;
                params.insert("xbzrle-cache-size".into(), json!(cache));
            }
            if !params.is_empty() {
                q.execute("migrate-set-parameters", Some(Value::Object(params))).await?;
            }
            q.execute("migrate", Some(json!({"uri": format!("tcp:{}", req.to.migration)}))).await
        }
        .await;
        if let Err(err) = set {
            let _ = q.execute("block-job-cancel", Some(json!({"device": job, "force": true}))).await;
            return Err(fail(&f, format!("cannot start the memory migration: {err}")));
        }
        let mode = match req.mode {
            MigrationMode::Auto => Mode::Auto,
            MigrationMode::Precopy => Mode::Precopy,
            MigrationMode::Postcopy => Mode::Postcopy,
        };
        let mut policy = Convergence::new(mode, req.budget_ms);
        let mem_started = Instant::now();
        let mut in_postcopy = false;
        f.phase = MigrationPhase::Precopy;
        // 3. Watch the rounds until QEMU is done.
        let outcome = loop {
            let m = match q.execute("query-migrate", None).await {
                Ok(m) => m,
                Err(err) => break Err(fail(&f, format!("lost the source QEMU's monitor: {err}"))),
            };
            let status = MigrationStatus::of(&m);
            let page = u(&m, &["ram", "page-size"]).max(4096);
            f.rounds = u(&m, &["ram", "dirty-sync-count"]);
            f.remaining = u(&m, &["ram", "remaining"]);
            f.dirty_rate = u(&m, &["ram", "dirty-pages-rate"]) * page;
            f.transfer_rate = (m["ram"]["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0) as u64;
            f.bytes = u(&m, &["ram", "transferred"]).max(f.bytes);
            f.memory_bytes = u(&m, &["ram", "total"]).max(f.memory_bytes);
            f.total_ms = started.elapsed().as_millis() as u64;
            if e.cancel.load(Ordering::SeqCst) && !in_postcopy && status != MigrationStatus::Completed {
                let _ = q.execute("migrate_cancel", None).await;
                f.error = Some("cancelled by the operator".into());
                break Err((MigrationState::Cancelled, f.clone()));
            }
            match status {
                MigrationStatus::Setup | MigrationStatus::Active => {
                    let s = Sample {
                        elapsed_ms: mem_started.elapsed().as_millis() as u64,
                        round: f.rounds,
                        remaining: f.remaining,
                        dirty_rate: f.dirty_rate,
                        transfer_rate: f.transfer_rate,
                    };
                    match policy.observe(&s) {
                        Decision::Wait => {}
                        Decision::Postcopy(why) => {
                            f.actions.push(format!("switched to post-copy: {why}"));
                            if let Err(err) = q.execute("migrate-start-postcopy", None).await {
                                break Err(fail(&f, format!("cannot switch to post-copy: {err}")));
                            }
                            in_postcopy = true;
                        }
                        Decision::Downtime(ms, why) => {
                            f.actions.push(why);
                            if let Err(err) =
                                q.execute("migrate-set-parameters", Some(json!({"downtime-limit": ms}))).await
                            {
                                break Err(fail(&f, format!("cannot raise the downtime limit: {err}")));
                            }
                        }
                        Decision::GiveUp(why) => {
                            let _ = q.execute("migrate_cancel", None).await;
                            break Err(fail(&f, why));
                        }
                    }
                }
                MigrationStatus::PreSwitchover => {
                    f.phase = MigrationPhase::Switchover;
                    Self::set_figures(e, &f);
                    // The guest is stopped here: finish the disk, then hand over only to a
                    // destination that answers (and has closed its disk export).
                    if let Err(why) = complete_mirror(&mut q, &job, &mut f).await {
                        let _ = q.execute("migrate_cancel", None).await;
                        break Err(fail(&f, why));
                    }
                    if let Err(why) = destination_switchover(http, token, req, &e.snapshot().def.name).await {
                        let _ = q.execute("migrate_cancel", None).await;
                        break Err(fail(
                            &f,
                            format!("{why}; cancelled before the switch-over, the VM keeps running here"),
                        ));
                    }
                    if let Err(err) = q.execute("migrate-continue", Some(json!({"state": "pre-switchover"}))).await {
                        let _ = q.execute("migrate_cancel", None).await;
                        break Err(fail(&f, format!("cannot continue to the switch-over: {err}")));
                    }
                }
                MigrationStatus::PostcopyActive => f.phase = MigrationPhase::Postcopy,
                MigrationStatus::Completed => {
                    f.downtime_ms = m["downtime"].as_u64();
                    f.phase = MigrationPhase::Completed;
                    break Ok(f.clone());
                }
                MigrationStatus::Failed
                | MigrationStatus::Cancelled
                | MigrationStatus::Cancelling
                | MigrationStatus::PostcopyPaused => {
                    let why = m["error-desc"].as_str().map(str::to_string).unwrap_or_else(|| status.to_string());
                    break Err(fail(&f, format!("QEMU: migration {why}")));
                }
                _ => {}
            }
            Self::set_figures(e, &f);
            tokio::time::sleep(TICK).await;
        };
        let mut out = match outcome {
            Ok(f) => return Ok(with_mode(f, in_postcopy)),
            Err(x) => x,
        };
        out.1 = with_mode(out.1, in_postcopy);
        let t = Instant::now();
        back_to_running(&mut q, &job).await;
        tracing::info!("migration {}: source back to running in {:?}", req.id, t.elapsed());
        Err(out)
    }

    /// Writes the outcome: a migrated copy is marked so (its stopped QEMU stays until the
    /// controller deletes the copy); a failed one runs on.
    pub(super) async fn conclude(
        &self,
        e: &Entry,
        id: &str,
        res: Result<MigrationFigures, (MigrationState, MigrationFigures)>,
    ) {
        let (state, mut figures) = match res {
            Ok(f) => (MigrationState::Completed, f),
            Err((s, f)) => (s, f),
        };
        if state != MigrationState::Completed {
            figures.phase = state.into();
        }
        let done = OutgoingStatus { id: id.to_string(), state, figures };
        let r = e.snapshot();
        // A migrated copy keeps its (stopped) QEMU until the controller, having committed the
        // VM to the destination, deletes it: nothing of it is thrown away before that.
        *lock(&e.outgoing) = Some(done.clone());
        let _ = e.update(|r| {
            r.migration = Some(Role::Out { id: id.to_string(), last: Some(Box::new(done.clone())) });
            r.state = if state == MigrationState::Completed { VmState::Migrated } else { VmState::Running };
        });
        self.refresh_filter().await;
        match state {
            MigrationState::Completed => tracing::info!("VM {} migrated away ({id})", r.def.name),
            _ => tracing::warn!("migration {id} of {} {state}: {:?}", r.def.name, done.figures.error),
        }
    }
}

/// Calls a migration off at the source: no migration, no mirror job, vCPUs running. Uses the
/// caller's connection (QEMU serves one QMP client at a time).
pub(super) async fn back_to_running(q: &mut QmpClient, job: &str) {
    let _ = q.execute("migrate_cancel", None).await;
    let _ = q.execute("block-job-cancel", Some(json!({"device": job, "force": true}))).await;
    for _ in 0..100 {
        let m = q.execute("query-migrate", None).await.unwrap_or(Value::Null);
        if !matches!(
            MigrationStatus::of(&m),
            MigrationStatus::Cancelling | MigrationStatus::Active | MigrationStatus::PreSwitchover
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Ok(st) = q.execute("query-status", None).await {
        if RunState::of(&st) != RunState::Running {
            let _ = q.execute("cont", None).await;
        }
    }
}

/// Notes how the memory finally moved.
fn with_mode(mut f: MigrationFigures, postcopy: bool) -> MigrationFigures {
    f.used_mode = Some(if postcopy {
        corral_api::migration::MemoryMove::Postcopy
    } else {
        corral_api::migration::MemoryMove::Precopy
    });
    f
}

/// The destination agent must still hold the arriving copy; it ends its disk export.
async fn destination_switchover(
    http: &reqwest::Client,
    token: Option<&str>,
    req: &Outgoing,
    name: &str,
) -> Result<(), String> {
    let url =
        format!("{}/v1/vms/{name}/migration/switchover?uuid={}", req.destination_url.trim_end_matches('/'), req.uuid);
    let mut r = http.post(&url).timeout(Duration::from_secs(3));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.map_err(|e| format!("the destination agent does not answer ({e})"))?;
    if !resp.status().is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("the destination refused the switch-over: {}", body.trim()));
    }
    Ok(())
}

/// Completes the disk mirror while the guest is stopped: every write is at the destination.
async fn complete_mirror(q: &mut QmpClient, job: &str, f: &mut MigrationFigures) -> Result<(), String> {
    let jobs = q.execute("query-block-jobs", None).await.map_err(|e| e.to_string())?;
    let Some(j) = jobs.as_array().and_then(|a| a.iter().find(|j| j["device"] == json!(job))).cloned() else {
        return Err("the disk mirror stopped before the switch-over".into());
    };
    f.disk_bytes = u(&j, &["offset"]);
    // Cancelling a ready mirror finishes copying what is in flight, then leaves the source
    // disk as it is: the destination's disk is a full copy.
    q.execute("block-job-cancel", Some(json!({"device": job}))).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = q.execute("query-block-jobs", None).await.map_err(|e| e.to_string())?;
        if !jobs.as_array().is_some_and(|a| a.iter().any(|j| j["device"] == json!(job))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("the disk mirror did not finish within 60 s at the switch-over".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
