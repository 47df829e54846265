//! Tables the module keeps once per shard, every copy the same: a leaf for one TD reads its
//! TD's shard's copy (a shared read is an atomic write to the lock's cache line, so one copy
//! read by every CPU would bounce that line between them on every leaf), and a change takes
//! every copy for writing, in shard order, all or nothing, and leaves them equal. The core
//! keeps its ownership table the same way (`tsm_core::Tsm`, "Shards").

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use spin::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tsm_core::capacity::MAX_GUESTS;
use tsm_core::{Error, GuestId, TsmResult};

use super::{TdEntry, TdTable};

/// A table of `N` entries kept once per shard, each copy behind a reader-writer lock on cache
/// lines of its own (never one another shard's CPUs write).
pub(crate) struct Copies<E, const N: usize, const SHARDS: usize>(
    pub(super) [CachePadded<RwLock<[E; N]>>; SHARDS],
);

impl<E: Clone, const N: usize, const SHARDS: usize> Copies<E, N, SHARDS> {
    /// Shard `shard`'s copy, shared; `busy` while a change holds it.
    pub(crate) fn read(&self, shard: usize, busy: Error) -> TsmResult<RwLockReadGuard<'_, [E; N]>> {
        self.0
            .get(shard)
            .ok_or(Error::Inconsistent)?
            .try_read()
            .ok_or(busy)
    }

    /// Every copy for writing, in shard order; `busy` if any is held (nothing is then held).
    pub(crate) fn write(&self, busy: Error) -> TsmResult<AllCopies<'_, E, N, SHARDS>> {
        let (first, others) = self.0.split_first().ok_or(Error::Inconsistent)?;
        let first = first.try_write().ok_or(busy)?;
        let mut rest = heapless::Vec::new();
        for copy in others {
            // Cannot fail: fewer guards than copies.
            rest.push(copy.try_write().ok_or(busy)?)
                .map_err(|_| Error::Inconsistent)?;
        }
        Ok(AllCopies { first, rest })
    }

    /// Whether every copy is the same as shard 0's; `busy` while a change holds one.
    pub(crate) fn agree(&self, busy: Error) -> TsmResult<bool>
    where
        E: PartialEq,
    {
        let first = self.read(0, busy)?;
        for copy in self.0.iter().skip(1) {
            if *copy.try_read().ok_or(busy)? != *first {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Every copy, held for writing: a change is made to shard 0's (what `Deref` gives) and copied
/// to every other when the guard goes, before any lock is let go, so no reader ever sees two
/// copies differ.
pub(crate) struct AllCopies<'a, E: Clone, const N: usize, const SHARDS: usize> {
    first: RwLockWriteGuard<'a, [E; N]>,
    rest: heapless::Vec<RwLockWriteGuard<'a, [E; N]>, SHARDS>,
}

impl<E: Clone, const N: usize, const SHARDS: usize> Deref for AllCopies<'_, E, N, SHARDS> {
    type Target = [E; N];
    fn deref(&self) -> &[E; N] {
        &self.first
    }
}

impl<E: Clone, const N: usize, const SHARDS: usize> DerefMut for AllCopies<'_, E, N, SHARDS> {
    fn deref_mut(&mut self) -> &mut [E; N] {
        &mut self.first
    }
}

impl<E: Clone, const N: usize, const SHARDS: usize> Drop for AllCopies<'_, E, N, SHARDS> {
    fn drop(&mut self) {
        // Entry by entry: no second table on the stack.
        for copy in &mut self.rest {
            for (to, from) in copy.iter_mut().zip(self.first.iter()) {
                to.clone_from(from);
            }
        }
    }
}

/// An index slot naming no TD (ours: a TDR page is 4 KiB aligned, so never this).
const NO_TDR: u64 = u64::MAX;

/// The TD table (TDR PA -> TD), one copy per shard, and an index of each guest slot's TDR
/// read without a lock: a leaf naming a TD by its TDR finds the slot there, then reads that
/// slot's shard's copy and looks the TDR up again in it (the index only says which copy to
/// read: a stale one costs a cache line, never a wrong answer, since any copy held for reading
/// keeps every change out). Only TDH.MNG.CREATE and the teardown leaves write the index, with
/// every copy held.
pub(crate) struct TdCopies<const SHARDS: usize> {
    index: CachePadded<[AtomicU64; MAX_GUESTS]>,
    copies: Copies<Option<TdEntry>, MAX_GUESTS, SHARDS>,
}

impl<const SHARDS: usize> TdCopies<SHARDS> {
    /// No TD.
    pub(crate) const fn new() -> Self {
        Self {
            index: CachePadded::new([const { AtomicU64::new(NO_TDR) }; MAX_GUESTS]),
            copies: Copies(
                [const { CachePadded::new(RwLock::new([const { None }; MAX_GUESTS])) }; SHARDS],
            ),
        }
    }

    /// The copy to read for the TD whose TDR page is at `tdr`: its shard's, shard 0's for a
    /// TDR the index does not hold. `Busy(Guest)` while a change holds it.
    pub(crate) fn read_for(&self, tdr: u64) -> TsmResult<RwLockReadGuard<'_, TdTable>> {
        // Relaxed: a hint only (see the type); the lock orders everything the leaf reads.
        let shard = self
            .index
            .iter()
            .position(|t| t.load(Ordering::Relaxed) == tdr)
            .and_then(|slot| slot.checked_rem(SHARDS))
            .unwrap_or(0);
        self.read_shard(shard)
    }

    /// The copy in `guest`'s shard.
    pub(crate) fn read_guest(&self, guest: GuestId) -> TsmResult<RwLockReadGuard<'_, TdTable>> {
        let shard = usize::from(guest.slot())
            .checked_rem(SHARDS)
            .ok_or(Error::Inconsistent)?;
        self.read_shard(shard)
    }

    /// Shard `shard`'s copy: any copy is the whole table, for leaves that scan it.
    pub(crate) fn read_shard(&self, shard: usize) -> TsmResult<RwLockReadGuard<'_, TdTable>> {
        self.copies
            .read(shard, Error::Busy(tsm_core::Operand::Guest))
    }

    /// Every copy, and the index, for writing (see [`TdsWrite`]).
    pub(crate) fn write(&self) -> TsmResult<TdsWrite<'_, SHARDS>> {
        Ok(TdsWrite {
            all: self.copies.write(Error::Busy(tsm_core::Operand::Guest))?,
            index: &self.index,
        })
    }

    /// Whether every copy is the same and the index names each TD's TDR in its slot.
    pub(crate) fn agree(&self) -> TsmResult<bool> {
        let busy = Error::Busy(tsm_core::Operand::Guest);
        if !self.copies.agree(busy)? {
            return Ok(false);
        }
        let first = self.read_shard(0)?;
        Ok(self
            .index
            .iter()
            .zip(first.iter())
            .all(|(i, e)| i.load(Ordering::Relaxed) == e.map_or(NO_TDR, |e| e.tdr.as_u64())))
    }
}

/// The TD table held for writing: every copy (changes go to shard 0's and are copied to the
/// rest, [`AllCopies`]) and the index, rewritten from the change before any lock is let go.
pub(crate) struct TdsWrite<'a, const SHARDS: usize> {
    all: AllCopies<'a, Option<TdEntry>, MAX_GUESTS, SHARDS>,
    index: &'a [AtomicU64; MAX_GUESTS],
}

impl<const SHARDS: usize> Deref for TdsWrite<'_, SHARDS> {
    type Target = TdTable;
    fn deref(&self) -> &TdTable {
        &self.all
    }
}

impl<const SHARDS: usize> DerefMut for TdsWrite<'_, SHARDS> {
    fn deref_mut(&mut self) -> &mut TdTable {
        &mut self.all
    }
}

impl<const SHARDS: usize> Drop for TdsWrite<'_, SHARDS> {
    fn drop(&mut self) {
        // Runs before `all`'s own drop copies the change and lets the locks go.
        for (i, e) in self.index.iter().zip(self.all.iter()) {
            i.store(e.map_or(NO_TDR, |e| e.tdr.as_u64()), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use tsm_core::{Error, GuestId, Hpa, Operand};

    use super::{Copies, TdCopies};
    use crate::module::TdEntry;
    use crate::td::TdLife;

    fn entry(tdr: u64) -> Option<TdEntry> {
        Some(TdEntry {
            tdr: Hpa::try_new(tdr).unwrap(),
            hkid: 1,
            life: TdLife::HkidAssigned,
        })
    }

    /// A change while one shard's copy is read is BUSY, takes no lock and changes no copy.
    #[test]
    fn a_write_beside_a_reader_of_any_copy_is_busy_and_changes_nothing() {
        let busy = Error::Busy(Operand::Device);
        let copies: Copies<u8, 4, 3> = Copies(core::array::from_fn(|_| Default::default()));
        copies.write(busy).unwrap()[1] = 7;
        for held in 0..3 {
            let reader = copies.read(held, busy).unwrap();
            assert_eq!(copies.write(busy).err(), Some(busy));
            drop(reader);
            assert_eq!(copies.agree(busy), Ok(true));
            // Nothing stayed held: every copy reads, and a write goes through.
            for shard in 0..3 {
                assert_eq!(*copies.read(shard, busy).unwrap(), [0, 7, 0, 0]);
            }
        }
        copies.write(busy).unwrap()[3] = 9;
        for shard in 0..3 {
            assert_eq!(*copies.read(shard, busy).unwrap(), [0, 7, 0, 9]);
        }
    }

    /// The TD index follows every change, and a TDR is read through its slot's shard.
    #[test]
    fn the_td_index_follows_the_table_and_names_the_shard() {
        let tds: TdCopies<2> = TdCopies::new();
        {
            let mut w = tds.write().unwrap();
            w[0] = entry(0x1000);
            w[3] = entry(0x3000);
        }
        assert_eq!(tds.agree(), Ok(true));
        // Slot 3 is in shard 1: a writer is kept out by shard 1's reader alone.
        let reader = tds.read_for(0x3000).unwrap();
        assert_eq!(reader[3], entry(0x3000));
        assert!(tds.write().is_err());
        // Shard 0's copy is still free to read (another shard's TD never waits for it).
        drop(tds.read_guest(GuestId::from_slot(0)).unwrap());
        drop(reader);
        tds.write().unwrap()[3] = None;
        assert_eq!(tds.agree(), Ok(true));
        assert_eq!(tds.read_for(0x3000).unwrap()[3], None);
    }
}
