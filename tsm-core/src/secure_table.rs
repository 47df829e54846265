//! The secure mapping structure a platform owns (S-EPT on TDX, RMP on SEV), as one trait.
//! The core decides *whether* a leaf may change; the trait's implementation records it in the
//! real structure and enforces the architectural entry states on its own as well.

use crate::addr::{Gpa, Hpa};
use crate::ids::GuestId;
use crate::mmio::MmioRange;
use crate::page::PageSize;
use crate::status::{Completion, Error};

/// A guest's TLB epoch: blocks record it, removals need a flush past it (TDX: TD epoch).
pub type Epoch = u64;

/// State of one private MMIO leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafState {
    /// Present: the guest may access the page.
    Mapped,
    /// Blocked at `epoch`: no new translations; cached ones live until that epoch is flushed.
    Blocked {
        /// The guest's TLB epoch when the leaf was blocked.
        epoch: Epoch,
    },
}

/// One private MMIO leaf: `gpa` of `guest` translates to `hpa`, `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The guest whose secure table holds the leaf.
    pub guest: GuestId,
    /// Guest physical address, aligned to `size`.
    pub gpa: Gpa,
    /// Host physical address, aligned to `size`.
    pub hpa: Hpa,
    /// Leaf size.
    pub size: PageSize,
    /// Entry state.
    pub state: LeafState,
}

impl Leaf {
    /// The host pages the leaf covers.
    pub fn host_range(&self) -> Result<MmioRange, Error> {
        MmioRange::try_new(self.hpa, self.size.base_pages())
    }
}

/// Why the secure table refused a change. Each converts to one core [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableError {
    /// A leaf (of any size) already covers part of the guest range.
    GpaMapped,
    /// A leaf already maps part of the host range.
    HpaMapped,
    /// No leaf at that guest address.
    NotMapped,
    /// The leaf there has another size or base.
    SizeMismatch,
    /// Removal of a leaf that is not blocked.
    NotBlocked,
    /// Removal before the TLB flush of the epoch the leaf was blocked in.
    TlbNotFlushed,
    /// No frame left for an intermediate table, or no entry left in a fixed table.
    OutOfFrames,
    /// Address not aligned to the leaf size.
    Misaligned,
    /// The guest has no secure table here.
    UnknownGuest,
    /// The table's own bookkeeping disagrees with itself (a counter would drift).
    Inconsistent,
}

impl From<TableError> for Error {
    fn from(e: TableError) -> Self {
        match e {
            TableError::GpaMapped => Error::GpaAlreadyMapped,
            TableError::HpaMapped => Error::HpaAlreadyMapped,
            TableError::NotMapped => Error::NotMapped,
            TableError::SizeMismatch => Error::SizeMismatch,
            TableError::NotBlocked => Error::NotBlocked,
            TableError::TlbNotFlushed => Error::TlbFlushPending,
            TableError::OutOfFrames => Error::SecureTableFull,
            TableError::Misaligned => Error::Misaligned,
            TableError::UnknownGuest => Error::InvalidHandle,
            TableError::Inconsistent => Error::Inconsistent,
        }
    }
}

/// A platform's secure second-level structure for private MMIO. Every method either makes its
/// whole change or returns an error and changes nothing.
pub trait SecureTable {
    /// Adds a leaf `gpa -> hpa` of `size` for `guest`, in state `Mapped`.
    fn map(&mut self, guest: GuestId, gpa: Gpa, hpa: Hpa, size: PageSize)
    -> Result<(), TableError>;

    /// Blocks the leaf at exactly `gpa` of `size`, recording the guest's current epoch.
    fn block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError>;

    /// Advances the guest's TLB epoch and flushes (TDX: TDH.MEM.TRACK plus the IPIs the host
    /// sends; SEV: the ASID fence). Blocked leaves of older epochs become removable once the
    /// flush is complete, which a platform may report later rather than at once.
    /// One epoch is outstanding at a time, on every platform: a track while the previous
    /// flush is not complete is `TlbNotFlushed` and changes nothing (TDX's TDH.MEM.TRACK rule,
    /// PREVIOUS_TLB_EPOCH_BUSY; on SEV, a fence while one is pending).
    /// `Resumable`: the platform did bounded bookkeeping the advance needs first (TDX
    /// re-stamps old blocked leaves at its 12-bit epoch wrap), kept it, and did not advance
    /// yet; call again. Nothing it did changes what any leaf means.
    fn track(&mut self, guest: GuestId) -> Result<Completion, TableError>;

    /// Removes the blocked, flushed leaf at exactly `gpa` of `size`; returns its host address.
    fn remove(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<Hpa, TableError>;

    /// The leaf of `guest` covering `gpa`, if any.
    fn leaf(&self, guest: GuestId, gpa: Gpa) -> Option<Leaf>;

    /// The leaf with the lowest host address at or above `from` that lies in `within`
    /// (TDX: found through MMIO metadata; SEV: an RMP scan).
    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf>;
}
