//! `corral-load`: a bounded load generator for Corral's REST API, used by `bench/clusters.sh`.
//!
//! It sends exactly `--requests` requests, `--concurrency` at a time, then prints one JSON
//! object with the throughput and the latency percentiles and exits. It only talks to a
//! controller on this machine: the URL must name a loopback address or a lab underlay address
//! (198.18.0.0/15, the range `corral lab` uses).
//!
//! Modes:
//! - `create`: `POST /v1/vms` of inactive VMs (`"start": false`) named `<prefix>-<i>`, with `i`
//!   from `--first` on, each name used once. A VM is defined and its disk made, nothing boots.
//! - `list`: `GET /v1/vms`.
//!
//! Latency percentiles are over the successful (2xx) requests; failures are counted, with
//! their status codes and the first few messages.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Create,
    List,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Create => "create",
            Mode::List => "list",
        }
    }
}

/// Bounded load generator for Corral's REST API (local controllers only).
#[derive(Debug, Parser)]
#[command(name = "corral-load", version)]
struct Args {
    /// Controller URL, e.g. http://198.18.160.1:7700 (loopback or 198.18.0.0/15 only)
    #[arg(long, env = "CORRAL_URL")]
    url: String,
    /// API token (sent as `Authorization: Bearer`)
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Total requests to send (1..=100000)
    #[arg(long)]
    requests: usize,
    /// Requests in flight at a time (1..=256)
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// create: VM names are <prefix>-<i>
    #[arg(long, default_value = "b")]
    prefix: String,
    /// create: the first i
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// create: template of the VMs
    #[arg(long, default_value = "base")]
    template: String,
    /// create: memory of each VM, MiB
    #[arg(long, default_value_t = 64)]
    memory_mib: u64,
    /// create: vCPUs of each VM
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Timeout of one request, seconds
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Stop sending new requests after this many seconds (the run then reports what it did)
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// Also write one line per request to this file: `i start_ms latency_ms status`, where i
    /// is the request's number (the VM's, for create) and start_ms is from the run's start
    #[arg(long)]
    raw: Option<std::path::PathBuf>,
    /// Also record the CPU time of this process (e.g. the controller) every --watch-every
    /// completed requests: how its cost per request changes as the run goes on
    #[arg(long)]
    watch_pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    watch_every: usize,
}

/// The URL must point at this machine: a loopback address or a lab underlay address.
fn check_local(url: &reqwest::Url) -> Result<()> {
    let host = url.host_str().context("the URL has no host")?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("the URL host {host:?} must be an IP address (loopback or 198.18.0.0/15)"))?;
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || (v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !ok {
        bail!("refusing {ip}: corral-load only loads controllers on this machine (loopback or a lab's 198.18.0.0/15)");
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Tally {
    /// Latencies of successful requests, microseconds.
    ok_us: Vec<u64>,
    errors: usize,
    statuses: BTreeMap<String, usize>,
    samples: Vec<String>,
    bytes: u64,
    /// (i, start µs since the run's start, latency µs, status)
    raw: Vec<(usize, u64, u64, String)>,
    /// (requests completed, seconds since the start, CPU seconds of the watched process)
    watch: Vec<(usize, f64, f64)>,
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// CPU time (user + system) a process used so far, seconds (from /proc/PID/stat).
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.requests == 0 || a.requests > 100_000 {
        bail!("--requests must be between 1 and 100000");
    }
    if a.concurrency == 0 || a.concurrency > 256 {
        bail!("--concurrency must be between 1 and 256");
    }
    let base = reqwest::Url::parse(&a.url).with_context(|| format!("invalid --url {:?}", a.url))?;
    check_local(&base)?;
    let endpoint = base.join("/v1/vms").context("cannot build the /v1/vms URL")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(a.timeout))
        .pool_max_idle_per_host(a.concurrency)
        .no_proxy()
        .build()?;

    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let cpu0 = cpu_seconds();
    let watch = a.watch_pid.map(|p| p.to_string());
    let watch0 = match &watch {
        Some(p) => Some(cpu_seconds_of(p).with_context(|| format!("cannot read /proc/{p}/stat"))?),
        None => None,
    };
    let every = a.watch_every.max(1);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (next, tally, client, endpoint) = (next.clone(), tally.clone(), client.clone(), endpoint.clone());
        let token = a.token.clone();
        let watch = watch.clone();
        let (mode, prefix, first, template, memory, vcpus, total) =
            (a.mode, a.prefix.clone(), a.first, a.template.clone(), a.memory_mib, a.vcpus, a.requests);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let mut req = match mode {
                    Mode::Create => client.post(endpoint.clone()).json(&json!({
                        "name": format!("{prefix}-{}", first + i),
                        "template": template,
                        "vcpus": vcpus,
                        "memory_mib": memory,
                        "start": false,
                    })),
                    Mode::List => client.get(endpoint.clone()),
                };
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let t = Instant::now();
                let start_us = t.duration_since(t0).as_micros() as u64;
                let res = match req.send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(body) => Ok((status, body)),
                            Err(e) => Err(format!("reading the body: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let us = t.elapsed().as_micros() as u64;
                let mut g = tally.lock().unwrap_or_else(|p| p.into_inner());
                let code = match &res {
                    Ok((status, _)) => status.as_u16().to_string(),
                    Err(_) => "transport".to_string(),
                };
                g.raw.push((first + i, start_us, us, code));
                if let Some(p) = &watch {
                    let done = g.raw.len();
                    if done % every == 0 || done == total {
                        let cpu = cpu_seconds_of(p).unwrap_or(f64::NAN);
                        g.watch.push((done, t0.elapsed().as_secs_f64(), cpu));
                    }
                }
                match res {
                    Ok((status, body)) => {
                        *g.statuses.entry(status.as_u16().to_string()).or_default() += 1;
                        g.bytes += body.len() as u64;
                        if status.is_success() {
                            g.ok_us.push(us);
                        } else {
                            g.errors += 1;
                            if g.samples.len() < 5 {
                                let msg = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
                                g.samples.push(format!("{status}: {msg}"));
                            }
                        }
                    }
                    Err(e) => {
                        *g.statuses.entry("transport".into()).or_default() += 1;
                        g.errors += 1;
                        if g.samples.len() < 5 {
                            g.samples.push(e);
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.context("a worker task failed")?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let client_cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => json!(round3(b - a)),
        _ => Value::Null,
    };

    // One more list to see how many VMs the controller holds at the end (not timed).
    let mut check = client.get(endpoint.clone());
    if let Some(t) = &a.token {
        check = check.bearer_auth(t);
    }
    let vms_after = match check.send().await {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().and_then(|v| v.as_array().map(|x| x.len())),
        _ => None,
    };

    let mut g = tally.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = &a.raw {
        g.raw.sort_unstable();
        let mut text = String::new();
        for (i, start, us, code) in &g.raw {
            text.push_str(&format!("{i} {:.3} {:.3} {code}\n", *start as f64 / 1000.0, *us as f64 / 1000.0));
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    g.ok_us.sort_unstable();
    let ok = g.ok_us.len();
    let sent = ok + g.errors;
    let pct = |p: f64| percentile(&g.ok_us, p).map(round3);
    let out = json!({
        "mode": a.mode.as_str(),
        "url": endpoint.as_str(),
        "requests": a.requests,
        "sent": sent,
        "concurrency": a.concurrency,
        "ok": ok,
        "errors": g.errors,
        "statuses": g.statuses,
        "error_samples": g.samples,
        "seconds": round3(secs),
        "rps": if secs > 0.0 { round3(ok as f64 / secs) } else { 0.0 },
        "p50_ms": pct(50.0),
        "p90_ms": pct(90.0),
        "p99_ms": pct(99.0),
        "max_ms": g.ok_us.last().map(|x| round3(*x as f64 / 1000.0)),
        "min_ms": g.ok_us.first().map(|x| round3(*x as f64 / 1000.0)),
        "mean_ms": if ok > 0 { Some(round3(g.ok_us.iter().sum::<u64>() as f64 / ok as f64 / 1000.0)) } else { None },
        "response_bytes_mean": if sent > 0 { g.bytes / sent as u64 } else { 0 },
        "client_cpu_s": client_cpu,
        "vms_after": vms_after,
        "prefix": if a.mode == Mode::Create { json!(a.prefix) } else { Value::Null },
        "stopped_by_deadline": sent < a.requests,
        "watch": match (a.watch_pid, watch0) {
            (Some(pid), Some(c0)) => {
                let mut rows = Vec::new();
                let (mut prev_done, mut prev_t, mut prev_cpu) = (0usize, 0.0f64, c0);
                for (done, t, cpu) in &g.watch {
                    let n = (done - prev_done).max(1) as f64;
                    rows.push(json!({
                        "requests": format!("{}-{}", prev_done + 1, done),
                        "seconds": round3(t - prev_t),
                        "cpu_s": round3(cpu - prev_cpu),
                        "cpu_ms_per_request": round3((cpu - prev_cpu) * 1000.0 / n),
                        "rps": if t > &prev_t { round3(n / (t - prev_t)) } else { 0.0 },
                    }));
                    (prev_done, prev_t, prev_cpu) = (*done, *t, *cpu);
                }
                json!({"pid": pid, "every": every, "rows": rows})
            }
            _ => Value::Null,
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_urls() {
        let ok = |u: &str| check_local(&reqwest::Url::parse(u).expect("url")).is_ok();
        assert!(ok("http://127.0.0.1:7700"));
        assert!(ok("http://198.18.160.1:7700"));
        assert!(ok("http://198.19.1.1:7700"));
        assert!(ok("http://[::1]:7700"));
        assert!(!ok("http://198.20.0.1:7700"));
        assert!(!ok("http://10.0.0.1:7700"));
        assert!(!ok("http://example.com:7700"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[5000], 99.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
