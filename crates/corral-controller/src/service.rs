//! The controller's operations. Desired state is written to the store before an agent is asked
//! to act, and the answer (or the next heartbeat) brings the actual state back.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::agent::{Heartbeat, Register, VmDefinition, VmStatus};
use corral_api::{
    now_ms, ApiError, ConsoleChunk, CreateVm, ExecRequest, ExecResult, Host, HostState, HostUsage,
    Template, Vm, VmAction, VmState, VmUsage,
};
use corral_sched::{place_one, HostView, PlaceError, Request};
use corral_store::{Store, StoreExt};

use crate::agents::AgentClient;

const VMS: &str = "vms";
const HOSTS: &str = "hosts";

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A host is unreachable when no heartbeat came for this long.
    pub host_timeout: Duration,
    /// vCPUs that may be promised per physical CPU.
    pub cpu_overcommit: f64,
}

/// What the controller knows of a live host (not stored: it comes back with the next heartbeat).
#[derive(Debug, Clone)]
struct Live {
    last: Instant,
    last_ms: u64,
    usage: HostUsage,
}

/// The controller: store, live host data, and the agents.
pub struct Controller {
    pub store: Arc<dyn Store>,
    settings: Settings,
    http: reqwest::Client,
    live: Mutex<BTreeMap<String, Live>>,
    /// Latest usage of each VM, from heartbeats: live data, never stored.
    vm_usage: Mutex<BTreeMap<String, VmUsage>>,
    /// VMs with an operation in flight: heartbeats do not overwrite their state meanwhile.
    busy: Mutex<HashSet<String>>,
    /// Serialises placement so two concurrent creations see each other's reservations.
    placing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_err(e: corral_store::StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Removes a VM name from the busy set when dropped.
struct BusyGuard<'a> {
    c: &'a Controller,
    name: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.c.busy).remove(&self.name);
    }
}

/// A locally administered, unicast MAC derived from the VM's UUID.
fn mac_for(uuid: &uuid::Uuid, salt: u8) -> String {
    let b = uuid.as_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0] ^ salt,
        b[1],
        b[2],
        b[3],
        b[4]
    )
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            store,
            settings,
            http,
            live: Mutex::new(BTreeMap::new()),
            vm_usage: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(HashSet::new()),
            placing: tokio::sync::Mutex::new(()),
        }
    }

    fn busy(&self, name: &str) -> Result<BusyGuard<'_>, ApiError> {
        if !lock(&self.busy).insert(name.to_string()) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is busy with another operation: wait for it to finish"
            )));
        }
        Ok(BusyGuard {
            c: self,
            name: name.to_string(),
        })
    }

    // ---- hosts -------------------------------------------------------------------------

    pub fn register(&self, r: Register) -> Result<(), ApiError> {
        corral_api::names::validate_name("host", &r.name).map_err(ApiError::bad_request)?;
        self.store.put_json(HOSTS, &r.name, &r).map_err(store_err)?;
        lock(&self.live).insert(
            r.name.clone(),
            Live {
                last: Instant::now(),
                last_ms: now_ms(),
                usage: Default::default(),
            },
        );
        tracing::info!(
            "host {} registered ({}, {})",
            r.name,
            r.url,
            r.accel.as_str()
        );
        Ok(())
    }

    /// Records a heartbeat and brings VM states in line with what the agent reports.
    pub fn heartbeat(&self, host: &str, hb: Heartbeat) -> Result<(), ApiError> {
        if self.store.get(HOSTS, host).map_err(store_err)?.is_none() {
            return Err(ApiError::not_found(format!(
                "unknown host {host:?}: register first"
            )));
        }
        lock(&self.live).insert(
            host.to_string(),
            Live {
                last: Instant::now(),
                last_ms: now_ms(),
                usage: hb.usage,
            },
        );
        for st in hb.vms {
            if lock(&self.busy).contains(&st.name) {
                continue;
            }
            let Some(mut vm) = self
                .store
                .get_json::<Vm>(VMS, &st.name)
                .map_err(store_err)?
            else {
                continue;
            };
            if vm.host != host || vm.uuid != st.uuid {
                continue;
            }
            lock(&self.vm_usage).insert(st.name.clone(), st.usage.clone());
            let changed = vm.state != st.state || vm.error != st.error || vm.boot_ms != st.boot_ms;
            if changed {
                apply_status(&mut vm, &st);
                self.store.put_json(VMS, &vm.name, &vm).map_err(store_err)?;
            }
        }
        Ok(())
    }

    fn host_state(&self, name: &str) -> (HostState, u64, HostUsage) {
        match lock(&self.live).get(name) {
            Some(l) if l.last.elapsed() < self.settings.host_timeout => {
                (HostState::Ready, l.last_ms, l.usage.clone())
            }
            Some(l) => (HostState::Unreachable, l.last_ms, l.usage.clone()),
            None => (HostState::Unreachable, 0, HostUsage::default()),
        }
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let vms = self.vms()?;
        Ok(regs
            .into_iter()
            .map(|r| {
                let (state, last, usage) = self.host_state(&r.name);
                let mine: Vec<&Vm> = vms.iter().filter(|v| v.host == r.name).collect();
                let held = mine.iter().filter(|v| v.state.holds_resources());
                let allocated = corral_api::Capacity {
                    vcpus: held.clone().map(|v| v.vcpus).sum(),
                    memory_mib: held.map(|v| v.memory_mib).sum(),
                    disk_bytes: mine
                        .iter()
                        .filter_map(|v| v.usage.as_ref())
                        .map(|u| u.disk_bytes)
                        .sum(),
                };
                Host {
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
                }
            })
            .collect())
    }

    pub fn host(&self, name: &str) -> Result<Host, ApiError> {
        self.hosts()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| {
                ApiError::not_found(format!("no host named {name:?}: see `corral host list`"))
            })
    }

    fn agent(&self, host: &str) -> Result<AgentClient, ApiError> {
        let r: Register = self
            .store
            .get_json(HOSTS, host)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::unavailable(format!("host {host:?} is not registered")))?;
        Ok(AgentClient::new(self.http.clone(), &r.name, &r.url))
    }

    pub fn templates(&self) -> Result<Vec<Template>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let mut out: BTreeMap<String, Template> = BTreeMap::new();
        for r in regs {
            for t in r.templates {
                out.entry(t.name.clone())
                    .or_insert_with(|| Template {
                        name: t.name.clone(),
                        size_bytes: t.size_bytes,
                        kernel_version: t.kernel_version.clone(),
                        os: t.os.clone(),
                        hosts: vec![],
                    })
                    .hosts
                    .push(r.name.clone());
            }
        }
        Ok(out.into_values().collect())
    }

    // ---- VMs ---------------------------------------------------------------------------

    /// Adds the live usage figures to a stored VM record.
    fn with_usage(&self, mut vm: Vm) -> Vm {
        vm.usage = lock(&self.vm_usage).get(&vm.name).cloned();
        vm
    }

    pub fn vms(&self) -> Result<Vec<Vm>, ApiError> {
        let vms: Vec<Vm> = self.store.list_json(VMS).map_err(store_err)?;
        Ok(vms.into_iter().map(|v| self.with_usage(v)).collect())
    }

    pub fn vm(&self, name: &str) -> Result<Vm, ApiError> {
        self.store
            .get_json(VMS, name)
            .map_err(store_err)?
            .map(|v| self.with_usage(v))
            .ok_or_else(|| {
                ApiError::not_found(format!("no VM named {name:?}: see `corral vm list`"))
            })
    }

    fn validate(&self, req: &CreateVm) -> Result<(), ApiError> {
        corral_api::names::validate_name("VM", &req.name).map_err(ApiError::bad_request)?;
        if req.vcpus == 0 {
            return Err(ApiError::bad_request("a VM needs at least 1 vCPU"));
        }
        if req.memory_mib < 32 {
            return Err(ApiError::bad_request(format!(
                "{} MiB of memory is too little: a guest needs at least 32 MiB",
                req.memory_mib
            )));
        }
        if let Some(w) = &req.workload {
            corral_api::validate_workload(w).map_err(ApiError::bad_request)?;
        }
        let templates = self.templates()?;
        if !templates.iter().any(|t| t.name == req.template) {
            let have: Vec<String> = templates.into_iter().map(|t| t.name).collect();
            return Err(ApiError::bad_request(format!(
                "unknown template {:?}: available templates are [{}] (see `corral template list`)",
                req.template,
                have.join(", ")
            )));
        }
        Ok(())
    }

    fn host_views(&self) -> Result<Vec<HostView>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let vms = self.vms()?;
        Ok(regs
            .into_iter()
            .map(|r| {
                let (state, _, usage) = self.host_state(&r.name);
                let held = vms
                    .iter()
                    .filter(|v| v.host == r.name && v.state.holds_resources());
                HostView {
                    name: r.name.clone(),
                    schedulable: state == HostState::Ready,
                    vcpus: r.capacity.vcpus,
                    memory_mib: r.capacity.memory_mib,
                    used_vcpus: held.clone().map(|v| v.vcpus).sum(),
                    used_memory_mib: held.map(|v| v.memory_mib).sum(),
                    cpu_load: usage.cpu_pct / 100.0,
                    templates: r.templates.into_iter().map(|t| t.name).collect(),
                    labels: Default::default(),
                }
            })
            .collect())
    }

    /// Creates a VM: validate, place, record, then ask the chosen host to build and start it.
    pub async fn create_vm(&self, req: CreateVm) -> Result<Vm, ApiError> {
        self.validate(&req)?;
        let vm = {
            let _p = self.placing.lock().await;
            if self.store.get(VMS, &req.name).map_err(store_err)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "a VM named {:?} already exists: choose another name or delete it first",
                    req.name
                )));
            }
            let request = Request {
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                template: req.template.clone(),
                host: req.host.clone(),
                cpu_overcommit: self.settings.cpu_overcommit,
            };
            let host = place_one(&self.host_views()?, &request).map_err(|e| match e {
                PlaceError::UnknownHost(_) => ApiError::bad_request(e.to_string()),
                PlaceError::NoTemplate(_) => ApiError::bad_request(e.to_string()),
                _ => ApiError::no_capacity(e.to_string()),
            })?;
            let uuid = uuid::Uuid::new_v4();
            let taken: HashSet<String> = self.vms()?.into_iter().map(|v| v.mac).collect();
            let mac = (0u8..=255)
                .map(|salt| mac_for(&uuid, salt))
                .find(|m| !taken.contains(m))
                .unwrap_or_else(|| mac_for(&uuid, 0));
            let vm = Vm {
                name: req.name.clone(),
                uuid,
                state: if req.start {
                    VmState::Starting
                } else {
                    VmState::Inactive
                },
                host,
                template: req.template.clone(),
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                mac,
                ip: None,
                workload: req.workload.clone().unwrap_or_else(|| "idle".into()),
                disk: None,
                boot_ms: None,
                error: None,
                created_ms: now_ms(),
                usage: None,
            };
            // Intent first: the record exists before the host is asked to do anything.
            self.store.put_json(VMS, &vm.name, &vm).map_err(store_err)?;
            vm
        };
        let _b = self.busy(&vm.name)?;
        tracing::info!("creating VM {} on {}", vm.name, vm.host);
        let def = VmDefinition {
            name: vm.name.clone(),
            uuid: vm.uuid,
            template: vm.template.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            mac: vm.mac.clone(),
            ip: vm.ip.clone(),
            workload: vm.workload.clone(),
        };
        let res = match self.agent(&vm.host) {
            Ok(a) => a.create(&def, req.start).await,
            Err(e) => Err(e),
        };
        self.settle(&vm.name, res)
    }

    /// Writes an agent's answer back to the VM's record.
    fn settle(&self, name: &str, res: Result<VmStatus, ApiError>) -> Result<Vm, ApiError> {
        let mut vm = self.vm(name)?;
        match res {
            Ok(st) => {
                lock(&self.vm_usage).insert(name.to_string(), st.usage.clone());
                apply_status(&mut vm, &st);
                self.store.put_json(VMS, name, &vm).map_err(store_err)?;
                Ok(self.with_usage(vm))
            }
            Err(e) => {
                if e.status != 409 && e.status != 503 {
                    vm.state = VmState::Error;
                    vm.error = Some(e.message.clone());
                    self.store.put_json(VMS, name, &vm).map_err(store_err)?;
                }
                Err(e)
            }
        }
    }

    pub async fn vm_action(&self, name: &str, action: VmAction) -> Result<Vm, ApiError> {
        let vm = self.vm(name)?;
        action.check(vm.state).map_err(ApiError::conflict)?;
        let agent = self.agent(&vm.host)?;
        let _b = self.busy(name)?;
        let res = agent.action(name, action).await;
        self.settle(name, res)
    }

    pub async fn delete_vm(&self, name: &str) -> Result<(), ApiError> {
        let vm = self.vm(name)?;
        let _b = self.busy(name)?;
        match self.agent(&vm.host)?.delete(name).await {
            Ok(()) => {}
            Err(e) if e.status == 404 => {}
            Err(e) => return Err(e),
        }
        self.store.delete(VMS, name).map_err(store_err)?;
        lock(&self.vm_usage).remove(name);
        tracing::info!("deleted VM {name}");
        Ok(())
    }

    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        let vm = self.vm(name)?;
        if vm.state != VmState::Running {
            return Err(ApiError::conflict(format!(
                "cannot exec in VM {name:?}: it is {}, not running",
                vm.state
            )));
        }
        self.agent(&vm.host)?.exec(name, req).await
    }

    pub async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        let vm = self.vm(name)?;
        self.agent(&vm.host)?.console(name, offset).await
    }
}

fn apply_status(vm: &mut Vm, st: &VmStatus) {
    vm.state = st.state;
    vm.error = st.error.clone();
    vm.boot_ms = st.boot_ms.or(vm.boot_ms);
    vm.disk = Some(st.disk.clone());
    // Usage is live data, kept in memory, not in the stored record.
    vm.usage = None;
}

#[cfg(test)]
mod tests {
    use super::mac_for;

    #[test]
    fn macs_are_locally_administered_unicast() {
        let m = mac_for(&uuid::Uuid::new_v4(), 0);
        let first = u8::from_str_radix(&m[..2], 16).unwrap_or(0);
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b1, 0, "unicast");
        assert_eq!(m.len(), 17);
    }
}
