//! IP address management: cluster subnets (chosen from a pool or given, never overlapping),
//! bridged ranges, and the free addresses handed to new members (the `ipam` table records
//! who holds each address).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use corral_api::cluster::Cluster;
use corral_api::types::Ipv4Cidr;
use corral_api::ApiError;

use crate::service::{store_err, Controller};
use crate::tables::{CLUSTERS, IPAM};

/// Where automatic cluster subnets come from (one /24 each).
const AUTO_POOL: &str = "100.64.0.0/16";

/// The store key of an address (`100.64.1.2/24` → `100.64.1.2`).
pub(crate) fn ipam_key(ip: &Ipv4Cidr) -> String {
    ip.addr().to_string()
}

/// Parses a bridged network's range `FIRST-LAST` within its provider network.
pub(crate) fn bridged_range(b: &corral_api::cluster::Bridged) -> Result<(Ipv4Net, Ipv4Addr, Ipv4Addr), String> {
    let (a, z) = b
        .range
        .split_once('-')
        .ok_or_else(|| format!("range {:?}: write FIRST-LAST, e.g. 198.19.100.10-198.19.100.50", b.range))?;
    let first: Ipv4Addr = a.trim().parse().map_err(|_| format!("range {:?}: {a:?} is not an IPv4 address", b.range))?;
    let last: Ipv4Addr = z.trim().parse().map_err(|_| format!("range {:?}: {z:?} is not an IPv4 address", b.range))?;
    let net = Ipv4Net::new(first, b.prefix)
        .map_err(|_| format!("prefix {} is not a valid IPv4 prefix length", b.prefix))?
        .trunc();
    if first > last {
        return Err(format!("range {:?}: the first address is after the last", b.range));
    }
    if !net.contains(&last) || first == net.network() || last == net.broadcast() {
        return Err(format!("range {:?} must lie inside {net}, without its network and broadcast addresses", b.range));
    }
    Ok((net, first, last))
}

/// Parses and checks a subnet: a network address with room for VMs.
pub(crate) fn parse_subnet(s: &str) -> Result<Ipv4Net, ApiError> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid subnet {s:?}: write an IPv4 network in CIDR form, e.g. 100.64.10.0/24"))
    })?;
    if net.network() != net.addr() {
        return Err(ApiError::bad_request(format!(
            "subnet {s} is not a network address: did you mean {}/{}?",
            net.network(),
            net.prefix_len()
        )));
    }
    if net.prefix_len() > 29 {
        return Err(ApiError::bad_request(format!("subnet {s} is too small: use a prefix of /29 or shorter")));
    }
    Ok(net)
}

/// Addresses VMs may get: all but the network, the gateway (the first) and the broadcast.
pub(crate) fn vm_addresses(net: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + '_ {
    net.hosts().skip(1)
}

fn room(net: &Ipv4Net) -> u64 {
    (1u64 << (32 - net.prefix_len())).saturating_sub(3)
}

impl Controller {
    /// Chooses a subnet for a new cluster, or checks the one given against the others.
    pub(crate) fn choose_subnet(&self, given: Option<&str>, size: u32) -> Result<Ipv4Net, ApiError> {
        let clusters: Vec<Cluster> = CLUSTERS.list(&*self.store).map_err(store_err)?;
        let used: Vec<(String, Ipv4Net)> =
            clusters.iter().filter_map(|c| c.subnet.parse::<Ipv4Net>().ok().map(|n| (c.name.clone(), n))).collect();
        let overlaps = |n: &Ipv4Net| used.iter().find(|(_, u)| u.contains(n) || n.contains(u)).map(|(c, _)| c.clone());
        let net = match given {
            Some(s) => {
                let n = parse_subnet(s)?;
                if let Some(c) = overlaps(&n) {
                    return Err(ApiError::conflict(format!(
                        "subnet {s} overlaps the subnet of cluster {c:?}: choose another"
                    )));
                }
                n
            }
            None => {
                let pool: Ipv4Net = AUTO_POOL.parse().map_err(|_| ApiError::internal("bad subnet pool"))?;
                pool.subnets(24)
                    .map_err(|_| ApiError::internal("bad subnet pool"))?
                    .find(|n| overlaps(n).is_none())
                    .ok_or_else(|| ApiError::no_capacity(format!("no free /24 left in {AUTO_POOL}: give --subnet")))?
            }
        };
        if u64::from(size) > room(&net) {
            return Err(ApiError::bad_request(format!(
                "subnet {net} has room for {} VMs but the cluster needs {size}: choose a larger subnet",
                room(&net)
            )));
        }
        Ok(net)
    }

    /// Free addresses of a subnet, lowest first.
    pub(crate) fn free_addresses(&self, c: &Cluster, net: &Ipv4Net, n: usize) -> Result<Vec<Ipv4Cidr>, ApiError> {
        self.free(c, net, n, false)
    }

    /// One free address of a subnet, the highest (tunnel addresses keep out of the members'
    /// way, which are given the lowest).
    pub(crate) fn free_address_from_top(&self, c: &Cluster, net: &Ipv4Net) -> Result<Ipv4Cidr, ApiError> {
        self.free(c, net, 1, true)?.pop().ok_or_else(|| ApiError::internal("no address chosen"))
    }

    fn free(&self, c: &Cluster, net: &Ipv4Net, n: usize, from_top: bool) -> Result<Vec<Ipv4Cidr>, ApiError> {
        let taken: BTreeSet<String> = IPAM.keys(&*self.store, "").map_err(store_err)?.into_iter().collect();
        let mut pool: Vec<Ipv4Addr> = match &c.profile.bridged {
            Some(b) => {
                let (_, first, last) = bridged_range(b).map_err(ApiError::bad_request)?;
                (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from).collect()
            }
            None => vm_addresses(net).collect(),
        };
        if from_top {
            pool.reverse();
        }
        let free: Vec<Ipv4Cidr> = pool
            .into_iter()
            .filter(|a| !taken.contains(&a.to_string()))
            .take(n)
            .map(|a| Ipv4Cidr::new(a, net.prefix_len()))
            .collect::<Result<_, _>>()
            .map_err(ApiError::internal)?;
        if free.len() < n {
            return Err(ApiError::no_capacity(format!(
                "subnet {net} is out of addresses: {} free, {n} needed; scale down or delete VMs first",
                free.len()
            )));
        }
        Ok(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_must_be_network_addresses_with_room() {
        assert!(parse_subnet("100.64.10.0/24").is_ok());
        let e = parse_subnet("100.64.10.5/24").err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("did you mean 100.64.10.0/24"), "{e}");
        assert!(parse_subnet("100.64.10.0/30").is_err());
        assert!(parse_subnet("banana").is_err());
        let n = parse_subnet("10.0.0.0/29").expect("valid");
        assert_eq!(room(&n), 5);
        let a: Vec<String> = vm_addresses(&n).map(|a| a.to_string()).collect();
        assert_eq!(a, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert_eq!(ipam_key(&"10.0.0.2/29".parse().expect("an address")), "10.0.0.2");
    }
}
