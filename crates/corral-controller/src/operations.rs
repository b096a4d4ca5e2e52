//! The operation registry: long operations (cluster create, scale, delete, suspend, resume)
//! with their progress, written through to the store so clients can follow and wait on them.

use std::sync::Arc;
use std::time::Instant;

use corral_api::cluster::{OpKind, OpPhase, OpStage, OpState, OpStep, Operation};
use corral_api::{now_ms, ApiError};

use crate::service::{lock, Controller};
use crate::tables::OPS;

/// A handle to a running operation: every update is written through to the store.
#[derive(Clone)]
pub(crate) struct OpHandle {
    c: Arc<Controller>,
    pub id: String,
}

impl OpHandle {
    pub fn update(&self, f: impl FnOnce(&mut Operation)) {
        let snapshot = {
            let mut ops = lock(&self.c.ops);
            let Some(op) = ops.get_mut(&self.id) else { return };
            f(op);
            op.clone()
        };
        if let Err(e) = OPS.put(&*self.c.store, &self.id, &snapshot) {
            tracing::warn!("cannot record operation {}: {e}", self.id);
        }
    }
    pub(crate) fn phase(&self, p: OpPhase) {
        self.update(|o| o.phase = p);
    }
    pub(crate) fn step(&self, name: OpStage, since: Instant) {
        let ms = since.elapsed().as_millis() as u64;
        self.update(|o| o.steps.push(OpStep { name, ms }));
    }
    pub(crate) fn message(&self, m: String) {
        self.update(|o| o.messages.push(m));
    }
    pub(crate) fn tick(&self) {
        self.update(|o| o.done += 1);
    }
    pub(crate) fn finish(&self, ok: bool, vms: u32, hosts: Vec<String>) {
        self.update(|o| {
            o.state = if ok { OpState::Succeeded } else { OpState::Failed };
            o.phase = OpPhase::Done;
            o.vms = vms;
            o.hosts = hosts;
            o.finished_ms = Some(now_ms());
        });
    }
}

impl Controller {
    /// Loads operations at start-up; those a crash interrupted are marked failed (the VMs'
    /// pending work is finished by the reconciler, not by the operation).
    pub(crate) fn load_ops(&self) {
        let Ok(mut all) = OPS.list(&*self.store) else { return };
        for op in all.iter_mut().filter(|o| o.state == OpState::Running) {
            op.state = OpState::Failed;
            op.messages
                .push("interrupted by a controller restart; the reconciler finishes the VMs' pending work".into());
            op.finished_ms = Some(now_ms());
            let _ = OPS.put(&*self.store, &op.id, op);
        }
        *lock(&self.ops) = all.into_iter().map(|o| (o.id.clone(), o)).collect();
    }

    pub(crate) fn new_op(self: &Arc<Self>, kind: OpKind, target: &str, total: u32, steps: Vec<OpStep>) -> OpHandle {
        let id = format!("op-{:013}-{}", now_ms(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let op = Operation {
            id: id.clone(),
            kind,
            target: target.into(),
            state: OpState::Running,
            phase: OpPhase::Starting,
            done: 0,
            total,
            steps,
            messages: vec![],
            vms: 0,
            hosts: vec![],
            started_ms: now_ms(),
            finished_ms: None,
        };
        lock(&self.ops).insert(id.clone(), op);
        let h = OpHandle { c: self.clone(), id };
        h.update(|_| {});
        h
    }

    pub fn operation(&self, id: &str) -> Result<Operation, ApiError> {
        lock(&self.ops).get(id).cloned().ok_or_else(|| ApiError::not_found(format!("no operation {id:?}")))
    }

    pub fn operations(&self) -> Vec<Operation> {
        lock(&self.ops).values().cloned().collect()
    }

    /// Waits up to `secs` for an operation to end.
    pub async fn wait_operation(&self, id: &str, secs: u64) -> Result<Operation, ApiError> {
        let deadline = Instant::now() + std::time::Duration::from_secs(secs.min(300));
        loop {
            let op = self.operation(id)?;
            if op.state != OpState::Running || Instant::now() >= deadline {
                return Ok(op);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
