//! The lab (`corral lab up|down|status`): a Corral deployment on one machine. Each host is a
//! Linux network namespace joined to an underlay bridge (198.18.<index>.0/24) by `eth0`, running
//! the real agent; the controller runs beside the bridge. Each host also has `eth1` on a second,
//! provider bridge (`crl<index>pv`), for bridged networks, and every host's agent uses
//! `<dir>/shared` as its shared storage pool (as an NFS mount would be). The same binaries run
//! a real deployment.
//!
//! Every resource is recorded in the lab's state file *before* it is made, so `down` removes
//! everything even after a crash half-way through `up`. Processes are ended by the PIDs the lab
//! recorded (checked against their command line), never by name.
//!
//! One job per file: `state` (the state file and the options), `setup` (`up`), `netns` (bridges,
//! namespaces and veth pairs), `procs` (starting and ending processes), `health` (waiting for
//! the daemons, `status`), `faults` (kill, partition, heal, power) and `teardown` (`down`).

mod faults;
mod health;
mod netns;
mod procs;
mod setup;
mod state;
mod teardown;

pub use faults::{fault, power, Fault};
pub use health::status;
pub use setup::up;
pub use state::{LabController, LabEtcd, LabHost, LabState, UpOptions};
pub use teardown::down;
