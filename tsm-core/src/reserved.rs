//! Memory the firmware must never hand out as MMIO: its own pages (image, table pool) and the
//! system memory the platform names at init (TDX: the TDX-usable memory; SEV: the memory the
//! RMP covers). A device BAR, a reported range or a mapped page that touches it is
//! `ReservedMemory`: a host that registers a BAR over the S-EPT pool must not get it mapped
//! into a guest.

use crate::capacity::MAX_RESERVED_RANGES;
use crate::mmio::MmioRange;
use crate::status::Error;

/// The reserved ranges, fixed when the firmware object is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReservedMemory {
    ranges: heapless::Vec<MmioRange, MAX_RESERVED_RANGES>,
}

impl ReservedMemory {
    /// Nothing reserved (tests and the in-memory table, whose "host pages" are not memory).
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
        }
    }

    /// Reserved `ranges`; `TooManyRanges` past [`MAX_RESERVED_RANGES`].
    pub fn from_ranges(ranges: &[MmioRange]) -> Result<Self, Error> {
        let mut r = Self::new();
        for range in ranges {
            r.add(*range)?;
        }
        Ok(r)
    }

    /// Adds one range; `TooManyRanges` when full. Ranges may overlap or touch.
    pub fn add(&mut self, range: MmioRange) -> Result<(), Error> {
        self.ranges.push(range).map_err(|_| Error::TooManyRanges)
    }

    /// Whether `range` shares a byte with reserved memory.
    pub fn touches(&self, range: &MmioRange) -> bool {
        self.ranges.iter().any(|r| r.overlaps(range))
    }

    /// Every reserved range.
    pub fn ranges(&self) -> &[MmioRange] {
        &self.ranges
    }
}
