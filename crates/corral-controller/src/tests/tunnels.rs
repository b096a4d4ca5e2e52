//! Tunnels into guests: the VM's host reaches it from an address of its own on the cluster's
//! network, reserved once, learnt by the network's other hosts, freed with the cluster; VMs a
//! tunnel cannot reach are refused before any agent is asked.

use std::time::Duration;

use corral_api::cluster::{CreateCluster, OpState, ProfileSource};
use corral_api::tunnel::{tunnel_mac, GuestPort};
use corral_api::{ErrorKind, VmAction};

use super::{create, Harness};
use crate::tables::{IPAM, TUNNELS};

/// Cluster `web` of `size` members, one per host, on 100.64.9.0/24.
async fn web(h: &Harness, size: u32) {
    let toml = "template = \"tiny\"\nvcpus = 1\nmemory = \"256M\"\n[placement]\nanti_affinity = true\n";
    h.c.create_profile(ProfileSource { name: "small".parse().unwrap(), toml: toml.into() }, false).unwrap();
    let req = CreateCluster {
        name: "web".parse().unwrap(),
        profile: "small".parse().unwrap(),
        size,
        policy: None,
        subnet: Some("100.64.9.0/24".into()),
        vni: None,
        mtu: None,
        ssh_keys: vec![],
    };
    let op = h.c.create_cluster(req).await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
}

/// The `via` address of the agent's tunnel calls on `host`.
fn vias(h: &Harness, host: &str) -> Vec<String> {
    h.host(host).call_log().into_iter().filter_map(|c| c.strip_prefix("tcp ").map(String::from)).collect()
}

#[tokio::test]
async fn a_member_is_reached_from_its_host_s_own_address_which_the_other_hosts_learn() {
    let h = Harness::new(&["a", "b"]);
    web(&h, 2).await;
    let view = h.c.cluster_view("web").unwrap();
    let m = &view.members[0];
    let other = if m.host == "a" { "b" } else { "a" };
    let port = GuestPort::new(22).unwrap();

    // The fake agent has no guest: the call reaches it, with the address chosen.
    let e = h.c.tunnel(&m.name, port).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(vias(&h, &m.host), [format!("{} 22 via 100.64.9.254/24", m.name)], "the subnet's highest address");
    h.c.tunnel(&m.name, port).await.unwrap_err();
    assert_eq!(vias(&h, &m.host).len(), 2);
    assert!(vias(&h, &m.host).iter().all(|v| v.ends_with("via 100.64.9.254/24")), "kept, not reserved again");
    assert!(IPAM.contains(&*h.store, "100.64.9.254").unwrap(), "no member can be given it");

    // The other host learns where the address's MAC lives, so the tunnel follows a migration.
    let mac = tunnel_mac("100.64.9.254".parse().unwrap());
    let mut learnt = false;
    for _ in 0..100 {
        h.c.sync_networks().await;
        learnt = h.host(other).network(view.cluster.vni).is_some_and(|n| n.macs.contains_key(&mac));
        if learnt {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(learnt, "host {other} does not know the tunnel address's MAC");
    let net = h.c.network("web").unwrap();
    assert_eq!(net.tunnels.get(&m.host).map(|a| a.to_string()).as_deref(), Some("100.64.9.254"));
    // Its own host does not send its own MAC over the overlay.
    assert!(!h.host(&m.host).network(view.cluster.vni).unwrap().macs.contains_key(&mac));

    // A member of the other host gets that host's own address.
    let m2 = view.members.iter().find(|x| x.host == other).unwrap();
    h.c.tunnel(&m2.name, port).await.unwrap_err();
    assert_eq!(vias(&h, other), [format!("{} 22 via 100.64.9.253/24", m2.name)]);

    // Deleting the cluster frees both.
    let op = h.c.delete_cluster("web").await.unwrap();
    assert_eq!(h.c.wait_operation(&op.id, 20).await.unwrap().state, OpState::Succeeded);
    for _ in 0..100 {
        h.c.reconcile_once().await;
        if h.c.cluster_view("web").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.c.cluster_view("web").unwrap_err().kind, ErrorKind::NotFound);
    assert!(TUNNELS.keys(&*h.store, "").unwrap().is_empty());
    assert!(!IPAM.contains(&*h.store, "100.64.9.254").unwrap() && !IPAM.contains(&*h.store, "100.64.9.253").unwrap());
}

#[tokio::test]
async fn vms_a_tunnel_cannot_reach_are_refused_before_any_agent_is_asked() {
    let h = Harness::new(&["a", "b"]);
    web(&h, 1).await;
    let port = GuestPort::new(80).unwrap();
    let member = h.c.cluster_view("web").unwrap().members[0].name.clone();
    h.c.vm_action(&member, VmAction::Stop).await.unwrap();
    let e = h.c.tunnel(&member, port).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("start it first"), "{e}");

    h.c.create_vm(create("solo")).await.unwrap();
    let e = h.c.tunnel("solo", port).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("no address on a cluster network"), "{e}");

    assert_eq!(h.c.tunnel("nope", port).await.unwrap_err().kind, ErrorKind::NotFound);
    assert!(vias(&h, "a").is_empty() && vias(&h, "b").is_empty(), "no agent was asked");
    assert!(TUNNELS.keys(&*h.store, "").unwrap().is_empty(), "nothing was reserved");
}
