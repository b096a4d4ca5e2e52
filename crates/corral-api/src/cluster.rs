//! Profiles, virtual clusters and long-running operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a group is spread over hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// Balance load across hosts.
    #[default]
    Spread,
    /// Use the fewest hosts.
    Pack,
}

impl PlacementPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementPolicy::Spread => "spread",
            PlacementPolicy::Pack => "pack",
        }
    }
}

/// Placement hints of a profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub policy: PlacementPolicy,
    /// At most one member of a cluster per host.
    #[serde(default)]
    pub anti_affinity: bool,
    /// Hosts must carry these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A bridged (provider) network: VMs join a host interface (or a VLAN of it) and appear on
/// that network as individual hosts, with addresses from the operator's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bridged {
    pub interface: String,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// `FIRST-LAST`, e.g. `198.19.100.10-198.19.100.50`.
    pub range: String,
    /// Prefix length of the provider network, e.g. 24.
    pub prefix: u8,
}

/// A profile as stored and shown: a pre-edited VM configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub name: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Virtual size of each VM's disk, MiB (at least the template's); None keeps the template's.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    pub workload: String,
    /// Network kind; `overlay` (a private network per cluster) is the default.
    pub network: String,
    pub placement: Placement,
    /// Higher restarts first after a host failure.
    pub restart_priority: i32,
    /// What happens to members when their host fails (`ha = "restart"`, `"restart-fresh"`
    /// or `"off"`).
    #[serde(default)]
    pub ha: crate::HaPolicy,
    /// Where members' disks live (`storage = "shared"` or `"local"`).
    #[serde(default)]
    pub storage: crate::Storage,
    /// For `network = "bridged"`: the host interface, VLAN and address range.
    #[serde(default)]
    pub bridged: Option<Bridged>,
    /// The firmware members boot with (`firmware = "uefi"`), for an image that boots from its
    /// disk; none: the image's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<crate::image::Firmware>,
    /// SSH public keys cloud-init installs in members (`ssh_keys = ["ssh-ed25519 ..."]`),
    /// with those given when a cluster is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ssh_keys: Vec<crate::image::SshKey>,
    /// A cloud-config for members (`user_data = """#cloud-config ..."""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub user_data: Option<crate::cloud_config::CloudConfig>,
    /// The TOML the profile was made from, as the user wrote it.
    pub source: String,
}

/// `POST /v1/profiles` and `PUT /v1/profiles/{name}`: the profile's TOML text.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSource {
    #[schema(value_type = String)]
    pub name: crate::types::Name,
    pub toml: String,
}

/// A cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Members deployed (or being deployed) and running.
    Active,
    /// Being saved to disk.
    Suspending,
    /// All members saved to disk; their host resources are free for others.
    Suspended,
    /// Being restored.
    Resuming,
    /// Being deleted.
    Deleting,
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterState::Active => "active",
            ClusterState::Suspending => "suspending",
            ClusterState::Suspended => "suspended",
            ClusterState::Resuming => "resuming",
            ClusterState::Deleting => "deleting",
        })
    }
}

/// A virtual cluster as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cluster {
    pub name: String,
    pub profile: Profile,
    /// Desired number of members.
    pub size: u32,
    pub subnet: String,
    pub policy: PlacementPolicy,
    pub state: ClusterState,
    /// Member numbers are never reused: the next member is `<name>-<next_index>`.
    pub next_index: u32,
    pub created_ms: u64,
    /// The cluster's virtual network: VXLAN network identifier and MTU the guests use.
    #[serde(default)]
    pub vni: u32,
    #[serde(default)]
    pub mtu: u32,
}

/// A cluster's virtual network (`corral network list|show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    /// The cluster it belongs to.
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    /// First address of the subnet, kept free.
    pub gateway: String,
    pub mtu: u32,
    /// Hosts with members, which hold the network's bridge and VXLAN device.
    pub hosts: Vec<String>,
    /// Members: name, IP, MAC, host.
    pub members: Vec<Member>,
    /// The address each host uses on the network to reach members (`vm ssh`,
    /// `vm port-forward`): host -> address.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub tunnels: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
}

/// One member as `cluster show` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub name: String,
    pub index: u32,
    pub state: crate::VmState,
    pub host: String,
    pub ip: Option<String>,
    pub mac: String,
    pub uuid: uuid::Uuid,
    #[serde(default)]
    pub error: Option<String>,
}

impl From<&crate::Vm> for Member {
    fn from(v: &crate::Vm) -> Self {
        Member {
            name: v.def.name.to_string(),
            index: v.index.unwrap_or(0),
            state: v.state,
            host: v.host.clone(),
            ip: v.def.ip.map(|ip| ip.to_string()),
            mac: v.def.mac.to_string(),
            uuid: v.def.uuid,
            error: v.error.clone(),
        }
    }
}

/// A cluster with its members (`GET /v1/clusters/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    #[serde(flatten)]
    pub cluster: Cluster,
    pub members: Vec<Member>,
    pub hosts: Vec<String>,
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    #[schema(value_type = String)]
    pub name: crate::types::Name,
    #[schema(value_type = String)]
    pub profile: crate::types::Name,
    pub size: u32,
    /// Overrides the profile's placement policy.
    #[serde(default)]
    pub policy: Option<PlacementPolicy>,
    /// IPv4 subnet (CIDR); one is chosen from 100.64.0.0/16 when absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// VXLAN network identifier (1..16777215); the smallest free one from 100 when absent.
    #[serde(default)]
    pub vni: Option<u32>,
    /// MTU of the guests' NICs (576..1450, the underlay's 1500 less VXLAN's 50); 1450 when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// SSH public keys for the members, added to the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ssh_keys: Vec<crate::image::SshKey>,
}

/// `POST /v1/clusters/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleCluster {
    pub size: u32,
}

/// State of a long operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
}

words!(wire OpState, "operation state", "running, succeeded or failed", {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// What a long operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    ClusterCreate,
    ClusterScale,
    ClusterDelete,
    ClusterSuspend,
    ClusterResume,
    HostEvacuate,
}

words!(wire OpKind, "operation kind", "cluster.create, cluster.scale, cluster.delete, cluster.suspend, cluster.resume or host.evacuate", {
    ClusterCreate => "cluster.create",
    ClusterScale => "cluster.scale",
    ClusterDelete => "cluster.delete",
    ClusterSuspend => "cluster.suspend",
    ClusterResume => "cluster.resume",
    HostEvacuate => "host.evacuate",
});

/// What a running operation is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpPhase {
    Starting,
    /// Shipping templates to the hosts that lack them.
    PrepareImages,
    /// Creating and starting the VMs.
    Execute,
    /// Moving VMs off a host.
    Migrate,
    /// Deleting VMs.
    Remove,
    /// Suspending VMs to disk.
    SaveToDisk,
    /// Resuming VMs from disk.
    Restore,
    Done,
}

words!(wire OpPhase, "operation phase", "starting, prepare images, execute, migrate, remove, save to disk, restore or done", {
    Starting => "starting",
    PrepareImages => "prepare images",
    Execute => "execute",
    Migrate => "migrate",
    Remove => "remove",
    SaveToDisk => "save to disk",
    Restore => "restore",
    Done => "done",
});

/// A timed step of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStage {
    /// Profile and addresses.
    Configure,
    /// The scheduler's placement.
    Place,
    /// Templates shipped.
    Prepare,
    Execute,
    Migrate,
    Remove,
    Suspend,
    Resume,
}

words!(wire OpStage, "operation step", "configure, place, prepare, execute, migrate, remove, suspend or resume", {
    Configure => "configure",
    Place => "place",
    Prepare => "prepare",
    Execute => "execute",
    Migrate => "migrate",
    Remove => "remove",
    Suspend => "suspend",
    Resume => "resume",
});

/// One timed step of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpStep {
    pub name: OpStage,
    pub ms: u64,
}

/// A long operation (`GET /v1/operations/{id}`): poll it or wait on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: String,
    pub kind: OpKind,
    pub target: String,
    pub state: OpState,
    /// What is being done now.
    pub phase: OpPhase,
    pub done: u32,
    pub total: u32,
    pub steps: Vec<OpStep>,
    /// Failures and other things the user should read.
    pub messages: Vec<String>,
    /// VMs in place when it ended and the hosts they use.
    #[serde(default)]
    pub vms: u32,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
}

/// Something that happened, for the event log (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub ms: u64,
    /// e.g. `template.sent`, `vm.retry`, `vm.orphan-removed`.
    pub kind: String,
    pub subject: String,
    pub message: String,
}
