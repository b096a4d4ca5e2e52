//! Checked values of the API: a request is parsed into these types while it is deserialized,
//! so a bad value is refused at the API boundary (HTTP 422 naming the field) and nothing
//! unchecked reaches a path, a QEMU option, a kernel command line or a firewall rule.
//!
//! On the wire every one of them stays a string (`try_from = "String"`, `into = "String"`),
//! and sizes stay numbers with bounds ([`vcpus`], [`memory_mib`], [`disk_mib`]).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// A name users give to VMs, hosts, templates and clusters: a DNS label (see
/// [`validate_name`](crate::names::validate_name)). Safe as a file name, a hostname and in a
/// QEMU option: only `a-z`, `0-9` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !crate::names::is_valid_name(&s) {
            return Err(format!("invalid name {s:?}: {}", crate::names::NAME_RULE));
        }
        Ok(Self(s))
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for Name {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, o: &str) -> bool {
        self.0 == o
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, o: &&str) -> bool {
        self.0 == *o
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, o: &String) -> bool {
        &self.0 == o
    }
}

/// The MAC address of a VM's NIC: six bytes, unicast (a multicast or all-zero address cannot
/// be a NIC's). Parsed from `xx:xx:xx:xx:xx:xx` (either case); shown lower-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac([u8; 6]);

impl Mac {
    /// A MAC from its bytes, if it may be a NIC's (unicast, not all zero).
    pub fn from_bytes(b: [u8; 6]) -> Result<Self, String> {
        let m = Self(b);
        if b[0] & 1 == 1 {
            return Err(format!("invalid MAC {m}: it is a multicast address; a NIC needs a unicast one"));
        }
        if b == [0; 6] {
            return Err("invalid MAC 00:00:00:00:00:00: a NIC needs a unicast address".to_string());
        }
        Ok(m)
    }
    /// Its six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid MAC {s:?}: use six hexadecimal bytes separated by ':', like 02:00:00:00:00:01");
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in b.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Self::from_bytes(b)
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// An IPv4 address with its prefix length, like `100.64.10.5/24` (the prefix 1 to 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// An address with a prefix length of 1 to 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(1..=32).contains(&prefix) {
            return Err(format!("invalid prefix length /{prefix} of {addr}: use 1 to 32"));
        }
        Ok(Self { addr, prefix })
    }
    /// The address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid IPv4 address {s:?}: use an address with its prefix length, like 100.64.10.5/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        // Ipv4Addr and u8 parsing accept nothing but digits and dots: no space, no newline.
        let addr = a.parse::<Ipv4Addr>().map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix = p.parse::<u8>().map_err(|_| bad())?;
        Self::new(addr, prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A guest workload spec (see [`validate_workload`](crate::validate_workload)): it goes on the
/// guest kernel's command line, so only the known forms pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Workload(String);

impl Workload {
    /// The spec as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A VM that was given no workload runs `idle`.
impl Default for Workload {
    fn default() -> Self {
        Self("idle".to_string())
    }
}

impl TryFrom<String> for Workload {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        crate::validate_workload(&s)?;
        Ok(Self(s))
    }
}

impl From<Workload> for String {
    fn from(w: Workload) -> String {
        w.0
    }
}

impl std::ops::Deref for Workload {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 256;
/// The least and most memory a VM may have, MiB (32 MiB to 4 TiB).
pub const MEMORY_MIB: std::ops::RangeInclusive<u64> = 32..=4 * 1024 * 1024;
/// The largest virtual disk, MiB (64 TiB).
pub const MAX_DISK_MIB: u64 = 64 * 1024 * 1024;

/// Checks a vCPU count: 1 to [`MAX_VCPUS`].
pub fn check_vcpus(n: u32) -> Result<u32, String> {
    if (1..=MAX_VCPUS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("invalid vCPU count {n}: use 1 to {MAX_VCPUS}"))
    }
}

/// Checks a memory size: [`MEMORY_MIB`].
pub fn check_memory_mib(n: u64) -> Result<u64, String> {
    if MEMORY_MIB.contains(&n) {
        Ok(n)
    } else {
        Err(format!("invalid memory size {n} MiB: use {} to {} MiB", MEMORY_MIB.start(), MEMORY_MIB.end()))
    }
}

/// Checks a disk size: 1 to [`MAX_DISK_MIB`].
pub fn check_disk_mib(n: u64) -> Result<u64, String> {
    if (1..=MAX_DISK_MIB).contains(&n) {
        Ok(n)
    } else {
        Err(format!("invalid disk size {n} MiB: use 1 to {MAX_DISK_MIB} MiB"))
    }
}

/// serde `deserialize_with` for a vCPU count.
pub fn vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    check_vcpus(u32::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for a memory size in MiB.
pub fn memory_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    check_memory_mib(u64::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for an optional vCPU count.
pub fn opt_vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)?.map(check_vcpus).transpose().map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for an optional memory size in MiB.
pub fn opt_memory_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)?.map(check_memory_mib).transpose().map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for an optional disk size in MiB.
pub fn disk_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)?.map(check_disk_mib).transpose().map_err(serde::de::Error::custom)
}

/// An agent's base URL, as one agent is told where to fetch a VM from: `http://` or
/// `https://` and a host (and port), nothing else a URL may hold (no user, query or fragment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentUrl(String);

impl AgentUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = url::Url::parse(&s).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
        });
        if ok {
            Ok(Self(s))
        } else {
            Err(format!("invalid agent URL {s:?}: use http://HOST:PORT (the agent holding the VM)"))
        }
    }
}

impl FromStr for AgentUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<AgentUrl> for String {
    fn from(u: AgentUrl) -> String {
        u.0
    }
}

impl fmt::Display for AgentUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_nothing_else() {
        for ok in ["web1", "a", "db-2", &"x".repeat(63)] {
            let n: Name = ok.parse().expect(ok);
            assert_eq!(n, ok);
            assert_eq!(n.to_string(), ok);
        }
        for bad in ["/", "../x", "a;touch /tmp/x;b", "", &"x".repeat(64), "a/b", "a\nb", "-a", "A", "a b", ".."] {
            let e = bad.parse::<Name>().expect_err(bad);
            assert!(e.starts_with("invalid name"), "{e}");
            assert!(e.contains("lower-case letters"), "{e}");
        }
    }

    #[test]
    fn a_bad_name_is_refused_while_deserializing_and_the_wire_stays_a_string() {
        assert!(serde_json::from_str::<Name>("\"../x\"").is_err());
        let n: Name = serde_json::from_str("\"web1\"").expect("valid");
        assert_eq!(serde_json::to_string(&n).expect("serializes"), "\"web1\"");
    }

    #[test]
    fn macs_are_six_unicast_bytes_shown_canonically() {
        let m: Mac = "02:00:00:00:00:01".parse().expect("valid");
        assert_eq!(m.bytes(), [2, 0, 0, 0, 0, 1]);
        let up: Mac = "02:AB:cd:00:00:01".parse().expect("either case");
        assert_eq!(up.to_string(), "02:ab:cd:00:00:01");
        assert_eq!(serde_json::to_string(&up).expect("serializes"), "\"02:ab:cd:00:00:01\"");
        for bad in [
            "02:00:00:00:00:01,romfile=/etc/shadow",
            "02:00:00:00:00:01\nadd rule",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "02-00-00-00-00-01",
            "0x:00:00:00:00:01",
            "+2:00:00:00:00:01",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        // Multicast and broadcast cannot be a NIC's, nor all zeros.
        for bad in ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "03:00:00:00:00:01", "00:00:00:00:00:00"] {
            let e = bad.parse::<Mac>().expect_err(bad);
            assert!(e.contains("unicast"), "{e}");
        }
    }

    #[test]
    fn ipv4_addresses_carry_a_prefix_and_nothing_else() {
        let c: Ipv4Cidr = "100.64.10.5/24".parse().expect("valid");
        assert_eq!(c.addr(), Ipv4Addr::new(100, 64, 10, 5));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.to_string(), "100.64.10.5/24");
        for bad in [
            "10.0.0.1\nadd rule",
            "10.0.0.1/24\nadd rule bridge corral forward accept",
            "10.0.0.1/33",
            "10.0.0.1/0",
            "10.0.0.1",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0.1/ 8",
            " 10.0.0.1/8",
            "10.0.0.256/8",
            "::1/128",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Ipv4Cidr>("\"10.0.0.1\\nadd rule\"").is_err());
    }

    #[test]
    fn workloads_are_known_forms() {
        for ok in ["idle", "cpu", "dirty:64", "dirty:64:10"] {
            assert!(Workload::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in ["idle init=/bin/sh", "cpu\n", "", "dirty:", "dirty:1:2:3"] {
            assert!(Workload::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(check_vcpus(1).is_ok() && check_vcpus(256).is_ok());
        assert!(check_vcpus(0).is_err() && check_vcpus(257).is_err());
        assert!(check_memory_mib(32).is_ok() && check_memory_mib(31).is_err());
        assert!(check_memory_mib(u64::MAX).is_err());
        assert!(check_disk_mib(0).is_err() && check_disk_mib(1024).is_ok() && check_disk_mib(u64::MAX).is_err());

        #[derive(Debug, Deserialize)]
        struct S {
            #[serde(deserialize_with = "vcpus")]
            _v: u32,
        }
        let e = serde_json::from_str::<S>(r#"{"_v": 1000}"#).expect_err("too many");
        assert!(e.to_string().contains("invalid vCPU count 1000"), "{e}");
    }
}
