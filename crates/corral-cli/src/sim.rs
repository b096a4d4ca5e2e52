//! `corral sim`: hands its arguments to the simulator, which parses its own options.

use anyhow::Result;
use clap::Parser;

/// `corral sim`'s own command line.
#[derive(Debug, Parser)]
#[command(name = "corral sim", about = "Replay utilisation traces through the scheduler core's policies")]
struct SimCli {
    #[command(flatten)]
    args: corral_sim::cli::Args,
}

pub fn sim(args: Vec<String>) -> Result<()> {
    // The simulator parses its own options (its --output is its own).
    let argv = std::iter::once("corral sim".to_string()).chain(args);
    match SimCli::try_parse_from(argv) {
        Ok(a) => corral_sim::cli::main(a.args)?,
        Err(e) => e.exit(),
    }
    Ok(())
}
