//! Anti-spoofing on the host's bridges: a VM may send only from its own MAC and IPv4 address
//! (also in ARP). The agent writes the whole `bridge corral` nftables table from its VM list
//! each time that list changes, atomically (`nft -f`), so the rules never drift from the VMs.

/// One VM NIC to filter: its tap, MAC and IPv4 address. Typed values: nothing but a MAC and an
/// address can reach the script (a string could carry a newline and more commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: corral_api::types::Mac,
    pub ip: std::net::Ipv4Addr,
}

/// The nftables script for these NICs.
pub fn ruleset(nics: &[Nic]) -> String {
    let mut s = String::from("table bridge corral\ndelete table bridge corral\ntable bridge corral {\n");
    s.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for n in nics {
        s.push_str(&format!("    iifname \"{}\" ether saddr != {} drop\n", n.tap, n.mac));
        s.push_str(&format!("    iifname \"{}\" ether type ip ip saddr != {} drop\n", n.tap, n.ip));
        s.push_str(&format!("    iifname \"{}\" ether type arp arp saddr ip != {} drop\n", n.tap, n.ip));
        s.push_str(&format!("    iifname \"{}\" ether type arp arp saddr ether != {} drop\n", n.tap, n.mac));
    }
    s.push_str("  }\n}\n");
    s
}

/// Installs the rules (replacing the previous ones).
pub async fn apply(nics: &[Nic]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset(nics).as_bytes()).await.map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft refused the anti-spoofing rules: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pin_mac_and_ip_per_tap() {
        let r = ruleset(&[Nic {
            tap: "ct1".into(),
            mac: "02:00:00:00:00:01".parse().expect("MAC"),
            ip: std::net::Ipv4Addr::new(100, 64, 0, 2),
        }]);
        assert!(r.contains("iifname \"ct1\" ether saddr != 02:00:00:00:00:01 drop"));
        assert!(r.contains("ip saddr != 100.64.0.2 drop"));
        assert!(r.contains("arp saddr ip != 100.64.0.2 drop"));
        assert!(r.starts_with("table bridge corral\ndelete table bridge corral\n"));
    }
}
