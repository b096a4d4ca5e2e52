//! The agent's configuration (`corral agent --help`): its fields and the checks of their
//! values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_api::AccelMode;

use crate::uplink;

/// How the agent is configured (`corral agent --help`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name: a DNS label, as the controller registers it.
    pub name: String,
    pub listen: SocketAddr,
    /// URL the controller uses to reach this agent (defaults to http://LISTEN).
    pub advertise: Option<String>,
    /// Controller URLs, comma-separated (several when controllers share an etcd store).
    pub controller: String,
    pub data_dir: PathBuf,
    pub templates_dir: PathBuf,
    /// KVM, TCG, or auto: KVM after a test boot, else TCG.
    pub accel: AccelMode,
    pub accel_cache: Option<PathBuf>,
    /// vCPUs and memory (MiB) offered (default: the machine's); 1 at least.
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub qemu: String,
    /// Time between heartbeats (0.1 s at least).
    pub heartbeat: Duration,
    /// Time a guest may take to report ready (1 s at least).
    pub boot_timeout: Duration,
    /// API token: required on requests to this agent, and sent to the controller.
    pub token: Option<String>,
    /// The shared storage pool (the same directory on every host, e.g. an NFS mount).
    pub shared_dir: Option<PathBuf>,
    /// Isolation addresses (`--isolation-address`): with no peer known, reaching one of
    /// them tells a control-plane outage from isolation.
    pub isolation: Vec<std::net::Ipv4Addr>,
    /// Host interfaces bridged (provider) networks may join (`--provider-interfaces`); none:
    /// no bridged networks on this host.
    pub provider_interfaces: Vec<String>,
    /// Listen on a non-loopback address without a token (`--insecure`), with a warning.
    pub insecure: bool,
}

/// The shortest time between heartbeats.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// A value of [`Config`] out of its range; each names its flag and what it allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--name: {0}")]
    Name(String),
    #[error("--controller {0:?} is not a controller URL: give http://HOST:PORT, comma-separated for several")]
    Controller(String),
    #[error("--heartbeat {0:?} is too short: give 0.1 seconds at least")]
    Heartbeat(Duration),
    #[error("--boot-timeout must be at least 1 second")]
    BootTimeout(Duration),
    #[error("--vcpus must be at least 1")]
    Vcpus(u32),
    #[error("--memory must be at least 1 MiB")]
    Memory(u64),
    /// A non-loopback `listen` without a token or `insecure`.
    #[error(transparent)]
    Listen(#[from] corral_http::ListenError),
    /// A provider interface with a bad name, or the one holding the listen address.
    #[error(transparent)]
    ProviderInterfaces(#[from] uplink::UplinkError),
}

impl ConfigError {
    /// The flag whose value is refused.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Name(_) => "--name",
            ConfigError::Controller(_) => "--controller",
            ConfigError::Heartbeat(_) => "--heartbeat",
            ConfigError::BootTimeout(_) => "--boot-timeout",
            ConfigError::Vcpus(_) => "--vcpus",
            ConfigError::Memory(_) => "--memory",
            ConfigError::Listen(_) => "--listen",
            ConfigError::ProviderInterfaces(_) => "--provider-interfaces",
        }
    }
}

impl Config {
    /// Checks every value; [`crate::run`] does so before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        corral_api::names::validate_name("host", &self.name).map_err(ConfigError::Name)?;
        let urls = corral_client::parse_urls(&self.controller);
        if urls.is_empty() {
            return Err(ConfigError::Controller(self.controller.clone()));
        }
        for u in urls {
            let ok = reqwest::Url::parse(&u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.query().is_none());
            if !ok {
                return Err(ConfigError::Controller(u));
            }
        }
        if self.heartbeat < MIN_HEARTBEAT {
            return Err(ConfigError::Heartbeat(self.heartbeat));
        }
        if self.boot_timeout < Duration::from_secs(1) {
            return Err(ConfigError::BootTimeout(self.boot_timeout));
        }
        if let Some(v @ 0) = self.vcpus {
            return Err(ConfigError::Vcpus(v));
        }
        if let Some(m @ 0) = self.memory_mib {
            return Err(ConfigError::Memory(m));
        }
        corral_http::check_listen(self.listen, self.token.as_deref(), self.insecure)?;
        uplink::check_config(&self.provider_interfaces, self.listen)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults of `corral agent --name h1`.
    fn good() -> Config {
        Config {
            name: "h1".into(),
            listen: "127.0.0.1:7701".parse().expect("address"),
            advertise: None,
            controller: "http://127.0.0.1:7700".into(),
            data_dir: PathBuf::from("/var/lib/corral/agent"),
            templates_dir: PathBuf::from("/var/cache/corral/guest"),
            accel: AccelMode::Auto,
            accel_cache: None,
            vcpus: None,
            memory_mib: None,
            qemu: "qemu-system-x86_64".into(),
            heartbeat: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(180),
            token: None,
            shared_dir: None,
            isolation: Vec::new(),
            provider_interfaces: Vec::new(),
            insecure: false,
        }
    }

    /// The error `bad` gets, checked to name `field` in its words.
    fn refused(bad: Config, field: &str) -> ConfigError {
        let e = bad.validate().expect_err(field);
        assert_eq!(e.field(), field, "{e}");
        if field != "--listen" {
            assert!(e.to_string().contains(field), "{e}");
        }
        e
    }

    #[test]
    fn the_defaults_and_edges_of_each_range_are_accepted() {
        good().validate().expect("defaults");
        for ok in [
            Config { controller: "http://198.18.1.1:7700,http://198.18.1.2:7700/".into(), ..good() },
            Config { controller: "https://ctl.example:443".into(), ..good() },
            Config { heartbeat: MIN_HEARTBEAT, boot_timeout: Duration::from_secs(1), ..good() },
            Config { vcpus: Some(1), memory_mib: Some(1), ..good() },
            Config { listen: "0.0.0.0:7701".parse().expect("address"), token: Some("t".into()), ..good() },
            Config { listen: "0.0.0.0:7701".parse().expect("address"), insecure: true, ..good() },
            Config { provider_interfaces: vec!["eth1".into()], ..good() },
        ] {
            ok.validate().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn the_name_is_a_host_name() {
        for bad in ["", "H1", "-h", "h-", "a b", "h1;reboot", "../etc", &"x".repeat(64), "é"] {
            let e = refused(Config { name: bad.into(), ..good() }, "--name");
            assert!(e.to_string().contains("invalid host name"), "{e}");
        }
    }

    #[test]
    fn the_controller_is_one_url_or_more() {
        for bad in ["", ",", " , ", "127.0.0.1:7700", "ftp://c:21", "http://", "http://c:7700?x=1", "file:///etc"] {
            refused(Config { controller: bad.into(), ..good() }, "--controller");
        }
        let e = refused(Config { controller: "http://ok:1,nope".into(), ..good() }, "--controller");
        assert!(e.to_string().contains("\"nope\""), "the bad one is named: {e}");
    }

    #[test]
    fn times_and_sizes_have_a_floor() {
        for hb in [Duration::ZERO, Duration::from_millis(99)] {
            refused(Config { heartbeat: hb, ..good() }, "--heartbeat");
        }
        for t in [Duration::ZERO, Duration::from_millis(999)] {
            refused(Config { boot_timeout: t, ..good() }, "--boot-timeout");
        }
        refused(Config { vcpus: Some(0), ..good() }, "--vcpus");
        refused(Config { memory_mib: Some(0), ..good() }, "--memory");
    }

    #[test]
    fn a_reachable_address_needs_a_token_or_insecure() {
        for addr in ["0.0.0.0:7701", "192.0.2.1:7701", "[::]:7701"] {
            let listen = addr.parse().expect("address");
            for token in [None, Some(String::new())] {
                let e = refused(Config { listen, token, ..good() }, "--listen");
                assert!(e.to_string().contains("--insecure"), "{e}");
            }
        }
    }

    #[test]
    fn provider_interfaces_are_interface_names() {
        for bad in ["", "eth0/../x", "a b", &"e".repeat(16)] {
            refused(Config { provider_interfaces: vec![bad.into()], ..good() }, "--provider-interfaces");
        }
    }
}
