//! The SEAMCALL dispatcher: operand checks (unknown leaves, reserved bits, address widths and
//! alignment) answer the documented status and change nothing; statuses name the operand. And
//! the relay: every leaf that needs the device is driven here through registers and host pages
//! alone, the test acting as the Linux host's event loop with a model device behind its DOE
//! mailbox.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::RefCell;
use std::collections::BTreeMap;

use platform_tdx::TdxModule;
use platform_tdx::abi::{
    self, BufferMemory, Dispatcher, HostBuffer, RangeList, SeamRegs, page_info,
};
use platform_tdx::ept::SeptState;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::module::{DevifEntry, MESSAGE_PAGE_BYTES, SpdmEntry};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::*;
use tsm_core::capacity::{MAX_DEVICES, MAX_TDIS};
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Gpa, MAX_RELAY_BYTES, MmioRange, ModelSession, PageSize, RequesterId, TdiId, TdispState,
};

/// Host memory: page 0 the range list, then message pages (request, response) of TDIs, then
/// pages 7-10 the TDR pages of the TDs `World::create_td` makes, then pages 11-18 SPDM
/// metadata (one per device, by bus: `spdm_page`), then the link's pages: 19 the SPDM config
/// page, 20 the dev_info page, 21 and 22 the link's response and request pages, 23-30 IDE
/// stream metadata (one per device, by bus: `ide_page`), 31-39 the private page triples
/// (DEVIFCS, TD buffer, VMM buffer) TDH.DEVIF.CREATE takes for the TDIs whose shared pages are
/// `PAGES_A`, `PAGES_B`, `PAGES_C` (`private_pages`).
const HOST: u64 = 0x7_0000_0000;
const HOST_PAGES: usize = 40;
const CONFIG_PAGE: u64 = host_page(19);
const DEV_INFO_PAGE: u64 = host_page(20);
const LINK_RESPONSE: u64 = host_page(21);
const LINK_REQUEST: u64 = host_page(22);
/// The first SPDM metadata page, and how many there are.
const SPDM_FIRST: u64 = 11;
const SPDM_PAGES: u64 = 8;
/// The first TDR page, and how many there are.
const TDR_FIRST: u64 = 7;
const TDRS: u64 = 4;
/// The HKID TDs are created with (any private one: not 0).
const HKID: u64 = 5;
const PARAMS: u64 = HOST;
const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;

/// Host page `i`.
const fn host_page(i: u64) -> u64 {
    HOST + i * MESSAGE_PAGE_BYTES as u64
}

/// The SPDM metadata page of the device on bus `bus`.
const fn spdm_page(bus: u8) -> u64 {
    host_page(SPDM_FIRST + bus as u64 % SPDM_PAGES)
}

/// The private pages (R8, R9, R10 of TDH.DEVIF.CREATE) of the TDI whose shared request page
/// is `request` (host page 1, 3 or 5).
const fn private_pages(request: u64) -> (u64, u64, u64) {
    let k = ((request - HOST) / MESSAGE_PAGE_BYTES as u64 - 1) / 2;
    (
        host_page(31 + 3 * k),
        host_page(32 + 3 * k),
        host_page(33 + 3 * k),
    )
}

/// The IDE stream metadata page of the device on bus `bus`.
const fn ide_page(bus: u8) -> u64 {
    host_page(23 + bus as u64 % SPDM_PAGES)
}

/// The message pages of the first TDI, and of a second and third one.
const PAGES_A: (u64, u64) = (host_page(1), host_page(2));
const PAGES_B: (u64, u64) = (host_page(3), host_page(4));
const PAGES_C: (u64, u64) = (host_page(5), host_page(6));

/// What `World::image` returns: the core's tables with the S-EPT (every shard's), the
/// device's state, every TDI's message pages, and host memory.
type Image<const N: usize = 1> = (
    Snapshot<(Vec<Page>, SeptBookkeeping), N>,
    Vec<(u32, TdispState)>,
    Vec<Option<DevifEntry>>,
    Vec<u8>,
    Vec<Option<SpdmEntry>>,
);

/// A firmware (over `N` shards, one unless a test says), the host's memory and the device
/// behind its DOE mailbox.
struct World<'m, const N: usize = 1> {
    fw: TdxModule<'m, ModelSession, N>,
    mem: RefCell<Vec<u8>>,
    device: RefCell<ModelDevice>,
    /// The shared request and response pages the host relays each TDI's messages in.
    pages: RefCell<BTreeMap<u64, (u64, u64)>>,
    /// TDs made so far by `create_td`.
    tds: std::cell::Cell<u64>,
}

impl<'m> World<'m> {
    fn new(mem: &'m mut [Page]) -> Self {
        Self::with_iq_slots(mem, platform_tdx::dmar::IQ_SLOTS_ONE_PAGE)
    }

    /// [`World::new`] with `slots` free slots in each IOMMU's trusted invalidation queue.
    fn with_iq_slots(mem: &'m mut [Page], slots: u16) -> Self {
        let pool = FramePool::new(mem, 0x20_0000_0000).unwrap();
        World {
            fw: TdxModule::new(Sept::new(pool, SeptLevels::Four), ModelSession::model())
                .with_iq_slots(slots),
            mem: RefCell::new(vec![0; HOST_PAGES * MESSAGE_PAGE_BYTES]),
            device: RefCell::new(ModelDevice::model()),
            pages: RefCell::new(BTreeMap::new()),
            tds: std::cell::Cell::new(0),
        }
    }
}

impl<'m, const N: usize> World<'m, N> {
    /// The core's TDI of function ID `tdi`.
    fn id(&self, tdi: u64) -> TdiId {
        self.fw.devif_of(tdi as u32).unwrap().unwrap().0
    }

    /// A SEAMCALL; a leaf that may leave a request and names a TDI this host relays for gets
    /// the TDI's shared request page in R8 when R8 is 0 (`call_raw` does not).
    fn call(&self, leaf: u64, mut regs: SeamRegs) -> SeamRegs {
        let relays = [
            abi::TSM_DEVIF_BIND,
            abi::TSM_DEVIF_CHECK,
            abi::TDH_DEVIF_REQUEST,
        ]
        .map(u64::from)
        .contains(&leaf)
            || (leaf == u64::from(abi::TSM_DEVIF_UNBIND) && regs.rdx == 0);
        if relays
            && regs.r8 == 0
            && let Some(pages) = self.pages.borrow().get(&regs.rcx)
        {
            regs.r8 = pages.0;
        }
        self.call_raw(leaf, regs)
    }

    fn call_raw(&self, leaf: u64, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = leaf;
        let mut mem = self.mem.borrow_mut();
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut mem)).seamcall(&mut regs);
        regs
    }

    fn tdcall(&self, td: u64, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        let mut mem = self.mem.borrow_mut();
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut mem)).tdcall(td, &mut regs);
        regs
    }

    /// TDH.MNG.CREATE with the next TDR page, as Linux's `tdh_mng_create` calls it: RCX the
    /// TDR PA, RDX the HKID; nothing read back. The TD, named by its TDR PA.
    fn create_td(&self) -> u64 {
        let n = self.tds.get();
        assert!(n < TDRS);
        self.tds.set(n + 1);
        let tdr = host_page(TDR_FIRST + n);
        self.ok(
            abi::TDH_MNG_CREATE,
            SeamRegs {
                rcx: tdr,
                // One HKID per live TD, as KVM's `tdx_guest_keyid_alloc` hands them out.
                rdx: HKID + n,
                ..Default::default()
            },
        );
        tdr
    }

    /// Where the report of bound `tdi` puts host page `hpa`: what the guest's TDG.MMIO.ACCEPT
    /// gives in RDX (the bind's MMIO_REPORTING_OFFSET added).
    fn reported(&self, tdi: u64, hpa: u64) -> u64 {
        hpa + self
            .fw
            .tsm()
            .tdi(self.id(tdi))
            .unwrap()
            .mmio_offset
            .unwrap()
    }

    fn ok(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(u64::from(leaf), regs);
        assert_eq!(out.rax, TDX_SUCCESS, "leaf {leaf:#x}: {:#x}", out.rax);
        out
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let off = (at - HOST) as usize;
        self.mem.borrow()[off..off + len].to_vec()
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        let off = (at - HOST) as usize;
        self.mem.borrow_mut()[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn put_list(&self, list: &RangeList) {
        self.write(PARAMS, list.bytes());
    }

    /// The TD TDIs are created for unless a test names another: the first one (made here if
    /// the test made none).
    fn first_td(&self) -> u64 {
        let first = host_page(TDR_FIRST);
        if self.fw.td_of(first).unwrap().is_none() {
            assert_eq!(self.create_td(), first);
        }
        first
    }

    /// TDH.DEVIF.CREATE of `iface` on `dev` for the first TD, relaying through `pages`: the
    /// TDI, named by its function ID.
    fn create_tdi(&self, dev: u64, iface: RequesterId, pages: (u64, u64)) -> u64 {
        let td = self.first_td();
        self.create_tdi_for(td, dev, iface, pages)
    }

    /// TDH.DEVIF.CREATE of `iface` on `dev` for TD `td`.
    fn create_tdi_for(&self, td: u64, dev: u64, iface: RequesterId, pages: (u64, u64)) -> u64 {
        self.ok(
            abi::TDH_DEVIF_CREATE,
            devif_create_regs(dev, iface, td, private_pages(pages.0)),
        );
        let tdi = abi::function_id(iface);
        self.pages.borrow_mut().insert(tdi, pages);
        tdi
    }

    fn pages_of(&self, tdi: u64) -> (u64, u64) {
        self.pages.borrow()[&tdi]
    }

    /// The DOE object in `tdi`'s request page: its length from its own header (dword 1, bits
    /// 17:0, in dwords), as Linux takes it; RCX of the leaf (`rcx`) must say the same.
    fn request(&self, tdi: u64, rcx: u64) -> Vec<u8> {
        let page = self.pages_of(tdi).0;
        let header = self.read(page, 8);
        let dwords = u32::from_le_bytes(header[4..8].try_into().unwrap()) & 0x3_ffff;
        let len = dwords as usize * 4;
        assert_eq!(
            len as u64,
            (rcx >> 8) & 0xffff,
            "RCX 23:8 is the request's length"
        );
        assert_eq!(
            &header[..4],
            &[0x01, 0x00, 0x02, 0x00],
            "PCI-SIG, secured SPDM"
        );
        self.read(page, len)
    }

    /// The device's DOE mailbox: its answer to `request`, if it answers.
    fn doe(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let n = self.device.borrow_mut().answer(request, &mut answer)?;
        Some(answer[..n].to_vec())
    }

    /// TDH.DEVIF.RESPONSE for `tdi` with `answer` in its response page (`None`: no answer,
    /// RDX's page 0), the next request into its request page.
    fn respond(&self, tdi: u64, answer: Option<&[u8]>) -> SeamRegs {
        self.respond_flag(tdi, answer, false)
    }

    /// [`World::respond`] with `td_flag`.
    fn respond_flag(&self, tdi: u64, answer: Option<&[u8]>, td_flag: bool) -> SeamRegs {
        let (request, response) = self.pages_of(tdi);
        if let Some(bytes) = answer {
            self.write(response, bytes);
        }
        self.call(
            u64::from(abi::TDH_DEVIF_RESPONSE),
            SeamRegs {
                rcx: tdi,
                rdx: abi::devif_rsp_in(answer.map_or(0, |_| response), td_flag),
                r8: request,
                ..Default::default()
            },
        )
    }

    /// The host's event loop (Linux `tdx_link_event_handler`, with TDH.DEVIF.RESPONSE where
    /// Linux reissues the leaf): while `out` says TDX_SPDM_REQUEST, take the request from
    /// `tdi`'s request page to the device and hand its answer (or its silence) back.
    fn relay(&self, tdi: u64, mut out: SeamRegs) -> SeamRegs {
        let mut rounds = 0;
        while out.rax == TDX_SPDM_REQUEST {
            rounds += 1;
            assert!(rounds < 100, "a relay that never ends");
            let request = self.request(tdi, out.rcx);
            let answer = self.doe(&request);
            out = self.respond(tdi, answer.as_deref());
        }
        out
    }

    /// The trusted DMA context of `tdi` ready for its START by TD `td`, as a TDX-IO host and TD
    /// make it: TDH.DMAR.ADD of its PASID entry unless it has one, then TDG.DMAR.ACCEPT unless
    /// the entry is present; the first refusal on the way, or success.
    fn accept_dma(&self, td: u64, tdi: u64) -> u64 {
        let rid = self
            .fw
            .tsm()
            .tdi(self.id(tdi))
            .unwrap()
            .iface
            .requester_id();
        let idx = platform_tdx::dmar::dmar_idx(rid);
        let read = self.call(u64::from(abi::TDH_DMAR_READ), on(idx));
        if read.rax == TDX_DMAR_ENTRY_NOT_PRESENT | 1 {
            let out = self.call(u64::from(abi::TDH_DMAR_ADD), dmar_add_regs(idx, td));
            if out.rax != TDX_SUCCESS {
                return out.rax;
            }
        } else if read.r8 & platform_tdx::dmar::PTE_P != 0 {
            return TDX_SUCCESS;
        }
        self.tdcall(td, abi::TDG_DMAR_ACCEPT, on(tdi)).rax
    }

    /// The usual start of `tdi` by TD `td`: its DMA context accepted ([`World::accept_dma`]),
    /// then [`World::start_only`].
    fn start(&self, td: u64, tdi: u64) -> u64 {
        match self.accept_dma(td, tdi) {
            TDX_SUCCESS => self.start_only(td, tdi),
            refused => refused,
        }
    }

    /// The guest's start of `tdi` from TD `td`, as a TDX-IO host and TD run it: TDG.DEVIF.REQUEST
    /// START, TDH.DEVIF.REQUEST `td_flag`, the relay with TDH.DEVIF.RESPONSE `td_flag`, then
    /// TDG.DEVIF.RESPONSE: the status the TD reads (or the first refusal on the way).
    fn start_only(&self, td: u64, tdi: u64) -> u64 {
        let out = self.tdcall(
            td,
            abi::TDG_DEVIF_REQUEST,
            SeamRegs {
                rcx: tdi,
                rdx: 0x86,
                ..Default::default()
            },
        );
        if out.rax != TDX_SUCCESS {
            return out.rax;
        }
        let mut out = self.call(
            u64::from(abi::TDH_DEVIF_REQUEST),
            SeamRegs {
                rcx: tdi,
                rdx: abi::devif_req_in(0, false, true),
                r8: self.pages_of(tdi).0,
                ..Default::default()
            },
        );
        let mut rounds = 0;
        while out.rax == TDX_SPDM_REQUEST {
            rounds += 1;
            assert!(rounds < 100, "a relay that never ends");
            let answer = self.doe(&self.request(tdi, out.rcx));
            out = self.respond_flag(tdi, answer.as_deref(), true);
        }
        let read = self.tdcall(
            td,
            abi::TDG_DEVIF_RESPONSE,
            SeamRegs {
                rcx: tdi,
                ..Default::default()
            },
        );
        assert_eq!(read.rax, out.rax, "the TD reads what the host got");
        read.rax
    }

    /// A leaf on TDI `tdi`, relayed to its end.
    fn relayed(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(u64::from(leaf), regs);
        self.relay(regs.rcx, out)
    }

    /// Unbind (without FORCE) to the end: every call relayed, INTERRUPTED_RESUMABLE repeated.
    fn unbind_all(&self, tdi: u64) -> u64 {
        for _ in 0..100 {
            let out = self.relayed(
                abi::TSM_DEVIF_UNBIND,
                SeamRegs {
                    rcx: tdi,
                    ..Default::default()
                },
            );
            if out.rax != TDX_INTERRUPTED_RESUMABLE {
                return out.rax;
            }
        }
        panic!("unbind never ends");
    }

    /// [`World::unbind_all`] as the Linux host runs it with a trusted DMA context: while the
    /// unbind waits for an IOTLB invalidation, the host completes the one the status names
    /// ([`World::drained`]) and calls again.
    fn unbind_drained(&self, tdi: u64) -> u64 {
        self.drained(tdi, || self.relayed(abi::TSM_DEVIF_UNBIND, on(tdi)))
    }

    /// `step` (an unbind of `tdi`, or its STOP) repeated to the end: again on
    /// INTERRUPTED_RESUMABLE; on TDX_IOMMU_IOTLB_TRACKING_NOT_DONE after
    /// [`World::process_iq`] (the TD's domain), on TDX_DMAR_INVALID_INV_STATE + DMAR after
    /// [`World::entry_iq`] (the entry's own).
    fn drained(&self, tdi: u64, mut step: impl FnMut() -> SeamRegs) -> u64 {
        let entry = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
        for _ in 0..100 {
            match step().rax {
                TDX_INTERRUPTED_RESUMABLE => {}
                TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => self.process_iq(tdi),
                rax if rax == entry => self.entry_iq(tdi),
                rax => return rax,
            }
        }
        panic!("the step never ends");
    }

    /// The host's answer to TDX_IOMMU_IOTLB_TRACKING_NOT_DONE from a leaf driving `tdi`'s
    /// unbind, on the IOMMU of segment 0 (every entry here): the owner's domain invalidation
    /// its track owes (TDH.IQ.INV.REQUEST INV_REQ_IOTLB; NOT_DONE when the host queued it
    /// already), then TDH.IQ.INV.PROCESS of everything queued.
    fn process_iq(&self, tdi: u64) {
        let owner = self.fw.tsm().tdi(self.id(tdi)).unwrap().state.owner();
        if let Some(g) = owner {
            let tdr = self.fw.tdr_of(g).unwrap().unwrap().tdr.as_u64();
            let rax = iotlb_request(self, tdr);
            assert!(
                rax == TDX_SUCCESS || rax == TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
                "TDH.IQ.INV.REQUEST IOTLB: {rax:#x}"
            );
        }
        assert_eq!(iq_process(self), TDX_SUCCESS, "TDH.IQ.INV.PROCESS");
    }

    /// The host's answer to TDX_DMAR_INVALID_INV_STATE + DMAR from a leaf driving `tdi`'s
    /// unbind: the firmware queued the entry's invalidation itself when it blocked the entry
    /// (a host request of it is refused: TDX_DEVIF_TDISP_INVALID_STATE + R8 before STOP,
    /// TDX_DMAR_INVALID_INV_STATE + R8 after), so TDH.IQ.INV.PROCESS of the entry's IOMMU is
    /// all it takes.
    fn entry_iq(&self, tdi: u64) {
        let rid = self
            .fw
            .tsm()
            .tdi(self.id(tdi))
            .unwrap()
            .iface
            .requester_id();
        let rax = entry_request(self, rid);
        assert!(
            rax == TDX_DEVIF_TDISP_INVALID_STATE | u64::from(OPERAND_ID_R8)
                || rax == TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_R8),
            "TDH.IQ.INV.REQUEST PASIDTE of an entry the firmware queued: {rax:#x}"
        );
        assert_eq!(iq_process(self), TDX_SUCCESS, "TDH.IQ.INV.PROCESS");
    }

    /// TSM.DEVIF.STATE: the state code in RDX.
    fn state_code(&self, tdi: u64) -> u64 {
        self.ok(
            abi::TSM_DEVIF_STATE,
            SeamRegs {
                rcx: tdi,
                ..Default::default()
            },
        )
        .rdx
    }

    /// Every record table of the core, the S-EPT pool's bytes and bookkeeping (epochs, roots,
    /// free list), the device's TDISP state of every interface, every TDI's message pages and
    /// every byte of host memory: what a refusal must leave alone.
    fn image(&self) -> Image<N> {
        let snap = self
            .fw
            .snapshot_with(|t| (t.pool().pages().copied().collect(), t.bookkeeping()))
            .unwrap();
        let device = self.device.borrow().dsm().tdisp_states().to_vec();
        let pages = (0..MAX_TDIS as u16)
            .map(|s| self.fw.devif(TdiId::from_slot(s)).unwrap())
            .collect();
        let spdm = (0..MAX_DEVICES as u64)
            .map(|id| self.fw.spdm(id).unwrap())
            .collect();
        (snap, device, pages, self.mem.borrow().clone(), spdm)
    }
}

/// `step` repeated while it answers INTERRUPTED_RESUMABLE (at most 100 calls): its last status.
fn resumed(mut step: impl FnMut() -> u64) -> u64 {
    for _ in 0..100 {
        match step() {
            TDX_INTERRUPTED_RESUMABLE => {}
            rax => return rax,
        }
    }
    panic!("still INTERRUPTED_RESUMABLE after 100 calls");
}

/// TDH.DMAR.ADD of PASID entry `idx` for TD `td`, over its 4-level S-EPT.
/// TDG.DMAR.ACCEPT by TD `td` of `tdi`'s PASID entry: its status.
fn accept(w: &World<'_>, td: u64, tdi: u64) -> u64 {
    w.tdcall(td, abi::TDG_DMAR_ACCEPT, on(tdi)).rax
}

/// `call` refused with `expect`, changing nothing.
fn refused(w: &World<'_>, what: &str, call: impl FnOnce() -> u64, expect: u64) {
    let before = w.image();
    assert_eq!(call(), expect, "{what}");
    assert!(w.image() == before, "{what}: changed something");
}

/// TDH.IQ.INV.REQUEST of TD `tdr`'s domain (INV_REQ_IOTLB) on IOMMU 0, its wait descriptor
/// writing to the last host page.
fn iotlb_request<const N: usize>(w: &World<'_, N>, tdr: u64) -> u64 {
    let regs = platform_tdx::dmar::iotlb_request_regs(0, tdr, host_page(HOST_PAGES as u64 - 1), 1);
    w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax
}

/// TDH.IQ.INV.REQUEST of requester `rid`'s PASID entry (INV_REQ_PASIDTE) on its IOMMU, the
/// wait descriptor writing to the last host page: its status.
fn entry_request<const N: usize>(w: &World<'_, N>, rid: RequesterId) -> u64 {
    let regs = SeamRegs {
        rcx: u64::from(rid.segment()),
        rdx: platform_tdx::dmar::INV_REQ_PASIDTE,
        r8: u64::from(rid.routing_id()),
        r9: platform_tdx::dmar::WAIT_DESC_HOST | 1 << 32,
        r10: host_page(HOST_PAGES as u64 - 1),
        ..Default::default()
    };
    w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax
}

/// TDH.IQ.INV.PROCESS of everything queued.
fn iq_process<const N: usize>(w: &World<'_, N>) -> u64 {
    w.call(u64::from(abi::TDH_IQ_INV_PROCESS), SeamRegs::default())
        .rax
}

fn rid(bus: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, 0).unwrap()
}

/// TDH.SPDM.CREATE of the device on bus `bus` (segment 0) with its one metadata page, as
/// Linux's `tdh_spdm_create` calls it: the SPDM id.
fn spdm_create<const N: usize>(w: &World<'_, N>, bus: u8) -> u64 {
    spdm_create_at(w, rid(bus))
}

/// [`spdm_create`] of the device at `iface` (any segment: its IOMMU).
fn spdm_create_at<const N: usize>(w: &World<'_, N>, iface: RequesterId) -> u64 {
    w.ok(
        abi::TDH_SPDM_CREATE,
        SeamRegs {
            rcx: abi::function_id(iface),
            rdx: abi::hpa_array(spdm_page(iface.bus()), 1),
            ..Default::default()
        },
    )
    .rcx
}

/// A device on bus `bus` with one 4 MiB BAR at `bar` that its interface reports: TDH.SPDM.CREATE
/// then TSM.SPDM.BARS.
fn device_world<const N: usize>(w: &World<'_, N>, bus: u8, bar: u64) -> u64 {
    device_at(w, rid(bus), bar)
}

/// [`device_world`] for the device at `iface` (any segment: its IOMMU).
fn device_at<const N: usize>(w: &World<'_, N>, iface: RequesterId, bar: u64) -> u64 {
    let bus = iface.bus();
    let dev = spdm_create_at(w, iface);
    w.put_list(&RangeList::from_ranges(&[MmioRange::from_raw(bar, 1024).unwrap()]).unwrap());
    w.ok(
        abi::TSM_SPDM_BARS,
        SeamRegs {
            rcx: dev,
            rdx: PARAMS,
            ..Default::default()
        },
    );
    w.put_list(&RangeList::default());
    link(w, dev, bus, bar);
    // The device reports the BAR; bind takes the ranges from it, not from the host.
    w.device
        .borrow_mut()
        .report_ranges(iface, &[MmioRange::from_raw(bar, 1024).unwrap()]);
    dev
}

/// The Linux host's link set-up of SPDM id `dev` (the device on bus `bus`), as
/// `tdx_link_connect` issues it: TDH.SPDM.CONNECT relayed (GET_VERSION to the device, the same
/// registers re-issued), TDH.IDE.STREAM.CREATE, TDH.IDE.STREAM.KM SETUP.
fn link<const N: usize>(w: &World<'_, N>, dev: u64, bus: u8, bar: u64) {
    let mut config = [0u8; 8];
    config[..4].copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
    config[5] = 0xFF;
    w.write(CONFIG_PAGE, &config);
    let connect = SeamRegs {
        rcx: dev,
        rdx: CONFIG_PAGE,
        r8: LINK_RESPONSE,
        r9: LINK_REQUEST,
        r10: abi::hpa_array(DEV_INFO_PAGE, 1),
        ..Default::default()
    };
    let mut out = w.call(u64::from(abi::TDH_SPDM_CONNECT), connect);
    while out.rax == TDX_SPDM_REQUEST {
        let req = w.read(LINK_REQUEST, out.rcx as usize);
        let answer = w.doe(&req).unwrap();
        w.write(LINK_RESPONSE, &answer);
        out = w.call(u64::from(abi::TDH_SPDM_CONNECT), connect);
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    let rid = u64::from(bus) << 8;
    // The device's 4 MiB BAR is its stream's address window.
    let window = platform_tdx::link::addr_assoc(bar, bar + (4 << 20) - 1);
    let stream = w.ok(
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
            rdx: dev,
            r8: abi::hpa_array(ide_page(bus), 1),
            r10: rid << 8,
            r11: 1 | rid << 8,
            r12: window[0],
            r13: window[1],
            r14: window[2],
            ..Default::default()
        },
    );
    assert_eq!(km(w, dev, stream.rcx, 0).rax, TDX_SUCCESS);
}

/// TDH.IDE.STREAM.KM `op` on SPDM id `dev`'s stream `stream`, with the link's pages.
fn km<const N: usize>(w: &World<'_, N>, dev: u64, stream: u64, op: u64) -> SeamRegs {
    w.call(
        u64::from(abi::TDH_IDE_STREAM_KM),
        SeamRegs {
            rcx: dev,
            rdx: stream,
            r8: op,
            r9: LINK_RESPONSE,
            r10: LINK_REQUEST,
            ..Default::default()
        },
    )
}

/// A TD, a device with one 4 MiB BAR, its TDI bound, one 2 MiB page mapped.
fn bound_world(mem: &mut [Page]) -> (World<'_>, u64, u64) {
    bound_world_in(World::new(mem))
}

/// [`bound_world`] in `w`.
fn bound_world_in(w: World<'_>) -> (World<'_>, u64, u64) {
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    bind_mapped_2m(&w, tdi, td, BAR, GPA);
    (w, td, tdi)
}

/// TSM.DEVIF.BIND of `tdi` to `td` (relayed), then TDH.MMIO.MAP of the 2 MiB page at `gpa`
/// to `bar`.
fn bind_mapped_2m<const N: usize>(w: &World<'_, N>, tdi: u64, td: u64, bar: u64, gpa: u64) {
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page_info(Gpa::try_new(gpa).unwrap(), PageSize::Size2M),
            rdx: td,
            r8: bar,
            ..Default::default()
        },
    );
}

#[test]
fn a_bind_whose_report_names_no_range_is_refused_and_the_lock_undone() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    // What a device model never given a report sends: MMIO_RANGE_COUNT 0.
    w.device.borrow_mut().report_ranges(rid(3), &[]);
    let before = w.image();
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let out = w.relayed(abi::TSM_DEVIF_BIND, bind);
    assert_eq!(
        out.rax,
        TSM_EMPTY_REPORT | u64::from(OPERAND_ID_TRANSPORT),
        "{:#x}",
        out.rax
    );
    // Everything but the host's relay pages is as before: unbound, the interface unlocked by
    // the undoing STOP_INTERFACE.
    let after = w.image();
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1);
    assert_eq!(after.2, before.2);
    assert_eq!(after.4, before.4);
    assert_eq!(
        w.device.borrow().dsm().state(rid(3)),
        TdispState::ConfigUnlocked
    );
    // Given a report, the same call binds.
    w.device
        .borrow_mut()
        .report_ranges(rid(3), &[MmioRange::from_raw(BAR, 1).unwrap()]);
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
}

#[test]
fn malformed_calls_get_operand_invalid_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let before = w.image();
    let map = |rcx: u64, r8: u64| SeamRegs {
        rcx,
        rdx: td,
        r8,
        ..Default::default()
    };
    let cases: [(&str, u64, SeamRegs, u64); 10] = [
        (
            "unknown leaf",
            0x77,
            SeamRegs::default(),
            TDX_OPERAND_INVALID,
        ),
        (
            "ours, unassigned",
            0xF0FF,
            SeamRegs::default(),
            TDX_OPERAND_INVALID,
        ),
        (
            "version bits in RAX",
            u64::from(abi::TDH_MMIO_MAP) | 1 << 16,
            map(GPA | 1, BAR),
            TDX_OPERAND_INVALID,
        ),
        (
            "reserved RAX bits",
            u64::from(abi::TDH_MNG_CREATE) | 1 << 63,
            SeamRegs::default(),
            TDX_OPERAND_INVALID,
        ),
        (
            "page-info reserved bits",
            u64::from(abi::TDH_MMIO_MAP),
            map(GPA | 0x2_0000_0000_0001 << 11, BAR),
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "page-info level 3",
            u64::from(abi::TDH_MMIO_MAP),
            map((GPA + 0x40_0000) | 3, BAR + 0x20_0000),
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "gpa misaligned for 2M",
            u64::from(abi::TDH_MMIO_MAP),
            map((GPA + 0x1000) | 1, BAR + 0x20_0000),
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "hpa misaligned",
            u64::from(abi::TDH_MMIO_MAP),
            map((GPA + 0x40_0000) | 1, BAR + 0x1000),
            TDX_OPERAND_INVALID | 8,
        ),
        (
            "hpa past 52 bits",
            u64::from(abi::TDH_MMIO_MAP),
            map((GPA + 0x40_0000) | 1, 1 << 52),
            TDX_OPERAND_ADDR_RANGE_ERROR | 8,
        ),
        (
            "bind with a misaligned request page",
            u64::from(abi::TSM_DEVIF_BIND),
            SeamRegs {
                rcx: tdi,
                rdx: td,
                r8: PARAMS + 8,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 8,
        ),
    ];
    for (what, leaf, regs, expect) in cases {
        let out = w.call(leaf, regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(w.image() == before, "{what} changed state");
    }
}

#[test]
fn refused_zap_block_and_unmap_name_the_operand_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let before = w.image();
    let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    for leaf in [abi::TDH_MMIO_BLOCK, abi::TDH_MMIO_UNMAP] {
        let out = w.call(
            u64::from(leaf),
            SeamRegs {
                rcx: page,
                rdx: td,
                ..Default::default()
            },
        );
        assert_eq!(out.rax, TDX_DEVIF_TDISP_INVALID_STATE | 1, "{leaf}");
    }
    let out = w.call(
        u64::from(abi::TSM_MMIO_ZAP_CHECK),
        SeamRegs {
            rcx: BAR,
            rdx: 1024,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_DEVIF_TDISP_INVALID_STATE | 1);
    // An unknown TD maps the bound TDI's page: handles are checked first, so OPERAND_INVALID
    // naming the TD operand (a known TD that is not the owner gets OWNER_MISMATCH).
    let out = w.call(
        u64::from(abi::TDH_MMIO_MAP),
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA + 0x40_0000).unwrap(), PageSize::Size2M),
            rdx: 9,
            r8: BAR + 0x20_0000,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_OPERAND_INVALID | 2);
    // An unknown TD in RDX of a bind: OPERAND_INVALID names RDX, not the (valid) TDI in RCX.
    let out = w.call(
        u64::from(abi::TSM_DEVIF_BIND),
        SeamRegs {
            rcx: tdi,
            rdx: 9,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_OPERAND_INVALID | 2);
    assert!(w.image() == before);

    // After unbind the page is gone; a block of it reports the walk: level and state.
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    let out = w.call(
        u64::from(abi::TDH_MMIO_BLOCK),
        SeamRegs {
            rcx: page,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_EPT_WALK_FAILED | 1);
    assert_eq!(
        out.rdx & 0x7,
        4,
        "the emptied tree stops at the (absent) root level"
    );
    assert_eq!(out.rdx >> 8, SeptState::Free as u64);
    let out = w.call(
        u64::from(abi::TSM_MMIO_ZAP_CHECK),
        SeamRegs {
            rcx: BAR,
            rdx: 1024,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
}

#[test]
fn track_busy_sept_read_and_guest_accept() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let g = w.fw.td_of(td).unwrap().unwrap();
    let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    let out = w.ok(
        abi::TDH_MEM_SEPT_RD,
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA + 0x1000).unwrap(), PageSize::Size4K),
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rdx, 2 | (SeptState::MmioPending as u64) << 8);
    assert_eq!(out.rcx & 0x000f_ffff_ffff_f000, BAR);

    let host = BufferMemory {
        base: 0,
        bytes: &[],
    };
    let d = Dispatcher::new(&w.fw, host);
    let mut regs = SeamRegs {
        rax: u64::from(abi::TDG_MMIO_ACCEPT),
        rcx: page,
        rdx: w.reported(tdi, BAR),
        ..Default::default()
    };
    d.tdcall(td, &mut regs);
    assert_eq!(regs.rax, TDX_SUCCESS);
    let mut regs = SeamRegs {
        rax: u64::from(abi::TDG_MMIO_ACCEPT),
        rcx: page,
        rdx: w.reported(tdi, BAR),
        ..Default::default()
    };
    d.tdcall(td, &mut regs);
    assert_eq!(regs.rax, TDX_PAGE_ALREADY_ACCEPTED | 1);
    let out = w.ok(
        abi::TDH_MEM_SEPT_RD,
        SeamRegs {
            rcx: page,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rdx >> 8, SeptState::MmioMapped as u64);

    w.fw.with_table(|t| t.hold_flush(g, true)).unwrap();
    w.ok(
        abi::TDH_MEM_TRACK,
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    let out = w.call(
        u64::from(abi::TDH_MEM_TRACK),
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    assert_eq!(
        out.rax,
        TDX_PREVIOUS_TLB_EPOCH_BUSY | u64::from(OPERAND_ID_TD_EPOCH)
    );
}

/// A 4-level S-EPT resolves 48 bits: page info `(1 << 48) | GPA` must not act on GPA's leaf.
/// Every leaf that takes a GPA refuses it with OPERAND_ADDR_RANGE_ERROR on RCX and changes
/// nothing (table bytes and TDI records compared), for the accepted and the pending leaf alike.
#[test]
fn every_gpa_leaf_refuses_an_aliasing_address_on_a_4_level_table() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let host = BufferMemory {
        base: 0,
        bytes: &[],
    };
    for accepted in [false, true] {
        if accepted {
            let mut regs = SeamRegs {
                rax: u64::from(abi::TDG_MMIO_ACCEPT),
                rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
                rdx: w.reported(tdi, BAR),
                ..Default::default()
            };
            Dispatcher::new(&w.fw, &host).tdcall(td, &mut regs);
            assert_eq!(regs.rax, TDX_SUCCESS);
        }
        for high in [48, 50, 51] {
            let alias = Gpa::try_new(1 << high | GPA).unwrap();
            let page = page_info(alias, PageSize::Size2M);
            let before = w.image();
            let with_td = SeamRegs {
                rcx: page,
                rdx: td,
                ..Default::default()
            };
            let cases = [
                ("TDH.MEM.SEPT.RD", abi::TDH_MEM_SEPT_RD, with_td),
                (
                    "TDH.MMIO.MAP",
                    abi::TDH_MMIO_MAP,
                    SeamRegs {
                        r8: BAR + 0x20_0000,
                        ..with_td
                    },
                ),
                ("TDH.MMIO.BLOCK", abi::TDH_MMIO_BLOCK, with_td),
                ("TDH.MMIO.UNMAP", abi::TDH_MMIO_UNMAP, with_td),
            ];
            for (what, leaf, regs) in cases {
                let out = w.call(u64::from(leaf), regs);
                assert_eq!(
                    out.rax,
                    TDX_OPERAND_ADDR_RANGE_ERROR | 1,
                    "{what} with bit {high}: {:#x}",
                    out.rax
                );
                assert!(w.image() == before, "{what} with bit {high} changed state");
            }
            let mut regs = SeamRegs {
                rax: u64::from(abi::TDG_MMIO_ACCEPT),
                rcx: page,
                ..Default::default()
            };
            Dispatcher::new(&w.fw, &host).tdcall(td, &mut regs);
            assert_eq!(
                regs.rax,
                TDX_OPERAND_ADDR_RANGE_ERROR | 1,
                "TDG.MMIO.ACCEPT"
            );
            assert!(
                w.image() == before,
                "TDG.MMIO.ACCEPT with bit {high} changed state"
            );
        }
    }
    // The real GPA still reads as the one accepted leaf.
    let out = w.ok(
        abi::TDH_MEM_SEPT_RD,
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rdx >> 8, SeptState::MmioMapped as u64);
}

/// The core over its in-memory table, set up as `bound_world`: the reference for which status
/// a bad call gets.
fn core_world() -> (Relayed<MemTable<64>>, tsm_core::GuestId, tsm_core::TdiId) {
    let tsm = Relayed::new(MemTable::<64>::new(), ModelDevice::model());
    let td = tsm.create_guest().unwrap();
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BAR, 1024).unwrap();
    let dev = tsm.create_device(rid, &[bar]).unwrap();
    let tdi = tsm.create_tdi(dev, rid).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    tsm.bind(tdi, td).unwrap();
    let g = Gpa::try_new(GPA).unwrap();
    let h = tsm_core::Hpa::try_new(BAR).unwrap();
    tsm.map_mmio(tdi, td, g, h, PageSize::Size2M).unwrap();
    (tsm, td, tdi)
}

/// Where TDX checks an operand itself, a bad call gets the status the core gives the same
/// call: handles first (an unknown TD or TDI wins over a bad address), and the core's own
/// status for what the core checks (alignment of MAP's addresses, an empty zap range).
#[test]
fn tdx_reports_the_core_status_for_the_same_bad_call() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let (core, ctd, ctdi) = core_world();
    // The TD is named by its TDR page; the core's guest behind it is the reference's.
    assert_eq!(w.fw.td_of(td), Ok(Some(ctd)));
    assert_eq!(ctdi, w.id(tdi));
    let unknown_td = tsm_core::GuestId::from_slot(9);
    let gpa = |v: u64| Gpa::try_new(v).unwrap();
    let hpa = |v: u64| tsm_core::Hpa::try_new(v).unwrap();
    let k2m = PageSize::Size2M;
    let misaligned = GPA + 0x1000;
    type Case<'a> = (&'a str, u16, SeamRegs, Result<(), tsm_core::Error>);
    let cases: Vec<Case<'_>> = vec![
        (
            "block: unknown TD, misaligned GPA",
            abi::TDH_MMIO_BLOCK,
            SeamRegs {
                rcx: misaligned | 1,
                rdx: 9,
                ..Default::default()
            },
            core.host_block(unknown_td, gpa(misaligned), k2m),
        ),
        (
            "unmap: unknown TD, misaligned GPA",
            abi::TDH_MMIO_UNMAP,
            SeamRegs {
                rcx: misaligned | 1,
                rdx: 9,
                ..Default::default()
            },
            core.host_unmap(unknown_td, gpa(misaligned), k2m).map(drop),
        ),
        (
            "map: misaligned GPA (the host names no TDI; the core is asked for the owner)",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: misaligned | 1,
                rdx: td,
                r8: BAR + 0x20_0000,
                ..Default::default()
            },
            core.map_mmio(ctdi, ctd, gpa(misaligned), hpa(BAR + 0x20_0000), k2m),
        ),
        (
            "map: unknown TD, misaligned GPA",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: misaligned | 1,
                rdx: 9,
                r8: BAR + 0x20_0000,
                ..Default::default()
            },
            core.map_mmio(ctdi, unknown_td, gpa(misaligned), hpa(BAR + 0x20_0000), k2m),
        ),
        (
            "map: a page no bound TDI holds, misaligned host address",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: td,
                r8: BAR + 0x40_1000,
                ..Default::default()
            },
            core.map_mmio(ctdi, ctd, gpa(GPA + 0x40_0000), hpa(BAR + 0x40_1000), k2m),
        ),
        (
            "map: a page no bound TDI holds",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: td,
                r8: BAR + 0x40_0000,
                ..Default::default()
            },
            core.map_mmio(ctdi, ctd, gpa(GPA + 0x40_0000), hpa(BAR + 0x40_0000), k2m),
        ),
        (
            "map: misaligned host address",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: td,
                r8: BAR + 0x1000,
                ..Default::default()
            },
            core.map_mmio(ctdi, ctd, gpa(GPA + 0x40_0000), hpa(BAR + 0x1000), k2m),
        ),
        (
            "map: unknown TD, GPA beyond the 4-level S-EPT",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (1 << 48) | 1,
                rdx: 9,
                r8: BAR + 0x20_0000,
                ..Default::default()
            },
            core.map_mmio(ctdi, unknown_td, gpa(1 << 48), hpa(BAR + 0x20_0000), k2m),
        ),
        (
            "block: unknown TD, GPA beyond the 4-level S-EPT",
            abi::TDH_MMIO_BLOCK,
            SeamRegs {
                rcx: (1 << 48) | 1,
                rdx: 9,
                ..Default::default()
            },
            core.host_block(unknown_td, gpa(1 << 48), k2m),
        ),
        (
            "zap: empty range",
            abi::TSM_MMIO_ZAP_CHECK,
            SeamRegs {
                rcx: BAR,
                rdx: 0,
                ..Default::default()
            },
            MmioRange::try_new(hpa(BAR), 0).and_then(|r| core.host_zap(r)),
        ),
    ];
    let before = w.image();
    for (what, leaf, regs, expect) in cases {
        let out = w.call(u64::from(leaf), regs);
        let got = decode(out.rax, &abi::operands(leaf));
        assert_eq!(
            got,
            Some(expect.map(|()| tsm_core::Completion::Done)),
            "{what}: TDX {:#x}",
            out.rax
        );
        assert!(w.image() == before, "{what} changed state");
    }
}

/// Operands the core cannot be handed (reserved bits, a level no leaf has, an address at or
/// above 2^52, R8 of bind) are the dispatcher's own checks; they come after the handle checks,
/// as in the core: an unknown handle is what a call with both faults reports.
#[test]
fn handles_are_checked_before_the_dispatchers_own_operand_checks() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let before = w.image();
    let cases: [(&str, u16, SeamRegs, u64); 8] = [
        (
            "map: unknown TD, host address past 2^52",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: 9,
                r8: 1 << 52,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "map: unknown TD, R9 set (the TDI of the earlier layout)",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: 9,
                r8: BAR + 0x20_0000,
                r9: tdi,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "map: unknown TD, page-info reserved bits",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: GPA | 1 << 60,
                rdx: 9,
                r8: BAR,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "block: unknown TD, level 3",
            abi::TDH_MMIO_BLOCK,
            SeamRegs {
                rcx: GPA | 3,
                rdx: 9,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "bind: unknown TDI, R8 misaligned",
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: 99,
                rdx: td,
                r8: PARAMS + 8,
                ..Default::default()
            },
            TDX_DEVIFMT_NOT_PRESENT | 1,
        ),
        (
            "create TDI: DEVIFCS page 0 of no host memory first (the module's order)",
            abi::TDH_DEVIF_CREATE,
            SeamRegs {
                rcx: 9,
                rdx: u64::MAX,
                ..Default::default()
            },
            TDX_OPERAND_ADDR_RANGE_ERROR | 8,
        ),
        (
            "S-EPT read: unknown TD",
            abi::TDH_MEM_SEPT_RD,
            SeamRegs {
                rcx: GPA | 1,
                rdx: 9,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "block: known TD, misaligned GPA (the intended order: alignment before state)",
            abi::TDH_MMIO_BLOCK,
            SeamRegs {
                rcx: (GPA + 0x1000) | 1,
                rdx: td,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 1,
        ),
    ];
    for (what, leaf, regs, expect) in cases {
        let out = w.call(u64::from(leaf), regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(w.image() == before, "{what} changed state");
    }
}

/// A TDI's leaves blocked by a device error stay blocked while the TD's epoch runs on (the
/// host has not unbound it yet). When TRACK enters the bucket of epochs in which their 12-bit
/// blocking epoch would become ambiguous it re-stamps them, at most 64 per call: the host
/// sees TDX_INTERRUPTED_RESUMABLE, calls again, and the unbind afterwards removes every leaf.
#[test]
#[cfg_attr(miri, ignore)] // 4096 TRACKs: minutes under Miri, no unsafe code involved
fn track_past_a_whole_epoch_window_resumes_and_unbind_still_removes_every_leaf() {
    // The host's TRACK meets the window first, or the unbind's own Track step does.
    for host_tracks in [true, false] {
        track_past_a_window(host_tracks);
    }
}

fn track_past_a_window(host_tracks: bool) {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    // 70 more 4 KiB leaves (the bound world has one 2 MiB leaf at BAR).
    for i in 0..70u64 {
        w.ok(
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: page_info(
                    Gpa::try_new(GPA + 0x40_0000 + (i << 12)).unwrap(),
                    PageSize::Size4K,
                ),
                rdx: td,
                r8: BAR + 0x20_0000 + (i << 12),
                ..Default::default()
            },
        );
    }
    let tdi_regs = SeamRegs {
        rcx: tdi,
        ..Default::default()
    };
    let error = resumed(|| w.call(u64::from(abi::TSM_DEVIF_ERROR), tdi_regs).rax);
    assert_eq!(error, TDX_SUCCESS);
    let track = SeamRegs {
        rcx: td,
        ..Default::default()
    };
    // Blocked in epoch 0 (bucket 0): TRACKs up to epoch 4095 need no re-stamping.
    for _ in 0..4095 {
        w.ok(abi::TDH_MEM_TRACK, track);
    }
    // Entering bucket 2 (epoch 4096): 71 leaves to re-stamp, more than one call's work.
    if host_tracks {
        let mut calls = 0;
        let last = resumed(|| {
            calls += 1;
            w.call(u64::from(abi::TDH_MEM_TRACK), track).rax
        });
        assert_eq!(last, TDX_SUCCESS);
        assert!(
            calls >= 2,
            "a whole window's TRACK takes more than one call"
        );
    }
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    let out = w.call(
        u64::from(abi::TSM_MMIO_ZAP_CHECK),
        SeamRegs {
            rcx: BAR,
            rdx: 1024,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS, "every leaf removed");
}

/// A BAR has no attributes and no range ID: a BAR list with either set is malformed
/// (OPERAND_INVALID on RDX), and no device is registered.
#[test]
fn bar_lists_with_reserved_fields_set_are_refused() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, _, _) = bound_world(&mut mem);
    let dev = spdm_create(&w, 9);
    for (what, attributes, range_id) in [("attributes", 1 << 2, 0), ("range ID", 0, 7)] {
        let mut list =
            RangeList::from_ranges(&[MmioRange::from_raw(0x9000_0000, 4).unwrap()]).unwrap();
        list.ranges[0].attributes = attributes;
        list.ranges[0].range_id = range_id;
        w.put_list(&list);
        let before = w.image();
        let out = w.call(
            u64::from(abi::TSM_SPDM_BARS),
            SeamRegs {
                rcx: dev,
                rdx: PARAMS,
                ..Default::default()
            },
        );
        assert_eq!(out.rax, TDX_OPERAND_INVALID | 2, "BAR with {what} set");
        assert_eq!(w.fw.spdm(dev).unwrap().unwrap().device, None);
        assert!(w.image() == before);
        assert_eq!(
            w.fw.device(tsm_core::DeviceId::from_slot(1)).err(),
            Some(tsm_core::Error::InvalidHandle)
        );
    }
}

/// TSM.DEVIF.UNBIND RDX bit 0 forces the unbind (no STOP, the IDE stream is cut); other RDX
/// bits are reserved. A bind is then `TSM_STREAM_CUT` until TDH.IDE.STREAM.KM SETUP.
#[test]
fn forced_unbind_flag_and_stream_setup() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let unbind = |rdx: u64| {
        w.call(
            u64::from(abi::TSM_DEVIF_UNBIND),
            SeamRegs {
                rcx: tdi,
                rdx,
                ..Default::default()
            },
        )
    };
    let before = w.image();
    for rdx in [2, 3, 1 << 63] {
        assert_eq!(
            unbind(rdx).rax,
            TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX),
            "{rdx:#x}"
        );
        assert!(
            w.image() == before,
            "reserved RDX bits {rdx:#x} changed something"
        );
    }
    let iface = rid(3);
    w.device
        .borrow_mut()
        .set_fault(iface, Some(tsm_core::DeviceFault::NoResponse));
    // A silent device: STOP is relayed three times, then the unbind waits at STOP.
    assert_eq!(
        w.relay(tdi, unbind(0)).rax & CODE_MASK,
        TSM_DEVICE_UNRESPONSIVE
    );
    let mut calls = 0;
    while unbind(abi::UNBIND_FLAG_FORCE).rax == TDX_INTERRUPTED_RESUMABLE {
        calls += 1;
        assert!(calls < 100);
    }
    assert_eq!(unbind(abi::UNBIND_FLAG_FORCE).rax, TDX_SUCCESS);
    w.device.borrow_mut().set_fault(iface, None);
    let bind = || {
        w.relayed(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            },
        )
    };
    let before = w.image();
    assert_eq!(bind().rax, TSM_STREAM_CUT | u64::from(OPERAND_ID_RCX));
    assert!(w.image() == before, "a refused bind changed something");
    let setup = |rcx: u64| km(&w, rcx, 0, 0);
    assert_eq!(
        setup(99).rax,
        TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RCX)
    );
    assert_eq!(setup(0).rax, TDX_SUCCESS);
    assert_eq!(bind().rax, TDX_SUCCESS);
    // Set-up under a bound TDI is refused, live stream or not, and changes nothing.
    let before = w.image();
    assert_eq!(setup(0).rax & CODE_MASK, TDX_DEVIF_TDISP_INVALID_STATE);
    assert!(w.image() == before);
}

// ---- the relay ------------------------------------------------------------------------------

/// TDI regs: RCX the TDI.
fn on(tdi: u64) -> SeamRegs {
    SeamRegs {
        rcx: tdi,
        ..Default::default()
    }
}

/// Bind, start, check and unbind with nothing but register blocks and host pages: every leaf
/// that needs the device answers TDX_SPDM_REQUEST with a DOE object in the TDI's request
/// page, and the host's loop of DOE exchanges and TDH.DEVIF.RESPONSE carries each operation
/// to its end.
#[test]
fn bind_start_check_and_unbind_through_registers_and_pages_alone() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let (devifcs, td_buffer, vmm_buffer) = private_pages(PAGES_A.0);
    let hpa = |p| tsm_core::Hpa::try_new(p).unwrap();
    assert_eq!(
        w.fw.devif(w.id(tdi)).unwrap(),
        Some(DevifEntry {
            function: tdi as u32,
            tdr: Some(hpa(td)),
            pages: platform_tdx::DevifPages {
                devifcs: hpa(devifcs),
                td_buffer: hpa(td_buffer),
                vmm_buffer: hpa(vmm_buffer),
            },
            td_request: platform_tdx::module::TdRequest::Available,
        })
    );

    // Bind: the first request is written, nothing is bound until the last answer.
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let mut out = w.call(u64::from(abi::TSM_DEVIF_BIND), bind);
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    let mut exchanges = 0;
    while out.rax == TDX_SPDM_REQUEST {
        assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
        let answer = w.doe(&w.request(tdi, out.rcx)).unwrap();
        out = w.respond(tdi, Some(&answer));
        exchanges += 1;
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    // VERSION, CAPABILITIES, LOCK, then the report in portions.
    assert!(exchanges >= 4, "{exchanges} exchanges");
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Locked as u64);
    assert_eq!(
        w.device.borrow().dsm().state(rid(3)),
        TdispState::ConfigLocked
    );
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
            rdx: td,
            r8: BAR,
            ..Default::default()
        },
    );

    // The guest starts it: its TDG.DEVIF.REQUEST queues START_INTERFACE; the host fetches it
    // (TDH.DEVIF.REQUEST td_flag), relays it, and its TDH.DEVIF.RESPONSE td_flag ends the
    // start; the TD reads the outcome with TDG.DEVIF.RESPONSE.
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Run as u64);
    assert_eq!(w.device.borrow().dsm().state(rid(3)), TdispState::Run);

    // A check the device agrees with changes nothing but the TDI's record of the answer.
    let out = w.call(u64::from(abi::TSM_DEVIF_CHECK), on(tdi));
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    assert_eq!(w.relay(tdi, out).rax, TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Run as u64);
    assert_eq!(
        w.fw.tdi(w.id(tdi)).unwrap().device_state,
        Some(TdispState::Run)
    );

    // The device is disturbed (an FLR the firmware was not told of): the next check finds
    // ERROR and blocks the TDI's leaves.
    w.device.borrow_mut().event(rid(3), DeviceEvent::Disturb);
    assert_eq!(w.relayed(abi::TSM_DEVIF_CHECK, on(tdi)).rax, TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Error as u64);

    // Unbind: STOP is relayed, then the leaves go, the DMA context is torn down (the host
    // completing its invalidation) and the ranges are released.
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
    assert_eq!(
        w.device.borrow().dsm().state(rid(3)),
        TdispState::ConfigUnlocked
    );
    w.ok(
        abi::TSM_MMIO_ZAP_CHECK,
        SeamRegs {
            rcx: BAR,
            rdx: 1024,
            ..Default::default()
        },
    );
    // Nothing is outstanding any more, and a rebind works.
    assert_eq!(
        w.respond(tdi, None).rax,
        TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX)
    );
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    // Removal hands the private pages back (RCX, RDX: the buffers; R8: the TDR).
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    let id = w.id(tdi);
    let out = w.ok(abi::TDH_DEVIF_REMOVE, on(tdi));
    assert_eq!((out.rcx, out.rdx, out.r8), (td_buffer, vmm_buffer, td));
    assert_eq!(w.fw.devif(id).unwrap(), None);
}

/// TDH.DEVIF.REQUEST writes the outstanding request to the request page again, byte for byte,
/// and changes nothing else; with nothing outstanding it is refused and writes nothing.
#[test]
fn devif_request_writes_the_same_request_again() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let lock = SeamRegs {
        rcx: tdi,
        rdx: abi::devif_req_in(0x83, false, false),
        r8: PAGES_A.0,
        ..Default::default()
    };
    let mut out = w.call(u64::from(abi::TSM_DEVIF_BIND), bind);
    let mut rounds = 0;
    while out.rax == TDX_SPDM_REQUEST {
        let sent = w.request(tdi, out.rcx);
        // Another code while the bind waits: OUT_REQ, nothing changed.
        for code in [0x85, 0x87] {
            let before = w.image();
            let other = w.call(
                u64::from(abi::TDH_DEVIF_REQUEST),
                SeamRegs {
                    rdx: abi::devif_req_in(code, false, false),
                    ..lock
                },
            );
            assert_eq!(other.rax, TDX_DEVIF_TDISP_OUT_REQ | 1, "code {code:#x}");
            assert!(w.image() == before);
        }
        // The host lost the page.
        w.write(PAGES_A.0, &[0xA5; MESSAGE_PAGE_BYTES]);
        let before = w.image();
        let again = w.call(u64::from(abi::TDH_DEVIF_REQUEST), lock);
        assert_eq!(again.rax, TDX_SPDM_REQUEST);
        assert_eq!(again.rcx, out.rcx);
        assert_eq!(w.request(tdi, again.rcx), sent, "round {rounds}");
        let after = w.image();
        assert!(
            after.0 == before.0 && after.1 == before.1 && after.2 == before.2,
            "REQUEST changed the firmware"
        );
        // Only the request page was written: the request, then zeros to a whole word.
        let mut expect = before.3.clone();
        let at = (PAGES_A.0 - HOST) as usize;
        let words = sent.len().next_multiple_of(8);
        expect[at..at + sent.len()].copy_from_slice(&sent);
        expect[at + sent.len()..at + words].fill(0);
        assert!(after.3 == expect, "REQUEST wrote more than the request");
        // Calling bind again while its exchange waits also resends it, unchanged.
        let rebind = w.call(u64::from(abi::TSM_DEVIF_BIND), bind);
        assert_eq!((rebind.rax, rebind.rcx), (TDX_SPDM_REQUEST, out.rcx));
        assert_eq!(w.request(tdi, rebind.rcx), sent);
        let answer = w.doe(&sent).unwrap();
        out = w.respond(tdi, Some(&answer));
        rounds += 1;
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    // The TD's request with none queued: refused, nothing written.
    let before = w.image();
    assert_eq!(
        w.call(
            u64::from(abi::TDH_DEVIF_REQUEST),
            SeamRegs {
                rdx: abi::devif_req_in(0, false, true),
                ..lock
            }
        )
        .rax,
        TDX_DEVIF_TDISP_INVALID_REQ_STS | u64::from(OPERAND_ID_RCX)
    );
    assert!(w.image() == before);
    // An unknown TDI.
    assert_eq!(
        w.call(
            u64::from(abi::TDH_DEVIF_REQUEST),
            SeamRegs { rcx: 77, ..lock }
        )
        .rax,
        TDX_DEVIFMT_NOT_PRESENT | u64::from(OPERAND_ID_RCX)
    );
    assert!(w.image() == before);
}

/// TDH.DEVIF.RESPONSE with bytes that are not the answer to the outstanding request (garbled,
/// another TDI's answer, a stale answer, the request itself, cut short, longer than any
/// message, longer than a page), or for a TDI with nothing outstanding, is refused with its
/// precise status and changes nothing: the exchange still waits, and the right answer then
/// goes on.
#[test]
fn responses_that_are_not_the_answer_are_refused_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev_a = device_world(&w, 3, BAR);
    let dev_b = device_world(&w, 4, 0x9000_0000);
    let a = w.create_tdi(dev_a, rid(3), PAGES_A);
    let b = w.create_tdi(dev_b, rid(4), PAGES_B);
    let bind = |tdi| SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let out_a = w.call(u64::from(abi::TSM_DEVIF_BIND), bind(a));
    let out_b = w.call(u64::from(abi::TSM_DEVIF_BIND), bind(b));
    assert_eq!((out_a.rax, out_b.rax), (TDX_SPDM_REQUEST, TDX_SPDM_REQUEST));
    let request_a = w.request(a, out_a.rcx);
    let answer_a = w.doe(&request_a).unwrap();
    let answer_b = w.doe(&w.request(b, out_b.rcx)).unwrap();

    let malformed = TDX_DEVIF_TDISP_INVALID_MESSAGE | u64::from(OPERAND_ID_RDX);
    // The answer's length is its own DOE header's (dword 1, bits 17:0, in dwords).
    let with_dwords = |bytes: &[u8], dwords: u32| {
        let mut b = bytes.to_vec();
        b[4..8].copy_from_slice(&dwords.to_le_bytes());
        b
    };
    let dwords = |b: &[u8]| (b.len() / 4) as u32;
    let refuse_regs = |what: &str, bytes: &[u8], regs: SeamRegs, expect: u64| {
        w.write(PAGES_A.1, bytes);
        let before = w.image();
        let out = w.call(u64::from(abi::TDH_DEVIF_RESPONSE), regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(w.image() == before, "{what} changed something");
    };
    let answer_regs = SeamRegs {
        rcx: a,
        rdx: abi::devif_rsp_in(PAGES_A.1, false),
        r8: PAGES_A.0,
        ..Default::default()
    };
    let refuse = |what: &str, bytes: &[u8], expect: u64| {
        refuse_regs(what, bytes, answer_regs, expect);
    };
    let mut garbled = answer_a.clone();
    *garbled.last_mut().unwrap() ^= 1;
    refuse("a garbled answer", &garbled, malformed);
    let mut garbled_header = answer_a.clone();
    garbled_header[2] = 1; // DOE data object type 1: unsecured SPDM
    refuse("a garbled DOE header", &garbled_header, malformed);
    refuse("another TDI's answer", &answer_b, malformed);
    refuse("the request itself", &request_a, malformed);
    let short = with_dwords(&answer_a, dwords(&answer_a) - 1);
    refuse("cut short", &short, malformed);
    let mut long = answer_a.clone();
    long.resize(MAX_RELAY_BYTES + 8, 0);
    let long = with_dwords(&long, dwords(&long));
    refuse("longer than any message", &long, malformed);
    // A header longer than the page (0: 2^18 dwords): the whole page, the core's
    // RelayMalformed.
    refuse(
        "longer than a page",
        &with_dwords(&answer_a, 0x3_ffff),
        malformed,
    );
    refuse("length field 0", &with_dwords(&answer_a, 0), malformed);
    // devif_rsp_in_t's reserved bits, R9, and a bind's next-request page 0.
    for (what, regs, expect) in [
        (
            "RDX bits 11:0",
            SeamRegs {
                rdx: answer_regs.rdx | 0x8,
                ..answer_regs
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "RDX bits 62:52",
            SeamRegs {
                rdx: answer_regs.rdx | 1 << 52,
                ..answer_regs
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "R9",
            SeamRegs {
                r9: 1,
                ..answer_regs
            },
            TDX_OPERAND_INVALID | 9,
        ),
        (
            "R8 0 while the bind goes on",
            SeamRegs {
                r8: 0,
                ..answer_regs
            },
            TDX_OPERAND_INVALID | 8,
        ),
        (
            "R8 a TD's TDR page",
            SeamRegs {
                r8: td,
                ..answer_regs
            },
            TDX_PAGE_METADATA_INCORRECT | 8,
        ),
        (
            "td_flag on the host's own request",
            SeamRegs {
                rdx: answer_regs.rdx | abi::REQ_IN_TD_FLAG,
                ..answer_regs
            },
            TDX_DEVIF_TDISP_INVALID_REQ_STS | 2,
        ),
        (
            "an answer page outside host memory",
            SeamRegs {
                rdx: abi::devif_rsp_in(HOST - 0x1000, false),
                ..answer_regs
            },
            TDX_OPERAND_ADDR_RANGE_ERROR | 2,
        ),
    ] {
        refuse_regs(what, &answer_a, regs, expect);
    }

    // The right answer goes on; handed in again it is stale.
    let out = w.respond(a, Some(&answer_a));
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    refuse("a stale answer", &answer_a, malformed);
    assert_eq!(w.relay(a, out).rax, TDX_SUCCESS);
    assert_eq!(w.relay(b, w.respond(b, Some(&answer_b))).rax, TDX_SUCCESS);

    // Nothing outstanding for A any more: the module's OUT_REQ.
    let answer = answer_a.clone();
    refuse(
        "no exchange outstanding",
        &answer,
        TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX),
    );
    // An unknown TDI is named before anything of the TDI is looked at.
    refuse_regs(
        "an unknown function",
        &answer,
        SeamRegs {
            rcx: 77,
            ..answer_regs
        },
        TDX_DEVIFMT_NOT_PRESENT | u64::from(OPERAND_ID_RCX),
    );
    refuse_regs(
        "function_id_reg_t bits 63:32",
        &answer,
        SeamRegs {
            rcx: a | 1 << 32,
            ..answer_regs
        },
        TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RCX),
    );

    // A check waits on the device: the guest's start is another operation of the TDI.
    let check = w.call(u64::from(abi::TSM_DEVIF_CHECK), on(a));
    assert_eq!(check.rax, TDX_SPDM_REQUEST);
    let before = w.image();
    let start = w.tdcall(
        td,
        abi::TDG_DEVIF_REQUEST,
        SeamRegs {
            rcx: a,
            rdx: 0x86,
            ..Default::default()
        },
    );
    assert_eq!(
        start.rax,
        TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX)
    );
    assert!(w.image() == before, "a refused start changed something");
    assert_eq!(w.relay(a, check).rax, TDX_SUCCESS);
}

/// A device that never answers: TDH.DEVIF.RESPONSE with length 0 hands the same request back
/// twice, the third ends the operation DeviceUnresponsive, and the TDI is left as it was.
#[test]
fn three_empty_responses_end_the_operation_unresponsive() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let first = w.call(u64::from(abi::TSM_DEVIF_BIND), bind);
    assert_eq!(first.rax, TDX_SPDM_REQUEST);
    let sent = w.request(tdi, first.rcx);
    for _ in 0..2 {
        let out = w.respond(tdi, None);
        assert_eq!((out.rax, out.rcx), (TDX_SPDM_REQUEST, first.rcx));
        assert_eq!(w.request(tdi, out.rcx), sent, "the same request, resent");
    }
    let out = w.respond(tdi, None);
    assert_eq!(
        out.rax,
        TSM_DEVICE_UNRESPONSIVE | u64::from(OPERAND_ID_TRANSPORT)
    );
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
    assert_eq!(
        w.respond(tdi, None).rax,
        TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX)
    );
    // The device answers again: the bind works.
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
}

/// A forced unbind needs no answer: it works while STOP, or a check, waits on the device, and
/// the late answer is then refused as an answer to nothing.
#[test]
fn forced_unbind_works_while_an_exchange_is_outstanding() {
    for waiting in [abi::TSM_DEVIF_UNBIND, abi::TSM_DEVIF_CHECK] {
        let mut mem = vec![Page::ZERO; 32];
        let (w, td, tdi) = bound_world(&mut mem);
        let out = w.call(u64::from(waiting), on(tdi));
        assert_eq!(out.rax, TDX_SPDM_REQUEST, "{waiting:#x}");
        let late = w.doe(&w.request(tdi, out.rcx)).unwrap();
        let mut calls = 0;
        let force = SeamRegs {
            rcx: tdi,
            rdx: abi::UNBIND_FLAG_FORCE,
            ..Default::default()
        };
        let status = loop {
            let rax = w.call(u64::from(abi::TSM_DEVIF_UNBIND), force).rax;
            if rax != TDX_INTERRUPTED_RESUMABLE {
                break rax;
            }
            calls += 1;
            assert!(calls < 100);
        };
        assert_eq!(status, TDX_SUCCESS, "{waiting:#x}");
        assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
        assert_eq!(
            w.respond(tdi, Some(&late)).rax,
            TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX),
            "{waiting:#x}: the late answer"
        );
        w.ok(
            abi::TSM_MMIO_ZAP_CHECK,
            SeamRegs {
                rcx: BAR,
                rdx: 1024,
                ..Default::default()
            },
        );
        // The stream is cut until the host sets it up; then the TDI binds again (its first
        // request unlocks the interface the forced unbind left locked).
        let bind = SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        };
        assert_eq!(
            w.call(u64::from(abi::TSM_DEVIF_BIND), bind).rax,
            TSM_STREAM_CUT | u64::from(OPERAND_ID_RCX)
        );
        assert_eq!(km(&w, 0, 0, 0).rax, TDX_SUCCESS);
        assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    }
}

/// TDH.MNG.CREATE as Linux's `tdh_mng_create(td, hkid)` (arch/x86/virt/vmx/tdx/tdx.c
/// @a4a508df) calls it: RAX 9, RCX the TDR page's physical address, RDX the HKID; Linux reads
/// nothing back. Every later operand naming the TD is that address. Each refusal names its
/// register, in the TDX module's order (HKID first), and changes nothing.
#[test]
fn tdh_mng_create_names_the_td_by_its_tdr_page() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let tdr = host_page(TDR_FIRST);
    let input = SeamRegs {
        rax: 9,
        rcx: tdr,
        rdx: HKID,
        ..Default::default()
    };
    let before = w.image();
    let refusals: [(&str, u64, u64, u64); 8] = [
        ("HKID 0", tdr, 0, TDX_OPERAND_INVALID | 2),
        (
            "HKID reserved bit 16",
            tdr,
            1 << 16 | HKID,
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "bad HKID and bad TDR: HKID first",
            tdr + 8,
            0,
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "TDR not 4 KiB aligned",
            tdr + 0x800,
            HKID,
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "TDR at 2^52",
            1 << 52,
            HKID,
            TDX_OPERAND_ADDR_RANGE_ERROR | 1,
        ),
        (
            "TDR outside host memory",
            HOST + (HOST_PAGES * MESSAGE_PAGE_BYTES) as u64,
            HKID,
            TDX_OPERAND_ADDR_RANGE_ERROR | 1,
        ),
        (
            "TDR below host memory",
            HOST - 0x1000,
            HKID,
            TDX_OPERAND_ADDR_RANGE_ERROR | 1,
        ),
        (
            "slot number, not a TDR page",
            0,
            HKID,
            TDX_OPERAND_ADDR_RANGE_ERROR | 1,
        ),
    ];
    for (what, rcx, rdx, expect) in refusals {
        let out = w.call(9, SeamRegs { rcx, rdx, ..input });
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert_eq!((out.rcx, out.rdx), (rcx, rdx), "{what}: registers written");
        assert!(w.image() == before, "{what} changed state");
        assert_eq!(w.fw.td_of(rcx), Ok(None), "{what} made a TD");
    }
    // Golden: success, every register as it was but RAX.
    let mut regs = input;
    let mut host = w.mem.borrow_mut();
    Dispatcher::new(&w.fw, HostBuffer::new(HOST, &mut host)).seamcall(&mut regs);
    drop(host);
    assert_eq!(
        regs,
        SeamRegs {
            rax: TDX_SUCCESS,
            ..input
        }
    );
    let td = w.fw.td_of(tdr).unwrap().unwrap();
    assert_eq!(
        w.fw.tdr_of(td).unwrap().map(|e| (e.tdr.as_u64(), e.hkid)),
        Some((tdr, 5))
    );
    // The same page again, or one of a TDI's private pages, is a page already in use.
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let before = w.image();
    let (devifcs, td_buffer, vmm_buffer) = private_pages(PAGES_A.0);
    for (what, rcx) in [
        ("the same TDR", tdr),
        ("a DEVIFCS page", devifcs),
        ("a TD buffer", td_buffer),
        ("a VMM buffer", vmm_buffer),
    ] {
        let out = w.call(9, SeamRegs { rcx, ..input });
        assert_eq!(out.rax, TDX_PAGE_METADATA_INCORRECT | 1, "{what}");
        assert!(w.image() == before, "{what} changed state");
    }
    // The converse: a TDR is never a TDI's private page.
    let mut create = devif_create_regs(
        dev,
        RequesterId::try_new(0, 3, 0, 1).unwrap(),
        tdr,
        private_pages(PAGES_B.0),
    );
    create.r9 = tdr;
    let out = w.call(u64::from(abi::TDH_DEVIF_CREATE), create);
    assert_eq!(out.rax, TDX_PAGE_METADATA_INCORRECT | 9);
    assert!(w.image() == before, "DEVIF.CREATE on a TDR changed state");
    // Every operand naming a TD takes the TDR PA: the old slot number (0) and an unused host
    // page name no TD (OPERAND_INVALID + that register), and change nothing.
    let other = host_page(TDR_FIRST + 1);
    for not_a_td in [0, other, tdr + 0x1000 * 64] {
        let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
        let cases: [(&str, u16, SeamRegs, u64); 6] = [
            (
                "TRACK",
                abi::TDH_MEM_TRACK,
                SeamRegs {
                    rcx: not_a_td,
                    ..Default::default()
                },
                1,
            ),
            (
                "SEPT.RD",
                abi::TDH_MEM_SEPT_RD,
                SeamRegs {
                    rcx: page,
                    rdx: not_a_td,
                    ..Default::default()
                },
                2,
            ),
            (
                "BLOCK",
                abi::TDH_MMIO_BLOCK,
                SeamRegs {
                    rcx: page,
                    rdx: not_a_td,
                    ..Default::default()
                },
                2,
            ),
            (
                "UNMAP",
                abi::TDH_MMIO_UNMAP,
                SeamRegs {
                    rcx: page,
                    rdx: not_a_td,
                    ..Default::default()
                },
                2,
            ),
            (
                "MAP",
                abi::TDH_MMIO_MAP,
                SeamRegs {
                    rcx: page,
                    rdx: not_a_td,
                    r8: BAR,
                    ..Default::default()
                },
                2,
            ),
            (
                "bind",
                abi::TSM_DEVIF_BIND,
                SeamRegs {
                    rcx: tdi,
                    rdx: not_a_td,
                    ..Default::default()
                },
                2,
            ),
        ];
        for (what, leaf, regs, operand) in cases {
            let out = w.call(u64::from(leaf), regs);
            assert_eq!(
                out.rax,
                TDX_OPERAND_INVALID | operand,
                "{what} on {not_a_td:#x}"
            );
            assert!(w.image() == before, "{what} on {not_a_td:#x} changed state");
        }
        let out = w.tdcall(
            not_a_td,
            abi::TDG_MMIO_ACCEPT,
            SeamRegs {
                rcx: page,
                ..Default::default()
            },
        );
        assert_eq!(out.rax, TDX_OPERAND_INVALID | u64::from(OPERAND_ID_TDR));
    }
    // The owner of a bound TDI reads back as its TDR.
    let out = w.relayed(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: tdr,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    let out = w.ok(
        abi::TSM_DEVIF_STATE,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    assert_eq!(out.r8, tdr);
    // Teardown is refused at VPFLUSHDONE while the TD owns a TDI; after unbind Linux's
    // sequence forgets the TDR, which TDH.MNG.CREATE may then use again.
    let before = w.image();
    let out = w.call(
        u64::from(abi::TDH_MNG_VPFLUSHDONE),
        SeamRegs {
            rcx: tdr,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_TD_HAS_ATTACHED_DEVICES);
    assert!(w.image() == before, "a refused VPFLUSHDONE changed state");
    assert_eq!(w.fw.td_of(tdr), Ok(Some(td)));
    let out = w.relayed(
        abi::TSM_DEVIF_UNBIND,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    // The TDI is handed to no TD, so the TDR can be reclaimed.
    w.ok(
        abi::TSM_DEVIF_SET_TD,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    for (leaf, rcx) in [
        (abi::TDH_MNG_VPFLUSHDONE, tdr),
        (abi::TDH_PHYMEM_CACHE_WB, 0),
        (abi::TDH_PHYMEM_CACHE_WB, 1),
        (abi::TDH_MNG_KEY_FREEID, tdr),
        (abi::TDH_PHYMEM_PAGE_RECLAIM, tdr),
    ] {
        let out = w.call(
            u64::from(leaf),
            SeamRegs {
                rcx,
                ..Default::default()
            },
        );
        assert!(
            out.rax == TDX_SUCCESS || out.rax == TDX_INTERRUPTED_RESUMABLE,
            "leaf {leaf}: {:#x}",
            out.rax
        );
    }
    assert_eq!(w.fw.td_of(tdr), Ok(None));
    let out = w.call(
        u64::from(abi::TDH_MEM_TRACK),
        SeamRegs {
            rcx: tdr,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_OPERAND_INVALID | 1);
    w.ok(abi::TDH_MNG_CREATE, input);
    assert!(w.fw.td_of(tdr).unwrap().is_some());
}

/// TDH.MMIO.MAP, BLOCK and UNMAP as Linux issues them ("[RFC PATCH 12/12] KVM: TDX: Implement
/// TDX specific private MMIO map/unmap for SEPT", <20250107142719.179636-13-yilun.xu@linux.intel.com>):
/// `tdh_mmio_map(tdr, gpa, level, hpa)` is RAX 158, RCX `gpa | level`, RDX the TDR PA, R8 the
/// MMIO page, every other register 0 (zero-initialised `struct tdx_module_args`); BLOCK 159
/// and UNMAP 160 are RCX `gpa | level`, RDX the TDR PA. KVM maps private MMIO 4 KiB at a time
/// (level 0). The firmware finds the TDI owning the page itself; each refusal names its
/// register and changes nothing.
#[test]
fn mmio_map_block_unmap_take_linux_registers() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let gpa4k = GPA + 0x20_0000;
    let hpa4k = BAR + 0x20_0000;
    let linux_map = SeamRegs {
        rax: 158,
        rcx: gpa4k, // | 0: 4 KiB
        rdx: td,
        r8: hpa4k,
        ..Default::default()
    };
    // Refusals first, each against the same state.
    let other_td = w.create_td();
    let before = w.image();
    let refusals: [(&str, SeamRegs, u64); 9] = [
        (
            "R9 holding a TDI handle (this firmware's earlier layout; slot 0 is 0 itself)",
            SeamRegs {
                r9: tdi + 1,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 9,
        ),
        (
            "R9 any other non-zero value",
            SeamRegs {
                r9: 1 << 63,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 9,
        ),
        (
            "level 3",
            SeamRegs {
                rcx: gpa4k | 3,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "RDX naming no TD (a TDI handle, say)",
            SeamRegs {
                rdx: tdi,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 2,
        ),
        (
            "a page no bound TDI holds",
            SeamRegs {
                r8: BAR + 0x40_0000,
                ..linux_map
            },
            TDX_PAGE_METADATA_INCORRECT | 8,
        ),
        (
            "a page no bound TDI holds, misaligned: alignment first, as the core",
            SeamRegs {
                r8: BAR + 0x40_0800,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 8,
        ),
        (
            "an owned page, misaligned GPA",
            SeamRegs {
                rcx: gpa4k + 0x800,
                ..linux_map
            },
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "an owned page for a TD that does not own its TDI",
            SeamRegs {
                rdx: other_td,
                ..linux_map
            },
            TDX_MMIO_DEVIF_OWNER_MISMATCH | 2,
        ),
        (
            "an owned page already mapped (the 2 MiB leaf's host page)",
            SeamRegs {
                r8: BAR,
                ..linux_map
            },
            TDX_PAGE_NOT_FREE | 8,
        ),
    ];
    for (what, regs, expect) in refusals {
        let out = w.call(regs.rax, regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert_eq!(
            SeamRegs {
                rax: regs.rax,
                ..out
            },
            regs,
            "{what}: a refusal writes no register but RAX"
        );
        assert!(w.image() == before, "{what} changed state");
    }
    // Linux's exact call maps the page for the TDI whose report holds it; Linux reads nothing
    // back on success and the registers come back as sent.
    let out = w.call(linux_map.rax, linux_map);
    assert_eq!(
        out,
        SeamRegs {
            rax: 0,
            ..linux_map
        }
    );
    let rd = w.ok(
        abi::TDH_MEM_SEPT_RD,
        SeamRegs {
            rcx: gpa4k,
            rdx: td,
            ..Default::default()
        },
    );
    // RDX: the walk level (1, the 4 KiB leaf) | state << 8.
    assert_eq!(rd.rdx, 1 | (SeptState::MmioPending as u64) << 8);
    // BLOCK and UNMAP with Linux's registers reach the core: the TDI is bound and its device
    // can reach the guest, so both are the core's TdiBound naming RCX, and change nothing.
    let before = w.image();
    for leaf in [159, 160] {
        let regs = SeamRegs {
            rax: leaf,
            rcx: gpa4k,
            rdx: td,
            ..Default::default()
        };
        let out = w.call(leaf, regs);
        assert_eq!(out.rax, TDX_DEVIF_TDISP_INVALID_STATE | 1, "{leaf}");
        assert_eq!(SeamRegs { rax: leaf, ..out }, regs, "{leaf}");
        assert!(w.image() == before, "{leaf} changed state");
    }
}

/// TDH.DEVIF.REMOVE (138) refuses a TDI that has leaves or owns ranges, naming RCX and
/// changing nothing: the core refuses removing a TDI that is not unbound (bound, or unbinding
/// until its last leaf is gone), and an unbound TDI owns nothing by construction. Shown
/// through the leaves alone, including after the host tore the leaves down itself (BLOCK,
/// TRACK, UNMAP as Linux's zap issues them, allowed once STOP_INTERFACE is acknowledged; the
/// scenario `tests/scenarios/host-teardown.scn`): the finished unbind leaves the TDI owning
/// nothing, with no leaf, and only then does REMOVE succeed.
#[test]
fn devif_remove_is_refused_while_the_tdi_has_leaves_or_owned_ranges() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let remove = SeamRegs {
        rcx: tdi,
        ..Default::default()
    };
    let refused = |what: &str| {
        let before = w.image();
        let out = w.call(u64::from(abi::TDH_DEVIF_REMOVE), remove);
        assert_eq!(
            out.rax,
            TDX_DEVIF_INVALID_STATE | 1,
            "{what}: {:#x}",
            out.rax
        );
        assert_eq!(
            SeamRegs { rax: 0, ..out },
            remove,
            "{what}: registers written"
        );
        assert!(w.image() == before, "{what}: REMOVE changed something");
    };
    let out = w.relayed(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    let owner = |hpa: u64| {
        w.fw.tsm()
            .owner_of(tsm_core::Hpa::try_new(hpa).unwrap(), PageSize::Size4K)
            .unwrap()
    };
    assert_eq!(owner(BAR), Some(w.id(tdi)));
    refused("bound, owning its report's ranges, no leaf");
    // Two 4 KiB leaves, mapped as Linux maps them.
    let leaf = |i: u64| GPA + (i << 12);
    for i in 0..2 {
        w.ok(
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: leaf(i),
                rdx: td,
                r8: BAR + (i << 12),
                ..Default::default()
            },
        );
    }
    refused("bound with leaves");
    // Unbind with the TD's TLB flush held back: STOP is acknowledged, the leaves stay blocked
    // for the host to remove.
    let guest = w.fw.td_of(td).unwrap().unwrap();
    w.fw.tsm()
        .with_table(|t| t.hold_flush(guest, true))
        .unwrap();
    let out = w.relayed(
        abi::TSM_DEVIF_UNBIND,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    assert_eq!(
        out.rax,
        TDX_TLB_TRACKING_NOT_DONE | u64::from(OPERAND_ID_TD_EPOCH)
    );
    refused("unbinding, leaves blocked");
    w.fw.tsm()
        .with_table(|t| t.hold_flush(guest, false))
        .unwrap();
    // The host's own zap of the first leaf, with Linux's registers: BLOCK (already blocked:
    // success, no change), TRACK, UNMAP (R8 the page it freed).
    let linux = SeamRegs {
        rcx: leaf(0),
        rdx: td,
        ..Default::default()
    };
    w.ok(abi::TDH_MMIO_BLOCK, linux);
    let tracked = w.call(
        u64::from(abi::TDH_MEM_TRACK),
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    assert!(
        tracked.rax == TDX_SUCCESS
            || tracked.rax == TDX_PREVIOUS_TLB_EPOCH_BUSY | u64::from(OPERAND_ID_RCX),
        "{:#x}",
        tracked.rax
    );
    let out = w.ok(abi::TDH_MMIO_UNMAP, linux);
    assert_eq!(out.r8, BAR);
    refused("unbinding, one leaf left, ranges still owned");
    // The unbind removes what the host left and ends owning nothing, with no leaf.
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    assert_eq!(owner(BAR), None);
    assert_eq!(owner(BAR + 0x1000), None);
    for i in 0..2 {
        let out = w.call(
            u64::from(abi::TDH_MEM_SEPT_RD),
            SeamRegs {
                rcx: leaf(i),
                rdx: td,
                ..Default::default()
            },
        );
        assert_eq!(out.rax & CODE_MASK, TDX_EPT_WALK_FAILED, "leaf {i}");
    }
    let zap = w.call(
        u64::from(abi::TSM_MMIO_ZAP_CHECK),
        SeamRegs {
            rcx: BAR,
            rdx: 1024,
            ..Default::default()
        },
    );
    assert_eq!(zap.rax, TDX_SUCCESS, "the BAR is no one's");
    // Unbound: it owns nothing, so it can go; its private pages go with it.
    let id = w.id(tdi);
    w.ok(abi::TDH_DEVIF_REMOVE, remove);
    assert_eq!(w.fw.devif(id), Ok(None));
    let again = w.call(u64::from(abi::TDH_DEVIF_REMOVE), remove);
    assert_eq!(again.rax, TDX_DEVIFMT_NOT_PRESENT | 1);
}

/// TDH.MMIO.MAP of a page no bound TDI holds is checked like any map before the core's
/// `HpaNotOwned` answer: alignment first, then reserved memory (`TSM_RESERVED_MEMORY` + R8),
/// and only then `TDX_PAGE_METADATA_INCORRECT` + R8; none changes anything.
#[test]
fn mmio_map_of_an_unowned_page_checks_alignment_and_reserved_memory_first() {
    let mut mem = vec![Page::ZERO; 32];
    let pool = FramePool::new(&mut mem, 0x20_0000_0000).unwrap();
    let reserved =
        tsm_core::ReservedMemory::from_ranges(&[MmioRange::from_raw(0x9000_0000, 512).unwrap()])
            .unwrap();
    let fw = TdxModule::with_reserved(
        Sept::new(pool, SeptLevels::Four),
        ModelSession::model(),
        reserved,
    );
    let mut host = vec![0u8; HOST_PAGES * MESSAGE_PAGE_BYTES];
    let call = |host: &mut Vec<u8>, regs: SeamRegs| {
        let mut regs = regs;
        Dispatcher::new(&fw, HostBuffer::new(HOST, host)).seamcall(&mut regs);
        regs
    };
    let tdr = host_page(TDR_FIRST);
    let created = call(
        &mut host,
        SeamRegs {
            rax: 9,
            rcx: tdr,
            rdx: HKID,
            ..Default::default()
        },
    );
    assert_eq!(created.rax, TDX_SUCCESS);
    let image = |host: &Vec<u8>| {
        (
            fw.snapshot_with(|t| {
                (
                    t.pool().pages().copied().collect::<Vec<_>>(),
                    t.bookkeeping(),
                )
            })
            .unwrap(),
            host.clone(),
        )
    };
    let before = image(&host);
    let map = |r8: u64| SeamRegs {
        rax: 158,
        rcx: GPA | 1,
        rdx: tdr,
        r8,
        ..Default::default()
    };
    for (what, r8, expect) in [
        (
            "reserved and misaligned",
            0x9000_1000,
            TDX_OPERAND_INVALID | 8,
        ),
        ("reserved", 0x9000_0000, TSM_RESERVED_MEMORY | 8),
        (
            "the page just below reserved memory",
            0x8fe0_0000,
            TDX_PAGE_METADATA_INCORRECT | 8,
        ),
        ("no one's", BAR, TDX_PAGE_METADATA_INCORRECT | 8),
    ] {
        let out = call(&mut host, map(r8));
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(image(&host) == before, "{what} changed something");
    }
}

/// TDH.SPDM.CREATE / TDH.SPDM.DELETE as Linux's `tdh_spdm_create(func_id, spdm_mt, *spdm_id)`
/// and `tdh_spdm_delete(spdm_id, spdm_mt, *nr_released, *released_hpa)` (devsec tsm tree
/// `arch/x86/virt/vmx/tdx/tdx.c` @2c2d99f4) issue them: golden registers in and out, for one
/// page and for a root page of three.
#[test]
fn spdm_create_and_delete_golden_registers() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    // 0001:1a:00.0: `tdisp_func_id` sets SEG_VALID for the non-zero segment.
    let func = RequesterId::try_new(1, 0x1a, 0, 0).unwrap();
    assert_eq!(abi::function_id(func), 0x0101_1a00);
    assert_eq!(abi::function_id(rid(0x1a)), 0x0000_1a00);
    // One page: RDX is the page itself, size - 1 = 0.
    let one = host_page(SPDM_FIRST);
    assert_eq!(abi::hpa_array(one, 1), one);
    let regs = SeamRegs {
        rcx: 0x0101_1a00,
        rdx: one,
        ..Default::default()
    };
    let out = w.call(u64::from(abi::TDH_SPDM_CREATE), regs);
    assert_eq!(
        out,
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: 0,
            ..regs
        },
        "out: RCX the SPDM id, nothing else"
    );
    let entry = w.fw.spdm(0).unwrap().unwrap();
    assert_eq!(entry.function, func);
    assert_eq!(entry.metadata.root, None);
    assert_eq!(entry.device, None, "no BARs yet");
    // Three pages: RDX names the root page (SIZE 2 in bits 63:55), whose entries are the pages.
    let root = host_page(SPDM_FIRST + 1);
    let pages = [
        host_page(SPDM_FIRST + 2),
        host_page(SPDM_FIRST + 3),
        host_page(SPDM_FIRST + 4),
    ];
    let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    w.write(root, &bytes);
    let rdx = root | 2 << 55;
    assert_eq!(abi::hpa_array(root, 3), rdx);
    let out = w.ok(
        abi::TDH_SPDM_CREATE,
        SeamRegs {
            rcx: 0x0000_1a00,
            rdx,
            ..Default::default()
        },
    );
    assert_eq!(out.rcx, 1);
    let entry = w.fw.spdm(1).unwrap().unwrap();
    assert_eq!(entry.metadata.root.map(|h| h.as_u64()), Some(root));
    let recorded: Vec<u64> = entry.metadata.pages.iter().map(|h| h.as_u64()).collect();
    assert_eq!(recorded, pages);
    // DELETE: RDX `hpa_array_t_release_raw` (0 for one page, else the root); out RCX the
    // released array, checked by Linux as SIZE + 1 pages at PFN.
    let out = w.ok(
        abi::TDH_SPDM_DELETE,
        SeamRegs {
            rcx: 1,
            rdx: root,
            ..Default::default()
        },
    );
    assert_eq!(out.rcx, root | 2 << 55);
    assert_eq!((out.rcx >> 55) + 1, 3, "nr_released");
    let out = w.ok(
        abi::TDH_SPDM_DELETE,
        SeamRegs {
            rcx: 0,
            rdx: 0,
            ..Default::default()
        },
    );
    assert_eq!(out.rcx, one);
    assert_eq!(w.fw.spdm(0).unwrap(), None);
    assert_eq!(w.fw.spdm(1).unwrap(), None);
    // Released pages are the host's again: a TD may take one as its TDR.
    w.ok(
        abi::TDH_MNG_CREATE,
        SeamRegs {
            rcx: root,
            rdx: HKID,
            ..Default::default()
        },
    );
}

/// Every refused TDH.SPDM.CREATE names its operand, writes no register but RAX and changes
/// nothing (the SPDM table included).
#[test]
fn spdm_create_refusals_name_the_operand_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, _tdi) = bound_world(&mut mem);
    // Bus 3's SPDM id exists (bound_world), with its page spdm_page(3).
    let free = spdm_page(5);
    let root = spdm_page(6);
    let put_root = |entries: &[u64]| {
        let bytes: Vec<u8> = entries.iter().flat_map(|p| p.to_le_bytes()).collect();
        w.write(root, &bytes);
    };
    let inv = |op: u32| TDX_OPERAND_INVALID | u64::from(op);
    let range = |op: u32| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(op);
    let in_use = TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RDX);
    let func = abi::function_id(rid(5));
    let cases: Vec<(&str, u64, u64, Vec<u64>, u64)> = vec![
        ("RCX bit 25", func | 1 << 25, free, vec![], inv(1)),
        ("RCX bit 63", func | 1 << 63, free, vec![], inv(1)),
        (
            "segment without SEG_VALID",
            func | 1 << 16,
            free,
            vec![],
            inv(1),
        ),
        ("RDX bit 0", func, free | 1, vec![], inv(2)),
        ("RDX bit 52", func, free | 1 << 52, vec![], inv(2)),
        (
            "more pages than the firmware takes",
            func,
            abi::hpa_array(root, 5),
            vec![spdm_page(7); 5],
            inv(2),
        ),
        (
            "page outside host memory",
            func,
            abi::hpa_array(0x1000, 1),
            vec![],
            range(2),
        ),
        (
            "page past host memory",
            func,
            abi::hpa_array(host_page(HOST_PAGES as u64), 1),
            vec![],
            range(2),
        ),
        (
            "root entry misaligned",
            func,
            abi::hpa_array(root, 2),
            vec![free, spdm_page(7) + 8],
            inv(2),
        ),
        (
            "root entry at 2^52",
            func,
            abi::hpa_array(root, 2),
            vec![free, 1 << 52],
            range(2),
        ),
        (
            "root entry outside host memory",
            func,
            abi::hpa_array(root, 2),
            vec![free, 0x1000],
            range(2),
        ),
        (
            "a page twice",
            func,
            abi::hpa_array(root, 2),
            vec![free, free],
            in_use,
        ),
        (
            "the root as a page",
            func,
            abi::hpa_array(root, 2),
            vec![free, root],
            in_use,
        ),
        ("a TD's TDR", func, abi::hpa_array(td, 1), vec![], in_use),
        (
            "a TDI's DEVIFCS page",
            func,
            abi::hpa_array(private_pages(PAGES_A.0).0, 1),
            vec![],
            in_use,
        ),
        (
            "another SPDM id's page",
            func,
            abi::hpa_array(spdm_page(3), 1),
            vec![],
            in_use,
        ),
        (
            "another SPDM id's page behind a root",
            func,
            abi::hpa_array(root, 2),
            vec![free, spdm_page(3)],
            in_use,
        ),
        (
            "the function of another SPDM id",
            abi::function_id(rid(3)),
            abi::hpa_array(free, 1),
            vec![],
            TSM_DUPLICATE_DEVICE | 1,
        ),
    ];
    for (what, rcx, rdx, entries, expect) in cases {
        put_root(&entries);
        let before = w.image();
        let regs = SeamRegs {
            rcx,
            rdx,
            r8: 0x55,
            ..Default::default()
        };
        let out = w.call(u64::from(abi::TDH_SPDM_CREATE), regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert_eq!(
            SeamRegs {
                rax: regs.rax,
                ..out
            },
            SeamRegs { rax: 0, ..regs },
            "{what}: a register other than RAX written"
        );
        assert!(w.image() == before, "{what}: something changed");
    }
    // A page of SPDM metadata is refused the other way round too.
    let before = w.image();
    let out = w.call(
        u64::from(abi::TDH_MNG_CREATE),
        SeamRegs {
            rcx: spdm_page(3),
            rdx: HKID,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_PAGE_METADATA_INCORRECT | 1);
    assert!(w.image() == before);
    let mut create = devif_create_regs(
        0,
        RequesterId::try_new(0, 3, 0, 1).unwrap(),
        td,
        private_pages(PAGES_B.0),
    );
    create.r9 = spdm_page(3);
    let out = w.call(u64::from(abi::TDH_DEVIF_CREATE), create);
    assert_eq!(out.rax, TDX_PAGE_METADATA_INCORRECT | 9);
    assert!(w.image() == before);
}

/// The BARs come by TSM.SPDM.BARS, once, before the first TDI; TDH.SPDM.DELETE takes the
/// release form of the array and is refused while TDIs remain. Every refusal changes nothing.
#[test]
fn spdm_bars_and_delete_refusals_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let dev = spdm_create(&w, 4);
    // No BARs, so no IDE stream (TDH.IDE.STREAM.CREATE needs them): no stream to name.
    let devif = devif_create_regs(dev, rid(4), w.first_td(), private_pages(PAGES_A.0));
    let before = w.image();
    let expect = [
        (
            abi::TDH_DEVIF_CREATE,
            devif,
            TDX_IDE_STREAM_INVALID_STATE | 1,
        ),
        (
            abi::TSM_SPDM_BARS,
            SeamRegs {
                rcx: dev + 1,
                rdx: PARAMS,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 1,
        ),
        (
            abi::TDH_SPDM_DELETE,
            SeamRegs {
                rcx: dev + 1,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 1,
        ),
        (
            abi::TDH_SPDM_DELETE,
            SeamRegs {
                rcx: dev,
                rdx: spdm_page(4),
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 2,
        ),
    ];
    for (leaf, regs, status) in expect {
        let out = w.call(u64::from(leaf), regs);
        assert_eq!(out.rax, status, "leaf {leaf:#x}");
        assert_eq!(
            SeamRegs { rax: 0, ..out },
            regs,
            "leaf {leaf:#x}: registers"
        );
        assert!(w.image() == before, "leaf {leaf:#x}: something changed");
    }
    w.put_list(&RangeList::from_ranges(&[MmioRange::from_raw(BAR, 1024).unwrap()]).unwrap());
    let bars = SeamRegs {
        rcx: dev,
        rdx: PARAMS,
        ..Default::default()
    };
    w.ok(abi::TSM_SPDM_BARS, bars);
    let core_dev = w.fw.spdm(dev).unwrap().unwrap().device.unwrap();
    assert_eq!(w.fw.device(core_dev).unwrap().bars.len(), 1);
    let before = w.image();
    assert_eq!(
        w.call(u64::from(abi::TSM_SPDM_BARS), bars).rax,
        TSM_BARS_REGISTERED | 1
    );
    assert!(w.image() == before);
    // A TDI needs the SPDM id's IDE stream (TDH.DEVIF.CREATE names it), and DELETE is
    // refused while the stream exists (link.rs tests): no TDI can outlive its SPDM id.
    let delete = SeamRegs {
        rcx: dev,
        ..Default::default()
    };
    assert_eq!(
        w.ok(abi::TDH_SPDM_DELETE, delete).rcx,
        abi::hpa_array(spdm_page(4), 1)
    );
    assert_eq!(w.fw.spdm(dev).unwrap(), None);
    assert_eq!(
        w.fw.device(core_dev).err(),
        Some(tsm_core::Error::InvalidHandle)
    );
}

/// TDG.MMIO.ACCEPT takes in RDX the page's reported address (the report's FIRST_PAGE plus
/// the page's offset, the bind's MMIO_REPORTING_OFFSET included). Anything else, the host
/// address among them, is TDX_MMIO_INVALID_HPA_OFFSET + RCX with the S-EPT entry still
/// pending and nothing else changed; the right address accepts.
#[test]
fn guest_accept_checks_rdx_against_the_report() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    let right = w.reported(tdi, BAR);
    let sept_state = |w: &World| {
        let out = w.ok(
            abi::TDH_MEM_SEPT_RD,
            SeamRegs {
                rcx: page,
                rdx: td,
                ..Default::default()
            },
        );
        out.rdx >> 8
    };
    assert_eq!(sept_state(&w), SeptState::MmioPending as u64);
    for wrong in [0, BAR, right + 0x20_0000, right + 0x1000, right ^ (1 << 52)] {
        let before = w.image();
        let regs = SeamRegs {
            rcx: page,
            rdx: wrong,
            ..Default::default()
        };
        let out = w.tdcall(td, abi::TDG_MMIO_ACCEPT, regs);
        assert_eq!(
            out.rax,
            TDX_MMIO_INVALID_HPA_OFFSET | 1,
            "RDX {wrong:#x}: {:#x}",
            out.rax
        );
        assert_eq!(SeamRegs { rax: 0, ..out }, SeamRegs { rax: 0, ..regs });
        assert!(
            w.image() == before,
            "a refused accept ({wrong:#x}) changed state"
        );
        assert_eq!(sept_state(&w), SeptState::MmioPending as u64);
    }
    let out = w.tdcall(
        td,
        abi::TDG_MMIO_ACCEPT,
        SeamRegs {
            rcx: page,
            rdx: right,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    assert_eq!(sept_state(&w), SeptState::MmioMapped as u64);
    // Accepted: the entry's own state decides first, as in the module.
    let out = w.tdcall(
        td,
        abi::TDG_MMIO_ACCEPT,
        SeamRegs {
            rcx: page,
            rdx: 0,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_PAGE_ALREADY_ACCEPTED | 1);
}

/// The offset of each bind is its own: after an unbind and a new bind of the same TDI the
/// old reported address no longer accepts.
#[test]
fn a_rebind_moves_the_reported_addresses() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let old = w.reported(tdi, BAR);
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    let out = w.relayed(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page,
            rdx: td,
            r8: BAR,
            ..Default::default()
        },
    );
    let new = w.reported(tdi, BAR);
    assert_ne!(old, new);
    let before = w.image();
    let out = w.tdcall(
        td,
        abi::TDG_MMIO_ACCEPT,
        SeamRegs {
            rcx: page,
            rdx: old,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_MMIO_INVALID_HPA_OFFSET | 1);
    assert!(w.image() == before);
    let out = w.tdcall(
        td,
        abi::TDG_MMIO_ACCEPT,
        SeamRegs {
            rcx: page,
            rdx: new,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
}

/// TDG.DEVIF.RD: the calling TD reads its own TDI (TDISP version, state, reported ranges,
/// report digest); another TD's TDI, an unknown TDI, a field we do not define, reserved bits
/// and a non-zero R9 are refused with the operand named and nothing changed.
#[test]
fn devif_rd_reads_the_calling_tds_own_tdi() {
    let mut mem = vec![Page::ZERO; 32];
    let (w, td, tdi) = bound_world(&mut mem);
    let other = w.create_td();
    let rd = |td: u64, rcx: u64, rdx: u64, r9: u64| {
        w.tdcall(
            td,
            abi::TDG_DEVIF_RD,
            SeamRegs {
                rcx,
                rdx,
                r9,
                ..Default::default()
            },
        )
    };
    let read = |field: u8| {
        let out = rd(td, tdi, u64::from(field), 0);
        assert_eq!(out.rax, TDX_SUCCESS, "field {field:#x}: {:#x}", out.rax);
        out.rcx
    };
    assert_eq!(read(abi::DEVIF_FIELD_TDISP_VERSION), 0x10);
    assert_eq!(read(abi::DEVIF_FIELD_TDISP_STATE), 1, "CONFIG_LOCKED");
    let base = w.fw.tsm().owned_ranges(w.id(tdi)).unwrap()[0]
        .base()
        .as_u64();
    assert_eq!(read(abi::DEVIF_FIELD_REPORTED_RANGE), w.reported(tdi, base));
    let id = w.id(tdi);
    let g = w.fw.td_of(td).unwrap().unwrap();
    for word in 0..6u8 {
        assert_eq!(
            read(abi::DEVIF_FIELD_REPORT_DIGEST + word),
            w.fw.tsm()
                .guest_read(g, id, tsm_core::GuestField::ReportDigest(word))
                .unwrap()
        );
    }

    let before = w.image();
    let state = u64::from(abi::DEVIF_FIELD_TDISP_STATE);
    let cases = [
        (
            "another TD's TDI",
            rd(other, tdi, state, 0),
            platform_tdx::status::TDX_DEVIF_INVALID_METADATA | 1,
        ),
        (
            "unknown TDI",
            rd(td, tdi + 5, state, 0),
            TDX_DEVIFMT_NOT_PRESENT | 1,
        ),
        (
            "function_id_reg_t bits 63:32",
            rd(td, 1 << 40, state, 0),
            TDX_OPERAND_INVALID | 1,
        ),
        ("field 0", rd(td, tdi, 0, 0), TDX_OPERAND_INVALID | 2),
        ("field 0x87", rd(td, tdi, 0x87, 0), TDX_OPERAND_INVALID | 2),
        (
            "reserved bits",
            rd(td, tdi, state | 1 << 8, 0),
            TDX_OPERAND_INVALID | 2,
        ),
        ("R9", rd(td, tdi, state, 1), TDX_OPERAND_INVALID | 9),
        (
            "a range past the report",
            rd(td, tdi, u64::from(abi::DEVIF_FIELD_REPORTED_RANGE) + 1, 0),
            TSM_INVALID_RANGE | 2,
        ),
    ];
    // Every refusal names the register the guest passed (RCX the TDI, RDX the field).
    for (what, out, want) in cases {
        assert_eq!(out.rax, want, "{what}: {:#x}", out.rax);
    }
    assert!(w.image() == before, "a refused TDG.DEVIF.RD changed state");
}

/// The TDX-IO register sets, exactly as the module's unions lay them out (intel/tdx-module
/// `devif_defs.h` @a56a9173): CREATE's `devif_id_t` and three private pages (no output),
/// REQUEST's `devif_req_in_t` in and `devif_req_out_t` out, RESPONSE's `devif_rsp_in_t` in and
/// `devif_rsp_out_t` out, the guest's TDG.DEVIF.REQUEST/RESPONSE, and REMOVE's three outputs.
/// Every register a leaf does not write comes back as sent.
#[test]
fn devif_golden_registers_in_and_back() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let fid: u64 = 0x0300; // 0000:03:00.0: RID 15:0, segment 0, SEG_VALID clear
    let (devifcs, td_buffer, vmm_buffer) = private_pages(PAGES_C.0);
    let create = SeamRegs {
        rax: u64::from(abi::TDH_DEVIF_CREATE),
        // iommu 15:0 = 0, stream 23:16 = the SPDM id's stream (ours: its id), type 31:24 = 0,
        // function ID 63:32.
        rcx: dev << 16 | fid << 32,
        rdx: td,
        r8: devifcs,
        r9: td_buffer,
        r10: vmm_buffer,
        ..Default::default()
    };
    let out = w.call(create.rax, create);
    assert_eq!(
        out,
        SeamRegs {
            rax: TDX_SUCCESS,
            ..create
        },
        "CREATE has no output"
    );
    w.pages.borrow_mut().insert(fid, PAGES_C);

    // REQUEST LOCK_INTERFACE: RDX code 0x83, R8 the shared page, R9 0.
    let lock = SeamRegs {
        rax: u64::from(abi::TDH_DEVIF_REQUEST),
        rcx: fid,
        rdx: 0x83,
        r8: PAGES_C.0,
        ..Default::default()
    };
    let out = w.call(lock.rax, lock);
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    // devif_req_out_t: the message written (the bind's first: GET_TDISP_VERSION), its DOE
    // length in 23:8, 63:24 zero.
    assert_eq!(out.rcx & 0xff, 0x81, "GET_TDISP_VERSION first");
    assert_eq!(out.rcx >> 24, 0);
    let len = w.request(fid, out.rcx).len() as u64;
    assert_eq!((out.rcx >> 8) & 0xffff, len);
    assert_eq!(
        SeamRegs {
            rax: 0,
            rcx: 0,
            ..out
        },
        SeamRegs {
            rax: 0,
            rcx: 0,
            ..lock
        }
    );

    // RESPONSE: RDX the answer's page (51:12), R8 the next request's page, R9 0.
    let mut out = out;
    let mut last = out;
    while out.rax == TDX_SPDM_REQUEST {
        let answer = w.doe(&w.request(fid, out.rcx)).unwrap();
        w.write(PAGES_C.1, &answer);
        let regs = SeamRegs {
            rax: u64::from(abi::TDH_DEVIF_RESPONSE),
            rcx: fid,
            rdx: PAGES_C.1,
            r8: PAGES_C.0,
            ..Default::default()
        };
        last = regs;
        out = w.call(regs.rax, regs);
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    // devif_rsp_out_t: LOCK_INTERFACE_RESPONSE 0x03, nothing copied (length 0).
    assert_eq!(out.rcx, 0x03);
    assert_eq!(
        SeamRegs {
            rax: 0,
            rcx: 0,
            ..out
        },
        SeamRegs {
            rax: 0,
            rcx: 0,
            ..last
        }
    );
    assert_eq!(w.state_code(fid), abi::TdiStateCode::Locked as u64);

    // GET_DEVICE_INTERFACE_STATE: the STATE response carries the TDISP state in 31:24.
    let state = w.relayed(
        abi::TDH_DEVIF_REQUEST,
        SeamRegs {
            rcx: fid,
            rdx: 0x85,
            r8: PAGES_C.0,
            ..Default::default()
        },
    );
    assert_eq!(state.rax, TDX_SUCCESS);
    assert_eq!(state.rcx, 0x05 | 1 << 24, "STATE response, CONFIG_LOCKED");

    // The guest: TDG.DEVIF.REQUEST START (RDX 0x86) queues it and writes nothing back (its
    // DMA context added and accepted first).
    assert_eq!(w.accept_dma(td, fid), TDX_SUCCESS);
    let start = SeamRegs {
        rax: u64::from(abi::TDG_DEVIF_REQUEST),
        rcx: fid,
        rdx: 0x86,
        ..Default::default()
    };
    let mut regs = start;
    Dispatcher::new(&w.fw, HostBuffer::new(HOST, &mut w.mem.borrow_mut())).tdcall(td, &mut regs);
    assert_eq!(
        regs,
        SeamRegs {
            rax: TDX_SUCCESS,
            ..start
        }
    );
    // The host fetches it: td_flag (bit 63), code 0.
    let fetch = w.call(
        u64::from(abi::TDH_DEVIF_REQUEST),
        SeamRegs {
            rcx: fid,
            rdx: 1 << 63,
            r8: PAGES_C.0,
            ..Default::default()
        },
    );
    assert_eq!(fetch.rax, TDX_SPDM_REQUEST);
    assert_eq!(fetch.rcx & 0xff, 0x86);
    let answer = w.doe(&w.request(fid, fetch.rcx)).unwrap();
    w.write(PAGES_C.1, &answer);
    let answered = w.call(
        u64::from(abi::TDH_DEVIF_RESPONSE),
        SeamRegs {
            rcx: fid,
            rdx: PAGES_C.1 | 1 << 63,
            r8: PAGES_C.0,
            ..Default::default()
        },
    );
    assert_eq!((answered.rax, answered.rcx), (TDX_SUCCESS, 0x06));
    // TDG.DEVIF.RESPONSE: RDX 0 (no copy), the outcome in RCX.
    let read = w.tdcall(
        td,
        abi::TDG_DEVIF_RESPONSE,
        SeamRegs {
            rcx: fid,
            ..Default::default()
        },
    );
    assert_eq!((read.rax, read.rcx), (TDX_SUCCESS, 0x06));
    assert_eq!(w.state_code(fid), abi::TdiStateCode::Run as u64);
    // Read once: a second read finds nothing processed.
    let again = w.tdcall(
        td,
        abi::TDG_DEVIF_RESPONSE,
        SeamRegs {
            rcx: fid,
            ..Default::default()
        },
    );
    assert_eq!(again.rax, TDX_DEVIF_TDISP_INVALID_REQ_STS | 1);

    // STOP_INTERFACE: the bounded unbind, INTERRUPTED_RESUMABLE until done; its last
    // outcome names STOP_INTERFACE_RESPONSE 0x07.
    let stop = SeamRegs {
        rcx: fid,
        rdx: 0x87,
        r8: PAGES_C.0,
        ..Default::default()
    };
    let out = w.drained(fid, || w.relayed(abi::TDH_DEVIF_REQUEST, stop));
    assert_eq!(out, TDX_SUCCESS);
    assert_eq!(w.state_code(fid), abi::TdiStateCode::Unbound as u64);

    // REMOVE: RCX the function ID; out RCX the TD buffer, RDX the VMM buffer, R8 the TDR.
    let remove = SeamRegs {
        rax: u64::from(abi::TDH_DEVIF_REMOVE),
        rcx: fid,
        ..Default::default()
    };
    let out = w.call(remove.rax, remove);
    assert_eq!(
        out,
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: td_buffer,
            rdx: vmm_buffer,
            r8: td,
            ..remove
        }
    );
    // The pages are free again: the same CREATE works.
    w.ok(abi::TDH_DEVIF_CREATE, create);
}

/// A TDI is for one TD (CREATE's RDX): TSM.DEVIF.BIND for another is OWNER_MISMATCH + RDX
/// where the core would start a bind, and the core's own refusal where it would not; LOCK
/// binds only to the TDI's TD; TSM.DEVIF.SET_TD (ours) hands an unbound, idle TDI to another
/// TD, and is refused while the TDI is bound or a bind waits. A TDI created for no TD (RDX 0,
/// ours) is bound by nobody until SET_TD names one. Every refusal changes nothing.
#[test]
fn a_tdi_is_bound_only_to_its_own_td() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td1 = w.create_td();
    let td2 = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi_for(td1, dev, rid(3), PAGES_A);
    let refused = |what: &str, leaf: u16, regs: SeamRegs, expect: u64| {
        let before = w.image();
        let out = w.call(u64::from(leaf), regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(w.image() == before, "{what} changed something");
    };
    let bind = |td: u64| SeamRegs {
        rcx: tdi,
        rdx: td,
        r8: PAGES_A.0,
        ..Default::default()
    };
    let set_td = |td: u64| SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    refused(
        "bind for another TD",
        abi::TSM_DEVIF_BIND,
        bind(td2),
        TDX_MMIO_DEVIF_OWNER_MISMATCH | 2,
    );
    refused(
        "SET_TD to no TD",
        abi::TSM_DEVIF_SET_TD,
        set_td(host_page(TDR_FIRST + 3)),
        TDX_OPERAND_INVALID | 2,
    );
    // A bind of td1 waits: td2's bind gets the core's ExchangePending, SET_TD OUT_REQ.
    let first = w.call(u64::from(abi::TSM_DEVIF_BIND), bind(td1));
    assert_eq!(first.rax, TDX_SPDM_REQUEST);
    refused(
        "bind for another TD while a bind waits",
        abi::TSM_DEVIF_BIND,
        bind(td2),
        TDX_DEVIF_TDISP_OUT_REQ | 1,
    );
    refused(
        "SET_TD while a bind waits",
        abi::TSM_DEVIF_SET_TD,
        set_td(td2),
        TDX_DEVIF_TDISP_OUT_REQ | 1,
    );
    assert_eq!(w.relay(tdi, first).rax, TDX_SUCCESS);
    refused(
        "bind for another TD while bound",
        abi::TSM_DEVIF_BIND,
        bind(td2),
        TSM_TDI_ALREADY_BOUND | 1,
    );
    refused(
        "SET_TD while bound",
        abi::TSM_DEVIF_SET_TD,
        set_td(td2),
        TDX_DEVIF_INVALID_STATE | 1,
    );
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    w.ok(abi::TSM_DEVIF_SET_TD, set_td(td2));
    refused(
        "bind for the old TD",
        abi::TSM_DEVIF_BIND,
        bind(td1),
        TDX_MMIO_DEVIF_OWNER_MISMATCH | 2,
    );
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind(td2)).rax, TDX_SUCCESS);
    let state = w.ok(abi::TSM_DEVIF_STATE, on(tdi));
    assert_eq!(state.r8, td2, "owner td2");
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    w.ok(abi::TDH_DEVIF_REMOVE, on(tdi));

    // Created for no TD: LOCK has no TD to bind to; SET_TD names one.
    let mut create = devif_create_regs(dev, rid(3), 0, private_pages(PAGES_A.0));
    create.rdx = 0;
    w.ok(abi::TDH_DEVIF_CREATE, create);
    let lock = SeamRegs {
        rcx: tdi,
        rdx: 0x83,
        r8: PAGES_A.0,
        ..Default::default()
    };
    refused(
        "LOCK of a TDI for no TD",
        abi::TDH_DEVIF_REQUEST,
        lock,
        TDX_OPERAND_INVALID | u64::from(OPERAND_ID_TDR),
    );
    w.ok(abi::TSM_DEVIF_SET_TD, set_td(td1));
    assert_eq!(w.relayed(abi::TDH_DEVIF_REQUEST, lock).rax, TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Locked as u64);
}

/// The TD's own request (TDG.DEVIF.REQUEST START) through its states, every refusal with
/// nothing changed: from another TD (`TDX_DEVIF_INVALID_METADATA`), on an unbound TDI (the
/// core's `TdiNotBound`, `TDX_DEVIF_INVALID_STATE`), a second one while it waits
/// (`TDX_DEVIF_TDISP_INVALID_REQ_STS` + RCX), the host's answer without `td_flag` or its
/// `td_flag` on its own request (`TDX_DEVIF_TDISP_INVALID_REQ_STS` + RDX), another code while
/// it waits (`TDX_DEVIF_TDISP_OUT_REQ`), a read before the answer; then a START a forced unbind
/// abandons reads `TDX_DEVIF_INVALID_STATE` once, and the TD may ask again.
#[test]
fn the_tds_start_request_and_its_refusals() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let other = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi_for(td, dev, rid(3), PAGES_A);
    let start = SeamRegs {
        rcx: tdi,
        rdx: 0x86,
        ..Default::default()
    };
    let read = SeamRegs {
        rcx: tdi,
        ..Default::default()
    };
    let guest_refused = |what: &str, from: u64, leaf: u16, regs: SeamRegs, expect: u64| {
        let before = w.image();
        let out = w.tdcall(from, leaf, regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert_eq!(SeamRegs { rax: 0, ..out }, regs, "{what}: registers");
        assert!(w.image() == before, "{what} changed something");
    };
    let host_refused = |what: &str, leaf: u16, regs: SeamRegs, expect: u64| {
        let before = w.image();
        let out = w.call(u64::from(leaf), regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert!(w.image() == before, "{what} changed something");
    };
    guest_refused(
        "START of an unbound TDI",
        td,
        abi::TDG_DEVIF_REQUEST,
        start,
        TDX_DEVIF_INVALID_STATE | 1,
    );
    assert_eq!(
        w.relayed(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            }
        )
        .rax,
        TDX_SUCCESS
    );
    guest_refused(
        "START from another TD",
        other,
        abi::TDG_DEVIF_REQUEST,
        start,
        TDX_DEVIF_INVALID_METADATA | 1,
    );
    guest_refused(
        "a read with nothing asked",
        td,
        abi::TDG_DEVIF_RESPONSE,
        read,
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 1,
    );
    guest_refused(
        "a read from another TD",
        other,
        abi::TDG_DEVIF_RESPONSE,
        read,
        TDX_DEVIF_INVALID_METADATA | 1,
    );
    host_refused(
        "the host's td_flag with nothing asked",
        abi::TDH_DEVIF_REQUEST,
        SeamRegs {
            rcx: tdi,
            rdx: abi::REQ_IN_TD_FLAG,
            r8: PAGES_A.0,
            ..Default::default()
        },
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 1,
    );
    // START waits for the TD's own TDG.DMAR.ACCEPT of the TDI's context.
    guest_refused(
        "START with no DMA context",
        td,
        abi::TDG_DEVIF_REQUEST,
        start,
        TSM_DMA_NOT_ACCEPTED | 1,
    );
    let rid3 = platform_tdx::dmar::dmar_idx(rid(3));
    let add = dmar_add_regs(rid3, td);
    assert_eq!(w.call(u64::from(abi::TDH_DMAR_ADD), add).rax, TDX_SUCCESS);
    guest_refused(
        "START with the context not accepted",
        td,
        abi::TDG_DEVIF_REQUEST,
        start,
        TSM_DMA_NOT_ACCEPTED | 1,
    );
    let before = w.image();
    let other_accept = w.tdcall(other, abi::TDG_DMAR_ACCEPT, read);
    assert_eq!(
        other_accept.rax,
        TDX_DEVIF_INVALID_METADATA | 1,
        "another TD's accept"
    );
    assert!(w.image() == before, "another TD's accept changed something");
    guest_refused(
        "START after another TD's accept",
        td,
        abi::TDG_DEVIF_REQUEST,
        start,
        TSM_DMA_NOT_ACCEPTED | 1,
    );
    assert_eq!(w.accept_dma(td, tdi), TDX_SUCCESS);
    // The TD asks: queued, nothing written for the host yet.
    let out = w.tdcall(td, abi::TDG_DEVIF_REQUEST, start);
    assert_eq!(out.rax, TDX_SUCCESS);
    guest_refused(
        "a second START while it waits",
        td,
        abi::TDG_DEVIF_REQUEST,
        start,
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 1,
    );
    guest_refused(
        "a read before the answer",
        td,
        abi::TDG_DEVIF_RESPONSE,
        read,
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 1,
    );
    host_refused(
        "GET_STATE while the TD's START waits",
        abi::TDH_DEVIF_REQUEST,
        SeamRegs {
            rcx: tdi,
            rdx: 0x85,
            r8: PAGES_A.0,
            ..Default::default()
        },
        TDX_DEVIF_TDISP_OUT_REQ | 1,
    );
    let fetch = w.call(
        u64::from(abi::TDH_DEVIF_REQUEST),
        SeamRegs {
            rcx: tdi,
            rdx: abi::REQ_IN_TD_FLAG,
            r8: PAGES_A.0,
            ..Default::default()
        },
    );
    assert_eq!((fetch.rax, fetch.rcx & 0xff), (TDX_SPDM_REQUEST, 0x86));
    let answer = w.doe(&w.request(tdi, fetch.rcx)).unwrap();
    w.write(PAGES_A.1, &answer);
    host_refused(
        "the TD's answer without td_flag",
        abi::TDH_DEVIF_RESPONSE,
        SeamRegs {
            rcx: tdi,
            rdx: abi::devif_rsp_in(PAGES_A.1, false),
            r8: PAGES_A.0,
            ..Default::default()
        },
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 2,
    );
    // A forced unbind abandons the START: the TD reads that once, then may ask again.
    let force = SeamRegs {
        rcx: tdi,
        rdx: abi::UNBIND_FLAG_FORCE,
        ..Default::default()
    };
    let out = w.drained(tdi, || w.call(u64::from(abi::TSM_DEVIF_UNBIND), force));
    assert_eq!(out, TDX_SUCCESS);
    let gone = w.tdcall(td, abi::TDG_DEVIF_RESPONSE, read);
    assert_eq!(gone.rax, TDX_DEVIF_INVALID_STATE | 1);
    assert_eq!(gone.rcx, tdi, "a failed start's read leaves RCX");
    guest_refused(
        "the abandoned START read twice",
        td,
        abi::TDG_DEVIF_RESPONSE,
        read,
        TDX_DEVIF_TDISP_INVALID_REQ_STS | 1,
    );
    // The host sets the stream up again, binds, and the TD starts it.
    let km = w.call(
        u64::from(abi::TDH_IDE_STREAM_KM),
        SeamRegs {
            rcx: dev,
            rdx: dev,
            r8: 0,
            r9: LINK_RESPONSE,
            r10: LINK_REQUEST,
            ..Default::default()
        },
    );
    assert_eq!(km.rax, TDX_SUCCESS);
    assert_eq!(
        w.relayed(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            }
        )
        .rax,
        TDX_SUCCESS
    );
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Run as u64);
}

/// The host's STOP (TDH.DEVIF.REQUEST 0x87) is not held up by the TD's START queued with
/// TDG.DEVIF.REQUEST (the module lets it through while the TD's request is only queued): the
/// unbind drops the START, runs to its end, and the TD then reads the abandoned request as
/// TDX_DEVIF_INVALID_STATE.
#[test]
fn the_hosts_stop_is_not_held_up_by_a_queued_td_start() {
    let mut mem = vec![Page::ZERO; 32];
    let w = World::new(&mut mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi_for(td, dev, rid(3), PAGES_A);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    assert_eq!(w.accept_dma(td, tdi), TDX_SUCCESS);
    let start = SeamRegs {
        rcx: tdi,
        rdx: 0x86,
        ..Default::default()
    };
    assert_eq!(w.tdcall(td, abi::TDG_DEVIF_REQUEST, start).rax, TDX_SUCCESS);
    let stop = SeamRegs {
        rcx: tdi,
        rdx: abi::devif_req_in(0x87, false, false),
        r8: w.pages_of(tdi).0,
        ..Default::default()
    };
    let mut out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
    for _ in 0..100 {
        match out.rax {
            TDX_INTERRUPTED_RESUMABLE => out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop),
            TDX_SPDM_REQUEST => out = w.relay(tdi, out),
            s if s == TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR) => {
                w.entry_iq(tdi);
                out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
            }
            TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => {
                w.process_iq(tdi);
                out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
            }
            _ => break,
        }
    }
    assert_eq!(out.rax, TDX_SUCCESS, "{:#x}", out.rax);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
    let read = SeamRegs {
        rcx: tdi,
        ..Default::default()
    };
    assert_eq!(
        w.tdcall(td, abi::TDG_DEVIF_RESPONSE, read).rax,
        TDX_DEVIF_INVALID_STATE | 1
    );
}

#[path = "common/dmar_add.rs"]
mod dmar_add;
use dmar_add::dmar_add_regs;

#[path = "common/devif_create.rs"]
mod devif_create;
use devif_create::devif_create_regs;

#[path = "common/dmar_state.rs"]
mod dmar_state;
use dmar_state::read_state;

#[path = "dispatcher/dma.rs"]
mod dma;

#[path = "dispatcher/td_inv.rs"]
mod td_inv;

#[path = "dispatcher/review_s22b.rs"]
mod review_s22b;

#[path = "common/sharded.rs"]
mod sharded;

#[path = "dispatcher/dma_shards.rs"]
mod dma_shards;

/// Review s22 F1: a pool sized for the TDI's one leaf, after its unbind, is short for the
/// rebind's map only by the table pages the unbind emptied, which wait for the TD's next
/// TDH.MEM.TRACK: the map says so (TSM_SEPT_POOL_AWAITS_FLUSH, the S-EPT operand), changes
/// nothing, and succeeds after the host's TRACK.
#[test]
fn a_rebind_map_before_the_next_track_is_told_to_track() {
    let pages = Sept::pool_pages_needed(SeptLevels::Four, 1, 1, PageSize::Size2M).unwrap();
    let mut mem = vec![Page::ZERO; pages];
    let (w, td, tdi) = bound_world(&mut mem);
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    let map = SeamRegs {
        rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
        rdx: td,
        r8: BAR,
        ..Default::default()
    };
    refused(
        &w,
        "map before the TRACK",
        || w.call(u64::from(abi::TDH_MMIO_MAP), map).rax,
        TSM_SEPT_POOL_AWAITS_FLUSH | u64::from(OPERAND_ID_SEPT_TREE),
    );
    assert_eq!(
        name(TSM_SEPT_POOL_AWAITS_FLUSH),
        Some("TSM_SEPT_POOL_AWAITS_FLUSH")
    );
    w.ok(
        abi::TDH_MEM_TRACK,
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    w.ok(abi::TDH_MMIO_MAP, map);
    // With nothing waiting a short pool is short: another 2 MiB leaf in a new 1 GiB window.
    refused(
        &w,
        "map past the pool",
        || {
            let far = SeamRegs {
                rcx: page_info(Gpa::try_new(GPA + (1 << 30)).unwrap(), PageSize::Size2M),
                r8: BAR + (2 << 20),
                ..map
            };
            w.call(u64::from(abi::TDH_MMIO_MAP), far).rax
        },
        TSM_SEPT_POOL_EMPTY | u64::from(OPERAND_ID_SEPT_TREE),
    );
}
