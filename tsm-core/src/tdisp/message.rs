//! The TDISP request and response messages (PCIe 6.x 11.3.6-11.3.15) and their codec. Both
//! directions are here: the firmware encodes requests and decodes responses; the device model
//! does the reverse with the same layouts. Nothing here panics on any input.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Header, NONCE_SIZE, TDISP_VERSION_1_0, WireError, request, response};
use crate::lifecycle::TdispState;

/// GET_TDISP_CAPABILITIES body (11.3.7): TSM_CAPS.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CapabilitiesRequest {
    /// TSM capabilities (none defined in 1.0).
    pub tsm_caps: U32,
}

/// TDISP_CAPABILITIES body (11.3.8).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Capabilities {
    /// DSM_CAPS.
    pub dsm_caps: U32,
    /// REQ_MSGS_SUPPORTED: bit n set when request code 0x80 + n is supported.
    pub req_msgs_supported: [u8; 16],
    /// LOCK_INTERFACE_FLAGS_SUPPORTED.
    pub lock_interface_flags_supported: U16,
    /// Reserved.
    pub reserved: [u8; 3],
    /// DEV_ADDR_WIDTH.
    pub dev_addr_width: u8,
    /// NUM_REQ_THIS.
    pub num_req_this: u8,
    /// NUM_REQ_ALL.
    pub num_req_all: u8,
}

/// LOCK_INTERFACE_REQUEST body (11.3.9): LOCK_INTERFACE_PARAM.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LockParams {
    /// FLAGS (NO_FW_UPDATE bit 0, SYSTEM_CACHE_LINE_SIZE bit 1, LOCK_MSIX bit 2, BIND_P2P bit 3,
    /// ALL_REQUEST_REDIRECT bit 4).
    pub flags: U16,
    /// StreamIDForDefaultStream.
    pub default_stream_id: u8,
    /// Reserved.
    pub reserved: u8,
    /// MMIO_REPORTING_OFFSET: added by the device to every address in the report.
    pub mmio_reporting_offset: U64,
    /// BIND_P2P_ADDRESS_MASK.
    pub bind_p2p_address_mask: U64,
}

/// LOCK_INTERFACE flag NO_FW_UPDATE: no device firmware update while locked (11.3.9).
pub const LOCK_FLAG_NO_FW_UPDATE: u16 = 1 << 0;

/// GET_DEVICE_INTERFACE_REPORT body (11.3.11).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReportRequest {
    /// Offset of the requested portion in the report.
    pub offset: U16,
    /// Most bytes wanted.
    pub length: U16,
}

/// DEVICE_INTERFACE_REPORT fixed body (11.3.12), followed by PORTION_LENGTH report bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReportPortionHead {
    /// Bytes of report in this message.
    pub portion_length: U16,
    /// Bytes of report after this portion.
    pub remainder_length: U16,
}

/// TDISP_ERROR fixed body (11.3.16), optionally followed by extended error data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ErrorBody {
    /// ERROR_CODE.
    pub code: U32,
    /// ERROR_DATA.
    pub data: U32,
}

const _: () = {
    assert!(core::mem::size_of::<CapabilitiesRequest>() == 4);
    assert!(core::mem::size_of::<Capabilities>() == 28);
    assert!(core::mem::size_of::<LockParams>() == 20);
    assert!(core::mem::size_of::<ReportRequest>() == 4);
    assert!(core::mem::size_of::<ReportPortionHead>() == 4);
    assert!(core::mem::size_of::<ErrorBody>() == 8);
};

/// A request, as the firmware sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// GET_TDISP_VERSION.
    GetVersion,
    /// GET_TDISP_CAPABILITIES.
    GetCapabilities(CapabilitiesRequest),
    /// LOCK_INTERFACE_REQUEST.
    LockInterface(LockParams),
    /// GET_DEVICE_INTERFACE_REPORT.
    GetReport(ReportRequest),
    /// GET_DEVICE_INTERFACE_STATE.
    GetState,
    /// START_INTERFACE_REQUEST with the nonce LOCK_INTERFACE returned.
    Start([u8; NONCE_SIZE]),
    /// STOP_INTERFACE_REQUEST.
    Stop,
}

/// A response, as the device sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// TDISP_VERSION: the version entries.
    Version(&'a [u8]),
    /// TDISP_CAPABILITIES.
    Capabilities(Capabilities),
    /// LOCK_INTERFACE_RESPONSE: START_INTERFACE_NONCE.
    Lock([u8; NONCE_SIZE]),
    /// DEVICE_INTERFACE_REPORT: a portion and how much remains.
    Report {
        /// The report bytes in this message.
        portion: &'a [u8],
        /// REMAINDER_LENGTH.
        remainder: u16,
    },
    /// DEVICE_INTERFACE_STATE.
    State(TdispState),
    /// START_INTERFACE_RESPONSE.
    Start,
    /// STOP_INTERFACE_RESPONSE.
    Stop,
    /// TDISP_ERROR.
    Error(ErrorBody),
}

impl Request {
    /// The request code.
    pub const fn code(&self) -> u8 {
        match self {
            Request::GetVersion => request::GET_VERSION,
            Request::GetCapabilities(_) => request::GET_CAPABILITIES,
            Request::LockInterface(_) => request::LOCK_INTERFACE,
            Request::GetReport(_) => request::GET_DEVICE_INTERFACE_REPORT,
            Request::GetState => request::GET_DEVICE_INTERFACE_STATE,
            Request::Start(_) => request::START_INTERFACE,
            Request::Stop => request::STOP_INTERFACE,
        }
    }
}

impl Response<'_> {
    /// The response code.
    pub const fn code(&self) -> u8 {
        match self {
            Response::Version(_) => response::VERSION,
            Response::Capabilities(_) => response::CAPABILITIES,
            Response::Lock(_) => response::LOCK_INTERFACE,
            Response::Report { .. } => response::DEVICE_INTERFACE_REPORT,
            Response::State(_) => response::DEVICE_INTERFACE_STATE,
            Response::Start => response::START_INTERFACE,
            Response::Stop => response::STOP_INTERFACE,
            Response::Error(_) => response::TDISP_ERROR,
        }
    }
}

/// The response code that answers request code `request` (bit 7 cleared, Table 11-5).
pub const fn response_code_for(request: u8) -> u8 {
    request & 0x7f
}

/// Appends to a buffer, never past its end.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8], message_type: u8, function_id: u32) -> Result<Self, WireError> {
        let mut w = Writer { out, len: 0 };
        let header = Header {
            version: TDISP_VERSION_1_0,
            message_type,
            reserved: [0; 2],
            function_id: U32::new(function_id),
            reserved_id: [0; 8],
        };
        w.put(header.as_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self
            .len
            .checked_add(bytes.len())
            .ok_or(WireError::BufferTooSmall)?;
        self.out
            .get_mut(self.len..end)
            .ok_or(WireError::BufferTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// Encodes `req` for interface `function_id` into `out`; returns its length.
pub fn encode_request(out: &mut [u8], function_id: u32, req: &Request) -> Result<usize, WireError> {
    let mut w = Writer::new(out, req.code(), function_id)?;
    match req {
        Request::GetVersion | Request::GetState | Request::Stop => {}
        Request::GetCapabilities(body) => w.put(body.as_bytes())?,
        Request::LockInterface(body) => w.put(body.as_bytes())?,
        Request::GetReport(body) => w.put(body.as_bytes())?,
        Request::Start(nonce) => w.put(nonce)?,
    }
    Ok(w.len)
}

/// Encodes `resp` for interface `function_id` into `out`; returns its length.
pub fn encode_response(
    out: &mut [u8],
    function_id: u32,
    resp: &Response<'_>,
) -> Result<usize, WireError> {
    let mut w = Writer::new(out, resp.code(), function_id)?;
    match resp {
        Response::Version(entries) => {
            w.put(&[u8::try_from(entries.len()).map_err(|_| WireError::Long)?])?;
            w.put(entries)?;
        }
        Response::Capabilities(body) => w.put(body.as_bytes())?,
        Response::Lock(nonce) => w.put(nonce)?,
        Response::Report { portion, remainder } => {
            let head = ReportPortionHead {
                portion_length: U16::new(
                    u16::try_from(portion.len()).map_err(|_| WireError::Long)?,
                ),
                remainder_length: U16::new(*remainder),
            };
            w.put(head.as_bytes())?;
            w.put(portion)?;
        }
        Response::State(state) => w.put(&[*state as u8])?,
        Response::Start | Response::Stop => {}
        Response::Error(body) => w.put(body.as_bytes())?,
    }
    Ok(w.len)
}

/// Splits a message into its checked header and body.
fn split(bytes: &[u8]) -> Result<(Header, &[u8]), WireError> {
    let (header, body) = Header::read_from_prefix(bytes).map_err(|_| WireError::Short)?;
    if header.version != TDISP_VERSION_1_0 {
        return Err(WireError::Version(header.version));
    }
    if header.reserved != [0; 2] || header.reserved_id != [0; 8] {
        return Err(WireError::Reserved);
    }
    Ok((header, body))
}

/// A body of exactly one `T`.
fn exact<T: FromBytes + KnownLayout + Immutable>(body: &[u8]) -> Result<T, WireError> {
    match body.len().cmp(&core::mem::size_of::<T>()) {
        core::cmp::Ordering::Less => Err(WireError::Short),
        core::cmp::Ordering::Greater => Err(WireError::Long),
        core::cmp::Ordering::Equal => T::read_from_bytes(body).map_err(|_| WireError::Short),
    }
}

fn empty(body: &[u8]) -> Result<(), WireError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(WireError::Long)
    }
}

/// Decodes a request (the device side); returns its FUNCTION_ID and the request.
pub fn decode_request(bytes: &[u8]) -> Result<(u32, Request), WireError> {
    let (header, body) = split(bytes)?;
    let req = match header.message_type {
        request::GET_VERSION => empty(body).map(|()| Request::GetVersion)?,
        request::GET_CAPABILITIES => Request::GetCapabilities(exact(body)?),
        request::LOCK_INTERFACE => {
            let params: LockParams = exact(body)?;
            if params.reserved != 0 {
                return Err(WireError::Reserved);
            }
            Request::LockInterface(params)
        }
        request::GET_DEVICE_INTERFACE_REPORT => Request::GetReport(exact(body)?),
        request::GET_DEVICE_INTERFACE_STATE => empty(body).map(|()| Request::GetState)?,
        request::START_INTERFACE => Request::Start(exact(body)?),
        request::STOP_INTERFACE => empty(body).map(|()| Request::Stop)?,
        other => return Err(WireError::UnknownType(other)),
    };
    Ok((header.function_id.get(), req))
}

/// Decodes the answer to request code `request_code` sent to `function_id` (the firmware
/// side). A TDISP_ERROR answer is `Err(Refused)`; any other answer than the one expected, or
/// about another interface, is an error too.
pub fn decode_response(
    bytes: &[u8],
    function_id: u32,
    request_code: u8,
) -> Result<Response<'_>, WireError> {
    let (header, body) = split(bytes)?;
    if header.function_id.get() != function_id {
        return Err(WireError::WrongInterface(header.function_id.get()));
    }
    if header.message_type == response::TDISP_ERROR {
        let (err, _extended) = ErrorBody::read_from_prefix(body).map_err(|_| WireError::Short)?;
        return Err(WireError::Refused {
            code: err.code.get(),
            data: err.data.get(),
        });
    }
    if header.message_type != response_code_for(request_code) {
        return Err(match header.message_type {
            response::VERSION..=response::STOP_INTERFACE => {
                WireError::UnexpectedType(header.message_type)
            }
            other => WireError::UnknownType(other),
        });
    }
    Ok(match header.message_type {
        response::VERSION => {
            let (&count, entries) = body.split_first().ok_or(WireError::Short)?;
            match entries.len().cmp(&usize::from(count)) {
                core::cmp::Ordering::Less => return Err(WireError::Short),
                core::cmp::Ordering::Greater => return Err(WireError::Long),
                core::cmp::Ordering::Equal => Response::Version(entries),
            }
        }
        response::CAPABILITIES => Response::Capabilities(exact(body)?),
        response::LOCK_INTERFACE => Response::Lock(exact(body)?),
        response::DEVICE_INTERFACE_REPORT => {
            let (head, rest) =
                ReportPortionHead::read_from_prefix(body).map_err(|_| WireError::Short)?;
            match rest.len().cmp(&usize::from(head.portion_length.get())) {
                core::cmp::Ordering::Less => return Err(WireError::Short),
                core::cmp::Ordering::Greater => return Err(WireError::Long),
                core::cmp::Ordering::Equal => Response::Report {
                    portion: rest,
                    remainder: head.remainder_length.get(),
                },
            }
        }
        response::DEVICE_INTERFACE_STATE => {
            let [state] = exact::<[u8; 1]>(body)?;
            Response::State(match state {
                0 => TdispState::ConfigUnlocked,
                1 => TdispState::ConfigLocked,
                2 => TdispState::Run,
                3 => TdispState::Error,
                other => return Err(WireError::BadState(other)),
            })
        }
        response::START_INTERFACE => empty(body).map(|()| Response::Start)?,
        response::STOP_INTERFACE => empty(body).map(|()| Response::Stop)?,
        other => return Err(WireError::UnknownType(other)),
    })
}
