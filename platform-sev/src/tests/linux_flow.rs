//! The Linux host's whole SEV-TIO flow with its command buffers built byte by byte as its
//! `sev_tio_*` functions fill them, and run as its `sev-dev-tsm.c` runs them: connect
//! (DEV_CREATE, DEV_CONNECT), bind (TDI_CREATE, TDI_BIND, TDI_STATUS), the guest's start
//! (GUEST_REQUEST), unbind (TDI_UNBIND, TDI_STATUS, TDI_RECLAIM, ASID_FENCE_STATUS),
//! disconnect (DEV_DISCONNECT, DEV_RECLAIM); every command that may relay runs Linux's
//! continuation loop. TIO_STATUS and TIO_INIT are `tio_init.rs`'s (every `World::new` starts
//! with them, byte for byte).
//!
//! Source of every layout and call: AMDESE/linux-kvm @16f379f5463af503796de2199ff17b8cd27682ba,
//! `drivers/crypto/ccp/sev-dev-tio.c` (the `struct sev_data_tio_*` and the wrappers named on
//! each builder, `sev_tio_do_cmd`, `sev_tio_continue`, `spdm_ctrl_alloc`) and
//! `drivers/crypto/ccp/sev-dev-tsm.c` (`dsm_connect`, `tdi_bind`, `tdi_run`, `guest_request`,
//! `tdi_unbind`, `dsm_disconnect`, `sev_tio_spdm_cmd`); sev-linux-buffers.md transcribes them.
//! The builders write offsets by hand from those structs, not through `crate::abi`, so a
//! layout error in either shows.
//!
//! Where this firmware needs the host to differ from Linux, the flow says so and
//! `where_linux_and_this_firmware_part` pins what happens to Linux's exact bytes.

use super::*;

// ---- the Linux host's per-device and per-TDI data (`struct tsm_dsm_tio`, `tsm_tdi_tio`) ------

/// What `sev-dev-tsm.c` keeps per device: the SLAs `sev_tio_dev_create` and `spdm_ctrl_alloc`
/// allocate, `data_pg` (`snp_alloc_firmware_page`, the status page of DEV_STATUS, TDI_STATUS,
/// TDI_INFO and ASID_FENCE_STATUS), and `dsm_create`'s guest request and response pages.
#[derive(Clone, Copy)]
struct LinuxDev {
    dev_ctx: u64,
    /// `spdm_ctrl`: req, resp, scratch, output (`spdm_ctrl_init`).
    ctrl: [u64; 4],
    data_pg: u64,
    guest_req_buf: u64,
    guest_resp_buf: u64,
}

/// What it keeps per TDI.
#[derive(Clone, Copy)]
struct LinuxTdi {
    tdi_ctx: u64,
    gctx_paddr: u64,
    asid: u32,
    /// Set by `tdi_run` after its TDI_BIND with RUN_FORCE; the guest start here is the
    /// guest's own message, so it stays false.
    unfence: bool,
}

/// The device's SLAs and pages in the test world. Linux's `sla_alloc` hands the firmware
/// one 4K page per buffer (every size this firmware reports is 4096): `req` and `resp` are
/// the world's SPDM pages, `scratch` and `output` two more pages of system memory; the
/// contexts stay at the world's SLAs (this firmware keeps context state in its own tables
/// and never reads the pages).
fn linux_dev() -> LinuxDev {
    LinuxDev {
        dev_ctx: dev_sla(),
        ctrl: [
            sla(SPDM_REQ >> 12),
            sla(SPDM_RESP >> 12),
            sla((MEM + 0x3000) >> 12),
            sla(FW_PAGE2 >> 12),
        ],
        data_pg: MEM,
        guest_req_buf: MEM + 0x1000,
        guest_resp_buf: MEM + 0x2000,
    }
}

// ---- buffers, as the sev_tio_* wrappers fill them (sev-dev-tio.c @16f379f5) -----------------

fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
    b[off..off + bytes.len()].copy_from_slice(bytes);
}

/// `length = sizeof(...)` at 0, every other byte 0 (C designated initialisers).
fn buffer<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    put(&mut b, 0, &(N as u32).to_le_bytes());
    b
}

/// `spdm_ctrl_init`: req, resp, scratch, output at 0x08.
fn put_ctrl(b: &mut [u8], d: &LinuxDev) {
    for (i, s) in d.ctrl.iter().enumerate() {
        put(b, 0x08 + 8 * i, &s.to_le_bytes());
    }
}

/// `sev_tio_dev_create(dev_data, device_id, root_port_id, segment_id)`:
/// `struct sev_data_tio_dev_create` (0x20): dev_ctx_sla @0x08, device_id @0x10, root_port_id
/// @0x12, segment_id @0x14, reserved2[11] @0x15.
fn dev_create_buf(d: &LinuxDev, device_id: u16, root_port_id: u16, segment_id: u8) -> [u8; 0x20] {
    let mut b = buffer::<0x20>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x10, &device_id.to_le_bytes());
    put(&mut b, 0x12, &root_port_id.to_le_bytes());
    b[0x14] = segment_id;
    b
}

/// `sev_tio_dev_connect(dev_data, tc_mask, ids, cert_slot)`: `struct
/// sev_data_tio_dev_connect` (0x50): spdm_ctrl @0x08, dev_ctx_sla @0x30, tc_mask @0x38,
/// cert_slot @0x39, ide_stream_id[8] @0x40.
fn dev_connect_buf(d: &LinuxDev, tc_mask: u8, ids: [u8; 8], cert_slot: u8) -> [u8; 0x50] {
    let mut b = buffer::<0x50>();
    put_ctrl(&mut b, d);
    put(&mut b, 0x30, &d.dev_ctx.to_le_bytes());
    b[0x38] = tc_mask;
    b[0x39] = cert_slot;
    put(&mut b, 0x40, &ids);
    b
}

/// `sev_tio_dev_measurements(dev_data, nonce)`: `struct sev_data_tio_dev_meas` (0x50): flags
/// @0x04 = RAW_BITSTREAM (always), spdm_ctrl @0x08, dev_ctx_sla @0x28, meas_nonce[32] @0x30.
fn dev_measurements_buf(d: &LinuxDev, nonce: [u8; 32]) -> [u8; 0x50] {
    let mut b = buffer::<0x50>();
    put(&mut b, 0x04, &1u32.to_le_bytes());
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x30, &nonce);
    b
}

/// `sev_tio_dev_disconnect(dev_data, force)`: `struct sev_data_tio_dev_disconnect` (0x30):
/// flags @0x04 (FORCE bit 0), spdm_ctrl @0x08, dev_ctx_sla @0x28.
fn dev_disconnect_buf(d: &LinuxDev, force: bool) -> [u8; 0x30] {
    let mut b = buffer::<0x30>();
    put(&mut b, 0x04, &u32::from(force).to_le_bytes());
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    b
}

/// `sev_tio_dev_reclaim(dev_data)`: `struct sev_data_tio_dev_reclaim` (0x10): dev_ctx_sla
/// @0x08.
fn dev_reclaim_buf(d: &LinuxDev) -> [u8; 0x10] {
    let mut b = buffer::<0x10>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    b
}

/// `sev_tio_tdi_create(dev_data, tdi_data, dev_id, rseg)`: `struct sev_data_tio_tdi_create`
/// (0x30): dev_ctx_sla @0x08, tdi_ctx_sla @0x10, interface_id.function_id @0x18 =
/// `FIELD_PREP(TSM_TDISP_IID_REQUESTER_ID, dev_id)`, with RSEG and RSEG_VALID only for a
/// non-zero segment.
fn tdi_create_buf(d: &LinuxDev, t: &LinuxTdi, dev_id: u16, rseg: u8) -> [u8; 0x30] {
    let mut b = buffer::<0x30>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x10, &t.tdi_ctx.to_le_bytes());
    let mut function_id = u32::from(dev_id);
    if rseg != 0 {
        function_id |= u32::from(rseg) << 16 | 1 << 24;
    }
    put(&mut b, 0x18, &function_id.to_le_bytes());
    b
}

/// `sev_tio_tdi_bind(dev_data, tdi_data, guest_rid, gctx_paddr, asid, force_run)`: `struct
/// sev_data_tio_tdi_bind` (0x50): spdm_ctrl @0x08, dev_ctx_sla @0x28, tdi_ctx_sla @0x30,
/// gctx_paddr @0x38, guest_device_id @0x40 (the u32 `guest_rid` truncated), tdisp_lock_if_flags
/// @0x42 never set, run_flags @0x44 = RUN_FORCE iff `force_run`.
fn tdi_bind_buf(d: &LinuxDev, t: &LinuxTdi, guest_rid: u32, force_run: bool) -> [u8; 0x50] {
    let mut b = buffer::<0x50>();
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x30, &t.tdi_ctx.to_le_bytes());
    put(&mut b, 0x38, &t.gctx_paddr.to_le_bytes());
    put(&mut b, 0x40, &(guest_rid as u16).to_le_bytes());
    put(&mut b, 0x44, &u16::from(force_run).to_le_bytes());
    b
}

/// `sev_tio_tdi_unbind(dev_data, tdi_data, force)`: `struct sev_data_tio_tdi_unbind` (0x40):
/// flags @0x04 (FORCE bit 0), spdm_ctrl @0x08, dev_ctx_sla @0x28, tdi_ctx_sla @0x30,
/// gctx_paddr @0x38.
fn tdi_unbind_buf(d: &LinuxDev, t: &LinuxTdi, force: bool) -> [u8; 0x40] {
    let mut b = buffer::<0x40>();
    put(&mut b, 0x04, &u32::from(force).to_le_bytes());
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x30, &t.tdi_ctx.to_le_bytes());
    put(&mut b, 0x38, &t.gctx_paddr.to_le_bytes());
    b
}

/// `sev_tio_tdi_status(dev_data, tdi_data)`: `struct sev_data_tio_tdi_status` (0x40):
/// spdm_ctrl @0x08, dev_ctx_sla @0x28, tdi_ctx_sla @0x30, status_paddr @0x38 = data_pg.
fn tdi_status_buf(d: &LinuxDev, t: &LinuxTdi) -> [u8; 0x40] {
    let mut b = buffer::<0x40>();
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x30, &t.tdi_ctx.to_le_bytes());
    put(&mut b, 0x38, &d.data_pg.to_le_bytes());
    b
}

/// `sev_tio_tdi_reclaim(dev_data, tdi_data)`: `struct sev_data_tio_tdi_reclaim` (0x20):
/// dev_ctx_sla @0x08, tdi_ctx_sla @0x10.
fn tdi_reclaim_buf(d: &LinuxDev, t: &LinuxTdi) -> [u8; 0x20] {
    let mut b = buffer::<0x20>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x10, &t.tdi_ctx.to_le_bytes());
    b
}

/// `sev_tio_asid_fence_status(dev_data, device_id, segment_id, asid, fenced)`: `struct
/// sev_data_tio_asid_fence_status` (0x20, packed): dev_ctx_paddr @0x08, asid @0x10, status_pa
/// @0x14 = data_pg.
fn asid_fence_status_buf(d: &LinuxDev, asid: u32) -> [u8; 0x20] {
    let mut b = buffer::<0x20>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x10, &asid.to_le_bytes());
    put(&mut b, 0x14, &d.data_pg.to_le_bytes());
    b
}

/// `sev_tio_asid_fence_clear(dev_ctx, gctx_paddr, psp_ret)`: `struct
/// sev_data_tio_asid_fence_clear` (0x20): dev_ctx_paddr @0x08, gctx_paddr @0x10.
fn asid_fence_clear_buf(d: &LinuxDev, gctx: u64) -> [u8; 0x20] {
    let mut b = buffer::<0x20>();
    put(&mut b, 0x08, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x10, &gctx.to_le_bytes());
    b
}

/// `sev_tio_guest_request(dev_data, tdi_data, req, res)`: `struct
/// sev_data_tio_guest_request` (0x50): spdm_ctrl @0x08, dev_ctx_sla @0x28, tdi_ctx_sla @0x30,
/// gctx_paddr @0x38, req_paddr @0x40, res_paddr @0x48 (`guest_req_buf`, `guest_resp_buf`).
fn guest_request_buf(d: &LinuxDev, t: &LinuxTdi) -> [u8; 0x50] {
    let mut b = buffer::<0x50>();
    put_ctrl(&mut b, d);
    put(&mut b, 0x28, &d.dev_ctx.to_le_bytes());
    put(&mut b, 0x30, &t.tdi_ctx.to_le_bytes());
    put(&mut b, 0x38, &t.gctx_paddr.to_le_bytes());
    put(&mut b, 0x40, &d.guest_req_buf.to_le_bytes());
    put(&mut b, 0x48, &d.guest_resp_buf.to_le_bytes());
    b
}

// ---- the mailbox and the continuation loop ----------------------------------------------------

/// One command as Linux runs it: `sev_do_cmd` (the buffer copied back whatever the status),
/// then `sev_tio_do_cmd` / `sev_tio_spdm_cmd`: on the first SPDM_REQUEST the written-back
/// buffer is saved in `cmd_data` (128 bytes, 0xFF after the command), the request's data
/// type read (1 or 2, else the loop stops), `pci_doe` run, the response's data object length
/// and `payload_sz` written (`sev_tio_continue`), and the saved buffer issued again, as long as
/// the answer is SPDM_REQUEST. Returns the last outcome and the buffer as Linux holds it at the
/// end; every round's outcome goes to `log`.
fn linux_cmd(
    w: &mut World,
    id: abi::CommandId,
    bytes: &[u8],
    log: &mut Vec<(abi::CommandId, Outcome)>,
) -> (Outcome, Vec<u8>) {
    let n = bytes.len();
    let mut b = Buf([0; 256]);
    b.0[..n].copy_from_slice(bytes);
    let mut o = w.sev.command(&mut w.mem, id, &mut b.0[..n]);
    log.push((id, o));
    // `dev_data->cmd_data` (SEV_TIO_MAX_COMMAND_LENGTH).
    let mut cmd_data: Option<[u8; abi::MAX_COMMAND_LENGTH]> = None;
    let mut rounds = 0;
    while o.status == SevStatus::SPDM_REQUEST {
        rounds += 1;
        assert!(rounds < 64, "{id:#x}: a loop that never ends");
        let saved = cmd_data.get_or_insert_with(|| {
            let mut c = [0xFF; abi::MAX_COMMAND_LENGTH];
            c[..n].copy_from_slice(&b.0[..n]);
            c
        });
        // `sev_tio_do_cmd`'s data-type switch, then `pci_doe` and `sev_tio_continue`'s
        // response header; the model device always answers (Linux stops on `pci_doe` < 0).
        let mut t = [0u8; 1];
        w.mem.read(SPDM_REQ + 0x4A, &mut t).unwrap();
        assert!(
            t[0] == 1 || t[0] == 2,
            "{id:#x}: request data type {}",
            t[0]
        );
        crate::host::exchange(&mut w.mem, &saved[..n], &mut w.device).unwrap();
        b.0[..n].copy_from_slice(&saved[..n]);
        o = w.sev.command(&mut w.mem, id, &mut b.0[..n]);
        saved[..n].copy_from_slice(&b.0[..n]);
        log.push((id, o));
    }
    (o, b.0[..n].to_vec())
}

/// `sev_tio_spdm_cmd`'s verdict: 0 for SUCCESS, an error for anything else.
fn linux_ok(o: Outcome) -> bool {
    o.status == SevStatus::SUCCESS
}

/// What the flow needs of the world before Linux connects: the guest KVM launched (SNP
/// GCTX_CREATE and ACTIVATE, not TIO), and the buffers `spdm_ctrl_alloc` initialises:
/// `capacity_sz` in every SLA buffer (`sla_alloc`) and `dobj_response_init` in `resp`.
fn linux_world(d: &LinuxDev) -> Box<World> {
    let mut w = World::new();
    ok(w.cmd(&gctx_create(GCTX)));
    ok(w.cmd(&activate(GCTX, 5)));
    for s in d.ctrl {
        let page = SlaAddr::from_bits(s).address();
        w.mem.write(page, &4096u32.to_le_bytes()).unwrap();
    }
    crate::host::response_init(&mut w.mem, SPDM_RESP).unwrap();
    w
}

/// `dsm_create`'s DEV_CREATE: `pci_dev_id(pdev)`, the root port's LNKCAP port number (1 here),
/// the PCI domain. `bar_list`: this firmware's BAR list at 0x18, reserved in Linux's struct
/// (`None`: Linux's bytes exactly).
fn linux_dev_create(d: &LinuxDev, bar_list: Option<u64>) -> [u8; 0x20] {
    let mut b = dev_create_buf(d, rid(0).routing_id(), 1, 0);
    if let Some(at) = bar_list {
        put(&mut b, 0x18, &at.to_le_bytes());
    }
    b
}

/// `streams_setup` for one stream on TC0: `tc_mask` 1, `ids[0]` the host bridge's stream
/// index, the other seven 0xFF.
fn linux_stream_ids() -> [u8; 8] {
    let mut ids = [0xFF; 8];
    ids[0] = 0;
    ids
}

#[track_caller]
fn expect(log: &[(abi::CommandId, Outcome)], want: &[(abi::CommandId, SevStatus)]) {
    let got: Vec<(abi::CommandId, SevStatus)> = log.iter().map(|(c, o)| (*c, o.status)).collect();
    assert_eq!(got, want, "command and status of every round");
}

const SPDM: SevStatus = SevStatus::SPDM_REQUEST;
const OK: SevStatus = SevStatus::SUCCESS;

/// The whole flow as `sev-dev-tsm.c` runs it, with the three differences this firmware
/// needs of the host: DEV_CREATE names the BAR list at 0x18 (reserved in Linux's struct: a
/// device without BARs can bind nothing); `dsm_connect`'s DEV_MEASUREMENTS is skipped (not
/// implemented here); the TDI goes to RUN by the guest's own start message (TDI_START, ours,
/// through GUEST_REQUEST), not by `tdi_run`'s TDI_BIND with RUN_FORCE. Every other buffer is
/// Linux's byte for byte, and every buffer the firmware writes back ends as Linux sent it.
#[test]
fn linux_flow_through_the_dispatcher() {
    let d = linux_dev();
    let mut t = LinuxTdi {
        tdi_ctx: tdi_sla(),
        gctx_paddr: 0,
        asid: 0,
        unfence: false,
    };
    let mut w = linux_world(&d);
    let mut log = Vec::new();
    let run = |w: &mut World, id, bytes: &[u8], log: &mut Vec<_>| {
        let (o, back) = linux_cmd(w, id, bytes, log);
        if linux_ok(o) {
            assert_eq!(back, bytes, "{id:#x}: the buffer Linux gets back");
        }
        o
    };

    // dsm_connect: DEV_CREATE, DEV_CONNECT + loop (DEV_MEASUREMENTS skipped, see above).
    ok(run(
        &mut w,
        abi::TIO_DEV_CREATE,
        &linux_dev_create(&d, Some(BAR_LIST)),
        &mut log,
    ));
    let connect = dev_connect_buf(&d, 1, linux_stream_ids(), 0);
    ok(run(&mut w, abi::TIO_DEV_CONNECT, &connect, &mut log));
    expect(
        &log,
        &[(abi::TIO_DEV_CREATE, OK), (abi::TIO_DEV_CONNECT, OK)],
    );
    assert!(w.sev.dev_ctx(d.dev_ctx).unwrap().connected);

    // tdi_bind: TDI_CREATE, TDI_BIND(run_flags 0) + loop, TDI_STATUS + loop, status_fin.
    log.clear();
    t.gctx_paddr = GCTX;
    t.asid = 5;
    ok(run(
        &mut w,
        abi::TIO_TDI_CREATE,
        &tdi_create_buf(&d, &t, rid(0).routing_id(), 0),
        &mut log,
    ));
    ok(run(
        &mut w,
        abi::TIO_TDI_BIND,
        &tdi_bind_buf(&d, &t, u32::from(GDEV), false),
        &mut log,
    ));
    w.mem.write(d.data_pg, &[0xEE; 16]).unwrap();
    ok(run(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&d, &t),
        &mut log,
    ));
    // GET_VERSION, GET_CAPABILITIES, LOCK_INTERFACE, the report, then the state.
    expect(
        &log,
        &[
            (abi::TIO_TDI_CREATE, OK),
            (abi::TIO_TDI_BIND, SPDM),
            (abi::TIO_TDI_BIND, SPDM),
            (abi::TIO_TDI_BIND, SPDM),
            (abi::TIO_TDI_BIND, SPDM),
            (abi::TIO_TDI_BIND, OK),
            (abi::TIO_TDI_STATUS, SPDM),
            (abi::TIO_TDI_STATUS, OK),
        ],
    );
    // `sev_tio_tdi_status_fin`: length 0x10, tdisp_state 1 (CONFIG_LOCKED).
    let mut s = [0u8; 16];
    w.mem.read(d.data_pg, &mut s).unwrap();
    assert_eq!(
        (u32::from_le_bytes(s[..4].try_into().unwrap()), s[4]),
        (0x10, 1)
    );
    assert!(s[5..].iter().all(|b| *b == 0));
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigLocked);

    // The host maps the BAR's first 2M for the guest (ours: the host's RMPUPDATE).
    ok(w.cmd(&mmio_map(GPA, BAR, abi::MMIO_SIZE_2M)));

    // guest_request: the guest's message copied to guest_req_buf, GUEST_REQUEST + loop, the
    // answer read from guest_resp_buf.
    log.clear();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.mem
        .write(
            d.guest_req_buf,
            MsgHeader::new(msg::MSG_TDI_START_REQ, 16).as_bytes(),
        )
        .unwrap();
    w.mem
        .write(d.guest_req_buf + 0x60, start.as_bytes())
        .unwrap();
    ok(run(
        &mut w,
        abi::TIO_GUEST_REQUEST,
        &guest_request_buf(&d, &t),
        &mut log,
    ));
    expect(
        &log,
        &[(abi::TIO_GUEST_REQUEST, SPDM), (abi::TIO_GUEST_REQUEST, OK)],
    );
    let mut rsp = msg::TdiStartRsp::new_zeroed();
    w.mem
        .read(d.guest_resp_buf + 0x60, rsp.as_mut_bytes())
        .unwrap();
    assert_eq!((rsp.status.get(), rsp.guest_device_id.get()), (0, GDEV));
    assert_eq!(w.device.state(rid(0)), TdispState::Run);

    // tdi_unbind: TDI_UNBIND(0) + loop (FORCE if that fails), TDI_STATUS + loop,
    // TDI_RECLAIM, ASID_FENCE_STATUS, ASID_FENCE_CLEAR if fenced and unfence.
    log.clear();
    let o = run(
        &mut w,
        abi::TIO_TDI_UNBIND,
        &tdi_unbind_buf(&d, &t, false),
        &mut log,
    );
    if !linux_ok(o) {
        ok(run(
            &mut w,
            abi::TIO_TDI_UNBIND,
            &tdi_unbind_buf(&d, &t, true),
            &mut log,
        ));
    }
    // Linux's "hunk to verify transitioning to CONFIG_UNLOCKED": this firmware answers
    // INVALID_TDI_STATE for an unbound TDI (Linux logs "TDI status failed to read" and goes
    // on); see `where_linux_and_this_firmware_part`.
    let status = run(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&d, &t),
        &mut log,
    );
    assert_eq!(status.status, SevStatus::INVALID_TDI_STATE);
    // Linux ignores TDI_RECLAIM's status; it succeeds here.
    ok(run(
        &mut w,
        abi::TIO_TDI_RECLAIM,
        &tdi_reclaim_buf(&d, &t),
        &mut log,
    ));
    ok(run(
        &mut w,
        abi::TIO_ASID_FENCE_STATUS,
        &asid_fence_status_buf(&d, t.asid),
        &mut log,
    ));
    let mut word = [0u8; 8];
    w.mem.read(d.data_pg, &mut word).unwrap();
    let fenced = (u64::from_le_bytes(word) >> 2) & 3 == 3;
    assert!(!fenced, "the unbind's fence completed");
    if fenced && t.unfence {
        ok(run(
            &mut w,
            abi::TIO_ASID_FENCE_CLEAR,
            &asid_fence_clear_buf(&d, t.gctx_paddr),
            &mut log,
        ));
    }
    expect(
        &log,
        &[
            (abi::TIO_TDI_UNBIND, SPDM),
            (abi::TIO_TDI_UNBIND, OK),
            (abi::TIO_TDI_STATUS, SevStatus::INVALID_TDI_STATE),
            (abi::TIO_TDI_RECLAIM, OK),
            (abi::TIO_ASID_FENCE_STATUS, OK),
        ],
    );
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigUnlocked);

    // dsm_disconnect: DEV_DISCONNECT(force only when halting) + loop, DEV_RECLAIM.
    log.clear();
    ok(run(
        &mut w,
        abi::TIO_DEV_DISCONNECT,
        &dev_disconnect_buf(&d, false),
        &mut log,
    ));
    ok(run(
        &mut w,
        abi::TIO_DEV_RECLAIM,
        &dev_reclaim_buf(&d),
        &mut log,
    ));
    expect(
        &log,
        &[(abi::TIO_DEV_DISCONNECT, OK), (abi::TIO_DEV_RECLAIM, OK)],
    );
    assert!(w.sev.devices().is_empty() && w.sev.tdis().is_empty());
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entries().iter().all(|e| *e == RmpEntry::new()))
            .unwrap()
    );
}

/// What Linux's exact bytes meet where this firmware differs from the real one (each is a
/// divergence the report lists; none changes anything it should not):
/// 1. DEV_CREATE without a BAR list (Linux's reserved bytes at 0x15-0x1F): a device without
///    BARs, whose TDI's bind is refused once the report names ranges outside them.
/// 2. `dsm_connect`'s DEV_MEASUREMENTS: not implemented, INVALID_PARAM; Linux then fails the
///    connect and reclaims the device.
/// 3. `tdi_run`'s TDI_BIND with RUN_FORCE on a CONFIG_LOCKED TDI: INVALID_PARAM.
/// 4. After bind, the output SLA holds no report data object (id 6) for `tio_save_output`.
/// 5. With SME active, Linux's `__psp_pa` and `make_sla` (`__sme_set`) put the C-bit in every
///    address (bit 51 on EPYC, `sme_me_mask`): this firmware takes it as part of the address,
///    so the SPDM request page and the status page are INVALID_ADDRESS.
#[test]
fn where_linux_and_this_firmware_part() {
    let d = linux_dev();
    let t = LinuxTdi {
        tdi_ctx: tdi_sla(),
        gctx_paddr: GCTX,
        asid: 5,
        unfence: false,
    };

    // 1 and 2: dsm_connect with Linux's DEV_CREATE.
    let mut w = linux_world(&d);
    let mut log = Vec::new();
    ok(linux_cmd(
        &mut w,
        abi::TIO_DEV_CREATE,
        &linux_dev_create(&d, None),
        &mut log,
    )
    .0);
    assert!(
        w.sev
            .tsm()
            .snapshot()
            .unwrap()
            .devices
            .iter()
            .flatten()
            .all(|dev| dev.bars.is_empty())
    );
    let connect = dev_connect_buf(&d, 1, linux_stream_ids(), 0);
    ok(linux_cmd(&mut w, abi::TIO_DEV_CONNECT, &connect, &mut log).0);
    let before = w.state();
    let meas = dev_measurements_buf(&d, [0x5A; 32]);
    let (o, back) = linux_cmd(&mut w, 0xD7, &meas, &mut log);
    assert_eq!(o.status, SevStatus::INVALID_PARAM, "DEV_MEASUREMENTS");
    assert_eq!(back, meas);
    same(&before, &w.state(), "DEV_MEASUREMENTS");
    // Linux's `free_exit`: DEV_RECLAIM of the connected device.
    ok(linux_cmd(&mut w, abi::TIO_DEV_RECLAIM, &dev_reclaim_buf(&d), &mut log).0);
    assert!(w.sev.devices().is_empty());

    // 1: were the connect to go on, the bind of a device without BARs fails at the report.
    let mut w = linux_world(&d);
    ok(w.raw(abi::TIO_DEV_CREATE, &linux_dev_create(&d, None)));
    ok(w.raw(abi::TIO_DEV_CONNECT, &connect));
    ok(w.raw(
        abi::TIO_TDI_CREATE,
        &tdi_create_buf(&d, &t, rid(0).routing_id(), 0),
    ));
    let mut log = Vec::new();
    let (o, _) = linux_cmd(
        &mut w,
        abi::TIO_TDI_BIND,
        &tdi_bind_buf(&d, &t, u32::from(GDEV), false),
        &mut log,
    );
    assert_eq!(
        o,
        Outcome::from_core(Err(Error::RangeOutsideDevice)),
        "{log:?}"
    );
    assert_eq!(w.sev.tsm().tdi(w.tdi()).unwrap().state, TdiState::Unbound);

    // 3 and 4: a bound TDI (BAR list given), then tdi_run's TDI_STATUS and RUN_FORCE bind.
    let mut w = linux_world(&d);
    ok(w.raw(abi::TIO_DEV_CREATE, &linux_dev_create(&d, Some(BAR_LIST))));
    ok(w.raw(abi::TIO_DEV_CONNECT, &connect));
    ok(w.raw(
        abi::TIO_TDI_CREATE,
        &tdi_create_buf(&d, &t, rid(0).routing_id(), 0),
    ));
    let mut log = Vec::new();
    ok(linux_cmd(
        &mut w,
        abi::TIO_TDI_BIND,
        &tdi_bind_buf(&d, &t, u32::from(GDEV), false),
        &mut log,
    )
    .0);
    let mut out = [0u8; 0x50];
    w.mem
        .read(SlaAddr::from_bits(d.ctrl[3]).address(), &mut out)
        .unwrap();
    assert_ne!(
        u32::from_le_bytes(out[0x40..0x44].try_into().unwrap()),
        6,
        "a report data object in the output SLA: drop divergence 4"
    );
    ok(linux_cmd(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&d, &t),
        &mut log,
    )
    .0);
    let before = w.state();
    let run_force = tdi_bind_buf(&d, &t, u32::from(GDEV), true);
    let (o, back) = linux_cmd(&mut w, abi::TIO_TDI_BIND, &run_force, &mut log);
    assert_eq!(o.status, SevStatus::INVALID_PARAM, "TDI_BIND RUN_FORCE");
    assert_eq!(back, run_force);
    same(&before, &w.state(), "TDI_BIND RUN_FORCE");

    // 5: the C-bit in the SPDM SLAs and in data_pg (a TDI_STATUS of the bound TDI).
    const C_BIT: u64 = 1 << 51;
    let mut sme = d;
    for s in &mut sme.ctrl {
        *s = sla((SlaAddr::from_bits(*s).address() | C_BIT) >> 12);
    }
    let before = w.state();
    let o = linux_cmd(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&sme, &t),
        &mut log,
    )
    .0;
    assert_eq!(o.status, SevStatus::INVALID_ADDRESS, "C-bit in spdm_ctrl");
    sme.ctrl = d.ctrl;
    sme.data_pg |= C_BIT;
    let o = linux_cmd(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&sme, &t),
        &mut log,
    )
    .0;
    assert_eq!(
        o.status,
        SevStatus::INVALID_ADDRESS,
        "C-bit in status_paddr"
    );
    same(&before, &w.state(), "C-bit");
}
