//! `corral controller`, `corral agent` and the agent's watchdog: their flags, parsed into each
//! daemon's configuration (which the daemon checks), and the launch of each daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use corral_api::{AccelMode, HaAdmission};

use crate::tokens::token_from_file;
use crate::{init_logs, migrate};

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    #[arg(long, default_value = "/var/lib/corral/controller")]
    data: PathBuf,
    /// Seconds without heartbeat before a host is shown unreachable.
    #[arg(long, default_value = "5", value_parser = whole_seconds_arg)]
    host_timeout: Duration,
    /// vCPUs that may be promised per physical CPU.
    #[arg(long, default_value_t = 4.0)]
    cpu_overcommit: f64,
    /// Memory that may be promised per MiB of a host (1.0: no overcommit).
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Template library, sent to hosts that lack a template (default: CORRAL_CACHE/guest).
    #[arg(long)]
    templates: Option<PathBuf>,
    /// File holding the API token; made with a fresh random token if missing. It must be
    /// readable by its owner only (mode 600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without --token-file (anyone who reaches
    /// the controller can then run and delete VMs).
    #[arg(long)]
    insecure: bool,
    /// Live migrations a host may send at once; more wait in a queue.
    #[arg(long, default_value_t = 2)]
    migrations_out: usize,
    /// Live migrations a host may receive at once.
    #[arg(long, default_value_t = 2)]
    migrations_in: usize,
    /// Shell command that powers a host down when consolidation puts it in standby
    /// (`{host}` is replaced by its name), e.g. an IPMI call. Without it, standby hosts are
    /// only parked (no placements).
    #[arg(long)]
    standby_command: Option<String>,
    /// Shell command that powers a standby host up again (e.g. Wake-on-LAN).
    #[arg(long)]
    wake_command: Option<String>,
    /// HA lease of each agent (0 turns HA off): renewed by every heartbeat. An
    /// agent that cannot renew it stops its VMs before it runs out; a failed host's VMs
    /// restart elsewhere only after it has. Keep it well above a heartbeat and a
    /// controller pause you want to ride out.
    #[arg(long, default_value = "7s", value_parser = duration_arg)]
    lease: Duration,
    /// Missing heartbeats for this long make a host a suspect, checked by its peers.
    #[arg(long, default_value = "2s", value_parser = duration_arg)]
    suspect_after: Duration,
    /// A failed host that comes back takes no VMs for this long (damping).
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    recover_after: Duration,
    /// HA admission control: keep room to restart the HA VMs of this many failed hosts
    /// (0: no check).
    #[arg(long, default_value_t = 1)]
    ha_reserve_hosts: usize,
    /// What to do with an HA VM that would break that reserve: refuse it, or warn (an
    /// event) and admit it.
    #[arg(long, default_value = "refuse")]
    ha_admission: HaAdmission,
    /// Keep the state in etcd (v3 API) at these endpoints (comma-separated host:port)
    /// instead of the embedded file in --data.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix of Corral's state in etcd.
    #[arg(long, default_value = "/corral/")]
    etcd_prefix: String,
    /// With --etcd: seconds a leader's lease lasts; a standby controller takes over this
    /// long after the leader dies.
    #[arg(long, default_value_t = 3)]
    leader_ttl: i64,
    /// The URL agents, clients and other controllers reach this controller at (default
    /// http://LISTEN).
    #[arg(long)]
    advertise: Option<String>,
    /// Events kept (the oldest are removed beyond this).
    #[arg(long, default_value_t = 10_000)]
    keep_events: usize,
    /// Finished migrations, and finished operations, kept (each).
    #[arg(long, default_value_t = 1_000)]
    keep_history: usize,
    /// Events, migrations and operations that ended longer ago than this are removed.
    #[arg(long, default_value = "30d", value_parser = duration_arg)]
    keep_for: Duration,
    /// The largest image file `image import` takes (e.g. 64G).
    #[arg(long, default_value = "64G", value_parser = size_arg)]
    max_image_size: u64,
}

/// A size in bytes: `512M`, `64G`.
fn size_arg(s: &str) -> Result<u64, String> {
    corral_api::size::parse_mib(s).map(|m| m << 20)
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Host name, as shown in `corral host list`.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// URL the controller uses to reach this agent (default http://LISTEN).
    #[arg(long)]
    advertise: Option<String>,
    /// Controller URL.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    controller: String,
    #[arg(long, default_value = "/var/lib/corral/agent")]
    data: PathBuf,
    /// Directory of templates (default: CORRAL_CACHE/guest).
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Accelerator: auto probes KVM with a bounded test boot and falls back to TCG.
    #[arg(long, default_value = "auto")]
    accel: AccelMode,
    /// File caching the probe's verdict, shared by the agents of one machine.
    #[arg(long)]
    accel_cache: Option<PathBuf>,
    /// vCPUs offered (default: the machine's CPUs).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory offered, MiB (default: the machine's memory).
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Seconds between heartbeats.
    #[arg(long, default_value = "1", value_parser = seconds_arg)]
    heartbeat: Duration,
    /// Seconds a guest may take to report ready.
    #[arg(long, default_value = "180", value_parser = whole_seconds_arg)]
    boot_timeout: Duration,
    /// File holding the API token shared with the controller (mode 600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without --token-file (anyone who reaches
    /// the agent can then run, read and delete this host's VMs).
    #[arg(long)]
    insecure: bool,
    /// Host interfaces bridged (provider) networks may join, comma-separated (default: none).
    /// Never the underlay interface (the one holding --listen's address); one untagged
    /// bridged network per interface.
    #[arg(long, value_delimiter = ',')]
    provider_interfaces: Vec<String>,
    /// The shared storage pool: the same directory on every host (e.g. an NFS mount). VMs
    /// created with --storage shared keep their disk there and can restart on another host.
    #[arg(long)]
    shared_dir: Option<PathBuf>,
    /// An address to ping when this host knows no peer (repeat or comma-separate): reaching
    /// one tells a control-plane outage from isolation. Isolated hosts stop their HA VMs.
    #[arg(long = "isolation-address", value_delimiter = ',')]
    isolation_address: Vec<std::net::Ipv4Addr>,
}

/// A duration option: 500ms, 10s, 2m.
fn duration_arg(s: &str) -> Result<Duration, String> {
    migrate::parse_ms(s).map(Duration::from_millis).map_err(|e| e.to_string())
}

/// A number of seconds, fractions allowed: 0.5, 1, 2.5.
fn seconds_arg(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("invalid number of seconds {s:?}: write e.g. 0.5 or 2"))
}

/// A whole number of seconds: 5, 180.
fn whole_seconds_arg(s: &str) -> Result<Duration, String> {
    s.trim().parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string())
}

/// Where guest assets and machine-wide caches live: $CORRAL_CACHE, else `.cache` of the
/// checkout this binary was built in, else /var/cache/corral.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("CORRAL_CACHE") {
        return PathBuf::from(c);
    }
    if let Ok(exe) = std::env::current_exe() {
        // <repo>/target/<profile>/corral
        if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            let c = repo.join(".cache");
            if c.join("guest").exists() {
                return c;
            }
        }
    }
    PathBuf::from("/var/cache/corral")
}

impl ControllerArgs {
    /// The controller's configuration these flags give (the token read, or made, from its file).
    fn config(self) -> Result<corral_controller::Config> {
        Ok(corral_controller::Config {
            listen: self.listen,
            data_dir: self.data,
            token: self.token_file.map(|f| token_from_file(&f, true)).transpose()?,
            etcd: self.etcd,
            etcd_prefix: self.etcd_prefix,
            leader_ttl_s: self.leader_ttl,
            advertise: self.advertise,
            insecure: self.insecure,
            settings: corral_controller::Settings {
                host_timeout: self.host_timeout,
                cpu_overcommit: self.cpu_overcommit,
                memory_overcommit: self.memory_overcommit,
                templates_dir: Some(self.templates.unwrap_or_else(|| cache_dir().join("guest"))),
                max_image_bytes: self.max_image_size,
                migrations_out: self.migrations_out,
                migrations_in: self.migrations_in,
                standby_command: self.standby_command,
                wake_command: self.wake_command,
                lease: self.lease,
                suspect_after: self.suspect_after,
                recover_after: self.recover_after,
                ha_reserve_hosts: self.ha_reserve_hosts,
                ha_admission: self.ha_admission,
                retention: corral_controller::retention::Retention {
                    events: self.keep_events,
                    history: self.keep_history,
                    max_age: self.keep_for,
                },
            },
        })
    }
}

impl AgentArgs {
    /// The agent's configuration these flags give (the token read from its file).
    fn config(self) -> Result<corral_agent::Config> {
        Ok(corral_agent::Config {
            name: self.name,
            listen: self.listen,
            advertise: self.advertise,
            controller: self.controller,
            data_dir: self.data,
            templates_dir: self.templates.unwrap_or_else(|| cache_dir().join("guest")),
            accel: self.accel,
            accel_cache: self.accel_cache,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            qemu: self.qemu,
            heartbeat: self.heartbeat,
            boot_timeout: self.boot_timeout,
            token: self.token_file.map(|f| token_from_file(&f, false)).transpose()?,
            shared_dir: self.shared_dir,
            isolation: self.isolation_address,
            provider_interfaces: self.provider_interfaces,
            insecure: self.insecure,
        })
    }
}

/// Runs the controller until it ends (it checks its configuration first).
pub async fn controller(a: ControllerArgs) -> Result<()> {
    init_logs("info");
    corral_controller::run(a.config()?).await?;
    Ok(())
}

/// Runs the agent of this host until it ends (it checks its configuration first).
pub async fn agent(a: AgentArgs) -> Result<()> {
    init_logs("info");
    corral_agent::run(a.config()?).await?;
    Ok(())
}

/// Runs the fencing watchdog of the agent whose data directory is `data`.
pub async fn watchdog(data: PathBuf) -> Result<()> {
    init_logs("info");
    corral_agent::watchdog::run(data).await?;
    Ok(())
}
