//! `corral`: one binary for the whole system. `corral controller` and `corral agent` run the
//! daemons, `corral lab` makes a lab of hosts on one machine, and the other subcommands are the
//! client of the controller's REST API.

mod client;
mod clusters;
mod drs;
mod migrate;
mod output;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use corral_api::{ConsoleChunk, CreateVm, ExecRequest, ExecResult, Host, Template, Vm};

use client::Client;

#[derive(Debug, Parser)]
#[command(name = "corral", version, about = "Corral: virtual clusters of real VMs over many hosts")]
struct Cli {
    /// Controller URL (default: the local lab's, else http://127.0.0.1:7700).
    #[arg(long, global = true, env = "CORRAL_URL")]
    url: Option<String>,
    /// API token (default: the local lab's).
    #[arg(long, global = true, env = "CORRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `corral sim`'s own command line.
#[derive(Debug, Parser)]
#[command(name = "corral sim", about = "Replay utilisation traces through the scheduler core's policies")]
struct SimCli {
    #[command(flatten)]
    args: corral_sim::cli::Args,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controller.
    Controller {
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        #[arg(long, default_value = "/var/lib/corral/controller")]
        data: PathBuf,
        /// Seconds without heartbeat before a host is shown unreachable.
        #[arg(long, default_value_t = 5)]
        host_timeout: u64,
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
        #[arg(long, default_value = "refuse", value_parser = ["refuse", "warn"])]
        ha_admission: String,
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
    },
    /// The controller's state store.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Run the agent of this host.
    Agent(AgentArgs),
    /// The fencing watchdog the agent starts (it outlives the agent; not for direct use).
    #[command(name = "agent-watchdog", hide = true)]
    AgentWatchdog {
        /// The agent's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// A lab of hosts (network namespaces) on this machine.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Hosts of the pool.
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// Templates (disk images with an OS preinstalled).
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
    /// Virtual machines.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Profiles: pre-edited VM configurations (TOML).
    Profile {
        #[command(subcommand)]
        cmd: clusters::ProfileCmd,
    },
    /// Virtual clusters: groups of VMs deployed, scaled, suspended and resumed as one.
    Cluster {
        #[command(subcommand)]
        cmd: clusters::ClusterCmd,
    },
    /// Long operations (cluster deployments and the like).
    Operation {
        #[command(subcommand)]
        cmd: clusters::OpCmd,
    },
    /// Virtual networks (one overlay per cluster).
    Network {
        #[command(subcommand)]
        cmd: clusters::NetworkCmd,
    },
    /// Automatic load balancing and consolidation (DRS): settings, plan, history.
    Drs {
        #[command(subcommand)]
        cmd: drs::DrsCmd,
    },
    /// High availability: which VMs a host failure would restart elsewhere, which not, and
    /// whether the others have room for them.
    Ha {
        #[command(subcommand)]
        cmd: HaCmd,
    },
    /// The event log.
    Events,
    /// Replay utilisation traces through the scheduler core's balancing and consolidation
    /// policies (default: Corral's) and report energy, SLA and migrations
    /// (`corral sim --help` for its options).
    #[command(disable_help_flag = true)]
    Sim {
        /// The simulator's arguments: --trace DIR [--policy NAME] [--param X] [--mix FILE] [--output table|json]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
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
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    accel: String,
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
    #[arg(long, default_value_t = 1.0)]
    heartbeat: f64,
    /// Seconds a guest may take to report ready.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
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

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Make the controller and N hosts, each a network namespace running an agent.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Lab number (1-250): its underlay is 198.18.INDEX.0/24.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
        index: u8,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
        #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// Controllers: with more than one they share a 3-member etcd cluster the lab runs
        /// on loopback; one leads, the others stand by and take over when it dies.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
        controllers: u32,
    },
    /// Remove every namespace, device, process and file the lab made.
    Down {
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
    /// Power a lab host off (its agent stops, as in standby) or on again. The lab's controller
    /// runs these for consolidation's standby and wake-up.
    Power {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        host: String,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
    /// Fail a host as a power loss does: its agent and QEMU processes die at once and its
    /// underlay link goes down (`corral lab heal` powers it back).
    Kill {
        host: String,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
    /// Cut a host's underlay link (its processes keep running, cut off).
    Partition {
        host: String,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
    /// Restore a killed or partitioned host: link up, agent started again if it was killed.
    Heal {
        host: String,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
    /// Show the lab.
    Status {
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Copy every table from one state store to another, e.g. from the embedded file to etcd:
    /// `corral store migrate --from redb:/var/lib/corral/controller/state.redb --to
    /// etcd:10.0.0.1:2379,10.0.0.2:2379/corral/`. Stop the controller first.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

/// Opens a store named `redb:PATH` or `etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]`.
fn open_store(spec: &str) -> Result<Box<dyn corral_store::Store>> {
    if let Some(path) = spec.strip_prefix("redb:") {
        if !Path::new(path).exists() {
            bail!("no redb store at {path}: give the controller's <data>/state.redb");
        }
        return Ok(Box::new(corral_store::RedbStore::open(Path::new(path))?));
    }
    if let Some(rest) = spec.strip_prefix("etcd:") {
        let (eps, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/corral/"),
        };
        let eps: Vec<String> = eps.split(',').filter(|e| !e.is_empty()).map(String::from).collect();
        if eps.is_empty() {
            bail!("{spec:?} names no etcd endpoint: write etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]");
        }
        return Ok(Box::new(corral_store::EtcdStore::connect(&eps, prefix)?));
    }
    bail!("unknown store {spec:?}: write redb:PATH or etcd:HOST:PORT[,HOST:PORT...][/PREFIX/]")
}

#[derive(Debug, Subcommand)]
enum HaCmd {
    /// Protected and unprotected VMs, hosts down, spare capacity, lease.
    Status,
    /// Each controller of --url / CORRAL_URL: up or not, leading or standing by.
    Controllers,
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// List hosts: state, accelerator, capacity, VMs, usage.
    List,
    /// Show one host.
    Show { name: String },
    /// Take no new VMs on this host.
    Cordon { name: String },
    /// Take new VMs on this host again.
    Uncordon { name: String },
    /// Set the host's labels (replacing them): corral host label lab-1 rack=r1 ssd=true
    Label { name: String, labels: Vec<String> },
    /// Maintenance: cordon the host and move every VM off it (live-migrating running ones).
    Evacuate {
        name: String,
        /// Print the operation's id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Power a standby host up (runs the controller's wake command) and wait for its agent.
    Wake { name: String },
    /// Put an empty host in standby (runs the controller's standby command).
    Standby { name: String },
}

#[derive(Debug, Subcommand)]
enum TemplateCmd {
    /// List templates.
    List,
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// Create a VM from a template (copy-on-write disk) and start it.
    Create {
        name: String,
        #[arg(long, default_value = "base")]
        template: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory, e.g. 256M or 1G.
        #[arg(long, default_value = "256M")]
        memory: String,
        /// Host to place it on (default: the scheduler chooses).
        #[arg(long)]
        host: Option<String>,
        /// Guest workload: idle | cpu | dirty:<MiB/s>[:<MiB>].
        #[arg(long)]
        workload: Option<String>,
        /// Define it but do not start it.
        #[arg(long)]
        no_start: bool,
        /// When its host fails: restart (elsewhere, with its disk as it was: shared storage
        /// only), restart-fresh (elsewhere, from its template, same name, UUID, MAC and IP;
        /// what it wrote stays behind) or off (it waits for its host). Default: restart on
        /// shared storage, off on local storage.
        #[arg(long, value_parser = ["off", "restart", "restart-fresh"])]
        ha: Option<String>,
        /// Where its disk lives: local (on its host) or shared (the pool every host mounts).
        #[arg(long, default_value = "local", value_parser = ["local", "shared"])]
        storage: String,
    },
    /// List VMs.
    List,
    /// Show one VM.
    Show { name: String },
    /// Start an inactive VM.
    Start { name: String },
    /// Stop a VM gracefully (ACPI power-off, forced after a timeout).
    Stop { name: String },
    /// Pause a running VM (vCPUs stop; memory stays).
    Pause { name: String },
    /// Resume a paused or suspended VM.
    Resume { name: String },
    /// Suspend a VM: memory and device state to disk, process ended.
    Suspend { name: String },
    /// Delete a VM and its disk.
    Delete { name: String },
    /// Move a stopped or suspended VM to another host (identity, disk and memory go with it).
    Move {
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Live-migrate a running VM to another host (disk and memory; it keeps running).
    Migrate(migrate::MigrateArgs),
    /// Migration history: source, destination, mode, rounds, total time, downtime, bytes, result.
    Migrations { name: Option<String> },
    /// Show the VM's serial console.
    Console {
        name: String,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run a command in the guest; its exit code becomes corral's.
    Exec {
        name: String,
        /// Seconds before the command is killed.
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// Where guest assets and machine-wide caches live: $CORRAL_CACHE, else `.cache` of the
/// checkout this binary was built in, else /var/cache/corral.
/// A duration option: 500ms, 10s, 2m.
fn duration_arg(s: &str) -> Result<Duration, String> {
    migrate::parse_ms(s).map(Duration::from_millis).map_err(|e| e.to_string())
}

/// The options of an existing lab, for commands that act on it.
fn lab_options(dir: PathBuf) -> anyhow::Result<corral_lab::UpOptions> {
    let s = corral_lab::LabState::load(&dir)?.with_context(|| format!("no lab in {}", dir.display()))?;
    let cache = cache_dir();
    Ok(corral_lab::UpOptions {
        hosts: s.hosts.len() as u32,
        index: s.index,
        dir,
        templates: cache.join("guest"),
        cache,
        exe: std::env::current_exe().context("cannot find the corral binary")?,
        accel: s.accel.clone(),
        controllers: 1 + s.standby_controllers.len() as u32,
    })
}

fn cache_dir() -> PathBuf {
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

fn local_lab() -> Option<corral_lab::LabState> {
    let dir =
        std::env::var_os("CORRAL_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/corral/lab"));
    corral_lab::LabState::load(&dir).ok().flatten()
}

fn default_url() -> String {
    local_lab().map(|s| s.url).unwrap_or_else(|| "http://127.0.0.1:7700".into())
}

/// A name as the API takes it; refused here already, saying which name (`kind`).
pub(crate) fn name_arg(kind: &str, s: &str) -> Result<corral_api::types::Name> {
    corral_api::names::validate_name(kind, s).map_err(anyhow::Error::msg)?;
    s.parse().map_err(anyhow::Error::msg)
}

fn default_token() -> Option<String> {
    local_lab().and_then(|s| std::fs::read_to_string(s.token_file()).ok()).map(|t| t.trim().to_string())
}

/// Reads a token file, or makes one with a fresh random token (readable by root only).
fn token_from_file(path: &Path, create: bool) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        // Only a file its owner alone may read (the fix is in the error).
        Ok(_) => Ok(corral_http::read_token_file(path)?),
        Err(_) if create => {
            let t = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            // Written aside, then linked into place: of controllers starting together, the
            // first link wins and the others read its token.
            let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write token file {}", tmp.display()))?;
            f.write_all(t.as_bytes())?;
            drop(f);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => token_from_file(path, false),
                Err(e) => Err(anyhow::Error::from(e).context(format!("cannot write token file {}", path.display()))),
            }
        }
        Err(e) => bail!(
            "cannot read token file {}: {e}: give the file the controller made (--token-file on the controller)",
            path.display()
        ),
    }
}

fn print<T: Serialize>(o: Output, v: &T, table: impl FnOnce(&T)) -> Result<()> {
    match o {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => table(v),
    }
    Ok(())
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Restores the default SIGPIPE action, so `corral vm list | head` ends quietly when the
/// reader goes away, as Unix tools do (Rust ignores SIGPIPE, which turns it into a panic in
/// `println!`).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always a valid
    // disposition for SIGPIPE.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

fn main() {
    default_sigpipe();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    let o = cli.output;
    let url = cli.url.clone().unwrap_or_else(default_url);
    let token = cli.token.clone().or_else(default_token);
    let client = || Client::new(&url, token.clone());
    match cli.cmd {
        Cmd::Controller {
            listen,
            data,
            host_timeout,
            cpu_overcommit,
            memory_overcommit,
            templates,
            token_file,
            insecure,
            migrations_out,
            migrations_in,
            standby_command,
            wake_command,
            lease,
            suspect_after,
            recover_after,
            ha_reserve_hosts,
            ha_admission,
            etcd,
            etcd_prefix,
            leader_ttl,
            advertise,
            keep_events,
            keep_history,
            keep_for,
        } => {
            if !(2..=60).contains(&leader_ttl) {
                bail!("--leader-ttl {leader_ttl} is out of range: give 2 to 60 seconds");
            }
            init_logs("info");
            if !lease.is_zero() && lease < suspect_after + Duration::from_secs(2) {
                bail!(
                    "--lease {lease:?} is too short: it must exceed --suspect-after ({suspect_after:?}) by 2 s at least, \
                     so a host is checked by its peers before its lease runs out"
                );
            }
            if cpu_overcommit.is_nan() || cpu_overcommit < 1.0 {
                bail!("--cpu-overcommit must be at least 1.0");
            }
            if memory_overcommit.is_nan() || memory_overcommit < 1.0 {
                bail!("--memory-overcommit must be at least 1.0");
            }
            let token = token_file.map(|f| token_from_file(&f, true)).transpose()?;
            corral_controller::run(corral_controller::Config {
                listen,
                data_dir: data,
                host_timeout: Duration::from_secs(host_timeout.max(1)),
                cpu_overcommit,
                memory_overcommit,
                templates_dir: Some(templates.unwrap_or_else(|| cache_dir().join("guest"))),
                token,
                migrations_out,
                migrations_in,
                standby_command,
                wake_command,
                lease,
                suspect_after,
                recover_after,
                ha_reserve_hosts,
                ha_admission_warn: ha_admission == "warn",
                etcd,
                etcd_prefix,
                leader_ttl_s: leader_ttl,
                advertise,
                retention: corral_controller::retention::Retention {
                    events: keep_events,
                    history: keep_history,
                    max_age: keep_for,
                },
                insecure,
            })
            .await?;
        }
        Cmd::Store { cmd: StoreCmd::Migrate { from, to } } => {
            let (src, dst) = (open_store(&from)?, open_store(&to)?);
            let (tables, entries) = corral_store::copy(src.as_ref(), dst.as_ref(), 100)
                .with_context(|| format!("copying the state from {from} to {to}"))?;
            eprintln!("store migrate: {entries} entries in {tables} tables copied from {from} to {to}");
        }
        Cmd::Agent(a) => {
            init_logs("info");
            let templates = a.templates.unwrap_or_else(|| cache_dir().join("guest"));
            corral_agent::run(corral_agent::Config {
                name: a.name,
                listen: a.listen,
                advertise: a.advertise,
                controller: a.controller,
                data_dir: a.data,
                templates_dir: templates,
                accel: a.accel,
                accel_cache: a.accel_cache,
                vcpus: a.vcpus,
                memory_mib: a.memory,
                qemu: a.qemu,
                heartbeat: Duration::from_secs_f64(a.heartbeat.max(0.1)),
                boot_timeout: Duration::from_secs(a.boot_timeout),
                token: a.token_file.map(|f| token_from_file(&f, false)).transpose()?,
                shared_dir: a.shared_dir,
                isolation: a.isolation_address,
                provider_interfaces: a.provider_interfaces,
                insecure: a.insecure,
            })
            .await?;
        }
        Cmd::AgentWatchdog { data } => {
            init_logs("info");
            corral_agent::watchdog::run(data).await?;
        }
        Cmd::Lab { cmd } => return lab(cmd, o).await,
        Cmd::Sim { args } => {
            // The simulator parses its own options (its --output is its own).
            let argv = std::iter::once("corral sim".to_string()).chain(args);
            match SimCli::try_parse_from(argv) {
                Ok(a) => corral_sim::cli::main(a.args)?,
                Err(e) => e.exit(),
            }
        }
        Cmd::Host { cmd } => {
            let c = client()?;
            match cmd {
                HostCmd::List => print(o, &c.get::<Vec<Host>>("/v1/hosts").await?, |h| output::hosts(h))?,
                HostCmd::Show { name } => print(o, &c.get::<Host>(&format!("/v1/hosts/{name}")).await?, output::host)?,
                HostCmd::Cordon { name } => {
                    print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/cordon"), &()).await?, output::host)?
                }
                HostCmd::Uncordon { name } => {
                    print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/uncordon"), &()).await?, output::host)?
                }
                HostCmd::Evacuate { name, no_wait } => {
                    return migrate::evacuate(&name, no_wait, &c, o == Output::Json).await
                }
                HostCmd::Wake { name } => {
                    print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/wake"), &()).await?, output::host)?
                }
                HostCmd::Standby { name } => {
                    print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/standby"), &()).await?, output::host)?
                }
                HostCmd::Label { name, labels } => {
                    let mut map = std::collections::BTreeMap::new();
                    for l in labels {
                        let (k, v) = l.split_once('=').with_context(|| format!("label {l:?} must be KEY=VALUE"))?;
                        map.insert(k.to_string(), v.to_string());
                    }
                    print(o, &c.put::<_, Host>(&format!("/v1/hosts/{name}/labels"), &map).await?, output::host)?
                }
            }
        }
        Cmd::Template { cmd: TemplateCmd::List } => {
            let c = client()?;
            print(o, &c.get::<Vec<Template>>("/v1/templates").await?, |t| output::templates(t))?;
        }
        Cmd::Vm { cmd } => return vm(cmd, &client()?, o).await,
        Cmd::Drs { cmd } => drs::drs(cmd, &client()?, o == Output::Json).await?,
        Cmd::Ha { cmd: HaCmd::Controllers } => {
            let rows: Vec<serde_json::Value> = client()?
                .get_each("/v1/leader")
                .await
                .into_iter()
                .map(|(url, r)| match r {
                    Ok(v) => {
                        serde_json::json!({"url": url, "up": true, "leading": v["leading"], "leader": v["leader"]})
                    }
                    Err(e) => serde_json::json!({"url": url, "up": false, "leading": false, "error": e.to_string()}),
                })
                .collect();
            print(o, &rows, |rows| {
                output::table(
                    &["CONTROLLER", "STATE", "LEADER"],
                    rows.iter()
                        .map(|r| {
                            let state = if r["up"] != true {
                                "down".to_string()
                            } else if r["leading"] == true {
                                "leading".into()
                            } else {
                                "standby".into()
                            };
                            vec![
                                r["url"].as_str().unwrap_or("").into(),
                                state,
                                r["leader"].as_str().unwrap_or("-").into(),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        Cmd::Ha { cmd: HaCmd::Status } => {
            let st: corral_api::HaStatus = client()?.get("/v1/ha").await?;
            print(o, &st, output::ha)?;
        }
        Cmd::Network { cmd } => clusters::network(cmd, &client()?, o == Output::Json).await?,
        Cmd::Profile { cmd } => clusters::profile(cmd, &client()?, o == Output::Json).await?,
        Cmd::Cluster { cmd } => return clusters::cluster(cmd, &client()?, o == Output::Json).await,
        Cmd::Operation { cmd } => return clusters::operation(cmd, &client()?, o == Output::Json).await,
        Cmd::Events => {
            let ev: Vec<corral_api::cluster::Event> = client()?.get("/v1/events").await?;
            print(o, &ev, |ev| output::events(ev))?;
        }
    }
    Ok(0)
}

async fn lab(cmd: LabCmd, o: Output) -> Result<i32> {
    init_logs("warn");
    match cmd {
        LabCmd::Up { hosts, index, dir, accel, controllers } => {
            let cache = cache_dir();
            let opts = corral_lab::UpOptions {
                hosts,
                index,
                dir,
                templates: cache.join("guest"),
                cache,
                exe: std::env::current_exe().context("cannot find the corral binary")?,
                accel,
                controllers,
            };
            let s = corral_lab::up(&opts).await?;
            match o {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Table => {
                    eprintln!(
                        "lab up: controller at {}, {} hosts ({})",
                        s.urls().join(", "),
                        s.hosts.len(),
                        s.dir.display()
                    );
                    println!("{}", s.exports()?);
                }
            }
        }
        LabCmd::Power { state, host, dir } => {
            corral_lab::power(&lab_options(dir)?, &host, state == "on").await?;
            eprintln!("lab power: {host} {state}");
        }
        LabCmd::Kill { host, dir } => {
            corral_lab::fault(&lab_options(dir)?, &host, corral_lab::Fault::Kill).await?;
            eprintln!("lab kill: {host}'s agent and VMs are dead and its link is down (`corral lab heal {host}`)");
        }
        LabCmd::Partition { host, dir } => {
            corral_lab::fault(&lab_options(dir)?, &host, corral_lab::Fault::Partition).await?;
            eprintln!("lab partition: {host} is cut off the underlay (`corral lab heal {host}`)");
        }
        LabCmd::Heal { host, dir } => {
            corral_lab::fault(&lab_options(dir)?, &host, corral_lab::Fault::Heal).await?;
            eprintln!("lab heal: {host} is back on the underlay");
        }
        LabCmd::Down { dir } => {
            if corral_lab::down(&dir)? {
                eprintln!("lab down: everything the lab made is removed");
            } else {
                eprintln!("no lab in {}", dir.display());
            }
        }
        LabCmd::Status { dir } => match corral_lab::status(&dir).await? {
            None => {
                eprintln!("no lab in {}", dir.display());
                return Ok(1);
            }
            Some((s, ok)) => match o {
                Output::Json => println!("{}", serde_json::json!({"lab": s, "healthy": ok})),
                Output::Table => {
                    println!(
                        "controller {} ({})",
                        s.url,
                        if ok { "healthy" } else { "NOT healthy: run `corral lab up` again" }
                    );
                    for h in &s.hosts {
                        println!("{}  {}  netns {}", h.name, h.ip, h.netns);
                    }
                    println!("{}", s.exports()?);
                }
            },
        },
    }
    Ok(0)
}

async fn vm(cmd: VmCmd, c: &Client, o: Output) -> Result<i32> {
    let show = |v: &Vm| print(o, v, output::vm);
    match cmd {
        VmCmd::Create { name, template, vcpus, memory, host, workload, no_start, ha, storage } => {
            let memory_mib = corral_api::size::parse_mib(&memory).map_err(anyhow::Error::msg)?;
            let ha = ha.map(|h| h.parse()).transpose().map_err(anyhow::Error::msg)?;
            let storage = storage.parse().map_err(anyhow::Error::msg)?;
            let m = anyhow::Error::msg;
            let req = CreateVm {
                name: name_arg("VM", &name)?,
                template: name_arg("template", &template)?,
                vcpus: corral_api::types::check_vcpus(vcpus).map_err(m)?,
                memory_mib: corral_api::types::check_memory_mib(memory_mib).map_err(m)?,
                host: host.map(|h| name_arg("host", &h)).transpose()?,
                workload: workload.map(corral_api::types::Workload::try_from).transpose().map_err(m)?,
                start: !no_start,
                ha,
                storage,
            };
            show(&c.post::<_, Vm>("/v1/vms", &req).await?)?;
        }
        VmCmd::List => print(o, &c.get::<Vec<Vm>>("/v1/vms").await?, |v| output::vms(v))?,
        VmCmd::Show { name } => show(&c.get::<Vm>(&format!("/v1/vms/{name}")).await?)?,
        VmCmd::Start { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/start"), &()).await?)?,
        VmCmd::Stop { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/stop"), &()).await?)?,
        VmCmd::Pause { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/pause"), &()).await?)?,
        VmCmd::Resume { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/resume"), &()).await?)?,
        VmCmd::Suspend { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/suspend"), &()).await?)?,
        VmCmd::Migrate(a) => return migrate::migrate(a, c, o == Output::Json).await,
        VmCmd::Migrations { name } => migrate::history(name, c, o == Output::Json).await?,
        VmCmd::Move { name, to } => {
            show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/move"), &serde_json::json!({ "to": to })).await?)?
        }
        VmCmd::Delete { name } => {
            c.delete::<()>(&format!("/v1/vms/{name}")).await?;
            if o == Output::Json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                eprintln!("deleted {name}");
            }
        }
        VmCmd::Console { name, follow } => {
            use std::io::Write;
            let mut offset = 0;
            loop {
                let chunk: ConsoleChunk = c.get(&format!("/v1/vms/{name}/console?offset={offset}")).await?;
                print!("{}", chunk.data);
                std::io::stdout().flush()?;
                let more = chunk.next > offset;
                offset = chunk.next;
                if !follow && !more {
                    break;
                }
                if !more {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        VmCmd::Exec { name, timeout, argv } => {
            let req = ExecRequest { argv, stdin: None, timeout_ms: timeout.map(|t| t * 1000) };
            let r: ExecResult = c.post(&format!("/v1/vms/{name}/exec"), &req).await?;
            if o == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                use std::io::Write;
                std::io::stdout().write_all(r.stdout.as_bytes())?;
                std::io::stderr().write_all(r.stderr.as_bytes())?;
            }
            return Ok(r.exit_code);
        }
    }
    Ok(0)
}
