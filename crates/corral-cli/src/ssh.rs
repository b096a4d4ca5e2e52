//! `corral vm ssh`: runs the operator's own `ssh` with a ProxyCommand of `corral vm tunnel`,
//! so SSH reaches the guest through the controller and the VM's agent from wherever corral
//! reaches the controller (the lab's hosts in namespaces included). Host keys are remembered
//! under the VM's identity (`corral-vm-<uuid>`), not its address, and a first key is accepted
//! (the tunnel itself is authenticated by the API token).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use corral_api::tunnel::GuestPort;
use corral_api::Vm;

/// What `corral vm ssh` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct SshArgs {
    /// The VM.
    pub name: String,
    /// The user to log in as (default: the image's default user, e.g. debian; else ssh's).
    #[arg(short = 'l', long = "login")]
    pub user: Option<String>,
    /// A private key to log in with.
    #[arg(short = 'i', long)]
    pub identity: Option<PathBuf>,
    /// Forward your SSH agent (so the guest can log in to the other members with your key).
    #[arg(short = 'A', long)]
    pub forward_agent: bool,
    /// The guest's SSH port.
    #[arg(long, default_value = "22")]
    pub port: GuestPort,
    /// An option for ssh, as `ssh -o` takes it (repeatable; yours win over Corral's).
    #[arg(long = "ssh-option", value_name = "OPTION=VALUE")]
    pub options: Vec<String>,
    /// The command to run in the guest (none: an interactive login).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The ssh command line (without `ssh` itself) that reaches `vm` through `corral` (the path
/// of this program) with `tunnel` as its ProxyCommand arguments.
pub fn ssh_args(a: &SshArgs, vm: &Vm, corral: &str) -> Result<Vec<OsString>> {
    // ssh runs the ProxyCommand with the user's shell, after expanding its `%` tokens.
    let quote = |s: &str| -> Result<String> {
        let q = shlex::try_quote(s).map_err(|e| anyhow!("cannot quote {s:?} for ssh's ProxyCommand: {e}"))?;
        Ok(q.replace('%', "%%"))
    };
    let proxy = format!("ProxyCommand={} vm tunnel {} {}", quote(corral)?, quote(&vm.def.name)?, a.port);
    let mut out: Vec<OsString> = Vec::new();
    // ssh takes the first value given for an option: the operator's go first.
    for o in &a.options {
        if o.starts_with('-') || !o.contains('=') {
            return Err(anyhow!("--ssh-option {o:?}: write OPTION=VALUE, as ssh -o takes it"));
        }
        out.extend(["-o".into(), o.into()]);
    }
    for o in [proxy, format!("HostKeyAlias=corral-vm-{}", vm.def.uuid), "StrictHostKeyChecking=accept-new".to_string()]
    {
        out.extend(["-o".into(), o.into()]);
    }
    if let Some(u) = &a.user {
        out.extend(["-l".into(), u.into()]);
    }
    if let Some(i) = &a.identity {
        out.extend(["-i".into(), i.into()]);
    }
    if a.forward_agent {
        out.push("-A".into());
    }
    // The host name only names the connection (the ProxyCommand does the reaching).
    out.push(vm.def.name.to_string().into());
    if !a.command.is_empty() {
        out.push("--".into());
        out.extend(a.command.iter().map(OsString::from));
    }
    Ok(out)
}

/// Replaces this process with `ssh` to the VM; `url` and `token` reach the ProxyCommand
/// through the environment (not its command line, which other users may read).
pub fn exec_ssh(a: &SshArgs, vm: &Vm, url: &str, token: Option<&str>) -> Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    crate::streams::check_reachable(vm)?;
    let me = std::env::current_exe().context("cannot find the corral program for ssh's ProxyCommand")?;
    let me = me.to_str().ok_or_else(|| anyhow!("the corral program's path {} is not UTF-8", me.display()))?;
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(ssh_args(a, vm, me)?).env("CORRAL_URL", url);
    match token {
        Some(t) => cmd.env("CORRAL_TOKEN", t),
        None => cmd.env_remove("CORRAL_TOKEN"),
    };
    let e = cmd.exec();
    Err(anyhow!("cannot run ssh (install openssh-client): {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: SshArgs,
    }

    fn vm(name: &str) -> Vm {
        let mut v: Vm = serde_json::from_value(serde_json::json!({
            "name": name, "uuid": "6b1f3c1e-8d2a-4b8e-9a4c-0d9b2f1e7a10", "template": "debian12",
            "vcpus": 1, "memory_mib": 512, "mac": "02:00:00:00:00:01", "workload": "idle",
            "host": "h1", "state": "running", "created_ms": 0
        }))
        .expect("a VM record");
        v.cluster = Some("web".into());
        v
    }

    fn words(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_proxy_command_is_quoted_for_the_shell_and_for_ssh() {
        let a = T::parse_from([
            "t",
            "web-1",
            "-l",
            "debian",
            "-A",
            "--ssh-option",
            "UserKnownHostsFile=/tmp/k",
            "--",
            "uname",
            "-a",
        ])
        .a;
        let w = words(&ssh_args(&a, &vm("web-1"), "/opt/my corral/100%/corral").unwrap());
        assert_eq!(w[..2], ["-o", "UserKnownHostsFile=/tmp/k"], "the operator's options come first");
        assert_eq!(w[3], "ProxyCommand='/opt/my corral/100%%/corral' vm tunnel web-1 22");
        assert_eq!(w[5], "HostKeyAlias=corral-vm-6b1f3c1e-8d2a-4b8e-9a4c-0d9b2f1e7a10");
        assert!(w.windows(2).any(|p| p == ["-l", "debian"]));
        assert!(w.contains(&"-A".to_string()));
        assert_eq!(w[w.len() - 4..], ["web-1", "--", "uname", "-a"]);
    }

    #[test]
    fn bad_ports_and_options_are_refused() {
        assert!(T::try_parse_from(["t", "web-1", "--port", "0"]).is_err());
        assert!(T::try_parse_from(["t", "web-1", "--port", "70000"]).is_err());
        let a = T::parse_from(["t", "web-1", "--ssh-option=-oProxyCommand=evil"]).a;
        assert!(ssh_args(&a, &vm("web-1"), "corral").is_err());
    }

    #[test]
    fn a_stopped_vm_is_refused_before_ssh_runs() {
        let mut v = vm("web-1");
        v.state = corral_api::VmState::Inactive;
        let e = crate::streams::check_reachable(&v).unwrap_err().to_string();
        assert!(e.contains("start it first"), "{e}");
        let mut v = vm("web-1");
        v.cluster = None;
        assert!(crate::streams::check_reachable(&v).unwrap_err().to_string().contains("no address"));
    }
}
