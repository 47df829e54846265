//! What the firmware learns from a device itself rather than from the host: its BARs (read
//! from configuration space at DEV_CREATE), its interface report (GET_DEVICE_INTERFACE_REPORT
//! over the secure session at TDI_BIND) and its TDISP state (GET_DEVICE_INTERFACE_STATE at
//! TDI_STATUS). On SEV-TIO the host only relays these; it cannot write them.

use tsm_core::capacity::{MAX_DEVICES, MAX_TDIS};
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::{DeviceFault, InterfaceId, MmioRange, RequesterId, TdispDevice, TdispState};

/// BARs one device can show (ours: a type 0 header has six; two more so that an oversized
/// list reaches the core's own check and gets its status).
pub const MAX_DEVICE_BARS: usize = 8;
/// Ranges one interface report can list here (ours; the core takes at most 16).
pub const MAX_REPORT_RANGES: usize = 32;

/// A device's BARs as configuration space shows them.
pub type Bars = heapless::Vec<MmioRange, MAX_DEVICE_BARS>;
/// An interface report's MMIO ranges, in report order (range ID = index).
pub type ReportRanges = heapless::Vec<MmioRange, MAX_REPORT_RANGES>;

/// The device facts the SEV-TIO firmware reads for itself.
pub trait DeviceView: TdispDevice {
    /// The BARs of the device at `rid` (configuration space).
    fn bars(&mut self, rid: RequesterId) -> Result<Bars, DeviceFault>;
    /// The interface report's MMIO ranges (GET_DEVICE_INTERFACE_REPORT).
    fn interface_report(&mut self, iface: InterfaceId) -> Result<ReportRanges, DeviceFault>;
    /// The interface's TDISP state (GET_DEVICE_INTERFACE_STATE).
    fn interface_state(&mut self, iface: InterfaceId) -> Result<TdispState, DeviceFault>;
}

/// The tests' devices: the core's TDISP model plus configuration space and reports that the
/// test harness sets, as a real device's firmware and BIOS would.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PciModel {
    /// The TDISP state machine of every interface.
    pub tdisp: ModelDevice,
    bars: heapless::Vec<(RequesterId, Bars), MAX_DEVICES>,
    reports: heapless::Vec<(InterfaceId, ReportRanges), MAX_TDIS>,
}

/// The model is out of room (a test configured more than it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFull;

impl PciModel {
    /// No devices configured.
    pub const fn new() -> Self {
        Self {
            tdisp: ModelDevice::new(),
            bars: heapless::Vec::new(),
            reports: heapless::Vec::new(),
        }
    }

    /// Sets the BARs configuration space shows for `rid`.
    pub fn set_bars(&mut self, rid: RequesterId, bars: &[MmioRange]) -> Result<(), ModelFull> {
        let bars = Bars::from_slice(bars).map_err(|_| ModelFull)?;
        self.bars.retain(|(r, _)| *r != rid);
        self.bars.push((rid, bars)).map_err(|_| ModelFull)
    }

    /// Sets the MMIO ranges the interface reports.
    pub fn set_report(
        &mut self,
        iface: InterfaceId,
        ranges: &[MmioRange],
    ) -> Result<(), ModelFull> {
        let ranges = ReportRanges::from_slice(ranges).map_err(|_| ModelFull)?;
        self.reports.retain(|(i, _)| *i != iface);
        self.reports.push((iface, ranges)).map_err(|_| ModelFull)
    }

    /// An out-of-band event on an interface (the core model's).
    pub fn event(&mut self, iface: InterfaceId, event: DeviceEvent) {
        self.tdisp.event(iface, event);
    }

    /// Makes requests to an interface fail (the core model's).
    pub fn set_fault(&mut self, iface: InterfaceId, fault: Option<DeviceFault>) {
        self.tdisp.set_fault(iface, fault);
    }
}

impl TdispDevice for PciModel {
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.tdisp.lock_interface(iface)
    }
    fn start_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.tdisp.start_interface(iface)
    }
    fn stop_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.tdisp.stop_interface(iface)
    }
}

impl DeviceView for PciModel {
    fn bars(&mut self, rid: RequesterId) -> Result<Bars, DeviceFault> {
        Ok(self
            .bars
            .iter()
            .find(|(r, _)| *r == rid)
            .map(|(_, b)| b.clone())
            .unwrap_or_default())
    }

    fn interface_report(&mut self, iface: InterfaceId) -> Result<ReportRanges, DeviceFault> {
        Ok(self
            .reports
            .iter()
            .find(|(i, _)| *i == iface)
            .map(|(_, r)| r.clone())
            .unwrap_or_default())
    }

    fn interface_state(&mut self, iface: InterfaceId) -> Result<TdispState, DeviceFault> {
        Ok(self.tdisp.state(iface))
    }
}
