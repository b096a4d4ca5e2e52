//! Corral's default policy: consolidate onto as few, as efficient hosts as the *forecast*
//! demand allows, move as few VMs as possible, and never move a VM back and forth.
//!
//! Forecast. A host's demand over the next interval is forecast from the sum of the recent
//! histories of the VMs on it (history travels with a VM): the `quantile` of that summed series
//! over the last `window` samples, and never less than the demand now. Working on the sum, not
//! on per-VM forecasts added up, accounts for correlation: VMs that peak together push the
//! quantile up, VMs that take turns do not. A VM with less history than the window is padded
//! with its demand now.
//!
//! Each round, in order:
//! 1. **Relief.** A host is hot when its demand now exceeds `high` × capacity, or its forecast
//!    exceeds its capacity, or a VM wants more than the host's cores can give it. VMs are moved
//!    off a hot host until its forecast is back under `target` × capacity, each time the VM
//!    that achieves it with the least memory to copy (one big-enough VM rather than several
//!    small ones), or failing that the one that sheds most forecast per MiB; VMs moved in the
//!    last `cooldown` rounds only if nothing else will do.
//! 2. **Consolidation**, only when it pays: while the powered hosts would keep `spare` hosts'
//!    worth of room under the target without it, the host that frees the most watts per second
//!    of migration is emptied — if every VM finds a place, else nothing of it moves. Hosts with
//!    more than `evacuate_vms` VMs, hosts woken, relieved or receiving VMs recently, and VMs
//!    moved in the last `cooldown` rounds are left alone (hysteresis); at most `evacuations`
//!    hosts are emptied per round, unless the pool is less than half used (as after a start at
//!    full VM size), when all of these limits are lifted.
//! 3. **Placement** of every moved VM: the tightest fit by forecast (the host whose forecast
//!    after the move is highest without exceeding `target`), among powered hosts; for relief,
//!    failing that, the least loaded powered host that stays under `high`; only then is a
//!    standby host woken — the most efficient one (fewest watts per unit of capacity at the
//!    target). Consolidation never wakes a host.
//! 4. **Standby** for every host left empty.
//!
//! Cost per round, for H hosts, V VMs and window W: O(V·W) to build the forecasts, then
//! O(H) per VM placed (a linear scan with cheap bounds before any quantile is computed).

use std::collections::BTreeSet;

use super::reference::finish;
use super::stats;
use super::{CorralParams, Plan, PolicyState, PowerState, Reason, Snapshot};
use crate::slot::ordered;

/// A host's key in the best-fit index: forecast room, watts per capacity (both as ordered
/// bits), index.
type Key = (u64, u64, usize);

/// Exact fit tests per placement among hosts whose room is close to the VM's size.
const EXACT_TESTS: usize = 48;
/// Hosts with forecast room to spare that a placement examines, at most, for other resources
/// (memory, cores) before giving up.
const ROOMY_TESTS: usize = 512;

struct Eng<'a> {
    s: &'a Snapshot,
    p: &'a CorralParams,
    round: u64,
    state: &'a PolicyState,
    /// Per VM: its last `window` samples (padded), oldest first; their min and max (with the
    /// demand now); and its own forecast.
    series: Vec<Vec<f64>>,
    vmin: Vec<f64>,
    vmax: Vec<f64>,
    vfc: Vec<f64>,
    /// Per host: VMs on it (updated as the plan goes), summed series, demand now, memory,
    /// and the forecast (cached).
    vms: Vec<Vec<usize>>,
    agg: Vec<Vec<f64>>,
    demand: Vec<f64>,
    mem: Vec<u64>,
    fc: Vec<f64>,
    on: Vec<bool>,
    /// Powered hosts by forecast room under the target, then watts per capacity, then index,
    /// one such index per memory level: a host is filed in every level whose threshold its
    /// free memory reaches, so best fit is a range query in the VM's level. `levels` are the
    /// thresholds (the distinct memory reservations of the VMs, ascending), `vm_level` each
    /// VM's, `key` the key and number of levels each host is filed under.
    index: Vec<BTreeSet<Key>>,
    levels: Vec<u64>,
    vm_level: Vec<usize>,
    key: Vec<Option<(Key, usize)>>,
    eff: Vec<f64>,
    /// Hosts that may not be emptied this round (received VMs, hot, just woken, ...).
    keep: Vec<bool>,
    /// Hosts being emptied this round: take no VMs.
    evacuating: Vec<bool>,
    target: Vec<Option<usize>>,
    reason: Vec<Option<Reason>>,
    order: Vec<usize>,
    woken_now: Vec<usize>,
    /// While the snapshot is loaded: forecasts and indexes are built once at the end.
    loading: bool,
}

pub(crate) fn plan(s: &Snapshot, p: &CorralParams, state: &mut PolicyState) -> Plan {
    let round = state.round;
    let nh = s.hosts.len();
    let w = p.window.max(1);
    let series: Vec<Vec<f64>> = s
        .vms
        .iter()
        .map(|v| {
            let have = v.history.len().min(w);
            let mut h = vec![v.demand; w - have];
            h.extend_from_slice(&v.history[v.history.len() - have..]);
            h
        })
        .collect();
    let vmin = series.iter().zip(&s.vms).map(|(x, v)| x.iter().copied().fold(v.demand, f64::min)).collect();
    let vmax = series.iter().zip(&s.vms).map(|(x, v)| x.iter().copied().fold(v.demand, f64::max)).collect();
    let vfc = series.iter().zip(&s.vms).map(|(x, v)| stats::quantile(x, p.quantile).max(v.demand)).collect();
    // Memory levels: the distinct reservations (rounded up to powers of two past 16 values).
    let mut levels: Vec<u64> = s.vms.iter().map(|v| v.memory_reserved_mib).collect();
    levels.sort_unstable();
    levels.dedup();
    if levels.len() > 16 {
        let mut pow: Vec<u64> = levels.iter().map(|&m| if m == 0 { 0 } else { m.next_power_of_two() }).collect();
        pow.dedup();
        levels = pow;
    }
    if levels.first() != Some(&0) {
        levels.insert(0, 0);
    }
    let vm_level: Vec<usize> =
        s.vms.iter().map(|v| levels.partition_point(|&l| l < v.memory_reserved_mib).min(levels.len() - 1)).collect();
    let plan = {
        let frozen: &PolicyState = state;
        let mut e = Eng {
            s,
            p,
            round,
            state: frozen,
            series,
            vmin,
            vmax,
            vfc,
            vms: vec![Vec::new(); nh],
            agg: vec![vec![0.0; w]; nh],
            demand: vec![0.0; nh],
            mem: vec![0; nh],
            fc: vec![0.0; nh],
            on: s.hosts.iter().map(|h| h.state == PowerState::On).collect(),
            index: vec![BTreeSet::new(); levels.len()],
            levels,
            vm_level,
            key: vec![None; nh],
            eff: s.hosts.iter().map(|h| h.power.watts(p.target) / h.cpu_capacity.max(1e-9)).collect(),
            keep: vec![false; nh],
            evacuating: vec![false; nh],
            target: vec![None; s.vms.len()],
            reason: vec![None; s.vms.len()],
            order: Vec::new(),
            woken_now: Vec::new(),
            loading: true,
        };
        e.load();
        let overloaded = e.relieve();
        e.consolidate();
        (finish(s, &e.order, &e.target, &e.reason, overloaded), e.order, e.target, e.woken_now)
    };
    let (plan, order, target, woken_now) = plan;

    // Remember what was moved and woken, and forget what no longer matters.
    for &v in &order {
        if target[v].is_some() {
            state.last_moved.insert(s.vms[v].name.clone(), round);
        }
    }
    for &h in &woken_now {
        state.woken.insert(s.hosts[h].name.clone(), round);
    }
    let horizon = p.cooldown.max(1);
    state.last_moved.retain(|_, r| round.saturating_sub(*r) < horizon);
    state.woken.retain(|_, r| round.saturating_sub(*r) < horizon);
    plan
}

impl Eng<'_> {
    /// Puts every VM on its host (and on its target, if migrating) and marks the hosts that
    /// must not be emptied.
    fn load(&mut self) {
        let s = self.s;
        for (i, v) in s.vms.iter().enumerate() {
            self.attach(i, v.host);
            if let Some(t) = v.migrating_to {
                // In flight: it occupies its target too; neither end is emptied this round.
                self.attach(i, t);
                self.keep[v.host] = true;
                self.keep[t] = true;
            }
        }
        self.loading = false;
        for h in 0..s.hosts.len() {
            if !self.vms[h].is_empty() {
                self.fc[h] = self.forecast_of(&self.agg[h], self.demand[h]);
            }
            self.reindex(h);
        }
        for (h, host) in s.hosts.iter().enumerate() {
            let recently_woken =
                self.state.woken.get(&host.name).is_some_and(|&r| self.round.saturating_sub(r) < self.p.cooldown);
            if recently_woken || host.keep_on || !host.schedulable {
                self.keep[h] = true;
            }
        }
    }

    /// Step 1: relieves hot hosts; returns them, hottest first.
    fn relieve(&mut self) -> Vec<usize> {
        let s = self.s;
        let p = self.p;
        let mut hot: Vec<(f64, usize)> = Vec::new();
        for h in 0..s.hosts.len() {
            if !self.on[h] || self.vms[h].is_empty() {
                continue;
            }
            let cap = s.hosts[h].cpu_capacity;
            let starved = self.vms[h].iter().any(|&v| s.vms[v].host == h && self.core_short(v, h));
            if self.demand[h] > p.high * cap || self.fc[h] > cap || starved {
                hot.push((self.fc[h] / cap.max(1e-9), h));
            }
        }
        hot.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, h) in &hot {
            self.keep[h] = true;
            let why = Reason::Overload { load: self.demand[h] / s.hosts[h].cpu_capacity, limit: p.high };
            // VMs whose vCPUs the host cannot serve go first.
            let starved: Vec<usize> =
                self.vms[h].iter().copied().filter(|&v| s.vms[v].host == h && self.core_short(v, h)).collect();
            for v in starved {
                if self.movable(v) {
                    self.relocate(v, h, why);
                }
            }
            for _ in 0..64 {
                if self.fc[h] <= p.target * s.hosts[h].cpu_capacity {
                    break;
                }
                let Some(v) = self.pick_relief(h) else { break };
                if !self.relocate(v, h, why) {
                    break;
                }
            }
        }
        hot.into_iter().map(|(_, h)| h).collect()
    }

    /// Step 2: empties hosts while it pays.
    fn consolidate(&mut self) {
        let s = self.s;
        let p = self.p;
        let nh = s.hosts.len();
        let room = |e: &Self, h: usize| (p.target * s.hosts[h].cpu_capacity - e.fc[h]).max(0.0);
        let takes_vms = |e: &Self, h: usize| e.consolidation_target(h);
        // Empty powered hosts go to standby anyway: they do not count as capacity in use.
        let total_cap: f64 = (0..nh).filter(|&h| takes_vms(self, h)).map(|h| s.hosts[h].cpu_capacity).sum();
        let total_f: f64 = (0..nh).filter(|&h| takes_vms(self, h)).map(|h| self.fc[h]).sum();
        let bulk = total_f < 0.5 * p.target * total_cap;
        let biggest = s.hosts.iter().map(|h| h.cpu_capacity).fold(0.0, f64::max);
        let reserve = p.spare * p.target * biggest;

        // Candidates, best first: watts freed per second of migration.
        let mut cands: Vec<(f64, usize)> = Vec::new();
        for h in 0..nh {
            if !self.on[h] || self.keep[h] || self.vms[h].is_empty() {
                continue;
            }
            let vms = &self.vms[h];
            if !bulk && vms.len() > p.evacuate_vms {
                continue;
            }
            if vms.iter().any(|&v| s.vms[v].pinned || s.vms[v].migrating_to.is_some() || self.in_cooldown(v)) {
                continue;
            }
            let host = &s.hosts[h];
            let mib: f64 = vms.iter().map(|&v| s.vms[v].memory_mib as f64).sum();
            let secs = mib / (host.migration_mbps.max(1e-9) / 8.0);
            let watts = host.power.watts(self.fc[h] / host.cpu_capacity);
            cands.push((watts / (secs + 10.0), h));
        }
        cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut spare: f64 = (0..nh).filter(|&h| takes_vms(self, h)).map(|h| room(self, h)).sum();
        let mut evacuated = 0usize;
        let mut failed = 0usize;
        for (_, h) in cands {
            // Outside bulk mode a round tries a bounded number of hosts: the plan must stay
            // fast on a large pool.
            if !bulk && (evacuated >= p.evacuations || failed >= 8 * p.evacuations.max(1)) {
                break;
            }
            if self.keep[h] || !self.on[h] {
                continue;
            }
            // Pays only if the others can take this host's load and still keep the reserve, so
            // that the next peak does not wake it right back.
            if spare - room(self, h) < self.fc[h] + reserve {
                continue;
            }
            let own = room(self, h);
            if let Some(used) = self.evacuate(h) {
                evacuated += 1;
                spare -= own + used;
            } else {
                failed += 1;
            }
        }
    }

    fn attach(&mut self, v: usize, h: usize) {
        self.vms[h].push(v);
        for (a, x) in self.agg[h].iter_mut().zip(&self.series[v]) {
            *a += x;
        }
        self.demand[h] += self.s.vms[v].demand;
        self.mem[h] += self.s.vms[v].memory_reserved_mib;
        if !self.loading {
            self.fc[h] = self.forecast_of(&self.agg[h], self.demand[h]);
            self.reindex(h);
        }
    }

    /// Files host `h` in the best-fit indexes under its current room (if powered), in every
    /// memory level its free memory reaches.
    fn reindex(&mut self, h: usize) {
        if let Some((k, n)) = self.key[h].take() {
            for set in &mut self.index[..n] {
                set.remove(&k);
            }
        }
        if self.on[h] {
            let host = &self.s.hosts[h];
            let room = self.p.target * host.cpu_capacity - self.fc[h];
            let k = (ordered(room), ordered(self.eff[h]), h);
            let free = host.memory_mib.saturating_sub(self.mem[h]);
            let n = self.levels.partition_point(|&l| l <= free);
            for set in &mut self.index[..n] {
                set.insert(k);
            }
            self.key[h] = Some((k, n));
        }
    }

    fn detach(&mut self, v: usize, h: usize) {
        self.vms[h].retain(|&x| x != v);
        for (a, x) in self.agg[h].iter_mut().zip(&self.series[v]) {
            *a = (*a - x).max(0.0);
        }
        self.demand[h] = (self.demand[h] - self.s.vms[v].demand).max(0.0);
        self.mem[h] = self.mem[h].saturating_sub(self.s.vms[v].memory_reserved_mib);
        self.fc[h] = if self.vms[h].is_empty() { 0.0 } else { self.forecast_of(&self.agg[h], self.demand[h]) };
        self.reindex(h);
    }

    fn forecast_of(&self, agg: &[f64], demand: f64) -> f64 {
        stats::quantile(agg, self.p.quantile).max(demand)
    }

    /// Forecast of host `h` with VM `v` added (`sign` 1) or taken away (`sign` -1), computed
    /// in a scratch buffer on the stack.
    fn forecast_changed(&self, h: usize, v: usize, sign: f64) -> f64 {
        let agg = &self.agg[h];
        let series = &self.series[v];
        let demand = (self.demand[h] + sign * self.s.vms[v].demand).max(0.0);
        let mut stack = [0.0f64; 64];
        let mut heap = Vec::new();
        let buf: &mut [f64] = if agg.len() <= stack.len() {
            &mut stack[..agg.len()]
        } else {
            heap.resize(agg.len(), 0.0);
            &mut heap
        };
        for ((b, a), x) in buf.iter_mut().zip(agg).zip(series) {
            *b = (a + sign * x).max(0.0);
        }
        stats::quantile_in_place(buf, self.p.quantile).max(demand)
    }

    /// Forecast of host `h` with VM `v` added.
    fn forecast_with(&self, h: usize, v: usize) -> f64 {
        self.forecast_changed(h, v, 1.0)
    }

    /// Forecast of host `h` without VM `v`.
    fn forecast_without(&self, h: usize, v: usize) -> f64 {
        if self.vms[h].len() <= 1 {
            return 0.0;
        }
        self.forecast_changed(h, v, -1.0)
    }

    /// The most CPU VM `v` can get on host `h`.
    fn core_cap(&self, v: usize, h: usize) -> f64 {
        f64::from(self.s.vms[v].vcpus.max(1)) * self.s.hosts[h].core_capacity
    }

    /// Whether VM `v` wants more than host `h`'s cores can give it.
    fn core_short(&self, v: usize, h: usize) -> bool {
        self.s.vms[v].demand > self.core_cap(v, h) * 1.000_001
    }

    fn in_cooldown(&self, v: usize) -> bool {
        self.state.last_moved.get(&self.s.vms[v].name).is_some_and(|&r| self.round.saturating_sub(r) < self.p.cooldown)
    }

    fn movable(&self, v: usize) -> bool {
        let vm = &self.s.vms[v];
        !vm.pinned && vm.migrating_to.is_none() && self.target[v].is_none()
    }

    /// The VM to take off hot host `h`: the least memory among those whose departure brings the
    /// forecast under the target; failing that, the most forecast shed per MiB. VMs in
    /// cooldown only if nothing else is movable.
    fn pick_relief(&self, h: usize) -> Option<usize> {
        let goal = self.p.target * self.s.hosts[h].cpu_capacity;
        let now = self.fc[h];
        for allow_cooldown in [false, true] {
            let mut fix: Option<(f64, usize)> = None;
            let mut shed: Option<(f64, usize)> = None;
            for &v in &self.vms[h] {
                if self.s.vms[v].host != h || !self.movable(v) || (!allow_cooldown && self.in_cooldown(v)) {
                    continue;
                }
                let mib = self.s.vms[v].memory_mib as f64 + 1.0;
                let after = self.forecast_without(h, v);
                if after <= goal {
                    if fix.is_none_or(|(b, _)| mib < b) {
                        fix = Some((mib, v));
                    }
                } else {
                    let rate = (now - after) / mib;
                    if shed.is_none_or(|(b, _)| rate > b) {
                        shed = Some((rate, v));
                    }
                }
            }
            if let Some((_, v)) = fix.or(shed) {
                return Some(v);
            }
        }
        None
    }

    /// Whether host `h` counts as capacity that consolidation can fill: powered, taking VMs,
    /// and staying on (it holds VMs, or must stay on). An empty powered host is about to go to
    /// standby: moving VMs onto it would only trade one host for another.
    fn consolidation_target(&self, h: usize) -> bool {
        self.on[h]
            && !self.evacuating[h]
            && self.s.hosts[h].schedulable
            && (!self.vms[h].is_empty() || self.s.hosts[h].keep_on || self.keep[h])
    }

    /// Whether host `h` can take VM `v` with its forecast within `limit` × capacity: the
    /// forecast fill if so. Cheap tests first; the quantile only when the bounds leave doubt.
    fn fits_within(&self, v: usize, h: usize, limit: f64) -> Option<f64> {
        let host = &self.s.hosts[h];
        if !self.on[h] || !host.schedulable || self.evacuating[h] || h == self.s.vms[v].host {
            return None;
        }
        let vm = &self.s.vms[v];
        if self.mem[h] + vm.memory_reserved_mib > host.memory_mib {
            return None;
        }
        let cap = host.cpu_capacity;
        // The cores must serve the VM's forecast (a vCPU may use a whole core: the target is
        // about the host's total), and its demand now must fit in what is free.
        if self.vfc[v] > self.core_cap(v, h) * 1.000_001 || self.demand[h] + vm.demand > cap {
            return None;
        }
        // The forecast grows by at least the VM's smallest sample.
        if self.fc[h] + self.vmin[v] > limit * cap {
            return None;
        }
        let f = self.forecast_with(h, v);
        (f <= limit * cap).then_some(f / cap)
    }

    /// The powered host that takes VM `v` best within the target: best fit, the least forecast
    /// room left after the move (the forecast counts how the VM's history lines up with the
    /// host's), then the more efficient host, then the lower index.
    ///
    /// A range query on the index keeps this cheap on large pools. A host with less room than
    /// the VM's smallest sample cannot take it; one with more room than its largest sample
    /// surely can (as far as the forecast goes). Hosts in between are tested exactly, tightest
    /// first, at most [`EXACT_TESTS`] of them; then the tightest host that fits by the bound is
    /// taken if it beats what was found (looking at most at [`ROOMY_TESTS`] hosts that lack
    /// memory or cores). So the answer is the exact best fit unless that many hosts were tested
    /// in vain; then it may be a looser fit, or none.
    fn best_host(&self, v: usize, consolidating: bool) -> Option<usize> {
        let limit = self.p.target;
        let (vmin, vmax) = (self.vmin[v], self.vmax[v]);
        let mut best: Option<(f64, f64, usize)> = None;
        let consider = |h: usize, best: &mut Option<(f64, f64, usize)>| -> bool {
            if consolidating && !self.consolidation_target(h) {
                return false;
            }
            let Some(fill) = self.fits_within(v, h, limit) else { return false };
            let cap = self.s.hosts[h].cpu_capacity;
            let after = limit * cap - fill * cap;
            let eff = self.eff[h];
            let better = match *best {
                None => true,
                Some((br, be, bh)) => {
                    after < br - 1e-9 || ((after - br).abs() <= 1e-9 && (eff < be || (eff == be && h < bh)))
                }
            };
            if better {
                *best = Some((after, eff, h));
            }
            true
        };
        // Tight hosts: tested exactly, tightest first.
        let index = &self.index[self.vm_level[v]];
        for &(_, _, h) in index.range((ordered(vmin - 1e-9), 0, 0)..(ordered(vmax), 0, 0)).take(EXACT_TESTS) {
            let room = limit * self.s.hosts[h].cpu_capacity - self.fc[h];
            if best.is_some_and(|(br, _, _)| room - vmax > br + 1e-9) {
                break;
            }
            consider(h, &mut best);
        }
        // Roomy hosts: the first that passes the other tests is the best of them.
        let mut misses = 0;
        for &(_, _, h) in index.range((ordered(vmax), 0, 0)..) {
            let room = limit * self.s.hosts[h].cpu_capacity - self.fc[h];
            if best.is_some_and(|(br, _, _)| room - vmax > br + 1e-9) {
                break;
            }
            if consider(h, &mut best) {
                break;
            }
            // Hosts can also be full in memory or cores: give up after a bounded search.
            misses += 1;
            if misses >= ROOMY_TESTS || (misses >= EXACT_TESTS && best.is_some()) {
                break;
            }
        }
        best.map(|b| b.2)
    }

    /// Where a VM taken off a hot host goes: best fit within the target; else the least loaded
    /// powered host within the high-water mark; else the most efficient standby host.
    fn place(&mut self, v: usize) -> Option<usize> {
        let nh = self.s.hosts.len();
        if let Some(h) = self.best_host(v, false) {
            return Some(h);
        }
        let mut dense: Option<(f64, usize)> = None;
        for h in 0..nh {
            let Some(f) = self.fits_within(v, h, self.p.high) else { continue };
            if dense.is_none_or(|(b, _)| f < b) {
                dense = Some((f, h));
            }
        }
        if let Some((_, h)) = dense {
            return Some(h);
        }
        let mut wake: Option<(f64, usize)> = None;
        for h in 0..nh {
            if self.on[h] || !self.vms[h].is_empty() {
                continue;
            }
            // Test as if on.
            self.on[h] = true;
            let ok = self.fits_within(v, h, self.p.target).is_some();
            self.on[h] = false;
            if !ok {
                continue;
            }
            let eff = self.eff[h];
            if wake.is_none_or(|(b, _)| eff < b) {
                wake = Some((eff, h));
            }
        }
        let (_, h) = wake?;
        self.on[h] = true;
        self.reindex(h);
        self.keep[h] = true;
        self.woken_now.push(h);
        Some(h)
    }

    /// Moves VM `v` off host `from`; false if it found no place.
    fn relocate(&mut self, v: usize, from: usize, why: Reason) -> bool {
        let Some(to) = self.place(v) else { return false };
        self.detach(v, from);
        self.attach(v, to);
        self.keep[to] = true;
        self.target[v] = Some(to);
        self.reason[v] = Some(why);
        self.order.push(v);
        true
    }

    /// Empties host `h` if every VM finds a powered host within the target, returning how much
    /// room under the target that used up on the other hosts; else leaves it as it was.
    fn evacuate(&mut self, h: usize) -> Option<f64> {
        let mut vms: Vec<usize> = self.vms[h].clone();
        vms.sort_by(|&a, &b| self.vfc[b].total_cmp(&self.vfc[a]).then(a.cmp(&b)));
        self.evacuating[h] = true;
        let mut done: Vec<(usize, usize)> = Vec::new();
        let mut used = 0.0;
        for &v in &vms {
            match self.best_host(v, true) {
                Some(t) => {
                    let cap = self.p.target * self.s.hosts[t].cpu_capacity;
                    let before = (cap - self.fc[t]).max(0.0);
                    self.detach(v, h);
                    self.attach(v, t);
                    used += before - (cap - self.fc[t]).max(0.0);
                    done.push((v, t));
                }
                None => {
                    for &(v, t) in done.iter().rev() {
                        self.detach(v, t);
                        self.attach(v, h);
                    }
                    self.evacuating[h] = false;
                    return None;
                }
            }
        }
        let saves = self.s.hosts[h].power.idle();
        for (v, t) in done {
            self.keep[t] = true;
            self.target[v] = Some(t);
            self.reason[v] = Some(Reason::Consolidate { saves_watts: saves });
            self.order.push(v);
        }
        self.on[h] = false;
        self.reindex(h);
        Some(used)
    }
}
