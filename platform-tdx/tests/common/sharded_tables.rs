//! The S-EPTs of a sharded firmware, shared by the tests that build one.

use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};

/// One 4-level S-EPT per shard, each over its own pool in `pools`, the pools 4 GiB apart
/// in physical address (ours: far enough that no two shards' frames meet).
pub fn sharded_tables<'m, const N: usize>(pools: &'m mut [Vec<Page>; N]) -> [Sept<'m>; N] {
    let mut base = 0x20_0000_0000;
    pools.each_mut().map(|mem| {
        let pool = FramePool::new(mem.as_mut_slice(), base).unwrap();
        base += 0x1_0000_0000;
        Sept::new(pool, SeptLevels::Four)
    })
}
