//! Corral's API types: the JSON documents exchanged between the CLI, the controller and the
//! agents. Everything on the wire is defined here, so the three sides cannot drift apart.
//!
//! Conventions: names of states and enums are lower-case on the wire; sizes are MiB unless the
//! field name says otherwise; times are milliseconds since the Unix epoch (`*_ms` fields).

/// The words of an enum of unit variants, from one table: `as_str`, `Display` and `FromStr`,
/// whose error names what was expected (`unknown <what> "x": use <hint>`). Led by `flag`, it
/// also makes the enum a `clap::ValueEnum` (feature `clap`), so that a command-line flag
/// takes its words and `--help` lists them.
macro_rules! words {
    // The words are also the enum's JSON form and its OpenAPI schema (a string enum): one table.
    (wire $t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        words!($t, $what, $hint, { $($v => $w),+ });

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($w),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $t {}
    };
    (flag $t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        words!($t, $what, $hint, { $($v => $w),+ });

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$v),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    };
    ($t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        impl $t {
            /// Its word, as users write it and see it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $w,)+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($w => Ok(Self::$v),)+
                    _ => Err(format!(concat!("unknown ", $what, " {:?}: use ", $hint), s)),
                }
            }
        }
    };
}

pub mod agent;
pub mod cluster;
pub mod drs;
pub mod error;
pub mod migration;
pub mod names;
pub mod size;
pub mod template_dir;
pub mod types;

use serde::{Deserialize, Serialize};

pub use error::{ApiError, ErrorBody, ErrorKind};

/// The version prefix of every REST path.
pub const API_PREFIX: &str = "/v1";

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
    /// 1 to 256.
    #[serde(deserialize_with = "types::vcpus")]
    pub vcpus: u32,
    /// Memory in MiB (32 MiB to 4 TiB).
    #[serde(deserialize_with = "types::memory_mib")]
    pub memory_mib: u64,
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
}

/// The header a standby controller's 503 answers carry: the URL of the controller that leads,
/// which agents and the CLI follow.
pub const LEADER_HEADER: &str = "x-corral-leader";

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

/// What happens to a VM when its host fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HaPolicy {
    /// It stays with its host: it runs again when the host returns and it is started.
    #[default]
    Off,
    /// Restarted on another host with its disk as it was (shared storage only).
    Restart,
    /// Restarted on another host from its template, with the same name, UUID, MAC and IP
    /// (its disk stayed on the failed host: what it wrote there is not carried over).
    RestartFresh,
}

words!(flag HaPolicy, "HA policy", "off, restart (shared storage) or restart-fresh", {
    Off => "off",
    Restart => "restart",
    RestartFresh => "restart-fresh",
});

/// What the controller does with an HA VM that would leave too little room to restart the HA
/// VMs of the failed hosts it keeps a reserve for (`corral controller --ha-admission`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaAdmission {
    /// Refuse the VM.
    #[default]
    Refuse,
    /// Admit it, with a warning event.
    Warn,
}

words!(flag HaAdmission, "HA admission", "refuse or warn", { Refuse => "refuse", Warn => "warn" });

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
}

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
    /// Hosts that hold this template.
    #[serde(default)]
    pub hosts: Vec<String>,
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

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_wire_enum_has_one_table_of_words_for_json_display_parsing_and_its_schema() {
        use crate::cluster::OpPhase;
        use crate::migration::MigrationPhase;
        assert_eq!(serde_json::to_string(&OpPhase::SaveToDisk).unwrap(), "\"save to disk\"");
        assert_eq!(serde_json::from_str::<OpPhase>("\"prepare images\"").unwrap(), OpPhase::PrepareImages);
        assert_eq!(format!("[{:<9}]", MigrationPhase::Postcopy), "[postcopy ]", "Display pads");
        let err = serde_json::from_str::<MigrationPhase>("\"warp\"").unwrap_err().to_string();
        assert!(err.contains("unknown migration phase \"warp\": use mirroring"), "{err}");
        let schema = serde_json::to_value(<MigrationPhase as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["type"], "string");
        let words: Vec<&str> = schema["enum"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
        assert_eq!(words, ["mirroring", "precopy", "switchover", "postcopy", "completed", "failed", "cancelled"]);
    }

    #[test]
    fn maintenance_states_are_words_and_a_quarantine_says_how_often_it_failed() {
        assert_eq!(serde_json::to_value(Maintenance::EvacuationIncomplete).unwrap(), "evacuation-incomplete");
        let q = Maintenance::Quarantined { failures: 3, window_min: 10 };
        let v = serde_json::to_value(q).unwrap();
        assert_eq!(v["quarantined"]["failures"], 3);
        assert_eq!(serde_json::from_value::<Maintenance>(v).unwrap(), q);
        assert_eq!(q.to_string(), "quarantined: failed 3 times in 10 min; uncordon it once it is fixed");
    }

    #[test]
    fn states_are_lower_case_on_the_wire() {
        assert_eq!(serde_json::to_string(&VmState::Suspended).ok().as_deref(), Some("\"suspended\""));
        assert_eq!(VmState::Running.to_string(), "running");
    }

    #[test]
    fn words_round_trip_and_say_what_is_expected() {
        for h in [HaPolicy::Off, HaPolicy::Restart, HaPolicy::RestartFresh] {
            assert_eq!(h.to_string().parse::<HaPolicy>(), Ok(h));
            assert_eq!(serde_json::to_string(&h).ok(), Some(format!("\"{h}\"")), "the wire word is the same");
        }
        for m in [drs::DrsMode::Off, drs::DrsMode::Advise, drs::DrsMode::Auto] {
            assert_eq!(m.as_str().parse::<drs::DrsMode>(), Ok(m));
        }
        for a in [HaAdmission::Refuse, HaAdmission::Warn] {
            assert_eq!(a.as_str().parse::<HaAdmission>(), Ok(a));
        }
        for a in [AccelMode::Auto, AccelMode::Kvm, AccelMode::Tcg] {
            assert_eq!(a.as_str().parse::<AccelMode>(), Ok(a));
        }
        assert_eq!("shared".parse::<Storage>(), Ok(Storage::Shared));
        assert_eq!("nfs".parse::<Storage>(), Err("unknown storage \"nfs\": use local or shared".to_string()));
        assert_eq!(
            "fast".parse::<migration::MigrationMode>(),
            Err("unknown migration mode \"fast\": use auto, precopy or postcopy".to_string())
        );
        assert_eq!(
            "sometimes".parse::<drs::DrsMode>(),
            Err("unknown DRS mode \"sometimes\": use off, advise or auto".to_string())
        );
    }

    #[test]
    fn pausing_an_inactive_vm_is_refused_with_a_hint() {
        let err = VmAction::Pause.check(VmState::Inactive).err().unwrap_or_default();
        assert!(err.contains("cannot pause a VM that is inactive"), "{err}");
        assert!(err.contains("corral vm start"), "{err}");
        assert!(VmAction::Pause.check(VmState::Running).is_ok());
    }

    #[test]
    fn workloads_are_validated() {
        for ok in ["idle", "cpu", "dirty:64", "dirty:10:128"] {
            assert!(validate_workload(ok).is_ok(), "{ok}");
        }
        for bad in ["", "busy", "dirty:", "dirty:0", "dirty:a", "dirty:1:2:3"] {
            assert!(validate_workload(bad).is_err(), "{bad}");
        }
    }

    /// A VM record with every field set, as the controller stores and reports it.
    fn vm_json() -> serde_json::Value {
        serde_json::json!({
            "name": "web1",
            "uuid": "6f1c1f3e-2a4b-4c5d-8e9f-0a1b2c3d4e5f",
            "state": "running",
            "host": "host-a",
            "template": "alpine",
            "vcpus": 2,
            "memory_mib": 512,
            "mac": "02:6f:1c:1f:3e:2a",
            "ip": "100.64.10.5/24",
            "workload": "dirty:64",
            "disk": "/var/lib/corral/vms/web1/disk.qcow2",
            "boot_ms": 1200,
            "error": "it failed once",
            "created_ms": 1700000000000u64,
            "usage": {"cpu_pct": 12.5, "cpu_demand_pct": 13.0, "rss_mib": 300, "guest_mem_used_mib": 100, "disk_bytes": 4096},
            "cluster": "c1",
            "index": 3,
            "pending": {"create": {"start": true}},
            "disk_mib": 2048,
            "network": {"vni": 42, "mtu": 1450},
            "migration": {"id": "m-1", "to": "host-b"},
            "ha": "restart",
            "storage": "shared",
        })
    }

    #[test]
    fn a_vm_is_its_definition_and_its_state_in_one_flat_document() {
        let doc = vm_json();
        // The definition's deny_unknown_fields sees only its own fields when flattened.
        let vm: Vm = serde_json::from_value(doc.clone()).expect("a full VM record reads");
        assert_eq!(vm.def.name, "web1");
        assert_eq!(vm.def.mac.to_string(), "02:6f:1c:1f:3e:2a");
        assert_eq!(vm.def.ip.map(|ip| ip.prefix()), Some(24));
        assert_eq!(vm.def.workload.as_str(), "dirty:64");
        assert_eq!(vm.def.network, Some(agent::NetAttach { vni: 42, mtu: 1450 }));
        assert_eq!((vm.def.ha, vm.def.storage), (HaPolicy::Restart, Storage::Shared));
        assert_eq!((vm.state, vm.host.as_str(), vm.index), (VmState::Running, "host-a", Some(3)));
        assert_eq!(serde_json::to_value(&vm).expect("serializes"), doc, "the same flat document, field for field");
        // Its definition is what an agent accepts (the agent refuses unknown fields).
        let def = serde_json::to_value(&vm.def).expect("serializes");
        assert_eq!(serde_json::from_value::<agent::VmDefinition>(def).expect("an agent reads it"), vm.def);

        // Fields left out take their defaults, as before.
        let mut min = doc.as_object().cloned().unwrap_or_default();
        for f in [
            "ip",
            "disk",
            "boot_ms",
            "error",
            "usage",
            "cluster",
            "index",
            "pending",
            "disk_mib",
            "network",
            "migration",
            "ha",
            "storage",
        ] {
            min.remove(f);
        }
        let vm: Vm = serde_json::from_value(serde_json::Value::Object(min)).expect("a minimal record reads");
        assert_eq!((vm.def.ip, vm.def.network, vm.def.disk_mib), (None, None, None));
        assert_eq!((vm.def.ha, vm.def.storage, vm.pending), (HaPolicy::Off, Storage::Local, None));

        // A field it does not know is passed over, as before (a record of a newer controller).
        let mut newer = doc.clone();
        newer["priority"] = serde_json::json!(5);
        let read = |d| serde_json::from_value::<Vm>(d).expect("reads");
        assert_eq!(read(newer), read(doc));
    }

    #[test]
    fn a_bad_value_in_a_vm_record_is_refused_even_though_its_definition_is_flattened() {
        for (field, bad, says) in [
            ("mac", serde_json::json!("zz"), "invalid MAC"),
            ("vcpus", serde_json::json!(0), "invalid vCPU count"),
            ("memory_mib", serde_json::json!(1), "invalid memory size"),
            ("name", serde_json::json!("../x"), "invalid name"),
            ("ip", serde_json::json!("100.64.10.5"), "invalid IPv4 address"),
            ("workload", serde_json::json!("rm -rf /"), "invalid workload"),
            ("disk_mib", serde_json::json!(0), "invalid disk size"),
            ("network", serde_json::json!({"vni": 0, "mtu": 1450}), "invalid VNI"),
        ] {
            let mut doc = vm_json();
            doc[field] = bad;
            let e = serde_json::from_value::<Vm>(doc).expect_err(field).to_string();
            assert!(e.contains(says), "{field}: {e}");
        }
        let mut doc = vm_json();
        doc.as_object_mut().map(|o| o.remove("mac"));
        let e = serde_json::from_value::<Vm>(doc).expect_err("no MAC").to_string();
        assert!(e.contains("missing field `mac`"), "{e}");
    }

    #[test]
    fn the_vm_schema_lists_every_field_and_lets_a_vm_have_them_all() {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        // The parts of an allOf (the definition's is wrapped once more, with its description).
        fn objects(s: &RefOr<Schema>, out: &mut Vec<utoipa::openapi::schema::Object>) {
            match s {
                RefOr::T(Schema::AllOf(all)) => all.items.iter().for_each(|i| objects(i, out)),
                RefOr::T(Schema::Object(o)) => out.push(o.clone()),
                _ => panic!("a VM's schema is made of inline objects"),
            }
        }
        let mut parts = Vec::new();
        objects(&<Vm as utoipa::PartialSchema>::schema(), &mut parts);
        let mut props = std::collections::BTreeSet::new();
        let mut required = std::collections::BTreeSet::new();
        for o in &parts {
            // An agent refuses unknown fields; no part of a VM's schema may, or no VM matches.
            assert!(o.additional_properties.is_none());
            props.extend(o.properties.keys().cloned());
            required.extend(o.required.iter().cloned());
        }
        let fields: std::collections::BTreeSet<String> =
            vm_json().as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(props, fields);
        let want =
            ["name", "uuid", "template", "vcpus", "memory_mib", "mac", "workload", "state", "host", "created_ms"];
        assert_eq!(required, want.iter().map(|s| s.to_string()).collect());
        // What it refers to is registered with it.
        let mut schemas = Vec::new();
        <Vm as utoipa::ToSchema>::schemas(&mut schemas);
        let names: Vec<&str> = schemas.iter().map(|(n, _)| n.as_str()).collect();
        for n in ["NetAttach", "Storage", "HaPolicy", "VmState", "VmUsage", "Pending", "MigrationRef"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        assert!(!names.contains(&"OpenDefinition"), "{names:?}");
    }
}

/// `GET /v1/ha`: what is protected against a host failure and what is not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaStatus {
    /// Agents lose their lease (and stop their VMs) this long after their last renewal.
    pub lease_ms: u64,
    /// Heartbeats missing this long make a host a suspect, checked by its peers.
    pub suspect_after_ms: u64,
    /// VMs restarted elsewhere if their host fails.
    pub protected: Vec<String>,
    /// VMs that are not, each with why.
    pub unprotected: Vec<HaUnprotected>,
    /// Hosts failed or recovering.
    pub hosts_down: Vec<String>,
    /// Whether the protected VMs of the busiest host would fit on the others if it failed.
    pub spare_ok: bool,
    /// What the spare-capacity check found.
    pub spare_note: String,
}

/// A VM that a host failure would leave down.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaUnprotected {
    pub name: String,
    pub host: String,
    pub why: String,
}
