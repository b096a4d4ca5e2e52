//! CloudSim 3.0.3's time-shared CPU allocation on one host
//! (`VmSchedulerTimeSharedOverSubscription`), the one copy that both the reference DRS policies
//! (what a host has handed out, for power-aware placement) and the simulator (what each VM
//! gets, for energy and SLA metering) use, so that the two cannot drift apart.
//!
//! Every vCPU of a VM asks for its share of the VM's demand, capped at one core's capacity. A
//! VM migrating onto the host counts 10% of that, a VM migrating off it is granted 90%. If the
//! requests fit in the host's capacity, taken in list order, each vCPU gets what it asked for;
//! once one does not fit, the host is oversubscribed and every vCPU gets its request scaled by
//! capacity / total request, rounded down to a whole unit (CloudSim's
//! `redistributeMipsDueToOverSubscription`). [`utilization`] turns what a host uses into the
//! utilisation CloudSim reports for it.

/// Where a VM stands in a live migration, seen from the host being computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transit {
    /// Not migrating.
    Resident,
    /// Migrating off this host: granted 90% of its share.
    Leaving,
    /// Migrating onto this host: holds 10% of its share here.
    Arriving,
}

/// One VM's request to its host's scheduler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// CPU the VM asks for, all vCPUs together.
    pub demand: f64,
    /// vCPUs (0 counts as 1).
    pub vcpus: u32,
    pub transit: Transit,
}

/// The allocation of one host, once all its VMs' requests are known: [`TimeShared::allocated`]
/// then gives each VM its CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeShared {
    core: f64,
    over: bool,
    scale: f64,
}

impl TimeShared {
    /// The allocation on a host of `capacity` in total and `core` per core, for the VMs on its
    /// list, in order.
    pub fn new(capacity: f64, core: f64, requests: impl IntoIterator<Item = Request>) -> TimeShared {
        let mut avail = capacity;
        let mut over = false;
        let mut required = 0.0;
        for r in requests {
            let per_vcpu = per_vcpu(r, core);
            let mut c = 0.0;
            for _ in 0..r.vcpus.max(1) {
                c += per_vcpu;
            }
            if r.transit == Transit::Arriving {
                c *= 0.1;
            }
            required += c;
            if !over && avail >= c {
                avail -= c;
            } else {
                over = true;
            }
        }
        TimeShared { core, over, scale: capacity / required }
    }

    /// Whether the requests did not all fit.
    pub fn oversubscribed(&self) -> bool {
        self.over
    }

    /// CPU granted to the VM making request `r` (one of those the allocation was made with),
    /// all vCPUs together.
    pub fn allocated(&self, r: Request) -> f64 {
        let cpe = per_vcpu(r, self.core);
        let each = match (self.over, r.transit) {
            (false, Transit::Resident) => cpe,
            (false, Transit::Leaving) => cpe * 0.9,
            (false, Transit::Arriving) => cpe * 0.1,
            (true, Transit::Resident) => (cpe * self.scale).floor(),
            (true, Transit::Leaving) => (cpe * self.scale * 0.9).floor(),
            (true, Transit::Arriving) => (cpe * 0.1 * self.scale).floor(),
        };
        let mut alloc = 0.0;
        for _ in 0..r.vcpus.max(1) {
            alloc += each;
        }
        alloc
    }
}

/// CloudSim's `getUtilizationOfCpu`: `used` over `capacity` (0 without capacity), with a value
/// just over 1 (below 1.01, rounding) counted as 1.
pub fn utilization(used: f64, capacity: f64) -> f64 {
    let u = if capacity > 0.0 { used / capacity } else { 0.0 };
    if u > 1.0 && u < 1.01 {
        1.0
    } else {
        u
    }
}

/// What one vCPU asks for: its share of the demand, capped at a core.
fn per_vcpu(r: Request, core: f64) -> f64 {
    let per = r.demand / f64::from(r.vcpus.max(1));
    if per > core {
        core
    } else {
        per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(demand: f64, vcpus: u32, transit: Transit) -> Request {
        Request { demand, vcpus, transit }
    }

    #[test]
    fn requests_that_fit_are_granted_with_the_migration_shares() {
        // 2 cores of 1000: 600 + 2 x 300 (leaving) + 10% of 500 (arriving) = 1250 fits.
        let vms = [req(600.0, 1, Transit::Resident), req(600.0, 2, Transit::Leaving), req(500.0, 1, Transit::Arriving)];
        let a = TimeShared::new(2000.0, 1000.0, vms);
        assert!(!a.oversubscribed());
        assert_eq!(a.allocated(vms[0]), 600.0);
        assert_eq!(a.allocated(vms[1]), 300.0 * 0.9 + 300.0 * 0.9);
        assert_eq!(a.allocated(vms[2]), 500.0 * 0.1);
    }

    #[test]
    fn a_vcpu_gets_at_most_one_core() {
        // 1500 on one vCPU asks for one core of 1000; on two vCPUs, 750 each.
        let one = req(1500.0, 1, Transit::Resident);
        let two = req(1500.0, 2, Transit::Resident);
        assert_eq!(TimeShared::new(4000.0, 1000.0, [one]).allocated(one), 1000.0);
        assert_eq!(TimeShared::new(4000.0, 1000.0, [two]).allocated(two), 1500.0);
        // 0 vCPUs counts as 1.
        let zero = req(1500.0, 0, Transit::Resident);
        assert_eq!(TimeShared::new(4000.0, 1000.0, [zero]).allocated(zero), 1000.0);
    }

    #[test]
    fn an_oversubscribed_host_scales_every_vcpu_down_to_whole_units() {
        // 2 cores of 1000; requests 800 + 2 x 800 (leaving) + 10% of 500 (arriving) = 2450:
        // the second does not fit, so every vCPU gets its request x 2000 / 2450, floored.
        let vms =
            [req(800.0, 1, Transit::Resident), req(1600.0, 2, Transit::Leaving), req(500.0, 1, Transit::Arriving)];
        let a = TimeShared::new(2000.0, 1000.0, vms);
        assert!(a.oversubscribed());
        assert_eq!(a.allocated(vms[0]), 653.0); // floor(800 x 2000 / 2450)
        assert_eq!(a.allocated(vms[1]), 2.0 * 587.0); // floor(800 x scale x 0.9) per vCPU
        assert_eq!(a.allocated(vms[2]), 40.0); // floor(500 x 0.1 x scale)
    }

    #[test]
    fn once_one_request_does_not_fit_the_host_stays_oversubscribed() {
        // 1000 capacity: 900 fits, 200 does not, the 50 after it would have: still scaled.
        let vms = [req(900.0, 1, Transit::Resident), req(200.0, 1, Transit::Resident), req(50.0, 1, Transit::Resident)];
        let a = TimeShared::new(1000.0, 1000.0, vms);
        assert!(a.oversubscribed());
        assert_eq!(a.allocated(vms[2]), (50.0 * 1000.0 / 1150.0_f64).floor());
    }

    #[test]
    fn utilization_rounds_just_over_full_down_to_full() {
        assert_eq!(utilization(500.0, 1000.0), 0.5);
        assert_eq!(utilization(1005.0, 1000.0), 1.0);
        assert_eq!(utilization(1020.0, 1000.0), 1.02);
        assert_eq!(utilization(1.0, 0.0), 0.0);
    }

    #[test]
    fn an_empty_host_is_not_oversubscribed() {
        assert!(!TimeShared::new(1000.0, 500.0, []).oversubscribed());
    }
}
