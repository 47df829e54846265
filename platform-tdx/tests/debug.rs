//! Every public type of the TDX back end formats as a short summary (never a page pool), and
//! the firmware is no larger than the core's docs say.
#![allow(clippy::unwrap_used)]

use platform_tdx::TdxModule;
use platform_tdx::abi::{BufferMemory, Dispatcher, HostBuffer};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::ModelSession;

#[test]
fn firmware_types_format_as_short_summaries() {
    let mut mem = vec![Page::ZERO; 64];
    let pool = FramePool::new(&mut mem, 0x20_0000_0000).unwrap();
    let shown = format!("{pool:?}");
    assert!(
        shown.starts_with("FramePool { phys_base: 0x2000000000, table_pages: "),
        "{shown}"
    );
    let sept = Sept::new(pool, SeptLevels::Four);
    let shown = format!("{sept:?}");
    assert!(shown.starts_with("Sept { pool: FramePool {"), "{shown}");
    let fw = TdxModule::new(sept, ModelSession::model());
    let shown = format!("{fw:?}");
    assert!(shown.starts_with("TdxModule { tsm: Tsm {"), "{shown}");
    // 64 pages of 4 KiB would print as megabytes: a summary stays short.
    assert!(shown.len() < 400, "{shown}");

    let bytes = [0u8; 32];
    let host = BufferMemory {
        base: 0x1000,
        bytes: &bytes,
    };
    assert_eq!(
        format!("{host:?}"),
        "BufferMemory { base: 0x1000, len: 32 }"
    );
    let d = Dispatcher::new(&fw, host);
    let shown = format!("{d:?}");
    assert!(shown.starts_with("Dispatcher { fw: TdxModule {"), "{shown}");
    let mut bytes = [0u8; 16];
    let buffer = HostBuffer::new(0x2000, &mut bytes);
    assert_eq!(
        format!("{buffer:?}"),
        "HostBuffer { base: 0x2000, len: 16 }"
    );
}

#[cfg(feature = "model-device")]
#[test]
fn the_c_firmware_formats_whether_it_is_initialized() {
    let c = platform_tdx::capi::Firmware::new();
    assert_eq!(format!("{c:?}"), "Firmware { initialized: None }");
    let m = platform_tdx::capi::ModelMailbox::new();
    assert_eq!(format!("{m:?}"), "ModelMailbox { .. }");
}

/// The sizes `Tsm`'s docs ("Size: keep it in a static") promise: a change that grows them past
/// these bounds updates those docs too.
#[test]
fn the_firmware_is_as_large_as_the_core_docs_say() {
    use core::mem::size_of;
    use tsm_core::relay::host::Relayed;
    use tsm_core::tsm::Tsm;
    assert!(size_of::<Tsm<Sept<'static>, ModelSession>>() <= 104 * 1024);
    assert!(size_of::<Relayed<Sept<'static>>>() <= 152 * 1024);
    assert!(size_of::<TdxModule<'static, ModelSession>>() <= 120 * 1024);
}

/// What each further shard of the TDX module adds (printed with `--nocapture`; about 17 KiB on
/// x86_64): the core's shard (table, requester, ownership copy) and the module's copies of the
/// TD and SPDM tables.
#[test]
fn a_shard_of_the_module_costs_a_core_shard_and_two_table_copies() {
    use core::mem::size_of;
    let one = size_of::<TdxModule<'static, ModelSession>>();
    let two = size_of::<TdxModule<'static, ModelSession, 2>>();
    eprintln!("TdxModule: {one} bytes with one shard, {two} with two");
    assert!(two > one && two - one <= 24 * 1024);
}
