//! Writes the seed corpus, `fuzz/seeds/<target>/<name>`, from `tsm_fuzz::seeds`, after
//! checking that each seed decodes to what it encodes and reaches what it is for.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --bin seeds
//! TSM_FUZZ_TRACE=1 cargo run --manifest-path fuzz/Cargo.toml --bin seeds -- run <target> <file>
//! ```
//!
//! With `run`, it replays one input through its target instead (every call printed when
//! `TSM_FUZZ_TRACE` is set).

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, target, file] = args.as_slice()
        && cmd == "run"
    {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        match target.as_str() {
            "tdx_dispatcher" => println!("{:?}", tsm_fuzz::tdx::run(&data)),
            "sev_dispatcher" => println!("{:?}", tsm_fuzz::sev::run(&data)),
            "relay_answers" => println!("{:?}", tsm_fuzz::relay::run(&data)),
            "report_portions" => println!("{:?}", tsm_fuzz::wire::portions_run(&data)),
            "tdisp_request" => tsm_fuzz::wire::request_target(&data),
            "tdisp_response" => tsm_fuzz::wire::response_target(&data),
            "tdisp_report" => tsm_fuzz::wire::report_target(&data),
            other => panic!("unknown target {other}"),
        }
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut failed = 0;
    for s in tsm_fuzz::seeds::all() {
        match tsm_fuzz::seeds::check(&s) {
            Ok(summary) => println!("{}/{}: {} bytes {summary}", s.target, s.name, s.bytes.len()),
            Err(e) => {
                let kept = std::env::temp_dir().join(format!("{}-{}", s.target, s.name));
                let _ = std::fs::write(&kept, &s.bytes);
                eprintln!(
                    "{}/{}: {e} (input kept in {})",
                    s.target,
                    s.name,
                    kept.display()
                );
                failed += 1;
                continue;
            }
        }
        let dir = root.join(s.target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let file = dir.join(s.name);
        std::fs::write(&file, &s.bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    if failed != 0 {
        eprintln!("{failed} seeds failed");
        std::process::exit(1);
    }
}
