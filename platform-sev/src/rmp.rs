//! The reverse map table (RMP) for private MMIO: one entry per 4K host page of an MMIO window,
//! in caller-provided memory, and the [`SecureTable`] the core drives on it.
//!
//! AMD APM Vol. 2 15.36.3 names the RMP fields (Assigned, Page_Size, Immutable, Guest physical
//! address, ASID, Validated); their bit positions are implementation-specific and not
//! architectural, so the layout of [`RmpEntry`] is ours. SEV-TIO adds MMIO pages to the RMP:
//! the `mmio` bit. A leaf of 2M or 1G is recorded in every 4K entry it covers, each naming its
//! own guest page (the "smashed" form; APM: a 1G mapping is backed by 2M RMP entries, so the
//! RMP page size is 2M for both). `blocked`, `leaf_size` and `fence_epoch` are ours: they hold
//! the reclaim state (blocked, fenced, unassigned) the core's unbind walks through.
//!
//! Fences: each ASID counts the fences raised and completed in 64 bits; counting never wraps,
//! and the fence after the 2^64 - 1st is refused (`TableError::OutOfFrames`, the core's
//! `SecureTableFull`) with nothing changed. An entry records the low 32 bits of the count at
//! its block; the full count is the latest one not above the fences raised with those low
//! bits ([`AsidFence::blocked_at`]). That is exact while fewer than 2^32 fences are raised
//! between a block and the removal; after more, it comes out later than the truth, never
//! earlier: a removal may wait for one more fence, it never skips one.
//!
//! Index: a lookup searches instead of scanning the window. Beside the entries (whose bytes
//! stay the hardware structure's) the caller's index memory ([`RmpMemory`]) holds the first
//! entry of every firmware leaf in host-address order and in (ASID, guest frame) order, and
//! every host-assigned entry in (ASID, guest frame) order (`rmp/index.rs`). Finding a leaf by
//! guest or host address, the guest-side overlap check of a map and whether an ASID still
//! names a page are binary searches; a change moves at most the window's page count of 4-byte
//! positions. What is not a search: a map, block or removal reads or writes every entry of its
//! leaf (262144 for a 1G leaf), MMIO_VALIDATE every entry of its range and the host's PSMASH
//! the 512 of its 2M page. The index has room for every page of the window as a 4K leaf or a
//! host page ([`RMP_INDEX_WORDS_PER_PAGE`] words a page, 8 bytes beside each 16-byte entry),
//! so it never refuses what the entries allow; [`Rmp::new`] refuses index memory smaller than
//! that, and a window of more than 2^32 pages.

use bitfield_struct::bitfield;
use tsm_core::capacity::MAX_GUESTS;
use tsm_core::secure_table::{Leaf, LeafState, SecureTable, TableError};
use tsm_core::{Completion, Gpa, GuestId, Hpa, MmioRange, PageSize};

use crate::pfn::{LeafCode, Pfn};
use crate::sdte::{self, Sdte, SdteTable};
use crate::status::SevStatus;
use tsm_core::InterfaceId;
use tsm_core::dma::DmaState;

mod index;
#[cfg(test)]
mod tests;

pub use index::RMP_INDEX_WORDS_PER_PAGE;
use index::{Index, Key, View};

/// RMP `Page_Size` values (APM Vol. 2 15.36.3: 0 = 4K, 1 = 2M).
pub const RMP_PAGE_4K: bool = false;
/// 2M RMP page.
pub const RMP_PAGE_2M: bool = true;

/// One RMP entry (16 bytes, as on hardware; layout ours). Every field takes a type no wider
/// than the field ([`crate::pfn`]; `bool`, and `u32` for the two 32-bit fields), so no setter
/// can be handed a value it would panic on.
#[bitfield(u128)]
#[derive(PartialEq, Eq)]
pub struct RmpEntry {
    /// Assigned to a guest (or the firmware); the host may not write the page.
    pub assigned: bool,
    /// RMP page size: [`RMP_PAGE_4K`] or [`RMP_PAGE_2M`].
    pub page_size: bool,
    /// Only the firmware may change the entry (set for every private MMIO page).
    pub immutable: bool,
    /// The guest has validated the page (MMIO_VALIDATE).
    pub validated: bool,
    /// SEV-TIO: the page is device MMIO, not DRAM.
    pub mmio: bool,
    /// Ours: blocked, no new guest translation (reclaim step 1).
    pub blocked: bool,
    /// Ours: the guest leaf size (0 4K, 1 2M, 2 1G), so a lookup returns the whole leaf.
    #[bits(2)]
    pub leaf_size: LeafCode,
    #[bits(4)]
    __: u8,
    /// Guest page frame number (guest physical address bits 51:12).
    #[bits(40)]
    pub gpa_pfn: Pfn,
    #[bits(12)]
    __: u16,
    /// The guest's ASID.
    pub asid: u32,
    /// Ours: the low 32 bits of the ASID's fence count when the entry was blocked.
    pub fence_epoch: u32,
}

/// The fence state of one guest's ASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsidFence {
    /// 0: no ASID (the guest context is not activated).
    asid: u32,
    /// Fences raised (never wraps: the 2^64th is refused).
    raised: u64,
    /// Fences completed (all TLBs and IOTLBs flushed); never above `raised`.
    done: u64,
    /// Ours: the last fence raised was an sDTE's invalidation (raised once its TDI's last
    /// leaf was blocked) and nothing of the guest (a leaf, a valid sDTE) was blocked since: it
    /// covers every blocked leaf, so the unbind's Track raises no other
    /// (`SecureTable::track_within`). Kept, not derived: who raised the last fence is recorded
    /// nowhere else (the host's fence raised after an sDTE's block leaves the same counters,
    /// sDTE and entries as the sDTE's own; `the_track_raises_no_fence_only_after_the_sdtes_own`).
    dma_fence: bool,
}

/// The low 32 bits of a fence count, as an RMP entry records it.
fn epoch_bits(count: u64) -> u32 {
    u32::try_from(count & u64::from(u32::MAX)).unwrap_or(u32::MAX)
}

impl AsidFence {
    /// The ASID, 0 if none.
    pub fn asid(&self) -> u32 {
        self.asid
    }

    /// Fences raised so far.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Fences completed so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The fence count at which an entry that recorded `bits` was blocked: the latest count
    /// not above `raised` whose low 32 bits are `bits`. Never earlier than the true count (the
    /// true one is such a count too), so a removal that waits for a completed fence past it
    /// never goes early.
    pub fn blocked_at(&self, bits: u32) -> u64 {
        let back = epoch_bits(self.raised).wrapping_sub(bits);
        self.raised
            .checked_sub(u64::from(back))
            .unwrap_or(self.raised)
    }
}

/// What SNP_DECOMMISSION took from a guest: its ASID and fence counters exactly as they were,
/// to give back ([`Rmp::restore_asid`]) should the decommission be refused after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a released ASID is restored if the command is refused"]
pub struct ReleasedAsid {
    slot: usize,
    fence: AsidFence,
}

/// Why the host's own RMP instruction failed. APM Vol. 3 RMPUPDATE / PSMASH return codes
/// (Linux `arch/x86/include/asm/sev.h`): `FAIL_INPUT = 1`, `FAIL_PERMISSION = 2`,
/// `FAIL_INUSE = 3` (and `RMPUPDATE_FAIL_OVERLAP = 7`, which the model never returns: it has
/// no 2M host page to overlap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RmpFault {
    /// Bad operand (unaligned, outside the RMP window). `RMPUPDATE_FAIL_INPUT = 1`.
    Input = 1,
    /// The entry is immutable: only the firmware may change it. `FAIL_PERMISSION = 2`.
    Permission = 2,
    /// The page belongs to a bound TDI (or the 2M page is in use). `FAIL_INUSE = 3`.
    InUse = 3,
}

/// What the host asks RMPUPDATE to write (its own pages only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmpUpdate {
    /// Assign to `asid` at `gpa`, or (`false`) return to the host.
    pub assigned: bool,
    /// ASID to assign to.
    pub asid: u32,
    /// Guest address.
    pub gpa: u64,
    /// RMP page size.
    pub page_size: bool,
}

/// Why a guest's MMIO_VALIDATE of a subrange failed, per page checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateFault {
    /// A page is not assigned to the guest (or is blocked).
    NotAssigned,
    /// A page is not mapped at the expected guest address.
    NotMapped,
    /// The validated bit is not uniform over the subrange (and `force` was not set).
    NotUniform,
}

/// The memory an RMP lives in, the caller's: the entries (the hardware structure, 16 bytes a
/// window page) and the index beside them ([`RMP_INDEX_WORDS_PER_PAGE`] 4-byte words a window
/// page), lent together so the index can be changed while the entries are read.
pub trait RmpMemory {
    /// The entries and the index words.
    fn parts(&self) -> (&[RmpEntry], &[u32]);
    /// The same, writable.
    fn parts_mut(&mut self) -> (&mut [RmpEntry], &mut [u32]);
}

/// [`RmpMemory`] in two pieces: `&'static mut` slices in firmware, `Vec`s in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RmpStore<E, I> {
    /// One entry per window page.
    pub entries: E,
    /// At least [`rmp_index_words`] of the window's page count.
    pub index: I,
}

impl<E, I> RmpStore<E, I> {
    /// The entries and the index memory.
    pub const fn new(entries: E, index: I) -> Self {
        Self { entries, index }
    }
}

impl<E: AsRef<[RmpEntry]> + AsMut<[RmpEntry]>, I: AsRef<[u32]> + AsMut<[u32]>> RmpMemory
    for RmpStore<E, I>
{
    fn parts(&self) -> (&[RmpEntry], &[u32]) {
        (self.entries.as_ref(), self.index.as_ref())
    }

    fn parts_mut(&mut self) -> (&mut [RmpEntry], &mut [u32]) {
        (self.entries.as_mut(), self.index.as_mut())
    }
}

/// The index words a window of `pages` pages needs: [`RMP_INDEX_WORDS_PER_PAGE`] a page
/// (saturating: no memory is that large, and [`Rmp::new`] refuses it).
pub const fn rmp_index_words(pages: usize) -> usize {
    match Index::words_for(pages) {
        Some(w) => w,
        None => usize::MAX,
    }
}

/// The RMP over a window of host MMIO pages: entry `i` is the page at `base + i * 4K`.
/// `S` is the caller's memory, entries and index ([`RmpMemory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rmp<S> {
    base: u64,
    mem: S,
    fences: [AsidFence; MAX_GUESTS],
    /// Tests: the guests whose fences stay pending until released.
    held: [bool; MAX_GUESTS],
    /// How long the index's lists in `mem` are.
    idx: Index,
    /// The secure device table: the trusted DMA contexts ([`crate::sdte`]).
    sdtes: SdteTable,
}

const PAGE: u64 = 4096;

impl<S: RmpMemory> Rmp<S> {
    /// An RMP over one page per entry of `mem` from `base` (4K aligned, wholly below 2^52).
    /// Every entry and index word is cleared: the window starts as the host's.
    /// `RESOURCE_LIMIT` for a window of more than 2^32 pages (16 TiB), past what the index
    /// numbers; `INVALID_LEN` for index memory of fewer than [`rmp_index_words`] words.
    pub fn new(base: Hpa, mut mem: S) -> Result<Self, SevStatus> {
        let (entries, words) = mem.parts();
        let n = entries.len();
        let pages = u64::try_from(n).map_err(|_| SevStatus::INVALID_PARAM)?;
        if pages > index::MAX_WINDOW_PAGES {
            return Err(SevStatus::RESOURCE_LIMIT);
        }
        if Index::words_for(n).is_none_or(|w| words.len() < w) {
            return Err(SevStatus::INVALID_LEN);
        }
        if !base.is_aligned(PageSize::Size4K)
            || pages
                .checked_mul(PAGE)
                .and_then(|b| base.checked_add(b))
                .is_none()
        {
            return Err(SevStatus::INVALID_ADDRESS);
        }
        let (entries, words) = mem.parts_mut();
        entries.fill(RmpEntry::new());
        words.fill(0);
        Ok(Self {
            base: base.as_u64(),
            mem,
            fences: [AsidFence::default(); MAX_GUESTS],
            held: [false; MAX_GUESTS],
            idx: Index::new(n),
            sdtes: SdteTable::new(),
        })
    }

    /// The entries (RMPREAD for tests and the host shim).
    pub fn entries(&self) -> &[RmpEntry] {
        self.mem.parts().0
    }

    /// The index's lists over the entries.
    fn view(&self) -> View<'_> {
        let (entries, words) = self.mem.parts();
        self.idx.view(entries, words)
    }

    /// The secure device table (the trusted DMA contexts).
    pub fn sdtes(&self) -> &SdteTable {
        &self.sdtes
    }

    /// The fence state of every guest slot (index = the core's guest slot).
    pub fn fences(&self) -> &[AsidFence] {
        &self.fences
    }

    /// Whether any byte of `len` bytes from `spa` lies in the window: device MMIO, which the
    /// firmware never uses as memory.
    pub fn overlaps(&self, spa: u64, len: u64) -> bool {
        let window = u64::try_from(self.entries().len())
            .ok()
            .and_then(|n| n.checked_mul(PAGE))
            .unwrap_or(u64::MAX);
        let end = spa.saturating_add(len);
        spa < self.base.saturating_add(window) && end > self.base
    }

    /// The entry of host page `hpa`, if it is in the window.
    pub fn entry(&self, hpa: u64) -> Option<RmpEntry> {
        self.index(hpa).and_then(|i| self.entries().get(i)).copied()
    }

    fn index(&self, hpa: u64) -> Option<usize> {
        let off = hpa.checked_sub(self.base)?;
        if off & (PAGE - 1) != 0 {
            return None;
        }
        let i = usize::try_from(off >> 12).ok()?;
        (i < self.entries().len()).then_some(i)
    }

    /// Indexes of the `pages` entries from `hpa`, if all are in the window.
    fn span(&self, hpa: u64, pages: u64) -> Option<core::ops::Range<usize>> {
        let first = self.index(hpa)?;
        let end = first.checked_add(usize::try_from(pages).ok()?)?;
        (end <= self.entries().len()).then_some(first..end)
    }

    fn hpa_of(&self, i: usize) -> Option<Hpa> {
        let off = u64::try_from(i).ok()?.checked_mul(PAGE)?;
        Hpa::try_new(self.base.checked_add(off)?).ok()
    }

    fn fence(&self, guest: GuestId) -> Result<AsidFence, TableError> {
        match self.fences.get(usize::from(guest.slot())) {
            Some(f) if f.asid != 0 => Ok(*f),
            _ => Err(TableError::UnknownGuest),
        }
    }

    fn guest_of_asid(&self, asid: u32) -> Option<GuestId> {
        let slot = self
            .fences
            .iter()
            .position(|f| f.asid == asid && asid != 0)?;
        u16::try_from(slot).ok().map(GuestId::from_slot)
    }

    /// Takes `guest`'s ASID and fence counters away (SNP_DECOMMISSION): `IN_USE` while an
    /// entry still names the ASID, `INVALID_GUEST` past the table; nothing changes then.
    pub fn release_asid(&mut self, guest: GuestId) -> Result<ReleasedAsid, SevStatus> {
        let slot = usize::from(guest.slot());
        let fence = *self.fences.get(slot).ok_or(SevStatus::INVALID_GUEST)?;
        if fence.asid != 0 && (self.view().asid_in_use(fence.asid) || self.sdtes.holds(guest)) {
            return Err(SevStatus::IN_USE);
        }
        if let Some(f) = self.fences.get_mut(slot) {
            *f = AsidFence::default();
        }
        Ok(ReleasedAsid { slot, fence })
    }

    /// Gives back exactly what [`Rmp::release_asid`] took: the ASID and both fence counters.
    pub fn restore_asid(&mut self, released: ReleasedAsid) {
        if let Some(f) = self.fences.get_mut(released.slot) {
            *f = released.fence;
        }
    }

    /// Gives `guest` its ASID (SNP_ACTIVATE), fence counters from 0, or takes it away (`0`).
    /// `INVALID_ASID` if another guest has it, `INVALID_GUEST` past the table, `IN_USE` if the
    /// guest still has pages in the RMP.
    pub fn set_asid(&mut self, guest: GuestId, asid: u32) -> Result<(), SevStatus> {
        if asid != 0 && self.guest_of_asid(asid).is_some_and(|g| g != guest) {
            return Err(SevStatus::INVALID_ASID);
        }
        let old = self.fence(guest).map(|f| f.asid).unwrap_or(0);
        if old != 0 && (self.view().asid_in_use(old) || self.sdtes.holds(guest)) {
            return Err(SevStatus::IN_USE);
        }
        let slot = self
            .fences
            .get_mut(usize::from(guest.slot()))
            .ok_or(SevStatus::INVALID_GUEST)?;
        *slot = AsidFence {
            asid,
            ..AsidFence::default()
        };
        Ok(())
    }

    /// The ASID of `guest`, 0 if none.
    pub fn asid(&self, guest: GuestId) -> u32 {
        self.fence(guest).map(|f| f.asid).unwrap_or(0)
    }

    /// Whether a fence of `guest` is raised and not yet complete (ASID_FENCE_STATUS).
    pub fn fence_pending(&self, guest: GuestId) -> bool {
        self.fence(guest).is_ok_and(|f| f.done < f.raised)
    }

    /// Tests: hold every guest's fences (they stay pending) or complete every pending one and
    /// stop holding.
    pub fn hold_fences(&mut self, hold: bool) {
        self.held = [hold; MAX_GUESTS];
        if !hold {
            for f in &mut self.fences {
                f.done = f.raised;
            }
        }
    }

    /// Tests: hold `guest`'s fences, or complete its pending one and stop holding; other
    /// guests' fences are not affected.
    pub fn hold_fences_of(&mut self, guest: GuestId, hold: bool) {
        let slot = usize::from(guest.slot());
        if let (Some(h), Some(f)) = (self.held.get_mut(slot), self.fences.get_mut(slot)) {
            *h = hold;
            if !hold {
                f.done = f.raised;
            }
        }
    }

    /// Tests: sets the fence counters of `guest`, as if that many fences had been raised and
    /// completed (reaching 2^32 or 2^64 fences one at a time takes too long for a test).
    #[cfg(test)]
    pub(crate) fn set_fence_counts(&mut self, guest: GuestId, raised: u64, done: u64) {
        if let Some(f) = self.fences.get_mut(usize::from(guest.slot())) {
            (f.raised, f.done) = (raised, done);
        }
    }

    /// The leaf covering the entry at index `i`: its first index and the leaf itself.
    fn leaf_at(&self, i: usize) -> Option<(usize, Leaf)> {
        let e = *self.entries().get(i)?;
        if !e.assigned() || !e.mmio() {
            return None;
        }
        let size = e.leaf_size().size()?;
        let hpa = self.hpa_of(i)?.as_u64();
        // The leaf starts at the host address aligned down to its size, and the guest address
        // moves with it.
        let back = hpa & size.offset_mask();
        let first = i.checked_sub(usize::try_from(back >> 12).ok()?)?;
        let gpa = e.gpa_pfn().address().checked_sub(back)?;
        let guest = self.guest_of_asid(e.asid())?;
        let state = if e.blocked() {
            LeafState::Blocked {
                epoch: self.fence(guest).ok()?.blocked_at(e.fence_epoch()),
            }
        } else {
            LeafState::Mapped
        };
        Some((
            first,
            Leaf {
                guest,
                gpa: Gpa::try_new(gpa).ok()?,
                hpa: self.hpa_of(first)?,
                size,
                state,
            },
        ))
    }

    /// Finds `guest`'s leaf that covers `gpa`: the entry index of its first page.
    fn find(&self, guest: GuestId, gpa: Gpa) -> Result<(usize, Leaf), TableError> {
        let asid = self.fence(guest)?.asid;
        let i = self
            .view()
            .entry_of(asid, Pfn::of(gpa))
            .ok_or(TableError::NotMapped)?;
        self.leaf_at(i).ok_or(TableError::NotMapped)
    }

    /// The leaf at exactly `gpa` of `size`.
    /// The blocked leaf of `guest` at exactly `gpa` of `size` whose block a completed fence
    /// covers, with its entries and the guest's ASID: what a removal checks, then clears.
    fn removable(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<(core::ops::Range<usize>, Leaf, u32), TableError> {
        let fence = self.fence(guest)?;
        let (r, leaf) = self.exact(guest, gpa, size)?;
        match leaf.state {
            LeafState::Mapped => Err(TableError::NotBlocked),
            LeafState::Blocked { epoch } if fence.done <= epoch => Err(TableError::TlbNotFlushed),
            LeafState::Blocked { .. } => Ok((r, leaf, fence.asid)),
        }
    }

    fn exact(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<(core::ops::Range<usize>, Leaf), TableError> {
        let (first, leaf) = self.find(guest, gpa)?;
        if leaf.gpa != gpa || leaf.size != size {
            return Err(TableError::SizeMismatch);
        }
        let end = first
            .checked_add(usize::try_from(size.base_pages()).map_err(|_| TableError::OutOfFrames)?)
            .ok_or(TableError::OutOfFrames)?;
        Ok((first..end, leaf))
    }

    /// Every check of [`SecureTable::map`], in its order: the guest's ASID, the host entries
    /// of the leaf, its first guest frame and its last. The index always has room for a leaf
    /// these allow (its entries are unassigned), so it adds no refusal of its own.
    fn map_checked(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(u32, core::ops::Range<usize>, Pfn, Pfn), TableError> {
        let asid = self.fence(guest)?.asid;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(TableError::Misaligned);
        }
        let r = self
            .span(hpa.as_u64(), size.base_pages())
            .ok_or(TableError::OutOfFrames)?;
        // Guest side first, then host side (the order the core's reference table checks).
        let lo = Pfn::of(gpa);
        let hi = lo.get().saturating_add(size.base_pages());
        if self.view().gpa_mapped(asid, lo.get()..hi) {
            return Err(TableError::GpaMapped);
        }
        // Every page of the leaf has a frame number: `gpa` is aligned to the leaf and below
        // 2^52, so the leaf ends at 2^52 at most.
        let last = lo
            .checked_add(size.base_pages().saturating_sub(1))
            .ok_or(TableError::Misaligned)?;
        let entries = self
            .entries()
            .get(r.clone())
            .ok_or(TableError::OutOfFrames)?;
        if entries.iter().any(|e| e.assigned()) {
            return Err(TableError::HpaMapped);
        }
        Ok((asid, r, lo, last))
    }

    fn entries_mut(&mut self, r: core::ops::Range<usize>) -> &mut [RmpEntry] {
        self.mem.parts_mut().0.get_mut(r).unwrap_or_default()
    }

    /// Records whether `guest`'s last fence is an sDTE's invalidation with nothing blocked
    /// since (`true` as the invalidation raises it, `false` at any block).
    fn set_dma_fence(&mut self, guest: GuestId, covers: bool) {
        if let Some(f) = self.fences.get_mut(usize::from(guest.slot())) {
            f.dma_fence = covers;
        }
    }

    /// Raises `guest`'s ASID fence: complete at once (`true`) unless tests hold it. One fence
    /// outstanding at a time, as TDX allows one TLB epoch (`SecureTable::track`): another while
    /// one is pending is `TlbNotFlushed`; the fence after the 2^64 - 1st is `OutOfFrames` (no
    /// room left to count it). Refused, nothing changes.
    fn raise_fence(&mut self, guest: GuestId) -> Result<bool, TableError> {
        self.fence(guest)?;
        let hold = self
            .held
            .get(usize::from(guest.slot()))
            .copied()
            .unwrap_or(false);
        let f = self
            .fences
            .get_mut(usize::from(guest.slot()))
            .ok_or(TableError::UnknownGuest)?;
        if f.done < f.raised {
            return Err(TableError::TlbNotFlushed);
        }
        f.raised = f.raised.checked_add(1).ok_or(TableError::OutOfFrames)?;
        f.dma_fence = false;
        if !hold {
            f.done = f.raised;
        }
        Ok(!hold)
    }

    /// The guest's part of its SDTE write (V, IR, IW, VMPL, vTOM: [`sdte::GUEST_BITS`]) into
    /// `guest`'s accepted entry of `iface`; the firmware's part stays. `NoDmaContext` for none
    /// or another guest's, `Inconsistent` for one not accepted (the firmware writes the guest's
    /// part only after the core's accept). Crate-private: an integrator holding the table
    /// cannot rewrite a valid entry around the SDTE write's rules.
    pub(crate) fn sdte_write_guest(
        &mut self,
        guest: GuestId,
        iface: InterfaceId,
        fields: &Sdte,
    ) -> Result<(), TableError> {
        let mut slot = self.sdtes.of(guest, iface)?;
        if slot.state != DmaState::Active {
            return Err(TableError::Inconsistent);
        }
        slot.sdte = sdte::merged(&slot.sdte, fields);
        self.sdtes.put(slot)
    }

    /// TDI_BIND's part of `guest`'s new entry of `iface` ([`sdte::bind_fields`]: the guest
    /// device ID, the IDE streams) into its firmware part; the guest's part stays.
    /// `NoDmaContext` for none or another guest's, `Inconsistent` for one ever valid (the
    /// firmware writes it only at the create).
    pub(crate) fn sdte_fill_bind(
        &mut self,
        guest: GuestId,
        iface: InterfaceId,
        fields: &Sdte,
    ) -> Result<(), TableError> {
        let mut slot = self.sdtes.of(guest, iface)?;
        if slot.state != DmaState::Pending || slot.translated {
            return Err(TableError::Inconsistent);
        }
        slot.sdte = sdte::combined(fields, &slot.sdte);
        self.sdtes.put(slot)
    }

    // ---- the host's own instructions ---------------------------------------------------

    /// The host's RMPUPDATE of page `hpa`. Refused for a firmware-owned (immutable) entry,
    /// which every private MMIO page is: the host can neither reassign nor unassign it. The
    /// index has room for every page of the window as a host page, so it adds no refusal of
    /// its own (should it ever disagree with the entries, a firmware fault, the update is
    /// refused as `InUse` with nothing changed).
    pub fn host_rmpupdate(&mut self, hpa: u64, update: RmpUpdate) -> Result<(), RmpFault> {
        let i = self.index(hpa).ok_or(RmpFault::Input)?;
        let e = *self.entries().get(i).ok_or(RmpFault::Input)?;
        if e.immutable() {
            return Err(RmpFault::Permission);
        }
        // The GPA field holds 40 bits of PFN: a wider or unaligned address is malformed
        // input. Only the checked address reaches the entry, as a frame number that fits.
        let gpa = Gpa::try_new(update.gpa).map_err(|_| RmpFault::Input)?;
        if !gpa.is_aligned(PageSize::Size4K) {
            return Err(RmpFault::Input);
        }
        let new = if update.assigned {
            RmpEntry::new()
                .with_assigned(true)
                .with_asid(update.asid)
                .with_gpa_pfn(Pfn::of(gpa))
                .with_page_size(update.page_size)
        } else {
            RmpEntry::new()
        };
        let at = u32::try_from(i).map_err(|_| RmpFault::Input)?;
        // A mutable entry is the host's: unassigned, or assigned by an earlier RMPUPDATE.
        let old = e.assigned().then(|| Key::of(&e, at));
        let new_key = new.assigned().then(|| Key::of(&new, at));
        let (entries, words) = self.mem.parts_mut();
        self.idx
            .rekey_host(entries, words, old, new_key)
            .map_err(|_| RmpFault::InUse)?;
        if let Some(slot) = entries.get_mut(i) {
            *slot = new;
        }
        Ok(())
    }

    /// The host's PSMASH of the 2M page at `hpa` (split into 4K entries). Refused for an
    /// immutable entry: a private MMIO page keeps its size until unbind reclaims it.
    pub fn host_psmash(&mut self, hpa: u64) -> Result<(), RmpFault> {
        if hpa & PageSize::Size2M.offset_mask() != 0 {
            return Err(RmpFault::Input);
        }
        let r = self
            .span(hpa, PageSize::Size2M.base_pages())
            .ok_or(RmpFault::Input)?;
        let entries = self.entries().get(r.clone()).ok_or(RmpFault::Input)?;
        if entries.iter().any(|e| e.immutable()) {
            return Err(RmpFault::Permission);
        }
        for e in self.entries_mut(r) {
            e.set_page_size(RMP_PAGE_4K);
        }
        Ok(())
    }

    // ---- the guest's validation --------------------------------------------------------

    /// MMIO_VALIDATE: set (or clear) the validated bit of the `pages` pages from `hpa`, which
    /// must be assigned to `guest` at `gpa` onwards. Checks every page before changing any.
    /// Returns whether any bit changed.
    pub fn validate(
        &mut self,
        guest: GuestId,
        hpa: Hpa,
        gpa: Gpa,
        pages: u64,
        validated: bool,
        force: bool,
    ) -> Result<bool, ValidateFault> {
        let asid = self
            .fence(guest)
            .map_err(|_| ValidateFault::NotAssigned)?
            .asid;
        let r = self
            .span(hpa.as_u64(), pages)
            .ok_or(ValidateFault::NotAssigned)?;
        let entries = self
            .entries()
            .get(r.clone())
            .ok_or(ValidateFault::NotAssigned)?;
        let mut pfn = Some(Pfn::of(gpa));
        for e in entries {
            if !e.assigned() || !e.mmio() || e.blocked() || e.asid() != asid {
                return Err(ValidateFault::NotAssigned);
            }
            if Some(e.gpa_pfn()) != pfn {
                return Err(ValidateFault::NotMapped);
            }
            pfn = pfn.and_then(|p| p.checked_add(1));
        }
        let uniform = entries.windows(2).all(|w| match w {
            [a, b] => a.validated() == b.validated(),
            _ => true,
        });
        if !uniform && !force {
            return Err(ValidateFault::NotUniform);
        }
        let changed = entries.iter().any(|e| e.validated() != validated);
        for e in self.entries_mut(r) {
            e.set_validated(validated);
        }
        Ok(changed)
    }
}

impl<S: RmpMemory> SecureTable for Rmp<S> {
    /// The sDTE's invalidation is the ASID fence, which flushes the TLBs and the IOTLB at
    /// once: a teardown raises it after the TDI's last leaf is blocked, one fence for both.
    const DMA_INVALIDATION_AFTER_LEAVES: bool = true;

    /// TDI_BIND sets up the TDI's sDTE: the core makes it in the call that binds.
    const DMA_CONTEXT_AT_BIND: bool = true;

    /// TDI_BIND: the interface's sDTE, all zero (V clear): the device reaches no private
    /// memory. `DmaContextExists`, `OutOfFrames` ([`SdteTable`]).
    fn dma_create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        self.sdtes.create(guest, iface)
    }

    /// The owner's SDTE write: V set, the firmware's part pointed at the guest's ASID (and
    /// DomainID), TDI_BIND's fields kept; the guest's part follows in the same table lock
    /// (`Rmp::sdte_write_guest`, through the core's `guest_dma_accept_with`). A valid entry
    /// stays as it is; a blocked one is `Inconsistent`.
    fn dma_accept(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let asid = self.fence(guest)?.asid;
        let mut slot = self.sdtes.of(guest, iface)?;
        match slot.state {
            DmaState::Active => return Ok(()),
            DmaState::Pending => {}
            _ => return Err(TableError::Inconsistent),
        }
        slot.sdte = sdte::merged(&sdte::with_asid(&slot.sdte, asid), &slot.sdte);
        slot.state = DmaState::Active;
        slot.translated = true;
        self.sdtes.put(slot)
    }

    /// V, IR and IW cleared, the ASID's fence count recorded (an entry ever valid: the last
    /// fence no longer covers everything, [`SecureTable::track_within`]); a blocked entry stays
    /// as it is.
    fn dma_block(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let raised = self.fence(guest)?.raised;
        let mut slot = self.sdtes.of(guest, iface)?;
        if matches!(slot.state, DmaState::Pending | DmaState::Active) {
            slot.sdte = sdte::blocked(&slot.sdte);
            slot.state = DmaState::Blocked;
            slot.blocked_at = raised;
            let translated = slot.translated;
            self.sdtes.put(slot)?;
            // An entry never valid left nothing in the IOTLB: no fence owed for it.
            if translated {
                self.set_dma_fence(guest, false);
            }
        }
        Ok(())
    }

    /// The IOTLB invalidation is SEV's ASID fence: complete once a fence raised after the
    /// block has completed (at once for an entry that was never valid: nothing was cached).
    /// With no such fence raised, raises one (the fence ASID_FENCE_CLEAR raises; complete at
    /// once unless held); a fence from before the block still outstanding is `TlbNotFlushed`,
    /// nothing changed (one fence at a time: the host retries once it completes).
    fn dma_invalidate(&mut self, guest: GuestId, iface: InterfaceId) -> Result<bool, TableError> {
        let fence = self.fence(guest)?;
        let mut slot = self.sdtes.of(guest, iface)?;
        let done = match slot.state {
            DmaState::Pending | DmaState::Active => return Err(TableError::DmaNotBlocked),
            DmaState::Invalidated => return Ok(true),
            _ if !slot.translated || fence.done > slot.blocked_at => true,
            _ if fence.raised > slot.blocked_at => false,
            _ if fence.done < fence.raised => return Err(TableError::TlbNotFlushed),
            _ => {
                let done = self.raise_fence(guest)?;
                self.set_dma_fence(guest, true);
                done
            }
        };
        slot.state = if done {
            DmaState::Invalidated
        } else {
            DmaState::Invalidating
        };
        self.sdtes.put(slot)?;
        Ok(done)
    }

    /// Empties the slot of a blocked entry whose invalidation is complete (a fence raised after
    /// the block completed since); `InvalidationPending` until then, `DmaNotBlocked` for a
    /// valid or never-accepted one not blocked.
    fn dma_remove(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let fence = self.fence(guest)?;
        let slot = self.sdtes.of(guest, iface)?;
        match slot.state {
            DmaState::Pending | DmaState::Active => Err(TableError::DmaNotBlocked),
            DmaState::Blocked => Err(TableError::InvalidationPending),
            DmaState::Invalidating | DmaState::Invalidated
                if slot.translated && fence.done <= slot.blocked_at =>
            {
                Err(TableError::InvalidationPending)
            }
            DmaState::Invalidating | DmaState::Invalidated => {
                self.sdtes.remove(iface);
                Ok(())
            }
        }
    }

    /// RMPUPDATE of every host page of the leaf: assigned to the guest's ASID at its guest
    /// page, MMIO, immutable, not yet validated.
    fn map(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        let (asid, r, lo, last) = self.map_checked(guest, gpa, hpa, size)?;
        let template = RmpEntry::new()
            .with_assigned(true)
            .with_immutable(true)
            .with_mmio(true)
            .with_asid(asid)
            .with_leaf_size(LeafCode::of(size))
            .with_page_size(if size == PageSize::Size4K {
                RMP_PAGE_4K
            } else {
                RMP_PAGE_2M
            });
        let first = u32::try_from(r.start).map_err(|_| TableError::OutOfFrames)?;
        let (entries, words) = self.mem.parts_mut();
        self.idx
            .add_leaf(entries, words, Key::leaf(asid, lo, first))?;
        for (e, i) in self.entries_mut(r).iter_mut().zip(0u64..) {
            *e = template.with_gpa_pfn(lo.checked_add(i).unwrap_or(last));
        }
        Ok(())
    }

    /// Marks every entry of the leaf blocked at the current fence epoch; a blocked leaf stays
    /// as it is (the core relies on a repeated block being a no-op).
    fn block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        let raised = self.fence(guest)?.raised;
        let (r, leaf) = self.exact(guest, gpa, size)?;
        if leaf.state != LeafState::Mapped {
            return Ok(());
        }
        for e in self.entries_mut(r) {
            e.set_blocked(true);
            e.set_fence_epoch(epoch_bits(raised));
        }
        self.set_dma_fence(guest, false);
        Ok(())
    }

    /// Raises the ASID fence (ASID_FENCE_CLEAR): complete at once unless tests hold it. The
    /// fence after the 2^64 - 1st is refused (`OutOfFrames`: no room left to count it), with
    /// nothing changed.
    fn track(&mut self, guest: GuestId) -> Result<Completion, TableError> {
        self.raise_fence(guest)?;
        Ok(Completion::Done)
    }

    /// The unbind's Track: no fence when the last one raised is an sDTE's invalidation with
    /// nothing of the guest blocked since (the unbind raised it once its last leaf was blocked,
    /// `DMA_INVALIDATION_AFTER_LEAVES`): it covers every blocked leaf, so `Done`, nothing
    /// raised, and a removal waits for it (`TlbNotFlushed`) until it completes. Otherwise a
    /// fence, as [`SecureTable::track`] (each unbind then raises exactly one, as the other
    /// platforms advance one epoch). The host's ASID_FENCE_CLEAR always raises one.
    fn track_within(&mut self, guest: GuestId, work: &mut u32) -> Result<Completion, TableError> {
        *work = work.saturating_sub(1);
        if self.fence(guest)?.dma_fence {
            return Ok(Completion::Done);
        }
        self.track(guest)
    }

    /// Unassigns a blocked leaf once a fence raised after its block has completed.
    fn remove(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<Hpa, TableError> {
        let (r, leaf, asid) = self.removable(guest, gpa, size)?;
        let first = u32::try_from(r.start).map_err(|_| TableError::Inconsistent)?;
        let key = Key::leaf(asid, Pfn::of(leaf.gpa), first);
        let (entries, words) = self.mem.parts_mut();
        self.idx.drop_leaf(entries, words, key)?;
        self.entries_mut(r).fill(RmpEntry::new());
        Ok(leaf.hpa)
    }

    fn leaf(&self, guest: GuestId, gpa: Gpa) -> Option<Leaf> {
        self.find(guest, gpa).ok().map(|(_, l)| l)
    }

    fn check_map(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        self.map_checked(guest, gpa, hpa, size).map(drop)
    }

    fn check_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        self.exact(guest, gpa, size).map(drop)
    }

    fn check_remove(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        self.removable(guest, gpa, size).map(drop)
    }

    /// The leaves by host address, through the index: a binary search to the first leaf at or
    /// after `from`, then the following leaves until one is in `within` or starts past it
    /// (while every listed leaf decodes, at most one more: leaves do not overlap, so the one
    /// after a leaf that leaves `within` starts past it). The unbind's bounded walk charges a
    /// search one unit of work (the trait's provided `find_leaves`): its cost does not grow
    /// with the layout.
    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf> {
        let start = from.max(within.base()).as_u64().max(self.base);
        // Round up to a page: entries are per page.
        let start = start.checked_add(PAGE - 1)? & !(PAGE - 1);
        let i = u32::try_from(self.index(start)?).ok()?;
        for first in self.view().leaves_from(i) {
            let first = usize::try_from(first).ok()?;
            if self.hpa_of(first)?.as_u64() >= within.end() {
                return None;
            }
            if let Some((_, leaf)) = self.leaf_at(first)
                && leaf.hpa >= from
                && within.contains_page(leaf.hpa, leaf.size)
            {
                return Some(leaf);
            }
        }
        None
    }
}

/// Tests: RMP memory on the heap.
#[cfg(test)]
pub(crate) type VecStore = RmpStore<Vec<RmpEntry>, Vec<u32>>;

/// Tests: zeroed memory for a window of `pages` pages, index included.
#[cfg(test)]
pub(crate) fn vec_store(pages: usize) -> VecStore {
    RmpStore::new(
        vec![RmpEntry::new(); pages],
        vec![0; rmp_index_words(pages)],
    )
}
