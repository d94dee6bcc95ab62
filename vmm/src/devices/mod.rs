//! Devices the guest reaches through port I/O, and the one dispatcher that
//! routes a port access to them. Devices see guest memory only through
//! `GuestMemoryMmap` and never see KVM.
//!
//! KVM hands a string instruction (`rep ins`/`rep outs`) over as one exit
//! carrying `count` elements of `size` bytes (up to a page); each element is
//! a separate access, exactly as if the guest had executed `count` single
//! `in`/`out` instructions. Within one element, the byte-wide UART sees one
//! register access per byte lane (a 16-bit `in` from 0x3f8 reads 0x3f8 and
//! 0x3f9), as a PC's bus splits it; the exit device and the record doorbell
//! act on accesses that start at their port.

pub mod exit;
pub mod records;
pub mod serial;

use std::ops::ControlFlow;
use std::sync::Mutex;

use crate::layout::{EXIT_PORT, RECORD_PORT, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use records::{Record, RecordChannel, RecordError};
use serial::Console;

/// What a floating bus returns for a port nothing claims.
const UNCLAIMED: u8 = 0xff;

/// Something a device saw that the VMM, not the device, must act on.
#[derive(Debug)]
pub enum GuestEvent {
    /// The guest wrote this value to the exit device.
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

    /// Handles a guest `out` (or `rep outs`) of `data.len() / size` elements
    /// of `size` bytes at `port`, in order. Each event goes to `emit`; when it
    /// returns `Break` (the VM is ending), the remaining elements are not
    /// performed. Writes to ports nothing claims are ignored, as on a PC.
    pub fn output(
        &self,
        port: u16,
        size: usize,
        data: &[u8],
        mut emit: impl FnMut(GuestEvent) -> ControlFlow<()>,
    ) {
        for element in data.chunks(size.max(1)) {
            let event = match port {
                EXIT_PORT => Some(GuestEvent::Exit(exit::exit_value(element))),
                RECORD_PORT => Some(match self.records.ring(element) {
                    Ok(record) => GuestEvent::Record(record),
                    Err(e) => GuestEvent::BadRecord(e),
                }),
                _ => {
                    self.serial_lanes(port, element.len(), |console, offset, lane| {
                        console.write(offset, element[lane]);
                    });
                    None
                }
            };
            if let Some(event) = event {
                if emit(event).is_break() {
                    return;
                }
            }
        }
    }

    /// Handles a guest `in` (or `rep ins`): fills every element of `size`
    /// bytes in `data`. Unclaimed ports read as all ones (a floating bus).
    pub fn input(&self, port: u16, size: usize, data: &mut [u8]) {
        for element in data.chunks_mut(size.max(1)) {
            element.fill(UNCLAIMED);
            self.serial_lanes(port, element.len(), |console, offset, lane| {
                element[lane] = console.read(offset);
            });
        }
    }

    /// Runs `access` for each byte lane of a `width`-byte access at `port`
    /// that falls in the UART's window, with the register offset and lane.
    fn serial_lanes(
        &self,
        port: u16,
        width: usize,
        mut access: impl FnMut(&mut Console, u8, usize),
    ) {
        let (base, start) = (u32::from(SERIAL_PORT_BASE), u32::from(port));
        let first = start.max(base);
        let end = (start + width as u32).min(base + u32::from(SERIAL_PORT_LEN));
        if first >= end {
            return;
        }
        let mut console = self.lock_console();
        for p in first..end {
            access(&mut console, (p - base) as u8, (p - start) as usize);
        }
    }

    /// The devices' state for a snapshot (the exit device and the record
    /// doorbell have none).
    pub fn save(&self) -> serial::ConsoleState {
        self.lock_console().save()
    }

    pub fn restore(&self, console: &serial::ConsoleState) -> Result<(), serial::ConsoleStateError> {
        self.lock_console().restore(console)
    }

    fn lock_console(&self) -> std::sync::MutexGuard<'_, Console> {
        // A vCPU thread that panicked while holding the lock leaves a console
        // that is still usable: the UART state is plain registers.
        self.console.lock().unwrap_or_else(|e| e.into_inner())
    }
}
