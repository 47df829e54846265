//! The dispatcher logs each refusal once, at `debug`, with its leaf, status and operand, and
//! nothing for a leaf that succeeds. A capturing logger (this test binary's own: `log` allows
//! one per process) records what an integrator's logger would see.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use platform_tdx::TdxModule;
use platform_tdx::abi::{self, BufferMemory, Dispatcher, SeamRegs};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use platform_tdx::status::{self, OPERAND_ID_RCX};
use tsm_core::ModelSession;

/// Every record logged, as `level target: message`.
struct Capture(Mutex<Vec<String>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        self.0.lock().unwrap().push(format!(
            "{} {}: {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn a_refusal_is_logged_once_with_its_leaf_status_and_operand() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(LevelFilter::Trace);
    let mut mem = vec![Page::ZERO; 16];
    let pool = FramePool::new(&mut mem, 0x20_0000_0000).unwrap();
    let fw = TdxModule::new(Sept::new(pool, SeptLevels::Four), ModelSession::model());
    let bytes = [0u8; 4096];
    let d = Dispatcher::new(
        &fw,
        BufferMemory {
            base: 0x1000,
            bytes: &bytes,
        },
    );
    // TSM.DEVIF.STATE of a function ID no TDI has.
    let mut regs = SeamRegs {
        rax: u64::from(abi::TSM_DEVIF_STATE),
        rcx: abi::function_id(tsm_core::RequesterId::try_new(0, 3, 0, 0).unwrap()),
        ..Default::default()
    };
    d.seamcall(&mut regs);
    let status = regs.rax;
    assert_eq!(status & status::OPERAND_ID_MASK, u64::from(OPERAND_ID_RCX));
    let lines = CAPTURE.0.lock().unwrap().clone();
    let want = format!(
        "{} platform_tdx::abi: tdx: SEAMCALL leaf {:#x} refused: {status:#018x} {} operand {}",
        Level::Debug,
        abi::TSM_DEVIF_STATE,
        status::name(status).unwrap(),
        OPERAND_ID_RCX
    );
    assert_eq!(lines, [want]);
    // A leaf that succeeds logs nothing: TDH.MNG.CREATE of a TD at the host page at 0x1000.
    let mut create = SeamRegs {
        rax: u64::from(abi::TDH_MNG_CREATE),
        rcx: 0x1000,
        rdx: 5,
        ..Default::default()
    };
    d.seamcall(&mut create);
    assert_eq!(create.rax, status::TDX_SUCCESS);
    assert_eq!(CAPTURE.0.lock().unwrap().len(), 1);
}
