//! High availability: failure detection, fencing by lease, and restarting VMs of failed hosts.
//!
//! Every heartbeat renews the host's lease (`--lease`, default 7 s) and names its peers and
//! its HA VMs; an agent that cannot renew it *and* reaches no majority of those peers is
//! isolated and stops its HA VMs itself before the lease runs out (a controller outage is not
//! isolation: VMs keep running). A host whose heartbeats are missing for `--suspect-after`
//! (default 2 s) is a suspect: the peers named in its lease are asked to reach it over the
//! underlay (its agent, else a ping). Only if at least half of them answer and none reaches it
//! is the host declared failed (it stays up only while it reaches more than half, so the two
//! rules never both hold); a controller-side hiccup (peers reach it, or too few answer) fails
//! nothing over. The VMs of a failed host are restarted elsewhere only once its lease
//! has expired and it has had the time an isolated host takes to fence after losing its peers,
//! so a VM never runs twice: by then the partitioned agent (or its watchdog) has fenced
//! itself, or the host is dead. A controller that has just started, become leader or been
//! paused fails nothing over for one full lease, so agents can renew first.
//!
//! A host that comes back is told it was fenced (its agent stops whatever still runs), the
//! orphan sweep removes the copies that now live elsewhere, and it takes no VMs while it
//! recovers (damping); a host that failed three times in ten minutes is quarantined
//! (cordoned) until an operator uncordons it. Every step is an event with its time.
//!
//! Which HA policy a VM gets, admission control and `corral ha status` are in `ha_policy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::agent::{HeartbeatReply, Peer, ProbeRequest, Register, VmStatus};
use corral_api::drs::HostPower;
use corral_api::{now_ms, ApiError, HaPolicy, Maintenance, Pending, Vm, VmState};

use crate::service::{lock, store_err, Controller, HostFlags};
use crate::tables::{HOSTS, HOST_FLAGS};

/// Failures kept for damping, and the window they count in.
const DAMPING_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Failures within the window that quarantine a host.
const QUARANTINE_AFTER: usize = 3;
/// A suspect whose peers reach it is probed again after this long.
const REPROBE: Duration = Duration::from_secs(3);

/// A host declared failed (stored with its flags).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// Its last heartbeat (0: none since the controller started).
    pub last_heartbeat_ms: u64,
    /// When the peers' probes confirmed it.
    pub detected_ms: u64,
    /// The peers that could not reach it.
    pub confirmed_by: Vec<String>,
    /// When its lease ran out and its VMs were restarted elsewhere.
    #[serde(default)]
    pub fenced_ms: Option<u64>,
}

/// Restarts in place of one VM within the damping window before it is left in error.
const RESTARTS_IN_PLACE: usize = 3;

/// Whether this report says the VM's QEMU died by itself (crashed or killed) while it ran:
/// not stopped by an operation, nor fenced.
pub(crate) fn crashed(vm: &Vm, st: &corral_api::agent::VmStatus) -> bool {
    vm.def.ha != HaPolicy::Off
        && vm.state == VmState::Running
        && vm.pending.is_none()
        && vm.migration.is_none()
        && st.state == VmState::Inactive
        && st.ended == Some(corral_api::agent::Ended::Exited)
}

/// What the HA loop keeps between ticks, in memory.
#[derive(Debug)]
pub(crate) struct HaLive {
    /// HA VMs whose QEMU died on a live host, to restart there.
    crashed: Mutex<Vec<String>>,
    /// When each VM was last restarted in place.
    restarts: Mutex<BTreeMap<String, Vec<Instant>>>,
    /// When this controller started leading: hosts not heard from since count from here.
    started: Mutex<Instant>,
    /// Suspects being probed now.
    probing: Mutex<BTreeSet<String>>,
    /// Suspects their peers reached (agent down, host up), and when.
    reached: Mutex<BTreeMap<String, Instant>>,
    /// When each failed host was declared failed, by this controller's clock.
    detected: Mutex<BTreeMap<String, Instant>>,
    /// The last HA tick: a long gap means this controller was paused.
    last_tick: Mutex<Option<Instant>>,
}

impl Default for HaLive {
    fn default() -> Self {
        Self {
            crashed: Default::default(),
            restarts: Default::default(),
            started: Mutex::new(Instant::now()),
            probing: Default::default(),
            reached: Default::default(),
            detected: Default::default(),
            last_tick: Default::default(),
        }
    }
}

impl Controller {
    /// When the host was last heard from (this controller's start if never).
    fn last_heard(&self, host: &str) -> (Instant, u64) {
        self.last_heartbeat(host).unwrap_or((*lock(&self.ha.started), 0))
    }

    /// This controller has just started leading: hosts get a full suspect period to report.
    pub(crate) fn ha_restart_clock(&self) {
        *lock(&self.ha.started) = Instant::now();
    }

    /// The peers of `host` as its lease names them: the other registered hosts that are
    /// powered on and not failed. Recorded in its flags when they change.
    fn lease_peers(&self, host: &str, f: &mut HostFlags) -> Result<Vec<Peer>, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let mut peers = vec![];
        for r in regs.into_iter().filter(|r| r.name != host) {
            let pf = self.flags(&r.name)?;
            if pf.power == HostPower::On && pf.failed.is_none() {
                peers.push(Peer { name: r.name, url: r.url, underlay: r.underlay });
            }
        }
        let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        if f.lease_peers != names {
            f.lease_peers = names;
            self.put_flags(host, f)?;
        }
        Ok(peers)
    }

    /// The reply to a heartbeat of `host` reporting `reported`: its lease, its peers and its
    /// HA VMs. A failed host whose HA VMs were restarted elsewhere is told to stop the copies
    /// it still runs; once it runs none, it recovers (no placements) for `--recover-after`.
    /// Its VMs without HA were never moved: they keep running.
    pub(crate) fn ha_on_heartbeat(&self, host: &str, reported: &[VmStatus]) -> Result<HeartbeatReply, ApiError> {
        let lease_ms = self.settings.lease.as_millis() as u64;
        let mut f = self.flags(host)?;
        let vms = self.vms()?;
        let restartable =
            vms.iter().filter(|v| v.host == host && v.def.ha != HaPolicy::Off).map(|v| v.def.uuid).collect::<Vec<_>>();
        let peers = self.lease_peers(host, &mut f)?;
        let mut reply = HeartbeatReply { lease_ms, fence: vec![], peers, restartable };
        let Some(failure) = f.failed.clone() else { return Ok(reply) };
        if failure.fenced_ms.is_none() {
            // Back before its lease ran out: nothing was moved, nothing to undo.
            f.failed = None;
            lock(&self.ha.detected).remove(host);
            self.put_flags(host, &f)?;
            self.event("host.returned", host, "reports again before its lease ran out: no VM was moved");
            return Ok(reply);
        }
        // Copies that may run elsewhere now: every running one but a VM without HA that is
        // still this host's.
        let stays = |st: &VmStatus| {
            vms.iter()
                .any(|v| v.def.name == st.name && v.def.uuid == st.uuid && v.host == host && v.def.ha == HaPolicy::Off)
        };
        reply.fence = reported
            .iter()
            .filter(|st| st.state.has_process() && st.state != VmState::Migrated && !stays(st))
            .map(|st| st.uuid)
            .collect();
        if !reply.fence.is_empty() {
            // It stops them before anything else.
            return Ok(reply);
        }
        f.failed = None;
        lock(&self.ha.detected).remove(host);
        f.recovering_until_ms = Some(now_ms() + self.settings.recover_after.as_millis() as u64);
        self.put_flags(host, &f)?;
        self.event(
            "host.returned",
            host,
            format!(
                "reports again, none of its moved VMs running, {:.1} s after it was declared failed; takes no VMs for {:?}",
                (now_ms().saturating_sub(failure.detected_ms)) as f64 / 1000.0,
                self.settings.recover_after
            ),
        );
        Ok(reply)
    }

    /// A heartbeat reported that this HA VM's QEMU died: the HA loop restarts it.
    pub(crate) fn ha_crashed(&self, name: &str) {
        lock(&self.ha.crashed).push(name.to_string());
    }

    /// Restarts a crashed HA VM on its own host; if that fails, or it keeps crashing, on
    /// another host; if none can take it, it stays in error.
    async fn restart_in_place(self: &Arc<Self>, name: &str) {
        let Ok(vm) = self.vm(name) else { return };
        if vm.state != VmState::Inactive || vm.def.ha == HaPolicy::Off {
            return;
        }
        let Ok(_g) = self.busy(name) else { return };
        let recent = {
            let mut r = lock(&self.ha.restarts);
            let v = r.entry(name.to_string()).or_default();
            v.retain(|t| t.elapsed() < Duration::from_millis(DAMPING_WINDOW_MS));
            v.push(Instant::now());
            v.len()
        };
        let why = vm.error.clone().unwrap_or_default();
        let t = Instant::now();
        if recent <= RESTARTS_IN_PLACE {
            let res = async { self.agent(&vm.host)?.action(name, corral_api::VmAction::Start).await };
            match res.await {
                Ok(st) => {
                    let _ = self.settle(name, &st);
                    self.event(
                        "vm.restarted",
                        name,
                        format!("{why}; restarted on {} in {:.1} s", vm.host, t.elapsed().as_secs_f64()),
                    );
                    return;
                }
                Err(e) => self.event("vm.restart-failed", name, format!("on {}: {}", vm.host, e.message)),
            }
        } else {
            self.event(
                "vm.restart-damped",
                name,
                format!(
                    "crashed {recent} times in {} min on {}: trying another host",
                    DAMPING_WINDOW_MS / 60_000,
                    vm.host
                ),
            );
        }
        let host = vm.host.clone();
        self.restart_elsewhere(&vm, &host, now_ms(), "it could not run again on its host").await;
    }

    fn put_flags(&self, host: &str, f: &HostFlags) -> Result<(), ApiError> {
        HOST_FLAGS.put(&*self.store, host, f).map_err(store_err)
    }

    /// Called often by the controller's loop: finds suspects, has them probed, and fails over
    /// hosts whose lease has run out.
    pub async fn ha_tick(self: &Arc<Self>) {
        if self.settings.lease.is_zero() {
            return;
        }
        // A long gap between ticks: this controller was paused (SIGSTOP, a stalled VM). Its
        // view of heartbeats is stale; agents get a full lease to renew first.
        let gap = lock(&self.ha.last_tick).replace(Instant::now()).map(|t| t.elapsed()).unwrap_or_default();
        if gap >= self.settings.suspect_after {
            tracing::warn!("the HA loop did not run for {gap:?}: no failover for one lease while hosts renew");
            self.ha_restart_clock();
        }
        let settled = lock(&self.ha.started).elapsed() >= self.settings.lease;
        let crashed: Vec<String> = std::mem::take(&mut *lock(&self.ha.crashed));
        for name in crashed {
            let me = self.clone();
            tokio::spawn(async move { me.restart_in_place(&name).await });
        }
        let Ok(regs) = HOSTS.list(&*self.store) else { return };
        for r in regs {
            let Ok(f) = self.flags(&r.name) else { continue };
            // Standby and waking hosts are off on purpose.
            if f.power != HostPower::On {
                continue;
            }
            let (heard, _) = self.last_heard(&r.name);
            if let Some(failure) = &f.failed {
                if failure.fenced_ms.is_none() && settled && self.fenced_by_now(&r.name, heard) {
                    self.fail_over(&r.name).await;
                }
                continue;
            }
            if heard.elapsed() < self.settings.suspect_after {
                lock(&self.ha.reached).remove(&r.name);
                continue;
            }
            if lock(&self.ha.reached).get(&r.name).is_some_and(|t| t.elapsed() < REPROBE) {
                continue;
            }
            if !lock(&self.ha.probing).insert(r.name.clone()) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.check_suspect(&r).await;
                lock(&me.ha.probing).remove(&r.name);
            });
        }
    }

    /// Whether a failed host has surely fenced itself by now: its lease (counted from its
    /// last heartbeat) has run out, and since it was declared failed it has had the time an
    /// agent takes to give up on its peers and fence.
    fn fenced_by_now(&self, host: &str, heard: Instant) -> bool {
        let lease_ms = self.settings.lease.as_millis() as u64;
        let after_detection =
            Duration::from_millis(corral_api::agent::ISOLATION_GRACE_MS + corral_api::agent::fence_margin_ms(lease_ms));
        let detected = lock(&self.ha.detected).get(host).copied().unwrap_or(*lock(&self.ha.started));
        heard.elapsed() >= self.settings.lease && detected.elapsed() >= after_detection
    }

    /// Asks the peers named in the suspect's lease to reach it; declares it failed only if at
    /// least half of them answer and none reaches it (the host itself fences when it reaches
    /// no more than half of the same peers).
    async fn check_suspect(self: &Arc<Self>, r: &Register) {
        let host = &r.name;
        let Ok(flags) = self.flags(host) else { return };
        let peers = flags.lease_peers.clone();
        if peers.is_empty() {
            tracing::warn!("host {host} misses heartbeats and knows no peer that could check it: not failed over");
            return;
        }
        let req = ProbeRequest { host: host.clone() };
        let asks = peers.iter().map(|p| {
            let req = req.clone();
            async move {
                let a = self.agent(p).ok()?;
                tokio::time::timeout(Duration::from_secs(4), a.probe(&req)).await.ok()?.ok().map(|rep| (p.clone(), rep))
            }
        });
        let answers: Vec<(String, corral_api::agent::ProbeReply)> =
            futures::future::join_all(asks).await.into_iter().flatten().collect();
        // The host stays up while it reaches more than half of these peers; so once at least
        // half of them cannot reach it (and none can), it has fenced itself or is down.
        if answers.len() * 2 < peers.len() {
            // The controller cannot reach enough of them: its problem, or too many hosts are
            // down to tell; not the host's failure.
            tracing::warn!(
                "host {host} misses heartbeats but only {} of its {} peers answered the probe: not failed over",
                answers.len(),
                peers.len()
            );
            return;
        }
        if let Some((p, rep)) = answers.iter().find(|(_, rep)| rep.reachable) {
            let first = lock(&self.ha.reached).insert(host.clone(), Instant::now()).is_none();
            if first {
                self.event(
                    "host.unreachable",
                    host,
                    format!(
                        "no heartbeat for {:.1} s, but {p} reaches it ({}): its agent is down, its VMs are left alone",
                        self.last_heard(host).0.elapsed().as_secs_f64(),
                        rep.how
                    ),
                );
            }
            return;
        }
        let (heard, last_ms) = self.last_heard(host);
        if heard.elapsed() < self.settings.suspect_after {
            return; // it came back while its peers looked
        }
        let Ok(mut f) = self.flags(host) else { return };
        if f.failed.is_some() || f.power != HostPower::On {
            return;
        }
        let now = now_ms();
        let confirmed_by: Vec<String> = answers.iter().map(|(p, _)| p.clone()).collect();
        f.failed = Some(Failure {
            last_heartbeat_ms: last_ms,
            detected_ms: now,
            confirmed_by: confirmed_by.clone(),
            fenced_ms: None,
        });
        f.failures.retain(|t| now.saturating_sub(*t) < DAMPING_WINDOW_MS);
        f.failures.push(now);
        let quarantine = f.failures.len() >= QUARANTINE_AFTER && !f.cordoned;
        if quarantine {
            f.cordoned = true;
            f.maintenance = Some(Maintenance::Quarantined {
                failures: f.failures.len() as u32,
                window_min: (DAMPING_WINDOW_MS / 60_000) as u32,
            });
        }
        if let Err(e) = self.put_flags(host, &f) {
            tracing::warn!("recording the failure of {host}: {}", e.message);
            return;
        }
        lock(&self.ha.detected).insert(host.clone(), Instant::now());
        let lease_left = self.settings.lease.saturating_sub(heard.elapsed());
        self.event(
            "host.failed",
            host,
            format!(
                "no heartbeat for {:.1} s; {} cannot reach it ({}); its VMs restart elsewhere when its lease runs out in {:.1} s",
                heard.elapsed().as_secs_f64(),
                confirmed_by.join(", "),
                answers.iter().map(|(_, r)| r.how.as_str()).collect::<Vec<_>>().join("; "),
                lease_left.as_secs_f64()
            ),
        );
        if quarantine {
            let why = f.maintenance.map(|m| m.to_string()).unwrap_or_default();
            self.event("host.quarantined", host, format!("{why} (`corral host uncordon {host}`)"));
        }
    }

    /// The lease of a failed host has run out: its VMs are fenced. HA VMs are restarted
    /// elsewhere, highest restart priority first; the others wait for their host.
    async fn fail_over(self: &Arc<Self>, host: &str) {
        let Ok(mut f) = self.flags(host) else { return };
        let Some(failure) = f.failed.as_mut() else { return };
        failure.fenced_ms = Some(now_ms());
        let detected_ms = failure.detected_ms;
        let failure_last_ms = failure.last_heartbeat_ms;
        if self.put_flags(host, &f).is_err() {
            return;
        }
        let Ok(vms) = self.vms() else { return };
        let mut mine: Vec<Vm> = vms
            .into_iter()
            .filter(|v| {
                v.host == host
                    && (v.state.holds_resources() || matches!(v.pending, Some(Pending::Create { start: true })))
            })
            .collect();
        let prio = |v: &Vm| {
            v.cluster.as_ref().and_then(|c| self.cluster(c).ok()).map(|c| c.profile.restart_priority).unwrap_or(0)
        };
        mine.sort_by_key(|v| (std::cmp::Reverse(prio(v)), v.def.name.clone()));
        let (ha, off): (Vec<Vm>, Vec<Vm>) = mine.into_iter().partition(|v| v.def.ha != HaPolicy::Off);
        self.event(
            "host.fenced",
            host,
            format!(
                "lease expired: its VMs are stopped; restarting {} HA VM(s) elsewhere{}",
                ha.len(),
                if off.is_empty() { String::new() } else { format!(", {} without HA wait for it", off.len()) }
            ),
        );
        for mut v in off {
            v.state = VmState::Error;
            v.error = Some(format!(
                "host {host} failed and this VM has no HA: it can be started again when the host returns"
            ));
            let _ = self.put_vm(&v);
        }
        // Restart priority: each level (highest first) is restarted, all its VMs at once,
        // before the next level starts.
        let mut levels: Vec<(i32, Vec<(crate::service::BusyGuard, Vm)>)> = vec![];
        for v in ha {
            let Ok(guard) = self.busy(&v.def.name) else { continue };
            let p = prio(&v);
            match levels.last_mut() {
                Some((lp, jobs)) if *lp == p => jobs.push((guard, v)),
                _ => levels.push((p, vec![(guard, v)])),
            }
        }
        let me = self.clone();
        let host = host.to_string();
        let (last_ms, fenced_ms) = (failure_last_ms, now_ms());
        tokio::spawn(async move {
            let reason = format!("{host} was declared failed");
            let mut done = vec![];
            for (_, jobs) in levels {
                let restarts = jobs.into_iter().map(|(g, v)| {
                    let (me, reason, host) = (me.clone(), reason.clone(), host.clone());
                    async move {
                        let _g = g;
                        let r = me.restart_elsewhere(&v, &host, detected_ms, &reason).await;
                        (v.def.name, r)
                    }
                });
                done.extend(futures::future::join_all(restarts).await);
            }
            // The whole failover on one line, times from the last heartbeat.
            let at = |ms: u64| format!("+{:.1} s", ms.saturating_sub(last_ms) as f64 / 1000.0);
            let mut parts = vec![
                format!(
                    "last heartbeat {}",
                    if last_ms == 0 { "before the controller started".into() } else { "+0.0 s".to_string() }
                ),
                format!("declared failed {}", at(detected_ms)),
                format!("lease out, fenced {}", at(fenced_ms)),
            ];
            for (name, r) in done {
                parts.push(match r {
                    Some((to, ms)) => format!("{name} running on {to} {}", at(ms)),
                    None => format!("{name} not restarted"),
                });
            }
            me.event("host.failover", &host, parts.join("; "));
        });
    }

    /// Restarts an HA VM of a failed host on another one, fresh from its template with the
    /// same identity.
    async fn restart_elsewhere(
        self: &Arc<Self>,
        v: &Vm,
        failed: &str,
        detected_ms: u64,
        reason: &str,
    ) -> Option<(String, u64)> {
        let placed = async {
            let _p = self.placing.lock().await;
            let mut vm = self.vm(&v.def.name)?;
            let mut views = self.views_for_storage(vm.def.storage)?;
            let mut spare = self.views_for_restart()?;
            self.restrict_to_storage(&mut spare, vm.def.storage)?;
            for h in views.iter_mut().chain(spare.iter_mut()).filter(|h| h.name == failed) {
                h.schedulable = false;
            }
            // Hosts that are fully up first; recovering ones if only they have room.
            let to = self.place_member(&vm, &views, None).or_else(|_| self.place_member(&vm, &spare, None))?;
            vm.host = to.clone();
            vm.state = VmState::Starting;
            vm.pending = Some(Pending::Create { start: true });
            vm.disk = None;
            vm.error = None;
            vm.migration = None;
            self.put_vm(&vm)?;
            Ok::<String, ApiError>(to)
        }
        .await;
        let res = match placed {
            Ok(to) => {
                self.forget_pushed(&v.def.name);
                self.bring_up(&v.def.name, true).await.map(|vm| (to, vm))
            }
            Err(e) => Err(e),
        };
        match res {
            Ok((_, vm)) => {
                let since = now_ms().saturating_sub(detected_ms);
                self.event(
                    "vm.failover",
                    &v.def.name,
                    format!(
                        "{failed} → {}: running again {:.1} s after {reason} (same UUID, MAC {}, IP {})",
                        vm.host,
                        since as f64 / 1000.0,
                        vm.def.mac,
                        vm.def.ip.map_or("-".to_string(), |ip| ip.to_string())
                    ),
                );
                self.sync_networks().await;
                Some((vm.host, now_ms()))
            }
            Err(e) => {
                self.event(
                    "vm.failover-failed",
                    &v.def.name,
                    format!("could not be restarted away from {failed}: {}", e.message),
                );
                if let Ok(mut vm) = self.vm(&v.def.name) {
                    vm.pending = None;
                    vm.state = VmState::Error;
                    vm.error = Some(format!("host {failed} failed and no other host could take it: {}", e.message));
                    let _ = self.put_vm(&vm);
                }
                None
            }
        }
    }

    /// Hosts as placement sees them, except that hosts recovering from a failure may take
    /// HA restarts: damping keeps new work off them, but a VM left down is worse.
    pub(crate) fn views_for_restart(&self) -> Result<Vec<corral_sched::HostView>, ApiError> {
        let mut views = self.host_views()?;
        for v in views.iter_mut().filter(|v| !v.schedulable) {
            let f = self.flags(&v.name)?;
            v.schedulable = f.recovering()
                && self.host_ready(&v.name)
                && f.failed.is_none()
                && !f.cordoned
                && f.power == HostPower::On;
        }
        Ok(views)
    }
}
