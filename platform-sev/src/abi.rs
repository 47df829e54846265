//! The SEV-TIO command-buffer ABI: command IDs and buffer layouts.
//!
//! Sources: command IDs from AMD's SEV-TIO firmware interface (doc 58271) as Linux
//! `include/linux/psp-sev.h` (`enum sev_cmd`, `SEV_CMD_TIO_*`) spells them; buffer layouts as
//! `drivers/crypto/ccp/sev-dev-tio.c` (`struct sev_data_tio_*`, all `__packed`) declares them;
//! SNP guest-context commands from the SEV-SNP firmware ABI (doc 56860) as psp-sev.h has them.
//! Commands marked "ours" have no public counterpart: they stand for what the host does with
//! CPU instructions (RMPUPDATE) or sees out of band on real parts, see the README.
//!
//! Every field is little-endian and byte-aligned (`zerocopy::byteorder`), so a layout is its
//! byte offsets and nothing else; the golden tests pin each offset.

use bitfield_struct::bitfield;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::pfn::Pfn;
use crate::status::SevStatus;

/// Longest SEV-TIO command buffer. sev-dev-tio.h `SEV_TIO_MAX_COMMAND_LENGTH = 128`.
pub const MAX_COMMAND_LENGTH: usize = 128;

/// Alignment we require of a command buffer (ours: AMD hands the PSP the buffer's physical
/// address; we insist on natural alignment of its 64-bit fields so no field straddles a
/// host-written cache line).
pub const COMMAND_ALIGN: usize = 8;

/// Size of a system physical page.
pub const PAGE_4K: u64 = 4096;

/// The memory-encryption bit (C-bit) in a system physical address: bit 51, the position EPYC
/// parts report in CPUID 0x8000001F `EBX[5:0]`. With SME active Linux sets it in every address
/// it hands the PSP (`__psp_pa` = `__sme_pa`, and `make_sla` `__sme_set`, AMDESE/linux-kvm
/// @16f379f5 sev-dev-tio.c), and the PSP accepts such addresses: the bit says how the page is
/// reached (encrypted with the host's key), not which page it is. This model's memory is not
/// encrypted, so the bit is stripped once, where an address is decoded ([`strip_c_bit`]), and
/// the firmware's handles, checks and tables never see it. (The SEV-SNP ABI, doc 56860, calls
/// these addresses sPA; its text on the C-bit was not at hand to quote.)
pub const C_BIT: u64 = 1 << 51;

/// An address the host passed, without the C-bit ([`C_BIT`]).
pub const fn strip_c_bit(addr: u64) -> u64 {
    addr & !C_BIT
}

/// The page an SLA names (its low bits are flags, checked when the SLA was accepted), without
/// the C-bit: the one decoder the firmware and the host use.
pub fn sla_page(sla: u64) -> u64 {
    SlaAddr::from_bits(strip_c_bit(sla)).address()
}

/// A command ID as the host writes it into the mailbox (CMDRESP bits 25:16).
pub type CommandId = u32;

/// psp-sev.h `SEV_CMD_SNP_DECOMMISSION = 0x090`: forget a guest context.
pub const SNP_DECOMMISSION: CommandId = 0x090;
/// psp-sev.h `SEV_CMD_SNP_ACTIVATE = 0x091`: give a guest context its ASID.
pub const SNP_ACTIVATE: CommandId = 0x091;
/// psp-sev.h `SEV_CMD_SNP_GCTX_CREATE = 0x093`: create a guest context.
pub const SNP_GCTX_CREATE: CommandId = 0x093;
/// psp-sev.h `SEV_CMD_TIO_STATUS = 0x0D0`: report the platform's TIO state and buffer sizes
/// (issued first by sev-dev-tio.c `sev_tio_init_locked`, AMDESE/linux-kvm @16f379f5).
pub const TIO_STATUS: CommandId = 0x0D0;
/// psp-sev.h `SEV_CMD_TIO_INIT = 0x0D1`: initialise TIO (`sev_tio_init_locked`, after a
/// TIO_STATUS saying enabled and not yet initialised). Every other TIO command needs it.
pub const TIO_INIT: CommandId = 0x0D1;
/// psp-sev.h `SEV_CMD_TIO_DEV_CREATE = 0x0D2`.
pub const TIO_DEV_CREATE: CommandId = 0x0D2;
/// psp-sev.h `SEV_CMD_TIO_DEV_RECLAIM = 0x0D3`.
pub const TIO_DEV_RECLAIM: CommandId = 0x0D3;
/// psp-sev.h `SEV_CMD_TIO_DEV_CONNECT = 0x0D4`.
pub const TIO_DEV_CONNECT: CommandId = 0x0D4;
/// psp-sev.h `SEV_CMD_TIO_DEV_DISCONNECT = 0x0D5`.
pub const TIO_DEV_DISCONNECT: CommandId = 0x0D5;
/// psp-sev.h `SEV_CMD_TIO_DEV_MEASUREMENTS = 0x0D7`.
pub const TIO_DEV_MEASUREMENTS: CommandId = 0x0D7;
/// psp-sev.h `SEV_CMD_TIO_DEV_CERTIFICATES = 0x0D8`.
pub const TIO_DEV_CERTIFICATES: CommandId = 0x0D8;
/// psp-sev.h `SEV_CMD_TIO_TDI_CREATE = 0x0DA`.
pub const TIO_TDI_CREATE: CommandId = 0x0DA;
/// psp-sev.h `SEV_CMD_TIO_TDI_RECLAIM = 0x0DB`.
pub const TIO_TDI_RECLAIM: CommandId = 0x0DB;
/// psp-sev.h `SEV_CMD_TIO_TDI_BIND = 0x0DC`.
pub const TIO_TDI_BIND: CommandId = 0x0DC;
/// psp-sev.h `SEV_CMD_TIO_TDI_UNBIND = 0x0DD`.
pub const TIO_TDI_UNBIND: CommandId = 0x0DD;
/// psp-sev.h `SEV_CMD_TIO_TDI_REPORT = 0x0DE`.
pub const TIO_TDI_REPORT: CommandId = 0x0DE;
/// psp-sev.h `SEV_CMD_TIO_TDI_STATUS = 0x0DF`.
pub const TIO_TDI_STATUS: CommandId = 0x0DF;
/// psp-sev.h `SEV_CMD_TIO_GUEST_REQUEST = 0x0E0`.
pub const TIO_GUEST_REQUEST: CommandId = 0x0E0;
/// psp-sev.h `SEV_CMD_TIO_ASID_FENCE_CLEAR = 0x0E1`.
pub const TIO_ASID_FENCE_CLEAR: CommandId = 0x0E1;
/// psp-sev.h `SEV_CMD_TIO_ASID_FENCE_STATUS = 0x0E2`.
pub const TIO_ASID_FENCE_STATUS: CommandId = 0x0E2;
/// psp-sev.h `SEV_CMD_TIO_TDI_INFO = 0x0E3`.
pub const TIO_TDI_INFO: CommandId = 0x0E3;
/// Ours: the host asks the TSM to RMPUPDATE one MMIO page of a bound TDI to a guest.
pub const TIO_MMIO_MAP: CommandId = 0x0F0;
/// Ours: the host asks to block one private MMIO leaf (refused for a bound TDI's page).
pub const TIO_MMIO_BLOCK: CommandId = 0x0F1;
/// Ours: the host asks to unassign one private MMIO leaf (refused for a bound TDI's page).
pub const TIO_MMIO_UNMAP: CommandId = 0x0F2;
/// Ours: the host asks whether it may take back (zap, reset) a range of MMIO.
pub const TIO_MMIO_ZAP: CommandId = 0x0F3;
/// Ours: the host forwards a device's TDISP ERROR notification for a TDI.
pub const TIO_TDI_ERROR: CommandId = 0x0F4;

/// One command's buffer: its ID, its layout, its reserved fields.
pub trait Command: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Sized {
    /// The command ID.
    const ID: CommandId;
    /// Whether the buffer starts with its own `u32` length (every SEV-TIO buffer does; the
    /// SNP guest-context buffers do not).
    const HAS_LENGTH: bool = true;
    /// Whether every reserved field and reserved flag bit is zero.
    fn reserved_clear(&self) -> bool;
}

/// The buffer's size in bytes.
pub const fn len_of<C: Command>() -> usize {
    core::mem::size_of::<C>()
}

/// Copies a command out of the host's buffer, checking size, alignment, the length field and
/// the reserved fields. The firmware works on the copy only: the host cannot change a field
/// between its check and its use.
pub fn parse<C: Command>(buf: &[u8]) -> Result<C, SevStatus> {
    if buf.as_ptr().addr() & (COMMAND_ALIGN.wrapping_sub(1)) != 0 {
        return Err(SevStatus::INVALID_PARAM);
    }
    let bytes = buf.get(..len_of::<C>()).ok_or(SevStatus::INVALID_PARAM)?;
    let cmd = C::read_from_bytes(bytes).map_err(|_| SevStatus::INVALID_PARAM)?;
    if C::HAS_LENGTH {
        let length = bytes
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b))
            .ok_or(SevStatus::INVALID_PARAM)?;
        if usize::try_from(length).ok() != Some(len_of::<C>()) {
            return Err(SevStatus::INVALID_PARAM);
        }
    }
    if !cmd.reserved_clear() {
        return Err(SevStatus::INVALID_PARAM);
    }
    Ok(cmd)
}

/// Writes a command's output fields back to the host's buffer.
pub fn store<C: Command>(cmd: &C, buf: &mut [u8]) -> Result<(), SevStatus> {
    cmd.write_to_prefix(buf)
        .map_err(|_| SevStatus::INVALID_PARAM)
}

fn zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// The end of a scatter list: pfn all ones, every other bit zero (sev-dev-tio.c
/// `SLA_EOL = { .pfn = (1UL << 40) - 1 }`, AMDESE/linux-kvm @16f379f5 and torvalds/linux
/// @ec496f77; sev-linux-buffers.md section 2.1).
pub const SLA_EOL: u64 = 0x000F_FFFF_FFFF_F000;
/// Entries in one 4K scatter page (sev-dev-tio.c `SLA_SCATTER_LEN(s)` = `SZ_4K /
/// sizeof(struct sla_addr_t)`, same sources): the data entries and the EOL after them.
pub const SLA_SCATTER_LEN: usize = (PAGE_4K / 8) as usize;
/// Most data pages one scatter page lists: every slot but the EOL's (ours: Linux's
/// `sla_alloc` allows 513 pages, which with their EOL would not fit the page it writes them
/// to; a list past the page is refused).
pub const MAX_SCATTER_PAGES: usize = SLA_SCATTER_LEN - 1;

/// A scatter-list address (sev-dev-tio.h `struct sla_addr_t`): names a context or data page.
/// Every settable field takes a type that fits it ([`crate::pfn`]); the reserved fields are
/// read-only.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SlaAddr {
    /// 0: the page is data; 1: the page is a scatter list (`SLA_PAGE_TYPE_SCATTER`).
    pub page_type: bool,
    /// 0: 4K, 1: 2M (`SLA_PAGE_SIZE_2M`).
    pub page_size: bool,
    #[bits(10, access = RO)]
    reserved1: u16,
    /// Page frame number.
    #[bits(40)]
    pub pfn: Pfn,
    #[bits(12, access = RO)]
    reserved2: u16,
}

impl SlaAddr {
    /// Checks a host-supplied SLA for a buffer of `size` bytes (one of the sizes TIO_STATUS
    /// reports: [`SPDM_REQ_SIZE`], [`SPDM_RSP_SIZE`], [`SPDM_SCRATCH_SIZE`],
    /// [`SPDM_OUT_SIZE`], [`DEV_CTX_SIZE`], [`TDI_CTX_SIZE`]): reserved bits clear, not null,
    /// and a single 4K data page, which is what Linux's `sla_alloc` gives for a size of at
    /// most one page (sev-linux-buffers.md section 2.1). A size past one page needs a scatter
    /// list: `fw::Sev::buffer_pages` walks it (every size TIO_STATUS reports is one page).
    /// The C-bit in the pfn ([`C_BIT`]) is accepted and cleared: the SLA returned is the
    /// page's, whatever the host's encryption bit.
    pub fn checked(raw: u64, size: u32) -> Result<Self, SevStatus> {
        let raw = strip_c_bit(raw);
        let sla = Self::from_bits(raw);
        if raw == 0
            || u64::from(size) > PAGE_4K
            || sla.reserved1() != 0
            || sla.reserved2() != 0
            || sla.page_type()
            || sla.page_size()
        {
            return Err(SevStatus::INVALID_PARAM);
        }
        Ok(sla)
    }

    /// Whether this is Linux's end-of-list entry (`SLA_EOL`, [`SLA_EOL`]).
    pub fn is_eol(self) -> bool {
        self.into_bits() == SLA_EOL
    }

    /// The SLA of one 4K data page: the page holding `addr`.
    pub fn data_page(addr: tsm_core::Hpa) -> Self {
        Self::new().with_pfn(Pfn::of(addr))
    }

    /// The page's system physical address.
    pub fn address(self) -> u64 {
        self.pfn().address()
    }
}

/// The four SPDM buffers of every SPDM-aware command (sev-dev-tio.c `struct spdm_ctrl`).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SpdmCtrl {
    /// Request buffer SLA.
    pub req: U64,
    /// Response buffer SLA.
    pub resp: U64,
    /// Scratch buffer SLA.
    pub scratch: U64,
    /// Output buffer SLA (TDI_REPORT writes the interface report there).
    pub output: U64,
}
const _: () = assert!(core::mem::size_of::<SpdmCtrl>() == 0x20);

impl SpdmCtrl {
    /// Each SLA is null or well formed for the size TIO_STATUS reports for it.
    pub fn well_formed(&self) -> bool {
        [
            (self.req, SPDM_REQ_SIZE),
            (self.resp, SPDM_RSP_SIZE),
            (self.scratch, SPDM_SCRATCH_SIZE),
            (self.output, SPDM_OUT_SIZE),
        ]
        .iter()
        .all(|(s, size)| s.get() == 0 || SlaAddr::checked(s.get(), *size).is_ok())
    }
}

/// The header every SLA buffer starts with (sev-dev-tio.c `struct sla_buffer_hdr`, 0x40
/// bytes; sev-linux-buffers.md section 2.2). The request and response of a relayed exchange
/// follow it as a data object ([`DobjHdr`]) at 0x40.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SlaBufferHdr {
    /// Bytes the buffer holds (the host writes `npages << 12` when it allocates it).
    pub capacity_sz: U32,
    /// Bytes of payload, the data object's header included; a multiple of
    /// [`SLA_PAYLOAD_ALIGN`] (@0x04).
    pub payload_sz: U32,
    /// Bit 0 [`SLA_FLAG_ENCRYPTION`] (@0x08).
    pub flags: U32,
    /// Reserved.
    pub reserved1: U32,
    /// IV of an encrypted payload (@0x10).
    pub iv: [u8; 16],
    /// Tag of an encrypted payload (@0x20).
    pub authtag: [u8; 16],
    /// Reserved.
    pub reserved2: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SlaBufferHdr>() == 0x40);

/// `sla_buffer_hdr.flags` bit 0: the payload is encrypted (sev-linux-buffers.md section 2.2,
/// "flags (bit 0 ENCRYPTION)"). This firmware neither sends nor takes encrypted buffers: the
/// secured SPDM record inside is the protection.
pub const SLA_FLAG_ENCRYPTION: u32 = 1 << 0;
/// `payload_sz` is a multiple of 32 bytes (sev-linux-buffers.md section 2.2; Linux writes
/// `ALIGN(0x10 + n, 32)` for a response, section 3).
pub const SLA_PAYLOAD_ALIGN: usize = 32;

/// A data object header for a request or response (sev-dev-tio.c `struct spdm_dobj_hdr` with
/// the REQ/RESP `data_type` byte, 0x10 bytes, at 0x40 of its SLA buffer).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DobjHdr {
    /// [`DOBJ_ID_REQ`] or [`DOBJ_ID_RESP`].
    pub id: U32,
    /// Bytes of the object, this header included (@0x04).
    pub length: U32,
    /// Version, minor (@0x08): [`DOBJ_VERSION`] `.0`.
    pub version_minor: u8,
    /// Version, major (@0x09): [`DOBJ_VERSION`] `.1`.
    pub version_major: u8,
    /// [`DOBJ_DATA_TYPE_SPDM`] or [`DOBJ_DATA_TYPE_SECURE_SPDM`] (@0x0A): the DOE data object
    /// type the host relays the bytes with.
    pub data_type: u8,
    /// Reserved.
    pub reserved: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<DobjHdr>() == 0x10);

/// Where the data object starts in an SLA buffer: right after [`SlaBufferHdr`].
pub const DOBJ_OFFSET: usize = core::mem::size_of::<SlaBufferHdr>();
/// Where the SPDM bytes start: after the data object header (Linux relays from
/// `reqbuf + 0x50` and receives at `respbuf + 0x50`, sev-linux-buffers.md section 3).
pub const SPDM_PAYLOAD_OFFSET: usize = DOBJ_OFFSET + core::mem::size_of::<DobjHdr>();
const _: () = assert!(SPDM_PAYLOAD_OFFSET == 0x50);
/// Data object ID of a request (sev-dev-tio.c `SPDM_DOBJ_ID_REQ = 1`).
pub const DOBJ_ID_REQ: u32 = 1;
/// Data object ID of a response (`SPDM_DOBJ_ID_RESP = 2`; Linux's `dobj_response_init`
/// writes it once at DEV_CONNECT).
pub const DOBJ_ID_RESP: u32 = 2;
/// Data object version 1.0 as (minor, major) (`dobj_response_init`).
pub const DOBJ_VERSION: (u8, u8) = (0, 1);
/// `data_type` 1: plain SPDM, relayed as DOE data object type 1 (CMA/SPDM).
pub const DOBJ_DATA_TYPE_SPDM: u8 = 1;
/// `data_type` 2: secured SPDM, relayed as DOE data object type 2 (secured CMA/SPDM). Every
/// TDISP exchange this firmware relays is one (DSP0277 records).
pub const DOBJ_DATA_TYPE_SECURE_SPDM: u8 = 2;

/// The header of a certificate, measurement or report data object the firmware writes in the
/// output SLA (sev-dev-tio.c `struct spdm_dobj_hdr_cert` / `_meas` / `_report`, 0x20 bytes at
/// 0x40 of the buffer; sev-linux-buffers.md section 2.2). Linux's `tio_save_output` takes the
/// object whose `id` it expects and `length` bytes of it.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DobjBlobHdr {
    /// [`DOBJ_ID_CERTIFICATE`], [`DOBJ_ID_MEASUREMENT`] or [`DOBJ_ID_REPORT`].
    pub id: U32,
    /// Bytes of the object, this header included (@0x04).
    pub length: U32,
    /// Version, minor (@0x08): [`DOBJ_VERSION`] `.0`.
    pub version_minor: u8,
    /// Version, major (@0x09): [`DOBJ_VERSION`] `.1`.
    pub version_major: u8,
    /// Reserved.
    pub reserved1: [u8; 6],
    /// PCIe routing ID of the device (or of the TDI, for a report) (@0x10).
    pub device_id: U16,
    /// PCIe segment (@0x12).
    pub segment_id: u8,
    /// What the object holds (@0x13): [`DOBJ_TYPE_CERT_CHAIN`], [`DOBJ_TYPE_MEAS_RECORDS`],
    /// [`DOBJ_TYPE_REPORT`].
    pub kind: u8,
    /// Reserved.
    pub reserved2: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<DobjBlobHdr>() == 0x20);

/// Data object ID of a certificate chain (sev-dev-tio.c `SPDM_DOBJ_ID_CERTIFICATE = 4`).
pub const DOBJ_ID_CERTIFICATE: u32 = 4;
/// Data object ID of measurements (`SPDM_DOBJ_ID_MEASUREMENT = 5`).
pub const DOBJ_ID_MEASUREMENT: u32 = 5;
/// Data object ID of an interface report (`SPDM_DOBJ_ID_REPORT = 6`).
pub const DOBJ_ID_REPORT: u32 = 6;
/// `type` of a certificate object: the certificate chain (sev-linux-buffers.md 2.2, "cert 1").
pub const DOBJ_TYPE_CERT_CHAIN: u8 = 1;
/// `type` of a measurement object: measurement records (2.2, "meas 1 = measurements").
pub const DOBJ_TYPE_MEAS_RECORDS: u8 = 1;
/// `type` of a report object: the TDISP interface report (2.2, "report 1").
pub const DOBJ_TYPE_REPORT: u8 = 1;

macro_rules! command {
    ($(#[$m:meta])* $name:ident = $id:expr, $len:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }
     reserved($me:ident) $body:block) => {
        command!($(#[$m])* $name = $id, $len, true, { $($(#[$fm])* $f : $t),* } reserved($me) $body);
    };
    ($(#[$m:meta])* $name:ident = $id:expr, $len:expr, $has_len:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }
     reserved($me:ident) $body:block) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(core::mem::size_of::<$name>() == $len);
        impl Command for $name {
            const ID: CommandId = $id;
            const HAS_LENGTH: bool = $has_len;
            fn reserved_clear(&self) -> bool {
                let $me = self;
                $body
            }
        }
    };
}

command! {
    /// TIO_DEV_CREATE (0x20 bytes), as Linux sends it (sev-dev-tio.c `struct
    /// sev_data_tio_dev_create`, AMDESE/linux-kvm @16f379f5): register a device, named by its
    /// routing ID and segment, without a BAR list: the PSP cannot read configuration space, so
    /// its interface reports are checked without BARs (`Tsm::create_device_unlisted`).
    DevCreate = TIO_DEV_CREATE, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved1: [u8; 4], /// Device context SLA (@0x08).
        dev_ctx: U64, /// PCIe routing ID of the device (@0x10).
        device_id: U16, /// PCIe routing ID of its root port (@0x12).
        root_port_id: U16, /// PCIe segment (@0x14).
        segment_id: u8, /// Reserved (@0x15).
        reserved2: [u8; 11],
    } reserved(c) { zero(&c.reserved1) && zero(&c.reserved2) }
}

command! {
    /// TIO_DEV_CREATE with a BAR list (ours, 0x28 bytes, told apart by its `length`): Linux's
    /// 0x20 bytes, then the address of a [`BarList`] naming the BARs the host programmed. A
    /// device registered this way has every reported range checked to lie inside its BARs.
    DevCreateBars = TIO_DEV_CREATE, 0x28, {
        /// Buffer length: 0x28.
        length: U32, /// Reserved.
        reserved1: [u8; 4], /// Device context SLA (@0x08).
        dev_ctx: U64, /// PCIe routing ID of the device (@0x10).
        device_id: U16, /// PCIe routing ID of its root port (@0x12).
        root_port_id: U16, /// PCIe segment (@0x14).
        segment_id: u8, /// Reserved (@0x15).
        reserved2: [u8; 11], /// Ours: system physical address of a [`BarList`], 0 for none (@0x20).
        bar_list: U64,
    } reserved(c) { zero(&c.reserved1) && zero(&c.reserved2) }
}

/// Most entries a [`BarList`] holds (ours: a type 0 header has six BARs; two more, so that an
/// oversized list reaches the core's own check, `MAX_BARS`, and gets the core's status).
pub const MAX_BAR_ENTRIES: usize = 8;

/// One BAR of a [`BarList`] (ours): the memory range the host programmed into it.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BarEntry {
    /// First host physical address, 4K aligned.
    pub base: U64,
    /// Size in 4K pages (@0x08).
    pub pages: U64,
}
const _: () = assert!(core::mem::size_of::<BarEntry>() == 16);

/// The device's memory BARs as the host programmed them, named by DEV_CREATE `bar_list`
/// (ours; 0x88 bytes, 8-byte aligned, within one page). Entries past `count` are not read.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BarList {
    /// BARs that follow (at most [`MAX_BAR_ENTRIES`]).
    pub count: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// The BARs (@0x08).
    pub bars: [BarEntry; MAX_BAR_ENTRIES],
}
const _: () = assert!(core::mem::size_of::<BarList>() == 0x88);
/// Alignment of a [`BarList`] (its 64-bit fields).
pub const BAR_LIST_ALIGN: u64 = 8;

command! {
    /// TIO_DEV_RECLAIM (0x10 bytes): forget a device with no TDIs.
    DevReclaim = TIO_DEV_RECLAIM, 0x10, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: [u8; 4], /// Device context SLA (@0x08).
        dev_ctx: U64,
    } reserved(c) { zero(&c.reserved) }
}

command! {
    /// TIO_DEV_CONNECT (0x50 bytes): set up the device's secure session.
    DevConnect = TIO_DEV_CONNECT, 0x50, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved1: [u8; 4], /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Reserved.
        reserved2: [u8; 8], /// Device context SLA (@0x30).
        dev_ctx: U64, /// Traffic classes to set up; bit 0 (TC0) is required (@0x38).
        tc_mask: u8, /// Certificate slot, 0-7 (@0x39).
        cert_slot: u8, /// Reserved.
        reserved3: [u8; 6], /// IDE stream ID per traffic class (@0x40).
        ide_stream_id: [u8; 8], /// Reserved.
        reserved4: [u8; 8],
    } reserved(c) { zero(&c.reserved1) && zero(&c.reserved2) && zero(&c.reserved3) && zero(&c.reserved4) }
}

/// DEV_DISCONNECT / TDI_UNBIND flag: force. sev-dev-tio.c `TIO_DEV_DISCONNECT_FLAG_FORCE`,
/// `TIO_TDI_UNBIND_FLAG_FORCE` = BIT(0).
pub const FLAG_FORCE: u32 = 1 << 0;

/// Ours: bit 31 of the `u32` at 0x04 (reserved, or TDI_UNBIND's flags) of the commands that
/// relay a device exchange (TDI_BIND, TDI_UNBIND, TDI_STATUS, GUEST_REQUEST). The firmware
/// sets it in the buffer it writes back when it answers `SPDM_REQUEST`, and clears it when it
/// answers `SUCCESS` or `RESUME_REQUIRED`; the host reissues the written-back buffer (Linux
/// `sev_tio_continue` resends exactly those bytes, sev-linux-buffers.md section 3), so a
/// buffer with it set asks the firmware to take `spdm_ctrl.resp` as the device's answer to the
/// TDI's outstanding request. The firmware does not trust it: the continuation must match the
/// exchange the TDI has outstanding (`NoExchange`, `ExchangePending` otherwise).
pub const FLAG_CONTINUE: u32 = 1 << 31;

/// Whether command `id` needs TIO_INIT first: every TIO command we implement (and ours) but
/// TIO_STATUS and TIO_INIT; the SNP guest-context commands do not (they are SNP's,
/// initialised by SNP_INIT). Derived from [`IMPLEMENTED`], so a new command cannot be missed.
pub fn needs_tio_init(id: CommandId) -> bool {
    IMPLEMENTED.contains(&id) && !BEFORE_TIO_INIT.contains(&id)
}

/// The commands we implement that run before TIO_INIT: SNP's guest-context commands and the
/// two that set TIO up.
pub const BEFORE_TIO_INIT: [CommandId; 5] = [
    SNP_DECOMMISSION,
    SNP_ACTIVATE,
    SNP_GCTX_CREATE,
    TIO_STATUS,
    TIO_INIT,
];

/// The commands that relay device exchanges (they carry [`FLAG_CONTINUE`] at 0x04).
pub const RELAYING: [CommandId; 4] = [
    TIO_TDI_BIND,
    TIO_TDI_UNBIND,
    TIO_TDI_STATUS,
    TIO_GUEST_REQUEST,
];
/// Offset of the `u32` that carries [`FLAG_CONTINUE`].
pub const CONTINUE_WORD: usize = 4;
/// Offset of `spdm_ctrl` in every command that has one (sev-dev-tio.c: right after the length
/// and the reserved or flags word).
pub const SPDM_CTRL_OFFSET: usize = 8;

command! {
    /// TIO_DEV_DISCONNECT (0x30 bytes): tear the secure session down.
    DevDisconnect = TIO_DEV_DISCONNECT, 0x30, {
        /// Buffer length.
        length: U32, /// Flags: only [`FLAG_FORCE`] (@0x04).
        flags: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64,
    } reserved(c) { c.flags.get() & !FLAG_FORCE == 0 }
}

/// TDISP interface ID, function-ID word (Linux `include/linux/tsm.h` `TSM_TDISP_IID_*`):
/// requester ID in bits 15:0.
pub const IID_REQUESTER_ID_MASK: u32 = 0xFFFF;
/// Requester segment in bits 23:16 (`TSM_TDISP_IID_RSEG`).
pub const IID_RSEG_SHIFT: u32 = 16;
/// The segment field is valid (`TSM_TDISP_IID_RSEG_VALID`, bit 24).
pub const IID_RSEG_VALID: u32 = 1 << 24;

/// A TDISP interface ID (PCIe 6.x 11.3.4; Linux `struct tdisp_interface_id`, 12 bytes).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdispInterfaceId {
    /// Requester ID, segment and segment-valid bit.
    pub function_id: U32,
    /// Reserved.
    pub reserved: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<TdispInterfaceId>() == 12);

impl TdispInterfaceId {
    fn reserved_clear(&self) -> bool {
        zero(&self.reserved) && self.function_id.get() >> 25 == 0
    }
}

command! {
    /// TIO_TDI_CREATE (0x30 bytes): create a TDI on a connected device.
    TdiCreate = TIO_TDI_CREATE, 0x30, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// Device context SLA (@0x08).
        dev_ctx: U64, /// TDI context SLA (@0x10).
        tdi_ctx: U64, /// TDISP interface ID (@0x18).
        interface_id: TdispInterfaceId, /// Reserved.
        reserved2: [u8; 12],
    } reserved(c) { c.reserved.get() == 0 && c.interface_id.reserved_clear() && zero(&c.reserved2) }
}

command! {
    /// TIO_TDI_RECLAIM (0x20 bytes): forget an unbound TDI.
    TdiReclaim = TIO_TDI_RECLAIM, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// Device context SLA (@0x08).
        dev_ctx: U64, /// TDI context SLA (@0x10).
        tdi_ctx: U64, /// Reserved.
        reserved2: U64,
    } reserved(c) { c.reserved.get() == 0 && c.reserved2.get() == 0 }
}

/// TDI_BIND lock flags we accept: sev-dev-tio.c `TIO_TDI_BIND_FLAG_NO_FW_UPDATE` BIT(0),
/// `_LOCK_MSIX` BIT(2), `_BIND_P2P` BIT(3), `_ALL_REQUEST_REDIRECT` BIT(4).
pub const BIND_LOCK_FLAGS: u16 = 1 | 1 << 2 | 1 << 3 | 1 << 4;
/// TDI_BIND run flag `TIO_TDI_BIND_RUN_FORCE` BIT(0): Linux's `tdi_run` starts a
/// CONFIG_LOCKED TDI with it (sev-dev-tsm.c @16f379f5). Accepted only once the guest that owns
/// the TDI asked for RUN itself (`fw::Sev`, guest message [`crate::guest_msg::MSG_TDI_RUN_REQ`]).
pub const BIND_RUN_FORCE: u16 = 1 << 0;

command! {
    /// TIO_TDI_BIND (0x50 bytes): lock the interface and bind it to a guest.
    TdiBind = TIO_TDI_BIND, 0x50, {
        /// Buffer length.
        length: U32, /// Reserved but for [`FLAG_CONTINUE`] (@0x04).
        reserved: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// TDI context SLA (@0x30).
        tdi_ctx: U64, /// Guest context page (@0x38).
        gctx_paddr: U64, /// Routing ID the guest knows the TDI by (@0x40).
        guest_device_id: U16, /// TDISP LOCK_INTERFACE flags (@0x42).
        lock_flags: U16, /// Run flags (@0x44): only [`BIND_RUN_FORCE`].
        run_flags: U16, /// Reserved.
        reserved3: [u8; 10],
    } reserved(c) {
        c.reserved.get() & !FLAG_CONTINUE == 0 && c.lock_flags.get() & !BIND_LOCK_FLAGS == 0
            && c.run_flags.get() & !BIND_RUN_FORCE == 0 && zero(&c.reserved3)
    }
}

command! {
    /// TIO_TDI_UNBIND (0x40 bytes): one bounded step of the unbind.
    TdiUnbind = TIO_TDI_UNBIND, 0x40, {
        /// Buffer length.
        length: U32, /// Flags: [`FLAG_FORCE`] and [`FLAG_CONTINUE`] (@0x04).
        flags: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// TDI context SLA (@0x30).
        tdi_ctx: U64, /// Guest context page (@0x38).
        gctx_paddr: U64,
    } reserved(c) { c.flags.get() & !(FLAG_FORCE | FLAG_CONTINUE) == 0 }
}

command! {
    /// TIO_TDI_REPORT (0x40 bytes): write the interface report to `spdm_ctrl.output`.
    TdiReport = TIO_TDI_REPORT, 0x40, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// TDI context SLA (@0x30).
        tdi_ctx: U64, /// Guest context page (@0x38).
        gctx_paddr: U64,
    } reserved(c) { c.reserved.get() == 0 }
}

command! {
    /// TIO_TDI_STATUS (0x40 bytes): the TDISP state, written to `status_paddr`.
    TdiStatus = TIO_TDI_STATUS, 0x40, {
        /// Buffer length.
        length: U32, /// Reserved but for [`FLAG_CONTINUE`] (@0x04).
        reserved1: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// TDI context SLA (@0x30).
        tdi_ctx: U64, /// Where to write [`TdiStatusData`] (@0x38).
        status_paddr: U64,
    } reserved(c) { c.reserved1.get() & !FLAG_CONTINUE == 0 }
}

/// TDI_STATUS output (sev-dev-tio.c `struct sev_tio_tdi_status_data`, 0x10 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdiStatusData {
    /// Structure length.
    pub length: U32,
    /// TDISP state (`TIO_TDISP_STATE_*`: 0 unlocked, 1 locked, 2 run, 3 error) (@0x04).
    pub tdisp_state: u8,
    /// Reserved.
    pub reserved: [u8; 11],
}
const _: () = assert!(core::mem::size_of::<TdiStatusData>() == 0x10);

command! {
    /// TIO_GUEST_REQUEST (0x50 bytes): a guest's TIO message, request and response pages.
    GuestRequest = TIO_GUEST_REQUEST, 0x50, {
        /// Buffer length.
        length: U32, /// Reserved but for [`FLAG_CONTINUE`] (@0x04).
        reserved: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// TDI context SLA (@0x30).
        tdi_ctx: U64, /// Guest context page (@0x38).
        gctx_paddr: U64, /// Request message page (@0x40).
        req_paddr: U64, /// Response message page (@0x48).
        res_paddr: U64,
    } reserved(c) { c.reserved.get() & !FLAG_CONTINUE == 0 }
}

command! {
    /// TIO_ASID_FENCE_CLEAR (0x20 bytes): fence the guest's ASID (TLB and IOTLB flush).
    AsidFenceClear = TIO_ASID_FENCE_CLEAR, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved1: U32, /// Device context SLA (@0x08).
        dev_ctx: U64, /// Guest context page (@0x10).
        gctx_paddr: U64, /// Reserved.
        reserved2: [u8; 8],
    } reserved(c) { c.reserved1.get() == 0 && zero(&c.reserved2) }
}

/// ASID_FENCE_STATUS output word, MMIO fence field bits 3:2: fenced.
/// sev-dev-tio.c `TIO_FENCE_MMIO_STATUS_FENCED = 3`, `TIO_FENCE_MMIO_STATUS_SHIFT = 2`.
pub const FENCE_MMIO_FENCED: u64 = 3 << 2;

command! {
    /// TIO_ASID_FENCE_STATUS (0x20 bytes): whether the ASID's fence is still pending.
    /// `status_pa` sits at 0x14: the structure is packed.
    AsidFenceStatus = TIO_ASID_FENCE_STATUS, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved1: [u8; 4], /// Device context SLA (@0x08).
        dev_ctx: U64, /// The ASID (@0x10).
        asid: U32, /// Where to write the 64-bit fence status (@0x14).
        status_pa: U64, /// Reserved.
        reserved2: [u8; 4],
    } reserved(c) { zero(&c.reserved1) && zero(&c.reserved2) }
}

command! {
    /// TIO_TDI_INFO (0x30 bytes): TDI facts, written to `status_paddr`.
    TdiInfo = TIO_TDI_INFO, 0x30, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved1: U32, /// Device context SLA (@0x08).
        dev_ctx: U64, /// TDI context SLA (@0x10).
        tdi_ctx: U64, /// Where to write [`TdiInfoData`] (@0x18).
        status_paddr: U64, /// Reserved.
        reserved2: [u8; 16],
    } reserved(c) { c.reserved1.get() == 0 && zero(&c.reserved2) }
}

/// TDI_INFO `p1_flags` bits 3:2, the TDI status (sev-dev-tio.c
/// `SEV_TIO_TDI_INFO_P1_TDI_STATUS_SHIFT = 2`: 0 unbound, 1 bound and locked, 2 bound and
/// running; 3 is ours: bound, in ERROR or mid-unbind).
pub const INFO_TDI_STATUS_SHIFT: u32 = 2;

/// TDI_INFO output (sev-dev-tio.c `struct sev_tio_tdi_info_data`, 0xC0 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TdiInfoData {
    /// Structure length.
    pub length: U32,
    /// Interface ID (@0x04).
    pub interface_id: TdispInterfaceId,
    /// Flags and TDI status (@0x10).
    pub p1_flags: U32,
    /// Lock flags (@0x14).
    pub p2_flags: U32,
    /// SPDM algorithms (@0x18).
    pub spdm_algos: U64,
    /// Certificate digest (@0x20).
    pub certs_digest: [u8; 48],
    /// Measurement digest (@0x50).
    pub meas_digest: [u8; 48],
    /// Interface report digest (@0x80).
    pub interface_report_digest: [u8; 48],
    /// Interface reports produced so far (@0xB0).
    pub intf_report_counter: U64,
    /// ASID of the owning guest, 0 if unbound (@0xB8).
    pub asid: U32,
    /// Reserved.
    pub reserved: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<TdiInfoData>() == 0xC0);

command! {
    /// SNP_GCTX_CREATE (8 bytes, no length field; psp-sev.h `struct sev_data_snp_addr`).
    GctxCreate = SNP_GCTX_CREATE, 8, false, {
        /// Guest context page.
        gctx_paddr: U64,
    } reserved(_c) { true }
}

command! {
    /// SNP_DECOMMISSION (8 bytes, no length field; psp-sev.h `struct sev_data_snp_addr`).
    Decommission = SNP_DECOMMISSION, 8, false, {
        /// Guest context page.
        gctx_paddr: U64,
    } reserved(_c) { true }
}

command! {
    /// SNP_ACTIVATE (12 bytes, no length field; psp-sev.h `struct sev_data_snp_activate`).
    Activate = SNP_ACTIVATE, 12, false, {
        /// Guest context page (@0x00).
        gctx_paddr: U64, /// ASID to give the guest (@0x08).
        asid: U32,
    } reserved(_c) { true }
}

/// Page size codes of our MMIO commands (ours; the same as TDX page-info levels).
pub const MMIO_SIZE_4K: u8 = 0;
/// 2 MiB.
pub const MMIO_SIZE_2M: u8 = 1;
/// 1 GiB.
pub const MMIO_SIZE_1G: u8 = 2;

command! {
    /// Ours: TIO_MMIO_MAP (0x30 bytes).
    MmioMap = TIO_MMIO_MAP, 0x30, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// TDI context SLA (@0x08).
        tdi_ctx: U64, /// Guest context page (@0x10).
        gctx_paddr: U64, /// Guest physical address (@0x18).
        gpa: U64, /// Host physical address of the MMIO page (@0x20).
        hpa: U64, /// Page size code (@0x28).
        page_size: u8, /// Reserved.
        reserved2: [u8; 7],
    } reserved(c) { c.reserved.get() == 0 && zero(&c.reserved2) }
}

command! {
    /// Ours: TIO_MMIO_BLOCK (0x20 bytes).
    MmioBlock = TIO_MMIO_BLOCK, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// Guest context page (@0x08).
        gctx_paddr: U64, /// Guest physical address of the leaf (@0x10).
        gpa: U64, /// Page size code (@0x18).
        page_size: u8, /// Reserved.
        reserved2: [u8; 7],
    } reserved(c) { c.reserved.get() == 0 && zero(&c.reserved2) }
}

command! {
    /// Ours: TIO_MMIO_UNMAP (0x20 bytes), same layout as [`MmioBlock`].
    MmioUnmap = TIO_MMIO_UNMAP, 0x20, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// Guest context page (@0x08).
        gctx_paddr: U64, /// Guest physical address of the leaf (@0x10).
        gpa: U64, /// Page size code (@0x18).
        page_size: u8, /// Reserved.
        reserved2: [u8; 7],
    } reserved(c) { c.reserved.get() == 0 && zero(&c.reserved2) }
}

command! {
    /// Ours: TIO_MMIO_ZAP (0x18 bytes).
    MmioZap = TIO_MMIO_ZAP, 0x18, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// First host physical address of the range (@0x08).
        base: U64, /// Number of 4K pages (@0x10).
        pages: U64,
    } reserved(c) { c.reserved.get() == 0 }
}

command! {
    /// Ours: TIO_TDI_ERROR (0x18 bytes).
    TdiError = TIO_TDI_ERROR, 0x18, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// Device context SLA (@0x08).
        dev_ctx: U64, /// TDI context SLA (@0x10).
        tdi_ctx: U64,
    } reserved(c) { c.reserved.get() == 0 }
}

/// DEV_MEASUREMENTS flag: the measurements as a raw bit stream (sev-dev-tio.c
/// `TIO_DEV_MEAS_FLAG_RAW_BITSTREAM` BIT(0); Linux always sets it).
pub const MEAS_FLAG_RAW_BITSTREAM: u32 = 1 << 0;

command! {
    /// TIO_DEV_MEASUREMENTS (0x50 bytes): the device's measurements into `spdm_ctrl.output`
    /// (sev-dev-tio.c `struct sev_data_tio_dev_meas`).
    DevMeasurements = TIO_DEV_MEASUREMENTS, 0x50, {
        /// Buffer length.
        length: U32, /// Flags: only [`MEAS_FLAG_RAW_BITSTREAM`] (@0x04).
        flags: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64, /// Nonce for the measurements (@0x30).
        meas_nonce: [u8; 32],
    } reserved(c) { c.flags.get() & !MEAS_FLAG_RAW_BITSTREAM == 0 }
}

command! {
    /// TIO_DEV_CERTIFICATES (0x30 bytes): the device's certificate chain into
    /// `spdm_ctrl.output` (sev-dev-tio.c `struct sev_data_tio_dev_certs`).
    DevCertificates = TIO_DEV_CERTIFICATES, 0x30, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: U32, /// SPDM buffers (@0x08).
        spdm_ctrl: SpdmCtrl, /// Device context SLA (@0x28).
        dev_ctx: U64,
    } reserved(c) { c.reserved.get() == 0 }
}

/// Every command ID we implement, in ID order.
pub const IMPLEMENTED: [CommandId; 26] = [
    SNP_DECOMMISSION,
    SNP_ACTIVATE,
    SNP_GCTX_CREATE,
    TIO_STATUS,
    TIO_INIT,
    TIO_DEV_CREATE,
    TIO_DEV_RECLAIM,
    TIO_DEV_CONNECT,
    TIO_DEV_DISCONNECT,
    TIO_DEV_MEASUREMENTS,
    TIO_DEV_CERTIFICATES,
    TIO_TDI_CREATE,
    TIO_TDI_RECLAIM,
    TIO_TDI_BIND,
    TIO_TDI_UNBIND,
    TIO_TDI_REPORT,
    TIO_TDI_STATUS,
    TIO_GUEST_REQUEST,
    TIO_ASID_FENCE_CLEAR,
    TIO_ASID_FENCE_STATUS,
    TIO_TDI_INFO,
    TIO_MMIO_MAP,
    TIO_MMIO_BLOCK,
    TIO_MMIO_UNMAP,
    TIO_MMIO_ZAP,
    TIO_TDI_ERROR,
];

/// Interface report header as TDI_REPORT writes it to `spdm_ctrl.output` (PCIe 6.x 11.3.11,
/// DEVICE_INTERFACE_REPORT body; 16 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReportHeader {
    /// INTERFACE_INFO.
    pub interface_info: U16,
    /// Reserved.
    pub reserved: U16,
    /// MSI-X message control (@0x04).
    pub msix_msg_ctrl: U16,
    /// LNR control (@0x06).
    pub lnr_ctrl: U16,
    /// TPH control (@0x08).
    pub tph_ctrl: U32,
    /// Ranges that follow (@0x0C).
    pub mmio_range_count: U32,
}
const _: () = assert!(core::mem::size_of::<ReportHeader>() == 16);

/// One MMIO range of an interface report (PCIe 6.x 11.3.11; 16 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReportRange {
    /// First 4K page (host page frame number here).
    pub first_page: U64,
    /// Number of 4K pages (@0x08).
    pub number_of_pages: U32,
    /// Range attributes (@0x0C).
    pub attributes: U16,
    /// Range ID (@0x0E): its index in the report.
    pub range_id: U16,
}
const _: () = assert!(core::mem::size_of::<ReportRange>() == 16);

// ---- TIO_STATUS / TIO_INIT --------------------------------------------------------------
//
// The sizes TIO_STATUS reports are the sizes this firmware checks: each is one constant,
// reported here and passed to [`SlaAddr::checked`] where the buffer is taken (ours: every
// buffer is one 4K data page, so minimum and maximum are the same). Linux allocates `req`
// and `resp` with `spdm_req_size_max`, `scratch` with `spdm_scratch_size_max`, `output` with
// `spdm_out_size_max`, the contexts with `devctx_size` and `tdictx_size`, and relays
// responses of at most `spdm_req_size_max - 0x50` bytes (sev-linux-buffers.md sections 2.1,
// 3; AMDESE/linux-kvm @16f379f5 sev-dev-tio.c `spdm_ctrl_alloc`, `sev_tio_do_cmd`).

/// `spdm_req_size_min` and `_max`: the SPDM request buffer (`spdm_ctrl.req`), and the
/// response buffer, which Linux sizes alike (ours: one page).
pub const SPDM_REQ_SIZE: u32 = 4096;
/// `spdm_rsp_size_min` and `_max`: the SPDM response buffer (`spdm_ctrl.resp`) (ours).
pub const SPDM_RSP_SIZE: u32 = SPDM_REQ_SIZE;
/// `spdm_scratch_size_min` and `_max`: `spdm_ctrl.scratch` (ours).
pub const SPDM_SCRATCH_SIZE: u32 = 4096;
/// `spdm_out_size_min` and `_max`: `spdm_ctrl.output`, where TDI_REPORT writes (ours).
pub const SPDM_OUT_SIZE: u32 = 4096;
/// `devctx_size`: a device context (DEV_CREATE `dev_ctx`) (ours).
pub const DEV_CTX_SIZE: u32 = 4096;
/// `tdictx_size`: a TDI context (TDI_CREATE `tdi_ctx`) (ours).
pub const TDI_CTX_SIZE: u32 = 4096;
/// `tio_crypto_alg` (psp-sev.h kerneldoc "TIO crypto algorithms supported"; no public
/// encoding). Ours: 0, the SPDM session's algorithms are the platform's, fixed at
/// construction, and Linux does not read the field.
pub const TIO_CRYPTO_ALG: u32 = 0;
const _: () = assert!(SPDM_REQ_SIZE as u64 <= PAGE_4K && SPDM_RSP_SIZE as u64 <= PAGE_4K);
const _: () = assert!(SPDM_SCRATCH_SIZE as u64 <= PAGE_4K && SPDM_OUT_SIZE as u64 <= PAGE_4K);
const _: () = assert!(DEV_CTX_SIZE as u64 <= PAGE_4K && TDI_CTX_SIZE as u64 <= PAGE_4K);

/// `sev_tio_status.flags` bit 0 `tio_en`: the platform has TIO (sev-dev-tio.h @16f379f5).
pub const TIO_FLAG_EN: u32 = 1 << 0;
/// `sev_tio_status.flags` bit 1 `tio_init_done`: TIO_INIT ran (sev-dev-tio.h @16f379f5).
pub const TIO_FLAG_INIT_DONE: u32 = 1 << 1;

command! {
    /// TIO_STATUS (0x10 bytes, sev-dev-tio.c `struct sev_data_tio_status` @16f379f5): write
    /// [`TioStatusData`] to `status_paddr`. Allowed before TIO_INIT.
    TioStatus = TIO_STATUS, 0x10, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: [u8; 4], /// Where the firmware writes [`TioStatusData`] (@0x08).
        status_paddr: U64,
    } reserved(c) { zero(&c.reserved) }
}

command! {
    /// TIO_INIT (0x10 bytes, sev-dev-tio.c `struct sev_data_tio_init` @16f379f5): length, then
    /// 12 reserved bytes.
    TioInit = TIO_INIT, 0x10, {
        /// Buffer length.
        length: U32, /// Reserved.
        reserved: [u8; 12],
    } reserved(c) { zero(&c.reserved) }
}

/// What TIO_STATUS writes (sev-dev-tio.h `struct sev_tio_status` @16f379f5, 0x40 bytes,
/// `__packed`). Linux requires `length >= 0x30` and `flags` bits 31:2 clear.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TioStatusData {
    /// Structure length (@0x00).
    pub length: U32,
    /// [`TIO_FLAG_EN`], [`TIO_FLAG_INIT_DONE`] (@0x04).
    pub flags: U32,
    /// @0x08.
    pub spdm_req_size_min: U32,
    /// @0x0C.
    pub spdm_req_size_max: U32,
    /// @0x10.
    pub spdm_scratch_size_min: U32,
    /// @0x14.
    pub spdm_scratch_size_max: U32,
    /// @0x18.
    pub spdm_out_size_min: U32,
    /// @0x1C.
    pub spdm_out_size_max: U32,
    /// @0x20.
    pub spdm_rsp_size_min: U32,
    /// @0x24.
    pub spdm_rsp_size_max: U32,
    /// @0x28.
    pub devctx_size: U32,
    /// @0x2C.
    pub tdictx_size: U32,
    /// @0x30.
    pub tio_crypto_alg: U32,
    /// Reserved (@0x34).
    pub reserved: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<TioStatusData>() == 0x40);

impl TioStatusData {
    /// The status this firmware reports, `init_done` after TIO_INIT.
    pub fn report(init_done: bool) -> Self {
        let flags = if init_done {
            TIO_FLAG_EN | TIO_FLAG_INIT_DONE
        } else {
            TIO_FLAG_EN
        };
        Self {
            length: U32::new(0x40),
            flags: flags.into(),
            spdm_req_size_min: SPDM_REQ_SIZE.into(),
            spdm_req_size_max: SPDM_REQ_SIZE.into(),
            spdm_scratch_size_min: SPDM_SCRATCH_SIZE.into(),
            spdm_scratch_size_max: SPDM_SCRATCH_SIZE.into(),
            spdm_out_size_min: SPDM_OUT_SIZE.into(),
            spdm_out_size_max: SPDM_OUT_SIZE.into(),
            spdm_rsp_size_min: SPDM_RSP_SIZE.into(),
            spdm_rsp_size_max: SPDM_RSP_SIZE.into(),
            devctx_size: DEV_CTX_SIZE.into(),
            tdictx_size: TDI_CTX_SIZE.into(),
            tio_crypto_alg: TIO_CRYPTO_ALG.into(),
            reserved: [0; 12],
        }
    }
}
