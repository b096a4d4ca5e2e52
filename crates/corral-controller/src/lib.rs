//! Corral's controller (`corral controller`): the REST API users and agents talk to, the state
//! store, placement through the scheduler core, virtual clusters, and the reconciler that
//! drives the agents toward the stored desired state.

pub mod agents;
pub mod api;
pub mod clusters;
pub mod deploy;
pub mod drs;
pub mod ha;
pub mod ha_policy;
pub mod hosts;
pub mod ipam;
pub mod leader;
pub mod migrate;
pub mod network;
pub mod operations;
pub mod placement;
pub mod profiles;
pub mod retention;
pub mod service;
pub mod tables;
pub mod templates;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use service::Controller;

/// How the controller is configured (`corral controller --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub host_timeout: Duration,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// Template library sent to hosts that lack a template.
    pub templates_dir: Option<PathBuf>,
    /// API token every request must carry (None: no check).
    pub token: Option<String>,
    /// Concurrent live migrations per host, outbound and inbound.
    pub migrations_out: usize,
    pub migrations_in: usize,
    /// Shell commands that power a host down for standby and up again (`{host}` replaced).
    pub standby_command: Option<String>,
    pub wake_command: Option<String>,
    /// HA: agents' lease, when a silent host becomes a suspect, and how long a returned host
    /// recovers before it takes VMs.
    pub lease: Duration,
    pub suspect_after: Duration,
    pub recover_after: Duration,
    /// HA admission control: failed hosts to keep room for, and warn instead of refusing.
    pub ha_reserve_hosts: usize,
    pub ha_admission_warn: bool,
    /// etcd endpoints for the state (empty: the embedded redb file in `data_dir`).
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub etcd_prefix: String,
    /// With etcd: the leader lease, seconds (a standby takes over this long after the leader
    /// dies).
    pub leader_ttl_s: i64,
    /// The URL other controllers, agents and clients reach this one at (default http://LISTEN).
    pub advertise: Option<String>,
    /// How many events, migrations and operations are kept, and for how long.
    pub retention: retention::Retention,
    /// Listen on a non-loopback address without a token (`--insecure`), with a warning.
    pub insecure: bool,
}

/// Runs the controller until the process is killed.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    corral_http::check_listen(cfg.listen, cfg.token.as_deref(), cfg.insecure)?;
    if cfg.token.is_none() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            "INSECURE: the controller listens on {} without an API token (--insecure): anyone who reaches \
             it can create, run and delete VMs; give --token-file FILE",
            cfg.listen
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    // The embedded file by default; etcd when endpoints are given.
    let me = cfg.advertise.clone().unwrap_or_else(|| format!("http://{}", cfg.listen));
    let (store, etcd): (Arc<dyn corral_store::Store>, _) = if cfg.etcd.is_empty() {
        (Arc::new(corral_store::RedbStore::open(&cfg.data_dir.join("state.redb"))?), None)
    } else {
        let s = Arc::new(corral_store::EtcdStore::connect(&cfg.etcd, &cfg.etcd_prefix)?);
        tracing::info!(
            "state in etcd at {} under {}; campaigning to lead as {me}",
            cfg.etcd.join(","),
            cfg.etcd_prefix
        );
        (s.clone(), Some(s))
    };
    let leadership = if etcd.is_some() { leader::Leadership::candidate(&me) } else { leader::Leadership::alone(&me) };
    let c = Arc::new(Controller::new(
        store,
        service::Settings {
            host_timeout: cfg.host_timeout,
            cpu_overcommit: cfg.cpu_overcommit,
            memory_overcommit: cfg.memory_overcommit,
            templates_dir: cfg.templates_dir.clone(),
            migrations_out: cfg.migrations_out.max(1),
            migrations_in: cfg.migrations_in.max(1),
            standby_command: cfg.standby_command.clone(),
            wake_command: cfg.wake_command.clone(),
            lease: cfg.lease,
            suspect_after: cfg.suspect_after,
            recover_after: cfg.recover_after,
            ha_reserve_hosts: cfg.ha_reserve_hosts,
            ha_admission_warn: cfg.ha_admission_warn,
            retention: cfg.retention,
        },
        cfg.token.clone(),
        leadership,
    ));
    if let Some(e) = etcd {
        tokio::spawn(leader::run(c.clone(), e, cfg.leader_ttl_s));
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("controller listening on {}", cfg.listen);
    // Give agents a heartbeat's time to report before judging what hosts run.
    let settle = Duration::from_secs(2);
    while_leading(&c, settle, Duration::from_secs(2), |c| async move { c.reconcile_once().await });
    while_leading(&c, settle, Duration::from_secs(1), |c| async move { c.drs_tick().await });
    while_leading(&c, Duration::ZERO, Duration::from_secs(60), |c| async move {
        c.prune_once().await;
    });
    while_leading(&c, Duration::ZERO, Duration::from_millis(250), |c| async move { c.ha_tick().await });
    axum::serve(listener, api::router(c)).await?;
    Ok(())
}

/// Runs `tick` every `period` (after `delay`) for as long as the controller runs, on the
/// leader only.
fn while_leading<F, Fut>(c: &Arc<service::Controller>, delay: Duration, period: Duration, tick: F)
where
    F: Fn(Arc<service::Controller>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let c = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        loop {
            if c.leadership.is_leader() {
                tick(c.clone()).await;
            }
            tokio::time::sleep(period).await;
        }
    });
}
