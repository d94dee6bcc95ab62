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

impl Console {
    /// A console printing to `stdout`, raising `irq`, and recording its
    /// first output byte in `first_byte`.
    pub fn new(irq: EventFd, stdout: Arc<Sink>, first_byte: Arc<OnceLock<Instant>>) -> Self {
        let out = ConsoleOut { first_byte, stdout };
        Console {
            uart: Serial::new(IrqTrigger(irq), out),
        }
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
