//! `tsm-scn`: runs scenario files on the firmware's backends, for anyone writing one.
//!
//! ```text
//! cargo run -p tsm-tests --bin tsm-scn -- FILE... [--backend core|tdx|sev|all] [--verbose]
//! ```
//!
//! Every file is checked first, once (each line that does not parse or uses a name no earlier
//! line declared is printed as `path:line:column: message`, and the file is not run), then run on each backend chosen
//! (all by default), each on a fresh firmware: a line whose status differs, or that names what
//! it cannot, is printed, and each file and backend ends with `path (backend): N passed, M
//! failed`. `--verbose` prints every line as well. Exits 1 when anything failed, 2 on a bad
//! command line.
// A host tool: on the bare-metal target (the crate builds there for the QEMU boot) it is empty.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    host::main()
}

#[cfg(not(target_os = "none"))]
mod host {
    use std::process::ExitCode;

    use platform_sev::RmpEntry;
    use platform_tdx::frames::Page;
    use platform_tdx::sept::SeptLevels;
    use tsm_core::device_model::ModelDevice;
    use tsm_core::mem_table::MemTable;
    use tsm_core::relay::host::Relayed;
    use tsm_tests::backend::{Backend, CoreBackend};
    use tsm_tests::backend_sev::{RMP_INDEX_WORDS, RMP_PAGES, SevBackend};
    use tsm_tests::backend_tdx::{POOL_PAGES, TdxBackend, tdx_firmware};
    use tsm_tests::interpreter::{Summary, check_scenario, run_scenario_with};

    const USAGE: &str = "usage: tsm-scn FILE... [--backend core|tdx|sev|all] [--verbose]\n\
         runs each scenario file on each backend (all by default) and prints\n\
         `path (backend): N passed, M failed`; --verbose prints every operation";

    /// Leaves of the core's in-memory secure table (as the host suite gives it).
    const CORE_LEAVES: usize = 1024;
    /// The SEV firmware's tables are large: the runner's stack.
    const STACK_BYTES: usize = 64 << 20;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Which {
        Core,
        Tdx,
        Sev,
    }

    impl Which {
        const ALL: [Which; 3] = [Which::Core, Which::Tdx, Which::Sev];

        fn parse(s: &str) -> Option<&'static [Which]> {
            Some(match s {
                "core" => &[Which::Core],
                "tdx" => &[Which::Tdx],
                "sev" => &[Which::Sev],
                "all" => &Which::ALL,
                _ => return None,
            })
        }

        /// Builds a fresh firmware of this kind and hands it to `f`.
        fn with(self, f: &mut dyn FnMut(&mut dyn Backend)) -> Result<(), String> {
            match self {
                Which::Core => {
                    let tsm: Box<Relayed<MemTable<CORE_LEAVES>>> =
                        Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
                    f(&mut CoreBackend::new(&tsm, "core"));
                }
                Which::Tdx => {
                    let mut mem = vec![Page::ZERO; POOL_PAGES];
                    let tsm =
                        tdx_firmware(&mut mem, SeptLevels::Four).ok_or("no TDX frame pool")?;
                    f(&mut TdxBackend::new(&tsm));
                }
                Which::Sev => {
                    let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
                    let mut index = vec![0; RMP_INDEX_WORDS];
                    let mut backend = Box::new(
                        SevBackend::new(&mut rmp, &mut index)
                            .map_err(|e| format!("no SEV firmware: {e:?}"))?,
                    );
                    f(&mut *backend);
                }
            }
            Ok(())
        }
    }

    struct Args {
        files: Vec<String>,
        backends: &'static [Which],
        verbose: bool,
    }

    fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            files: Vec::new(),
            backends: &Which::ALL,
            verbose: false,
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--verbose" | "-v" => parsed.verbose = true,
                "--backend" => {
                    let b = args.next().ok_or("--backend needs core, tdx, sev or all")?;
                    parsed.backends = Which::parse(&b).ok_or_else(|| {
                        format!("unknown backend `{b}`: expected core, tdx, sev or all")
                    })?;
                }
                "--help" | "-h" => return Err(String::new()),
                _ if a.starts_with('-') => return Err(format!("unknown option `{a}`")),
                _ => parsed.files.push(a),
            }
        }
        if parsed.files.is_empty() {
            return Err("no scenario file given".into());
        }
        Ok(parsed)
    }

    pub fn main() -> ExitCode {
        let args = match parse_args(std::env::args().skip(1)) {
            Ok(a) => a,
            // Asked for: the usage on standard output, success.
            Err(e) if e.is_empty() => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("tsm-scn: {e}");
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        let ok = std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(move || run(&args))
            .map(|t| t.join().unwrap_or(false));
        match ok {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("tsm-scn: cannot start the runner: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Runs every file on every backend; `true` when nothing failed.
    fn run(args: &Args) -> bool {
        let mut all_ok = true;
        for path in &args.files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    println!("{path}: cannot read: {e}");
                    all_ok = false;
                    continue;
                }
            };
            let mut out = String::new();
            let errors = check_scenario(path, &text, &mut out);
            if errors > 0 {
                print!("{out}");
                let lines = if errors == 1 { "line is" } else { "lines are" };
                println!("{path}: {errors} {lines} wrong: not run");
                all_ok = false;
                continue;
            }
            for &which in args.backends {
                let mut summary = Summary::default();
                let mut out = String::new();
                let mut label = "";
                let built = which.with(&mut |b| {
                    label = b.name();
                    summary = run_scenario_with(b, path, &text, &mut out, args.verbose);
                });
                print!("{out}");
                if let Err(e) = built {
                    println!("{path}: {e}");
                    all_ok = false;
                    continue;
                }
                println!(
                    "{path} ({label}): {} passed, {} failed",
                    summary.passed, summary.failed
                );
                all_ok &= summary.failed == 0;
            }
        }
        all_ok
    }
}
