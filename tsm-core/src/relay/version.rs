//! SPDM version negotiation in the clear (DSP0274 1.2.x, 10.3 GET_VERSION and VERSION): the
//! first message of every SPDM connection, carried unsecured in a DOE object of type 1
//! (CMA/SPDM, [`doe::TYPE_SPDM`]). The TDX front end sends GET_VERSION at TDH.SPDM.CONNECT and
//! checks that the device offers SPDM 1.2; the model device answers it ([`respond`]) beside
//! its secured TDISP path.

use crate::relay::doe;
use crate::relay::spdm::SPDM_VERSION_1_2;

/// SPDMVersion of GET_VERSION and VERSION: always 1.0 (DSP0274 1.2, 10.3: "the
/// SPDMVersion field ... shall be 0x10" for these two messages).
pub const SPDM_VERSION_1_0: u8 = 0x10;
/// GET_VERSION request code (DSP0274 1.2, Table 4 "SPDM request codes").
pub const GET_VERSION: u8 = 0x84;
/// VERSION response code (DSP0274 1.2, Table 5 "SPDM response codes").
pub const VERSION: u8 = 0x04;
/// Bytes of GET_VERSION: SPDMVersion, code, Param1, Param2 (DSP0274 1.2, Table 9).
pub const GET_VERSION_BYTES: usize = 4;
/// Bytes of VERSION before its entries: SPDMVersion, code, Param1, Param2, Reserved,
/// VersionNumberEntryCount (DSP0274 1.2, Table 10).
pub const VERSION_HEAD_BYTES: usize = 6;
/// Bytes of one VersionNumberEntry: major 15:12, minor 11:8, update 7:4, alpha 3:0
/// (DSP0274 1.2, Table 11), little endian.
pub const VERSION_ENTRY_BYTES: usize = 2;
/// The model device's VERSION: it offers 1.2 only (ours, the version its TDISP path speaks).
const MODEL_VERSIONS: [u16; 1] = [(SPDM_VERSION_1_2 as u16) << 8];
/// The DOE object of GET_VERSION: header and message, a whole number of dwords.
pub const GET_VERSION_OBJECT_BYTES: usize = doe::HEADER_SIZE + GET_VERSION_BYTES;

/// Why bytes are not a VERSION response offering SPDM 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionError {
    /// Not a DOE object of type 1 exactly as long as its header says.
    Doe(doe::DoeError),
    /// Not VERSION (SPDMVersion 1.0, code 0x04, Param1/Param2/Reserved zero), or its length
    /// is not its entry count's.
    Malformed,
    /// A well-formed VERSION that does not offer SPDM 1.2.
    No12,
}

/// Writes the DOE object of GET_VERSION at `out`; its length ([`GET_VERSION_OBJECT_BYTES`]).
pub fn get_version(out: &mut [u8]) -> Result<usize, doe::DoeError> {
    doe::encode(out, doe::TYPE_SPDM, &[SPDM_VERSION_1_0, GET_VERSION, 0, 0])
}

/// Checks that `object` (a whole DOE object as the host handed it in) is a VERSION response
/// offering SPDM 1.2.
pub fn check_version(object: &[u8]) -> Result<(), VersionError> {
    let body = doe::decode(object, doe::TYPE_SPDM).map_err(VersionError::Doe)?;
    let (head, rest) = body
        .split_first_chunk::<VERSION_HEAD_BYTES>()
        .ok_or(VersionError::Malformed)?;
    let [version, code, p1, p2, reserved, count] = *head;
    if version != SPDM_VERSION_1_0 || code != VERSION || p1 != 0 || p2 != 0 || reserved != 0 {
        return Err(VersionError::Malformed);
    }
    let len = usize::from(count)
        .checked_mul(VERSION_ENTRY_BYTES)
        .ok_or(VersionError::Malformed)?;
    let entries = doe::unpad(rest, len).map_err(|_| VersionError::Malformed)?;
    if count == 0 {
        return Err(VersionError::Malformed);
    }
    let offers_12 = entries
        .chunks_exact(VERSION_ENTRY_BYTES)
        .filter_map(|e| <[u8; 2]>::try_from(e).ok())
        .any(|e| e[1] == SPDM_VERSION_1_2);
    if offers_12 {
        Ok(())
    } else {
        Err(VersionError::No12)
    }
}

/// The model device's answer to an unsecured request (a DOE object of type 1): VERSION for
/// GET_VERSION, in a DOE object of type 1; `None` (silence) for anything else, as a DSM that
/// speaks nothing else in the clear.
pub fn respond(request: &[u8], response: &mut [u8]) -> Option<usize> {
    let body = doe::decode(request, doe::TYPE_SPDM).ok()?;
    let msg = doe::unpad(body, GET_VERSION_BYTES).ok()?;
    if msg != [SPDM_VERSION_1_0, GET_VERSION, 0, 0] {
        return None;
    }
    let mut reply = [0u8; VERSION_HEAD_BYTES + VERSION_ENTRY_BYTES * MODEL_VERSIONS.len()];
    let (head, entries) = reply.split_at_mut(VERSION_HEAD_BYTES);
    head.copy_from_slice(&[
        SPDM_VERSION_1_0,
        VERSION,
        0,
        0,
        0,
        u8::try_from(MODEL_VERSIONS.len()).ok()?,
    ]);
    for (dst, v) in entries
        .chunks_exact_mut(VERSION_ENTRY_BYTES)
        .zip(MODEL_VERSIONS)
    {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    doe::encode(response, doe::TYPE_SPDM, &reply).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_version_and_the_model_answer_round_trip() {
        let mut req = [0u8; 64];
        let n = get_version(&mut req).unwrap();
        assert_eq!(n, GET_VERSION_OBJECT_BYTES);
        assert_eq!(&req[..n], &[1, 0, 1, 0, 3, 0, 0, 0, 0x10, 0x84, 0, 0]);
        let mut rsp = [0u8; 64];
        let m = respond(&req[..n], &mut rsp).unwrap();
        assert_eq!(
            &rsp[..m],
            &[1, 0, 1, 0, 4, 0, 0, 0, 0x10, 0x04, 0, 0, 0, 1, 0, 0x12]
        );
        assert_eq!(check_version(&rsp[..m]), Ok(()));
    }

    #[test]
    fn version_refusals() {
        let ok = [1, 0, 1, 0, 4, 0, 0, 0, 0x10, 0x04, 0, 0, 0, 1, 0, 0x12];
        let mut bad = ok;
        bad[2] = 2; // secured type
        assert!(matches!(check_version(&bad), Err(VersionError::Doe(_))));
        let mut bad = ok;
        bad[9] = 0x84; // the request
        assert_eq!(check_version(&bad), Err(VersionError::Malformed));
        let mut bad = ok;
        bad[12] = 1; // reserved
        assert_eq!(check_version(&bad), Err(VersionError::Malformed));
        let mut bad = ok;
        bad[13] = 2; // two entries, one present
        assert_eq!(check_version(&bad), Err(VersionError::Malformed));
        let mut bad = ok;
        bad[15] = 0x11; // 1.1 only
        assert_eq!(check_version(&bad), Err(VersionError::No12));
        // Anything but GET_VERSION in the clear: silence.
        let mut rsp = [0u8; 64];
        assert_eq!(respond(&bad, &mut rsp), None);
        assert_eq!(respond(&ok[..4], &mut rsp), None);
    }
}
