//! The firmware's operations on trusted DMA contexts ([`crate::dma`]): the host creates one for
//! a bound TDI, the owner accepts it, the device's DMA is judged by it, and the host may tear it
//! down itself once the device can no longer reach the guest, in the enforced order.

use super::Tsm;
use crate::dma::{self, DmaReach, DmaState};
use crate::ids::{GuestId, TdiId};
use crate::lifecycle::TdiState;
use crate::registry::Tdi;
use crate::relay::SecureSession;
use crate::secure_table::{SecureTable, TableError};
use crate::status::{Error, TsmResult};
use crate::transport::InterfaceId;
use core::convert::Infallible;

/// `NoDmaContext` without one.
fn context(record: &Tdi) -> TsmResult<DmaState> {
    record.dma.ok_or(Error::NoDmaContext)
}

impl<T: SecureTable, S: SecureSession, const SHARDS: usize> Tsm<T, S, SHARDS> {
    /// The host creates `tdi`'s trusted DMA context (TDX: TDH.DMAR.ADD 150 of its PASID entry,
    /// PENDING, its translation and domain left to the firmware; SEV-TIO: the device's sDTE
    /// slot): the TDI's DMA reaches shared memory only until its owner accepts the context
    /// ([`Tsm::guest_dma_accept`]). One per TDI, for a TDI bound and locked or running. Refused,
    /// changing nothing: unknown TDI (`InvalidHandle`), unbound (`TdiNotBound`), in ERROR
    /// (`TdiInError`), being unbound (`UnbindInProgress`), a context already there
    /// (`DmaContextExists`), the platform's table full (`SecureTableFull`).
    ///
    /// Locks: TDI, secure table (the owner's shard).
    pub fn host_dma_create(&self, tdi: TdiId) -> TsmResult<()> {
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let owner = match record.state {
            TdiState::Locked { owner } | TdiState::Run { owner } => owner,
            TdiState::Unbound => return Err(Error::TdiNotBound),
            TdiState::Error { .. } => return Err(Error::TdiInError),
            TdiState::Unbinding { .. } => return Err(Error::UnbindInProgress),
        };
        // Checked before the table lock: a context there is that answer, never `Busy`.
        if record.dma.is_some() {
            return Err(Error::DmaContextExists);
        }
        let mut table = self.table_of(owner)?;
        Self::create_context(&mut table, owner, record)
    }

    /// The one path that makes `record`'s context, for `owner` in `table` (the host's create,
    /// and a bind's on a table that makes it then: [`SecureTable::DMA_CONTEXT_AT_BIND`]): none
    /// there yet (`DmaContextExists`), the table's entry (its refusal), then the record's
    /// `Pending`. A refusal changes nothing.
    pub(super) fn create_context(table: &mut T, owner: GuestId, record: &mut Tdi) -> TsmResult<()> {
        if record.dma.is_some() {
            return Err(Error::DmaContextExists);
        }
        table.dma_create(owner, record.iface)?;
        record.dma = Some(DmaState::Pending);
        Ok(())
    }

    /// `guest` accepts `tdi`'s trusted DMA context (TDX: TDG.DMAR.ACCEPT 70): the firmware
    /// points it at the guest's own secure table, and DMA from the TDI reaches the guest's
    /// private memory while the TDI runs. The owner only, while the TDI is locked or running;
    /// an active context accepted again is `Ok` and changes nothing. Refused, changing nothing:
    /// unknown guest or TDI (`InvalidHandle`), unbound (`TdiNotBound`), another guest's
    /// (`NotOwner`), in ERROR (`TdiInError`), being unbound (`UnbindInProgress`), no context
    /// (`NoDmaContext`). A platform whose accept carries fields of its own uses
    /// [`Tsm::guest_dma_accept_with`].
    ///
    /// Locks: guest (briefly), TDI, secure table (the guest's shard).
    pub fn guest_dma_accept(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let accepted = self.guest_dma_accept_with(
            guest,
            tdi,
            |_, _, _| Ok::<(), Infallible>(()),
            |_, _| Ok(()),
        )?;
        accepted.map_err(|never| match never {})
    }

    /// [`Tsm::guest_dma_accept`] with the platform's own part of the accept (SEV-TIO: the
    /// guest's bits of its SDTE write) checked and written under the same TDI and table locks
    /// as the core's, so the context is never seen accepted without that part, nor that part
    /// changed on a context another request took away meanwhile.
    ///
    /// After the core's checks (its refusals as [`Tsm::guest_dma_accept`]'s, `Err`), and
    /// before anything changes, `check` reads the guest's table with the interface and the
    /// context's state (`Pending` or `Active`) and may refuse: its `E` comes back as
    /// `Ok(Err(E))`, nothing changed. Then the table's accept (a no-op for an active context),
    /// then `write`, whose answer is `Ok(Ok(R))`. `write` must not fail once `check` passed;
    /// if it does, the accept stays (record and table agree) and the answer is
    /// `Inconsistent`.
    ///
    /// Locks: guest (briefly), TDI, secure table (the guest's shard).
    pub fn guest_dma_accept_with<R, E>(
        &self,
        guest: GuestId,
        tdi: TdiId,
        check: impl FnOnce(&T, InterfaceId, DmaState) -> Result<(), E>,
        write: impl FnOnce(&mut T, InterfaceId) -> Result<R, TableError>,
    ) -> TsmResult<Result<R, E>> {
        self.guest(guest)?;
        let mut slot = self.tdis.lock(tdi.slot())?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        Self::guest_owns(record, guest, false)?;
        let state = match context(record)? {
            s @ (DmaState::Active | DmaState::Pending) => s,
            // An unbind blocks the context only after leaving Locked/Run: drift.
            _ => return Err(Error::Inconsistent),
        };
        let mut table = self.table_of(guest)?;
        if let Err(refusal) = check(&table, record.iface, state) {
            return Ok(Err(refusal));
        }
        if state == DmaState::Pending {
            table.dma_accept(guest, record.iface)?;
            record.dma = Some(DmaState::Active);
        }
        write(&mut table, record.iface)
            .map(Ok)
            .map_err(|_| Error::Inconsistent)
    }

    /// What a DMA request with the TEE bit from `tdi` reaches now ([`dma::reach`]: the owner's
    /// private memory only while the TDI runs, its context accepted and its device's stream
    /// live). The device model asks it; it changes nothing.
    ///
    /// Locks: device, TDI.
    pub fn dma_reach(&self, tdi: TdiId) -> TsmResult<DmaReach> {
        let (dev_slot, slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let record = slot.as_ref().ok_or(Error::InvalidHandle)?;
        Ok(dma::reach(record.state, record.dma, dev.stream))
    }

    /// The host blocks `tdi`'s trusted DMA context itself (TDX: TDH.DMAR.BLOCK 151), as the
    /// Linux host does after STOP and the MMIO teardown. See [`Tsm::host_dma_remove`] for when
    /// the host may. A blocked context stays as it is.
    pub fn host_dma_block(&self, tdi: TdiId) -> TsmResult<()> {
        self.host_dma_change(tdi, |t, owner, record, state| match state {
            DmaState::Pending | DmaState::Active => {
                t.dma_block(owner, record.iface)?;
                Ok(Some(DmaState::Blocked))
            }
            kept => Ok(Some(kept)),
        })
    }

    /// The host requests the IOTLB invalidation of `tdi`'s blocked context (TDX:
    /// TDH.IQ.INV.REQUEST 161); the platform completes it (TDX: TDH.IQ.INV.PROCESS 162), at
    /// once or later. Refused `DmaNotBlocked` while the context is not blocked. See
    /// [`Tsm::host_dma_remove`] for when the host may.
    pub fn host_dma_invalidate(&self, tdi: TdiId) -> TsmResult<()> {
        self.host_dma_change(tdi, |t, owner, record, state| match state {
            DmaState::Pending | DmaState::Active => Err(TableError::DmaNotBlocked),
            DmaState::Blocked | DmaState::Invalidating => {
                crate::unbind::invalidation(t, owner, record.iface).map(Some)
            }
            DmaState::Invalidated => Ok(Some(DmaState::Invalidated)),
        })
    }

    /// The host removes `tdi`'s blocked, invalidated context (TDX: TDH.DMAR.REMOVE 153). The
    /// host may tear a context down only once the TDI's device can no longer reach the guest
    /// ([`Tsm::host_may_tear_down`]: the unbind is past STOP, or the device's stream is cut),
    /// and only in order: block, invalidate, remove; the unbind's Dma step then skips what the
    /// host did. Refused, changing nothing: unknown TDI (`InvalidHandle`), the device still able
    /// to reach the guest (`TdiBound`), no context (`NoDmaContext`), not blocked
    /// (`DmaNotBlocked`), its invalidation not complete (`IotlbInvalidationPending`), the
    /// guest's domain still owed a track's invalidation on its IOMMU (`IotlbNotTracked`, TDX).
    ///
    /// Locks (each of the three): device, TDI, secure table (the owner's shard).
    pub fn host_dma_remove(&self, tdi: TdiId) -> TsmResult<()> {
        // The order is the core's to keep, whatever the platform's table checks.
        self.host_dma_change(tdi, |t, owner, record, state| match state {
            DmaState::Pending | DmaState::Active => Err(TableError::DmaNotBlocked),
            DmaState::Blocked => Err(TableError::InvalidationPending),
            DmaState::Invalidating | DmaState::Invalidated => {
                t.dma_remove(owner, record.iface).map(|()| None)
            }
        })
    }

    /// One host change of a context under the rules of [`Tsm::host_dma_remove`]: `change` gets
    /// the owner's table, the owner, the record and the context's state, makes its change in
    /// the table (all or nothing) and says the record's new state.
    fn host_dma_change(
        &self,
        tdi: TdiId,
        change: impl FnOnce(&mut T, GuestId, &Tdi, DmaState) -> Result<Option<DmaState>, TableError>,
    ) -> TsmResult<()> {
        let (dev_slot, mut slot) = self.lock_tdi_and_device(tdi)?;
        let dev = dev_slot.as_ref().ok_or(Error::InvalidHandle)?;
        let record = slot.as_mut().ok_or(Error::InvalidHandle)?;
        let Some(owner) = record.state.owner() else {
            // An unbound TDI has no context: the unbind removed it.
            return Err(context(record).err().unwrap_or(Error::Inconsistent));
        };
        if !Self::host_may_tear_down(record.state, dev.stream) {
            return Err(Error::TdiBound);
        }
        let state = context(record)?;
        let mut table = self.table_of(owner)?;
        record.dma = change(&mut table, owner, record, state)?;
        Ok(())
    }
}
