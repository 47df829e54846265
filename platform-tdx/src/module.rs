//! The firmware object of the TDX back end: the core's [`Tsm`] over the S-EPT and the
//! platform's SPDM session, and what only the TDX ABI keeps beside it: each TDI's two message
//! pages (the TDX module keeps them in the DEVIF's control structure).
//!
//! The firmware never talks to a device. A leaf that needs the device writes the request (a
//! whole DOE object) to the TDI's request page and answers `TDX_SPDM_REQUEST`; the host
//! relays it to the device's DOE mailbox, puts the answer in the TDI's response page and calls
//! TDH.DEVIF.RESPONSE (README, "The relay"). The session seals every request and opens every
//! answer: tests and the C prototype use [`tsm_core::ModelSession`]; a real platform plugs in
//! the SPDM session it established with the device (TDH.SPDM.CONNECT).

use core::ops::Deref;

use spin::{Mutex, MutexGuard};
use tsm_core::capacity::MAX_TDIS;
use tsm_core::{Error, Hpa, Operand, ReservedMemory, SecureSession, TdiId, Tsm, TsmResult};

use crate::sept::Sept;

/// Bytes of a message page: one 4 KiB page (TDX: every page operand is one), large enough for
/// any request or response the firmware exchanges (`tsm_core::MAX_RELAY_BYTES`).
pub const MESSAGE_PAGE_BYTES: usize = 4096;

/// The host pages a TDI's requests and answers travel in, as TDH.DEVIF.CREATE named them:
/// 4 KiB aligned host physical addresses inside host memory. Host memory, not the firmware's:
/// the host reads and writes them at will, so the firmware writes a request there only after
/// it is sealed, and reads an answer once into its own memory before looking at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePages {
    /// Module to host: the firmware writes each request here (Linux's `out_msg`).
    pub request: Hpa,
    /// Host to module: the host writes the device's answer here (Linux's `in_msg`).
    pub response: Hpa,
}

/// Every TDI's message pages, indexed by TDI slot.
pub(crate) type PageTable = [Option<MessagePages>; MAX_TDIS];

/// The TDX back end's firmware: the core over the S-EPT, sealed with session `S`, and each
/// TDI's message pages. Everything of the core is reached through `Deref`; the dispatcher
/// ([`crate::abi::Dispatcher`]) is the only writer of the message pages.
pub struct TdxModule<'m, S> {
    tsm: Tsm<Sept<'m>, S>,
    /// Taken (try-lock, after nothing) by every leaf that creates or removes a TDI or may
    /// leave a request in its request page, and held for the whole leaf, so a TDI's pages
    /// cannot change under a request being written. Those leaves all take the core's transport
    /// lock too, so this lock serialises nothing the core does not already.
    pages: Mutex<PageTable>,
}

impl<'m, S> Deref for TdxModule<'m, S> {
    type Target = Tsm<Sept<'m>, S>;
    fn deref(&self) -> &Self::Target {
        &self.tsm
    }
}

impl<'m, S: SecureSession> TdxModule<'m, S> {
    /// The firmware over `table`, sealing with `session`, reserving no memory (tests).
    pub const fn new(table: Sept<'m>, session: S) -> Self {
        Self::with_reserved(table, session, ReservedMemory::new())
    }

    /// The firmware over `table`, sealing with `session`, refusing `reserved` as MMIO.
    pub const fn with_reserved(table: Sept<'m>, session: S, reserved: ReservedMemory) -> Self {
        Self {
            tsm: Tsm::with_reserved(table, session, reserved),
            pages: Mutex::new([const { None }; MAX_TDIS]),
        }
    }

    /// The core.
    pub fn tsm(&self) -> &Tsm<Sept<'m>, S> {
        &self.tsm
    }

    /// `tdi`'s message pages (`None`: no TDI TDH.DEVIF.CREATE made has that handle);
    /// `Busy(Tdi)` while a leaf holds the table.
    pub fn message_pages(&self, tdi: TdiId) -> TsmResult<Option<MessagePages>> {
        let table = self.lock_pages()?;
        Ok(table.get(usize::from(tdi.slot())).copied().flatten())
    }

    /// The message-page table, for one leaf; `Busy(Tdi)` (OPERAND_BUSY on the DEVIF) while
    /// another CPU's leaf holds it.
    pub(crate) fn lock_pages(&self) -> TsmResult<MutexGuard<'_, PageTable>> {
        self.pages.try_lock().ok_or(Error::Busy(Operand::Tdi))
    }
}
