//! The simulation: replays a trace on a mix, calling the scheduler core once per interval, and
//! meters energy and SLA the way CloudSim 3.0.3's `PowerDatacenter` and the examples' `Helper`
//! do, so that the numbers are comparable with the published ones.
//!
//! Timeline (CloudSim's): VMs are instantiated at time 0 and placed at their full size
//! ([`corral_sched::drs::place_initial`]); the scheduler runs at k·interval + 0.1 s for
//! k = 1 … samples−1 (CloudSim's first cloudlet event is at 0.1 s) and the run ends at
//! samples·interval (24 h). A VM's demand at time t is its trace interpolated linearly between
//! samples, times its size. Migrations start when planned and end after memory /
//! (bandwidth / 2) seconds; while one runs, the source grants the VM 90% of what it would
//! otherwise (the 10% loss counts in PDM), and the target holds 10% of it.
//!
//! Metering happens at every event (scheduling rounds and migration completions):
//! * energy: per host, the mean of the power at the previous and the current event's
//!   utilisation times the time between them; nothing while the host had no load (CloudSim:
//!   a host without load is switched off);
//! * SLATAH: the share of the time hosts were active during which they granted less CPU than
//!   their VMs requested (requests count in full on a migration's target, which grants 10%, as
//!   in CloudSim);
//! * PDM: the CPU requested but not granted to VMs while they migrate, over all CPU requested;
//! * SLAV = SLATAH × PDM; ESV = energy × SLAV.
//!
//! With `remove_idle_vms` (CloudSim's behaviour, on by default for the standard experiment) a
//! VM whose demand is exactly zero at an event is treated as finished and removed for the rest
//! of the run, as `PowerDatacenter` does with `getCompletedVms`.

use std::collections::VecDeque;
use std::time::Instant;

use corral_sched::drs::time_shared::{utilization, Request, TimeShared, Transit};
use corral_sched::drs::{
    self, HostSnapshot, NewVm, PolicySpec, PolicyState, PowerModel, PowerState, Snapshot, VmSnapshot,
};
use serde::Serialize;

use crate::mix::Mix;
use crate::trace::Trace;

/// CloudSim's phase: its scheduling events happen 0.1 s after each interval boundary.
const PHASE_S: f64 = 0.1;

/// How to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub policy: PolicySpec,
    /// Seed of the policy's random choices.
    pub seed: u64,
    /// Remove a VM for good when its demand is exactly zero (CloudSim's behaviour).
    pub remove_idle_vms: bool,
    /// History samples kept per VM and handed to the policy.
    pub history_len: usize,
    /// Check every plan against the scheduler's guarantees (fails the run on a violation;
    /// cheap: linear in hosts and VMs).
    pub check_plans: bool,
    /// Record per-interval series (active hosts, power, migrations) in the report.
    pub series: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: PolicySpec::default(),
            seed: 42,
            remove_idle_vms: true,
            history_len: 48,
            check_plans: true,
            series: false,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub policy: String,
    pub trace: String,
    pub hosts: usize,
    pub vms: usize,
    /// Scheduling rounds.
    pub intervals: usize,
    /// Simulated seconds metered (from the first round to the last event).
    pub metered_s: f64,
    pub energy_kwh: f64,
    /// Fractions (multiply by 100 for percent).
    pub slatah: f64,
    pub pdm: f64,
    pub slav: f64,
    /// Energy × SLAV.
    pub esv: f64,
    pub migrations: usize,
    /// Of which: off overloaded hosts, and off hosts being emptied.
    pub migrations_overload: usize,
    pub migrations_consolidate: usize,
    /// Placements a policy replaced within the same round (the VM moved once). CloudSim
    /// 3.0.3 would have executed each as one more migration.
    pub superseded_placements: usize,
    /// CPU requested but not granted, over CPU requested (all causes).
    pub sla_overall: f64,
    /// Time the policy took per round, milliseconds (wall clock, this process).
    pub policy_ms_mean: f64,
    pub policy_ms_max: f64,
    /// Hosts with load: time-weighted mean over the metered period, and the most at once.
    pub active_hosts_mean: f64,
    pub active_hosts_max: usize,
    /// Host wake-ups and standby entries over the run.
    pub wakes: usize,
    pub standbys: usize,
    /// VMs removed because their demand fell to zero (CloudSim's behaviour).
    pub vms_removed: usize,
    pub seed: u64,
    /// Per-round series, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
}

/// Per-round values.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Series {
    pub time_s: Vec<f64>,
    pub active_hosts: Vec<usize>,
    pub power_w: Vec<f64>,
    pub migrations: Vec<usize>,
    pub overloaded_hosts: Vec<usize>,
    /// CPU demanded by all VMs, and capacity of the hosts with load (CPU units).
    pub demand: Vec<f64>,
    pub active_capacity: Vec<f64>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the host mix cannot hold the VMs: VM #{index} ({trace_file}, type {vm_type:?}: {mips} MIPS x {vcpus} vCPU, {memory_mib} MiB) fits on no host once the VMs before it are placed at full size ({hosts} hosts, {host_mips} MIPS and {host_mib} MiB in total for {vms} VMs needing {vm_mips} MIPS and {vm_mib} MiB): add hosts or use smaller VM types")]
    CannotHold {
        index: usize,
        trace_file: String,
        vm_type: String,
        mips: f64,
        vcpus: u32,
        memory_mib: u64,
        hosts: usize,
        host_mips: f64,
        host_mib: u64,
        vms: usize,
        vm_mips: f64,
        vm_mib: u64,
    },
    #[error(
        "VM type {vm_type:?} needs {need} MIPS per vCPU but the fastest host core has {best} MIPS: no host can run it"
    )]
    VmTooBig { vm_type: String, need: f64, best: f64 },
    #[error("the trace has {0} samples per VM; at least 2 are needed")]
    TooShort(usize),
    #[error("scheduler: {0}")]
    Drs(#[from] drs::DrsError),
    #[error("round {round}: the plan broke a scheduler guarantee: {message}")]
    BadPlan { round: usize, message: String },
}

#[derive(Debug, Clone, Copy, Default)]
struct HState {
    util: f64,
    util_mips: f64,
    req: f64,
    active: bool,
}

#[derive(Debug, Clone, Copy)]
struct VState {
    alloc: f64,
    req: f64,
    out: bool,
}

struct HostRt {
    cap: f64,
    core: f64,
    memory_mib: u64,
    mbps: f64,
    power: PowerModel,
    list: Vec<usize>,
    standby: bool,
    pending_standby: bool,
    last: Option<HState>,
}

impl HostRt {
    /// The scheduler's view of this host (the `i`-th), in `state` with `cpu_used` busy.
    fn snapshot(&self, i: usize, state: PowerState, cpu_used: f64) -> HostSnapshot {
        HostSnapshot {
            name: format!("host{i}"),
            cpu_capacity: self.cap,
            core_capacity: self.core,
            memory_mib: self.memory_mib,
            migration_mbps: self.mbps,
            power: self.power.clone(),
            state,
            cpu_used,
            schedulable: true,
            keep_on: false,
        }
    }
}

struct VmRt {
    ty: usize,
    size: f64,
    vcpus: u32,
    memory_mib: u64,
    data: Vec<f64>,
    host: usize,
    alive: bool,
    hist: VecDeque<f64>,
    mig: Option<(usize, f64)>,
    last: Option<VState>,
}

struct Sim {
    interval: f64,
    remove_idle: bool,
    mem_enforced: bool,
    hosts: Vec<HostRt>,
    vms: Vec<VmRt>,
    last_t: f64,
    energy_ws: f64,
    sla_time: f64,
    active_time: f64,
    req_total: f64,
    alloc_total: f64,
    mig_under: f64,
    removed: usize,
    standbys: usize,
}

/// Utilisation at time `t` (CloudSim's `UtilizationModelPlanetLabInMemory.getUtilization`).
fn util_at(data: &[f64], t: f64, interval: f64) -> f64 {
    let last = data.len() - 1;
    if t % interval == 0.0 {
        return data[((t as i64) / (interval as i64)).clamp(0, last as i64) as usize];
    }
    let t1 = (t / interval).floor();
    let t2 = (t / interval).ceil();
    let u1 = data[(t1 as usize).min(last)];
    let u2 = data[(t2 as usize).min(last)];
    let delta = (u2 - u1) / ((t2 - t1) * interval);
    u1 + delta * (t - t1 * interval)
}

/// Runs `trace` on `mix` with `opts`.
pub fn simulate(trace: &Trace, mix: &Mix, opts: &Options) -> Result<Report, SimError> {
    opts.policy.validate().map_err(drs::DrsError::from)?;
    let samples = trace.vms.first().map_or(0, |v| v.samples.len());
    if samples < 2 {
        return Err(SimError::TooShort(samples));
    }
    let interval = mix.interval_s;
    let best_core = mix.hosts.iter().map(|h| h.core_mips).fold(0.0, f64::max);
    for v in &mix.vms {
        if v.mips > best_core {
            return Err(SimError::VmTooBig { vm_type: v.name.clone(), need: v.mips, best: best_core });
        }
    }

    // Hosts and VMs.
    let hosts: Vec<HostRt> = mix
        .host_layout()
        .into_iter()
        .map(|t| {
            let ht = &mix.hosts[t];
            let mut cap = 0.0;
            for _ in 0..ht.cores {
                cap += ht.core_mips;
            }
            HostRt {
                cap,
                core: ht.core_mips,
                memory_mib: ht.memory_mib,
                mbps: ht.bandwidth_mbps / 2.0,
                power: ht.power.clone(),
                list: Vec::new(),
                standby: true,
                pending_standby: false,
                last: None,
            }
        })
        .collect();
    let layout = mix.vm_layout(trace.vms.len());
    let mut vms: Vec<VmRt> = trace
        .vms
        .iter()
        .zip(&layout)
        .map(|(t, &ty)| {
            let vt = &mix.vms[ty];
            let mut data = t.samples.clone();
            data.push(*t.samples.last().unwrap_or(&0.0));
            VmRt {
                ty,
                size: vt.mips * f64::from(vt.vcpus),
                vcpus: vt.vcpus,
                memory_mib: vt.memory_mib,
                data,
                host: 0,
                alive: true,
                hist: VecDeque::with_capacity(opts.history_len + 1),
                mig: None,
                last: None,
            }
        })
        .collect();

    // Initial placement at full size.
    let host_snaps: Vec<HostSnapshot> =
        hosts.iter().enumerate().map(|(i, h)| h.snapshot(i, PowerState::On, 0.0)).collect();
    let new: Vec<NewVm> = vms.iter().map(|v| NewVm { cpu: v.size, vcpus: v.vcpus, memory_mib: v.memory_mib }).collect();
    let placed = drs::place_initial(&host_snaps, &new).map_err(|e| match e {
        drs::DrsError::NoRoom { index, .. } => {
            let vt = &mix.vms[vms[index].ty];
            SimError::CannotHold {
                index,
                trace_file: trace.vms[index].name.clone(),
                vm_type: vt.name.clone(),
                mips: vt.mips,
                vcpus: vt.vcpus,
                memory_mib: vt.memory_mib,
                hosts: hosts.len(),
                host_mips: hosts.iter().map(|h| h.cap).sum(),
                host_mib: hosts.iter().map(|h| h.memory_mib).sum(),
                vms: vms.len(),
                vm_mips: vms.iter().map(|v| v.size).sum(),
                vm_mib: vms.iter().map(|v| v.memory_mib).sum(),
            }
        }
        other => SimError::Drs(other),
    })?;
    let mut sim = Sim {
        interval,
        remove_idle: opts.remove_idle_vms,
        mem_enforced: mix.memory_enforced,
        hosts,
        vms: Vec::new(),
        last_t: 0.0,
        energy_ws: 0.0,
        sla_time: 0.0,
        active_time: 0.0,
        req_total: 0.0,
        alloc_total: 0.0,
        mig_under: 0.0,
        removed: 0,
        standbys: 0,
    };
    for (i, &h) in placed.iter().enumerate() {
        vms[i].host = h;
        sim.hosts[h].list.push(i);
        sim.hosts[h].standby = false;
    }
    sim.vms = vms;

    let mut state = PolicyState::new(opts.seed);
    let mut migrations = 0usize;
    let mut mig_over = 0usize;
    let mut mig_cons = 0usize;
    let mut superseded = 0usize;
    let mut wakes = 0usize;
    let mut policy_ms: Vec<f64> = Vec::new();
    let mut active: Vec<usize> = Vec::new();
    let mut series = opts.series.then(Series::default);
    let mut pending: Vec<(f64, usize)> = Vec::new();
    let end = samples as f64 * interval;
    let mut first_t = None;

    let mut k = 1usize;
    loop {
        let t = k as f64 * interval + PHASE_S;
        if t >= end {
            break;
        }
        // Migrations that end before this round.
        sim.complete_until(&mut pending, t);

        // The round's update: meter, record history, drop finished VMs.
        let demand = sim.demands(t);
        sim.meter(t, &demand);
        first_t.get_or_insert(t);
        for (i, v) in sim.vms.iter_mut().enumerate() {
            if v.alive {
                v.hist.push_back(demand[i]);
                if v.hist.len() > opts.history_len {
                    v.hist.pop_front();
                }
            }
        }
        sim.remove_idle(&demand);
        let (hs, _) = sim.states(&demand);

        // Plan.
        let (snap, vm_index) = sim.snapshot(&demand, &hs, opts.history_len);
        let t0 = Instant::now();
        let (plan, next) = drs::plan(&snap, &opts.policy, &state)?;
        policy_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        state = next;
        superseded += plan.superseded;
        if opts.check_plans {
            plan.check(&snap).map_err(|message| SimError::BadPlan { round: k, message })?;
        }

        // Execute: wake, migrate, mark for standby.
        for &h in &plan.wake {
            if sim.hosts[h].standby {
                sim.hosts[h].standby = false;
                wakes += 1;
            }
            sim.hosts[h].pending_standby = false;
        }
        for m in &plan.migrations {
            let v = vm_index[m.vm];
            let to = m.to;
            let secs = drs::migration_seconds(sim.vms[v].memory_mib, sim.hosts[to].mbps);
            sim.hosts[to].standby = false;
            sim.hosts[to].list.push(v);
            sim.vms[v].mig = Some((to, t + secs));
            pending.push((t + secs, v));
            migrations += 1;
            match m.reason {
                drs::Reason::Overload { .. } => mig_over += 1,
                drs::Reason::Consolidate { .. } => mig_cons += 1,
            }
        }
        for &h in &plan.standby {
            sim.hosts[h].pending_standby = true;
        }
        sim.settle_standby();
        let (hs, vs) = sim.states(&demand);
        sim.set_last(&hs, &vs);

        let n_active = hs.iter().filter(|h| h.active).count();
        active.push(n_active);
        if let Some(s) = series.as_mut() {
            s.time_s.push(t);
            s.active_hosts.push(n_active);
            s.power_w
                .push(hs.iter().zip(&sim.hosts).filter(|(h, _)| h.active).map(|(h, r)| r.power.watts(h.util)).sum());
            s.migrations.push(plan.migrations.len());
            s.overloaded_hosts.push(plan.overloaded.len());
            s.demand.push(demand.iter().sum());
            s.active_capacity.push(hs.iter().zip(&sim.hosts).filter(|(h, _)| h.active).map(|(_, r)| r.cap).sum());
        }
        k += 1;
    }
    sim.complete_until(&mut pending, end);

    let metered_s = first_t.map_or(0.0, |f| sim.last_t - f);
    let energy_kwh = sim.energy_ws / 3_600_000.0;
    let slatah = if sim.active_time > 0.0 { sim.sla_time / sim.active_time } else { 0.0 };
    let pdm = if sim.req_total > 0.0 { sim.mig_under / sim.req_total } else { 0.0 };
    let slav = slatah * pdm;
    let n_rounds = policy_ms.len();
    Ok(Report {
        policy: opts.policy.to_string(),
        trace: trace
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trace.dir.display().to_string()),
        hosts: sim.hosts.len(),
        vms: sim.vms.len(),
        intervals: n_rounds,
        metered_s,
        energy_kwh,
        slatah,
        pdm,
        slav,
        esv: energy_kwh * slav,
        migrations,
        migrations_overload: mig_over,
        migrations_consolidate: mig_cons,
        superseded_placements: superseded,
        sla_overall: if sim.req_total > 0.0 { (sim.req_total - sim.alloc_total) / sim.req_total } else { 0.0 },
        policy_ms_mean: if n_rounds > 0 { policy_ms.iter().sum::<f64>() / n_rounds as f64 } else { 0.0 },
        policy_ms_max: policy_ms.iter().copied().fold(0.0, f64::max),
        active_hosts_mean: if sim.last_t > first_t.unwrap_or(0.0) {
            sim.active_time / (sim.last_t - first_t.unwrap_or(0.0))
        } else {
            0.0
        },
        active_hosts_max: active.iter().copied().max().unwrap_or(0),
        wakes,
        standbys: sim.standbys,
        vms_removed: sim.removed,
        seed: opts.seed,
        series,
    })
}

impl Sim {
    fn demands(&self, t: f64) -> Vec<f64> {
        self.vms.iter().map(|v| if v.alive { util_at(&v.data, t, self.interval) * v.size } else { 0.0 }).collect()
    }

    /// Allocation on every host at the given demands (CloudSim's
    /// `VmSchedulerTimeSharedOverSubscription`, shared with the reference policies, and
    /// `HostDynamicWorkload.updateVmsProcessing`).
    fn states(&self, demand: &[f64]) -> (Vec<HState>, Vec<Option<VState>>) {
        let mut hs = Vec::with_capacity(self.hosts.len());
        let mut vs: Vec<Option<VState>> = vec![None; self.vms.len()];
        for (h, host) in self.hosts.iter().enumerate() {
            let request =
                |v: usize| Request { demand: demand[v], vcpus: self.vms[v].vcpus, transit: self.transit(v, h) };
            let sched = TimeShared::new(host.cap, host.core, host.list.iter().map(|&v| request(v)));
            let mut util_mips = 0.0;
            let mut req = 0.0;
            for &v in &host.list {
                let r = request(v);
                let mut alloc = sched.allocated(r);
                if r.transit != Transit::Arriving {
                    let out = r.transit == Transit::Leaving;
                    vs[v] = Some(VState { alloc, req: demand[v], out });
                    if out {
                        alloc /= 0.9;
                    }
                }
                util_mips += alloc;
                req += demand[v];
            }
            hs.push(HState { util: utilization(util_mips, host.cap), util_mips, req, active: util_mips > 0.0 });
        }
        (hs, vs)
    }

    /// Where VM `v` stands in a migration, seen from host `h` (one whose list it is on).
    fn transit(&self, v: usize, h: usize) -> Transit {
        match self.vms[v].mig {
            Some((to, _)) if to == h => Transit::Arriving,
            Some(_) => Transit::Leaving,
            None => Transit::Resident,
        }
    }

    /// Integrates the last recorded state up to `t`, with the state at `t` for energy.
    fn meter(&mut self, t: f64, demand: &[f64]) {
        let (pre, _) = self.states(demand);
        let dt = t - self.last_t;
        if dt > 0.0 {
            for (h, host) in self.hosts.iter().enumerate() {
                let Some(last) = host.last else { continue };
                if last.util != 0.0 {
                    let from = host.power.watts(last.util);
                    let to = host.power.watts(pre[h].util);
                    self.energy_ws += (from + (to - from) / 2.0) * dt;
                }
                if last.active {
                    self.active_time += dt;
                    if last.util_mips < last.req {
                        self.sla_time += dt;
                    }
                }
            }
            for vm in &self.vms {
                let Some(last) = vm.last else { continue };
                self.req_total += last.req * dt;
                self.alloc_total += last.alloc * dt;
                if last.out && last.alloc < last.req {
                    self.mig_under += (last.req - last.alloc) * dt;
                }
            }
        }
        self.last_t = t;
    }

    fn set_last(&mut self, hs: &[HState], vs: &[Option<VState>]) {
        for (host, s) in self.hosts.iter_mut().zip(hs) {
            host.last = Some(*s);
        }
        for (vm, s) in self.vms.iter_mut().zip(vs) {
            vm.last = if vm.alive { *s } else { None };
        }
    }

    /// CloudSim's `getCompletedVms`: a VM not migrating whose demand is exactly zero is gone.
    fn remove_idle(&mut self, demand: &[f64]) {
        if !self.remove_idle {
            return;
        }
        for (v, &d) in demand.iter().enumerate() {
            let vm = &self.vms[v];
            if vm.alive && vm.mig.is_none() && d == 0.0 {
                let h = vm.host;
                self.hosts[h].list.retain(|&x| x != v);
                self.vms[v].alive = false;
                self.vms[v].last = None;
                self.removed += 1;
            }
        }
    }

    fn settle_standby(&mut self) {
        for host in &mut self.hosts {
            if host.pending_standby && host.list.is_empty() {
                host.pending_standby = false;
                if !host.standby {
                    host.standby = true;
                    self.standbys += 1;
                }
            }
        }
    }

    /// Processes migration completions up to (and excluding) time `until`, event by event.
    fn complete_until(&mut self, pending: &mut Vec<(f64, usize)>, until: f64) {
        loop {
            let Some(t) = pending.iter().map(|p| p.0).filter(|&e| e < until).reduce(f64::min) else { return };
            let demand = self.demands(t);
            self.meter(t, &demand);
            self.remove_idle(&demand);
            let done: Vec<usize> = pending.iter().filter(|p| p.0 == t).map(|p| p.1).collect();
            pending.retain(|p| p.0 != t);
            for v in done {
                let Some((to, _)) = self.vms[v].mig.take() else { continue };
                let from = self.vms[v].host;
                self.hosts[from].list.retain(|&x| x != v);
                self.hosts[to].list.retain(|&x| x != v);
                self.hosts[to].list.push(v);
                self.vms[v].host = to;
            }
            self.remove_idle(&demand);
            self.settle_standby();
            let (hs, vs) = self.states(&demand);
            self.set_last(&hs, &vs);
        }
    }

    /// The scheduler's view now. Returns the snapshot and, per snapshot VM, the simulator's VM.
    fn snapshot(&self, demand: &[f64], hs: &[HState], history_len: usize) -> (Snapshot, Vec<usize>) {
        let hosts: Vec<HostSnapshot> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let state = if h.standby && h.list.is_empty() { PowerState::Standby } else { PowerState::On };
                h.snapshot(i, state, hs[i].util_mips)
            })
            .collect();
        // VMs host by host in arrival order, so the scheduler sees each host's VMs in order.
        let mut vms = Vec::new();
        let mut index = Vec::new();
        for (h, host) in self.hosts.iter().enumerate() {
            for &v in &host.list {
                let vm = &self.vms[v];
                if vm.host != h || !vm.alive {
                    continue;
                }
                let keep = vm.hist.len().min(history_len);
                vms.push(VmSnapshot {
                    name: format!("vm{v}"),
                    host: h,
                    vcpus: vm.vcpus,
                    cpu_size: vm.size,
                    demand: demand[v],
                    history: vm.hist.iter().skip(vm.hist.len() - keep).copied().collect(),
                    memory_mib: vm.memory_mib,
                    memory_reserved_mib: if self.mem_enforced { vm.memory_mib } else { 0 },
                    migrating_to: vm.mig.map(|m| m.0),
                    pinned: false,
                });
                index.push(v);
            }
        }
        (Snapshot { hosts, vms, interval_s: self.interval }, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_like_cloudsim() {
        let d = [0.1, 0.3, 0.3];
        assert_eq!(util_at(&d, 0.0, 300.0), 0.1);
        assert_eq!(util_at(&d, 300.0, 300.0), 0.3);
        assert!((util_at(&d, 150.0, 300.0) - 0.2).abs() < 1e-12);
        assert_eq!(util_at(&d, 10_000.0, 300.0), 0.3);
    }
}
