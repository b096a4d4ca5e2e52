//! `corral vm`: virtual machines — create, list, show, start, stop, pause, suspend, resume,
//! move, delete, read the serial console and run commands in the guest.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use corral_api::{ConsoleChunk, CreateVm, ExecRequest, ExecResult, HaPolicy, Storage, Vm};

use crate::client::Client;
use crate::output::{self, print, Output};
use crate::{migrate, name_arg};

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// Grow a VM's root disk, online while it runs (cloud images grow their partition and
    /// file system at the next boot; `growpart`/`resize2fs` do it at once).
    Resize {
        name: String,
        /// The new size (20G), or growth (+5G).
        #[arg(long, allow_hyphen_values = true)]
        size: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM from a template (copy-on-write disk) and start it.
    Create {
        name: String,
        #[arg(long, default_value = "base")]
        template: String,
        /// vCPUs (default: the image's, else 1).
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory, e.g. 256M or 1G (default: the image's, else 256M).
        #[arg(long)]
        memory: Option<String>,
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
        #[arg(long)]
        ha: Option<HaPolicy>,
        /// Where its disk lives: local (on its host) or shared (the pool every host mounts).
        #[arg(long, default_value = "local")]
        storage: Storage,
        /// Firmware, for an image that boots from its disk: bios or uefi (default: the image's).
        #[arg(long)]
        firmware: Option<String>,
        /// A file of SSH public keys cloud-init installs for the image's default user
        /// (repeatable).
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<std::path::PathBuf>,
        /// A cloud-config file merged into its cloud-init user-data.
        #[arg(long, value_name = "FILE")]
        user_data: Option<std::path::PathBuf>,
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
        /// Print the console log and keep printing new output (read-only).
        #[arg(long, short)]
        follow: bool,
        /// Print the console log and end (read-only); the default when standard input is not
        /// a terminal and --interactive is not given.
        #[arg(long, conflicts_with_all = ["follow", "interactive"])]
        log: bool,
        /// Attach read-write even when standard input is not a terminal.
        #[arg(long, short)]
        interactive: bool,
    },
    /// A VM's disks.
    Disk {
        #[command(subcommand)]
        cmd: DiskCmd,
    },
    /// Serve a VM's graphical display on a local port for a VNC viewer.
    Vnc {
        name: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1:5900")]
        listen: std::net::SocketAddr,
        /// End after the first viewer leaves.
        #[arg(long)]
        once: bool,
    },
    /// Log in to the guest with your ssh, through the controller (works wherever corral does).
    Ssh(crate::ssh::SshArgs),
    /// Forward local ports to ports of the guest: `[ADDRESS:]LOCAL:REMOTE`, e.g. `8080:80`
    /// (`:80` picks a free local port); every connection is carried through the controller.
    PortForward {
        name: String,
        #[arg(required = true)]
        forwards: Vec<crate::streams::Forward>,
    },
    /// Carry standard input and output to a TCP port of the guest (what `vm ssh` uses as
    /// ssh's ProxyCommand).
    Tunnel { name: String, port: corral_api::tunnel::GuestPort },
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

pub async fn vm(cmd: VmCmd, c: &Client, o: Output) -> Result<i32> {
    let show = |v: &Vm| print(o, v, output::vm);
    match cmd {
        VmCmd::Create {
            name,
            template,
            vcpus,
            memory,
            host,
            workload,
            no_start,
            ha,
            storage,
            firmware,
            ssh_keys,
            user_data,
        } => {
            let memory_mib = memory.map(|m| corral_api::size::parse_mib(&m)).transpose().map_err(anyhow::Error::msg)?;
            let m = anyhow::Error::msg;
            let req = CreateVm {
                name: name_arg("VM", &name)?,
                template: name_arg("template", &template)?,
                vcpus: vcpus.map(corral_api::types::check_vcpus).transpose().map_err(m)?,
                memory_mib: memory_mib.map(corral_api::types::check_memory_mib).transpose().map_err(m)?,
                host: host.map(|h| name_arg("host", &h)).transpose()?,
                workload: workload.map(corral_api::types::Workload::try_from).transpose().map_err(m)?,
                start: !no_start,
                ha,
                storage,
                firmware: firmware.map(|f| f.parse()).transpose().map_err(|e: String| m(format!("--firmware: {e}")))?,
                ssh_keys: crate::keys::read(&ssh_keys)?,
                user_data: user_data
                    .map(|f| -> anyhow::Result<corral_api::cloud_config::CloudConfig> {
                        let text = std::fs::read_to_string(&f)
                            .map_err(|e| anyhow::anyhow!("--user-data {}: cannot read it: {e}", f.display()))?;
                        text.parse().map_err(|e: String| anyhow::anyhow!("--user-data {}: {e}", f.display()))
                    })
                    .transpose()?,
            };
            show(&c.post::<_, Vm>("/v1/vms", &req).await?)?;
        }
        VmCmd::List => print(o, &c.get::<Vec<Vm>>("/v1/vms").await?, |v| output::vms(v))?,
        VmCmd::Show { name } => show(&c.get::<Vm>(&format!("/v1/vms/{name}")).await?)?,
        VmCmd::Start { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/actions/start"), &()).await?)?,
        VmCmd::Stop { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/actions/stop"), &()).await?)?,
        VmCmd::Pause { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/actions/pause"), &()).await?)?,
        VmCmd::Resume { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/actions/resume"), &()).await?)?,
        VmCmd::Suspend { name } => show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/actions/suspend"), &()).await?)?,
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
        VmCmd::Console { name, follow: false, log: false, interactive }
            if interactive || std::io::IsTerminal::is_terminal(&std::io::stdin()) =>
        {
            crate::streams::console(c, &name).await?;
        }
        VmCmd::Disk { cmd: DiskCmd::Resize { name, size } } => {
            let name = name_arg("VM", &name)?;
            let (grow, text) = match size.strip_prefix('+') {
                Some(rest) => (true, rest),
                None => (false, size.as_str()),
            };
            let mib = corral_api::size::parse_mib(text).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let req = if grow {
                corral_api::ResizeDisk { size_mib: None, grow_mib: Some(mib) }
            } else {
                corral_api::ResizeDisk { size_mib: Some(mib), grow_mib: None }
            };
            show(&c.post::<_, Vm>(&format!("/v1/vms/{name}/disk/resize"), &req).await?)?;
        }
        VmCmd::Vnc { name, listen, once } => crate::streams::vnc(c, &name, listen, once).await?,
        VmCmd::Ssh(mut a) => {
            let name = name_arg("VM", &a.name)?;
            let vm: Vm = c.get(&format!("/v1/vms/{name}")).await?;
            if a.user.is_none() {
                // The image's default user (cloud-init's), when it names one.
                let image = c.get::<corral_api::Template>(&format!("/v1/images/{}", vm.def.template)).await;
                a.user = image.ok().and_then(|t| t.default_user).map(|u| u.0);
            }
            match crate::ssh::exec_ssh(&a, &vm, &c.leader(), c.token())? {}
        }
        VmCmd::PortForward { name, forwards } => {
            crate::streams::port_forward(c, name_arg("VM", &name)?.as_str(), &forwards).await?
        }
        VmCmd::Tunnel { name, port } => crate::streams::tunnel(c, name_arg("VM", &name)?.as_str(), port).await?,
        VmCmd::Console { name, follow, .. } => {
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
