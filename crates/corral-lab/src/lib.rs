//! The lab (`corral lab up|down|status`): a Corral deployment on one machine. Each host is a
//! Linux network namespace joined to an underlay bridge (198.18.<index>.0/24) by `eth0`, running
//! the real agent; the controller runs beside the bridge. Each host also has `eth1` on a second,
//! provider bridge (`crl<index>pv`), for bridged networks, and every host's agent uses
//! `<dir>/shared` as its shared storage pool (as an NFS mount would be). The same binaries run
//! a real deployment.
//!
//! Every resource is recorded in the lab's state file *before* it is made, so `down` removes
//! everything even after a crash half-way through `up`. Processes are ended by the PIDs the lab
//! recorded (checked against their command line), never by name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Options of `corral lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub hosts: u32,
    /// Lab number: selects the underlay subnet 198.18.<index>.0/24 and device names.
    pub index: u8,
    pub dir: PathBuf,
    /// Directory holding the templates (the guest build output).
    pub templates: PathBuf,
    /// Machine-wide cache (accelerator probe verdict).
    pub cache: PathBuf,
    /// The `corral` binary to run.
    pub exe: PathBuf,
    /// Controllers: 1 keeps the state in an embedded file; more share a 3-member etcd
    /// cluster the lab runs on loopback, one leading and the others on standby.
    pub controllers: u32,
    pub accel: String,
}

/// One lab host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub veth: String,
    /// The host's second interface (`eth1` inside), on the provider bridge.
    #[serde(default)]
    pub provider_veth: String,
    pub ip: String,
    pub data: PathBuf,
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// Put in standby by the controller (`corral lab power off`): its agent is stopped and
    /// `lab up` leaves it so.
    #[serde(default)]
    pub standby: bool,
    /// A fault injected by `corral lab kill` (`killed`: agent and QEMU processes dead, link
    /// down, as in a power loss) or `corral lab partition` (`partitioned`: underlay link cut,
    /// processes alive). `corral lab heal` clears it; until then `lab up` leaves the host so.
    #[serde(default)]
    pub fault: Option<String>,
}

/// The lab's state file (`<dir>/lab.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub index: u8,
    pub dir: PathBuf,
    pub bridge: String,
    /// A second segment every host joins with `eth1`, for bridged (provider) networks.
    #[serde(default)]
    pub provider_bridge: String,
    pub url: String,
    #[serde(default)]
    pub controller_pid: Option<u32>,
    pub hosts: Vec<LabHost>,
    /// The accelerator the agents were started with (`--accel`).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// Standby controllers (with `--controllers N`, N > 1): URL and PID of each.
    #[serde(default)]
    pub standby_controllers: Vec<LabController>,
    /// The etcd members the controllers share (with `--controllers N`, N > 1).
    #[serde(default)]
    pub etcd: Vec<LabEtcd>,
}

/// A controller beyond the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabController {
    pub url: String,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// An etcd member of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    pub member: corral_store::local_etcd::Member,
    #[serde(default)]
    pub pid: Option<u32>,
}

fn default_accel() -> String {
    "auto".into()
}

impl LabState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("lab state {} is corrupt", Self::path(dir).display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, Self::path(&self.dir))?;
        Ok(())
    }
    /// The export lines a user pastes into a shell.
    pub fn exports(&self) -> Result<String> {
        let token = std::fs::read_to_string(self.token_file())
            .context("the lab's token file is missing: run `corral lab up` again")?;
        Ok(format!("export CORRAL_URL={}\nexport CORRAL_TOKEN={}", self.urls().join(","), token.trim()))
    }
    /// Every controller's URL, the first controller's first.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone()).chain(self.standby_controllers.iter().map(|c| c.url.clone())).collect()
    }
    /// The etcd client endpoints, if the lab runs etcd.
    pub fn etcd_clients(&self) -> Vec<String> {
        self.etcd.iter().map(|e| e.member.client()).collect()
    }
    /// The API token shared by the lab's controller, agents and CLI.
    /// Hosts not in standby.
    pub fn powered(&self) -> usize {
        self.hosts.iter().filter(|h| !h.standby && h.fault.is_none()).count()
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }
    /// The controller's template library.
    pub fn library(&self) -> PathBuf {
        self.dir.join("library")
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// True if `pid` runs a command line that mentions `marker` (the lab directory).
fn pid_is_ours(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(marker)).unwrap_or(false)
}

fn kill_pid(pid: u32, marker: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !pid_is_ours(pid, marker) {
        return;
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let t = Instant::now();
    while pid_is_ours(pid, marker) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_is_ours(pid, marker) {
        let _ = kill(p, Signal::SIGKILL);
        while pid_is_ours(pid, marker) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Puts every template of `from` into `to`, as hard links (copies across filesystems).
fn link_templates(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let (templates, _) = corral_api::template_dir::scan(from);
    for t in templates {
        let meta = from.join(format!("{}.json", t.info.name));
        for f in [&meta, &t.kernel, &t.initrd, &t.disk] {
            let name = f.file_name().context("template file without a name")?;
            let dst = tmp.join(name);
            if dst.exists() {
                continue;
            }
            if std::fs::hard_link(f, &dst).is_err() {
                std::fs::copy(f, &dst).with_context(|| format!("cannot copy {}", f.display()))?;
            }
        }
    }
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Starts a daemon in its own process group, its output appended to `log`.
fn spawn_daemon(mut cmd: Command, log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("cannot start process")?;
    Ok(child.id())
}

/// Brings a lab up (or reports the one already up). Returns its state.
pub async fn up(o: &UpOptions) -> Result<LabState> {
    if o.hosts == 0 || o.hosts > 50 {
        bail!("--hosts must be between 1 and 50");
    }
    if !o.templates.join("base.json").exists() {
        bail!(
            "no guest templates in {}: build them first with `make guest` (scripts/build-guest.sh)",
            o.templates.display()
        );
    }
    if let Some(mut s) = LabState::load(&o.dir)? {
        let devices = link_exists(&s.bridge) && s.hosts.iter().all(|h| netns_exists(&h.netns));
        if s.hosts.len() as u32 == o.hosts && devices {
            // Same lab: restart whichever daemon is not running (after a crash or a kill).
            start_daemons(&mut s, o).await?;
            return Ok(s);
        }
        tracing::info!("a previous lab in {} is incomplete or different; removing it first", o.dir.display());
        down(&o.dir)?;
    }
    let dir = o.dir.canonicalize().unwrap_or_else(|_| o.dir.clone());
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let idx = o.index;
    let gw = format!("198.18.{idx}.1");
    let mut s = LabState {
        index: idx,
        dir: dir.clone(),
        bridge: format!("crl{idx}br"),
        provider_bridge: format!("crl{idx}pv"),
        url: format!("http://{gw}:7700"),
        controller_pid: None,
        accel: o.accel.clone(),
        standby_controllers: (1..o.controllers.max(1))
            .map(|i| LabController { url: format!("http://{gw}:{}", 7700 + 10 * i), pid: None })
            .collect(),
        etcd: if o.controllers > 1 {
            corral_store::local_etcd::plan(3)?.into_iter().map(|member| LabEtcd { member, pid: None }).collect()
        } else {
            vec![]
        },
        hosts: (1..=o.hosts)
            .map(|i| LabHost {
                name: format!("lab-{i}"),
                netns: format!("corral{idx}-lab-{i}"),
                veth: format!("crl{idx}h{i}"),
                provider_veth: format!("crl{idx}p{i}"),
                ip: format!("198.18.{idx}.{}", 10 + i),
                data: dir.join(format!("lab-{i}")),
                agent_pid: None,
                standby: false,
                fault: None,
            })
            .collect(),
    };
    if link_exists(&s.bridge) {
        bail!(
            "device {} already exists but no lab state is in {}: another lab uses index {idx}; choose --index",
            s.bridge,
            dir.display()
        );
    }
    s.save()?;
    // Underlay bridge in the root namespace, where the controller and the CLI are.
    ip(&["link", "add", &s.bridge, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{gw}/24"), "dev", &s.bridge])?;
    ip(&["link", "set", &s.bridge, "up"])?;
    ip(&["link", "add", &s.provider_bridge, "type", "bridge"])?;
    ip(&["link", "set", &s.provider_bridge, "up"])?;
    for h in &s.hosts {
        ip(&["netns", "add", &h.netns])?;
        ip(&["link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", &h.netns])?;
        ip(&["link", "set", &h.veth, "master", &s.bridge, "up"])?;
        ip(&["-n", &h.netns, "addr", "add", &format!("{}/24", h.ip), "dev", "eth0"])?;
        ip(&["-n", &h.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &h.netns, "link", "set", "lo", "up"])?;
        ip(&["link", "add", &h.provider_veth, "type", "veth", "peer", "name", "eth1", "netns", &h.netns])?;
        ip(&["link", "set", &h.provider_veth, "master", &s.provider_bridge, "up"])?;
        ip(&["-n", &h.netns, "link", "set", "eth1", "up"])?;
    }
    start_daemons(&mut s, o).await?;
    Ok(s)
}

/// Starts the controller and the agents that are not running, recording their PIDs first.
async fn start_daemons(s: &mut LabState, o: &UpOptions) -> Result<()> {
    let dir = s.dir.clone();
    let marker = dir.display().to_string();
    if !s.library().exists() {
        link_templates(&o.templates, &s.library())?;
    }
    // The etcd members first (several controllers share their state there).
    let members: Vec<corral_store::local_etcd::Member> = s.etcd.iter().map(|e| e.member.clone()).collect();
    for i in 0..s.etcd.len() {
        if s.etcd[i].pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        let c = corral_store::local_etcd::member_command(&dir.join("etcd"), &s.etcd[i].member, &members);
        s.etcd[i].pid = Some(spawn_daemon(c, &dir.join(format!("etcd-{}.log", s.etcd[i].member.name)))?);
        s.save()?;
    }
    let eps = s.etcd_clients();
    if !eps.is_empty() {
        let e = eps.clone();
        tokio::task::spawn_blocking(move || corral_store::local_etcd::wait_ready(&e, Duration::from_secs(60)))
            .await?
            .context("the lab's etcd cluster did not come up; see etcd-*.log in the lab directory")?;
    }
    // Controllers: the first, then the standby ones.
    let all_urls = s.urls();
    let (library, token_file) = (s.library(), s.token_file());
    let controller = |url: &str, data: &str| {
        let mut c = Command::new(&o.exe);
        let listen = url.trim_start_matches("http://");
        c.args(["controller", "--listen", listen, "--data", &format!("{marker}/{data}")]);
        c.arg("--templates").arg(&library).arg("--token-file").arg(&token_file);
        // Consolidation's standby and wake-up stop and start a host's agent, as a power-off
        // and a power-on would.
        let power = |what: &str| format!("'{}' lab power {what} {{host}} --dir '{marker}'", o.exe.display());
        c.arg("--standby-command").arg(power("off")).arg("--wake-command").arg(power("on"));
        if !eps.is_empty() {
            c.arg("--etcd").arg(eps.join(",")).arg("--advertise").arg(url);
        }
        c
    };
    if !s.controller_pid.is_some_and(|p| pid_is_ours(p, &marker)) {
        let c = controller(&s.url.clone(), "controller");
        s.controller_pid = Some(spawn_daemon(c, &dir.join("controller.log"))?);
        s.save()?;
    }
    // The first controller makes the token file; the others must find it there, not race it.
    wait_http(&format!("{}/v1/health", s.url), Duration::from_secs(20))
        .await
        .context("the controller did not come up; see controller.log in the lab directory")?;
    for i in 0..s.standby_controllers.len() {
        if s.standby_controllers[i].pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        let c = controller(&s.standby_controllers[i].url.clone(), &format!("controller-{}", i + 2));
        s.standby_controllers[i].pid = Some(spawn_daemon(c, &dir.join(format!("controller-{}.log", i + 2)))?);
        s.save()?;
    }
    for u in &all_urls {
        wait_http(&format!("{u}/v1/health"), Duration::from_secs(20))
            .await
            .context("a controller did not come up; see controller*.log in the lab directory")?;
    }
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(4 << 20);
    let n = s.hosts.len() as u64;
    let per_host_mib = (mem_total / 1024) * 8 / 10 / n;
    std::fs::create_dir_all(&o.cache)?;
    std::fs::create_dir_all(dir.join("shared"))?;
    for i in 0..s.hosts.len() {
        let h = s.hosts[i].clone();
        if h.standby || h.fault.is_some() || h.agent_pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        std::fs::create_dir_all(&h.data)?;
        let host_templates = h.data.join("templates");
        if !host_templates.exists() {
            // A host comes installed with the templates the lab started with; others are sent
            // by the controller when needed.
            link_templates(&s.library(), &host_templates)?;
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.netns]).arg(&o.exe).args([
            "agent",
            "--name",
            &h.name,
            "--listen",
            &format!("{}:7701", h.ip),
            "--controller",
            &all_urls.join(","),
            "--data",
            &h.data.display().to_string(),
            "--templates",
            &host_templates.display().to_string(),
            "--token-file",
            &s.token_file().display().to_string(),
            "--provider-interfaces",
            "eth1",
            "--accel",
            &o.accel,
            "--accel-cache",
            &o.cache.join("accel.json").display().to_string(),
            "--memory",
            &format!("{per_host_mib}"),
        ]);
        // Every host mounts the same shared pool: one directory of the lab.
        c.arg("--shared-dir").arg(dir.join("shared"));
        s.hosts[i].agent_pid = Some(spawn_daemon(c, &dir.join(format!("{}.log", h.name)))?);
        s.save()?;
        if !o.cache.join("accel.json").exists() {
            // The first agent probes the accelerator; the others reuse its verdict.
            wait_hosts(s, 1, Duration::from_secs(120)).await?;
        }
    }
    wait_hosts(s, s.powered(), Duration::from_secs(120)).await
}

/// The lab in `dir` and the index of its host `host`, or an error saying what is missing.
fn lab_host(dir: &Path, host: &str) -> Result<(LabState, usize)> {
    let Some(s) = LabState::load(dir)? else {
        bail!("no lab in {}: start one with `corral lab up`", dir.display());
    };
    let Some(i) = s.hosts.iter().position(|h| h.name == host) else {
        let names: Vec<&str> = s.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!("no lab host named {host:?}: the lab has {}", names.join(", "));
    };
    Ok((s, i))
}

/// Powers a lab host off (its agent is stopped; the host takes no work) or on again (its agent
/// is started and reports). What the controller's standby and wake commands run in a lab.
pub async fn power(o: &UpOptions, host: &str, on: bool) -> Result<()> {
    let (mut s, i) = lab_host(&o.dir, host)?;
    let marker = s.dir.display().to_string();
    if on {
        s.hosts[i].standby = false;
        s.save()?;
        start_daemons(&mut s, o).await
    } else {
        s.hosts[i].standby = true;
        s.save()?;
        if let Some(p) = s.hosts[i].agent_pid.take() {
            kill_pid(p, &marker);
        }
        s.save()
    }
}

/// A fault to inject into a lab host, or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Power loss: the agent and every QEMU process of the host die at once (SIGKILL) and its
    /// underlay link goes down (a powered-off machine answers nothing).
    Kill,
    /// The host's underlay link is cut; its processes keep running.
    Partition,
    /// The link comes back and a killed host's agent is started again (power restored).
    Heal,
}

/// Injects a fault into a lab host (`corral lab kill|partition|heal HOST`), so failures can
/// be rehearsed the way the tests do.
pub async fn fault(o: &UpOptions, host: &str, f: Fault) -> Result<()> {
    let (mut s, i) = lab_host(&o.dir, host)?;
    let veth = s.hosts[i].veth.clone();
    match f {
        Fault::Kill => {
            // Recorded first: an interrupted kill is still known to `heal` and `down`.
            s.hosts[i].fault = Some("killed".into());
            s.save()?;
            ip(&["link", "set", &veth, "down"])?;
            let marker = s.dir.display().to_string();
            let mut victims: Vec<(u32, String)> = qemu_pids(&s.hosts[i].data);
            if let Some(p) = s.hosts[i].agent_pid.take() {
                victims.push((p, marker));
            }
            // The agent's fencing watchdog dies with the machine too.
            let data = s.hosts[i].data.clone();
            if let Some(p) = std::fs::read_to_string(data.join("watchdog.pid")).ok().and_then(|p| p.trim().parse().ok())
            {
                victims.push((p, data.display().to_string()));
            }
            // All at once, no warning: SIGKILL to each, then wait for them to go.
            for (pid, mark) in &victims {
                if pid_is_ours(*pid, mark) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let t = Instant::now();
            while victims.iter().any(|(p, m)| pid_is_ours(*p, m)) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            s.save()
        }
        Fault::Partition => {
            if s.hosts[i].fault.as_deref() == Some("killed") {
                bail!("{host} is killed already: `corral lab heal {host}` first");
            }
            s.hosts[i].fault = Some("partitioned".into());
            s.save()?;
            ip(&["link", "set", &veth, "down"])
        }
        Fault::Heal => {
            ip(&["link", "set", &veth, "up"])?;
            s.hosts[i].fault = None;
            s.save()?;
            start_daemons(&mut s, o).await
        }
    }
}

async fn wait_http(url: &str, timeout: Duration) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if t.elapsed() > timeout {
            bail!("{url} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_hosts(s: &LabState) -> Option<usize> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    let token = std::fs::read_to_string(s.token_file()).ok()?;
    // Whichever controller leads answers (standby ones answer 503).
    let mut hosts: Option<Vec<corral_api::Host>> = None;
    for u in s.urls() {
        let Ok(resp) = http.get(format!("{u}/v1/hosts")).bearer_auth(token.trim()).send().await else { continue };
        if let Ok(h) = resp.json().await {
            hosts = Some(h);
            break;
        }
    }
    let hosts = hosts?;
    // A host back from a failure reports but recovers a while before taking VMs: it is up.
    Some(
        hosts
            .iter()
            .filter(|h| matches!(h.state, corral_api::HostState::Ready | corral_api::HostState::Recovering))
            .count(),
    )
}

async fn wait_hosts(s: &LabState, n: usize, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        if ready_hosts(s).await.unwrap_or(0) >= n {
            return Ok(());
        }
        if t.elapsed() > timeout {
            bail!(
                "only {} of {n} lab hosts registered within {timeout:?}; see the lab-N.log files in {}",
                ready_hosts(s).await.unwrap_or(0),
                s.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn healthy(s: &LabState) -> bool {
    let marker = s.dir.display().to_string();
    s.controller_pid.is_some_and(|p| pid_is_ours(p, &marker))
        && s.standby_controllers.iter().all(|c| c.pid.is_some_and(|p| pid_is_ours(p, &marker)))
        && s.etcd.iter().all(|e| e.pid.is_some_and(|p| pid_is_ours(p, &marker)))
        && s.hosts
            .iter()
            .all(|h| h.standby || h.fault.is_some() || h.agent_pid.is_some_and(|p| pid_is_ours(p, &marker)))
        && ready_hosts(s).await == Some(s.powered())
}

/// Status lines of a lab.
pub async fn status(dir: &Path) -> Result<Option<(LabState, bool)>> {
    match LabState::load(dir)? {
        None => Ok(None),
        Some(s) => {
            let ok = healthy(&s).await;
            Ok(Some((s, ok)))
        }
    }
}

/// QEMU processes of a lab host: the PIDs its agent recorded, checked by the VM's UUID.
fn qemu_pids(host_data: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(host_data.join("vms")) else {
        return out;
    };
    for e in rd.flatten() {
        let pid = std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
        let uuid = std::fs::read(e.path().join("vm.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/def/uuid").and_then(|u| u.as_str()).map(str::to_string));
        if let (Some(p), Some(u)) = (pid, uuid) {
            out.push((p, u));
        }
    }
    out
}

/// Takes a lab down: processes (by recorded PID), namespaces, devices and files. Works on a
/// lab that crashed half-way; does nothing if there is no lab.
pub fn down(dir: &Path) -> Result<bool> {
    let Some(s) = LabState::load(dir)? else {
        return Ok(false);
    };
    let marker = s.dir.display().to_string();
    for h in &s.hosts {
        if let Some(p) = h.agent_pid {
            kill_pid(p, &marker);
        }
        for (pid, uuid) in qemu_pids(&h.data) {
            kill_pid(pid, &uuid);
        }
        // Anything else still inside the host's namespace was started there by the lab.
        if netns_exists(&h.netns) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.netns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok())
                {
                    kill_pid(pid, "");
                }
            }
        }
    }
    if let Some(p) = s.controller_pid {
        kill_pid(p, &marker);
    }
    for p in s.standby_controllers.iter().filter_map(|c| c.pid).chain(s.etcd.iter().filter_map(|e| e.pid)) {
        kill_pid(p, &marker);
    }
    // Keep going past a failure so one stuck device does not leave the rest behind.
    let mut errors = Vec::new();
    for h in &s.hosts {
        if netns_exists(&h.netns) {
            if let Err(e) = ip(&["netns", "delete", &h.netns]) {
                errors.push(e.to_string());
            }
        }
        // Deleting the namespace removes the veth pair, asynchronously: gone is fine.
        for v in [&h.veth, &h.provider_veth] {
            if !v.is_empty() && link_exists(v) && ip(&["link", "delete", v]).is_err() && link_exists(v) {
                errors.push(format!("cannot delete device {v}"));
            }
        }
    }
    for b in [&s.bridge, &s.provider_bridge] {
        if !b.is_empty() && link_exists(b) && ip(&["link", "delete", b]).is_err() && link_exists(b) {
            errors.push(format!("cannot delete bridge {b}"));
        }
    }
    if !errors.is_empty() {
        bail!("lab down left something behind ({}); run `corral lab down` again", errors.join("; "));
    }
    std::fs::remove_dir_all(&s.dir).with_context(|| format!("cannot remove {}", s.dir.display()))?;
    Ok(true)
}
