//! DRS execution: consolidation by live migration and standby, advice that moves nothing,
//! waking a standby host for a VM only it has room for, and the refusals and failures of
//! standby.

use std::time::Duration;

use corral_api::drs::{DrsMode, DrsSettingsPatch, HostPower};
use corral_api::{ErrorKind, VmState};

use super::{create, create_on, settings, until, Harness};
use crate::service::Settings;

fn powered(standby: &str, wake: &str) -> Settings {
    Settings { standby_command: Some(standby.into()), wake_command: Some(wake.into()), ..settings() }
}

fn mode(h: &Harness, mode: DrsMode) {
    h.c.set_drs(DrsSettingsPatch { mode: Some(mode), interval_s: Some(1.0), ..Default::default() }).unwrap();
}

fn power(h: &Harness, host: &str) -> HostPower {
    h.c.host(host).unwrap().power
}

#[tokio::test]
async fn consolidation_empties_hosts_by_live_migration_and_puts_them_in_standby() {
    let h = Harness::with(&["a", "b", "c"], powered("true", "true"));
    for (vm, host) in [("x", "a"), ("y", "b"), ("z", "c")] {
        h.c.create_vm(create_on(vm, host)).await.unwrap();
    }
    mode(&h, DrsMode::Auto);
    let _loops = h.run_drs();
    until("a host is in standby and nothing moves", || {
        let asleep = ["a", "b", "c"].iter().any(|x| power(&h, x) == HostPower::Standby);
        asleep && !h.events("host.standby").is_empty() && h.c.vms().unwrap().iter().all(|v| v.migration.is_none())
    })
    .await;
    for x in ["a", "b", "c"] {
        if power(&h, x) == HostPower::Standby {
            assert!(h.host(x).vms().is_empty(), "{x} went to standby holding VMs");
            assert_eq!(h.c.host(x).unwrap().vms, 0);
        }
    }
    for v in h.c.vms().unwrap() {
        assert_eq!(v.state, VmState::Running, "{} kept running", v.def.name);
        assert_eq!(h.copies(&v.def.name, &["a", "b", "c"]), vec![v.host.clone()]);
    }
    let rounds = h.c.drs_rounds(100).unwrap();
    let moves: Vec<_> = rounds.iter().filter(|r| r.executed).flat_map(|r| r.moves.iter()).collect();
    assert!(moves.iter().any(|m| m.reason == corral_api::drs::MoveReason::Consolidate), "{moves:?}");
    assert!(
        moves.iter().all(|m| m.outcome.as_deref().is_some_and(|o| o.starts_with("mig-"))),
        "every move went through a live migration: {moves:?}"
    );
    assert!(!h.events("host.standby").is_empty());
}

#[tokio::test]
async fn advice_records_a_plan_and_moves_nothing() {
    let h = Harness::new(&["a", "b", "c"]);
    for (vm, host) in [("x", "a"), ("y", "b"), ("z", "c")] {
        h.c.create_vm(create_on(vm, host)).await.unwrap();
    }
    mode(&h, DrsMode::Advise);
    let _loops = h.run_drs();
    until("an advised round is recorded", || h.c.drs_rounds(10).unwrap().iter().any(|r| r.mode == DrsMode::Advise))
        .await;
    let plan = h.c.drs_plan().unwrap();
    assert!(!plan.standby.is_empty() || !plan.moves.is_empty(), "three idle hosts are worth consolidating: {plan:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (vm, host) in [("x", "a"), ("y", "b"), ("z", "c")] {
        assert_eq!(h.vm(vm).host, host, "advice moved {vm}");
    }
    assert!(["a", "b", "c"].iter().all(|x| power(&h, x) == HostPower::On));
    assert!(h.c.migrations(None).unwrap().is_empty());
}

#[tokio::test]
async fn a_vm_only_a_standby_host_has_room_for_wakes_it_and_runs_there() {
    let h = Harness::with(&["a", "b"], powered("true", "true"));
    h.c.standby_host("b").await.unwrap();
    assert_eq!(power(&h, "b"), HostPower::Standby);
    for i in 0..4 {
        h.c.create_vm(create(&format!("v{i}"))).await.unwrap();
    }
    assert!(h.host("b").vms().is_empty(), "nothing is placed on a host in standby");
    let _loops = h.run_drs();
    let vm = h.c.create_vm(create("more")).await.unwrap();
    assert_eq!((vm.host.as_str(), vm.state), ("b", VmState::Running));
    assert_eq!(power(&h, "b"), HostPower::On);
    assert_eq!(h.events("host.woken").len(), 1);
}

#[tokio::test]
async fn standby_refuses_a_host_with_vms_and_a_failed_standby_command_keeps_the_host_on() {
    let h = Harness::with(&["a", "b"], powered("exit 3", "true"));
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    let e = h.c.standby_host("a").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(e.message.contains("evacuate"), "the message says what to do: {e}");
    let e = h.c.standby_host("b").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(power(&h, "b"), HostPower::On, "still running: it stays on and takes VMs");
    h.c.create_vm(create_on("w", "b")).await.unwrap();
}

#[tokio::test]
async fn a_host_in_standby_forgets_its_last_heartbeats() {
    let h = Harness::with(&["a", "b"], powered("true", "true"));
    h.c.standby_host("b").await.unwrap();
    assert_ne!(h.c.host("b").unwrap().state, corral_api::HostState::Ready, "its old heartbeat is no sign of life");
    assert!(!h.c.host_ready("b"));
    // A heartbeat from before it slept does not count as woken: a wake waits for a new one.
    let c = h.c.clone();
    let waking = tokio::spawn(async move { c.wake_host("b").await });
    until("it is waking", || power(&h, "b") == HostPower::Waking).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(power(&h, "b"), HostPower::Waking, "woken without reporting");
    h.beat("b");
    waking.await.unwrap().unwrap();
    assert_eq!(power(&h, "b"), HostPower::On);
}
