//! The reference policies of Beloglazov & Buyya (2012) with the semantics of CloudSim 3.0.3's
//! `PowerVmAllocationPolicyMigrationAbstract` and its subclasses, step for step:
//!
//! 1. every host is tested with the overload detector; a host with too little history falls
//!    back to a static threshold of 0.7, as CloudSim's runners configure it;
//! 2. from each overloaded host (in host order) VMs are chosen one at a time by the selection
//!    policy and taken off until the detector no longer fires;
//! 3. those VMs, by decreasing CPU demand, go to the host whose power grows least (PABFD),
//!    among hosts that are not overloaded, have the CPU (per core and in total) and would not
//!    be found overloaded with the VM; hosts that are off (no load) take VMs without that last
//!    test, and are woken;
//! 4. then, lowest utilisation first, every remaining loaded host is tried for evacuation: if
//!    all its VMs find a place (same PABFD, excluding overloaded, off and already tried hosts)
//!    they are moved and the host goes to standby, else nothing moves; hosts that received
//!    VMs are not evacuated.
//!
//! CloudSim details kept on purpose, because they shape the published numbers: the power
//! increase of a candidate host is computed from its *measured* utilisation, not counting VMs
//! this round has already put there; host utilisation history is the sum of the histories of
//! the VMs on it now (history travels with a VM); the detectors' statistics are Commons Math's.
//! One deliberate difference: CloudSim can emit two migrations for one VM (placed off an
//! overloaded host, then moved again when its new host is evacuated); here the second
//! placement replaces the first, so a VM moves once per round.

use super::stats;
use super::time_shared::{utilization, Request, TimeShared, Transit};
use super::{
    migration_seconds, Detector, DrsError, HostSnapshot, Migration, NewVm, Plan, PolicyState, PowerState, Reason,
    Selection, Snapshot,
};
use crate::rng::SplitMix64;

/// CloudSim's `PowerVm.HISTORY_LENGTH`.
const HISTORY_LENGTH: usize = 30;
/// Samples the local regression looks at.
const LR_LENGTH: usize = 10;
/// Samples MAD and IQR need before they replace the fallback threshold.
const MAD_MIN: usize = 12;
/// The static threshold used while history is short.
const FALLBACK_THR: f64 = 0.7;

struct Eng<'a> {
    s: &'a Snapshot,
    det: Detector,
    sel: Selection,
    rng: SplitMix64,
    /// Host → VMs on it, in arrival order (VMs migrating in included).
    list: Vec<Vec<usize>>,
    /// Host → CPU not yet promised (CloudSim's `VmScheduler.getAvailableMips`).
    avail: Vec<f64>,
    mem_used: Vec<u64>,
    /// CloudSim's `getUtilizationOfCpu`: measured CPU use over capacity.
    util: Vec<f64>,
    /// VM → its history, latest first, at most [`HISTORY_LENGTH`] samples.
    hist: Vec<Vec<f64>>,
    /// VM → length of its history without trailing (oldest) zeros.
    nz: Vec<usize>,
}

pub(crate) fn plan(s: &Snapshot, det: Detector, sel: Selection, state: &mut PolicyState) -> Plan {
    let nh = s.hosts.len();
    let nv = s.vms.len();
    let mut list: Vec<Vec<usize>> = vec![Vec::new(); nh];
    for (i, v) in s.vms.iter().enumerate() {
        list[v.host].push(i);
    }
    for (i, v) in s.vms.iter().enumerate() {
        if let Some(t) = v.migrating_to {
            list[t].push(i);
        }
    }
    let hist: Vec<Vec<f64>> =
        s.vms.iter().map(|v| v.history.iter().rev().take(HISTORY_LENGTH).copied().collect()).collect();
    let nz = hist.iter().map(|h| h.iter().rposition(|&x| x != 0.0).map_or(0, |p| p + 1)).collect();
    let util = s.hosts.iter().map(|h| utilization(h.cpu_used, h.cpu_capacity)).collect();
    let mem_used = (0..nh).map(|h| list[h].iter().map(|&v| s.vms[v].memory_reserved_mib).sum()).collect();
    let mut e =
        Eng { s, det, sel, rng: SplitMix64::new(state.rng), list, avail: vec![0.0; nh], mem_used, util, hist, nz };
    for h in 0..nh {
        e.recompute_avail(h);
    }

    // 1. Overloaded hosts.
    let over_hosts: Vec<usize> = (0..nh).filter(|&h| e.is_over(h)).collect();
    let limits: Vec<(f64, f64)> =
        over_hosts.iter().map(|&h| (e.demand_sum(h) / s.hosts[h].cpu_capacity, e.limit(h))).collect();
    let mut excl = vec![false; nh];
    for &h in &over_hosts {
        excl[h] = true;
    }

    // 2. VM selection.
    let mut to_migrate: Vec<usize> = Vec::new();
    for &h in &over_hosts {
        while let Some(v) = e.select(h) {
            e.remove(v, h);
            to_migrate.push(v);
            if !e.is_over(h) {
                break;
            }
        }
    }

    // 3. Placement (PABFD).
    let mut target: Vec<Option<usize>> = vec![None; nv];
    let mut reason: Vec<Option<Reason>> = vec![None; nv];
    let mut order: Vec<usize> = Vec::new();
    to_migrate.sort_by(|&a, &b| s.vms[b].demand.total_cmp(&s.vms[a].demand));
    for &v in &to_migrate {
        if let Some(t) = e.pabfd(v, &excl) {
            e.add(v, t);
            target[v] = Some(t);
            let i = over_hosts.iter().position(|&h| h == s.vms[v].host).unwrap_or(0);
            let (load, limit) = limits.get(i).copied().unwrap_or((0.0, 1.0));
            reason[v] = Some(Reason::Overload { load, limit });
            order.push(v);
        }
    }

    // 4. Underload consolidation.
    let mut excl_under = excl.clone();
    let mut excl_place = excl;
    for h in 0..nh {
        if e.util[h] == 0.0 {
            excl_under[h] = true;
            excl_place[h] = true;
        }
    }
    let mut excluded = excl_under.iter().filter(|&&x| x).count();
    let mut superseded = 0usize;
    while excluded < nh {
        let mut best: Option<usize> = None;
        let mut min_u = 1.0;
        for (h, &excluded_h) in excl_under.iter().enumerate() {
            if excluded_h {
                continue;
            }
            let u = e.util[h];
            if u > 0.0 && u < min_u && !e.all_migrating(h) {
                min_u = u;
                best = Some(h);
            }
        }
        let Some(u) = best else { break };
        excl_under[u] = true;
        excluded += 1;
        excl_place[u] = true;
        let mut vms: Vec<usize> = e.list[u].iter().copied().filter(|&v| s.vms[v].migrating_to.is_none()).collect();
        if vms.is_empty() || vms.iter().any(|&v| s.vms[v].pinned) {
            continue;
        }
        vms.sort_by(|&a, &b| s.vms[b].demand.total_cmp(&s.vms[a].demand));
        let mut tentative: Vec<(usize, usize)> = Vec::new();
        let mut ok = true;
        for &v in &vms {
            if let Some(t) = e.pabfd(v, &excl_place) {
                e.add(v, t);
                tentative.push((v, t));
            } else {
                ok = false;
                break;
            }
        }
        if !ok {
            for &(v, t) in &tentative {
                e.remove(v, t);
            }
            continue;
        }
        let saves = s.hosts[u].power.idle();
        for &(v, t) in &tentative {
            if !excl_under[t] {
                excl_under[t] = true;
                excluded += 1;
            }
            if let Some(old) = target[v] {
                // Placed off an overloaded host earlier this round: it now goes elsewhere.
                superseded += 1;
                e.list[old].retain(|&x| x != v);
            } else {
                order.push(v);
                e.list[u].retain(|&x| x != v);
            }
            target[v] = Some(t);
            reason[v] = Some(Reason::Consolidate { saves_watts: saves });
        }
    }

    state.rng = e.rng.state();
    let mut plan = finish(s, &order, &target, &reason, over_hosts);
    plan.superseded = superseded;
    plan
}

/// Builds the plan from the chosen targets: migrations in decision order, hosts to wake (in
/// standby and receiving VMs) and hosts to put in standby (on, ending empty).
pub(crate) fn finish(
    s: &Snapshot,
    order: &[usize],
    target: &[Option<usize>],
    reason: &[Option<Reason>],
    overloaded: Vec<usize>,
) -> Plan {
    let nh = s.hosts.len();
    let mut count = vec![0usize; nh];
    for v in &s.vms {
        count[v.host] += 1;
        if let Some(t) = v.migrating_to {
            count[t] += 1;
        }
    }
    let mut migrations = Vec::with_capacity(order.len());
    let mut wake = Vec::new();
    for &v in order {
        let (Some(to), Some(why)) = (target[v], reason[v]) else { continue };
        let vm = &s.vms[v];
        count[vm.host] -= 1;
        count[to] += 1;
        if s.hosts[to].state == PowerState::Standby && !wake.contains(&to) {
            wake.push(to);
        }
        migrations.push(Migration {
            vm: v,
            from: vm.host,
            to,
            reason: why,
            seconds: migration_seconds(vm.memory_mib, s.hosts[to].migration_mbps),
        });
    }
    let standby =
        (0..nh).filter(|&h| s.hosts[h].state == PowerState::On && !s.hosts[h].keep_on && count[h] == 0).collect();
    wake.sort_unstable();
    Plan { migrations, wake, standby, overloaded, superseded: 0 }
}

impl Eng<'_> {
    /// CPU VM `v` can get on host `h`: its demand capped at vCPUs × the host's core capacity.
    fn capped(&self, v: usize, h: usize) -> f64 {
        let vm = &self.s.vms[v];
        let cores = f64::from(vm.vcpus.max(1));
        let per = vm.demand / cores;
        let core = self.s.hosts[h].core_capacity;
        if per > core {
            core * cores
        } else {
            per * cores
        }
    }

    fn recompute_avail(&mut self, h: usize) {
        let mut a = self.s.hosts[h].cpu_capacity;
        let mut over = false;
        for &v in &self.list[h] {
            let c = self.capped(v, h);
            if !over && a >= c {
                a -= c;
            } else {
                over = true;
            }
        }
        self.avail[h] = if over { 0.0 } else { a };
    }

    fn add(&mut self, v: usize, h: usize) {
        self.list[h].push(v);
        let c = self.capped(v, h);
        if self.avail[h] >= c {
            self.avail[h] -= c;
        } else {
            self.avail[h] = 0.0;
        }
        self.mem_used[h] += self.s.vms[v].memory_reserved_mib;
    }

    fn remove(&mut self, v: usize, h: usize) {
        self.list[h].retain(|&x| x != v);
        self.recompute_avail(h);
        self.mem_used[h] = self.mem_used[h].saturating_sub(self.s.vms[v].memory_reserved_mib);
    }

    fn in_migration(&self, v: usize) -> bool {
        self.s.vms[v].migrating_to.is_some()
    }

    /// CloudSim's `areAllVmsMigratingOutOrAnyVmMigratingIn`.
    fn all_migrating(&self, h: usize) -> bool {
        for &v in &self.list[h] {
            if !self.in_migration(v) {
                return false;
            }
            if self.s.vms[v].migrating_to == Some(h) {
                return true;
            }
        }
        true
    }

    fn demand_sum(&self, h: usize) -> f64 {
        let mut t = 0.0;
        for &v in &self.list[h] {
            t += self.s.vms[v].demand;
        }
        t
    }

    /// The host's utilisation history (latest first), as the sum over its VMs of their
    /// histories over its capacity: (trimmed length, first `need` values).
    fn host_history(&self, h: usize, need: usize) -> (usize, Vec<f64>) {
        let len = self.list[h].iter().map(|&v| self.nz[v]).max().unwrap_or(0);
        let k = need.min(len);
        let cap = self.s.hosts[h].cpu_capacity;
        let mut out = vec![0.0; k];
        for &v in &self.list[h] {
            for (i, &x) in self.hist[v].iter().take(k).enumerate() {
                out[i] += x / cap;
            }
        }
        (len, out)
    }

    fn thr(&self, h: usize, t: f64) -> bool {
        self.demand_sum(h) / self.s.hosts[h].cpu_capacity > t
    }

    fn is_over(&self, h: usize) -> bool {
        if self.s.hosts[h].cpu_capacity <= 0.0 {
            return false;
        }
        match self.det {
            Detector::Thr(t) => self.thr(h, t),
            Detector::Mad(sp) | Detector::Iqr(sp) => {
                let (len, hh) = self.host_history(h, HISTORY_LENGTH);
                if len < MAD_MIN {
                    return self.thr(h, FALLBACK_THR);
                }
                let spread = if matches!(self.det, Detector::Mad(_)) { stats::mad(&hh) } else { stats::iqr(&hh) };
                self.thr(h, 1.0 - sp * spread)
            }
            Detector::Lr(sp) | Detector::Lrr(sp) => {
                let (len, hh) = self.host_history(h, LR_LENGTH);
                if len < LR_LENGTH {
                    return self.thr(h, FALLBACK_THR);
                }
                let y: Vec<f64> = hh.iter().rev().copied().collect();
                let fit = if matches!(self.det, Detector::Lr(_)) {
                    stats::ols_on_index(&y)
                } else {
                    stats::robust_on_index(&y)
                };
                let Some((a, b)) = fit else { return self.thr(h, FALLBACK_THR) };
                let host = &self.s.hosts[h];
                let max_mem = self.list[h].iter().map(|&v| self.s.vms[v].memory_mib).max().unwrap_or(0);
                let mig_s = migration_seconds(max_mem, host.migration_mbps);
                let intervals =
                    if self.s.interval_s > 0.0 && mig_s.is_finite() { (mig_s / self.s.interval_s).ceil() } else { 1.0 };
                let predicted = (a + b * (LR_LENGTH as f64 + intervals)) * sp;
                predicted >= 1.0
            }
        }
    }

    /// The utilisation limit the detector applies to host `h` (for display).
    fn limit(&self, h: usize) -> f64 {
        match self.det {
            Detector::Thr(t) => t,
            Detector::Mad(sp) | Detector::Iqr(sp) => {
                let (len, hh) = self.host_history(h, HISTORY_LENGTH);
                if len < MAD_MIN {
                    FALLBACK_THR
                } else if matches!(self.det, Detector::Mad(_)) {
                    1.0 - sp * stats::mad(&hh)
                } else {
                    1.0 - sp * stats::iqr(&hh)
                }
            }
            Detector::Lr(sp) | Detector::Lrr(sp) => 1.0 / sp,
        }
    }

    /// Picks the next VM to take off overloaded host `h`.
    fn select(&mut self, h: usize) -> Option<usize> {
        let vms: Vec<usize> =
            self.list[h].iter().copied().filter(|&v| !self.in_migration(v) && !self.s.vms[v].pinned).collect();
        if vms.is_empty() {
            return None;
        }
        match self.sel {
            Selection::Mmt => Some(self.min_by(&vms, |v| v.memory_mib as f64)),
            Selection::Mu => Some(self.min_by(&vms, |v| v.demand)),
            Selection::Rs => Some(vms[self.rng.below(vms.len())]),
            Selection::Mc => {
                let m = vms.iter().map(|&v| self.hist[v].len()).min().unwrap_or(0);
                // Regressing each VM on the n − 1 others needs m > n samples.
                if vms.len() < 2 || m <= vms.len() {
                    return Some(self.min_by(&vms, |v| v.memory_mib as f64));
                }
                let mut best = 0;
                let mut max = f64::MIN_POSITIVE;
                for (i, &v) in vms.iter().enumerate() {
                    let y = &self.hist[v][..m];
                    let xs: Vec<&[f64]> =
                        vms.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &w)| &self.hist[w][..m]).collect();
                    if let Some(r2) = stats::r_squared(y, &xs) {
                        if r2 > max {
                            max = r2;
                            best = i;
                        }
                    }
                }
                Some(vms[best])
            }
        }
    }

    fn min_by(&self, vms: &[usize], key: impl Fn(&super::VmSnapshot) -> f64) -> usize {
        let mut best = vms[0];
        let mut min = f64::MAX;
        for &v in vms {
            let k = key(&self.s.vms[v]);
            if k < min {
                min = k;
                best = v;
            }
        }
        best
    }

    fn suitable(&self, v: usize, h: usize) -> bool {
        let host = &self.s.hosts[h];
        let vm = &self.s.vms[v];
        host.schedulable
            && vm.demand / f64::from(vm.vcpus.max(1)) <= host.core_capacity
            && self.avail[h] >= vm.demand
            && self.mem_used[h] + vm.memory_reserved_mib <= host.memory_mib
    }

    fn over_after(&mut self, v: usize, h: usize) -> bool {
        let (a, m) = (self.avail[h], self.mem_used[h]);
        self.list[h].push(v);
        let over = self.is_over(h);
        self.list[h].pop();
        self.avail[h] = a;
        self.mem_used[h] = m;
        over
    }

    /// CPU the host's scheduler ([`TimeShared`], the simulator's too) has handed out to the VMs
    /// now on its list, counting a VM migrating in at what it will use once there: CloudSim 3.0.3's
    /// `getUtilizationOfCpuMips(host)`, which (unlike the measured utilisation) sees the VMs
    /// this round has already placed or taken off.
    fn allocated(&self, h: usize) -> f64 {
        let host = &self.s.hosts[h];
        let sched =
            TimeShared::new(host.cpu_capacity, host.core_capacity, self.list[h].iter().map(|&v| self.request(v, h)));
        let mut total = 0.0;
        for &v in &self.list[h] {
            let r = self.request(v, h);
            let alloc = sched.allocated(r);
            if r.transit == Transit::Arriving {
                total += alloc * 0.9 / 0.1;
            }
            total += alloc;
        }
        total
    }

    /// VM `v`'s request to the scheduler of host `h`, one of the hosts whose list it is on.
    fn request(&self, v: usize, h: usize) -> Request {
        let vm = &self.s.vms[v];
        let transit = match vm.migrating_to {
            Some(t) if t == h => Transit::Arriving,
            Some(_) => Transit::Leaving,
            None => Transit::Resident,
        };
        Request { demand: vm.demand, vcpus: vm.vcpus, transit }
    }

    /// Power-aware best fit: the host whose power grows least, first on ties.
    fn pabfd(&mut self, v: usize, excluded: &[bool]) -> Option<usize> {
        let mut best = None;
        let mut min = f64::MAX;
        let demand = self.s.vms[v].demand;
        for (h, &excluded_h) in excluded.iter().enumerate() {
            if excluded_h || !self.suitable(v, h) {
                continue;
            }
            let used = self.allocated(h);
            if used != 0.0 && self.over_after(v, h) {
                continue;
            }
            let host = &self.s.hosts[h];
            let after = (used + demand) / host.cpu_capacity;
            let diff = host.power.watts(after) - host.power.watts(self.util[h]);
            if diff < min {
                min = diff;
                best = Some(h);
            }
        }
        best
    }
}

pub(crate) fn place_initial(hosts: &[HostSnapshot], vms: &[NewVm]) -> Result<Vec<usize>, DrsError> {
    let mut avail: Vec<f64> = hosts.iter().map(|h| h.cpu_capacity).collect();
    let mut mem: Vec<u64> = hosts.iter().map(|h| h.memory_mib).collect();
    let mut out = Vec::with_capacity(vms.len());
    for (i, vm) in vms.iter().enumerate() {
        let mut best = None;
        let mut min = f64::MAX;
        for (h, host) in hosts.iter().enumerate() {
            if !host.schedulable
                || vm.cpu / f64::from(vm.vcpus.max(1)) > host.core_capacity
                || avail[h] < vm.cpu
                || mem[h] < vm.memory_mib
                || host.cpu_capacity <= 0.0
            {
                continue;
            }
            let diff = host.power.watts(vm.cpu / host.cpu_capacity) - host.power.watts(0.0);
            if diff < min {
                min = diff;
                best = Some(h);
            }
        }
        let h = best.ok_or(DrsError::NoRoom { index: i, cpu: vm.cpu, memory_mib: vm.memory_mib })?;
        avail[h] -= vm.cpu;
        mem[h] -= vm.memory_mib;
        out.push(h);
    }
    Ok(out)
}
