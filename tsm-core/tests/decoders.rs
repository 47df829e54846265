//! Every TDISP wire decoder, fed valid encodings and structural mutations of them.
//!
//! For each decoder (request decode; response decode, one property per response type; the
//! device interface report parser; the report portion assembler) a generator builds VALID
//! encodings with the crate's own encoders and zerocopy structs, and a mutator changes them the
//! way a faulty or hostile device would: one field changed (version, message type, interface
//! ID, reserved bytes, a length or count field, range attributes, a first page or page count,
//! a portion or remainder length), the buffer truncated or extended, or one byte flipped. Each
//! case is one of: valid (35%), field mutated (35%), length changed (15%), byte flipped (15%).
//!
//! Every mutation says what it must cause: either the decoder accepts, and what it returns
//! re-encodes to exactly the bytes it was given, or it refuses with one precise error (wrong
//! version -> `Version`, reserved byte set -> `Reserved`/`DeviceMalformed`, count or length
//! inconsistent -> `Short`/`Long`/`DeviceMalformed`/`TooManyRanges`, misaligned page ->
//! `Misaligned`, overlapping ranges -> `RangesOverlap`, ...). A valid encoding must decode to
//! the value it was encoded from.
//!
//! Every property counts how many cases reached its main assertion and how often each mutation
//! kind ran, prints the numbers (`cargo test -p tsm-core --test decoders -- --nocapture`), and
//! fails when the generators stop reaching the assertions (the fractions are statistical, so
//! they are checked from 1000 cases up).
//!
//! Cases per property: 2000 by default, which keeps the file at a few seconds in a debug
//! build. Set `TSM_PROPTEST_CASES` for longer runs, e.g.
//! `TSM_PROPTEST_CASES=200000 cargo test -p tsm-core --release --test decoders`.
//! `PROPTEST_RNG_SEED=<u64>` replays a run with a fixed seed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestCaseResult, TestRunner};
use zerocopy::FromBytes;
use zerocopy::little_endian::{U16, U32, U64};

use tsm_core::addr::PHYS_ADDR_LIMIT;
use tsm_core::capacity::MAX_RANGES_PER_TDI;
use tsm_core::tdisp::message::{
    Capabilities, CapabilitiesRequest, ErrorBody, LockParams, ReportRequest, Request, Response,
    decode_request, decode_response, encode_request, encode_response, response_code_for,
};
use tsm_core::tdisp::report::{
    DeviceInterfaceReport, MAX_REPORT_BYTES, ReportAssembler, ReportHead, ReportRange,
    WireMmioRange, encode_report,
};
use tsm_core::tdisp::{HEADER_SIZE, TDISP_VERSION_1_0, WireError, function_id, request, response};
use tsm_core::{Error, MmioRange, RequesterId, TdispState};

// ------------------------------------------------------------------------------------------
// Harness: case count, counters, reach checks.

/// Cases per property when `TSM_PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 2000;

fn cases() -> u32 {
    match std::env::var("TSM_PROPTEST_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TSM_PROPTEST_CASES={v:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

/// Fewer cases than this are too few for the reach fractions to be stable: they are printed
/// but not checked.
const MIN_CASES_FOR_REACH: usize = 1000;

/// Counts per label: `kind <mutation>` for what was generated, `reach <outcome>` for the
/// assertion a case ended in.
#[derive(Default)]
struct Tally {
    counts: RefCell<BTreeMap<String, usize>>,
}

const CASES: &str = "cases";
/// Decoded, and re-encoded to the very bytes given.
const ROUND_TRIP: &str = "reach round-trip";
/// Refused with the error the mutation determines.
const REFUSED: &str = "reach refused";
/// Accepted an incomplete report, at the offset the mutation determines (assembler only).
const INCOMPLETE: &str = "reach incomplete";
/// The mutation happened to leave a well-formed message of another shape; only "no panic, and
/// what is accepted re-encodes to the same bytes" is checked.
const UNPREDICTED: &str = "reach unpredicted";

impl Tally {
    fn hit(&self, key: &str) {
        *self.counts.borrow_mut().entry(key.to_owned()).or_default() += 1;
    }

    fn kind(&self, label: &str) {
        self.hit(&format!("kind {label}"));
    }

    fn get(&self, key: &str) -> usize {
        self.counts.borrow().get(key).copied().unwrap_or(0)
    }

    fn fraction(&self, key: &str) -> f64 {
        self.get(key) as f64 / self.get(CASES).max(1) as f64
    }
}

/// Runs `test` on `cases()` values of `strategy`; panics with the minimal failing case.
fn run<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value, &Tally) -> TestCaseResult,
) -> Tally {
    let tally = Tally::default();
    // A fixed seed unless PROPTEST_RNG_SEED asks for others: the reach fractions asserted
    // below then fail only on a real change, never on an unlucky draw.
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        Config::default().rng_seed
    } else {
        RngSeed::Fixed(0x7473_6d2d_6465_636f)
    };
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        rng_seed,
        ..Config::default()
    });
    let started = Instant::now();
    if let Err(e) = runner.run(&strategy, |v| {
        tally.hit(CASES);
        test(v, &tally)
    }) {
        panic!("{name}: {e}");
    }
    let counts = tally.counts.borrow();
    let total = tally.get(CASES);
    println!(
        "{name}: {total} cases in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for (key, n) in counts.iter().filter(|(k, _)| k.starts_with("reach ")) {
        println!(
            "  {key:<28} {n:>7}  {:>5.1}%",
            100.0 * *n as f64 / total as f64
        );
    }
    for (key, n) in counts.iter().filter(|(k, _)| k.starts_with("kind ")) {
        println!("  {key:<28} {n:>7}");
    }
    drop(counts);
    tally
}

/// The reach a property must keep: at least `round_trip` of the cases end in an exact
/// round trip, at least `refused` in a precise refusal, at most 1% are unpredicted, and every
/// mutation kind in `kinds` (and no other) ran at least `cases / 500` times. Not checked
/// below [`MIN_CASES_FOR_REACH`] cases.
fn require(name: &str, t: &Tally, kinds: &[&str], round_trip: f64, refused: f64) {
    let total = t.get(CASES);
    assert_eq!(total, cases() as usize, "{name}: every case ran once");
    if total < MIN_CASES_FOR_REACH {
        println!("{name}: reach not checked below {MIN_CASES_FOR_REACH} cases");
        return;
    }
    assert!(
        t.fraction(ROUND_TRIP) >= round_trip,
        "{name}: only {:.1}% of the cases reached the round trip (want {:.0}%)",
        100.0 * t.fraction(ROUND_TRIP),
        100.0 * round_trip
    );
    assert!(
        t.fraction(REFUSED) >= refused,
        "{name}: only {:.1}% of the cases reached a precise refusal (want {:.0}%)",
        100.0 * t.fraction(REFUSED),
        100.0 * refused
    );
    assert!(
        t.fraction(UNPREDICTED) <= 0.01,
        "{name}: {:.1}% of the cases had no predicted outcome",
        100.0 * t.fraction(UNPREDICTED)
    );
    let min = total / 500;
    for kind in kinds {
        let n = t.get(&format!("kind {kind}"));
        assert!(
            n >= min,
            "{name}: mutation kind {kind:?} ran {n} times, want at least {min}"
        );
    }
    for key in t.counts.borrow().keys() {
        if let Some(kind) = key.strip_prefix("kind ") {
            assert!(
                kinds.contains(&kind),
                "{name}: kind {kind:?} is missing from the list"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Mutations: raw randomness, resolved against one valid encoding by each codec.

/// How one case changes its valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// Left as encoded.
    Valid,
    /// One field changed: `which` picks the field among those the encoding has, `at` a
    /// position or element inside it, `value` the new value.
    Field { which: Index, at: Index, value: u64 },
    /// `by + 1` bytes cut off the end (of the portion picked by `at`, for the assembler).
    Truncate { at: Index, by: Index },
    /// `bytes` added at the end (of the portion picked by `at`, for the assembler).
    Extend { at: Index, bytes: Vec<u8> },
    /// The byte at `at` XORed with `mask` (non-zero); with `aim`, `at` picks among the bytes
    /// of the codec's length, count, type and reserved fields only.
    Flip { at: Index, mask: u8, aim: bool },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        35 => Just(Mutation::Valid),
        35 => (any::<Index>(), any::<Index>(), any::<u64>())
            .prop_map(|(which, at, value)| Mutation::Field { which, at, value }),
        8 => (any::<Index>(), any::<Index>()).prop_map(|(at, by)| Mutation::Truncate { at, by }),
        7 => (any::<Index>(), vec(any::<u8>(), 1..=64))
            .prop_map(|(at, bytes)| Mutation::Extend { at, bytes }),
        15 => (any::<Index>(), 1u8..=255, any::<bool>())
            .prop_map(|(at, mask, aim)| Mutation::Flip { at, mask, aim }),
    ]
}

/// What a mutated encoding must do to its decoder.
#[derive(Debug, Clone, PartialEq)]
enum Expect<E> {
    /// Accepted; what comes out re-encodes to the same bytes.
    Accept,
    /// Refused with exactly this error.
    Refuse(E),
    /// A reshaped message that may or may not be acceptable (rare; see [`UNPREDICTED`]).
    Unpredicted,
}

/// The verdict of an exact-size check: `Short`, `Long`, or fine.
fn length_verdict(have: usize, want: usize) -> Expect<WireError> {
    match have.cmp(&want) {
        std::cmp::Ordering::Less => Expect::Refuse(WireError::Short),
        std::cmp::Ordering::Greater => Expect::Refuse(WireError::Long),
        std::cmp::Ordering::Equal => Expect::Accept,
    }
}

/// `choices[value % len]`.
fn pick<T: Copy>(value: u64, choices: &[T]) -> T {
    choices[(value % choices.len() as u64) as usize]
}

/// The byte a flip changes: any of `len`, or one of `aimed` when the flip aims.
fn flip_at(len: usize, at: &Index, aim: bool, aimed: &[usize]) -> usize {
    if aim && !aimed.is_empty() {
        aimed[at.index(aimed.len())]
    } else {
        at.index(len)
    }
}

/// The header bytes a flip aims at: version, type, reserved (the FUNCTION_ID is left to the
/// unaimed flips).
const HEADER_AIMED: [usize; 12] = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15];

/// A byte that is not zero.
fn nonzero(value: u64) -> u8 {
    (value as u8).max(1)
}

/// A TDISP version other than 1.0: 2.0, 1.1, 0.0 and so on, or any byte.
fn other_version(value: u64) -> u8 {
    let v = pick(
        value,
        &[0x20, 0x11, 0x00, 0x01, 0x0f, 0xff, (value >> 8) as u8],
    );
    if v == TDISP_VERSION_1_0 { 0x20 } else { v }
}

/// A value near `orig` (up to 16 either way) or anywhere in `0..=max`, never `orig`.
fn other_value(orig: u64, max: u64, value: u64) -> u64 {
    let delta = 1 + (value >> 2) % 16;
    let v = match value % 4 {
        0 => orig.checked_add(delta).filter(|v| *v <= max).unwrap_or(0),
        1 => orig.saturating_sub(delta),
        2 => 0,
        _ => (value >> 8) % max.saturating_add(1).max(1),
    };
    if v != orig {
        v
    } else if orig == 0 {
        1
    } else {
        orig - 1
    }
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// What a byte of the 16-byte TDISP header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderByte {
    Version,
    Type,
    Reserved,
    FunctionId,
}

fn header_byte(at: usize) -> HeaderByte {
    match at {
        0 => HeaderByte::Version,
        1 => HeaderByte::Type,
        4..=7 => HeaderByte::FunctionId,
        _ => HeaderByte::Reserved,
    }
}

/// The reserved bytes of the header.
const HEADER_RESERVED: [usize; 10] = [2, 3, 8, 9, 10, 11, 12, 13, 14, 15];

/// A FUNCTION_ID as the firmware builds it: any requester ID, segment 0..=255.
fn interface_id() -> impl Strategy<Value = u32> {
    (
        prop_oneof![Just(0u16), 0u16..=0xff],
        any::<u8>(),
        0u8..32,
        0u8..8,
    )
        .prop_map(|(seg, bus, dev, func)| {
            function_id(RequesterId::try_new(seg, bus, dev, func).unwrap()).unwrap()
        })
}

/// Every request code.
const REQUEST_CODES: [u8; 7] = [
    request::GET_VERSION,
    request::GET_CAPABILITIES,
    request::LOCK_INTERFACE,
    request::GET_DEVICE_INTERFACE_REPORT,
    request::GET_DEVICE_INTERFACE_STATE,
    request::START_INTERFACE,
    request::STOP_INTERFACE,
];

// ------------------------------------------------------------------------------------------
// Requests (the device side decodes them).

fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::GetVersion),
        any::<u32>().prop_map(|c| Request::GetCapabilities(CapabilitiesRequest {
            tsm_caps: U32::new(c)
        })),
        (any::<u16>(), any::<u8>(), any::<u64>(), any::<u64>()).prop_map(|(f, s, o, m)| {
            Request::LockInterface(LockParams {
                flags: U16::new(f),
                default_stream_id: s,
                reserved: 0,
                mmio_reporting_offset: U64::new(o),
                bind_p2p_address_mask: U64::new(m),
            })
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(o, l)| Request::GetReport(ReportRequest {
            offset: U16::new(o),
            length: U16::new(l)
        })),
        Just(Request::GetState),
        any::<[u8; 32]>().prop_map(Request::Start),
        Just(Request::Stop),
    ]
}

fn encode_req(fid: u32, req: &Request) -> Vec<u8> {
    let mut out = [0u8; 128];
    let n = encode_request(&mut out, fid, req).unwrap();
    out[..n].to_vec()
}

/// Body size of request code `code`, `None` for a code that is no request.
fn request_body_len(code: u8) -> Option<usize> {
    match code {
        request::GET_VERSION | request::GET_DEVICE_INTERFACE_STATE | request::STOP_INTERFACE => {
            Some(0)
        }
        request::GET_CAPABILITIES | request::GET_DEVICE_INTERFACE_REPORT => Some(4),
        request::LOCK_INTERFACE => Some(20),
        request::START_INTERFACE => Some(32),
        _ => None,
    }
}

/// A request whose type byte became `t`, with a body of `body_len` bytes.
fn request_retyped(t: u8, body_len: usize) -> Expect<WireError> {
    match request_body_len(t) {
        None => Expect::Refuse(WireError::UnknownType(t)),
        // Another request of the same body size (GET_VERSION/GET_STATE/STOP,
        // GET_CAPABILITIES/GET_REPORT) is well-formed.
        Some(want) => length_verdict(body_len, want),
    }
}

/// Offset of LOCK_INTERFACE_PARAM.reserved in the message.
const LOCK_RESERVED_AT: usize = HEADER_SIZE + 3;

/// `(label, bytes, expectation)` for request `req` to `fid` under `m`.
fn mutate_request(fid: u32, req: &Request, m: &Mutation) -> (String, Vec<u8>, Expect<WireError>) {
    let mut b = encode_req(fid, req);
    let body_len = b.len() - HEADER_SIZE;
    let lock = matches!(req, Request::LockInterface(_));
    let (label, expect) = match m {
        Mutation::Valid => ("valid", Expect::Accept),
        Mutation::Field { which, at, value } => {
            let mut fields = vec!["version", "type", "reserved", "interface"];
            if body_len > 0 {
                fields.extend(["body", "body"]);
            }
            if lock {
                fields.extend(["lock reserved"; 4]);
            }
            let field = fields[which.index(fields.len())];
            let expect = match field {
                "version" => {
                    b[0] = other_version(*value);
                    Expect::Refuse(WireError::Version(b[0]))
                }
                "type" => {
                    let t = match value % 3 {
                        0 => REQUEST_CODES[((value >> 8) % 7) as usize],
                        1 => pick(value >> 8, &[0x80, 0x88, 0x01, 0x04, 0x7f, 0x00, 0xff]),
                        _ => (value >> 8) as u8,
                    };
                    b[1] = if t == req.code() { t ^ 0x08 } else { t };
                    request_retyped(b[1], body_len)
                }
                "reserved" => {
                    b[HEADER_RESERVED[at.index(HEADER_RESERVED.len())]] = nonzero(*value);
                    Expect::Refuse(WireError::Reserved)
                }
                "interface" => {
                    let new = other_value(u64::from(fid), u64::from(u32::MAX), *value) as u32;
                    put(&mut b, 4, &new.to_le_bytes());
                    Expect::Accept
                }
                "body" => {
                    let mut i = HEADER_SIZE + at.index(body_len);
                    if lock && i == LOCK_RESERVED_AT {
                        i = HEADER_SIZE;
                    }
                    b[i] ^= nonzero(*value);
                    Expect::Accept
                }
                "lock reserved" => {
                    b[LOCK_RESERVED_AT] = nonzero(*value);
                    Expect::Refuse(WireError::Reserved)
                }
                other => panic!("no field {other:?}"),
            };
            (field, expect)
        }
        Mutation::Truncate { by, .. } => {
            b.truncate(b.len() - 1 - by.index(b.len()));
            ("truncate", Expect::Refuse(WireError::Short))
        }
        Mutation::Extend { bytes, .. } => {
            b.extend_from_slice(bytes);
            ("extend", Expect::Refuse(WireError::Long))
        }
        Mutation::Flip { at, mask, aim } => {
            let mut aimed = HEADER_AIMED.to_vec();
            if lock {
                aimed.extend([LOCK_RESERVED_AT; 4]);
            }
            let i = flip_at(b.len(), at, *aim, &aimed);
            b[i] ^= mask;
            if i < HEADER_SIZE {
                let expect = match header_byte(i) {
                    HeaderByte::Version => Expect::Refuse(WireError::Version(b[0])),
                    HeaderByte::Type => request_retyped(b[1], body_len),
                    HeaderByte::Reserved => Expect::Refuse(WireError::Reserved),
                    HeaderByte::FunctionId => Expect::Accept,
                };
                ("flip header", expect)
            } else if lock && i == LOCK_RESERVED_AT {
                ("flip body", Expect::Refuse(WireError::Reserved))
            } else {
                ("flip body", Expect::Accept)
            }
        }
    };
    (label.to_owned(), b, expect)
}

#[test]
fn requests() {
    let strategy = (interface_id(), any_request(), mutation());
    let t = run("requests", strategy, |(fid, req, m), tally| {
        let (label, bytes, expect) = mutate_request(fid, &req, &m);
        tally.kind(&label);
        let got = decode_request(&bytes);
        if matches!(m, Mutation::Valid) {
            prop_assert_eq!(got, Ok((fid, req)), "decode(encode(x)) == x");
        }
        match expect {
            Expect::Accept => {
                let (f, r) = got.map_err(|e| {
                    TestCaseError::fail(format!("{label}: refused with {e:?}, want accepted"))
                })?;
                prop_assert_eq!(encode_req(f, &r), bytes, "{}: re-encodes", label);
                tally.hit(ROUND_TRIP);
            }
            Expect::Refuse(e) => {
                prop_assert_eq!(got, Err(e), "{}", label);
                tally.hit(REFUSED);
            }
            Expect::Unpredicted => {
                return Err(TestCaseError::fail("every request mutation is predicted"));
            }
        }
        Ok(())
    });
    require(
        "requests",
        &t,
        &[
            "valid",
            "version",
            "type",
            "reserved",
            "interface",
            "body",
            "lock reserved",
            "truncate",
            "extend",
            "flip header",
            "flip body",
        ],
        0.30,
        0.25,
    );
}

// ------------------------------------------------------------------------------------------
// Responses (the firmware decodes them).

/// A response that owns its bytes.
#[derive(Debug, Clone)]
enum OwnedResponse {
    Version(Vec<u8>),
    Capabilities(Capabilities),
    Lock([u8; 32]),
    Report { portion: Vec<u8>, remainder: u16 },
    State(TdispState),
    Start,
    Stop,
    Error(ErrorBody),
}

impl OwnedResponse {
    fn borrow(&self) -> Response<'_> {
        match self {
            OwnedResponse::Version(v) => Response::Version(v),
            OwnedResponse::Capabilities(c) => Response::Capabilities(*c),
            OwnedResponse::Lock(n) => Response::Lock(*n),
            OwnedResponse::Report { portion, remainder } => Response::Report {
                portion,
                remainder: *remainder,
            },
            OwnedResponse::State(s) => Response::State(*s),
            OwnedResponse::Start => Response::Start,
            OwnedResponse::Stop => Response::Stop,
            OwnedResponse::Error(e) => Response::Error(*e),
        }
    }
}

/// Valid responses of type `ty`.
fn response_of(ty: u8) -> BoxedStrategy<OwnedResponse> {
    match ty {
        response::VERSION => prop_oneof![
            4 => vec(any::<u8>(), 1..=8),
            1 => vec(any::<u8>(), 0..=255),
        ]
        .prop_map(OwnedResponse::Version)
        .boxed(),
        response::CAPABILITIES => any::<[u8; 28]>()
            .prop_map(|raw| {
                let mut c = Capabilities::read_from_bytes(&raw).unwrap();
                c.reserved = [0; 3];
                OwnedResponse::Capabilities(c)
            })
            .boxed(),
        response::LOCK_INTERFACE => any::<[u8; 32]>().prop_map(OwnedResponse::Lock).boxed(),
        response::DEVICE_INTERFACE_REPORT => (
            prop_oneof![vec(any::<u8>(), 0..=300), vec(any::<u8>(), 0..=8)],
            any::<u16>(),
        )
            .prop_map(|(portion, remainder)| OwnedResponse::Report { portion, remainder })
            .boxed(),
        response::DEVICE_INTERFACE_STATE => prop_oneof![
            Just(TdispState::ConfigUnlocked),
            Just(TdispState::ConfigLocked),
            Just(TdispState::Run),
            Just(TdispState::Error),
        ]
        .prop_map(OwnedResponse::State)
        .boxed(),
        response::START_INTERFACE => Just(OwnedResponse::Start).boxed(),
        response::STOP_INTERFACE => Just(OwnedResponse::Stop).boxed(),
        response::TDISP_ERROR => (any::<u32>(), any::<u32>())
            .prop_map(|(c, d)| {
                OwnedResponse::Error(ErrorBody {
                    code: U32::new(c),
                    data: U32::new(d),
                })
            })
            .boxed(),
        other => panic!("no response type {other:#04x}"),
    }
}

fn encode_resp(fid: u32, resp: &Response<'_>) -> Vec<u8> {
    let mut out = vec![0u8; 1024];
    let n = encode_response(&mut out, fid, resp).unwrap();
    out.truncate(n);
    out
}

/// A decoded answer, or the device's TDISP_ERROR, encoded again. An error's extended data is
/// not kept, so it re-encodes to the first `HEADER_SIZE + 8` bytes only.
fn reencode_response(fid: u32, got: &Result<Response<'_>, WireError>) -> Option<Vec<u8>> {
    match got {
        Ok(r) => Some(encode_resp(fid, r)),
        Err(WireError::Refused { code, data }) => Some(encode_resp(
            fid,
            &Response::Error(ErrorBody {
                code: U32::new(*code),
                data: U32::new(*data),
            }),
        )),
        Err(_) => None,
    }
}

/// A response whose type byte became `t`, answering a request that expects `expected`.
fn response_retyped(t: u8, expected: u8, body: &[u8]) -> Expect<WireError> {
    if t == response::TDISP_ERROR {
        // Any response becomes a TDISP_ERROR with its first 8 body bytes as code and data.
        if body.len() >= 8 {
            Expect::Accept
        } else {
            Expect::Refuse(WireError::Short)
        }
    } else if t == expected {
        // Only a TDISP_ERROR can turn into the expected type; its body then is read as one.
        Expect::Unpredicted
    } else if (response::VERSION..=response::STOP_INTERFACE).contains(&t) {
        Expect::Refuse(WireError::UnexpectedType(t))
    } else {
        Expect::Refuse(WireError::UnknownType(t))
    }
}

/// Offset of TDISP_CAPABILITIES.reserved in the body.
const CAPS_RESERVED_AT: usize = 22;

/// `(label, bytes, request code to decode with, expectation)` for `resp` under `m`.
fn mutate_response(
    fid: u32,
    request_code: u8,
    resp: &OwnedResponse,
    m: &Mutation,
) -> (String, Vec<u8>, u8, Expect<WireError>) {
    let mut b = encode_resp(fid, &resp.borrow());
    let mut code = request_code;
    let ty = b[1];
    let expected = response_code_for(request_code);
    let is_error = ty == response::TDISP_ERROR;
    let (label, expect) = match m {
        Mutation::Valid => ("valid", Expect::Accept),
        Mutation::Field { which, at, value } => {
            let header = ["version", "type", "reserved", "interface", "request code"];
            let body: &[&str] = match resp {
                OwnedResponse::Version(e) if e.is_empty() => &["version count"],
                OwnedResponse::Version(_) => &["version count", "version entry"],
                OwnedResponse::Capabilities(_) => &["capabilities reserved", "capabilities field"],
                OwnedResponse::Lock(_) => &["nonce"],
                OwnedResponse::Report { .. } => &["portion length", "remainder"],
                OwnedResponse::State(_) => &["state"],
                OwnedResponse::Start | OwnedResponse::Stop => &[],
                OwnedResponse::Error(_) => &["error body"],
            };
            // Half the field mutations go to the body, when there is one.
            let i = which.index(2 * header.len());
            let field = if body.is_empty() || i < header.len() {
                header[i % header.len()]
            } else {
                body[(i - header.len()) % body.len()]
            };
            let value = *value;
            let expect = match field {
                "version" => {
                    b[0] = other_version(value);
                    Expect::Refuse(WireError::Version(b[0]))
                }
                "type" => {
                    let mut t = match value % 3 {
                        0 => 1 + ((value >> 8) % 7) as u8,
                        1 => pick(value >> 8, &[0x7f, 0x00, 0x08, 0x80, 0x84, 0xff]),
                        _ => (value >> 8) as u8,
                    };
                    while t == ty || t == expected {
                        t = t.wrapping_add(1);
                    }
                    b[1] = t;
                    response_retyped(t, expected, &b[HEADER_SIZE..])
                }
                "reserved" => {
                    b[HEADER_RESERVED[at.index(HEADER_RESERVED.len())]] = nonzero(value);
                    Expect::Refuse(WireError::Reserved)
                }
                "interface" => {
                    let new = other_value(u64::from(fid), u64::from(u32::MAX), value) as u32;
                    put(&mut b, 4, &new.to_le_bytes());
                    Expect::Refuse(WireError::WrongInterface(new))
                }
                "request code" => {
                    // Decoded as the answer to another request.
                    let mut c = if value % 2 == 0 {
                        REQUEST_CODES[((value >> 8) % 7) as usize]
                    } else {
                        (value >> 8) as u8
                    };
                    while c == request_code {
                        c = c.wrapping_add(1);
                    }
                    code = c;
                    if is_error || response_code_for(c) == ty {
                        Expect::Accept
                    } else {
                        Expect::Refuse(WireError::UnexpectedType(ty))
                    }
                }
                "version count" => {
                    let n = b.len() - HEADER_SIZE - 1;
                    let count = other_value(n as u64, 255, value) as u8;
                    b[HEADER_SIZE] = count;
                    length_verdict(n, usize::from(count))
                }
                "version entry" => {
                    let i = HEADER_SIZE + 1 + at.index(b.len() - HEADER_SIZE - 1);
                    b[i] ^= nonzero(value);
                    Expect::Accept
                }
                "capabilities reserved" => {
                    // Not checked by the decoder (unlike the header's reserved bytes): pinned
                    // here so that a change of that rule is a deliberate one.
                    b[HEADER_SIZE + CAPS_RESERVED_AT + at.index(3)] = nonzero(value);
                    Expect::Accept
                }
                "capabilities field" => {
                    let mut i = at.index(28 - 3);
                    if i >= CAPS_RESERVED_AT {
                        i += 3;
                    }
                    b[HEADER_SIZE + i] ^= nonzero(value);
                    Expect::Accept
                }
                "nonce" | "error body" => {
                    let i = HEADER_SIZE + at.index(b.len() - HEADER_SIZE);
                    b[i] ^= nonzero(value);
                    Expect::Accept
                }
                "portion length" => {
                    let p = get_u16(&b, HEADER_SIZE);
                    let new = other_value(u64::from(p), u64::from(u16::MAX), value) as u16;
                    put(&mut b, HEADER_SIZE, &new.to_le_bytes());
                    length_verdict(usize::from(p), usize::from(new))
                }
                "remainder" => {
                    let r = get_u16(&b, HEADER_SIZE + 2);
                    let new = other_value(u64::from(r), u64::from(u16::MAX), value) as u16;
                    put(&mut b, HEADER_SIZE + 2, &new.to_le_bytes());
                    Expect::Accept
                }
                "state" => {
                    let s = b[HEADER_SIZE];
                    let new = if value % 2 == 0 {
                        other_value(u64::from(s), 3, value >> 1) as u8
                    } else {
                        4 + ((value >> 1) % 252) as u8
                    };
                    b[HEADER_SIZE] = new;
                    if new <= 3 {
                        Expect::Accept
                    } else {
                        Expect::Refuse(WireError::BadState(new))
                    }
                }
                other => panic!("no field {other:?}"),
            };
            (field, expect)
        }
        Mutation::Truncate { by, .. } => {
            b.truncate(b.len() - 1 - by.index(b.len()));
            ("truncate", Expect::Refuse(WireError::Short))
        }
        Mutation::Extend { bytes, .. } => {
            b.extend_from_slice(bytes);
            // TDISP_ERROR may carry extended error data; nothing else may be longer.
            let expect = if is_error {
                Expect::Accept
            } else {
                Expect::Refuse(WireError::Long)
            };
            ("extend", expect)
        }
        Mutation::Flip { at, mask, aim } => {
            let mut aimed = HEADER_AIMED.to_vec();
            match resp {
                OwnedResponse::Version(_) | OwnedResponse::State(_) => {
                    aimed.extend([HEADER_SIZE; 6]);
                }
                OwnedResponse::Report { .. } => {
                    aimed.extend([HEADER_SIZE, HEADER_SIZE + 1].repeat(3))
                }
                _ => {}
            }
            let i = flip_at(b.len(), at, *aim, &aimed);
            b[i] ^= mask;
            if i < HEADER_SIZE {
                let expect = match header_byte(i) {
                    HeaderByte::Version => Expect::Refuse(WireError::Version(b[0])),
                    HeaderByte::Type => response_retyped(b[1], expected, &b[HEADER_SIZE..]),
                    HeaderByte::Reserved => Expect::Refuse(WireError::Reserved),
                    HeaderByte::FunctionId => {
                        Expect::Refuse(WireError::WrongInterface(get_u32(&b, 4)))
                    }
                };
                ("flip header", expect)
            } else {
                let o = i - HEADER_SIZE;
                let expect = match resp {
                    OwnedResponse::Version(e) if o == 0 => {
                        length_verdict(e.len(), usize::from(b[HEADER_SIZE]))
                    }
                    OwnedResponse::Report { portion, .. } if o < 2 => {
                        length_verdict(portion.len(), usize::from(get_u16(&b, HEADER_SIZE)))
                    }
                    OwnedResponse::State(_) if b[i] > 3 => {
                        Expect::Refuse(WireError::BadState(b[i]))
                    }
                    _ => Expect::Accept,
                };
                ("flip body", expect)
            }
        }
    };
    (label.to_owned(), b, code, expect)
}

/// The decode property of response type `ty`: valid answers (to their own request, or for
/// TDISP_ERROR to any request) and their mutations. `body_kinds` are the body field mutations
/// the type has.
fn response_property(name: &str, ty: u8, body_kinds: &[&str]) {
    let strategy = (interface_id(), response_of(ty), any::<Index>(), mutation());
    let t = run(name, strategy, |(fid, resp, i, m), tally| {
        let rc = match resp {
            OwnedResponse::Error(_) => REQUEST_CODES[i.index(REQUEST_CODES.len())],
            _ => resp.borrow().code() | 0x80,
        };
        let (label, bytes, code, expect) = mutate_response(fid, rc, &resp, &m);
        tally.kind(&label);
        let got = decode_response(&bytes, fid, code);
        if matches!(m, Mutation::Valid) {
            let want = match &resp {
                OwnedResponse::Error(e) => Err(WireError::Refused {
                    code: e.code.get(),
                    data: e.data.get(),
                }),
                other => Ok(other.borrow()),
            };
            prop_assert_eq!(got, want, "decode(encode(x)) == x");
        }
        match expect {
            Expect::Accept => {
                let again = reencode_response(fid, &got).ok_or_else(|| {
                    TestCaseError::fail(format!("{label}: refused with {got:?}, want accepted"))
                })?;
                let given = match got {
                    Err(WireError::Refused { .. }) => bytes.get(..again.len()),
                    _ => Some(&bytes[..]),
                };
                prop_assert_eq!(Some(&again[..]), given, "{}: re-encodes", label);
                tally.hit(ROUND_TRIP);
            }
            Expect::Refuse(e) => {
                prop_assert_eq!(got, Err(e), "{}", label);
                tally.hit(REFUSED);
            }
            Expect::Unpredicted => {
                if let Some(again) = reencode_response(fid, &got) {
                    prop_assert_eq!(bytes.get(..again.len()), Some(&again[..]));
                }
                tally.hit(UNPREDICTED);
            }
        }
        Ok(())
    });
    let mut kinds = vec![
        "valid",
        "version",
        "type",
        "reserved",
        "interface",
        "request code",
        "truncate",
        "extend",
        "flip header",
    ];
    if ty != response::START_INTERFACE && ty != response::STOP_INTERFACE {
        kinds.push("flip body");
    }
    kinds.extend(body_kinds);
    require(name, &t, &kinds, 0.30, 0.25);
}

#[test]
fn response_version() {
    response_property(
        "TDISP_VERSION",
        response::VERSION,
        &["version count", "version entry"],
    );
}

#[test]
fn response_capabilities() {
    response_property(
        "TDISP_CAPABILITIES",
        response::CAPABILITIES,
        &["capabilities reserved", "capabilities field"],
    );
}

#[test]
fn response_lock_interface() {
    response_property(
        "LOCK_INTERFACE_RESPONSE",
        response::LOCK_INTERFACE,
        &["nonce"],
    );
}

#[test]
fn response_device_interface_report() {
    response_property(
        "DEVICE_INTERFACE_REPORT",
        response::DEVICE_INTERFACE_REPORT,
        &["portion length", "remainder"],
    );
}

#[test]
fn response_device_interface_state() {
    response_property(
        "DEVICE_INTERFACE_STATE",
        response::DEVICE_INTERFACE_STATE,
        &["state"],
    );
}

#[test]
fn response_start_interface() {
    response_property("START_INTERFACE_RESPONSE", response::START_INTERFACE, &[]);
}

#[test]
fn response_stop_interface() {
    response_property("STOP_INTERFACE_RESPONSE", response::STOP_INTERFACE, &[]);
}

#[test]
fn response_tdisp_error() {
    response_property("TDISP_ERROR", response::TDISP_ERROR, &["error body"]);
}

// ------------------------------------------------------------------------------------------
// Device interface reports.

const PAGE: u64 = 4096;
const LIMIT_PAGES: u64 = PHYS_ADDR_LIMIT / PAGE;
const REPORT_HEAD: usize = 16;
const RANGE_SIZE: usize = 16;

/// A valid report: disjoint, aligned ranges below the physical address limit, in any order,
/// with `offset` (MMIO_REPORTING_OFFSET) added to every first page.
#[derive(Debug, Clone)]
struct ValidReport {
    head: ReportHead,
    ranges: Vec<WireMmioRange>,
    offset: u64,
    dsi: Vec<u8>,
}

impl ValidReport {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        let n = encode_report(&mut out, &self.head, &self.ranges, &self.dsi).unwrap();
        out.truncate(n);
        out
    }

    /// What `parse` must return.
    fn parsed(&self) -> DeviceInterfaceReport {
        DeviceInterfaceReport {
            interface_info: self.head.interface_info.get(),
            msix_message_control: self.head.msix_message_control.get(),
            lnr_control: self.head.lnr_control.get(),
            tph_control: self.head.tph_control.get(),
            ranges: self
                .ranges
                .iter()
                .map(|w| ReportRange {
                    range: MmioRange::from_raw(
                        w.first_page.get() - self.offset,
                        u64::from(w.number_of_pages.get()),
                    )
                    .unwrap(),
                    attributes: w.range_attributes.get(),
                    id: w.range_id.get(),
                })
                .collect(),
            device_specific_len: self.dsi.len() as u32,
        }
    }
}

fn valid_report() -> impl Strategy<Value = ValidReport> {
    let range = (
        prop_oneof![0u64..=4, 0u64..=1 << 32],
        prop_oneof![1u32..=16, 1u32..=u32::MAX],
        0u16..=0xf,
        any::<u16>(),
        any::<u32>(),
    );
    (
        vec(range, 0..=MAX_RANGES_PER_TDI),
        0u64..1 << 36,
        prop::bool::weighted(0.25),
        prop_oneof![1 => Just(0u64), 3 => 0..=u64::MAX - PHYS_ADDR_LIMIT],
        any::<[u16; 3]>(),
        any::<u32>(),
        vec(any::<u8>(), 0..=48),
    )
        .prop_map(|(specs, start, top, offset, [info, msix, lnr], tph, dsi)| {
            // Lay the ranges out in address order with gaps, optionally push them up so the
            // last ends at the limit, then put them in the order of their sort keys.
            let mut page = start;
            let mut placed = Vec::new();
            for (gap, pages, attrs, id, key) in specs {
                page += gap;
                placed.push((key, page, pages, attrs, id));
                page += u64::from(pages);
            }
            assert!(page <= LIMIT_PAGES);
            if top {
                let shift = LIMIT_PAGES - page;
                for p in &mut placed {
                    p.1 += shift;
                }
            }
            placed.sort_by_key(|p| p.0);
            let ranges: Vec<WireMmioRange> = placed
                .into_iter()
                .map(|(_, page, pages, attrs, id)| WireMmioRange {
                    first_page: U64::new(page * PAGE + offset),
                    number_of_pages: U32::new(pages),
                    range_attributes: U16::new(attrs),
                    range_id: U16::new(id),
                })
                .collect();
            ValidReport {
                head: ReportHead {
                    interface_info: U16::new(info),
                    reserved: U16::new(0),
                    msix_message_control: U16::new(msix),
                    lnr_control: U16::new(lnr),
                    tph_control: U32::new(tph),
                    mmio_range_count: U32::new(ranges.len() as u32),
                },
                ranges,
                offset,
                dsi,
            }
        })
}

/// What `parse` must say of the ranges in `b` (the first `n` after the head): each range in
/// report order is checked for an address below the offset (`DeviceMalformed`: the device
/// did not add it) or past the limit (`InvalidRange`), alignment (`Misaligned`), emptiness and running past the limit
/// (`InvalidRange`); then any two sharing a byte are `RangesOverlap`.
fn ranges_verdict(b: &[u8], n: usize, offset: u64) -> Expect<Error> {
    let mut spans = Vec::new();
    for i in 0..n {
        let at = REPORT_HEAD + i * RANGE_SIZE;
        let (first, pages) = (get_u64(b, at), u64::from(get_u32(b, at + 8)));
        let Some(base) = first.checked_sub(offset) else {
            return Expect::Refuse(Error::DeviceMalformed);
        };
        if base >= PHYS_ADDR_LIMIT {
            return Expect::Refuse(Error::InvalidRange);
        }
        if base % PAGE != 0 {
            return Expect::Refuse(Error::Misaligned);
        }
        let end = base + pages * PAGE;
        if pages == 0 || end > PHYS_ADDR_LIMIT {
            return Expect::Refuse(Error::InvalidRange);
        }
        spans.push((base, end));
    }
    for (i, a) in spans.iter().enumerate() {
        if spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1) {
            return Expect::Refuse(Error::RangesOverlap);
        }
    }
    Expect::Accept
}

/// What `parse` must say once MMIO_RANGE_COUNT became `count`.
fn count_verdict(b: &[u8], count: u32) -> Expect<Error> {
    if count as usize > MAX_RANGES_PER_TDI {
        return Expect::Refuse(Error::TooManyRanges);
    }
    // DEVICE_SPECIFIC_INFO_LEN is now read from where range `count` was, and must match what
    // follows it.
    let at = REPORT_HEAD + count as usize * RANGE_SIZE;
    match b.get(at..at + 4) {
        Some(len) if get_u32(len, 0) as usize == b.len() - at - 4 => Expect::Unpredicted,
        _ => Expect::Refuse(Error::DeviceMalformed),
    }
}

/// `(label, bytes, expectation)` for report `v` under `m`.
fn mutate_report(v: &ValidReport, m: &Mutation) -> (String, Vec<u8>, Expect<Error>) {
    let mut b = v.encode();
    let n = v.ranges.len();
    let dsi_len_at = REPORT_HEAD + n * RANGE_SIZE;
    let malformed = Expect::Refuse(Error::DeviceMalformed);
    let (label, expect) = match m {
        Mutation::Valid => ("valid", Expect::Accept),
        Mutation::Field { which, at, value } => {
            let mut fields = vec!["reserved", "count", "dsi length", "head"];
            if n >= 1 {
                fields.extend([
                    "misaligned",
                    "zero pages",
                    "past limit",
                    "beyond limit",
                    "move",
                    "attributes",
                    "range id",
                ]);
                if v.offset > 0 {
                    fields.extend(["below offset"; 2]);
                }
            }
            if n >= 2 {
                fields.push("overlap");
            }
            let field = fields[which.index(fields.len())];
            let value = *value;
            // The range a range mutation changes, and where its fields are.
            let i = at.index(n.max(1));
            let first_at = REPORT_HEAD + i * RANGE_SIZE;
            let pages_at = first_at + 8;
            let pages = if n > 0 {
                u64::from(get_u32(&b, pages_at))
            } else {
                0
            };
            let expect = match field {
                "reserved" => {
                    put(&mut b, 2, &u16::from(nonzero(value)).to_le_bytes());
                    malformed
                }
                "count" => {
                    let count = other_value(n as u64, u64::from(u32::MAX), value) as u32;
                    let count = if value % 5 == 0 {
                        17 + (value >> 3) as u32 % 4
                    } else {
                        count
                    };
                    put(&mut b, 12, &count.to_le_bytes());
                    count_verdict(&b, count)
                }
                "dsi length" => {
                    let len = other_value(v.dsi.len() as u64, u64::from(u32::MAX), value) as u32;
                    put(&mut b, dsi_len_at, &len.to_le_bytes());
                    malformed
                }
                "head" => {
                    // INTERFACE_INFO, MSI_X_MESSAGE_CONTROL, LNR_CONTROL, TPH_CONTROL.
                    let at = pick(value, &[0usize, 1, 4, 5, 6, 7, 8, 9, 10, 11]);
                    b[at] ^= nonzero(value >> 8);
                    Expect::Accept
                }
                "misaligned" => {
                    let first = get_u64(&b, first_at) + 1 + value % (PAGE - 1);
                    put(&mut b, first_at, &first.to_le_bytes());
                    Expect::Refuse(Error::Misaligned)
                }
                "zero pages" => {
                    put(&mut b, pages_at, &0u32.to_le_bytes());
                    Expect::Refuse(Error::InvalidRange)
                }
                "past limit" => {
                    // Starts k pages below the limit, runs more than k pages.
                    let k = 1 + value % 64;
                    let first = PHYS_ADDR_LIMIT - k * PAGE + v.offset;
                    put(&mut b, first_at, &first.to_le_bytes());
                    put(
                        &mut b,
                        pages_at,
                        &((k + 1 + (value >> 8) % 64) as u32).to_le_bytes(),
                    );
                    Expect::Refuse(Error::InvalidRange)
                }
                "beyond limit" => {
                    // A first page at or above the limit (after the offset is taken off).
                    let room = u64::MAX - v.offset - PHYS_ADDR_LIMIT;
                    let above = if value % 2 == 0 {
                        (value >> 1) % 64 * PAGE
                    } else {
                        value.checked_rem(room.wrapping_add(1)).unwrap_or(value)
                    };
                    let above = above.min(room);
                    put(
                        &mut b,
                        first_at,
                        &(PHYS_ADDR_LIMIT + above + v.offset).to_le_bytes(),
                    );
                    Expect::Refuse(Error::InvalidRange)
                }
                "below offset" => {
                    put(&mut b, first_at, &(value % v.offset).to_le_bytes());
                    Expect::Refuse(Error::DeviceMalformed)
                }
                "move" => {
                    // Anywhere it fits below the limit: valid unless it lands on another range.
                    let page = value % (LIMIT_PAGES - pages + 1);
                    let page = if value % 4 == 0 {
                        page % (1 << 36)
                    } else {
                        page
                    };
                    put(&mut b, first_at, &(page * PAGE + v.offset).to_le_bytes());
                    ranges_verdict(&b, n, v.offset)
                }
                "overlap" => {
                    // Range i starts inside range j.
                    let j = (i + 1 + (value >> 40) as usize % (n - 1)) % n;
                    let j_at = REPORT_HEAD + j * RANGE_SIZE;
                    let j_base = get_u64(&b, j_at) - v.offset;
                    let j_pages = u64::from(get_u32(&b, j_at + 8));
                    let new_base = j_base + (value % j_pages) * PAGE;
                    let new_pages = pages.min((PHYS_ADDR_LIMIT - new_base) / PAGE);
                    put(&mut b, first_at, &(new_base + v.offset).to_le_bytes());
                    put(&mut b, pages_at, &(new_pages as u32).to_le_bytes());
                    Expect::Refuse(Error::RangesOverlap)
                }
                "attributes" => {
                    // Any value, reserved bits 15:4 included, is passed through: pinned here so
                    // that a change of that rule is a deliberate one.
                    let a = get_u16(&b, first_at + 12);
                    let new = other_value(u64::from(a), u64::from(u16::MAX), value) as u16;
                    put(&mut b, first_at + 12, &new.to_le_bytes());
                    Expect::Accept
                }
                "range id" => {
                    b[first_at + 14 + (value % 2) as usize] ^= nonzero(value >> 8);
                    Expect::Accept
                }
                other => panic!("no field {other:?}"),
            };
            (field, expect)
        }
        Mutation::Truncate { by, .. } => {
            b.truncate(b.len() - 1 - by.index(b.len()));
            ("truncate", malformed)
        }
        Mutation::Extend { bytes, .. } => {
            b.extend_from_slice(bytes);
            ("extend", malformed)
        }
        Mutation::Flip { at, mask, aim } => {
            // Reserved, MMIO_RANGE_COUNT, DEVICE_SPECIFIC_INFO_LEN.
            let aimed = [
                2,
                3,
                12,
                13,
                14,
                15,
                dsi_len_at,
                dsi_len_at + 1,
                dsi_len_at + 2,
                dsi_len_at + 3,
            ];
            let i = flip_at(b.len(), at, *aim, &aimed);
            b[i] ^= mask;
            if i < REPORT_HEAD {
                let expect = match i {
                    2 | 3 => malformed,
                    12..=15 => count_verdict(&b, get_u32(&b, 12)),
                    _ => Expect::Accept,
                };
                ("flip head", expect)
            } else if i < dsi_len_at {
                let expect = if (i - REPORT_HEAD) % RANGE_SIZE < 12 {
                    ranges_verdict(&b, n, v.offset)
                } else {
                    Expect::Accept
                };
                ("flip range", expect)
            } else if i < dsi_len_at + 4 {
                ("flip dsi length", malformed)
            } else {
                ("flip dsi", Expect::Accept)
            }
        }
    };
    (label.to_owned(), b, expect)
}

/// A parsed report encoded again, with the device-specific bytes (which `parse` only counts)
/// taken from the end of `given`.
fn reencode_report(r: &DeviceInterfaceReport, offset: u64, given: &[u8]) -> Option<Vec<u8>> {
    let head = ReportHead {
        interface_info: U16::new(r.interface_info),
        reserved: U16::new(0),
        msix_message_control: U16::new(r.msix_message_control),
        lnr_control: U16::new(r.lnr_control),
        tph_control: U32::new(r.tph_control),
        mmio_range_count: U32::new(r.ranges.len() as u32),
    };
    let ranges: Vec<WireMmioRange> = r
        .ranges
        .iter()
        .map(|x| WireMmioRange {
            first_page: U64::new(x.range.base().as_u64() + offset),
            number_of_pages: U32::new(x.range.pages() as u32),
            range_attributes: U16::new(x.attributes),
            range_id: U16::new(x.id),
        })
        .collect();
    let dsi = given.get(given.len().checked_sub(r.device_specific_len as usize)?..)?;
    let mut out = vec![0u8; 2048];
    let n = encode_report(&mut out, &head, &ranges, dsi).ok()?;
    out.truncate(n);
    Some(out)
}

#[test]
fn reports() {
    let strategy = (valid_report(), mutation());
    let t = run("reports", strategy, |(v, m), tally| {
        let (label, bytes, expect) = mutate_report(&v, &m);
        tally.kind(&label);
        let got = DeviceInterfaceReport::parse(&bytes, v.offset);
        if matches!(m, Mutation::Valid) {
            prop_assert_eq!(&got, &Ok(v.parsed()), "decode(encode(x)) == x");
            tally.kind(&format!(
                "valid with {} ranges",
                match v.ranges.len() {
                    0 => "0",
                    MAX_RANGES_PER_TDI => "MAX",
                    _ => "1..MAX",
                }
            ));
        }
        match expect {
            Expect::Accept => {
                let r = got.map_err(|e| {
                    TestCaseError::fail(format!("{label}: refused with {e:?}, want accepted"))
                })?;
                prop_assert_eq!(
                    reencode_report(&r, v.offset, &bytes),
                    Some(bytes.clone()),
                    "{}: re-encodes",
                    label
                );
                tally.hit(ROUND_TRIP);
            }
            Expect::Refuse(e) => {
                prop_assert_eq!(got, Err(e), "{}", label);
                tally.hit(REFUSED);
            }
            Expect::Unpredicted => {
                if let Ok(r) = got {
                    prop_assert_eq!(reencode_report(&r, v.offset, &bytes), Some(bytes.clone()));
                }
                tally.hit(UNPREDICTED);
            }
        }
        Ok(())
    });
    require(
        "reports",
        &t,
        &[
            "valid",
            "valid with 0 ranges",
            "valid with 1..MAX ranges",
            "valid with MAX ranges",
            "reserved",
            "count",
            "dsi length",
            "head",
            "misaligned",
            "zero pages",
            "past limit",
            "beyond limit",
            "below offset",
            "move",
            "overlap",
            "attributes",
            "range id",
            "truncate",
            "extend",
            "flip head",
            "flip range",
            "flip dsi length",
            "flip dsi",
        ],
        0.30,
        0.25,
    );
}

// ------------------------------------------------------------------------------------------
// Report portions.

/// A report (a valid encoded one, or any bytes up to the buffer size) and where it is cut
/// into portions.
#[derive(Debug, Clone)]
struct ValidPortions {
    report: Vec<u8>,
    /// Lengths of the portions; they add up to the report's length, and are non-zero unless
    /// the report is empty (then one empty portion).
    lengths: Vec<usize>,
}

impl ValidPortions {
    /// The portions with their REMAINDER_LENGTH.
    fn portions(&self) -> Vec<(Vec<u8>, u16)> {
        let mut start = 0;
        self.lengths
            .iter()
            .map(|&len| {
                let p = self.report[start..start + len].to_vec();
                start += len;
                (p, (self.report.len() - start) as u16)
            })
            .collect()
    }
}

fn valid_portions() -> impl Strategy<Value = ValidPortions> {
    let report = prop_oneof![
        valid_report().prop_map(|r| r.encode()),
        vec(any::<u8>(), 0..=MAX_REPORT_BYTES),
        vec(any::<u8>(), MAX_REPORT_BYTES - 2..=MAX_REPORT_BYTES),
        Just(Vec::new()),
    ];
    (
        report,
        prop_oneof![
            vec(any::<Index>(), 0..12).prop_map(Err::<usize, Vec<Index>>),
            (1usize..=300).prop_map(Ok::<usize, Vec<Index>>),
        ],
    )
        .prop_map(|(report, cuts)| {
            let len = report.len();
            let mut ends: Vec<usize> = match cuts {
                // Fixed-size portions, as the firmware asks for them.
                Ok(size) => (1..=len.div_ceil(size))
                    .map(|k| (k * size).min(len))
                    .collect(),
                // Cut anywhere.
                Err(cuts) if len > 0 => cuts.iter().map(|c| 1 + c.index(len)).collect(),
                Err(_) => Vec::new(),
            };
            ends.push(len);
            ends.sort_unstable();
            ends.dedup();
            let mut start = 0;
            let lengths = ends
                .into_iter()
                .map(|end| {
                    let l = end - start;
                    start = end;
                    l
                })
                .collect();
            ValidPortions { report, lengths }
        })
}

/// What the assembler must make of a sequence of portions.
#[derive(Debug, Clone, PartialEq)]
enum Assembled {
    /// Every portion accepted, the last with `Ok(true)`, and these bytes assembled.
    Done(Vec<u8>),
    /// Every portion accepted with `Ok(false)`: still waiting at this offset.
    Incomplete(usize),
    /// Portion `step` refused with this error, all before it accepted.
    Refused { step: usize, error: WireError },
}

/// The outcome once portion `k` is `new` instead, with its own remainder.
fn resized(v: &ValidPortions, k: usize, new: &[u8]) -> Assembled {
    let ps = v.portions();
    if k > 0 {
        // Every later portion claims a total the first portion did not.
        return Assembled::Refused {
            step: k,
            error: WireError::ReportInconsistent,
        };
    }
    // The first portion fixes the total; a shifted total is consistent with every later one.
    let remainder = usize::from(ps[0].1);
    if new.len() + remainder > MAX_REPORT_BYTES {
        Assembled::Refused {
            step: 0,
            error: WireError::ReportTooLarge,
        }
    } else if new.is_empty() && remainder != 0 {
        Assembled::Refused {
            step: 0,
            error: WireError::ReportInconsistent,
        }
    } else {
        let mut all = new.to_vec();
        all.extend_from_slice(&v.report[v.lengths[0]..]);
        Assembled::Done(all)
    }
}

/// The outcome once portion `k` says `remainder` instead of its own.
fn remaindered(v: &ValidPortions, k: usize, remainder: u16) -> Assembled {
    let inconsistent = |step| Assembled::Refused {
        step,
        error: WireError::ReportInconsistent,
    };
    if k > 0 {
        return inconsistent(k);
    }
    let first = v.lengths[0];
    if first + usize::from(remainder) > MAX_REPORT_BYTES {
        Assembled::Refused {
            step: 0,
            error: WireError::ReportTooLarge,
        }
    } else if first == 0 {
        inconsistent(0)
    } else if v.lengths.len() > 1 {
        inconsistent(1)
    } else {
        Assembled::Incomplete(first)
    }
}

/// `(label, portions, outcome)` for `v` under `m`.
fn mutate_portions(v: &ValidPortions, m: &Mutation) -> (String, Vec<(Vec<u8>, u16)>, Assembled) {
    let mut ps = v.portions();
    let n = ps.len();
    let total = v.report.len();
    let inconsistent = |step| Assembled::Refused {
        step,
        error: WireError::ReportInconsistent,
    };
    let (label, outcome) = match m {
        Mutation::Valid => ("valid", Assembled::Done(v.report.clone())),
        Mutation::Field { which, at, value } => {
            let mut fields = vec!["remainder", "oversize", "after done", "oversize"];
            if total > 0 {
                fields.push("stall");
            }
            if n >= 2 {
                fields.push("duplicate");
            }
            let field = fields[which.index(fields.len())];
            let k = at.index(n);
            let value = *value;
            let outcome = match field {
                "remainder" => {
                    let r = ps[k].1;
                    let new = other_value(u64::from(r), u64::from(u16::MAX), value) as u16;
                    ps[k].1 = new;
                    remaindered(v, k, new)
                }
                "oversize" => {
                    if value % 2 == 0 {
                        // The first portion announces more than the buffer holds.
                        let least = (MAX_REPORT_BYTES + 1 - ps[0].0.len()) as u64;
                        ps[0].1 = (least + (value >> 1) % (u64::from(u16::MAX) + 1 - least)) as u16;
                    } else {
                        // One portion larger than the buffer.
                        let extra = 1 + (value >> 1) as usize % 64;
                        ps = vec![(vec![0xa5; MAX_REPORT_BYTES + extra], 0)];
                    }
                    Assembled::Refused {
                        step: 0,
                        error: WireError::ReportTooLarge,
                    }
                }
                "after done" => {
                    let extra = vec![0x5a; 1 + (value % 32) as usize];
                    ps.push((extra, (value >> 8) as u16));
                    inconsistent(n)
                }
                "stall" => {
                    // An empty portion where portion k was due.
                    let start: usize = v.lengths[..k].iter().sum();
                    ps.insert(k, (Vec::new(), (total - start) as u16));
                    inconsistent(k)
                }
                "duplicate" => {
                    // Portion k (not the last) again, right after itself.
                    let k = at.index(n - 1);
                    ps.insert(k + 1, ps[k].clone());
                    inconsistent(k + 1)
                }
                other => panic!("no field {other:?}"),
            };
            (field, outcome)
        }
        Mutation::Truncate { at, by } => {
            let k = at.index(n);
            if ps[k].0.is_empty() {
                // The empty report: its only portion never arrives.
                ps.clear();
                ("truncate", Assembled::Incomplete(0))
            } else {
                let len = ps[k].0.len();
                ps[k].0.truncate(len - 1 - by.index(len));
                let outcome = resized(v, k, &ps[k].0);
                ("truncate", outcome)
            }
        }
        Mutation::Extend { at, bytes } => {
            let k = at.index(n);
            ps[k].0.extend_from_slice(bytes);
            let outcome = resized(v, k, &ps[k].0);
            ("extend", outcome)
        }
        Mutation::Flip { at, mask, aim } => {
            // Over the portions as DEVICE_INTERFACE_REPORT carries them: REMAINDER_LENGTH,
            // then the bytes; an aimed flip hits a REMAINDER_LENGTH.
            let mut starts = Vec::new();
            let mut wire = 0;
            for p in &ps {
                starts.extend([wire, wire + 1]);
                wire += 2 + p.0.len();
            }
            let mut i = flip_at(wire, at, *aim, &starts);
            let k = ps
                .iter()
                .position(|p| {
                    let here = i < 2 + p.0.len();
                    if !here {
                        i -= 2 + p.0.len();
                    }
                    here
                })
                .unwrap();
            if i < 2 {
                ps[k].1 ^= u16::from(*mask) << (8 * i);
                ("flip remainder", remaindered(v, k, ps[k].1))
            } else {
                ps[k].0[i - 2] ^= mask;
                let report = ps.iter().flat_map(|p| p.0.iter().copied()).collect();
                ("flip data", Assembled::Done(report))
            }
        }
    };
    (label.to_owned(), ps, outcome)
}

#[test]
fn report_portions() {
    let strategy = (valid_portions(), mutation());
    let t = run("report_portions", strategy, |(v, m), tally| {
        let (label, portions, want) = mutate_portions(&v, &m);
        tally.kind(&label);
        let mut a = ReportAssembler::new();
        let mut results = Vec::new();
        for (portion, remainder) in &portions {
            let r = a.accept(portion, *remainder);
            results.push(r);
            if r.is_err() {
                break;
            }
            if matches!(m, Mutation::Valid) {
                let sent: usize = v.lengths[..results.len()].iter().sum();
                prop_assert_eq!(a.offset(), sent, "offset follows the portions");
            }
        }
        let got = match results.last() {
            Some(Err(error)) => Assembled::Refused {
                step: results.len() - 1,
                error: *error,
            },
            Some(Ok(true)) => Assembled::Done(a.bytes().to_vec()),
            _ => Assembled::Incomplete(a.offset()),
        };
        prop_assert_eq!(&got, &want, "{}", label);
        // Every accepted portion says whether the report is whole: exactly when its
        // REMAINDER_LENGTH is 0.
        for (r, (_, remainder)) in results.iter().zip(&portions) {
            if let Ok(whole) = r {
                prop_assert_eq!(*whole, *remainder == 0, "{}: {:?}", label, results);
            }
        }
        tally.hit(match want {
            Assembled::Done(_) => ROUND_TRIP,
            Assembled::Refused { .. } => REFUSED,
            Assembled::Incomplete(_) => INCOMPLETE,
        });
        if let Assembled::Done(bytes) = &want
            && bytes.len() == MAX_REPORT_BYTES
        {
            tally.kind("done at MAX_REPORT_BYTES");
        }
        Ok(())
    });
    require(
        "report_portions",
        &t,
        &[
            "valid",
            "done at MAX_REPORT_BYTES",
            "remainder",
            "oversize",
            "after done",
            "stall",
            "duplicate",
            "truncate",
            "extend",
            "flip remainder",
            "flip data",
        ],
        0.30,
        0.25,
    );
}
