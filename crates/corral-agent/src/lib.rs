//! Corral's host agent (`corral agent`). It owns the VMs of one host: it runs them as QEMU
//! processes driven over QMP, keeps their records on disk, reports capacity and usage to the
//! controller with a heartbeat, and serves the controller's requests over REST.

pub mod accel;
pub mod api;
pub mod boot;
pub mod config;
pub mod fence;
pub mod fetch;
pub mod filter;
pub mod guest;
pub mod hostinfo;
pub mod netdev;
pub mod private;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod streams;
pub mod templates;
pub mod tunnel;
pub mod uplink;
pub mod vm;
pub mod watchdog;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use corral_api::agent::{Heartbeat, HeartbeatReply, Register};
use corral_api::ErrorKind;
use corral_client::{ClientError, ControllerClient, Method, Settings};
use corral_http::runner::{Runner, Stop};

pub use config::{Config, ConfigError};

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub cfg: Config,
    pub vms: Arc<vm::Manager>,
    pub accel: accel::Verdict,
    sampler: Mutex<hostinfo::CpuSampler>,
    pub(crate) http: reqwest::Client,
    pub net: Option<netdev::Net>,
    /// One template transfer at a time.
    pulling: tokio::sync::Mutex<()>,
    /// This host's lease from the controller, its peers, and whether it is isolated.
    pub fencer: Arc<fence::Fencer>,
    /// The client of `--controller`'s controllers; it knows which one leads.
    pub controller: ControllerClient,
    /// This host's ends of tunnels into guests.
    pub tunnels: tunnel::Tunnels,
}

impl Agent {
    fn url(&self) -> String {
        self.cfg.advertise.clone().unwrap_or_else(|| format!("http://{}", self.cfg.listen))
    }

    /// What the agent tells the controller about itself.
    pub fn registration(&self) -> Register {
        Register {
            name: self.cfg.name.clone(),
            url: self.url(),
            accel: self.accel.accel,
            accel_note: self.accel.note.clone(),
            capacity: hostinfo::capacity(&self.cfg.data_dir, self.cfg.vcpus, self.cfg.memory_mib),
            templates: self.vms.templates().into_iter().map(|t| t.info).collect(),
            underlay: self.underlay(),
            interfaces: self.provider_interfaces(),
            shared_dir: self.cfg.shared_dir.as_ref().map(|d| d.display().to_string()),
        }
    }

    /// The interfaces bridged networks may join here: those of `--provider-interfaces` the
    /// host has.
    pub fn provider_interfaces(&self) -> Vec<String> {
        let present = netdev::Net::interfaces();
        self.cfg.provider_interfaces.iter().filter(|i| present.contains(i)).cloned().collect()
    }

    /// Whether a bridged network may join `up` here (see [`uplink::check`]).
    pub fn check_uplink(&self, up: &corral_api::agent::Uplink, vni: u32) -> Result<(), uplink::UplinkError> {
        let underlay = self.underlay();
        let underlay_if = underlay.and_then(uplink::interface_of);
        uplink::check(
            &self.cfg.provider_interfaces,
            underlay_if.as_deref().zip(underlay),
            up,
            &netdev::bridge_name(vni),
            uplink::master_of(&up.interface).as_deref(),
        )
    }

    /// The underlay address VXLAN tunnels end at: the address the agent listens on.
    pub fn underlay(&self) -> Option<std::net::Ipv4Addr> {
        match self.cfg.listen.ip() {
            std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
            _ => None,
        }
    }

    /// Fetches a template from the controller's library into this host's template directory.
    pub async fn pull_template(&self, name: &str) -> Result<(), corral_api::ApiError> {
        let _one = self.pulling.lock().await;
        if !self.vms.templates().iter().any(|t| t.info.name == name) {
            let started = std::time::Instant::now();
            let leader = self.controller.leader();
            templates::pull(&self.http, &leader, self.cfg.token.as_deref(), name, &self.cfg.templates_dir)
                .await
                .map_err(|e| match e {
                    crate::fetch::FetchError::NotFound(_) => corral_api::ApiError::not_found(format!(
                        "the controller's template library has no template {name:?} (see `corral template list`)"
                    )),
                    e => corral_api::ApiError::unavailable(format!(
                        "fetching template {name} from the controller failed: {e}"
                    )),
                })?;
            tracing::info!("template {name} received in {:?}", started.elapsed());
            self.vms.set_templates(templates::scan(&self.cfg.templates_dir));
        }
        Ok(())
    }

    fn heartbeat(&self) -> Heartbeat {
        let usage = {
            let mut s = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
            hostinfo::usage(&mut s, &self.cfg.data_dir)
        };
        Heartbeat { usage, vms: self.vms.list(), networks: netdev::Net::present(), tunnels: self.tunnels.in_use() }
    }
}

/// Checks `cfg`, then runs the agent until the process is killed.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    if cfg.token.is_none() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            "INSECURE: the agent listens on {} without an API token (--insecure): anyone who reaches it \
             can run, read and delete this host's VMs; give --token-file FILE",
            cfg.listen
        );
    }
    // Registration and heartbeats: each exchange gets 5 s in all.
    let controller = ControllerClient::new(
        &cfg.controller,
        cfg.token.clone(),
        Settings { connect_timeout: Duration::from_secs(5), deadline: |_, _| Duration::from_secs(5) },
    )
    .with_context(|| format!("--controller {:?}", cfg.controller))?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let tpls = templates::scan(&cfg.templates_dir);
    if tpls.is_empty() {
        tracing::warn!("no templates in {}: VMs cannot be created until some are added", cfg.templates_dir.display());
    }
    let verdict = accel::choose(
        cfg.accel,
        &cfg.qemu,
        tpls.iter().find(|t| t.direct.is_some()),
        cfg.accel_cache.as_deref(),
        &cfg.data_dir,
    )
    .await;
    tracing::info!("accelerator: {} ({})", verdict.accel.as_str(), verdict.note);
    let net = match netdev::Net::open() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("virtual networks unavailable: {e}");
            None
        }
    };
    // The lease is read before any QEMU is re-attached: one that ran out while the agent was
    // away, on a host that reaches no majority of its peers, fences the HA VMs first.
    let fencer = Arc::new(fence::Fencer::load(&cfg.data_dir, cfg.isolation.clone()));
    // Transfers may be long, but a peer that stops sending ends them.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(30))
        .build()?;
    if fencer.verdict(fence::boottime_ms()) != fence::Verdict::Held {
        fencer.probe_round(&http).await;
        if let fence::Verdict::Isolated(why) = fencer.verdict(fence::boottime_ms()) {
            let n = watchdog::kill_restartable(&cfg.data_dir, fencer.record().as_ref(), &why).await;
            if n > 0 {
                tracing::warn!("lease out and isolated at start: {n} HA VM(s) stopped before re-attaching");
            }
        }
    }
    std::fs::write(cfg.data_dir.join(watchdog::AGENT_PID_FILE), std::process::id().to_string())
        .with_context(|| format!("cannot write the agent's PID file in {}", cfg.data_dir.display()))?;
    if let Err(e) = watchdog::ensure(&cfg.data_dir) {
        tracing::warn!("cannot start the fencing watchdog: {e}; fencing depends on this agent alone");
    }
    let settings = vm::Settings {
        net: net.clone(),
        data_dir: cfg.data_dir.clone(),
        qemu: cfg.qemu.clone(),
        accel: verdict.accel,
        boot_timeout: cfg.boot_timeout,
        stop_timeout: Duration::from_secs(20),
        shared_dir: cfg.shared_dir.clone(),
    };
    let vms = vm::Manager::open(settings, tpls).await?;
    vms.refresh_filter().await;
    let agent = Arc::new(Agent {
        cfg: cfg.clone(),
        vms,
        accel: verdict,
        sampler: Mutex::new(hostinfo::CpuSampler::default()),
        http,
        net,
        pulling: tokio::sync::Mutex::new(()),
        fencer: fencer.clone(),
        controller,
        tunnels: tunnel::Tunnels::default(),
    });

    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("agent {} listening on {}", cfg.name, cfg.listen);

    let mut loops = Runner::new();
    let mon = agent.clone();
    loops.every("monitor", Duration::ZERO, Duration::from_secs(1), move || {
        let mon = mon.clone();
        async move { mon.vms.monitor_once().await }
    });
    let hb = agent.clone();
    loops.spawn("heartbeat", move |stop| heartbeat_loop(hb, stop));
    let (f, http) = (fencer.clone(), agent.http.clone());
    loops.spawn("isolation probes", move |stop| watchdog::probe_loop(f, http, stop));
    let f = agent.clone();
    loops.spawn("fencing", move |stop| async move {
        let mut was = fence::Verdict::Held;
        loop {
            let v = f.fencer.verdict(fence::boottime_ms());
            if let fence::Verdict::Isolated(why) = &v {
                let lease = f.fencer.record();
                f.vms.fence(|r| watchdog::restartable(r, lease.as_ref()), why).await;
            }
            if std::mem::discriminant(&v) != std::mem::discriminant(&was) {
                match &v {
                    fence::Verdict::Held => tracing::info!("lease renewed"),
                    fence::Verdict::CutOff(why) | fence::Verdict::Isolated(why) => tracing::warn!("{why}"),
                }
                was = v;
            }
            // The watchdog process goes on fencing while this agent is away.
            if !stop.sleep(Duration::from_millis(200)).await {
                return;
            }
        }
    });
    // Its VMs keep running: a restarted agent re-attaches them.
    loops.serve(listener, api::router(agent), SHUTDOWN_GRACE).await?;
    tracing::info!("agent stopped; its VMs keep running");
    Ok(())
}

/// How long a stopping agent lets its loops finish their round and requests complete.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Registers with the controller, then heartbeats; registers again whenever the controller
/// does not know this host (for instance after it lost its state), and with each new leader.
/// With several controllers the client talks to the leader: a standby answers 503 naming the
/// leader, which it follows; an unreachable one makes it try the next.
async fn heartbeat_loop(agent: Arc<Agent>, stop: Stop) {
    let c = &agent.controller;
    // The controller this host registered with, if it did.
    let mut registered_with: Option<String> = None;
    loop {
        let before = c.leader();
        if registered_with.as_deref() != Some(before.as_str()) {
            registered_with = None;
            match c.send_raw(Method::POST, "/v1/agents/register", Some(&agent.registration())).await {
                Ok(_) => {
                    let to = c.leader();
                    tracing::info!("registered with controller {to}");
                    registered_with = Some(to);
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => tracing::debug!("cannot register: {}", why(&e)),
                Err(e) => tracing::warn!("controller refused registration: {}", why(&e)),
            }
        }
        if registered_with.is_some() {
            let hb = agent.heartbeat();
            let sent = fence::boottime_ms();
            match c.post::<_, HeartbeatReply>(&format!("/v1/agents/{}/heartbeat", agent.cfg.name), &hb).await {
                Ok(reply) => {
                    if !reply.fence.is_empty() {
                        // Declared failed while away: these VMs run elsewhere now.
                        let why = "fenced: the controller declared this host failed and restarted this VM elsewhere";
                        agent.vms.fence(|r| reply.fence.contains(&r.def.uuid), why).await;
                    }
                    agent.fencer.renewed(sent, &reply);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => registered_with = None,
                // Never a renewal: what cannot be read cannot extend the lease.
                Err(e @ (ClientError::Unreadable { .. } | ClientError::Json(_))) => {
                    tracing::warn!(
                        "unreadable heartbeat reply from {} ({}): the lease is not renewed",
                        c.leader(),
                        why(&e)
                    )
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => tracing::debug!("heartbeat failed: {}", why(&e)),
                Err(e) => tracing::warn!("heartbeat refused: {}", why(&e)),
            }
        }
        let now = c.leader();
        if now != before {
            tracing::info!("controller {before} is not the leader: now talking to {now}");
        }
        if !stop.sleep(agent.cfg.heartbeat).await {
            return;
        }
    }
}

/// What went wrong with an exchange with the controller, for the log: an API error with its
/// status, anything else with its cause.
fn why(e: &ClientError) -> String {
    match e {
        ClientError::Api(a) => format!("{} ({})", a.status, a.message),
        e => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}
