//! What the core logs: a device fault at `warn`, a device report it refuses at `debug`, each
//! once, naming the TDI and the status. A capturing logger (this test binary's own: `log`
//! allows one per process) records what an integrator's logger would see.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_core::*;

/// Every record logged, as `level: message`.
struct Capture(Mutex<Vec<String>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        let line = format!("{}: {}", record.level(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn device_faults_warn_and_refused_reports_debug_once_each() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(LevelFilter::Trace);
    let fw = Relayed::new(MemTable::<256>::new(), ModelDevice::model());
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(0x8000_0000, 16).unwrap();
    let guest = fw.create_guest().unwrap();
    let device = fw.create_device(rid, &[bar]).unwrap();
    let tdi = fw.create_tdi(device, rid).unwrap();

    // No report given: the bind is refused once the (empty) report is in.
    assert_eq!(fw.bind(tdi, guest), Err(Error::EmptyReport));
    let lines = std::mem::take(&mut *CAPTURE.0.lock().unwrap());
    assert_eq!(
        lines,
        [format!(
            "DEBUG: TDI {tdi:?}: device response refused: {}",
            Error::EmptyReport
        )]
    );

    // A device that garbles its answers: a device fault, at warn.
    fw.with_device(|d| d.set_fault(rid, Some(DeviceFault::Malformed)))
        .unwrap();
    assert_eq!(fw.bind(tdi, guest), Err(Error::DeviceMalformed));
    let lines = std::mem::take(&mut *CAPTURE.0.lock().unwrap());
    assert_eq!(
        lines,
        [format!(
            "WARN: TDI {tdi:?}: device fault: {}",
            Error::DeviceMalformed
        )]
    );

    // A bind that succeeds logs nothing.
    fw.with_device(|d| {
        d.set_fault(rid, None);
        d.report_ranges(rid, &[bar]);
    })
    .unwrap();
    assert_eq!(fw.bind(tdi, guest), Ok(()));
    assert!(CAPTURE.0.lock().unwrap().is_empty());
}
