//! The replicated backend: tables and keys live in an etcd cluster (v3 API) under a prefix,
//! as `<prefix><table>/<key>`. A batch of operations is one etcd transaction, so it is atomic
//! like a redb write; compare-and-swap is a transaction guarded on the value (or on the key's
//! absence).
//!
//! The [`Store`] trait is synchronous (the controller calls it from async code as it does the
//! redb file); the etcd client is async, so it runs on a runtime of its own, on its own
//! thread, and each call waits for its answer (with a deadline, so a lost etcd is an error,
//! never a hang).
//!
//! A leading controller guards its writes ([`EtcdStore::guard_writes`]): every transaction
//! also compares the leader key's lease with the one the controller won it with, so a deposed
//! leader's work still in flight (a restart it spawned, a deployment) writes nothing, even if
//! it does not know yet that it was deposed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseClient, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};

use crate::{Op, Result, Store, StoreError};

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long one call may wait for etcd.
const DEADLINE: Duration = Duration::from_secs(10);

/// Which writes this store lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteGuard {
    /// Every write (a tool such as `corral store migrate`, or a controller before it first
    /// leads).
    Open,
    /// Only while the key `name` (under the prefix) is bound to `lease`: this controller leads.
    Leader { name: String, lease: i64 },
    /// None: this controller led and stepped down.
    Deposed,
}

/// A [`Store`] in an etcd cluster.
pub struct EtcdStore {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    kv: KvClient,
    lease: LeaseClient,
    prefix: String,
    endpoints: String,
    guard: std::sync::Mutex<WriteGuard>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (e.g. `127.0.0.1:2379`); keys go under
    /// `prefix` (e.g. `/corral/`).
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let shown = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(StoreError::Open { path: "etcd".into(), message: "no endpoints given".into() });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("corral-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open { path: shown.clone(), message: format!("cannot start its runtime: {e}") })?;
        std::thread::Builder::new()
            .name("corral-etcd".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job);
                    }
                });
            })
            .map_err(|e| StoreError::Open { path: shown.clone(), message: format!("cannot start its thread: {e}") })?;
        let eps = endpoints.to_vec();
        let opts =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(Duration::from_secs(2));
        let client = call(&tx, &shown, async move { Client::connect(eps, Some(opts)).await })
            .map_err(|e| StoreError::Open { path: shown.clone(), message: format!("cannot connect to etcd: {e}") })?;
        let me = Self {
            jobs: tx,
            kv: client.kv_client(),
            lease: client.lease_client(),
            prefix: prefix.to_string(),
            endpoints: shown,
            guard: std::sync::Mutex::new(WriteGuard::Open),
        };
        // A first read proves the cluster answers (connect alone is lazy).
        me.get("meta", "probe").map_err(|e| StoreError::Open {
            path: me.endpoints.clone(),
            message: format!("etcd does not answer: {e}"),
        })?;
        Ok(me)
    }

    fn key(&self, table: &str, key: &str) -> String {
        format!("{}{table}/{key}", self.prefix)
    }

    /// Sets which writes go through from now on.
    pub fn guard_writes(&self, g: WriteGuard) {
        *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = g;
    }

    /// The comparison every write of this store is conditioned on (none if writes are open),
    /// or the refusal if it may not write at all.
    fn write_condition(&self) -> Result<Option<(String, i64)>> {
        match &*self.guard.lock().unwrap_or_else(|p| p.into_inner()) {
            WriteGuard::Open => Ok(None),
            WriteGuard::Leader { name, lease } => Ok(Some((format!("{}{name}", self.prefix), *lease))),
            WriteGuard::Deposed => Err(StoreError::NotLeader("it stepped down".into())),
        }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T> {
        call(&self.jobs, &self.endpoints, f)
    }

    /// Leader election, step one: a lease of `ttl_s` seconds that keys can be bound to.
    pub fn grant_lease(&self, ttl_s: i64) -> Result<i64> {
        let mut l = self.lease.clone();
        Ok(self.run(async move { l.grant(ttl_s, None).await })?.id())
    }

    /// Renews a lease once, waiting at most `within` (a cluster without quorum never answers
    /// a renewal); false if it has expired (its keys are gone).
    pub fn keep_alive(&self, lease: i64, within: Duration) -> Result<bool> {
        let mut l = self.lease.clone();
        let resp = self.run(async move {
            let renew = async {
                let (mut keeper, mut stream) = match l.keep_alive(lease).await {
                    Ok(pair) => pair,
                    // The client turns etcd's "TTL 0" answer (the lease is gone) into this
                    // variant; ask etcd for the lease's time to live rather than read the
                    // error's words. A lease etcd no longer knows has a TTL of -1.
                    Err(etcd_client::Error::LeaseKeepAliveError(e)) => {
                        let left = l.time_to_live(lease, None).await?;
                        return if left.ttl() <= 0 {
                            Ok(None)
                        } else {
                            Err(etcd_client::Error::LeaseKeepAliveError(e))
                        };
                    }
                    Err(e) => return Err(e),
                };
                keeper.keep_alive().await?;
                stream.message().await.map(|m| m.map(|r| r.ttl()))
            };
            match tokio::time::timeout(within, renew).await {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("lease renewal not answered within {within:?}"),
                ))),
            }
        });
        match resp {
            Ok(ttl) => Ok(ttl.is_some_and(|ttl| ttl > 0)),
            // Expired or revoked: not an error of the store, an answer.
            Err(StoreError::LeaseGone(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ends a lease now (its keys are deleted).
    pub fn revoke(&self, lease: i64) -> Result<()> {
        let mut l = self.lease.clone();
        self.run(async move { l.revoke(lease).await }).map(|_| ())
    }

    /// Takes `name` (under the prefix) for `value`, bound to `lease`, unless someone holds it.
    /// Returns who holds it afterwards, and whether that is us.
    pub fn acquire(&self, name: &str, value: &str, lease: i64) -> Result<(String, bool)> {
        let k = format!("{}{name}", self.prefix);
        let mut kv = self.kv.clone();
        let v = value.to_string();
        let resp = self.run(async move {
            let txn = Txn::new()
                .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(k.clone(), v, Some(PutOptions::new().with_lease(lease)))])
                .or_else([TxnOp::get(k, None)]);
            kv.txn(txn).await
        })?;
        if resp.succeeded() {
            return Ok((value.to_string(), true));
        }
        let (holder, their_lease) = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
                }
                _ => None,
            })
            .unwrap_or_default();
        // Ours only if bound to this lease (an earlier run of ours may still hold it).
        Ok((holder, their_lease == lease))
    }

    /// Runs an idempotent request (a read, or writes of given values), again and again while
    /// etcd cannot answer (a member down, a leader being elected), until [`DEADLINE`].
    fn run_retrying<T: Send + 'static, F>(&self, make: impl Fn() -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    {
        let t = std::time::Instant::now();
        loop {
            match self.run(make()) {
                Err(StoreError::Backend(m)) if t.elapsed() < DEADLINE => {
                    tracing::debug!("etcd request failed, retrying: {m}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }
}

/// Runs `f` on the etcd runtime and waits for it, at most [`DEADLINE`].
fn call<T: Send + 'static>(
    jobs: &tokio::sync::mpsc::UnboundedSender<Job>,
    endpoints: &str,
    f: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    jobs.send(Box::pin(async move {
        let _ = tx.send(f.await);
    }))
    .map_err(|_| StoreError::Backend(format!("etcd {endpoints}: the client has stopped")))?;
    // On a multi-threaded tokio runtime, let it run its other tasks elsewhere while this
    // thread waits (a slow etcd must not stall the controller's HTTP server).
    let wait = || rx.recv_timeout(DEADLINE);
    let got = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    };
    match got {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(endpoints, e)),
        Err(_) => Err(StoreError::Backend(format!("etcd {endpoints} did not answer within {DEADLINE:?}"))),
    }
}

/// What an etcd error means to a caller, by its gRPC status code: a lease that is gone, a
/// request etcd refuses as such (e.g. more operations in one transaction than it allows), or
/// a failure worth trying again.
fn classify(endpoints: &str, e: etcd_client::Error) -> StoreError {
    let m = format!("etcd {endpoints}: {e}");
    match &e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::NotFound => StoreError::LeaseGone(m),
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => {
                StoreError::Refused(m)
            }
            _ => StoreError::Backend(m),
        },
        _ => StoreError::Backend(m),
    }
}

impl Store for EtcdStore {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (kv, k) = (self.kv.clone(), self.key(table, key));
        let resp = self.run_retrying(|| {
            let (mut kv, k) = (kv.clone(), k.clone());
            async move { kv.get(k, None).await }
        })?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn scan(&self, table: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let (kv, k) = (self.kv.clone(), self.key(table, prefix));
        let strip = self.key(table, "").len();
        let resp = self.run_retrying(|| {
            let (mut kv, k) = (kv.clone(), k.clone());
            async move { kv.get(k, Some(GetOptions::new().with_prefix())).await }
        })?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = std::str::from_utf8(&kv.key()[strip..])
                    .map_err(|e| StoreError::Backend(format!("etcd key in {table} is not UTF-8: {e}")))?;
                Ok((key.to_string(), kv.value().to_vec()))
            })
            .collect()
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let n = ops.len();
        let txn_ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { table, key, value } => TxnOp::put(self.key(&table, &key), value, None),
                Op::Delete { table, key } => TxnOp::delete(self.key(&table, &key), None),
            })
            .collect();
        let cond = self.write_condition()?;
        let kv = self.kv.clone();
        let resp = self
            .run_retrying(|| {
                let (mut kv, ops, cond) = (kv.clone(), txn_ops.clone(), cond.clone());
                async move {
                    let txn = match cond {
                        Some((k, lease)) => Txn::new().when([Compare::lease(k, CompareOp::Equal, lease)]),
                        None => Txn::new(),
                    };
                    kv.txn(txn.and_then(ops)).await
                }
            })
            .map_err(|e| match e {
                StoreError::Refused(m) => StoreError::Refused(format!(
                    "{m}: a batch of {n} writes is one transaction; start etcd with --max-txn-ops {} or more",
                    n.next_power_of_two()
                )),
                e => e,
            })?;
        if !resp.succeeded() {
            return Err(StoreError::NotLeader("another controller holds the leader key".into()));
        }
        Ok(())
    }

    fn compare_and_swap(&self, table: &str, key: &str, expected: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool> {
        let k = self.key(table, key);
        let guard = match expected {
            Some(v) => Compare::value(k.clone(), CompareOp::Equal, v.to_vec()),
            None => Compare::version(k.clone(), CompareOp::Equal, 0),
        };
        let op = match new {
            Some(v) => TxnOp::put(k, v, None),
            None => TxnOp::delete(k, None),
        };
        let cond = self.write_condition()?;
        let mut kv = self.kv.clone();
        let mut when = vec![guard];
        let mut check = vec![];
        if let Some((leader, lease)) = &cond {
            when.push(Compare::lease(leader.clone(), CompareOp::Equal, *lease));
            check.push(TxnOp::get(leader.clone(), None));
        }
        let resp = self.run(async move { kv.txn(Txn::new().when(when).and_then([op]).or_else(check)).await })?;
        if resp.succeeded() {
            return Ok(true);
        }
        // Refused: because the value differs, or because this controller no longer leads?
        if let Some((_, lease)) = cond {
            let holder_lease = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.lease()).unwrap_or(0)),
                _ => None,
            });
            if holder_lease != Some(lease) {
                return Err(StoreError::NotLeader("another controller holds the leader key".into()));
            }
        }
        Ok(false)
    }

    fn tables(&self) -> Result<Vec<String>> {
        let (mut kv, p) = (self.kv.clone(), self.prefix.clone());
        let strip = self.prefix.len();
        let resp = self.run(async move { kv.get(p, Some(GetOptions::new().with_prefix().with_keys_only())).await })?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| std::str::from_utf8(&kv.key()[strip..]).ok()?.split_once('/').map(|(t, _)| t.to_string()))
            .collect();
        names.dedup();
        Ok(names)
    }
}
