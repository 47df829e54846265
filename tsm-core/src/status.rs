//! Every status the core returns, with its stable numeric code. This is the one place they are
//! defined; platforms translate them to their ABI's codes in one function each.
//!
//! | code  | status | meaning |
//! |-------|--------|---------|
//! | 0x000 | `Done` | the operation completed |
//! | 0x001 | `Resumable` | bounded work done, progress kept; call again to continue |
//! | 0x002 | `Relay(n)` | relay the `n` request bytes written to the caller's buffer to the device, then hand the answer to `device_response` |
//! | 0x101 | `InvalidAddress` | address at or above 2^52 |
//! | 0x102 | `Misaligned` | address not aligned to the page or leaf size |
//! | 0x103 | `InvalidRange` | empty range, or one that runs past the address space |
//! | 0x104 | `InvalidHandle` | no such device, TDI or guest |
//! | 0x105 | `InvalidRequesterId` | device or function number out of range, or an interface in a segment above 255 (FUNCTION_ID carries 8 bits) |
//! | 0x106 | `TooManyRanges` | more ranges than a device or report may have |
//! | 0x107 | `RangeOutsideDevice` | a reported range is not inside the device's BARs |
//! | 0x108 | `RangesOverlap` | ranges given together overlap each other |
//! | 0x109 | `InvalidPageSize` | a page size no MMIO leaf can have |
//! | 0x10a | `ReservedMemory` | a BAR, reported range or mapped page touches memory the firmware reserved at init (its own pages, system memory): never MMIO |
//! | 0x10b | `ForeignInterface` | the interface ID is not a function (PF or declared VF, same segment) of the device the TDI is created under (see `InterfaceId`) |
//! | 0x10c | `EmptyReport` | the device's interface report names no MMIO range (a device never given one reports none): a bind would own nothing, so it is refused and the lock undone |
//! | 0x201 | `DeviceTableFull` | no free device slot |
//! | 0x202 | `TdiTableFull` | no free TDI slot |
//! | 0x203 | `GuestTableFull` | no free guest slot |
//! | 0x204 | `OwnershipTableFull` | no room to record the ranges of another bound TDI |
//! | 0x205 | `SecureTableFull` | the secure mapping structure has no free table pages |
//! | 0x206 | `SecureTableFlushPending` | the secure mapping structure has too few free table pages until pages it gave up come back after the TLB track and flush of the guest that emptied them |
//! | 0x301 | `TdiBound` | a host request touches MMIO of a bound TDI while its device can still reach the guest (locked, running, in error, or unbinding before STOP is acknowledged, stream live); a zap, whenever bound |
//! | 0x302 | `TdiNotBound` | the TDI is not bound to any guest |
//! | 0x303 | `TdiAlreadyBound` | bind of a TDI that is already bound |
//! | 0x304 | `NotOwner` | the guest named is not the TDI's owner |
//! | 0x305 | `TdiNotLocked` | start of a TDI that is not CONFIG_LOCKED |
//! | 0x306 | `TdiInError` | the TDI is in ERROR: only unbind leaves it |
//! | 0x307 | `UnbindInProgress` | an unbind has started: finish it first |
//! | 0x308 | `DeviceInUse` | the device still has TDIs |
//! | 0x309 | `GuestInUse` | the guest still owns TDIs |
//! | 0x30a | `DuplicateDevice` | a registered device already has one of this device's requester IDs |
//! | 0x30b | `DuplicateTdi` | that interface already has a TDI |
//! | 0x30c | `HpaNotOwned` | the host page is not inside a range the TDI owns |
//! | 0x30d | `BarInUse` | a BAR overlaps a BAR of another registered device |
//! | 0x30e | `StreamCut` | bind on a device whose IDE stream a forced unbind cut: the host sets the stream up again first |
//! | 0x30f | `ReportedAddressMismatch` | a guest accepts a private MMIO page naming a reported address (FIRST_PAGE plus page offset, MMIO_REPORTING_OFFSET included) other than the host page mapped there plus its TDI's offset: nothing changed |
//! | 0x310 | `DmaContextExists` | the TDI already has a trusted DMA context (one per TDI; the host cannot create another or point it elsewhere) |
//! | 0x311 | `NoDmaContext` | the TDI has no trusted DMA context: the host creates it first |
//! | 0x312 | `DmaContextRemains` | the TDI's trusted DMA context still exists: unbind (or block, invalidate and remove it) before the TDI is removed |
//! | 0x313 | `DmaNotAccepted` | start of a TDI whose trusted DMA context its owner has not accepted, on a platform whose guest accepts it before START (TDX): nothing changed |
//! | 0x401 | `GpaAlreadyMapped` | the guest address already has a leaf |
//! | 0x402 | `HpaAlreadyMapped` | the host page is already mapped |
//! | 0x403 | `NotMapped` | no leaf at that guest address |
//! | 0x404 | `SizeMismatch` | the leaf there has another size |
//! | 0x405 | `NotBlocked` | removal of a leaf that was not blocked first |
//! | 0x406 | `TlbFlushPending` | blocked, but the TLB flush for that epoch is not done |
//! | 0x407 | `DmaNotBlocked` | invalidation or removal of a trusted DMA context that was not blocked first |
//! | 0x408 | `IotlbInvalidationPending` | the blocked trusted DMA context's IOTLB invalidation is not complete |
//! | 0x409 | `IotlbNotTracked` | the IOTLB invalidation of the guest's domain that the last track of its table asked for is not complete while a trusted DMA context names the table (TDX) |
//! | 0x501 | `DeviceUnresponsive` | the device did not answer a TDISP request |
//! | 0x502 | `DeviceRefused` | the device answered a TDISP request with an error |
//! | 0x503 | `DeviceMalformed` | the device's answer is not a well-formed TDISP response to the request (length, version, type, interface ID, report layout) |
//! | 0x504 | `ExchangePending` | another operation of the TDI (or a bind of another TDI of the device) waits on the device: answer it, or unbind to abandon it |
//! | 0x505 | `NoExchange` | a device response for a TDI with no request outstanding |
//! | 0x506 | `RelayMalformed` | relayed bytes are not a DOE/SPDM/secured record of the outstanding exchange (garbled, too long, another TDI's, stale): nothing changed, the exchange stays outstanding |
//! | 0x507 | `RelayBufferTooSmall` | the buffer for the request to relay holds fewer than `MAX_RELAY_BYTES` |
//! | 0x508 | `SequenceExhausted` | the secure session has used every sequence number: it must be rekeyed (SPDM KEY_UPDATE) before another exchange; nothing changed |
//! | 0x6xx | `Busy(operand)` | the operand's lock is held by another CPU; retry |
//! | 0x701 | `Inconsistent` | the firmware's own records disagree (a counter would drift): refused, nothing changed |

use core::fmt;

/// A successful outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "Resumable means the operation is not finished: call it again; Relay(n) means a \
              request waits in the buffer for the device"]
pub enum Completion {
    /// The operation completed.
    Done,
    /// A bounded step completed and its progress is kept; call again to continue.
    Resumable,
    /// The operation waits on the device: relay the first `n` bytes of the request buffer to
    /// it and pass its answer to [`crate::Tsm::device_response`].
    Relay(usize),
}

/// The object whose lock was contended (carried by [`Error::Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The device table as a whole (device creation and removal).
    DeviceTable,
    /// A device record.
    Device,
    /// A TDI record.
    Tdi,
    /// A guest record.
    Guest,
    /// The table of MMIO ranges owned by bound TDIs.
    Ownership,
    /// The platform's secure mapping structure (S-EPT, RMP).
    SecureTable,
    /// The device transport (TDISP requests to the device).
    Transport,
}

impl Operand {
    /// Every operand, in lock order.
    pub const ALL: [Operand; 7] = [
        Operand::DeviceTable,
        Operand::Device,
        Operand::Tdi,
        Operand::Guest,
        Operand::Ownership,
        Operand::SecureTable,
        Operand::Transport,
    ];

    const fn code(self) -> u16 {
        match self {
            Operand::DeviceTable => 0,
            Operand::Device => 1,
            Operand::Tdi => 2,
            Operand::Guest => 3,
            Operand::Ownership => 4,
            Operand::SecureTable => 5,
            Operand::Transport => 6,
        }
    }
}

/// Every refusal. See the module table for codes and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is documented in the module table above
pub enum Error {
    InvalidAddress,
    Misaligned,
    InvalidRange,
    InvalidHandle,
    InvalidRequesterId,
    TooManyRanges,
    RangeOutsideDevice,
    RangesOverlap,
    InvalidPageSize,
    ReservedMemory,
    ForeignInterface,
    EmptyReport,
    DeviceTableFull,
    TdiTableFull,
    GuestTableFull,
    OwnershipTableFull,
    SecureTableFull,
    SecureTableFlushPending,
    TdiBound,
    TdiNotBound,
    TdiAlreadyBound,
    NotOwner,
    TdiNotLocked,
    TdiInError,
    UnbindInProgress,
    DeviceInUse,
    GuestInUse,
    DuplicateDevice,
    DuplicateTdi,
    HpaNotOwned,
    BarInUse,
    StreamCut,
    ReportedAddressMismatch,
    DmaContextExists,
    NoDmaContext,
    DmaContextRemains,
    DmaNotAccepted,
    GpaAlreadyMapped,
    HpaAlreadyMapped,
    NotMapped,
    SizeMismatch,
    NotBlocked,
    TlbFlushPending,
    DmaNotBlocked,
    IotlbInvalidationPending,
    IotlbNotTracked,
    DeviceUnresponsive,
    DeviceRefused,
    DeviceMalformed,
    ExchangePending,
    NoExchange,
    RelayMalformed,
    RelayBufferTooSmall,
    SequenceExhausted,
    Busy(Operand),
    Inconsistent,
}

/// Result of a core operation.
pub type TsmResult<T> = Result<T, Error>;

/// Code of [`Completion::Done`].
pub const CODE_DONE: u16 = 0x000;
/// Code of [`Completion::Resumable`].
pub const CODE_RESUMABLE: u16 = 0x001;
/// Code of [`Completion::Relay`].
pub const CODE_RELAY: u16 = 0x002;
/// Base of the `Busy` codes; the low byte names the operand.
pub const CODE_BUSY_BASE: u16 = 0x600;

impl Completion {
    /// Stable numeric code.
    pub const fn code(self) -> u16 {
        match self {
            Completion::Done => CODE_DONE,
            Completion::Resumable => CODE_RESUMABLE,
            Completion::Relay(_) => CODE_RELAY,
        }
    }
}

impl Error {
    /// Every status without a payload, and `Busy` for each operand: for exhaustive tests.
    pub const ALL: [Error; 62] = [
        Error::InvalidAddress,
        Error::Misaligned,
        Error::InvalidRange,
        Error::InvalidHandle,
        Error::InvalidRequesterId,
        Error::TooManyRanges,
        Error::RangeOutsideDevice,
        Error::RangesOverlap,
        Error::InvalidPageSize,
        Error::ReservedMemory,
        Error::ForeignInterface,
        Error::EmptyReport,
        Error::DeviceTableFull,
        Error::TdiTableFull,
        Error::GuestTableFull,
        Error::OwnershipTableFull,
        Error::SecureTableFull,
        Error::SecureTableFlushPending,
        Error::TdiBound,
        Error::TdiNotBound,
        Error::TdiAlreadyBound,
        Error::NotOwner,
        Error::TdiNotLocked,
        Error::TdiInError,
        Error::UnbindInProgress,
        Error::DeviceInUse,
        Error::GuestInUse,
        Error::DuplicateDevice,
        Error::DuplicateTdi,
        Error::HpaNotOwned,
        Error::BarInUse,
        Error::StreamCut,
        Error::ReportedAddressMismatch,
        Error::DmaContextExists,
        Error::NoDmaContext,
        Error::DmaContextRemains,
        Error::DmaNotAccepted,
        Error::GpaAlreadyMapped,
        Error::HpaAlreadyMapped,
        Error::NotMapped,
        Error::SizeMismatch,
        Error::NotBlocked,
        Error::TlbFlushPending,
        Error::DmaNotBlocked,
        Error::IotlbInvalidationPending,
        Error::IotlbNotTracked,
        Error::DeviceUnresponsive,
        Error::DeviceRefused,
        Error::DeviceMalformed,
        Error::ExchangePending,
        Error::NoExchange,
        Error::RelayMalformed,
        Error::RelayBufferTooSmall,
        Error::SequenceExhausted,
        Error::Busy(Operand::DeviceTable),
        Error::Busy(Operand::Device),
        Error::Busy(Operand::Tdi),
        Error::Busy(Operand::Guest),
        Error::Busy(Operand::Ownership),
        Error::Busy(Operand::SecureTable),
        Error::Busy(Operand::Transport),
        Error::Inconsistent,
    ];

    /// Stable numeric code (the module table).
    pub const fn code(self) -> u16 {
        match self {
            Error::InvalidAddress => 0x101,
            Error::Misaligned => 0x102,
            Error::InvalidRange => 0x103,
            Error::InvalidHandle => 0x104,
            Error::InvalidRequesterId => 0x105,
            Error::TooManyRanges => 0x106,
            Error::RangeOutsideDevice => 0x107,
            Error::RangesOverlap => 0x108,
            Error::InvalidPageSize => 0x109,
            Error::ReservedMemory => 0x10a,
            Error::ForeignInterface => 0x10b,
            Error::EmptyReport => 0x10c,
            Error::DeviceTableFull => 0x201,
            Error::TdiTableFull => 0x202,
            Error::GuestTableFull => 0x203,
            Error::OwnershipTableFull => 0x204,
            Error::SecureTableFull => 0x205,
            Error::SecureTableFlushPending => 0x206,
            Error::TdiBound => 0x301,
            Error::TdiNotBound => 0x302,
            Error::TdiAlreadyBound => 0x303,
            Error::NotOwner => 0x304,
            Error::TdiNotLocked => 0x305,
            Error::TdiInError => 0x306,
            Error::UnbindInProgress => 0x307,
            Error::DeviceInUse => 0x308,
            Error::GuestInUse => 0x309,
            Error::DuplicateDevice => 0x30a,
            Error::DuplicateTdi => 0x30b,
            Error::HpaNotOwned => 0x30c,
            Error::BarInUse => 0x30d,
            Error::StreamCut => 0x30e,
            Error::ReportedAddressMismatch => 0x30f,
            Error::DmaContextExists => 0x310,
            Error::NoDmaContext => 0x311,
            Error::DmaContextRemains => 0x312,
            Error::DmaNotAccepted => 0x313,
            Error::GpaAlreadyMapped => 0x401,
            Error::HpaAlreadyMapped => 0x402,
            Error::NotMapped => 0x403,
            Error::SizeMismatch => 0x404,
            Error::NotBlocked => 0x405,
            Error::TlbFlushPending => 0x406,
            Error::DmaNotBlocked => 0x407,
            Error::IotlbInvalidationPending => 0x408,
            Error::IotlbNotTracked => 0x409,
            Error::DeviceUnresponsive => 0x501,
            Error::DeviceRefused => 0x502,
            Error::DeviceMalformed => 0x503,
            Error::ExchangePending => 0x504,
            Error::NoExchange => 0x505,
            Error::RelayMalformed => 0x506,
            Error::RelayBufferTooSmall => 0x507,
            Error::SequenceExhausted => 0x508,
            Error::Busy(operand) => CODE_BUSY_BASE | operand.code(),
            Error::Inconsistent => 0x701,
        }
    }

    /// What the status means: the module table's meaning column, one line.
    pub const fn meaning(self) -> &'static str {
        match self {
            Error::InvalidAddress => "address at or above 2^52",
            Error::Misaligned => "address not aligned to the page or leaf size",
            Error::InvalidRange => "empty range, or one that runs past the address space",
            Error::InvalidHandle => "no such device, TDI or guest",
            Error::InvalidRequesterId => {
                "device or function number out of range, or an interface in a segment above 255 (FUNCTION_ID carries 8 bits)"
            }
            Error::TooManyRanges => "more ranges than a device or report may have",
            Error::RangeOutsideDevice => "a reported range is not inside the device's BARs",
            Error::RangesOverlap => "ranges given together overlap each other",
            Error::InvalidPageSize => "a page size no MMIO leaf can have",
            Error::ReservedMemory => {
                "a BAR, reported range or mapped page touches memory the firmware reserved at init (its own pages, system memory): never MMIO"
            }
            Error::ForeignInterface => {
                "the interface ID is not a function (PF or declared VF, same segment) of the device the TDI is created under (see `InterfaceId`)"
            }
            Error::EmptyReport => {
                "the device's interface report names no MMIO range (a device never given one reports none): a bind would own nothing, so it is refused and the lock undone"
            }
            Error::DeviceTableFull => "no free device slot",
            Error::TdiTableFull => "no free TDI slot",
            Error::GuestTableFull => "no free guest slot",
            Error::OwnershipTableFull => "no room to record the ranges of another bound TDI",
            Error::SecureTableFull => "the secure mapping structure has no free table pages",
            Error::SecureTableFlushPending => {
                "the secure mapping structure has too few free table pages until pages it gave up come back after the TLB track and flush of the guest that emptied them"
            }
            Error::TdiBound => {
                "a host request touches MMIO of a bound TDI while its device can still reach the guest (locked, running, in error, or unbinding before STOP is acknowledged, stream live); a zap, whenever bound"
            }
            Error::TdiNotBound => "the TDI is not bound to any guest",
            Error::TdiAlreadyBound => "bind of a TDI that is already bound",
            Error::NotOwner => "the guest named is not the TDI's owner",
            Error::TdiNotLocked => "start of a TDI that is not CONFIG_LOCKED",
            Error::TdiInError => "the TDI is in ERROR: only unbind leaves it",
            Error::UnbindInProgress => "an unbind has started: finish it first",
            Error::DeviceInUse => "the device still has TDIs",
            Error::GuestInUse => "the guest still owns TDIs",
            Error::DuplicateDevice => {
                "a registered device already has one of this device's requester IDs"
            }
            Error::DuplicateTdi => "that interface already has a TDI",
            Error::HpaNotOwned => "the host page is not inside a range the TDI owns",
            Error::BarInUse => "a BAR overlaps a BAR of another registered device",
            Error::StreamCut => {
                "bind on a device whose IDE stream a forced unbind cut: the host sets the stream up again first"
            }
            Error::ReportedAddressMismatch => {
                "a guest accepts a private MMIO page naming a reported address (FIRST_PAGE plus page offset, MMIO_REPORTING_OFFSET included) other than the host page mapped there plus its TDI's offset: nothing changed"
            }
            Error::GpaAlreadyMapped => "the guest address already has a leaf",
            Error::HpaAlreadyMapped => "the host page is already mapped",
            Error::NotMapped => "no leaf at that guest address",
            Error::SizeMismatch => "the leaf there has another size",
            Error::NotBlocked => "removal of a leaf that was not blocked first",
            Error::TlbFlushPending => "blocked, but the TLB flush for that epoch is not done",
            Error::DmaContextExists => {
                "the TDI already has a trusted DMA context (one per TDI; the host cannot create another or point it elsewhere)"
            }
            Error::NoDmaContext => "the TDI has no trusted DMA context: the host creates it first",
            Error::DmaNotAccepted => {
                "start of a TDI whose trusted DMA context its owner has not accepted, on a platform whose guest accepts it before START (TDX): nothing changed"
            }
            Error::DmaContextRemains => {
                "the TDI's trusted DMA context still exists: unbind (or block, invalidate and remove it) before the TDI is removed"
            }
            Error::DmaNotBlocked => {
                "invalidation or removal of a trusted DMA context that was not blocked first"
            }
            Error::IotlbInvalidationPending => {
                "the blocked trusted DMA context's IOTLB invalidation is not complete"
            }
            Error::IotlbNotTracked => {
                "the IOTLB invalidation of the guest's domain that the last track of its table asked for is not complete while a trusted DMA context names the table (TDX)"
            }
            Error::DeviceUnresponsive => "the device did not answer a TDISP request",
            Error::DeviceRefused => "the device answered a TDISP request with an error",
            Error::DeviceMalformed => {
                "the device's answer is not a well-formed TDISP response to the request (length, version, type, interface ID, report layout)"
            }
            Error::ExchangePending => {
                "another operation of the TDI (or a bind of another TDI of the device) waits on the device: answer it, or unbind to abandon it"
            }
            Error::NoExchange => "a device response for a TDI with no request outstanding",
            Error::RelayMalformed => {
                "relayed bytes are not a DOE/SPDM/secured record of the outstanding exchange (garbled, too long, another TDI's, stale): nothing changed, the exchange stays outstanding"
            }
            Error::RelayBufferTooSmall => {
                "the buffer for the request to relay holds fewer than `MAX_RELAY_BYTES`"
            }
            Error::SequenceExhausted => {
                "the secure session has used every sequence number: it must be rekeyed (SPDM KEY_UPDATE) before another exchange; nothing changed"
            }
            Error::Busy(_) => "the operand's lock is held by another CPU; retry",
            Error::Inconsistent => {
                "the firmware's own records disagree (a counter would drift): refused, nothing changed"
            }
        }
    }

    /// The error with this code, if any (ABI decoders use it).
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

/// Numeric code of any outcome.
pub fn outcome_code(outcome: &TsmResult<Completion>) -> u16 {
    match outcome {
        Ok(done) => done.code(),
        Err(e) => e.code(),
    }
}

/// `0x301 TdiBound: <meaning>`: the code, the name and the module table's meaning, one line.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#05x} {self:?}: {}", self.code(), self.meaning())
    }
}

/// Always, not only with `std`: `core::error::Error` lets no_std callers box or chain it too.
impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for (i, a) in Error::ALL.iter().enumerate() {
            assert_eq!(Error::from_code(a.code()), Some(*a));
            assert_ne!(a.code(), CODE_DONE);
            assert_ne!(a.code(), CODE_RESUMABLE);
            for b in Error::ALL.iter().skip(i + 1) {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?} share a code");
            }
        }
        assert_eq!(Error::from_code(0x7ff), None);
    }

    #[test]
    fn every_status_is_in_the_module_table() {
        let doc = include_str!("status.rs");
        for e in Error::ALL {
            let name = match e {
                Error::Busy(_) => "Busy(operand)".to_string(),
                other => format!("{other:?}"),
            };
            let code = match e {
                Error::Busy(_) => "0x6xx".to_string(),
                other => format!("{:#05x}", other.code()),
            };
            let row = format!("//! | {code} | `{name}` | {} |", e.meaning());
            assert!(doc.contains(&row), "status table lacks row {row}");
        }
    }
    #[test]
    fn display_gives_code_name_and_a_distinct_meaning() {
        for (i, a) in Error::ALL.iter().enumerate() {
            let shown = a.to_string();
            let head = format!("{:#05x} {a:?}: ", a.code());
            assert!(shown.starts_with(&head), "{shown:?} lacks {head:?}");
            assert!(!a.meaning().is_empty(), "{a:?} has no meaning");
            assert_eq!(shown.len(), head.len() + a.meaning().len());
            assert!(
                !shown.contains('\n'),
                "{a:?} displays on more than one line"
            );
            for b in Error::ALL.iter().skip(i + 1) {
                assert_ne!(shown, b.to_string());
                // Busy carries its operand in the name; the other meanings are each their own.
                if !matches!((a, b), (Error::Busy(_), Error::Busy(_))) {
                    assert_ne!(a.meaning(), b.meaning(), "{a:?} and {b:?} mean the same");
                }
            }
        }
        assert_eq!(
            Error::TdiBound.to_string().split(':').next(),
            Some("0x301 TdiBound")
        );
        let boxed: &dyn core::error::Error = &Error::Inconsistent;
        assert!(boxed.source().is_none());
    }
}
