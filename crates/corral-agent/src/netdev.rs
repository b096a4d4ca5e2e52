//! The host side of virtual networks, through netlink (rtnetlink): per network a Linux bridge
//! (`cbr<VNI>`) and a VXLAN device (`cvx<VNI>`, no learning, no multicast) attached to it; VM
//! taps attached to the bridge; and the VXLAN forwarding database kept exactly as the
//! controller says: one all-zero entry per peer host (the flood list, for broadcast such as
//! ARP) and one entry per remote VM's MAC.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan};

use corral_api::agent::NetworkSpec;
use corral_api::types::{Ipv4Cidr, Mac};

use crate::filter::VXLAN_PORT;

/// Netlink failures, with the device they concern.
#[derive(Debug, thiserror::Error)]
#[error("network device {device}: {message}")]
pub struct NetError {
    pub device: String,
    pub message: String,
}

fn err(device: &str, e: impl std::fmt::Display) -> NetError {
    NetError { device: device.to_string(), message: e.to_string() }
}

/// Turns IPv6 off on one of Corral's devices (no link-local address, no neighbour discovery
/// answered by the host there). `name` is one of the names this module or QEMU's tap naming
/// makes, never a caller's string.
fn no_ipv6(name: &str) {
    let p = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::path::Path::new(&p).exists() {
        if let Err(e) = std::fs::write(&p, "1") {
            tracing::warn!("cannot turn IPv6 off on {name}: {e}");
        }
    }
}

pub fn bridge_name(vni: u32) -> String {
    format!("cbr{vni}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("cvx{vni}")
}

/// The bridge port of a network's tunnel end (see [`crate::tunnel`]); not `ct...`, which the
/// guest filter treats as a VM's tap.
pub fn tunnel_port_name(vni: u32) -> String {
    format!("cgw{vni}")
}

/// The other end of that veth pair, inside the tunnel's network namespace.
pub fn tunnel_peer_name(vni: u32) -> String {
    format!("cgp{vni}")
}

/// The VLAN device of a bridged network.
pub fn vlan_name(id: u32) -> String {
    format!("cvl{id}")
}

/// The host's netlink handle.
#[derive(Debug, Clone)]
pub struct Net {
    h: Handle,
}

impl Net {
    /// Opens a netlink connection in this process's network namespace.
    pub fn open() -> Result<Self, NetError> {
        let (conn, h, _) = rtnetlink::new_connection().map_err(|e| err("netlink", e))?;
        tokio::spawn(conn);
        Ok(Self { h })
    }

    /// Index of a device, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(l) => Ok(l.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(name, e)),
        }
    }

    /// Makes the network's bridge and VXLAN device exist, up, with the MTU; then sets the
    /// forwarding database to exactly what `spec` says.
    pub async fn ensure(&self, spec: &NetworkSpec, local: Ipv4Addr) -> Result<(), NetError> {
        let br = bridge_name(spec.vni);
        if let Some(up) = &spec.uplink {
            return self.ensure_bridged(spec, up).await;
        }
        let br_idx = self.ensure_bridge(spec.vni, spec.mtu).await?;
        let vx = vxlan_name(spec.vni);
        let vx_idx = match self.index(&vx).await? {
            Some(i) => i,
            None => {
                let msg =
                    LinkVxlan::new(&vx, spec.vni).local(local).port(VXLAN_PORT).learning(false).mtu(spec.mtu).build();
                self.h.link().add(msg).execute().await.map_err(|e| err(&vx, e))?;
                self.index(&vx).await?.ok_or_else(|| err(&vx, "created but not found"))?
            }
        };
        let set = LinkUnspec::new_with_index(vx_idx).controller(br_idx).mtu(spec.mtu).up().build();
        self.h.link().set(set).execute().await.map_err(|e| err(&vx, e))?;
        let _ = br;
        self.set_fdb(&vx, vx_idx, spec).await
    }

    /// A bridged (provider) network: the bridge joins a host interface, or a VLAN of it, so
    /// its VMs appear on that network as individual hosts. The interface must exist.
    async fn ensure_bridged(&self, spec: &NetworkSpec, up: &corral_api::agent::Uplink) -> Result<(), NetError> {
        let parent =
            self.index(&up.interface).await?.ok_or_else(|| err(&up.interface, "this host has no such interface"))?;
        let br_idx = self.ensure_bridge(spec.vni, spec.mtu).await?;
        let port = match up.vlan {
            None => parent,
            Some(vlan) => {
                let name = vlan_name(spec.vni);
                match self.index(&name).await? {
                    Some(i) => i,
                    None => {
                        let msg = LinkVlan::new(&name, parent, vlan).mtu(spec.mtu).build();
                        self.h.link().add(msg).execute().await.map_err(|e| err(&name, e))?;
                        self.index(&name).await?.ok_or_else(|| err(&name, "created but not found"))?
                    }
                }
            }
        };
        let set = LinkUnspec::new_with_index(port).controller(br_idx).up().build();
        self.h.link().set(set).execute().await.map_err(|e| err(&up.interface, e))
    }

    /// The host's own interfaces (not Corral's devices, not loopback).
    pub fn interfaces() -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n != "lo" && !["cbr", "cvx", "cvl", "ct", "cgw", "cgp"].iter().any(|p| n.starts_with(p)))
            .collect();
        out.sort();
        out
    }

    /// Makes the bridge of a network exist (up, with the MTU); returns its index.
    pub async fn ensure_bridge(&self, vni: u32, mtu: u32) -> Result<u32, NetError> {
        let br = bridge_name(vni);
        let idx = match self.index(&br).await? {
            Some(i) => i,
            None => {
                self.h.link().add(LinkBridge::new(&br).mtu(mtu).build()).execute().await.map_err(|e| err(&br, e))?;
                self.index(&br).await?.ok_or_else(|| err(&br, "created but not found"))?
            }
        };
        // No address on the bridge, IPv6 included: guests must not reach the host.
        no_ipv6(&br);
        self.h
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| err(&br, e))?;
        Ok(idx)
    }

    /// Attaches a VM's tap to its network's bridge, with the network's MTU, and brings it up.
    pub async fn attach(&self, tap: &str, vni: u32, mtu: u32) -> Result<(), NetError> {
        let br_idx = self.ensure_bridge(vni, mtu).await?;
        let tap_idx = self.index(tap).await?.ok_or_else(|| err(tap, "no such tap (QEMU did not create it)"))?;
        no_ipv6(tap);
        let set = LinkUnspec::new_with_index(tap_idx).controller(br_idx).mtu(mtu).up().build();
        self.h.link().set(set).execute().await.map_err(|e| err(tap, e))
    }

    /// Opens a netlink connection in the network namespace `ns` (a thread enters it to make
    /// the socket, which stays there).
    pub fn open_in(ns: &std::fs::File) -> Result<Self, NetError> {
        let rt = tokio::runtime::Handle::current();
        let ns = ns.try_clone().map_err(|e| err("netns", e))?;
        let made = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err("netns", e))?;
            let _rt = rt.enter();
            rtnetlink::new_connection().map_err(|e| err("netlink", e))
        })
        .join()
        .map_err(|_| err("netns", "the thread entering the namespace panicked"))?;
        let (conn, h, _) = made?;
        tokio::spawn(conn);
        Ok(Self { h })
    }

    /// Makes a veth pair for a network's tunnel end: `cgw<VNI>` a port of the network's bridge
    /// (up, the network's MTU, no IPv6), its peer `cgp<VNI>` with MAC `mac` moved into the
    /// network namespace `ns`. A pair left from before is replaced.
    pub async fn tunnel_veth(&self, vni: u32, mtu: u32, mac: Mac, ns: &std::fs::File) -> Result<(), NetError> {
        use std::os::fd::AsRawFd;
        let (port, peer) = (tunnel_port_name(vni), tunnel_peer_name(vni));
        self.remove_tunnel_veth(vni).await?;
        let br_idx = self.ensure_bridge(vni, mtu).await?;
        self.h.link().add(LinkVeth::new(&port, &peer).mtu(mtu).build()).execute().await.map_err(|e| err(&port, e))?;
        let peer_idx = self.index(&peer).await?.ok_or_else(|| err(&peer, "created but not found"))?;
        let set = LinkUnspec::new_with_index(peer_idx)
            .address(mac.bytes().to_vec())
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        self.h.link().set(set).execute().await.map_err(|e| err(&peer, e))?;
        let port_idx = self.index(&port).await?.ok_or_else(|| err(&port, "created but not found"))?;
        no_ipv6(&port);
        let set = LinkUnspec::new_with_index(port_idx).controller(br_idx).mtu(mtu).up().build();
        self.h.link().set(set).execute().await.map_err(|e| err(&port, e))
    }

    /// Inside a tunnel's namespace (a `Net` opened there): loopback up, and `cgp<VNI>` up with
    /// the address `via`.
    pub async fn tunnel_address(&self, vni: u32, via: Ipv4Cidr) -> Result<(), NetError> {
        let peer = tunnel_peer_name(vni);
        if let Some(lo) = self.index("lo").await? {
            self.h.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(|e| err("lo", e))?;
        }
        let idx = self.index(&peer).await?.ok_or_else(|| err(&peer, "not in the tunnel's namespace"))?;
        self.h.address().add(idx, IpAddr::V4(via.addr()), via.prefix()).execute().await.map_err(|e| err(&peer, e))?;
        self.h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await.map_err(|e| err(&peer, e))
    }

    /// Removes a network's tunnel veth pair (gone already is fine).
    pub async fn remove_tunnel_veth(&self, vni: u32) -> Result<(), NetError> {
        let port = tunnel_port_name(vni);
        if let Some(i) = self.index(&port).await? {
            self.h.link().del(i).execute().await.map_err(|e| err(&port, e))?;
        }
        Ok(())
    }

    /// Removes a network's devices (gone already is fine).
    pub async fn remove(&self, vni: u32) -> Result<(), NetError> {
        self.remove_tunnel_veth(vni).await?;
        for name in [vxlan_name(vni), vlan_name(vni), bridge_name(vni)] {
            if let Some(i) = self.index(&name).await? {
                self.h.link().del(i).execute().await.map_err(|e| err(&name, e))?;
            }
        }
        Ok(())
    }

    /// VNIs of the networks present on this host.
    pub fn present() -> Vec<u32> {
        let mut out: Vec<u32> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("cbr")).and_then(|v| v.parse().ok()))
            .collect();
        out.sort_unstable();
        out
    }

    /// Current (MAC, remote) entries of a VXLAN device.
    async fn fdb(&self, vx_idx: u32) -> Result<BTreeSet<([u8; 6], Ipv4Addr)>, NetError> {
        let mut s = self.h.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let mut out = BTreeSet::new();
        while let Some(m) = s.try_next().await.map_err(|e| err("fdb", e))? {
            if m.header.ifindex != vx_idx {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    // Bridge-family messages carry the remote as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    _ => {}
                }
            }
            if let (Some(m), Some(d)) = (mac, dst) {
                out.insert((m, d));
            }
        }
        Ok(out)
    }

    fn fdb_message(vx_idx: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = vx_idx;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    /// Sets the forwarding database of a VXLAN device to the flood list and the MAC entries.
    async fn set_fdb(&self, vx: &str, vx_idx: u32, spec: &NetworkSpec) -> Result<(), NetError> {
        let mut want: BTreeSet<([u8; 6], Ipv4Addr)> = BTreeSet::new();
        for p in &spec.peers {
            want.insert(([0; 6], *p));
        }
        for (mac, ip) in &spec.macs {
            let m = mac.bytes();
            want.insert((m, *ip));
        }
        let have = self.fdb(vx_idx).await?;
        for (mac, dst) in have.difference(&want) {
            let msg = Self::fdb_message(vx_idx, *mac, *dst);
            self.h.neighbours().del(msg).execute().await.map_err(|e| err(vx, e))?;
        }
        for (mac, dst) in want.difference(&have) {
            // The all-zero MAC holds one entry per peer host (APPEND); a VM's MAC lives at one
            // host only (REPLACE, which also moves it when the VM moved).
            let msg = Self::fdb_message(vx_idx, *mac, *dst);
            let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
            let how = if *mac == [0; 6] { NLM_F_APPEND } else { NLM_F_REPLACE };
            req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | how;
            let mut h = self.h.clone();
            let mut resp = h.request(req).map_err(|e| err(vx, e))?;
            while let Some(m) = futures::StreamExt::next(&mut resp).await {
                if let NetlinkPayload::Error(e) = m.payload {
                    if e.code.is_some() {
                        return Err(err(vx, format!("adding forwarding entry for {}: {e}", IpAddr::V4(*dst))));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        assert!(bridge_name(16_777_215).len() <= 15);
        assert!(vxlan_name(16_777_215).len() <= 15);
    }
}
