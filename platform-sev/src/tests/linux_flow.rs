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
//! The flow runs twice: with plain addresses, and with SME active (the C-bit in every address
//! Linux passes). The one step Linux's host does not take is the guest's: this firmware hears
//! the guest's RUN request through a guest message of ours (TDI_RUN_REQ), relayed by Linux's
//! own `guest_request`, before `tdi_run`'s TDI_BIND with RUN_FORCE. The refusals that stay are
//! in `what_linux_bytes_are_refused_for`.

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
/// the PCI domain; reserved bytes 0x15-0x1F zero (no BAR list).
fn linux_dev_create(d: &LinuxDev) -> [u8; 0x20] {
    dev_create_buf(d, rid(0).routing_id(), 1, 0)
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

/// The C-bit as Linux's `__psp_pa` and `__sme_set` put it on an EPYC part (`sme_me_mask`).
const C_BIT: u64 = 1 << 51;

/// An address as the world's memory knows it (the C-bit stripped).
fn plain(a: u64) -> u64 {
    a & !C_BIT
}

/// `d` and `t` with the C-bit in every address, as Linux fills them with SME active.
fn with_c_bit(d: &LinuxDev, t: &LinuxTdi) -> (LinuxDev, LinuxTdi) {
    let mut d = *d;
    let mut t = *t;
    d.dev_ctx |= C_BIT;
    for s in &mut d.ctrl {
        *s |= C_BIT;
    }
    d.data_pg |= C_BIT;
    d.guest_req_buf |= C_BIT;
    d.guest_resp_buf |= C_BIT;
    t.tdi_ctx |= C_BIT;
    t.gctx_paddr |= C_BIT;
    (d, t)
}

/// The SLA buffer of `s` from its `payload_sz` on: (`payload_sz`, data object id, its length,
/// the object's header and payload).
fn output_object(w: &World, s: u64) -> (u32, u32, u32, Vec<u8>) {
    let mut page = vec![0u8; 4096];
    w.mem
        .read(plain(SlaAddr::from_bits(plain(s)).address()), &mut page)
        .unwrap();
    let word = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().unwrap());
    let len = word(0x44) as usize;
    (
        word(4),
        word(0x40),
        word(0x44),
        page[0x40..0x40 + len].to_vec(),
    )
}

/// The guest's message `ty` with `body` in Linux's `guest_req_buf`, as the guest's encrypted
/// request arrives there (our model does not encrypt).
fn guest_message(w: &mut World, d: &LinuxDev, ty: u8, body: &[u8]) {
    let at = plain(d.guest_req_buf);
    w.mem
        .write(at, MsgHeader::new(ty, body.len()).as_bytes())
        .unwrap();
    w.mem.write(at + 0x60, body).unwrap();
}

/// The guest's RUN request for its TDI `GDEV` (ours: TDI_RUN_REQ), through Linux's
/// `guest_request` (GUEST_REQUEST + loop); the answer from `guest_resp_buf`.
fn guest_asks_run(
    w: &mut World,
    d: &LinuxDev,
    t: &LinuxTdi,
    log: &mut Vec<(abi::CommandId, Outcome)>,
) -> msg::TdiStartRsp {
    let mut req = msg::TdiReq::new_zeroed();
    req.guest_device_id = GDEV.into();
    guest_message(w, d, msg::MSG_TDI_RUN_REQ, req.as_bytes());
    let (o, _) = linux_cmd(w, abi::TIO_GUEST_REQUEST, &guest_request_buf(d, t), log);
    ok(o);
    let mut rsp = msg::TdiStartRsp::new_zeroed();
    w.mem
        .read(plain(d.guest_resp_buf) + 0x60, rsp.as_mut_bytes())
        .unwrap();
    rsp
}

/// The whole flow as `sev-dev-tsm.c` runs it, every buffer Linux's byte for byte (`sme`: the
/// C-bit in every address): connect with DEV_MEASUREMENTS, bind with the report saved, the
/// guest's RUN request, `tdi_run`, unbind with CONFIG_UNLOCKED read back, disconnect.
fn linux_flow(sme: bool) {
    let d = linux_dev();
    let t = LinuxTdi {
        tdi_ctx: tdi_sla(),
        gctx_paddr: GCTX,
        asid: 5,
        unfence: false,
    };
    let (d, mut t) = if sme { with_c_bit(&d, &t) } else { (d, t) };
    let mut w = linux_world(&linux_dev());
    let mut log = Vec::new();
    let run = |w: &mut World, id, bytes: &[u8], log: &mut Vec<_>| {
        let (o, back) = linux_cmd(w, id, bytes, log);
        if linux_ok(o) {
            assert_eq!(back, bytes, "{id:#x}: the buffer Linux gets back");
        }
        o
    };

    // dsm_connect: DEV_CREATE (no BARs), DEV_CONNECT + loop, DEV_MEASUREMENTS(nonce) + loop.
    ok(run(
        &mut w,
        abi::TIO_DEV_CREATE,
        &linux_dev_create(&d),
        &mut log,
    ));
    let connect = dev_connect_buf(&d, 1, linux_stream_ids(), 0);
    ok(run(&mut w, abi::TIO_DEV_CONNECT, &connect, &mut log));
    // `tio_save_output`: a certificate object (id 4), no chain in this model.
    let (payload, id, len, _) = output_object(&w, d.ctrl[3]);
    assert_eq!((payload, id, len), (0x20, 4, 0x20));
    ok(run(
        &mut w,
        abi::TIO_DEV_MEASUREMENTS,
        &dev_measurements_buf(&d, [0x5A; 32]),
        &mut log,
    ));
    expect(
        &log,
        &[
            (abi::TIO_DEV_CREATE, OK),
            (abi::TIO_DEV_CONNECT, OK),
            (abi::TIO_DEV_MEASUREMENTS, OK),
        ],
    );
    let dev = w.sev.dev_ctx(plain(d.dev_ctx)).unwrap();
    assert!(dev.connected);
    assert!(
        w.sev
            .tsm()
            .snapshot()
            .unwrap()
            .devices
            .iter()
            .flatten()
            .all(|x| !x.bars_listed)
    );
    // `tio_save_output`: a measurement object (id 5) for the device, no records in this model.
    let (payload, id, len, obj) = output_object(&w, d.ctrl[3]);
    assert_eq!((payload, id, len), (0x20, 5, 0x20));
    assert_eq!(
        (
            u16::from_le_bytes([obj[0x10], obj[0x11]]),
            obj[0x12],
            obj[0x13]
        ),
        (rid(0).routing_id(), 0, 1)
    );
    let mut cap = [0u8; 4];
    w.mem
        .read(SlaAddr::from_bits(plain(d.ctrl[3])).address(), &mut cap)
        .unwrap();
    assert_eq!(u32::from_le_bytes(cap), 4096, "capacity_sz is the host's");

    // tdi_bind: TDI_CREATE, TDI_BIND(run_flags 0) + loop, the report saved, TDI_STATUS + loop.
    log.clear();
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
    // `tio_save_output`: the interface report (id 6) with every range the core claimed.
    let ranges = w.sev.tsm().owned_ranges(w.tdi()).unwrap();
    let (payload, id, len, obj) = output_object(&w, d.ctrl[3]);
    assert_eq!((id, len as usize), (6, 0x20 + 16 + 16 * ranges.len() + 4));
    assert_eq!(payload, (len + 31) & !31);
    assert_eq!(
        (
            u16::from_le_bytes([obj[0x10], obj[0x11]]),
            obj[0x12],
            obj[0x13]
        ),
        (rid(0).routing_id(), 0, 1)
    );
    let report = &obj[0x20..];
    assert_eq!(
        u32::from_le_bytes(report[12..16].try_into().unwrap()) as usize,
        ranges.len()
    );
    for (i, r) in ranges.iter().enumerate() {
        let e = &report[16 + 16 * i..32 + 16 * i];
        assert_eq!(
            (
                u64::from_le_bytes(e[..8].try_into().unwrap()),
                u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap())),
                u16::from_le_bytes([e[14], e[15]]) as usize
            ),
            (r.base().as_u64() >> 12, r.pages(), i)
        );
    }
    w.mem.write(plain(d.data_pg), &[0xEE; 16]).unwrap();
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
    let status = |w: &World| {
        let mut s = [0u8; 16];
        w.mem.read(plain(d.data_pg), &mut s).unwrap();
        assert!(s[5..].iter().all(|b| *b == 0));
        (u32::from_le_bytes(s[..4].try_into().unwrap()), s[4])
    };
    // `sev_tio_tdi_status_fin`: length 0x10, tdisp_state 1 (CONFIG_LOCKED).
    assert_eq!(status(&w), (0x10, 1));
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigLocked);

    // The host maps the BAR's first 2M for the guest (ours: the host's RMPUPDATE).
    ok(w.cmd(&mmio_map(GPA, BAR, abi::MMIO_SIZE_2M)));

    // The guest asks for RUN: its message (ours) through Linux's guest_request, then the
    // GHCB exit Linux's guest takes runs `tdi_run`: TDI_STATUS + loop, and, CONFIG_LOCKED,
    // TDI_BIND(RUN_FORCE) + loop (START_INTERFACE), `unfence` remembered.
    log.clear();
    let rsp = guest_asks_run(&mut w, &d, &t, &mut log);
    assert_eq!((rsp.status.get(), rsp.guest_device_id.get()), (0, GDEV));
    assert!(w.sev.tdi_ctx(plain(t.tdi_ctx)).unwrap().run_requested);
    ok(run(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&d, &t),
        &mut log,
    ));
    assert_eq!(status(&w), (0x10, 1));
    ok(run(
        &mut w,
        abi::TIO_TDI_BIND,
        &tdi_bind_buf(&d, &t, u32::from(GDEV), true),
        &mut log,
    ));
    t.unfence = true;
    expect(
        &log,
        &[
            (abi::TIO_GUEST_REQUEST, OK),
            (abi::TIO_TDI_STATUS, SPDM),
            (abi::TIO_TDI_STATUS, OK),
            (abi::TIO_TDI_BIND, SPDM),
            (abi::TIO_TDI_BIND, OK),
        ],
    );
    assert_eq!(w.device.state(rid(0)), TdispState::Run);
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Run { .. }
    ));
    assert!(!w.sev.tdi_ctx(plain(t.tdi_ctx)).unwrap().run_requested);

    // The guest, running, enables DMA as the SEV-TIO guest patch does after RUN: its
    // TIO_MSG_SDTE_WRITE_REQ (V, IR, IW, VMPL 0, vTOM_EN, vTOM 0x7fffffff) through Linux's
    // guest_request; the firmware points the sDTE at the guest's ASID.
    log.clear();
    let mut sdte = crate::sdte::Sdte::default();
    sdte.q[0] = (crate::sdte::Q0_V | crate::sdte::Q0_IR | crate::sdte::Q0_IW).into();
    sdte.q[5] = (crate::sdte::Q5_VTOM_EN | (0x7fff_ffff << 1)).into();
    let mut req = msg::SdteWriteReq::new_zeroed();
    req.guest_device_id = GDEV.into();
    req.sdte = sdte;
    guest_message(&mut w, &d, msg::MSG_SDTE_WRITE_REQ, req.as_bytes());
    ok(run(
        &mut w,
        abi::TIO_GUEST_REQUEST,
        &guest_request_buf(&d, &t),
        &mut log,
    ));
    let mut rsp = msg::SdteWriteRsp::new_zeroed();
    w.mem
        .read(plain(d.guest_resp_buf) + 0x60, rsp.as_mut_bytes())
        .unwrap();
    assert_eq!(rsp.status.get(), msg::SdteWriteStatus::Success as u16);
    let g = w.sev.tdi_ctx(plain(t.tdi_ctx)).unwrap();
    let owner = w.sev.tsm().tdi(g.tdi).unwrap().state.owner().unwrap();
    assert_eq!(
        w.sev.tsm().dma_reach(g.tdi).unwrap(),
        tsm_core::dma::DmaReach::Private(owner)
    );

    // tdi_unbind: TDI_UNBIND(0) + loop (FORCE if that fails), TDI_STATUS + loop (the
    // transition to CONFIG_UNLOCKED verified), TDI_RECLAIM, ASID_FENCE_STATUS,
    // ASID_FENCE_CLEAR if fenced and unfence.
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
    w.mem.write(plain(d.data_pg), &[0xEE; 16]).unwrap();
    ok(run(
        &mut w,
        abi::TIO_TDI_STATUS,
        &tdi_status_buf(&d, &t),
        &mut log,
    ));
    assert_eq!(status(&w), (0x10, 0), "CONFIG_UNLOCKED");
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
    w.mem.read(plain(d.data_pg), &mut word).unwrap();
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
            (abi::TIO_TDI_STATUS, OK),
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

#[test]
fn linux_flow_through_the_dispatcher() {
    linux_flow(false);
}

#[test]
fn linux_flow_with_sme_active() {
    linux_flow(true);
}

/// A world where Linux has connected the device (no BARs) and created its TDI.
fn linux_created(d: &LinuxDev, t: &LinuxTdi) -> Box<World> {
    let mut w = linux_world(d);
    ok(w.raw(abi::TIO_DEV_CREATE, &linux_dev_create(d)));
    ok(w.raw(
        abi::TIO_DEV_CONNECT,
        &dev_connect_buf(d, 1, linux_stream_ids(), 0),
    ));
    ok(w.raw(
        abi::TIO_TDI_CREATE,
        &tdi_create_buf(d, t, rid(0).routing_id(), 0),
    ));
    w
}

/// The refusals Linux's exact bytes can still meet, each for a reason a real PSP has too, each
/// changing nothing: a device without BARs whose report names system memory; RUN_FORCE
/// before the guest asked, on an unbound TDI, on another guest's, or with other IDs; the
/// guest's RUN request for a TDI it does not name; DEV_MEASUREMENTS before DEV_CONNECT or
/// with no output SLA; a bind whose output SLA is device MMIO; the C-bit does not excuse an
/// address past 2^52.
#[test]
fn what_linux_bytes_are_refused_for() {
    let d = linux_dev();
    let t = LinuxTdi {
        tdi_ctx: tdi_sla(),
        gctx_paddr: GCTX,
        asid: 5,
        unfence: false,
    };
    let bind = tdi_bind_buf(&d, &t, u32::from(GDEV), false);
    let run_force = tdi_bind_buf(&d, &t, u32::from(GDEV), true);

    // A device without a BAR list: a report naming system memory (reserved) is refused once
    // it is in; nothing is bound.
    let mut w = linux_created(&d, &t);
    w.device
        .report_ranges(rid(0), &[MmioRange::from_raw(MEM, 1).unwrap()]);
    let tdi = w.tdi();
    refused_relayed(&mut w, Error::ReservedMemory, tdi, |w| {
        linux_cmd(w, abi::TIO_TDI_BIND, &bind, &mut Vec::new()).0
    });
    assert_eq!(w.sev.tsm().tdi(tdi).unwrap().state, TdiState::Unbound);
    // Two overlapping ranges: the ownership check's.
    w.device.report_ranges(
        rid(0),
        &[
            MmioRange::from_raw(BAR, 2).unwrap(),
            MmioRange::from_raw(BAR + 0x1000, 1).unwrap(),
        ],
    );
    refused_relayed(&mut w, Error::RangesOverlap, tdi, |w| {
        linux_cmd(w, abi::TIO_TDI_BIND, &bind, &mut Vec::new()).0
    });

    // RUN_FORCE: on an unbound TDI; bound, before the guest asked; with another ID; from
    // another guest's context; after the TDI runs.
    let mut w = linux_created(&d, &t);
    refused(&mut w, Error::TdiNotBound, |w| {
        w.raw(abi::TIO_TDI_BIND, &run_force)
    });
    ok(linux_cmd(&mut w, abi::TIO_TDI_BIND, &bind, &mut Vec::new()).0);
    let before = w.state();
    let (o, back) = linux_cmd(&mut w, abi::TIO_TDI_BIND, &run_force, &mut Vec::new());
    assert_eq!(
        o.status,
        SevStatus::INVALID_GUEST_STATE,
        "RUN_FORCE unasked"
    );
    assert_eq!(back, run_force);
    same(&before, &w.state(), "RUN_FORCE unasked");
    // The guest names another TDI: answered INVALID_PARAM, nothing recorded.
    let mut req = msg::TdiReq::new_zeroed();
    req.guest_device_id = (GDEV + 1).into();
    guest_message(&mut w, &d, msg::MSG_TDI_RUN_REQ, req.as_bytes());
    ok(linux_cmd(
        &mut w,
        abi::TIO_GUEST_REQUEST,
        &guest_request_buf(&d, &t),
        &mut Vec::new(),
    )
    .0);
    let mut rsp = msg::TdiStartRsp::new_zeroed();
    w.mem
        .read(d.guest_resp_buf + 0x60, rsp.as_mut_bytes())
        .unwrap();
    assert_eq!(rsp.status.get(), SevStatus::INVALID_PARAM.0);
    assert!(!w.sev.tdi_ctx(t.tdi_ctx).unwrap().run_requested);
    // Asked; then RUN_FORCE with another guest device ID or lock flags, or naming another
    // guest: refused, the request kept.
    assert_eq!(
        guest_asks_run(&mut w, &d, &t, &mut Vec::new()).status.get(),
        0
    );
    let mut other_id = run_force;
    other_id[0x40..0x42].copy_from_slice(&(GDEV + 1).to_le_bytes());
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.raw(abi::TIO_TDI_BIND, &other_id)
    });
    let mut other_flags = run_force;
    other_flags[0x42] = 1;
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.raw(abi::TIO_TDI_BIND, &other_flags)
    });
    ok(w.cmd(&gctx_create(GCTX2)));
    ok(w.cmd(&activate(GCTX2, 6)));
    let mut other_guest = run_force;
    other_guest[0x38..0x40].copy_from_slice(&GCTX2.to_le_bytes());
    refused(&mut w, Error::NotOwner, |w| {
        w.raw(abi::TIO_TDI_BIND, &other_guest)
    });
    assert!(w.sev.tdi_ctx(t.tdi_ctx).unwrap().run_requested);
    // An unbind ends the request: bound again, RUN_FORCE waits for the guest again.
    ok(linux_cmd(
        &mut w,
        abi::TIO_TDI_UNBIND,
        &tdi_unbind_buf(&d, &t, false),
        &mut Vec::new(),
    )
    .0);
    assert!(!w.sev.tdi_ctx(t.tdi_ctx).unwrap().run_requested);
    ok(linux_cmd(&mut w, abi::TIO_TDI_BIND, &bind, &mut Vec::new()).0);
    refused(&mut w, SevStatus::INVALID_GUEST_STATE, |w| {
        w.raw(abi::TIO_TDI_BIND, &run_force)
    });
    assert_eq!(
        guest_asks_run(&mut w, &d, &t, &mut Vec::new()).status.get(),
        0
    );
    ok(linux_cmd(&mut w, abi::TIO_TDI_BIND, &run_force, &mut Vec::new()).0);
    // Running: a second RUN_FORCE is not CONFIG_LOCKED; the guest's RUN request is answered
    // SUCCESS and not recorded.
    assert_eq!(
        guest_asks_run(&mut w, &d, &t, &mut Vec::new()).status.get(),
        0
    );
    assert!(!w.sev.tdi_ctx(t.tdi_ctx).unwrap().run_requested);
    refused(&mut w, SevStatus::INVALID_TDI_STATE, |w| {
        w.raw(abi::TIO_TDI_BIND, &run_force)
    });

    // DEV_MEASUREMENTS: before DEV_CONNECT; with no output SLA.
    let mut w = linux_world(&d);
    ok(w.raw(abi::TIO_DEV_CREATE, &linux_dev_create(&d)));
    let meas = dev_measurements_buf(&d, [0x5A; 32]);
    refused(&mut w, SevStatus::INVALID_DEV_STATE, |w| {
        w.raw(abi::TIO_DEV_MEASUREMENTS, &meas)
    });
    ok(w.raw(
        abi::TIO_DEV_CONNECT,
        &dev_connect_buf(&d, 1, linux_stream_ids(), 0),
    ));
    let mut no_out = meas;
    no_out[0x20..0x28].fill(0);
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.raw(abi::TIO_DEV_MEASUREMENTS, &no_out)
    });

    // A connect whose output SLA is device MMIO: refused before the stream is set up.
    let mut w = linux_world(&d);
    ok(w.raw(abi::TIO_DEV_CREATE, &linux_dev_create(&d)));
    let mut mmio_out = d;
    mmio_out.ctrl[3] = sla(BAR >> 12);
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.raw(
            abi::TIO_DEV_CONNECT,
            &dev_connect_buf(&mmio_out, 1, linux_stream_ids(), 0),
        )
    });

    // A bind whose output SLA is device MMIO: refused before the device is asked.
    let mut w = linux_created(&d, &t);
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.raw(
            abi::TIO_TDI_BIND,
            &tdi_bind_buf(&mmio_out, &t, u32::from(GDEV), false),
        )
    });

    // The C-bit is stripped, nothing else: bit 52 is still past the address space.
    let (sme, _) = with_c_bit(&d, &t);
    let mut past = sme;
    past.data_pg |= 1 << 52;
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| {
        w.raw(abi::TIO_TDI_STATUS, &tdi_status_buf(&past, &t))
    });
    let mut past = sme;
    past.dev_ctx |= 1 << 52;
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.raw(abi::TIO_TDI_STATUS, &tdi_status_buf(&past, &t))
    });
}
