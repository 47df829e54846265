//! A TDX module over a sharded core: the memory leaves of TDs in different shards run side by
//! side through the dispatcher (no TDX_OPERAND_BUSY between them), and a TD created and torn
//! down beside them is BUSY or succeeds but never leaves the module's per-shard copies of the
//! TD and SPDM tables different.
//!
//! `TSM_TDX_ONE_SHARD=1` runs the lanes over one shard instead, where they do contend: the
//! proof that the lane test can fail.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};

#[path = "common/devif_create.rs"]
mod devif_create;
#[path = "common/sharded.rs"]
mod sharded;

use devif_create::devif_create_regs;

use platform_tdx::TdxModule;
use platform_tdx::abi::{self, Dispatcher, HostBuffer, RangeList, SeamRegs, page_info};
use platform_tdx::frames::Page;
use platform_tdx::module::MESSAGE_PAGE_BYTES;
use platform_tdx::status::*;
use platform_tdx::td;
use tsm_core::device_model::ModelDevice;
use tsm_core::{Gpa, LeafState, MmioRange, ModelSession, PageSize, RequesterId};

/// Host memory: page 0 the range list, pages 1-6 the TDIs' request and response pages, 7-9
/// TDR pages, 10-11 SPDM metadata, 12-15 the link's config, dev_info, response and request
/// pages, 16-17 IDE stream metadata, 18-23 the TDIs' private pages.
const HOST: u64 = 0x7_0000_0000;
const HOST_PAGES: usize = 24;
const PARAMS: u64 = HOST;
const CONFIG_PAGE: u64 = host_page(12);
const DEV_INFO_PAGE: u64 = host_page(13);
const LINK_RESPONSE: u64 = host_page(14);
const LINK_REQUEST: u64 = host_page(15);
const GPA: u64 = 0x10_0000_0000;
/// 4 KiB pages each lane maps (a quarter of its 4 MiB BAR).
const PAGES: u64 = 256;
/// Table pages of each shard's pool: ample for one TD's `PAGES` leaves.
const POOL_PAGES: usize = 64;

const fn host_page(i: u64) -> u64 {
    HOST + i * MESSAGE_PAGE_BYTES as u64
}

/// Lane `i`'s TDR page, bus, BAR and TDI message pages (request, response).
const fn tdr(i: u64) -> u64 {
    host_page(7 + i)
}
const fn bus(i: u64) -> u8 {
    3 + i as u8
}
const fn bar(i: u64) -> u64 {
    0x8000_0000 + i * 0x100_0000
}
const fn tdi_pages(i: u64) -> (u64, u64) {
    (host_page(1 + 2 * i), host_page(2 + 2 * i))
}

fn rid(bus: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, 0).unwrap()
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The firmware over `N` shards, each S-EPT over a pool of its own, the host's memory and the
/// device behind its DOE mailbox (single-threaded set-up; the lanes call the firmware alone).
struct World<'m, const N: usize> {
    fw: TdxModule<'m, ModelSession, N>,
    mem: Vec<u8>,
    device: ModelDevice,
}

impl<'m, const N: usize> World<'m, N> {
    fn new(pools: &'m mut [Vec<Page>; N]) -> Self {
        World {
            fw: sharded::sharded_module(pools),
            mem: vec![0; HOST_PAGES * MESSAGE_PAGE_BYTES],
            device: ModelDevice::model(),
        }
    }

    fn call(&mut self, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        Dispatcher::new(&self.fw, HostBuffer::new(HOST, &mut self.mem)).seamcall(&mut regs);
        regs
    }

    fn ok(&mut self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(leaf, regs);
        assert_eq!(out.rax, TDX_SUCCESS, "leaf {leaf:#x}: {:#x}", out.rax);
        out
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let off = (at - HOST) as usize;
        self.mem[off..off + len].to_vec()
    }

    fn write(&mut self, at: u64, bytes: &[u8]) {
        let off = (at - HOST) as usize;
        self.mem[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn doe(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let n = self.device.answer(request, &mut answer)?;
        Some(answer[..n].to_vec())
    }

    /// Lane `i`: its TD (guest slot `i`, shard `i % N`), a device on its own bus with a 4 MiB
    /// BAR, linked (SPDM session, IDE stream with keys), and the device's TDI bound to the TD.
    fn lane(&mut self, i: u64) -> u64 {
        let td = tdr(i);
        self.ok(
            abi::TDH_MNG_CREATE,
            SeamRegs {
                rcx: td,
                rdx: 5 + i,
                ..Default::default()
            },
        );
        let guest = self.fw.td_of(td).unwrap().unwrap();
        assert_eq!(u64::from(guest.slot()), i, "one TD per shard");
        let bus = bus(i);
        let bar = bar(i);
        let dev = self
            .ok(
                abi::TDH_SPDM_CREATE,
                SeamRegs {
                    rcx: abi::function_id(rid(bus)),
                    rdx: abi::hpa_array(host_page(10 + i), 1),
                    ..Default::default()
                },
            )
            .rcx;
        let range = MmioRange::from_raw(bar, 1024).unwrap();
        self.write(PARAMS, RangeList::from_ranges(&[range]).unwrap().bytes());
        self.ok(
            abi::TSM_SPDM_BARS,
            SeamRegs {
                rcx: dev,
                rdx: PARAMS,
                ..Default::default()
            },
        );
        self.link(dev, bus, bar, i);
        self.device.report_ranges(rid(bus), &[range]);
        let (request, _) = tdi_pages(i);
        let private = [0, 1, 2].map(|k| host_page(18 + 3 * i + k));
        self.ok(
            abi::TDH_DEVIF_CREATE,
            devif_create_regs(dev, rid(bus), td, private),
        );
        let tdi = abi::function_id(rid(bus));
        let mut out = self.call(
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: tdi,
                rdx: td,
                r8: request,
                ..Default::default()
            },
        );
        while out.rax == TDX_SPDM_REQUEST {
            out = self.respond(i, tdi, out.rcx);
        }
        assert_eq!(out.rax, TDX_SUCCESS, "bind: {:#x}", out.rax);
        td
    }

    /// The host's relay of lane `i`'s request (RCX `rcx`) to the device and back.
    fn respond(&mut self, i: u64, tdi: u64, rcx: u64) -> SeamRegs {
        let (request, response) = tdi_pages(i);
        let len = ((rcx >> 8) & 0xffff) as usize;
        let answer = self.doe(&self.read(request, len)).unwrap();
        self.write(response, &answer);
        self.call(
            abi::TDH_DEVIF_RESPONSE,
            SeamRegs {
                rcx: tdi,
                rdx: abi::devif_rsp_in(response, false),
                r8: request,
                ..Default::default()
            },
        )
    }

    /// Linux's link set-up: TDH.SPDM.CONNECT relayed, TDH.IDE.STREAM.CREATE over the BAR,
    /// TDH.IDE.STREAM.KM SETUP.
    fn link(&mut self, dev: u64, bus: u8, bar: u64, i: u64) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
        config[5] = 0xFF;
        self.write(CONFIG_PAGE, &config);
        let connect = SeamRegs {
            rcx: dev,
            rdx: CONFIG_PAGE,
            r8: LINK_RESPONSE,
            r9: LINK_REQUEST,
            r10: abi::hpa_array(DEV_INFO_PAGE, 1),
            ..Default::default()
        };
        let mut out = self.call(abi::TDH_SPDM_CONNECT, connect);
        while out.rax == TDX_SPDM_REQUEST {
            let req = self.read(LINK_REQUEST, out.rcx as usize);
            let answer = self.doe(&req).unwrap();
            self.write(LINK_RESPONSE, &answer);
            out = self.call(abi::TDH_SPDM_CONNECT, connect);
        }
        assert_eq!(out.rax, TDX_SUCCESS);
        let rid = u64::from(bus) << 8;
        let window = platform_tdx::link::addr_assoc(bar, bar + (4 << 20) - 1);
        let stream = self.ok(
            abi::TDH_IDE_STREAM_CREATE,
            SeamRegs {
                rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
                rdx: dev,
                r8: abi::hpa_array(host_page(16 + i), 1),
                r10: rid << 8,
                r11: 1 | rid << 8,
                r12: window[0],
                r13: window[1],
                r14: window[2],
                ..Default::default()
            },
        );
        self.ok(
            abi::TDH_IDE_STREAM_KM,
            SeamRegs {
                rcx: dev,
                rdx: stream.rcx,
                r8: 0,
                r9: LINK_RESPONSE,
                r10: LINK_REQUEST,
                ..Default::default()
            },
        );
    }
}

fn busy(status: u64) -> bool {
    status & CODE_MASK == TDX_OPERAND_BUSY
}

/// What one lane saw: BUSY statuses (and of which leaf), maps that succeeded.
#[derive(Debug, Default)]
struct LaneLog {
    busy: Vec<(u16, u64)>,
    mapped: Vec<u64>,
}

/// Lane `td` (whose BAR is at `base`), on host memory `mem`: for each of `PAGES` pages,
/// TDH.MMIO.MAP (again while BUSY), then the host's TDH.MMIO.UNMAP and TDH.MMIO.BLOCK (refused: the TDI is bound),
/// TDH.MEM.SEPT.RD and TDH.MEM.TRACK.
fn run_lane<const N: usize>(
    fw: &TdxModule<'_, ModelSession, N>,
    mem: &mut [u8],
    td: u64,
    base: u64,
) -> LaneLog {
    let dispatcher = Dispatcher::new(fw, HostBuffer::new(HOST, mem));
    let mut log = LaneLog::default();
    let mut call = |leaf: u16, regs: SeamRegs| {
        let mut regs = SeamRegs {
            rax: u64::from(leaf),
            ..regs
        };
        dispatcher.seamcall(&mut regs);
        if busy(regs.rax) {
            log.busy.push((leaf, regs.rax));
        }
        regs.rax
    };
    let mut mapped = Vec::new();
    for p in 0..PAGES {
        let gpa = page_info(Gpa::try_new(GPA + p * 0x1000).unwrap(), PageSize::Size4K);
        let on = SeamRegs {
            rcx: gpa,
            rdx: td,
            ..Default::default()
        };
        // Repeated while BUSY, so the leaves after it find the page mapped.
        loop {
            let map = call(
                abi::TDH_MMIO_MAP,
                SeamRegs {
                    r8: base + p * 0x1000,
                    ..on
                },
            );
            if map == TDX_SUCCESS {
                mapped.push(p);
                break;
            }
            assert!(busy(map), "map: {map:#x}");
        }
        for leaf in [abi::TDH_MMIO_UNMAP, abi::TDH_MMIO_BLOCK] {
            let s = call(leaf, on);
            assert!(
                s & CODE_MASK == TDX_DEVIF_TDISP_INVALID_STATE || busy(s),
                "leaf {leaf:#x} of a bound TDI's page: {s:#x}"
            );
        }
        let s = call(abi::TDH_MEM_SEPT_RD, on);
        assert!(s == TDX_SUCCESS || busy(s), "sept rd: {s:#x}");
        let s = call(
            abi::TDH_MEM_TRACK,
            SeamRegs {
                rcx: td,
                ..Default::default()
            },
        );
        assert!(s == TDX_SUCCESS || busy(s), "track: {s:#x}");
    }
    log.mapped = mapped;
    log
}

/// TD `tdr` created (TDH.MNG.CREATE) and torn down (VPFLUSHDONE, CACHE.WB, KEY.FREEID,
/// PAGE.RECLAIM) until `stop` (at least once), each step repeated while BUSY (and CACHE.WB resumed while
/// INTERRUPTED_RESUMABLE). Every other status fails the test. The BUSY statuses seen.
fn create_and_tear_down<const N: usize>(
    fw: &TdxModule<'_, ModelSession, N>,
    mem: &mut [u8],
    tdr: u64,
    stop: &AtomicBool,
) -> (u64, u64) {
    let dispatcher = Dispatcher::new(fw, HostBuffer::new(HOST, mem));
    let mut busy_seen = 0;
    let mut until_done = |leaf: u16, rcx: u64, rdx: u64| loop {
        let mut regs = SeamRegs {
            rax: u64::from(leaf),
            rcx,
            rdx,
            ..Default::default()
        };
        dispatcher.seamcall(&mut regs);
        if busy(regs.rax) {
            busy_seen += 1;
            // A BUSY changed nothing: the copies are still the same (or being changed by
            // another CPU, which is BUSY too).
            assert_ne!(fw.copies_agree(), Ok(false), "copies differ after a BUSY");
            std::thread::yield_now();
            continue;
        }
        return regs.rax;
    };
    let mut rounds = 0;
    while rounds == 0 || !stop.load(Ordering::Acquire) {
        rounds += 1;
        assert_eq!(until_done(abi::TDH_MNG_CREATE, tdr, 9), TDX_SUCCESS);
        assert_eq!(until_done(abi::TDH_MNG_VPFLUSHDONE, tdr, 0), TDX_SUCCESS);
        let mut cmd = td::CACHE_WB_START;
        loop {
            match until_done(abi::TDH_PHYMEM_CACHE_WB, cmd, 0) {
                TDX_INTERRUPTED_RESUMABLE => cmd = td::CACHE_WB_RESUME,
                s => {
                    assert_eq!(s, TDX_SUCCESS);
                    break;
                }
            }
        }
        assert_eq!(until_done(abi::TDH_MNG_KEY_FREEID, tdr, 0), TDX_SUCCESS);
        assert_eq!(
            until_done(abi::TDH_PHYMEM_PAGE_RECLAIM, tdr, 0),
            TDX_SUCCESS
        );
    }
    (rounds, busy_seen)
}

/// Two lanes (and, with `churn`, a third thread creating and tearing down a TD) at once, from
/// a barrier. The lanes' logs and the churn's rounds and BUSY count.
fn race<const N: usize>(churn: bool) -> (Vec<LaneLog>, (u64, u64), World<'static, N>) {
    let pools: &'static mut [Vec<Page>; N] = Box::leak(Box::new(std::array::from_fn(|_| {
        vec![Page::ZERO; POOL_PAGES]
    })));
    let mut w = World::<N>::new(pools);
    let tds = [w.lane(0), w.lane(1)];
    let lanes_done = AtomicBool::new(false);
    let start = Barrier::new(if churn { 3 } else { 2 });
    let (logs, churned) = std::thread::scope(|s| {
        let (fw, start, lanes_done) = (&w.fw, &start, &lanes_done);
        let lanes: Vec<_> = (0..2u64)
            .map(|i| {
                let mut mem = w.mem.clone();
                let td = tds[i as usize];
                s.spawn(move || {
                    start.wait();
                    run_lane(fw, &mut mem, td, bar(i))
                })
            })
            .collect();
        let churner = churn.then(|| {
            let mut mem = w.mem.clone();
            s.spawn(move || {
                start.wait();
                create_and_tear_down(fw, &mut mem, tdr(2), lanes_done)
            })
        });
        let logs: Vec<LaneLog> = lanes.into_iter().map(|h| h.join().unwrap()).collect();
        lanes_done.store(true, Ordering::Release);
        (logs, churner.map_or((0, 0), |h| h.join().unwrap()))
    });
    (logs, churned, w)
}

/// Every page a lane's MAP succeeded for is still mapped, neither removed nor blocked by the
/// refused UNMAP and BLOCK; every other page is not mapped.
fn check_leaves<const N: usize>(w: &World<'_, N>, logs: &[LaneLog]) {
    for (i, log) in logs.iter().enumerate() {
        let guest = w.fw.td_of(tdr(i as u64)).unwrap().unwrap();
        for p in 0..PAGES {
            let gpa = Gpa::try_new(GPA + p * 0x1000).unwrap();
            let leaf = w.fw.leaf(guest, gpa).unwrap();
            if log.mapped.contains(&p) {
                let leaf = leaf.unwrap();
                assert_eq!(leaf.state, LeafState::Mapped, "lane {i} page {p}");
                assert_eq!(leaf.hpa.as_u64(), bar(i as u64) + p * 0x1000);
            } else {
                assert_eq!(leaf, None, "lane {i} page {p}");
            }
        }
    }
}

/// The two lanes over `N` shards, from a barrier: no BUSY, every map done, every refused
/// unmap and block changed nothing, the copies the same.
fn lanes<const N: usize>() {
    let (logs, _, w) = race::<N>(false);
    let busy: Vec<_> = logs.iter().flat_map(|l| l.busy.iter().copied()).collect();
    assert!(
        busy.is_empty(),
        "{N} shard(s): BUSY (leaf, status) between two TDs: {busy:x?}"
    );
    check_leaves(&w, &logs);
    for log in &logs {
        assert_eq!(log.mapped.len() as u64, PAGES, "every map succeeded");
    }
    assert_eq!(w.fw.copies_agree(), Ok(true));
}

/// Two TDs in different shards, each with a bound TDI of its own device: their maps, the
/// host's refused unmaps and blocks, S-EPT reads and tracks never meet a BUSY. With
/// `TSM_TDX_ONE_SHARD=1` the same lanes run over one shard, where they do (the test then
/// fails: the proof it can).
#[test]
fn tds_in_different_shards_never_contend() {
    for _ in 0..knob("TSM_TDX_LANE_ROUNDS", 5) {
        if knob("TSM_TDX_ONE_SHARD", 0) == 1 {
            lanes::<1>();
        } else {
            lanes::<2>();
        }
    }
}

/// A TD created and torn down over and over beside the two lanes: each of its leaves is BUSY
/// (and changes nothing) or succeeds, the lanes' leaves are BUSY or do what they do alone, and
/// afterwards every shard's copy of the TD and SPDM tables is the same, the TD index matches,
/// the churned TD is gone from every copy and every lane page is mapped, none blocked.
#[test]
fn a_td_created_and_torn_down_beside_the_lanes_leaves_the_copies_equal() {
    let (logs, (rounds, churn_busy), w) = race::<2>(true);
    eprintln!(
        "lane BUSY: {}, {}; create/teardown rounds {rounds}, BUSY: {churn_busy}",
        logs[0].busy.len(),
        logs[1].busy.len()
    );
    assert_eq!(w.fw.copies_agree(), Ok(true));
    assert_eq!(w.fw.td_of(tdr(2)), Ok(None));
    check_leaves(&w, &logs);
    // A lane's leaves met BUSY only while the churn held what they read (every copy of the
    // TD table, or shard 0's S-EPT where the churned TD lives): contention, nothing else.
    assert!(logs.iter().flat_map(|l| &l.busy).all(|(_, s)| busy(*s)));
}
