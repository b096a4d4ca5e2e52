//! HA policy: which HA policy a VM gets, where its storage lets it go, admission control that
//! keeps room to restart the HA VMs of failed hosts, and `corral ha status`. Failure detection
//! and failover are in `ha.rs`.

use corral_api::agent::Register;
use corral_api::{ApiError, HaPolicy, HaStatus, HaUnprotected, Storage, Vm};

use crate::service::{store_err, Controller};
use crate::tables::HOSTS;

/// The HA policy a new VM gets: what was asked, checked against its storage; by default
/// `restart` on shared storage (its disk survives its host) and `off` on local storage.
pub(crate) fn resolve_ha(asked: Option<HaPolicy>, storage: Storage) -> Result<HaPolicy, ApiError> {
    match (asked, storage) {
        (None, Storage::Shared) => Ok(HaPolicy::Restart),
        (None, Storage::Local) => Ok(HaPolicy::Off),
        (Some(HaPolicy::Restart), Storage::Local) => Err(ApiError::bad_request(
            "--ha restart needs the disk on shared storage (--storage shared); on local storage use \
             --ha restart-fresh (restarted from its template) or off",
        )),
        (Some(h), _) => Ok(h),
    }
}

/// Live migration and cold moves copy a VM's disk between hosts; a disk in the shared pool is
/// not copied, and moving one is not supported yet.
pub(crate) fn refuse_shared_move(vm: &Vm) -> Result<(), ApiError> {
    if vm.def.storage == Storage::Shared {
        return Err(ApiError::conflict(format!(
            "VM {:?} has its disk on shared storage: moving it between hosts is not supported yet (it restarts \
             elsewhere with its disk if its host fails)",
            vm.def.name
        )));
    }
    Ok(())
}

impl Controller {
    /// Hosts as placement sees them for a VM on `storage`: a VM on shared storage goes only
    /// to hosts that mount the pool.
    pub(crate) fn views_for_storage(&self, storage: Storage) -> Result<Vec<corral_sched::HostView>, ApiError> {
        let mut views = self.host_views()?;
        self.restrict_to_storage(&mut views, storage)?;
        Ok(views)
    }

    /// Makes hosts that cannot hold a disk on `storage` unschedulable (for shared storage:
    /// those that do not mount the pool); an error if no host can.
    pub(crate) fn restrict_to_storage(
        &self,
        views: &mut [corral_sched::HostView],
        storage: Storage,
    ) -> Result<(), ApiError> {
        if storage == Storage::Local {
            return Ok(());
        }
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        if !regs.iter().any(|r| r.shared_dir.is_some()) {
            return Err(ApiError::no_capacity(
                "no host mounts shared storage: start agents with --shared-dir PATH (the same pool on every host)",
            ));
        }
        for v in views.iter_mut() {
            if !regs.iter().any(|r| r.name == v.name && r.shared_dir.is_some()) {
                v.schedulable = false;
            }
        }
        Ok(())
    }

    /// HA VMs (vCPUs, MiB) per host: stored ones that hold or will hold resources, plus
    /// `extra` about to be admitted.
    fn protected(&self, extra: &[(String, u32, u64)]) -> Result<Vec<(String, u32, u64)>, ApiError> {
        let mut p: Vec<(String, u32, u64)> = self
            .vms()?
            .into_iter()
            .filter(|v| v.def.ha != HaPolicy::Off && (v.state.holds_resources() || v.pending.is_some()))
            .map(|v| (v.host, v.def.vcpus, v.def.memory_mib))
            .collect();
        p.extend(extra.iter().cloned());
        Ok(p)
    }

    /// Admission control for new HA VMs (`extra`: host, vCPUs, MiB each): the pool must keep
    /// room to restart the HA VMs of `--ha-reserve-hosts` failed hosts. Refused with the
    /// reason, or (with `--ha-admission warn`) admitted with a warning event.
    pub(crate) fn admit_ha(&self, extra: &[(String, u32, u64)]) -> Result<(), ApiError> {
        if extra.is_empty() || self.settings.ha_reserve_hosts == 0 {
            return Ok(());
        }
        let mut views = self.views_for_restart()?;
        for (h, c, m) in extra {
            if let Some(v) = views.iter_mut().find(|v| &v.name == h) {
                v.used_vcpus += c;
                v.used_memory_mib += m;
            }
        }
        let protected = self.protected(extra)?;
        let n = self.settings.ha_reserve_hosts;
        match corral_sched::check_reserve(&views, &protected, n, self.settings.cpu_overcommit) {
            Ok(()) => Ok(()),
            Err(short) if self.settings.ha_admission == corral_api::HaAdmission::Warn => {
                self.event(
                    "ha.reserve-broken",
                    &short.hosts,
                    format!("admitted anyway (--ha-admission warn): {short}"),
                );
                Ok(())
            }
            Err(short) => Err(ApiError::no_capacity(format!(
                "not admitted: the pool keeps room to restart the HA VMs of {n} failed host(s), and {short}; add \
                 capacity, use --ha off, or lower the controller's --ha-reserve-hosts (see `corral ha status`)"
            ))),
        }
    }

    /// `corral ha status`: protected and unprotected VMs, hosts down, spare capacity.
    pub fn ha_status(&self) -> Result<HaStatus, ApiError> {
        let vms = self.vms()?;
        let views = self.views_for_restart()?;
        let mut st = HaStatus {
            lease_ms: self.settings.lease.as_millis() as u64,
            suspect_after_ms: self.settings.suspect_after.as_millis() as u64,
            ..Default::default()
        };
        for h in self.hosts()? {
            if matches!(h.state, corral_api::HostState::Failed | corral_api::HostState::Recovering) {
                st.hosts_down.push(h.name);
            }
        }
        for v in &vms {
            if v.def.ha == HaPolicy::Off {
                let why = if v.def.storage == Storage::Shared {
                    "HA is off: it waits for its host (create with --ha restart)"
                } else {
                    "HA is off and its disk is on its host: it waits for the host (use --storage shared, or --ha \
                     restart-fresh to restart it from its template)"
                };
                st.unprotected.push(HaUnprotected {
                    name: v.def.name.to_string(),
                    host: v.host.clone(),
                    why: why.into(),
                });
            } else {
                st.protected.push(v.def.name.to_string());
            }
        }
        // Spare capacity: could the HA VMs of the worst --ha-reserve-hosts hosts restart on
        // the others?
        let n = self.settings.ha_reserve_hosts.max(1);
        match corral_sched::check_reserve(&views, &self.protected(&[])?, n, self.settings.cpu_overcommit) {
            Ok(()) => {
                st.spare_ok = true;
                st.spare_note = format!("the HA VMs of any {n} failed host(s) fit on the others");
            }
            Err(short) => st.spare_note = short.to_string(),
        }
        Ok(st)
    }
}
