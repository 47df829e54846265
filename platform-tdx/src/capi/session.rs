//! The device link a C integrator supplies: its SPDM secured session with the device
//! ([`tsm_core::SecureSession`]) as C function pointers and an opaque context
//! (`struct tsm_tdx_session`), handed to `tsm_tdx_init_session` and copied once.
//!
//! Every length a callback returns is untrusted input: a failure, or a length past the buffer
//! the firmware handed it, is the trait's `None` (the core then refuses the exchange with its
//! documented status); nothing a callback returns is used to index without a check. What
//! `lock_secret` and `report_digest` answer is trusted: the firmware cannot check it. A
//! callback that writes past the lengths it is given, unwinds or longjmps out is the
//! integrator's undefined behaviour, as in any C code linked into the firmware.

use core::ffi::{c_int, c_void};

#[cfg(any(feature = "model-device", test))]
use tsm_core::ModelSession;
use tsm_core::SecureSession;
use tsm_core::relay::{Direction, REPORT_DIGEST_SIZE, RecordContext};

use super::invalid;
use crate::status::{
    OPERAND_ID_SESSION_LOCK_SECRET, OPERAND_ID_SESSION_OPEN, OPERAND_ID_SESSION_RECORD_LEN,
    OPERAND_ID_SESSION_REPORT_DIGEST, OPERAND_ID_SESSION_SEAL, TdxStatus,
};

/// `struct tsm_tdx_record_ctx`: what a record is bound to ([`RecordContext`]). `direction` is
/// [`Direction`]'s discriminant (`TSM_TDX_DIRECTION_REQUEST` 0, `_RESPONSE` 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CRecordContext {
    /// TDISP FUNCTION_ID of the interface.
    pub function_id: u32,
    /// 0: firmware to device; 1: device to firmware.
    pub direction: u32,
    /// The exchange's sequence number (never repeats in the session).
    pub seq: u64,
}

// The layouts `include/tsm_tdx.h` declares (c-test/session.c asserts the same in C).
const _: () = assert!(core::mem::size_of::<CRecordContext>() == 16);
const _: () = assert!(core::mem::offset_of!(CRecordContext, seq) == 8);

impl CRecordContext {
    /// The C view of `ctx`.
    pub fn of(ctx: &RecordContext) -> Self {
        Self {
            function_id: ctx.function_id,
            direction: ctx.direction as u32,
            seq: ctx.seq,
        }
    }

    /// The context C passed back; `None` for a direction that is neither.
    pub fn context(&self) -> Option<RecordContext> {
        let direction = match self.direction {
            d if d == Direction::Request as u32 => Direction::Request,
            d if d == Direction::Response as u32 => Direction::Response,
            _ => return None,
        };
        Some(RecordContext {
            function_id: self.function_id,
            seq: self.seq,
            direction,
        })
    }
}

/// `seal` and `open`: `(ctx, record context, input, input bytes, output, output capacity,
/// &bytes written)`; 0 on success.
pub type CipherFn = unsafe extern "C" fn(
    *mut c_void,
    *const CRecordContext,
    *const u8,
    usize,
    *mut u8,
    usize,
    *mut usize,
) -> c_int;
/// `record_len`: `(ctx, bytes, their length, &the record's length)`; 0 when the header tells.
pub type RecordLenFn = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut usize) -> c_int;
/// `lock_secret`: `(ctx, record context)`, the 64 bits.
pub type LockSecretFn = unsafe extern "C" fn(*mut c_void, *const CRecordContext) -> u64;
/// `report_digest`: `(ctx, report, its length, the 48-byte digest out)`.
pub type ReportDigestFn = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut u8);

/// `struct tsm_tdx_session` as C lays it out: any function pointer may be NULL here; init
/// refuses one that is.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SessionOps {
    /// Passed as the first argument of every callback; the firmware never dereferences it.
    pub ctx: *mut c_void,
    /// [`SecureSession::seal`].
    pub seal: Option<CipherFn>,
    /// [`SecureSession::open`].
    pub open: Option<CipherFn>,
    /// [`SecureSession::record_len`].
    pub record_len: Option<RecordLenFn>,
    /// [`SecureSession::lock_secret`].
    pub lock_secret: Option<LockSecretFn>,
    /// [`SecureSession::report_digest`].
    pub report_digest: Option<ReportDigestFn>,
}

impl SessionOps {
    /// The address of each present callback with the operand that names it, in the struct's
    /// order.
    pub fn callback_addresses(&self) -> impl Iterator<Item = (usize, u32)> {
        [
            (self.seal.map(|f| f as usize), OPERAND_ID_SESSION_SEAL),
            (self.open.map(|f| f as usize), OPERAND_ID_SESSION_OPEN),
            (
                self.record_len.map(|f| f as usize),
                OPERAND_ID_SESSION_RECORD_LEN,
            ),
            (
                self.lock_secret.map(|f| f as usize),
                OPERAND_ID_SESSION_LOCK_SECRET,
            ),
            (
                self.report_digest.map(|f| f as usize),
                OPERAND_ID_SESSION_REPORT_DIGEST,
            ),
        ]
        .into_iter()
        .filter_map(|(addr, operand)| Some((addr?, operand)))
    }
}

/// Bytes of a C pointer: `SessionOps` is one and five function pointers.
const PTR: usize = core::mem::size_of::<usize>();
const _: () = assert!(core::mem::size_of::<SessionOps>() == PTR.saturating_mul(6));
const _: () = assert!(core::mem::offset_of!(SessionOps, report_digest) == PTR.saturating_mul(5));

/// A C session whose every callback is present (checked once, at init). Neither `Clone` nor
/// `Copy`: the one session lives inside the core's transport lock, and no copy of it can be
/// called from outside that lock.
pub struct CSession {
    ctx: *mut c_void,
    seal: CipherFn,
    open: CipherFn,
    record_len: RecordLenFn,
    lock_secret: LockSecretFn,
    report_digest: ReportDigestFn,
}

// SAFETY: `CSession::new`'s contract makes the callbacks and `ctx` usable from any thread, one
// call at a time. The session is not `Sync` and cannot be copied, so its calls are as serial as
// the `&mut`/`&` borrows of its one owner (in the firmware: the core's transport lock).
unsafe impl Send for CSession {}

/// The context's address only: the firmware never reads what it points to.
impl core::fmt::Debug for CSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CSession")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl CSession {
    /// The session of `ops`; `TDX_OPERAND_INVALID` naming the first NULL callback (in the
    /// struct's order) when one is.
    ///
    /// # Safety
    ///
    /// For as long as the returned session (or anything owning it) lives, each callback of
    /// `ops`, called with `ops.ctx` and the arguments `include/tsm_tdx.h` describes, must be
    /// sound to call: from any thread, one call at a time (never two at once); reading at most
    /// the input length given, writing at most the output capacity given (48 bytes for the
    /// digest) and one `size_t`, keeping none of the pointers past the call; and returning
    /// normally (no unwinding, no `longjmp`, no thread exit). `ctx` must stay valid for the
    /// callbacks under the same rule.
    pub unsafe fn new(ops: &SessionOps) -> Result<Self, TdxStatus> {
        Ok(Self {
            ctx: ops.ctx,
            seal: ops.seal.ok_or(invalid(OPERAND_ID_SESSION_SEAL))?,
            open: ops.open.ok_or(invalid(OPERAND_ID_SESSION_OPEN))?,
            record_len: ops
                .record_len
                .ok_or(invalid(OPERAND_ID_SESSION_RECORD_LEN))?,
            lock_secret: ops
                .lock_secret
                .ok_or(invalid(OPERAND_ID_SESSION_LOCK_SECRET))?,
            report_digest: ops
                .report_digest
                .ok_or(invalid(OPERAND_ID_SESSION_REPORT_DIGEST))?,
        })
    }

    /// One `seal` or `open` call: the bytes written, `None` on failure or a length past `out`.
    fn cipher(
        &self,
        f: CipherFn,
        ctx: &RecordContext,
        input: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let rc = CRecordContext::of(ctx);
        let mut written = 0usize;
        // SAFETY: `CSession::new`'s contract: the callback reads at most `input.len()` bytes at
        // `input`, writes at most `out.len()` at `out` and one `size_t`, and keeps none of
        // the pointers (all valid for this call only).
        let rc_status = unsafe {
            f(
                self.ctx,
                &rc,
                input.as_ptr(),
                input.len(),
                out.as_mut_ptr(),
                out.len(),
                &mut written,
            )
        };
        (rc_status == 0 && written <= out.len()).then_some(written)
    }
}

impl SecureSession for CSession {
    fn seal(&mut self, ctx: &RecordContext, app: &[u8], out: &mut [u8]) -> Option<usize> {
        self.cipher(self.seal, ctx, app, out)
    }

    fn open(&mut self, ctx: &RecordContext, record: &[u8], out: &mut [u8]) -> Option<usize> {
        self.cipher(self.open, ctx, record, out)
    }

    fn record_len(&self, bytes: &[u8]) -> Option<usize> {
        let mut len = 0usize;
        // SAFETY: as in `cipher`: reads at most `bytes.len()` bytes, writes one `size_t`.
        let status = unsafe { (self.record_len)(self.ctx, bytes.as_ptr(), bytes.len(), &mut len) };
        // A record is never longer than what it starts.
        (status == 0 && len <= bytes.len()).then_some(len)
    }

    fn lock_secret(&self, ctx: &RecordContext) -> u64 {
        let rc = CRecordContext::of(ctx);
        // SAFETY: as in `cipher`: reads the context only.
        unsafe { (self.lock_secret)(self.ctx, &rc) }
    }

    fn report_digest(&self, report: &[u8]) -> [u8; REPORT_DIGEST_SIZE] {
        let mut digest = [0u8; REPORT_DIGEST_SIZE];
        // SAFETY: as in `cipher`: reads `report.len()` bytes, writes REPORT_DIGEST_SIZE.
        unsafe {
            (self.report_digest)(self.ctx, report.as_ptr(), report.len(), digest.as_mut_ptr());
        }
        digest
    }
}

/// Test support (feature `model-device`): the model session as C callbacks
/// (`tsm_tdx_model_session`), for a C session that delegates to it. `ctx` is unused; each
/// refuses (returns 1) a NULL pointer or a direction that is neither. Crate-private: C reaches
/// them through `tsm_tdx_model_session` only.
#[cfg(any(feature = "model-device", test))]
pub(crate) mod model {
    use super::*;

    /// The model's callbacks, `ctx` NULL.
    pub const OPS: SessionOps = SessionOps {
        ctx: core::ptr::null_mut(),
        seal: Some(seal),
        open: Some(open),
        record_len: Some(record_len),
        lock_secret: Some(lock_secret),
        report_digest: Some(report_digest),
    };

    /// The slice C names, `None` for NULL (`len` 0: empty, whatever the pointer).
    ///
    /// # Safety
    ///
    /// A non-null `ptr` is valid for reads of `len` bytes for the returned lifetime.
    unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
        if len == 0 {
            return Some(&[]);
        }
        // SAFETY: non-null (checked first), valid for `len` bytes by the caller's contract.
        (!ptr.is_null()).then(|| unsafe { core::slice::from_raw_parts(ptr, len) })
    }

    /// As [`bytes`], writable.
    ///
    /// # Safety
    ///
    /// A non-null `ptr` is valid for writes of `len` bytes and not otherwise borrowed.
    unsafe fn bytes_mut<'a>(ptr: *mut u8, len: usize) -> Option<&'a mut [u8]> {
        if len == 0 {
            return Some(&mut []);
        }
        // SAFETY: non-null (checked first), writable for `len` bytes by the caller's contract.
        (!ptr.is_null()).then(|| unsafe { core::slice::from_raw_parts_mut(ptr, len) })
    }

    /// # Safety
    ///
    /// The pointers are valid for the lengths given (a NULL one is refused).
    unsafe fn cipher(
        rc: *const CRecordContext,
        input: *const u8,
        input_len: usize,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
        f: impl FnOnce(&mut ModelSession, &RecordContext, &[u8], &mut [u8]) -> Option<usize>,
    ) -> c_int {
        // SAFETY: the caller's contract; NULL is refused by `as_ref`.
        let Some(ctx) = unsafe { rc.as_ref() }.and_then(CRecordContext::context) else {
            return 1;
        };
        // SAFETY: the caller's contract.
        let (Some(input), Some(out)) = (unsafe { bytes(input, input_len) }, unsafe {
            bytes_mut(out, out_cap)
        }) else {
            return 1;
        };
        // SAFETY: the caller's contract; NULL is refused by `as_mut`.
        let Some(out_len) = (unsafe { out_len.as_mut() }) else {
            return 1;
        };
        match f(&mut ModelSession::model(), &ctx, input, out) {
            Some(n) => {
                *out_len = n;
                0
            }
            None => 1,
        }
    }

    /// `tsm_tdx_model_session`'s `seal`.
    ///
    /// # Safety
    ///
    /// As every `seal` callback: the pointers valid for the lengths given.
    pub unsafe extern "C" fn seal(
        _: *mut c_void,
        rc: *const CRecordContext,
        app: *const u8,
        app_len: usize,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
    ) -> c_int {
        // SAFETY: this function's contract.
        unsafe {
            cipher(rc, app, app_len, out, out_cap, out_len, |s, c, i, o| {
                s.seal(c, i, o)
            })
        }
    }

    /// `tsm_tdx_model_session`'s `open`.
    ///
    /// # Safety
    ///
    /// As [`seal`].
    pub unsafe extern "C" fn open(
        _: *mut c_void,
        rc: *const CRecordContext,
        record: *const u8,
        record_len: usize,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
    ) -> c_int {
        // SAFETY: this function's contract.
        unsafe {
            cipher(
                rc,
                record,
                record_len,
                out,
                out_cap,
                out_len,
                |s, c, i, o| s.open(c, i, o),
            )
        }
    }

    /// `tsm_tdx_model_session`'s `record_len`.
    ///
    /// # Safety
    ///
    /// `bytes` valid for `len` bytes, `out` for one `size_t` (NULL refused).
    pub unsafe extern "C" fn record_len(
        _: *mut c_void,
        bytes_at: *const u8,
        len: usize,
        out: *mut usize,
    ) -> c_int {
        // SAFETY: this function's contract.
        let (Some(b), Some(out)) = (unsafe { bytes(bytes_at, len) }, unsafe { out.as_mut() })
        else {
            return 1;
        };
        match ModelSession::model().record_len(b) {
            Some(n) => {
                *out = n;
                0
            }
            None => 1,
        }
    }

    /// `tsm_tdx_model_session`'s `lock_secret` (0 for a NULL or bad context).
    ///
    /// # Safety
    ///
    /// `rc` valid for reads (NULL refused).
    pub unsafe extern "C" fn lock_secret(_: *mut c_void, rc: *const CRecordContext) -> u64 {
        // SAFETY: this function's contract.
        match unsafe { rc.as_ref() }.and_then(CRecordContext::context) {
            Some(ctx) => ModelSession::model().lock_secret(&ctx),
            None => 0,
        }
    }

    /// `tsm_tdx_model_session`'s `report_digest` (nothing written for a NULL pointer).
    ///
    /// # Safety
    ///
    /// `report` valid for `len` bytes, `digest` for writes of 48.
    pub unsafe extern "C" fn report_digest(
        _: *mut c_void,
        report: *const u8,
        len: usize,
        digest: *mut u8,
    ) {
        // SAFETY: this function's contract.
        let (Some(r), Some(d)) = (unsafe { bytes(report, len) }, unsafe {
            bytes_mut(digest, REPORT_DIGEST_SIZE)
        }) else {
            return;
        };
        d.copy_from_slice(&ModelSession::model().report_digest(r));
    }
}

#[cfg(test)]
mod tests {
    //! The callback-bounds checks, on callbacks that lie (run under Miri too).
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    const CTX: RecordContext = RecordContext {
        function_id: 0x0300,
        seq: 7,
        direction: Direction::Request,
    };

    /// How far past the buffer a lying callback claims to have written: `ctx` points to it.
    unsafe extern "C" fn claims_past_cap(
        ctx: *mut c_void,
        _: *const CRecordContext,
        _: *const u8,
        _: usize,
        _: *mut u8,
        cap: usize,
        out_len: *mut usize,
    ) -> c_int {
        // SAFETY: the tests pass an `AtomicUsize` as ctx and the firmware a valid out_len.
        let past = unsafe { &*ctx.cast::<AtomicUsize>() }.load(Ordering::Relaxed);
        // SAFETY: the firmware's out_len is valid.
        unsafe { *out_len = cap.wrapping_add(past) };
        0
    }

    unsafe extern "C" fn fails(
        _: *mut c_void,
        _: *const CRecordContext,
        _: *const u8,
        _: usize,
        _: *mut u8,
        _: usize,
        out_len: *mut usize,
    ) -> c_int {
        // SAFETY: the firmware's out_len is valid. A failing call's length is ignored.
        unsafe { *out_len = 1 };
        -1
    }

    unsafe extern "C" fn record_len_past_input(
        ctx: *mut c_void,
        _: *const u8,
        len: usize,
        out: *mut usize,
    ) -> c_int {
        // SAFETY: as in `claims_past_cap`.
        let past = unsafe { &*ctx.cast::<AtomicUsize>() }.load(Ordering::Relaxed);
        // SAFETY: the firmware's out is valid.
        unsafe { *out = len.wrapping_add(past) };
        0
    }

    unsafe extern "C" fn no_secret(_: *mut c_void, _: *const CRecordContext) -> u64 {
        0
    }

    unsafe extern "C" fn no_digest(_: *mut c_void, _: *const u8, _: usize, _: *mut u8) {}

    /// [`CSession::new`] over the tests' callbacks.
    fn new_session(ops: &SessionOps) -> Result<CSession, TdxStatus> {
        // SAFETY: every callback of these tests is sound for any arguments the firmware
        // passes, from any thread, and returns normally; each `ctx` is leaked or NULL.
        unsafe { CSession::new(ops) }
    }

    fn lying(past: &'static AtomicUsize) -> CSession {
        new_session(&SessionOps {
            ctx: core::ptr::from_ref(past).cast_mut().cast(),
            seal: Some(claims_past_cap),
            open: Some(claims_past_cap),
            record_len: Some(record_len_past_input),
            lock_secret: Some(no_secret),
            report_digest: Some(no_digest),
        })
        .unwrap()
    }

    /// A length past the buffer the callback was given is a failure, however far past (one
    /// byte, or a huge value); exactly the buffer is fine.
    #[test]
    fn lengths_past_the_buffer_are_refused() {
        let past: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let mut s = lying(past);
        let mut out = [0u8; 32];
        assert_eq!(s.seal(&CTX, b"app", &mut out), Some(32));
        assert_eq!(s.open(&CTX, b"rec", &mut out), Some(32));
        assert_eq!(s.record_len(b"12345"), Some(5));
        for p in [1, 4096, usize::MAX / 2] {
            past.store(p, Ordering::Relaxed);
            assert_eq!(s.seal(&CTX, b"app", &mut out), None, "seal +{p}");
            assert_eq!(s.open(&CTX, b"rec", &mut out), None, "open +{p}");
            assert_eq!(s.record_len(b"12345"), None, "record_len +{p}");
            assert_eq!(s.record_len(b""), None, "record_len of nothing +{p}");
        }
        // An empty output: only 0 bytes fit.
        past.store(0, Ordering::Relaxed);
        assert_eq!(s.seal(&CTX, b"app", &mut []), Some(0));
        past.store(1, Ordering::Relaxed);
        assert_eq!(s.seal(&CTX, b"app", &mut []), None);
    }

    /// A non-zero return is a failure whatever length the callback wrote.
    #[test]
    fn a_failing_callback_is_none() {
        let mut s = new_session(&SessionOps {
            seal: Some(fails),
            open: Some(fails),
            ..model::OPS
        })
        .unwrap();
        let mut out = [0u8; 8];
        assert_eq!(s.seal(&CTX, b"app", &mut out), None);
        assert_eq!(s.open(&CTX, b"rec", &mut out), None);
        assert_eq!(out, [0; 8]);
    }

    /// A NULL callback is refused at construction, naming the first one in struct order.
    #[test]
    fn a_null_callback_is_refused_naming_it() {
        let full = model::OPS;
        assert!(new_session(&full).is_ok());
        let cases: [(SessionOps, u32); 5] = [
            (SessionOps { seal: None, ..full }, OPERAND_ID_SESSION_SEAL),
            (SessionOps { open: None, ..full }, OPERAND_ID_SESSION_OPEN),
            (
                SessionOps {
                    record_len: None,
                    ..full
                },
                OPERAND_ID_SESSION_RECORD_LEN,
            ),
            (
                SessionOps {
                    lock_secret: None,
                    ..full
                },
                OPERAND_ID_SESSION_LOCK_SECRET,
            ),
            (
                SessionOps {
                    report_digest: None,
                    ..full
                },
                OPERAND_ID_SESSION_REPORT_DIGEST,
            ),
        ];
        for (ops, operand) in cases {
            assert_eq!(new_session(&ops).unwrap_err(), invalid(operand));
        }
        let none = SessionOps {
            seal: None,
            open: None,
            record_len: None,
            lock_secret: None,
            report_digest: None,
            ..full
        };
        assert_eq!(
            new_session(&none).unwrap_err(),
            invalid(OPERAND_ID_SESSION_SEAL)
        );
    }

    /// Through the C callbacks the model session seals and opens exactly as it does natively
    /// (same bytes, same secret, same digest), and the context crosses both ways.
    #[test]
    fn the_model_as_c_callbacks_matches_the_model() {
        let mut c = new_session(&model::OPS).unwrap();
        let mut native = ModelSession::model();
        let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
        let n = c.seal(&CTX, b"tdisp message", &mut a).unwrap();
        assert_eq!(native.seal(&CTX, b"tdisp message", &mut b), Some(n));
        assert_eq!(a[..n], b[..n]);
        assert_eq!(c.record_len(&a[..n]), native.record_len(&a[..n]));
        let mut app = [0u8; 128];
        let m = c.open(&CTX, &a[..n], &mut app).unwrap();
        assert_eq!(&app[..m], b"tdisp message");
        // Bound to its context: another sequence number does not open.
        let other = RecordContext { seq: 8, ..CTX };
        assert_eq!(c.open(&other, &a[..n], &mut app), None);
        assert_eq!(c.lock_secret(&CTX), native.lock_secret(&CTX));
        assert_ne!(c.lock_secret(&CTX), c.lock_secret(&other));
        assert_eq!(c.report_digest(b"report"), native.report_digest(b"report"));
        // The model's own checks: too small an output, a bad direction, NULL pointers.
        assert_eq!(c.seal(&CTX, b"tdisp message", &mut a[..8]), None);
        let bad = CRecordContext {
            direction: 2,
            ..CRecordContext::of(&CTX)
        };
        assert_eq!(bad.context(), None);
        let mut len = 0usize;
        // SAFETY: valid pointers for the lengths given.
        let refused = unsafe {
            model::seal(
                core::ptr::null_mut(),
                &bad,
                b"x".as_ptr(),
                1,
                a.as_mut_ptr(),
                128,
                &mut len,
            )
        };
        assert_eq!(refused, 1);
        // SAFETY: NULL pointers are refused before use.
        let refused = unsafe {
            model::open(
                core::ptr::null_mut(),
                core::ptr::null(),
                core::ptr::null(),
                4,
                core::ptr::null_mut(),
                4,
                core::ptr::null_mut(),
            )
        };
        assert_eq!(refused, 1);
    }
}
