//! Dynamic resource scheduling (DRS): load balancing and green consolidation, as pure functions.
//!
//! The caller describes the pool as it is now in a [`Snapshot`] — hosts (CPU capacity, memory,
//! power curve, on or in standby, measured use) and VMs (demand now and its recent history,
//! memory, current host, migration in flight) — and [`plan`] returns a [`Plan`]: which VMs to
//! migrate where and why, which standby hosts to wake and which hosts to put in standby once
//! empty. The function does no I/O and reads no clock; what it must remember between rounds
//! (cooldowns, a random generator's state) is an explicit [`PolicyState`] value passed in and
//! returned, so the same inputs always give the same plan. The live controller and the
//! trace-driven simulator (`corral-sim`) call exactly this function.
//!
//! Units are the caller's, as long as they are consistent: CPU as an `f64` amount ("CPU
//! units": MIPS in the simulator, cores in the live controller, where a VM's demand is its
//! vCPUs × CPU% / 100), memory in MiB, migration bandwidth in Mbit/s, power in watts.
//!
//! Policies ([`PolicySpec`]):
//! * the reference heuristics of Beloglazov & Buyya (2012), with CloudSim 3.0.3's semantics:
//!   overload detection [`Detector`] (static threshold, MAD, IQR, local regression, robust
//!   local regression), VM selection [`Selection`] (minimum migration time, maximum
//!   correlation, random, minimum utilisation), power-aware best fit decreasing placement, and
//!   CloudSim's underload consolidation (empty the least utilised hosts whose VMs all fit
//!   elsewhere); named like `lr-mmt-1.2`;
//! * Corral's default policy, `corral` (see [`CorralParams`] and `docs/sim.md`).
//!
//! Plan semantics, in execution order: wake the hosts in `wake`; run the migrations (one to a
//! host being woken starts when the host is up); put the hosts in `standby` to standby once
//! their last VM has left. A plan never moves a VM to a host in standby that it does not wake,
//! never moves a VM that is pinned or already migrating, moves each VM at most once, and never
//! moves CPU demand (as of now) or memory onto a host that lacks room for it ([`Plan::check`]).

mod corral;
mod power;
mod reference;
mod spec;
mod stats;
pub mod time_shared;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use power::{PowerModel, PowerModelError};
pub use spec::{CorralParams, Detector, PolicySpec, Selection, SpecError};

/// Whether a host is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    #[default]
    On,
    /// Powered down or suspended: holds no VMs, takes none until woken.
    Standby,
}

/// One host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub name: String,
    /// Total CPU capacity (MIPS, or cores).
    pub cpu_capacity: f64,
    /// The most one vCPU of a VM can get on this host (a core's MIPS, or 1.0 core).
    pub core_capacity: f64,
    pub memory_mib: u64,
    /// Bandwidth available for migrations into this host, Mbit/s.
    pub migration_mbps: f64,
    pub power: PowerModel,
    pub state: PowerState,
    /// CPU in use now as measured (what the VMs got, not what they wanted).
    pub cpu_used: f64,
    /// May take VMs (false: in maintenance or unreachable; its VMs may still be moved away).
    pub schedulable: bool,
    /// Never put in standby (operator setting).
    pub keep_on: bool,
}

/// One VM as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub name: String,
    /// Index into [`Snapshot::hosts`] of the host it runs on.
    pub host: usize,
    pub vcpus: u32,
    /// The most CPU the VM can use (its size), CPU units.
    pub cpu_size: f64,
    /// CPU it wants now, CPU units.
    pub demand: f64,
    /// Recent demand samples, one per scheduling interval, oldest first; the last is the latest
    /// (normally equal to `demand`). Empty for a new VM.
    pub history: Vec<f64>,
    /// Memory size: what a migration copies.
    pub memory_mib: u64,
    /// Memory it occupies on its host (normally `memory_mib`).
    pub memory_reserved_mib: u64,
    /// Index of the host it is migrating to, if a migration is in flight.
    pub migrating_to: Option<usize>,
    /// Must not be moved.
    pub pinned: bool,
}

/// The pool at one instant.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub hosts: Vec<HostSnapshot>,
    pub vms: Vec<VmSnapshot>,
    /// Seconds between planning rounds (and between history samples).
    pub interval_s: f64,
}

/// Why a VM is moved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reason {
    /// Its host is (or is forecast to be) overloaded; `load` is the host's CPU demand now as a
    /// fraction of capacity and `limit` the fraction the policy holds hosts to.
    Overload { load: f64, limit: f64 },
    /// Its host is being emptied to go to standby, saving about `saves_watts`.
    Consolidate { saves_watts: f64 },
}

/// One migration of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// Indices into the snapshot's `vms` and `hosts`.
    pub vm: usize,
    pub from: usize,
    pub to: usize,
    pub reason: Reason,
    /// Expected duration: memory over the target's migration bandwidth ([`migration_seconds`]).
    pub seconds: f64,
}

/// What to do this round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub migrations: Vec<Migration>,
    /// Standby hosts to wake (before the migrations that target them).
    pub wake: Vec<usize>,
    /// Hosts to put in standby once empty (after the migrations).
    pub standby: Vec<usize>,
    /// Hosts the policy found overloaded (for display).
    pub overloaded: Vec<usize>,
    /// Placements decided earlier in the round and replaced by a later decision (the VM still
    /// moves once). CloudSim 3.0.3 executes both as migrations; counted for comparison.
    #[serde(default)]
    pub superseded: usize,
}

/// What a policy remembers between rounds. Start from [`PolicyState::new`] and feed back the
/// state each [`plan`] returns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PolicyState {
    /// Planning rounds so far.
    pub round: u64,
    /// State of the random generator (random VM selection).
    pub rng: u64,
    /// VM name → round of its last migration (for cooldowns).
    pub last_moved: BTreeMap<String, u64>,
    /// Host name → round it was last woken.
    pub woken: BTreeMap<String, u64>,
    /// Host name → consecutive rounds it has been found hot (forecast over the limit).
    pub hot: BTreeMap<String, u32>,
}

impl PolicyState {
    /// A fresh state; `seed` drives every random choice.
    pub fn new(seed: u64) -> Self {
        PolicyState { rng: seed, ..Default::default() }
    }
}

/// A snapshot the scheduler cannot work with; the message names the offending item.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrsError {
    #[error("VM {vm:?} is on host index {host}, but there are only {hosts} hosts")]
    UnknownHost { vm: String, host: usize, hosts: usize },
    #[error("VM {vm:?} is migrating to host index {host}, but there are only {hosts} hosts")]
    UnknownTarget { vm: String, host: usize, hosts: usize },
    #[error("{what} has {field} = {value}: it must be a finite number, at least 0")]
    BadNumber { what: String, field: &'static str, value: f64 },
    #[error("host {0:?} is in standby but VM {1:?} runs on it")]
    VmOnStandbyHost(String, String),
    #[error("{0}")]
    Policy(#[from] SpecError),
    #[error("no host can take VM #{index} ({cpu} CPU units, {memory_mib} MiB): the hosts are too small or too few")]
    NoRoom { index: usize, cpu: f64, memory_mib: u64 },
}

impl Snapshot {
    /// Checks indices and numbers.
    pub fn validate(&self) -> Result<(), DrsError> {
        let n = self.hosts.len();
        let num = |what: &str, field: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(DrsError::BadNumber { what: what.to_string(), field, value: v })
            }
        };
        for h in &self.hosts {
            let what = format!("host {:?}", h.name);
            num(&what, "cpu_capacity", h.cpu_capacity)?;
            num(&what, "core_capacity", h.core_capacity)?;
            num(&what, "migration_mbps", h.migration_mbps)?;
            num(&what, "cpu_used", h.cpu_used)?;
        }
        for v in &self.vms {
            if v.host >= n {
                return Err(DrsError::UnknownHost { vm: v.name.clone(), host: v.host, hosts: n });
            }
            if let Some(t) = v.migrating_to {
                if t >= n {
                    return Err(DrsError::UnknownTarget { vm: v.name.clone(), host: t, hosts: n });
                }
            }
            if self.hosts[v.host].state == PowerState::Standby {
                return Err(DrsError::VmOnStandbyHost(self.hosts[v.host].name.clone(), v.name.clone()));
            }
            let what = format!("VM {:?}", v.name);
            num(&what, "cpu_size", v.cpu_size)?;
            num(&what, "demand", v.demand)?;
            for &x in &v.history {
                num(&what, "history", x)?;
            }
        }
        num("the snapshot", "interval_s", self.interval_s)
    }
}

/// Plans one round: see the module documentation. Returns the plan and the state to pass to
/// the next call. Deterministic: the same snapshot, policy and state give the same result.
pub fn plan(snap: &Snapshot, policy: &PolicySpec, state: &PolicyState) -> Result<(Plan, PolicyState), DrsError> {
    policy.validate()?;
    snap.validate()?;
    let mut next = state.clone();
    next.round = state.round + 1;
    let plan = match *policy {
        PolicySpec::Reference { detector, selection } => reference::plan(snap, detector, selection, &mut next),
        PolicySpec::Corral(p) => corral::plan(snap, &p, &mut next),
    };
    Ok((plan, next))
}

/// A VM to place for the first time, reserving `cpu` CPU units and `memory_mib`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewVm {
    pub cpu: f64,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Initial placement as CloudSim performs it when VMs are instantiated: power-aware best fit
/// decreasing over empty hosts in list order, each VM reserving its full size (`cpu`, memory),
/// a VM going to the host whose power grows least (first such host on ties). Returns the host
/// index of every VM, or the first VM that fits nowhere.
pub fn place_initial(hosts: &[HostSnapshot], vms: &[NewVm]) -> Result<Vec<usize>, DrsError> {
    reference::place_initial(hosts, vms)
}

/// Seconds to live-migrate `memory_mib` over `migration_mbps` (CloudSim's model: RAM / (network
/// bandwidth / 2), with MB = MiB; `migration_mbps` is that half already); infinite without
/// bandwidth. Plans' [`Migration::seconds`] and the simulator's migrations both come from here.
pub fn migration_seconds(memory_mib: u64, migration_mbps: f64) -> f64 {
    if migration_mbps > 0.0 {
        memory_mib as f64 / (migration_mbps / 8.0)
    } else {
        f64::INFINITY
    }
}

impl Plan {
    /// One line per action, for people (the `advise` mode).
    pub fn describe(&self, snap: &Snapshot) -> Vec<String> {
        let host = |i: usize| snap.hosts.get(i).map_or("?", |h| h.name.as_str());
        let mut out = Vec::new();
        for &h in &self.wake {
            out.push(format!("wake {}", host(h)));
        }
        for m in &self.migrations {
            let vm = snap.vms.get(m.vm).map_or("?", |v| v.name.as_str());
            let why = match m.reason {
                Reason::Overload { load, limit } => {
                    format!(
                        "{} overloaded (demand {:.0}% of capacity, limit {:.0}%)",
                        host(m.from),
                        load * 100.0,
                        limit * 100.0
                    )
                }
                Reason::Consolidate { saves_watts } => {
                    format!("emptying {} for standby (saves about {saves_watts:.0} W)", host(m.from))
                }
            };
            out.push(format!("migrate {vm} from {} to {} (~{:.0} s): {why}", host(m.from), host(m.to), m.seconds));
        }
        for &h in &self.standby {
            out.push(format!("standby {} once empty", host(h)));
        }
        out
    }

    /// Checks the guarantees listed in the module documentation against `snap`; returns the
    /// first violation. Used by tests and by the simulator in debug builds.
    pub fn check(&self, snap: &Snapshot) -> Result<(), String> {
        let nh = snap.hosts.len();
        let mut moved = vec![false; snap.vms.len()];
        let mut cpu: Vec<f64> = vec![0.0; nh];
        let mut mem: Vec<u64> = vec![0; nh];
        let mut count: Vec<usize> = vec![0; nh];
        for v in &snap.vms {
            cpu[v.host] += v.demand.min(v.core_cap(snap, v.host));
            mem[v.host] += v.memory_reserved_mib;
            count[v.host] += 1;
            if let Some(t) = v.migrating_to {
                cpu[t] += v.demand.min(v.core_cap(snap, t));
                mem[t] += v.memory_reserved_mib;
                count[t] += 1;
            }
        }
        let mut moved_in: Vec<f64> = vec![0.0; nh];
        for m in &self.migrations {
            let v = snap.vms.get(m.vm).ok_or_else(|| format!("migration of unknown VM #{}", m.vm))?;
            if m.to >= nh || m.from != v.host {
                return Err(format!("migration of {} has a bad source or target", v.name));
            }
            if m.to == m.from {
                return Err(format!("migration of {} to its own host", v.name));
            }
            if std::mem::replace(&mut moved[m.vm], true) {
                return Err(format!("{} is moved twice", v.name));
            }
            if v.pinned || v.migrating_to.is_some() {
                return Err(format!("{} is pinned or already migrating", v.name));
            }
            let t = &snap.hosts[m.to];
            if !t.schedulable {
                return Err(format!("{} moved to unschedulable host {}", v.name, t.name));
            }
            if t.state == PowerState::Standby && !self.wake.contains(&m.to) {
                return Err(format!("{} moved to standby host {} that the plan does not wake", v.name, t.name));
            }
            if self.standby.contains(&m.to) {
                return Err(format!("{} moved to host {} that the plan puts in standby", v.name, t.name));
            }
            cpu[m.from] -= v.demand.min(v.core_cap(snap, m.from));
            mem[m.from] -= v.memory_reserved_mib;
            count[m.from] -= 1;
            let d = v.demand.min(v.core_cap(snap, m.to));
            cpu[m.to] += d;
            mem[m.to] += v.memory_reserved_mib;
            count[m.to] += 1;
            moved_in[m.to] += d.max(1e-6);
        }
        for (i, h) in snap.hosts.iter().enumerate() {
            // A host that receives VMs must end within its memory, and within its CPU unless
            // what it receives wants no CPU at all (a VM idle now may join a host that is over
            // capacity for other reasons; CloudSim allows it too).
            let cpu_over = cpu[i] > h.cpu_capacity * (1.0 + 1e-9) + 1e-9 && moved_in[i] > 1e-3;
            if moved_in[i] > 0.0 && (cpu_over || mem[i] > h.memory_mib) {
                return Err(format!(
                    "host {} ends over capacity: CPU {:.3} of {:.3}, memory {} of {} MiB",
                    h.name, cpu[i], h.cpu_capacity, mem[i], h.memory_mib
                ));
            }
        }
        for &h in &self.standby {
            if h >= nh || count[h] != 0 || snap.hosts[h].keep_on {
                return Err(format!("host #{h} is put in standby but keeps VMs or must stay on"));
            }
        }
        for &h in &self.wake {
            if h >= nh || snap.hosts[h].state != PowerState::Standby {
                return Err(format!("host #{h} is woken but is not in standby"));
            }
        }
        Ok(())
    }
}

impl VmSnapshot {
    /// The most CPU this VM can get on host `h` (its vCPUs × the host's core capacity).
    fn core_cap(&self, snap: &Snapshot, h: usize) -> f64 {
        f64::from(self.vcpus.max(1)) * snap.hosts[h].core_capacity
    }
}

#[cfg(test)]
mod tests;
