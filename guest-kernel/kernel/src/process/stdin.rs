//! Standard input: the bytes of the VMM's input module (a PVH module whose
//! command line is `stdin`), read once from start to end by whichever
//! process reads descriptor 0, like a pipe the VMM filled and closed.
//! Without the module standard input is at its end.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::mm;
use guest_mm::Pid;

/// How far standard input has been read.
static CURSOR: AtomicU64 = AtomicU64::new(0);

/// `read(0, buf, len)`: the next bytes of the input module, 0 at its end.
pub fn read(pid: Pid, buf: u64, len: u64) -> i64 {
    let Some(module) = crate::boot::info().input_module else {
        return 0;
    };
    let bytes = crate::boot::start_info::module_bytes(module);
    let size = bytes.len() as u64;
    // One reader at a time takes its span, so no byte is read twice.
    let mut at = CURSOR.load(Ordering::Acquire);
    let span = loop {
        let n = len.min(size - at);
        match CURSOR.compare_exchange(at, at + n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break at as usize..(at + n) as usize,
            Err(now) => at = now,
        }
    };
    let n = span.len() as i64;
    match mm::with(|s| s.copy_to_user(pid, buf, &bytes[span])) {
        Ok(()) => n,
        Err(e) => e.to_ret(),
    }
}
