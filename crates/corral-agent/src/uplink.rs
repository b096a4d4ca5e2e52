//! Which host interfaces bridged (provider) networks may join: only those the host's operator
//! named (`corral agent --provider-interfaces eth1,...`), never the underlay interface (the one
//! holding the agent's listen address, which carries the cluster's own traffic), and one
//! untagged bridged network per interface (a second would steal the interface from the first).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use corral_api::agent::Uplink;

/// Why a bridged network may not use an interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkError {
    #[error(
        "interface {interface} is not open to bridged networks on this host (allowed: {allowed}): \
         start its agent with --provider-interfaces {interface} to allow it"
    )]
    NotAllowed { interface: String, allowed: String },
    #[error(
        "interface {interface} carries this host's underlay ({address}, the agent's listen address): bridged \
         networks may not join it; give them another interface with --provider-interfaces"
    )]
    Underlay { interface: String, address: Ipv4Addr },
    #[error(
        "interface {interface} already carries an untagged bridged network (bridge {bridge}): one untagged \
         bridged network per interface; give this one a VLAN or another interface of --provider-interfaces"
    )]
    Taken { interface: String, bridge: String },
    #[error("--provider-interfaces: {0}")]
    BadName(String),
}

/// Checks a bridged network joining `up` through bridge `bridge`: `allowed` is
/// `--provider-interfaces`, `underlay` the underlay interface and address, `master` the bridge
/// the interface is a port of now, if any.
pub fn check(
    allowed: &[String],
    underlay: Option<(&str, Ipv4Addr)>,
    up: &Uplink,
    bridge: &str,
    master: Option<&str>,
) -> Result<(), UplinkError> {
    let interface = up.interface.clone();
    if let Some((name, address)) = underlay.filter(|(n, _)| *n == up.interface) {
        return Err(UplinkError::Underlay { interface: name.to_string(), address });
    }
    if !allowed.contains(&up.interface) {
        let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(",") };
        return Err(UplinkError::NotAllowed { interface, allowed });
    }
    if up.vlan.is_none() {
        if let Some(m) = master.filter(|m| *m != bridge) {
            return Err(UplinkError::Taken { interface, bridge: m.to_string() });
        }
    }
    Ok(())
}

/// Checks `--provider-interfaces` at start: valid names, none of them the underlay interface.
pub fn check_config(allowed: &[String], listen: SocketAddr) -> Result<(), UplinkError> {
    for i in allowed {
        corral_api::agent::check_interface(i).map_err(UplinkError::BadName)?;
    }
    if let IpAddr::V4(a) = listen.ip() {
        if let Some(name) = interface_of(a).filter(|n| allowed.contains(n)) {
            return Err(UplinkError::Underlay { interface: name, address: a });
        }
    }
    Ok(())
}

/// The interface holding `addr`, if any.
pub fn interface_of(addr: Ipv4Addr) -> Option<String> {
    if addr.is_unspecified() {
        return None;
    }
    nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
        let a = i.address?.as_sockaddr_in()?.ip();
        (a == addr).then_some(i.interface_name)
    })
}

/// The bridge (or bond) `interface` is a port of now, from sysfs.
pub fn master_of(interface: &str) -> Option<String> {
    corral_api::agent::check_interface(interface).ok()?;
    let target = std::fs::read_link(format!("/sys/class/net/{interface}/master")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(i: &str, vlan: Option<u16>) -> Uplink {
        Uplink { interface: i.into(), vlan }
    }

    #[test]
    fn only_allowed_interfaces_other_than_the_underlay_one_untagged_network_each() {
        let allowed = vec!["eth1".to_string(), "eth2".to_string()];
        let under = Some(("eth0", Ipv4Addr::new(198, 18, 202, 2)));
        assert_eq!(check(&allowed, under, &up("eth1", None), "cbr100", None), Ok(()));
        // Its own bridge again (a repeated PUT) is fine.
        assert_eq!(check(&allowed, under, &up("eth1", None), "cbr100", Some("cbr100")), Ok(()));
        let e = check(&allowed, under, &up("eth3", None), "cbr100", None).expect_err("not allowed");
        assert!(matches!(e, UplinkError::NotAllowed { .. }));
        assert!(e.to_string().contains("eth3") && e.to_string().contains("--provider-interfaces"), "{e}");
        let e = check(&[], under, &up("eth1", None), "cbr100", None).expect_err("none allowed");
        assert!(e.to_string().contains("allowed: none"), "{e}");
        let e = check(&["eth0".to_string()], under, &up("eth0", None), "cbr100", None).expect_err("underlay");
        assert!(matches!(e, UplinkError::Underlay { .. }), "{e}");
        assert!(e.to_string().contains("eth0") && e.to_string().contains("198.18.202.2"), "{e}");
        let e = check(&allowed, under, &up("eth1", None), "cbr101", Some("cbr100")).expect_err("taken");
        assert!(matches!(e, UplinkError::Taken { .. }) && e.to_string().contains("cbr100"), "{e}");
        // A tagged network on the same interface is another matter.
        assert_eq!(check(&allowed, under, &up("eth1", Some(10)), "cbr101", Some("cbr100")), Ok(()));
    }

    #[test]
    fn the_flag_refuses_bad_names_and_the_underlay() {
        let any: SocketAddr = "0.0.0.0:7701".parse().expect("addr");
        assert!(check_config(&["eth1".into()], any).is_ok());
        assert!(matches!(check_config(&["eth 1".into()], any), Err(UplinkError::BadName(_))));
        assert!(matches!(check_config(&["../x".into()], any), Err(UplinkError::BadName(_))));
        assert!(matches!(check_config(&["averyveryverylongname".into()], any), Err(UplinkError::BadName(_))));
        // Loopback holds 127.0.0.1 on every Linux host.
        let lo: SocketAddr = "127.0.0.1:7701".parse().expect("addr");
        assert!(matches!(check_config(&["lo".into()], lo), Err(UplinkError::Underlay { .. })));
    }
}
