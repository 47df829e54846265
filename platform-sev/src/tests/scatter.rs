//! Scatter-list SLAs as Linux's `sla_alloc` builds them for a buffer past one page
//! (sev-linux-buffers.md section 2.1): a SCATTER SLA naming a host page of data SLAs, one per
//! page of the buffer, then `SLA_EOL`. `Sev::buffer_pages` walks it, bounded, and checks every
//! entry like a data page; every malformed list is refused with its status and changes
//! nothing.

use super::*;

/// The scatter page (the report page of the small world).
const LIST: u64 = MEM + 0x3000;
/// Three data pages of system memory.
const PAGES: [u64; 3] = [MEM, MEM + 0x1000, MEM + 0x2000];
/// A buffer of three pages, as `sla_alloc` sizes it.
const THREE: u32 = 3 * 4096;

fn scatter(at: u64) -> u64 {
    sla(at >> 12) | 1
}

fn put_list(w: &mut World, entries: &[u64]) {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    w.mem.write(LIST, &bytes).unwrap();
}

fn good_list() -> Vec<u64> {
    let mut l: Vec<u64> = PAGES.iter().map(|p| sla(p >> 12)).collect();
    l.push(abi::SLA_EOL);
    l
}

fn walk(w: &World, raw: u64, size: u32) -> Result<Vec<u64>, SevStatus> {
    w.sev.buffer_pages(&w.mem, raw, size).map(|p| p.to_vec())
}

/// The walk of `entries` at [`LIST`] (three pages) is refused as `want` and changes nothing.
#[track_caller]
fn refused_list(w: &mut World, entries: &[u64], want: SevStatus) {
    put_list(w, entries);
    refused_walk(w, scatter(LIST), THREE, want);
    put_list(w, &good_list());
}

#[track_caller]
fn refused_walk(w: &mut World, raw: u64, size: u32, want: SevStatus) {
    let before = w.state();
    assert_eq!(walk(w, raw, size), Err(want), "{raw:#x} size {size:#x}");
    same(&before, &w.state(), format_args!("scatter walk {raw:#x}"));
}

#[test]
fn linux_scatter_lists_are_walked_to_their_eol() {
    assert_eq!(abi::SLA_EOL, 0x000F_FFFF_FFFF_F000);
    assert!(SlaAddr::from_bits(abi::SLA_EOL).is_eol());
    assert_eq!(abi::SLA_SCATTER_LEN, 512);
    let mut w = World::new();
    put_list(&mut w, &good_list());
    // Three pages, and a size that needs the third page for one byte.
    let before = w.state();
    assert_eq!(walk(&w, scatter(LIST), THREE), Ok(PAGES.to_vec()));
    assert_eq!(walk(&w, scatter(LIST), 2 * 4096 + 1), Ok(PAGES.to_vec()));
    // Whatever follows the EOL is never read.
    let mut tail = good_list();
    tail.extend([0xdead_beef, scatter(LIST), 7]);
    put_list(&mut w, &tail);
    assert_eq!(walk(&w, scatter(LIST), THREE), Ok(PAGES.to_vec()));
    put_list(&mut w, &good_list());
    // Two pages: the same list read as two entries and the EOL is refused (the third entry
    // is where the EOL must be); a two-entry list is taken.
    refused_walk(&mut w, scatter(LIST), 2 * 4096, SevStatus::INVALID_PARAM);
    put_list(
        &mut w,
        &[sla(PAGES[0] >> 12), sla(PAGES[1] >> 12), abi::SLA_EOL],
    );
    assert_eq!(walk(&w, scatter(LIST), 8192), Ok(PAGES[..2].to_vec()));
    // At most one page: one data SLA, as today's sizes are.
    assert_eq!(walk(&w, sla(PAGES[2] >> 12), 4096), Ok(vec![PAGES[2]]));
    assert_eq!(
        walk(&w, sla(PAGES[2] >> 12), abi::SPDM_OUT_SIZE),
        Ok(vec![PAGES[2]])
    );
    // Walking changes nothing.
    let mut after = w.state();
    after.mem = before.mem.clone();
    same(&before, &after, "an accepted walk");
}

#[test]
fn malformed_scatter_slas_are_invalid_param_and_change_nothing() {
    let mut w = World::new();
    put_list(&mut w, &good_list());
    let p = SevStatus::INVALID_PARAM;
    // A data SLA where the size needs a scatter list, and the reverse.
    refused_walk(&mut w, sla(LIST >> 12), THREE, p);
    refused_walk(&mut w, scatter(LIST), 4096, p);
    // Null, scatter bit only, 2M, reserved bits low and high (an SLA has no other way to be
    // unaligned).
    for raw in [
        0,
        1,
        scatter(LIST) | 2,
        scatter(LIST) | 0x800,
        scatter(LIST) | (1 << 60),
    ] {
        refused_walk(&mut w, raw, THREE, p);
    }
    // Longer than one scatter page lists, checked before the page is read.
    let max = (abi::MAX_SCATTER_PAGES as u32) * 4096;
    refused_walk(&mut w, scatter(UNMAPPED), max + 1, p);
    refused_walk(&mut w, scatter(LIST), u32::MAX, p);
    // A size the page could list, with the EOL early: refused, read no further.
    refused_walk(&mut w, scatter(LIST), max, p);
}

#[test]
fn malformed_scatter_lists_are_refused_and_change_nothing() {
    let mut w = World::new();
    let p = SevStatus::INVALID_PARAM;
    let [a, b, c] = PAGES.map(|x| sla(x >> 12));
    let eol = abi::SLA_EOL;
    // Loops: the list names itself, as data or as a nested list; a page twice.
    refused_list(&mut w, &[a, sla(LIST >> 12), c, eol], p);
    refused_list(&mut w, &[a, scatter(LIST), c, eol], p);
    refused_list(&mut w, &[a, b, a, eol], p);
    refused_list(&mut w, &[a, b, b, eol], p);
    // Too long: no EOL where the size puts it (a fourth data page, zeros, junk).
    refused_list(&mut w, &[a, b, c, sla((MEM >> 12) | 9)], p);
    refused_list(&mut w, &[a, b, c, 0], p);
    refused_list(&mut w, &[a, b, c, eol | 1], p);
    // Too short: the EOL early.
    refused_list(&mut w, &[a, b, eol, c], p);
    refused_list(&mut w, &[eol, a, b, c], p);
    // Entries that are not 4K data pages: null, nested scatter, 2M, reserved bits.
    refused_list(&mut w, &[a, 0, c, eol], p);
    refused_list(&mut w, &[a, scatter(PAGES[1]), c, eol], p);
    refused_list(&mut w, &[a, b | 2, c, eol], p);
    refused_list(&mut w, &[a, b | 0x10, c, eol], p);
    refused_list(&mut w, &[a, b | (1 << 63), c, eol], p);
    // Unmapped, read-only or MMIO data pages: checked like an output page.
    let addr = SevStatus::INVALID_ADDRESS;
    refused_list(&mut w, &[a, sla(UNMAPPED >> 12), c, eol], addr);
    refused_list(&mut w, &[a, sla(RO_PAGE >> 12), c, eol], addr);
    refused_list(&mut w, &[a, sla(BAR >> 12), c, eol], addr);
    // The scatter page itself unmapped or device MMIO.
    refused_walk(&mut w, scatter(UNMAPPED), THREE, addr);
    refused_walk(&mut w, scatter(BAR), THREE, addr);
    // A page the firmware holds as a guest context, listed or as the list.
    ok(w.cmd(&gctx_create(FW_PAGE)));
    refused_list(
        &mut w,
        &[a, sla(FW_PAGE >> 12), c, eol],
        SevStatus::INVALID_PAGE_STATE,
    );
    refused_walk(
        &mut w,
        scatter(FW_PAGE),
        THREE,
        SevStatus::INVALID_PAGE_STATE,
    );
    // The good list still walks.
    put_list(&mut w, &good_list());
    assert_eq!(walk(&w, scatter(LIST), THREE), Ok(PAGES.to_vec()));
}
