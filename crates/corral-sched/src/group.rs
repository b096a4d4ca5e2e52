//! Placement of a whole group of VMs (a virtual cluster) at once: all of them or none.
//!
//! Candidates are the schedulable hosts that carry every required label. Capacity is
//! physical × overcommit (rounded down) per resource, counting what the host already promises
//! plus this group's VMs. Templates play no part (the controller ships missing templates).
//!
//! The algorithm is greedy. VMs pinned to a host go first, in input order. Then:
//!
//! * [`Policy::Spread`] places the VMs biggest first (memory, then vCPUs, descending; then
//!   name), each on the host whose dominant share (the larger of its memory and vCPU shares of
//!   the overcommitted capacity) is lowest after adding it; ties go to the host holding fewer
//!   members of the group, then to the lower measured CPU load, then to the name.
//! * [`Policy::Pack`] fills one host at a time, hosts that already hold something (promised
//!   resources or a member of the group) first, fullest first, so empty hosts stay empty; then
//!   empty hosts, biggest first. Each host takes, one after the other, the VM whose size best
//!   matches its remaining room (largest dot product of shares, biggest size on ties) until
//!   none fits. This mixes sizes so that hosts fill up in both resources: on the benchmark pool
//!   it needs about a quarter fewer hosts than placing each VM, biggest first, on the fullest
//!   host that fits (best fit decreasing), which remains the fallback for groups with so many
//!   distinct sizes that host filling would be slow.
//!
//! With anti-affinity a host holding a member (including `existing` ones) takes no other.
//!
//! Determinism: the result depends only on the hosts' contents and the request, not on the
//! order of the host list (host names must be unique; ties break on them).
//!
//! Cost, for H hosts, V VMs and K distinct (vCPUs, MiB) sizes: O(H log H + V log V) to sort,
//! then spread builds a heap of the hosts per size (only the chosen host's key changes, so a
//! VM costs O(log H)): O(K·H + V log H); pack costs O(K·(V + H)), and falls back to the heaps
//! when that exceeds 5·10⁷. Groups have few sizes; V all-different sizes degrade to O(V·H).
//!
//! Limits, honestly: choosing hosts is bin packing in two dimensions, which is NP-hard, and the
//! greedy can refuse a group that some assignment would fit (see the test
//! `greedy_can_miss_a_placement_in_two_dimensions`). What is guaranteed (and property-tested,
//! for both policies and the fallback): nothing is ever placed beyond capacity; a refusal
//! places nothing; and placement succeeds whenever (a) every VM needs at most half of every
//! candidate host in each resource and the demand summed over both resources, as shares of
//! capacity, is at most half the number of hosts (a host that refuses a VM is then more than
//! half full in some resource, and they cannot all be), or (b) only memory binds, the hosts are
//! empty, every VM fits on every host and total demand is at most half the capacity.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::str::FromStr;

use crate::place::HostView;
use crate::slot::{ordered, Slot};

/// How a group is laid out over hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Balance load: each VM goes where the resulting utilisation is lowest.
    #[default]
    Spread,
    /// Use as few hosts as possible (best fit), keeping empty hosts empty.
    Pack,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Spread => "spread",
            Policy::Pack => "pack",
        })
    }
}

/// A policy name that is neither `spread` nor `pack`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement policy {0:?}: use \"spread\" or \"pack\"")]
pub struct ParsePolicyError(pub String);

impl FromStr for Policy {
    type Err = ParsePolicyError;
    /// Accepts `spread` and `pack`, ignoring case and surrounding blanks.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            _ => Err(ParsePolicyError(s.to_string())),
        }
    }
}

/// vCPUs (memory MiB) promisable per physical vCPU (MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Overcommit {
    /// 4 vCPUs per physical CPU; memory not overcommitted.
    fn default() -> Self {
        Overcommit { cpu: 4.0, memory: 1.0 }
    }
}

/// One VM of a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmReq {
    /// Unique within the group; names the VM in the answer.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The host the VM must go to, if any.
    pub host: Option<String>,
}

/// A group of VMs to place together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupRequest {
    pub vms: Vec<VmReq>,
    pub policy: Policy,
    /// No two VMs of this group on one host (including `existing` members).
    pub anti_affinity: bool,
    /// Hosts must carry all these labels (key=value).
    pub labels: BTreeMap<String, String>,
    pub overcommit: Overcommit,
    /// Hosts already holding members of this group (for scale-up: anti-affinity and spread
    /// count them). One entry per existing member. Their resources must already be in the
    /// hosts' `used_*`; names of hosts not in the list are ignored.
    pub existing: Vec<String>,
}

/// Where one VM goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    pub vm: String,
    pub host: String,
}

/// What was free when a group did not fit, for the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Free vCPUs and MiB (of overcommitted capacity) summed over the matching hosts, before
    /// this group.
    pub free_vcpus: u64,
    pub free_mib: u64,
    /// Number of schedulable hosts that match the labels.
    pub hosts: usize,
    /// Free vCPUs and MiB on the matching host with the most free memory (ties: by name).
    pub largest_free_vcpus: u64,
    pub largest_free_mib: u64,
    /// The first VM, in placement order (biggest first), that found no host, and its needs.
    pub first_unplaced: String,
    pub need_vcpus: u32,
    pub need_mib: u64,
    /// Whether anti-affinity (one member per host) was in force.
    pub anti_affinity: bool,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "free: {} vCPUs, {} MiB across {} hosts; largest free on one host: {} vCPUs, {} MiB; \
             first VM left over: {:?} needing {} vCPUs, {} MiB",
            self.free_vcpus,
            self.free_mib,
            self.hosts,
            self.largest_free_vcpus,
            self.largest_free_mib,
            self.first_unplaced,
            self.need_vcpus,
            self.need_mib
        )?;
        if self.anti_affinity {
            f.write_str("; anti-affinity allows one member per host")?;
        }
        Ok(())
    }
}

fn fmt_labels(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn holding_note(holding: &usize) -> String {
    if *holding == 0 {
        String::new()
    } else {
        format!(" besides the {holding} already holding members of this group")
    }
}

/// Why a group could not be placed; each message says what to change. When this is returned,
/// nothing was placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GroupError {
    #[error("overcommit must be positive and finite (cpu {cpu}, memory {memory}): fix the setting")]
    InvalidOvercommit { cpu: f64, memory: f64 },
    #[error("VM name {0:?} appears more than once in the group: give every VM its own name")]
    DuplicateVm(String),
    #[error("host name {0:?} appears more than once in the host list")]
    DuplicateHost(String),
    #[error("no host is taking new VMs: check `corral host list`")]
    NoHosts,
    #[error("no schedulable host has labels {}: label a host or drop the constraint", fmt_labels(.0))]
    NoLabelMatch(BTreeMap<String, String>),
    #[error("VM {vm:?} is pinned to unknown host {host:?}: see `corral host list`")]
    UnknownHost { vm: String, host: String },
    #[error("VM {vm:?} is pinned to host {host:?}, which is not taking new VMs (unreachable or in maintenance): choose another host or leave the pin out")]
    HostUnschedulable { vm: String, host: String },
    #[error("VM {vm:?} is pinned to host {host:?}, which lacks the group's labels {}: choose a host that has them or leave the pin out", fmt_labels(.labels))]
    HostLacksLabels { vm: String, host: String, labels: BTreeMap<String, String> },
    #[error("VM {vm:?} is pinned to host {host:?}, which already holds a member of this anti-affine group: choose another host or leave the pin out")]
    PinnedAntiAffinity { vm: String, host: String },
    #[error("VM {vm:?} is pinned to host {host:?}, which lacks room: the VM needs {need_vcpus} vCPUs and {need_mib} MiB, the host has {free_vcpus} vCPUs and {free_mib} MiB free: choose another host, free resources there or leave the pin out")]
    HostFull { vm: String, host: String, need_vcpus: u32, need_mib: u64, free_vcpus: u64, free_mib: u64 },
    #[error("anti-affinity needs {needed} hosts but only {available} schedulable hosts match{}: add hosts, relax the labels or turn anti-affinity off", holding_note(.holding))]
    AntiAffinity {
        /// VMs still to place (each needs its own host).
        needed: usize,
        /// Matching hosts that hold no member of the group yet.
        available: usize,
        /// Matching hosts that already hold a member.
        holding: usize,
    },
    #[error("VM {vm:?} needs {need_vcpus} vCPUs and {need_mib} MiB, more than any matching host offers even when empty (at most {max_vcpus} vCPUs and {max_mib} MiB with overcommit): ask for a smaller VM or add bigger hosts")]
    TooBig { vm: String, need_vcpus: u32, need_mib: u64, max_vcpus: u64, max_mib: u64 },
    #[error("cannot place all {needed_vms} VMs: only {placeable} fit ({reason}); add hosts, free resources or ask for fewer/smaller VMs")]
    Infeasible {
        needed_vms: usize,
        /// How many this greedy could place (pinned ones included).
        placeable: usize,
        reason: Shortfall,
    },
}

fn has_labels(h: &HostView, labels: &BTreeMap<String, String>) -> bool {
    labels.iter().all(|(k, v)| h.labels.get(k) == Some(v))
}

/// Heap key, smallest first: three policy-specific components, the host's name rank, the slot.
type Key = (u64, u64, u64, u32, usize);

fn key(policy: Policy, s: &Slot, vcpus: u64, mib: u64, slot: usize) -> Key {
    let share = ordered(s.share_after(vcpus, mib));
    match policy {
        Policy::Spread => (share, u64::from(s.members), s.load, s.rank, slot),
        Policy::Pack if s.is_empty() => (1, share, 0, s.rank, slot),
        Policy::Pack => (0, !share, 0, s.rank, slot),
    }
}

/// Above this many (size classes × (VMs + hosts)) steps, pack falls back from host-by-host
/// filling to the per-VM best fit (same guarantees, coarser packing in two dimensions).
const HOST_FILL_BUDGET: usize = 50_000_000;

/// Places every VM of `req` on `hosts`, or none: see the module documentation for the rules.
/// The answer lists the VMs in the order of `req.vms`.
pub fn place_group(hosts: &[HostView], req: &GroupRequest) -> Result<Vec<Placement>, GroupError> {
    place_group_with(hosts, req, HOST_FILL_BUDGET)
}

fn place_group_with(
    hosts: &[HostView],
    req: &GroupRequest,
    host_fill_budget: usize,
) -> Result<Vec<Placement>, GroupError> {
    let oc = req.overcommit;
    if !(oc.cpu.is_finite() && oc.cpu > 0.0 && oc.memory.is_finite() && oc.memory > 0.0) {
        return Err(GroupError::InvalidOvercommit { cpu: oc.cpu, memory: oc.memory });
    }
    let vms = &req.vms;
    {
        let mut names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(GroupError::DuplicateVm(w[0].to_string()));
        }
    }
    if vms.is_empty() {
        return Ok(Vec::new());
    }

    // Host names in order: ranks for tie-breaking, and lookup by name.
    let mut by_name: Vec<usize> = (0..hosts.len()).collect();
    by_name.sort_unstable_by(|&a, &b| hosts[a].name.cmp(&hosts[b].name));
    if let Some(w) = by_name.windows(2).find(|w| hosts[w[0]].name == hosts[w[1]].name) {
        return Err(GroupError::DuplicateHost(hosts[w[0]].name.clone()));
    }
    let lookup = |name: &str| by_name.binary_search_by(|&i| hosts[i].name.as_str().cmp(name)).ok().map(|p| by_name[p]);
    let mut rank = vec![0u32; hosts.len()];
    for (r, &i) in by_name.iter().enumerate() {
        rank[i] = u32::try_from(r).unwrap_or(u32::MAX);
    }

    // Candidate hosts.
    let mut slot_of: Vec<Option<usize>> = vec![None; hosts.len()];
    let mut slots: Vec<Slot> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if h.schedulable && has_labels(h, &req.labels) {
            slot_of[i] = Some(slots.len());
            slots.push(Slot::new(i, rank[i], h, oc.cpu, oc.memory));
        }
    }
    for name in &req.existing {
        if let Some(s) = lookup(name).and_then(|i| slot_of[i]) {
            slots[s].members = slots[s].members.saturating_add(1);
        }
    }

    let mut assigned: Vec<Option<usize>> = vec![None; vms.len()];

    // Pinned VMs first, in input order.
    for (vi, vm) in vms.iter().enumerate() {
        let Some(want) = &vm.host else { continue };
        let pin_err = |e: fn(String, String) -> GroupError| e(vm.name.clone(), want.clone());
        let Some(i) = lookup(want) else {
            return Err(pin_err(|vm, host| GroupError::UnknownHost { vm, host }));
        };
        if !hosts[i].schedulable {
            return Err(pin_err(|vm, host| GroupError::HostUnschedulable { vm, host }));
        }
        let Some(s) = slot_of[i] else {
            return Err(GroupError::HostLacksLabels {
                vm: vm.name.clone(),
                host: want.clone(),
                labels: req.labels.clone(),
            });
        };
        let slot = &mut slots[s];
        if req.anti_affinity && slot.members > 0 {
            return Err(pin_err(|vm, host| GroupError::PinnedAntiAffinity { vm, host }));
        }
        let (v, m) = (u64::from(vm.vcpus), vm.memory_mib);
        if !slot.fits(v, m) {
            return Err(GroupError::HostFull {
                vm: vm.name.clone(),
                host: want.clone(),
                need_vcpus: vm.vcpus,
                need_mib: vm.memory_mib,
                free_vcpus: slot.free_vcpus(),
                free_mib: slot.free_mib(),
            });
        }
        slot.add(v, m);
        assigned[vi] = Some(s);
    }

    // The rest, biggest first.
    let mut order: Vec<usize> = (0..vms.len()).filter(|&i| vms[i].host.is_none()).collect();
    if !order.is_empty() {
        if slots.is_empty() {
            return Err(if req.labels.is_empty() || !hosts.iter().any(|h| h.schedulable) {
                GroupError::NoHosts
            } else {
                GroupError::NoLabelMatch(req.labels.clone())
            });
        }
        if req.anti_affinity {
            let available = slots.iter().filter(|s| s.members == 0).count();
            if order.len() > available {
                return Err(GroupError::AntiAffinity {
                    needed: order.len(),
                    available,
                    holding: slots.len() - available,
                });
            }
        }
    }
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (&vms[a], &vms[b]);
        (y.memory_mib, y.vcpus).cmp(&(x.memory_mib, x.vcpus)).then_with(|| x.name.cmp(&y.name))
    });
    // Runs of equal size in `order`: the size classes, biggest first.
    let size = |vi: usize| (u64::from(vms[vi].vcpus), vms[vi].memory_mib);
    let mut classes: Vec<Class> = Vec::new();
    for (pos, &vi) in order.iter().enumerate() {
        let (vcpus, mib) = size(vi);
        match classes.last_mut() {
            Some(c) if (c.vcpus, c.mib) == (vcpus, mib) => c.end = pos + 1,
            _ => classes.push(Class { vcpus, mib, next: pos, end: pos + 1 }),
        }
    }
    let host_fill =
        req.policy == Policy::Pack && classes.len().saturating_mul(order.len() + slots.len()) <= host_fill_budget;
    let failed = if host_fill {
        fill_hosts(&mut slots, &order, &mut classes, req.anti_affinity, &mut assigned)
    } else {
        best_host_per_vm(req.policy, &mut slots, &order, &classes, req.anti_affinity, &mut assigned)
    };

    if let Some(&first) = failed.first() {
        return Err(refusal(hosts, req, &slots, &assigned, &failed, first));
    }
    Ok(vms
        .iter()
        .zip(&assigned)
        .map(|(vm, s)| Placement {
            vm: vm.name.clone(),
            // Every VM is assigned once no size failed.
            host: s.map_or_else(String::new, |s| hosts[slots[s].host].name.clone()),
        })
        .collect())
}

/// VMs of one size: positions `next..end` of the placement order are still to place.
#[derive(Debug, Clone)]
struct Class {
    vcpus: u64,
    mib: u64,
    next: usize,
    end: usize,
}

/// Spread, and pack's fallback: each VM, biggest first, on the best host for it. VMs of one
/// size are placed from a heap of the hosts that fit them, keyed by [`key`]; only the chosen
/// host's key changes, so each VM costs O(log H) plus O(H) per size class to build the heap.
/// Returns the first VM of every class that ran out of hosts.
fn best_host_per_vm(
    policy: Policy,
    slots: &mut [Slot],
    order: &[usize],
    classes: &[Class],
    anti_affinity: bool,
    assigned: &mut [Option<usize>],
) -> Vec<usize> {
    let mut heap: BinaryHeap<Reverse<Key>> = BinaryHeap::new();
    let mut failed = Vec::new();
    for c in classes {
        let (v, m) = (c.vcpus, c.mib);
        // Hosts that cannot take this size now never will during this class: loads only grow.
        let mut buf = std::mem::take(&mut heap).into_vec();
        buf.clear();
        buf.extend(
            slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !(anti_affinity && s.members > 0) && s.fits(v, m))
                .map(|(i, s)| Reverse(key(policy, s, v, m, i))),
        );
        heap = BinaryHeap::from(buf);
        for &vi in &order[c.next..c.end] {
            let Some(Reverse(top)) = heap.pop() else {
                failed.push(vi);
                break;
            };
            let s = top.4;
            slots[s].add(v, m);
            assigned[vi] = Some(s);
            if !anti_affinity && slots[s].fits(v, m) {
                heap.push(Reverse(key(policy, &slots[s], v, m, s)));
            }
        }
    }
    failed
}

/// Pack: fill one host at a time. Hosts that already hold something come first, fullest
/// (highest dominant share) first; then empty hosts, biggest (memory, then vCPUs) first; then
/// the name. Each host repeatedly takes the VM whose size best matches its remaining room (the
/// largest dot product of the VM's and the remaining room's shares of the host; ties to the
/// bigger size) until none fits (or after one VM, with anti-affinity), and is never revisited.
/// Mixing sizes this way fills both resources of a host, where placing one size after the
/// other leaves hosts full in one resource and empty in the other. O(K) per VM and per host
/// for K size classes. Returns the first VM of every class left over.
fn fill_hosts(
    slots: &mut [Slot],
    order: &[usize],
    classes: &mut [Class],
    anti_affinity: bool,
    assigned: &mut [Option<usize>],
) -> Vec<usize> {
    let mut hosts: Vec<(u8, u64, u64, u32, usize)> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !(anti_affinity && s.members > 0))
        .map(|(i, s)| {
            if s.is_empty() {
                (1, !s.cap_mib, !s.cap_vcpus, s.rank, i)
            } else {
                (0, !ordered(s.share_after(0, 0)), 0, s.rank, i)
            }
        })
        .collect();
    hosts.sort_unstable();
    // Classes with VMs left, in class order (ties go to the earlier, bigger one).
    let mut live: Vec<usize> = (0..classes.len()).collect();
    for &(.., si) in &hosts {
        if live.is_empty() {
            break;
        }
        let slot = &mut slots[si];
        let (cap_m, cap_v) = (slot.cap_mib.max(1) as f64, slot.cap_vcpus.max(1) as f64);
        loop {
            let (room_m, room_v) = (slot.free_mib() as f64 / cap_m, slot.free_vcpus() as f64 / cap_v);
            let mut best: Option<(u64, usize)> = None;
            for (li, &ci) in live.iter().enumerate() {
                let c = &classes[ci];
                if !slot.fits(c.vcpus, c.mib) {
                    continue;
                }
                let dot = ordered(c.mib as f64 / cap_m * room_m + c.vcpus as f64 / cap_v * room_v);
                if best.is_none_or(|(d, _)| dot > d) {
                    best = Some((dot, li));
                }
            }
            let Some((_, li)) = best else { break };
            let c = &mut classes[live[li]];
            slot.add(c.vcpus, c.mib);
            assigned[order[c.next]] = Some(si);
            c.next += 1;
            if c.next == c.end {
                live.remove(li);
            }
            if anti_affinity || live.is_empty() {
                break;
            }
        }
    }
    live.iter().map(|&ci| order[classes[ci].next]).collect()
}

/// The error for a group that did not fit: a VM no host could ever take, else the shortfall.
fn refusal(
    hosts: &[HostView],
    req: &GroupRequest,
    slots: &[Slot],
    assigned: &[Option<usize>],
    failed: &[usize],
    first: usize,
) -> GroupError {
    let vms = &req.vms;
    for &vi in failed {
        let (v, m) = (u64::from(vms[vi].vcpus), vms[vi].memory_mib);
        if !slots.iter().any(|s| s.could_ever_fit(v, m)) {
            return GroupError::TooBig {
                vm: vms[vi].name.clone(),
                need_vcpus: vms[vi].vcpus,
                need_mib: vms[vi].memory_mib,
                max_vcpus: slots.iter().map(|s| s.cap_vcpus).max().unwrap_or(0),
                max_mib: slots.iter().map(|s| s.cap_mib).max().unwrap_or(0),
            };
        }
    }
    // What was free before this group.
    let before =
        slots.iter().map(|s| Slot::new(s.host, s.rank, &hosts[s.host], req.overcommit.cpu, req.overcommit.memory));
    let (mut free_vcpus, mut free_mib) = (0u64, 0u64);
    let mut largest: Option<Slot> = None;
    for s in before {
        free_vcpus = free_vcpus.saturating_add(s.free_vcpus());
        free_mib = free_mib.saturating_add(s.free_mib());
        if largest.as_ref().is_none_or(|l| (s.free_mib(), Reverse(s.rank)) > (l.free_mib(), Reverse(l.rank))) {
            largest = Some(s);
        }
    }
    GroupError::Infeasible {
        needed_vms: vms.len(),
        placeable: assigned.iter().filter(|a| a.is_some()).count(),
        reason: Shortfall {
            free_vcpus,
            free_mib,
            hosts: slots.len(),
            largest_free_vcpus: largest.as_ref().map_or(0, Slot::free_vcpus),
            largest_free_mib: largest.as_ref().map_or(0, Slot::free_mib),
            first_unplaced: vms[first].name.clone(),
            need_vcpus: vms[first].vcpus,
            need_mib: vms[first].memory_mib,
            anti_affinity: req.anti_affinity,
        },
    }
}

#[cfg(test)]
mod tests;
