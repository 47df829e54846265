//! Writes the seed corpus, `fuzz/seeds/<target>/<name>`, from `tsm_fuzz::seeds`, after
//! checking that each seed decodes to what it encodes and reaches what it is for.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --bin seeds
//! ```

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut failed = 0;
    for s in tsm_fuzz::seeds::all() {
        match tsm_fuzz::seeds::check(&s) {
            Ok(summary) => println!("{}/{}: {} bytes {summary}", s.target, s.name, s.bytes.len()),
            Err(e) => {
                eprintln!("{}/{}: {e}", s.target, s.name);
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
