//! Table capacities. Every table is fixed-size; running out is a status, never a panic.

/// Physical devices the firmware tracks.
pub const MAX_DEVICES: usize = 32;
/// TDIs across all devices.
pub const MAX_TDIS: usize = 128;
/// TDIs of one device (functions and VFs bound through one DSM).
pub const MAX_TDIS_PER_DEVICE: usize = 16;
/// Confidential guests.
pub const MAX_GUESTS: usize = 32;
/// BARs of one device: a type 0 function header has six (PCIe 6.x 7.5.1.2.1).
pub const MAX_BARS: usize = 6;
/// MMIO ranges one interface report may list.
pub const MAX_RANGES_PER_TDI: usize = 16;
/// MMIO ranges owned by all bound TDIs together.
pub const MAX_OWNED_RANGES: usize = 256;
/// Leaf blocks or removals one unbind (or device-error) call performs before it returns
/// `Resumable`, so no host call holds a CPU in firmware for long.
pub const UNBIND_OPS_PER_CALL: u32 = 64;
/// Ranges of memory the firmware reserves at init (its pool and image, the platform's system
/// memory map): a typical TDX CMR list or e820 map has a few dozen entries.
pub const MAX_RESERVED_RANGES: usize = 64;
