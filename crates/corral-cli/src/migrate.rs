//! `corral vm migrate`, `corral vm migrations` and `corral host evacuate`: start a live
//! migration and follow its rounds with a progress bar, list the history, empty a host.

use std::time::Duration;

use anyhow::{bail, Result};

use corral_api::migration::{parse_bandwidth, MigrateVm, Migration, MigrationMode, MigrationState};

use crate::client::Client;
use crate::output::{self, table};

/// Parses a duration as written on the command line: `50ms`, `2s`, `1m`, or a bare number of ms.
pub fn parse_ms(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| anyhow::anyhow!("invalid duration {s:?}: write e.g. 50ms, 30s, 2m, 6h or 30d"))?;
    Ok(match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => bail!("invalid duration {s:?}: use the units ms, s, m, h or d"),
    })
}

/// The options of `corral vm migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    pub name: String,
    /// Destination host (default: the scheduler core chooses).
    #[arg(long)]
    pub to: Option<String>,
    /// auto (default: pre-copy, switching to post-copy before it can stall), precopy (QEMU's
    /// defaults; gives up at the budget) or postcopy.
    #[arg(long, default_value = "auto")]
    pub mode: MigrationMode,
    /// Longest acceptable pause at the switch-over, e.g. 50ms.
    #[arg(long)]
    pub max_downtime: Option<String>,
    /// Cap on the memory stream: 1G = 1 Gbit/s, or bytes e.g. 50MiB/s.
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// Time after which the policy acts (auto: post-copy; precopy: give up), e.g. 60s.
    #[arg(long)]
    pub budget: Option<String>,
    /// Cancel the VM's queued or running migration (it stays where it is).
    #[arg(long)]
    pub cancel: bool,
    /// Print the migration's id and return at once.
    #[arg(long)]
    pub no_wait: bool,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// `corral vm migrate`; exit code 1 when the migration did not complete.
pub async fn migrate(a: MigrateArgs, c: &Client, json: bool) -> Result<i32> {
    if a.cancel {
        let m: Migration = c.delete(&format!("/v1/vms/{}/migration", a.name)).await?;
        let m = wait(c, m, true).await?;
        print_one(&m, json)?;
        return Ok(if m.state == MigrationState::Cancelled { 0 } else { 1 });
    }
    let req = MigrateVm {
        to: a.to,
        mode: a.mode,
        max_downtime_ms: a.max_downtime.as_deref().map(parse_ms).transpose()?,
        bandwidth: a.bandwidth.as_deref().map(parse_bandwidth).transpose().map_err(anyhow::Error::msg)?,
        budget_ms: a.budget.as_deref().map(parse_ms).transpose()?,
    };
    let m: Migration = c.post(&format!("/v1/vms/{}/migration", a.name), &req).await?;
    if a.no_wait {
        if json {
            println!("{}", serde_json::to_string_pretty(&m)?);
        } else {
            println!("{}", m.id);
        }
        return Ok(0);
    }
    let m = follow(c, m, json).await?;
    print_one(&m, json)?;
    Ok(if m.state == MigrationState::Completed { 0 } else { 1 })
}

/// Waits for a migration to end, quietly.
async fn wait(c: &Client, mut m: Migration, quiet: bool) -> Result<Migration> {
    while !m.state.is_final() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        m = c.get(&format!("/v1/migrations/{}", m.id)).await?;
        if !quiet {
            eprintln!("{}", progress_line(&m));
        }
    }
    Ok(m)
}

fn progress_line(m: &Migration) -> String {
    match m.state {
        MigrationState::Queued => "queued (host at its migration limit)".into(),
        _ if m.rounds == 0 => format!("disk {} copied", mib(m.disk_bytes)),
        _ => format!(
            "round {}  {} dirty  dirtying {}/s  sending {}/s  {} sent",
            m.rounds,
            mib(m.remaining),
            mib(m.dirty_rate),
            mib(m.transfer_rate),
            mib(m.bytes)
        ),
    }
}

/// Follows a migration with a progress bar (rounds, remaining dirty memory, rates).
async fn follow(c: &Client, m: Migration, json: bool) -> Result<Migration> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(m.memory_bytes.max(1)) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:20} [{bar:24}] {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} → {}", m.source, m.destination));
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut m = m;
    while !m.state.is_final() {
        bar.set_length(m.memory_bytes.max(1));
        bar.set_position(m.memory_bytes.saturating_sub(m.remaining));
        bar.set_message(progress_line(&m));
        tokio::time::sleep(Duration::from_millis(250)).await;
        m = c.get(&format!("/v1/migrations/{}", m.id)).await?;
    }
    bar.finish_and_clear();
    Ok(m)
}

fn print_one(m: &Migration, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    println!("migration:  {} ({})", m.id, m.result);
    println!("vm:         {}  {} → {}", m.vm, m.source, m.destination);
    println!("mode:       {} (memory moved by {})", m.mode.as_str(), m.used_mode.map_or("-", |u| u.as_str()));
    println!(
        "time:       {} ms total, downtime {}",
        m.total_ms,
        m.downtime_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "-".into())
    );
    println!(
        "sent:       {} memory in {} rounds ({:.2}× guest memory), {} disk",
        mib(m.bytes),
        m.rounds,
        m.bytes as f64 / m.memory_bytes.max(1) as f64,
        mib(m.disk_bytes)
    );
    for a in &m.actions {
        println!("policy:     {a}");
    }
    Ok(())
}

/// `corral vm migrations [NAME]`.
pub async fn history(vm: Option<String>, c: &Client, json: bool) -> Result<()> {
    let path = match &vm {
        Some(v) => format!("/v1/migrations?vm={v}"),
        None => "/v1/migrations".to_string(),
    };
    let ms: Vec<Migration> = c.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ms)?);
        return Ok(());
    }
    table(
        &["VM", "SOURCE", "DEST", "MODE", "ROUNDS", "TOTAL", "DOWNTIME", "BYTES", "RESULT"],
        ms.iter()
            .map(|m| {
                vec![
                    m.vm.clone(),
                    m.source.clone(),
                    m.destination.clone(),
                    match &m.used_mode {
                        Some(u) if m.mode == MigrationMode::Auto => format!("auto/{u}"),
                        _ => m.mode.as_str().into(),
                    },
                    m.rounds.to_string(),
                    format!("{} ms", m.total_ms),
                    m.downtime_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "-".into()),
                    mib(m.bytes),
                    if m.state.is_final() { m.result.clone() } else { m.state.to_string() },
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `corral host evacuate NAME`.
pub async fn evacuate(name: &str, no_wait: bool, c: &Client, json: bool) -> Result<i32> {
    let op: corral_api::cluster::Operation = c.post(&format!("/v1/hosts/{name}/evacuate"), &()).await?;
    let code = crate::clusters::start(c, op, no_wait, json).await?;
    if !json && !no_wait {
        let h: corral_api::Host = c.get(&format!("/v1/hosts/{name}")).await?;
        output::host(&h);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_ms("50ms").ok(), Some(50));
        assert_eq!(parse_ms("2s").ok(), Some(2000));
        assert_eq!(parse_ms("1m").ok(), Some(60_000));
        assert_eq!(parse_ms("300").ok(), Some(300));
        assert!(parse_ms("soon").is_err());
        assert_eq!(parse_ms("6h").ok(), Some(6 * 3_600_000));
        assert_eq!(parse_ms("30d").ok(), Some(30 * 86_400_000));
        assert!(parse_ms("5y").is_err());
    }
}
