//! SEV firmware status codes, and the one mapping from tsm-core statuses to them.
//!
//! Numbers are AMD's (SEV API, doc 55766, "Status Codes"; SEV-TIO firmware interface, doc
//! 58271), as the Linux host driver spells them in `include/uapi/linux/psp-sev.h`
//! (`enum sev_ret_code`), and the SEV-TIO ones as the upstream series adds them (psp-sev.h,
//! "[PATCH kernel v3 2/4]" `<20251202024449.542361-3-aik@amd.com>`). Four codes are ours, in
//! a range AMD does not use (`0xFF00` up): [`SevStatus::RESUME_REQUIRED`] and
//! [`SevStatus::BUSY`] (the PSP has neither because it runs one command at a time to
//! completion, our firmware does neither), and two refusals of a relayed answer that change
//! nothing ([`SevStatus::NO_SPDM_REQUEST`], [`SevStatus::INVALID_SPDM_RESPONSE`]), which AMD's
//! firmware does not publish.

use tsm_core::status::{Completion, Error, TsmResult};

/// A firmware status as the host reads it from the mailbox (CMDRESP bits 15:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SevStatus(pub u16);

impl SevStatus {
    /// The command completed. psp-sev.h `SEV_RET_SUCCESS = 0x0000`.
    pub const SUCCESS: Self = Self(0x0000);
    /// The platform is not in a state that allows the command.
    /// psp-sev.h `SEV_RET_INVALID_PLATFORM_STATE = 0x0001`.
    pub const INVALID_PLATFORM_STATE: Self = Self(0x0001);
    /// The guest is not in a state that allows the command.
    /// psp-sev.h `SEV_RET_INVALID_GUEST_STATE = 0x0002`.
    pub const INVALID_GUEST_STATE: Self = Self(0x0002);
    /// A buffer length is wrong. psp-sev.h `SEV_RET_INVALID_LEN = 0x0004`.
    pub const INVALID_LEN: Self = Self(0x0004);
    /// An address is invalid or not aligned. psp-sev.h `SEV_RET_INVALID_ADDRESS = 0x0009`.
    pub const INVALID_ADDRESS: Self = Self(0x0009);
    /// The ASID is invalid. psp-sev.h `SEV_RET_INVALID_ASID = 0x000D`.
    pub const INVALID_ASID: Self = Self(0x000D);
    /// The guest context is unknown, or the guest is not the one the object belongs to.
    /// psp-sev.h `SEV_RET_INVALID_GUEST = 0x0010`.
    pub const INVALID_GUEST: Self = Self(0x0010);
    /// Unknown command. psp-sev.h `SEV_RET_INVALID_COMMAND = 0x0011` (we answer
    /// [`SevStatus::INVALID_PARAM`] instead, see the README).
    pub const INVALID_COMMAND: Self = Self(0x0011);
    /// A parameter is invalid (short or malformed buffer, reserved field set, ...).
    /// psp-sev.h `SEV_RET_INVALID_PARAM = 0x0016`.
    pub const INVALID_PARAM: Self = Self(0x0016);
    /// A firmware table is full. psp-sev.h `SEV_RET_RESOURCE_LIMIT = 0x0017`.
    pub const RESOURCE_LIMIT: Self = Self(0x0017);
    /// A page has the wrong size. psp-sev.h `SEV_RET_INVALID_PAGE_SIZE = 0x0019`.
    pub const INVALID_PAGE_SIZE: Self = Self(0x0019);
    /// A page's RMP state forbids the operation.
    /// psp-sev.h `SEV_RET_INVALID_PAGE_STATE = 0x001A`.
    pub const INVALID_PAGE_STATE: Self = Self(0x001A);
    /// A page belongs to someone else. psp-sev.h `SEV_RET_INVALID_PAGE_OWNER = 0x001C`.
    pub const INVALID_PAGE_OWNER: Self = Self(0x001C);
    /// A buffer is too small for what the firmware must write there.
    /// psp-sev.h `SEV_RET_INCORRECT_BUFFER_LENGTH = 0x0030`.
    pub const INCORRECT_BUFFER_LENGTH: Self = Self(0x0030);
    /// The firmware needs bigger output or scratch buffers: it wrote the capacity it needs
    /// into their headers. psp-sev.h `SEV_RET_EXPAND_BUFFER_LENGTH_REQUEST = 0x0031`. Not
    /// produced: every buffer this firmware writes fits one 4K page.
    pub const EXPAND_BUFFER_LENGTH_REQUEST: Self = Self(0x0031);
    /// The command waits on the device: relay the request in `spdm_ctrl.req` to the device's
    /// DOE mailbox, put its answer in `spdm_ctrl.resp` and issue the written-back command
    /// again. psp-sev.h `SEV_RET_SPDM_REQUEST = 0x0032`.
    pub const SPDM_REQUEST: Self = Self(0x0032);
    /// An SPDM exchange with the device failed (the device answered with an error).
    /// psp-sev.h `SEV_RET_SPDM_ERROR = 0x0033`.
    pub const SPDM_ERROR: Self = Self(0x0033);
    /// The device connection failed (no answer).
    /// psp-sev.h `SEV_RET_SEV_STATUS_ERR_IN_DEV_CONN = 0x0035`.
    pub const ERR_IN_DEV_CONN: Self = Self(0x0035);
    /// Unknown device context. psp-sev.h `SEV_RET_SEV_STATUS_INVALID_DEV_CTX = 0x0036`.
    pub const INVALID_DEV_CTX: Self = Self(0x0036);
    /// Unknown TDI context. psp-sev.h `SEV_RET_SEV_STATUS_INVALID_TDI_CTX = 0x0037`.
    pub const INVALID_TDI_CTX: Self = Self(0x0037);
    /// The TDI does not belong to the device named.
    /// psp-sev.h `SEV_RET_SEV_STATUS_INVALID_TDI = 0x0038`.
    pub const INVALID_TDI: Self = Self(0x0038);
    /// A reclaim must come first. psp-sev.h `SEV_RET_SEV_STATUS_RECLAIM_REQUIRED = 0x0039`.
    pub const RECLAIM_REQUIRED: Self = Self(0x0039);
    /// The object is in use (bound TDI, device with TDIs, guest with TDIs).
    /// psp-sev.h `SEV_RET_IN_USE = 0x003A`.
    pub const IN_USE: Self = Self(0x003A);
    /// The device is not in a state that allows the command.
    /// psp-sev.h `SEV_RET_SEV_STATUS_INVALID_DEV_STATE = 0x003B`.
    pub const INVALID_DEV_STATE: Self = Self(0x003B);
    /// The TDI is not in a state that allows the command.
    /// psp-sev.h `SEV_RET_SEV_STATUS_INVALID_TDI_STATE = 0x003C`.
    pub const INVALID_TDI_STATE: Self = Self(0x003C);
    /// The device's certificates changed since DEV_CONNECT. psp-sev.h
    /// `SEV_RET_SEV_STATUS_DEV_CERT_CHANGED = 0x003D` ("[PATCH kernel v3 2/4]"
    /// `<20251202024449.542361-3-aik@amd.com>`); Linux treats it as an error. Not produced: the
    /// session is given at construction and never renegotiated.
    pub const DEV_CERT_CHANGED: Self = Self(0x003D);
    /// The SPDM session must be resynchronised. psp-sev.h `SEV_RET_SEV_STATUS_RESYNC_REQ =
    /// 0x003E` (same patch); Linux treats it as an error. Not produced: an exhausted session
    /// is [`SevStatus::SPDM_SESSION_EXHAUSTED`], which names the rekey it needs.
    pub const RESYNC_REQ: Self = Self(0x003E);
    /// The device's response is larger than the firmware takes. psp-sev.h
    /// `SEV_RET_SEV_STATUS_RESPONSE_TOO_LARGE = 0x003F` (same patch; the name is all the
    /// public source says); Linux treats it as an error and ends its continuation loop.
    /// Produced for the one response the firmware is handed: a `spdm_ctrl.resp` data object
    /// whose headers agree but which is longer than `relay::MAX_DOBJ` (Linux sizes its
    /// `pci_doe` response by `spdm_req_size_max - 0x50`, so a device's long answer arrives
    /// consistent); detail 0, nothing changed, the request stays outstanding. A response whose
    /// headers disagree is [`SevStatus::INVALID_SPDM_RESPONSE`]. What the firmware writes
    /// always fits (asserted at compile time against the sizes TIO_STATUS reports).
    pub const RESPONSE_TOO_LARGE: Self = Self(0x003F);
    /// Ours: a bounded step of a long command (TDI_UNBIND) completed and its progress is kept;
    /// issue the same command again to continue.
    pub const RESUME_REQUIRED: Self = Self(0xFF01);
    /// Ours: another CPU holds a lock the command needs; retry.
    pub const BUSY: Self = Self(0xFF02);
    /// Ours: a continuation ([`crate::abi::FLAG_CONTINUE`]) for a TDI that has no request
    /// outstanding with its device; nothing changed.
    pub const NO_SPDM_REQUEST: Self = Self(0xFF03);
    /// Ours: `spdm_ctrl.resp` does not hold the device's answer to the TDI's outstanding
    /// request (garbled, too long, stale, another TDI's, the request itself); nothing changed
    /// and the request stays outstanding: relay it again, or unbind.
    pub const INVALID_SPDM_RESPONSE: Self = Self(0xFF04);
    /// Ours: the SPDM session has used every sequence number and must be rekeyed (SPDM
    /// KEY_UPDATE) before another exchange; nothing changed.
    pub const SPDM_SESSION_EXHAUSTED: Self = Self(0xFF05);

    /// Every status this firmware returns, for exhaustive tests and the README table.
    pub const ALL: [SevStatus; 33] = [
        Self::SUCCESS,
        Self::INVALID_PLATFORM_STATE,
        Self::INVALID_GUEST_STATE,
        Self::INVALID_LEN,
        Self::INVALID_ADDRESS,
        Self::INVALID_ASID,
        Self::INVALID_GUEST,
        Self::INVALID_COMMAND,
        Self::INVALID_PARAM,
        Self::RESOURCE_LIMIT,
        Self::INVALID_PAGE_SIZE,
        Self::INVALID_PAGE_STATE,
        Self::INVALID_PAGE_OWNER,
        Self::INCORRECT_BUFFER_LENGTH,
        Self::EXPAND_BUFFER_LENGTH_REQUEST,
        Self::SPDM_REQUEST,
        Self::SPDM_ERROR,
        Self::ERR_IN_DEV_CONN,
        Self::INVALID_DEV_CTX,
        Self::INVALID_TDI_CTX,
        Self::INVALID_TDI,
        Self::RECLAIM_REQUIRED,
        Self::IN_USE,
        Self::INVALID_DEV_STATE,
        Self::INVALID_TDI_STATE,
        Self::RESUME_REQUIRED,
        Self::BUSY,
        Self::NO_SPDM_REQUEST,
        Self::INVALID_SPDM_RESPONSE,
        Self::SPDM_SESSION_EXHAUSTED,
        Self::DEV_CERT_CHANGED,
        Self::RESYNC_REQ,
        Self::RESPONSE_TOO_LARGE,
    ];

    /// The status's name as this module spells it (psp-sev.h's without `SEV_RET_`, ours
    /// marked in the docs above), or `None` for a value with no constant here.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "SUCCESS",
            Self::INVALID_PLATFORM_STATE => "INVALID_PLATFORM_STATE",
            Self::INVALID_GUEST_STATE => "INVALID_GUEST_STATE",
            Self::INVALID_LEN => "INVALID_LEN",
            Self::INVALID_ADDRESS => "INVALID_ADDRESS",
            Self::INVALID_ASID => "INVALID_ASID",
            Self::INVALID_GUEST => "INVALID_GUEST",
            Self::INVALID_COMMAND => "INVALID_COMMAND",
            Self::INVALID_PARAM => "INVALID_PARAM",
            Self::RESOURCE_LIMIT => "RESOURCE_LIMIT",
            Self::INVALID_PAGE_SIZE => "INVALID_PAGE_SIZE",
            Self::INVALID_PAGE_STATE => "INVALID_PAGE_STATE",
            Self::INVALID_PAGE_OWNER => "INVALID_PAGE_OWNER",
            Self::INCORRECT_BUFFER_LENGTH => "INCORRECT_BUFFER_LENGTH",
            Self::EXPAND_BUFFER_LENGTH_REQUEST => "EXPAND_BUFFER_LENGTH_REQUEST",
            Self::SPDM_REQUEST => "SPDM_REQUEST",
            Self::SPDM_ERROR => "SPDM_ERROR",
            Self::ERR_IN_DEV_CONN => "ERR_IN_DEV_CONN",
            Self::INVALID_DEV_CTX => "INVALID_DEV_CTX",
            Self::INVALID_TDI_CTX => "INVALID_TDI_CTX",
            Self::INVALID_TDI => "INVALID_TDI",
            Self::RECLAIM_REQUIRED => "RECLAIM_REQUIRED",
            Self::IN_USE => "IN_USE",
            Self::INVALID_DEV_STATE => "INVALID_DEV_STATE",
            Self::INVALID_TDI_STATE => "INVALID_TDI_STATE",
            Self::DEV_CERT_CHANGED => "DEV_CERT_CHANGED",
            Self::RESYNC_REQ => "RESYNC_REQ",
            Self::RESPONSE_TOO_LARGE => "RESPONSE_TOO_LARGE",
            Self::RESUME_REQUIRED => "RESUME_REQUIRED",
            Self::BUSY => "BUSY",
            Self::NO_SPDM_REQUEST => "NO_SPDM_REQUEST",
            Self::INVALID_SPDM_RESPONSE => "INVALID_SPDM_RESPONSE",
            Self::SPDM_SESSION_EXHAUSTED => "SPDM_SESSION_EXHAUSTED",
            _ => return None,
        })
    }
}

/// `0x003a IN_USE`, or `0x1234 (unknown)` for a value with no name.
impl core::fmt::Display for SevStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#06x} {}", self.0, self.name().unwrap_or("(unknown)"))
    }
}

/// The answer to one command: AMD's status, plus the precise tsm-core code behind it.
///
/// `detail` is our extension (0 when the status did not come from the core): SEV statuses are
/// coarser than the core's (five TDI-state refusals are all `INVALID_TDI_STATE`), so we report
/// the core code beside the AMD one, the way a TDX status carries an operand id. A host that
/// only knows AMD's codes reads `status` and loses nothing it could have had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// AMD's status (or one of our two, see [`SevStatus`]).
    pub status: SevStatus,
    /// The tsm-core status code (`tsm_core::status` table), 0 if none.
    pub detail: u16,
}

impl Outcome {
    /// A status the SEV layer decided itself (no core status behind it).
    pub const fn plain(status: SevStatus) -> Self {
        Self { status, detail: 0 }
    }

    /// Success.
    pub const SUCCESS: Self = Self::plain(SevStatus::SUCCESS);

    /// The outcome for a core result.
    pub fn from_core(result: TsmResult<Completion>) -> Self {
        match result {
            Ok(c) => Self {
                status: from_completion(c),
                detail: 0,
            },
            Err(e) => Self {
                status: from_error(e),
                detail: e.code(),
            },
        }
    }

    /// Back to a core result: `detail` when present, else the coarse [`to_error`].
    /// `SPDM_REQUEST` is `Relay(0)`: the request's length is in the data object header of
    /// `spdm_ctrl.req`, not in the status.
    pub fn to_core(self) -> TsmResult<Completion> {
        match self.status {
            SevStatus::SUCCESS => Ok(Completion::Done),
            SevStatus::RESUME_REQUIRED => Ok(Completion::Resumable),
            SevStatus::SPDM_REQUEST => Ok(Completion::Relay(0)),
            status => Err(Error::from_code(self.detail).unwrap_or_else(|| to_error(status))),
        }
    }
}

/// Status of a successful core call.
pub const fn from_completion(c: Completion) -> SevStatus {
    match c {
        Completion::Done => SevStatus::SUCCESS,
        Completion::Resumable => SevStatus::RESUME_REQUIRED,
        Completion::Relay(_) => SevStatus::SPDM_REQUEST,
    }
}

/// THE mapping from core statuses to SEV statuses (README "Status mapping" lists it too).
pub const fn from_error(e: Error) -> SevStatus {
    match e {
        // Addresses: SEV reports bad and unaligned addresses alike.
        Error::InvalidAddress | Error::Misaligned => SevStatus::INVALID_ADDRESS,
        // Malformed host input that is not an address.
        Error::InvalidRange
        | Error::InvalidHandle
        | Error::InvalidRequesterId
        | Error::RangeOutsideDevice
        | Error::RangesOverlap
        | Error::ForeignInterface
        | Error::EmptyReport => SevStatus::INVALID_PARAM,
        // Memory the firmware reserved (RMP-covered system memory, its own pages).
        Error::ReservedMemory => SevStatus::INVALID_ADDRESS,
        Error::InvalidPageSize | Error::SizeMismatch => SevStatus::INVALID_PAGE_SIZE,
        // Every fixed table running out.
        Error::TooManyRanges
        | Error::DeviceTableFull
        | Error::TdiTableFull
        | Error::GuestTableFull
        | Error::OwnershipTableFull
        | Error::SecureTableFull
        // The RMP gives up no table pages: never SEV's, the same class.
        | Error::SecureTableFlushPending => SevStatus::RESOURCE_LIMIT,
        // Something the host wants to take or free is held.
        Error::TdiBound
        | Error::DeviceInUse
        | Error::GuestInUse
        | Error::DuplicateDevice
        | Error::DuplicateTdi
        | Error::BarInUse
        | Error::DmaContextRemains => SevStatus::IN_USE,
        // The TDI's lifecycle state forbids the command.
        Error::TdiNotBound
        | Error::TdiAlreadyBound
        | Error::TdiNotLocked
        | Error::TdiInError
        | Error::UnbindInProgress
        // The TDI's trusted DMA context (the sDTE) is not in the state the command needs.
        | Error::DmaContextExists
        | Error::NoDmaContext
        | Error::DmaNotBlocked
        | Error::DmaNotAccepted
        | Error::IotlbInvalidationPending
        // The guest's domain owed a track's IOTLB invalidation: TDX's wait, never SEV's (its
        // ASID fence covers TLB and IOTLB together); mapped as the context's own wait.
        | Error::IotlbNotTracked => SevStatus::INVALID_TDI_STATE,
        Error::NotOwner => SevStatus::INVALID_GUEST,
        // The device's IDE stream was cut by a forced TDI_UNBIND: reconnect it first.
        Error::StreamCut => SevStatus::INVALID_DEV_STATE,
        Error::HpaNotOwned => SevStatus::INVALID_PAGE_OWNER,
        // RMP entry states (assigned, blocked, fenced); a page assigned where the report does
        // not put it is one in the wrong state for the guest's validation.
        Error::ReportedAddressMismatch
        | Error::GpaAlreadyMapped
        | Error::HpaAlreadyMapped
        | Error::NotMapped
        | Error::NotBlocked
        | Error::TlbFlushPending => SevStatus::INVALID_PAGE_STATE,
        Error::DeviceUnresponsive => SevStatus::ERR_IN_DEV_CONN,
        Error::DeviceRefused | Error::DeviceMalformed => SevStatus::SPDM_ERROR,
        // Another operation of the TDI (or another TDI's bind of the device) holds the
        // device's SPDM exchange: the object the command needs is in use.
        Error::ExchangePending => SevStatus::IN_USE,
        // The relay itself: AMD publishes no code for these (ours).
        Error::NoExchange => SevStatus::NO_SPDM_REQUEST,
        Error::RelayMalformed => SevStatus::INVALID_SPDM_RESPONSE,
        Error::SequenceExhausted => SevStatus::SPDM_SESSION_EXHAUSTED,
        // The request does not fit where it must be written.
        Error::RelayBufferTooSmall => SevStatus::INCORRECT_BUFFER_LENGTH,
        Error::Busy(_) => SevStatus::BUSY,
        // The firmware's own records disagree: the platform state is not one to act on.
        Error::Inconsistent => SevStatus::INVALID_PLATFORM_STATE,
    }
}

/// The most likely core status for a bare SEV status (no `detail`): what a host that only
/// reads AMD's code can know. Several core statuses share each SEV code; this names the
/// representative the README lists first.
pub const fn to_error(s: SevStatus) -> Error {
    match s {
        SevStatus::INVALID_ADDRESS => Error::InvalidAddress,
        SevStatus::INVALID_PLATFORM_STATE => Error::Inconsistent,
        SevStatus::INVALID_PAGE_SIZE => Error::SizeMismatch,
        SevStatus::RESOURCE_LIMIT => Error::SecureTableFull,
        SevStatus::IN_USE => Error::TdiBound,
        SevStatus::INVALID_TDI_STATE => Error::TdiNotBound,
        SevStatus::INVALID_GUEST => Error::NotOwner,
        SevStatus::INVALID_DEV_STATE => Error::StreamCut,
        SevStatus::INVALID_PAGE_OWNER => Error::HpaNotOwned,
        SevStatus::INVALID_PAGE_STATE => Error::NotMapped,
        SevStatus::ERR_IN_DEV_CONN => Error::DeviceUnresponsive,
        SevStatus::SPDM_ERROR => Error::DeviceRefused,
        SevStatus::BUSY => Error::Busy(tsm_core::status::Operand::SecureTable),
        SevStatus::NO_SPDM_REQUEST => Error::NoExchange,
        SevStatus::INVALID_SPDM_RESPONSE => Error::RelayMalformed,
        SevStatus::SPDM_SESSION_EXHAUSTED => Error::SequenceExhausted,
        SevStatus::INCORRECT_BUFFER_LENGTH => Error::RelayBufferTooSmall,
        // The relay was refused, nothing changed and the exchange is outstanding, as for a
        // garbled response; the core has no status of its own for a response too long.
        SevStatus::RESPONSE_TOO_LARGE => Error::RelayMalformed,
        // Unknown contexts are unknown handles; everything else is malformed input.
        _ => Error::InvalidHandle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_status_maps_and_round_trips_through_detail() {
        for e in Error::ALL {
            let out = Outcome::from_core(Err(e));
            assert_ne!(out.status, SevStatus::SUCCESS, "{e:?}");
            assert_ne!(out.status, SevStatus::RESUME_REQUIRED, "{e:?}");
            assert!(SevStatus::ALL.contains(&out.status), "{e:?}");
            assert_eq!(out.to_core(), Err(e));
            // Without the detail the coarse decode stays in the same SEV class.
            let coarse = Outcome::plain(out.status).to_core();
            assert_eq!(coarse.map_err(from_error), Err(out.status), "{e:?}");
        }
        assert_eq!(Outcome::from_core(Ok(Completion::Done)), Outcome::SUCCESS);
        assert_eq!(
            Outcome::from_core(Ok(Completion::Resumable)).to_core(),
            Ok(Completion::Resumable)
        );
        let relay = Outcome::from_core(Ok(Completion::Relay(40)));
        assert_eq!(relay, Outcome::plain(SevStatus::SPDM_REQUEST));
        assert_eq!(relay.to_core(), Ok(Completion::Relay(0)));
    }

    #[test]
    fn public_numbers() {
        assert_eq!(SevStatus::INVALID_PARAM.0, 0x16);
        assert_eq!(SevStatus::RESOURCE_LIMIT.0, 0x17);
        assert_eq!(SevStatus::INVALID_PAGE_STATE.0, 0x1A);
        assert_eq!(SevStatus::IN_USE.0, 0x3A);
        assert_eq!(SevStatus::INVALID_TDI_STATE.0, 0x3C);
        assert_eq!(SevStatus::INCORRECT_BUFFER_LENGTH.0, 0x30);
        assert_eq!(SevStatus::EXPAND_BUFFER_LENGTH_REQUEST.0, 0x31);
        assert_eq!(SevStatus::SPDM_REQUEST.0, 0x32);
        assert_eq!(SevStatus::DEV_CERT_CHANGED.0, 0x3D);
        assert_eq!(SevStatus::RESYNC_REQ.0, 0x3E);
        assert_eq!(SevStatus::RESPONSE_TOO_LARGE.0, 0x3F);
        for (i, a) in SevStatus::ALL.iter().enumerate() {
            for b in SevStatus::ALL.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
    }
    #[test]
    fn every_status_displays_its_own_name() {
        for (i, a) in SevStatus::ALL.iter().enumerate() {
            let n = a.name().expect("every returned status is named");
            assert_eq!(a.to_string(), format!("{:#06x} {n}", a.0));
            for b in SevStatus::ALL.iter().skip(i + 1) {
                assert_ne!(b.name(), Some(n));
            }
        }
        assert_eq!(SevStatus::IN_USE.to_string(), "0x003a IN_USE");
        assert_eq!(SevStatus(0x1234).name(), None);
        assert_eq!(SevStatus(0x1234).to_string(), "0x1234 (unknown)");
    }
}
