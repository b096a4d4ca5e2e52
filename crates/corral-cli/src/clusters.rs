//! `corral profile`, `corral cluster` and `corral operation`: virtual clusters from profiles.
//! Long operations show a progress bar and end with a summary (VMs, hosts, time per step).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use corral_api::cluster::{
    ClusterView, CreateCluster, OpState, Operation, PlacementPolicy, Profile, ProfileSource, ScaleCluster,
};

use crate::client::Client;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Create a profile from a TOML file (fields: template, vcpus, memory, disk, workload,
    /// network, restart_priority, [placement] policy/anti_affinity/labels).
    Create {
        name: String,
        #[arg(long, short)]
        file: PathBuf,
    },
    /// List profiles.
    List,
    /// Show a profile's TOML.
    Show { name: String },
    /// Edit a profile in $EDITOR (or replace it with --file).
    Edit {
        name: String,
        #[arg(long, short)]
        file: Option<PathBuf>,
    },
    /// Delete a profile (clusters made from it keep their copy).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Deploy a virtual cluster of SIZE VMs from a profile.
    Create {
        name: String,
        #[arg(long)]
        profile: String,
        #[arg(long)]
        size: u32,
        /// Balance the members over hosts (overrides the profile).
        #[arg(long, conflicts_with = "pack")]
        spread: bool,
        /// Put the members on the fewest hosts (overrides the profile).
        #[arg(long)]
        pack: bool,
        /// The cluster's IPv4 subnet (default: a free /24 of 100.64.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
        /// VXLAN network identifier of the cluster's network (default: the smallest free from 100).
        #[arg(long)]
        vni: Option<u32>,
        /// MTU of the members' NICs (default 1450: the underlay's 1500 less VXLAN's 50).
        #[arg(long)]
        mtu: Option<u32>,
        /// A file of SSH public keys cloud-init installs in every member (repeatable), with
        /// the profile's `ssh_keys`.
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<PathBuf>,
        /// Return at once with the operation id.
        #[arg(long)]
        no_wait: bool,
    },
    /// List clusters.
    List,
    /// Show a cluster: members, hosts, states, IPs.
    Show { name: String },
    /// Grow or shrink a cluster (shrinking removes the newest members first).
    Scale {
        name: String,
        #[arg(long)]
        size: u32,
        #[arg(long)]
        no_wait: bool,
    },
    /// Save every member to disk and release its host resources.
    Suspend {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Restore every member with its state and identity.
    Resume {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a cluster and its members.
    Delete {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OpCmd {
    /// List operations.
    List,
    /// Show an operation.
    Show { id: String },
    /// Wait for an operation to end (exit code 1 if it failed).
    Wait { id: String },
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn profile(cmd: ProfileCmd, c: &Client, json: bool) -> Result<()> {
    let show = |p: &Profile| -> Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(p)?);
        } else {
            output::profile(p);
        }
        Ok(())
    };
    match cmd {
        ProfileCmd::Create { name, file } => {
            let name = crate::name_arg("profile", &name)?;
            let p: Profile = c.post("/v1/profiles", &ProfileSource { name, toml: read(&file)? }).await?;
            show(&p)?;
        }
        ProfileCmd::List => {
            let ps: Vec<Profile> = c.get("/v1/profiles").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ps)?);
            } else {
                output::profiles(&ps);
            }
        }
        ProfileCmd::Show { name } => show(&c.get(&format!("/v1/profiles/{name}")).await?)?,
        ProfileCmd::Edit { name, file } => {
            let toml = match file {
                Some(f) => read(&f)?,
                None => {
                    let p: Profile = c.get(&format!("/v1/profiles/{name}")).await?;
                    let tmp = std::env::temp_dir().join(format!("corral-profile-{name}-{}.toml", std::process::id()));
                    std::fs::write(&tmp, &p.source)?;
                    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
                    let st = std::process::Command::new(&editor)
                        .arg(&tmp)
                        .status()
                        .with_context(|| format!("cannot run {editor}"))?;
                    let t = std::fs::read_to_string(&tmp)?;
                    let _ = std::fs::remove_file(&tmp);
                    if !st.success() {
                        bail!("{editor} failed; the profile is unchanged");
                    }
                    t
                }
            };
            let p: Profile = c
                .put(&format!("/v1/profiles/{name}"), &ProfileSource { name: crate::name_arg("profile", &name)?, toml })
                .await?;
            show(&p)?;
        }
        ProfileCmd::Delete { name } => {
            c.delete::<()>(&format!("/v1/profiles/{name}")).await?;
            eprintln!("deleted profile {name}");
        }
    }
    Ok(())
}

/// Follows an operation with a progress bar, then prints its summary. Exit code 1 if it failed.
pub async fn follow(c: &Client, op: Operation, json: bool) -> Result<i32> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(u64::from(op.total)) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut op = op;
    loop {
        bar.set_length(u64::from(op.total));
        bar.set_position(u64::from(op.done));
        bar.set_message(format!("{} {}", op.kind, op.phase));
        if op.state != OpState::Running {
            break;
        }
        op = c.get(&format!("/v1/operations/{}?wait=1", op.id)).await?;
    }
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&op)?);
    } else {
        output::operation(&op);
    }
    Ok(if op.state == OpState::Succeeded { 0 } else { 1 })
}

pub(crate) async fn start(c: &Client, op: Operation, no_wait: bool, json: bool) -> Result<i32> {
    if no_wait {
        if json {
            println!("{}", serde_json::to_string_pretty(&op)?);
        } else {
            println!("{}", op.id);
        }
        return Ok(0);
    }
    follow(c, op, json).await
}

pub async fn cluster(cmd: ClusterCmd, c: &Client, json: bool) -> Result<i32> {
    match cmd {
        ClusterCmd::Create { name, profile, size, spread, pack, subnet, vni, mtu, ssh_keys, no_wait } => {
            let ssh_keys = crate::keys::read(&ssh_keys)?;
            let policy = if pack {
                Some(PlacementPolicy::Pack)
            } else if spread {
                Some(PlacementPolicy::Spread)
            } else {
                None
            };
            let op: Operation = c
                .post(
                    "/v1/clusters",
                    &CreateCluster {
                        name: crate::name_arg("cluster", &name)?,
                        profile: crate::name_arg("profile", &profile)?,
                        size,
                        policy,
                        subnet,
                        vni,
                        mtu,
                        ssh_keys,
                    },
                )
                .await?;
            start(c, op, no_wait, json).await
        }
        ClusterCmd::List => {
            let cs: Vec<ClusterView> = c.get("/v1/clusters").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cs)?);
            } else {
                output::clusters(&cs);
            }
            Ok(0)
        }
        ClusterCmd::Show { name } => {
            let v: ClusterView = c.get(&format!("/v1/clusters/{name}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                output::cluster(&v);
            }
            Ok(0)
        }
        ClusterCmd::Scale { name, size, no_wait } => {
            let op: Operation = c.post(&format!("/v1/clusters/{name}/scale"), &ScaleCluster { size }).await?;
            start(c, op, no_wait, json).await
        }
        ClusterCmd::Suspend { name, no_wait } => {
            let op: Operation = c.post(&format!("/v1/clusters/{name}/suspend"), &()).await?;
            start(c, op, no_wait, json).await
        }
        ClusterCmd::Resume { name, no_wait } => {
            let op: Operation = c.post(&format!("/v1/clusters/{name}/resume"), &()).await?;
            start(c, op, no_wait, json).await
        }
        ClusterCmd::Delete { name, no_wait } => {
            let op: Operation = c.delete(&format!("/v1/clusters/{name}")).await?;
            start(c, op, no_wait, json).await
        }
    }
}

pub async fn operation(cmd: OpCmd, c: &Client, json: bool) -> Result<i32> {
    match cmd {
        OpCmd::List => {
            let ops: Vec<Operation> = c.get("/v1/operations").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ops)?);
            } else {
                output::operations(&ops);
            }
            Ok(0)
        }
        OpCmd::Show { id } => {
            let op: Operation = c.get(&format!("/v1/operations/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&op)?);
            } else {
                output::operation(&op);
            }
            Ok(0)
        }
        OpCmd::Wait { id } => {
            let op: Operation = c.get(&format!("/v1/operations/{id}")).await?;
            follow(c, op, json).await
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List the clusters' virtual networks.
    List,
    /// Show a network: VNI, subnet, MTU, hosts, members.
    Show { name: String },
}

pub async fn network(cmd: NetworkCmd, c: &Client, json: bool) -> Result<()> {
    match cmd {
        NetworkCmd::List => {
            let ns: Vec<corral_api::cluster::Network> = c.get("/v1/networks").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ns)?);
            } else {
                output::networks(&ns);
            }
        }
        NetworkCmd::Show { name } => {
            let n: corral_api::cluster::Network = c.get(&format!("/v1/networks/{name}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&n)?);
            } else {
                output::network(&n);
            }
        }
    }
    Ok(())
}
