//! Leadership among controllers that share an etcd store: one leads (it serves the API, takes
//! heartbeats and runs the reconciler, DRS and HA loops), the others stand by and answer every
//! request with 503 and the leader's URL, which agents and the CLI follow.
//!
//! The leader holds a key bound to an etcd lease of `--leader-ttl` seconds and renews it
//! twice a second. If it cannot renew it for nearly that long (it lost etcd), it stops acting
//! before another can take over: a controller never acts on state it cannot write. When the
//! lease runs out (leader dead or cut off), a standby takes the key, reloads the operations
//! from the store and leads; the reconciler finishes what the old leader left pending. A
//! leader that is shut down (SIGTERM) steps down and revokes its lease, so a standby takes
//! over at once instead of a lease later.
//!
//! Leadership is also enforced where it matters, in the store: while it leads, every write of
//! the controller is conditioned on the leader key still being bound to its lease, in the same
//! etcd transaction, and once it steps down it writes nothing. So the work of a deposed leader
//! still in flight (paused past its lease, say) cannot land a write, and since Corral writes
//! its intent before it acts, it acts on nothing either.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_http::runner::Stop;
use corral_store::{EtcdStore, WriteGuard};

use crate::service::{lock, Controller};

const KEY: &str = "leader";

/// Who leads, as this controller knows it.
#[derive(Debug)]
pub struct Leadership {
    /// This controller's URL, as others reach it.
    pub me: String,
    leading: AtomicBool,
    leader: Mutex<Option<String>>,
}

impl Leadership {
    /// A controller alone (embedded store): it always leads.
    pub fn alone(me: &str) -> Self {
        Self { me: me.into(), leading: AtomicBool::new(true), leader: Mutex::new(Some(me.into())) }
    }

    /// A controller that must win an election first.
    pub fn candidate(me: &str) -> Self {
        Self { me: me.into(), leading: AtomicBool::new(false), leader: Mutex::new(None) }
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// The leader's URL, if known.
    pub fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }
}

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Campaigns for leadership and keeps it, until `stop`; then gives it up at once.
pub async fn run(c: Arc<Controller>, etcd: Arc<EtcdStore>, ttl_s: i64, stop: Stop) {
    let ttl = Duration::from_secs(ttl_s.max(2) as u64);
    let mut lease: Option<i64> = None;
    let mut renewed = Instant::now();
    loop {
        // Keep our lease alive, leading or not.
        if let Some(id) = lease {
            let e = etcd.clone();
            let within = ttl / 3;
            match blocking(move || e.keep_alive(id, within)).await {
                Some(Ok(true)) => renewed = Instant::now(),
                Some(Ok(false)) => {
                    lease = None;
                    step_down(&c, &etcd, "its leader lease expired");
                }
                // Cannot renew: stop acting before the lease can run out under us.
                Some(Err(err)) if renewed.elapsed() + Duration::from_secs(1) >= ttl => {
                    lease = None;
                    step_down(&c, &etcd, &format!("it cannot reach etcd ({err})"));
                }
                Some(Err(_)) => {}
                None => {}
            }
        }
        if !c.leadership.is_leader() {
            if lease.is_none() {
                let e = etcd.clone();
                if let Some(Ok(id)) = blocking(move || e.grant_lease(ttl_s)).await {
                    lease = Some(id);
                    renewed = Instant::now();
                }
            }
            if let Some(id) = lease {
                let (e, me) = (etcd.clone(), c.leadership.me.clone());
                if let Some(Ok((holder, ours))) = blocking(move || e.acquire(KEY, &me, id)).await {
                    *lock(&c.leadership.leader) = Some(holder.clone());
                    if ours {
                        // Its writes land only while the key is still bound to this lease.
                        etcd.guard_writes(WriteGuard::Leader { name: KEY.into(), lease: id });
                        c.leadership.leading.store(true, Ordering::SeqCst);
                        c.promoted();
                    }
                }
            }
        }
        if !stop.sleep(Duration::from_millis(500)).await {
            break;
        }
    }
    if let Some(id) = lease {
        step_down(&c, &etcd, "it is shutting down");
        // Freed now, the key goes to a standby without waiting for the lease to run out.
        let e = etcd.clone();
        match blocking(move || e.revoke(id)).await {
            Some(Ok(())) => tracing::info!("controller {} gave up its leader lease", c.leadership.me),
            Some(Err(e)) => tracing::warn!("cannot revoke the leader lease ({e}): a standby leads once it runs out"),
            None => {}
        }
    }
}

fn step_down(c: &Controller, etcd: &EtcdStore, why: &str) {
    if c.leadership.leading.swap(false, Ordering::SeqCst) {
        etcd.guard_writes(WriteGuard::Deposed);
        *lock(&c.leadership.leader) = None;
        tracing::warn!("controller {} stops leading: {why}", c.leadership.me);
    }
}

impl Controller {
    /// Just won the election: start from the stored state, as after a restart.
    fn promoted(&self) {
        self.load_ops();
        self.ha_restart_clock();
        tracing::info!("controller {} leads", self.leadership.me);
        self.event("controller.leader", &self.leadership.me, "leads: takes heartbeats and runs the reconciler");
    }
}
