//! The TDX SEAMCALL register ABI as a scenario backend: every operation is encoded as the
//! register block a host VMM would load before SEAMCALL (or a TD before TDCALL), run through
//! platform-tdx's dispatcher, and the 64-bit status in RAX decoded back to a core status with
//! `platform_tdx::status::decode`.
//!
//! Where the TDX status is coarser than the core's: OPERAND_INVALID on an address operand
//! decodes to `Misaligned` (the core's `InvalidPageSize` looks the same), and the TDI state
//! query returns the state's kind and owner but not an unbind's step or a block walk's
//! cursor (the backend reports `Unbinding { step: Stop }` and `Error { blocking: START }`).
//! A status `decode` does not know becomes `InvalidHandle`. Ranges that do not fit a
//! [`RangeList`] are refused here with `TooManyRanges` before any call.
//!
//! Test knobs (device events and faults, held TLB flushes) are not firmware leaves: they act
//! on the device model and the S-EPT directly.

use platform_tdx::abi::{self, Dispatcher, RangeList, SeamRegs, page_info};
use platform_tdx::ept::SeptEntry;
use platform_tdx::sept::{Sept, leaf_size};
use platform_tdx::status;
use tsm_core::device_model::{DeviceEvent, Misbehaviour, ModelDevice};
use tsm_core::lifecycle::{Cursor, UnbindStep};
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, InterfaceId, Leaf, LeafState, MmioRange,
    PageSize, RequesterId, TdiId, TdiState, Tsm, TsmResult,
};

use crate::backend::{Backend, FlushControl};

/// Host physical address of the backend's parameter page (range lists), far from every BAR
/// the scenarios use.
pub const PARAM_HPA: u64 = 0x7_0000_0000;

/// The firmware the backend drives.
pub type TdxFirmware<'m> = Tsm<Sept<'m>, ModelDevice>;

impl FlushControl for Sept<'_> {
    fn defer_flush(&mut self, guest: GuestId, defer: bool) {
        self.hold_flush(guest, defer);
    }
}

/// The TDX backend: a firmware instance and the host's parameter page.
pub struct TdxBackend<'t, 'm> {
    /// The firmware.
    pub tsm: &'t TdxFirmware<'m>,
    params: RangeList,
}

fn handle_reg<K>(h: tsm_core::Handle<K>) -> u64 {
    u64::from(h.slot())
}

impl<'t, 'm> TdxBackend<'t, 'm> {
    /// A backend over `tsm`.
    pub fn new(tsm: &'t TdxFirmware<'m>) -> Self {
        Self {
            tsm,
            params: RangeList::default(),
        }
    }

    /// One SEAMCALL of `leaf` with operands from `regs`; the registers as they come back.
    pub fn seamcall(&self, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        let host = abi::BufferMemory {
            base: PARAM_HPA,
            bytes: self.params.bytes(),
        };
        Dispatcher::new(self.tsm, host).seamcall(&mut regs);
        regs
    }

    /// One TDCALL of `leaf` from TD `td`.
    pub fn tdcall(&self, td: GuestId, leaf: u16, mut regs: SeamRegs) -> SeamRegs {
        regs.rax = u64::from(leaf);
        let host = abi::BufferMemory {
            base: PARAM_HPA,
            bytes: &[],
        };
        Dispatcher::new(self.tsm, host).tdcall(td, &mut regs);
        regs
    }

    fn outcome(leaf: u16, regs: &SeamRegs) -> TsmResult<Completion> {
        status::decode(regs.rax, &abi::operands(leaf)).unwrap_or(Err(Error::InvalidHandle))
    }

    fn call(&self, leaf: u16, regs: SeamRegs) -> TsmResult<SeamRegs> {
        let out = self.seamcall(leaf, regs);
        Self::outcome(leaf, &out).map(|_| out)
    }

    fn done(&self, leaf: u16, regs: SeamRegs) -> TsmResult<()> {
        self.call(leaf, regs).map(drop)
    }

    fn stage(&mut self, ranges: &[MmioRange]) -> TsmResult<()> {
        self.params = RangeList::from_ranges(ranges).ok_or(Error::TooManyRanges)?;
        Ok(())
    }
}

impl Backend for TdxBackend<'_, '_> {
    fn name(&self) -> &'static str {
        "tdx"
    }

    /// Ours: TSM.TD.CREATE.
    fn create_guest(&mut self) -> TsmResult<GuestId> {
        let out = self.call(abi::TSM_TD_CREATE, SeamRegs::default())?;
        GuestId::from_raw(out.rcx)
    }

    /// Ours: TSM.TD.DESTROY.
    fn destroy_guest(&mut self, guest: GuestId) -> TsmResult<()> {
        let rcx = handle_reg(guest);
        self.done(
            abi::TSM_TD_DESTROY,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )
    }

    /// TDH.SPDM.CREATE with the BARs in the parameter page.
    fn create_device(&mut self, rid: RequesterId, bars: &[MmioRange]) -> TsmResult<DeviceId> {
        self.stage(bars)?;
        let regs = SeamRegs {
            rcx: u64::from(rid.packed()),
            rdx: PARAM_HPA,
            ..SeamRegs::default()
        };
        DeviceId::from_raw(self.call(abi::TDH_SPDM_CREATE, regs)?.rcx)
    }

    /// TDH.SPDM.DELETE.
    fn remove_device(&mut self, device: DeviceId) -> TsmResult<()> {
        let rcx = handle_reg(device);
        self.done(
            abi::TDH_SPDM_DELETE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )
    }

    /// TDH.DEVIF.CREATE.
    fn create_tdi(&mut self, device: DeviceId, iface: InterfaceId) -> TsmResult<TdiId> {
        let regs = SeamRegs {
            rcx: handle_reg(device),
            rdx: u64::from(iface.packed()),
            ..SeamRegs::default()
        };
        TdiId::from_raw(self.call(abi::TDH_DEVIF_CREATE, regs)?.rcx)
    }

    /// TDH.DEVIF.REMOVE.
    fn remove_tdi(&mut self, tdi: TdiId) -> TsmResult<()> {
        let rcx = handle_reg(tdi);
        self.done(
            abi::TDH_DEVIF_REMOVE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )
    }

    /// The device model reports `report`; then ours: TSM.DEVIF.BIND, which locks the
    /// interface and reads the report from the device.
    fn bind(&mut self, tdi: TdiId, guest: GuestId, report: &[WireMmioRange]) -> TsmResult<()> {
        if let Ok(record) = self.tsm.tdi(tdi) {
            self.tsm
                .with_transport(|d| d.link_mut().set_report(record.iface, report))?;
        }
        let regs = SeamRegs {
            rcx: handle_reg(tdi),
            rdx: handle_reg(guest),
            ..SeamRegs::default()
        };
        self.done(abi::TSM_DEVIF_BIND, regs)
    }

    /// TDH.MMIO.MAP.
    fn map(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: handle_reg(guest),
            r8: hpa.as_u64(),
            r9: handle_reg(tdi),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_MAP, regs)
    }

    /// Ours, TDCALL from the guest: TSM.GUEST.DEVIF.START.
    fn start(&mut self, guest: GuestId, tdi: TdiId) -> TsmResult<()> {
        let leaf = abi::TSM_GUEST_DEVIF_START;
        let rcx = handle_reg(tdi);
        let out = self.tdcall(
            guest,
            leaf,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
        Self::outcome(leaf, &out).map(drop)
    }

    /// Ours: TSM.DEVIF.ERROR.
    fn device_error(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let rcx = handle_reg(tdi);
        let out = self.seamcall(
            abi::TSM_DEVIF_ERROR,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
        Self::outcome(abi::TSM_DEVIF_ERROR, &out)
    }

    /// Ours: TSM.DEVIF.CHECK (GET_DEVICE_INTERFACE_STATE from the device).
    fn check(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let regs = SeamRegs {
            rcx: handle_reg(tdi),
            ..SeamRegs::default()
        };
        let out = self.seamcall(abi::TSM_DEVIF_CHECK, regs);
        Self::outcome(abi::TSM_DEVIF_CHECK, &out)
    }

    /// Ours: TSM.DEVIF.UNBIND (INTERRUPTED_RESUMABLE is `Resumable`).
    fn unbind(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let rcx = handle_reg(tdi);
        let out = self.seamcall(
            abi::TSM_DEVIF_UNBIND,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
        Self::outcome(abi::TSM_DEVIF_UNBIND, &out)
    }

    /// Ours: TSM.DEVIF.UNBIND with RDX FORCE.
    fn unbind_force(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let out = self.seamcall(
            abi::TSM_DEVIF_UNBIND,
            SeamRegs {
                rcx: handle_reg(tdi),
                rdx: abi::UNBIND_FLAG_FORCE,
                ..SeamRegs::default()
            },
        );
        Self::outcome(abi::TSM_DEVIF_UNBIND, &out)
    }

    /// Ours: TSM.IDE.STREAM_SETUP.
    fn setup_stream(&mut self, device: DeviceId) -> TsmResult<()> {
        let out = self.seamcall(
            abi::TSM_IDE_STREAM_SETUP,
            SeamRegs {
                rcx: handle_reg(device),
                ..SeamRegs::default()
            },
        );
        Self::outcome(abi::TSM_IDE_STREAM_SETUP, &out).map(drop)
    }

    /// TDH.MMIO.UNMAP.
    fn host_unmap(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: handle_reg(guest),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_UNMAP, regs)
    }

    /// TDH.MMIO.BLOCK.
    fn host_block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: page_info(gpa, size),
            rdx: handle_reg(guest),
            ..SeamRegs::default()
        };
        self.done(abi::TDH_MMIO_BLOCK, regs)
    }

    /// Ours: TSM.MMIO.ZAP_CHECK.
    fn host_zap(&mut self, range: MmioRange) -> TsmResult<()> {
        let regs = SeamRegs {
            rcx: range.base().as_u64(),
            rdx: range.pages(),
            ..SeamRegs::default()
        };
        self.done(abi::TSM_MMIO_ZAP_CHECK, regs)
    }

    /// Ours: TSM.DEVIF.STATE.
    fn tdi_state(&mut self, tdi: TdiId) -> TsmResult<TdiState> {
        let rcx = handle_reg(tdi);
        let out = self.call(
            abi::TSM_DEVIF_STATE,
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        )?;
        let owner = GuestId::from_raw(out.r8);
        let code = out.rdx;
        Ok(match code {
            c if c == abi::TdiStateCode::Unbound as u64 => TdiState::Unbound,
            c if c == abi::TdiStateCode::Locked as u64 => TdiState::Locked { owner: owner? },
            c if c == abi::TdiStateCode::Run as u64 => TdiState::Run { owner: owner? },
            c if c == abi::TdiStateCode::Error as u64 => TdiState::Error {
                owner: owner?,
                blocking: (out.r9 != 0).then_some(Cursor::START),
            },
            c if c == abi::TdiStateCode::Unbinding as u64 => TdiState::Unbinding {
                owner: owner?,
                step: UnbindStep::Stop,
            },
            _ => return Err(Error::InvalidHandle),
        })
    }

    /// TDH.MEM.SEPT.RD at 4 KiB: the walk stops at the leaf covering `gpa`, if any.
    fn leaf(&mut self, guest: GuestId, gpa: Gpa) -> TsmResult<Option<Leaf>> {
        let page = Gpa::try_new(gpa.as_u64() & !PageSize::Size4K.offset_mask())?;
        let regs = SeamRegs {
            rcx: page_info(page, PageSize::Size4K),
            rdx: handle_reg(guest),
            ..SeamRegs::default()
        };
        let out = self.seamcall(abi::TDH_MEM_SEPT_RD, regs);
        match Self::outcome(abi::TDH_MEM_SEPT_RD, &out) {
            Ok(_) => {}
            Err(Error::NotMapped) => return Ok(None),
            Err(e) => return Err(e),
        }
        let level = u8::try_from(out.rdx & 0x7).map_err(|_| Error::InvalidPageSize)?;
        let entry = SeptEntry::from_bits(out.rcx);
        let state = entry.state(level);
        if !state.is_mmio_leaf() {
            return Ok(None);
        }
        let size = leaf_size(level).ok_or(Error::InvalidPageSize)?;
        Ok(Some(Leaf {
            guest,
            gpa: Gpa::try_new(gpa.as_u64() & !size.offset_mask())?,
            hpa: Hpa::try_new(entry.phys())?,
            size,
            state: if state.is_blocked() {
                LeafState::Blocked { epoch: out.r8 }
            } else {
                LeafState::Mapped
            },
        }))
    }

    fn device_event(&mut self, iface: InterfaceId, event: DeviceEvent) -> TsmResult<()> {
        self.tsm.with_transport(|d| d.event(iface, event))
    }

    fn device_misbehave(&mut self, iface: InterfaceId, how: Option<Misbehaviour>) -> TsmResult<()> {
        self.tsm
            .with_transport(|d| d.link_mut().set_misbehaviour(iface, how))
    }

    fn defer_flush(&mut self, guest: GuestId, defer: bool) -> TsmResult<()> {
        self.tsm
            .with_table(|t| FlushControl::defer_flush(t, guest, defer))
    }
}
