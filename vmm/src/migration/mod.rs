//! Moving a running guest: live migration between two writewatch
//! processes and snapshots to files, over one stream format
//! (docs/MIGRATION_STREAM.md). Dirty pages come from the write-watch layer
//! (`crate::dirty`); nothing here reads KVM's dirty log itself.
//!
//! - `stream`: the frames, written and read with every check.
//! - `transport`: `tcp:`/`unix:` addresses, connecting and listening.
//! - `ram`: copying pages out and in, and the RAM hash.
//! - `state`: the machine state besides RAM.
//! - `convergence`: when to stop and copy, and auto-converge.
//! - `send`: the source; `receive`: the destination.
//! - `snapshot`: full and diff snapshots, and restoring a chain.
//! - `status`: progress and statistics of a migration.

pub mod convergence;
pub mod hash;
pub mod ram;
pub mod receive;
pub mod send;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod stream;
pub mod transport;

use std::sync::{Arc, Mutex};

/// Per VM: its migration (at most one at a time) and its snapshot chain.
#[derive(Default)]
pub struct Migrations {
    pub tracker: Arc<status::Tracker>,
    pub snapshots: Mutex<snapshot::Chain>,
}
