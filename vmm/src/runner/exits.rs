//! Counts of VM exits by reason, shared by the vCPU threads and readable
//! while the VM runs (the API's statistics).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why `KVM_RUN` returned to the VMM, as counted (docs/REPORTS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    IoOut,
    IoIn,
    MmioRead,
    MmioWrite,
    Hlt,
    Intr,
    IrqWindow,
    Signal,
    DirtyRingFull,
    Shutdown,
    InternalError,
    FailEntry,
    SystemEvent,
    Unhandled,
    RunError,
}

const KINDS: [(ExitKind, &str); 15] = [
    (ExitKind::IoOut, "io_out"),
    (ExitKind::IoIn, "io_in"),
    (ExitKind::MmioRead, "mmio_read"),
    (ExitKind::MmioWrite, "mmio_write"),
    (ExitKind::Hlt, "hlt"),
    (ExitKind::Intr, "intr"),
    (ExitKind::IrqWindow, "irq_window"),
    (ExitKind::Signal, "signal"),
    (ExitKind::DirtyRingFull, "dirty_ring_full"),
    (ExitKind::Shutdown, "shutdown"),
    (ExitKind::InternalError, "internal_error"),
    (ExitKind::FailEntry, "fail_entry"),
    (ExitKind::SystemEvent, "system_event"),
    (ExitKind::Unhandled, "unhandled"),
    (ExitKind::RunError, "run_error"),
];

#[derive(Default)]
pub struct ExitCounters {
    counts: [AtomicU64; KINDS.len()],
}

impl ExitCounters {
    pub fn count(&self, kind: ExitKind) {
        let index = KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The non-zero counts by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        KINDS
            .iter()
            .zip(&self.counts)
            .map(|((_, name), n)| (*name, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
