//! What the controller and an agent say to each other: registration, heartbeats, and the full
//! definition of a VM the controller asks an agent to run.

use serde::{Deserialize, Serialize};

use crate::types::{Ipv4Cidr, Mac, Name, Workload};
use crate::{Accel, Capacity, HostUsage, VmState, VmUsage};

/// Everything an agent needs to create and run a VM. The controller assigns identity.
///
/// Every field is checked while it is deserialized (names are DNS labels, the MAC six unicast
/// bytes, the address an IPv4 address with prefix, sizes bounded), and an unknown field is
/// refused: an agent builds paths, QEMU options and firewall rules from these values. (The
/// agent also keeps this in its VM records, which a downgraded agent without a newer field
/// cannot read back.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    #[schema(value_type = String)]
    pub name: Name,
    pub uuid: uuid::Uuid,
    #[schema(value_type = String)]
    pub template: Name,
    #[serde(deserialize_with = "crate::types::vcpus")]
    pub vcpus: u32,
    #[serde(deserialize_with = "crate::types::memory_mib")]
    pub memory_mib: u64,
    #[schema(value_type = String)]
    pub mac: Mac,
    /// IPv4 address with prefix length, like `100.64.10.5/24`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Cidr>,
    #[schema(value_type = String)]
    pub workload: Workload,
    /// Virtual disk size, MiB, when larger than the template's.
    #[serde(default, deserialize_with = "crate::types::disk_mib")]
    pub disk_mib: Option<u64>,
    /// The virtual network the VM's NIC joins.
    #[serde(default)]
    pub network: Option<NetAttach>,
    /// Where its disk lives: on the host, or in the pool every host mounts.
    #[serde(default)]
    pub storage: crate::Storage,
    /// Its HA policy: a VM the controller may restart elsewhere is stopped when its host is
    /// isolated (fencing); one without HA never is.
    #[serde(default)]
    pub ha: crate::HaPolicy,
    /// The firmware it boots with, for an image that boots from its disk (none: the image's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<crate::image::Firmware>,
    /// SSH public keys cloud-init installs for the image's default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ssh_keys: Vec<crate::image::SshKey>,
    /// A cloud-config merged into its cloud-init user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub user_data: Option<crate::cloud_config::CloudConfig>,
}

/// Which virtual network a NIC joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetAttach {
    /// 1 to 16777215 (24 bits, as VXLAN).
    #[serde(deserialize_with = "vni")]
    pub vni: u32,
    /// 576 to 9216.
    #[serde(deserialize_with = "mtu")]
    pub mtu: u32,
}

/// The largest VNI (VXLAN's 24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

fn vni<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (1..=MAX_VNI).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!("invalid VNI {n}: use 1 to {MAX_VNI}")))
    }
}

fn mtu<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (576..=9216).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!("invalid MTU {n}: use 576 to 9216")))
    }
}

/// `PUT /v1/networks/{vni}` on an agent: a network as this host must have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(deserialize_with = "vni")]
    pub vni: u32,
    #[serde(deserialize_with = "mtu")]
    pub mtu: u32,
    /// Underlay addresses of the other hosts with members (the flood list).
    #[schema(value_type = Vec<String>)]
    pub peers: Vec<std::net::Ipv4Addr>,
    /// MAC of each VM on another host → that host's underlay address.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub macs: std::collections::BTreeMap<Mac, std::net::Ipv4Addr>,
    /// For a bridged (provider) network: the host interface (and VLAN) the bridge joins,
    /// instead of a VXLAN overlay.
    #[serde(default)]
    pub uplink: Option<Uplink>,
}

/// The host interface a bridged network joins, and its VLAN (none: untagged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// A Linux interface name: 1 to 15 characters, none of them `/`, `:`, blank or control.
    #[serde(deserialize_with = "interface")]
    pub interface: String,
    /// 1 to 4094.
    #[serde(default, deserialize_with = "vlan")]
    pub vlan: Option<u16>,
}

/// Checks a Linux network interface name (what the kernel accepts, less `:`).
pub fn check_interface(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes().all(|c| c.is_ascii_graphic() && c != b'/' && c != b':');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid interface name {s:?}: use 1-15 printable characters without '/', ':' or spaces"))
    }
}

fn interface<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_interface(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn vlan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match Option::<u16>::deserialize(d)? {
        Some(v) if !(1..=4094).contains(&v) => {
            Err(serde::de::Error::custom(format!("invalid VLAN {v}: use 1 to 4094, or none for untagged")))
        }
        v => Ok(v),
    }
}

/// `POST /v1/agents/register`: an agent announces itself (at start, and whenever the controller
/// answers a heartbeat with "unknown host").
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Register {
    pub name: String,
    /// Base URL the controller uses to reach this agent.
    pub url: String,
    pub accel: Accel,
    pub accel_note: String,
    pub capacity: Capacity,
    pub templates: Vec<TemplateInfo>,
    /// The host's underlay address, the end of its VXLAN tunnels.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub underlay: Option<std::net::Ipv4Addr>,
    /// The host's own network interfaces (candidates for bridged networks).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// The shared storage pool this host mounts (`--shared-dir`), if any.
    #[serde(default)]
    pub shared_dir: Option<String>,
}

/// A template as an agent holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TemplateInfo {
    pub name: String,
    pub size_bytes: u64,
    pub kernel_version: String,
    pub os: String,
    #[serde(default)]
    pub boot: crate::image::Boot,
    #[serde(default)]
    pub guest_agent: crate::image::GuestAgentKind,
}

/// The runtime status of one VM on an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VmStatus {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub state: VmState,
    #[serde(default)]
    pub error: Option<String>,
    /// Why its QEMU process ended, when it ended by itself or was fenced (not stopped by an
    /// operation): what the controller branches on; `error` says it in words.
    #[serde(default)]
    pub ended: Option<Ended>,
    #[serde(default)]
    pub boot_ms: Option<u64>,
    pub disk: String,
    /// Its root disk's size when grown past the template's, MiB.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub usage: VmUsage,
}

/// The controller's answer to a heartbeat: the agent's lease, renewed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    /// The lease runs this long from the heartbeat's sending; an agent that cannot renew it,
    /// and cannot reach a majority of its peers either (it is isolated), stops its HA VMs
    /// before it runs out (0: no lease, no self-fencing).
    pub lease_ms: u64,
    /// The controller has declared this host failed and restarted these VMs elsewhere: stop
    /// them now (the host's other VMs keep running).
    #[serde(default)]
    pub fence: Vec<uuid::Uuid>,
    /// The other hosts whose reachability tells this one whether it is isolated (a majority
    /// of them must be unreachable), and which the controller asks before it declares this
    /// host failed. The same list answers `/v1/probe` by host name.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// This host's VMs that the controller may restart elsewhere (HA VMs): the ones fencing
    /// stops. A VM without HA is never fenced.
    #[serde(default)]
    pub restartable: Vec<uuid::Uuid>,
}

/// Another host, as a peer of this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Peer {
    pub name: String,
    /// Its agent's base URL.
    pub url: String,
    /// Its underlay address, pinged when its agent does not answer.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub underlay: Option<std::net::Ipv4Addr>,
}

/// How long before its lease runs out an isolated agent stops its HA VMs.
pub fn fence_margin_ms(lease_ms: u64) -> u64 {
    (lease_ms / 4).max(2000)
}

/// An agent cut off from the controller stops its HA VMs only once it has also been out of
/// touch with a majority of its peers for this long: a controller outage is not isolation.
pub const ISOLATION_GRACE_MS: u64 = 2000;

/// `POST /v1/probe` on an agent: can this host reach one of its peers over the underlay? The
/// controller's second path for confirming a host failure. Only peers the controller named in
/// the lease are probed: an agent fetches no URL it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// The peer's host name.
    pub host: String,
}

/// What a probe found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeReply {
    pub reachable: bool,
    /// How (`agent answered`, `answers ping`) or why not.
    pub how: String,
}

/// `POST /v1/agents/{name}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    pub usage: HostUsage,
    pub vms: Vec<VmStatus>,
    /// VNIs of the virtual networks whose devices exist on the host.
    #[serde(default)]
    pub networks: Vec<u32>,
    /// VNIs of the networks with tunnel connections open from this host (`vm ssh`,
    /// `vm port-forward`): the host keeps such a network while they last, even with no
    /// member left on it, so a session survives its VM's migration away.
    #[serde(default)]
    pub tunnels: Vec<u32>,
}

/// Why a VM's QEMU process ended without an operation asking for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// It exited or was killed while the guest ran: the guest powered off or crashed, or
    /// someone killed the process. An HA VM is restarted.
    Exited,
    /// It exited before the guest was ready.
    BootFailed,
    /// This host fenced it (isolated, or declared failed): it runs elsewhere or will.
    Fenced,
}

/// `POST /v1/vms` on an agent: define a VM on this host, and start it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub def: VmDefinition,
    pub start: bool,
}

/// `POST /v1/vms/import` on an agent: take over a stopped or suspended VM from another host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub def: VmDefinition,
    /// Base URL of the agent that holds the VM now.
    #[schema(value_type = String)]
    pub source: crate::types::AgentUrl,
}

/// `POST /v1/templates/pull` on an agent: fetch this template from the controller's library.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    #[schema(value_type = String)]
    pub name: Name,
}

/// The query of `DELETE /v1/vms/{name}` on an agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete only if the VM has this UUID (protects a newer VM of the same name).
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    /// Leave its disk on shared storage (this copy is an orphan; the VM runs elsewhere).
    #[serde(default)]
    pub keep_shared: bool,
}

/// The query of `GET /v1/vms/{name}/console` on an agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// Bytes of the console log to skip.
    #[serde(default)]
    pub offset: u64,
}

/// The query of the agent's migration switchover and revert: the VM they apply to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UuidQuery {
    pub uuid: uuid::Uuid,
}
