//! The records the firmware keeps, and the fixed slot tables that hold them, each slot behind
//! its own try-lock.

use crossbeam_utils::CachePadded;
use spin::{Mutex, MutexGuard};

use crate::capacity::{MAX_BARS, MAX_TDIS_PER_DEVICE};
use crate::dma::DmaState;
use crate::exchange::Exchange;
use crate::functions::{DeviceFunctions, FunctionSet};
use crate::ids::{DeviceId, TdiId};
use crate::lifecycle::{TdiState, TdispState};
use crate::mmio::MmioRange;
use crate::relay::REPORT_DIGEST_SIZE;
use crate::status::{Error, Operand};
use crate::tdisp::NONCE_SIZE;
use crate::tdisp::report::ReportAssembler;
use crate::transport::InterfaceId;

/// The memory BARs of one device.
pub type Bars = heapless::Vec<MmioRange, MAX_BARS>;

/// A physical device: its functions, its BARs, and the TDIs created on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The DSM's requester ID and the device's other functions (PFs, VFs).
    pub functions: DeviceFunctions,
    /// The device's memory BARs, as the host reported them at creation.
    pub bars: Bars,
    /// Whether the host listed the BARs at all (false: registered without a list,
    /// [`crate::Tsm::create_device_unlisted`]; its reports are checked without BARs).
    pub bars_listed: bool,
    /// TDIs on this device and their interface IDs.
    pub tdis: heapless::Vec<(TdiId, InterfaceId), MAX_TDIS_PER_DEVICE>,
    /// The root port's end of the device's IDE stream.
    pub stream: IdeStream,
    /// The report a bind is reading (one bind per device reads at a time).
    pub report_read: Option<ReportRead>,
    /// Interfaces whose removed TDI may have left them locked on the device (its
    /// `unlock_first`): a TDI created again for one inherits it, so its first bind sends STOP.
    pub maybe_locked: FunctionSet,
}

/// The root port's end of a device's IDE stream, which the firmware controls on its own side
/// of the link. A forced unbind cuts it: from then on the root port drops the device's TEE
/// (IDE, T-bit) traffic, so the device can reach neither a guest's private memory nor a
/// guest's private MMIO mappings, whatever it does. Only the host's stream set-up
/// ([`crate::Tsm::setup_stream`]) makes it live again, and no TDI of the device can be bound
/// while it is cut (`StreamCut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdeStream {
    /// Keys programmed, TEE traffic flows (the state a device is created in).
    #[default]
    Live,
    /// Cut by a forced unbind: the root port refuses the device's TEE traffic.
    Cut,
}

/// A TDI: the device it belongs to, its interface ID, its state, and its exchange with the
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tdi {
    /// The device the interface belongs to.
    pub device: DeviceId,
    /// The TDISP interface ID (the function's requester ID).
    pub iface: InterfaceId,
    /// Lifecycle state.
    pub state: TdiState,
    /// The request outstanding with the device, if any (at most one).
    pub exchange: Option<Exchange>,
    /// The interface may be left locked on the device (a bind failed or was abandoned after
    /// LOCK, or a forced unbind cut the stream): the next bind sends STOP_INTERFACE first.
    pub unlock_first: bool,
    /// What the device said at the last completed check (GET_DEVICE_INTERFACE_STATE).
    pub device_state: Option<TdispState>,
    /// START_INTERFACE_NONCE of the device's last LOCK_INTERFACE_RESPONSE, while locked.
    pub nonce: Option<[u8; NONCE_SIZE]>,
    /// MMIO_REPORTING_OFFSET of the device's last LOCK_INTERFACE_RESPONSE, while locked: the
    /// report was parsed with it, and a guest's accept is checked against it.
    pub mmio_offset: Option<u64>,
    /// The session's digest of the report the bind took, while bound (the guest reads it).
    pub report_digest: Option<[u8; REPORT_DIGEST_SIZE]>,
    /// The TDI's trusted DMA context ([`crate::dma`]): created by the host while bound,
    /// accepted by the owner, torn down by unbind before the ranges go back.
    pub dma: Option<DmaState>,
}

impl Tdi {
    /// Forgets what the last LOCK gave: nonce, reporting offset, report digest (the interface
    /// is unlocked, or may be).
    pub fn forget_lock(&mut self) {
        self.nonce = None;
        self.mmio_offset = None;
        self.report_digest = None;
    }

    /// A fresh TDI of `device` for `iface`: unbound, nothing outstanding.
    pub const fn new(device: DeviceId, iface: InterfaceId) -> Self {
        Self {
            device,
            iface,
            state: TdiState::Unbound,
            exchange: None,
            unlock_first: false,
            device_state: None,
            nonce: None,
            mmio_offset: None,
            report_digest: None,
            dma: None,
        }
    }
}

/// The device's one interface report being read: by which TDI's bind, and the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRead {
    /// The TDI whose bind reads it.
    pub tdi: TdiId,
    /// The portions received.
    pub report: ReportAssembler,
}

/// What the device table keeps of every device so a new one can be checked against all of
/// them under one lock: no shared requester ID, no shared BAR page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClaim {
    /// The device's functions.
    pub functions: DeviceFunctions,
    /// The device's BARs.
    pub bars: Bars,
}

/// A confidential guest as the device-assignment firmware needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestRecord {
    /// TDIs bound to the guest; it cannot be destroyed while this is non-zero.
    pub bound_tdis: u16,
    /// Which guest this is of every guest the firmware created: a handle names a slot, and a
    /// slot is reused, so a bind started for a guest checks at its end that its slot still
    /// holds that guest.
    pub serial: u64,
}

/// `N` slots of records `R`, each behind its own try-lock, each lock on cache lines of its own:
/// CPUs working on different slots never write a line the other reads.
pub struct Slots<R, const N: usize> {
    slots: [CachePadded<Mutex<Option<R>>>; N],
    operand: Operand,
}

/// The capacity and operand, not the records: it takes no lock.
impl<R, const N: usize> core::fmt::Debug for Slots<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slots")
            .field("capacity", &N)
            .field("operand", &self.operand)
            .finish_non_exhaustive()
    }
}

/// A locked slot.
pub type SlotGuard<'a, R> = MutexGuard<'a, Option<R>>;

/// Try-locks `m`, or names `operand` as busy. Never spins: the host may hold a lock forever.
pub fn try_lock<X>(m: &Mutex<X>, operand: Operand) -> Result<MutexGuard<'_, X>, Error> {
    m.try_lock().ok_or(Error::Busy(operand))
}

impl<R, const N: usize> Slots<R, N> {
    /// Empty slots whose contention reports `operand`.
    pub const fn new(operand: Operand) -> Self {
        Self {
            slots: [const { CachePadded::new(Mutex::new(None)) }; N],
            operand,
        }
    }

    /// Locks slot `slot`, empty or not. `InvalidHandle` past the table.
    pub fn lock(&self, slot: u16) -> Result<SlotGuard<'_, R>, Error> {
        let m = self
            .slots
            .get(usize::from(slot))
            .ok_or(Error::InvalidHandle)?;
        try_lock(m, self.operand)
    }

    /// Stores `record` in the first free slot; `full` if none is free. Slots locked by another
    /// CPU are skipped; if no free one was found among the rest, that is `Busy`, not `full`.
    pub fn insert(&self, record: R, full: Error) -> Result<u16, Error> {
        let mut skipped = false;
        for (i, m) in self.slots.iter().enumerate() {
            let Some(mut slot) = m.try_lock() else {
                skipped = true;
                continue;
            };
            if slot.is_none() {
                let handle = u16::try_from(i).map_err(|_| full)?;
                *slot = Some(record);
                return Ok(handle);
            }
        }
        Err(if skipped {
            Error::Busy(self.operand)
        } else {
            full
        })
    }

    /// A copy of every slot (for snapshots); `Busy` if any slot is locked.
    pub fn copy_all(&self) -> Result<[Option<R>; N], Error>
    where
        R: Clone,
    {
        let mut out: [Option<R>; N] = [const { None }; N];
        for (dst, m) in out.iter_mut().zip(self.slots.iter()) {
            dst.clone_from(&*try_lock(m, self.operand)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_report_full_and_busy() {
        let s: Slots<u8, 2> = Slots::new(Operand::Guest);
        assert_eq!(s.insert(1, Error::GuestTableFull), Ok(0));
        assert_eq!(s.insert(2, Error::GuestTableFull), Ok(1));
        assert_eq!(
            s.insert(3, Error::GuestTableFull),
            Err(Error::GuestTableFull)
        );
        assert_eq!(s.lock(2).err(), Some(Error::InvalidHandle));
        let held = s.lock(0);
        assert!(held.is_ok());
        assert_eq!(s.lock(0).err(), Some(Error::Busy(Operand::Guest)));
        if let Ok(mut one) = s.lock(1) {
            *one = None;
        }
        drop(held);
        let held = s.lock(1);
        assert_eq!(
            s.insert(4, Error::GuestTableFull),
            Err(Error::Busy(Operand::Guest))
        );
        drop(held);
        assert_eq!(s.insert(4, Error::GuestTableFull), Ok(1));
    }
}
