//! Hosts: cordon, evacuation (live for running VMs, cold for stopped ones), cold moves, what a
//! heartbeat reply tells an agent, network specs that follow members, and pruning of history.

use std::time::Duration;

use corral_api::cluster::OpState;
use corral_api::{ErrorKind, HaPolicy, VmAction, VmState};

use super::{create, create_on, settings, Harness};
use crate::service::Settings;

#[tokio::test]
async fn a_cordoned_host_takes_no_new_vm() {
    let h = Harness::new(&["a", "b"]);
    h.c.set_cordon("a", true).unwrap();
    for i in 0..3 {
        assert_eq!(h.c.create_vm(create(&format!("v{i}"))).await.unwrap().host, "b");
    }
    let e = h.c.create_vm(create_on("pinned", "a")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoCapacity, "{e}");
    assert!(e.message.contains("\"a\""), "the refusal names the host: {e}");
    h.c.set_cordon("a", false).unwrap();
    h.c.create_vm(create_on("pinned", "a")).await.unwrap();
}

#[tokio::test]
async fn evacuation_moves_running_vms_live_and_stopped_ones_cold() {
    let h = Harness::new(&["a", "b"]);
    let run = h.c.create_vm(create_on("run", "a")).await.unwrap();
    let stop = h.c.create_vm(create_on("stop", "a")).await.unwrap();
    h.c.vm_action("stop", VmAction::Stop).await.unwrap();
    h.beat("a");
    let op = h.c.evacuate_host("a").await.unwrap();
    let op = h.c.wait_operation(&op.id, 20).await.unwrap();
    assert_eq!(op.state, OpState::Succeeded, "{:?}", op.messages);
    let (r, s) = (h.vm("run"), h.vm("stop"));
    assert_eq!((r.host.as_str(), r.state, r.def.uuid), ("b", VmState::Running, run.def.uuid));
    assert_eq!((s.host.as_str(), s.state, s.def.uuid), ("b", VmState::Inactive, stop.def.uuid));
    assert!(h.host("a").vms().is_empty(), "nothing is left on the evacuated host");
    assert!(h.c.host("a").unwrap().cordoned, "an evacuated host stays cordoned");
    assert_eq!(h.c.migrations(Some("run")).unwrap().len(), 1, "the running VM moved live");
    assert!(h.c.migrations(Some("stop")).unwrap().is_empty(), "the stopped VM moved cold");
}

#[tokio::test]
async fn only_a_stopped_or_suspended_vm_moves_cold_and_it_keeps_its_identity() {
    let h = Harness::new(&["a", "b"]);
    let v = h.c.create_vm(create_on("v", "a")).await.unwrap();
    let e = h.c.move_vm("v", "b").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    h.c.vm_action("v", VmAction::Suspend).await.unwrap();
    let moved = h.c.move_vm("v", "b").await.unwrap();
    assert_eq!((moved.host.as_str(), moved.state), ("b", VmState::Suspended));
    assert_eq!((moved.def.uuid, &moved.def.mac), (v.def.uuid, &v.def.mac));
    assert_eq!(h.copies("v", &["a", "b"]), ["b"]);
    assert_eq!(h.c.vm_action("v", VmAction::Resume).await.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn a_heartbeat_reply_names_the_lease_the_peers_and_the_restartable_vms() {
    let s = Settings { lease: Duration::from_secs(7), ..settings() };
    let h = Harness::with(&["a", "b", "c"], s);
    let ha =
        h.c.create_vm(corral_api::CreateVm { ha: Some(HaPolicy::RestartFresh), ..create_on("ha", "a") }).await.unwrap();
    h.c.create_vm(create_on("plain", "a")).await.unwrap();
    let reply = h.beat("a");
    assert_eq!(reply.lease_ms, 7000);
    let mut peers: Vec<_> = reply.peers.iter().map(|p| p.name.clone()).collect();
    peers.sort();
    assert_eq!(peers, ["b", "c"]);
    assert!(reply.peers.iter().all(|p| p.underlay.is_some()), "peers are probed on the underlay");
    assert_eq!(reply.restartable, [ha.def.uuid], "only HA VMs may be fenced");
    assert!(reply.fence.is_empty());
    h.c.standby_host("c").await.ok();
    let peers: Vec<_> = h.beat("a").peers.into_iter().map(|p| p.name).collect();
    assert!(!peers.contains(&"c".to_string()), "a host in standby is nobody's peer: {peers:?}");
}

#[tokio::test]
async fn a_clusters_network_follows_its_members_to_new_hosts() {
    let h = Harness::new(&["a", "b", "c"]);
    h.c.create_profile(
        corral_api::cluster::ProfileSource {
            name: "small".parse().unwrap(),
            toml: "template = \"tiny\"\nvcpus = 1\nmemory = \"256M\"\n".into(),
        },
        false,
    )
    .unwrap();
    let req = corral_api::cluster::CreateCluster {
        name: "web".parse().unwrap(),
        profile: "small".parse().unwrap(),
        size: 2,
        policy: Some(corral_api::cluster::PlacementPolicy::Pack),
        subnet: None,
        vni: None,
        mtu: None,
        ssh_keys: vec![],
    };
    let op = h.c.create_cluster(req).await.unwrap();
    h.c.wait_operation(&op.id, 20).await.unwrap();
    let view = h.c.cluster_view("web").unwrap();
    let first = view.members[0].clone();
    let vni = view.cluster.vni;
    let spec = h.host(&first.host).network(vni).unwrap();
    assert!(spec.peers.is_empty(), "both members on one host: no tunnel peers yet: {spec:?}");
    let to = ["a", "b", "c"].into_iter().find(|x| *x != first.host).unwrap();
    let m = h.c.migrate_vm(&first.name, corral_api::migration::MigrateVm { to: Some(to.into()), ..Default::default() });
    let m = m.await.unwrap();
    super::until("moved", || h.c.migration(&m.id).is_ok_and(|m| m.state.is_final())).await;
    h.c.reconcile_once().await;
    let here = h.host(to).network(vni).expect("the destination joined the network");
    let there = h.host(&first.host).network(vni).unwrap();
    assert_eq!(here.peers, [h.host(&first.host).register().underlay.unwrap()]);
    assert_eq!(there.peers, [h.host(to).register().underlay.unwrap()]);
    assert!(there.macs.iter().any(|(mac, _)| mac.to_string() == first.mac), "{there:?}");
}

#[tokio::test]
async fn pruning_keeps_the_newest_events_only() {
    let mut s = settings();
    s.retention.events = 5;
    let h = Harness::with(&["a"], s);
    for i in 0..6 {
        h.c.create_vm(create(&format!("v{i}"))).await.ok();
        h.c.delete_vm(&format!("v{i}")).await.ok();
        h.c.event("test.tick", "x", format!("{i}"));
    }
    assert!(h.c.events().unwrap().len() > 5);
    h.c.prune_once().await;
    let left = h.c.events().unwrap();
    assert_eq!(left.len(), 5);
    assert_eq!(left.last().map(|e| e.message.as_str()), Some("5"), "the newest is kept");
}
