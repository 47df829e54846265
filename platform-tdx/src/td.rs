//! TD teardown as the Linux host performs it (KVM `tdx_mmu_release_hkid` and
//! `tdx_reclaim_td_control_pages`, torvalds/linux `arch/x86/kvm/vmx/tdx.c` @a4a508df):
//! TDH.MNG.VPFLUSHDONE, TDH.PHYMEM.CACHE.WB (looped while INTERRUPTED_RESUMABLE),
//! TDH.MNG.KEY.FREEID, then TDH.PHYMEM.PAGE.RECLAIM of the TDR and TDH.PHYMEM.PAGE.WBINVD of
//! it. Linux issues TDH.VP.FLUSH per vCPU first; this firmware models no vCPUs and no TDCS
//! pages (the TD lives in the firmware's own memory, the TDR page is the only control page),
//! so VP.FLUSH has no leaf here, VPFLUSHDONE never answers FLUSHVP_NOT_DONE, and the TDR has
//! no child pages but the TDIs created for the TD (RECLAIM answers TD_ASSOCIATED_PAGES_EXIST
//! while one is).
//!
//! The lifecycle is the TDX module's (intel/tdx-module `td_control_structures.h` @72d8cffb,
//! `td_lifecycle_state_e`): TDH.MNG.CREATE leaves a TD [`TdLife::HkidAssigned`] (the module's
//! KEYS_CONFIGURED is not a separate state here: a created TD is usable at once);
//! VPFLUSHDONE makes it [`TdLife::Blocked`] (TD_BLOCKED: no leaf but the teardown's may use
//! it); a completed CACHE.WB that started after that marks its cache written back;
//! KEY.FREEID makes it [`TdLife::Teardown`] (TD_TEARDOWN, the HKID free for a new TD); and
//! RECLAIM of its TDR forgets it (the core's `destroy_guest`). Every leaf refuses a call out
//! of that order with the module's status and changes nothing.
//!
//! Sources, in full: torvalds/linux a4a508df2aa34f8650afde54ea804321c618f45f; intel/tdx-module
//! 1666adc494dbea5db99895f37125a338c20bec5a (TDX-IO leaves and error codes) and
//! 72d8cffb214b74ae94d75afce36423020f74b47c (TDX 1.5.01: `tdx_api_defs.h`, `pamt_manager.h`,
//! `td_control_structures.h`, `helpers.c`).

use tsm_core::capacity::MAX_GUESTS;
use tsm_core::{Completion, Error, GuestId, Hpa, PageSize, SecureSession};

use crate::abi::{Dispatcher, HostMemory, Outcome, SeamRegs, invalid};
use crate::module::{TdTable, page_held, td_in};
use crate::status::{
    self, OPERAND_ID_RCX, OPERAND_ID_WBCACHE, TDX_INTERRUPTED_RESUMABLE,
    TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_BUSY, TdxStatus,
};

/// TDH.MNG.VPFLUSHDONE (Linux `arch/x86/virt/vmx/tdx/tdx.h` @a4a508df: 19; wrapper
/// `tdh_mng_vpflushdone(td)`, `tdx.c` @a4a508df: RCX the TDR PA, no outputs). Checked as
/// intel/tdx-module `tdh_mng_vpflushdone.c` @1666adc4 does: the TDR (an RCX naming no TD:
/// OPERAND_INVALID + RCX, this firmware's answer for every TDR operand; the module tells a
/// malformed address, one outside its TDMRs and a page that is no TDR apart), then the
/// lifecycle (not HKID_ASSIGNED: `TDX_LIFECYCLE_STATE_INCORRECT`), then no TDX-IO device
/// attached (a TDI bound to the TD,
/// which is also every TD with private MMIO leaves: `TDX_TD_HAS_ATTACHED_DEVICES`; Linux
/// unbinds every TDI before it destroys the VM). The TD is then BLOCKED: no bind, map or
/// other leaf naming it succeeds (`TDX_TD_KEYS_NOT_CONFIGURED`).
pub const TDH_MNG_VPFLUSHDONE: u16 = 19;
/// TDH.MNG.KEY.FREEID (Linux tdx.h @a4a508df: 20; `tdh_mng_key_freeid(td)`: RCX the TDR PA).
/// intel/tdx-module `tdh_mng_key_freeid.c` @1666adc4: the TDR as VPFLUSHDONE, then not
/// BLOCKED: `TDX_LIFECYCLE_STATE_INCORRECT`; no TDH.PHYMEM.CACHE.WB completed since
/// VPFLUSHDONE: `TDX_WBCACHE_NOT_COMPLETE`. The HKID is then free for TDH.MNG.CREATE and the
/// TD in TEARDOWN.
pub const TDH_MNG_KEY_FREEID: u16 = 20;
/// TDH.PHYMEM.PAGE.RECLAIM (Linux tdx.h @a4a508df: 28; `tdh_phymem_page_reclaim(page, *pt,
/// *owner, *size)`: RCX the page's PA; out RCX the page type, RDX its owner, R8 its size).
/// intel/tdx-module `tdh_phymem_page_reclaim.c` @1666adc4: RCX unaligned, with KeyID bits or
/// at or past 2^52: OPERAND_INVALID + RCX; outside host memory: OPERAND_ADDR_RANGE_ERROR +
/// RCX; a page that is no TDR (free, a TDI's private page, SPDM or IDE metadata: the module's
/// PT_NDA, or its TDX Connect metadata types it refuses the same way):
/// PAGE_METADATA_INCORRECT + RCX; a TD not in TEARDOWN: `TDX_LIFECYCLE_STATE_INCORRECT`. The
/// TDR page reclaimed: the core forgets the TD, the TDR PA names none (it may be given to
/// TDH.MNG.CREATE again), out RCX [`PT_TDR`], RDX [`TDR_OWNER`], R8 [`PAGE_SIZE_4K`].
pub const TDH_PHYMEM_PAGE_RECLAIM: u16 = 28;
/// TDH.PHYMEM.CACHE.WB (Linux tdx.h @a4a508df: 40; `tdh_phymem_cache_wb(resume)`: RCX 0 to
/// start, 1 to resume). Platform-wide. KVM's `smp_func_do_phymem_cache_wb` loops while
/// `TDX_INTERRUPTED_RESUMABLE` (resume = 1) and takes `TDX_NO_HKID_READY_TO_WBCACHE` as done.
/// intel/tdx-module `tdh_phymem_cache_wb.c` @1666adc4: RCX above 1: OPERAND_INVALID + RCX; a
/// start with no TD BLOCKED: `TDX_NO_HKID_READY_TO_WBCACHE` (a warning); a resume with no
/// interrupted write-back: `TDX_WBCACHE_RESUME_ERROR`. A start remembers the BLOCKED TDs and
/// writes back the first of [`CACHE_WB_SUB_BLOCKS`] sub-blocks; every call writes one and
/// answers `TDX_INTERRUPTED_RESUMABLE` until the last, which marks those TDs written back.
pub const TDH_PHYMEM_CACHE_WB: u16 = 40;
/// TDH.PHYMEM.PAGE.WBINVD (Linux tdx.h @a4a508df: 41; `tdh_phymem_page_wbinvd_tdr(td)` and
/// `_hkid(hkid, page)`: RCX `page PA | KeyID << x86_phys_bits`, `mk_keyed_paddr`). Linux
/// issues it for the TDR after RECLAIM and for every TDX Connect metadata page TDH.SPDM.DELETE
/// or TDH.IDE.STREAM.DELETE released (devsec tsm tree `tdx.c` @2c2d99f4). intel/tdx-module
/// `tdh_phymem_page_wbinvd.c` @1666adc4: the KeyID bits are the key, the rest the page:
/// unaligned or at or past 2^52: OPERAND_INVALID + RCX; outside host memory:
/// OPERAND_ADDR_RANGE_ERROR + RCX; a page the firmware holds (a TDR not yet reclaimed, SPDM or
/// IDE metadata not yet released): PAGE_METADATA_INCORRECT + RCX. Otherwise a no-op: this
/// firmware never writes a private page through a key, so there is no cache line to flush.
pub const TDH_PHYMEM_PAGE_WBINVD: u16 = 41;

/// TDH.PHYMEM.CACHE.WB RCX: start a write-back (intel/tdx-module `tdx_api_defs.h` @72d8cffb,
/// `TDH_PHYMEM_CACHEWB_START_CMD`).
pub const CACHE_WB_START: u64 = 0;
/// TDH.PHYMEM.CACHE.WB RCX: resume an interrupted one (same source,
/// `TDH_PHYMEM_CACHEWB_RESUME_CMD`).
pub const CACHE_WB_RESUME: u64 = 1;
/// Sub-blocks one write-back takes, one per call (ours: the module walks the package's
/// `num_of_cached_sub_blocks` and stops at a pending interrupt; two make Linux's resume loop
/// run every time).
pub const CACHE_WB_SUB_BLOCKS: u8 = 2;

/// Where the KeyID sits in a physical address operand (ours: Linux shifts it by
/// `boot_cpu_data.x86_phys_bits`, which MKTME lowers by the KeyID bits; this firmware models a
/// 52-bit address with 4 KeyID bits on top of 48 address bits, above every address the C
/// entry point's host memory, a process's, can have).
pub const KEYID_SHIFT: u32 = 48;
/// The KeyID bits 51:48 of a physical address operand (see [`KEYID_SHIFT`]).
pub const KEYID_MASK: u64 = 0xf << KEYID_SHIFT;
/// The highest private HKID (ours: the TDX module publishes its range as
/// `private_hkid_min/max`, Linux reads it as `tdx_keyid_start`/`nr_tdx_keyids`; 63 is at least
/// the firmware's TD slots, so HKIDs never run out before `GuestTableFull`). HKID 0 is the
/// platform's (TME) key and never private. TDH.MNG.CREATE refuses any other HKID with
/// OPERAND_INVALID + RDX (intel/tdx-module `tdh_mng_create.c`, `is_private_hkid`). Only
/// KeyIDs 0-15 fit the KeyID field of a physical address here ([`KEYID_MASK`]): this
/// firmware keeps no page under a TD's key, so the one keyed address Linux gives it, the
/// PAGE.WBINVD operand, needs no more (the key is not used).
pub const PRIVATE_HKID_MAX: u16 = 63;

/// TDH.PHYMEM.PAGE.RECLAIM RCX out for a TDR page: the PAMT page type PT_TDR (intel/tdx-module
/// `pamt_manager.h` @72d8cffb, `page_type_t`).
pub const PT_TDR: u64 = 4;
/// RDX out for a TDR page: its PAMT owner, 0 (`tdh_mng_create.c` @1666adc4 sets it so).
pub const TDR_OWNER: u64 = 0;
/// R8 out: the page's size, level 0 = 4 KiB (`page_size_api_input_t`).
pub const PAGE_SIZE_4K: u64 = 0;

/// Bytes of a page these leaves name.
const PAGE_BYTES: usize = 4096;

/// Where a TD is in its teardown (the TDX module's `td_lifecycle_state_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdLife {
    /// Created by TDH.MNG.CREATE, its HKID held: every leaf may use it.
    HkidAssigned,
    /// After TDH.MNG.VPFLUSHDONE (TD_BLOCKED): only the teardown leaves name it.
    /// `written_back`: a TDH.PHYMEM.CACHE.WB that started after VPFLUSHDONE completed.
    Blocked {
        /// The HKID's cache lines are written back: KEY.FREEID may free it.
        written_back: bool,
    },
    /// After TDH.MNG.KEY.FREEID (TD_TEARDOWN): the HKID is free, the TDR may be reclaimed.
    Teardown,
}

impl TdLife {
    /// Whether the TD still holds its HKID (a new TD may not take it).
    pub const fn holds_hkid(self) -> bool {
        !matches!(self, TdLife::Teardown)
    }
}

/// The platform's one interrupted TDH.PHYMEM.CACHE.WB (the module keeps one per package;
/// this firmware models one package).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheWb {
    /// The next sub-block to write back; 0: no write-back is interrupted.
    pub next: u8,
    /// The TDs that were BLOCKED when the write-back started, by slot: the core's serial of
    /// the guest in the slot then (a TD made later in a reclaimed TD's slot is not one).
    pub flushed: [Option<u64>; MAX_GUESTS],
}

impl CacheWb {
    /// No write-back in progress.
    pub const fn new() -> Self {
        Self {
            next: 0,
            flushed: [None; MAX_GUESTS],
        }
    }
}

impl Default for CacheWb {
    fn default() -> Self {
        Self::new()
    }
}

/// TDH.MNG.CREATE RDX: a private HKID (bits 15:0, 1..=[`PRIVATE_HKID_MAX`]; bits 63:16
/// reserved); anything else OPERAND_INVALID + RDX.
pub(crate) fn private_hkid(rdx: u64) -> Result<u16, TdxStatus> {
    match u16::try_from(rdx) {
        Ok(h) if (1..=PRIVATE_HKID_MAX).contains(&h) => Ok(h),
        _ => Err(invalid(status::OPERAND_ID_RDX)),
    }
}

/// Whether a TD in `table` that has not freed its key holds `hkid` (TDX_HKID_NOT_FREE).
pub(crate) fn hkid_held(table: &TdTable, hkid: u16) -> bool {
    table
        .iter()
        .flatten()
        .any(|e| e.hkid == hkid && e.life.holds_hkid())
}

/// Whether the TD at `td` may be named by a leaf other than the teardown's: a TD past
/// VPFLUSHDONE is `TDX_TD_KEYS_NOT_CONFIGURED`, as the module's
/// `check_td_in_correct_build_state` (intel/tdx-module `helpers.c` @72d8cffb) answers every
/// leaf that needs a TD whose keys are in use.
pub(crate) fn usable(table: &TdTable, td: GuestId) -> Result<(), TdxStatus> {
    match table.get(usize::from(td.slot())).copied().flatten() {
        Some(e) if e.life == TdLife::HkidAssigned => Ok(()),
        _ => Err(status::TDX_TD_KEYS_NOT_CONFIGURED),
    }
}

impl<S: SecureSession, M: HostMemory, const SHARDS: usize> Dispatcher<'_, '_, S, M, SHARDS> {
    /// The teardown leaves ([`TDH_MNG_VPFLUSHDONE`], [`TDH_MNG_KEY_FREEID`],
    /// [`TDH_PHYMEM_PAGE_RECLAIM`], [`TDH_PHYMEM_CACHE_WB`], [`TDH_PHYMEM_PAGE_WBINVD`]).
    pub(crate) fn td_leaf(
        &self,
        leaf: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let core = |e| Outcome::Core(Err(e));
        let done = || Outcome::Core(Ok(Completion::Done));
        match leaf {
            TDH_PHYMEM_CACHE_WB => return self.cache_wb(r.rcx),
            TDH_PHYMEM_PAGE_WBINVD => {
                // The KeyID bits name the key the page's lines were written with; any is
                // accepted (the module maps the page with it), the rest is the page.
                let page = self.page_operand_4k(r.rcx & !KEYID_MASK).map_err(st)?;
                let tds = self.fw.read_tds().map_err(core)?;
                let pages = self.fw.lock_pages().map_err(core)?;
                let spdm = self.fw.read_spdm().map_err(core)?;
                // Held privately (a TDR, metadata): `page_held` for a shared use.
                if page_held(&tds, &pages, &spdm, page) {
                    return Err(st(
                        status::TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX)
                    ));
                }
                return Ok(done());
            }
            _ => {}
        }
        // VPFLUSHDONE and FREEID name a TD by its TDR, as every leaf of this firmware does: an
        // RCX that names no TD is OPERAND_INVALID + RCX (the module answers a malformed or
        // non-TDR page with its PAMT statuses). RECLAIM names a page: the module's statuses.
        let names_td = leaf != TDH_PHYMEM_PAGE_RECLAIM;
        if !names_td && r.rcx & KEYID_MASK != 0 {
            return Err(st(invalid(OPERAND_ID_RCX)));
        }
        let page = if names_td {
            r.rcx
        } else {
            self.page_operand_4k(r.rcx).map_err(st)?.as_u64()
        };
        let mut tds = self.fw.write_tds().map_err(core)?;
        let Some(td) = td_in(&tds, page) else {
            return Err(st(if names_td {
                invalid(OPERAND_ID_RCX)
            } else {
                status::TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX)
            }));
        };
        let entry = tds
            .get_mut(usize::from(td.slot()))
            .and_then(Option::as_mut)
            .ok_or(core(Error::Inconsistent))?;
        let lifecycle = st(status::TDX_LIFECYCLE_STATE_INCORRECT);
        match leaf {
            TDH_MNG_VPFLUSHDONE => {
                if entry.life != TdLife::HkidAssigned {
                    return Err(lifecycle);
                }
                // Every TD with private MMIO leaves has a bound (or unbinding) TDI: the core
                // counts it until its unbind removed the last leaf.
                if self.tsm.guest(td).map_err(core)?.bound_tdis != 0 {
                    return Err(st(status::TDX_TD_HAS_ATTACHED_DEVICES));
                }
                // Nor a TDI created for the TD with an exchange under way (a bind waiting on
                // the device would otherwise complete after this and bind to a TD whose HKID
                // is about to be freed).
                let pages = self.fw.lock_pages().map_err(core)?;
                for (slot, d) in pages.iter().enumerate() {
                    if !d.is_some_and(|d| d.tdr.is_some_and(|t| t.as_u64() == page)) {
                        continue;
                    }
                    let slot = u16::try_from(slot).map_err(|_| core(Error::Inconsistent))?;
                    let record = self
                        .tsm
                        .tdi(tsm_core::TdiId::from_slot(slot))
                        .map_err(core)?;
                    if record.exchange.is_some() || record.state != tsm_core::TdiState::Unbound {
                        return Err(st(status::TDX_TD_HAS_ATTACHED_DEVICES));
                    }
                }
                drop(pages);
                // The TD stops running: its own IOTLB request (TDG.IQ.INV.REQUEST) ends
                // unwritten, so no later PROCESS writes into memory that goes back to the host
                // (ours: the module skips the write for a fatal TD only).
                self.tsm
                    .with_guest_table(td, |t| t.td_request_cancel(td))
                    .map_err(core)?;
                entry.life = TdLife::Blocked {
                    written_back: false,
                };
            }
            TDH_MNG_KEY_FREEID => match entry.life {
                TdLife::Blocked { written_back: true } => entry.life = TdLife::Teardown,
                TdLife::Blocked {
                    written_back: false,
                } => return Err(st(status::TDX_WBCACHE_NOT_COMPLETE)),
                _ => return Err(lifecycle),
            },
            TDH_PHYMEM_PAGE_RECLAIM => {
                if entry.life != TdLife::Teardown {
                    return Err(lifecycle);
                }
                // A TDI still created for the TD keeps its TDR (the module's TDR child count):
                // the TDR PA could otherwise name a new TD that inherits it.
                let pages = self.fw.lock_pages().map_err(core)?;
                if pages
                    .iter()
                    .flatten()
                    .any(|d| d.tdr.is_some_and(|t| t.as_u64() == page))
                {
                    return Err(st(
                        status::TDX_TD_ASSOCIATED_PAGES_EXIST | u64::from(OPERAND_ID_RCX)
                    ));
                }
                drop(pages);
                // Cannot be refused for a bound TDI (VPFLUSHDONE saw none, and none binds
                // since); contention is the core's `Busy`. The table frees the TD's S-EPT
                // root and retired pages in the same call (`Sept`'s `guest_destroyed`).
                self.tsm.destroy_guest(td).map_err(core)?;
                if let Some(slot) = tds.get_mut(usize::from(td.slot())) {
                    *slot = None;
                }
                out.rcx = PT_TDR;
                out.rdx = TDR_OWNER;
                out.r8 = PAGE_SIZE_4K;
            }
            _ => return Err(st(invalid(status::OPERAND_ID_RAX))),
        }
        Ok(done())
    }

    /// A 4 KiB page operand in RCX: unaligned or at or past 2^52, OPERAND_INVALID + RCX (the
    /// module's `hpa_check_with_pwr_2_alignment`); not a whole page of host memory (the
    /// module's TDMRs), OPERAND_ADDR_RANGE_ERROR + RCX.
    fn page_operand_4k(&self, raw: u64) -> Result<Hpa, TdxStatus> {
        let page = Hpa::try_new(raw).map_err(|_| invalid(OPERAND_ID_RCX))?;
        if !page.is_aligned(PageSize::Size4K) {
            return Err(invalid(OPERAND_ID_RCX));
        }
        self.host
            .probe_read(raw, PAGE_BYTES)
            .map_err(|_| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_RCX))?;
        Ok(page)
    }

    /// The core's serial of the guest in TD slot `slot` (`None`: no guest there).
    fn serial_at(&self, slot: usize) -> Result<Option<u64>, Outcome> {
        let Ok(slot) = u16::try_from(slot) else {
            return Ok(None);
        };
        match self.tsm.guest(GuestId::from_slot(slot)) {
            Ok(g) => Ok(Some(g.serial)),
            Err(Error::InvalidHandle) => Ok(None),
            Err(e) => Err(Outcome::Core(Err(e))),
        }
    }

    /// TDH.PHYMEM.CACHE.WB with command `cmd` ([`TDH_PHYMEM_CACHE_WB`]).
    fn cache_wb(&self, cmd: u64) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        if cmd > CACHE_WB_RESUME {
            return Err(st(invalid(OPERAND_ID_RCX)));
        }
        let mut wb = self
            .fw
            .lock_cache_wb()
            .ok_or(st(TDX_OPERAND_BUSY | u64::from(OPERAND_ID_WBCACHE)))?;
        let mut tds = self.fw.write_tds().map_err(|e| Outcome::Core(Err(e)))?;
        let mut next = if cmd == CACHE_WB_START {
            let mut flushed = [None; MAX_GUESTS];
            for (slot, (f, e)) in flushed.iter_mut().zip(tds.iter()).enumerate() {
                if e.is_some_and(|e| matches!(e.life, TdLife::Blocked { .. })) {
                    *f = self.serial_at(slot)?;
                }
            }
            if flushed.iter().all(Option::is_none) {
                // A warning, not an error: Linux takes it as "another CPU did it".
                return Ok(st(status::TDX_NO_HKID_READY_TO_WBCACHE));
            }
            // A new start drops any interrupted write-back, as the module does.
            *wb = CacheWb { next: 0, flushed };
            0
        } else if wb.next == 0 {
            return Err(st(status::TDX_WBCACHE_RESUME_ERROR));
        } else {
            wb.next
        };
        // One sub-block per call; an interrupt is always pending until the last.
        next = next.saturating_add(1);
        if next < CACHE_WB_SUB_BLOCKS {
            wb.next = next;
            return Ok(st(TDX_INTERRUPTED_RESUMABLE));
        }
        for (slot, (flushed, e)) in wb.flushed.iter().zip(tds.iter_mut()).enumerate() {
            // Only the TD that was flushed when the write-back started, not one made since in
            // its slot.
            let same = flushed.is_some() && *flushed == self.serial_at(slot)?;
            if let Some(e) = e.as_mut().filter(|_| same)
                && let TdLife::Blocked { written_back } = &mut e.life
            {
                *written_back = true;
            }
        }
        *wb = CacheWb::new();
        Ok(Outcome::Core(Ok(Completion::Done)))
    }
}
