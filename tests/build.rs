//! Lists `scenarios/*.scn` for `suite::SCENARIOS`: a new scenario file runs in every suite
//! (host and QEMU boot) without being added by hand.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR")?).join("scenarios");
    // The directory's own change (a file added, removed or renamed) reruns this script;
    // `include_str!` tracks each file's contents.
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = fs::read_dir(&dir)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, std::io::Error>>()?;
    names.retain(|n| n.ends_with(".scn"));
    names.sort();
    let mut out = String::from(
        "/// Every scenario file under `tests/scenarios/`, as `(path from the workspace root, text)`,\n\
         /// in file-name order (listed by `tests/build.rs`).\n\
         pub const SCENARIOS: &[(&str, &str)] = &[\n",
    );
    for n in &names {
        let path = format!("tests/scenarios/{n}");
        let file = format!("/scenarios/{n}");
        writeln!(
            out,
            "    ({path:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {file:?}))),"
        )?;
    }
    out.push_str("];\n");
    fs::write(Path::new(&env::var("OUT_DIR")?).join("scenarios.rs"), out)?;
    Ok(())
}
