//! A daemon's background loops, started and stopped in one place.
//!
//! The controller and the agent each run a handful of loops beside their REST server (the
//! reconciler, DRS, HA; heartbeats, monitoring, fencing). A [`Runner`] starts them by name,
//! hands each a [`Stop`] to watch, and on shutdown (SIGTERM or SIGINT, see [`Stop::on_signal`])
//! lets every loop finish the round it is in, for at most a grace period, before it aborts the
//! ones still busy and names them. A loop is never stopped in the middle of a round unless that
//! round outlives the grace period; state written before acting makes even that safe.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Tells loops to end. Cheap to clone; every clone sees the same signal.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// True once shutdown has begun.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it has).
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        // An error means the runner is gone, which is a shutdown too.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Sleeps for `d` unless shutdown begins first; true if the loop should go on.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stopped() => false,
            _ = tokio::time::sleep(d) => !self.is_stopped(),
        }
    }
}

/// Resolves when the process is asked to end (SIGTERM or SIGINT).
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process ends the default way, at once.
        _ => std::future::pending().await,
    }
}

/// The loops of one daemon.
#[derive(Debug)]
pub struct Runner {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    /// A runner with no loops yet.
    pub fn new() -> Self {
        Self { stop: watch::channel(false).0, tasks: JoinSet::new(), names: Default::default() }
    }

    /// What loops watch to know when to end.
    pub fn stop_signal(&self) -> Stop {
        Stop(self.stop.subscribe())
    }

    /// Begins shutdown: every loop's [`Stop`] fires. [`Runner::shutdown`] then waits for them.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Starts a loop of its own making: `run` gets the [`Stop`] to watch and returns when it
    /// fires.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, run: F)
    where
        F: FnOnce(Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h = self.tasks.spawn(run(self.stop_signal()));
        self.names.insert(h.id(), name);
    }

    /// Runs `tick` every `period`, the first time after `delay`, until shutdown. A round is
    /// not cut short by shutdown; the next one does not start.
    pub fn every<F, Fut>(&mut self, name: &'static str, delay: Duration, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(name, move |stop| async move {
            if !stop.sleep(delay).await {
                return;
            }
            loop {
                tick().await;
                if !stop.sleep(period).await {
                    return;
                }
            }
        });
    }

    /// Serves `app` on `listener` beside the loops until the process is asked to end (or the
    /// server fails), then stops the server and the loops, each within `grace`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        grace: Duration,
    ) -> std::io::Result<()> {
        let mut server = tokio::spawn(serve_until(listener, app, self.stop_signal(), grace));
        let served = tokio::select! {
            r = &mut server => r,
            _ = termination() => {
                tracing::info!("asked to end: stopping the server and the background loops");
                self.stop();
                server.await
            }
        };
        self.shutdown(grace).await;
        served.map_err(std::io::Error::other)?
    }

    /// Stops every loop: signals them, waits up to `grace` for them to end, then aborts the
    /// rest. Returns the names of the loops that had to be aborted (or ended by a panic).
    pub async fn shutdown(mut self, grace: Duration) -> Vec<&'static str> {
        self.stop();
        let mut unclean = Vec::new();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(Ok((id, ())))) => {
                    self.names.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    if let Some(n) = self.names.remove(&e.id()) {
                        tracing::warn!("background loop {n} ended abnormally: {e}");
                        unclean.push(n);
                    }
                }
                Err(_) => {
                    self.tasks.abort_all();
                    let mut late: Vec<&'static str> = self.names.drain().map(|(_, n)| n).collect();
                    late.sort_unstable();
                    for n in &late {
                        tracing::warn!("background loop {n} was still busy {grace:?} after shutdown began: aborted");
                    }
                    unclean.extend(late);
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        unclean
    }
}

/// Serves `app` on `listener` until `stop` fires, then lets requests in flight finish for at
/// most `grace` (a long transfer or console stream is cut off after it).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: Stop,
    grace: Duration,
) -> std::io::Result<()> {
    let drain = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { drain.stopped().await });
    tokio::select! {
        r = server => r,
        _ = async { stop.stopped().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still open {grace:?} after shutdown began: ending them");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn loops_tick_until_shutdown_and_a_round_in_progress_is_finished() {
        let mut r = Runner::new();
        let ticks = Arc::new(AtomicU32::new(0));
        let (started, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
        let finished = Arc::new(AtomicU32::new(0));
        {
            let (ticks, finished) = (ticks.clone(), finished.clone());
            r.every("slow", Duration::ZERO, Duration::from_millis(5), move || {
                let (ticks, finished, started) = (ticks.clone(), finished.clone(), started.clone());
                async move {
                    if ticks.fetch_add(1, Ordering::SeqCst) == 2 {
                        let _ = started.send(()).await;
                        // A round that takes a while: shutdown must let it end.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        started_rx.recv().await.expect("the third round starts");
        let aborted = r.shutdown(Duration::from_secs(10)).await;
        assert!(aborted.is_empty(), "{aborted:?}");
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the round in progress ran to its end");
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "no round starts after shutdown began");
    }

    #[tokio::test]
    async fn a_loop_that_ignores_the_stop_is_aborted_after_the_grace_period_and_named() {
        let mut r = Runner::new();
        r.spawn("polite", |stop| async move { stop.stopped().await });
        r.spawn("stubborn", |_stop| async move { std::future::pending::<()>().await });
        let t = std::time::Instant::now();
        let aborted = r.shutdown(Duration::from_millis(100)).await;
        assert_eq!(aborted, ["stubborn"]);
        assert!(t.elapsed() < Duration::from_secs(5), "shutdown is bounded: {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_delayed_loop_stopped_before_its_first_round_never_runs() {
        let mut r = Runner::new();
        let ran = Arc::new(AtomicU32::new(0));
        let n = ran.clone();
        r.every("later", Duration::from_secs(3600), Duration::from_secs(1), move || {
            let n = n.clone();
            async move {
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert!(r.shutdown(Duration::from_secs(5)).await.is_empty());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_server_stops_taking_requests_when_stopped() {
        let r = Runner::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(serve_until(listener, app, r.stop_signal(), Duration::from_secs(5)));
        let get = || async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        assert!(get().await.expect("served").ends_with("ok"));
        r.stop();
        server.await.expect("joins").expect("the server ends cleanly");
        assert!(get().await.is_err(), "nothing listens any more");
    }
}
