//! Command tests: golden byte layouts, a good buffer per command with its effect, hostile
//! buffers (short, misaligned, wrong length, reserved bits, bad handles, unknown command)
//! refused with `INVALID_PARAM` (or the precise status) and changing nothing, and the RMP
//! rules for private MMIO. Every command goes through command buffers only, and a command
//! that needs the device through the host's reissue loop ([`crate::host::run`]) with a
//! [`ModelDevice`] behind the DOE mailbox; `relay.rs` tests the relay itself.

use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::relay::MAX_RELAY_BYTES;
use tsm_core::tdisp::report::WireMmioRange;
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Error, GuestId, Hpa, MmioRange, ModelSession, PageSize, RequesterId, ReservedMemory,
    SecureTable, TdiId, TdiState, TdispState,
};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, IntoBytes};

use crate::abi::{self, Command, SlaAddr, len_of};
use crate::fw::{DevCtx, GuestCtx, Sev, TdiCtx};
use crate::guest_msg::{self as msg, MmioValidateStatus as Mv, MsgHeader};
use crate::memory::{PageMemory, SystemMemory};
use crate::pfn::Pfn;
use crate::rmp::{AsidFence, Rmp, RmpEntry, RmpFault, RmpUpdate, VecStore, vec_store};
use crate::status::{Outcome, SevStatus};

mod dma;
mod fields;
mod linux_flow;
mod relay;
mod scatter;
mod tio_init;

// ---- a small world ----------------------------------------------------------------------

const RMP_BASE: u64 = 0x8000_0000;
const RMP_PAGES: usize = 2048; // 8 MiB of MMIO
const BAR: u64 = 0x8000_0000;
const BAR_PAGES: u64 = 1024;
/// System memory: status (0), request (1), response (2), report (3), a guest context (4), a
/// read-only page (5), a device context (6), the SPDM request (7) and response (8) buffers
/// (`spdm_ctrl.req`, `.resp`), the BAR list (9) and the TIO status page (10).
const MEM: u64 = 0x1_0000_0000;
const MEM_PAGES: usize = 11;
/// The page TIO_STATUS writes `sev_tio_status` to (Linux's `tio_status_page`).
const TIO_STATUS_PAGE: u64 = MEM + 0xA000;
/// A page of system memory the tests put a guest context on (a firmware page).
const FW_PAGE: u64 = MEM + 0x4000;
/// A page of system memory the firmware may read but not write.
const RO_PAGE: u64 = MEM + 0x5000;
/// A page of system memory the tests put a device context on (a firmware page).
const FW_PAGE2: u64 = MEM + 0x6000;
/// The SPDM request buffer: firmware-written.
const SPDM_REQ: u64 = MEM + 0x7000;
/// The SPDM response buffer: host-written.
const SPDM_RESP: u64 = MEM + 0x8000;
/// The BAR list DEV_CREATE names.
const BAR_LIST: u64 = MEM + 0x9000;
/// Another BAR list, on the same page.
const OTHER_BARS: u64 = BAR_LIST + 0x200;
/// A page-aligned address no memory answers at.
const UNMAPPED: u64 = MEM + 0x10_0000;
const GCTX: u64 = 0x2_0000_0000;
const GCTX2: u64 = 0x2_0000_1000;
const GPA: u64 = 0x10_0000_0000;
const GDEV: u16 = 0x0100;
/// The IDE stream DEV_CONNECT names for TC0 (Linux: the host bridge's stream index; the other
/// seven traffic classes 0xFF).
const IDE_STREAM: u8 = 3;

fn sla(pfn: u64) -> u64 {
    SlaAddr::new()
        .with_pfn(Pfn::try_new(pfn).unwrap())
        .into_bits()
}
fn dev_sla() -> u64 {
    sla(0x30_0001)
}
fn tdi_sla() -> u64 {
    sla(0x30_0002)
}
fn rid(f: u8) -> RequesterId {
    RequesterId::try_new(0, 3, 0, f).unwrap()
}
fn hpa(v: u64) -> Hpa {
    Hpa::try_new(v).unwrap()
}

#[derive(Clone)]
#[repr(C, align(8))]
struct Buf([u8; 256]);

type Fw = Sev<VecStore, ModelSession>;

struct World {
    sev: Fw,
    mem: PageMemory<MEM_PAGES>,
    /// The device behind the DOE mailbox the host relays to.
    device: ModelDevice,
    /// The last command issued once ([`World::once`]): its ID, its buffer as written back,
    /// and its length.
    last: (abi::CommandId, Buf, usize),
}

/// Everything a refused command must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    /// Every table of the core (`Tsm::snapshot`).
    core: Snapshot<Rmp<VecStore>>,
    /// The SEV firmware's own tables: guest contexts (with ASIDs), device and TDI contexts.
    guests: Vec<GuestCtx>,
    devices: Vec<DevCtx>,
    tdis: Vec<TdiCtx>,
    /// The fence counters of every ASID (every RMP entry's 16 bytes are in `core.table()`).
    fences: Vec<AsidFence>,
    /// The device: each interface's TDISP state and report.
    tdisp: Vec<(RequesterId, TdispState, Vec<WireMmioRange>)>,
    /// System memory: status, message, report, SPDM buffer and BAR list pages.
    mem: Vec<u8>,
    /// Whether TIO_INIT ran.
    tio_init_done: bool,
}

fn len<C: Command>() -> U32 {
    U32::new(len_of::<C>() as u32)
}

/// The system memory the tests' firmware is given at init: the command-buffer pages.
fn system_memory() -> ReservedMemory {
    ReservedMemory::from_ranges(&[MmioRange::from_raw(MEM, MEM_PAGES as u64).unwrap()]).unwrap()
}

/// Writes a BAR list (ours, `abi::BarList`) with `bars` at `at`.
fn put_bars(mem: &mut PageMemory<MEM_PAGES>, at: u64, bars: &[MmioRange]) {
    let mut list = abi::BarList::new_zeroed();
    list.count = (bars.len() as u32).into();
    for (e, b) in list.bars.iter_mut().zip(bars) {
        e.base = b.base().as_u64().into();
        e.pages = b.pages().into();
    }
    mem.write(at, list.as_bytes()).unwrap();
}

impl World {
    /// A world whose firmware the host initialised as Linux does ([`crate::host::tio_init`]:
    /// TIO_STATUS, TIO_INIT, TIO_STATUS).
    fn new() -> Box<Self> {
        let mut w = Self::uninitialised();
        let status = crate::host::tio_init(&mut w.sev, &mut w.mem, TIO_STATUS_PAGE).unwrap();
        assert_eq!(
            status.flags.get(),
            abi::TIO_FLAG_EN | abi::TIO_FLAG_INIT_DONE
        );
        w
    }

    /// A world whose firmware has not run TIO_INIT yet.
    fn uninitialised() -> Box<Self> {
        Self::uninitialised_over(
            RMP_PAGES,
            BAR_PAGES,
            &[
                MmioRange::from_raw(BAR, 512).unwrap(),
                MmioRange::from_raw(BAR + 0x20_0000, 16).unwrap(),
            ],
        )
    }

    /// The same over an RMP window of `rmp_pages` pages from [`BAR`], a BAR of `bar_pages`
    /// pages, and the device reporting `reported` as its TDI's private ranges.
    fn uninitialised_over(rmp_pages: usize, bar_pages: u64, reported: &[MmioRange]) -> Box<Self> {
        let rmp = Rmp::new(hpa(RMP_BASE), vec_store(rmp_pages)).unwrap();
        let mut device = ModelDevice::model();
        device.report_ranges(rid(0), reported);
        let mut mem = PageMemory::new(MEM);
        mem.set_read_only(5, true);
        put_bars(
            &mut mem,
            BAR_LIST,
            &[MmioRange::from_raw(BAR, bar_pages).unwrap()],
        );
        // What Linux writes to the response buffer it allocates at DEV_CONNECT.
        crate::host::response_init(&mut mem, SPDM_RESP).unwrap();
        Box::new(World {
            sev: Sev::new(rmp, ModelSession::model(), system_memory()),
            mem,
            device,
            last: (0, Buf([0; 256]), 0),
        })
    }

    /// Issues `bytes` as command `id` as the host does: again and again while the answer is
    /// `SPDM_REQUEST`, with the request relayed to the device and its answer in the response
    /// buffer ([`crate::host::run`]).
    fn raw(&mut self, id: abi::CommandId, bytes: &[u8]) -> Outcome {
        let mut b = Buf([0; 256]);
        b.0[..bytes.len()].copy_from_slice(bytes);
        crate::host::run(
            &mut self.sev,
            &mut self.mem,
            &mut self.device,
            id,
            &mut b.0[..bytes.len()],
        )
    }

    fn cmd<C: Command>(&mut self, c: &C) -> Outcome {
        self.raw(C::ID, c.as_bytes())
    }

    /// Issues `c` once, keeping the written-back buffer for [`World::reissue`].
    fn once<C: Command>(&mut self, c: &C) -> Outcome {
        let bytes = c.as_bytes();
        self.last = (C::ID, Buf([0; 256]), bytes.len());
        self.last.1.0[..bytes.len()].copy_from_slice(bytes);
        self.reissue()
    }

    /// Issues the written-back buffer of the last [`World::once`] again, as it is.
    fn reissue(&mut self) -> Outcome {
        let (id, buf, n) = &mut self.last;
        self.sev.command(&mut self.mem, *id, &mut buf.0[..*n])
    }

    /// The host's DOE exchange for the last command: its request relayed to the device, the
    /// answer written to the response buffer.
    fn relay(&mut self) {
        let (_, buf, n) = &self.last;
        crate::host::exchange(&mut self.mem, &buf.0[..*n], &mut self.device).unwrap();
    }

    /// The written-back buffer of the last [`World::once`].
    fn last_bytes(&self) -> &[u8] {
        &self.last.1.0[..self.last.2]
    }

    fn state(&self) -> State {
        let mut mem = vec![0u8; MEM_PAGES * 4096];
        for (i, chunk) in mem.chunks_mut(4096).enumerate() {
            self.mem.read(self.mem.page(i as u64), chunk).unwrap();
        }
        let core = self.sev.tsm().snapshot().unwrap();
        let fences = core.table().fences().to_vec();
        // Every interface a test names: those with a TDI context and the functions of bus 3.
        let mut ifaces: Vec<RequesterId> = (0..8).map(rid).collect();
        ifaces.extend(self.sev.tdis().iter().map(|t| t.iface));
        let dsm = self.device.dsm();
        let tdisp = ifaces
            .iter()
            .map(|i| (*i, dsm.state(*i), dsm.report(*i).to_vec()))
            .collect();
        State {
            core,
            guests: self.sev.guests().to_vec(),
            devices: self.sev.devices().to_vec(),
            tdis: self.sev.tdis().to_vec(),
            fences,
            tdisp,
            mem,
            tio_init_done: self.sev.tio_init_done(),
        }
    }

    fn guest(&self, gctx: u64) -> GuestId {
        self.sev.guest_ctx(gctx).unwrap().guest
    }

    fn tdi(&self) -> TdiId {
        self.sev.tdi_ctx(tdi_sla()).unwrap().tdi
    }

    /// Guest (activated), device (connected), TDI: up to `stage`.
    fn setup(&mut self, stage: Stage) {
        ok(self.cmd(&gctx_create(GCTX)));
        ok(self.cmd(&activate(GCTX, 5)));
        ok(self.cmd(&gctx_create(GCTX2)));
        ok(self.cmd(&activate(GCTX2, 6)));
        ok(self.cmd(&dev_create()));
        ok(self.cmd(&dev_connect()));
        ok(self.cmd(&tdi_create()));
        if stage >= Stage::Bound {
            ok(self.cmd(&tdi_bind(GCTX)));
        }
        if stage >= Stage::Mapped {
            ok(self.cmd(&mmio_map(GPA, BAR, abi::MMIO_SIZE_2M)));
            ok(self.cmd(&mmio_map(
                GPA + 0x20_0000,
                BAR + 0x20_0000,
                abi::MMIO_SIZE_4K,
            )));
        }
    }

    fn validate(
        &mut self,
        gctx: u64,
        req: msg::MmioValidateReq,
    ) -> (Outcome, msg::MmioValidateRsp) {
        let out = self.guest_msg(gctx, msg::MSG_MMIO_VALIDATE_REQ, req.as_bytes());
        let mut rsp = msg::MmioValidateRsp::new_zeroed();
        self.mem
            .read(MEM + 0x2000 + 0x60, rsp.as_mut_bytes())
            .unwrap();
        (out, rsp)
    }

    /// Writes a guest message, header and body, to the request page.
    fn put_msg(&mut self, ty: u8, body: &[u8]) {
        self.mem
            .write(MEM + 0x1000, MsgHeader::new(ty, body.len()).as_bytes())
            .unwrap();
        self.mem.write(MEM + 0x1000 + 0x60, body).unwrap();
    }

    fn guest_msg(&mut self, gctx: u64, ty: u8, body: &[u8]) -> Outcome {
        self.put_msg(ty, body);
        self.cmd(&guest_request(gctx))
    }

    /// The response body of the last guest message.
    fn response<T: zerocopy::FromBytes + IntoBytes>(&self) -> T {
        let mut rsp = T::new_zeroed();
        self.mem.read(MEM + 0x2060, rsp.as_mut_bytes()).unwrap();
        rsp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Created,
    Bound,
    Mapped,
}

#[track_caller]
fn ok(o: Outcome) {
    assert_eq!(o, Outcome::SUCCESS);
}

/// What a refusal must answer: an SEV status (any detail), a core status (the SEV status it
/// maps to and the core code in `detail`), or an exact outcome.
trait Want: core::fmt::Debug {
    fn matches(&self, o: Outcome) -> bool;
}

impl Want for SevStatus {
    fn matches(&self, o: Outcome) -> bool {
        o.status == *self
    }
}

impl Want for Error {
    fn matches(&self, o: Outcome) -> bool {
        o == Outcome::from_core(Err(*self))
    }
}

impl Want for Outcome {
    fn matches(&self, o: Outcome) -> bool {
        o == *self
    }
}

/// The response page: a guest message refused inside its answer writes it.
const RESPONSE_PAGE: core::ops::Range<usize> = 0x2000..0x3000;

/// Sends a guest message the firmware refuses inside its answer: the command succeeds, the
/// answer lands on the response page, and nothing else changes. Returns the response body.
#[track_caller]
fn refused_in_answer<T: zerocopy::FromBytes + IntoBytes>(
    w: &mut World,
    gctx: u64,
    ty: u8,
    body: &[u8],
) -> T {
    w.put_msg(ty, body);
    let mut before = w.state();
    ok(w.cmd(&guest_request(gctx)));
    let mut after = w.state();
    before.mem[RESPONSE_PAGE].fill(0);
    after.mem[RESPONSE_PAGE].fill(0);
    same(&before, &after, "a message refused in its answer");
    w.response()
}

/// Asserts two states are equal, naming the parts that differ (the whole state is too big to
/// print).
#[track_caller]
fn same(before: &State, after: &State, what: impl core::fmt::Display) {
    if let Err(parts) = diff(before, after) {
        panic!("{what} changed: {parts}");
    }
}

/// What differs between two states, by part.
fn diff(before: &State, after: &State) -> Result<(), String> {
    if before == after {
        return Ok(());
    }
    let mut parts = Vec::new();
    if before.tio_init_done != after.tio_init_done {
        parts.push("TIO_INIT done".to_string());
    }
    if before.core.devices != after.core.devices {
        parts.push("core devices".to_string());
    }
    if before.core.tdis != after.core.tdis {
        let tdis: Vec<_> = before
            .core
            .tdis
            .iter()
            .zip(&after.core.tdis)
            .filter(|(a, b)| a != b)
            .collect();
        parts.push(format!("core TDIs {tdis:?}"));
    }
    if before.core.guests != after.core.guests {
        parts.push("core guests".to_string());
    }
    if before.core.owners != after.core.owners {
        parts.push("core ownership".to_string());
    }
    let (rmp_before, rmp_after) = (before.core.table().entries(), after.core.table().entries());
    let mut entries = rmp_before.iter().zip(rmp_after).enumerate();
    if let Some((i, (a, b))) = entries.find(|(_, (a, b))| a != b) {
        parts.push(format!("RMP entry {i}: {a:?} -> {b:?}"));
    }
    if before.core.table() != after.core.table() && rmp_before == rmp_after {
        parts.push("RMP state beside the entries".to_string());
    }
    if before.fences != after.fences {
        parts.push(format!(
            "fences {:?} -> {:?}",
            &before.fences[..3],
            &after.fences[..3]
        ));
    }
    if (&before.guests, &before.devices, &before.tdis)
        != (&after.guests, &after.devices, &after.tdis)
    {
        parts.push(format!(
            "contexts {:?} {:?} {:?} -> {:?} {:?} {:?}",
            before.guests, before.devices, before.tdis, after.guests, after.devices, after.tdis
        ));
    }
    if before.tdisp != after.tdisp {
        parts.push(format!(
            "device TDISP {:?} -> {:?}",
            before.tdisp, after.tdisp
        ));
    }
    if let Some(i) = (0..before.mem.len()).find(|&i| before.mem[i] != after.mem[i]) {
        parts.push(format!("memory at {:#x}", MEM + i as u64));
    }
    Err(parts.join("; "))
}

/// Runs `op`, which must be refused as `want`, and checks it changed nothing: the core's
/// tables, the firmware's contexts, ASIDs and fence counters, every RMP entry, the device's
/// TDISP state and reports, and system memory.
#[track_caller]
fn refused(w: &mut World, want: impl Want, op: impl FnOnce(&mut World) -> Outcome) -> Outcome {
    let before = w.state();
    let o = op(w);
    assert!(want.matches(o), "wanted {want:?}, got {o:?}");
    assert_ne!(o.status, SevStatus::SUCCESS);
    same(&before, &w.state(), format_args!("refused {o:?}"));
    o
}

/// What a refused operation that went through device exchanges may change besides nothing:
/// the exchange bookkeeping of its TDI (sequence number, the unlock-first mark, the nonce,
/// the device's last word; nothing is left outstanding), that interface's TDISP state on the
/// device (a LOCK it answered), and the SPDM request and response buffers.
#[track_caller]
fn refused_relayed(
    w: &mut World,
    want: impl Want,
    tdi: TdiId,
    op: impl FnOnce(&mut World) -> Outcome,
) -> Outcome {
    let before = w.state();
    let o = op(w);
    assert!(want.matches(o), "wanted {want:?}, got {o:?}");
    assert_ne!(o.status, SevStatus::SUCCESS);
    let after = w.state();
    let record = w.sev.tsm().tdi(tdi).unwrap();
    assert_eq!(record.exchange, None, "an exchange left outstanding");
    same(
        &masked(before, tdi, record.iface.requester_id()),
        &masked(after, tdi, record.iface.requester_id()),
        format_args!("refused {o:?}"),
    );
    o
}

/// `state` without what [`refused_relayed`] allows to change.
fn masked(mut state: State, tdi: TdiId, iface: RequesterId) -> State {
    if let Some(Some(t)) = state.core.tdis.get_mut(usize::from(tdi.slot())) {
        (t.unlock_first, t.nonce, t.device_state) = (false, None, None);
    }
    for (i, s, _) in &mut state.tdisp {
        if *i == iface {
            *s = TdispState::ConfigUnlocked;
        }
    }
    let spdm = (SPDM_REQ - MEM) as usize..(SPDM_RESP - MEM) as usize + 4096;
    state.mem[spdm].fill(0);
    state
}

// ---- buffer builders (good buffers) -------------------------------------------------------

/// The device's SPDM buffers (Linux allocates them at DEV_CONNECT and names them in every
/// later command of the device): request and response; scratch and output unused here.
fn spdm_ctrl() -> abi::SpdmCtrl {
    abi::SpdmCtrl {
        req: sla(SPDM_REQ >> 12).into(),
        resp: sla(SPDM_RESP >> 12).into(),
        ..abi::SpdmCtrl::default()
    }
}

fn gctx_create(g: u64) -> abi::GctxCreate {
    abi::GctxCreate {
        gctx_paddr: g.into(),
    }
}
fn activate(g: u64, asid: u32) -> abi::Activate {
    abi::Activate {
        gctx_paddr: g.into(),
        asid: asid.into(),
    }
}
fn decommission(g: u64) -> abi::Decommission {
    abi::Decommission {
        gctx_paddr: g.into(),
    }
}
/// DEV_CREATE in our form with a BAR list ([`abi::DevCreateBars`]).
fn dev_create() -> abi::DevCreateBars {
    let mut c = abi::DevCreateBars::new_zeroed();
    c.length = len::<abi::DevCreateBars>();
    c.dev_ctx = dev_sla().into();
    c.device_id = rid(0).routing_id().into();
    c.bar_list = BAR_LIST.into();
    c
}
fn dev_reclaim() -> abi::DevReclaim {
    let mut c = abi::DevReclaim::new_zeroed();
    c.length = len::<abi::DevReclaim>();
    c.dev_ctx = dev_sla().into();
    c
}
fn dev_connect() -> abi::DevConnect {
    let mut c = abi::DevConnect::new_zeroed();
    c.length = len::<abi::DevConnect>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c.tc_mask = 1;
    c.ide_stream_id = [IDE_STREAM, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    c
}
fn dev_disconnect() -> abi::DevDisconnect {
    let mut c = abi::DevDisconnect::new_zeroed();
    c.length = len::<abi::DevDisconnect>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c
}
fn tdi_create() -> abi::TdiCreate {
    let mut c = abi::TdiCreate::new_zeroed();
    c.length = len::<abi::TdiCreate>();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.interface_id.function_id = u32::from(rid(0).routing_id()).into();
    c
}
fn tdi_reclaim() -> abi::TdiReclaim {
    let mut c = abi::TdiReclaim::new_zeroed();
    c.length = len::<abi::TdiReclaim>();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c
}
fn tdi_bind(g: u64) -> abi::TdiBind {
    let mut c = abi::TdiBind::new_zeroed();
    c.length = len::<abi::TdiBind>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.gctx_paddr = g.into();
    c.guest_device_id = GDEV.into();
    c.lock_flags = 1.into();
    c
}
fn tdi_unbind(g: u64) -> abi::TdiUnbind {
    let mut c = abi::TdiUnbind::new_zeroed();
    c.length = len::<abi::TdiUnbind>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.gctx_paddr = g.into();
    c
}
/// DEV_MEASUREMENTS as Linux sends it, its output SLA the page TDI_REPORT writes.
fn dev_measurements() -> abi::DevMeasurements {
    let mut c = abi::DevMeasurements::new_zeroed();
    c.length = len::<abi::DevMeasurements>();
    c.flags = abi::MEAS_FLAG_RAW_BITSTREAM.into();
    c.spdm_ctrl = spdm_ctrl();
    c.spdm_ctrl.output = sla((MEM + 0x3000) >> 12).into();
    c.dev_ctx = dev_sla().into();
    c.meas_nonce = [0x5A; 32];
    c
}
fn dev_certificates() -> abi::DevCertificates {
    let mut c = abi::DevCertificates::new_zeroed();
    c.length = len::<abi::DevCertificates>();
    c.spdm_ctrl = spdm_ctrl();
    c.spdm_ctrl.output = sla((MEM + 0x3000) >> 12).into();
    c.dev_ctx = dev_sla().into();
    c
}
fn tdi_report(g: u64) -> abi::TdiReport {
    let mut c = abi::TdiReport::new_zeroed();
    c.length = len::<abi::TdiReport>();
    c.spdm_ctrl.output = sla((MEM + 0x3000) >> 12).into();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.gctx_paddr = g.into();
    c
}
fn tdi_status() -> abi::TdiStatus {
    let mut c = abi::TdiStatus::new_zeroed();
    c.length = len::<abi::TdiStatus>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.status_paddr = MEM.into();
    c
}
fn tdi_info() -> abi::TdiInfo {
    let mut c = abi::TdiInfo::new_zeroed();
    c.length = len::<abi::TdiInfo>();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.status_paddr = MEM.into();
    c
}
fn guest_request(g: u64) -> abi::GuestRequest {
    let mut c = abi::GuestRequest::new_zeroed();
    c.length = len::<abi::GuestRequest>();
    c.spdm_ctrl = spdm_ctrl();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c.gctx_paddr = g.into();
    c.req_paddr = (MEM + 0x1000).into();
    c.res_paddr = (MEM + 0x2000).into();
    c
}
fn fence_clear(g: u64) -> abi::AsidFenceClear {
    let mut c = abi::AsidFenceClear::new_zeroed();
    c.length = len::<abi::AsidFenceClear>();
    c.dev_ctx = dev_sla().into();
    c.gctx_paddr = g.into();
    c
}
fn fence_status(asid: u32) -> abi::AsidFenceStatus {
    let mut c = abi::AsidFenceStatus::new_zeroed();
    c.length = len::<abi::AsidFenceStatus>();
    c.dev_ctx = dev_sla().into();
    c.asid = asid.into();
    c.status_pa = MEM.into();
    c
}
fn mmio_map(gpa: u64, hpa: u64, size: u8) -> abi::MmioMap {
    let mut c = abi::MmioMap::new_zeroed();
    c.length = len::<abi::MmioMap>();
    c.tdi_ctx = tdi_sla().into();
    c.gctx_paddr = GCTX.into();
    c.gpa = gpa.into();
    c.hpa = hpa.into();
    c.page_size = size;
    c
}
fn mmio_block(gpa: u64, size: u8) -> abi::MmioBlock {
    let mut c = abi::MmioBlock::new_zeroed();
    c.length = len::<abi::MmioBlock>();
    c.gctx_paddr = GCTX.into();
    c.gpa = gpa.into();
    c.page_size = size;
    c
}
fn mmio_unmap(gpa: u64, size: u8) -> abi::MmioUnmap {
    let mut c = abi::MmioUnmap::new_zeroed();
    c.length = len::<abi::MmioUnmap>();
    c.gctx_paddr = GCTX.into();
    c.gpa = gpa.into();
    c.page_size = size;
    c
}
fn mmio_zap(base: u64, pages: u64) -> abi::MmioZap {
    let mut c = abi::MmioZap::new_zeroed();
    c.length = len::<abi::MmioZap>();
    c.base = base.into();
    c.pages = pages.into();
    c
}
fn tdi_error() -> abi::TdiError {
    let mut c = abi::TdiError::new_zeroed();
    c.length = len::<abi::TdiError>();
    c.dev_ctx = dev_sla().into();
    c.tdi_ctx = tdi_sla().into();
    c
}

/// Every command: its ID, a good buffer, and byte offsets inside reserved fields or flags.
fn every_command() -> Vec<(abi::CommandId, Vec<u8>, &'static [usize])> {
    vec![
        (
            abi::SNP_DECOMMISSION,
            decommission(GCTX).as_bytes().to_vec(),
            &[],
        ),
        (
            abi::SNP_ACTIVATE,
            activate(GCTX, 9).as_bytes().to_vec(),
            &[],
        ),
        (
            abi::SNP_GCTX_CREATE,
            gctx_create(0x2_0000_5000).as_bytes().to_vec(),
            &[],
        ),
        (
            abi::TIO_STATUS,
            abi::TioStatus {
                length: len::<abi::TioStatus>(),
                reserved: [0; 4],
                status_paddr: TIO_STATUS_PAGE.into(),
            }
            .as_bytes()
            .to_vec(),
            &[4],
        ),
        (
            abi::TIO_INIT,
            abi::TioInit {
                length: len::<abi::TioInit>(),
                reserved: [0; 12],
            }
            .as_bytes()
            .to_vec(),
            &[4, 8, 15],
        ),
        (
            abi::TIO_DEV_CREATE,
            dev_create().as_bytes().to_vec(),
            &[4, 0x15, 0x17],
        ),
        (
            abi::TIO_DEV_RECLAIM,
            dev_reclaim().as_bytes().to_vec(),
            &[4],
        ),
        (
            abi::TIO_DEV_CONNECT,
            dev_connect().as_bytes().to_vec(),
            &[4, 0x28, 0x3A, 0x48],
        ),
        (
            abi::TIO_DEV_DISCONNECT,
            dev_disconnect().as_bytes().to_vec(),
            &[4],
        ),
        (
            abi::TIO_DEV_MEASUREMENTS,
            dev_measurements().as_bytes().to_vec(),
            &[4, 5],
        ),
        (
            abi::TIO_DEV_CERTIFICATES,
            dev_certificates().as_bytes().to_vec(),
            &[4, 7],
        ),
        (
            abi::TIO_TDI_CREATE,
            tdi_create().as_bytes().to_vec(),
            &[4, 0x1B, 0x1C, 0x24],
        ),
        (
            abi::TIO_TDI_RECLAIM,
            tdi_reclaim().as_bytes().to_vec(),
            &[4, 0x18],
        ),
        (
            abi::TIO_TDI_BIND,
            tdi_bind(GCTX).as_bytes().to_vec(),
            &[4, 0x42, 0x44, 0x46],
        ),
        (
            abi::TIO_TDI_UNBIND,
            tdi_unbind(GCTX).as_bytes().to_vec(),
            &[4],
        ),
        (
            abi::TIO_TDI_REPORT,
            tdi_report(GCTX).as_bytes().to_vec(),
            // Byte 7: FLAG_CONTINUE's bit, reserved in a command that never relays.
            &[4, 7],
        ),
        (abi::TIO_TDI_STATUS, tdi_status().as_bytes().to_vec(), &[4]),
        (
            abi::TIO_GUEST_REQUEST,
            guest_request(GCTX).as_bytes().to_vec(),
            &[4],
        ),
        (
            abi::TIO_ASID_FENCE_CLEAR,
            fence_clear(GCTX).as_bytes().to_vec(),
            &[4, 0x18],
        ),
        (
            abi::TIO_ASID_FENCE_STATUS,
            fence_status(5).as_bytes().to_vec(),
            &[4, 0x1C],
        ),
        (
            abi::TIO_TDI_INFO,
            tdi_info().as_bytes().to_vec(),
            &[4, 7, 0x20],
        ),
        (
            abi::TIO_MMIO_MAP,
            mmio_map(GPA + 0x40_0000, BAR + 0x21_0000, 0)
                .as_bytes()
                .to_vec(),
            &[4, 0x29],
        ),
        (
            abi::TIO_MMIO_BLOCK,
            mmio_block(GPA, 1).as_bytes().to_vec(),
            &[4, 0x19],
        ),
        (
            abi::TIO_MMIO_UNMAP,
            mmio_unmap(GPA, 1).as_bytes().to_vec(),
            &[4, 0x19],
        ),
        (
            abi::TIO_MMIO_ZAP,
            mmio_zap(0x9000_0000, 1).as_bytes().to_vec(),
            &[4],
        ),
        (abi::TIO_TDI_ERROR, tdi_error().as_bytes().to_vec(), &[4]),
    ]
}

// ---- golden layouts -----------------------------------------------------------------------

fn field(bytes: &[u8], off: usize, width: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..width].copy_from_slice(&bytes[off..off + width]);
    u64::from_le_bytes(b)
}

macro_rules! golden {
    ($v:expr, $len:expr, [$($t:expr),* $(,)?]) => {{
        let v = $v;
        let bytes = v.as_bytes();
        assert_eq!(bytes.len(), $len, "size of {}", stringify!($v));
        let mut covered = vec![false; bytes.len()];
        $(
            let (off, w, val): (usize, usize, u64) = $t;
            assert_eq!(field(bytes, off, w), val, "{} @{:#x}", stringify!($v), off);
            for c in &mut covered[off..off + w] { *c = true; }
        )*
        // Every byte not named above is reserved, and zero.
        for (i, b) in bytes.iter().enumerate() {
            if !covered[i] { assert_eq!(*b, 0, "{} reserved byte {:#x}", stringify!($v), i); }
        }
    }};
}

#[test]
fn golden_layouts_match_the_published_offsets() {
    let s1 = U64::new(0x1111_1111_1111_1000);
    let s2 = U64::new(0x2222_2222_2222_2000);
    let s3 = U64::new(0x3333_3333_3333_3000);
    let ctrl = abi::SpdmCtrl {
        req: 0xA1.into(),
        resp: 0xA2.into(),
        scratch: 0xA3.into(),
        output: 0xA4.into(),
    };
    let spdm = |o: usize| -> [(usize, usize, u64); 4] {
        [
            (o, 8, 0xA1),
            (o + 8, 8, 0xA2),
            (o + 16, 8, 0xA3),
            (o + 24, 8, 0xA4),
        ]
    };

    let mut c = abi::DevCreate::new_zeroed();
    (
        c.length,
        c.dev_ctx,
        c.device_id,
        c.root_port_id,
        c.segment_id,
    ) = (0x20.into(), s1, 0x0318.into(), 0x0010.into(), 7);
    golden!(
        c,
        0x20,
        [
            (0, 4, 0x20),
            (8, 8, s1.get()),
            (0x10, 2, 0x0318),
            (0x12, 2, 0x10),
            (0x14, 1, 7),
        ]
    );
    // Ours: the same with a BAR list after Linux's bytes.
    let mut c = abi::DevCreateBars::new_zeroed();
    (
        c.length,
        c.dev_ctx,
        c.device_id,
        c.root_port_id,
        c.segment_id,
    ) = (0x28.into(), s1, 0x0318.into(), 0x0010.into(), 7);
    c.bar_list = 0x4008.into();
    golden!(
        c,
        0x28,
        [
            (0, 4, 0x28),
            (8, 8, s1.get()),
            (0x10, 2, 0x0318),
            (0x12, 2, 0x10),
            (0x14, 1, 7),
            (0x20, 8, 0x4008)
        ]
    );
    // Ours: the BAR list it names.
    let mut l = abi::BarList::new_zeroed();
    l.count = 2.into();
    (l.bars[0].base, l.bars[0].pages) = (0x8000_0000.into(), 16.into());
    (l.bars[7].base, l.bars[7].pages) = (0x9000_0000.into(), 1.into());
    golden!(
        l,
        0x88,
        [
            (0, 4, 2),
            (8, 8, 0x8000_0000),
            (0x10, 8, 16),
            (0x78, 8, 0x9000_0000),
            (0x80, 8, 1)
        ]
    );
    // The SPDM buffers' headers (sev-linux-buffers.md section 2.2).
    let mut h = abi::SlaBufferHdr::new_zeroed();
    (h.capacity_sz, h.payload_sz, h.flags) = (0x1000.into(), 0x60.into(), 1.into());
    golden!(h, 0x40, [(0, 4, 0x1000), (4, 4, 0x60), (8, 4, 1)]);
    let mut d = abi::DobjHdr::new_zeroed();
    (
        d.id,
        d.length,
        d.version_minor,
        d.version_major,
        d.data_type,
    ) = (2.into(), 0x4C.into(), 0, 1, 2);
    golden!(
        d,
        0x10,
        [(0, 4, 2), (4, 4, 0x4C), (8, 1, 0), (9, 1, 1), (0xA, 1, 2)]
    );

    let mut c = abi::DevReclaim::new_zeroed();
    (c.length, c.dev_ctx) = (0x10.into(), s1);
    golden!(c, 0x10, [(0, 4, 0x10), (8, 8, s1.get())]);

    let mut c = abi::DevConnect::new_zeroed();
    (c.length, c.spdm_ctrl, c.dev_ctx, c.tc_mask, c.cert_slot) = (0x50.into(), ctrl, s1, 0x81, 3);
    c.ide_stream_id = [1, 2, 3, 4, 5, 6, 7, 8];
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x50,
        [
            (0, 4, 0x50),
            a,
            b,
            d,
            e,
            (0x30, 8, s1.get()),
            (0x38, 1, 0x81),
            (0x39, 1, 3),
            (0x40, 8, 0x0807_0605_0403_0201)
        ]
    );

    let mut c = abi::DevDisconnect::new_zeroed();
    (c.length, c.flags, c.spdm_ctrl, c.dev_ctx) = (0x30.into(), 1.into(), ctrl, s1);
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x30,
        [(0, 4, 0x30), (4, 4, 1), a, b, d, e, (0x28, 8, s1.get())]
    );

    let mut c = abi::TdiCreate::new_zeroed();
    (c.length, c.dev_ctx, c.tdi_ctx) = (0x30.into(), s1, s2);
    c.interface_id.function_id = 0x0100_0318.into();
    golden!(
        c,
        0x30,
        [
            (0, 4, 0x30),
            (8, 8, s1.get()),
            (0x10, 8, s2.get()),
            (0x18, 4, 0x0100_0318)
        ]
    );

    let mut c = abi::TdiReclaim::new_zeroed();
    (c.length, c.dev_ctx, c.tdi_ctx) = (0x20.into(), s1, s2);
    golden!(
        c,
        0x20,
        [(0, 4, 0x20), (8, 8, s1.get()), (0x10, 8, s2.get())]
    );

    let mut c = abi::TdiBind::new_zeroed();
    (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx, c.gctx_paddr) = (0x50.into(), ctrl, s1, s2, s3);
    (c.guest_device_id, c.lock_flags, c.run_flags) = (0xBEEF.into(), 0x1D.into(), 1.into());
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x50,
        [
            (0, 4, 0x50),
            a,
            b,
            d,
            e,
            (0x28, 8, s1.get()),
            (0x30, 8, s2.get()),
            (0x38, 8, s3.get()),
            (0x40, 2, 0xBEEF),
            (0x42, 2, 0x1D),
            (0x44, 2, 1)
        ]
    );

    let mut c = abi::TdiUnbind::new_zeroed();
    (
        c.length,
        c.flags,
        c.spdm_ctrl,
        c.dev_ctx,
        c.tdi_ctx,
        c.gctx_paddr,
    ) = (0x40.into(), 1.into(), ctrl, s1, s2, s3);
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x40,
        [
            (0, 4, 0x40),
            (4, 4, 1),
            a,
            b,
            d,
            e,
            (0x28, 8, s1.get()),
            (0x30, 8, s2.get()),
            (0x38, 8, s3.get())
        ]
    );

    let mut c = abi::TdiReport::new_zeroed();
    (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx, c.gctx_paddr) = (0x40.into(), ctrl, s1, s2, s3);
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x40,
        [
            (0, 4, 0x40),
            a,
            b,
            d,
            e,
            (0x28, 8, s1.get()),
            (0x30, 8, s2.get()),
            (0x38, 8, s3.get())
        ]
    );

    let mut c = abi::TdiStatus::new_zeroed();
    (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx, c.status_paddr) = (0x40.into(), ctrl, s1, s2, s3);
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x40,
        [
            (0, 4, 0x40),
            a,
            b,
            d,
            e,
            (0x28, 8, s1.get()),
            (0x30, 8, s2.get()),
            (0x38, 8, s3.get())
        ]
    );

    let mut c = abi::TdiStatusData::new_zeroed();
    (c.length, c.tdisp_state) = (0x10.into(), 2);
    golden!(c, 0x10, [(0, 4, 0x10), (4, 1, 2)]);

    let mut c = abi::GuestRequest::new_zeroed();
    (c.length, c.spdm_ctrl, c.dev_ctx, c.tdi_ctx, c.gctx_paddr) = (0x50.into(), ctrl, s1, s2, s3);
    (c.req_paddr, c.res_paddr) = (0x4000.into(), 0x5000.into());
    let [a, b, d, e] = spdm(8);
    golden!(
        c,
        0x50,
        [
            (0, 4, 0x50),
            a,
            b,
            d,
            e,
            (0x28, 8, s1.get()),
            (0x30, 8, s2.get()),
            (0x38, 8, s3.get()),
            (0x40, 8, 0x4000),
            (0x48, 8, 0x5000)
        ]
    );

    let mut c = abi::AsidFenceClear::new_zeroed();
    (c.length, c.dev_ctx, c.gctx_paddr) = (0x20.into(), s1, s3);
    golden!(
        c,
        0x20,
        [(0, 4, 0x20), (8, 8, s1.get()), (0x10, 8, s3.get())]
    );

    let mut c = abi::AsidFenceStatus::new_zeroed();
    (c.length, c.dev_ctx, c.asid, c.status_pa) = (0x20.into(), s1, 0x77.into(), 0x6000.into());
    golden!(
        c,
        0x20,
        [
            (0, 4, 0x20),
            (8, 8, s1.get()),
            (0x10, 4, 0x77),
            (0x14, 8, 0x6000)
        ]
    );

    let mut c = abi::TdiInfo::new_zeroed();
    (c.length, c.dev_ctx, c.tdi_ctx, c.status_paddr) = (0x30.into(), s1, s2, s3);
    golden!(
        c,
        0x30,
        [
            (0, 4, 0x30),
            (8, 8, s1.get()),
            (0x10, 8, s2.get()),
            (0x18, 8, s3.get())
        ]
    );

    let mut c = abi::TdiInfoData::new_zeroed();
    c.length = 0xC0.into();
    c.interface_id.function_id = 0x0100_0318.into();
    (c.p1_flags, c.p2_flags, c.spdm_algos) = ((2 << 2).into(), 0x1D.into(), 0x0102.into());
    c.certs_digest[0] = 0xC1;
    c.meas_digest[0] = 0xC2;
    c.interface_report_digest[0] = 0xC3;
    (c.intf_report_counter, c.asid) = (9.into(), 5.into());
    golden!(
        c,
        0xC0,
        [
            (0, 4, 0xC0),
            (4, 4, 0x0100_0318),
            (0x10, 4, 8),
            (0x14, 4, 0x1D),
            (0x18, 8, 0x0102),
            (0x20, 1, 0xC1),
            (0x50, 1, 0xC2),
            (0x80, 1, 0xC3),
            (0xB0, 8, 9),
            (0xB8, 4, 5)
        ]
    );

    golden!(gctx_create(0x7000), 8, [(0, 8, 0x7000)]);
    golden!(decommission(0x7000), 8, [(0, 8, 0x7000)]);
    golden!(activate(0x7000, 12), 12, [(0, 8, 0x7000), (8, 4, 12)]);

    // Ours.
    let m = mmio_map(0x1000, 0x2000, 2);
    golden!(
        m,
        0x30,
        [
            (0, 4, 0x30),
            (8, 8, tdi_sla()),
            (0x10, 8, GCTX),
            (0x18, 8, 0x1000),
            (0x20, 8, 0x2000),
            (0x28, 1, 2)
        ]
    );
    golden!(
        mmio_block(0x1000, 1),
        0x20,
        [(0, 4, 0x20), (8, 8, GCTX), (0x10, 8, 0x1000), (0x18, 1, 1)]
    );
    golden!(
        mmio_unmap(0x1000, 1),
        0x20,
        [(0, 4, 0x20), (8, 8, GCTX), (0x10, 8, 0x1000), (0x18, 1, 1)]
    );
    golden!(
        mmio_zap(0x9000, 3),
        0x18,
        [(0, 4, 0x18), (8, 8, 0x9000), (0x10, 8, 3)]
    );
    golden!(
        tdi_error(),
        0x18,
        [(0, 4, 0x18), (8, 8, dev_sla()), (0x10, 8, tdi_sla())]
    );

    // Guest messages.
    let h = MsgHeader::new(msg::MSG_MMIO_VALIDATE_REQ, 48);
    golden!(
        h,
        0x60,
        [
            (0x31, 1, 1),
            (0x32, 2, 0x60),
            (0x34, 1, 21),
            (0x35, 1, 1),
            (0x36, 2, 48)
        ]
    );
    let mut r = msg::MmioValidateReq::new_zeroed();
    (
        r.guest_device_id,
        r.subrange_base,
        r.subrange_page_count,
        r.range_offset,
    ) = (GDEV.into(), 0x9000.into(), 3.into(), 4.into());
    (r.flags, r.range_id) = (3.into(), 1.into());
    golden!(
        r,
        48,
        [
            (0, 2, 0x100),
            (0x10, 8, 0x9000),
            (0x18, 4, 3),
            (0x1C, 4, 4),
            (0x20, 2, 3),
            (0x22, 2, 1)
        ]
    );
    let mut r = msg::MmioValidateRsp::new_zeroed();
    (
        r.guest_device_id,
        r.status,
        r.subrange_base,
        r.subrange_page_count,
    ) = (GDEV.into(), 6.into(), 0x9000.into(), 3.into());
    (r.range_offset, r.flags, r.range_id) = (4.into(), 1.into(), 1.into());
    golden!(
        r,
        48,
        [
            (0, 2, 0x100),
            (2, 2, 6),
            (0x10, 8, 0x9000),
            (0x18, 4, 3),
            (0x1C, 4, 4),
            (0x20, 2, 1),
            (0x22, 2, 1)
        ]
    );
    let mut r = msg::TdiInfoRsp::new_zeroed();
    (
        r.guest_device_id,
        r.tdi_status,
        r.lock_flags,
        r.tdi_report_count,
    ) = (GDEV.into(), 2.into(), 1.into(), 7.into());
    golden!(
        r,
        192,
        [(0, 2, 0x100), (2, 2, 2), (0x14, 4, 1), (0xB0, 8, 7)]
    );

    // SLA bits (sev-dev-tio.h: page_type 0, page_size 1, pfn 51:12).
    assert_eq!(sla(0x12345), 0x1234_5000);
    assert_eq!(
        SlaAddr::data_page(hpa(0x1234_5678)).into_bits(),
        0x1234_5000
    );
    assert_eq!(SlaAddr::new().with_page_type(true).into_bits(), 1);
    assert_eq!(SlaAddr::new().with_page_size(true).into_bits(), 2);
    let _ = U16::new(0);
}

#[test]
fn rmp_entry_layout() {
    let e = RmpEntry::new()
        .with_assigned(true)
        .with_page_size(true)
        .with_immutable(true)
        .with_validated(true)
        .with_mmio(true)
        .with_gpa_pfn(Pfn::try_new(0xABCDE).unwrap())
        .with_asid(0x42);
    assert_eq!(core::mem::size_of::<RmpEntry>(), 16);
    assert_eq!(e.into_bits() & 0x1F, 0x1F);
    assert_eq!((e.into_bits() >> 12) & 0xFF_FFFF_FFFF, 0xABCDE);
    assert_eq!((e.into_bits() >> 64) as u32, 0x42);
}

// ---- hostile buffers ----------------------------------------------------------------------

/// A hostile buffer: refused as INVALID_PARAM. Outside Miri with `refused`'s comparison of the
/// whole state before and after; under Miri, where those two snapshots for each of the
/// hundreds of variants below would take twenty minutes, the variant still runs (its parsing
/// is what Miri checks) and its status is checked, and the caller compares the state once per
/// command.
#[track_caller]
fn hostile(w: &mut World, op: impl FnOnce(&mut World) -> Outcome) {
    if cfg!(miri) {
        let o = op(w);
        assert_eq!(o.status, SevStatus::INVALID_PARAM, "{o:?}");
    } else {
        refused(w, SevStatus::INVALID_PARAM, op);
    }
}

/// Every hostile variant of every command is INVALID_PARAM and changes nothing, in a world
/// where the good buffer would do something.
#[test]
fn hostile_buffers_are_invalid_param_and_change_nothing() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let before = w.state();
    for (id, good, reserved) in every_command() {
        let n = good.len();
        // Short: every length below the buffer's.
        for short in 0..n {
            hostile(&mut w, |w| w.raw(id, &good[..short]));
        }
        // Misaligned: the same bytes one byte off.
        hostile(&mut w, |w| {
            let mut b = Buf([0; 256]);
            b.0[1..=n].copy_from_slice(&good);
            w.sev.command(&mut w.mem, id, &mut b.0[1..=n])
        });
        // Wrong length field.
        if n >= 0x10 && id & 0xF0 != 0x90 {
            for bad in [0u32, n as u32 - 1, n as u32 + 1, u32::MAX] {
                let mut v = good.clone();
                v[..4].copy_from_slice(&bad.to_le_bytes());
                hostile(&mut w, |w| w.raw(id, &v));
            }
        }
        // Reserved fields and unknown flag bits.
        for &off in reserved {
            let mut v = good.clone();
            v[off] = 0xFF;
            hostile(&mut w, |w| w.raw(id, &v));
        }
        same(&before, &w.state(), format_args!("command {id:#x}"));
    }
    // Unknown commands, with a buffer of any size.
    for id in [
        0,
        0x01,
        0xD0,
        0xD1,
        0xD9,
        0xE4,
        0xE5,
        0xEF,
        0xF5,
        0x1DC,
        u32::MAX,
    ] {
        for len in [0, 8, 0x50, 128] {
            let mut v = vec![0u8; len];
            if len >= 4 {
                v[..4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            hostile(&mut w, |w| w.raw(id, &v));
        }
    }
    same(&before, &w.state(), "refusals");
}

#[test]
fn malformed_handles_are_refused_and_change_nothing() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let before = w.state();
    // SLA with reserved bits, a scatter SLA, a null SLA: malformed.
    for bad in [dev_sla() | 1 << 4, dev_sla() | 1, 0, dev_sla() | 1 << 63] {
        let mut c = dev_reclaim();
        c.dev_ctx = bad.into();
        refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&c));
    }
    // Well-formed but unknown contexts: AMD's specific status, InvalidHandle behind it.
    let mut c = tdi_unbind(GCTX);
    c.dev_ctx = sla(0x99).into();
    refused(
        &mut w,
        Outcome {
            status: SevStatus::INVALID_DEV_CTX,
            detail: Error::InvalidHandle.code(),
        },
        |w| w.cmd(&c),
    );
    let mut c = tdi_unbind(GCTX);
    c.tdi_ctx = sla(0x99).into();
    refused(&mut w, SevStatus::INVALID_TDI_CTX, |w| w.cmd(&c));
    let mut c = tdi_bind(0x2_0000_9000);
    c.tdi_ctx = tdi_sla().into();
    refused(&mut w, SevStatus::INVALID_GUEST, |w| w.cmd(&c));
    // Unaligned guest context.
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.cmd(&tdi_unbind(GCTX + 8))
    });
    // A TDI named with another device's context.
    let mut dc = dev_create();
    dc.dev_ctx = sla(0x30_0009).into();
    // Another physical device (device number 1): function 7 of the same one would be a
    // duplicate of its requester IDs. No BARs.
    dc.device_id = RequesterId::try_new(0, 3, 1, 0)
        .unwrap()
        .routing_id()
        .into();
    dc.bar_list = 0.into();
    ok(w.cmd(&dc));
    let before2 = w.state();
    let mut c = tdi_unbind(GCTX);
    c.dev_ctx = sla(0x30_0009).into();
    refused(&mut w, SevStatus::INVALID_TDI, |w| w.cmd(&c));
    // The wrong guest for a bound TDI.
    refused(&mut w, SevStatus::INVALID_GUEST, |w| {
        w.cmd(&tdi_unbind(GCTX2))
    });
    same(&before2, &w.state(), "refusals");
    assert_ne!(before, before2);
}

// ---- each command's good buffer and its refusals --------------------------------------------

#[test]
fn guest_contexts() {
    let mut w = World::new();
    ok(w.cmd(&gctx_create(GCTX)));
    refused(&mut w, SevStatus::IN_USE, |w| w.cmd(&gctx_create(GCTX)));
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.cmd(&gctx_create(GCTX + 1))
    });
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.cmd(&gctx_create(0))
    });
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.cmd(&gctx_create(1 << 52))
    });
    refused(&mut w, SevStatus::INVALID_ASID, |w| {
        w.cmd(&activate(GCTX, 0))
    });
    refused(&mut w, SevStatus::INVALID_ASID, |w| {
        w.cmd(&activate(GCTX, crate::fw::MAX_ASID + 1))
    });
    refused(&mut w, SevStatus::INVALID_GUEST, |w| {
        w.cmd(&activate(GCTX2, 5))
    });
    ok(w.cmd(&activate(GCTX, 5)));
    refused(&mut w, SevStatus::INVALID_GUEST_STATE, |w| {
        w.cmd(&activate(GCTX, 6))
    });
    ok(w.cmd(&gctx_create(GCTX2)));
    refused(&mut w, SevStatus::INVALID_ASID, |w| {
        w.cmd(&activate(GCTX2, 5))
    });
    let g = w.guest(GCTX);
    assert_eq!(w.sev.tsm().with_table(|r| r.asid(g)).unwrap(), 5);
    ok(w.cmd(&decommission(GCTX)));
    assert!(w.sev.guest_ctx(GCTX).is_none());
    assert_eq!(w.sev.tsm().guest(g), Err(Error::InvalidHandle));
    refused(&mut w, SevStatus::INVALID_GUEST, |w| {
        w.cmd(&decommission(GCTX))
    });
    // Every guest slot used: a status, not a panic.
    let mut w = World::new();
    for i in 0..tsm_core::capacity::MAX_GUESTS as u64 {
        ok(w.cmd(&gctx_create(GCTX + i * 0x1000)));
    }
    let o = refused(&mut w, Error::GuestTableFull, |w| {
        w.cmd(&gctx_create(0x3_0000_0000))
    });
    assert_eq!(o.status, SevStatus::RESOURCE_LIMIT);
}

#[test]
fn devices_connect_and_reclaim() {
    let mut w = World::new();
    ok(w.cmd(&gctx_create(GCTX)));
    ok(w.cmd(&dev_create()));
    let d = w.sev.dev_ctx(dev_sla()).unwrap();
    assert_eq!(w.sev.tsm().device(d.device).unwrap().bars.len(), 1);
    refused(&mut w, SevStatus::IN_USE, |w| w.cmd(&dev_create()));
    let mut again = dev_create();
    again.dev_ctx = sla(0x30_0005).into();
    refused(&mut w, Error::DuplicateDevice, |w| w.cmd(&again));
    // TDI_CREATE needs a connected device.
    refused(&mut w, SevStatus::INVALID_DEV_STATE, |w| {
        w.cmd(&tdi_create())
    });
    refused(&mut w, SevStatus::INVALID_DEV_STATE, |w| {
        w.cmd(&dev_disconnect())
    });
    let mut bad = dev_connect();
    bad.tc_mask = 2;
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&bad));
    let mut bad = dev_connect();
    bad.cert_slot = 8;
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&bad));
    let mut bad = dev_connect();
    bad.spdm_ctrl.req = (dev_sla() | 1 << 5).into();
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&bad));
    ok(w.cmd(&dev_connect()));
    refused(&mut w, SevStatus::INVALID_DEV_STATE, |w| {
        w.cmd(&dev_connect())
    });
    ok(w.cmd(&tdi_create()));
    // Reclaim with a TDI: in use; after the TDI is reclaimed: gone.
    let o = refused(&mut w, Error::DeviceInUse, |w| w.cmd(&dev_reclaim()));
    assert_eq!(o.status, SevStatus::IN_USE);
    ok(w.cmd(&dev_disconnect()));
    ok(w.cmd(&tdi_reclaim()));
    ok(w.cmd(&dev_reclaim()));
    assert!(w.sev.dev_ctx(dev_sla()).is_none());
    assert_eq!(
        w.sev.tsm().device(d.device).map(drop),
        Err(Error::InvalidHandle)
    );
}

#[test]
fn tdi_bind_report_status_info_unbind() {
    let mut w = World::new();
    w.setup(Stage::Created);
    let t = w.tdi();
    // Create: duplicate interface, reused context.
    let mut dup = tdi_create();
    dup.tdi_ctx = sla(0x30_0007).into();
    refused(&mut w, Error::DuplicateTdi, |w| w.cmd(&dup));
    // The interface ID rule (`InterfaceId`): a function of the device, in its segment.
    for (iid, why) in [
        (0x0400, "another bus"),
        (0x0308, "another device number"),
        (
            abi::IID_RSEG_VALID | 1 << 16 | 0x0300,
            "the device's function in segment 1",
        ),
    ] {
        let mut c = tdi_create();
        c.tdi_ctx = sla(0x30_0007).into();
        c.interface_id.function_id = iid.into();
        let o = refused(&mut w, Error::ForeignInterface, |w| w.cmd(&c));
        assert_eq!(o.status, SevStatus::INVALID_PARAM, "{why}");
    }
    refused(&mut w, SevStatus::IN_USE, |w| w.cmd(&tdi_create()));
    // Bind: run flags are the guest's business; an unactivated guest cannot own a TDI.
    let mut b = tdi_bind(GCTX);
    b.run_flags = abi::BIND_RUN_FORCE.into();
    refused(&mut w, Error::TdiNotBound, |w| w.cmd(&b));
    ok(w.cmd(&gctx_create(0x2_0000_7000)));
    refused(&mut w, SevStatus::INVALID_GUEST_STATE, |w| {
        w.cmd(&tdi_bind(0x2_0000_7000))
    });
    // A report naming no range (what a device model never given one sends) would bind a TDI
    // owning nothing: refused once the report is in, the LOCK undone, nothing bound.
    w.device.report_ranges(rid(0), &[]);
    let o = refused_relayed(&mut w, Error::EmptyReport, t, |w| w.cmd(&tdi_bind(GCTX)));
    assert_eq!(o.status, SevStatus::INVALID_PARAM);
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigUnlocked);
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    // The report comes from the device: a device with a range outside its BARs is refused
    // once the report is in, nothing is bound, and the LOCK is undone (STOP_INTERFACE, one
    // more round).
    w.device
        .report_ranges(rid(0), &[MmioRange::from_raw(BAR, BAR_PAGES + 1).unwrap()]);
    refused_relayed(&mut w, Error::RangeOutsideDevice, t, |w| {
        w.cmd(&tdi_bind(GCTX))
    });
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigUnlocked);
    w.device
        .report_ranges(rid(0), &[MmioRange::from_raw(BAR, 512).unwrap()]);
    ok(w.cmd(&tdi_bind(GCTX)));
    assert_eq!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Locked {
            owner: w.guest(GCTX)
        }
    );
    let o = refused(&mut w, Error::TdiAlreadyBound, |w| w.cmd(&tdi_bind(GCTX2)));
    assert_eq!(o.status, SevStatus::INVALID_TDI_STATE);

    // TDI_STATUS asks the device: CONFIG_LOCKED.
    ok(w.cmd(&tdi_status()));
    let mut s = abi::TdiStatusData::new_zeroed();
    w.mem.read(MEM, s.as_mut_bytes()).unwrap();
    assert_eq!((s.length.get(), s.tdisp_state), (0x10, 1));
    let mut bad = tdi_status();
    bad.status_paddr = (MEM + 4).into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&bad));
    bad.status_paddr = 0x5_0000_0000.into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&bad));

    // TDI_INFO: bound and locked, the owner's ASID.
    ok(w.cmd(&tdi_info()));
    let mut i = abi::TdiInfoData::new_zeroed();
    w.mem.read(MEM, i.as_mut_bytes()).unwrap();
    assert_eq!(i.p1_flags.get() >> 2 & 3, 1);
    assert_eq!((i.asid.get(), i.p2_flags.get()), (5, 1));

    // TDI_REPORT: the owner gets the device's ranges; another guest does not.
    ok(w.cmd(&tdi_report(GCTX)));
    let mut h = abi::ReportHeader::new_zeroed();
    w.mem.read(MEM + 0x3000, h.as_mut_bytes()).unwrap();
    assert_eq!(h.mmio_range_count.get(), 1);
    let mut r = abi::ReportRange::new_zeroed();
    w.mem.read(MEM + 0x3010, r.as_mut_bytes()).unwrap();
    assert_eq!(
        (r.first_page.get(), r.number_of_pages.get()),
        (BAR >> 12, 512)
    );
    refused(&mut w, Error::NotOwner, |w| w.cmd(&tdi_report(GCTX2)));
    let mut no_out = tdi_report(GCTX);
    no_out.spdm_ctrl.output = 0.into();
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&no_out));
    let mut far = tdi_report(GCTX);
    far.spdm_ctrl.output = sla(0x9_0000).into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&far));
    ok(w.cmd(&tdi_info()));
    w.mem.read(MEM, i.as_mut_bytes()).unwrap();
    assert_eq!(i.intf_report_counter.get(), 1);

    // Unbind: the wrong guest is refused; the owner's unbind completes.
    refused(&mut w, SevStatus::INVALID_GUEST, |w| {
        w.cmd(&tdi_unbind(GCTX2))
    });
    ok(w.cmd(&tdi_unbind(GCTX)));
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    // Unbinding an unbound TDI is done, whatever guest context comes with it.
    ok(w.cmd(&tdi_unbind(0)));
    refused(&mut w, Error::TdiNotBound, |w| w.cmd(&tdi_report(GCTX)));
    // Reclaim of the unbound TDI.
    ok(w.cmd(&tdi_reclaim()));
    refused(&mut w, SevStatus::INVALID_TDI_CTX, |w| {
        w.cmd(&tdi_reclaim())
    });
}

#[test]
fn tdi_reclaim_of_a_bound_tdi_is_in_use() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let o = refused(&mut w, Error::TdiBound, |w| w.cmd(&tdi_reclaim()));
    assert_eq!(o.status, SevStatus::IN_USE);
    refused(&mut w, Error::TdiBound, |w| w.cmd(&dev_disconnect()));
    refused(&mut w, Error::GuestInUse, |w| w.cmd(&decommission(GCTX)));
}

#[test]
#[cfg_attr(miri, ignore)] // 100 leaves unbound: 40 s under Miri, safe code only
fn unbind_is_bounded_and_resumable() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    // 100 4K leaves: more than one call's budget.
    for i in 0..100u64 {
        ok(w.cmd(&mmio_map(
            GPA + 0x40_0000 + i * 0x1000,
            BAR + 0x10_0000 + i * 0x1000,
            0,
        )));
    }
    let first = w.cmd(&tdi_unbind(GCTX));
    assert_eq!(first, Outcome::plain(SevStatus::RESUME_REQUIRED));
    assert_eq!(first.to_core(), Ok(tsm_core::Completion::Resumable));
    let mut calls = 1;
    while w.cmd(&tdi_unbind(GCTX)).status == SevStatus::RESUME_REQUIRED {
        calls += 1;
    }
    assert!(calls >= 2);
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entries().iter().all(|e| !e.assigned()))
            .unwrap()
    );
}

#[test]
fn fences() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let g = w.guest(GCTX);
    w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
    ok(w.cmd(&fence_clear(GCTX)));
    ok(w.cmd(&fence_status(5)));
    let mut word = [0u8; 8];
    w.mem.read(MEM, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), abi::FENCE_MMIO_FENCED);
    refused(&mut w, SevStatus::INVALID_ASID, |w| {
        w.cmd(&fence_status(77))
    });
    refused(&mut w, SevStatus::INVALID_GUEST, |w| {
        w.cmd(&fence_clear(0x2_0000_9000))
    });
    let mut bad = fence_status(5);
    bad.status_pa = (MEM + 3).into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&bad));
    // An unbind with the fence held stops before unassigning: flush pending.
    let mut outcome = w.cmd(&tdi_unbind(GCTX));
    while outcome.status == SevStatus::RESUME_REQUIRED {
        outcome = w.cmd(&tdi_unbind(GCTX));
    }
    assert_eq!(outcome, Outcome::from_core(Err(Error::TlbFlushPending)));
    assert_eq!(outcome.status, SevStatus::INVALID_PAGE_STATE);
    // Asking again while the flush is pending changes nothing.
    refused(&mut w, Error::TlbFlushPending, |w| w.cmd(&tdi_unbind(GCTX)));
    let leaf = w
        .sev
        .tsm()
        .leaf(g, tsm_core::Gpa::try_new(GPA).unwrap())
        .unwrap()
        .unwrap();
    assert!(matches!(leaf.state, tsm_core::LeafState::Blocked { .. }));
    w.sev.tsm().with_table(|r| r.hold_fences(false)).unwrap();
    ok(w.cmd(&fence_status(5)));
    w.mem.read(MEM, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0);
    ok(w.cmd(&tdi_unbind(GCTX)));
}

#[test]
fn host_mmio_commands() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let g = w.guest(GCTX);
    // Map: size codes, alignment, ownership.
    refused(&mut w, Error::InvalidPageSize, |w| {
        w.cmd(&mmio_map(GPA, BAR, 3))
    });
    refused(&mut w, Error::Misaligned, |w| {
        w.cmd(&mmio_map(GPA + 0x1000, BAR, 1))
    });
    refused(&mut w, Error::HpaNotOwned, |w| {
        w.cmd(&mmio_map(GPA, BAR + 0x30_0000, 0))
    });
    refused(&mut w, Error::InvalidAddress, |w| {
        w.cmd(&mmio_map(1 << 52, BAR, 0))
    });
    ok(w.cmd(&mmio_map(GPA, BAR, 1)));
    refused(&mut w, Error::GpaAlreadyMapped, |w| {
        w.cmd(&mmio_map(GPA, BAR + 0x1000, 0))
    });
    // The RMP: every page of the 2M leaf assigned to ASID 5 at its guest page, immutable.
    let rmp_ok = w
        .sev
        .tsm()
        .with_table(|r| {
            (0..512u64).all(|i| {
                let e = r.entry(BAR + i * 0x1000).unwrap();
                e.assigned()
                    && e.immutable()
                    && e.mmio()
                    && e.asid() == 5
                    && e.gpa_pfn().get() == (GPA >> 12) + i
                    && e.page_size()
                    && !e.validated()
            }) && !r.entry(BAR + 0x20_0000).unwrap().assigned()
        })
        .unwrap();
    assert!(rmp_ok);
    // The host cannot block, unmap or zap it while bound.
    refused(&mut w, Error::TdiBound, |w| w.cmd(&mmio_block(GPA, 1)));
    refused(&mut w, Error::TdiBound, |w| w.cmd(&mmio_unmap(GPA, 1)));
    refused(&mut w, Error::NotMapped, |w| {
        w.cmd(&mmio_unmap(GPA + 0x100_0000, 0))
    });
    refused(&mut w, Error::TdiBound, |w| w.cmd(&mmio_zap(BAR, 1)));
    refused(&mut w, Error::Misaligned, |w| w.cmd(&mmio_zap(BAR + 1, 1)));
    refused(&mut w, Error::InvalidRange, |w| w.cmd(&mmio_zap(BAR, 0)));
    ok(w.cmd(&mmio_zap(0x9000_0000, 16)));
    // Device error: the TDI goes to ERROR and its leaves are blocked.
    ok(w.cmd(&tdi_error()));
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Error { .. }
    ));
    let leaf = w
        .sev
        .tsm()
        .leaf(g, tsm_core::Gpa::try_new(GPA).unwrap())
        .unwrap()
        .unwrap();
    assert!(matches!(leaf.state, tsm_core::LeafState::Blocked { .. }));
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entry(BAR).unwrap().blocked())
            .unwrap()
    );
    let mut t = tdi_error();
    t.tdi_ctx = sla(0x99).into();
    refused(&mut w, SevStatus::INVALID_TDI_CTX, |w| w.cmd(&t));
}

// ---- the RMP for private MMIO: assign, validate, refuse the host, reclaim -----------------------

fn validate_req(
    range_id: u16,
    offset: u32,
    pages: u32,
    gpa: u64,
    flags: u16,
) -> msg::MmioValidateReq {
    let mut r = msg::MmioValidateReq::new_zeroed();
    r.guest_device_id = GDEV.into();
    r.subrange_base = gpa.into();
    r.subrange_page_count = pages.into();
    r.range_offset = offset.into();
    r.flags = flags.into();
    r.range_id = range_id.into();
    r
}

#[test]
fn guest_validates_its_mmio() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let v = msg::VALIDATE_FLAG_VALIDATED;
    let validated = |w: &World, hpa: u64| {
        w.sev
            .tsm()
            .with_table(|r| r.entry(hpa).unwrap().validated())
            .unwrap()
    };
    // Refusals first: each leaves every bit as it was.
    for (req, gctx, status) in [
        (validate_req(0, 0, 512, GPA, v), GCTX2, Mv::InvalidTdi),
        (validate_req(5, 0, 1, GPA, v), GCTX, Mv::NotReported),
        (validate_req(0, 500, 13, GPA, v), GCTX, Mv::OutOfRange),
        (validate_req(0, 0, 0, GPA, v), GCTX, Mv::OutOfRange),
        (
            validate_req(0, 0, 512, GPA + 0x1000, v),
            GCTX,
            Mv::NotMapped,
        ),
        (
            validate_req(1, 0, 2, GPA + 0x20_0000, v),
            GCTX,
            Mv::NotAssigned,
        ),
    ] {
        let rsp: msg::MmioValidateRsp =
            refused_in_answer(&mut w, gctx, msg::MSG_MMIO_VALIDATE_REQ, req.as_bytes());
        assert_eq!(rsp.status.get(), status as u16, "{req:?}");
        assert_eq!(rsp.flags.get(), 0);
    }
    let mut wrong_id = validate_req(0, 0, 1, GPA, v);
    wrong_id.guest_device_id = 7.into();
    let rsp: msg::MmioValidateRsp = refused_in_answer(
        &mut w,
        GCTX,
        msg::MSG_MMIO_VALIDATE_REQ,
        wrong_id.as_bytes(),
    );
    assert_eq!(rsp.status.get(), Mv::InvalidTdi as u16);
    // Malformed messages: a command-level INVALID_PARAM, nothing written.
    let mut bad = validate_req(0, 0, 1, GPA, v);
    bad.flags = 4.into();
    let mut bad2 = validate_req(0, 0, 1, GPA, v);
    bad2.reserved2[3] = 1;
    for (ty, body) in [
        (msg::MSG_MMIO_VALIDATE_REQ, bad.as_bytes()),
        (msg::MSG_MMIO_VALIDATE_REQ, bad2.as_bytes()),
        (0x7F, &[0; 16]),
        (msg::MSG_MMIO_VALIDATE_REQ, &[0; 47]),
    ] {
        w.put_msg(ty, body);
        refused(&mut w, SevStatus::INVALID_PARAM, |w| {
            w.cmd(&guest_request(GCTX))
        });
    }
    let mut same = guest_request(GCTX);
    same.res_paddr = same.req_paddr;
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&same));
    // Good: the whole 2M leaf, then part of it again (no change), then not uniform.
    let (o, rsp) = w.validate(GCTX, validate_req(0, 0, 512, GPA, v));
    ok(o);
    assert_eq!(
        (rsp.status.get(), rsp.flags.get()),
        (0, msg::VALIDATE_FLAG_CHANGED)
    );
    assert!(validated(&w, BAR) && validated(&w, BAR + 0x1F_F000));
    let (_, rsp) = w.validate(GCTX, validate_req(0, 16, 16, GPA + 0x1_0000, v));
    assert_eq!((rsp.status.get(), rsp.flags.get()), (0, 0));
    let (_, rsp) = w.validate(GCTX, validate_req(0, 0, 1, GPA, 0));
    assert_eq!(rsp.status.get(), 0);
    let (_, rsp) = w.validate(GCTX, validate_req(0, 0, 2, GPA, v));
    assert_eq!(rsp.status.get(), Mv::NotUniform as u16);
    assert!(!validated(&w, BAR) && validated(&w, BAR + 0x1000));
    let (_, rsp) = w.validate(
        GCTX,
        validate_req(0, 0, 2, GPA, v | msg::VALIDATE_FLAG_FORCE),
    );
    assert_eq!((rsp.status.get(), rsp.flags.get()), (0, 1));
    assert!(validated(&w, BAR));
    // TDI_INFO for the guest: bound and locked.
    let mut r = msg::TdiReq::new_zeroed();
    r.guest_device_id = GDEV.into();
    ok(w.guest_msg(GCTX, msg::MSG_TDI_INFO_REQ, r.as_bytes()));
    let mut info = msg::TdiInfoRsp::new_zeroed();
    w.mem.read(MEM + 0x2060, info.as_mut_bytes()).unwrap();
    assert_eq!(info.tdi_status.get(), 1);
    // The report digest is the one the core keeps for the bind.
    let kept = w.sev.tsm().tdi(w.tdi()).unwrap().report_digest.unwrap();
    assert_eq!(info.interface_report_digest, kept);
}

#[test]
fn guest_starts_the_tdi() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let start = |w: &mut World, gctx: u64, id: u16| {
        let mut r = msg::TdiReq::new_zeroed();
        r.guest_device_id = id.into();
        ok(w.guest_msg(gctx, msg::MSG_TDI_START_REQ, r.as_bytes()));
        start_outcome(&w.response())
    };
    let refused_start = |w: &mut World, gctx: u64, id: u16| {
        let mut r = msg::TdiReq::new_zeroed();
        r.guest_device_id = id.into();
        start_outcome(&refused_in_answer(
            w,
            gctx,
            msg::MSG_TDI_START_REQ,
            r.as_bytes(),
        ))
    };
    assert_eq!(
        refused_start(&mut w, GCTX2, GDEV),
        Outcome::from_core(Err(Error::NotOwner))
    );
    assert_eq!(
        refused_start(&mut w, GCTX, GDEV + 1),
        Outcome::plain(SevStatus::INVALID_PARAM)
    );
    assert_eq!(start(&mut w, GCTX, GDEV), Outcome::SUCCESS);
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Run { .. }
    ));
    assert_eq!(
        refused_start(&mut w, GCTX, GDEV),
        Outcome::from_core(Err(Error::TdiNotLocked))
    );
}

/// The outcome a TDI_START response carries.
fn start_outcome(rsp: &msg::TdiStartRsp) -> Outcome {
    Outcome {
        status: SevStatus(rsp.status.get()),
        detail: rsp.detail.get(),
    }
}

#[test]
fn the_host_cannot_reassign_unassign_or_resize_a_bound_page() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let (_, rsp) = w.validate(
        GCTX,
        validate_req(0, 0, 512, GPA, msg::VALIDATE_FLAG_VALIDATED),
    );
    assert_eq!(rsp.status.get(), 0);
    let before = w.state();
    let steal = RmpUpdate {
        assigned: true,
        asid: 6,
        gpa: 0x5000,
        page_size: false,
    };
    let give_back = RmpUpdate {
        assigned: false,
        asid: 0,
        gpa: 0,
        page_size: false,
    };
    // A mapped page: immutable, FAIL_PERMISSION.
    assert_eq!(w.sev.host_rmpupdate(BAR, steal), Err(RmpFault::Permission));
    assert_eq!(
        w.sev.host_rmpupdate(BAR + 0x1000, give_back),
        Err(RmpFault::Permission)
    );
    assert_eq!(w.sev.host_psmash(BAR), Err(RmpFault::Permission));
    // An unmapped page of the bound TDI's range: FAIL_INUSE.
    assert_eq!(
        w.sev.host_rmpupdate(BAR + 0x10_0000 + 0x10_0000, steal),
        Err(RmpFault::Permission)
    );
    assert_eq!(
        w.sev.host_rmpupdate(BAR + 0x20_1000, steal),
        Err(RmpFault::InUse)
    );
    // Outside the window or misaligned: FAIL_INPUT.
    assert_eq!(w.sev.host_rmpupdate(0x1000, steal), Err(RmpFault::Input));
    assert_eq!(
        w.sev.host_rmpupdate(BAR + 0x20_1001, steal),
        Err(RmpFault::Input)
    );
    assert_eq!(w.sev.host_psmash(BAR + 0x1000), Err(RmpFault::Input));
    same(&before, &w.state(), "refusals");
    // A page nobody owns is the host's to change.
    assert_eq!(w.sev.host_rmpupdate(BAR + 0x50_0000, steal), Ok(()));
    assert_eq!(w.sev.host_rmpupdate(BAR + 0x50_0000, give_back), Ok(()));
    assert_eq!(w.sev.host_psmash(BAR + 0x60_0000), Ok(()));

    // Unbind reclaims: blocked, fenced, unassigned; then the pages are the host's again.
    let mut o = w.cmd(&tdi_unbind(GCTX));
    while o.status == SevStatus::RESUME_REQUIRED {
        o = w.cmd(&tdi_unbind(GCTX));
    }
    ok(o);
    let clear = w
        .sev
        .tsm()
        .with_table(|r| r.entries().iter().all(|e| *e == RmpEntry::new()))
        .unwrap();
    assert!(clear);
    assert_eq!(w.sev.host_rmpupdate(BAR, steal), Ok(()));
    assert_eq!(w.sev.host_rmpupdate(BAR, give_back), Ok(()));
    assert_eq!(w.sev.host_psmash(BAR), Ok(()));
    ok(w.cmd(&mmio_zap(BAR, BAR_PAGES)));
}

/// One TDI mapped page by page in 4K leaves over a BAR of 18 MiB, more than the 4096 leaves a
/// fixed RMP index once held for every guest together: every TIO_MMIO_MAP succeeds, and every
/// page is the guest's in the RMP; a map past the TDI's range or over a mapped page is still
/// refused with nothing changed; unbind gives every page back.
#[test]
#[cfg_attr(miri, ignore)] // 4608 commands through the command-buffer path: safe code only
fn a_tdi_maps_a_large_bar_in_4k_leaves() {
    const PAGES: u64 = 4608;
    let range = MmioRange::from_raw(BAR, PAGES).unwrap();
    let mut w = World::uninitialised_over(PAGES as usize + 16, PAGES, &[range]);
    let status = crate::host::tio_init(&mut w.sev, &mut w.mem, TIO_STATUS_PAGE).unwrap();
    assert_eq!(
        status.flags.get() & abi::TIO_FLAG_INIT_DONE,
        abi::TIO_FLAG_INIT_DONE
    );
    w.setup(Stage::Bound);
    for i in 0..PAGES {
        let o = w.cmd(&mmio_map(
            GPA + i * 0x1000,
            BAR + i * 0x1000,
            abi::MMIO_SIZE_4K,
        ));
        assert_eq!(o, Outcome::SUCCESS, "page {i}");
    }
    let asid_pages = |w: &World| {
        w.sev
            .tsm()
            .with_table(|r| {
                r.entries()
                    .iter()
                    .filter(|e| e.assigned() && e.asid() == 5)
                    .count()
            })
            .unwrap()
    };
    assert_eq!(asid_pages(&w), PAGES as usize);
    // Past the TDI's range, and over a mapped page: refused as before, nothing changed.
    refused(&mut w, Error::HpaNotOwned, |w| {
        w.cmd(&mmio_map(
            GPA + PAGES * 0x1000,
            BAR + PAGES * 0x1000,
            abi::MMIO_SIZE_4K,
        ))
    });
    refused(&mut w, Error::HpaAlreadyMapped, |w| {
        w.cmd(&mmio_map(GPA + PAGES * 0x1000, BAR, abi::MMIO_SIZE_4K))
    });
    ok(unbind_all(&mut w));
    assert_eq!(asid_pages(&w), 0);
}

/// An RMP operation refused as `want` that leaves every entry and fence counter as it was.
#[track_caller]
fn rmp_refused<R: PartialEq + core::fmt::Debug>(
    rmp: &mut Rmp<VecStore>,
    want: R,
    op: impl FnOnce(&mut Rmp<VecStore>) -> R,
) {
    let before = rmp.clone();
    assert_eq!(op(rmp), want);
    assert!(*rmp == before, "a refused RMP operation changed the RMP");
}

#[test]
fn rmp_window_and_leaf_sizes() {
    let mut rmp = Rmp::new(hpa(RMP_BASE), vec_store(RMP_PAGES)).unwrap();
    assert_eq!(
        Rmp::new(hpa(RMP_BASE + 8), vec_store(4)).err(),
        Some(SevStatus::INVALID_ADDRESS)
    );
    let g = GuestId::from_slot(0);
    let gpa = |v| tsm_core::Gpa::try_new(v).unwrap();
    use tsm_core::secure_table::TableError;
    rmp_refused(&mut rmp, Err(TableError::UnknownGuest), |r| {
        r.map(g, gpa(0), hpa(BAR), PageSize::Size4K)
    });
    rmp.set_asid(g, 3).unwrap();
    rmp_refused(&mut rmp, Err(SevStatus::INVALID_ASID), |r| {
        r.set_asid(GuestId::from_slot(1), 3)
    });
    // A page outside the window: a status.
    rmp_refused(&mut rmp, Err(TableError::OutOfFrames), |r| {
        r.map(g, gpa(0), hpa(RMP_BASE - 0x1000), PageSize::Size4K)
    });
    rmp_refused(&mut rmp, Err(TableError::Misaligned), |r| {
        r.map(
            g,
            gpa(0),
            hpa(RMP_BASE + (RMP_PAGES as u64 - 1) * 0x1000),
            PageSize::Size2M,
        )
    });
    rmp_refused(&mut rmp, Err(TableError::OutOfFrames), |r| {
        r.map(g, gpa(0x4000_0000), hpa(0xC000_0000), PageSize::Size1G)
    });
    // 2M and 4K leaves; lookups anywhere inside a leaf return the whole leaf.
    rmp.map(g, gpa(0x20_0000), hpa(BAR + 0x20_0000), PageSize::Size2M)
        .unwrap();
    rmp.map(g, gpa(0x1000), hpa(BAR + 0x5000), PageSize::Size4K)
        .unwrap();
    let l = rmp.leaf(g, gpa(0x2f_f000)).unwrap();
    assert_eq!(
        (l.gpa, l.hpa, l.size),
        (gpa(0x20_0000), hpa(BAR + 0x20_0000), PageSize::Size2M)
    );
    rmp_refused(&mut rmp, Err(SevStatus::IN_USE), |r| r.set_asid(g, 0));
    // next_leaf walks by host address and skips leaves that start before `from`.
    let all = MmioRange::from_raw(BAR, 1024).unwrap();
    assert_eq!(
        rmp.next_leaf(all, hpa(BAR)).map(|l| l.hpa),
        Some(hpa(BAR + 0x5000))
    );
    assert_eq!(
        rmp.next_leaf(all, hpa(BAR + 0x6000)).map(|l| l.hpa),
        Some(hpa(BAR + 0x20_0000))
    );
    assert_eq!(rmp.next_leaf(all, hpa(BAR + 0x20_1000)), None);
    let small = MmioRange::from_raw(BAR + 0x20_0000, 16).unwrap();
    assert_eq!(rmp.next_leaf(small, hpa(BAR)), None);
    // Block twice is a no-op; removal needs a completed fence after the block.
    rmp.hold_fences(true);
    rmp.block(g, gpa(0x20_0000), PageSize::Size2M).unwrap();
    let once = rmp.clone();
    rmp.block(g, gpa(0x20_0000), PageSize::Size2M).unwrap();
    assert_eq!(rmp, once);
    rmp_refused(&mut rmp, Err(TableError::SizeMismatch), |r| {
        r.block(g, gpa(0x20_1000), PageSize::Size2M)
    });
    rmp_refused(&mut rmp, Err(TableError::TlbNotFlushed), |r| {
        r.remove(g, gpa(0x20_0000), PageSize::Size2M)
    });
    assert_eq!(rmp.track(g), Ok(tsm_core::Completion::Done));
    assert!(rmp.fence_pending(g));
    rmp_refused(&mut rmp, Err(TableError::TlbNotFlushed), |r| {
        r.remove(g, gpa(0x20_0000), PageSize::Size2M)
    });
    rmp.hold_fences(false);
    rmp_refused(&mut rmp, Err(TableError::NotBlocked), |r| {
        r.remove(g, gpa(0x1000), PageSize::Size4K)
    });
    assert_eq!(
        rmp.remove(g, gpa(0x20_0000), PageSize::Size2M),
        Ok(hpa(BAR + 0x20_0000))
    );
    assert_eq!(rmp.leaf(g, gpa(0x20_0000)), None);
}

#[test]
#[cfg_attr(miri, ignore)] // searches of the README's text: 25 s under Miri, no firmware code
fn every_implemented_command_is_dispatched_and_documented() {
    let readme = include_str!("../../README.md");
    let cmds = every_command();
    assert_eq!(cmds.len(), abi::IMPLEMENTED.len());
    for id in abi::IMPLEMENTED {
        assert!(
            cmds.iter().any(|(c, _, _)| *c == id),
            "{id:#x} has no hostile test"
        );
        let row = format!("| {id:#04X} |").replace("0X", "0x");
        assert!(
            readme.contains(&row),
            "README lacks a row for {id:#x}: {row}"
        );
    }
    for s in SevStatus::ALL {
        let row = format!("| {:#06x} |", s.0);
        assert!(readme.contains(&row), "README lacks status {row}");
    }
}

// ---- answers in memory: checked before anything changes -----------------------------------

/// A world where every command with an answer in memory would change something if it ran:
/// the TDI is bound and locked, its leaves mapped, and the device has gone to ERROR behind the
/// firmware's back (TDI_STATUS would put the TDI in ERROR and block its leaves; a guest START
/// would put it in ERROR; MMIO_VALIDATE would set Validated bits; TDI_REPORT would count a
/// report). A guest context sits on a page of system memory.
fn world_with_pending_changes() -> Box<World> {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    ok(w.cmd(&gctx_create(FW_PAGE)));
    let mut dev = dev_create();
    dev.dev_ctx = sla(FW_PAGE2 >> 12).into();
    dev.device_id = RequesterId::try_new(0, 3, 1, 0)
        .unwrap()
        .routing_id()
        .into();
    dev.bar_list = 0.into();
    ok(w.cmd(&dev));
    w.device.event(rid(0), DeviceEvent::Disturb);
    w
}

/// A command that answers in memory: its name, the guest message it carries (written to the
/// request page beforehand), and the command itself.
struct Answering {
    name: &'static str,
    message: Option<(u8, Vec<u8>)>,
    run: Box<dyn Fn(&mut World) -> Outcome>,
}

impl Answering {
    /// Writes the guest message, if any: not part of the command.
    fn prepare(&self, w: &mut World) {
        if let Some((ty, body)) = &self.message {
            w.put_msg(*ty, body);
        }
    }
}

/// Every command that answers in memory, with its answer sent to `out`.
fn answering_commands(out: u64) -> Vec<Answering> {
    let mut status = tdi_status();
    status.status_paddr = out.into();
    let mut info = tdi_info();
    info.status_paddr = out.into();
    let mut fence = fence_status(5);
    fence.status_pa = out.into();
    let mut report = tdi_report(GCTX);
    report.spdm_ctrl.output = sla(out >> 12).into();
    let mut request = guest_request(GCTX);
    request.res_paddr = out.into();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    let validate = validate_req(0, 0, 512, GPA, msg::VALIDATE_FLAG_VALIDATED);
    let command = |name, run: Box<dyn Fn(&mut World) -> Outcome>| Answering {
        name,
        message: None,
        run,
    };
    let message = |name, ty: u8, body: &[u8]| Answering {
        name,
        message: Some((ty, body.to_vec())),
        run: Box::new(move |w: &mut World| w.cmd(&request)),
    };
    vec![
        command("TDI_STATUS", Box::new(move |w| w.cmd(&status))),
        command("TDI_INFO", Box::new(move |w| w.cmd(&info))),
        command("ASID_FENCE_STATUS", Box::new(move |w| w.cmd(&fence))),
        command("TDI_REPORT", Box::new(move |w| w.cmd(&report))),
        message(
            "GUEST_REQUEST(TDI_START)",
            msg::MSG_TDI_START_REQ,
            start.as_bytes(),
        ),
        message(
            "GUEST_REQUEST(MMIO_VALIDATE)",
            msg::MSG_MMIO_VALIDATE_REQ,
            validate.as_bytes(),
        ),
        message(
            "GUEST_REQUEST(TDI_INFO)",
            msg::MSG_TDI_INFO_REQ,
            start.as_bytes(),
        ),
    ]
}

/// Runs every answering command with its answer sent to `out`, each in a fresh world where it
/// would change something, and lists those not refused as `want` or that changed anything.
fn undeliverable(out: u64, want: SevStatus) -> Vec<String> {
    let mut wrong = Vec::new();
    for c in answering_commands(out) {
        let mut w = world_with_pending_changes();
        c.prepare(&mut w);
        let before = w.state();
        let o = (c.run)(&mut w);
        if o != Outcome::plain(want) {
            wrong.push(format!("{}: {o:?}", c.name));
        }
        if let Err(parts) = diff(&before, &w.state()) {
            wrong.push(format!("{} changed {parts}", c.name));
        }
    }
    wrong
}

#[test]
fn an_answer_that_cannot_be_delivered_changes_nothing() {
    // An aligned address no memory answers at.
    let wrong = undeliverable(UNMAPPED, SevStatus::INVALID_ADDRESS);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
// 35 fresh worlds: 80 s under Miri; the same commands are refused in the test above and
// answer in tdi_bind_report_status_info_unbind and the guest message tests.
#[cfg_attr(miri, ignore)]
fn an_answer_goes_only_to_writable_host_memory() {
    for (out, want) in [
        // Memory the firmware may read but not write.
        (RO_PAGE, SevStatus::INVALID_ADDRESS),
        // Device MMIO, shared or assigned to the guest: not memory at all.
        (BAR + 0x30_0000, SevStatus::INVALID_ADDRESS),
        (BAR, SevStatus::INVALID_ADDRESS),
        // Firmware pages: a guest context, a device context.
        (FW_PAGE, SevStatus::INVALID_PAGE_STATE),
        (FW_PAGE2, SevStatus::INVALID_PAGE_STATE),
    ] {
        let wrong = undeliverable(out, want);
        assert!(wrong.is_empty(), "{out:#x}: {wrong:#?}");
    }
    // An answer that would run off its page, or one misaligned.
    let mut w = world_with_pending_changes();
    let mut info = tdi_info();
    info.status_paddr = (MEM + 0xF80).into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&info));
    let mut status = tdi_status();
    status.status_paddr = (MEM + 8).into();
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&status));
    let mut request = guest_request(GCTX);
    request.res_paddr = (MEM + 0x2010).into();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.cmd(&request));
    // The same commands with good pages answer, and change what they should.
    for c in answering_commands(MEM) {
        c.prepare(&mut w);
        let o = (c.run)(&mut w);
        assert!(o.status != SevStatus::INVALID_ADDRESS, "{}: {o:?}", c.name);
    }
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Error { .. }
    ));
}

// ---- TDI_STATUS tells the truth ---------------------------------------------------------------

#[test]
fn tdi_status_of_an_unbound_tdi_is_config_unlocked_without_asking_the_device() {
    let mut w = World::new();
    w.setup(Stage::Created);
    w.mem.write(MEM, &[0xEE; 16]).unwrap();
    let before = w.sev.tsm().snapshot().unwrap();
    ok(w.cmd(&tdi_status()));
    assert_eq!(before, w.sev.tsm().snapshot().unwrap(), "nothing changed");
    let mut s = [0u8; 16];
    w.mem.read(MEM, &mut s).unwrap();
    assert_eq!(
        (u32::from_le_bytes(s[..4].try_into().unwrap()), s[4]),
        (0x10, 0)
    );
    // The core would refuse to ask: nothing was asked.
    let mut out = [0u8; MAX_RELAY_BYTES];
    assert_eq!(
        w.sev.tsm().check_interface(w.tdi(), &mut out),
        Err(Error::TdiNotBound)
    );
}

#[test]
#[cfg_attr(miri, ignore)] // 100 leaves blocked: 30 s under Miri, safe code only
fn tdi_status_says_resume_required_while_leaves_remain_to_block() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    // 100 4K leaves: more than one call blocks (UNBIND_WORK_PER_CALL: 64 leaves on the RMP).
    for i in 0..100u64 {
        ok(w.cmd(&mmio_map(
            GPA + 0x40_0000 + i * 0x1000,
            BAR + 0x10_0000 + i * 0x1000,
            0,
        )));
    }
    w.device.event(rid(0), DeviceEvent::Disturb);
    let mapped = |w: &World| {
        w.sev
            .tsm()
            .with_table(|r| {
                r.entries()
                    .iter()
                    .filter(|e| e.assigned() && !e.blocked())
                    .count()
            })
            .unwrap()
    };
    let o = w.cmd(&tdi_status());
    assert_eq!(o, Outcome::plain(SevStatus::RESUME_REQUIRED));
    assert_eq!(o.to_core(), Ok(tsm_core::Completion::Resumable));
    // The answer is there all the same: the device says ERROR.
    let mut s = abi::TdiStatusData::new_zeroed();
    w.mem.read(MEM, s.as_mut_bytes()).unwrap();
    assert_eq!(s.tdisp_state, TdispState::Error as u8);
    assert!(
        mapped(&w) > 0,
        "RESUME_REQUIRED while leaves are still mapped"
    );
    let mut calls = 1;
    while w.cmd(&tdi_status()) == Outcome::plain(SevStatus::RESUME_REQUIRED) {
        calls += 1;
        assert!(calls < 10);
    }
    assert_eq!(mapped(&w), 0);
    ok(w.cmd(&tdi_status()));
}

// ---- guest device IDs: one TDI per ID and guest ------------------------------------------

const TDI2_PFN: u64 = 0x30_0003;
/// The second TDI's report: a range of the device the first TDI's does not cover.
const TDI2_RANGE: (u64, u64) = (BAR + 0x30_0000, 16);

/// A second TDI on the device (function 1), reporting [`TDI2_RANGE`].
fn add_second_tdi(w: &mut World) {
    w.device.report_ranges(
        rid(1),
        &[MmioRange::from_raw(TDI2_RANGE.0, TDI2_RANGE.1).unwrap()],
    );
    let mut c = tdi_create();
    c.tdi_ctx = sla(TDI2_PFN).into();
    c.interface_id.function_id = u32::from(rid(1).routing_id()).into();
    ok(w.cmd(&c));
}

fn on_second_tdi<C: Command>(mut c: C, set: impl FnOnce(&mut C, U64)) -> C {
    set(&mut c, sla(TDI2_PFN).into());
    c
}

#[test]
fn a_guest_device_id_names_one_tdi_of_a_guest() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    add_second_tdi(&mut w);
    // The second TDI under the first one's guest device ID, for the same guest: refused.
    let bind2 = |g: u64, id: u16| {
        let mut b = on_second_tdi(tdi_bind(g), |c, s| c.tdi_ctx = s);
        b.guest_device_id = id.into();
        b
    };
    refused(&mut w, Outcome::plain(SevStatus::IN_USE), |w| {
        w.cmd(&bind2(GCTX, GDEV))
    });
    // Under another ID, or for another guest, it binds.
    ok(w.cmd(&bind2(GCTX, GDEV + 1)));
    ok(w.cmd(&on_second_tdi(tdi_unbind(GCTX), |c, s| c.tdi_ctx = s)));
    ok(w.cmd(&bind2(GCTX2, GDEV)));
    ok(w.cmd(&on_second_tdi(tdi_unbind(GCTX2), |c, s| c.tdi_ctx = s)));
    // Once the first TDI is unbound its ID is free again.
    let mut o = w.cmd(&tdi_unbind(GCTX));
    while o.status == SevStatus::RESUME_REQUIRED {
        o = w.cmd(&tdi_unbind(GCTX));
    }
    ok(o);
    ok(w.cmd(&bind2(GCTX, GDEV)));
}

#[test]
fn a_guest_request_acts_on_the_tdi_the_guest_named() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    add_second_tdi(&mut w);
    let mut bind2 = on_second_tdi(tdi_bind(GCTX), |c, s| c.tdi_ctx = s);
    bind2.guest_device_id = (GDEV + 1).into();
    ok(w.cmd(&bind2));
    ok(w.cmd(&on_second_tdi(
        mmio_map(GPA + 0x100_0000, TDI2_RANGE.0, abi::MMIO_SIZE_4K),
        |c, s| c.tdi_ctx = s,
    )));
    // The guest names the first TDI (GDEV); the host hands the second one's context.
    let mut redirected = guest_request(GCTX);
    redirected.tdi_ctx = sla(TDI2_PFN).into();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    let before = w.state();
    ok(w.cmd(&redirected));
    let rsp: msg::TdiStartRsp = w.response();
    assert_eq!(
        start_outcome(&rsp),
        Outcome::plain(SevStatus::INVALID_PARAM)
    );
    let mut after = w.state();
    after.mem[RESPONSE_PAGE].copy_from_slice(&before.mem[RESPONSE_PAGE]);
    same(&before, &after, "a redirected START");
    let validate = validate_req(0, 0, 1, GPA, msg::VALIDATE_FLAG_VALIDATED);
    w.put_msg(msg::MSG_MMIO_VALIDATE_REQ, validate.as_bytes());
    let before = w.state();
    ok(w.cmd(&redirected));
    let rsp: msg::MmioValidateRsp = w.response();
    assert_eq!(rsp.status.get(), Mv::InvalidTdi as u16);
    let mut after = w.state();
    after.mem[RESPONSE_PAGE].copy_from_slice(&before.mem[RESPONSE_PAGE]);
    same(&before, &after, "a redirected MMIO_VALIDATE");
    // With the context of the TDI it names, the guest's request runs.
    ok(w.cmd(&guest_request(GCTX)));
    let rsp: msg::MmioValidateRsp = w.response();
    assert_eq!(rsp.status.get(), Mv::Success as u16);
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    ok(w.cmd(&guest_request(GCTX)));
    assert_eq!(start_outcome(&w.response()), Outcome::SUCCESS);
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Run { .. }
    ));
    let t2 = w.sev.tdi_ctx(sla(TDI2_PFN)).unwrap().tdi;
    assert!(matches!(
        w.sev.tsm().tdi(t2).unwrap().state,
        TdiState::Locked { .. }
    ));
}

// ---- bitfield entries take only values that fit -------------------------------------------

#[test]
fn entries_at_the_edges_of_the_address_space() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    // A 2M leaf whose last page is the last guest page below 2^52, validated whole.
    let top = (1u64 << 52) - 0x20_0000;
    ok(w.cmd(&mmio_map(top, BAR, abi::MMIO_SIZE_2M)));
    let (o, rsp) = w.validate(
        GCTX,
        validate_req(0, 0, 512, top, msg::VALIDATE_FLAG_VALIDATED),
    );
    ok(o);
    assert_eq!(rsp.status.get(), Mv::Success as u16);
    let last = w
        .sev
        .tsm()
        .with_table(|r| r.entry(BAR + 0x1F_F000).unwrap())
        .unwrap();
    assert_eq!(last.gpa_pfn().get(), (1 << 40) - 1);
    assert_eq!(last.leaf_size().size(), Some(PageSize::Size2M));
    // The host's RMPUPDATE with every hostile guest address: a status or done, never a panic.
    let page = BAR + 0x60_0000;
    for (gpa, want) in [
        ((1u64 << 52) - 0x1000, Ok(())),
        (1 << 52, Err(RmpFault::Input)),
        (!0xFFF, Err(RmpFault::Input)),
        (0x1001, Err(RmpFault::Input)),
    ] {
        let update = RmpUpdate {
            assigned: true,
            asid: u32::MAX,
            gpa,
            page_size: true,
        };
        let before = w.state();
        assert_eq!(w.sev.host_rmpupdate(page, update), want, "{gpa:#x}");
        if want.is_err() {
            same(
                &before,
                &w.state(),
                format_args!("a refused RMPUPDATE at {gpa:#x}"),
            );
        }
    }
    // Any 64 bits a host calls an SLA decode without a panic, and re-encode to themselves.
    for raw in [u64::MAX, 1 << 63, 0xFFF, (1 << 52) - 0x1000] {
        let sla = SlaAddr::from_bits(raw);
        assert_eq!(
            SlaAddr::new()
                .with_page_type(sla.page_type())
                .with_page_size(sla.page_size())
                .with_pfn(sla.pfn())
                .into_bits(),
            raw & !(0x3FF << 2) & ((1 << 52) - 1)
        );
    }
}

// ---- fence counters at the wrap -----------------------------------------------------------

/// Unbinds the TDI to the end.
fn unbind_all(w: &mut World) -> Outcome {
    let mut o = w.cmd(&tdi_unbind(GCTX));
    while o.status == SevStatus::RESUME_REQUIRED {
        o = w.cmd(&tdi_unbind(GCTX));
    }
    o
}

#[test]
fn fences_go_on_past_2_pow_32() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let g = w.guest(GCTX);
    // The leaves are blocked at fence 2^32 - 1; unbind's own fence is the 2^32nd.
    let wrap = 1u64 << 32;
    w.sev
        .tsm()
        .with_table(|r| r.set_fence_counts(g, wrap - 1, wrap - 1))
        .unwrap();
    ok(unbind_all(&mut w));
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entries().iter().all(|e| !e.assigned()))
            .unwrap()
    );
    // And the host's fences go on too, complete at once.
    ok(w.cmd(&fence_clear(GCTX)));
    ok(w.cmd(&fence_status(5)));
    let mut word = [0u8; 8];
    w.mem.read(MEM, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0);
    let f = w.sev.tsm().with_table(|r| r.fences()[0]).unwrap();
    assert_eq!((f.raised(), f.done()), (wrap + 1, wrap + 1));
    // Bound again, blocked and fenced across the wrap with the fence held: removal waits
    // for the fence, then goes on.
    ok(w.cmd(&tdi_bind(GCTX)));
    ok(w.cmd(&mmio_map(GPA, BAR, abi::MMIO_SIZE_2M)));
    w.sev
        .tsm()
        .with_table(|r| {
            r.set_fence_counts(g, 2 * wrap - 1, 2 * wrap - 1);
            r.hold_fences(true)
        })
        .unwrap();
    let o = unbind_all(&mut w);
    assert_eq!(o, Outcome::from_core(Err(Error::TlbFlushPending)));
    w.sev.tsm().with_table(|r| r.hold_fences(false)).unwrap();
    ok(unbind_all(&mut w));
}

#[test]
fn the_last_fence_a_counter_holds_is_refused_and_changes_nothing() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let g = w.guest(GCTX);
    w.sev
        .tsm()
        .with_table(|r| r.set_fence_counts(g, u64::MAX - 1, u64::MAX - 1))
        .unwrap();
    ok(w.cmd(&fence_clear(GCTX)));
    let f = w.sev.tsm().with_table(|r| r.fences()[0]).unwrap();
    assert_eq!((f.raised(), f.done()), (u64::MAX, u64::MAX));
    let o = refused(&mut w, Error::SecureTableFull, |w| {
        w.cmd(&fence_clear(GCTX))
    });
    assert_eq!(o.status, SevStatus::RESOURCE_LIMIT);
    // Unbind needs a fence too: refused at the same point, with its progress kept.
    let o = unbind_all(&mut w);
    assert_eq!(o, Outcome::from_core(Err(Error::SecureTableFull)));
    refused(&mut w, Error::SecureTableFull, |w| w.cmd(&tdi_unbind(GCTX)));
}

#[test]
fn a_leaf_blocked_2_pow_32_fences_ago_waits_for_one_more_never_one_fewer() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let g = w.guest(GCTX);
    let gpa = tsm_core::Gpa::try_new(GPA).unwrap();
    w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
    // Blocked at fence 5: unbind blocks, raises fence 6 (held) and waits.
    w.sev
        .tsm()
        .with_table(|r| r.set_fence_counts(g, 5, 5))
        .unwrap();
    let o = unbind_all(&mut w);
    assert_eq!(o, Outcome::from_core(Err(Error::TlbFlushPending)));
    let epoch = |w: &World| match w.sev.tsm().leaf(g, gpa).unwrap().unwrap().state {
        tsm_core::LeafState::Blocked { epoch } => epoch,
        s => panic!("{s:?}"),
    };
    assert_eq!(epoch(&w), 5);
    // 2^32 more fences raised and completed: the entry's 32 bits cannot tell this from a
    // block at the latest fence, so the removal waits for one more fence.
    let wrap = 1u64 << 32;
    w.sev
        .tsm()
        .with_table(|r| r.set_fence_counts(g, 5 + wrap, 5 + wrap))
        .unwrap();
    assert_eq!(epoch(&w), 5 + wrap);
    refused(&mut w, Error::TlbFlushPending, |w| w.cmd(&tdi_unbind(GCTX)));
    w.sev.tsm().with_table(|r| r.hold_fences(false)).unwrap();
    ok(w.cmd(&fence_clear(GCTX)));
    ok(unbind_all(&mut w));
}

#[test]
fn decommission_gives_back_exactly_what_it_released() {
    let mut rmp = Rmp::new(hpa(RMP_BASE), vec_store(16)).unwrap();
    let g = GuestId::from_slot(2);
    rmp.set_asid(g, 7).unwrap();
    rmp.hold_fences(true);
    assert_eq!(rmp.track(g), Ok(tsm_core::Completion::Done));
    // One fence outstanding at a time: a second while it is pending is refused.
    let pending = rmp.clone();
    assert_eq!(
        rmp.track(g),
        Err(tsm_core::secure_table::TableError::TlbNotFlushed)
    );
    assert_eq!(rmp, pending);
    rmp.set_fence_counts(g, (1 << 32) + 3, 1 << 32);
    let before = rmp.clone();
    let released = rmp.release_asid(g).unwrap();
    assert_eq!(rmp.asid(g), 0);
    assert_ne!(rmp, before);
    rmp.restore_asid(released);
    assert_eq!(rmp, before);
    assert_eq!(
        (rmp.fences()[2].raised(), rmp.fences()[2].done()),
        ((1 << 32) + 3, 1 << 32)
    );
    // A release refused while an entry names the ASID changes nothing.
    rmp.map(
        g,
        tsm_core::Gpa::try_new(0).unwrap(),
        hpa(RMP_BASE),
        PageSize::Size4K,
    )
    .unwrap();
    let before = rmp.clone();
    assert_eq!(rmp.release_asid(g), Err(SevStatus::IN_USE));
    assert_eq!(rmp, before);
    // Through the command: a refused decommission leaves ASID and counters as they were.
    let mut w = World::new();
    w.setup(Stage::Mapped);
    for _ in 0..3 {
        ok(w.cmd(&fence_clear(GCTX)));
    }
    refused(&mut w, Error::GuestInUse, |w| w.cmd(&decommission(GCTX)));
    ok(unbind_all(&mut w));
    ok(w.cmd(&decommission(GCTX)));
    assert_eq!(
        w.sev.tsm().with_table(|r| r.fences()[0]).unwrap(),
        AsidFence::default()
    );
}

// ---- reserved memory and BARs (issue 9, item 1) ---------------------------------------------

/// A device whose BAR list shows a BAR over system memory (here: the command-buffer pages the
/// firmware was given at init) or over another device's BAR is never registered.
#[test]
fn a_bar_over_system_memory_or_another_device_is_refused() {
    let mut w = World::new();
    ok(w.cmd(&dev_create()));
    let other = RequesterId::try_new(0, 3, 1, 0).unwrap();
    let mut c = dev_create();
    c.dev_ctx = sla(0x30_0009).into();
    c.device_id = other.routing_id().into();
    c.bar_list = OTHER_BARS.into();
    for (bar, want) in [
        (MmioRange::from_raw(MEM, 1).unwrap(), Error::ReservedMemory),
        (
            MmioRange::from_raw(MEM + 0x2000, 2).unwrap(),
            Error::ReservedMemory,
        ),
        (
            MmioRange::from_raw(BAR + 0x1000, 1).unwrap(),
            Error::BarInUse,
        ),
    ] {
        put_bars(&mut w.mem, OTHER_BARS, &[bar]);
        refused(&mut w, want, |w| w.cmd(&c));
    }
    put_bars(
        &mut w.mem,
        OTHER_BARS,
        &[MmioRange::from_raw(BAR + BAR_PAGES * 0x1000, 1).unwrap()],
    );
    ok(w.cmd(&c));
}

/// TDI_UNBIND FORCE: the device's IDE stream is cut and the TDI unbound without STOP; a bind
/// is INVALID_DEV_STATE (detail `StreamCut`) until DEV_DISCONNECT and DEV_CONNECT set the
/// stream up again.
#[test]
fn forced_unbind_cuts_the_stream_until_reconnect() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let silent = |w: &mut World, fault| w.device.set_fault(rid(0), fault);
    silent(&mut w, Some(tsm_core::DeviceFault::NoResponse));
    assert_eq!(
        w.cmd(&tdi_unbind(GCTX)).to_core(),
        Err(Error::DeviceUnresponsive)
    );
    let mut force = tdi_unbind(GCTX);
    force.flags = abi::FLAG_FORCE.into();
    let mut calls = 0;
    while w.cmd(&force).status == SevStatus::RESUME_REQUIRED {
        calls += 1;
        assert!(calls < 100);
    }
    assert!(!w.sev.tsm().tdi(w.tdi()).unwrap().state.is_bound());
    assert_eq!(
        w.sev
            .tsm()
            .device(w.sev.dev_ctx(dev_sla()).unwrap().device)
            .unwrap()
            .stream,
        tsm_core::IdeStream::Cut
    );
    ok(w.cmd(&force));
    silent(&mut w, None);
    let o = refused(&mut w, Error::StreamCut, |w| w.cmd(&tdi_bind(GCTX)));
    assert_eq!(o.status, SevStatus::INVALID_DEV_STATE);
    ok(w.cmd(&dev_disconnect()));
    ok(w.cmd(&dev_connect()));
    ok(w.cmd(&tdi_bind(GCTX)));
}

/// MMIO_VALIDATE names pages in the report's terms (range, page offset in it: no reporting
/// offset travels in the message); every page the RMP assigns at the subrange's guest
/// addresses is checked against the report through the core's rule, the TDI's
/// MMIO_REPORTING_OFFSET included. A host that swapped two pages of a range gets the
/// guest's validation refused (NOT_MAPPED) with nothing changed; the page the report puts
/// there validates.
#[test]
fn validate_refuses_pages_the_host_mapped_where_the_report_does_not_put_them() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    // Range 1, pages 1 and 2, mapped swapped.
    ok(w.cmd(&mmio_map(
        GPA + 0x20_1000,
        BAR + 0x20_2000,
        abi::MMIO_SIZE_4K,
    )));
    ok(w.cmd(&mmio_map(
        GPA + 0x20_2000,
        BAR + 0x20_1000,
        abi::MMIO_SIZE_4K,
    )));
    let v = msg::VALIDATE_FLAG_VALIDATED;
    for req in [
        validate_req(1, 1, 1, GPA + 0x20_1000, v),
        validate_req(1, 2, 1, GPA + 0x20_2000, v),
        validate_req(1, 0, 3, GPA + 0x20_0000, v),
    ] {
        let rsp: msg::MmioValidateRsp =
            refused_in_answer(&mut w, GCTX, msg::MSG_MMIO_VALIDATE_REQ, req.as_bytes());
        assert_eq!(rsp.status.get(), Mv::NotMapped as u16, "{req:?}");
    }
    // Where the host put them is where their report positions say they are not: the
    // report's page 2 is at the first address, page 1 at the second.
    let (o, rsp) = w.validate(GCTX, validate_req(1, 2, 1, GPA + 0x20_1000, v));
    ok(o);
    assert_eq!(rsp.status.get(), 0);
    let (o, rsp) = w.validate(GCTX, validate_req(1, 1, 1, GPA + 0x20_2000, v));
    ok(o);
    assert_eq!(rsp.status.get(), 0);
    // The core's own reading of the report: FIRST_PAGE of range 1 is its host base plus the
    // bind's offset, which lies past every physical address.
    let tdi = w.tdi();
    let g = w.guest(GCTX);
    let first = w
        .sev
        .tsm()
        .guest_read(g, tdi, tsm_core::GuestField::ReportedRange(1))
        .unwrap();
    let offset = w.sev.tsm().tdi(tdi).unwrap().mmio_offset.unwrap();
    assert_eq!(first, BAR + 0x20_0000 + offset);
    assert!(offset >= 1 << 52);
}

#[test]
fn firmware_and_memory_format_as_short_summaries() {
    let w = World::uninitialised();
    let shown = format!("{:?}", w.sev);
    assert!(shown.starts_with("Sev { tsm: Tsm {"), "{shown}");
    assert!(
        shown.ends_with("guests: 0, devices: 0, tdis: 0, tio_init_done: false }"),
        "{shown}"
    );
    let shown = format!("{:?}", w.mem);
    assert_eq!(
        shown,
        format!("PageMemory {{ base: {MEM:#x}, pages: {MEM_PAGES}, read_only: 1 }}")
    );
}

/// The command buffers the `command!` macro generates format every field by name (Debug is
/// part of the macro, so every command has it): what a host tool or a log shows of a buffer.
#[test]
fn a_command_buffer_formats_its_fields() {
    let shown = format!("{:?}", tdi_create());
    assert_eq!(
        shown,
        format!(
            "TdiCreate {{ length: U32(48), reserved: U32(0), dev_ctx: U64({}), tdi_ctx: U64({}), \
             interface_id: TdispInterfaceId {{ function_id: U32(768), reserved: [0, 0, 0, 0, 0, \
             0, 0, 0] }}, reserved2: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }}",
            dev_sla(),
            tdi_sla()
        )
    );
}
