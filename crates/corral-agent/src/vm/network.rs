//! The VMs' place on the host's networks: their taps, the guest filter for their NICs, and the
//! peers each overlay network accepts VXLAN traffic from.

use super::{lock, Manager};
use crate::qemu;

impl Manager {
    /// Taps of the VMs running here on network `vni`.
    pub fn taps_on(&self, vni: u32) -> Vec<String> {
        lock(&self.vms)
            .values()
            .map(|e| e.snapshot())
            .filter(|r| r.pid.is_some() && r.def.network.is_some_and(|n| n.vni == vni))
            .map(|r| qemu::tap_name(&r.def))
            .collect()
    }

    /// Rewrites the guest filter for the NICs of the VMs that run here (a failure is logged:
    /// taps without rules stay closed, see [`crate::filter`]).
    pub async fn refresh_filter(&self) {
        if let Err(e) = self.install_filter().await {
            tracing::warn!("{e}");
        }
    }

    /// Installs the guest filter for the NICs of the VMs that run here now.
    pub(super) async fn install_filter(&self) -> Result<(), crate::filter::FilterError> {
        if self.s.net.is_none() {
            return Ok(());
        }
        self.filter
            .apply(|| {
                lock(&self.vms)
                    .values()
                    .map(|e| e.snapshot())
                    .filter(|r| r.state.has_process() && r.def.network.is_some())
                    .filter_map(|r| {
                        let ip = r.def.ip?.addr();
                        Some(crate::filter::Nic { tap: qemu::tap_name(&r.def), mac: r.def.mac, ip })
                    })
                    .collect()
            })
            .await
    }

    /// The peers of overlay network `vni` changed (None: it is gone from this host): VXLAN
    /// traffic is accepted from them only.
    pub async fn set_network_peers(&self, vni: u32, peers: Option<Vec<std::net::Ipv4Addr>>) {
        self.filter.set_peers(vni, peers);
        self.refresh_filter().await;
    }
}
