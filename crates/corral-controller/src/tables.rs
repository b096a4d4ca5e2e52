//! The store's tables, in one place, each a typed handle ([`Table`]) that reads and writes
//! only its own value type. Every table maps a string key to a JSON value:
//!
//! | table        | key                            | value                                                   |
//! |--------------|--------------------------------|---------------------------------------------------------|
//! | `vms`        | VM name                        | [`Vm`](corral_api::Vm): desired and last reported state |
//! | `hosts`      | host name                      | [`Register`](corral_api::agent::Register): what its agent registered |
//! | `host_flags` | host name                      | [`HostFlags`](crate::service::HostFlags): operator and HA flags |
//! | `events`     | `<ms:013>-<uuid>`              | [`Event`](corral_api::cluster::Event)                   |
//! | `profiles`   | profile name                   | [`Profile`](corral_api::cluster::Profile)               |
//! | `clusters`   | cluster name                   | [`Cluster`](corral_api::cluster::Cluster)               |
//! | `ipam`       | IPv4 address, without prefix   | the name of the VM holding it (a JSON string)           |
//! | `tunnels`    | `<cluster>/<host>`             | the address (with prefix) the host uses on the cluster's network for tunnels |
//! | `ops`        | `op-<ms:013>-<hex8>`           | [`Operation`](corral_api::cluster::Operation)           |
//! | `migrations` | `mig-<ms:013>-<hex6>`          | [`Migration`](corral_api::migration::Migration)         |
//! | `drs`        | `settings`                     | [`DrsSettings`](corral_api::drs::DrsSettings)           |
//! | `drs_rounds` | `<ms:013>-<hex6>`              | [`DrsRound`](corral_api::drs::DrsRound)                 |

use corral_api::agent::Register;
use corral_api::cluster::{Cluster, Event, Operation, Profile};
use corral_api::drs::{DrsRound, DrsSettings};
use corral_api::migration::Migration;
use corral_api::types::Name;
use corral_api::Vm;
use corral_store::Table;

use crate::service::HostFlags;

/// VM records: VM name -> `Vm`.
pub(crate) const VMS: Table<Vm> = Table::new("vms");
/// Registered hosts: host name -> `Register`.
pub(crate) const HOSTS: Table<Register> = Table::new("hosts");
/// Operator and HA flags of hosts: host name -> `HostFlags`.
pub(crate) const HOST_FLAGS: Table<HostFlags> = Table::new("host_flags");
/// The event log: time-ordered key -> `Event`.
pub(crate) const EVENTS: Table<Event> = Table::new("events");
/// Profiles: profile name -> `Profile`.
pub(crate) const PROFILES: Table<Profile> = Table::new("profiles");
/// Virtual clusters: cluster name -> `Cluster`.
pub(crate) const CLUSTERS: Table<Cluster> = Table::new("clusters");
/// Address management: address -> the name of the VM holding it.
pub(crate) const IPAM: Table<Name> = Table::new("ipam");
/// Tunnel addresses: `<cluster>/<host>` -> the address that host uses on the cluster's
/// network to reach members (`vm ssh`, `vm port-forward`); also held in `ipam`.
pub(crate) const TUNNELS: Table<corral_api::types::Ipv4Cidr> = Table::new("tunnels");
/// Long operations: operation id -> `Operation`.
pub(crate) const OPS: Table<Operation> = Table::new("ops");
/// Live migrations and cold moves: migration id -> `Migration`.
pub(crate) const MIGRATIONS: Table<Migration> = Table::new("migrations");
/// DRS settings: `settings` -> `DrsSettings`.
pub(crate) const DRS: Table<DrsSettings> = Table::new("drs");
/// DRS round history: time-ordered key -> `DrsRound`.
pub(crate) const DRS_ROUNDS: Table<DrsRound> = Table::new("drs_rounds");
