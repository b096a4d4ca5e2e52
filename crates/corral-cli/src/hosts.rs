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
    Ok(0)
}
