//! `corral drs`: the controller's balancing and consolidation loop — its settings, the plan it
//! would carry out now, and the rounds it recorded.

use anyhow::Result;
use clap::Subcommand;
use corral_api::drs::{DrsMode, DrsRound, DrsSettings, DrsSettingsPatch, DrsStatus};

use crate::client::Client;
use crate::output::table;

#[derive(Debug, Subcommand)]
pub enum DrsCmd {
    /// Settings, hosts on and in standby, and the latest round.
    Status,
    /// What a round would do now: which VM, from where, to where, why, expected gain. Nothing
    /// is done.
    Plan,
    /// Rounds that planned something, oldest first, with what was done.
    History {
        /// The most recent rounds to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Change the settings (fields left out keep their value).
    Set {
        /// off: no rounds; advise: plan and record only; auto: carry the plans out.
        #[arg(long)]
        mode: Option<DrsMode>,
        /// Time between rounds, e.g. 60s, 5m.
        #[arg(long, value_parser = parse_seconds)]
        interval: Option<f64>,
        /// Policy: corral (default) or a reference heuristic (lr-mmt, thr-mmt, mad-mc, ...).
        #[arg(long)]
        policy: Option<String>,
        /// The policy's parameter (a negative value clears it).
        #[arg(long, allow_hyphen_values = true)]
        param: Option<f64>,
        /// corral policy: fraction of a host's CPU placement may fill (0..1].
        #[arg(long)]
        target: Option<f64>,
        /// corral policy: fraction of a host's CPU above which it is relieved (0..1].
        #[arg(long)]
        high: Option<f64>,
        /// Live migrations one round may start.
        #[arg(long)]
        max_migrations: Option<usize>,
        /// Hosts never put in standby (comma-separated; empty for none).
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        keep_on: Option<Vec<String>>,
    },
}

/// `60`, `60s`, `5m`, `1h` → seconds.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        _ => (t, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .map(|x| x * mult)
        .ok_or_else(|| format!("invalid interval {s:?}: use e.g. 30s, 5m or 1h"))
}

fn settings(s: &DrsSettings) {
    println!("mode:           {}", s.mode);
    println!("interval:       {} s", s.interval_s);
    let param = s.param.map(|p| format!(" (param {p})")).unwrap_or_default();
    println!("policy:         {}{param}", s.policy);
    if s.target.is_some() || s.high.is_some() {
        let f = |x: Option<f64>| x.map_or("default".into(), |v| format!("{:.0}%", v * 100.0));
        println!("thresholds:     target {}, high {}", f(s.target), f(s.high));
    }
    println!("max migrations: {} per round", s.max_migrations);
    let keep = if s.keep_on.is_empty() { "-".to_string() } else { s.keep_on.join(", ") };
    println!("keep on:        {keep}");
}

fn round(r: &DrsRound) {
    let when = chrono_like(r.ms);
    let what = if r.executed { "carried out" } else { "planned" };
    println!(
        "{when}  {} ({}), {what}, planned in {:.1} ms, expected saving {:.0} W",
        r.mode, r.policy, r.planning_ms, r.expected_saving_watts
    );
    if !r.overloaded.is_empty() {
        println!("  overloaded: {}", r.overloaded.join(", "));
    }
    if !r.wake.is_empty() {
        println!("  wake:       {}", r.wake.join(", "));
    }
    if !r.moves.is_empty() {
        table(
            &["  VM", "FROM", "TO", "REASON", "WHY", "EXPECTED", "OUTCOME"],
            r.moves
                .iter()
                .map(|m| {
                    vec![
                        format!("  {}", m.vm),
                        m.from.clone(),
                        m.to.clone(),
                        m.reason.to_string(),
                        m.why.clone(),
                        format!("{:.1} s", m.expected_s),
                        m.outcome.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        );
    }
    if !r.standby.is_empty() {
        println!("  standby:    {}", r.standby.join(", "));
    }
    for n in &r.notes {
        println!("  note:       {n}");
    }
}

/// `HH:MM:SS` UTC of a millisecond timestamp.
fn chrono_like(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

pub async fn drs(cmd: DrsCmd, c: &Client, json: bool) -> Result<()> {
    let show = |v: &dyn show::Show| v.show(json);
    match cmd {
        DrsCmd::Status => {
            let s: DrsStatus = c.get("/v1/drs").await?;
            show(&s)?;
        }
        DrsCmd::Plan => {
            let r: DrsRound = c.get("/v1/drs/plan").await?;
            show(&r)?;
        }
        DrsCmd::History { limit } => {
            let rs: Vec<DrsRound> = c.get(&format!("/v1/drs/history?limit={limit}")).await?;
            show(&rs)?;
        }
        DrsCmd::Set { mode, interval, policy, param, target, high, max_migrations, keep_on } => {
            let keep_on = keep_on.map(|k| k.into_iter().filter(|h| !h.is_empty()).collect());
            let p =
                DrsSettingsPatch { mode, interval_s: interval, policy, param, target, high, max_migrations, keep_on };
            let s: DrsSettings = c.patch("/v1/drs", &p).await?;
            show(&s)?;
        }
    }
    Ok(())
}

/// Printing each answer as a table or as JSON.
mod show {
    use super::*;

    pub trait Show {
        fn show(&self, json: bool) -> Result<()>;
    }

    fn as_json<T: serde::Serialize>(v: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    impl Show for DrsStatus {
        fn show(&self, json: bool) -> Result<()> {
            if json {
                return as_json(self);
            }
            settings(&self.settings);
            println!("hosts on:       {}", self.hosts_on.join(", "));
            let sb = if self.hosts_standby.is_empty() { "-".to_string() } else { self.hosts_standby.join(", ") };
            println!("standby:        {sb}");
            println!("migrations:     {} running", self.migrations_running);
            println!("rounds:         {} recorded", self.rounds);
            if let Some(r) = &self.last {
                println!("last round:");
                round(r);
            }
            Ok(())
        }
    }

    impl Show for DrsRound {
        fn show(&self, json: bool) -> Result<()> {
            if json {
                return as_json(self);
            }
            if self.moves.is_empty() && self.wake.is_empty() && self.standby.is_empty() {
                println!("nothing to do: the pool is balanced and no host can be emptied ({})", self.policy);
                return Ok(());
            }
            round(self);
            Ok(())
        }
    }

    impl Show for Vec<DrsRound> {
        fn show(&self, json: bool) -> Result<()> {
            if json {
                return as_json(self);
            }
            if self.is_empty() {
                println!("no rounds yet planned anything");
            }
            for r in self {
                round(r);
            }
            Ok(())
        }
    }

    impl Show for DrsSettings {
        fn show(&self, json: bool) -> Result<()> {
            if json {
                return as_json(self);
            }
            settings(self);
            Ok(())
        }
    }
}
