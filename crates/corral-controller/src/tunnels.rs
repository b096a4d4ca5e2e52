//! TCP tunnels into guests (`corral vm ssh`, `corral vm port-forward`): the controller checks
//! the VM can be reached (running, with an address on its cluster's network), gives the VM's
//! host an address of its own on that network (reserved in the subnet on first use, kept in
//! the `tunnels` table and in `ipam`, freed with the cluster), and asks the VM's agent for a
//! connection to the guest's port made from that address. The other hosts of the network
//! learn the address's MAC (see [`tunnel_macs`]), so a tunnel keeps working when its VM
//! migrates away from the host it was opened on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use corral_api::cluster::Cluster;
use corral_api::tunnel::{tunnel_mac, GuestPort};
use corral_api::types::{Ipv4Cidr, Mac};
use corral_api::{ApiError, VmState};

use crate::agents::AgentStream;
use crate::ipam::ipam_key;
use crate::service::{store_err, Controller};
use crate::tables::{CLUSTERS, IPAM, TUNNELS};

fn key(cluster: &str, host: &str) -> String {
    format!("{cluster}/{host}")
}

/// The tunnel MACs of cluster `cluster`'s hosts other than `except`, among `hosts`, with the
/// host each lives on: `tunnels` is the `tunnels` table.
pub(crate) fn tunnel_macs<'a>(
    tunnels: &'a [(String, Ipv4Cidr)],
    cluster: &'a str,
    hosts: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = (Mac, String)> + 'a {
    tunnels.iter().filter_map(move |(k, a)| {
        let (c, h) = k.split_once('/')?;
        (c == cluster && hosts(h)).then(|| (tunnel_mac(a.addr()), h.to_string()))
    })
}

impl Controller {
    /// Every tunnel address: `<cluster>/<host>` → address.
    pub(crate) fn tunnel_addresses(&self) -> Result<Vec<(String, Ipv4Cidr)>, ApiError> {
        TUNNELS.entries(&*self.store, "").map_err(store_err)
    }

    /// The tunnel addresses of one cluster: host → address.
    pub fn cluster_tunnels(&self, cluster: &str) -> Result<BTreeMap<String, Ipv4Addr>, ApiError> {
        Ok(TUNNELS
            .entries(&*self.store, &format!("{cluster}/"))
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, a)| Some((k.split_once('/')?.1.to_string(), a.addr())))
            .collect())
    }

    /// The address `host` uses on cluster `c`'s network, reserved on first use; true when it
    /// was reserved now.
    async fn tunnel_address(&self, c: &Cluster, host: &str) -> Result<(Ipv4Cidr, bool), ApiError> {
        let k = key(&c.name, host);
        if let Some(a) = TUNNELS.get(&*self.store, &k).map_err(store_err)? {
            return Ok((a, false));
        }
        // Addresses are handed out one placement at a time.
        let _p = self.placing.lock().await;
        if let Some(a) = TUNNELS.get(&*self.store, &k).map_err(store_err)? {
            return Ok((a, false));
        }
        let net = crate::ipam::parse_subnet(&c.subnet)?;
        let a = self.free_address_from_top(c, &net).map_err(|e| {
            ApiError::no_capacity(format!(
                "no address is free on cluster {}'s network for host {host} to reach its members: {}",
                c.name, e.message
            ))
        })?;
        let owner: corral_api::types::Name = c.name.parse().map_err(ApiError::internal)?;
        let ops =
            vec![TUNNELS.put_op(&k, &a).map_err(store_err)?, IPAM.put_op(&ipam_key(&a), &owner).map_err(store_err)?];
        self.store.apply(ops).map_err(store_err)?;
        self.event("network.tunnel", &c.name, format!("host {host} reaches the members from {a}"));
        Ok((a, true))
    }

    /// The store writes that free a deleted cluster's tunnel addresses.
    pub(crate) fn free_tunnels(&self, cluster: &str) -> Result<Vec<corral_store::Op>, ApiError> {
        let mut ops = Vec::new();
        for (k, a) in TUNNELS.entries(&*self.store, &format!("{cluster}/")).map_err(store_err)? {
            ops.push(TUNNELS.delete_op(&k));
            ops.push(IPAM.delete_op(&ipam_key(&a)));
        }
        Ok(ops)
    }

    /// Opens a TCP connection to `port` of running VM `name`, through its agent.
    pub async fn tunnel(self: &Arc<Self>, name: &str, port: GuestPort) -> Result<AgentStream, ApiError> {
        let vm = self.vm(name)?;
        if vm.state != VmState::Running {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is {}: a tunnel reaches only a running guest; start it first (`corral vm start {name}`)",
                vm.state
            )));
        }
        let no_network = || {
            ApiError::conflict(format!(
                "VM {name:?} has no address on a cluster network, so nothing can reach its port {port}: \
                 tunnels reach cluster members (create it with `corral cluster create` or `cluster scale`)"
            ))
        };
        let cluster = vm.cluster.clone().ok_or_else(no_network)?;
        if vm.def.ip.is_none() || vm.def.network.is_none() {
            return Err(no_network());
        }
        let c = CLUSTERS.get(&*self.store, &cluster).map_err(store_err)?.ok_or_else(no_network)?;
        let (via, new) = self.tunnel_address(&c, &vm.host).await?;
        if new {
            // The other hosts learn where the new address's MAC lives.
            let me = self.clone();
            tokio::spawn(async move { me.sync_networks().await });
        }
        self.agent(&vm.host)?.tcp(name, port, via).await
    }
}
