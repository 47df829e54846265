//! Test support for C hosts (feature `model-device`, never in a firmware build): the device a
//! C host relays the firmware's requests to, the core's model DSM behind its DOE mailbox
//! ([`ModelDevice`]), sharing [`tsm_core::ModelSession`] with the firmware. It is the host's
//! side of the relay, not the firmware's: the firmware never calls it. On hardware these calls
//! have no counterpart (the host's DOE mailbox driver and the real device take their place).
//!
//! It reaches host memory through the firmware's checked window ([`HostWindow`]), so a bad
//! address is a status here too, never a fault.

use spin::Mutex;
use tsm_core::device_model::ModelDevice;
use tsm_core::tdisp::report::{WireMmioRange, wire_range};
use tsm_core::{Error, Operand};

use super::{Firmware, HostWindow, WORD, fault, invalid};
use crate::abi::{ListError, RANGE_LIST_CAPACITY, RangeList, whole_words};
use crate::module::MESSAGE_PAGE_BYTES;
use crate::status::{
    self, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_RCX, OPERAND_ID_RDX, Operands, TDX_SUCCESS,
    TDX_SYS_NOT_READY, TSM_TOO_MANY_RANGES, TdxStatus,
};

/// The model device and its DOE mailbox.
pub struct ModelMailbox {
    device: Mutex<ModelDevice>,
}

/// The device is not locked to print it.
impl core::fmt::Debug for ModelMailbox {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ModelMailbox").finish_non_exhaustive()
    }
}

impl Default for ModelMailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelMailbox {
    /// A fresh model device.
    pub const fn new() -> Self {
        Self {
            device: Mutex::new(ModelDevice::model()),
        }
    }

    /// Runs `f` on the device (`Busy(Transport)` while another thread relays through it).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut ModelDevice) -> R) -> Result<R, Error> {
        let mut device = self
            .device
            .try_lock()
            .ok_or(Error::Busy(Operand::Transport))?;
        Ok(f(&mut device))
    }

    fn window(fw: &Firmware) -> Result<&HostWindow, TdxStatus> {
        fw.host().ok_or(TDX_SYS_NOT_READY)
    }

    /// `tsm_tdx_model_report`: what interface `iface` (packed requester ID) reports, from
    /// the range list at `list` in `fw`'s host memory.
    pub fn report(&self, fw: &Firmware, iface: u64, list: u64) -> TdxStatus {
        let host = match Self::window(fw) {
            Ok(h) => h,
            Err(s) => return s,
        };
        let Ok(iface) = tsm_core::RequesterId::from_packed(iface) else {
            return invalid(OPERAND_ID_RCX);
        };
        let list: RangeList = match host.read_value(list) {
            Ok(l) => l,
            Err(f) => return fault(f, OPERAND_ID_RDX),
        };
        let entries = match list.entries::<RANGE_LIST_CAPACITY>() {
            Ok(e) => e,
            Err(ListError::Reserved) => return invalid(OPERAND_ID_RDX),
            Err(ListError::TooMany) => return TSM_TOO_MANY_RANGES | u64::from(OPERAND_ID_RDX),
        };
        let mut wire: heapless::Vec<WireMmioRange, RANGE_LIST_CAPACITY> = heapless::Vec::new();
        for e in entries {
            if wire
                .push(wire_range(e.first_page, e.pages, e.attributes, e.range_id))
                .is_err()
            {
                return TSM_TOO_MANY_RANGES | u64::from(OPERAND_ID_RDX);
            }
        }
        match self.with_device(|d| d.link_mut().set_report(iface, &wire)) {
            Ok(()) => TDX_SUCCESS,
            Err(e) => status::encode(Err(e), &Operands::default()),
        }
    }

    /// `tsm_tdx_model_doe`: one DOE exchange. Reads the `len` bytes at `request` (a request
    /// page, whole words), has the device answer, writes the answer to `response` (whole
    /// words, zero padded) and its length in bytes (0: the device did not answer) to the word
    /// at `response_len`. Every address is checked before the device sees anything.
    pub fn doe(
        &self,
        fw: &Firmware,
        request: u64,
        len: u64,
        response: u64,
        response_len: u64,
    ) -> TdxStatus {
        let host = match Self::window(fw) {
            Ok(h) => h,
            Err(s) => return s,
        };
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0 && l <= MESSAGE_PAGE_BYTES)
        else {
            return invalid(OPERAND_ID_RDX);
        };
        let mut req = [0u8; MESSAGE_PAGE_BYTES];
        let Some(words) = whole_words(len).and_then(|w| req.get_mut(..w)) else {
            return invalid(OPERAND_ID_RDX);
        };
        if let Err(f) = host.read(request, words) {
            return fault(f, OPERAND_ID_RCX);
        }
        // Both outputs are checked before the device sees the request (it changes state).
        if let Err(f) = host.words(response, MESSAGE_PAGE_BYTES) {
            return fault(f, OPERAND_ID_R8);
        }
        if let Err(f) = host.words(response_len, WORD) {
            return fault(f, OPERAND_ID_R9);
        }
        let Some(req) = req.get(..len) else {
            return invalid(OPERAND_ID_RDX);
        };
        let mut rsp = [0u8; MESSAGE_PAGE_BYTES];
        let answer = match self.with_device(|d| d.answer(req, &mut rsp)) {
            Ok(a) => a,
            Err(e) => return status::encode(Err(e), &Operands::default()),
        };
        let n = answer.filter(|&n| n <= MESSAGE_PAGE_BYTES).unwrap_or(0);
        let Some(words) = whole_words(n).and_then(|w| rsp.get(..w)) else {
            return invalid(OPERAND_ID_R8);
        };
        if let Err(f) = host.write(response, words) {
            return fault(f, OPERAND_ID_R8);
        }
        match host.write(response_len, &(n as u64).to_ne_bytes()) {
            Ok(()) => TDX_SUCCESS,
            Err(f) => fault(f, OPERAND_ID_R9),
        }
    }
}
