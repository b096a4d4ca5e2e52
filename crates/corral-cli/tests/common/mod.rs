//! What the tests that run real daemons share: starting a `corral agent` or `corral controller`
//! as a process on loopback with a temporary data directory and a token, and ending it (and
//! the nftables tables test agents made) when it is dropped.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process a test started, killed by its PID (and reaped) when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const TOKEN: &str = "hostile-input-test-token";

/// A daemon process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub agent: bool,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.agent {
            agent_gone();
        }
    }
}

/// Test agents run in this machine's own network namespace and install the guest filter's
/// nftables tables there. The tables the tests made are removed when their last agent is
/// gone; tables that were there before the tests (another agent's) are left alone.
static AGENTS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static TABLES_BEFORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
const TABLES: [[&str; 2]; 2] = [["bridge", "corral"], ["inet", "corral"]];

fn table_exists(t: [&str; 2]) -> bool {
    Command::new("nft").args(["list", "table", t[0], t[1]]).output().is_ok_and(|o| o.status.success())
}

fn agent_started() {
    TABLES_BEFORE.get_or_init(|| TABLES.iter().any(|t| table_exists(*t)));
    *AGENTS.lock().unwrap_or_else(|p| p.into_inner()) += 1;
}

fn agent_gone() {
    let mut n = AGENTS.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_sub(1);
    if *n == 0 && TABLES_BEFORE.get() == Some(&false) {
        for t in TABLES {
            let _ = Command::new("nft").args(["delete", "table", t[0], t[1]]).output();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn token_file(dir: &Path) -> PathBuf {
    let f = dir.join("token");
    std::fs::write(&f, TOKEN).expect("token file");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

pub async fn start(kind: &str) -> Daemon {
    start_with(kind, None).await
}

pub async fn start_with(kind: &str, templates: Option<&Path>) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let tok = token_file(dir.path());
    let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
    c.arg(kind).args(["--listen", &listen, "--data"]).arg(&data).arg("--token-file").arg(&tok);
    if kind == "agent" {
        let templates = templates.map(Path::to_path_buf).unwrap_or_else(|| dir.path().join("templates"));
        std::fs::create_dir_all(&templates).expect("templates dir");
        // Nothing answers on port 9: the agent keeps trying in the background.
        c.args(["--name", "h1", "--controller", "http://127.0.0.1:9", "--accel", "tcg"])
            .arg("--templates")
            .arg(templates);
    } else {
        let library = dir.path().join("library");
        std::fs::create_dir_all(&library).expect("library dir");
        c.arg("--templates").arg(library);
    }
    let agent = kind == "agent";
    if agent {
        agent_started();
    }
    // Its log, for the test to read and for a failure to show.
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
    let child = c.stdout(Stdio::null()).stderr(log).spawn().expect("corral runs");
    let d = Daemon { child, url: format!("http://{listen}"), dir, data, agent };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(format!("{}/v1/health", d.url)).await.is_ok_and(|r| r.status().is_success()) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("corral {kind} did not answer on {}", d.url);
}

impl Daemon {
    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}
