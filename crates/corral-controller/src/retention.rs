//! Retention: the event log, the migration history and finished operations are kept to a
//! bounded number and age (`corral controller --keep-events`, `--keep-history`, `--keep-for`),
//! so a long-running controller's store, its memory and every listing stay small. Pruning
//! runs once a minute on the leader; what runs (a migration, an operation) is never pruned.

use std::time::Duration;

use corral_api::cluster::OpState;
use corral_api::migration::MigrationState;
use corral_api::now_ms;
use corral_store::Table;

use crate::service::{lock, store_err, Controller};
use crate::tables::{EVENTS, MIGRATIONS, OPS};

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept, newest first.
    pub events: usize,
    /// Finished migrations and finished operations kept, each.
    pub history: usize,
    /// Nothing finished longer ago than this is kept.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { events: 10_000, history: 1_000, max_age: Duration::from_secs(30 * 24 * 3600) }
    }
}

/// One record as pruning sees it: its key, when it ended (`None`: still running, never pruned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aged {
    pub key: String,
    pub ended_ms: Option<u64>,
}

/// The keys to remove so that at most `keep` finished records remain, none ended before
/// `now_ms - max_age`. The oldest go first. Pure.
pub fn to_prune(mut all: Vec<Aged>, keep: usize, max_age: Duration, now_ms: u64) -> Vec<String> {
    let cutoff = now_ms.saturating_sub(max_age.as_millis() as u64);
    all.retain(|a| a.ended_ms.is_some());
    all.sort_by_key(|a| std::cmp::Reverse(a.ended_ms));
    all.into_iter()
        .enumerate()
        .filter(|(i, a)| *i >= keep || a.ended_ms.is_some_and(|t| t < cutoff))
        .map(|(_, a)| a.key)
        .collect()
}

impl Controller {
    /// Removes what retention no longer keeps; returns how many records went.
    pub async fn prune_once(&self) -> usize {
        let r = self.settings.retention;
        let now = now_ms();
        let mut gone = 0;
        // Events: keys start with their time.
        if let Ok(keys) = EVENTS.keys(&*self.store, "") {
            let aged = keys
                .into_iter()
                .map(|k| {
                    let ms = k.split('-').next().and_then(|t| t.parse().ok()).unwrap_or(0);
                    Aged { key: k, ended_ms: Some(ms) }
                })
                .collect();
            gone += self.delete_all(EVENTS, to_prune(aged, r.events, r.max_age, now));
        }
        if let Ok(ms) = MIGRATIONS.list(&*self.store) {
            let aged = ms
                .into_iter()
                .map(|m| {
                    let done = !matches!(m.state, MigrationState::Running | MigrationState::Queued);
                    Aged { key: m.id, ended_ms: done.then(|| m.ended_ms.unwrap_or(m.requested_ms)) }
                })
                .collect();
            gone += self.delete_all(MIGRATIONS, to_prune(aged, r.history, r.max_age, now));
        }
        if let Ok(ops) = OPS.list(&*self.store) {
            let aged = ops
                .into_iter()
                .map(|o| Aged {
                    key: o.id,
                    ended_ms: (o.state != OpState::Running).then(|| o.finished_ms.unwrap_or(o.started_ms)),
                })
                .collect();
            let doomed = to_prune(aged, r.history, r.max_age, now);
            {
                let mut mem = lock(&self.ops);
                for k in &doomed {
                    mem.remove(k);
                }
            }
            gone += self.delete_all(OPS, doomed);
        }
        if gone > 0 {
            tracing::info!("retention: removed {gone} old events, migrations and operations");
        }
        gone
    }

    /// Deletes keys of a table in batches; returns how many went.
    fn delete_all<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        table: Table<T>,
        keys: Vec<String>,
    ) -> usize {
        let mut n = 0;
        for chunk in keys.chunks(100) {
            let ops = chunk.iter().map(|k| table.delete_op(k)).collect();
            match self.store.apply(ops).map_err(store_err) {
                Ok(()) => n += chunk.len(),
                Err(e) => {
                    tracing::warn!("retention: cannot prune {}: {}", table.name(), e.message);
                    break;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(key: &str, ended_ms: Option<u64>) -> Aged {
        Aged { key: key.into(), ended_ms }
    }

    #[test]
    fn keeps_the_newest_finished_and_never_what_runs() {
        let all = vec![aged("a", Some(10)), aged("b", Some(30)), aged("run", None), aged("c", Some(20))];
        let mut gone = to_prune(all, 2, Duration::from_secs(3600), 100);
        gone.sort();
        assert_eq!(gone, vec!["a".to_string()], "the oldest finished one goes; the running one stays");
    }

    #[test]
    fn drops_what_ended_too_long_ago() {
        let day = 24 * 3600 * 1000;
        let all = vec![aged("old", Some(1)), aged("new", Some(10 * day))];
        assert_eq!(to_prune(all, 100, Duration::from_secs(24 * 3600), 10 * day + 5), vec!["old".to_string()]);
    }
}
