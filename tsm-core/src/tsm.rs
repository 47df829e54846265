//! The firmware object: every table, and every operation the host, a guest or a device can
//! cause. Each operation locks what it needs in lock order, checks everything, then changes
//! everything.
//!
//! Lock order (every operation takes a subset, in this order, and only with try-locks):
//! device table -> device -> TDI -> guest -> ownership -> secure table -> transport.
//!
//! The secure table is split in `SHARDS` tables, each with its own lock: guest slot `i`'s
//! leaves live in shard `i % SHARDS`, so guests in different shards never wait for each
//! other's table. The ownership table is kept once per shard, every copy the same, each behind
//! a reader-writer lock: a lookup for a guest (a map, a host request, an unbind's walk) reads
//! its shard's copy side by side with other CPUs, and never writes a cache line another
//! shard's CPUs read; a claim (a bind's report) or a release (an unbind's end) takes every
//! copy for writing, in shard order, and makes the same change in each. An operation on a
//! range of any guest ([`Tsm::host_zap`], a snapshot) takes every shard's table lock in shard
//! order; a lookup with no guest ([`Tsm::owner_of`], [`Tsm::host_zap`]) reads shard 0's copy.

use core::fmt;
use core::ops::Deref;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use spin::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::addr::{Gpa, Hpa};
use crate::capacity::{
    MAX_DEVICES, MAX_GUESTS, MAX_RANGES_PER_TDI, MAX_TDIS, MAX_TDIS_PER_DEVICE,
    UNBIND_WORK_PER_CALL,
};
use crate::exchange::{BindStep, DeviceOp, Exchange};
use crate::functions::DeviceFunctions;
use crate::functions::FunctionSet;
use crate::guest::{AcceptCheck, GuestField};
use crate::ids::{DeviceId, GuestId, RequesterId, TdiId};
use crate::lifecycle::{Event, TdiState, TdispState, UnbindStep, transition};
use crate::mmio::{MmioRange, any_overlap};
use crate::ownership::Ownership;
use crate::page::PageSize;
use crate::registry::ReportRead;
use crate::registry::{
    Bars, Device, DeviceClaim, GuestRecord, IdeStream, SlotGuard, Slots, Tdi, try_lock,
};
use crate::relay::{MAX_RELAY_BYTES, SecureSession};
use crate::reserved::ReservedMemory;
use crate::secure_table::{Leaf, SecureTable, TableError};
use crate::status::{Completion, Error, Operand, TsmResult};
use crate::tdisp::message::{LOCK_FLAG_NO_FW_UPDATE, Response};
use crate::tdisp::report::{DeviceInterfaceReport, REPORT_PORTION, ReportAssembler};
use crate::tdisp::requester::{MAX_ATTEMPTS, MAX_MESSAGE_BYTES, Requester};
use crate::tdisp::{TDISP_VERSION_1_0, WireError, error_code};
use crate::transport::{DeviceFault, InterfaceId, ReportedRange};
use crate::unbind::{self, Ended, StopBy, UnbindCtx};

mod dma_ops;

/// The TEE security manager: devices, TDIs, guests, owned MMIO, the platform's secure table
/// `T` (in `SHARDS` independent tables, one lock each: see the module's lock order), and the
/// secure session `S` its relayed TDISP exchanges are sealed with. Every method takes `&self`:
/// it is entered from many CPUs.
///
/// # Shards
///
/// With one shard (the default, [`Tsm::new`]) every guest's leaves live in one table behind
/// one lock. [`Tsm::sharded`] takes `SHARDS` tables, each over its own memory, and puts guest
/// slot `i` in table `i % SHARDS`: maps, host requests and unbinds of guests in different
/// shards then run side by side. What a shard needs (its own frame pool on TDX) is the
/// platform's to give; the core never moves a guest between shards. A platform whose table is
/// one structure for every guest (SEV's RMP, indexed by host page) uses one shard.
///
/// # Size: keep it in a static
///
/// Every table is a fixed array (no heap), so a `Tsm` is large: about 95 KiB over the TDX
/// S-EPT with the model session (`Tsm<Sept, ModelSession>`), 103 KiB over a 256-entry
/// `MemTable` (about 9 KiB of it the padding that puts every lock on cache lines of its own);
/// a [`Relayed`](crate::relay::host::Relayed) adds the model device's 50 KiB, and the TDX
/// module wrapping a `Tsm` is about 112 KiB (x86_64, one shard, measured with
/// `core::mem::size_of`); each further shard adds its table, requester and ownership copy.
/// Tests bound these: 104 KiB for a `Tsm`, 64 KiB for the model device, 152 KiB for a
/// `Relayed<Sept>`, 120 KiB for the TDX module (tsm-core `relay::tests`,
/// platform-tdx `tests/debug.rs`). A firmware stack is often 16 to 64 KiB and a guard page does
/// not catch a frame that jumps past it, so build the firmware in a static (initialised once,
/// as platform-tdx's `examples/static_firmware.rs` does) or in memory the platform hands over,
/// never in a local of an entry point; host tests may box it.
pub struct Tsm<T, S, const SHARDS: usize = 1> {
    /// Every device's functions and BARs, indexed like `devices`: the device table lock.
    claims: Mutex<[Option<DeviceClaim>; MAX_DEVICES]>,
    devices: Slots<Device, MAX_DEVICES>,
    tdis: Slots<Tdi, MAX_TDIS>,
    guests: Slots<GuestRecord, MAX_GUESTS>,
    /// The ownership table, one copy per shard (see the module's lock order).
    owners: OwnersCopies<SHARDS>,
    /// Each shard's lock on cache lines of its own (not shared with the table before it).
    tables: [CachePadded<Mutex<T>>; SHARDS],
    /// The requesters, one per shard, each over a secure session of its own: device slot `i`
    /// relays through shard `i % SHARDS`'s.
    transports: [CachePadded<Mutex<Requester<S>>>; SHARDS],
    /// Memory that is never MMIO; fixed at construction, so read without a lock.
    reserved: ReservedMemory,
    /// Guests created so far: the next guest's [`GuestRecord::serial`].
    guests_created: AtomicU64,
}

/// A summary, never the tables: it takes no lock, so it prints even while another CPU holds one.
impl<T, S, const SHARDS: usize> fmt::Debug for Tsm<T, S, SHARDS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tsm")
            .field(
                "guests_created",
                &self.guests_created.load(Ordering::Relaxed),
            )
            .field("reserved", &self.reserved)
            .field("shards", &SHARDS)
            .finish_non_exhaustive()
    }
}

/// What a bind that creates the TDI's DMA context writes of the platform's own in it
/// ([`Tsm::device_response_binding`]): the owner's table, the owner, the interface.
type BindFill<'f, T> = dyn FnMut(&mut T, GuestId, InterfaceId) -> Result<(), TableError> + 'f;

/// What an unbind holds besides the TDI (and, forced, the device): the owner's record, the
/// ownership table and the owner's secure table.
struct UnbindLocks<'a, T, const SHARDS: usize> {
    guest: SlotGuard<'a, GuestRecord>,
    owners: Owners<'a, SHARDS>,
    /// Every copy's lock, for a read given up for the release's write.
    replicas: &'a OwnersCopies<SHARDS>,
    table: MutexGuard<'a, T>,
}

/// The ownership table, one copy per shard (see the module's lock order), and the host's
/// priority over guests for writing it.
struct OwnersCopies<const SHARDS: usize> {
    copies: [CachePadded<RwLock<Ownership>>; SHARDS],
    /// Set while a host's write (a claim or a release) found a copy read and must come back;
    /// cleared by the next host write that gets every copy. Meanwhile guests' lookups
    /// (TDG.DEVIF.RD, the MMIO accept) are `Busy(Ownership)`, so a guest reading in a loop
    /// cannot hold off the host's unbind or bind for ever, as the TDX module's host-priority
    /// locks do. The host's own lookups go on: the host schedules both sides.
    host_waits: CachePadded<AtomicBool>,
}

impl<const SHARDS: usize> OwnersCopies<SHARDS> {
    const fn new() -> Self {
        Self {
            copies: [const { CachePadded::new(RwLock::new(Ownership::new())) }; SHARDS],
            host_waits: CachePadded::new(AtomicBool::new(false)),
        }
    }
}

/// The ownership table as an operation holds it: one shard's copy read by every lookup, every
/// copy written to claim (a bind's report) or release (an unbind's end).
enum Owners<'a, const SHARDS: usize> {
    Read(RwLockReadGuard<'a, Ownership>),
    Write(OwnersWrite<'a, SHARDS>),
}

impl<const SHARDS: usize> Deref for Owners<'_, SHARDS> {
    type Target = Ownership;
    fn deref(&self) -> &Ownership {
        match self {
            Owners::Read(r) => r,
            Owners::Write(w) => w,
        }
    }
}

impl<'a, const SHARDS: usize> Owners<'a, SHARDS> {
    /// The copies to claim in: only an operation that took them for writing may
    /// (`Inconsistent` otherwise: a caller that read one cannot claim).
    fn claiming(&mut self) -> TsmResult<&mut OwnersWrite<'a, SHARDS>> {
        match self {
            Owners::Write(w) => Ok(w),
            Owners::Read(_) => Err(Error::Inconsistent),
        }
    }

    /// The copies for a release: held for writing already, or this read given up and every
    /// copy taken for writing now; `None` while another CPU reads one (the caller keeps its
    /// progress and says `Resumable`). A write never waits: it is a try-lock like every other.
    fn releasing(self, replicas: &'a OwnersCopies<SHARDS>) -> Option<OwnersWrite<'a, SHARDS>> {
        match self {
            Owners::Write(w) => Some(w),
            Owners::Read(r) => {
                drop(r);
                OwnersWrite::lock(replicas).ok()
            }
        }
    }
}

/// Every copy of the ownership table, held for writing. A change is made to the first copy
/// (all or nothing, as every change of the table is) and then copied into the others, which
/// cannot fail: the copies never differ once the writer lets go (a copy that already differs
/// is `Inconsistent`, found before anything changes).
struct OwnersWrite<'a, const SHARDS: usize> {
    /// Shard 0's copy: what a lookup through the writer reads.
    first: RwLockWriteGuard<'a, Ownership>,
    rest: heapless::Vec<RwLockWriteGuard<'a, Ownership>, SHARDS>,
}

impl<const SHARDS: usize> Deref for OwnersWrite<'_, SHARDS> {
    type Target = Ownership;
    fn deref(&self) -> &Ownership {
        &self.first
    }
}

impl<'a, const SHARDS: usize> OwnersWrite<'a, SHARDS> {
    /// Every copy for writing, in shard order, for the host; `Busy(Ownership)` if any is held,
    /// and then the host waits: guests' lookups are `Busy` until a host write succeeds (see
    /// [`OwnersCopies`]).
    fn lock(owners: &'a OwnersCopies<SHARDS>) -> TsmResult<Self> {
        let got = Self::try_lock(owners);
        owners.host_waits.store(got.is_err(), Ordering::Release);
        got
    }

    fn try_lock(owners: &'a OwnersCopies<SHARDS>) -> TsmResult<Self> {
        let busy = Error::Busy(Operand::Ownership);
        let (first, others) = owners.copies.split_first().ok_or(Error::Inconsistent)?;
        let first = first.try_write().ok_or(busy)?;
        let mut rest = heapless::Vec::new();
        for r in others {
            // Cannot fail: fewer guards than copies.
            rest.push(r.try_write().ok_or(busy)?)
                .map_err(|_| Error::Inconsistent)?;
        }
        Ok(Self { first, rest })
    }

    /// Makes `change` in every copy, all or nothing (see the type).
    fn apply(&mut self, change: impl FnOnce(&mut Ownership) -> TsmResult<()>) -> TsmResult<()> {
        if self.rest.iter().any(|copy| **copy != *self.first) {
            return Err(Error::Inconsistent);
        }
        change(&mut self.first)?;
        for copy in &mut self.rest {
            copy.clone_from(&self.first);
        }
        Ok(())
    }
}

/// A copy of every table, for tests that prove a refusal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<T, const SHARDS: usize = 1> {
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
    /// The secure table's shards, in shard order.
    pub tables: [T; SHARDS],
}

impl<T> Snapshot<T> {
    /// The secure table of a firmware with one shard.
    pub fn table(&self) -> &T {
        let [table] = &self.tables;
        table
    }
}

impl<T: SecureTable, S: SecureSession> Tsm<T, S> {
    /// A firmware instance over the platform's secure table and device transport that reserves
    /// no memory: for tables whose host pages are not real memory (tests, the in-memory table).
    /// A platform over real memory uses [`Tsm::with_reserved`].
    pub const fn new(table: T, session: S) -> Self {
        Self::with_reserved(table, session, ReservedMemory::new())
    }

    /// A firmware instance that refuses every BAR, reported range and mapping touching
    /// `reserved` (its own pages and the platform's system memory) with `ReservedMemory`.
    pub const fn with_reserved(table: T, session: S, reserved: ReservedMemory) -> Self {
        Self::from_parts(
            [CachePadded::new(Mutex::new(table))],
            [CachePadded::new(Mutex::new(Requester::new(session)))],
            reserved,
        )
    }

    /// Runs `f` on the secure table (tests inspect it; platform glue, e.g. the SEV host's
    /// RMPUPDATE, changes it). Glue must never add a leaf inside a range whose TDI is being
    /// unbound: the core refuses every map there (`UnbindInProgress`; ranges of other TDIs never
    /// overlap it), and a paused unbind's walk does not look again at addresses it has passed
    /// (the search hint's generation covers only what lies ahead of it). Nor for one guest
    /// over a range a TDI bound to another guest owns: an unbind walks only its owner's shard
    /// and would leave that leaf behind. A sharded firmware uses [`Tsm::with_guest_table`].
    pub fn with_table<R>(&self, f: impl FnOnce(&mut T) -> R) -> TsmResult<R> {
        let [table] = &self.tables;
        Ok(f(&mut *try_lock(table, Operand::SecureTable)?))
    }

    /// Runs `f` on the requester and its secure session (a sharded firmware has one per
    /// shard: [`Tsm::with_device_transport`]).
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut Requester<S>) -> R) -> TsmResult<R> {
        let [transport] = &self.transports;
        Ok(f(&mut *try_lock(transport, Operand::Transport)?))
    }
}

impl<T: SecureTable, S: SecureSession, const SHARDS: usize> Tsm<T, S, SHARDS> {
    /// At least one shard.
    const SHARDS_OK: () = assert!(SHARDS > 0, "a firmware needs at least one table shard");

    /// A firmware instance over `tables` and `sessions`, one of each per shard (guest slot `i`
    /// in table `i % SHARDS`, device slot `i` relaying through session `i % SHARDS`, see
    /// [`Tsm`]), that refuses every BAR, reported range and mapping touching `reserved` with
    /// `ReservedMemory`. Each table must be empty and over its own memory; each session is one
    /// the platform set up with the devices it serves.
    pub fn sharded(tables: [T; SHARDS], sessions: [S; SHARDS], reserved: ReservedMemory) -> Self {
        Self::from_parts(
            tables.map(|t| CachePadded::new(Mutex::new(t))),
            Self::requesters(sessions),
            reserved,
        )
    }

    /// One requester per session, each counting its own sequence numbers, all unique.
    fn requesters(sessions: [S; SHARDS]) -> [CachePadded<Mutex<Requester<S>>>; SHARDS] {
        let shards = u64::try_from(SHARDS).unwrap_or(u64::MAX);
        let mut shard = 0u64;
        sessions.map(|s| {
            let r = Requester::for_shard(s, shard, shards);
            shard = shard.saturating_add(1);
            CachePadded::new(Mutex::new(r))
        })
    }

    const fn from_parts(
        tables: [CachePadded<Mutex<T>>; SHARDS],
        transports: [CachePadded<Mutex<Requester<S>>>; SHARDS],
        reserved: ReservedMemory,
    ) -> Self {
        let () = Self::SHARDS_OK;
        Self {
            claims: Mutex::new([const { None }; MAX_DEVICES]),
            devices: Slots::new(Operand::Device),
            tdis: Slots::new(Operand::Tdi),
            guests: Slots::new(Operand::Guest),
            owners: OwnersCopies::new(),
            tables,
            transports,
            reserved,
            guests_created: AtomicU64::new(0),
        }
    }

    /// The shard holding `guest`'s leaves.
    fn shard_of(&self, guest: GuestId) -> TsmResult<&Mutex<T>> {
        usize::from(guest.slot())
            .checked_rem(SHARDS)
            .and_then(|i| self.tables.get(i))
            .map(|m| &**m)
            .ok_or(Error::Inconsistent)
    }

    /// Locks the requester `device` relays through (its shard's).
    fn transport_of(&self, device: DeviceId) -> TsmResult<MutexGuard<'_, Requester<S>>> {
        let shard = usize::from(device.slot())
            .checked_rem(SHARDS)
            .and_then(|i| self.transports.get(i))
            .ok_or(Error::Inconsistent)?;
        try_lock(shard, Operand::Transport)
    }

    /// Locks `guest`'s secure table (its shard).
    fn table_of(&self, guest: GuestId) -> TsmResult<MutexGuard<'_, T>> {
        try_lock(self.shard_of(guest)?, Operand::SecureTable)
    }

    /// Reads `guest`'s copy for the guest itself: `Busy(Ownership)` while a host write waits
    /// (see [`OwnersCopies`]).
    fn read_owners_as_guest(&self, guest: GuestId) -> TsmResult<RwLockReadGuard<'_, Ownership>> {
        if self.owners.host_waits.load(Ordering::Acquire) {
            return Err(Error::Busy(Operand::Ownership));
        }
        self.read_owners(Some(guest))
    }

    /// Reads the copy of the ownership table in `guest`'s shard, side by side with other
    /// readers; shard 0's with no guest.
    fn read_owners(&self, guest: Option<GuestId>) -> TsmResult<RwLockReadGuard<'_, Ownership>> {
        let shard = match guest {
            Some(g) => usize::from(g.slot()).checked_rem(SHARDS),
            None => Some(0),
        };
        shard
            .and_then(|i| self.owners.copies.get(i))
            .ok_or(Error::Inconsistent)?
            .try_read()
            .ok_or(Error::Busy(Operand::Ownership))
    }

    /// Locks `tdi`'s device, then the TDI, in lock order: `Busy(Tdi)` if the TDI was removed
    /// and its slot given to another device's TDI in between.
    fn lock_tdi_and_device(
        &self,
        tdi: TdiId,
    ) -> TsmResult<(SlotGuard<'_, Device>, SlotGuard<'_, Tdi>)> {
        let device = self.tdi(tdi)?.device;
        let dev_slot = self.devices.lock(device.slot())?;
        dev_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        if record.device != device {
            return Err(Error::Busy(Operand::Tdi));
        }
        Ok((dev_slot, slot))
    }

    /// The memory this instance never hands out as MMIO.
    pub fn reserved(&self) -> &ReservedMemory {
        &self.reserved
    }

    // ---- guests -------------------------------------------------------------------------

    /// Registers a guest (TD or SNP guest) with the firmware.
    pub fn create_guest(&self) -> TsmResult<GuestId> {
        let serial = self
            .guests_created
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .map_err(|_| Error::GuestTableFull)?;
        let record = GuestRecord {
            bound_tdis: 0,
            serial,
        };
        self.guests
            .insert(record, Error::GuestTableFull)
            .map(GuestId::from_slot)
    }

    /// Forgets a guest that owns no TDI (`GuestInUse` otherwise); its secure table frees what
    /// it kept for it ([`SecureTable::guest_destroyed`], whose refusals it answers).
    pub fn destroy_guest(&self, guest: GuestId) -> TsmResult<()> {
        let mut slot = self.guests.lock(guest.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        if record.bound_tdis != 0 {
            return Err(Error::GuestInUse);
        }
        // Under the guest's lock: no call on the guest runs between the table's release and
        // the slot's.
        self.table_of(guest)?.guest_destroyed(guest)?;
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
        self.register_device(functions, bars, true)
    }

    /// Registers a physical device whose BARs the platform cannot know (SEV-TIO: Linux's
    /// DEV_CREATE names none, and the PSP cannot read configuration space). Its interface
    /// reports are checked without BARs: every range inside the address space, clear of
    /// reserved memory (`ReservedMemory`), of each other (`RangesOverlap`) and of every bound
    /// TDI's ranges (`TdiBound`); the guest's own MMIO validation is the check of last resort.
    pub fn create_device_unlisted(&self, rid: RequesterId) -> TsmResult<DeviceId> {
        self.register_device(DeviceFunctions::physical(rid), &[], false)
    }

    fn register_device(
        &self,
        functions: DeviceFunctions,
        bars: &[MmioRange],
        bars_listed: bool,
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
            bars_listed,
            tdis: heapless::Vec::new(),
            stream: IdeStream::Live,
            report_read: None,
            maybe_locked: FunctionSet::default(),
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

    /// Creates the TDI for the interface with requester ID `rid` of `device`, CONFIG_UNLOCKED
    /// and unbound. `rid` must be an interface ID of the device by the [`InterfaceId`] rule
    /// (`ForeignInterface`: not one of its functions; `InvalidRequesterId`: a segment wider
    /// than FUNCTION_ID's 8 bits); since no requester ID is a function of two devices, one
    /// interface has at most one TDI anywhere.
    pub fn create_tdi(&self, device: DeviceId, rid: RequesterId) -> TsmResult<TdiId> {
        let mut slot = self.devices.lock(device.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let iface = record.functions.interface(rid)?;
        if record.tdis.iter().any(|(_, i)| *i == iface) {
            return Err(Error::DuplicateTdi);
        }
        if record.tdis.is_full() {
            return Err(Error::TdiTableFull);
        }
        let index = record.functions.index(rid);
        let mut tdi = Tdi::new(device, iface);
        tdi.unlock_first = index.is_some_and(|i| record.maybe_locked.contains(i));
        let handle = TdiId::from_slot(self.tdis.insert(tdi, Error::TdiTableFull)?);
        // Cannot fail: fullness was checked under the same device lock.
        record
            .tdis
            .push((handle, iface))
            .map_err(|_| Error::TdiTableFull)?;
        if let Some(i) = index {
            record.maybe_locked.remove(i);
        }
        Ok(handle)
    }

    /// Removes an unbound TDI (`TdiBound` while bound, `ExchangePending` while a bind of it
    /// waits on the device: unbind abandons that first). A TDI whose trusted DMA context remains
    /// is `DmaContextRemains`, ahead of `TdiBound` once its device can no longer reach the
    /// guest (an unbind past STOP, or the stream cut: [`Tsm::host_may_tear_down`]), the order
    /// of TDX's TDH.DEVIF.REMOVE, whose HAS_MAPPED_DMA comes after the state check such a TDI
    /// passes.
    pub fn remove_tdi(&self, tdi: TdiId) -> TsmResult<()> {
        let (mut dev_slot, mut slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        // TDX's DEVIF.REMOVE order: once the device can no longer reach the guest (past
        // STOP, or the stream cut) a bound TDI's DMA context is what keeps it
        // (TDX_DEVIF_HAS_MAPPED_DMA); before, being bound is.
        if record.dma.is_some() && Self::host_may_tear_down(record.state, dev.stream) {
            return Err(Error::DmaContextRemains);
        }
        transition(record.state, Event::HostTouch)?;
        // Unbind removes the context before the TDI is unbound: one left is drift.
        if record.dma.is_some() {
            return Err(Error::DmaContextRemains);
        }
        if record.exchange.is_some() {
            return Err(Error::ExchangePending);
        }
        // The device may still hold the interface locked: the next TDI for it unlocks first.
        if let Some(i) = record
            .unlock_first
            .then(|| dev.functions.index(record.iface.requester_id()))
            .flatten()
        {
            dev.maybe_locked.insert(i);
        }
        dev.tdis.retain(|(t, _)| *t != tdi);
        *slot = None;
        Ok(())
    }

    // ---- binding and mapping ------------------------------------------------------------

    /// Binds `tdi` to `guest`, in exchanges the host relays: (STOP_INTERFACE when an earlier
    /// bind may have left the interface locked,) GET_TDISP_VERSION, GET_TDISP_CAPABILITIES,
    /// LOCK_INTERFACE, then the device's own interface report, portion by portion, names the
    /// MMIO ranges the TDI will own; the host names none. This call checks everything it can
    /// and returns `Relay(n)` with the first request in `out`; [`Tsm::device_response`]
    /// continues, and the last answer binds: every range of the report, private or shared,
    /// must lie inside the device's BARs and touch no other bound TDI's range; the private
    /// ones become the TDI's, and a report naming no range at all is `EmptyReport` (what a
    /// device, or the test device model, with no report for the interface sends). Until then
    /// the TDI stays unbound. A report the firmware refuses is answered with STOP_INTERFACE and
    /// the bind ends with its status after the device's answer: the TDI is unbound,
    /// CONFIG_UNLOCKED, as before the bind; an interface that STOP did not unlock is unlocked
    /// by the next bind's first request.
    ///
    /// Calling it again for the same guest while its bind waits re-sends the outstanding
    /// request unchanged; another operation waiting on the TDI is `ExchangePending`, and so is
    /// a bind while another TDI's bind of the same device reads its report. `unbind`
    /// abandons a waiting bind.
    pub fn bind(&self, tdi: TdiId, guest: GuestId, out: &mut [u8]) -> TsmResult<Completion> {
        let (mut dev_slot, mut tdi_slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let record = tdi_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let guest_slot = self.guests.lock(guest.slot())?;
        let guest_record = guest_slot.as_ref().ok_or(Error::InvalidHandle)?;
        check_relay_buffer(out)?;
        if let Some(ex) = record.exchange {
            return match ex.op {
                DeviceOp::Bind {
                    guest: g, serial, ..
                } if g == guest && serial == guest_record.serial => {
                    let mut transport = self.transport_of(record.device)?;
                    Ok(Completion::Relay(transport.request(record, &ex, out)?))
                }
                _ => Err(Error::ExchangePending),
            };
        }
        transition(record.state, Event::Bind(guest))?;
        // An unbound TDI has no trusted DMA context: one there is drift, refused before the
        // device is asked anything.
        if record.dma.is_some() {
            return Err(Error::Inconsistent);
        }
        // A device a forced unbind cut off stays cut off until the host sets its stream up.
        if dev.stream == IdeStream::Cut {
            return Err(Error::StreamCut);
        }
        // At most MAX_TDIS can be bound: a count that would overflow is drift.
        guest_record
            .bound_tdis
            .checked_add(1)
            .ok_or(Error::Inconsistent)?;
        // One report read per device at a time: its bytes live in the device record.
        if dev.report_read.as_ref().is_some_and(|r| r.tdi != tdi) {
            return Err(Error::ExchangePending);
        }
        let mut transport = self.transport_of(record.device)?;
        let step = if record.unlock_first {
            BindStep::Unlock
        } else {
            BindStep::Version
        };
        let op = DeviceOp::Bind {
            guest,
            serial: guest_record.serial,
            step,
        };
        let relay = transport.begin(record, op, out)?;
        dev.report_read = Some(ReportRead {
            tdi,
            report: ReportAssembler::new(),
        });
        Ok(relay)
    }

    /// Ends a bind that will not complete: the TDI stays unbound, the report read ends, and an
    /// interface the device may have locked is unlocked by the next bind.
    fn abandon_bind(dev: &mut Device, tdi: TdiId, record: &mut Tdi, step: BindStep) {
        record.exchange = None;
        if matches!(
            step,
            BindStep::Lock { .. } | BindStep::Report { .. } | BindStep::Undo { .. }
        ) {
            record.unlock_first = true;
            record.forget_lock();
        }
        if dev.report_read.as_ref().is_some_and(|r| r.tdi == tdi) {
            dev.report_read = None;
        }
    }

    /// Every range of a report, private or shared, lies inside one of the device's BARs. That
    /// also keeps reports clear of reserved memory: no BAR touches it (`create_device_with`).
    /// A device registered without a BAR list ([`Tsm::create_device_unlisted`]) has its
    /// ranges kept clear of reserved memory here (`ReservedMemory`), and of each other and of
    /// other TDIs' ranges by the ownership check that follows.
    fn check_report(
        dev: &Device,
        reserved: &ReservedMemory,
        reported: &[ReportedRange],
    ) -> TsmResult<()> {
        if !dev.bars_listed {
            if reported.iter().any(|r| reserved.touches(&r.range)) {
                return Err(Error::ReservedMemory);
            }
            return Ok(());
        }
        let bars = &dev.bars;
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
        let owners = self.read_owners(Some(guest))?;
        match owners.holding(hpa, size) {
            Some(owned) if owned.tdi == tdi => {}
            // Part of the page is another bound TDI's: mapping it here would steal it.
            _ if owners.overlapping_other(tdi, &page).is_some() => return Err(Error::TdiBound),
            _ => return Err(Error::HpaNotOwned),
        }
        let mut table = self.table_of(guest)?;
        table.map(guest, gpa, hpa, size)?;
        Ok(())
    }

    // ---- guest and device side ----------------------------------------------------------

    /// The owning guest accepts and starts a CONFIG_LOCKED TDI: `Relay(n)` with
    /// START_INTERFACE (and the nonce of the LOCK) in `out`; [`Tsm::device_response`] ends
    /// it. A device that refuses or garbles START puts the TDI in ERROR; one that does not
    /// answer leaves it as it was. Calling it again while START waits re-sends it.
    pub fn guest_start(&self, guest: GuestId, tdi: TdiId, out: &mut [u8]) -> TsmResult<Completion> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        self.guests
            .lock(guest.slot())?
            .as_ref()
            .ok_or(Error::InvalidHandle)?;
        check_relay_buffer(out)?;
        if let Some(ex) = record.exchange
            && ex.op == (DeviceOp::Start { guest })
        {
            let mut transport = self.transport_of(record.device)?;
            return Ok(Completion::Relay(transport.request(record, &ex, out)?));
        }
        transition(record.state, Event::Start(guest))?;
        if record.exchange.is_some() {
            return Err(Error::ExchangePending);
        }
        // A running device may issue TEE DMA: its context must be the guest's first.
        if T::DMA_ACCEPT_BEFORE_START && record.dma != Some(crate::dma::DmaState::Active) {
            return Err(Error::DmaNotAccepted);
        }
        let mut transport = self.transport_of(record.device)?;
        transport.begin(record, DeviceOp::Start { guest }, out)
    }

    /// The device reported ERROR (or flagged a configuration change) for `tdi`: the TDI goes
    /// to ERROR and its DMA context and leaves are blocked, within [`UNBIND_WORK_PER_CALL`]
    /// units of work per call (`Resumable` until all are), and the context's IOTLB
    /// invalidation requested; a request the platform cannot take yet (SEV: another fence of
    /// the guest out) is asked again by every later call, this one included, and any other
    /// refusal of it is the call's status. Only unbind leaves ERROR. On a TDI whose unbind is still
    /// blocking (an unbind the host abandoned) it finishes that pass. A START or check waiting
    /// on the device is abandoned: its answer no longer matters.
    pub fn device_error(&self, tdi: TdiId) -> TsmResult<Completion> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let next = transition(record.state, Event::DeviceError)?;
        // Only a bound TDI reaches ERROR: it has an owner, whose table holds its leaves.
        let owner = record.state.owner().ok_or(Error::Inconsistent)?;
        let owners = self.read_owners(Some(owner))?;
        let mut table = self.table_of(owner)?;
        if matches!(
            record.exchange.map(|e| e.op),
            Some(DeviceOp::Start { .. } | DeviceOp::Check)
        ) {
            record.exchange = None;
        }
        if !matches!(record.state, TdiState::Error { .. }) {
            log::warn!("TDI {tdi:?} ({}): the device reported ERROR", record.iface);
        }
        record.state = next;
        Self::continue_blocking(tdi, record, &owners, &mut *table)
    }

    /// Checks the interface's TDISP state. A locked or running TDI asks the device
    /// (GET_DEVICE_INTERFACE_STATE): `Relay(n)`, and [`Tsm::device_response`] compares; a
    /// device that says ERROR, or CONFIG_UNLOCKED for a TDI the firmware holds locked or
    /// running (a reset it did not announce), puts the TDI in ERROR exactly as
    /// [`Tsm::device_error`] does, and the answer is kept in the record
    /// ([`Tdi::device_state`]). A TDI in ERROR or being unbound is not the device's to
    /// judge: the call finishes blocking its leaves without asking (`Done` or `Resumable`).
    pub fn check_interface(&self, tdi: TdiId, out: &mut [u8]) -> TsmResult<Completion> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        transition(record.state, Event::DeviceError)?;
        check_relay_buffer(out)?;
        let owner = record.state.owner().ok_or(Error::Inconsistent)?;
        let owners = self.read_owners(Some(owner))?;
        let mut table = self.table_of(owner)?;
        if !matches!(record.state, TdiState::Locked { .. } | TdiState::Run { .. }) {
            return Self::continue_blocking(tdi, record, &owners, &mut *table);
        }
        let mut transport = self.transport_of(record.device)?;
        if let Some(ex) = record.exchange {
            return match ex.op {
                DeviceOp::Check => Ok(Completion::Relay(transport.request(record, &ex, out)?)),
                _ => Err(Error::ExchangePending),
            };
        }
        transport.begin(record, DeviceOp::Check, out)
    }

    /// Blocks the leaves still live in a TDI the guest must no longer reach (ERROR, or an
    /// unbind waiting for STOP), within one call's budget, and stores the progress. Once every
    /// leaf is blocked, asks for the blocked DMA context's IOTLB invalidation where the
    /// platform could not take it before (SEV: another fence of the guest was out), on every
    /// call: so the host's next TDI_ERROR or check asks again once the fence is free.
    fn continue_blocking(
        tdi: TdiId,
        record: &mut Tdi,
        owners: &Ownership,
        table: &mut T,
    ) -> TsmResult<Completion> {
        let blocking = record.state.blocking();
        let Some(owner) = record.state.owner() else {
            // Only a bound TDI blocks: it has an owner, whose table holds its leaves.
            return match blocking {
                Some(_) => Err(Error::Inconsistent),
                None => Ok(Completion::Done),
            };
        };
        if let Some(cursor) = blocking {
            // A device in ERROR is not trusted with the guest's memory either: its DMA context
            // is blocked first, in the call that finds it blocking, however many calls its MMIO
            // takes (its invalidation asked at once, or after the last leaf on SEV; removed by
            // the unbind; a blocked context stays as it is).
            let mut budget = UNBIND_WORK_PER_CALL;
            let who = (owner, record.iface);
            let (left, status) = unbind::block_pass(
                table,
                owners,
                tdi,
                who,
                &mut record.dma,
                cursor,
                &mut budget,
            )?;
            record.state = record.state.with_blocking(left);
            // A refused block (the context still translating: blocked again by the next
            // call) or request is this call's status once its leaves are blocked.
            status?;
            return Ok(if left.is_some() {
                Completion::Resumable
            } else {
                Completion::Done
            });
        }
        // Every leaf blocked before: the request asked again where it could not be taken.
        unbind::ask_invalidation(table, owner, record.iface, &mut record.dma)?;
        Ok(Completion::Done)
    }

    // ---- unbind -------------------------------------------------------------------------

    /// Unbinds `tdi`: block every leaf, STOP_INTERFACE, advance the TLB epoch and require the
    /// flush, remove the leaves, release the ranges; the TDI ends CONFIG_UNLOCKED with no
    /// owner. The leaves are blocked before STOP is sent, so no call of an unbind ever returns
    /// with the guest holding live MMIO: `Resumable` while blocking, then `Relay(n)` with
    /// STOP_INTERFACE in `out`; the device's answer ([`Tsm::device_response`]) goes on with
    /// the rest, and a STOP that fails leaves the unbind at Stop (call again to resend, or
    /// [`Tsm::unbind_forced`]). At most [`UNBIND_WORK_PER_CALL`] units of work per call. A
    /// guest count that would drift is `Inconsistent` at the release, after the leaves are
    /// gone, with the ranges still owned. Waits answered with progress kept (call again once
    /// the host has done its part): `TlbFlushPending` (the guest's TLB flush),
    /// `IotlbInvalidationPending` (the TDI's DMA context's own IOTLB invalidation) and
    /// `IotlbNotTracked` (the guest's domain invalidation a track owes, TDX).
    ///
    /// Unbind works from every state and never waits on an abandoned exchange: a START or
    /// check still waiting is dropped (its late answer does not open), a bind still waiting
    /// is abandoned (`Done`: the TDI stays unbound, its interface is unlocked at the next
    /// bind), and an unbind already waiting for STOP resends it. Unbinding an unbound TDI
    /// with nothing waiting is `Done` and changes nothing.
    pub fn unbind(&self, tdi: TdiId, out: &mut [u8]) -> TsmResult<Completion> {
        let (mut dev_slot, mut slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        check_relay_buffer(out)?;
        let started = transition(record.state, Event::Unbind)?;
        let TdiState::Unbinding { owner, step } = started else {
            if let Some(Exchange {
                op: DeviceOp::Bind { step, .. },
                ..
            }) = record.exchange
            {
                Self::abandon_bind(dev, tdi, record, step);
            }
            return Ok(Completion::Done);
        };
        let locks = self.lock_for_unbind(owner, false)?;
        let mut transport = self.transport_of(record.device)?;
        if let Some(ex) = record.exchange {
            if matches!(ex.op, DeviceOp::Stop { .. }) {
                return Ok(Completion::Relay(transport.request(record, &ex, out)?));
            }
            // A START or check waiting: the TDI is being taken from the guest anyway.
            record.exchange = None;
        }
        Self::run_unbind(
            locks,
            tdi,
            record,
            owner,
            step,
            Some((&mut *transport, out)),
        )
    }

    /// The locks an unbind of a TDI bound to `owner` (or a bind for it) takes after the TDI's,
    /// in lock order: the ownership table for writing when the call may claim (`claim`).
    fn lock_for_unbind(
        &self,
        owner: GuestId,
        claim: bool,
    ) -> TsmResult<UnbindLocks<'_, T, SHARDS>> {
        let guest = self.guests.lock(owner.slot())?;
        let owners = if claim {
            Owners::Write(OwnersWrite::lock(&self.owners)?)
        } else {
            Owners::Read(self.read_owners(Some(owner))?)
        };
        Ok(UnbindLocks {
            guest,
            owners,
            replicas: &self.owners,
            table: self.table_of(owner)?,
        })
    }

    /// Runs unbind steps of `record` from `step` within one call's budget and stores the
    /// outcome. `ask` is where a STOP request goes when the Stop step needs the device;
    /// `None` when it needs nothing (the device acknowledged STOP, or its stream is cut). A
    /// bound TDI's owner exists and counts it: drift is `Inconsistent` at the release, after
    /// the guest lost its MMIO.
    fn run_unbind(
        locks: UnbindLocks<'_, T, SHARDS>,
        tdi: TdiId,
        record: &mut Tdi,
        owner: GuestId,
        step: UnbindStep,
        ask: Option<(&mut Requester<S>, &mut [u8])>,
    ) -> TsmResult<Completion> {
        let UnbindLocks {
            mut guest,
            owners,
            replicas,
            mut table,
        } = locks;
        let remaining = guest.as_ref().and_then(|g| g.bound_tdis.checked_sub(1));
        let iface = record.iface;
        let mut ctx = UnbindCtx {
            releasable: remaining.is_some(),
            tdi,
            owner,
            iface,
            dma: &mut record.dma,
            owners: &owners,
            table: &mut *table,
            stop: if ask.is_some() {
                StopBy::Device
            } else {
                StopBy::Done
            },
        };
        let (state, outcome) = unbind::run(&mut ctx, step, UNBIND_WORK_PER_CALL);
        record.state = state;
        match outcome? {
            Ended::Completion(done) => Ok(done),
            Ended::AskStop => {
                let (transport, out) = ask.ok_or(Error::Inconsistent)?;
                transport.begin(record, DeviceOp::Stop { confirm: false }, out)
            }
            // Every leaf is gone: the ranges go back, the one write of an unbind. While
            // another CPU reads a copy the TDI stays at its Release step and the call is
            // `Resumable` (the host, which waits now, has priority over guests' lookups).
            Ended::Release => {
                drop(table);
                let Some(mut writer) = owners.releasing(replicas) else {
                    return Ok(Completion::Resumable);
                };
                // A refused release changed nothing: the TDI stays unbinding, its ranges owned.
                writer.apply(|o| o.release(tdi))?;
                if let (Some(guest), Some(count)) = (guest.as_mut(), remaining) {
                    guest.bound_tdis = count;
                }
                record.state = TdiState::Unbound;
                Ok(Completion::Done)
            }
        }
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
    /// The same waits as [`Tsm::unbind`]'s answer with progress kept.
    ///
    /// Locks: device, the TDI, (when it cuts) every other TDI of the device, the owner,
    /// ownership, secure table; never the transport. Every lock is taken before anything
    /// changes, so `Busy` changes nothing.
    pub fn unbind_forced(&self, tdi: TdiId) -> TsmResult<Completion> {
        let (mut dev_slot, mut slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let started = transition(record.state, Event::Unbind)?;
        let TdiState::Unbinding { owner, step } = started else {
            if let Some(Exchange {
                op: DeviceOp::Bind { step, .. },
                ..
            }) = record.exchange
            {
                Self::abandon_bind(dev, tdi, record, step);
            }
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
        let locks = self.lock_for_unbind(owner, false)?;
        // Nothing the device says can matter any more: every exchange of the TDI (and, when
        // the stream is cut now, of the device) is dropped, and late answers do not open.
        record.exchange = None;
        record.forget_lock();
        record.unlock_first = true;
        if cut {
            log::warn!(
                "TDI {tdi:?} ({}): forced unbind cuts its device's IDE stream",
                record.iface
            );
            Self::cut(dev, &mut others);
        }
        Self::run_unbind(locks, tdi, record, owner, step, None)
    }

    /// Cuts `dev`'s IDE stream at the root port ([`IdeStream::Cut`]) with `others`, the
    /// device's TDIs the caller locked (every one but a TDI being force-unbound): each bound
    /// one goes to ERROR, its exchanges are dropped (an unbind waiting for STOP keeps its own)
    /// and its interface is unlocked first at its next bind; a bind waiting is abandoned. The
    /// one cut [`Tsm::unbind_forced`] and [`Tsm::cut_stream`] share.
    fn cut(dev: &mut Device, others: &mut [SlotGuard<'_, Tdi>]) {
        dev.stream = IdeStream::Cut;
        for other in others.iter_mut().filter_map(|g| g.as_mut()) {
            if let Some(Exchange {
                op: DeviceOp::Bind { step, .. },
                ..
            }) = other.exchange
            {
                let id = dev
                    .tdis
                    .iter()
                    .find(|(_, i)| *i == other.iface)
                    .map(|(t, _)| *t);
                if let Some(id) = id {
                    Self::abandon_bind(dev, id, other, step);
                }
            }
            // Only an unbind waiting for STOP keeps its exchange: STOP can still land.
            if !matches!(other.exchange.map(|e| e.op), Some(DeviceOp::Stop { .. })) {
                other.exchange = None;
            }
            other.unlock_first = true;
            // Locked and Run go to ERROR; ERROR and unbinding stay; unbound stays unbound.
            other.state = transition(other.state, Event::DeviceError).unwrap_or(other.state);
        }
    }

    /// The platform cuts `device`'s IDE stream itself (TDX: TDH.IDE.STREAM.BLOCK, or the key
    /// STOP of TDH.IDE.STREAM.KM): the cut of [`Tsm::unbind_forced`] without an unbind. Every
    /// bound TDI of the device goes to ERROR (the host may then tear its leaves down:
    /// [`Tsm::host_may_tear_down`]) and can be unbound, forced or not; no TDI of the device
    /// can be bound (`StreamCut`) until [`Tsm::setup_stream`]. A stream already cut stays so
    /// and nothing changes.
    ///
    /// Locks: device, every TDI of the device, all taken before anything changes.
    pub fn cut_stream(&self, device: DeviceId) -> TsmResult<()> {
        let mut dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let mut tdis: heapless::Vec<_, MAX_TDIS_PER_DEVICE> = heapless::Vec::new();
        for &(tdi, _) in dev.tdis.iter() {
            // Cannot fail: the device lists at most MAX_TDIS_PER_DEVICE TDIs.
            tdis.push(self.tdis.lock(tdi.slot())?)
                .map_err(|_| Error::Inconsistent)?;
        }
        if dev.stream == IdeStream::Live {
            log::warn!(
                "device {device:?} ({}): IDE stream cut",
                dev.functions.dsm()
            );
            Self::cut(dev, &mut tdis);
        }
        Ok(())
    }

    /// The host has re-established the device's IDE stream (key programming) after a forced
    /// unbind cut it: the root port passes its TEE traffic again and its TDIs can be bound.
    /// Only once every TDI of the device is unbound (`TdiBound` otherwise: a TDI the cut left
    /// in ERROR is force-unbound first), so no bound TDI ever sees its device come back. Each
    /// TDI's next bind starts with STOP_INTERFACE, which returns its interface to
    /// CONFIG_UNLOCKED from wherever the cut left it (an interface already unlocked refuses
    /// it, which the bind ignores). A live stream is `Ok` and nothing changes, after the same
    /// check (setting up a stream under a bound TDI is `TdiBound` whatever the stream's state,
    /// as SEV's DEV_DISCONNECT before DEV_CONNECT refuses it).
    pub fn setup_stream(&self, device: DeviceId) -> TsmResult<()> {
        let mut dev_slot = self.devices.lock(device.slot())?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        // Binding takes the device lock first: no TDI can become bound while it is held.
        let mut tdis: heapless::Vec<_, MAX_TDIS_PER_DEVICE> = heapless::Vec::new();
        for &(tdi, _) in dev.tdis.iter() {
            let slot = self.tdis.lock(tdi.slot())?;
            if slot.as_ref().is_some_and(|r| r.state.is_bound()) {
                return Err(Error::TdiBound);
            }
            // Cannot fail: the device lists at most MAX_TDIS_PER_DEVICE TDIs.
            tdis.push(slot).map_err(|_| Error::Inconsistent)?;
        }
        if dev.stream == IdeStream::Live {
            return Ok(());
        }
        for record in tdis.iter_mut().filter_map(|g| g.as_mut()) {
            record.unlock_first = true;
        }
        dev.stream = IdeStream::Live;
        Ok(())
    }

    // ---- the device's answers -----------------------------------------------------------

    /// A field of `tdi` for its owner `guest` (TDX: TDG.DEVIF.RD). Refused, changing nothing:
    /// an unknown TDI or guest (`InvalidHandle`), an unbound TDI (`TdiNotBound`), another
    /// guest's (`NotOwner`); the report's fields only while the TDI is locked or running
    /// (`TdiInError`, `UnbindInProgress`), and `InvalidRange` for a digest word or range
    /// index past the end.
    ///
    /// Locks: guest, TDI, ownership (one at a time).
    pub fn guest_read(&self, guest: GuestId, tdi: TdiId, field: GuestField) -> TsmResult<u64> {
        self.guest(guest)?;
        // The TDI stays locked to the end, so every field read comes from one bind.
        let slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        Self::guest_owns(
            record,
            guest,
            matches!(field, GuestField::TdispVersion | GuestField::TdispState),
        )?;
        match field {
            GuestField::TdispVersion => Ok(u64::from(TDISP_VERSION_1_0)),
            GuestField::TdispState => Ok(record.state.tdisp() as u64),
            GuestField::ReportDigest(word) => {
                let digest = record.report_digest.ok_or(Error::Inconsistent)?;
                let at = usize::from(word)
                    .checked_mul(8)
                    .ok_or(Error::InvalidRange)?;
                let bytes = digest
                    .get(at..at.saturating_add(8))
                    .ok_or(Error::InvalidRange)?;
                let bytes: [u8; 8] = bytes.try_into().map_err(|_| Error::InvalidRange)?;
                Ok(u64::from_le_bytes(bytes))
            }
            GuestField::ReportedRange(index) => {
                let offset = record.mmio_offset.ok_or(Error::Inconsistent)?;
                // TDI, then ownership: the core's lock order.
                let owners = self.read_owners_as_guest(guest)?;
                let range = owners.range_of(tdi, index).ok_or(Error::InvalidRange)?;
                range
                    .base()
                    .as_u64()
                    .checked_add(offset)
                    .ok_or(Error::Inconsistent)
            }
        }
    }

    /// Whether `guest` may read or accept through `record`: its owner, and (unless
    /// `any_bound_state`) locked or running.
    fn guest_owns(record: &Tdi, guest: GuestId, any_bound_state: bool) -> TsmResult<()> {
        match record.state.owner() {
            None => return Err(Error::TdiNotBound),
            Some(owner) if owner != guest => return Err(Error::NotOwner),
            Some(_) => {}
        }
        match record.state {
            _ if any_bound_state => Ok(()),
            TdiState::Locked { .. } | TdiState::Run { .. } => Ok(()),
            TdiState::Error { .. } => Err(Error::TdiInError),
            TdiState::Unbinding { .. } => Err(Error::UnbindInProgress),
            TdiState::Unbound => Err(Error::TdiNotBound),
        }
    }

    /// The guest accepts the private MMIO page its secure table maps at `gpa`: the rule every
    /// platform's accept follows. The core finds the bound TDI owning the host page mapped
    /// there, checks that it is `guest`'s and locked or running, and runs the platform's
    /// `accept` on the secure table with an [`AcceptCheck`] of that TDI's
    /// MMIO_REPORTING_OFFSET and ranges, all under the TDI's lock (so the TDI cannot unbind
    /// meanwhile) and the table's (so the entry cannot change between the platform's check
    /// and its update). `accept` makes its own entry checks first, then
    /// [`AcceptCheck::check`]s the host page of the entry against what the guest read from
    /// the report, and only then changes the entry; its refusals change nothing.
    ///
    /// With no leaf at `gpa` the check has no owner (it refuses every page) and `accept`
    /// refuses on its own. Refused before `accept` runs, changing nothing: unknown guest
    /// (`InvalidHandle`), the owner another guest (`NotOwner`), the TDI in ERROR
    /// (`TdiInError`) or being unbound (`UnbindInProgress`).
    ///
    /// Locks: guest, secure table, ownership (each briefly), then TDI, ownership, secure table.
    pub fn guest_accept<R>(
        &self,
        guest: GuestId,
        gpa: Gpa,
        accept: impl FnOnce(&mut T, &AcceptCheck) -> R,
    ) -> TsmResult<R> {
        self.guest(guest)?;
        let owner = match self.leaf(guest, gpa)? {
            Some(leaf) => {
                let page = MmioRange::try_new(leaf.hpa, leaf.size.base_pages())?;
                let owners = self.read_owners_as_guest(guest)?;
                owners.overlapping(&page).map(|o| o.tdi)
            }
            None => None,
        };
        let slot = match owner {
            Some(tdi) => Some((tdi, self.tdis.lock(tdi.slot())?)),
            None => None,
        };
        let check = match &slot {
            Some((tdi, guard)) => {
                // The owner was just looked up under the ownership lock: its record exists.
                let record = guard.as_ref().ok_or(Error::Inconsistent)?;
                Self::guest_owns(record, guest, false)?;
                let offset = record.mmio_offset.ok_or(Error::Inconsistent)?;
                let owners = self.read_owners_as_guest(guest)?;
                let ranges = owners.private_of(*tdi).take(MAX_RANGES_PER_TDI).collect();
                AcceptCheck::of(offset, ranges)
            }
            None => AcceptCheck::no_owner(),
        };
        let mut table = self.table_of(guest)?;
        Ok(accept(&mut table, &check))
    }

    /// The request of `tdi`'s outstanding exchange, framed again at `out`: the same bytes the
    /// call that sent it returned, for a host that lost them (TDX: TDH.DEVIF.REQUEST). Its
    /// length; `NoExchange` when nothing is outstanding. Changes nothing, and unlike calling
    /// the waiting operation again it can never start one.
    ///
    /// Locks: TDI, transport.
    pub fn outstanding_request(&self, tdi: TdiId, out: &mut [u8]) -> TsmResult<usize> {
        let slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        check_relay_buffer(out)?;
        let ex = record.exchange.ok_or(Error::NoExchange)?;
        let mut transport = self.transport_of(record.device)?;
        transport.request(record, &ex, out)
    }

    /// The host hands back the device's answer to `tdi`'s outstanding request: the bytes its
    /// DOE mailbox returned, or `None` when the device did not answer. The operation that
    /// waits goes on: `Relay(n)` with its next request in `out`, or its own outcome (bind:
    /// `Done` once bound; start: `Done` in RUN; unbind: `Done` or `Resumable` as
    /// [`Tsm::unbind`]; check: `Done` or `Resumable` as blocking goes).
    ///
    /// Refused, and nothing changes (the exchange stays outstanding): no exchange outstanding
    /// (`NoExchange`); bytes that are not a DOE object holding a secured record of this very
    /// exchange with an SPDM vendor-defined TDISP response, or longer than
    /// [`MAX_RELAY_BYTES`] (`RelayMalformed`: garbled,
    /// another TDI's, a stale answer, the request itself). An answer that opens is the
    /// device's own word: TDISP_ERROR (`DeviceRefused`), or not the response the request
    /// asked for (`DeviceMalformed`), ends the operation as its failure does. `None` counts
    /// against [`MAX_ATTEMPTS`]: below it the same request is to be sent again (`Relay`),
    /// at it the operation ends `DeviceUnresponsive`.
    ///
    /// On a table that makes a TDI's trusted DMA context when it is bound
    /// ([`SecureTable::DMA_CONTEXT_AT_BIND`], SEV-TIO's) the answer that completes a bind also
    /// creates the context, `Pending` as [`Tsm::host_dma_create`] makes it, in the bind's
    /// locks: no TDI is ever bound without its context, nor a context made for a TDI that is
    /// not bound. A create the table refuses refuses the bind as a report the firmware will
    /// not trust does: nothing claimed, no context, the TDI unbound, the LOCK undone with STOP
    /// (`Relay`), and the bind ends with the create's status. The platform's own fields of the
    /// context go with [`Tsm::device_response_binding`].
    ///
    /// Locks: device, TDI, guest (the bind's or the owner), ownership, secure table,
    /// transport, all taken before anything changes.
    pub fn device_response(
        &self,
        tdi: TdiId,
        response: Option<&[u8]>,
        out: &mut [u8],
    ) -> TsmResult<Completion> {
        Self::logged(tdi, self.take_response(tdi, response, out, None))
    }

    /// [`Tsm::device_response`], with the platform's own fields of the context a bind creates
    /// ([`SecureTable::DMA_CONTEXT_AT_BIND`]; SEV-TIO: TDI_BIND's guest device ID and IDE
    /// streams in the sDTE) written by `fill` in the bind's locks, once the context is made,
    /// so no one sees it without them. `fill` gets the owner's table, the owner and the
    /// interface; it runs at most once, never on a table that makes no context at bind nor for
    /// a bind refused. `fill` must not fail; if it does, the TDI stays bound with its context
    /// created, not translating, and the answer is `Inconsistent`. Any other exchange goes as
    /// [`Tsm::device_response`] takes it.
    ///
    /// Locks: those of [`Tsm::device_response`] (the secure table is the bind's guest's shard).
    pub fn device_response_binding(
        &self,
        tdi: TdiId,
        response: Option<&[u8]>,
        out: &mut [u8],
        mut fill: impl FnMut(&mut T, GuestId, InterfaceId) -> Result<(), TableError>,
    ) -> TsmResult<Completion> {
        Self::logged(tdi, self.take_response(tdi, response, out, Some(&mut fill)))
    }

    /// `outcome` of a device response for `tdi`, with its log line.
    fn logged(tdi: TdiId, outcome: TsmResult<Completion>) -> TsmResult<Completion> {
        match outcome {
            // The device failed the operation: what an integrator looks for first.
            Err(
                e @ (Error::DeviceUnresponsive | Error::DeviceRefused | Error::DeviceMalformed),
            ) => log::warn!("TDI {tdi:?}: device fault: {e}"),
            Err(e) => log::debug!("TDI {tdi:?}: device response refused: {e}"),
            Ok(_) => {}
        }
        outcome
    }

    /// [`Tsm::device_response`] without its log line, creating the DMA context at a bind's end
    /// and filling it when `fill` is given ([`Tsm::device_response_binding`]; called at most
    /// once).
    fn take_response(
        &self,
        tdi: TdiId,
        response: Option<&[u8]>,
        out: &mut [u8],
        fill: Option<&mut BindFill<'_, T>>,
    ) -> TsmResult<Completion> {
        let (mut dev_slot, mut slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_mut().ok_or(Error::InvalidHandle)?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        check_relay_buffer(out)?;
        let ex = record.exchange.ok_or(Error::NoExchange)?;
        let consistent = match (ex.op, record.state) {
            (DeviceOp::Bind { .. }, TdiState::Unbound) => true,
            (DeviceOp::Start { guest }, TdiState::Locked { owner }) => guest == owner,
            (DeviceOp::Check, TdiState::Locked { .. } | TdiState::Run { .. }) => true,
            (
                DeviceOp::Stop { .. },
                TdiState::Unbinding {
                    step: UnbindStep::Stop,
                    ..
                },
            ) => true,
            _ => false,
        };
        if !consistent {
            return Err(Error::Inconsistent);
        }
        let guest = match ex.op {
            DeviceOp::Bind { guest, .. } => guest,
            _ => record.state.owner().ok_or(Error::Inconsistent)?,
        };
        // Only the answer that can complete a report can claim ranges: it alone takes the
        // ownership copies for writing; every other answer reads its guest's copy (an unbind's
        // release writes them at its end). A portion that cannot be the last (more than one
        // portion of the report still to come) does not take them.
        let claim = matches!(
            ex.op,
            DeviceOp::Bind {
                step: BindStep::Report { .. },
                ..
            }
        ) && dev
            .report_read
            .as_ref()
            .filter(|r| r.tdi == tdi)
            .is_none_or(|r| r.report.may_end_with(usize::from(REPORT_PORTION)));
        let mut locks = self.lock_for_unbind(guest, claim)?;
        let mut transport = self.transport_of(record.device)?;

        let Some(bytes) = response else {
            let attempts = ex.attempts.saturating_add(1);
            if attempts < MAX_ATTEMPTS {
                let again = Exchange { attempts, ..ex };
                let n = transport.request(record, &again, out)?;
                record.exchange = Some(again);
                return Ok(Completion::Relay(n));
            }
            // The device stays silent: the operation ends, leaving the TDI as it was.
            return match ex.op {
                DeviceOp::Bind {
                    step: BindStep::Undo { error },
                    ..
                } => {
                    Self::abandon_bind(dev, tdi, record, BindStep::Undo { error });
                    Err(error)
                }
                DeviceOp::Bind {
                    guest,
                    serial,
                    step,
                } => Self::fail_bind(
                    dev,
                    tdi,
                    record,
                    (guest, serial),
                    step,
                    Error::DeviceUnresponsive,
                    &mut transport,
                    out,
                ),
                _ => {
                    record.exchange = None;
                    Err(Error::DeviceUnresponsive)
                }
            };
        };
        let mut msg = [0u8; MAX_MESSAGE_BYTES];
        let n = transport.open(record.iface, &ex, bytes, &mut msg)?;
        let msg = msg.get(..n).ok_or(Error::Inconsistent)?;
        let answer = transport.decode(record.iface, &ex, msg);
        match ex.op {
            DeviceOp::Bind {
                guest,
                serial,
                step,
            } => {
                let target = (guest, serial);
                let next = match (step, answer) {
                    // The undoing STOP ends the bind with its status, whatever the answer.
                    (BindStep::Undo { error }, answer) => {
                        let stopped = matches!(answer, Ok(Response::Stop));
                        Self::abandon_bind(dev, tdi, record, step);
                        record.unlock_first = !stopped;
                        return Err(error);
                    }
                    // Whatever the device says to the unlocking STOP, LOCK will tell.
                    (BindStep::Unlock, _) => Ok(Some(BindStep::Version)),
                    (BindStep::Version, Ok(Response::Version(v))) => {
                        if v.contains(&TDISP_VERSION_1_0) {
                            Ok(Some(BindStep::Capabilities))
                        } else {
                            Err(Error::DeviceMalformed)
                        }
                    }
                    (BindStep::Capabilities, Ok(Response::Capabilities(c))) => {
                        if c.lock_interface_flags_supported.get() & LOCK_FLAG_NO_FW_UPDATE != 0 {
                            // The offset is derived when the exchange begins.
                            Ok(Some(BindStep::Lock { offset: 0 }))
                        } else {
                            Err(Error::DeviceRefused)
                        }
                    }
                    (BindStep::Lock { offset }, Ok(Response::Lock(nonce))) => {
                        record.nonce = Some(nonce);
                        record.mmio_offset = Some(offset);
                        Ok(Some(BindStep::Report { offset: 0 }))
                    }
                    (BindStep::Report { offset }, Ok(Response::Report { portion, remainder })) => {
                        Self::take_portion(dev, tdi, offset, portion, remainder)
                    }
                    (_, Err(fault)) => Err(fault.into()),
                    (_, Ok(_)) => Err(Error::DeviceMalformed),
                };
                let next = match next {
                    // The whole report is in: bind, or refuse it.
                    Ok(None) => match Self::finish_bind(
                        dev,
                        tdi,
                        record,
                        target,
                        &self.reserved,
                        &mut locks,
                        &transport,
                    ) {
                        Ok(()) => {
                            if let Some(fill) = fill.filter(|_| T::DMA_CONTEXT_AT_BIND) {
                                // The context exists, made in this lock (the table makes it at
                                // bind): see `device_response_binding` for a fill that fails.
                                fill(&mut *locks.table, guest, record.iface)
                                    .map_err(|_| Error::Inconsistent)?;
                            }
                            return Ok(Completion::Done);
                        }
                        Err(e) => Err(e),
                    },
                    other => other,
                };
                match next {
                    Ok(Some(next)) => {
                        Self::continue_bind(dev, tdi, record, target, next, &mut transport, out)
                    }
                    Ok(None) => Err(Error::Inconsistent),
                    Err(e) => {
                        Self::fail_bind(dev, tdi, record, target, step, e, &mut transport, out)
                    }
                }
            }
            DeviceOp::Start { guest } => {
                record.exchange = None;
                match answer {
                    Ok(Response::Start) => {
                        record.state = transition(record.state, Event::Start(guest))?;
                        Ok(Completion::Done)
                    }
                    // A device that refuses or garbles START cannot be trusted with the guest.
                    failed => {
                        let fault = match failed {
                            Err(fault) => Error::from(fault),
                            Ok(_) => Error::DeviceMalformed,
                        };
                        record.state = transition(record.state, Event::DeviceError)?;
                        // The fault is the status; blocking, and the invalidation's request,
                        // resume on the next call that continues the teardown (ERROR, check,
                        // unbind), which reports any refusal of theirs as its own status. A
                        // refusal here is logged, not dropped.
                        if let Err(e) =
                            Self::continue_blocking(tdi, record, &locks.owners, &mut *locks.table)
                        {
                            log::warn!("TDI {tdi:?}: blocking after the refused START: {e}");
                        }
                        Err(fault)
                    }
                }
            }
            DeviceOp::Check => {
                record.exchange = None;
                let said = match answer {
                    Ok(Response::State(s)) => s,
                    Ok(_) => return Err(Error::DeviceMalformed),
                    Err(fault) => return Err(fault.into()),
                };
                record.device_state = Some(said);
                let agrees = matches!(
                    (record.state, said),
                    (TdiState::Locked { .. }, TdispState::ConfigLocked)
                        | (TdiState::Run { .. }, TdispState::Run)
                );
                if !agrees {
                    let next = transition(record.state, Event::DeviceError)?;
                    log::warn!(
                        "TDI {tdi:?} ({}): the device says {said:?} while the TDI is {:?}",
                        record.iface,
                        record.state
                    );
                    record.state = next;
                }
                Self::continue_blocking(tdi, record, &locks.owners, &mut *locks.table)
            }
            DeviceOp::Stop { confirm } => {
                let stopped = match (confirm, answer) {
                    (false, Ok(Response::Stop))
                    | (true, Ok(Response::State(TdispState::ConfigUnlocked))) => Ok(()),
                    // STOP of an interface a reset already unlocked: done if the device says so.
                    (false, Err(DeviceFault::Refused))
                        if matches!(
                            transport.last_error(),
                            Some(WireError::Refused {
                                code: error_code::INVALID_INTERFACE_STATE,
                                ..
                            })
                        ) =>
                    {
                        // The STOP exchange ended; the state query is a new one.
                        record.exchange = None;
                        return transport.begin(record, DeviceOp::Stop { confirm: true }, out);
                    }
                    (true, Ok(Response::State(_))) => Err(Error::DeviceRefused),
                    (_, Err(fault)) => Err(fault.into()),
                    (_, Ok(_)) => Err(Error::DeviceMalformed),
                };
                record.exchange = None;
                stopped?;
                record.forget_lock();
                let owner = record.state.owner().ok_or(Error::Inconsistent)?;
                Self::run_unbind(locks, tdi, record, owner, UnbindStep::Stop, None)
            }
        }
    }

    /// Sends the bind's next request.
    fn continue_bind(
        dev: &mut Device,
        tdi: TdiId,
        record: &mut Tdi,
        (guest, serial): (GuestId, u64),
        step: BindStep,
        transport: &mut Requester<S>,
        out: &mut [u8],
    ) -> TsmResult<Completion> {
        let op = DeviceOp::Bind {
            guest,
            serial,
            step,
        };
        match transport.begin(record, op, out) {
            Ok(relay) => Ok(relay),
            Err(e) => {
                Self::abandon_bind(dev, tdi, record, step);
                Err(e)
            }
        }
    }

    /// The bind at `step` fails with `error`. Once LOCK was sent the device may hold the
    /// interface locked: STOP_INTERFACE undoes it first (`Relay`), and the bind ends with
    /// `error` after the device's answer. Before LOCK it ends now.
    #[allow(clippy::too_many_arguments)]
    fn fail_bind(
        dev: &mut Device,
        tdi: TdiId,
        record: &mut Tdi,
        target: (GuestId, u64),
        step: BindStep,
        error: Error,
        transport: &mut Requester<S>,
        out: &mut [u8],
    ) -> TsmResult<Completion> {
        match step {
            BindStep::Lock { .. } | BindStep::Report { .. } => {
                match Self::continue_bind(
                    dev,
                    tdi,
                    record,
                    target,
                    BindStep::Undo { error },
                    transport,
                    out,
                ) {
                    Ok(relay) => Ok(relay),
                    Err(_) => Err(error),
                }
            }
            _ => {
                Self::abandon_bind(dev, tdi, record, step);
                Err(error)
            }
        }
    }

    /// Adds a report portion to the device's report read; `None` once the report is whole
    /// (the caller finishes the bind), else the next step.
    fn take_portion(
        dev: &mut Device,
        tdi: TdiId,
        offset: u16,
        portion: &[u8],
        remainder: u16,
    ) -> TsmResult<Option<BindStep>> {
        let read = dev
            .report_read
            .as_mut()
            .filter(|r| r.tdi == tdi)
            .ok_or(Error::Inconsistent)?;
        if read.report.offset() != usize::from(offset) {
            return Err(Error::Inconsistent);
        }
        if portion.len() > usize::from(REPORT_PORTION) {
            return Err(Error::DeviceMalformed);
        }
        match read.report.accept(portion, remainder) {
            Ok(true) => Ok(None),
            // Each accepted portion adds at least one byte and the total is capped, so the
            // read ends within MAX_REPORT_BYTES rounds.
            Ok(false) => Ok(Some(BindStep::Report {
                offset: u16::try_from(read.report.offset()).map_err(|_| Error::DeviceMalformed)?,
            })),
            Err(_) => Err(Error::DeviceMalformed),
        }
    }

    /// The report is whole: check it and bind (with the TDI's DMA context, `Pending`, on a
    /// table that makes it then: [`SecureTable::DMA_CONTEXT_AT_BIND`]), or refuse with nothing
    /// bound.
    fn finish_bind(
        dev: &mut Device,
        tdi: TdiId,
        record: &mut Tdi,
        (guest, serial): (GuestId, u64),
        reserved: &ReservedMemory,
        locks: &mut UnbindLocks<'_, T, SHARDS>,
        transport: &Requester<S>,
    ) -> TsmResult<()> {
        let create = T::DMA_CONTEXT_AT_BIND;
        // The LOCK that this report answers gave the offset: a bind past LOCK always has one.
        let offset = record.mmio_offset.ok_or(Error::Inconsistent)?;
        let (reported, digest) = {
            let read = dev
                .report_read
                .as_ref()
                .filter(|r| r.tdi == tdi)
                .ok_or(Error::Inconsistent)?;
            let bytes = read.report.bytes();
            let parsed = DeviceInterfaceReport::parse(bytes, offset)?;
            (parsed.reported_ranges(), transport.report_digest(bytes))
        };
        // A TDI with no MMIO would be bound owning nothing: the guest could accept no page,
        // and a device never given a report looks exactly like this. Refused as the report's
        // other faults are: the caller undoes the LOCK with STOP_INTERFACE.
        if reported.is_empty() {
            return Err(Error::EmptyReport);
        }
        if dev.stream == IdeStream::Cut {
            return Err(Error::StreamCut);
        }
        // The guest the bind was started for, not another created in its slot since.
        let guest_record = locks
            .guest
            .as_mut()
            .filter(|g| g.serial == serial)
            .ok_or(Error::InvalidHandle)?;
        let next = transition(record.state, Event::Bind(guest))?;
        let bound = guest_record
            .bound_tdis
            .checked_add(1)
            .ok_or(Error::Inconsistent)?;
        Self::check_report(dev, reserved, &reported)?;
        let owners = locks.owners.claiming()?;
        let table = &mut *locks.table;
        owners.apply(|o| {
            // The claim built aside first, every refusal of it there; then the context (a
            // create refused leaves nothing claimed), then the commit, which cannot refuse a
            // claim built from the table as it is: no context is ever made for a TDI that
            // stays unbound.
            let claim = o.prepare_claim(tdi, guest, &reported)?;
            if create {
                Self::create_context(table, guest, record)?;
            }
            o.commit(claim)
        })?;
        guest_record.bound_tdis = bound;
        record.state = next;
        record.exchange = None;
        record.unlock_first = false;
        record.report_digest = Some(digest);
        dev.report_read = None;
        Ok(())
    }

    // ---- host requests on private pages -------------------------------------------------

    /// The host asks to remove the private leaf at `gpa` (TDX: TDH.MMIO.UNMAP /
    /// TDH.MEM.PAGE.REMOVE). A leaf of a bound TDI is refused with `TdiBound` while its device
    /// can still reach the guest with TEE traffic; once the device cannot (the TDI's unbind
    /// is past STOP, or its device's IDE stream is cut) the host may tear the leaf down
    /// itself, in the secure table's block -> track -> remove order, as the TDX host does
    /// after unbinding ([`Tsm::host_may_tear_down`]). Unbind removes whatever leaves the
    /// host left. A leaf blocked before a track whose flush (`TlbFlushPending`) or domain
    /// invalidation (`IotlbNotTracked`, TDX) is not done stays, nothing changed.
    /// Returns the host page the removed leaf mapped (TDX returns it in R8).
    pub fn host_unmap(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<Hpa> {
        self.host_leaf_request(guest, gpa, size, |t| t.remove(guest, gpa, size))
    }

    /// The host asks to block the private leaf at `gpa` (TDX: TDH.MMIO.BLOCK /
    /// TDH.MEM.RANGE.BLOCK). Refused with `TdiBound` for a bound TDI's leaf while its device
    /// can still reach the guest (a block the host could not follow with an unmap would leave
    /// the guest with a dead page); allowed once it cannot, as for [`Tsm::host_unmap`].
    pub fn host_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        self.host_leaf_request(guest, gpa, size, |t| t.block(guest, gpa, size))
    }

    /// The host advances the guest's TLB epoch (TDX: TDH.MEM.TRACK).
    /// `Resumable` when the platform did bounded work the advance needs first (see
    /// [`SecureTable::track`]): call again. Refused, nothing changed: the previous flush not
    /// done (`TlbFlushPending`), or the guest's domain invalidation the previous track owes
    /// not done (`IotlbNotTracked`, TDX).
    pub fn host_track(&self, guest: GuestId) -> TsmResult<Completion> {
        let slot = self.guests.lock(guest.slot())?;
        slot.as_ref().ok_or(Error::InvalidHandle)?;
        let mut table = self.table_of(guest)?;
        Ok(table.track(guest)?)
    }

    /// Whether the host may block and remove the leaves of a bound TDI in `state` on a device
    /// whose stream is `stream`: only once the device can no longer send TEE traffic for the
    /// guest, because STOP_INTERFACE was acknowledged (the unbind is past its Stop step) or
    /// the firmware cut the device's IDE stream. Before that (CONFIG_LOCKED, RUN, ERROR, an
    /// unbind still blocking or waiting for STOP) the leaves are the firmware's alone.
    pub fn host_may_tear_down(state: TdiState, stream: IdeStream) -> bool {
        match state {
            TdiState::Unbinding {
                step:
                    UnbindStep::Track | UnbindStep::Remove(_) | UnbindStep::Dma | UnbindStep::Release,
                ..
            } => true,
            s => s.is_bound() && stream == IdeStream::Cut,
        }
    }

    fn host_leaf_request<R>(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
        act: impl FnOnce(&mut T) -> Result<R, crate::secure_table::TableError>,
    ) -> TsmResult<R> {
        // Which TDI owns the leaf decides; its record comes before the guest in lock order, so
        // a first look finds it, and the request then runs with every lock in order.
        let owner = {
            let slot = self.guests.lock(guest.slot())?;
            slot.as_ref().ok_or(Error::InvalidHandle)?;
            if !gpa.is_aligned(size) {
                return Err(Error::Misaligned);
            }
            let owners = self.read_owners(Some(guest))?;
            let table = self.table_of(guest)?;
            let leaf = table.leaf(guest, gpa).ok_or(Error::NotMapped)?;
            owners.holding(leaf.hpa, leaf.size).map(|o| o.tdi)
        };
        let Some(tdi) = owner else {
            let slot = self.guests.lock(guest.slot())?;
            slot.as_ref().ok_or(Error::InvalidHandle)?;
            let owners = self.read_owners(Some(guest))?;
            let mut table = self.table_of(guest)?;
            return Self::leaf_request(&owners, &mut table, guest, gpa, size, None, act);
        };
        let (dev_slot, tdi_slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let record = tdi_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let slot = self.guests.lock(guest.slot())?;
        slot.as_ref().ok_or(Error::InvalidHandle)?;
        let owners = self.read_owners(Some(guest))?;
        let mut table = self.table_of(guest)?;
        let allowed = Self::host_may_tear_down(record.state, dev.stream).then_some(tdi);
        Self::leaf_request(&owners, &mut table, guest, gpa, size, allowed, act)
    }

    /// The leaf request with every lock held: a leaf owned by any TDI but `torn_down` (the
    /// TDI whose leaves the host may tear down, if any) is `TdiBound`.
    fn leaf_request<R>(
        owners: &Ownership,
        table: &mut T,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
        torn_down: Option<TdiId>,
        act: impl FnOnce(&mut T) -> Result<R, crate::secure_table::TableError>,
    ) -> TsmResult<R> {
        let leaf = table.leaf(guest, gpa).ok_or(Error::NotMapped)?;
        if let Some(o) = owners.holding(leaf.hpa, leaf.size)
            && Some(o.tdi) != torn_down
        {
            return Err(Error::TdiBound);
        }
        if leaf.gpa != gpa || leaf.size != size {
            return Err(Error::SizeMismatch);
        }
        Ok(act(table)?)
    }

    /// The host is about to zap its mappings of `range` (a BAR) and reset or power the device:
    /// allowed only when no page of it belongs to a bound TDI. All or nothing: a range that is
    /// only partly bound is refused whole.
    pub fn host_zap(&self, range: MmioRange) -> TsmResult<()> {
        let owners = self.read_owners(None)?;
        if owners.overlapping_private(&range).is_some() {
            return Err(Error::TdiBound);
        }
        // A leaf of any guest: every shard, each locked in shard order.
        let tables = self.lock_all_tables()?;
        if tables
            .iter()
            .any(|t| t.next_leaf(range, range.base()).is_some())
        {
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

    /// The bound TDI whose report shares a byte with the page at `hpa` of `size` (private or
    /// shared range), if any: what a platform whose host names no TDI in a map request (TDX's
    /// TDH.MMIO.MAP) asks before mapping. One lookup under the ownership lock (shard 0's copy;
    /// [`Tsm::owner_for`] reads a guest's own).
    pub fn owner_of(&self, hpa: Hpa, size: PageSize) -> TsmResult<Option<TdiId>> {
        let page = MmioRange::try_new(hpa, size.base_pages())?;
        let owners = self.read_owners(None)?;
        Ok(owners.overlapping(&page).map(|o| o.tdi))
    }

    /// [`Tsm::owner_of`] for a map into `guest`: reads `guest`'s shard's copy of the ownership
    /// table, so the look-ups of maps into guests of different shards share no lock.
    pub fn owner_for(&self, guest: GuestId, hpa: Hpa, size: PageSize) -> TsmResult<Option<TdiId>> {
        let page = MmioRange::try_new(hpa, size.base_pages())?;
        let owners = self.read_owners(Some(guest))?;
        Ok(owners.overlapping(&page).map(|o| o.tdi))
    }

    /// The private ranges `tdi` owns (empty when unbound).
    pub fn owned_ranges(
        &self,
        tdi: TdiId,
    ) -> TsmResult<heapless::Vec<MmioRange, MAX_RANGES_PER_TDI>> {
        let owners = self.read_owners(None)?;
        Ok(owners.private_of(tdi).take(MAX_RANGES_PER_TDI).collect())
    }

    /// The leaf of `guest` covering `gpa`.
    pub fn leaf(&self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        Ok(self.table_of(guest)?.leaf(guest, gpa))
    }

    /// Runs `f` on the secure table holding `guest`'s leaves (its shard), under the rule of
    /// [`Tsm::with_table`].
    pub fn with_guest_table<R>(&self, guest: GuestId, f: impl FnOnce(&mut T) -> R) -> TsmResult<R> {
        Ok(f(&mut *self.table_of(guest)?))
    }

    /// Every shard's lock, taken in shard order.
    fn lock_all_tables(&self) -> TsmResult<[MutexGuard<'_, T>; SHARDS]> {
        let mut guards: heapless::Vec<_, SHARDS> = heapless::Vec::new();
        for shard in &self.tables {
            // Cannot fail: one guard per shard.
            guards
                .push(try_lock(shard, Operand::SecureTable)?)
                .map_err(|_| Error::Inconsistent)?;
        }
        guards.into_array().map_err(|_| Error::Inconsistent)
    }

    /// Runs `f` on the requester (and secure session) `device` relays through.
    pub fn with_device_transport<R>(
        &self,
        device: DeviceId,
        f: impl FnOnce(&mut Requester<S>) -> R,
    ) -> TsmResult<R> {
        Ok(f(&mut *self.transport_of(device)?))
    }

    /// Drifts every ownership copy alike ([`Ownership::drift_index_for_test`]): the copies
    /// still agree, so what refuses is the claim's own check.
    #[cfg(test)]
    pub(crate) fn drift_ownership_for_test(&self) {
        for copy in &self.owners.copies {
            copy.write().drift_index_for_test();
        }
    }

    /// Sets a TDI record's DMA context state: makes the drift a test must show is caught.
    #[cfg(test)]
    pub(crate) fn set_dma_for_test(&self, tdi: TdiId, dma: Option<crate::dma::DmaState>) {
        if let Ok(mut slot) = self.tdis.lock(tdi.slot())
            && let Some(record) = slot.as_mut()
        {
            record.dma = dma;
        }
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
                let _g = OwnersWrite::try_lock(&self.owners).unwrap();
                f()
            }
            // One shard with a slot, every shard without.
            Operand::SecureTable => {
                let _g: Vec<_> = match slot {
                    Some(s) => {
                        let shard = self.tables.get(usize::from(s)).unwrap();
                        vec![try_lock(shard, operand).unwrap()]
                    }
                    None => self.lock_all_tables().unwrap().into(),
                };
                f()
            }
            Operand::Transport => {
                let _g: Vec<_> = self
                    .transports
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| slot.is_none_or(|s| usize::from(s) == *i))
                    .map(|(_, t)| try_lock(t, operand).unwrap())
                    .collect();
                f()
            }
        }
    }

    /// Reads `guest`'s copy of the ownership table while `f` runs, as a CPU's map or host
    /// request for it does: tests
    /// show what other operations do beside a reader. Panics if a writer holds it.
    #[cfg(test)]
    pub(crate) fn read_owners_while<R>(&self, guest: GuestId, f: impl FnOnce() -> R) -> R {
        let _r = self.read_owners(Some(guest)).unwrap();
        f()
    }

    /// A copy of every table; `Busy` if any lock is held.
    pub fn snapshot(&self) -> TsmResult<Snapshot<T, SHARDS>>
    where
        T: Clone,
    {
        self.snapshot_with(T::clone)
    }

    /// A copy of every record table, with each secure table shard seen through `image` (its
    /// bytes, for a table that cannot be cloned); `Busy` if any lock is held.
    pub fn snapshot_with<U>(&self, image: impl FnMut(&T) -> U) -> TsmResult<Snapshot<U, SHARDS>> {
        // Built in place: a snapshot is large, and a debug build copies every local it moves.
        Ok(Snapshot {
            claims: try_lock(&self.claims, Operand::DeviceTable)?.clone(),
            devices: self.devices.copy_all()?,
            tdis: self.tdis.copy_all()?,
            guests: self.guests.copy_all()?,
            owners: self.owners_image()?,
            tables: self.table_images(image)?,
        })
    }

    /// The ownership table: shard 0's copy, once every copy was seen to be the same
    /// (`Inconsistent` otherwise).
    fn owners_image(&self) -> TsmResult<Ownership> {
        let first = self.read_owners(None)?;
        for copy in self.owners.copies.iter().skip(1) {
            let copy = copy.try_read().ok_or(Error::Busy(Operand::Ownership))?;
            if *copy != *first {
                return Err(Error::Inconsistent);
            }
        }
        Ok(first.clone())
    }

    /// Every shard seen through `image`, in shard order, all locked at once.
    fn table_images<U>(&self, image: impl FnMut(&T) -> U) -> TsmResult<[U; SHARDS]> {
        let mut image = image;
        Ok(self.lock_all_tables()?.each_ref().map(|t| image(t)))
    }
}

/// `RelayBufferTooSmall` unless `out` holds any request the firmware sends.
fn check_relay_buffer(out: &[u8]) -> TsmResult<()> {
    if out.len() < MAX_RELAY_BYTES {
        return Err(Error::RelayBufferTooSmall);
    }
    Ok(())
}
