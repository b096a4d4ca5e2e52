//! `corral`: one binary for the whole system. `corral controller` and `corral agent` run the
//! daemons, `corral lab` makes a lab of hosts on one machine, and the other subcommands are the
//! client of the controller's REST API.
//!
//! This file is the root: the top-level command line and its dispatch to one module per noun.

mod client;
mod clusters;
mod daemons;
mod drs;
mod ha;
mod hosts;
mod keys;
mod lab;
mod migrate;
mod output;
mod sim;
mod ssh;
mod store;
mod streams;
mod templates;
mod tokens;
mod vms;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use client::Client;
use output::{print, Output};

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

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controller.
    Controller(daemons::ControllerArgs),
    /// The controller's state store.
    Store {
        #[command(subcommand)]
        cmd: store::StoreCmd,
    },
    /// Run the agent of this host.
    Agent(daemons::AgentArgs),
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
        cmd: lab::LabCmd,
    },
    /// Hosts of the pool.
    Host {
        #[command(subcommand)]
        cmd: hosts::HostCmd,
    },
    /// The image library: disk images with an OS preinstalled, which VMs are made from.
    #[command(alias = "template")]
    Image {
        #[command(subcommand)]
        cmd: templates::TemplateCmd,
    },
    /// Virtual machines.
    Vm {
        #[command(subcommand)]
        cmd: vms::VmCmd,
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
        cmd: ha::HaCmd,
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

fn main() {
    default_sigpipe(stream_command(&std::env::args().collect::<Vec<_>>()));
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
    let url = cli.url.clone().unwrap_or_else(lab::default_url);
    let token = cli.token.clone().or_else(tokens::default_token);
    let client = || Client::new(&url, token.clone());
    match cli.cmd {
        Cmd::Controller(a) => daemons::controller(a).await?,
        Cmd::Store { cmd } => store::store(cmd)?,
        Cmd::Agent(a) => daemons::agent(a).await?,
        Cmd::AgentWatchdog { data } => daemons::watchdog(data).await?,
        Cmd::Lab { cmd } => return lab::lab(cmd, o).await,
        Cmd::Sim { args } => sim::sim(args)?,
        Cmd::Host { cmd } => return hosts::host(cmd, &client()?, o).await,
        Cmd::Image { cmd } => templates::template(cmd, &client()?, o).await?,
        Cmd::Vm { cmd } => return vms::vm(cmd, &client()?, o).await,
        Cmd::Drs { cmd } => drs::drs(cmd, &client()?, o == Output::Json).await?,
        Cmd::Ha { cmd } => ha::ha(cmd, &client()?, o).await?,
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

/// A name as the API takes it; refused here already, saying which name (`kind`).
pub(crate) fn name_arg(kind: &str, s: &str) -> Result<corral_api::types::Name> {
    corral_api::names::validate_name(kind, s).map_err(anyhow::Error::msg)?;
    s.parse().map_err(anyhow::Error::msg)
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Whether the command streams over the network (an upload, a console, a VNC display): a
/// peer that closes its socket must be an error it reports, not a SIGPIPE that ends it
/// without a word.
fn stream_command(args: &[String]) -> bool {
    // Flags and their values may come first (`--output json image import ...`).
    let words: Vec<&str> = args.iter().skip(1).map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    words.windows(2).any(|w| {
        matches!(w, ["image" | "template", "import" | "export"] | ["vm", "console" | "vnc" | "port-forward" | "tunnel"])
    })
}

/// Restores the default SIGPIPE action, so `corral vm list | head` ends quietly when the
/// reader goes away, as Unix tools do (Rust ignores SIGPIPE, which turns it into a panic in
/// `println!`). Streaming commands keep it ignored (see [`stream_command`]).
#[allow(unsafe_code)]
fn default_sigpipe(streaming: bool) {
    if streaming {
        return;
    }
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always a valid
    // disposition for SIGPIPE.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

#[cfg(test)]
mod tests {
    use super::stream_command;

    #[test]
    fn streaming_commands_are_recognised_wherever_the_flags_are() {
        let args = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        assert!(stream_command(&args("corral image import x f.qcow2")));
        assert!(stream_command(&args("corral --output json image import x f.qcow2")));
        assert!(stream_command(&args("corral vm console web-1")));
        assert!(stream_command(&args("corral --url http://a:7700 vm vnc web-1")));
        assert!(!stream_command(&args("corral vm list")));
        assert!(!stream_command(&args("corral image list")));
    }
}
