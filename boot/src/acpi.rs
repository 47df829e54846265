//! Just enough ACPI to list the CPUs: RSDP -> RSDT/XSDT -> MADT local-APIC entries.

/// APIC IDs of the enabled CPUs, at most `N`.
pub struct CpuList<const N: usize> {
    ids: [u32; N],
    len: usize,
}

impl<const N: usize> CpuList<N> {
    /// The APIC IDs.
    pub fn ids(&self) -> &[u32] {
        self.ids.get(..self.len).unwrap_or(&[])
    }
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside ACPI tables the firmware placed in RAM below 4 GiB
    // (identity mapped); the reads are unaligned-safe and have no side effects.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Finds the MADT from the RSDP at `rsdp` and lists enabled local APICs; `None` if anything is
/// missing or malformed.
pub fn cpus<const N: usize>(rsdp: u64) -> Option<CpuList<N>> {
    if rsdp == 0 || rsdp >= crate::frames::IDENTITY_MAP_END || read::<[u8; 8]>(rsdp) != *b"RSD PTR "
    {
        return None;
    }
    let revision: u8 = read(rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read::<u64>(rsdp + 24) != 0 {
        (read::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(read::<u32>(rsdp + 16)), 4)
    };
    let madt = table_entries(root)?
        .step_by(entry_size)
        .map(|at| {
            if entry_size == 8 {
                read::<u64>(at)
            } else {
                u64::from(read::<u32>(at))
            }
        })
        .find(|&t| {
            t != 0 && t < crate::frames::IDENTITY_MAP_END && read::<[u8; 4]>(t) == *b"APIC"
        })?;

    let mut list = CpuList {
        ids: [0; N],
        len: 0,
    };
    let end = madt + u64::from(read::<u32>(madt + 4));
    let mut at = madt + 44; // header (36) + local APIC address (4) + flags (4)
    while at + 2 <= end {
        let kind: u8 = read(at);
        let len: u8 = read(at + 1);
        if len < 2 {
            return None;
        }
        // Type 0: processor local APIC; flags bit 0 = enabled, bit 1 = online capable.
        if kind == 0 && read::<u32>(at + 4) & 0b11 != 0 {
            let id = u32::from(read::<u8>(at + 3));
            if let Some(slot) = list.ids.get_mut(list.len) {
                *slot = id;
                list.len += 1;
            }
        }
        at += u64::from(len);
    }
    Some(list)
}

/// Addresses of a table's body (after the 36-byte header), as a range.
fn table_entries(table: u64) -> Option<core::ops::Range<u64>> {
    if table == 0 || table >= crate::frames::IDENTITY_MAP_END {
        return None;
    }
    let len = u64::from(read::<u32>(table + 4));
    (len >= 36).then(|| table + 36..table + len)
}
