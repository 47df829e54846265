//! The firmware object of the TDX back end: the core's [`Tsm`] over the S-EPT and the
//! platform's SPDM session, and what only the TDX ABI keeps beside it: each TDI's function
//! ID, TD and private pages (the TDX module keeps them in the DEVIF's control structure).
//!
//! The firmware never talks to a device. A leaf that needs the device writes the request (a
//! whole DOE object) to the shared page the call named (R8) and answers `TDX_SPDM_REQUEST`;
//! the host relays it to the device's DOE mailbox, puts the answer in a shared page and
//! calls TDH.DEVIF.RESPONSE naming that page (README, "The relay"). The session seals every request and opens every
//! answer: tests and the C prototype use [`tsm_core::ModelSession`]; a real platform plugs in
//! the SPDM session it established with the device (TDH.SPDM.CONNECT).

use core::ops::Deref;

use crossbeam_utils::CachePadded;
use spin::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tsm_core::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS};
use tsm_core::{
    DeviceId, Error, GuestId, Hpa, Operand, RequesterId, ReservedMemory, SecureSession, TdiId, Tsm,
    TsmResult,
};

use crate::link::Link;
use crate::sept::Sept;
use crate::td::{CacheWb, TdLife};

mod replica;

pub(crate) use replica::{AllCopies, TdsWrite};
use replica::{Copies, TdCopies};

/// Bytes of a message page: one 4 KiB page (TDX: every page operand is one), large enough for
/// any request or response the firmware exchanges (`tsm_core::MAX_RELAY_BYTES`).
pub const MESSAGE_PAGE_BYTES: usize = 4096;

/// The three firmware-private pages TDH.DEVIF.CREATE takes (intel/tdx-module TDX-IO
/// @6e66b9d2070aa49562518087160b2c6ae6418555 `tdh_devif_create.c`: R8 the DEVIFCS root page,
/// R9 the TD's and R10 the VMM's TDISP message buffer, all three becoming the TD's metadata).
/// This firmware keeps the TDI in its own memory: it only records the pages, refuses them to
/// every other use until TDH.DEVIF.REMOVE hands them back, and never reads or writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevifPages {
    /// R8: the DEVIFCS page.
    pub devifcs: Hpa,
    /// R9: the TD's TDISP buffer (REMOVE returns it in RCX).
    pub td_buffer: Hpa,
    /// R10: the VMM's TDISP buffer (REMOVE returns it in RDX).
    pub vmm_buffer: Hpa,
}

impl DevifPages {
    /// Whether `page` is one of the three.
    pub fn holds(&self, page: Hpa) -> bool {
        self.devifcs == page || self.td_buffer == page || self.vmm_buffer == page
    }
}

/// Where the request the TD started (TDG.DEVIF.REQUEST) stands: the module's
/// `td_tdisp_req_sts` (AVAILABLE, REQUESTED, PROCESSED; intel/tdx-module TDX-IO @1666adc4
/// `src/common/tdxio/tdisp.c`), its GENERATED folded into REQUESTED (ours: the host may fetch
/// the request again until it answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TdRequest {
    /// The TD may start a request.
    #[default]
    Available,
    /// The TD's START waits for the host to relay it (TDH.DEVIF.REQUEST/RESPONSE `td_flag`).
    Requested,
    /// The device's answer came: the status and RCX TDG.DEVIF.RESPONSE gives the TD.
    Processed {
        /// The outcome's status.
        status: u64,
        /// `devif_rsp_out_t` (0 on a failure).
        out: u64,
    },
}

/// A TDI as TDH.DEVIF.CREATE made it: its TDISP function ID (the name every later leaf uses),
/// the TD it is for, and its private pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevifEntry {
    /// The TDISP function ID (`fucntion_id_t`, bits 31:0 of `devif_id_t` 63:32).
    pub function: u32,
    /// The TDR page of the TD the TDI is for (CREATE's RDX, or TSM.DEVIF.SET_TD's): the only
    /// TD it may be bound to. `None`: created for no TD yet (ours, CREATE RDX 0).
    pub tdr: Option<Hpa>,
    /// R8, R9, R10.
    pub pages: DevifPages,
    /// The TD's own request.
    pub td_request: TdRequest,
}

/// Every TDI's record, indexed by the core's TDI slot (a function has at most one TDI: the
/// table maps function ID -> TDI by a bounded scan).
pub(crate) type PageTable = [Option<DevifEntry>; MAX_TDIS];

/// The slot and record of the TDI of function `function` in `table`.
pub(crate) fn devif_in(table: &PageTable, function: u32) -> Option<(TdiId, DevifEntry)> {
    table.iter().enumerate().find_map(|(slot, e)| {
        let e = (*e)?;
        (e.function == function)
            .then(|| u16::try_from(slot).ok().map(|s| (TdiId::from_slot(s), e)))
            .flatten()
    })
}

/// A TD as the host names it: the physical address of its TDR page (TDH.MNG.CREATE RCX) and
/// the HKID it was created with (RDX). The TD's state lives in the core's guest record; the
/// TDR page itself is host memory the firmware never writes (this firmware keeps the TD in
/// its own memory, the TDX module keeps it in the TDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdEntry {
    /// The TDR page: 4 KiB aligned, a whole page of host memory.
    pub tdr: Hpa,
    /// The TD's private HKID (bits 15:0 of TDH.MNG.CREATE RDX).
    pub hkid: u16,
    /// Where the TD is in its teardown ([`crate::td`]).
    pub life: TdLife,
}

/// Every TD's TDR, indexed by the core's guest slot: the table TDR PA -> [`GuestId`] (a scan
/// of [`MAX_GUESTS`] entries, bounded).
pub(crate) type TdTable = [Option<TdEntry>; MAX_GUESTS];

/// The TD whose TDR page is at `tdr` in `table` (exact match: an address that is not a TDR,
/// misaligned or wider than any address included, names no TD).
pub(crate) fn td_in(table: &TdTable, tdr: u64) -> Option<GuestId> {
    table
        .iter()
        .position(|e| e.is_some_and(|e| e.tdr.as_u64() == tdr))
        .and_then(|slot| u16::try_from(slot).ok())
        .map(GuestId::from_slot)
}

/// SPDM metadata pages one TDH.SPDM.CREATE may hand over (ours: the TDX module publishes its
/// own count as `spdm_mt_page_count`, global metadata field 0x3000000100000002, Linux
/// `tdx_global_metadata` in the devsec tsm tree @2c2d99f4, which this firmware does not
/// model). An HPA_ARRAY_T can name up to 512 pages; more than this is `TDX_OPERAND_INVALID` +
/// RDX.
pub const SPDM_MT_MAX_PAGES: usize = 4;

/// The SPDM metadata pages TDH.SPDM.CREATE handed over, as the firmware recorded them: the
/// array's root page (`None` for a singleton, whose PFN is the one page) and the pages. The
/// firmware only records them (it keeps the device in its own memory): they are in use until
/// TDH.SPDM.DELETE hands them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdmPages {
    /// The root page of a multi-page array (its entries are `pages`).
    pub root: Option<Hpa>,
    /// The metadata pages, in the array's order.
    pub pages: heapless::Vec<Hpa, SPDM_MT_MAX_PAGES>,
}

impl SpdmPages {
    /// Whether `page` is one of these pages or their root.
    pub fn holds(&self, page: Hpa) -> bool {
        self.root == Some(page) || self.pages.contains(&page)
    }
}

/// An SPDM id's record: the DSM function TDH.SPDM.CREATE named, its metadata pages, and the
/// core device once TSM.SPDM.BARS registered the device's BARs (`None` until then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdmEntry {
    /// The device's DSM function (TDH.SPDM.CREATE RCX).
    pub function: RequesterId,
    /// Its metadata pages (TDH.SPDM.CREATE RDX).
    pub metadata: SpdmPages,
    /// The core's device, made by TSM.SPDM.BARS.
    pub device: Option<DeviceId>,
    /// The SPDM session's state and the device's IDE stream (TDH.SPDM.CONNECT,
    /// TDH.IDE.STREAM.CREATE; [`crate::link`]).
    pub link: Link,
}

impl SpdmEntry {
    /// Whether `page` is one of this SPDM id's metadata pages, or of its IDE stream's.
    pub fn holds(&self, page: Hpa) -> bool {
        self.metadata.holds(page)
            || self
                .link
                .stream
                .as_ref()
                .is_some_and(|s| s.metadata.holds(page))
    }
}

/// Every SPDM id's record, indexed by SPDM id.
pub(crate) type SpdmTable = [Option<SpdmEntry>; MAX_DEVICES];

/// Whether the firmware holds `page`: a TD's TDR, an SPDM id's or its IDE stream's metadata,
/// or one of a TDI's private pages (every page it records is private). The one test
/// every leaf that records or writes a host page applies (`TDX_PAGE_METADATA_INCORRECT`, the
/// TDX module's PAMT "not PT_NDA").
pub(crate) fn page_held(tds: &TdTable, pages: &PageTable, spdm: &SpdmTable, page: Hpa) -> bool {
    td_in(tds, page.as_u64()).is_some()
        || spdm.iter().flatten().any(|e| e.holds(page))
        || pages.iter().flatten().any(|p| p.pages.holds(page))
}

/// The TDX back end's firmware: the core over the S-EPT, sealed with session `S`, and each
/// TDI's record ([`DevifEntry`]). Everything of the core is reached through `Deref`; the dispatcher
/// ([`crate::abi::Dispatcher`]) is the only writer of those records.
///
/// # Shards
///
/// With one shard (the default, [`TdxModule::new`]) every TD's S-EPT is in one table behind
/// one lock, as the core's [`Tsm`]. [`TdxModule::sharded`] takes one S-EPT (each over its own
/// frame pool) and one SPDM session per shard: TD slot `i` lives in shard `i % SHARDS`, and the
/// memory leaves of TDs in different shards (TDH.MMIO.MAP, BLOCK, UNMAP, TDH.MEM.TRACK,
/// TDH.MEM.SEPT.RD, TDG.MMIO.ACCEPT) then run side by side, as the TDX module's per-TD locks
/// let them: the TD and SPDM tables are kept once per shard (`module::replica`) and those leaves read
/// only their TD's shard's copies, the core's table and ownership copy of that shard, and the
/// records of their own TD, TDI and device.
///
/// # Lock order
///
/// Every leaf takes a subset, in this order, each with a try-lock (contention is
/// `TDX_OPERAND_BUSY` naming the operand, and changes nothing):
/// CACHE.WB progress -> TD table -> TDI pages -> SPDM table -> the core's locks (its own
/// order). The TD and SPDM tables are read as one copy (the TD's shard's for a leaf naming a
/// TD, shard 0's for a scan) and written as every copy, taken in shard order.
pub struct TdxModule<'m, S, const SHARDS: usize = 1> {
    tsm: Tsm<Sept<'m>, S, SHARDS>,
    /// Taken (try-lock) by every leaf that names a TDI by function ID, creates or removes one,
    /// or may leave a request for the host, and held for the whole leaf, so the TDI a function
    /// ID names cannot change under it. Those leaves all take the core's transport lock too,
    /// so this lock serialises nothing the core does not already; no memory leaf takes it.
    pages: CachePadded<Mutex<PageTable>>,
    /// The TDs by TDR page, one copy per shard. One copy is read (shared) for the whole of
    /// every leaf that names a TD, so the TD a TDR names cannot change under it; every copy is
    /// written by TDH.MNG.CREATE and the teardown leaves ([`crate::td`]). Contended:
    /// `Busy(Guest)`, `TDX_OPERAND_BUSY` + TDR.
    tds: TdCopies<SHARDS>,
    /// The SPDM ids, one copy per shard: read (one copy) by leaves that only look (TDH.MMIO.MAP
    /// its TD's shard's, for the device's IDE stream), written (every copy) by the leaves that
    /// change an SPDM id, for the whole leaf, so the device an SPDM id names cannot change
    /// under it. Contended: `Busy(Device)`.
    spdm: Copies<Option<SpdmEntry>, MAX_DEVICES, SHARDS>,
    /// The platform's interrupted TDH.PHYMEM.CACHE.WB (try-lock, taken before the TD table;
    /// contended: `TDX_OPERAND_BUSY` + WBCACHE).
    cache_wb: Mutex<CacheWb>,
    /// Free slots of each IOMMU's empty trusted invalidation queue
    /// ([`crate::dmar::IQ_SLOTS_ONE_PAGE`] unless [`TdxModule::with_iq_slots`]).
    iq_slots: u16,
}

/// The core's summary; the module's tables are not locked to print it.
impl<S, const SHARDS: usize> core::fmt::Debug for TdxModule<'_, S, SHARDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TdxModule")
            .field("tsm", &self.tsm)
            .finish_non_exhaustive()
    }
}

impl<'m, S, const SHARDS: usize> Deref for TdxModule<'m, S, SHARDS> {
    type Target = Tsm<Sept<'m>, S, SHARDS>;
    fn deref(&self) -> &Self::Target {
        &self.tsm
    }
}

impl<'m, S: SecureSession> TdxModule<'m, S> {
    /// The firmware over `table`, sealing with `session`, reserving no memory (tests).
    pub const fn new(table: Sept<'m>, session: S) -> Self {
        Self::with_reserved(table, session, ReservedMemory::new())
    }

    /// The firmware over `table`, sealing with `session`, refusing `reserved` as MMIO.
    pub const fn with_reserved(table: Sept<'m>, session: S, reserved: ReservedMemory) -> Self {
        Self::from_core(Tsm::with_reserved(table, session, reserved))
    }
}

impl<'m, S: SecureSession, const SHARDS: usize> TdxModule<'m, S, SHARDS> {
    /// The firmware over `tables` and `sessions`, one of each per shard (TD slot `i` in shard
    /// `i % SHARDS`, SPDM devices relaying as the core's [`Tsm::sharded`] says), refusing
    /// `reserved` as MMIO. Each S-EPT must be empty and over a frame pool of its own (a pool
    /// shared by two shards would be written by both under different locks).
    pub fn sharded(
        tables: [Sept<'m>; SHARDS],
        sessions: [S; SHARDS],
        reserved: ReservedMemory,
    ) -> Self {
        Self::from_core(Tsm::sharded(tables, sessions, reserved))
    }

    const fn from_core(tsm: Tsm<Sept<'m>, S, SHARDS>) -> Self {
        Self {
            tsm,
            pages: CachePadded::new(Mutex::new([const { None }; MAX_TDIS])),
            tds: TdCopies::new(),
            spdm: Copies(
                [const { CachePadded::new(RwLock::new([const { None }; MAX_DEVICES])) }; SHARDS],
            ),
            cache_wb: Mutex::new(CacheWb::new()),
            iq_slots: crate::dmar::IQ_SLOTS_ONE_PAGE,
        }
    }

    /// The firmware with `slots` free slots in each IOMMU's empty trusted invalidation queue:
    /// what the host's queue pages give (`pages * 128 - 1`,
    /// [`crate::dmar::IQ_SLOTS_ONE_PAGE`] for one page), set by the host at IOMMU set-up in
    /// the module, which is not modelled here (ours). TDH.DMAR.ADD reserves in it what its
    /// entry may need queued (`TDX_IOMMU_IQ_QUEUE_FULL` + RCX when the unreserved slots are
    /// too few, ours: [`crate::dmar::DmarTable::iq_committed`]); TDH.IQ.INV.REQUEST answers
    /// `TDX_IOMMU_IQ_QUEUE_FULL` + RDX while a request without a reservation has too few.
    #[must_use]
    pub const fn with_iq_slots(mut self, slots: u16) -> Self {
        self.iq_slots = slots;
        self
    }

    /// The free slots of each IOMMU's empty trusted invalidation queue.
    pub const fn iq_slots(&self) -> u16 {
        self.iq_slots
    }

    /// The core.
    pub fn tsm(&self) -> &Tsm<Sept<'m>, S, SHARDS> {
        &self.tsm
    }

    /// The record of the TDI in core slot `tdi` (`None`: TDH.DEVIF.CREATE made none there);
    /// `Busy(Tdi)` while a leaf holds the table.
    pub fn devif(&self, tdi: TdiId) -> TsmResult<Option<DevifEntry>> {
        let table = self.lock_pages()?;
        Ok(table.get(usize::from(tdi.slot())).copied().flatten())
    }

    /// The TDI of TDISP function `function` and its record (`None`: none was created).
    pub fn devif_of(&self, function: u32) -> TsmResult<Option<(TdiId, DevifEntry)>> {
        Ok(devif_in(&*self.lock_pages()?, function))
    }

    /// The TD whose TDR page is at host physical address `tdr` (`None`: no TD has it);
    /// `Busy(Guest)` while TDH.MNG.CREATE or a teardown leaf holds the table.
    pub fn td_of(&self, tdr: u64) -> TsmResult<Option<GuestId>> {
        Ok(td_in(&*self.read_tds_for(tdr)?, tdr))
    }

    /// The TDR page of `guest` (`None`: no TD TDH.MNG.CREATE made has that handle).
    pub fn tdr_of(&self, guest: GuestId) -> TsmResult<Option<TdEntry>> {
        let table = self.tds.read_guest(guest)?;
        Ok(table.get(usize::from(guest.slot())).copied().flatten())
    }

    /// Whether every shard's copy of the TD table and of the SPDM table is the same, and the
    /// TD index matches them (tests: a change is all or nothing); `Busy` while a leaf writes.
    pub fn copies_agree(&self) -> TsmResult<bool> {
        Ok(self.tds.agree()? && self.spdm.agree(Error::Busy(Operand::Device))?)
    }

    /// The TD table, shared, for one leaf naming the TD whose TDR page is at `tdr` (that TD's
    /// shard's copy); `Busy(Guest)` while it is written.
    pub(crate) fn read_tds_for(&self, tdr: u64) -> TsmResult<RwLockReadGuard<'_, TdTable>> {
        self.tds.read_for(tdr)
    }

    /// The TD table, shared, for a leaf that scans it (shard 0's copy); `Busy(Guest)` while it
    /// is written.
    pub(crate) fn read_tds(&self) -> TsmResult<RwLockReadGuard<'_, TdTable>> {
        self.tds.read_shard(0)
    }

    /// The TD table, every copy, for TDH.MNG.CREATE and the teardown leaves; `Busy(Guest)`
    /// while any other leaf holds any copy.
    pub(crate) fn write_tds(&self) -> TsmResult<TdsWrite<'_, SHARDS>> {
        self.tds.write()
    }

    /// The platform's TDH.PHYMEM.CACHE.WB progress; `Busy(Guest)` while a leaf holds it.
    pub fn cache_wb(&self) -> TsmResult<CacheWb> {
        Ok(*self.lock_cache_wb().ok_or(Error::Busy(Operand::Guest))?)
    }

    /// The CACHE.WB progress, for TDH.PHYMEM.CACHE.WB; `None` while another CPU holds it.
    pub(crate) fn lock_cache_wb(&self) -> Option<MutexGuard<'_, CacheWb>> {
        self.cache_wb.try_lock()
    }

    /// The record of SPDM id `id` (`None`: no TDH.SPDM.CREATE made it); `Busy(Device)` while
    /// a leaf changes the table.
    pub fn spdm(&self, id: u64) -> TsmResult<Option<SpdmEntry>> {
        let table = self.read_spdm()?;
        Ok(spdm_in(&table, id).cloned())
    }

    /// The SPDM table, every copy, for one leaf that changes it; `Busy(Device)` while another
    /// CPU's leaf holds any copy.
    pub(crate) fn lock_spdm(
        &self,
    ) -> TsmResult<AllCopies<'_, Option<SpdmEntry>, MAX_DEVICES, SHARDS>> {
        self.spdm.write(Error::Busy(Operand::Device))
    }

    /// The SPDM table, shared, for a leaf that only reads it (shard 0's copy); `Busy(Device)`
    /// while a leaf changes it.
    pub(crate) fn read_spdm(&self) -> TsmResult<RwLockReadGuard<'_, SpdmTable>> {
        self.spdm.read(0, Error::Busy(Operand::Device))
    }

    /// The SPDM table, shared, for a leaf of `guest` (its shard's copy).
    pub(crate) fn read_spdm_for(
        &self,
        guest: GuestId,
    ) -> TsmResult<RwLockReadGuard<'_, SpdmTable>> {
        let shard = usize::from(guest.slot())
            .checked_rem(SHARDS)
            .ok_or(Error::Inconsistent)?;
        self.spdm.read(shard, Error::Busy(Operand::Device))
    }

    /// The TDI table, for one leaf; `Busy(Tdi)` (OPERAND_BUSY on the DEVIF) while
    /// another CPU's leaf holds it.
    pub(crate) fn lock_pages(&self) -> TsmResult<MutexGuard<'_, PageTable>> {
        self.pages.try_lock().ok_or(Error::Busy(Operand::Tdi))
    }
}

/// The record of SPDM id `id` in `table` (an id past the table names none).
pub(crate) fn spdm_in(table: &SpdmTable, id: u64) -> Option<&SpdmEntry> {
    usize::try_from(id)
        .ok()
        .and_then(|i| table.get(i))
        .and_then(Option::as_ref)
}
