//! The TDX-IO device-interface (DEVIF, TDI) leaves with the public operand encodings
//! (intel/tdx-module TDX-IO `src/common/data_structures/tdxio/devif_defs.h` @
//! a56a9173cda32a711510ac2fb87ce049c22f1450 for the unions, the `tdh_devif_*.c` and
//! `tdg_devif_*.c` handlers @6e66b9d2070aa49562518087160b2c6ae6418555 for the checks; the
//! research note is `notes/devif-layout.md` of the project).
//!
//! Every TDI is named as the module names it: by its TDISP function ID
//! (`function_id_reg_t`: bits 31:0 the function ID, 63:32 zero) in RCX of every leaf on it.
//! The firmware maps function ID -> TDI itself (a function has at most one TDI).
//!
//! Where this firmware departs from the module, and why (each "ours"):
//! - The module's ABI is host-driven one message at a time; the core runs each operation as a
//!   step machine of several exchanges (bind: GET_VERSION, GET_CAPABILITIES, LOCK, every report
//!   portion). So a leaf that leaves a request answers `TDX_SPDM_REQUEST` (as TDH.SPDM.CONNECT
//!   does), never the module's `TDX_SUCCESS`, with RCX = `devif_req_out_t` of the message
//!   actually written, and TDH.DEVIF.RESPONSE goes on with the next request into its R8 page:
//!   one host loop serves every leaf.
//! - The host never names the report: the firmware reads it itself during the bind, and the
//!   TD reads what it needs with TDG.DEVIF.RD.
//! - No IOMMU model: `devif_id_t.iommu_id` must be 0. No DEVIFMT: the TDI table is the
//!   firmware's own, so TDH.DEVIF.MT.ADD is not needed; the IDE stream's ID is its SPDM id.
//! - TDH.DEVIF.CREATE's RDX may be 0 (no TD yet) and TSM.DEVIF.SET_TD hands an unbound TDI to
//!   another TD: the scenario model keeps a TDI across TDs, where a TDX-IO host removes and
//!   creates it. TSM.DEVIF.BIND's RDX must be the TDI's TD (else
//!   `TDX_MMIO_DEVIF_OWNER_MISMATCH` + RDX); LOCK_INTERFACE binds to it.
//! - TDH.DEVIF.RESPONSE: RDX page 0 says the device did not answer (the core counts it against
//!   its attempts); R8 must name a page whenever the operation may go on; the `devif_rsp_out_t`
//!   of a finished operation names the response to the host's code (a bind's last exchange is
//!   a report portion, yet the host asked for LOCK), with nothing copied (length 0).
//! - The TD's requests: only START (0x86); the report was read by the bind and the TD reads it
//!   with TDG.DEVIF.RD, so TDG.DEVIF.RESPONSE copies nothing (RDX 0).

use tsm_core::tdisp::{request, response};
use tsm_core::{Completion, DeviceOp, Error, GuestId, Hpa, SecureSession, TdiId, TsmResult};

use crate::abi::{
    Dispatcher, HostMemory, MESSAGE_PAGE_ALIGN, Outcome, SeamRegs, UNBIND_FLAG_FORCE, core_err,
    decode_function_id, decode_hpa, function_id, host_fault, invalid, named, whole_words,
};
use crate::link::{Keys, Session};
use crate::module::{
    DevifEntry, DevifPages, MESSAGE_PAGE_BYTES, PageTable, TdRequest, devif_in, page_held, td_in,
};
use crate::status::{
    self, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_R10, OPERAND_ID_RCX, OPERAND_ID_RDX,
    TDX_SUCCESS, TdxStatus,
};

// ---- leaves -------------------------------------------------------------------------------

/// TDH.DEVIF.CREATE (TDX-IO 137; `tdh_devif_create.c` @6e66b9d2): RCX [`devif_id`] (iommu id
/// 15:0, 0 here: ours, no IOMMU model; stream id 23:16, an IDE stream TDH.IDE.STREAM.CREATE
/// made, which names the SPDM id; devif type 31:24, [`DEVIF_TYPE_PFVF`]; function ID 63:32,
/// inside the stream's RID association range and a function of the device), RDX the TDR page
/// of the TD the TDI is for (the only TD TSM.DEVIF.BIND / LOCK may bind it to; ours: 0 for no
/// TD yet, for a host that creates TDIs before their TD, [`TSM_DEVIF_SET_TD`] names it), R8
/// the DEVIFCS page, R9 and R10 the TD's and the VMM's TDISP buffers: three firmware-private
/// pages ([`DevifPages`], until REMOVE). No output. Checked in the module's order: R8, RDX,
/// R9, R10, then RCX: format (`TDX_OPERAND_INVALID`), the stream (none, stopped or blocked:
/// `TDX_IDE_STREAM_INVALID_STATE`), a function that is not the device's
/// (`TSM_FOREIGN_INTERFACE`, ours: the core's `InterfaceId` rule, before the module's checks: another
/// segment, bus or device number, an undeclared VF), a TDI already
/// there (`TDX_DEVIFMT_ALREADY_PRESENT`), the RID range (`TDX_OPERAND_INVALID`), the session
/// (`TDX_SPDM_INVALID_STATE`), each + RCX; then the core (`TSM_TDI_TABLE_FULL`).
pub const TDH_DEVIF_CREATE: u16 = 137;
/// TDH.DEVIF.REMOVE (TDX-IO 138; `tdh_devif_remove.c` @6e66b9d2): RCX `function_id_reg_t`.
/// Refused (`TDX_DEVIF_INVALID_STATE` + RCX, nothing changed) unless the TDI is unbound; an
/// unbound TDI owns no range and has no leaf (the core's unbind ends only once its last leaf
/// is gone). The module's order (@6e66b9d2): past STOP, or with the stream cut, a trusted DMA
/// context left is `TDX_DEVIF_HAS_MAPPED_DMA` + RCX (the DMAR leaves remove it). A bind still waiting on the device: `TDX_DEVIF_TDISP_OUT_REQ` + RCX (ours; the
/// module does not ask). Out: RCX the R9 page, RDX the R10 page, R8 the TDR PA (0 for none),
/// as the module returns them; the three pages are free again.
pub const TDH_DEVIF_REMOVE: u16 = 138;
/// TDH.DEVIF.REQUEST (TDX-IO 139; `tdh_devif_request.c` @a56a9173): RCX `function_id_reg_t`,
/// RDX `devif_req_in_t` ([`REQ_IN_CODE_MASK`], [`REQ_IN_NO_FW_UPDATE`], [`REQ_IN_TD_FLAG`]),
/// R8 the shared 4 KiB page the request (a whole DOE object) is written to, R9 zero. The code
/// starts the core's operation: LOCK_INTERFACE (0x83) the bind to the TDI's TD (none, or gone:
/// `TDX_OPERAND_INVALID` + TDR; its first request may be STOP or GET_VERSION: RCX names the
/// message written), STOP_INTERFACE (0x87)
/// the bounded unbind (`TDX_INTERRUPTED_RESUMABLE` until the leaves are blocked, then STOP),
/// GET_DEVICE_INTERFACE_STATE (0x85) the check; `td_flag` hands out the request the TD
/// started (TDG.DEVIF.REQUEST). A request written: `TDX_SPDM_REQUEST` (ours; the module says
/// `TDX_SUCCESS`), RCX [`devif_req_out`]. The same code while its operation waits writes the
/// same request again; another code: `TDX_DEVIF_TDISP_OUT_REQ` + RCX, nothing changed.
pub const TDH_DEVIF_REQUEST: u16 = 139;
/// TDH.DEVIF.RESPONSE (TDX-IO 140; `tdh_devif_response.c` @6e66b9d2): RCX `function_id_reg_t`,
/// RDX `devif_rsp_in_t` ([`RSP_IN_PA_MASK`]: the shared page holding the device's answer, a
/// whole DOE object whose length its own header gives, bounded by the page; 0: the device did
/// not answer, ours; [`REQ_IN_TD_FLAG`] for the TD's request), R8 0 or the shared page the
/// next request is written to (ours: required whenever the operation may go on: a bind or an
/// unbind, or a silent device), R9 zero. Outcomes: another exchange (`TDX_SPDM_REQUEST`, RCX
/// [`devif_req_out`]); done (`TDX_SUCCESS`, RCX [`devif_rsp_out`]; `TDX_INTERRUPTED_RESUMABLE`
/// for an unbind that goes on); the operation's failure. Nothing outstanding:
/// `TDX_DEVIF_TDISP_OUT_REQ` + RCX; `td_flag` not matching whose request it is:
/// `TDX_DEVIF_TDISP_INVALID_REQ_STS` + RDX; bytes that are not the awaited answer:
/// `TDX_DEVIF_TDISP_INVALID_MESSAGE` + RDX; each changes nothing.
pub const TDH_DEVIF_RESPONSE: u16 = 140;
/// TDG.DEVIF.REQUEST (TDX-IO 68; `tdg_devif_request.c` @6e66b9d2): RCX `function_id_reg_t`,
/// RDX `devif_req_in_t` with only the code (START_INTERFACE 0x86; the module's 0x84 and 0x85
/// are ours to refuse: the firmware read the report at bind, `TDX_OPERAND_INVALID` + RDX), R9
/// zero. The TDI's own TD may have no request waiting or unread
/// (`TDX_DEVIF_TDISP_INVALID_REQ_STS` + RCX); then the core's start judges (its refusals: an
/// unbound TDI `TDX_DEVIF_INVALID_STATE`, another TD's `TDX_DEVIF_INVALID_METADATA`, each +
/// RCX). The core's start begins and the request waits for the host's TDH.DEVIF.REQUEST
/// `td_flag`: `TDX_SUCCESS`.
pub const TDG_DEVIF_REQUEST: u16 = 68;
/// TDG.DEVIF.RESPONSE (TDX-IO 69; `tdg_devif_response.c` @6e66b9d2): RCX `function_id_reg_t`,
/// RDX 0 (ours: nothing to copy, the start's answer has no payload; else
/// `TDX_OPERAND_INVALID` + RDX), R9 zero. The outcome of the TD's request once the host
/// handed the device's answer in: its status, RCX [`devif_rsp_out`]; the TD may then start
/// another. Not answered yet: `TDX_DEVIF_TDISP_INVALID_REQ_STS` + RCX. A request the host
/// abandoned (unbind, device error) reads `TDX_DEVIF_INVALID_STATE` + RCX (ours).
pub const TDG_DEVIF_RESPONSE: u16 = 69;
/// Ours, TSM.DEVIF.SET_TD: RCX `function_id_reg_t`, RDX the TDR page of another TD (it must
/// name one: `TDX_OPERAND_INVALID` + RDX), or 0: for no TD (as CREATE's RDX 0), which lets
/// the old TD's TDR be reclaimed (TDH.PHYMEM.PAGE.RECLAIM refuses a TDR a TDI is still for). The TDI is then for that TD, as TDH.DEVIF.REMOVE
/// and TDH.DEVIF.CREATE for it would make it, keeping its slot and private pages: for a host
/// that keeps a TDI across TDs (the scenario model; a TDX-IO host removes and creates). Only
/// an unbound TDI with nothing outstanding (`TDX_DEVIF_INVALID_STATE` + RCX; a bind waiting,
/// `TDX_DEVIF_TDISP_OUT_REQ` + RCX); a request of the old TD's unread is dropped.
pub const TSM_DEVIF_SET_TD: u16 = 0xF00A;

// ---- operand encodings --------------------------------------------------------------------

/// `devif_id_t` bits 15:0: `iommu_id_t` (`devif_defs.h` @a56a9173). Must be 0 here (ours).
pub const DEVIF_ID_IOMMU_MASK: u64 = 0xffff;
/// `devif_id_t` bits 23:16: `stream_id_t` (index 22:16, page selector 23).
pub const DEVIF_ID_STREAM_SHIFT: u32 = 16;
/// `devif_id_t` bits 31:24: the devif type.
pub const DEVIF_ID_TYPE_SHIFT: u32 = 24;
/// `devif_id_t` bits 63:32: the TDISP function ID (`fucntion_id_t`).
pub const DEVIF_ID_FUNCTION_SHIFT: u32 = 32;
/// The one devif type, `DEVIF_TYPE_PFVF` (`devif_defs.h` @a56a9173).
pub const DEVIF_TYPE_PFVF: u64 = 0;
/// `function_id_reg_t` bits 63:32: reserved, zero (`devif_defs.h` @a56a9173).
pub const FUNCTION_ID_REG_RESERVED: u64 = 0xffff_ffff_0000_0000;
/// `devif_req_in_t` bits 7:0: the TDISP request code (`devif_defs.h` @a56a9173).
pub const REQ_IN_CODE_MASK: u64 = 0xff;
/// `devif_req_in_t` bit 8: `no_fw_update`, only with LOCK_INTERFACE. Format only here
/// (ours): the core's bind sets its own lock flags.
pub const REQ_IN_NO_FW_UPDATE: u64 = 1 << 8;
/// `devif_req_in_t` / `devif_rsp_in_t` bit 63: `td_flag`, the TD's request.
pub const REQ_IN_TD_FLAG: u64 = 1 << 63;
/// `devif_req_in_t` bits 62:9: reserved.
const REQ_IN_RESERVED: u64 = !(REQ_IN_CODE_MASK | REQ_IN_NO_FW_UPDATE | REQ_IN_TD_FLAG);
/// `devif_rsp_in_t` bits 51:12: the answer page (`devif_defs.h` @a56a9173).
pub const RSP_IN_PA_MASK: u64 = 0x000f_ffff_ffff_f000;
/// `devif_rsp_in_t` bits 11:0 and 62:52: reserved.
const RSP_IN_RESERVED: u64 = !(RSP_IN_PA_MASK | REQ_IN_TD_FLAG);
/// `devif_req_out_t` / `devif_rsp_out_t` bits 23:8: the length.
pub const OUT_LENGTH_SHIFT: u32 = 8;
/// `devif_rsp_out_t` bits 31:24 of a STATE response: the TDI's TDISP state.
pub const RSP_OUT_STATE_SHIFT: u32 = 24;

/// `devif_req_in_t` code LOCK_INTERFACE_REQUEST (PCIe 6.x Table 11-4; `tdisp_defs.h`
/// @a56a9173): starts the bind.
pub const TDISP_LOCK_INTERFACE: u8 = request::LOCK_INTERFACE;
/// `devif_req_in_t` code GET_DEVICE_INTERFACE_STATE: starts the check.
pub const TDISP_GET_STATE: u8 = request::GET_DEVICE_INTERFACE_STATE;
/// `devif_req_in_t` code START_INTERFACE_REQUEST: the TD's start (TDG.DEVIF.REQUEST).
pub const TDISP_START_INTERFACE: u8 = request::START_INTERFACE;
/// `devif_req_in_t` code STOP_INTERFACE_REQUEST: starts the unbind.
pub const TDISP_STOP_INTERFACE: u8 = request::STOP_INTERFACE;

/// A `devif_id_t`: `function` on `stream` through IOMMU `iommu`, type PF/VF.
pub const fn devif_id(iommu: u16, stream: u8, function: u32) -> u64 {
    iommu as u64
        | (stream as u64) << DEVIF_ID_STREAM_SHIFT
        | DEVIF_TYPE_PFVF << DEVIF_ID_TYPE_SHIFT
        | (function as u64) << DEVIF_ID_FUNCTION_SHIFT
}

/// A `devif_req_out_t`: the TDISP request `code` written, `len` bytes of DOE object.
pub const fn devif_req_out(code: u8, len: u16) -> u64 {
    code as u64 | (len as u64) << OUT_LENGTH_SHIFT
}

/// A `devif_rsp_out_t`: response `code`, `len` bytes copied out (0 here: nothing is copied),
/// `state` the TDISP state in a STATE response (0 otherwise).
pub const fn devif_rsp_out(code: u8, len: u16, state: u8) -> u64 {
    code as u64 | (len as u64) << OUT_LENGTH_SHIFT | (state as u64) << RSP_OUT_STATE_SHIFT
}

/// A `devif_req_in_t` from the host: `code`, `no_fw_update`, `td_flag`.
pub const fn devif_req_in(code: u8, no_fw_update: bool, td_flag: bool) -> u64 {
    code as u64
        | if no_fw_update { REQ_IN_NO_FW_UPDATE } else { 0 }
        | if td_flag { REQ_IN_TD_FLAG } else { 0 }
}

/// A `devif_rsp_in_t`: the answer in the page at `page` (0: none), `td_flag`.
pub const fn devif_rsp_in(page: u64, td_flag: bool) -> u64 {
    (page & RSP_IN_PA_MASK) | if td_flag { REQ_IN_TD_FLAG } else { 0 }
}

/// The response code `devif_rsp_out_t` names when the operation `op` ends: the response to
/// the request the host's code named (ours: a bind ends on its last report portion, an unbind
/// that had to confirm on GET_STATE, yet the host asked for LOCK or STOP).
fn operation_response(op: DeviceOp) -> u8 {
    match op {
        DeviceOp::Bind { .. } => response::LOCK_INTERFACE,
        DeviceOp::Stop { .. } => response::STOP_INTERFACE,
        DeviceOp::Check => response::DEVICE_INTERFACE_STATE,
        DeviceOp::Start { .. } => response::START_INTERFACE,
    }
}

/// DOE header dword 1 length field: bits 17:0, in dwords (PCIe 6.x 6.30.1).
const DOE_LENGTH_MASK: u32 = (1 << 18) - 1;
/// Bytes of the DOE header.
const DOE_HEADER_BYTES: usize = 8;

/// What a host request code asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Bind,
    Unbind,
    Check,
    /// The TD's START (`td_flag`).
    Start,
}

impl Wanted {
    /// Whether `op`, waiting on the device, is this operation's.
    fn waits_in(self, op: DeviceOp) -> bool {
        matches!(
            (self, op),
            (Wanted::Bind, DeviceOp::Bind { .. })
                | (Wanted::Unbind, DeviceOp::Stop { .. })
                | (Wanted::Check, DeviceOp::Check)
                | (Wanted::Start, DeviceOp::Start { .. })
        )
    }
}

/// The TDI a `function_id_reg_t` names in `table`: bits 63:32 or a malformed function ID,
/// `TDX_OPERAND_INVALID` + RCX; no TDI, `TDX_DEVIFMT_NOT_PRESENT` + RCX.
pub(crate) fn devif_at(table: &PageTable, raw: u64) -> Result<(TdiId, DevifEntry), TdxStatus> {
    if raw & FUNCTION_ID_REG_RESERVED != 0 {
        return Err(invalid(OPERAND_ID_RCX));
    }
    let function = canonical(raw)?;
    devif_in(table, function).ok_or(status::TDX_DEVIFMT_NOT_PRESENT | u64::from(OPERAND_ID_RCX))
}

/// The function ID `raw` as the firmware keys it (Linux's encoding: SEG_VALID only with a
/// segment), so both spellings of segment 0 name the same TDI.
fn canonical(raw: u64) -> Result<u32, TdxStatus> {
    let rid = decode_function_id(raw)?;
    u32::try_from(function_id(rid)).map_err(|_| invalid(OPERAND_ID_RCX))
}

/// Where the request the TD started stands, seen with the core's exchange: a request whose
/// START the core no longer waits on (unbind, device error) was abandoned.
fn td_request_now(entry: &DevifEntry, waiting: Option<DeviceOp>) -> TdRequest {
    match entry.td_request {
        TdRequest::Requested if !matches!(waiting, Some(DeviceOp::Start { .. })) => {
            TdRequest::Processed {
                status: status::TDX_DEVIF_INVALID_STATE | u64::from(OPERAND_ID_RCX),
                out: 0,
            }
        }
        other => other,
    }
}

impl<S: SecureSession, M: HostMemory, const SHARDS: usize> Dispatcher<'_, '_, S, M, SHARDS> {
    /// TSM.DEVIF.UNBIND's call into the core (RCX the TDI, RDX the flags, R8 the request
    /// page), the DEVIF lock held to its end and given back before the caller goes on.
    pub(crate) fn devif_unbind(
        &self,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let tsm = self.tsm;
        let table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
        if r.rdx & !UNBIND_FLAG_FORCE != 0 {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        // A stop for an IOTLB invalidation is the core's status for the wait it met:
        // the entry's own (`IotlbInvalidationPending`, TDX_DMAR_INVALID_INV_STATE +
        // DMAR) or the TD's domain's (`IotlbNotTracked`,
        // TDX_IOMMU_IOTLB_TRACKING_NOT_DONE).
        if r.rdx & UNBIND_FLAG_FORCE != 0 {
            // Asks nothing of the device: no request, no page.
            if r.r8 != 0 {
                return Err(st(invalid(OPERAND_ID_R8)));
            }
            Ok(Outcome::Core(tsm.unbind_forced(tdi)))
        } else {
            let page = self.request_page(&table, r.r8, OPERAND_ID_R8)?;
            self.relayed(out, tdi, Some(page), |buf| Ok(tsm.unbind(tdi, buf)))
        }
    }

    /// A shared page operand the firmware writes a request to: 4 KiB aligned, below 2^52, a
    /// whole page of host memory (probed writable), not a page the firmware holds
    /// (`TDX_PAGE_METADATA_INCORRECT`).
    pub(crate) fn request_page(
        &self,
        table: &PageTable,
        raw: u64,
        operand: u32,
    ) -> Result<Hpa, Outcome> {
        let at = decode_hpa(raw, MESSAGE_PAGE_ALIGN, operand).map_err(Outcome::Status)?;
        self.host
            .probe_write(at.as_u64(), MESSAGE_PAGE_BYTES)
            .map_err(|f| Outcome::Status(host_fault(f, operand)))?;
        let tds = self.fw.read_tds().map_err(core_err)?;
        let spdm = self.fw.read_spdm().map_err(core_err)?;
        if page_held(&tds, table, &spdm, at) {
            return Err(named(status::TDX_PAGE_METADATA_INCORRECT, operand));
        }
        Ok(at)
    }

    /// Runs `op`, a core operation on `tdi` that may leave a request, and delivers it: a
    /// `Relay(n)` is written to `page` in whole words (zero padded) and RCX is
    /// [`devif_req_out`] of the message the core now waits on. `page` was checked before `op`
    /// ran, so a request the core commits to is always delivered; with no page (a RESPONSE
    /// whose R8 was 0 on an operation that cannot go on) a request would be `Inconsistent`:
    /// the host still gets it with TDH.DEVIF.REQUEST.
    pub(crate) fn relayed(
        &self,
        out: &mut SeamRegs,
        tdi: TdiId,
        page: Option<Hpa>,
        op: impl FnOnce(&mut [u8]) -> Result<TsmResult<Completion>, Outcome>,
    ) -> Result<Outcome, Outcome> {
        let mut buf = [0u8; crate::abi::REQUEST_BUFFER];
        let result = op(&mut buf)?;
        if let Ok(Completion::Relay(n)) = result {
            let inconsistent = || core_err(Error::Inconsistent);
            let page = page.ok_or_else(inconsistent)?;
            let words = whole_words(n).ok_or_else(inconsistent)?;
            buf.get_mut(n..words).ok_or_else(inconsistent)?.fill(0);
            let bytes = buf.get(..words).ok_or_else(inconsistent)?;
            // Cannot fail: probed above, and host memory does not move. Were it to, the
            // request stays outstanding and TDH.DEVIF.REQUEST writes it again.
            self.host
                .write(page.as_u64(), bytes)
                .map_err(|f| Outcome::Status(host_fault(f, OPERAND_ID_R8)))?;
            let code = self
                .tsm
                .tdi(tdi)
                .map_err(core_err)?
                .exchange
                .map(|e| e.op.request_code())
                .ok_or_else(inconsistent)?;
            let len = u16::try_from(n).map_err(|_| inconsistent())?;
            out.rcx = devif_req_out(code, len);
        }
        Ok(Outcome::Core(result))
    }

    /// TDH.DEVIF.CREATE ([`TDH_DEVIF_CREATE`]).
    pub(crate) fn devif_create(&self, r: &SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let tds = self.fw.read_tds().map_err(core_err)?;
        let mut table = self.fw.lock_pages().map_err(core_err)?;
        let spdm = self.fw.read_spdm().map_err(core_err)?;
        let private = |raw: u64, operand: u32, taken: &[Hpa]| -> Result<Hpa, Outcome> {
            let at = decode_hpa(raw, MESSAGE_PAGE_ALIGN, operand).map_err(st)?;
            self.host
                .probe_read(at.as_u64(), MESSAGE_PAGE_BYTES)
                .map_err(|f| st(host_fault(f, operand)))?;
            // The module's PAMT: a page that is not PT_NDA (the firmware's already, or one of
            // this call's other pages) is PAGE_METADATA_INCORRECT.
            if taken.contains(&at) || page_held(&tds, &table, &spdm, at) {
                return Err(named(status::TDX_PAGE_METADATA_INCORRECT, operand));
            }
            Ok(at)
        };
        let devifcs = private(r.r8, OPERAND_ID_R8, &[])?;
        let tdr = match r.rdx {
            0 => None,
            raw => {
                let td = td_in(&tds, raw).ok_or(st(invalid(OPERAND_ID_RDX)))?;
                crate::td::usable(&tds, td).map_err(st)?;
                Some(Hpa::try_new(raw).map_err(|_| st(invalid(OPERAND_ID_RDX)))?)
            }
        };
        let td_buffer = private(r.r9, OPERAND_ID_R9, &[devifcs])?;
        let vmm_buffer = private(r.r10, OPERAND_ID_R10, &[devifcs, td_buffer])?;
        // RCX: iommu 0 (ours), type PF/VF, the function ID's format.
        let rcx = || st(invalid(OPERAND_ID_RCX));
        if r.rcx & DEVIF_ID_IOMMU_MASK != 0 || (r.rcx >> DEVIF_ID_TYPE_SHIFT) & 0xff != 0 {
            return Err(rcx());
        }
        let raw_function = r.rcx >> DEVIF_ID_FUNCTION_SHIFT;
        let function = canonical(raw_function).map_err(st)?;
        let rid = decode_function_id(raw_function).map_err(st)?;
        // The stream names the SPDM id (ours: stream ID == SPDM id, page selector 0).
        let stream_id = (r.rcx >> DEVIF_ID_STREAM_SHIFT) & 0xff;
        let entry = spdm
            .iter()
            .flatten()
            .find(|e| e.link.stream.as_ref().is_some_and(|s| s.id == stream_id))
            .ok_or(named(status::TDX_IDE_STREAM_INVALID_STATE, OPERAND_ID_RCX))?;
        let stream = entry
            .link
            .stream
            .as_ref()
            .filter(|s| !s.blocked && s.keys != Keys::Stopped)
            .ok_or(named(status::TDX_IDE_STREAM_INVALID_STATE, OPERAND_ID_RCX))?;
        let dev = entry
            .device
            .ok_or(named(status::TSM_BARS_NOT_REGISTERED, OPERAND_ID_RCX))?;
        // The interface ID rule (`InterfaceId`), checked here in the module's order and again
        // by the core's create_tdi: one check, `DeviceFunctions::interface`.
        self.tsm
            .device(dev)
            .map_err(core_err)?
            .functions
            .interface(rid)
            .map_err(core_err)?;
        if devif_in(&table, function).is_some() {
            return Err(named(status::TDX_DEVIFMT_ALREADY_PRESENT, OPERAND_ID_RCX));
        }
        // The stream's RID association, read as TDH.IDE.STREAM.CREATE checked it (a segment
        // base of 0: a root port that does not capture segments).
        let (segment, base, limit) = stream.rids();
        let routing = u64::from(rid.routing_id());
        if (segment != 0 && u64::from(rid.segment()) != segment)
            || !(base..=limit).contains(&routing)
        {
            return Err(rcx());
        }
        if !matches!(entry.link.session, Session::Connected(_)) {
            return Err(named(status::TDX_SPDM_INVALID_STATE, OPERAND_ID_RCX));
        }
        let tdi = self.tsm.create_tdi(dev, rid).map_err(core_err)?;
        let Some(slot) = table.get_mut(usize::from(tdi.slot())) else {
            // Unreachable: the core's TDI slots are the table's. Undone all the same.
            let _ = self.tsm.remove_tdi(tdi);
            return Err(core_err(Error::Inconsistent));
        };
        *slot = Some(DevifEntry {
            function,
            tdr,
            pages: DevifPages {
                devifcs,
                td_buffer,
                vmm_buffer,
            },
            td_request: TdRequest::Available,
        });
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// TDH.DEVIF.REMOVE ([`TDH_DEVIF_REMOVE`]).
    pub(crate) fn devif_remove(
        &self,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let mut table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, entry) = devif_at(&table, r.rcx).map_err(Outcome::Status)?;
        match self.tsm.remove_tdi(tdi) {
            Ok(()) => {}
            // Past STOP (CONFIG_UNLOCKED) the module's next check is the DMA context's
            // (`tdh_devif_remove.c` @6e66b9d2: state, then `dmar_mapped_flag`): an unbind the
            // host drives past STOP with the context left is HAS_MAPPED_DMA.
            Err(Error::TdiBound) if self.past_stop_with_dma(tdi) => {
                return Err(named(status::TDX_DEVIF_HAS_MAPPED_DMA, OPERAND_ID_RCX));
            }
            // Bound or being unbound: not CONFIG_UNLOCKED.
            Err(Error::TdiBound) => {
                return Err(named(status::TDX_DEVIF_INVALID_STATE, OPERAND_ID_RCX));
            }
            Err(e) => return Err(core_err(e)),
        }
        if let Some(slot) = table.get_mut(usize::from(tdi.slot())) {
            *slot = None;
        }
        out.rcx = entry.pages.td_buffer.as_u64();
        out.rdx = entry.pages.vmm_buffer.as_u64();
        out.r8 = entry.tdr.map_or(0, |t| t.as_u64());
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// Whether `tdi`'s device can no longer reach the guest (the unbind past STOP, or the
    /// stream cut) while its trusted DMA context remains.
    fn past_stop_with_dma(&self, tdi: TdiId) -> bool {
        let Ok(record) = self.tsm.tdi(tdi) else {
            return false;
        };
        let Ok(dev) = self.tsm.device(record.device) else {
            return false;
        };
        record.dma.is_some()
            && tsm_core::Tsm::<crate::sept::Sept<'_>, S, SHARDS>::host_may_tear_down(
                record.state,
                dev.stream,
            )
    }

    /// The TD `entry` is for (none, or gone: `TDX_OPERAND_INVALID` + TDR; past VPFLUSHDONE:
    /// `TDX_TD_KEYS_NOT_CONFIGURED`).
    fn td_of(&self, entry: &DevifEntry) -> Result<GuestId, Outcome> {
        let tdr = entry.tdr.map_or(0, |t| t.as_u64());
        let tds = self.fw.read_tds_for(tdr).map_err(core_err)?;
        let td = entry
            .tdr
            .and_then(|t| td_in(&tds, t.as_u64()))
            .ok_or(named(status::TDX_OPERAND_INVALID, status::OPERAND_ID_TDR))?;
        crate::td::usable(&tds, td).map_err(Outcome::Status)?;
        Ok(td)
    }

    /// The TD TDR page `raw` names for a TDI (none: `TDX_OPERAND_INVALID` + RDX; past
    /// VPFLUSHDONE: `TDX_TD_KEYS_NOT_CONFIGURED`).
    fn td_named(&self, raw: u64) -> Result<GuestId, Outcome> {
        let tds = self.fw.read_tds_for(raw).map_err(core_err)?;
        let td = td_in(&tds, raw).ok_or(named(status::TDX_OPERAND_INVALID, OPERAND_ID_RDX))?;
        crate::td::usable(&tds, td).map_err(Outcome::Status)?;
        Ok(td)
    }

    /// TSM.DEVIF.BIND ([`crate::abi::TSM_DEVIF_BIND`]) once RCX named `tdi` (`entry`): RDX
    /// names a TD (`TDX_OPERAND_INVALID` + RDX), R8 the request page; a TD other than the
    /// TDI's is `TDX_MMIO_DEVIF_OWNER_MISMATCH` + RDX where the core would start the bind, and
    /// the core's own refusal where it would not (bound, unbinding, another bind waiting), so
    /// the host learns first what the core would say.
    pub(crate) fn devif_bind(
        &self,
        table: &PageTable,
        tdi: TdiId,
        entry: &DevifEntry,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let td = self.td_named(r.rdx)?;
        let page = self.request_page(table, r.r8, OPERAND_ID_R8)?;
        let tsm = self.tsm;
        if entry.tdr.map(|t| t.as_u64()) != Some(r.rdx) {
            let record = tsm.tdi(tdi).map_err(core_err)?;
            // Unbound with nothing waiting: the core would bind to RDX's TD.
            if record.state == tsm_core::TdiState::Unbound && record.exchange.is_none() {
                return Err(named(status::TDX_MMIO_DEVIF_OWNER_MISMATCH, OPERAND_ID_RDX));
            }
        }
        self.relayed(out, tdi, Some(page), |buf| Ok(tsm.bind(tdi, td, buf)))
    }

    /// TSM.DEVIF.SET_TD ([`TSM_DEVIF_SET_TD`]).
    pub(crate) fn devif_set_td(&self, r: &SeamRegs) -> Result<Outcome, Outcome> {
        // The platform's lock order: the TD table before the TDI pages.
        let _tds = self.fw.read_tds().map_err(core_err)?;
        let mut table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, _) = devif_at(&table, r.rcx).map_err(Outcome::Status)?;
        // RDX 0: the TDI is for no TD any more (as CREATE's RDX 0), so its TD can be torn down.
        let tdr = if r.rdx == 0 {
            None
        } else {
            self.td_named(r.rdx)?;
            Some(
                Hpa::try_new(r.rdx)
                    .map_err(|_| named(status::TDX_OPERAND_INVALID, OPERAND_ID_RDX))?,
            )
        };
        let record = self.tsm.tdi(tdi).map_err(core_err)?;
        if record.exchange.is_some() {
            return Err(named(status::TDX_DEVIF_TDISP_OUT_REQ, OPERAND_ID_RCX));
        }
        if record.state != tsm_core::TdiState::Unbound {
            return Err(named(status::TDX_DEVIF_INVALID_STATE, OPERAND_ID_RCX));
        }
        let slot = table
            .get_mut(usize::from(tdi.slot()))
            .and_then(Option::as_mut)
            .ok_or(core_err(Error::Inconsistent))?;
        slot.tdr = tdr;
        slot.td_request = TdRequest::Available;
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// TDH.DEVIF.REQUEST ([`TDH_DEVIF_REQUEST`]). Order (the module's): RDX, R9, RCX, an
    /// operation of another code waiting, the TD's request state, R8.
    pub(crate) fn devif_request(
        &self,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let td_flag = r.rdx & REQ_IN_TD_FLAG != 0;
        let code =
            u8::try_from(r.rdx & REQ_IN_CODE_MASK).map_err(|_| st(invalid(OPERAND_ID_RDX)))?;
        let no_fw_update = r.rdx & REQ_IN_NO_FW_UPDATE != 0;
        if r.rdx & REQ_IN_RESERVED != 0
            || (td_flag && (code != 0 || no_fw_update))
            || (no_fw_update && code != TDISP_LOCK_INTERFACE)
        {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        let wanted = match (td_flag, code) {
            (true, _) => Wanted::Start,
            (false, TDISP_LOCK_INTERFACE) => Wanted::Bind,
            (false, TDISP_STOP_INTERFACE) => Wanted::Unbind,
            (false, TDISP_GET_STATE) => Wanted::Check,
            _ => return Err(st(invalid(OPERAND_ID_RDX))),
        };
        if r.r9 != 0 {
            return Err(st(invalid(OPERAND_ID_R9)));
        }
        let table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, entry) = devif_at(&table, r.rcx).map_err(st)?;
        let waiting = self.tsm.tdi(tdi).map_err(core_err)?.exchange.map(|e| e.op);
        let resend = waiting.is_some_and(|op| wanted.waits_in(op));
        // The host's STOP is not held up by the TD's START (the module lets it through while
        // the TD's request is only queued; ours: also once the host fetched it): the core's
        // unbind drops the START. Another host request waiting: one at a time, as the module.
        let start_waits = matches!(waiting, Some(DeviceOp::Start { .. }));
        if waiting.is_some() && !resend && !(wanted == Wanted::Unbind && start_waits) {
            return Err(named(status::TDX_DEVIF_TDISP_OUT_REQ, OPERAND_ID_RCX));
        }
        if wanted == Wanted::Start && td_request_now(&entry, waiting) != TdRequest::Requested {
            return Err(named(
                status::TDX_DEVIF_TDISP_INVALID_REQ_STS,
                OPERAND_ID_RCX,
            ));
        }
        let page = self.request_page(&table, r.r8, OPERAND_ID_R8)?;
        let tsm = self.tsm;
        if resend {
            return self.relayed(out, tdi, Some(page), |buf| {
                Ok(tsm.outstanding_request(tdi, buf).map(Completion::Relay))
            });
        }
        let outcome = match wanted {
            Wanted::Bind => {
                let td = self.td_of(&entry)?;
                self.relayed(out, tdi, Some(page), |buf| Ok(tsm.bind(tdi, td, buf)))?
            }
            Wanted::Unbind => self.relayed(out, tdi, Some(page), |buf| Ok(tsm.unbind(tdi, buf)))?,
            Wanted::Check => {
                self.relayed(
                    out,
                    tdi,
                    Some(page),
                    |buf| Ok(tsm.check_interface(tdi, buf)),
                )?
            }
            // A Requested TD request always has its START waiting (`td_request_now`).
            Wanted::Start => return Err(core_err(Error::Inconsistent)),
        };
        drop(table);
        Ok(match outcome {
            Outcome::Core(Err(Error::StreamCut)) => st(self.stream_not_live(tdi)),
            o => o,
        })
    }

    /// TDH.DEVIF.RESPONSE ([`TDH_DEVIF_RESPONSE`]). Order (the module's): RDX's format, R9,
    /// RDX's page, RCX, nothing outstanding, `td_flag`, R8; then the core.
    pub(crate) fn devif_response(
        &self,
        leaf: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        if r.rdx & RSP_IN_RESERVED != 0 {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        if r.r9 != 0 {
            return Err(st(invalid(OPERAND_ID_R9)));
        }
        let td_flag = r.rdx & REQ_IN_TD_FLAG != 0;
        let answer_at = r.rdx & RSP_IN_PA_MASK;
        if answer_at != 0 {
            self.host
                .probe_read(answer_at, MESSAGE_PAGE_BYTES)
                .map_err(|f| st(host_fault(f, OPERAND_ID_RDX)))?;
        }
        let mut table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
        let ex = self
            .tsm
            .tdi(tdi)
            .map_err(core_err)?
            .exchange
            .ok_or(named(status::TDX_DEVIF_TDISP_OUT_REQ, OPERAND_ID_RCX))?;
        let start = matches!(ex.op, DeviceOp::Start { .. });
        if start != td_flag {
            return Err(named(
                status::TDX_DEVIF_TDISP_INVALID_REQ_STS,
                OPERAND_ID_RDX,
            ));
        }
        // Ours: the next request needs a page whenever the operation may go on.
        let may_go_on =
            matches!(ex.op, DeviceOp::Bind { .. } | DeviceOp::Stop { .. }) || answer_at == 0;
        let page = match r.r8 {
            0 if may_go_on => return Err(st(invalid(OPERAND_ID_R8))),
            0 => None,
            raw => Some(self.request_page(&table, raw, OPERAND_ID_R8)?),
        };
        let mut answer = [0u8; MESSAGE_PAGE_BYTES];
        let len = if answer_at == 0 {
            None
        } else {
            // One read of the header, then of the object, into firmware memory.
            let head = answer
                .get_mut(..DOE_HEADER_BYTES)
                .ok_or(core_err(Error::Inconsistent))?;
            self.host
                .read(answer_at, head)
                .map_err(|f| st(host_fault(f, OPERAND_ID_RDX)))?;
            let dwords = head
                .get(4..8)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .ok_or(core_err(Error::Inconsistent))?
                & DOE_LENGTH_MASK;
            // Longer than the page (a length field of 0 is 2^18 dwords): the whole page,
            // which the core refuses as longer than any message (RelayMalformed).
            let len = usize::try_from(dwords)
                .ok()
                .and_then(|d| d.checked_mul(4))
                .filter(|l| *l <= MESSAGE_PAGE_BYTES)
                .unwrap_or(MESSAGE_PAGE_BYTES);
            let words = whole_words(len)
                .and_then(|w| answer.get_mut(..w))
                .ok_or(core_err(Error::Inconsistent))?;
            self.host
                .read(answer_at, words)
                .map_err(|f| st(host_fault(f, OPERAND_ID_RDX)))?;
            Some(len)
        };
        let tsm = self.tsm;
        let bytes = match len {
            None => None,
            Some(len) => Some(answer.get(..len).ok_or(core_err(Error::Inconsistent))?),
        };
        // STOP's answer goes on with the unbind, which may stop for an IOTLB invalidation (the
        // core's status names which).
        let outcome = self.relayed(out, tdi, page, |buf| {
            Ok(tsm.device_response(tdi, bytes, buf))
        })?;
        // The answer is taken: what it did must reach the host and the TD, so a TDI lock
        // another CPU holds for a moment is waited out (every holder only try-locks, so it
        // lets go), up to a bound past which the leaf answers BUSY as before.
        let after = tdi_after_response(|| tsm.tdi(tdi)).map_err(core_err)?;
        if let Outcome::Core(Ok(Completion::Done)) = outcome {
            let state = match ex.op {
                DeviceOp::Check | DeviceOp::Stop { confirm: true } => {
                    after.device_state.map_or(0, |s| s as u8)
                }
                _ => 0,
            };
            out.rcx = devif_rsp_out(operation_response(ex.op), 0, state);
        }
        // The TD's request ended (its START no longer waits): the TD reads the outcome.
        if start && after.exchange.is_none_or(|e| e.seq != ex.seq) {
            let status = match outcome {
                Outcome::Core(r) => status::encode(r, &crate::abi::operands(leaf)),
                Outcome::Status(s) => s,
            };
            let rsp = if status == TDX_SUCCESS { out.rcx } else { 0 };
            if let Some(Some(e)) = table.get_mut(usize::from(tdi.slot())) {
                e.td_request = TdRequest::Processed { status, out: rsp };
            }
        }
        Ok(outcome)
    }

    /// The guest's TDG.DEVIF.REQUEST / RESPONSE ([`TDG_DEVIF_REQUEST`],
    /// [`TDG_DEVIF_RESPONSE`]) from the TD `td` whose TDR page is `tdr`. Order: R9, RDX, RCX,
    /// the owner, the request state.
    pub(crate) fn devif_guest(
        &self,
        leaf: u16,
        td: GuestId,
        tdr: u64,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        if r.r9 != 0 {
            return Err(st(invalid(OPERAND_ID_R9)));
        }
        let starting = leaf == TDG_DEVIF_REQUEST;
        let rdx_ok = if starting {
            r.rdx == u64::from(TDISP_START_INTERFACE)
        } else {
            r.rdx == 0
        };
        if !rdx_ok {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        let mut table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, entry) = devif_at(&table, r.rcx).map_err(st)?;
        let own = entry.tdr.map(|t| t.as_u64()) == Some(tdr);
        let waiting = self.tsm.tdi(tdi).map_err(core_err)?.exchange.map(|e| e.op);
        let now = td_request_now(&entry, waiting);
        let slot = table
            .get_mut(usize::from(tdi.slot()))
            .and_then(Option::as_mut)
            .ok_or(core_err(Error::Inconsistent))?;
        if starting {
            if own && now != TdRequest::Available {
                return Err(named(
                    status::TDX_DEVIF_TDISP_INVALID_REQ_STS,
                    OPERAND_ID_RCX,
                ));
            }
            // The request is framed again when the host fetches it: this copy is dropped.
            // Another TD's call reaches the core only to be refused: the TDI is bound to its
            // own TD or to none, and a START waits for its owner alone.
            let mut buf = [0u8; crate::abi::REQUEST_BUFFER];
            return match self.tsm.guest_start(td, tdi, &mut buf) {
                Ok(Completion::Relay(_)) if own => {
                    slot.td_request = TdRequest::Requested;
                    Ok(Outcome::Status(TDX_SUCCESS))
                }
                Ok(_) => Err(core_err(Error::Inconsistent)),
                Err(Error::NotOwner) => {
                    Err(named(status::TDX_DEVIF_INVALID_METADATA, OPERAND_ID_RCX))
                }
                Err(e) => Err(core_err(e)),
            };
        }
        if !own {
            return Err(named(status::TDX_DEVIF_INVALID_METADATA, OPERAND_ID_RCX));
        }
        match now {
            TdRequest::Processed { status, out: rsp } => {
                slot.td_request = TdRequest::Available;
                // A failed start's status alone: RCX stays as the TD sent it.
                if status == TDX_SUCCESS {
                    out.rcx = rsp;
                }
                Ok(Outcome::Status(status))
            }
            _ => Err(named(
                status::TDX_DEVIF_TDISP_INVALID_REQ_STS,
                OPERAND_ID_RCX,
            )),
        }
    }
}

/// Attempts [`tdi_after_response`] makes before it gives up on a contended TDI lock (ours: a
/// holder keeps it for one core call, far fewer spins than this).
const TDI_READ_ATTEMPTS: u32 = 1 << 16;

/// `read` (the TDI's record after a device response was taken), retried while the TDI's lock
/// is held by another CPU, at most [`TDI_READ_ATTEMPTS`] times.
fn tdi_after_response<R>(
    mut read: impl FnMut() -> Result<R, tsm_core::Error>,
) -> Result<R, tsm_core::Error> {
    let mut left = TDI_READ_ATTEMPTS;
    loop {
        match read() {
            Err(tsm_core::Error::Busy(tsm_core::Operand::Tdi)) if left > 1 => {
                left = left.saturating_sub(1);
                core::hint::spin_loop();
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_core::{Error, Operand};

    /// A TDI lock held for a moment is waited out; one held past the bound is BUSY; any other
    /// answer (another lock's BUSY included) goes back at once.
    #[test]
    fn a_moment_of_contention_does_not_lose_a_taken_response() {
        let mut busy = 1000u32;
        let got = tdi_after_response(|| {
            if busy == 0 {
                return Ok(7);
            }
            busy -= 1;
            Err(Error::Busy(Operand::Tdi))
        });
        assert_eq!(got, Ok(7));
        let mut calls = 0u32;
        let forever = tdi_after_response::<u8>(|| {
            calls += 1;
            Err(Error::Busy(Operand::Tdi))
        });
        assert_eq!(forever, Err(Error::Busy(Operand::Tdi)));
        assert_eq!(calls, TDI_READ_ATTEMPTS);
        let mut calls = 0u32;
        let other = tdi_after_response::<u8>(|| {
            calls += 1;
            Err(Error::Busy(Operand::Device))
        });
        assert_eq!((other, calls), (Err(Error::Busy(Operand::Device)), 1));
    }
}
