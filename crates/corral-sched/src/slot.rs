//! The arithmetic every placement path shares, so that single-VM and group placement agree to
//! the bit: a host's capacity under overcommit, whether a VM fits, the load score hosts are
//! ranked by, and an order-preserving integer encoding of floats for heap keys.

use crate::place::HostView;

/// Capacity promisable on `physical` units at `overcommit` promised units per physical unit,
/// rounded down. A relative tolerance of 1e-9 absorbs float representation error, so that
/// 20 vCPUs at 1.15 give 23, not 22.
pub(crate) fn capacity(physical: u64, overcommit: f64) -> u64 {
    let exact = physical as f64 * overcommit;
    // `as` truncates toward zero, which is rounding down for the non-negative values that
    // matter (and avoids a libm `floor` call in the hot loop); it saturates: negative or NaN
    // gives 0, huge gives u64::MAX.
    (exact + exact.abs() * 1e-9) as u64
}

/// Maps a float to a u64 whose unsigned order is the float's total order (`f64::total_cmp`).
pub(crate) fn ordered(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// One candidate host during placement, with what this placement has added to it so far.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Index into the caller's host slice.
    pub host: usize,
    /// Position of the host's name in name order: ties break on it.
    pub rank: u32,
    /// vCPUs and MiB promisable in total (physical × overcommit, rounded down).
    pub cap_vcpus: u64,
    pub cap_mib: u64,
    /// Denominators of the load shares (as the original single-VM scheduler used them).
    div_vcpus: f64,
    div_mib: f64,
    /// Promised so far: what the host view reported plus this placement's VMs.
    pub used_vcpus: u64,
    pub used_mib: u64,
    /// Members of the group being placed that sit on this host (existing ones included).
    pub members: u32,
    /// Measured CPU load, encoded with [`ordered`].
    pub load: u64,
}

impl Slot {
    pub(crate) fn new(host: usize, rank: u32, h: &HostView, cpu_oc: f64, mem_oc: f64) -> Slot {
        Slot {
            host,
            rank,
            cap_vcpus: capacity(u64::from(h.vcpus), cpu_oc),
            cap_mib: capacity(h.memory_mib, mem_oc),
            div_vcpus: f64::from(h.vcpus.max(1)) * cpu_oc,
            div_mib: h.memory_mib.max(1) as f64 * mem_oc,
            used_vcpus: u64::from(h.used_vcpus),
            used_mib: h.used_memory_mib,
            members: 0,
            load: ordered(h.cpu_load),
        }
    }

    /// Whether a VM of `vcpus` and `mib` still fits.
    pub(crate) fn fits(&self, vcpus: u64, mib: u64) -> bool {
        self.used_vcpus.saturating_add(vcpus) <= self.cap_vcpus && self.used_mib.saturating_add(mib) <= self.cap_mib
    }

    /// Whether the VM would fit on this host if it were empty.
    pub(crate) fn could_ever_fit(&self, vcpus: u64, mib: u64) -> bool {
        vcpus <= self.cap_vcpus && mib <= self.cap_mib
    }

    /// Dominant share after adding the VM: the larger of the memory and vCPU shares of the
    /// overcommitted capacity. 0.0 is empty, 1.0 full.
    pub(crate) fn share_after(&self, vcpus: u64, mib: u64) -> f64 {
        let mem = self.used_mib.saturating_add(mib) as f64 / self.div_mib;
        let cpu = self.used_vcpus.saturating_add(vcpus) as f64 / self.div_vcpus;
        mem.max(cpu)
    }

    /// Whether the host holds nothing at all (no promised resources, no member of the group).
    pub(crate) fn is_empty(&self) -> bool {
        self.used_vcpus == 0 && self.used_mib == 0 && self.members == 0
    }

    pub(crate) fn add(&mut self, vcpus: u64, mib: u64) {
        self.used_vcpus = self.used_vcpus.saturating_add(vcpus);
        self.used_mib = self.used_mib.saturating_add(mib);
        self.members = self.members.saturating_add(1);
    }

    pub(crate) fn free_vcpus(&self) -> u64 {
        self.cap_vcpus.saturating_sub(self.used_vcpus)
    }

    pub(crate) fn free_mib(&self) -> u64 {
        self.cap_mib.saturating_sub(self.used_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounds_down_but_tolerates_float_error() {
        assert_eq!(capacity(20, 1.15), 23);
        assert_eq!(capacity(3, 1.5), 4);
        assert_eq!(capacity(16, 4.0), 64);
        assert_eq!(capacity(5, 0.0), 0);
        assert_eq!(capacity(5, f64::NAN), 0);
    }

    #[test]
    fn ordered_keeps_float_order() {
        let xs = [-1.0, -0.0, 0.0, 0.25, 1.0, 7.5, f64::INFINITY];
        for w in xs.windows(2) {
            assert!(ordered(w[0]) < ordered(w[1]), "{} < {}", w[0], w[1]);
        }
    }
}
