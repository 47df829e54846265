//! The SEAMCALL dispatcher: operand checks (unknown leaves, reserved bits, address widths and
//! alignment) answer the documented status and change nothing; statuses name the operand.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use platform_tdx::abi::{self, BufferMemory, Dispatcher, RangeList, SeamRegs, page_info};
use platform_tdx::ept::SeptState;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::*;
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::tsm::Snapshot;
use tsm_core::{Gpa, MmioRange, PageSize, RequesterId, TdispState, Tsm};

const PARAMS: u64 = 0x7_0000_0000;
const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;

/// What `World::image` returns: the core's tables with the S-EPT, and the device's state.
type Image = (
    Snapshot<(Vec<Page>, SeptBookkeeping)>,
    Vec<(u32, TdispState)>,
);

struct World<'m> {
    tsm: Tsm<Sept<'m>, ModelDevice>,
    params: RangeList,
}

impl World<'_> {
    fn call(&self, leaf: u64, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = leaf;
        let host = BufferMemory {
            base: PARAMS,
            bytes: self.params.bytes(),
        };
        Dispatcher::new(&self.tsm, host).seamcall(&mut regs);
        regs
    }
    fn ok(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
        let out = self.call(u64::from(leaf), regs);
        assert_eq!(out.rax, TDX_SUCCESS, "leaf {leaf:#x}");
        out
    }
    /// Every record table of the core, the S-EPT pool's bytes and bookkeeping (epochs, roots,
    /// free list), and the device's TDISP state of every interface: what a refusal must leave
    /// alone.
    fn image(&self) -> Image {
        let snap = self
            .tsm
            .snapshot_with(|t| (t.pool().pages().copied().collect(), t.bookkeeping()))
            .unwrap();
        let device = self
            .tsm
            .with_transport(|d| d.link_mut().tdisp_states().to_vec())
            .unwrap();
        (snap, device)
    }
}

/// A TD, a device with one 4 MiB BAR, its TDI bound, one 2 MiB page mapped.
fn bound_world(mem: &mut [Page]) -> (World<'_>, u64, u64) {
    let pool = FramePool::new(mem, 0x20_0000_0000).unwrap();
    let mut w = World {
        tsm: Tsm::new(Sept::new(pool, SeptLevels::Four), ModelDevice::model()),
        params: RangeList::from_ranges(&[MmioRange::from_raw(BAR, 1024).unwrap()]).unwrap(),
    };
    let td = w.ok(abi::TSM_TD_CREATE, SeamRegs::default()).rcx;
    let rid = u64::from(RequesterId::try_new(0, 3, 0, 0).unwrap().packed());
    let dev = w
        .ok(
            abi::TDH_SPDM_CREATE,
            SeamRegs {
                rcx: rid,
                rdx: PARAMS,
                ..Default::default()
            },
        )
        .rcx;
    let tdi = w
        .ok(
            abi::TDH_DEVIF_CREATE,
            SeamRegs {
                rcx: dev,
                rdx: rid,
                ..Default::default()
            },
        )
        .rcx;
    // The device reports the BAR; bind takes the ranges from it, not from the host.
    w.tsm
        .with_transport(|d| {
            d.report_ranges(
                RequesterId::try_new(0, 3, 0, 0).unwrap(),
                &[MmioRange::from_raw(BAR, 1024).unwrap()],
            )
        })
        .unwrap();
    w.ok(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
    );
    w.ok(
        abi::TDH_MMIO_MAP,
        SeamRegs {
            rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
            rdx: td,
            r8: BAR,
            r9: tdi,
            ..Default::default()
        },
    );
    w.params = RangeList::default();
    (w, td, tdi)
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
        r9: tdi,
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
            u64::from(abi::TSM_TD_CREATE) | 1 << 63,
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
            "bind with a host range list (R8 is reserved)",
            u64::from(abi::TSM_DEVIF_BIND),
            SeamRegs {
                rcx: tdi,
                rdx: td,
                r8: PARAMS,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 8,
        ),
    ];
    for (what, leaf, regs, expect) in cases {
        let out = w.call(leaf, regs);
        assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
        assert_eq!(w.image(), before, "{what} changed state");
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
            r9: tdi,
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
    assert_eq!(w.image(), before);

    // After unbind the page is gone; a block of it reports the walk: level and state.
    let mut calls = 0;
    while w
        .call(
            u64::from(abi::TSM_DEVIF_UNBIND),
            SeamRegs {
                rcx: tdi,
                ..Default::default()
            },
        )
        .rax
        == TDX_INTERRUPTED_RESUMABLE
    {
        calls += 1;
        assert!(calls < 100);
    }
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
    let (w, td, _) = bound_world(&mut mem);
    let g = tsm_core::GuestId::from_raw(td).unwrap();
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
    let d = Dispatcher::new(&w.tsm, host);
    let mut regs = SeamRegs {
        rax: u64::from(abi::TDG_MMIO_ACCEPT),
        rcx: page,
        ..Default::default()
    };
    d.tdcall(g, &mut regs);
    assert_eq!(regs.rax, TDX_SUCCESS);
    let mut regs = SeamRegs {
        rax: u64::from(abi::TDG_MMIO_ACCEPT),
        rcx: page,
        ..Default::default()
    };
    d.tdcall(g, &mut regs);
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

    w.tsm.with_table(|t| t.hold_flush(g, true)).unwrap();
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
    let g = tsm_core::GuestId::from_raw(td).unwrap();
    let host = BufferMemory {
        base: 0,
        bytes: &[],
    };
    for accepted in [false, true] {
        if accepted {
            let mut regs = SeamRegs {
                rax: u64::from(abi::TDG_MMIO_ACCEPT),
                rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
                ..Default::default()
            };
            Dispatcher::new(&w.tsm, &host).tdcall(g, &mut regs);
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
                        r9: tdi,
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
                assert_eq!(w.image(), before, "{what} with bit {high} changed state");
            }
            let mut regs = SeamRegs {
                rax: u64::from(abi::TDG_MMIO_ACCEPT),
                rcx: page,
                ..Default::default()
            };
            Dispatcher::new(&w.tsm, &host).tdcall(g, &mut regs);
            assert_eq!(
                regs.rax,
                TDX_OPERAND_ADDR_RANGE_ERROR | 1,
                "TDG.MMIO.ACCEPT"
            );
            assert_eq!(
                w.image(),
                before,
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
fn core_world() -> (
    Tsm<MemTable<64>, ModelDevice>,
    tsm_core::GuestId,
    tsm_core::TdiId,
) {
    let tsm = Tsm::new(MemTable::<64>::new(), ModelDevice::model());
    let td = tsm.create_guest().unwrap();
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BAR, 1024).unwrap();
    let dev = tsm.create_device(rid, &[bar]).unwrap();
    let tdi = tsm.create_tdi(dev, rid).unwrap();
    tsm.with_transport(|d| d.report_ranges(rid, &[bar]))
        .unwrap();
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
    assert_eq!((u64::from(ctd.slot()), u64::from(ctdi.slot())), (td, tdi));
    let unknown_td = tsm_core::GuestId::from_slot(9);
    let unknown_tdi = tsm_core::TdiId::from_slot(99);
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
            "map: unknown TDI, misaligned GPA",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: misaligned | 1,
                rdx: td,
                r8: BAR + 0x20_0000,
                r9: 99,
                ..Default::default()
            },
            core.map_mmio(unknown_tdi, ctd, gpa(misaligned), hpa(BAR + 0x20_0000), k2m),
        ),
        (
            "map: misaligned host address",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: td,
                r8: BAR + 0x1000,
                r9: tdi,
                ..Default::default()
            },
            core.map_mmio(ctdi, ctd, gpa(GPA + 0x40_0000), hpa(BAR + 0x1000), k2m),
        ),
        (
            "map: unknown TDI, GPA beyond the 4-level S-EPT",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (1 << 48) | 1,
                rdx: td,
                r8: BAR + 0x20_0000,
                r9: 99,
                ..Default::default()
            },
            core.map_mmio(unknown_tdi, ctd, gpa(1 << 48), hpa(BAR + 0x20_0000), k2m),
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
        assert_eq!(w.image(), before, "{what} changed state");
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
    let cases: [(&str, u16, SeamRegs, u64); 7] = [
        (
            "map: unknown TDI, host address past 2^52",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: (GPA + 0x40_0000) | 1,
                rdx: td,
                r8: 1 << 52,
                r9: 99,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 9,
        ),
        (
            "map: unknown TD, page-info reserved bits",
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: GPA | 1 << 60,
                rdx: 9,
                r8: BAR,
                r9: tdi,
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
            "bind: unknown TDI, R8 not zero",
            abi::TSM_DEVIF_BIND,
            SeamRegs {
                rcx: 99,
                rdx: td,
                r8: PARAMS,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 1,
        ),
        (
            "create TDI: unknown device, bad interface ID",
            abi::TDH_DEVIF_CREATE,
            SeamRegs {
                rcx: 9,
                rdx: u64::MAX,
                ..Default::default()
            },
            TDX_OPERAND_INVALID | 1,
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
        assert_eq!(w.image(), before, "{what} changed state");
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
                r9: tdi,
                ..Default::default()
            },
        );
    }
    let tdi_regs = SeamRegs {
        rcx: tdi,
        ..Default::default()
    };
    let mut calls = 0;
    while w.call(u64::from(abi::TSM_DEVIF_ERROR), tdi_regs).rax == TDX_INTERRUPTED_RESUMABLE {
        calls += 1;
        assert!(calls < 10);
    }
    let track = SeamRegs {
        rcx: td,
        ..Default::default()
    };
    // Blocked in epoch 0 (bucket 0): TRACKs up to epoch 4095 need no re-stamping.
    for _ in 0..4095 {
        w.ok(abi::TDH_MEM_TRACK, track);
    }
    // Entering bucket 2 (epoch 4096): 71 leaves to re-stamp, 64 per call.
    if host_tracks {
        assert_eq!(
            w.call(u64::from(abi::TDH_MEM_TRACK), track).rax,
            TDX_INTERRUPTED_RESUMABLE
        );
        w.ok(abi::TDH_MEM_TRACK, track);
    }
    let mut calls = 0;
    loop {
        let rax = w.call(u64::from(abi::TSM_DEVIF_UNBIND), tdi_regs).rax;
        if rax == TDX_SUCCESS {
            break;
        }
        assert_eq!(rax, TDX_INTERRUPTED_RESUMABLE);
        calls += 1;
        assert!(calls < 10);
    }
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
    let (mut w, _, _) = bound_world(&mut mem);
    let rid = u64::from(RequesterId::try_new(0, 9, 0, 0).unwrap().packed());
    let before = w.image();
    for (what, attributes, range_id) in [("attributes", 1 << 2, 0), ("range ID", 0, 7)] {
        let mut list =
            RangeList::from_ranges(&[MmioRange::from_raw(0x9000_0000, 4).unwrap()]).unwrap();
        list.ranges[0].attributes = attributes;
        list.ranges[0].range_id = range_id;
        w.params = list;
        let out = w.call(
            u64::from(abi::TDH_SPDM_CREATE),
            SeamRegs {
                rcx: rid,
                rdx: PARAMS,
                ..Default::default()
            },
        );
        assert_eq!(out.rax, TDX_OPERAND_INVALID | 2, "BAR with {what} set");
        assert_eq!(w.image(), before);
        assert_eq!(
            w.tsm.device(tsm_core::DeviceId::from_slot(1)).err(),
            Some(tsm_core::Error::InvalidHandle)
        );
    }
}

/// TSM.DEVIF.UNBIND RDX bit 0 forces the unbind (no STOP, the IDE stream is cut); other RDX
/// bits are reserved. A bind is then `TSM_STREAM_CUT` until TSM.IDE.STREAM_SETUP.
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
        assert_eq!(
            w.image(),
            before,
            "reserved RDX bits {rdx:#x} changed something"
        );
    }
    let iface = RequesterId::try_new(0, 3, 0, 0).unwrap();
    w.tsm
        .with_transport(|d| d.set_fault(iface, Some(tsm_core::DeviceFault::NoResponse)))
        .unwrap();
    assert_eq!(unbind(0).rax & CODE_MASK, TSM_DEVICE_UNRESPONSIVE);
    let mut calls = 0;
    while unbind(abi::UNBIND_FLAG_FORCE).rax == TDX_INTERRUPTED_RESUMABLE {
        calls += 1;
        assert!(calls < 100);
    }
    assert_eq!(unbind(abi::UNBIND_FLAG_FORCE).rax, TDX_SUCCESS);
    w.tsm.with_transport(|d| d.set_fault(iface, None)).unwrap();
    let bind = || {
        w.call(
            u64::from(abi::TSM_DEVIF_BIND),
            SeamRegs {
                rcx: tdi,
                rdx: td,
                ..Default::default()
            },
        )
    };
    let before = w.image();
    assert_eq!(bind().rax, TSM_STREAM_CUT | u64::from(OPERAND_ID_RCX));
    assert_eq!(w.image(), before, "a refused bind changed something");
    let setup = |rcx: u64| {
        w.call(
            u64::from(abi::TSM_IDE_STREAM_SETUP),
            SeamRegs {
                rcx,
                ..Default::default()
            },
        )
    };
    assert_eq!(
        setup(99).rax,
        TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RCX)
    );
    assert_eq!(setup(0).rax, TDX_SUCCESS);
    assert_eq!(bind().rax, TDX_SUCCESS);
    // Set-up under a bound TDI is refused, live stream or not, and changes nothing.
    let before = w.image();
    assert_eq!(setup(0).rax & CODE_MASK, TDX_DEVIF_TDISP_INVALID_STATE);
    assert_eq!(w.image(), before);
}
