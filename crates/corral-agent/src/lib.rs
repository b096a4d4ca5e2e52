//! Corral's host agent (`corral agent`). It owns the VMs of one host: it runs them as QEMU
//! processes driven over QMP, keeps their records on disk, reports capacity and usage to the
//! controller with a heartbeat, and serves the controller's requests over REST.

pub mod accel;
pub mod api;
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
pub mod templates;
pub mod uplink;
pub mod vm;
pub mod watchdog;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use corral_api::agent::{Heartbeat, HeartbeatReply, Register};

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
    /// The controller that leads, as far as this agent knows (one of `--controller`'s).
    leader: Mutex<String>,
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
            let leader = self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
            templates::pull(&self.http, &leader, self.cfg.token.as_deref(), name, &self.cfg.templates_dir)
                .await
                .map_err(|e| {
                    corral_api::ApiError::unavailable(format!(
                        "fetching template {name} from the controller failed: {e}"
                    ))
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
        Heartbeat { usage, vms: self.vms.list(), networks: netdev::Net::present() }
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
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let tpls = templates::scan(&cfg.templates_dir);
    if tpls.is_empty() {
        tracing::warn!("no templates in {}: VMs cannot be created until some are added", cfg.templates_dir.display());
    }
    let verdict = accel::choose(cfg.accel, &cfg.qemu, tpls.first(), cfg.accel_cache.as_deref(), &cfg.data_dir).await;
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
        leader: Mutex::new(controllers(&cfg.controller).first().cloned().unwrap_or_default()),
    });

    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("agent {} listening on {}", cfg.name, cfg.listen);

    let mon = agent.clone();
    tokio::spawn(async move {
        loop {
            mon.vms.monitor_once().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::spawn(heartbeat_loop(agent.clone()));
    watchdog::spawn_prober(fencer.clone(), agent.http.clone());
    let f = agent.clone();
    tokio::spawn(async move {
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
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    axum::serve(listener, api::router(agent)).await?;
    Ok(())
}

/// The controller URLs of `--controller` (comma-separated; several when controllers share an
/// etcd store and one leads).
fn controllers(list: &str) -> Vec<String> {
    list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

/// Where the heartbeat loop turns when this controller will not do.
enum Elsewhere {
    /// The leader a standby controller named.
    Leader(String),
    /// The next controller of the list (this one is unreachable, or a standby that knows no
    /// leader yet).
    Next,
}

impl Elsewhere {
    /// From a standby's 503 answer.
    fn of(r: &reqwest::Response) -> Self {
        match r.headers().get(corral_api::LEADER_HEADER).and_then(|v| v.to_str().ok()) {
            Some(l) => Elsewhere::Leader(l.trim_end_matches('/').to_string()),
            None => Elsewhere::Next,
        }
    }
}

/// Registers with the controller, then heartbeats; registers again whenever the controller
/// does not know this host (for instance after it lost its state). With several controllers
/// it talks to the leader: a standby answers 503 naming the leader, which it follows; an
/// unreachable one makes it try the next.
async fn heartbeat_loop(agent: Arc<Agent>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let all = controllers(&agent.cfg.controller);
    let post = |url: String| {
        let r = http.post(url);
        match &agent.cfg.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let mut registered = false;
    loop {
        let base = agent.leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut elsewhere: Option<Elsewhere> = None;
        if !registered {
            match post(format!("{base}/v1/agents/register")).json(&agent.registration()).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!("registered with controller {base}");
                    registered = true;
                }
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => elsewhere = Some(Elsewhere::of(&r)),
                Ok(r) => tracing::warn!("controller refused registration: {}", r.status()),
                Err(e) => {
                    tracing::debug!("controller {base} not reachable: {e}");
                    elsewhere = Some(Elsewhere::Next);
                }
            }
        }
        if registered {
            let hb = agent.heartbeat();
            let sent = fence::boottime_ms();
            match post(format!("{base}/v1/agents/{}/heartbeat", agent.cfg.name)).json(&hb).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => registered = false,
                Ok(r) if r.status().is_success() => match r.json::<HeartbeatReply>().await {
                    Ok(reply) => {
                        if !reply.fence.is_empty() {
                            // Declared failed while away: these VMs run elsewhere now.
                            let why =
                                "fenced: the controller declared this host failed and restarted this VM elsewhere";
                            agent.vms.fence(|r| reply.fence.contains(&r.def.uuid), why).await;
                        }
                        agent.fencer.renewed(sent, &reply);
                    }
                    // Never a renewal: what cannot be read cannot extend the lease.
                    Err(e) => tracing::warn!("unreadable heartbeat reply from {base} ({e}): the lease is not renewed"),
                },
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => elsewhere = Some(Elsewhere::of(&r)),
                Ok(r) => tracing::warn!("heartbeat refused: {}", r.status()),
                Err(e) => {
                    tracing::debug!("heartbeat to {base} failed: {e}");
                    elsewhere = Some(Elsewhere::Next);
                }
            }
        }
        // Follow the leader named by a standby, else try the next controller of the list.
        if let Some(e) = elsewhere.filter(|_| all.len() > 1) {
            let (to, named) = match e {
                Elsewhere::Leader(l) => (l, true),
                Elsewhere::Next => {
                    let i = all.iter().position(|u| *u == base).map_or(0, |i| (i + 1) % all.len());
                    (all[i].clone(), false)
                }
            };
            if to != base {
                tracing::info!("controller {base} is not the leader: trying {to}");
                *agent.leader.lock().unwrap_or_else(|p| p.into_inner()) = to;
                registered = false;
                if named {
                    continue; // named by a standby: go at once
                }
            }
        }
        tokio::time::sleep(agent.cfg.heartbeat).await;
    }
}
