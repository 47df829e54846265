//! A device security manager model for tests: per-interface TDISP state, answered per the
//! TDISP state machine, with faults a test can inject.

use crate::capacity::MAX_TDIS;
use crate::lifecycle::TdispState;
use crate::transport::{DeviceFault, InterfaceId, TdispDevice};

/// What the host or the device does to an interface outside TDISP messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceEvent {
    /// Function level reset, memory-space or bus-master disable, D3hot, or a configuration
    /// change: a CONFIG_LOCKED or RUN interface goes to ERROR (PCIe 6.x 11.3.2).
    Disturb,
    /// Conventional reset: every interface returns to CONFIG_UNLOCKED.
    ConventionalReset,
}

/// The device side of every interface the tests use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelDevice {
    interfaces: heapless::Vec<(InterfaceId, TdispState), MAX_TDIS>,
    faults: heapless::Vec<(InterfaceId, DeviceFault), 8>,
}

impl ModelDevice {
    /// A device model with no interfaces yet; they appear CONFIG_UNLOCKED when first asked.
    pub const fn new() -> Self {
        Self {
            interfaces: heapless::Vec::new(),
            faults: heapless::Vec::new(),
        }
    }

    /// The interface's TDISP state as the device sees it.
    pub fn state(&self, iface: InterfaceId) -> TdispState {
        self.interfaces
            .iter()
            .find(|(i, _)| *i == iface)
            .map_or(TdispState::ConfigUnlocked, |(_, s)| *s)
    }

    /// Every request to `iface` fails with `fault` until cleared with `None`.
    pub fn set_fault(&mut self, iface: InterfaceId, fault: Option<DeviceFault>) {
        self.faults.retain(|(i, _)| *i != iface);
        if let Some(f) = fault {
            // Eight concurrent faults are plenty for a test; more are ignored, not a panic.
            let _ = self.faults.push((iface, f));
        }
    }

    /// Applies an out-of-band event to `iface`.
    pub fn event(&mut self, iface: InterfaceId, event: DeviceEvent) {
        let next = match (event, self.state(iface)) {
            (DeviceEvent::Disturb, TdispState::ConfigLocked | TdispState::Run) => TdispState::Error,
            (DeviceEvent::Disturb, s) => s,
            (DeviceEvent::ConventionalReset, _) => TdispState::ConfigUnlocked,
        };
        self.set_state(iface, next);
    }

    fn set_state(&mut self, iface: InterfaceId, state: TdispState) {
        if let Some(entry) = self.interfaces.iter_mut().find(|(i, _)| *i == iface) {
            entry.1 = state;
        } else {
            // A table of MAX_TDIS interfaces cannot fill before the firmware's own TDI table.
            let _ = self.interfaces.push((iface, state));
        }
    }

    fn request(
        &mut self,
        iface: InterfaceId,
        from: &[TdispState],
        to: TdispState,
    ) -> Result<(), DeviceFault> {
        if let Some((_, f)) = self.faults.iter().find(|(i, _)| *i == iface) {
            return Err(*f);
        }
        let now = self.state(iface);
        if now == to {
            return if to == TdispState::ConfigUnlocked {
                Ok(())
            } else {
                Err(DeviceFault::Refused)
            };
        }
        if !from.contains(&now) {
            return Err(DeviceFault::Refused);
        }
        self.set_state(iface, to);
        Ok(())
    }
}

impl TdispDevice for ModelDevice {
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.request(
            iface,
            &[TdispState::ConfigUnlocked],
            TdispState::ConfigLocked,
        )
    }

    fn start_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.request(iface, &[TdispState::ConfigLocked], TdispState::Run)
    }

    fn stop_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault> {
        self.request(
            iface,
            &[TdispState::ConfigLocked, TdispState::Run, TdispState::Error],
            TdispState::ConfigUnlocked,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RequesterId;

    #[test]
    fn follows_the_tdisp_state_machine() {
        let i = RequesterId::try_new(0, 3, 0, 0).unwrap_or_else(|e| panic!("{e:?}"));
        let mut d = ModelDevice::new();
        assert_eq!(d.start_interface(i), Err(DeviceFault::Refused));
        assert_eq!(d.lock_interface(i), Ok(()));
        assert_eq!(d.lock_interface(i), Err(DeviceFault::Refused));
        assert_eq!(d.start_interface(i), Ok(()));
        d.event(i, DeviceEvent::Disturb);
        assert_eq!(d.state(i), TdispState::Error);
        d.set_fault(i, Some(DeviceFault::NoResponse));
        assert_eq!(d.stop_interface(i), Err(DeviceFault::NoResponse));
        d.set_fault(i, None);
        assert_eq!(d.stop_interface(i), Ok(()));
        assert_eq!(d.stop_interface(i), Ok(()));
        assert_eq!(d.state(i), TdispState::ConfigUnlocked);
    }
}
