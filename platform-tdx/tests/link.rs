//! The TDX Connect link leaves (TDH.SPDM.CONNECT / DISCONNECT / MNG, TDH.IDE.STREAM.CREATE /
//! KM / BLOCK / DELETE) driven through registers and host pages alone, as the Linux host calls
//! them (devsec tsm tree `arch/x86/virt/vmx/tdx/tdx.c` @2c2d99f4 wrappers,
//! `drivers/virt/coco/tdx-host/tdx-host.c` @191928fb callers): golden register sets in and
//! back, Linux's connect and teardown, the bind refusals of a device without a live stream,
//! BLOCK as the stream cut, and every register of every leaf malformed in turn, refused with
//! the operand named and nothing changed.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::RefCell;

#[path = "common/devif_create.rs"]
mod devif_create;

use devif_create::devif_create_regs;
use platform_tdx::TdxModule;
use platform_tdx::abi::{self, Dispatcher, HostBuffer, RangeList, SeamRegs, page_info};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::link::{
    self, DEV_INFO_BYTES, DevInfo, IDE_KM_REFRESH, IDE_KM_SETUP, IDE_KM_STOP, Keys, NULL_PAGE,
    SPDM_CAP_HBEAT, SPDM_CAP_KEY_UPD, SPDM_MNG_HEARTBEAT, SPDM_MNG_KEY_UPDATE, SPDM_MNG_RECOLLECT,
    STREAM_INFO_TYPE_SEL, Session,
};
use platform_tdx::module::{DevifEntry, MESSAGE_PAGE_BYTES, SpdmEntry};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::*;
use tsm_core::capacity::{MAX_DEVICES, MAX_TDIS};
use tsm_core::device_model::ModelDevice;
use tsm_core::tsm::Snapshot;
use tsm_core::{Gpa, IdeStream, MmioRange, ModelSession, PageSize, RequesterId, TdiId};
use zerocopy::FromBytes;

const HOST: u64 = 0x7_0000_0000;
const HOST_PAGES: u64 = 17;
const fn page(i: u64) -> u64 {
    HOST + i * MESSAGE_PAGE_BYTES as u64
}
/// Host memory: the range list, a TDI's request and response pages, the TDR, SPDM metadata,
/// the SPDM config page, dev_info, the link's response (in_msg) and request (out_msg) pages,
/// IDE metadata, a second SPDM id's metadata, two spare pages.
const PARAMS: u64 = page(0);
const TDI_REQ: u64 = page(1);
const TDI_RSP: u64 = page(2);
const TDR: u64 = page(3);
const SPDM_MT: u64 = page(4);
const CONFIG: u64 = page(5);
const DEV_INFO: u64 = page(6);
const IN_MSG: u64 = page(7);
const OUT_MSG: u64 = page(8);
const IDE_MT: u64 = page(9);
const SPDM_MT_2: u64 = page(10);
const SPARE: u64 = page(11);
const SPARE_2: u64 = page(12);
/// The TDI's private pages (TDH.DEVIF.CREATE R8, R9, R10).
const DEVIF_PAGES: [u64; 3] = [page(14), page(15), page(16)];
const OUTSIDE: u64 = page(HOST_PAGES);
const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;
/// The device: 0000:03:00.0, routing ID 0x0300.
const BUS: u8 = 3;
const ROUTING: u64 = 0x0300;

type Image = (
    Snapshot<(Vec<Page>, SeptBookkeeping)>,
    Vec<Option<SpdmEntry>>,
    Vec<Option<DevifEntry>>,
    Vec<u8>,
);

struct World<'m> {
    fw: TdxModule<'m, ModelSession>,
    mem: RefCell<Vec<u8>>,
    device: RefCell<ModelDevice>,
}

fn rid(bus: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, 0).unwrap()
}

impl<'m> World<'m> {
    fn new(mem: &'m mut [Page]) -> Self {
        let pool = FramePool::new(mem, 0x20_0000_0000).unwrap();
        World {
            fw: TdxModule::new(Sept::new(pool, SeptLevels::Four), ModelSession::model()),
            mem: RefCell::new(vec![0; HOST_PAGES as usize * MESSAGE_PAGE_BYTES]),
            device: RefCell::new(ModelDevice::model()),
        }
    }

    /// A SEAMCALL; a leaf on the TDI that may leave a request gets the TDI's request page in
    /// R8 when R8 is 0, and TDH.DEVIF.RESPONSE's RDX, when below a page, is the answer's length
    /// of the earlier layout: it becomes the response page (0: no answer).
    fn call(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let mut regs = Self::fill(leaf, regs);
        regs.rax = u64::from(leaf);
        let mut mem = self.mem.borrow_mut();
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut mem)).seamcall(&mut regs);
        regs
    }

    /// The registers `call` sends for `leaf` and `regs`.
    fn fill(leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        let relays = [
            abi::TSM_DEVIF_BIND,
            abi::TSM_DEVIF_CHECK,
            abi::TDH_DEVIF_REQUEST,
        ]
        .contains(&leaf)
            || (leaf == abi::TSM_DEVIF_UNBIND && regs.rdx == 0);
        if (relays || leaf == abi::TDH_DEVIF_RESPONSE) && regs.rcx == ROUTING && regs.r8 == 0 {
            regs.r8 = TDI_REQ;
        }
        if leaf == abi::TDH_DEVIF_RESPONSE && regs.rdx < MESSAGE_PAGE_BYTES as u64 {
            regs.rdx = abi::devif_rsp_in(if regs.rdx == 0 { 0 } else { TDI_RSP }, false);
        }
        regs
    }

    fn ok(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(leaf, regs);
        assert_eq!(out.rax, TDX_SUCCESS, "leaf {leaf}: {:#x}", out.rax);
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

    fn image(&self) -> Image {
        let snap = self
            .fw
            .snapshot_with(|t| (t.pool().pages().copied().collect(), t.bookkeeping()))
            .unwrap();
        let spdm = (0..MAX_DEVICES as u64)
            .map(|id| self.fw.spdm(id).unwrap())
            .collect();
        let pages = (0..MAX_TDIS as u16)
            .map(|s| self.fw.devif(TdiId::from_slot(s)).unwrap())
            .collect();
        (snap, spdm, pages, self.mem.borrow().clone())
    }

    /// `leaf` with `regs` is refused with `status` (operand included), every register but RAX
    /// comes back as sent, and nothing changed.
    fn refused(&self, what: &str, leaf: u16, regs: SeamRegs, status: u64) {
        let regs = Self::fill(leaf, regs);
        let before = self.image();
        let out = self.call(leaf, regs);
        assert_eq!(out.rax, status, "{what}: {:#x}", out.rax);
        assert_eq!(
            SeamRegs { rax: 0, ..out },
            regs,
            "{what}: registers written"
        );
        assert!(self.image() == before, "{what}: something changed");
    }

    fn entry(&self, id: u64) -> SpdmEntry {
        self.fw.spdm(id).unwrap().unwrap()
    }

    /// The DOE mailbox of the device.
    fn doe(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let n = self.device.borrow_mut().answer(request, &mut answer)?;
        Some(answer[..n].to_vec())
    }

    /// TDI (relay) helper: bind to the end through TDH.DEVIF.RESPONSE.
    fn bind(&self, tdi: u64, td: u64) -> SeamRegs {
        let mut out = self.call(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            },
        );
        while out.rax == TDX_SPDM_REQUEST {
            let request = self.read(TDI_REQ, ((out.rcx >> 8) & 0xffff) as usize);
            let answer = self.doe(&request).unwrap();
            self.write(TDI_RSP, &answer);
            out = self.call(
                abi::TDH_DEVIF_RESPONSE,
                SeamRegs {
                    rcx: tdi,
                    rdx: answer.len() as u64,
                    ..Default::default()
                },
            );
        }
        out
    }

    /// TDH.DEVIF.CREATE of 0000:03:00.0 on SPDM id `dev`'s stream (ours: stream ID == SPDM
    /// id) for the TD at `TDR`: the TDI, named by its function ID.
    fn create_tdi(&self, dev: u64) -> u64 {
        self.ok(
            abi::TDH_DEVIF_CREATE,
            devif_create_regs(dev, rid(3), TDR, DEVIF_PAGES),
        );
        ROUTING
    }
}

/// spdm_config_info_t as Linux's `tdx_link_pf0_probe` fills it: KEY_UPD, policy 0, slot mask
/// 0xFF, raw bitstream 0.
fn linux_config() -> [u8; 8] {
    let mut c = [0u8; 8];
    c[..4].copy_from_slice(&SPDM_CAP_KEY_UPD.to_le_bytes());
    c[5] = 0xFF;
    c
}

// ---- the registers as Linux's wrappers fill them -------------------------------------------

/// `tdh_exec_spdm_connect(spdm_id, spdm_conf, spdm_rsp, spdm_req, dev_info, ...)`.
fn connect_regs(id: u64) -> SeamRegs {
    SeamRegs {
        rcx: id,
        rdx: CONFIG,
        r8: IN_MSG,
        r9: OUT_MSG,
        r10: abi::hpa_array(DEV_INFO, 1),
        ..Default::default()
    }
}

/// `tdh_exec_spdm_disconnect(spdm_id, spdm_rsp, spdm_req, ...)`.
fn disconnect_regs(id: u64) -> SeamRegs {
    SeamRegs {
        rcx: id,
        rdx: IN_MSG,
        r8: OUT_MSG,
        ..Default::default()
    }
}

/// `tdh_exec_spdm_mng(spdm_id, op, NULL, spdm_rsp, spdm_req, NULL, ...)`.
fn mng_regs(id: u64, op: u64) -> SeamRegs {
    SeamRegs {
        rcx: id,
        rdx: op,
        r8: NULL_PAGE,
        r9: IN_MSG,
        r10: OUT_MSG,
        r11: NULL_PAGE,
        ..Default::default()
    }
}

/// `tdh_ide_stream_create(stream_info, spdm_id, stream_mt, 0, rid1, rid2, assoc1-3, ...)` for
/// the endpoint alone and a prefetchable window of 256 MiB at 0x8000_0000.
fn create_regs(id: u64) -> SeamRegs {
    SeamRegs {
        rcx: STREAM_INFO_TYPE_SEL | 0x08, // root port 00:01.0
        rdx: id,
        r8: abi::hpa_array(IDE_MT, 1),
        r9: 0,
        r10: ROUTING << 8,
        r11: 1 | ROUTING << 8,
        r12: 1 | (0x800 << 8) | (0x8ff << 20),
        r13: 0,
        r14: 0,
        ..Default::default()
    }
}

/// `tdh_ide_stream_km(spdm_id, stream_id, op, spdm_rsp, spdm_req, ...)`.
fn km_regs(id: u64, stream: u64, op: u64) -> SeamRegs {
    SeamRegs {
        rcx: id,
        rdx: stream,
        r8: op,
        r9: IN_MSG,
        r10: OUT_MSG,
        ..Default::default()
    }
}

/// `tdh_ide_stream_block(spdm_id, stream_id)` and `tdh_ide_stream_delete(spdm_id, stream_id,
/// release-raw of a one-page array = 0, ...)`.
fn stream_regs(id: u64, stream: u64) -> SeamRegs {
    SeamRegs {
        rcx: id,
        rdx: stream,
        ..Default::default()
    }
}

// ---- worlds --------------------------------------------------------------------------------

/// A TD, SPDM id 0 for 0000:03:00.0 with one 4 MiB BAR its interface reports; not connected.
fn fresh(mem: &mut [Page]) -> (World<'_>, u64, u64) {
    let w = World::new(mem);
    w.ok(
        abi::TDH_MNG_CREATE,
        SeamRegs {
            rcx: TDR,
            rdx: 1,
            ..Default::default()
        },
    );
    let dev = w
        .ok(
            abi::TDH_SPDM_CREATE,
            SeamRegs {
                rcx: abi::function_id(rid(BUS)),
                rdx: abi::hpa_array(SPDM_MT, 1),
                ..Default::default()
            },
        )
        .rcx;
    let bar = MmioRange::from_raw(BAR, 1024).unwrap();
    w.write(PARAMS, RangeList::from_ranges(&[bar]).unwrap().bytes());
    w.ok(
        abi::TSM_SPDM_BARS,
        SeamRegs {
            rcx: dev,
            rdx: PARAMS,
            ..Default::default()
        },
    );
    w.device.borrow_mut().report_ranges(rid(BUS), &[bar]);
    w.write(CONFIG, &linux_config());
    (w, TDR, dev)
}

/// CONNECT to its end as Linux's event loop drives it; the registers of the last call.
fn connect(w: &World<'_>, regs: SeamRegs) -> SeamRegs {
    let mut out = w.call(abi::TDH_SPDM_CONNECT, regs);
    let mut rounds = 0;
    while out.rax == TDX_SPDM_REQUEST {
        rounds += 1;
        assert!(rounds < 4);
        let header = w.read(regs.r9, 8);
        let len = (u32::from_le_bytes(header[4..8].try_into().unwrap()) & 0x3_ffff) as usize * 4;
        let answer = w.doe(&w.read(regs.r9, len)).unwrap();
        w.write(regs.r8, &answer);
        out = w.call(abi::TDH_SPDM_CONNECT, regs);
    }
    out
}

fn connected(mem: &mut [Page]) -> (World<'_>, u64, u64) {
    let (w, td, dev) = fresh(mem);
    assert_eq!(connect(&w, connect_regs(dev)).rax, TDX_SUCCESS);
    (w, td, dev)
}

/// Connected, the stream created (no keys yet): (world, TD, SPDM id, stream ID).
fn streamed(mem: &mut [Page]) -> (World<'_>, u64, u64, u64) {
    let (w, td, dev) = connected(mem);
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create_regs(dev)).rcx;
    (w, td, dev, stream)
}

fn live(mem: &mut [Page]) -> (World<'_>, u64, u64, u64) {
    let (w, td, dev, stream) = streamed(mem);
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    (w, td, dev, stream)
}

/// Runs a test body on a thread with a 16 MiB stack: two images of every table (the core's
/// snapshot by value) per refusal overflow the test harness's 2 MiB in debug builds.
fn big_stack(body: fn()) {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(body)
        .unwrap()
        .join()
        .unwrap();
}

fn pool() -> Vec<Page> {
    vec![Page::ZERO; 32]
}

// ---- golden registers and Linux's flow -----------------------------------------------------

/// Every link leaf with the registers Linux's wrapper loads, and what comes back: only the
/// wrapper's outputs change (RCX, and RDX for STREAM.CREATE); every other register is as sent.
#[test]
fn golden_registers_in_and_back() {
    big_stack(golden_registers_in_and_back_body);
}

fn golden_registers_in_and_back_body() {
    let mut mem = pool();
    let (w, _, dev) = fresh(&mut mem);
    let core_dev = w.entry(dev).device.unwrap();
    // A device is created with its stream cut: no IDE yet.
    assert_eq!(w.fw.device(core_dev).unwrap().stream, IdeStream::Cut);

    let regs = connect_regs(dev);
    let first = w.call(abi::TDH_SPDM_CONNECT, regs);
    assert_eq!(
        first,
        SeamRegs {
            rax: TDX_SPDM_REQUEST,
            rcx: 12,
            ..regs
        }
    );
    // One unsecured GET_VERSION (SPDM 1.0, 0x84) as a whole DOE object of type 1.
    assert_eq!(
        w.read(OUT_MSG, 12),
        [1, 0, 1, 0, 3, 0, 0, 0, 0x10, 0x84, 0, 0]
    );
    assert!(matches!(w.entry(dev).link.session, Session::Connecting(_)));
    let answer = w.doe(&w.read(OUT_MSG, 12)).unwrap();
    w.write(IN_MSG, &answer);
    let second = w.call(abi::TDH_SPDM_CONNECT, regs);
    assert_eq!(
        second,
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: DEV_INFO_BYTES as u64,
            ..regs
        }
    );
    let info = DevInfo::read_from_bytes(&w.read(DEV_INFO, DEV_INFO_BYTES)).unwrap();
    assert_eq!(info.format, link::DEV_INFO_FORMAT);
    assert_eq!(info.spdm_version, 0x12);
    assert_eq!(info.certificate_slot_mask, 0xFF);
    assert_eq!(info.function_id, abi::function_id(rid(BUS)));
    assert_eq!(info.vmm_spdm_cap, SPDM_CAP_KEY_UPD);
    assert_eq!(w.entry(dev).link.session, Session::Connected(info));

    let regs = create_regs(dev);
    let out = w.call(abi::TDH_IDE_STREAM_CREATE, regs);
    assert_eq!(
        out,
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: dev,
            rdx: dev,
            ..regs
        }
    );
    let stream = out.rcx;
    let entry = w.entry(dev).link.stream.unwrap();
    assert_eq!((entry.keys, entry.blocked), (Keys::None, false));
    assert_eq!(entry.rid, [regs.r10, regs.r11]);
    assert_eq!(entry.addr, [regs.r12, regs.r13, regs.r14]);

    for op in [IDE_KM_SETUP, IDE_KM_REFRESH] {
        let regs = km_regs(dev, stream, op);
        assert_eq!(
            w.call(abi::TDH_IDE_STREAM_KM, regs),
            SeamRegs {
                rax: TDX_SUCCESS,
                rcx: 0,
                ..regs
            }
        );
    }
    assert_eq!(w.fw.device(core_dev).unwrap().stream, IdeStream::Live);

    // Linux issues KEY_UPDATE (only) after TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH; nothing
    // changes in this model.
    let before = w.image();
    let regs = mng_regs(dev, SPDM_MNG_KEY_UPDATE);
    assert_eq!(
        w.call(abi::TDH_SPDM_MNG, regs),
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: 0,
            ..regs
        }
    );
    assert!(w.image() == before);

    // Teardown, tdx_link_disconnect's order.
    let regs = km_regs(dev, stream, IDE_KM_STOP);
    assert_eq!(
        w.call(abi::TDH_IDE_STREAM_KM, regs),
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: 0,
            ..regs
        }
    );
    assert_eq!(w.fw.device(core_dev).unwrap().stream, IdeStream::Cut);
    let regs = stream_regs(dev, stream);
    assert_eq!(
        w.call(abi::TDH_IDE_STREAM_BLOCK, regs),
        SeamRegs {
            rax: TDX_SUCCESS,
            ..regs
        }
    );
    assert_eq!(
        w.call(abi::TDH_IDE_STREAM_DELETE, regs),
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: abi::hpa_array(IDE_MT, 1),
            ..regs
        }
    );
    assert_eq!(w.entry(dev).link.stream, None);
    let regs = disconnect_regs(dev);
    assert_eq!(
        w.call(abi::TDH_SPDM_DISCONNECT, regs),
        SeamRegs {
            rax: TDX_SUCCESS,
            rcx: 0,
            ..regs
        }
    );
    assert_eq!(w.entry(dev).link.session, Session::Idle);
    let out = w.ok(
        abi::TDH_SPDM_DELETE,
        SeamRegs {
            rcx: dev,
            ..Default::default()
        },
    );
    assert_eq!(out.rcx, abi::hpa_array(SPDM_MT, 1));
    assert_eq!(w.fw.spdm(dev).unwrap(), None);
}

/// Connect, bind, map, then the teardown a real host does: unbind, remove, KM STOP, BLOCK,
/// DELETE, DISCONNECT, SPDM DELETE; and connect again on the same SPDM id.
#[test]
fn whole_connect_bind_teardown_flow() {
    big_stack(whole_connect_bind_teardown_flow_body);
}

fn whole_connect_bind_teardown_flow_body() {
    let mut mem = pool();
    let (w, td, dev, stream) = live(&mut mem);
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
            rdx: td,
            r8: BAR,
            ..Default::default()
        },
    );
    // Teardown while bound is refused: the stream keys have TDIs.
    w.refused(
        "KM STOP with a TDI",
        abi::TDH_IDE_STREAM_KM,
        km_regs(dev, stream, IDE_KM_STOP),
        TDX_IDE_STREAM_HAS_DEVICE_INTERFACES | 2,
    );
    // Unbind (relayed STOP_INTERFACE) and remove the TDI.
    let mut out = w.call(
        abi::TSM_DEVIF_UNBIND,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    for _ in 0..100 {
        match out.rax {
            TDX_SPDM_REQUEST => {
                let answer = w
                    .doe(&w.read(TDI_REQ, ((out.rcx >> 8) & 0xffff) as usize))
                    .unwrap();
                w.write(TDI_RSP, &answer);
                out = w.call(
                    abi::TDH_DEVIF_RESPONSE,
                    SeamRegs {
                        rcx: tdi,
                        rdx: answer.len() as u64,
                        ..Default::default()
                    },
                );
            }
            TDX_INTERRUPTED_RESUMABLE => {
                out = w.call(
                    abi::TSM_DEVIF_UNBIND,
                    SeamRegs {
                        rcx: tdi,
                        ..Default::default()
                    },
                );
            }
            _ => break,
        }
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    w.ok(
        abi::TDH_DEVIF_REMOVE,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_STOP));
    w.ok(abi::TDH_IDE_STREAM_BLOCK, stream_regs(dev, stream));
    w.ok(abi::TDH_IDE_STREAM_DELETE, stream_regs(dev, stream));
    w.ok(abi::TDH_SPDM_DISCONNECT, disconnect_regs(dev));
    // The same SPDM id connects and streams again.
    assert_eq!(connect(&w, connect_regs(dev)).rax, TDX_SUCCESS);
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create_regs(dev)).rcx;
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
}

/// A bind of a TDI whose device has no live stream is refused with the precise reason, and
/// changes nothing: no stream, keys not set up, keys stopped, stream blocked.
#[test]
fn bind_needs_a_live_stream() {
    big_stack(bind_needs_a_live_stream_body);
}

fn bind_needs_a_live_stream_body() {
    let mut mem = pool();
    let (w, td, dev) = connected(&mut mem);
    // No stream: the devif_id_t's stream ID names none (TDX-IO: a TDI hangs off its stream).
    let create = devif_create_regs(dev, rid(3), TDR, DEVIF_PAGES);
    w.refused(
        "no stream",
        abi::TDH_DEVIF_CREATE,
        create,
        TDX_IDE_STREAM_INVALID_STATE | 1,
    );
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create_regs(dev)).rcx;
    let tdi = w.create_tdi(dev);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    let bind_with_page = SeamRegs {
        r8: TDI_REQ,
        ..bind
    };
    w.refused(
        "keys not set up",
        abi::TSM_DEVIF_BIND,
        bind_with_page,
        TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY | 1,
    );
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    w.ok(
        abi::TDH_DEVIF_REMOVE,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_STOP));
    // A stopped or blocked stream takes no new TDI (the module: not SEL_IDE / config-locked,
    // or blocked).
    w.refused(
        "keys stopped",
        abi::TDH_DEVIF_CREATE,
        create,
        TDX_IDE_STREAM_INVALID_STATE | 1,
    );
    w.ok(abi::TDH_IDE_STREAM_BLOCK, stream_regs(dev, stream));
    w.refused(
        "blocked",
        abi::TDH_DEVIF_CREATE,
        create,
        TDX_IDE_STREAM_INVALID_STATE | 1,
    );
}

/// BLOCK is the platform's stream cut: a bound TDI goes to ERROR, the host may then BLOCK,
/// TRACK and UNMAP its leaves itself, the TDI unbinds without the device, and only a new
/// stream (DELETE, CREATE, KM SETUP) lets it bind again.
#[test]
fn block_cuts_the_stream_and_lets_the_host_tear_down() {
    big_stack(block_cuts_the_stream_and_lets_the_host_tear_down_body);
}

fn block_cuts_the_stream_and_lets_the_host_tear_down_body() {
    let mut mem = pool();
    let (w, td, dev, stream) = live(&mut mem);
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    let info = page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M);
    let leaf = SeamRegs {
        rcx: info,
        rdx: td,
        ..Default::default()
    };
    w.ok(abi::TDH_MMIO_MAP, SeamRegs { r8: BAR, ..leaf });
    // While the stream is live the host may not tear the leaf down.
    w.refused(
        "host BLOCK of a bound TDI's leaf",
        abi::TDH_MMIO_BLOCK,
        leaf,
        TDX_DEVIF_TDISP_INVALID_STATE | 1,
    );
    w.ok(abi::TDH_IDE_STREAM_BLOCK, stream_regs(dev, stream));
    let state = w.ok(
        abi::TSM_DEVIF_STATE,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    assert_eq!(state.rdx, abi::TdiStateCode::Error as u64);
    let core_dev = w.entry(dev).device.unwrap();
    assert_eq!(w.fw.device(core_dev).unwrap().stream, IdeStream::Cut);
    w.ok(abi::TDH_MMIO_BLOCK, leaf);
    let mut track = w.call(
        abi::TDH_MEM_TRACK,
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    while track.rax == TDX_INTERRUPTED_RESUMABLE {
        track = w.call(
            abi::TDH_MEM_TRACK,
            SeamRegs {
                rcx: td,
                ..Default::default()
            },
        );
    }
    assert_eq!(track.rax, TDX_SUCCESS);
    assert_eq!(w.ok(abi::TDH_MMIO_UNMAP, leaf).r8, BAR);
    // Delete needs the TDI gone; the TDI unbinds without asking the device.
    w.refused(
        "DELETE with a TDI",
        abi::TDH_IDE_STREAM_DELETE,
        stream_regs(dev, stream),
        TDX_IDE_STREAM_HAS_DEVICE_INTERFACES | 2,
    );
    let mut out = w.call(
        abi::TSM_DEVIF_UNBIND,
        SeamRegs {
            rcx: tdi,
            rdx: abi::UNBIND_FLAG_FORCE,
            ..Default::default()
        },
    );
    while out.rax == TDX_INTERRUPTED_RESUMABLE {
        out = w.call(
            abi::TSM_DEVIF_UNBIND,
            SeamRegs {
                rcx: tdi,
                rdx: abi::UNBIND_FLAG_FORCE,
                ..Default::default()
            },
        );
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    w.ok(
        abi::TDH_DEVIF_REMOVE,
        SeamRegs {
            rcx: tdi,
            ..Default::default()
        },
    );
    w.ok(abi::TDH_IDE_STREAM_DELETE, stream_regs(dev, stream));
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create_regs(dev)).rcx;
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    // The forced unbind left the interface locked on the device, and its TDI is gone: the
    // host resets the device before a new TDI binds.
    w.device.borrow_mut().event(
        rid(BUS),
        tsm_core::device_model::DeviceEvent::ConventionalReset,
    );
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
}

// ---- every register malformed in turn ------------------------------------------------------

const INVALID: u64 = TDX_OPERAND_INVALID;
const RANGE: u64 = TDX_OPERAND_ADDR_RANGE_ERROR;
const IN_USE: u64 = TDX_PAGE_METADATA_INCORRECT;

#[test]
fn connect_refusals_change_nothing() {
    big_stack(connect_refusals_change_nothing_body);
}

fn connect_refusals_change_nothing_body() {
    let mut mem = pool();
    let (w, _, dev) = fresh(&mut mem);
    let r = connect_regs(dev);
    let cases: &[(&str, SeamRegs, u64)] = &[
        ("unknown SPDM id", SeamRegs { rcx: 5, ..r }, INVALID | 1),
        (
            "SPDM id past 2^32",
            SeamRegs { rcx: 1 << 40, ..r },
            INVALID | 1,
        ),
        (
            "config misaligned",
            SeamRegs {
                rdx: CONFIG + 8,
                ..r
            },
            INVALID | 2,
        ),
        (
            "config outside host memory",
            SeamRegs { rdx: OUTSIDE, ..r },
            RANGE | 2,
        ),
        (
            "config past 2^52",
            SeamRegs { rdx: 1 << 52, ..r },
            RANGE | 2,
        ),
        (
            "response misaligned",
            SeamRegs {
                r8: IN_MSG + 8,
                ..r
            },
            INVALID | 8,
        ),
        ("response outside", SeamRegs { r8: OUTSIDE, ..r }, RANGE | 8),
        (
            "request = response",
            SeamRegs { r9: IN_MSG, ..r },
            INVALID | 9,
        ),
        ("request outside", SeamRegs { r9: OUTSIDE, ..r }, RANGE | 9),
        ("request the TDR", SeamRegs { r9: TDR, ..r }, IN_USE | 9),
        (
            "request SPDM metadata",
            SeamRegs { r9: SPDM_MT, ..r },
            IN_USE | 9,
        ),
        (
            "dev_info reserved bits",
            SeamRegs {
                r10: abi::hpa_array(DEV_INFO, 1) | 1,
                ..r
            },
            INVALID | 10,
        ),
        (
            "dev_info too many pages",
            SeamRegs {
                r10: abi::hpa_array(SPARE, 5),
                ..r
            },
            INVALID | 10,
        ),
        (
            "dev_info outside",
            SeamRegs {
                r10: abi::hpa_array(OUTSIDE, 1),
                ..r
            },
            RANGE | 10,
        ),
        (
            "dev_info the TDR",
            SeamRegs {
                r10: abi::hpa_array(TDR, 1),
                ..r
            },
            IN_USE | 10,
        ),
        (
            "dev_info the SPDM metadata",
            SeamRegs {
                r10: abi::hpa_array(SPDM_MT, 1),
                ..r
            },
            IN_USE | 10,
        ),
        (
            "dev_info the request page",
            SeamRegs {
                r10: abi::hpa_array(OUT_MSG, 1),
                ..r
            },
            INVALID | 10,
        ),
        (
            "dev_info the config page",
            SeamRegs {
                r10: abi::hpa_array(CONFIG, 1),
                ..r
            },
            INVALID | 10,
        ),
    ];
    for (what, regs, status) in cases {
        w.refused(what, abi::TDH_SPDM_CONNECT, *regs, *status);
    }
    // A config page that is also a message page (valid config bytes in it): the first
    // request would overwrite it and the re-issues could never complete.
    for page in [IN_MSG, OUT_MSG] {
        w.write(page, &linux_config());
        w.refused(
            "config = a message page",
            abi::TDH_SPDM_CONNECT,
            SeamRegs { rdx: page, ..r },
            INVALID | 2,
        );
        w.write(page, &[0; 8]);
    }
    // The config page as Linux fills it, and each field otherwise.
    for (what, offset, byte) in [
        ("a reserved capability bit", 0, 0x01),
        ("capability bit 15", 1, 0x80),
        ("a session policy", 4, 1),
        ("no certificate slot", 5, 0),
        ("raw bitstream 2", 6, 2),
        ("a byte past the config", 7, 1),
        ("the last byte of the page", 4095, 1),
    ] {
        let mut config = vec![0u8; MESSAGE_PAGE_BYTES];
        config[..8].copy_from_slice(&linux_config());
        config[offset] = byte;
        w.write(CONFIG, &config);
        w.refused(what, abi::TDH_SPDM_CONNECT, r, INVALID | 2);
    }
    let mut config = vec![0u8; MESSAGE_PAGE_BYTES];
    config[..8].copy_from_slice(&linux_config());
    w.write(CONFIG, &config);

    // The exchange started: a re-issue with other (well-formed) registers is refused, naming
    // the first that differs; a VERSION that is not one (or offers no 1.2) leaves it open.
    assert_eq!(w.call(abi::TDH_SPDM_CONNECT, r).rax, TDX_SPDM_REQUEST);
    w.write(SPARE, &linux_config());
    for (what, regs, status) in [
        (
            "re-issue, other config",
            SeamRegs { rdx: SPARE, ..r },
            TDX_SPDM_INVALID_STATE | 2,
        ),
        (
            "re-issue, other response page",
            SeamRegs { r8: SPARE, ..r },
            TDX_SPDM_INVALID_STATE | 8,
        ),
        (
            "re-issue, other request page",
            SeamRegs { r9: SPARE, ..r },
            TDX_SPDM_INVALID_STATE | 9,
        ),
        (
            "re-issue, other dev_info",
            SeamRegs {
                r10: abi::hpa_array(SPARE_2, 1),
                ..r
            },
            TDX_SPDM_INVALID_STATE | 10,
        ),
    ] {
        w.refused(what, abi::TDH_SPDM_CONNECT, regs, status);
    }
    let genuine = w.doe(&w.read(OUT_MSG, 12)).unwrap();
    let mut no12 = genuine.clone();
    no12[15] = 0x11;
    let mut secured = genuine.clone();
    secured[2] = 2;
    let mut long = genuine.clone();
    long[4..8].copy_from_slice(&0x3_ffffu32.to_le_bytes());
    let mut short = genuine.clone();
    short[4..8].copy_from_slice(&1u32.to_le_bytes());
    for (what, answer) in [
        ("VERSION offering only 1.1", no12),
        ("a secured DOE object", secured),
        ("a length past the page", long),
        ("a length below the header", short),
        ("the request itself", w.read(OUT_MSG, 12)),
    ] {
        w.write(IN_MSG, &answer);
        w.refused(what, abi::TDH_SPDM_CONNECT, r, TDX_SPDM_INVALID_MESSAGE | 8);
    }
    w.write(IN_MSG, &genuine);
    assert_eq!(w.call(abi::TDH_SPDM_CONNECT, r).rax, TDX_SUCCESS);
    w.refused(
        "connected already",
        abi::TDH_SPDM_CONNECT,
        r,
        TDX_SPDM_INVALID_STATE | 1,
    );
    // Operands before state, as every leaf: a malformed register is named first.
    w.refused(
        "connected already, config misaligned",
        abi::TDH_SPDM_CONNECT,
        SeamRegs {
            rdx: CONFIG + 8,
            ..r
        },
        INVALID | 2,
    );
}

#[test]
fn disconnect_and_mng_refusals_change_nothing() {
    big_stack(disconnect_and_mng_refusals_change_nothing_body);
}

fn disconnect_and_mng_refusals_change_nothing_body() {
    let mut mem = pool();
    let (w, _, dev) = fresh(&mut mem);
    let d = disconnect_regs(dev);
    let m = mng_regs(dev, SPDM_MNG_KEY_UPDATE);
    w.refused(
        "disconnect, not connected",
        abi::TDH_SPDM_DISCONNECT,
        d,
        TDX_SPDM_INVALID_STATE | 1,
    );
    w.refused(
        "mng, not connected",
        abi::TDH_SPDM_MNG,
        m,
        TDX_SPDM_INVALID_STATE | 1,
    );
    assert_eq!(connect(&w, connect_regs(dev)).rax, TDX_SUCCESS);
    let cases: &[(&str, u16, SeamRegs, u64)] = &[
        (
            "unknown id",
            abi::TDH_SPDM_DISCONNECT,
            SeamRegs { rcx: 7, ..d },
            INVALID | 1,
        ),
        (
            "response misaligned",
            abi::TDH_SPDM_DISCONNECT,
            SeamRegs {
                rdx: IN_MSG + 1,
                ..d
            },
            INVALID | 2,
        ),
        (
            "response outside",
            abi::TDH_SPDM_DISCONNECT,
            SeamRegs { rdx: OUTSIDE, ..d },
            RANGE | 2,
        ),
        (
            "request = response",
            abi::TDH_SPDM_DISCONNECT,
            SeamRegs { r8: IN_MSG, ..d },
            INVALID | 8,
        ),
        (
            "request the TDR",
            abi::TDH_SPDM_DISCONNECT,
            SeamRegs { r8: TDR, ..d },
            IN_USE | 8,
        ),
        (
            "mng unknown id",
            abi::TDH_SPDM_MNG,
            SeamRegs { rcx: 7, ..m },
            INVALID | 1,
        ),
        (
            "mng op 3",
            abi::TDH_SPDM_MNG,
            SeamRegs { rdx: 3, ..m },
            INVALID | 2,
        ),
        (
            "mng param misaligned",
            abi::TDH_SPDM_MNG,
            SeamRegs { r8: SPARE + 8, ..m },
            INVALID | 8,
        ),
        (
            "mng param outside",
            abi::TDH_SPDM_MNG,
            SeamRegs { r8: OUTSIDE, ..m },
            RANGE | 8,
        ),
        (
            "mng response outside",
            abi::TDH_SPDM_MNG,
            SeamRegs { r9: OUTSIDE, ..m },
            RANGE | 9,
        ),
        (
            "mng request = response",
            abi::TDH_SPDM_MNG,
            SeamRegs { r10: IN_MSG, ..m },
            INVALID | 10,
        ),
        (
            "mng output reserved bits",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                r11: abi::hpa_array(SPARE, 1) | 0x10,
                ..m
            },
            INVALID | 11,
        ),
        (
            "mng output the SPDM metadata",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                r11: abi::hpa_array(SPDM_MT, 1),
                ..m
            },
            IN_USE | 11,
        ),
        (
            "recollect over its own request page",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                rdx: SPDM_MNG_RECOLLECT,
                r11: abi::hpa_array(OUT_MSG, 1),
                ..m
            },
            INVALID | 11,
        ),
        (
            "recollect over its own response page",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                rdx: SPDM_MNG_RECOLLECT,
                r11: abi::hpa_array(IN_MSG, 1),
                ..m
            },
            INVALID | 11,
        ),
        (
            "recollect without an output",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                rdx: SPDM_MNG_RECOLLECT,
                ..m
            },
            INVALID | 11,
        ),
        (
            "heartbeat the config did not ask for",
            abi::TDH_SPDM_MNG,
            SeamRegs {
                rdx: SPDM_MNG_HEARTBEAT,
                ..m
            },
            TDX_SPDM_INVALID_STATE | 2,
        ),
    ];
    for (what, leaf, regs, status) in cases {
        w.refused(what, *leaf, *regs, *status);
    }
    // RECOLLECT writes the record again; a parameter page is accepted (and unread).
    let out = w.ok(
        abi::TDH_SPDM_MNG,
        SeamRegs {
            rdx: SPDM_MNG_RECOLLECT,
            r8: SPARE,
            r11: abi::hpa_array(SPARE_2, 1),
            ..m
        },
    );
    assert_eq!(out.rcx, DEV_INFO_BYTES as u64);
    assert_eq!(
        w.read(SPARE_2, DEV_INFO_BYTES),
        w.read(DEV_INFO, DEV_INFO_BYTES)
    );
    // A stream, or a TDI, keeps the session.
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, create_regs(dev)).rcx;
    w.refused(
        "disconnect with a stream",
        abi::TDH_SPDM_DISCONNECT,
        d,
        TDX_SPDM_HAS_ACTIVE_IDE_STREAMS | 1,
    );
    w.refused(
        "SPDM delete with a stream",
        abi::TDH_SPDM_DELETE,
        SeamRegs {
            rcx: dev,
            ..Default::default()
        },
        TDX_SPDM_HAS_ACTIVE_IDE_STREAMS | 1,
    );
    w.ok(abi::TDH_IDE_STREAM_BLOCK, stream_regs(dev, stream));
    w.ok(abi::TDH_IDE_STREAM_DELETE, stream_regs(dev, stream));
    // (A TDI needs the stream, which DISCONNECT already refuses above: TDX-IO's CREATE names
    // the stream, so no TDI outlives it.)
    w.refused(
        "SPDM delete while connected",
        abi::TDH_SPDM_DELETE,
        SeamRegs {
            rcx: dev,
            ..Default::default()
        },
        TDX_SPDM_INVALID_STATE | 1,
    );
    w.ok(abi::TDH_SPDM_DISCONNECT, d);
    // A session that asked for heartbeats gets them.
    let mut config = linux_config();
    config[..4].copy_from_slice(&(SPDM_CAP_KEY_UPD | SPDM_CAP_HBEAT).to_le_bytes());
    w.write(CONFIG, &config);
    assert_eq!(connect(&w, connect_regs(dev)).rax, TDX_SUCCESS);
    let before = w.image();
    w.ok(
        abi::TDH_SPDM_MNG,
        SeamRegs {
            rdx: SPDM_MNG_HEARTBEAT,
            ..m
        },
    );
    assert!(w.image() == before);
}

#[test]
fn stream_create_refusals_change_nothing() {
    big_stack(stream_create_refusals_change_nothing_body);
}

fn stream_create_refusals_change_nothing_body() {
    let mut mem = pool();
    let (w, td, dev) = fresh(&mut mem);
    let c = create_regs(dev);
    w.refused(
        "not connected",
        abi::TDH_IDE_STREAM_CREATE,
        c,
        TDX_SPDM_INVALID_STATE | 2,
    );
    assert_eq!(connect(&w, connect_regs(dev)).rax, TDX_SUCCESS);
    let other = ROUTING + 1;
    let cases: &[(&str, SeamRegs, u64)] = &[
        ("unknown SPDM id", SeamRegs { rdx: 9, ..c }, INVALID | 2),
        (
            "stream info bit 9",
            SeamRegs {
                rcx: c.rcx | 1 << 9,
                ..c
            },
            INVALID | 1,
        ),
        (
            "stream info bit 63",
            SeamRegs {
                rcx: c.rcx | 1 << 63,
                ..c
            },
            INVALID | 1,
        ),
        (
            "a link stream",
            SeamRegs {
                rcx: c.rcx & !STREAM_INFO_TYPE_SEL,
                ..c
            },
            INVALID | 1,
        ),
        ("stream control not 0", SeamRegs { r9: 1, ..c }, INVALID | 9),
        (
            "RID assoc 1 bit 0",
            SeamRegs {
                r10: c.r10 | 1,
                ..c
            },
            INVALID | 10,
        ),
        (
            "RID assoc 1 bit 24",
            SeamRegs {
                r10: c.r10 | 1 << 24,
                ..c
            },
            INVALID | 10,
        ),
        (
            "RID assoc 2 not valid",
            SeamRegs {
                r11: c.r11 & !1,
                ..c
            },
            INVALID | 11,
        ),
        (
            "RID assoc 2 bit 1",
            SeamRegs {
                r11: c.r11 | 2,
                ..c
            },
            INVALID | 11,
        ),
        (
            "RID assoc 2 bit 32",
            SeamRegs {
                r11: c.r11 | 1 << 32,
                ..c
            },
            INVALID | 11,
        ),
        (
            "RID base above limit",
            SeamRegs {
                r11: 1 | other << 8,
                ..c
            },
            INVALID | 10,
        ),
        (
            "function below the base",
            SeamRegs {
                r10: other << 8,
                r11: 1 | other << 8,
                ..c
            },
            INVALID | 11,
        ),
        (
            "function above the limit",
            SeamRegs {
                r10: (ROUTING - 1) << 8,
                r11: 1,
                ..c
            },
            INVALID | 10,
        ),
        (
            "another segment",
            SeamRegs {
                r11: c.r11 | 5 << 24,
                ..c
            },
            INVALID | 11,
        ),
        (
            "address assoc 1 not valid",
            SeamRegs {
                r12: c.r12 & !1,
                ..c
            },
            INVALID | 12,
        ),
        (
            "address assoc 1 bit 1",
            SeamRegs {
                r12: c.r12 | 2,
                ..c
            },
            INVALID | 12,
        ),
        (
            "address assoc 1 bit 32",
            SeamRegs {
                r12: c.r12 | 1 << 32,
                ..c
            },
            INVALID | 12,
        ),
        (
            "address assoc 2 bit 32",
            SeamRegs { r13: 1 << 32, ..c },
            INVALID | 13,
        ),
        (
            "address assoc 3 bit 32",
            SeamRegs { r14: 1 << 32, ..c },
            INVALID | 14,
        ),
        (
            "address base above limit",
            SeamRegs { r14: 1, ..c },
            INVALID | 12,
        ),
        (
            "metadata reserved bits",
            SeamRegs {
                r8: c.r8 | 0x100,
                ..c
            },
            INVALID | 8,
        ),
        (
            "metadata too many pages",
            SeamRegs {
                r8: abi::hpa_array(SPARE, 9),
                ..c
            },
            INVALID | 8,
        ),
        (
            "metadata outside",
            SeamRegs {
                r8: abi::hpa_array(OUTSIDE, 1),
                ..c
            },
            RANGE | 8,
        ),
        (
            "metadata the TDR",
            SeamRegs {
                r8: abi::hpa_array(td, 1),
                ..c
            },
            IN_USE | 8,
        ),
        (
            "metadata SPDM's",
            SeamRegs {
                r8: abi::hpa_array(SPDM_MT, 1),
                ..c
            },
            IN_USE | 8,
        ),
    ];
    for (what, regs, status) in cases {
        w.refused(what, abi::TDH_IDE_STREAM_CREATE, *regs, *status);
    }
    // Without BARs (a second SPDM id, connected).
    let dev2 = w
        .ok(
            abi::TDH_SPDM_CREATE,
            SeamRegs {
                rcx: abi::function_id(rid(4)),
                rdx: abi::hpa_array(SPDM_MT_2, 1),
                ..Default::default()
            },
        )
        .rcx;
    assert_eq!(connect(&w, connect_regs(dev2)).rax, TDX_SUCCESS);
    w.refused(
        "no BARs",
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            rdx: dev2,
            r10: 0x0400 << 8,
            r11: 1 | 0x0400 << 8,
            ..c
        },
        TSM_BARS_NOT_REGISTERED | 2,
    );
    w.ok(abi::TDH_IDE_STREAM_CREATE, c);
    w.refused(
        "a second stream",
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            r8: abi::hpa_array(SPARE, 1),
            ..c
        },
        TDX_IDE_STREAM_NOT_FREE | 2,
    );
    // Another SPDM id's stream metadata is in use too, for a stream and for SPDM.CREATE.
    let bar2 = MmioRange::from_raw(0x9000_0000, 16).unwrap();
    w.write(PARAMS, RangeList::from_ranges(&[bar2]).unwrap().bytes());
    w.ok(
        abi::TSM_SPDM_BARS,
        SeamRegs {
            rcx: dev2,
            rdx: PARAMS,
            ..Default::default()
        },
    );
    w.refused(
        "metadata another stream's",
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            rdx: dev2,
            r10: 0x0400 << 8,
            r11: 1 | 0x0400 << 8,
            ..c
        },
        IN_USE | 8,
    );
    // Two devices' streams never claim the same requester or address (the module's
    // TDX_IDE_STREAM_RID_OVERLAP + R10, TDX_IDE_STREAM_ADDR_OVERLAP + R12).
    let [w12, w13, w14] = link::addr_assoc(0x9000_0000, 0x900f_ffff);
    let mine = SeamRegs {
        rdx: dev2,
        r8: abi::hpa_array(SPARE, 1),
        r10: 0x0400 << 8,
        r11: 1 | 0x0400 << 8,
        r12: w12,
        r13: w13,
        r14: w14,
        ..c
    };
    w.refused(
        "RIDs over the other device's",
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            r10: 0x04ff << 8,
            r11: 1 | 0x0300 << 8,
            ..mine
        },
        platform_tdx::status::TDX_IDE_STREAM_RID_OVERLAP | 10,
    );
    w.refused(
        "a window over the other device's",
        abi::TDH_IDE_STREAM_CREATE,
        SeamRegs {
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            ..mine
        },
        platform_tdx::status::TDX_IDE_STREAM_ADDR_OVERLAP | 12,
    );
    w.refused(
        "SPDM metadata a stream's",
        abi::TDH_SPDM_CREATE,
        SeamRegs {
            rcx: abi::function_id(rid(5)),
            rdx: abi::hpa_array(IDE_MT, 1),
            ..Default::default()
        },
        IN_USE | 2,
    );
    w.refused(
        "a TDI's private page a stream's metadata",
        abi::TDH_DEVIF_CREATE,
        devif_create_regs(dev2, rid(4), TDR, [SPARE, IDE_MT, SPARE_2]),
        IN_USE | 9,
    );
}

#[test]
fn km_block_delete_refusals_change_nothing() {
    big_stack(km_block_delete_refusals_change_nothing_body);
}

fn km_block_delete_refusals_change_nothing_body() {
    let mut mem = pool();
    let (w, td, dev, stream) = streamed(&mut mem);
    let k = km_regs(dev, stream, IDE_KM_SETUP);
    let s = stream_regs(dev, stream);
    let cases: &[(&str, u16, SeamRegs, u64)] = &[
        (
            "km unknown id",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs { rcx: 9, ..k },
            INVALID | 1,
        ),
        (
            "km other stream",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                rdx: stream + 1,
                ..k
            },
            TDX_IDE_STREAM_NOT_CONFIGURED | 2,
        ),
        (
            "km op 3",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs { r8: 3, ..k },
            INVALID | 8,
        ),
        (
            "km response misaligned",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                r9: IN_MSG + 4,
                ..k
            },
            INVALID | 9,
        ),
        (
            "km request outside",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs { r10: OUTSIDE, ..k },
            RANGE | 10,
        ),
        (
            "km request = response",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs { r10: IN_MSG, ..k },
            INVALID | 10,
        ),
        (
            "km request SPDM metadata",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs { r10: SPDM_MT, ..k },
            IN_USE | 10,
        ),
        (
            "refresh without keys",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                r8: IDE_KM_REFRESH,
                ..k
            },
            TDX_IDE_STREAM_INVALID_STATE | 8,
        ),
        (
            "stop without keys",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                r8: IDE_KM_STOP,
                ..k
            },
            TDX_IDE_STREAM_INVALID_STATE | 8,
        ),
        (
            "block unknown id",
            abi::TDH_IDE_STREAM_BLOCK,
            SeamRegs { rcx: 9, ..s },
            INVALID | 1,
        ),
        (
            "block other stream",
            abi::TDH_IDE_STREAM_BLOCK,
            SeamRegs { rdx: 77, ..s },
            TDX_IDE_STREAM_NOT_CONFIGURED | 2,
        ),
        (
            "delete unknown id",
            abi::TDH_IDE_STREAM_DELETE,
            SeamRegs { rcx: 9, ..s },
            INVALID | 1,
        ),
        (
            "delete other stream",
            abi::TDH_IDE_STREAM_DELETE,
            SeamRegs { rdx: 77, ..s },
            TDX_IDE_STREAM_NOT_CONFIGURED | 2,
        ),
        (
            "delete not blocked",
            abi::TDH_IDE_STREAM_DELETE,
            s,
            TDX_IDE_STREAM_NOT_BLOCKED | 2,
        ),
        (
            "delete, release form not 0",
            abi::TDH_IDE_STREAM_DELETE,
            SeamRegs { r8: IDE_MT, ..s },
            INVALID | 8,
        ),
    ];
    for (what, leaf, regs, status) in cases {
        w.refused(what, *leaf, *regs, *status);
    }
    w.ok(abi::TDH_IDE_STREAM_KM, k);
    // Keys set up under a bound TDI are refused (the core's TdiBound), as is STOP with any TDI.
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    w.refused(
        "setup under a bound TDI",
        abi::TDH_IDE_STREAM_KM,
        k,
        TDX_DEVIF_TDISP_INVALID_STATE | 1,
    );
    w.refused(
        "stop with a TDI",
        abi::TDH_IDE_STREAM_KM,
        SeamRegs {
            r8: IDE_KM_STOP,
            ..k
        },
        TDX_IDE_STREAM_HAS_DEVICE_INTERFACES | 2,
    );
    // Refresh of a live stream changes nothing.
    let before = w.image();
    w.ok(
        abi::TDH_IDE_STREAM_KM,
        SeamRegs {
            r8: IDE_KM_REFRESH,
            ..k
        },
    );
    assert!(w.image() == before);
    w.ok(abi::TDH_IDE_STREAM_BLOCK, s);
    for (what, leaf, regs, status) in [
        (
            "block twice",
            abi::TDH_IDE_STREAM_BLOCK,
            s,
            TDX_IDE_STREAM_BLOCKED | 2,
        ),
        (
            "setup of a blocked stream",
            abi::TDH_IDE_STREAM_KM,
            k,
            TDX_IDE_STREAM_BLOCKED | 2,
        ),
        (
            "refresh of a blocked stream",
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                r8: IDE_KM_REFRESH,
                ..k
            },
            TDX_IDE_STREAM_BLOCKED | 2,
        ),
        (
            "delete with a TDI",
            abi::TDH_IDE_STREAM_DELETE,
            s,
            TDX_IDE_STREAM_HAS_DEVICE_INTERFACES | 2,
        ),
    ] {
        w.refused(what, leaf, regs, status);
    }
}

/// A forced unbind cuts the stream as before; KM SETUP (keys set, not blocked) is the host's
/// re-establishment, and a refresh of a cut stream is refused.
#[test]
fn km_setup_re_establishes_a_stream_a_forced_unbind_cut() {
    big_stack(km_setup_re_establishes_a_stream_a_forced_unbind_cut_body);
}

fn km_setup_re_establishes_a_stream_a_forced_unbind_cut_body() {
    let mut mem = pool();
    let (w, td, dev, stream) = live(&mut mem);
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    let force = SeamRegs {
        rcx: tdi,
        rdx: abi::UNBIND_FLAG_FORCE,
        ..Default::default()
    };
    let mut out = w.call(abi::TSM_DEVIF_UNBIND, force);
    while out.rax == TDX_INTERRUPTED_RESUMABLE {
        out = w.call(abi::TSM_DEVIF_UNBIND, force);
    }
    assert_eq!(out.rax, TDX_SUCCESS);
    w.refused(
        "bind after the cut",
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
        TSM_STREAM_CUT | 1,
    );
    w.refused(
        "refresh of a cut stream",
        abi::TDH_IDE_STREAM_KM,
        km_regs(dev, stream, IDE_KM_REFRESH),
        TDX_IDE_STREAM_INVALID_STATE | 8,
    );
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
}

/// TDH.MMIO.MAP of a page outside the address association of its device's IDE stream is
/// refused (the module's `TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE` + R8) and changes nothing: the
/// device's TEE traffic for it would not use the stream. Inside the window it maps.
#[test]
fn map_outside_the_streams_address_window_is_refused() {
    big_stack(map_outside_the_streams_address_window_is_refused_body);
}

fn map_outside_the_streams_address_window_is_refused_body() {
    let mut mem = pool();
    let (w, td, dev) = connected(&mut mem);
    // A window of 0x9000_0000-0x9fff_ffff: the BAR at 0x8000_0000 is outside it.
    let regs = SeamRegs {
        r12: 1 | (0x900 << 8) | (0x9ff << 20),
        ..create_regs(dev)
    };
    let stream = w.ok(abi::TDH_IDE_STREAM_CREATE, regs).rcx;
    w.ok(abi::TDH_IDE_STREAM_KM, km_regs(dev, stream, IDE_KM_SETUP));
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    let map = SeamRegs {
        rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size4K),
        rdx: td,
        r8: BAR,
        ..Default::default()
    };
    w.refused(
        "a page outside the stream's window",
        abi::TDH_MMIO_MAP,
        map,
        platform_tdx::status::TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE | 8,
    );
    // The same device with a window over its BAR maps the page.
    let mut mem = pool();
    let (w, td, dev, _) = live(&mut mem);
    let tdi = w.create_tdi(dev);
    assert_eq!(w.bind(tdi, td).rax, TDX_SUCCESS);
    w.ok(abi::TDH_MMIO_MAP, SeamRegs { rdx: td, ..map });
}
