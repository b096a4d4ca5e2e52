//! Placement of a single VM: filter the hosts that can take it, then choose the least loaded.
//! It scores hosts with the same arithmetic as [`crate::place_group`] under the spread policy
//! (memory is not overcommitted here), but unlike group placement it still only considers
//! hosts that already hold the VM's template.

use crate::slot::{capacity, ordered, Slot};

/// What the scheduler knows about one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostView {
    pub name: String,
    /// False for hosts that must take no new VMs (unreachable, in maintenance, in standby).
    pub schedulable: bool,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// vCPUs and memory already promised to VMs on this host.
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    /// Measured CPU load, 0.0..=1.0 (used to break ties between equally committed hosts).
    pub cpu_load: f64,
    /// Templates present on the host.
    pub templates: Vec<String>,
    /// Operator-given labels (e.g. `rack=r1`, `ssd=true`), matched by placement constraints.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What one VM needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub template: String,
    /// The host the user asked for, if any.
    pub host: Option<String>,
    /// vCPUs per physical CPU that may be promised (memory is never overcommitted here).
    pub cpu_overcommit: f64,
}

/// Why a VM could not be placed; each message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaceError {
    #[error("unknown host {0:?}: see `corral host list`")]
    UnknownHost(String),
    #[error(
        "host {0:?} is not taking new VMs (unreachable or in maintenance): choose another host or leave --host out"
    )]
    HostUnschedulable(String),
    #[error("host {host:?} lacks room: the VM needs {need_vcpus} vCPUs and {need_mib} MiB, the host has {free_vcpus} vCPUs and {free_mib} MiB free")]
    HostFull { host: String, need_vcpus: u32, need_mib: u64, free_vcpus: u32, free_mib: u64 },
    #[error("no host is taking new VMs: check `corral host list`")]
    NoHosts,
    #[error("the VM needs {need_vcpus} vCPUs and {need_mib} MiB but the largest host has {max_vcpus} vCPUs and {max_mib} MiB: ask for less")]
    TooBig { need_vcpus: u32, need_mib: u64, max_vcpus: u32, max_mib: u64 },
    #[error("no host has room for {need_vcpus} vCPUs and {need_mib} MiB right now (most free memory: {best_free_mib} MiB on {best_host}): stop or delete VMs, or add hosts")]
    NoRoom { need_vcpus: u32, need_mib: u64, best_free_mib: u64, best_host: String },
    #[error("no host holds template {0:?}")]
    NoTemplate(String),
    #[error("the CPU overcommit must be a positive finite number, not {0}: fix the controller's setting")]
    InvalidOvercommit(f64),
}

fn slot(h: &HostView, r: &Request) -> Slot {
    Slot::new(0, 0, h, r.cpu_overcommit, 1.0)
}

#[cfg(test)]
fn fits(h: &HostView, r: &Request) -> bool {
    slot(h, r).fits(u64::from(r.vcpus), r.memory_mib)
}

/// Chooses a host for one VM: the user's host if given and it fits, else the host that ends up
/// least loaded (dominant share of memory and overcommitted vCPUs after placing, then measured
/// CPU load). Only hosts that hold the template are candidates. Deterministic: ties break by
/// host name. One pass over `hosts`, no allocation besides the answer.
pub fn place_one(hosts: &[HostView], r: &Request) -> Result<String, PlaceError> {
    if !(r.cpu_overcommit.is_finite() && r.cpu_overcommit > 0.0) {
        return Err(PlaceError::InvalidOvercommit(r.cpu_overcommit));
    }
    let (need_v, need_m) = (u64::from(r.vcpus), r.memory_mib);
    if let Some(want) = &r.host {
        let h = hosts.iter().find(|h| &h.name == want).ok_or_else(|| PlaceError::UnknownHost(want.clone()))?;
        if !h.schedulable {
            return Err(PlaceError::HostUnschedulable(want.clone()));
        }
        let s = slot(h, r);
        if !s.fits(need_v, need_m) {
            return Err(PlaceError::HostFull {
                host: want.clone(),
                need_vcpus: r.vcpus,
                need_mib: r.memory_mib,
                free_vcpus: u32::try_from(s.free_vcpus()).unwrap_or(u32::MAX),
                free_mib: s.free_mib(),
            });
        }
        return Ok(want.clone());
    }
    let has_template = |h: &HostView| h.templates.iter().any(|t| t == &r.template);
    // Fast pass: the best host. The template check (pointer-chasing) is made only for hosts
    // that would beat the best so far.
    let mut best: Option<((u64, u64), &HostView)> = None;
    for h in hosts {
        if !h.schedulable {
            continue;
        }
        let s = slot(h, r);
        if !s.fits(need_v, need_m) {
            continue;
        }
        let key = (ordered(s.share_after(need_v, need_m)), s.load);
        if best.is_none_or(|(k, b)| key < k || (key == k && h.name < b.name)) && has_template(h) {
            best = Some((key, h));
        }
    }
    if let Some((_, h)) = best {
        return Ok(h.name.clone());
    }
    // Nothing fits: say why.
    let mut any_live = false;
    let mut any_template = false;
    let (mut max_vcpus, mut max_mib) = (0u64, 0u64);
    let mut roomiest: Option<(u64, &HostView)> = None;
    for h in hosts.iter().filter(|h| h.schedulable) {
        any_live = true;
        if !has_template(h) {
            continue;
        }
        any_template = true;
        max_vcpus = max_vcpus.max(capacity(u64::from(h.vcpus), r.cpu_overcommit));
        max_mib = max_mib.max(h.memory_mib);
        let free = slot(h, r).free_mib();
        if roomiest.is_none_or(|(f, b)| free > f || (free == f && h.name < b.name)) {
            roomiest = Some((free, h));
        }
    }
    if !any_live {
        return Err(PlaceError::NoHosts);
    }
    if !any_template {
        return Err(PlaceError::NoTemplate(r.template.clone()));
    }
    if need_m > max_mib || need_v > max_vcpus {
        return Err(PlaceError::TooBig {
            need_vcpus: r.vcpus,
            need_mib: r.memory_mib,
            max_vcpus: u32::try_from(max_vcpus).unwrap_or(u32::MAX),
            max_mib,
        });
    }
    Err(PlaceError::NoRoom {
        need_vcpus: r.vcpus,
        need_mib: r.memory_mib,
        best_free_mib: roomiest.map_or(0, |(f, _)| f),
        best_host: roomiest.map(|(_, h)| h.name.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, vcpus: u32, mem: u64, used_v: u32, used_m: u64) -> HostView {
        HostView {
            name: name.into(),
            schedulable: true,
            vcpus,
            memory_mib: mem,
            used_vcpus: used_v,
            used_memory_mib: used_m,
            cpu_load: 0.0,
            templates: vec!["base".into()],
            labels: Default::default(),
        }
    }
    fn req(v: u32, m: u64) -> Request {
        Request { vcpus: v, memory_mib: m, template: "base".into(), host: None, cpu_overcommit: 4.0 }
    }

    #[test]
    fn picks_the_least_loaded_host() {
        let hs = [host("a", 4, 4096, 0, 2048), host("b", 4, 4096, 0, 512), host("c", 4, 4096, 0, 1024)];
        assert_eq!(place_one(&hs, &req(1, 256)), Ok("b".into()));
    }

    #[test]
    fn ties_break_by_name() {
        let hs = [host("b", 4, 4096, 0, 0), host("a", 4, 4096, 0, 0)];
        assert_eq!(place_one(&hs, &req(1, 256)), Ok("a".into()));
    }

    #[test]
    fn too_big_and_no_room_are_told_apart() {
        let hs = [host("a", 2, 1024, 0, 900)];
        assert!(matches!(place_one(&hs, &req(1, 4096)), Err(PlaceError::TooBig { .. })));
        assert!(matches!(place_one(&hs, &req(1, 512)), Err(PlaceError::NoRoom { best_free_mib: 124, .. })));
        assert!(matches!(place_one(&hs, &req(64, 128)), Err(PlaceError::TooBig { .. })));
    }

    #[test]
    fn explicit_host_is_checked() {
        let mut hs = vec![host("a", 2, 1024, 0, 0), host("b", 2, 1024, 0, 1000)];
        let mut r = req(1, 256);
        r.host = Some("b".into());
        assert!(matches!(place_one(&hs, &r), Err(PlaceError::HostFull { .. })));
        r.host = Some("zz".into());
        assert!(matches!(place_one(&hs, &r), Err(PlaceError::UnknownHost(_))));
        hs[0].schedulable = false;
        r.host = Some("a".into());
        assert!(matches!(place_one(&hs, &r), Err(PlaceError::HostUnschedulable(_))));
    }

    #[test]
    fn unknown_template_is_refused() {
        let hs = [host("a", 2, 1024, 0, 0)];
        let mut r = req(1, 128);
        r.template = "nope".into();
        assert_eq!(place_one(&hs, &r), Err(PlaceError::NoTemplate("nope".into())));
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(
            hosts in prop::collection::vec((1u32..16, 256u64..8192, 0u32..16, 0u64..8192), 1..12),
            v in 1u32..8, m in 64u64..4096,
        ) {
            let hs: Vec<HostView> = hosts.iter().enumerate()
                .map(|(i, &(vc, mem, uv, um))| host(&format!("h{i}"), vc, mem, uv.min(vc * 4), um.min(mem)))
                .collect();
            let r = req(v, m);
            if let Ok(name) = place_one(&hs, &r) {
                let h = hs.iter().find(|h| h.name == name).expect("placed on a known host");
                prop_assert!(h.used_memory_mib + m <= h.memory_mib);
                prop_assert!(f64::from(h.used_vcpus + v) <= f64::from(h.vcpus) * 4.0);
            } else {
                prop_assert!(hs.iter().all(|h| !fits(h, &r)));
            }
        }
    }
}
