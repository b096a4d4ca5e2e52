//! Bringing a lab up: its state recorded first, then its devices and its daemons (or the
//! daemons missing from a lab already up).

use anyhow::{bail, Result};

use crate::netns::{self, link_exists, netns_exists};
use crate::procs::start_daemons;
use crate::state::{LabController, LabEtcd, LabHost, LabState, UpOptions};
use crate::teardown::down;

/// Brings a lab up (or reports the one already up). Returns its state.
pub async fn up(o: &UpOptions) -> Result<LabState> {
    if o.hosts == 0 || o.hosts > 50 {
        bail!("--hosts must be between 1 and 50");
    }
    if !o.templates.join("base.json").exists() {
        bail!(
            "no guest templates in {}: build them first with `make guest` (scripts/build-guest.sh)",
            o.templates.display()
        );
    }
    if let Some(mut s) = LabState::load(&o.dir)? {
        let devices = link_exists(&s.bridge) && s.hosts.iter().all(|h| netns_exists(&h.netns));
        if s.hosts.len() as u32 == o.hosts && devices {
            // Same lab: restart whichever daemon is not running (after a crash or a kill).
            start_daemons(&mut s, o).await?;
            return Ok(s);
        }
        tracing::info!("a previous lab in {} is incomplete or different; removing it first", o.dir.display());
        down(&o.dir)?;
    }
    let dir = o.dir.canonicalize().unwrap_or_else(|_| o.dir.clone());
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let idx = o.index;
    let gw = format!("198.18.{idx}.1");
    let mut s = LabState {
        index: idx,
        dir: dir.clone(),
        bridge: format!("crl{idx}br"),
        provider_bridge: format!("crl{idx}pv"),
        url: format!("http://{gw}:7700"),
        controller_pid: None,
        accel: o.accel.clone(),
        standby_controllers: (1..o.controllers.max(1))
            .map(|i| LabController { url: format!("http://{gw}:{}", 7700 + 10 * i), pid: None })
            .collect(),
        etcd: if o.controllers > 1 {
            corral_store::local_etcd::plan(3)?.into_iter().map(|member| LabEtcd { member, pid: None }).collect()
        } else {
            vec![]
        },
        hosts: (1..=o.hosts)
            .map(|i| LabHost {
                name: format!("lab-{i}"),
                netns: format!("corral{idx}-lab-{i}"),
                veth: format!("crl{idx}h{i}"),
                provider_veth: format!("crl{idx}p{i}"),
                ip: format!("198.18.{idx}.{}", 10 + i),
                data: dir.join(format!("lab-{i}")),
                agent_pid: None,
                standby: false,
                fault: None,
            })
            .collect(),
    };
    if link_exists(&s.bridge) {
        bail!(
            "device {} already exists but no lab state is in {}: another lab uses index {idx}; choose --index",
            s.bridge,
            dir.display()
        );
    }
    s.save()?;
    netns::create(&s, &gw)?;
    start_daemons(&mut s, o).await?;
    Ok(s)
}
