//! COM1: a vm-superio 16550 whose output goes to the VMM's stdout, and which
//! notes when the guest printed its first byte (for `first_output_ms`).
//!
//! Output is offered to the stdout sink and dropped when stdout is not being
//! read (see `output.rs`): the guest is never held up by the host's reader,
//! as a serial line with nobody listening loses characters.

use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::output::Sink;

/// Raises the UART's interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go: the stdout sink, plus the time of the first byte.
pub struct ConsoleOut {
    first_byte: Arc<OnceLock<Instant>>,
    stdout: Arc<Sink>,
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.first_byte.get_or_init(Instant::now);
        }
        self.stdout.offer(buf);
        Ok(buf.len())
    }

    /// The UART flushes after every byte; the sink's writer batches instead.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART with its host side.
pub struct Console {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

/// The UART's registers and receive FIFO, as a snapshot carries them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleState {
    pub divisor_low: u8,
    pub divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleStateError {
    #[error("the serial port state is not usable: {0}")]
    Bad(String),
    #[error("cannot wire the restored serial port's interrupt: {0}")]
    Irq(#[source] io::Error),
}

impl Console {
    /// A console printing to `stdout`, raising `irq`, and recording its
    /// first output byte in `first_byte`.
    pub fn new(irq: EventFd, stdout: Arc<Sink>, first_byte: Arc<OnceLock<Instant>>) -> Self {
        let out = ConsoleOut { first_byte, stdout };
        Console {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    pub fn save(&self) -> ConsoleState {
        let s = self.uart.state();
        ConsoleState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Takes `state` (the console keeps its output and interrupt line).
    pub fn restore(&mut self, state: &ConsoleState) -> Result<(), ConsoleStateError> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.divisor_low,
            baud_divisor_high: state.divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(ConsoleStateError::Irq)?;
        let writer = self.uart.writer();
        let out = ConsoleOut {
            first_byte: writer.first_byte.clone(),
            stdout: writer.stdout.clone(),
        };
        self.uart = Serial::from_state(&s, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| ConsoleStateError::Bad(format!("{e:?}")))?;
        Ok(())
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // The only error is a failed interrupt trigger; the byte itself was
        // handled, and a guest polling the UART does not need the interrupt.
        let _ = self.uart.write(offset, value);
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }
}
