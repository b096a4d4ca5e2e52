//! Live-migration orchestration: commit, roll-back at each failure point, cancel (and too late
//! to cancel), slot limits and queueing, refusals, and resuming after a controller restart.

use corral_api::migration::{MigrateVm, MigrationState};
use corral_api::{ErrorKind, VmAction, VmState};

use super::{create_on, until, Harness, Process};
use crate::agents::fake::{Fault, MigrationPlan, Op};

fn to(host: &str) -> MigrateVm {
    MigrateVm { to: Some(host.into()), ..Default::default() }
}

async fn ended(h: &Harness, id: &str) -> corral_api::migration::Migration {
    until("the migration ends", || h.c.migration(id).is_ok_and(|m| m.state.is_final())).await;
    until("the VM is free again", || !h.c.is_busy(&h.c.migration(id).unwrap().vm)).await;
    h.c.migration(id).unwrap()
}

#[tokio::test]
async fn a_completed_migration_moves_the_vm_and_removes_the_source_copy() {
    let h = Harness::new(&["a", "b"]);
    let vm = h.c.create_vm(create_on("v", "a")).await.unwrap();
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    assert_eq!(h.vm("v").migration.as_ref().map(|r| r.to.as_str()), Some("b"), "the intent is recorded first");
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Completed, "{}", m.result);
    let now = h.vm("v");
    assert_eq!((now.host.as_str(), now.state, now.def.uuid), ("b", VmState::Running, vm.def.uuid));
    assert!(now.migration.is_none());
    assert_eq!(h.copies("v", &["a", "b"]), ["b"], "exactly one copy, at the destination");
    assert_eq!(h.events("vm.migrated").len(), 1);
}

#[tokio::test]
async fn a_migration_the_source_gives_up_leaves_the_vm_running_at_the_source() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Fail);
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Failed);
    assert!(m.result.contains("stream broke"), "{}", m.result);
    let vm = h.vm("v");
    assert_eq!((vm.host.as_str(), vm.state), ("a", VmState::Running));
    assert_eq!(h.copies("v", &["a", "b"]), ["a"], "the arriving copy was removed");
}

#[tokio::test]
async fn a_destination_that_refuses_to_prepare_fails_the_migration_before_the_source_acts() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("b").inject(Op::Incoming, Fault::Fail(ErrorKind::Internal));
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Failed);
    assert_eq!(h.host("a").calls("migrate v"), 0, "the source was never asked to send");
    assert_eq!(h.vm("v").state, VmState::Running);
}

#[tokio::test]
async fn a_cancelled_migration_keeps_the_vm_at_the_source() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Hang);
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    until("it runs", || h.c.migration(&m.id).unwrap().state == MigrationState::Running).await;
    h.c.cancel_migration("v").await.unwrap();
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Cancelled, "{}", m.result);
    assert_eq!(h.vm("v").host, "a");
    assert_eq!(h.vm("v").state, VmState::Running);
    assert_eq!(h.copies("v", &["a", "b"]), ["a"]);
}

#[tokio::test]
async fn a_cancel_after_the_switch_to_postcopy_is_refused_as_too_late_and_the_move_completes() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Postcopy);
    h.host("a").inject(Op::Migration, Fault::Delay(std::time::Duration::from_millis(300)));
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    until("it runs", || h.c.migration(&m.id).unwrap().state == MigrationState::Running).await;
    let e = h.c.cancel_migration("v").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLate, "{e}");
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Completed);
    assert_eq!(h.vm("v").host, "b");
}

#[tokio::test]
async fn migrations_beyond_a_hosts_limit_wait_in_a_queue() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("one", "a")).await.unwrap();
    h.c.create_vm(create_on("two", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Hang);
    let m1 = h.c.migrate_vm("one", to("b")).await.unwrap();
    until("the first runs", || h.c.migration(&m1.id).unwrap().state == MigrationState::Running).await;
    let m2 = h.c.migrate_vm("two", to("b")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(h.c.migration(&m2.id).unwrap().state, MigrationState::Queued, "one migration out of a at a time");
    assert_eq!(h.host("b").calls("incoming two"), 0);
    h.host("a").plan_migrations(MigrationPlan::Complete);
    assert_eq!(ended(&h, &m1.id).await.state, MigrationState::Completed);
    assert_eq!(ended(&h, &m2.id).await.state, MigrationState::Completed);
    assert_eq!(h.copies("two", &["a", "b"]), ["b"]);
}

#[tokio::test]
async fn a_queued_migration_can_be_cancelled_before_any_host_acts() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("one", "a")).await.unwrap();
    h.c.create_vm(create_on("two", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Hang);
    let m1 = h.c.migrate_vm("one", to("b")).await.unwrap();
    until("the first runs", || h.c.migration(&m1.id).unwrap().state == MigrationState::Running).await;
    let m2 = h.c.migrate_vm("two", to("b")).await.unwrap();
    h.c.cancel_migration("two").await.unwrap();
    assert_eq!(ended(&h, &m2.id).await.state, MigrationState::Cancelled);
    assert_eq!(h.host("b").calls("incoming two"), 0);
    assert_eq!(h.vm("two").state, VmState::Running);
}

#[tokio::test]
async fn migrations_that_cannot_be_are_refused_with_the_reason() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    let e = h.c.migrate_vm("v", to("a")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest, "to its own host: {e}");
    let e = h.c.migrate_vm("v", to("zz")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest, "to an unknown host: {e}");
    h.c.vm_action("v", VmAction::Pause).await.unwrap();
    let e = h.c.migrate_vm("v", to("b")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "a paused VM: {e}");
    assert!(e.message.contains("resume"), "the message says what to do: {e}");
    h.c.vm_action("v", VmAction::Resume).await.unwrap();
    h.c.set_cordon("b", true).unwrap();
    let e = h.c.migrate_vm("v", to("b")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "to a cordoned host: {e}");
    assert!(h.c.migrations(Some("v")).unwrap().is_empty(), "no refused request left a record");
}

#[tokio::test]
async fn a_destination_that_lost_the_vm_after_a_precopy_switch_gets_it_back_at_the_source() {
    let h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("b").inject(Op::FinishMigration, Fault::Fail(ErrorKind::Internal));
    // The destination's copy died at the hand-over.
    h.host("b").inject(Op::Get, Fault::Fail(ErrorKind::NotFound));
    let m = h.c.migrate_vm("v", to("b")).await.unwrap();
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Failed);
    assert!(m.result.contains("did not survive"), "{}", m.result);
    assert_eq!(h.vm("v").host, "a");
    assert_eq!(h.host("a").state_of("v"), Some(VmState::Running), "the stopped source copy runs again");
    assert_eq!(h.host("a").calls("revert-migration v"), 1);
}

#[tokio::test]
async fn a_migration_cut_short_by_a_controller_restart_is_finished_by_the_new_controller() {
    let mut h = Harness::new(&["a", "b"]);
    h.c.create_vm(create_on("v", "a")).await.unwrap();
    h.host("a").plan_migrations(MigrationPlan::Hang);
    let old = Process::new();
    let c = h.c.clone();
    let m = old.run(async move { c.migrate_vm("v", to("b")).await }).await.unwrap();
    until("it runs", || h.c.migration(&m.id).unwrap().state == MigrationState::Running).await;
    old.kill();
    h.restart();
    h.host("a").plan_migrations(MigrationPlan::Complete);
    h.beat("a");
    h.beat("b");
    h.c.reconcile_once().await;
    let m = ended(&h, &m.id).await;
    assert_eq!(m.state, MigrationState::Completed, "{}", m.result);
    assert_eq!(h.vm("v").host, "b");
    assert_eq!(h.copies("v", &["a", "b"]), ["b"]);
}
