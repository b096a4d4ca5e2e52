//! The controller's configuration (`corral controller --help`): its fields, the checks of
//! their values, and the service settings made from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_api::HaAdmission;

use crate::{retention, service};

/// How the controller is configured (`corral controller --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A host is shown unreachable when no heartbeat came for this long (1 s at least).
    pub host_timeout: Duration,
    /// vCPUs that may be promised per physical CPU (1.0 at least).
    pub cpu_overcommit: f64,
    /// Memory that may be promised per MiB of a host (1.0 at least: none).
    pub memory_overcommit: f64,
    /// Template library sent to hosts that lack a template.
    pub templates_dir: Option<PathBuf>,
    /// API token every request must carry (None: no check).
    pub token: Option<String>,
    /// Concurrent live migrations per host, outbound and inbound (1 at least).
    pub migrations_out: usize,
    pub migrations_in: usize,
    /// Shell commands that power a host down for standby and up again (`{host}` replaced).
    pub standby_command: Option<String>,
    pub wake_command: Option<String>,
    /// HA: agents' lease (zero: no HA; else 2 s longer than `suspect_after` at least), when
    /// a silent host becomes a suspect, and how long a returned host recovers before it
    /// takes VMs.
    pub lease: Duration,
    pub suspect_after: Duration,
    pub recover_after: Duration,
    /// HA admission control: failed hosts to keep room for, and what to do with an HA VM
    /// that would break that reserve.
    pub ha_reserve_hosts: usize,
    pub ha_admission: HaAdmission,
    /// etcd endpoints for the state (empty: the embedded redb file in `data_dir`).
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub etcd_prefix: String,
    /// With etcd: the leader lease, seconds (2 to 60; a standby takes over this long after
    /// the leader dies).
    pub leader_ttl_s: i64,
    /// The URL other controllers, agents and clients reach this one at (default http://LISTEN).
    pub advertise: Option<String>,
    /// How many events, migrations and operations are kept, and for how long.
    pub retention: retention::Retention,
    /// Listen on a non-loopback address without a token (`--insecure`), with a warning.
    pub insecure: bool,
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
        if !(2..=60).contains(&self.leader_ttl_s) {
            return Err(ConfigError::LeaderTtl(self.leader_ttl_s));
        }
        if !self.lease.is_zero() && self.lease < self.suspect_after.saturating_add(Duration::from_secs(2)) {
            return Err(ConfigError::LeaseTooShort { lease: self.lease, suspect_after: self.suspect_after });
        }
        if self.cpu_overcommit.is_nan() || self.cpu_overcommit < 1.0 {
            return Err(ConfigError::CpuOvercommit(self.cpu_overcommit));
        }
        if self.memory_overcommit.is_nan() || self.memory_overcommit < 1.0 {
            return Err(ConfigError::MemoryOvercommit(self.memory_overcommit));
        }
        if self.host_timeout < Duration::from_secs(1) {
            return Err(ConfigError::HostTimeout(self.host_timeout));
        }
        if self.migrations_out == 0 {
            return Err(ConfigError::MigrationsOut(self.migrations_out));
        }
        if self.migrations_in == 0 {
            return Err(ConfigError::MigrationsIn(self.migrations_in));
        }
        corral_http::check_listen(self.listen, self.token.as_deref(), self.insecure)?;
        Ok(())
    }
}

/// The service's share of the configuration: the one place a setting passes from one to the
/// other.
impl From<&Config> for service::Settings {
    fn from(cfg: &Config) -> Self {
        service::Settings {
            host_timeout: cfg.host_timeout,
            cpu_overcommit: cfg.cpu_overcommit,
            memory_overcommit: cfg.memory_overcommit,
            templates_dir: cfg.templates_dir.clone(),
            migrations_out: cfg.migrations_out,
            migrations_in: cfg.migrations_in,
            standby_command: cfg.standby_command.clone(),
            wake_command: cfg.wake_command.clone(),
            lease: cfg.lease,
            suspect_after: cfg.suspect_after,
            recover_after: cfg.recover_after,
            ha_reserve_hosts: cfg.ha_reserve_hosts,
            ha_admission: cfg.ha_admission,
            retention: cfg.retention,
        }
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
            host_timeout: Duration::from_secs(5),
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            templates_dir: None,
            token: None,
            migrations_out: 2,
            migrations_in: 2,
            standby_command: None,
            wake_command: None,
            lease: Duration::from_secs(7),
            suspect_after: Duration::from_secs(2),
            recover_after: Duration::from_secs(30),
            ha_reserve_hosts: 1,
            ha_admission: HaAdmission::Refuse,
            etcd: Vec::new(),
            etcd_prefix: "/corral/".into(),
            leader_ttl_s: 3,
            advertise: None,
            retention: retention::Retention {
                events: 10_000,
                history: 1_000,
                max_age: Duration::from_secs(30 * 86_400),
            },
            insecure: false,
        }
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
            Config { lease: Duration::ZERO, suspect_after: Duration::from_secs(3600), ..good() },
            Config { lease: Duration::from_secs(4), suspect_after: Duration::from_secs(2), ..good() },
            Config { cpu_overcommit: 1.0, memory_overcommit: f64::INFINITY, ..good() },
            Config { host_timeout: Duration::from_secs(1), migrations_out: 1, migrations_in: 1, ..good() },
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
            let bad =
                Config { lease: Duration::from_millis(lease), suspect_after: Duration::from_millis(suspect), ..good() };
            let e = refused(bad, "--lease");
            assert!(e.to_string().contains("--suspect-after"), "{e}");
        }
    }

    #[test]
    fn overcommit_is_at_least_one_and_a_number() {
        for bad in [f64::NAN, 0.999, 0.0, -1.0, f64::NEG_INFINITY] {
            let e = refused(Config { cpu_overcommit: bad, ..good() }, "--cpu-overcommit");
            assert_eq!(e.to_string(), "--cpu-overcommit must be at least 1.0");
            let e = refused(Config { memory_overcommit: bad, ..good() }, "--memory-overcommit");
            assert_eq!(e.to_string(), "--memory-overcommit must be at least 1.0");
        }
    }

    #[test]
    fn a_host_timeout_and_migration_slots_may_not_be_zero() {
        for t in [Duration::ZERO, Duration::from_millis(999)] {
            refused(Config { host_timeout: t, ..good() }, "--host-timeout");
        }
        refused(Config { migrations_out: 0, ..good() }, "--migrations-out");
        refused(Config { migrations_in: 0, ..good() }, "--migrations-in");
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

    #[test]
    fn the_settings_carry_the_configuration() {
        let cfg = Config { ha_admission: HaAdmission::Warn, migrations_out: 3, ..good() };
        let s = service::Settings::from(&cfg);
        assert_eq!(s.ha_admission, HaAdmission::Warn);
        assert_eq!((s.migrations_out, s.migrations_in), (3, 2));
        assert_eq!((s.lease, s.host_timeout), (cfg.lease, cfg.host_timeout));
        assert_eq!(service::Settings::from(&good()).ha_admission, HaAdmission::Refuse);
    }
}
