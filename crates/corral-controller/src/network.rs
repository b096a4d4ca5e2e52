//! Virtual networks: one overlay per cluster. The controller derives from the store, for every
//! host with members of a cluster, what that host's piece of the network must be (bridge and
//! VXLAN device, the other hosts to flood to, where each remote MAC lives) and pushes it to the
//! agent when it changes; hosts left with no member lose the devices. It also keeps every
//! member's `/etc/hosts` listing its peers by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use corral_api::agent::{NetworkSpec, Register};
use corral_api::cluster::{Cluster, ClusterState, Member, Network};
use corral_api::{ApiError, ExecRequest, Vm, VmState};

use crate::service::{lock, store_err, Controller};
use crate::tables::{CLUSTERS, HOSTS};

/// VNIs chosen automatically start here.
pub(crate) const FIRST_VNI: u32 = 100;
/// Largest VXLAN network identifier (24 bits).
pub(crate) const MAX_VNI: u32 = 16_777_215;
/// Guest MTU on the overlay: the underlay's 1500 less VXLAN's 50 bytes of headers.
pub(crate) const OVERLAY_MTU: u32 = 1450;
pub(crate) const MIN_MTU: u32 = 576;
/// MTU of the underlay network.
pub(crate) const UNDERLAY_MTU: u32 = 1500;

/// What was last pushed, so unchanged state is not sent again.
#[derive(Debug, Default)]
pub(crate) struct Pushed {
    nets: Mutex<HashMap<(String, u32), NetworkSpec>>,
    hosts_files: Mutex<HashMap<String, String>>,
}

/// A member counts for the network while it has (or is about to have) a QEMU process.
fn on_network(v: &Vm) -> bool {
    v.state.has_process()
        || v.state == VmState::Starting
        || matches!(v.pending, Some(corral_api::Pending::Create { start: true }))
}

/// The hosts a member's NIC is on: its own, and during a live migration the destination too.
fn network_hosts(v: &Vm) -> impl Iterator<Item = &str> {
    std::iter::once(v.host.as_str()).chain(v.migration.as_ref().map(|m| m.to.as_str()))
}

impl Controller {
    /// Chooses (or checks) the VNI and MTU of a new cluster.
    pub(crate) fn choose_vni_mtu(
        &self,
        vni: Option<u32>,
        mtu: Option<u32>,
        bridged: bool,
    ) -> Result<(u32, u32), ApiError> {
        let used: BTreeSet<u32> = CLUSTERS.list(&*self.store).map_err(store_err)?.iter().map(|c| c.vni).collect();
        let vni = match vni {
            Some(v) if v == 0 || v > MAX_VNI => {
                return Err(ApiError::bad_request(format!("VNI {v} is out of range: use 1 to {MAX_VNI}")))
            }
            Some(v) if used.contains(&v) => {
                return Err(ApiError::conflict(format!(
                    "VNI {v} is used by another cluster: choose another or leave --vni out"
                )))
            }
            Some(v) => v,
            None => {
                (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v)).ok_or_else(|| ApiError::no_capacity("no free VNI"))?
            }
        };
        // A bridged network carries frames as they are; an overlay pays 50 bytes of VXLAN.
        let max = if bridged { UNDERLAY_MTU } else { OVERLAY_MTU };
        let mtu = mtu.unwrap_or(max);
        if !(MIN_MTU..=max).contains(&mtu) {
            let why = if bridged { "the underlay's" } else { "the underlay's 1500 less 50 bytes of VXLAN headers" };
            return Err(ApiError::bad_request(format!("MTU {mtu} is out of range: use {MIN_MTU} to {max} ({why})")));
        }
        Ok((vni, mtu))
    }

    fn underlays(&self) -> Result<BTreeMap<String, Ipv4Addr>, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        Ok(regs.into_iter().filter_map(|r| r.underlay.map(|u| (r.name, u))).collect())
    }

    pub fn networks(&self) -> Result<Vec<Network>, ApiError> {
        let clusters: Vec<Cluster> = CLUSTERS.list(&*self.store).map_err(store_err)?;
        let vms = self.vms()?;
        Ok(clusters
            .into_iter()
            .filter(|c| c.vni != 0)
            .map(|c| {
                let mut members: Vec<&Vm> = vms.iter().filter(|v| v.cluster.as_deref() == Some(&c.name)).collect();
                members.sort_by_key(|v| v.index);
                let hosts: BTreeSet<String> =
                    members.iter().filter(|v| on_network(v)).flat_map(|v| network_hosts(v)).map(String::from).collect();
                let gateway = c
                    .subnet
                    .parse::<ipnet::Ipv4Net>()
                    .ok()
                    .and_then(|n| n.hosts().next())
                    .map(|g| g.to_string())
                    .unwrap_or_default();
                Network {
                    tunnels: self.cluster_tunnels(&c.name).unwrap_or_default(),
                    name: c.name.clone(),
                    vni: c.vni,
                    subnet: c.subnet.clone(),
                    gateway,
                    mtu: c.mtu,
                    hosts: hosts.into_iter().collect(),
                    members: members.into_iter().map(Member::from).collect(),
                }
            })
            .collect())
    }

    pub fn network(&self, name: &str) -> Result<Network, ApiError> {
        self.networks()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no network named {name:?}: see `corral network list`")))
    }

    /// Brings every host's part of every network in line with the store.
    pub(crate) async fn sync_networks(self: &Arc<Self>) {
        let (Ok(clusters), Ok(vms), Ok(under)) =
            (CLUSTERS.list(&*self.store).map_err(store_err), self.vms(), self.underlays())
        else {
            return;
        };
        let Ok(tunnels) = self.tunnel_addresses() else { return };
        let tunnel_hosts: Vec<(String, Vec<u32>)> =
            self.ready_hosts().into_iter().map(|h| (h.clone(), self.reported_tunnels(&h))).collect();
        let mut wanted: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut pushes = Vec::new();
        for c in clusters.iter().filter(|c| c.vni != 0) {
            let members: Vec<&Vm> =
                vms.iter().filter(|v| v.cluster.as_deref() == Some(&c.name) && on_network(v)).collect();
            let mut hosts: BTreeSet<&str> = members.iter().flat_map(|v| network_hosts(v)).collect();
            // Hosts with tunnel connections open into the network keep it while they last.
            hosts.extend(tunnel_hosts.iter().filter(|(_, vnis)| vnis.contains(&c.vni)).map(|(h, _)| h.as_str()));
            for h in &hosts {
                wanted.insert((h.to_string(), c.vni));
                let uplink = c
                    .profile
                    .bridged
                    .as_ref()
                    .map(|b| corral_api::agent::Uplink { interface: b.interface.clone(), vlan: b.vlan });
                let overlay = uplink.is_none();
                let spec = NetworkSpec {
                    uplink,
                    vni: c.vni,
                    mtu: c.mtu,
                    peers: hosts.iter().filter(|o| overlay && *o != h).filter_map(|o| under.get(*o).copied()).collect(),
                    macs: members
                        .iter()
                        .filter(|v| overlay && v.host != *h)
                        .filter_map(|v| Some((v.def.mac, *under.get(&v.host)?)))
                        // The other hosts' tunnel addresses, which reach members wherever
                        // they run.
                        .chain(
                            crate::tunnels::tunnel_macs(&tunnels, &c.name, |o| overlay && o != *h && hosts.contains(o))
                                .filter_map(|(m, o)| Some((m, *under.get(&o)?))),
                        )
                        .collect(),
                };
                let key = (h.to_string(), c.vni);
                if lock(&self.pushed.nets).get(&key) != Some(&spec) && self.host_ready(h) {
                    pushes.push((key, spec));
                }
            }
        }
        let results = futures::future::join_all(pushes.into_iter().map(|(key, spec)| async move {
            let r = match self.agent(&key.0) {
                Ok(a) => a.put_network(&spec).await,
                Err(e) => Err(e),
            };
            (key, spec, r)
        }))
        .await;
        for (key, spec, r) in results {
            match r {
                Ok(()) => {
                    lock(&self.pushed.nets).insert(key, spec);
                }
                Err(e) => tracing::warn!("network {} on {}: {}", key.1, key.0, e.message),
            }
        }
        // Devices of networks a host no longer has members of.
        for host in self.ready_hosts() {
            for vni in self.reported_networks(&host) {
                if wanted.contains(&(host.clone(), vni)) {
                    continue;
                }
                if let Ok(a) = self.agent(&host) {
                    match a.delete_network(vni).await {
                        Ok(()) => {
                            lock(&self.pushed.nets).remove(&(host.clone(), vni));
                            self.event("network.removed", &host, format!("VNI {vni}: no member left on this host"));
                        }
                        Err(e) => tracing::warn!("removing network {vni} from {host}: {}", e.message),
                    }
                }
            }
        }
    }

    /// Writes each running member's `/etc/hosts` with its cluster's members, when it changed.
    pub(crate) async fn sync_hosts_files(self: &Arc<Self>) {
        let (Ok(clusters), Ok(vms)) = (CLUSTERS.list(&*self.store), self.vms()) else { return };
        let mut jobs = Vec::new();
        for c in clusters.iter().filter(|c| c.state == ClusterState::Active) {
            let mut members: Vec<&Vm> = vms.iter().filter(|v| v.cluster.as_deref() == Some(&c.name)).collect();
            members.sort_by_key(|v| v.index);
            let mut content = String::from("127.0.0.1\tlocalhost\n");
            for m in &members {
                if let Some(ip) = m.def.ip.map(|i| i.addr()) {
                    content.push_str(&format!("{ip}\t{}\n", m.def.name));
                }
            }
            for m in members.iter().filter(|m| m.state == VmState::Running && !self.is_busy(&m.def.name)) {
                if lock(&self.pushed.hosts_files).get(m.def.name.as_str()) != Some(&content) {
                    jobs.push((m.def.name.to_string(), content.clone()));
                }
            }
        }
        let done = futures::future::join_all(jobs.into_iter().map(|(name, content)| async move {
            let req = ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "cat > /etc/hosts.new && mv /etc/hosts.new /etc/hosts".into()],
                stdin: Some(content.clone()),
                timeout_ms: Some(5000),
            };
            let ok = matches!(self.exec(&name, &req).await, Ok(r) if r.exit_code == 0);
            (name, content, ok)
        }))
        .await;
        for (name, content, ok) in done {
            if ok {
                lock(&self.pushed.hosts_files).insert(name, content);
            }
        }
    }

    /// Forgets what was pushed to a VM (it rebooted or moved, and needs everything again).
    pub(crate) fn forget_pushed(&self, vm: &str) {
        lock(&self.pushed.hosts_files).remove(vm);
    }
}
