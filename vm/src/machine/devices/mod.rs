//! Legacy port-I/O devices and the dispatch a vCPU thread does on an I/O exit.
//!
//! Devices are shared by all vCPU threads and the control thread (which snapshots them),
//! each behind its own lock; an I/O exit holds one lock for one register access.

pub mod pv_port;
pub mod serial;

pub(crate) use novacron_mesh::util::lock;
use std::sync::Mutex;

use crate::machine::layout::{
    COM1_PORT_BASE, COM1_PORT_LEN, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_RESET_COMMAND,
    PV_PORT_EVENT, PV_PORT_LEN,
};
use pv_port::{PvPort, PvReport};
use serial::SerialConsole;

/// What the vCPU thread must do after a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PioOutcome {
    Continue,
    /// The guest reported through the paravirtual port.
    Report(PvReport),
    /// The guest pulsed the reset line (i8042 command 0xFE): it wants to stop.
    Reset,
}

pub struct Devices {
    pub serial: Mutex<SerialConsole>,
    pub pv_port: Mutex<PvPort>,
}

fn in_range(port: u16, base: u16, len: u16) -> bool {
    port >= base && port < base + len
}

impl Devices {
    pub fn new(serial: SerialConsole, pv_port: PvPort) -> Self {
        Devices {
            serial: Mutex::new(serial),
            pv_port: Mutex::new(pv_port),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> PioOutcome {
        if in_range(port, COM1_PORT_BASE, COM1_PORT_LEN) {
            if let Some(&byte) = data.first() {
                lock(&self.serial).write((port - COM1_PORT_BASE) as u8, byte);
            }
        } else if in_range(port, PV_PORT_EVENT, PV_PORT_LEN) {
            if let Some(report) = lock(&self.pv_port).write(port, data) {
                return PioOutcome::Report(report);
            }
        } else if port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET_COMMAND) {
            return PioOutcome::Reset;
        }
        PioOutcome::Continue
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let value = if in_range(port, COM1_PORT_BASE, COM1_PORT_LEN) {
            lock(&self.serial).read((port - COM1_PORT_BASE) as u8)
        } else if port == I8042_COMMAND_PORT || port == I8042_DATA_PORT {
            // i8042 status: output buffer empty, input buffer empty, no data.
            0
        } else {
            // Nothing decodes this port: the bus floats high.
            0xff
        };
        data.fill(value);
    }

    /// Puts both devices back as a saved state had them.
    pub fn restore(
        &self,
        serial: &crate::machine::state::SerialSnapshot,
        pv_port: &crate::machine::state::PvPortSnapshot,
    ) -> Result<(), serial::SerialRestoreError> {
        lock(&self.serial).restore(serial)?;
        lock(&self.pv_port).restore(pv_port);
        Ok(())
    }

    pub fn flush_console(&self) {
        lock(&self.serial).flush();
    }
}
