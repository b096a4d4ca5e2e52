//! Hosts on the wire: their states, accelerator, capacity and usage, maintenance, networks,
//! and the templates they hold.

use serde::{Deserialize, Serialize};

use crate::drs;

/// Host states as shown by `corral host list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Heartbeating.
    Ready,
    /// Heartbeats missing.
    Unreachable,
    /// Put in standby by consolidation (powered down or parked); `corral host wake` or the
    /// DRS loop brings it back.
    Standby,
    /// Heartbeats missing and its peers cannot reach it either: declared failed, its lease
    /// expired (so its VMs are fenced) and its HA VMs restarted elsewhere.
    Failed,
    /// Back after a failure: it reports again but takes no VMs until it has been steady for a
    /// while (damping, so a flapping host is not given VMs to lose again).
    Recovering,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostState::Ready => "ready",
            HostState::Standby => "standby",
            HostState::Unreachable => "unreachable",
            HostState::Failed => "failed",
            HostState::Recovering => "recovering",
        })
    }
}

/// The accelerator a host's agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator an agent is told to use (`corral agent --accel`): one of them, or auto (KVM
/// after a bounded test boot, else TCG).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

words!(flag AccelMode, "accelerator", "auto, kvm or tcg", { Auto => "auto", Kvm => "kvm", Tcg => "tcg" });

/// What a host offers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
}

/// Live usage of a host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct HostUsage {
    /// Busy CPU, percent of all cores.
    pub cpu_pct: f64,
    pub mem_used_mib: u64,
    pub disk_free_bytes: u64,
}

/// A host as the controller reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Host {
    pub name: String,
    /// The agent's base URL.
    pub url: String,
    pub state: HostState,
    pub accel: Accel,
    /// Why the accelerator was chosen (e.g. "kvm probe timed out; using tcg").
    pub accel_note: String,
    pub capacity: Capacity,
    /// vCPUs and memory promised to VMs placed here.
    pub allocated: Capacity,
    pub usage: HostUsage,
    pub vms: usize,
    pub last_heartbeat_ms: u64,
    /// A cordoned host takes no new VMs.
    #[serde(default)]
    pub cordoned: bool,
    /// Why it is out of service, if it is: an evacuation, or a quarantine after failing too often.
    #[serde(default)]
    pub maintenance: Option<Maintenance>,
    /// On, in standby (emptied by consolidation) or waking.
    #[serde(default)]
    pub power: drs::HostPower,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Templates the host holds.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Underlay address (VXLAN tunnel end).
    #[serde(default)]
    pub underlay: Option<String>,
    /// Virtual networks present on the host: VNI and bridge.
    #[serde(default)]
    pub networks: Vec<HostNetwork>,
    /// Failures of this host in the damping window (see `corral ha status`).
    #[serde(default)]
    pub failures: u32,
}

/// Why a host is out of service (it is cordoned too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Maintenance {
    /// `corral host evacuate` is moving its VMs off.
    Evacuating,
    /// Every VM moved off.
    Evacuated,
    /// The evacuation ended with VMs left on it (its operation says why).
    EvacuationIncomplete,
    /// Declared failed `failures` times within `window_min` minutes: HA cordoned it, so that
    /// no VM is placed on a host that keeps failing. `corral host uncordon` once it is fixed.
    Quarantined { failures: u32, window_min: u32 },
}

impl std::fmt::Display for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Maintenance::Evacuating => f.write_str("evacuating"),
            Maintenance::Evacuated => f.write_str("evacuated"),
            Maintenance::EvacuationIncomplete => f.write_str("evacuation incomplete"),
            Maintenance::Quarantined { failures, window_min } => {
                write!(f, "quarantined: failed {failures} times in {window_min} min; uncordon it once it is fixed")
            }
        }
    }
}

/// A virtual network's devices on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostNetwork {
    pub vni: u32,
    pub bridge: String,
    pub vxlan: String,
    /// The cluster the network belongs to, if the controller knows it.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// A template (disk image with an OS preinstalled).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Template {
    pub name: String,
    /// Virtual size of the disk, bytes.
    pub size_bytes: u64,
    pub kernel_version: String,
    pub os: String,
    /// How it boots: `direct` (kernel and initrd), `bios` or `uefi` (from its disk).
    #[serde(default)]
    pub boot: crate::image::Boot,
    /// The agent in its guests: `corral`, `qemu` or `none`.
    #[serde(default)]
    pub guest_agent: crate::image::GuestAgentKind,
    /// The vCPUs its VMs are meant to have (from an imported OVA), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// The memory its VMs are meant to have, MiB (from an imported OVA), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// The user cloud-init makes in its guests (`vm ssh` logs in as it by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub default_user: Option<crate::image::LoginUser>,
    /// Hosts that hold this template.
    #[serde(default)]
    pub hosts: Vec<String>,
}
