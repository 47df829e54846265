//! Table capacities. Every table is fixed-size; running out is a status, never a panic.

/// Physical devices the firmware tracks.
pub const MAX_DEVICES: usize = 32;
/// TDIs across all devices.
pub const MAX_TDIS: usize = 128;
/// TDIs of one device (functions and VFs bound through one DSM).
pub const MAX_TDIS_PER_DEVICE: usize = 16;
/// Confidential guests.
pub const MAX_GUESTS: usize = 32;
/// BARs of one device: a type 0 function header has six (PCIe 6.x 7.5.1.2.1).
pub const MAX_BARS: usize = 6;
/// MMIO ranges one interface report may list.
pub const MAX_RANGES_PER_TDI: usize = 16;
/// MMIO ranges owned by all bound TDIs together.
pub const MAX_OWNED_RANGES: usize = 256;
/// Leaves one unbind call changes on a table without a bounded search (one unit to find a
/// leaf, one to change it: half of [`UNBIND_WORK_PER_CALL`]). Ours.
pub const UNBIND_OPS_PER_CALL: u32 = UNBIND_WORK_PER_CALL / 2;
/// Work one unbind (or device-error, check, refused start) call does before it returns
/// `Resumable`, so no host call holds a CPU in firmware for long whatever the layout of the
/// TDI's leaves. The unit: one leaf blocked or removed, and what the leaf searches read
/// (`SecureTable::find_leaves`): on TDX one per MMIO-metadata entry in use read (a table
/// pointer on the way down, a leaf) and one per cache line of free entries; on a table without
/// a bounded search (the in-memory one; the SEV RMP, whose search is a binary search of its
/// index) one per search. Ours: 128 units is a few microseconds on the README's benchmark
/// machine, dense or sparse, and on a table without a bounded search 64 leaves, the
/// leaf-counted bound it replaces. How many
/// calls an unbind takes depends on the table.
pub const UNBIND_WORK_PER_CALL: u32 = 128;
/// Work a call may spend past its budget only to find that no leaf is left (so the call that
/// did the last change says `Done`): a search or two, never a change (ours).
pub const UNBIND_GRACE_WORK: u32 = 16;
/// Work a removal charges for each table page it empties and gives back: the page's 64 cache
/// lines are read to confirm it holds nothing before it goes back (ours: one unit per line, as
/// a search charges). A removal's work is known before it is made: a run that would pass the
/// call's budget is cut or waits for the next call (see [`UNBIND_MAX_LEAF_WORK`]).
pub const UNBIND_WORK_PER_PAGE_FREED: u32 = 64;
/// Table levels a leaf's removal may empty, in all the trees it sits in: on TDX a 4 KiB leaf in
/// a 5-level S-EPT (5 pages) and in the 5-level MMIO metadata (5 pages). Ours, from the table
/// shapes (Intel TDX Module ABI: S-EPT levels 4 or 5; the MMIOMT tree of platform-tdx).
pub const MAX_PAGES_FREED_PER_LEAF: u32 = 10;
/// Table walks a run's change makes (one per table page in each tree; a run the search found
/// lies in one MMIO-metadata page and at most two S-EPT pages) at five units each. Ours.
pub const MAX_RUN_WALK_WORK: u32 = 3 * 5;
/// The most one leaf's change may cost: the leaf, its walks, every table page it may empty
/// (656 units). A call's work stays within [`UNBIND_WORK_PER_CALL`] + this + 2 x
/// [`UNBIND_GRACE_WORK`] (a call walks at most twice: block, then remove): a removal's work is
/// known before it is made, and one change per walk may go past the budget by at most this
/// (a run that would go further is cut to one leaf, which always fits, so every call makes
/// progress); a block's few walks are charged after it.
pub const UNBIND_MAX_LEAF_WORK: u32 =
    1 + MAX_RUN_WALK_WORK + MAX_PAGES_FREED_PER_LEAF * UNBIND_WORK_PER_PAGE_FREED;
/// Ranges of memory the firmware reserves at init (its pool and image, the platform's system
/// memory map): a typical TDX CMR list or e820 map has a few dozen entries.
pub const MAX_RESERVED_RANGES: usize = 64;
