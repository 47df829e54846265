//! The scenario `dma` check's model (review s22b D1): whether the device sends T=1 is the
//! device's own TDISP state and stream; what the request reaches is each platform's IOMMU
//! structure, read in every state, with its IOTLB. These tests pin both halves apart, on the
//! states where the old check answered "shared" without reading any structure.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use platform_tdx::abi::SeamRegs;
use platform_tdx::dmar::{INV_DONE, INV_QUEUED, PTE_P, PTE_SLPTPTR_MASK, TDH_DMAR_READ, dmar_idx};
use platform_tdx::frames::Page;
use platform_tdx::sept::SeptLevels;
use tsm_core::device_model::ModelDevice;
use tsm_core::dma::DmaReach;
use tsm_core::lifecycle::TdispState;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_core::{Gpa, GuestId, TdiId, TdiState};
use tsm_tests::backend::{Backend, CoreBackend, DmaAccess, FlushControl};
use tsm_tests::backend_tdx::{POOL_PAGES, TdxBackend, TdxFirmware, dmar_read_state, tdx_firmware};
use tsm_tests::interpreter::run_scenario;

const SETUP: &str = "\
guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
bind nic.0 td1 range 0x8000_0000 512
map nic.0 td1 0x10_0000_0000 0x8000_0000 2m
dma-create nic.0
dma-accept td1 nic.0
";

/// iotlb-wait.scn's window: running, then an unbind that stops for the context's IOTLB
/// invalidation, which the host has not completed.
const WINDOW: &str = "\
guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
bind nic.0 td1 range 0x8000_0000 512
map nic.0 td1 0x10_0000_0000 0x8000_0000 4k
start td1 nic.0
dma nic.0 write 0x10_0000_0000 private
invalidations manual
unbind nic.0 -> IotlbInvalidationPending
";

fn run(b: &mut dyn Backend, text: &str) {
    let mut out = String::new();
    let summary = run_scenario(b, "setup", text, &mut out);
    assert_eq!(summary.failed, 0, "{out}");
}

/// TDH.DMAR.READ of the TDI's PASID entry: (RAX, RDX state info, R8 qword 0).
fn dmar_read(b: &mut TdxBackend<'_, '_>, tsm: &TdxFirmware<'_>, t: TdiId) -> (u64, u64, u64) {
    let rec = tsm.tsm().tdi(t).unwrap();
    let out = b.seamcall(
        TDH_DMAR_READ,
        SeamRegs {
            rcx: dmar_idx(rec.iface.requester_id()),
            ..SeamRegs::default()
        },
    );
    (out.rax, out.rdx, out.r8)
}

/// D1, adapted: after TDG.DMAR.ACCEPT of a CONFIG_LOCKED TDI the PASID entry is PRESENT with
/// the TD's S-EPT root, which maps the page: the trusted IOMMU would translate a T=1 write
/// into the TD's private page (`iommu_reach`). The device, CONFIG_LOCKED, sends no T=1
/// (`device_sends_tee`), so the access reaches shared memory only. Both facts, read apart.
#[test]
fn d1_config_locked_with_an_accepted_entry_the_iommu_translates_but_the_device_sends_no_t1() {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let tsm = tdx_firmware(&mut mem, SeptLevels::Four).unwrap();
    let mut b = TdxBackend::new(&tsm);
    run(&mut b, SETUP);
    let (g, t) = (GuestId::from_slot(0), TdiId::from_slot(0));
    let rec = tsm.tsm().tdi(t).unwrap();
    assert_eq!(rec.state, TdiState::Locked { owner: g });
    assert_eq!(b.device().state(rec.iface), TdispState::ConfigLocked);
    let (rax, _, r8) = dmar_read(&mut b, &tsm, t);
    let root = tsm
        .with_guest_table(g, |s| s.root_phys(g))
        .unwrap()
        .unwrap();
    assert_eq!(rax, 0, "TDH.DMAR.READ");
    assert!(r8 & PTE_P != 0, "the PASID entry is present");
    assert_eq!(
        r8 & PTE_SLPTPTR_MASK,
        root,
        "SLPTPTR is the TD's S-EPT root"
    );
    let gpa = Gpa::try_new(0x10_0000_0000).unwrap();
    assert!(
        tsm.tsm().leaf(g, gpa).unwrap().is_some(),
        "the S-EPT maps it"
    );
    assert_eq!(
        b.iommu_reach(t),
        Ok(DmaReach::Private(g)),
        "the IOMMU translates a T=1 request from the TDI into the TD's memory"
    );
    // The S-EPT's own table says the same as TDH.DMAR.READ.
    assert_eq!(
        tsm.with_guest_table(g, |s| s.iommu_reach(rec.iface)),
        Ok(DmaReach::Private(g))
    );
    assert_eq!(b.device_sends_tee(t), Ok(false), "CONFIG_LOCKED: no T=1");
    assert_eq!(
        b.dma_access(t, DmaAccess { write: true, gpa }),
        Ok(DmaReach::SharedOnly)
    );
    // START: the same entry, now with a device that sends T=1.
    b.start(g, t).unwrap();
    assert_eq!(b.device().state(rec.iface), TdispState::Run);
    assert_eq!(b.device_sends_tee(t), Ok(true));
    assert_eq!(
        b.dma_access(t, DmaAccess { write: true, gpa }),
        Ok(DmaReach::Private(g))
    );
}

/// D1b, adapted: iotlb-wait.scn's window on TDX. The entry is blocked (not present) with its
/// invalidation QUEUED, not DONE: the device is still RUN (no STOP went out) and the IOTLB may
/// still hold what the entry translated, so the access reaches the TD's page. Once the host's
/// TDH.IQ.INV.PROCESS completed it (DONE), with the device still RUN, it does not.
#[test]
fn d1b_a_blocked_entry_whose_invalidation_is_queued_still_reaches_through_the_iotlb() {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let tsm = tdx_firmware(&mut mem, SeptLevels::Four).unwrap();
    let mut b = TdxBackend::new(&tsm);
    run(&mut b, WINDOW);
    let (g, t) = (GuestId::from_slot(0), TdiId::from_slot(0));
    let iface = tsm.tsm().tdi(t).unwrap().iface;
    let (rax, rdx, r8) = dmar_read(&mut b, &tsm, t);
    assert_eq!(rax, 0, "TDH.DMAR.READ");
    assert_eq!(r8 & PTE_P, 0, "blocked: not present");
    assert_eq!(
        dmar_read_state(rdx).1,
        INV_QUEUED,
        "invalidation QUEUED, not DONE"
    );
    assert_eq!(b.device().state(iface), TdispState::Run, "no STOP yet");
    let gpa = Gpa::try_new(0x10_0000_0000).unwrap();
    for write in [false, true] {
        assert_eq!(
            b.dma_access(t, DmaAccess { write, gpa }),
            Ok(DmaReach::Private(g)),
            "the IOTLB may still translate into the TD's page until PROCESS"
        );
    }
    assert_eq!(
        tsm.with_guest_table(g, |s| s.iommu_reach(iface)),
        Ok(DmaReach::Private(g)),
        "the table agrees with TDH.DMAR.READ"
    );
    b.complete_invalidations(t).unwrap();
    let (_, rdx, _) = dmar_read(&mut b, &tsm, t);
    assert_eq!(dmar_read_state(rdx).1, INV_DONE);
    assert_eq!(b.device().state(iface), TdispState::Run, "still no STOP");
    assert_eq!(b.iommu_reach(t), Ok(DmaReach::SharedOnly));
    assert_eq!(
        tsm.with_guest_table(g, |s| s.iommu_reach(iface)),
        Ok(DmaReach::SharedOnly)
    );
    assert_eq!(
        b.dma_access(t, DmaAccess { write: true, gpa }),
        Ok(DmaReach::SharedOnly)
    );
}

/// The same window on the core's in-memory table: blocked, not invalidated, translates; once
/// the host completed the invalidation, with the device still RUN, it does not.
#[test]
fn the_core_tables_blocked_context_translates_until_invalidated() {
    let tsm: Box<Relayed<MemTable<64>>> =
        Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
    let mut b = CoreBackend::new(&tsm, "core");
    run(&mut b, WINDOW);
    let (g, t) = (GuestId::from_slot(0), TdiId::from_slot(0));
    let gpa = Gpa::try_new(0x10_0000_0000).unwrap();
    assert_eq!(b.device_sends_tee(t), Ok(true), "no STOP yet");
    assert_eq!(b.iommu_reach(t), Ok(DmaReach::Private(g)));
    assert_eq!(
        b.dma_access(t, DmaAccess { write: true, gpa }),
        Ok(DmaReach::Private(g))
    );
    b.complete_invalidations(t).unwrap();
    assert_eq!(b.device_sends_tee(t), Ok(true));
    assert_eq!(b.iommu_reach(t), Ok(DmaReach::SharedOnly));
}

/// A device the firmware has cut off (forced unbind: no STOP, so still RUN in its own eyes)
/// sends no T=1 over a cut stream; once the stream is set up again, the entry is gone.
#[test]
fn a_cut_stream_carries_no_t1_even_from_a_running_device() {
    let tsm: Box<Relayed<MemTable<64>>> =
        Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
    let mut b = CoreBackend::new(&tsm, "core");
    run(
        &mut b,
        "\
guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
bind nic.0 td1 range 0x8000_0000 512
map nic.0 td1 0x10_0000_0000 0x8000_0000 4k
start td1 nic.0
unbind-force nic.0
expect-state nic.0 unbound
",
    );
    let t = TdiId::from_slot(0);
    let iface = tsm.tdi(t).unwrap().iface;
    assert_eq!(
        tsm.with_device(|d| d.dsm().state(iface)),
        Ok(TdispState::Run),
        "the device never saw STOP"
    );
    assert_eq!(b.device_sends_tee(t), Ok(false), "the stream is cut");
    b.setup_stream(tsm.tdi(t).unwrap().device).unwrap();
    assert_eq!(b.device_sends_tee(t), Ok(true));
    assert_eq!(b.iommu_reach(t), Ok(DmaReach::SharedOnly), "no entry left");
}
