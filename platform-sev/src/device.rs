//! What the firmware learns from a device itself rather than from the host: its BARs (read
//! from configuration space at DEV_CREATE), its interface report (GET_DEVICE_INTERFACE_REPORT
//! over the secure session at TDI_BIND) and its TDISP state (GET_DEVICE_INTERFACE_STATE at
//! TDI_STATUS). On SEV-TIO the host only relays these; it cannot write them.

use tsm_core::capacity::{MAX_DEVICES, MAX_RANGES_PER_TDI};
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::tdisp::report::{WireMmioRange, wire_range};
use tsm_core::{
    DeviceFault, InterfaceId, MmioRange, ReportedRange, RequesterId, TdispDevice, TdispState,
};

/// BARs one device can show (ours: a type 0 header has six; two more so that an oversized
/// list reaches the core's own check and gets its status).
pub const MAX_DEVICE_BARS: usize = 8;

/// Devices the model's configuration space holds at once: one more than the firmware tracks
/// (`MAX_DEVICES`), so that the device a full firmware refuses can still be configured and
/// get the firmware's own status. Entries are freed when a device is removed.
pub const MODEL_DEVICES: usize = MAX_DEVICES + 1;

/// A device's BARs as configuration space shows them.
pub type Bars = heapless::Vec<MmioRange, MAX_DEVICE_BARS>;

/// The device facts the SEV-TIO firmware reads for itself: configuration space, plus the
/// TDISP requests of [`TdispDevice`] (interface report and state come over TDISP).
pub trait DeviceView: TdispDevice {
    /// The BARs of the device at `rid` (configuration space).
    fn bars(&mut self, rid: RequesterId) -> Result<Bars, DeviceFault>;
}

/// The tests' devices: the core's TDISP requester wired to its model DSM, plus configuration
/// space that the test harness sets, as a real device's BIOS would.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PciModel {
    /// The TDISP requester and, behind it, the model DSM of every interface.
    pub tdisp: ModelDevice,
    bars: heapless::Vec<(RequesterId, Bars), MODEL_DEVICES>,
}

/// The model is out of room (a test configured more than it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFull;

/// Why configuration space could not show a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// More BARs than [`MAX_DEVICE_BARS`]: more than any function has.
    TooManyBars,
    /// [`MODEL_DEVICES`] devices are configured already.
    Full,
}

impl PciModel {
    /// No devices configured.
    pub const fn new() -> Self {
        Self {
            tdisp: ModelDevice::model(),
            bars: heapless::Vec::new(),
        }
    }

    /// Sets the BARs configuration space shows for `rid` (a device plugged in, or
    /// reconfigured); returns those it showed before, if any. A refusal changes nothing.
    pub fn set_bars(
        &mut self,
        rid: RequesterId,
        bars: &[MmioRange],
    ) -> Result<Option<Bars>, ConfigError> {
        let bars = Bars::from_slice(bars).map_err(|_| ConfigError::TooManyBars)?;
        if let Some((_, shown)) = self.bars.iter_mut().find(|(r, _)| *r == rid) {
            return Ok(Some(core::mem::replace(shown, bars)));
        }
        self.bars.push((rid, bars)).map_err(|_| ConfigError::Full)?;
        Ok(None)
    }

    /// The device at `rid` is gone (removed, unplugged): its entry is free again. Returns the
    /// BARs it showed.
    pub fn remove_bars(&mut self, rid: RequesterId) -> Option<Bars> {
        let at = self.bars.iter().position(|(r, _)| *r == rid)?;
        Some(self.bars.swap_remove(at).1)
    }

    /// Puts configuration space for `rid` back as [`PciModel::set_bars`] found it: `previous`
    /// is what that returned.
    pub fn restore_bars(&mut self, rid: RequesterId, previous: Option<Bars>) {
        match previous {
            Some(bars) => {
                if let Some((_, shown)) = self.bars.iter_mut().find(|(r, _)| *r == rid) {
                    *shown = bars;
                }
            }
            None => {
                self.remove_bars(rid);
            }
        }
    }

    /// Every device's BARs as configuration space shows them.
    pub fn configured(&self) -> &[(RequesterId, Bars)] {
        &self.bars
    }

    /// Sets the TEE MMIO ranges the interface reports (range ID = index).
    pub fn set_report(
        &mut self,
        iface: InterfaceId,
        ranges: &[MmioRange],
    ) -> Result<(), ModelFull> {
        if ranges.len() > MAX_RANGES_PER_TDI.saturating_add(4) {
            return Err(ModelFull);
        }
        let wire: heapless::Vec<WireMmioRange, 20> = ranges
            .iter()
            .zip(0u16..)
            .map(|(r, id)| {
                wire_range(
                    r.base().as_u64(),
                    u32::try_from(r.pages()).unwrap_or(u32::MAX),
                    0,
                    id,
                )
            })
            .collect();
        self.set_wire_report(iface, &wire);
        Ok(())
    }

    /// Sets the report's ranges exactly as the device will send them (hostile values allowed).
    pub fn set_wire_report(&mut self, iface: InterfaceId, ranges: &[WireMmioRange]) {
        self.tdisp.link_mut().set_report(iface, ranges);
    }

    /// An out-of-band event on an interface (the DSM model's).
    pub fn event(&mut self, iface: InterfaceId, event: DeviceEvent) {
        self.tdisp.event(iface, event);
    }

    /// Makes requests to an interface fail (the DSM model's).
    pub fn set_fault(&mut self, iface: InterfaceId, fault: Option<DeviceFault>) {
        self.tdisp.set_fault(iface, fault);
    }
}

impl TdispDevice for PciModel {
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.tdisp.lock_interface(iface)
    }
    fn interface_ranges(
        &mut self,
        iface: InterfaceId,
    ) -> Result<heapless::Vec<ReportedRange, MAX_RANGES_PER_TDI>, DeviceFault> {
        self.tdisp.interface_ranges(iface)
    }
    fn interface_state(&mut self, iface: InterfaceId) -> Result<TdispState, DeviceFault> {
        self.tdisp.interface_state(iface)
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
}
