//! TCP tunnels into a guest (`corral vm port-forward`, `corral vm ssh`): the guest port a
//! client asks for, and the address a VM's host takes on the VM's network to reach the guest
//! (one per cluster and host, kept in the cluster's record and reserved in its subnet).
//!
//! The tunnel's bytes travel as a websocket from the client through the controller to the
//! VM's agent, which connects to the guest from a network namespace of its own attached to the
//! VM's bridge: the host's own stack never joins a guest network.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::{Ipv4Cidr, Mac};

/// A TCP port in the guest: 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GuestPort(u16);

impl GuestPort {
    pub fn new(port: u16) -> Result<Self, String> {
        if port == 0 {
            return Err("invalid port 0: use a TCP port of the guest, 1 to 65535".into());
        }
        Ok(Self(port))
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for GuestPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid port {s:?}: use a TCP port of the guest, 1 to 65535");
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        Self::new(s.parse().map_err(|_| bad())?).map_err(|_| bad())
    }
}

impl TryFrom<String> for GuestPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<GuestPort> for String {
    fn from(p: GuestPort) -> String {
        p.to_string()
    }
}

impl fmt::Display for GuestPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The query of an agent's `GET /v1/vms/{name}/tcp/{port}`: the address (with the network's
/// prefix) its host uses on the VM's network.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TunnelQuery {
    /// Like `100.64.10.250/24`.
    #[param(value_type = String)]
    pub via: Ipv4Cidr,
}

/// The MAC of a host's tunnel address: locally administered (`06:` then the address's four
/// bytes, then `01`), so it is unique wherever the address is and never a VM's (theirs start
/// `02:`).
pub fn tunnel_mac(addr: Ipv4Addr) -> Mac {
    let o = addr.octets();
    Mac::from_bytes([0x06, o[0], o[1], o[2], o[3], 0x01]).expect("0x06 starts a unicast, non-zero MAC")
}

/// Whether `via` may carry a tunnel to a guest at `guest`: the same subnet, another address,
/// and neither the subnet's network nor its broadcast address.
pub fn check_via(via: Ipv4Cidr, guest: Ipv4Cidr) -> Result<(), String> {
    let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
    let (v, g) = (u32::from(via.addr()), u32::from(guest.addr()));
    let m = mask(via.prefix());
    let same = via.prefix() == guest.prefix() && v & m == g & m;
    let edge = via.prefix() < 31 && (v & !m == 0 || v & !m == !m);
    if !same || v == g || edge {
        return Err(format!(
            "tunnel address {via} cannot reach the guest's {guest}: it must be another host address of the same subnet"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_1_to_65535_and_digits_only() {
        assert_eq!("22".parse::<GuestPort>().unwrap().get(), 22);
        assert_eq!("65535".parse::<GuestPort>().unwrap().get(), 65535);
        for bad in ["0", "65536", "", "-1", "22 ", "+22", "0x16", "999999", "22;rm"] {
            let e = bad.parse::<GuestPort>().unwrap_err();
            assert!(e.contains("1 to 65535"), "{bad}: {e}");
        }
    }

    #[test]
    fn tunnel_macs_are_unicast_local_and_unlike_a_vms() {
        let m = tunnel_mac(Ipv4Addr::new(100, 64, 3, 250));
        assert_eq!(m.to_string(), "06:64:40:03:fa:01");
        assert_ne!(tunnel_mac(Ipv4Addr::new(100, 64, 3, 251)), m);
    }

    #[test]
    fn the_via_address_must_be_another_host_of_the_guests_subnet() {
        let c = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
        assert!(check_via(c("100.64.3.250/24"), c("100.64.3.2/24")).is_ok());
        for bad in ["100.64.4.250/24", "100.64.3.2/24", "100.64.3.250/16", "100.64.3.0/24", "100.64.3.255/24"] {
            assert!(check_via(c(bad), c("100.64.3.2/24")).is_err(), "{bad}");
        }
    }
}
