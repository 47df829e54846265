//! Secured messages (DSP0277 1.x, "Secured Messages using SPDM"): the record that protects a
//! TDISP exchange between the firmware and the device's security manager. The keys belong to
//! the platform's SPDM session, so sealing and opening is a trait; the firmware only says which
//! exchange a record belongs to.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// SessionID field of the record header (DSP0277 6.2 "Secured message format").
pub const SESSION_ID_SIZE: usize = 4;
/// Largest SequenceNumber field a transport binding may define (DSP0277 6.2: 0 to 8 bytes).
pub const MAX_SEQUENCE_SIZE: usize = 8;
/// Length field of the record header.
pub const LENGTH_SIZE: usize = 2;
/// ApplicationDataLength field inside the encrypted data (DSP0277 6.2).
pub const APP_LENGTH: usize = 2;
/// MAC size of the AEAD suites SPDM 1.2 negotiates (AES-GCM, ChaCha20-Poly1305: 16 bytes).
pub const MAC_SIZE: usize = 16;
/// Most bytes a session adds around application data (no random padding).
pub const MAX_OVERHEAD: usize =
    SESSION_ID_SIZE + MAX_SEQUENCE_SIZE + LENGTH_SIZE + APP_LENGTH + MAC_SIZE;

/// Which way a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Firmware (SPDM requester) to device.
    Request,
    /// Device (SPDM responder) to firmware.
    Response,
}

/// What a record is bound to: the interface, the exchange's sequence number and the
/// direction. Sequence numbers come from one counter of the session that never repeats (a real
/// session binds it into its AEAD nonce, which must never repeat under one key); a record of
/// another exchange, another TDI or the other direction does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordContext {
    /// TDISP FUNCTION_ID of the interface.
    pub function_id: u32,
    /// The exchange's sequence number.
    pub seq: u64,
    /// Which way it travels.
    pub direction: Direction,
}

/// The platform's SPDM secured session with a device: it owns the keys.
pub trait SecureSession {
    /// Seals `app` (an SPDM message) into a record at `out`; its length, or `None` when `out`
    /// cannot hold it. Never more than [`MAX_OVERHEAD`] bytes beyond `app`.
    fn seal(&mut self, ctx: &RecordContext, app: &[u8], out: &mut [u8]) -> Option<usize>;
    /// Opens `record` (exactly one record) into `out`: the application data's length, or
    /// `None` when it does not verify for `ctx`.
    fn open(&mut self, ctx: &RecordContext, record: &[u8], out: &mut [u8]) -> Option<usize>;
    /// The length of the record that starts `bytes`, from its header (`None`: too short to
    /// tell). What follows it in a DOE object may only be padding.
    fn record_len(&self, bytes: &[u8]) -> Option<usize>;
    /// 64 bits the host can neither predict nor choose, for the LOCK_INTERFACE request whose
    /// records are bound to `ctx`: the core shapes them into that LOCK's
    /// MMIO_REPORTING_OFFSET ([`crate::tdisp::reporting_offset`]). `ctx.seq` never repeats in
    /// the session, so neither does the input. A real platform derives them with its session
    /// KDF from the session secret (or takes them from its RNG and keeps them per sequence
    /// number); the same `ctx` must always give the same bits, since a re-sent LOCK is the
    /// request first sent.
    fn lock_secret(&self, ctx: &RecordContext) -> u64;
    /// The digest of an interface report, as the guest computes it over the report it
    /// reads (a real platform: the hash algorithm its SPDM session negotiated, SHA-384 for
    /// the 48 bytes here, as SEV-TIO's TDI_INFO `interface_report_digest`).
    fn report_digest(&self, report: &[u8]) -> [u8; REPORT_DIGEST_SIZE];
}

/// Bytes of an interface report digest (SHA-384; SEV-TIO doc 58271 Table 61,
/// `interface_report_digest`, 48 bytes).
pub const REPORT_DIGEST_SIZE: usize = 48;

/// A session for tests and the model device, with DSP0277's record layout but a toy cipher
/// and MAC (a keyed FNV-1a), so a test proves records are sealed, bound to their exchange and
/// checked, never skipped. Not cryptography: a real platform plugs in its SPDM session.
///
/// Record: SessionID (4) | SequenceNumber (8, explicit: the exchange's) | Length (2) |
/// encrypted { ApplicationDataLength (2) | data } | MAC (16). The PCIe DOE binding keeps the
/// sequence number implicit (a counter both ends keep); this model carries it so a device
/// model need not mirror the firmware's counters. The MAC covers the interface (FUNCTION_ID,
/// which the receiver reads from the decrypted TDISP header), the direction and the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelSession {
    /// SessionID of the record header.
    pub session_id: u32,
    key: u64,
}

impl ModelSession {
    /// The session both ends of the model share.
    pub const fn new(session_id: u32, key: u64) -> Self {
        Self { session_id, key }
    }

    /// The session of the firmware and the model device in every test and in the boot.
    pub const fn model() -> Self {
        Self::new(0xfe01_0001, 0x5eed_1dea_c0de_f00d)
    }

    fn mix(&self, words: &[u64], salt: u64) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ self.key ^ salt;
        for v in words.iter().chain([&u64::from(self.session_id)]) {
            for b in v.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    fn keystream(&self, direction: Direction, seq: u64, i: usize) -> u8 {
        let word = self.mix(&[dir_code(direction), seq], (i / 8) as u64);
        word.to_le_bytes().get(i % 8).copied().unwrap_or(0)
    }

    fn mac(&self, ctx: &RecordContext, header: &[u8], body: &[u8]) -> [u8; MAC_SIZE] {
        let mut out = [0u8; MAC_SIZE];
        let words = [dir_code(ctx.direction), ctx.seq, u64::from(ctx.function_id)];
        for (half, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = self.mix(&words, 0xa5a5_0000 | half as u64);
            for &b in header.iter().chain(body) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            chunk.copy_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// Decrypts `record`'s application data into `out` without checking it: its length, the
    /// record's sequence number, and the header and body the MAC covers.
    fn decrypt<'r>(
        &self,
        direction: Direction,
        record: &'r [u8],
        out: &mut [u8],
    ) -> Option<Decrypted<'r>> {
        let (header, rest) = record.split_at_checked(HEADER)?;
        let session = U32::read_from_bytes(header.get(..4)?).ok()?.get();
        let seq = U64::read_from_bytes(header.get(4..12)?).ok()?.get();
        let length = usize::from(U16::read_from_bytes(header.get(12..)?).ok()?.get());
        if session != self.session_id || rest.len() != length {
            return None;
        }
        let body_len = length.checked_sub(MAC_SIZE)?;
        let (body, mac) = rest.split_at_checked(body_len)?;
        let mut plain_len = [0u8; APP_LENGTH];
        for (i, (p, &c)) in plain_len.iter_mut().zip(body).enumerate() {
            *p = c ^ self.keystream(direction, seq, i);
        }
        let app_len = usize::from(u16::from_le_bytes(plain_len));
        // No random padding in this session: the data fills the body exactly.
        if body_len.checked_sub(APP_LENGTH)? != app_len {
            return None;
        }
        let dst = out.get_mut(..app_len)?;
        for (i, (d, &c)) in dst.iter_mut().zip(body.get(APP_LENGTH..)?).enumerate() {
            *d = c ^ self.keystream(direction, seq, i.checked_add(APP_LENGTH)?);
        }
        Some((app_len, seq, header, body, mac))
    }

    /// The device's end: opens a request record whatever its exchange, returning the context
    /// it verified under (the interface read from the decrypted TDISP header at
    /// `fid_at..fid_at + 4` of the application data) and the data's length.
    pub fn open_any(
        &self,
        direction: Direction,
        record: &[u8],
        fid_at: usize,
        out: &mut [u8],
    ) -> Option<(RecordContext, usize)> {
        let (len, seq, header, body, mac) = self.decrypt(direction, record, out)?;
        let fid_bytes = out.get(fid_at..fid_at.checked_add(4)?)?;
        let function_id = u32::from_le_bytes(fid_bytes.try_into().ok()?);
        let ctx = RecordContext {
            function_id,
            seq,
            direction,
        };
        (mac == self.mac(&ctx, header, body)).then_some((ctx, len))
    }
}

/// A decrypted record: data length, sequence number, and the header, body and MAC.
type Decrypted<'r> = (usize, u64, &'r [u8], &'r [u8], &'r [u8]);

/// Header of a [`ModelSession`] record: SessionID, SequenceNumber, Length.
const HEADER: usize = SESSION_ID_SIZE + MAX_SEQUENCE_SIZE + LENGTH_SIZE;

const fn dir_code(direction: Direction) -> u64 {
    match direction {
        Direction::Request => 1,
        Direction::Response => 2,
    }
}

impl SecureSession for ModelSession {
    fn seal(&mut self, ctx: &RecordContext, app: &[u8], out: &mut [u8]) -> Option<usize> {
        let body_len = app.len().checked_add(APP_LENGTH)?;
        let length = body_len.checked_add(MAC_SIZE)?;
        let total = length.checked_add(HEADER)?;
        let dst = out.get_mut(..total)?;
        let (header, rest) = dst.split_at_mut(HEADER);
        header
            .get_mut(..4)?
            .copy_from_slice(U32::new(self.session_id).as_bytes());
        header
            .get_mut(4..12)?
            .copy_from_slice(U64::new(ctx.seq).as_bytes());
        header
            .get_mut(12..)?
            .copy_from_slice(U16::new(u16::try_from(length).ok()?).as_bytes());
        let (body, mac) = rest.split_at_mut(body_len);
        let (len_field, data) = body.split_at_mut(APP_LENGTH);
        len_field.copy_from_slice(U16::new(u16::try_from(app.len()).ok()?).as_bytes());
        data.copy_from_slice(app);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= self.keystream(ctx.direction, ctx.seq, i);
        }
        mac.copy_from_slice(&self.mac(ctx, header, body));
        Some(total)
    }

    fn open(&mut self, ctx: &RecordContext, record: &[u8], out: &mut [u8]) -> Option<usize> {
        let mut plain = [0u8; crate::relay::MAX_RELAY_BYTES];
        let (len, seq, header, body, mac) = self.decrypt(ctx.direction, record, &mut plain)?;
        if seq != ctx.seq || mac != self.mac(ctx, header, body) {
            return None;
        }
        out.get_mut(..len)?.copy_from_slice(plain.get(..len)?);
        Some(len)
    }

    fn record_len(&self, bytes: &[u8]) -> Option<usize> {
        let length = U16::read_from_bytes(bytes.get(12..HEADER)?).ok()?.get();
        HEADER.checked_add(usize::from(length))
    }

    /// The keyed toy function of the session over the LOCK's context: not cryptography (a
    /// host that knows the model key predicts it), like the rest of this session.
    fn lock_secret(&self, ctx: &RecordContext) -> u64 {
        let words = [dir_code(ctx.direction), ctx.seq, u64::from(ctx.function_id)];
        self.mix(&words, LOCK_SECRET_SALT)
    }

    /// Six keyed FNV-1a words over the report: not a cryptographic hash (collisions are easy
    /// to make), only a stand-in with the real digest's size.
    fn report_digest(&self, report: &[u8]) -> [u8; REPORT_DIGEST_SIZE] {
        let mut out = [0u8; REPORT_DIGEST_SIZE];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = self.mix(&[report.len() as u64], REPORT_DIGEST_SALT | i as u64);
            for &b in report {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            chunk.copy_from_slice(&h.to_le_bytes());
        }
        out
    }
}

/// Salt of [`ModelSession`]'s LOCK secret (ours: keeps it apart from keystream and MAC words).
const LOCK_SECRET_SALT: u64 = 0x10c4_0000_0000_0000;
/// Salt of [`ModelSession`]'s report digest words (ours).
const REPORT_DIGEST_SALT: u64 = 0xd1_0000_0000;
