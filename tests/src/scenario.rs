//! The scenario language: one operation per line, optionally `-> Status`.
//!
//! ```text
//! # comment                                   (blank lines and comments are skipped)
//! guest <g>                                   register a guest
//! device <d> <seg:bus:dev.fn> [bar <base> <pages>]...   register a device and its BARs
//! tdi <t> <d> <seg:bus:dev.fn>                create a TDI for one interface of <d>
//! bind <t> <g> [range|shared-range <base> <pages>]...  the device reports these ranges; the host binds
//! map <t> <g> <gpa> <hpa> <4k|2m|1g>          map one private MMIO page
//! start <g> <t> [no-accept]                   the host creates the TDI's trusted DMA context
//!                                             (if none), the guest accepts it and starts the
//!                                             TDI; `no-accept`: the guest's START alone
//! unbind <t>                                  one unbind call
//! unbind-all <t>                              unbind calls until it is Done (bounded)
//! unbind-force <t>                            one forced unbind call (cut the IDE stream, no STOP)
//! unbind-force-all <t>                        forced unbind calls until it is Done (bounded)
//! stream-setup <d>                            host sets the device's IDE stream up again
//! device-error <t>                            the device reports ERROR
//! check <t>                                   the firmware asks the device for the TDI's state
//! zap <d> [<bar index>]                       host zaps a BAR (all BARs without an index)
//! host-unmap <g> <gpa> <size>                 host asks to remove a private leaf
//! host-block <g> <gpa> <size>                 host asks to block a private leaf
//! host <path> <d>... <unbind-first|unbind-force-first|zap-first> a vfio-pci host path: patched (plain or forced unbind first) or old order
//! device-event <t> <disturb|reset>            FLR / decode or bus-master off / D3hot; conventional reset
//! device-misbehave <t> <none|silent|garbage|wrong-interface|wrong-version|refuse|inconsistent-report>
//! defer-flush <g> <on|off>                    hold back (or complete) the guest's TLB flushes
//! invalidations <auto|manual>                 auto (the default): an unbind stopped for an IOTLB
//!                                             invalidation has the host complete it and call
//!                                             again (twice at most); manual: the host completes
//!                                             them only at `complete-invalidations`, and the
//!                                             stop is the line's status
//! complete-invalidations <t>                  the host completes the IOTLB invalidations the
//!                                             TDI's unbind waits for (TDX: TDH.IQ.INV.REQUEST of
//!                                             the owner's domain and TDH.IQ.INV.PROCESS on each
//!                                             IOMMU with an entry of it; SEV: the ASID fence)
//! dma-create <t>                              the host creates the TDI's trusted DMA context
//! dma-accept <g> <t>                          the guest accepts the TDI's trusted DMA context
//! dma <t> <read|write> <gpa> <private|shared> the device's DMA to a guest address (T=1 while
//!                                             the device is RUN): reaches private memory
//!                                             through the IOMMU or its IOTLB, or shared only
//! expect-state <t> <unbound|locked|run|error|unbinding>
//! expect-leaf <g> <gpa> <mapped|blocked|none>
//!                                             (`dma`, `expect-state`, `expect-leaf`: then
//!                                             `<backend>:<word>` for a backend that differs)
//! remove-tdi <t> / remove-device <d> / destroy-guest <g>
//! hold <t>                                    the next bind/start/check/unbind of <t> stops at its
//!                                             first request (status `Relay`): the host keeps it
//! answer <t> <none|genuine|garbage|long|stale|flip <byte>|other <t2>>
//!                                             hands an answer for <t>'s held request to the
//!                                             firmware: none (no answer), the device's own,
//!                                             bytes that are no DOE object, one over the
//!                                             largest, the last answer relayed for <t>, the
//!                                             device's own with bit 0 of byte <byte> flipped,
//!                                             or the device's answer to <t2>'s held request;
//!                                             a next request (`Relay`) is held again
//! relay <t>                                   relays the held request and all that follow
//!                                             until the operation ends: its status
//! ```
//! Numbers are decimal or `0x` hex, `_` allowed. A name `#N` is the raw handle N, for hostile
//! tests. Without `-> Status` a line must succeed (`Ok`). Where the platforms differ by design,
//! `-> Status <backend>:<Status>...` expects another status on the backends named (`core`,
//! `tdx`, `sev`), e.g. `start td1 nic.0 no-accept -> DmaNotAccepted sev:Ok`; the backends'
//! states may then differ, which the observations after it say the same way:
//! `expect-state nic.0 locked sev:run`.

use core::fmt::{self, Write};

use heapless::Vec;
use tsm_core::capacity::MAX_BARS;
use tsm_core::device_model::{MODEL_MAX_RANGES, Misbehaviour};
use tsm_core::ids::RequesterId;
use tsm_core::{Error, PageSize};

/// Most devices one `host` line may name (a hot-reset device set).
pub const MAX_DEVICE_SET: usize = 4;

/// A host kernel path from the reference patch (vfio-pci), each of which zaps BARs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    /// vfio_basic_config_write: PCI_COMMAND_MEMORY cleared.
    MemDisable,
    /// vfio_lock_and_set_power_state: D3hot.
    D3hot,
    /// vfio_pci_runtime_pm_entry.
    RuntimePm,
    /// vfio_exp_config_write: FLR through the PCIe capability.
    FlrPcie,
    /// vfio_af_config_write: FLR through the AF capability.
    FlrAf,
    /// vfio_pci_ioctl_reset: VFIO_DEVICE_RESET.
    ResetIoctl,
    /// vfio_pci_dev_set_hot_reset: bus reset of a device set.
    HotReset,
    /// vfio_pci_core_close_device.
    Close,
}

/// Whether a host path unbinds before it zaps (the patch) or zaps while bound (before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// vfio_pci_tsm_unbind() first, then zap: the patched kernel.
    UnbindFirst,
    /// Forced unbind of every TDI first (the device does not answer STOP), then zap.
    UnbindForceFirst,
    /// Zap while bound: the kernel before the patch.
    ZapFirst,
}

/// What a device does (device model events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    /// FLR, memory/bus-master disable, D3hot: LOCKED/RUN -> ERROR.
    Disturb,
    /// Conventional reset: -> CONFIG_UNLOCKED.
    Reset,
}

/// One range a device reports: base, pages, and whether it is IS_NON_TEE_MEM (`shared-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedRange {
    /// FIRST_PAGE.
    pub base: u64,
    /// NUMBER_OF_PAGES.
    pub pages: u32,
    /// IS_NON_TEE_MEM.
    pub shared: bool,
}

/// States `expect-state` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    /// Unbound (CONFIG_UNLOCKED, shared).
    Unbound,
    /// CONFIG_LOCKED.
    Locked,
    /// RUN.
    Run,
    /// ERROR.
    Error,
    /// Unbind in progress.
    Unbinding,
}

/// What a `dma` line expects the device's DMA to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReachName {
    /// The owner's private memory.
    Private,
    /// Shared memory only.
    Shared,
}

/// What an observation line (`dma`, `expect-state`, `expect-leaf`) expects: one word for
/// every backend, then `<backend>:<word>` for a backend that differs by design (after a line
/// whose per-backend status left the backends in different states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Each<'a, T> {
    /// What every backend not named expects.
    pub all: T,
    /// The backends that expect another.
    pub on: Vec<(&'a str, T), { BACKENDS.len() }>,
}

impl<T: Copy> Each<'_, T> {
    /// What the backend named `backend` expects.
    pub fn on(&self, backend: &str) -> T {
        self.on
            .iter()
            .find(|(b, _)| *b == backend)
            .map_or(self.all, |(_, t)| *t)
    }
}

/// Leaf states `expect-leaf` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafName {
    /// Present and mapped.
    Mapped,
    /// Present and blocked.
    Blocked,
    /// No leaf.
    None,
}

/// What `answer` hands the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerWith<'a> {
    /// The host says the device did not answer.
    None,
    /// The device's own answer.
    Genuine,
    /// Bytes that are not a DOE object.
    Garbage,
    /// One byte more than the largest message the relay carries.
    Long,
    /// The last answer relayed for this TDI (an earlier exchange's).
    Stale,
    /// The device's own answer with bit 0 of this byte flipped.
    Flip(u16),
    /// The device's answer to another TDI's held request.
    Other(&'a str),
}

/// One operation, with raw numbers: turning them into checked types is part of running it,
/// so a bad address is the firmware's status, not a parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
// No heap: a bind line's report is stored inline, so that variant sets the size.
#[allow(clippy::large_enum_variant)]
pub enum Op<'a> {
    Guest {
        name: &'a str,
    },
    Device {
        name: &'a str,
        rid: RequesterId,
        bars: Vec<(u64, u64), MAX_BARS>,
    },
    Tdi {
        name: &'a str,
        device: &'a str,
        iface: RequesterId,
    },
    Bind {
        tdi: &'a str,
        guest: &'a str,
        ranges: Vec<ReportedRange, MODEL_MAX_RANGES>,
    },
    Map {
        tdi: &'a str,
        guest: &'a str,
        gpa: u64,
        hpa: u64,
        size: PageSize,
    },
    Start {
        guest: &'a str,
        tdi: &'a str,
        /// The usual start: the host creates the TDI's trusted DMA context if it has none and
        /// the guest accepts it first (`false`: `no-accept`, the guest's START alone).
        accept: bool,
    },
    Unbind {
        tdi: &'a str,
    },
    UnbindAll {
        tdi: &'a str,
    },
    UnbindForce {
        tdi: &'a str,
    },
    UnbindForceAll {
        tdi: &'a str,
    },
    StreamSetup {
        device: &'a str,
    },
    DeviceError {
        tdi: &'a str,
    },
    Check {
        tdi: &'a str,
    },
    Zap {
        device: &'a str,
        bar: Option<u8>,
    },
    HostUnmap {
        guest: &'a str,
        gpa: u64,
        size: PageSize,
    },
    HostBlock {
        guest: &'a str,
        gpa: u64,
        size: PageSize,
    },
    Host {
        path: HostPath,
        devices: Vec<&'a str, MAX_DEVICE_SET>,
        order: Order,
    },
    DeviceEvent {
        tdi: &'a str,
        event: EventName,
    },
    DeviceMisbehave {
        tdi: &'a str,
        how: Option<Misbehaviour>,
    },
    DeferFlush {
        guest: &'a str,
        on: bool,
    },
    Invalidations {
        manual: bool,
    },
    CompleteInvalidations {
        tdi: &'a str,
    },
    DmaCreate {
        tdi: &'a str,
    },
    DmaAccept {
        guest: &'a str,
        tdi: &'a str,
    },
    Dma {
        tdi: &'a str,
        write: bool,
        gpa: u64,
        reach: Each<'a, ReachName>,
    },
    ExpectState {
        tdi: &'a str,
        state: Each<'a, StateName>,
    },
    ExpectLeaf {
        guest: &'a str,
        gpa: u64,
        leaf: Each<'a, LeafName>,
    },
    RemoveTdi {
        tdi: &'a str,
    },
    RemoveDevice {
        device: &'a str,
    },
    DestroyGuest {
        guest: &'a str,
    },
    Hold {
        tdi: &'a str,
    },
    Answer {
        tdi: &'a str,
        with: AnswerWith<'a>,
    },
    Relay {
        tdi: &'a str,
    },
}

impl<'a> Op<'a> {
    /// The name this line declares, with its kind (`guest`, `device` and `tdi` lines).
    pub fn declares(&self) -> Option<(&'a str, NameKind)> {
        match *self {
            Op::Guest { name } => Some((name, NameKind::Guest)),
            Op::Device { name, .. } => Some((name, NameKind::Device)),
            Op::Tdi { name, .. } => Some((name, NameKind::Tdi)),
            _ => None,
        }
    }

    /// Calls `f` with every name the line uses and the kind it must be, in line order.
    pub fn for_each_use(&self, mut f: impl FnMut(&'a str, NameKind)) {
        use NameKind::{Device, Guest, Tdi};
        match self {
            Op::Guest { .. } | Op::Device { .. } | Op::Invalidations { .. } => {}
            Op::Tdi { device, .. } | Op::StreamSetup { device } | Op::Zap { device, .. } => {
                f(device, Device)
            }
            Op::RemoveDevice { device } => f(device, Device),
            Op::Bind { tdi, guest, .. } | Op::Map { tdi, guest, .. } => {
                f(tdi, Tdi);
                f(guest, Guest);
            }
            Op::Start { guest, tdi, .. } | Op::DmaAccept { guest, tdi } => {
                f(guest, Guest);
                f(tdi, Tdi);
            }
            Op::Unbind { tdi }
            | Op::UnbindAll { tdi }
            | Op::UnbindForce { tdi }
            | Op::UnbindForceAll { tdi }
            | Op::DeviceError { tdi }
            | Op::Check { tdi }
            | Op::DeviceEvent { tdi, .. }
            | Op::DeviceMisbehave { tdi, .. }
            | Op::ExpectState { tdi, .. }
            | Op::RemoveTdi { tdi }
            | Op::Hold { tdi }
            | Op::DmaCreate { tdi }
            | Op::CompleteInvalidations { tdi }
            | Op::Dma { tdi, .. }
            | Op::Relay { tdi } => f(tdi, Tdi),
            Op::Answer { tdi, with } => {
                f(tdi, Tdi);
                if let AnswerWith::Other(other) = with {
                    f(other, Tdi);
                }
            }
            Op::HostUnmap { guest, .. }
            | Op::HostBlock { guest, .. }
            | Op::DeferFlush { guest, .. }
            | Op::ExpectLeaf { guest, .. }
            | Op::DestroyGuest { guest } => f(guest, Guest),
            Op::Host { devices, .. } => devices.iter().for_each(|d| f(d, Device)),
        }
    }
}

/// A parsed line: the operation and the status it must return (`Ok` when not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The operation.
    pub op: Op<'a>,
    /// Expected status name, as printed (`Ok`, `Resumable`, `TdiBound`, `Busy(Tdi)` ...).
    pub expect: &'a str,
    /// Backends (`core`, `tdx`, `sev`) that expect another status instead (`-> S sev:S2`):
    /// where the platforms differ by design.
    pub on: Vec<(&'a str, &'a str), { BACKENDS.len() }>,
}

/// The backends a line may name an expectation of its own for ([`Line::on`]).
pub const BACKENDS: [&str; 3] = ["core", "tdx", "sev"];

impl<'a> Line<'a> {
    /// The status the line expects on the backend named `backend`.
    pub fn expect_on(&self, backend: &str) -> &'a str {
        self.on
            .iter()
            .find(|(b, _)| *b == backend)
            .map_or(self.expect, |(_, s)| *s)
    }
}

/// The kinds of object a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Declared by a `guest` line.
    Guest,
    /// Declared by a `device` line.
    Device,
    /// Declared by a `tdi` line.
    Tdi,
}

impl NameKind {
    /// The form a name of this kind has in a scenario: what an error says it expected.
    pub const fn expected(self) -> &'static str {
        match self {
            NameKind::Guest => "a guest name like td1 (declared by `guest td1`)",
            NameKind::Device => "a device name like nic (declared by `device nic ...`)",
            NameKind::Tdi => "a TDI name like nic.0 (declared by `tdi nic.0 nic ...`)",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Guest => "guest",
            NameKind::Device => "device",
            NameKind::Tdi => "TDI",
        })
    }
}

/// What is wrong with the word a [`Diagnostic`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The first word is no operation.
    UnknownOp,
    /// Too few or too many words for the operation, or a keyword missing.
    Arity,
    /// A status written without `->` before it.
    MissingArrow,
    /// Nothing, or more than one word, after `->`.
    BadStatus,
    /// A word after `->` that is no status the firmware returns.
    UnknownStatus,
    /// A number that does not parse or does not fit.
    BadNumber,
    /// A keyword (size, path, order, event, ...) that is none of the allowed ones.
    BadKeyword,
    /// A requester ID that is not `seg:bus:dev.fn` in hex.
    BadRequesterId,
    /// More BARs, ranges, devices or words than the language allows.
    TooMany,
    /// A name no earlier line declared.
    UnknownName,
    /// A name declared as another kind of object.
    WrongKind(NameKind),
    /// A name an earlier line already declared (as this kind).
    Redeclared(NameKind),
    /// A raw handle `#N` where the line needs a declared name.
    RawHandle,
    /// More names, held requests or kept answers than the interpreter has room for.
    TooManyNames,
    /// `answer` or `relay` of a TDI with no held request.
    NothingHeld,
    /// `answer ... stale` with no answer relayed yet, or `flip` past the answer's end.
    NoSuchAnswer,
}

/// Room for a suggested word (every operation, status and keyword is shorter).
pub type Word = heapless::String<32>;

/// Why a line did not parse or could not run: the word at fault, where it is, what was
/// expected there and the nearest known word. Printed as `path:line:column: message` with
/// [`Diagnostic::at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    /// What is wrong.
    pub problem: Problem,
    /// The word at fault (a slice of the line).
    pub token: &'a str,
    /// 1-based column of `token` in its line (0 when it is not in the line).
    pub column: usize,
    /// The form the line needed there.
    pub expected: &'static str,
    /// The nearest known word, when one is close.
    pub nearest: Option<Word>,
}

/// The error [`parse_line`] returns.
pub type ParseError<'a> = Diagnostic<'a>;

impl<'a> Diagnostic<'a> {
    /// A diagnostic about `token`; its column is set by [`Diagnostic::in_line`].
    pub fn new(problem: Problem, token: &'a str, expected: &'static str) -> Self {
        Diagnostic {
            problem,
            token,
            column: 0,
            expected,
            nearest: None,
        }
    }

    /// The same, with the nearest known word.
    #[must_use]
    pub fn nearest(mut self, word: Option<&str>) -> Self {
        self.nearest = word.and_then(|w| Word::try_from(w).ok());
        self
    }

    /// The same, with the column of its token in `line`.
    #[must_use]
    pub fn in_line(mut self, line: &str) -> Self {
        self.column = column_of(line, self.token);
        self
    }

    /// Prints it at `path:line:column:` (column 1 when the word is not in the line).
    pub fn at<'d>(&'d self, path: &'d str, line: usize) -> impl fmt::Display + 'd {
        struct At<'d, 'a>(&'d Diagnostic<'a>, &'d str, usize);
        impl fmt::Display for At<'_, '_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.1,
                    self.2,
                    self.0.column.max(1),
                    self.0
                )
            }
        }
        At(self, path, line)
    }
}

impl fmt::Display for Diagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.token;
        match self.problem {
            Problem::UnknownOp => write!(f, "unknown operation `{t}`")?,
            Problem::Arity => write!(f, "wrong arguments to `{t}`")?,
            Problem::MissingArrow => write!(f, "status `{t}` without `->` before it")?,
            Problem::BadStatus if t == "->" => f.write_str("no status after `->`")?,
            Problem::BadStatus => write!(f, "unexpected `{t}` after the status")?,
            Problem::UnknownStatus => write!(f, "unknown status `{t}`")?,
            Problem::BadNumber => write!(f, "bad number `{t}`")?,
            Problem::BadKeyword => write!(f, "unexpected `{t}`")?,
            Problem::BadRequesterId => write!(f, "bad requester ID `{t}`")?,
            Problem::TooMany => write!(f, "one too many at `{t}`")?,
            Problem::UnknownName => write!(f, "unknown name `{t}`")?,
            Problem::WrongKind(is) => write!(f, "`{t}` is a {is}")?,
            Problem::Redeclared(is) => write!(f, "`{t}` is already a {is}")?,
            Problem::RawHandle => write!(f, "`{t}` is a raw handle")?,
            Problem::TooManyNames => write!(f, "no room for what `{t}` keeps")?,
            Problem::NothingHeld => write!(f, "`{t}` has no held request")?,
            Problem::NoSuchAnswer => write!(f, "no such answer for `{t}`")?,
        }
        write!(f, ": expected {}", self.expected)?;
        if let Some(n) = &self.nearest {
            write!(f, "; did you mean `{n}`?")?;
        }
        Ok(())
    }
}

/// 1-based column (in characters) of `token` when it is a slice of `line`, else 0.
pub fn column_of(line: &str, token: &str) -> usize {
    let offset = (token.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
    line.get(..offset)
        .filter(|_| {
            offset
                .checked_add(token.len())
                .is_some_and(|end| end <= line.len())
        })
        .map_or(0, |before| before.chars().count().saturating_add(1))
}

/// Edit distance (Levenshtein, ASCII case counts) between two short words; `usize::MAX` when
/// `b` is longer than the words of the language.
pub fn distance(a: &str, b: &str) -> usize {
    const LONGEST: usize = 64;
    let mut row = [0usize; LONGEST + 1];
    if b.len() > LONGEST {
        return usize::MAX;
    }
    for (j, cell) in row.iter_mut().enumerate() {
        *cell = j;
    }
    for (i, ca) in a.bytes().enumerate() {
        // `diag` is the previous row's cell up-left, `left` the new row's cell to the left.
        let mut diag = i;
        let mut left = i.saturating_add(1);
        if let Some(first) = row.first_mut() {
            *first = left;
        }
        for (cb, cell) in b.bytes().zip(row.iter_mut().skip(1)) {
            let up = *cell;
            let substitute = diag.saturating_add(usize::from(ca != cb));
            let best = substitute
                .min(up.saturating_add(1))
                .min(left.saturating_add(1));
            diag = up;
            *cell = best;
            left = best;
        }
    }
    row.get(b.len()).copied().unwrap_or(usize::MAX)
}

/// The candidate nearest to `word`, if it is close enough to be a misspelling of it (at most
/// one edit in three characters, and at least one).
pub fn nearest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Every operation with its arguments, as the grammar above writes them.
pub const USAGE: &[(&str, &str)] = &[
    ("guest", "guest <g>"),
    (
        "device",
        "device <d> <seg:bus:dev.fn> [bar <base> <pages>]...",
    ),
    ("tdi", "tdi <t> <d> <seg:bus:dev.fn>"),
    (
        "bind",
        "bind <t> <g> [range|shared-range <base> <pages>]...",
    ),
    ("map", "map <t> <g> <gpa> <hpa> <4k|2m|1g>"),
    ("start", "start <g> <t> [no-accept]"),
    ("unbind", "unbind <t>"),
    ("unbind-all", "unbind-all <t>"),
    ("unbind-force", "unbind-force <t>"),
    ("unbind-force-all", "unbind-force-all <t>"),
    ("stream-setup", "stream-setup <d>"),
    ("device-error", "device-error <t>"),
    ("check", "check <t>"),
    ("zap", "zap <d> [<bar index>]"),
    ("host-unmap", "host-unmap <g> <gpa> <size>"),
    ("host-block", "host-block <g> <gpa> <size>"),
    (
        "host",
        "host <path> <d>... <unbind-first|unbind-force-first|zap-first>",
    ),
    ("device-event", "device-event <t> <disturb|reset>"),
    (
        "device-misbehave",
        "device-misbehave <t> <none|silent|garbage|wrong-interface|wrong-version|refuse|inconsistent-report>",
    ),
    ("defer-flush", "defer-flush <g> <on|off>"),
    ("invalidations", "invalidations <auto|manual>"),
    ("complete-invalidations", "complete-invalidations <t>"),
    ("dma-create", "dma-create <t>"),
    ("dma-accept", "dma-accept <g> <t>"),
    ("dma", "dma <t> <read|write> <gpa> <private|shared>"),
    (
        "expect-state",
        "expect-state <t> <unbound|locked|run|error|unbinding>",
    ),
    ("expect-leaf", "expect-leaf <g> <gpa> <mapped|blocked|none>"),
    ("remove-tdi", "remove-tdi <t>"),
    ("remove-device", "remove-device <d>"),
    ("destroy-guest", "destroy-guest <g>"),
    ("hold", "hold <t>"),
    (
        "answer",
        "answer <t> <none|genuine|garbage|long|stale|flip <byte>|other <t2>>",
    ),
    ("relay", "relay <t>"),
];

/// Statuses with no error: what a line returns when it succeeds.
const SUCCESSES: [&str; 3] = ["Ok", "Resumable", "Relay"];

/// `Done`, the Statuses table's name for a completed operation: accepted for `Ok`.
const DONE: &str = "Done";

/// `s` printed into a [`Word`].
fn word_of(s: impl fmt::Display) -> Word {
    let mut w = Word::new();
    let _ = write!(w, "{s}");
    w
}

/// An error's name as the interpreter prints it (`Debug`: `Display` adds code and meaning).
fn error_word(e: &Error) -> Word {
    word_of(format_args!("{e:?}"))
}

/// Whether `s` is a status a line can return, as the interpreter prints it.
pub fn is_status(s: &str) -> bool {
    SUCCESSES.contains(&s) || s == DONE || Error::ALL.iter().any(|e| error_word(e).as_str() == s)
}

/// The status nearest to `s`.
fn nearest_status(s: &str) -> Option<Word> {
    let limit = (s.chars().count() / 3).max(1);
    SUCCESSES
        .iter()
        .map(word_of)
        .chain(Error::ALL.iter().map(error_word))
        .map(|w| (distance(s, &w), w))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, w)| w)
}

/// What the status after `->` must look like.
const EXPECTED_STATUS: &str =
    "a status like TdiBound (README, \"Statuses\"), or Ok, Resumable, Relay";

/// Parses one line; `Ok(None)` for blank lines and comments.
pub fn parse_line(text: &str) -> Result<Option<Line<'_>>, ParseError<'_>> {
    parse_words(text).map_err(|d| d.in_line(text))
}

fn parse_words(text: &str) -> Result<Option<Line<'_>>, ParseError<'_>> {
    let text = strip_comment(text);
    let (body, status) = match text.split_once("->") {
        Some((b, e)) => (b, Some((text.get(b.len()..).unwrap_or(text), e))),
        None => (text, None),
    };
    // Room for a bind reporting MODEL_MAX_RANGES ranges (three words each).
    let mut words: Vec<&str, 64> = Vec::new();
    for w in body.split_whitespace() {
        words
            .push(w)
            .map_err(|_| Diagnostic::new(Problem::TooMany, w, "at most 64 words on a line"))?;
    }
    let Some((&first, args)) = words.split_first() else {
        return match status {
            Some((arrow, _)) => Err(Diagnostic::new(
                Problem::UnknownOp,
                arrow.get(..2).unwrap_or(arrow),
                "an operation before `->`",
            )),
            None => Ok(None),
        };
    };
    let op = parse_op(first, args).map_err(|d| {
        // `unbind t TdiBound`, `zap nic TdiBound`, `unbind t => TdiBound`: whatever the
        // operation made of the status word, the arrow is what is missing.
        match status {
            None => args.iter().find(|w| is_status(w)).map_or(d, |w| {
                Diagnostic::new(Problem::MissingArrow, w, "`-> Status` after the operation")
            }),
            Some(_) => d,
        }
    })?;
    let (expect, on) = match status {
        None => ("Ok", Vec::new()),
        Some((arrow, after)) => {
            let mut it = after.split_whitespace();
            let Some(first) = it.next() else {
                return Err(Diagnostic::new(
                    Problem::BadStatus,
                    arrow.get(..2).unwrap_or(arrow),
                    EXPECTED_STATUS,
                ));
            };
            let per = PerBackend {
                problem: Problem::BadStatus,
                bare: "one status after `->`, then `<backend>:<status>` for a backend that differs",
                twice: "each backend at most once after the status",
            };
            let e = per.each(first, it, status_word)?;
            (e.all, e.on)
        }
    };
    Ok(Some(Line { op, expect, on }))
}

/// `s` as the status a line expects, or a diagnostic naming the nearest.
fn status_word(s: &str) -> Result<&str, ParseError<'_>> {
    if !is_status(s) {
        let mut d = Diagnostic::new(Problem::UnknownStatus, s, EXPECTED_STATUS);
        d.nearest = nearest_status(s);
        return Err(d);
    }
    // The README's name for the success the interpreter prints as `Ok`.
    Ok(if s == DONE { "Ok" } else { s })
}

/// A keyword from `allowed`, or a diagnostic naming them and the nearest.
fn keyword<'a, T: Copy>(
    word: &'a str,
    allowed: &[(&'static str, T)],
    expected: &'static str,
) -> Result<T, ParseError<'a>> {
    allowed
        .iter()
        .find(|(k, _)| *k == word)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            Diagnostic::new(Problem::BadKeyword, word, expected)
                .nearest(nearest(word, allowed.iter().map(|(k, _)| *k)))
        })
}

/// `word` as a number that fits `T`.
fn narrow<'a, T: TryFrom<u64>>(word: &'a str, expected: &'static str) -> Result<T, ParseError<'a>> {
    T::try_from(num_as(word, expected)?)
        .map_err(|_| Diagnostic::new(Problem::BadNumber, word, expected))
}

const GPA: &str = "a guest physical address like 0x10_0000_0000";
const HPA: &str = "a host physical address like 0x8000_0000";
const BASE: &str = "a base address like 0x8000_0000";
const PAGES: &str = "a number of 4 KiB pages like 16";
const RID: &str = "a requester ID seg:bus:dev.fn in hex like 0000:03:00.0";

/// How a line's per-backend words are refused: the problem, and what is expected of a word
/// without a backend and of a backend named twice.
struct PerBackend {
    problem: Problem,
    bare: &'static str,
    twice: &'static str,
}

impl PerBackend {
    /// The word `all` for every backend, then `over`, each `<backend>:<word>` for a backend
    /// that expects another (each backend at most once), every word read by `word`.
    fn each<'a, T>(
        &self,
        all: &'a str,
        over: impl IntoIterator<Item = &'a str>,
        word: impl Fn(&'a str) -> Result<T, ParseError<'a>>,
    ) -> Result<Each<'a, T>, ParseError<'a>> {
        let mut on = Vec::new();
        for w in over {
            let Some((backend, value)) = w.split_once(':') else {
                return Err(Diagnostic::new(self.problem, w, self.bare));
            };
            let backend = keyword(
                backend,
                &[("core", "core"), ("tdx", "tdx"), ("sev", "sev")],
                "a backend: core, tdx or sev",
            )?;
            if on.iter().any(|(b, _)| *b == backend) {
                return Err(Diagnostic::new(self.problem, w, self.twice));
            }
            // Room for every backend: checked just above.
            let _ = on.push((backend, word(value)?));
        }
        Ok(Each {
            all: word(all)?,
            on,
        })
    }
}

/// An observation's word `all` for every backend, then `over` ([`PerBackend::each`]).
fn each<'a, T>(
    all: &'a str,
    over: &[&'a str],
    word: impl Fn(&'a str) -> Result<T, ParseError<'a>>,
) -> Result<Each<'a, T>, ParseError<'a>> {
    PerBackend {
        problem: Problem::TooMany,
        bare: "one word, then `<backend>:<word>` for a backend that differs",
        twice: "each backend at most once",
    }
    .each(all, over.iter().copied(), word)
}

fn parse_op<'a>(first: &'a str, a: &[&'a str]) -> Result<Op<'a>, ParseError<'a>> {
    Ok(match (first, a) {
        ("guest", [name]) => Op::Guest { name },
        ("device", [name, rid, rest @ ..]) => Op::Device {
            name,
            rid: rid_of(rid)?,
            bars: pairs(rest, "bar")?,
        },
        ("tdi", [name, device, iface]) => Op::Tdi {
            name,
            device,
            iface: rid_of(iface)?,
        },
        ("bind", [tdi, guest, rest @ ..]) => Op::Bind {
            tdi,
            guest,
            ranges: reported(rest)?,
        },
        ("map", [tdi, guest, gpa, hpa, size]) => Op::Map {
            tdi,
            guest,
            gpa: num_as(gpa, GPA)?,
            hpa: num_as(hpa, HPA)?,
            size: size_of(size)?,
        },
        ("start", [guest, tdi]) => Op::Start {
            guest,
            tdi,
            accept: true,
        },
        ("start", [guest, tdi, option]) => Op::Start {
            guest,
            tdi,
            accept: keyword(option, &[("no-accept", false)], "no-accept")?,
        },
        ("unbind", [tdi]) => Op::Unbind { tdi },
        ("unbind-all", [tdi]) => Op::UnbindAll { tdi },
        ("unbind-force", [tdi]) => Op::UnbindForce { tdi },
        ("unbind-force-all", [tdi]) => Op::UnbindForceAll { tdi },
        ("stream-setup", [device]) => Op::StreamSetup { device },
        ("device-error", [tdi]) => Op::DeviceError { tdi },
        ("check", [tdi]) => Op::Check { tdi },
        ("zap", [device]) => Op::Zap { device, bar: None },
        ("zap", [device, bar]) => Op::Zap {
            device,
            bar: Some(narrow(bar, "a BAR index from 0 to 255")?),
        },
        ("host-unmap", [guest, gpa, size]) => Op::HostUnmap {
            guest,
            gpa: num_as(gpa, GPA)?,
            size: size_of(size)?,
        },
        ("host-block", [guest, gpa, size]) => Op::HostBlock {
            guest,
            gpa: num_as(gpa, GPA)?,
            size: size_of(size)?,
        },
        ("host", [path, devices @ .., order]) if !devices.is_empty() => Op::Host {
            path: keyword(
                path,
                &[
                    ("mem-disable", HostPath::MemDisable),
                    ("d3hot", HostPath::D3hot),
                    ("runtime-pm", HostPath::RuntimePm),
                    ("flr-pcie", HostPath::FlrPcie),
                    ("flr-af", HostPath::FlrAf),
                    ("reset-ioctl", HostPath::ResetIoctl),
                    ("hot-reset", HostPath::HotReset),
                    ("close", HostPath::Close),
                ],
                "a host path: mem-disable, d3hot, runtime-pm, flr-pcie, flr-af, reset-ioctl, hot-reset or close",
            )?,
            devices: Vec::from_slice(devices).map_err(|_| {
                Diagnostic::new(
                    Problem::TooMany,
                    devices.get(MAX_DEVICE_SET).copied().unwrap_or(first),
                    "at most 4 devices (a hot-reset set)",
                )
            })?,
            order: keyword(
                order,
                &[
                    ("unbind-first", Order::UnbindFirst),
                    ("unbind-force-first", Order::UnbindForceFirst),
                    ("zap-first", Order::ZapFirst),
                ],
                "an order: unbind-first, unbind-force-first or zap-first",
            )?,
        },
        ("device-event", [tdi, event]) => Op::DeviceEvent {
            tdi,
            event: keyword(
                event,
                &[("disturb", EventName::Disturb), ("reset", EventName::Reset)],
                "an event: disturb or reset",
            )?,
        },
        ("device-misbehave", [tdi, how]) => Op::DeviceMisbehave {
            tdi,
            how: keyword(
                how,
                &[
                    ("none", None),
                    ("silent", Some(Misbehaviour::Silent)),
                    ("garbage", Some(Misbehaviour::Garbage)),
                    ("wrong-interface", Some(Misbehaviour::WrongInterface)),
                    ("wrong-version", Some(Misbehaviour::WrongVersion)),
                    ("refuse", Some(Misbehaviour::Refuse)),
                    (
                        "inconsistent-report",
                        Some(Misbehaviour::InconsistentReport),
                    ),
                ],
                "a misbehaviour: none, silent, garbage, wrong-interface, wrong-version, refuse or inconsistent-report",
            )?,
        },
        ("defer-flush", [guest, on]) => Op::DeferFlush {
            guest,
            on: keyword(on, &[("on", true), ("off", false)], "on or off")?,
        },
        ("invalidations", [mode]) => Op::Invalidations {
            manual: keyword(mode, &[("auto", false), ("manual", true)], "auto or manual")?,
        },
        ("complete-invalidations", [tdi]) => Op::CompleteInvalidations { tdi },
        ("dma-create", [tdi]) => Op::DmaCreate { tdi },
        ("dma-accept", [guest, tdi]) => Op::DmaAccept { guest, tdi },
        ("dma", [tdi, dir, gpa, reach, over @ ..]) => Op::Dma {
            tdi,
            write: keyword(dir, &[("read", false), ("write", true)], "read or write")?,
            gpa: num_as(gpa, GPA)?,
            reach: each(reach, over, |w| {
                keyword(
                    w,
                    &[
                        ("private", ReachName::Private),
                        ("shared", ReachName::Shared),
                    ],
                    "private or shared",
                )
            })?,
        },
        ("expect-state", [tdi, state, over @ ..]) => Op::ExpectState {
            tdi,
            state: each(state, over, |w| {
                keyword(
                    w,
                    &[
                        ("unbound", StateName::Unbound),
                        ("locked", StateName::Locked),
                        ("run", StateName::Run),
                        ("error", StateName::Error),
                        ("unbinding", StateName::Unbinding),
                    ],
                    "a TDI state: unbound, locked, run, error or unbinding",
                )
            })?,
        },
        ("expect-leaf", [guest, gpa, leaf, over @ ..]) => Op::ExpectLeaf {
            guest,
            gpa: num_as(gpa, GPA)?,
            leaf: each(leaf, over, |w| {
                keyword(
                    w,
                    &[
                        ("mapped", LeafName::Mapped),
                        ("blocked", LeafName::Blocked),
                        ("none", LeafName::None),
                    ],
                    "a leaf state: mapped, blocked or none",
                )
            })?,
        },
        ("remove-tdi", [tdi]) => Op::RemoveTdi { tdi },
        ("remove-device", [device]) => Op::RemoveDevice { device },
        ("destroy-guest", [guest]) => Op::DestroyGuest { guest },
        ("hold", [tdi]) => Op::Hold { tdi },
        ("relay", [tdi]) => Op::Relay { tdi },
        ("answer", [tdi, how]) => Op::Answer {
            tdi,
            with: keyword(
                how,
                &[
                    ("none", AnswerWith::None),
                    ("genuine", AnswerWith::Genuine),
                    ("garbage", AnswerWith::Garbage),
                    ("long", AnswerWith::Long),
                    ("stale", AnswerWith::Stale),
                ],
                "an answer: none, genuine, garbage, long, stale, flip <byte> or other <t2>",
            )?,
        },
        ("answer", [tdi, "flip", byte]) => Op::Answer {
            tdi,
            with: AnswerWith::Flip(narrow(byte, "a byte index from 0 to 65535")?),
        },
        ("answer", [tdi, "other", other]) => Op::Answer {
            tdi,
            with: AnswerWith::Other(other),
        },
        _ => {
            return Err(match USAGE.iter().find(|(op, _)| *op == first) {
                Some((_, usage)) => Diagnostic::new(Problem::Arity, first, usage),
                None => Diagnostic::new(
                    Problem::UnknownOp,
                    first,
                    "an operation such as guest, device, tdi, bind, map, start or unbind",
                )
                .nearest(nearest(first, USAGE.iter().map(|(op, _)| *op))),
            });
        }
    })
}

/// The line up to its comment: a `#` not followed by a digit (`#3` is a raw handle).
pub fn strip_comment(text: &str) -> &str {
    let cut = text.char_indices().find(|&(i, c)| {
        c == '#'
            && !text
                .get(i.saturating_add(1)..)
                .is_some_and(|rest| rest.starts_with(|d: char| d.is_ascii_digit()))
    });
    match cut {
        Some((i, _)) => text.get(..i).unwrap_or(text),
        None => text,
    }
}

/// A repeated group (`bar ...`, `range ...`) that is cut short or has another keyword.
fn group_error<'a>(chunk: &[&'a str], expected: &'static str) -> ParseError<'a> {
    Diagnostic::new(
        Problem::Arity,
        chunk.first().copied().unwrap_or(""),
        expected,
    )
}

/// `range <base> <pages>` or `shared-range <base> <pages>`, repeated: a device's report.
fn reported<'a, const N: usize>(
    words: &[&'a str],
) -> Result<Vec<ReportedRange, N>, ParseError<'a>> {
    const EXPECTED: &str = "`range <base> <pages>` or `shared-range <base> <pages>`";
    let mut out = Vec::new();
    for chunk in words.chunks(3) {
        let [k, base, pages] = chunk else {
            return Err(group_error(chunk, EXPECTED));
        };
        let shared = match *k {
            "range" => false,
            "shared-range" => true,
            _ => return Err(group_error(chunk, EXPECTED)),
        };
        let pages = narrow(pages, "a number of 4 KiB pages that fits 32 bits")?;
        out.push(ReportedRange {
            base: num_as(base, BASE)?,
            pages,
            shared,
        })
        .map_err(|_| {
            Diagnostic::new(
                Problem::TooMany,
                k,
                "no more ranges than a device report holds",
            )
        })?;
    }
    Ok(out)
}

/// `<keyword> <base> <pages>` repeated.
fn pairs<'a, const N: usize>(
    words: &[&'a str],
    keyword: &str,
) -> Result<Vec<(u64, u64), N>, ParseError<'a>> {
    const EXPECTED: &str = "`bar <base> <pages>`";
    let mut out = Vec::new();
    for chunk in words.chunks(3) {
        let [k, base, pages] = chunk else {
            return Err(group_error(chunk, EXPECTED));
        };
        if *k != keyword {
            return Err(group_error(chunk, EXPECTED));
        }
        out.push((num_as(base, BASE)?, num_as(pages, PAGES)?))
            .map_err(|_| Diagnostic::new(Problem::TooMany, k, "no more BARs than a device has"))?;
    }
    Ok(out)
}

/// A decimal or `0x` hexadecimal number, `_` separators allowed.
pub fn num(s: &str) -> Result<u64, ParseError<'_>> {
    num_as(s, "a number like 4096 or 0x1000")
}

/// [`num`], with what the number stands for in the error.
fn num_as<'a>(s: &'a str, expected: &'static str) -> Result<u64, ParseError<'a>> {
    let bad = || Diagnostic::new(Problem::BadNumber, s, expected);
    let (digits, radix) = match s.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or_else(bad)?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or_else(bad)?;
        any = true;
    }
    if any { Ok(value) } else { Err(bad()) }
}

fn size_of(s: &str) -> Result<PageSize, ParseError<'_>> {
    keyword(
        s,
        &[
            ("4k", PageSize::Size4K),
            ("2m", PageSize::Size2M),
            ("1g", PageSize::Size1G),
        ],
        "a page size: 4k, 2m or 1g",
    )
}

/// `seg:bus:dev.fn` in hex, as lspci prints it.
fn rid_of(s: &str) -> Result<RequesterId, ParseError<'_>> {
    let bad = || Diagnostic::new(Problem::BadRequesterId, s, RID);
    let hex = |t: &str| u64::from_str_radix(t, 16).map_err(|_| bad());
    let mut parts = s.split(':');
    let (Some(seg), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let narrow = |v: u64| u8::try_from(v).map_err(|_| bad());
    RequesterId::try_new(
        u16::try_from(hex(seg)?).map_err(|_| bad())?,
        narrow(hex(bus)?)?,
        narrow(hex(dev)?)?,
        narrow(hex(func)?)?,
    )
    .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_expectations() {
        let l = parse_line("map nic.0 td1 0x1_0000_0000 0x8000_0000 2m -> TdiBound  # steal")
            .unwrap()
            .unwrap();
        assert_eq!(l.expect, "TdiBound");
        assert_eq!(
            l.op,
            Op::Map {
                tdi: "nic.0",
                guest: "td1",
                gpa: 0x1_0000_0000,
                hpa: 0x8000_0000,
                size: PageSize::Size2M
            }
        );
        let l = parse_line("device nic 0000:03:00.0 bar 0x1000 4 bar 0x10000 1")
            .unwrap()
            .unwrap();
        assert_eq!(l.expect, "Ok");
        let Op::Device { bars, rid, .. } = l.op else {
            panic!("not a device")
        };
        assert_eq!(&bars[..], &[(0x1000, 4), (0x10000, 1)]);
        assert_eq!(rid.bus(), 3);
        assert_eq!(parse_line("   # only a comment"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn parses_per_backend_expectations_and_start_without_accept() {
        let l = parse_line("start td1 nic.0 no-accept -> DmaNotAccepted sev:Ok tdx:Done")
            .unwrap()
            .unwrap();
        assert_eq!(
            l.op,
            Op::Start {
                guest: "td1",
                tdi: "nic.0",
                accept: false
            }
        );
        assert_eq!(l.expect, "DmaNotAccepted");
        assert_eq!(l.expect_on("core"), "DmaNotAccepted");
        assert_eq!(l.expect_on("sev"), "Ok");
        assert_eq!(l.expect_on("tdx"), "Ok");
        let l = parse_line("start td1 nic.0").unwrap().unwrap();
        assert!(matches!(l.op, Op::Start { accept: true, .. }));
        assert!(l.on.is_empty());
        assert_eq!(
            fault("start g t no-acept"),
            (Problem::BadKeyword, 11, "no-acept")
        );
        assert_eq!(
            fault("unbind t -> Ok arm:Ok"),
            (Problem::BadKeyword, 16, "arm")
        );
        assert_eq!(
            fault("unbind t -> Ok sev:Ok sev:TdiBound"),
            (Problem::BadStatus, 23, "sev:TdiBound")
        );
        assert_eq!(
            fault("unbind t -> Ok sev:TdiBond"),
            (Problem::UnknownStatus, 20, "TdiBond")
        );
    }

    /// Review s22b D3: after a line whose backends part by design, each observation can say
    /// what each backend holds; a backend named twice, an unknown one, a bad word or a bare
    /// extra word is refused where it stands.
    #[test]
    fn parses_per_backend_observations() {
        let l = parse_line("expect-state nic.0 locked sev:run")
            .unwrap()
            .unwrap();
        let Op::ExpectState { tdi, state } = l.op else {
            panic!("not expect-state")
        };
        assert_eq!(tdi, "nic.0");
        assert_eq!(state.on("core"), StateName::Locked);
        assert_eq!(state.on("tdx"), StateName::Locked);
        assert_eq!(state.on("sev"), StateName::Run);
        let l = parse_line("dma t read 0x1000 shared tdx:private core:private")
            .unwrap()
            .unwrap();
        let Op::Dma { reach, .. } = l.op else {
            panic!("not dma")
        };
        assert_eq!(reach.on("sev"), ReachName::Shared);
        assert_eq!(reach.on("tdx"), ReachName::Private);
        assert_eq!(reach.on("core"), ReachName::Private);
        let l = parse_line("expect-leaf g 0x1000 mapped sev:none")
            .unwrap()
            .unwrap();
        let Op::ExpectLeaf { leaf, .. } = l.op else {
            panic!("not expect-leaf")
        };
        assert_eq!(
            (leaf.on("tdx"), leaf.on("sev")),
            (LeafName::Mapped, LeafName::None)
        );
        for (line, want) in [
            (
                "expect-state t run sev:run sev:locked",
                (Problem::TooMany, 28, "sev:locked"),
            ),
            (
                "expect-state t run arm:run",
                (Problem::BadKeyword, 20, "arm"),
            ),
            ("expect-state t run sev:rn", (Problem::BadKeyword, 24, "rn")),
            (
                "dma t read 0x1000 shared private",
                (Problem::TooMany, 26, "private"),
            ),
            (
                "expect-leaf g 0x1000 mapped none",
                (Problem::TooMany, 29, "none"),
            ),
        ] {
            assert_eq!(fault(line), want, "{line}");
        }
    }

    /// The problem and 1-based column of the error `text` gets.
    fn fault(text: &str) -> (Problem, usize, &str) {
        let e = parse_line(text).unwrap_err();
        (e.problem, e.column, e.token)
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(fault("frobnicate x"), (Problem::UnknownOp, 1, "frobnicate"));
        assert_eq!(
            fault("bind t g range 0x1000"),
            (Problem::Arity, 10, "range")
        );
        assert_eq!(
            fault("map t g 0x1000 0x2000 3m"),
            (Problem::BadKeyword, 23, "3m")
        );
        assert_eq!(
            fault("tdi t d 0000:03:20.0"),
            (Problem::BadRequesterId, 9, "0000:03:20.0")
        );
        assert_eq!(fault("unbind t ->"), (Problem::BadStatus, 10, "->"));
        assert_eq!(fault("unbind t -> Ok Ok"), (Problem::BadStatus, 16, "Ok"));
        assert_eq!(fault("-> Ok"), (Problem::UnknownOp, 1, "->"));
        assert_eq!(fault("unbind-force"), (Problem::Arity, 1, "unbind-force"));
        assert_eq!(
            fault("stream-setup d x"),
            (Problem::Arity, 1, "stream-setup")
        );
        assert_eq!(
            parse_line("host close nic unbind-force-first").map(|l| l.map(|l| l.op)),
            Ok(Some(Op::Host {
                path: HostPath::Close,
                devices: Vec::from_slice(&["nic"]).unwrap(),
                order: Order::UnbindForceFirst,
            }))
        );
        assert_eq!(fault("guest"), (Problem::Arity, 1, "guest"));
        assert_eq!(
            num("0x1_0000_0000_0000_0000").unwrap_err().problem,
            Problem::BadNumber
        );
        assert_eq!(num("0x").unwrap_err().problem, Problem::BadNumber);
        assert_eq!(
            fault("host flr-pcie nic sideways"),
            (Problem::BadKeyword, 19, "sideways")
        );
        assert_eq!(
            fault("host flr-pcie unbind-first"),
            (Problem::Arity, 1, "host")
        );
        assert_eq!(fault("zap nic 256"), (Problem::BadNumber, 9, "256"));
        assert_eq!(
            fault("unbind t => TdiBound"),
            (Problem::MissingArrow, 13, "TdiBound")
        );
        assert_eq!(
            fault("unbind t -> TdiBund"),
            (Problem::UnknownStatus, 13, "TdiBund")
        );
    }

    #[test]
    fn statuses_are_the_firmwares() {
        for s in [
            "Ok",
            "Resumable",
            "Relay",
            "TdiBound",
            "Busy(Tdi)",
            "Inconsistent",
        ] {
            assert!(is_status(s), "{s}");
        }
        for s in ["OK", "tdibound", "Busy", "Busy(Lock)", ""] {
            assert!(!is_status(s), "{s}");
        }
        assert_eq!(nearest_status("TdiBund").unwrap(), "TdiBound");
        assert_eq!(nearest_status("Busy(tdi)").unwrap(), "Busy(Tdi)");
        assert_eq!(nearest_status("Nonsense"), None);
    }

    #[test]
    fn nearest_words_are_misspellings_only() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("nic.0", "nic.0"), 0);
        assert_eq!(nearest("nic.9", ["td1", "nic.0", "nic.1"]), Some("nic.0"));
        assert_eq!(
            nearest("biind", USAGE.iter().map(|(op, _)| *op)),
            Some("bind")
        );
        assert_eq!(nearest("frobnicate", USAGE.iter().map(|(op, _)| *op)), None);
        assert_eq!(nearest("x", ["yy"]), None);
    }

    #[test]
    fn every_operation_has_its_usage_in_the_grammar() {
        let grammar: std::vec::Vec<&str> = include_str!("scenario.rs")
            .lines()
            .filter(|l| l.starts_with("//!"))
            .collect();
        for (op, usage) in USAGE {
            assert!(usage.starts_with(op), "{op}");
            assert!(grammar.iter().any(|l| l.contains(usage)), "{op}: {usage}");
            assert_eq!(fault(op).0, Problem::Arity, "{op}");
        }
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(column_of("ab cd", "ab cd".get(3..).unwrap()), 4);
        assert_eq!(column_of("ab", "elsewhere"), 0);
        assert_eq!(column_of("é x", "é x".get(3..).unwrap()), 3);
    }
}
