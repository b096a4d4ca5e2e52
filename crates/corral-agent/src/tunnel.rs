//! The host's end of TCP tunnels into guests (`corral vm ssh`, `corral vm port-forward`).
//!
//! Per network, on first use: a network namespace of its own, holding one end (`cgp<VNI>`) of
//! a veth pair with the address the controller reserved for this host on the network, the
//! other end (`cgw<VNI>`) a port of the network's bridge. The agent connects to a guest's port
//! from there: a thread enters the namespace for the connect, and the socket stays in it. So
//! the host's own stack never joins a guest network, guest subnets may overlap the host's, and
//! the guest filter (which drops whatever a guest sends to the host) stays as it is.
//!
//! The namespace has no name: it lives while the agent holds it, and it and its veth pair go
//! when the agent ends (an agent that restarts makes them again on the next tunnel) or when
//! the network leaves the host.

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::tunnel::{check_via, tunnel_mac, GuestPort};
use corral_api::types::Ipv4Cidr;
use corral_api::ApiError;

use crate::netdev::{Net, NetError};

/// How long a connect to a guest may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot make the tunnel's network namespace: {0}")]
    Namespace(String),
    #[error("cannot make the tunnel's devices: {0}")]
    Device(#[from] NetError),
    #[error("the guest at {addr} refused a connection to port {port}: nothing listens there in the guest")]
    Refused { addr: SocketAddrV4, port: GuestPort },
    #[error("the guest at {addr} did not answer on port {port} within {} s (is it up, and does a firewall in the guest drop it?)", CONNECT_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddrV4, port: GuestPort },
    #[error("cannot connect to the guest at {addr}: {source}")]
    Connect { addr: SocketAddrV4, source: std::io::Error },
}

impl From<TunnelError> for ApiError {
    fn from(e: TunnelError) -> Self {
        match e {
            TunnelError::Refused { .. } => ApiError::conflict(e.to_string()),
            TunnelError::Timeout { .. } | TunnelError::Connect { .. } => ApiError::unavailable(e.to_string()),
            TunnelError::Namespace(_) | TunnelError::Device(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// One network's tunnel end.
struct End {
    ns: File,
    via: Ipv4Cidr,
    mtu: u32,
}

/// This host's tunnel ends, by VNI, and how many connections each carries.
#[derive(Default)]
pub struct Tunnels {
    ends: tokio::sync::Mutex<HashMap<u32, End>>,
    open: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One open tunnel connection, counted while it lives.
pub struct Open {
    vni: u32,
    open: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.vni) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.vni);
            }
        }
    }
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnels")
    }
}

/// A new, empty network namespace, held by the returned file.
fn new_namespace() -> Result<File, TunnelError> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the thread making it panicked".to_string())
    .and_then(|r| r)
    .map_err(TunnelError::Namespace)
}

/// Connects to `addr` from inside the namespace `ns`, within [`CONNECT_TIMEOUT`].
async fn connect_in(ns: File, addr: SocketAddrV4, port: GuestPort) -> Result<tokio::net::TcpStream, TunnelError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            .and_then(|()| std::net::TcpStream::connect_timeout(&SocketAddr::V4(addr), CONNECT_TIMEOUT));
        let _ = tx.send(r);
    });
    let std = match rx.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(match e.kind() {
                std::io::ErrorKind::ConnectionRefused => TunnelError::Refused { addr, port },
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TunnelError::Timeout { addr, port },
                _ => TunnelError::Connect { addr, source: e },
            })
        }
        Err(_) => return Err(TunnelError::Namespace("the connecting thread ended".into())),
    };
    std.set_nonblocking(true).map_err(|e| TunnelError::Connect { addr, source: e })?;
    let _ = std.set_nodelay(true);
    tokio::net::TcpStream::from_std(std).map_err(|e| TunnelError::Connect { addr, source: e })
}

impl Tunnels {
    /// Connects to port `port` of the guest at `guest` on network `vni` (MTU `mtu`), from
    /// this host's address `via` there; makes the network's tunnel end first if it has none
    /// (or one with another address, or its devices went away).
    pub async fn connect(
        &self,
        net: &Net,
        vni: u32,
        mtu: u32,
        via: Ipv4Cidr,
        guest: Ipv4Cidr,
        port: GuestPort,
    ) -> Result<(tokio::net::TcpStream, Open), ApiError> {
        check_via(via, guest).map_err(ApiError::invalid)?;
        let ns = {
            let mut ends = self.ends.lock().await;
            let port_there =
                net.index(&crate::netdev::tunnel_port_name(vni)).await.map_err(TunnelError::Device)?.is_some();
            match ends.get(&vni) {
                Some(e) if e.via == via && e.mtu == mtu && port_there => {}
                _ => {
                    ends.remove(&vni);
                    let ns = new_namespace()?;
                    net.tunnel_veth(vni, mtu, tunnel_mac(via.addr()), &ns).await.map_err(TunnelError::Device)?;
                    Net::open_in(&ns)
                        .map_err(TunnelError::Device)?
                        .tunnel_address(vni, via)
                        .await
                        .map_err(TunnelError::Device)?;
                    tracing::info!("tunnel end of network {vni} at {via}");
                    ends.insert(vni, End { ns, via, mtu });
                }
            }
            ends[&vni].ns.try_clone().map_err(|e| TunnelError::Namespace(e.to_string()))?
        };
        let tcp = connect_in(ns, SocketAddrV4::new(guest.addr(), port.get()), port).await?;
        *self.open.lock().unwrap_or_else(|p| p.into_inner()).entry(vni).or_default() += 1;
        Ok((tcp, Open { vni, open: self.open.clone() }))
    }

    /// VNIs of the networks with tunnel connections open (the controller keeps those
    /// networks on this host while they last).
    pub fn in_use(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.open.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Forgets network `vni`'s tunnel end (its namespace goes once no connection is left in
    /// it; its veth pair is removed with the network's devices).
    pub async fn forget(&self, vni: u32) {
        self.ends.lock().await.remove(&vni);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_network_is_in_use_while_any_of_its_connections_lives() {
        let t = Tunnels::default();
        let open = |vni| {
            *t.open.lock().unwrap().entry(vni).or_default() += 1;
            Open { vni, open: t.open.clone() }
        };
        let (a, b, c) = (open(100), open(100), open(7));
        assert_eq!(t.in_use(), [7, 100]);
        drop(a);
        drop(c);
        assert_eq!(t.in_use(), [100]);
        drop(b);
        assert!(t.in_use().is_empty());
    }
}
