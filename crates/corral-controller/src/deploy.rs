//! Bringing VMs up on hosts and taking them down, for single VMs and cluster members alike,
//! and the reconciler that finishes whatever a crash interrupted.
//!
//! A VM's record carries the work still owed to it (`pending`), written before any host is
//! asked to act. Bringing a VM up is two steps: *prepare* (the host gets the template if it
//! lacks it, the agent makes the copy-on-write disk) and *execute* (start it and wait until the
//! guest is up). A cluster member that fails on one host is cleaned up there and placed on
//! another. The reconciler runs the same steps for every VM whose work is still pending, and
//! removes VMs that hosts run but the store does not know (orphans of interrupted attempts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::agent::VmDefinition;
use corral_api::types::Mac;
use corral_api::{ApiError, CreateVm, ErrorKind, Pending, Vm, VmAction, VmState};
use corral_sched::{place_one, PlaceError, Request};

use crate::ipam::ipam_key;
use crate::service::{lock, mac_for, store_err, Controller};
use crate::tables::{IPAM, VMS};

/// A VM's vCPUs when neither its request nor its image says.
pub const DEFAULT_VCPUS: u32 = 1;
/// A VM's memory (MiB) when neither its request nor its image says.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// How many hosts a cluster member is tried on before the deployment gives up on it.
const MAX_HOSTS_TRIED: usize = 3;

/// Retry pacing of the reconciler, per VM.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    next: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    fn due(&self, name: &str) -> bool {
        lock(&self.next).get(name).is_none_or(|(_, at)| Instant::now() >= *at)
    }
    fn failed(&self, name: &str) {
        let mut m = lock(&self.next);
        let n = m.get(name).map(|(n, _)| n + 1).unwrap_or(1);
        let wait = Duration::from_secs(2u64.saturating_pow(n.min(6)));
        m.insert(name.to_string(), (n, Instant::now() + wait));
    }
    fn clear(&self, name: &str) {
        lock(&self.next).remove(name);
    }
}

impl Controller {
    /// Checks a request; answers its vCPUs and memory: the request's, else the image's
    /// defaults (an imported OVA's), else [`DEFAULT_VCPUS`] and [`DEFAULT_MEMORY_MIB`].
    fn validate_create(&self, req: &CreateVm) -> Result<(u32, u64), ApiError> {
        corral_api::names::validate_name("VM", &req.name).map_err(ApiError::bad_request)?;
        if let Some(w) = &req.workload {
            corral_api::validate_workload(w).map_err(ApiError::bad_request)?;
        }
        let t = self.check_template(&req.template)?;
        Self::check_firmware(&t, req.firmware)
            .map_err(|e| ApiError::bad_request(format!("{e}: leave --firmware unset")))?;
        let vcpus = req.vcpus.or(t.vcpus).unwrap_or(DEFAULT_VCPUS);
        let memory_mib = req.memory_mib.or(t.memory_mib).unwrap_or(DEFAULT_MEMORY_MIB);
        if vcpus == 0 {
            return Err(ApiError::bad_request("a VM needs at least 1 vCPU"));
        }
        if memory_mib < 32 {
            return Err(ApiError::bad_request(format!(
                "{memory_mib} MiB of memory is too little: a guest needs at least 32 MiB"
            )));
        }
        Ok((vcpus, memory_mib))
    }

    /// Creates a single VM: validate, place, record (with its pending work), then bring it up.
    pub async fn create_vm(self: &Arc<Self>, req: CreateVm) -> Result<Vm, ApiError> {
        let (vcpus, memory_mib) = self.validate_create(&req)?;
        let ha = crate::ha_policy::resolve_ha(req.ha, req.storage)?;
        let vm = {
            let mut p = Some(self.placing.lock().await);
            let unique = || -> Result<(), ApiError> {
                if VMS.contains(&*self.store, &req.name).map_err(store_err)? {
                    return Err(ApiError::already_exists(format!(
                        "a VM named {:?} already exists: choose another name or delete it first",
                        req.name
                    )));
                }
                Ok(())
            };
            unique()?;
            let request = Request {
                vcpus,
                memory_mib,
                template: req.template.to_string(),
                host: req.host.as_ref().map(|h| h.to_string()),
                cpu_overcommit: self.settings.cpu_overcommit,
            };
            // Room for the VM, and for an HA VM room kept for host failures: a standby host
            // is woken when either is short.
            let host = self
                .wake_while_short(&mut p, || {
                    // Checked again after a host was woken (the lock was let go meanwhile).
                    unique()?;
                    let host = place_one(&self.views_for_storage(req.storage)?, &request).map_err(place_error)?;
                    if ha != corral_api::HaPolicy::Off {
                        self.admit_ha(&[(host.clone(), vcpus, memory_mib)])?;
                    }
                    Ok(host)
                })
                .await?;
            let uuid = uuid::Uuid::new_v4();
            let vm = Vm {
                def: VmDefinition {
                    name: req.name.clone(),
                    uuid,
                    template: req.template.clone(),
                    vcpus,
                    memory_mib,
                    mac: self.unique_mac(&uuid)?,
                    ip: None,
                    workload: req.workload.clone().unwrap_or_default(),
                    disk_mib: None,
                    network: None,
                    storage: req.storage,
                    ha,
                    firmware: req.firmware,
                    ssh_keys: req.ssh_keys.clone(),
                    user_data: req.user_data.clone(),
                },
                state: if req.start { VmState::Starting } else { VmState::Inactive },
                host,
                disk: None,
                boot_ms: None,
                error: None,
                created_ms: corral_api::now_ms(),
                usage: None,
                cluster: None,
                index: None,
                pending: Some(Pending::Create { start: req.start }),
                migration: None,
            };
            // Intent first: the record exists before the host is asked to do anything.
            self.put_vm(&vm)?;
            vm
        };
        let _b = self.busy(&vm.def.name)?;
        tracing::info!("creating VM {} on {}", vm.def.name, vm.host);
        match self.bring_up(&vm.def.name, false).await {
            Ok(vm) => Ok(vm),
            // Its host did not answer: the intent stays, and the reconciler creates the VM
            // there once the host reports. Never left stuck in error for a host that wakes.
            Err(e) if e.kind == ErrorKind::Unavailable => {
                let mut v = self.vm(&vm.def.name)?;
                v.error = Some(format!("waiting for host {}: {}", v.host, e.message));
                self.put_vm(&v)?;
                self.event(
                    "vm.deferred",
                    &vm.def.name,
                    format!("host {} did not answer; created once it reports", v.host),
                );
                Err(ApiError::unavailable(format!(
                    "{}; VM {:?} is recorded and will be created on {} as soon as it reports (see `corral vm show {}`)",
                    e.message, vm.def.name, v.host, vm.def.name
                )))
            }
            Err(e) => {
                self.give_up(&vm.def.name, &e).await;
                Err(e)
            }
        }
    }

    /// A MAC no other VM has.
    pub(crate) fn unique_mac(&self, uuid: &uuid::Uuid) -> Result<Mac, ApiError> {
        let taken: std::collections::HashSet<Mac> = self.vms()?.into_iter().map(|v| v.def.mac).collect();
        (0u8..=255)
            .map(|salt| mac_for(uuid, salt))
            .find(|m| !taken.contains(m))
            .ok_or_else(|| ApiError::internal("no free MAC address for this UUID"))
    }

    /// Step one: the host holds the template and the agent has made the VM's disk.
    pub(crate) async fn prepare(&self, name: &str) -> Result<Vm, ApiError> {
        let vm = self.vm(name)?;
        if !matches!(vm.pending, Some(Pending::Create { .. })) {
            return Ok(vm);
        }
        self.ensure_template(&vm.host, &vm.def.template).await?;
        let agent = self.agent(&vm.host)?;
        let st = match agent.create(&vm.def, false).await {
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                // A stale copy from an earlier attempt holds the name on this host.
                let stale = agent.get(name).await?;
                agent.delete_copy(name, &stale.uuid).await?;
                agent.create(&vm.def, false).await?
            }
            r => r?,
        };
        self.settle(name, &st)
    }

    /// Step two: start it if it is meant to run, and wait until the guest is up. The VM's
    /// pending work is done when this returns.
    pub(crate) async fn execute(&self, name: &str) -> Result<Vm, ApiError> {
        let mut vm = self.vm(name)?;
        let Some(Pending::Create { start }) = vm.pending else { return Ok(vm) };
        if start && vm.state != VmState::Running {
            vm.state = VmState::Starting;
            self.put_vm(&vm)?;
            let st = self.agent(&vm.host)?.action(name, VmAction::Start).await?;
            vm = self.settle(name, &st)?;
        }
        vm.pending = None;
        self.put_vm(&vm)?;
        Ok(vm)
    }

    /// Prepare and execute; a relocatable VM that fails on its host is cleaned up there and
    /// tried on another, up to [`MAX_HOSTS_TRIED`] hosts.
    pub(crate) async fn bring_up(&self, name: &str, relocatable: bool) -> Result<Vm, ApiError> {
        let mut tried: Vec<String> = Vec::new();
        loop {
            let res = async {
                self.prepare(name).await?;
                self.execute(name).await
            }
            .await;
            let err = match res {
                Ok(vm) => return Ok(vm),
                Err(e) => e,
            };
            let vm = self.vm(name)?;
            tried.push(vm.host.clone());
            if !relocatable || tried.len() >= MAX_HOSTS_TRIED {
                return Err(err);
            }
            // Leave nothing behind on the failed host (if it is down, the orphan sweep will).
            if let Ok(a) = self.agent(&vm.host) {
                let _ = a.delete_copy(name, &vm.def.uuid).await;
            }
            let to = self.relocate(name, &tried).await.map_err(|e| ApiError {
                message: format!("{}; no other host can take it: {}", err.message, e.message),
                ..err.clone()
            })?;
            self.event("vm.retry", name, format!("failed on {}: {}; retrying on {to}", vm.host, err.message));
        }
    }

    /// Places a VM again, avoiding `avoid`, and records the new host.
    async fn relocate(&self, name: &str, avoid: &[String]) -> Result<String, ApiError> {
        let _p = self.placing.lock().await;
        let mut vm = self.vm(name)?;
        let mut views = self.host_views()?;
        for v in views.iter_mut() {
            if avoid.contains(&v.name) {
                v.schedulable = false;
            }
        }
        let to = self.place_member(&vm, &views, None)?;
        vm.host = to.clone();
        vm.state = VmState::Starting;
        vm.disk = None;
        vm.error = None;
        self.put_vm(&vm)?;
        Ok(to)
    }

    /// The end of the road for a VM that could not be brought up: a cluster member is removed
    /// (nothing half-made stays), a single VM stays visible in `error` with the reason.
    pub(crate) async fn give_up(&self, name: &str, err: &ApiError) {
        let Ok(mut vm) = self.vm(name) else { return };
        if vm.cluster.is_some() {
            self.event("vm.failed", name, format!("not deployed: {}", err.message));
            if let Err(e) = self.remove(name).await {
                tracing::warn!("cleaning up {name}: {}", e.message);
            }
        } else {
            vm.pending = None;
            if !conflict(err) {
                vm.state = VmState::Error;
                vm.error = Some(err.message.clone());
            }
            let _ = self.put_vm(&vm);
        }
    }

    /// Removes a VM from its host, then forgets it and frees its address. The intent is
    /// recorded first, so the reconciler finishes the job after a crash.
    pub(crate) async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let mut vm = self.vm(name)?;
        if vm.pending != Some(Pending::Delete) {
            vm.pending = Some(Pending::Delete);
            vm.state = VmState::Deleting;
            self.put_vm(&vm)?;
        }
        self.agent(&vm.host)?.delete(name, &vm.def.uuid).await?;
        let mut ops = vec![VMS.delete_op(name)];
        if let Some(ip) = &vm.def.ip {
            ops.push(IPAM.delete_op(&ipam_key(ip)));
        }
        self.store.apply(ops).map_err(store_err)?;
        self.forget_usage(name);
        tracing::info!("deleted VM {name}");
        Ok(())
    }

    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let vm = self.vm(name)?;
        if let Some(c) = &vm.cluster {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is a member of cluster {c:?}: use `corral cluster scale {c} --size N` or `corral cluster delete {c}`"
            )));
        }
        let _b = self.busy(name)?;
        self.remove(name).await
    }

    pub async fn vm_action(self: &Arc<Self>, name: &str, action: VmAction) -> Result<Vm, ApiError> {
        let vm = self.vm(name)?;
        action.check(vm.state).map_err(ApiError::conflict)?;
        let agent = self.agent(&vm.host)?;
        let _b = self.busy(name)?;
        match agent.action(name, action).await {
            Ok(st) => self.settle(name, &st),
            Err(e) if e.kind == ErrorKind::NotFound && action == VmAction::Start => {
                // The host never got the VM (its creation was lost): define it there first.
                let mut v = self.vm(name)?;
                v.pending = Some(Pending::Create { start: true });
                v.state = VmState::Starting;
                v.error = None;
                self.put_vm(&v)?;
                self.event("vm.recreated", name, format!("{} did not hold it: created there again", v.host));
                self.bring_up(name, false).await
            }
            Err(e) => {
                if !conflict(&e) && e.kind != ErrorKind::Unavailable {
                    let mut vm = self.vm(name)?;
                    vm.state = VmState::Error;
                    vm.error = Some(e.message.clone());
                    self.put_vm(&vm)?;
                }
                Err(e)
            }
        }
    }

    /// One pass of the reconciler: finish pending work, remove orphans, finish cluster deletes.
    pub async fn reconcile_once(self: &Arc<Self>) {
        let Ok(vms) = self.vms() else { return };
        for vm in &vms {
            let Some(p) = vm.pending else {
                self.backoff.clear(&vm.def.name);
                continue;
            };
            if !self.host_ready(&vm.host) || !self.backoff.due(&vm.def.name) {
                continue;
            }
            let Ok(guard) = self.busy(&vm.def.name) else { continue };
            let me = self.clone();
            let name = vm.def.name.clone();
            let relocatable = vm.cluster.is_some();
            tokio::spawn(async move {
                let _g = guard;
                let res = match p {
                    Pending::Create { .. } => me.bring_up(&name, relocatable).await.map(|_| ()),
                    Pending::Delete => me.remove(&name).await,
                };
                match res {
                    Ok(()) => me.event("vm.reconciled", &name, format!("finished pending {p:?}")),
                    Err(e) => {
                        tracing::warn!("reconciling {name}: {}", e.message);
                        me.backoff.failed(&name);
                        if matches!(p, Pending::Create { .. }) && e.kind != ErrorKind::Unavailable {
                            me.give_up(&name, &e).await;
                        }
                    }
                }
            });
        }
        // Orphans: VMs a host runs that the store does not know there (same name, UUID, host).
        for host in self.ready_hosts() {
            let Some(reported) = self.reported(&host) else { continue };
            for st in reported {
                if self.is_busy(&st.name) {
                    continue;
                }
                // Both copies of a VM in live migration belong to the migration, not the sweep.
                let ours = vms.iter().any(|v| {
                    v.def.name == st.name && v.def.uuid == st.uuid && (v.host == host || v.migration.is_some())
                });
                if ours {
                    continue;
                }
                let Ok(guard) = self.busy(&st.name) else { continue };
                let me = self.clone();
                let host = host.clone();
                tokio::spawn(async move {
                    let _g = guard;
                    // Check again under the busy mark: the record may have appeared meanwhile.
                    let known = VMS.get(&*me.store, &st.name).ok().flatten();
                    if known.is_some_and(|v| v.def.uuid == st.uuid && (v.host == host || v.migration.is_some())) {
                        return;
                    }
                    if let Ok(a) = me.agent(&host) {
                        match a.delete_copy(&st.name, &st.uuid).await {
                            Ok(()) => me.event(
                                "vm.orphan-removed",
                                &st.name,
                                format!("removed from {host}: the store has no such VM there"),
                            ),
                            Err(e) => tracing::warn!("removing orphan {} from {host}: {}", st.name, e.message),
                        }
                    }
                });
            }
        }
        self.resume_migrations(&vms);
        self.finish_cluster_deletes();
        self.sync_networks().await;
        self.sync_hosts_files().await;
    }

    /// Moves a stopped or suspended VM to another host (cold move): it keeps its identity,
    /// disk and, if suspended, its memory.
    pub async fn move_vm(self: &Arc<Self>, name: &str, to: &str) -> Result<Vm, ApiError> {
        let vm = self.vm(name)?;
        if !matches!(vm.state, VmState::Inactive | VmState::Suspended) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is {}: stop or suspend it first (live migration comes with `corral vm migrate`)",
                vm.state
            )));
        }
        if vm.host == to {
            return Err(ApiError::bad_request(format!("VM {name:?} is already on {to}")));
        }
        crate::ha_policy::refuse_shared_move(&vm)?;
        {
            let _p = self.placing.lock().await;
            let views = self.host_views()?;
            if !views.iter().any(|v| v.name == to) {
                return Err(ApiError::bad_request(format!("unknown host {to:?}: see `corral host list`")));
            }
            self.place_member(&vm, &views, Some(to))?;
        }
        self.move_stopped(name, to).await?;
        self.forget_pushed(name);
        self.sync_networks().await;
        self.vm(name)
    }
}

/// The VM's state forbade the request for now (busy, or already so): not a failure of the VM.
fn conflict(e: &ApiError) -> bool {
    matches!(e.kind, ErrorKind::Conflict | ErrorKind::AlreadyExists | ErrorKind::TooLate)
}

/// Maps a placement failure to an API error.
pub(crate) fn place_error(e: PlaceError) -> ApiError {
    match e {
        PlaceError::UnknownHost(_) | PlaceError::NoTemplate(_) => ApiError::bad_request(e.to_string()),
        _ => ApiError::no_capacity(e.to_string()),
    }
}
