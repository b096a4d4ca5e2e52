//! Deployment of single VMs: placement, intent before action, the agent's failures (refusal,
//! lost reply, unreachable host, stale copy), actions, deletion and the reconciler.

use std::time::Duration;

use corral_api::{ErrorKind, Pending, VmAction, VmState};

use super::{create, create_on, until, Harness};
use crate::agents::fake::{Fault, Op};

#[tokio::test]
async fn a_vm_is_placed_on_the_emptier_host_and_runs_there() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("one", "a")).await.unwrap();
    let vm = h.c.create_vm(create("two")).await.unwrap();
    assert_eq!(vm.host, "b", "the second VM goes to the host with more room");
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.pending, None);
    assert_eq!(h.host("b").state_of("two"), Some(VmState::Running));
    assert_eq!(h.copies("two", &["a", "b"]), ["b"]);
}

#[tokio::test]
async fn a_second_vm_of_the_same_name_is_refused_as_already_existing() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("web")).await.unwrap();
    let e = h.c.create_vm(create("web")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    assert_eq!(h.host("a").calls("create web"), 1, "the agent was asked once");
}

#[tokio::test]
async fn a_vm_larger_than_any_host_is_refused_for_capacity_and_nothing_is_recorded() {
    let h = Harness::new(&["a"]);
    let big = corral_api::CreateVm { vcpus: Some(8), ..create("big") };
    let e = h.c.create_vm(big).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoCapacity, "{e}");
    assert!(h.c.vm("big").is_err(), "no record is left");
    assert_eq!(h.host("a").calls("create"), 0);
}

#[tokio::test]
async fn hosts_fill_up_and_then_refuse() {
    let h = Harness::new(&["a"]);
    for i in 0..4 {
        h.c.create_vm(create(&format!("vm-{i}"))).await.unwrap();
    }
    let e = h.c.create_vm(create("vm-4")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoCapacity, "4 vCPUs hold 4 VMs of 1 vCPU without overcommit: {e}");
}

#[tokio::test]
async fn an_unknown_template_is_refused_before_anything_is_placed() {
    let h = Harness::new(&["a"]);
    let req = corral_api::CreateVm { template: "nope".parse().unwrap(), ..create("x") };
    let e = h.c.create_vm(req).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::BadRequest | ErrorKind::Invalid | ErrorKind::NotFound), "{e:?}");
    assert!(h.c.vm("x").is_err());
}

#[tokio::test]
async fn an_agent_refusal_leaves_the_vm_in_error_with_the_reason() {
    let h = Harness::new(&["a"]);
    h.host("a").inject(Op::Create, Fault::Fail(ErrorKind::Internal));
    let e = h.c.create_vm(create("bad")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    let vm = h.vm("bad");
    assert_eq!(vm.state, VmState::Error);
    assert!(vm.error.as_deref().is_some_and(|m| m.contains("failed as asked")), "{:?}", vm.error);
    assert_eq!(vm.pending, None, "a single VM that failed is not retried forever");
}

#[tokio::test]
async fn a_host_that_does_not_answer_gets_the_vm_once_it_reports_again() {
    let h = Harness::new(&["a"]);
    h.host("a").set_down(true);
    let e = h.c.create_vm(create("later")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let vm = h.vm("later");
    assert!(matches!(vm.pending, Some(Pending::Create { start: true })), "the intent stays: {vm:?}");
    assert_ne!(vm.state, VmState::Error);
    assert_eq!(h.events("vm.deferred").len(), 1);

    h.host("a").set_down(false);
    h.beat("a");
    h.c.reconcile_once().await;
    until("the reconciler has created it", || h.vm("later").state == VmState::Running).await;
    assert_eq!(h.host("a").state_of("later"), Some(VmState::Running));
    assert_eq!(h.vm("later").pending, None);
}

#[tokio::test]
async fn a_lost_reply_to_create_is_finished_by_the_reconciler_without_a_second_copy() {
    let h = Harness::new(&["a"]);
    h.host("a").inject(Op::Create, Fault::LoseReply);
    let e = h.c.create_vm(create("lost")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    // The agent did create it; the controller did not hear so.
    assert_eq!(h.host("a").state_of("lost"), Some(VmState::Inactive));
    h.c.reconcile_once().await;
    until("it runs", || h.vm("lost").state == VmState::Running).await;
    let on_host = h.host("a").vms();
    assert_eq!(on_host.len(), 1);
    assert_eq!(on_host["lost"].uuid, h.vm("lost").def.uuid, "the copy on the host is the recorded VM");
}

#[tokio::test]
async fn a_stale_copy_holding_the_name_on_the_host_is_replaced() {
    let h = Harness::new(&["a"]);
    // An earlier attempt left a VM of this name (another UUID) on the host.
    let mut stale = h.c.create_vm(create("web")).await.unwrap().def;
    h.c.remove("web").await.unwrap();
    stale.uuid = uuid::Uuid::new_v4();
    use crate::agents::AgentApi;
    h.host("a").create(&stale, false).await.unwrap();

    let vm = h.c.create_vm(create("web")).await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(h.host("a").vms()["web"].uuid, vm.def.uuid, "the stale copy was replaced by the new VM");
}

#[tokio::test]
async fn actions_change_the_vm_and_are_checked_against_its_state() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    assert_eq!(h.c.vm_action("v", VmAction::Pause).await.unwrap().state, VmState::Paused);
    assert_eq!(h.c.vm_action("v", VmAction::Resume).await.unwrap().state, VmState::Running);
    assert_eq!(h.c.vm_action("v", VmAction::Stop).await.unwrap().state, VmState::Inactive);
    assert_eq!(h.host("a").state_of("v"), Some(VmState::Inactive));
    let e = h.c.vm_action("v", VmAction::Pause).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "a stopped VM cannot pause: {e}");
    assert_eq!(h.host("a").calls("action v pause"), 1, "the refused action never reached the agent");
}

#[tokio::test]
async fn starting_a_vm_its_host_lost_creates_it_there_again() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    h.c.vm_action("v", VmAction::Stop).await.unwrap();
    h.host("a").lose_all_vms();
    let vm = h.c.vm_action("v", VmAction::Start).await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(h.host("a").state_of("v"), Some(VmState::Running));
    assert_eq!(h.events("vm.recreated").len(), 1);
}

#[tokio::test]
async fn an_action_the_agent_fails_puts_the_vm_in_error_but_an_unreachable_host_does_not() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    h.host("a").set_down(true);
    let e = h.c.vm_action("v", VmAction::Pause).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(h.vm("v").state, VmState::Running, "not knowing is not an error of the VM");
    h.host("a").set_down(false);
    h.host("a").inject(Op::Action, Fault::Fail(ErrorKind::Internal));
    h.c.vm_action("v", VmAction::Pause).await.unwrap_err();
    assert_eq!(h.vm("v").state, VmState::Error);
}

#[tokio::test]
async fn a_busy_vm_refuses_a_second_operation_while_other_vms_go_on() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("slow")).await.unwrap();
    h.c.create_vm(create("other")).await.unwrap();
    h.host("a").inject(Op::Action, Fault::Delay(Duration::from_millis(500)));
    let c = h.c.clone();
    let pausing = tokio::spawn(async move { c.vm_action("slow", VmAction::Pause).await });
    until("the pause is in flight", || h.c.is_busy("slow")).await;
    let e = h.c.vm_action("slow", VmAction::Stop).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    // No lock is held across the slow call: another VM is served meanwhile.
    let t = std::time::Instant::now();
    h.c.vm_action("other", VmAction::Stop).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(400), "another VM waited for the slow one");
    assert_eq!(pausing.await.unwrap().unwrap().state, VmState::Paused);
}

#[tokio::test]
async fn deleting_a_vm_removes_it_from_its_host_and_the_store() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    h.c.delete_vm("v").await.unwrap();
    assert_eq!(h.c.vm("v").unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(h.host("a").state_of("v"), None);
}

#[tokio::test]
async fn a_delete_whose_host_is_down_is_finished_by_the_reconciler() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    h.host("a").set_down(true);
    h.c.delete_vm("v").await.unwrap_err();
    assert_eq!(h.vm("v").pending, Some(Pending::Delete), "the intent is recorded first");
    h.host("a").set_down(false);
    h.beat("a");
    h.c.reconcile_once().await;
    until("the VM is gone", || h.c.vm("v").is_err()).await;
    assert_eq!(h.host("a").state_of("v"), None);
}

#[tokio::test]
async fn heartbeats_bring_the_actual_state_back() {
    let h = Harness::new(&["a"]);
    h.c.create_vm(create("v")).await.unwrap();
    h.host("a").crash("v");
    h.beat("a");
    let vm = h.vm("v");
    assert_eq!(vm.state, VmState::Inactive);
    assert!(vm.error.is_some());
    let e = h.c.heartbeat("stranger", h.host("a").heartbeat()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "an unknown host must register first");
}

#[tokio::test]
async fn the_reconciler_removes_a_copy_the_store_does_not_know() {
    let h = Harness::new(&["a"]);
    let vm = h.c.create_vm(create("v")).await.unwrap();
    let mut orphan = vm.def.clone();
    orphan.name = "ghost".parse().unwrap();
    orphan.uuid = uuid::Uuid::new_v4();
    use crate::agents::AgentApi;
    h.host("a").create(&orphan, true).await.unwrap();
    h.beat("a");
    h.c.reconcile_once().await;
    until("the orphan is gone", || h.host("a").state_of("ghost").is_none()).await;
    assert_eq!(h.host("a").state_of("v"), Some(VmState::Running), "the known VM stays");
    assert_eq!(h.events("vm.orphan-removed").len(), 1);
}

#[tokio::test]
async fn a_vm_of_a_library_image_no_host_holds_gets_it_sent_and_its_defaults() {
    let lib = tempfile::tempdir().unwrap();
    std::fs::write(lib.path().join("appliance.qcow2"), b"disk").unwrap();
    let meta = serde_json::json!({"name": "appliance", "disk": "appliance.qcow2", "boot": "uefi",
                                  "vcpus": 2, "memory_mib": 1536});
    std::fs::write(lib.path().join("appliance.json"), meta.to_string()).unwrap();
    let h = Harness::with(&["a"], super::Settings { templates_dir: Some(lib.path().into()), ..super::settings() });
    // No host holds the image yet: it is sent to the one chosen.
    let from_image =
        corral_api::CreateVm { template: "appliance".parse().unwrap(), vcpus: None, memory_mib: None, ..create("o1") };
    let v = h.c.create_vm(from_image.clone()).await.unwrap();
    assert_eq!((v.def.vcpus, v.def.memory_mib), (2, 1536), "the image's defaults (an imported OVA's)");
    assert_eq!(h.host("a").calls("pull appliance"), 1, "the image was sent to the host");
    let asked = corral_api::CreateVm { name: "o2".parse().unwrap(), vcpus: Some(1), ..from_image };
    let v = h.c.create_vm(asked).await.unwrap();
    assert_eq!((v.def.vcpus, v.def.memory_mib), (1, 1536), "what the request gives wins");
    let plain = corral_api::CreateVm { vcpus: None, memory_mib: None, ..create("p1") };
    let v = h.c.create_vm(plain).await.unwrap();
    assert_eq!((v.def.vcpus, v.def.memory_mib), (1, 256), "an image without defaults: 1 vCPU, 256 MiB");
}
