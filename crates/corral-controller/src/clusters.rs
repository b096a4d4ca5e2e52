//! The lifecycle of virtual clusters: create, scale, delete, suspend and resume, and moving a
//! stopped member to another host.
//!
//! A cluster is deployed in the four steps of the source documents: *configure* the VMs from
//! the profile (name `<cluster>-<n>`, UUID, MAC and an address from the cluster's subnet),
//! *place* the whole group at once with the scheduler core, *prepare* the images on the chosen
//! hosts (templates sent where missing, copy-on-write disks made) and *execute* on every host
//! in parallel. Everything the deployment will do is written to the store in one batch before
//! any host is touched, so a crash at any point is finished by the reconciler.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;

use corral_api::agent::VmDefinition;
use corral_api::cluster::{
    Cluster, ClusterState, ClusterView, CreateCluster, Member, OpKind, OpPhase, OpStage, OpStep, Operation,
};
use corral_api::{now_ms, ApiError, Pending, Vm, VmAction, VmState};
use corral_sched::{place_group, GroupRequest, VmReq};

use crate::ipam::{bridged_range, ipam_key, parse_subnet};
use crate::operations::OpHandle;
use crate::placement::{group_error, policy};
use crate::service::{store_err, Controller};
use crate::tables::{CLUSTERS, IPAM, VMS};

/// Largest cluster one request may ask for.
const MAX_CLUSTER: u32 = 1000;

impl Controller {
    pub(crate) fn cluster(&self, name: &str) -> Result<Cluster, ApiError> {
        CLUSTERS
            .get(&*self.store, name)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}: see `corral cluster list`")))
    }

    pub(crate) fn members(&self, name: &str) -> Result<Vec<Vm>, ApiError> {
        let mut m: Vec<Vm> = self.vms()?.into_iter().filter(|v| v.cluster.as_deref() == Some(name)).collect();
        m.sort_by_key(|v| v.index);
        Ok(m)
    }

    fn view(&self, c: Cluster) -> Result<ClusterView, ApiError> {
        let members = self.members(&c.name)?;
        let hosts: BTreeSet<String> = members.iter().map(|v| v.host.clone()).collect();
        Ok(ClusterView {
            members: members.iter().map(Member::from).collect(),
            hosts: hosts.into_iter().collect(),
            cluster: c,
        })
    }

    pub fn clusters(&self) -> Result<Vec<ClusterView>, ApiError> {
        let all: Vec<Cluster> = CLUSTERS.list(&*self.store).map_err(store_err)?;
        all.into_iter().map(|c| self.view(c)).collect()
    }

    pub fn cluster_view(&self, name: &str) -> Result<ClusterView, ApiError> {
        self.view(self.cluster(name)?)
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
        let p = &c.profile;
        // The profile was checked when the cluster was made; a value that no longer parses
        // was damaged in the store.
        let stored = |what: &str, e: String| {
            ApiError::internal(format!("cluster {:?}: its stored profile's {what} is invalid: {e}", c.name))
        };
        let mut vms = Vec::new();
        for (i, ip) in (first..first + count).zip(ips) {
            let name = format!("{}-{i}", c.name);
            if VMS.contains(&*self.store, &name).map_err(store_err)? {
                return Err(ApiError::conflict(format!(
                    "a VM named {name:?} already exists: delete it or choose another cluster name"
                )));
            }
            let uuid = uuid::Uuid::new_v4();
            let mut mac = self.unique_mac(&uuid)?;
            if vms.iter().any(|v: &Vm| v.def.mac == mac) {
                mac = crate::service::mac_for(&uuid, 0x80);
            }
            vms.push(Vm {
                def: VmDefinition {
                    name: name.parse().map_err(|e| stored("name", e))?,
                    uuid,
                    template: p.template.parse().map_err(|e| stored("template", e))?,
                    vcpus: p.vcpus,
                    memory_mib: p.memory_mib,
                    mac,
                    ip: Some(ip),
                    workload: p.workload.clone().try_into().map_err(|e| stored("workload", e))?,
                    disk_mib: p.disk_mib,
                    network: (c.vni != 0).then_some(corral_api::agent::NetAttach { vni: c.vni, mtu: c.mtu }),
                    storage: p.storage,
                    ha: p.ha,
                    firmware: p.firmware,
                    ssh_keys: p.ssh_keys.clone(),
                    user_data: p.user_data.clone(),
                },
                state: VmState::Starting,
                host: String::new(),
                disk: None,
                boot_ms: None,
                error: None,
                created_ms: now_ms(),
                usage: None,
                cluster: Some(c.name.clone()),
                index: Some(i),
                pending: Some(Pending::Create { start: true }),
                migration: None,
            });
        }
        let configure_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        let req = GroupRequest {
            vms: vms
                .iter()
                .map(|v| VmReq {
                    name: v.def.name.to_string(),
                    vcpus: v.def.vcpus,
                    memory_mib: v.def.memory_mib,
                    host: None,
                })
                .collect(),
            policy: policy(c.policy),
            anti_affinity: c.profile.placement.anti_affinity,
            labels: c.profile.placement.labels.clone(),
            overcommit: self.overcommit(),
            existing,
        };
        let placed = place_group(&self.views_for(c)?, &req).map_err(group_error)?;
        for p in placed {
            if let Some(v) = vms.iter_mut().find(|v| v.def.name == p.vm) {
                v.host = p.host;
            }
        }
        if c.profile.ha != corral_api::HaPolicy::Off {
            let extra: Vec<(String, u32, u64)> =
                vms.iter().map(|v| (v.host.clone(), v.def.vcpus, v.def.memory_mib)).collect();
            self.admit_ha(&extra)?;
        }
        Ok((vms, configure_ms, t1.elapsed().as_millis() as u64))
    }

    /// Writes member records and their addresses (and the cluster) in one batch.
    fn write_members(&self, c: &Cluster, vms: &[Vm]) -> Result<(), ApiError> {
        let mut ops = vec![CLUSTERS.put_op(&c.name, c).map_err(store_err)?];
        for v in vms {
            ops.push(VMS.put_op(&v.def.name, v).map_err(store_err)?);
            if let Some(ip) = &v.def.ip {
                ops.push(IPAM.put_op(&ipam_key(ip), &v.def.name).map_err(store_err)?);
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
                if CLUSTERS.contains(&*self.store, &req.name).map_err(store_err)? {
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
            let mut profile = profile;
            for k in &req.ssh_keys {
                if !profile.ssh_keys.contains(k) {
                    profile.ssh_keys.push(k.clone());
                }
            }
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
                OpStep { name: OpStage::Configure, ms: configure_ms },
                OpStep { name: OpStage::Place, ms: place_ms },
            ];
            let op = self.new_op(OpKind::ClusterCreate, &c.name, req.size, steps);
            (op, vms.into_iter().map(|v| v.def.name.into()).collect::<Vec<String>>())
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
        op.phase(OpPhase::PrepareImages);
        let t = Instant::now();
        let prepared = futures::future::join_all(mine.iter().map(|n| self.prepare(n))).await;
        op.step(OpStage::Prepare, t);
        // The hosts' network devices are set before the guests boot.
        self.sync_networks().await;
        op.phase(OpPhase::Execute);
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
        op.step(OpStage::Execute, t);
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
                OpStep { name: OpStage::Configure, ms: configure_ms },
                OpStep { name: OpStage::Place, ms: place_ms },
            ];
            let op = self.new_op(OpKind::ClusterScale, name, add, steps);
            let me = self.clone();
            let h = op.clone();
            let cname = name.to_string();
            tokio::spawn(
                async move { me.run_deploy(h, cname, vms.into_iter().map(|v| v.def.name.into()).collect()).await },
            );
            return self.operation(&op.id);
        }
        let victims: Vec<Vm> = members.into_iter().rev().take((have - size) as usize).collect();
        c.size = size;
        let mut ops = vec![CLUSTERS.put_op(&c.name, &c).map_err(store_err)?];
        for v in &victims {
            let mut v = v.clone();
            v.pending = Some(Pending::Delete);
            v.state = VmState::Deleting;
            v.usage = None;
            ops.push(VMS.put_op(&v.def.name, &v).map_err(store_err)?);
        }
        self.store.apply(ops).map_err(store_err)?;
        let op = self.new_op(OpKind::ClusterScale, name, victims.len() as u32, vec![]);
        self.spawn_removals(
            op.clone(),
            name.to_string(),
            victims.into_iter().map(|v| v.def.name.into()).collect(),
            None,
        );
        self.operation(&op.id)
    }

    /// Removes VMs in parallel under an operation; then sets the cluster's state if given.
    fn spawn_removals(self: &Arc<Self>, op: OpHandle, cluster: String, names: Vec<String>, then: Option<ClusterState>) {
        let me = self.clone();
        tokio::spawn(async move {
            op.phase(OpPhase::Remove);
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
            op.step(OpStage::Remove, t);
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
        let mut ops = vec![CLUSTERS.put_op(&c.name, &c).map_err(store_err)?];
        for v in &members {
            let mut v = v.clone();
            v.pending = Some(Pending::Delete);
            v.usage = None;
            ops.push(VMS.put_op(&v.def.name, &v).map_err(store_err)?);
        }
        self.store.apply(ops).map_err(store_err)?;
        let op = self.new_op(OpKind::ClusterDelete, name, members.len() as u32, vec![]);
        self.spawn_removals(
            op.clone(),
            name.to_string(),
            members.into_iter().map(|v| v.def.name.into()).collect(),
            Some(ClusterState::Deleting),
        );
        self.operation(&op.id)
    }

    /// Forgets clusters being deleted whose members are all gone.
    pub(crate) fn finish_cluster_deletes(&self) {
        let Ok(all) = CLUSTERS.list(&*self.store) else { return };
        for c in all.into_iter().filter(|c| c.state == ClusterState::Deleting) {
            if self.members(&c.name).is_ok_and(|m| m.is_empty()) {
                // The cluster goes with the addresses its hosts used for tunnels.
                let Ok(mut ops) = self.free_tunnels(&c.name) else { continue };
                ops.push(CLUSTERS.delete_op(&c.name));
                if self.store.apply(ops).is_ok() {
                    self.event("cluster.deleted", &c.name, "all members removed");
                }
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
        self.ensure_template(to, &vm.def.template).await?;
        let src = self.agent(&from)?;
        let st = self.agent(to)?.import(&vm.def, src.url()).await?;
        vm.host = to.to_string();
        vm.disk = Some(st.disk.clone());
        self.put_vm(&vm)?;
        if let Err(e) = src.delete_copy(name, &vm.def.uuid).await {
            tracing::warn!("removing the old copy of {name} from {from}: {}", e.message);
        }
        self.event("vm.moved", name, format!("moved from {from} to {to} in {} ms", started.elapsed().as_millis()));
        Ok(())
    }

    fn set_cluster_state(&self, name: &str, s: ClusterState) -> Result<(), ApiError> {
        let mut c = self.cluster(name)?;
        c.state = s;
        CLUSTERS.put(&*self.store, name, &c).map_err(store_err)
    }

    /// Suspends (memory to disk, resources released) or resumes every member in parallel.
    pub async fn suspend_or_resume_cluster(self: &Arc<Self>, name: &str, suspend: bool) -> Result<Operation, ApiError> {
        let (from, during, to, action, kind) = if suspend {
            (
                ClusterState::Active,
                ClusterState::Suspending,
                ClusterState::Suspended,
                VmAction::Suspend,
                OpKind::ClusterSuspend,
            )
        } else {
            (
                ClusterState::Suspended,
                ClusterState::Resuming,
                ClusterState::Active,
                VmAction::Resume,
                OpKind::ClusterResume,
            )
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
            h.phase(if suspend { OpPhase::SaveToDisk } else { OpPhase::Restore });
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
                        (true, true) => me.vm_action(&m.def.name, action).await.map(|_| ()),
                        (true, false) => me.resume_member(&m.def.name).await,
                    };
                    if let Err(e) = &r {
                        h.message(format!("{}: {}", m.def.name, e.message));
                    }
                    h.tick();
                    r.is_ok()
                }
            }))
            .await;
            h.step(if suspend { OpStage::Suspend } else { OpStage::Resume }, t);
            let ok = res.iter().all(|r| *r);
            let _ = me.set_cluster_state(&cname, if ok { to } else { from });
            me.finish_op(&h, &cname, ok);
        });
        self.operation(&op.id)
    }
}
