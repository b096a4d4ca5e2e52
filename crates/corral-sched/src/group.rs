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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn host(name: &str, vcpus: u32, mem: u64) -> HostView {
        HostView { name: name.into(), schedulable: true, vcpus, memory_mib: mem, ..Default::default() }
    }
    fn vm(name: &str, vcpus: u32, mem: u64) -> VmReq {
        VmReq { name: name.into(), vcpus, memory_mib: mem, host: None }
    }
    fn vms(n: usize, vcpus: u32, mem: u64) -> Vec<VmReq> {
        (0..n).map(|i| vm(&format!("vm{i:02}"), vcpus, mem)).collect()
    }
    fn group(vms: Vec<VmReq>, policy: Policy) -> GroupRequest {
        GroupRequest { vms, policy, ..Default::default() }
    }
    fn per_host(ps: &[Placement]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in ps {
            *m.entry(p.host.clone()).or_insert(0) += 1;
        }
        m
    }
    fn three() -> Vec<HostView> {
        vec![host("a", 4, 8192), host("b", 4, 8192), host("c", 4, 8192)]
    }

    #[test]
    fn spread_puts_six_equal_vms_two_per_host() {
        let ps = place_group(&three(), &group(vms(6, 1, 1024), Policy::Spread)).expect("fits");
        let counts: Vec<usize> = per_host(&ps).into_values().collect();
        assert_eq!(counts, vec![2, 2, 2]);
    }

    #[test]
    fn pack_uses_the_fewest_hosts_and_prefers_busy_ones() {
        let ps = place_group(&three(), &group(vms(6, 1, 1024), Policy::Pack)).expect("fits");
        // 6 GiB fits on one 8 GiB host; the empty tie breaks by name.
        assert_eq!(per_host(&ps), BTreeMap::from([("a".to_string(), 6)]));
        let ps = place_group(&three(), &group(vms(12, 1, 1024), Policy::Pack)).expect("fits");
        assert_eq!(per_host(&ps).len(), 2);
        // A host that already holds something is filled before empty ones.
        let mut hs = three();
        hs[2].used_memory_mib = 1024;
        hs[2].used_vcpus = 1;
        let ps = place_group(&hs, &group(vms(3, 1, 1024), Policy::Pack)).expect("fits");
        assert_eq!(per_host(&ps), BTreeMap::from([("c".to_string(), 3)]));
        // Best fit: the fuller of two busy hosts.
        hs[1].used_memory_mib = 6144;
        let ps = place_group(&hs, &group(vms(1, 1, 2048), Policy::Pack)).expect("fits");
        assert_eq!(ps[0].host, "b");
    }

    /// Memory-heavy A (1 vCPU, 2 GiB) and CPU-heavy B (3 vCPUs, 1 GiB) on 4-vCPU, 4-GiB hosts
    /// without overcommit: one A and one B fill a host's vCPUs, so 4 + 4 need 4 hosts. Placing
    /// all As first (two per host fill the memory) and then the Bs (one per host) needs 6.
    #[test]
    fn pack_mixes_sizes_to_fill_both_resources() {
        let hs: Vec<HostView> = (0..8).map(|i| host(&format!("h{i}"), 4, 4096)).collect();
        let mut vs = vms(4, 1, 2048);
        vs.extend((0..4).map(|i| vm(&format!("b{i}"), 3, 1024)));
        let mut req = group(vs, Policy::Pack);
        req.overcommit = Overcommit { cpu: 1.0, memory: 1.0 };
        let ps = place_group(&hs, &req).expect("fits");
        assert_eq!(per_host(&ps).len(), 4);
        assert!(per_host(&ps).values().all(|&n| n == 2));
        let ps = place_group_with(&hs, &req, 0).expect("fits");
        assert_eq!(per_host(&ps).len(), 6);
    }

    #[test]
    fn pack_opens_the_biggest_empty_host_first() {
        let hs = vec![host("small", 4, 4096), host("big", 16, 65536)];
        let ps = place_group(&hs, &group(vms(8, 1, 1024), Policy::Pack)).expect("fits");
        assert_eq!(per_host(&ps), BTreeMap::from([("big".to_string(), 8)]));
    }

    #[test]
    fn spread_ties_break_on_cpu_load_then_name() {
        let mut hs = three();
        hs[0].cpu_load = 0.9;
        let ps = place_group(&hs, &group(vms(1, 1, 1024), Policy::Spread)).expect("fits");
        assert_eq!(ps[0].host, "b");
        hs[0].cpu_load = 0.0;
        let ps = place_group(&hs, &group(vms(1, 1, 1024), Policy::Spread)).expect("fits");
        assert_eq!(ps[0].host, "a");
    }

    #[test]
    fn spread_goes_to_the_least_loaded_host() {
        let mut hs = three();
        hs[0].used_memory_mib = 4096;
        hs[1].used_vcpus = 8; // half of 4 × 4
        hs[2].used_memory_mib = 1024;
        let ps = place_group(&hs, &group(vms(1, 1, 1024), Policy::Spread)).expect("fits");
        assert_eq!(ps[0].host, "c");
    }

    #[test]
    fn output_follows_input_order_while_big_vms_go_first() {
        let req = group(vec![vm("small", 1, 512), vm("big", 2, 4096), vm("mid", 1, 2048)], Policy::Spread);
        let ps = place_group(&three(), &req).expect("fits");
        let names: Vec<&str> = ps.iter().map(|p| p.vm.as_str()).collect();
        assert_eq!(names, ["small", "big", "mid"]);
        // big went first, to "a"; mid to "b"; small to "c".
        let hosts: Vec<&str> = ps.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(hosts, ["c", "a", "b"]);
    }

    #[test]
    fn anti_affinity_spreads_one_per_host_and_says_when_hosts_run_out() {
        let mut req = group(vms(3, 1, 512), Policy::Pack);
        req.anti_affinity = true;
        let ps = place_group(&three(), &req).expect("fits");
        assert_eq!(per_host(&ps).len(), 3);

        req.vms = vms(4, 1, 512);
        let err = place_group(&three(), &req).expect_err("4 VMs, 3 hosts");
        assert_eq!(err, GroupError::AntiAffinity { needed: 4, available: 3, holding: 0 });
        assert!(err.to_string().starts_with("anti-affinity needs 4 hosts but only 3 schedulable hosts match"));
    }

    #[test]
    fn anti_affinity_counts_existing_members() {
        let mut req = group(vms(2, 1, 512), Policy::Spread);
        req.anti_affinity = true;
        req.existing = vec!["b".into(), "gone".into()];
        let ps = place_group(&three(), &req).expect("fits");
        assert_eq!(per_host(&ps).keys().collect::<Vec<_>>(), ["a", "c"]);
        req.vms = vms(3, 1, 512);
        let err = place_group(&three(), &req).expect_err("b is taken");
        assert!(err
            .to_string()
            .contains("needs 3 hosts but only 2 schedulable hosts match besides the 1 already holding"));
    }

    #[test]
    fn anti_affinity_limited_by_capacity_says_so() {
        let mut hs = three();
        hs[0].used_memory_mib = 8000;
        let mut req = group(vms(3, 1, 512), Policy::Spread);
        req.anti_affinity = true;
        let err = place_group(&hs, &req).expect_err("a is full");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot place all 3 VMs: only 2 fit"), "{msg}");
        assert!(msg.contains("anti-affinity allows one member per host"), "{msg}");
    }

    #[test]
    fn labels_filter_hosts() {
        let mut hs = three();
        hs[1].labels.insert("rack".into(), "r1".into());
        hs[2].labels.insert("rack".into(), "r1".into());
        hs[2].labels.insert("ssd".into(), "true".into());
        let mut req = group(vms(4, 1, 512), Policy::Spread);
        req.labels.insert("rack".into(), "r1".into());
        let ps = place_group(&hs, &req).expect("fits");
        assert_eq!(per_host(&ps).keys().collect::<Vec<_>>(), ["b", "c"]);
        req.labels.insert("ssd".into(), "true".into());
        let ps = place_group(&hs, &req).expect("fits");
        assert_eq!(per_host(&ps).keys().collect::<Vec<_>>(), ["c"]);

        req.labels = BTreeMap::from([("rack".to_string(), "r9".to_string())]);
        let err = place_group(&hs, &req).expect_err("no rack r9");
        assert!(err.to_string().starts_with("no schedulable host has labels rack=r9"));
        // An unschedulable host with the labels does not count.
        hs[0].labels.insert("rack".into(), "r9".into());
        hs[0].schedulable = false;
        assert!(matches!(place_group(&hs, &req), Err(GroupError::NoLabelMatch(_))));
        for h in &mut hs {
            h.schedulable = false;
        }
        assert_eq!(place_group(&hs, &req), Err(GroupError::NoHosts));
    }

    #[test]
    fn pinned_vms_go_where_asked_or_say_why_not() {
        let mut hs = three();
        let mut req = group(vms(3, 1, 1024), Policy::Spread);
        req.vms[1].host = Some("c".into());
        req.vms[2].host = Some("c".into());
        let ps = place_group(&hs, &req).expect("fits");
        assert_eq!(ps[1].host, "c");
        assert_eq!(ps[2].host, "c");
        assert_eq!(ps[0].host, "a");

        req.vms[1].host = Some("zz".into());
        let err = place_group(&hs, &req).expect_err("unknown");
        assert_eq!(err, GroupError::UnknownHost { vm: "vm01".into(), host: "zz".into() });

        req.vms[1].host = Some("b".into());
        hs[1].schedulable = false;
        assert!(matches!(place_group(&hs, &req), Err(GroupError::HostUnschedulable { .. })));
        hs[1].schedulable = true;
        hs[1].used_memory_mib = 7680;
        let err = place_group(&hs, &req).expect_err("full");
        assert!(matches!(err, GroupError::HostFull { free_mib: 512, free_vcpus: 16, .. }));
        assert!(err.to_string().contains("the host has 16 vCPUs and 512 MiB free"));

        hs[1].used_memory_mib = 0;
        req.labels.insert("ssd".into(), "true".into());
        hs[0].labels.insert("ssd".into(), "true".into());
        assert!(matches!(place_group(&hs, &req), Err(GroupError::HostLacksLabels { .. })));

        req.labels.clear();
        req.anti_affinity = true;
        req.vms[1].host = Some("c".into());
        assert!(matches!(place_group(&hs, &req), Err(GroupError::PinnedAntiAffinity { .. })));
    }

    #[test]
    fn memory_is_not_overcommitted_by_default() {
        let hs = vec![host("a", 4, 4096)];
        let req = group(vms(2, 1, 3000), Policy::Pack);
        let err = place_group(&hs, &req).expect_err("6000 MiB on 4096");
        assert!(matches!(err, GroupError::Infeasible { needed_vms: 2, placeable: 1, .. }));
        let mut req = req;
        req.overcommit.memory = 1.5;
        assert!(place_group(&hs, &req).is_ok());
        // vCPUs are overcommitted 4× by default: 16 one-vCPU VMs fit 4 cores, 17 do not.
        assert!(place_group(&hs, &group(vms(16, 1, 1), Policy::Pack)).is_ok());
        assert!(place_group(&hs, &group(vms(17, 1, 1), Policy::Pack)).is_err());
    }

    #[test]
    fn infeasible_says_how_much_is_free() {
        let mut hs = three();
        hs[0].used_memory_mib = 1024;
        let err = place_group(&hs, &group(vms(24, 1, 1024), Policy::Spread)).expect_err("23 GiB free");
        assert_eq!(
            err.to_string(),
            "cannot place all 24 VMs: only 23 fit (free: 48 vCPUs, 23552 MiB across 3 hosts; \
             largest free on one host: 16 vCPUs, 8192 MiB; first VM left over: \"vm23\" needing \
             1 vCPUs, 1024 MiB); add hosts, free resources or ask for fewer/smaller VMs"
        );
    }

    #[test]
    fn a_vm_bigger_than_any_host_is_told_apart() {
        let err = place_group(&three(), &group(vms(1, 1, 9000), Policy::Spread)).expect_err("too big");
        assert!(matches!(err, GroupError::TooBig { max_mib: 8192, max_vcpus: 16, .. }));
    }

    #[test]
    fn refusals_of_bad_input() {
        let mut req = group(vec![vm("x", 1, 1), vm("x", 1, 1)], Policy::Spread);
        assert_eq!(place_group(&three(), &req), Err(GroupError::DuplicateVm("x".into())));
        req.vms.pop();
        let mut hs = three();
        hs[2].name = "a".into();
        assert_eq!(place_group(&hs, &req), Err(GroupError::DuplicateHost("a".into())));
        req.overcommit.cpu = 0.0;
        assert!(matches!(place_group(&three(), &req), Err(GroupError::InvalidOvercommit { .. })));
        assert_eq!(place_group(&[], &group(vec![], Policy::Pack)), Ok(vec![]));
        assert_eq!(place_group(&[], &group(vms(1, 1, 1), Policy::Pack)), Err(GroupError::NoHosts));
    }

    #[test]
    fn deterministic_and_independent_of_host_order() {
        let hs: Vec<HostView> = (0..7)
            .map(|i| {
                let mut h = host(&format!("h{i}"), 8, 16384);
                h.used_memory_mib = (i % 3) * 2048;
                h
            })
            .collect();
        let mut vs = vms(20, 1, 1024);
        vs.extend(vms(5, 2, 3000).into_iter().map(|mut v| {
            v.name.push('b');
            v
        }));
        for policy in [Policy::Spread, Policy::Pack] {
            let req = group(vs.clone(), policy);
            let first = place_group(&hs, &req).expect("fits");
            assert_eq!(place_group(&hs, &req).expect("fits"), first);
            let mut rev = hs.clone();
            rev.reverse();
            assert_eq!(place_group(&rev, &req).expect("fits"), first);
            let mut rot = hs.clone();
            rot.rotate_left(3);
            assert_eq!(place_group(&rot, &req).expect("fits"), first);
        }
    }

    #[test]
    fn policy_parses_and_prints() {
        assert_eq!("spread".parse(), Ok(Policy::Spread));
        assert_eq!(" Pack ".parse(), Ok(Policy::Pack));
        assert!("tight".parse::<Policy>().is_err());
        assert_eq!(Policy::Pack.to_string(), "pack");
        assert_eq!(Policy::Spread.to_string(), "spread");
        assert_eq!(Policy::default(), Policy::Spread);
        assert_eq!(Overcommit::default(), Overcommit { cpu: 4.0, memory: 1.0 });
    }

    /// Two-dimensional bin packing is NP-hard and the greedy is not exact. Four identical hosts
    /// (10 vCPUs, 10 MiB, no overcommit); a memory-heavy VM X (10 MiB, 0 vCPUs), three VMs Y
    /// (2 MiB, 2 vCPUs) and a CPU-heavy VM Z (1 MiB, 9 vCPUs). Demand is under 50% of capacity
    /// in both resources and every VM fits an empty host. Biggest-memory-first spread puts X on
    /// one host and one Y on each other host, after which Z fits nowhere; yet Z alone on a host,
    /// X on another and the Ys on the other two fits. Pack happens to succeed here.
    #[test]
    fn greedy_can_miss_a_placement_in_two_dimensions() {
        let hs: Vec<HostView> = ["a", "b", "c", "d"].iter().map(|n| host(n, 10, 10)).collect();
        let vs = vec![vm("x", 0, 10), vm("y1", 2, 2), vm("y2", 2, 2), vm("y3", 2, 2), vm("z", 9, 1)];
        let mut req = group(vs, Policy::Spread);
        req.overcommit = Overcommit { cpu: 1.0, memory: 1.0 };
        assert!(matches!(place_group(&hs, &req), Err(GroupError::Infeasible { placeable: 4, .. })));
        req.policy = Policy::Pack;
        assert!(place_group(&hs, &req).is_ok());
    }

    // ---- property tests ----

    fn arb_hosts(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<HostView>> {
        prop::collection::vec(
            (1u32..=16, 512u64..=16384, 0u64..=110, 0u64..=110, prop::bool::weighted(0.85), 0u8..3, 0u32..=4),
            n,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (vc, mem, fv, fm, sched, rack, load))| {
                    let mut h = host(&format!("h{i:02}"), vc, mem);
                    h.schedulable = sched;
                    h.used_vcpus = u32::try_from(u64::from(vc) * 4 * fv / 200).unwrap_or(0);
                    h.used_memory_mib = mem * fm / 200;
                    h.cpu_load = f64::from(load) / 4.0;
                    if rack > 0 {
                        h.labels.insert("rack".into(), format!("r{rack}"));
                    }
                    h
                })
                .collect()
        })
    }

    fn arb_req() -> impl Strategy<Value = GroupRequest> {
        (
            prop::collection::vec((0u32..=6, 0u64..=2048, prop::option::weighted(0.04, 0usize..13)), 0..=16),
            prop::bool::ANY,
            prop::bool::weighted(0.3),
            prop::sample::select(vec![0u8, 0, 1, 2]),
            prop::sample::select(vec![1.0, 1.5, 2.0, 4.0]),
            prop::sample::select(vec![1.0, 1.5]),
            prop::collection::vec(0usize..14, 0..3),
        )
            .prop_map(|(vs, pack, aa, rack, cpu, memory, existing)| GroupRequest {
                vms: vs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (v, m, pin))| VmReq {
                        name: format!("vm{i:02}"),
                        vcpus: v,
                        memory_mib: m,
                        host: pin.map(|p| format!("h{p:02}")),
                    })
                    .collect(),
                policy: if pack { Policy::Pack } else { Policy::Spread },
                anti_affinity: aa,
                labels: if rack > 0 {
                    BTreeMap::from([("rack".to_string(), format!("r{rack}"))])
                } else {
                    BTreeMap::new()
                },
                overcommit: Overcommit { cpu, memory },
                existing: existing.into_iter().map(|e| format!("h{e:02}")).collect(),
            })
    }

    /// Checks an accepted placement against every rule, independently of the implementation.
    fn check_placement(hosts: &[HostView], req: &GroupRequest, ps: &[Placement]) -> Result<(), TestCaseError> {
        prop_assert_eq!(ps.len(), req.vms.len());
        let by_name: HashMap<&str, &HostView> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        let mut sums: HashMap<&str, (u64, u64, usize)> = HashMap::new();
        for (p, v) in ps.iter().zip(&req.vms) {
            prop_assert_eq!(&p.vm, &v.name);
            let h = by_name.get(p.host.as_str()).copied();
            prop_assert!(h.is_some(), "unknown host {}", p.host);
            let h = h.expect("checked");
            prop_assert!(h.schedulable);
            for (k, val) in &req.labels {
                prop_assert_eq!(h.labels.get(k), Some(val));
            }
            if let Some(pin) = &v.host {
                prop_assert_eq!(pin, &p.host);
            }
            let e = sums.entry(h.name.as_str()).or_default();
            e.0 += u64::from(v.vcpus);
            e.1 += v.memory_mib;
            e.2 += 1;
        }
        for (name, (sv, sm, n)) in sums {
            let h = by_name[name];
            let oc = req.overcommit;
            prop_assert!(
                (u64::from(h.used_vcpus) + sv) as f64 <= f64::from(h.vcpus) * oc.cpu,
                "vCPUs over capacity on {}",
                name
            );
            prop_assert!(
                (h.used_memory_mib + sm) as f64 <= h.memory_mib as f64 * oc.memory,
                "memory over capacity on {}",
                name
            );
            if req.anti_affinity {
                let old = req.existing.iter().filter(|e| *e == name).count();
                prop_assert!(n + old <= 1, "anti-affinity broken on {}", name);
            }
        }
        Ok(())
    }

    /// Dominant share of a host's overcommitted capacity, computed from scratch.
    fn util(h: &HostView, oc: Overcommit, add_v: u64, add_m: u64) -> f64 {
        let m = (h.used_memory_mib + add_m) as f64 / (h.memory_mib as f64 * oc.memory);
        let c = (u64::from(h.used_vcpus) + add_v) as f64 / (f64::from(h.vcpus) * oc.cpu);
        m.max(c)
    }

    /// (max − min utilisation over `hosts`, per-host VM counts) after applying `ps`.
    fn spread_stats(hosts: &[HostView], oc: Overcommit, req: &GroupRequest, ps: &[Placement]) -> (f64, Vec<usize>) {
        let mut add: HashMap<&str, (u64, u64, usize)> = HashMap::new();
        for (p, v) in ps.iter().zip(&req.vms) {
            let e = add.entry(p.host.as_str()).or_default();
            e.0 += u64::from(v.vcpus);
            e.1 += v.memory_mib;
            e.2 += 1;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut counts = Vec::new();
        for h in hosts {
            let (v, m, n) = add.get(h.name.as_str()).copied().unwrap_or_default();
            let u = util(h, oc, v, m);
            lo = lo.min(u);
            hi = hi.max(u);
            counts.push(n);
        }
        (hi - lo, counts)
    }

    /// The host-filling budget: pack's normal path, or its fallback.
    fn budget(fallback: bool) -> usize {
        if fallback {
            0
        } else {
            HOST_FILL_BUDGET
        }
    }

    /// Spread, pack, pack's fallback.
    fn mode_of(mode: u8) -> (Policy, usize) {
        match mode {
            0 => (Policy::Spread, HOST_FILL_BUDGET),
            1 => (Policy::Pack, HOST_FILL_BUDGET),
            _ => (Policy::Pack, 0),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the input, an accepted placement obeys every rule (capacity, schedulable,
        /// labels, pins, anti-affinity, one entry per VM in input order). A refusal returns no
        /// placement at all: the `Err` carries none, by construction.
        #[test]
        fn accepted_placements_obey_every_rule(
            hosts in arb_hosts(1..=12), req in arb_req(), fallback in prop::bool::ANY,
        ) {
            if let Ok(ps) = place_group_with(&hosts, &req, budget(fallback)) {
                check_placement(&hosts, &req, &ps)?;
            }
        }

        /// The result depends on the hosts, not on their order in the list.
        #[test]
        fn host_order_does_not_matter(
            (hosts, shuffled) in arb_hosts(1..=10).prop_flat_map(|h| (Just(h.clone()), Just(h).prop_shuffle())),
            req in arb_req(),
            fallback in prop::bool::ANY,
        ) {
            prop_assert_eq!(
                place_group_with(&hosts, &req, budget(fallback)),
                place_group_with(&shuffled, &req, budget(fallback))
            );
        }

        /// Guarantee (a) of the module doc: every VM needs at most half of every host in each
        /// resource, and the summed shares (memory + vCPU, pre-existing load included) are at
        /// most half the number of hosts. Then a host that cannot take a VM is more than half
        /// full in some resource, so if no host could, the summed shares would exceed half the
        /// host count: any placement that only refuses when nothing fits succeeds.
        #[test]
        fn any_fit_guarantee_in_two_dimensions(
            hosts in prop::collection::vec((8u32..=32, 4096u64..=32768, 0u64..=30, 0u64..=30), 1..=8),
            sizes in prop::collection::vec((0u32..=4, 0u64..=2048), 0..=40),
            mode in 0u8..3,
        ) {
            let oc = Overcommit { cpu: 1.0, memory: 1.0 };
            let hs: Vec<HostView> = hosts.iter().enumerate().map(|(i, &(v, m, fv, fm))| {
                let mut h = host(&format!("h{i}"), v, m);
                h.used_vcpus = u32::try_from(u64::from(v) * fv / 100).unwrap_or(0);
                h.used_memory_mib = m * fm / 100;
                h
            }).collect();
            let budget = hs.len() as f64 / 2.0;
            let mut total: f64 = hs.iter().map(|h| {
                h.used_memory_mib as f64 / h.memory_mib as f64 + f64::from(h.used_vcpus) / f64::from(h.vcpus)
            }).sum();
            let mut vs = Vec::new();
            for (i, &(v, m)) in sizes.iter().enumerate() {
                let w = hs.iter().map(|h| m as f64 / h.memory_mib as f64 + f64::from(v) / f64::from(h.vcpus))
                    .fold(0.0, f64::max);
                if total + w > budget { break; }
                total += w;
                vs.push(vm(&format!("vm{i:02}"), v, m));
            }
            let (policy, budget) = mode_of(mode);
            let mut req = group(vs, policy);
            req.overcommit = oc;
            let ps = place_group_with(&hs, &req, budget);
            prop_assert!(ps.is_ok(), "{:?}", ps);
            check_placement(&hs, &req, &ps.expect("checked"))?;
        }

        /// Guarantee (b): only memory binds, hosts are empty (sizes differ), every VM fits on
        /// every host, total demand is at most half the total capacity. A host refusing a VM of
        /// size s is more than half full: directly if s ≤ half the host; if not, because the
        /// first VM it took was at least s (per-VM placement goes biggest first; host filling
        /// starts each host with the biggest VM that fits). So refusing everywhere is impossible.
        #[test]
        fn half_full_in_one_dimension_always_fits(
            mems in prop::collection::vec(1024u64..=16384, 1..=8),
            permille in prop::collection::vec(1u64..=1000, 0..=60),
            mode in 0u8..3,
        ) {
            let hs: Vec<HostView> = mems.iter().enumerate().map(|(i, &m)| host(&format!("h{i}"), 64, m)).collect();
            let min = mems.iter().copied().min().unwrap_or(0);
            let cap: u64 = mems.iter().sum();
            let mut total = 0;
            let mut vs = Vec::new();
            for (i, &p) in permille.iter().enumerate() {
                let m = (min * p / 1000).max(1);
                if 2 * (total + m) > cap { break; }
                total += m;
                vs.push(vm(&format!("vm{i:02}"), 1, m));
            }
            let (policy, budget) = mode_of(mode);
            let req = group(vs, policy);
            let ps = place_group_with(&hs, &req, budget);
            prop_assert!(ps.is_ok(), "{:?}", ps);
            check_placement(&hs, &req, &ps.expect("checked"))?;
        }

        /// Identical empty hosts, identical VMs: spread is round-robin (counts differ by at most
        /// one) and utilisations differ by at most one VM's share.
        #[test]
        fn spread_of_identical_vms_is_round_robin(
            n_hosts in 1usize..=8, vc in 1u32..=16, mem in 1024u64..=16384,
            n in 1usize..=40, v in 0u32..=4, m in 0u64..=2048,
        ) {
            let hs: Vec<HostView> = (0..n_hosts).map(|i| host(&format!("h{i}"), vc, mem)).collect();
            let req = group(vms(n, v, m), Policy::Spread);
            let oc = req.overcommit;
            if let Ok(ps) = place_group(&hs, &req) {
                let (gap, counts) = spread_stats(&hs, oc, &req, &ps);
                let share = util(&hs[0], oc, u64::from(v), m) - util(&hs[0], oc, 0, 0);
                prop_assert!(gap <= share + 1e-9, "gap {} > share {}", gap, share);
                let (lo, hi) = (counts.iter().min(), counts.iter().max());
                prop_assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{:?}", counts);
            } else {
                // Refused only when the group really exceeds the pool.
                let cap_v = f64::from(vc) * oc.cpu * n_hosts as f64;
                let cap_m = mem as f64 * oc.memory * n_hosts as f64;
                let fit = |cap: f64, need: f64| if need == 0.0 { f64::INFINITY } else { (cap / need).floor() };
                let per_host = fit(f64::from(vc) * oc.cpu, f64::from(v)).min(fit(mem as f64 * oc.memory, m as f64));
                prop_assert!(per_host * (n_hosts as f64) < n as f64,
                    "refused {} VMs with capacity {} vCPUs {} MiB", n, cap_v, cap_m);
            }
        }

        /// Identical empty hosts, VMs of random sizes: after spread, utilisations differ by at
        /// most the largest VM's share (each VM goes where the result is lowest, which is at
        /// most the current minimum plus its share).
        #[test]
        fn spread_of_mixed_vms_is_balanced_within_the_largest_vm(
            n_hosts in 1usize..=8, vc in 1u32..=16, mem in 1024u64..=16384,
            sizes in prop::collection::vec((0u32..=4, 0u64..=2048), 1..=40),
        ) {
            let hs: Vec<HostView> = (0..n_hosts).map(|i| host(&format!("h{i}"), vc, mem)).collect();
            let vs: Vec<VmReq> = sizes.iter().enumerate().map(|(i, &(v, m))| vm(&format!("vm{i:02}"), v, m)).collect();
            let req = group(vs, Policy::Spread);
            let oc = req.overcommit;
            if let Ok(ps) = place_group(&hs, &req) {
                let (gap, _) = spread_stats(&hs, oc, &req, &ps);
                let largest = sizes.iter().map(|&(v, m)| util(&hs[0], oc, u64::from(v), m)).fold(0.0, f64::max);
                prop_assert!(gap <= largest + 1e-9, "gap {} > largest share {}", gap, largest);
            }
        }

        /// place_one and a one-VM spread group agree when every host holds the template.
        #[test]
        fn place_one_agrees_with_a_one_vm_group(hosts in arb_hosts(1..=10), v in 0u32..=6, m in 0u64..=4096) {
            let hs: Vec<HostView> = hosts.into_iter().map(|mut h| { h.templates = vec!["t".into()]; h }).collect();
            let one = crate::place_one(&hs, &crate::Request {
                vcpus: v, memory_mib: m, template: "t".into(), host: None, cpu_overcommit: 4.0,
            });
            let grp = place_group(&hs, &group(vec![vm("x", v, m)], Policy::Spread));
            prop_assert_eq!(one.ok(), grp.ok().map(|ps| ps[0].host.clone()));
        }
    }
}
