//! FAKE agents for the controller's unit tests: an in-memory [`AgentApi`] per host that keeps
//! VMs, templates, networks and migrations as a real agent reports them, without QEMU, with
//! fault injection (an error of a given kind, a lost reply after the work was done, a delay,
//! a host that does not answer at all). Never used outside tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::agent::{
    Heartbeat, NetworkSpec, ProbeReply, ProbeRequest, Register, TemplateInfo, VmDefinition, VmStatus,
};
use corral_api::migration::{
    Incoming, IncomingReady, MemoryMove, MigrationFigures, MigrationPhase, MigrationState, Outgoing, OutgoingStatus,
};
use corral_api::{
    Accel, ApiError, Capacity, ConsoleChunk, ErrorKind, ExecRequest, ExecResult, HostUsage, VmAction, VmState,
};

use super::{AgentApi, Connector};

/// Every operation of the protocol, to aim a fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Import,
    Get,
    Action,
    Delete,
    Exec,
    Console,
    Tcp,
    Pull,
    PutNetwork,
    DeleteNetwork,
    Probe,
    Incoming,
    Migrate,
    Migration,
    CancelMigration,
    FinishMigration,
    RevertMigration,
}

/// What goes wrong with one call.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The agent refuses: an error of this kind, nothing done.
    Fail(ErrorKind),
    /// The agent does the work, but the answer is lost (the caller sees `unavailable`).
    LoseReply,
    /// The answer comes this much later (then the call proceeds).
    Delay(Duration),
}

/// How a fake outgoing migration ends when the controller next asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MigrationPlan {
    /// The VM moves (the default).
    Complete,
    /// The source gives up; the VM stays at the source.
    Fail,
    /// It stays running until cancelled (or forever).
    Hang,
    /// It has switched over to post-copy: a cancel is refused as too late, then it completes.
    Postcopy,
}

#[derive(Debug)]
struct FakeVm {
    def: VmDefinition,
    status: VmStatus,
}

#[derive(Debug)]
struct State {
    vms: BTreeMap<String, FakeVm>,
    templates: BTreeSet<String>,
    networks: BTreeMap<u32, NetworkSpec>,
    outgoing: BTreeMap<String, OutgoingStatus>,
    faults: VecDeque<(Op, Fault)>,
    /// No answer at all (powered off, cut off): every call fails as `unavailable`.
    down: bool,
    /// Peers this host cannot reach (probe answers).
    unreachable_peers: BTreeSet<String>,
    plan: MigrationPlan,
    capacity: Capacity,
    calls: Vec<String>,
    next_pid: u32,
}

/// One fake host's agent.
#[derive(Debug)]
pub(crate) struct FakeAgent {
    pub name: String,
    url: String,
    index: u8,
    state: Mutex<State>,
    /// The other fake hosts, to fetch a moved VM from.
    fleet: std::sync::Weak<Mutex<BTreeMap<String, Arc<FakeAgent>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake agents of a test, by host name; the controller's [`Connector`].
#[derive(Debug, Default)]
pub(crate) struct FakeFleet {
    hosts: Arc<Mutex<BTreeMap<String, Arc<FakeAgent>>>>,
}

impl FakeFleet {
    /// The fake agent of `name`, made on first use (4 vCPUs, 4 GiB, the template `tiny`).
    pub fn host(&self, name: &str) -> Arc<FakeAgent> {
        let fleet = Arc::downgrade(&self.hosts);
        let mut hosts = lock(&self.hosts);
        let n = hosts.len() as u8;
        hosts
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(FakeAgent {
                    name: name.to_string(),
                    url: format!("http://198.18.0.{}:7001", n + 2),
                    index: n + 2,
                    state: Mutex::new(State {
                        vms: BTreeMap::new(),
                        templates: ["tiny".to_string()].into(),
                        networks: BTreeMap::new(),
                        outgoing: BTreeMap::new(),
                        faults: VecDeque::new(),
                        down: false,
                        unreachable_peers: BTreeSet::new(),
                        plan: MigrationPlan::Complete,
                        capacity: Capacity { vcpus: 4, memory_mib: 4096, disk_bytes: 100 << 30 },
                        calls: vec![],
                        next_pid: 1000,
                    }),
                    fleet,
                })
            })
            .clone()
    }
}

impl FakeFleet {
    /// Every fake host's name.
    pub fn names(&self) -> Vec<String> {
        lock(&self.hosts).keys().cloned().collect()
    }

    /// Host `name` is cut off (or powered off): it answers nobody, and no other host reaches it.
    pub fn isolate(&self, name: &str) {
        for other in self.names() {
            self.host(&other).cut_from(name, other != name);
        }
        self.host(name).set_down(true);
    }

    /// Host `name` is back on the network.
    pub fn heal(&self, name: &str) {
        for other in self.names() {
            self.host(&other).cut_from(name, false);
        }
        self.host(name).set_down(false);
    }
}

impl Connector for FakeFleet {
    fn connect(&self, host: &Register) -> Arc<dyn AgentApi> {
        self.host(&host.name)
    }
}

impl FakeAgent {
    /// What the agent registers with.
    pub fn register(&self) -> Register {
        let s = lock(&self.state);
        Register {
            name: self.name.clone(),
            url: self.url.clone(),
            accel: Accel::Tcg,
            accel_note: "fake".into(),
            capacity: s.capacity.clone(),
            templates: s
                .templates
                .iter()
                .map(|t| TemplateInfo {
                    name: t.clone(),
                    size_bytes: 1 << 20,
                    kernel_version: "6.1".into(),
                    os: "fake".into(),
                    boot: Default::default(),
                    guest_agent: Default::default(),
                })
                .collect(),
            underlay: Some(std::net::Ipv4Addr::new(198, 18, 0, self.index)),
            interfaces: vec![],
            shared_dir: None,
        }
    }

    /// What the agent's next heartbeat says.
    pub fn heartbeat(&self) -> Heartbeat {
        let s = lock(&self.state);
        Heartbeat {
            usage: HostUsage::default(),
            vms: s.vms.values().map(|v| v.status.clone()).collect(),
            networks: s.networks.keys().copied().collect(),
            tunnels: vec![],
        }
    }

    /// The next call of `op` meets `fault` (faults queue up in order).
    pub fn inject(&self, op: Op, fault: Fault) {
        lock(&self.state).faults.push_back((op, fault));
    }

    /// Powers the host off or on again, as far as answering goes (its VMs stay as they were:
    /// a host cut off from the network).
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// This host cannot (or can again) reach `peer` over the underlay.
    pub fn cut_from(&self, peer: &str, cut: bool) {
        let mut s = lock(&self.state);
        if cut {
            s.unreachable_peers.insert(peer.to_string());
        } else {
            s.unreachable_peers.remove(peer);
        }
    }

    pub fn plan_migrations(&self, plan: MigrationPlan) {
        lock(&self.state).plan = plan;
    }

    /// The host loses every VM at once (a power cycle): nothing runs on it any more.
    pub fn lose_all_vms(&self) {
        lock(&self.state).vms.clear();
    }

    pub fn is_down(&self) -> bool {
        lock(&self.state).down
    }

    /// Does what a heartbeat reply says: stops the VMs it fences.
    pub fn obey(&self, reply: &corral_api::agent::HeartbeatReply) {
        let mut s = lock(&self.state);
        for v in s.vms.values_mut().filter(|v| reply.fence.contains(&v.def.uuid)) {
            v.status = status_of(&v.def, VmState::Inactive, None);
            v.status.error = Some("fenced: the controller restarted this VM elsewhere".into());
            v.status.ended = Some(corral_api::agent::Ended::Fenced);
        }
    }

    /// The VM's QEMU dies by itself (crash, OOM kill).
    pub fn crash(&self, name: &str) {
        if let Some(v) = lock(&self.state).vms.get_mut(name) {
            v.status.state = VmState::Inactive;
            v.status.pid = None;
            v.status.error = Some("QEMU exited: killed".into());
            v.status.ended = Some(corral_api::agent::Ended::Exited);
        }
    }

    /// The VMs on this host, by name, with their state.
    pub fn vms(&self) -> BTreeMap<String, VmStatus> {
        lock(&self.state).vms.iter().map(|(k, v)| (k.clone(), v.status.clone())).collect()
    }

    /// The definition this host was given for a VM.
    pub fn def_of(&self, name: &str) -> Option<VmDefinition> {
        lock(&self.state).vms.get(name).map(|v| v.def.clone())
    }

    pub fn state_of(&self, name: &str) -> Option<VmState> {
        lock(&self.state).vms.get(name).map(|v| v.status.state)
    }

    pub fn has_network(&self, vni: u32) -> bool {
        lock(&self.state).networks.contains_key(&vni)
    }

    pub fn network(&self, vni: u32) -> Option<NetworkSpec> {
        lock(&self.state).networks.get(&vni).cloned()
    }

    /// How many calls of this operation the agent has answered (or failed), e.g. `create web-1`.
    /// Every call made, in order, as `calls` counts them.
    pub fn call_log(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    pub fn calls(&self, prefix: &str) -> usize {
        lock(&self.state).calls.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// Runs one call: the down check, any fault aimed at it, then `work` on the state.
    async fn call<T>(
        &self,
        op: Op,
        what: String,
        work: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let fault = {
            let mut s = lock(&self.state);
            s.calls.push(what.clone());
            if s.down {
                return Err(ApiError::unavailable(format!("host {} is unreachable (fake: down)", self.name)));
            }
            let i = s.faults.iter().position(|(o, _)| *o == op);
            i.and_then(|i| s.faults.remove(i)).map(|(_, f)| f)
        };
        match fault {
            Some(Fault::Fail(kind)) => Err(ApiError::new(kind, format!("fake {}: {what} failed as asked", self.name))),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                work(&mut lock(&self.state))
            }
            Some(Fault::LoseReply) => {
                let _ = work(&mut lock(&self.state));
                Err(ApiError::unavailable(format!("host {}: the answer to {what} was lost (fake)", self.name)))
            }
            None => work(&mut lock(&self.state)),
        }
    }
}

fn status_of(def: &VmDefinition, state: VmState, pid: Option<u32>) -> VmStatus {
    VmStatus {
        name: def.name.to_string(),
        uuid: def.uuid,
        state,
        error: None,
        ended: None,
        boot_ms: (state == VmState::Running).then_some(100),
        disk: format!("/fake/{}/disk.qcow2", def.name),
        disk_mib: def.disk_mib,
        pid,
        usage: Default::default(),
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::not_found(format!("no VM named {name:?} on this host"))
}

impl State {
    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn define(&mut self, def: &VmDefinition, start: bool) -> Result<VmStatus, ApiError> {
        if self.vms.contains_key(def.name.as_str()) {
            return Err(ApiError::already_exists(format!("a VM named {:?} already exists on this host", def.name)));
        }
        if !self.templates.contains(def.template.as_str()) {
            return Err(ApiError::not_found(format!("template {:?} is not on this host", def.template)));
        }
        let pid = start.then(|| self.pid());
        let st = status_of(def, if start { VmState::Running } else { VmState::Inactive }, pid);
        self.vms.insert(def.name.to_string(), FakeVm { def: def.clone(), status: st.clone() });
        Ok(st)
    }

    fn vm(&mut self, name: &str) -> Result<&mut FakeVm, ApiError> {
        self.vms.get_mut(name).ok_or_else(|| missing(name))
    }
}

#[async_trait::async_trait]
impl AgentApi for FakeAgent {
    fn url(&self) -> &str {
        &self.url
    }

    async fn create(&self, def: &VmDefinition, start: bool) -> Result<VmStatus, ApiError> {
        self.call(Op::Create, format!("create {}", def.name), |s| s.define(def, start)).await
    }

    async fn import(&self, def: &VmDefinition, source: &str) -> Result<VmStatus, ApiError> {
        // What the source holds: a suspended VM arrives suspended (its saved memory comes too).
        let from = self.fleet.upgrade().and_then(|f| lock(&f).values().find(|a| a.url == source).cloned());
        let suspended = from
            .ok_or_else(|| ApiError::unavailable(format!("{source} is unreachable (fake: no such agent)")))?
            .state_of(def.name.as_str())
            .ok_or_else(|| ApiError::unavailable(format!("{source} has no VM {:?} to hand over", def.name)))?
            == VmState::Suspended;
        self.call(Op::Import, format!("import {}", def.name), |s| {
            let mut st = s.define(def, false)?;
            if suspended {
                st.state = VmState::Suspended;
                s.vm(def.name.as_str())?.status = st.clone();
            }
            Ok(st)
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.call(Op::Get, format!("get {name}"), |s| Ok(s.vm(name)?.status.clone())).await
    }

    async fn action(&self, name: &str, a: VmAction) -> Result<VmStatus, ApiError> {
        self.call(Op::Action, format!("action {name} {}", a.as_str()), |s| {
            let pid = s.pid();
            let v = s.vm(name)?;
            let (from, to) = match a {
                VmAction::Start => (&[VmState::Inactive][..], VmState::Running),
                VmAction::Stop => (&[VmState::Running, VmState::Paused, VmState::Inactive][..], VmState::Inactive),
                VmAction::Pause => (&[VmState::Running][..], VmState::Paused),
                VmAction::Resume => (&[VmState::Paused, VmState::Suspended][..], VmState::Running),
                VmAction::Suspend => (&[VmState::Running, VmState::Paused][..], VmState::Suspended),
            };
            if !from.contains(&v.status.state) {
                return Err(ApiError::conflict(format!("cannot {} VM {name:?}: it is {}", a.as_str(), v.status.state)));
            }
            let was = v.status.pid;
            v.status = status_of(
                &v.def,
                to,
                match to {
                    VmState::Running if was.is_none() => Some(pid),
                    VmState::Running | VmState::Paused => was,
                    _ => None,
                },
            );
            Ok(v.status.clone())
        })
        .await
    }

    async fn delete(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.call(Op::Delete, format!("delete {name}"), |s| {
            if s.vms.get(name).is_some_and(|v| v.def.uuid == *uuid) {
                s.vms.remove(name);
            }
            Ok(())
        })
        .await
    }

    async fn delete_copy(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.call(Op::Delete, format!("delete {name} (copy)"), |s| {
            if s.vms.get(name).is_some_and(|v| v.def.uuid == *uuid) {
                s.vms.remove(name);
                s.outgoing.remove(name);
            }
            Ok(())
        })
        .await
    }

    async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        self.call(Op::Exec, format!("exec {name}"), |s| {
            if s.vm(name)?.status.state != VmState::Running {
                return Err(ApiError::conflict(format!("VM {name:?} is not running")));
            }
            Ok(ExecResult { exit_code: 0, stdout: req.argv.join(" ") + "\n", stderr: String::new() })
        })
        .await
    }

    async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        self.call(Op::Console, format!("console {name}"), |s| {
            s.vm(name)?;
            Ok(ConsoleChunk { offset, next: offset, data: String::new() })
        })
        .await
    }

    async fn resize_disk(&self, name: &str, _req: &corral_api::ResizeDisk) -> Result<VmStatus, ApiError> {
        Err(ApiError::unavailable(format!("the fake agent cannot resize {name}'s disk")))
    }

    async fn stream(&self, name: &str, kind: corral_api::image::StreamKind) -> Result<super::AgentStream, ApiError> {
        Err(ApiError::unavailable(format!("the fake agent has no {kind} stream for {name}")))
    }

    async fn tcp(
        &self,
        name: &str,
        port: corral_api::tunnel::GuestPort,
        via: corral_api::types::Ipv4Cidr,
    ) -> Result<super::AgentStream, ApiError> {
        self.call(Op::Tcp, format!("tcp {name} {port} via {via}"), |_| Ok(())).await?;
        Err(ApiError::unavailable(format!("the fake agent has no guest to connect to in {name}")))
    }

    async fn pull_template(&self, name: &str) -> Result<Register, ApiError> {
        self.call(Op::Pull, format!("pull {name}"), |s| {
            s.templates.insert(name.to_string());
            Ok(())
        })
        .await?;
        Ok(self.register())
    }

    async fn put_network(&self, spec: &NetworkSpec) -> Result<(), ApiError> {
        self.call(Op::PutNetwork, format!("put-network {}", spec.vni), |s| {
            s.networks.insert(spec.vni, spec.clone());
            Ok(())
        })
        .await
    }

    async fn delete_network(&self, vni: u32) -> Result<(), ApiError> {
        self.call(Op::DeleteNetwork, format!("delete-network {vni}"), |s| {
            s.networks.remove(&vni);
            Ok(())
        })
        .await
    }

    async fn probe(&self, req: &ProbeRequest) -> Result<ProbeReply, ApiError> {
        self.call(Op::Probe, format!("probe {}", req.host), |s| {
            let reachable = !s.unreachable_peers.contains(&req.host);
            Ok(ProbeReply { reachable, how: if reachable { "agent answered" } else { "no answer" }.into() })
        })
        .await
    }

    async fn incoming(&self, req: &Incoming) -> Result<IncomingReady, ApiError> {
        let index = self.index;
        self.call(Op::Incoming, format!("incoming {}", req.def.name), |s| {
            if s.vms.get(req.def.name.as_str()).is_some_and(|v| v.def.uuid != req.def.uuid) {
                return Err(ApiError::already_exists(format!("a VM named {:?} already exists here", req.def.name)));
            }
            let st = status_of(&req.def, VmState::Migrating, None);
            s.vms.insert(req.def.name.to_string(), FakeVm { def: req.def.clone(), status: st });
            let at = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, index), 10809);
            Ok(IncomingReady { nbd: at, migration: at })
        })
        .await
    }

    async fn migrate(&self, name: &str, req: &Outgoing) -> Result<OutgoingStatus, ApiError> {
        self.call(Op::Migrate, format!("migrate {name}"), |s| {
            let v = s.vm(name)?;
            if v.def.uuid != req.uuid || v.status.state != VmState::Running {
                return Err(ApiError::conflict(format!("VM {name:?} is not running here")));
            }
            v.status.state = VmState::Migrating;
            let st = OutgoingStatus {
                id: req.id.clone(),
                state: MigrationState::Running,
                figures: MigrationFigures { phase: MigrationPhase::Precopy, ..Default::default() },
            };
            s.outgoing.insert(name.to_string(), st.clone());
            Ok(st)
        })
        .await
    }

    async fn migration(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        self.call(Op::Migration, format!("migration {name}"), |s| {
            let plan = s.plan;
            let mut st = s.outgoing.get(name).cloned().ok_or_else(|| missing(name))?;
            if st.state == MigrationState::Running {
                match plan {
                    MigrationPlan::Hang => {}
                    MigrationPlan::Complete | MigrationPlan::Postcopy => {
                        st.state = MigrationState::Completed;
                        st.figures.phase = MigrationPhase::Completed;
                        st.figures.used_mode = Some(if plan == MigrationPlan::Postcopy {
                            MemoryMove::Postcopy
                        } else {
                            MemoryMove::Precopy
                        });
                        st.figures.rounds = 3;
                        st.figures.downtime_ms = Some(20);
                        if let Some(v) = s.vms.get_mut(name) {
                            v.status = status_of(&v.def, VmState::Inactive, None);
                        }
                    }
                    MigrationPlan::Fail => {
                        st.state = MigrationState::Failed;
                        st.figures.phase = MigrationPhase::Failed;
                        st.figures.error = Some("fake: the migration stream broke".into());
                        if let Some(v) = s.vms.get_mut(name) {
                            v.status.state = VmState::Running;
                        }
                    }
                }
                s.outgoing.insert(name.to_string(), st.clone());
            }
            Ok(st)
        })
        .await
    }

    async fn cancel_migration(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        self.call(Op::CancelMigration, format!("cancel-migration {name}"), |s| {
            let plan = s.plan;
            let st = s
                .outgoing
                .get_mut(name)
                .filter(|st| st.state == MigrationState::Running)
                .ok_or_else(|| ApiError::conflict(format!("VM {name:?} has no migration in progress")))?;
            if plan == MigrationPlan::Postcopy {
                return Err(ApiError::too_late(format!(
                    "too late to cancel: VM {name:?} already runs at the destination"
                )));
            }
            st.state = MigrationState::Cancelled;
            st.figures.phase = MigrationPhase::Cancelled;
            let st = st.clone();
            if let Some(v) = s.vms.get_mut(name) {
                v.status.state = VmState::Running;
            }
            Ok(st)
        })
        .await
    }

    async fn finish_migration(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.call(Op::FinishMigration, format!("finish-migration {name}"), |s| {
            let pid = s.pid();
            let v = s.vm(name)?;
            if v.status.state != VmState::Migrating {
                return Err(ApiError::conflict(format!("VM {name:?} is not arriving here")));
            }
            v.status = status_of(&v.def, VmState::Running, Some(pid));
            Ok(v.status.clone())
        })
        .await
    }

    async fn revert_migration(&self, name: &str, uuid: &uuid::Uuid) -> Result<VmStatus, ApiError> {
        self.call(Op::RevertMigration, format!("revert-migration {name}"), |s| {
            let pid = s.pid();
            let v = s.vm(name)?;
            if v.def.uuid != *uuid {
                return Err(missing(name));
            }
            v.status = status_of(&v.def, VmState::Running, Some(pid));
            Ok(v.status.clone())
        })
        .await
    }
}
