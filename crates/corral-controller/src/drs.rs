//! The live balancing and consolidation loop (DRS): every interval it describes the pool to the
//! scheduler core (`corral_sched::drs::plan`, the same code `corral sim` replays traces
//! through), records the plan as a round, and in `auto` mode carries it out: wakes standby
//! hosts, starts live migrations through the migration machinery (per-host limits and all),
//! and puts hosts the plan emptied in standby.
//!
//! Demand is what each VM's QEMU process used plus what its threads waited for a CPU (the
//! agent's `cpu_demand_pct`), so a saturated host shows the load its VMs want, not just what
//! they got. The history the policies forecast from is one sample per round, kept in memory
//! (a restarted controller starts a fresh history; the policy pads short ones).
//!
//! Putting hosts in standby and waking them is in [`crate::power`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corral_api::agent::Register;
use corral_api::drs::{DrsMode, DrsMove, DrsRound, DrsSettings, DrsSettingsPatch, DrsStatus, HostPower, MoveReason};
use corral_api::migration::{MigrateVm, MigrationMode};
use corral_api::{now_ms, ApiError, VmState};
use corral_sched::drs::{
    plan, HostSnapshot, PolicySpec, PolicyState, PowerModel, PowerState, Reason, Snapshot, VmSnapshot,
};

use crate::service::{lock, store_err, Controller};
use crate::tables::{DRS, DRS_ROUNDS, HOSTS};

const SETTINGS_KEY: &str = "settings";
/// Samples of demand history kept per VM.
const HISTORY: usize = 64;
/// Rounds kept in the history table.
const ROUNDS_KEPT: usize = 500;
/// Nominal bandwidth for the policy's migration-time estimates, Mbit/s.
const MIGRATION_MBPS: f64 = 1000.0;

/// What the loop keeps between rounds, in memory.
#[derive(Debug, Default)]
pub(crate) struct DrsLive {
    history: Mutex<BTreeMap<String, VecDeque<f64>>>,
    state: Mutex<Option<PolicyState>>,
    last: Mutex<Option<Instant>>,
    /// Hosts the plan emptied, going to standby once their last VM has left.
    pub(crate) to_standby: Mutex<BTreeSet<String>>,
    /// One round (or power change) at a time.
    round: tokio::sync::Mutex<()>,
    /// When each host was first seen on (joined, woken, or at this controller's start):
    /// consolidation leaves it on until it has a few rounds of history.
    pub(crate) on_since: Mutex<BTreeMap<String, Instant>>,
}

/// Rounds a host stays on after it joined or woke before consolidation may put it in
/// standby: enough history to judge it (vSphere DPM waits for its history too), and a new
/// pool is not shut down under the operator's first commands.
const STANDBY_AFTER_ROUNDS: f64 = 3.0;

/// A snapshot and the names its indices stand for.
struct Pool {
    snap: Snapshot,
    host_names: Vec<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

impl Controller {
    pub fn drs_settings(&self) -> Result<DrsSettings, ApiError> {
        Ok(DRS.get(&*self.store, SETTINGS_KEY).map_err(store_err)?.unwrap_or_default())
    }

    /// Changes the loop's settings; every field is checked before anything is stored.
    pub fn set_drs(&self, p: DrsSettingsPatch) -> Result<DrsSettings, ApiError> {
        let mut s = self.drs_settings()?;
        if let Some(m) = p.mode {
            s.mode = m;
        }
        if let Some(i) = p.interval_s {
            if !(i.is_finite() && (1.0..=86_400.0).contains(&i)) {
                return Err(bad(format!("interval {i} s is out of range: give 1 s to 24 h")));
            }
            s.interval_s = i;
        }
        if let Some(pol) = p.policy {
            s.policy = pol;
        }
        if let Some(x) = p.param {
            s.param = (x >= 0.0).then_some(x);
        }
        for (name, v, slot) in [("target", p.target, &mut s.target), ("high", p.high, &mut s.high)] {
            if let Some(x) = v {
                if !(x.is_finite() && x > 0.0 && x <= 1.0) {
                    return Err(bad(format!("{name} {x} is out of range: give a fraction of capacity in (0, 1]")));
                }
                *slot = Some(x);
            }
        }
        if let Some(m) = p.max_migrations {
            if !(1..=64).contains(&m) {
                return Err(bad(format!("max migrations {m} is out of range: give 1 to 64")));
            }
            s.max_migrations = m;
        }
        if let Some(k) = p.keep_on {
            for h in &k {
                if !HOSTS.contains(&*self.store, h).map_err(store_err)? {
                    return Err(bad(format!("unknown host {h:?} in keep-on: see `corral host list`")));
                }
            }
            s.keep_on = k;
        }
        policy_spec(&s)?;
        DRS.put(&*self.store, SETTINGS_KEY, &s).map_err(store_err)?;
        // A new policy starts from a fresh state.
        *lock(&self.drs.state) = None;
        Ok(s)
    }

    /// Settings, power states and the latest round.
    pub fn drs_status(&self) -> Result<DrsStatus, ApiError> {
        let settings = self.drs_settings()?;
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let (mut on, mut standby) = (vec![], vec![]);
        for r in regs {
            match self.flags(&r.name)?.power {
                HostPower::Standby => standby.push(r.name),
                _ => on.push(r.name),
            }
        }
        let rounds = self.drs_rounds(usize::MAX)?;
        let migrations_running = self.vms()?.iter().filter(|v| v.migration.is_some()).count();
        Ok(DrsStatus {
            settings,
            hosts_on: on,
            hosts_standby: standby,
            migrations_running,
            rounds: rounds.len() as u64,
            last: rounds.into_iter().last(),
        })
    }

    /// The recorded rounds, oldest first (the last `limit`).
    pub fn drs_rounds(&self, limit: usize) -> Result<Vec<DrsRound>, ApiError> {
        let all: Vec<DrsRound> = DRS_ROUNDS.list(&*self.store).map_err(store_err)?;
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).collect())
    }

    /// Plans now with the current settings and demand, without recording or acting.
    pub fn drs_plan(&self) -> Result<DrsRound, ApiError> {
        let settings = self.drs_settings()?;
        let state = lock(&self.drs.state).clone().unwrap_or_else(|| PolicyState::new(1));
        let (round, _, _) = self.plan_round(&settings, &state, false)?;
        Ok(round)
    }

    /// Called every second by the controller's loop: runs a round when one is due.
    pub async fn drs_tick(self: &Arc<Self>) {
        let Ok(settings) = self.drs_settings() else { return };
        // Hosts emptied by an earlier round go to standby as soon as they are empty.
        self.finish_standby().await;
        if settings.mode == DrsMode::Off {
            return;
        }
        let due = lock(&self.drs.last).is_none_or(|t| t.elapsed().as_secs_f64() >= settings.interval_s);
        if !due {
            return;
        }
        *lock(&self.drs.last) = Some(Instant::now());
        if let Err(e) = self.drs_round(&settings).await {
            tracing::warn!("DRS round: {}", e.message);
        }
    }

    async fn drs_round(self: &Arc<Self>, settings: &DrsSettings) -> Result<(), ApiError> {
        let _one = self.drs.round.lock().await;
        let state = lock(&self.drs.state).clone().unwrap_or_else(|| PolicyState::new(1));
        let (mut round, next, pool) = self.plan_round(settings, &state, true)?;
        // The policy remembers what it did (cooldowns, wake-ups); advice is not done, so it
        // is not remembered either: the next round sees the same pool and advises alike.
        if settings.mode == DrsMode::Auto {
            *lock(&self.drs.state) = Some(next);
            if !(round.moves.is_empty() && round.wake.is_empty() && round.standby.is_empty()) {
                round.executed = true;
                self.carry_out(settings, &mut round, &pool).await;
            }
        }
        let quiet = round.moves.is_empty() && round.wake.is_empty() && round.standby.is_empty();
        if !quiet {
            self.record_round(&round)?;
            self.event("drs.round", &round.policy, summary(&round));
        }
        Ok(())
    }

    fn record_round(&self, round: &DrsRound) -> Result<(), ApiError> {
        let key = format!("{:013}-{}", round.ms, &uuid::Uuid::new_v4().simple().to_string()[..6]);
        DRS_ROUNDS.put(&*self.store, &key, round).map_err(store_err)?;
        let keys = DRS_ROUNDS.keys(&*self.store, "").map_err(store_err)?;
        for k in keys.iter().take(keys.len().saturating_sub(ROUNDS_KEPT)) {
            DRS_ROUNDS.delete(&*self.store, k).map_err(store_err)?;
        }
        Ok(())
    }

    /// Describes the pool, runs the policy, and names what it decided.
    fn plan_round(
        &self,
        settings: &DrsSettings,
        state: &PolicyState,
        sample: bool,
    ) -> Result<(DrsRound, PolicyState, Pool), ApiError> {
        let spec = policy_spec(settings)?;
        let pool = self.pool(settings, sample)?;
        let t = Instant::now();
        let (p, next) = plan(&pool.snap, &spec, state).map_err(|e| ApiError::internal(format!("DRS plan: {e}")))?;
        let planning_ms = t.elapsed().as_secs_f64() * 1000.0;
        let hn = |i: usize| pool.host_names.get(i).cloned().unwrap_or_default();
        let watts = |i: usize| pool.snap.hosts.get(i).map_or(0.0, |h| h.power.idle());
        let moves = p
            .migrations
            .iter()
            .map(|m| {
                let (reason, why) = match m.reason {
                    Reason::Overload { load, limit } => (
                        MoveReason::Overload,
                        format!(
                            "{} wants {:.0}% of its CPU, above the {:.0}% limit",
                            hn(m.from),
                            load * 100.0,
                            limit * 100.0
                        ),
                    ),
                    Reason::Consolidate { saves_watts } => (
                        MoveReason::Consolidate,
                        format!("emptying {} for standby saves about {saves_watts:.0} W", hn(m.from)),
                    ),
                };
                DrsMove {
                    vm: pool.snap.vms[m.vm].name.clone(),
                    from: hn(m.from),
                    to: hn(m.to),
                    reason,
                    why,
                    expected_s: m.seconds,
                    outcome: None,
                }
            })
            .collect();
        let round = DrsRound {
            ms: now_ms(),
            mode: settings.mode,
            policy: spec.to_string(),
            overloaded: p.overloaded.iter().map(|&i| hn(i)).collect(),
            moves,
            wake: p.wake.iter().map(|&i| hn(i)).collect(),
            standby: p.standby.iter().map(|&i| hn(i)).collect(),
            expected_saving_watts: p.standby.iter().map(|&i| watts(i)).sum::<f64>()
                - p.wake.iter().map(|&i| watts(i)).sum::<f64>(),
            planning_ms,
            executed: false,
            notes: vec![],
        };
        Ok((round, next, pool))
    }

    /// The pool as the scheduler core sees it. With `sample`, this round's demand is appended
    /// to each VM's history first.
    fn pool(&self, settings: &DrsSettings, sample: bool) -> Result<Pool, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let vms = self.vms()?;
        let host_names: Vec<String> = regs.iter().map(|r| r.name.clone()).collect();
        let index = |n: &str| host_names.iter().position(|h| h == n);
        let mut hist = lock(&self.drs.history);
        hist.retain(|name, _| vms.iter().any(|v| &v.def.name == name));
        let mut snap_vms = vec![];
        let mut used = vec![0.0; regs.len()];
        let mut lives_there = vec![false; regs.len()];
        for v in &vms {
            let Some(h) = index(&v.host) else { continue };
            lives_there[h] = true;
            if !v.state.holds_resources() {
                continue;
            }
            let u = v.usage.clone().unwrap_or_default();
            let cores = f64::from(v.def.vcpus);
            let demand = (u.cpu_demand_pct.max(u.cpu_pct) / 100.0).clamp(0.0, cores);
            used[h] += (u.cpu_pct / 100.0).clamp(0.0, cores);
            let series = hist.entry(v.def.name.to_string()).or_default();
            if sample && v.state == VmState::Running {
                series.push_back(demand);
                while series.len() > HISTORY {
                    series.pop_front();
                }
            }
            snap_vms.push(VmSnapshot {
                name: v.def.name.to_string(),
                host: h,
                vcpus: v.def.vcpus,
                cpu_size: cores,
                demand,
                history: series.iter().copied().collect(),
                memory_mib: v.def.memory_mib,
                memory_reserved_mib: v.def.memory_mib,
                migrating_to: v.migration.as_ref().and_then(|m| index(&m.to)),
                // Disks on shared storage are not moved yet.
                pinned: v.state != VmState::Running
                    || v.def.storage == corral_api::Storage::Shared
                    || v.pending.is_some()
                    || self.is_busy(&v.def.name)
                    || !self.host_ready(&v.host),
            });
        }
        drop(hist);
        let mut hosts = vec![];
        for (i, r) in regs.iter().enumerate() {
            let flags = self.flags(&r.name)?;
            let on = flags.power == HostPower::On;
            let ready = self.host_ready(&r.name);
            // VMs that are not running (stopped, suspended) still live on the host's disk.
            let parked = vms.iter().any(|v| v.host == r.name && !v.state.holds_resources());
            hosts.push(HostSnapshot {
                name: r.name.clone(),
                cpu_capacity: f64::from(r.capacity.vcpus),
                core_capacity: 1.0,
                memory_mib: (r.capacity.memory_mib as f64 * self.settings.memory_overcommit) as u64,
                migration_mbps: MIGRATION_MBPS,
                // A nominal two-core server's SPECpower curve: watts are for comparing plans.
                power: PowerModel::hp_ml110_g5(),
                state: if on { PowerState::On } else { PowerState::Standby },
                cpu_used: used[i],
                // A standby host may be woken for VMs unless an operator cordoned it.
                // Nor a host that failed or is recovering from a failure (HA damping).
                schedulable: (ready || !on)
                    && !flags.cordoned
                    && flags.maintenance.is_none()
                    && flags.failed.is_none()
                    && !flags.recovering(),
                keep_on: settings.keep_on.contains(&r.name)
                    || parked
                    || !ready
                    || (lives_there[i] && !on)
                    || (on && self.on_for(&r.name).as_secs_f64() < STANDBY_AFTER_ROUNDS * settings.interval_s),
            });
        }
        let snap = Snapshot { hosts, vms: snap_vms, interval_s: settings.interval_s };
        snap.validate().map_err(|e| ApiError::internal(format!("DRS snapshot: {e}")))?;
        Ok(Pool { snap, host_names })
    }

    /// Carries a plan out: wake, migrate (at most `max_migrations`), and mark hosts for standby.
    async fn carry_out(self: &Arc<Self>, settings: &DrsSettings, round: &mut DrsRound, pool: &Pool) {
        for h in round.wake.clone() {
            match self.wake_host(&h).await {
                Ok(()) => round.notes.push(format!("woke {h}")),
                Err(e) => round.notes.push(format!("could not wake {h}: {}", e.message)),
            }
        }
        let mut started = 0;
        for m in &mut round.moves {
            if started >= settings.max_migrations {
                m.outcome = Some(format!("deferred: at most {} migrations per round", settings.max_migrations));
                continue;
            }
            let req = MigrateVm { to: Some(m.to.clone()), mode: MigrationMode::Auto, ..Default::default() };
            m.outcome = Some(match self.migrate_vm(&m.vm, req).await {
                Ok(mig) => {
                    started += 1;
                    mig.id
                }
                Err(e) => format!("not started: {}", e.message),
            });
        }
        let _ = pool;
        lock(&self.drs.to_standby).extend(round.standby.iter().cloned());
        self.finish_standby().await;
        for h in &round.standby {
            if self.flags(h).is_ok_and(|f| f.power == HostPower::Standby) {
                round.notes.push(format!("{h} in standby"));
            }
        }
    }
}

/// The policy the settings name, with the `corral` policy's thresholds applied.
fn policy_spec(s: &DrsSettings) -> Result<PolicySpec, ApiError> {
    let mut spec = PolicySpec::parse(&s.policy, s.param)
        .map_err(|e| bad(format!("policy {:?}: {e} (see `corral sim --help` for the names)", s.policy)))?;
    if let PolicySpec::Corral(p) = &mut spec {
        if let Some(t) = s.target {
            p.target = t;
        }
        if let Some(h) = s.high {
            p.high = h;
        }
        if p.target > p.high {
            return Err(bad(format!(
                "target {} is above high {}: placement would refill the hosts it relieves; keep target ≤ high",
                p.target, p.high
            )));
        }
    }
    spec.validate().map_err(|e| bad(format!("policy {:?}: {e}", s.policy)))?;
    Ok(spec)
}

fn summary(r: &DrsRound) -> String {
    let mut parts = vec![];
    if !r.wake.is_empty() {
        parts.push(format!("wake {}", r.wake.join(", ")));
    }
    for m in &r.moves {
        parts.push(format!("{} {} → {} ({})", m.vm, m.from, m.to, m.reason));
    }
    if !r.standby.is_empty() {
        parts.push(format!("standby {}", r.standby.join(", ")));
    }
    format!("{} ({}): {}", r.mode, if r.executed { "carried out" } else { "advice" }, parts.join("; "))
}
