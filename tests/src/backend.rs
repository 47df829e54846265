//! What the scenario interpreter drives: one trait over "a firmware", implemented by the core
//! directly and by each platform's ABI (register blocks on TDX, command buffers on SEV).

use tsm_core::device_model::{DeviceEvent, Misbehaviour};
use tsm_core::dma::{DmaReach, DmaState};
use tsm_core::lifecycle::TdispState;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, Leaf, LeafState, MAX_RELAY_BYTES, MmioRange,
    PageSize, RequesterId, SecureTable, TdiId, TdiState, TsmResult,
};

/// A request or answer as the host carries it between the firmware and the DOE mailbox.
pub type RelayBuf = [u8; MAX_RELAY_BYTES];

/// A firmware operation that may need the device: started with [`Backend::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCall {
    /// Bind a TDI to a guest.
    Bind {
        /// The TDI.
        tdi: TdiId,
        /// The guest.
        guest: GuestId,
    },
    /// The guest starts a TDI.
    Start {
        /// The owner.
        guest: GuestId,
        /// The TDI.
        tdi: TdiId,
    },
    /// Check a TDI's state with the device.
    Check {
        /// The TDI.
        tdi: TdiId,
    },
    /// One unbind call.
    Unbind {
        /// The TDI.
        tdi: TdiId,
    },
}

impl DeviceCall {
    /// The TDI the call is about.
    pub const fn tdi(&self) -> TdiId {
        match *self {
            DeviceCall::Bind { tdi, .. }
            | DeviceCall::Start { tdi, .. }
            | DeviceCall::Check { tdi }
            | DeviceCall::Unbind { tdi } => tdi,
        }
    }
}

pub use tsm_core::relay::host::MAX_RELAY_ROUNDS;

/// One DMA request with the TEE bit a device makes: its direction and the guest address it
/// names (the scenario `dma` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccess {
    /// A write (`false`: a read).
    pub write: bool,
    /// The guest physical address.
    pub gpa: Gpa,
}

/// What `access` reaches given what the TDI's context reaches (`reach`, [`Backend::dma_reach`])
/// and whether the owner's private page at its address lets it through (`page`, asked only
/// when the context translates): the owner's private memory only when both do; shared memory
/// otherwise (an address that is no private page of the owner is shared whatever the context).
pub fn access_reach(
    reach: DmaReach,
    page: impl FnOnce(GuestId) -> TsmResult<bool>,
) -> TsmResult<DmaReach> {
    Ok(match reach {
        DmaReach::Private(owner) if page(owner)? => DmaReach::Private(owner),
        _ => DmaReach::SharedOnly,
    })
}

/// Whether a DMA request translated into the owner's private leaf in `state` reaches it: a
/// mapped leaf, and a blocked one, which stays in the table until its removal and which a TLB
/// may still hold until the unbind's Track and the removal (that waits for every TLB and
/// IOTLB) are done (ours: the model does not track which translations a TLB holds; it errs
/// towards "private", the answer a `shared` line must rule out). The unbind blocks the TDI's
/// leaves before STOP, so only this keeps a device that still sends T=1 through an
/// unblocked context visible in that window.
pub fn leaf_reachable(state: LeafState) -> bool {
    matches!(state, LeafState::Mapped | LeafState::Blocked { .. })
}

/// Relays `first` (the outcome of [`Backend::begin`]) to its end: every request to the
/// backend's device and its answer back, as a host kernel does. Returns the operation's own
/// outcome (never `Relay`).
pub fn relay_to_end(
    b: &mut (impl Backend + ?Sized),
    tdi: TdiId,
    first: TsmResult<Completion>,
    request: &mut RelayBuf,
) -> TsmResult<Completion> {
    let mut outcome = first;
    for _ in 0..MAX_RELAY_ROUNDS {
        let Ok(Completion::Relay(n)) = outcome else {
            return outcome;
        };
        let mut answer = [0u8; MAX_RELAY_BYTES];
        let sent = request.get(..n).ok_or(Error::Inconsistent)?;
        let len = b.mailbox(sent, &mut answer);
        let got = match len {
            Some(k) => Some(answer.get(..k).ok_or(Error::Inconsistent)?),
            None => None,
        };
        outcome = b.respond(tdi, got, request);
    }
    Err(Error::Inconsistent)
}

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
    fn create_tdi(&mut self, device: DeviceId, iface: RequesterId) -> TsmResult<TdiId>;
    /// Removes a TDI.
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()>;
    /// Starts `call` in the firmware, through the platform's ABI: `Relay(n)` with the request
    /// to relay in `request`, or the operation's outcome when it needs no device.
    fn begin(&mut self, call: DeviceCall, request: &mut RelayBuf) -> TsmResult<Completion>;
    /// Hands the device's answer (`None`: it did not answer) for `tdi`'s outstanding request
    /// to the firmware through the platform's ABI: the next `Relay(n)`, or the outcome.
    fn respond(
        &mut self,
        tdi: TdiId,
        answer: Option<&[u8]>,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion>;
    /// The device model's DOE mailbox: its answer to a relayed request, `None` when silent.
    fn mailbox(&mut self, request: &[u8], answer: &mut RelayBuf) -> Option<usize>;
    /// Device model: the TDI's interface will report `report`.
    fn set_report(&mut self, tdi: TdiId, report: &[WireMmioRange]) -> TsmResult<()>;
    /// The device reports `report` for the TDI's interface (device model), then the host binds
    /// the TDI to a guest, relaying every request; the firmware takes the ranges from the
    /// device alone.
    fn bind(&mut self, tdi: TdiId, guest: GuestId, report: &[WireMmioRange]) -> TsmResult<()> {
        self.set_report(tdi, report)?;
        let mut request = [0u8; MAX_RELAY_BYTES];
        let first = self.begin(DeviceCall::Bind { tdi, guest }, &mut request);
        relay_to_end(self, tdi, first, &mut request).map(drop)
    }
    /// Maps a private MMIO page.
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()>;
    /// The usual start: for a TDI locked and bound to `guest` whose trusted DMA context is not
    /// yet accepted, the host creates it if there is none and the guest accepts it (every
    /// platform then runs the device with its context the guest's); then the guest's START,
    /// relayed. Any other start goes straight to START and its refusal.
    fn start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        self.prepare_start(guest, tdi)?;
        let mut request = [0u8; MAX_RELAY_BYTES];
        let first = self.begin(DeviceCall::Start { guest, tdi }, &mut request);
        relay_to_end(self, tdi, first, &mut request).map(drop)
    }
    /// What the usual start does before START (see [`Backend::start`]).
    fn prepare_start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let dma = self.dma_context(tdi)?;
        if self.tdi_state(tdi) == Ok(TdiState::Locked { owner: guest })
            && dma != Some(DmaState::Active)
        {
            if dma.is_none() {
                self.dma_create(tdi)?;
            }
            self.dma_accept(guest, tdi)?;
        }
        Ok(())
    }
    /// The firmware hears that the device reports ERROR for a TDI (TDX TSM.DEVIF.ERROR, SEV
    /// TIO_TDI_ERROR; called again, it continues blocking). The model device is not told: a
    /// scenario's `device-error` puts its interface in ERROR first ([`DeviceEvent::Disturb`]).
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion>;
    /// The firmware asks the device for the interface's state (GET_DEVICE_INTERFACE_STATE),
    /// relayed.
    fn check(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let mut request = [0u8; MAX_RELAY_BYTES];
        let first = self.begin(DeviceCall::Check { tdi }, &mut request);
        relay_to_end(self, tdi, first, &mut request)
    }
    /// One unbind call, its STOP relayed.
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let mut request = [0u8; MAX_RELAY_BYTES];
        let first = self.begin(DeviceCall::Unbind { tdi }, &mut request);
        relay_to_end(self, tdi, first, &mut request)
    }
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
    fn device_event(&mut self, iface: RequesterId, event: DeviceEvent) -> TsmResult<()>;
    /// Device model: make an interface misbehave on the wire (or behave again).
    fn device_misbehave(&mut self, iface: RequesterId, how: Option<Misbehaviour>) -> TsmResult<()>;
    /// Secure table model: hold TLB flushes until released (`false` completes them).
    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()>;
    /// The host creates the TDI's trusted DMA context (TDX TDH.DMAR.ADD; SEV the TDI bind's).
    fn dma_create(&mut self, tdi: TdiId) -> TsmResult<()>;
    /// The owner accepts the TDI's trusted DMA context (TDX TDG.DMAR.ACCEPT; SEV the SDTE write).
    fn dma_accept(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()>;
    /// Whether the device sends the TDI's DMA with the TEE bit (T=1): the device's own
    /// decision ([`device_sends_tee`]), read from the model device's TDISP state of the
    /// interface (RUN until the device has processed STOP_INTERFACE, whatever the firmware
    /// records) and the device's IDE stream, never from the core's record of the TDI.
    fn device_sends_tee(&mut self, tdi: TdiId) -> TsmResult<bool>;
    /// What the platform's IOMMU does with a request with the TEE bit from the TDI's
    /// requester ID, whatever the device and the TDI's state (bound, unbinding, ERROR...):
    /// read from the platform's own structure (the in-memory table's context, TDX's PASID
    /// entry read with TDH.DMAR.READ, SEV's sDTE), the guest it names, and its IOTLB: an entry
    /// that translated and is blocked, but whose invalidation has not completed, still
    /// translates from the IOTLB. Never from the core's record of the context (which the
    /// invariants compare with the structure).
    fn iommu_reach(&mut self, tdi: TdiId) -> TsmResult<DmaReach>;
    /// What a DMA request from the TDI reaches (the device model's question): the IOMMU's
    /// answer ([`Backend::iommu_reach`]) when the device sends it with the TEE bit
    /// ([`Backend::device_sends_tee`]); shared memory only when it does not (a request
    /// without the TEE bit never reaches private memory).
    fn dma_reach(&mut self, tdi: TdiId) -> TsmResult<DmaReach> {
        if self.device_sends_tee(tdi)? {
            self.iommu_reach(tdi)
        } else {
            Ok(DmaReach::SharedOnly)
        }
    }
    /// What one DMA access from the TDI reaches ([`access_reach`]): [`Backend::dma_reach`],
    /// then the platform's own translation of `access.gpa` for the owner (the in-memory table's
    /// leaf, TDX's S-EPT leaf read with TDH.MEM.SEPT.RD, SEV's RMP entry and the sDTE's read
    /// and write permissions), which must map a private page of the owner not blocked and
    /// allow the access's direction.
    fn dma_access(&mut self, tdi: TdiId, access: DmaAccess) -> TsmResult<DmaReach>;
    /// The host completes the IOTLB invalidations the TDI's unbind waits for, in the table of
    /// the TDI's owner ([`FlushControl::complete_invalidations`]; TDX through the ABI:
    /// TDH.IQ.INV.REQUEST of the owner's domain and TDH.IQ.INV.PROCESS on every IOMMU with an
    /// entry of the owner). A guest whose flushes a scenario holds (`defer-flush`) stays
    /// held. A TDI with no owner: nothing to complete.
    fn complete_invalidations(&mut self, tdi: TdiId) -> TsmResult<()>;
    /// Whether the host completes IOTLB invalidations only when told
    /// ([`Backend::complete_invalidations`], the scenario's `invalidations manual`) or as soon
    /// as an unbind stops for one (`false`, the default): in manual mode every platform's
    /// IOMMU waits for the host ([`FlushControl::hold_invalidations`]) and no call of the
    /// backend completes one on its own.
    fn set_manual_invalidations(&mut self, manual: bool) -> TsmResult<()>;
    /// The TDI's trusted DMA context as the firmware records it (`None`: none; an unknown TDI
    /// has none).
    fn dma_context(&mut self, tdi: TdiId) -> TsmResult<Option<DmaState>>;
}

/// Whether a device sends DMA with the TEE bit for an interface in TDISP state `tdisp` (as
/// the device holds it) over an IDE stream `stream`: only in RUN (TDISP, PCIe 6.x 11.3.3: a
/// TDI accesses TVM memory only in RUN; CONFIG_LOCKED and ERROR do not) on a live stream (a
/// cut stream carries no IDE TLP, so no T=1).
pub fn device_sends_tee(tdisp: TdispState, stream: tsm_core::IdeStream) -> bool {
    tdisp == TdispState::Run && stream == tsm_core::IdeStream::Live
}

/// [`device_sends_tee`] for `tdi`, with `tdisp` the device's TDISP state of an interface.
/// The stream is the firmware's record of the device's (ours: the model has no root port;
/// the firmware programs its keys and cuts it, so its record is the stream).
pub fn tdi_sends_tee<T: SecureTable, S: tsm_core::SecureSession, const N: usize>(
    tsm: &tsm_core::Tsm<T, S, N>,
    tdi: TdiId,
    tdisp: impl FnOnce(tsm_core::InterfaceId) -> TsmResult<TdispState>,
) -> TsmResult<bool> {
    let record = tsm.tdi(tdi)?;
    let stream = tsm.device(record.device)?.stream;
    Ok(device_sends_tee(tdisp(record.iface)?, stream))
}

/// A secure table whose TLB flush the tests can hold back.
pub trait FlushControl {
    /// Hold (`true`) or complete and stop holding (`false`) the flushes of `guest`: its TLB
    /// flushes and its DMA contexts' IOTLB invalidations alike (SEV's one ASID fence is both;
    /// on TDX the host then does not process its invalidation queue for the guest).
    fn defer_flush(&mut self, guest: GuestId, defer: bool);
    /// Whether the table's own trusted DMA context of `iface` translates for `guest` (the
    /// in-memory table: an active context of that guest).
    fn dma_translates(&self, guest: GuestId, iface: tsm_core::InterfaceId) -> bool;
    /// What the table's IOMMU does with a request with the TEE bit from `iface`
    /// ([`Backend::iommu_reach`]): the guest its context translates to, from the context or,
    /// blocked and not yet invalidated, from the IOTLB.
    fn iommu_reach(&self, iface: tsm_core::InterfaceId) -> DmaReach;
    /// The host completes the IOTLB invalidations queued for `guest`'s context of `iface`
    /// (TDX: TDH.IQ.INV.PROCESS of its IOMMU; the in-memory table: its deferred ones); nothing
    /// where the firmware completes them itself (SEV's ASID fence).
    fn complete_invalidations(&mut self, guest: GuestId, iface: tsm_core::InterfaceId) {
        let _ = (guest, iface);
    }
    /// The table completes `guest`'s IOTLB invalidations only at
    /// [`FlushControl::complete_invalidations`] (`true`), or on its own again, completing
    /// those outstanding (`false`). Nothing where the IOMMU waits for the host anyway (TDX: a
    /// queued invalidation completes only at the host's TDH.IQ.INV.PROCESS).
    fn hold_invalidations(&mut self, guest: GuestId, hold: bool) {
        let _ = (guest, hold);
    }
}

/// A backend's record of who completes IOTLB invalidations: the host only when told
/// ([`Backend::set_manual_invalidations`]), and which guests' flushes a scenario holds
/// (`defer-flush`: no completion by the host releases them).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostInvalidations {
    /// The host completes invalidations only at [`Backend::complete_invalidations`].
    pub manual: bool,
    held: [bool; tsm_core::capacity::MAX_GUESTS],
}

impl HostInvalidations {
    /// Automatic, nothing held.
    pub const fn new() -> Self {
        Self {
            manual: false,
            held: [false; tsm_core::capacity::MAX_GUESTS],
        }
    }

    /// Records that a scenario holds (or released) `guest`'s flushes.
    pub fn hold(&mut self, guest: GuestId, held: bool) {
        if let Some(h) = self.held.get_mut(usize::from(guest.slot())) {
            *h = held;
        }
    }

    /// Whether a scenario holds `guest`'s flushes.
    pub fn held(&self, guest: GuestId) -> bool {
        self.held
            .get(usize::from(guest.slot()))
            .copied()
            .unwrap_or(false)
    }

    /// Sets the mode on `table`: every guest slot whose flushes no scenario holds waits for
    /// the host (manual) or completes on its own again (automatic).
    pub fn set_manual(&mut self, table: &mut impl FlushControl, manual: bool) {
        self.manual = manual;
        for slot in 0..tsm_core::capacity::MAX_GUESTS {
            let guest = GuestId::from_slot(u16::try_from(slot).unwrap_or(u16::MAX));
            if !self.held(guest) {
                table.hold_invalidations(guest, manual);
            }
        }
    }

    /// `defer-flush`: the table holds (or releases) `guest`'s flushes; released in manual mode,
    /// its invalidations wait for the host again.
    pub fn defer_flush(&mut self, table: &mut impl FlushControl, guest: GuestId, defer: bool) {
        self.hold(guest, defer);
        table.defer_flush(guest, defer);
        if !defer && self.manual {
            table.hold_invalidations(guest, true);
        }
    }

    /// The host completes `guest`'s invalidations of `iface` unless a scenario holds them.
    pub fn complete(
        &self,
        table: &mut impl FlushControl,
        guest: GuestId,
        iface: tsm_core::InterfaceId,
    ) {
        if !self.held(guest) {
            table.complete_invalidations(guest, iface);
        }
    }
}

impl<const N: usize, const AT_BIND: bool> FlushControl for MemTable<N, AT_BIND> {
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        self.set_defer_flush(guest, defer);
        self.set_defer_invalidations(guest, defer);
        if !defer {
            self.complete_flush(guest);
            MemTable::complete_invalidations(self, guest);
        }
    }

    fn dma_translates(&self, guest: GuestId, iface: tsm_core::InterfaceId) -> bool {
        self.dma_contexts().iter().any(|c| {
            c.iface == iface && c.guest == guest && c.state == tsm_core::dma::DmaState::Active
        })
    }

    /// The context of `iface`: accepted (active), or blocked and its invalidation not
    /// complete (`Blocked`, `Invalidating`: the IOTLB may still hold what it translated).
    /// The table does not record whether a blocked context ever translated; one blocked
    /// before it was accepted counts as translating too (ours: the core starts a TDI only
    /// with its context accepted, so a device that sends T=1 had it accepted).
    fn iommu_reach(&self, iface: tsm_core::InterfaceId) -> DmaReach {
        use tsm_core::dma::DmaState;
        match self.dma_contexts().iter().find(|c| c.iface == iface) {
            Some(c)
                if matches!(
                    c.state,
                    DmaState::Active | DmaState::Blocked | DmaState::Invalidating
                ) =>
            {
                DmaReach::Private(c.guest)
            }
            _ => DmaReach::SharedOnly,
        }
    }

    /// The context's own invalidation only (review s22b: not every context of the guest);
    /// the in-memory table keeps no domain-wide wait.
    fn complete_invalidations(&mut self, guest: GuestId, iface: tsm_core::InterfaceId) {
        MemTable::complete_invalidation(self, guest, iface);
    }

    fn hold_invalidations(&mut self, guest: GuestId, hold: bool) {
        self.set_defer_invalidations(guest, hold);
        if !hold {
            MemTable::complete_invalidations(self, guest);
        }
    }
}

/// The core driven directly: [`Relayed`] (the core over any secure table, and its model device).
pub struct CoreBackend<'a, T> {
    /// The firmware instance and its device.
    pub tsm: &'a Relayed<T>,
    /// Name printed in run headers.
    pub label: &'static str,
    invalidations: HostInvalidations,
}

impl<'a, T> CoreBackend<'a, T> {
    /// The core of `tsm`, named `label` in run headers; invalidations automatic.
    pub const fn new(tsm: &'a Relayed<T>, label: &'static str) -> Self {
        Self {
            tsm,
            label,
            invalidations: HostInvalidations::new(),
        }
    }
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
    fn create_tdi(&mut self, device: DeviceId, iface: RequesterId) -> TsmResult<TdiId> {
        self.tsm.create_tdi(device, iface)
    }
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()> {
        self.tsm.remove_tdi(tdi)
    }
    fn begin(&mut self, call: DeviceCall, request: &mut RelayBuf) -> TsmResult<Completion> {
        let fw = self.tsm.firmware();
        match call {
            DeviceCall::Bind { tdi, guest } => fw.bind(tdi, guest, request),
            DeviceCall::Start { guest, tdi } => fw.guest_start(guest, tdi, request),
            DeviceCall::Check { tdi } => fw.check_interface(tdi, request),
            DeviceCall::Unbind { tdi } => fw.unbind(tdi, request),
        }
    }
    fn respond(
        &mut self,
        tdi: TdiId,
        answer: Option<&[u8]>,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        self.tsm.firmware().device_response(tdi, answer, request)
    }
    fn mailbox(&mut self, request: &[u8], answer: &mut RelayBuf) -> Option<usize> {
        self.tsm
            .with_device(|d| d.answer(request, answer))
            .ok()
            .flatten()
    }
    fn set_report(&mut self, tdi: TdiId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Ok(record) = self.tsm.tdi(tdi) {
            self.tsm
                .with_device(|d| d.link_mut().set_report(record.iface, report))?;
        }
        Ok(())
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
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        self.tsm.device_error(tdi)
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
    fn device_event(&mut self, iface: RequesterId, event: DeviceEvent) -> TsmResult<()> {
        self.tsm.with_device(|d| d.event(iface, event))
    }
    fn device_misbehave(&mut self, iface: RequesterId, how: Option<Misbehaviour>) -> TsmResult<()> {
        self.tsm
            .with_device(|d| d.link_mut().set_misbehaviour(iface, how))
    }
    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()> {
        let inv = &mut self.invalidations;
        self.tsm.with_table(|t| inv.defer_flush(t, guest, defer))
    }

    /// The owner's table completes what it holds for the host
    /// ([`FlushControl::complete_invalidations`]: the in-memory table's requested
    /// invalidations, which it holds in manual mode).
    fn complete_invalidations(&mut self, tdi: TdiId) -> TsmResult<()> {
        let record = self.tsm.tdi(tdi)?;
        let Some(owner) = record.state.owner() else {
            return Ok(());
        };
        let inv = &self.invalidations;
        self.tsm
            .with_guest_table(owner, |t| inv.complete(t, owner, record.iface))
    }

    fn set_manual_invalidations(&mut self, manual: bool) -> TsmResult<()> {
        let inv = &mut self.invalidations;
        self.tsm.with_table(|t| inv.set_manual(t, manual))
    }

    fn dma_create(&mut self, tdi: TdiId) -> TsmResult<()> {
        self.tsm.host_dma_create(tdi)
    }

    fn dma_accept(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        self.tsm.guest_dma_accept(guest, tdi)
    }

    fn device_sends_tee(&mut self, tdi: TdiId) -> TsmResult<bool> {
        let tsm = self.tsm;
        tdi_sends_tee(tsm.firmware(), tdi, |iface| {
            tsm.with_device(|d| d.dsm().state(iface))
        })
    }

    /// The table's context of the TDI's interface ([`FlushControl::iommu_reach`]).
    fn iommu_reach(&mut self, tdi: TdiId) -> TsmResult<DmaReach> {
        let iface = self.tsm.tdi(tdi)?.iface;
        self.tsm.with_table(|t| t.iommu_reach(iface))
    }

    /// The owner's leaf at the address in the core's table, mapped or blocked
    /// ([`leaf_reachable`]); the core's leaves carry no read or write permission, so both
    /// directions reach one.
    fn dma_access(&mut self, tdi: TdiId, access: DmaAccess) -> TsmResult<DmaReach> {
        let reach = self.dma_reach(tdi)?;
        access_reach(reach, |owner| {
            Ok(self
                .tsm
                .leaf(owner, access.gpa)?
                .is_some_and(|l| leaf_reachable(l.state)))
        })
    }

    fn dma_context(&mut self, tdi: TdiId) -> TsmResult<Option<DmaState>> {
        Ok(self.tsm.tdi(tdi).ok().and_then(|r| r.dma))
    }
}
