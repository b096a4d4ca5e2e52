//! Corral's default policy (placeholder while the reference is being reproduced).

use super::{CorralParams, Plan, PolicyState, Snapshot};

pub(crate) fn plan(_s: &Snapshot, _p: &CorralParams, _state: &mut PolicyState) -> Plan {
    Plan::default()
}
