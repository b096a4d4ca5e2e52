//! Live migration on the wire: what an operator asks for, the record the controller keeps of
//! every migration (its history), and what the controller and the two agents say to each other
//! while one runs.

use serde::{Deserialize, Serialize};

/// How a migration moves memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Corral's policy: pre-copy with XBZRLE and auto-converge, switching to post-copy when
    /// the rounds stop shrinking or the time budget runs out. Always converges.
    #[default]
    Auto,
    /// Plain iterative pre-copy with QEMU's defaults; gives up (VM kept at the source) when it
    /// has not converged within the time budget.
    Precopy,
    /// One pre-copy pass, then post-copy: the VM runs at the destination at once and pulls
    /// the rest of its memory on demand.
    Postcopy,
}

words!(MigrationMode, "migration mode", "auto, precopy or postcopy", {
    Auto => "auto",
    Precopy => "precopy",
    Postcopy => "postcopy",
});

impl MigrationMode {
    /// Whether the destination must be ready for post-copy.
    pub fn may_postcopy(self) -> bool {
        self != MigrationMode::Precopy
    }
}

/// Default time budget of a migration.
pub const DEFAULT_BUDGET_MS: u64 = 120_000;
/// Default downtime limit of the `auto` mode (QEMU's own default, used by `precopy`, is 300 ms).
pub const AUTO_DOWNTIME_MS: u64 = 50;

/// `POST /v1/vms/{name}/migrate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateVm {
    /// Destination host; the scheduler core chooses when absent.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub mode: MigrationMode,
    /// Longest acceptable pause of the guest at switch-over, ms.
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
    /// Cap on the memory stream, bytes per second.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// Time after which the policy acts (`auto`: post-copy; `precopy`: give up), ms.
    #[serde(default)]
    pub budget_ms: Option<u64>,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Waiting for a free slot on the source or destination host.
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

words!(wire MigrationState, "migration state", "queued, running, completed, failed or cancelled", {
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl MigrationState {
    pub fn is_final(self) -> bool {
        matches!(self, MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled)
    }
}

/// What the source of a migration is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigrationPhase {
    /// Copying the disk's own data to the destination (the guest runs here).
    #[default]
    Mirroring,
    /// Copying memory while the guest runs here.
    Precopy,
    /// The guest is stopped: the disk is completed and the destination checked before the
    /// hand-over.
    Switchover,
    /// The guest runs at the destination, which pulls the rest of its memory from here.
    Postcopy,
    Completed,
    Failed,
    Cancelled,
}

words!(wire MigrationPhase, "migration phase", "mirroring, precopy, switchover, postcopy, completed, failed or cancelled", {
    Mirroring => "mirroring",
    Precopy => "precopy",
    Switchover => "switchover",
    Postcopy => "postcopy",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl MigrationPhase {
    /// Whether the guest may already run at the destination: too late to cancel.
    pub fn handed_over(self) -> bool {
        matches!(self, MigrationPhase::Switchover | MigrationPhase::Postcopy | MigrationPhase::Completed)
    }
}

impl From<MigrationState> for MigrationPhase {
    /// The phase a migration that ended in `state` is left in.
    fn from(state: MigrationState) -> Self {
        match state {
            MigrationState::Queued | MigrationState::Running => MigrationPhase::Mirroring,
            MigrationState::Completed => MigrationPhase::Completed,
            MigrationState::Failed => MigrationPhase::Failed,
            MigrationState::Cancelled => MigrationPhase::Cancelled,
        }
    }
}

/// The figures of a migration, as read from QEMU by the source agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationFigures {
    /// What the source is doing.
    pub phase: MigrationPhase,
    /// Pre-copy rounds (QEMU's dirty-sync count).
    pub rounds: u64,
    /// Memory still to send, bytes.
    pub remaining: u64,
    /// Rate at which the guest dirties memory, bytes/s.
    pub dirty_rate: u64,
    /// Rate at which memory is sent, bytes/s.
    pub transfer_rate: u64,
    /// Memory bytes sent.
    pub bytes: u64,
    /// Disk bytes sent (the overlay's data, by the block mirror).
    pub disk_bytes: u64,
    /// Guest memory size, bytes.
    pub memory_bytes: u64,
    /// From the start of the disk mirror to the end, ms.
    pub total_ms: u64,
    /// The guest's pause at switch-over as QEMU measured it, ms.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// `precopy` or `postcopy`: how the memory finally moved.
    #[serde(default)]
    pub used_mode: Option<MemoryMove>,
    /// What the policy did and why, in order.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One migration: the history record (`corral vm migrations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Migration {
    pub id: String,
    pub vm: String,
    pub uuid: uuid::Uuid,
    pub source: String,
    pub destination: String,
    /// The mode asked for.
    pub mode: MigrationMode,
    pub state: MigrationState,
    /// `completed`, or what went wrong / that it was cancelled; empty while running.
    pub result: String,
    pub rounds: u64,
    pub total_ms: u64,
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Memory bytes sent.
    pub bytes: u64,
    pub disk_bytes: u64,
    pub memory_bytes: u64,
    pub remaining: u64,
    pub dirty_rate: u64,
    pub transfer_rate: u64,
    #[serde(default)]
    pub used_mode: Option<MemoryMove>,
    #[serde(default)]
    pub actions: Vec<String>,
    pub max_downtime_ms: Option<u64>,
    pub bandwidth: Option<u64>,
    pub budget_ms: u64,
    pub requested_ms: u64,
    /// When it left the queue (a slot on both hosts was free).
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// The host evacuation this migration is part of.
    #[serde(default)]
    pub evacuation: Option<String>,
}

impl Migration {
    /// Copies the agent's figures in.
    pub fn take(&mut self, f: &MigrationFigures) {
        self.rounds = f.rounds;
        self.remaining = f.remaining;
        self.dirty_rate = f.dirty_rate;
        self.transfer_rate = f.transfer_rate;
        self.bytes = f.bytes;
        self.disk_bytes = f.disk_bytes;
        self.memory_bytes = f.memory_bytes;
        self.total_ms = f.total_ms;
        self.downtime_ms = f.downtime_ms;
        self.used_mode = f.used_mode;
        self.actions = f.actions.clone();
    }
}

/// A VM's migration in flight, kept on its record so that a restarted controller resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationRef {
    pub id: String,
    /// The destination host.
    pub to: String,
}

/// `POST /v1/migrations/incoming` on the destination agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Incoming {
    pub def: crate::agent::VmDefinition,
    pub id: String,
    /// Prepare for post-copy (must be set on both ends before the migration starts).
    pub postcopy: bool,
}

/// The destination's answer: where the source sends disk and memory.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncomingReady {
    /// NBD server (`host:port`) exporting the VM's disk as `disk0`.
    #[schema(value_type = String)]
    pub nbd: std::net::SocketAddrV4,
    /// QEMU migration address (`host:port`).
    #[schema(value_type = String)]
    pub migration: std::net::SocketAddrV4,
}

/// `POST /v1/vms/{name}/migration` on the source agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outgoing {
    pub id: String,
    pub uuid: uuid::Uuid,
    pub to: IncomingReady,
    /// The destination agent's base URL: it must answer before the switch-over.
    pub destination_url: String,
    pub mode: MigrationMode,
    pub max_downtime_ms: Option<u64>,
    pub bandwidth: Option<u64>,
    pub budget_ms: u64,
}

/// What a source agent reports of a VM's migration (`GET /v1/vms/{name}/migration`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutgoingStatus {
    pub id: String,
    /// Running, completed (the VM runs at the destination now), failed or cancelled.
    pub state: MigrationState,
    pub figures: MigrationFigures,
}

/// How a migrated VM's memory finally moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMove {
    /// All of it before the switch-over: the source's stopped copy is complete.
    Precopy,
    /// The rest pulled by the destination after the switch-over: the source's copy is not.
    Postcopy,
}

words!(wire MemoryMove, "memory move", "precopy or postcopy", { Precopy => "precopy", Postcopy => "postcopy" });

/// Parses a bandwidth as operators write it: bits per second with an SI suffix (`1G`,
/// `100M`, `500k`, optionally followed by `bit`, `bps` or `b/s`), or bytes per second with a
/// binary unit and `/s` (`100MiB/s`). Returns bytes per second.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("invalid bandwidth {s:?}: write e.g. 1G (bits/s), 200M, or 50MiB/s (bytes/s)");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let bytes_per_s = if let Some(u) = unit.strip_suffix("ib/s") {
        let mul: u64 = match u {
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mul).ok_or_else(bad)?
    } else {
        let u = unit.trim_end_matches("bit").trim_end_matches("bps").trim_end_matches("b/s");
        let mul: u64 = match u {
            "" => 1,
            "k" => 1_000,
            "m" => 1_000_000,
            "g" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mul).ok_or_else(bad)? / 8
    };
    if bytes_per_s == 0 {
        return Err(format!("bandwidth {s:?} is zero: give a positive rate"));
    }
    Ok(bytes_per_s)
}

#[cfg(test)]
mod tests {
    use super::parse_bandwidth;

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("1G"), Ok(125_000_000));
        assert_eq!(parse_bandwidth("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_bandwidth("64MiB/s"), Ok(64 << 20));
        assert_eq!(parse_bandwidth("800k"), Ok(100_000));
        assert!(parse_bandwidth("fast").is_err());
        assert!(parse_bandwidth("0").is_err());
        assert!(parse_bandwidth("10X").is_err());
    }
}
