//! `include/tsm_tdx.h` names the numbers the Rust crate uses: every object-like `#define` of
//! the header is in [`TABLE`] with the Rust constant it stands for, and has its value; every
//! Rust leaf (`abi`: `TDH_*`, `TDG_*`, `TSM_*` of type `u16`), status (`status`: `TDX_*`,
//! `TSM_*`) and operand id (`status::OPERAND_ID_*`) is in the header, but for those listed in
//! [`KNOWN_MISSING`]. A new leaf is one `same!` line (header and Rust spell it alike).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use platform_tdx::tsm_core::relay::{self, Direction, session};
use platform_tdx::{abi, devif, dmar, link, module, status, td};

const HEADER: &str = include_str!("../include/tsm_tdx.h");
const ABI_RS: &str = include_str!("../src/abi.rs");
const DEVIF_RS: &str = include_str!("../src/devif.rs");
const DMAR_RS: &str = include_str!("../src/dmar.rs");
const STATUS_RS: &str = include_str!("../src/status.rs");

/// One header name, the Rust constant's path and its value.
type Entry = (&'static str, &'static str, u64);

/// A constant spelt the same in the header and in Rust.
macro_rules! same {
    ($module:ident :: $name:ident) => {
        (stringify!($name), stringify!($name), $module::$name as u64)
    };
}

/// A header name for the Rust constant `$module::$rust`.
macro_rules! named {
    ($header:literal, $module:ident :: $rust:ident) => {
        ($header, stringify!($rust), $module::$rust as u64)
    };
}

const TABLE: &[Entry] = &[
    // Layout.
    named!("TSM_TDX_RANGE_LIST_CAPACITY", abi::RANGE_LIST_CAPACITY),
    named!("TSM_TDX_FUNC_ID_SEG_VALID", abi::FUNC_ID_SEG_VALID),
    named!("TSM_TDX_SPDM_MT_MAX_PAGES", module::SPDM_MT_MAX_PAGES),
    named!("TSM_TDX_MESSAGE_PAGE_BYTES", module::MESSAGE_PAGE_BYTES),
    named!("TSM_UNBIND_FLAG_FORCE", abi::UNBIND_FLAG_FORCE),
    named!("TSM_TDX_NULL_PAGE", link::NULL_PAGE),
    named!("TSM_TDX_SPDM_CAP_HBEAT", link::SPDM_CAP_HBEAT),
    named!("TSM_TDX_SPDM_CAP_KEY_UPD", link::SPDM_CAP_KEY_UPD),
    named!("TSM_TDX_STREAM_INFO_TYPE_SEL", link::STREAM_INFO_TYPE_SEL),
    named!("TSM_TDX_ASSOC_VALID", link::ASSOC_VALID),
    named!("TSM_TDX_IDE_KM_SETUP", link::IDE_KM_SETUP),
    named!("TSM_TDX_IDE_KM_REFRESH", link::IDE_KM_REFRESH),
    named!("TSM_TDX_IDE_KM_STOP", link::IDE_KM_STOP),
    named!("TSM_TDX_SPDM_MNG_HEARTBEAT", link::SPDM_MNG_HEARTBEAT),
    named!("TSM_TDX_SPDM_MNG_KEY_UPDATE", link::SPDM_MNG_KEY_UPDATE),
    named!("TSM_TDX_SPDM_MNG_RECOLLECT", link::SPDM_MNG_RECOLLECT),
    named!("TSM_TDX_DEV_INFO_BYTES", link::DEV_INFO_BYTES),
    named!("TSM_TDX_REQ_IN_NO_FW_UPDATE", devif::REQ_IN_NO_FW_UPDATE),
    named!("TSM_TDX_REQ_IN_TD_FLAG", devif::REQ_IN_TD_FLAG),
    named!("TSM_TDX_RSP_IN_PA_MASK", devif::RSP_IN_PA_MASK),
    named!("TSM_TDX_TDISP_LOCK_INTERFACE", devif::TDISP_LOCK_INTERFACE),
    named!("TSM_TDX_TDISP_GET_STATE", devif::TDISP_GET_STATE),
    named!(
        "TSM_TDX_TDISP_START_INTERFACE",
        devif::TDISP_START_INTERFACE
    ),
    named!("TSM_TDX_TDISP_STOP_INTERFACE", devif::TDISP_STOP_INTERFACE),
    // The C session (struct tsm_tdx_session): directions are `Direction`'s discriminants.
    (
        "TSM_TDX_DIRECTION_REQUEST",
        "Direction::Request",
        Direction::Request as u64,
    ),
    (
        "TSM_TDX_DIRECTION_RESPONSE",
        "Direction::Response",
        Direction::Response as u64,
    ),
    named!("TSM_TDX_REPORT_DIGEST_BYTES", relay::REPORT_DIGEST_SIZE),
    named!("TSM_TDX_SESSION_MAX_OVERHEAD", session::MAX_OVERHEAD),
    // Host leaves.
    same!(abi::TDH_MNG_CREATE),
    same!(abi::TDH_MEM_SEPT_RD),
    same!(abi::TDH_MEM_TRACK),
    same!(abi::TDH_SPDM_CREATE),
    same!(abi::TDH_SPDM_DELETE),
    same!(abi::TDH_DEVIF_CREATE),
    same!(abi::TDH_DEVIF_REMOVE),
    same!(abi::TDH_DEVIF_REQUEST),
    same!(abi::TDH_DEVIF_RESPONSE),
    same!(abi::TDH_MMIO_MAP),
    same!(abi::TDH_MMIO_BLOCK),
    same!(abi::TDH_MMIO_UNMAP),
    same!(abi::TDH_DMAR_ADD),
    same!(abi::TDH_DMAR_BLOCK),
    same!(abi::TDH_DMAR_READ),
    same!(abi::TDH_DMAR_REMOVE),
    same!(abi::TDH_IQ_INV_REQUEST),
    same!(abi::TDH_IQ_INV_PROCESS),
    named!("TSM_TDX_PASIDTE_ADD_Q0", dmar::ADD_QWORD0),
    named!("TSM_TDX_PASIDTE_ADD_Q1", dmar::ADD_QWORD1),
    named!("TSM_TDX_PASIDTE_ADD_Q0_4LEVEL", dmar::ADD_QWORD0_4LEVEL),
    named!("TSM_TDX_WAIT_DESC", dmar::WAIT_DESC_HOST),
    named!("TSM_TDX_INV_REQ_PASIDTE", dmar::INV_REQ_PASIDTE),
    named!("TSM_TDX_INV_REQ_IOTLB", dmar::INV_REQ_IOTLB),
    named!("TSM_TDX_INV_REQ_TD", dmar::INV_REQ_TD),
    named!("TSM_TDX_INV_REQ_POOL_SHIFT", dmar::INV_REQ_POOL_SHIFT),
    same!(abi::TDH_MNG_VPFLUSHDONE),
    same!(abi::TDH_MNG_KEY_FREEID),
    same!(abi::TDH_PHYMEM_PAGE_RECLAIM),
    same!(abi::TDH_PHYMEM_CACHE_WB),
    same!(abi::TDH_PHYMEM_PAGE_WBINVD),
    named!("TSM_TDX_CACHE_WB_START", td::CACHE_WB_START),
    named!("TSM_TDX_CACHE_WB_RESUME", td::CACHE_WB_RESUME),
    named!("TSM_TDX_KEYID_SHIFT", td::KEYID_SHIFT),
    named!("TSM_TDX_PRIVATE_HKID_MAX", td::PRIVATE_HKID_MAX),
    named!("TSM_TDX_PT_TDR", td::PT_TDR),
    same!(abi::TSM_DEVIF_BIND),
    same!(abi::TSM_DEVIF_UNBIND),
    same!(abi::TSM_DEVIF_ERROR),
    same!(abi::TSM_DEVIF_STATE),
    same!(abi::TSM_MMIO_ZAP_CHECK),
    same!(abi::TSM_DEVIF_CHECK),
    same!(abi::TDH_IDE_STREAM_CREATE),
    same!(abi::TDH_IDE_STREAM_BLOCK),
    same!(abi::TDH_IDE_STREAM_DELETE),
    same!(abi::TDH_IDE_STREAM_KM),
    same!(abi::TDH_SPDM_CONNECT),
    same!(abi::TDH_SPDM_DISCONNECT),
    same!(abi::TDH_SPDM_MNG),
    same!(abi::TSM_SPDM_BARS),
    // Guest leaves.
    same!(abi::TDG_MMIO_ACCEPT),
    same!(abi::TDG_DEVIF_RD),
    same!(abi::TDG_DMAR_ACCEPT),
    same!(abi::TDG_IQ_INV_REQUEST),
    named!(
        "TSM_DEVIF_FIELD_TDISP_VERSION",
        abi::DEVIF_FIELD_TDISP_VERSION
    ),
    named!("TSM_DEVIF_FIELD_TDISP_STATE", abi::DEVIF_FIELD_TDISP_STATE),
    named!(
        "TSM_DEVIF_FIELD_REPORT_DIGEST",
        abi::DEVIF_FIELD_REPORT_DIGEST
    ),
    named!(
        "TSM_DEVIF_FIELD_REPORTED_RANGE",
        abi::DEVIF_FIELD_REPORTED_RANGE
    ),
    same!(abi::TSM_DEVIF_SET_TD),
    same!(abi::TDG_DEVIF_REQUEST),
    same!(abi::TDG_DEVIF_RESPONSE),
    // Statuses.
    same!(status::TDX_SUCCESS),
    same!(status::TDX_INTERRUPTED_RESUMABLE),
    same!(status::TDX_OPERAND_INVALID),
    same!(status::TDX_OPERAND_ADDR_RANGE_ERROR),
    same!(status::TDX_OPERAND_BUSY),
    same!(status::TDX_PREVIOUS_TLB_EPOCH_BUSY),
    same!(status::TDX_SYSINIT_NOT_PENDING),
    same!(status::TDX_SYS_NOT_READY),
    same!(status::TDX_EPT_WALK_FAILED),
    same!(status::TDX_EPT_ENTRY_NOT_FREE),
    same!(status::TDX_GPA_RANGE_NOT_BLOCKED),
    same!(status::TDX_TLB_TRACKING_NOT_DONE),
    same!(status::TDX_DMAR_INVALID_MAPPING_STATE),
    same!(status::TDX_DMAR_INVALID_INV_STATE),
    same!(status::TDX_IOMMU_IOTLB_TRACKING_NOT_DONE),
    same!(status::TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED),
    same!(status::TDX_IOMMU_IQ_QUEUE_FULL),
    same!(status::TDX_GUEST_INV_NOT_REQUIRED),
    same!(status::TDX_GUEST_INV_IN_PROGRESS),
    same!(status::TDX_GUEST_INV_INVALID_DESC),
    same!(status::TDX_IOTLB_INV_REQUEST),
    same!(status::TDX_DMAR_ENTRY_NOT_PRESENT),
    same!(status::TDX_DEVIF_HAS_MAPPED_DMA),
    same!(status::TDX_DEVIF_TDISP_INVALID_STATE),
    same!(status::TDX_DEVIF_INVALID_STATE),
    same!(status::TDX_SPDM_REQUEST),
    same!(status::TDX_DEVIF_TDISP_INVALID_REQ_STS),
    same!(status::TDX_DEVIF_TDISP_INVALID_MESSAGE),
    same!(status::TDX_DEVIF_TDISP_OUT_REQ),
    same!(status::TDX_DEVIFMT_NOT_PRESENT),
    same!(status::TDX_DEVIF_INVALID_METADATA),
    same!(status::TDX_DEVIFMT_ALREADY_PRESENT),
    same!(status::TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH),
    same!(status::TSM_RESERVED_MEMORY),
    same!(status::TSM_FOREIGN_INTERFACE),
    same!(status::TSM_BAR_IN_USE),
    same!(status::TSM_STREAM_CUT),
    same!(status::TSM_BARS_NOT_REGISTERED),
    same!(status::TSM_BARS_REGISTERED),
    same!(status::TDX_PAGE_METADATA_INCORRECT),
    same!(status::TDX_MMIO_INVALID_HPA_OFFSET),
    same!(status::TSM_INCONSISTENT),
    same!(status::TSM_DEVICE_UNRESPONSIVE),
    same!(status::TSM_DEVICE_REFUSED),
    same!(status::TSM_DEVICE_MALFORMED),
    same!(status::TSM_DEVICE_IN_USE),
    same!(status::TDX_SPDM_HAS_ACTIVE_IDE_STREAMS),
    same!(status::TDX_SPDM_INVALID_STATE),
    same!(status::TDX_IDE_STREAM_NOT_FREE),
    same!(status::TDX_IDE_STREAM_NOT_CONFIGURED),
    same!(status::TDX_IDE_STREAM_BLOCKED),
    same!(status::TDX_IDE_STREAM_NOT_BLOCKED),
    same!(status::TDX_IDE_STREAM_HAS_DEVICE_INTERFACES),
    same!(status::TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY),
    same!(status::TDX_IDE_STREAM_INVALID_STATE),
    same!(status::TDX_IDE_STREAM_ADDR_OVERLAP),
    same!(status::TDX_IDE_STREAM_RID_OVERLAP),
    same!(status::TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE),
    same!(status::TDX_SPDM_INVALID_MESSAGE),
    same!(status::TDX_PAGE_NOT_FREE),
    same!(status::TDX_TD_ASSOCIATED_PAGES_EXIST),
    same!(status::TDX_LIFECYCLE_STATE_INCORRECT),
    same!(status::TDX_TD_KEYS_NOT_CONFIGURED),
    same!(status::TDX_WBCACHE_NOT_COMPLETE),
    same!(status::TDX_HKID_NOT_FREE),
    same!(status::TDX_NO_HKID_READY_TO_WBCACHE),
    same!(status::TDX_WBCACHE_RESUME_ERROR),
    same!(status::TDX_TD_HAS_ATTACHED_DEVICES),
    same!(status::TDX_PAGE_ALREADY_ACCEPTED),
    same!(status::TDX_PAGE_SIZE_MISMATCH),
    same!(status::TDX_EPT_ENTRY_STATE_INCORRECT),
    same!(status::TDX_MMIO_DEVIF_OWNER_MISMATCH),
    same!(status::TSM_TOO_MANY_RANGES),
    same!(status::TSM_RANGE_OUTSIDE_DEVICE),
    same!(status::TSM_RANGES_OVERLAP),
    same!(status::TSM_INVALID_RANGE),
    same!(status::TSM_EMPTY_REPORT),
    same!(status::TSM_DEVICE_TABLE_FULL),
    same!(status::TSM_TDI_TABLE_FULL),
    same!(status::TSM_TD_TABLE_FULL),
    same!(status::TSM_OWNERSHIP_TABLE_FULL),
    same!(status::TSM_SEPT_POOL_EMPTY),
    same!(status::TSM_SEPT_POOL_AWAITS_FLUSH),
    same!(status::TSM_TDI_ALREADY_BOUND),
    same!(status::TSM_TDI_NOT_LOCKED),
    same!(status::TSM_TDI_IN_ERROR),
    same!(status::TSM_UNBIND_IN_PROGRESS),
    same!(status::TSM_DUPLICATE_DEVICE),
    same!(status::TSM_DUPLICATE_TDI),
    same!(status::TSM_RELAY_BUFFER_TOO_SMALL),
    same!(status::TSM_DMA_NOT_ACCEPTED),
    named!("TDX_OPERAND_ID_SEPT_TREE", status::OPERAND_ID_SEPT_TREE),
    named!("TDX_OPERAND_ID_TD_EPOCH", status::OPERAND_ID_TD_EPOCH),
    named!("TDX_OPERAND_ID_WBCACHE", status::OPERAND_ID_WBCACHE),
    named!("TDX_OPERAND_ID_MMIOMT", status::OPERAND_ID_MMIOMT),
    named!("TDX_OPERAND_ID_DMAR", status::OPERAND_ID_DMAR),
    named!(
        "TDX_OPERAND_ID_DEVICE_TABLE",
        status::OPERAND_ID_DEVICE_TABLE
    ),
    named!("TDX_OPERAND_ID_DEVICE", status::OPERAND_ID_DEVICE),
    // Operand ids.
    named!("TDX_OPERAND_ID_RAX", status::OPERAND_ID_RAX),
    named!("TDX_OPERAND_ID_RCX", status::OPERAND_ID_RCX),
    named!("TDX_OPERAND_ID_RDX", status::OPERAND_ID_RDX),
    named!("TDX_OPERAND_ID_R8", status::OPERAND_ID_R8),
    named!("TDX_OPERAND_ID_R9", status::OPERAND_ID_R9),
    named!("TDX_OPERAND_ID_R10", status::OPERAND_ID_R10),
    named!("TDX_OPERAND_ID_R11", status::OPERAND_ID_R11),
    named!("TDX_OPERAND_ID_R12", status::OPERAND_ID_R12),
    named!("TDX_OPERAND_ID_R13", status::OPERAND_ID_R13),
    named!("TDX_OPERAND_ID_R14", status::OPERAND_ID_R14),
    named!("TDX_OPERAND_ID_TDR", status::OPERAND_ID_TDR),
    named!("TDX_OPERAND_ID_DEVIF", status::OPERAND_ID_DEVIF),
    named!("TDX_OPERAND_ID_TRANSPORT", status::OPERAND_ID_TRANSPORT),
    named!("TDX_OPERAND_ID_REG_BLOCK", status::OPERAND_ID_REG_BLOCK),
    named!(
        "TDX_OPERAND_ID_REQUEST_PAGE",
        status::OPERAND_ID_REQUEST_PAGE
    ),
    named!(
        "TDX_OPERAND_ID_RESPONSE_PAGE",
        status::OPERAND_ID_RESPONSE_PAGE
    ),
    named!(
        "TDX_OPERAND_ID_SESSION_SEAL",
        status::OPERAND_ID_SESSION_SEAL
    ),
    named!(
        "TDX_OPERAND_ID_SESSION_OPEN",
        status::OPERAND_ID_SESSION_OPEN
    ),
    named!(
        "TDX_OPERAND_ID_SESSION_RECORD_LEN",
        status::OPERAND_ID_SESSION_RECORD_LEN
    ),
    named!(
        "TDX_OPERAND_ID_SESSION_LOCK_SECRET",
        status::OPERAND_ID_SESSION_LOCK_SECRET
    ),
    named!(
        "TDX_OPERAND_ID_SESSION_REPORT_DIGEST",
        status::OPERAND_ID_SESSION_REPORT_DIGEST
    ),
];

/// Rust leaf, status and operand-id constants the header does not define today. A C host can
/// get every one of these statuses from a leaf (e.g. TDX_PAGE_NOT_FREE from TDH.MMIO.MAP,
/// TSM_DUPLICATE_DEVICE from TDH.SPDM.CREATE, TSM_DUPLICATE_TDI from TDH.DEVIF.CREATE), so
/// each is a gap in the header; the test fails when this list and the header part ways.
const KNOWN_MISSING: &[&str] = &[];

/// Object-like `#define NAME value` lines of the header (function-like macros and the include
/// guard are skipped): name and the value as written.
fn defines() -> Vec<(&'static str, &'static str)> {
    HEADER
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#define "))
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (name, tail) = rest.split_at(end);
            // `NAME(` is function-like.
            if tail.starts_with('(') {
                return None;
            }
            let value = tail.split("/*").next().unwrap().trim();
            (!value.is_empty()).then_some((name, value))
        })
        .collect()
}

/// A C integer constant expression of the forms the header uses: `9u`, `0xF001u`,
/// `0xC000...ull`, `(1ull << 24)`.
fn c_value(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        let (a, b) = inner.split_once("<<")?;
        return c_value(a)?.checked_shl(u32::try_from(c_value(b)?).ok()?);
    }
    let t = t.trim_end_matches(['u', 'U', 'l', 'L']);
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// `pub const NAME: TYPE` names of `src` whose name starts with one of `prefixes` and whose
/// type is one of `types`.
fn rust_consts(src: &'static str, prefixes: &[&str], types: &[&str]) -> Vec<&'static str> {
    src.lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub const "))
        .filter_map(|rest| rest.split_once(':'))
        .filter(|(name, ty)| {
            prefixes.iter().any(|p| name.starts_with(p))
                && types.iter().any(|t| ty.trim_start().starts_with(t))
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn every_header_define_has_the_rust_value() {
    let defines = defines();
    assert!(defines.len() > 50, "the header parsed to {defines:?}");
    let mut wrong = Vec::new();
    for (name, text) in &defines {
        if *name == "TSM_TDX_H" {
            continue;
        }
        let Some(value) = c_value(text) else {
            wrong.push(format!(
                "{name}: value {text:?} is not a constant this test reads"
            ));
            continue;
        };
        match TABLE.iter().find(|(h, _, _)| h == name) {
            None => wrong.push(format!("{name} = {text}: no Rust counterpart in TABLE")),
            Some((_, rust, v)) if *v != value => {
                wrong.push(format!("{name} = {value:#x}, Rust {rust} = {v:#x}"));
            }
            Some(_) => {}
        }
    }
    // And every TABLE row names a define the header has (a row for a removed define is stale).
    for (h, _, _) in TABLE {
        if !defines.iter().any(|(n, _)| n == h) {
            wrong.push(format!("{h}: in TABLE but not defined in the header"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_rust_leaf_status_and_operand_id_is_in_the_header() {
    let mut rust = rust_consts(ABI_RS, &["TDH_", "TDG_", "TSM_"], &["u16"]);
    rust.extend(rust_consts(DEVIF_RS, &["TDH_", "TDG_", "TSM_"], &["u16"]));
    rust.extend(rust_consts(DMAR_RS, &["TDH_", "TDG_", "TSM_"], &["u16"]));
    rust.retain(|n| *n != "TSM_LEAF_BASE");
    rust.extend(rust_consts(STATUS_RS, &["TDX_", "TSM_"], &["u64"]));
    rust.extend(rust_consts(STATUS_RS, &["OPERAND_ID_"], &["u32"]));
    assert!(rust.len() > 60, "the sources parsed to {rust:?}");
    let in_header = |n: &&str| TABLE.iter().any(|(_, r, _)| r == n);
    let missing: Vec<_> = rust.iter().filter(|n| !in_header(n)).copied().collect();
    let new: Vec<_> = missing
        .iter()
        .filter(|n| !KNOWN_MISSING.contains(n))
        .collect();
    let stale: Vec<_> = KNOWN_MISSING
        .iter()
        .filter(|n| !missing.contains(n))
        .collect();
    assert!(
        new.is_empty() && stale.is_empty(),
        "Rust constants missing from include/tsm_tdx.h (add them, and a TABLE row): {new:?}\n\
         in KNOWN_MISSING but now in TABLE, or gone from Rust (drop them): {stale:?}"
    );
}

/// The function-like macros use the Rust masks and shifts.
#[test]
fn header_macros_use_the_rust_masks() {
    // The register block the C entry point takes, in `SeamRegs` order.
    assert!(HEADER.contains("uint64_t rax, rcx, rdx, r8, r9, r10, r11, r12, r13, r14;"));
    let pfn = format!("{:#018X}", abi::HPA_ARRAY_PFN_MASK).replace("0X", "0x");
    assert!(
        HEADER.contains(&format!("{pfn}ull")),
        "TSM_TDX_HPA_ARRAY's PFN mask is not {pfn}"
    );
    // Each shift looked for inside its own macro's body (another macro's shift must not do).
    let body = |name: &str| {
        let start = HEADER
            .find(&format!("#define {name}("))
            .unwrap_or_else(|| panic!("no {name} macro"));
        // A macro continues over lines ending in a backslash.
        let mut text = String::new();
        for line in HEADER[start..].lines() {
            text.push_str(line);
            if !line.trim_end().ends_with('\\') {
                break;
            }
        }
        text
    };
    assert!(
        body("TSM_TDX_HPA_ARRAY").contains(&format!("<< {})", abi::HPA_ARRAY_SIZE_SHIFT)),
        "TSM_TDX_HPA_ARRAY's size shift is not {}",
        abi::HPA_ARRAY_SIZE_SHIFT
    );
    assert!(
        body("TSM_TDX_FUNC_ID").contains(&format!("(segment) << {})", abi::FUNC_ID_SEGMENT_SHIFT)),
        "TSM_TDX_FUNC_ID's segment shift is not {}",
        abi::FUNC_ID_SEGMENT_SHIFT
    );
    let idx = body("TSM_TDX_DMAR_IDX");
    assert!(
        idx.contains(&format!("(segment) << {})", dmar::DMAR_IDX_IOMMU_SHIFT))
            && idx.contains(&format!("(rid) << {})", dmar::DMAR_IDX_RID_SHIFT))
            && dmar::DMAR_LVL_PASIDTE == 0,
        "TSM_TDX_DMAR_IDX's shifts are not {} and {}",
        dmar::DMAR_IDX_IOMMU_SHIFT,
        dmar::DMAR_IDX_RID_SHIFT
    );
    let code = format!("{:#018X}", status::CODE_MASK).replace("0X", "0x");
    assert!(
        HEADER.contains(&format!("TDX_STATUS_CODE(s)             ((s) & {code}ull)")),
        "TDX_STATUS_CODE's mask is not {code}"
    );
    let operand = format!("{:#X}", status::OPERAND_ID_MASK).replace("0X", "0x");
    assert!(
        HEADER.contains(&format!("((s) & {operand}ull)")),
        "TDX_STATUS_OPERAND's mask is not {operand}"
    );
}

const CAPI_RS: &str = include_str!("../src/capi.rs");

/// Every `extern "C"` entry point of `src/capi.rs` is declared in the header, and exactly
/// those behind feature `model-device` (test support: `tsm_tdx_init` with the model session's
/// public key among them) are declared in the header's TEST SUPPORT part, never among the
/// firmware's own entry points.
#[test]
fn every_entry_point_is_declared_and_the_test_support_only_in_its_part() {
    let lines: Vec<&str> = CAPI_RS.lines().collect();
    let mut entries = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.split("extern \"C\" fn ").nth(1) else {
            continue;
        };
        let name = rest.split('(').next().unwrap();
        if !name.starts_with("tsm_tdx_") {
            continue;
        }
        // The attributes and doc lines right above the function.
        let gated = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("#[") || l.starts_with("///")
            })
            .any(|l| l.contains("cfg(") && l.contains("model-device"));
        entries.push((name, gated));
    }
    assert!(entries.len() >= 7, "{entries:?}");
    assert!(entries.contains(&("tsm_tdx_init", true)), "{entries:?}");
    assert!(
        entries.contains(&("tsm_tdx_init_session", false)),
        "{entries:?}"
    );
    let marker = HEADER
        .find("TEST SUPPORT")
        .unwrap_or_else(|| panic!("the header has no TEST SUPPORT part"));
    for (name, gated) in entries {
        let declared = HEADER
            .find(&format!("uint64_t {name}("))
            .unwrap_or_else(|| panic!("{name} is not declared in include/tsm_tdx.h"));
        assert_eq!(
            declared > marker,
            gated,
            "{name}: declared {} the header's TEST SUPPORT part",
            if declared > marker { "in" } else { "outside" }
        );
    }
}
