//! The controller's core: the store, what it knows of live hosts, VM records, and the small
//! mechanisms the operations share (busy marks, events, VM records).
//! The host registry is in `hosts.rs`, template shipping in `templates.rs`.
//!
//! Desired state is written to the store before an agent is asked to act; agents' answers and
//! heartbeats bring the actual state back, and the reconciler (`deploy.rs`) closes the gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::agent::{Register, VmStatus};
use corral_api::cluster::Event;
use corral_api::types::Mac;
use corral_api::{now_ms, ApiError, ConsoleChunk, ExecRequest, ExecResult, Vm, VmState, VmUsage};
use corral_store::Store;

use crate::agents::{AgentApi, Connector, HttpConnector};
use crate::tables::{EVENTS, HOSTS, VMS};

/// The deadline of a call to an agent that sets none of its own.
pub(crate) const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::config::Settings;

/// Reads a host's maintenance state; a free text written by an older controller reads as none.
fn maintenance_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<corral_api::Maintenance>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Typed(corral_api::Maintenance),
        Legacy(#[allow(dead_code)] String),
    }
    Ok(match <Option<Stored> as serde::Deserialize>::deserialize(d)? {
        Some(Stored::Typed(m)) => Some(m),
        Some(Stored::Legacy(_)) | None => None,
    })
}

/// Operator flags of a host, kept apart from what the agent registers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HostFlags {
    /// No new VMs are placed on a cordoned host.
    #[serde(default)]
    pub cordoned: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Why it is out of service, if it is. (A record written before this was typed held a
    /// free text; it reads as none, and the host stays cordoned.)
    #[serde(default, deserialize_with = "maintenance_or_legacy")]
    pub maintenance: Option<corral_api::Maintenance>,
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

/// The controller: store, live host data, and the agents.
pub struct Controller {
    pub store: Arc<dyn Store>,
    pub(crate) settings: Settings,
    /// Makes the client of each host's agent (HTTP; the fake agents in unit tests).
    agents: Arc<dyn Connector>,
    pub(crate) token: Option<String>,
    pub(crate) live: Mutex<BTreeMap<String, crate::hosts::Live>>,
    /// Latest usage of each VM, from heartbeats: live data, never stored.
    pub(crate) vm_usage: Mutex<BTreeMap<String, VmUsage>>,
    /// VMs with an operation in flight: heartbeats and the reconciler leave them alone.
    busy: Mutex<HashSet<String>>,
    /// Serialises decisions that read and then write shared state (placement, addresses).
    pub(crate) placing: tokio::sync::Mutex<()>,
    /// One template transfer per (host, template), shared by everyone who needs it.
    pub(crate) sends: Mutex<HashMap<(String, String), crate::templates::TemplateSend>>,
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

/// A locally administered, unicast MAC derived from the VM's UUID.
pub(crate) fn mac_for(uuid: &uuid::Uuid, salt: u8) -> Mac {
    let b = uuid.as_bytes();
    // 0x02 as the first byte: locally administered, unicast, so never refused.
    Mac::from_bytes([0x02, b[0] ^ salt, b[1], b[2], b[3], b[4]]).expect("0x02 starts a unicast, non-zero MAC")
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
        if let Err(err) = EVENTS.put(&*self.store, &key, &e) {
            tracing::warn!("cannot record event: {err}");
        }
    }

    pub fn events(&self) -> Result<Vec<Event>, ApiError> {
        EVENTS.list(&*self.store).map_err(store_err)
    }

    // ---- agents ------------------------------------------------------------------------

    /// The client of a registered host's agent.
    pub(crate) fn agent(&self, host: &str) -> Result<Arc<dyn AgentApi>, ApiError> {
        let r: Register = HOSTS
            .get(&*self.store, host)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::unavailable(format!("host {host:?} is not registered")))?;
        Ok(self.agents.connect(&r))
    }

    // ---- VMs ---------------------------------------------------------------------------

    /// Adds the live usage figures to a stored VM record.
    fn with_usage(&self, mut vm: Vm) -> Vm {
        vm.usage = lock(&self.vm_usage).get(vm.def.name.as_str()).cloned();
        vm
    }

    pub fn vms(&self) -> Result<Vec<Vm>, ApiError> {
        let vms: Vec<Vm> = VMS.list(&*self.store).map_err(store_err)?;
        Ok(vms.into_iter().map(|v| self.with_usage(v)).collect())
    }

    pub fn vm(&self, name: &str) -> Result<Vm, ApiError> {
        VMS.get(&*self.store, name)
            .map_err(store_err)?
            .map(|v| self.with_usage(v))
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?}: see `corral vm list`")))
    }

    pub(crate) fn put_vm(&self, vm: &Vm) -> Result<(), ApiError> {
        let mut v = vm.clone();
        v.usage = None;
        VMS.put(&*self.store, &v.def.name, &v).map_err(store_err)
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

    /// Grows a VM's root disk (online while it runs) and records its new size.
    pub async fn resize_disk(&self, name: &str, req: &corral_api::ResizeDisk) -> Result<Vm, ApiError> {
        let vm = self.vm(name)?;
        if vm.migration.is_some() || self.is_busy(name) {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is being moved or changed: grow its disk when that is done"
            )));
        }
        let st = self.agent(&vm.host)?.resize_disk(name, req).await?;
        let mut vm = self.vm(name)?;
        vm.def.disk_mib = st.disk_mib.or(vm.def.disk_mib);
        self.put_vm(&vm)?;
        self.event("vm.disk.resized", name, format!("VM {name}'s disk is now {} MiB", vm.def.disk_mib.unwrap_or(0)));
        Ok(vm)
    }

    /// Opens a live stream into a VM at its agent.
    pub async fn stream(
        &self,
        name: &str,
        kind: corral_api::image::StreamKind,
    ) -> Result<crate::agents::AgentStream, ApiError> {
        let vm = self.vm(name)?;
        self.agent(&vm.host)?.stream(name, kind).await
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
    #![allow(clippy::unwrap_used)]
    use super::{mac_for, HostFlags};
    use corral_api::Maintenance;

    #[test]
    fn host_flags_keep_their_maintenance_state_and_read_an_older_free_text_as_none() {
        for m in [
            Maintenance::Evacuating,
            Maintenance::EvacuationIncomplete,
            Maintenance::Quarantined { failures: 3, window_min: 10 },
        ] {
            let f = HostFlags { cordoned: true, maintenance: Some(m), ..Default::default() };
            let back: HostFlags = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
            assert_eq!(back.maintenance, Some(m));
        }
        let old = r#"{"cordoned": true, "maintenance": "quarantined: failed 3 times in 10 min"}"#;
        let f: HostFlags = serde_json::from_str(old).expect("an older record still reads");
        assert!(f.cordoned && f.maintenance.is_none());
        let f: HostFlags = serde_json::from_str(r#"{"maintenance": "evacuated"}"#).unwrap();
        assert_eq!(f.maintenance, Some(Maintenance::Evacuated));
    }

    #[test]
    fn macs_are_locally_administered_unicast() {
        let m = mac_for(&uuid::Uuid::new_v4(), 0);
        let first = m.bytes()[0];
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b1, 0, "unicast");
        assert_eq!(m.to_string().len(), 17);
    }
}
