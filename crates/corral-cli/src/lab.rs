//! `corral lab`: a lab of hosts (network namespaces) on this machine — make it, fault and heal
//! its hosts, show it, remove it — and the local lab's controller URL, the client's default.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::daemons::cache_dir;
use crate::init_logs;
use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Make the controller and N hosts, each a network namespace running an agent.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Lab number (1-250): its underlay is 198.18.INDEX.0/24.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
        index: u8,
        #[arg(long, env = "CORRAL_LAB_DIR", default_value = "/var/lib/corral/lab")]
        dir: PathBuf,
        #[arg(long, default_value = "auto")]
        accel: corral_api::AccelMode,
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

pub async fn lab(cmd: LabCmd, o: Output) -> Result<i32> {
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
                accel: accel.to_string(),
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

/// The lab in $CORRAL_LAB_DIR (default /var/lib/corral/lab), if there is one.
pub fn local_lab() -> Option<corral_lab::LabState> {
    let dir =
        std::env::var_os("CORRAL_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/corral/lab"));
    corral_lab::LabState::load(&dir).ok().flatten()
}

/// The local lab's controller URL, else http://127.0.0.1:7700.
pub fn default_url() -> String {
    local_lab().map(|s| s.url).unwrap_or_else(|| "http://127.0.0.1:7700".into())
}
