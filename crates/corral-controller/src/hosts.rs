//! The host registry: registration, heartbeats and the live data they bring, cordons and
//! labels, and the views of hosts that users and the scheduler core see.

use std::collections::BTreeMap;
use std::time::Instant;

use corral_api::agent::{Heartbeat, HeartbeatReply, Register, VmStatus};
use corral_api::{now_ms, ApiError, Host, HostState, HostUsage, Vm};
use corral_sched::HostView;

use crate::service::{apply_status, lock, store_err, Controller, HostFlags};
use crate::tables::{CLUSTERS, HOSTS, HOST_FLAGS, VMS};

/// What the controller knows of a live host (not stored: it comes back with the next heartbeat).
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub last: Instant,
    pub last_ms: u64,
    pub usage: HostUsage,
    /// The VMs the agent reported last.
    pub vms: Vec<VmStatus>,
    /// VNIs of the networks present on the host.
    pub networks: Vec<u32>,
    /// VNIs of the networks with tunnel connections open from the host.
    pub tunnels: Vec<u32>,
}

/// A host's state with its HA flags applied: failed until it is back, then recovering for a
/// while (it takes no VMs in either).
fn ha_state(state: HostState, flags: &HostFlags) -> HostState {
    if flags.failed.as_ref().is_some_and(|f| f.fenced_ms.is_some() || state != HostState::Ready) {
        HostState::Failed
    } else if state == HostState::Ready && flags.recovering() {
        HostState::Recovering
    } else {
        state
    }
}

impl Controller {
    pub fn register(&self, r: Register) -> Result<(), ApiError> {
        corral_api::names::validate_name("host", &r.name).map_err(ApiError::bad_request)?;
        HOSTS.put(&*self.store, &r.name, &r).map_err(store_err)?;
        lock(&self.live).insert(
            r.name.clone(),
            Live {
                last: Instant::now(),
                last_ms: now_ms(),
                usage: Default::default(),
                vms: vec![],
                networks: vec![],
                tunnels: vec![],
            },
        );
        self.drs_host_on(&r.name);
        tracing::info!("host {} registered ({}, {})", r.name, r.url, r.accel.as_str());
        Ok(())
    }

    /// Forgets a host's last heartbeat (it was powered down on purpose).
    pub(crate) fn forget_live(&self, host: &str) {
        lock(&self.live).remove(host);
    }

    /// Records a heartbeat and brings VM states in line with what the agent reports; the
    /// reply renews the host's lease.
    pub fn heartbeat(&self, host: &str, hb: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        if !HOSTS.contains(&*self.store, host).map_err(store_err)? {
            return Err(ApiError::not_found(format!("unknown host {host:?}: register first")));
        }
        let reply = self.ha_on_heartbeat(host, &hb.vms)?;
        if !reply.fence.is_empty() {
            // Fenced: what it reports is not the VMs' state any more; it stops them first.
            lock(&self.live).remove(host);
            return Ok(reply);
        }
        for st in &hb.vms {
            if self.is_busy(&st.name) {
                continue;
            }
            let Some(mut vm) = VMS.get(&*self.store, &st.name).map_err(store_err)? else { continue };
            if vm.host != host || vm.def.uuid != st.uuid {
                continue;
            }
            lock(&self.vm_usage).insert(st.name.clone(), st.usage.clone());
            let changed = vm.state != st.state || vm.error != st.error || vm.boot_ms != st.boot_ms;
            if changed && crate::ha::crashed(&vm, st) {
                self.ha_crashed(&vm.def.name);
            }
            if changed {
                apply_status(&mut vm, st);
                VMS.put(&*self.store, &vm.def.name, &vm).map_err(store_err)?;
            }
        }
        lock(&self.live).insert(
            host.to_string(),
            Live {
                last: Instant::now(),
                last_ms: now_ms(),
                usage: hb.usage,
                vms: hb.vms,
                networks: hb.networks,
                tunnels: hb.tunnels,
            },
        );
        Ok(reply)
    }

    /// When the host's last heartbeat arrived, if one did since this controller started.
    pub(crate) fn last_heartbeat(&self, host: &str) -> Option<(Instant, u64)> {
        lock(&self.live).get(host).map(|l| (l.last, l.last_ms))
    }

    /// `f` of a host's last heartbeat, if the host is ready (that heartbeat is recent).
    fn if_ready<T>(&self, host: &str, f: impl FnOnce(&Live) -> T) -> Option<T> {
        lock(&self.live).get(host).filter(|l| l.last.elapsed() < self.settings.host_timeout).map(f)
    }

    pub(crate) fn host_ready(&self, name: &str) -> bool {
        self.if_ready(name, |_| ()).is_some()
    }

    /// VMs a ready host reported in its last heartbeat (None if the host is not ready).
    pub(crate) fn reported(&self, host: &str) -> Option<Vec<VmStatus>> {
        self.if_ready(host, |l| l.vms.clone())
    }

    /// VNIs a ready host reported in its last heartbeat.
    pub(crate) fn reported_networks(&self, host: &str) -> Vec<u32> {
        self.if_ready(host, |l| l.networks.clone()).unwrap_or_default()
    }

    /// VNIs of the networks with tunnel connections open from `host`, as it last said.
    pub(crate) fn reported_tunnels(&self, host: &str) -> Vec<u32> {
        self.if_ready(host, |l| l.tunnels.clone()).unwrap_or_default()
    }

    pub(crate) fn ready_hosts(&self) -> Vec<String> {
        lock(&self.live)
            .iter()
            .filter(|(_, l)| l.last.elapsed() < self.settings.host_timeout)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) fn host_state(&self, name: &str) -> (HostState, u64, HostUsage) {
        match lock(&self.live).get(name) {
            Some(l) if l.last.elapsed() < self.settings.host_timeout => (HostState::Ready, l.last_ms, l.usage.clone()),
            Some(l) => (HostState::Unreachable, l.last_ms, l.usage.clone()),
            None => (HostState::Unreachable, 0, HostUsage::default()),
        }
    }

    pub(crate) fn flags(&self, host: &str) -> Result<HostFlags, ApiError> {
        Ok(HOST_FLAGS.get(&*self.store, host).map_err(store_err)?.unwrap_or_default())
    }

    /// Cordons (no new VMs) or uncordons a host. Uncordoning ends its maintenance state and,
    /// as the operator says it is fixed, forgets its past failures (a quarantined host would
    /// otherwise be quarantined again at its next failure).
    pub fn set_cordon(&self, host: &str, cordoned: bool) -> Result<Host, ApiError> {
        self.host(host)?;
        let mut f = self.flags(host)?;
        f.cordoned = cordoned;
        if !cordoned {
            f.maintenance = None;
            f.failures.clear();
        }
        HOST_FLAGS.put(&*self.store, host, &f).map_err(store_err)?;
        self.host(host)
    }

    /// Sets a host's labels (used by placement constraints).
    pub fn set_labels(&self, host: &str, labels: BTreeMap<String, String>) -> Result<Host, ApiError> {
        self.host(host)?;
        for (k, v) in &labels {
            if k.is_empty() || k.contains(['=', ',']) || v.contains(['=', ',']) {
                return Err(ApiError::bad_request(format!(
                    "invalid label {k:?}={v:?}: keys are non-empty and neither may hold '=' or ','"
                )));
            }
        }
        let mut f = self.flags(host)?;
        f.labels = labels;
        HOST_FLAGS.put(&*self.store, host, &f).map_err(store_err)?;
        self.host(host)
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let vms = self.vms()?;
        let clusters: Vec<corral_api::cluster::Cluster> = CLUSTERS.list(&*self.store).map_err(store_err)?;
        regs.into_iter()
            .map(|r| {
                let (mut state, last, usage) = self.host_state(&r.name);
                let flags = self.flags(&r.name)?;
                let mut usage = usage;
                if flags.power == corral_api::drs::HostPower::Standby && state != HostState::Ready {
                    state = HostState::Standby;
                    usage = HostUsage::default();
                }
                state = ha_state(state, &flags);
                let mine: Vec<&Vm> = vms.iter().filter(|v| v.host == r.name).collect();
                let held = mine.iter().filter(|v| v.state.holds_resources());
                let allocated = corral_api::Capacity {
                    vcpus: held.clone().map(|v| v.def.vcpus).sum(),
                    memory_mib: held.map(|v| v.def.memory_mib).sum(),
                    disk_bytes: mine.iter().filter_map(|v| v.usage.as_ref()).map(|u| u.disk_bytes).sum(),
                };
                let nets = self.reported_networks(&r.name);
                Ok(Host {
                    name: r.name,
                    url: r.url,
                    state,
                    accel: r.accel,
                    accel_note: r.accel_note,
                    capacity: r.capacity,
                    allocated,
                    usage,
                    vms: mine.len(),
                    last_heartbeat_ms: last,
                    cordoned: flags.cordoned,
                    maintenance: flags.maintenance,
                    power: flags.power,
                    labels: flags.labels,
                    templates: r.templates.into_iter().map(|t| t.name).collect(),
                    underlay: r.underlay.map(|u| u.to_string()),
                    failures: flags.failures.len() as u32,
                    networks: nets
                        .into_iter()
                        .map(|vni| corral_api::HostNetwork {
                            vni,
                            bridge: format!("cbr{vni}"),
                            vxlan: format!("cvx{vni}"),
                            cluster: clusters.iter().find(|c| c.vni == vni).map(|c| c.name.clone()),
                        })
                        .collect(),
                })
            })
            .collect()
    }

    pub fn host(&self, name: &str) -> Result<Host, ApiError> {
        self.hosts()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no host named {name:?}: see `corral host list`")))
    }

    /// What the scheduler core needs to know of every host.
    pub(crate) fn host_views(&self) -> Result<Vec<HostView>, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let vms = self.vms()?;
        // Every host may take a VM of an image in the library: it is sent there first.
        let library: Vec<String> = self.library().into_iter().map(|t| t.name).collect();
        regs.into_iter()
            .map(|r| {
                let (state, _, usage) = self.host_state(&r.name);
                let flags = self.flags(&r.name)?;
                let state = ha_state(state, &flags);
                // A VM arriving by migration holds room on its destination too.
                let held = vms.iter().filter(|v| {
                    (v.host == r.name && (v.state.holds_resources() || v.pending.is_some()))
                        || v.migration.as_ref().is_some_and(|m| m.to == r.name)
                });
                Ok(HostView {
                    name: r.name.clone(),
                    schedulable: state == HostState::Ready
                        && !flags.cordoned
                        && flags.power == corral_api::drs::HostPower::On,
                    vcpus: r.capacity.vcpus,
                    memory_mib: r.capacity.memory_mib,
                    used_vcpus: held.clone().map(|v| v.def.vcpus).sum(),
                    used_memory_mib: held.map(|v| v.def.memory_mib).sum(),
                    cpu_load: usage.cpu_pct / 100.0,
                    templates: r
                        .templates
                        .into_iter()
                        .map(|t| t.name)
                        .chain(library.iter().cloned())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    labels: flags.labels,
                })
            })
            .collect()
    }
}
