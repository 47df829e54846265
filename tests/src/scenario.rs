//! The scenario language: one operation per line, optionally `-> Status`.
//!
//! ```text
//! # comment                                   (blank lines and comments are skipped)
//! guest <g>                                   register a guest
//! device <d> <seg:bus:dev.fn> [bar <base> <pages>]...   register a device and its BARs
//! tdi <t> <d> <seg:bus:dev.fn>                create a TDI for one interface of <d>
//! bind <t> <g> [range|shared-range <base> <pages>]...  the device reports these ranges; the host binds
//! map <t> <g> <gpa> <hpa> <4k|2m|1g>          map one private MMIO page
//! start <g> <t>                               guest accepts and starts the TDI
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
//! expect-state <t> <unbound|locked|run|error|unbinding>
//! expect-leaf <g> <gpa> <mapped|blocked|none>
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
//! tests. Without `-> Status` a line must succeed (`Ok`).

use heapless::Vec;
use tsm_core::PageSize;
use tsm_core::capacity::MAX_BARS;
use tsm_core::device_model::{MODEL_MAX_RANGES, Misbehaviour};
use tsm_core::ids::RequesterId;

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

impl HostPath {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mem-disable" => HostPath::MemDisable,
            "d3hot" => HostPath::D3hot,
            "runtime-pm" => HostPath::RuntimePm,
            "flr-pcie" => HostPath::FlrPcie,
            "flr-af" => HostPath::FlrAf,
            "reset-ioctl" => HostPath::ResetIoctl,
            "hot-reset" => HostPath::HotReset,
            "close" => HostPath::Close,
            _ => return None,
        })
    }
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
    ExpectState {
        tdi: &'a str,
        state: StateName,
    },
    ExpectLeaf {
        guest: &'a str,
        gpa: u64,
        leaf: LeafName,
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

/// A parsed line: the operation and the status it must return (`Ok` when not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The operation.
    pub op: Op<'a>,
    /// Expected status name, as printed (`Ok`, `Resumable`, `TdiBound`, `Busy(Tdi)` ...).
    pub expect: &'a str,
}

/// Why a line did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown first word.
    UnknownOp,
    /// Too few or too many words, or a keyword missing.
    Arity,
    /// A number, requester ID, size or keyword that does not parse.
    BadToken,
    /// More BARs, ranges or devices than the language allows.
    TooMany,
}

/// Parses one line; `Ok(None)` for blank lines and comments.
pub fn parse_line(text: &str) -> Result<Option<Line<'_>>, ParseError> {
    let text = strip_comment(text);
    let (body, expect) = match text.split_once("->") {
        Some((b, e)) => (b, e.trim()),
        None => (text, "Ok"),
    };
    // Room for a bind reporting MODEL_MAX_RANGES ranges (three words each).
    let mut words: Vec<&str, 64> = Vec::new();
    for w in body.split_whitespace() {
        words.push(w).map_err(|_| ParseError::TooMany)?;
    }
    let Some((&first, args)) = words.split_first() else {
        return Ok(None);
    };
    if expect.is_empty() || expect.contains(char::is_whitespace) {
        return Err(ParseError::BadToken);
    }
    let op = parse_op(first, args)?;
    Ok(Some(Line { op, expect }))
}

fn parse_op<'a>(first: &str, a: &[&'a str]) -> Result<Op<'a>, ParseError> {
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
            gpa: num(gpa)?,
            hpa: num(hpa)?,
            size: size_of(size)?,
        },
        ("start", [guest, tdi]) => Op::Start { guest, tdi },
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
            bar: Some(u8::try_from(num(bar)?).map_err(|_| ParseError::BadToken)?),
        },
        ("host-unmap", [guest, gpa, size]) => Op::HostUnmap {
            guest,
            gpa: num(gpa)?,
            size: size_of(size)?,
        },
        ("host-block", [guest, gpa, size]) => Op::HostBlock {
            guest,
            gpa: num(gpa)?,
            size: size_of(size)?,
        },
        ("host", [path, devices @ .., order]) if !devices.is_empty() => Op::Host {
            path: HostPath::parse(path).ok_or(ParseError::BadToken)?,
            devices: Vec::from_slice(devices).map_err(|_| ParseError::TooMany)?,
            order: match *order {
                "unbind-first" => Order::UnbindFirst,
                "unbind-force-first" => Order::UnbindForceFirst,
                "zap-first" => Order::ZapFirst,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("device-event", [tdi, event]) => Op::DeviceEvent {
            tdi,
            event: match *event {
                "disturb" => EventName::Disturb,
                "reset" => EventName::Reset,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("device-misbehave", [tdi, how]) => Op::DeviceMisbehave {
            tdi,
            how: match *how {
                "none" => None,
                "silent" => Some(Misbehaviour::Silent),
                "garbage" => Some(Misbehaviour::Garbage),
                "wrong-interface" => Some(Misbehaviour::WrongInterface),
                "wrong-version" => Some(Misbehaviour::WrongVersion),
                "refuse" => Some(Misbehaviour::Refuse),
                "inconsistent-report" => Some(Misbehaviour::InconsistentReport),
                _ => return Err(ParseError::BadToken),
            },
        },
        ("defer-flush", [guest, on]) => Op::DeferFlush {
            guest,
            on: match *on {
                "on" => true,
                "off" => false,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("expect-state", [tdi, state]) => Op::ExpectState {
            tdi,
            state: match *state {
                "unbound" => StateName::Unbound,
                "locked" => StateName::Locked,
                "run" => StateName::Run,
                "error" => StateName::Error,
                "unbinding" => StateName::Unbinding,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("expect-leaf", [guest, gpa, leaf]) => Op::ExpectLeaf {
            guest,
            gpa: num(gpa)?,
            leaf: match *leaf {
                "mapped" => LeafName::Mapped,
                "blocked" => LeafName::Blocked,
                "none" => LeafName::None,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("remove-tdi", [tdi]) => Op::RemoveTdi { tdi },
        ("remove-device", [device]) => Op::RemoveDevice { device },
        ("destroy-guest", [guest]) => Op::DestroyGuest { guest },
        ("hold", [tdi]) => Op::Hold { tdi },
        ("relay", [tdi]) => Op::Relay { tdi },
        ("answer", [tdi, how]) => Op::Answer {
            tdi,
            with: match *how {
                "none" => AnswerWith::None,
                "genuine" => AnswerWith::Genuine,
                "garbage" => AnswerWith::Garbage,
                "long" => AnswerWith::Long,
                "stale" => AnswerWith::Stale,
                _ => return Err(ParseError::BadToken),
            },
        },
        ("answer", [tdi, "flip", byte]) => Op::Answer {
            tdi,
            with: AnswerWith::Flip(u16::try_from(num(byte)?).map_err(|_| ParseError::BadToken)?),
        },
        ("answer", [tdi, "other", other]) => Op::Answer {
            tdi,
            with: AnswerWith::Other(other),
        },
        (
            "guest" | "device" | "tdi" | "bind" | "map" | "start" | "unbind" | "unbind-all"
            | "unbind-force" | "unbind-force-all" | "stream-setup" | "device-error" | "check"
            | "zap" | "host-unmap" | "host-block" | "host" | "device-event" | "device-misbehave"
            | "defer-flush" | "expect-state" | "expect-leaf" | "remove-tdi" | "remove-device"
            | "destroy-guest" | "hold" | "relay" | "answer",
            _,
        ) => return Err(ParseError::Arity),
        _ => return Err(ParseError::UnknownOp),
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

/// `range <base> <pages>` or `shared-range <base> <pages>`, repeated: a device's report.
fn reported<const N: usize>(words: &[&str]) -> Result<Vec<ReportedRange, N>, ParseError> {
    let mut out = Vec::new();
    for chunk in words.chunks(3) {
        let [k, base, pages] = chunk else {
            return Err(ParseError::Arity);
        };
        let shared = match *k {
            "range" => false,
            "shared-range" => true,
            _ => return Err(ParseError::Arity),
        };
        let pages = u32::try_from(num(pages)?).map_err(|_| ParseError::BadToken)?;
        out.push(ReportedRange {
            base: num(base)?,
            pages,
            shared,
        })
        .map_err(|_| ParseError::TooMany)?;
    }
    Ok(out)
}

/// `<keyword> <base> <pages>` repeated.
fn pairs<const N: usize>(words: &[&str], keyword: &str) -> Result<Vec<(u64, u64), N>, ParseError> {
    let mut out = Vec::new();
    for chunk in words.chunks(3) {
        let [k, base, pages] = chunk else {
            return Err(ParseError::Arity);
        };
        if *k != keyword {
            return Err(ParseError::Arity);
        }
        out.push((num(base)?, num(pages)?))
            .map_err(|_| ParseError::TooMany)?;
    }
    Ok(out)
}

/// A decimal or `0x` hexadecimal number, `_` separators allowed.
pub fn num(s: &str) -> Result<u64, ParseError> {
    let (digits, radix) = match s.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or(ParseError::BadToken)?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(ParseError::BadToken)?;
        any = true;
    }
    if any {
        Ok(value)
    } else {
        Err(ParseError::BadToken)
    }
}

fn size_of(s: &str) -> Result<PageSize, ParseError> {
    match s {
        "4k" => Ok(PageSize::Size4K),
        "2m" => Ok(PageSize::Size2M),
        "1g" => Ok(PageSize::Size1G),
        _ => Err(ParseError::BadToken),
    }
}

/// `seg:bus:dev.fn` in hex, as lspci prints it.
fn rid_of(s: &str) -> Result<RequesterId, ParseError> {
    let hex = |t: &str| u64::from_str_radix(t, 16).map_err(|_| ParseError::BadToken);
    let mut parts = s.split(':');
    let (Some(seg), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadToken);
    };
    let (dev, func) = devfn.split_once('.').ok_or(ParseError::BadToken)?;
    let narrow = |v: u64| u8::try_from(v).map_err(|_| ParseError::BadToken);
    RequesterId::try_new(
        u16::try_from(hex(seg)?).map_err(|_| ParseError::BadToken)?,
        narrow(hex(bus)?)?,
        narrow(hex(dev)?)?,
        narrow(hex(func)?)?,
    )
    .map_err(|_| ParseError::BadToken)
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
    fn rejects_malformed_lines() {
        assert_eq!(parse_line("frobnicate x"), Err(ParseError::UnknownOp));
        assert_eq!(parse_line("bind t g range 0x1000"), Err(ParseError::Arity));
        assert_eq!(
            parse_line("map t g 0x1000 0x2000 3m"),
            Err(ParseError::BadToken)
        );
        assert_eq!(
            parse_line("tdi t d 0000:03:20.0"),
            Err(ParseError::BadToken)
        );
        assert_eq!(parse_line("unbind t ->"), Err(ParseError::BadToken));
        assert_eq!(parse_line("unbind-force"), Err(ParseError::Arity));
        assert_eq!(parse_line("stream-setup d x"), Err(ParseError::Arity));
        assert_eq!(
            parse_line("host close nic unbind-force-first").map(|l| l.map(|l| l.op)),
            Ok(Some(Op::Host {
                path: HostPath::Close,
                devices: Vec::from_slice(&["nic"]).unwrap(),
                order: Order::UnbindForceFirst,
            }))
        );
        assert_eq!(parse_line("guest"), Err(ParseError::Arity));
        assert_eq!(num("0x1_0000_0000_0000_0000"), Err(ParseError::BadToken));
        assert_eq!(num("0x"), Err(ParseError::BadToken));
        assert_eq!(
            parse_line("host flr-pcie nic sideways"),
            Err(ParseError::BadToken)
        );
        assert_eq!(
            parse_line("host flr-pcie unbind-first"),
            Err(ParseError::Arity)
        );
    }
}
