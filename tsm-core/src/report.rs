//! The device interface report as the lifecycle consumes it: the MMIO ranges the device says
//! belong to the interface (PCIe 6.x 11.3.11, DEVICE_INTERFACE_REPORT). Parsing it from the
//! device's bytes is the TDISP wire layer's job; here it is already a list of valid ranges.

use crate::mmio::MmioRange;

/// The parts of an interface report that binding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceReport<'a> {
    /// MMIO ranges of the interface, as reported by the device.
    pub ranges: &'a [MmioRange],
}
