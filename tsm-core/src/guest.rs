//! What a guest may learn of and check against its own TDI: the fields it reads (TDX:
//! TDG.DEVIF.RD) and the rule every platform's accept of a private MMIO page follows (TDX:
//! TDG.MMIO.ACCEPT; SEV: the MMIO_VALIDATE guest message).

use crate::addr::Hpa;
use crate::capacity::MAX_RANGES_PER_TDI;
use crate::mmio::MmioRange;
use crate::page::PageSize;
use crate::status::Error;

/// A field of its own TDI a guest reads ([`crate::Tsm::guest_read`]). Each is one 64-bit
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestField {
    /// The TDISP version the TDI was bound with: 0x10 (1.0, the only one this firmware binds).
    TdispVersion,
    /// The TDISP state the firmware holds for the TDI ([`crate::TdiState::tdisp`]), as its
    /// PCIe code (0 CONFIG_UNLOCKED .. 3 ERROR).
    TdispState,
    /// Word `n` (0..6, little-endian) of the session's 48-byte digest of the interface report
    /// the bind took ([`crate::relay::SecureSession::report_digest`]): the guest hashes the
    /// report it was given and compares.
    ReportDigest(u8),
    /// FIRST_PAGE of the TDI's `n`-th private range as the device reported it (host address
    /// plus the bind's MMIO_REPORTING_OFFSET), in report order.
    ReportedRange(u8),
}

/// Words of [`GuestField::ReportDigest`].
pub const REPORT_DIGEST_WORDS: u8 = (crate::relay::REPORT_DIGEST_SIZE / 8) as u8;

/// What a guest's accept of a private MMIO page is checked against, fixed while the accept
/// runs (the TDI's lock is held): the owning TDI's MMIO_REPORTING_OFFSET and private ranges.
/// Built by [`crate::Tsm::guest_accept`]; the platform calls [`AcceptCheck::check`] with the
/// host page its own secure table maps at the guest address, once it has found the entry
/// acceptable, before it changes the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptCheck {
    /// Offset and ranges of the TDI owning the page; `None` when no bound TDI of the guest
    /// held the page when the accept began.
    owner: Option<(u64, heapless::Vec<MmioRange, MAX_RANGES_PER_TDI>)>,
}

impl AcceptCheck {
    /// A check with no owning TDI: every page is refused `HpaNotOwned`.
    pub(crate) const fn no_owner() -> Self {
        Self { owner: None }
    }

    /// A check against a bound TDI's `offset` and private `ranges`.
    pub(crate) const fn of(
        offset: u64,
        ranges: heapless::Vec<MmioRange, MAX_RANGES_PER_TDI>,
    ) -> Self {
        Self {
            owner: Some((offset, ranges)),
        }
    }

    /// Whether the page of `size` at `hpa`, which the secure table maps where the guest
    /// accepts, is the page the guest read at `reported` in its TDI's report: it lies in one
    /// of the TDI's private ranges (`HpaNotOwned`) and `hpa` plus the TDI's
    /// MMIO_REPORTING_OFFSET is `reported` (`ReportedAddressMismatch`: the host mapped
    /// another page there than the report names, or the guest read another report).
    pub fn check(&self, hpa: Hpa, size: PageSize, reported: u64) -> Result<(), Error> {
        let (offset, ranges) = self.owner.as_ref().ok_or(Error::HpaNotOwned)?;
        if !ranges.iter().any(|r| r.contains_page(hpa, size)) {
            return Err(Error::HpaNotOwned);
        }
        // Cannot overflow: hpa < 2^52 and the offset < 2^62 (`tdisp::reporting_offset`).
        let expected = hpa
            .as_u64()
            .checked_add(*offset)
            .ok_or(Error::Inconsistent)?;
        if expected != reported {
            return Err(Error::ReportedAddressMismatch);
        }
        Ok(())
    }
}
