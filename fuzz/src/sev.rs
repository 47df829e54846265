//! `sev_dispatcher`: SEV-TIO command sequences through `platform_sev::Sev::command`.
//!
//! An input first names a setup stage, run with every check like any other command and
//! required to succeed: guest contexts created and activated, a device created (its BARs in a
//! BAR list in system memory) and connected with two TDIs, one TDI bound, its MMIO mapped,
//! validated and started by the guest through guest requests (MMIO_VALIDATE, TDI_START), or a
//! second TDI bound to another guest with 80 leaves (so its unbind is resumable); every
//! command that needs the device relayed to the model device as the Linux host does (the
//! request from `spdm_ctrl.req`, the answer to `spdm_ctrl.resp`, the written-back buffer
//! issued again). Then come commands built from templates with mostly-valid operands
//! (contexts in use, addresses in the BARs and at the mappings, the status, request,
//! response, report, SPDM and BAR-list pages) and mutated: any field of the buffer set to an
//! interesting value (zero, all ones, a bit, an address of a kind the firmware must refuse:
//! read-only, unmapped, a context page, device MMIO, misaligned, crossing a page, past 2^52),
//! its length changed, the buffer misaligned, the command ID changed; guest requests with
//! their header and body mutated and their output and request addresses picked from the same
//! kinds; relays as the command says (the device's answers to the end, a few rounds then
//! nothing, one round with another answer: nothing, mangled, replayed, reflected, made up,
//! too long) and later continuations of a saved written-back buffer with any answer and a
//! mangled response buffer; and the host's actions beside commands: device misbehaviour and
//! events, the device's report, fences held, the host's own RMPUPDATE and PSMASH. The guest's
//! TIO_MSG_SDTE_WRITE_REQ is one of the guest messages: Linux's entry, or a firmware bit set,
//! a guest bit flipped, a VMPL below the sender's VMPCK, V clear, a reserved body byte, any
//! entry; from the owner or another guest, under any VMPCK (header mutation), again once
//! valid.
//!
//! After every command: `tsm_tests::invariants::check`, the record tables' consistency and the
//! context tables' (every context names a live core object of its kind, guest device IDs are
//! unique per guest); the device model untouched (the firmware never talks to it); the buffer
//! written back unchanged but for `FLAG_CONTINUE` (set exactly when the answer is
//! SPDM_REQUEST, cleared on SUCCESS and RESUME_REQUIRED, untouched by a refusal); a refused
//! command (any status but SUCCESS, RESUME_REQUIRED and SPDM_REQUEST) and a relayed one must
//! leave everything as it was, under the exemptions of [`crate::exempt`]: the core's tables,
//! the RMP (every entry, fence counters), guest, device and TDI contexts and all of system
//! memory (a relayed one writes the request buffer only, and the device opens what it holds
//! as the TDI's outstanding exchange); a successful one writes system memory only inside the
//! output it names; a guest message refused inside its answer changes nothing but the
//! response page (and what its exemption allows); a continuation that went on carried the
//! device's own answer to the outstanding exchange, and the device's own answer is never
//! refused as malformed. Beside those: host MMIO block and unmap never succeed, a permitted
//! zap or host RMPUPDATE touches no private owned page and no leaf, a finished unbind leaves
//! the TDI unbound and owning nothing, read-only commands (TDI_INFO, ASID_FENCE_STATUS,
//! TDI_REPORT) change no table, and only unbind, device error, TDI_STATUS and the fence clear
//! answer RESUME_REQUIRED. Trusted DMA (`World::dma_oracle`): the secure device table is in
//! every refusal's image; a TDI's DMA reaches a guest's private memory only while the TDI is
//! RUN bound to it, its core record says the context is active and its sDTE is the guest's,
//! valid and names the guest's ASID (and a RUN TDI with an active context on a live stream
//! does reach it); every sDTE belongs to a TDI bound to the entry's guest, so a finished unbind
//! leaves none and TIO_TDI_RECLAIM never succeeds with one; an SDTE write answered with any
//! status but success changes nothing but the response page, and one answered success either
//! accepted a pending entry as written (valid, the guest's ASID, the bind's fields kept, the
//! core's context active) or changed nothing but the response page. At the end every TDI
//! unbinds (fences released, the device behaving; an unbind the device's answer failed is
//! called once more).

use arbitrary::{Arbitrary, Unstructured};
use platform_sev::abi::{self, Command, SlaAddr, len_of};
use platform_sev::fw::{DevCtx, GuestCtx, Sev, TdiCtx};
use platform_sev::guest_msg::{self as msg, MsgHeader};
use platform_sev::host::{self, read_request, response_init, write_response};
use platform_sev::memory::{PageMemory, SystemMemory};
use platform_sev::pfn::Pfn;
use platform_sev::rmp::{AsidFence, Rmp, RmpEntry, RmpStore, RmpUpdate, rmp_index_words};
use platform_sev::sdte::{self, Sdte, SdteSlot};
use platform_sev::status::{Outcome, SevStatus};
use platform_sev::zerocopy::{FromBytes, FromZeros, IntoBytes};
use tsm_core::capacity::MAX_TDIS;
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::dma::DmaState;
use tsm_core::relay::{MAX_RELAY_BYTES, doe};
use tsm_core::tdisp::report::{RANGE_ATTR_NON_TEE, WireMmioRange, wire_range};
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Completion, DeviceOp, Error, GuestId, Hpa, MmioRange, ModelSession, RequesterId,
    ReservedMemory, TdiId, TdiState,
};
use tsm_core::{TdispState, capacity::MAX_RANGES_PER_TDI};

use crate::answer::{Answer, Answers, check_request};
use crate::common::{self, changed_outside, core_diff, fail, fid_of, registry_consistent};
use crate::enc::ops;
use crate::exempt::{Call, Exempt, exemption};
use crate::tdx::{DevAction, Relay};

/// The RMP window: device MMIO.
pub const RMP_BASE: u64 = 0x8000_0000;
const RMP_PAGES: usize = 4096;
/// Device 0's BAR (4 MiB).
pub const BAR: u64 = 0x8000_0000;
/// System memory: status (0), request (1), response (2), report (3), a page the tests put a
/// guest context on (4), read-only (5), a page a device context may sit on (6), spare (7),
/// the SPDM request (8) and response (9) buffers, the BAR lists (10), the TIO status page
/// (11, [`TIO_STATUS_PAGE`]).
pub const MEM: u64 = 0x1_0000_0000;
const MEM_PAGES: usize = 12;
/// The SPDM request buffer (`spdm_ctrl.req` of every relaying command).
pub const SPDM_REQ: u64 = MEM + 0x8000;
/// The SPDM response buffer (`spdm_ctrl.resp`).
pub const SPDM_RESP: u64 = MEM + 0x9000;
/// The BAR list of configuration `k` is at `BAR_LISTS + k * 0x90`.
pub const BAR_LISTS: u64 = MEM + 0xA000;
/// Where TIO_STATUS writes `sev_tio_status` (Linux's `tio_status_page`).
pub const TIO_STATUS_PAGE: u64 = MEM + 0xB000;
const RO_PAGE: u64 = MEM + 0x5000;
const FW_PAGE: u64 = MEM + 0x4000;
const FW_PAGE2: u64 = MEM + 0x6000;
const UNMAPPED: u64 = MEM + 0x10_0000;
/// Guest contexts.
pub const GCTX: u64 = 0x2_0000_0000;
/// Where the setup maps TDI 0's MMIO.
pub const GPA: u64 = 0x10_0000_0000;
/// Where the setup maps TDI 1's 80 leaves.
pub const GPA_MANY: u64 = 0x20_0000_0000;
/// Guest device IDs the setup binds with.
pub const GDEV: [u16; 2] = [0x100, 0x101];
/// Commands per input (a resumable unbind counts as many).
pub const MAX_CMDS: usize = 64;
const MAX_RESPONSE: usize = msg::HDR_SIZE as usize + msg::MAX_BODY;
const MAX_REPORT: usize = 16 + 16 * MAX_RANGES_PER_TDI + 4;

/// The BARs the host lists for each device configuration, by index (bus 3 + index,
/// function 0), in BAR lists at [`BAR_LISTS`]: good BARs, one over system memory, one over
/// device 0's BAR, one outside the RMP window, two that overlap.
const CONFIG: [&[(u64, u64)]; 7] = [
    &[(BAR, 1024)],
    &[(0x8040_0000, 512), (0x8060_0000, 16)],
    &[(0x8080_0000, 1024)],
    &[(MEM, 4)],
    &[(BAR + 0x10_0000, 16)],
    &[(0x9000_0000, 16)],
    &[(0x80c0_0000, 16), (0x80c0_0000, 16)],
];

ops! {
    /// How far the setup goes before the fuzzed commands.
    pub enum Stage {
        /// Nothing.
        Empty,
        /// Guest contexts G0 (ASID 5) and G1 (ASID 6), created and activated.
        Guests,
        /// + device 0 created and connected, TDIs 0 (3:0.0) and 1 (3:0.1) created.
        Device,
        /// + TDI 0 bound to G0 (guest device ID 0x100).
        Bound,
        /// + TDI 0's 2 MiB and 4 KiB leaves mapped.
        Mapped,
        /// + the guest validated the 2 MiB leaf and started TDI 0.
        Started,
        /// + TDI 1 bound to G1 with 80 4 KiB leaves.
        Many,
        /// Nothing, and TIO not initialised: Linux's init (TIO_STATUS, TIO_INIT, TIO_STATUS,
        /// `sev_tio_init_locked`) is left to the commands; every other TIO command answers
        /// INVALID_PLATFORM_STATE until TIO_INIT ran.
        Uninit,
    }
}

ops! {
    /// A value written into a field.
    pub enum Val {
        /// 0.
        Zero,
        /// All ones.
        Ones,
        /// One bit.
        Bit { bit: u8 },
        /// One of the interesting addresses ([`interesting`]).
        Addr { which: u8 },
        /// A small number.
        Small { v: u8 },
        /// Anything.
        Raw { v: u64 },
        /// Another context's handle: a guest context page, device or TDI context SLA.
        Ctx { k: u8 },
    }
}

ops! {
    /// A mutation of a command before it is issued.
    pub enum Mut {
        /// None.
        Keep,
        /// Field number `field` of the command's layout ([`fields`]).
        Field { field: u8, val: Val },
        /// The bytes of `width` 1, 2, 4 or 8 at `at` (aligned down, within the buffer).
        Bytes { at: u8, width: u8, val: Val },
        /// The buffer is `len % 0x60` bytes long.
        Length { len: u8 },
        /// The buffer starts 4 bytes past an 8-byte boundary.
        Misalign,
        /// Another command ID.
        Id { id: u16 },
    }
}

ops! {
    /// A guest message.
    pub enum Msg {
        /// MMIO_VALIDATE of `pages` pages at `offset` in range `range`.
        Validate { gdev: u8, range: u8, offset: u16, pages: u16, gpa: u8, flags: u8 },
        /// TDI_START.
        Start { gdev: u8 },
        /// TDI_INFO.
        Info { gdev: u8 },
        /// Any type, any body size.
        Raw { ty: u8, size: u8 },
        /// TIO_MSG_SDTE_WRITE_REQ (25), the entry as `entry` says.
        Sdte { gdev: u8, entry: SdteMut },
    }
}

ops! {
    /// The entry of a TIO_MSG_SDTE_WRITE_REQ.
    pub enum SdteMut {
        /// As Linux's guest writes it: V, IR, IW, VMPL 0, vTOM_EN and its default vTOM.
        Linux,
        /// Linux's with VMPL `vmpl % 4`.
        Vmpl { vmpl: u8 },
        /// Linux's with guest-writable bit `bit` (of the 38 of `sdte::GUEST_BITS`) flipped.
        Flip { bit: u8 },
        /// Linux's with bit `bit` (of the 474 the guest may not set) set.
        Reserved { bit: u16 },
        /// Linux's with V clear: an invalidation.
        Invalidate,
        /// Linux's under VMPCK `1 + k % 3`, with a VMPL below it.
        BelowSender { k: u8 },
        /// Linux's with reserved byte `at % 14` of the body set.
        BodyReserved { at: u8 },
        /// Qwords 0, 3 and 5 (those with guest bits) any values, the rest 0.
        Raw { q0: u64, q3: u64, q5: u64 },
    }
}

ops! {
    /// What is wrong with a guest message's header.
    pub enum HdrMut {
        /// Nothing.
        Fine,
        /// Header version 2.
        Version,
        /// Header size not 0x60.
        HdrSize,
        /// Message version 2.
        MsgVersion,
        /// A reserved byte set.
        Reserved { at: u8 },
        /// The body size off by `delta`.
        Size { delta: u8 },
        /// Another message type.
        Type { ty: u8 },
        /// VMPCK `v` (0..=3 the sender's VMPL; above, malformed).
        Vmpck { v: u8 },
    }
}

ops! {
    /// What the host does to the response buffer after writing an answer there.
    pub enum RespMut {
        /// Nothing: as Linux writes it.
        Fine,
        /// The data object's ID is the request's.
        Id,
        /// Version 1.1.
        Version,
        /// Data type `t`.
        Type { t: u8 },
        /// The data object's length moved by `d` (and `payload_sz` with it).
        Length { d: i8 },
        /// `payload_sz` disagrees with the data object's length.
        PayloadSize,
        /// The buffer says it is encrypted.
        Encrypted,
        /// No answer (length 0x10), whatever the payload.
        Empty,
    }
}

ops! {
    /// The report the device will send at the interface's next bind.
    pub enum SevReport {
        /// The device's first BAR, private.
        Whole,
        /// Past the first BAR.
        Outside,
        /// Two overlapping ranges.
        Overlap,
        /// 17 ranges.
        TooMany,
        /// The first BAR, shared.
        Shared,
        /// TDI 1's range (another TDI's, when it is bound).
        Foreign,
        /// Any range.
        Raw { first: u64, pages: u32, attr: u16 },
    }
}

ops! {
    /// One fuzzed step. `d`, `t`, `g` pick device, TDI and guest contexts ([`dev_sla`],
    /// [`tdi_sla`], [`gctx`]); `out` an output address ([`out_addr`]); `m` mutations.
    pub enum Cmd {
        /// SNP_GCTX_CREATE.
        GctxCreate { g: u8, m: [Mut; 2] },
        /// SNP_ACTIVATE with ASID `asid % 1030`.
        Activate { g: u8, asid: u16, m: [Mut; 2] },
        /// SNP_DECOMMISSION.
        Decommission { g: u8, m: [Mut; 2] },
        /// TIO_DEV_CREATE of configured device `cfg % 8` (7: a function of device 0).
        DevCreate { d: u8, cfg: u8, m: [Mut; 2] },
        /// TIO_DEV_RECLAIM.
        DevReclaim { d: u8, m: [Mut; 2] },
        /// TIO_DEV_CONNECT.
        DevConnect { d: u8, m: [Mut; 2] },
        /// TIO_DEV_DISCONNECT.
        DevDisconnect { d: u8, force: bool, m: [Mut; 2] },
        /// TIO_TDI_CREATE for interface `(3 + bus % 4):(func % 9)`.
        TdiCreate { d: u8, t: u8, bus: u8, func: u8, m: [Mut; 2] },
        /// TIO_TDI_RECLAIM.
        TdiReclaim { d: u8, t: u8, m: [Mut; 2] },
        /// TIO_TDI_BIND with guest device ID pick `gdev`, relayed.
        TdiBind { d: u8, t: u8, g: u8, gdev: u8, m: [Mut; 2], relay: Relay },
        /// One TIO_TDI_UNBIND (FORCE when `force`), relayed.
        TdiUnbind { d: u8, t: u8, g: u8, force: bool, m: [Mut; 2], relay: Relay },
        /// TIO_TDI_UNBIND, relayed to the end, until it does not ask to resume (at most 40).
        TdiUnbindAll { d: u8, t: u8, g: u8 },
        /// TIO_TDI_REPORT.
        TdiReport { d: u8, t: u8, g: u8, out: u8, m: [Mut; 2] },
        /// TIO_TDI_STATUS, relayed.
        TdiStatus { d: u8, t: u8, out: u8, m: [Mut; 2], relay: Relay },
        /// TIO_TDI_INFO.
        TdiInfo { d: u8, t: u8, out: u8, m: [Mut; 2] },
        /// TIO_TDI_ERROR.
        TdiError { d: u8, t: u8, m: [Mut; 2] },
        /// TIO_ASID_FENCE_CLEAR.
        FenceClear { d: u8, g: u8, m: [Mut; 2] },
        /// TIO_ASID_FENCE_STATUS of ASID pick `asid`.
        FenceStatus { d: u8, asid: u8, out: u8, m: [Mut; 2] },
        /// TIO_MMIO_MAP.
        MmioMap { t: u8, g: u8, gpa: u8, hpa: u8, size: u8, m: [Mut; 2] },
        /// TIO_MMIO_BLOCK.
        MmioBlock { g: u8, gpa: u8, size: u8, m: [Mut; 2] },
        /// TIO_MMIO_UNMAP.
        MmioUnmap { g: u8, gpa: u8, size: u8, m: [Mut; 2] },
        /// TIO_MMIO_ZAP.
        MmioZap { base: u8, pages: u8, m: [Mut; 2] },
        /// TIO_GUEST_REQUEST carrying `msg`, request page pick `req`, response `res`, relayed.
        Guest { d: u8, t: u8, g: u8, msg: Msg, hdr: HdrMut, req: u8, res: u8, m: [Mut; 2], relay: Relay },
        /// The written-back buffer saved `k` relays ago issued again, with `answer` (to the
        /// last request of its TDI, or to what the request buffer holds now when `from_page`)
        /// in the response buffer, mangled as `resp` says.
        Continue { k: u8, answer: Answer, resp: RespMut, from_page: bool, m: [Mut; 2] },
        /// The device or host acts on TDI context `t`'s interface.
        Device { t: u8, action: DevAction },
        /// Hold the guest's fences, or complete them.
        HoldFences { g: u8, hold: bool },
        /// The device's report for TDI context `t`'s interface.
        SetReport { t: u8, report: SevReport },
        /// The host's RMPUPDATE (or PSMASH) of page `page` of the RMP window.
        HostRmp { page: u16, assign: bool, psmash: bool },
        /// Any command ID and buffer.
        Raw { id: u16, len: u8, words: [u64; 6] },
        /// TIO_STATUS (0xD0) writing `sev_tio_status` to status page pick `out` (default
        /// [`TIO_STATUS_PAGE`]).
        TioStatus { out: u8, m: [Mut; 2] },
        /// TIO_INIT (0xD1).
        TioInit { m: [Mut; 2] },
    }
}

/// How deep a run got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Commands issued.
    pub commands: usize,
    /// Commands refused.
    pub refused: usize,
    /// Guest messages refused inside their answer.
    pub refused_in_answer: usize,
    /// RESUME_REQUIRED answers.
    pub resumable: usize,
    /// Most assigned RMP pages at once.
    pub max_pages: usize,
    /// Some TDI was bound / running / in ERROR / mid-unbind.
    pub locked: bool,
    /// See `locked`.
    pub run: bool,
    /// See `locked`.
    pub error: bool,
    /// See `locked`.
    pub unbinding: bool,
    /// A bound TDI's unbind finished.
    pub unbound: bool,
    /// A guest MMIO_VALIDATE succeeded.
    pub validated: bool,
    /// SPDM_REQUEST answers.
    pub relays: usize,
    /// Continuations refused as not the device's answer.
    pub malformed: usize,
    /// Continuations refused as RESPONSE_TOO_LARGE.
    pub too_large: usize,
    /// TIO_STATUS answers written.
    pub tio_status: usize,
    /// TIO_INIT runs that initialised TIO.
    pub tio_inits: usize,
    /// TIO commands refused as INVALID_PLATFORM_STATE before TIO_INIT.
    pub before_init: usize,
    /// Guest SDTE writes answered SDTE_WRITE_SUCCESS.
    pub sdte_written: usize,
    /// Some TDI's DMA reached a guest's private memory.
    pub dma_private: bool,
    /// A TDI whose DMA had reached private memory was unbound.
    pub dma_unbound: bool,
}

type Fw = Sev<RmpStore<Vec<RmpEntry>, Vec<u32>>, ModelSession>;

/// Everything a refused command must leave as it was: the core's record tables with the RMP's
/// fence counters, every RMP entry and system memory (both kept apart so that their buffers
/// are reused), the context tables, the device model's TDISP states.
#[derive(Debug, Clone, PartialEq)]
struct State {
    core: Snapshot<Vec<AsidFence>>,
    /// Every entry's 128 bits (compared as integers: one `memcmp`).
    rmp: Vec<u128>,
    /// Every leaf, by host address (what an exempt refusal is checked on).
    leaves: Vec<tsm_core::Leaf>,
    guests: Vec<GuestCtx>,
    devices: Vec<DevCtx>,
    tdis: Vec<TdiCtx>,
    /// The secure device table: every sDTE.
    sdtes: Vec<SdteSlot>,
    tdisp: Vec<(u32, TdispState)>,
    mem: Vec<u8>,
    /// TIO_INIT ran.
    tio: bool,
}

/// The secure device table of `State` as the DMA oracle reads it.
struct Sdtes<'a>(&'a State);

impl Sdtes<'_> {
    /// The ASID of guest `g`'s context, if it has one.
    fn asid(&self, g: GuestId) -> Option<u32> {
        self.0.guests.iter().find(|c| c.guest == g).map(|c| c.asid)
    }
}

impl common::DmaTable for Sdtes<'_> {
    type Entry = SdteSlot;
    const ENTRY: &'static str = "sDTE";
    const GUEST: &'static str = "guest";

    fn entries(&self) -> &[SdteSlot] {
        &self.0.sdtes
    }

    fn is_for(e: &SdteSlot, rec: &tsm_core::registry::Tdi) -> bool {
        e.iface == rec.iface
    }

    fn guest(e: &SdteSlot) -> GuestId {
        e.guest
    }

    /// The guest's, active, valid, and naming the guest's ASID.
    fn translates(&self, e: &SdteSlot, g: GuestId) -> bool {
        e.guest == g
            && e.state == DmaState::Active
            && e.sdte.valid()
            && self.asid(g).is_some_and(|a| a != 0 && e.sdte.asid() == a)
    }

    fn read_of(&self, g: GuestId) -> String {
        format!("ASID {:?}", self.asid(g))
    }
}

/// What the host handed a continuation, for the answer oracle.
#[derive(Debug, Clone)]
struct Handed {
    /// The DOE payload written to the response buffer.
    payload: Vec<u8>,
    /// Written as Linux writes it (no [`RespMut`]).
    clean: bool,
}

/// Written-back buffers kept for continuations.
const SAVED: usize = 4;

struct World {
    sev: Fw,
    mem: PageMemory<MEM_PAGES>,
    device: ModelDevice,
    answers: Answers,
    /// Each TDI's last request (a DOE object), as the host took it from the request buffer.
    requests: Vec<Option<Vec<u8>>>,
    /// The last written-back buffers that answered SPDM_REQUEST, newest last.
    saved: Vec<(abi::CommandId, Vec<u8>)>,
    /// The answer of the continuation being issued.
    handed: Option<Handed>,
    stats: Stats,
    /// The states taken around each command, reused.
    states: Option<Box<(State, State)>>,
    /// Which TDI slots' DMA reached private memory since their last bind.
    reached: Vec<bool>,
}

#[repr(C, align(8))]
struct Buf([u8; 0x68]);

fn sla(pfn: u64) -> u64 {
    SlaAddr::new()
        .with_pfn(Pfn::try_new(pfn).unwrap_or_else(|| fail("pfn")))
        .into_bits()
}

/// Guest context page pick: G0, G1, G2, a firmware-held memory page, misaligned, null.
pub fn gctx(k: u8) -> u64 {
    [GCTX, GCTX + 0x1000, GCTX + 0x2000, FW_PAGE, GCTX + 0x800, 0][usize::from(k % 6)]
}

/// Device context pick: three SLAs, one on a system-memory page, one malformed.
pub fn dev_sla(k: u8) -> u64 {
    match k % 5 {
        n @ 0..=2 => sla(0x30_0001 + u64::from(n)),
        3 => sla(FW_PAGE2 >> 12),
        _ => sla(0x30_0001) | 1,
    }
}

/// TDI context pick: four SLAs, device context 0's, one with reserved bits.
pub fn tdi_sla(k: u8) -> u64 {
    match k % 6 {
        n @ 0..=3 => sla(0x30_0101 + u64::from(n)),
        4 => dev_sla(0),
        _ => sla(0x30_0101) | 1 << 4,
    }
}

fn rid(bus: u8, devfn: u8) -> RequesterId {
    RequesterId::try_new(0, bus, devfn / 8, devfn % 8).unwrap_or_else(|e| fail(e))
}

/// An address of a kind some command must refuse (or the valid `default`).
pub fn interesting(k: u8, default: u64) -> u64 {
    match k % 12 {
        0 => default,
        1 => default.wrapping_add(0x10),
        2 => RO_PAGE,
        3 => FW_PAGE,
        4 => FW_PAGE2,
        5 => UNMAPPED,
        6 => RMP_BASE,
        7 => default.wrapping_add(8),
        8 => MEM + 0xff0,
        9 => 0,
        10 => 1 << 52,
        _ => MEM + 0x7000,
    }
}

/// An output address pick: the command's own page by default.
pub fn out_addr(k: u8, default: u64) -> u64 {
    interesting(k, default)
}

fn gdev(k: u8) -> u16 {
    match k % 4 {
        0 => GDEV[0],
        1 => GDEV[1],
        2 => 0,
        _ => u16::from(k),
    }
}

/// The BAR list of device configuration `k`.
fn bar_list(k: u8) -> u64 {
    BAR_LISTS + u64::from(k % 8) * 0x90
}

/// The SPDM buffers every relaying command names.
fn spdm_ctrl() -> abi::SpdmCtrl {
    abi::SpdmCtrl {
        req: sla(SPDM_REQ >> 12).into(),
        resp: sla(SPDM_RESP >> 12).into(),
        ..abi::SpdmCtrl::default()
    }
}

fn len<C: Command>() -> u32 {
    len_of::<C>() as u32
}

/// Runs one input; panics when a check fails.
pub fn run(data: &[u8]) -> Stats {
    let mut u = Unstructured::new(data);
    let stage = Stage::arbitrary(&mut u).unwrap_or(Stage::Empty);
    let mut w = World::new(stage != Stage::Uninit);
    w.setup(stage);
    let mut n = 0;
    while !u.is_empty() && n < MAX_CMDS {
        let Ok(cmd) = Cmd::arbitrary(&mut u) else {
            break;
        };
        w.step(cmd);
        n += 1;
    }
    w.finish();
    w.stats
}

impl World {
    /// The world, with Linux's TIO init done when `tio`.
    fn new(tio: bool) -> Self {
        let rmp = Rmp::new(
            Hpa::try_new(RMP_BASE).unwrap_or_else(|e| fail(e)),
            RmpStore::new(
                vec![RmpEntry::new(); RMP_PAGES],
                vec![0; rmp_index_words(RMP_PAGES)],
            ),
        )
        .unwrap_or_else(|e| fail(format!("{e:?}")));
        let mut mem = PageMemory::new(MEM);
        for (i, bars) in CONFIG.iter().enumerate() {
            let mut list = abi::BarList::new_zeroed();
            list.count = (bars.len() as u32).into();
            for (e, &(b, p)) in list.bars.iter_mut().zip(bars.iter()) {
                e.base = b.into();
                e.pages = p.into();
            }
            if mem.write(bar_list(i as u8), list.as_bytes()).is_err() {
                fail("BAR list");
            }
        }
        mem.set_read_only(5, true);
        let r = |b: u64, p: u64| MmioRange::from_raw(b, p).unwrap_or_else(|e| fail(e));
        let mut device = ModelDevice::model();
        let reports: [(RequesterId, Vec<MmioRange>); 4] = [
            (rid(3, 0), vec![r(BAR, 512), r(BAR + 0x20_0000, 16)]),
            (rid(3, 1), vec![r(BAR + 0x30_0000, 128)]),
            (rid(4, 0), vec![r(0x8040_0000, 512), r(0x8060_0000, 16)]),
            (rid(5, 0), vec![r(0x8080_0000, 1024)]),
        ];
        for (iface, ranges) in &reports {
            device.report_ranges(*iface, ranges);
        }
        let system = ReservedMemory::from_ranges(&[r(MEM, 16)]).unwrap_or_else(|e| fail(e));
        let mut sev = Sev::new(rmp, ModelSession::model(), system);
        // Linux's init first (`sev_tio_init_locked`): TIO_STATUS, TIO_INIT, TIO_STATUS.
        if tio && host::tio_init(&mut sev, &mut mem, TIO_STATUS_PAGE).is_err() {
            fail("TIO init");
        }
        World {
            sev,
            mem,
            device,
            answers: Answers::default(),
            requests: vec![None; MAX_TDIS],
            saved: Vec::new(),
            handed: None,
            stats: Stats::default(),
            states: None,
            reached: vec![false; MAX_TDIS],
        }
    }

    /// Takes the state into `out`, reusing its buffers.
    fn state_into(&self, out: &mut Option<State>) {
        let (mut rmp, mut mem, mut sdtes) = out
            .take()
            .map(|s| (s.rmp, s.mem, s.sdtes))
            .unwrap_or_default();
        sdtes.clear();
        mem.resize(MEM_PAGES * 4096, 0);
        for (i, chunk) in mem.chunks_mut(4096).enumerate() {
            if self.mem.read(self.mem.page(i as u64), chunk).is_err() {
                fail("memory");
            }
        }
        rmp.clear();
        let mut leaves = Vec::new();
        let core = self
            .sev
            .tsm()
            .snapshot_with(|r| {
                rmp.extend(r.entries().iter().map(|e| e.into_bits()));
                leaves = common::leaves(r);
                sdtes.extend(r.sdtes().iter().copied());
                r.fences().to_vec()
            })
            .unwrap_or_else(|e| fail(format!("snapshot: {e:?}")));
        *out = Some(State {
            core,
            rmp,
            leaves,
            guests: self.sev.guests().to_vec(),
            devices: self.sev.devices().to_vec(),
            tdis: self.sev.tdis().to_vec(),
            sdtes,
            tdisp: self.device.dsm().tdisp_states().to_vec(),
            mem,
            tio: self.sev.tio_init_done(),
        });
    }

    /// The state in a fresh buffer (for the rare calls outside `issue`).
    fn state(&self) -> State {
        let mut s = None;
        self.state_into(&mut s);
        s.unwrap_or_else(|| fail("state"))
    }

    fn leaves(&self) -> Vec<tsm_core::Leaf> {
        self.sev
            .tsm()
            .with_table(|t| common::leaves(t))
            .unwrap_or_default()
    }

    // ---- the setup --------------------------------------------------------------------

    fn must(&mut self, what: &str, id: abi::CommandId, bytes: &[u8]) {
        let o = self.relayed(id, bytes, [Mut::Keep; 2], Relay::Drive);
        if o != Outcome::SUCCESS {
            fail(format!("setup step {what}: {o:?}"));
        }
    }

    fn must_msg(&mut self, what: &str, m: Msg) {
        self.put_msg(m, HdrMut::Fine);
        let c = guest_request(0, 0, 0, MEM + 0x1000, MEM + 0x2000);
        self.must(what, abi::TIO_GUEST_REQUEST, c.as_bytes());
        let mut hdr = MsgHeader::new_zeroed();
        let _ = self.mem.read(MEM + 0x2000, hdr.as_mut_bytes());
        let mut status = [0u8; 4];
        let _ = self.mem.read(MEM + 0x2060, &mut status);
        if status[2..4] != [0, 0] {
            fail(format!("setup message {what}: status {status:?}"));
        }
    }

    fn setup(&mut self, stage: Stage) {
        if stage == Stage::Uninit {
            return;
        }
        let at_least = |s: Stage| stage as u8 >= s as u8;
        if !at_least(Stage::Guests) {
            return;
        }
        for (k, asid) in [(0u8, 5u32), (1, 6)] {
            self.must(
                "GCTX_CREATE",
                abi::SNP_GCTX_CREATE,
                gctx_create(k).as_bytes(),
            );
            self.must("ACTIVATE", abi::SNP_ACTIVATE, activate(k, asid).as_bytes());
        }
        if !at_least(Stage::Device) {
            return;
        }
        self.must(
            "DEV_CREATE",
            abi::TIO_DEV_CREATE,
            dev_create(0, 0).as_bytes(),
        );
        self.must(
            "DEV_CONNECT",
            abi::TIO_DEV_CONNECT,
            dev_connect(0).as_bytes(),
        );
        for f in [0u8, 1] {
            let c = tdi_create(0, f, 3, f);
            self.must("TDI_CREATE", abi::TIO_TDI_CREATE, c.as_bytes());
        }
        if !at_least(Stage::Bound) {
            return;
        }
        self.must(
            "TDI_BIND",
            abi::TIO_TDI_BIND,
            tdi_bind(0, 0, 0, 0).as_bytes(),
        );
        if !at_least(Stage::Mapped) {
            return;
        }
        let c = mmio_map(0, 0, GPA, BAR, abi::MMIO_SIZE_2M);
        self.must("MMIO_MAP 2M", abi::TIO_MMIO_MAP, c.as_bytes());
        let c = mmio_map(0, 0, GPA + 0x20_0000, BAR + 0x20_0000, abi::MMIO_SIZE_4K);
        self.must("MMIO_MAP 4K", abi::TIO_MMIO_MAP, c.as_bytes());
        if !at_least(Stage::Started) {
            return;
        }
        let validate = Msg::Validate {
            gdev: 0,
            range: 0,
            offset: 0,
            pages: 511,
            gpa: 0,
            flags: 1,
        };
        self.must_msg("MMIO_VALIDATE", validate);
        self.must_msg("TDI_START", Msg::Start { gdev: 0 });
        if !at_least(Stage::Many) {
            return;
        }
        self.must(
            "TDI_BIND 1",
            abi::TIO_TDI_BIND,
            tdi_bind(0, 1, 1, 1).as_bytes(),
        );
        for i in 0..80 {
            let c = mmio_map(1, 1, GPA_MANY + i * 0x1000, BAR + 0x30_0000 + i * 0x1000, 0);
            self.must("MMIO_MAP 1", abi::TIO_MMIO_MAP, c.as_bytes());
        }
    }

    // ---- commands -----------------------------------------------------------------------

    /// Writes a guest message (header and body) to the request page.
    fn put_msg(&mut self, m: Msg, hdr: HdrMut) {
        // The sender's VMPCK: 0 (VMPL 0) unless the message says.
        let mut vmpck = 0;
        let (ty, body): (u8, Vec<u8>) = match m {
            Msg::Validate {
                gdev: gd,
                range,
                offset,
                pages,
                gpa,
                flags,
            } => {
                let mut r = msg::MmioValidateReq::new_zeroed();
                r.guest_device_id = gdev(gd).into();
                let (range, offset) = (u16::from(range % 4), u32::from(offset) % 1100);
                let base = match (gd % 4, range) {
                    (1, _) => GPA_MANY,
                    (_, 1) => GPA + 0x20_0000,
                    _ => GPA,
                };
                r.subrange_base = match gpa % 4 {
                    0 | 1 => base + u64::from(offset) * 0x1000,
                    2 => base,
                    _ => base + 0x800,
                }
                .into();
                r.subrange_page_count = (1 + u32::from(pages) % 600).into();
                r.range_offset = offset.into();
                r.range_id = range.into();
                r.flags = u16::from(flags % 8).into();
                (msg::MSG_MMIO_VALIDATE_REQ, r.as_bytes().to_vec())
            }
            Msg::Start { gdev: gd } | Msg::Info { gdev: gd } => {
                let mut r = msg::TdiReq::new_zeroed();
                r.guest_device_id = gdev(gd).into();
                let ty = if matches!(m, Msg::Start { .. }) {
                    msg::MSG_TDI_START_REQ
                } else {
                    msg::MSG_TDI_INFO_REQ
                };
                (ty, r.as_bytes().to_vec())
            }
            Msg::Raw { ty, size } => (ty, vec![0u8; usize::from(size)]),
            Msg::Sdte { gdev: gd, entry } => {
                let mut r = msg::SdteWriteReq::new_zeroed();
                r.guest_device_id = gdev(gd).into();
                let (sdte, sender) = sdte_of(entry);
                r.sdte = sdte;
                vmpck = sender;
                if let SdteMut::BodyReserved { at } = entry {
                    r.reserved[usize::from(at % 14)] = 1;
                }
                (msg::MSG_SDTE_WRITE_REQ, r.as_bytes().to_vec())
            }
        };
        let mut h = MsgHeader::new(ty, body.len());
        h.msg_vmpck = vmpck;
        match hdr {
            HdrMut::Fine => {}
            HdrMut::Version => h.hdr_version = 2,
            HdrMut::HdrSize => h.hdr_sz = 0x40.into(),
            HdrMut::MsgVersion => h.msg_version = 2,
            HdrMut::Reserved { at } => h.reserved3[usize::from(at) % 35] = 1,
            HdrMut::Size { delta } => {
                h.msg_sz = h.msg_sz.get().wrapping_add(u16::from(delta)).into();
            }
            HdrMut::Type { ty } => h.msg_type = ty,
            HdrMut::Vmpck { v } => h.msg_vmpck = v,
        }
        let _ = self.mem.write(MEM + 0x1000, h.as_bytes());
        let _ = self.mem.write(MEM + 0x1000 + 0x60, &body);
    }

    /// Issues a command: mutates the buffer, runs it, checks everything. Returns the outcome
    /// and the buffer as the firmware wrote it back.
    fn issue_buf(
        &mut self,
        id: abi::CommandId,
        bytes: &[u8],
        muts: [Mut; 2],
    ) -> (Outcome, abi::CommandId, Vec<u8>) {
        let mut b = Buf([0; 0x68]);
        let n = bytes.len().min(0x60);
        b.0[..n].copy_from_slice(&bytes[..n]);
        let first_id = id;
        let (mut id, mut len, mut off) = (id, n, 0usize);
        for m in muts {
            match m {
                Mut::Keep => {}
                Mut::Field { field, val } => {
                    let f = fields(id);
                    let (at, w) = f[usize::from(field) % f.len()];
                    put(&mut b.0[..len], usize::from(at), usize::from(w), val);
                }
                Mut::Bytes { at, width, val } => {
                    let w = [1usize, 2, 4, 8][usize::from(width % 4)];
                    if len >= w {
                        let at = (usize::from(at) % (len - w + 1)) & !(w - 1);
                        put(&mut b.0[..len], at, w, val);
                    }
                }
                Mut::Length { len: l } => len = usize::from(l) % 0x60,
                Mut::Misalign => off = 4,
                Mut::Id { id: i } => id = u32::from(i),
            }
        }
        // A misaligned buffer keeps its bytes: they move up by `off`.
        if off != 0 {
            b.0.copy_within(0..0x60, off);
        }
        let buf = b.0[off..off + len].to_vec();
        // A mutation that moved the SPDM buffers (or the command) away from those the host
        // wrote a continuation's answer for: not the answer as Linux hands it.
        let spdm = |v: &[u8]| {
            v.get(abi::SPDM_CTRL_OFFSET..abi::SPDM_CTRL_OFFSET + 16)
                .map(<[u8]>::to_vec)
        };
        if (spdm(bytes) != spdm(&buf) || id != first_id)
            && let Some(h) = &mut self.handed
        {
            h.clean = false;
        }
        let call = self.call_of(id, &buf);
        let output = self.output_of(id, &buf);
        let mut states = self.states.take().map(|b| {
            let (a, b) = *b;
            (Some(a), Some(b))
        });
        let (before, after) = states.get_or_insert((None, None));
        self.state_into(before);
        let o = self
            .sev
            .command(&mut self.mem, id, &mut b.0[off..off + len]);
        self.state_into(after);
        let (Some(before), Some(after)) = (before.take(), after.take()) else {
            fail("states");
        };
        let written = b.0[off..off + len].to_vec();
        self.check(id, &buf, &written, o, call, output, &before, &after);
        self.states = Some(Box::new((before, after)));
        self.handed = None;
        if o.status == SevStatus::SPDM_REQUEST {
            if self.saved.len() == SAVED {
                self.saved.remove(0);
            }
            self.saved.push((id, written.clone()));
        }
        (o, id, written)
    }

    /// [`World::issue_buf`], the outcome only.
    fn issue(&mut self, id: abi::CommandId, bytes: &[u8], muts: [Mut; 2]) -> Outcome {
        self.issue_buf(id, bytes, muts).0
    }

    /// Issues a command and relays it as `policy` says, the Linux way: while it answers
    /// SPDM_REQUEST, the answer goes to the response buffer and the written-back buffer is
    /// issued again. The last outcome.
    fn relayed(
        &mut self,
        id: abi::CommandId,
        bytes: &[u8],
        muts: [Mut; 2],
        policy: Relay,
    ) -> Outcome {
        let (mut o, id, mut buf) = self.issue_buf(id, bytes, muts);
        let mut waiting = o.status == SevStatus::SPDM_REQUEST;
        for round in 0..40 {
            if !waiting {
                break;
            }
            let answer = match policy {
                Relay::Drive => Answer::Genuine,
                Relay::Leave => break,
                Relay::Rounds { n } if round > usize::from(n % 4) => break,
                Relay::Rounds { .. } => Answer::Genuine,
                Relay::Once { answer } if round == 0 => answer,
                Relay::Once { .. } => Answer::Genuine,
            };
            self.put_answer(&buf, answer, RespMut::Fine, false);
            let written;
            (o, _, written) = self.issue_buf(id, &buf, [Mut::Keep; 2]);
            // An answer refused as not the device's leaves the request outstanding: the
            // written-back buffer (unchanged by the refusal) is issued again.
            waiting = o.status == SevStatus::SPDM_REQUEST
                || o.detail == Error::RelayMalformed.code()
                || o.status == SevStatus::RESPONSE_TOO_LARGE;
            buf = written;
        }
        o
    }

    /// Writes `answer` to the last request of the TDI `buf` names (or to what the request
    /// buffer holds, `from_page`) into the response buffer `buf` names (the SPDM response
    /// buffer when it names none we have), as Linux writes it, then mangles it as `resp` says.
    fn put_answer(&mut self, buf: &[u8], answer: Answer, resp: RespMut, from_page: bool) {
        let word = |at: usize| {
            buf.get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let req = SlaAddr::from_bits(word(abi::SPDM_CTRL_OFFSET)).address();
        let resp_at = SlaAddr::from_bits(word(abi::SPDM_CTRL_OFFSET + 8)).address();
        // The host writes the buffer it named; one it cannot write stays as it is (and the
        // answer goes to the SPDM response buffer, where the firmware will not look).
        let named = self.mem.probe_write(resp_at, 4096).is_ok();
        let resp_at = if named { resp_at } else { SPDM_RESP };
        let tdi = self
            .sev
            .tdi_ctx(word(0x30))
            .map(|c| usize::from(c.tdi.slot()));
        let stored = tdi.and_then(|t| self.requests.get(t).cloned().flatten());
        let request = match stored {
            Some(r) if !from_page => r,
            _ => self.request_in(req).unwrap_or_default(),
        };
        let (bytes, _) = self.answers.make(answer, &mut self.device, &request);
        let payload = bytes
            .as_ref()
            .map(|b| match doe::decode(b, doe::TYPE_SECURED_SPDM) {
                Ok(p) => p.to_vec(),
                Err(_) => b.get(doe::HEADER_SIZE..).unwrap_or(&[]).to_vec(),
            });
        // At most what the page holds after the payload offset.
        let payload = payload.map(|mut p| {
            p.truncate(4096 - 0x50);
            p
        });
        // As Linux leaves the buffer after DEV_CONNECT (`dobj_response_init`), then the answer.
        // An earlier answer's bytes past this one are cleared: a short answer (truncated, its
        // DOE header still claiming the whole) must not be completed by the genuine bytes an
        // earlier hand left there, which the firmware would rightly take as the device's.
        let _ = self.mem.write(resp_at + 0x50, &[0u8; 4096 - 0x50]);
        let _ = response_init(&mut self.mem, resp_at);
        let _ = write_response(
            &mut self.mem,
            resp_at,
            doe::TYPE_SECURED_SPDM,
            payload.as_deref(),
        );
        let w32 = |mem: &mut PageMemory<MEM_PAGES>, off: u64, v: u32| {
            let _ = mem.write(resp_at + off, &v.to_le_bytes());
        };
        let read32 = |mem: &PageMemory<MEM_PAGES>, off: u64| {
            let mut b = [0u8; 4];
            let _ = mem.read(resp_at + off, &mut b);
            u32::from_le_bytes(b)
        };
        match resp {
            RespMut::Fine => {}
            RespMut::Id => w32(&mut self.mem, 0x40, 1),
            RespMut::Version => {
                let _ = self.mem.write(resp_at + 0x48, &[1]);
            }
            RespMut::Type { t } => {
                let _ = self.mem.write(resp_at + 0x4A, &[t]);
            }
            RespMut::Length { d } => {
                let v = read32(&self.mem, 0x44).wrapping_add_signed(i32::from(d) | 1);
                w32(&mut self.mem, 0x44, v);
                w32(&mut self.mem, 0x04, v);
            }
            RespMut::PayloadSize => {
                let v = read32(&self.mem, 0x04) ^ 0x20;
                w32(&mut self.mem, 0x04, v);
            }
            RespMut::Encrypted => w32(&mut self.mem, 0x08, 1),
            RespMut::Empty => {
                w32(&mut self.mem, 0x44, 0x10);
                w32(&mut self.mem, 0x04, 0x10);
            }
        }
        self.handed = payload.map(|payload| Handed {
            payload,
            clean: resp == RespMut::Fine && named,
        });
    }

    /// The request in the request buffer at `req` as Linux relays it: the DOE object.
    fn request_in(&self, req: u64) -> Option<Vec<u8>> {
        let mut payload = [0u8; 4096];
        let (t, n) = read_request(&self.mem, req, &mut payload)?;
        let mut out = vec![0u8; MAX_RELAY_BYTES + 8];
        let k = doe::encode(&mut out, t, payload.get(..n)?).ok()?;
        out.truncate(k);
        Some(out)
    }

    /// The exemption-relevant operation a buffer names, read before the call, and the TDI
    /// whose context it names: a bind, unbind (FORCE or not), status or a guest's TDI_START of
    /// that TDI, or, with `FLAG_CONTINUE`, the device's answer to it.
    fn call_of(&self, id: abi::CommandId, buf: &[u8]) -> Call {
        let word = |at: usize| {
            buf.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let flags = buf
            .get(4..8)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
        let continuing = flags & abi::FLAG_CONTINUE != 0;
        let Some(t) = word(0x30).and_then(|t| self.sev.tdi_ctx(t)).map(|c| c.tdi) else {
            return Call::Other;
        };
        let start = || {
            let mut hdr = MsgHeader::new_zeroed();
            word(0x40).is_some_and(|at| {
                self.mem.read(at, hdr.as_mut_bytes()).is_ok()
                    && hdr.msg_type == msg::MSG_TDI_START_REQ
            })
        };
        match id {
            abi::TIO_TDI_BIND | abi::TIO_TDI_STATUS | abi::TIO_TDI_UNBIND
                if continuing && flags & abi::FLAG_FORCE == 0 =>
            {
                Call::Respond(t)
            }
            abi::TIO_TDI_BIND => Call::Bind(t),
            abi::TIO_TDI_STATUS => Call::Check(t),
            abi::TIO_TDI_UNBIND if flags & abi::FLAG_FORCE != 0 => Call::Force(t),
            abi::TIO_TDI_UNBIND => Call::Unbind(t),
            abi::TIO_GUEST_REQUEST if start() && continuing => Call::Respond(t),
            abi::TIO_GUEST_REQUEST if start() => Call::Start(t),
            _ => Call::Other,
        }
    }

    /// Where a command may write system memory, and how much: its output.
    fn output_of(&self, id: abi::CommandId, buf: &[u8]) -> Option<(u64, usize)> {
        let word = |at: usize| {
            buf.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        match id {
            abi::TIO_STATUS => Some((word(0x08)?, 0x40)),
            abi::TIO_TDI_STATUS => Some((word(0x38)?, 16)),
            abi::TIO_TDI_INFO => Some((word(0x18)?, 0xC0)),
            abi::TIO_ASID_FENCE_STATUS => Some((word(0x14)?, 8)),
            abi::TIO_TDI_REPORT => Some((SlaAddr::from_bits(word(0x20)?).address(), MAX_REPORT)),
            abi::TIO_GUEST_REQUEST => Some((word(0x48)?, MAX_RESPONSE)),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        id: abi::CommandId,
        buf: &[u8],
        written: &[u8],
        o: Outcome,
        call: Call,
        output: Option<(u64, usize)>,
        before: &State,
        after: &State,
    ) {
        let what = format!("command {id:#x} {buf:02x?} -> {o:?}");
        self.stats.commands += 1;
        common::trace(&what);
        common::invariants(self.sev.tsm(), &what);
        if let Err(e) = registry_consistent(&after.core).and_then(|()| contexts_consistent(after)) {
            fail(format!("records disagree after {what}: {e}"));
        }
        if before.tdisp != after.tdisp {
            fail(format!("the firmware changed the device: {what}"));
        }
        let progress = o.status == SevStatus::RESUME_REQUIRED;
        let relay = o.status == SevStatus::SPDM_REQUEST;
        let relaying = abi::RELAYING.contains(&id);
        if progress {
            self.stats.resumable += 1;
            if !matches!(
                id,
                abi::TIO_TDI_UNBIND
                    | abi::TIO_TDI_ERROR
                    | abi::TIO_TDI_STATUS
                    | abi::TIO_ASID_FENCE_CLEAR
            ) {
                fail(format!(
                    "only unbind, error, status and fence resume: {what}"
                ));
            }
        }
        if relay {
            self.stats.relays += 1;
            if !relaying || call.tdi().is_none() || matches!(call, Call::Force(_)) {
                fail(format!(
                    "only bind, unbind, status and a start relay: {what}"
                ));
            }
        }
        let refused = o.status != SevStatus::SUCCESS && !progress && !relay;
        // The buffer written back: FLAG_CONTINUE set on SPDM_REQUEST, cleared on SUCCESS and
        // RESUME_REQUIRED, in a relaying command; nothing else, ever.
        let mut want = buf.to_vec();
        if relaying
            && !refused
            && let Some(w) = want.get_mut(abi::CONTINUE_WORD..abi::CONTINUE_WORD + 4)
        {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let v = if relay {
                v | abi::FLAG_CONTINUE
            } else {
                v & !abi::FLAG_CONTINUE
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
        if written != want.as_slice() {
            fail(format!("the buffer written back is {written:02x?}: {what}"));
        }
        self.tio_oracle(id, buf, o, before, after, &what);
        let t = call.tdi();
        let rec =
            |s: &State| t.and_then(|t| s.core.tdis.get(usize::from(t.slot())).cloned().flatten());
        let waiting = rec(before).and_then(|r| r.exchange).map(|e| e.op);
        let err = (o.detail != 0)
            .then(|| Error::from_code(o.detail))
            .flatten();
        if refused || relay {
            if refused {
                self.stats.refused += 1;
            }
            let exempt = if relay {
                exemption(call, Ok(Completion::Relay(0)), waiting)
            } else {
                exemption(call, Err(err), waiting)
            };
            // A relay writes the request buffer the command names, nothing else.
            let window = relay
                .then(|| {
                    let req = buf.get(8..16)?;
                    let req =
                        SlaAddr::from_bits(u64::from_le_bytes(req.try_into().ok()?)).address();
                    let start = usize::try_from(req.checked_sub(MEM)?).ok()?;
                    Some(start..start + platform_sev::relay::WINDOW)
                })
                .flatten();
            if let Err(e) = diff(before, after, exempt, window) {
                fail(format!("{what} ({err:?}, {exempt:?}) changed state: {e}"));
            }
        } else {
            // Memory changes only inside the output the command named (checked before use).
            let window = output.map(|(at, n)| {
                let start = at.wrapping_sub(MEM) as usize;
                start..start.saturating_add(n)
            });
            if let Some(i) = changed_outside(&before.mem, &after.mem, window) {
                fail(format!(
                    "{what} wrote memory at {:#x}, outside its output",
                    MEM + i as u64
                ));
            }
        }
        if relay {
            self.take_request(buf, t, after, &what);
        }
        if let Call::Respond(_) = call {
            self.answer_oracle(rec(before), o, refused, &what);
            if refused && let Err(e) = crate::exempt::ended(waiting, err, rec(after).as_ref()) {
                fail(format!("{e}: {what}"));
            }
        }
        self.oracles(id, buf, o, call, waiting, output, before, after, &what);
        self.dma_oracle(after, &what);
        self.record(after);
    }

    /// After SPDM_REQUEST: the request buffer holds a request the device opens as the TDI's
    /// outstanding exchange; the host copies it out, and keeps the written-back buffer.
    fn take_request(&mut self, buf: &[u8], t: Option<TdiId>, after: &State, what: &str) {
        let Some(t) = t else { return };
        let rec = after
            .core
            .tdis
            .get(usize::from(t.slot()))
            .cloned()
            .flatten()
            .unwrap_or_else(|| fail(format!("relay for no TDI: {what}")));
        let ex = rec
            .exchange
            .unwrap_or_else(|| fail(format!("relay with nothing outstanding: {what}")));
        let req = buf
            .get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let request = self
            .request_in(SlaAddr::from_bits(req).address())
            .unwrap_or_else(|| fail(format!("no request in the request buffer: {what}")));
        if let Err(e) = check_request(&request, fid_of(rec.iface), ex.seq) {
            fail(format!("{e}: {what}"));
        }
        self.requests[usize::from(t.slot())] = Some(request);
    }

    /// A continuation the core took (written as Linux writes it) went on only with the
    /// device's own answer to the TDI's outstanding exchange (the payload the host wrote
    /// starts with it: what follows the record is hidden by Linux's rounding or refused as too
    /// long), and the device's own answer is never refused as malformed.
    fn answer_oracle(
        &mut self,
        before: Option<tsm_core::registry::Tdi>,
        o: Outcome,
        refused: bool,
        what: &str,
    ) {
        let Some(h) = self.handed.clone() else { return };
        let Some(rec) = before else { return };
        let Some(ex) = rec.exchange else { return };
        if !h.clean || h.payload.is_empty() {
            return;
        }
        let fid = fid_of(rec.iface);
        let err = (o.detail != 0)
            .then(|| Error::from_code(o.detail))
            .flatten();
        if err == Some(Error::RelayMalformed) {
            self.stats.malformed += 1;
            if self.answers.payload_of(&h.payload, fid, ex.seq, true) {
                fail(format!(
                    "the device's own answer refused as malformed: {what}"
                ));
            }
        }
        if o.status == SevStatus::RESPONSE_TOO_LARGE
            && self.answers.payload_of(&h.payload, fid, ex.seq, true)
        {
            fail(format!(
                "the device's own answer refused as too large: {what}"
            ));
        }
        let taken = !(refused
            && (o.detail == 0
                || matches!(
                    err,
                    Some(
                        Error::RelayMalformed
                            | Error::NoExchange
                            | Error::ExchangePending
                            | Error::InvalidHandle
                            | Error::Busy(_)
                    )
                )));
        if taken && !self.answers.payload_of(&h.payload, fid, ex.seq, false) {
            fail(format!(
                "bytes the device never sent for this exchange went on: {what}"
            ));
        }
    }

    /// TIO_STATUS and TIO_INIT (sev_tio_init_locked): before TIO_INIT every other TIO command
    /// is INVALID_PLATFORM_STATE (detail 0) whatever its buffer; only a successful TIO_INIT
    /// initialises, and only once (again: INVALID_PLATFORM_STATE); a successful TIO_STATUS
    /// wrote exactly the status this firmware reports at `status_paddr`; a response refused
    /// as too large changed nothing (the generic refusal check) and is counted.
    fn tio_oracle(
        &mut self,
        id: abi::CommandId,
        buf: &[u8],
        o: Outcome,
        before: &State,
        after: &State,
        what: &str,
    ) {
        let ok = o == Outcome::SUCCESS;
        if o.status == SevStatus::RESPONSE_TOO_LARGE {
            self.stats.too_large += 1;
            if o.detail != 0 {
                fail(format!("RESPONSE_TOO_LARGE with a detail: {what}"));
            }
        }
        if !before.tio && abi::needs_tio_init(id) {
            if o != Outcome::plain(SevStatus::INVALID_PLATFORM_STATE) {
                fail(format!("a TIO command before TIO_INIT: {what}"));
            }
            self.stats.before_init += 1;
        }
        if after.tio != (before.tio || (id == abi::TIO_INIT && ok)) {
            fail(format!("TIO_INIT state moved: {what}"));
        }
        if id == abi::TIO_INIT {
            if ok && before.tio {
                fail(format!("TIO_INIT twice succeeded: {what}"));
            }
            if ok {
                self.stats.tio_inits += 1;
            }
            if before.tio
                && o.status != SevStatus::INVALID_PARAM
                && o != Outcome::plain(SevStatus::INVALID_PLATFORM_STATE)
            {
                fail(format!("TIO_INIT twice: {what}"));
            }
        }
        if id == abi::TIO_STATUS && ok {
            self.stats.tio_status += 1;
            let at = buf
                .get(0x08..0x10)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            let mut page = [0u8; 0x40];
            if self.mem.read(at, &mut page).is_err() {
                fail(format!("TIO_STATUS answered at an unreadable page: {what}"));
            }
            if page != *abi::TioStatusData::report(after.tio).as_bytes() {
                fail(format!("TIO_STATUS wrote {page:02x?}: {what}"));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn oracles(
        &mut self,
        id: abi::CommandId,
        buf: &[u8],
        o: Outcome,
        call: Call,
        waiting: Option<DeviceOp>,
        output: Option<(u64, usize)>,
        before: &State,
        after: &State,
        what: &str,
    ) {
        let ok = o == Outcome::SUCCESS;
        let word = |at: usize| {
            buf.get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        match id {
            abi::TIO_MMIO_BLOCK | abi::TIO_MMIO_UNMAP
                if ok
                    && !crate::common::host_teardown_only(
                        &before.core,
                        &before.leaves,
                        &after.leaves,
                    ) =>
            {
                fail(format!(
                    "the host blocked or removed a bound TDI's leaf before its device was cut off: {what}"
                ));
            }
            abi::TIO_MMIO_ZAP if ok => {
                let range = MmioRange::from_raw(word(0x08), word(0x10))
                    .unwrap_or_else(|e| fail(format!("zap of a bad range ({e:?}): {what}")));
                self.host_may_touch(&range, after, what);
            }
            abi::TIO_TDI_INFO | abi::TIO_ASID_FENCE_STATUS | abi::TIO_TDI_REPORT => {
                let same =
                    before.core == after.core
                        && before.rmp == after.rmp
                        && before.guests == after.guests
                        && before.devices == after.devices
                        && before.tdisp == after.tdisp
                        && before.tdis.iter().zip(&after.tdis).all(|(a, b)| {
                            TdiCtx { reports: 0, ..*a } == TdiCtx { reports: 0, ..*b }
                        })
                        && before.tdis.len() == after.tdis.len();
                if !same {
                    fail(format!("a read-only command changed state: {what}"));
                }
            }
            abi::TIO_TDI_UNBIND if ok => {
                let Some(ctx) = after.tdis.iter().find(|t| t.sla == word(0x30)) else {
                    return;
                };
                let rec = after
                    .core
                    .tdis
                    .get(usize::from(ctx.tdi.slot()))
                    .cloned()
                    .flatten();
                if rec.map(|r| (r.state, r.exchange.is_some())) != Some((TdiState::Unbound, false))
                    || after.core.owners.iter().any(|r| r.tdi == ctx.tdi)
                    || ctx.guest_device_id != 0
                    || rec.is_some_and(|r| r.dma.is_some())
                    || after.sdtes.iter().any(|e| e.iface == ctx.iface)
                {
                    fail(format!("unbind done, TDI {rec:?} {ctx:?}: {what}"));
                }
                if std::mem::take(&mut self.reached[usize::from(ctx.tdi.slot())]) {
                    self.stats.dma_unbound = true;
                }
                let was = before
                    .core
                    .tdis
                    .get(usize::from(ctx.tdi.slot()))
                    .cloned()
                    .flatten();
                if was.is_some_and(|r| r.state.is_bound()) {
                    self.stats.unbound = true;
                }
            }
            abi::TIO_GUEST_REQUEST if ok => {
                let at = output.map_or(0, |(at, _)| at);
                self.answered(buf, at, call, waiting, before, after, what);
            }
            abi::TIO_TDI_RECLAIM if ok => {
                let ctx = before.tdis.iter().find(|t| t.sla == word(0x10));
                if let Some(ctx) = ctx
                    && before.sdtes.iter().any(|e| e.iface == ctx.iface)
                {
                    fail(format!(
                        "TIO_TDI_RECLAIM succeeded while the TDI's sDTE remained: {what}"
                    ));
                }
            }
            abi::TIO_TDI_BIND if ok => {
                // Only the device's last answer binds.
                let rec = call.tdi().and_then(|t| {
                    after
                        .core
                        .tdis
                        .get(usize::from(t.slot()))
                        .cloned()
                        .flatten()
                });
                match (call, waiting, rec) {
                    (Call::Respond(_), Some(DeviceOp::Bind { guest, .. }), Some(r))
                        if r.state == (TdiState::Locked { owner: guest }) => {}
                    _ => fail(format!("bind done, TDI {rec:?}: {what}")),
                }
            }
            _ => {}
        }
    }

    /// A guest message that the firmware answered: refused inside its answer, it changed
    /// nothing but the response page (exemption 2 for a start the device refused). An SDTE
    /// write answered SDTE_WRITE_SUCCESS either accepted a pending entry (the entry now valid,
    /// the guest's, pointed at its ASID, with the guest's bits as written and the firmware's
    /// fields from the bind kept; the core's context active) or changed nothing but the
    /// response page (an invalidation of an entry never valid, a valid entry's own bits again).
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &mut self,
        buf: &[u8],
        res: u64,
        call: Call,
        waiting: Option<DeviceOp>,
        before: &State,
        after: &State,
        what: &str,
    ) {
        let off = usize::try_from(res.wrapping_sub(MEM)).unwrap_or(usize::MAX);
        if off
            .checked_add(MAX_RESPONSE)
            .is_none_or(|end| end > after.mem.len())
        {
            fail(format!("a guest request answered outside memory: {what}"));
        }
        let mut hdr = MsgHeader::new_zeroed();
        hdr.as_mut_bytes()
            .copy_from_slice(&after.mem[off..off + usize::from(msg::HDR_SIZE)]);
        let body = &after.mem[off + 0x60..off + 0x60 + msg::MAX_BODY];
        let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
        let (status, detail, tdi) = match hdr.msg_type {
            msg::MSG_TDI_START_RSP => (u16_at(2), u16_at(4), true),
            msg::MSG_MMIO_VALIDATE_RSP => (u16_at(2), 0, false),
            // TDI_INFO changes nothing in any case: checked like a refusal, not counted.
            msg::MSG_TDI_INFO_RSP => (u16::MAX, 0, false),
            msg::MSG_SDTE_WRITE_RSP => (u16_at(2), 0, false),
            msg::MSG_TDI_RUN_RSP => (u16_at(2), 0, false),
            t => fail(format!("a guest request answered type {t}: {what}")),
        };
        if hdr.msg_type == msg::MSG_MMIO_VALIDATE_RSP && status == 0 {
            self.stats.validated = true;
        }
        let page = off..off + MAX_RESPONSE;
        if hdr.msg_type == msg::MSG_SDTE_WRITE_RSP && status == 0 {
            self.stats.sdte_written += 1;
            if let Some(e) = self.sdte_accepted(buf, before, after) {
                fail(format!("an SDTE write answered success: {e}: {what}"));
            }
            return;
        }
        if status == 0 {
            return;
        }
        if status != u16::MAX {
            self.stats.refused_in_answer += 1;
        }
        let exempt = match (tdi, Error::from_code(detail)) {
            // The TDI the request named (its context, read before the call).
            (true, Some(e)) => exemption(call, Err(Some(e)), waiting),
            _ => Exempt::Nothing,
        };
        if let (true, Call::Respond(t)) = (tdi, call) {
            let rec = after
                .core
                .tdis
                .get(usize::from(t.slot()))
                .cloned()
                .flatten();
            if let Err(e) = crate::exempt::ended(waiting, Error::from_code(detail), rec.as_ref()) {
                fail(format!("{e}: {what}"));
            }
        }
        if let Err(e) = diff(before, after, exempt, Some(page)) {
            fail(format!(
                "a guest message refused in its answer changed state: {e}: {what}"
            ));
        }
    }

    /// What is wrong with an SDTE write answered SDTE_WRITE_SUCCESS (`buf` its command), if
    /// anything (see [`World::answered`]).
    fn sdte_accepted(&self, buf: &[u8], before: &State, after: &State) -> Option<String> {
        let word = |at: usize| {
            buf.get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let req = abi::strip_c_bit(word(0x40));
        let body = usize::try_from(req.wrapping_sub(MEM))
            .ok()
            .and_then(|o| o.checked_add(usize::from(msg::HDR_SIZE)))
            .and_then(|o| {
                before
                    .mem
                    .get(o..o.checked_add(size_of::<msg::SdteWriteReq>())?)
            })
            .and_then(|b| msg::SdteWriteReq::read_from_bytes(b).ok());
        let (Some(r), Some(ctx), Some(g)) = (
            body,
            before.tdis.iter().find(|t| t.sla == word(0x30)),
            before
                .guests
                .iter()
                .find(|g| g.gctx == abi::strip_c_bit(word(0x38))),
        ) else {
            return Some("no request, TDI or guest".into());
        };
        let of = |s: &State| s.sdtes.iter().find(|e| e.iface == ctx.iface).copied();
        let (b, a) = (of(before), of(after));
        let accepts = r.sdte.valid() && b.is_some_and(|b| b.state == DmaState::Pending);
        if !accepts {
            return diff(
                before,
                after,
                Exempt::Nothing,
                Some(self.response_window(word(0x48))),
            )
            .err()
            .map(|e| format!("changed state: {e}"));
        }
        let (Some(b), Some(a)) = (b, a) else {
            return Some("the sDTE is gone".into());
        };
        let record = after
            .core
            .tdis
            .get(usize::from(ctx.tdi.slot()))
            .and_then(Option::as_ref);
        let ok = a.state == DmaState::Active
            && a.guest == g.guest
            && a.sdte.valid()
            && g.asid != 0
            && a.sdte.asid() == g.asid
            && a.sdte.guest_part() == r.sdte.guest_part()
            && (a.sdte.guest_device_id(), a.sdte.ide_stream_id())
                == (b.sdte.guest_device_id(), b.sdte.ide_stream_id())
            && record.is_some_and(|rec| rec.dma == Some(DmaState::Active));
        (!ok).then(|| format!("accepted as {a:?} from {b:?}, record {record:?}"))
    }

    /// The bytes of memory a guest request's answer at `res` may write.
    fn response_window(&self, res: u64) -> core::ops::Range<usize> {
        let off = usize::try_from(abi::strip_c_bit(res).wrapping_sub(MEM)).unwrap_or(usize::MAX);
        off..off.saturating_add(MAX_RESPONSE)
    }

    /// Trusted DMA after every command ([`common::dma_oracle`]): a TDI's DMA reaches a guest's
    /// private memory only through the sDTE of its interface, the guest's, active, valid and
    /// naming the guest's ASID.
    fn dma_oracle(&mut self, after: &State, what: &str) {
        let sev = &self.sev;
        let reach = |t| sev.tsm().dma_reach(t);
        if common::dma_oracle(&after.core, &Sdtes(after), reach, &mut self.reached, what) {
            self.stats.dma_private = true;
        }
    }

    /// A host request that was allowed touches no private owned page and no leaf.
    fn host_may_touch(&self, range: &MmioRange, after: &State, what: &str) {
        if let Some(r) = after.core.owners.overlapping_private(range) {
            fail(format!("the host may touch {r:?}: {what}"));
        }
        if let Some(l) = self
            .leaves()
            .iter()
            .find(|l| l.host_range().is_ok_and(|r| r.overlaps(range)))
        {
            fail(format!("the host may touch leaf {l:?}: {what}"));
        }
    }

    fn record(&mut self, after: &State) {
        for t in after.core.tdis.iter().flatten() {
            match t.state {
                TdiState::Unbound => {}
                TdiState::Locked { .. } => self.stats.locked = true,
                TdiState::Run { .. } => self.stats.run = true,
                TdiState::Error { .. } => self.stats.error = true,
                TdiState::Unbinding { .. } => self.stats.unbinding = true,
            }
        }
        let n = after
            .rmp
            .iter()
            .filter(|e| RmpEntry::from_bits(**e).assigned())
            .count();
        self.stats.max_pages = self.stats.max_pages.max(n);
    }

    /// TIO_TDI_UNBIND, relayed to the end, until it does not ask to resume: the last outcome.
    fn unbind_all(&mut self, c: abi::TdiUnbind) -> Outcome {
        let mut o = Outcome::SUCCESS;
        for _ in 0..40 {
            o = self.relayed(
                abi::TIO_TDI_UNBIND,
                c.as_bytes(),
                [Mut::Keep; 2],
                Relay::Drive,
            );
            if o.status != SevStatus::RESUME_REQUIRED {
                break;
            }
        }
        o
    }

    /// Every TDI can be unbound once the host cooperates: fences completed, the device
    /// behaving.
    fn finish(&mut self) {
        for g in self.sev.guests().to_vec() {
            let _ = self
                .sev
                .tsm()
                .with_table(|r| r.hold_fences_of(g.guest, false));
        }
        for t in self.sev.tdis().to_vec() {
            let Ok(rec) = self.sev.tsm().tdi(t.tdi) else {
                fail(format!("context of no TDI: {t:?}"));
            };
            self.device.link_mut().set_misbehaviour(t.iface, None);
            let owner = rec.state.owner().and_then(|o| {
                self.sev
                    .guests()
                    .iter()
                    .find(|g| g.guest == o)
                    .map(|g| g.gctx)
            });
            let mut c = abi::TdiUnbind::new_zeroed();
            c.length = len::<abi::TdiUnbind>().into();
            c.spdm_ctrl = spdm_ctrl();
            c.dev_ctx = t.dev_sla.into();
            c.tdi_ctx = t.sla.into();
            c.gctx_paddr = owner.unwrap_or(GCTX).into();
            let mut o = self.unbind_all(c);
            // A STOP the device answered while it misbehaved (an answer the host lost, which
            // the device gives again to the same request) ends that exchange as the device's
            // failure; the host calls again, and the next STOP is a new request.
            if matches!(
                Error::from_code(o.detail),
                Some(Error::DeviceMalformed | Error::DeviceRefused | Error::DeviceUnresponsive)
            ) {
                o = self.unbind_all(c);
            }
            let after = self.sev.tsm().tdi(t.tdi);
            if o != Outcome::SUCCESS
                || after.is_ok_and(|r| r.state != TdiState::Unbound || r.exchange.is_some())
            {
                fail(format!(
                    "TDI {t:?} ({:?}) did not unbind: {o:?}, now {after:?}",
                    rec.state
                ));
            }
        }
    }

    fn iface_of(&self, t: u8) -> RequesterId {
        self.sev
            .tdi_ctx(tdi_sla(t))
            .map_or_else(|| rid(3, 0), |c| c.iface)
    }

    fn step(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::GctxCreate { g, m } => {
                self.issue(abi::SNP_GCTX_CREATE, gctx_create(g).as_bytes(), m);
            }
            Cmd::Activate { g, asid, m } => {
                let c = activate(g, u32::from(asid % 1030));
                self.issue(abi::SNP_ACTIVATE, c.as_bytes(), m);
            }
            Cmd::Decommission { g, m } => {
                let c = abi::Decommission {
                    gctx_paddr: gctx(g).into(),
                };
                self.issue(abi::SNP_DECOMMISSION, c.as_bytes(), m);
            }
            Cmd::DevCreate { d, cfg, m } => {
                self.issue(abi::TIO_DEV_CREATE, dev_create(d, cfg).as_bytes(), m);
            }
            Cmd::DevReclaim { d, m } => {
                let mut c = abi::DevReclaim::new_zeroed();
                c.length = len::<abi::DevReclaim>().into();
                c.dev_ctx = dev_sla(d).into();
                self.issue(abi::TIO_DEV_RECLAIM, c.as_bytes(), m);
            }
            Cmd::DevConnect { d, m } => {
                self.issue(abi::TIO_DEV_CONNECT, dev_connect(d).as_bytes(), m);
            }
            Cmd::DevDisconnect { d, force, m } => {
                let mut c = abi::DevDisconnect::new_zeroed();
                c.length = len::<abi::DevDisconnect>().into();
                c.dev_ctx = dev_sla(d).into();
                c.flags = u32::from(force).into();
                self.issue(abi::TIO_DEV_DISCONNECT, c.as_bytes(), m);
            }
            Cmd::TdiCreate { d, t, bus, func, m } => {
                let c = tdi_create(d, t, 3 + bus % 4, func % 9);
                self.issue(abi::TIO_TDI_CREATE, c.as_bytes(), m);
            }
            Cmd::TdiReclaim { d, t, m } => {
                let mut c = abi::TdiReclaim::new_zeroed();
                c.length = len::<abi::TdiReclaim>().into();
                c.dev_ctx = dev_sla(d).into();
                c.tdi_ctx = tdi_sla(t).into();
                self.issue(abi::TIO_TDI_RECLAIM, c.as_bytes(), m);
            }
            Cmd::TdiBind {
                d,
                t,
                g,
                gdev,
                m,
                relay,
            } => {
                let c = tdi_bind(d, t, g, gdev);
                self.relayed(abi::TIO_TDI_BIND, c.as_bytes(), m, relay);
            }
            Cmd::TdiUnbind {
                d,
                t,
                g,
                force,
                m,
                relay,
            } => {
                let mut c = tdi_unbind(d, t, g);
                if force {
                    c.flags = abi::FLAG_FORCE.into();
                }
                self.relayed(abi::TIO_TDI_UNBIND, c.as_bytes(), m, relay);
            }
            Cmd::TdiUnbindAll { d, t, g } => {
                self.unbind_all(tdi_unbind(d, t, g));
            }
            Cmd::TdiReport { d, t, g, out, m } => {
                let mut c = abi::TdiReport::new_zeroed();
                c.length = len::<abi::TdiReport>().into();
                // An SLA of a 4K data page is the page's address (PFN in bits 51:12); an
                // address past 2^52 sets reserved bits, which the firmware must refuse.
                c.spdm_ctrl.output = (out_addr(out, MEM + 0x3000) & !0xfff).into();
                c.dev_ctx = dev_sla(d).into();
                c.tdi_ctx = tdi_sla(t).into();
                c.gctx_paddr = gctx(g).into();
                self.issue(abi::TIO_TDI_REPORT, c.as_bytes(), m);
            }
            Cmd::TdiStatus {
                d,
                t,
                out,
                m,
                relay,
            } => {
                let mut c = abi::TdiStatus::new_zeroed();
                c.length = len::<abi::TdiStatus>().into();
                c.spdm_ctrl = spdm_ctrl();
                c.dev_ctx = dev_sla(d).into();
                c.tdi_ctx = tdi_sla(t).into();
                c.status_paddr = out_addr(out, MEM).into();
                self.relayed(abi::TIO_TDI_STATUS, c.as_bytes(), m, relay);
            }
            Cmd::TdiInfo { d, t, out, m } => {
                let mut c = abi::TdiInfo::new_zeroed();
                c.length = len::<abi::TdiInfo>().into();
                c.dev_ctx = dev_sla(d).into();
                c.tdi_ctx = tdi_sla(t).into();
                c.status_paddr = out_addr(out, MEM).into();
                self.issue(abi::TIO_TDI_INFO, c.as_bytes(), m);
            }
            Cmd::TdiError { d, t, m } => {
                let mut c = abi::TdiError::new_zeroed();
                c.length = len::<abi::TdiError>().into();
                c.dev_ctx = dev_sla(d).into();
                c.tdi_ctx = tdi_sla(t).into();
                self.issue(abi::TIO_TDI_ERROR, c.as_bytes(), m);
            }
            Cmd::FenceClear { d, g, m } => {
                let mut c = abi::AsidFenceClear::new_zeroed();
                c.length = len::<abi::AsidFenceClear>().into();
                c.dev_ctx = dev_sla(d).into();
                c.gctx_paddr = gctx(g).into();
                self.issue(abi::TIO_ASID_FENCE_CLEAR, c.as_bytes(), m);
            }
            Cmd::FenceStatus { d, asid, out, m } => {
                let mut c = abi::AsidFenceStatus::new_zeroed();
                c.length = len::<abi::AsidFenceStatus>().into();
                c.dev_ctx = dev_sla(d).into();
                c.asid = [5u32, 6, 0, 7, 1023, 1024, u32::MAX, 5][usize::from(asid % 8)].into();
                c.status_pa = out_addr(out, MEM).into();
                self.issue(abi::TIO_ASID_FENCE_STATUS, c.as_bytes(), m);
            }
            Cmd::MmioMap {
                t,
                g,
                gpa,
                hpa,
                size,
                m,
            } => {
                let c = mmio_map(t, g, gpa_pick(gpa), hpa_pick(hpa), size % 4);
                self.issue(abi::TIO_MMIO_MAP, c.as_bytes(), m);
            }
            Cmd::MmioBlock { g, gpa, size, m } => {
                let mut c = abi::MmioBlock::new_zeroed();
                c.length = len::<abi::MmioBlock>().into();
                c.gctx_paddr = gctx(g).into();
                c.gpa = gpa_pick(gpa).into();
                c.page_size = size % 4;
                self.issue(abi::TIO_MMIO_BLOCK, c.as_bytes(), m);
            }
            Cmd::MmioUnmap { g, gpa, size, m } => {
                let mut c = abi::MmioUnmap::new_zeroed();
                c.length = len::<abi::MmioUnmap>().into();
                c.gctx_paddr = gctx(g).into();
                c.gpa = gpa_pick(gpa).into();
                c.page_size = size % 4;
                self.issue(abi::TIO_MMIO_UNMAP, c.as_bytes(), m);
            }
            Cmd::MmioZap { base, pages, m } => {
                let mut c = abi::MmioZap::new_zeroed();
                c.length = len::<abi::MmioZap>().into();
                c.base = hpa_pick(base).into();
                c.pages =
                    [1u64, 16, 512, 1024, 0, u64::MAX, 0x1_0000, 2][usize::from(pages % 8)].into();
                self.issue(abi::TIO_MMIO_ZAP, c.as_bytes(), m);
            }
            Cmd::Guest {
                d,
                t,
                g,
                msg,
                hdr,
                req,
                res,
                m,
                relay,
            } => {
                self.put_msg(msg, hdr);
                let req =
                    [MEM + 0x1000, UNMAPPED, MEM + 0x1008, MEM + 0x2000][usize::from(req % 4)];
                let c = guest_request(d, t, g, req, out_addr(res, MEM + 0x2000));
                self.relayed(abi::TIO_GUEST_REQUEST, c.as_bytes(), m, relay);
            }
            Cmd::Continue {
                k,
                answer,
                resp,
                from_page,
                m,
            } => {
                let n = self.saved.len();
                let Some((id, buf)) = n
                    .checked_sub(1 + usize::from(k) % n.max(1))
                    .and_then(|i| self.saved.get(i))
                    .cloned()
                else {
                    return;
                };
                self.put_answer(&buf, answer, resp, from_page);
                self.issue(id, &buf, m);
            }
            Cmd::Device { t, action } => {
                let iface = self.iface_of(t);
                let d = &mut self.device;
                match action {
                    DevAction::Misbehave { how } => {
                        d.link_mut()
                            .set_misbehaviour(iface, common::misbehaviour(how));
                    }
                    DevAction::Behave => d.link_mut().set_misbehaviour(iface, None),
                    DevAction::Disturb => d.event(iface, DeviceEvent::Disturb),
                    DevAction::Reset => d.event(iface, DeviceEvent::ConventionalReset),
                }
            }
            Cmd::HoldFences { g, hold } => {
                if let Some(c) = self.sev.guest_ctx(gctx(g)) {
                    let _ = self
                        .sev
                        .tsm()
                        .with_table(|r| r.hold_fences_of(c.guest, hold));
                }
            }
            Cmd::SetReport { t, report } => {
                let iface = self.iface_of(t);
                let bars = CONFIG
                    .get(usize::from(iface.bus().wrapping_sub(3)))
                    .copied()
                    .unwrap_or(CONFIG[0]);
                let (b0, p0) = bars[0];
                let p = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                let wire: Vec<WireMmioRange> = match report {
                    SevReport::Whole => vec![wire_range(b0, p(p0), 0, 0)],
                    SevReport::Outside => vec![wire_range(b0 + p0 * 0x1000, 16, 0, 0)],
                    SevReport::Overlap => {
                        vec![wire_range(b0, 16, 0, 0), wire_range(b0 + 0x8000, 16, 0, 1)]
                    }
                    SevReport::TooMany => (0..17u16)
                        .map(|i| wire_range(b0 + u64::from(i) * 0x1000, 1, 0, i))
                        .collect(),
                    SevReport::Shared => vec![wire_range(b0, p(p0), RANGE_ATTR_NON_TEE, 0)],
                    SevReport::Foreign => vec![wire_range(BAR + 0x30_0000, 16, 0, 0)],
                    SevReport::Raw { first, pages, attr } => {
                        vec![wire_range(first, pages, attr, 0)]
                    }
                };
                self.device.link_mut().set_report(iface, &wire);
            }
            Cmd::HostRmp {
                page,
                assign,
                psmash,
            } => {
                let hpa = RMP_BASE + u64::from(page % RMP_PAGES as u16) * 0x1000;
                let before = self.state();
                let r = if psmash {
                    self.sev.host_psmash(hpa & !0x1f_ffff)
                } else {
                    let update = RmpUpdate {
                        assigned: assign,
                        asid: 5,
                        gpa: GPA + u64::from(page) * 0x1000,
                        page_size: false,
                    };
                    self.sev.host_rmpupdate(hpa, update)
                };
                let after = self.state();
                let what = format!("host RMP {hpa:#x} assign {assign} psmash {psmash} -> {r:?}");
                common::invariants(self.sev.tsm(), &what);
                match r {
                    Err(_) => {
                        if let Err(e) = diff(&before, &after, Exempt::Nothing, None) {
                            fail(format!("refused {what} changed state: {e}"));
                        }
                    }
                    Ok(()) => {
                        let pages = if psmash { 512 } else { 1 };
                        let base = if psmash { hpa & !0x1f_ffff } else { hpa };
                        let range = MmioRange::from_raw(base, pages).unwrap_or_else(|e| fail(e));
                        self.host_may_touch(&range, &after, &what);
                    }
                }
            }
            Cmd::Raw { id, len, words } => {
                let mut bytes = [0u8; 0x60];
                for (chunk, w) in bytes.chunks_mut(8).zip(words) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                let id = if id & 0x8000 != 0 {
                    abi::IMPLEMENTED[usize::from(id) % abi::IMPLEMENTED.len()]
                } else {
                    u32::from(id)
                };
                let n = usize::from(len) % 0x60;
                self.issue(id, &bytes[..n], [Mut::Keep; 2]);
            }
            Cmd::TioStatus { out, m } => {
                let c = abi::TioStatus {
                    length: len::<abi::TioStatus>().into(),
                    reserved: [0; 4],
                    status_paddr: out_addr(out, TIO_STATUS_PAGE).into(),
                };
                self.issue(abi::TIO_STATUS, c.as_bytes(), m);
            }
            Cmd::TioInit { m } => {
                let mut c = abi::TioInit::new_zeroed();
                c.length = len::<abi::TioInit>().into();
                self.issue(abi::TIO_INIT, c.as_bytes(), m);
            }
        }
    }
}

/// The sDTE Linux's guest writes (`tio.c` of the SEV-TIO guest patch): V, IR, IW, VMPL 0,
/// vTOM_EN and vTOM 0x7fff_ffff (2 MiB units).
pub fn linux_sdte() -> Sdte {
    let mut s = Sdte::default();
    s.q[0] = (sdte::Q0_V | sdte::Q0_IR | sdte::Q0_IW).into();
    s.q[5] = (sdte::Q5_VTOM_EN | 0x7fff_ffff << 1).into();
    s
}

/// The `(qword, bit)` pairs of the entry a guest may set (`want` true) or may not.
fn entry_bits(want: bool) -> impl Iterator<Item = (usize, u32)> {
    sdte::GUEST_BITS
        .into_iter()
        .enumerate()
        .flat_map(move |(q, mask)| {
            (0..64)
                .filter(move |b| (mask >> b & 1 != 0) == want)
                .map(move |b| (q, b))
        })
}

/// Where the sDTE's VMPL field starts (qword 3).
const VMPL_SHIFT: u32 = sdte::Q3_VMPL.trailing_zeros();

/// The entry of an SDTE write and the VMPCK it is sent under.
fn sdte_of(m: SdteMut) -> (Sdte, u8) {
    let mut s = linux_sdte();
    let toggle = |s: &mut Sdte, (q, b): (usize, u32)| s.q[q] = (s.q[q].get() ^ 1 << b).into();
    let pick = |want: bool, i: usize| {
        let n = entry_bits(want).count();
        entry_bits(want).nth(i % n.max(1))
    };
    let mut vmpck = 0;
    match m {
        SdteMut::Linux | SdteMut::BodyReserved { .. } => {}
        SdteMut::Vmpl { vmpl } => s.q[3] = (u64::from(vmpl % 4) << VMPL_SHIFT).into(),
        SdteMut::Flip { bit } => {
            if let Some(at) = pick(true, usize::from(bit)) {
                toggle(&mut s, at);
            }
        }
        SdteMut::Reserved { bit } => {
            if let Some(at) = pick(false, usize::from(bit)) {
                toggle(&mut s, at);
            }
        }
        SdteMut::Invalidate => s.q[0] = (s.q[0].get() & !sdte::Q0_V).into(),
        SdteMut::BelowSender { k } => {
            vmpck = 1 + k % 3;
            s.q[3] = (u64::from(k / 3 % vmpck) << VMPL_SHIFT).into();
        }
        SdteMut::Raw { q0, q3, q5 } => {
            s = Sdte::default();
            (s.q[0], s.q[3], s.q[5]) = (q0.into(), q3.into(), q5.into());
        }
    }
    (s, vmpck)
}

/// Writes `val` into the `w` bytes at `at` of `buf` (nothing past its end).
fn put(buf: &mut [u8], at: usize, w: usize, val: Val) {
    let Some(field) = buf.get_mut(at..at + w) else {
        return;
    };
    let mut x = [0u8; 8];
    x[..w].copy_from_slice(field);
    let old = u64::from_le_bytes(x);
    let v = match val {
        Val::Zero => 0,
        Val::Ones => u64::MAX,
        Val::Bit { bit } => old ^ 1 << (u32::from(bit) % (8 * w as u32)),
        Val::Addr { which } => interesting(which, old),
        Val::Small { v } => u64::from(v),
        Val::Raw { v } => v,
        Val::Ctx { k } => match k % 3 {
            0 => gctx(k / 3),
            1 => dev_sla(k / 3),
            _ => tdi_sla(k / 3),
        },
    };
    field.copy_from_slice(&v.to_le_bytes()[..w]);
}

/// Every field of a command's buffer, `(offset, width)`, from the layouts in
/// `platform_sev::abi` (reserved runs wider than 8 bytes split); 8-byte words for an ID we do
/// not implement.
fn fields(id: abi::CommandId) -> &'static [(u8, u8)] {
    // TIO_STATUS: length, reserved, status_paddr; TIO_INIT: length, reserved[12].
    static TIO: [(u8, u8); 3] = [(0, 4), (4, 4), (0x08, 8)];
    const SPDM: [(u8, u8); 4] = [(0x08, 8), (0x10, 8), (0x18, 8), (0x20, 8)];
    // Our form with the BAR list (`abi::DevCreateBars`): Linux's 0x20 bytes, then bar_list.
    static DEV_CREATE: [(u8, u8); 10] = [
        (0, 4),
        (4, 4),
        (0x08, 8),
        (0x10, 2),
        (0x12, 2),
        (0x14, 1),
        (0x15, 1),
        (0x16, 2),
        (0x18, 8),
        (0x20, 8),
    ];
    static DEV_RECLAIM: [(u8, u8); 3] = [(0, 4), (4, 4), (0x08, 8)];
    static DEV_CONNECT: [(u8, u8); 14] = [
        (0, 4),
        (4, 4),
        SPDM[0],
        SPDM[1],
        SPDM[2],
        SPDM[3],
        (0x28, 8),
        (0x30, 8),
        (0x38, 1),
        (0x39, 1),
        (0x3a, 2),
        (0x3c, 4),
        (0x40, 8),
        (0x48, 8),
    ];
    static DEV_DISCONNECT: [(u8, u8); 7] = [
        (0, 4),
        (4, 4),
        SPDM[0],
        SPDM[1],
        SPDM[2],
        SPDM[3],
        (0x28, 8),
    ];
    static TDI_CREATE: [(u8, u8); 8] = [
        (0, 4),
        (4, 4),
        (0x08, 8),
        (0x10, 8),
        (0x18, 4),
        (0x1c, 8),
        (0x24, 4),
        (0x28, 8),
    ];
    static TDI_RECLAIM: [(u8, u8); 5] = [(0, 4), (4, 4), (0x08, 8), (0x10, 8), (0x18, 8)];
    static TDI_BIND: [(u8, u8); 14] = [
        (0, 4),
        (4, 4),
        SPDM[0],
        SPDM[1],
        SPDM[2],
        SPDM[3],
        (0x28, 8),
        (0x30, 8),
        (0x38, 8),
        (0x40, 2),
        (0x42, 2),
        (0x44, 2),
        (0x46, 2),
        (0x48, 8),
    ];
    // TDI_UNBIND, TDI_REPORT, TDI_STATUS: length, flags or reserved, SPDM, three words.
    static TDI_0X40: [(u8, u8); 9] = [
        (0, 4),
        (4, 4),
        SPDM[0],
        SPDM[1],
        SPDM[2],
        SPDM[3],
        (0x28, 8),
        (0x30, 8),
        (0x38, 8),
    ];
    static GUEST_REQUEST: [(u8, u8); 11] = [
        (0, 4),
        (4, 4),
        SPDM[0],
        SPDM[1],
        SPDM[2],
        SPDM[3],
        (0x28, 8),
        (0x30, 8),
        (0x38, 8),
        (0x40, 8),
        (0x48, 8),
    ];
    static FENCE_CLEAR: [(u8, u8); 5] = [(0, 4), (4, 4), (0x08, 8), (0x10, 8), (0x18, 8)];
    static FENCE_STATUS: [(u8, u8); 6] =
        [(0, 4), (4, 4), (0x08, 8), (0x10, 4), (0x14, 8), (0x1c, 4)];
    static TDI_INFO: [(u8, u8); 7] = [
        (0, 4),
        (4, 4),
        (0x08, 8),
        (0x10, 8),
        (0x18, 8),
        (0x20, 8),
        (0x28, 8),
    ];
    static MMIO_MAP: [(u8, u8); 9] = [
        (0, 4),
        (4, 4),
        (0x08, 8),
        (0x10, 8),
        (0x18, 8),
        (0x20, 8),
        (0x28, 1),
        (0x29, 1),
        (0x2c, 4),
    ];
    static MMIO_BLOCK: [(u8, u8); 7] = [
        (0, 4),
        (4, 4),
        (0x08, 8),
        (0x10, 8),
        (0x18, 1),
        (0x19, 1),
        (0x1c, 4),
    ];
    static FOUR_WORDS: [(u8, u8); 4] = [(0, 4), (4, 4), (0x08, 8), (0x10, 8)];
    static GCTX: [(u8, u8); 1] = [(0, 8)];
    static ACTIVATE: [(u8, u8); 2] = [(0, 8), (8, 4)];
    static WORDS: [(u8, u8); 12] = [
        (0, 8),
        (8, 8),
        (0x10, 8),
        (0x18, 8),
        (0x20, 8),
        (0x28, 8),
        (0x30, 8),
        (0x38, 8),
        (0x40, 8),
        (0x48, 8),
        (0x50, 8),
        (0x58, 8),
    ];
    match id {
        abi::TIO_DEV_CREATE => &DEV_CREATE,
        abi::TIO_DEV_RECLAIM => &DEV_RECLAIM,
        abi::TIO_DEV_CONNECT => &DEV_CONNECT,
        abi::TIO_DEV_DISCONNECT => &DEV_DISCONNECT,
        abi::TIO_TDI_CREATE => &TDI_CREATE,
        abi::TIO_TDI_RECLAIM => &TDI_RECLAIM,
        abi::TIO_TDI_BIND => &TDI_BIND,
        abi::TIO_TDI_UNBIND | abi::TIO_TDI_REPORT | abi::TIO_TDI_STATUS => &TDI_0X40,
        abi::TIO_GUEST_REQUEST => &GUEST_REQUEST,
        abi::TIO_ASID_FENCE_CLEAR => &FENCE_CLEAR,
        abi::TIO_ASID_FENCE_STATUS => &FENCE_STATUS,
        abi::TIO_TDI_INFO => &TDI_INFO,
        abi::TIO_MMIO_MAP => &MMIO_MAP,
        abi::TIO_MMIO_BLOCK | abi::TIO_MMIO_UNMAP => &MMIO_BLOCK,
        abi::TIO_MMIO_ZAP | abi::TIO_TDI_ERROR => &FOUR_WORDS,
        abi::SNP_GCTX_CREATE | abi::SNP_DECOMMISSION => &GCTX,
        abi::SNP_ACTIVATE => &ACTIVATE,
        abi::TIO_STATUS | abi::TIO_INIT => &TIO,
        _ => &WORDS,
    }
}

fn gpa_pick(k: u8) -> u64 {
    [
        GPA,
        GPA + 0x20_0000,
        GPA + 0x40_0000,
        GPA + 0x1000,
        GPA_MANY,
        GPA_MANY + 0x1000,
        1 << 52,
        GPA + 0x4000_0000,
    ][usize::from(k % 8)]
}

fn hpa_pick(k: u8) -> u64 {
    [
        BAR,
        BAR + 0x20_0000,
        BAR + 0x21_0000,
        BAR + 0x30_0000,
        BAR + 0x1000,
        0x8040_0000,
        MEM,
        0x9000_0000,
    ][usize::from(k % 8)]
}

/// Parts of two states that differ beyond what `exempt` allows; `page` is a memory range that
/// may change (the request buffer of a relay, the response page of a guest message refused in
/// its answer).
fn diff(
    before: &State,
    after: &State,
    exempt: Exempt,
    page: Option<core::ops::Range<usize>>,
) -> Result<(), String> {
    let mut parts = Vec::new();
    if let Err(e) = core_diff(&before.core, &after.core, exempt) {
        parts.push(e);
    }
    if exempt == Exempt::Nothing {
        if let Some(i) = changed_outside(&before.rmp, &after.rmp, None) {
            parts.push(format!(
                "RMP entry {i}: {:?} -> {:?}",
                RmpEntry::from_bits(before.rmp[i]),
                RmpEntry::from_bits(after.rmp[i])
            ));
        }
    } else if let Err(e) = exempt_table(before, after, exempt) {
        parts.push(e);
    }
    if (&before.guests, &before.devices, &before.tdis)
        != (&after.guests, &after.devices, &after.tdis)
    {
        parts.push(format!(
            "contexts {:?} {:?} {:?} -> {:?} {:?} {:?}",
            before.guests, before.devices, before.tdis, after.guests, after.devices, after.tdis
        ));
    }
    if let Err(e) = sdtes_diff(before, after, exempt) {
        parts.push(e);
    }
    if let Some(i) = changed_outside(&before.mem, &after.mem, page) {
        parts.push(format!("memory at {:#x}", MEM + i as u64));
    }
    if parts.is_empty() {
        Ok(())
    } else {
        Err(parts.join("; "))
    }
}

/// The secure device table under `exempt`: every sDTE as it was but the exempt TDI's, which
/// may be blocked (V, IR and IW cleared, its state past Pending or Active, the fence count
/// noted) where the exemption blocks its leaves ([`Exempt::blocks`]: "The context is blocked
/// where the MMIO is", README, Trusted DMA), go on through its invalidation, and be removed
/// where the exemption removes them ([`Exempt::removes`]: the unbind's Dma step).
fn sdtes_diff(before: &State, after: &State, exempt: Exempt) -> Result<(), String> {
    if before.sdtes == after.sdtes {
        return Ok(());
    }
    let iface = exempt
        .tdi()
        .and_then(|t| {
            before
                .core
                .tdis
                .get(usize::from(t.slot()))
                .cloned()
                .flatten()
        })
        .map(|r| r.iface);
    let mine = |e: &&SdteSlot| Some(e.iface) == iface;
    let others =
        |s: &State| -> Vec<SdteSlot> { s.sdtes.iter().filter(|e| !mine(e)).copied().collect() };
    if others(before) != others(after) {
        return Err(format!(
            "sDTEs {:?} -> {:?} under {exempt:?}",
            before.sdtes, after.sdtes
        ));
    }
    let (b, a) = (
        before.sdtes.iter().find(mine).copied(),
        after.sdtes.iter().find(mine).copied(),
    );
    let blocked = |s: &Sdte| {
        let mut x = *s;
        x.q[0] = (x.q[0].get() & !(sdte::Q0_V | sdte::Q0_IR | sdte::Q0_IW)).into();
        x
    };
    // How far a context's teardown got: it never goes back.
    let rank = |s: DmaState| match s {
        DmaState::Pending | DmaState::Active => 0,
        DmaState::Blocked => 1,
        DmaState::Invalidating => 2,
        DmaState::Invalidated => 3,
    };
    let torn = |s: DmaState| rank(s) > 0;
    let ok = match (b, a) {
        (Some(b), Some(a)) => {
            exempt.blocks()
                && (a.iface, a.guest, a.translated) == (b.iface, b.guest, b.translated)
                && a.sdte == blocked(&b.sdte)
                && torn(a.state)
                && rank(a.state) >= rank(b.state)
                && (!torn(b.state) || a.blocked_at == b.blocked_at)
        }
        (Some(_), None) => exempt.removes(),
        (None, None) => true,
        (None, Some(_)) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("the TDI's sDTE {b:?} -> {a:?} under {exempt:?}"))
    }
}

/// The RMP under an exempt refusal: the leaves as [`common::leaves_diff`] allows; no entry
/// changed outside the private ranges the exempt TDI owns; every guest's ASID fence as before
/// but the TDI's owner's, which may raise one fence (and complete up to it) under
/// [`Exempt::blocks`] (the sDTE's, raised with its block) and two under [`Exempt::removes`]
/// (that one and the track's, as a forced unbind goes on in one call).
fn exempt_table(before: &State, after: &State, exempt: Exempt) -> Result<(), String> {
    common::leaves_diff(&before.core.owners, &before.leaves, &after.leaves, exempt)?;
    let Some(t) = exempt.tdi() else {
        return Ok(());
    };
    let ranges: Vec<MmioRange> = before.core.owners.private_of(t).collect();
    if before.rmp.len() != after.rmp.len() {
        return Err("RMP size".to_string());
    }
    if before.rmp != after.rmp {
        for (i, (b, a)) in before.rmp.iter().zip(&after.rmp).enumerate() {
            let hpa = Hpa::try_new(RMP_BASE + i as u64 * 0x1000);
            if b != a
                && !hpa.is_ok_and(|h| {
                    ranges
                        .iter()
                        .any(|r| r.contains_page(h, tsm_core::PageSize::Size4K))
                })
            {
                return Err(format!(
                    "RMP entry {i} outside {t:?}'s ranges: {:?} -> {:?}",
                    RmpEntry::from_bits(*b),
                    RmpEntry::from_bits(*a)
                ));
            }
        }
    }
    let owner = before
        .core
        .tdis
        .get(usize::from(t.slot()))
        .and_then(Option::as_ref)
        .and_then(|r| r.state.owner());
    let (fb, fa) = (before.core.table(), after.core.table());
    if fb.len() != fa.len() {
        return Err("fence table size".to_string());
    }
    for (g, (b, a)) in fb.iter().zip(fa).enumerate() {
        let most = if exempt.removes() {
            2
        } else if exempt.blocks() {
            1
        } else {
            0
        };
        let ok = b == a
            || (Some(GuestId::from_slot(g as u16)) == owner
                && a.asid() == b.asid()
                && b.raised() <= a.raised()
                && a.raised() - b.raised() <= most
                && b.done() <= a.done()
                && a.done() <= a.raised());
        if !ok {
            return Err(format!("guest {g}'s ASID fence {b:?} -> {a:?}"));
        }
    }
    Ok(())
}

/// The context tables name live core objects of their kind and agree with them; guest device
/// IDs are unique among one guest's bound TDIs.
fn contexts_consistent(s: &State) -> Result<(), String> {
    let live_guest = |g: GuestId| {
        s.core
            .guests
            .get(usize::from(g.slot()))
            .is_some_and(Option::is_some)
    };
    for g in &s.guests {
        if !live_guest(g.guest)
            || s.guests
                .iter()
                .filter(|x| x.gctx == g.gctx || x.guest == g.guest)
                .count()
                != 1
        {
            return Err(format!("guest context {g:?}"));
        }
    }
    for d in &s.devices {
        let dev = s
            .core
            .devices
            .get(usize::from(d.device.slot()))
            .and_then(Option::as_ref);
        if dev.is_none_or(|x| x.functions.dsm() != d.rid)
            || s.devices
                .iter()
                .filter(|x| x.sla == d.sla || x.device == d.device)
                .count()
                != 1
        {
            return Err(format!("device context {d:?}: {dev:?}"));
        }
    }
    for t in &s.tdis {
        let rec = s
            .core
            .tdis
            .get(usize::from(t.tdi.slot()))
            .and_then(Option::as_ref);
        let dev = s.devices.iter().find(|d| d.sla == t.dev_sla);
        let agrees = match (rec, dev) {
            (Some(r), Some(d)) => r.device == d.device && r.iface == t.iface,
            _ => false,
        };
        if !agrees
            || s.tdis
                .iter()
                .filter(|x| x.sla == t.sla || x.tdi == t.tdi)
                .count()
                != 1
        {
            return Err(format!("TDI context {t:?}: {rec:?}"));
        }
        let owner = rec.and_then(|r| r.state.owner());
        if owner.is_some() {
            let twins = s.tdis.iter().filter(|x| {
                x.guest_device_id == t.guest_device_id
                    && s.core
                        .tdis
                        .get(usize::from(x.tdi.slot()))
                        .and_then(Option::as_ref)
                        .and_then(|r| r.state.owner())
                        == owner
            });
            if twins.count() != 1 {
                return Err(format!(
                    "guest device ID {:#x} twice for {owner:?}",
                    t.guest_device_id
                ));
            }
        }
    }
    Ok(())
}

// ---- good buffers ---------------------------------------------------------------------------

fn gctx_create(g: u8) -> abi::GctxCreate {
    abi::GctxCreate {
        gctx_paddr: gctx(g).into(),
    }
}

fn activate(g: u8, asid: u32) -> abi::Activate {
    abi::Activate {
        gctx_paddr: gctx(g).into(),
        asid: asid.into(),
    }
}

fn dev_create(d: u8, cfg: u8) -> abi::DevCreateBars {
    let mut c = abi::DevCreateBars::new_zeroed();
    c.length = len::<abi::DevCreateBars>().into();
    c.dev_ctx = dev_sla(d).into();
    let id = if cfg % 8 == 7 {
        rid(3, 1)
    } else {
        rid(3 + cfg % 8, 0)
    };
    c.device_id = id.routing_id().into();
    c.bar_list = bar_list(cfg % 7).into();
    c
}

fn dev_connect(d: u8) -> abi::DevConnect {
    let mut c = abi::DevConnect::new_zeroed();
    c.length = len::<abi::DevConnect>().into();
    c.dev_ctx = dev_sla(d).into();
    c.tc_mask = 1;
    c
}

fn tdi_create(d: u8, t: u8, bus: u8, devfn: u8) -> abi::TdiCreate {
    let mut c = abi::TdiCreate::new_zeroed();
    c.length = len::<abi::TdiCreate>().into();
    c.dev_ctx = dev_sla(d).into();
    c.tdi_ctx = tdi_sla(t).into();
    c.interface_id.function_id = u32::from(rid(bus, devfn).routing_id()).into();
    c
}

fn tdi_bind(d: u8, t: u8, g: u8, gd: u8) -> abi::TdiBind {
    let mut c = abi::TdiBind::new_zeroed();
    c.length = len::<abi::TdiBind>().into();
    c.dev_ctx = dev_sla(d).into();
    c.spdm_ctrl = spdm_ctrl();
    c.tdi_ctx = tdi_sla(t).into();
    c.gctx_paddr = gctx(g).into();
    c.guest_device_id = gdev(gd).into();
    c.lock_flags = 1.into();
    c
}

fn tdi_unbind(d: u8, t: u8, g: u8) -> abi::TdiUnbind {
    let mut c = abi::TdiUnbind::new_zeroed();
    c.length = len::<abi::TdiUnbind>().into();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla(d).into();
    c.tdi_ctx = tdi_sla(t).into();
    c.gctx_paddr = gctx(g).into();
    c
}

fn mmio_map(t: u8, g: u8, gpa: u64, hpa: u64, size: u8) -> abi::MmioMap {
    let mut c = abi::MmioMap::new_zeroed();
    c.length = len::<abi::MmioMap>().into();
    c.tdi_ctx = tdi_sla(t).into();
    c.gctx_paddr = gctx(g).into();
    c.gpa = gpa.into();
    c.hpa = hpa.into();
    c.page_size = size;
    c
}

fn guest_request(d: u8, t: u8, g: u8, req: u64, res: u64) -> abi::GuestRequest {
    let mut c = abi::GuestRequest::new_zeroed();
    c.length = len::<abi::GuestRequest>().into();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla(d).into();
    c.tdi_ctx = tdi_sla(t).into();
    c.gctx_paddr = gctx(g).into();
    c.req_paddr = req.into();
    c.res_paddr = res.into();
    c
}

/// A seed: the stage and the commands.
pub fn encode(stage: Stage, cmds: &[Cmd]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::enc::Encode::encode(&stage, &mut out);
    out.extend(crate::enc::encode_all(cmds));
    out
}

/// Decodes a seed (the seed generator checks the round trip).
pub fn decode(data: &[u8]) -> (Stage, Vec<Cmd>) {
    let mut u = Unstructured::new(data);
    let stage = Stage::arbitrary(&mut u).unwrap_or(Stage::Empty);
    let mut cmds = Vec::new();
    while !u.is_empty() && cmds.len() < MAX_CMDS {
        match Cmd::arbitrary(&mut u) {
            Ok(c) => cmds.push(c),
            Err(_) => break,
        }
    }
    (stage, cmds)
}
