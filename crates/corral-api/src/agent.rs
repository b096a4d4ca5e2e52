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

/// `POST /v1/agents/{name}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    pub usage: HostUsage,
    pub vms: Vec<VmStatus>,
}
