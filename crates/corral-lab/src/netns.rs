//! The lab's network plumbing: bridges, network namespaces and veth pairs, made and removed
//! with `ip`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::state::LabState;

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

pub(crate) fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Makes the lab's devices: the underlay and provider bridges, and for each host its
/// namespace, joined to them by `eth0` and `eth1`. `gw` is the underlay bridge's address.
pub(crate) fn create(s: &LabState, gw: &str) -> Result<()> {
    // Underlay bridge in the root namespace, where the controller and the CLI are.
    ip(&["link", "add", &s.bridge, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{gw}/24"), "dev", &s.bridge])?;
    ip(&["link", "set", &s.bridge, "up"])?;
    ip(&["link", "add", &s.provider_bridge, "type", "bridge"])?;
    ip(&["link", "set", &s.provider_bridge, "up"])?;
    for h in &s.hosts {
        ip(&["netns", "add", &h.netns])?;
        ip(&["link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", &h.netns])?;
        ip(&["link", "set", &h.veth, "master", &s.bridge, "up"])?;
        ip(&["-n", &h.netns, "addr", "add", &format!("{}/24", h.ip), "dev", "eth0"])?;
        ip(&["-n", &h.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &h.netns, "link", "set", "lo", "up"])?;
        ip(&["link", "add", &h.provider_veth, "type", "veth", "peer", "name", "eth1", "netns", &h.netns])?;
        ip(&["link", "set", &h.provider_veth, "master", &s.provider_bridge, "up"])?;
        ip(&["-n", &h.netns, "link", "set", "eth1", "up"])?;
    }
    Ok(())
}

/// Removes the lab's namespaces and devices, going on past a failure so one stuck device
/// does not leave the rest behind. Returns what it could not remove.
pub(crate) fn remove(s: &LabState) -> Vec<String> {
    let mut errors = Vec::new();
    for h in &s.hosts {
        if netns_exists(&h.netns) {
            if let Err(e) = ip(&["netns", "delete", &h.netns]) {
                errors.push(e.to_string());
            }
        }
        // Deleting the namespace removes the veth pair, asynchronously: gone is fine.
        for v in [&h.veth, &h.provider_veth] {
            if !v.is_empty() && link_exists(v) && ip(&["link", "delete", v]).is_err() && link_exists(v) {
                errors.push(format!("cannot delete device {v}"));
            }
        }
    }
    for b in [&s.bridge, &s.provider_bridge] {
        if !b.is_empty() && link_exists(b) && ip(&["link", "delete", b]).is_err() && link_exists(b) {
            errors.push(format!("cannot delete bridge {b}"));
        }
    }
    errors
}
