//! The SEV-TIO command-buffer ABI as a scenario backend: every operation is encoded as the
//! SEV-TIO (or SNP) command a host driver would issue, run through the firmware's dispatcher,
//! and the answer decoded back to a core status.
//!
//! Decoding: the AMD status is coarser than the core's (README of platform-sev, "Status
//! mapping"), so the firmware reports the core code beside it ([`Outcome::detail`]); we use it
//! when present and fall back to the coarse [`Outcome::to_core`] mapping otherwise.
//!
//! Handles: the host knows devices and TDIs by the context SLAs it donated and guests by their
//! context pages; the core's handles the interpreter sees are read back from the firmware's
//! context tables (as a host reads TDI_INFO). A handle the firmware never gave out becomes a
//! context address nobody registered, which the firmware refuses as an unknown context.
//!
//! The device: the backend is the host, and owns the device behind the DOE mailbox (a
//! [`ModelDevice`]). Bind, start, check and unbind go through the command that needs the device
//! (TDI_BIND, GUEST_REQUEST with TDI_START, TDI_STATUS, TDI_UNBIND); its `SPDM_REQUEST` (0x32)
//! hands back the request the firmware wrote to `spdm_ctrl.req`, as a DOE object, and
//! [`Backend::respond`] writes the device's answer to `spdm_ctrl.resp` as Linux does and
//! reissues the TDI's saved command, written back with `FLAG_CONTINUE`, as Linux's
//! `sev_tio_continue` does (`platform_sev::host`). The BARs the scenario gives a device go into
//! the BAR list DEV_CREATE names (the firmware does not read configuration space).

use platform_sev::Sev;
use platform_sev::abi::{self, Command, SlaAddr};
use platform_sev::guest_msg::{self as msg, MsgHeader};
use platform_sev::host::{self as linux, SharedDevice};
use platform_sev::memory::{PageMemory, SystemMemory};
use platform_sev::pfn::Pfn;
use platform_sev::rmp::{Rmp, RmpEntry, RmpMemory, RmpStore, rmp_index_words};
use platform_sev::status::{Outcome, SevStatus};
use platform_sev::zerocopy::byteorder::little_endian::{U16, U32, U64};
use platform_sev::zerocopy::{FromZeros, IntoBytes};
use tsm_core::device_model::{DeviceEvent, Misbehaviour, ModelDevice};
use tsm_core::relay::doe;
use tsm_core::relay::host::RelayHost;
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, Leaf, MmioRange, ModelSession, PageSize,
    RequesterId, ReservedMemory, SecureTable, TdiId, TdiState, TdispState, TsmResult,
};

use crate::backend::{Backend, DeviceCall, FlushControl, HostInvalidations, RelayBuf};

/// First host page the backend's RMP covers: below every BAR the scenarios use.
pub const RMP_BASE: u64 = 0x7fe0_0000;
/// Pages the backend's RMP covers (to 0xa020_0000, past every BAR the scenarios use).
pub const RMP_PAGES: usize = 0x2_0400;
/// Index words the backend's RMP needs beside its entries.
pub const RMP_INDEX_WORDS: usize = rmp_index_words(RMP_PAGES);
/// Where the backend's status, message, report, SPDM and BAR list pages live.
pub const MEM_BASE: u64 = 0x1_0000_0000;
/// Pages of system memory the backend uses: status, guest request, guest response, report,
/// the SPDM request and response buffers (`spdm_ctrl.req`, `.resp`: one pair for every device,
/// read or written right after each command) and the BAR list.
pub const MEM_PAGES: usize = 7;
const STATUS_PAGE: u64 = 0;
const REQ_PAGE: u64 = 1;
const RES_PAGE: u64 = 2;
const REPORT_PAGE: u64 = 3;
const SPDM_REQ_PAGE: u64 = 4;
const SPDM_RESP_PAGE: u64 = 5;
const BAR_LIST_PAGE: u64 = 6;
/// Guest context pages the backend donates, one per guest created.
const GCTX_BASE: u64 = 0x2_0000_0000;
/// Page frames of the device and TDI context SLAs the backend donates.
const CTX_PFN_BASE: u64 = 0x30_0000;
/// Page frames of context addresses nobody registered (handles the firmware never gave out).
const UNKNOWN_PFN_BASE: u64 = 0x40_0000;

/// The RMP memory the backend's firmware keeps: entries and index in `'a` memory.
pub type SevRmpMemory<'a> = RmpStore<&'a mut [RmpEntry], &'a mut [u32]>;

/// The firmware the backend drives: SEV-TIO over an RMP in `'a` memory, sealed with the model
/// session its device shares.
pub type SevFirmware<'a> = Sev<SevRmpMemory<'a>, ModelSession>;

/// A command buffer: the mailbox's 128 bytes, aligned as the firmware requires.
#[derive(Clone)]
#[repr(C, align(8))]
struct CmdBuf([u8; abi::MAX_COMMAND_LENGTH]);

/// A command the host saved when it answered `SPDM_REQUEST` (Linux's `cmd_data`), kept per
/// TDI so held exchanges of several TDIs can interleave: reissued, as written back, with each
/// answer.
#[derive(Clone)]
struct Saved {
    tdi: TdiId,
    id: abi::CommandId,
    buf: CmdBuf,
    len: usize,
    /// The guest's TDI_START message, put back on the request page before a reissue (the
    /// page is shared by every guest message the backend sends).
    start: Option<msg::TdiReq>,
}

impl<S: RmpMemory> FlushControl for Rmp<S> {
    /// Holds the guest's ASID fences (they stay pending), or completes them and stops holding.
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        self.hold_fences_of(guest, defer);
    }

    /// The sDTE is valid and names the guest's ASID.
    fn dma_translates(&self, guest: GuestId, iface: tsm_core::InterfaceId) -> bool {
        self.sdtes().get(iface).is_some_and(|s| {
            s.guest == guest && s.sdte.valid() && s.sdte.asid() == self.asid(guest)
        })
    }

    /// The sDTE of `iface`: valid, or blocked (V clear) after it was valid with no fence of
    /// its ASID raised after the block complete (the IOTLB may still hold what it
    /// translated: SEV's IOTLB invalidation is the ASID fence), naming the ASID of a guest.
    fn iommu_reach(&self, iface: tsm_core::InterfaceId) -> tsm_core::dma::DmaReach {
        use tsm_core::dma::DmaReach;
        let Some(s) = self.sdtes().get(iface) else {
            return DmaReach::SharedOnly;
        };
        let asid = s.sdte.asid();
        let named = self
            .fences()
            .iter()
            .enumerate()
            .find(|(_, f)| asid != 0 && f.asid() == asid);
        let Some((slot, fence)) = named else {
            return DmaReach::SharedOnly;
        };
        let cached = s.translated && fence.done() <= s.blocked_at;
        match u16::try_from(slot) {
            Ok(slot) if s.sdte.valid() || cached => DmaReach::Private(GuestId::from_slot(slot)),
            _ => DmaReach::SharedOnly,
        }
    }

    /// The guest's pending ASID fence completes (as the host sees it in TIO_ASID_FENCE_STATUS);
    /// its fences stay held (a fence is pending only while held).
    fn complete_invalidations(&mut self, guest: GuestId, _: tsm_core::InterfaceId) {
        if self.fence_pending(guest) {
            self.hold_fences_of(guest, false);
            self.hold_fences_of(guest, true);
        }
    }

    /// SEV's IOTLB invalidation is the ASID fence, which invalidates the TLB as well: held,
    /// every fence of the guest waits for the host.
    fn hold_invalidations(&mut self, guest: GuestId, hold: bool) {
        self.hold_fences_of(guest, hold);
    }
}

/// The SEV-TIO backend: the firmware, the host's memory and the device.
pub struct SevBackend<'a> {
    /// The firmware.
    pub sev: SevFirmware<'a>,
    /// System memory the commands point into.
    pub mem: PageMemory<MEM_PAGES>,
    /// The device behind the DOE mailbox (shared so a [`RelayHost`] can relay from many
    /// threads, see [`SevBackend::host`]).
    pub device: SharedDevice,
    saved: heapless::Vec<Saved, { tsm_core::capacity::MAX_TDIS }>,
    next: u64,
    invalidations: HostInvalidations,
}

fn length<C: Command>() -> U32 {
    U32::new(u32::try_from(abi::len_of::<C>()).unwrap_or(0))
}

/// The buffer length of a command that relays.
fn command_len(id: abi::CommandId) -> usize {
    match id {
        abi::TIO_TDI_BIND => abi::len_of::<abi::TdiBind>(),
        abi::TIO_GUEST_REQUEST => abi::len_of::<abi::GuestRequest>(),
        abi::TIO_TDI_STATUS => abi::len_of::<abi::TdiStatus>(),
        _ => abi::len_of::<abi::TdiUnbind>(),
    }
}

/// Whether a saved command buffer is a continuation ([`abi::FLAG_CONTINUE`] at 0x04).
fn continuing(buf: &[u8]) -> bool {
    buf.get(abi::CONTINUE_WORD..abi::CONTINUE_WORD.saturating_add(4))
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .is_some_and(|w| u32::from_le_bytes(w) & abi::FLAG_CONTINUE != 0)
}

/// The SLA of page frame `pfn` (0, a null SLA the firmware refuses, past 40 bits).
fn sla(pfn: u64) -> u64 {
    Pfn::try_new(pfn).map_or(0, |p| SlaAddr::new().with_pfn(p).into_bits())
}

fn size_code(size: PageSize) -> u8 {
    match size {
        PageSize::Size4K => abi::MMIO_SIZE_4K,
        PageSize::Size2M => abi::MMIO_SIZE_2M,
        PageSize::Size1G => abi::MMIO_SIZE_1G,
    }
}

/// The system memory the firmware is given at init (the command-buffer pages): never MMIO.
pub fn system_memory() -> TsmResult<ReservedMemory> {
    let pages = u64::try_from(MEM_PAGES).map_err(|_| Error::InvalidRange)?;
    ReservedMemory::from_ranges(&[MmioRange::from_raw(MEM_BASE, pages)?])
}

impl<'a> SevBackend<'a> {
    /// A firmware whose RMP lives in `rmp` (at least [`RMP_PAGES`] entries are used) with its
    /// index in `index` (at least [`RMP_INDEX_WORDS`] words).
    pub fn new(rmp: &'a mut [RmpEntry], index: &'a mut [u32]) -> TsmResult<Self> {
        let window = rmp.get_mut(..RMP_PAGES).ok_or(Error::SecureTableFull)?;
        Self::with_rmp(window, index, RMP_BASE, system_memory()?)
    }

    /// A firmware whose RMP covers one page per entry of `rmp` from host address `base`, its
    /// index in `index` (at least `rmp_index_words(rmp.len())` words), and which reserves
    /// `system_memory` at init (it must include [`system_memory`]'s pages, where the commands'
    /// buffers live). A smaller window than [`SevBackend::new`]'s makes every walk of the
    /// entries shorter (the differential test's world fits in a few thousand pages).
    pub fn with_rmp(
        rmp: &'a mut [RmpEntry],
        index: &'a mut [u32],
        base: u64,
        system_memory: ReservedMemory,
    ) -> TsmResult<Self> {
        let rmp = Rmp::new(Hpa::try_new(base)?, RmpStore::new(rmp, index))
            .map_err(|_| Error::InvalidAddress)?;
        let mut mem = PageMemory::new(MEM_BASE);
        // What Linux writes into the response buffer it allocates at DEV_CONNECT.
        let resp = mem.page(SPDM_RESP_PAGE);
        linux::response_init(&mut mem, resp).map_err(|_| Error::InvalidAddress)?;
        let mut sev = Sev::new(rmp, ModelSession::model(), system_memory);
        // Linux's `sev_tio_init_locked` before anything else: TIO_STATUS, TIO_INIT,
        // TIO_STATUS (sev-linux-buffers.md section 5), the status page written to page 0.
        let status_page = mem.page(STATUS_PAGE);
        linux::tio_init(&mut sev, &mut mem, status_page).map_err(|_| Error::Inconsistent)?;
        Ok(Self {
            sev,
            mem,
            device: SharedDevice::new(ModelDevice::model()),
            saved: heapless::Vec::new(),
            next: 0,
            invalidations: HostInvalidations::new(),
        })
    }

    /// A host relaying for the firmware's core to this backend's device, for callers that
    /// drive the core itself from many threads (the concurrency tests, the boot).
    pub fn host(&self) -> RelayHost<'_, Rmp<SevRmpMemory<'a>>, ModelSession> {
        RelayHost::new(self.sev.tsm(), &self.device)
    }

    /// The device.
    pub fn device_mut(&mut self) -> &mut ModelDevice {
        self.device.get_mut()
    }

    fn fresh(&mut self) -> u64 {
        self.next = self.next.wrapping_add(1);
        self.next
    }

    fn page(&self, i: u64) -> u64 {
        self.mem.page(i)
    }

    /// Issues `cmd` through the dispatcher.
    pub fn issue<C: Command>(&mut self, cmd: &C) -> Outcome {
        let mut buf = CmdBuf([0; abi::MAX_COMMAND_LENGTH]);
        if cmd.write_to_prefix(&mut buf.0).is_err() {
            return Outcome::plain(SevStatus::INVALID_PARAM);
        }
        self.sev.command(&mut self.mem, C::ID, &mut buf.0)
    }

    /// The device's SPDM buffers (Linux allocates them at DEV_CONNECT and names them in every
    /// later command of the device); scratch and output unused.
    fn spdm_ctrl(&self) -> abi::SpdmCtrl {
        abi::SpdmCtrl {
            req: sla(self.page(SPDM_REQ_PAGE) >> 12).into(),
            resp: sla(self.page(SPDM_RESP_PAGE) >> 12).into(),
            ..abi::SpdmCtrl::default()
        }
    }

    /// Issues a command that may need the device, as the host does: on `SPDM_REQUEST` the
    /// written-back buffer is saved for `tdi` and the request the firmware wrote is returned
    /// in `request` (`Relay(n)`, a whole DOE object); otherwise the outcome.
    fn issue_relayed(&mut self, mut saved: Saved, request: &mut RelayBuf) -> TsmResult<Completion> {
        if let Some(start) = &saved.start {
            self.put_guest_msg(msg::MSG_TDI_START_REQ, start.as_bytes())?;
        }
        let len = saved.len;
        let first_issue = !continuing(&saved.buf.0);
        let buf = saved.buf.0.get_mut(..len).ok_or(Error::Inconsistent)?;
        let out = self.sev.command(&mut self.mem, saved.id, buf);
        let is_start = saved.start.is_some();
        if out.status == SevStatus::SPDM_REQUEST {
            self.save(saved)?;
            return self.read_request(request);
        }
        // SPDM_REQUEST went back to the host above: only a refusal stops what follows.
        let _ = out.to_core()?;
        if is_start {
            return self.start_answer();
        }
        if saved.id == abi::TIO_TDI_STATUS && first_issue {
            return self.unbound_status(saved.tdi);
        }
        out.to_core()
    }

    /// A TDI_STATUS the firmware answered at once for `tdi`: CONFIG_UNLOCKED (the status page)
    /// of an unbound TDI (the firmware reads it without the device, as Linux's `tdi_unbind`
    /// wants it) is what the scenarios, in the core's words, call `TdiNotBound`. A TDI being
    /// unbound also reads CONFIG_UNLOCKED; the core's record tells the two apart.
    fn unbound_status(&self, tdi: TdiId) -> TsmResult<Completion> {
        let mut data = abi::TdiStatusData::new_zeroed();
        self.mem
            .read(self.page(STATUS_PAGE), data.as_mut_bytes())
            .map_err(|_| Error::InvalidAddress)?;
        if data.tdisp_state == TdispState::ConfigUnlocked as u8
            && self.sev.tsm().tdi(tdi)?.state == TdiState::Unbound
        {
            return Err(Error::TdiNotBound);
        }
        Ok(Completion::Done)
    }

    /// Keeps `saved` as its TDI's command to reissue.
    fn save(&mut self, saved: Saved) -> TsmResult<()> {
        self.saved.retain(|s| s.tdi != saved.tdi);
        self.saved.push(saved).map_err(|_| Error::Inconsistent)
    }

    /// The request the firmware wrote to `spdm_ctrl.req`, read as Linux reads it, as the DOE
    /// object `pci_doe` sends.
    fn read_request(&self, request: &mut RelayBuf) -> TsmResult<Completion> {
        let mut payload = [0u8; platform_sev::relay::WINDOW];
        let (t, len) = linux::read_request(&self.mem, self.page(SPDM_REQ_PAGE), &mut payload)
            .ok_or(Error::Inconsistent)?;
        let bytes = payload.get(..len).ok_or(Error::Inconsistent)?;
        let n = doe::encode(request, t, bytes).map_err(|_| Error::Inconsistent)?;
        Ok(Completion::Relay(n))
    }

    /// The outcome the guest's TDI_START answer carries.
    fn start_answer(&self) -> TsmResult<Completion> {
        let mut rsp = msg::TdiStartRsp::new_zeroed();
        let at = self.page(RES_PAGE).wrapping_add(u64::from(msg::HDR_SIZE));
        self.mem
            .read(at, rsp.as_mut_bytes())
            .map_err(|_| Error::InvalidAddress)?;
        Outcome {
            status: SevStatus(rsp.status.get()),
            detail: rsp.detail.get(),
        }
        .to_core()
    }

    /// Writes a guest message, header and body, to the guest request page.
    fn put_guest_msg(&mut self, msg_type: u8, body: &[u8]) -> TsmResult<()> {
        let hdr = MsgHeader::new(msg_type, body.len());
        let req = self.page(REQ_PAGE);
        self.mem
            .write(req, hdr.as_bytes())
            .and_then(|()| {
                self.mem
                    .write(req.wrapping_add(u64::from(msg::HDR_SIZE)), body)
            })
            .map_err(|_| Error::InvalidAddress)
    }

    /// The command `call` issues, ready to be saved.
    fn command_for(&self, call: DeviceCall) -> Saved {
        let spdm_ctrl = self.spdm_ctrl();
        let tdi = call.tdi();
        let (dev, t, id) = self.tdi_slas(tdi);
        let mut buf = CmdBuf([0; abi::MAX_COMMAND_LENGTH]);
        let (cmd_id, start) = match call {
            DeviceCall::Bind { guest, .. } => {
                let mut c = abi::TdiBind::new_zeroed();
                c.length = length::<abi::TdiBind>();
                c.spdm_ctrl = spdm_ctrl;
                c.dev_ctx = dev.into();
                c.tdi_ctx = t.into();
                c.gctx_paddr = self.gctx(guest).into();
                // The guest knows the TDI by its slot (any routing ID the host likes).
                c.guest_device_id = U16::new(tdi.slot());
                let _ = c.write_to_prefix(&mut buf.0);
                (abi::TIO_TDI_BIND, None)
            }
            DeviceCall::Start { guest, .. } => {
                let mut c = abi::GuestRequest::new_zeroed();
                c.length = length::<abi::GuestRequest>();
                c.spdm_ctrl = spdm_ctrl;
                c.dev_ctx = dev.into();
                c.tdi_ctx = t.into();
                c.gctx_paddr = self.gctx(guest).into();
                c.req_paddr = self.page(REQ_PAGE).into();
                c.res_paddr = self.page(RES_PAGE).into();
                let _ = c.write_to_prefix(&mut buf.0);
                let mut r = msg::TdiReq::new_zeroed();
                r.guest_device_id = id.into();
                (abi::TIO_GUEST_REQUEST, Some(r))
            }
            DeviceCall::Check { .. } => {
                let mut c = abi::TdiStatus::new_zeroed();
                c.length = length::<abi::TdiStatus>();
                c.spdm_ctrl = spdm_ctrl;
                c.dev_ctx = dev.into();
                c.tdi_ctx = t.into();
                c.status_paddr = self.page(STATUS_PAGE).into();
                let _ = c.write_to_prefix(&mut buf.0);
                (abi::TIO_TDI_STATUS, None)
            }
            DeviceCall::Unbind { .. } => {
                let mut c = abi::TdiUnbind::new_zeroed();
                c.length = length::<abi::TdiUnbind>();
                c.spdm_ctrl = spdm_ctrl;
                c.dev_ctx = dev.into();
                c.tdi_ctx = t.into();
                c.gctx_paddr = self.owner_gctx(tdi).into();
                let _ = c.write_to_prefix(&mut buf.0);
                (abi::TIO_TDI_UNBIND, None)
            }
        };
        Saved {
            tdi,
            id: cmd_id,
            len: command_len(cmd_id),
            buf,
            start,
        }
    }

    fn done(&mut self, cmd: &impl Command) -> TsmResult<()> {
        self.issue(cmd).to_core().map(drop)
    }

    // ---- handles: the core's, read back from the firmware's context tables ----------------

    fn gctx(&self, guest: GuestId) -> u64 {
        self.sev
            .guests()
            .iter()
            .find(|g| g.guest == guest)
            .map_or_else(
                || (UNKNOWN_PFN_BASE.wrapping_add(u64::from(guest.slot()))) << 12,
                |g| g.gctx,
            )
    }

    fn dev_sla(&self, device: DeviceId) -> u64 {
        self.sev
            .devices()
            .iter()
            .find(|d| d.device == device)
            .map_or_else(
                || sla(UNKNOWN_PFN_BASE.wrapping_add(u64::from(device.slot()))),
                |d| d.sla,
            )
    }

    /// (device SLA, TDI SLA, guest device ID) of a TDI.
    fn tdi_slas(&self, tdi: TdiId) -> (u64, u64, u16) {
        self.sev.tdis().iter().find(|t| t.tdi == tdi).map_or_else(
            || {
                let unknown = sla(UNKNOWN_PFN_BASE.wrapping_add(u64::from(tdi.slot())));
                (unknown, unknown, 0)
            },
            |t| (t.dev_sla, t.sla, t.guest_device_id),
        )
    }

    fn iface_of(&self, tdi: TdiId) -> Option<RequesterId> {
        self.sev
            .tdis()
            .iter()
            .find(|t| t.tdi == tdi)
            .map(|t| t.iface)
    }

    fn owner_gctx(&self, tdi: TdiId) -> u64 {
        self.sev
            .tsm()
            .tdi(tdi)
            .ok()
            .and_then(|t| t.state.owner())
            .map_or(0, |g| self.gctx(g))
    }

    /// TDI_INFO through the ABI: the TDI status field of its output.
    fn tdi_info_status(&mut self, tdi: TdiId) -> TsmResult<u32> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiInfo::new_zeroed();
        c.length = length::<abi::TdiInfo>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.status_paddr = self.page(STATUS_PAGE).into();
        self.done(&c)?;
        let mut data = abi::TdiInfoData::new_zeroed();
        self.mem
            .read(self.page(STATUS_PAGE), data.as_mut_bytes())
            .map_err(|_| Error::InvalidAddress)?;
        Ok((data.p1_flags.get() >> abi::INFO_TDI_STATUS_SHIFT) & 0x3)
    }

    /// Sends a guest message of type `msg_type` with `body` for `tdi` on behalf of `guest`;
    /// returns the command outcome and the response body bytes.
    fn guest_message(
        &mut self,
        guest: GuestId,
        tdi: TdiId,
        msg_type: u8,
        body: &[u8],
    ) -> (Outcome, [u8; msg::MAX_BODY]) {
        let mut rsp = [0u8; msg::MAX_BODY];
        let hdr = MsgHeader::new(msg_type, body.len());
        let req = self.page(REQ_PAGE);
        if self.mem.write(req, hdr.as_bytes()).is_err()
            || self
                .mem
                .write(req.wrapping_add(u64::from(msg::HDR_SIZE)), body)
                .is_err()
        {
            return (Outcome::plain(SevStatus::INVALID_ADDRESS), rsp);
        }
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::GuestRequest::new_zeroed();
        c.length = length::<abi::GuestRequest>();
        c.spdm_ctrl = self.spdm_ctrl();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.gctx_paddr = self.gctx(guest).into();
        c.req_paddr = req.into();
        c.res_paddr = self.page(RES_PAGE).into();
        let out = self.issue(&c);
        let at = self.page(RES_PAGE).wrapping_add(u64::from(msg::HDR_SIZE));
        let _ = self.mem.read(at, &mut rsp);
        (out, rsp)
    }

    /// The guest validates (or invalidates) `pages` pages of reported range `range_id` from
    /// `offset`, mapped at `gpa`: MMIO_VALIDATE through TIO_GUEST_REQUEST.
    #[allow(clippy::too_many_arguments)]
    pub fn mmio_validate(
        &mut self,
        guest: GuestId,
        tdi: TdiId,
        range_id: u16,
        offset: u32,
        pages: u32,
        gpa: u64,
        flags: u16,
    ) -> (Outcome, msg::MmioValidateRsp) {
        let (_, _, id) = self.tdi_slas(tdi);
        let mut r = msg::MmioValidateReq::new_zeroed();
        r.guest_device_id = id.into();
        r.subrange_base = gpa.into();
        r.subrange_page_count = pages.into();
        r.range_offset = offset.into();
        r.flags = flags.into();
        r.range_id = range_id.into();
        let (out, bytes) = self.guest_message(guest, tdi, msg::MSG_MMIO_VALIDATE_REQ, r.as_bytes());
        let mut rsp = msg::MmioValidateRsp::new_zeroed();
        if let Some(b) = bytes.get(..core::mem::size_of::<msg::MmioValidateRsp>()) {
            rsp.as_mut_bytes().copy_from_slice(b);
        }
        (out, rsp)
    }
}

impl Backend for SevBackend<'_> {
    fn name(&self) -> &'static str {
        "sev"
    }

    /// SNP_GCTX_CREATE on a fresh page, then SNP_ACTIVATE with ASID = slot + 1.
    fn create_guest(&mut self) -> TsmResult<GuestId> {
        let gctx = GCTX_BASE.wrapping_add(self.fresh() << 12);
        let mut c = abi::GctxCreate::new_zeroed();
        c.gctx_paddr = gctx.into();
        self.done(&c)?;
        let guest = self
            .sev
            .guest_ctx(gctx)
            .map(|g| g.guest)
            .ok_or(Error::InvalidHandle)?;
        let mut a = abi::Activate::new_zeroed();
        a.gctx_paddr = gctx.into();
        a.asid = U32::new(u32::from(guest.slot()).wrapping_add(1));
        self.done(&a)?;
        Ok(guest)
    }

    /// SNP_DECOMMISSION.
    fn destroy_guest(&mut self, guest: GuestId) -> TsmResult<()> {
        let mut c = abi::Decommission::new_zeroed();
        c.gctx_paddr = self.gctx(guest).into();
        self.done(&c)
    }

    /// The device's BARs go into the BAR list (ours, `abi::BarList`; more than it holds are
    /// counted, and refused by the firmware as the core refuses them), then TIO_DEV_CREATE
    /// naming it and TIO_DEV_CONNECT.
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        let segment = u8::try_from(rid.segment()).map_err(|_| Error::InvalidRequesterId)?;
        let mut list = abi::BarList::new_zeroed();
        list.count = u32::try_from(bars.len())
            .map_err(|_| Error::TooManyRanges)?
            .into();
        for (entry, bar) in list.bars.iter_mut().zip(bars) {
            entry.base = bar.base().as_u64().into();
            entry.pages = bar.pages().into();
        }
        let at = self.page(BAR_LIST_PAGE);
        self.mem
            .write(at, list.as_bytes())
            .map_err(|_| Error::InvalidAddress)?;
        let dev = sla(CTX_PFN_BASE.wrapping_add(self.fresh()));
        let mut c = abi::DevCreateBars::new_zeroed();
        c.length = length::<abi::DevCreateBars>();
        c.dev_ctx = dev.into();
        c.device_id = rid.routing_id().into();
        c.segment_id = segment;
        c.bar_list = at.into();
        self.done(&c)?;
        let mut k = abi::DevConnect::new_zeroed();
        k.length = length::<abi::DevConnect>();
        k.spdm_ctrl = self.spdm_ctrl();
        k.dev_ctx = dev.into();
        k.tc_mask = 1;
        self.done(&k)?;
        self.sev
            .dev_ctx(dev)
            .map(|d| d.device)
            .ok_or(Error::InvalidHandle)
    }

    /// TIO_DEV_RECLAIM.
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()> {
        let mut c = abi::DevReclaim::new_zeroed();
        c.length = length::<abi::DevReclaim>();
        c.dev_ctx = self.dev_sla(device).into();
        self.done(&c)
    }

    /// TIO_TDI_CREATE.
    fn create_tdi(&mut self, device: DeviceId, iface: RequesterId) -> TsmResult<TdiId> {
        let t = sla(CTX_PFN_BASE.wrapping_add(self.fresh()));
        let mut c = abi::TdiCreate::new_zeroed();
        c.length = length::<abi::TdiCreate>();
        c.dev_ctx = self.dev_sla(device).into();
        c.tdi_ctx = t.into();
        let [devfn, bus] = iface.routing_id().to_le_bytes();
        let seg = u8::try_from(iface.segment()).map_err(|_| Error::InvalidRequesterId)?;
        c.interface_id.function_id =
            U32::new(u32::from_le_bytes([devfn, bus, seg, 0]) | abi::IID_RSEG_VALID);
        self.done(&c)?;
        self.sev
            .tdi_ctx(t)
            .map(|x| x.tdi)
            .ok_or(Error::InvalidHandle)
    }

    /// TIO_TDI_RECLAIM.
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiReclaim::new_zeroed();
        c.length = length::<abi::TdiReclaim>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        self.done(&c)?;
        // Its slot may come back for another TDI: a saved command of this one is no one's.
        self.saved.retain(|s| s.tdi != tdi);
        Ok(())
    }

    /// Issues the command that starts `call` (TDI_BIND, GUEST_REQUEST with TDI_START,
    /// TDI_STATUS, TDI_UNBIND): `Relay(n)` on `SPDM_REQUEST`, with the command saved for
    /// [`Backend::respond`].
    fn begin(&mut self, call: DeviceCall, request: &mut RelayBuf) -> TsmResult<Completion> {
        let saved = self.command_for(call);
        self.issue_relayed(saved, request)
    }

    /// Writes the device's answer to `spdm_ctrl.resp` as Linux does (`pci_doe` strips the DOE
    /// header; an answer that is not a DOE object goes in as it came, and is no answer to
    /// anything; no answer is an empty data object), then reissues `tdi`'s saved command with
    /// `FLAG_CONTINUE`, as `sev_tio_continue` does. A TDI the host never saved a command for
    /// gets a TDI_STATUS continuation, which the firmware refuses if nothing is outstanding.
    fn respond(
        &mut self,
        tdi: TdiId,
        answer: Option<&[u8]>,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        let payload = answer
            .map(|bytes| doe::decode(bytes, abi::DOBJ_DATA_TYPE_SECURE_SPDM).unwrap_or(bytes));
        let resp = self.page(SPDM_RESP_PAGE);
        linux::write_response(
            &mut self.mem,
            resp,
            abi::DOBJ_DATA_TYPE_SECURE_SPDM,
            payload,
        )
        .map_err(|_| Error::RelayMalformed)?;
        let mut saved = match self.saved.iter().find(|s| s.tdi == tdi) {
            Some(s) => s.clone(),
            None => self.command_for(DeviceCall::Check { tdi }),
        };
        let word = saved
            .buf
            .0
            .get_mut(abi::CONTINUE_WORD..abi::CONTINUE_WORD.saturating_add(4))
            .ok_or(Error::Inconsistent)?;
        let flags = u32::from_le_bytes(word.try_into().map_err(|_| Error::Inconsistent)?);
        word.copy_from_slice(&(flags | abi::FLAG_CONTINUE).to_le_bytes());
        self.issue_relayed(saved, request)
    }

    /// The device model's DOE mailbox.
    fn mailbox(&mut self, request: &[u8], answer: &mut RelayBuf) -> Option<usize> {
        self.device.get_mut().answer(request, answer)
    }

    /// The device will report `report` for the TDI's interface.
    fn set_report(&mut self, tdi: TdiId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Some(iface) = self.iface_of(tdi) {
            self.device.get_mut().link_mut().set_report(iface, report);
        }
        Ok(())
    }

    /// Ours: TIO_MMIO_MAP (the host's RMPUPDATE, done by the TSM).
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()> {
        let (_, t, _) = self.tdi_slas(tdi);
        let mut c = abi::MmioMap::new_zeroed();
        c.length = length::<abi::MmioMap>();
        c.tdi_ctx = t.into();
        c.gctx_paddr = self.gctx(guest).into();
        c.gpa = gpa.as_u64().into();
        c.hpa = hpa.as_u64().into();
        c.page_size = size_code(size);
        self.done(&c)
    }

    /// Ours: TIO_TDI_ERROR.
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiError::new_zeroed();
        c.length = length::<abi::TdiError>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        self.issue(&c).to_core()
    }

    /// TIO_TDI_UNBIND with FLAG_FORCE.
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiUnbind::new_zeroed();
        c.length = length::<abi::TdiUnbind>();
        c.flags = abi::FLAG_FORCE.into();
        c.spdm_ctrl = self.spdm_ctrl();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.gctx_paddr = self.owner_gctx(tdi).into();
        self.issue(&c).to_core()
    }

    /// TIO_DEV_DISCONNECT then TIO_DEV_CONNECT: connecting is where SEV-TIO sets up IDE.
    fn setup_stream(&mut self, device: DeviceId) -> TsmResult<()> {
        let dev = self.dev_sla(device);
        let mut c = abi::DevDisconnect::new_zeroed();
        c.length = length::<abi::DevDisconnect>();
        c.spdm_ctrl = self.spdm_ctrl();
        c.dev_ctx = dev.into();
        self.done(&c)?;
        let mut k = abi::DevConnect::new_zeroed();
        k.length = length::<abi::DevConnect>();
        k.spdm_ctrl = self.spdm_ctrl();
        k.dev_ctx = dev.into();
        k.tc_mask = 1;
        self.done(&k)
    }

    /// Ours: TIO_MMIO_UNMAP.
    fn host_unmap(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let mut c = abi::MmioUnmap::new_zeroed();
        c.length = length::<abi::MmioUnmap>();
        c.gctx_paddr = self.gctx(guest).into();
        c.gpa = gpa.as_u64().into();
        c.page_size = size_code(size);
        self.done(&c)
    }

    /// Ours: TIO_MMIO_BLOCK.
    fn host_block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let mut c = abi::MmioBlock::new_zeroed();
        c.length = length::<abi::MmioBlock>();
        c.gctx_paddr = self.gctx(guest).into();
        c.gpa = gpa.as_u64().into();
        c.page_size = size_code(size);
        self.done(&c)
    }

    /// Ours: TIO_MMIO_ZAP.
    fn host_zap(&mut self, range: MmioRange) -> TsmResult<()> {
        let mut c = abi::MmioZap::new_zeroed();
        c.length = length::<abi::MmioZap>();
        c.base = range.base().as_u64().into();
        c.pages = U64::new(range.pages());
        self.done(&c)
    }

    /// TIO_TDI_INFO through the ABI for the coarse status, checked against the firmware's
    /// record for the precise one (TDI_INFO has no field for ERROR vs. mid-unbind).
    fn tdi_state(&mut self, tdi: TdiId) -> TsmResult<TdiState> {
        let coarse = self.tdi_info_status(tdi)?;
        let state = self.sev.tsm().tdi(tdi)?.state;
        let expect = match state {
            TdiState::Unbound => 0,
            TdiState::Locked { .. } => 1,
            TdiState::Run { .. } => 2,
            TdiState::Error { .. } | TdiState::Unbinding { .. } => 3,
        };
        if coarse != expect {
            return Err(Error::InvalidHandle);
        }
        Ok(state)
    }

    /// The RMP read back (RMPREAD): the leaf covering `gpa`.
    fn leaf(&mut self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        self.sev.tsm().with_table(|rmp| rmp.leaf(guest, gpa))
    }

    fn device_event(&mut self, iface: RequesterId, event: DeviceEvent) -> TsmResult<()> {
        self.device.get_mut().event(iface, event);
        Ok(())
    }

    fn device_misbehave(&mut self, iface: RequesterId, how: Option<Misbehaviour>) -> TsmResult<()> {
        self.device
            .get_mut()
            .link_mut()
            .set_misbehaviour(iface, how);
        Ok(())
    }

    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()> {
        let inv = &mut self.invalidations;
        self.sev
            .tsm()
            .with_table(|t| inv.defer_flush(t, guest, defer))
    }

    /// The owner's ASID fence the unbind raised, held for the host in manual mode, completes
    /// (on hardware the host polls TIO_ASID_FENCE_STATUS until it reads it done).
    fn complete_invalidations(&mut self, tdi: TdiId) -> TsmResult<()> {
        let core = self.sev.tsm();
        let record = core.tdi(tdi)?;
        let Some(owner) = record.state.owner() else {
            return Ok(());
        };
        let inv = &self.invalidations;
        core.with_table(|t| inv.complete(t, owner, record.iface))
    }

    fn set_manual_invalidations(&mut self, manual: bool) -> TsmResult<()> {
        let inv = &mut self.invalidations;
        self.sev.tsm().with_table(|t| inv.set_manual(t, manual))
    }

    /// SEV-TIO creates the TDI's sDTE with its TIO_TDI_BIND: for a bound TDI that has it, the
    /// host has nothing more to do; otherwise the core's refusal names why there is none.
    fn dma_create(&mut self, tdi: TdiId) -> TsmResult<()> {
        let core = self.sev.tsm();
        let record = core.tdi(tdi)?;
        match record.state {
            TdiState::Locked { .. } | TdiState::Run { .. } if record.dma.is_some() => Ok(()),
            _ => core.host_dma_create(tdi),
        }
    }

    /// The guest's SDTE write, as Linux's guest sends it (`tio_tdi_sdte_write`: V, IR, IW,
    /// VMPL 0, vTOM_EN, vTOM 0x7fffffff), under VMPCK 0, through TIO_GUEST_REQUEST
    /// ([`SevBackend::sdte_write`]).
    fn dma_accept(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        use platform_sev::sdte::{Q0_IR, Q0_IW};
        self.sdte_write(guest, tdi, Q0_IR | Q0_IW)
    }

    /// The model device's TDISP state of the interface and the device's stream.
    fn device_sends_tee(&mut self, tdi: TdiId) -> TsmResult<bool> {
        let device = &self.device;
        crate::backend::tdi_sends_tee(self.sev.tsm(), tdi, |iface| {
            Ok(device.lock().dsm().state(iface))
        })
    }

    /// The sDTE as the RMP's secure device table holds it, and the IOTLB behind it
    /// ([`FlushControl::iommu_reach`]).
    fn iommu_reach(&mut self, tdi: TdiId) -> TsmResult<tsm_core::dma::DmaReach> {
        let core = self.sev.tsm();
        let iface = core.tdi(tdi)?.iface;
        core.with_table(|r| r.iommu_reach(iface))
    }

    /// The device and the sDTE ([`Backend::dma_reach`]), then its read (IR) or write (IW)
    /// permission and its vTOM (with vTOM_EN, an address at or above it is shared), and the
    /// RMP: the owner's leaf at the address, assigned, mapped or blocked
    /// ([`crate::backend::leaf_reachable`]). A blocked sDTE (IR and
    /// IW cleared) that still translates from the IOTLB lets both directions through (ours:
    /// the model does not keep the permissions the IOTLB cached; the answer errs towards
    /// "private", the one a `shared` line must rule out).
    fn dma_access(
        &mut self,
        tdi: TdiId,
        access: crate::backend::DmaAccess,
    ) -> TsmResult<tsm_core::dma::DmaReach> {
        use platform_sev::sdte::{Q0_IR, Q0_IW, Q5_VTOM, Q5_VTOM_EN};
        let reach = self.dma_reach(tdi)?;
        let core = self.sev.tsm();
        let iface = core.tdi(tdi)?.iface;
        crate::backend::access_reach(reach, |owner| {
            core.with_table(|r| {
                let Some(slot) = r.sdtes().get(iface) else {
                    return false;
                };
                let q = |i: usize| slot.sdte.q.get(i).map_or(0, |w| w.get());
                let permission = if access.write { Q0_IW } else { Q0_IR };
                // Blocked and still translating: the IOTLB's copy, both directions.
                let allowed = !slot.sdte.valid() || q(0) & permission != 0;
                let vtom = ((q(5) & Q5_VTOM) >> 1).saturating_mul(VTOM_UNIT);
                let below_vtom = q(5) & Q5_VTOM_EN == 0 || access.gpa.as_u64() < vtom;
                allowed
                    && below_vtom
                    && r.leaf(owner, access.gpa)
                        .is_some_and(|l| crate::backend::leaf_reachable(l.state))
            })
        })
    }

    fn dma_context(&mut self, tdi: TdiId) -> TsmResult<Option<tsm_core::dma::DmaState>> {
        Ok(self.sev.tsm().tdi(tdi).ok().and_then(|r| r.dma))
    }
}

/// The unit of the sDTE's vTOM field: 2 MiB (the SEV-TIO guest patch's `tsm_vtom`,
/// drivers/virt/coco/sev-guest/tio.c of `<20260225053806.3311234-8-aik@amd.com>`, which
/// [`LINUX_VTOM`] follows).
const VTOM_UNIT: u64 = 1 << 21;

/// vTOM of Linux's SDTE write, in 2 MiB units (its `tsm_vtom` module parameter's default,
/// drivers/virt/coco/sev-guest/tio.c of the SEV-TIO guest patch
/// `<20260225053806.3311234-8-aik@amd.com>`).
const LINUX_VTOM: u64 = 0x7fff_ffff;

impl SevBackend<'_> {
    /// The guest's SDTE write of a valid entry with the DMA permissions `permissions` (of
    /// `Q0_IR | Q0_IW`) and otherwise Linux's (VMPL 0, vTOM_EN, vTOM 0x7fffffff), under VMPCK
    /// 0, through TIO_GUEST_REQUEST. A refusal of the command is its core status; one in the
    /// answer is named in the core's terms (see `SevBackend::sdte_refusal`).
    pub fn sdte_write(&mut self, guest: GuestId, tdi: TdiId, permissions: u64) -> TsmResult<()> {
        use platform_sev::sdte::{Q0_IR, Q0_IW, Q0_V, Q5_VTOM, Q5_VTOM_EN};
        let (_, _, id) = self.tdi_slas(tdi);
        let mut r = msg::SdteWriteReq::new_zeroed();
        r.guest_device_id = id.into();
        r.sdte.q[0] = (Q0_V | (permissions & (Q0_IR | Q0_IW))).into();
        r.sdte.q[5] = (Q5_VTOM_EN | (LINUX_VTOM << 1 & Q5_VTOM)).into();
        let (out, bytes) = self.guest_message(guest, tdi, msg::MSG_SDTE_WRITE_REQ, r.as_bytes());
        // An SDTE write never waits on the device: one round.
        if out.to_core()? != Completion::Done {
            return Err(Error::Inconsistent);
        }
        let mut rsp = msg::SdteWriteRsp::new_zeroed();
        bytes
            .get(..core::mem::size_of::<msg::SdteWriteRsp>())
            .ok_or(Error::Inconsistent)
            .map(|b| rsp.as_mut_bytes().copy_from_slice(b))?;
        match rsp.status.get() {
            0 => Ok(()),
            status => Err(self.sdte_refusal(guest, tdi, status)),
        }
    }

    /// An SDTE write's refusal in the core's terms: the answer's status is coarser than the
    /// core's (TDI_NOT_BOUND covers unbound, in ERROR and unbinding; INVALID_TDI another
    /// guest's TDI), so the TDI's state, which the host sees in TDI_STATUS, tells them apart.
    fn sdte_refusal(&self, guest: GuestId, tdi: TdiId, status: u16) -> Error {
        use platform_sev::guest_msg::SdteWriteStatus as Sw;
        let state = self.sev.tsm().tdi(tdi).map(|t| t.state);
        match (status, state) {
            (s, Ok(TdiState::Error { .. })) if s == Sw::TdiNotBound as u16 => Error::TdiInError,
            (s, Ok(TdiState::Unbinding { .. })) if s == Sw::TdiNotBound as u16 => {
                Error::UnbindInProgress
            }
            (s, _) if s == Sw::TdiNotBound as u16 => Error::TdiNotBound,
            (s, Ok(st)) if s == Sw::InvalidTdi as u16 && st.owner() != Some(guest) => {
                Error::NotOwner
            }
            (s, _) if s == Sw::InvalidTdi as u16 => Error::InvalidHandle,
            // RESERVED, a VMPL below the sender's, a rewrite of a valid entry with other bits:
            // the backend's own request never asks for them.
            _ => Error::Inconsistent,
        }
    }
}

/// The report page TDI_REPORT writes to, for tests.
pub fn report_page(b: &SevBackend<'_>) -> u64 {
    b.page(REPORT_PAGE)
}
