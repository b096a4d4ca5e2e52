//! A real etcd cluster on loopback, started from Debian's `etcd` binary: for tests, the lab
//! and benchmarks, never for production (it listens on 127.0.0.1 without TLS). The members
//! are this process's children, stopped by PID when the value is dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdStore, Result, StoreError};

/// The members of a local etcd cluster.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Option<Child>>,
    /// Client endpoints, `127.0.0.1:PORT`, one per member.
    pub clients: Vec<String>,
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| StoreError::Backend(format!("no free port for etcd: {e}")))
}

/// One member of a planned cluster: its name and loopback ports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl Member {
    /// Its client endpoint, `127.0.0.1:PORT`.
    pub fn client(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

/// Names and free ports for `n` members.
pub fn plan(n: usize) -> Result<Vec<Member>> {
    (1..=n).map(|i| Ok(Member { name: format!("m{i}"), client_port: free_port()?, peer_port: free_port()? })).collect()
}

/// The command that runs `m` of cluster `all`, its data under `dir` (restarting it later
/// with the same command finds its data and rejoins).
pub fn member_command(dir: &Path, m: &Member, all: &[Member]) -> Command {
    let initial =
        all.iter().map(|o| format!("{}=http://127.0.0.1:{}", o.name, o.peer_port)).collect::<Vec<_>>().join(",");
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let mut c = Command::new("etcd");
    c.args(["--name", &m.name, "--data-dir"])
        .arg(dir.join(&m.name))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "corral-local", "--max-txn-ops", "1024"])
        .args(["--logger", "zap", "--log-level", "error"]);
    c
}

/// Waits until the cluster at `clients` serves requests.
pub fn wait_ready(clients: &[String], timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        match EtcdStore::connect(clients, "/probe/") {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > timeout => {
                return Err(StoreError::Backend(format!("the local etcd cluster did not come up: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl LocalEtcd {
    /// Starts `n` members with their data under `dir` and waits until they serve.
    pub fn start(dir: &Path, n: usize) -> Result<Self> {
        let all = plan(n)?;
        let mut me = Self { members: vec![], clients: all.iter().map(Member::client).collect() };
        for m in &all {
            let child =
                member_command(dir, m, &all).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| {
                    StoreError::Backend(format!(
                        "cannot start etcd ({e}): install Debian's etcd-server (`make test` does)"
                    ))
                })?;
            me.members.push(Some(child));
        }
        wait_ready(&me.clients, Duration::from_secs(60))?;
        Ok(me)
    }

    /// Kills member `i` (0-based), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
