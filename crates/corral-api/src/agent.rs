//! What the controller and an agent say to each other: registration, heartbeats, and the full
//! definition of a VM the controller asks an agent to run.

use serde::{Deserialize, Serialize};

use crate::{Accel, Capacity, HostUsage, VmState, VmUsage};

/// Everything an agent needs to create and run a VM. The controller assigns identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VmDefinition {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub template: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub mac: String,
    #[serde(default)]
    pub ip: Option<String>,
    pub workload: String,
    /// Virtual disk size, MiB, when larger than the template's.
    #[serde(default)]
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
}

/// Which virtual network a NIC joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetAttach {
    pub vni: u32,
    pub mtu: u32,
}

/// `PUT /v1/networks/{vni}` on an agent: a network as this host must have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkSpec {
    pub vni: u32,
    pub mtu: u32,
    /// Underlay addresses of the other hosts with members (the flood list).
    #[schema(value_type = Vec<String>)]
    pub peers: Vec<std::net::Ipv4Addr>,
    /// MAC of each VM on another host → that host's underlay address.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub macs: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
    /// For a bridged (provider) network: the host interface (and VLAN) the bridge joins,
    /// instead of a VXLAN overlay.
    #[serde(default)]
    pub uplink: Option<Uplink>,
}

/// The host interface a bridged network joins, and its VLAN (none: untagged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub interface: String,
    #[serde(default)]
    pub vlan: Option<u16>,
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
}

/// The runtime status of one VM on an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VmStatus {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub state: VmState,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub boot_ms: Option<u64>,
    pub disk: String,
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
}
