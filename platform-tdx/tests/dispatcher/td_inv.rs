//! The TD's own IOTLB invalidations (TDG.IQ.INV.REQUEST 72, the host's TDH.IQ.INV.REQUEST
//! INV_REQ_TD 5 on each IOMMU the request needs, TDH.IQ.INV.PROCESS): the whole flow over two
//! IOMMUs, the wait's status written once at the last IOMMU's completion, partial commits
//! through a queue with little room, and every refusal naming its status and operand and
//! changing nothing (intel/tdx-module `tdg_iq_inv_request.c`
//! @1666adc494dbea5db99895f37125a338c20bec5a, `tdh_iq_inv_request.c` and `tdh_iq_inv_process.c`
//! @6e66b9d2070aa49562518087160b2c6ae6418555).

use super::*;
use platform_tdx::dmar::{
    self, INV_REQ_IOTLB, INV_REQ_POOL_SHIFT, INV_REQ_TD, IOTLB_DR, IOTLB_DW, IOTLB_G_DOMAIN,
    IOTLB_G_PAGE, IOTLB_G_SHIFT, IOTLB_IH, WAIT_DESC_FN, WAIT_DESC_HOST, WAIT_DESC_IF,
    WAIT_DESC_SW, WAIT_DESC_TYPE,
};

/// The TD's page of descriptors and its status word (free host pages here: the third private
/// page triple's first two, no TDI of these tests uses it). This model reaches a TD's memory
/// at the GPA itself (ours).
const DESCS: u64 = host_page(37);
const STATUS: u64 = host_page(38);
/// The host's wait status word.
const HOST_STATUS: u64 = host_page(39);
/// The second device's BAR (IOMMU 1).
const BAR_B: u64 = 0x9000_0000;
/// TDX's shared bit for a 4-level S-EPT (GPAW 48).
const SHARED: u64 = 1 << 47;

const RCX: u64 = OPERAND_ID_RCX as u64;
const RDX: u64 = OPERAND_ID_RDX as u64;
const R8: u64 = OPERAND_ID_R8 as u64;
const R9: u64 = OPERAND_ID_R9 as u64;

/// A TD with one TDI behind IOMMU 0 and one behind IOMMU 1, both bound with their PASID
/// entries accepted: the TD, its TDIs.
fn two_iommus(w: &World<'_>) -> (u64, [u64; 2]) {
    let td = w.create_td();
    let a = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let b = RequesterId::try_new(1, 4, 0, 0).unwrap();
    let dev_a = device_at(w, a, BAR);
    let dev_b = device_at(w, b, BAR_B);
    let x = w.create_tdi(dev_a, a, PAGES_A);
    let y = w.create_tdi(dev_b, b, PAGES_B);
    for (tdi, bar, gpa) in [(x, BAR, GPA), (y, BAR_B, GPA + 0x4000_0000)] {
        bind_mapped_2m(w, tdi, td, bar, gpa);
        assert_eq!(w.accept_dma(td, tdi), TDX_SUCCESS);
    }
    (td, [x, y])
}

/// A domain-selective IOTLB descriptor as a TD writes it (DID 0: the module supplies it).
const fn domain() -> [u64; 4] {
    [
        dmar::INV_DESC_IOTLB | IOTLB_G_DOMAIN << IOTLB_G_SHIFT | IOTLB_DW | IOTLB_DR,
        0,
        0,
        0,
    ]
}

/// A page-selective IOTLB descriptor: two pages (AM 1) at GPA 0x10_0000_0000, IH set.
const fn page() -> [u64; 4] {
    [
        dmar::INV_DESC_IOTLB | IOTLB_G_PAGE << IOTLB_G_SHIFT | IOTLB_DW | IOTLB_DR,
        GPA | IOTLB_IH | 1,
        0,
        0,
    ]
}

/// A wait descriptor writing `data` to the TD's status word (type 5, SW, FN).
const fn wait(data: u32) -> [u64; 4] {
    [
        WAIT_DESC_TYPE | WAIT_DESC_SW | WAIT_DESC_FN | (data as u64) << 32,
        STATUS,
        0,
        0,
    ]
}

/// Writes `descs` to the TD's descriptor page.
fn put(w: &World<'_>, descs: &[[u64; 4]]) {
    let bytes: Vec<u8> = descs
        .iter()
        .flatten()
        .flat_map(|q| q.to_le_bytes())
        .collect();
    w.write(DESCS, &bytes);
}

/// TDG.IQ.INV.REQUEST from `td` of `n` descriptors at `at`.
fn td_request_at(w: &World<'_>, td: u64, n: u64, at: u64) -> SeamRegs {
    w.tdcall(
        td,
        dmar::TDG_IQ_INV_REQUEST,
        SeamRegs {
            rcx: n,
            rdx: at,
            ..Default::default()
        },
    )
}

/// `descs` written to the TD's page, then TDG.IQ.INV.REQUEST of all of them.
fn td_request(w: &World<'_>, td: u64, descs: &[[u64; 4]]) -> SeamRegs {
    put(w, descs);
    td_request_at(w, td, descs.len() as u64, DESCS)
}

/// The host's TDH.IQ.INV.REQUEST INV_REQ_TD for TD `td` on IOMMU `iommu`, committing at most
/// `pool` descriptors, its wait writing to the last host page.
fn host_regs(iommu: u64, td: u64, pool: u64) -> SeamRegs {
    SeamRegs {
        rcx: iommu,
        rdx: INV_REQ_TD | pool << INV_REQ_POOL_SHIFT,
        r8: td,
        r9: WAIT_DESC_HOST | 7 << 32,
        r10: HOST_STATUS,
        ..Default::default()
    }
}

fn host_request(w: &World<'_>, iommu: u64, td: u64, pool: u64) -> SeamRegs {
    w.call(
        u64::from(abi::TDH_IQ_INV_REQUEST),
        host_regs(iommu, td, pool),
    )
}

fn process(w: &World<'_>, iommu: u64) -> u64 {
    w.call(u64::from(abi::TDH_IQ_INV_PROCESS), on(iommu)).rax
}

fn status_word(w: &World<'_>) -> u32 {
    u32::from_le_bytes(w.read(STATUS, 4).try_into().unwrap())
}

fn active(w: &World<'_>, td: u64) -> bool {
    let g = w.fw.td_of(td).unwrap().unwrap();
    w.fw.tsm()
        .with_guest_table(g, |t| t.dmar().td_request(g))
        .unwrap()
        .unwrap()
        .active
}

/// `call` with `regs` is refused with `expect` (operand included), changing nothing and
/// writing no register but RAX (review s23 L4).
fn refused_regs(
    w: &World<'_>,
    what: &str,
    regs: SeamRegs,
    call: impl FnOnce(SeamRegs) -> SeamRegs,
    expect: u64,
) {
    let before = w.image();
    let out = call(regs);
    assert_eq!(out.rax, expect, "{what}: {:#x}", out.rax);
    assert_eq!(
        SeamRegs { rax: 0, ..out },
        SeamRegs { rax: 0, ..regs },
        "{what}: a refusal writes no register but RAX"
    );
    assert!(w.image() == before, "{what}: changed something");
}

/// TDG.IQ.INV.REQUEST's registers: `n` descriptors at `at`.
fn td_regs(n: u64, at: u64) -> SeamRegs {
    SeamRegs {
        rcx: n,
        rdx: at,
        ..Default::default()
    }
}

/// TDG.IQ.INV.REQUEST from `td` with `regs`, refused with `expect` (see [`refused_regs`]).
fn td_refused(w: &World<'_>, what: &str, td: u64, regs: SeamRegs, expect: u64) {
    refused_regs(
        w,
        what,
        regs,
        |r| w.tdcall(td, dmar::TDG_IQ_INV_REQUEST, r),
        expect,
    );
}

/// TDH.IQ.INV.REQUEST with `regs`, refused with `expect` (see [`refused_regs`]).
fn host_refused(w: &World<'_>, what: &str, regs: SeamRegs, expect: u64) {
    refused_regs(
        w,
        what,
        regs,
        |r| w.call(u64::from(abi::TDH_IQ_INV_REQUEST), r),
        expect,
    );
}

fn used(w: &World<'_>, iommu: u16) -> u16 {
    w.fw.with_table(|t| t.dmar().iq_used(iommu)).unwrap()
}

/// The whole flow: the TD asks for a domain and a page invalidation with a wait; the host
/// commits them on IOMMU 0 in two calls (RCX out what is left) and on IOMMU 1 in one; the
/// status word is written only when the last IOMMU's PROCESS completes them, once, and only
/// then does the TD's next request go through.
#[test]
fn a_tds_request_completes_on_every_iommu_and_writes_its_status_once() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    let out = td_request(w, td, &[domain(), page(), wait(0xabcd)]);
    assert_eq!(
        (out.rax, out.rcx),
        (TDX_SUCCESS, 2),
        "two descriptors per IOMMU"
    );
    assert!(active(w, td));
    td_refused(
        w,
        "a second request while the first is active",
        td,
        td_regs(3, DESCS),
        TDX_GUEST_INV_IN_PROGRESS,
    );
    let first = host_request(w, 0, td, 1);
    assert_eq!(
        (first.rax, first.rcx),
        (TDX_SUCCESS, 1),
        "one committed, one left"
    );
    let rest = host_request(w, 0, td, 8);
    assert_eq!((rest.rax, rest.rcx), (TDX_SUCCESS, 0));
    assert_eq!(
        used(w, 0),
        4,
        "two descriptors and two waits queued on IOMMU 0"
    );
    host_refused(
        w,
        "every descriptor committed on IOMMU 0",
        host_regs(0, td, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    assert_eq!(process(w, 0), TDX_SUCCESS);
    assert_eq!(used(w, 0), 0);
    assert_eq!(status_word(w), 0, "IOMMU 1 has not completed");
    assert!(active(w, td));
    host_refused(
        w,
        "IOMMU 0 completed already",
        host_regs(0, td, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    let other = host_request(w, 1, td, 2);
    assert_eq!((other.rax, other.rcx), (TDX_SUCCESS, 0));
    assert_eq!(used(w, 1), 3);
    assert_eq!(status_word(w), 0, "queued is not complete");
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(
        status_word(w),
        0xabcd,
        "written at the last IOMMU's completion"
    );
    assert!(!active(w, td));
    w.write(STATUS, &[0; 4]);
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(process(w, 0), TDX_SUCCESS);
    assert_eq!(status_word(w), 0, "written once");
    host_refused(
        w,
        "INV_REQ_TD with no request active",
        host_regs(1, td, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    // A request without a wait: nothing is written at its end.
    let out = td_request(w, td, &[domain()]);
    assert_eq!((out.rax, out.rcx), (TDX_SUCCESS, 1));
    for iommu in [0, 1] {
        assert_eq!(host_request(w, iommu, td, 1).rax, TDX_SUCCESS);
        assert_eq!(process(w, iommu), TDX_SUCCESS);
    }
    assert!(!active(w, td));
    assert_eq!(status_word(w), 0);
}

/// A request of 128 descriptors (the page's worth) through a one-page queue: the host's
/// INV_REQ_TD commits what the unreserved room allows (the entries' and the domain's
/// reservations stay untouched), RCX out the rest; with no room for a descriptor and its wait
/// it is refused TDX_IOMMU_IQ_QUEUE_FULL + RDX, changing nothing, until PROCESS.
#[test]
fn a_full_page_of_descriptors_is_committed_as_the_queue_makes_room() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    let descs = vec![domain(); dmar::MAX_TD_INV_DESCS as usize];
    let out = td_request(w, td, &descs);
    assert_eq!((out.rax, out.rcx), (TDX_SUCCESS, 128));
    let reserved = dmar::IQ_PASIDTE_DESCS + dmar::IQ_IOTLB_DESCS;
    let room = dmar::IQ_SLOTS_ONE_PAGE - reserved;
    let first = host_request(w, 0, td, 0xffff);
    let committed = u64::from(room - 1);
    assert_eq!((first.rax, first.rcx), (TDX_SUCCESS, 128 - committed));
    assert_eq!(
        used(w, 0),
        room,
        "the whole unreserved room, no reserved slot"
    );
    host_refused(
        w,
        "no room for a descriptor and its wait",
        host_regs(0, td, 1),
        TDX_IOMMU_IQ_QUEUE_FULL | RDX,
    );
    assert_eq!(process(w, 0), TDX_SUCCESS);
    let last = host_request(w, 0, td, 0xffff);
    assert_eq!((last.rax, last.rcx), (TDX_SUCCESS, 0));
    assert_eq!(process(w, 0), TDX_SUCCESS);
    assert!(active(w, td), "IOMMU 1 still owes all 128");
    assert_eq!(
        host_request(w, 1, td, 200).rcx,
        128 - 200_u64.min(committed)
    );
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(host_request(w, 1, td, 200).rax, TDX_SUCCESS);
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert!(!active(w, td));
}

/// Every refusal of TDG.IQ.INV.REQUEST, in the module's order, names its status and operand
/// and changes nothing (the descriptor page's bytes included): the count, the page, a request
/// outstanding, each descriptor field (the bad one second, so the operand is its index 1),
/// and a TD with no accepted PASID entry.
#[test]
fn td_request_refusals_name_the_operand_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    put(w, &[domain(), page(), wait(1)]);
    let invalid = |op: u64| TDX_OPERAND_INVALID | op;
    let rows: [(&str, u64, u64, u64); 6] = [
        ("RCX 0", 0, DESCS, invalid(RCX)),
        ("RCX past a page", 129, DESCS, invalid(RCX)),
        ("RDX misaligned", 3, DESCS + 0x20, invalid(RDX)),
        ("RDX shared", 3, DESCS | SHARED, invalid(RDX)),
        ("RDX past the TD's width", 3, DESCS | 1 << 48, invalid(RDX)),
        (
            "RDX no memory backs",
            3,
            0x1000,
            TDX_OPERAND_ADDR_RANGE_ERROR | RDX,
        ),
    ];
    for (what, n, at, expect) in rows {
        td_refused(w, what, td, td_regs(n, at), expect);
    }
    td_refused(
        w,
        "RDX the page past the memory",
        td,
        td_regs(128, host_page(HOST_PAGES as u64)),
        TDX_OPERAND_ADDR_RANGE_ERROR | RDX,
    );
    let d = domain();
    let p = page();
    let wt = wait(1);
    let with = |base: [u64; 4], i: usize, v: u64| {
        let mut x = base;
        x[i] = v;
        x
    };
    let descs: Vec<(&str, [u64; 4])> = vec![
        ("a context-cache descriptor", with(d, 0, d[0] & !0xf | 1)),
        ("a PASID-cache descriptor", with(d, 0, d[0] & !0xf | 7)),
        ("type 0", with(d, 0, d[0] & !0xf)),
        ("global granularity", with(d, 0, d[0] & !0x30 | 1 << 4)),
        ("granularity 0", with(d, 0, d[0] & !0x30)),
        ("drain writes clear", with(d, 0, d[0] & !IOTLB_DW)),
        ("drain reads clear", with(d, 0, d[0] & !IOTLB_DR)),
        ("reserved bit 8", with(d, 0, d[0] | 1 << 8)),
        ("high type bits 11:9", with(d, 0, d[0] | 1 << 9)),
        ("a DID", with(d, 0, d[0] | 5 << dmar::IOTLB_DID_SHIFT)),
        ("reserved bits 63:32", with(d, 0, d[0] | 1 << 40)),
        ("domain-selective with IH", with(d, 1, IOTLB_IH)),
        ("page-selective without IH", with(p, 1, p[1] & !IOTLB_IH)),
        ("reserved bits 11:7 of qword 1", with(p, 1, p[1] | 1 << 7)),
        ("domain-selective with AM", with(d, 1, 1)),
        ("domain-selective with ADDR", with(d, 1, GPA)),
        ("IOTLB qword 2", with(d, 2, 1)),
        ("IOTLB qword 3", with(d, 3, 1 << 63)),
        ("a wait with IF", with(wt, 0, wt[0] | WAIT_DESC_IF)),
        ("a wait without SW", with(wt, 0, wt[0] & !WAIT_DESC_SW)),
        ("a wait with PD", with(wt, 0, wt[0] | 1 << 7)),
        ("a wait with reserved bit 8", with(wt, 0, wt[0] | 1 << 8)),
        ("a wait with high type bits", with(wt, 0, wt[0] | 1 << 9)),
        ("a wait with reserved bit 12", with(wt, 0, wt[0] | 1 << 12)),
        ("a wait status misaligned", with(wt, 1, STATUS + 2)),
        ("a wait status shared", with(wt, 1, STATUS | SHARED)),
        (
            "a wait status past the width",
            with(wt, 1, STATUS | 1 << 50),
        ),
        ("a wait qword 2", with(wt, 2, 1)),
        ("a wait qword 3", with(wt, 3, 1)),
    ];
    for (what, bad) in descs {
        put(w, &[domain(), bad]);
        td_refused(
            w,
            what,
            td,
            td_regs(2, DESCS),
            TDX_GUEST_INV_INVALID_DESC | 1,
        );
    }
    put(w, &[domain(), wait(1), domain()]);
    td_refused(
        w,
        "a wait not last",
        td,
        td_regs(3, DESCS),
        TDX_GUEST_INV_INVALID_DESC | 1,
    );
    put(w, &[wait(1)]);
    td_refused(
        w,
        "a lone wait (ours: nothing to invalidate)",
        td,
        td_regs(1, DESCS),
        TDX_GUEST_INV_INVALID_DESC,
    );
    // A wait's FN is the TD's choice; the count past the descriptors in the page is not read.
    put(w, &[domain(), with(wt, 0, wt[0] & !WAIT_DESC_FN)]);
    let ok = td_request_at(w, td, 2, DESCS);
    assert_eq!((ok.rax, ok.rcx), (TDX_SUCCESS, 1));
    // Outstanding now: checked after the page, before the descriptors.
    put(w, &[domain(), with(d, 0, 1)]);
    td_refused(
        w,
        "a bad descriptor while a request is active",
        td,
        td_regs(2, DESCS),
        TDX_GUEST_INV_IN_PROGRESS,
    );
    td_refused(
        w,
        "a misaligned page while a request is active",
        td,
        td_regs(2, DESCS + 8),
        invalid(RDX),
    );
    // A TD with no accepted PASID entry: nothing to invalidate (a warning, bit 63 clear).
    let lone = w.create_td();
    put(w, &[domain(), wait(1)]);
    td_refused(
        w,
        "no IOMMU holds an accepted entry of the TD",
        lone,
        td_regs(2, DESCS),
        TDX_GUEST_INV_NOT_REQUIRED | RDX,
    );
    // The module's state check comes before our lone-wait refusal (review s23 L1).
    put(w, &[wait(1)]);
    td_refused(
        w,
        "a lone wait from a TD with no accepted entry",
        lone,
        td_regs(1, DESCS),
        TDX_GUEST_INV_NOT_REQUIRED | RDX,
    );
}

/// Review s23 M1: the descriptor page and the wait's status word are reached at the GPA as
/// host memory, so a page the firmware holds (a TDR, a TDI's private pages, SPDM or IDE
/// metadata) is refused: RDX `TDX_OPERAND_INVALID` + RDX, the status word
/// `TDX_GUEST_INV_INVALID_DESC` + the wait's index; nothing changed, no register but RAX
/// written. (The review's proof: the TD's own TDR as its status GPA, written at PROCESS.)
#[test]
fn pages_the_firmware_holds_are_refused_as_descriptors_and_status() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    let other = w.create_td();
    let held = [
        ("the TD's own TDR", td),
        ("another TD's TDR", other),
        ("a TDI's private page", private_pages(PAGES_A.0).0),
        ("a device's SPDM metadata", spdm_page(3)),
        ("a device's IDE stream metadata", ide_page(3)),
    ];
    for (what, page) in held {
        // The descriptors copied to the held page would change it: the page is read only.
        td_refused(
            w,
            &format!("RDX {what}"),
            td,
            td_regs(2, page),
            TDX_OPERAND_INVALID | RDX,
        );
        let mut wt = wait(0x4141_4141);
        wt[1] = page + 8;
        put(w, &[domain(), wt]);
        td_refused(
            w,
            &format!("the status word in {what}"),
            td,
            td_regs(2, DESCS),
            TDX_GUEST_INV_INVALID_DESC | 1,
        );
    }
    let mut wt = wait(1);
    wt[1] = host_page(HOST_PAGES as u64) - 4;
    put(w, &[domain(), wt]);
    let ok = td_request_at(w, td, 2, DESCS);
    assert_eq!(ok.rax, TDX_SUCCESS, "the last word of host memory");
    for iommu in [0, 1] {
        assert_eq!(host_request(w, iommu, td, 1).rax, TDX_SUCCESS);
        assert_eq!(process(w, iommu), TDX_SUCCESS);
    }
    assert_eq!(w.read(wt[1], 4), 1u32.to_le_bytes().to_vec());
    wt[1] = host_page(HOST_PAGES as u64);
    put(w, &[domain(), wt]);
    td_refused(
        w,
        "a status word past host memory (ours: the firmware could not write it)",
        td,
        td_regs(2, DESCS),
        TDX_GUEST_INV_INVALID_DESC | 1,
    );
}

/// Review s23 M1 at PROCESS: the host hands the status page to the firmware between the TD's
/// request and its completion (here as a new TD's TDR): PROCESS ends the request without
/// writing it (never a held page), and the TD's next request is taken.
#[test]
fn a_status_page_the_firmware_took_since_the_request_is_not_written() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    assert_eq!(
        td_request(w, td, &[domain(), wait(0x4141_4141)]).rax,
        TDX_SUCCESS
    );
    w.ok(
        abi::TDH_MNG_CREATE,
        SeamRegs {
            rcx: STATUS,
            rdx: HKID + 20,
            ..Default::default()
        },
    );
    for iommu in [0, 1] {
        assert_eq!(host_request(w, iommu, td, 1).rax, TDX_SUCCESS);
        assert_eq!(process(w, iommu), TDX_SUCCESS);
    }
    assert_eq!(status_word(w), 0, "the TDR page is never written");
    assert!(!active(w, td), "the request ended all the same");
}

/// Review s23 M4: the host's INV_REQ_IOTLB of the TD's domain, once PROCESS completes it on an
/// IOMMU, covers the TD's request there (the module clears the IOMMU's `req_iommu_bm` bit):
/// here IOMMU 0 by the TD's own descriptors, IOMMU 1 by a TRACK's domain flush, which writes
/// the status.
#[test]
fn a_domain_flush_of_the_td_completes_its_request_on_that_iommu() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    assert_eq!(
        td_request(w, td, &[domain(), page(), wait(0x77)]).rax,
        TDX_SUCCESS
    );
    assert_eq!(host_request(w, 0, td, 8).rax, TDX_SUCCESS);
    assert_eq!(process(w, 0), TDX_SUCCESS);
    assert!(active(w, td));
    let track = SeamRegs {
        rcx: td,
        ..Default::default()
    };
    assert_eq!(
        w.call(u64::from(abi::TDH_MEM_TRACK), track).rax,
        TDX_SUCCESS
    );
    let regs = dmar::iotlb_request_regs(1, td, HOST_STATUS, 1);
    assert_eq!(
        w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax,
        TDX_SUCCESS
    );
    assert_eq!(status_word(w), 0, "queued is not complete");
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(status_word(w), 0x77);
    assert!(!active(w, td));
    // The TRACK's flush IOMMU 0 still owes.
    let regs = dmar::iotlb_request_regs(0, td, HOST_STATUS, 1);
    assert_eq!(
        w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax,
        TDX_SUCCESS
    );
    assert_eq!(process(w, 0), TDX_SUCCESS);
    // Both IOMMUs by the domain flush alone.
    w.write(STATUS, &[0; 4]);
    assert_eq!(td_request(w, td, &[page(), wait(0x78)]).rax, TDX_SUCCESS);
    assert_eq!(
        w.call(u64::from(abi::TDH_MEM_TRACK), track).rax,
        TDX_SUCCESS
    );
    for iommu in [0, 1] {
        let regs = dmar::iotlb_request_regs(iommu, td, HOST_STATUS, 1);
        assert_eq!(
            w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax,
            TDX_SUCCESS
        );
        assert_eq!(process(w, u64::from(iommu)), TDX_SUCCESS);
    }
    assert_eq!(status_word(w), 0x78);
    assert!(!active(w, td));
}

/// Every refusal of the host's INV_REQ_TD names its status and operand and changes nothing:
/// RDX's `pool_size` and reserved bits, R8 not a TD, an IOMMU the request does not need, a bad
/// wait descriptor; and the other types keep refusing a `pool_size`.
#[test]
fn host_td_request_refusals_name_the_operand_and_change_nothing() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, _) = two_iommus(w);
    host_refused(
        w,
        "no request active",
        host_regs(0, td, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    assert_eq!(td_request(w, td, &[domain(), wait(9)]).rax, TDX_SUCCESS);
    let base = host_regs(0, td, 1);
    let rows: [(&str, SeamRegs, u64); 8] = [
        (
            "pool_size 0",
            SeamRegs {
                rdx: INV_REQ_TD,
                ..base
            },
            TDX_OPERAND_INVALID | RDX,
        ),
        (
            "RDX reserved bits 63:48",
            SeamRegs {
                rdx: base.rdx | 1 << 48,
                ..base
            },
            TDX_OPERAND_INVALID | RDX,
        ),
        (
            "a pool_size for INV_REQ_IOTLB",
            SeamRegs {
                rdx: INV_REQ_IOTLB | 1 << INV_REQ_POOL_SHIFT,
                ..base
            },
            TDX_OPERAND_INVALID | RDX,
        ),
        (
            "type 6",
            SeamRegs {
                rdx: 6 | 1 << INV_REQ_POOL_SHIFT,
                ..base
            },
            TDX_OPERAND_INVALID | RDX,
        ),
        (
            "R8 not a TD",
            SeamRegs {
                r8: host_page(TDR_FIRST + 3),
                ..base
            },
            TDX_OPERAND_INVALID | R8,
        ),
        (
            "an IOMMU the request does not need",
            host_regs(2, td, 1),
            TDX_GUEST_INV_NOT_REQUIRED | R8,
        ),
        (
            "a wait descriptor without FN",
            SeamRegs {
                r9: base.r9 & !WAIT_DESC_FN,
                ..base
            },
            TDX_OPERAND_INVALID | R9,
        ),
        (
            "RCX reserved bits",
            SeamRegs {
                rcx: 1 << 16,
                ..base
            },
            TDX_OPERAND_INVALID | RCX,
        ),
    ];
    for (what, regs, expect) in rows {
        host_refused(w, what, regs, expect);
    }
    // The other TD's request is its own: this TD's is still whole.
    let lone = w.create_td();
    host_refused(
        w,
        "another TD with no request",
        host_regs(0, lone, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    for iommu in [0, 1] {
        assert_eq!(host_request(w, iommu, td, 1).rax, TDX_SUCCESS);
        assert_eq!(process(w, iommu), TDX_SUCCESS);
    }
    assert_eq!(status_word(w), 9);
    assert!(!active(w, td));
}

/// What the TD and the host do about the TD's own request during an unbind.
#[derive(Clone, Copy, PartialEq)]
enum Asks {
    /// Nothing.
    Nothing,
    /// The TD asks for a domain invalidation (no wait) after the unbind's first domain round.
    Request,
    /// And the host commits it on IOMMU 0 at once (left unprocessed until the next wait).
    RequestAndCommit,
}

/// Drives `tdi`'s unbind to its end the way the host answers every wait it is told of (the
/// entry's: PROCESS of both IOMMUs; the domain's: INV_REQ_IOTLB on both IOMMUs, then PROCESS of both), never
/// with an INV_REQ_TD but as `asks` says after the first domain round (a request made before
/// it is covered by that round's domain flushes). Whether a domain wait met nothing to
/// request (what only descriptors of the TD's request the host queued can hold); the unbind
/// ended.
fn unbind_as_the_host_does(w: &World<'_>, td: u64, tdi: u64, asks: Asks) -> bool {
    let entry = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    let mut held_by_queue = false;
    let mut asked = asks == Asks::Nothing;
    for _ in 0..20 {
        match w.unbind_all(tdi) {
            TDX_SUCCESS => return held_by_queue,
            TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => {
                let owed = [0, 1].map(|iommu| {
                    let regs = dmar::iotlb_request_regs(iommu, td, HOST_STATUS, 1);
                    w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax
                });
                if owed == [TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED; 2] {
                    held_by_queue = true;
                    refused(
                        w,
                        "the Remove step while the TD's queued descriptors wait",
                        || w.unbind_all(tdi),
                        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
                    );
                    let idx = dmar::dmar_idx(RequesterId::try_new(0, 3, 0, 0).unwrap());
                    refused_regs(
                        w,
                        "TDH.DMAR.REMOVE while the TD's queued descriptors wait",
                        on(idx),
                        |r| w.call(u64::from(abi::TDH_DMAR_REMOVE), r),
                        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE | RCX,
                    );
                }
                assert_eq!(process(w, 0), TDX_SUCCESS);
                assert_eq!(process(w, 1), TDX_SUCCESS);
                if !asked {
                    assert_eq!(td_request(w, td, &[domain(), wait(9)]).rax, TDX_SUCCESS);
                    if asks == Asks::RequestAndCommit {
                        assert_eq!(host_request(w, 0, td, 1).rax, TDX_SUCCESS);
                    }
                    asked = true;
                }
            }
            rax if rax == entry => {
                assert_eq!(process(w, 0), TDX_SUCCESS);
                assert_eq!(process(w, 1), TDX_SUCCESS);
            }
            rax => panic!("unbind: {rax:#x}"),
        }
    }
    panic!("the unbind never ended")
}

/// Ours: a TD's own request never holds a teardown up (a TD could otherwise keep one active
/// for ever): the host unbinds with its usual answers, never an INV_REQ_TD, and the last
/// entry on IOMMU 0 goes with the request's part there (the entry's own invalidation flushed
/// the TD's DID on it). The request then needs IOMMU 1 alone; INV_REQ_TD on IOMMU 0 is
/// NOT_REQUIRED, nothing changed, and IOMMU 1's completion writes the status.
#[test]
fn a_tds_request_never_holds_an_unbind_up() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, _]) = two_iommus(w);
    assert!(
        !unbind_as_the_host_does(w, td, x, Asks::Request),
        "nothing held by the TD's request"
    );
    assert!(w.fw.tsm().tdi(w.id(x)).unwrap().dma.is_none());
    assert!(active(w, td), "IOMMU 1 still owes the request");
    host_refused(
        w,
        "INV_REQ_TD on the IOMMU the request no longer needs",
        host_regs(0, td, 1),
        TDX_GUEST_INV_NOT_REQUIRED | R8,
    );
    assert_eq!(host_request(w, 1, td, 1).rax, TDX_SUCCESS);
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(status_word(w), 9);
    assert!(!active(w, td));
}

/// A request made before the unbind's domain round is covered by it (review s23 M4): the
/// unbind's INV_REQ_IOTLB on both IOMMUs completes it, and writes the status, without any
/// INV_REQ_TD.
#[test]
fn the_unbinds_domain_flushes_complete_a_tds_earlier_request() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, _]) = two_iommus(w);
    assert_eq!(td_request(w, td, &[domain(), wait(9)]).rax, TDX_SUCCESS);
    assert!(!unbind_as_the_host_does(w, td, x, Asks::Nothing));
    assert_eq!(status_word(w), 9);
    assert!(!active(w, td));
}

/// Ours: descriptors of the TD's request the host queued on IOMMU 0 hold the removal of the
/// TD's last entry there (TDX_IOMMU_IOTLB_TRACKING_NOT_DONE, + RCX from TDH.DMAR.REMOVE,
/// nothing changed) until the host's PROCESS, which its usual answer to that status makes.
#[test]
fn descriptors_the_host_queued_hold_the_last_entry_until_process() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, _]) = two_iommus(w);
    assert!(
        unbind_as_the_host_does(w, td, x, Asks::RequestAndCommit),
        "the queued descriptors held the entry's removal"
    );
    assert!(w.fw.tsm().tdi(w.id(x)).unwrap().dma.is_none());
    assert!(active(w, td), "IOMMU 1 still owes the request");
    assert_eq!(host_request(w, 1, td, 1).rax, TDX_SUCCESS);
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert!(!active(w, td));
}

/// Review s23 L2 and M3: a request whose last required IOMMU goes with the unbind's entry
/// removal ends at that unbind (its status written then, not at some later PROCESS on any
/// IOMMU), and once the TD stops running (VPFLUSHDONE) no PROCESS writes into its memory.
#[test]
fn a_request_whose_last_iommu_goes_with_the_unbind_ends_there_and_nothing_writes_after() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, y]) = two_iommus(w);
    assert!(!unbind_as_the_host_does(w, td, x, Asks::Nothing));
    // Made after y's domain round: only y's entry (IOMMU 1) is required, and goes.
    assert!(!unbind_as_the_host_does(w, td, y, Asks::Request));
    assert_eq!(
        status_word(w),
        9,
        "written at the unbind that removed its last IOMMU"
    );
    assert!(!active(w, td));
    w.write(STATUS, &[0; 4]);
    let flush = SeamRegs {
        rcx: td,
        ..Default::default()
    };
    assert_eq!(
        w.call(u64::from(abi::TDH_MNG_VPFLUSHDONE), flush).rax,
        TDX_SUCCESS
    );
    for iommu in [0, 1] {
        assert_eq!(process(w, iommu), TDX_SUCCESS);
    }
    assert_eq!(status_word(w), 0, "nothing written after the TD stopped");
}

/// Review s23 L2 through the host's TDH.DMAR.REMOVE: the TD asks while its last TDI's unbind
/// waits after STOP for the domain's flush (so only that entry's IOMMU is required); the
/// host's REMOVE of the entry ends the request and writes its status, with no PROCESS after.
#[test]
fn the_hosts_remove_of_the_last_required_entry_ends_the_request() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, y]) = two_iommus(w);
    assert!(!unbind_as_the_host_does(w, td, x, Asks::Nothing));
    let entry = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(y), entry);
    assert_eq!(process(w, 1), TDX_SUCCESS);
    assert_eq!(w.unbind_all(y), TDX_IOMMU_IOTLB_TRACKING_NOT_DONE);
    let regs = dmar::iotlb_request_regs(1, td, HOST_STATUS, 1);
    assert_eq!(
        w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax,
        TDX_SUCCESS
    );
    assert_eq!(process(w, 1), TDX_SUCCESS);
    let out = td_request(w, td, &[domain(), wait(0x5a)]);
    assert_eq!((out.rax, out.rcx), (TDX_SUCCESS, 1));
    assert_eq!(status_word(w), 0);
    let idx = dmar::dmar_idx(RequesterId::try_new(1, 4, 0, 0).unwrap());
    assert_eq!(
        w.call(u64::from(abi::TDH_DMAR_REMOVE), on(idx)).rax,
        TDX_SUCCESS
    );
    assert_eq!(status_word(w), 0x5a, "written at the REMOVE");
    assert!(!active(w, td));
    assert_eq!(w.unbind_all(y), TDX_SUCCESS);
}

/// Review s23 (second pass) M1: the same flow as
/// `a_request_whose_last_iommu_goes_with_the_unbind_ends_there_and_nothing_writes_after`, but
/// y's unbind driven as the module's ABI does it (TDH.DEVIF.REQUEST STOP_INTERFACE, called
/// again after each wait). The removal of the request's last IOMMU happens inside
/// TDH.DEVIF.REQUEST, which ends the request there.
#[test]
fn a_stop_driven_unbind_ends_the_request_too() {
    let mut mem = vec![Page::ZERO; 32];
    let world = World::new(&mut mem);
    let w = &world;
    let (td, [x, y]) = two_iommus(w);
    assert!(!unbind_as_the_host_does(w, td, x, Asks::Nothing));
    let stop = SeamRegs {
        rcx: y,
        rdx: abi::devif_req_in(0x87, false, false),
        r8: w.pages_of(y).0,
        ..Default::default()
    };
    let entry = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    let mut asked = false;
    let mut out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
    for _ in 0..100 {
        match out.rax {
            TDX_INTERRUPTED_RESUMABLE => {}
            TDX_SPDM_REQUEST => {
                out = w.relay(y, out);
                continue;
            }
            rax if rax == entry => {
                assert_eq!(process(w, 0), TDX_SUCCESS);
                assert_eq!(process(w, 1), TDX_SUCCESS);
            }
            TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => {
                for iommu in [0, 1] {
                    let regs = dmar::iotlb_request_regs(iommu, td, HOST_STATUS, 1);
                    let rax = w.call(u64::from(abi::TDH_IQ_INV_REQUEST), regs).rax;
                    assert!(
                        [TDX_SUCCESS, TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED].contains(&rax),
                        "INV_REQ_IOTLB on IOMMU {iommu}: {rax:#x}"
                    );
                }
                assert_eq!(process(w, 0), TDX_SUCCESS);
                assert_eq!(process(w, 1), TDX_SUCCESS);
                if !asked {
                    assert_eq!(td_request(w, td, &[domain(), wait(9)]).rax, TDX_SUCCESS);
                    asked = true;
                }
            }
            _ => break,
        }
        out = w.call(u64::from(abi::TDH_DEVIF_REQUEST), stop);
    }
    assert_eq!(out.rax, TDX_SUCCESS, "{:#x}", out.rax);
    assert!(asked);
    assert_eq!(w.state_code(y), abi::TdiStateCode::Unbound as u64);
    assert!(
        w.fw.tsm().tdi(w.id(y)).unwrap().dma.is_none(),
        "entry removed"
    );
    assert_eq!(
        (status_word(w), active(w, td)),
        (9, false),
        "the request whose last IOMMU went with the STOP-driven unbind ended there"
    );
}
