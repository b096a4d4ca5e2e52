//! Placement of a single VM: filter the hosts that can take it, then choose the least loaded.

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

impl HostView {
    fn free_memory(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }
    fn free_vcpus(&self, overcommit: f64) -> f64 {
        f64::from(self.vcpus) * overcommit - f64::from(self.used_vcpus)
    }
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
    #[error("host {0:?} is not taking new VMs (unreachable or in maintenance): choose another host or leave --host out")]
    HostUnschedulable(String),
    #[error("host {host:?} lacks room: the VM needs {need_vcpus} vCPUs and {need_mib} MiB, the host has {free_vcpus} vCPUs and {free_mib} MiB free")]
    HostFull {
        host: String,
        need_vcpus: u32,
        need_mib: u64,
        free_vcpus: u32,
        free_mib: u64,
    },
    #[error("no host is taking new VMs: check `corral host list`")]
    NoHosts,
    #[error("the VM needs {need_vcpus} vCPUs and {need_mib} MiB but the largest host has {max_vcpus} vCPUs and {max_mib} MiB: ask for less")]
    TooBig {
        need_vcpus: u32,
        need_mib: u64,
        max_vcpus: u32,
        max_mib: u64,
    },
    #[error("no host has room for {need_vcpus} vCPUs and {need_mib} MiB right now (most free memory: {best_free_mib} MiB on {best_host}): stop or delete VMs, or add hosts")]
    NoRoom {
        need_vcpus: u32,
        need_mib: u64,
        best_free_mib: u64,
        best_host: String,
    },
    #[error("no host holds template {0:?}")]
    NoTemplate(String),
}

fn fits(h: &HostView, r: &Request) -> bool {
    h.free_memory() >= r.memory_mib && h.free_vcpus(r.cpu_overcommit) >= f64::from(r.vcpus)
}

/// Load score after placing `r` on `h`: the larger of the committed memory and vCPU shares,
/// then measured CPU. Lower is better.
fn score(h: &HostView, r: &Request) -> (f64, f64) {
    let mem = (h.used_memory_mib + r.memory_mib) as f64 / h.memory_mib.max(1) as f64;
    let cpu = f64::from(h.used_vcpus + r.vcpus) / (f64::from(h.vcpus.max(1)) * r.cpu_overcommit);
    (mem.max(cpu), h.cpu_load)
}

/// Chooses a host for one VM: the user's host if given and it fits, else the host that ends up
/// least loaded. Deterministic: ties break by host name.
pub fn place_one(hosts: &[HostView], r: &Request) -> Result<String, PlaceError> {
    if let Some(want) = &r.host {
        let h = hosts
            .iter()
            .find(|h| &h.name == want)
            .ok_or_else(|| PlaceError::UnknownHost(want.clone()))?;
        if !h.schedulable {
            return Err(PlaceError::HostUnschedulable(want.clone()));
        }
        if !fits(h, r) {
            return Err(PlaceError::HostFull {
                host: want.clone(),
                need_vcpus: r.vcpus,
                need_mib: r.memory_mib,
                free_vcpus: h.free_vcpus(r.cpu_overcommit).max(0.0) as u32,
                free_mib: h.free_memory(),
            });
        }
        return Ok(want.clone());
    }
    let live: Vec<&HostView> = hosts.iter().filter(|h| h.schedulable).collect();
    if live.is_empty() {
        return Err(PlaceError::NoHosts);
    }
    let with_template: Vec<&HostView> = live
        .iter()
        .copied()
        .filter(|h| h.templates.iter().any(|t| t == &r.template))
        .collect();
    if with_template.is_empty() {
        return Err(PlaceError::NoTemplate(r.template.clone()));
    }
    let max_mib = with_template
        .iter()
        .map(|h| h.memory_mib)
        .max()
        .unwrap_or(0);
    let max_vcpus = with_template
        .iter()
        .map(|h| (f64::from(h.vcpus) * r.cpu_overcommit) as u32)
        .max()
        .unwrap_or(0);
    if r.memory_mib > max_mib || r.vcpus > max_vcpus {
        return Err(PlaceError::TooBig {
            need_vcpus: r.vcpus,
            need_mib: r.memory_mib,
            max_vcpus,
            max_mib,
        });
    }
    let best = with_template.iter().filter(|h| fits(h, r)).min_by(|a, b| {
        score(a, r)
            .partial_cmp(&score(b, r))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.name.cmp(&b.name))
    });
    match best {
        Some(h) => Ok(h.name.clone()),
        None => {
            let roomiest = with_template.iter().max_by(|a, b| {
                a.free_memory()
                    .cmp(&b.free_memory())
                    .then_with(|| b.name.cmp(&a.name))
            });
            Err(PlaceError::NoRoom {
                need_vcpus: r.vcpus,
                need_mib: r.memory_mib,
                best_free_mib: roomiest.map(|h| h.free_memory()).unwrap_or(0),
                best_host: roomiest.map(|h| h.name.clone()).unwrap_or_default(),
            })
        }
    }
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
        Request {
            vcpus: v,
            memory_mib: m,
            template: "base".into(),
            host: None,
            cpu_overcommit: 4.0,
        }
    }

    #[test]
    fn picks_the_least_loaded_host() {
        let hs = [
            host("a", 4, 4096, 0, 2048),
            host("b", 4, 4096, 0, 512),
            host("c", 4, 4096, 0, 1024),
        ];
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
        assert!(matches!(
            place_one(&hs, &req(1, 4096)),
            Err(PlaceError::TooBig { .. })
        ));
        assert!(matches!(
            place_one(&hs, &req(1, 512)),
            Err(PlaceError::NoRoom {
                best_free_mib: 124,
                ..
            })
        ));
        assert!(matches!(
            place_one(&hs, &req(64, 128)),
            Err(PlaceError::TooBig { .. })
        ));
    }

    #[test]
    fn explicit_host_is_checked() {
        let mut hs = vec![host("a", 2, 1024, 0, 0), host("b", 2, 1024, 0, 1000)];
        let mut r = req(1, 256);
        r.host = Some("b".into());
        assert!(matches!(
            place_one(&hs, &r),
            Err(PlaceError::HostFull { .. })
        ));
        r.host = Some("zz".into());
        assert!(matches!(
            place_one(&hs, &r),
            Err(PlaceError::UnknownHost(_))
        ));
        hs[0].schedulable = false;
        r.host = Some("a".into());
        assert!(matches!(
            place_one(&hs, &r),
            Err(PlaceError::HostUnschedulable(_))
        ));
    }

    #[test]
    fn unknown_template_is_refused() {
        let hs = [host("a", 2, 1024, 0, 0)];
        let mut r = req(1, 128);
        r.template = "nope".into();
        assert_eq!(
            place_one(&hs, &r),
            Err(PlaceError::NoTemplate("nope".into()))
        );
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
