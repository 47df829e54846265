//! The SPDM request and response buffers of `spdm_ctrl` as the Linux SEV-TIO host reads and
//! writes them (sev-linux-buffers.md sections 2.2, 2.3 and 3; AMDESE/linux-kvm @16f379f5
//! `sev-dev-tio.c` `sev_tio_do_cmd`, `sev_tio_continue`, `sev-dev-tsm.c` `sev_tio_spdm_cmd`).
//!
//! The core hands the firmware a whole DOE data object (its 8-byte header, then a DSP0277
//! record, type 2 secured CMA/SPDM). On SEV-TIO the host's `pci_doe()` adds and strips the
//! DOE header itself, so the buffers carry only the payload:
//!
//! | offset | request (`spdm_ctrl.req`, written by the firmware) | response (`spdm_ctrl.resp`, written by the host) |
//! |--------|-----------------------------------------------------|--------------------------------------------------|
//! | 0x00 | `sla_buffer_hdr`: `capacity_sz` 4096, `payload_sz` = `ALIGN(dobj.length, 32)`, flags 0 | as the host leaves it; `payload_sz` = `dobj.length`, flags 0 |
//! | 0x40 | `spdm_dobj_hdr`: id 1 (REQ), `length` = 0x10 + payload, version 1.0, `data_type` 2 | id 2 (RESP), `length` = `ALIGN(0x10 + n, 32)`, version 1.0, `data_type` 2; `length` 0 or 0x10: no answer |
//! | 0x50 | the DOE payload (the secured record, dword padded) | the device's DOE payload, `n` bytes, then whatever the page held |
//!
//! Linux relays `dobj.length - 0x10` bytes from `req + 0x50` with DOE type `data_type`, so
//! the request's length is exact; the response's length is rounded up to 32 bytes, so the
//! firmware finds its end from the secured record's own header (its `Length` field) and takes
//! exactly the DOE payload: the record and its dword padding. A response whose rounded length
//! is not exactly what that payload gives is refused as garbled ([`Refused::Malformed`]); a
//! consistent response data object longer than the firmware takes ([`MAX_DOBJ`]) is
//! [`Refused::TooLarge`] (RESPONSE_TOO_LARGE).

use tsm_core::relay::{MAX_RELAY_BYTES, doe};
use tsm_core::{Error, TsmResult};
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    self, DOBJ_DATA_TYPE_SECURE_SPDM, DOBJ_ID_REQ, DOBJ_ID_RESP, DOBJ_OFFSET, DOBJ_VERSION,
    DobjHdr, SLA_FLAG_ENCRYPTION, SLA_PAYLOAD_ALIGN, SPDM_PAYLOAD_OFFSET, SlaBufferHdr,
};

/// Size of the data object header.
const DOBJ_HDR: usize = core::mem::size_of::<DobjHdr>();
/// Largest DOE payload the relay carries: the core's largest object without its header.
pub const MAX_PAYLOAD: usize = MAX_RELAY_BYTES - doe::HEADER_SIZE;
/// Largest data object (header and payload) either buffer holds, rounded as Linux rounds a
/// response.
pub const MAX_DOBJ: usize = match align32(DOBJ_HDR + MAX_PAYLOAD) {
    Some(n) => n,
    None => 0,
};
const _: () = assert!(MAX_DOBJ >= DOBJ_HDR + MAX_PAYLOAD);
/// Bytes of an SLA buffer the relay uses: its header and the largest data object. The firmware
/// writes at most this much of `spdm_ctrl.req` and reads exactly this much of `spdm_ctrl.resp`.
pub const WINDOW: usize = DOBJ_OFFSET + MAX_DOBJ;
// Both fit the single 4K data page an SLA names.
const _: () = assert!(WINDOW <= abi::PAGE_4K as usize);
const _: () = assert!(SPDM_PAYLOAD_OFFSET == DOBJ_OFFSET + DOBJ_HDR);

/// `n` rounded up to [`SLA_PAYLOAD_ALIGN`]; `None` on overflow.
const fn align32(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(SLA_PAYLOAD_ALIGN)
}

/// `n` rounded up to a DOE dword; `None` on overflow.
fn align4(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(4)
}

/// Writes the core's relayed DOE `object` as the request Linux reads: header, data object
/// header, payload, zero padding to `payload_sz`. Returns the bytes of `page` to write.
/// `Inconsistent` if `object` is not a DOE object the core could have made.
pub fn encode_request(object: &[u8], page: &mut [u8; WINDOW]) -> TsmResult<usize> {
    let payload = doe::decode(object, doe::TYPE_SECURED_SPDM).map_err(|_| Error::Inconsistent)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::Inconsistent);
    }
    let dobj_len = DOBJ_HDR
        .checked_add(payload.len())
        .ok_or(Error::Inconsistent)?;
    let payload_sz = align32(dobj_len).ok_or(Error::Inconsistent)?;
    let total = DOBJ_OFFSET
        .checked_add(payload_sz)
        .ok_or(Error::Inconsistent)?;
    let hdr = SlaBufferHdr {
        capacity_sz: u32_of(abi::PAGE_4K as usize)?.into(),
        payload_sz: u32_of(payload_sz)?.into(),
        ..SlaBufferHdr::default()
    };
    let dobj = DobjHdr {
        id: DOBJ_ID_REQ.into(),
        length: u32_of(dobj_len)?.into(),
        version_minor: DOBJ_VERSION.0,
        version_major: DOBJ_VERSION.1,
        data_type: DOBJ_DATA_TYPE_SECURE_SPDM,
        reserved: [0; 5],
    };
    page.fill(0);
    let (head, rest) = page.split_at_mut(DOBJ_OFFSET);
    head.copy_from_slice(hdr.as_bytes());
    let (dobj_bytes, data) = rest.split_at_mut(DOBJ_HDR);
    dobj_bytes.copy_from_slice(dobj.as_bytes());
    data.get_mut(..payload.len())
        .ok_or(Error::Inconsistent)?
        .copy_from_slice(payload);
    Ok(total)
}

fn u32_of(n: usize) -> TsmResult<u32> {
    u32::try_from(n).map_err(|_| Error::Inconsistent)
}

/// Why the host's `spdm_ctrl.resp` is refused. Either way nothing changes and the TDI's request
/// stays outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not the device's answer to the outstanding request (garbled, inconsistent headers,
    /// stale, another TDI's): the core's `RelayMalformed`, INVALID_SPDM_RESPONSE (ours).
    Malformed,
    /// A response data object whose headers agree (id RESP, version 1.0, secured SPDM, not
    /// encrypted, `payload_sz` = `length`) but which is longer than [`MAX_DOBJ`], the largest
    /// answer the firmware reads: psp-sev.h `SEV_RET_SEV_STATUS_RESPONSE_TOO_LARGE` (0x3F).
    TooLarge,
}

/// What the host left in `spdm_ctrl.resp` (`window`, read once): `Ok(None)` when it holds no
/// answer (data object length 0 or header only: the device did not answer), else the device's
/// DOE object rebuilt in `out` (the DOE header the host's `pci_doe` stripped, then the payload)
/// and its length, for `Tsm::device_response`. `record_len` is the session's
/// (`SecureSession::record_len`): where the secured record in the payload ends.
///
/// [`Refused::Malformed`] (nothing is changed by a refusal here; the request stays
/// outstanding): not a response data object (id, version), an encrypted buffer, another data
/// type than secured SPDM, `payload_sz` not the object's length, a payload too short for its
/// record, or a length other than Linux's rounding of the record's payload. Only then
/// [`Refused::TooLarge`]: the headers agree but the object is longer than [`MAX_DOBJ`].
pub fn decode_response(
    window: &[u8; WINDOW],
    record_len: impl FnOnce(&[u8]) -> Option<usize>,
    out: &mut [u8; MAX_RELAY_BYTES],
) -> Result<Option<usize>, Refused> {
    let malformed = Refused::Malformed;
    let (head, rest) = window.split_at(DOBJ_OFFSET);
    let (dobj_bytes, data) = rest.split_at(DOBJ_HDR);
    let hdr = SlaBufferHdr::read_from_bytes(head).map_err(|_| malformed)?;
    let dobj = DobjHdr::read_from_bytes(dobj_bytes).map_err(|_| malformed)?;
    if dobj.id.get() != DOBJ_ID_RESP || (dobj.version_minor, dobj.version_major) != DOBJ_VERSION {
        return Err(malformed);
    }
    let length = usize::try_from(dobj.length.get()).map_err(|_| malformed)?;
    if length <= DOBJ_HDR {
        return Ok(None);
    }
    if hdr.flags.get() & SLA_FLAG_ENCRYPTION != 0
        || dobj.data_type != DOBJ_DATA_TYPE_SECURE_SPDM
        || usize::try_from(hdr.payload_sz.get()).ok() != Some(length)
    {
        return Err(malformed);
    }
    if length > MAX_DOBJ {
        return Err(Refused::TooLarge);
    }
    let payload = data
        .get(..length.checked_sub(DOBJ_HDR).ok_or(malformed)?)
        .ok_or(malformed)?;
    let record = record_len(payload).ok_or(malformed)?;
    let doe_payload = align4(record).ok_or(malformed)?;
    let exact = DOBJ_HDR
        .checked_add(doe_payload)
        .and_then(align32)
        .ok_or(malformed)?;
    if doe_payload > payload.len() || exact != length {
        return Err(malformed);
    }
    let body = payload.get(..doe_payload).ok_or(malformed)?;
    // The core checks the record's padding, its session and everything inside.
    doe::encode(out, doe::TYPE_SECURED_SPDM, body)
        .map(Some)
        .map_err(|_| malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose header says it is `len` bytes: its first two bytes, for these tests.
    fn toy_len(bytes: &[u8]) -> Option<usize> {
        Some(usize::from(u16::from_le_bytes([
            *bytes.first()?,
            *bytes.get(1)?,
        ])))
    }

    fn object(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_RELAY_BYTES];
        let n = doe::encode(&mut out, doe::TYPE_SECURED_SPDM, payload).unwrap();
        out.truncate(n);
        out
    }

    /// A response buffer as Linux leaves it after relaying `payload` (n bytes) over stale
    /// bytes `stale`.
    fn response(payload: &[u8], stale: u8) -> [u8; WINDOW] {
        let mut w = [stale; WINDOW];
        let len = align32(DOBJ_HDR + payload.len()).unwrap() as u32;
        let hdr = SlaBufferHdr {
            capacity_sz: 4096.into(),
            payload_sz: len.into(),
            ..SlaBufferHdr::default()
        };
        let dobj = DobjHdr {
            id: DOBJ_ID_RESP.into(),
            length: len.into(),
            version_minor: 0,
            version_major: 1,
            data_type: 2,
            reserved: [0; 5],
        };
        w[..0x40].copy_from_slice(hdr.as_bytes());
        w[0x40..0x50].copy_from_slice(dobj.as_bytes());
        w[0x50..0x50 + payload.len()].copy_from_slice(payload);
        w
    }

    #[test]
    fn a_request_is_laid_out_as_linux_reads_it() {
        let payload: Vec<u8> = (0..44u8).collect();
        let mut page = [0xEEu8; WINDOW];
        let n = encode_request(&object(&payload), &mut page).unwrap();
        assert_eq!(n, 0x40 + 64);
        assert_eq!(&page[0..4], &4096u32.to_le_bytes());
        assert_eq!(&page[4..8], &64u32.to_le_bytes());
        assert!(page[8..0x40].iter().all(|b| *b == 0));
        assert_eq!(&page[0x40..0x44], &1u32.to_le_bytes());
        assert_eq!(&page[0x44..0x48], &(0x10u32 + 44).to_le_bytes());
        assert_eq!((page[0x48], page[0x49], page[0x4A]), (0, 1, 2));
        assert!(page[0x4B..0x50].iter().all(|b| *b == 0));
        assert_eq!(&page[0x50..0x50 + 44], &payload[..]);
        assert!(page[0x50 + 44..].iter().all(|b| *b == 0));
        // Not a type 2 object: the firmware's own bytes are wrong.
        let mut other = object(&payload);
        other[2] = 1;
        assert_eq!(encode_request(&other, &mut page), Err(Error::Inconsistent));
    }

    #[test]
    fn a_response_is_the_record_and_its_dword_padding_only() {
        // A 42-byte record: 44 bytes of DOE payload, Linux's length 0x40.
        let mut payload = vec![0u8; 44];
        payload[0] = 42;
        payload[2..42].fill(7);
        let mut out = [0u8; MAX_RELAY_BYTES];
        let n = decode_response(&response(&payload, 0x5A), toy_len, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(&out[..n], &object(&payload)[..]);
        // Empty: no answer.
        let mut empty = response(&payload, 0);
        empty[0x44..0x48].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(decode_response(&empty, toy_len, &mut out), Ok(None));
        empty[0x44..0x48].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_response(&empty, toy_len, &mut out), Ok(None));
    }

    #[test]
    fn a_response_that_is_not_one_is_relay_malformed() {
        let mut payload = vec![0u8; 44];
        payload[0] = 42;
        let good = response(&payload, 0);
        let mut out = [0u8; MAX_RELAY_BYTES];
        let refused = |w: [u8; WINDOW], f: &dyn Fn(&[u8]) -> Option<usize>| {
            let mut out = [0u8; MAX_RELAY_BYTES];
            assert_eq!(decode_response(&w, f, &mut out), Err(Refused::Malformed));
        };
        let with = |at: usize, bytes: &[u8]| {
            let mut w = good;
            w[at..at + bytes.len()].copy_from_slice(bytes);
            w
        };
        refused(with(0x40, &1u32.to_le_bytes()), &toy_len); // the request's id
        refused(with(0x48, &[1]), &toy_len); // version 1.1
        refused(with(0x4A, &[1]), &toy_len); // plain SPDM
        refused(with(0x08, &[1]), &toy_len); // encrypted
        refused(with(0x04, &0x60u32.to_le_bytes()), &toy_len); // payload_sz disagrees
        // Longer than any answer, with headers that disagree: garbled, not too large.
        let big = (MAX_DOBJ + 32) as u32;
        refused(with(0x44, &big.to_le_bytes()), &toy_len);
        // Padded past Linux's rounding.
        let mut w = with(0x44, &0x60u32.to_le_bytes());
        w[4..8].copy_from_slice(&0x60u32.to_le_bytes());
        refused(w, &toy_len);
        // A record longer than the payload, or one the session cannot read.
        refused(with(0x50, &[200]), &toy_len);
        refused(good, &|_| None);
        assert!(decode_response(&good, toy_len, &mut out).unwrap().is_some());
    }

    #[test]
    fn a_consistent_response_longer_than_the_firmware_takes_is_too_large() {
        let mut payload = vec![0u8; 44];
        payload[0] = 42;
        let good = response(&payload, 0);
        // Just past MAX_DOBJ, the whole page Linux sizes `resp` by (`spdm_req_size_max`),
        // past it, and the largest u32.
        let page = abi::SPDM_RSP_SIZE - DOBJ_OFFSET as u32;
        for len in [MAX_DOBJ as u32 + 32, page, page + 32, u32::MAX] {
            let mut w = good;
            w[0x44..0x48].copy_from_slice(&len.to_le_bytes());
            w[4..8].copy_from_slice(&len.to_le_bytes());
            let mut out = [0u8; MAX_RELAY_BYTES];
            assert_eq!(
                decode_response(&w, toy_len, &mut out),
                Err(Refused::TooLarge),
                "{len:#x}"
            );
            assert!(out.iter().all(|b| *b == 0));
            // The same length with a garbled header is garbled first.
            w[0x4A] = 1;
            assert_eq!(
                decode_response(&w, toy_len, &mut out),
                Err(Refused::Malformed)
            );
        }
    }
}
