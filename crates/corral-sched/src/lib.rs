//! Corral's scheduler core: given hosts, their capacity and what is already placed on them, it
//! decides where VMs go. It does no I/O and keeps no state, so the controller and the
//! trace-driven simulator run exactly the same code, and every decision is deterministic for
//! the same input (ties break on host name).
//!
//! [`place_one`] places a single VM; [`place_group`] places a whole virtual cluster at once,
//! all or nothing, spread or packed, with anti-affinity and label constraints. [`drs::plan`]
//! balances load and consolidates: which VMs to live-migrate where, which hosts to wake and
//! which to put in standby. [`check_reserve`] is HA admission control: room to restart the
//! protected VMs of failed hosts. [`converge`] decides when a live migration switches to post-copy.
//! [`rng`] is the seeded generator behind every random choice (and the benchmarks' synthetic pools).

pub mod converge;
pub mod drs;
pub mod group;
pub mod place;
pub mod reserve;
pub mod rng;
mod slot;

pub use group::{
    place_group, GroupError, GroupRequest, Overcommit, ParsePolicyError, Placement, Policy, Shortfall, VmReq,
};
pub use place::{place_one, HostView, PlaceError, Request};
pub use reserve::{check_reserve, ReserveShort};
