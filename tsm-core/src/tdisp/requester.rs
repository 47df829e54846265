//! The firmware as TDISP requester: [`TdispDevice`] over encoded messages and a link to the
//! device. Every answer is decoded and checked; a device that does not answer is retried a
//! bounded number of times and then reported, never waited for.

use super::message::{
    CapabilitiesRequest, LOCK_FLAG_NO_FW_UPDATE, LockParams, ReportRequest, Request, Response,
    decode_response, encode_request,
};
use super::report::{DeviceInterfaceReport, MAX_REPORT_BYTES, REPORT_PORTION, ReportAssembler};
use super::{HEADER_SIZE, NONCE_SIZE, TDISP_VERSION_1_0, WireError, error_code, function_id};
use crate::capacity::{MAX_RANGES_PER_TDI, MAX_TDIS};
use crate::lifecycle::TdispState;
use crate::transport::{DeviceFault, InterfaceId, ReportedRange, TdispDevice};
use zerocopy::little_endian::{U16, U32, U64};

/// How TDISP messages reach the device: in a real system an SPDM secured session relayed by the
/// host (DOE mailbox); in tests a device model.
pub trait TdispLink {
    /// Sends `request` and writes the answer to `response`, returning its length; `None` when
    /// no answer came within the link's own timeout.
    fn exchange(&mut self, request: &[u8], response: &mut [u8]) -> Option<usize>;
}

/// Attempts per request before a silent device is `NoResponse`.
pub const MAX_ATTEMPTS: u32 = 3;
/// Largest message either side sends: a header, the report portion head and one portion.
pub const MAX_MESSAGE_BYTES: usize = HEADER_SIZE + 4 + REPORT_PORTION as usize;

/// The TDISP requester over a link `L`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireTdisp<L> {
    link: L,
    nonces: heapless::Vec<(u32, [u8; NONCE_SIZE]), MAX_TDIS>,
    last_error: Option<WireError>,
}

impl<L: TdispLink> WireTdisp<L> {
    /// A requester that talks over `link`.
    pub const fn new(link: L) -> Self {
        Self {
            link,
            nonces: heapless::Vec::new(),
            last_error: None,
        }
    }

    /// The link (tests reach the device model through it).
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// The most recent wire-level error, for diagnostics.
    pub fn last_error(&self) -> Option<WireError> {
        self.last_error
    }

    fn fault(&mut self, e: WireError) -> DeviceFault {
        self.last_error = Some(e);
        match e {
            WireError::Refused { .. } => DeviceFault::Refused,
            _ => DeviceFault::Malformed,
        }
    }

    /// Sends `req` to `fid` and decodes the answer into `buf`.
    fn transact<'b>(
        &mut self,
        fid: u32,
        req: &Request,
        buf: &'b mut [u8; MAX_MESSAGE_BYTES],
    ) -> Result<Response<'b>, DeviceFault> {
        let mut out = [0u8; MAX_MESSAGE_BYTES];
        let len = encode_request(&mut out, fid, req).map_err(|e| self.fault(e))?;
        let sent = out.get(..len).ok_or(DeviceFault::Malformed)?;
        let mut answered = None;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(n) = self.link.exchange(sent, buf) {
                answered = Some(n);
                break;
            }
        }
        let n = answered.ok_or(DeviceFault::NoResponse)?;
        let Some(bytes) = buf.get(..n) else {
            return Err(self.fault(WireError::Long));
        };
        match decode_response(bytes, fid, req.code()) {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.last_error = Some(e);
                Err(match e {
                    WireError::Refused { .. } => DeviceFault::Refused,
                    _ => DeviceFault::Malformed,
                })
            }
        }
    }

    fn fid(&mut self, iface: InterfaceId) -> Result<u32, DeviceFault> {
        function_id(iface).map_err(|e| self.fault(e))
    }

    /// GET_TDISP_VERSION and GET_TDISP_CAPABILITIES before LOCK (PCIe 6.x 11.3.6-11.3.8): the
    /// device must speak TDISP 1.0 and support the lock flags this firmware sets.
    fn negotiate(&mut self, fid: u32) -> Result<(), DeviceFault> {
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let speaks_1_0 = match self.transact(fid, &Request::GetVersion, &mut buf)? {
            Response::Version(entries) => entries.contains(&TDISP_VERSION_1_0),
            _ => false,
        };
        if !speaks_1_0 {
            return Err(self.fault(WireError::Version(0)));
        }
        let caps = Request::GetCapabilities(CapabilitiesRequest {
            tsm_caps: U32::new(0),
        });
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        match self.transact(fid, &caps, &mut buf)? {
            Response::Capabilities(c)
                if c.lock_interface_flags_supported.get() & LOCK_FLAG_NO_FW_UPDATE != 0 =>
            {
                Ok(())
            }
            _ => Err(self.fault(WireError::Refused {
                code: error_code::UNSUPPORTED_REQUEST,
                data: 0,
            })),
        }
    }

    /// Reads the whole interface report, portion by portion.
    pub fn read_report(
        &mut self,
        iface: InterfaceId,
    ) -> Result<DeviceInterfaceReport, DeviceFault> {
        let fid = self.fid(iface)?;
        let mut report = ReportAssembler::new();
        // Each accepted portion adds at least one byte, so this many rounds always suffice.
        for _ in 0..=MAX_REPORT_BYTES {
            let offset = u16::try_from(report.offset())
                .map_err(|_| self.fault(WireError::ReportTooLarge))?;
            let req = Request::GetReport(ReportRequest {
                offset: U16::new(offset),
                length: U16::new(REPORT_PORTION),
            });
            let mut buf = [0u8; MAX_MESSAGE_BYTES];
            let done = match self.transact(fid, &req, &mut buf)? {
                Response::Report { portion, remainder }
                    if portion.len() <= usize::from(REPORT_PORTION) =>
                {
                    report.accept(portion, remainder)
                }
                Response::Report { .. } => Err(WireError::Long),
                _ => Err(WireError::UnexpectedType(0)),
            };
            match done {
                Ok(true) => {
                    return DeviceInterfaceReport::parse(report.bytes(), 0)
                        .map_err(DeviceFault::BadReport);
                }
                Ok(false) => {}
                Err(e) => return Err(self.fault(e)),
            }
        }
        Err(self.fault(WireError::ReportInconsistent))
    }
}

impl<L: TdispLink> TdispDevice for WireTdisp<L> {
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        let fid = self.fid(iface)?;
        self.negotiate(fid)?;
        // Addresses in the report are host physical addresses as they are: no reporting offset.
        let params = LockParams {
            flags: U16::new(LOCK_FLAG_NO_FW_UPDATE),
            default_stream_id: 0,
            reserved: 0,
            mmio_reporting_offset: U64::new(0),
            bind_p2p_address_mask: U64::new(0),
        };
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let Response::Lock(nonce) =
            self.transact(fid, &Request::LockInterface(params), &mut buf)?
        else {
            return Err(DeviceFault::Malformed);
        };
        self.nonces.retain(|(f, _)| *f != fid);
        self.nonces
            .push((fid, nonce))
            .map_err(|_| DeviceFault::Malformed)
    }

    fn interface_ranges(
        &mut self,
        iface: InterfaceId,
    ) -> Result<heapless::Vec<ReportedRange, MAX_RANGES_PER_TDI>, DeviceFault> {
        Ok(self.read_report(iface)?.reported_ranges())
    }

    fn start_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        let fid = self.fid(iface)?;
        // Without the nonce of a LOCK this firmware sent, the device would refuse anyway.
        let nonce = self
            .nonces
            .iter()
            .find(|(f, _)| *f == fid)
            .map(|(_, n)| *n)
            .ok_or(DeviceFault::Refused)?;
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        match self.transact(fid, &Request::Start(nonce), &mut buf)? {
            Response::Start => Ok(()),
            _ => Err(DeviceFault::Malformed),
        }
    }

    fn stop_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        let fid = self.fid(iface)?;
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let stopped = match self.transact(fid, &Request::Stop, &mut buf) {
            Ok(Response::Stop) => Ok(()),
            Ok(_) => Err(DeviceFault::Malformed),
            // STOP of an interface a reset already unlocked: done if the device says so.
            Err(DeviceFault::Refused)
                if matches!(
                    self.last_error,
                    Some(WireError::Refused {
                        code: error_code::INVALID_INTERFACE_STATE,
                        ..
                    })
                ) =>
            {
                match self.interface_state(iface)? {
                    TdispState::ConfigUnlocked => Ok(()),
                    _ => Err(DeviceFault::Refused),
                }
            }
            Err(e) => Err(e),
        };
        if stopped.is_ok() {
            self.nonces.retain(|(f, _)| *f != fid);
        }
        stopped
    }

    fn interface_state(&mut self, iface: InterfaceId) -> Result<TdispState, DeviceFault> {
        let fid = self.fid(iface)?;
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        match self.transact(fid, &Request::GetState, &mut buf)? {
            Response::State(s) => Ok(s),
            _ => Err(DeviceFault::Malformed),
        }
    }
}
