//! The write-watch layer: which guest pages were written since the last
//! reset, with Windows `GetWriteWatch` / `ResetWriteWatch` semantics, over
//! guest-physical ranges and over a guest process's virtual ranges. Nothing
//! written may ever be missed (docs/WRITE_WATCH.md).
//!
//! Three sources feed it: KVM's dirty bitmap (manual-protect clearing), KVM's
//! dirty ring, and the VMM's own writes through vm-memory's `AtomicBitmap`.
//! A harvest moves what a source recorded into every open watch at once (as
//! QEMU gives each dirty-log client its own bitmap), so consumers — the API's
//! GPA watch, per-process VA watches, a dirty-rate measurement, migration —
//! never take bits from each other. The invariant every path keeps: a write
//! is recorded in its source, or in the pending bitmap of every open watch.

pub mod bitmap;
pub mod guest_pt;
mod slots;
mod source;
mod tracker;
mod watch;

pub use tracker::{
    ConsumerId, HarvestStats, Initial, ProcessInfo, Rate, StartInfo, TrackerStats, VcpuRate,
    WatchResult, WriteWatch,
};
pub use watch::GRANULARITY;

/// Where dirty pages come from.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `KVM_GET_DIRTY_LOG` + `KVM_CLEAR_DIRTY_LOG` (manual protect).
    Bitmap,
    /// The per-vCPU dirty rings (the VM must be started with a ring size).
    Ring,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Bitmap => "bitmap",
            Source::Ring => "ring",
        }
    }
}

/// Why a write-watch request was refused. Each is what Windows calls an
/// invalid parameter: the request is refused whole and nothing changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("address {0:#x} is not page-aligned (4096)")]
    Unaligned(u64),
    #[error("length {0:#x} is not a whole number of pages (4096)")]
    UnalignedLength(u64),
    #[error("the range is empty")]
    EmptyRange,
    #[error("max_count is 0: there is no room for a single address")]
    ZeroCount,
    #[error("range {start:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam { start: u64, len: u64 },
    #[error("write tracking is not started (start it first)")]
    NotTracking,
    #[error("write tracking is already started (source {0})")]
    AlreadyTracking(&'static str),
    #[error("the dirty ring is not available: this VM was started without --dirty-ring-size")]
    NoRing,
    #[error(
        "the dirty bitmap is not available: this VM was started with a dirty ring, and KVM then gives no bitmap"
    )]
    NoBitmap,
    #[error("no guest process has page table {0:#x} (see GET /processes)")]
    UnknownPageTable(u64),
    #[error("no guest process with pid {0}")]
    UnknownPid(u64),
    #[error("range {start:#x}+{len:#x} of page table {cr3:#x} is not watched (register it first)")]
    NotWatched { cr3: u64, start: u64, len: u64 },
    #[error("range {start:#x}+{len:#x} overlaps a range already watched for page table {cr3:#x}")]
    AlreadyWatched { cr3: u64, start: u64, len: u64 },
    #[error(transparent)]
    Walk(#[from] guest_pt::WalkError),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl WatchError {
    /// True when the request was bad (a client error), false when the VMM
    /// or KVM failed.
    pub fn is_invalid_parameter(&self) -> bool {
        !matches!(self, WatchError::Kvm { .. })
    }
}
