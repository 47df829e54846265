//! The TD teardown leaves (`platform_tdx::td`) as Linux's KVM issues them
//! (`tdx_mmu_release_hkid`, `tdx_reclaim_td_control_pages`, torvalds/linux
//! `arch/x86/kvm/vmx/tdx.c` and the wrappers in `arch/x86/virt/vmx/tdx/tdx.c` @a4a508df):
//! the golden register sets, the whole teardown after an unbind, every call out of order
//! refused with the TDX module's status and nothing changed, a TD with a bound TDI refused at
//! VPFLUSHDONE, an HKID reused only after KEY.FREEID, the TDR page reused only after RECLAIM,
//! and RECLAIM / WBINVD of pages that are no TDR.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

#[path = "common/devif_create.rs"]
mod devif_create;

use devif_create::devif_create_regs;
use platform_tdx::TdxModule;
use platform_tdx::abi::{self, Dispatcher, HostBuffer, RangeList, SeamRegs, page_info};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::module::{DevifEntry, MESSAGE_PAGE_BYTES, SpdmEntry, TdEntry};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::*;
use platform_tdx::td::{self, CacheWb, TdLife};
use tsm_core::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS};
use tsm_core::device_model::ModelDevice;
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Gpa, GuestId, MmioRange, ModelSession, PageSize, RequesterId, ReservedMemory, TdiId, TdispState,
};

// ---- the world (tests/operands.rs's, copied so that file stays as it is) --------------------

/// Host memory: page 0 the range list, 1-6 shared request/response pages, 7-10 TDR pages,
/// 11-18 SPDM metadata (one per device, by bus), 19-23 scratch pages for bad parameter pages,
/// then the link's pages: 24 the SPDM config page, 25 dev_info, 26 and 27 the link's response
/// and request pages, 28-35 IDE stream metadata (one per device, by bus), 36-38 the TDI's
/// private pages.
const HOST: u64 = 0x7_0000_0000;
const HOST_PAGES: usize = 39;
const CONFIG_PAGE: u64 = host_page(24);
const DEV_INFO_PAGE: u64 = host_page(25);
const LINK_RESPONSE: u64 = host_page(26);
const LINK_REQUEST: u64 = host_page(27);
const fn ide_page(bus: u8) -> u64 {
    host_page(28 + bus as u64 % 8)
}
const SPDM_FIRST: u64 = 11;
const TDR_FIRST: u64 = 7;
const TDRS: u64 = 4;
const SCRATCH: u64 = 19;
/// Linux passes an HKID the KVM allocator gave it; any private one (not 0) here.
const HKID: u64 = 5;
const PARAMS: u64 = HOST;
const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;
/// A page-aligned host address past the host memory the firmware was given.
const OUTSIDE: u64 = HOST + 0x100_0000;
/// The first address past the 52-bit physical address width.
const PAST_52: u64 = 1 << 52;

const fn host_page(i: u64) -> u64 {
    HOST + i * MESSAGE_PAGE_BYTES as u64
}
const fn spdm_page(bus: u8) -> u64 {
    host_page(SPDM_FIRST + bus as u64 % 8)
}
/// The shared request and response pages the host relays the TDI's messages in.
const PAGES_A: (u64, u64) = (host_page(1), host_page(2));
/// The TDI's private pages (TDH.DEVIF.CREATE R8, R9, R10).
const DEVIF_PAGES: [u64; 3] = [host_page(36), host_page(37), host_page(38)];

/// Everything a refusal must leave alone.
#[derive(PartialEq)]
struct Image {
    core: Snapshot<(Vec<Page>, SeptBookkeeping)>,
    device: Vec<(u32, TdispState)>,
    pages: Vec<Option<DevifEntry>>,
    host: Vec<u8>,
    spdm: Vec<Option<SpdmEntry>>,
    tds: Vec<Option<TdEntry>>,
    cache_wb: CacheWb,
}

struct World<'m> {
    fw: TdxModule<'m, ModelSession>,
    mem: RefCell<Vec<u8>>,
    device: RefCell<ModelDevice>,
    pages: RefCell<BTreeMap<u64, (u64, u64)>>,
    tds: Cell<u64>,
}

impl<'m> World<'m> {
    fn new(mem: &'m mut [Page]) -> Self {
        let pool = FramePool::new(mem, 0x20_0000_0000).unwrap();
        World {
            // Host memory is reserved at init, as the C entry point does: never MMIO.
            fw: TdxModule::with_reserved(
                Sept::new(pool, SeptLevels::Four),
                ModelSession::model(),
                ReservedMemory::from_ranges(&[
                    MmioRange::from_raw(HOST, HOST_PAGES as u64).unwrap()
                ])
                .unwrap(),
            ),
            mem: RefCell::new(vec![0; HOST_PAGES * MESSAGE_PAGE_BYTES]),
            device: RefCell::new(ModelDevice::model()),
            pages: RefCell::new(BTreeMap::new()),
            tds: Cell::new(0),
        }
    }

    /// A SEAMCALL; a leaf that may leave a request and names a TDI this host relays for gets
    /// the TDI's shared request page in R8 when R8 is 0.
    fn call(&self, rax: u64, mut regs: SeamRegs) -> SeamRegs {
        let relays = [
            abi::TSM_DEVIF_BIND,
            abi::TSM_DEVIF_CHECK,
            abi::TDH_DEVIF_REQUEST,
        ]
        .map(u64::from)
        .contains(&rax)
            || (rax == u64::from(abi::TSM_DEVIF_UNBIND) && regs.rdx == 0);
        if relays
            && regs.r8 == 0
            && let Some(pages) = self.pages.borrow().get(&regs.rcx)
        {
            regs.r8 = pages.0;
        }
        regs.rax = rax;
        let mut mem = self.mem.borrow_mut();
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut mem)).seamcall(&mut regs);
        regs
    }

    fn tdcall(&self, td: u64, rax: u64, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = rax;
        let mut mem = self.mem.borrow_mut();
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut mem)).tdcall(td, &mut regs);
        regs
    }

    fn ok(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(u64::from(leaf), regs);
        assert_eq!(out.rax, TDX_SUCCESS, "leaf {leaf:#x}: {:#x}", out.rax);
        out
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        let off = (at - HOST) as usize;
        self.mem.borrow_mut()[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let off = (at - HOST) as usize;
        self.mem.borrow()[off..off + len].to_vec()
    }

    /// TDH.MNG.CREATE with the next TDR page (Linux's `tdh_mng_create(td, hkid)`).
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

    /// TDH.SPDM.CREATE of the device on bus `bus` with one metadata page (Linux's
    /// `tdh_spdm_create`): the SPDM id, without BARs yet.
    fn spdm(&self, bus: u8) -> u64 {
        self.ok(
            abi::TDH_SPDM_CREATE,
            SeamRegs {
                rcx: abi::function_id(rid(bus)),
                rdx: abi::hpa_array(spdm_page(bus), 1),
                ..Default::default()
            },
        )
        .rcx
    }

    /// A device on bus `bus` with one 4 MiB BAR at `bar` that its interface reports, its
    /// link up as Linux's `tdx_link_connect` sets it up: SPDM CONNECT relayed, the IDE stream
    /// created, its keys set up (KM SETUP).
    fn device(&self, bus: u8, bar: u64) -> u64 {
        let dev = self.device_connected(bus, bar);
        let stream = self.ok(abi::TDH_IDE_STREAM_CREATE, create(dev, bus)).rcx;
        self.ok(abi::TDH_IDE_STREAM_KM, km(dev, stream, 0));
        dev
    }

    /// `device_unlinked`, then TDH.SPDM.CONNECT relayed to its end (no stream yet).
    fn device_connected(&self, bus: u8, bar: u64) -> u64 {
        let dev = self.device_unlinked(bus, bar);
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
        config[5] = 0xFF;
        self.write(CONFIG_PAGE, &config);
        let connect = connect(dev);
        let mut out = self.call(u64::from(abi::TDH_SPDM_CONNECT), connect);
        while out.rax == TDX_SPDM_REQUEST {
            let request = self.read(LINK_REQUEST, out.rcx as usize);
            let mut answer = [0u8; MESSAGE_PAGE_BYTES];
            let n = self
                .device
                .borrow_mut()
                .answer(&request, &mut answer)
                .unwrap();
            self.write(LINK_RESPONSE, &answer[..n]);
            out = self.call(u64::from(abi::TDH_SPDM_CONNECT), connect);
        }
        assert_eq!(out.rax, TDX_SUCCESS);
        dev
    }

    /// A device on bus `bus` with one 4 MiB BAR at `bar` that its interface reports, with no
    /// link (not connected, no IDE stream: its TDIs cannot bind).
    fn device_unlinked(&self, bus: u8, bar: u64) -> u64 {
        let dev = self.spdm(bus);
        self.write(PARAMS, bars(bar).bytes());
        self.ok(
            abi::TSM_SPDM_BARS,
            SeamRegs {
                rcx: dev,
                rdx: PARAMS,
                ..Default::default()
            },
        );
        self.write(PARAMS, RangeList::default().bytes());
        self.device
            .borrow_mut()
            .report_ranges(rid(bus), &[MmioRange::from_raw(bar, 1024).unwrap()]);
        dev
    }

    /// TDH.DEVIF.CREATE of `iface` on SPDM id `dev`'s stream (ours: stream ID == SPDM id)
    /// for the first TD (0 when there is none), relaying through `pages`: the TDI, named by
    /// its function ID.
    fn create_tdi(&self, dev: u64, iface: RequesterId, pages: (u64, u64)) -> u64 {
        let first = host_page(TDR_FIRST);
        let td = if self.fw.td_of(first).unwrap().is_some() {
            first
        } else {
            0
        };
        let function = abi::function_id(iface);
        self.ok(
            abi::TDH_DEVIF_CREATE,
            devif_create_regs(dev, iface, td, DEVIF_PAGES),
        );
        self.pages.borrow_mut().insert(function, pages);
        function
    }

    /// The device's answer to the request `tdi`'s leaf left (RCX `devif_req_out_t`), written
    /// to its response page: the answer's length.
    fn answer_into_response_page(&self, tdi: u64, out: u64) -> Option<u64> {
        let (req, resp) = self.pages.borrow()[&tdi];
        let len = (out >> 8) & 0xffff;
        let request = self.read(req, len as usize);
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let n = self.device.borrow_mut().answer(&request, &mut answer)?;
        self.write(resp, &answer[..n]);
        Some(n as u64)
    }

    /// The host's relay loop (Linux `tdx_link_event_handler`, TDH.DEVIF.RESPONSE to reissue).
    fn relay(&self, tdi: u64, mut out: SeamRegs) -> SeamRegs {
        for _ in 0..100 {
            if out.rax != TDX_SPDM_REQUEST {
                return out;
            }
            let n = self.answer_into_response_page(tdi, out.rcx);
            let (req, resp) = self.pages.borrow()[&tdi];
            out = self.call(
                u64::from(abi::TDH_DEVIF_RESPONSE),
                SeamRegs {
                    rcx: tdi,
                    rdx: abi::devif_rsp_in(n.map_or(0, |_| resp), false),
                    r8: req,
                    ..Default::default()
                },
            );
        }
        panic!("a relay that never ends");
    }

    fn relayed(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(u64::from(leaf), regs);
        self.relay(regs.rcx, out)
    }

    fn image(&self) -> Image {
        Image {
            core: self
                .fw
                .snapshot_with(|t| (t.pool().pages().copied().collect(), t.bookkeeping()))
                .unwrap(),
            device: self.device.borrow().dsm().tdisp_states().to_vec(),
            pages: (0..MAX_TDIS as u16)
                .map(|s| self.fw.devif(TdiId::from_slot(s)).unwrap())
                .collect(),
            host: self.mem.borrow().clone(),
            spdm: (0..MAX_DEVICES as u64)
                .map(|id| self.fw.spdm(id).unwrap())
                .collect(),
            tds: (0..MAX_GUESTS as u16)
                .map(|s| self.fw.tdr_of(GuestId::from_slot(s)).unwrap())
                .collect(),
            cache_wb: self.fw.cache_wb().unwrap(),
        }
    }
}

fn rid(bus: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, 0).unwrap()
}

fn bars(bar: u64) -> RangeList {
    RangeList::from_ranges(&[MmioRange::from_raw(bar, 1024).unwrap()]).unwrap()
}

/// TDH.SPDM.CONNECT as Linux's `tdh_exec_spdm_connect` loads it, with the link's pages.
fn connect(dev: u64) -> SeamRegs {
    SeamRegs {
        rcx: dev,
        rdx: CONFIG_PAGE,
        r8: LINK_RESPONSE,
        r9: LINK_REQUEST,
        r10: abi::hpa_array(DEV_INFO_PAGE, 1),
        ..Default::default()
    }
}

/// TDH.IDE.STREAM.CREATE as Linux's `tdh_ide_stream_create` loads it for the endpoint on bus
/// `bus` alone and an address window of 4 GiB at 0.
fn create(dev: u64, bus: u8) -> SeamRegs {
    let routing = u64::from(bus) << 8;
    SeamRegs {
        rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
        rdx: dev,
        r8: abi::hpa_array(ide_page(bus), 1),
        r9: 0,
        r10: routing << 8,
        r11: 1 | routing << 8,
        r12: 1 | 0xfff << 20,
        r13: 0,
        r14: 0,
        ..Default::default()
    }
}

/// TDH.IDE.STREAM.KM `op` as Linux's `tdh_ide_stream_km` loads it, with the link's pages.
fn km(dev: u64, stream: u64, op: u64) -> SeamRegs {
    SeamRegs {
        rcx: dev,
        rdx: stream,
        r8: op,
        r9: LINK_RESPONSE,
        r10: LINK_REQUEST,
        ..Default::default()
    }
}

fn on(rcx: u64) -> SeamRegs {
    SeamRegs {
        rcx,
        ..Default::default()
    }
}

// ---- teardown helpers -----------------------------------------------------------------------

/// Linux's global KeyID for `tdh_phymem_page_wbinvd_tdr` (any KeyID the field can hold).
const GLOBAL_KEYID: u64 = 1;

/// `page | keyid << x86_phys_bits`, as Linux's `mk_keyed_paddr`.
fn keyed(page: u64, keyid: u64) -> u64 {
    page | keyid << td::KEYID_SHIFT
}

impl World<'_> {
    /// The TD at `tdr`'s teardown state.
    fn life(&self, tdr: u64) -> Option<TdLife> {
        let g = self.fw.td_of(tdr).unwrap()?;
        Some(self.fw.tdr_of(g).unwrap().unwrap().life)
    }

    /// `leaf` refused with `status`: RAX only written, nothing changed.
    fn refused(&self, what: &str, leaf: u16, regs: SeamRegs, status: u64) {
        let before = self.image();
        let out = self.call(u64::from(leaf), regs);
        assert_eq!(out.rax, status, "{what}: {:#x}", out.rax);
        assert_eq!(
            SeamRegs { rax: 0, ..out },
            SeamRegs { rax: 0, ..regs },
            "{what}: regs"
        );
        assert!(self.image() == before, "{what}: state changed");
    }

    /// Linux's `smp_func_do_phymem_cache_wb`: START, then RESUME while INTERRUPTED_RESUMABLE.
    fn cache_wb(&self) -> Vec<u64> {
        let mut statuses = Vec::new();
        let mut cmd = td::CACHE_WB_START;
        loop {
            let out = self.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(cmd));
            statuses.push(out.rax);
            if out.rax != TDX_INTERRUPTED_RESUMABLE {
                return statuses;
            }
            cmd = td::CACHE_WB_RESUME;
        }
    }

    /// KVM's `tdx_mmu_release_hkid` then `tdx_reclaim_td_control_pages` for the TD at `tdr`.
    /// Hands each TDI still created for the TD at `tdr` to no TD (TSM.DEVIF.SET_TD RDX 0):
    /// RECLAIM refuses a TDR a TDI is for.
    fn detach(&self, tdr: u64) {
        for slot in 0..tsm_core::capacity::MAX_TDIS as u16 {
            let Ok(Some(entry)) = self.fw.devif(tsm_core::TdiId::from_slot(slot)) else {
                continue;
            };
            if entry.tdr.map(|t| t.as_u64()) == Some(tdr) {
                self.ok(abi::TSM_DEVIF_SET_TD, on(u64::from(entry.function)));
            }
        }
    }

    /// Each TDI still created for it is first handed to no TD (TSM.DEVIF.SET_TD RDX 0).
    fn tear_down(&self, tdr: u64) {
        self.ok(abi::TDH_MNG_VPFLUSHDONE, on(tdr));
        assert_eq!(self.cache_wb().last(), Some(&TDX_SUCCESS));
        self.ok(abi::TDH_MNG_KEY_FREEID, on(tdr));
        self.detach(tdr);
        self.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(tdr));
        self.ok(abi::TDH_PHYMEM_PAGE_WBINVD, on(keyed(tdr, GLOBAL_KEYID)));
    }

    /// Binds `tdi` to `td`: the TDI handed to `td` first (TSM.DEVIF.SET_TD) when it is for
    /// another TD.
    fn bind(&self, tdi: u64, td: u64) {
        let (_, entry) = self.fw.devif_of(tdi as u32).unwrap().unwrap();
        if entry.tdr.map(|t| t.as_u64()) != Some(td) {
            self.ok(
                abi::TSM_DEVIF_SET_TD,
                SeamRegs {
                    rcx: tdi,
                    rdx: td,
                    ..Default::default()
                },
            );
        }
        let out = self.relayed(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            },
        );
        assert_eq!(out.rax, TDX_SUCCESS);
    }

    fn map(&self, td: u64) {
        self.ok(
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
                rdx: td,
                r8: BAR,
                ..Default::default()
            },
        );
    }

    /// TDH.MNG.CREATE of `tdr` with `hkid`: the status.
    fn create_at(&self, tdr: u64, hkid: u64) -> u64 {
        self.call(
            u64::from(abi::TDH_MNG_CREATE),
            SeamRegs {
                rcx: tdr,
                rdx: hkid,
                ..Default::default()
            },
        )
        .rax
    }
}

/// A TD, a device on bus 3 with its link up, its TDI (PAGES_A) unbound.
fn tdi_world(w: &World<'_>) -> (u64, u64, u64) {
    let td = w.create_td();
    let dev = w.device(3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    (td, dev, tdi)
}

fn frames() -> Vec<Page> {
    vec![Page::ZERO; 32]
}

// ---- tests ----------------------------------------------------------------------------------

/// Every teardown leaf with the registers Linux's wrapper loads (tdx.c @a4a508df: a
/// zero-initialised `struct tdx_module_args` with RCX set) and what it reads back: RECLAIM's
/// RCX/RDX/R8 are the page type, owner and size (`tdh_phymem_page_reclaim(page, &pt, &owner,
/// &size)`); every other register comes back as it went in.
#[test]
fn golden_register_sets_as_linux_fills_them() {
    let mut f = frames();
    let w = World::new(&mut f);
    let tdr = w.create_td();
    let golden = |leaf: u16, rcx: u64, expect: u64| {
        let regs = SeamRegs {
            rax: u64::from(leaf),
            rcx,
            ..Default::default()
        };
        let out = w.call(u64::from(leaf), regs);
        assert_eq!(out.rax, expect, "leaf {leaf}: {:#x}", out.rax);
        out
    };
    // tdh_mng_vpflushdone(td): RAX 19, RCX the TDR PA.
    let out = golden(19, tdr, TDX_SUCCESS);
    assert_eq!(
        SeamRegs { rax: 19, ..out },
        SeamRegs {
            rax: 19,
            rcx: tdr,
            ..Default::default()
        }
    );
    assert_eq!(
        w.life(tdr),
        Some(TdLife::Blocked {
            written_back: false
        })
    );
    // tdh_phymem_cache_wb(false), then (true) while TDX_INTERRUPTED_RESUMABLE.
    let out = golden(40, 0, TDX_INTERRUPTED_RESUMABLE);
    assert_eq!(out.rcx, 0);
    let out = golden(40, 1, TDX_SUCCESS);
    assert_eq!(out.rcx, 1);
    assert_eq!(w.life(tdr), Some(TdLife::Blocked { written_back: true }));
    assert_eq!(w.fw.cache_wb().unwrap(), CacheWb::new());
    // tdh_mng_key_freeid(td): RAX 20, RCX the TDR PA.
    golden(20, tdr, TDX_SUCCESS);
    assert_eq!(w.life(tdr), Some(TdLife::Teardown));
    // tdh_phymem_page_reclaim(tdr_page, &pt, &owner, &size): RAX 28, RCX the page.
    let out = golden(28, tdr, TDX_SUCCESS);
    assert_eq!(
        (out.rcx, out.rdx, out.r8),
        (td::PT_TDR, td::TDR_OWNER, td::PAGE_SIZE_4K)
    );
    assert_eq!((out.r9, out.r10, out.r11), (0, 0, 0));
    assert_eq!(w.fw.td_of(tdr).unwrap(), None);
    // tdh_phymem_page_wbinvd_tdr(td): RAX 41, RCX mk_keyed_paddr(tdx_global_keyid, tdr).
    let rcx = keyed(tdr, GLOBAL_KEYID);
    let out = golden(41, rcx, TDX_SUCCESS);
    assert_eq!(out.rcx, rcx);
    // KVM's NO_HKID_READY_TO_WBCACHE case: a CACHE.WB with no TD flushed is a warning.
    let out = golden(40, 0, TDX_NO_HKID_READY_TO_WBCACHE);
    assert!(is_success(out.rax));
}

/// Linux's order: the TDI unbound first (VFIO's close path), then the TD torn down. A TD
/// with a TDI still bound (with private MMIO mapped) or being unbound is refused at
/// VPFLUSHDONE with TDX_TD_HAS_ATTACHED_DEVICES and nothing changes; after unbind the whole teardown runs and
/// the TDR names no TD, while the device and its TDI are untouched.
#[test]
fn whole_teardown_after_an_unbind() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, dev, tdi) = tdi_world(&w);
    let free = || {
        w.fw.with_table(|t| (t.pool().free_frames(), t.pool().total_frames()))
            .unwrap()
    };
    let all = free();
    w.bind(tdi, td);
    w.map(td);
    w.refused(
        "VPFLUSHDONE, TDI bound and mapped",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        TDX_TD_HAS_ATTACHED_DEVICES,
    );
    assert_eq!(w.life(td), Some(TdLife::HkidAssigned));
    // The later leaves are refused in their own words, too.
    w.refused(
        "FREEID before VPFLUSHDONE",
        abi::TDH_MNG_KEY_FREEID,
        on(td),
        TDX_LIFECYCLE_STATE_INCORRECT,
    );
    w.refused(
        "RECLAIM before FREEID",
        abi::TDH_PHYMEM_PAGE_RECLAIM,
        on(td),
        TDX_LIFECYCLE_STATE_INCORRECT,
    );
    // Unbinding (its leaf blocked, STOP_INTERFACE out to the device): still attached.
    let out = w.call(u64::from(abi::TSM_DEVIF_UNBIND), on(tdi));
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    w.refused(
        "VPFLUSHDONE, TDI unbinding",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        TDX_TD_HAS_ATTACHED_DEVICES,
    );
    assert_eq!(w.relay(tdi, out).rax, TDX_SUCCESS);
    // The S-EPT pages the unbind emptied (the PDPT and PD above the 2 MiB leaf; the root
    // stays the TD's) wait for a TRACK the host never makes here.
    let g = w.fw.td_of(td).unwrap().unwrap();
    assert_eq!(w.fw.with_table(|t| t.retired_pages(g)).unwrap(), 2);
    assert_eq!(free().0 + 2 + 1, all.0, "retired, and the root");
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(td));
    assert_eq!(w.cache_wb().last(), Some(&TDX_SUCCESS));
    w.ok(abi::TDH_MNG_KEY_FREEID, on(td));
    // The TDI is still for this TD (the module's TDR child count): its TDR stays.
    w.refused(
        "RECLAIM with a TDI created for the TD",
        abi::TDH_PHYMEM_PAGE_RECLAIM,
        on(td),
        platform_tdx::status::TDX_TD_ASSOCIATED_PAGES_EXIST | 1,
    );
    // Handed to no TD (TSM.DEVIF.SET_TD RDX 0), the TDR is reclaimed.
    w.ok(abi::TSM_DEVIF_SET_TD, on(tdi));
    w.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(td));
    // The TD gone, no walker of its S-EPT is left: its retired pages are free.
    assert_eq!(free(), all, "every table page back at RECLAIM");
    w.ok(abi::TDH_PHYMEM_PAGE_WBINVD, on(keyed(td, GLOBAL_KEYID)));
    assert_eq!(w.fw.td_of(td).unwrap(), None);
    assert!(w.fw.spdm(dev).unwrap().is_some());
    assert!(w.fw.devif_of(tdi as u32).unwrap().is_some());
    // The TDI binds to a new TD.
    let td2 = w.create_td();
    w.bind(tdi, td2);
}

/// Every teardown leaf called out of order, at every stage, answers the TDX module's status
/// and changes nothing (registers, firmware tables, TD table, CACHE.WB progress, host
/// memory); so do the leaves that name a TD once it is past VPFLUSHDONE.
#[test]
fn every_out_of_order_call_is_refused_and_changes_nothing() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, _, tdi) = tdi_world(&w);
    let lsi = TDX_LIFECYCLE_STATE_INCORRECT;
    // Created.
    w.refused("FREEID, created", abi::TDH_MNG_KEY_FREEID, on(td), lsi);
    w.refused(
        "RECLAIM, created",
        abi::TDH_PHYMEM_PAGE_RECLAIM,
        on(td),
        lsi,
    );
    w.refused(
        "CACHE.WB resume, none started",
        abi::TDH_PHYMEM_CACHE_WB,
        on(1),
        TDX_WBCACHE_RESUME_ERROR,
    );
    w.refused(
        "CACHE.WB start, no TD flushed",
        abi::TDH_PHYMEM_CACHE_WB,
        on(0),
        TDX_NO_HKID_READY_TO_WBCACHE,
    );
    // Blocked, not written back.
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(td));
    w.refused("VPFLUSHDONE twice", abi::TDH_MNG_VPFLUSHDONE, on(td), lsi);
    w.refused(
        "FREEID before CACHE.WB",
        abi::TDH_MNG_KEY_FREEID,
        on(td),
        TDX_WBCACHE_NOT_COMPLETE,
    );
    w.refused(
        "RECLAIM, blocked",
        abi::TDH_PHYMEM_PAGE_RECLAIM,
        on(td),
        lsi,
    );
    w.refused(
        "CACHE.WB resume, none started",
        abi::TDH_PHYMEM_CACHE_WB,
        on(1),
        TDX_WBCACHE_RESUME_ERROR,
    );
    let gone = TDX_TD_KEYS_NOT_CONFIGURED;
    w.refused(
        "bind to a blocked TD",
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            r8: PAGES_A.0,
            ..Default::default()
        },
        gone,
    );
    let page = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    w.refused(
        "MAP into a blocked TD",
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page,
            rdx: td,
            r8: BAR,
            ..Default::default()
        },
        gone,
    );
    w.refused("TRACK of a blocked TD", abi::TDH_MEM_TRACK, on(td), gone);
    w.refused(
        "SEPT.RD of a blocked TD",
        abi::TDH_MEM_SEPT_RD,
        SeamRegs {
            rcx: page,
            rdx: td,
            ..Default::default()
        },
        gone,
    );
    let before = w.image();
    let out = w.tdcall(
        td,
        u64::from(abi::TDG_MMIO_ACCEPT),
        SeamRegs {
            rcx: page,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, gone);
    assert!(w.image() == before, "a blocked TD's TDCALL changed state");
    // A write-back interrupted: still not complete.
    let out = w.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(0));
    assert_eq!(out.rax, TDX_INTERRUPTED_RESUMABLE);
    w.refused(
        "FREEID, CACHE.WB interrupted",
        abi::TDH_MNG_KEY_FREEID,
        on(td),
        TDX_WBCACHE_NOT_COMPLETE,
    );
    w.refused(
        "CACHE.WB command 2",
        abi::TDH_PHYMEM_CACHE_WB,
        on(2),
        TDX_OPERAND_INVALID | 1,
    );
    w.ok(abi::TDH_PHYMEM_CACHE_WB, on(1));
    // Written back.
    w.refused(
        "VPFLUSHDONE, written back",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        lsi,
    );
    w.refused(
        "RECLAIM, written back",
        abi::TDH_PHYMEM_PAGE_RECLAIM,
        on(td),
        lsi,
    );
    w.refused(
        "CACHE.WB resume after the end",
        abi::TDH_PHYMEM_CACHE_WB,
        on(1),
        TDX_WBCACHE_RESUME_ERROR,
    );
    // Teardown.
    w.ok(abi::TDH_MNG_KEY_FREEID, on(td));
    w.refused("FREEID twice", abi::TDH_MNG_KEY_FREEID, on(td), lsi);
    w.refused(
        "VPFLUSHDONE, teardown",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        lsi,
    );
    w.refused("TRACK, teardown", abi::TDH_MEM_TRACK, on(td), gone);
    w.refused(
        "WBINVD of the TDR before RECLAIM",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(keyed(td, GLOBAL_KEYID)),
        TDX_PAGE_METADATA_INCORRECT | 1,
    );
    w.detach(td);
    w.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(td));
    // Reclaimed: the TDR is a page like any other.
    let pmi = TDX_PAGE_METADATA_INCORRECT | 1;
    w.refused("RECLAIM twice", abi::TDH_PHYMEM_PAGE_RECLAIM, on(td), pmi);
    w.refused(
        "FREEID, reclaimed",
        abi::TDH_MNG_KEY_FREEID,
        on(td),
        TDX_OPERAND_INVALID | 1,
    );
    w.refused(
        "VPFLUSHDONE, reclaimed",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        TDX_OPERAND_INVALID | 1,
    );
    w.refused(
        "TRACK, reclaimed",
        abi::TDH_MEM_TRACK,
        on(td),
        TDX_OPERAND_INVALID | 1,
    );
}

/// A write-back only covers the TDs flushed when it started: a TD that VPFLUSHDONE'd while
/// one was interrupted needs another (KEY.FREEID: TDX_WBCACHE_NOT_COMPLETE), as the module's
/// START snapshot of KOT entries in HKID_FLUSHED.
#[test]
fn a_write_back_covers_only_the_tds_flushed_before_it_started() {
    let mut f = frames();
    let w = World::new(&mut f);
    let a = w.create_td();
    let b = w.create_td();
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(a));
    assert_eq!(
        w.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(0)).rax,
        TDX_INTERRUPTED_RESUMABLE
    );
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(b));
    w.ok(abi::TDH_PHYMEM_CACHE_WB, on(1));
    w.ok(abi::TDH_MNG_KEY_FREEID, on(a));
    w.refused(
        "FREEID of a TD flushed after the START",
        abi::TDH_MNG_KEY_FREEID,
        on(b),
        TDX_WBCACHE_NOT_COMPLETE,
    );
    assert_eq!(w.cache_wb(), vec![TDX_INTERRUPTED_RESUMABLE, TDX_SUCCESS]);
    w.ok(abi::TDH_MNG_KEY_FREEID, on(b));
}

/// TDH.MNG.CREATE refuses an HKID a TD holds until that TD's KEY.FREEID (TDX_HKID_NOT_FREE,
/// the module's KOT entry not HKID_FREE) and one outside the private range (OPERAND_INVALID +
/// RDX); after FREEID the HKID is free even though the old TDR is not reclaimed yet.
#[test]
fn an_hkid_is_reused_only_after_key_freeid() {
    let mut f = frames();
    let w = World::new(&mut f);
    let a = w.create_td();
    let hkid = HKID;
    let other = host_page(TDR_FIRST + 1);
    let refuse_hkid = |what: &str| {
        let regs = SeamRegs {
            rcx: other,
            rdx: hkid,
            ..Default::default()
        };
        w.refused(what, abi::TDH_MNG_CREATE, regs, TDX_HKID_NOT_FREE);
    };
    refuse_hkid("created");
    for bad in [0, u64::from(td::PRIVATE_HKID_MAX) + 1, 0xffff] {
        let regs = SeamRegs {
            rcx: other,
            rdx: bad,
            ..Default::default()
        };
        w.refused(
            "HKID outside the private range",
            abi::TDH_MNG_CREATE,
            regs,
            TDX_OPERAND_INVALID | 2,
        );
    }
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(a));
    refuse_hkid("blocked");
    assert_eq!(
        w.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(0)).rax,
        TDX_INTERRUPTED_RESUMABLE
    );
    refuse_hkid("write-back interrupted");
    w.ok(abi::TDH_PHYMEM_CACHE_WB, on(1));
    refuse_hkid("written back");
    w.ok(abi::TDH_MNG_KEY_FREEID, on(a));
    assert_eq!(w.create_at(other, hkid), TDX_SUCCESS);
    // The old TD still reclaims; the new one holds the HKID now.
    w.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(a));
    assert_eq!(
        w.create_at(host_page(TDR_FIRST + 2), hkid),
        TDX_HKID_NOT_FREE
    );
}

/// The TDR page is the firmware's until RECLAIM (TDH.MNG.CREATE on it:
/// PAGE_METADATA_INCORRECT + RCX, even after FREEID); afterwards a new TD may take it, and the
/// new TD works (bind, map).
#[test]
fn the_tdr_page_is_reusable_after_reclaim() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, _, tdi) = tdi_world(&w);
    let pmi = TDX_PAGE_METADATA_INCORRECT | 1;
    let again = SeamRegs {
        rcx: td,
        rdx: HKID + 1,
        ..Default::default()
    };
    w.refused("CREATE on a live TDR", abi::TDH_MNG_CREATE, again, pmi);
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(td));
    w.cache_wb();
    w.ok(abi::TDH_MNG_KEY_FREEID, on(td));
    w.refused(
        "CREATE on a TDR not reclaimed",
        abi::TDH_MNG_CREATE,
        again,
        pmi,
    );
    w.detach(td);
    w.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(td));
    w.ok(abi::TDH_PHYMEM_PAGE_WBINVD, on(keyed(td, GLOBAL_KEYID)));
    // The same page, and the same HKID (freed), make a new TD.
    assert_eq!(w.create_at(td, HKID), TDX_SUCCESS);
    assert_eq!(w.life(td), Some(TdLife::HkidAssigned));
    w.bind(tdi, td);
    w.map(td);
}

/// RECLAIM of a page that is no TDR: a free host page, a TDI's private pages, SPDM and IDE
/// metadata in use: PAGE_METADATA_INCORRECT + RCX (the module's PT_NDA and TDX Connect
/// metadata types), registers and state untouched. Malformed addresses: OPERAND_INVALID
/// (unaligned, KeyID bits, past 2^52) or ADDR_RANGE_ERROR (outside host memory), + RCX.
#[test]
fn reclaim_of_a_page_that_is_no_tdr_is_refused() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, _, _) = tdi_world(&w);
    let pmi = TDX_PAGE_METADATA_INCORRECT | 1;
    for (what, page, status) in [
        ("a free host page", host_page(SCRATCH), pmi),
        ("a TDI's DEVIFCS page", DEVIF_PAGES[0], pmi),
        ("a TDI's VMM buffer", DEVIF_PAGES[2], pmi),
        ("a shared request page", PAGES_A.0, pmi),
        ("SPDM metadata in use", spdm_page(3), pmi),
        ("IDE metadata in use", ide_page(3), pmi),
        ("the link's request page", LINK_REQUEST, pmi),
        ("the TDR + 8", td + 8, TDX_OPERAND_INVALID | 1),
        (
            "the TDR with KeyID bits",
            keyed(td, 1),
            TDX_OPERAND_INVALID | 1,
        ),
        ("past 2^52", td | PAST_52, TDX_OPERAND_INVALID | 1),
        (
            "outside host memory",
            OUTSIDE,
            TDX_OPERAND_ADDR_RANGE_ERROR | 1,
        ),
    ] {
        w.refused(what, abi::TDH_PHYMEM_PAGE_RECLAIM, on(page), status);
    }
}

/// TDH.PHYMEM.PAGE.WBINVD as Linux issues it after TDH.SPDM.DELETE released a metadata page
/// (global KeyID) and after RECLAIM of the TDR: accepted, a no-op. A page the firmware still
/// holds (SPDM or IDE metadata in use, a TDR) is refused PAGE_METADATA_INCORRECT + RCX; a
/// message page (the host's, shared) is accepted; so are the IDE stream's pages after
/// TDH.IDE.STREAM.DELETE released them.
#[test]
fn wbinvd_of_released_pages_and_refused_for_pages_in_use() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, dev, tdi) = tdi_world(&w);
    let dev4 = w.device_unlinked(4, BAR + 0x100_0000);
    let pmi = TDX_PAGE_METADATA_INCORRECT | 1;
    w.refused(
        "SPDM metadata in use",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(keyed(spdm_page(4), GLOBAL_KEYID)),
        pmi,
    );
    w.refused(
        "IDE metadata in use",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(keyed(ide_page(3), GLOBAL_KEYID)),
        pmi,
    );
    w.refused(
        "a live TDR",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(keyed(td, HKID)),
        pmi,
    );
    w.refused(
        "unaligned",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(keyed(td + 0x40, HKID)),
        TDX_OPERAND_INVALID | 1,
    );
    w.refused(
        "past 2^52",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(td | PAST_52),
        TDX_OPERAND_INVALID | 1,
    );
    w.refused(
        "outside host memory",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        on(OUTSIDE),
        TDX_OPERAND_ADDR_RANGE_ERROR | 1,
    );
    // Linux's tdx_page_array_ctrl_release after TDH.SPDM.DELETE: WBINVD of every page.
    let out = w.ok(abi::TDH_SPDM_DELETE, on(dev4));
    assert_eq!(out.rcx, abi::hpa_array(spdm_page(4), 1));
    let before = w.image();
    for key in [0, GLOBAL_KEYID, td::KEYID_MASK >> td::KEYID_SHIFT] {
        let regs = on(keyed(spdm_page(4), key));
        let out = w.ok(abi::TDH_PHYMEM_PAGE_WBINVD, regs);
        assert_eq!(out, SeamRegs { rax: 0, ..regs });
    }
    w.ok(abi::TDH_PHYMEM_PAGE_WBINVD, on(PAGES_A.0));
    assert!(w.image() == before, "WBINVD changed state");
    // Linux's tdx_link_disconnect: KM STOP, BLOCK, DELETE of the stream (its TDI removed
    // first), then WBINVD of the released stream metadata.
    w.ok(abi::TDH_DEVIF_REMOVE, on(tdi));
    let stream = dev;
    w.ok(abi::TDH_IDE_STREAM_KM, km(dev, stream, 2));
    w.ok(
        abi::TDH_IDE_STREAM_BLOCK,
        SeamRegs {
            rcx: dev,
            rdx: stream,
            ..Default::default()
        },
    );
    let ide = on(keyed(ide_page(3), GLOBAL_KEYID));
    w.refused(
        "IDE metadata of a blocked stream",
        abi::TDH_PHYMEM_PAGE_WBINVD,
        ide,
        pmi,
    );
    let out = w.ok(
        abi::TDH_IDE_STREAM_DELETE,
        SeamRegs {
            rcx: dev,
            rdx: stream,
            ..Default::default()
        },
    );
    assert_eq!(out.rcx, abi::hpa_array(ide_page(3), 1));
    w.ok(abi::TDH_PHYMEM_PAGE_WBINVD, ide);
    w.tear_down(td);
}

/// A bind still waiting on the device keeps the TD from VPFLUSHDONE (it would otherwise bind
/// to a TD whose HKID is about to be freed): TDX_TD_HAS_ATTACHED_DEVICES, nothing changed;
/// once the bind is abandoned (unbind) the teardown goes on.
#[test]
fn a_bind_in_flight_keeps_the_td_from_vpflushdone() {
    let mut f = frames();
    let w = World::new(&mut f);
    let (td, _, tdi) = tdi_world(&w);
    let out = w.call(
        u64::from(abi::TSM_DEVIF_BIND),
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    w.refused(
        "VPFLUSHDONE, a bind waiting",
        abi::TDH_MNG_VPFLUSHDONE,
        on(td),
        TDX_TD_HAS_ATTACHED_DEVICES,
    );
    assert_eq!(w.life(td), Some(TdLife::HkidAssigned));
}

/// A write-back interrupted before a TD was reclaimed does not count for a TD made later in
/// the same slot and flushed after the write-back started: its FREEID still needs one.
#[test]
fn an_interrupted_write_back_does_not_cover_a_td_made_in_a_reclaimed_slot() {
    let mut f = frames();
    let w = World::new(&mut f);
    let a = w.create_td();
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(a));
    assert_eq!(w.cache_wb().last(), Some(&TDX_SUCCESS));
    let start = w.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(td::CACHE_WB_START));
    assert_eq!(start.rax, TDX_INTERRUPTED_RESUMABLE);
    w.ok(abi::TDH_MNG_KEY_FREEID, on(a));
    w.ok(abi::TDH_PHYMEM_PAGE_RECLAIM, on(a));
    let c = w.create_td();
    w.ok(abi::TDH_MNG_VPFLUSHDONE, on(c));
    let resume = w.call(u64::from(abi::TDH_PHYMEM_CACHE_WB), on(td::CACHE_WB_RESUME));
    assert_eq!(resume.rax, TDX_SUCCESS);
    w.refused(
        "FREEID of a TD the write-back did not cover",
        abi::TDH_MNG_KEY_FREEID,
        on(c),
        platform_tdx::status::TDX_WBCACHE_NOT_COMPLETE,
    );
    assert_eq!(w.cache_wb().last(), Some(&TDX_SUCCESS));
    w.ok(abi::TDH_MNG_KEY_FREEID, on(c));
}
