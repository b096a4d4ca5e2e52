//! `corral-sim`: replay a utilisation trace through Corral's scheduler core (see
//! [`corral_sim::cli`]).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "corral-sim", version, about = "Replay a utilisation trace through Corral's scheduler core")]
struct Cli {
    #[command(flatten)]
    args: corral_sim::cli::Args,
}

fn main() -> anyhow::Result<()> {
    corral_sim::cli::main(Cli::parse().args)
}
