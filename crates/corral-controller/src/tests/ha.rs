//! High availability: failure detection confirmed by peers, the lease wait, what moves and
//! what stays, a returning host, the quiet period after a start, restarts of crashed VMs and
//! their damping, and admission control.

use std::time::{Duration, Instant};

use corral_api::{ErrorKind, HaPolicy, Maintenance, VmState};

use super::{create_on, settings, Harness};
use crate::service::Settings;

fn ha_settings() -> Settings {
    Settings { lease: Duration::from_millis(1000), suspect_after: Duration::from_millis(300), ..settings() }
}

fn ha_vm(name: &str, host: &str) -> corral_api::CreateVm {
    corral_api::CreateVm { ha: Some(HaPolicy::RestartFresh), ..create_on(name, host) }
}

/// Waits up to `secs` for `cond`, polling every 20 ms.
async fn within(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(secs), "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_isolated_hosts_ha_vms_restart_elsewhere_after_its_lease_and_the_others_wait() {
    let h = Harness::with(&["a", "b", "c"], ha_settings());
    let ha = h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    h.c.create_vm(create_on("plain", "a")).await.unwrap();
    let _loops = h.run_ha();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut = Instant::now();
    h.fleet.isolate("a");
    within(15, "the HA VM runs elsewhere", || {
        let v = h.vm("keep");
        v.host != "a" && v.state == VmState::Running
    })
    .await;
    let took = cut.elapsed();
    assert!(took >= Duration::from_millis(1000), "restarted before the lease ran out: {took:?}");
    let v = h.vm("keep");
    assert_eq!((v.def.uuid, &v.def.mac), (ha.def.uuid, &ha.def.mac), "it keeps its identity");
    let plain = h.vm("plain");
    assert_eq!((plain.host.as_str(), plain.state), ("a", VmState::Error), "a VM without HA waits for its host");
    assert_eq!(h.events("host.failed").len(), 1);
    assert!(!h.events("vm.failover").is_empty());
}

#[tokio::test]
async fn a_host_whose_peers_still_reach_it_is_not_failed_over() {
    let h = Harness::with(&["a", "b", "c"], ha_settings());
    h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    let _loops = h.run_ha();
    // Its agent stops answering, but the host is up: the peers reach it.
    h.host("a").set_down(true);
    within(5, "the peers' answer is recorded", || !h.events("host.unreachable").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(h.events("host.failed").is_empty(), "{:?}", h.events("host.failed"));
    assert_eq!(h.vm("keep").host, "a");
    assert_eq!(h.copies("keep", &["a", "b", "c"]), ["a"], "never a second copy");
}

#[tokio::test]
async fn a_minority_of_answering_peers_declares_nothing() {
    let h = Harness::with(&["a", "b", "c", "d"], ha_settings());
    h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    let _loops = h.run_ha();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a is cut off, and so are b and c: only d can answer, 1 of a's 3 peers.
    h.fleet.isolate("a");
    h.host("b").set_down(true);
    h.host("c").set_down(true);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(h.events("host.failed").iter().all(|e| e.subject != "a"), "{:?}", h.events("host.failed"));
    assert_eq!(h.vm("keep").host, "a");
}

#[tokio::test]
async fn a_returning_host_is_told_to_stop_the_moved_copies_and_keeps_the_rest() {
    let h = Harness::with(&["a", "b", "c"], ha_settings());
    let ha = h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    h.c.create_vm(create_on("plain", "a")).await.unwrap();
    let _loops = h.run_ha();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.fleet.isolate("a");
    within(15, "the HA VM runs elsewhere", || h.vm("keep").host != "a").await;
    // The fake host never fenced itself: it still runs its old copy when it returns.
    assert_eq!(h.host("a").state_of("keep"), Some(VmState::Running));
    h.fleet.heal("a");
    within(5, "the returned host stopped its moved copy", || h.host("a").state_of("keep") != Some(VmState::Running))
        .await;
    assert_eq!(h.host("a").vms()["keep"].uuid, ha.def.uuid);
    assert_eq!(h.host("a").state_of("plain"), Some(VmState::Running), "a VM without HA is never fenced");
    within(5, "it is back, recovering", || !h.events("host.returned").is_empty()).await;
    let host = h.c.host("a").unwrap();
    assert_eq!(host.state, corral_api::HostState::Recovering, "no placements right after a failure");
}

#[tokio::test]
async fn a_new_controller_fails_nothing_over_before_hosts_had_a_lease_to_renew() {
    let mut h = Harness::with(&["a", "b", "c"], ha_settings());
    h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    h.fleet.isolate("a");
    h.restart();
    let started = Instant::now();
    let _loops = h.run_ha();
    within(15, "the HA VM runs elsewhere", || h.vm("keep").host != "a").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "failed over {:?} after the start, within the first lease",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_crashed_ha_vm_restarts_on_its_own_host_and_one_without_ha_stays_stopped() {
    let h = Harness::with(&["a", "b"], ha_settings());
    h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    h.c.create_vm(create_on("plain", "a")).await.unwrap();
    let _loops = h.run_ha();
    let pid = h.host("a").vms()["keep"].pid;
    h.host("a").crash("keep");
    h.host("a").crash("plain");
    within(5, "the HA VM runs again", || {
        let now = h.host("a").vms()["keep"].pid;
        h.vm("keep").state == VmState::Running && now.is_some() && now != pid
    })
    .await;
    assert_eq!(h.vm("keep").host, "a", "restarted in place");
    assert_eq!(h.events("vm.restarted").len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.vm("plain").state, VmState::Inactive, "no HA: left as it is");
}

#[tokio::test]
async fn a_vm_that_keeps_crashing_is_restarted_on_another_host() {
    let h = Harness::with(&["a", "b"], ha_settings());
    h.c.create_vm(ha_vm("flaky", "a")).await.unwrap();
    let _loops = h.run_ha();
    // Three restarts in place within the damping window, then another host.
    for i in 1..=3 {
        h.host("a").crash("flaky");
        within(5, "it was restarted in place", || h.events("vm.restarted").len() == i).await;
        assert_eq!(h.vm("flaky").host, "a");
    }
    h.host("a").crash("flaky");
    within(5, "it runs on b", || h.vm("flaky").host == "b" && h.vm("flaky").state == VmState::Running).await;
    assert_eq!(h.events("vm.restart-damped").len(), 1);
    // The crashed copy left on a is the orphan sweep's.
    h.beat("a");
    h.c.reconcile_once().await;
    within(5, "the crashed copy on a is gone", || h.copies("flaky", &["a", "b"]) == ["b"]).await;
}

#[tokio::test]
async fn a_fenced_vm_is_not_mistaken_for_a_crash() {
    let h = Harness::with(&["a", "b"], ha_settings());
    h.c.create_vm(ha_vm("keep", "a")).await.unwrap();
    let fenced = corral_api::agent::HeartbeatReply { fence: vec![h.vm("keep").def.uuid], ..Default::default() };
    h.host("a").obey(&fenced);
    let _loops = h.run_ha();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.events("vm.restarted").is_empty(), "{:?}", h.events("vm.restarted"));
}

#[tokio::test]
async fn admission_keeps_room_for_a_host_failure_or_warns_when_told_to() {
    let s = Settings { ha_reserve_hosts: 1, ..ha_settings() };
    let h = Harness::with(&["a", "b"], s.clone());
    // Two hosts of 4 vCPUs: HA VMs may fill one host's worth, so that either can fail.
    let mut admitted = 0;
    let mut refusal = None;
    for i in 0..8 {
        match h
            .c
            .create_vm(corral_api::CreateVm { ha: Some(HaPolicy::RestartFresh), ..super::create(&format!("v{i}")) })
            .await
        {
            Ok(_) => admitted += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let e = refusal.expect("the reserve refuses at some point");
    assert_eq!(e.kind, ErrorKind::NoCapacity, "{e}");
    assert!(e.message.contains("--ha-reserve-hosts"), "the message says what to change: {e}");
    assert_eq!(admitted, 4, "room for the HA VMs of one failed host is 4 vCPUs");

    let warn = Harness::with(&["a", "b"], Settings { ha_admission: corral_api::HaAdmission::Warn, ..s });
    for i in 0..5 {
        warn.c
            .create_vm(corral_api::CreateVm { ha: Some(HaPolicy::RestartFresh), ..super::create(&format!("v{i}")) })
            .await
            .unwrap();
    }
    assert!(!warn.events("ha.reserve-broken").is_empty());
}

#[tokio::test]
async fn a_host_that_keeps_failing_is_quarantined_until_the_operator_uncordons_it() {
    let h = Harness::with(&["a", "b", "c"], ha_settings());
    let _loops = h.run_ha();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed = || h.events("host.failed").iter().filter(|e| e.subject == "a").count();
    let returned = || h.events("host.returned").iter().filter(|e| e.subject == "a").count();
    for round in 1..=3 {
        h.fleet.isolate("a");
        within(10, "declared failed", || failed() == round).await;
        assert_eq!(h.c.host("a").unwrap().cordoned, round == 3, "cordoned at the third failure only");
        h.fleet.heal("a");
        within(10, "back", || returned() == round).await;
    }
    let host = h.c.host("a").unwrap();
    assert!(host.cordoned);
    assert_eq!(host.maintenance, Some(Maintenance::Quarantined { failures: 3, window_min: 10 }));
    assert_eq!(host.failures, 3);
    let q = h.events("host.quarantined");
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].message.contains("corral host uncordon a"), "the event says what to do: {}", q[0].message);
    let refused = h.c.create_vm(create_on("x", "a")).await.expect_err("no placement on a quarantined host");
    assert_eq!(refused.kind, ErrorKind::NoCapacity, "{}", refused.message);
    // Fixed: uncordoned, it takes VMs again, and its past failures no longer count.
    let host = h.c.set_cordon("a", false).unwrap();
    assert_eq!((host.cordoned, host.maintenance, host.failures), (false, None, 0));
    h.fleet.isolate("a");
    within(10, "declared failed again", || failed() == 4).await;
    assert!(!h.c.host("a").unwrap().cordoned, "one failure after the fix does not quarantine it");
}
