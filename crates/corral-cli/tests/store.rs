//! `corral store migrate` and a controller running on etcd: state made in the embedded redb
//! file is copied into a real 3-member etcd cluster on loopback, and a controller started on
//! etcd serves it. Bad store names get a clear error.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use corral_store::{EtcdStore, LocalEtcd, RedbStore, Store, StoreExt};

fn corral(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral")).args(args).output().expect("run corral")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

mod common;

#[test]
fn state_migrates_from_redb_to_etcd_and_a_controller_serves_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let etcd = LocalEtcd::start(dir.path(), 3).expect("a 3-member etcd cluster");
    let eps = etcd.clients.join(",");

    // State as a controller leaves it: a VM record and a profile.
    let db = dir.path().join("state.redb");
    {
        let s = RedbStore::open(&db).expect("redb");
        let vm = serde_json::json!({
            "name": "web1", "uuid": "6a1f2a0e-8d2b-4a55-9b1e-1c2d3e4f5a6b", "state": "inactive", "host": "lab-1",
            "template": "base", "vcpus": 1, "memory_mib": 128, "mac": "02:00:00:00:00:01", "workload": "idle",
            "created_ms": 1
        });
        s.put_json("vms", "web1", &vm).expect("put");
        s.put_json(
            "events",
            "0000000000001-a",
            &serde_json::json!({"ms": 1, "kind": "k", "subject": "s", "message": "m"}),
        )
        .expect("put");
    }
    let from = format!("redb:{}", db.display());
    let to = format!("etcd:{eps}/corral/");
    let o = corral(&["store", "migrate", "--from", &from, "--to", &to]);
    assert!(o.status.success(), "migrate: {}", text(&o));
    assert!(text(&o).contains("2 entries in 2 tables"), "says what it copied: {}", text(&o));
    let e = EtcdStore::connect(&etcd.clients, "/corral/").expect("connect");
    assert_eq!(e.tables().expect("tables"), ["events", "vms"]);

    // A controller on etcd serves the migrated state.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let url = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("controller");
    let _c = common::Owned(
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["controller", "--listen", &format!("127.0.0.1:{port}"), "--etcd", &eps])
            .arg("--data")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the controller"),
    );
    let t = Instant::now();
    let listed = loop {
        let o = corral(&["--url", &url, "vm", "list", "-o", "json"]);
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the controller on etcd did not answer: {}", text(&o));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed.contains("\"web1\""), "the VM migrated into etcd is served: {listed}");
    assert!(!data.join("state.redb").exists(), "no embedded file is made when the state is in etcd");

    // Bad input: clear errors, nothing copied.
    for (from, want) in [
        ("file:/x", "unknown store"),
        ("redb:/nonexistent/state.redb", "no redb store"),
        ("etcd:/corral/", "names no etcd endpoint"),
    ] {
        let o = corral(&["store", "migrate", "--from", from, "--to", &to]);
        assert!(!o.status.success() && text(&o).contains(want), "{from}: expected {want:?} in {}", text(&o));
    }
}
