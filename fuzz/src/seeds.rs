//! The hand-made seed corpus: inputs that reach deep states in one execution, so that
//! libFuzzer starts from bound, mapped, started, erroring and half-unbound TDIs rather than
//! from an empty firmware. `src/bin/seeds.rs` writes them to `fuzz/seeds/<target>/`;
//! `tests/seeds.rs` checks the files are these bytes and that each seed reaches what it says.

use tsm_core::tdisp::message::{
    Capabilities, CapabilitiesRequest, ErrorBody, LockParams, ReportRequest, Request, Response,
    encode_request, encode_response,
};
use tsm_core::tdisp::report::{
    RANGE_ATTR_NON_TEE, WireMmioRange, encode_report, report_head, wire_range,
};
use tsm_core::{RequesterId, TdispState};

use crate::answer::Answer;
use crate::relay::{self, Step};
use crate::sev::{self, Cmd, HdrMut, Msg, Mut, RespMut, SdteMut, SevReport, Stage, Val};
use crate::tdx::{
    self, AcceptMut, AddQwords, At, Bars, DevAction, GpaPick, HpaPick, Idx, InvKind, Iommu,
    LeafNum, ListMut, Op, Rdx, Relay, Report, StatusAddr, Td, WaitDesc, Zap,
};

/// What a seed must reach when run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A TDI runs, and a bound TDI's unbind finished.
    RunThenUnbound,
    /// An unbind answered resumable and a refusal kept unbind progress (exemption 1).
    ResumableUnbind,
    /// A TDI went to ERROR.
    Error,
    /// Relayed answers refused as malformed, an exempt refusal (an exchange ended), a TDI run
    /// and a bound TDI unbound.
    Relays,
    /// The bind of `report_portions` bound the TDI.
    Bound,
    /// The bind of `report_portions` was refused.
    Refused,
    /// Only that the checks pass.
    Checks,
    /// TIO commands refused before TIO_INIT, TIO_STATUS answered before and after it, one
    /// TIO_INIT, and a TDI bound after it.
    TioInit,
    /// A TDI's DMA reached its guest's private memory through the context the host created
    /// and the guest accepted (TDX: the PASID entry; SEV: the sDTE), host and guest DMA
    /// requests were refused, and the TDI was then unbound.
    DmaPrivateThenUnbound,
}

/// One seed file.
pub struct Seed {
    /// Target name (the folder under `fuzz/seeds/`).
    pub target: &'static str,
    /// File name.
    pub name: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// What running it must reach.
    pub reach: Reach,
}

fn seed(target: &'static str, name: &'static str, bytes: Vec<u8>, reach: Reach) -> Seed {
    Seed {
        target,
        name,
        bytes,
        reach,
    }
}

const T0: Td = Td::Slot { slot: 0 };
const T1: Td = Td::Slot { slot: 1 };

fn td_device(dev: u8, bars: Bars) -> [Op; 2] {
    [
        Op::DeviceCreate {
            dev,
            bars,
            list: ListMut::Fine,
        },
        Op::DevifCreate {
            dev,
            bus: dev,
            func: 0,
            pages: 0,
        },
    ]
}

/// A TDX bind relayed to its end, R8 as Linux passes it.
fn bind(tdi: u8, td: Td, report: Report) -> Op {
    Op::Bind {
        tdi,
        td,
        report,
        r8: false,
        relay: Relay::Drive,
    }
}

/// The TD's START, relayed to its end.
fn start(td: Td, tdi: u8) -> Op {
    Op::Start {
        td,
        tdi,
        relay: Relay::Drive,
    }
}

/// One unbind call, relayed to its end.
fn unbind(tdi: u8) -> Op {
    Op::Unbind {
        tdi,
        relay: Relay::Drive,
    }
}

/// A check of the TDI's state, relayed to its end.
fn check_state(tdi: u8) -> Op {
    Op::Check {
        tdi,
        relay: Relay::Drive,
    }
}

/// A map at GPA slot `slot` of the TDI's own page `(range, page)`, at `level`.
fn map_owned(tdi: u8, td: Td, slot: u8, (range, page): (u8, u16), level: u8) -> Op {
    Op::Map {
        tdi,
        td,
        gpa: GpaPick::Slot { i: slot },
        hpa: HpaPick::Owned { range, page },
        level,
    }
}

fn tdx_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    // Bind, map 2 MiB + 4 KiB, accept, start; the host's refused requests; unbind; rebind.
    let mut ops = vec![Op::TdCreate];
    ops.extend(td_device(0, Bars::One));
    ops.extend([
        bind(0, T0, Report::Split),
        map_owned(0, T0, 0, (0, 0), 1),
        map_owned(0, T0, 2, (1, 3), 0),
        Op::Accept {
            td: T0,
            at: At::Leaf { i: 0 },
        },
        start(T0, 0),
        Op::State { tdi: 0 },
        Op::SeptRd {
            td: T0,
            at: At::Leaf { i: 1 },
        },
        Op::Block {
            td: T0,
            at: At::Leaf { i: 0 },
        },
        Op::Unmap {
            td: T0,
            at: At::Leaf { i: 1 },
        },
        Op::ZapCheck {
            zap: Zap::Bar { dev: 0 },
        },
        Op::Track { td: T0 },
        check_state(0),
        Op::UnbindAll { tdi: 0 },
        Op::ZapCheck {
            zap: Zap::Bar { dev: 0 },
        },
        bind(0, T0, Report::Keep),
        Op::TdDestroy { td: T0 },
    ]);
    out.push(seed(
        "tdx_dispatcher",
        "bind-map-start-unbind",
        tdx::encode(false, &ops),
        Reach::RunThenUnbound,
    ));

    // 90 leaves: unbind is resumable; held TLB flushes keep it at TlbFlushPending.
    let mut ops = vec![Op::TdCreate];
    ops.extend(td_device(0, Bars::One));
    ops.extend([
        bind(0, T0, Report::Bars),
        Op::MapRun {
            tdi: 0,
            count: 90,
            region: 0,
        },
        Op::HoldFlush { td: T0, hold: true },
        unbind(0),
        unbind(0),
        unbind(0),
        unbind(0),
        Op::Track { td: T0 },
        Op::HoldFlush {
            td: T0,
            hold: false,
        },
        Op::UnbindAll { tdi: 0 },
    ]);
    out.push(seed(
        "tdx_dispatcher",
        "resumable-unbind",
        tdx::encode(false, &ops),
        Reach::ResumableUnbind,
    ));

    // Two TDs, two devices; disturbance, check, device error, a silent device under unbind,
    // a start the device refuses.
    let mut ops = vec![Op::TdCreate, Op::TdCreate];
    ops.extend(td_device(0, Bars::One));
    ops.extend(td_device(1, Bars::Two));
    for (tdi, td) in [(0u8, T0), (1, T1)] {
        ops.extend([
            Op::Bind {
                tdi,
                td,
                report: Report::Bars,
                r8: false,
                relay: Relay::Drive,
            },
            Op::Map {
                tdi,
                td,
                gpa: GpaPick::Slot { i: tdi },
                hpa: HpaPick::Owned { range: 0, page: 0 },
                level: 1,
            },
        ]);
    }
    ops.extend([
        start(T0, 0),
        Op::Device {
            tdi: 0,
            action: DevAction::Disturb,
        },
        check_state(0),
        Op::Device {
            tdi: 1,
            action: DevAction::Misbehave { how: 4 },
        },
        start(T1, 1),
        Op::DevError { tdi: 1 },
        Op::Device {
            tdi: 0,
            action: DevAction::Misbehave { how: 0 },
        },
        unbind(0),
        unbind(0),
        Op::Device {
            tdi: 0,
            action: DevAction::Behave,
        },
        Op::UnbindAll { tdi: 0 },
        Op::Device {
            tdi: 1,
            action: DevAction::Behave,
        },
        Op::UnbindAll { tdi: 1 },
        Op::DevifRemove { tdi: 1 },
        Op::DeviceDelete { dev: 1 },
    ]);
    out.push(seed(
        "tdx_dispatcher",
        "device-errors",
        tdx::encode(false, &ops),
        Reach::Error,
    ));

    // Hostile operands: BAR lists, reserved memory, duplicate and foreign interfaces, raw
    // leaves, unknown handles, a 5-level S-EPT with a 1 GiB leaf.
    let mut ops = vec![Op::TdCreate];
    for (dev, bars, list) in [
        (0, Bars::Reserved, ListMut::Fine),
        (0, Bars::Params, ListMut::Fine),
        (0, Bars::Misaligned, ListMut::Fine),
        (0, Bars::Empty, ListMut::Fine),
        (0, Bars::TooMany, ListMut::Fine),
        (0, Bars::One, ListMut::Reserved),
        (0, Bars::One, ListMut::Count { count: 40 }),
        (0, Bars::One, ListMut::Outside),
        (0, Bars::One, ListMut::Misaligned),
        (0, Bars::Huge, ListMut::Fine),
        (1, Bars::Overlap { other: 0 }, ListMut::Fine),
        (4, Bars::One, ListMut::Fine),
    ] {
        ops.push(Op::DeviceCreate { dev, bars, list });
    }
    ops.extend([
        Op::DevifCreate {
            dev: 0,
            bus: 1,
            func: 0,
            pages: 0,
        },
        Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 8,
            pages: 0,
        },
        Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 0,
            pages: 0,
        },
        Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 0,
            pages: 0,
        },
        bind(0, T0, Report::Outside),
        bind(0, T0, Report::TooMany),
        bind(0, T0, Report::Overlapping),
        Op::Bind {
            tdi: 0,
            td: T0,
            report: Report::Bars,
            r8: true,
            relay: Relay::Drive,
        },
        bind(0, T0, Report::Bars),
        map_owned(0, T0, 0, (0, 0), 2),
        Op::Map {
            tdi: 0,
            td: T0,
            gpa: GpaPick::Raw {
                page_info: (1 << 48) | 1,
            },
            hpa: HpaPick::Owned { range: 0, page: 0 },
            level: 1,
        },
        Op::Map {
            tdi: 0,
            td: Td::Raw { v: 9 },
            gpa: GpaPick::Slot { i: 3 },
            hpa: HpaPick::Raw { v: 1 << 52 },
            level: 1,
        },
        Op::Raw {
            leaf: LeafNum::Known { i: 19 },
            rcx: 0,
            rdx: 0,
            r8: 0,
            r9: 0,
            r10: 0,
        },
        Op::Raw {
            leaf: LeafNum::Any {
                v: 1 << 16 | 0xF000,
            },
            rcx: 0,
            rdx: 0,
            r8: 0,
            r9: 0,
            r10: 0,
        },
        Op::RawGuest {
            td: T0,
            leaf: LeafNum::Known { i: 17 },
            rcx: 0x10_0000_0001,
        },
        Op::ZapCheck {
            zap: Zap::Raw {
                hpa: 0x8000_0000,
                pages: 0,
            },
        },
        Op::UnbindAll { tdi: 0 },
    ]);
    out.push(seed(
        "tdx_dispatcher",
        "hostile-operands",
        tdx::encode(true, &ops),
        Reach::Checks,
    ));
    // The relay under a hostile host: two TDIs of one device on pairs A and B, a third of
    // another device sharing pair A; a bind with one garbled answer, a bind abandoned and then
    // handed every kind of wrong answer (a replay, cut short, padded, a wrong DOE length, the
    // request itself, made-up bytes, too long, RDX off or past the page, the request read
    // from the page again), a START left unanswered three times, a request page made
    // read-only, a STOP answered with another TDI's answer, a forced unbind and the stream
    // set up again, message pages of every bad kind.
    let answer = |tdi: u8, answer: Answer| Op::Respond {
        tdi,
        answer,
        rdx: Rdx::Exact,
        from_page: false,
    };
    let mut ops = vec![Op::TdCreate, Op::TdCreate];
    ops.extend([
        Op::DeviceCreate {
            dev: 0,
            bars: Bars::One,
            list: ListMut::Fine,
        },
        Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 0,
            pages: 0,
        },
        Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 1,
            pages: 2,
        },
        Op::DeviceCreate {
            dev: 1,
            bars: Bars::Two,
            list: ListMut::Fine,
        },
        Op::DevifCreate {
            dev: 1,
            bus: 1,
            func: 0,
            pages: 0,
        },
        Op::Bind {
            tdi: 0,
            td: T0,
            report: Report::Split,
            r8: false,
            relay: Relay::Once {
                answer: Answer::Flip { at: 30, bit: 3 },
            },
        },
        Op::Bind {
            tdi: 1,
            td: T1,
            report: Report::Sub {
                start: 900,
                pages: 16,
            },
            r8: false,
            relay: Relay::Rounds { n: 0 },
        },
        answer(1, Answer::Replay { back: 1 }),
        answer(1, Answer::Truncate { len: 20 }),
        answer(1, Answer::Extend { by: 3, fill: 0 }),
        answer(1, Answer::DoeLength { delta: 1 }),
        answer(1, Answer::Reflect),
        answer(
            1,
            Answer::Bytes {
                len: 64,
                fill: 0x5a,
                doe: true,
            },
        ),
        answer(1, Answer::TooLong),
        Op::Respond {
            tdi: 1,
            answer: Answer::Genuine,
            rdx: Rdx::Past,
            from_page: false,
        },
        Op::Respond {
            tdi: 1,
            answer: Answer::Genuine,
            rdx: Rdx::Delta { d: 4 },
            from_page: false,
        },
        Op::Reread { tdi: 1 },
        Op::Respond {
            tdi: 1,
            answer: Answer::Genuine,
            rdx: Rdx::Exact,
            from_page: true,
        },
        bind(1, T1, Report::Keep),
        Op::Start {
            td: T0,
            tdi: 0,
            relay: Relay::Leave,
        },
        check_state(0),
        answer(0, Answer::Silent),
        answer(0, Answer::Silent),
        answer(0, Answer::Silent),
        start(T0, 0),
        answer(0, Answer::Replay { back: 0 }),
        Op::HostPage {
            page: 1,
            read_only: true,
        },
        check_state(0),
        Op::HostPage {
            page: 1,
            read_only: false,
        },
        Op::Unbind {
            tdi: 0,
            relay: Relay::Leave,
        },
        answer(0, Answer::Replay { back: 2 }),
        answer(0, Answer::Genuine),
        bind(2, T0, Report::Bars),
        Op::UnbindForce { tdi: 2, bits: 0 },
        Op::UnbindForce { tdi: 1, bits: 3 },
        bind(2, T0, Report::Keep),
        Op::StreamSetup { dev: 1 },
        bind(2, T0, Report::Keep),
        Op::HostPage {
            page: 5,
            read_only: true,
        },
    ]);
    for pages in 4..10u8 {
        ops.push(Op::DevifCreate {
            dev: 0,
            bus: 0,
            func: 2 + pages,
            pages,
        });
    }
    ops.push(Op::UnbindAll { tdi: 1 });
    out.push(seed(
        "tdx_dispatcher",
        "relay-answers",
        tdx::encode(false, &ops),
        Reach::Relays,
    ));
    out.push(seed(
        "tdx_dispatcher",
        "dma-private-unbind",
        tdx::encode(false, &tdx_dma_ops()),
        Reach::DmaPrivateThenUnbound,
    ));
    out
}

/// A TDI whose DMA reaches its TD's private memory, every trusted-DMA leaf refused on the way
/// (bad `dmar_idx_t`, a chosen translation or domain, another TD, a running TDI's teardown,
/// bad wait descriptors), then its unbind with the host's own DMA teardown in the Linux
/// order, and the TDI removed once no entry remains.
fn tdx_dma_ops() -> Vec<Op> {
    let add = |td: Td, idx: Idx, qw: AddQwords| Op::DmarAdd {
        tdi: 0,
        td,
        idx,
        qw,
    };
    let accept = |td: Td, m: AcceptMut| Op::DmarAccept { tdi: 0, td, m };
    let good_wait = WaitDesc::Good { data: 1 };
    let status = StatusAddr::Page { page: 5, word: 0 };
    let iq = |kind: InvKind, iommu: Iommu, wait: WaitDesc, status: StatusAddr| Op::IqRequest {
        tdi: 0,
        iommu,
        kind,
        wait,
        status,
    };
    let iotlb = InvKind::Iotlb {
        td: Td::OwnerOf { tdi: 0 },
    };
    let process = Op::IqProcess {
        tdi: 0,
        iommu: Iommu::Own,
    };
    let mut ops = vec![Op::TdCreate, Op::TdCreate];
    ops.extend(td_device(0, Bars::One));
    ops.extend([
        bind(0, T0, Report::Split),
        map_owned(0, T0, 0, (0, 0), 1),
        Op::Accept {
            td: T0,
            at: At::Leaf { i: 0 },
        },
        accept(T0, AcceptMut::Fine),
        add(T0, Idx::Level { level: 0 }, AddQwords::Good),
        add(T0, Idx::Reserved { bit: 0 }, AddQwords::Good),
        add(T0, Idx::Pasid { pasid: 1 }, AddQwords::Good),
        add(T0, Idx::OtherIommu, AddQwords::Good),
        add(T1, Idx::Good, AddQwords::Good),
        add(T0, Idx::Good, AddQwords::Slptptr { page: 0x1234 }),
        add(T0, Idx::Good, AddQwords::Did { did: 7 }),
        add(T0, Idx::Good, AddQwords::Present),
        add(T0, Idx::Good, AddQwords::OtherAw),
        add(T0, Idx::Good, AddQwords::High { q: 4, v: 1 }),
        add(T0, Idx::Good, AddQwords::Good),
        add(T0, Idx::Good, AddQwords::Good),
        Op::DmarRead {
            tdi: 0,
            idx: Idx::Good,
        },
        accept(T1, AcceptMut::Fine),
        accept(T0, AcceptMut::Reg { r: 6, v: 1 }),
        accept(T0, AcceptMut::Target { v: 1 }),
        accept(T0, AcceptMut::Fine),
        accept(T0, AcceptMut::Fine),
        start(T0, 0),
        Op::DmarRead {
            tdi: 0,
            idx: Idx::Good,
        },
        // The device still reaches the guest: the host may tear nothing down.
        Op::DmarBlock {
            tdi: 0,
            idx: Idx::Good,
        },
        Op::DmarRemove {
            tdi: 0,
            idx: Idx::Good,
        },
        iq(InvKind::Pasid, Iommu::Own, good_wait, status),
        Op::DevifRemove { tdi: 0 },
        // The TD's domain owes nothing, then its TRACK's invalidation, requested badly first.
        iq(iotlb, Iommu::Own, good_wait, status),
        Op::Track { td: T0 },
        iq(iotlb, Iommu::Other, good_wait, status),
        iq(iotlb, Iommu::Own, WaitDesc::NoFence, status),
        iq(
            iotlb,
            Iommu::Own,
            WaitDesc::High { r12: true, v: 1 },
            status,
        ),
        iq(
            iotlb,
            Iommu::Own,
            good_wait,
            StatusAddr::Misaligned { page: 5, off: 0 },
        ),
        iq(iotlb, Iommu::Own, good_wait, StatusAddr::Outside),
        iq(iotlb, Iommu::Own, good_wait, StatusAddr::KeyId),
        iq(InvKind::Type { rdx: 2 }, Iommu::Own, good_wait, status),
        iq(iotlb, Iommu::Own, good_wait, status),
        iq(iotlb, Iommu::Own, good_wait, status),
        Op::IqProcess {
            tdi: 0,
            iommu: Iommu::Other,
        },
        process,
        // One unbind call, relayed; then the host's own teardown in the Linux order.
        unbind(0),
        Op::DmarBlock {
            tdi: 0,
            idx: Idx::Good,
        },
        iq(
            InvKind::PasidRaw { r8: 1 << 20 },
            Iommu::Own,
            good_wait,
            status,
        ),
        iq(InvKind::Pasid, Iommu::Own, good_wait, status),
        Op::DmarRemove {
            tdi: 0,
            idx: Idx::Good,
        },
        process,
        Op::DmarRemove {
            tdi: 0,
            idx: Idx::Good,
        },
        iq(iotlb, Iommu::Own, good_wait, status),
        process,
        Op::DmarRemove {
            tdi: 0,
            idx: Idx::Good,
        },
        Op::UnbindAll { tdi: 0 },
        Op::DmarRead {
            tdi: 0,
            idx: Idx::Good,
        },
        Op::DevifRemove { tdi: 0 },
    ]);
    ops
}

fn m0() -> [Mut; 2] {
    [Mut::Keep; 2]
}

/// TIO_TDI_BIND of TDI `t` of device 0 to guest `g`, relayed to its end.
fn sev_bind(t: u8, g: u8, gdev: u8) -> Cmd {
    Cmd::TdiBind {
        d: 0,
        t,
        g,
        gdev,
        m: m0(),
        relay: Relay::Drive,
    }
}

/// One TIO_TDI_UNBIND of TDI `t` of device 0, relayed to its end.
fn sev_unbind(t: u8, g: u8, force: bool) -> Cmd {
    Cmd::TdiUnbind {
        d: 0,
        t,
        g,
        force,
        m: m0(),
        relay: Relay::Drive,
    }
}

/// Guest `g`'s message `msg` about TDI `t` of device 0, well formed, on the first request and
/// response pages.
fn guest_msg(t: u8, g: u8, msg: Msg, relay: Relay) -> Cmd {
    Cmd::Guest {
        d: 0,
        t,
        g,
        msg,
        hdr: HdrMut::Fine,
        req: 0,
        res: 0,
        m: m0(),
        relay,
    }
}

/// TIO_TDI_STATUS of TDI 0 of device 0 into output pick `out`.
fn tdi_status(out: u8, relay: Relay) -> Cmd {
    Cmd::TdiStatus {
        d: 0,
        t: 0,
        out,
        m: m0(),
        relay,
    }
}

fn sev_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let info = Msg::Info { gdev: 0 };
    // A started TDI: every output command, the host's refused requests, unbind, rebind.
    let cmds = vec![
        tdi_status(0, Relay::Drive),
        Cmd::TdiInfo {
            d: 0,
            t: 0,
            out: 0,
            m: m0(),
        },
        Cmd::TdiReport {
            d: 0,
            t: 0,
            g: 0,
            out: 0,
            m: m0(),
        },
        Cmd::FenceStatus {
            d: 0,
            asid: 0,
            out: 0,
            m: m0(),
        },
        guest_msg(0, 0, info, Relay::Drive),
        Cmd::MmioBlock {
            g: 0,
            gpa: 0,
            size: 1,
            m: m0(),
        },
        Cmd::MmioUnmap {
            g: 0,
            gpa: 1,
            size: 0,
            m: m0(),
        },
        Cmd::MmioZap {
            base: 0,
            pages: 3,
            m: m0(),
        },
        Cmd::HostRmp {
            page: 0,
            assign: false,
            psmash: false,
        },
        Cmd::Decommission { g: 0, m: m0() },
        Cmd::FenceClear {
            d: 0,
            g: 0,
            m: m0(),
        },
        Cmd::TdiUnbindAll { d: 0, t: 0, g: 0 },
        Cmd::MmioZap {
            base: 0,
            pages: 3,
            m: m0(),
        },
        sev_bind(0, 1, 1),
        Cmd::TdiReclaim {
            d: 0,
            t: 1,
            m: m0(),
        },
    ];
    out.push(seed(
        "sev_dispatcher",
        "started-outputs-unbind",
        sev::encode(Stage::Started, &cmds),
        Reach::RunThenUnbound,
    ));

    // 80 leaves and held fences: resumable unbind, then FENCE pending.
    let cmds = vec![
        Cmd::HoldFences { g: 1, hold: true },
        sev_unbind(1, 1, false),
        sev_unbind(1, 1, false),
        sev_unbind(1, 1, false),
        Cmd::FenceStatus {
            d: 0,
            asid: 1,
            out: 0,
            m: m0(),
        },
        Cmd::HoldFences { g: 1, hold: false },
        Cmd::TdiUnbindAll { d: 0, t: 1, g: 1 },
    ];
    out.push(seed(
        "sev_dispatcher",
        "resumable-unbind",
        sev::encode(Stage::Many, &cmds),
        Reach::ResumableUnbind,
    ));

    // A device that refuses START (the TDI goes to ERROR in the answer), device errors, a
    // silent device under unbind.
    let cmds = vec![
        Cmd::Device {
            t: 0,
            action: DevAction::Misbehave { how: 4 },
        },
        guest_msg(0, 0, Msg::Start { gdev: 0 }, Relay::Drive),
        tdi_status(0, Relay::Drive),
        Cmd::TdiError {
            d: 0,
            t: 0,
            m: m0(),
        },
        Cmd::Device {
            t: 0,
            action: DevAction::Misbehave { how: 0 },
        },
        sev_unbind(0, 0, false),
        Cmd::Device {
            t: 0,
            action: DevAction::Behave,
        },
        Cmd::TdiUnbindAll { d: 0, t: 0, g: 0 },
        Cmd::SetReport {
            t: 0,
            report: SevReport::Overlap,
        },
        sev_bind(0, 0, 0),
    ];
    out.push(seed(
        "sev_dispatcher",
        "device-errors",
        sev::encode(Stage::Mapped, &cmds),
        Reach::Error,
    ));

    // Output and request addresses of every kind, mutated fields and headers.
    let mut cmds = Vec::new();
    for out_pick in 1..11u8 {
        cmds.push(tdi_status(out_pick, Relay::Drive));
        cmds.push(Cmd::Guest {
            d: 0,
            t: 0,
            g: 0,
            msg: Msg::Validate {
                gdev: 0,
                range: 0,
                offset: 0,
                pages: 7,
                gpa: 0,
                flags: 1,
            },
            hdr: HdrMut::Fine,
            req: out_pick % 4,
            res: out_pick,
            m: m0(),
            relay: Relay::Drive,
        });
    }
    for hdr in [
        HdrMut::Version,
        HdrMut::HdrSize,
        HdrMut::MsgVersion,
        HdrMut::Reserved { at: 3 },
        HdrMut::Size { delta: 1 },
        HdrMut::Type { ty: 0x7f },
    ] {
        cmds.push(Cmd::Guest {
            d: 0,
            t: 0,
            g: 0,
            msg: Msg::Start { gdev: 1 },
            hdr,
            req: 0,
            res: 0,
            m: m0(),
            relay: Relay::Drive,
        });
    }
    cmds.extend([
        Cmd::TdiInfo {
            d: 0,
            t: 0,
            out: 8,
            m: [
                Mut::Field {
                    field: 1,
                    val: Val::Bit { bit: 1 },
                },
                Mut::Keep,
            ],
        },
        Cmd::TdiReport {
            d: 0,
            t: 0,
            g: 0,
            out: 4,
            m: [Mut::Misalign, Mut::Keep],
        },
        Cmd::MmioMap {
            t: 0,
            g: 0,
            gpa: 2,
            hpa: 2,
            size: 0,
            m: [Mut::Length { len: 0x28 }, Mut::Id { id: 0xF0 }],
        },
        Cmd::MmioMap {
            t: 0,
            g: 0,
            gpa: 2,
            hpa: 2,
            size: 0,
            m: m0(),
        },
        Cmd::Raw {
            id: 0x8000,
            len: 8,
            words: [0x2_0000_0000, 0, 0, 0, 0, 0],
        },
    ]);
    out.push(seed(
        "sev_dispatcher",
        "addresses-and-mutations",
        sev::encode(Stage::Mapped, &cmds),
        Reach::Checks,
    ));

    // From nothing, by commands only: contexts, devices of every configuration, TDIs.
    let mut cmds = vec![
        Cmd::GctxCreate { g: 0, m: m0() },
        Cmd::Activate {
            g: 0,
            asid: 5,
            m: m0(),
        },
        Cmd::GctxCreate { g: 3, m: m0() },
        Cmd::Activate {
            g: 0,
            asid: 7,
            m: m0(),
        },
    ];
    for cfg in 0..8u8 {
        cmds.push(Cmd::DevCreate {
            d: cfg % 3,
            cfg,
            m: m0(),
        });
    }
    cmds.extend([
        // Device 1 refuses a connect without TC0, then one with certificate slot 9.
        Cmd::DevConnect {
            d: 1,
            m: [
                Mut::Field {
                    field: 8,
                    val: Val::Zero,
                },
                Mut::Keep,
            ],
        },
        Cmd::DevConnect {
            d: 1,
            m: [
                Mut::Bytes {
                    at: 0x39,
                    width: 0,
                    val: Val::Small { v: 9 },
                },
                Mut::Keep,
            ],
        },
        Cmd::DevConnect { d: 0, m: m0() },
        Cmd::TdiCreate {
            d: 0,
            t: 2,
            bus: 0,
            func: 2,
            m: m0(),
        },
        Cmd::TdiCreate {
            d: 0,
            t: 3,
            bus: 1,
            func: 0,
            m: m0(),
        },
        sev_bind(2, 0, 3),
        Cmd::DevDisconnect {
            d: 0,
            force: true,
            m: m0(),
        },
        Cmd::TdiUnbindAll { d: 0, t: 2, g: 0 },
        Cmd::TdiReclaim {
            d: 0,
            t: 2,
            m: m0(),
        },
        Cmd::DevReclaim { d: 0, m: m0() },
        Cmd::Decommission { g: 0, m: m0() },
    ]);
    out.push(seed(
        "sev_dispatcher",
        "from-nothing",
        sev::encode(Stage::Empty, &cmds),
        Reach::Checks,
    ));
    // Continuations of a saved written-back buffer with every kind of wrong answer and
    // mangled response buffer, then the device's own; a START left unanswered three times
    // (the guest hears DeviceUnresponsive), a bind abandoned by an unbind, a forced unbind and
    // the stream set up again by DEV_DISCONNECT and DEV_CONNECT.
    let cont = |answer: Answer, resp: RespMut| Cmd::Continue {
        k: 0,
        answer,
        resp,
        from_page: false,
        m: m0(),
    };
    let mut cmds = vec![tdi_status(0, Relay::Leave)];
    for (answer, resp) in [
        (Answer::Flip { at: 40, bit: 1 }, RespMut::Fine),
        (Answer::Genuine, RespMut::Id),
        (Answer::Genuine, RespMut::Version),
        (Answer::Genuine, RespMut::Type { t: 1 }),
        (Answer::Genuine, RespMut::Length { d: 32 }),
        (Answer::Genuine, RespMut::PayloadSize),
        (Answer::Genuine, RespMut::Encrypted),
        // A consistent answer longer than any the firmware takes: RESPONSE_TOO_LARGE.
        (
            Answer::Bytes {
                len: 399,
                fill: 0x5a,
                doe: false,
            },
            RespMut::Fine,
        ),
        (Answer::Replay { back: 3 }, RespMut::Fine),
        (Answer::Reflect, RespMut::Fine),
        (Answer::TooLong, RespMut::Fine),
        (
            Answer::Bytes {
                len: 80,
                fill: 7,
                doe: true,
            },
            RespMut::Fine,
        ),
        (Answer::Genuine, RespMut::Empty),
        (Answer::Genuine, RespMut::Fine),
        (Answer::Genuine, RespMut::Fine),
    ] {
        cmds.push(cont(answer, resp));
    }
    cmds.extend([
        guest_msg(0, 0, Msg::Start { gdev: 0 }, Relay::Leave),
        cont(Answer::Silent, RespMut::Fine),
        cont(Answer::Silent, RespMut::Fine),
        cont(Answer::Silent, RespMut::Fine),
        guest_msg(0, 0, Msg::Start { gdev: 0 }, Relay::Drive),
        Cmd::TdiUnbind {
            d: 0,
            t: 0,
            g: 0,
            force: false,
            m: m0(),
            relay: Relay::Once {
                answer: Answer::Silent,
            },
        },
        Cmd::TdiBind {
            d: 0,
            t: 1,
            g: 1,
            gdev: 1,
            m: m0(),
            relay: Relay::Rounds { n: 2 },
        },
        sev_unbind(1, 1, false),
        cont(Answer::Genuine, RespMut::Fine),
        sev_bind(1, 1, 1),
        sev_unbind(1, 1, true),
        sev_bind(1, 1, 1),
        Cmd::DevDisconnect {
            d: 0,
            force: false,
            m: m0(),
        },
        Cmd::DevConnect { d: 0, m: m0() },
        sev_bind(1, 1, 1),
    ]);
    out.push(seed(
        "sev_dispatcher",
        "relay-continuations",
        sev::encode(Stage::Bound, &cmds),
        Reach::Relays,
    ));

    // Linux's init as commands (sev_tio_init_locked: TIO_STATUS, TIO_INIT, TIO_STATUS) with
    // TIO refused before it, a misplaced status page, a reserved field set, a short TIO_INIT,
    // TIO_INIT twice, then a device connected and a TDI bound.
    let cmds = vec![
        Cmd::DevCreate {
            d: 0,
            cfg: 0,
            m: m0(),
        },
        Cmd::GctxCreate { g: 0, m: m0() },
        Cmd::Activate {
            g: 0,
            asid: 5,
            m: m0(),
        },
        Cmd::TioStatus { out: 2, m: m0() },
        Cmd::TioStatus {
            out: 0,
            m: [
                Mut::Field {
                    field: 1,
                    val: Val::Raw { v: 1 },
                },
                Mut::Keep,
            ],
        },
        Cmd::TioStatus { out: 0, m: m0() },
        Cmd::TioInit {
            m: [Mut::Length { len: 8 }, Mut::Keep],
        },
        tdi_status(0, Relay::Drive),
        Cmd::TioInit { m: m0() },
        Cmd::TioStatus { out: 0, m: m0() },
        Cmd::TioInit { m: m0() },
        Cmd::DevCreate {
            d: 0,
            cfg: 0,
            m: m0(),
        },
        Cmd::DevConnect { d: 0, m: m0() },
        Cmd::TdiCreate {
            d: 0,
            t: 0,
            bus: 0,
            func: 0,
            m: m0(),
        },
        sev_bind(0, 0, 0),
        Cmd::TioStatus { out: 1, m: m0() },
    ];
    out.push(seed(
        "sev_dispatcher",
        "tio-init",
        sev::encode(Stage::Uninit, &cmds),
        Reach::TioInit,
    ));

    out.push(seed(
        "sev_dispatcher",
        "sdte-private-unbind",
        sev::encode(Stage::Started, &sev_dma_cmds()),
        Reach::DmaPrivateThenUnbound,
    ));
    out
}

/// The started TDI's sDTE: the guest's SDTE writes refused (another guest, firmware bits, a
/// VMPL below the sender's, malformed VMPCKs, a reserved body byte), an invalidation of an
/// entry never valid, then Linux's write (its DMA reaches the guest's private memory), its
/// rewrites (the same bits: nothing changes; others, or V clear: kept until the unbind), the
/// unbind, a write to the unbound TDI and the reclaim.
fn sev_dma_cmds() -> Vec<Cmd> {
    let write = |g: u8, entry: SdteMut, hdr: HdrMut| Cmd::Guest {
        d: 0,
        t: 0,
        g,
        msg: Msg::Sdte { gdev: 0, entry },
        hdr,
        req: 0,
        res: 0,
        m: m0(),
        relay: Relay::Drive,
    };
    vec![
        write(1, SdteMut::Linux, HdrMut::Fine),
        write(0, SdteMut::Reserved { bit: 5 }, HdrMut::Fine),
        write(0, SdteMut::Reserved { bit: 300 }, HdrMut::Fine),
        write(0, SdteMut::BelowSender { k: 4 }, HdrMut::Fine),
        write(0, SdteMut::Linux, HdrMut::Vmpck { v: 4 }),
        write(0, SdteMut::Linux, HdrMut::Vmpck { v: 255 }),
        write(0, SdteMut::BodyReserved { at: 2 }, HdrMut::Fine),
        write(0, SdteMut::Invalidate, HdrMut::Fine),
        write(0, SdteMut::Linux, HdrMut::Fine),
        write(0, SdteMut::Linux, HdrMut::Fine),
        write(0, SdteMut::Flip { bit: 3 }, HdrMut::Fine),
        write(0, SdteMut::Vmpl { vmpl: 1 }, HdrMut::Fine),
        write(0, SdteMut::Flip { bit: 0 }, HdrMut::Fine),
        write(1, SdteMut::Invalidate, HdrMut::Fine),
        Cmd::TdiUnbindAll { d: 0, t: 0, g: 0 },
        write(0, SdteMut::Linux, HdrMut::Fine),
        Cmd::TdiReclaim {
            d: 0,
            t: 0,
            m: m0(),
        },
    ]
}

fn fid() -> u32 {
    tsm_core::tdisp::function_id(RequesterId::try_new(0, 3, 0, 0).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or(0)
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("get-version", Request::GetVersion),
        (
            "get-capabilities",
            Request::GetCapabilities(CapabilitiesRequest { tsm_caps: 0.into() }),
        ),
        (
            "lock",
            Request::LockInterface(LockParams {
                flags: 1.into(),
                default_stream_id: 0,
                reserved: 0,
                mmio_reporting_offset: 0x1000.into(),
                bind_p2p_address_mask: 0.into(),
            }),
        ),
        (
            "get-report",
            Request::GetReport(ReportRequest {
                offset: 0.into(),
                length: 256.into(),
            }),
        ),
        ("get-state", Request::GetState),
        ("start", Request::Start([7; 32])),
        ("stop", Request::Stop),
    ]
}

fn report_bytes(ranges: &[WireMmioRange], dsi: &[u8]) -> Vec<u8> {
    let mut out = [0u8; 1024];
    let n = encode_report(&mut out, &report_head(ranges.len() as u32), ranges, dsi)
        .unwrap_or_else(|e| panic!("{e:?}"));
    out[..n].to_vec()
}

fn reports() -> Vec<(&'static str, Vec<u8>)> {
    let sixteen: Vec<WireMmioRange> = (0..16u16)
        .map(|i| wire_range(0x8000_0000 + u64::from(i) * 0x10_0000, 16, 0, i))
        .collect();
    vec![
        ("empty", report_bytes(&[], &[])),
        (
            "two-ranges-shared",
            report_bytes(
                &[
                    wire_range(0x8000_0000, 512, 0, 0),
                    wire_range(0x8020_0000, 1, RANGE_ATTR_NON_TEE, 1),
                ],
                &[],
            ),
        ),
        ("sixteen-ranges", report_bytes(&sixteen, &[1, 2, 3])),
        (
            "device-specific",
            report_bytes(&[wire_range(0x1_0000_0000, 1, 0, 0)], &[0xee; 40]),
        ),
    ]
}

fn decoder_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let fid = fid();
    for (name, req) in requests() {
        let mut b = [0u8; 64];
        let n = encode_request(&mut b, fid, &req).unwrap_or_else(|e| panic!("{e:?}"));
        out.push(seed("tdisp_request", name, b[..n].to_vec(), Reach::Checks));
    }
    let caps = Capabilities {
        dsm_caps: 0.into(),
        req_msgs_supported: [0xff; 16],
        lock_interface_flags_supported: 0x1f.into(),
        reserved: [0; 3],
        dev_addr_width: 52,
        num_req_this: 1,
        num_req_all: 1,
    };
    let portion = report_bytes(&[wire_range(0x8000_0000, 16, 0, 0)], &[]);
    let responses: Vec<(&str, u8, Response<'_>)> = vec![
        ("version", 0x81, Response::Version(&[0x10])),
        ("capabilities", 0x82, Response::Capabilities(caps)),
        ("lock", 0x83, Response::Lock([9; 32])),
        (
            "report",
            0x84,
            Response::Report {
                portion: &portion,
                remainder: 0,
            },
        ),
        ("state", 0x85, Response::State(TdispState::Run)),
        ("start", 0x86, Response::Start),
        ("stop", 0x87, Response::Stop),
        (
            "error",
            0x83,
            Response::Error(ErrorBody {
                code: 4.into(),
                data: 0.into(),
            }),
        ),
    ];
    for (name, code, resp) in responses {
        let mut b = vec![code, 1];
        b.extend(fid.to_le_bytes());
        let mut m = [0u8; 512];
        let n = encode_response(&mut m, fid, &resp).unwrap_or_else(|e| panic!("{e:?}"));
        b.extend_from_slice(&m[..n]);
        out.push(seed("tdisp_response", name, b, Reach::Checks));
    }
    for (name, bytes) in reports() {
        let mut b = vec![0];
        b.extend(&bytes);
        out.push(seed("tdisp_report", name, b, Reach::Checks));
        if name == "two-ranges-shared" {
            // The same report as a device with MMIO_REPORTING_OFFSET 2 GiB sends it.
            let mut shifted = bytes.clone();
            for i in 0..2 {
                let at = 16 + 16 * i;
                let v = u64::from_le_bytes(shifted[at..at + 8].try_into().unwrap_or([0; 8]));
                shifted[at..at + 8].copy_from_slice(&(v + 0x8000_0000).to_le_bytes());
            }
            let mut b = vec![2];
            b.extend(&shifted);
            out.push(seed("tdisp_report", "offset-2g", b, Reach::Checks));
        }
    }
    // Portions: (kind, length, remainder) steps, then the report.
    let step = |kind: u8, len: u16, rem: u16| {
        let mut s = vec![kind];
        s.extend(len.to_le_bytes());
        s.extend(rem.to_le_bytes());
        s
    };
    let big = report_bytes(
        &(0..16u16)
            .map(|i| wire_range(0x8000_0000 + u64::from(i) * 0x10_0000, 16, 0, i))
            .collect::<Vec<_>>(),
        &[0x5a; 100],
    );
    // (name, steps, report)
    type Script = (&'static str, Vec<Vec<u8>>, Vec<u8>);
    let scripts: Vec<Script> = vec![
        ("one-portion", vec![step(0, 52, 0)], reports()[1].1.clone()),
        (
            "three-portions",
            vec![step(0, 256, 0), step(0, 100, 0), step(0, 20, 0)],
            big.clone(),
        ),
        (
            "silence-then-portions",
            vec![
                step(4, 0, 0),
                step(4, 0, 0),
                step(0, 100, 0),
                step(0, 256, 0),
                step(0, 256, 0),
                step(0, 256, 0),
            ],
            big.clone(),
        ),
        (
            "inconsistent-remainder",
            vec![step(0, 100, 0), step(2, 100, 7)],
            big,
        ),
        (
            "garbage-other-refuse",
            vec![step(5, 0, 0), step(6, 0, 0), step(7, 0, 0)],
            reports()[0].1.clone(),
        ),
        (
            "no-record-between-portions",
            vec![
                step(8, 0, 0),
                step(0, 30, 0),
                step(8, 0, 0),
                step(4, 0, 0),
                step(0, 22, 0),
            ],
            reports()[1].1.clone(),
        ),
        (
            "outside-the-bar",
            vec![step(0, 256, 0)],
            report_bytes(&[wire_range(0x8100_0000, 1, 0, 0)], &[]),
        ),
        (
            "silent-three-times",
            vec![step(0, 20, 0), step(4, 0, 0), step(4, 0, 0), step(4, 0, 0)],
            reports()[1].1.clone(),
        ),
    ];
    for (name, steps, report) in scripts {
        let mut b = vec![steps.len() as u8];
        for s in &steps {
            b.extend(s);
        }
        b.extend(report);
        let reach = match name {
            "one-portion" | "three-portions" | "no-record-between-portions" => Reach::Bound,
            "outside-the-bar" | "silent-three-times" | "garbage-other-refuse" => Reach::Refused,
            _ => Reach::Checks,
        };
        out.push(seed("report_portions", name, b, reach));
    }
    out
}

fn relay_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let begin = |tdi: u8, op: u8| {
        (
            Step::Begin {
                tdi,
                op,
                guest: tdi / 2,
            },
            Vec::new(),
        )
    };
    let give = |tdi: u8, of: u8, answer: Answer| (Step::Give { tdi, of, answer }, Vec::new());
    let finish = |tdi: u8| (Step::Finish { tdi }, Vec::new());
    // One TDI through bind, start, check and unbind, each step first handed every kind of
    // wrong answer, silence and bytes from the input.
    let mut steps = vec![begin(0, 0)];
    for answer in [
        Answer::Flip { at: 9, bit: 0 },
        Answer::Truncate { len: 33 },
        Answer::Extend { by: 4, fill: 0 },
        Answer::DoeLength { delta: -1 },
        Answer::Reflect,
        Answer::Bytes {
            len: 60,
            fill: 0,
            doe: true,
        },
        Answer::TooLong,
        Answer::Silent,
        Answer::Genuine,
    ] {
        steps.push(give(0, 0, answer));
    }
    steps.push((
        Step::Raw {
            tdi: 0,
            len: 39,
            doe: true,
        },
        (0..40u8).collect(),
    ));
    steps.extend([finish(0), (Step::Map { tdi: 0, page: 3 }, Vec::new())]);
    steps.extend([
        begin(0, 1),
        give(0, 0, Answer::Silent),
        give(0, 0, Answer::Silent),
        give(0, 0, Answer::Silent),
        begin(0, 1),
        give(0, 0, Answer::Replay { back: 4 }),
        finish(0),
        give(0, 0, Answer::Genuine),
        begin(0, 2),
        give(0, 0, Answer::Replay { back: 0 }),
        finish(0),
        (
            Step::HoldFlush {
                guest: 0,
                hold: true,
            },
            Vec::new(),
        ),
        begin(0, 3),
        give(0, 0, Answer::Flip { at: 100, bit: 7 }),
        finish(0),
        begin(0, 3),
        (
            Step::HoldFlush {
                guest: 0,
                hold: false,
            },
            Vec::new(),
        ),
        begin(0, 3),
    ]);
    out.push(seed(
        "relay_answers",
        "every-step-garbled",
        relay::encode(&steps),
        Reach::Relays,
    ));

    // Two TDIs of two devices interleaved: answers to one handed to the other, a second bind
    // of a device while another TDI reads its report, abandoned exchanges, a device error
    // dropping a START, a forced unbind and the stream set up again.
    let steps = vec![
        begin(0, 0),
        begin(2, 0),
        give(0, 2, Answer::Genuine),
        give(2, 2, Answer::Genuine),
        give(0, 0, Answer::Genuine),
        begin(1, 0),
        give(2, 0, Answer::Replay { back: 0 }),
        finish(2),
        finish(0),
        begin(0, 1),
        (Step::DeviceError { tdi: 0 }, Vec::new()),
        give(0, 0, Answer::Genuine),
        begin(1, 0),
        give(1, 1, Answer::Genuine),
        give(1, 1, Answer::Genuine),
        give(1, 1, Answer::Genuine),
        begin(1, 3),
        give(1, 1, Answer::Genuine),
        begin(1, 0),
        finish(1),
        (
            Step::Device {
                tdi: 2,
                action: DevAction::Misbehave { how: 0 },
            },
            Vec::new(),
        ),
        begin(2, 3),
        give(2, 2, Answer::Genuine),
        give(2, 2, Answer::Genuine),
        give(2, 2, Answer::Genuine),
        begin(2, 4),
        give(2, 2, Answer::Genuine),
        begin(3, 0),
        (Step::Setup { dev: 1 }, Vec::new()),
        (
            Step::Device {
                tdi: 2,
                action: DevAction::Behave,
            },
            Vec::new(),
        ),
        begin(3, 0),
        finish(3),
    ];
    out.push(seed(
        "relay_answers",
        "interleaved-tdis",
        relay::encode(&steps),
        Reach::Relays,
    ));
    out
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut v = tdx_seeds();
    v.extend(sev_seeds());
    v.extend(decoder_seeds());
    v.extend(relay_seeds());
    v
}

/// Runs a seed through its target and checks it reaches what it says; `Err` names what it
/// missed. (The target's own checks panic.)
pub fn check(s: &Seed) -> Result<String, String> {
    let (summary, reached) = match s.target {
        "tdx_dispatcher" => {
            let (five, ops) = tdx::decode(&s.bytes);
            if tdx::encode(five, &ops) != s.bytes {
                return Err("does not decode to what was encoded".into());
            }
            let st = tdx::run(&s.bytes);
            let reached = match s.reach {
                Reach::RunThenUnbound => st.run && st.unbound,
                Reach::ResumableUnbind => st.resumable > 0 && st.exempt > 0 && st.unbound,
                Reach::Error => st.error && st.unbound,
                Reach::Relays => {
                    st.malformed > 0 && st.exempt > 0 && st.run && st.unbound && st.relays > 0
                }
                Reach::DmaPrivateThenUnbound => {
                    st.dma_private && st.dma_unbound && st.refused >= 20
                }
                Reach::Checks => true,
                Reach::Bound | Reach::Refused | Reach::TioInit => false,
            };
            (format!("{st:?}"), reached)
        }
        "sev_dispatcher" => {
            let (stage, cmds) = sev::decode(&s.bytes);
            if sev::encode(stage, &cmds) != s.bytes {
                return Err("does not decode to what was encoded".into());
            }
            let st = sev::run(&s.bytes);
            let reached = match s.reach {
                Reach::RunThenUnbound => st.run && st.unbound && st.validated,
                Reach::ResumableUnbind => st.resumable > 0 && st.unbound,
                Reach::Error => st.error && st.unbound && st.refused_in_answer > 0,
                Reach::Relays => {
                    st.malformed > 0
                        && st.too_large > 0
                        && st.refused_in_answer > 0
                        && st.run
                        && st.unbound
                }
                Reach::TioInit => {
                    st.before_init > 0 && st.tio_inits == 1 && st.tio_status >= 2 && st.locked
                }
                Reach::DmaPrivateThenUnbound => {
                    st.dma_private
                        && st.dma_unbound
                        && st.sdte_written >= 3
                        && st.refused_in_answer >= 8
                }
                Reach::Checks => true,
                Reach::Bound | Reach::Refused => false,
            };
            (format!("{st:?}"), reached)
        }
        "tdisp_request" => {
            crate::wire::request_target(&s.bytes);
            (String::new(), true)
        }
        "tdisp_response" => {
            crate::wire::response_target(&s.bytes);
            (String::new(), true)
        }
        "tdisp_report" => {
            crate::wire::report_target(&s.bytes);
            (String::new(), true)
        }
        "report_portions" => {
            let outcome = crate::wire::portions_run(&s.bytes);
            let reached = match s.reach {
                Reach::Bound => outcome == Ok(tsm_core::Completion::Done),
                Reach::Refused => outcome.is_err(),
                _ => true,
            };
            (format!("{outcome:?}"), reached)
        }
        "relay_answers" => {
            if relay::encode(&relay::decode(&s.bytes)) != s.bytes {
                return Err("does not decode to what was encoded".into());
            }
            let st = relay::run(&s.bytes);
            let reached = match s.reach {
                Reach::Relays => {
                    st.malformed > 0
                        && st.exempt > 0
                        && st.opened > 0
                        && st.no_exchange > 0
                        && st.unbinding
                }
                _ => true,
            };
            (format!("{st:?}"), reached)
        }
        t => return Err(format!("unknown target {t}")),
    };
    if reached {
        Ok(summary)
    } else {
        Err(format!("did not reach {:?}: {summary}", s.reach))
    }
}
