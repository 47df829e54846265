//! Guest messages carried by TIO_GUEST_REQUEST: the SNP guest-message header and the SEV-TIO
//! message bodies.
//!
//! Header: SEV-SNP firmware ABI (doc 56860) "Guest Message Header", as Linux
//! `struct snp_guest_msg_hdr` lays it out (0x60 bytes). Bodies and message types: SEV-TIO
//! firmware interface rev 0.91 (doc 58271) Tables 60-64, as transcribed by public guest code
//! (TIO_MSG_TDI_INFO_REQ = 19, TIO_MSG_MMIO_VALIDATE_REQ = 21; a response is its request + 1).
//! Our model does not encrypt: the body follows the header in the clear, and the AEAD fields
//! (authtag, sequence number, algorithm) are not checked (README, differences). `msg_vmpck`
//! is taken as the VMPCK the message came with, the sender's VMPL (SNP firmware ABI: VMPCK n
//! belongs to VMPL n); real firmware knows it from the key that decrypted the message.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `snp_guest_msg_hdr.hdr_version` we accept (the only one defined).
pub const HDR_VERSION: u8 = 1;
/// `msg_version` we accept for every TIO message.
pub const MSG_VERSION: u8 = 1;
/// Highest VMPCK index: an SNP guest has four VM platform communication keys, VMPCK0-3, one
/// per VMPL (SEV-SNP firmware ABI, doc 56860, "Guest Message Header" and the guest context's
/// VMPCKs; Linux `snp_msg_desc.vmpck_id` 0-3). A header naming another is malformed.
pub const MAX_VMPCK: u8 = 3;

/// TIO_MSG_TDI_INFO_REQ (rev 0.91 Table 60).
pub const MSG_TDI_INFO_REQ: u8 = 19;
/// TIO_MSG_TDI_INFO_RSP (Table 61).
pub const MSG_TDI_INFO_RSP: u8 = 20;
/// TIO_MSG_MMIO_VALIDATE_REQ (Table 63).
pub const MSG_MMIO_VALIDATE_REQ: u8 = 21;
/// TIO_MSG_MMIO_VALIDATE_RSP (Table 64).
pub const MSG_MMIO_VALIDATE_RSP: u8 = 22;
/// TIO_MSG_SDTE_WRITE_REQ: the guest writes its TDI's sDTE (Linux `enum msg_type` in
/// `arch/x86/include/asm/sev.h` of the SEV-TIO guest patch, `<20260225053806.3311234-8-aik@amd.com>`;
/// rev 0.91 Table 67). Body [`SdteWriteReq`].
pub const MSG_SDTE_WRITE_REQ: u8 = 25;
/// TIO_MSG_SDTE_WRITE_RSP (same source; Table 69). Body [`SdteWriteRsp`].
pub const MSG_SDTE_WRITE_RSP: u8 = 26;
/// Ours: the guest accepts the TDI and asks for START_INTERFACE.
pub const MSG_TDI_START_REQ: u8 = 0xF1;
/// Ours: answer to [`MSG_TDI_START_REQ`].
pub const MSG_TDI_START_RSP: u8 = 0xF2;
/// Ours: the guest asks for its CONFIG_LOCKED TDI to run; the firmware records it, and the
/// host's TDI_BIND with RUN_FORCE then starts it (Linux's guest asks the host alone, GHCB
/// `SVM_VMGEXIT_SEV_TIO_OP` RUN; the firmware hears the guest here). Body [`TdiReq`].
pub const MSG_TDI_RUN_REQ: u8 = 0xF3;
/// Ours: answer to [`MSG_TDI_RUN_REQ`]. Body [`TdiStartRsp`].
pub const MSG_TDI_RUN_RSP: u8 = 0xF4;

/// The SNP guest message header (0x60 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MsgHeader {
    /// AEAD tag (not checked in our model).
    pub authtag: [u8; 32],
    /// Sequence number (@0x20; not checked in our model).
    pub msg_seqno: U64,
    /// Reserved.
    pub reserved1: [u8; 8],
    /// AEAD algorithm (@0x30; not checked in our model).
    pub algo: u8,
    /// Header version, [`HDR_VERSION`] (@0x31).
    pub hdr_version: u8,
    /// Header size, 0x60 (@0x32).
    pub hdr_sz: U16,
    /// Message type (@0x34).
    pub msg_type: u8,
    /// Message version, [`MSG_VERSION`] (@0x35).
    pub msg_version: u8,
    /// Body size (@0x36).
    pub msg_sz: U16,
    /// Reserved.
    pub reserved2: U32,
    /// VMPCK index (@0x3C): the key protecting the message, so the sender's VMPL; at most
    /// [`MAX_VMPCK`]. Our model does not encrypt, so nothing proves it (README, differences).
    pub msg_vmpck: u8,
    /// Reserved.
    pub reserved3: [u8; 35],
}
const _: () = assert!(core::mem::size_of::<MsgHeader>() == 0x60);

/// Size of [`MsgHeader`].
pub const HDR_SIZE: u16 = 0x60;

impl MsgHeader {
    /// A header for a body of type `msg_type` and `size` bytes.
    pub fn new(msg_type: u8, size: usize) -> Self {
        let mut h = Self::new_zeroed();
        h.hdr_version = HDR_VERSION;
        h.hdr_sz = HDR_SIZE.into();
        h.msg_type = msg_type;
        h.msg_version = MSG_VERSION;
        h.msg_sz = u16::try_from(size).unwrap_or(u16::MAX).into();
        h
    }

    /// Version, size, VMPCK and reserved fields as the ABI requires.
    pub fn well_formed(&self) -> bool {
        self.hdr_version == HDR_VERSION
            && self.hdr_sz.get() == HDR_SIZE
            && self.msg_version == MSG_VERSION
            && self.msg_vmpck <= MAX_VMPCK
            && self.reserved1.iter().all(|b| *b == 0)
            && self.reserved2.get() == 0
            && self.reserved3.iter().all(|b| *b == 0)
    }
}

/// TIO_MSG_TDI_INFO_REQ body (16 bytes) and TDI_START_REQ body (ours, same layout).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdiReq {
    /// The routing ID the host gave the TDI at TDI_BIND.
    pub guest_device_id: U16,
    /// Reserved.
    pub reserved: [u8; 14],
}
const _: () = assert!(core::mem::size_of::<TdiReq>() == 16);

/// TDI_START_RSP body (ours, 16 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdiStartRsp {
    /// Echoed.
    pub guest_device_id: U16,
    /// SEV status of the start (0 success).
    pub status: U16,
    /// tsm-core code behind `status` (our extension, as in [`crate::status::Outcome`]).
    pub detail: U16,
    /// Reserved.
    pub reserved: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<TdiStartRsp>() == 16);

/// TIO_MSG_TDI_INFO_RSP body (192 bytes; Table 61).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdiInfoRsp {
    /// Echoed.
    pub guest_device_id: U16,
    /// TDI status: 0 unbound, 1 bound and locked, 2 bound and running (@0x02).
    pub tdi_status: U16,
    /// Reserved.
    pub reserved0: [u8; 12],
    /// Measurement digest info (@0x10).
    pub meas_digest_info: U32,
    /// Lock flags given at bind (@0x14).
    pub lock_flags: U32,
    /// SPDM algorithms (@0x18).
    pub spdm_algos: U64,
    /// Certificate digest (@0x20).
    pub certs_digest: [u8; 48],
    /// Measurement digest (@0x50).
    pub meas_digest: [u8; 48],
    /// Interface report digest (@0x80).
    pub interface_report_digest: [u8; 48],
    /// Reports produced (@0xB0).
    pub tdi_report_count: U64,
    /// Reserved.
    pub reserved1: U64,
}
const _: () = assert!(core::mem::size_of::<TdiInfoRsp>() == 192);

/// MMIO_VALIDATE request flag: the value to give the Validated bits.
pub const VALIDATE_FLAG_VALIDATED: u16 = 1 << 0;
/// MMIO_VALIDATE request flag: set the bits even if they are not uniform now.
pub const VALIDATE_FLAG_FORCE: u16 = 1 << 1;
/// MMIO_VALIDATE response flag: some bit changed.
pub const VALIDATE_FLAG_CHANGED: u16 = 1 << 0;

/// TIO_MSG_MMIO_VALIDATE_REQ body (48 bytes; Table 63).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MmioValidateReq {
    /// The routing ID the host gave the TDI at TDI_BIND.
    pub guest_device_id: U16,
    /// Reserved.
    pub reserved0: [u8; 14],
    /// Guest physical address of the subrange (@0x10).
    pub subrange_base: U64,
    /// 4K pages in the subrange (@0x18).
    pub subrange_page_count: U32,
    /// Offset of the subrange in the reported range, in 4K pages (@0x1C; unit ours).
    pub range_offset: U32,
    /// `VALIDATE_FLAG_*` (@0x20).
    pub flags: U16,
    /// Index of the range in the interface report (@0x22).
    pub range_id: U16,
    /// Reserved.
    pub reserved2: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<MmioValidateReq>() == 48);

/// TIO_MSG_MMIO_VALIDATE_RSP body (48 bytes; Table 64).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MmioValidateRsp {
    /// Echoed.
    pub guest_device_id: U16,
    /// `MmioValidateStatus` (@0x02).
    pub status: U16,
    /// Reserved.
    pub reserved0: [u8; 12],
    /// Echoed (@0x10).
    pub subrange_base: U64,
    /// Echoed (@0x18).
    pub subrange_page_count: U32,
    /// Echoed (@0x1C).
    pub range_offset: U32,
    /// `VALIDATE_FLAG_CHANGED` (@0x20).
    pub flags: U16,
    /// Echoed (@0x22).
    pub range_id: U16,
    /// Reserved.
    pub reserved2: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<MmioValidateRsp>() == 48);

/// MMIO_VALIDATE statuses (Linux `include/linux/psp-sev.h` `enum mmio_validate_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MmioValidateStatus {
    /// `MMIO_VALIDATE_SUCCESS = 0`.
    Success = 0,
    /// `MMIO_VALIDATE_INVALID_TDI = 1`: not this guest's TDI, or a wrong guest device ID.
    InvalidTdi = 1,
    /// `MMIO_VALIDATE_TDI_UNBOUND = 2`: the TDI is not bound (or is in ERROR or unbinding).
    TdiUnbound = 2,
    /// `MMIO_VALIDATE_NOT_ASSIGNED = 3`: a page is not assigned to the guest.
    NotAssigned = 3,
    /// `MMIO_VALIDATE_NOT_UNIFORM = 4`: the Validated bits differ and force was not set.
    NotUniform = 4,
    /// `MMIO_VALIDATE_NOT_MAPPED = 6`: a page is not at the expected guest address.
    NotMapped = 6,
    /// `MMIO_VALIDATE_NOT_REPORTED = 7`: no such range in the interface report.
    NotReported = 7,
    /// `MMIO_VALIDATE_OUT_OF_RANGE = 8`: the subrange leaves the reported range.
    OutOfRange = 8,
}

/// TIO_MSG_SDTE_WRITE_REQ body (0x50 bytes; Linux `struct tio_msg_sdte_write_req` of the
/// guest patch: `guest_device_id` u16, 14 reserved bytes, the sDTE at 0x10).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SdteWriteReq {
    /// The routing ID the host gave the TDI at TDI_BIND.
    pub guest_device_id: U16,
    /// Reserved.
    pub reserved: [u8; 14],
    /// The entry the guest asks for: only [`crate::sdte::GUEST_BITS`] may be set (@0x10).
    pub sdte: crate::sdte::Sdte,
}
const _: () = assert!(core::mem::size_of::<SdteWriteReq>() == 0x50);

/// TIO_MSG_SDTE_WRITE_RSP body (0x10 bytes; Linux `struct tio_msg_sdte_write_rsp`).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SdteWriteRsp {
    /// Echoed.
    pub guest_device_id: U16,
    /// [`SdteWriteStatus`] (@0x02).
    pub status: U16,
    /// Reserved.
    pub reserved: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<SdteWriteRsp>() == 0x10);

/// SDTE_WRITE statuses (Linux `include/linux/psp-sev.h` `enum sdte_write_status` of the guest
/// patch; the ours one past them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum SdteWriteStatus {
    /// `SDTE_WRITE_SUCCESS = 0`.
    Success = 0,
    /// `SDTE_WRITE_INVALID_TDI = 1`: not a TDI of this guest under that guest device ID.
    InvalidTdi = 1,
    /// `SDTE_WRITE_TDI_NOT_BOUND = 2`: the TDI is not bound, or not CONFIG_LOCKED or RUN (in
    /// ERROR, being unbound).
    TdiNotBound = 2,
    /// `SDTE_WRITE_RESERVED = 3` ("reserved fields were not 0"): a bit the guest may not set.
    Reserved = 3,
    /// Ours (0x80): a write that would change a valid entry, an invalidation (V clear)
    /// included: the firmware keeps it as it is until the unbind tears it down. A change of a
    /// valid entry holds only once an ASID fence flushed what the IOMMU cached under the old
    /// permissions, and the fence completes later; the unbind raises and awaits it. A rewrite
    /// with the entry's own bits is `Success`, changing nothing.
    KeptUntilUnbind = 0x80,
    /// Ours (0x81): the entry's VMPL is numerically below (more privileged than) the sender's,
    /// the VMPCK the message came with: a VMPL n guest cannot give its device the permissions
    /// of a VMPL below n (as the SNP firmware ABI refuses a MSG_REPORT_REQ VMPL below the
    /// sender's). The guest patch's enum has no status for a field of invalid value (an early
    /// AMD guest `tio.c` had `SDTE_WRITE_INVALID`, "a provided field has an invalid value", at
    /// 3, the number the current enum gives `RESERVED`), so ours. The sender's VMPL is the
    /// header's `msg_vmpck`, which this model takes as sent: messages are not encrypted, so no
    /// key proves it, and a sender claiming VMPCK 0 passes the check (real firmware knows the
    /// VMPCK from the key that decrypted the message).
    VmplBelowSender = 0x81,
}

/// Longest body we exchange (the TDI_INFO response).
pub const MAX_BODY: usize = 192;
