//! Which requester IDs are the functions of one device: the rule that ties a TDISP interface to
//! the device whose security manager (DSM) answers for it.
//!
//! A device is registered by its DSM's requester ID: the function whose DOE mailbox carries
//! SPDM for the device, usually function 0 (PCIe 6.x 11.3, 6.30). Its functions are
//! - the physical functions: the eight functions of that segment, bus and device number
//!   (PCIe 6.x 2.2.6.2; ARI is out of scope), and
//! - when the host declares SR-IOV, its virtual functions: routing IDs
//!   `PF0 + First VF Offset + n * VF Stride` for `n < NumVFs` in the same segment
//!   (PCIe 6.x 9.3.3.10 First VF Offset and VF Stride, 9.3.3.7 NumVFs).
//!
//! Every TDI's interface ID must be one of its device's functions, and no requester ID is a
//! function of two registered devices, so one interface can never be bound through two TDIs.
//! [`InterfaceId`] states the rule; [`DeviceFunctions::interface`] is its one check.

use core::fmt;

use crate::ids::{PCI_FUNCTIONS_PER_DEVICE, RequesterId};
use crate::status::Error;

/// Widest segment a TDISP FUNCTION_ID carries: REQUESTER_SEGMENT is 8 bits (PCIe 6.x 11.3.4,
/// INTERFACE_ID: FUNCTION_ID bits 23:16, valid flag bit 24).
pub const MAX_INTERFACE_SEGMENT: u16 = 0xff;

/// A TDISP interface ID (PCIe 6.x 11.3.4, INTERFACE_ID; its FUNCTION_ID names the function).
///
/// The rule, the same on every path (the core's `create_tdi`, TDX TDH.DEVIF.CREATE by function
/// ID, SEV TIO_TDI_CREATE by `interface_id`): an interface ID is the requester ID, segment
/// included, of one function (a PF or an enabled VF, [`DeviceFunctions`]) of the device the
/// host registered and creates the TDI under, in a segment the FUNCTION_ID can carry (at most
/// [`MAX_INTERFACE_SEGMENT`]). Another segment, bus or device number, or a VF the device did
/// not declare, is `ForeignInterface`; a segment above 255 is `InvalidRequesterId`. Only
/// [`DeviceFunctions::interface`] makes one, so every `InterfaceId` the firmware holds passed
/// that check; since no requester ID is a function of two registered devices, an interface
/// has at most one TDI anywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceId(RequesterId);

impl InterfaceId {
    /// The function's requester ID.
    pub const fn requester_id(self) -> RequesterId {
        self.0
    }

    /// The TDISP FUNCTION_ID (PCIe 6.x 11.3.4, [`crate::tdisp::function_id`]). Total: the
    /// segment was checked to fit when the interface ID was made.
    pub fn function_id(self) -> u32 {
        crate::tdisp::function_id(self.0).unwrap_or(u32::from(self.0.routing_id()))
    }
}

impl From<InterfaceId> for RequesterId {
    fn from(iface: InterfaceId) -> Self {
        iface.0
    }
}

/// An interface is the function it names: comparing with a requester ID compares that.
impl PartialEq<RequesterId> for InterfaceId {
    fn eq(&self, rid: &RequesterId) -> bool {
        self.0 == *rid
    }
}

/// As the requester ID: `0000:03:00.1`.
impl fmt::Debug for InterfaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// As the requester ID: `0000:03:00.1`.
impl fmt::Display for InterfaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// VFs one device may declare: what a 16-bit routing ID space allows past the PF.
pub const MAX_VFS: u16 = 256;

/// The SR-IOV layout of a device's VFs, as the PF's SR-IOV capability gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VfLayout {
    /// First VF Offset: routing-ID distance from PF0 to VF1 (PCIe 6.x 9.3.3.10).
    pub first_offset: u16,
    /// VF Stride: routing-ID distance between consecutive VFs (PCIe 6.x 9.3.3.10).
    pub stride: u16,
    /// NumVFs: how many VFs are enabled (PCIe 6.x 9.3.3.7).
    pub count: u16,
}

/// The requester IDs that are functions of one device. Valid by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceFunctions {
    dsm: RequesterId,
    vfs: Option<VfLayout>,
}

impl DeviceFunctions {
    /// A device without VFs: the eight physical functions of `dsm`'s device number.
    pub const fn physical(dsm: RequesterId) -> Self {
        Self { dsm, vfs: None }
    }

    /// A device whose PF0 (function 0 of `dsm`'s device number) has VFs laid out as `vfs`.
    /// `InvalidRequesterId` unless the layout has 1..=[`MAX_VFS`] VFs, a first offset past
    /// the eight PFs and a non-zero stride (anything less would put a VF on a PF's ID), and
    /// every VF's routing ID fits in 16 bits.
    pub fn new(dsm: RequesterId, vfs: Option<VfLayout>) -> Result<Self, Error> {
        if let Some(v) = vfs {
            let past_pfs = v.first_offset >= u16::from(PCI_FUNCTIONS_PER_DEVICE);
            if v.count == 0 || v.count > MAX_VFS || !past_pfs || v.stride == 0 {
                return Err(Error::InvalidRequesterId);
            }
            let last = u32::from(v.count.saturating_sub(1))
                .checked_mul(u32::from(v.stride))
                .and_then(|span| span.checked_add(u32::from(v.first_offset)))
                .and_then(|span| span.checked_add(u32::from(pf0(dsm))))
                .ok_or(Error::InvalidRequesterId)?;
            if last > u32::from(u16::MAX) {
                return Err(Error::InvalidRequesterId);
            }
        }
        Ok(Self { dsm, vfs })
    }

    /// The DSM's requester ID (PF0).
    pub const fn dsm(&self) -> RequesterId {
        self.dsm
    }

    /// The VF layout, if any.
    pub const fn vfs(&self) -> Option<VfLayout> {
        self.vfs
    }

    /// `rid` as an interface ID of this device: the one check of the [`InterfaceId`] rule.
    /// `ForeignInterface` when `rid` is not one of the device's functions (another segment,
    /// bus or device number, an undeclared VF); `InvalidRequesterId` when its segment is wider
    /// than a FUNCTION_ID carries.
    pub fn interface(&self, rid: RequesterId) -> Result<InterfaceId, Error> {
        if !self.contains(rid) {
            return Err(Error::ForeignInterface);
        }
        if rid.segment() > MAX_INTERFACE_SEGMENT {
            return Err(Error::InvalidRequesterId);
        }
        Ok(InterfaceId(rid))
    }

    /// Whether `rid` is one of the device's functions.
    pub fn contains(&self, rid: RequesterId) -> bool {
        if rid.segment() != self.dsm.segment() {
            return false;
        }
        let pf0 = pf0(self.dsm);
        let routing = rid.routing_id();
        // Same bus and device number (routing ID bits 15:3): one of the eight PFs.
        if routing >> 3 == pf0 >> 3 {
            return true;
        }
        let Some(v) = self.vfs else {
            return false;
        };
        let Some(first) = pf0.checked_add(v.first_offset) else {
            return false;
        };
        let Some(distance) = routing.checked_sub(first) else {
            return false;
        };
        // `new` refused a zero stride, so checked_* only guards the lint.
        distance.checked_rem(v.stride) == Some(0)
            && distance.checked_div(v.stride).is_some_and(|n| n < v.count)
    }

    /// Every function's requester ID: the PFs, then the VFs in order.
    pub fn iter(&self) -> impl Iterator<Item = RequesterId> + '_ {
        let segment = self.dsm.segment();
        let pf0 = pf0(self.dsm);
        let pfs = (0..u16::from(PCI_FUNCTIONS_PER_DEVICE)).filter_map(move |f| pf0.checked_add(f));
        let vfs = self.vfs.into_iter().flat_map(move |v| {
            (0..v.count).filter_map(move |n| {
                n.checked_mul(v.stride)
                    .and_then(|d| d.checked_add(v.first_offset))
                    .and_then(|d| pf0.checked_add(d))
            })
        });
        pfs.chain(vfs)
            .map(move |routing| RequesterId::from_routing(segment, routing))
    }

    /// Whether the two devices share a requester ID.
    pub fn intersects(&self, other: &DeviceFunctions) -> bool {
        self.iter().any(|rid| other.contains(rid))
    }
}

/// Most functions one device has: its eight PFs and up to [`MAX_VFS`] VFs.
pub const MAX_FUNCTIONS: usize = PCI_FUNCTIONS_PER_DEVICE as usize + MAX_VFS as usize;

impl DeviceFunctions {
    /// The position of `rid` among the device's functions (PFs 0-7, then VFs in order), or
    /// `None` if it is not one of them; below [`MAX_FUNCTIONS`].
    pub fn index(&self, rid: RequesterId) -> Option<usize> {
        if !self.contains(rid) {
            return None;
        }
        let pf0 = pf0(self.dsm);
        let routing = rid.routing_id();
        if routing >> 3 == pf0 >> 3 {
            return Some(usize::from(routing.checked_sub(pf0)?));
        }
        let v = self.vfs?;
        let n = routing
            .checked_sub(pf0.checked_add(v.first_offset)?)?
            .checked_div(v.stride)?;
        usize::from(n).checked_add(usize::from(PCI_FUNCTIONS_PER_DEVICE))
    }
}

/// A set of a device's functions, by [`DeviceFunctions::index`]: fixed size, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FunctionSet([u64; MAX_FUNCTIONS.div_ceil(64)]);

impl FunctionSet {
    /// Adds function `index` (an index past [`MAX_FUNCTIONS`] is ignored: none exists).
    pub fn insert(&mut self, index: usize) {
        if let Some(word) = self.0.get_mut(index / 64) {
            *word |= 1 << (index % 64);
        }
    }

    /// Whether function `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Removes function `index`.
    pub fn remove(&mut self, index: usize) {
        if let Some(word) = self.0.get_mut(index / 64) {
            *word &= !(1 << (index % 64));
        }
    }
}

/// Routing ID of function 0 of `rid`'s device number (function number: bits 2:0).
const fn pf0(rid: RequesterId) -> u16 {
    rid.routing_id() & !0x7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(bus: u8, dev: u8, func: u8) -> RequesterId {
        RequesterId::try_new(0, bus, dev, func).unwrap()
    }

    #[test]
    fn physical_functions_are_the_eight_of_the_device_number() {
        let f = DeviceFunctions::physical(rid(3, 0, 0));
        for func in 0..8 {
            assert!(f.contains(rid(3, 0, func)));
        }
        assert!(!f.contains(rid(3, 1, 0)));
        assert!(!f.contains(rid(4, 0, 0)));
        assert!(!f.contains(RequesterId::try_new(1, 3, 0, 0).unwrap()));
        assert_eq!(f.iter().count(), 8);
        // A DSM on another function of the same device names the same eight functions.
        let g = DeviceFunctions::physical(rid(3, 0, 2));
        assert!(g.iter().eq(f.iter()) && f.intersects(&g));
    }

    #[test]
    fn vfs_follow_offset_and_stride() {
        let vfs = VfLayout {
            first_offset: 0x80,
            stride: 2,
            count: 4,
        };
        let f = DeviceFunctions::new(rid(3, 0, 0), Some(vfs)).unwrap();
        // 03:00.0 is routing 0x0300; VFs at 0x0380, 0x0382, 0x0384, 0x0386.
        let vf = |r: u16| RequesterId::from_routing(0, r);
        assert!(f.contains(vf(0x0380)) && f.contains(vf(0x0386)));
        assert!(!f.contains(vf(0x0381)) && !f.contains(vf(0x0388)));
        assert_eq!(f.iter().count(), 12);
        assert!(f.iter().all(|r| f.contains(r)));
        // Device 17 (0x0388..) sits past those VFs and shares no ID; device 16 (0x0380..) does.
        let other = DeviceFunctions::physical(rid(3, 17, 0));
        assert!(!f.intersects(&other) && !other.intersects(&f));
        let clash = DeviceFunctions::physical(rid(3, 16, 0));
        assert!(f.intersects(&clash) && clash.intersects(&f));
    }

    #[test]
    fn every_function_has_its_own_index() {
        let vfs = VfLayout {
            first_offset: 0x80,
            stride: 2,
            count: MAX_VFS,
        };
        let f = DeviceFunctions::new(rid(3, 0, 0), Some(vfs)).unwrap();
        let mut seen = std::vec::Vec::new();
        for r in f.iter() {
            let i = f.index(r).unwrap();
            assert!(i < MAX_FUNCTIONS && !seen.contains(&i), "{r:?} -> {i}");
            seen.push(i);
        }
        assert_eq!(seen.len(), MAX_FUNCTIONS);
        assert_eq!(f.index(RequesterId::from_routing(0, 0x0381)), None);
        let mut set = FunctionSet::default();
        set.insert(MAX_FUNCTIONS - 1);
        set.insert(MAX_FUNCTIONS + 64);
        assert!(set.contains(MAX_FUNCTIONS - 1) && !set.contains(MAX_FUNCTIONS + 64));
        set.remove(MAX_FUNCTIONS - 1);
        assert_eq!(set, FunctionSet::default());
    }

    #[test]
    fn bad_layouts_are_refused() {
        let pf = rid(0xff, 0, 0);
        let bad = [
            VfLayout {
                first_offset: 0,
                stride: 1,
                count: 1,
            },
            VfLayout {
                first_offset: 7,
                stride: 1,
                count: 1,
            },
            VfLayout {
                first_offset: 1,
                stride: 0,
                count: 1,
            },
            VfLayout {
                first_offset: 1,
                stride: 1,
                count: 0,
            },
            VfLayout {
                first_offset: 1,
                stride: 1,
                count: MAX_VFS + 1,
            },
            VfLayout {
                first_offset: 0x100,
                stride: 1,
                count: 1,
            },
            VfLayout {
                first_offset: 0xff,
                stride: 0xffff,
                count: 2,
            },
        ];
        for v in bad {
            assert_eq!(
                DeviceFunctions::new(pf, Some(v)),
                Err(Error::InvalidRequesterId),
                "{v:?}"
            );
        }
    }
}
