//! Self-fencing: when an agent must stop its HA VMs on its own, and when it must not.
//!
//! Every heartbeat the controller answers renews this host's lease and names the host's
//! peers and its restartable (HA) VMs. The record is kept in `lease.json`, so a restarted
//! agent, and the watchdog process that outlives it (see [`crate::watchdog`]), judge from the
//! same facts. A host *fences* (SIGKILLs its HA VMs, never the others) only when it is
//! isolated: its lease is about to run out (it cannot reach the control plane) **and** it has
//! not reached a majority of its peers for [`ISOLATION_GRACE_MS`]. A controller outage is not
//! isolation: a host that still sees its peers keeps every VM running and keeps trying.
//!
//! The controller, for its part, restarts a host's VMs elsewhere only once the lease has run
//! out and at least half of the same peers failed to reach the host (and none reached it),
//! and then waits as long as the isolated host may take to fence. A host that reaches more
//! than half of its peers cannot be one that at least half cannot reach, so at most one side
//! runs a VM.
//!
//! Time is measured on `CLOCK_BOOTTIME` (monotonic, counts suspend), never wall time, so a
//! clock step cannot delay fencing; a lease recorded before a reboot is void. Anything the
//! agent cannot read (a damaged lease file, a reply it cannot parse) counts as "not renewed":
//! it never turns fencing off.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use corral_api::agent::{fence_margin_ms, HeartbeatReply, Peer, ISOLATION_GRACE_MS};
use serde::{Deserialize, Serialize};

/// Peers are probed while the lease has not been renewed for this long.
const PROBE_AFTER_MS: u64 = 1500;
/// How long one probe of a peer (its agent, or a ping of its underlay address) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

/// Milliseconds on `CLOCK_BOOTTIME`: monotonic, and counting time spent suspended.
pub fn boottime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000,
        // Not on Linux: the monotonic clock of the process is the next best thing.
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
        }
    }
}

/// This boot of the machine: a lease measured on another boot's clock means nothing.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What the last renewal said, as kept in `lease.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The boot the times below were measured in.
    pub boot_id: String,
    /// When the heartbeat that renewed it was sent (`CLOCK_BOOTTIME` ms).
    pub renewed_ms: u64,
    /// Its length (0: the controller gives no lease, nothing is ever fenced).
    pub lease_ms: u64,
    /// The peers whose reachability tells isolation apart from a control-plane outage.
    pub peers: Vec<Peer>,
    /// VMs of this host the controller may restart elsewhere.
    pub restartable: Vec<uuid::Uuid>,
    /// The operator's isolation addresses (`--isolation-address`): they decide when the
    /// host knows no peer.
    pub isolation: Vec<Ipv4Addr>,
}

/// The judgement at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The lease holds (or there is none to lose): nothing to do.
    Held,
    /// The lease has run out but the host is not isolated (it reaches its peers, or has
    /// none that could confirm its failure): VMs keep running.
    CutOff(String),
    /// Isolated: the HA VMs must be stopped now, for this reason.
    Isolated(String),
}

/// The pure rule. `rec` is the lease as recorded (`None`: unreadable or never written, which
/// counts as run out, with no peers known); `last_majority` when a probe round that reached a
/// majority of the voters started.
pub fn judge(now: u64, boot: &str, rec: Option<&LeaseRecord>, last_majority: Option<u64>) -> Verdict {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let recent_majority = last_majority.is_some_and(|t| now < t + ISOLATION_GRACE_MS);
    let Some(rec) = rec else {
        if recent_majority {
            return Verdict::CutOff("no lease on record, but this host reaches a majority of its peers".into());
        }
        return Verdict::Isolated(
            "fenced: this host holds no readable lease and reaches no majority of peers; the controller may restart \
             this VM elsewhere"
                .into(),
        );
    };
    if rec.lease_ms == 0 {
        return Verdict::Held;
    }
    // A lease from another boot ran out long ago.
    let renewed = if rec.boot_id == boot { rec.renewed_ms } else { 0 };
    let deadline = renewed + rec.lease_ms.saturating_sub(fence_margin_ms(rec.lease_ms));
    if now < deadline {
        return Verdict::Held;
    }
    let contact = last_majority.unwrap_or(0).max(renewed);
    if now < contact + ISOLATION_GRACE_MS {
        return Verdict::CutOff(format!(
            "the lease was last renewed {:.1} s ago, but this host reaches a majority of its peers: a control-plane \
             outage, not isolation; every VM keeps running",
            secs(now.saturating_sub(renewed))
        ));
    }
    if rec.peers.is_empty() && rec.isolation.is_empty() {
        return Verdict::CutOff(
            "the lease has run out, but this host knows no peer that could confirm its failure (nor any isolation \
             address): nothing can restart its VMs elsewhere, so they keep running"
                .into(),
        );
    }
    Verdict::Isolated(format!(
        "fenced: the lease was last renewed {:.1} s ago (it runs out after {:.1} s) and this host has reached no \
         majority of its {} for {:.1} s; the controller may restart this VM elsewhere",
        secs(now.saturating_sub(renewed)),
        secs(rec.lease_ms),
        if rec.peers.is_empty() { "isolation addresses" } else { "peers" },
        secs(now.saturating_sub(contact))
    ))
}

/// This host's lease as the agent (or its watchdog) knows it, and when it last reached a
/// majority of its peers.
#[derive(Debug)]
pub struct Fencer {
    file: PathBuf,
    boot: String,
    rec: Mutex<Option<LeaseRecord>>,
    last_majority: Mutex<Option<u64>>,
    /// The operator's isolation addresses (recorded with each renewal).
    isolation: Vec<Ipv4Addr>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a lease file: `None` if it is missing or cannot be read or parsed.
pub fn read_record(file: &Path) -> Option<LeaseRecord> {
    match std::fs::read(file) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("lease file {} is unreadable ({e}): counted as run out", file.display());
                None
            }
        },
        Err(_) => None,
    }
}

impl Fencer {
    /// The lease recorded in `data_dir`.
    pub fn load(data_dir: &Path, isolation: Vec<Ipv4Addr>) -> Self {
        let file = data_dir.join("lease.json");
        let rec = read_record(&file);
        Self { file, boot: boot_id(), rec: Mutex::new(rec), last_majority: Mutex::new(None), isolation }
    }

    /// Reads the file again (the watchdog follows what the agent writes). An unreadable file
    /// keeps nothing of the old record: it counts as run out.
    pub fn reload(&self) {
        *lock(&self.rec) = read_record(&self.file);
    }

    /// The recorded lease, if readable.
    pub fn record(&self) -> Option<LeaseRecord> {
        lock(&self.rec).clone()
    }

    /// A heartbeat sent at `sent_ms` (`CLOCK_BOOTTIME`) was answered with `reply`: the lease
    /// is renewed, and recorded before anything else relies on it.
    pub fn renewed(&self, sent_ms: u64, reply: &HeartbeatReply) {
        let rec = LeaseRecord {
            boot_id: self.boot.clone(),
            renewed_ms: sent_ms,
            lease_ms: reply.lease_ms,
            peers: reply.peers.clone(),
            restartable: reply.restartable.clone(),
            isolation: self.isolation.clone(),
        };
        if let Err(e) =
            serde_json::to_vec(&rec).map_err(std::io::Error::other).and_then(|b| write_synced(&self.file, &b))
        {
            tracing::warn!("cannot record the lease in {}: {e}", self.file.display());
        }
        *lock(&self.rec) = Some(rec);
    }

    /// Whether peers should be probed now: the lease has not been renewed lately.
    pub fn needs_probe(&self, now: u64) -> bool {
        match &*lock(&self.rec) {
            Some(r) if r.boot_id == self.boot => r.lease_ms > 0 && now >= r.renewed_ms + PROBE_AFTER_MS,
            _ => true,
        }
    }

    /// A probe round that started at `at` reached a majority of the voters.
    pub fn reached_majority(&self, at: u64) {
        let mut m = lock(&self.last_majority);
        *m = Some(m.unwrap_or(0).max(at));
    }

    /// The judgement now.
    pub fn verdict(&self, now: u64) -> Verdict {
        let rec = lock(&self.rec).clone();
        judge(now, &self.boot, rec.as_ref(), *lock(&self.last_majority))
    }

    /// One probe round: reaches the voters and records a majority. Returns whether it did.
    pub async fn probe_round(&self, http: &reqwest::Client) -> bool {
        let started = boottime_ms();
        let rec = self.record();
        let ok = match &rec {
            Some(r) => reaches_majority(http, &r.peers, &r.isolation).await,
            None => reaches_majority(http, &[], &self.isolation).await,
        };
        if ok {
            self.reached_majority(started);
        }
        ok
    }

    /// A peer named in the lease.
    pub fn peer(&self, name: &str) -> Option<Peer> {
        lock(&self.rec).as_ref()?.peers.iter().find(|p| p.name == name).cloned()
    }
}

/// Writes `bytes` to `path` durably (temp file, fsync, rename), readable only by root.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Whether this host reaches a majority of its peers (each by its agent, else by a ping of
/// its underlay address); with no peers, any of the isolation addresses.
pub async fn reaches_majority(http: &reqwest::Client, peers: &[Peer], isolation: &[Ipv4Addr]) -> bool {
    if peers.is_empty() {
        let pings = isolation.iter().map(|a| ping(*a));
        return futures::future::join_all(pings).await.into_iter().any(|r| r.is_ok());
    }
    let probes = peers.iter().map(|p| reach(http, p));
    let reached = futures::future::join_all(probes).await.into_iter().filter(|r| r.is_ok()).count();
    reached * 2 > peers.len()
}

/// Reaches one peer: its agent's health endpoint, else a ping of its underlay address. `Ok`
/// says how, `Err` why not.
pub async fn reach(http: &reqwest::Client, p: &Peer) -> Result<String, String> {
    let url = format!("{}/v1/health", p.url.trim_end_matches('/'));
    let agent = async {
        match http.get(&url).timeout(PROBE_TIMEOUT).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(if e.is_timeout() { "no answer".to_string() } else { e.to_string() }),
        }
    };
    let ping = async {
        match p.underlay {
            Some(ip) => ping(ip).await,
            None => Err("no underlay address to ping".to_string()),
        }
    };
    match tokio::join!(agent, ping) {
        (Ok(()), _) => Ok(format!("its agent answered at {}", p.url)),
        (Err(a), Ok(())) => Ok(format!("its agent at {} does not answer ({a}), but its address answers ping", p.url)),
        (Err(a), Err(e)) => Err(format!("its agent at {} does not answer ({a}); {e}", p.url)),
    }
}

/// One ICMP echo to `ip`, bounded by [`PROBE_TIMEOUT`].
async fn ping(ip: Ipv4Addr) -> Result<(), String> {
    let run = tokio::process::Command::new("ping")
        .args(["-c", "1", "-W", "1", "-q"])
        .arg(ip.to_string())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_millis(300), run).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(_)) | Err(_) => Err(format!("{ip} does not answer ping")),
        Ok(Err(e)) => Err(format!("cannot run ping: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(renewed_ms: u64, lease_ms: u64, peers: usize) -> LeaseRecord {
        LeaseRecord {
            boot_id: "b".into(),
            renewed_ms,
            lease_ms,
            peers: (0..peers)
                .map(|i| Peer { name: format!("p{i}"), url: format!("http://127.0.0.1:{}", 1 + i), underlay: None })
                .collect(),
            restartable: vec![],
            isolation: vec![],
        }
    }

    #[test]
    fn fences_only_when_the_lease_is_out_and_no_majority_was_reached() {
        let r = rec(100_000, 7_000, 2);
        // 5 s into a 7 s lease with a 2 s margin: the lease holds until then.
        assert_eq!(judge(104_999, "b", Some(&r), None), Verdict::Held);
        // Out, and no peer reached since the renewal: isolated.
        assert!(matches!(judge(105_000, "b", Some(&r), None), Verdict::Isolated(_)));
        // Out, but a majority was reached 1 s ago: a controller outage, VMs keep running.
        assert!(matches!(judge(160_000, "b", Some(&r), Some(159_000)), Verdict::CutOff(_)));
        // The majority was last reached 2 s ago or more: isolated now.
        assert!(matches!(judge(161_000, "b", Some(&r), Some(159_000)), Verdict::Isolated(_)));
    }

    #[test]
    fn no_lease_from_the_controller_never_fences() {
        assert_eq!(judge(9_999_999, "b", Some(&rec(0, 0, 2)), None), Verdict::Held);
    }

    #[test]
    fn an_unreadable_lease_counts_as_run_out() {
        assert!(matches!(judge(1, "b", None, None), Verdict::Isolated(_)));
        assert!(matches!(judge(1_000, "b", None, Some(500)), Verdict::CutOff(_)));
    }

    #[test]
    fn a_lease_of_another_boot_has_run_out() {
        let r = rec(100_000, 7_000, 1);
        assert_eq!(judge(101_000, "b", Some(&r), None), Verdict::Held);
        assert!(matches!(judge(101_000, "other boot", Some(&r), None), Verdict::Isolated(_)));
    }

    #[test]
    fn a_host_with_no_peer_and_no_isolation_address_is_never_isolated() {
        let r = rec(100_000, 7_000, 0);
        assert!(matches!(judge(500_000, "b", Some(&r), None), Verdict::CutOff(_)));
        let mut with_gateway = r.clone();
        with_gateway.isolation = vec![Ipv4Addr::new(198, 18, 0, 1)];
        assert!(matches!(judge(500_000, "b", Some(&with_gateway), None), Verdict::Isolated(_)));
    }

    #[test]
    fn renewals_are_recorded_and_read_back_and_damage_is_not_ignored() {
        let d = tempfile::tempdir().expect("temporary directory");
        let f = Fencer::load(d.path(), vec![]);
        assert!(f.record().is_none(), "nothing recorded yet");
        let now = boottime_ms();
        let reply = HeartbeatReply {
            lease_ms: 7_000,
            peers: rec(0, 0, 2).peers,
            restartable: vec![uuid::Uuid::new_v4()],
            ..Default::default()
        };
        f.renewed(now, &reply);
        assert_eq!(f.verdict(now + 1_000), Verdict::Held);
        let again = Fencer::load(d.path(), vec![]);
        assert_eq!(again.record(), f.record(), "a restarted agent reads the same lease");
        assert!(matches!(again.verdict(now + 5_000), Verdict::Isolated(_)));
        again.reached_majority(now + 4_500);
        assert!(matches!(again.verdict(now + 5_000), Verdict::CutOff(_)));
        // A damaged file is not "no lease": it counts as run out.
        std::fs::write(d.path().join("lease.json"), b"{\"lease_ms\": 0").expect("write");
        again.reload();
        assert!(again.record().is_none());
        assert!(matches!(again.verdict(now + 100_000), Verdict::Isolated(_)));
    }

    #[test]
    fn the_clock_counts_forward() {
        let a = boottime_ms();
        std::thread::sleep(Duration::from_millis(20));
        assert!(boottime_ms() >= a + 20);
    }
}
