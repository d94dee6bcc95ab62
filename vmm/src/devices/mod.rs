//! Devices the guest reaches through port I/O, and the one dispatcher that
//! routes a port access to them. Devices see guest memory only through
//! `GuestMemoryMmap` and never see KVM.

pub mod exit;
pub mod records;
pub mod serial;

use std::sync::Mutex;

use crate::layout::{EXIT_PORT, RECORD_PORT, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use records::{Record, RecordChannel, RecordError};
use serial::Console;

/// Something a device saw that the VMM, not the device, must act on.
#[derive(Debug)]
pub enum GuestEvent {
    /// The guest wrote its exit code to the exit device.
    Exit(u32),
    /// A well-formed record arrived on the result channel.
    Record(Record),
    /// The guest rang the record doorbell with something unusable.
    BadRecord(RecordError),
}

/// All port-I/O devices of one VM.
pub struct PortDevices {
    console: Mutex<Console>,
    records: RecordChannel,
}

impl PortDevices {
    pub fn new(console: Console, records: RecordChannel) -> Self {
        PortDevices {
            console: Mutex::new(console),
            records,
        }
    }

    /// Handles a guest `out`; returns what the VMM must act on, if anything.
    /// Writes to ports nothing claims are ignored, as on a PC.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<GuestEvent> {
        if let Some(offset) = serial_offset(port) {
            self.lock_console()
                .write(offset, data.first().copied().unwrap_or(0));
            return None;
        }
        match port {
            EXIT_PORT => Some(GuestEvent::Exit(exit::exit_code(data))),
            RECORD_PORT => Some(match self.records.ring(data) {
                Ok(record) => GuestEvent::Record(record),
                Err(e) => GuestEvent::BadRecord(e),
            }),
            _ => None,
        }
    }

    /// Handles a guest `in`. Unclaimed ports read as all ones (a floating bus).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match serial_offset(port) {
            Some(offset) => {
                let value = self.lock_console().read(offset);
                data.fill(0);
                if let Some(first) = data.first_mut() {
                    *first = value;
                }
            }
            None => data.fill(0xff),
        }
    }

    /// Flushes console output still buffered on the host side.
    pub fn flush(&self) {
        self.lock_console().flush();
    }

    fn lock_console(&self) -> std::sync::MutexGuard<'_, Console> {
        // A vCPU thread that panicked while holding the lock leaves a console
        // that is still usable: the UART state is plain registers.
        self.console.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serial_offset(port: u16) -> Option<u8> {
    port.checked_sub(SERIAL_PORT_BASE)
        .filter(|&off| off < SERIAL_PORT_LEN)
        .map(|off| off as u8)
}
