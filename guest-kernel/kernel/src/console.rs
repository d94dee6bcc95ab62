//! Serial console on COM1 (a 16550 at 0x3f8; docs/GUEST_ABI.md).
//!
//! Output only, and no LSR polling: both the writewatch VMM (vm-superio) and
//! QEMU accept a byte on every THR write, and every port access is a VM exit,
//! so polling would double the cost of each byte. Text goes out with one
//! `rep outsb` per piece: from the ring-3 kernel context that is one
//! request to ring 0 per page instead of one per byte (kvm_pvm still exits
//! to the VMM once per byte). The UART keeps its reset
//! configuration (no interrupts), which is all an emulated port needs.

use crate::arch::x86_64::port::outsb;
use core::fmt::{self, Write};
use spin::Mutex;

/// COM1 transmit holding register.
pub const COM1: u16 = 0x3f8;
/// COM1's register window.
pub const COM1_PORTS: core::ops::RangeInclusive<u16> = COM1..=COM1 + 7;

/// The serial port (a zero-sized handle; the lock orders whole messages).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        outsb(COM1, s.as_bytes());
        Ok(())
    }
}

static CONSOLE: Mutex<Serial> = Mutex::new(Serial);

/// Prints formatted text atomically with respect to other CPUs.
pub fn print(args: fmt::Arguments) {
    // Writing to `Serial` cannot fail.
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Prints even if the console lock is held (by a CPU that will never
/// release it, e.g. one that faulted while printing). For panic and fatal
/// exception reports only.
pub fn print_fatal(args: fmt::Arguments) {
    let mut tries = 0u32;
    loop {
        if let Some(mut console) = CONSOLE.try_lock() {
            let _ = console.write_fmt(args);
            return;
        }
        tries += 1;
        if tries > 1_000_000 {
            let _ = Serial.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints raw bytes (user program output, which need not be UTF-8).
pub fn print_bytes(bytes: &[u8]) {
    let _console = CONSOLE.lock();
    outsb(COM1, bytes);
}
