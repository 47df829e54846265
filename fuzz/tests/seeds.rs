//! The checked-in seed corpus is what `tsm_fuzz::seeds` generates, every seed passes its
//! target's checks and reaches the state it is for, and every file under `fuzz/seeds/` and
//! `fuzz/regressions/` still passes its target (a replay without libFuzzer).
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml
//! ```

use std::path::Path;

/// Runs `f` on a thread with a 64 MiB stack: unoptimised, the firmware's relay buffers and the
/// targets' snapshots take a little more than a test thread's 2 MiB (libFuzzer runs the
/// optimised targets on the main thread's 8 MiB).
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn seeds_are_checked_in_and_reach_their_states() {
    big_stack(seeds_reach_their_states);
}

fn seeds_reach_their_states() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for s in tsm_fuzz::seeds::all() {
        let file = root.join(s.target).join(s.name);
        let on_disk = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run the seeds binary)", file.display()));
        assert_eq!(
            on_disk,
            s.bytes,
            "{} is stale (run the seeds binary)",
            file.display()
        );
        if let Err(e) = tsm_fuzz::seeds::check(&s) {
            panic!("{}/{}: {e}", s.target, s.name);
        }
    }
}

#[test]
fn every_corpus_file_passes_its_target() {
    big_stack(every_corpus_file_passes);
}

fn every_corpus_file_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(targets) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for target in targets.flatten() {
            let name = target.file_name().into_string().unwrap_or_default();
            for file in std::fs::read_dir(target.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let data = std::fs::read(file.path()).unwrap_or_default();
                match name.as_str() {
                    "tdx_dispatcher" => drop(tsm_fuzz::tdx::run(&data)),
                    "sev_dispatcher" => drop(tsm_fuzz::sev::run(&data)),
                    "tdisp_request" => tsm_fuzz::wire::request_target(&data),
                    "tdisp_response" => tsm_fuzz::wire::response_target(&data),
                    "tdisp_report" => tsm_fuzz::wire::report_target(&data),
                    "report_portions" => tsm_fuzz::wire::portions_target(&data),
                    "relay_answers" => drop(tsm_fuzz::relay::run(&data)),
                    other => panic!("unknown target folder {other}"),
                }
                ran += 1;
            }
        }
    }
    assert!(ran > 0, "no corpus files");
}
