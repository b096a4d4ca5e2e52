//! Stopping the daemons (issue 12: background loops started and stopped through one runner).
//! SIGTERM ends a `corral controller` and a `corral agent` cleanly: the server stops taking
//! requests, every loop ends its round, and the process exits with status 0 (not killed by
//! the signal) within a bounded time. A controller that leads on etcd gives up its lease as it
//! stops, so a standby leads at once rather than when the lease runs out. Needs no QEMU.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_store::LocalEtcd;

mod common;
use common::{start, Daemon};

/// Sends SIGTERM to `child` and waits for it to exit, at most `within`.
fn terminate(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal our own child");
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(t.elapsed() < within, "still running {within:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM ends `d` with status 0; nothing answers on its address afterwards.
async fn stops_cleanly(mut d: Daemon, says: &str) {
    let st = terminate(&mut d.child, Duration::from_secs(15));
    assert!(st.success(), "exit status {st}; log:\n{}", d.log());
    assert!(d.log().contains(says), "its log says {says:?}:\n{}", d.log());
    let gone = reqwest::get(format!("{}/v1/health", d.url)).await;
    assert!(gone.is_err(), "nothing answers on {} any more", d.url);
}

#[tokio::test]
async fn a_controller_asked_to_end_stops_its_loops_and_exits_cleanly() {
    let c = start("controller").await;
    stops_cleanly(c, "controller stopped").await;
}

#[tokio::test]
async fn an_agent_asked_to_end_stops_its_loops_and_exits_cleanly() {
    // Its controller does not answer: the heartbeat loop is busy retrying when asked to end.
    let a = start("agent").await;
    stops_cleanly(a, "agent stopped").await;
}

/// A controller on etcd, on loopback.
struct Controller {
    process: common::Owned,
    url: String,
}

fn controller_on(eps: &str, dir: &std::path::Path, name: &str, ttl_s: u32) -> Controller {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["controller", "--listen", &listen, "--etcd", eps, "--leader-ttl", &ttl_s.to_string()])
        .arg("--data")
        .arg(dir.join(name))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a controller");
    Controller { process: common::Owned(child), url: format!("http://{listen}") }
}

/// Whether the controller at `url` says it leads (None while it does not answer).
async fn leading(url: &str) -> Option<bool> {
    let r = reqwest::get(format!("{url}/v1/leader")).await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["leading"].as_bool()
}

/// Whether the controller at `url` answers that it leads (`want` true) or stands by.
async fn says_leading(url: &str, want: bool) -> bool {
    leading(url).await == Some(want)
}

/// Waits until `f` holds, at most `within`; how long it took.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

#[tokio::test]
async fn a_leader_asked_to_end_hands_over_at_once_not_a_lease_later() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let etcd = LocalEtcd::start(dir.path(), 1).expect("an etcd member");
    let eps = etcd.clients.join(",");
    // A long lease: a standby that waited for it to run out would take 20 s.
    const TTL_S: u32 = 20;
    let mut a = controller_on(&eps, dir.path(), "a", TTL_S);
    wait_for(Duration::from_secs(30), "the first controller leads", || says_leading(&a.url, true)).await;
    let b = controller_on(&eps, dir.path(), "b", TTL_S);
    wait_for(Duration::from_secs(30), "the second controller stands by", || says_leading(&b.url, false)).await;

    let st = terminate(&mut a.process.0, Duration::from_secs(15));
    assert!(st.success(), "the leader exits cleanly: {st}");
    let took =
        wait_for(Duration::from_secs(TTL_S as u64 + 10), "the standby leads", || says_leading(&b.url, true)).await;
    assert!(
        took < Duration::from_secs(TTL_S as u64 / 2),
        "the standby led {took:?} after the leader stopped: it waited for the {TTL_S} s lease instead of taking the freed key"
    );
}
