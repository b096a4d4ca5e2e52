//! Whether the lab's daemons are up: waiting for the controllers and hosts to answer, and the
//! health check behind `corral lab status`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::procs::pid_is_ours;
use crate::state::LabState;

pub(crate) async fn wait_http(url: &str, timeout: Duration) -> Result<()> {
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

pub(crate) async fn wait_hosts(s: &LabState, n: usize, timeout: Duration) -> Result<()> {
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
