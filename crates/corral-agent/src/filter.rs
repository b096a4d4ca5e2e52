//! The host's packet filter for guests, in two nftables tables written whole and atomically
//! (`nft -f`) from the agent's state each time it changes, one update at a time:
//!
//! - `bridge corral`: from a VM's tap only its own MAC with its own IPv4 address (and ARP for
//!   them) is forwarded; everything else from a tap is dropped (IPv6, 802.1Q-tagged frames,
//!   other addresses), as is every frame from a tap that has no rules yet. Nothing from a tap
//!   is delivered to the host itself, so a guest reaches no address of its host or the
//!   underlay.
//! - `inet corral`: VXLAN packets for a network are accepted only from the underlay addresses
//!   of the hosts the controller named as that network's peers.
//!
//! Every drop rule counts what it drops (`nft list table bridge corral`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// The UDP port of Corral's VXLAN tunnels.
pub const VXLAN_PORT: u16 = 4789;
/// Every VM tap's name starts with this (see `qemu::tap_name`).
const TAP_PREFIX: &str = "ct";

/// One VM NIC to filter: its tap, MAC and IPv4 address. Typed values: nothing but a MAC and an
/// address can reach the script (a string could carry a newline and more commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: corral_api::types::Mac,
    pub ip: std::net::Ipv4Addr,
}

/// The nftables script for these NICs and these networks' peers (VNI → underlay addresses).
pub fn ruleset(nics: &[Nic], peers: &BTreeMap<u32, Vec<Ipv4Addr>>) -> String {
    let mut s = String::from("table bridge corral\ndelete table bridge corral\ntable bridge corral {\n");
    s.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for n in nics {
        let (t, m, ip) = (&n.tap, &n.mac, &n.ip);
        s.push_str(&format!("    iifname \"{t}\" ether saddr {m} ether type ip ip saddr {ip} accept\n"));
        s.push_str(&format!(
            "    iifname \"{t}\" ether saddr {m} ether type arp arp saddr ether {m} arp saddr ip {ip} accept\n"
        ));
    }
    // Anything else from a guest: another address, IPv6, a tagged frame, a tap not known yet.
    s.push_str(&format!("    iifname \"{TAP_PREFIX}*\" counter drop\n"));
    s.push_str("  }\n");
    // Nothing from a guest reaches the host's own stack (its bridges carry no address).
    s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
    s.push_str(&format!("    iifname \"{TAP_PREFIX}*\" counter drop\n  }}\n}}\n"));

    s.push_str("table inet corral\ndelete table inet corral\ntable inet corral {\n");
    s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
    for (vni, from) in peers {
        // The VNI is the 24 bits after the VXLAN header's flags and reserved bytes.
        if from.is_empty() {
            s.push_str(&format!("    udp dport {VXLAN_PORT} @th,96,24 {vni} counter drop\n"));
        } else {
            let list = from.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ");
            s.push_str(&format!("    udp dport {VXLAN_PORT} @th,96,24 {vni} ip saddr != {{ {list} }} counter drop\n"));
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot run nft (install nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the guest filter: {0}")]
    Refused(String),
}

/// The filter of this host: the networks' peers it knows, and one update at a time (so an
/// older rule set is never installed after a newer one).
#[derive(Debug, Default)]
pub struct Filter {
    updating: tokio::sync::Mutex<()>,
    peers: Mutex<BTreeMap<u32, Vec<Ipv4Addr>>>,
    /// Where the peers are kept, so a restarted agent filters tunnels as before at once (the
    /// controller does not send a network again that has not changed).
    file: Option<std::path::PathBuf>,
}

impl Filter {
    /// The filter of the agent whose data directory is `data_dir`, with the networks' peers
    /// it recorded (none if the file is missing or unreadable: the controller sends them).
    pub fn load(data_dir: &std::path::Path) -> Self {
        let file = data_dir.join("network-peers.json");
        let peers = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { updating: Default::default(), peers: Mutex::new(peers), file: Some(file) }
    }

    /// Records the peers of overlay network `vni` (None: the network is gone from this host).
    pub fn set_peers(&self, vni: u32, peers: Option<Vec<Ipv4Addr>>) {
        let mut p = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers {
            Some(v) => p.insert(vni, v),
            None => p.remove(&vni),
        };
        if let Some(f) = &self.file {
            let tmp = f.with_extension("tmp");
            let saved = serde_json::to_vec(&*p)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|()| std::fs::rename(&tmp, f));
            if let Err(e) = saved {
                tracing::warn!("cannot record the networks' peers in {}: {e}", f.display());
            }
        }
    }

    /// Installs the rules for the NICs `nics` returns, replacing the previous ones. `nics` is
    /// read under the update lock, so the last update installed is of the latest state.
    pub async fn apply(&self, nics: impl FnOnce() -> Vec<Nic>) -> Result<(), FilterError> {
        use tokio::io::AsyncWriteExt;
        let _one = self.updating.lock().await;
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let script = ruleset(&nics(), &peers);
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(FilterError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(FilterError::Spawn)?;
        }
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| FilterError::Refused("nft did not finish within 30 s".into()))?
            .map_err(FilterError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(FilterError::Refused(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic() -> Nic {
        Nic { tap: "ct1".into(), mac: "02:00:00:00:00:01".parse().expect("MAC"), ip: Ipv4Addr::new(100, 64, 0, 2) }
    }

    #[test]
    fn a_tap_passes_only_its_own_mac_and_address_and_everything_else_is_dropped() {
        let r = ruleset(&[nic()], &BTreeMap::new());
        assert!(r.contains("iifname \"ct1\" ether saddr 02:00:00:00:00:01 ether type ip ip saddr 100.64.0.2 accept"));
        assert!(r.contains("arp saddr ether 02:00:00:00:00:01 arp saddr ip 100.64.0.2 accept"));
        // Default drop for every tap, after the accepts: IPv6, VLAN tags, other addresses.
        let accept = r.find("accept\n").unwrap_or(usize::MAX);
        let drop = r.find("iifname \"ct*\" counter drop").unwrap_or(0);
        assert!(accept < drop, "accepts come before the tap catch-all drop:\n{r}");
        assert!(!r.contains("ip6") && !r.contains("vlan"), "nothing lets IPv6 or tagged frames through:\n{r}");
        assert!(r.contains(
            "chain input {\n    type filter hook input priority 0; policy accept;\n    iifname \"ct*\" counter drop"
        ));
        assert!(r.starts_with("table bridge corral\ndelete table bridge corral\n"));
    }

    #[test]
    fn vxlan_is_accepted_only_from_the_networks_peers() {
        let peers =
            BTreeMap::from([(100, vec![Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 1, 3)]), (7, vec![])]);
        let r = ruleset(&[], &peers);
        assert!(r.contains("udp dport 4789 @th,96,24 100 ip saddr != { 198.18.1.2, 198.18.1.3 } counter drop"));
        assert!(
            r.contains("udp dport 4789 @th,96,24 7 counter drop"),
            "a network with no peer takes no tunnel traffic"
        );
        assert!(r.contains("table inet corral\ndelete table inet corral\n"));
    }

    #[test]
    fn the_networks_peers_survive_a_restart() {
        let d = tempfile::tempdir().expect("temporary directory");
        let f = Filter::load(d.path());
        f.set_peers(100, Some(vec![Ipv4Addr::new(198, 18, 1, 2)]));
        f.set_peers(7, Some(vec![]));
        f.set_peers(7, None);
        let again = Filter::load(d.path());
        let p = again.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(p, BTreeMap::from([(100, vec![Ipv4Addr::new(198, 18, 1, 2)])]));
    }

    #[tokio::test]
    async fn the_ruleset_is_valid_nftables() {
        // `nft -c` checks a script without installing it (it needs CAP_NET_ADMIN, which the
        // tests have: they run as root, as `make test` does).
        use tokio::io::AsyncWriteExt;
        let peers = BTreeMap::from([(100, vec![Ipv4Addr::new(198, 18, 1, 2)])]);
        let script = ruleset(&[nic()], &peers);
        let mut child = tokio::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft is installed by make test");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).await.expect("write");
        let out = child.wait_with_output().await.expect("nft");
        assert!(out.status.success(), "nft -c: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}
