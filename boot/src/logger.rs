//! The `log` facade's sink: records from the firmware crates (refusals, device faults) and the
//! kernel go to the serial console as one line each, `[LEVEL target] message`.
//!
//! The level is [`DEFAULT_LEVEL`] unless the command line says `log=off|error|warn|info|debug|
//! trace`. The logger is installed before anything that could log; records above the level cost
//! one compare in the caller (the facade's `max_level`).
//!
//! During the concurrent stage only errors show unless the command line chose a level, and never
//! more than warnings whatever it chose: the stage's tens of thousands of deliberate refusals
//! (`Busy` under contention, logged at debug) would each print a line and serialise the CPUs on
//! the console lock until they miss the stage deadline.

use core::sync::atomic::{AtomicBool, Ordering};
use log::{LevelFilter, Log, Metadata, Record};

/// Level without a `log=` word: warnings and errors, so a refused bind or a faulting device
/// shows without flooding the console with every deliberate refusal of the scenarios (ours).
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Warn;

/// Level the concurrent stage runs at unless the command line chose one (ours).
const STAGE_LEVEL: LevelFilter = LevelFilter::Error;

/// Most the concurrent stage logs whatever the command line chose (ours): at `warn` it prints
/// some 550 lines (injected device faults) and passes; at `debug` some 30,000 lines through the
/// console lock made it miss its 10 s deadline on a two-core host.
const STAGE_CAP: LevelFilter = LevelFilter::Warn;

/// Whether a `log=` word set the level.
static CHOSEN: AtomicBool = AtomicBool::new(false);

struct SerialLog;

static LOGGER: SerialLog = SerialLog;

impl Log for SerialLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            crate::serial::print(format_args!(
                "[{} {}] {}\n",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// Installs the serial logger at [`DEFAULT_LEVEL`] (once, on the BSP, after `serial::init`).
pub fn init() {
    // Fails only if a logger is already installed, which is then kept.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(DEFAULT_LEVEL);
    }
}

/// Applies a command-line `log=LEVEL` word (`None`: keep the level), and says so through the
/// logger itself (shown from `info` on). An unknown level keeps the current one and says so.
pub fn set_level(word: Option<&str>) {
    let Some(word) = word else { return };
    match word.parse::<LevelFilter>() {
        Ok(level) => {
            log::set_max_level(level);
            CHOSEN.store(true, Ordering::Relaxed);
            log::info!("serial logger at level {level}");
        }
        Err(_) => kprintln!(
            "boot: unknown log level '{word}' (off, error, warn, info, debug or trace), keeping {}",
            log::max_level()
        ),
    }
}

/// Runs `stage` at [`STAGE_LEVEL`] at most, unless the command line chose the level, and at
/// [`STAGE_CAP`] at most in any case (said on the console when that lowers the chosen level);
/// the level before is restored afterwards.
pub fn quiet_during<R>(stage: impl FnOnce() -> R) -> R {
    let before = log::max_level();
    if !CHOSEN.load(Ordering::Relaxed) {
        log::set_max_level(before.min(STAGE_LEVEL));
    } else if before > STAGE_CAP {
        kprintln!(
            "boot: the concurrent stage logs at warn at most (the chosen level resumes after it): its deliberate refusals would serialise the cpus on the console"
        );
        log::set_max_level(STAGE_CAP);
    }
    let result = stage();
    log::set_max_level(before);
    result
}
