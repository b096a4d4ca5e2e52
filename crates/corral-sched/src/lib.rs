//! Corral's scheduler core: given hosts, their capacity and what is already placed on them, it
//! decides where VMs go. It does no I/O and keeps no state, so the controller and the
//! trace-driven simulator run exactly the same code, and every decision is deterministic for
//! the same input (ties break on host name).

pub mod place;

pub use place::{place_one, HostView, PlaceError, Request};
