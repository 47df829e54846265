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

use platform_sev::Sev;
use platform_sev::abi::{self, Command, SlaAddr};
use platform_sev::device::{ConfigError, PciModel};
use platform_sev::guest_msg::{self as msg, MsgHeader};
use platform_sev::memory::{PageMemory, SystemMemory};
use platform_sev::pfn::Pfn;
use platform_sev::rmp::{Rmp, RmpEntry};
use platform_sev::status::{Outcome, SevStatus};
use platform_sev::zerocopy::byteorder::little_endian::{U16, U32, U64};
use platform_sev::zerocopy::{FromZeros, IntoBytes};
use tsm_core::ReservedMemory;
use tsm_core::device_model::{DeviceEvent, Misbehaviour};
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, InterfaceId, Leaf, MmioRange, PageSize,
    RequesterId, SecureTable, TdiId, TdiState, TsmResult,
};

use crate::backend::{Backend, FlushControl};

/// First host page the backend's RMP covers: below every BAR the scenarios use.
pub const RMP_BASE: u64 = 0x7fe0_0000;
/// Pages the backend's RMP covers (to 0xa020_0000, past every BAR the scenarios use).
pub const RMP_PAGES: usize = 0x2_0400;
/// Where the backend's status, message and report pages live.
pub const MEM_BASE: u64 = 0x1_0000_0000;
/// Pages of system memory the backend uses: status, request, response, report.
pub const MEM_PAGES: usize = 4;
const STATUS_PAGE: u64 = 0;
const REQ_PAGE: u64 = 1;
const RES_PAGE: u64 = 2;
const REPORT_PAGE: u64 = 3;
/// Guest context pages the backend donates, one per guest created.
const GCTX_BASE: u64 = 0x2_0000_0000;
/// Page frames of the device and TDI context SLAs the backend donates.
const CTX_PFN_BASE: u64 = 0x30_0000;
/// Page frames of context addresses nobody registered (handles the firmware never gave out).
const UNKNOWN_PFN_BASE: u64 = 0x40_0000;

/// The firmware the backend drives: SEV-TIO over an RMP in `'a` memory and the device model.
pub type SevFirmware<'a> = Sev<&'a mut [RmpEntry], PciModel>;

/// A command buffer: the mailbox's 128 bytes, aligned as the firmware requires.
#[repr(C, align(8))]
struct CmdBuf([u8; abi::MAX_COMMAND_LENGTH]);

impl<S: AsRef<[RmpEntry]> + AsMut<[RmpEntry]>> FlushControl for Rmp<S> {
    /// Holds the guest's ASID fences (they stay pending), or completes them and stops holding.
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        self.hold_fences_of(guest, defer);
    }
}

/// The SEV-TIO backend.
pub struct SevBackend<'a> {
    /// The firmware.
    pub sev: SevFirmware<'a>,
    /// System memory the commands point into.
    pub mem: PageMemory<MEM_PAGES>,
    next: u64,
}

fn length<C: Command>() -> U32 {
    U32::new(u32::try_from(abi::len_of::<C>()).unwrap_or(0))
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
    /// A firmware whose RMP lives in `rmp` (at least [`RMP_PAGES`] entries are used).
    pub fn new(rmp: &'a mut [RmpEntry]) -> TsmResult<Self> {
        let window = rmp.get_mut(..RMP_PAGES).ok_or(Error::SecureTableFull)?;
        Self::with_rmp(window, RMP_BASE, system_memory()?)
    }

    /// A firmware whose RMP covers one page per entry of `rmp` from host address `base`, and
    /// which reserves `system_memory` at init (it must include [`system_memory`]'s pages,
    /// where the commands' buffers live). A smaller window than [`SevBackend::new`]'s makes
    /// every RMP scan shorter (the differential test's world fits in a few thousand pages).
    pub fn with_rmp(
        rmp: &'a mut [RmpEntry],
        base: u64,
        system_memory: ReservedMemory,
    ) -> TsmResult<Self> {
        let rmp = Rmp::new(Hpa::try_new(base)?, rmp).map_err(|_| Error::InvalidAddress)?;
        Ok(Self {
            sev: Sev::new(rmp, PciModel::new(), system_memory),
            mem: PageMemory::new(MEM_BASE),
            next: 0,
        })
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

    fn iface_of(&self, tdi: TdiId) -> Option<InterfaceId> {
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

    /// The device's BARs go into its configuration space (the model), then TIO_DEV_CREATE
    /// and TIO_DEV_CONNECT. A refused DEV_CREATE puts configuration space back as it was.
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        let segment = u8::try_from(rid.segment()).map_err(|_| Error::InvalidRequesterId)?;
        let previous = self
            .sev
            .tsm()
            .with_transport(|d| d.set_bars(rid, bars))?
            .map_err(|e| match e {
                // More BARs than any function has: the firmware would refuse them the same way.
                ConfigError::TooManyBars => Error::TooManyRanges,
                // Never while devices are removed through here: the model holds one more device
                // than the firmware's table.
                ConfigError::Full => Error::DeviceTableFull,
            })?;
        let dev = sla(CTX_PFN_BASE.wrapping_add(self.fresh()));
        let mut c = abi::DevCreate::new_zeroed();
        c.length = length::<abi::DevCreate>();
        c.dev_ctx = dev.into();
        c.device_id = rid.routing_id().into();
        c.segment_id = segment;
        if let Err(e) = self.done(&c) {
            self.sev
                .tsm()
                .with_transport(|d| d.restore_bars(rid, previous))?;
            return Err(e);
        }
        let mut k = abi::DevConnect::new_zeroed();
        k.length = length::<abi::DevConnect>();
        k.dev_ctx = dev.into();
        k.tc_mask = 1;
        self.done(&k)?;
        self.sev
            .dev_ctx(dev)
            .map(|d| d.device)
            .ok_or(Error::InvalidHandle)
    }

    /// TIO_DEV_RECLAIM; once the firmware has let the device go, it leaves configuration
    /// space too (unplugged), so its entry in the model is free for the next device.
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()> {
        let rid = self
            .sev
            .devices()
            .iter()
            .find(|d| d.device == device)
            .map(|d| d.rid);
        let mut c = abi::DevReclaim::new_zeroed();
        c.length = length::<abi::DevReclaim>();
        c.dev_ctx = self.dev_sla(device).into();
        self.done(&c)?;
        if let Some(rid) = rid {
            self.sev.tsm().with_transport(|d| d.remove_bars(rid))?;
        }
        Ok(())
    }

    /// TIO_TDI_CREATE.
    fn create_tdi(&mut self, device: DeviceId, iface: InterfaceId) -> TsmResult<TdiId> {
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
        self.done(&c)
    }

    /// The ranges go into the device's interface report (the model DSM), then TIO_TDI_BIND,
    /// which locks the interface and fetches the report from the device itself.
    fn bind(&mut self, tdi: TdiId, guest: GuestId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Some(iface) = self.iface_of(tdi) {
            self.sev
                .tsm()
                .with_transport(|d| d.set_wire_report(iface, report))?;
        }
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiBind::new_zeroed();
        c.length = length::<abi::TdiBind>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.gctx_paddr = self.gctx(guest).into();
        // The guest knows the TDI by its slot (any routing ID the host likes).
        c.guest_device_id = U16::new(tdi.slot());
        self.done(&c)
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

    /// The guest's TDI_START message through TIO_GUEST_REQUEST.
    fn start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let (_, _, id) = self.tdi_slas(tdi);
        let mut r = msg::TdiReq::new_zeroed();
        r.guest_device_id = id.into();
        let (out, bytes) = self.guest_message(guest, tdi, msg::MSG_TDI_START_REQ, r.as_bytes());
        out.to_core()?;
        let mut rsp = msg::TdiStartRsp::new_zeroed();
        if let Some(b) = bytes.get(..core::mem::size_of::<msg::TdiStartRsp>()) {
            rsp.as_mut_bytes().copy_from_slice(b);
        }
        Outcome {
            status: SevStatus(rsp.status.get()),
            detail: rsp.detail.get(),
        }
        .to_core()
        .map(drop)
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

    /// TIO_TDI_UNBIND (one bounded step; `RESUME_REQUIRED` is `Resumable`).
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiUnbind::new_zeroed();
        c.length = length::<abi::TdiUnbind>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.gctx_paddr = self.owner_gctx(tdi).into();
        self.issue(&c).to_core()
    }

    /// TIO_TDI_UNBIND with FLAG_FORCE.
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiUnbind::new_zeroed();
        c.length = length::<abi::TdiUnbind>();
        c.flags = abi::FLAG_FORCE.into();
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
        c.dev_ctx = dev.into();
        self.done(&c)?;
        let mut k = abi::DevConnect::new_zeroed();
        k.length = length::<abi::DevConnect>();
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

    fn device_event(&mut self, iface: InterfaceId, event: DeviceEvent) -> TsmResult<()> {
        self.sev.tsm().with_transport(|d| d.event(iface, event))
    }

    fn device_misbehave(&mut self, iface: InterfaceId, how: Option<Misbehaviour>) -> TsmResult<()> {
        self.sev
            .tsm()
            .with_transport(|d| d.tdisp.link_mut().set_misbehaviour(iface, how))
    }

    /// TIO_TDI_STATUS: the firmware asks the device (GET_DEVICE_INTERFACE_STATE) and puts a
    /// bound TDI whose device disagrees in ERROR (`RESUME_REQUIRED` is `Resumable`: leaves
    /// remain to be blocked).
    fn check(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let (dev, t, _) = self.tdi_slas(tdi);
        let mut c = abi::TdiStatus::new_zeroed();
        c.length = length::<abi::TdiStatus>();
        c.dev_ctx = dev.into();
        c.tdi_ctx = t.into();
        c.status_paddr = self.page(STATUS_PAGE).into();
        self.issue(&c).to_core()
    }

    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()> {
        self.sev
            .tsm()
            .with_table(|t| FlushControl::defer_flush(t, guest, defer))
    }
}

/// The report page TDI_REPORT writes to, for tests.
pub fn report_page(b: &SevBackend<'_>) -> u64 {
    b.page(REPORT_PAGE)
}
