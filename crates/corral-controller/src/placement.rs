//! Placement of cluster members and single VMs with the scheduler core: the cluster's policy,
//! anti-affinity and labels, and the hosts its network and storage allow.

use std::collections::BTreeMap;

use corral_api::cluster::{Cluster, PlacementPolicy};
use corral_api::{ApiError, Vm};
use corral_sched::{place_group, GroupError, GroupRequest, HostView, Overcommit, Policy, VmReq};

use crate::service::{store_err, Controller};

/// A group placement failure as an API error: a request that names something impossible is a
/// bad request, one the pool cannot hold right now lacks capacity.
pub(crate) fn group_error(e: GroupError) -> ApiError {
    match e {
        GroupError::Infeasible { .. }
        | GroupError::AntiAffinity { .. }
        | GroupError::TooBig { .. }
        | GroupError::HostFull { .. }
        | GroupError::NoHosts => ApiError::no_capacity(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

pub(crate) fn policy(p: PlacementPolicy) -> Policy {
    match p {
        PlacementPolicy::Spread => Policy::Spread,
        PlacementPolicy::Pack => Policy::Pack,
    }
}

impl Controller {
    pub(crate) fn overcommit(&self) -> Overcommit {
        Overcommit { cpu: self.settings.cpu_overcommit, memory: self.settings.memory_overcommit }
    }

    /// Host views for placing members of `c`: a bridged network's members go only to hosts
    /// that have its interface.
    pub(crate) fn views_for(&self, c: &Cluster) -> Result<Vec<HostView>, ApiError> {
        let mut views = self.views_for_storage(c.profile.storage)?;
        if let Some(b) = &c.profile.bridged {
            let regs: Vec<corral_api::agent::Register> = crate::tables::HOSTS.list(&*self.store).map_err(store_err)?;
            let mut any = false;
            for v in views.iter_mut() {
                let has = regs.iter().any(|r| r.name == v.name && r.interfaces.contains(&b.interface));
                v.schedulable &= has;
                any |= has;
            }
            if !any {
                return Err(ApiError::bad_request(format!(
                    "no host has interface {:?} open to bridged networks: check the profile, `corral host show`, \
                     and the hosts' `corral agent --provider-interfaces`",
                    b.interface
                )));
            }
        }
        Ok(views)
    }

    /// Places one member (or a single VM) with its cluster's placement rules.
    /// With `pin`, only that host is considered (the answer says whether it can take the VM).
    pub(crate) fn place_member(&self, vm: &Vm, views: &[HostView], pin: Option<&str>) -> Result<String, ApiError> {
        let cluster = vm.cluster.as_deref().map(|c| self.cluster(c)).transpose()?;
        let filtered: Vec<HostView>;
        let views = match &cluster {
            Some(c) if c.profile.bridged.is_some() => {
                let allowed = self.views_for(c)?;
                filtered = views
                    .iter()
                    .map(|v| {
                        let mut v = v.clone();
                        v.schedulable &= allowed.iter().any(|a| a.name == v.name && a.schedulable);
                        v
                    })
                    .collect();
                &filtered[..]
            }
            _ => views,
        };
        let (pol, anti, labels, existing) = match cluster {
            Some(c) => {
                let others: Vec<String> =
                    self.members(&c.name)?.into_iter().filter(|m| m.def.name != vm.def.name).map(|m| m.host).collect();
                (c.policy, c.profile.placement.anti_affinity, c.profile.placement.labels.clone(), others)
            }
            None => (PlacementPolicy::Spread, false, BTreeMap::new(), vec![]),
        };
        let req = GroupRequest {
            vms: vec![VmReq {
                name: vm.def.name.to_string(),
                vcpus: vm.def.vcpus,
                memory_mib: vm.def.memory_mib,
                host: pin.map(String::from),
            }],
            policy: policy(pol),
            anti_affinity: anti,
            labels,
            overcommit: self.overcommit(),
            existing,
        };
        let p = place_group(views, &req).map_err(group_error)?;
        p.into_iter().next().map(|p| p.host).ok_or_else(|| ApiError::internal("placement returned nothing"))
    }
}
