//! The controller's core: the store, what it knows of live hosts, VM records, and the small
//! mechanisms the operations share (busy marks, template shipping, events).
//!
//! Desired state is written to the store before an agent is asked to act; agents' answers and
//! heartbeats bring the actual state back, and the reconciler (`deploy.rs`) closes the gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::agent::{Heartbeat, HeartbeatReply, Register, VmDefinition, VmStatus};
use corral_api::cluster::Event;
use corral_api::{
    now_ms, ApiError, ConsoleChunk, ExecRequest, ExecResult, Host, HostState, HostUsage, Template, Vm, VmState, VmUsage,
};
use corral_sched::HostView;
use corral_store::{Store, StoreExt};

use crate::agents::{AgentApi, Connector, HttpConnector};
use crate::tables::{EVENTS, HOSTS, HOST_FLAGS, VMS};

/// The deadline of a call to an agent that sets none of its own.
pub(crate) const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A host is unreachable when no heartbeat came for this long.
    pub host_timeout: Duration,
    /// vCPUs that may be promised per physical CPU.
    pub cpu_overcommit: f64,
    /// Memory that may be promised per MiB of a host (1.0: none).
    pub memory_overcommit: f64,
    /// The template library hosts receive templates from.
    pub templates_dir: Option<PathBuf>,
    /// Live migrations a host may send at once (more wait in a queue).
    pub migrations_out: usize,
    /// Live migrations a host may receive at once.
    pub migrations_in: usize,
    /// Shell command that powers a host down for standby (`{host}` is replaced).
    pub standby_command: Option<String>,
    /// Shell command that powers a host up again.
    pub wake_command: Option<String>,
    /// Agents' lease: renewed by each heartbeat; an agent that cannot renew it stops its VMs,
    /// and a failed host's VMs are restarted elsewhere only once it has run out (0: no HA).
    pub lease: Duration,
    /// Heartbeats missing this long make a host a suspect, checked by its peers.
    pub suspect_after: Duration,
    /// A failed host that returns takes no VMs for this long.
    pub recover_after: Duration,
    /// HA admission control: room is kept to restart the HA VMs of this many failed hosts.
    pub ha_reserve_hosts: usize,
    /// Admit HA VMs that break the reserve, with a warning event, instead of refusing them.
    pub ha_admission_warn: bool,
    /// How much history is kept.
    pub retention: crate::retention::Retention,
}

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
}

/// Operator flags of a host, kept apart from what the agent registers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HostFlags {
    /// No new VMs are placed on a cordoned host.
    #[serde(default)]
    pub cordoned: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Maintenance state: `evacuating`, `evacuated`, `evacuation incomplete`.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// On, standby (emptied and powered down by consolidation) or waking.
    #[serde(default)]
    pub power: corral_api::drs::HostPower,
    /// Declared failed (and not back yet).
    #[serde(default)]
    pub failed: Option<crate::ha::Failure>,
    /// When it was declared failed, within the damping window.
    #[serde(default)]
    pub failures: Vec<u64>,
    /// Back from a failure: no placements until then (ms since the epoch).
    #[serde(default)]
    pub recovering_until_ms: Option<u64>,
    /// The peers named in this host's lease: it fences itself only when it reaches no
    /// majority of them, and it is declared failed only when at least half of them answer
    /// that they cannot reach it (and none can). Kept here so that both sides count the same hosts, across restarts.
    #[serde(default)]
    pub lease_peers: Vec<String>,
}

impl HostFlags {
    /// Back from a failure and still in its damping period (no placements).
    pub(crate) fn recovering(&self) -> bool {
        self.recovering_until_ms.is_some_and(|t| now_ms() < t)
    }
}

type TemplateSend = Arc<tokio::sync::OnceCell<Result<(), String>>>;

/// The controller: store, live host data, and the agents.
pub struct Controller {
    pub store: Arc<dyn Store>,
    pub(crate) settings: Settings,
    /// Makes the client of each host's agent (HTTP; the fake agents in unit tests).
    agents: Arc<dyn Connector>,
    pub(crate) token: Option<String>,
    live: Mutex<BTreeMap<String, Live>>,
    /// Latest usage of each VM, from heartbeats: live data, never stored.
    vm_usage: Mutex<BTreeMap<String, VmUsage>>,
    /// VMs with an operation in flight: heartbeats and the reconciler leave them alone.
    busy: Mutex<HashSet<String>>,
    /// Serialises decisions that read and then write shared state (placement, addresses).
    pub(crate) placing: tokio::sync::Mutex<()>,
    /// One template transfer per (host, template), shared by everyone who needs it.
    sends: Mutex<HashMap<(String, String), TemplateSend>>,
    pub(crate) ops: Mutex<BTreeMap<String, corral_api::cluster::Operation>>,
    pub(crate) backoff: crate::deploy::Backoff,
    pub(crate) pushed: crate::network::Pushed,
    pub(crate) slots: crate::migrate::Slots,
    pub(crate) drs: crate::drs::DrsLive,
    pub(crate) ha: crate::ha::HaLive,
    /// Whether this controller leads (always, with the embedded store).
    pub leadership: crate::leader::Leadership,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn store_err(e: corral_store::StoreError) -> ApiError {
    match e {
        // Another controller leads now: the client should ask it.
        corral_store::StoreError::NotLeader(_) => ApiError::unavailable(e.to_string()),
        e => ApiError::internal(e.to_string()),
    }
}

/// JSON bytes of a value, for a store batch.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// Removes a VM name from the busy set when dropped.
pub(crate) struct BusyGuard {
    c: Arc<Controller>,
    name: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.c.busy).remove(&self.name);
    }
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

/// A locally administered, unicast MAC derived from the VM's UUID.
pub(crate) fn mac_for(uuid: &uuid::Uuid, salt: u8) -> String {
    let b = uuid.as_bytes();
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0] ^ salt, b[1], b[2], b[3], b[4])
}

/// The definition an agent needs to run a VM: the stored record's values, checked again as
/// the agent will check them.
pub(crate) fn definition(vm: &Vm) -> Result<VmDefinition, ApiError> {
    let bad = |field: &str, e: String| ApiError::internal(format!("VM {:?}: stored {field} is invalid: {e}", vm.name));
    Ok(VmDefinition {
        name: vm.name.parse().map_err(|e| bad("name", e))?,
        uuid: vm.uuid,
        template: vm.template.parse().map_err(|e| bad("template", e))?,
        vcpus: corral_api::types::check_vcpus(vm.vcpus).map_err(|e| bad("vcpus", e))?,
        memory_mib: corral_api::types::check_memory_mib(vm.memory_mib).map_err(|e| bad("memory", e))?,
        mac: vm.mac.parse().map_err(|e| bad("mac", e))?,
        ip: vm.ip.as_deref().map(str::parse).transpose().map_err(|e| bad("ip", e))?,
        workload: vm.workload.clone().try_into().map_err(|e| bad("workload", e))?,
        disk_mib: vm.disk_mib.map(corral_api::types::check_disk_mib).transpose().map_err(|e| bad("disk", e))?,
        network: vm.network,
        storage: vm.storage,
        ha: vm.ha,
    })
}

impl Controller {
    /// A controller on `store`. It loads the stored operations only once it leads (at once
    /// when `leadership` is [`Leadership::alone`](crate::leader::Leadership::alone)).
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        token: Option<String>,
        leadership: crate::leader::Leadership,
    ) -> Self {
        // Every call to an agent has a total deadline: a hung agent holds up no loop for
        // long. Slow calls (a boot, a transfer) set a longer one of their own.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(AGENT_CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        let agents = Arc::new(HttpConnector { http, token: token.clone() });
        let c = Self {
            store,
            settings,
            agents,
            token,
            live: Mutex::new(BTreeMap::new()),
            vm_usage: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(HashSet::new()),
            placing: tokio::sync::Mutex::new(()),
            sends: Mutex::new(HashMap::new()),
            ops: Mutex::new(BTreeMap::new()),
            backoff: Default::default(),
            pushed: Default::default(),
            slots: Default::default(),
            drs: Default::default(),
            ha: Default::default(),
            leadership,
        };
        if c.leadership.is_leader() {
            c.load_ops();
        }
        c
    }

    /// This controller, reaching agents through `agents` instead of HTTP (the fake agents of
    /// unit tests).
    pub fn with_agents(mut self, agents: Arc<dyn Connector>) -> Self {
        self.agents = agents;
        self
    }

    /// Marks a VM busy for the life of the guard; refuses if it already is.
    pub(crate) fn busy(self: &Arc<Self>, name: &str) -> Result<BusyGuard, ApiError> {
        if !lock(&self.busy).insert(name.to_string()) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is busy with another operation: wait for it to finish"
            )));
        }
        Ok(BusyGuard { c: self.clone(), name: name.to_string() })
    }

    pub(crate) fn is_busy(&self, name: &str) -> bool {
        lock(&self.busy).contains(name)
    }

    /// Appends to the event log.
    pub(crate) fn event(&self, kind: &str, subject: &str, message: impl Into<String>) {
        let e = Event { ms: now_ms(), kind: kind.into(), subject: subject.into(), message: message.into() };
        tracing::info!("event {}: {} {}", e.kind, e.subject, e.message);
        let key = format!("{:013}-{}", e.ms, uuid::Uuid::new_v4().simple());
        if let Err(err) = self.store.put_json(EVENTS, &key, &e) {
            tracing::warn!("cannot record event: {err}");
        }
    }

    pub fn events(&self) -> Result<Vec<Event>, ApiError> {
        self.store.list_json(EVENTS).map_err(store_err)
    }

    // ---- hosts -------------------------------------------------------------------------

    pub fn register(&self, r: Register) -> Result<(), ApiError> {
        corral_api::names::validate_name("host", &r.name).map_err(ApiError::bad_request)?;
        self.store.put_json(HOSTS, &r.name, &r).map_err(store_err)?;
        lock(&self.live).insert(
            r.name.clone(),
            Live { last: Instant::now(), last_ms: now_ms(), usage: Default::default(), vms: vec![], networks: vec![] },
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
        if self.store.get(HOSTS, host).map_err(store_err)?.is_none() {
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
            let Some(mut vm) = self.store.get_json::<Vm>(VMS, &st.name).map_err(store_err)? else { continue };
            if vm.host != host || vm.uuid != st.uuid {
                continue;
            }
            lock(&self.vm_usage).insert(st.name.clone(), st.usage.clone());
            let changed = vm.state != st.state || vm.error != st.error || vm.boot_ms != st.boot_ms;
            if changed && crate::ha::crashed(&vm, st) {
                self.ha_crashed(&vm.name);
            }
            if changed {
                apply_status(&mut vm, st);
                self.store.put_json(VMS, &vm.name, &vm).map_err(store_err)?;
            }
        }
        lock(&self.live).insert(
            host.to_string(),
            Live { last: Instant::now(), last_ms: now_ms(), usage: hb.usage, vms: hb.vms, networks: hb.networks },
        );
        Ok(reply)
    }

    /// When the host's last heartbeat arrived, if one did since this controller started.
    pub(crate) fn last_heartbeat(&self, host: &str) -> Option<(Instant, u64)> {
        lock(&self.live).get(host).map(|l| (l.last, l.last_ms))
    }

    pub(crate) fn host_ready(&self, name: &str) -> bool {
        lock(&self.live).get(name).is_some_and(|l| l.last.elapsed() < self.settings.host_timeout)
    }

    /// VMs a ready host reported in its last heartbeat (None if the host is not ready).
    pub(crate) fn reported(&self, host: &str) -> Option<Vec<VmStatus>> {
        let live = lock(&self.live);
        let l = live.get(host)?;
        (l.last.elapsed() < self.settings.host_timeout).then(|| l.vms.clone())
    }

    /// VNIs a ready host reported in its last heartbeat.
    pub(crate) fn reported_networks(&self, host: &str) -> Vec<u32> {
        lock(&self.live)
            .get(host)
            .filter(|l| l.last.elapsed() < self.settings.host_timeout)
            .map(|l| l.networks.clone())
            .unwrap_or_default()
    }

    pub(crate) fn ready_hosts(&self) -> Vec<String> {
        lock(&self.live)
            .iter()
            .filter(|(_, l)| l.last.elapsed() < self.settings.host_timeout)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn host_state(&self, name: &str) -> (HostState, u64, HostUsage) {
        match lock(&self.live).get(name) {
            Some(l) if l.last.elapsed() < self.settings.host_timeout => (HostState::Ready, l.last_ms, l.usage.clone()),
            Some(l) => (HostState::Unreachable, l.last_ms, l.usage.clone()),
            None => (HostState::Unreachable, 0, HostUsage::default()),
        }
    }

    pub(crate) fn flags(&self, host: &str) -> Result<HostFlags, ApiError> {
        Ok(self.store.get_json(HOST_FLAGS, host).map_err(store_err)?.unwrap_or_default())
    }

    /// Cordons (no new VMs) or uncordons a host.
    pub fn set_cordon(&self, host: &str, cordoned: bool) -> Result<Host, ApiError> {
        self.host(host)?;
        let mut f = self.flags(host)?;
        f.cordoned = cordoned;
        if !cordoned {
            f.maintenance = None;
        }
        self.store.put_json(HOST_FLAGS, host, &f).map_err(store_err)?;
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
        self.store.put_json(HOST_FLAGS, host, &f).map_err(store_err)?;
        self.host(host)
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let vms = self.vms()?;
        let clusters: Vec<corral_api::cluster::Cluster> =
            self.store.list_json(crate::tables::CLUSTERS).map_err(store_err)?;
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
                    vcpus: held.clone().map(|v| v.vcpus).sum(),
                    memory_mib: held.map(|v| v.memory_mib).sum(),
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

    pub(crate) fn agent(&self, host: &str) -> Result<Arc<dyn AgentApi>, ApiError> {
        let r: Register = self
            .store
            .get_json(HOSTS, host)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::unavailable(format!("host {host:?} is not registered")))?;
        Ok(self.agents.connect(&r))
    }

    /// What the scheduler core needs to know of every host.
    pub(crate) fn host_views(&self) -> Result<Vec<HostView>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let vms = self.vms()?;
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
                    used_vcpus: held.clone().map(|v| v.vcpus).sum(),
                    used_memory_mib: held.map(|v| v.memory_mib).sum(),
                    cpu_load: usage.cpu_pct / 100.0,
                    templates: r.templates.into_iter().map(|t| t.name).collect(),
                    labels: flags.labels,
                })
            })
            .collect()
    }

    // ---- templates ---------------------------------------------------------------------

    /// Templates of the controller's library.
    pub(crate) fn library(&self) -> Vec<crate::templates::LibraryTemplate> {
        self.settings.templates_dir.as_deref().map(crate::templates::scan).unwrap_or_default()
    }

    pub fn templates(&self) -> Result<Vec<Template>, ApiError> {
        let regs: Vec<Register> = self.store.list_json(HOSTS).map_err(store_err)?;
        let mut out: BTreeMap<String, Template> = BTreeMap::new();
        for t in self.library() {
            out.insert(
                t.name.clone(),
                Template {
                    name: t.name.clone(),
                    size_bytes: t.size_bytes,
                    kernel_version: t.kernel_version.clone(),
                    os: t.os.clone(),
                    hosts: vec![],
                },
            );
        }
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

    /// Checks that a template exists somewhere (library or a host).
    pub(crate) fn check_template(&self, name: &str) -> Result<Template, ApiError> {
        let all = self.templates()?;
        let have: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
        all.into_iter().find(|t| t.name == name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown template {name:?}: available templates are [{}] (see `corral template list`)",
                have.join(", ")
            ))
        })
    }

    /// Makes sure `host` holds `template`, sending it from the library if not. Concurrent
    /// callers for the same host and template share one transfer.
    pub(crate) async fn ensure_template(&self, host: &str, template: &str) -> Result<(), ApiError> {
        let has = |c: &Self| -> Result<bool, ApiError> {
            let r: Option<Register> = c.store.get_json(HOSTS, host).map_err(store_err)?;
            Ok(r.is_some_and(|r| r.templates.iter().any(|t| t.name == template)))
        };
        if has(self)? {
            return Ok(());
        }
        let key = (host.to_string(), template.to_string());
        let cell = lock(&self.sends).entry(key.clone()).or_default().clone();
        let res = cell
            .get_or_init(|| async {
                if has(self).unwrap_or(false) {
                    return Ok(());
                }
                if !self.library().iter().any(|t| t.name == template) {
                    return Err(format!(
                        "host {host} lacks template {template:?} and the controller's library does not hold it"
                    ));
                }
                let started = Instant::now();
                let reg =
                    self.agent(host).map_err(|e| e.message)?.pull_template(template).await.map_err(|e| e.message)?;
                self.store.put_json(HOSTS, host, &reg).map_err(|e| e.to_string())?;
                self.event(
                    "template.sent",
                    host,
                    format!("template {template} sent in {} ms", started.elapsed().as_millis()),
                );
                Ok(())
            })
            .await
            .clone();
        if res.is_err() {
            // Let a later attempt try again.
            lock(&self.sends).remove(&key);
        }
        res.map_err(ApiError::unavailable)
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
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?}: see `corral vm list`")))
    }

    pub(crate) fn put_vm(&self, vm: &Vm) -> Result<(), ApiError> {
        let mut v = vm.clone();
        v.usage = None;
        self.store.put_json(VMS, &v.name, &v).map_err(store_err)
    }

    /// Writes an agent's answer back to the VM's record.
    pub(crate) fn settle(&self, name: &str, st: &VmStatus) -> Result<Vm, ApiError> {
        let mut vm = self.vm(name)?;
        lock(&self.vm_usage).insert(name.to_string(), st.usage.clone());
        apply_status(&mut vm, st);
        self.put_vm(&vm)?;
        Ok(self.with_usage(vm))
    }

    pub(crate) fn forget_usage(&self, name: &str) {
        lock(&self.vm_usage).remove(name);
    }

    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        let vm = self.vm(name)?;
        if vm.state != VmState::Running {
            return Err(ApiError::conflict(format!("cannot exec in VM {name:?}: it is {}, not running", vm.state)));
        }
        self.agent(&vm.host)?.exec(name, req).await
    }

    pub async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        let vm = self.vm(name)?;
        self.agent(&vm.host)?.console(name, offset).await
    }
}

pub(crate) fn apply_status(vm: &mut Vm, st: &VmStatus) {
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
