//! Corral's controller (`corral controller`): the REST API users and agents talk to, the state
//! store, placement through the scheduler core, virtual clusters, and the reconciler that
//! drives the agents toward the stored desired state.

pub mod agents;
pub mod api;
pub mod clusters;
pub mod config;
pub mod deploy;
pub mod drs;
pub mod ha;
pub mod ha_policy;
pub mod hosts;
pub mod images;
pub mod ipam;
pub mod leader;
pub mod migrate;
pub mod network;
pub mod operations;
pub mod placement;
pub mod power;
pub mod profiles;
pub mod retention;
pub mod service;
pub mod streams;
pub mod tables;
pub mod templates;
#[cfg(test)]
mod tests;
pub mod tunnels;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corral_http::runner::Runner;

pub use config::{Config, ConfigError, Settings};
pub use service::Controller;

/// Checks `cfg`, then runs the controller until it is asked to end (SIGTERM or SIGINT); it
/// then stops its loops and its server, and a leader hands its leadership over.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
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
    let c = Arc::new(Controller::new(store, cfg.settings.clone(), cfg.token.clone(), leadership));
    let mut loops = Runner::new();
    if let Some(e) = etcd {
        let (c, ttl) = (c.clone(), cfg.leader_ttl_s);
        loops.spawn("leader election", move |stop| leader::run(c, e, ttl, stop));
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("controller listening on {}", cfg.listen);
    // Give agents a heartbeat's time to report before judging what hosts run.
    let settle = Duration::from_secs(2);
    while_leading(
        &mut loops,
        "reconciler",
        &c,
        settle,
        Duration::from_secs(2),
        |c| async move { c.reconcile_once().await },
    );
    while_leading(&mut loops, "drs", &c, settle, Duration::from_secs(1), |c| async move { c.drs_tick().await });
    while_leading(&mut loops, "retention", &c, Duration::ZERO, Duration::from_secs(60), |c| async move {
        c.prune_once().await;
    });
    while_leading(
        &mut loops,
        "ha",
        &c,
        Duration::ZERO,
        Duration::from_millis(250),
        |c| async move { c.ha_tick().await },
    );
    loops.serve(listener, api::router(c), SHUTDOWN_GRACE).await?;
    tracing::info!("controller stopped");
    Ok(())
}

/// How long a stopping controller lets its loops finish their round and requests complete.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs `tick` every `period` (after `delay`) until the controller stops, on the leader only.
fn while_leading<F, Fut>(
    loops: &mut Runner,
    name: &'static str,
    c: &Arc<service::Controller>,
    delay: Duration,
    period: Duration,
    tick: F,
) where
    F: Fn(Arc<service::Controller>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (c, tick) = (c.clone(), Arc::new(tick));
    loops.every(name, delay, period, move || {
        let (c, tick) = (c.clone(), tick.clone());
        async move {
            if c.leadership.is_leader() {
                tick(c).await;
            }
        }
    });
}
