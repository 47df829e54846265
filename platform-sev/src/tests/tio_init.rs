//! TIO_STATUS (0xD0) and TIO_INIT (0xD1) as Linux issues them (sev-dev-tio.c
//! `sev_tio_init_locked`, AMDESE/linux-kvm @16f379f5; sev-linux-buffers.md sections 4 and 5),
//! and the TIO_INIT every other TIO command needs.

use super::*;
use crate::host;
use crate::relay;
use zerocopy::FromBytes;

/// TIO_STATUS exactly as `sev_tio_init_locked` fills it: `.length = sizeof(data_status)`
/// (0x10), reserved 0, `status_paddr = __psp_pa(tio_status_page)`.
fn linux_tio_status(status_page: u64) -> [u8; 0x10] {
    let mut b = [0u8; 0x10];
    b[0] = 0x10;
    b[8..16].copy_from_slice(&status_page.to_le_bytes());
    b
}

/// TIO_INIT exactly as Linux fills it: `struct sev_data_tio_init ti = { .length = sizeof(ti) }`.
fn linux_tio_init() -> [u8; 0x10] {
    let mut b = [0u8; 0x10];
    b[0] = 0x10;
    b
}

/// `struct sev_tio_status` as this firmware must write it, byte for byte: length 0x40, flags
/// (bit 0 `tio_en`, bit 1 `tio_init_done`), then the sizes, each one 4K page, then
/// `tio_crypto_alg` 0 and 12 reserved bytes.
fn golden_status(init_done: bool) -> [u8; 0x40] {
    let mut g = [0u8; 0x40];
    g[0] = 0x40;
    g[4] = if init_done { 0b11 } else { 0b01 };
    for off in (0x08..=0x2C).step_by(4) {
        g[off..off + 4].copy_from_slice(&4096u32.to_le_bytes());
    }
    g
}

fn status_page(w: &World) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    w.mem.read(TIO_STATUS_PAGE, &mut v).unwrap();
    v
}

#[test]
fn linux_init_sequence_byte_for_byte() {
    let mut w = World::uninitialised();
    // Page bytes the firmware must not touch past the status it writes.
    w.mem.write(TIO_STATUS_PAGE, &[0xAA; 4096]).unwrap();

    // TIO_STATUS: tio_en, not initialised. The command buffer is not written back.
    let sent = linux_tio_status(TIO_STATUS_PAGE);
    let mut b = Buf([0; 256]);
    b.0[..0x10].copy_from_slice(&sent);
    ok(w.sev.command(&mut w.mem, abi::TIO_STATUS, &mut b.0[..0x10]));
    assert_eq!(b.0[..0x10], sent);
    let page = status_page(&w);
    assert_eq!(page[..0x40], golden_status(false));
    assert!(page[0x40..].iter().all(|x| *x == 0xAA), "past the status");
    assert!(!w.sev.tio_init_done());

    // TIO_INIT, then TIO_STATUS again with the same buffer: tio_init_done.
    let mut i = Buf([0; 256]);
    i.0[..0x10].copy_from_slice(&linux_tio_init());
    ok(w.sev.command(&mut w.mem, abi::TIO_INIT, &mut i.0[..0x10]));
    assert_eq!(i.0[..0x10], linux_tio_init());
    ok(w.sev.command(&mut w.mem, abi::TIO_STATUS, &mut b.0[..0x10]));
    assert_eq!(status_page(&w)[..0x40], golden_status(true));
    assert!(w.sev.tio_init_done());

    // What Linux checks: length >= 0x30, flags bits 31:2 clear.
    let s = abi::TioStatusData::read_from_bytes(&status_page(&w)[..0x40]).unwrap();
    assert!(s.length.get() >= host::TIO_STATUS_MIN_LEN);
    assert_eq!(s.flags.get() & !0b11, 0);
}

#[test]
fn host_tio_init_runs_as_linux_and_refuses_a_second_time() {
    let mut w = World::uninitialised();
    let s = host::tio_init(&mut w.sev, &mut w.mem, TIO_STATUS_PAGE).unwrap();
    assert_eq!(s.as_bytes(), golden_status(true));
    // Linux reads `tio_init_done` and does not initialise again (-EBUSY).
    let before = w.state();
    assert_eq!(
        host::tio_init(&mut w.sev, &mut w.mem, TIO_STATUS_PAGE).err(),
        Some(host::InitError::AlreadyInitialised)
    );
    same(&before, &w.state(), "a second Linux init");
}

#[test]
fn the_sizes_reported_are_the_sizes_checked() {
    let w = World::new();
    let page = status_page(&w);
    let s = abi::TioStatusData::read_from_bytes(&page[..0x40]).unwrap();
    // Each size is the constant the firmware checks its buffers against.
    assert_eq!(s.spdm_req_size_max.get(), abi::SPDM_REQ_SIZE);
    assert_eq!(s.spdm_rsp_size_max.get(), abi::SPDM_RSP_SIZE);
    assert_eq!(s.spdm_scratch_size_max.get(), abi::SPDM_SCRATCH_SIZE);
    assert_eq!(s.spdm_out_size_max.get(), abi::SPDM_OUT_SIZE);
    assert_eq!(s.devctx_size.get(), abi::DEV_CTX_SIZE);
    assert_eq!(s.tdictx_size.get(), abi::TDI_CTX_SIZE);
    // Linux relays answers of at most `spdm_req_size_max - 0x50` bytes into a buffer of
    // `spdm_req_size_max`: the firmware's window holds the whole buffer it reads.
    assert!(relay::WINDOW <= s.spdm_req_size_max.get() as usize);
    assert!(relay::WINDOW <= s.spdm_rsp_size_max.get() as usize);
    // A buffer of each reported size is one 4K data page, which the firmware takes; a
    // 2M page or a scatter list for it is refused.
    for size in [
        s.spdm_req_size_max.get(),
        s.spdm_rsp_size_max.get(),
        s.spdm_scratch_size_max.get(),
        s.spdm_out_size_max.get(),
        s.devctx_size.get(),
        s.tdictx_size.get(),
    ] {
        assert!(abi::SlaAddr::checked(dev_sla(), size).is_ok());
        assert!(abi::SlaAddr::checked(dev_sla() | 1, size).is_err());
        assert!(abi::SlaAddr::checked(dev_sla() | 2, size).is_err());
        assert!(abi::SlaAddr::checked(dev_sla(), size + 1).is_err());
    }
}

#[test]
fn every_tio_command_before_tio_init_is_invalid_platform_state_and_changes_nothing() {
    let mut w = World::uninitialised();
    // The SNP guest-context commands are SNP's: they need no TIO_INIT.
    ok(w.cmd(&gctx_create(GCTX)));
    ok(w.cmd(&activate(GCTX, 5)));
    let buffers: Vec<(abi::CommandId, Vec<u8>)> = vec![
        (abi::TIO_DEV_CREATE, dev_create().as_bytes().to_vec()),
        (abi::TIO_DEV_CONNECT, dev_connect().as_bytes().to_vec()),
        (abi::TIO_DEV_RECLAIM, dev_reclaim().as_bytes().to_vec()),
        (abi::TIO_TDI_CREATE, tdi_create().as_bytes().to_vec()),
    ];
    for (id, bytes) in &buffers {
        refused(&mut w, SevStatus::INVALID_PLATFORM_STATE, |w| {
            w.raw(*id, bytes)
        });
    }
    // Every command that needs it, whatever its buffer says (the platform state is checked
    // before the buffer), the relaying ones without their FLAG_CONTINUE written back.
    let needing: Vec<_> = abi::IMPLEMENTED
        .into_iter()
        .filter(|id| abi::needs_tio_init(*id))
        .collect();
    // The exemptions, stated here on their own: SNP's guest-context commands and the two
    // that set TIO up. A command wrongly exempted would otherwise just not be tried.
    assert_eq!(
        abi::BEFORE_TIO_INIT,
        [
            abi::SNP_DECOMMISSION,
            abi::SNP_ACTIVATE,
            abi::SNP_GCTX_CREATE,
            abi::TIO_STATUS,
            abi::TIO_INIT
        ]
    );
    assert_eq!(needing.len(), abi::IMPLEMENTED.len() - 5);
    for id in needing {
        for fill in [0u8, 0xFF] {
            let mut b = Buf([fill; 256]);
            b.0[..4].copy_from_slice(&0x50u32.to_le_bytes());
            let before = w.state();
            let sent = b.0;
            let o = w.sev.command(&mut w.mem, id, &mut b.0[..0x50]);
            assert_eq!(
                o,
                Outcome::plain(SevStatus::INVALID_PLATFORM_STATE),
                "{id:#x}"
            );
            assert_eq!(b.0, sent, "{id:#x}: buffer written");
            same(&before, &w.state(), format_args!("{id:#x} before TIO_INIT"));
        }
    }
    // Unknown commands stay INVALID_PARAM.
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.raw(0xD9, &[0x10, 0, 0, 0, 0, 0, 0, 0])
    });
    // After TIO_INIT the same buffers work.
    ok(w.raw(abi::TIO_INIT, &linux_tio_init()));
    ok(w.cmd(&dev_create()));
    ok(w.cmd(&dev_connect()));
    ok(w.cmd(&tdi_create()));
}

#[test]
fn tio_init_twice_is_invalid_platform_state_and_changes_nothing() {
    let mut w = World::new();
    w.setup(Stage::Created);
    refused(&mut w, SevStatus::INVALID_PLATFORM_STATE, |w| {
        w.raw(abi::TIO_INIT, &linux_tio_init())
    });
    assert!(w.sev.tio_init_done());
}

#[test]
fn malformed_tio_status_and_init_are_refused_and_change_nothing() {
    for initialised in [false, true] {
        let mut w = if initialised {
            World::new()
        } else {
            World::uninitialised()
        };
        let bad_init: Vec<Vec<u8>> = vec![
            // Wrong length field, reserved bytes set, too short.
            {
                let mut b = linux_tio_init().to_vec();
                b[0] = 0x18;
                b
            },
            {
                let mut b = linux_tio_init().to_vec();
                b[15] = 1;
                b
            },
            linux_tio_init()[..8].to_vec(),
        ];
        if !initialised {
            for b in &bad_init {
                refused(&mut w, SevStatus::INVALID_PARAM, |w| {
                    w.raw(abi::TIO_INIT, b)
                });
            }
        }
        let mut bad_status = Vec::new();
        for (at, v) in [(0usize, 0x18u8), (4, 1), (7, 0x80)] {
            let mut b = linux_tio_status(TIO_STATUS_PAGE).to_vec();
            b[at] = v;
            bad_status.push((b, SevStatus::INVALID_PARAM));
        }
        bad_status.push((
            linux_tio_status(TIO_STATUS_PAGE)[..8].to_vec(),
            SevStatus::INVALID_PARAM,
        ));
        for (addr, want) in [
            (0, SevStatus::INVALID_ADDRESS),
            (TIO_STATUS_PAGE + 8, SevStatus::INVALID_ADDRESS),
            (TIO_STATUS_PAGE + 0xFF0, SevStatus::INVALID_ADDRESS),
            (UNMAPPED, SevStatus::INVALID_ADDRESS),
            (RO_PAGE, SevStatus::INVALID_ADDRESS),
            (BAR, SevStatus::INVALID_ADDRESS),
            (1 << 52, SevStatus::INVALID_ADDRESS),
        ] {
            bad_status.push((linux_tio_status(addr).to_vec(), want));
        }
        for (b, want) in &bad_status {
            refused(&mut w, *want, |w| w.raw(abi::TIO_STATUS, b));
        }
        // A page the firmware holds as a context.
        if initialised {
            w.setup(Stage::Created);
            refused(&mut w, SevStatus::INVALID_PAGE_STATE, |w| {
                w.raw(abi::TIO_STATUS, &linux_tio_status(GCTX))
            });
        }
        // A misaligned buffer.
        let mut b = Buf([0; 256]);
        b.0[1..0x11].copy_from_slice(&linux_tio_status(TIO_STATUS_PAGE));
        let before = w.state();
        let o = w
            .sev
            .command(&mut w.mem, abi::TIO_STATUS, &mut b.0[1..0x11]);
        assert_eq!(o, Outcome::plain(SevStatus::INVALID_PARAM));
        same(&before, &w.state(), "a misaligned TIO_STATUS");
    }
}
