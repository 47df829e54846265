//! The trusted DMA context of a bound TDI: the IOMMU translation the firmware owns through which
//! DMA from the TDI's requester ID reaches its guest's private memory. TDX Connect: the PASID
//! table entry of the trusted IOMMU (VT-d scalable mode), which the host adds PENDING with no
//! translation (TDH.DMAR.ADD 150: SLPTPTR and the domain ID must be 0) and the TD accepts
//! (TDG.DMAR.ACCEPT 70: the module points SLPTPTR at the TD's secure EPT). SEV-TIO: the secure
//! device table entry (sDTE) the guest's TIO_MSG_SDTE_WRITE_REQ (25) sets. Arm CCA: the SMMU
//! stream table entry of the VDEV.
//!
//! The host creates a context (the untrusted parts it must supply), but never chooses where it
//! points: the owning guest's acceptance does, through the firmware. Unbind takes it away in
//! the order the Linux TDX Connect host enforces: STOP, the MMIO leaves blocked, tracked and
//! removed, then the context blocked, its IOTLB invalidation awaited, and the context removed,
//! before the ranges go back.

use crate::lifecycle::TdiState;
use crate::registry::IdeStream;

/// Where a TDI's trusted DMA context is in its life. `None` in the TDI record: no context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaState {
    /// Created by the host, not translating (TDX: PASID entry PENDING): the device's DMA reaches
    /// shared memory only.
    Pending,
    /// Accepted by the owner (TDX: PRESENT, SLPTPTR the TD's secure EPT; SEV: sDTE valid): DMA
    /// from the TDI translates through the owner's secure table while the TDI runs.
    Active,
    /// Blocked (TDX: TDH.DMAR.BLOCK 151, the entry not present): no new translation; those the
    /// IOMMU cached live until the IOTLB invalidation completes.
    Blocked,
    /// Blocked, its IOTLB invalidation requested (TDX: TDH.IQ.INV.REQUEST 161) and not complete
    /// (TDX: until TDH.IQ.INV.PROCESS 162 sees the wait descriptor done).
    Invalidating,
    /// Blocked and invalidated: nothing in the IOMMU translates for it; removable (TDX:
    /// TDH.DMAR.REMOVE 153).
    Invalidated,
}

/// What a DMA request with the TEE bit from a TDI reaches, as the root port and the IOMMU
/// decide it (the device model's question).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaReach {
    /// The owner's private memory, through its secure table.
    Private(crate::ids::GuestId),
    /// Shared memory only: the request is not translated to private memory (no context, not
    /// accepted, the TDI not running, or the device's stream cut at the root port).
    SharedOnly,
}

/// What DMA from a TDI in `state` with context `dma` on a device whose stream is `stream`
/// reaches by the firmware's record: private memory only while the TDI is RUN, its context
/// accepted and the stream live. Each platform's IOMMU structure is checked against it
/// (invariants, fuzz oracles). The scenarios' device model is stricter about the hardware: it
/// reads the IOMMU structure itself, where a blocked context whose invalidation is not yet
/// complete still translates from the IOTLB while the device, not yet STOPped, still sends TEE
/// requests; the unbind awaits that invalidation before STOP for this reason.
pub const fn reach(state: TdiState, dma: Option<DmaState>, stream: IdeStream) -> DmaReach {
    match (state, dma, stream) {
        (TdiState::Run { owner }, Some(DmaState::Active), IdeStream::Live) => {
            DmaReach::Private(owner)
        }
        _ => DmaReach::SharedOnly,
    }
}
