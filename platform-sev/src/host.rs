//! The host's side of the relay, as the Linux SEV-TIO driver does it (sev-linux-buffers.md
//! section 3: AMDESE/linux-kvm @16f379f5 `sev_tio_do_cmd`, `sev_tio_continue`, `sev-dev-tsm.c`
//! `sev_tio_spdm_cmd`): a command that answers `SPDM_REQUEST` has its request relayed to the
//! device's DOE mailbox, the answer put in `spdm_ctrl.resp`, and the written-back command issued
//! again, until it answers anything else. Tests, the scenario backend and the boot use it; no
//! firmware path does. No heap.
//!
//! One difference from Linux, which is the convention this firmware defines: when the mailbox
//! gives no answer, Linux ends the loop (`pci_doe` < 0: break) and leaves the exchange
//! outstanding; [`run`] instead reissues with an empty response (data object length 0x10),
//! which the firmware counts as "no answer" (`MAX_ATTEMPTS` of them end the operation
//! `DeviceUnresponsive`).

use tsm_core::SecureSession;
use tsm_core::device_model::ModelDevice;
use tsm_core::relay::{MAX_RELAY_BYTES, doe};
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    self, DOBJ_DATA_TYPE_SECURE_SPDM, DOBJ_DATA_TYPE_SPDM, DOBJ_ID_RESP, DOBJ_OFFSET, DOBJ_VERSION,
    DobjHdr, SPDM_CTRL_OFFSET, SPDM_PAYLOAD_OFFSET, SlaBufferHdr, SpdmCtrl,
};
use crate::fw::Sev;
use crate::memory::{MemoryFault, SystemMemory};
use crate::relay::WINDOW;
use crate::rmp::RmpMemory;
use crate::status::{Outcome, SevStatus};

/// Rounds a host drives one command through before it gives up and returns the last outcome
/// (`SPDM_REQUEST`): a bind of the largest report takes about a dozen, each unanswered round
/// is retried at most `MAX_ATTEMPTS` times.
pub const MAX_ROUNDS: usize = 64;

/// A model device a host shares between threads (a host relaying for several CPUs at once,
/// tsm-core's `RelayHost`).
pub type SharedDevice = spin::Mutex<ModelDevice>;

/// A device's DOE mailbox: a whole data object in, a whole data object out (or none).
pub trait Mailbox {
    /// The device's answer to `request` in `response`, its length; `None`: no answer.
    fn exchange(&mut self, request: &[u8], response: &mut [u8]) -> Option<usize>;
}

impl Mailbox for ModelDevice {
    fn exchange(&mut self, request: &[u8], response: &mut [u8]) -> Option<usize> {
        self.answer(request, response)
    }
}

/// Offset of `dobj.length` in an SLA buffer.
const DOBJ_LENGTH: u64 = DOBJ_OFFSET as u64 + 4;
/// Offset of `dobj.data_type` in an SLA buffer.
const DOBJ_DATA_TYPE: u64 = DOBJ_OFFSET as u64 + 0x0A;
/// Offset of `sla_buffer_hdr.payload_sz`.
const PAYLOAD_SZ: u64 = 4;

fn at(base: u64, off: u64) -> u64 {
    base.saturating_add(off)
}

/// What Linux writes into a response buffer it allocates (`sla_alloc`: `capacity_sz`) and
/// then at DEV_CONNECT (`dobj_response_init`: id RESP, version 1.0, length 0, `payload_sz`
/// 0x10): a response buffer that holds no answer yet.
pub fn response_init(mem: &mut dyn SystemMemory, resp: u64) -> Result<(), MemoryFault> {
    let hdr = SlaBufferHdr {
        capacity_sz: u32::try_from(abi::PAGE_4K).unwrap_or(0).into(),
        payload_sz: 0x10.into(),
        ..SlaBufferHdr::default()
    };
    let dobj = DobjHdr {
        id: DOBJ_ID_RESP.into(),
        length: 0.into(),
        version_minor: DOBJ_VERSION.0,
        version_major: DOBJ_VERSION.1,
        data_type: 0,
        reserved: [0; 5],
    };
    mem.write(resp, hdr.as_bytes())?;
    mem.write(at(resp, DOBJ_OFFSET as u64), dobj.as_bytes())
}

/// The request in the request buffer as Linux takes it: the DOE data object type
/// (`dobj.data_type`, 1 or 2, else `None`) and the `dobj.length - 0x10` bytes at 0x50, copied
/// to `out`.
pub fn read_request(mem: &dyn SystemMemory, req: u64, out: &mut [u8]) -> Option<(u8, usize)> {
    let mut dobj = DobjHdr::default();
    mem.read(at(req, DOBJ_OFFSET as u64), dobj.as_mut_bytes())
        .ok()?;
    let t = dobj.data_type;
    if t != DOBJ_DATA_TYPE_SPDM && t != DOBJ_DATA_TYPE_SECURE_SPDM {
        return None;
    }
    let len = usize::try_from(dobj.length.get())
        .ok()?
        .checked_sub(core::mem::size_of::<DobjHdr>())?;
    mem.read(at(req, SPDM_PAYLOAD_OFFSET as u64), out.get_mut(..len)?)
        .ok()?;
    Some((t, len))
}

/// Writes the device's DOE payload (`Some`) as Linux does after `pci_doe` returned `n` bytes:
/// the bytes at 0x50, `dobj.length` and `payload_sz` = `ALIGN(0x10 + n, 32)`, `data_type`;
/// nothing else is touched (what the page held past the answer stays). `None`: no answer,
/// `dobj.length` and `payload_sz` 0x10 (this firmware's convention, see the module).
pub fn write_response(
    mem: &mut dyn SystemMemory,
    resp: u64,
    data_type: u8,
    payload: Option<&[u8]>,
) -> Result<(), MemoryFault> {
    let hdr = core::mem::size_of::<DobjHdr>();
    let length = match payload {
        Some(bytes) => {
            mem.write(at(resp, SPDM_PAYLOAD_OFFSET as u64), bytes)?;
            hdr.checked_add(bytes.len())
                .and_then(|n| n.checked_next_multiple_of(abi::SLA_PAYLOAD_ALIGN))
                .ok_or(MemoryFault::OutOfRange)?
        }
        None => hdr,
    };
    let length = u32::try_from(length).map_err(|_| MemoryFault::OutOfRange)?;
    mem.write(at(resp, DOBJ_LENGTH), &length.to_le_bytes())?;
    mem.write(at(resp, PAYLOAD_SZ), &length.to_le_bytes())?;
    mem.write(at(resp, DOBJ_DATA_TYPE), &[data_type])
}

/// One DOE exchange of the command in `buf` (its `spdm_ctrl`): the request relayed to
/// `mailbox` (`pci_doe` adds the DOE header and strips the answer's), the answer or its absence
/// written to the response buffer. `None` if the request cannot be read or framed.
pub fn exchange(mem: &mut dyn SystemMemory, buf: &[u8], mailbox: &mut dyn Mailbox) -> Option<()> {
    let ctrl = SpdmCtrl::read_from_bytes(
        buf.get(SPDM_CTRL_OFFSET..SPDM_CTRL_OFFSET.checked_add(core::mem::size_of::<SpdmCtrl>())?)?,
    )
    .ok()?;
    // The pages the SLAs name (the host knows its own pages: the C-bit it set is no part).
    let (req, resp) = (
        crate::abi::sla_page(ctrl.req.get()),
        crate::abi::sla_page(ctrl.resp.get()),
    );
    let mut payload = [0u8; WINDOW];
    let (t, len) = read_request(mem, req, &mut payload)?;
    let mut object = [0u8; MAX_RELAY_BYTES];
    let n = doe::encode(&mut object, t, payload.get(..len)?).ok()?;
    let mut answer = [0u8; MAX_RELAY_BYTES];
    let got = mailbox
        .exchange(object.get(..n)?, &mut answer)
        .and_then(|k| doe::decode(answer.get(..k)?, t).ok());
    write_response(mem, resp, t, got).ok()
}

/// Runs `buf` as command `id` the way the Linux host does: issue; while the answer is
/// `SPDM_REQUEST`, relay the request to `mailbox` and issue the written-back buffer again.
/// Returns the last outcome (`SPDM_REQUEST` only when the request could not be relayed or
/// [`MAX_ROUNDS`] ran out).
pub fn run<R, S>(
    sev: &mut Sev<R, S>,
    mem: &mut dyn SystemMemory,
    mailbox: &mut dyn Mailbox,
    id: abi::CommandId,
    buf: &mut [u8],
) -> Outcome
where
    R: RmpMemory,
    S: SecureSession,
{
    let mut outcome = sev.command(mem, id, buf);
    for _ in 0..MAX_ROUNDS {
        if outcome.status != SevStatus::SPDM_REQUEST || exchange(mem, buf, mailbox).is_none() {
            break;
        }
        outcome = sev.command(mem, id, buf);
    }
    outcome
}

/// Why [`tio_init`] stopped, as Linux's `sev_tio_init_locked` would return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// A command answered anything but `SUCCESS` (`-EIO`, with `psp_ret`).
    Status(Outcome),
    /// The status page is shorter than 0x30 bytes or has `flags` bits 31:2 set (`-EFAULT`).
    Malformed,
    /// Neither `tio_en` nor `tio_init_done` (`-ENOENT`).
    NoTio,
    /// `tio_init_done` already (`-EBUSY`: Linux does not initialise twice).
    AlreadyInitialised,
    /// The status page could not be read.
    Memory(MemoryFault),
}

/// `offsetofend(struct sev_tio_status, tdictx_size)`: the shortest status Linux takes.
pub const TIO_STATUS_MIN_LEN: u32 = 0x30;

/// What Linux does at init, byte for byte (sev-dev-tio.c `sev_tio_init_locked`,
/// AMDESE/linux-kvm @16f379f5; sev-linux-buffers.md sections 4 and 5): TIO_STATUS with
/// `length` 0x10 and `status_paddr` = `status_page`, the checks on what it wrote, TIO_INIT with
/// `length` 0x10, and TIO_STATUS again with the same buffer. Returns the last status read.
pub fn tio_init<R, S>(
    sev: &mut Sev<R, S>,
    mem: &mut dyn SystemMemory,
    status_page: u64,
) -> Result<abi::TioStatusData, InitError>
where
    R: RmpMemory,
    S: SecureSession,
{
    /// A command buffer at the alignment the firmware requires ([`abi::COMMAND_ALIGN`]).
    #[repr(C, align(8))]
    struct Buf([u8; 0x10]);
    let mut status = Buf([0; 0x10]);
    abi::TioStatus {
        length: 0x10.into(),
        reserved: [0; 4],
        status_paddr: status_page.into(),
    }
    .write_to(&mut status.0)
    .map_err(|_| InitError::Malformed)?;
    let read = |mem: &dyn SystemMemory| -> Result<abi::TioStatusData, InitError> {
        let mut page = [0u8; 0x40];
        mem.read(status_page, &mut page)
            .map_err(InitError::Memory)?;
        abi::TioStatusData::read_from_bytes(&page).map_err(|_| InitError::Malformed)
    };
    let issue = |sev: &mut Sev<R, S>, mem: &mut dyn SystemMemory, id, buf: &mut [u8]| {
        let out = sev.command(mem, id, buf);
        if out.status == SevStatus::SUCCESS {
            Ok(())
        } else {
            Err(InitError::Status(out))
        }
    };
    issue(sev, mem, abi::TIO_STATUS, &mut status.0)?;
    let first = read(mem)?;
    let flags = first.flags.get();
    if first.length.get() < TIO_STATUS_MIN_LEN
        || flags & !(abi::TIO_FLAG_EN | abi::TIO_FLAG_INIT_DONE) != 0
    {
        return Err(InitError::Malformed);
    }
    // Linux's `sev_tio_init_locked` tests TIO_EN on its own.
    if flags & abi::TIO_FLAG_EN == 0 {
        return Err(InitError::NoTio);
    }
    if flags & abi::TIO_FLAG_INIT_DONE != 0 {
        return Err(InitError::AlreadyInitialised);
    }
    let mut init = Buf([0; 0x10]);
    abi::TioInit {
        length: 0x10.into(),
        reserved: [0; 12],
    }
    .write_to(&mut init.0)
    .map_err(|_| InitError::Malformed)?;
    issue(sev, mem, abi::TIO_INIT, &mut init.0)?;
    issue(sev, mem, abi::TIO_STATUS, &mut status.0)?;
    read(mem)
}
