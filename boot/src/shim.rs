//! The host shim on bare metal: every scenario file of the project, compiled in, replayed
//! against a fresh firmware instance each, one printed line per operation.

use core::fmt::Write;

use tsm_core::Tsm;
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_tests::backend::{Backend, CoreBackend};
use tsm_tests::suite::run_suite;

/// Leaves the in-memory secure table of each scenario run holds.
const CORE_LEAVES: usize = 256;

/// Runs the stage, reporting on `out`; returns `(passed, failed)`.
pub fn run_shim(out: &mut dyn Write) -> (u32, u32) {
    let mut fresh_core = |run: &mut dyn FnMut(&mut dyn Backend)| {
        // On the BSP stack (1 MiB): one firmware per scenario, dropped after it.
        let tsm: Tsm<MemTable<CORE_LEAVES>, ModelDevice> = Tsm::new(MemTable::new(), ModelDevice::model());
        run(&mut CoreBackend { tsm: &tsm, label: "core" });
    };
    let core = run_suite(&mut fresh_core, out);
    (core.passed, core.failed)
}
