//! Unit tests of the controller's rules, run against FAKE agents (`agents::fake`) and a real
//! redb store in a temporary directory: deployment, clusters, HA, migration, DRS and the
//! reconciler, with their failure paths. No root, QEMU or network needed; the lab trials
//! (`crates/corral-cli/tests/lab`) prove the same rules end to end.

#![allow(clippy::unwrap_used)]

mod clusters;
mod deploy;
mod drs;
mod ha;
mod hosts;
mod migrate;
mod tunnels;

use std::sync::Arc;
use std::time::Duration;

use corral_api::agent::HeartbeatReply;
use corral_api::types::Name;
use corral_api::{CreateVm, Vm};

use crate::agents::fake::{FakeAgent, FakeFleet};
use crate::service::{Controller, Settings};

/// A controller on a fresh store, with fake hosts registered and reporting.
pub(crate) struct Harness {
    pub c: Arc<Controller>,
    pub fleet: Arc<FakeFleet>,
    store: Arc<dyn corral_store::Store>,
    settings: Settings,
    _dir: tempfile::TempDir,
}

/// Settings for tests: no HA lease unless a test sets one, and no overcommit.
pub(crate) fn settings() -> Settings {
    Settings {
        host_timeout: Duration::from_secs(10),
        cpu_overcommit: 1.0,
        memory_overcommit: 1.0,
        templates_dir: None,
        migrations_out: 1,
        migrations_in: 1,
        standby_command: None,
        wake_command: None,
        lease: Duration::ZERO,
        suspect_after: Duration::from_secs(2),
        recover_after: Duration::from_secs(30),
        ha_reserve_hosts: 0,
        ha_admission: corral_api::HaAdmission::Refuse,
        retention: Default::default(),
        max_image_bytes: 1 << 30,
    }
}

impl Harness {
    pub fn new(hosts: &[&str]) -> Self {
        Self::with(hosts, settings())
    }

    pub fn with(hosts: &[&str], settings: Settings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn corral_store::Store> =
            Arc::new(corral_store::RedbStore::open(&dir.path().join("state.redb")).expect("store"));
        let fleet = Arc::new(FakeFleet::default());
        let c = Controller::new(store.clone(), settings.clone(), None, crate::leader::Leadership::alone("test"))
            .with_agents(fleet.clone());
        let h = Self { c: Arc::new(c), fleet, store, settings, _dir: dir };
        for n in hosts {
            h.join(n);
        }
        // Every host's lease names all the others as peers.
        for n in hosts {
            h.beat(n);
        }
        h
    }

    /// The controller process restarts: everything it held in memory is gone, the store and
    /// the hosts stay. The old one's tasks may still run; tests use the new one.
    pub fn restart(&mut self) {
        let c =
            Controller::new(self.store.clone(), self.settings.clone(), None, crate::leader::Leadership::alone("test"))
                .with_agents(self.fleet.clone());
        self.c = Arc::new(c);
    }

    /// Registers host `name` and sends its first heartbeat.
    pub fn join(&self, name: &str) -> Arc<FakeAgent> {
        let a = self.fleet.host(name);
        self.c.register(a.register()).expect("register");
        self.beat(name);
        a
    }

    pub fn host(&self, name: &str) -> Arc<FakeAgent> {
        self.fleet.host(name)
    }

    /// Host `name` sends a heartbeat with what its fake agent holds, and obeys the reply.
    pub fn beat(&self, name: &str) -> HeartbeatReply {
        let reply = self.c.heartbeat(name, self.fleet.host(name).heartbeat()).expect("heartbeat");
        self.fleet.host(name).obey(&reply);
        reply
    }

    /// Runs the controller's HA loop every 50 ms, and every host that is not down sends a
    /// heartbeat every 100 ms, until the returned handle is dropped.
    pub fn run_ha(&self) -> Loops {
        let (c, fleet) = (self.c.clone(), self.fleet.clone());
        Loops(tokio::spawn(async move {
            for round in 0u64.. {
                if round % 2 == 0 {
                    for n in fleet.names() {
                        let a = fleet.host(&n);
                        if !a.is_down() {
                            if let Ok(reply) = c.heartbeat(&n, a.heartbeat()) {
                                a.obey(&reply);
                            }
                        }
                    }
                }
                c.ha_tick().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }

    pub fn vm(&self, name: &str) -> Vm {
        self.c.vm(name).expect("vm")
    }

    /// Where each fake host runs a copy of `vm`.
    pub fn copies(&self, vm: &str, hosts: &[&str]) -> Vec<String> {
        hosts.iter().filter(|h| self.host(h).state_of(vm).is_some()).map(|h| h.to_string()).collect()
    }

    pub fn events(&self, kind: &str) -> Vec<corral_api::cluster::Event> {
        self.c.events().expect("events").into_iter().filter(|e| e.kind == kind).collect()
    }
}

/// A request for a running VM of 1 vCPU and 512 MiB from the template `tiny`.
pub(crate) fn create(name: &str) -> CreateVm {
    CreateVm {
        name: name.parse::<Name>().expect("name"),
        template: "tiny".parse().expect("template"),
        vcpus: Some(1),
        memory_mib: Some(512),
        host: None,
        workload: None,
        start: true,
        ha: None,
        storage: Default::default(),
        firmware: None,
        ssh_keys: vec![],
        user_data: None,
    }
}

/// `create(name)` pinned to `host`.
pub(crate) fn create_on(name: &str, host: &str) -> CreateVm {
    CreateVm { host: Some(host.parse().expect("host")), ..create(name) }
}

/// Waits until `cond` holds (checked every 10 ms), failing the test after 10 s.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A controller process for crash tests: work run through it lives on its own runtime, so
/// [`Process::kill`] ends every task it started at once, as the death of the process would.
pub(crate) struct Process(tokio::runtime::Runtime);

impl Process {
    pub fn new() -> Self {
        Self(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime"))
    }

    /// Runs `work` in this process (tasks it spawns belong to the process too).
    pub async fn run<T: Send + 'static>(&self, work: impl std::future::Future<Output = T> + Send + 'static) -> T {
        self.0.spawn(work).await.expect("task")
    }

    /// Kills the process: none of its tasks runs another step.
    pub fn kill(self) {
        self.0.shutdown_background();
    }
}

impl Harness {
    /// Runs the controller's DRS and reconcile loops every 50 ms while the hosts that are not
    /// in standby (nor down) send heartbeats, until the returned handle is dropped.
    pub fn run_drs(&self) -> Loops {
        let (c, fleet) = (self.c.clone(), self.fleet.clone());
        Loops(tokio::spawn(async move {
            loop {
                for n in fleet.names() {
                    let a = fleet.host(&n);
                    let asleep = c.host(&n).is_ok_and(|h| h.power == corral_api::drs::HostPower::Standby);
                    if !a.is_down() && !asleep {
                        let _ = c.heartbeat(&n, a.heartbeat());
                    }
                }
                c.drs_tick().await;
                c.reconcile_once().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

/// Background loops of a test; they stop when this is dropped.
pub(crate) struct Loops(tokio::task::JoinHandle<()>);

impl Drop for Loops {
    fn drop(&mut self) {
        self.0.abort();
    }
}
