//! Every leaf the dispatcher knows, one row each: from a world where the leaf's good register
//! set (Linux's, where Linux calls it) succeeds, each input register is set out of range in
//! turn (reserved bits, unaligned, at or past 2^52, an unknown id or TDR page, a page outside
//! host memory, a register Linux leaves 0 that the firmware refuses nonzero), and RAX with
//! version or reserved bits. Each must answer its documented status naming THAT register in
//! bits 31:0, write no register but RAX, and change nothing (firmware tables, S-EPT pool and
//! bookkeeping, TD and SPDM tables, message pages, the device, every byte of host memory).
//!
//! A new leaf is one `row!` line plus its world function (and a line of [`RESERVED_BITS`] per
//! R8-R14 register with bits it refuses); `every_leaf_constant_has_a_row` fails until it has
//! one (the crate exposes no list of its leaves, so the test reads `src/abi.rs`). Refusals that today answer another status or change state are listed in
//! [`KNOWN_GAPS`]; the test fails when that list and what the firmware does part ways.
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
#[path = "common/dmar_add.rs"]
mod dmar_add;
#[path = "common/dmar_state.rs"]
mod dmar_state;

use devif_create::devif_create_regs;
use dmar_add::dmar_add_regs;
use dmar_state::read_state;
use platform_tdx::TdxModule;
use platform_tdx::abi::{self, Dispatcher, HostBuffer, RangeEntry, RangeList, SeamRegs, page_info};
use platform_tdx::dmar;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::module::{DevifEntry, MESSAGE_PAGE_BYTES, SpdmEntry, TdEntry};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::*;
use platform_tdx::td::{self, CacheWb};
use tsm_core::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS};
use tsm_core::device_model::ModelDevice;
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Gpa, GuestId, MmioRange, ModelSession, PageSize, RequesterId, ReservedMemory, TdiId, TdispState,
};

// ---- the world (the minimum of tests/dispatcher.rs's, copied so that file stays as it is) ----

/// Host memory: page 0 the range list, 1-6 shared request/response pages, 7-10 TDR pages, 11-18 SPDM metadata
/// (one per device, by bus), 19-23 scratch pages for bad parameter pages, then the link's
/// pages: 24 the SPDM config page, 25 dev_info, 26 and 27 the link's response and request
/// pages, 28-35 IDE stream metadata (one per device, by bus), 36-41 the private page triples
/// (TDH.DEVIF.CREATE R8, R9, R10) of the TDIs relaying through `PAGES_A` and `PAGES_B`.
const HOST: u64 = 0x7_0000_0000;
const HOST_PAGES: usize = 42;
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
/// The first GPA past the 4-level S-EPT's 48 bits.
const PAST_48: u64 = 1 << 48;

const fn host_page(i: u64) -> u64 {
    HOST + i * MESSAGE_PAGE_BYTES as u64
}
const fn spdm_page(bus: u8) -> u64 {
    host_page(SPDM_FIRST + bus as u64 % 8)
}
/// The shared request and response pages the host relays a TDI's messages in.
const PAGES_A: (u64, u64) = (host_page(1), host_page(2));
const PAGES_B: (u64, u64) = (host_page(3), host_page(4));
/// A second device's BAR.
const BAR_4: u64 = 0x9000_0000;

/// The private pages (R8, R9, R10 of TDH.DEVIF.CREATE) of the TDI relaying through the shared
/// request page `request` (`PAGES_A.0` or `PAGES_B.0`).
const fn private_pages(request: u64) -> (u64, u64, u64) {
    let k = ((request - HOST) / MESSAGE_PAGE_BYTES as u64 - 1) / 2;
    (
        host_page(36 + 3 * k),
        host_page(37 + 3 * k),
        host_page(38 + 3 * k),
    )
}

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

    fn call(&self, rax: u64, mut regs: SeamRegs) -> SeamRegs {
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
        let stream = self
            .ok(abi::TDH_IDE_STREAM_CREATE, create(dev, bus, bar))
            .rcx;
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

    /// TDH.DEVIF.CREATE for the first TD: the TDI, named by its function ID.
    fn create_tdi(&self, dev: u64, iface: RequesterId, pages: (u64, u64)) -> u64 {
        let td = host_page(TDR_FIRST);
        self.ok(
            abi::TDH_DEVIF_CREATE,
            devif_create_regs(dev, iface, td, private_pages(pages.0)),
        );
        let tdi = abi::function_id(iface);
        self.pages.borrow_mut().insert(tdi, pages);
        tdi
    }

    /// The device's answer to the request `tdi`'s leaf left (RCX `out`, `devif_req_out_t`),
    /// written to its response page: whether it answered.
    fn answer_into_response_page(&self, tdi: u64, out: u64) -> Option<u64> {
        let (req, resp) = self.pages.borrow()[&tdi];
        let len = (out >> abi::OUT_LENGTH_SHIFT) & 0xffff;
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
/// TDH.IDE.STREAM.CREATE for the device on bus `bus` whose 4 MiB BAR is at `bar`: its
/// functions alone in the RID association, its BAR the address window.
fn create(dev: u64, bus: u8, bar: u64) -> SeamRegs {
    let routing = u64::from(bus) << 8;
    let [r12, r13, r14] = platform_tdx::link::addr_assoc(bar, bar + (4 << 20) - 1);
    SeamRegs {
        rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
        rdx: dev,
        r8: abi::hpa_array(ide_page(bus), 1),
        r9: 0,
        r10: routing << 8,
        r11: 1 | routing << 8,
        r12,
        r13,
        r14,
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

fn pi(gpa: u64, size: PageSize) -> u64 {
    page_info(Gpa::try_new(gpa).unwrap(), size)
}

// ---- the table ------------------------------------------------------------------------------

/// One bad register set and the status it must get.
struct Bad {
    what: String,
    regs: SeamRegs,
    expect: u64,
}

fn bad(what: impl Into<String>, regs: SeamRegs, expect: u64) -> Bad {
    Bad {
        what: what.into(),
        regs,
        expect,
    }
}

/// A leaf's world: the good register set (and for a TDCALL the calling TD's TDR), the status
/// it gets, and the bad ones.
struct Setup {
    /// `Some(tdr)`: a TDCALL from the TD at `tdr`; `None`: a SEAMCALL.
    tdcall: Option<u64>,
    good: SeamRegs,
    good_status: u64,
    bad: Vec<Bad>,
}

struct Row {
    name: &'static str,
    /// Which form of the leaf, where one leaf has rows for several (empty: the only one).
    form: &'static str,
    leaf: u16,
    world: fn(&World<'_>) -> Setup,
}

impl Row {
    /// The leaf's world in `w`: its own bad calls and its [`RESERVED_BITS`] ones.
    fn setup(&self, w: &World<'_>) -> Setup {
        let mut setup = (self.world)(w);
        setup.bad.extend(bad_values(self.leaf, setup.good));
        setup
    }

    /// The leaf's name, with its form if it has one.
    fn title(&self) -> String {
        if self.form.is_empty() {
            self.name.to_string()
        } else {
            format!("{} ({})", self.name, self.form)
        }
    }
}

macro_rules! row {
    ($leaf:ident, $world:expr) => {
        row!($leaf[""], $world)
    };
    ($leaf:ident[$form:literal], $world:expr) => {
        Row {
            name: stringify!($leaf),
            form: $form,
            leaf: abi::$leaf,
            world: $world,
        }
    };
}

/// Every leaf `platform_tdx::abi` dispatches, host then guest.
fn rows() -> Vec<Row> {
    vec![
        row!(TDH_MNG_CREATE, mng_create),
        row!(TDH_MEM_SEPT_RD, sept_rd),
        row!(TDH_MEM_TRACK, mem_track),
        row!(TDH_SPDM_CREATE, spdm_create),
        row!(TDH_SPDM_DELETE, spdm_delete),
        row!(TDH_DEVIF_CREATE, devif_create),
        row!(TDH_DEVIF_REMOVE, devif_remove),
        row!(TDH_DEVIF_REQUEST, devif_request),
        row!(TDH_DEVIF_RESPONSE, devif_response),
        row!(TDH_MMIO_MAP, mmio_map),
        row!(TDH_MMIO_BLOCK, mmio_block),
        row!(TDH_MMIO_UNMAP, mmio_unmap),
        row!(TDH_MNG_VPFLUSHDONE, vpflushdone),
        row!(TDH_PHYMEM_CACHE_WB, cache_wb),
        row!(TDH_MNG_KEY_FREEID, key_freeid),
        row!(TDH_PHYMEM_PAGE_RECLAIM, page_reclaim),
        row!(TDH_PHYMEM_PAGE_WBINVD, page_wbinvd),
        row!(TSM_DEVIF_BIND, devif_bind),
        row!(TSM_DEVIF_UNBIND, devif_unbind),
        row!(TSM_DEVIF_ERROR, devif_error),
        row!(TSM_DEVIF_STATE, devif_state),
        row!(TSM_MMIO_ZAP_CHECK, zap_check),
        row!(TSM_DEVIF_CHECK, devif_check),
        row!(TSM_DEVIF_SET_TD, devif_set_td),
        row!(TSM_SPDM_BARS, spdm_bars),
        row!(TDH_SPDM_CONNECT, spdm_connect),
        row!(TDH_SPDM_DISCONNECT, spdm_disconnect),
        row!(TDH_SPDM_MNG, spdm_mng),
        row!(TDH_IDE_STREAM_CREATE, ide_stream_create),
        row!(TDH_IDE_STREAM_KM, ide_stream_km),
        row!(TDH_IDE_STREAM_BLOCK, ide_stream_block),
        row!(TDH_IDE_STREAM_DELETE, ide_stream_delete),
        row!(TDG_MMIO_ACCEPT, mmio_accept),
        row!(TDG_DEVIF_RD, devif_rd),
        row!(TDG_DEVIF_REQUEST, tdg_devif_request),
        row!(TDG_DEVIF_RESPONSE, tdg_devif_response),
        row!(TDH_DMAR_ADD, dmar_add),
        row!(TDH_DMAR_BLOCK, dmar_block),
        row!(TDH_DMAR_READ, dmar_read),
        row!(TDH_DMAR_REMOVE, dmar_remove),
        row!(TDH_IQ_INV_REQUEST["INV_REQ_PASIDTE"], iq_request_pasidte),
        row!(TDH_IQ_INV_REQUEST["INV_REQ_IOTLB"], iq_request_iotlb),
        row!(TDH_IQ_INV_REQUEST["INV_REQ_TD"], iq_request_td),
        row!(TDH_IQ_INV_PROCESS, iq_process),
        row!(TDG_DMAR_ACCEPT, dmar_accept),
        row!(TDG_IQ_INV_REQUEST, tdg_iq_inv_request),
    ]
}

/// Public `u16` constants of `src/abi.rs` that are not leaves.
const NOT_LEAVES: &[&str] = &["TSM_LEAF_BASE"];

/// Refusals that today answer another status than documented, or change state: `(leaf, what)`
/// of the bad case. Each is a firmware bug for its owner to fix; the test fails when the list
/// is stale in either direction.
const KNOWN_GAPS: &[(&str, &str)] = &[];

const fn inv(op: u32) -> u64 {
    TDX_OPERAND_INVALID | op as u64
}
const fn range(op: u32) -> u64 {
    TDX_OPERAND_ADDR_RANGE_ERROR | op as u64
}

/// R8-R14 bits the leaves refuse: reserved bits, and whole registers a leaf takes as 0 (Linux
/// leaves them 0). `(leaf, register, values)`: one bad call per value, the leaf's good set with
/// the value's bits also set in that register (for a register taken as 0, the value itself),
/// in every form of the leaf, refused `TDX_OPERAND_INVALID` naming that register.
const RESERVED_BITS: &[(u16, u32, &[u64])] = &[
    (abi::TDH_DEVIF_REQUEST, OPERAND_ID_R9, &[1]),
    (abi::TDH_DEVIF_RESPONSE, OPERAND_ID_R9, &[1]),
    // 1 << 63: a TDI handle, as the firmware's earlier layout took R9.
    (abi::TDH_MMIO_MAP, OPERAND_ID_R9, &[1, 1 << 63]),
    // R9 taken as 0; R10-R14 the RID and address associations' reserved bits.
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R9, &[1]),
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R10, &[1, 1 << 63]),
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R11, &[1 << 63]),
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R12, &[1 << 63]),
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R13, &[1 << 63]),
    (abi::TDH_IDE_STREAM_CREATE, OPERAND_ID_R14, &[1 << 63]),
    (abi::TDG_DEVIF_RD, OPERAND_ID_R9, &[1]),
    (abi::TDG_DEVIF_REQUEST, OPERAND_ID_R9, &[1]),
    (abi::TDG_DEVIF_RESPONSE, OPERAND_ID_R9, &[1]),
    // The PASID entry's qwords 2-6, which the module requires 0.
    (abi::TDH_DMAR_ADD, OPERAND_ID_R10, &[1]),
    (abi::TDH_DMAR_ADD, OPERAND_ID_R11, &[1 << 63]),
    (abi::TDH_DMAR_ADD, OPERAND_ID_R12, &[1]),
    (abi::TDH_DMAR_ADD, OPERAND_ID_R13, &[1]),
    (abi::TDH_DMAR_ADD, OPERAND_ID_R14, &[1]),
    // The wait descriptor's qwords 2 and 3, in both forms.
    (abi::TDH_IQ_INV_REQUEST, OPERAND_ID_R11, &[1]),
    (abi::TDH_IQ_INV_REQUEST, OPERAND_ID_R12, &[1 << 63]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R8, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R9, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R10, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R11, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R12, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R13, &[1]),
    (abi::TDG_DMAR_ACCEPT, OPERAND_ID_R14, &[1 << 63]),
];

/// Register R8-R14 of `regs` by its operand id (the id is the register's number).
fn reg_of(regs: &mut SeamRegs, op: u32) -> &mut u64 {
    match op {
        OPERAND_ID_R8 => &mut regs.r8,
        OPERAND_ID_R9 => &mut regs.r9,
        OPERAND_ID_R10 => &mut regs.r10,
        OPERAND_ID_R11 => &mut regs.r11,
        OPERAND_ID_R12 => &mut regs.r12,
        OPERAND_ID_R13 => &mut regs.r13,
        OPERAND_ID_R14 => &mut regs.r14,
        _ => panic!("operand id {op} is not one of R8-R14"),
    }
}

/// The [`RESERVED_BITS`] bad calls of `leaf` over its good set `good`.
fn bad_values(leaf: u16, good: SeamRegs) -> Vec<Bad> {
    let mut v = Vec::new();
    for &(_, op, values) in RESERVED_BITS.iter().filter(|(l, _, _)| *l == leaf) {
        for &bits in values {
            let mut regs = good;
            let r = reg_of(&mut regs, op);
            // Bits the good set already has would make the call the good one.
            assert_eq!(*r & bits, 0, "leaf {leaf:#x}: R{op} has {bits:#x} set");
            *r |= bits;
            v.push(bad(format!("R{op} with {bits:#x} set"), regs, inv(op)));
        }
    }
    v
}

/// A TDR-PA operand of `good` (the register `set` writes) set to pages that name no TD: another host
/// page, an unaligned one, one past 2^52, and one outside host memory.
fn bad_tdr(good: SeamRegs, set: fn(&mut SeamRegs, u64), td: u64, expect: u64) -> Vec<Bad> {
    let with = |v: u64| {
        let mut r = good;
        set(&mut r, v);
        r
    };
    vec![
        bad(
            "TDR: a host page no TD has",
            with(host_page(TDR_FIRST + 3)),
            expect,
        ),
        bad("TDR: unaligned (the TD's page + 8)", with(td + 8), expect),
        bad("TDR: past 2^52", with(td | PAST_52), expect),
        bad("TDR: outside host memory", with(OUTSIDE), expect),
        bad("TDR: 0", with(0), expect),
        bad("TDR: all ones", with(u64::MAX), expect),
    ]
}

/// A TDI or SPDM-id handle of `good` (the register `set` writes) set to ids never made.
fn bad_handle(good: SeamRegs, set: fn(&mut SeamRegs, u64), id: u64, expect: u64) -> Vec<Bad> {
    let with = |v: u64| {
        let mut r = good;
        set(&mut r, v);
        r
    };
    vec![
        bad("handle: the next id, never made", with(id + 1), expect),
        bad("handle: past the table (0xFFFF)", with(0xffff), expect),
        bad("handle: past 16 bits", with(1 << 16 | id), expect),
        bad("handle: all ones", with(u64::MAX), expect),
    ]
}

/// RCX of `good`, the TDI's `function_id_reg_t` (`tdi`), malformed or naming no TDI: no TDI
/// (`TDX_DEVIFMT_NOT_PRESENT`), bits 63:32, the function ID's reserved bits 31:25, a segment
/// without SEG_VALID (`TDX_OPERAND_INVALID`), each + RCX.
fn bad_fid(good: SeamRegs, tdi: u64) -> Vec<Bad> {
    let with = |v: u64| SeamRegs { rcx: v, ..good };
    let none = TDX_DEVIFMT_NOT_PRESENT | u64::from(OPERAND_ID_RCX);
    vec![
        bad("function ID: function 7, no TDI", with(tdi | 7), none),
        bad("function ID: another bus, no TDI", with(tdi ^ 0x100), none),
        bad(
            "function_id_reg_t: bit 32",
            with(tdi | 1 << 32),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "function_id_reg_t: bit 63",
            with(tdi | 1 << 63),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "function ID: reserved bit 25",
            with(tdi | 1 << 25),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "function ID: a segment without SEG_VALID",
            with(tdi | 1 << 16),
            inv(OPERAND_ID_RCX),
        ),
        bad("function ID: all ones", with(u64::MAX), inv(OPERAND_ID_RCX)),
    ]
}

/// A shared page operand of `good` the firmware writes a request to (the register `set`
/// writes, operand `op`): unaligned, past 2^52, outside host memory, 0 (no host memory), the
/// TD's TDR page and a TDI's private page (the firmware's: `TDX_PAGE_METADATA_INCORRECT`).
fn bad_request_page(good: SeamRegs, set: fn(&mut SeamRegs, u64), td: u64, op: u32) -> Vec<Bad> {
    let with = |v: u64| {
        let mut r = good;
        set(&mut r, v);
        r
    };
    let pmi = TDX_PAGE_METADATA_INCORRECT | u64::from(op);
    vec![
        bad("request page: unaligned (+8)", with(PAGES_A.0 + 8), inv(op)),
        bad(
            "request page: past 2^52",
            with(PAGES_A.0 | PAST_52),
            range(op),
        ),
        bad(
            "request page: outside host memory",
            with(OUTSIDE),
            range(op),
        ),
        bad("request page: the TD's TDR page", with(td), pmi),
        bad(
            "request page: a TDI's DEVIFCS page",
            with(private_pages(PAGES_A.0).0),
            pmi,
        ),
    ]
}

/// Page info in RCX of `good` (whose good value is `gpa` at `size`) out of range: reserved
/// bits 11:3 and 63:52, level 3, unaligned for its level, and past the S-EPT's 48 bits.
fn bad_page_info(good: SeamRegs, gpa: u64, size: PageSize) -> Vec<Bad> {
    let level = size.tdx_level() as u64;
    let with = |v: u64| SeamRegs { rcx: v, ..good };
    let mut v = vec![
        bad(
            "page info: reserved bit 3",
            with(gpa | level | 1 << 3),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "page info: reserved bit 11",
            with(gpa | level | 1 << 11),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "page info: reserved bit 52",
            with(gpa | level | PAST_52),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "page info: reserved bit 63",
            with(gpa | level | 1 << 63),
            inv(OPERAND_ID_RCX),
        ),
        bad("page info: level 3", with(gpa | 3), inv(OPERAND_ID_RCX)),
        bad("page info: level 7", with(gpa | 7), inv(OPERAND_ID_RCX)),
        bad(
            "page info: GPA past the 4-level S-EPT (2^48)",
            with(gpa | level | PAST_48),
            range(OPERAND_ID_RCX),
        ),
    ];
    if size != PageSize::Size4K {
        v.push(bad(
            "page info: GPA not aligned to its level",
            with((gpa + 0x1000) | level),
            inv(OPERAND_ID_RCX),
        ));
    }
    v
}

fn rax_bad() -> [(&'static str, u64); 4] {
    [
        ("RAX: version 1 (bit 16)", 1 << 16),
        ("RAX: version 0xFF (bits 23:16)", 0xff << 16),
        ("RAX: reserved bit 24", 1 << 24),
        ("RAX: reserved bit 63", 1 << 63),
    ]
}

// ---- worlds, one per leaf --------------------------------------------------------------------

/// A TD, a device on bus 3 with its BAR, its TDI (PAGES_A) unbound.
fn tdi_world(w: &World<'_>) -> (u64, u64, u64) {
    let td = w.create_td();
    let dev = w.device(3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    (td, dev, tdi)
}

/// `tdi_world` with the TDI bound to the TD (relayed to its end).
fn bound(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = tdi_world(w);
    let out = w.relayed(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            r8: PAGES_A.0,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    (td, dev, tdi)
}

/// `bound` with the BAR's first 2 MiB mapped at GPA (Linux's `tdh_mmio_map` registers).
fn mapped(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = bound(w);
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: pi(GPA, PageSize::Size2M),
            rdx: td,
            r8: BAR,
            ..Default::default()
        },
    );
    (td, dev, tdi)
}

/// `bound` with one 4 KiB leaf, unbound with the TD's flush held back: STOP acknowledged, the
/// leaf blocked for the host to remove (as `tests/scenarios/host-teardown.scn`).
fn teardown(w: &World<'_>) -> (u64, SeamRegs) {
    let (td, _, tdi) = bound(w);
    let linux = SeamRegs {
        rcx: GPA,
        rdx: td,
        ..Default::default()
    };
    w.ok(abi::TDH_MMIO_MAP, SeamRegs { r8: BAR, ..linux });
    let guest = w.fw.td_of(td).unwrap().unwrap();
    w.fw.tsm()
        .with_table(|t| t.hold_flush(guest, true))
        .unwrap();
    let out = w.relayed(
        abi::TSM_DEVIF_UNBIND,
        SeamRegs {
            r8: PAGES_A.0,
            ..on(tdi)
        },
    );
    assert_eq!(
        out.rax,
        TDX_TLB_TRACKING_NOT_DONE | u64::from(OPERAND_ID_TD_EPOCH)
    );
    w.fw.tsm()
        .with_table(|t| t.hold_flush(guest, false))
        .unwrap();
    (td, linux)
}

fn mng_create(w: &World<'_>) -> Setup {
    // A TD (page 7), a device on bus 3 (its metadata page) with a TDI (message pages A).
    let (td, _, _) = tdi_world(w);
    let good = SeamRegs {
        rcx: host_page(TDR_FIRST + 1),
        rdx: HKID + 1,
        ..Default::default()
    };
    let rcx = |v| SeamRegs { rcx: v, ..good };
    let rdx = |v| SeamRegs { rdx: v, ..good };
    let pmi = TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: vec![
            bad(
                "RCX unaligned (+0x800)",
                rcx(good.rcx + 0x800),
                inv(OPERAND_ID_RCX),
            ),
            bad("RCX unaligned (+8)", rcx(good.rcx + 8), inv(OPERAND_ID_RCX)),
            bad(
                "RCX past 2^52",
                rcx(good.rcx | PAST_52),
                range(OPERAND_ID_RCX),
            ),
            bad("RCX all ones", rcx(!0xfff), range(OPERAND_ID_RCX)),
            bad(
                "RCX outside host memory",
                rcx(OUTSIDE),
                range(OPERAND_ID_RCX),
            ),
            bad("RCX a TD's TDR page already", rcx(td), pmi),
            bad(
                "RCX a TDI's DEVIFCS page",
                rcx(private_pages(PAGES_A.0).0),
                pmi,
            ),
            bad(
                "RCX a TDI's TD buffer",
                rcx(private_pages(PAGES_A.0).1),
                pmi,
            ),
            bad(
                "RCX a TDI's VMM buffer",
                rcx(private_pages(PAGES_A.0).2),
                pmi,
            ),
            bad("RCX an SPDM metadata page", rcx(spdm_page(3)), pmi),
            bad(
                "RDX HKID 0 (the platform's key)",
                rdx(0),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX reserved bit 16",
                rdx(HKID | 1 << 16),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX reserved bit 63",
                rdx(HKID | 1 << 63),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX HKID past the private range",
                rdx(u64::from(td::PRIVATE_HKID_MAX) + 1),
                inv(OPERAND_ID_RDX),
            ),
            bad("RDX HKID 0xFFFF", rdx(0xffff), inv(OPERAND_ID_RDX)),
            bad(
                "RDX the HKID of a live TD (not KEY.FREEID'd)",
                rdx(HKID),
                TDX_HKID_NOT_FREE,
            ),
            bad(
                "RCX KeyID bits (HKID 5)",
                rcx(good.rcx | 5 << td::KEYID_SHIFT),
                inv(OPERAND_ID_RCX),
            ),
            bad(
                "RDX bad and RCX bad: RDX first (tdh_mng_create.c order)",
                SeamRegs {
                    rcx: OUTSIDE,
                    rdx: 0,
                    ..good
                },
                inv(OPERAND_ID_RDX),
            ),
        ],
    }
}

fn sept_rd(w: &World<'_>) -> Setup {
    let (td, _, _) = mapped(w);
    let good = SeamRegs {
        rcx: pi(GPA, PageSize::Size2M),
        rdx: td,
        ..Default::default()
    };
    let mut v = bad_page_info(good, GPA, PageSize::Size2M);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn mem_track(w: &World<'_>) -> Setup {
    let (td, _, _) = mapped(w);
    let good = on(td);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: bad_tdr(good, |r, x| r.rcx = x, td, inv(OPERAND_ID_RCX)),
    }
}

fn spdm_create(w: &World<'_>) -> Setup {
    // A TD (page 7) and a device on bus 4 with a TDI (message pages A); the device to create is
    // on bus 3, metadata page `spdm_page(3)`.
    let td = w.create_td();
    let dev = w.device(4, BAR);
    w.create_tdi(dev, rid(4), PAGES_A);
    // Two-page arrays for the root checks: scratch pages 19 (root) and 20-21 (pages).
    let root = host_page(SCRATCH);
    let roots = [
        (
            host_page(SCRATCH),
            [host_page(SCRATCH + 1), host_page(SCRATCH + 2)],
        ),
        (
            host_page(SCRATCH + 3),
            [host_page(SCRATCH + 1) + 8, host_page(SCRATCH + 2)],
        ),
        (host_page(SCRATCH + 4), [host_page(SCRATCH + 1), OUTSIDE]),
    ];
    for (at, pages) in roots {
        let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
        w.write(at, &bytes);
    }
    let dup_root = host_page(SCRATCH + 2);
    w.write(
        dup_root,
        &[host_page(SCRATCH + 1), host_page(SCRATCH + 1)]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    // A root whose first entry is the root itself.
    let self_root = host_page(SCRATCH + 1);
    w.write(
        self_root,
        &[self_root, host_page(SCRATCH + 2)]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let good = SeamRegs {
        rcx: abi::function_id(rid(3)),
        rdx: abi::hpa_array(spdm_page(3), 1),
        ..Default::default()
    };
    let rcx = |v| SeamRegs { rcx: v, ..good };
    let rdx = |v| SeamRegs { rdx: v, ..good };
    let pmi = TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RDX);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: vec![
            bad(
                "RCX reserved bit 25",
                rcx(good.rcx | 1 << 25),
                inv(OPERAND_ID_RCX),
            ),
            bad(
                "RCX reserved bit 63",
                rcx(good.rcx | 1 << 63),
                inv(OPERAND_ID_RCX),
            ),
            bad(
                "RCX a segment without SEG_VALID",
                rcx(good.rcx | 1 << 16),
                inv(OPERAND_ID_RCX),
            ),
            bad(
                "RCX another SPDM id's function",
                rcx(abi::function_id(rid(4))),
                TSM_DUPLICATE_DEVICE | u64::from(OPERAND_ID_RCX),
            ),
            bad("RDX reserved bit 0", rdx(good.rdx | 1), inv(OPERAND_ID_RDX)),
            bad(
                "RDX reserved bit 11",
                rdx(good.rdx | 1 << 11),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX reserved bit 52",
                rdx(good.rdx | PAST_52),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX reserved bit 54",
                rdx(good.rdx | 1 << 54),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX more pages than SPDM_MT_MAX_PAGES",
                rdx(abi::hpa_array(root, 5)),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX all 512 pages",
                rdx(abi::hpa_array(root, 512)),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX a page outside host memory",
                rdx(abi::hpa_array(OUTSIDE, 1)),
                range(OPERAND_ID_RDX),
            ),
            bad("RDX the TD's TDR page", rdx(abi::hpa_array(td, 1)), pmi),
            bad(
                "RDX a TDI's DEVIFCS page",
                rdx(abi::hpa_array(private_pages(PAGES_A.0).0, 1)),
                pmi,
            ),
            bad(
                "RDX a TDI's VMM buffer",
                rdx(abi::hpa_array(private_pages(PAGES_A.0).2, 1)),
                pmi,
            ),
            bad(
                "RDX another SPDM id's metadata page",
                rdx(abi::hpa_array(spdm_page(4), 1)),
                pmi,
            ),
            bad(
                "RDX a root whose entry is unaligned",
                rdx(abi::hpa_array(host_page(SCRATCH + 3), 2)),
                inv(OPERAND_ID_RDX),
            ),
            bad(
                "RDX a root whose entry is outside host memory",
                rdx(abi::hpa_array(host_page(SCRATCH + 4), 2)),
                range(OPERAND_ID_RDX),
            ),
            bad(
                "RDX a root listing one page twice",
                rdx(abi::hpa_array(dup_root, 2)),
                pmi,
            ),
            bad(
                "RDX a root listing itself",
                rdx(abi::hpa_array(self_root, 2)),
                pmi,
            ),
            bad(
                "RDX a root outside host memory",
                rdx(abi::hpa_array(OUTSIDE, 2)),
                range(OPERAND_ID_RDX),
            ),
        ],
    }
}

fn spdm_delete(w: &World<'_>) -> Setup {
    w.create_td();
    let dev = w.device_unlinked(3, BAR);
    let good = SeamRegs {
        rcx: dev,
        rdx: 0,
        ..Default::default()
    };
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.extend([
        bad(
            "RDX the page itself (one page releases with 0)",
            SeamRegs {
                rdx: spdm_page(3),
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad("RDX 1", SeamRegs { rdx: 1, ..good }, inv(OPERAND_ID_RDX)),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn devif_create(w: &World<'_>) -> Setup {
    let td = w.create_td();
    let dev = w.device(3, BAR);
    // A second device (bus 4, its own stream) whose TDI holds the private pages of PAGES_B;
    // a third SPDM id without BARs, so without a stream.
    let dev4 = w.device(4, BAR_4);
    w.create_tdi(dev4, rid(4), PAGES_B);
    let bare = w.spdm(5);
    let good = devif_create_regs(dev, rid(3), td, private_pages(PAGES_A.0));
    let (devifcs, td_buf, _) = private_pages(PAGES_A.0);
    let taken = private_pages(PAGES_B.0).0;
    let pmi = |op: u32| TDX_PAGE_METADATA_INCORRECT | u64::from(op);
    let mut v = Vec::new();
    // R8, R9, R10: the three private pages, each checked as the module's
    // check_and_lock_explicit_4k_private_hpa (in that order, RDX between R8 and R9).
    for (op, name) in [
        (OPERAND_ID_R8, "R8"),
        (OPERAND_ID_R9, "R9"),
        (OPERAND_ID_R10, "R10"),
    ] {
        let is = |what: &str| format!("{name} {what}");
        let with = |v: u64| {
            let mut r = good;
            match op {
                OPERAND_ID_R8 => r.r8 = v,
                OPERAND_ID_R9 => r.r9 = v,
                _ => r.r10 = v,
            }
            r
        };
        let page = match op {
            OPERAND_ID_R8 => good.r8,
            OPERAND_ID_R9 => good.r9,
            _ => good.r10,
        };
        v.extend([
            bad(is("unaligned (+8)"), with(page + 8), inv(op)),
            bad(is("past 2^52"), with(page | PAST_52), range(op)),
            bad(is("outside host memory"), with(OUTSIDE), range(op)),
            bad(is("0 (no host memory)"), with(0), range(op)),
            bad(is("the TD's TDR page"), with(td), pmi(op)),
            bad(is("an SPDM metadata page"), with(spdm_page(3)), pmi(op)),
            bad(
                is("an IDE stream metadata page"),
                with(ide_page(3)),
                pmi(op),
            ),
            bad(is("another TDI's private page"), with(taken), pmi(op)),
        ]);
    }
    v.extend([
        bad(
            "R9 the R8 page",
            SeamRegs {
                r9: devifcs,
                ..good
            },
            pmi(OPERAND_ID_R9),
        ),
        bad(
            "R10 the R8 page",
            SeamRegs {
                r10: devifcs,
                ..good
            },
            pmi(OPERAND_ID_R10),
        ),
        bad(
            "R10 the R9 page",
            SeamRegs {
                r10: td_buf,
                ..good
            },
            pmi(OPERAND_ID_R10),
        ),
    ]);
    // RDX 0 is a TDI for no TD yet (ours), not a bad TDR.
    v.extend(
        bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX))
            .into_iter()
            .filter(|b| b.regs.rdx != 0),
    );
    let fid = abi::function_id(rid(3));
    let foreign = TSM_FOREIGN_INTERFACE | u64::from(OPERAND_ID_RCX);
    let with_rcx = |rcx: u64| SeamRegs { rcx, ..good };
    let stream_state = TDX_IDE_STREAM_INVALID_STATE | u64::from(OPERAND_ID_RCX);
    v.extend([
        bad(
            "RCX iommu id 1 (ours: none)",
            with_rcx(good.rcx | 1),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX iommu id bits 15:8",
            with_rcx(good.rcx | 0x100),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX devif type 1",
            with_rcx(good.rcx | 1 << 24),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX function ID reserved bit 25 (bit 57)",
            with_rcx(good.rcx | 1 << 57),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX a segment without SEG_VALID",
            with_rcx(good.rcx | 1 << 48),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX the stream of an SPDM id without one",
            with_rcx(abi::devif_id(0, bare as u8, fid as u32)),
            stream_state,
        ),
        bad(
            "RCX stream page selector set",
            with_rcx(good.rcx | 1 << 23),
            stream_state,
        ),
        bad(
            "RCX a stream index no stream has",
            with_rcx(abi::devif_id(0, 0x7f, fid as u32)),
            stream_state,
        ),
        bad(
            "RCX a function of no device",
            with_rcx(abi::devif_id(0, dev as u8, abi::function_id(rid(6)) as u32)),
            foreign,
        ),
        bad(
            "RCX the device's bus, device and function in segment 1",
            with_rcx(abi::devif_id(
                0,
                dev as u8,
                abi::function_id(RequesterId::try_new(1, 3, 0, 0).unwrap()) as u32,
            )),
            foreign,
        ),
        bad(
            "RCX this function on another device's stream",
            with_rcx(abi::devif_id(0, dev4 as u8, fid as u32)),
            foreign,
        ),
        bad(
            "RCX the device's function 1, outside its stream's RID range (function 0 alone)",
            with_rcx(abi::devif_id(
                0,
                dev as u8,
                abi::function_id(RequesterId::try_new(0, 3, 0, 1).unwrap()) as u32,
            )),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RCX a function that has a TDI (bus 4's, on its stream)",
            with_rcx(abi::devif_id(
                0,
                dev4 as u8,
                abi::function_id(rid(4)) as u32,
            )),
            TDX_DEVIFMT_ALREADY_PRESENT | u64::from(OPERAND_ID_RCX),
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// A TDI leaf whose only operand is the TDI's function ID in RCX.
fn tdi_only(tdi: u64, good_status: u64) -> Setup {
    let good = on(tdi);
    Setup {
        tdcall: None,
        good,
        good_status,
        bad: bad_fid(good, tdi),
    }
}

fn devif_remove(w: &World<'_>) -> Setup {
    let (_, _, tdi) = tdi_world(w);
    tdi_only(tdi, TDX_SUCCESS)
}

/// `tdi_world` with a bind started (TDH.DEVIF.REQUEST LOCK_INTERFACE): its first request
/// outstanding; (TD, TDI, RCX `devif_req_out_t`).
fn outstanding(w: &World<'_>) -> (u64, u64, u64) {
    let (td, _, tdi) = tdi_world(w);
    let out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), lock(tdi));
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    (td, tdi, out.rcx)
}

/// TDH.DEVIF.REQUEST LOCK_INTERFACE for `tdi`, the request into `PAGES_A.0`.
fn lock(tdi: u64) -> SeamRegs {
    SeamRegs {
        rcx: tdi,
        rdx: abi::devif_req_in(abi::TDISP_LOCK_INTERFACE, false, false),
        r8: PAGES_A.0,
        ..Default::default()
    }
}

fn devif_request(w: &World<'_>) -> Setup {
    let (td, _, tdi) = tdi_world(w);
    let good = lock(tdi);
    let mut v = bad_fid(good, tdi);
    let with_rdx = |rdx: u64| SeamRegs { rdx, ..good };
    for (what, rdx) in [
        ("RDX reserved bit 9", good.rdx | 1 << 9),
        ("RDX reserved bit 62", good.rdx | 1 << 62),
        ("RDX code 0", 0),
        ("RDX code GET_REPORT (the TD's)", 0x84),
        ("RDX code START (the TD's)", 0x86),
        ("RDX code GET_VERSION (not the host's)", 0x81),
        (
            "RDX no_fw_update with STOP",
            abi::devif_req_in(abi::TDISP_STOP_INTERFACE, true, false),
        ),
        ("RDX td_flag with a code", good.rdx | abi::REQ_IN_TD_FLAG),
        (
            "RDX td_flag with no_fw_update",
            abi::devif_req_in(0, true, true),
        ),
    ] {
        v.push(bad(what, with_rdx(rdx), inv(OPERAND_ID_RDX)));
    }
    v.extend(bad_request_page(good, |r, x| r.r8 = x, td, OPERAND_ID_R8));
    v.push(bad(
        "td_flag with no request of the TD's",
        with_rdx(abi::devif_req_in(0, false, true)),
        TDX_DEVIF_TDISP_INVALID_REQ_STS | u64::from(OPERAND_ID_RCX),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn devif_response(w: &World<'_>) -> Setup {
    let (td, tdi, out) = outstanding(w);
    w.answer_into_response_page(tdi, out).unwrap();
    let good = SeamRegs {
        rcx: tdi,
        rdx: abi::devif_rsp_in(PAGES_A.1, false),
        r8: PAGES_A.0,
        ..Default::default()
    };
    let mut v = bad_fid(good, tdi);
    let msg = TDX_DEVIF_TDISP_INVALID_MESSAGE | u64::from(OPERAND_ID_RDX);
    let with_rdx = |rdx: u64| SeamRegs { rdx, ..good };
    v.extend([
        bad(
            "RDX reserved bit 0",
            with_rdx(good.rdx | 1),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX reserved bit 11",
            with_rdx(good.rdx | 1 << 11),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX reserved bit 52",
            with_rdx(good.rdx | 1 << 52),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX reserved bit 62",
            with_rdx(good.rdx | 1 << 62),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX an answer page outside host memory",
            with_rdx(abi::devif_rsp_in(OUTSIDE, false)),
            range(OPERAND_ID_RDX),
        ),
        bad(
            "RDX td_flag on the host's own request",
            with_rdx(good.rdx | abi::REQ_IN_TD_FLAG),
            TDX_DEVIF_TDISP_INVALID_REQ_STS | u64::from(OPERAND_ID_RDX),
        ),
        bad(
            "RDX a page that is not the answer (the request page)",
            with_rdx(abi::devif_rsp_in(PAGES_A.0, false)),
            msg,
        ),
        bad(
            "RDX a zeroed page (DOE length 0: past the page)",
            with_rdx(abi::devif_rsp_in(host_page(SCRATCH), false)),
            msg,
        ),
        bad(
            "R8 0 while the bind goes on",
            SeamRegs { r8: 0, ..good },
            inv(OPERAND_ID_R8),
        ),
    ]);
    v.extend(
        bad_request_page(good, |r, x| r.r8 = x, td, OPERAND_ID_R8)
            .into_iter()
            .filter(|b| !b.what.contains("0 (")),
    );
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn mmio_map(w: &World<'_>) -> Setup {
    let (td, _, _) = bound(w);
    let other = w.create_td();
    let good = SeamRegs {
        rcx: pi(GPA, PageSize::Size2M),
        rdx: td,
        r8: BAR,
        ..Default::default()
    };
    let mut v = bad_page_info(good, GPA, PageSize::Size2M);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    let r8 = |v| SeamRegs { r8: v, ..good };
    v.extend([
        bad(
            "RDX a TD that does not own the page's TDI",
            SeamRegs { rdx: other, ..good },
            TDX_MMIO_DEVIF_OWNER_MISMATCH | u64::from(OPERAND_ID_RDX),
        ),
        bad(
            "R8 unaligned for 2 MiB",
            r8(BAR + 0x1000),
            inv(OPERAND_ID_R8),
        ),
        bad("R8 past 2^52", r8(BAR | PAST_52), range(OPERAND_ID_R8)),
        bad(
            "R8 a page of host memory (reserved at init)",
            r8(HOST),
            TSM_RESERVED_MEMORY | u64::from(OPERAND_ID_R8),
        ),
        bad(
            "R8 a page no bound TDI holds",
            r8(BAR + 0x40_0000),
            TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_R8),
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn mmio_block(w: &World<'_>) -> Setup {
    let (td, good) = teardown(w);
    let mut v = bad_page_info(good, GPA, PageSize::Size4K);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn mmio_unmap(w: &World<'_>) -> Setup {
    let (td, good) = teardown(w);
    let tracked = w.call(u64::from(abi::TDH_MEM_TRACK), on(td));
    assert_eq!(tracked.rax, TDX_SUCCESS);
    let mut v = bad_page_info(good, GPA, PageSize::Size4K);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// RECLAIM's page in RCX of `good` (the TD's at `td`) malformed, as the TDX
/// module checks it (`check_lock_and_map_explicit_tdr`): unaligned, KeyID bits or past 2^52
/// (OPERAND_INVALID), outside host memory (ADDR_RANGE_ERROR), a page that is no TDR
/// (PAGE_METADATA_INCORRECT).
fn bad_tdr_page(good: SeamRegs, td: u64) -> Vec<Bad> {
    let with = |v: u64| SeamRegs { rcx: v, ..good };
    let pmi = TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX);
    vec![
        bad("TDR: unaligned (+8)", with(td + 8), inv(OPERAND_ID_RCX)),
        bad(
            "TDR: unaligned (+0x800)",
            with(td + 0x800),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "TDR: KeyID bits (HKID 5)",
            with(td | 5 << td::KEYID_SHIFT),
            inv(OPERAND_ID_RCX),
        ),
        bad("TDR: past 2^52", with(td | PAST_52), inv(OPERAND_ID_RCX)),
        bad("TDR: all ones", with(u64::MAX), inv(OPERAND_ID_RCX)),
        bad(
            "TDR: outside host memory",
            with(OUTSIDE),
            range(OPERAND_ID_RCX),
        ),
        bad("TDR: 0", with(0), range(OPERAND_ID_RCX)),
        bad(
            "TDR: a host page no TD has",
            with(host_page(TDR_FIRST + 3)),
            pmi,
        ),
        bad("TDR: a TDI's request page", with(PAGES_A.0), pmi),
        bad("TDR: an SPDM metadata page", with(spdm_page(3)), pmi),
        bad("TDR: an IDE metadata page", with(ide_page(3)), pmi),
    ]
}

/// `tdi_world` torn down as Linux's `tdx_mmu_release_hkid` does, up to (not including) `upto`.
/// A TD with a TDI made for it, its teardown run up to `upto`: (TD, TDI).
fn torn(w: &World<'_>, upto: u16) -> (u64, u64) {
    let (td, _, tdi) = tdi_world(w);
    for (leaf, rcx) in [
        (abi::TDH_MNG_VPFLUSHDONE, td),
        (abi::TDH_PHYMEM_CACHE_WB, td::CACHE_WB_START),
        (abi::TDH_PHYMEM_CACHE_WB, td::CACHE_WB_RESUME),
        (abi::TDH_MNG_KEY_FREEID, td),
    ] {
        if leaf == upto {
            break;
        }
        let out = w.call(u64::from(leaf), on(rcx));
        assert!(out.rax == TDX_SUCCESS || out.rax == TDX_INTERRUPTED_RESUMABLE);
    }
    (td, tdi)
}

fn vpflushdone(w: &World<'_>) -> Setup {
    let (td, _) = torn(w, abi::TDH_MNG_VPFLUSHDONE);
    let good = on(td);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: bad_td_rcx(good, td),
    }
}

fn key_freeid(w: &World<'_>) -> Setup {
    let (td, _) = torn(w, abi::TDH_MNG_KEY_FREEID);
    let good = on(td);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: bad_td_rcx(good, td),
    }
}

/// VPFLUSHDONE's and FREEID's TDR in RCX: `bad_tdr`'s values, pages the firmware holds for
/// something else, and KeyID bits: OPERAND_INVALID + RCX (this firmware's answer for a TDR
/// operand naming no TD).
fn bad_td_rcx(good: SeamRegs, td: u64) -> Vec<Bad> {
    let mut v = bad_tdr(good, |r, x| r.rcx = x, td, inv(OPERAND_ID_RCX));
    let with = |v: u64| SeamRegs { rcx: v, ..good };
    v.extend([
        bad(
            "TDR: KeyID bits (HKID 5)",
            with(td | 5 << td::KEYID_SHIFT),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "TDR: a TDI's request page",
            with(PAGES_A.0),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "TDR: an SPDM metadata page",
            with(spdm_page(3)),
            inv(OPERAND_ID_RCX),
        ),
    ]);
    v
}

fn page_reclaim(w: &World<'_>) -> Setup {
    let (td, tdi) = torn(w, abi::TDH_PHYMEM_PAGE_RECLAIM);
    // The TDI made for the TD is handed to no TD first, or the TDR stays its (the module's
    // TDR child count).
    w.ok(abi::TSM_DEVIF_SET_TD, on(tdi));
    let good = on(td);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: bad_tdr_page(good, td),
    }
}

fn cache_wb(w: &World<'_>) -> Setup {
    // A TD flushed: the start writes back its first sub-block and is interrupted.
    let _ = torn(w, abi::TDH_PHYMEM_CACHE_WB);
    let good = on(td::CACHE_WB_START);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_INTERRUPTED_RESUMABLE,
        bad: vec![
            bad("RCX command 2", on(2), inv(OPERAND_ID_RCX)),
            bad("RCX command 1 << 63", on(1 << 63), inv(OPERAND_ID_RCX)),
            bad("RCX all ones", on(u64::MAX), inv(OPERAND_ID_RCX)),
        ],
    }
}

fn page_wbinvd(w: &World<'_>) -> Setup {
    // As Linux's `tdh_phymem_page_wbinvd_hkid`: a page the host owns again, with a KeyID.
    let (td, _, _) = tdi_world(w);
    let page = host_page(SCRATCH);
    let keyed = |p: u64| p | 5 << td::KEYID_SHIFT;
    let good = on(keyed(page));
    let pmi = TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: vec![
            bad(
                "page unaligned (+8)",
                on(keyed(page + 8)),
                inv(OPERAND_ID_RCX),
            ),
            bad(
                "page past 2^52",
                on(keyed(page) | PAST_52),
                inv(OPERAND_ID_RCX),
            ),
            bad("all ones", on(u64::MAX), inv(OPERAND_ID_RCX)),
            bad(
                "page outside host memory",
                on(keyed(OUTSIDE)),
                range(OPERAND_ID_RCX),
            ),
            bad("a live TD's TDR", on(keyed(td)), pmi),
            bad("SPDM metadata in use", on(keyed(spdm_page(3))), pmi),
            bad("IDE metadata in use", on(keyed(ide_page(3))), pmi),
        ],
    }
}

fn devif_bind(w: &World<'_>) -> Setup {
    let (td, _, tdi) = tdi_world(w);
    let other = w.create_td();
    let good = SeamRegs {
        rcx: tdi,
        rdx: td,
        r8: PAGES_A.0,
        ..Default::default()
    };
    let mut v = bad_fid(good, tdi);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    v.push(bad(
        "RDX another TD than CREATE's",
        SeamRegs { rdx: other, ..good },
        TDX_MMIO_DEVIF_OWNER_MISMATCH | u64::from(OPERAND_ID_RDX),
    ));
    v.extend(bad_request_page(good, |r, x| r.r8 = x, td, OPERAND_ID_R8));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn devif_unbind(w: &World<'_>) -> Setup {
    let (td, _, tdi) = mapped(w);
    let good = SeamRegs {
        r8: PAGES_A.0,
        ..on(tdi)
    };
    let mut v = bad_fid(good, tdi);
    v.extend([
        bad(
            "RDX reserved flag bit 1",
            SeamRegs { rdx: 2, ..good },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX FORCE and reserved bit 63",
            SeamRegs {
                rdx: abi::UNBIND_FLAG_FORCE | 1 << 63,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "R8 a page with FORCE (asks nothing of the device)",
            SeamRegs {
                rdx: abi::UNBIND_FLAG_FORCE,
                ..good
            },
            inv(OPERAND_ID_R8),
        ),
    ]);
    v.extend(bad_request_page(good, |r, x| r.r8 = x, td, OPERAND_ID_R8));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn devif_error(w: &World<'_>) -> Setup {
    let (_, _, tdi) = mapped(w);
    tdi_only(tdi, TDX_SUCCESS)
}

fn devif_state(w: &World<'_>) -> Setup {
    let (_, _, tdi) = mapped(w);
    tdi_only(tdi, TDX_SUCCESS)
}

fn devif_check(w: &World<'_>) -> Setup {
    let (td, _, tdi) = mapped(w);
    let good = SeamRegs {
        r8: PAGES_A.0,
        ..on(tdi)
    };
    let mut v = bad_fid(good, tdi);
    v.extend(bad_request_page(good, |r, x| r.r8 = x, td, OPERAND_ID_R8));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn devif_set_td(w: &World<'_>) -> Setup {
    let (_, _, tdi) = tdi_world(w);
    let other = w.create_td();
    let good = SeamRegs {
        rcx: tdi,
        rdx: other,
        ..Default::default()
    };
    let mut v = bad_fid(good, tdi);
    // RDX 0 is no TD (the TDI is for none), not a bad TDR.
    v.extend(
        bad_tdr(good, |r, x| r.rdx = x, other, inv(OPERAND_ID_RDX))
            .into_iter()
            .filter(|b| b.regs.rdx != 0),
    );
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn zap_check(w: &World<'_>) -> Setup {
    tdi_world(w);
    let good = SeamRegs {
        rcx: BAR,
        rdx: 1024,
        ..Default::default()
    };
    let rcx = |v| SeamRegs { rcx: v, ..good };
    let rdx = |v| SeamRegs { rdx: v, ..good };
    let inval = TSM_INVALID_RANGE | u64::from(OPERAND_ID_RDX);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: vec![
            bad("RCX unaligned", rcx(BAR + 8), inv(OPERAND_ID_RCX)),
            bad("RCX past 2^52", rcx(BAR | PAST_52), range(OPERAND_ID_RCX)),
            bad("RDX 0 pages", rdx(0), inval),
            bad("RDX past the address space", rdx(u64::MAX), inval),
            bad(
                "RCX + RDX pages past 2^52",
                SeamRegs {
                    rcx: PAST_52 - 0x1000,
                    rdx: 2,
                    ..good
                },
                inval,
            ),
        ],
    }
}

/// A page operand of `good` (the register `set` writes, operand id `op`) out of range:
/// unaligned, past 2^52, outside host memory.
fn bad_page(what: &str, good: SeamRegs, set: fn(&mut SeamRegs, u64), at: u64, op: u32) -> Vec<Bad> {
    let with = |v: u64| {
        let mut r = good;
        set(&mut r, v);
        r
    };
    vec![
        bad(format!("{what}: unaligned"), with(at + 8), inv(op)),
        bad(format!("{what}: past 2^52"), with(at | PAST_52), range(op)),
        bad(
            format!("{what}: outside host memory"),
            with(OUTSIDE),
            range(op),
        ),
    ]
}

/// An HPA_ARRAY_T operand of `good` out of range: reserved bits, more pages than taken, a page
/// outside host memory, a TD's TDR page.
fn bad_array(good: SeamRegs, set: fn(&mut SeamRegs, u64), at: u64, tdr: u64, op: u32) -> Vec<Bad> {
    let with = |v: u64| {
        let mut r = good;
        set(&mut r, v);
        r
    };
    vec![
        bad(
            "array: reserved bit 0",
            with(abi::hpa_array(at, 1) | 1),
            inv(op),
        ),
        bad(
            "array: reserved bit 52",
            with(abi::hpa_array(at, 1) | 1 << 52),
            inv(op),
        ),
        bad("array: 9 pages", with(abi::hpa_array(at, 9)), inv(op)),
        bad(
            "array: outside host memory",
            with(abi::hpa_array(OUTSIDE, 1)),
            range(op),
        ),
        bad(
            "array: a TD's TDR page",
            with(abi::hpa_array(tdr, 1)),
            TDX_PAGE_METADATA_INCORRECT | u64::from(op),
        ),
    ]
}

fn spdm_connect(w: &World<'_>) -> Setup {
    let td = w.create_td();
    let dev = w.device_unlinked(3, BAR);
    let mut config = [0u8; 8];
    config[..4].copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
    config[5] = 0xFF;
    w.write(CONFIG_PAGE, &config);
    let good = connect(dev);
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.extend(bad_page(
        "RDX config",
        good,
        |r, x| r.rdx = x,
        CONFIG_PAGE,
        OPERAND_ID_RDX,
    ));
    v.extend(bad_page(
        "R8 response",
        good,
        |r, x| r.r8 = x,
        LINK_RESPONSE,
        OPERAND_ID_R8,
    ));
    v.extend(bad_page(
        "R9 request",
        good,
        |r, x| r.r9 = x,
        LINK_REQUEST,
        OPERAND_ID_R9,
    ));
    v.push(bad(
        "R9 the response page",
        SeamRegs {
            r9: LINK_RESPONSE,
            ..good
        },
        inv(OPERAND_ID_R9),
    ));
    v.push(bad(
        "R9 a TD's TDR page",
        SeamRegs { r9: td, ..good },
        TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_R9),
    ));
    v.extend(bad_array(
        good,
        |r, x| r.r10 = x,
        DEV_INFO_PAGE,
        td,
        OPERAND_ID_R10,
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SPDM_REQUEST,
        bad: v,
    }
}

fn spdm_disconnect(w: &World<'_>) -> Setup {
    let td = w.create_td();
    let dev = w.device_connected(3, BAR);
    let good = SeamRegs {
        rcx: dev,
        rdx: LINK_RESPONSE,
        r8: LINK_REQUEST,
        ..Default::default()
    };
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.extend(bad_page(
        "RDX response",
        good,
        |r, x| r.rdx = x,
        LINK_RESPONSE,
        OPERAND_ID_RDX,
    ));
    v.extend(bad_page(
        "R8 request",
        good,
        |r, x| r.r8 = x,
        LINK_REQUEST,
        OPERAND_ID_R8,
    ));
    v.push(bad(
        "R8 the response page",
        SeamRegs {
            r8: LINK_RESPONSE,
            ..good
        },
        inv(OPERAND_ID_R8),
    ));
    v.push(bad(
        "R8 a TD's TDR page",
        SeamRegs { r8: td, ..good },
        TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_R8),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn spdm_mng(w: &World<'_>) -> Setup {
    let td = w.create_td();
    let dev = w.device_connected(3, BAR);
    let null = platform_tdx::link::NULL_PAGE;
    let good = SeamRegs {
        rcx: dev,
        rdx: platform_tdx::link::SPDM_MNG_KEY_UPDATE,
        r8: null,
        r9: LINK_RESPONSE,
        r10: LINK_REQUEST,
        r11: null,
        ..Default::default()
    };
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.push(bad(
        "RDX op 3",
        SeamRegs { rdx: 3, ..good },
        inv(OPERAND_ID_RDX),
    ));
    v.push(bad(
        "RDX op 1 << 63",
        SeamRegs {
            rdx: 1 << 63,
            ..good
        },
        inv(OPERAND_ID_RDX),
    ));
    v.extend(bad_page(
        "R8 parameters",
        good,
        |r, x| r.r8 = x,
        host_page(SCRATCH),
        OPERAND_ID_R8,
    ));
    v.extend(bad_page(
        "R9 response",
        good,
        |r, x| r.r9 = x,
        LINK_RESPONSE,
        OPERAND_ID_R9,
    ));
    v.extend(bad_page(
        "R10 request",
        good,
        |r, x| r.r10 = x,
        LINK_REQUEST,
        OPERAND_ID_R10,
    ));
    v.push(bad(
        "R10 the response page",
        SeamRegs {
            r10: LINK_RESPONSE,
            ..good
        },
        inv(OPERAND_ID_R10),
    ));
    v.extend(bad_array(
        good,
        |r, x| r.r11 = x,
        host_page(SCRATCH),
        td,
        OPERAND_ID_R11,
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn ide_stream_create(w: &World<'_>) -> Setup {
    let td = w.create_td();
    let dev = w.device_connected(3, BAR);
    let good = create(dev, 3, BAR);
    let mut v = bad_handle(good, |r, x| r.rdx = x, dev, inv(OPERAND_ID_RDX));
    let reg = |what: &str, regs: SeamRegs, op: u32| bad(what, regs, inv(op));
    v.extend([
        reg(
            "RCX bit 9",
            SeamRegs {
                rcx: good.rcx | 1 << 9,
                ..good
            },
            OPERAND_ID_RCX,
        ),
        reg(
            "RCX a link stream",
            SeamRegs { rcx: 0, ..good },
            OPERAND_ID_RCX,
        ),
        reg(
            "R10 limit below the function",
            SeamRegs {
                r10: 0,
                r11: 1,
                ..good
            },
            OPERAND_ID_R10,
        ),
        reg(
            "R11 not valid",
            SeamRegs {
                r11: good.r11 & !1,
                ..good
            },
            OPERAND_ID_R11,
        ),
        reg(
            "R11 another segment",
            SeamRegs {
                r11: good.r11 | 7 << 24,
                ..good
            },
            OPERAND_ID_R11,
        ),
        reg(
            "R12 not valid",
            SeamRegs {
                r12: good.r12 & !1,
                ..good
            },
            OPERAND_ID_R12,
        ),
        reg(
            "R14 base above the limit",
            SeamRegs { r14: 1, ..good },
            OPERAND_ID_R12,
        ),
    ]);
    v.extend(bad_array(
        good,
        |r, x| r.r8 = x,
        ide_page(3),
        td,
        OPERAND_ID_R8,
    ));
    v.push(bad(
        "R8 the SPDM metadata page",
        SeamRegs {
            r8: abi::hpa_array(spdm_page(3), 1),
            ..good
        },
        TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_R8),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// A device connected with its stream created: (SPDM id, stream ID).
fn streamed(w: &World<'_>) -> (u64, u64) {
    w.create_td();
    let dev = w.device_connected(3, BAR);
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create(dev, 3, BAR)).rcx;
    (dev, stream)
}

fn ide_stream_km(w: &World<'_>) -> Setup {
    let (dev, stream) = streamed(w);
    let good = km(dev, stream, 0);
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.push(bad(
        "RDX another stream",
        SeamRegs {
            rdx: stream + 1,
            ..good
        },
        TDX_IDE_STREAM_NOT_CONFIGURED | u64::from(OPERAND_ID_RDX),
    ));
    v.push(bad(
        "R8 op 3",
        SeamRegs { r8: 3, ..good },
        inv(OPERAND_ID_R8),
    ));
    v.extend(bad_page(
        "R9 response",
        good,
        |r, x| r.r9 = x,
        LINK_RESPONSE,
        OPERAND_ID_R9,
    ));
    v.extend(bad_page(
        "R10 request",
        good,
        |r, x| r.r10 = x,
        LINK_REQUEST,
        OPERAND_ID_R10,
    ));
    v.push(bad(
        "R10 the response page",
        SeamRegs {
            r10: LINK_RESPONSE,
            ..good
        },
        inv(OPERAND_ID_R10),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn ide_stream_block(w: &World<'_>) -> Setup {
    let (dev, stream) = streamed(w);
    let good = SeamRegs {
        rcx: dev,
        rdx: stream,
        ..Default::default()
    };
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.push(bad(
        "RDX another stream",
        SeamRegs {
            rdx: stream + 1,
            ..good
        },
        TDX_IDE_STREAM_NOT_CONFIGURED | u64::from(OPERAND_ID_RDX),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn ide_stream_delete(w: &World<'_>) -> Setup {
    let (dev, stream) = streamed(w);
    let good = SeamRegs {
        rcx: dev,
        rdx: stream,
        ..Default::default()
    };
    w.ok(abi::TDH_IDE_STREAM_BLOCK, good);
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.push(bad(
        "RDX another stream",
        SeamRegs {
            rdx: stream + 1,
            ..good
        },
        TDX_IDE_STREAM_NOT_CONFIGURED | u64::from(OPERAND_ID_RDX),
    ));
    v.push(bad(
        "R8 the page itself (one page releases with 0)",
        SeamRegs {
            r8: ide_page(3),
            ..good
        },
        inv(OPERAND_ID_R8),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn spdm_bars(w: &World<'_>) -> Setup {
    w.create_td();
    let dev = w.spdm(3);
    w.write(PARAMS, bars(BAR).bytes());
    // Bad lists in scratch pages: reserved field, too many BARs, an entry's attributes, its
    // range ID.
    let mut reserved = bars(BAR);
    reserved.reserved = 1;
    let mut many = RangeList {
        count: 7,
        ..RangeList::default()
    };
    for (i, e) in many.ranges.iter_mut().take(7).enumerate() {
        *e = RangeEntry {
            first_page: BAR + (i as u64) * 0x40_0000,
            pages: 1,
            attributes: 0,
            range_id: 0,
        };
    }
    let mut attrs = bars(BAR);
    attrs.ranges[0].attributes = 1;
    let mut id = bars(BAR);
    id.ranges[0].range_id = 1;
    let host = RangeList::from_ranges(&[MmioRange::from_raw(HOST, 1).unwrap()]).unwrap();
    for (i, list) in [reserved, many, attrs, id, host].iter().enumerate() {
        w.write(host_page(SCRATCH + i as u64), list.bytes());
    }
    let good = SeamRegs {
        rcx: dev,
        rdx: PARAMS,
        ..Default::default()
    };
    let rdx = |v| SeamRegs { rdx: v, ..good };
    let mut v = bad_handle(good, |r, x| r.rcx = x, dev, inv(OPERAND_ID_RCX));
    v.extend([
        bad("RDX unaligned (+8)", rdx(PARAMS + 8), inv(OPERAND_ID_RDX)),
        bad(
            "RDX past 2^52",
            rdx(PARAMS | PAST_52),
            range(OPERAND_ID_RDX),
        ),
        bad(
            "RDX outside host memory",
            rdx(OUTSIDE),
            range(OPERAND_ID_RDX),
        ),
        bad(
            "RDX a list with its reserved field set",
            rdx(host_page(SCRATCH)),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX seven BARs",
            rdx(host_page(SCRATCH + 1)),
            TSM_TOO_MANY_RANGES | u64::from(OPERAND_ID_RDX),
        ),
        bad(
            "RDX a BAR with attributes",
            rdx(host_page(SCRATCH + 2)),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX a BAR with a range ID",
            rdx(host_page(SCRATCH + 3)),
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX a BAR over host memory (reserved at init)",
            rdx(host_page(SCRATCH + 4)),
            TSM_RESERVED_MEMORY | u64::from(OPERAND_ID_RDX),
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// Where the report of bound `tdi` puts host page `hpa`: TDG.MMIO.ACCEPT's RDX (the bind's
/// MMIO_REPORTING_OFFSET added).
fn reported(w: &World<'_>, tdi: u64, hpa: u64) -> u64 {
    let id = w.fw.devif_of(tdi as u32).unwrap().unwrap().0;
    hpa + w.fw.tsm().tdi(id).unwrap().mmio_offset.unwrap()
}

fn mmio_accept(w: &World<'_>) -> Setup {
    let (td, _, tdi) = mapped(w);
    let right = reported(w, tdi, BAR);
    let good = SeamRegs {
        rdx: right,
        ..on(pi(GPA, PageSize::Size2M))
    };
    let mut bads = bad_page_info(good, GPA, PageSize::Size2M);
    // RDX: anything but the page's reported address, the host address among them.
    let offset = TDX_MMIO_INVALID_HPA_OFFSET | u64::from(OPERAND_ID_RCX);
    for (what, rdx) in [
        ("reported address: 0", 0),
        ("reported address: the host address", BAR),
        ("reported address: the next page's", right + 0x1000),
        ("reported address: all ones", u64::MAX),
    ] {
        bads.push(bad(what, SeamRegs { rdx, ..good }, offset));
    }
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: bads,
    }
}

fn devif_rd(w: &World<'_>) -> Setup {
    let (td, _, tdi) = mapped(w);
    let good = SeamRegs {
        rdx: u64::from(abi::DEVIF_FIELD_TDISP_STATE),
        ..on(tdi)
    };
    let mut bads = bad_fid(good, tdi);
    for (what, rdx) in [
        ("field: 0", 0),
        ("field: not defined (0x87)", 0x87),
        ("field: reserved bit 8", good.rdx | 1 << 8),
        ("field: all ones", u64::MAX),
    ] {
        bads.push(bad(what, SeamRegs { rdx, ..good }, inv(OPERAND_ID_RDX)));
    }
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: bads,
    }
}

/// `mapped` with the TD's page and the TDI's DMA context accepted: the TD may start its TDI.
fn accepted(w: &World<'_>) -> (u64, u64) {
    let (td, _, tdi) = mapped(w);
    let out = w.tdcall(
        td,
        u64::from(abi::TDG_MMIO_ACCEPT),
        SeamRegs {
            rdx: reported(w, tdi, BAR),
            ..on(pi(GPA, PageSize::Size2M))
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    // The TDI's trusted DMA context: added by the host, accepted by the TD before START.
    let id = w.fw.devif_of(tdi as u32).unwrap().unwrap().0;
    let rid = w.fw.tsm().tdi(id).unwrap().iface.requester_id();
    w.ok(
        abi::TDH_DMAR_ADD,
        SeamRegs {
            rcx: platform_tdx::dmar::dmar_idx(rid),
            rdx: td,
            r8: platform_tdx::dmar::add_qword0(4),
            r9: platform_tdx::dmar::ADD_QWORD1,
            ..Default::default()
        },
    );
    let out = w.tdcall(td, u64::from(abi::TDG_DMAR_ACCEPT), on(tdi));
    assert_eq!(out.rax, TDX_SUCCESS);
    (td, tdi)
}

/// TDG.DEVIF.REQUEST START for `tdi`.
fn start(tdi: u64) -> SeamRegs {
    SeamRegs {
        rdx: u64::from(abi::TDISP_START_INTERFACE),
        ..on(tdi)
    }
}

fn tdg_devif_request(w: &World<'_>) -> Setup {
    let (td, tdi) = accepted(w);
    let good = start(tdi);
    let mut bads = bad_fid(good, tdi);
    for (what, rdx) in [
        ("RDX code 0", 0),
        ("RDX GET_REPORT (ours: the firmware read the report)", 0x84),
        ("RDX GET_STATE (ours)", 0x85),
        ("RDX LOCK (the host's)", 0x83),
        (
            "RDX START with no_fw_update",
            good.rdx | abi::REQ_IN_NO_FW_UPDATE,
        ),
        ("RDX START with td_flag", good.rdx | abi::REQ_IN_TD_FLAG),
        ("RDX START with reserved bit 9", good.rdx | 1 << 9),
    ] {
        bads.push(bad(what, SeamRegs { rdx, ..good }, inv(OPERAND_ID_RDX)));
    }
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: bads,
    }
}

fn tdg_devif_response(w: &World<'_>) -> Setup {
    let (td, tdi) = accepted(w);
    // The TD's START, fetched and answered by the host (td_flag).
    assert_eq!(
        w.tdcall(td, u64::from(abi::TDG_DEVIF_REQUEST), start(tdi))
            .rax,
        TDX_SUCCESS
    );
    let fetch = SeamRegs {
        rcx: tdi,
        rdx: abi::devif_req_in(0, false, true),
        r8: PAGES_A.0,
        ..Default::default()
    };
    let out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), fetch);
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    w.answer_into_response_page(tdi, out.rcx).unwrap();
    let answered = w.call(
        u64::from(abi::TDH_DEVIF_RESPONSE),
        SeamRegs {
            rcx: tdi,
            rdx: abi::devif_rsp_in(PAGES_A.1, true),
            r8: PAGES_A.0,
            ..Default::default()
        },
    );
    assert_eq!(answered.rax, TDX_SUCCESS);
    let good = on(tdi);
    let mut bads = bad_fid(good, tdi);
    bads.push(bad(
        "RDX a GPA (ours: nothing to copy)",
        SeamRegs { rdx: GPA, ..good },
        inv(OPERAND_ID_RDX),
    ));
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: bads,
    }
}

// ---- trusted DMA (src/dmar.rs) ------------------------------------------------------------

/// `dmar_idx_t` (RCX of TDH.DMAR.*) of the PASID entry of the TDI on bus `bus` (IOMMU 0,
/// PASID 0).
fn idx(bus: u8) -> u64 {
    dmar::dmar_idx(rid(bus))
}

/// The wait descriptors' status word: a scratch page of shared host memory.
const WAIT_STATUS: u64 = host_page(SCRATCH);

/// A second device on bus 4 (its own BAR and stream) with a TDI for the first TD relaying
/// through `PAGES_B`, never bound: the TDI, by function ID.
fn unbound_second(w: &World<'_>) -> u64 {
    let dev = w.device(4, BAR_4);
    w.create_tdi(dev, rid(4), PAGES_B)
}

/// `bound` with the TDI's PASID entry added (PENDING).
fn dmar_added(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = bound(w);
    w.ok(abi::TDH_DMAR_ADD, dmar_add_regs(idx(3), td));
    (td, dev, tdi)
}

/// `dmar_added` with the entry accepted by the TD: present, translating through its S-EPT.
fn dmar_present(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = dmar_added(w);
    assert_eq!(
        w.tdcall(td, u64::from(abi::TDG_DMAR_ACCEPT), on(tdi)).rax,
        TDX_SUCCESS
    );
    (td, dev, tdi)
}

/// `dmar_present` with the device's IDE stream cut by the host (TDH.IDE.STREAM.BLOCK of its
/// stream; ours: stream ID == SPDM id): the TDI in ERROR, its entry still present, and the
/// host may tear the entry down.
fn dmar_cut(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = dmar_present(w);
    w.ok(
        abi::TDH_IDE_STREAM_BLOCK,
        SeamRegs {
            rcx: dev,
            rdx: dev,
            ..Default::default()
        },
    );
    (td, dev, tdi)
}

/// TDH.IQ.INV.REQUEST INV_REQ_PASIDTE of the bus-3 TDI's entry on IOMMU 0: a fenced wait
/// descriptor writing 1 to [`WAIT_STATUS`].
fn pasidte_request() -> SeamRegs {
    SeamRegs {
        rcx: 0,
        rdx: dmar::INV_REQ_PASIDTE,
        r8: u64::from(rid(3).routing_id()),
        r9: dmar::WAIT_DESC_HOST | 1 << 32,
        r10: WAIT_STATUS,
        ..Default::default()
    }
}

/// `dmar_cut` with the entry blocked, its invalidation requested and processed: the host may
/// remove it.
fn dmar_invalidated(w: &World<'_>) -> (u64, u64, u64) {
    let (td, dev, tdi) = dmar_cut(w);
    w.ok(abi::TDH_DMAR_BLOCK, on(idx(3)));
    w.ok(abi::TDH_IQ_INV_REQUEST, pasidte_request());
    w.ok(abi::TDH_IQ_INV_PROCESS, on(0));
    assert_eq!(entry_state(w), (dmar::MAP_BLOCKED, dmar::INV_DONE));
    (td, dev, tdi)
}

/// RCX `dmar_idx_t` of `good` malformed (`TDX_OPERAND_INVALID` + RCX) or naming an entry of
/// no TDI (`TDX_DMAR_INVALID_MAPPING_STATE` + RCX): the checks every TDH.DMAR leaf shares.
fn bad_idx(good: SeamRegs) -> Vec<Bad> {
    let with = |v: u64| SeamRegs { rcx: v, ..good };
    let at = idx(3);
    let free = TDX_DMAR_INVALID_MAPPING_STATE | u64::from(OPERAND_ID_RCX);
    vec![
        bad(
            "dmar_idx: level 1 (not a PASID entry)",
            with(at | 1),
            inv(OPERAND_ID_RCX),
        ),
        bad("dmar_idx: level 7", with(at | 7), inv(OPERAND_ID_RCX)),
        bad(
            "dmar_idx: reserved bit 3",
            with(at | 1 << 3),
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "dmar_idx: reserved bit 11",
            with(at | 1 << 11),
            inv(OPERAND_ID_RCX),
        ),
        bad("dmar_idx: PASID 1", with(at | 1 << 12), inv(OPERAND_ID_RCX)),
        bad(
            "dmar_idx: PASID bit 31",
            with(at | 1 << 31),
            inv(OPERAND_ID_RCX),
        ),
        bad("dmar_idx: all ones", with(u64::MAX), inv(OPERAND_ID_RCX)),
        bad("dmar_idx: a RID with no TDI (bus 5)", with(idx(5)), free),
        bad(
            "dmar_idx: function 1 of bus 3, no TDI",
            with(at | 1 << 32),
            free,
        ),
        bad(
            "dmar_idx: IOMMU 1 (segment 1), no TDI",
            with(at | 1 << 48),
            free,
        ),
    ]
}

fn dmar_add(w: &World<'_>) -> Setup {
    let (td, _, _) = bound(w);
    let other = w.create_td();
    unbound_second(w);
    let good = dmar_add_regs(idx(3), td);
    let mut v = bad_idx(good);
    v.extend(bad_tdr(good, |r, x| r.rdx = x, td, inv(OPERAND_ID_RDX)));
    let q0 = good.r8;
    for (what, r8) in [
        ("AW of a 5-level walk", dmar::add_qword0(5)),
        ("AW 0", dmar::ADD_QWORD0),
        ("present", q0 | dmar::PTE_P),
        ("FPD (bit 1)", q0 | 1 << 1),
        ("SLEE clear", q0 & !dmar::PTE_SLEE),
        ("PGTT first-level (001b)", q0 & !dmar::PTE_PGTT_SL | 1 << 6),
        ("SLADE (bit 9)", q0 | 1 << 9),
        ("the module's BLOCKED bit", q0 | dmar::PTE_SW_BLOCKED),
        ("an SLPTPTR chosen", q0 | 0x20_0000_0000),
        ("the module's PENDING bit", q0 | dmar::PTE_SW_PENDING),
        ("0", 0),
    ] {
        v.push(bad(
            format!("R8 qword 0: {what}"),
            SeamRegs { r8, ..good },
            inv(OPERAND_ID_R8),
        ));
    }
    let q1 = good.r9;
    for (what, r9) in [
        ("a DID chosen", q1 | 5),
        ("the module's DID bit", q1 | dmar::DID_TD_BIT),
        (
            "an invalidation state",
            q1 | dmar::INV_DONE << dmar::PTE_INV_SHIFT,
        ),
        ("PWSNP clear", q1 & !dmar::PTE_PWSNP),
        ("EMT uncached", q1 & !dmar::PTE_EMT_WB),
        ("0", 0),
    ] {
        v.push(bad(
            format!("R9 qword 1: {what}"),
            SeamRegs { r9, ..good },
            inv(OPERAND_ID_R9),
        ));
    }
    v.extend([
        bad(
            "RDX a TD not the TDI's owner",
            SeamRegs { rdx: other, ..good },
            TDX_MMIO_DEVIF_OWNER_MISMATCH | u64::from(OPERAND_ID_RDX),
        ),
        bad(
            "RCX the entry of a TDI not bound",
            SeamRegs {
                rcx: idx(4),
                ..good
            },
            TDX_DEVIF_INVALID_STATE | u64::from(OPERAND_ID_RCX),
        ),
        // The module's order: RCX, RDX, the entry, then the entry's (and TDI's) state.
        bad(
            "RCX and RDX bad: RCX first",
            SeamRegs {
                rcx: idx(3) | 1,
                rdx: 0,
                ..good
            },
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "RDX and R8 bad: RDX first",
            SeamRegs {
                rdx: 0,
                r8: 0,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "R8 and R9 bad: R8 first",
            SeamRegs {
                r8: 0,
                r9: 0,
                ..good
            },
            inv(OPERAND_ID_R8),
        ),
        bad(
            "R13 and R14 bad: R13 first",
            SeamRegs {
                r13: 1,
                r14: 1,
                ..good
            },
            inv(OPERAND_ID_R13),
        ),
        bad(
            "R14 bad and RCX a RID with no TDI: R14 first (the entry before its state)",
            SeamRegs {
                rcx: idx(5),
                r14: 1,
                ..good
            },
            inv(OPERAND_ID_R14),
        ),
        bad(
            "R9 bad and RDX not the owner: R9 first",
            SeamRegs {
                rdx: other,
                r9: 0,
                ..good
            },
            inv(OPERAND_ID_R9),
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn dmar_read(w: &World<'_>) -> Setup {
    dmar_present(w);
    on_the_entry(w, "(no entry)", TDX_DMAR_ENTRY_NOT_PRESENT)
}

fn dmar_block(w: &World<'_>) -> Setup {
    dmar_cut(w);
    // The cut left the entry present (the ERROR blocks it later): the good BLOCK blocks it.
    assert_eq!(entry_state(w), (dmar::MAP_PRESENT, dmar::INV_PENDING));
    on_the_entry(w, "(FREE)", TDX_DMAR_INVALID_MAPPING_STATE)
}

fn dmar_remove(w: &World<'_>) -> Setup {
    dmar_invalidated(w);
    on_the_entry(w, "(FREE)", TDX_DMAR_INVALID_MAPPING_STATE)
}

/// A SEAMCALL naming bus 3's PASID entry in RCX (succeeding), refused on a bad index and,
/// with `unbound` (+ RCX), on the entry of bus 4's TDI, which is not bound (`why` says how).
fn on_the_entry(w: &World<'_>, why: &str, unbound: u64) -> Setup {
    unbound_second(w);
    let good = on(idx(3));
    let mut v = bad_idx(good);
    v.push(bad(
        format!("RCX the entry of a TDI not bound {why}"),
        on(idx(4)),
        unbound | u64::from(OPERAND_ID_RCX),
    ));
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// TDH.IQ.INV.REQUEST's checks both forms share: RDX the type (`TDX_OPERAND_INVALID` + RDX),
/// RCX the IOMMU (+ RCX), the wait descriptor R9 (+ R9), its status address R10 (+ R10), and
/// the order of RDX, RCX, then R9..R12 (its qwords 2 and 3, R11 and R12, in [`RESERVED_BITS`]).
fn bad_iq_request(good: SeamRegs) -> Vec<Bad> {
    let mut v = Vec::new();
    for (what, rdx) in [
        ("INV_REQ_RTE (1)", 1),
        ("INV_REQ_CTE (2)", 2),
        ("INV_REQ_PDE (3)", 3),
        ("INV_REQ_TD (5) without a pool_size", 5),
        ("type 6", 6),
        ("type 0xFFFF_FFFF", 0xffff_ffff),
        ("reserved bit 32", good.rdx | 1 << 32),
        ("reserved bit 63", good.rdx | 1 << 63),
    ] {
        v.push(bad(
            format!("RDX {what}"),
            SeamRegs { rdx, ..good },
            inv(OPERAND_ID_RDX),
        ));
    }
    for (what, rcx) in [
        ("bit 16", 1 << 16),
        ("bit 63", 1 << 63),
        ("all ones", u64::MAX),
    ] {
        v.push(bad(
            format!("RCX iommu_id {what}"),
            SeamRegs { rcx, ..good },
            inv(OPERAND_ID_RCX),
        ));
    }
    let d = good.r9;
    for (what, r9) in [
        ("without FN", d & !dmar::WAIT_DESC_FN),
        ("type 4", d & !0xf | 4),
        ("type 0", d & !0xf),
        ("high type bit 9", d | 1 << 9),
        ("high type bit 11", d | 1 << 11),
        ("PD (bit 7)", d | 1 << 7),
        ("reserved bit 8", d | 1 << 8),
        ("reserved bit 12", d | 1 << 12),
        ("reserved bit 31", d | 1 << 31),
        ("0", 0),
    ] {
        v.push(bad(
            format!("R9 wait descriptor {what}"),
            SeamRegs { r9, ..good },
            inv(OPERAND_ID_R9),
        ));
    }
    let end = host_page(HOST_PAGES as u64);
    for (what, r10) in [
        ("unaligned (+1)", good.r10 + 1),
        ("unaligned (+2)", good.r10 + 2),
        ("a KeyID (5)", good.r10 | 5 << td::KEYID_SHIFT),
        ("past 2^52", good.r10 | PAST_52),
        ("outside host memory", OUTSIDE),
        ("just past host memory", end),
        ("0 (no host memory)", 0),
        ("all ones but 1:0", !3),
    ] {
        v.push(bad(
            format!("R10 status address {what}"),
            SeamRegs { r10, ..good },
            inv(OPERAND_ID_R10),
        ));
    }
    v.extend([
        bad(
            "RDX and RCX bad: RDX first",
            SeamRegs {
                rdx: 1,
                rcx: 1 << 16,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RCX and R9 bad: RCX first",
            SeamRegs {
                rcx: 1 << 16,
                r9: 0,
                ..good
            },
            inv(OPERAND_ID_RCX),
        ),
        bad(
            "R9 and R10 bad: R9 first",
            SeamRegs {
                r9: 0,
                r10: 0,
                ..good
            },
            inv(OPERAND_ID_R9),
        ),
        bad(
            "R10 and R11 bad: R10 first",
            SeamRegs {
                r10: 0,
                r11: 1,
                ..good
            },
            inv(OPERAND_ID_R10),
        ),
        bad(
            "R11 and R12 bad: R11 first",
            SeamRegs {
                r11: 1,
                r12: 1,
                ..good
            },
            inv(OPERAND_ID_R11),
        ),
    ]);
    v
}

/// The bus-3 entry's `dmar_state_info_t` (TDH.DMAR.READ RDX): (map_sts, inv_sts).
fn entry_state(w: &World<'_>) -> (u64, u64) {
    let rdx = w.ok(abi::TDH_DMAR_READ, on(idx(3))).rdx;
    read_state(rdx)
}

fn iq_request_pasidte(w: &World<'_>) -> Setup {
    dmar_cut(w);
    w.ok(abi::TDH_DMAR_BLOCK, on(idx(3)));
    // Blocked, its invalidation not requested: the good request queues it.
    assert_eq!(entry_state(w), (dmar::MAP_BLOCKED, dmar::INV_PENDING));
    unbound_second(w);
    let good = pasidte_request();
    let mut v = bad_iq_request(good);
    let free = TDX_DMAR_INVALID_MAPPING_STATE | u64::from(OPERAND_ID_R8);
    let r8 = good.r8;
    for (what, r8, expect) in [
        ("reserved bit 16", r8 | 1 << 16, inv(OPERAND_ID_R8)),
        ("reserved bit 31", r8 | 1 << 31, inv(OPERAND_ID_R8)),
        ("PASID 1", r8 | 1 << 32, inv(OPERAND_ID_R8)),
        ("PASID bit 51", r8 | 1 << 51, inv(OPERAND_ID_R8)),
        ("reserved bit 52", r8 | PAST_52, inv(OPERAND_ID_R8)),
        ("reserved bit 63", r8 | 1 << 63, inv(OPERAND_ID_R8)),
        (
            "a RID with no TDI (bus 5)",
            u64::from(rid(5).routing_id()),
            free,
        ),
        (
            "the RID of a TDI not bound (its entry FREE)",
            u64::from(rid(4).routing_id()),
            free,
        ),
    ] {
        v.push(bad(
            format!("R8 rid_pasid {what}"),
            SeamRegs { r8, ..good },
            expect,
        ));
    }
    v.extend([
        bad(
            "RCX IOMMU 1 (segment 1): no TDI of that RID",
            SeamRegs { rcx: 1, ..good },
            free,
        ),
        bad(
            "R8 and R9 bad: R8 first",
            SeamRegs {
                r8: r8 | 1 << 16,
                r9: 0,
                ..good
            },
            inv(OPERAND_ID_R8),
        ),
        bad(
            "R8 a RID with no TDI and R9 bad: the entry's state first",
            SeamRegs {
                r8: u64::from(rid(5).routing_id()),
                r9: 0,
                ..good
            },
            free,
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// `dmar_present` with a TDH.MEM.TRACK of the TD: IOMMU 0 owes its domain an IOTLB
/// invalidation. (TD, a second TD without trusted DMA.)
fn iotlb_owed(w: &World<'_>) -> (u64, u64) {
    let (td, _, _) = dmar_present(w);
    let other = w.create_td();
    w.ok(abi::TDH_MEM_TRACK, on(td));
    (td, other)
}

fn iq_request_iotlb(w: &World<'_>) -> Setup {
    let (td, other) = iotlb_owed(w);
    let good = dmar::iotlb_request_regs(0, td, WAIT_STATUS, 1);
    let mut v = bad_iq_request(good);
    v.extend(bad_tdr(good, |r, x| r.r8 = x, td, inv(OPERAND_ID_R8)));
    v.extend([
        bad(
            "RCX IOMMU 1, which owes the TD nothing",
            SeamRegs { rcx: 1, ..good },
            TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        ),
        bad(
            "R8 a TD without trusted DMA",
            SeamRegs { r8: other, ..good },
            TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        ),
        bad(
            "R8 and R9 bad: R8 first",
            SeamRegs {
                r8: 0,
                r9: 0,
                ..good
            },
            inv(OPERAND_ID_R8),
        ),
        bad(
            "R8 a TD owed nothing and R9 bad: the tracking first",
            SeamRegs {
                r8: other,
                r9: 0,
                ..good
            },
            TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

/// The TD's page of descriptors for TDG.IQ.INV.REQUEST and its wait's status word (ours: this
/// model reaches a TD's memory at the GPA itself), and a page of zeros (no valid descriptor).
const TD_DESCS: u64 = host_page(SCRATCH + 1);
const TD_STATUS: u64 = host_page(SCRATCH + 2);
const ZEROS: u64 = host_page(SCRATCH + 3);

/// `dmar_present`'s TD with its page of two descriptors written: a domain-selective IOTLB
/// invalidation and a wait writing 1 to [`TD_STATUS`].
fn td_descs(w: &World<'_>) -> u64 {
    let (td, _, _) = dmar_present(w);
    let domain = dmar::INV_DESC_IOTLB
        | dmar::IOTLB_G_DOMAIN << dmar::IOTLB_G_SHIFT
        | dmar::IOTLB_DW
        | dmar::IOTLB_DR;
    let descs = [
        [domain, 0, 0, 0],
        [dmar::WAIT_DESC_HOST | 1 << 32, TD_STATUS, 0, 0],
    ];
    let bytes: Vec<u8> = descs
        .iter()
        .flatten()
        .flat_map(|q| q.to_le_bytes())
        .collect();
    w.write(TD_DESCS, &bytes);
    td
}

fn td_request_regs() -> SeamRegs {
    SeamRegs {
        rcx: 2,
        rdx: TD_DESCS,
        ..Default::default()
    }
}

fn iq_request_td(w: &World<'_>) -> Setup {
    let td = td_descs(w);
    let asked = w.tdcall(td, u64::from(abi::TDG_IQ_INV_REQUEST), td_request_regs());
    assert_eq!((asked.rax, asked.rcx), (TDX_SUCCESS, 1));
    let other = w.create_td();
    let good = SeamRegs {
        rdx: dmar::INV_REQ_TD | 1 << dmar::INV_REQ_POOL_SHIFT,
        ..dmar::iotlb_request_regs(0, td, WAIT_STATUS, 1)
    };
    let mut v = bad_iq_request(good);
    // Bit 32 is INV_REQ_TD's pool_size: set in the good set.
    v.retain(|b| b.what != "RDX reserved bit 32");
    v.extend(bad_tdr(good, |r, x| r.r8 = x, td, inv(OPERAND_ID_R8)));
    let not_required = TDX_GUEST_INV_NOT_REQUIRED | u64::from(OPERAND_ID_R8);
    v.extend([
        bad(
            "RDX pool_size 0",
            SeamRegs {
                rdx: dmar::INV_REQ_TD,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RDX reserved bit 48",
            SeamRegs {
                rdx: good.rdx | 1 << 48,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "RCX IOMMU 1, which the TD's request does not need",
            SeamRegs { rcx: 1, ..good },
            not_required,
        ),
        bad(
            "R8 a TD with no request",
            SeamRegs { r8: other, ..good },
            not_required,
        ),
        bad(
            "R8 a TD with no request and R9 bad: the request first",
            SeamRegs {
                r8: other,
                r9: 0,
                ..good
            },
            not_required,
        ),
    ]);
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn tdg_iq_inv_request(w: &World<'_>) -> Setup {
    let td = td_descs(w);
    let good = td_request_regs();
    let mut v = Vec::new();
    for (what, rcx) in [
        ("0", 0),
        ("129 (past a page)", 129),
        ("bit 32", 1 << 32),
        ("all ones", u64::MAX),
    ] {
        v.push(bad(
            format!("RCX count {what}"),
            SeamRegs { rcx, ..good },
            inv(OPERAND_ID_RCX),
        ));
    }
    for (what, rdx, expect) in [
        ("unaligned (+8)", TD_DESCS + 8, inv(OPERAND_ID_RDX)),
        ("unaligned (+0x800)", TD_DESCS + 0x800, inv(OPERAND_ID_RDX)),
        ("shared (bit 47)", TD_DESCS | 1 << 47, inv(OPERAND_ID_RDX)),
        ("past 2^48", TD_DESCS | PAST_48, inv(OPERAND_ID_RDX)),
        ("past 2^52", TD_DESCS | PAST_52, inv(OPERAND_ID_RDX)),
        ("outside host memory", OUTSIDE, range(OPERAND_ID_RDX)),
        ("0 (no memory)", 0, range(OPERAND_ID_RDX)),
        (
            "a page of zeros (type 0)",
            ZEROS,
            TDX_GUEST_INV_INVALID_DESC,
        ),
    ] {
        v.push(bad(
            format!("RDX descriptor page {what}"),
            SeamRegs { rdx, ..good },
            expect,
        ));
    }
    v.extend([
        bad(
            "RCX 3: the wait (index 1) is then not last",
            SeamRegs { rcx: 3, ..good },
            TDX_GUEST_INV_INVALID_DESC | 1,
        ),
        bad(
            "RCX 0 and RDX bad: RCX first",
            SeamRegs {
                rcx: 0,
                rdx: 1,
                ..good
            },
            inv(OPERAND_ID_RCX),
        ),
    ]);
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn iq_process(w: &World<'_>) -> Setup {
    let (td, _) = iotlb_owed(w);
    w.ok(
        abi::TDH_IQ_INV_REQUEST,
        dmar::iotlb_request_regs(0, td, WAIT_STATUS, 1),
    );
    let good = on(0);
    let mut v = Vec::new();
    for (what, rcx) in [
        ("bit 16", 1 << 16),
        ("bit 32", 1 << 32),
        ("bit 63", 1 << 63),
        ("all ones", u64::MAX),
    ] {
        v.push(bad(
            format!("RCX iommu_id {what}"),
            on(rcx),
            inv(OPERAND_ID_RCX),
        ));
    }
    Setup {
        tdcall: None,
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

fn dmar_accept(w: &World<'_>) -> Setup {
    let (td, _, tdi) = dmar_added(w);
    let second = unbound_second(w);
    let good = on(tdi);
    let mut v = bad_fid(good, tdi);
    for (what, rdx) in [
        ("vm_idx 1 (an L2 VM)", 1),
        ("vm_idx 0xFF", 0xff),
        ("PASID 1", 1 << 8),
        ("PASID bit 27", 1 << 27),
        ("reserved bit 28", 1 << 28),
        ("reserved bit 63", 1 << 63),
    ] {
        v.push(bad(
            format!("RDX dmar_target {what}"),
            SeamRegs { rdx, ..good },
            inv(OPERAND_ID_RDX),
        ));
    }
    v.extend([
        bad(
            "RCX a TDI not bound",
            on(second),
            TDX_DEVIF_TDISP_INVALID_STATE | u64::from(OPERAND_ID_RCX),
        ),
        bad(
            "RDX and R8 bad: RDX first",
            SeamRegs {
                rdx: 1,
                r8: 1,
                ..good
            },
            inv(OPERAND_ID_RDX),
        ),
        bad(
            "R14 and RCX bad: R14 first",
            SeamRegs {
                rcx: tdi | 7,
                r14: 1,
                ..good
            },
            inv(OPERAND_ID_R14),
        ),
        bad(
            "R8 and R9 bad: R8 first",
            SeamRegs {
                r8: 1,
                r9: 1,
                ..good
            },
            inv(OPERAND_ID_R8),
        ),
    ]);
    Setup {
        tdcall: Some(td),
        good,
        good_status: TDX_SUCCESS,
        bad: v,
    }
}

// ---- the driver -----------------------------------------------------------------------------

/// Guest leaves: the calling TD's TDR names no TD, `TDX_OPERAND_INVALID` + `OPERAND_ID_TDR`.
fn bad_callers(td: u64) -> [(&'static str, u64); 4] {
    [
        ("caller: a host page no TD has", host_page(TDR_FIRST + 3)),
        ("caller: unaligned TDR", td + 8),
        ("caller: TDR past 2^52", td | PAST_52),
        ("caller: all ones", u64::MAX),
    ]
}

/// One bad call in a fresh world of `row`: its status, the registers it wrote, and whether
/// state moved.
fn refusal(row: &Row, call: &Case) -> Result<(), String> {
    let mut frames = vec![Page::ZERO; 32];
    let w = World::new(&mut frames);
    // The world's own good set is not needed: the case carries its registers.
    let _ = (row.world)(&w);
    let before = w.image();
    let out = match call.caller {
        Some(td) => w.tdcall(td, call.rax, call.regs),
        None => w.call(call.rax, call.regs),
    };
    let mut wrong = Vec::new();
    if out.rax != call.expect {
        wrong.push(format!(
            "status {:#x}, expected {:#x}",
            out.rax, call.expect
        ));
    }
    let rax = call.rax;
    if (SeamRegs { rax, ..out }) != (SeamRegs { rax, ..call.regs }) {
        wrong.push(format!("registers written: {out:x?}"));
    }
    if w.image() != before {
        wrong.push("state changed".into());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// One bad call: what it is, the caller (TDCALL), the registers, RAX, the status expected.
struct Case {
    what: String,
    caller: Option<u64>,
    regs: SeamRegs,
    rax: u64,
    expect: u64,
}

#[test]
fn every_good_register_set_succeeds() {
    for row in rows() {
        let mut frames = vec![Page::ZERO; 32];
        let w = World::new(&mut frames);
        let setup = row.setup(&w);
        let rax = u64::from(row.leaf);
        let out = match setup.tdcall {
            Some(td) => w.tdcall(td, rax, setup.good),
            None => w.call(rax, setup.good),
        };
        assert_eq!(
            out.rax,
            setup.good_status,
            "{}: the good register set got {:#x}",
            row.title(),
            out.rax
        );
    }
}

#[test]
fn every_register_of_every_leaf_out_of_range() {
    let mut failures: Vec<(String, String, String)> = Vec::new();
    let mut cases = 0;
    for row in rows() {
        // The case list, from a throw-away world (worlds are deterministic).
        let mut frames = vec![Page::ZERO; 32];
        let probe = World::new(&mut frames);
        let setup = row.setup(&probe);
        let leaf = u64::from(row.leaf);
        let mut list: Vec<Case> = setup
            .bad
            .iter()
            .map(|b| Case {
                what: b.what.clone(),
                caller: setup.tdcall,
                regs: b.regs,
                rax: leaf,
                expect: b.expect,
            })
            .collect();
        for (what, bits) in rax_bad() {
            list.push(Case {
                what: what.into(),
                caller: setup.tdcall,
                regs: setup.good,
                rax: leaf | bits,
                expect: inv(OPERAND_ID_RAX),
            });
        }
        if let Some(td) = setup.tdcall {
            for (what, caller) in bad_callers(td) {
                list.push(Case {
                    what: what.into(),
                    caller: Some(caller),
                    regs: setup.good,
                    rax: leaf,
                    expect: inv(OPERAND_ID_TDR),
                });
            }
        }
        drop(setup);
        for case in list {
            cases += 1;
            if let Err(why) = refusal(&row, &case) {
                failures.push((
                    row.title(),
                    case.what,
                    format!("{why} (regs {:x?})", case.regs),
                ));
            }
        }
    }
    let known: Vec<(String, String)> = KNOWN_GAPS
        .iter()
        .map(|(l, w)| (l.to_string(), w.to_string()))
        .collect();
    let got: Vec<(String, String)> = failures
        .iter()
        .map(|(l, w, _)| (l.clone(), w.clone()))
        .collect();
    let new: Vec<_> = failures
        .iter()
        .filter(|(l, w, _)| !known.contains(&(l.clone(), w.clone())))
        .collect();
    let fixed: Vec<_> = known.iter().filter(|k| !got.contains(k)).collect();
    for (l, w, why) in &failures {
        eprintln!("{l}: {w}: {why}");
    }
    assert!(
        new.is_empty() && fixed.is_empty(),
        "{cases} refusals; not as documented (not in KNOWN_GAPS): {new:#?}\n\
         in KNOWN_GAPS but now as documented (drop them): {fixed:#?}"
    );
}

/// Every `pub const TDH_*/TDG_*/TSM_*: u16` of `src/abi.rs`, `src/devif.rs`, `src/dmar.rs`,
/// `src/link.rs` and `src/td.rs` is a row (the crate has no list of
/// its leaves to ask instead).
#[test]
fn every_leaf_constant_has_a_row() {
    let src = concat!(
        include_str!("../src/abi.rs"),
        include_str!("../src/devif.rs"),
        include_str!("../src/dmar.rs"),
        include_str!("../src/link.rs"),
        include_str!("../src/td.rs")
    );
    let names: Vec<&str> = rows().iter().map(|r| r.name).collect();
    let mut missing = Vec::new();
    for line in src.lines() {
        let Some(rest) = line.trim_start().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, ty)) = rest.split_once(':') else {
            continue;
        };
        let leafy = ["TDH_", "TDG_", "TSM_"].iter().any(|p| name.starts_with(p));
        if leafy
            && ty.trim_start().starts_with("u16")
            && !NOT_LEAVES.contains(&name)
            && !names.contains(&name)
        {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "leaves without a row: {missing:?}");
    // And no RESERVED_BITS line is for a leaf without a row (it would never be called).
    for (leaf, op, _) in RESERVED_BITS {
        assert!(
            rows().iter().any(|r| r.leaf == *leaf),
            "RESERVED_BITS: leaf {leaf:#x} (R{op}) has no row"
        );
    }
    // And no row names a leaf constant that is gone.
    for row in rows() {
        assert!(
            src.contains(&format!("pub const {}: u16", row.name)),
            "{} is a row but no leaf constant",
            row.name
        );
    }
}

/// A register no bad case of a row touches is one the leaf does not read: junk there leaves
/// the good call's status as it was (the TDX module ignores registers a leaf does not take).
/// A leaf that refuses junk in such a register needs a bad case for it in its row.
#[test]
fn registers_a_leaf_does_not_read_are_ignored() {
    type Reg = fn(&mut SeamRegs) -> &mut u64;
    let regs: [(&str, Reg); 9] = [
        ("RCX", |r| &mut r.rcx),
        ("RDX", |r| &mut r.rdx),
        ("R8", |r| &mut r.r8),
        ("R9", |r| &mut r.r9),
        ("R10", |r| &mut r.r10),
        ("R11", |r| &mut r.r11),
        ("R12", |r| &mut r.r12),
        ("R13", |r| &mut r.r13),
        ("R14", |r| &mut r.r14),
    ];
    let mut wrong = Vec::new();
    for row in rows() {
        let mut frames = vec![Page::ZERO; 32];
        let probe = World::new(&mut frames);
        let setup = row.setup(&probe);
        let mut junk = setup.good;
        let mut unread = Vec::new();
        for (name, get) in regs {
            let read = setup.bad.iter().any(|b| {
                let (mut a, mut g) = (b.regs, setup.good);
                *get(&mut a) != *get(&mut g)
            });
            if !read {
                *get(&mut junk) = 0xdead_beef_0000_1000;
                unread.push(name);
            }
        }
        drop(setup);
        let mut frames = vec![Page::ZERO; 32];
        let w = World::new(&mut frames);
        let setup = row.setup(&w);
        let rax = u64::from(row.leaf);
        let out = match setup.tdcall {
            Some(td) => w.tdcall(td, rax, junk),
            None => w.call(rax, junk),
        };
        if out.rax != setup.good_status {
            wrong.push(format!(
                "{}: junk in {unread:?} got {:#x}, the good set {:#x}",
                row.title(),
                out.rax,
                setup.good_status
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
