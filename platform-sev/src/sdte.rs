//! The secure device table: one secure device table entry (sDTE) per TDI with a trusted DMA
//! context, keyed by the TDI's requester ID, the structure behind the DMA half of the RMP's
//! [`tsm_core::SecureTable`].
//!
//! SEV-TIO moves the part of the AMD IOMMU device table entry that says which guest memory a
//! device reaches (DomainID, ASID, guest ID, IDE stream, root port) into an sDTE in private
//! memory that only the PSP writes; the guest sets the rest with TIO_MSG_SDTE_WRITE_REQ
//! ([`crate::guest_msg::MSG_SDTE_WRITE_REQ`]). Sources: the 64-byte layout is Linux
//! `struct sdte` of the SEV-TIO guest patch "coco/sev-guest: Implement the guest support for
//! SEV TIO" (Alexey Kardashevskiy, `drivers/virt/coco/sev-guest/tio.c`, posted 2026-02-25,
//! `<20260225053806.3311234-8-aik@amd.com>`; the same struct in the 2024/2025 RFC postings),
//! which transcribes SEV-TIO firmware interface rev 0.91 (AMD doc 58271) Table 68; the guest
//! writes exactly V, IR, IW, VMPL, vTOM_EN and vTOM there (and OpenVMM's transcription of
//! Table 68 calls those the guest-writable portion). The "sDTE resides in private memory and
//! is controlled by the PSP" is the AMD IOMMU vdevice RFC (2025-02-18) commit text.
//!
//! States mirror the core's [`DmaState`]: TDI_BIND creates the entry with V clear (no
//! translation) and the firmware fields it knows, the device's ID in the guest and its IDE
//! streams (`bind_fields`); the owner's accepted SDTE write makes it valid, the firmware
//! filling ASID and DomainID, and from then on it stays as it is until the unbind (a change
//! would need an ASID fence to hold, see `Sev::sdte_write`); blocking clears V, IR and IW; the
//! invalidation completes with an ASID fence raised after the block ([`crate::rmp`]: SEV's
//! fence of an ASID flushes its IOTLB entries as well as its TLB entries). Room for
//! [`MAX_TDIS`] entries, one per TDI the core can hold, in place: no heap, and the table is
//! never full for a TDI the core holds.

use tsm_core::capacity::MAX_TDIS;
use tsm_core::dma::DmaState;
use tsm_core::secure_table::TableError;
use tsm_core::{GuestId, InterfaceId};
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of an sDTE (`BUILD_BUG_ON(sizeof(struct sdte) * 8 != 512)` in the guest patch).
pub const SDTE_SIZE: usize = 64;

/// qword 0 bit 0: V, the entry is valid (guest-writable; Linux `struct sdte.v`).
pub const Q0_V: u64 = 1 << 0;
/// qword 0 bit 61: IR, DMA reads allowed (guest-writable; `sdte.ir`).
pub const Q0_IR: u64 = 1 << 61;
/// qword 0 bit 62: IW, DMA writes allowed (guest-writable; `sdte.iw`).
pub const Q0_IW: u64 = 1 << 62;
/// qword 1 bits 15:0: DomainID (firmware; `sdte.domain_id`).
pub const Q1_DOMAIN_ID: u64 = 0xFFFF;
/// qword 3 bits 11:0: the guest's ASID (firmware; `sdte.asid`).
pub const Q3_ASID: u64 = 0xFFF;
/// qword 3 bits 31:16: the device's ID in the guest (firmware; `sdte.guest_device_id`, after
/// asid 12, reserved 3, viommu_en 1): TDI_BIND's `guest_device_id`, "PCIe Routing Identifier
/// of the device in the guest" (`struct sev_data_tio_tdi_bind`, drivers/crypto/ccp/
/// sev-dev-tio.c of AMDESE/linux-kvm @ 16f379f5463af503796de2199ff17b8cd27682ba).
pub const Q3_GUEST_DEVICE_ID: u64 = 0xFFFF << 16;
/// Shift of [`Q3_GUEST_DEVICE_ID`].
const Q3_GUEST_DEVICE_ID_SHIFT: u32 = 16;
/// qword 4: `ide_stream_id[8]`, the IDE stream of each traffic class (firmware): the ones
/// TIO_DEV_CONNECT named for the device (`struct sev_data_tio_dev_connect.ide_stream_id`, same
/// source; Linux sets element 0 to TC0's stream and the rest to 0xFF).
pub const Q4_IDE_STREAM_ID: u64 = u64::MAX;
/// qword 3 bits 50:49: VMPL whose permissions the device's DMA gets (guest-writable;
/// `sdte.vmpl`, after asid 12, reserved 3, viommu_en 1, guest_device_id 16, guest_id 15,
/// guest_id_mbo 1, reserved 1).
pub const Q3_VMPL: u64 = 0b11 << 49;
/// Shift of [`Q3_VMPL`].
const Q3_VMPL_SHIFT: u32 = 49;
/// qword 5 bit 0: vTOM_EN (guest-writable; `sdte.vtom_en`, at byte 0x28 after the eight
/// `ide_stream_id` bytes of qword 4).
pub const Q5_VTOM_EN: u64 = 1 << 0;
/// qword 5 bits 31:1: vTOM in 2 MiB units, DMA above it is shared (guest-writable;
/// `sdte.vtom`, which the guest prints shifted left by 21).
pub const Q5_VTOM: u64 = 0xFFFF_FFFE;

/// The bits of each qword a guest may set: everything else (which memory, which stream, the
/// AMD-Vi fields) is the firmware's, and a request with any of it set is refused
/// `SDTE_WRITE_RESERVED` ([`crate::guest_msg::SdteWriteStatus::Reserved`]).
pub const GUEST_BITS: [u64; 8] = [
    Q0_V | Q0_IR | Q0_IW,
    0,
    0,
    Q3_VMPL,
    0,
    Q5_VTOM_EN | Q5_VTOM,
    0,
    0,
];

/// One secure device table entry, the 64 bytes as hardware and the guest's request lay them
/// out (eight little-endian qwords).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct Sdte {
    /// The qwords, in order.
    pub q: [U64; 8],
}
const _: () = assert!(core::mem::size_of::<Sdte>() == SDTE_SIZE);

impl Sdte {
    fn word(&self, i: usize) -> u64 {
        self.q.get(i).map_or(0, |w| w.get())
    }

    fn set_word(&mut self, i: usize, v: u64) {
        if let Some(w) = self.q.get_mut(i) {
            *w = v.into();
        }
    }

    /// V.
    pub fn valid(&self) -> bool {
        self.word(0) & Q0_V != 0
    }

    /// Whether only guest-writable bits are set ([`GUEST_BITS`]).
    pub fn guest_only(&self) -> bool {
        self.q
            .iter()
            .zip(GUEST_BITS)
            .all(|(w, mask)| w.get() & !mask == 0)
    }

    /// The guest-writable part.
    pub fn guest_part(&self) -> Sdte {
        let mut s = Sdte::default();
        for (i, mask) in GUEST_BITS.iter().enumerate() {
            s.set_word(i, self.word(i) & mask);
        }
        s
    }

    /// The firmware's part (everything but [`GUEST_BITS`]).
    pub fn firmware_part(&self) -> Sdte {
        let mut s = Sdte::default();
        for (i, mask) in GUEST_BITS.iter().enumerate() {
            s.set_word(i, self.word(i) & !mask);
        }
        s
    }

    /// The ASID the firmware pointed the entry at (0: none).
    pub fn asid(&self) -> u32 {
        u32::try_from(self.word(3) & Q3_ASID).unwrap_or(0)
    }

    /// The DomainID the firmware gave the entry.
    pub fn domain_id(&self) -> u16 {
        u16::try_from(self.word(1) & Q1_DOMAIN_ID).unwrap_or(0)
    }

    /// The VMPL whose permissions the device's DMA gets (0 the most privileged).
    pub fn vmpl(&self) -> u8 {
        u8::try_from((self.word(3) & Q3_VMPL) >> Q3_VMPL_SHIFT).unwrap_or(u8::MAX)
    }

    /// The device's ID in the guest, from TDI_BIND.
    pub fn guest_device_id(&self) -> u16 {
        u16::try_from((self.word(3) & Q3_GUEST_DEVICE_ID) >> Q3_GUEST_DEVICE_ID_SHIFT).unwrap_or(0)
    }

    /// The IDE stream of each traffic class, from DEV_CONNECT.
    pub fn ide_stream_id(&self) -> [u8; 8] {
        (self.word(4) & Q4_IDE_STREAM_ID).to_le_bytes()
    }
}

/// One used slot of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdteSlot {
    /// The TDI's interface (its requester ID: the device ID the IOMMU indexes by).
    pub iface: InterfaceId,
    /// The guest whose TDI it is (ours: the hardware entry names its ASID once valid).
    pub guest: GuestId,
    /// The hardware entry.
    pub sdte: Sdte,
    /// Where the context is, as the core sees it.
    pub state: DmaState,
    /// Ours: the entry was ever valid, so the IOMMU may hold translations of it.
    pub translated: bool,
    /// Ours: the fences raised on the guest's ASID when the entry was blocked; a fence raised
    /// after that one, completed, flushed whatever the IOMMU cached of it.
    pub blocked_at: u64,
}

/// The secure device table: at most one entry per interface, [`MAX_TDIS`] in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdteTable {
    slots: [Option<SdteSlot>; MAX_TDIS],
}

impl Default for SdteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SdteTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [None; MAX_TDIS],
        }
    }

    /// The used slots.
    pub fn iter(&self) -> impl Iterator<Item = &SdteSlot> {
        self.slots.iter().flatten()
    }

    /// The entry of `iface`, if any.
    pub fn get(&self, iface: InterfaceId) -> Option<&SdteSlot> {
        self.iter().find(|s| s.iface == iface)
    }

    /// Whether an entry of `guest` remains (its ASID is then in use).
    pub fn holds(&self, guest: GuestId) -> bool {
        self.iter().any(|s| s.guest == guest)
    }

    /// `guest`'s entry of `iface`: `NoDmaContext` for none or another guest's.
    pub(crate) fn of(&self, guest: GuestId, iface: InterfaceId) -> Result<SdteSlot, TableError> {
        self.get(iface)
            .filter(|s| s.guest == guest)
            .copied()
            .ok_or(TableError::NoDmaContext)
    }

    fn slot_mut(&mut self, iface: InterfaceId) -> Result<&mut SdteSlot, TableError> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|s| s.iface == iface)
            .ok_or(TableError::NoDmaContext)
    }

    /// Writes back `slot`, the entry of its interface (which [`SdteTable::of`] found).
    pub(crate) fn put(&mut self, slot: SdteSlot) -> Result<(), TableError> {
        *self.slot_mut(slot.iface)? = slot;
        Ok(())
    }

    /// TDI_BIND: an all-zero entry (V clear) for `iface` of `guest`. `DmaContextExists` if the
    /// interface has one; `OutOfFrames` if no slot is free (never, while the core holds at most
    /// [`MAX_TDIS`] TDIs and one context each).
    pub(crate) fn create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        if self.get(iface).is_some() {
            return Err(TableError::DmaContextExists);
        }
        let free = self
            .slots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(TableError::OutOfFrames)?;
        *free = Some(SdteSlot {
            iface,
            guest,
            sdte: Sdte::default(),
            state: DmaState::Pending,
            translated: false,
            blocked_at: 0,
        });
        Ok(())
    }

    /// Empties `iface`'s slot.
    pub(crate) fn remove(&mut self, iface: InterfaceId) {
        for s in &mut self.slots {
            if s.is_some_and(|x| x.iface == iface) {
                *s = None;
            }
        }
    }
}

/// The firmware's part TDI_BIND knows, for an entry not yet valid: the device's ID in the
/// guest and the device's IDE streams. The root port ID (`rp_id`) and `guest_id` stay 0: no
/// public source says what the firmware puts there (ours).
pub(crate) fn bind_fields(guest_device_id: u16, ide_stream_id: [u8; 8]) -> Sdte {
    let mut s = Sdte::default();
    s.set_word(
        3,
        (u64::from(guest_device_id) << Q3_GUEST_DEVICE_ID_SHIFT) & Q3_GUEST_DEVICE_ID,
    );
    s.set_word(4, u64::from_le_bytes(ide_stream_id) & Q4_IDE_STREAM_ID);
    s
}

/// `s` pointed at a guest with `asid`: the ASID, and as DomainID the ASID too (ours: the
/// firmware chooses the DomainID, no public source says how; one per guest keeps guests' IOTLB
/// entries apart); everything else of `s` kept.
pub(crate) fn with_asid(s: &Sdte, asid: u32) -> Sdte {
    let mut r = *s;
    let asid = u64::from(asid);
    r.set_word(1, (s.word(1) & !Q1_DOMAIN_ID) | (asid & Q1_DOMAIN_ID));
    r.set_word(3, (s.word(3) & !Q3_ASID) | (asid & Q3_ASID));
    r
}

/// `fw`'s firmware part with `guest`'s guest part, V as `guest` says.
pub(crate) fn combined(fw: &Sdte, guest: &Sdte) -> Sdte {
    let (f, g) = (fw.firmware_part(), guest.guest_part());
    let mut s = Sdte::default();
    for i in 0..8 {
        s.set_word(i, f.word(i) | g.word(i));
    }
    s
}

/// `fw` with the guest's part of `guest` and V set.
pub(crate) fn merged(fw: &Sdte, guest: &Sdte) -> Sdte {
    let mut s = combined(fw, guest);
    s.set_word(0, s.word(0) | Q0_V);
    s
}

/// `s` with V, IR and IW clear: no new translation.
pub(crate) fn blocked(s: &Sdte) -> Sdte {
    let mut b = *s;
    b.set_word(0, s.word(0) & !(Q0_V | Q0_IR | Q0_IW));
    b
}
