//! VMs on the wire: their lifecycle states and actions, the create request, the record the
//! controller reports, where a disk lives, and commands and console output of a guest.

use serde::{Deserialize, Serialize};

use crate::{agent, migration, types, HaPolicy};

/// The lifecycle states of a VM, as the source documents name them (inactive, active = running,
/// paused, suspended) plus the transitional states and `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined, disk prepared, no QEMU process.
    Inactive,
    /// QEMU started, waiting for the guest to report that it booted.
    Starting,
    /// The guest OS is up (it answered the guest agent).
    Running,
    /// Pausing: vCPUs being stopped.
    Pausing,
    /// vCPUs stopped; memory stays in the QEMU process.
    Paused,
    /// Memory and device state being written to disk.
    Suspending,
    /// Memory and device state saved in a file; no QEMU process.
    Suspended,
    /// Being restored from the saved state.
    Resuming,
    /// Guest asked to power off; waiting (then forced).
    Stopping,
    /// Being deleted.
    Deleting,
    /// Being live-migrated to another host (it keeps running meanwhile).
    Migrating,
    /// (On an agent) this copy has been handed over to another host and has no process.
    Migrated,
    /// Something failed; `error` says what.
    Error,
}

impl VmState {
    /// Lower-case name, as shown to users and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Inactive => "inactive",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Pausing => "pausing",
            VmState::Paused => "paused",
            VmState::Suspending => "suspending",
            VmState::Suspended => "suspended",
            VmState::Resuming => "resuming",
            VmState::Stopping => "stopping",
            VmState::Deleting => "deleting",
            VmState::Migrating => "migrating",
            VmState::Migrated => "migrated",
            VmState::Error => "error",
        }
    }

    /// True while a QEMU process exists for the VM.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting
                | VmState::Running
                | VmState::Pausing
                | VmState::Paused
                | VmState::Suspending
                | VmState::Stopping
                | VmState::Resuming
                | VmState::Migrating
        )
    }

    /// True for states that hold host resources (memory, vCPUs) for placement purposes.
    pub fn holds_resources(self) -> bool {
        !matches!(self, VmState::Suspended | VmState::Inactive | VmState::Error | VmState::Migrated)
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action on a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmAction {
    Start,
    Stop,
    Pause,
    Resume,
    Suspend,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Suspend => "suspend",
        }
    }

    /// Parses an action name as used in REST paths.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => VmAction::Start,
            "stop" => VmAction::Stop,
            "pause" => VmAction::Pause,
            "resume" => VmAction::Resume,
            "suspend" => VmAction::Suspend,
            _ => return None,
        })
    }

    /// Whether the action may be applied to a VM in `state`; on refusal, a hint for the user.
    pub fn check(self, state: VmState) -> Result<(), String> {
        use VmState::*;
        let ok = match self {
            VmAction::Start => matches!(state, Inactive | Error),
            VmAction::Stop => matches!(state, Running | Paused | Starting | Error | Suspended),
            VmAction::Pause => state == Running,
            VmAction::Resume => matches!(state, Paused | Suspended),
            VmAction::Suspend => matches!(state, Running | Paused),
        };
        if ok {
            return Ok(());
        }
        let hint = match (self, state) {
            (VmAction::Start, Running) => "it is already running".to_string(),
            (VmAction::Start, Paused) | (VmAction::Start, Suspended) => {
                "it is paused or suspended: use `corral vm resume`".to_string()
            }
            (VmAction::Pause, Paused) => "it is already paused".to_string(),
            (VmAction::Pause, Inactive) | (VmAction::Suspend, Inactive) => {
                "it is not running: start it first with `corral vm start`".to_string()
            }
            (VmAction::Resume, Running) => "it is already running".to_string(),
            (VmAction::Resume, Inactive) => "it is inactive, not paused: use `corral vm start`".to_string(),
            (VmAction::Stop, Inactive) => "it is already stopped".to_string(),
            (_, Migrating) => {
                "it is being live-migrated: wait for the migration to end, or cancel it with `corral vm migrate --cancel`"
                    .to_string()
            }
            _ => format!("wait until the current `{state}` transition ends"),
        };
        Err(format!("cannot {} a VM that is {state}: {hint}", self.as_str()))
    }
}

/// The workload the guest runs, for tests of load and migration.
pub const WORKLOAD_HELP: &str = "idle | cpu | dirty:<MiB/s>[:<MiB>]";

/// Validates a workload spec (`idle`, `cpu`, `dirty:RATE[:SIZE]`).
pub fn validate_workload(spec: &str) -> Result<(), String> {
    let bad = || format!("invalid workload {spec:?}: expected {WORKLOAD_HELP}");
    match spec {
        "idle" | "cpu" => Ok(()),
        s if s.starts_with("dirty:") => {
            let parts: Vec<&str> = s["dirty:".len()..].split(':').collect();
            if parts.is_empty() || parts.len() > 2 {
                return Err(bad());
            }
            for p in parts {
                match p.parse::<u64>() {
                    Ok(n) if n > 0 => {}
                    _ => return Err(bad()),
                }
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// A request to create a VM (`POST /v1/vms`). Checked while deserialized (see [`types`]);
/// unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    #[schema(value_type = String)]
    pub name: types::Name,
    #[schema(value_type = String)]
    pub template: types::Name,
    /// 1 to 256; absent: the image's default (an imported OVA's), else 1.
    #[serde(default, deserialize_with = "types::opt_vcpus")]
    pub vcpus: Option<u32>,
    /// Memory in MiB (32 MiB to 4 TiB); absent: the image's default, else 256 MiB.
    #[serde(default, deserialize_with = "types::opt_memory_mib")]
    pub memory_mib: Option<u64>,
    /// Host to place it on; the scheduler chooses when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub host: Option<types::Name>,
    /// Guest workload; `idle` when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub workload: Option<types::Workload>,
    /// Start it right away (default) or leave it inactive.
    #[serde(default = "yes")]
    pub start: bool,
    /// What happens to it when its host fails. Absent: `restart` on shared storage, `off`
    /// on local storage.
    #[serde(default)]
    pub ha: Option<HaPolicy>,
    /// Where its disk lives; `local` when absent.
    #[serde(default)]
    pub storage: Storage,
    /// The firmware it boots with, for an image that boots from its disk; the image's
    /// default when absent.
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

/// A storage pool: where a VM's disk lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    /// On its host's own disk: gone with the host.
    #[default]
    Local,
    /// In the pool every host mounts (e.g. NFS; in the lab one directory): another host can
    /// run the VM with its disk as it was.
    Shared,
}

words!(flag Storage, "storage", "local or shared", { Local => "local", Shared => "shared" });

fn yes() -> bool {
    true
}

/// A VM as the controller reports it: its definition, as its agent is given it, and what the
/// controller knows about it. On the wire one flat object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Vm {
    /// What the VM is (identity, size, image, network, storage, HA policy): exactly what its
    /// agent is given.
    #[serde(flatten)]
    #[schema(value_type = OpenDefinition, inline)]
    pub def: agent::VmDefinition,
    pub state: VmState,
    /// The host the VM is placed on.
    pub host: String,
    /// Path of the VM's copy-on-write disk on its host.
    #[serde(default)]
    pub disk: Option<String>,
    /// Milliseconds from QEMU start to the guest reporting ready, for the last boot.
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// What went wrong, when `state` is `error`.
    #[serde(default)]
    pub error: Option<String>,
    pub created_ms: u64,
    /// Usage figures from the host agent (QEMU process) and the guest.
    #[serde(default)]
    pub usage: Option<VmUsage>,
    /// The virtual cluster this VM is a member of, and its member number.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub index: Option<u32>,
    /// Work the controller still owes this VM (it survives controller restarts).
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The live migration in flight, if any.
    #[serde(default)]
    pub migration: Option<migration::MigrationRef>,
}

/// [`agent::VmDefinition`]'s schema as the part of [`Vm`]'s it is flattened into: the same
/// properties, but open (an agent refuses unknown fields, whereas a `Vm` has fields of its
/// own), and described by the `def` field rather than as an agent's request.
struct OpenDefinition;

impl utoipa::PartialSchema for OpenDefinition {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut s = <agent::VmDefinition as utoipa::PartialSchema>::schema();
        if let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) = &mut s {
            o.additional_properties = None;
            o.description = None;
        }
        s
    }
}

impl utoipa::ToSchema for OpenDefinition {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <agent::VmDefinition as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Work the controller still owes a VM; the reconciler finishes it after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// Make it on its host; start it when `start` (the VM's target is running).
    Create { start: bool },
    /// Remove it from its host, then forget it and free its address.
    Delete,
}

/// Per-VM usage, measured by the agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VmUsage {
    /// CPU used by the QEMU process, percent of one core, over the last interval.
    pub cpu_pct: f64,
    /// CPU the VM wanted: what it used plus the time its threads waited for a host CPU
    /// (run-queue delay), percent of one core. Equals `cpu_pct` on an uncontended host.
    #[serde(default)]
    pub cpu_demand_pct: f64,
    /// Resident memory of the QEMU process, MiB.
    pub rss_mib: u64,
    /// Guest-reported memory in use, MiB (when the guest agent answers).
    #[serde(default)]
    pub guest_mem_used_mib: Option<u64>,
    /// Allocated bytes of the copy-on-write overlay.
    #[serde(default)]
    pub disk_bytes: u64,
    /// The guest's OS, as its QEMU guest agent names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<String>,
    /// The guest's own IPv4 addresses (with prefix), as its QEMU guest agent reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_addresses: Vec<String>,
}

/// `POST /v1/vms/{name}/disk/resize`: a new size for a VM's root disk, as a total or as
/// growth (exactly one). Disks only grow: shrinking would cut the guest's file system.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeDisk {
    /// The new virtual size, MiB.
    #[serde(default, deserialize_with = "types::disk_mib")]
    pub size_mib: Option<u64>,
    /// MiB to add to the current size.
    #[serde(default, deserialize_with = "types::disk_mib")]
    pub grow_mib: Option<u64>,
}

impl ResizeDisk {
    /// The new size given the current one (MiB), or why there is none.
    pub fn target(&self, current_mib: u64) -> Result<u64, String> {
        let new = match (self.size_mib, self.grow_mib) {
            (Some(s), None) => s,
            (None, Some(g)) => current_mib.saturating_add(g),
            _ => return Err("give either the new size or the growth (--size 20G or --size +5G)".into()),
        };
        types::check_disk_mib(new)?;
        if new < current_mib {
            return Err(format!(
                "the disk is {current_mib} MiB and cannot shrink to {new} MiB (that would cut its file system)"
            ));
        }
        Ok(new)
    }
}

/// A command to run in the guest through the guest agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The result of a command run in the guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A chunk of a VM's serial console log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleChunk {
    /// Offset of the first byte of `data` in the log.
    pub offset: u64,
    /// Offset to ask for next.
    pub next: u64,
    pub data: String,
}
