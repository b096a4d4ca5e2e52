//! The etcd backend against a real 3-member etcd cluster on loopback (Debian's `etcd-server`,
//! installed by `make test`), started here and stopped by PID at the end, on failure too.
//! The same checks run against the redb backend, so both behave alike; then state is copied
//! from redb to etcd (`corral store migrate`), and the cluster loses members: one lost, it
//! still serves; two lost, a write fails with an error naming etcd instead of hanging.

use std::time::{Duration, Instant};

use corral_store::{copy, EtcdStore, LocalEtcd, Op, RedbStore, Store, StoreError, StoreExt, WriteGuard};

/// What every backend must do.
fn conformance(s: &dyn Store) {
    assert_eq!(s.get("vms", "web1").expect("get"), None, "absent key");
    s.put_json("vms", "web1", &1u32).expect("put");
    s.put_json("vms", "web2", &2u32).expect("put");
    s.put_json("vms", "db1", &3u32).expect("put");
    s.put_json("hosts", "lab-1", &"h").expect("put");
    assert_eq!(s.get_json::<u32>("vms", "web1").expect("get"), Some(1));
    let web: Vec<String> = s.scan("vms", "web").expect("scan").into_iter().map(|(k, _)| k).collect();
    assert_eq!(web, ["web1", "web2"], "prefix scan, in key order");
    assert_eq!(s.list_json::<u32>("vms").expect("list"), vec![3, 1, 2], "whole table, in key order");
    // A batch is atomic and applied in order.
    s.apply(vec![
        Op::Delete { table: "vms".into(), key: "web1".into() },
        Op::Put { table: "vms".into(), key: "web3".into(), value: b"4".to_vec() },
        Op::Put { table: "ipam".into(), key: "10.0.0.5".into(), value: b"\"web3\"".to_vec() },
    ])
    .expect("batch");
    assert_eq!(s.get("vms", "web1").expect("get"), None);
    assert_eq!(s.get_json::<u32>("vms", "web3").expect("get"), Some(4));
    // Compare-and-swap refuses stale writes.
    assert!(s.compare_and_swap("ipam", "a", None, Some(b"1".to_vec())).expect("cas"));
    assert!(!s.compare_and_swap("ipam", "a", None, Some(b"2".to_vec())).expect("cas"));
    assert!(!s.compare_and_swap("ipam", "a", Some(b"9"), Some(b"2".to_vec())).expect("cas"));
    assert!(s.compare_and_swap("ipam", "a", Some(b"1"), None).expect("cas"));
    assert_eq!(s.get("ipam", "a").expect("get"), None);
    assert_eq!(s.tables().expect("tables"), ["hosts", "ipam", "vms"]);
}

/// Every table with its entries.
type Dump = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn dump(s: &dyn Store) -> Dump {
    s.tables().expect("tables").into_iter().map(|t| (t.clone(), s.scan(&t, "").expect("scan"))).collect()
}

#[test]
fn etcd_backend_behaves_like_redb_and_survives_losing_a_member() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let redb = RedbStore::open(&dir.path().join("state.redb")).expect("redb");
    conformance(&redb);

    let mut cluster = LocalEtcd::start(dir.path(), 3).expect("a 3-member etcd cluster");
    let etcd = EtcdStore::connect(&cluster.clients, "/corral-test/").expect("connect");
    conformance(&etcd);

    // Migration: a fresh prefix receives everything redb holds, identical.
    let target = EtcdStore::connect(&cluster.clients, "/corral-migrated/").expect("connect");
    for i in 0..300 {
        redb.put_json("events", &format!("{i:05}"), &i).expect("put");
    }
    let (tables, entries) = copy(&redb, &target, 100).expect("copy");
    assert_eq!(tables, 4);
    assert_eq!(entries, 300 + 3 + 1 + 1);
    assert_eq!(dump(&target), dump(&redb), "the copy is identical");

    // Leader election: one holder at a time; when its lease ends, another takes over.
    let la = etcd.grant_lease(3).expect("lease");
    let lb = etcd.grant_lease(3).expect("lease");
    assert_eq!(etcd.acquire("leader", "http://a", la).expect("acquire"), ("http://a".to_string(), true));
    assert_eq!(etcd.acquire("leader", "http://b", lb).expect("acquire"), ("http://a".to_string(), false));
    assert!(etcd.keep_alive(la, Duration::from_secs(2)).expect("keep alive"), "a live lease renews");
    etcd.revoke(la).expect("revoke");
    assert!(!etcd.keep_alive(la, Duration::from_secs(2)).expect("keep alive"), "a revoked lease does not");
    assert_eq!(etcd.acquire("leader", "http://b", lb).expect("acquire"), ("http://b".to_string(), true));

    // Leadership enforced in the writes: a controller that won with lease `la` and was
    // deposed (b holds the key now) lands nothing, though it does not know yet.
    let old = EtcdStore::connect(&cluster.clients, "/corral-test/").expect("connect");
    old.guard_writes(WriteGuard::Leader { name: "leader".into(), lease: la });
    let refused = old.put_json("vms", "from-the-deposed", &1u32).expect_err("a deposed leader's write");
    assert!(matches!(refused, StoreError::NotLeader(_)), "refused as not leading: {refused}");
    assert!(
        matches!(
            old.compare_and_swap("vms", "from-the-deposed", None, Some(b"1".to_vec())),
            Err(StoreError::NotLeader(_))
        ),
        "its compare-and-swap too"
    );
    assert_eq!(etcd.get("vms", "from-the-deposed").expect("read"), None, "nothing of it landed");
    // The leader's own writes go through, and a compare-and-swap that loses on the value
    // is an ordinary "no".
    let new = EtcdStore::connect(&cluster.clients, "/corral-test/").expect("connect");
    new.guard_writes(WriteGuard::Leader { name: "leader".into(), lease: lb });
    new.put_json("vms", "from-the-leader", &2u32).expect("the leader writes");
    assert!(!new.compare_and_swap("vms", "from-the-leader", Some(b"9"), Some(b"3".to_vec())).expect("cas"));
    assert!(new.compare_and_swap("vms", "from-the-leader", Some(b"2"), Some(b"3".to_vec())).expect("cas"));
    // One that stepped down writes nothing at all.
    new.guard_writes(WriteGuard::Deposed);
    assert!(matches!(new.put_json("vms", "after-stepping-down", &4u32), Err(StoreError::NotLeader(_))));
    assert_eq!(etcd.get("vms", "after-stepping-down").expect("read"), None);

    // One member down: a majority remains and serves reads and writes.
    cluster.kill(0);
    etcd.put_json("vms", "after-one-down", &5u32).expect("write with 2 of 3 members");
    assert_eq!(etcd.get_json::<u32>("vms", "after-one-down").expect("read"), Some(5));

    // Two down: no quorum. A write fails, with an error, in bounded time.
    cluster.kill(1);
    let t = Instant::now();
    let err = etcd.put_json("vms", "no-quorum", &6u32).expect_err("no write without a quorum");
    assert!(t.elapsed() < Duration::from_secs(15), "failed in {:?}", t.elapsed());
    assert!(err.to_string().contains("etcd"), "the error names etcd: {err}");
}
