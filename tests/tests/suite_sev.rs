//! The scenario suite against the SEV-TIO back end: every operation goes through the SEV-TIO
//! command-buffer dispatcher, and every outcome must equal the core's.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use platform_sev::RmpEntry;
use tsm_tests::backend::Backend;
use tsm_tests::backend_sev::{RMP_INDEX_WORDS, RMP_PAGES, SevBackend};
use tsm_tests::suite::run_suite;

fn with_sev(f: &mut dyn FnMut(&mut dyn Backend)) {
    let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
    let mut index = vec![0; RMP_INDEX_WORDS];
    let mut backend = Box::new(SevBackend::new(&mut rmp, &mut index).unwrap());
    f(&mut *backend);
}

/// The firmware tables are large; give the runner room.
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn every_scenario_passes_on_sev() {
    on_big_stack(|| {
        let mut out = String::new();
        let summary = run_suite(&mut with_sev, &mut out);
        print!("{out}");
        common::assert_complete_run(&out, summary, "sev");
    });
}

/// Devices come and go through the SEV backend (each DEV_CREATE names the BAR list the host
/// wrote), and a full firmware refuses the next device exactly as the core does: many more
/// create/remove cycles than there are device slots, then a full table, and a BAR list longer
/// than a device may have.
#[test]
fn devices_come_and_go_past_every_table_size() {
    use tsm_core::capacity::{MAX_BARS, MAX_DEVICES};
    use tsm_core::device_model::ModelDevice;
    use tsm_core::mem_table::MemTable;
    use tsm_core::relay::host::Relayed;
    use tsm_core::{Error, MmioRange, RequesterId};
    use tsm_tests::backend::CoreBackend;

    on_big_stack(|| {
        let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
        let mut index = vec![0; RMP_INDEX_WORDS];
        let mut sev = Box::new(SevBackend::new(&mut rmp, &mut index).unwrap());
        let tsm: Box<Relayed<MemTable<64>>> =
            Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
        let mut core = CoreBackend::new(&tsm, "core");
        let rid = |i: usize| RequesterId::try_new(0, u8::try_from(i).unwrap(), 0, 0).unwrap();
        let bar = MmioRange::from_raw(0x8000_0000, 16).unwrap();
        // Live devices never share a BAR page (BarInUse): one BAR each.
        let bar_of =
            |i: usize| MmioRange::from_raw(0x9000_0000 + 0x10_0000 * i as u64, 16).unwrap();
        let mut both = |op: &mut dyn FnMut(&mut dyn Backend) -> Result<(), Error>| {
            let on_core = op(&mut core);
            let on_sev = op(&mut *sev);
            assert_eq!(on_sev, on_core);
            on_sev
        };
        // 3 x MAX_DEVICES + 4 devices, each created and removed.
        for i in 0..3 * MAX_DEVICES + 4 {
            both(&mut |b| {
                let d = b.create_device(rid(i), &[bar])?;
                b.remove_device(d)
            })
            .unwrap();
        }
        // MAX_DEVICES live devices; the next is refused as on the core, whatever it asks.
        let mut live = Vec::new();
        for i in 0..MAX_DEVICES {
            both(&mut |b| {
                live.push(b.create_device(rid(200 + i), &[bar_of(i)])?);
                Ok(())
            })
            .unwrap();
        }
        let next = rid(250);
        assert_eq!(
            both(&mut |b| b.create_device(next, &[bar]).map(drop)),
            Err(Error::DeviceTableFull)
        );
        assert_eq!(
            both(&mut |b| b.create_device(next, &[bar_of(3)]).map(drop)),
            Err(Error::BarInUse)
        );
        let too_many = [bar; MAX_BARS + 1];
        assert_eq!(
            both(&mut |b| b.create_device(next, &too_many).map(drop)),
            Err(Error::TooManyRanges)
        );
        // More than a BAR list holds: counted, and refused the same way.
        let far_too_many = [bar; 2 * MAX_BARS];
        assert_eq!(
            both(&mut |b| b.create_device(next, &far_too_many).map(drop)),
            Err(Error::TooManyRanges)
        );
        assert_eq!(
            both(&mut |b| b.create_device(rid(200), &[bar]).map(drop)),
            Err(Error::DuplicateDevice)
        );
        // One removed, one more fits.
        let first = live[0];
        both(&mut |b| b.remove_device(first)).unwrap();
        both(&mut |b| b.create_device(next, &[bar]).map(drop)).unwrap();
    });
}

/// SEV-TIO only (the core has no vTOM, a 4-level S-EPT no such address): the sDTE's vTOM as
/// Linux's SDTE write sets it (2^52 - 2 MiB) makes a DMA access at or above it shared, even
/// to the owner's private page, in both directions; just below it, private.
#[test]
fn dma_at_or_above_the_sdte_vtom_is_shared() {
    const TEXT: &str = "\
guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
bind nic.0 td1 range 0x8000_0000 1024
map nic.0 td1 0xf_ffff_ffc0_0000 0x8000_0000 2m
map nic.0 td1 0xf_ffff_ffe0_0000 0x8020_0000 2m
start td1 nic.0
dma nic.0 read 0xf_ffff_ffc0_0000 private
dma nic.0 write 0xf_ffff_ffdf_f000 private
dma nic.0 read 0xf_ffff_ffe0_0000 shared
dma nic.0 write 0xf_ffff_ffe0_1000 shared
unbind-all nic.0
";
    on_big_stack(|| {
        let mut out = String::new();
        let mut summary = None;
        with_sev(&mut |b| {
            summary = Some(tsm_tests::interpreter::run_scenario(
                b, "vtom", TEXT, &mut out,
            ));
        });
        let summary = summary.unwrap();
        assert_eq!((summary.passed, summary.failed), (12, 0), "{out}");
    });
}

/// SEV-TIO only (the sDTE is the one IOMMU structure with per-direction permissions here): a
/// guest whose SDTE write grants reads only (IR, not IW) gets its device's reads to its
/// private page and not its writes; the core's record calls the context active all the same.
#[test]
fn an_sdte_without_iw_lets_reads_through_and_not_writes() {
    use platform_sev::sdte::{Q0_IR, Q0_IW};
    use tsm_core::dma::DmaReach;
    use tsm_core::{Gpa, MmioRange, PageSize, RequesterId, TdiState};
    use tsm_tests::backend::DmaAccess;

    const GPA: u64 = 0x10_0000_0000;
    on_big_stack(|| {
        for (permissions, read, write) in [
            (Q0_IR, true, false),
            (Q0_IW, false, true),
            (Q0_IR | Q0_IW, true, true),
            (0, false, false),
        ] {
            let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
            let mut index = vec![0; RMP_INDEX_WORDS];
            let mut b = Box::new(SevBackend::new(&mut rmp, &mut index).unwrap());
            let g = b.create_guest().unwrap();
            let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
            let bar = MmioRange::from_raw(0x8000_0000, 16).unwrap();
            let d = b.create_device(rid, &[bar]).unwrap();
            let t = b.create_tdi(d, rid).unwrap();
            let report = [tsm_core::tdisp::report::wire_range(0x8000_0000, 16, 0, 0)];
            b.bind(t, g, &report).unwrap();
            let gpa = Gpa::try_new(GPA).unwrap();
            b.map(
                t,
                g,
                gpa,
                tsm_core::Hpa::try_new(0x8000_0000).unwrap(),
                PageSize::Size4K,
            )
            .unwrap();
            b.sdte_write(g, t, permissions).unwrap();
            // START alone: the sDTE is written already (SEV does not gate START on it).
            let mut request = [0u8; tsm_core::MAX_RELAY_BYTES];
            let first = b.begin(
                tsm_tests::backend::DeviceCall::Start { guest: g, tdi: t },
                &mut request,
            );
            assert_eq!(
                tsm_tests::backend::relay_to_end(&mut *b, t, first, &mut request),
                Ok(tsm_core::Completion::Done)
            );
            assert_eq!(b.tdi_state(t), Ok(TdiState::Run { owner: g }));
            assert_eq!(
                b.dma_context(t),
                Ok(Some(tsm_core::dma::DmaState::Active)),
                "the core's record calls the context active all the same"
            );
            let reach = |ok: bool| {
                if ok {
                    DmaReach::Private(g)
                } else {
                    DmaReach::SharedOnly
                }
            };
            for (write, want) in [(false, read), (true, write)] {
                assert_eq!(
                    b.dma_access(t, DmaAccess { write, gpa }),
                    Ok(reach(want)),
                    "permissions {permissions:#x}, write {write}"
                );
            }
            assert_eq!(b.unbind(t), Ok(tsm_core::Completion::Done));
            assert_eq!(
                b.dma_access(t, DmaAccess { write: false, gpa }),
                Ok(DmaReach::SharedOnly)
            );
        }
    });
}
