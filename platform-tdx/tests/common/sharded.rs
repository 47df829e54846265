//! A sharded firmware (`TdxModule::sharded`), shared by the tests that build one.

use platform_tdx::TdxModule;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::{ModelSession, ReservedMemory};

/// The firmware over `N` shards, each a model session and a 4-level S-EPT over its own pool
/// in `pools`, the pools 4 GiB apart in physical address (ours: far enough that no two shards'
/// frames meet); no memory reserved.
pub fn sharded_module<'m, const N: usize>(
    pools: &'m mut [Vec<Page>; N],
) -> TdxModule<'m, ModelSession, N> {
    let mut base = 0x20_0000_0000;
    let tables = pools.each_mut().map(|mem| {
        let pool = FramePool::new(mem.as_mut_slice(), base).unwrap();
        base += 0x1_0000_0000;
        Sept::new(pool, SeptLevels::Four)
    });
    TdxModule::sharded(
        tables,
        std::array::from_fn(|_| ModelSession::model()),
        ReservedMemory::new(),
    )
}
