//! HA admission control: does the pool keep room to restart the protected VMs of any `n`
//! failed hosts on the others? Pure: the controller asks before admitting an HA VM and for
//! `corral ha status`.

use crate::HostView;

/// Why the reserve would be broken: the hosts whose failure could not be absorbed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "if {hosts} failed, their HA VMs ({need_vcpus} vCPU, {need_mib} MiB) would not all find a host among the others \
     ({free_vcpus} vCPU, {free_mib} MiB free in all)"
)]
pub struct ReserveShort {
    /// The failed hosts of the worst case, comma-separated.
    pub hosts: String,
    pub need_vcpus: u32,
    pub need_mib: u64,
    pub free_vcpus: u32,
    pub free_mib: u64,
}

/// Checks that if the worst `n` hosts failed (those whose protected VMs need the most
/// memory), each of their protected VMs could restart on one of the other schedulable hosts,
/// placed largest first on the first host with room (vCPUs counted with `cpu_overcommit`).
/// `protected` lists one entry per HA VM: its host, vCPUs and MiB. Nothing protected on the
/// worst hosts is never short.
pub fn check_reserve(
    views: &[HostView],
    protected: &[(String, u32, u64)],
    n: usize,
    cpu_overcommit: f64,
) -> Result<(), ReserveShort> {
    if n == 0 {
        return Ok(());
    }
    let need_of = |h: &str| protected.iter().filter(|(p, _, _)| p == h).map(|(_, _, m)| *m).sum::<u64>();
    let mut order: Vec<&HostView> = views.iter().collect();
    order.sort_by(|a, b| need_of(&b.name).cmp(&need_of(&a.name)).then(a.name.cmp(&b.name)));
    let failed: Vec<&str> = order.iter().take(n).map(|h| h.name.as_str()).collect();
    let mut homeless: Vec<(u32, u64)> =
        protected.iter().filter(|(h, _, _)| failed.contains(&h.as_str())).map(|(_, c, m)| (*c, *m)).collect();
    if homeless.is_empty() {
        return Ok(());
    }
    homeless.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut room: Vec<(u32, u64)> = views
        .iter()
        .filter(|v| v.schedulable && !failed.contains(&v.name.as_str()))
        .map(|v| {
            let cap = (f64::from(v.vcpus) * cpu_overcommit).floor() as u32;
            (cap.saturating_sub(v.used_vcpus), v.memory_mib.saturating_sub(v.used_memory_mib))
        })
        .collect();
    let (free_vcpus, free_mib) = room.iter().fold((0, 0), |(c, m), r| (c + r.0, m + r.1));
    let (need_vcpus, need_mib) = homeless.iter().fold((0, 0), |(c, m), h| (c + h.0, m + h.1));
    for (c, m) in &homeless {
        match room.iter_mut().find(|r| r.0 >= *c && r.1 >= *m) {
            Some(r) => {
                r.0 -= c;
                r.1 -= m;
            }
            None => {
                return Err(ReserveShort { hosts: failed.join(", "), need_vcpus, need_mib, free_vcpus, free_mib });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, mem: u64, used: u64) -> HostView {
        HostView {
            name: name.into(),
            schedulable: true,
            vcpus: 2,
            memory_mib: mem,
            used_vcpus: 0,
            used_memory_mib: used,
            cpu_load: 0.0,
            templates: vec![],
            labels: Default::default(),
        }
    }

    #[test]
    fn one_failure_absorbed_or_not() {
        let views = vec![host("a", 1024, 512), host("b", 1024, 256), host("c", 1024, 0)];
        let p = vec![("a".to_string(), 2, 512), ("b".to_string(), 1, 256)];
        // a fails: 512 MiB needed, b and c have 768 + 1024 free.
        assert_eq!(check_reserve(&views, &p, 1, 4.0), Ok(()));
        // a and b fail: 768 needed, c has 1024.
        assert_eq!(check_reserve(&views, &p, 2, 4.0), Ok(()));
        // Three failures leave nowhere.
        let e = check_reserve(&views, &p, 3, 4.0).expect_err("three of three hosts failed");
        assert_eq!(e.free_mib, 0);
        assert!(e.to_string().contains("a, b, c"), "{e}");
    }

    #[test]
    fn a_vm_needs_one_host_with_room_not_the_sum() {
        let views = vec![host("a", 6000, 4500), host("b", 6000, 4500), host("c", 6000, 4500)];
        let p: Vec<(String, u32, u64)> = ["a", "b", "c"].iter().map(|h| (h.to_string(), 1, 4500)).collect();
        // 3000 MiB free elsewhere in all, but no host has 4500.
        let e = check_reserve(&views, &p, 1, 4.0).expect_err("short");
        assert_eq!(e.free_mib, 3000);
        let views = vec![host("a", 6000, 4500), host("b", 6000, 4500), host("c", 6000, 0)];
        assert_eq!(check_reserve(&views, &p[..2], 1, 4.0), Ok(()));
    }

    #[test]
    fn the_worst_host_is_the_one_checked() {
        let views = vec![host("a", 1024, 1000), host("b", 1024, 100), host("c", 1024, 1000)];
        let p = vec![("a".to_string(), 1, 1000), ("b".to_string(), 1, 100)];
        // a's 1000 MiB would need b (924 free) and c (24 free): 948 < 1000.
        let e = check_reserve(&views, &p, 1, 4.0).expect_err("short");
        assert_eq!((e.hosts.as_str(), e.need_mib, e.free_mib), ("a", 1000, 948));
    }

    #[test]
    fn unschedulable_hosts_give_no_room_and_nothing_protected_is_fine() {
        let mut views = vec![host("a", 1024, 256), host("b", 1024, 0)];
        views[1].schedulable = false;
        let p = vec![("a".to_string(), 1, 256)];
        assert!(check_reserve(&views, &p, 1, 4.0).is_err());
        assert_eq!(check_reserve(&views, &[], 1, 4.0), Ok(()));
        assert_eq!(check_reserve(&views, &p, 0, 4.0), Ok(()));
    }
}
