//! Taking one lab host out and back: injected faults (`corral lab kill|partition|heal`) and
//! power off/on (what the controller's standby and wake commands run in a lab).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::netns::ip;
use crate::procs::{kill_pid, pid_is_ours, qemu_pids, start_daemons};
use crate::state::{lab_host, UpOptions};

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
