//! The controller's configuration (`corral controller --help`): its fields, the checks of
//! their values. [`Settings`], the part the running service uses, is a field of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_api::HaAdmission;

use crate::retention;

/// How the controller is configured (`corral controller --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// API token every request must carry (None: no check).
    pub token: Option<String>,
    /// etcd endpoints for the state (empty: the embedded redb file in `data_dir`).
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub etcd_prefix: String,
    /// With etcd: the leader lease, seconds (2 to 60; a standby takes over this long after
    /// the leader dies).
    pub leader_ttl_s: i64,
    /// The URL other controllers, agents and clients reach this one at (default http://LISTEN).
    pub advertise: Option<String>,
    /// Listen on a non-loopback address without a token (`--insecure`), with a warning.
    pub insecure: bool,
    /// How the controller places, migrates, fails over and keeps history.
    pub settings: Settings,
}

/// The controller's settings: how it places, migrates, fails over and keeps history. Part
/// of its [`Config`]; tests of the controller make them directly.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A host is unreachable when no heartbeat came for this long (1 s at least).
    pub host_timeout: Duration,
    /// vCPUs that may be promised per physical CPU (1.0 at least).
    pub cpu_overcommit: f64,
    /// Memory that may be promised per MiB of a host (1.0 at least: none).
    pub memory_overcommit: f64,
    /// The template library hosts receive templates from.
    pub templates_dir: Option<PathBuf>,
    /// The largest image file an import takes, bytes.
    pub max_image_bytes: u64,
    /// Live migrations a host may send at once (more wait in a queue).
    pub migrations_out: usize,
    /// Live migrations a host may receive at once.
    pub migrations_in: usize,
    /// Shell command that powers a host down for standby (`{host}` is replaced).
    pub standby_command: Option<String>,
    /// Shell command that powers a host up again.
    pub wake_command: Option<String>,
    /// Agents' lease: renewed by each heartbeat; an agent that cannot renew it stops its VMs,
    /// and a failed host's VMs are restarted elsewhere only once it has run out (0: no HA;
    /// else 2 s longer than `suspect_after` at least).
    pub lease: Duration,
    /// Heartbeats missing this long make a host a suspect, checked by its peers.
    pub suspect_after: Duration,
    /// A failed host that returns takes no VMs for this long.
    pub recover_after: Duration,
    /// HA admission control: room is kept to restart the HA VMs of this many failed hosts.
    pub ha_reserve_hosts: usize,
    /// Refuse HA VMs that break the reserve, or admit them with a warning event.
    pub ha_admission: HaAdmission,
    /// How much history is kept.
    pub retention: retention::Retention,
}

/// A value of [`Config`] out of its range; each names its flag and what it allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--leader-ttl {0} is out of range: give 2 to 60 seconds")]
    LeaderTtl(i64),
    #[error(
        "--lease {lease:?} is too short: it must exceed --suspect-after ({suspect_after:?}) by 2 s at least, \
         so a host is checked by its peers before its lease runs out"
    )]
    LeaseTooShort { lease: Duration, suspect_after: Duration },
    #[error("--cpu-overcommit must be at least 1.0")]
    CpuOvercommit(f64),
    #[error("--memory-overcommit must be at least 1.0")]
    MemoryOvercommit(f64),
    #[error("--host-timeout must be at least 1 second")]
    HostTimeout(Duration),
    #[error("--migrations-out must be at least 1")]
    MigrationsOut(usize),
    #[error("--migrations-in must be at least 1")]
    MigrationsIn(usize),
    /// A non-loopback `listen` without a token or `insecure`.
    #[error(transparent)]
    Listen(#[from] corral_http::ListenError),
}

impl ConfigError {
    /// The flag whose value is refused.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::LeaderTtl(_) => "--leader-ttl",
            ConfigError::LeaseTooShort { .. } => "--lease",
            ConfigError::CpuOvercommit(_) => "--cpu-overcommit",
            ConfigError::MemoryOvercommit(_) => "--memory-overcommit",
            ConfigError::HostTimeout(_) => "--host-timeout",
            ConfigError::MigrationsOut(_) => "--migrations-out",
            ConfigError::MigrationsIn(_) => "--migrations-in",
            ConfigError::Listen(_) => "--listen",
        }
    }
}

impl Config {
    /// Checks every value; [`crate::run`] does so before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if !(2..=60).contains(&self.leader_ttl_s) {
            return Err(ConfigError::LeaderTtl(self.leader_ttl_s));
        }
        if !s.lease.is_zero() && s.lease < s.suspect_after.saturating_add(Duration::from_secs(2)) {
            return Err(ConfigError::LeaseTooShort { lease: s.lease, suspect_after: s.suspect_after });
        }
        if s.cpu_overcommit.is_nan() || s.cpu_overcommit < 1.0 {
            return Err(ConfigError::CpuOvercommit(s.cpu_overcommit));
        }
        if s.memory_overcommit.is_nan() || s.memory_overcommit < 1.0 {
            return Err(ConfigError::MemoryOvercommit(s.memory_overcommit));
        }
        if s.host_timeout < Duration::from_secs(1) {
            return Err(ConfigError::HostTimeout(s.host_timeout));
        }
        if s.migrations_out == 0 {
            return Err(ConfigError::MigrationsOut(s.migrations_out));
        }
        if s.migrations_in == 0 {
            return Err(ConfigError::MigrationsIn(s.migrations_in));
        }
        corral_http::check_listen(self.listen, self.token.as_deref(), self.insecure)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults of `corral controller`.
    fn good() -> Config {
        Config {
            listen: "127.0.0.1:7700".parse().expect("address"),
            data_dir: PathBuf::from("/var/lib/corral/controller"),
            token: None,
            etcd: Vec::new(),
            etcd_prefix: "/corral/".into(),
            leader_ttl_s: 3,
            advertise: None,
            insecure: false,
            settings: Settings {
                host_timeout: Duration::from_secs(5),
                cpu_overcommit: 4.0,
                memory_overcommit: 1.0,
                templates_dir: None,
                max_image_bytes: 64 << 30,
                migrations_out: 2,
                migrations_in: 2,
                standby_command: None,
                wake_command: None,
                lease: Duration::from_secs(7),
                suspect_after: Duration::from_secs(2),
                recover_after: Duration::from_secs(30),
                ha_reserve_hosts: 1,
                ha_admission: HaAdmission::Refuse,
                retention: retention::Retention {
                    events: 10_000,
                    history: 1_000,
                    max_age: Duration::from_secs(30 * 86_400),
                },
            },
        }
    }

    /// The defaults with some settings changed.
    fn set(f: impl FnOnce(&mut Settings)) -> Config {
        let mut c = good();
        f(&mut c.settings);
        c
    }

    /// The error `bad` gets, checked to name `field` in its words.
    fn refused(bad: Config, field: &str) -> ConfigError {
        let e = bad.validate().expect_err(field);
        assert_eq!(e.field(), field, "{e}");
        if field != "--listen" {
            assert!(e.to_string().starts_with(field), "{e}");
        }
        e
    }

    #[test]
    fn the_defaults_and_edges_of_each_range_are_accepted() {
        good().validate().expect("defaults");
        for ok in [
            Config { leader_ttl_s: 2, ..good() },
            Config { leader_ttl_s: 60, ..good() },
            set(|s| {
                s.lease = Duration::ZERO;
                s.suspect_after = Duration::from_secs(3600);
            }),
            set(|s| {
                s.lease = Duration::from_secs(4);
                s.suspect_after = Duration::from_secs(2);
            }),
            set(|s| {
                s.cpu_overcommit = 1.0;
                s.memory_overcommit = f64::INFINITY;
            }),
            set(|s| {
                s.host_timeout = Duration::from_secs(1);
                s.migrations_out = 1;
                s.migrations_in = 1;
            }),
            Config { listen: "0.0.0.0:7700".parse().expect("address"), token: Some("t".into()), ..good() },
            Config { listen: "0.0.0.0:7700".parse().expect("address"), insecure: true, ..good() },
            Config { listen: "[::1]:7700".parse().expect("address"), ..good() },
        ] {
            ok.validate().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn the_leader_ttl_is_2_to_60_seconds() {
        for bad in [i64::MIN, -1, 0, 1, 61, i64::MAX] {
            let e = refused(Config { leader_ttl_s: bad, ..good() }, "--leader-ttl");
            assert_eq!(e.to_string(), format!("--leader-ttl {bad} is out of range: give 2 to 60 seconds"));
        }
    }

    #[test]
    fn the_lease_outlasts_a_suspicion_by_2_s() {
        for (lease, suspect) in [(3_999, 2_000), (1, 0), (1_999, 0), (u64::MAX / 2, u64::MAX)] {
            let bad = set(|s| {
                s.lease = Duration::from_millis(lease);
                s.suspect_after = Duration::from_millis(suspect);
            });
            let e = refused(bad, "--lease");
            assert!(e.to_string().contains("--suspect-after"), "{e}");
        }
    }

    #[test]
    fn overcommit_is_at_least_one_and_a_number() {
        for bad in [f64::NAN, 0.999, 0.0, -1.0, f64::NEG_INFINITY] {
            let e = refused(
                set(|s| {
                    s.cpu_overcommit = bad;
                }),
                "--cpu-overcommit",
            );
            assert_eq!(e.to_string(), "--cpu-overcommit must be at least 1.0");
            let e = refused(
                set(|s| {
                    s.memory_overcommit = bad;
                }),
                "--memory-overcommit",
            );
            assert_eq!(e.to_string(), "--memory-overcommit must be at least 1.0");
        }
    }

    #[test]
    fn a_host_timeout_and_migration_slots_may_not_be_zero() {
        for t in [Duration::ZERO, Duration::from_millis(999)] {
            refused(
                set(|s| {
                    s.host_timeout = t;
                }),
                "--host-timeout",
            );
        }
        refused(
            set(|s| {
                s.migrations_out = 0;
            }),
            "--migrations-out",
        );
        refused(
            set(|s| {
                s.migrations_in = 0;
            }),
            "--migrations-in",
        );
    }

    #[test]
    fn a_reachable_address_needs_a_token_or_insecure() {
        for addr in ["0.0.0.0:7700", "192.0.2.1:7700", "[::]:7700"] {
            let listen = addr.parse().expect("address");
            for token in [None, Some(String::new())] {
                let e = refused(Config { listen, token, ..good() }, "--listen");
                assert!(e.to_string().contains("--insecure"), "{e}");
            }
        }
    }
}
