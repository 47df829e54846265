//! The PVH `hvm_start_info` handed over in EBX: memory map, command line and ACPI RSDP.
//! Everything is copied out at boot, so the loader's memory is never referenced afterwards.

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// Memory-map entry type for usable RAM.
pub const RAM: u32 = 1;
const MAX_REGIONS: usize = 32;
const MAX_CMDLINE: usize = 256;

/// `struct hvm_start_info` (Xen public/arch-x86/hvm/start_info.h), version 1.
#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// One memory-map region.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// Physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = usable RAM).
    pub kind: u32,
}

/// What the kernel keeps from the start info.
pub struct BootInfo {
    regions: [Region; MAX_REGIONS],
    nregions: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP (0 if none was given).
    pub rsdp: u64,
}

impl BootInfo {
    /// The memory map.
    pub fn regions(&self) -> &[Region] {
        self.regions.get(..self.nregions).unwrap_or(&[])
    }

    /// The kernel command line (`-append`), empty if absent or not UTF-8.
    pub fn cmdline(&self) -> &str {
        self.cmdline
            .get(..self.cmdline_len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Whether the command line contains the word `word`.
    pub fn has_flag(&self, word: &str) -> bool {
        self.cmdline().split_ascii_whitespace().any(|w| w == word)
    }

    /// The value of a `key=value` word on the command line.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Reads and validates the start info at `paddr`.
///
/// # Safety
/// `paddr` must be the start-info pointer the PVH loader passed, in identity-mapped memory, and
/// the structures it points to must not have been overwritten.
pub unsafe fn parse(paddr: u64) -> Result<BootInfo, &'static str> {
    if paddr == 0 {
        return Err("no start info pointer");
    }
    // SAFETY: the caller guarantees paddr is the loader's start info (phys == virt).
    let si = unsafe { core::ptr::read_unaligned(paddr as *const StartInfo) };
    if si.magic != MAGIC {
        return Err("bad hvm_start_info magic");
    }
    if si.version < 1 {
        return Err("hvm_start_info version 0 has no memory map");
    }
    if si.memmap_paddr == 0 || si.memmap_entries == 0 {
        return Err("empty memory map");
    }
    let mut info = BootInfo {
        regions: [Region {
            addr: 0,
            size: 0,
            kind: 0,
        }; MAX_REGIONS],
        nregions: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp: si.rsdp_paddr,
    };
    let entries = si.memmap_entries as usize;
    if entries > MAX_REGIONS {
        kprintln!("pvh: memory map has {entries} entries, keeping the first {MAX_REGIONS}");
    }
    let base = si.memmap_paddr as *const MemmapEntry;
    for (i, slot) in info.regions.iter_mut().take(entries).enumerate() {
        // SAFETY: the loader reports `entries` contiguous entries at memmap_paddr; i < entries.
        let e = unsafe { core::ptr::read_unaligned(base.wrapping_add(i)) };
        *slot = Region {
            addr: e.addr,
            size: e.size,
            kind: e.kind,
        };
        info.nregions = i + 1;
    }
    if si.cmdline_paddr != 0 {
        let p = si.cmdline_paddr as *const u8;
        for (i, slot) in info.cmdline.iter_mut().enumerate() {
            // SAFETY: the command line is NUL-terminated; we stop at the NUL or our buffer end.
            let byte = unsafe { core::ptr::read_volatile(p.wrapping_add(i)) };
            if byte == 0 {
                break;
            }
            *slot = byte;
            info.cmdline_len = i + 1;
        }
    }
    Ok(info)
}
