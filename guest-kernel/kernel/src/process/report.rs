//! Telling the VMM about processes (docs/GUEST_ABI.md, "Records"): a
//! `process` record when an address space is created (spawn, fork), with
//! its root page table, and `process_exit` when it is torn down, so the
//! host write watch can read a process's page tables by pid.

use crate::memory::mm;
use crate::records::JsonStr;
use guest_mm::Pid;

/// Announces `pid`, running `program`, with its page-table root.
pub fn created(pid: Pid, program: &str) {
    if let Ok(root) = mm::with(|s| s.root_of(pid)) {
        crate::record!(
            r#"{{"type":"process","pid":{pid},"cr3":{},"program":{}}}"#,
            root.addr(),
            JsonStr(program)
        );
    }
}

/// Announces that `pid`'s address space is gone.
pub fn exited(pid: Pid) {
    crate::record!(r#"{{"type":"process_exit","pid":{pid}}}"#);
}
