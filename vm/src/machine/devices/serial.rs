//! COM1: an 8250 UART (vm-superio) whose transmitter writes to a host sink and whose
//! interrupt line is an irqfd into the in-kernel irqchip.

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::machine::state::SerialSnapshot;

/// Raises the UART's interrupt by signalling the irqfd KVM routes to IRQ 4.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes (stdout of the VMM process, or a test buffer).
pub type SerialSink = Box<dyn Write + Send>;

/// Why a saved UART state could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum SerialRestoreError {
    #[error("cannot clone the serial irqfd: {0}")]
    CloneIrq(std::io::Error),
    #[error("serial state refused: {0:?}")]
    Refused(vm_superio::serial::Error<std::io::Error>),
}

pub struct SerialConsole {
    uart: Serial<IrqLine, NoEvents, SerialSink>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, sink: SerialSink) -> Self {
        SerialConsole {
            uart: Serial::new(IrqLine(irq), sink),
        }
    }

    /// Puts the UART's registers and receive FIFO back as `snap` had them, keeping this
    /// console's interrupt line and output sink.
    pub fn restore(&mut self, snap: &SerialSnapshot) -> Result<(), SerialRestoreError> {
        let state = serial_state(snap);
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(SerialRestoreError::CloneIrq)?;
        // vm-superio rebuilds a UART from state only by value: swap a placeholder in while
        // the sink moves from the old UART to the restored one.
        let placeholder_irq = irq.try_clone().map_err(SerialRestoreError::CloneIrq)?;
        let placeholder: SerialSink = Box::new(std::io::sink());
        let old = std::mem::replace(
            &mut self.uart,
            Serial::new(IrqLine(placeholder_irq), placeholder),
        );
        self.uart = Serial::from_state(&state, IrqLine(irq), NoEvents, old.into_writer())
            .map_err(SerialRestoreError::Refused)?;
        Ok(())
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // A failed interrupt trigger or sink write loses console bytes, never guest state.
        if let Err(e) = self.uart.write(offset, value) {
            tracing::debug!("serial write: {e:?}");
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

fn serial_state(snap: &SerialSnapshot) -> SerialState {
    SerialState {
        baud_divisor_low: snap.registers[0],
        baud_divisor_high: snap.registers[1],
        interrupt_enable: snap.registers[2],
        interrupt_identification: snap.registers[3],
        line_control: snap.registers[4],
        line_status: snap.registers[5],
        modem_control: snap.registers[6],
        modem_status: snap.registers[7],
        scratch: snap.registers[8],
        in_buffer: snap.in_buffer.clone(),
    }
}
