//! Profiles, virtual clusters, address management and long operations.
//!
//! A cluster is deployed in the four steps of the source documents: *configure* the VMs from
//! the profile (name `<cluster>-<n>`, UUID, MAC and an address from the cluster's subnet),
//! *place* the whole group at once with the scheduler core, *prepare* the images on the chosen
//! hosts (templates sent where missing, copy-on-write disks made) and *execute* on every host
//! in parallel. Everything the deployment will do is written to the store in one batch before
//! any host is touched, so a crash at any point is finished by the reconciler.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;
use serde::Deserialize;

use corral_api::cluster::{
    Cluster, ClusterState, ClusterView, CreateCluster, Member, OpState, OpStep, Operation, Placement, PlacementPolicy,
    Profile, ProfileSource,
};
use corral_api::{now_ms, ApiError, Pending, Vm, VmAction, VmState};
use corral_sched::{place_group, GroupError, GroupRequest, HostView, Overcommit, Policy, VmReq};
use corral_store::{Op, StoreExt};

use crate::service::{lock, store_err, Controller};
use crate::tables::{CLUSTERS, IPAM, OPS, PROFILES, VMS};

/// A group placement failure as an API error: a request that names something impossible is a
/// bad request, one the pool cannot hold right now lacks capacity.
fn group_error(e: GroupError) -> ApiError {
    match e {
        GroupError::Infeasible { .. }
        | GroupError::AntiAffinity { .. }
        | GroupError::TooBig { .. }
        | GroupError::HostFull { .. }
        | GroupError::NoHosts => ApiError::no_capacity(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// Where automatic cluster subnets come from (one /24 each).
const AUTO_POOL: &str = "100.64.0.0/16";
/// Largest cluster one request may ask for.
const MAX_CLUSTER: u32 = 1000;

/// The store key of an address (`100.64.1.2/24` → `100.64.1.2`).
pub(crate) fn ipam_key(ip: &str) -> String {
    ip.split('/').next().unwrap_or(ip).to_string()
}

/// JSON bytes of a value, for a store batch.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// A memory or disk size in a profile: `512`, `"512M"`, `"2G"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Mib(u64),
    Text(String),
}

impl Size {
    fn mib(&self, field: &str) -> Result<u64, String> {
        match self {
            Size::Mib(n) => Ok(*n),
            Size::Text(s) => corral_api::size::parse_mib(s).map_err(|e| format!("field `{field}`: {e}")),
        }
    }
}

/// A profile file as the user writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    template: String,
    vcpus: u32,
    memory: Size,
    #[serde(default)]
    disk: Option<Size>,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    restart_priority: i32,
    #[serde(default)]
    ha: Option<String>,
    #[serde(default)]
    storage: Option<String>,
    #[serde(default)]
    bridged: Option<corral_api::cluster::Bridged>,
}

/// Parses a bridged network's range `FIRST-LAST` within its provider network.
pub(crate) fn bridged_range(b: &corral_api::cluster::Bridged) -> Result<(Ipv4Net, Ipv4Addr, Ipv4Addr), String> {
    let (a, z) = b
        .range
        .split_once('-')
        .ok_or_else(|| format!("range {:?}: write FIRST-LAST, e.g. 198.19.100.10-198.19.100.50", b.range))?;
    let first: Ipv4Addr = a.trim().parse().map_err(|_| format!("range {:?}: {a:?} is not an IPv4 address", b.range))?;
    let last: Ipv4Addr = z.trim().parse().map_err(|_| format!("range {:?}: {z:?} is not an IPv4 address", b.range))?;
    let net = Ipv4Net::new(first, b.prefix)
        .map_err(|_| format!("prefix {} is not a valid IPv4 prefix length", b.prefix))?
        .trunc();
    if first > last {
        return Err(format!("range {:?}: the first address is after the last", b.range));
    }
    if !net.contains(&last) || first == net.network() || last == net.broadcast() {
        return Err(format!("range {:?} must lie inside {net}, without its network and broadcast addresses", b.range));
    }
    Ok((net, first, last))
}

fn policy(p: PlacementPolicy) -> Policy {
    match p {
        PlacementPolicy::Spread => Policy::Spread,
        PlacementPolicy::Pack => Policy::Pack,
    }
}

/// Parses and checks a subnet: a network address with room for VMs.
fn parse_subnet(s: &str) -> Result<Ipv4Net, ApiError> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid subnet {s:?}: write an IPv4 network in CIDR form, e.g. 100.64.10.0/24"))
    })?;
    if net.network() != net.addr() {
        return Err(ApiError::bad_request(format!(
            "subnet {s} is not a network address: did you mean {}/{}?",
            net.network(),
            net.prefix_len()
        )));
    }
    if net.prefix_len() > 29 {
        return Err(ApiError::bad_request(format!("subnet {s} is too small: use a prefix of /29 or shorter")));
    }
    Ok(net)
}

/// Addresses VMs may get: all but the network, the gateway (the first) and the broadcast.
fn vm_addresses(net: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + '_ {
    net.hosts().skip(1)
}

fn room(net: &Ipv4Net) -> u64 {
    (1u64 << (32 - net.prefix_len())).saturating_sub(3)
}

/// A handle to a running operation: every update is written through to the store.
#[derive(Clone)]
pub(crate) struct OpHandle {
    c: Arc<Controller>,
    pub id: String,
}

impl OpHandle {
    pub fn update(&self, f: impl FnOnce(&mut Operation)) {
        let snapshot = {
            let mut ops = lock(&self.c.ops);
            let Some(op) = ops.get_mut(&self.id) else { return };
            f(op);
            op.clone()
        };
        if let Err(e) = self.c.store.put_json(OPS, &self.id, &snapshot) {
            tracing::warn!("cannot record operation {}: {e}", self.id);
        }
    }
    pub(crate) fn phase(&self, p: &str) {
        self.update(|o| o.phase = p.to_string());
    }
    pub(crate) fn step(&self, name: &str, since: Instant) {
        let ms = since.elapsed().as_millis() as u64;
        self.update(|o| o.steps.push(OpStep { name: name.into(), ms }));
    }
    pub(crate) fn message(&self, m: String) {
        self.update(|o| o.messages.push(m));
    }
    pub(crate) fn tick(&self) {
        self.update(|o| o.done += 1);
    }
    pub(crate) fn finish(&self, ok: bool, vms: u32, hosts: Vec<String>) {
        self.update(|o| {
            o.state = if ok { OpState::Succeeded } else { OpState::Failed };
            o.phase = "done".into();
            o.vms = vms;
            o.hosts = hosts;
            o.finished_ms = Some(now_ms());
        });
    }
}

impl Controller {
    // ---- operations --------------------------------------------------------------------

    /// Loads operations at start-up; those a crash interrupted are marked failed (the VMs'
    /// pending work is finished by the reconciler, not by the operation).
    pub(crate) fn load_ops(&self) {
        let Ok(mut all) = self.store.list_json::<Operation>(OPS) else { return };
        for op in all.iter_mut().filter(|o| o.state == OpState::Running) {
            op.state = OpState::Failed;
            op.messages
                .push("interrupted by a controller restart; the reconciler finishes the VMs' pending work".into());
            op.finished_ms = Some(now_ms());
            let _ = self.store.put_json(OPS, &op.id, op);
        }
        *lock(&self.ops) = all.into_iter().map(|o| (o.id.clone(), o)).collect();
    }

    pub(crate) fn new_op(self: &Arc<Self>, kind: &str, target: &str, total: u32, steps: Vec<OpStep>) -> OpHandle {
        let id = format!("op-{:013}-{}", now_ms(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let op = Operation {
            id: id.clone(),
            kind: kind.into(),
            target: target.into(),
            state: OpState::Running,
            phase: "starting".into(),
            done: 0,
            total,
            steps,
            messages: vec![],
            vms: 0,
            hosts: vec![],
            started_ms: now_ms(),
            finished_ms: None,
        };
        lock(&self.ops).insert(id.clone(), op);
        let h = OpHandle { c: self.clone(), id };
        h.update(|_| {});
        h
    }

    pub fn operation(&self, id: &str) -> Result<Operation, ApiError> {
        lock(&self.ops).get(id).cloned().ok_or_else(|| ApiError::not_found(format!("no operation {id:?}")))
    }

    pub fn operations(&self) -> Vec<Operation> {
        lock(&self.ops).values().cloned().collect()
    }

    /// Waits up to `secs` for an operation to end.
    pub async fn wait_operation(&self, id: &str, secs: u64) -> Result<Operation, ApiError> {
        let deadline = Instant::now() + std::time::Duration::from_secs(secs.min(300));
        loop {
            let op = self.operation(id)?;
            if op.state != OpState::Running || Instant::now() >= deadline {
                return Ok(op);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // ---- profiles ----------------------------------------------------------------------

    fn parse_profile(&self, src: &ProfileSource) -> Result<Profile, ApiError> {
        let name = &src.name;
        corral_api::names::validate_name("profile", name).map_err(ApiError::bad_request)?;
        let bad = |m: String| ApiError::bad_request(format!("profile {name}: {m}"));
        let t: ProfileToml = toml::from_str(&src.toml).map_err(|e| bad(e.to_string().trim().replace('\n', " ")))?;
        if t.vcpus == 0 || t.vcpus > 256 {
            return Err(bad(format!("field `vcpus`: {} is not possible: use 1 to 256", t.vcpus)));
        }
        let memory_mib = t.memory.mib("memory").map_err(bad)?;
        if memory_mib < 32 {
            return Err(bad(format!("field `memory`: {memory_mib} MiB is too little: a guest needs at least 32 MiB")));
        }
        corral_api::types::check_memory_mib(memory_mib).map_err(|e| bad(format!("field `memory`: {e}")))?;
        let tpl = self.check_template(&t.template).map_err(|e| bad(e.message))?;
        let disk_mib = match &t.disk {
            None => None,
            Some(d) => {
                let m = d.mib("disk").map_err(bad)?;
                corral_api::types::check_disk_mib(m).map_err(|e| bad(format!("field `disk`: {e}")))?;
                let min = tpl.size_bytes.div_ceil(1 << 20);
                if m < min {
                    return Err(bad(format!(
                        "field `disk`: {m} MiB is smaller than template {} ({min} MiB)",
                        tpl.name
                    )));
                }
                Some(m)
            }
        };
        let workload = t.workload.unwrap_or_else(|| "idle".into());
        corral_api::validate_workload(&workload).map_err(|e| bad(format!("field `workload`: {e}")))?;
        let network = t.network.unwrap_or_else(|| "overlay".into());
        match (network.as_str(), &t.bridged) {
            ("overlay", None) => {}
            ("overlay", Some(_)) => return Err(bad("section [bridged] needs `network = \"bridged\"`".into())),
            ("bridged", None) => {
                return Err(bad(
                    "`network = \"bridged\"` needs a [bridged] section: interface, range, prefix (and vlan)".into(),
                ))
            }
            ("bridged", Some(b)) => {
                if let Err(e) = corral_api::agent::check_interface(&b.interface) {
                    return Err(bad(format!("field `bridged.interface`: {e}")));
                }
                if b.vlan.is_some_and(|v| v == 0 || v > 4094) {
                    return Err(bad("field `bridged.vlan`: use 1 to 4094".into()));
                }
                bridged_range(b).map_err(|e| bad(format!("field `bridged`: {e}")))?;
            }
            (other, _) => {
                return Err(bad(format!(
                    "field `network`: {other:?} is not a network kind: use \"overlay\" or \"bridged\""
                )))
            }
        }
        for (k, v) in &t.placement.labels {
            if k.is_empty() || v.is_empty() {
                return Err(bad("field `placement.labels`: keys and values must not be empty".into()));
            }
        }
        let storage: corral_api::Storage = match &t.storage {
            None => corral_api::Storage::Local,
            Some(s) => s.parse().map_err(|e: String| bad(format!("field `storage`: {e}")))?,
        };
        let asked = t.ha.as_deref().map(str::parse).transpose().map_err(|e: String| bad(format!("field `ha`: {e}")))?;
        let ha = crate::ha::resolve_ha(asked, storage).map_err(|e| bad(format!("field `ha`: {}", e.message)))?;
        Ok(Profile {
            ha,
            storage,
            name: name.to_string(),
            template: t.template,
            vcpus: t.vcpus,
            memory_mib,
            disk_mib,
            workload,
            network,
            placement: t.placement,
            restart_priority: t.restart_priority,
            bridged: t.bridged,
            source: src.toml.clone(),
        })
    }

    pub fn create_profile(&self, src: ProfileSource, replace: bool) -> Result<Profile, ApiError> {
        let p = self.parse_profile(&src)?;
        let exists = self.store.get(PROFILES, &p.name).map_err(store_err)?.is_some();
        if exists && !replace {
            return Err(ApiError::conflict(format!(
                "profile {:?} already exists: use `corral profile edit {}` or delete it first",
                p.name, p.name
            )));
        }
        if !exists && replace {
            return Err(ApiError::not_found(format!("no profile named {:?}", p.name)));
        }
        self.store.put_json(PROFILES, &p.name, &p).map_err(store_err)?;
        Ok(p)
    }

    pub fn profiles(&self) -> Result<Vec<Profile>, ApiError> {
        self.store.list_json(PROFILES).map_err(store_err)
    }

    pub fn profile(&self, name: &str) -> Result<Profile, ApiError> {
        self.store
            .get_json(PROFILES, name)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no profile named {name:?}: see `corral profile list`")))
    }

    pub fn delete_profile(&self, name: &str) -> Result<(), ApiError> {
        self.profile(name)?;
        // Clusters keep a copy of their profile, so deleting it harms none of them.
        StoreExt::delete(&*self.store, PROFILES, name).map_err(store_err)
    }

    // ---- clusters ----------------------------------------------------------------------

    pub(crate) fn cluster(&self, name: &str) -> Result<Cluster, ApiError> {
        self.store
            .get_json(CLUSTERS, name)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}: see `corral cluster list`")))
    }

    fn members(&self, name: &str) -> Result<Vec<Vm>, ApiError> {
        let mut m: Vec<Vm> = self.vms()?.into_iter().filter(|v| v.cluster.as_deref() == Some(name)).collect();
        m.sort_by_key(|v| v.index);
        Ok(m)
    }

    fn view(&self, c: Cluster) -> Result<ClusterView, ApiError> {
        let members = self.members(&c.name)?;
        let hosts: BTreeSet<String> = members.iter().map(|v| v.host.clone()).collect();
        Ok(ClusterView {
            members: members
                .into_iter()
                .map(|v| Member {
                    name: v.name,
                    index: v.index.unwrap_or(0),
                    state: v.state,
                    host: v.host,
                    ip: v.ip,
                    mac: v.mac,
                    uuid: v.uuid,
                    error: v.error,
                })
                .collect(),
            hosts: hosts.into_iter().collect(),
            cluster: c,
        })
    }

    pub fn clusters(&self) -> Result<Vec<ClusterView>, ApiError> {
        let all: Vec<Cluster> = self.store.list_json(CLUSTERS).map_err(store_err)?;
        all.into_iter().map(|c| self.view(c)).collect()
    }

    pub fn cluster_view(&self, name: &str) -> Result<ClusterView, ApiError> {
        self.view(self.cluster(name)?)
    }

    /// Chooses a subnet for a new cluster, or checks the one given against the others.
    fn choose_subnet(&self, given: Option<&str>, size: u32) -> Result<Ipv4Net, ApiError> {
        let clusters: Vec<Cluster> = self.store.list_json(CLUSTERS).map_err(store_err)?;
        let used: Vec<(String, Ipv4Net)> =
            clusters.iter().filter_map(|c| c.subnet.parse::<Ipv4Net>().ok().map(|n| (c.name.clone(), n))).collect();
        let overlaps = |n: &Ipv4Net| used.iter().find(|(_, u)| u.contains(n) || n.contains(u)).map(|(c, _)| c.clone());
        let net = match given {
            Some(s) => {
                let n = parse_subnet(s)?;
                if let Some(c) = overlaps(&n) {
                    return Err(ApiError::conflict(format!(
                        "subnet {s} overlaps the subnet of cluster {c:?}: choose another"
                    )));
                }
                n
            }
            None => {
                let pool: Ipv4Net = AUTO_POOL.parse().map_err(|_| ApiError::internal("bad subnet pool"))?;
                pool.subnets(24)
                    .map_err(|_| ApiError::internal("bad subnet pool"))?
                    .find(|n| overlaps(n).is_none())
                    .ok_or_else(|| ApiError::no_capacity(format!("no free /24 left in {AUTO_POOL}: give --subnet")))?
            }
        };
        if u64::from(size) > room(&net) {
            return Err(ApiError::bad_request(format!(
                "subnet {net} has room for {} VMs but the cluster needs {size}: choose a larger subnet",
                room(&net)
            )));
        }
        Ok(net)
    }

    /// Free addresses of a subnet, lowest first.
    fn free_addresses(&self, c: &Cluster, net: &Ipv4Net, n: usize) -> Result<Vec<String>, ApiError> {
        let taken: BTreeSet<String> =
            self.store.scan(IPAM, "").map_err(store_err)?.into_iter().map(|(k, _)| k).collect();
        let pool: Box<dyn Iterator<Item = Ipv4Addr>> = match &c.profile.bridged {
            Some(b) => {
                let (_, first, last) = bridged_range(b).map_err(ApiError::bad_request)?;
                Box::new((u32::from(first)..=u32::from(last)).map(Ipv4Addr::from))
            }
            None => Box::new(vm_addresses(net)),
        };
        let free: Vec<String> = pool
            .filter(|a| !taken.contains(&a.to_string()))
            .take(n)
            .map(|a| format!("{a}/{}", net.prefix_len()))
            .collect();
        if free.len() < n {
            return Err(ApiError::no_capacity(format!(
                "subnet {net} is out of addresses: {} free, {n} needed; scale down or delete VMs first",
                free.len()
            )));
        }
        Ok(free)
    }

    fn overcommit(&self) -> Overcommit {
        Overcommit { cpu: self.settings.cpu_overcommit, memory: self.settings.memory_overcommit }
    }

    /// Host views for placing members of `c`: a bridged network's members go only to hosts
    /// that have its interface.
    pub(crate) fn views_for(&self, c: &Cluster) -> Result<Vec<HostView>, ApiError> {
        let mut views = self.views_for_storage(c.profile.storage)?;
        if let Some(b) = &c.profile.bridged {
            let regs: Vec<corral_api::agent::Register> =
                self.store.list_json(crate::tables::HOSTS).map_err(store_err)?;
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
                    self.members(&c.name)?.into_iter().filter(|m| m.name != vm.name).map(|m| m.host).collect();
                (c.policy, c.profile.placement.anti_affinity, c.profile.placement.labels.clone(), others)
            }
            None => (PlacementPolicy::Spread, false, BTreeMap::new(), vec![]),
        };
        let req = GroupRequest {
            vms: vec![VmReq {
                name: vm.name.clone(),
                vcpus: vm.vcpus,
                memory_mib: vm.memory_mib,
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

    /// Makes the member records of a cluster (names, identities, addresses, hosts) for the
    /// members numbered `first..first+count`; writes nothing.
    fn plan_members(
        &self,
        c: &Cluster,
        first: u32,
        count: u32,
        net: &Ipv4Net,
        existing: Vec<String>,
    ) -> Result<(Vec<Vm>, u64, u64), ApiError> {
        let t0 = Instant::now();
        let ips = self.free_addresses(c, net, count as usize)?;
        let mut vms = Vec::new();
        for (i, ip) in (first..first + count).zip(ips) {
            let name = format!("{}-{i}", c.name);
            if self.store.get(VMS, &name).map_err(store_err)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "a VM named {name:?} already exists: delete it or choose another cluster name"
                )));
            }
            let uuid = uuid::Uuid::new_v4();
            let mut mac = self.unique_mac(&uuid)?;
            if vms.iter().any(|v: &Vm| v.mac == mac) {
                mac = crate::service::mac_for(&uuid, 0x80);
            }
            let p = &c.profile;
            vms.push(Vm {
                name,
                uuid,
                state: VmState::Starting,
                host: String::new(),
                template: p.template.clone(),
                vcpus: p.vcpus,
                memory_mib: p.memory_mib,
                mac,
                ip: Some(ip),
                workload: p.workload.clone(),
                disk: None,
                boot_ms: None,
                error: None,
                created_ms: now_ms(),
                usage: None,
                cluster: Some(c.name.clone()),
                index: Some(i),
                pending: Some(Pending::Create { start: true }),
                disk_mib: p.disk_mib,
                network: (c.vni != 0).then_some(corral_api::agent::NetAttach { vni: c.vni, mtu: c.mtu }),
                migration: None,
                ha: p.ha,
                storage: p.storage,
            });
        }
        let configure_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        let req = GroupRequest {
            vms: vms
                .iter()
                .map(|v| VmReq { name: v.name.clone(), vcpus: v.vcpus, memory_mib: v.memory_mib, host: None })
                .collect(),
            policy: policy(c.policy),
            anti_affinity: c.profile.placement.anti_affinity,
            labels: c.profile.placement.labels.clone(),
            overcommit: self.overcommit(),
            existing,
        };
        let placed = place_group(&self.views_for(c)?, &req).map_err(group_error)?;
        for p in placed {
            if let Some(v) = vms.iter_mut().find(|v| v.name == p.vm) {
                v.host = p.host;
            }
        }
        if c.profile.ha != corral_api::HaPolicy::Off {
            let extra: Vec<(String, u32, u64)> = vms.iter().map(|v| (v.host.clone(), v.vcpus, v.memory_mib)).collect();
            self.admit_ha(&extra)?;
        }
        Ok((vms, configure_ms, t1.elapsed().as_millis() as u64))
    }

    /// Writes member records and their addresses (and the cluster) in one batch.
    fn write_members(&self, c: &Cluster, vms: &[Vm]) -> Result<(), ApiError> {
        let mut ops = vec![Op::Put { table: CLUSTERS.into(), key: c.name.clone(), value: encode(c)? }];
        for v in vms {
            ops.push(Op::Put { table: VMS.into(), key: v.name.clone(), value: encode(v)? });
            if let Some(ip) = &v.ip {
                ops.push(Op::Put { table: IPAM.into(), key: ipam_key(ip), value: encode(&v.name)? });
            }
        }
        self.store.apply(ops).map_err(store_err)
    }

    /// Creates a cluster; returns the operation that deploys it.
    pub async fn create_cluster(self: &Arc<Self>, req: CreateCluster) -> Result<Operation, ApiError> {
        corral_api::names::validate_name("cluster", &req.name).map_err(ApiError::bad_request)?;
        if req.size == 0 || req.size > MAX_CLUSTER {
            return Err(ApiError::bad_request(format!("--size must be 1 to {MAX_CLUSTER}")));
        }
        let profile = self.profile(&req.profile)?;
        self.check_template(&profile.template)?;
        let (op, names) = {
            let mut p = Some(self.placing.lock().await);
            let unique = || -> Result<(), ApiError> {
                if self.store.get(CLUSTERS, &req.name).map_err(store_err)?.is_some() {
                    return Err(ApiError::already_exists(format!("a cluster named {:?} already exists", req.name)));
                }
                Ok(())
            };
            unique()?;
            let net = match &profile.bridged {
                None => self.choose_subnet(req.subnet.as_deref(), req.size)?,
                Some(b) => {
                    let (net, first, last) = bridged_range(b).map_err(ApiError::bad_request)?;
                    let room = u64::from(u32::from(last) - u32::from(first)) + 1;
                    if u64::from(req.size) > room {
                        return Err(ApiError::bad_request(format!(
                            "range {} has room for {room} VMs but the cluster needs {}",
                            b.range, req.size
                        )));
                    }
                    net
                }
            };
            let (vni, mtu) = self.choose_vni_mtu(req.vni, req.mtu, profile.bridged.is_some())?;
            let c = Cluster {
                vni,
                mtu,
                name: req.name.to_string(),
                policy: req.policy.unwrap_or(profile.placement.policy),
                profile,
                size: req.size,
                subnet: net.to_string(),
                state: ClusterState::Active,
                next_index: req.size + 1,
                created_ms: now_ms(),
            };
            let (vms, configure_ms, place_ms) = self
                .wake_while_short(&mut p, || {
                    // Checked again after a host was woken (the lock was let go meanwhile).
                    unique()?;
                    self.plan_members(&c, 1, req.size, &net, vec![])
                })
                .await?;
            self.write_members(&c, &vms)?;
            let steps = vec![
                OpStep { name: "configure".into(), ms: configure_ms },
                OpStep { name: "place".into(), ms: place_ms },
            ];
            let op = self.new_op("cluster.create", &c.name, req.size, steps);
            (op, vms.into_iter().map(|v| v.name).collect::<Vec<_>>())
        };
        let me = self.clone();
        let h = op.clone();
        let cluster = req.name.to_string();
        tokio::spawn(async move { me.run_deploy(h, cluster, names).await });
        self.operation(&op.id)
    }

    /// Prepares all VMs in parallel, then starts them all in parallel; failures are retried
    /// on other hosts, and what cannot be deployed is removed and reported.
    async fn run_deploy(self: Arc<Self>, op: OpHandle, cluster: String, names: Vec<String>) {
        let mut guards = Vec::new();
        let mut mine = Vec::new();
        for n in names {
            match self.busy(&n) {
                Ok(g) => {
                    guards.push(g);
                    mine.push(n);
                }
                Err(_) => op.message(format!("{n}: being handled by the reconciler")),
            }
        }
        op.phase("prepare images");
        let t = Instant::now();
        let prepared = futures::future::join_all(mine.iter().map(|n| self.prepare(n))).await;
        op.step("prepare", t);
        // The hosts' network devices are set before the guests boot.
        self.sync_networks().await;
        op.phase("execute");
        let t = Instant::now();
        let results = futures::future::join_all(mine.iter().zip(prepared).map(|(n, p)| {
            let me = self.clone();
            let op = op.clone();
            async move {
                let res = match p {
                    Ok(_) => match me.execute(n).await {
                        Ok(v) => Ok(v),
                        Err(_) => me.bring_up(n, true).await,
                    },
                    Err(_) => me.bring_up(n, true).await,
                };
                if let Err(e) = &res {
                    op.message(format!("{n}: {}", e.message));
                    me.give_up(n, e).await;
                }
                op.tick();
                res.is_ok()
            }
        }))
        .await;
        op.step("execute", t);
        drop(guards);
        // Peers find each other by name as soon as the deployment reports done.
        self.sync_networks().await;
        self.sync_hosts_files().await;
        let ok = results.iter().all(|r| *r);
        self.finish_op(&op, &cluster, ok);
    }

    fn finish_op(&self, op: &OpHandle, cluster: &str, ok: bool) {
        let members = self.members(cluster).unwrap_or_default();
        let hosts: BTreeSet<String> = members.iter().map(|v| v.host.clone()).collect();
        op.finish(ok, members.len() as u32, hosts.into_iter().collect());
    }

    /// Grows or shrinks a cluster; shrinking removes the newest members first.
    pub async fn scale_cluster(self: &Arc<Self>, name: &str, size: u32) -> Result<Operation, ApiError> {
        if size > MAX_CLUSTER {
            return Err(ApiError::bad_request(format!("--size must be at most {MAX_CLUSTER}")));
        }
        let mut p = Some(self.placing.lock().await);
        let mut c = self.cluster(name)?;
        if c.state != ClusterState::Active {
            return Err(ApiError::conflict(format!(
                "cluster {name} is {}: it can be scaled only when active{}",
                c.state,
                if c.state == ClusterState::Suspended {
                    format!(" (resume it first: corral cluster resume {name})")
                } else {
                    String::new()
                }
            )));
        }
        let members = self.members(name)?;
        let have = members.len() as u32;
        if size > have {
            let net = parse_subnet(&c.subnet)?;
            let add = size - have;
            let existing: Vec<String> = members.iter().map(|m| m.host.clone()).collect();
            let (vms, configure_ms, place_ms) = self
                .wake_while_short(&mut p, || {
                    // The cluster may have changed while a host was woken (the lock was let go).
                    if self.cluster(name)?.next_index != c.next_index {
                        return Err(ApiError::conflict(format!(
                            "cluster {name} changed while a host was woken for it: run the command again"
                        )));
                    }
                    self.plan_members(&c, c.next_index, add, &net, existing.clone())
                })
                .await?;
            c.size = size;
            c.next_index += add;
            self.write_members(&c, &vms)?;
            let steps = vec![
                OpStep { name: "configure".into(), ms: configure_ms },
                OpStep { name: "place".into(), ms: place_ms },
            ];
            let op = self.new_op("cluster.scale", name, add, steps);
            let me = self.clone();
            let h = op.clone();
            let cname = name.to_string();
            tokio::spawn(async move { me.run_deploy(h, cname, vms.into_iter().map(|v| v.name).collect()).await });
            return self.operation(&op.id);
        }
        let victims: Vec<Vm> = members.into_iter().rev().take((have - size) as usize).collect();
        c.size = size;
        let mut ops = vec![Op::Put { table: CLUSTERS.into(), key: c.name.clone(), value: encode(&c)? }];
        for v in &victims {
            let mut v = v.clone();
            v.pending = Some(Pending::Delete);
            v.state = VmState::Deleting;
            v.usage = None;
            ops.push(Op::Put { table: VMS.into(), key: v.name.clone(), value: encode(&v)? });
        }
        self.store.apply(ops).map_err(store_err)?;
        let op = self.new_op("cluster.scale", name, victims.len() as u32, vec![]);
        self.spawn_removals(op.clone(), name.to_string(), victims.into_iter().map(|v| v.name).collect(), None);
        self.operation(&op.id)
    }

    /// Removes VMs in parallel under an operation; then sets the cluster's state if given.
    fn spawn_removals(self: &Arc<Self>, op: OpHandle, cluster: String, names: Vec<String>, then: Option<ClusterState>) {
        let me = self.clone();
        tokio::spawn(async move {
            op.phase("remove");
            let t = Instant::now();
            let res = futures::future::join_all(names.iter().map(|n| {
                let me = me.clone();
                let op = op.clone();
                async move {
                    let _g = me.busy(n).ok();
                    let r = me.remove(n).await;
                    if let Err(e) = &r {
                        op.message(format!("{n}: {} (the reconciler will retry)", e.message));
                    }
                    op.tick();
                    r.is_ok()
                }
            }))
            .await;
            op.step("remove", t);
            if then.is_some() {
                me.finish_cluster_deletes();
            }
            me.sync_networks().await;
            me.sync_hosts_files().await;
            me.finish_op(&op, &cluster, res.iter().all(|r| *r));
        });
    }

    /// Deletes a cluster and all its members.
    pub async fn delete_cluster(self: &Arc<Self>, name: &str) -> Result<Operation, ApiError> {
        let _p = self.placing.lock().await;
        let mut c = self.cluster(name)?;
        c.state = ClusterState::Deleting;
        let members = self.members(name)?;
        let mut ops = vec![Op::Put { table: CLUSTERS.into(), key: c.name.clone(), value: encode(&c)? }];
        for v in &members {
            let mut v = v.clone();
            v.pending = Some(Pending::Delete);
            v.usage = None;
            ops.push(Op::Put { table: VMS.into(), key: v.name.clone(), value: encode(&v)? });
        }
        self.store.apply(ops).map_err(store_err)?;
        let op = self.new_op("cluster.delete", name, members.len() as u32, vec![]);
        self.spawn_removals(
            op.clone(),
            name.to_string(),
            members.into_iter().map(|v| v.name).collect(),
            Some(ClusterState::Deleting),
        );
        self.operation(&op.id)
    }

    /// Forgets clusters being deleted whose members are all gone.
    pub(crate) fn finish_cluster_deletes(&self) {
        let Ok(all) = self.store.list_json::<Cluster>(CLUSTERS) else { return };
        for c in all.into_iter().filter(|c| c.state == ClusterState::Deleting) {
            if self.members(&c.name).is_ok_and(|m| m.is_empty()) {
                let _ = StoreExt::delete(&*self.store, CLUSTERS, &c.name);
                self.event("cluster.deleted", &c.name, "all members removed");
            }
        }
    }

    /// Resumes a suspended VM on its host if that host can take it back; otherwise places it on
    /// another host and moves its disk and saved memory there first.
    async fn resume_member(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let vm = self.vm(name)?;
        let elsewhere = {
            let _p = self.placing.lock().await;
            let mut views = self.host_views()?;
            match self.place_member(&vm, &views, Some(&vm.host)) {
                Ok(_) => None,
                Err(_) => {
                    for v in views.iter_mut().filter(|v| v.name == vm.host) {
                        v.schedulable = false;
                    }
                    Some(self.place_member(&vm, &views, None)?)
                }
            }
        };
        if let Some(to) = elsewhere {
            self.move_stopped(name, &to).await?;
        }
        self.vm_action(name, VmAction::Resume).await.map(|_| ())
    }

    /// Moves a suspended or stopped VM to another host: the new host fetches its files, the
    /// record switches to the new host, then the old copy is removed (if that fails, the
    /// reconciler removes it as an orphan).
    pub(crate) async fn move_stopped(self: &Arc<Self>, name: &str, to: &str) -> Result<(), ApiError> {
        let _b = self.busy(name)?;
        let mut vm = self.vm(name)?;
        let from = vm.host.clone();
        let started = Instant::now();
        self.ensure_template(to, &vm.template).await?;
        let src = self.agent(&from)?;
        let st = self.agent(to)?.import(&crate::service::definition(&vm)?, src.url()).await?;
        vm.host = to.to_string();
        vm.disk = Some(st.disk.clone());
        self.put_vm(&vm)?;
        if let Err(e) = src.delete_copy(name, &vm.uuid).await {
            tracing::warn!("removing the old copy of {name} from {from}: {}", e.message);
        }
        self.event("vm.moved", name, format!("moved from {from} to {to} in {} ms", started.elapsed().as_millis()));
        Ok(())
    }

    fn set_cluster_state(&self, name: &str, s: ClusterState) -> Result<(), ApiError> {
        let mut c = self.cluster(name)?;
        c.state = s;
        self.store.put_json(CLUSTERS, name, &c).map_err(store_err)
    }

    /// Suspends (memory to disk, resources released) or resumes every member in parallel.
    pub async fn suspend_or_resume_cluster(self: &Arc<Self>, name: &str, suspend: bool) -> Result<Operation, ApiError> {
        let (from, during, to, action, kind) = if suspend {
            (
                ClusterState::Active,
                ClusterState::Suspending,
                ClusterState::Suspended,
                VmAction::Suspend,
                "cluster.suspend",
            )
        } else {
            (ClusterState::Suspended, ClusterState::Resuming, ClusterState::Active, VmAction::Resume, "cluster.resume")
        };
        let members = {
            let _p = self.placing.lock().await;
            let c = self.cluster(name)?;
            if c.state != from {
                return Err(ApiError::conflict(format!(
                    "cluster {name} is {}: only an {} cluster can be {}",
                    c.state,
                    from,
                    if suspend { "suspended" } else { "resumed" }
                )));
            }
            self.set_cluster_state(name, during)?;
            self.members(name)?
        };
        let op = self.new_op(kind, name, members.len() as u32, vec![]);
        let me = self.clone();
        let h = op.clone();
        let cname = name.to_string();
        tokio::spawn(async move {
            h.phase(if suspend { "save to disk" } else { "restore" });
            let t = Instant::now();
            let res = futures::future::join_all(members.iter().map(|m| {
                let me = me.clone();
                let h = h.clone();
                async move {
                    let wanted = if suspend {
                        matches!(m.state, VmState::Running | VmState::Paused)
                    } else {
                        m.state == VmState::Suspended
                    };
                    let r = match (wanted, suspend) {
                        (false, _) => Ok(()),
                        (true, true) => me.vm_action(&m.name, action).await.map(|_| ()),
                        (true, false) => me.resume_member(&m.name).await,
                    };
                    if let Err(e) = &r {
                        h.message(format!("{}: {}", m.name, e.message));
                    }
                    h.tick();
                    r.is_ok()
                }
            }))
            .await;
            h.step(if suspend { "suspend" } else { "resume" }, t);
            let ok = res.iter().all(|r| *r);
            let _ = me.set_cluster_state(&cname, if ok { to } else { from });
            me.finish_op(&h, &cname, ok);
        });
        self.operation(&op.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_must_be_network_addresses_with_room() {
        assert!(parse_subnet("100.64.10.0/24").is_ok());
        let e = parse_subnet("100.64.10.5/24").err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("did you mean 100.64.10.0/24"), "{e}");
        assert!(parse_subnet("100.64.10.0/30").is_err());
        assert!(parse_subnet("banana").is_err());
        let n = parse_subnet("10.0.0.0/29").expect("valid");
        assert_eq!(room(&n), 5);
        let a: Vec<String> = vm_addresses(&n).map(|a| a.to_string()).collect();
        assert_eq!(a, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert_eq!(ipam_key("10.0.0.2/29"), "10.0.0.2");
    }
}
