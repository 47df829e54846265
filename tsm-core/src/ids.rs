//! Identifiers: PCIe requester IDs and the firmware's handles for devices, TDIs and guests.

use core::fmt;
use core::marker::PhantomData;

use crate::status::Error;

/// A PCIe requester ID with its segment: segment:bus:device.function (PCIe 6.x 2.2.6.2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequesterId {
    segment: u16,
    bus: u8,
    devfn: u8,
}

/// Devices per bus (5-bit device number, PCIe 6.x 2.2.6.2).
pub const PCI_DEVICES_PER_BUS: u8 = 32;
/// Functions per device (3-bit function number; ARI is out of scope here).
pub const PCI_FUNCTIONS_PER_DEVICE: u8 = 8;

impl RequesterId {
    /// Builds a requester ID; `InvalidRequesterId` when device or function is out of range.
    pub const fn try_new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, Error> {
        if device >= PCI_DEVICES_PER_BUS || function >= PCI_FUNCTIONS_PER_DEVICE {
            return Err(Error::InvalidRequesterId);
        }
        Ok(Self {
            segment,
            bus,
            devfn: (device << 3) | function,
        })
    }

    /// From the packed form `segment << 16 | bus << 8 | devfn`, as ABIs carry it.
    pub const fn from_packed(raw: u64) -> Result<Self, Error> {
        if raw >> 32 != 0 {
            return Err(Error::InvalidRequesterId);
        }
        let [devfn, bus, seg_lo, seg_hi, ..] = raw.to_le_bytes();
        Ok(Self {
            segment: u16::from_le_bytes([seg_lo, seg_hi]),
            bus,
            devfn,
        })
    }

    /// The packed form `segment << 16 | bus << 8 | devfn`.
    pub const fn packed(self) -> u32 {
        u32::from_le_bytes([
            self.devfn,
            self.bus,
            self.segment.to_le_bytes()[0],
            self.segment.to_le_bytes()[1],
        ])
    }

    /// From a segment and a 16-bit routing ID (bus << 8 | device << 3 | function).
    pub const fn from_routing(segment: u16, routing: u16) -> Self {
        let [devfn, bus] = routing.to_le_bytes();
        Self {
            segment,
            bus,
            devfn,
        }
    }

    /// The 16-bit routing ID (bus, device, function) without the segment.
    pub const fn routing_id(self) -> u16 {
        u16::from_le_bytes([self.devfn, self.bus])
    }

    /// PCI segment (domain).
    pub const fn segment(self) -> u16 {
        self.segment
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }
    /// Device number.
    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }
    /// Function number.
    pub const fn function(self) -> u8 {
        self.devfn & 0x7
    }
}

impl fmt::Debug for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment,
            self.bus,
            self.device(),
            self.function()
        )
    }
}

/// Marker for device handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {}
/// Marker for TDI handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TdiKind {}
/// Marker for guest handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GuestKind {}

/// A firmware handle: the slot of an object in its fixed table. The firmware hands it out; a
/// host-supplied one is only trusted after the table has checked it ([`Error::InvalidHandle`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle<K> {
    slot: u16,
    kind: PhantomData<K>,
}

/// A physical device (a PCIe device with its security manager, DSM).
pub type DeviceId = Handle<DeviceKind>;
/// A TDISP interface: one function or VF of a device.
pub type TdiId = Handle<TdiKind>;
/// A confidential guest (a TDX trust domain or an SEV-SNP guest).
pub type GuestId = Handle<GuestKind>;

impl<K> Handle<K> {
    /// A handle for table slot `slot`; tables reject slots they do not have.
    pub const fn from_slot(slot: u16) -> Self {
        Self {
            slot,
            kind: PhantomData,
        }
    }

    /// From a raw ABI value; values wider than a slot are `InvalidHandle`.
    pub fn from_raw(raw: u64) -> Result<Self, Error> {
        u16::try_from(raw)
            .map(Self::from_slot)
            .map_err(|_| Error::InvalidHandle)
    }

    /// The table slot.
    pub const fn slot(self) -> u16 {
        self.slot
    }
}

impl<K> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_id_fields_and_packing() {
        let rid = RequesterId::try_new(1, 0x3a, 0x1f, 7);
        assert_eq!(
            rid.map(|r| (r.segment(), r.bus(), r.device(), r.function())),
            Ok((1, 0x3a, 0x1f, 7))
        );
        assert_eq!(rid.map(RequesterId::packed), Ok(0x0001_3aff));
        assert_eq!(rid.map(RequesterId::routing_id), Ok(0x3aff));
        assert_eq!(RequesterId::from_packed(0x0001_3aff), rid);
        assert_eq!(
            RequesterId::try_new(0, 0, 32, 0),
            Err(Error::InvalidRequesterId)
        );
        assert_eq!(
            RequesterId::try_new(0, 0, 0, 8),
            Err(Error::InvalidRequesterId)
        );
        assert_eq!(
            RequesterId::from_packed(1 << 32),
            Err(Error::InvalidRequesterId)
        );
    }

    #[test]
    fn display_is_lspci_style() {
        let rid = RequesterId::try_new(0, 3, 0, 1).map(|r| format!("{r}"));
        assert_eq!(rid.as_deref(), Ok("0000:03:00.1"));
    }

    #[test]
    fn handles_reject_wide_values() {
        assert_eq!(TdiId::from_raw(0x1_0000), Err(Error::InvalidHandle));
        assert_eq!(TdiId::from_raw(5).map(TdiId::slot), Ok(5));
    }
}
