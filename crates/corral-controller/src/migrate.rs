//! Live migration, orchestrated: choose the destination, respect per-host limits (queueing
//! beyond them), prepare the destination (template, network, arriving copy), start the source,
//! follow its rounds, and commit or roll back.
//!
//! Every migration is a record in the `migrations` table (its history), and the VM's record
//! points at it while it runs, both written before any host acts. [`Controller::drive`] moves a
//! migration on from whatever state its record is in, so a restarted controller resumes or
//! resolves each one exactly as the live controller would have: the source agent's report
//! decides. Completed at the source means the VM runs at the destination (commit: the record's
//! host switches, networks follow, the source copy goes); anything else before that means it
//! still runs at the source (roll back: the arriving copy goes).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::cluster::{OpKind, OpPhase, OpStage, Operation};
use corral_api::migration::{
    Incoming, MigrateVm, Migration, MigrationMode, MigrationRef, MigrationState, Outgoing, OutgoingStatus,
    DEFAULT_BUDGET_MS,
};
use corral_api::{now_ms, ApiError, ErrorKind, HostState, Maintenance, Vm, VmState};

use crate::service::{lock, store_err, BusyGuard, Controller};
use crate::tables::{HOST_FLAGS, MIGRATIONS, VMS};

/// How often the controller reads the source's figures.
const POLL: Duration = Duration::from_millis(250);
/// How long the source agent may stay unreachable before the reconciler takes over.
const SOURCE_SILENCE: Duration = Duration::from_secs(30);

/// Migrations holding a host's slots, and requests to cancel.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    running: Mutex<BTreeMap<String, (String, String)>>,
    freed: tokio::sync::Notify,
    cancel: Mutex<HashSet<String>>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Releases a migration's slots when dropped.
struct SlotGuard {
    c: Arc<Controller>,
    id: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.c.slots.running).remove(&self.id);
        self.c.slots.freed.notify_waiters();
    }
}

impl Controller {
    pub fn migration(&self, id: &str) -> Result<Migration, ApiError> {
        MIGRATIONS
            .get(&*self.store, id)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no migration {id:?}: see `corral vm migrations`")))
    }

    /// Migration history, oldest first; only `vm`'s when given.
    pub fn migrations(&self, vm: Option<&str>) -> Result<Vec<Migration>, ApiError> {
        let all: Vec<Migration> = MIGRATIONS.list(&*self.store).map_err(store_err)?;
        Ok(all.into_iter().filter(|m| vm.is_none_or(|v| m.vm == v)).collect())
    }

    fn put_migration(&self, m: &Migration) -> Result<(), ApiError> {
        MIGRATIONS.put(&*self.store, &m.id, m).map_err(store_err)
    }

    /// Writes a migration and its VM's record in one batch: neither lands without the other.
    fn put_migration_and_vm(&self, m: &Migration, vm: &Vm) -> Result<(), ApiError> {
        let ops =
            vec![MIGRATIONS.put_op(&m.id, m).map_err(store_err)?, VMS.put_op(&vm.def.name, vm).map_err(store_err)?];
        self.store.apply(ops).map_err(store_err)
    }

    /// Checks a request and chooses the destination. Called under the placing lock.
    fn destination(&self, vm: &Vm, to: Option<&str>) -> Result<String, ApiError> {
        let name = &vm.def.name;
        match vm.state {
            VmState::Running => {}
            VmState::Migrating => {
                return Err(ApiError::conflict(format!(
                    "VM {name:?} is already being migrated: wait, or cancel with `corral vm migrate --cancel {name}`"
                )))
            }
            VmState::Paused => {
                return Err(ApiError::conflict(format!(
                    "VM {name:?} is paused: resume it (`corral vm resume {name}`) to live-migrate it, \
                     or suspend it and move it cold (`corral vm move {name} --to HOST`)"
                )))
            }
            VmState::Suspended | VmState::Inactive => {
                return Err(ApiError::conflict(format!(
                    "VM {name:?} is {}: there is nothing to migrate live; move it cold with `corral vm move {name} --to HOST`",
                    vm.state
                )))
            }
            s => {
                return Err(ApiError::conflict(format!(
                    "VM {name:?} is {s}: only a running VM can be live-migrated; wait until it is running"
                )))
            }
        }
        if vm.migration.is_some() {
            return Err(ApiError::conflict(format!("VM {name:?} already has a migration queued or running")));
        }
        let mut views = self.host_views()?;
        if let Some(to) = to {
            if to == vm.host {
                return Err(ApiError::bad_request(format!(
                    "VM {name:?} already runs on {to}: choose another host, or leave --to out to let Corral choose"
                )));
            }
            let h = views
                .iter()
                .find(|v| v.name == to)
                .ok_or_else(|| ApiError::bad_request(format!("unknown host {to:?}: see `corral host list`")))?;
            if !self.host_ready(to) {
                return Err(ApiError::unavailable(format!("host {to} is down (no heartbeat): choose another host")));
            }
            if !h.schedulable {
                return Err(ApiError::conflict(format!(
                    "host {to} is cordoned: uncordon it (`corral host uncordon {to}`) or choose another host"
                )));
            }
        }
        for v in views.iter_mut() {
            if v.name == vm.host {
                v.schedulable = false;
            }
        }
        // The scheduler core's refusal names the host and what it lacks.
        self.place_member(vm, &views, to)
    }

    /// Starts (or queues) a live migration; returns its record at once.
    pub async fn migrate_vm(self: &Arc<Self>, name: &str, req: MigrateVm) -> Result<Migration, ApiError> {
        if req.max_downtime_ms == Some(0) {
            return Err(ApiError::bad_request("--max-downtime must be more than 0 ms"));
        }
        if req.budget_ms.is_some_and(|b| b < 1000) {
            return Err(ApiError::bad_request("the time budget must be at least 1 s"));
        }
        let busy = self.busy(name).map_err(|_| {
            ApiError::conflict(format!("VM {name:?} is busy with another operation: try again when it ends"))
        })?;
        let m = {
            let _p = self.placing.lock().await;
            let mut vm = self.vm(name)?;
            crate::ha_policy::refuse_shared_move(&vm)?;
            let to = self.destination(&vm, req.to.as_deref())?;
            let id = format!("mig-{:013}-{}", now_ms(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
            let m = Migration {
                id: id.clone(),
                vm: vm.def.name.to_string(),
                uuid: vm.def.uuid,
                source: vm.host.clone(),
                destination: to.clone(),
                mode: req.mode,
                state: MigrationState::Queued,
                result: String::new(),
                rounds: 0,
                total_ms: 0,
                downtime_ms: None,
                bytes: 0,
                disk_bytes: 0,
                memory_bytes: vm.def.memory_mib << 20,
                remaining: 0,
                dirty_rate: 0,
                transfer_rate: 0,
                used_mode: None,
                actions: vec![],
                max_downtime_ms: req.max_downtime_ms,
                bandwidth: req.bandwidth,
                budget_ms: req.budget_ms.unwrap_or(DEFAULT_BUDGET_MS),
                requested_ms: now_ms(),
                started_ms: None,
                ended_ms: None,
                evacuation: None,
            };
            vm.migration = Some(MigrationRef { id, to });
            vm.usage = None;
            // Intent first: both records exist before any host is asked to act.
            self.put_migration_and_vm(&m, &vm)?;
            m
        };
        tracing::info!("migration {} of {name}: {} → {} ({})", m.id, m.source, m.destination, m.mode.as_str());
        self.spawn_drive(m.id.clone(), busy);
        Ok(m)
    }

    fn spawn_drive(self: &Arc<Self>, id: String, busy: BusyGuard) {
        let me = self.clone();
        tokio::spawn(async move {
            let _b = busy;
            if let Err(e) = me.drive(&id).await {
                tracing::warn!("migration {id}: {} (the reconciler will resume it)", e.message);
            }
        });
    }

    /// Asks a queued or running migration of `name` to stop.
    pub async fn cancel_migration(self: &Arc<Self>, name: &str) -> Result<Migration, ApiError> {
        let vm = self.vm(name)?;
        let r = vm
            .migration
            .ok_or_else(|| ApiError::conflict(format!("VM {name:?} has no migration queued or running")))?;
        let m = self.migration(&r.id)?;
        // Recorded first: a queued migration sees it in the queue, a starting one as soon as
        // the source has it.
        lock(&self.slots.cancel).insert(r.id.clone());
        self.slots.freed.notify_waiters();
        if m.state == MigrationState::Running {
            if let Err(e) = self.agent(&m.source)?.cancel_migration(name).await {
                if e.kind == ErrorKind::TooLate {
                    lock(&self.slots.cancel).remove(&r.id);
                    return Err(e);
                }
            }
        }
        Ok(m)
    }

    /// Moves a migration on from the state its record is in, to its end.
    pub(crate) async fn drive(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let mut m = self.migration(id)?;
        let _slot = if m.state == MigrationState::Queued {
            let Some(slot) = self.wait_slot(&m).await? else {
                return self.roll_back(&mut m, MigrationState::Cancelled, "cancelled while queued".into()).await;
            };
            m = self.migration(id)?;
            if let Err(e) = self.start(&mut m).await {
                return self.roll_back(&mut m, MigrationState::Failed, e.message).await;
            }
            slot
        } else {
            self.take_slot(&m)
        };
        match m.state {
            MigrationState::Running => {
                let Some(status) = self.follow(&mut m).await? else { return Ok(()) };
                self.conclude(&mut m, status).await
            }
            MigrationState::Completed => self.commit(&mut m).await,
            _ => {
                let (state, why) = (m.state, m.result.clone());
                self.roll_back(&mut m, state, why).await
            }
        }
    }

    /// Waits for a free outbound slot on the source and inbound slot on the destination.
    /// None: cancelled while waiting.
    async fn wait_slot(self: &Arc<Self>, m: &Migration) -> Result<Option<SlotGuard>, ApiError> {
        let mut announced = false;
        loop {
            let freed = self.slots.freed.notified();
            if lock(&self.slots.cancel).remove(&m.id) {
                return Ok(None);
            }
            {
                let mut running = lock(&self.slots.running);
                let out = running.values().filter(|(s, _)| *s == m.source).count();
                let inn = running.values().filter(|(_, d)| *d == m.destination).count();
                if out < self.settings.migrations_out && inn < self.settings.migrations_in {
                    running.insert(m.id.clone(), (m.source.clone(), m.destination.clone()));
                    return Ok(Some(SlotGuard { c: self.clone(), id: m.id.clone() }));
                }
            }
            if !announced {
                announced = true;
                tracing::info!("migration {} queued: {} or {} is at its limit", m.id, m.source, m.destination);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
    }

    fn take_slot(self: &Arc<Self>, m: &Migration) -> SlotGuard {
        lock(&self.slots.running).insert(m.id.clone(), (m.source.clone(), m.destination.clone()));
        SlotGuard { c: self.clone(), id: m.id.clone() }
    }

    /// Prepares the destination and starts the source.
    async fn start(self: &Arc<Self>, m: &mut Migration) -> Result<(), ApiError> {
        let mut vm = self.vm(&m.vm)?;
        if vm.state != VmState::Running || vm.def.uuid != m.uuid || vm.host != m.source {
            return Err(ApiError::conflict(format!(
                "VM {} changed while the migration was queued (it is {} on {})",
                m.vm, vm.state, vm.host
            )));
        }
        m.state = MigrationState::Running;
        m.started_ms = Some(now_ms());
        vm.state = VmState::Migrating;
        vm.usage = None;
        self.put_migration_and_vm(m, &vm)?;
        self.ensure_template(&m.destination, &vm.def.template).await?;
        // The destination joins the VM's network before the VM arrives there.
        self.sync_networks().await;
        let dst = self.agent(&m.destination)?;
        let ready =
            dst.incoming(&Incoming { def: vm.def.clone(), id: m.id.clone(), postcopy: m.mode.may_postcopy() }).await?;
        let src = self.agent(&m.source)?;
        let out = Outgoing {
            id: m.id.clone(),
            uuid: m.uuid,
            to: ready,
            destination_url: dst.url().to_string(),
            mode: m.mode,
            max_downtime_ms: m.max_downtime_ms,
            bandwidth: m.bandwidth,
            budget_ms: m.budget_ms,
        };
        src.migrate(&m.vm, &out).await?;
        self.event("vm.migration-started", &m.vm, format!("{} → {} ({})", m.source, m.destination, m.mode.as_str()));
        Ok(())
    }

    /// Follows the source's figures until the migration ends there. None: the source agent
    /// stayed unreachable; the reconciler resumes later.
    async fn follow(self: &Arc<Self>, m: &mut Migration) -> Result<Option<OutgoingStatus>, ApiError> {
        let src = self.agent(&m.source)?;
        let mut last_heard = Instant::now();
        let mut cancel_sent = false;
        let mut lost_destination = false;
        loop {
            if !cancel_sent && lock(&self.slots.cancel).remove(&m.id) {
                cancel_sent = true;
                match src.cancel_migration(&m.vm).await {
                    Err(e) if e.kind == ErrorKind::TooLate => m.actions.push(format!("cancel refused: {}", e.message)),
                    _ => {}
                }
            }
            // A destination that stops heartbeating cannot take the VM: stop before the switch.
            if !cancel_sent && !self.host_ready(&m.destination) {
                cancel_sent = true;
                lost_destination = true;
                let _ = src.cancel_migration(&m.vm).await;
            }
            match src.migration(&m.vm).await {
                Ok(st) if st.id == m.id => {
                    last_heard = Instant::now();
                    m.take(&st.figures);
                    if st.state.is_final() {
                        let mut st = st;
                        if lost_destination && st.state == MigrationState::Cancelled {
                            st.state = MigrationState::Failed;
                            st.figures.error = Some(format!(
                                "destination host {} stopped sending heartbeats; cancelled before the switch-over, \
                                 the VM kept running at the source",
                                m.destination
                            ));
                        }
                        return Ok(Some(st));
                    }
                    self.put_migration(m)?;
                }
                Ok(_) | Err(ApiError { kind: ErrorKind::NotFound, .. }) => {
                    // The source never started this migration (or forgot it): the VM is there.
                    return Ok(Some(OutgoingStatus {
                        id: m.id.clone(),
                        state: MigrationState::Failed,
                        figures: corral_api::migration::MigrationFigures {
                            error: Some("the source host has no record of this migration".into()),
                            ..Default::default()
                        },
                    }));
                }
                Err(e) => {
                    if last_heard.elapsed() > SOURCE_SILENCE {
                        tracing::warn!("migration {}: source {} unreachable: {}", m.id, m.source, e.message);
                        return Ok(None);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records the source's verdict and commits or rolls back.
    async fn conclude(self: &Arc<Self>, m: &mut Migration, st: OutgoingStatus) -> Result<(), ApiError> {
        m.take(&st.figures);
        if st.state == MigrationState::Completed {
            // The source keeps its verdict (and its stopped copy) until the commit is
            // written, so a restart in between finds the same verdict and commits again.
            return self.commit(m).await;
        }
        let why = st.figures.error.clone().unwrap_or_else(|| st.state.to_string());
        self.roll_back(m, st.state, why).await
    }

    /// After the switch: the destination's copy becomes the VM, networks follow, the source's
    /// copy goes.
    async fn commit(self: &Arc<Self>, m: &mut Migration) -> Result<(), ApiError> {
        let dst = self.agent(&m.destination)?;
        let st = match dst.finish_migration(&m.vm).await {
            Ok(st) => st,
            Err(e) => return self.rescue(m, e).await,
        };
        let mut vm = self.vm(&m.vm)?;
        vm.host = m.destination.clone();
        crate::service::apply_status(&mut vm, &st);
        vm.migration = None;
        m.state = MigrationState::Completed;
        m.result = "completed".into();
        m.ended_ms.get_or_insert(now_ms());
        self.put_migration_and_vm(m, &vm)?;
        self.sync_networks().await;
        if let Err(e) = self.agent(&m.source)?.delete_copy(&m.vm, &m.uuid).await {
            tracing::warn!(
                "removing the old copy of {} from {}: {} (the orphan sweep will)",
                m.vm,
                m.source,
                e.message
            );
        }
        self.event(
            "vm.migrated",
            &m.vm,
            format!(
                "{} → {} ({}, {}): {} rounds, {} ms total, downtime {} ms, {:.1} MiB memory + {:.1} MiB disk sent",
                m.source,
                m.destination,
                m.mode.as_str(),
                m.used_mode.map_or("?", |u| u.as_str()),
                m.rounds,
                m.total_ms,
                m.downtime_ms.map(|d| d.to_string()).unwrap_or_else(|| "?".into()),
                mib(m.bytes),
                mib(m.disk_bytes)
            ),
        );
        Ok(())
    }

    /// The destination could not take over after the hand-over. If its copy is gone (QEMU
    /// ended: the guest crashed or was killed) and the memory moved by pre-copy, the source's
    /// stopped copy is complete: run it again and roll back. Otherwise report the error and
    /// let the reconciler retry (a destination agent that is only unreachable comes back).
    async fn rescue(self: &Arc<Self>, m: &mut Migration, err: ApiError) -> Result<(), ApiError> {
        let dead = match self.agent(&m.destination)?.get(&m.vm).await {
            Ok(st) => !matches!(st.state, VmState::Migrating | VmState::Running),
            Err(e) => e.kind == ErrorKind::NotFound,
        };
        if !dead || m.used_mode != Some(corral_api::migration::MemoryMove::Precopy) {
            return Err(err);
        }
        let st = self.agent(&m.source)?.revert_migration(&m.vm, &m.uuid).await?;
        let mut vm = self.vm(&m.vm)?;
        crate::service::apply_status(&mut vm, &st);
        self.put_vm(&vm)?;
        let why = format!(
            "the VM did not survive at {} ({}); resumed at {} from its handed-over state",
            m.destination, err.message, m.source
        );
        tracing::warn!("migration {}: {why}", m.id);
        self.roll_back(m, MigrationState::Failed, why).await
    }

    /// Before the switch: the VM stays at the source; the arriving copy goes.
    async fn roll_back(
        self: &Arc<Self>,
        m: &mut Migration,
        state: MigrationState,
        why: String,
    ) -> Result<(), ApiError> {
        if let Ok(a) = self.agent(&m.destination) {
            if let Err(e) = a.delete_copy(&m.vm, &m.uuid).await {
                tracing::warn!("removing the arriving copy of {} from {}: {}", m.vm, m.destination, e.message);
            }
        }
        let mut vm = self.vm(&m.vm)?;
        if vm.host == m.source && vm.state == VmState::Migrating {
            vm.state = VmState::Running;
        }
        vm.migration = None;
        vm.usage = None;
        let already = m.state.is_final() && !m.result.is_empty();
        m.state = if state == MigrationState::Cancelled { MigrationState::Cancelled } else { MigrationState::Failed };
        if !already {
            m.result = match m.state {
                MigrationState::Cancelled => format!("cancelled: {why}"),
                _ => format!("failed: {why}"),
            };
        }
        m.ended_ms = Some(now_ms());
        self.put_migration_and_vm(m, &vm)?;
        self.sync_networks().await;
        self.event("vm.migration-failed", &m.vm, format!("{} → {}: {}", m.source, m.destination, m.result));
        Ok(())
    }

    /// For the reconciler: migrations no task is driving (after a controller restart).
    pub(crate) fn resume_migrations(self: &Arc<Self>, vms: &[Vm]) {
        for vm in vms {
            let Some(r) = &vm.migration else { continue };
            let Ok(guard) = self.busy(&vm.def.name) else { continue };
            if !self.host_ready(&vm.host) {
                continue;
            }
            tracing::info!("resuming migration {} of {}", r.id, vm.def.name);
            self.spawn_drive(r.id.clone(), guard);
        }
    }

    /// Maintenance: cordons the host and moves every VM off it (live for running VMs, cold
    /// for stopped and suspended ones), placing each with the scheduler core.
    pub async fn evacuate_host(self: &Arc<Self>, host: &str) -> Result<Operation, ApiError> {
        let h = self.host(host)?;
        if h.state != HostState::Ready {
            return Err(ApiError::conflict(format!(
                "host {host} is down: its VMs cannot be live-migrated (they restart elsewhere with HA)"
            )));
        }
        let mut flags = self.flags(host)?;
        flags.cordoned = true;
        flags.maintenance = Some(Maintenance::Evacuating);
        HOST_FLAGS.put(&*self.store, host, &flags).map_err(store_err)?;
        let vms: Vec<Vm> = self.vms()?.into_iter().filter(|v| v.host == host).collect();
        let op = self.new_op(OpKind::HostEvacuate, host, vms.len() as u32, vec![]);
        let me = self.clone();
        let h = op.clone();
        let host = host.to_string();
        tokio::spawn(async move {
            h.phase(OpPhase::Migrate);
            let t = Instant::now();
            let results = futures::future::join_all(vms.iter().map(|v| {
                let me = me.clone();
                let h = h.clone();
                async move {
                    let r = me.evacuate_one(v).await;
                    match &r {
                        Ok(()) => h.tick(),
                        Err(e) => h.message(format!("{}: {}", v.def.name, e.message)),
                    }
                    r
                }
            }))
            .await;
            h.step(OpStage::Migrate, t);
            let all = me.vms().unwrap_or_default();
            let left = all.iter().filter(|v| v.host == host).count();
            let ok = results.iter().all(Result::is_ok) && left == 0;
            if let Ok(mut f) = me.flags(&host) {
                f.maintenance = Some(if ok { Maintenance::Evacuated } else { Maintenance::EvacuationIncomplete });
                let _ = HOST_FLAGS.put(&*me.store, &host, &f);
            }
            let hosts: std::collections::BTreeSet<String> =
                all.iter().filter(|a| vms.iter().any(|v| v.def.name == a.def.name)).map(|a| a.host.clone()).collect();
            h.finish(ok, (results.len() - left) as u32, hosts.into_iter().collect());
            me.event("host.evacuated", &host, format!("{} VM(s) moved off, {left} left", results.len() - left));
        });
        self.operation(&op.id)
    }

    async fn evacuate_one(self: &Arc<Self>, v: &Vm) -> Result<(), ApiError> {
        match v.state {
            VmState::Running => {
                let m =
                    self.migrate_vm(&v.def.name, MigrateVm { mode: MigrationMode::Auto, ..Default::default() }).await?;
                loop {
                    let now = self.migration(&m.id)?;
                    match now.state {
                        MigrationState::Completed => return Ok(()),
                        s if s.is_final() => return Err(ApiError::internal(now.result)),
                        _ => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
            VmState::Inactive | VmState::Suspended => {
                let to = {
                    let _p = self.placing.lock().await;
                    let mut views = self.host_views()?;
                    for x in views.iter_mut().filter(|x| x.name == v.host) {
                        x.schedulable = false;
                    }
                    self.place_member(v, &views, None)?
                };
                self.move_stopped(&v.def.name, &to).await?;
                self.forget_pushed(&v.def.name);
                Ok(())
            }
            s => Err(ApiError::conflict(format!("VM {} is {s}: resume or stop it, then evacuate again", v.def.name))),
        }
    }
}
