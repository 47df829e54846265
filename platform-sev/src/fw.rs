//! The SEV-TIO firmware: one dispatcher from (command ID, command buffer) to the core, and the
//! context tables that turn AMD's handles (guest context pages, device and TDI context SLAs)
//! into the core's.
//!
//! Every handler follows the same order: copy and check the buffer ([`abi::parse`]), resolve
//! every handle, check where its answer goes (`Output`), check what only this layer knows,
//! then make exactly one core call that changes state, then record its result in the context
//! tables and deliver the answer. A refusal at any step changes nothing.
//!
//! A command that answers in memory (TDI_STATUS, TDI_INFO, TDI_REPORT, ASID_FENCE_STATUS,
//! GUEST_REQUEST; the data objects DEV_CONNECT, DEV_MEASUREMENTS, DEV_CERTIFICATES and
//! TDI_BIND write to `spdm_ctrl.output`) checks its output before anything else can change: mapped, aligned, within
//! one page, system memory the host owns (not device MMIO, not a page the firmware holds as a
//! context) and writable. After that check, delivering the answer cannot fail, so a command
//! never changes state and then fails to report it.
//!
//! Addresses arrive with or without the C-bit ([`abi::C_BIT`]); it is stripped where each is
//! decoded ([`SlaAddr::checked`], `page_aligned`), so nothing below sees it.
//!
//! The firmware never talks to a device: a command that needs one (TDI_BIND, with RUN_FORCE
//! too, TDI_UNBIND without FORCE, TDI_STATUS, the guest's TDI_START) answers `SPDM_REQUEST` with the core's
//! request in `spdm_ctrl.req` ([`crate::relay`]), and the host reissues the same command, with
//! [`abi::FLAG_CONTINUE`] set in the buffer the firmware wrote back and the device's answer in
//! `spdm_ctrl.resp`. The request page is one of the outputs checked first; the response page
//! is read once, into firmware memory, before the core sees it. A continuation must match the
//! exchange the core has outstanding for that TDI (`NoExchange`, `ExchangePending`), and an
//! answer that is not the device's answer to it is `RelayMalformed`: both change nothing.

use tsm_core::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS};
use tsm_core::lifecycle::{Event, transition};
use tsm_core::relay::MAX_RELAY_BYTES;
use tsm_core::tsm::Tsm;
use tsm_core::{
    Completion, DeviceId, DeviceOp, Error, Gpa, GuestField, GuestId, Hpa, MmioRange, PageSize,
    RequesterId, ReservedMemory, SecureSession, TdiId, TdiState, TsmResult,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{self, SlaAddr, SpdmCtrl};
use crate::guest_msg::{self as msg, MmioValidateStatus as Mv, MsgHeader};
use crate::memory::SystemMemory;
use crate::relay;
use crate::rmp::{Rmp, RmpFault, RmpMemory, RmpUpdate, ValidateFault};
use crate::status::{Outcome, SevStatus};

/// Highest ASID we accept at SNP_ACTIVATE (ours: the core tracks at most `MAX_GUESTS` guests;
/// AMD parts report their ASID count in CPUID 0x8000001F ECX).
pub const MAX_ASID: u32 = 1023;
/// SPDM certificate slots are 0-7 (DMTF DSP0274 1.2, "certificate slots").
pub const MAX_CERT_SLOT: u8 = 7;
/// DEV_CONNECT `tc_mask` bit 0: traffic class 0 must be set up (the Linux host driver
/// refuses a mask without it, sev-dev-tio.c `sev_tio_dev_connect`).
pub const TC_MASK_TC0: u8 = 1 << 0;
/// Alignment of the status pages TDI_STATUS, TDI_INFO and ASID_FENCE_STATUS write (ours).
pub const STATUS_ALIGN: u64 = 16;
/// Alignment of the ASID_FENCE_STATUS word: a `u64` (sev-dev-tio.c writes it as one).
pub const FENCE_STATUS_ALIGN: u64 = 8;
/// Longest answer to a guest message: the header and the largest body we send.
const MAX_RESPONSE: usize = msg::HDR_SIZE as usize + msg::MAX_BODY;
/// Longest TDI_REPORT output: header, every range a TDI may own, trailing length word.
const MAX_REPORT: usize = core::mem::size_of::<abi::ReportHeader>()
    + core::mem::size_of::<abi::ReportRange>() * tsm_core::capacity::MAX_RANGES_PER_TDI
    + core::mem::size_of::<u32>();
/// Longest data object written to an output SLA: its header and the largest payload (an
/// interface report), padded to the payload alignment Linux expects.
const MAX_BLOB: usize = (core::mem::size_of::<abi::DobjBlobHdr>() + MAX_REPORT)
    .next_multiple_of(abi::SLA_PAYLOAD_ALIGN);
/// What the firmware writes in an output SLA: from `payload_sz` (0x04; the host's
/// `capacity_sz` at 0 stays) to the end of the data object.
const BLOB_OUT: usize = abi::DOBJ_OFFSET - PAYLOAD_SZ_AT + MAX_BLOB;
/// Offset of `sla_buffer_hdr.payload_sz`.
const PAYLOAD_SZ_AT: usize = 4;
const _: () = assert!(abi::DOBJ_OFFSET + MAX_BLOB <= abi::SPDM_OUT_SIZE as usize);
// Both answers fit the one page a command names for them.
const _: () = assert!(MAX_RESPONSE <= abi::PAGE_4K as usize);
const _: () = assert!(MAX_REPORT <= abi::SPDM_OUT_SIZE as usize);
// The relay's request and response windows fit the SPDM buffer sizes TIO_STATUS reports.
/// A 4K page in bytes, as the scatter walk counts them.
const PAGE_BYTES: usize = abi::PAGE_4K as usize;
/// A 4K page as a buffer size ([`SlaAddr::checked`]).
const PAGE_U32: u32 = abi::PAGE_4K as u32;
const _: () = assert!(relay::WINDOW <= abi::SPDM_REQ_SIZE as usize);
const _: () = assert!(relay::WINDOW <= abi::SPDM_RSP_SIZE as usize);
// Every response body fits the answer GUEST_REQUEST checks before a message runs: after the
// message ran, only copies of sizes fixed here remain before the answer is delivered.
const _: () = assert!(core::mem::size_of::<msg::TdiInfoRsp>() <= msg::MAX_BODY);
const _: () = assert!(core::mem::size_of::<msg::MmioValidateRsp>() <= msg::MAX_BODY);
const _: () = assert!(core::mem::size_of::<msg::TdiStartRsp>() <= msg::MAX_BODY);
const _: () = assert!(core::mem::size_of::<msg::SdteWriteRsp>() <= msg::MAX_BODY);

/// A guest context: the page the host named at SNP_GCTX_CREATE, the core guest, its ASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCtx {
    /// Guest context page (the handle the host uses).
    pub gctx: u64,
    /// The core's guest.
    pub guest: GuestId,
    /// ASID from SNP_ACTIVATE, 0 before.
    pub asid: u32,
}

/// A device context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevCtx {
    /// Device context SLA (the handle the host uses).
    pub sla: u64,
    /// The core's device.
    pub device: DeviceId,
    /// Its requester ID.
    pub rid: RequesterId,
    /// Between DEV_CONNECT and DEV_DISCONNECT.
    pub connected: bool,
    /// The IDE stream of each traffic class DEV_CONNECT named (`ide_stream_id[8]`), which a
    /// bound TDI's sDTE carries.
    pub ide_stream_id: [u8; 8],
}

/// A TDI context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdiCtx {
    /// TDI context SLA (the handle the host uses).
    pub sla: u64,
    /// The core's TDI.
    pub tdi: TdiId,
    /// The device context it was created on.
    pub dev_sla: u64,
    /// Its interface's requester ID, as TIO_TDI_CREATE named it (the core's `create_tdi`
    /// checked it by the `InterfaceId` rule).
    pub iface: RequesterId,
    /// Routing ID the guest knows it by (from TDI_BIND).
    pub guest_device_id: u16,
    /// LOCK_INTERFACE flags from TDI_BIND.
    pub lock_flags: u16,
    /// Interface reports produced.
    pub reports: u64,
    /// The owning guest asked for RUN ([`msg::MSG_TDI_RUN_REQ`]) and the TDI has not started
    /// since: the one thing that lets the host's TDI_BIND with RUN_FORCE start it.
    pub run_requested: bool,
}

/// Why a handler stopped: an SEV-layer status or a core status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Sev(SevStatus),
    Core(Error),
    /// An unknown handle: AMD's specific status, and the core's `InvalidHandle` as detail.
    Handle(SevStatus),
}

impl From<SevStatus> for Fail {
    fn from(s: SevStatus) -> Self {
        Fail::Sev(s)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Core(e)
    }
}

type Step = Result<Completion, Fail>;
const DONE: Step = Ok(Completion::Done);

/// The SEV-TIO firmware over the core, an RMP in memory `R` and the SPDM session `S` its
/// relayed TDISP exchanges are sealed with.
pub struct Sev<R, S> {
    tsm: Tsm<Rmp<R>, S>,
    guests: heapless::Vec<GuestCtx, MAX_GUESTS>,
    devices: heapless::Vec<DevCtx, MAX_DEVICES>,
    tdis: heapless::Vec<TdiCtx, MAX_TDIS>,
    /// TIO_INIT ran: every TIO command but TIO_STATUS and TIO_INIT needs it.
    tio_init_done: bool,
}

/// How many contexts of each kind, and the core's summary: never the RMP or its memory.
impl<R, S> core::fmt::Debug for Sev<R, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sev")
            .field("tsm", &self.tsm)
            .field("guests", &self.guests.len())
            .field("devices", &self.devices.len())
            .field("tdis", &self.tdis.len())
            .field("tio_init_done", &self.tio_init_done)
            .finish()
    }
}

/// Where a command's answer goes, checked before the command changes anything
/// ([`Sev::output`]): writing at most `len` bytes there cannot fail afterwards.
#[must_use = "an output is checked to be written"]
struct Output {
    spa: u64,
    len: usize,
}

impl Output {
    /// Writes the answer. `bytes` is never longer than what was checked (callers size it from
    /// the same constant), and the memory promised the write at the check
    /// ([`SystemMemory::probe_write`]); both refusals are here only so that a broken promise is
    /// a status, not a fault.
    fn deliver(self, mem: &mut dyn SystemMemory, bytes: &[u8]) -> Result<(), Fail> {
        if bytes.len() > self.len {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        mem.write(self.spa, bytes)
            .map_err(|_| SevStatus::INVALID_ADDRESS.into())
    }

    /// Writes a structure as the answer.
    fn put<T: IntoBytes + zerocopy::Immutable>(
        self,
        mem: &mut dyn SystemMemory,
        value: &T,
    ) -> Result<(), Fail> {
        self.deliver(mem, value.as_bytes())
    }
}

/// A plain address the host passed (a guest context, a status page, a guest message page):
/// the C-bit stripped ([`abi::strip_c_bit`]), then not null, aligned to `align` and below 2^52
/// (`INVALID_ADDRESS`).
fn page_aligned(addr: u64, align: u64) -> Result<u64, Fail> {
    let addr = abi::strip_c_bit(addr);
    if addr == 0 || addr & align.wrapping_sub(1) != 0 || Hpa::try_new(addr).is_err() {
        return Err(SevStatus::INVALID_ADDRESS.into());
    }
    Ok(addr)
}

fn spdm(ctrl: &SpdmCtrl) -> Result<(), Fail> {
    if ctrl.well_formed() {
        Ok(())
    } else {
        Err(SevStatus::INVALID_PARAM.into())
    }
}

/// The request and response pages of a command that relays, checked before anything changes:
/// the request page is an [`Output`] for [`relay::WINDOW`] bytes.
struct RelayPages {
    req: Output,
    resp: u64,
}

/// Refusals of a relayed step that change nothing and leave the exchange as it was: the host's
/// relay, not the operation, failed (and `Busy`: another CPU holds a lock).
fn relay_refusal(e: Error) -> bool {
    matches!(
        e,
        Error::NoExchange
            | Error::RelayMalformed
            | Error::RelayBufferTooSmall
            | Error::ExchangePending
            | Error::Busy(_)
            | Error::Inconsistent
    )
}

/// The one log point of the SEV command interface: a refusal, at `debug` (a host can cause
/// any number of them, so never above), with the command, the SEV status by name and the
/// core status behind it (SEV has no operand IDs: the core's status names what was refused).
/// SUCCESS, RESUME_REQUIRED and SPDM_REQUEST (work under way) are not logged; nothing of the
/// buffer is printed.
fn log_refusal(id: abi::CommandId, outcome: Outcome) {
    if matches!(
        outcome.status,
        SevStatus::SUCCESS | SevStatus::RESUME_REQUIRED | SevStatus::SPDM_REQUEST
    ) {
        return;
    }
    match Error::from_code(outcome.detail) {
        Some(core) => log::debug!("sev: command {id:#x} refused: {} ({core})", outcome.status),
        None => log::debug!("sev: command {id:#x} refused: {}", outcome.status),
    }
}

impl<R: RmpMemory, S: SecureSession> Sev<R, S> {
    /// The firmware over an RMP and the SPDM session it shares with the devices. The session
    /// is the platform's (established at DEV_CONNECT on hardware). `system_memory` is what the
    /// platform gives at SNP init: the system memory the RMP covers (DRAM, where guests and
    /// command buffers live) and the firmware's own pages (the RMP table, its image). No device
    /// BAR, reported range or MMIO mapping may touch it (`ReservedMemory`): system memory is
    /// never MMIO.
    pub fn new(rmp: Rmp<R>, session: S, system_memory: ReservedMemory) -> Self {
        Self {
            tsm: Tsm::with_reserved(rmp, session, system_memory),
            guests: heapless::Vec::new(),
            devices: heapless::Vec::new(),
            tdis: heapless::Vec::new(),
            tio_init_done: false,
        }
    }

    /// Whether TIO_INIT ran (TIO_STATUS `tio_init_done`).
    pub fn tio_init_done(&self) -> bool {
        self.tio_init_done
    }

    /// The core underneath (tests inspect it).
    pub fn tsm(&self) -> &Tsm<Rmp<R>, S> {
        &self.tsm
    }

    /// The guest context at `gctx`, if any.
    pub fn guest_ctx(&self, gctx: u64) -> Option<GuestCtx> {
        self.guests.iter().find(|g| g.gctx == gctx).copied()
    }

    /// The device context with SLA `sla`, if any.
    pub fn dev_ctx(&self, sla: u64) -> Option<DevCtx> {
        self.devices.iter().find(|d| d.sla == sla).copied()
    }

    /// The TDI context with SLA `sla`, if any.
    pub fn tdi_ctx(&self, sla: u64) -> Option<TdiCtx> {
        self.tdis.iter().find(|t| t.sla == sla).copied()
    }

    /// Runs one command on the host's buffer `buf`; `mem` is the system memory the command's
    /// addresses point into. Never panics; a refusal changes nothing (the buffer included).
    /// The buffer is written back for the commands that relay: [`abi::FLAG_CONTINUE`] set when
    /// the answer is `SPDM_REQUEST`, cleared when it is `SUCCESS` or `RESUME_REQUIRED`.
    pub fn command(
        &mut self,
        mem: &mut dyn SystemMemory,
        id: abi::CommandId,
        buf: &mut [u8],
    ) -> Outcome {
        let step = if abi::needs_tio_init(id) && !self.tio_init_done {
            // Before TIO_INIT the platform is not in the TIO state (SEV API, doc 55766: a
            // command in the wrong platform state is INVALID_PLATFORM_STATE).
            Err(SevStatus::INVALID_PLATFORM_STATE.into())
        } else {
            self.dispatch(mem, id, buf)
        };
        if abi::RELAYING.contains(&id)
            && let Ok(done) = step
        {
            mark_continue(buf, matches!(done, Completion::Relay(_)));
        }
        let outcome = match step {
            Ok(c) => Outcome::from_core(Ok(c)),
            Err(Fail::Core(e)) => Outcome::from_core(Err(e)),
            Err(Fail::Sev(s)) => Outcome::plain(s),
            Err(Fail::Handle(s)) => Outcome {
                status: s,
                detail: Error::InvalidHandle.code(),
            },
        };
        log_refusal(id, outcome);
        outcome
    }

    fn dispatch(&mut self, mem: &mut dyn SystemMemory, id: abi::CommandId, buf: &[u8]) -> Step {
        match id {
            abi::TIO_STATUS => self.tio_status(mem, buf),
            abi::TIO_INIT => self.tio_init(buf),
            abi::SNP_GCTX_CREATE => self.gctx_create(buf),
            abi::SNP_ACTIVATE => self.activate(buf),
            abi::SNP_DECOMMISSION => self.decommission(buf),
            abi::TIO_DEV_CREATE => self.dev_create(mem, buf),
            abi::TIO_DEV_RECLAIM => self.dev_reclaim(buf),
            abi::TIO_DEV_CONNECT => self.dev_connect(mem, buf),
            abi::TIO_DEV_DISCONNECT => self.dev_disconnect(buf),
            abi::TIO_DEV_MEASUREMENTS => self.dev_measurements(mem, buf),
            abi::TIO_DEV_CERTIFICATES => self.dev_certificates(mem, buf),
            abi::TIO_TDI_CREATE => self.tdi_create(buf),
            abi::TIO_TDI_RECLAIM => self.tdi_reclaim(buf),
            abi::TIO_TDI_BIND => self.tdi_bind(mem, buf),
            abi::TIO_TDI_UNBIND => self.tdi_unbind(mem, buf),
            abi::TIO_TDI_REPORT => self.tdi_report(mem, buf),
            abi::TIO_TDI_STATUS => self.tdi_status(mem, buf),
            abi::TIO_GUEST_REQUEST => self.guest_request(mem, buf),
            abi::TIO_ASID_FENCE_CLEAR => self.fence_clear(buf),
            abi::TIO_ASID_FENCE_STATUS => self.fence_status(mem, buf),
            abi::TIO_TDI_INFO => self.tdi_info(mem, buf),
            abi::TIO_MMIO_MAP => self.mmio_map(buf),
            abi::TIO_MMIO_BLOCK => self.mmio_block(buf),
            abi::TIO_MMIO_UNMAP => self.mmio_unmap(buf),
            abi::TIO_MMIO_ZAP => self.mmio_zap(buf),
            abi::TIO_TDI_ERROR => self.tdi_error(buf),
            // An unknown command is a bad parameter like any other (README, differences).
            _ => Err(SevStatus::INVALID_PARAM.into()),
        }
    }

    // ---- TIO_STATUS / TIO_INIT ----------------------------------------------------------

    fn tio_status(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TioStatus = abi::parse(buf)?;
        let out = self.output(
            mem,
            c.status_paddr.get(),
            STATUS_ALIGN,
            core::mem::size_of::<abi::TioStatusData>(),
        )?;
        out.put(mem, &abi::TioStatusData::report(self.tio_init_done))?;
        DONE
    }

    fn tio_init(&mut self, buf: &[u8]) -> Step {
        let _: abi::TioInit = abi::parse(buf)?;
        if self.tio_init_done {
            // TIO_INIT twice: the platform is already initialised (SEV API, doc 55766, INIT
            // outside the UNINIT state is INVALID_PLATFORM_STATE). Linux never sends it: it
            // stops at a TIO_STATUS with `tio_init_done` set (-EBUSY).
            return Err(SevStatus::INVALID_PLATFORM_STATE.into());
        }
        self.tio_init_done = true;
        DONE
    }

    /// Every guest context.
    pub fn guests(&self) -> &[GuestCtx] {
        &self.guests
    }

    /// Every device context.
    pub fn devices(&self) -> &[DevCtx] {
        &self.devices
    }

    /// Every TDI context.
    pub fn tdis(&self) -> &[TdiCtx] {
        &self.tdis
    }

    // ---- handle resolution --------------------------------------------------------------

    fn guest(&self, gctx: u64) -> Result<GuestCtx, Fail> {
        let gctx = page_aligned(gctx, abi::PAGE_4K)?;
        self.guest_ctx(gctx)
            .ok_or(Fail::Handle(SevStatus::INVALID_GUEST))
    }

    fn device(&self, raw: u64) -> Result<DevCtx, Fail> {
        let sla = SlaAddr::checked(raw, abi::DEV_CTX_SIZE)?;
        self.dev_ctx(sla.into_bits())
            .ok_or(Fail::Handle(SevStatus::INVALID_DEV_CTX))
    }

    fn tdi(&self, dev_raw: u64, tdi_raw: u64) -> Result<(DevCtx, TdiCtx), Fail> {
        let dev = self.device(dev_raw)?;
        let sla = SlaAddr::checked(tdi_raw, abi::TDI_CTX_SIZE)?;
        let tdi = self
            .tdi_ctx(sla.into_bits())
            .ok_or(Fail::Handle(SevStatus::INVALID_TDI_CTX))?;
        if tdi.dev_sla != dev.sla {
            return Err(SevStatus::INVALID_TDI.into());
        }
        Ok((dev, tdi))
    }

    /// A context SLA for a context the command creates: well formed, and its page not one the
    /// firmware already holds ([`Sev::firmware_page`], `IN_USE`).
    fn sla_unused(&self, raw: u64, size: u32) -> Result<u64, Fail> {
        let sla = SlaAddr::checked(raw, size)?;
        if self.firmware_page(sla.address()) {
            return Err(SevStatus::IN_USE.into());
        }
        Ok(sla.into_bits())
    }

    /// Whether `page` is a page the firmware holds as a context of any kind: a guest context
    /// page, a device or TDI context page. The one check every command that takes a page makes:
    /// a command that creates a context refuses such a page with `IN_USE`, one that writes or
    /// reads host memory there with `INVALID_PAGE_STATE` ([`Sev::output`],
    /// [`Sev::buffer_pages`]).
    fn firmware_page(&self, page: u64) -> bool {
        self.guests.iter().any(|g| g.gctx == page)
            || self.devices.iter().any(|d| abi::sla_page(d.sla) == page)
            || self.tdis.iter().any(|t| abi::sla_page(t.sla) == page)
    }

    /// The data pages of a host buffer of `size` bytes named by `raw`, checked before anything
    /// uses them, as Linux's `sla_alloc` lays them out (sev-linux-buffers.md section 2.1,
    /// AMDESE/linux-kvm @16f379f5 `sla_alloc`): a buffer of at most one page is one 4K data
    /// SLA ([`SlaAddr::checked`]); a larger one is a SCATTER SLA naming a 4K page of data SLAs,
    /// exactly `ceil(size / 4K)` of them (at most [`abi::MAX_SCATTER_PAGES`]), then
    /// [`abi::SLA_EOL`]. The scatter page is read once, at most the entries the size needs and
    /// the EOL, so the walk is bounded whatever the page holds.
    ///
    /// Refusals, each changing nothing (the walk only reads and probes): `INVALID_PARAM` for
    /// the form (null, reserved bits, a 2M page, a data SLA where a scatter list is needed or
    /// the reverse, a size past what one scatter page lists, an entry that is null, a scatter
    /// SLA (nesting), 2M or has reserved bits, the EOL early or missing where the size puts
    /// it, a page listed twice or the scatter page listed as data: the loops a list can
    /// make); `INVALID_ADDRESS` for a scatter page in device MMIO or unreadable; and for each
    /// data page exactly the checks of an output page (`Sev::output`: device MMIO, unmapped
    /// or not writable `INVALID_ADDRESS`; a page the firmware holds as a context
    /// `INVALID_PAGE_STATE`), which is also what a scatter page held as a context gets.
    ///
    /// Where Linux may send one: wherever a size TIO_STATUS reports is past one page. Every
    /// size this firmware reports is one page today, so every command takes a single data
    /// SLA and Linux never builds a scatter list for it; a buffer whose size grows takes its
    /// scatter list through here.
    pub fn buffer_pages(
        &self,
        mem: &dyn SystemMemory,
        raw: u64,
        size: u32,
    ) -> Result<heapless::Vec<u64, { abi::MAX_SCATTER_PAGES }>, SevStatus> {
        let status = |f: Fail| match f {
            Fail::Sev(s) | Fail::Handle(s) => s,
            Fail::Core(e) => crate::status::from_error(e),
        };
        let mut pages = heapless::Vec::new();
        let page = abi::PAGE_4K;
        if u64::from(size) <= page {
            let sla = SlaAddr::checked(raw, size)?;
            self.output(mem, sla.address(), page, PAGE_BYTES)
                .map(drop)
                .map_err(status)?;
            pages
                .push(sla.address())
                .map_err(|_| SevStatus::INVALID_PARAM)?;
            return Ok(pages);
        }
        let count = usize::try_from(u64::from(size).div_ceil(page))
            .map_err(|_| SevStatus::INVALID_PARAM)?;
        let list = SlaAddr::from_bits(abi::strip_c_bit(raw));
        if count > abi::MAX_SCATTER_PAGES
            || !list.page_type()
            || list.page_size()
            || SlaAddr::checked(raw & !1, PAGE_U32).is_err()
        {
            return Err(SevStatus::INVALID_PARAM);
        }
        let at = list.address();
        // The scatter page: host memory the firmware reads, never MMIO nor a context.
        if self
            .tsm
            .with_table(|r| r.overlaps(at, page))
            .map_err(|e| status(e.into()))?
        {
            return Err(SevStatus::INVALID_ADDRESS);
        }
        if self.firmware_page(at) {
            return Err(SevStatus::INVALID_PAGE_STATE);
        }
        // Read once: the entries the size needs and the EOL after them.
        let mut bytes = [0u8; PAGE_BYTES];
        let want = count
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or(SevStatus::INVALID_PARAM)?;
        let entries = bytes.get_mut(..want).ok_or(SevStatus::INVALID_PARAM)?;
        mem.read(at, entries)
            .map_err(|_| SevStatus::INVALID_ADDRESS)?;
        let mut words = entries
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map(u64::from_le_bytes));
        for _ in 0..count {
            let raw_entry = words
                .next()
                .and_then(|w| w.ok())
                .ok_or(SevStatus::INVALID_PARAM)?;
            let entry = SlaAddr::from_bits(raw_entry);
            // Early EOL, null, nested scatter, 2M, reserved bits: not a data page.
            if entry.is_eol() {
                return Err(SevStatus::INVALID_PARAM);
            }
            let data = SlaAddr::checked(raw_entry, PAGE_U32)?.address();
            if data == at || pages.contains(&data) {
                return Err(SevStatus::INVALID_PARAM);
            }
            pages.push(data).map_err(|_| SevStatus::INVALID_PARAM)?;
        }
        let eol = words.next().and_then(|w| w.ok());
        if !eol.is_some_and(|w| SlaAddr::from_bits(w).is_eol()) {
            return Err(SevStatus::INVALID_PARAM);
        }
        for &data in &pages {
            self.output(mem, data, page, PAGE_BYTES)
                .map(drop)
                .map_err(status)?;
        }
        Ok(pages)
    }

    /// Checks where a command will write its answer of `len` bytes, before it changes
    /// anything: `spa` not null, aligned to `align`, below 2^52, the answer within one 4K page
    /// (`INVALID_ADDRESS`); not device MMIO (the RMP window, `INVALID_ADDRESS`); not a page the
    /// firmware holds as a guest, device or TDI context (`INVALID_PAGE_STATE`); and mapped and
    /// writable system memory (`INVALID_ADDRESS`).
    fn output(
        &self,
        mem: &dyn SystemMemory,
        spa: u64,
        align: u64,
        len: usize,
    ) -> Result<Output, Fail> {
        let spa = page_aligned(spa, align)?;
        let bytes = u64::try_from(len).map_err(|_| SevStatus::INVALID_ADDRESS)?;
        let page = spa & !(abi::PAGE_4K - 1);
        let within_page = (spa & (abi::PAGE_4K - 1))
            .checked_add(bytes)
            .is_some_and(|end| end <= abi::PAGE_4K);
        if !within_page {
            return Err(SevStatus::INVALID_ADDRESS.into());
        }
        if self.tsm.with_table(|r| r.overlaps(spa, bytes))? {
            return Err(SevStatus::INVALID_ADDRESS.into());
        }
        if self.firmware_page(page) {
            return Err(SevStatus::INVALID_PAGE_STATE.into());
        }
        mem.probe_write(spa, len)
            .map_err(|_| SevStatus::INVALID_ADDRESS)?;
        Ok(Output { spa, len })
    }

    /// The request and response pages of a command that relays (`spdm_ctrl.req` and
    /// `.resp`): both named (single 4K data pages, `INVALID_PARAM` otherwise) and distinct
    /// (`INVALID_PARAM`), the request page an output for [`relay::WINDOW`] bytes ([`Sev::output`]
    /// statuses). Checked on every issue, before anything changes, whether or not this call
    /// will need the device: once checked, writing a request cannot fail.
    fn relay_pages(&self, mem: &dyn SystemMemory, ctrl: &SpdmCtrl) -> Result<RelayPages, Fail> {
        spdm(ctrl)?;
        let (req, resp) = (ctrl.req.get(), ctrl.resp.get());
        if req == 0 || resp == 0 || abi::sla_page(req) == abi::sla_page(resp) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let req = self.output(mem, abi::sla_page(req), abi::PAGE_4K, relay::WINDOW)?;
        Ok(RelayPages {
            req,
            resp: abi::sla_page(resp),
        })
    }

    /// The output SLA a command writes a data object to, checked before anything changes: a
    /// single 4K data page (`INVALID_PARAM`), an output ([`Sev::output`] statuses) from its
    /// `payload_sz` on. `None` for a null SLA.
    fn blob_output(&self, mem: &dyn SystemMemory, ctrl: &SpdmCtrl) -> Result<Option<Output>, Fail> {
        let raw = ctrl.output.get();
        if raw == 0 {
            return Ok(None);
        }
        let page = SlaAddr::checked(raw, abi::SPDM_OUT_SIZE)?.address();
        let at = page | PAYLOAD_SZ_AT as u64;
        Ok(Some(self.output(
            mem,
            at,
            PAYLOAD_SZ_AT as u64,
            BLOB_OUT,
        )?))
    }

    /// A continuation ([`abi::FLAG_CONTINUE`]) is only for the exchange `tdi` has outstanding,
    /// and only if `ours` (the command's own operation): `NoExchange` when it has none,
    /// `ExchangePending` when another operation's waits.
    fn expect_exchange(&self, tdi: TdiId, ours: impl FnOnce(DeviceOp) -> bool) -> Result<(), Fail> {
        match self.tsm.tdi(tdi)?.exchange {
            None => Err(Error::NoExchange.into()),
            Some(ex) if ours(ex.op) => Ok(()),
            Some(_) => Err(Error::ExchangePending.into()),
        }
    }

    /// Reads the host's answer in the response page once, into firmware memory, and rebuilds
    /// the DOE object the device sent ([`relay::decode_response`]): `None` when the host says
    /// the device did not answer. An unreadable page is `INVALID_ADDRESS`, a buffer that does
    /// not hold the answer `RelayMalformed`, a consistent answer longer than the firmware takes
    /// `RESPONSE_TOO_LARGE` (detail 0); nothing changes in any case.
    fn response(
        &self,
        mem: &dyn SystemMemory,
        resp: u64,
        out: &mut [u8; MAX_RELAY_BYTES],
    ) -> Result<Option<usize>, Fail> {
        let mut window = [0u8; relay::WINDOW];
        mem.read(resp, &mut window)
            .map_err(|_| SevStatus::INVALID_ADDRESS)?;
        let n = self.tsm.with_transport(|r| {
            relay::decode_response(&window, |b| r.session_mut().record_len(b), out)
        })?;
        n.map_err(|e| match e {
            relay::Refused::Malformed => Error::RelayMalformed.into(),
            relay::Refused::TooLarge => SevStatus::RESPONSE_TOO_LARGE.into(),
        })
    }

    /// One core step of a command that relays: `start` for a fresh issue, or, for a
    /// continuation, the host's answer handed to `Tsm::device_response`. A `Relay` outcome
    /// writes the next request to the request page, checked by [`Sev::relay_pages`]. The outer
    /// error is a refusal before the core ran (the response page unreadable or not a
    /// response); the inner result is the core's.
    fn relay_call(
        &self,
        mem: &mut dyn SystemMemory,
        pages: RelayPages,
        tdi: TdiId,
        continuing: bool,
        start: impl FnOnce(&Tsm<Rmp<R>, S>, &mut [u8]) -> TsmResult<Completion>,
    ) -> Result<TsmResult<Completion>, Fail> {
        self.relay_round(mem, pages, continuing, start, |tsm, response, out| {
            tsm.device_response(tdi, response, out)
        })
    }

    /// [`Sev::relay_call`] with the continuation's core call `respond` (the device's answer,
    /// or `None` for its silence): TDI_BIND's creates the sDTE with the bind.
    fn relay_round(
        &self,
        mem: &mut dyn SystemMemory,
        pages: RelayPages,
        continuing: bool,
        start: impl FnOnce(&Tsm<Rmp<R>, S>, &mut [u8]) -> TsmResult<Completion>,
        respond: impl FnOnce(&Tsm<Rmp<R>, S>, Option<&[u8]>, &mut [u8]) -> TsmResult<Completion>,
    ) -> Result<TsmResult<Completion>, Fail> {
        let mut out = [0u8; MAX_RELAY_BYTES];
        let outcome = if continuing {
            let mut answer = [0u8; MAX_RELAY_BYTES];
            let response = match self.response(mem, pages.resp, &mut answer)? {
                Some(n) => Some(answer.get(..n).ok_or(Error::Inconsistent)?),
                None => None,
            };
            respond(&self.tsm, response, &mut out)
        } else {
            start(&self.tsm, &mut out)
        };
        if let Ok(Completion::Relay(n)) = outcome {
            let mut page = [0u8; relay::WINDOW];
            let len = relay::encode_request(out.get(..n).ok_or(Error::Inconsistent)?, &mut page)?;
            pages
                .req
                .deliver(mem, page.get(..len).ok_or(Error::Inconsistent)?)?;
        }
        Ok(outcome)
    }

    fn update_tdi(&mut self, sla: u64, f: impl FnOnce(&mut TdiCtx)) {
        if let Some(t) = self.tdis.iter_mut().find(|t| t.sla == sla) {
            f(t);
        }
    }

    // ---- guest contexts (SNP) -----------------------------------------------------------

    fn gctx_create(&mut self, buf: &[u8]) -> Step {
        let c: abi::GctxCreate = abi::parse(buf)?;
        let gctx = page_aligned(c.gctx_paddr.get(), abi::PAGE_4K)?;
        if self.firmware_page(gctx) {
            return Err(SevStatus::IN_USE.into());
        }
        // The core decides (`GuestTableFull`); a context table as large as the core's, one
        // context per core guest, then always has room.
        let guest = self.tsm.create_guest()?;
        let ctx = GuestCtx {
            gctx,
            guest,
            asid: 0,
        };
        if self.guests.push(ctx).is_err() {
            self.tsm.destroy_guest(guest)?;
            return Err(Error::GuestTableFull.into());
        }
        DONE
    }

    fn activate(&mut self, buf: &[u8]) -> Step {
        let c: abi::Activate = abi::parse(buf)?;
        let g = self.guest(c.gctx_paddr.get())?;
        let asid = c.asid.get();
        if asid == 0 || asid > MAX_ASID {
            return Err(SevStatus::INVALID_ASID.into());
        }
        if g.asid != 0 {
            return Err(SevStatus::INVALID_GUEST_STATE.into());
        }
        self.tsm.with_table(|r| r.set_asid(g.guest, asid))??;
        if let Some(slot) = self.guests.iter_mut().find(|x| x.gctx == g.gctx) {
            slot.asid = asid;
        }
        DONE
    }

    fn decommission(&mut self, buf: &[u8]) -> Step {
        let c: abi::Decommission = abi::parse(buf)?;
        let g = self.guest(c.gctx_paddr.get())?;
        // The core's refusal first (a guest that owns TDIs), then release the ASID: refused
        // (IN_USE, nothing changed) while any RMP entry still names it. Only then forget the
        // guest; should that still be refused, give back exactly what was released: the ASID
        // and both fence counters (a later ASID_FENCE_STATUS must read what it read before).
        if self.tsm.guest(g.guest)?.bound_tdis != 0 {
            return Err(Error::GuestInUse.into());
        }
        let released = self.tsm.with_table(|r| r.release_asid(g.guest))??;
        if let Err(e) = self.tsm.destroy_guest(g.guest) {
            self.tsm.with_table(|r| r.restore_asid(released))?;
            return Err(e.into());
        }
        self.guests.retain(|x| x.gctx != g.gctx);
        DONE
    }

    // ---- devices ------------------------------------------------------------------------

    /// DEV_CREATE: Linux's 0x20 bytes register a device without a BAR list; our 0x28-byte
    /// form ([`abi::DevCreateBars`], chosen by its `length`) adds one.
    fn dev_create(&mut self, mem: &dyn SystemMemory, buf: &[u8]) -> Step {
        let length = buf.first_chunk::<4>().map(|b| u32::from_le_bytes(*b));
        let (c, bars) = if length.and_then(|l| usize::try_from(l).ok())
            == Some(abi::len_of::<abi::DevCreateBars>())
        {
            let c: abi::DevCreateBars = abi::parse(buf)?;
            let linux = abi::DevCreate {
                length: 0.into(),
                reserved1: c.reserved1,
                dev_ctx: c.dev_ctx,
                device_id: c.device_id,
                root_port_id: c.root_port_id,
                segment_id: c.segment_id,
                reserved2: c.reserved2,
            };
            (linux, Some(c.bar_list.get()))
        } else {
            (abi::parse::<abi::DevCreate>(buf)?, None)
        };
        let sla = self.sla_unused(c.dev_ctx.get(), abi::DEV_CTX_SIZE)?;
        let [devfn, bus] = c.device_id.get().to_le_bytes();
        let rid = RequesterId::from_packed(u64::from_le_bytes([
            devfn,
            bus,
            c.segment_id,
            0,
            0,
            0,
            0,
            0,
        ]))?;
        // The BARs the host programmed, from its list when it gives one (ours; see
        // `abi::BarList`): the firmware cannot read configuration space, and the core checks
        // them against reserved memory and every other device's BARs. No list (Linux's form):
        // the reports are checked without BARs, against reserved memory, each other and every
        // bound TDI's ranges (`Tsm::create_device_unlisted`). The core checks in its own order
        // (too many BARs, overlap, duplicate, full) and its refusal passes through as it is; a
        // context table as large as the core's, one context per core device, then always has
        // room.
        let device = match bars {
            Some(at) => self.tsm.create_device(rid, &read_bars(mem, at)?)?,
            None => self.tsm.create_device_unlisted(rid)?,
        };
        let ctx = DevCtx {
            sla,
            device,
            rid,
            connected: false,
            ide_stream_id: [0; 8],
        };
        if self.devices.push(ctx).is_err() {
            self.tsm.remove_device(device)?;
            return Err(Error::DeviceTableFull.into());
        }
        DONE
    }

    fn dev_connect(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::DevConnect = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        if c.tc_mask & TC_MASK_TC0 == 0 || c.cert_slot > MAX_CERT_SLOT {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let dev = self.device(c.dev_ctx.get())?;
        // Linux's `dsm_connect` saves a certificate object from the output SLA: checked first.
        let certs = self.blob_output(mem, &c.spdm_ctrl)?;
        if dev.connected {
            return Err(SevStatus::INVALID_DEV_STATE.into());
        }
        // Connecting sets up the device's IDE stream: one a forced TDI_UNBIND cut comes back
        // here (DEV_DISCONNECT, then DEV_CONNECT), and its TDIs can be bound again.
        self.tsm.setup_stream(dev.device)?;
        if let Some(d) = self.devices.iter_mut().find(|d| d.sla == dev.sla) {
            d.connected = true;
            d.ide_stream_id = c.ide_stream_id;
        }
        // The certificate chain, empty in this model (see `Sev::dev_certificates`).
        if let Some(out) = certs {
            write_blob(
                mem,
                out,
                (abi::DOBJ_ID_CERTIFICATE, abi::DOBJ_TYPE_CERT_CHAIN),
                dev.rid,
                &[],
            )?;
        }
        DONE
    }

    fn dev_disconnect(&mut self, buf: &[u8]) -> Step {
        let c: abi::DevDisconnect = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        let dev = self.device(c.dev_ctx.get())?;
        if !dev.connected {
            return Err(SevStatus::INVALID_DEV_STATE.into());
        }
        for t in self.tdis.iter().filter(|t| t.dev_sla == dev.sla) {
            // Even FORCE does not take a bound TDI's session away: unbind it first.
            if self.tsm.tdi(t.tdi)?.state.is_bound() {
                return Err(Error::TdiBound.into());
            }
        }
        if let Some(d) = self.devices.iter_mut().find(|d| d.sla == dev.sla) {
            d.connected = false;
        }
        DONE
    }

    /// DEV_MEASUREMENTS: the device's measurements as a measurement data object in the output
    /// SLA, for a connected device (`INVALID_DEV_STATE`); the output SLA is required
    /// (`INVALID_PARAM`). The firmware never talks to the device: it answers with what it
    /// learned at DEV_CONNECT, and this model's DEV_CONNECT relays no GET_MEASUREMENTS (the
    /// model device has none), so the object carries no records. Linux's loop sees SUCCESS on
    /// the first round. The nonce is taken as given: no record to bind it to.
    fn dev_measurements(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::DevMeasurements = abi::parse(buf)?;
        self.device_blob(
            mem,
            &c.spdm_ctrl,
            c.dev_ctx.get(),
            (abi::DOBJ_ID_MEASUREMENT, abi::DOBJ_TYPE_MEAS_RECORDS),
        )
    }

    /// DEV_CERTIFICATES: the device's certificate chain as a certificate data object in the
    /// output SLA, checked as [`Sev::dev_measurements`]; empty for the same reason (this
    /// model's DEV_CONNECT relays no GET_CERTIFICATE).
    fn dev_certificates(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::DevCertificates = abi::parse(buf)?;
        self.device_blob(
            mem,
            &c.spdm_ctrl,
            c.dev_ctx.get(),
            (abi::DOBJ_ID_CERTIFICATE, abi::DOBJ_TYPE_CERT_CHAIN),
        )
    }

    fn device_blob(
        &self,
        mem: &mut dyn SystemMemory,
        ctrl: &SpdmCtrl,
        dev_raw: u64,
        (id, kind): (u32, u8),
    ) -> Step {
        spdm(ctrl)?;
        let dev = self.device(dev_raw)?;
        let out = self
            .blob_output(mem, ctrl)?
            .ok_or(SevStatus::INVALID_PARAM)?;
        if !dev.connected {
            return Err(SevStatus::INVALID_DEV_STATE.into());
        }
        write_blob(mem, out, (id, kind), dev.rid, &[])?;
        DONE
    }

    fn dev_reclaim(&mut self, buf: &[u8]) -> Step {
        let c: abi::DevReclaim = abi::parse(buf)?;
        let dev = self.device(c.dev_ctx.get())?;
        self.tsm.remove_device(dev.device)?;
        self.devices.retain(|d| d.sla != dev.sla);
        DONE
    }

    // ---- TDIs ---------------------------------------------------------------------------

    fn tdi_create(&mut self, buf: &[u8]) -> Step {
        let c: abi::TdiCreate = abi::parse(buf)?;
        let dev = self.device(c.dev_ctx.get())?;
        let sla = self.sla_unused(c.tdi_ctx.get(), abi::TDI_CTX_SIZE)?;
        if !dev.connected {
            return Err(SevStatus::INVALID_DEV_STATE.into());
        }
        let iid = c.interface_id.function_id.get();
        let [devfn, bus, rseg, _] = iid.to_le_bytes();
        let [seg_lo, seg_hi] = if iid & abi::IID_RSEG_VALID != 0 {
            [rseg, 0]
        } else {
            dev.rid.segment().to_le_bytes()
        };
        let iface =
            RequesterId::from_packed(u64::from_le_bytes([devfn, bus, seg_lo, seg_hi, 0, 0, 0, 0]))?;
        // As for devices: the core's refusal (duplicate, full) passes through as it is.
        let tdi = self.tsm.create_tdi(dev.device, iface)?;
        let ctx = TdiCtx {
            sla,
            tdi,
            dev_sla: dev.sla,
            iface,
            guest_device_id: 0,
            lock_flags: 0,
            reports: 0,
            run_requested: false,
        };
        if self.tdis.push(ctx).is_err() {
            self.tsm.remove_tdi(tdi)?;
            return Err(Error::TdiTableFull.into());
        }
        DONE
    }

    fn tdi_reclaim(&mut self, buf: &[u8]) -> Step {
        let c: abi::TdiReclaim = abi::parse(buf)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        self.tsm.remove_tdi(t.tdi)?;
        self.tdis.retain(|x| x.sla != t.sla);
        DONE
    }

    fn tdi_bind(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TdiBind = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        let (dev, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        let g = self.guest(c.gctx_paddr.get())?;
        let pages = self.relay_pages(mem, &c.spdm_ctrl)?;
        if g.asid == 0 {
            return Err(SevStatus::INVALID_GUEST_STATE.into());
        }
        if !dev.connected {
            return Err(SevStatus::INVALID_DEV_STATE.into());
        }
        let continuing = c.reserved.get() & abi::FLAG_CONTINUE != 0;
        if c.run_flags.get() & abi::BIND_RUN_FORCE != 0 {
            return self.tdi_run(mem, pages, &c, &t, &g, continuing);
        }
        // The report goes to the output SLA at bind completion (Linux's `tio_save_output`
        // takes a report data object from it): checked before anything changes.
        let report_out = self.blob_output(mem, &c.spdm_ctrl)?;
        if continuing {
            // The answer is for this guest's bind of this TDI, or for nothing here.
            self.expect_exchange(
                t.tdi,
                |op| matches!(op, DeviceOp::Bind { guest, .. } if guest == g.guest),
            )?;
        } else {
            // The core's own first refusal (an already bound TDI, an unbind in progress),
            // which changes nothing.
            transition(self.tsm.tdi(t.tdi)?.state, Event::Bind(g.guest))?;
        }
        // The guest device ID must name this TDI alone among the guest's, since the guest's
        // requests name TDIs by it (IN_USE otherwise). Checked on every round: the last one
        // binds, and no command runs between this check and it.
        let (id, flags) = (c.guest_device_id.get(), c.lock_flags.get());
        if self.named_tdi(&g, id)?.is_some() {
            return Err(SevStatus::IN_USE.into());
        }
        // The ranges come from the device's own report over the secure session (the core
        // reads it after LOCK_INTERFACE, in exchanges the host relays), never from the host.
        // SEV-TIO's TDI_BIND sets up the TDI's sDTE slot: the trusted DMA context, V clear
        // until the owner's SDTE write. The core makes it in the call and the locks that bind
        // (no TDI bound without its sDTE), with what the firmware knows of the TDI written in
        // the same table lock: the guest device ID of this command, the device's IDE streams
        // from DEV_CONNECT. The create cannot be refused short of drift: the sDTE table has a
        // slot for every TDI the core holds, and the unbind removed this TDI's last one.
        let fields = crate::sdte::bind_fields(id, dev.ide_stream_id);
        let done = self.relay_round(
            mem,
            pages,
            continuing,
            |tsm, out| tsm.bind(t.tdi, g.guest, out),
            |tsm, response, out| {
                tsm.device_response_binding(t.tdi, response, out, |rmp, guest, iface| {
                    rmp.sdte_fill_bind(guest, iface, &fields)
                })
            },
        )??;
        if done == Completion::Done {
            self.update_tdi(t.sla, |x| {
                x.guest_device_id = id;
                x.lock_flags = flags;
            });
            if let Some(out) = report_out {
                // The interface report as the core accepted it, re-assembled from the ranges
                // it claimed (the core keeps no copy of the device's bytes). Every range came
                // from a TDISP report, whose page counts are 32-bit, so the encoding cannot
                // fail here.
                let mut report = [0u8; MAX_REPORT];
                let len = report_bytes(&self.tsm.owned_ranges(t.tdi)?, &mut report)?;
                let bytes = report.get(..len).ok_or(Error::Inconsistent)?;
                write_blob(
                    mem,
                    out,
                    (abi::DOBJ_ID_REPORT, abi::DOBJ_TYPE_REPORT),
                    t.iface,
                    bytes,
                )?;
            }
        }
        Ok(done)
    }

    /// TDI_BIND with RUN_FORCE (Linux's `tdi_run`, after the guest asked the host for RUN):
    /// starts the TDI with the core's `guest_start`, START_INTERFACE relayed through the same
    /// continuation loop. Only for a TDI bound to this guest (`TdiNotBound`, `NotOwner`),
    /// CONFIG_LOCKED (`INVALID_TDI_STATE`), whose guest asked for RUN itself
    /// (`INVALID_GUEST_STATE` otherwise: the host alone never starts a TDI), with the guest
    /// device ID and lock flags of its bind (`INVALID_PARAM`). Each refusal changes nothing.
    /// A START the device refuses puts the TDI in ERROR (the core's status), and the guest's
    /// request is spent.
    fn tdi_run(
        &mut self,
        mem: &mut dyn SystemMemory,
        pages: RelayPages,
        c: &abi::TdiBind,
        t: &TdiCtx,
        g: &GuestCtx,
        continuing: bool,
    ) -> Step {
        if continuing {
            self.expect_exchange(t.tdi, |op| op == DeviceOp::Start { guest: g.guest })?;
        } else {
            let state = self.owned_by(t, g)?;
            if !matches!(state, TdiState::Locked { .. }) {
                return Err(SevStatus::INVALID_TDI_STATE.into());
            }
            if !t.run_requested {
                return Err(SevStatus::INVALID_GUEST_STATE.into());
            }
        }
        if c.guest_device_id.get() != t.guest_device_id || c.lock_flags.get() != t.lock_flags {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let started = self.relay_call(mem, pages, t.tdi, continuing, |tsm, out| {
            tsm.guest_start(g.guest, t.tdi, out)
        })?;
        match started {
            Ok(Completion::Relay(n)) => Ok(Completion::Relay(n)),
            Err(e) if relay_refusal(e) => Err(e.into()),
            other => {
                self.update_tdi(t.sla, |x| x.run_requested = false);
                Ok(other?)
            }
        }
    }

    fn owned_by(&self, t: &TdiCtx, g: &GuestCtx) -> Result<TdiState, Fail> {
        let state = self.tsm.tdi(t.tdi)?.state;
        match state.owner() {
            None => Err(Error::TdiNotBound.into()),
            Some(owner) if owner != g.guest => Err(Error::NotOwner.into()),
            Some(_) => Ok(state),
        }
    }

    fn tdi_unbind(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TdiUnbind = abi::parse(buf)?;
        let force = c.flags.get() & abi::FLAG_FORCE != 0;
        let continuing = c.flags.get() & abi::FLAG_CONTINUE != 0;
        // A forced unbind asks the device nothing, so it never continues an exchange.
        if force && continuing {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        spdm(&c.spdm_ctrl)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        // Unbinding an unbound TDI is done and changes nothing, as in the core: the guest
        // context is only checked against a bound TDI's owner.
        if let Some(owner) = self.tsm.tdi(t.tdi)?.state.owner() {
            let g = self.guest(c.gctx_paddr.get())?;
            if g.guest != owner {
                return Err(SevStatus::INVALID_GUEST.into());
            }
        }
        // FORCE: the firmware cuts the device's IDE stream and unbinds without STOP, whatever
        // exchange is outstanding (the core drops it: its late answer does not open).
        let done = if force {
            self.tsm.unbind_forced(t.tdi)?
        } else {
            let pages = self.relay_pages(mem, &c.spdm_ctrl)?;
            if continuing {
                self.expect_exchange(t.tdi, |op| matches!(op, DeviceOp::Stop { .. }))?;
            }
            self.relay_call(mem, pages, t.tdi, continuing, |tsm, out| {
                tsm.unbind(t.tdi, out)
            })??
        };
        if done == Completion::Done {
            self.update_tdi(t.sla, |x| {
                x.guest_device_id = 0;
                x.lock_flags = 0;
                x.run_requested = false;
            });
        }
        Ok(done)
    }

    fn tdi_report(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TdiReport = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        let out = SlaAddr::checked(c.spdm_ctrl.output.get(), abi::SPDM_OUT_SIZE)?.address();
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        let g = self.guest(c.gctx_paddr.get())?;
        self.owned_by(&t, &g)?;
        let ranges = self.tsm.owned_ranges(t.tdi)?;
        // The whole report, built here and written at once: header, ranges, trailing length.
        let mut report = [0u8; MAX_REPORT];
        let len = report_bytes(&ranges, &mut report)?;
        let out = self.output(mem, out, abi::PAGE_4K, len)?;
        out.deliver(mem, report.get(..len).ok_or(SevStatus::INVALID_PARAM)?)?;
        self.update_tdi(t.sla, |x| x.reports = x.reports.saturating_add(1));
        DONE
    }

    fn tdi_status(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TdiStatus = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        let out = self.output(
            mem,
            c.status_paddr.get(),
            STATUS_ALIGN,
            core::mem::size_of::<abi::TdiStatusData>(),
        )?;
        let pages = self.relay_pages(mem, &c.spdm_ctrl)?;
        let continuing = c.reserved1.get() & abi::FLAG_CONTINUE != 0;
        if continuing {
            self.expect_exchange(t.tdi, |op| op == DeviceOp::Check)?;
        }
        // The core's check: an unbound TDI is `TdiNotBound`; a locked or running one's device
        // is asked (SPDM_REQUEST, GET_DEVICE_INTERFACE_STATE), and one that disagrees puts the
        // TDI in ERROR, as on TDX. A TDI in ERROR or being unbound is not asked about. Leaves
        // are blocked within UNBIND_WORK_PER_CALL per call: `Resumable` (RESUME_REQUIRED) until
        // every one is. The status page was checked above, so the answer is delivered whatever
        // the check changed; it is written once the check ends.
        // An unbound TDI is CONFIG_UNLOCKED, as the firmware left it: answered without asking
        // the device (Linux's `tdi_unbind` reads it right after TDI_UNBIND to verify the
        // transition, sev-dev-tsm.c @16f379f5).
        let record = self.tsm.tdi(t.tdi)?;
        let done = if !continuing && record.state == TdiState::Unbound {
            Completion::Done
        } else {
            self.relay_call(mem, pages, t.tdi, continuing, |tsm, out| {
                tsm.check_interface(t.tdi, out)
            })??
        };
        if let Completion::Relay(_) = done {
            return Ok(done);
        }
        // The device's word when it was asked (the check ended in a continuation), else the
        // firmware's own view.
        let record = self.tsm.tdi(t.tdi)?;
        let said = match record.device_state {
            Some(said) if continuing => said,
            _ => record.state.tdisp(),
        };
        let mut data = abi::TdiStatusData::new_zeroed();
        data.length = u32::try_from(core::mem::size_of::<abi::TdiStatusData>())
            .unwrap_or(0)
            .into();
        data.tdisp_state = said as u8;
        out.put(mem, &data)?;
        Ok(done)
    }

    fn tdi_info(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::TdiInfo = abi::parse(buf)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        let out = self.output(
            mem,
            c.status_paddr.get(),
            STATUS_ALIGN,
            core::mem::size_of::<abi::TdiInfoData>(),
        )?;
        let state = self.tsm.tdi(t.tdi)?.state;
        let status: u32 = match state {
            TdiState::Unbound => 0,
            TdiState::Locked { .. } => 1,
            TdiState::Run { .. } => 2,
            TdiState::Error { .. } | TdiState::Unbinding { .. } => 3,
        };
        let asid = match state.owner() {
            Some(o) => self.tsm.with_table(|r| r.asid(o))?,
            None => 0,
        };
        let mut data = abi::TdiInfoData::new_zeroed();
        data.length = u32::try_from(core::mem::size_of::<abi::TdiInfoData>())
            .unwrap_or(0)
            .into();
        let [devfn, bus] = t.iface.routing_id().to_le_bytes();
        let [seg, _] = t.iface.segment().to_le_bytes();
        let iid = u32::from_le_bytes([devfn, bus, seg, 0]) | abi::IID_RSEG_VALID;
        data.interface_id.function_id = iid.into();
        data.p1_flags = (status << abi::INFO_TDI_STATUS_SHIFT).into();
        data.p2_flags = u32::from(t.lock_flags).into();
        data.intf_report_counter = t.reports.into();
        data.asid = asid.into();
        out.put(mem, &data)?;
        DONE
    }

    fn tdi_error(&mut self, buf: &[u8]) -> Step {
        let c: abi::TdiError = abi::parse(buf)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        Ok(self.tsm.device_error(t.tdi)?)
    }

    // ---- fences -------------------------------------------------------------------------

    fn fence_clear(&mut self, buf: &[u8]) -> Step {
        let c: abi::AsidFenceClear = abi::parse(buf)?;
        self.device(c.dev_ctx.get())?;
        let g = self.guest(c.gctx_paddr.get())?;
        Ok(self.tsm.host_track(g.guest)?)
    }

    fn fence_status(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::AsidFenceStatus = abi::parse(buf)?;
        self.device(c.dev_ctx.get())?;
        let asid = c.asid.get();
        let g = self
            .guests
            .iter()
            .find(|g| g.asid == asid && asid != 0)
            .copied()
            .ok_or(SevStatus::INVALID_ASID)?;
        let word = zerocopy::byteorder::little_endian::U64::new(0);
        let out = self.output(
            mem,
            c.status_pa.get(),
            FENCE_STATUS_ALIGN,
            core::mem::size_of_val(&word),
        )?;
        let pending = self.tsm.with_table(|r| r.fence_pending(g.guest))?;
        let word: u64 = if pending { abi::FENCE_MMIO_FENCED } else { 0 };
        out.put(mem, &zerocopy::byteorder::little_endian::U64::new(word))?;
        DONE
    }

    // ---- host MMIO requests (ours) ------------------------------------------------------

    fn mmio_map(&mut self, buf: &[u8]) -> Step {
        let c: abi::MmioMap = abi::parse(buf)?;
        let sla = SlaAddr::checked(c.tdi_ctx.get(), abi::TDI_CTX_SIZE)?.into_bits();
        let t = self
            .tdi_ctx(sla)
            .ok_or(Fail::Handle(SevStatus::INVALID_TDI_CTX))?;
        let g = self.guest(c.gctx_paddr.get())?;
        let size = page_size(c.page_size)?;
        let gpa = Gpa::try_new(c.gpa.get())?;
        let hpa = Hpa::try_new(c.hpa.get())?;
        self.tsm.map_mmio(t.tdi, g.guest, gpa, hpa, size)?;
        DONE
    }

    fn mmio_block(&mut self, buf: &[u8]) -> Step {
        let c: abi::MmioBlock = abi::parse(buf)?;
        let g = self.guest(c.gctx_paddr.get())?;
        let size = page_size(c.page_size)?;
        self.tsm
            .host_block(g.guest, Gpa::try_new(c.gpa.get())?, size)?;
        DONE
    }

    fn mmio_unmap(&mut self, buf: &[u8]) -> Step {
        let c: abi::MmioUnmap = abi::parse(buf)?;
        let g = self.guest(c.gctx_paddr.get())?;
        let size = page_size(c.page_size)?;
        self.tsm
            .host_unmap(g.guest, Gpa::try_new(c.gpa.get())?, size)?;
        DONE
    }

    fn mmio_zap(&mut self, buf: &[u8]) -> Step {
        let c: abi::MmioZap = abi::parse(buf)?;
        let range = MmioRange::from_raw(c.base.get(), c.pages.get())?;
        self.tsm.host_zap(range)?;
        DONE
    }

    // ---- guest requests -----------------------------------------------------------------

    fn guest_request(&mut self, mem: &mut dyn SystemMemory, buf: &[u8]) -> Step {
        let c: abi::GuestRequest = abi::parse(buf)?;
        spdm(&c.spdm_ctrl)?;
        let (_, t) = self.tdi(c.dev_ctx.get(), c.tdi_ctx.get())?;
        let g = self.guest(c.gctx_paddr.get())?;
        let req = page_aligned(c.req_paddr.get(), abi::PAGE_4K)?;
        if req == abi::strip_c_bit(c.res_paddr.get()) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        // The answer's page first: a message that changes state (START, MMIO_VALIDATE) runs
        // only once its answer is sure to arrive; then the SPDM request page, for a START.
        let res = self.output(mem, c.res_paddr.get(), abi::PAGE_4K, MAX_RESPONSE)?;
        let pages = self.relay_pages(mem, &c.spdm_ctrl)?;
        // A request the firmware writes must not land on the guest's message it still reads.
        if abi::sla_page(c.spdm_ctrl.req.get()) == req {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let continuing = c.reserved.get() & abi::FLAG_CONTINUE != 0;
        let mut hdr = MsgHeader::new_zeroed();
        mem.read(req, hdr.as_mut_bytes())
            .map_err(|_| SevStatus::INVALID_ADDRESS)?;
        if !hdr.well_formed() {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let body = req.saturating_add(u64::from(msg::HDR_SIZE));
        let size = usize::from(hdr.msg_sz.get());
        // Read, answer, and only then write: a malformed request writes nothing.
        let mut out = [0u8; msg::MAX_BODY];
        // A guest's RUN request, recorded once its answer is delivered.
        let mut record_run = false;
        let (rsp_type, len) = match hdr.msg_type {
            msg::MSG_TDI_INFO_REQ => {
                let r: msg::TdiReq = read_body(mem, body, size)?;
                if continuing {
                    // Only a START waits on the device.
                    self.expect_exchange(t.tdi, |_| false)?;
                }
                let rsp = self.msg_tdi_info(&t, &g, &r)?;
                (msg::MSG_TDI_INFO_RSP, write_body(&mut out, &rsp)?)
            }
            msg::MSG_MMIO_VALIDATE_REQ => {
                let r: msg::MmioValidateReq = read_body(mem, body, size)?;
                if continuing {
                    self.expect_exchange(t.tdi, |_| false)?;
                }
                let rsp = self.msg_mmio_validate(&t, &g, &r)?;
                (msg::MSG_MMIO_VALIDATE_RSP, write_body(&mut out, &rsp)?)
            }
            msg::MSG_TDI_RUN_REQ => {
                let r: msg::TdiReq = read_body(mem, body, size)?;
                if continuing {
                    self.expect_exchange(t.tdi, |_| false)?;
                }
                let (rsp, record) = self.msg_tdi_run(&t, &g, &r)?;
                record_run = record;
                (msg::MSG_TDI_RUN_RSP, write_body(&mut out, &rsp)?)
            }
            msg::MSG_SDTE_WRITE_REQ => {
                let r: msg::SdteWriteReq = read_body(mem, body, size)?;
                if continuing {
                    self.expect_exchange(t.tdi, |_| false)?;
                }
                let rsp = self.msg_sdte_write(&t, &g, &r, hdr.msg_vmpck)?;
                (msg::MSG_SDTE_WRITE_RSP, write_body(&mut out, &rsp)?)
            }
            msg::MSG_TDI_START_REQ => {
                let r: msg::TdiReq = read_body(mem, body, size)?;
                let Some(rsp) = self.msg_tdi_start(mem, pages, &t, &g, &r, continuing)? else {
                    // START waits on the device: the guest's answer comes with the last round.
                    return Ok(Completion::Relay(0));
                };
                (msg::MSG_TDI_START_RSP, write_body(&mut out, &rsp)?)
            }
            _ => return Err(SevStatus::INVALID_PARAM.into()),
        };
        let bytes = out.get(..len).ok_or(SevStatus::INVALID_PARAM)?;
        let mut rsp_hdr = MsgHeader::new(rsp_type, len);
        // The answer goes back under the key the request came with (SNP firmware ABI).
        rsp_hdr.msg_vmpck = hdr.msg_vmpck;
        let mut page = [0u8; MAX_RESPONSE];
        let total = usize::from(msg::HDR_SIZE).saturating_add(len);
        let (h, b) = page.split_at_mut(usize::from(msg::HDR_SIZE));
        h.copy_from_slice(rsp_hdr.as_bytes());
        b.get_mut(..len)
            .ok_or(SevStatus::INVALID_PARAM)?
            .copy_from_slice(bytes);
        res.deliver(mem, page.get(..total).ok_or(SevStatus::INVALID_PARAM)?)?;
        if record_run {
            self.update_tdi(t.sla, |x| x.run_requested = true);
        }
        DONE
    }

    /// The guest's RUN request: recorded (the `bool`) for the TDI the guest names, bound to it
    /// and CONFIG_LOCKED; answered SUCCESS and not recorded when it runs already. Otherwise
    /// the answer says why and nothing is recorded: the core's `TdiNotBound` / `NotOwner` for
    /// a TDI that is not the guest's, `INVALID_PARAM` for the guest's own TDI under another
    /// ID, `INVALID_TDI_STATE` for one in ERROR or being unbound.
    fn msg_tdi_run(
        &self,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::TdiReq,
    ) -> Result<(msg::TdiStartRsp, bool), Fail> {
        if r.reserved.iter().any(|b| *b != 0) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let state = self.tsm.tdi(t.tdi)?.state;
        let (outcome, record) = if self.names(t, g, r.guest_device_id.get())? {
            match state {
                TdiState::Locked { .. } => (Outcome::SUCCESS, true),
                TdiState::Run { .. } => (Outcome::SUCCESS, false),
                _ => (Outcome::plain(SevStatus::INVALID_TDI_STATE), false),
            }
        } else if state.owner() == Some(g.guest) {
            (Outcome::plain(SevStatus::INVALID_PARAM), false)
        } else {
            match transition(state, Event::Start(g.guest)) {
                Err(e) => (Outcome::from_core(Err(e)), false),
                Ok(_) => (Outcome::plain(SevStatus::INVALID_PARAM), false),
            }
        };
        let mut rsp = msg::TdiStartRsp::new_zeroed();
        rsp.guest_device_id = r.guest_device_id;
        rsp.status = outcome.status.0.into();
        rsp.detail = outcome.detail.into();
        Ok((rsp, record))
    }

    /// The TDI guest `g` knows by guest device ID `id`: the one TDI bound to `g` under that
    /// ID (TDI_BIND keeps the IDs of one guest's TDIs distinct), if any.
    fn named_tdi(&self, g: &GuestCtx, id: u16) -> Result<Option<TdiCtx>, Fail> {
        for x in &self.tdis {
            if x.guest_device_id == id && self.tsm.tdi(x.tdi)?.state.owner() == Some(g.guest) {
                return Ok(Some(*x));
            }
        }
        Ok(None)
    }

    /// Whether the TDI context the host handed in, `t`, is the TDI the guest names by `id`.
    /// A guest request acts only on the TDI the guest named, never on another the host picks.
    fn names(&self, t: &TdiCtx, g: &GuestCtx, id: u16) -> Result<bool, Fail> {
        Ok(self.named_tdi(g, id)?.is_some_and(|n| n.sla == t.sla))
    }

    fn msg_tdi_info(
        &self,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::TdiReq,
    ) -> Result<msg::TdiInfoRsp, Fail> {
        if r.reserved.iter().any(|b| *b != 0) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let mut rsp = msg::TdiInfoRsp::new_zeroed();
        rsp.guest_device_id = r.guest_device_id;
        if self.names(t, g, r.guest_device_id.get())? {
            // One copy of the record: state and digest from the same bind.
            let record = self.tsm.tdi(t.tdi)?;
            let status: u16 = match record.state {
                TdiState::Locked { .. } => 1,
                TdiState::Run { .. } => 2,
                _ => 0,
            };
            rsp.tdi_status = status.into();
            // The session's digest of the report the bind took, while locked or running.
            if status != 0 {
                if record.state.owner() != Some(g.guest) {
                    return Err(Error::NotOwner.into());
                }
                let digest = record.report_digest.ok_or(Error::Inconsistent)?;
                rsp.interface_report_digest.copy_from_slice(&digest);
            }
            rsp.lock_flags = u32::from(t.lock_flags).into();
            rsp.tdi_report_count = t.reports.into();
        }
        Ok(rsp)
    }

    /// The guest's START: `None` while it waits on the device (the request is in the SPDM
    /// request page), else the answer, which carries the start's own outcome (the core's
    /// refusal, or the device's: a START the device refuses or garbles puts the TDI in ERROR).
    /// A continuation that does not match the outstanding START, or whose relay fails, is
    /// refused as a command and changes nothing.
    fn msg_tdi_start(
        &self,
        mem: &mut dyn SystemMemory,
        pages: RelayPages,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::TdiReq,
        continuing: bool,
    ) -> Result<Option<msg::TdiStartRsp>, Fail> {
        if r.reserved.iter().any(|b| *b != 0) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let state = self.tsm.tdi(t.tdi)?.state;
        let names = self.names(t, g, r.guest_device_id.get())?;
        if continuing {
            self.expect_exchange(t.tdi, |op| op == DeviceOp::Start { guest: g.guest })?;
            // The message still names the TDI whose START it continues.
            if !names {
                return Err(SevStatus::INVALID_PARAM.into());
            }
        }
        let outcome = if names {
            let started = self.relay_call(mem, pages, t.tdi, continuing, |tsm, out| {
                tsm.guest_start(g.guest, t.tdi, out)
            })?;
            match started {
                Ok(Completion::Relay(_)) => return Ok(None),
                Err(e) if continuing && relay_refusal(e) => return Err(e.into()),
                other => Outcome::from_core(other),
            }
        } else if state.owner() == Some(g.guest) {
            // The guest's own TDI, but the guest named another one (or none): the host may
            // not choose which of the guest's TDIs starts.
            Outcome::plain(SevStatus::INVALID_PARAM)
        } else {
            // Not the guest's TDI: the core's refusal says why (`TdiNotBound`, `NotOwner`),
            // computed without touching anything.
            match transition(state, Event::Start(g.guest)) {
                Err(e) => Outcome::from_core(Err(e)),
                Ok(_) => Outcome::plain(SevStatus::INVALID_PARAM),
            }
        };
        let mut rsp = msg::TdiStartRsp::new_zeroed();
        rsp.guest_device_id = r.guest_device_id;
        rsp.status = outcome.status.0.into();
        rsp.detail = outcome.detail.into();
        Ok(Some(rsp))
    }

    /// The guest's SDTE write, sent under VMPCK `vmpck` (the sender's VMPL): answered in the
    /// response's status, changing nothing unless it is `Success`. Reserved bytes of the
    /// message are `INVALID_PARAM` (as in every message).
    fn msg_sdte_write(
        &self,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::SdteWriteReq,
        vmpck: u8,
    ) -> Result<msg::SdteWriteRsp, Fail> {
        if r.reserved.iter().any(|b| *b != 0) {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let mut rsp = msg::SdteWriteRsp::new_zeroed();
        rsp.guest_device_id = r.guest_device_id;
        rsp.status = (self.sdte_write(t, g, r, vmpck)? as u16).into();
        Ok(rsp)
    }

    /// The owner's write of its CONFIG_LOCKED or RUN TDI's sDTE, with only the bits a guest
    /// may set (V, IR, IW, VMPL, vTOM), sent by VMPL `sender`. In the order of MMIO_VALIDATE's
    /// checks: unbound (`TdiNotBound`), not this guest's TDI under that ID (`InvalidTdi`), in
    /// ERROR or unbinding (`TdiNotBound`), then the bits (`Reserved`), then a VMPL below the
    /// sender's (ours `VmplBelowSender`). A pending entry: the core's accept and the guest's
    /// part in one table lock (`guest_dma_accept_with`). A valid entry stays as it is until
    /// the unbind: the same bits again are `Success`, any other write ours `KeptUntilUnbind`
    /// (V clear, Linux's invalidation, included; `Success` while the entry was never valid).
    fn sdte_write(
        &self,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::SdteWriteReq,
        sender: u8,
    ) -> Result<msg::SdteWriteStatus, Fail> {
        use msg::SdteWriteStatus as Sw;
        use tsm_core::dma::DmaState;
        let record = self.tsm.tdi(t.tdi)?;
        if record.state.owner().is_none() {
            return Ok(Sw::TdiNotBound);
        }
        if !self.names(t, g, r.guest_device_id.get())? {
            return Ok(Sw::InvalidTdi);
        }
        if !matches!(record.state, TdiState::Locked { .. } | TdiState::Run { .. }) {
            return Ok(Sw::TdiNotBound);
        }
        let sdte = r.sdte;
        if !sdte.guest_only() {
            return Ok(Sw::Reserved);
        }
        // An invalidation grants nothing; a valid entry's VMPL is the device's privilege.
        // `sender` is the header's unauthenticated `msg_vmpck` (no VMPCK is modelled).
        if sdte.valid() && sdte.vmpl() < sender {
            return Ok(Sw::VmplBelowSender);
        }
        // An invalidation with no context has nothing to invalidate.
        if !sdte.valid() && record.dma.is_none() {
            return Ok(Sw::Success);
        }
        let guest = g.guest;
        let answer = self.tsm.guest_dma_accept_with(
            guest,
            t.tdi,
            |rmp, iface, state| {
                let active = state == DmaState::Active;
                if !sdte.valid() {
                    return Err(if active {
                        Sw::KeptUntilUnbind
                    } else {
                        Sw::Success
                    });
                }
                // Refused rather than fenced: a change holds only once an ASID fence completes
                // (later, `Rmp::raise_fence`), and the unbind already raises and awaits one.
                let same = rmp
                    .sdtes()
                    .of(guest, iface)
                    .is_ok_and(|s| s.sdte.guest_part() == sdte.guest_part());
                if active && !same {
                    return Err(Sw::KeptUntilUnbind);
                }
                Ok(())
            },
            // Cannot fail: the core accepted the context in this lock, so the entry is valid.
            |rmp, iface| rmp.sdte_write_guest(guest, iface, &sdte),
        )?;
        Ok(answer.err().unwrap_or(Sw::Success))
    }

    fn msg_mmio_validate(
        &self,
        t: &TdiCtx,
        g: &GuestCtx,
        r: &msg::MmioValidateReq,
    ) -> Result<msg::MmioValidateRsp, Fail> {
        let known = msg::VALIDATE_FLAG_VALIDATED | msg::VALIDATE_FLAG_FORCE;
        if r.reserved0
            .iter()
            .chain(r.reserved2.iter())
            .any(|b| *b != 0)
            || r.flags.get() & !known != 0
        {
            return Err(SevStatus::INVALID_PARAM.into());
        }
        let mut rsp = msg::MmioValidateRsp::new_zeroed();
        rsp.guest_device_id = r.guest_device_id;
        rsp.subrange_base = r.subrange_base;
        rsp.subrange_page_count = r.subrange_page_count;
        rsp.range_offset = r.range_offset;
        rsp.range_id = r.range_id;
        let (status, changed) = match self.validate(t, g, r) {
            Ok(changed) => (Mv::Success, changed),
            Err(s) => (s, false),
        };
        rsp.status = (status as u16).into();
        if changed {
            rsp.flags = msg::VALIDATE_FLAG_CHANGED.into();
        }
        Ok(rsp)
    }

    fn validate(&self, t: &TdiCtx, g: &GuestCtx, r: &msg::MmioValidateReq) -> Result<bool, Mv> {
        let state = self.tsm.tdi(t.tdi).map_err(|_| Mv::InvalidTdi)?.state;
        if state.owner().is_none() {
            return Err(Mv::TdiUnbound);
        }
        // Another guest's TDI, or not the one this guest names by that ID.
        if !self
            .names(t, g, r.guest_device_id.get())
            .map_err(|_| Mv::InvalidTdi)?
        {
            return Err(Mv::InvalidTdi);
        }
        if !matches!(state, TdiState::Locked { .. } | TdiState::Run { .. }) {
            return Err(Mv::TdiUnbound);
        }
        let ranges = self.tsm.owned_ranges(t.tdi).map_err(|_| Mv::InvalidTdi)?;
        let range = ranges
            .get(usize::from(r.range_id.get()))
            .ok_or(Mv::NotReported)?;
        let pages = u64::from(r.subrange_page_count.get());
        let offset = u64::from(r.range_offset.get());
        if pages == 0
            || offset
                .checked_add(pages)
                .is_none_or(|end| end > range.pages())
        {
            return Err(Mv::OutOfRange);
        }
        let hpa = range
            .base()
            .checked_add(offset.saturating_mul(abi::PAGE_4K))
            .ok_or(Mv::OutOfRange)?;
        let gpa = Gpa::try_new(r.subrange_base.get()).map_err(|_| Mv::NotMapped)?;
        if !gpa.is_aligned(PageSize::Size4K) {
            return Err(Mv::NotMapped);
        }
        let flags = r.flags.get();
        let (want, force) = (
            flags & msg::VALIDATE_FLAG_VALIDATED != 0,
            flags & msg::VALIDATE_FLAG_FORCE != 0,
        );
        // What the guest read of the range in its report: FIRST_PAGE, offset included.
        let index = u8::try_from(r.range_id.get()).map_err(|_| Mv::NotReported)?;
        let first = self
            .tsm
            .guest_read(g.guest, t.tdi, GuestField::ReportedRange(index))
            .map_err(|_| Mv::NotReported)?;
        self.tsm
            .guest_accept(g.guest, gpa, |rmp, check| {
                // The core's rule, once for the subrange: its first host page is the one the
                // guest read in the report. The RMP walk below then holds every page of it to
                // the subrange's guest addresses (a page assigned elsewhere: NOT_MAPPED), in
                // one pass over the RMP entries of `[hpa, hpa + pages)`.
                let reported = offset
                    .checked_mul(abi::PAGE_4K)
                    .and_then(|b| first.checked_add(b))
                    .ok_or(Mv::OutOfRange)?;
                check
                    .check(hpa, PageSize::Size4K, reported)
                    .map_err(|_| Mv::NotMapped)?;
                rmp.validate(g.guest, hpa, gpa, pages, want, force)
                    .map_err(|f| match f {
                        ValidateFault::NotAssigned => Mv::NotAssigned,
                        ValidateFault::NotMapped => Mv::NotMapped,
                        ValidateFault::NotUniform => Mv::NotUniform,
                    })
            })
            .map_err(|e| match e {
                // The page at the subrange's start is another TDI's (or another guest's).
                Error::NotOwner | Error::HpaNotOwned => Mv::NotMapped,
                Error::TdiInError | Error::UnbindInProgress | Error::TdiNotBound => Mv::TdiUnbound,
                _ => Mv::NotAssigned,
            })?
    }

    // ---- the host's RMP instructions ----------------------------------------------------

    /// The host's RMPUPDATE of page `hpa`: refused with `FAIL_PERMISSION` for a private MMIO
    /// page (immutable), `FAIL_INUSE` for any other page a bound TDI owns, `FAIL_INPUT` outside
    /// the window or for a malformed guest address; nothing changes then. No capacity of the
    /// model's own refuses it: the RMP's index holds every page of the window as a host page.
    pub fn host_rmpupdate(&self, hpa: u64, update: RmpUpdate) -> Result<(), RmpFault> {
        self.host_rmp_check(hpa, 1)?;
        self.tsm
            .with_table(|r| r.host_rmpupdate(hpa, update))
            .map_err(|_| RmpFault::InUse)?
    }

    /// The host's PSMASH of the 2M page at `hpa`, refused like [`Sev::host_rmpupdate`].
    pub fn host_psmash(&self, hpa: u64) -> Result<(), RmpFault> {
        if hpa & PageSize::Size2M.offset_mask() != 0 {
            return Err(RmpFault::Input);
        }
        self.host_rmp_check(hpa, PageSize::Size2M.base_pages())?;
        self.tsm
            .with_table(|r| r.host_psmash(hpa))
            .map_err(|_| RmpFault::InUse)?
    }

    fn host_rmp_check(&self, hpa: u64, pages: u64) -> Result<(), RmpFault> {
        let range = MmioRange::from_raw(hpa, pages).map_err(|_| RmpFault::Input)?;
        let immutable = self
            .tsm
            .with_table(|r| {
                (0..pages).any(|i| {
                    i.checked_mul(abi::PAGE_4K)
                        .and_then(|o| hpa.checked_add(o))
                        .and_then(|a| r.entry(a))
                        .is_some_and(|e| e.immutable())
                })
            })
            .map_err(|_| RmpFault::InUse)?;
        if immutable {
            return Err(RmpFault::Permission);
        }
        match self.tsm.host_zap(range) {
            Ok(()) => Ok(()),
            Err(_) => Err(RmpFault::InUse),
        }
    }
}

/// Sets (`true`) or clears [`abi::FLAG_CONTINUE`] in the host's buffer of a command that
/// relays: the written-back buffer the host reissues.
fn mark_continue(buf: &mut [u8], set: bool) {
    let end = abi::CONTINUE_WORD.saturating_add(4);
    if let Some(word) = buf
        .get_mut(abi::CONTINUE_WORD..end)
        .and_then(|w| <&mut [u8; 4]>::try_from(w).ok())
    {
        let v = u32::from_le_bytes(*word);
        let v = if set {
            v | abi::FLAG_CONTINUE
        } else {
            v & !abi::FLAG_CONTINUE
        };
        *word = v.to_le_bytes();
    }
}

/// The BARs the host lists at `at` for DEV_CREATE (ours, [`abi::BarList`]), read once: none
/// for a null address. The list must be 8-byte aligned, below 2^52 and within one page, and
/// readable (`INVALID_ADDRESS`), with its reserved word zero (`INVALID_PARAM`); more entries
/// than it holds is the core's `TooManyRanges`, a BAR that is no range the core's status
/// (`InvalidAddress`, `Misaligned`, `InvalidRange`).
fn read_bars(
    mem: &dyn SystemMemory,
    at: u64,
) -> Result<heapless::Vec<MmioRange, { abi::MAX_BAR_ENTRIES }>, Fail> {
    let mut bars = heapless::Vec::new();
    if at == 0 {
        return Ok(bars);
    }
    let at = page_aligned(at, abi::BAR_LIST_ALIGN)?;
    let size = core::mem::size_of::<abi::BarList>();
    let within_page = (at & (abi::PAGE_4K - 1))
        .checked_add(u64::try_from(size).map_err(|_| SevStatus::INVALID_ADDRESS)?)
        .is_some_and(|end| end <= abi::PAGE_4K);
    if !within_page {
        return Err(SevStatus::INVALID_ADDRESS.into());
    }
    let mut list = abi::BarList::new_zeroed();
    mem.read(at, list.as_mut_bytes())
        .map_err(|_| SevStatus::INVALID_ADDRESS)?;
    if list.reserved.get() != 0 {
        return Err(SevStatus::INVALID_PARAM.into());
    }
    let count = usize::try_from(list.count.get()).map_err(|_| Error::TooManyRanges)?;
    if count > abi::MAX_BAR_ENTRIES {
        return Err(Error::TooManyRanges.into());
    }
    for bar in list.bars.iter().take(count) {
        let range = MmioRange::from_raw(bar.base.get(), bar.pages.get())?;
        bars.push(range).map_err(|_| Error::TooManyRanges)?;
    }
    Ok(bars)
}

/// Writes a data object (`id`, `kind`) about `who` holding `payload` to a checked output SLA
/// (sev-linux-buffers.md section 2.2): `payload_sz` the object's length padded to 32 bytes,
/// the rest of the buffer header zero, the object's header at 0x40, then the payload, zeros to
/// the padded end. A payload longer than [`MAX_REPORT`] is refused before anything is written.
fn write_blob(
    mem: &mut dyn SystemMemory,
    out: Output,
    (id, kind): (u32, u8),
    who: RequesterId,
    payload: &[u8],
) -> Result<(), Fail> {
    if payload.len() > MAX_REPORT {
        return Err(SevStatus::INVALID_PARAM.into());
    }
    let hdr_len = core::mem::size_of::<abi::DobjBlobHdr>();
    let length = hdr_len.saturating_add(payload.len());
    let padded = length.next_multiple_of(abi::SLA_PAYLOAD_ALIGN);
    let mut bytes = [0u8; BLOB_OUT];
    let to_u32 = |n: usize| u32::try_from(n).map_err(|_| SevStatus::INVALID_PARAM);
    bytes
        .get_mut(..4)
        .ok_or(SevStatus::INVALID_PARAM)?
        .copy_from_slice(&to_u32(padded)?.to_le_bytes());
    let [seg, _] = who.segment().to_le_bytes();
    let hdr = abi::DobjBlobHdr {
        id: id.into(),
        length: to_u32(length)?.into(),
        version_minor: abi::DOBJ_VERSION.0,
        version_major: abi::DOBJ_VERSION.1,
        device_id: who.routing_id().into(),
        segment_id: seg,
        kind,
        ..abi::DobjBlobHdr::default()
    };
    let at = abi::DOBJ_OFFSET - PAYLOAD_SZ_AT;
    let end = at.saturating_add(hdr_len);
    bytes
        .get_mut(at..end)
        .ok_or(SevStatus::INVALID_PARAM)?
        .copy_from_slice(hdr.as_bytes());
    bytes
        .get_mut(end..end.saturating_add(payload.len()))
        .ok_or(SevStatus::INVALID_PARAM)?
        .copy_from_slice(payload);
    out.deliver(
        mem,
        bytes
            .get(..at.saturating_add(padded))
            .ok_or(SevStatus::INVALID_PARAM)?,
    )
}

/// Encodes TDI_REPORT's output into `out`: header, one entry per range, trailing length word.
/// Returns its length. A range the TDISP format cannot carry (more than 2^32 - 1 pages) is
/// refused (`InvalidRange`), not under-reported.
fn report_bytes(ranges: &[MmioRange], out: &mut [u8; MAX_REPORT]) -> Result<usize, Fail> {
    let count = u32::try_from(ranges.len()).map_err(|_| Error::TooManyRanges)?;
    let mut header = abi::ReportHeader::new_zeroed();
    header.mmio_range_count = count.into();
    let mut at = 0usize;
    let mut push = |bytes: &[u8]| -> Result<(), Fail> {
        let end = at.checked_add(bytes.len()).ok_or(Error::TooManyRanges)?;
        out.get_mut(at..end)
            .ok_or(Error::TooManyRanges)?
            .copy_from_slice(bytes);
        at = end;
        Ok(())
    };
    push(header.as_bytes())?;
    for (id, r) in ranges.iter().enumerate() {
        let entry = abi::ReportRange {
            first_page: (r.base().as_u64() >> 12).into(),
            number_of_pages: u32::try_from(r.pages())
                .map_err(|_| Error::InvalidRange)?
                .into(),
            attributes: 0.into(),
            range_id: u16::try_from(id).map_err(|_| Error::TooManyRanges)?.into(),
        };
        push(entry.as_bytes())?;
    }
    push(&0u32.to_le_bytes())?;
    Ok(at)
}

fn page_size(code: u8) -> Result<PageSize, Fail> {
    PageSize::from_tdx_level(u64::from(code)).ok_or(Error::InvalidPageSize.into())
}

fn read_body<T: FromBytes + IntoBytes>(
    mem: &dyn SystemMemory,
    at: u64,
    size: usize,
) -> Result<T, Fail> {
    if size != core::mem::size_of::<T>() {
        return Err(SevStatus::INVALID_PARAM.into());
    }
    let mut v = T::new_zeroed();
    mem.read(at, v.as_mut_bytes())
        .map_err(|_| SevStatus::INVALID_ADDRESS)?;
    Ok(v)
}

fn write_body<T: IntoBytes + zerocopy::Immutable>(out: &mut [u8], v: &T) -> Result<usize, Fail> {
    let bytes = v.as_bytes();
    out.get_mut(..bytes.len())
        .ok_or(SevStatus::INVALID_PARAM)?
        .copy_from_slice(bytes);
    Ok(bytes.len())
}
