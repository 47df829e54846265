//! The TDX SEAMCALL register ABI as a scenario backend: every operation is encoded as the
//! register block a host VMM would load before SEAMCALL (or a TD before TDCALL), run through
//! platform-tdx's dispatcher, and the 64-bit status in RAX decoded back to a core status with
//! `platform_tdx::abi::outcome`.
//!
//! The relay goes through the ABI as a TDX-IO host's does: a leaf that needs the device
//! answers TDX_SPDM_REQUEST, and the backend takes the DOE object from the request page it
//! named in R8 (its length from its own header, as Linux does; RCX 23:8, `devif_req_out_t`,
//! must say the same) to the relaying host ([`Backend::begin`]; the scenario interpreter
//! carries it to the backend's model device, [`Backend::mailbox`], or holds, garbles or swaps
//! it), and hands an answer back by writing it to the response page and calling
//! TDH.DEVIF.RESPONSE with that page in RDX (`devif_rsp_in_t`; page 0 when the device stays
//! silent) and the request page in R8 ([`Backend::respond`]). Every TDI uses the same two
//! shared pages: the firmware writes each request over the last, and the backend copies each
//! out as soon as it is written. On TDX an empty answer is no answer (RDX page 0).
//!
//! TDIs are named by their TDISP function ID, as the TDX-IO leaves name them; the handles the
//! backend gives out are the core's, so a scenario's handle maps to the function ID through
//! the firmware's own TDI records. TDH.DEVIF.CREATE takes three private pages per TDI (from a
//! range of unbacked host pages) and the TD the TDI is for: the lowest TD there is (0, none,
//! before the first). A scenario binds a TDI to any guest; the backend hands an unbound TDI to
//! that guest's TD first with TSM.DEVIF.SET_TD (ours), as a TDX-IO host would remove and
//! create it. The guest's start is TDG.DEVIF.REQUEST START, the host's TDH.DEVIF.REQUEST and
//! TDH.DEVIF.RESPONSE with `td_flag`, and the guest's TDG.DEVIF.RESPONSE, whose status is the
//! start's outcome. TDH.DEVIF.REMOVE of a TDI that is not unbound answers the module's
//! TDX_DEVIF_INVALID_STATE, which decodes as `TdiNotBound` elsewhere: here it is the core's
//! `TdiBound`; TDH.DEVIF.RESPONSE with nothing outstanding answers the module's
//! TDX_DEVIF_TDISP_OUT_REQ, which decodes as `ExchangePending`: here it is `NoExchange`.
//!
//! Where the TDX status is coarser than the core's: OPERAND_INVALID on an address operand
//! decodes to `Misaligned` (the core's `InvalidPageSize` looks the same), and the TDI state
//! query returns the state's kind and owner but not an unbind's step or a block walk's
//! cursor (the backend reports `Unbinding { step: Stop }` and `Error { blocking: START }`).
//! A status the decoder does not know becomes `InvalidHandle`. Ranges that do not fit a
//! [`RangeList`] are refused here with `TooManyRanges` before any call.
//!
//! A device is set up as Linux's `tdx_link_connect` does (devsec tsm tree tdx-host.c
//! @191928fb): TDH.SPDM.CREATE, TSM.SPDM.BARS (ours), TDH.SPDM.CONNECT relayed (its GET_VERSION
//! to the model device's DOE mailbox and the same registers re-issued), TDH.IDE.STREAM.CREATE,
//! TDH.IDE.STREAM.KM SETUP; removed as `tdx_link_disconnect` does: KM STOP, BLOCK, DELETE,
//! TDH.SPDM.DISCONNECT, TDH.SPDM.DELETE.
//!
//! Test knobs (device events and faults, held TLB flushes) are not firmware leaves: they act
//! on the backend's model device and the S-EPT directly.

use platform_tdx::TdxModule;
use platform_tdx::abi::{
    self, Dispatcher, HostBuffer, HostFault, HostMemory, RangeList, SeamRegs, page_info,
};
use platform_tdx::ept::SeptEntry;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::module::{MESSAGE_PAGE_BYTES, TdRequest};
use platform_tdx::sept::{Sept, SeptLevels, leaf_size};
use tsm_core::device_model::{DeviceEvent, Misbehaviour, ModelDevice};
use tsm_core::lifecycle::{Cursor, UnbindStep};
use tsm_core::relay::host::{RelayHost, SharedDevice};
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, Leaf, LeafState, MmioRange, ModelSession,
    PageSize, RequesterId, TdiId, TdiState, TsmResult,
};

use crate::backend::{Backend, DeviceCall, FlushControl, RelayBuf, relay_to_end};

/// Host physical address of the backend's host memory, far from every BAR the scenarios use:
/// page 0 the parameter page (range lists), page 1 the request page, page 2 the response page
/// (every TDI's, and the link's: Linux keeps one pair per device), page 3 the SPDM config page,
/// page 4 the dev_info page.
pub const HOST_BASE: u64 = 0x7_0000_0000;
/// Host physical address of the parameter page.
pub const PARAM_HPA: u64 = HOST_BASE;
/// Host physical address of every TDI's request page (firmware to host).
pub const REQUEST_HPA: u64 = HOST_BASE + MESSAGE_PAGE_BYTES as u64;
/// Host physical address of every TDI's response page (host to firmware).
pub const RESPONSE_HPA: u64 = HOST_BASE + 2 * MESSAGE_PAGE_BYTES as u64;
/// Host physical address of the SPDM config page (TDH.SPDM.CONNECT RDX).
pub const CONFIG_HPA: u64 = HOST_BASE + 3 * MESSAGE_PAGE_BYTES as u64;
/// Host physical address of the dev_info page (TDH.SPDM.CONNECT R10).
pub const DEV_INFO_HPA: u64 = HOST_BASE + 4 * MESSAGE_PAGE_BYTES as u64;
/// Bytes of the backend's host memory.
const HOST_BYTES: usize = 5 * MESSAGE_PAGE_BYTES;
/// Where the host's invalidation wait descriptors write their status: the last dword of the
/// device-information page (ours; the model IOMMU only checks it is host memory).
const IQ_STATUS_HPA: u64 = DEV_INFO_HPA + MESSAGE_PAGE_BYTES as u64 - 4;
/// The IOTLB invalidations an unbind may stop for, each answered by the host: the owner's
/// domain (its TRACK's) and then the TDI's own DMA context (ours: the scenarios' bound).
const IOTLB_WAITS: usize = 2;
/// Offset of the config page.
const CONFIG_AT: usize = 3 * MESSAGE_PAGE_BYTES;
/// Host physical address of the first TDR page: the TDs' TDR pages (TDH.MNG.CREATE RCX) follow
/// the three pages above, one more than the core has guest slots, so a TDH.MNG.CREATE always
/// finds a free page and a full table is the core's `GuestTableFull`. The firmware never
/// reads or writes a TDR page (it only checks that it is host memory), so they are not backed
/// by bytes: `BackendHost` answers for them.
pub const TDR_BASE: u64 = HOST_BASE + HOST_BYTES as u64;
/// TDR pages.
const TDR_PAGES: usize = tsm_core::capacity::MAX_GUESTS + 1;
/// Offsets of the pages in it.
const REQUEST_AT: usize = MESSAGE_PAGE_BYTES;
const RESPONSE_AT: usize = 2 * MESSAGE_PAGE_BYTES;
/// DOE header dword 1 length field: bits 17:0, in dwords (PCIe 6.x 6.30.1), read as Linux's
/// `tdx_spdm_msg_exchange` reads it.
const DOE_LENGTH_MASK: u32 = (1 << 18) - 1;

/// `dmar_state_info_t` (TDH.DMAR.READ RDX; `dmar.h` @1666adc4): map_sts, bits 10:3.
const STATE_MAP_SHIFT: u32 = 3;
/// map_sts width.
const STATE_MAP_MASK: u64 = 0xff;
/// `dmar_state_info_t` inv_sts, bits 13:11 (same source).
const STATE_INV_SHIFT: u32 = 11;
/// inv_sts width.
const STATE_INV_MASK: u64 = 0x7;

/// `(map_sts, inv_sts)` of TDH.DMAR.READ's RDX (`dmar::MAP_*`, `dmar::INV_*`), the word the
/// crate encodes (`PasidTe::state_info`) and exports no decoder of.
pub fn dmar_read_state(rdx: u64) -> (u64, u64) {
    (
        (rdx >> STATE_MAP_SHIFT) & STATE_MAP_MASK,
        (rdx >> STATE_INV_SHIFT) & STATE_INV_MASK,
    )
}

/// The firmware the backend drives: the S-EPT, sealed with the model session its device
/// shares.
pub type TdxFirmware<'m> = TdxModule<'m, ModelSession>;

/// S-EPT table pages a scenario's firmware gets: plenty for the suite's mappings (ours).
pub const POOL_PAGES: usize = 256;
/// Where the pool's "physical memory" for table pages pretends to be (ours).
pub const POOL_PHYS: u64 = 0x20_0000_0000;

/// The firmware the scenarios run on: an S-EPT of `levels` levels over the table pages `mem`
/// at [`POOL_PHYS`], and a model session; `None` when `mem` makes no frame pool.
pub fn tdx_firmware(mem: &mut [Page], levels: SeptLevels) -> Option<TdxFirmware<'_>> {
    let pool = FramePool::new(mem, POOL_PHYS)?;
    Some(TdxFirmware::new(
        Sept::new(pool, levels),
        ModelSession::model(),
    ))
}

impl FlushControl for Sept<'_> {
    /// Holds the guest's flushes and invalidations from now on, or completes both and stops
    /// holding. Invalidations queued while not held are the host's to complete at once (as the
    /// other tables complete theirs): the host processes the queues of the guest's IOMMUs
    /// before it holds and after it stops.
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        if !defer {
            self.hold_flush(guest, false);
        }
        for segment in iommus_of(self, guest, None) {
            let _ = self.request_iotlb(guest, segment);
            self.iq_process(segment);
        }
        if defer {
            self.hold_flush(guest, true);
        }
    }

    /// The PASID entry is present and translates through the guest's S-EPT root.
    fn dma_translates(&self, guest: GuestId, iface: tsm_core::InterfaceId) -> bool {
        let root = self.root_phys(guest);
        self.dmar().entry(iface.requester_id()).is_some_and(|e| {
            e.guest == guest && e.te.present() && root.is_some_and(|r| e.te.slptptr() == r)
        })
    }

    /// The table's PASID entry of `iface` (the backend reads the same entry through
    /// TDH.DMAR.READ): present, or blocked with its invalidation not complete, through the
    /// S-EPT root of the guest the entry is for.
    fn iommu_reach(&self, iface: tsm_core::InterfaceId) -> tsm_core::dma::DmaReach {
        use tsm_core::dma::{DmaReach, DmaState};
        match self.dmar().entry(iface.requester_id()) {
            Some(e)
                if matches!(
                    e.te.state(),
                    DmaState::Active | DmaState::Blocked | DmaState::Invalidating
                ) && e.te.slptptr() != 0
                    && self.root_phys(e.guest) == Some(e.te.slptptr()) =>
            {
                DmaReach::Private(e.guest)
            }
            _ => DmaReach::SharedOnly,
        }
    }

    /// TDH.IQ.INV.REQUEST of the guest's domain where its last track owes one, then
    /// TDH.IQ.INV.PROCESS, on every IOMMU [`iommus_of`] names (the interface's first).
    fn complete_invalidations(&mut self, guest: GuestId, iface: tsm_core::InterfaceId) {
        for segment in iommus_of(self, guest, Some(iface.requester_id().segment())) {
            let _ = self.request_iotlb(guest, segment);
            self.iq_process(segment);
        }
    }
}

/// IOMMUs (by PCI segment, ours: one IOMMU per segment) on which a host completing `guest`'s
/// IOTLB invalidations requests and processes them: `first` (the unbinding TDI's own, whose
/// entry may be gone already), then every IOMMU with a PASID entry of `guest`, as
/// `tsm_tdx.h`'s TSM.DEVIF.UNBIND says the host must (a domain invalidation is owed on each,
/// and `TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED` on one that owes none is harmless). The one
/// list the workload's [`FlushControl`] and the backend's ABI path both use.
pub fn iommus_of(
    sept: &Sept<'_>,
    guest: GuestId,
    first: Option<u16>,
) -> heapless::Vec<u16, { tsm_core::capacity::MAX_TDIS + 1 }> {
    let mut out = heapless::Vec::new();
    let theirs = sept
        .dmar()
        .entries()
        .filter(|e| e.guest == guest)
        .map(|e| e.rid.segment());
    for segment in first.into_iter().chain(theirs) {
        // Room for every entry and `first`: at most MAX_TDIS entries exist.
        if !out.contains(&segment) {
            let _ = out.push(segment);
        }
    }
    out
}

/// The TDX backend: a firmware instance, the host's memory and the device it relays to.
pub struct TdxBackend<'t, 'm> {
    /// The firmware.
    pub tsm: &'t TdxFirmware<'m>,
    host: [u8; HOST_BYTES],
    device: SharedDevice,
    /// The host requests and processes invalidations only when a scenario says
    /// ([`Backend::set_manual_invalidations`]).
    manual: bool,
}

fn handle_reg<K>(h: tsm_core::Handle<K>) -> u64 {
    u64::from(h.slot())
}

/// TDR page `i` (`i` below [`TDR_PAGES`]; `None` past the address space).
fn tdr_page(i: usize) -> Option<u64> {
    let offset = i.checked_mul(MESSAGE_PAGE_BYTES)?;
    TDR_BASE.checked_add(u64::try_from(offset).ok()?)
}

/// One past the last TDR page.
const TDR_END: u64 = TDR_BASE + (TDR_PAGES * MESSAGE_PAGE_BYTES) as u64;
/// SPDM metadata pages (TDH.SPDM.CREATE RDX, one per SPDM id), after the TDR pages: one more
/// than the firmware has SPDM ids, so a create always finds a page no SPDM id holds and a full
/// table is `DeviceTableFull`. Like the TDR pages they are not backed by bytes: the firmware
/// only records them.
const SPDM_PAGES: usize = tsm_core::capacity::MAX_DEVICES + 1;
/// One past the last SPDM metadata page.
const SPDM_END: u64 = TDR_END + (SPDM_PAGES * MESSAGE_PAGE_BYTES) as u64;

/// IDE stream metadata pages (TDH.IDE.STREAM.CREATE R8, one per stream), after the SPDM ones,
/// as many and as little backed.
const IDE_PAGES: usize = tsm_core::capacity::MAX_DEVICES + 1;
/// One past the last IDE stream metadata page.
const IDE_END: u64 = SPDM_END + (IDE_PAGES * MESSAGE_PAGE_BYTES) as u64;

/// Private page triples of TDH.DEVIF.CREATE (R8, R9, R10), after the IDE ones: one more
/// triple than the firmware has TDIs, so a create always finds one no TDI holds and a full
/// table is `TdiTableFull`. Unbacked, as the metadata pages: the firmware only records them.
const DEVIF_TRIPLES: usize = tsm_core::capacity::MAX_TDIS + 1;
/// One past the last private page.
const DEVIF_END: u64 = IDE_END + (3 * DEVIF_TRIPLES * MESSAGE_PAGE_BYTES) as u64;

/// The backend's host memory: its pages of bytes, and the TDR, SPDM and IDE metadata pages,
/// readable whole pages of host memory that the firmware never looks into (reading one gives
/// zeros; writing one is refused as outside host memory).
struct BackendHost<'b>(HostBuffer<'b>);

impl BackendHost<'_> {
    fn in_tdrs(hpa: u64, len: usize) -> bool {
        let end = DEVIF_END;
        hpa >= TDR_BASE
            && u64::try_from(len).is_ok_and(|l| hpa.checked_add(l).is_some_and(|e| e <= end))
    }
}

impl HostMemory for BackendHost<'_> {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        if Self::in_tdrs(hpa, out.len()) {
            out.fill(0);
            return Ok(());
        }
        self.0.read(hpa, out)
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        if Self::in_tdrs(hpa, len) {
            return Ok(());
        }
        self.0.probe_read(hpa, len)
    }

    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.0.probe_write(hpa, len)
    }

    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault> {
        self.0.write(hpa, src)
    }
}

impl<'t, 'm> TdxBackend<'t, 'm> {
    /// A backend over `tsm` relaying to a fresh model device.
    pub fn new(tsm: &'t TdxFirmware<'m>) -> Self {
        Self::with_device(tsm, ModelDevice::model())
    }

    /// A backend over `tsm` relaying to `device`.
    pub fn with_device(tsm: &'t TdxFirmware<'m>, device: ModelDevice) -> Self {
        Self {
            tsm,
            host: [0; HOST_BYTES],
            device: SharedDevice::new(device),
            manual: false,
        }
    }

    /// The TD whose S-EPT root is at `root` (a PASID entry's SLPTPTR), if any.
    fn td_of_root(&self, root: u64) -> Option<GuestId> {
        (0..tsm_core::capacity::MAX_GUESTS)
            .filter_map(|slot| u16::try_from(slot).ok().map(GuestId::from_slot))
            .find(|&g| {
                self.tsm
                    .with_guest_table(g, |t| t.root_phys(g))
                    .is_ok_and(|r| r == Some(root))
            })
    }

    /// The device the backend relays to.
    pub fn device(&mut self) -> &mut ModelDevice {
        self.device.get_mut()
    }

    /// A host relaying for the firmware's core to this backend's device, for callers that
    /// drive the core itself from many threads (the concurrency tests, the boot).
    pub fn host(&self) -> RelayHost<'_, Sept<'m>, ModelSession> {
        RelayHost::new(self.tsm.tsm(), &self.device)
    }

    /// The device, for a host that goes on relaying without the backend (such as
    /// `tsm_core::relay::host::RelayHost` over the firmware's core, after a set-up through the
    /// backend).
    pub fn into_device(self) -> ModelDevice {
        self.device.into_inner()
    }

    /// One SEAMCALL of `leaf` with operands from `regs`; the registers as they come back.
    pub fn seamcall(&mut self, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        let host = BackendHost(HostBuffer::new(HOST_BASE, &mut self.host));
        Dispatcher::new(self.tsm, host).seamcall(&mut regs);
        regs
    }

    /// One TDCALL of `leaf` from TD `td`.
    pub fn tdcall(&mut self, td: GuestId, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        let tdr = self.tdr(td);
        let host = BackendHost(HostBuffer::new(HOST_BASE, &mut self.host));
        Dispatcher::new(self.tsm, host).tdcall(tdr, &mut regs);
        regs
    }

    /// The host's answer to an unbind stopped for an IOTLB invalidation: TDH.IQ.INV.REQUEST of
    /// the owner's domain on `tdi`'s IOMMU (its segment), which the unbind's TRACK owes while a
    /// PASID entry of the owner names its S-EPT (refused NOT_REQUIRED when none is owed: only
    /// the TDI's own entry waits), then TDH.IQ.INV.PROCESS, completing what is queued (not
    /// what a guest whose flushes are held owes, [`FlushControl::defer_flush`]).
    fn process_invalidations(&mut self, tdi: TdiId) -> TsmResult<()> {
        let record = self.tsm.tdi(tdi)?;
        let own = record.iface.requester_id().segment();
        let segments = match record.state.owner() {
            Some(owner) => self
                .tsm
                .tsm()
                .with_guest_table(owner, |t| iommus_of(t, owner, Some(own)))?,
            None => heapless::Vec::from_iter([own]),
        };
        for segment in segments {
            if let Some(owner) = record.state.owner() {
                let status = IQ_STATUS_HPA;
                let regs =
                    platform_tdx::dmar::iotlb_request_regs(segment, self.tdr(owner), status, 1);
                let out = self.seamcall(platform_tdx::dmar::TDH_IQ_INV_REQUEST, regs);
                // Owing nothing, or queued already: the PROCESS below is all it takes.
                let fine = [
                    platform_tdx::status::TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
                    platform_tdx::status::TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
                ];
                if !fine.contains(&out.rax) {
                    Self::outcome(platform_tdx::dmar::TDH_IQ_INV_REQUEST, &out).map(drop)?;
                }
            }
            let regs = SeamRegs {
                rcx: u64::from(segment),
                ..SeamRegs::default()
            };
            self.done(abi::TDH_IQ_INV_PROCESS, regs)?;
        }
        Ok(())
    }

    /// TDH.MEM.SEPT.RD of the 4 KiB page holding `gpa` in `td`'s S-EPT: the entry the walk
    /// stopped at, its level and the epoch R8 gives; `None` where nothing is mapped.
    fn sept_entry(&mut self, td: GuestId, gpa: Gpa) -> TsmResult<Option<(SeptEntry, u8, u64)>> {
        let page = Gpa::try_new(gpa.as_u64() & !PageSize::Size4K.offset_mask())?;
        let regs = SeamRegs {
            rcx: page_info(page, PageSize::Size4K),
            rdx: self.tdr(td),
            ..SeamRegs::default()
        };
        let out = self.seamcall(abi::TDH_MEM_SEPT_RD, regs);
        match Self::outcome(abi::TDH_MEM_SEPT_RD, &out) {
            Ok(_) => {}
            Err(Error::NotMapped) => return Ok(None),
            Err(e) => return Err(e),
        }
        let level = u8::try_from(out.rdx & 0x7).map_err(|_| Error::InvalidPageSize)?;
        Ok(Some((SeptEntry::from_bits(out.rcx), level, out.r8)))
    }

    /// Invalidations one unbind call of the backend's completes before it calls again: none
    /// in manual mode.
    fn iotlb_waits(&self) -> usize {
        if self.manual { 0 } else { IOTLB_WAITS }
    }

    /// How the host names `td`: its TDR page. A TD the firmware does not know (a scenario's
    /// bad handle) gets its slot number, which is below host memory and so never a TDR.
    pub fn tdr(&self, td: GuestId) -> u64 {
        match self.tsm.tdr_of(td) {
            Ok(Some(entry)) => entry.tdr.as_u64(),
            _ => handle_reg(td),
        }
    }

    /// How the host names `device`: the SPDM id whose record holds it. A device no SPDM id
    /// holds (a scenario's bad handle) gets a number past every SPDM id, which names none.
    pub fn spdm_id(&self, device: DeviceId) -> u64 {
        let max = tsm_core::capacity::MAX_DEVICES as u64;
        (0..max)
            .find(|&id| matches!(self.tsm.spdm(id), Ok(Some(e)) if e.device == Some(device)))
            .unwrap_or(max.saturating_add(handle_reg(device)))
    }

    /// How the host names `tdi`: its function ID (`function_id_reg_t`). A TDI the firmware
    /// does not know (a scenario's bad handle) gets its slot with bit 32 set, which is never a
    /// function ID (bits 63:32 are reserved: `TDX_OPERAND_INVALID` + RCX).
    pub fn function_of(&self, tdi: TdiId) -> u64 {
        match self.tsm.devif(tdi) {
            Ok(Some(entry)) => u64::from(entry.function),
            _ => handle_reg(tdi) | 1 << 32,
        }
    }

    /// The TDR of the TD `tdi` is for (`None`: none, or no such TDI).
    fn td_of_tdi(&self, tdi: TdiId) -> Option<u64> {
        match self.tsm.devif(tdi) {
            Ok(Some(entry)) => entry.tdr.map(|t| t.as_u64()),
            _ => None,
        }
    }

    /// A private page triple (DEVIFCS, TD buffer, VMM buffer) no TDI holds.
    fn free_devif_pages(&self) -> TsmResult<(u64, u64, u64)> {
        let page = |k: usize, i: usize| -> Option<u64> {
            let index = k.checked_mul(3)?.checked_add(i)?;
            let offset = u64::try_from(index.checked_mul(MESSAGE_PAGE_BYTES)?).ok()?;
            IDE_END.checked_add(offset)
        };
        let mut held = heapless::Vec::<u64, { 3 * tsm_core::capacity::MAX_TDIS }>::new();
        for slot in 0..tsm_core::capacity::MAX_TDIS {
            let slot = u16::try_from(slot).map_err(|_| Error::Inconsistent)?;
            if let Some(e) = self.tsm.devif(TdiId::from_slot(slot))? {
                for p in [e.pages.devifcs, e.pages.td_buffer, e.pages.vmm_buffer] {
                    held.push(p.as_u64()).map_err(|_| Error::Inconsistent)?;
                }
            }
        }
        (0..DEVIF_TRIPLES)
            .find_map(|k| {
                let t = (page(k, 0)?, page(k, 1)?, page(k, 2)?);
                (!held.contains(&t.0) && !held.contains(&t.1) && !held.contains(&t.2)).then_some(t)
            })
            .ok_or(Error::Inconsistent)
    }

    /// The IDE stream ID SPDM id `id` has (`devif_id_t` bits 23:16); a stream ID no stream has
    /// (page selector set: ours, never used) when it has none or names no SPDM id.
    fn stream_id_of(&self, id: u64) -> u64 {
        match self.stream_of(id) {
            Ok(Some((stream, _))) => stream,
            _ => 0xff,
        }
    }

    /// A metadata page no SPDM id holds.
    fn free_spdm_page(&self) -> TsmResult<u64> {
        self.free_page(TDR_END, SPDM_PAGES)
    }

    /// A page of the `count` metadata pages from `first` that no SPDM id or stream holds.
    fn free_page(&self, first: u64, count: usize) -> TsmResult<u64> {
        let max = tsm_core::capacity::MAX_DEVICES as u64;
        let mut held = heapless::Vec::<
            u64,
            { 2 * tsm_core::capacity::MAX_DEVICES * (platform_tdx::module::SPDM_MT_MAX_PAGES + 1) },
        >::new();
        for id in 0..max {
            if let Some(e) = self.tsm.spdm(id)? {
                let stream = e
                    .link
                    .stream
                    .iter()
                    .flat_map(|s| s.metadata.pages.iter().chain(s.metadata.root.iter()));
                for p in e
                    .metadata
                    .pages
                    .iter()
                    .chain(e.metadata.root.iter())
                    .chain(stream)
                {
                    held.push(p.as_u64()).map_err(|_| Error::Inconsistent)?;
                }
            }
        }
        (0..count)
            .filter_map(|i| {
                let offset = u64::try_from(i.checked_mul(MESSAGE_PAGE_BYTES)?).ok()?;
                first.checked_add(offset)
            })
            .find(|p| !held.contains(p))
            .ok_or(Error::Inconsistent)
    }

    fn outcome(leaf: u16, regs: &SeamRegs) -> TsmResult<Completion> {
        abi::outcome(leaf, regs).unwrap_or(Err(Error::InvalidHandle))
    }

    /// `leaf`'s outcome from the registers it returned; for TDX_SPDM_REQUEST the request,
    /// copied from the request page to `request`: as many bytes as the DOE object's own
    /// header says, which must be RCX (`Inconsistent` otherwise).
    fn take_request(
        &self,
        leaf: u16,
        out: &SeamRegs,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        let outcome = Self::outcome(leaf, out)?;
        let Completion::Relay(n) = outcome else {
            return Ok(outcome);
        };
        let page = self
            .host
            .get(REQUEST_AT..RESPONSE_AT)
            .ok_or(Error::Inconsistent)?;
        let dw1 = page
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or(Error::Inconsistent)?;
        let len = usize::try_from(dw1 & DOE_LENGTH_MASK)
            .ok()
            .and_then(|dwords| dwords.checked_mul(4))
            .filter(|&len| len == n)
            .ok_or(Error::Inconsistent)?;
        request
            .get_mut(..len)
            .ok_or(Error::Inconsistent)?
            .copy_from_slice(page.get(..len).ok_or(Error::Inconsistent)?);
        Ok(outcome)
    }

    fn call(&mut self, leaf: u16, regs: SeamRegs) -> TsmResult<SeamRegs> {
        let out = self.seamcall(leaf, regs);
        Self::outcome(leaf, &out).map(|_| out)
    }

    fn done(&mut self, leaf: u16, regs: SeamRegs) -> TsmResult<()> {
        self.call(leaf, regs).map(drop)
    }

    /// TDH.SPDM.CONNECT of SPDM id `id` as Linux's event loop drives it: while the firmware
    /// answers TDX_SPDM_REQUEST, the DOE object in the request page (its length from its own
    /// header) goes to the model device and its answer into the response page, and the same
    /// registers are issued again. The config page says what Linux's `tdx_link_pf0_probe`
    /// fills: KEY_UPD, policy 0, every certificate slot.
    fn connect(&mut self, id: u64) -> TsmResult<()> {
        let mut config = [0u8; 8];
        config
            .get_mut(..4)
            .ok_or(Error::Inconsistent)?
            .copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
        *config.get_mut(5).ok_or(Error::Inconsistent)? = 0xFF;
        self.host
            .get_mut(CONFIG_AT..)
            .and_then(|page| page.get_mut(..config.len()))
            .ok_or(Error::Inconsistent)?
            .copy_from_slice(&config);
        let regs = SeamRegs {
            rcx: id,
            rdx: CONFIG_HPA,
            r8: RESPONSE_HPA,
            r9: REQUEST_HPA,
            r10: abi::hpa_array(DEV_INFO_HPA, 1),
            ..SeamRegs::default()
        };
        for _ in 0..4 {
            let out = self.seamcall(abi::TDH_SPDM_CONNECT, regs);
            let mut request = [0u8; tsm_core::MAX_RELAY_BYTES];
            match self.take_request(abi::TDH_SPDM_CONNECT, &out, &mut request)? {
                Completion::Relay(n) => {
                    let mut answer = [0u8; tsm_core::MAX_RELAY_BYTES];
                    let req = request.get(..n).ok_or(Error::Inconsistent)?;
                    let len = self
                        .device
                        .get_mut()
                        .answer(req, &mut answer)
                        .ok_or(Error::DeviceUnresponsive)?;
                    self.host
                        .get_mut(RESPONSE_AT..)
                        .and_then(|page| page.get_mut(..len))
                        .ok_or(Error::Inconsistent)?
                        .copy_from_slice(answer.get(..len).ok_or(Error::Inconsistent)?);
                }
                _ => return Ok(()),
            }
        }
        Err(Error::Inconsistent)
    }

    /// TDH.IDE.STREAM.CREATE for SPDM id `id` (function `rid`) as Linux's
    /// `tdx_ide_stream_create` issues it: a selective stream whose RID association covers the
    /// device's functions (the eight of its device number, the core's
    /// `DeviceFunctions::physical`: every TDI of the device hangs off this stream), one address
    /// window (the span of the device's BARs: the model has no bridge window), a free
    /// metadata page. The stream ID.
    fn stream_create(&mut self, id: u64, rid: RequesterId) -> TsmResult<u64> {
        let page = self.free_page(SPDM_END, IDE_PAGES)?;
        let routing = u64::from(rid.routing_id());
        let (first, last) = (routing & !0x7, routing | 0x7);
        // The window covers the device's BARs (streams of two devices never overlap: the
        // firmware refuses it); a device without BARs gets a 1 MiB window of its own far up.
        let dev = self.tsm.spdm(id)?.and_then(|e| e.device);
        let bars = match dev {
            Some(d) => self.tsm.tsm().device(d)?.bars,
            None => tsm_core::registry::Bars::new(),
        };
        let window = platform_tdx::link::bars_window(&bars).unwrap_or_else(|| {
            let at = (1u64 << 50) | (id & 0xff) << 20;
            platform_tdx::link::addr_assoc(at, at | 0xf_ffff)
        });
        let regs = SeamRegs {
            rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
            rdx: id,
            r8: abi::hpa_array(page, 1),
            r10: last << platform_tdx::link::RID_ASSOC_RID_SHIFT,
            r11: platform_tdx::link::ASSOC_VALID | first << platform_tdx::link::RID_ASSOC_RID_SHIFT,
            r12: window[0],
            r13: window[1],
            r14: window[2],
            ..SeamRegs::default()
        };
        Ok(self.call(abi::TDH_IDE_STREAM_CREATE, regs)?.rcx)
    }

    /// TDH.IDE.STREAM.KM `op` on SPDM id `id`'s stream `stream`.
    fn km(&mut self, id: u64, stream: u64, op: u64) -> TsmResult<()> {
        self.done(
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                rcx: id,
                rdx: stream,
                r8: op,
                r9: RESPONSE_HPA,
                r10: REQUEST_HPA,
                ..SeamRegs::default()
            },
        )
    }

    /// The stream SPDM id `id` has, as the firmware recorded it: (stream ID, blocked).
    fn stream_of(&self, id: u64) -> TsmResult<Option<(u64, bool)>> {
        Ok(self
            .tsm
            .spdm(id)?
            .and_then(|e| e.link.stream)
            .map(|s| (s.id, s.blocked)))
    }

    /// Linux's `tdx_link_disconnect` for SPDM id `id`, up to TDH.SPDM.DISCONNECT: KM STOP,
    /// BLOCK, DELETE (of the stream it has, if any), DISCONNECT (if connected). The first
    /// refusal ends it.
    fn disconnect(&mut self, id: u64) -> TsmResult<()> {
        if let Some((stream, blocked)) = self.stream_of(id)? {
            if !blocked {
                self.km(id, stream, platform_tdx::link::IDE_KM_STOP)?;
                let on = SeamRegs {
                    rcx: id,
                    rdx: stream,
                    ..SeamRegs::default()
                };
                self.done(abi::TDH_IDE_STREAM_BLOCK, on)?;
            }
            self.done(
                abi::TDH_IDE_STREAM_DELETE,
                SeamRegs {
                    rcx: id,
                    rdx: stream,
                    ..SeamRegs::default()
                },
            )?;
        }
        let connected = matches!(
            self.tsm.spdm(id)?.map(|e| e.link.session),
            Some(platform_tdx::link::Session::Connected(_))
        );
        if connected {
            self.done(
                abi::TDH_SPDM_DISCONNECT,
                SeamRegs {
                    rcx: id,
                    rdx: RESPONSE_HPA,
                    r8: REQUEST_HPA,
                    ..SeamRegs::default()
                },
            )?;
        }
        Ok(())
    }

    /// The TD whose start of `tdi` waits on the device (the TDI's TD), if one does.
    fn start_waits(&self, tdi: TdiId) -> Option<GuestId> {
        let waiting = self.tsm.tsm().tdi(tdi).ok()?.exchange?;
        match waiting.op {
            tsm_core::DeviceOp::Start { guest } => Some(guest),
            _ => None,
        }
    }

    /// The guest's start of `tdi` from `guest` (TDI `fid`): an outcome of the TD's earlier
    /// request still unread is read first (the core has no such state); TDG.DEVIF.REQUEST
    /// START, unless this guest's START already waits (the core sends it again); then the
    /// host fetches the request (TDH.DEVIF.REQUEST `td_flag`).
    fn start_request(
        &mut self,
        guest: GuestId,
        tdi: TdiId,
        fid: u64,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        let on = SeamRegs {
            rcx: fid,
            ..SeamRegs::default()
        };
        let own = self.td_of_tdi(tdi) == Some(self.tdr(guest));
        let waiting = self.start_waits(tdi) == Some(guest);
        let unread = matches!(
            self.tsm.devif(tdi),
            Ok(Some(e)) if e.td_request != TdRequest::Available
        );
        if own && unread && !waiting {
            let _ = self.tdcall(guest, abi::TDG_DEVIF_RESPONSE, on);
        }
        if !(own && waiting) {
            let out = self.tdcall(
                guest,
                abi::TDG_DEVIF_REQUEST,
                SeamRegs {
                    rdx: u64::from(abi::TDISP_START_INTERFACE),
                    ..on
                },
            );
            // The TD's request only queues: the host's fetch below gives the outcome.
            let _ = Self::outcome(abi::TDG_DEVIF_REQUEST, &out)?;
        }
        let out = self.seamcall(
            abi::TDH_DEVIF_REQUEST,
            SeamRegs {
                rdx: abi::devif_req_in(0, false, true),
                r8: REQUEST_HPA,
                ..on
            },
        );
        self.take_request(abi::TDH_DEVIF_REQUEST, &out, request)
    }

    /// A private HKID no live TD holds, starting from TDR page `i`'s own (`GuestTableFull`:
    /// none left, which cannot happen with more HKIDs than TD slots).
    fn free_hkid(&self, i: usize) -> TsmResult<u64> {
        let max = platform_tdx::td::PRIVATE_HKID_MAX;
        let held = |h: u16| {
            (0..tsm_core::capacity::MAX_GUESTS)
                .filter_map(|g| u16::try_from(g).ok())
                .any(|g| {
                    matches!(self.tsm.tdr_of(GuestId::from_slot(g)), Ok(Some(e))
                        if e.hkid == h && e.life.holds_hkid())
                })
        };
        let start = u16::try_from(i)
            .ok()
            .and_then(|i| i.checked_rem(max))
            .ok_or(Error::GuestTableFull)?;
        (0..max)
            .filter_map(|k| start.checked_add(k)?.checked_rem(max)?.checked_add(1))
            .find(|&h| !held(h))
            .map(u64::from)
            .ok_or(Error::GuestTableFull)
    }

    fn stage(&mut self, ranges: &[MmioRange]) -> TsmResult<()> {
        let list = RangeList::from_ranges(ranges).ok_or(Error::TooManyRanges)?;
        let bytes = list.bytes();
        self.host
            .get_mut(..bytes.len())
            .ok_or(Error::TooManyRanges)?
            .copy_from_slice(bytes);
        Ok(())
    }
}

impl Backend for TdxBackend<'_, '_> {
    fn name(&self) -> &'static str {
        "tdx"
    }

    /// TDH.MNG.CREATE as Linux calls it: RCX the first TDR page no TD has, RDX the HKID.
    fn create_guest(&mut self) -> TsmResult<GuestId> {
        let (i, tdr) = (0..TDR_PAGES)
            .filter_map(|i| Some((i, tdr_page(i)?)))
            .find(|&(_, t)| matches!(self.tsm.td_of(t), Ok(None)))
            .ok_or(Error::GuestTableFull)?;
        let hkid = self.free_hkid(i)?;
        self.done(
            abi::TDH_MNG_CREATE,
            SeamRegs {
                rcx: tdr,
                rdx: hkid,
                ..SeamRegs::default()
            },
        )?;
        self.tsm.td_of(tdr)?.ok_or(Error::Inconsistent)
    }

    /// Linux's TD teardown (KVM `tdx_mmu_release_hkid`, `tdx_reclaim_td_control_pages`,
    /// torvalds/linux `arch/x86/kvm/vmx/tdx.c` @a4a508df): TDH.MNG.VPFLUSHDONE (refused while
    /// a TDI is bound: the core's `GuestInUse`), TDH.PHYMEM.CACHE.WB START then RESUME while
    /// TDX_INTERRUPTED_RESUMABLE (NO_HKID_READY_TO_WBCACHE counts as done), TDH.MNG.KEY.FREEID,
    /// TDH.PHYMEM.PAGE.RECLAIM of the TDR, TDH.PHYMEM.PAGE.WBINVD of it with the global KeyID.
    fn destroy_guest(&mut self, guest: GuestId) -> TsmResult<()> {
        let tdr = self.tdr(guest);
        let on = |rcx| SeamRegs {
            rcx,
            ..SeamRegs::default()
        };
        // A TDI still created for the TD would keep its TDR from being reclaimed: the host
        // hands each unbound one to no TD (TSM.DEVIF.SET_TD RDX 0), as it would remove it.
        for slot in 0..tsm_core::capacity::MAX_TDIS {
            let Ok(slot) = u16::try_from(slot) else { break };
            let tdi = TdiId::from_slot(slot);
            let unbound =
                matches!(self.tsm.tsm().tdi(tdi), Ok(r) if r.state == tsm_core::TdiState::Unbound);
            if unbound && self.td_of_tdi(tdi) == Some(tdr) {
                let regs = SeamRegs {
                    rcx: self.function_of(tdi),
                    ..SeamRegs::default()
                };
                self.done(abi::TSM_DEVIF_SET_TD, regs)?;
            }
        }
        self.done(abi::TDH_MNG_VPFLUSHDONE, on(tdr))?;
        // Bounded as KVM's loop (TDX_SEAMCALL_RETRIES); KEY.FREEID says whether it finished.
        let mut cmd = platform_tdx::td::CACHE_WB_START;
        for _ in 0..=platform_tdx::td::CACHE_WB_SUB_BLOCKS {
            let out = self.call(abi::TDH_PHYMEM_CACHE_WB, on(cmd))?;
            if out.rax != platform_tdx::status::TDX_INTERRUPTED_RESUMABLE {
                break;
            }
            cmd = platform_tdx::td::CACHE_WB_RESUME;
        }
        self.done(abi::TDH_MNG_KEY_FREEID, on(tdr))?;
        self.done(abi::TDH_PHYMEM_PAGE_RECLAIM, on(tdr))?;
        let keyed = tdr | 1 << platform_tdx::td::KEYID_SHIFT;
        self.done(abi::TDH_PHYMEM_PAGE_WBINVD, on(keyed))
    }

    /// TDH.SPDM.CREATE as Linux's `tdh_spdm_create` calls it (RCX the TDISP function ID,
    /// RDX a one-page HPA_ARRAY_T: a metadata page no SPDM id holds), then TSM.SPDM.BARS with
    /// the BARs in the parameter page, then the link as Linux's `tdx_link_connect` sets it up
    /// (CONNECT relayed, IDE stream create, KM SETUP); a refusal after TDH.SPDM.CREATE is
    /// undone (the link torn down as `tdx_link_disconnect` does, then TDH.SPDM.DELETE), so a
    /// refused create leaves nothing. The device is named by the core's handle the SPDM id's
    /// record holds (the backend translates back for every leaf).
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        self.stage(bars)?;
        let page = self.free_spdm_page()?;
        let regs = SeamRegs {
            rcx: abi::function_id(rid),
            rdx: abi::hpa_array(page, 1),
            ..SeamRegs::default()
        };
        let id = self.call(abi::TDH_SPDM_CREATE, regs)?.rcx;
        let bars = SeamRegs {
            rcx: id,
            rdx: PARAM_HPA,
            ..SeamRegs::default()
        };
        let linked = self.done(abi::TSM_SPDM_BARS, bars).and_then(|()| {
            self.connect(id)?;
            let stream = self.stream_create(id, rid)?;
            self.km(id, stream, platform_tdx::link::IDE_KM_SETUP)
        });
        if let Err(e) = linked {
            self.disconnect(id)?;
            self.done(
                abi::TDH_SPDM_DELETE,
                SeamRegs {
                    rcx: id,
                    ..SeamRegs::default()
                },
            )?;
            return Err(e);
        }
        self.tsm
            .spdm(id)?
            .and_then(|e| e.device)
            .ok_or(Error::Inconsistent)
    }

    /// Linux's `tdx_link_disconnect`: KM STOP (refused while the device has TDIs: the core's
    /// `DeviceInUse`, nothing changed), BLOCK, DELETE, DISCONNECT, then TDH.SPDM.DELETE as
    /// Linux's `tdh_spdm_delete` calls it: RDX 0 (a one-page array).
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()> {
        let rcx = self.spdm_id(device);
        self.disconnect(rcx)?;
        self.done(
            abi::TDH_SPDM_DELETE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )
    }

    /// TDH.DEVIF.CREATE as a TDX-IO host issues it: RCX `devif_id_t` (the device's stream,
    /// the interface's function ID), RDX the lowest TD there is (0 before the first: ours),
    /// R8-R10 a free private page triple. The TDI is the core's handle its record names.
    fn create_tdi(&mut self, device: DeviceId, iface: RequesterId) -> TsmResult<TdiId> {
        let stream = self.stream_id_of(self.spdm_id(device));
        let function = u32::try_from(abi::function_id(iface)).map_err(|_| Error::Inconsistent)?;
        let td = (0..TDR_PAGES)
            .filter_map(tdr_page)
            .find(|&t| matches!(self.tsm.td_of(t), Ok(Some(_))))
            .unwrap_or(0);
        let (devifcs, td_buffer, vmm_buffer) = self.free_devif_pages()?;
        let regs = SeamRegs {
            rcx: abi::devif_id(0, u8::try_from(stream).unwrap_or(0xff), function),
            rdx: td,
            r8: devifcs,
            r9: td_buffer,
            r10: vmm_buffer,
            ..SeamRegs::default()
        };
        self.done(abi::TDH_DEVIF_CREATE, regs)?;
        self.tsm
            .devif_of(function)?
            .map(|(tdi, _)| tdi)
            .ok_or(Error::Inconsistent)
    }

    /// TDH.DEVIF.REMOVE: RCX the function ID.
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()> {
        let rcx = self.function_of(tdi);
        match self.done(
            abi::TDH_DEVIF_REMOVE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        ) {
            // The module's TDX_DEVIF_INVALID_STATE: not CONFIG_UNLOCKED (the core's TdiBound).
            Err(Error::TdiNotBound) => Err(Error::TdiBound),
            r => r,
        }
    }

    /// TSM.DEVIF.BIND (after TSM.DEVIF.SET_TD when the TDI is for another TD: its refusal,
    /// if any, leaves the bind to give the precise one), TSM.DEVIF.CHECK, TSM.DEVIF.UNBIND (no
    /// FORCE), each with R8 the request page; or the guest's start (TDG.DEVIF.REQUEST START,
    /// then the host's TDH.DEVIF.REQUEST `td_flag`): `Relay(n)` with the request from the
    /// request page.
    fn begin(&mut self, call: DeviceCall, request: &mut RelayBuf) -> TsmResult<Completion> {
        let on = |rcx: u64| SeamRegs {
            rcx,
            r8: REQUEST_HPA,
            ..SeamRegs::default()
        };
        let fid = self.function_of(call.tdi());
        let (leaf, out) = match call {
            DeviceCall::Bind { tdi, guest } => {
                let tdr = self.tdr(guest);
                let known = matches!(self.tsm.tdr_of(guest), Ok(Some(_)));
                if known && self.td_of_tdi(tdi) != Some(tdr) {
                    let _ = self.seamcall(
                        abi::TSM_DEVIF_SET_TD,
                        SeamRegs {
                            rcx: fid,
                            rdx: tdr,
                            ..SeamRegs::default()
                        },
                    );
                }
                let regs = SeamRegs {
                    rdx: tdr,
                    ..on(fid)
                };
                (
                    abi::TSM_DEVIF_BIND,
                    self.seamcall(abi::TSM_DEVIF_BIND, regs),
                )
            }
            DeviceCall::Start { guest, tdi } => {
                return self.start_request(guest, tdi, fid, request);
            }
            DeviceCall::Check { tdi: _ } => (
                abi::TSM_DEVIF_CHECK,
                self.seamcall(abi::TSM_DEVIF_CHECK, on(fid)),
            ),
            DeviceCall::Unbind { tdi: _ } => (
                abi::TSM_DEVIF_UNBIND,
                self.seamcall(abi::TSM_DEVIF_UNBIND, on(fid)),
            ),
        };
        self.take_request(leaf, &out, request)
    }

    /// TDH.DEVIF.RESPONSE with `answer` in the response page (RDX `devif_rsp_in_t`: the page,
    /// or 0 for none; `td_flag` when the guest's start waits), R8 the request page. An answer
    /// longer than the page is cut to the page: its own header says more than the page holds,
    /// and the firmware refuses it. When the guest's start ends, the guest reads its outcome
    /// (TDG.DEVIF.RESPONSE), which is returned.
    fn respond(
        &mut self,
        tdi: TdiId,
        answer: Option<&[u8]>,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        let page = match answer {
            None | Some([]) => 0,
            Some(bytes) => {
                let fits = bytes.get(..MESSAGE_PAGE_BYTES).unwrap_or(bytes);
                self.host
                    .get_mut(RESPONSE_AT..)
                    .and_then(|page| page.get_mut(..fits.len()))
                    .ok_or(Error::Inconsistent)?
                    .copy_from_slice(fits);
                RESPONSE_HPA
            }
        };
        let start = self.start_waits(tdi);
        let fid = self.function_of(tdi);
        let regs = SeamRegs {
            rcx: fid,
            rdx: abi::devif_rsp_in(page, start.is_some()),
            r8: REQUEST_HPA,
            ..SeamRegs::default()
        };
        let out = self.seamcall(abi::TDH_DEVIF_RESPONSE, regs);
        // The module's OUT_REQ on RESPONSE says "nothing outstanding": the core's NoExchange.
        let host = match self.take_request(abi::TDH_DEVIF_RESPONSE, &out, request) {
            Err(Error::ExchangePending) => Err(Error::NoExchange),
            r => r,
        };
        match (start, self.tsm.devif(tdi)?) {
            (Some(td), Some(e)) if matches!(e.td_request, TdRequest::Processed { .. }) => {
                let read = self.tdcall(
                    td,
                    abi::TDG_DEVIF_RESPONSE,
                    SeamRegs {
                        rcx: fid,
                        ..SeamRegs::default()
                    },
                );
                Self::outcome(abi::TDG_DEVIF_RESPONSE, &read)
            }
            _ => host,
        }
    }

    /// The model device behind its DOE mailbox.
    fn mailbox(&mut self, request: &[u8], answer: &mut RelayBuf) -> Option<usize> {
        self.device.get_mut().answer(request, answer)
    }

    /// The model device will report `report` for the TDI's interface.
    fn set_report(&mut self, tdi: TdiId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Ok(record) = self.tsm.tdi(tdi) {
            self.device
                .get_mut()
                .link_mut()
                .set_report(record.iface, report);
        }
        Ok(())
    }

    /// TDH.MMIO.MAP as Linux issues it (`tdh_mmio_map`: RCX `gpa | level`, RDX TDR PA, R8
    /// HPA, nothing else). TDX's host names no TDI: the firmware maps for the page's owner.
    /// A scenario names the TDI it maps for, as a Linux host knows whose dma-buf the page
    /// comes from; a page that is not that TDI's is one that host never hands to
    /// TDH.MMIO.MAP for it, and the ABI cannot say "for `tdi`". So the backend issues the
    /// leaf only for a page `tdi` owns; otherwise (the look-up refusing included) the answer
    /// is the core's refusal for `tdi`, which by construction changes nothing (a success
    /// there would be reported as `Inconsistent`, so the firmwares would disagree).
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()> {
        let core = self.tsm.tsm();
        if core.owner_of(hpa, size) != Ok(Some(tdi)) {
            return match core.map_mmio(tdi, guest, gpa, hpa, size) {
                Ok(()) => Err(Error::Inconsistent),
                Err(e) => Err(e),
            };
        }
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: self.tdr(guest),
            r8: hpa.as_u64(),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_MAP, regs)
    }

    /// Ours: TSM.DEVIF.ERROR.
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let rcx = self.function_of(tdi);
        let out = self.seamcall(
            abi::TSM_DEVIF_ERROR,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
        Self::outcome(abi::TSM_DEVIF_ERROR, &out)
    }

    /// Ours: TSM.DEVIF.UNBIND with RDX FORCE.
    /// One forced unbind call; as [`Backend::unbind`], a stop at an IOTLB invalidation (the
    /// owner's domain, then the DMA context's) has the host request and drain it and call
    /// again, at most `IOTLB_WAITS` times.
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let regs = SeamRegs {
            rcx: self.function_of(tdi),
            rdx: abi::UNBIND_FLAG_FORCE,
            ..SeamRegs::default()
        };
        let mut out = self.seamcall(abi::TSM_DEVIF_UNBIND, regs);
        for _ in 0..self.iotlb_waits() {
            if !matches!(
                Self::outcome(abi::TSM_DEVIF_UNBIND, &out),
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked)
            ) {
                break;
            }
            self.process_invalidations(tdi)?;
            out = self.seamcall(abi::TSM_DEVIF_UNBIND, regs);
        }
        Self::outcome(abi::TSM_DEVIF_UNBIND, &out)
    }

    /// The host's re-establishment of the device's IDE stream, as a TDX Connect host does it:
    /// TDH.IDE.STREAM.KM SETUP, which re-keys the stream a forced unbind cut at the root port
    /// (the firmware's `Tsm::setup_stream`: refused while a TDI of the device is bound). A
    /// stream the host BLOCKed cannot be re-keyed: it is deleted and created again first
    /// (scenarios never block one). A device no SPDM id holds: the SPDM id that names none,
    /// `InvalidHandle`.
    fn setup_stream(&mut self, device: DeviceId) -> TsmResult<()> {
        let id = self.spdm_id(device);
        let stream = match self.stream_of(id)? {
            Some((stream, false)) => stream,
            Some((stream, true)) => {
                self.done(
                    abi::TDH_IDE_STREAM_DELETE,
                    SeamRegs {
                        rcx: id,
                        rdx: stream,
                        ..SeamRegs::default()
                    },
                )?;
                let rid = self.tsm.spdm(id)?.ok_or(Error::InvalidHandle)?.function;
                self.stream_create(id, rid)?
            }
            None => id,
        };
        self.km(id, stream, platform_tdx::link::IDE_KM_SETUP)
    }

    /// TDH.MMIO.UNMAP.
    fn host_unmap(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: self.tdr(guest),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_UNMAP, regs)
    }

    /// TDH.MMIO.BLOCK.
    fn host_block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: self.tdr(guest),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_BLOCK, regs)
    }

    /// Ours: TSM.MMIO.ZAP_CHECK.
    fn host_zap(&mut self, range: MmioRange) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: range.base().as_u64(),
            rdx: range.pages(),
            ..SeamRegs::default()
        };
        self.done(abi::TSM_MMIO_ZAP_CHECK, regs)
    }

    /// Ours: TSM.DEVIF.STATE.
    fn tdi_state(&mut self, tdi: TdiId) -> TsmResult<TdiState> {
        let rcx = self.function_of(tdi);
        let out = self.call(
            abi::TSM_DEVIF_STATE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )?;
        // The owner as the firmware names it: its TDR.
        let owner = self.tsm.td_of(out.r8)?.ok_or(Error::InvalidHandle);
        let code = out.rdx;
        Ok(match code {
            c if c == abi::TdiStateCode::Unbound as u64 => TdiState::Unbound,
            c if c == abi::TdiStateCode::Locked as u64 => TdiState::Locked { owner: owner? },
            c if c == abi::TdiStateCode::Run as u64 => TdiState::Run { owner: owner? },
            c if c == abi::TdiStateCode::Error as u64 => TdiState::Error {
                owner: owner?,
                blocking: (out.r9 != 0).then_some(Cursor::START),
            },
            c if c == abi::TdiStateCode::Unbinding as u64 => TdiState::Unbinding {
                owner: owner?,
                step: UnbindStep::Stop,
            },
            _ => return Err(Error::InvalidHandle),
        })
    }

    /// TDH.MEM.SEPT.RD at 4 KiB: the walk stops at the leaf covering `gpa`, if any.
    fn leaf(&mut self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        let Some((entry, level, epoch)) = self.sept_entry(guest, gpa)? else {
            return Ok(None);
        };
        let state = entry.state(level);
        if !state.is_mmio_leaf() {
            return Ok(None);
        }
        let size = leaf_size(level).ok_or(Error::InvalidPageSize)?;
        Ok(Some(Leaf {
            guest,
            gpa: Gpa::try_new(gpa.as_u64() & !size.offset_mask())?,
            hpa: Hpa::try_new(entry.phys())?,
            size,
            state: if state.is_blocked() {
                LeafState::Blocked { epoch }
            } else {
                LeafState::Mapped
            },
        }))
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
        self.tsm
            .with_table(|t| FlushControl::defer_flush(t, guest, defer))
    }

    /// One unbind call as the Linux host makes it: an unbind stopped at an IOTLB invalidation
    /// (`IotlbNotTracked`: TDX_IOMMU_IOTLB_TRACKING_NOT_DONE for the owner's domain;
    /// `IotlbInvalidationPending`: TDX_DMAR_INVALID_INV_STATE + DMAR for its DMA context's
    /// own, which the firmware queued)
    /// has the host request what is owed and drain the queues (`process_invalidations`) and
    /// call again, at most `IOTLB_WAITS` times.
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let mut request: RelayBuf = [0u8; tsm_core::MAX_RELAY_BYTES];
        let first = self.begin(DeviceCall::Unbind { tdi }, &mut request);
        let mut r = relay_to_end(self, tdi, first, &mut request);
        for _ in 0..self.iotlb_waits() {
            if !matches!(
                r,
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked)
            ) {
                break;
            }
            self.process_invalidations(tdi)?;
            let first = self.begin(DeviceCall::Unbind { tdi }, &mut request);
            r = relay_to_end(self, tdi, first, &mut request);
        }
        r
    }

    /// TDH.DMAR.ADD of the TDI's PASID entry for its owner (a TDI with no owner: the first TD,
    /// which the core then refuses as unbound), the entry as Linux would fill it: present
    /// clear, no translation or domain (the module's to write at accept).
    fn dma_create(&mut self, tdi: TdiId) -> TsmResult<()> {
        let record = self.tsm.tdi(tdi)?;
        let owner = record.state.owner().unwrap_or(GuestId::from_slot(0));
        let levels = self.tsm.with_guest_table(owner, |t| t.levels())?;
        let regs = SeamRegs {
            rcx: platform_tdx::dmar::dmar_idx(record.iface.requester_id()),
            rdx: self.tdr(owner),
            r8: platform_tdx::dmar::add_qword0(levels),
            r9: platform_tdx::dmar::ADD_QWORD1,
            ..SeamRegs::default()
        };
        self.done(abi::TDH_DMAR_ADD, regs)
    }

    /// TDG.DMAR.ACCEPT from `guest` of the TDI's entry (RCX its function ID, an L1 target).
    /// The module refuses a TD that is not the TDI's with OPERAND_INVALID + RCX: here, when
    /// the TDI has another owner, that is the core's `NotOwner`; and a TDI neither locked nor
    /// running with TDX_DEVIF_TDISP_INVALID_STATE: here the core's status for its state
    /// (`TdiNotBound`, `TdiInError`, `UnbindInProgress`).
    fn dma_accept(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let rcx = self.function_of(tdi);
        let out = self.tdcall(
            guest,
            abi::TDG_DMAR_ACCEPT,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
        match Self::outcome(abi::TDG_DMAR_ACCEPT, &out) {
            Err(Error::InvalidHandle)
                if self
                    .tsm
                    .tdi(tdi)
                    .is_ok_and(|r| r.state.owner().is_some_and(|o| o != guest)) =>
            {
                Err(Error::NotOwner)
            }
            Err(Error::TdiBound) => Err(match self.tsm.tdi(tdi)?.state {
                TdiState::Unbound => Error::TdiNotBound,
                TdiState::Error { .. } => Error::TdiInError,
                TdiState::Unbinding { .. } => Error::UnbindInProgress,
                _ => Error::TdiBound,
            }),
            r => r.map(drop),
        }
    }

    /// The model device's TDISP state of the interface and the device's stream.
    fn device_sends_tee(&mut self, tdi: TdiId) -> TsmResult<bool> {
        let device = &self.device;
        crate::backend::tdi_sends_tee(self.tsm.tsm(), tdi, |iface| {
            Ok(device.lock().dsm().state(iface))
        })
    }

    /// The PASID entry as TDH.DMAR.READ gives it, whatever the TDI's state: present, or
    /// blocked with its invalidation not DONE (PENDING or QUEUED: until the host's
    /// TDH.IQ.INV.PROCESS sees the wait descriptor, the IOTLB may still hold what the entry
    /// translated), through an S-EPT root (SLPTPTR, set only by the TD's accept) that is a
    /// TD's: that TD's private memory.
    fn iommu_reach(&mut self, tdi: TdiId) -> TsmResult<tsm_core::dma::DmaReach> {
        use platform_tdx::dmar::{INV_DONE, MAP_BLOCKED, PTE_P, PTE_SLPTPTR_MASK, dmar_idx};
        use tsm_core::dma::DmaReach;
        let iface = self.tsm.tsm().tdi(tdi)?.iface;
        let out = self.seamcall(
            abi::TDH_DMAR_READ,
            SeamRegs {
                rcx: dmar_idx(iface.requester_id()),
                ..SeamRegs::default()
            },
        );
        let root = out.r8 & PTE_SLPTPTR_MASK;
        let (map, inv) = dmar_read_state(out.rdx);
        let translates = out.r8 & PTE_P != 0 || (map == MAP_BLOCKED && inv != INV_DONE);
        if out.rax != 0 || root == 0 || !translates {
            return Ok(DmaReach::SharedOnly);
        }
        Ok(self
            .td_of_root(root)
            .map_or(DmaReach::SharedOnly, DmaReach::Private))
    }

    /// The device and the PASID entry ([`Backend::dma_reach`]), then the S-EPT leaf covering
    /// the address
    /// (TDH.MEM.SEPT.RD, the tree the entry's SLPTPTR names): an MMIO leaf whose R bit (a
    /// read) or W bit (a write) is set once the TD accepted it (MMIO_MAPPED), or blocked (either
    /// direction: [`crate::backend::leaf_reachable`]). A leaf
    /// still MMIO_PENDING counts as the TD's private page (ours: the scenarios never have the
    /// TD run TDG.MMIO.ACCEPT, and the core and SEV have no pending MMIO state to compare).
    fn dma_access(
        &mut self,
        tdi: TdiId,
        access: crate::backend::DmaAccess,
    ) -> TsmResult<tsm_core::dma::DmaReach> {
        use platform_tdx::ept::SeptState;
        let reach = self.dma_reach(tdi)?;
        crate::backend::access_reach(reach, |owner| {
            let Some((entry, level, _)) = self.sept_entry(owner, access.gpa)? else {
                return Ok(false);
            };
            Ok(match entry.state(level) {
                SeptState::MmioMapped if access.write => entry.write(),
                SeptState::MmioMapped => entry.read(),
                SeptState::MmioPending => true,
                // Still in the tree until its removal: a TLB may hold the copy it had
                // ([`crate::backend::leaf_reachable`]), whichever direction.
                SeptState::MmioBlocked | SeptState::MmioPendingBlocked => true,
                _ => false,
            })
        })
    }

    fn complete_invalidations(&mut self, tdi: TdiId) -> TsmResult<()> {
        self.process_invalidations(tdi)
    }

    /// The module never completes a queued invalidation on its own: manual mode only stops
    /// the backend's own unbind calls from processing.
    fn set_manual_invalidations(&mut self, manual: bool) -> TsmResult<()> {
        self.manual = manual;
        Ok(())
    }

    fn dma_context(&mut self, tdi: TdiId) -> TsmResult<Option<tsm_core::dma::DmaState>> {
        Ok(self.tsm.tdi(tdi).ok().and_then(|r| r.dma))
    }
}
