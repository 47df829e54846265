//! System memory as the firmware reaches it: the pages a command names by physical address
//! (status pages, guest message pages, report output). The firmware reads and writes them only
//! through this trait, so a bad address is a status, never a fault.
//!
//! A command that answers in memory probes its output first ([`SystemMemory::probe_write`]),
//! before it changes anything: once the probe passed, the answer can always be delivered.

/// Why a memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFault {
    /// The address (or the span) is not memory the firmware may touch.
    OutOfRange,
    /// The memory is there but the firmware may not write it.
    ReadOnly,
}

/// Byte access to system physical memory: the host's pages only. An implementation must refuse
/// (`OutOfRange`) every byte the firmware keeps for itself (the RMP table, its image and
/// private state) and every page the RMP assigns to a guest, so that no command can be pointed
/// at them as its input or output.
pub trait SystemMemory {
    /// Copies `out.len()` bytes from `spa`.
    fn read(&self, spa: u64, out: &mut [u8]) -> Result<(), MemoryFault>;
    /// Copies `data` to `spa`.
    fn write(&mut self, spa: u64, data: &[u8]) -> Result<(), MemoryFault>;
    /// Whether `len` bytes at `spa` are mapped and writable, without writing them. `Ok` is a
    /// promise: a [`SystemMemory::write`] of at most `len` bytes at `spa` succeeds as long as
    /// nothing else uses this memory in between (the firmware holds it for the whole command).
    fn probe_write(&self, spa: u64, len: usize) -> Result<(), MemoryFault>;
}

/// Bytes in one page.
const PAGE: usize = 4096;

/// `N` 4K pages of memory at physical address `base`, for tests and the host shim. No heap.
/// A page can be made read-only (as a host would map a page the firmware may not write).
#[derive(Clone)]
pub struct PageMemory<const N: usize> {
    base: u64,
    pages: [[u8; PAGE]; N],
    read_only: [bool; N],
}

/// Where the pages are and how many are read-only, not their bytes.
impl<const N: usize> core::fmt::Debug for PageMemory<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageMemory")
            .field("base", &format_args!("{:#x}", self.base))
            .field("pages", &N)
            .field("read_only", &self.read_only.iter().filter(|&&r| r).count())
            .finish()
    }
}

impl<const N: usize> PageMemory<N> {
    /// Zeroed, writable pages starting at `base`.
    pub const fn new(base: u64) -> Self {
        Self {
            base,
            pages: [[0; PAGE]; N],
            read_only: [false; N],
        }
    }

    /// Makes page `i` read-only (or writable again); an index past the pages does nothing.
    pub fn set_read_only(&mut self, i: usize, read_only: bool) {
        if let Some(ro) = self.read_only.get_mut(i) {
            *ro = read_only;
        }
    }

    /// Physical address of page `i` (wrapping is impossible for the few pages tests use).
    pub const fn page(&self, i: u64) -> u64 {
        self.base.saturating_add(i.saturating_mul(PAGE as u64))
    }

    fn span(&self, spa: u64, len: usize) -> Option<(usize, usize)> {
        let off = usize::try_from(spa.checked_sub(self.base)?).ok()?;
        let page = off / PAGE;
        let within = off % PAGE;
        // Accesses never cross a page: every structure we exchange fits in one.
        (within.checked_add(len)? <= PAGE && page < N).then_some((page, within))
    }
}

impl<const N: usize> SystemMemory for PageMemory<N> {
    fn read(&self, spa: u64, out: &mut [u8]) -> Result<(), MemoryFault> {
        let (page, at) = self.span(spa, out.len()).ok_or(MemoryFault::OutOfRange)?;
        let src = self
            .pages
            .get(page)
            .and_then(|p| p.get(at..at.saturating_add(out.len())))
            .ok_or(MemoryFault::OutOfRange)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, spa: u64, data: &[u8]) -> Result<(), MemoryFault> {
        self.probe_write(spa, data.len())?;
        let (page, at) = self.span(spa, data.len()).ok_or(MemoryFault::OutOfRange)?;
        let dst = self
            .pages
            .get_mut(page)
            .and_then(|p| p.get_mut(at..at.saturating_add(data.len())))
            .ok_or(MemoryFault::OutOfRange)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn probe_write(&self, spa: u64, len: usize) -> Result<(), MemoryFault> {
        let (page, _) = self.span(spa, len).ok_or(MemoryFault::OutOfRange)?;
        match self.read_only.get(page) {
            Some(false) => Ok(()),
            Some(true) => Err(MemoryFault::ReadOnly),
            None => Err(MemoryFault::OutOfRange),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_statuses() {
        let mut m = PageMemory::<2>::new(0x1000);
        assert_eq!(m.write(0x1ffe, &[1, 2]), Ok(()));
        assert_eq!(m.write(0x1fff, &[1, 2]), Err(MemoryFault::OutOfRange));
        assert_eq!(m.write(0xfff, &[1]), Err(MemoryFault::OutOfRange));
        assert_eq!(m.write(0x3000, &[1]), Err(MemoryFault::OutOfRange));
        let mut b = [0; 2];
        assert_eq!(m.read(0x1ffe, &mut b), Ok(()));
        assert_eq!(b, [1, 2]);
        assert_eq!(m.read(u64::MAX, &mut b), Err(MemoryFault::OutOfRange));
        // A read-only page reads, refuses writes and write probes, and stays as it was.
        m.set_read_only(0, true);
        assert_eq!(m.probe_write(0x1ffe, 2), Err(MemoryFault::ReadOnly));
        assert_eq!(m.write(0x1ffe, &[3, 4]), Err(MemoryFault::ReadOnly));
        assert_eq!(m.read(0x1ffe, &mut b), Ok(()));
        assert_eq!(b, [1, 2]);
        assert_eq!(m.probe_write(0x2000, 4096), Ok(()));
        assert_eq!(m.probe_write(0x2001, 4096), Err(MemoryFault::OutOfRange));
    }
}
