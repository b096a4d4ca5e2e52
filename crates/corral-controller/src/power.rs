//! Host power: standby and wake. A host's power state is stored with its flags before
//! anything is done about it. Put in standby, it takes no placements, and the operator's
//! `--standby-command` (with `{host}` replaced, e.g. an IPMI call; in the lab, stopping the
//! host's agent) is run; waking runs `--wake-command` and waits for the agent to report.
//! Placement wakes a standby host when the powered ones are short of room.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_api::agent::Register;
use corral_api::drs::HostPower;
use corral_api::{ApiError, Host};

use crate::service::{lock, store_err, Controller};
use crate::tables::{HOSTS, HOST_FLAGS};

/// How long a woken host's agent has to report.
const WAKE_TIMEOUT: Duration = Duration::from_secs(120);

impl Controller {
    /// Puts every host waiting for standby whose VMs have all left in standby.
    pub(crate) async fn finish_standby(self: &Arc<Self>) {
        let waiting: Vec<String> = lock(&self.drs.to_standby).iter().cloned().collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(vms) = self.vms() else { return };
        for h in waiting {
            let occupied = vms.iter().any(|v| v.host == h || v.migration.as_ref().is_some_and(|m| m.to == h));
            if occupied {
                continue;
            }
            lock(&self.drs.to_standby).remove(&h);
            if let Err(e) = self.standby_host(&h).await {
                tracing::warn!("standby of {h}: {}", e.message);
            }
        }
    }

    /// How long the host has been on as far as DRS knows (since it joined or woke, or since
    /// this controller first looked).
    pub(crate) fn on_for(&self, host: &str) -> Duration {
        lock(&self.drs.on_since).entry(host.to_string()).or_insert_with(Instant::now).elapsed()
    }

    /// A host (re)joined or woke: its history starts now.
    pub(crate) fn drs_host_on(&self, host: &str) {
        lock(&self.drs.on_since).insert(host.to_string(), Instant::now());
    }

    /// Hosts in standby, the largest first.
    fn standby_hosts(&self) -> Vec<String> {
        let mut regs: Vec<Register> = HOSTS.list(&*self.store).unwrap_or_default();
        regs.retain(|r| self.flags(&r.name).is_ok_and(|f| f.power == HostPower::Standby));
        regs.sort_by(|a, b| {
            (b.capacity.memory_mib, b.capacity.vcpus, &a.name).cmp(&(a.capacity.memory_mib, a.capacity.vcpus, &b.name))
        });
        regs.into_iter().map(|r| r.name).collect()
    }

    /// Runs a placement; while it fails for lack of room and a host is in standby, wakes one
    /// and tries again. So the pool is woken before it runs out of capacity for a deployment.
    /// The placement lock (`placing`, held by the caller) is let go while a host wakes, which
    /// takes up to minutes, so other placements (an HA restart) are not held up; `attempt`
    /// runs again under the lock afterwards, and must check anew what it relies on.
    pub(crate) async fn wake_while_short<'a, T>(
        self: &'a Arc<Self>,
        placing: &mut Option<tokio::sync::MutexGuard<'a, ()>>,
        mut attempt: impl FnMut() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        loop {
            match attempt() {
                Err(e) if e.kind == corral_api::ErrorKind::NoCapacity => {
                    let Some(h) = self.standby_hosts().into_iter().next() else { return Err(e) };
                    tracing::info!("no room for a deployment ({}): waking {h}", e.message);
                    *placing = None;
                    let woke = self.wake_host(&h).await;
                    *placing = Some(self.placing.lock().await);
                    woke?;
                }
                r => return r,
            }
        }
    }

    fn set_power(&self, host: &str, power: HostPower) -> Result<(), ApiError> {
        let mut f = self.flags(host)?;
        f.power = power;
        HOST_FLAGS.put(&*self.store, host, &f).map_err(store_err)
    }

    /// Puts an empty host in standby: the state is stored, then the standby command runs.
    pub async fn standby_host(self: &Arc<Self>, host: &str) -> Result<(), ApiError> {
        self.host(host)?;
        if let Some(v) = self.vms()?.iter().find(|v| v.host == host) {
            return Err(ApiError::conflict(format!(
                "host {host:?} still holds VM {:?}: move or delete its VMs first (`corral host evacuate {host}`)",
                v.def.name
            )));
        }
        if self.flags(host)?.power == HostPower::Standby {
            return Ok(());
        }
        self.set_power(host, HostPower::Standby)?;
        let note = match &self.settings.standby_command {
            Some(cmd) => match run_power_command(cmd, host).await {
                Ok(o) => format!(" ({o})"),
                Err(e) => {
                    // Still running: it stays on (and takes VMs again).
                    self.set_power(host, HostPower::On)?;
                    return Err(e);
                }
            },
            None => " (no --standby-command: parked, not powered off)".into(),
        };
        // Its last heartbeats are not a sign of life any more.
        self.forget_live(host);
        self.event("host.standby", host, format!("in standby{note}"));
        Ok(())
    }

    /// `POST /v1/hosts/{name}/wake`: starts waking a host and answers at once (the host is
    /// `waking`); the wake goes on in the background and a failure is an event. No request
    /// waits for a host to boot.
    pub fn begin_wake(self: &Arc<Self>, host: &str) -> Result<Host, ApiError> {
        self.host(host)?;
        if self.flags(host)?.power != HostPower::On {
            self.set_power(host, HostPower::Waking)?;
            let (me, name) = (self.clone(), host.to_string());
            tokio::spawn(async move {
                if let Err(e) = me.wake_host(&name).await {
                    me.event("host.wake-failed", &name, e.message);
                }
            });
        }
        self.host(host)
    }

    /// Wakes a host in standby: the state is stored, the wake command runs, and the host is on
    /// once its agent reports.
    pub async fn wake_host(self: &Arc<Self>, host: &str) -> Result<(), ApiError> {
        self.host(host)?;
        if self.flags(host)?.power == HostPower::On {
            return Ok(());
        }
        self.set_power(host, HostPower::Waking)?;
        lock(&self.drs.to_standby).remove(host);
        // Woken means: its agent reported after this moment, not a heartbeat from before
        // it slept.
        let asked = Instant::now();
        if let Some(cmd) = &self.settings.wake_command {
            if let Err(e) = run_power_command(cmd, host).await {
                self.set_power(host, HostPower::Standby)?;
                return Err(e);
            }
        }
        while self.last_heartbeat(host).is_none_or(|(at, _)| at <= asked) {
            if asked.elapsed() > WAKE_TIMEOUT {
                self.set_power(host, HostPower::Standby)?;
                return Err(ApiError::unavailable(format!(
                    "host {host:?} did not report within {WAKE_TIMEOUT:?} of being woken: check its agent and the \
                     wake command"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.set_power(host, HostPower::On)?;
        self.event("host.woken", host, format!("on again after {:.1} s", asked.elapsed().as_secs_f64()));
        Ok(())
    }
}

/// Runs an operator's power command with `{host}` replaced; its output is returned. The host
/// name goes into a shell line, so only a valid name (a DNS label: no shell syntax) is used.
async fn run_power_command(cmd: &str, host: &str) -> Result<String, ApiError> {
    let host: corral_api::types::Name = host.parse().map_err(ApiError::invalid)?;
    let line = cmd.replace("{host}", &host);
    let run = tokio::process::Command::new("sh").arg("-c").arg(&line).output();
    let out = tokio::time::timeout(WAKE_TIMEOUT, run)
        .await
        .map_err(|_| ApiError::unavailable(format!("power command `{line}` did not finish within {WAKE_TIMEOUT:?}")))?
        .map_err(|e| ApiError::internal(format!("cannot run power command `{line}`: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::unavailable(format!(
            "power command `{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(format!("ran `{line}`"))
}

#[cfg(test)]
mod tests {
    use super::run_power_command;

    #[tokio::test]
    async fn power_commands_take_only_valid_host_names() {
        let out = run_power_command("echo power {host}", "lab-2").await.expect("runs");
        assert!(out.contains("power lab-2"), "{out}");
        let marker = std::env::temp_dir().join(format!("corral-power-test-{}", std::process::id()));
        let hostile = format!("a;touch {};b", marker.display());
        let e = run_power_command("echo {host}", &hostile).await.expect_err("refused");
        assert_eq!(e.status, 422, "{e}");
        assert!(!marker.exists(), "nothing ran");
    }
}
