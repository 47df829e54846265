//! The firmware object: every table, and every operation the host, a guest or a device can
//! cause. Each operation locks what it needs in lock order, checks everything, then changes
//! everything.
//!
//! Lock order (every operation takes a subset, in this order, and only with try-locks):
//! device table -> device -> TDI -> guest -> ownership -> secure table -> transport.

use spin::{Mutex, MutexGuard};

use crate::addr::{Gpa, Hpa};
use crate::capacity::{
    MAX_DEVICES, MAX_GUESTS, MAX_RANGES_PER_TDI, MAX_TDIS, MAX_TDIS_PER_DEVICE, UNBIND_OPS_PER_CALL,
};
use crate::functions::DeviceFunctions;
use crate::ids::{DeviceId, GuestId, RequesterId, TdiId};
use crate::lifecycle::{Event, TdiState, TdispState, UnbindStep, transition};
use crate::mmio::{MmioRange, any_overlap};
use crate::ownership::Ownership;
use crate::page::PageSize;
use crate::registry::{
    Bars, Device, DeviceClaim, GuestRecord, IdeStream, SlotGuard, Slots, Tdi, try_lock,
};
use crate::reserved::ReservedMemory;
use crate::secure_table::{Leaf, SecureTable};
use crate::status::{Completion, Error, Operand, TsmResult};
use crate::transport::{DeviceFault, InterfaceId, ReportedRange, TdispDevice};
use crate::unbind::{self, UnbindCtx, Walk};

/// The TEE security manager: devices, TDIs, guests, owned MMIO, the platform's secure table
/// `T` and the device transport `D`. Every method takes `&self`: it is entered from many CPUs.
pub struct Tsm<T, D> {
    /// Every device's functions and BARs, indexed like `devices`: the device table lock.
    claims: Mutex<[Option<DeviceClaim>; MAX_DEVICES]>,
    devices: Slots<Device, MAX_DEVICES>,
    tdis: Slots<Tdi, MAX_TDIS>,
    guests: Slots<GuestRecord, MAX_GUESTS>,
    owners: Mutex<Ownership>,
    table: Mutex<T>,
    transport: Mutex<D>,
    /// Memory that is never MMIO; fixed at construction, so read without a lock.
    reserved: ReservedMemory,
}

/// What an unbind holds besides the TDI (and, forced, the device): the owner's record, the
/// ownership table and the secure table.
struct UnbindLocks<'a, T> {
    guest: SlotGuard<'a, GuestRecord>,
    owners: MutexGuard<'a, Ownership>,
    table: MutexGuard<'a, T>,
}

/// A copy of every table, for tests that prove a refusal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<T> {
    /// The device table (functions and BARs of every device).
    pub claims: [Option<DeviceClaim>; MAX_DEVICES],
    /// Device slots.
    pub devices: [Option<Device>; MAX_DEVICES],
    /// TDI slots.
    pub tdis: [Option<Tdi>; MAX_TDIS],
    /// Guest slots.
    pub guests: [Option<GuestRecord>; MAX_GUESTS],
    /// Owned ranges.
    pub owners: Ownership,
    /// The secure table.
    pub table: T,
}

impl<T: SecureTable, D: TdispDevice> Tsm<T, D> {
    /// A firmware instance over the platform's secure table and device transport that reserves
    /// no memory: for tables whose host pages are not real memory (tests, the in-memory table).
    /// A platform over real memory uses [`Tsm::with_reserved`].
    pub const fn new(table: T, transport: D) -> Self {
        Self::with_reserved(table, transport, ReservedMemory::new())
    }

    /// A firmware instance that refuses every BAR, reported range and mapping touching
    /// `reserved` (its own pages and the platform's system memory) with `ReservedMemory`.
    pub const fn with_reserved(table: T, transport: D, reserved: ReservedMemory) -> Self {
        Self {
            claims: Mutex::new([const { None }; MAX_DEVICES]),
            devices: Slots::new(Operand::Device),
            tdis: Slots::new(Operand::Tdi),
            guests: Slots::new(Operand::Guest),
            owners: Mutex::new(Ownership::new()),
            table: Mutex::new(table),
            transport: Mutex::new(transport),
            reserved,
        }
    }

    /// The memory this instance never hands out as MMIO.
    pub fn reserved(&self) -> &ReservedMemory {
        &self.reserved
    }

    // ---- guests -------------------------------------------------------------------------

    /// Registers a guest (TD or SNP guest) with the firmware.
    pub fn create_guest(&self) -> TsmResult<GuestId> {
        self.guests
            .insert(GuestRecord::default(), Error::GuestTableFull)
            .map(GuestId::from_slot)
    }

    /// Forgets a guest that owns no TDI (`GuestInUse` otherwise).
    pub fn destroy_guest(&self, guest: GuestId) -> TsmResult<()> {
        let mut slot = self.guests.lock(guest.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        if record.bound_tdis != 0 {
            return Err(Error::GuestInUse);
        }
        *slot = None;
        Ok(())
    }

    // ---- devices and TDIs ---------------------------------------------------------------

    /// Registers a physical device without VFs, by its DSM's requester ID, with its memory BARs.
    pub fn create_device(&self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        self.create_device_with(DeviceFunctions::physical(rid), bars)
    }

    /// Registers a physical device with its functions (PFs and any VFs) and its memory BARs.
    /// Refused: more than [`MAX_BARS`](crate::capacity::MAX_BARS) BARs (`TooManyRanges`), BARs overlapping each other
    /// (`RangesOverlap`) or reserved memory (`ReservedMemory`), a requester ID that is already
    /// a function of a registered device (`DuplicateDevice`), a BAR sharing a page with another
    /// device's (`BarInUse`).
    pub fn create_device_with(
        &self,
        functions: DeviceFunctions,
        bars: &[MmioRange],
    ) -> TsmResult<DeviceId> {
        let bars = Bars::from_slice(bars).map_err(|_| Error::TooManyRanges)?;
        if any_overlap(&bars) {
            return Err(Error::RangesOverlap);
        }
        if bars.iter().any(|b| self.reserved.touches(b)) {
            return Err(Error::ReservedMemory);
        }
        let mut claims = try_lock(&self.claims, Operand::DeviceTable)?;
        let others = || claims.iter().flatten();
        if others().any(|c| c.functions.intersects(&functions)) {
            return Err(Error::DuplicateDevice);
        }
        if others().any(|c| c.bars.iter().any(|b| bars.iter().any(|n| n.overlaps(b)))) {
            return Err(Error::BarInUse);
        }
        let index = claims
            .iter()
            .position(Option::is_none)
            .ok_or(Error::DeviceTableFull)?;
        let handle = DeviceId::from_slot(u16::try_from(index).map_err(|_| Error::DeviceTableFull)?);
        let mut slot = self.devices.lock(handle.slot())?;
        let claim = claims.get_mut(index).ok_or(Error::DeviceTableFull)?;
        *claim = Some(DeviceClaim {
            functions,
            bars: bars.clone(),
        });
        *slot = Some(Device {
            functions,
            bars,
            tdis: heapless::Vec::new(),
            stream: IdeStream::Live,
        });
        Ok(handle)
    }

    /// Forgets a device with no TDIs left (`DeviceInUse` otherwise).
    pub fn remove_device(&self, device: DeviceId) -> TsmResult<()> {
        let mut claims = try_lock(&self.claims, Operand::DeviceTable)?;
        let mut slot = self.devices.lock(device.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        if !record.tdis.is_empty() {
            return Err(Error::DeviceInUse);
        }
        let claim = claims
            .get_mut(usize::from(device.slot()))
            .ok_or(Error::InvalidHandle)?;
        *slot = None;
        *claim = None;
        Ok(())
    }

    /// Creates the TDI for interface `iface` of `device`, CONFIG_UNLOCKED and unbound. The
    /// interface must be one of the device's functions (`ForeignInterface`); since no
    /// requester ID is a function of two devices, one interface has at most one TDI anywhere.
    pub fn create_tdi(&self, device: DeviceId, iface: InterfaceId) -> TsmResult<TdiId> {
        let mut slot = self.devices.lock(device.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        if !record.functions.contains(iface) {
            return Err(Error::ForeignInterface);
        }
        if record.tdis.iter().any(|(_, i)| *i == iface) {
            return Err(Error::DuplicateTdi);
        }
        if record.tdis.is_full() {
            return Err(Error::TdiTableFull);
        }
        let tdi = Tdi {
            device,
            iface,
            state: TdiState::Unbound,
        };
        let handle = TdiId::from_slot(self.tdis.insert(tdi, Error::TdiTableFull)?);
        // Cannot fail: fullness was checked under the same device lock.
        record
            .tdis
            .push((handle, iface))
            .map_err(|_| Error::TdiTableFull)?;
        Ok(handle)
    }

    /// Removes an unbound TDI (`TdiBound` while bound).
    pub fn remove_tdi(&self, tdi: TdiId) -> TsmResult<()> {
        let device = self.tdi(tdi)?.device;
        let mut dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        if record.device != device {
            return Err(Error::Busy(Operand::Tdi));
        }
        transition(record.state, Event::HostTouch)?;
        dev.tdis.retain(|(t, _)| *t != tdi);
        *slot = None;
        Ok(())
    }

    // ---- binding and mapping ------------------------------------------------------------

    /// Binds `tdi` to `guest`: LOCK_INTERFACE, then the device's own interface report names
    /// the MMIO ranges the TDI will own; the host names none. Every range of the report,
    /// private or shared, must lie inside the device's BARs and touch no other bound TDI's
    /// range; the private ones become the TDI's. A report the firmware will not trust undoes
    /// the lock with STOP_INTERFACE, and nothing changes.
    pub fn bind(&self, tdi: TdiId, guest: GuestId) -> TsmResult<()> {
        let device = self.tdi(tdi)?.device;
        let dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let mut tdi_slot = self.tdis.lock(tdi.slot())?;
        let record = tdi_slot.as_mut().ok_or(Error::InvalidHandle)?;
        if record.device != device {
            return Err(Error::Busy(Operand::Tdi));
        }
        let mut guest_slot = self.guests.lock(guest.slot())?;
        let guest_record = guest_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let next = transition(record.state, Event::Bind(guest))?;
        // A device a forced unbind cut off stays cut off until the host sets its stream up.
        if dev.stream == IdeStream::Cut {
            return Err(Error::StreamCut);
        }
        let mut owners = try_lock(&self.owners, Operand::Ownership)?;
        // At most MAX_TDIS can be bound: a count that would overflow is drift.
        let bound = guest_record
            .bound_tdis
            .checked_add(1)
            .ok_or(Error::Inconsistent)?;
        let mut transport = try_lock(&self.transport, Operand::Transport)?;

        // The report is only meaningful once the interface is locked (PCIe 6.x 11.3.11).
        if let Err(fault) = transport.lock_interface(record.iface) {
            // The device may have locked and then garbled or lost its answer: put it back in a
            // known state. The failed LOCK is the status whatever STOP returns.
            let _ = transport.stop_interface(record.iface);
            return Err(fault.into());
        }
        let reported = transport
            .interface_ranges(record.iface)
            .map_err(Error::from)
            .and_then(|reported| {
                Self::check_report(&dev.bars, &reported)?;
                owners.check_claim(&reported)?;
                Ok(reported)
            });
        let reported = match reported {
            Ok(r) => r,
            Err(e) => {
                // Undo the lock; the refusal is the status whatever the device answers.
                let _ = transport.stop_interface(record.iface);
                return Err(e);
            }
        };
        if let Err(e) = owners.claim(tdi, guest, &reported) {
            // Unreachable while check_claim ran under the same lock; undo the lock regardless.
            let _ = transport.stop_interface(record.iface);
            return Err(e);
        }
        guest_record.bound_tdis = bound;
        record.state = next;
        Ok(())
    }

    /// Every range of a report, private or shared, lies inside one of the device's BARs. That
    /// also keeps reports clear of reserved memory: no BAR touches it (`create_device_with`).
    fn check_report(bars: &Bars, reported: &[ReportedRange]) -> TsmResult<()> {
        let inside = |r: &ReportedRange| {
            bars.iter()
                .any(|bar| bar.contains_span(r.range.base().as_u64(), r.range.bytes()))
        };
        if reported.iter().all(inside) {
            Ok(())
        } else {
            Err(Error::RangeOutsideDevice)
        }
    }

    /// Maps one private MMIO page of `tdi` at `gpa` of `guest`. Checked in the core's one
    /// order: handles (TDI, guest), then the operands (alignment to `size`, reserved memory),
    /// then state (bound to `guest`, locked or running; the page wholly in a range the TDI
    /// owns; neither address mapped already).
    pub fn map_mmio(
        &self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()> {
        let slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        self.guests
            .lock(guest.slot())?
            .as_ref()
            .ok_or(Error::InvalidHandle)?;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(Error::Misaligned);
        }
        let page = MmioRange::try_new(hpa, size.base_pages())?;
        if self.reserved.touches(&page) {
            return Err(Error::ReservedMemory);
        }
        transition(record.state, Event::Map(guest))?;
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        match owners.holding(hpa, size) {
            Some(owned) if owned.tdi == tdi => {}
            // Part of the page is another bound TDI's: mapping it here would steal it.
            _ if owners
                .iter()
                .any(|o| o.tdi != tdi && o.range.overlaps(&page)) =>
            {
                return Err(Error::TdiBound);
            }
            _ => return Err(Error::HpaNotOwned),
        }
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        table.map(guest, gpa, hpa, size)?;
        Ok(())
    }

    // ---- guest and device side ----------------------------------------------------------

    /// The owning guest accepts and starts a CONFIG_LOCKED TDI (START_INTERFACE). A device
    /// that refuses puts the TDI in ERROR; one that does not answer leaves it as it was.
    pub fn guest_start(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        self.guests
            .lock(guest.slot())?
            .as_ref()
            .ok_or(Error::InvalidHandle)?;
        let next = transition(record.state, Event::Start(guest))?;
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        let mut transport = try_lock(&self.transport, Operand::Transport)?;
        match transport.start_interface(record.iface) {
            Ok(()) => {
                record.state = next;
                Ok(())
            }
            Err(DeviceFault::NoResponse) => Err(Error::DeviceUnresponsive),
            // A device that refuses or garbles START cannot be trusted with the guest: ERROR.
            Err(fault) => {
                let errored = transition(record.state, Event::DeviceError)?;
                record.state = errored;
                // The fault is the status; blocking resumes on the next device_error/unbind.
                let _ = Self::continue_blocking(tdi, record, &owners, &mut *table);
                Err(Error::from(fault))
            }
        }
    }

    /// The device reported ERROR (or flagged a configuration change) for `tdi`: the TDI goes
    /// to ERROR and its leaves are blocked, at most [`UNBIND_OPS_PER_CALL`] per call
    /// (`Resumable` until all are). Only unbind leaves ERROR. On a TDI whose unbind is still
    /// blocking (an unbind the host abandoned) it finishes that pass.
    pub fn device_error(&self, tdi: TdiId) -> TsmResult<Completion> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let next = transition(record.state, Event::DeviceError)?;
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        record.state = next;
        Self::continue_blocking(tdi, record, &owners, &mut *table)
    }

    /// Asks the device for the interface's TDISP state (GET_DEVICE_INTERFACE_STATE). A device
    /// that says ERROR, or CONFIG_UNLOCKED for a TDI the firmware holds locked or running (a
    /// reset it did not announce), puts the TDI in ERROR exactly as [`Tsm::device_error`] does.
    pub fn check_interface(&self, tdi: TdiId) -> TsmResult<Completion> {
        self.check_interface_state(tdi).map(|(done, _)| done)
    }

    /// [`Tsm::check_interface`], also returning the TDISP state it found: the device's answer
    /// for a locked or running TDI; for one in ERROR or being unbound, which the device is not
    /// asked about, the firmware's own view (ERROR until STOP is done).
    pub fn check_interface_state(&self, tdi: TdiId) -> TsmResult<(Completion, TdispState)> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let errored = transition(record.state, Event::DeviceError)?;
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        // A TDI already in ERROR or being unbound is not the device's to judge: finish
        // taking its MMIO from the guest, whether or not the device answers.
        if !matches!(record.state, TdiState::Locked { .. } | TdiState::Run { .. }) {
            let done = Self::continue_blocking(tdi, record, &owners, &mut *table)?;
            return Ok((done, record.state.tdisp()));
        }
        let mut transport = try_lock(&self.transport, Operand::Transport)?;
        let device_says = transport.interface_state(record.iface)?;
        let agrees = matches!(
            (record.state, device_says),
            (TdiState::Locked { .. }, TdispState::ConfigLocked)
                | (TdiState::Run { .. }, TdispState::Run)
        );
        if !agrees {
            record.state = errored;
        }
        let done = Self::continue_blocking(tdi, record, &owners, &mut *table)?;
        Ok((done, device_says))
    }

    /// Blocks the leaves still live in a TDI the guest must no longer reach (ERROR, or an
    /// unbind waiting for STOP), within one call's budget, and stores the progress.
    fn continue_blocking(
        tdi: TdiId,
        record: &mut Tdi,
        owners: &Ownership,
        table: &mut T,
    ) -> TsmResult<Completion> {
        let Some(cursor) = record.state.blocking() else {
            return Ok(Completion::Done);
        };
        let mut budget = UNBIND_OPS_PER_CALL;
        let blocking = match unbind::block_leaves(owners, tdi, table, cursor, &mut budget)? {
            Walk::Finished => None,
            Walk::Paused(c) => Some(c),
        };
        record.state = record.state.with_blocking(blocking);
        Ok(if blocking.is_some() {
            Completion::Resumable
        } else {
            Completion::Done
        })
    }

    // ---- unbind -------------------------------------------------------------------------

    /// Unbinds `tdi`: block every leaf, STOP_INTERFACE, advance the TLB epoch and require the
    /// flush, remove the leaves, release the ranges; the TDI ends CONFIG_UNLOCKED with no
    /// owner. The leaves are blocked before STOP is sent, so no call of an unbind ever returns
    /// with the guest holding live MMIO: `Resumable` while blocking, and a STOP the device
    /// does not answer is the status only once every leaf is blocked (retry resumes at STOP).
    /// At most [`UNBIND_OPS_PER_CALL`] leaf operations per call. A guest count that would
    /// drift is `Inconsistent` at the release, after the leaves are gone, with the ranges
    /// still owned. Unbinding an unbound TDI is `Done` and changes nothing.
    pub fn unbind(&self, tdi: TdiId) -> TsmResult<Completion> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let started = transition(record.state, Event::Unbind)?;
        let TdiState::Unbinding { owner, step } = started else {
            return Ok(Completion::Done);
        };
        let mut locks = self.lock_for_unbind(owner)?;
        let mut transport = try_lock(&self.transport, Operand::Transport)?;
        Self::run_unbind(&mut locks, tdi, record, owner, step, Some(&mut *transport))
    }

    /// The locks an unbind of a TDI bound to `owner` takes after the TDI's, in lock order.
    fn lock_for_unbind(&self, owner: GuestId) -> TsmResult<UnbindLocks<'_, T>> {
        Ok(UnbindLocks {
            guest: self.guests.lock(owner.slot())?,
            owners: try_lock(&self.owners, Operand::Ownership)?,
            table: try_lock(&self.table, Operand::SecureTable)?,
        })
    }

    /// Runs unbind steps of `record` from `step` within one call's budget and stores the
    /// outcome; `device` is `None` when the stream is cut and STOP is not asked. A bound TDI's
    /// owner exists and counts it: drift is `Inconsistent` at the release, after the guest
    /// lost its MMIO.
    fn run_unbind(
        locks: &mut UnbindLocks<'_, T>,
        tdi: TdiId,
        record: &mut Tdi,
        owner: GuestId,
        step: UnbindStep,
        device: Option<&mut D>,
    ) -> TsmResult<Completion> {
        let remaining = locks
            .guest
            .as_ref()
            .and_then(|g| g.bound_tdis.checked_sub(1));
        let mut ctx = UnbindCtx {
            releasable: remaining.is_some(),
            tdi,
            iface: record.iface,
            owner,
            owners: &mut locks.owners,
            table: &mut *locks.table,
            device,
        };
        let (state, outcome) = unbind::run(&mut ctx, step, UNBIND_OPS_PER_CALL);
        if state == TdiState::Unbound
            && let (Some(guest), Some(count)) = (locks.guest.as_mut(), remaining)
        {
            guest.bound_tdis = count;
        }
        record.state = state;
        outcome
    }

    /// Force-unbinds `tdi` without the device's STOP_INTERFACE, for a device that is silent,
    /// garbles or refuses. The firmware first cuts the device's IDE stream at the root port
    /// ([`IdeStream::Cut`]), so the device can no longer reach any guest's private memory or
    /// MMIO with TEE traffic; then it blocks, tracks, removes and releases exactly as
    /// [`Tsm::unbind`] does, with the same budget and `Resumable` steps, except that the Stop
    /// step asks nothing of the device. The TDI ends Unbound (CONFIG_UNLOCKED, shared).
    ///
    /// Cutting the stream cuts off every TDI of the device: each other bound one goes to
    /// ERROR (leaves still to block, as for [`Tsm::device_error`]; the next device_error,
    /// check_interface or unbind of it blocks them, bounded and resumable) and can itself be
    /// force-unbound. No TDI of the device can be bound (`StreamCut`) until
    /// [`Tsm::setup_stream`]. A stream already cut stays so and the other TDIs are not
    /// touched; a forced unbind of an unbound TDI is `Done` and changes nothing (it does not
    /// cut the stream).
    ///
    /// Locks: device, the TDI, (when it cuts) every other TDI of the device, the owner,
    /// ownership, secure table; never the transport. Every lock is taken before anything
    /// changes, so `Busy` changes nothing.
    pub fn unbind_forced(&self, tdi: TdiId) -> TsmResult<Completion> {
        let device = self.tdi(tdi)?.device;
        let mut dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        if record.device != device {
            return Err(Error::Busy(Operand::Tdi));
        }
        let started = transition(record.state, Event::Unbind)?;
        let TdiState::Unbinding { owner, step } = started else {
            return Ok(Completion::Done);
        };
        let cut = dev.stream == IdeStream::Live;
        let mut others: heapless::Vec<_, MAX_TDIS_PER_DEVICE> = heapless::Vec::new();
        if cut {
            for &(other, _) in dev.tdis.iter().filter(|(t, _)| *t != tdi) {
                let guard = self.tdis.lock(other.slot())?;
                // Cannot fail: the device lists at most MAX_TDIS_PER_DEVICE TDIs.
                others.push(guard).map_err(|_| Error::Inconsistent)?;
            }
        }
        let mut locks = self.lock_for_unbind(owner)?;
        if cut {
            dev.stream = IdeStream::Cut;
            for other in others.iter_mut().filter_map(|g| g.as_mut()) {
                // Locked and Run go to ERROR; ERROR and unbinding stay; unbound stays unbound.
                other.state = transition(other.state, Event::DeviceError).unwrap_or(other.state);
            }
        }
        Self::run_unbind(&mut locks, tdi, record, owner, step, None)
    }

    /// The host has re-established the device's IDE stream (key programming) after a forced
    /// unbind cut it: the root port passes its TEE traffic again and its TDIs can be bound.
    /// Only once every TDI of the device is unbound (`TdiBound` otherwise: a TDI the cut left
    /// in ERROR is force-unbound first), so no bound TDI ever sees its device come back. The
    /// firmware then sends STOP_INTERFACE to each TDI's interface to return it to
    /// CONFIG_UNLOCKED from wherever the cut left it; the answers are not the status (an
    /// interface already unlocked refuses, and one that did not stop refuses the next bind's
    /// LOCK, which changes nothing). A live stream is `Ok` and nothing is sent, after the same
    /// check (setting up a stream under a bound TDI is `TdiBound` whatever the stream's state,
    /// as SEV's DEV_DISCONNECT before DEV_CONNECT refuses it).
    pub fn setup_stream(&self, device: DeviceId) -> TsmResult<()> {
        let mut dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        // Binding takes the device lock first: no TDI can become bound while it is held.
        for &(tdi, _) in dev.tdis.iter() {
            let slot = self.tdis.lock(tdi.slot())?;
            if slot.as_ref().is_some_and(|r| r.state.is_bound()) {
                return Err(Error::TdiBound);
            }
        }
        if dev.stream == IdeStream::Live {
            return Ok(());
        }
        let mut transport = try_lock(&self.transport, Operand::Transport)?;
        for &(_, iface) in dev.tdis.iter() {
            let _ = transport.stop_interface(iface);
        }
        dev.stream = IdeStream::Live;
        Ok(())
    }

    // ---- host requests on private pages -------------------------------------------------

    /// The host asks to remove the private leaf at `gpa` (TDX: TDH.MMIO.UNMAP /
    /// TDH.MEM.PAGE.REMOVE). A leaf of a bound TDI is refused with `TdiBound`: only unbind
    /// removes those.
    /// Returns the host page the removed leaf mapped (TDX returns it in R8).
    pub fn host_unmap(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<Hpa> {
        self.host_leaf_request(guest, gpa, size, |t| t.remove(guest, gpa, size))
    }

    /// The host asks to block the private leaf at `gpa` (TDX: TDH.MMIO.BLOCK /
    /// TDH.MEM.RANGE.BLOCK). Refused with `TdiBound` for a bound TDI's leaf: a block the host
    /// could not follow with an unmap would leave the guest with a dead page.
    pub fn host_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        self.host_leaf_request(guest, gpa, size, |t| t.block(guest, gpa, size))
    }

    /// The host advances the guest's TLB epoch (TDX: TDH.MEM.TRACK).
    /// `Resumable` when the platform did bounded work the advance needs first (see
    /// [`SecureTable::track`]): call again.
    pub fn host_track(&self, guest: GuestId) -> TsmResult<Completion> {
        let slot = self.guests.lock(guest.slot())?;
        slot.as_ref().ok_or(Error::InvalidHandle)?;
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        Ok(table.track(guest)?)
    }

    fn host_leaf_request<R>(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
        act: impl FnOnce(&mut T) -> Result<R, crate::secure_table::TableError>,
    ) -> TsmResult<R> {
        let slot = self.guests.lock(guest.slot())?;
        slot.as_ref().ok_or(Error::InvalidHandle)?;
        if !gpa.is_aligned(size) {
            return Err(Error::Misaligned);
        }
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        let mut table = try_lock(&self.table, Operand::SecureTable)?;
        let leaf = table.leaf(guest, gpa).ok_or(Error::NotMapped)?;
        if owners.holding(leaf.hpa, leaf.size).is_some() {
            return Err(Error::TdiBound);
        }
        if leaf.gpa != gpa || leaf.size != size {
            return Err(Error::SizeMismatch);
        }
        Ok(act(&mut *table)?)
    }

    /// The host is about to zap its mappings of `range` (a BAR) and reset or power the device:
    /// allowed only when no page of it belongs to a bound TDI. All or nothing: a range that is
    /// only partly bound is refused whole.
    pub fn host_zap(&self, range: MmioRange) -> TsmResult<()> {
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        if owners.overlapping_private(&range).is_some() {
            return Err(Error::TdiBound);
        }
        let table = try_lock(&self.table, Operand::SecureTable)?;
        if table.next_leaf(range, range.base()).is_some() {
            return Err(Error::TdiBound);
        }
        Ok(())
    }

    // ---- queries ------------------------------------------------------------------------

    /// A copy of a TDI's record.
    pub fn tdi(&self, tdi: TdiId) -> TsmResult<Tdi> {
        self.tdis
            .lock(tdi.slot())?
            .as_ref()
            .copied()
            .ok_or(Error::InvalidHandle)
    }

    /// A copy of a device's record.
    pub fn device(&self, device: DeviceId) -> TsmResult<Device> {
        self.devices
            .lock(device.slot())?
            .as_ref()
            .cloned()
            .ok_or(Error::InvalidHandle)
    }

    /// A copy of a guest's record.
    pub fn guest(&self, guest: GuestId) -> TsmResult<GuestRecord> {
        self.guests
            .lock(guest.slot())?
            .as_ref()
            .copied()
            .ok_or(Error::InvalidHandle)
    }

    /// The private ranges `tdi` owns (empty when unbound).
    pub fn owned_ranges(
        &self,
        tdi: TdiId,
    ) -> TsmResult<heapless::Vec<MmioRange, MAX_RANGES_PER_TDI>> {
        let owners = try_lock(&self.owners, Operand::Ownership)?;
        Ok(owners.private_of(tdi).take(MAX_RANGES_PER_TDI).collect())
    }

    /// The leaf of `guest` covering `gpa`.
    pub fn leaf(&self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        Ok(try_lock(&self.table, Operand::SecureTable)?.leaf(guest, gpa))
    }

    /// Runs `f` on the secure table (tests and platform glue inspect it).
    pub fn with_table<R>(&self, f: impl FnOnce(&mut T) -> R) -> TsmResult<R> {
        Ok(f(&mut *try_lock(&self.table, Operand::SecureTable)?))
    }

    /// Runs `f` on the device transport (tests drive the device model through it).
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut D) -> R) -> TsmResult<R> {
        Ok(f(&mut *try_lock(&self.transport, Operand::Transport)?))
    }

    /// Sets a guest's bound-TDI count: makes the drift a test must show is caught.
    #[cfg(test)]
    pub(crate) fn set_bound_tdis_for_test(&self, guest: GuestId, count: u16) {
        if let Ok(mut slot) = self.guests.lock(guest.slot())
            && let Some(record) = slot.as_mut()
        {
            record.bound_tdis = count;
        }
    }

    /// Holds `operand`'s lock while `f` runs: for a slot table (devices, TDIs, guests) slot
    /// `slot`, or every slot with `None`. Tests call it from one thread to show that every
    /// operation taking that lock on another thread reports `Busy(operand)`. Panics if the
    /// lock is not free: a test must start from a quiet firmware.
    #[cfg(test)]
    pub(crate) fn hold_lock<R>(
        &self,
        operand: Operand,
        slot: Option<u16>,
        f: impl FnOnce() -> R,
    ) -> R {
        fn slots<X, const N: usize>(
            table: &Slots<X, N>,
            slot: Option<u16>,
        ) -> Vec<crate::registry::SlotGuard<'_, X>> {
            let all = 0..u16::try_from(N).unwrap();
            slot.map_or(all, |s| s..s + 1)
                .map(|s| table.lock(s).unwrap())
                .collect()
        }
        match operand {
            Operand::DeviceTable => {
                let _g = try_lock(&self.claims, operand).unwrap();
                f()
            }
            Operand::Device => {
                let _g = slots(&self.devices, slot);
                f()
            }
            Operand::Tdi => {
                let _g = slots(&self.tdis, slot);
                f()
            }
            Operand::Guest => {
                let _g = slots(&self.guests, slot);
                f()
            }
            Operand::Ownership => {
                let _g = try_lock(&self.owners, operand).unwrap();
                f()
            }
            Operand::SecureTable => {
                let _g = try_lock(&self.table, operand).unwrap();
                f()
            }
            Operand::Transport => {
                let _g = try_lock(&self.transport, operand).unwrap();
                f()
            }
        }
    }

    /// A copy of every table; `Busy` if any lock is held.
    pub fn snapshot(&self) -> TsmResult<Snapshot<T>>
    where
        T: Clone,
    {
        self.snapshot_with(T::clone)
    }

    /// A copy of every record table, with the secure table seen through `image` (its bytes,
    /// for a table that cannot be cloned); `Busy` if any lock is held.
    pub fn snapshot_with<U>(&self, image: impl FnOnce(&T) -> U) -> TsmResult<Snapshot<U>> {
        Ok(Snapshot {
            claims: try_lock(&self.claims, Operand::DeviceTable)?.clone(),
            devices: self.devices.copy_all()?,
            tdis: self.tdis.copy_all()?,
            guests: self.guests.copy_all()?,
            owners: try_lock(&self.owners, Operand::Ownership)?.clone(),
            table: image(&*try_lock(&self.table, Operand::SecureTable)?),
        })
    }
}
