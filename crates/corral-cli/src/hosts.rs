//! `corral host`: the hosts of the pool — list and show them, cordon, label, evacuate, put in
//! standby and wake.

use anyhow::{Context, Result};
use clap::Subcommand;

use corral_api::Host;

use crate::client::Client;
use crate::migrate;
use crate::output::{self, print, Output};

#[derive(Debug, Subcommand)]
pub enum HostCmd {
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

pub async fn host(cmd: HostCmd, c: &Client, o: Output) -> Result<i32> {
    match cmd {
        HostCmd::List => print(o, &c.get::<Vec<Host>>("/v1/hosts").await?, |h| output::hosts(h))?,
        HostCmd::Show { name } => print(o, &c.get::<Host>(&format!("/v1/hosts/{name}")).await?, output::host)?,
        HostCmd::Cordon { name } => {
            print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/cordon"), &()).await?, output::host)?
        }
        HostCmd::Uncordon { name } => {
            print(o, &c.post::<_, Host>(&format!("/v1/hosts/{name}/uncordon"), &()).await?, output::host)?
        }
        HostCmd::Evacuate { name, no_wait } => return migrate::evacuate(&name, no_wait, c, o == Output::Json).await,
        HostCmd::Wake { name } => print(o, &wake(&name, c).await?, output::host)?,
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
    Ok(0)
}

/// Asks the controller to wake `name`, then follows the host until its agent reports (power
/// `on`) or the wake fails (back in `standby`; the event says why).
async fn wake(name: &str, c: &Client) -> Result<Host> {
    let mut h: Host = c.post(&format!("/v1/hosts/{name}/wake"), &()).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    loop {
        match h.power {
            corral_api::drs::HostPower::On => return Ok(h),
            corral_api::drs::HostPower::Standby => {
                let events: Vec<corral_api::cluster::Event> = c.get("/v1/events").await?;
                let why = events
                    .iter()
                    .rev()
                    .find(|e| e.kind == "host.wake-failed" && e.subject == name)
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "it is in standby again".into());
                anyhow::bail!("host {name} did not wake: {why}");
            }
            corral_api::drs::HostPower::Waking => {}
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "host {name} is still waking after 150 s");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        h = c.get(&format!("/v1/hosts/{name}")).await?;
    }
}
