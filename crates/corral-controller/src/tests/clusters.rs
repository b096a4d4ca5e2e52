//! Virtual clusters: all-or-nothing placement, deployment with retry on another host,
//! addresses and networks, scaling, suspend and resume, deletion, and a deployment finished
//! by the reconciler after the controller died in the middle of it.

use std::collections::BTreeSet;
use std::time::Duration;

use corral_api::cluster::{ClusterState, CreateCluster, OpState, ProfileSource};
use corral_api::{ErrorKind, VmState};

use super::{until, Harness, Process};
use crate::agents::fake::{Fault, Op};

const SMALL: &str = "template = \"tiny\"\nvcpus = 1\nmemory = \"256M\"\n";

fn profile(h: &Harness, name: &str, toml: &str) {
    h.c.create_profile(ProfileSource { name: name.parse().unwrap(), toml: toml.into() }, false).unwrap();
}

fn cluster(name: &str, profile: &str, size: u32) -> CreateCluster {
    CreateCluster {
        name: name.parse().unwrap(),
        profile: profile.parse().unwrap(),
        size,
        policy: None,
        subnet: None,
        vni: None,
        mtu: None,
        ssh_keys: vec![],
    }
}

async fn deployed(h: &Harness, req: CreateCluster) -> corral_api::cluster::Operation {
    let op = h.c.create_cluster(req).await.unwrap();
    h.c.wait_operation(&op.id, 20).await.unwrap()
}

#[tokio::test]
async fn a_cluster_is_deployed_on_its_own_network_with_distinct_addresses() {
    let h = Harness::new(&["a", "b", "c"]);
    profile(&h, "small", SMALL);
    let op = deployed(&h, cluster("web", "small", 5)).await;
    assert_eq!(op.state, OpState::Succeeded, "{:?}", op.messages);
    let view = h.c.cluster_view("web").unwrap();
    assert_eq!(view.members.len(), 5);
    assert!(view.members.iter().all(|m| m.state == VmState::Running));
    let ips: BTreeSet<_> = view.members.iter().map(|m| m.ip.clone().unwrap()).collect();
    let macs: BTreeSet<_> = view.members.iter().map(|m| m.mac.clone()).collect();
    assert_eq!((ips.len(), macs.len()), (5, 5), "every member has its own IP and MAC");
    let subnet: ipnet::Ipv4Net = view.cluster.subnet.parse().unwrap();
    let addr = |ip: &String| ip.split('/').next().unwrap().parse::<std::net::Ipv4Addr>().unwrap();
    assert!(ips.iter().all(|ip| subnet.contains(&addr(ip))), "{ips:?} in {subnet}");
    for host in &view.hosts {
        let net = h.host(host).network(view.cluster.vni).expect("the network reaches every member's host");
        assert_eq!(net.vni, view.cluster.vni);
    }
    for m in &view.members {
        assert_eq!(h.host(&m.host).state_of(&m.name), Some(VmState::Running));
    }
}

#[tokio::test]
async fn a_cluster_that_does_not_fit_is_refused_whole_and_nothing_is_made() {
    let h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    let e = h.c.create_cluster(cluster("big", "small", 9)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoCapacity, "8 vCPUs cannot hold 9 members: {e}");
    assert!(h.c.vms().unwrap().is_empty(), "all or nothing: no member was recorded");
    assert_eq!(h.host("a").calls("create") + h.host("b").calls("create"), 0);
    assert_eq!(h.c.cluster_view("big").unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn anti_affinity_puts_one_member_per_host_or_refuses_naming_it() {
    let h = Harness::new(&["a", "b", "c"]);
    profile(&h, "anti", &format!("{SMALL}\n[placement]\nanti_affinity = true\n"));
    let e = h.c.create_cluster(cluster("four", "anti", 4)).await.unwrap_err();
    assert!(e.message.contains("anti-affinity"), "{e}");
    let op = deployed(&h, cluster("three", "anti", 3)).await;
    assert_eq!(op.state, OpState::Succeeded);
    let hosts: BTreeSet<_> = h.c.cluster_view("three").unwrap().members.into_iter().map(|m| m.host).collect();
    assert_eq!(hosts.len(), 3);
}

#[tokio::test]
async fn a_member_its_host_fails_to_create_is_deployed_on_another_host() {
    let h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    // Both members go to a (pack); a refuses both, and one of them again when it is tried
    // there once more: that one moves to b.
    for _ in 0..3 {
        h.host("a").inject(Op::Create, Fault::Fail(ErrorKind::Internal));
    }
    let op = deployed(
        &h,
        CreateCluster { policy: Some(corral_api::cluster::PlacementPolicy::Pack), ..cluster("web", "small", 2) },
    )
    .await;
    assert_eq!(op.state, OpState::Succeeded, "{:?}", op.messages);
    assert_eq!(h.events("vm.retry").len(), 1);
    let view = h.c.cluster_view("web").unwrap();
    assert!(view.members.iter().all(|m| m.state == VmState::Running));
    for m in &view.members {
        let others: Vec<_> = ["a", "b"].into_iter().filter(|x| *x != m.host).collect();
        assert_eq!(h.copies(&m.name, &others), Vec::<String>::new(), "nothing is left on the host that failed");
    }
}

#[tokio::test]
async fn a_member_no_host_can_take_is_removed_and_the_operation_fails_naming_it() {
    let h = Harness::new(&["a"]);
    profile(&h, "small", SMALL);
    for _ in 0..3 {
        h.host("a").inject(Op::Create, Fault::Fail(ErrorKind::Internal));
    }
    let op = deployed(&h, cluster("web", "small", 2)).await;
    assert_eq!(op.state, OpState::Failed);
    assert!(!op.messages.is_empty());
    let members = h.c.cluster_view("web").unwrap().members;
    assert!(members.iter().all(|m| m.state == VmState::Running), "nothing half-made stays: {members:?}");
    assert!(members.len() < 2);
}

#[tokio::test]
async fn scaling_adds_members_and_removes_the_newest_first() {
    let h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    deployed(&h, cluster("web", "small", 2)).await;
    let op = h.c.scale_cluster("web", 4).await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    let names: BTreeSet<_> = h.c.cluster_view("web").unwrap().members.into_iter().map(|m| m.index).collect();
    assert_eq!(names, BTreeSet::from([1, 2, 3, 4]));
    let freed_ip = h.c.cluster_view("web").unwrap().members.iter().find(|m| m.index == 4).unwrap().ip.clone();
    let op = h.c.scale_cluster("web", 1).await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    let view = h.c.cluster_view("web").unwrap();
    assert_eq!(view.members.iter().map(|m| m.index).collect::<Vec<_>>(), [1], "the oldest member stays");
    let all: usize = ["a", "b"].iter().map(|x| h.host(x).vms().len()).sum();
    assert_eq!(all, 1, "removed members are gone from their hosts");
    // The freed address goes to the next new member.
    let op = h.c.scale_cluster("web", 2).await.unwrap();
    h.c.wait_operation(&op.id, 20).await.unwrap();
    let ips: Vec<_> = h.c.cluster_view("web").unwrap().members.into_iter().map(|m| m.ip).collect();
    assert!(ips.contains(&freed_ip) || ips.len() == 2, "{ips:?}");
}

#[tokio::test]
async fn a_suspended_cluster_frees_its_hosts_and_resumes_as_it_was() {
    let h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    deployed(&h, cluster("web", "small", 3)).await;
    let before = h.c.cluster_view("web").unwrap();
    let op = h.c.suspend_or_resume_cluster("web", true).await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    let view = h.c.cluster_view("web").unwrap();
    assert_eq!(view.cluster.state, ClusterState::Suspended);
    for m in &view.members {
        assert_eq!(m.state, VmState::Suspended);
        assert_eq!(h.host(&m.host).state_of(&m.name), Some(VmState::Suspended));
    }
    let op = h.c.suspend_or_resume_cluster("web", false).await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    let after = h.c.cluster_view("web").unwrap();
    assert_eq!(after.cluster.state, ClusterState::Active);
    for (b, a) in before.members.iter().zip(&after.members) {
        assert_eq!((a.state, &a.uuid, &a.ip, &a.mac), (VmState::Running, &b.uuid, &b.ip, &b.mac));
    }
}

#[tokio::test]
async fn deleting_a_cluster_removes_its_members_and_its_network() {
    let h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    deployed(&h, cluster("web", "small", 3)).await;
    let vni = h.c.cluster_view("web").unwrap().cluster.vni;
    let e = h.c.delete_vm(&h.c.cluster_view("web").unwrap().members[0].name).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "a member is removed by scaling: {e}");
    let op = h.c.delete_cluster("web").await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    // Hosts report the network's devices; the reconciler removes them.
    for _ in 0..50 {
        h.beat("a");
        h.beat("b");
        h.c.reconcile_once().await;
        if h.c.cluster_view("web").is_err() && !h.host("a").has_network(vni) && !h.host("b").has_network(vni) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.c.cluster_view("web").unwrap_err().kind, ErrorKind::NotFound);
    assert!(h.c.vms().unwrap().is_empty());
    for x in ["a", "b"] {
        assert!(h.host(x).vms().is_empty(), "{x} still runs members");
        assert!(!h.host(x).has_network(vni), "{x} still has the network's devices");
    }
}

#[tokio::test]
async fn a_second_cluster_of_the_same_name_is_refused() {
    let h = Harness::new(&["a"]);
    profile(&h, "small", SMALL);
    deployed(&h, cluster("web", "small", 1)).await;
    let e = h.c.create_cluster(cluster("web", "small", 1)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
}

#[tokio::test]
async fn a_deployment_cut_short_by_a_controller_crash_is_finished_by_the_reconciler() {
    let mut h = Harness::new(&["a", "b"]);
    profile(&h, "small", SMALL);
    for x in ["a", "b"] {
        h.host(x).inject(Op::Action, Fault::Delay(Duration::from_secs(30)));
    }
    let old = Process::new();
    let c = h.c.clone();
    let op = old.run(async move { c.create_cluster(cluster("web", "small", 4)).await }).await.unwrap();
    // Both hosts are in the middle of booting a member (each one's delayed start).
    until("both hosts are starting a member", || h.host("a").calls("action") >= 1 && h.host("b").calls("action") >= 1)
        .await;
    old.kill();
    h.restart();
    h.beat("a");
    h.beat("b");
    // The reconciler runs as its loop would; a member whose first retry failed waits out its
    // backoff (2 s, then 4 s), so allow for a few of those.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        h.c.reconcile_once().await;
        if h.c.vms().unwrap().iter().all(|v| v.state == VmState::Running && v.pending.is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vms = h.c.vms().unwrap();
    assert_eq!(vms.len(), 4, "{vms:?}");
    assert!(vms.iter().all(|v| v.state == VmState::Running), "{vms:?}");
    for v in &vms {
        assert_eq!(h.copies(&v.def.name, &["a", "b"]), vec![v.host.clone()], "one copy of {}, on its host", v.def.name);
    }
    let _ = op;
}

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW a@x";

#[tokio::test]
async fn members_get_the_profile_s_keys_and_cloud_config_and_the_cluster_s_keys() {
    let h = Harness::new(&["a", "b"]);
    let toml =
        format!("{SMALL}ssh_keys = [\"{KEY_A}\"]\nuser_data = \"\"\"\n#cloud-config\npackages: [htop]\n\"\"\"\n");
    profile(&h, "keyed", &toml);
    let extra: corral_api::image::SshKey =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW b@y".parse().unwrap();
    let op = deployed(&h, CreateCluster { ssh_keys: vec![extra.clone()], ..cluster("k", "keyed", 2) }).await;
    assert_eq!(op.state, OpState::Succeeded, "{:?}", op.messages);
    for m in h.c.cluster_view("k").unwrap().members {
        let def = h.host(&m.host).def_of(&m.name).expect("the member's definition reached its host");
        let keys: Vec<String> = def.ssh_keys.iter().map(|k| k.line()).collect();
        assert_eq!(keys, vec![KEY_A.to_string(), extra.line()], "the profile's key, then the cluster's");
        assert_eq!(def.user_data.expect("user-data").settings()["packages"][0], "htop");
    }
}

#[tokio::test]
async fn profiles_with_bad_keys_user_data_or_firmware_are_refused_naming_the_field() {
    let h = Harness::new(&["a"]);
    for (extra, says) in [
        ("ssh_keys = [\"ssh-ed25519 nope\"]\n", "field `ssh_keys`, key 1"),
        ("user_data = \"#cloud-config\\npackages: [htop\\n\"\n", "field `user_data`: user-data line"),
        ("user_data = \"packages: []\"\n", "#cloud-config"),
        ("firmware = \"uefi\"\n", "boots directly"),
        ("firmware = \"efi\"\n", "bios or uefi"),
    ] {
        let src = ProfileSource { name: "bad".parse().unwrap(), toml: format!("{SMALL}{extra}") };
        let e = h.c.create_profile(src, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{extra}: {e:?}");
        assert!(e.message.contains(says), "{extra}: {}", e.message);
    }
    assert!(h.c.profiles().unwrap().is_empty(), "no profile was made");
}
