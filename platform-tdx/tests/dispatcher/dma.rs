//! Trusted DMA through the dispatcher: the PASID entry's life (TDH.DMAR.ADD, TDG.DMAR.ACCEPT,
//! the unbind's teardown waiting on TDH.IQ.INV.PROCESS), every refusal changing nothing, and
//! the Linux host's own teardown order.

use super::*;
use platform_tdx::dmar::{self, ADD_QWORD1, INV_QUEUED, MAP_BLOCKED, MAP_PRESENT};

/// Qword 0 of an ADD for the 4-level S-EPT of these tests.
const ADD_QWORD0: u64 = dmar::ADD_QWORD0_4LEVEL;

const IDX_RCX: u64 = 1;

fn idx() -> u64 {
    dmar::dmar_idx(rid(3))
}

fn add_regs(td: u64) -> SeamRegs {
    dmar_add_regs(idx(), td)
}

fn on_idx(w: &World<'_>, leaf: u16) -> SeamRegs {
    w.call(u64::from(leaf), on(idx()))
}

/// A wait descriptor (type 5, SW, FN) writing to the last host page.
fn inv_request(w: &World<'_>) -> SeamRegs {
    let regs = inv_regs();
    w.call(
        u64::from(abi::TDH_IQ_INV_REQUEST),
        SeamRegs {
            r9: regs.r9 | 1 << 32,
            ..regs
        },
    )
}

/// TDH.IQ.INV.REQUEST with `regs`: its status.
fn inv_request_with(w: &World<'_>, regs: SeamRegs) -> u64 {
    w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax
}

fn track(w: &World<'_>, td: u64) -> u64 {
    w.call(
        u64::from(abi::TDH_MEM_TRACK),
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    )
    .rax
}

#[test]
fn the_whole_life_waits_for_the_hosts_iq_process() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(read.rax, TDX_SUCCESS);
    assert_eq!(
        (read.r8 & dmar::PTE_SLPTPTR_MASK, read.r9 & 0xffff),
        (0, dmar::DID_TD_BIT)
    );
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    let g = w.fw.td_of(td).unwrap().unwrap();
    let root = w.fw.with_table(|t| t.root_phys(g)).unwrap().unwrap();
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(
        read.r8 & dmar::PTE_SLPTPTR_MASK,
        root,
        "the module's SLPTPTR"
    );
    assert_eq!(read.r8 & dmar::PTE_P, dmar::PTE_P);
    assert_eq!(read_state(read.rdx).0, MAP_PRESENT);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    let id = w.id(tdi);
    assert_eq!(
        w.fw.tsm().dma_reach(id).unwrap(),
        tsm_core::dma::DmaReach::Private(g)
    );
    // The unbind blocks the MMIO and the entry and queues the entry's invalidation, which
    // completes before STOP: the interface stays CONFIG_LOCKED, its device RUN, until the
    // IOTLB forgot the TD's translations.
    let iotlb = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;
    let pending = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(tdi), pending);
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(read.r8 & dmar::PTE_P, 0, "not present from BLOCK on");
    assert_eq!(read_state(read.rdx), (MAP_BLOCKED, INV_QUEUED));
    assert_eq!(
        w.device.borrow().dsm().state(rid(3)),
        TdispState::Run,
        "no STOP yet"
    );
    assert_eq!(
        w.fw.tsm().dma_reach(id).unwrap(),
        tsm_core::dma::DmaReach::SharedOnly
    );
    refused(
        w,
        "unbind again before PROCESS",
        || w.unbind_all(tdi),
        pending,
    );
    assert_eq!(iq_process(w), TDX_SUCCESS);
    // Then STOP and the track: the entry still names the S-EPT, so the TRACK owes an IOTLB
    // invalidation of the TD's domain, and the MMIO leaves (and the table pages their removal
    // frees) wait for it, answered as TDH.MEM.TRACK answers it. Nothing moves until the host
    // asks for it.
    assert_eq!(w.unbind_all(tdi), iotlb);
    assert_eq!(
        w.device.borrow().dsm().state(rid(3)),
        TdispState::ConfigUnlocked
    );
    let leaves = w.fw.with_table(|t| t.pool().free_frames()).unwrap();
    refused(
        w,
        "unbind again before the request",
        || w.unbind_all(tdi),
        iotlb,
    );
    refused(w, "MEM.TRACK before the request", || track(w, td), iotlb);
    refused(
        w,
        "PASID entry's REQUEST while blocked leaves wait",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    rdx: 1,
                    ..inv_regs()
                },
            )
        },
        TDX_OPERAND_INVALID | 2,
    );
    refused(
        w,
        "the domain's REQUEST naming no TD",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    rdx: dmar::INV_REQ_IOTLB,
                    r8: host_page(0),
                    ..inv_regs()
                },
            )
        },
        TDX_OPERAND_INVALID | 8,
    );
    refused(
        w,
        "the domain's REQUEST without a fence",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    rdx: dmar::INV_REQ_IOTLB,
                    r8: td,
                    r9: dmar::WAIT_DESC_TYPE,
                    ..inv_regs()
                },
            )
        },
        TDX_OPERAND_INVALID | 9,
    );
    refused(
        w,
        "the domain's REQUEST on another IOMMU",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    rcx: 1,
                    rdx: dmar::INV_REQ_IOTLB,
                    r8: td,
                    ..inv_regs()
                },
            )
        },
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
    );
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
    refused(
        w,
        "the domain's REQUEST again",
        || iotlb_request(w, td),
        iotlb,
    );
    refused(w, "unbind before PROCESS", || w.unbind_all(tdi), iotlb);
    refused(w, "MEM.TRACK before PROCESS", || track(w, td), iotlb);
    assert_eq!(
        w.fw.with_table(|t| t.pool().free_frames()).unwrap(),
        leaves,
        "no table page went back before the IOTLB forgot the TD's domain"
    );
    // The entry's own invalidation completed before STOP.
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(read_state(read.rdx), (MAP_BLOCKED, dmar::INV_DONE));
    refused(
        w,
        "DEVIF.REMOVE while the context remains",
        || w.call(u64::from(abi::TDH_DEVIF_REMOVE), on(tdi)).rax,
        TDX_DEVIF_HAS_MAPPED_DMA | IDX_RCX,
    );
    // The domain's completed: the leaves go, then the entry, then the root it pinned.
    assert_eq!(iq_process(w), TDX_SUCCESS);
    refused(
        w,
        "nothing owed",
        || iotlb_request(w, td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
    );
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    assert_eq!(
        on_idx(w, abi::TDH_DMAR_READ).rax,
        TDX_DMAR_ENTRY_NOT_PRESENT | IDX_RCX
    );
    assert!(w.fw.with_table(|t| t.dmar().entries().count()).unwrap() == 0);
    assert_pool_all_free(w, td, "the pinned root went back with the entry");
    let out = w.call(u64::from(abi::TDH_DEVIF_REMOVE), on(tdi));
    assert_eq!(out.rax, TDX_SUCCESS);
}

#[test]
fn adds_choosing_translation_domain_or_td_and_foreign_accepts_are_refused() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    let other = w.create_td();

    let add = |regs: SeamRegs| move || w.call(150, regs).rax;
    refused(
        w,
        "SLPTPTR chosen",
        add(SeamRegs {
            r8: ADD_QWORD0 | 0x20_0000_0000,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 8,
    );
    refused(
        w,
        "present",
        add(SeamRegs {
            r8: ADD_QWORD0 | 1,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 8,
    );
    refused(
        w,
        "DID chosen",
        add(SeamRegs {
            r9: ADD_QWORD1 | 5,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 9,
    );
    refused(
        w,
        "qword 6",
        add(SeamRegs {
            r14: 1,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 14,
    );
    refused(
        w,
        "a PASID",
        add(SeamRegs {
            rcx: idx() | 1 << 12,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 1,
    );
    refused(
        w,
        "another level",
        add(SeamRegs {
            rcx: idx() | 2,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 1,
    );
    refused(
        w,
        "no TD",
        add(SeamRegs {
            rdx: td + 8,
            ..add_regs(td)
        }),
        TDX_OPERAND_INVALID | 2,
    );
    refused(
        w,
        "a TD not the owner",
        add(add_regs(other)),
        TDX_MMIO_DEVIF_OWNER_MISMATCH | 2,
    );
    refused(
        w,
        "no TDI of that RID",
        add(SeamRegs {
            rcx: dmar::dmar_idx(rid(4)),
            ..add_regs(td)
        }),
        TDX_DMAR_INVALID_MAPPING_STATE | 1,
    );
    refused(
        w,
        "accept with no entry",
        || accept(w, td, tdi),
        TDX_DMAR_INVALID_MAPPING_STATE | u64::from(OPERAND_ID_DMAR),
    );
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    refused(
        w,
        "a second ADD",
        add(add_regs(td)),
        TDX_DMAR_INVALID_MAPPING_STATE | 1,
    );
    refused(
        w,
        "accept by another TD",
        || accept(w, other, tdi),
        TDX_DEVIF_INVALID_METADATA | 1,
    );
    let tdcall = |regs: SeamRegs| {
        move || {
            w.tdcall(td, abi::TDG_DMAR_ACCEPT, SeamRegs { rcx: tdi, ..regs })
                .rax
        }
    };
    refused(
        w,
        "an L2 target",
        tdcall(SeamRegs {
            rdx: 1,
            ..Default::default()
        }),
        TDX_OPERAND_INVALID | 2,
    );
    refused(
        w,
        "R8 not zero",
        tdcall(SeamRegs {
            r8: 1,
            ..Default::default()
        }),
        TDX_OPERAND_INVALID | 8,
    );
    // Before STOP the host may neither block nor remove nor invalidate.
    refused(
        w,
        "BLOCK before STOP",
        || on_idx(w, abi::TDH_DMAR_BLOCK).rax,
        TDX_DEVIF_TDISP_INVALID_STATE | 1,
    );
    refused(
        w,
        "REMOVE before STOP",
        || on_idx(w, abi::TDH_DMAR_REMOVE).rax,
        TDX_DEVIF_TDISP_INVALID_STATE | 1,
    );
    refused(
        w,
        "IQ.INV.REQUEST before STOP",
        || inv_request(w).rax,
        TDX_DEVIF_TDISP_INVALID_STATE | 8,
    );
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    refused(w, "accepting again", || accept(w, td, tdi), TDX_SUCCESS);
}

/// The Linux TDX Connect host's order ("[RFC PATCH 30/30] coco/tdx_tsm", 2025-05-29): STOP via
/// the unbind, the MMIO blocked, tracked and unmapped, then the DMA context: DMAR.BLOCK,
/// IQ.INV.REQUEST, IQ.INV.PROCESS, DMAR.REMOVE; then the TDI's reclaim.
#[test]
fn the_linux_hosts_own_teardown_order_works() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    // The unbind blocks the entry and queues its invalidation, which the host completes before
    // STOP goes out; then, the TD's TLB flush held, the unbind stops after STOP, at its TRACK,
    // for the host.
    let g = w.fw.td_of(td).unwrap().unwrap();
    let pending = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(tdi), pending);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    w.fw.with_table(|t| t.hold_flush(g, true)).unwrap();
    let out = w.unbind_all(tdi);
    assert_eq!(
        out,
        TDX_TLB_TRACKING_NOT_DONE | u64::from(OPERAND_ID_TD_EPOCH),
        "the unbind waits for the flush"
    );
    w.fw.with_table(|t| t.hold_flush(g, false)).unwrap();
    let page = SeamRegs {
        rcx: page_info(Gpa::try_new(GPA).unwrap(), PageSize::Size2M),
        rdx: td,
        ..Default::default()
    };
    // The MMIO: blocked by the unbind already, and tracked by it with the entry naming the
    // S-EPT: the host asks for that TRACK's IOTLB invalidation of the TD's domain first, then
    // tracks and unmaps.
    assert_eq!(
        w.call(u64::from(abi::TDH_MMIO_BLOCK), page).rax,
        TDX_SUCCESS,
        "the host's own BLOCK of the blocked range goes through, as its order needs"
    );
    let iotlb = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;
    refused(w, "MEM.TRACK", || track(w, td), iotlb);
    refused(
        w,
        "MMIO.UNMAP",
        || w.call(u64::from(abi::TDH_MMIO_UNMAP), page).rax,
        iotlb | 1,
    );
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    w.ok(
        abi::TDH_MEM_TRACK,
        SeamRegs {
            rcx: td,
            ..Default::default()
        },
    );
    w.ok(abi::TDH_MMIO_UNMAP, page);
    // The S-EPT has no leaf left, but the PASID entry still names its root: the root stays.
    let slptptr = on_idx(w, abi::TDH_DMAR_READ).r8 & dmar::PTE_SLPTPTR_MASK;
    assert_eq!(w.fw.with_table(|t| t.root_phys(g)).unwrap(), Some(slptptr));
    // The unbind blocked the entry with the MMIO, before STOP, and queued its invalidation,
    // which the PROCESS above completed; the host's TRACK above owes the domain's again, and
    // REMOVE waits for that. The host's own BLOCK of the entry finds it blocked: it succeeds,
    // changing nothing. Its IQ.INV.REQUEST of the entry finds the invalidation DONE, not
    // PENDING: refused as the module refuses it (`TDX_DMAR_INVALID_INV_STATE` + R8), before the
    // wait descriptor is looked at, queueing nothing the host could wait on; the host goes on
    // to PROCESS and REMOVE.
    refused(
        w,
        "REMOVE while the TD's domain is owed",
        || on_idx(w, abi::TDH_DMAR_REMOVE).rax,
        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE | 1,
    );
    for _ in 0..2 {
        let before = w.image();
        w.ok(abi::TDH_DMAR_BLOCK, on(idx()));
        assert!(
            w.image() == before,
            "BLOCK of a blocked entry changed something"
        );
    }
    let done_already = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_R8);
    refused(w, "IQ.INV.REQUEST", || inv_request(w).rax, done_already);
    refused(
        w,
        "IQ.INV.REQUEST, a wait descriptor without fence",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    r9: dmar::WAIT_DESC_TYPE | dmar::WAIT_DESC_SW,
                    ..inv_regs()
                },
            )
        },
        done_already,
    );
    refused(
        w,
        "IQ.INV.REQUEST, a status address outside host memory",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    r10: 0x1000,
                    ..inv_regs()
                },
            )
        },
        done_already,
    );
    refused(
        w,
        "DEVIF.REMOVE with the context",
        || w.call(u64::from(abi::TDH_DEVIF_REMOVE), on(tdi)).rax,
        TDX_DEVIF_HAS_MAPPED_DMA | 1,
    );
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    let root = w.fw.with_table(|t| t.root_phys(g)).unwrap();
    assert!(root.is_some());
    w.ok(abi::TDH_DMAR_REMOVE, on(idx()));
    // The last entry gone, the empty root stays the TD's (its EPTP names it): every other
    // table page is free.
    assert_eq!(w.fw.with_table(|t| t.root_phys(g)).unwrap(), root);
    assert_pool_all_free(w, td, "every table page back");
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
    w.ok(abi::TDH_DEVIF_REMOVE, on(tdi));
}

fn inv_regs() -> SeamRegs {
    SeamRegs {
        rdx: dmar::INV_REQ_PASIDTE,
        r8: u64::from(rid(3).routing_id()),
        r9: dmar::WAIT_DESC_TYPE | dmar::WAIT_DESC_SW | dmar::WAIT_DESC_FN,
        r10: host_page(HOST_PAGES as u64 - 1),
        ..Default::default()
    }
}

#[test]
fn an_entry_needs_a_bound_tdi_and_its_add_makes_the_s_ept_root() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let td = w.create_td();
    let dev = device_world(w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    refused(
        w,
        "ADD for an unbound TDI",
        || w.call(150, add_regs(td)).rax,
        platform_tdx::status::TDX_DEVIF_INVALID_STATE | IDX_RCX,
    );
    let out = w.relayed(
        abi::TSM_DEVIF_BIND,
        SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    // Nothing mapped yet: the ADD makes the TD's S-EPT root for SLPTPTR to name (the TD
    // accepts before START, possibly before any MMIO is mapped), so the host meets the pool
    // here and the TD's accept takes no page.
    let g = w.fw.td_of(td).unwrap().unwrap();
    assert_eq!(w.fw.with_table(|t| t.root_phys(g)).unwrap(), None);
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    let root = w.fw.with_table(|t| t.root_phys(g)).unwrap();
    assert!(root.is_some(), "the ADD made the root");
    let free = w.fw.with_table(|t| t.pool().free_frames()).unwrap();
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.fw.with_table(|t| t.pool().free_frames()).unwrap(), free);
    assert_eq!(w.fw.with_table(|t| t.root_phys(g)).unwrap(), root);
    assert_eq!(
        on_idx(w, abi::TDH_DMAR_READ).r8 & dmar::PTE_SLPTPTR_MASK,
        root.unwrap()
    );
    // The unbind blocks the entry and waits for the host's invalidation.
    assert_eq!(
        w.unbind_all(tdi),
        TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR)
    );
    refused(
        w,
        "ACCEPT while unbinding",
        || accept(w, td, tdi),
        TDX_DEVIF_TDISP_INVALID_STATE | IDX_RCX,
    );
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
    assert_pool_all_free(w, td, "every table page back");
}

/// The review's sequence (review-dma finding 1): TD A has TDI X running with an accepted
/// context (its PASID entry names A's whole S-EPT) and TDI Y with MMIO mapped. X's IOTLB may
/// hold Y's translation (peer to peer) and the S-EPT table pages above it, so Y's unbind does
/// not report Y unbound, nor give a table page back, until the IOTLB invalidation of A's
/// domain its TRACK owes was requested and processed; the host's own TRACK and UNMAP wait
/// the same way, each refusal changing nothing. X keeps translating throughout. Forced or
/// not; and after a host TRACK whose invalidation is still owed, the unbind's own Track step
/// waits for it first.
#[test]
fn a_sibling_unbind_waits_for_the_running_tdis_iotlb() {
    for (force, host_tracked) in [(false, false), (true, false), (false, true)] {
        sibling_unbind(force, host_tracked);
    }
}

fn sibling_unbind(force: bool, host_tracked: bool) {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let td = w.create_td();
    let (bar_y, gpa_y) = (0x9000_0000, GPA + 0x4000_0000);
    let dev_x = device_world(w, 3, BAR);
    let dev_y = device_world(w, 4, bar_y);
    let x = w.create_tdi(dev_x, rid(3), PAGES_A);
    let y = w.create_tdi(dev_y, rid(4), PAGES_B);
    for (tdi, bar, gpa) in [(x, BAR, GPA), (y, bar_y, gpa_y)] {
        bind_mapped_2m(w, tdi, td, bar, gpa);
    }
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, x), TDX_SUCCESS);
    assert_eq!(w.start(td, x), TDX_SUCCESS);
    let g = w.fw.td_of(td).unwrap().unwrap();
    let free = || w.fw.with_table(|t| t.pool().free_frames()).unwrap();
    let mapped = || {
        w.fw.with_table(|t| {
            tsm_core::secure_table::SecureTable::leaf(t, g, Gpa::try_new(gpa_y).unwrap())
        })
        .unwrap()
    };
    let unbinding = || {
        matches!(
            w.fw.tsm().tdi(w.id(y)).unwrap().state,
            tsm_core::TdiState::Unbinding { .. }
        )
    };
    let free_before = free();
    let unbind_y = || {
        if !force {
            return w.unbind_all(y);
        }
        let regs = SeamRegs {
            rcx: y,
            rdx: abi::UNBIND_FLAG_FORCE,
            ..Default::default()
        };
        resumed(|| w.call(u64::from(abi::TSM_DEVIF_UNBIND), regs).rax)
    };

    // Y has no DMA context of its own: every wait of its unbind is A's domain's, answered as
    // TDH.MEM.TRACK answers it.
    let iotlb = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;
    if host_tracked {
        // The host's TRACK owes A's domain: Y's unbind blocks and stops, and its Track step
        // waits (the step kept) until the host requested and processed that invalidation.
        assert_eq!(track(w, td), TDX_SUCCESS);
        assert_eq!(unbind_y(), iotlb);
        assert!(matches!(
            w.fw.tsm().tdi(w.id(y)).unwrap().state,
            tsm_core::TdiState::Unbinding {
                step: tsm_core::lifecycle::UnbindStep::Track,
                ..
            }
        ));
        refused(w, "Y's unbind at its Track", unbind_y, iotlb);
        assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
        assert_eq!(iq_process(w), TDX_SUCCESS);
    }
    // Y's unbind blocks, stops (or cuts the stream) and tracks; its Remove waits for A's
    // domain.
    assert_eq!(unbind_y(), iotlb);
    assert!(unbinding(), "Y is not reported unbound");
    assert!(mapped().is_some(), "Y's leaf stays, blocked, in A's S-EPT");
    assert_eq!(free(), free_before, "no table page back to the pool");
    refused(w, "Y's unbind again", unbind_y, iotlb);
    refused(w, "the host's MEM.TRACK", || track(w, td), iotlb);
    let page_y = SeamRegs {
        rcx: page_info(Gpa::try_new(gpa_y).unwrap(), PageSize::Size2M),
        rdx: td,
        ..Default::default()
    };
    refused(
        w,
        "the host's MMIO.UNMAP of Y's page",
        || w.call(u64::from(abi::TDH_MMIO_UNMAP), page_y).rax,
        iotlb | 1,
    );
    refused(
        w,
        "PROCESS with nothing requested",
        || iq_process(w),
        TDX_SUCCESS,
    );
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
    refused(w, "Y's unbind before PROCESS", unbind_y, iotlb);
    assert!(unbinding());
    assert_eq!(iq_process(w), TDX_SUCCESS);

    // A's domain forgotten on X's IOMMU: Y's leaf and the table page above it go, Y unbinds.
    assert_eq!(unbind_y(), TDX_SUCCESS);
    assert!(!unbinding() && mapped().is_none());
    assert_eq!(
        free(),
        free_before,
        "the emptied table page waits for a TRACK"
    );
    settle(w, td);
    assert_eq!(free(), free_before + 1, "the emptied table page went back");
    // X never stopped translating through A's S-EPT.
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(read_state(read.rdx).0, MAP_PRESENT);
    assert_eq!(
        w.fw.tsm().dma_reach(w.id(x)).unwrap(),
        tsm_core::dma::DmaReach::Private(g)
    );
}

/// A TD with no accepted PASID entry tracks as before: its TRACKs owe nothing, the domain's
/// request is not required, and a TDI's unbind needs no IQ leaf at all.
#[test]
fn a_td_without_trusted_dma_owes_no_iotlb_invalidation() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    assert_eq!(track(w, td), TDX_SUCCESS);
    assert_eq!(track(w, td), TDX_SUCCESS);
    refused(
        w,
        "the domain's REQUEST",
        || iotlb_request(w, td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
    );
    assert_eq!(w.unbind_all(tdi), TDX_SUCCESS);
}

/// The BAR's second 2 MiB mapped as 4 KiB leaves for TD `td`: more than one unbind call's
/// work to block.
fn map_second_half(w: &World<'_>, td: u64) {
    for p in 0..512 {
        w.ok(
            abi::TDH_MMIO_MAP,
            SeamRegs {
                rcx: page_info(
                    Gpa::try_new(GPA + (2 << 20) + p * 0x1000).unwrap(),
                    PageSize::Size4K,
                ),
                rdx: td,
                r8: BAR + (2 << 20) + p * 0x1000,
                ..Default::default()
            },
        );
    }
}

/// An unbind (not forced) whose MMIO takes more than one call blocks the TDI's PASID entry and
/// queues its invalidation in its first call, before any leaf: the entry translates nothing
/// while the host paces the rest (it used to stay present until the last leaf was blocked).
#[test]
fn an_unbinds_first_call_blocks_the_entry_however_much_mmio_follows() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    first_call_blocks_the_entry(w, td, tdi, abi::TSM_DEVIF_UNBIND);
    assert_eq!(
        w.fw.tsm().dma_reach(w.id(tdi)).unwrap(),
        tsm_core::dma::DmaReach::SharedOnly
    );
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
}

/// A forced unbind (TSM.DEVIF.UNBIND, RDX FORCE) of a RUN TDI whose PASID entry is present and
/// accepted, with enough MMIO that the unbind takes more than one call: from the first call on
/// the device's stream is cut, the entry is blocked (not present) with its invalidation
/// queued, and the device's DMA reaches shared memory only. The unbind then waits at its
/// Remove step (`TDX_IOMMU_IOTLB_TRACKING_NOT_DONE`, the domain's wait, though the entry's own
/// invalidation is still queued too) for the host's TDH.IQ.INV.REQUEST of the TD's domain
/// (owed: the entry names the S-EPT the unbind tracked) and TDH.IQ.INV.PROCESS, each refusal
/// on the way changing nothing; the host's request of the entry the firmware queued is
/// refused (`TDX_DMAR_INVALID_INV_STATE` + R8), queued or done; TDH.DEVIF.REMOVE is refused
/// `TDX_DEVIF_HAS_MAPPED_DMA` until the entry is gone.
#[test]
fn a_forced_unbind_of_a_running_tdi_cuts_blocks_and_waits_for_the_hosts_invalidation() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    map_second_half(w, td);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Run as u64);
    let (id, g) = (w.id(tdi), w.fw.td_of(td).unwrap().unwrap());
    let dev = w.fw.tsm().tdi(id).unwrap().device;
    let reach = || w.fw.tsm().dma_reach(id).unwrap();
    assert_eq!(reach(), tsm_core::dma::DmaReach::Private(g));
    let force = SeamRegs {
        rcx: tdi,
        rdx: abi::UNBIND_FLAG_FORCE,
        ..Default::default()
    };
    let unbind = || w.call(u64::from(abi::TSM_DEVIF_UNBIND), force).rax;
    let cut_and_blocked = |when: &str| {
        assert_eq!(
            w.fw.tsm().device(dev).unwrap().stream,
            tsm_core::IdeStream::Cut,
            "{when}: the stream is cut"
        );
        assert_eq!(
            reach(),
            tsm_core::dma::DmaReach::SharedOnly,
            "{when}: DMA reaches shared memory only"
        );
        let read = on_idx(w, abi::TDH_DMAR_READ);
        assert_eq!(read.rax, TDX_SUCCESS);
        assert_eq!(read.r8 & dmar::PTE_P, 0, "{when}: the entry is not present");
        read_state(read.rdx)
    };
    let first = unbind();
    assert_eq!(
        first, TDX_INTERRUPTED_RESUMABLE,
        "the MMIO takes more than one call"
    );
    assert_eq!(
        cut_and_blocked("after the first call"),
        (MAP_BLOCKED, INV_QUEUED)
    );
    let iotlb = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;
    let mut calls = 1;
    let waits = loop {
        let out = unbind();
        assert_eq!(
            cut_and_blocked("while unbinding"),
            (MAP_BLOCKED, INV_QUEUED)
        );
        if out != TDX_INTERRUPTED_RESUMABLE {
            break out;
        }
        calls += 1;
        assert!(calls < 100, "the forced unbind never ends");
    };
    assert_eq!(waits, iotlb);
    assert!(matches!(
        w.fw.tsm().tdi(id).unwrap().state,
        tsm_core::TdiState::Unbinding {
            step: tsm_core::lifecycle::UnbindStep::Remove(_),
            ..
        }
    ));
    let remove_tdi = || w.call(u64::from(abi::TDH_DEVIF_REMOVE), on(tdi)).rax;
    let has_dma = TDX_DEVIF_HAS_MAPPED_DMA | IDX_RCX;
    refused(w, "the forced unbind again", unbind, iotlb);
    refused(w, "DEVIF.REMOVE with the entry", remove_tdi, has_dma);
    let queued_already = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_R8);
    refused(
        w,
        "the host's request of the entry the firmware queued",
        || inv_request(w).rax,
        queued_already,
    );
    refused(
        w,
        "DMAR.REMOVE before its invalidation is processed",
        || on_idx(w, abi::TDH_DMAR_REMOVE).rax,
        TDX_DMAR_INVALID_INV_STATE | IDX_RCX,
    );
    // PROCESS completes the entry's own invalidation; the TD's domain is still owed.
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(cut_and_blocked("processed"), (MAP_BLOCKED, dmar::INV_DONE));
    refused(w, "the forced unbind, the domain owed", unbind, iotlb);
    refused(
        w,
        "the host's request of the entry processed",
        || inv_request(w).rax,
        queued_already,
    );
    refused(
        w,
        "DMAR.REMOVE, the domain owed",
        || on_idx(w, abi::TDH_DMAR_REMOVE).rax,
        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE | IDX_RCX,
    );
    refused(w, "DEVIF.REMOVE, the domain owed", remove_tdi, has_dma);
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS, "the domain was owed");
    refused(w, "the forced unbind before PROCESS", unbind, iotlb);
    refused(w, "DEVIF.REMOVE before PROCESS", remove_tdi, has_dma);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    // The leaves go now, more than one call's work again.
    assert_eq!(resumed(unbind), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
    assert_eq!(
        on_idx(w, abi::TDH_DMAR_READ).rax,
        TDX_DMAR_ENTRY_NOT_PRESENT | IDX_RCX,
        "the unbind removed the entry"
    );
    assert_eq!(reach(), tsm_core::dma::DmaReach::SharedOnly);
    assert_pool_all_free(w, td, "every table page back, the pinned root too");
    assert_eq!(remove_tdi(), TDX_SUCCESS);
}

/// The device's ERROR (TSM.DEVIF.ERROR) of a RUN TDI whose MMIO takes more than one call to
/// block: its PASID entry is blocked in the first call, before any leaf, as the unbind's.
#[test]
fn a_devices_error_blocks_the_entry_in_its_first_call() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    first_call_blocks_the_entry(w, td, tdi, abi::TSM_DEVIF_ERROR);
    let last = resumed(|| w.call(u64::from(abi::TSM_DEVIF_ERROR), on(tdi)).rax);
    assert_eq!(last, TDX_SUCCESS, "the error's last call completes it");
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Error as u64);
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
}

/// Maps the second half, starts the TDI and makes `leaf`'s first call on it: the call must
/// leave work for later, with the TDI's PASID entry already blocked and its invalidation queued.
fn first_call_blocks_the_entry(w: &World<'_>, td: u64, tdi: u64, leaf: u16) {
    map_second_half(w, td);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    let out = w.call(u64::from(leaf), on(tdi));
    assert_eq!(
        out.rax, TDX_INTERRUPTED_RESUMABLE,
        "blocking takes more calls"
    );
    let read = on_idx(w, abi::TDH_DMAR_READ);
    assert_eq!(read.r8 & dmar::PTE_P, 0, "not present after the first call");
    assert_eq!(
        read_state(read.rdx),
        (MAP_BLOCKED, INV_QUEUED),
        "its invalidation queued with the block"
    );
}

/// Every page of the table pool but `td`'s S-EPT root (the TD's for its life) is free again
/// once the host has tracked `td` and completed what that TRACK owes (`why` names what must
/// have given it back): the table pages the TD's S-EPT gave up wait for that flush.
fn assert_pool_all_free(w: &World<'_>, td: u64, why: &str) {
    let g = w.fw.td_of(td).unwrap().unwrap();
    let pool = |t: &Sept<'_>| {
        let root = usize::from(t.root_phys(g).is_some());
        (t.pool().free_frames() + root, t.pool().total_frames())
    };
    settle(w, td);
    let (free, total) = w.fw.with_table(|t| pool(t)).unwrap();
    assert_eq!(free, total, "{why}");
}

/// The unbind's step (`None`: not unbinding).
fn unbind_step(w: &World<'_>, tdi: u64) -> Option<tsm_core::lifecycle::UnbindStep> {
    match w.fw.tsm().tdi(w.id(tdi)).unwrap().state {
        tsm_core::TdiState::Unbinding { step, .. } => Some(step),
        _ => None,
    }
}

/// What a leaf driving an unbind answers while it waits for the entry's own invalidation.
const ENTRY_WAIT: u64 = TDX_DMAR_INVALID_INV_STATE | OPERAND_ID_DMAR as u64;

/// What it answers while it waits for the TD's domain (as TDH.MEM.TRACK answers it).
const DOMAIN_WAIT: u64 = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;

/// Review s21 L1: each IOTLB wait of an unbind has its own status, through every leaf that
/// drives the unbind, so the host knows which invalidation is due. The host's STOP
/// (TDH.DEVIF.REQUEST 0x87) blocks the entry and waits before STOP for the entry's own
/// invalidation (INV_STATE + DMAR, at Stop); once processed, the device's STOP answer
/// (TDH.DEVIF.RESPONSE) carries the unbind through its TRACK to the Remove step, which waits
/// for the TD's domain (TRACKING_NOT_DONE). At each wait, the STOP request again and
/// TSM.DEVIF.UNBIND give the same answer and change nothing.
#[test]
fn each_iotlb_wait_of_an_unbind_has_its_own_status_through_every_leaf_driving_it() {
    use tsm_core::lifecycle::UnbindStep;
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    let stop = SeamRegs {
        rcx: tdi,
        rdx: abi::devif_req_in(0x87, false, false),
        ..Default::default()
    };
    let request = || w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop).rax;
    let unbind = || w.call(u64::from(abi::TSM_DEVIF_UNBIND), on(tdi)).rax;

    assert_eq!(
        request(),
        ENTRY_WAIT,
        "STOP waits for the entry's invalidation"
    );
    assert_eq!(unbind_step(w, tdi), Some(UnbindStep::Stop));
    refused(w, "STOP again, the entry queued", request, ENTRY_WAIT);
    refused(w, "UNBIND, the entry queued", unbind, ENTRY_WAIT);
    assert_eq!(iq_process(w), TDX_SUCCESS);

    let out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
    assert_eq!(out.rax, TDX_SPDM_REQUEST, "STOP goes to the device");
    // The relay's last leaf is TDH.DEVIF.RESPONSE with the device's STOP answer.
    assert_eq!(w.relay(tdi, out).rax, DOMAIN_WAIT, "RESPONSE: the domain");
    assert!(matches!(unbind_step(w, tdi), Some(UnbindStep::Remove(_))));
    refused(w, "STOP again, the domain owed", request, DOMAIN_WAIT);
    refused(w, "UNBIND, the domain owed", unbind, DOMAIN_WAIT);
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
    refused(w, "UNBIND, the domain queued", unbind, DOMAIN_WAIT);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(request(), TDX_SUCCESS);
    assert_eq!(w.state_code(tdi), abi::TdiStateCode::Unbound as u64);
    assert_pool_all_free(w, td, "every table page back");
}

/// A TD that accepted its TDI's entry and mapped no MMIO: the world, the TD, the TDI.
fn accepted_without_mmio(mem: &mut [Page]) -> (World<'_>, u64, u64) {
    let w = World::new(mem);
    let td = w.create_td();
    let dev = device_world(&w, 3, BAR);
    let tdi = w.create_tdi(dev, rid(3), PAGES_A);
    let bind = SeamRegs {
        rcx: tdi,
        rdx: td,
        ..Default::default()
    };
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(&w, td, tdi), TDX_SUCCESS);
    (w, td, tdi)
}

/// The Dma step's two waits, with no MMIO so the unbind reaches it at once after its TRACK:
/// the entry's own invalidation still queued (a forced unbind does not wait for it before
/// STOP): INV_STATE + DMAR; the entry's done but the TD's domain owed by the unbind's TRACK
/// (`dmar_pasidte_remove`): TRACKING_NOT_DONE. Through the forced TSM.DEVIF.UNBIND, and
/// through TDH.DEVIF.RESPONSE (the device's STOP answer) for the domain's. Each wait again
/// changes nothing.
#[test]
fn the_dma_steps_waits_name_the_entry_then_the_domain() {
    use tsm_core::lifecycle::UnbindStep;
    {
        let mut mem = vec![Page::ZERO; 32];
        let (world, td, tdi) = accepted_without_mmio(&mut mem);
        let w = &world;
        let force = SeamRegs {
            rcx: tdi,
            rdx: abi::UNBIND_FLAG_FORCE,
            ..Default::default()
        };
        let unbind = || w.call(u64::from(abi::TSM_DEVIF_UNBIND), force).rax;
        assert_eq!(resumed(unbind), ENTRY_WAIT);
        assert_eq!(unbind_step(w, tdi), Some(UnbindStep::Dma));
        refused(w, "forced UNBIND, the entry queued", unbind, ENTRY_WAIT);
        assert_eq!(iq_process(w), TDX_SUCCESS);
        assert_eq!(unbind(), DOMAIN_WAIT);
        assert_eq!(unbind_step(w, tdi), Some(UnbindStep::Dma));
        refused(w, "forced UNBIND, the domain owed", unbind, DOMAIN_WAIT);
        assert_eq!(iotlb_request(w, td), TDX_SUCCESS);
        assert_eq!(iq_process(w), TDX_SUCCESS);
        assert_eq!(unbind(), TDX_SUCCESS);
        assert_pool_all_free(w, td, "the root the entry pinned went back");
    }
    let mut mem = vec![Page::ZERO; 32];
    let (world, _, tdi) = accepted_without_mmio(&mut mem);
    let w = &world;
    assert_eq!(w.unbind_all(tdi), ENTRY_WAIT, "before STOP");
    assert_eq!(iq_process(w), TDX_SUCCESS);
    let out = w.call(u64::from(abi::TSM_DEVIF_UNBIND), on(tdi));
    assert_eq!(out.rax, TDX_SPDM_REQUEST);
    assert_eq!(w.relay(tdi, out).rax, DOMAIN_WAIT, "RESPONSE: the domain");
    assert_eq!(unbind_step(w, tdi), Some(UnbindStep::Dma));
    refused(
        w,
        "UNBIND, the domain owed",
        || w.call(u64::from(abi::TSM_DEVIF_UNBIND), on(tdi)).rax,
        DOMAIN_WAIT,
    );
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
}

/// Review s21 L2: the host's own IQ.INV.REQUEST of a PASID entry it blocked itself (the
/// device's stream cut, so the host may tear the context down before the firmware did):
/// BLOCKED with its invalidation PENDING, the wait descriptor's every field is checked (each
/// refusal changing nothing), a good one is queued (QUEUED); the same request again, and once
/// PROCESS completed it, is refused `TDX_DMAR_INVALID_INV_STATE` + R8 as the module refuses it,
/// changing nothing; the host's REMOVE then goes through.
#[test]
fn the_hosts_request_of_a_pending_entry_queues_and_of_a_queued_or_done_one_is_refused() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    cut_stream(w, tdi);
    let state = || {
        let read = on_idx(w, abi::TDH_DMAR_READ);
        read_state(read.rdx)
    };
    assert_eq!(
        state().0,
        MAP_PRESENT,
        "the firmware has not blocked it yet"
    );
    w.ok(abi::TDH_DMAR_BLOCK, on(idx()));
    assert_eq!(state(), (MAP_BLOCKED, dmar::INV_PENDING));
    let bad = [
        (
            "no fence",
            SeamRegs {
                r9: dmar::WAIT_DESC_TYPE | dmar::WAIT_DESC_SW,
                ..inv_regs()
            },
            9,
        ),
        (
            "a misaligned status address",
            SeamRegs {
                r10: inv_regs().r10 | 2,
                ..inv_regs()
            },
            10,
        ),
        (
            "a status address outside host memory",
            SeamRegs {
                r10: 0x1000,
                ..inv_regs()
            },
            10,
        ),
        (
            "qword 2",
            SeamRegs {
                r11: 1,
                ..inv_regs()
            },
            11,
        ),
        (
            "qword 3",
            SeamRegs {
                r12: 1,
                ..inv_regs()
            },
            12,
        ),
    ];
    for (what, regs, operand) in bad {
        refused(
            w,
            what,
            || inv_request_with(w, regs),
            TDX_OPERAND_INVALID | operand,
        );
    }
    assert_eq!(inv_request(w).rax, TDX_SUCCESS);
    assert_eq!(state(), (MAP_BLOCKED, INV_QUEUED));
    let not_pending = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_R8);
    refused(
        w,
        "the request again, queued",
        || inv_request(w).rax,
        not_pending,
    );
    refused(
        w,
        "REMOVE before PROCESS",
        || on_idx(w, abi::TDH_DMAR_REMOVE).rax,
        TDX_DMAR_INVALID_INV_STATE | IDX_RCX,
    );
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(state(), (MAP_BLOCKED, dmar::INV_DONE));
    refused(
        w,
        "the request again, done",
        || inv_request(w).rax,
        not_pending,
    );
    w.ok(abi::TDH_DMAR_REMOVE, on(idx()));
    let force = SeamRegs {
        rcx: tdi,
        rdx: abi::UNBIND_FLAG_FORCE,
        ..Default::default()
    };
    let out = w.drained(tdi, || w.call(u64::from(abi::TSM_DEVIF_UNBIND), force));
    assert_eq!(out, TDX_SUCCESS);
    assert_pool_all_free(w, td, "every table page back");
}

/// The host's TDH.MEM.TRACK of `td`, its domain invalidation where one is owed, and
/// TDH.IQ.INV.PROCESS: the TD's given-up table pages are free after it.
fn settle(w: &World<'_>, td: u64) {
    assert_eq!(track(w, td), TDX_SUCCESS);
    let rax = iotlb_request(w, td);
    assert!(
        rax == TDX_SUCCESS || rax == TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        "TDH.IQ.INV.REQUEST IOTLB: {rax:#x}"
    );
    assert_eq!(iq_process(w), TDX_SUCCESS);
}

/// TDH.IDE.STREAM.BLOCK of `tdi`'s device's stream: the root port drops its TEE traffic, so
/// the host may tear the TDI's DMA context down before the firmware did.
fn cut_stream(w: &World<'_>, tdi: u64) {
    let device = w.fw.tsm().tdi(w.id(tdi)).unwrap().device;
    let spdm = (0..MAX_DEVICES as u64)
        .find(|&i| {
            w.fw.spdm(i)
                .unwrap()
                .is_some_and(|e| e.device == Some(device))
        })
        .unwrap();
    // Ours: the stream ID is the SPDM id.
    let cut = SeamRegs {
        rcx: spdm,
        rdx: spdm,
        ..Default::default()
    };
    w.ok(abi::TDH_IDE_STREAM_BLOCK, cut);
}

/// `TDX_IOMMU_IQ_QUEUE_FULL` (`tdh_iq_inv_request.c` @6e66b9d2): with 5 free slots in the
/// IOMMU's trusted queue, the firmware's own request of the entry at the unbind's block takes
/// 3; the TD's domain request (2) then fits exactly, and every further request, of either
/// type, is refused `TDX_IOMMU_IQ_QUEUE_FULL` + RDX before anything else about it is looked
/// at (a domain already queued, an entry already queued, reserved bits in R8), changing
/// nothing, until TDH.IQ.INV.PROCESS gives the slots back.
#[test]
fn a_full_invalidation_queue_refuses_the_hosts_requests_until_process() {
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world_in(World::with_iq_slots(&mut mem, 5));
    let w = &world;
    assert_eq!(w.call(150, add_regs(td)).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    let slots = |w: &World<'_>| w.fw.with_table(|t| t.dmar().iq_used(0)).unwrap();
    assert_eq!(track(w, td), TDX_SUCCESS, "the TD's domain is owed");
    assert_eq!(slots(w), 0, "owed is not queued");
    assert_eq!(w.unbind_all(tdi), ENTRY_WAIT);
    assert_eq!(
        slots(w),
        dmar::IQ_PASIDTE_DESCS,
        "the firmware's own request"
    );
    assert_eq!(iotlb_request(w, td), TDX_SUCCESS, "2 slots free: it fits");
    assert_eq!(slots(w), 5);
    let full = TDX_IOMMU_IQ_QUEUE_FULL | 2;
    refused(
        w,
        "the domain's request again",
        || iotlb_request(w, td),
        full,
    );
    refused(w, "the entry's request", || inv_request(w).rax, full);
    refused(
        w,
        "an entry's request with reserved bits in R8",
        || {
            inv_request_with(
                w,
                SeamRegs {
                    r8: inv_regs().r8 | 1 << 16,
                    ..inv_regs()
                },
            )
        },
        full,
    );
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(slots(w), 0, "PROCESS gave every slot back");
    refused(
        w,
        "the domain's request, nothing owed",
        || iotlb_request(w, td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
    );
    assert_eq!(w.unbind_drained(tdi), TDX_SUCCESS);
    assert_pool_all_free(w, td, "every table page back");
}
