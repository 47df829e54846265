//! What the scenario interpreter drives: one trait over "a firmware", implemented by the core
//! directly and by each platform's ABI (register blocks on TDX, command buffers on SEV).

use tsm_core::device_model::{DeviceEvent, Misbehaviour, ModelDevice};
use tsm_core::mem_table::MemTable;
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Gpa, GuestId, Hpa, InterfaceId, Leaf, MmioRange, PageSize, RequesterId,
    SecureTable, TdiId, TdiState, Tsm, TsmResult,
};

/// Every operation a scenario line can ask of a firmware, plus the test knobs of its models.
pub trait Backend {
    /// Short name printed in run headers (`core`, `tdx`, `sev`).
    fn name(&self) -> &'static str;
    /// Registers a guest.
    fn create_guest(&mut self) -> TsmResult<GuestId>;
    /// Forgets a guest.
    fn destroy_guest(&mut self, guest: GuestId) -> TsmResult<()>;
    /// Registers a device with its BARs.
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId>;
    /// Forgets a device.
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()>;
    /// Creates a TDI on a device.
    fn create_tdi(&mut self, device: DeviceId, iface: InterfaceId) -> TsmResult<TdiId>;
    /// Removes a TDI.
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()>;
    /// The device reports `report` for the TDI's interface (device model), then the host binds
    /// the TDI to a guest; the firmware takes the ranges from the device alone.
    fn bind(&mut self, tdi: TdiId, guest: GuestId, report: &[WireMmioRange]) -> TsmResult<()>;
    /// Maps a private MMIO page.
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()>;
    /// Guest starts a TDI.
    fn start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()>;
    /// Device reports ERROR for a TDI.
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion>;
    /// The firmware asks the device for the interface's state (GET_DEVICE_INTERFACE_STATE).
    fn check(&mut self, tdi: TdiId) -> TsmResult<Completion>;
    /// One unbind call.
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion>;
    /// One forced unbind call: the firmware cuts the device's IDE stream and unbinds without
    /// the device's STOP.
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion>;
    /// The host sets the device's IDE stream up again after a forced unbind cut it.
    fn setup_stream(&mut self, device: DeviceId) -> TsmResult<()>;
    /// Host asks to remove a private leaf.
    fn host_unmap(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()>;
    /// Host asks to block a private leaf.
    fn host_block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()>;
    /// Host zaps a BAR range.
    fn host_zap(&mut self, range: MmioRange) -> TsmResult<()>;
    /// A TDI's state.
    fn tdi_state(&mut self, tdi: TdiId) -> TsmResult<TdiState>;
    /// The leaf covering `gpa` of `guest`.
    fn leaf(&mut self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>>;
    /// Device model: an out-of-band event on an interface.
    fn device_event(&mut self, iface: InterfaceId, event: DeviceEvent) -> TsmResult<()>;
    /// Device model: make an interface misbehave on the wire (or behave again).
    fn device_misbehave(&mut self, iface: InterfaceId, how: Option<Misbehaviour>) -> TsmResult<()>;
    /// Secure table model: hold TLB flushes until released (`false` completes them).
    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()>;
}

/// A secure table whose TLB flush the tests can hold back.
pub trait FlushControl {
    /// Hold (`true`) or complete and stop holding (`false`) the flushes of `guest`.
    fn defer_flush(&mut self, guest: GuestId, defer: bool);
}

impl<const N: usize> FlushControl for MemTable<N> {
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        self.set_defer_flush(guest, defer);
        if !defer {
            self.complete_flush(guest);
        }
    }
}

/// The core driven directly: `Tsm` over any secure table and the device model.
pub struct CoreBackend<'a, T> {
    /// The firmware instance.
    pub tsm: &'a Tsm<T, ModelDevice>,
    /// Name printed in run headers.
    pub label: &'static str,
}

impl<T: SecureTable + FlushControl> Backend for CoreBackend<'_, T> {
    fn name(&self) -> &'static str {
        self.label
    }
    fn create_guest(&mut self) -> TsmResult<GuestId> {
        self.tsm.create_guest()
    }
    fn destroy_guest(&mut self, guest: GuestId) -> TsmResult<()> {
        self.tsm.destroy_guest(guest)
    }
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        self.tsm.create_device(rid, bars)
    }
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()> {
        self.tsm.remove_device(device)
    }
    fn create_tdi(&mut self, device: DeviceId, iface: InterfaceId) -> TsmResult<TdiId> {
        self.tsm.create_tdi(device, iface)
    }
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()> {
        self.tsm.remove_tdi(tdi)
    }
    fn bind(&mut self, tdi: TdiId, guest: GuestId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Ok(record) = self.tsm.tdi(tdi) {
            self.tsm
                .with_transport(|d| d.link_mut().set_report(record.iface, report))?;
        }
        self.tsm.bind(tdi, guest)
    }
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()> {
        self.tsm.map_mmio(tdi, guest, gpa, hpa, size)
    }
    fn start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        self.tsm.guest_start(guest, tdi)
    }
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        self.tsm.device_error(tdi)
    }
    fn check(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        self.tsm.check_interface(tdi)
    }
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        self.tsm.unbind(tdi)
    }
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        self.tsm.unbind_forced(tdi)
    }
    fn setup_stream(&mut self, device: DeviceId) -> TsmResult<()> {
        self.tsm.setup_stream(device)
    }
    fn host_unmap(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        self.tsm.host_unmap(guest, gpa, size).map(drop)
    }
    fn host_block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        self.tsm.host_block(guest, gpa, size)
    }
    fn host_zap(&mut self, range: MmioRange) -> TsmResult<()> {
        self.tsm.host_zap(range)
    }
    fn tdi_state(&mut self, tdi: TdiId) -> TsmResult<TdiState> {
        self.tsm.tdi(tdi).map(|t| t.state)
    }
    fn leaf(&mut self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        self.tsm.leaf(guest, gpa)
    }
    fn device_event(&mut self, iface: InterfaceId, event: DeviceEvent) -> TsmResult<()> {
        self.tsm.with_transport(|d| d.event(iface, event))
    }
    fn device_misbehave(&mut self, iface: InterfaceId, how: Option<Misbehaviour>) -> TsmResult<()> {
        self.tsm
            .with_transport(|d| d.link_mut().set_misbehaviour(iface, how))
    }
    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()> {
        self.tsm.with_table(|t| t.defer_flush(guest, defer))
    }
}
