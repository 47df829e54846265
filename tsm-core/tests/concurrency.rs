//! Many threads drive one firmware at once. Try-locks mean contention is `Busy`, never a
//! hang; afterwards the invariants hold and every TDI unbinds completely.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use common::{bar, check_invariants, report_and_bind, world};
use tsm_core::*;

/// xorshift64: a deterministic per-thread stream, no dependency needed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn concurrent_host_guest_and_device_operations_keep_the_invariants() {
    let w = world();
    let threads = 4;
    let mut busy_total = 0u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let w = &w;
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
                    let mut busy = 0u64;
                    for _ in 0..4000 {
                        let t = rng.next(4) as usize;
                        let tdi = w.tdis[t];
                        let g = w.guests[rng.next(3) as usize];
                        let base = bar(t / 2) + (t as u64 % 2) * 0x40_0000;
                        let page = rng.next(64) * 0x1000;
                        let r = match rng.next(8) {
                            0 => report_and_bind(w, tdi, g, &[(base, 256)])
                                .map(|()| Completion::Done),
                            1 | 2 => {
                                let owner = w
                                    .tsm
                                    .tdi(tdi)
                                    .ok()
                                    .and_then(|r| r.state.owner())
                                    .unwrap_or(g);
                                let gpa =
                                    Gpa::try_new(0x10_0000_0000 + (t as u64) * 0x100_0000 + page)
                                        .unwrap();
                                w.tsm
                                    .map_mmio(
                                        tdi,
                                        owner,
                                        gpa,
                                        Hpa::try_new(base + page).unwrap(),
                                        PageSize::Size4K,
                                    )
                                    .map(|()| Completion::Done)
                            }
                            3 => w.tsm.guest_start(g, tdi).map(|()| Completion::Done),
                            4 => w.tsm.unbind(tdi),
                            5 => w.tsm.device_error(tdi),
                            6 => w
                                .tsm
                                .host_zap(MmioRange::from_raw(base, 1).unwrap())
                                .map(|()| Completion::Done),
                            _ => {
                                let gpa =
                                    Gpa::try_new(0x10_0000_0000 + (t as u64) * 0x100_0000 + page)
                                        .unwrap();
                                let before = w.tsm.leaf(g, gpa);
                                let r = w.tsm.host_unmap(g, gpa, PageSize::Size4K);
                                // A leaf that was there is never removed by the host.
                                if let (Ok(Some(_)), Ok(_)) = (before, r) {
                                    panic!("host removed a private leaf");
                                }
                                r.map(|_| Completion::Done)
                            }
                        };
                        if matches!(r, Err(Error::Busy(_))) {
                            busy += 1;
                        }
                    }
                    busy
                })
            })
            .collect();
        for h in handles {
            busy_total += h.join().unwrap();
        }
    });
    println!("busy outcomes: {busy_total}");
    check_invariants(&w);
    for &t in &w.tdis {
        let mut calls = 0;
        while w.tsm.unbind(t) != Ok(Completion::Done) {
            calls += 1;
            assert!(calls < 100);
        }
    }
    assert!(w.tsm.with_table(|t| t.leaves().is_empty()).unwrap());
    check_invariants(&w);
}
