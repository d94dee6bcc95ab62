//! Result records through the doorbell at port 0xf8 (docs/GUEST_ABI.md,
//! "Records"): a `u32` length and that many bytes of JSON in guest memory
//! below 4 GiB, whose physical address is written to the port. The VMM copies
//! the record before the `out` completes, so one static buffer suffices.

use crate::arch::x86_64::paging::virt_to_phys;
use crate::arch::x86_64::port::outl;
use core::fmt::{self, Write};
use spin::Mutex;

/// Record doorbell port.
pub const RECORD_PORT: u16 = 0xf8;
/// Longest record this kernel sends (the ABI allows 65536).
const MAX_RECORD: usize = 4096;

/// Length prefix plus JSON text. Lives in the kernel image (physical
/// address well below 4 GiB).
#[repr(C, align(8))]
struct RecordBuf {
    len: u32,
    text: [u8; MAX_RECORD],
}

/// Appends formatted text to a record buffer, failing when it is full.
struct Cursor<'a> {
    buf: &'a mut [u8; MAX_RECORD],
    len: usize,
}

impl Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self
            .len
            .checked_add(s.len())
            .filter(|&e| e <= MAX_RECORD)
            .ok_or(fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

static RECORD: Mutex<RecordBuf> = Mutex::new(RecordBuf {
    len: 0,
    text: [0; MAX_RECORD],
});

/// A record that did not fit in the buffer (it is not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordTooLong;

/// Sends one record whose JSON text is `args` (one object).
pub fn send(args: fmt::Arguments) -> Result<(), RecordTooLong> {
    let mut rec = RECORD.lock();
    let rec = &mut *rec;
    let mut cursor = Cursor {
        buf: &mut rec.text,
        len: 0,
    };
    cursor.write_fmt(args).map_err(|_| RecordTooLong)?;
    rec.len = cursor.len as u32;
    let phys = virt_to_phys(rec as *const RecordBuf as u64);
    outl(RECORD_PORT, phys as u32);
    Ok(())
}

/// A string formatted as a JSON string literal (quotes and escapes added).
pub struct JsonStr<'a>(pub &'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Sends a record, printing a console warning when it is too long.
#[macro_export]
macro_rules! record {
    ($($arg:tt)*) => {
        if $crate::records::send(format_args!($($arg)*)).is_err() {
            $crate::println!("warning: record too long, not sent");
        }
    };
}
