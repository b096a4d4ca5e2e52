//! The command line: `corral-sim --trace DIR [--policy NAME] [--param X] [--mix FILE.toml]
//! [--output table|json]`. [`Args`] is a `clap::Args`, so the main CLI can mount it as a
//! subcommand (`Sim(corral_sim::cli::Args)`) and call [`main`].

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use corral_sched::drs::PolicySpec;

use crate::engine::{simulate, Options, Report};
use crate::mix::Mix;
use crate::trace;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Replay a utilisation trace through Corral's scheduler core and report energy, SLA and
/// migrations (Beloglazov & Buyya 2012 metrics).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Trace directory: one file per VM, one CPU utilisation percentage (0-100) per line, one
    /// line per interval (288 lines = 24 h of 5-minute intervals).
    #[arg(long, value_name = "DIR")]
    pub trace: PathBuf,
    /// Policy: `corral` (default), or DETECTOR-SELECTION[-PARAM] with DETECTOR thr, mad, iqr,
    /// lr or lrr and SELECTION mmt, mc, rs or mu (e.g. lr-mmt-1.2, thr-mmt-0.8, mad-mc-2.5).
    #[arg(long, default_value = "corral")]
    pub policy: String,
    /// The policy's parameter (threshold, safety parameter, or corral's target utilisation),
    /// replacing the one in its name.
    #[arg(long, value_name = "X")]
    pub param: Option<f64>,
    /// Host and VM mix (TOML); default: the standard 800-host experiment.
    #[arg(long, value_name = "FILE.toml")]
    pub mix: Option<PathBuf>,
    /// `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Seed of the random choices (random VM selection).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep VMs whose demand drops to zero (CloudSim removes them for good; so does the
    /// default, to match the published numbers).
    #[arg(long)]
    pub keep_idle_vms: bool,
    /// Lines per trace file (default: 24 h of intervals).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Include per-interval series (active hosts, power, migrations) in the JSON output.
    #[arg(long)]
    pub series: bool,
}

/// Runs the simulation `args` describe.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let policy = PolicySpec::parse(&args.policy, args.param).context("--policy/--param")?;
    let mix = match &args.mix {
        Some(p) => Mix::from_toml(p)?,
        None => Mix::standard(),
    };
    let samples = args.samples.unwrap_or((86_400.0 / mix.interval_s).round() as usize);
    let trace = trace::read_dir(&args.trace, samples, mix.interval_s)?;
    let opts = Options {
        policy,
        seed: args.seed,
        remove_idle_vms: !args.keep_idle_vms,
        series: args.series,
        ..Options::default()
    };
    Ok(simulate(&trace, &mix, &opts)?)
}

/// Formats a report.
pub fn render(r: &Report, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(r)? + "\n",
        Output::Table => {
            let mut s = String::new();
            let rows: Vec<(&str, String)> = vec![
                ("policy", r.policy.clone()),
                ("trace", format!("{} ({} VMs, {} hosts, {} intervals)", r.trace, r.vms, r.hosts, r.intervals)),
                ("energy", format!("{:.2} kWh", r.energy_kwh)),
                ("SLATAH", format!("{:.2}%", r.slatah * 100.0)),
                ("PDM", format!("{:.3}%", r.pdm * 100.0)),
                ("SLAV", format!("{:.5}%", r.slav * 100.0)),
                ("ESV", format!("{:.5}", r.esv)),
                (
                    "migrations",
                    format!(
                        "{} ({} off overloaded hosts, {} consolidating; {} placements superseded in-round)",
                        r.migrations, r.migrations_overload, r.migrations_consolidate, r.superseded_placements
                    ),
                ),
                ("active hosts", format!("{:.1} mean, {} max", r.active_hosts_mean, r.active_hosts_max)),
                ("policy time", format!("{:.2} ms/interval mean, {:.2} ms max", r.policy_ms_mean, r.policy_ms_max)),
                ("wakes / standbys", format!("{} / {}", r.wakes, r.standbys)),
                ("VMs ended (zero demand)", r.vms_removed.to_string()),
            ];
            for (k, v) in rows {
                let _ = writeln!(s, "{k:<24} {v}");
            }
            s
        }
    })
}

/// Runs and prints: the whole `corral sim` command.
pub fn main(args: Args) -> anyhow::Result<()> {
    let report = run(&args)?;
    print!("{}", render(&report, args.output)?);
    Ok(())
}
