//! A host that relays: the firmware and a [`ModelDevice`] side by side, with the firmware's
//! operations driven to their end the way a host kernel drives them (call, relay the request
//! to the DOE mailbox, hand the answer back, repeat). Tests, the scenario shim and the boot
//! use it; no firmware path does. Everything else of the firmware is reached through `Deref`.

use core::ops::Deref;

use spin::Mutex;

use crate::device_model::ModelDevice;
use crate::ids::{GuestId, TdiId};
use crate::lifecycle::{TdiState, TdispState};
use crate::relay::{MAX_RELAY_BYTES, ModelSession, SecureSession};
use crate::reserved::ReservedMemory;
use crate::secure_table::SecureTable;
use crate::status::{Completion, Error, Operand, TsmResult};
use crate::tsm::Tsm;

/// Times a relay step is retried while the firmware reports `Busy` (another CPU holds a lock
/// the answer needs) before the host gives up and leaves the exchange outstanding.
pub const BUSY_RETRIES: u32 = 10_000;

/// Request/answer rounds one operation may take before the host gives up: a bind with a
/// whole report and its undo, every request tried three times, is far below this.
pub const MAX_RELAY_ROUNDS: u32 = 256;

/// A model device several CPUs' hosts relay to.
pub type SharedDevice = Mutex<ModelDevice>;

/// A host relaying for the firmware `fw` to the model device `device`, both borrowed: what a
/// test or the boot uses when the firmware lives elsewhere (inside a platform, in a static).
pub struct RelayHost<'a, T, S, const N: usize = 1> {
    fw: &'a Tsm<T, S, N>,
    device: &'a Mutex<ModelDevice>,
}

/// The firmware's summary; the device is not locked to print it.
impl<T, S, const N: usize> core::fmt::Debug for RelayHost<'_, T, S, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayHost")
            .field("fw", self.fw)
            .finish_non_exhaustive()
    }
}

impl<T, S, const N: usize> Clone for RelayHost<'_, T, S, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, S, const N: usize> Copy for RelayHost<'_, T, S, N> {}

impl<T, S, const N: usize> Deref for RelayHost<'_, T, S, N> {
    type Target = Tsm<T, S, N>;
    fn deref(&self) -> &Self::Target {
        self.fw
    }
}

impl<'a, T: SecureTable, S: SecureSession, const N: usize> RelayHost<'a, T, S, N> {
    /// The host of `fw`, relaying to `device`.
    pub const fn new(fw: &'a Tsm<T, S, N>, device: &'a Mutex<ModelDevice>) -> Self {
        Self { fw, device }
    }

    /// The firmware alone.
    pub fn firmware(&self) -> &'a Tsm<T, S, N> {
        self.fw
    }

    /// Runs `f` on the model device (`Busy(Transport)` while another CPU relays through it).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut ModelDevice) -> R) -> TsmResult<R> {
        let mut device = self
            .device
            .try_lock()
            .ok_or(Error::Busy(Operand::Transport))?;
        Ok(f(&mut device))
    }

    /// Relays from `first` (the outcome of the call that started an operation on `tdi`) until
    /// the operation ends: each `Relay(n)` goes to the device, and its answer (or its silence)
    /// back through `device_response`. Returns the operation's own outcome.
    pub fn relay(
        &self,
        tdi: TdiId,
        first: TsmResult<Completion>,
        buf: &mut [u8; MAX_RELAY_BYTES],
    ) -> TsmResult<Completion> {
        let mut outcome = first;
        for _ in 0..MAX_RELAY_ROUNDS {
            let Ok(Completion::Relay(n)) = outcome else {
                return outcome;
            };
            let mut answer = [0u8; MAX_RELAY_BYTES];
            let request = buf.get(..n).ok_or(Error::Inconsistent)?;
            let len = self.device.lock().answer(request, &mut answer);
            let response = match len {
                Some(k) => Some(answer.get(..k).ok_or(Error::Inconsistent)?),
                None => None,
            };
            outcome = retry_busy(|| self.fw.device_response(tdi, response, buf));
        }
        // An operation that never ends its relay is a firmware bug, not a reason to hang.
        Err(Error::Inconsistent)
    }

    /// [`Tsm::bind`], relayed to its end.
    pub fn bind(&self, tdi: TdiId, guest: GuestId) -> TsmResult<()> {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let first = self.fw.bind(tdi, guest, &mut buf);
        self.relay(tdi, first, &mut buf).map(drop)
    }

    /// A start with the guest's part done here too, for tests that want a running TDI and not
    /// the START gate: on a platform whose guest accepts the TDI's trusted DMA context first
    /// ([`SecureTable::DMA_ACCEPT_BEFORE_START`]), the host creates the context if it has none
    /// ([`Tsm::host_dma_create`]) and then runs the *guest's* accept ([`Tsm::guest_dma_accept`],
    /// which a real host cannot do: the guest's own call) before [`Tsm::guest_start`], relayed
    /// to its end. Those steps are taken only for a TDI locked and bound to `guest` (any other
    /// start is refused as it is, the steps not taken). [`RelayHost::start_only`] is START
    /// alone, refused `DmaNotAccepted` until the guest has accepted.
    pub fn start_with_guest_accept(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let record = self.fw.tdi(tdi);
        let usual = record.is_ok_and(|r| {
            r.state == TdiState::Locked { owner: guest }
                && r.exchange.is_none()
                && r.dma != Some(crate::dma::DmaState::Active)
        });
        if T::DMA_ACCEPT_BEFORE_START && usual {
            if record.is_ok_and(|r| r.dma.is_none()) {
                self.fw.host_dma_create(tdi)?;
            }
            self.fw.guest_dma_accept(guest, tdi)?;
        }
        self.start_only(guest, tdi)
    }

    /// [`Tsm::guest_start`] alone, relayed to its end.
    pub fn start_only(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let first = self.fw.guest_start(guest, tdi, &mut buf);
        self.relay(tdi, first, &mut buf).map(drop)
    }

    /// One call of [`Tsm::unbind`], with its STOP relayed: `Done` or `Resumable`.
    pub fn unbind(&self, tdi: TdiId) -> TsmResult<Completion> {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let first = self.fw.unbind(tdi, &mut buf);
        self.relay(tdi, first, &mut buf)
    }

    /// One call of [`Tsm::check_interface`], its question relayed: `Done` or `Resumable`.
    pub fn check_interface(&self, tdi: TdiId) -> TsmResult<Completion> {
        self.check_interface_state(tdi).map(|(done, _)| done)
    }

    /// [`RelayHost::check_interface`], with the TDISP state it found: the device's answer for
    /// a locked or running TDI; the firmware's own view for one in ERROR or being unbound,
    /// which the device is not asked about.
    pub fn check_interface_state(&self, tdi: TdiId) -> TsmResult<(Completion, TdispState)> {
        let asks = matches!(
            self.fw.tdi(tdi)?.state,
            TdiState::Locked { .. } | TdiState::Run { .. }
        );
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let first = self.fw.check_interface(tdi, &mut buf);
        let done = self.relay(tdi, first, &mut buf)?;
        let record = self.fw.tdi(tdi)?;
        let state = match record.device_state {
            Some(said) if asks => said,
            _ => record.state.tdisp(),
        };
        Ok((done, state))
    }
}

fn retry_busy(mut call: impl FnMut() -> TsmResult<Completion>) -> TsmResult<Completion> {
    let mut outcome = call();
    for _ in 0..BUSY_RETRIES {
        if !matches!(outcome, Err(Error::Busy(_))) {
            break;
        }
        core::hint::spin_loop();
        outcome = call();
    }
    outcome
}

/// The firmware over table `T`, sealed with [`ModelSession`], and the model device its host
/// relays to, owned together.
pub struct Relayed<T, const N: usize = 1> {
    fw: Tsm<T, ModelSession, N>,
    device: Mutex<ModelDevice>,
}

/// The firmware's summary; the device is not locked to print it.
impl<T, const N: usize> core::fmt::Debug for Relayed<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Relayed")
            .field("fw", &self.fw)
            .finish_non_exhaustive()
    }
}

impl<T, const N: usize> Deref for Relayed<T, N> {
    type Target = Tsm<T, ModelSession, N>;
    fn deref(&self) -> &Self::Target {
        &self.fw
    }
}

impl<T: SecureTable> Relayed<T> {
    /// The firmware over `table` and the host's `device`.
    pub const fn new(table: T, device: ModelDevice) -> Self {
        Self::with_reserved(table, device, ReservedMemory::new())
    }

    /// [`Relayed::new`] with memory the firmware reserves.
    pub const fn with_reserved(table: T, device: ModelDevice, reserved: ReservedMemory) -> Self {
        Self {
            fw: Tsm::with_reserved(table, ModelSession::model(), reserved),
            device: Mutex::new(device),
        }
    }
}

impl<T: SecureTable, const N: usize> Relayed<T, N> {
    /// The firmware over `tables`, one shard each, every shard sealing with the model session
    /// ([`Tsm::sharded`]), and the host's `device`.
    pub fn sharded(tables: [T; N], device: ModelDevice) -> Self {
        Self {
            fw: Tsm::sharded(
                tables,
                core::array::from_fn(|_| ModelSession::model()),
                ReservedMemory::new(),
            ),
            device: Mutex::new(device),
        }
    }

    /// The host relaying for this firmware.
    pub fn host(&self) -> RelayHost<'_, T, ModelSession, N> {
        RelayHost::new(&self.fw, &self.device)
    }

    /// The firmware alone.
    pub fn firmware(&self) -> &Tsm<T, ModelSession, N> {
        &self.fw
    }

    /// See [`RelayHost::with_device`].
    pub fn with_device<R>(&self, f: impl FnOnce(&mut ModelDevice) -> R) -> TsmResult<R> {
        self.host().with_device(f)
    }

    /// See [`RelayHost::relay`].
    pub fn relay(
        &self,
        tdi: TdiId,
        first: TsmResult<Completion>,
        buf: &mut [u8; MAX_RELAY_BYTES],
    ) -> TsmResult<Completion> {
        self.host().relay(tdi, first, buf)
    }

    /// See [`RelayHost::bind`].
    pub fn bind(&self, tdi: TdiId, guest: GuestId) -> TsmResult<()> {
        self.host().bind(tdi, guest)
    }

    /// See [`RelayHost::start_with_guest_accept`].
    pub fn start_with_guest_accept(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        self.host().start_with_guest_accept(guest, tdi)
    }

    /// See [`RelayHost::start_only`].
    pub fn start_only(&self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        self.host().start_only(guest, tdi)
    }

    /// See [`RelayHost::unbind`].
    pub fn unbind(&self, tdi: TdiId) -> TsmResult<Completion> {
        self.host().unbind(tdi)
    }

    /// See [`RelayHost::check_interface`].
    pub fn check_interface(&self, tdi: TdiId) -> TsmResult<Completion> {
        self.host().check_interface(tdi)
    }

    /// See [`RelayHost::check_interface_state`].
    pub fn check_interface_state(&self, tdi: TdiId) -> TsmResult<(Completion, TdispState)> {
        self.host().check_interface_state(tdi)
    }
}
