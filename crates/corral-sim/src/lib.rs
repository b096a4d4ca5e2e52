//! `corral-sim`: a trace-driven simulator of a data centre run by Corral's scheduler core.
//!
//! It replays CPU utilisation traces in the PlanetLab format ([`trace`]) on a set of hosts and
//! VM types ([`mix`]), calls [`corral_sched::drs::plan`] — the very function the live
//! controller calls — once per interval, carries out the plan (migrations take time and cost
//! performance, emptied hosts go to standby) and meters energy, SLA violations and migrations
//! as Beloglazov & Buyya (2012) and CloudSim 3.0.3 define them ([`engine`]). [`cli`] holds the
//! command line, ready to be mounted as `corral sim`.

pub mod cli;
pub mod engine;
pub mod mix;
pub mod trace;

pub use engine::{simulate, Options, Report, Series, SimError};
pub use mix::Mix;
pub use trace::Trace;
