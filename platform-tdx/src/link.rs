//! The TDX Connect link leaves, as the Linux host calls them (devsec tsm tree
//! `arch/x86/virt/vmx/tdx/tdx.c` @2c2d99f4ab52a8a71f6b1ef1739759c6199b8068 wrappers,
//! `drivers/virt/coco/tdx-host/tdx-host.c` @191928fbe1bd015f5820e48b10229c259f67e991 callers):
//! the device's SPDM session (TDH.SPDM.CONNECT, DISCONNECT, MNG) and its IDE stream
//! (TDH.IDE.STREAM.CREATE, KM, BLOCK, DELETE). Leaf numbers: devsec tsm tree
//! `arch/x86/virt/vmx/tdx/tdx.h` @29838fc9f4566351cc54dc51646c8226e81be818.
//!
//! What is modelled, and what is not:
//! - CONNECT is a real relayed exchange: its first call writes one unsecured SPDM GET_VERSION
//!   (a DOE object of type 1) to the request page and answers `TDX_SPDM_REQUEST`; the host's
//!   event loop (tdx-host.c `tdx_link_event_handler`) relays it and re-issues the same
//!   registers, and that call checks the device's VERSION offers SPDM 1.2. Key exchange,
//!   certificates and measurements are not modelled: the session the TDISP records are sealed
//!   with is the firmware's [`tsm_core::SecureSession`].
//! - DISCONNECT, MNG and KM send nothing to the device here (no END_SESSION, HEARTBEAT,
//!   KEY_UPDATE or IDE_KM messages): they validate their pages and change the state, and
//!   answer `TDX_SUCCESS` with RCX (out_msg_sz) 0.
//! - One IDE stream per SPDM id (Linux creates one per device, §6(a)); its stream ID is the
//!   SPDM id (ours), and so is the root port's IDE ID.
//!
//! Who keeps what: whether the device's TEE traffic passes the root port is the core's alone
//! ([`tsm_core::IdeStream`]): KM SETUP makes it live ([`tsm_core::Tsm::setup_stream`]); BLOCK
//! and KM STOP cut it ([`tsm_core::Tsm::cut_stream`]), as a forced unbind does. A device's
//! stream is cut from TSM.SPDM.BARS until its first KM SETUP. The SPDM id's record keeps only
//! what the core does not: the session's state, the stream's IDs, metadata pages, association
//! registers, key state and whether BLOCK was issued.

use tsm_core::{Completion, Error, Hpa, IdeStream, SecureSession, TdiId, TsmResult};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::abi::{
    Dispatcher, HostMemory, MESSAGE_PAGE_ALIGN, Outcome, SeamRegs, core_err, decode_hpa,
    function_id, host_fault, hpa_array, named, whole_words,
};
use crate::module::{
    MESSAGE_PAGE_BYTES, PageTable, SpdmEntry, SpdmPages, SpdmTable, TdTable, page_held,
};
use crate::status::{
    self, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_R10, OPERAND_ID_R11, OPERAND_ID_R12,
    OPERAND_ID_R13, OPERAND_ID_R14, OPERAND_ID_RAX, OPERAND_ID_RCX, OPERAND_ID_RDX,
    TDX_OPERAND_INVALID, TdxStatus,
};
use tsm_core::relay::{doe, version};

// ---- leaves -------------------------------------------------------------------------------

/// TDH.IDE.STREAM.CREATE (132; `tdh_ide_stream_create(stream_info, spdm_id, stream_mt,
/// stream_ctrl, rid_assoc1, rid_assoc2, addr_assoc1, addr_assoc2, addr_assoc3, *stream_id,
/// *rp_ide_id)`): RCX stream info ([`STREAM_INFO_RP_DEVFN_MASK`], [`STREAM_INFO_TYPE_SEL`]),
/// RDX SPDM id (connected, BARs registered, no stream yet), R8 HPA_ARRAY_T of the stream's
/// metadata pages, R9 stream control (0), R10/R11 RID association 1/2, R12-R14 address
/// association 1-3. Out: RCX stream ID, RDX root-port IDE ID. The stream has no keys yet.
pub const TDH_IDE_STREAM_CREATE: u16 = 132;
/// TDH.IDE.STREAM.BLOCK (133; `tdh_ide_stream_block(spdm_id, stream_id)`): RCX SPDM id, RDX
/// stream ID. The root port drops the device's TEE traffic ([`tsm_core::Tsm::cut_stream`]:
/// its bound TDIs go to ERROR and the host may tear their leaves down). Only DELETE follows.
pub const TDH_IDE_STREAM_BLOCK: u16 = 133;
/// TDH.IDE.STREAM.DELETE (134; `tdh_ide_stream_delete(spdm_id, stream_id, stream_mt,
/// *nr_released, *released_hpa)`): RCX SPDM id, RDX stream ID, R8 the release form of the
/// metadata array (0 for one page, else the root). Out: RCX an HPA_ARRAY_T of the released
/// pages, as TDH.SPDM.DELETE. Only a blocked stream, and only once its device has no TDI.
pub const TDH_IDE_STREAM_DELETE: u16 = 134;
/// TDH.IDE.STREAM.KM (135; `tdh_ide_stream_km(spdm_id, stream_id, op, spdm_rsp, spdm_req,
/// *out_msg_sz)`): RCX SPDM id, RDX stream ID, R8 op ([`IDE_KM_SETUP`], [`IDE_KM_REFRESH`],
/// [`IDE_KM_STOP`]), R9 response page, R10 request page. Out: RCX 0 (no message).
pub const TDH_IDE_STREAM_KM: u16 = 135;
/// TDH.SPDM.CONNECT (142; `tdh_exec_spdm_connect(spdm_id, spdm_conf, spdm_rsp, spdm_req,
/// dev_info, *out_msg_sz)`): RCX SPDM id, RDX the config page ([`SpdmConfig`]), R8 the
/// response page (host to module), R9 the request page (module to host), R10 an HPA_ARRAY_T of
/// the dev_info pages. Out: RCX the request's length (`TDX_SPDM_REQUEST`) or the dev_info
/// record's ([`DevInfo`], `TDX_SUCCESS`).
pub const TDH_SPDM_CONNECT: u16 = 142;
/// TDH.SPDM.DISCONNECT (143; `tdh_exec_spdm_disconnect(spdm_id, spdm_rsp, spdm_req,
/// *out_msg_sz)`): RCX SPDM id, RDX response page, R8 request page. Refused while the SPDM id
/// has an IDE stream or its device any TDI. Out: RCX 0 (END_SESSION is not modelled).
pub const TDH_SPDM_DISCONNECT: u16 = 143;
/// TDH.SPDM.MNG (144; `tdh_exec_spdm_mng(spdm_id, op, spdm_param, spdm_rsp, spdm_req,
/// spdm_out, *out_msg_sz)`): RCX SPDM id, RDX op ([`SPDM_MNG_HEARTBEAT`],
/// [`SPDM_MNG_KEY_UPDATE`], [`SPDM_MNG_RECOLLECT`]), R8 parameter page or [`NULL_PAGE`], R9
/// response page, R10 request page, R11 HPA_ARRAY_T of output pages or [`NULL_PAGE`]. On a
/// connected session. Out: RCX 0, or RECOLLECT's dev_info record size.
pub const TDH_SPDM_MNG: u16 = 144;

// ---- operand encodings --------------------------------------------------------------------

/// A NULL page operand: Linux passes `~0` for a page it does not give (tdx.c @2c2d99f4,
/// `tdh_exec_spdm_mng`: `spdm_param ? page_to_phys(spdm_param) : -1`).
pub const NULL_PAGE: u64 = u64::MAX;
/// stream_info bits 7:0: the root port's devfn (tdx-host.c @191928fb,
/// `pcie_find_root_port(pdev)->devfn`).
pub const STREAM_INFO_RP_DEVFN_MASK: u64 = 0xff;
/// stream_info bit 8: a selective stream (tdx-host.c @191928fb, `STREAM_INFO_TYPE_SEL`; 0 is
/// a link stream). Only selective streams are modelled (Linux asks for nothing else): a link
/// stream is `TDX_OPERAND_INVALID` + RCX.
pub const STREAM_INFO_TYPE_SEL: u64 = 1 << 8;
/// stream_info bits 63:9: reserved.
const STREAM_INFO_RESERVED: u64 = !(STREAM_INFO_TYPE_SEL | STREAM_INFO_RP_DEVFN_MASK);
/// RID / address association register bit 0: VALID (PCIe 6.x 7.9.26.5.1/7.9.26.5.3, Linux
/// `drivers/pci/ide.c` `pci_ide_stream_to_regs()`). Linux sets it in RID association 2 and
/// address association 1.
pub const ASSOC_VALID: u64 = 1;
/// RID association 1 bits 23:8 and 2 bits 23:8: the RID limit and base (PCIe 6.x 7.9.26.5.1).
pub const RID_ASSOC_RID_SHIFT: u32 = 8;
/// The RID field of a RID association register.
pub const RID_ASSOC_RID_MASK: u64 = 0xffff << RID_ASSOC_RID_SHIFT;
/// RID association 2 bits 31:24: the segment base (PCIe 6.x 7.9.26.5.2).
pub const RID_ASSOC_SEGMENT_SHIFT: u32 = 24;
/// The segment field of RID association 2.
pub const RID_ASSOC_SEGMENT_MASK: u64 = 0xff << RID_ASSOC_SEGMENT_SHIFT;
/// RID association 1: everything but the limit is reserved.
const RID1_RESERVED: u64 = !RID_ASSOC_RID_MASK;
/// RID association 2: everything but VALID, base and segment is reserved.
const RID2_RESERVED: u64 = !(ASSOC_VALID | RID_ASSOC_RID_MASK | RID_ASSOC_SEGMENT_MASK);
/// Address association 1 bits 19:8: memory base bits 31:20 (PCIe 6.x 7.9.26.5.3).
pub const ADDR_ASSOC1_BASE_SHIFT: u32 = 8;
/// Address association 1 bits 31:20: memory limit bits 31:20 (same).
pub const ADDR_ASSOC1_LIMIT_SHIFT: u32 = 20;
/// Address association 1: bits 7:1 and 63:32 reserved.
const ADDR1_RESERVED: u64 = !0xffff_ff01;
/// Address associations 2 (limit 63:32) and 3 (base 63:32): bits 63:32 reserved.
const ADDR_HIGH_RESERVED: u64 = !0xffff_ffff;
/// Address bits 31:20 in association 1's fields.
const ADDR_FIELD_MASK: u64 = 0xfff;
/// The low 20 bits a limit covers (the limit is inclusive, 1 MiB granular).
const ADDR_LIMIT_LOW: u64 = 0xf_ffff;

/// IDE.STREAM.KM R8: program keys and enable the stream (tdx-host.c @191928fb, issued at
/// connect). Makes the core's stream live: the host's re-establishment of a cut one.
pub const IDE_KM_SETUP: u64 = 0;
/// IDE.STREAM.KM R8: refresh the keys of a live stream (defined, never issued by Linux). Here:
/// nothing changes.
pub const IDE_KM_REFRESH: u64 = 1;
/// IDE.STREAM.KM R8: stop the stream (issued at disconnect). Cuts the core's stream; refused
/// while the device has TDIs.
pub const IDE_KM_STOP: u64 = 2;
/// SPDM.MNG RDX: heartbeat (defined, never issued by Linux). Here: only on a session whose
/// config asked for heartbeats ([`SPDM_CAP_HBEAT`]); nothing changes.
pub const SPDM_MNG_HEARTBEAT: u64 = 0;
/// SPDM.MNG RDX: session key update, which Linux issues on
/// `TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH`. Here: succeeds on a connected session and changes
/// nothing (the model session has no keys to roll).
pub const SPDM_MNG_KEY_UPDATE: u64 = 1;
/// SPDM.MNG RDX: collect the device's information again (defined, never issued by Linux).
/// Here: writes the [`DevInfo`] record to R11's pages, RCX its size.
pub const SPDM_MNG_RECOLLECT: u64 = 2;

/// spdm_config_info_t `vmm_spdm_cap` bit 13: heartbeat (tdx-host.c @191928fb,
/// `SPDM_CAP_HBEAT`; defined, not set by Linux).
pub const SPDM_CAP_HBEAT: u32 = 1 << 13;
/// spdm_config_info_t `vmm_spdm_cap` bit 14: key update (tdx-host.c @191928fb,
/// `SPDM_CAP_KEY_UPD`; Linux sets it).
pub const SPDM_CAP_KEY_UPD: u32 = 1 << 14;
/// Every other `vmm_spdm_cap` bit: reserved here.
const SPDM_CAP_RESERVED: u32 = !(SPDM_CAP_HBEAT | SPDM_CAP_KEY_UPD);

/// The head of the SPDM config page (`spdm_config_info_t`, packed, tdx-host.c @191928fb
/// `tdx_link_pf0_probe`); the rest of the 4 KiB page is zero.
#[repr(C, packed)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SpdmConfig {
    /// Capabilities the host asks for: [`SPDM_CAP_KEY_UPD`] (Linux), [`SPDM_CAP_HBEAT`].
    pub vmm_spdm_cap: u32,
    /// Session policy: 0 (Linux); no policy bit is modelled.
    pub spdm_session_policy: u8,
    /// Certificate slots to use: Linux 0xFF; 0 (no slot) is refused.
    pub certificate_slot_mask: u8,
    /// 0 or 1: whether the host wants the raw bitstream (Linux 0).
    pub raw_bitstream_requested: u8,
}

/// Bytes of [`SpdmConfig`] at the head of the config page.
pub const SPDM_CONFIG_BYTES: usize = core::mem::size_of::<SpdmConfig>();
const _: () = assert!(SPDM_CONFIG_BYTES == 7);

/// The dev_info record TDH.SPDM.CONNECT writes to the first dev_info page (ours: the TDX
/// module's format is not public; Linux only copies `dev_info_size` bytes out). Little endian.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DevInfo {
    /// [`DEV_INFO_FORMAT`].
    pub format: u32,
    /// The SPDM version negotiated: 0x12.
    pub spdm_version: u8,
    /// The config's certificate slot mask.
    pub certificate_slot_mask: u8,
    /// Zero.
    pub reserved: u16,
    /// The device's TDISP function ID, as TDH.SPDM.CREATE named it.
    pub function_id: u64,
    /// The config's capabilities.
    pub vmm_spdm_cap: u32,
    /// Zero.
    pub reserved2: u32,
}

/// [`DevInfo::format`] (ours): version 1 of the record.
pub const DEV_INFO_FORMAT: u32 = 1;
/// Bytes of [`DevInfo`]: RCX of a successful CONNECT.
pub const DEV_INFO_BYTES: usize = core::mem::size_of::<DevInfo>();
const _: () = assert!(DEV_INFO_BYTES == 24);

// ---- state --------------------------------------------------------------------------------

/// The registers of the CONNECT call that started an exchange: a re-issue must bring the
/// same ones (Linux re-issues the identical SEAMCALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCall {
    /// RDX: the config page.
    pub config: u64,
    /// R8: the response page.
    pub response: u64,
    /// R9: the request page.
    pub request: u64,
    /// R10: the dev_info array.
    pub dev_info: u64,
}

/// An SPDM id's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Session {
    /// Not connected.
    #[default]
    Idle,
    /// GET_VERSION is with the host; the next CONNECT with these registers takes VERSION.
    Connecting(ConnectCall),
    /// Connected; the record CONNECT wrote.
    Connected(DevInfo),
}

/// A stream's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keys {
    /// Never set up.
    #[default]
    None,
    /// KM SETUP done.
    Set,
    /// KM STOP done.
    Stopped,
}

/// A device's IDE stream as TDH.IDE.STREAM.CREATE made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdeStreamEntry {
    /// The stream ID (RCX out; ours: the SPDM id).
    pub id: u64,
    /// The root port's IDE ID (RDX out; ours: the stream ID).
    pub rp_ide_id: u64,
    /// RCX: stream info.
    pub info: u64,
    /// R10, R11: RID association 1 and 2.
    pub rid: [u64; 2],
    /// R12-R14: address association 1-3.
    pub addr: [u64; 3],
    /// R8: the metadata pages, in use until DELETE.
    pub metadata: SpdmPages,
    /// Key state.
    pub keys: Keys,
    /// TDH.IDE.STREAM.BLOCK was issued (the core's stream is then cut for good).
    pub blocked: bool,
}

impl IdeStreamEntry {
    /// The RID association: segment base, first and last routing ID.
    pub fn rids(&self) -> (u64, u64, u64) {
        rid_window(self.rid[0], self.rid[1])
    }

    /// Address association block 0: first and last byte address.
    pub fn window(&self) -> (u64, u64) {
        addr_window(self.addr)
    }

    /// Whether `[base, base + bytes)` lies inside the address association, so the device's
    /// TEE traffic for it uses this stream.
    pub fn covers(&self, base: u64, bytes: u64) -> bool {
        let (first, last) = self.window();
        bytes
            .checked_sub(1)
            .and_then(|n| base.checked_add(n))
            .is_some_and(|end| base >= first && end <= last)
    }

    /// Whether this stream's associations overlap `other`'s: `Some(R10)` for the RIDs (same
    /// segment, or a root port that does not capture it), `Some(R12)` for the addresses.
    fn overlap(&self, other: &Self) -> Option<u32> {
        let ((sa, fa, la), (sb, fb, lb)) = (self.rids(), other.rids());
        if (sa == sb || sa == 0 || sb == 0) && fa <= lb && fb <= la {
            return Some(OPERAND_ID_R10);
        }
        let ((fa, la), (fb, lb)) = (self.window(), other.window());
        (fa <= lb && fb <= la).then_some(OPERAND_ID_R12)
    }
}

/// Address association 1-3 (R12, R13, R14 of TDH.IDE.STREAM.CREATE) for the window
/// `[first, last]` in 1 MiB granules, VALID set, as Linux's `pci_ide_stream_to_regs` fills
/// them (PCIe 6.x 7.9.26.5.4): the granule of `first` to the end of the granule of `last`.
pub const fn addr_assoc(first: u64, last: u64) -> [u64; 3] {
    let low = ASSOC_VALID
        | (((first >> 20) & ADDR_FIELD_MASK) << ADDR_ASSOC1_BASE_SHIFT)
        | (((last >> 20) & ADDR_FIELD_MASK) << ADDR_ASSOC1_LIMIT_SHIFT);
    [low, last >> 32, first >> 32]
}

/// The address association a host gives a device's stream to cover its BARs: the span from
/// the first BAR's start to the last BAR's end ([`addr_assoc`]); `None` for no BARs.
pub fn bars_window(bars: &[tsm_core::MmioRange]) -> Option<[u64; 3]> {
    let first = bars.iter().map(|b| b.base().as_u64()).min()?;
    let last = bars.iter().filter_map(|b| b.end().checked_sub(1)).max()?;
    Some(addr_assoc(first, last))
}

/// RID association 1 (limit) and 2 (VALID, base, segment): segment, first, last routing ID.
fn rid_window(rid1: u64, rid2: u64) -> (u64, u64, u64) {
    let limit = (rid1 & RID_ASSOC_RID_MASK) >> RID_ASSOC_RID_SHIFT;
    let base = (rid2 & RID_ASSOC_RID_MASK) >> RID_ASSOC_RID_SHIFT;
    let segment = (rid2 & RID_ASSOC_SEGMENT_MASK) >> RID_ASSOC_SEGMENT_SHIFT;
    (segment, base, limit)
}

/// Address association 1-3 (checked: high halves within their fields): first and last byte
/// address of the window (1 MiB granules, as PCIe 6.x 7.9.26.5 defines them).
fn addr_window([a1, a2, a3]: [u64; 3]) -> (u64, u64) {
    let base = (a3 << 32) | (((a1 >> ADDR_ASSOC1_BASE_SHIFT) & ADDR_FIELD_MASK) << 20);
    let limit =
        (a2 << 32) | (((a1 >> ADDR_ASSOC1_LIMIT_SHIFT) & ADDR_FIELD_MASK) << 20) | ADDR_LIMIT_LOW;
    (base, limit)
}

/// The IDE stream of the SPDM id whose core device is `device`, if it has one.
pub(crate) fn stream_of_device(
    spdm: &SpdmTable,
    device: tsm_core::DeviceId,
) -> Option<&IdeStreamEntry> {
    spdm.iter()
        .flatten()
        .find(|e| e.device == Some(device))
        .and_then(|e| e.link.stream.as_ref())
}

/// An SPDM id's link: its session and its stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// The SPDM session.
    pub session: Session,
    /// The IDE stream, once created.
    pub stream: Option<IdeStreamEntry>,
}

// ---- the leaves ---------------------------------------------------------------------------

/// The stream of `entry` (found by `stream_of`) and its core device, unless the host blocked
/// it (`TDX_IDE_STREAM_BLOCKED` + RDX).
fn unblocked(entry: &SpdmEntry) -> Result<(&IdeStreamEntry, tsm_core::DeviceId), Outcome> {
    let stream = entry
        .link
        .stream
        .as_ref()
        .ok_or(core_err(Error::Inconsistent))?;
    if stream.blocked {
        return Err(named(status::TDX_IDE_STREAM_BLOCKED, OPERAND_ID_RDX));
    }
    let dev = entry.device.ok_or(core_err(Error::Inconsistent))?;
    Ok((stream, dev))
}

fn done() -> Outcome {
    Outcome::Core(Ok(Completion::Done))
}

/// The entry of SPDM id `raw` (none: `TDX_OPERAND_INVALID` naming `operand`).
fn entry_at(table: &mut SpdmTable, raw: u64, operand: u32) -> Result<&mut SpdmEntry, Outcome> {
    usize::try_from(raw)
        .ok()
        .and_then(|i| table.get_mut(i))
        .and_then(Option::as_mut)
        .ok_or(named(TDX_OPERAND_INVALID, operand))
}

/// The TD table and the TDI page table a link leaf holds (with the SPDM table) throughout.
struct Held<'g> {
    tds: &'g TdTable,
    pages: &'g PageTable,
}

impl<S: SecureSession, M: HostMemory, const SHARDS: usize> Dispatcher<'_, '_, S, M, SHARDS> {
    /// The link leaves: each holds the TDI page table and the SPDM table for the whole leaf,
    /// taken in the platform's one order (TD table, TDI pages, SPDM table) as every leaf
    /// takes them, so two leaves never each hold what the other waits for.
    pub(crate) fn link_leaf(
        &self,
        leaf: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let tds = self.fw.read_tds().map_err(core_err)?;
        let pages = self.fw.lock_pages().map_err(core_err)?;
        let mut spdm = self.fw.lock_spdm().map_err(core_err)?;
        let held = Held {
            tds: &tds,
            pages: &pages,
        };
        let spdm = &mut *spdm;
        match leaf {
            TDH_SPDM_CONNECT => self.spdm_connect(spdm, &held, r, out),
            TDH_SPDM_DISCONNECT => self.spdm_disconnect(spdm, &held, r, out),
            TDH_SPDM_MNG => self.spdm_mng(spdm, &held, r, out),
            TDH_IDE_STREAM_CREATE => self.stream_create(spdm, &held, r, out),
            TDH_IDE_STREAM_KM => self.stream_km(spdm, &held, r, out),
            TDH_IDE_STREAM_BLOCK => self.stream_block(spdm, r),
            TDH_IDE_STREAM_DELETE => self.stream_delete(spdm, r, out),
            _ => Err(named(TDX_OPERAND_INVALID, OPERAND_ID_RAX)),
        }
    }

    /// A message page operand: 4 KiB aligned, below 2^52, a whole page of host memory
    /// (writable when the firmware writes requests there), and (for a page the firmware
    /// writes) not a page the firmware holds: a TD's TDR or metadata
    /// (`TDX_PAGE_METADATA_INCORRECT`).
    fn message_page(
        &self,
        spdm: &SpdmTable,
        held: &Held<'_>,
        raw: u64,
        operand: u32,
        write: bool,
    ) -> Result<Hpa, Outcome> {
        let at = decode_hpa(raw, MESSAGE_PAGE_ALIGN, operand).map_err(Outcome::Status)?;
        let probe = if write {
            self.host.probe_write(at.as_u64(), MESSAGE_PAGE_BYTES)
        } else {
            self.host.probe_read(at.as_u64(), MESSAGE_PAGE_BYTES)
        };
        probe.map_err(|f| Outcome::Status(host_fault(f, operand)))?;
        if write && Self::held(spdm, held, at) {
            return Err(named(status::TDX_PAGE_METADATA_INCORRECT, operand));
        }
        Ok(at)
    }

    /// The response page `rsp` and request page `req` of a relay leaf, each checked as
    /// [`Dispatcher::message_page`]; one page both ways: `TDX_OPERAND_INVALID` on the second.
    fn relay_pages(
        &self,
        spdm: &SpdmTable,
        held: &Held<'_>,
        (rsp, rsp_op): (u64, u32),
        (req, req_op): (u64, u32),
    ) -> Result<(Hpa, Hpa), Outcome> {
        let first_op = rsp_op.min(req_op);
        let second_op = rsp_op.max(req_op);
        let (response, request) = if rsp_op == first_op {
            let a = self.message_page(spdm, held, rsp, rsp_op, false)?;
            (a, self.message_page(spdm, held, req, req_op, true)?)
        } else {
            let b = self.message_page(spdm, held, req, req_op, true)?;
            (self.message_page(spdm, held, rsp, rsp_op, false)?, b)
        };
        if response == request {
            return Err(named(TDX_OPERAND_INVALID, second_op));
        }
        Ok((response, request))
    }

    /// An output page array the firmware writes (CONNECT's dev_info R10, MNG's R11): whole
    /// writable pages, none the firmware holds (`TDX_PAGE_METADATA_INCORRECT`), none one of
    /// `own`, the call's other pages (`TDX_OPERAND_INVALID`), each naming `operand`.
    fn output_pages(
        &self,
        spdm: &SpdmTable,
        held: &Held<'_>,
        raw: u64,
        operand: u32,
        own: &[Hpa],
    ) -> Result<SpdmPages, Outcome> {
        let pages = self.page_array(raw, operand, true)?;
        for page in pages.root.iter().chain(pages.pages.iter()).copied() {
            if Self::held(spdm, held, page) {
                return Err(named(status::TDX_PAGE_METADATA_INCORRECT, operand));
            }
            if own.contains(&page) {
                return Err(named(TDX_OPERAND_INVALID, operand));
            }
        }
        Ok(pages)
    }

    /// Whether the firmware holds `page` ([`page_held`] over the tables the leaf holds).
    fn held(spdm: &SpdmTable, held: &Held<'_>, page: Hpa) -> bool {
        page_held(held.tds, held.pages, spdm, page)
    }

    /// Reads the config page at `raw` (RDX) once into firmware memory and checks it as Linux
    /// fills it: capability bits only [`SPDM_CAP_KEY_UPD`] and [`SPDM_CAP_HBEAT`], policy 0, a
    /// slot mask not 0, raw bitstream 0 or 1, every other byte of the page 0. Anything else:
    /// `TDX_OPERAND_INVALID` + RDX.
    fn spdm_config(&self, raw: u64) -> Result<SpdmConfig, Outcome> {
        let at = decode_hpa(raw, MESSAGE_PAGE_ALIGN, OPERAND_ID_RDX).map_err(Outcome::Status)?;
        let mut page = [0u8; MESSAGE_PAGE_BYTES];
        self.host
            .read(at.as_u64(), &mut page)
            .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_RDX)))?;
        let bad = named(TDX_OPERAND_INVALID, OPERAND_ID_RDX);
        let (config, rest) = SpdmConfig::read_from_prefix(&page).map_err(|_| bad)?;
        let bad = || named(TDX_OPERAND_INVALID, OPERAND_ID_RDX);
        let cap = config.vmm_spdm_cap;
        if cap & SPDM_CAP_RESERVED != 0
            || config.spdm_session_policy != 0
            || config.certificate_slot_mask == 0
            || config.raw_bitstream_requested > 1
            || rest.iter().any(|&b| b != 0)
        {
            return Err(bad());
        }
        Ok(config)
    }

    /// TDH.SPDM.CONNECT ([`TDH_SPDM_CONNECT`]). Order: RCX the SPDM id; RDX the config, R8/R9
    /// the pages, R10 the dev_info array (writable pages the firmware does not hold:
    /// `TDX_PAGE_METADATA_INCORRECT` + R10; none a message page of this call:
    /// `TDX_OPERAND_INVALID` + R10); then the session's state (connected:
    /// `TDX_SPDM_INVALID_STATE` + RCX; an exchange started by a call with other registers:
    /// `TDX_SPDM_INVALID_STATE` naming the first register that differs). First call: GET_VERSION to R9, `TDX_SPDM_REQUEST`, RCX its
    /// length. The re-issue: the DOE object in R8 (its length from its header, at most a page)
    /// must be VERSION offering SPDM 1.2 (else `TDX_SPDM_INVALID_MESSAGE` + R8, nothing
    /// changed, the exchange stays open); then the [`DevInfo`] record goes to the first
    /// dev_info page, the session is connected, RCX the record's size.
    fn spdm_connect(
        &self,
        spdm: &mut SpdmTable,
        held: &Held<'_>,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let call = ConnectCall {
            config: r.rdx,
            response: r.r8,
            request: r.r9,
            dev_info: r.r10,
        };
        let entry = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?;
        let (session, function) = (entry.link.session, entry.function);
        let config = self.spdm_config(r.rdx)?;
        let (response, request) =
            self.relay_pages(spdm, held, (r.r8, OPERAND_ID_R8), (r.r9, OPERAND_ID_R9))?;
        // The config page is read on every re-issue: a message page would overwrite it and
        // leave the session connecting for good.
        if r.rdx == response.as_u64() || r.rdx == request.as_u64() {
            return Err(named(TDX_OPERAND_INVALID, OPERAND_ID_RDX));
        }
        let config_page =
            Hpa::try_new(r.rdx).map_err(|_| named(TDX_OPERAND_INVALID, OPERAND_ID_RDX))?;
        let dev_info = self.output_pages(
            spdm,
            held,
            r.r10,
            OPERAND_ID_R10,
            &[response, request, config_page],
        )?;
        match session {
            Session::Connected(_) => {
                return Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RCX));
            }
            Session::Connecting(started) if started != call => {
                let differs = [
                    (started.config != call.config, OPERAND_ID_RDX),
                    (started.response != call.response, OPERAND_ID_R8),
                    (started.request != call.request, OPERAND_ID_R9),
                    (started.dev_info != call.dev_info, OPERAND_ID_R10),
                ];
                let operand = differs
                    .iter()
                    .find(|(d, _)| *d)
                    .map_or(OPERAND_ID_RCX, |(_, o)| *o);
                return Err(named(status::TDX_SPDM_INVALID_STATE, operand));
            }
            _ => {}
        }
        let first_info = *dev_info
            .pages
            .first()
            .ok_or(core_err(Error::Inconsistent))?;
        let entry = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?;
        if session == Session::Idle {
            let mut buf = [0u8; version::GET_VERSION_OBJECT_BYTES.next_multiple_of(8)];
            let n = version::get_version(&mut buf).map_err(|_| core_err(Error::Inconsistent))?;
            let bytes = whole_words(n)
                .and_then(|w| buf.get(..w))
                .ok_or(core_err(Error::Inconsistent))?;
            // Cannot fail: probed writable above.
            self.host
                .write(request.as_u64(), bytes)
                .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R9)))?;
            entry.link.session = Session::Connecting(call);
            out.rcx = u64::try_from(n).map_err(|_| core_err(Error::Inconsistent))?;
            return Ok(Outcome::Core(Ok(Completion::Relay(n))));
        }
        // The device's answer: one read of its header, then of the object, into firmware
        // memory; only the copy is looked at.
        let bad = || named(status::TDX_SPDM_INVALID_MESSAGE, OPERAND_ID_R8);
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let head = answer
            .get_mut(..doe::HEADER_SIZE)
            .ok_or(core_err(Error::Inconsistent))?;
        self.host
            .read(response.as_u64(), head)
            .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R8)))?;
        let dwords = head
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or(core_err(Error::Inconsistent))?
            & DOE_LENGTH_MASK;
        let len = usize::try_from(dwords)
            .ok()
            .and_then(|d| d.checked_mul(4))
            .filter(|l| (doe::HEADER_SIZE..=MESSAGE_PAGE_BYTES).contains(l))
            .ok_or_else(bad)?;
        let words = whole_words(len)
            .and_then(|w| answer.get_mut(..w))
            .ok_or(core_err(Error::Inconsistent))?;
        self.host
            .read(response.as_u64(), words)
            .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R8)))?;
        let object = answer.get(..len).ok_or(core_err(Error::Inconsistent))?;
        version::check_version(object).map_err(|_| bad())?;
        let info = DevInfo {
            format: DEV_INFO_FORMAT,
            spdm_version: tsm_core::relay::spdm::SPDM_VERSION_1_2,
            certificate_slot_mask: config.certificate_slot_mask,
            reserved: 0,
            function_id: function_id(function),
            vmm_spdm_cap: config.vmm_spdm_cap,
            reserved2: 0,
        };
        // Cannot fail: probed writable above.
        self.host
            .write(first_info.as_u64(), info.as_bytes())
            .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R10)))?;
        entry.link.session = Session::Connected(info);
        out.rcx = DEV_INFO_BYTES as u64;
        Ok(done())
    }

    /// TDH.SPDM.DISCONNECT ([`TDH_SPDM_DISCONNECT`]): RCX, RDX/R8 the pages, then: not
    /// connected, `TDX_SPDM_INVALID_STATE` + RCX; an IDE stream,
    /// `TDX_SPDM_HAS_ACTIVE_IDE_STREAMS` + RCX; a TDI of the device, `TSM_DEVICE_IN_USE` +
    /// RCX. The session ends (no END_SESSION message in this model).
    fn spdm_disconnect(
        &self,
        spdm: &mut SpdmTable,
        held: &Held<'_>,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let entry = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.clone();
        self.relay_pages(spdm, held, (r.rdx, OPERAND_ID_RDX), (r.r8, OPERAND_ID_R8))?;
        if !matches!(entry.link.session, Session::Connected(_)) {
            return Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RCX));
        }
        if entry.link.stream.is_some() {
            return Err(named(
                status::TDX_SPDM_HAS_ACTIVE_IDE_STREAMS,
                OPERAND_ID_RCX,
            ));
        }
        if self.has_tdis(&entry)? {
            return Err(named(status::TSM_DEVICE_IN_USE, OPERAND_ID_RCX));
        }
        entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.link.session = Session::Idle;
        out.rcx = 0;
        Ok(done())
    }

    /// Whether the SPDM id's device has TDIs. The caller holds the SPDM table, which
    /// TDH.DEVIF.CREATE takes too, so none can appear meanwhile.
    fn has_tdis(&self, entry: &SpdmEntry) -> Result<bool, Outcome> {
        match entry.device {
            None => Ok(false),
            Some(dev) => Ok(!self.tsm.device(dev).map_err(core_err)?.tdis.is_empty()),
        }
    }

    /// TDH.SPDM.MNG ([`TDH_SPDM_MNG`]): RCX; RDX an op (else `TDX_OPERAND_INVALID` + RDX); R8
    /// [`NULL_PAGE`] or a readable page (unread: no op takes parameters here); R9/R10 the
    /// pages; R11 [`NULL_PAGE`] or an array of writable pages the firmware does not hold
    /// (RECOLLECT needs one: `TDX_OPERAND_INVALID` + R11). Then: not connected,
    /// `TDX_SPDM_INVALID_STATE` + RCX; HEARTBEAT on a session that did not ask for it,
    /// `TDX_SPDM_INVALID_STATE` + RDX.
    fn spdm_mng(
        &self,
        spdm: &mut SpdmTable,
        held: &Held<'_>,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let entry = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.clone();
        if r.rdx > SPDM_MNG_RECOLLECT {
            return Err(named(TDX_OPERAND_INVALID, OPERAND_ID_RDX));
        }
        if r.r8 != NULL_PAGE {
            self.message_page(spdm, held, r.r8, OPERAND_ID_R8, false)?;
        }
        let (response, request) =
            self.relay_pages(spdm, held, (r.r9, OPERAND_ID_R9), (r.r10, OPERAND_ID_R10))?;
        let output = if r.r11 == NULL_PAGE {
            None
        } else {
            // RECOLLECT writes dev_info there: never over this call's own message pages.
            let pages =
                self.output_pages(spdm, held, r.r11, OPERAND_ID_R11, &[response, request])?;
            pages.pages.first().copied()
        };
        if r.rdx == SPDM_MNG_RECOLLECT && output.is_none() {
            return Err(named(TDX_OPERAND_INVALID, OPERAND_ID_R11));
        }
        let Session::Connected(info) = entry.link.session else {
            return Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RCX));
        };
        out.rcx = 0;
        match r.rdx {
            SPDM_MNG_HEARTBEAT if info.vmm_spdm_cap & SPDM_CAP_HBEAT == 0 => {
                Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RDX))
            }
            SPDM_MNG_RECOLLECT => {
                let at = output.ok_or(core_err(Error::Inconsistent))?;
                // Cannot fail: probed writable above.
                self.host
                    .write(at.as_u64(), info.as_bytes())
                    .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R11)))?;
                out.rcx = DEV_INFO_BYTES as u64;
                Ok(done())
            }
            _ => Ok(done()),
        }
    }

    /// TDH.IDE.STREAM.CREATE ([`TDH_IDE_STREAM_CREATE`]). Order: RDX the SPDM id; RCX, R9,
    /// R10, R11, R12-R14 their formats (`TDX_OPERAND_INVALID` naming the register: reserved
    /// bits, a link stream, stream control not 0, VALID clear, base above limit); R8 the
    /// metadata array; then state: not connected `TDX_SPDM_INVALID_STATE` + RDX, no BARs
    /// `TSM_BARS_NOT_REGISTERED` + RDX, a stream already `TDX_IDE_STREAM_NOT_FREE` + RDX; the
    /// device's function outside the RID range (`TDX_OPERAND_INVALID` + R11 below the base or
    /// in another segment, + R10 above the limit); metadata pages in use
    /// (`TDX_PAGE_METADATA_INCORRECT` + R8).
    fn stream_create(
        &self,
        spdm: &mut SpdmTable,
        held: &Held<'_>,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let entry = entry_at(spdm, r.rdx, OPERAND_ID_RDX)?.clone();
        let bad = |operand| Err(named(TDX_OPERAND_INVALID, operand));
        if r.rcx & STREAM_INFO_RESERVED != 0 || r.rcx & STREAM_INFO_TYPE_SEL == 0 {
            return bad(OPERAND_ID_RCX);
        }
        // Every PCI_IDE_SEL_CTL field is the module's to program (Linux passes 0).
        if r.r9 != 0 {
            return bad(OPERAND_ID_R9);
        }
        if r.r10 & RID1_RESERVED != 0 {
            return bad(OPERAND_ID_R10);
        }
        if r.r11 & RID2_RESERVED != 0 || r.r11 & ASSOC_VALID == 0 {
            return bad(OPERAND_ID_R11);
        }
        let (segment, rid_base, rid_limit) = rid_window(r.r10, r.r11);
        if rid_base > rid_limit {
            return bad(OPERAND_ID_R10);
        }
        if r.r12 & ADDR1_RESERVED != 0 || r.r12 & ASSOC_VALID == 0 {
            return bad(OPERAND_ID_R12);
        }
        if r.r13 & ADDR_HIGH_RESERVED != 0 {
            return bad(OPERAND_ID_R13);
        }
        if r.r14 & ADDR_HIGH_RESERVED != 0 {
            return bad(OPERAND_ID_R14);
        }
        let (base, limit) = addr_window([r.r12, r.r13, r.r14]);
        if base > limit {
            return bad(OPERAND_ID_R12);
        }
        let metadata = self.page_array(r.r8, OPERAND_ID_R8, false)?;
        if !matches!(entry.link.session, Session::Connected(_)) {
            return Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RDX));
        }
        if entry.device.is_none() {
            return Err(named(status::TSM_BARS_NOT_REGISTERED, OPERAND_ID_RDX));
        }
        if entry.link.stream.is_some() {
            return Err(named(status::TDX_IDE_STREAM_NOT_FREE, OPERAND_ID_RDX));
        }
        // The DSM's function must be in the stream: its routing ID in [base, limit], its
        // segment the segment base, or 0 when the root port does not capture segments
        // (Linux's `pci_ide_domain()`).
        let routing = u64::from(entry.function.routing_id());
        let dev_segment = u64::from(entry.function.segment());
        if routing < rid_base || (segment != 0 && segment != dev_segment) {
            return bad(OPERAND_ID_R11);
        }
        if routing > rid_limit {
            return bad(OPERAND_ID_R10);
        }
        for page in metadata.root.iter().chain(metadata.pages.iter()).copied() {
            if Self::held(spdm, held, page) {
                return Err(named(status::TDX_PAGE_METADATA_INCORRECT, OPERAND_ID_R8));
            }
        }
        let id = r.rdx;
        let stream = IdeStreamEntry {
            id,
            rp_ide_id: id,
            info: r.rcx,
            rid: [r.r10, r.r11],
            addr: [r.r12, r.r13, r.r14],
            metadata,
            keys: Keys::None,
            blocked: false,
        };
        // Two devices' streams never claim the same requester or address: the root port
        // would key one device's TEE traffic with the other's stream.
        if let Some(operand) = spdm
            .iter()
            .flatten()
            .filter_map(|e| e.link.stream.as_ref())
            .find_map(|other| stream.overlap(other))
        {
            let code = if operand == OPERAND_ID_R10 {
                status::TDX_IDE_STREAM_RID_OVERLAP
            } else {
                status::TDX_IDE_STREAM_ADDR_OVERLAP
            };
            return Err(named(code, operand));
        }
        let slot = entry_at(spdm, r.rdx, OPERAND_ID_RDX)?;
        slot.link.stream = Some(stream);
        out.rcx = id;
        out.rdx = id;
        Ok(done())
    }

    /// The stream RDX names of the SPDM id RCX names (`TDX_OPERAND_INVALID` + RCX;
    /// `TDX_IDE_STREAM_NOT_CONFIGURED` + RDX for a stream ID not the SPDM id's).
    fn stream_of(spdm: &mut SpdmTable, r: &SeamRegs) -> Result<SpdmEntry, Outcome> {
        let entry = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?;
        match &entry.link.stream {
            Some(s) if s.id == r.rdx => Ok(entry.clone()),
            _ => Err(named(status::TDX_IDE_STREAM_NOT_CONFIGURED, OPERAND_ID_RDX)),
        }
    }

    /// TDH.IDE.STREAM.KM ([`TDH_IDE_STREAM_KM`]): RCX, RDX the stream, R8 the op
    /// (`TDX_OPERAND_INVALID` + R8), R9/R10 the pages; a blocked stream
    /// `TDX_IDE_STREAM_BLOCKED` + RDX. SETUP: the core's [`tsm_core::Tsm::setup_stream`]
    /// (refused while a TDI of the device is bound), keys set. REFRESH: keys set and the
    /// stream live, else `TDX_IDE_STREAM_INVALID_STATE` + R8; nothing changes. STOP: keys set
    /// (else as REFRESH) and no TDI on the device (`TDX_IDE_STREAM_HAS_DEVICE_INTERFACES` +
    /// RDX); the core's stream is cut, keys stopped. No IDE_KM message goes to the device in
    /// this model.
    fn stream_km(
        &self,
        spdm: &mut SpdmTable,
        held: &Held<'_>,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let entry = Self::stream_of(spdm, r)?;
        if r.r8 > IDE_KM_STOP {
            return Err(named(TDX_OPERAND_INVALID, OPERAND_ID_R8));
        }
        self.relay_pages(spdm, held, (r.r9, OPERAND_ID_R9), (r.r10, OPERAND_ID_R10))?;
        let (stream, dev) = unblocked(&entry)?;
        let keys = match r.r8 {
            IDE_KM_SETUP => {
                self.tsm.setup_stream(dev).map_err(core_err)?;
                Keys::Set
            }
            IDE_KM_REFRESH => {
                let live = self.tsm.device(dev).map_err(core_err)?.stream == IdeStream::Live;
                if stream.keys != Keys::Set || !live {
                    return Err(named(status::TDX_IDE_STREAM_INVALID_STATE, OPERAND_ID_R8));
                }
                Keys::Set
            }
            _ => {
                if stream.keys != Keys::Set {
                    return Err(named(status::TDX_IDE_STREAM_INVALID_STATE, OPERAND_ID_R8));
                }
                if self.has_tdis(&entry)? {
                    return Err(named(
                        status::TDX_IDE_STREAM_HAS_DEVICE_INTERFACES,
                        OPERAND_ID_RDX,
                    ));
                }
                self.tsm.cut_stream(dev).map_err(core_err)?;
                Keys::Stopped
            }
        };
        if let Some(s) = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.link.stream.as_mut() {
            s.keys = keys;
        }
        out.rcx = 0;
        Ok(done())
    }

    /// TDH.IDE.STREAM.BLOCK ([`TDH_IDE_STREAM_BLOCK`]): RCX, RDX the stream; blocked already
    /// `TDX_IDE_STREAM_BLOCKED` + RDX. The core cuts the stream ([`tsm_core::Tsm::cut_stream`]).
    fn stream_block(&self, spdm: &mut SpdmTable, r: &SeamRegs) -> Result<Outcome, Outcome> {
        let entry = Self::stream_of(spdm, r)?;
        let (_, dev) = unblocked(&entry)?;
        self.tsm.cut_stream(dev).map_err(core_err)?;
        if let Some(s) = entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.link.stream.as_mut() {
            s.blocked = true;
        }
        Ok(done())
    }

    /// TDH.IDE.STREAM.DELETE ([`TDH_IDE_STREAM_DELETE`]): RCX, RDX the stream, R8 the release
    /// form (`TDX_OPERAND_INVALID` + R8); not blocked `TDX_IDE_STREAM_NOT_BLOCKED` + RDX; a TDI
    /// on the device `TDX_IDE_STREAM_HAS_DEVICE_INTERFACES` + RDX. The pages are handed back
    /// (RCX their HPA_ARRAY_T) and the stream is gone; the core's stays cut.
    fn stream_delete(
        &self,
        spdm: &mut SpdmTable,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let entry = Self::stream_of(spdm, r)?;
        let stream = entry
            .link
            .stream
            .as_ref()
            .ok_or(core_err(Error::Inconsistent))?;
        if r.r8 != stream.metadata.root.map_or(0, |h| h.as_u64()) {
            return Err(named(TDX_OPERAND_INVALID, OPERAND_ID_R8));
        }
        if !stream.blocked {
            return Err(named(status::TDX_IDE_STREAM_NOT_BLOCKED, OPERAND_ID_RDX));
        }
        if self.has_tdis(&entry)? {
            return Err(named(
                status::TDX_IDE_STREAM_HAS_DEVICE_INTERFACES,
                OPERAND_ID_RDX,
            ));
        }
        let first = match (stream.metadata.root, stream.metadata.pages.first()) {
            (Some(root), _) => root,
            (None, Some(page)) => *page,
            (None, None) => return Err(core_err(Error::Inconsistent)),
        };
        let count = u64::try_from(stream.metadata.pages.len())
            .map_err(|_| core_err(Error::Inconsistent))?;
        entry_at(spdm, r.rcx, OPERAND_ID_RCX)?.link.stream = None;
        out.rcx = hpa_array(first.as_u64(), count);
        Ok(done())
    }

    /// Why a bind of `tdi` met a stream that is not live (the core's `StreamCut`), as precisely
    /// as the SPDM id's record says: no stream (`TDX_IDE_STREAM_NOT_CONFIGURED`), blocked
    /// (`TDX_IDE_STREAM_BLOCKED`), keys not set up or stopped
    /// (`TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY`), else cut by a forced unbind
    /// (`TSM_STREAM_CUT`); each + RCX.
    pub(crate) fn stream_not_live(&self, tdi: TdiId) -> TdxStatus {
        let rcx = u64::from(OPERAND_ID_RCX);
        let found = || -> TsmResult<Option<IdeStreamEntry>> {
            let dev = self.tsm.tdi(tdi)?.device;
            let spdm = self.fw.read_spdm()?;
            Ok(stream_of_device(&spdm, dev).cloned())
        };
        match found() {
            // Contention is contention, not a reason.
            Err(e) => status::encode(Err(e), &crate::abi::operands(crate::abi::TSM_DEVIF_BIND)),
            Ok(None) => status::TDX_IDE_STREAM_NOT_CONFIGURED | rcx,
            Ok(Some(s)) if s.blocked => status::TDX_IDE_STREAM_BLOCKED | rcx,
            Ok(Some(s)) if s.keys != Keys::Set => status::TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY | rcx,
            _ => status::TSM_STREAM_CUT | rcx,
        }
    }
}

/// DOE header dword 1 length field: bits 17:0, in dwords (PCIe 6.x 6.30.1), as Linux's
/// `tdx_spdm_msg_exchange` reads it.
const DOE_LENGTH_MASK: u32 = (1 << 18) - 1;
